//! The orders' metrics. Their names are what dashboards and alerts query: keep
//! them. Labels stay low-cardinality, as everywhere (`crate::telemetry`).

use ::metrics::{counter, gauge};

use super::lua::{ORDER_CREATE, ORDER_UPDATE, PRODUCT_STOCK, STOCK_MOVE};
use crate::telemetry;

/// Its metrics exist from the start at zero, so a dashboard or an alert
/// reads 0 rather than "no data" before the first order: its script
/// outcomes, the holds expired, the replays of each route that takes an
/// `Idempotency-Key`, and the reconcile's mismatches (0 until a run finds
/// any: the alert on them fires on a mismatch, never on no run yet).
pub fn register() {
    for script in [&*ORDER_CREATE, &*ORDER_UPDATE, &*PRODUCT_STOCK] {
        telemetry::register_script_outcomes(script.lua.name(), &["OK"]);
    }
    telemetry::register_script_outcomes(STOCK_MOVE.lua.name(), &["GIVEN", "TAKEN"]);
    for by in ["request", "sweeper"] {
        counter!("stampede_stock_transfers_total", "by" => by).increment(0);
    }
    counter!("stampede_stock_transfers_stuck_total").increment(0);
    for outcome in ["expired", "settled"] {
        counter!("stampede_order_holds_expired_total", "outcome" => outcome).increment(0);
    }
    for route in ["order_create", "order_confirm", "order_cancel", "product_restock"] {
        counter!("stampede_idempotent_replays_total", "route" => route).increment(0);
    }
    for kind in ["product", "sale", "dead_letter"] {
        gauge!("stampede_reconcile_mismatches", "kind" => kind).increment(0.0);
        counter!("stampede_reconcile_mismatches_total", "kind" => kind).increment(0);
    }
}

/// Holds the expiry task returned to stock (`expired`), or found already
/// settled by a confirm, a cancel or another engine (`settled`).
pub fn holds_expired(outcome: &'static str, holds: u64) {
    counter!("stampede_order_holds_expired_total", "outcome" => outcome).increment(holds);
}

/// An answer replayed for a repeated `Idempotency-Key`.
pub fn idempotent_replay(route: &'static str) {
    counter!("stampede_idempotent_replays_total", "route" => route).increment(1);
}

/// Mismatches between Redis and Postgres that one reconcile run found,
/// per kind (`product`, `sale`): the gauge holds the last run, the counter
/// every mismatch ever seen.
pub fn reconcile_mismatches(kind: &'static str, mismatches: u64) {
    gauge!("stampede_reconcile_mismatches", "kind" => kind).set(mismatches as f64);
    counter!("stampede_reconcile_mismatches_total", "kind" => kind).increment(mismatches);
}

/// A transfer of a split product's stock finished (taken and dropped), by
/// the request that made it (an order's refill, a new product's shares) or
/// by the sweeper after a crash.
pub fn transfer_finished(by: &'static str) {
    counter!("stampede_stock_transfers_total", "by" => by).increment(1);
}

/// A transfer the sweeper found it cannot finish (its taker has no bucket,
/// or its receipts were forgotten): its stock stays counted in transit.
pub fn transfer_stuck() {
    counter!("stampede_stock_transfers_stuck_total").increment(1);
}
