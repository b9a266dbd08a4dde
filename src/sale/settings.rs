//! The sale's settings, read from the environment at start (docs/sale.md,
//! "Settings"). A bad value stops the engine with a message naming the
//! variable.

use super::limits::{
    ITEMS_PER_SALE_MAX, SALE_PERIOD_SECS_MAX, SALE_RESERVATION_TIMEOUT_MS_DEFAULT, SALE_RESERVATION_TIMEOUT_MS_MAX,
    SALE_SPLIT_MAX,
};
use crate::config::{ConfigError, Env};

/// The rules of every sale.
#[derive(Debug, Clone)]
pub struct SaleSettings {
    pub period_secs: u64,
    pub items: u32,
    pub per_user_limit: u32,
    pub checkout_ttl_secs: u64,
    /// `STAMPEDE_SALE_SPLIT`: the parts (hash slots) one sale is spread
    /// over; 1 keeps it on one slot.
    pub split: u32,
    /// `STAMPEDE_SALE_RESERVATION_TIMEOUT_MS`: when a split sale's
    /// reservation is taken for abandoned.
    pub reservation_timeout_ms: i64,
}

impl SaleSettings {
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            period_secs: env.number("SALE_PERIOD_SECS", 3600, 1, SALE_PERIOD_SECS_MAX)?,
            items: env.number("ITEMS_PER_SALE", 10_000, 1, ITEMS_PER_SALE_MAX)?,
            per_user_limit: env.number("PER_USER_LIMIT", 10, 1, 1_000_000)?,
            checkout_ttl_secs: env.number("CHECKOUT_TTL_SECS", 600, 1, SALE_PERIOD_SECS_MAX)?,
            split: env.number("STAMPEDE_SALE_SPLIT", 1, 1, SALE_SPLIT_MAX)?,
            reservation_timeout_ms: env.number(
                "STAMPEDE_SALE_RESERVATION_TIMEOUT_MS",
                SALE_RESERVATION_TIMEOUT_MS_DEFAULT,
                1,
                SALE_RESERVATION_TIMEOUT_MS_MAX,
            )? as i64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn settings(vars: &[(&str, &str)]) -> Result<SaleSettings, ConfigError> {
        SaleSettings::from_env(&Config::for_tests(vars).env())
    }

    #[test]
    fn defaults_match_the_replaced_services() {
        let s = settings(&[]).expect("valid");
        assert_eq!(s.period_secs, 3600);
        assert_eq!(s.items, 10_000);
        assert_eq!(s.per_user_limit, 10);
        assert_eq!(s.checkout_ttl_secs, 600);
        assert_eq!(s.split, 1);
    }

    #[test]
    fn errors_name_the_variable() {
        for (vars, var) in [
            (&[("ITEMS_PER_SALE", "many")], "ITEMS_PER_SALE"),
            (&[("PER_USER_LIMIT", "0")], "PER_USER_LIMIT"),
            (&[("STAMPEDE_SALE_SPLIT", "17")], "STAMPEDE_SALE_SPLIT"),
        ] {
            let err = settings(vars).expect_err("must be refused").to_string();
            assert!(err.starts_with(var), "{err:?} should name {var}");
        }
    }
}
