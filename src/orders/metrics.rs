//! The orders' metrics. Their names are what dashboards and alerts query: keep
//! them. Labels stay low-cardinality, as everywhere (`crate::telemetry`).

use ::metrics::{counter, gauge};

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
