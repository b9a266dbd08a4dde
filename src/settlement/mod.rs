//! Settlement jobs: per-merchant, per-UTC-day totals of PAID transactions,
//! computed by background workers from a durable Postgres queue, with exact
//! progress, cancel, crash resume and a streamed CSV.
//!
//! - `domain`: the request body, dates, job ids, idempotency keys.
//! - `queue`: the `jobs` table as a queue: claim (`FOR UPDATE SKIP LOCKED`),
//!   lease, heartbeat, the final transitions.
//! - `worker`: the workers: plan a job into chunks, run the chunks, each one
//!   transaction that also advances the checkpoint.
//! - `handlers`: `POST /jobs/settlement`, `GET /jobs/{id}`,
//!   `POST /jobs/{id}/cancel`, `GET /downloads/{job_id}.csv`.
//! - `generate`: `stampede gen-transactions`, test data loaded by `COPY`.
//! - `settings`: workers, chunk size and lease, from the environment.
//!
//! Nothing here passes through Redis: a job is minutes of Postgres work on
//! Postgres rows, and its state (queue, lease, checkpoint) lives in the same
//! database, so it commits in the same transactions as the results.
//!
//! Completed orders become transactions in the orders feature's sink, in
//! the transaction that writes the order row (its product's merchant, a fee
//! of `STAMPEDE_FEE_BPS` basis points rounded down, `PAID`, `paid_at` the
//! completion time in UTC): features never import each other, and the
//! `transactions` table is the contract between them.

pub mod domain;
pub mod generate;
mod handlers;
pub mod limits;
mod metrics;
mod queue;
pub mod settings;
mod worker;

use std::sync::Arc;

use hyper::{Method, StatusCode};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::config::ConfigError;
use crate::context::Context;
use crate::server::access::Access;
use crate::server::error::{self, ApiError, ErrorCode};
use crate::server::feature::Feature;
use crate::server::{RequestError, Route};
use domain::Field;
use settings::SettlementSettings;

/// Why a settlement request was refused.
#[derive(Debug, thiserror::Error)]
pub enum SettlementError {
    #[error("the body must be a JSON object")]
    NotAnObject,
    #[error("unknown field `{0}`; the body takes `from` and `to` only")]
    UnknownField(String),
    #[error("missing field `{0}`")]
    MissingField(Field),
    #[error("`{0}` must be a date written YYYY-MM-DD")]
    InvalidDate(Field),
    #[error("`from` is after `to`")]
    FromAfterTo,
    #[error("the range spans {0} days; at most {max} are allowed", max = limits::SETTLEMENT_RANGE_DAYS_MAX)]
    RangeTooLong(i64),
    #[error(
        "Idempotency-Key must be 1 to {} printable ASCII characters",
        crate::limits::IDEMPOTENCY_KEY_BYTES_MAX
    )]
    InvalidIdempotencyKey,
    #[error("this Idempotency-Key was used with another body")]
    IdempotencyKeyReused,
    #[error("no such job")]
    JobNotFound,
    #[error("the job is {0}; its CSV exists once it is COMPLETED")]
    JobNotCompleted(String),
    #[error("the job already completed; there is nothing to cancel")]
    JobAlreadyCompleted,
    #[error("the job already failed; there is nothing to cancel")]
    JobAlreadyFailed,
    #[error(
        "{} downloads are already streaming; retry shortly",
        limits::SETTLEMENT_DOWNLOADS_MAX
    )]
    DownloadsBusy,
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
}

// The codes a SettlementError answers with; routes list the ones they may answer.
pub const INVALID_BODY: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_BODY");
pub const UNKNOWN_FIELD: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "UNKNOWN_FIELD");
pub const MISSING_FIELD: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "MISSING_FIELD");
pub const INVALID_DATE: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_DATE");
pub const FROM_AFTER_TO: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "FROM_AFTER_TO");
pub const RANGE_TOO_LONG: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "RANGE_TOO_LONG");
pub const INVALID_IDEMPOTENCY_KEY: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_IDEMPOTENCY_KEY");
pub const IDEMPOTENCY_KEY_REUSED: ErrorCode =
    ErrorCode::new(StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED");
pub const JOB_NOT_FOUND: ErrorCode = ErrorCode::new(StatusCode::NOT_FOUND, "JOB_NOT_FOUND");
pub const JOB_NOT_COMPLETED: ErrorCode = ErrorCode::new(StatusCode::CONFLICT, "JOB_NOT_COMPLETED");
pub const JOB_ALREADY_COMPLETED: ErrorCode = ErrorCode::new(StatusCode::CONFLICT, "JOB_ALREADY_COMPLETED");
pub const JOB_ALREADY_FAILED: ErrorCode = ErrorCode::new(StatusCode::CONFLICT, "JOB_ALREADY_FAILED");
pub const DOWNLOADS_BUSY: ErrorCode = ErrorCode::new(StatusCode::TOO_MANY_REQUESTS, "DOWNLOADS_BUSY");
pub const STORE_UNAVAILABLE: ErrorCode = ErrorCode::new(StatusCode::SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE");

impl ApiError for SettlementError {
    fn error_code(&self) -> ErrorCode {
        match self {
            SettlementError::NotAnObject => INVALID_BODY,
            SettlementError::UnknownField(_) => UNKNOWN_FIELD,
            SettlementError::MissingField(_) => MISSING_FIELD,
            SettlementError::InvalidDate(_) => INVALID_DATE,
            SettlementError::FromAfterTo => FROM_AFTER_TO,
            SettlementError::RangeTooLong(_) => RANGE_TOO_LONG,
            SettlementError::InvalidIdempotencyKey => INVALID_IDEMPOTENCY_KEY,
            SettlementError::IdempotencyKeyReused => IDEMPOTENCY_KEY_REUSED,
            SettlementError::JobNotFound => JOB_NOT_FOUND,
            SettlementError::JobNotCompleted(_) => JOB_NOT_COMPLETED,
            SettlementError::JobAlreadyCompleted => JOB_ALREADY_COMPLETED,
            SettlementError::JobAlreadyFailed => JOB_ALREADY_FAILED,
            SettlementError::DownloadsBusy => DOWNLOADS_BUSY,
            SettlementError::Request(e) => e.error_code(),
            SettlementError::Postgres(_) => STORE_UNAVAILABLE,
        }
    }

    fn retry_after_secs(&self) -> Option<u32> {
        match self {
            SettlementError::DownloadsBusy | SettlementError::Postgres(_) => Some(1),
            SettlementError::Request(e) => e.retry_after_secs(),
            _ => None,
        }
    }

    fn is_internal(&self) -> bool {
        matches!(self, SettlementError::Postgres(_))
    }

    fn allow(&self) -> Option<&str> {
        match self {
            SettlementError::Request(e) => e.allow(),
            _ => None,
        }
    }
}

/// The settlement feature: what its handlers and workers need.
pub struct Settlement {
    ctx: Arc<Context>,
    settings: SettlementSettings,
    /// Names this engine's workers in `jobs.locked_by`: the consumer name
    /// plus a random part, so a restarted engine never mistakes a dead
    /// engine's lease for its own.
    engine_id: String,
    /// Wakes an idle worker when a job is queued on this engine.
    wake: Notify,
    /// Downloads streaming at once; each holds a Postgres connection.
    downloads: Arc<Semaphore>,
}

impl Settlement {
    pub fn new(ctx: Arc<Context>) -> Result<Arc<Self>, ConfigError> {
        let settings = SettlementSettings::from_env(&ctx.config.env())?;
        let engine_id = format!("{}-{:016x}", ctx.config.flush.consumer, rand::random::<u64>());
        Ok(Arc::new(Self {
            ctx,
            settings,
            engine_id,
            wake: Notify::new(),
            downloads: Arc::new(Semaphore::new(limits::SETTLEMENT_DOWNLOADS_MAX)),
        }))
    }
}

impl Feature for Settlement {
    fn name(&self) -> &'static str {
        "settlement"
    }

    fn register_metrics(&self) {
        metrics::register();
    }

    fn api(&self) -> utoipa::openapi::OpenApi {
        <handlers::SettlementApi as utoipa::OpenApi>::openapi()
    }

    fn routes(self: Arc<Self>) -> Vec<Route> {
        vec![
            Route::new(
                Method::POST,
                "/jobs/settlement",
                "settlement_create",
                Access::Admin,
                self.clone(),
                |s, req, _| async move { handlers::create(&s, req).await },
            )
            .answers(error::BODY_ANSWERS)
            .answers(&[
                INVALID_BODY,
                UNKNOWN_FIELD,
                MISSING_FIELD,
                INVALID_DATE,
                FROM_AFTER_TO,
                RANGE_TOO_LONG,
                INVALID_IDEMPOTENCY_KEY,
                IDEMPOTENCY_KEY_REUSED,
                STORE_UNAVAILABLE,
            ]),
            Route::new(
                Method::GET,
                "/jobs/{id}",
                "settlement_job",
                Access::Admin,
                self.clone(),
                |s, _, params| async move { handlers::job(&s, params.get("id").unwrap_or("")).await },
            )
            .answers(&[JOB_NOT_FOUND, STORE_UNAVAILABLE]),
            Route::new(
                Method::POST,
                "/jobs/{id}/cancel",
                "settlement_cancel",
                Access::Admin,
                self.clone(),
                |s, _, params| async move { handlers::cancel(&s, params.get("id").unwrap_or("")).await },
            )
            .answers(&[
                JOB_NOT_FOUND,
                JOB_ALREADY_COMPLETED,
                JOB_ALREADY_FAILED,
                STORE_UNAVAILABLE,
            ]),
            Route::new(
                Method::GET,
                "/downloads/{job_id}.csv",
                "settlement_download",
                Access::Admin,
                self,
                |s, _, params| async move { handlers::download(&s, params.get("job_id").unwrap_or("")).await },
            )
            .answers(&[JOB_NOT_FOUND, JOB_NOT_COMPLETED, DOWNLOADS_BUSY, STORE_UNAVAILABLE]),
        ]
    }

    fn spawn_background(self: Arc<Self>, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let mut tasks: Vec<JoinHandle<()>> = (0..self.settings.workers)
            .map(|n| tokio::spawn(worker::run(self.clone(), n, shutdown.clone())))
            .collect();
        tasks.push(tokio::spawn(worker::gauges(self, shutdown)));
        tasks
    }
}
