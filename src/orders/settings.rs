//! The orders' settings, read from the environment at start (docs/orders.md,
//! "Settings").

use super::limits::{FEE_BPS_DEFAULT, IDEMPOTENCY_TTL_SECS_DEFAULT, IDEMPOTENCY_TTL_SECS_MAX};
use crate::config::{ConfigError, Env};

#[derive(Debug, Clone)]
pub struct OrdersSettings {
    /// `STAMPEDE_IDEMPOTENCY_TTL_SECS`, in milliseconds.
    pub idempotency_ttl_ms: i64,
    /// `STAMPEDE_FEE_BPS`: the fee of a completed order's transaction.
    pub fee_bps: i64,
}

impl OrdersSettings {
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let ttl_secs: u64 = env.number(
            "STAMPEDE_IDEMPOTENCY_TTL_SECS",
            IDEMPOTENCY_TTL_SECS_DEFAULT,
            1,
            IDEMPOTENCY_TTL_SECS_MAX,
        )?;
        Ok(Self {
            idempotency_ttl_ms: (ttl_secs * 1000) as i64,
            fee_bps: env.number("STAMPEDE_FEE_BPS", FEE_BPS_DEFAULT, 0, 10_000)?,
        })
    }
}
