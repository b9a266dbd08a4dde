//! NDJSON purchase ingest: streamed multipart uploads, upserted into Postgres
//! by `transaction_id` with exact per-line outcomes, and the per-player
//! loyalty they feed.
//!
//! - `lines`: splits the byte stream into bounded lines as it arrives.
//! - `record`: one purchase line and the one place it is validated.
//! - `sink`: how a batch lands in Postgres (upsert, outcomes, spend deltas).
//! - `pipeline`: an upload's parser and its batch writer, overlapped.
//! - `handlers`: `POST /ingest`, `GET /players/{id}`.
//! - `generate`: `stampede gen-purchases`, realistic test files.
//!
//! Unlike the sale, ingest does not pass through Redis: the client waits for
//! Postgres to commit every row (it asks for created/updated counts, which
//! only Postgres knows), so nothing is acknowledged before it is durable and
//! there is no write-behind to do. Rows still go through the shared batch
//! writer (`crate::postgres::commit_batch`) in bounded transactions.

pub mod generate;
pub mod handlers;
pub mod lines;
mod pipeline;
pub mod record;
pub mod sink;

use crate::postgres::BatchError;

/// Why an upload or a player lookup was refused. Mapped to HTTP in
/// `crate::error`. Where rows were committed before the failure, the message
/// says how many lines: re-sending the file is safe, as the upsert is
/// idempotent.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(
        "{} uploads are already being processed; retry shortly",
        crate::limits::INGEST_UPLOADS_MAX
    )]
    Busy,
    #[error("expected a multipart/form-data upload with the file in field `file`")]
    NotMultipart,
    #[error("the upload has no `file` field")]
    MissingFileField,
    #[error("field `file` has content type `{0}`; NDJSON only (application/x-ndjson, text/plain, …)")]
    UnsupportedFileType(String),
    #[error("the file holds no purchase lines")]
    EmptyFile,
    #[error("the upload exceeds {limit} bytes; {committed} lines were committed before it was refused")]
    TooLarge { limit: u64, committed: u64 },
    #[error("the upload sent nothing for {idle:?}; {committed} lines were committed")]
    Stalled { idle: std::time::Duration, committed: u64 },
    #[error("the upload ended early or was cut off; {committed} lines were committed")]
    Interrupted { committed: u64 },
    #[error("malformed multipart body: {reason}; {committed} lines were committed")]
    Malformed { reason: String, committed: u64 },
    #[error("the database failed after {committed} lines were committed; re-sending the file is safe")]
    Store {
        committed: u64,
        #[source]
        source: BatchError<sqlx::Error>,
    },
    #[error("invalid player id: {0}")]
    InvalidPlayerId(&'static str),
    #[error("no purchases recorded for this player")]
    PlayerNotFound,
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
}
