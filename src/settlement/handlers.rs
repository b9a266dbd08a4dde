//! `POST /jobs/settlement`, `GET /jobs/{id}`, `POST /jobs/{id}/cancel`,
//! `GET /downloads/{job_id}.csv`. All are admin routes.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_DISPOSITION, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Postgres};
use time::Date;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::domain::{DateRange, JobId};
use super::limits::{
    SETTLEMENT_CANCEL_POLL, SETTLEMENT_CANCEL_WAIT, SETTLEMENT_DOWNLOAD_BUFFER_FRAMES, SETTLEMENT_DOWNLOAD_FRAME_BYTES,
    SETTLEMENT_DOWNLOAD_STATEMENT_TIMEOUT,
};
use super::metrics;
use super::queue::{self, CANCELLED, COMPLETED, FAILED, RUNNING};
use super::{Settlement, SettlementError};
use crate::server::error::ErrorBody;
use crate::server::http::{BodyError, HttpResponse, IdempotencyKey, json, read_json};

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(create, job, cancel, download),
    components(schemas(CreateJob, Queued, queue::JobView, ErrorBody))
)]
pub struct SettlementApi;

/// The body of `POST /jobs/settlement`; no other field is accepted.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // describes the request for the API document only
struct CreateJob {
    /// First UTC day, `YYYY-MM-DD`, inclusive.
    from: String,
    /// Last UTC day, `YYYY-MM-DD`, inclusive; at most 366 days after `from`.
    to: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Queued {
    job_id: String,
    status: String,
}

#[utoipa::path(
    post,
    path = "/jobs/settlement",
    tag = "settlement",
    summary = "Queue a settlement job over an inclusive range of UTC days (admin)",
    params(("Idempotency-Key" = Option<String>, Header, description = "same key and range: the same job")),
    request_body(content = CreateJob, content_type = "application/json"),
    responses(
        (status = 202, description = "queued (or the job of the same key)", body = Queued),
    )
)]
pub async fn create(state: &Settlement, req: Request<Incoming>) -> Result<HttpResponse, SettlementError> {
    let key = IdempotencyKey::from_headers(req.headers())?;
    let body: serde_json::Value = read_json(req).await?;
    let range = DateRange::from_body(&body)?;
    let (job_id, status, fingerprint) =
        queue::enqueue(&state.ctx.postgres, range, key.as_ref().map(IdempotencyKey::as_str)).await?;
    if fingerprint.as_deref() != Some(range.fingerprint().as_str()) {
        return Err(SettlementError::IdempotencyKeyReused);
    }
    state.wake.notify_one();
    Ok(json(StatusCode::ACCEPTED, &Queued { job_id, status }))
}

#[utoipa::path(
    get,
    path = "/jobs/{id}",
    tag = "settlement",
    summary = "A settlement job: status, progress, processed, total, download_url (admin)",
    params(("id" = String, Path, description = "the job id (a UUID)")),
    responses(
        (status = 200, description = "the job", body = queue::JobView),
    )
)]
pub async fn job(state: &Settlement, raw_id: &str) -> Result<HttpResponse, SettlementError> {
    let id = JobId::parse(raw_id)?;
    let view = queue::view(&state.ctx.postgres, &id)
        .await?
        .ok_or(SettlementError::JobNotFound)?;
    Ok(json(StatusCode::OK, &view))
}

/// Cancels, then waits (at most `SETTLEMENT_CANCEL_WAIT`) for the job's
/// owner to stop it, so the answer usually says CANCELLED: 200 once
/// cancelled, 202 if its owner has not stopped it yet.
#[utoipa::path(
    post,
    path = "/jobs/{id}/cancel",
    tag = "settlement",
    summary = "Cancel a queued or running settlement job within 1 s (admin)",
    params(("id" = String, Path, description = "the job id (a UUID)")),
    responses(
        (status = 200, description = "cancelled", body = queue::JobView),
        (status = 202, description = "flagged; its engine has not stopped it yet", body = queue::JobView),
    )
)]
pub async fn cancel(state: &Settlement, raw_id: &str) -> Result<HttpResponse, SettlementError> {
    let id = JobId::parse(raw_id)?;
    let pool = &state.ctx.postgres;
    let status = queue::request_cancel(pool, &id)
        .await?
        .ok_or(SettlementError::JobNotFound)?;
    match status.as_str() {
        COMPLETED => return Err(SettlementError::JobAlreadyCompleted),
        FAILED => return Err(SettlementError::JobAlreadyFailed),
        _ => {}
    }
    let deadline = Instant::now() + SETTLEMENT_CANCEL_WAIT;
    let mut status = status;
    while status == RUNNING && Instant::now() < deadline {
        tokio::time::sleep(SETTLEMENT_CANCEL_POLL).await;
        status = queue::status(pool, &id).await?.unwrap_or(status);
    }
    let view = queue::view(pool, &id).await?.ok_or(SettlementError::JobNotFound)?;
    let code = if view.status == CANCELLED {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(json(code, &view))
}

/// Streams the settlements of a completed job's range, straight from a
/// Postgres `COPY … TO STDOUT` into the response, in frames of about
/// `SETTLEMENT_DOWNLOAD_FRAME_BYTES`, never holding the file.
#[utoipa::path(
    get,
    path = "/downloads/{job_id}.csv",
    tag = "settlement",
    summary = "A completed job's settlements as CSV, streamed (admin)",
    params(("job_id" = String, Path, description = "the job id (a UUID)")),
    responses(
        (status = 200, description = "merchant_id,date,gross_cents,fee_cents,net_cents,txn_count; sorted by merchant and date", content_type = "text/csv", body = String),
    )
)]
pub async fn download(state: &Settlement, raw_id: &str) -> Result<HttpResponse, SettlementError> {
    let id = JobId::parse(raw_id)?;
    let pool = &state.ctx.postgres;
    let (status, from, to) = queue::status_and_range(pool, &id)
        .await?
        .ok_or(SettlementError::JobNotFound)?;
    if status != COMPLETED {
        return Err(SettlementError::JobNotCompleted(status));
    }
    let permit = state
        .downloads
        .clone()
        .try_acquire_owned()
        .map_err(|_| SettlementError::DownloadsBusy)?;
    let mut conn = pool.acquire().await?;
    // The pool's statement timeout bounds queries; a download lasts as long
    // as the client reads, so this one connection gets a longer bound (and
    // `RESET` gives it back its own afterwards).
    sqlx::query(AssertSqlSafe(format!(
        "SET statement_timeout = {}",
        SETTLEMENT_DOWNLOAD_STATEMENT_TIMEOUT.as_millis()
    )))
    .execute(&mut *conn)
    .await?;
    let (frames_tx, frames_rx) = mpsc::channel(SETTLEMENT_DOWNLOAD_BUFFER_FRAMES);
    let (started_tx, started_rx) = oneshot::channel();
    tokio::spawn(stream_csv(
        conn,
        copy_statement(from, to),
        frames_tx,
        started_tx,
        permit,
    ));
    // The COPY has begun (or failed, and the client gets a 503, not a
    // truncated 200).
    started_rx
        .await
        .map_err(|_| sqlx::Error::WorkerCrashed)?
        .map_err(SettlementError::Postgres)?;
    let frames = futures_util::stream::unfold(frames_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|frame: Result<Bytes, BodyError>| (frame.map(Frame::data), rx))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Ok(disposition) = HeaderValue::from_str(&format!("attachment; filename=\"{id}.csv\"")) {
        response.headers_mut().insert(CONTENT_DISPOSITION, disposition);
    }
    Ok(response)
}

/// `COPY` takes no bind parameters; the dates are typed `Date`s from the
/// jobs row, written in ISO form, so the text is safe.
fn copy_statement(from: Date, to: Date) -> String {
    format!(
        "COPY (SELECT merchant_id, date, gross_cents, fee_cents, net_cents, txn_count FROM settlements
               WHERE date BETWEEN '{from}' AND '{to}' ORDER BY merchant_id, date)
         TO STDOUT WITH (FORMAT csv, HEADER)"
    )
}

async fn stream_csv(
    mut conn: PoolConnection<Postgres>,
    statement: String,
    frames: mpsc::Sender<Result<Bytes, BodyError>>,
    started: oneshot::Sender<Result<(), sqlx::Error>>,
    _permit: OwnedSemaphorePermit,
) {
    let started_at = Instant::now();
    let mut bytes_sent = 0u64;
    let finished = async {
        let mut rows = match conn.copy_out_raw(&statement).await {
            Ok(rows) => {
                let _ = started.send(Ok(()));
                rows
            }
            Err(e) => {
                let _ = started.send(Err(e));
                return Ok(false);
            }
        };
        // COPY sends one message per row; frames gather rows up to a size.
        let mut frame = BytesMut::with_capacity(SETTLEMENT_DOWNLOAD_FRAME_BYTES);
        while let Some(row) = rows.next().await {
            frame.extend_from_slice(&row?);
            if frame.len() >= SETTLEMENT_DOWNLOAD_FRAME_BYTES {
                bytes_sent += frame.len() as u64;
                if frames.send(Ok(frame.split().freeze())).await.is_err() {
                    return Ok(false); // the client went away
                }
            }
        }
        if !frame.is_empty() {
            bytes_sent += frame.len() as u64;
            if frames.send(Ok(frame.freeze())).await.is_err() {
                return Ok(false);
            }
        }
        Ok::<bool, sqlx::Error>(true)
    }
    .await;
    match finished {
        Ok(true) => {
            metrics::settlement_download("ok", bytes_sent, started_at.elapsed());
            if sqlx::query("RESET statement_timeout")
                .execute(&mut *conn)
                .await
                .is_err()
            {
                conn.close_on_drop();
            }
        }
        Ok(false) => {
            metrics::settlement_download("aborted", bytes_sent, started_at.elapsed());
            // A COPY stopped half-way: closing is quicker than draining it.
            conn.close_on_drop();
        }
        Err(e) => {
            tracing::error!(error = %e, "settlement download failed mid-stream");
            metrics::settlement_download("failed", bytes_sent, started_at.elapsed());
            let _ = frames.send(Err(Box::new(e))).await;
            conn.close_on_drop();
        }
    }
}
