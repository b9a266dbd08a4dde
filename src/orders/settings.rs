//! The orders' settings, read from the environment at start (docs/orders.md,
//! "Settings").

use super::limits::{
    FEE_BPS_DEFAULT, IDEMPOTENCY_TTL_SECS_DEFAULT, IDEMPOTENCY_TTL_SECS_MAX, PRODUCT_STOCK_MAX,
    STOCK_REFILL_MAX_DEFAULT, STOCK_SPLIT_MAX, STOCK_SWEEP_BATCH_DEFAULT, STOCK_SWEEP_BATCH_MAX,
    STOCK_TRANSIT_TIMEOUT_MS_DEFAULT, STOCK_TRANSIT_TIMEOUT_MS_MAX,
};
use crate::config::{ConfigError, Env};

#[derive(Debug, Clone)]
pub struct OrdersSettings {
    /// `STAMPEDE_IDEMPOTENCY_TTL_SECS`, in milliseconds.
    pub idempotency_ttl_ms: i64,
    /// `STAMPEDE_FEE_BPS`: the fee of a completed order's transaction.
    pub fee_bps: i64,
    /// `STAMPEDE_STOCK_SPLIT`: the buckets (hash slots) a product created
    /// from now on is split into; 1 keeps it on one slot.
    pub stock_split: u32,
    /// `STAMPEDE_STOCK_REFILL_MAX`: the most a refill moves beyond what the
    /// order lacks.
    pub refill_max: i64,
    /// `STAMPEDE_STOCK_TRANSIT_TIMEOUT_MS`: when the sweeper takes a transfer
    /// in transit for cut by a crash and finishes it.
    pub transit_timeout_ms: i64,
    /// `STAMPEDE_STOCK_SWEEP_BATCH`: transfers swept per shard per tick.
    pub sweep_batch: usize,
}

impl OrdersSettings {
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let ttl_secs: u64 = env.number(
            "STAMPEDE_IDEMPOTENCY_TTL_SECS",
            IDEMPOTENCY_TTL_SECS_DEFAULT,
            1,
            IDEMPOTENCY_TTL_SECS_MAX,
        )?;
        let transit_timeout_ms: u64 = env.number(
            "STAMPEDE_STOCK_TRANSIT_TIMEOUT_MS",
            STOCK_TRANSIT_TIMEOUT_MS_DEFAULT,
            1,
            STOCK_TRANSIT_TIMEOUT_MS_MAX,
        )?;
        Ok(Self {
            idempotency_ttl_ms: (ttl_secs * 1000) as i64,
            fee_bps: env.number("STAMPEDE_FEE_BPS", FEE_BPS_DEFAULT, 0, 10_000)?,
            stock_split: env.number("STAMPEDE_STOCK_SPLIT", 1, 1, STOCK_SPLIT_MAX)?,
            refill_max: env.number(
                "STAMPEDE_STOCK_REFILL_MAX",
                STOCK_REFILL_MAX_DEFAULT,
                1,
                PRODUCT_STOCK_MAX,
            )?,
            transit_timeout_ms: transit_timeout_ms as i64,
            sweep_batch: env.number(
                "STAMPEDE_STOCK_SWEEP_BATCH",
                STOCK_SWEEP_BATCH_DEFAULT,
                1,
                STOCK_SWEEP_BATCH_MAX,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn settings(vars: &[(&str, &str)]) -> Result<OrdersSettings, ConfigError> {
        OrdersSettings::from_env(&Config::for_tests(vars).env())
    }

    #[test]
    fn a_product_is_not_split_unless_asked() {
        let s = settings(&[]).expect("valid");
        assert_eq!(s.stock_split, 1);
        assert_eq!(s.refill_max, PRODUCT_STOCK_MAX);
        assert_eq!(
            settings(&[("STAMPEDE_STOCK_SPLIT", "3")]).expect("valid").stock_split,
            3
        );
        for (var, value) in [
            ("STAMPEDE_STOCK_SPLIT", "0"),
            ("STAMPEDE_STOCK_SPLIT", "17"),
            ("STAMPEDE_STOCK_REFILL_MAX", "0"),
            ("STAMPEDE_STOCK_TRANSIT_TIMEOUT_MS", "0"),
            ("STAMPEDE_STOCK_SWEEP_BATCH", "0"),
        ] {
            let err = settings(&[(var, value)]).expect_err("must be refused").to_string();
            assert!(err.starts_with(var), "{err:?} should name {var}");
        }
    }
}
