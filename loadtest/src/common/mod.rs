//! What every scenario uses and none owns: the HTTP client, latency
//! statistics and the `/proc` readers. Nothing here names a scenario.

pub mod fmt;
pub mod http;
pub mod proc;
pub mod stats;
