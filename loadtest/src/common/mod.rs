//! What every scenario uses and none owns: the verdict of a check, number
//! formatting, the HTTP client, latency statistics, the `/proc` readers,
//! the cost table, the connections to the engine's stores and the JSON
//! summary. Nothing here names a scenario.

pub mod cost;
pub mod engine;
pub mod fmt;
pub mod http;
pub mod proc;
pub mod server;
pub mod stats;
pub mod stores;
pub mod summary;
pub mod verdict;

/// clap's parser of a count that must be at least 1 (users, connections, ...).
pub fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}
