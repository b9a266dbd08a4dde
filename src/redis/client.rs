//! The builder of every Redis client the engine makes.

use std::time::Duration;

use fred::types::Builder;
use fred::types::config::{Config as RedisConfig, ReconnectPolicy};

/// The clients of every script call, state-changing read and flusher read.
///
/// A call is sent at most once: `max_command_attempts = 1`. fred's default
/// (3) writes again, after a reconnect, the commands that were written but
/// not answered when a connection closed, so a script that ran but whose
/// reply was lost would run twice (an order taking its stock twice, a buyer
/// told `CODE_USED` for their own purchase). With 1, such a command fails
/// with the connection error instead, and the request answers 503 with a way
/// to find out what happened. What else fred does, read in its 10.1 source,
/// is in ARCHITECTURE.md ("A call runs at most once").
pub fn builder(url: &str, command_timeout: Duration) -> Result<Builder, fred::error::Error> {
    let mut builder = Builder::from_config(RedisConfig::from_url(url)?);
    builder
        .with_performance_config(|perf| perf.default_command_timeout = command_timeout)
        .with_connection_config(|conn| {
            conn.connection_timeout = command_timeout;
            conn.max_command_attempts = 1;
            // No unresponsive-connection checks (fred's default): they
            // close a slow connection and fail what is in flight on it,
            // turning a slow answer into an unknown outcome.
            conn.unresponsive = Default::default();
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    Ok(builder)
}
