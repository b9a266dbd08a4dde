//! What every scenario uses and none owns: the HTTP client, latency
//! statistics and the `/proc` readers. Nothing here names a scenario.

pub mod fmt;
pub mod http;
pub mod proc;
pub mod server;
pub mod stats;

/// clap's parser of a count that must be at least 1 (users, connections, ...).
pub fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}
