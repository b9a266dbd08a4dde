//! The ingest's metrics. Their names are what dashboards and alerts query: keep
//! them. Labels stay low-cardinality, as everywhere (`crate::telemetry`).

use std::time::Duration;

use ::metrics::{counter, histogram};

/// Its metrics exist from the start at zero, so a dashboard or an alert
/// reads 0 rather than "no data" before the first upload.
pub fn register() {
    for name in [
        "stampede_ingest_committed_rows_total",
        "stampede_ingest_batch_errors_total",
        "stampede_ingest_copy_fallbacks_total",
    ] {
        counter!(name).increment(0);
    }
    for result in ["ok", "refused", "store_failed"] {
        counter!("stampede_ingest_uploads_total", "result" => result).increment(0);
    }
    for outcome in ["created", "updated", "unchanged", "rejected"] {
        counter!("stampede_ingest_lines_total", "outcome" => outcome).increment(0);
    }
    let _ = histogram!("stampede_ingest_batch_duration_seconds");
}

/// An upload ended: `ok`, `refused` (bad input, client gone) or `store_failed`.
pub fn ingest_upload(result: &'static str) {
    counter!("stampede_ingest_uploads_total", "result" => result).increment(1);
}

/// Line outcomes of a finished upload.
pub fn ingest_lines(created: u64, updated: u64, unchanged: u64, rejected: u64) {
    for (outcome, lines) in [
        ("created", created),
        ("updated", updated),
        ("unchanged", unchanged),
        ("rejected", rejected),
    ] {
        counter!("stampede_ingest_lines_total", "outcome" => outcome).increment(lines);
    }
}

pub fn ingest_batch(rows: usize, elapsed: Duration) {
    counter!("stampede_ingest_committed_rows_total").increment(rows as u64);
    histogram!("stampede_ingest_batch_duration_seconds").record(elapsed.as_secs_f64());
}

pub fn ingest_batch_failed() {
    counter!("stampede_ingest_batch_errors_total").increment(1);
}

/// A bulk copy lost a race to another upload and its round was upserted.
pub fn ingest_copy_fallback() {
    counter!("stampede_ingest_copy_fallbacks_total").increment(1);
}
