//! `GET /admin/dead-letters` and `POST /admin/dead-letters/{id}/retry`: the
//! operator's view of the outbox events the flusher set aside, and the
//! replay after a fix. Wiring: the outbox (infrastructure) lists, counts and
//! replays; this module gives it routes, the admin guard and the document.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Serialize;

use crate::context::Context;
use crate::limits::{DEAD_LETTERS_PAGE_DEFAULT, DEAD_LETTERS_PAGE_MAX};
use crate::outbox::Flusher;
use crate::outbox::dead_letters::{self, DeadLetter, RetryError, StatusFilter};
use crate::server::access::Access;
use crate::server::error::{ApiError, ErrorBody, ErrorCode};
use crate::server::http::{HttpResponse, PageError, Query, json, rfc3339};
use crate::server::{RequestError, Route};

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("`status` must be unresolved, resolved or all")]
    InvalidStatus,
    #[error("`limit` must be a whole number from 1 to {DEAD_LETTERS_PAGE_MAX}")]
    InvalidLimit,
    #[error("`before` must be a positive whole number (a next_before)")]
    InvalidBefore,
    #[error("a dead letter id is a positive whole number")]
    InvalidId,
    #[error("no dead letter {0}")]
    NotFound(i64),
    /// The message carries Postgres's new refusal: the operator needs it,
    /// and only the admin sees it.
    #[error("the event still cannot be written: {0}")]
    StillFailing(String),
    #[error("postgres: {0}")]
    Store(String),
}

// The codes a DeadLetterError answers with; routes list the ones they may answer.
pub const INVALID_DEAD_LETTER_STATUS: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_DEAD_LETTER_STATUS");
pub const INVALID_LIMIT: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_LIMIT");
pub const INVALID_BEFORE: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_BEFORE");
pub const INVALID_DEAD_LETTER_ID: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_DEAD_LETTER_ID");
pub const DEAD_LETTER_NOT_FOUND: ErrorCode = ErrorCode::new(StatusCode::NOT_FOUND, "DEAD_LETTER_NOT_FOUND");
pub const DEAD_LETTER_STILL_FAILING: ErrorCode = ErrorCode::new(StatusCode::CONFLICT, "DEAD_LETTER_STILL_FAILING");
pub const STORE_UNAVAILABLE: ErrorCode = ErrorCode::new(StatusCode::SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE");

impl ApiError for DeadLetterError {
    fn error_code(&self) -> ErrorCode {
        match self {
            DeadLetterError::Request(e) => e.error_code(),
            DeadLetterError::InvalidStatus => INVALID_DEAD_LETTER_STATUS,
            DeadLetterError::InvalidLimit => INVALID_LIMIT,
            DeadLetterError::InvalidBefore => INVALID_BEFORE,
            DeadLetterError::InvalidId => INVALID_DEAD_LETTER_ID,
            DeadLetterError::NotFound(_) => DEAD_LETTER_NOT_FOUND,
            DeadLetterError::StillFailing(_) => DEAD_LETTER_STILL_FAILING,
            DeadLetterError::Store(_) => STORE_UNAVAILABLE,
        }
    }

    fn is_internal(&self) -> bool {
        matches!(self, DeadLetterError::Store(_))
    }

    fn allow(&self) -> Option<&str> {
        match self {
            DeadLetterError::Request(e) => e.allow(),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for DeadLetterError {
    fn from(e: sqlx::Error) -> Self {
        DeadLetterError::Store(e.to_string())
    }
}

struct DeadLetters {
    ctx: Arc<Context>,
    flusher: Arc<Flusher>,
}

pub fn routes(ctx: Arc<Context>, flusher: Arc<Flusher>) -> Vec<Route> {
    let state = Arc::new(DeadLetters { ctx, flusher });
    vec![
        Route::new(
            Method::GET,
            "/admin/dead-letters",
            "dead_letters",
            Access::Admin,
            state.clone(),
            |s, req, _| async move { list(&s, req).await },
        )
        .answers(&[
            INVALID_DEAD_LETTER_STATUS,
            INVALID_LIMIT,
            INVALID_BEFORE,
            STORE_UNAVAILABLE,
        ]),
        Route::new(
            Method::POST,
            "/admin/dead-letters/{id}/retry",
            "dead_letter_retry",
            Access::Admin,
            state,
            |s, _, params| async move { retry(&s, params.get("id")).await },
        )
        .answers(&[
            INVALID_DEAD_LETTER_ID,
            DEAD_LETTER_NOT_FOUND,
            DEAD_LETTER_STILL_FAILING,
            STORE_UNAVAILABLE,
        ]),
    ]
}

/// A dead letter as the routes show it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeadLetterView {
    id: i64,
    /// `<shard>-<stream entry id>-<n>`: what every sink is idempotent on.
    event_id: String,
    /// The event kind the stream named (possibly one no sink knows).
    kind: String,
    shard: i32,
    /// The outbox stream entry that held it (acknowledged since).
    entry_id: String,
    /// The event as the stream held it: `[kind, values]` (values joined by
    /// U+001F), or every field and value of an older one-event entry.
    fields: Vec<String>,
    /// The last failure: Postgres's refusal, or why it could not be decoded.
    error: String,
    /// Failed writes: the flusher's, then each failed retry.
    attempts: i32,
    first_failed_at: String,
    last_failed_at: String,
    /// `unresolved` or `resolved`.
    status: String,
    /// When a retry wrote it.
    resolved_at: Option<String>,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(d: DeadLetter) -> Self {
        DeadLetterView {
            id: d.id,
            event_id: d.event_id,
            kind: d.kind,
            shard: d.shard,
            entry_id: d.entry_id,
            fields: d.fields,
            error: d.error,
            attempts: d.attempts,
            first_failed_at: rfc3339(d.first_failed_ms),
            last_failed_at: rfc3339(d.last_failed_ms),
            status: d.status,
            resolved_at: d.resolved_ms.map(rfc3339),
        }
    }
}

/// A page of `GET /admin/dead-letters`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeadLetterPage {
    dead_letters: Vec<DeadLetterView>,
    /// Pass as `before` for the next (older) page; null on the last page.
    next_before: Option<i64>,
}

/// This module's part of `GET /openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list, retry), components(schemas(DeadLetterView, DeadLetterPage, ErrorBody)))]
pub struct DeadLettersApi;

#[utoipa::path(get, path = "/admin/dead-letters", tag = "ops",
    summary = "Outbox events set aside because Postgres refused them (admin)",
    description = "Newest first. An event is set aside after failing alone with a data error (a constraint, a value \
Postgres refuses, a value that does not parse) `DEAD_LETTER_AFTER_ATTEMPTS` times, or at once when it cannot be \
decoded; its shard then flows on. Replay one with `POST /admin/dead-letters/{id}/retry` once its cause is fixed.",
    params(
        ("status" = Option<String>, Query, description = "`unresolved` (default), `resolved` or `all`"),
        ("limit" = Option<i64>, Query, description = "1-500, default 50"),
        ("before" = Option<i64>, Query, description = "only ids below this: a page's `next_before`"),
    ),
    responses(
        (status = 200, description = "a page of dead letters", body = DeadLetterPage),
    ))]
async fn list(state: &DeadLetters, req: Request<Incoming>) -> Result<HttpResponse, DeadLetterError> {
    let query = Query::parse(req.uri().query());
    let filter = match query.get(&["status"]) {
        None => StatusFilter::Unresolved,
        Some(raw) => StatusFilter::parse(raw).ok_or(DeadLetterError::InvalidStatus)?,
    };
    let page = query
        .page(DEAD_LETTERS_PAGE_DEFAULT, DEAD_LETTERS_PAGE_MAX)
        .map_err(|e| match e {
            PageError::Limit => DeadLetterError::InvalidLimit,
            PageError::Before => DeadLetterError::InvalidBefore,
        })?;
    let letters = dead_letters::list(&state.ctx.postgres, filter, page.before, page.limit).await?;
    let next_before = page.next_before(letters.len(), letters.last().map(|d| d.id));
    Ok(json(
        StatusCode::OK,
        &DeadLetterPage {
            dead_letters: letters.into_iter().map(DeadLetterView::from).collect(),
            next_before,
        },
    ))
}

#[utoipa::path(post, path = "/admin/dead-letters/{id}/retry", tag = "ops",
    summary = "Replay a dead letter through the sinks (admin)",
    description = "Decodes the event from its raw fields and writes it as the flusher would, in one transaction with \
its resolution. A resolved dead letter is answered as it is. `DEAD_LETTER_STILL_FAILING` (409): the sinks refused it \
again; the new error and attempt are recorded.",
    params(("id" = i64, Path, description = "the dead letter's id")),
    responses(
        (status = 200, description = "the dead letter, resolved", body = DeadLetterView),
    ))]
async fn retry(state: &DeadLetters, raw_id: Option<&str>) -> Result<HttpResponse, DeadLetterError> {
    let id = raw_id
        .and_then(|raw| raw.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .ok_or(DeadLetterError::InvalidId)?;
    match state.flusher.retry_dead_letter(id).await {
        Ok(letter) => Ok(json(StatusCode::OK, &DeadLetterView::from(letter))),
        Err(RetryError::NotFound(id)) => Err(DeadLetterError::NotFound(id)),
        Err(RetryError::StillFailing { letter }) => Err(DeadLetterError::StillFailing(letter.error)),
        Err(RetryError::Unavailable(e)) => Err(DeadLetterError::Store(e)),
    }
}
