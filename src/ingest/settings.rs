//! How `POST /ingest` batches and bounds an upload: its settings, read from
//! the environment at start (docs/ingest.md, "Settings").

use std::time::Duration;

use super::limits;
use crate::config::{ConfigError, Env};

#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Largest upload accepted, multipart framing included.
    pub max_bytes: u64,
    /// Rows per Postgres transaction.
    pub batch_rows: usize,
    /// Postgres connections one upload writes through at once.
    pub writers: usize,
    /// An upload that sends nothing for this long is abandoned.
    pub idle_timeout: Duration,
}

impl IngestSettings {
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            max_bytes: env.number(
                "STAMPEDE_INGEST_MAX_BYTES",
                limits::INGEST_UPLOAD_BYTES_DEFAULT,
                1,
                limits::INGEST_UPLOAD_BYTES_CEILING,
            )?,
            batch_rows: env.number(
                "STAMPEDE_INGEST_BATCH_ROWS",
                limits::INGEST_BATCH_ROWS_DEFAULT,
                1,
                limits::INGEST_BATCH_ROWS_CEILING,
            )?,
            writers: env.number("STAMPEDE_INGEST_WRITERS", 3, 1, limits::INGEST_WRITERS_MAX)?,
            idle_timeout: Duration::from_millis(env.number(
                "STAMPEDE_INGEST_IDLE_TIMEOUT_MS",
                limits::INGEST_BODY_IDLE_TIMEOUT_DEFAULT.as_millis() as u64,
                50,
                3_600_000,
            )?),
        })
    }
}
