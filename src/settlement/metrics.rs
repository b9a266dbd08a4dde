//! The settlement jobs' metrics. Their names are what dashboards and alerts query: keep
//! them. Labels stay low-cardinality, as everywhere (`crate::telemetry`).

use std::time::Duration;

use ::metrics::{counter, gauge, histogram};

/// Its metrics exist from the start at zero, so a dashboard or an alert
/// reads 0 rather than "no data" before the first job; the queued/running
/// gauges until their first reading, an interval after start.
pub fn register() {
    for name in [
        "stampede_settlement_rows_total",
        "stampede_settlement_chunks_total",
        "stampede_settlement_job_failures_total",
        "stampede_settlement_download_bytes_total",
    ] {
        counter!(name).increment(0);
    }
    for status in ["queued", "running"] {
        gauge!("stampede_settlement_jobs", "status" => status).increment(0.0);
    }
    for status in ["completed", "cancelled"] {
        counter!("stampede_settlement_jobs_finished_total", "status" => status).increment(0);
    }
    for result in ["ok", "aborted", "failed"] {
        counter!("stampede_settlement_downloads_total", "result" => result).increment(0);
    }
    for name in [
        "stampede_settlement_chunk_duration_seconds",
        "stampede_settlement_download_duration_seconds",
    ] {
        let _ = histogram!(name);
    }
}

/// Jobs queued and running, across every engine (read from the table).
pub fn settlement_jobs(queued: i64, running: i64) {
    gauge!("stampede_settlement_jobs", "status" => "queued").set(queued as f64);
    gauge!("stampede_settlement_jobs", "status" => "running").set(running as f64);
}

/// A chunk committed: transactions settled and how long it took.
pub fn settlement_chunk(rows: u64, elapsed: Duration) {
    counter!("stampede_settlement_rows_total").increment(rows);
    counter!("stampede_settlement_chunks_total").increment(1);
    histogram!("stampede_settlement_chunk_duration_seconds").record(elapsed.as_secs_f64());
}

/// A job ended here: `completed` or `cancelled`.
pub fn settlement_job_finished(status: &'static str) {
    counter!("stampede_settlement_jobs_finished_total", "status" => status).increment(1);
}

/// A job's run failed (it is retried, or FAILED once its attempts are spent).
pub fn settlement_job_failed() {
    counter!("stampede_settlement_job_failures_total").increment(1);
}

/// A CSV download ended: `ok`, `aborted` (client gone) or `failed`.
pub fn settlement_download(result: &'static str, bytes: u64, elapsed: Duration) {
    counter!("stampede_settlement_downloads_total", "result" => result).increment(1);
    counter!("stampede_settlement_download_bytes_total").increment(bytes);
    histogram!("stampede_settlement_download_duration_seconds").record(elapsed.as_secs_f64());
}
