//! The settlement jobs' settings, read from the environment at start
//! (docs/settlement.md, "Settings").

use std::time::Duration;

use super::limits;
use crate::config::{ConfigError, Env};

#[derive(Debug, Clone)]
pub struct SettlementSettings {
    /// Jobs run at once by this engine (`STAMPEDE_SETTLEMENT_WORKERS`).
    pub workers: usize,
    /// About this many transactions per chunk (`STAMPEDE_SETTLEMENT_BATCH_ROWS`).
    pub batch_rows: i64,
    /// Chunks of one job committed at once (`STAMPEDE_SETTLEMENT_CHUNKS_IN_FLIGHT`).
    pub chunks_in_flight: usize,
    /// A running job whose owner has not renewed its lease for this long is
    /// taken over (`STAMPEDE_SETTLEMENT_LEASE_MS`).
    pub lease: Duration,
    /// How often idle workers look for jobs queued by other engines
    /// (`STAMPEDE_SETTLEMENT_POLL_MS`); jobs queued here wake them at once.
    pub poll: Duration,
}

impl SettlementSettings {
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let lease_ms: u64 = env.number(
            "STAMPEDE_SETTLEMENT_LEASE_MS",
            limits::SETTLEMENT_LEASE_DEFAULT.as_millis() as u64,
            limits::SETTLEMENT_LEASE_MIN.as_millis() as u64,
            3_600_000,
        )?;
        Ok(Self {
            workers: env.number("STAMPEDE_SETTLEMENT_WORKERS", 2, 0, limits::SETTLEMENT_WORKERS_MAX)?,
            batch_rows: env.number(
                "STAMPEDE_SETTLEMENT_BATCH_ROWS",
                limits::SETTLEMENT_BATCH_ROWS_DEFAULT,
                1,
                limits::SETTLEMENT_BATCH_ROWS_CEILING,
            )?,
            chunks_in_flight: env.number(
                "STAMPEDE_SETTLEMENT_CHUNKS_IN_FLIGHT",
                3,
                1,
                limits::SETTLEMENT_CHUNKS_IN_FLIGHT_MAX,
            )?,
            lease: Duration::from_millis(lease_ms),
            poll: Duration::from_millis(env.number("STAMPEDE_SETTLEMENT_POLL_MS", 500, 10, 60_000)?),
        })
    }
}
