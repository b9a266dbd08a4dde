//! The sale's metrics. Its script outcomes are the shared
//! `stampede_script_outcomes_total` (`crate::telemetry::script_outcome`),
//! which `sale/lua.rs` counts as it decodes each reply; the dashboards read
//! them by script and outcome, so the names are kept.

use super::lua::{CHECKOUT, PURCHASE};
use super::split::{SALE_ITEM, SALE_USER};
use crate::telemetry;

/// Its outcomes exist from the start at zero, so the sale's panels read 0
/// rather than "no data" before the first checkout.
pub fn register() {
    for script in [&*CHECKOUT, &*PURCHASE, &*SALE_USER, &*SALE_ITEM] {
        telemetry::register_script_outcomes(script.lua.name(), &["OK"]);
    }
}
