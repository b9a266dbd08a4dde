//! The wallet's metrics. Their names are what dashboards and alerts query: keep
//! them. Labels stay low-cardinality, as everywhere (`crate::telemetry`).

use ::metrics::{counter, gauge};

use crate::telemetry;

/// Its metrics exist from the start at zero, so a dashboard or an alert
/// reads 0 rather than "no data" before the first transaction.
pub fn register() {
    for name in [
        "stampede_wallet_bonuses_expired_total",
        "stampede_wallet_sse_events_total",
        "stampede_wallet_sse_refused_total",
        "stampede_wallet_fanout_errors_total",
    ] {
        counter!(name).increment(0);
    }
    counter!("stampede_wallet_outcomes_total", "outcome" => "OK").increment(0);
    gauge!("stampede_wallet_sse_streams").increment(0.0);
}

/// A wallet script outcome: `OK`, `REPLAY`, `NOOP` (expiry not due) or a
/// refusal code.
pub fn wallet_outcome(outcome: &'static str) {
    telemetry::count_labelled("stampede_wallet_outcomes_total", "outcome", outcome, 1);
}

/// Bonuses the expiry task expired.
pub fn wallet_bonus_expired(count: u64) {
    counter!("stampede_wallet_bonuses_expired_total").increment(count);
}

/// An event stream opened (+1) or closed (-1) on this engine.
pub fn wallet_sse_streams(delta: f64) {
    gauge!("stampede_wallet_sse_streams").increment(delta);
}

/// Events written to event streams, and streams refused at the bound.
pub fn wallet_sse_events(sent: u64) {
    telemetry::count("stampede_wallet_sse_events_total", sent);
}

pub fn wallet_sse_refused() {
    counter!("stampede_wallet_sse_refused_total").increment(1);
}

/// A fan-out reader's pass failed (Redis away); it retries and wakes every
/// local stream so none misses an event.
pub fn wallet_fanout_error() {
    counter!("stampede_wallet_fanout_errors_total").increment(1);
}
