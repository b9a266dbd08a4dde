//! NDJSON purchase ingest: streamed multipart uploads, upserted into Postgres
//! by `transaction_id` with exact per-line outcomes, and the per-player
//! loyalty they feed.
//!
//! - `framing`: bounds the multipart preamble and part header blocks before
//!   the multipart parser sees them.
//! - `lines`: splits the byte stream into bounded lines as it arrives.
//! - `record`: one purchase line and the one place it is validated.
//! - `sink`: how a batch lands in Postgres (upsert, outcomes, spend deltas).
//! - `pipeline`: an upload's parser and its batch writer, overlapped.
//! - `handlers`: `POST /ingest`, `GET /players/{id}`.
//! - `generate`: `stampede gen-purchases`, realistic test files.
//! - `settings`: how uploads are batched and bounded, from the environment.
//!
//! Unlike the sale, ingest does not pass through Redis: the client waits for
//! Postgres to commit every row (it asks for created/updated counts, which
//! only Postgres knows), so nothing is acknowledged before it is durable and
//! there is no write-behind to do. Rows still go through the shared batch
//! writer (`crate::postgres::commit_batch`) in bounded transactions.

mod framing;
pub mod generate;
pub mod handlers;
pub mod limits;
pub mod lines;
mod metrics;
mod pipeline;
pub mod record;
pub mod settings;
pub mod sink;

use std::sync::Arc;

use hyper::{Method, StatusCode};
use tokio::sync::Semaphore;

use crate::config::ConfigError;
use crate::context::Context;
use crate::postgres::BatchError;
use crate::server::Route;
use crate::server::access::Access;
use crate::server::error::{ApiError, ErrorCode};
use crate::server::feature::Feature;
use settings::IngestSettings;

/// Why an upload or a player lookup was refused. Where rows were committed before the failure, the message
/// says how many lines: re-sending the file is safe, as the upsert is
/// idempotent.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{} uploads are already being processed; retry shortly", limits::INGEST_UPLOADS_MAX)]
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
    #[error("more than {max} bytes came before the first multipart boundary")]
    PreambleTooLarge { max: usize },
    #[error("a multipart part's header block is longer than {max} bytes; {committed} lines were committed")]
    PartHeadersTooLarge { max: usize, committed: u64 },
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

// The codes a IngestError answers with; routes list the ones they may answer.
pub const INGEST_BUSY: ErrorCode = ErrorCode::new(StatusCode::TOO_MANY_REQUESTS, "INGEST_BUSY");
pub const NOT_MULTIPART: ErrorCode = ErrorCode::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "NOT_MULTIPART");
pub const MISSING_FILE_FIELD: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "MISSING_FILE_FIELD");
pub const UNSUPPORTED_FILE_TYPE: ErrorCode =
    ErrorCode::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_FILE_TYPE");
pub const EMPTY_FILE: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "EMPTY_FILE");
pub const UPLOAD_TOO_LARGE: ErrorCode = ErrorCode::new(StatusCode::PAYLOAD_TOO_LARGE, "UPLOAD_TOO_LARGE");
pub const UPLOAD_STALLED: ErrorCode = ErrorCode::new(StatusCode::REQUEST_TIMEOUT, "UPLOAD_STALLED");
pub const UPLOAD_INTERRUPTED: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "UPLOAD_INTERRUPTED");
pub const MALFORMED_MULTIPART: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "MALFORMED_MULTIPART");
pub const MULTIPART_PREAMBLE_TOO_LARGE: ErrorCode =
    ErrorCode::new(StatusCode::BAD_REQUEST, "MULTIPART_PREAMBLE_TOO_LARGE");
pub const PART_HEADERS_TOO_LARGE: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "PART_HEADERS_TOO_LARGE");
pub const STORE_UNAVAILABLE: ErrorCode = ErrorCode::new(StatusCode::SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE");
pub const INVALID_PLAYER_ID: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_PLAYER_ID");
pub const PLAYER_NOT_FOUND: ErrorCode = ErrorCode::new(StatusCode::NOT_FOUND, "PLAYER_NOT_FOUND");

impl ApiError for IngestError {
    fn error_code(&self) -> ErrorCode {
        match self {
            IngestError::Busy => INGEST_BUSY,
            IngestError::NotMultipart => NOT_MULTIPART,
            IngestError::MissingFileField => MISSING_FILE_FIELD,
            IngestError::UnsupportedFileType(_) => UNSUPPORTED_FILE_TYPE,
            IngestError::EmptyFile => EMPTY_FILE,
            IngestError::TooLarge { .. } => UPLOAD_TOO_LARGE,
            IngestError::Stalled { .. } => UPLOAD_STALLED,
            IngestError::Interrupted { .. } => UPLOAD_INTERRUPTED,
            IngestError::Malformed { .. } => MALFORMED_MULTIPART,
            IngestError::PreambleTooLarge { .. } => MULTIPART_PREAMBLE_TOO_LARGE,
            IngestError::PartHeadersTooLarge { .. } => PART_HEADERS_TOO_LARGE,
            IngestError::Store { .. } | IngestError::Postgres(_) => STORE_UNAVAILABLE,
            IngestError::InvalidPlayerId(_) => INVALID_PLAYER_ID,
            IngestError::PlayerNotFound => PLAYER_NOT_FOUND,
        }
    }

    fn retry_after_secs(&self) -> Option<u32> {
        match self {
            IngestError::Busy | IngestError::Store { .. } | IngestError::Postgres(_) => Some(1),
            _ => None,
        }
    }

    fn is_internal(&self) -> bool {
        matches!(self, IngestError::Postgres(_))
    }
}

/// The ingest feature: what its handlers need.
pub struct Ingest {
    ctx: Arc<Context>,
    /// Uploads being ingested; bounded, as each holds Postgres connections
    /// (`STAMPEDE_INGEST_WRITERS`) for its whole duration.
    uploads: Semaphore,
    settings: IngestSettings,
}

impl Ingest {
    pub fn new(ctx: Arc<Context>) -> Result<Arc<Self>, ConfigError> {
        let settings = IngestSettings::from_env(&ctx.config.env())?;
        Ok(Arc::new(Self {
            ctx,
            uploads: Semaphore::new(limits::INGEST_UPLOADS_MAX),
            settings,
        }))
    }
}

impl Feature for Ingest {
    fn name(&self) -> &'static str {
        "ingest"
    }

    fn register_metrics(&self) {
        metrics::register();
    }

    fn api(&self) -> utoipa::openapi::OpenApi {
        <handlers::IngestApi as utoipa::OpenApi>::openapi()
    }

    fn routes(self: Arc<Self>) -> Vec<Route> {
        vec![
            Route::new(
                Method::POST,
                "/ingest",
                "ingest",
                Access::service("ingest"),
                self.clone(),
                |ingest, req, _| async move { handlers::ingest(&ingest, req).await },
            )
            .answers(&[
                MISSING_FILE_FIELD,
                EMPTY_FILE,
                MALFORMED_MULTIPART,
                MULTIPART_PREAMBLE_TOO_LARGE,
                PART_HEADERS_TOO_LARGE,
                UPLOAD_INTERRUPTED,
                UPLOAD_STALLED,
                UPLOAD_TOO_LARGE,
                NOT_MULTIPART,
                UNSUPPORTED_FILE_TYPE,
                INGEST_BUSY,
                STORE_UNAVAILABLE,
            ])
            .with_own_body_limit(),
            Route::new(
                Method::GET,
                "/players/{id}",
                "player",
                Access::player("id"),
                self,
                |ingest, _, params| async move { handlers::player(&ingest, params.get("id").unwrap_or("")).await },
            )
            .answers(&[INVALID_PLAYER_ID, PLAYER_NOT_FOUND, STORE_UNAVAILABLE]),
        ]
    }
}
