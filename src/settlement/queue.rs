//! The `jobs` table as a queue. Every transition is one guarded `UPDATE`:
//!
//! - claim: `QUEUED`, or `RUNNING` with a lapsed lease, becomes `RUNNING`
//!   owned by this engine (`FOR UPDATE SKIP LOCKED`, so two engines never
//!   claim the same row);
//! - heartbeat: the owner renews its lease and reads the cancel flag;
//! - finish: `COMPLETED`, `CANCELLED` or `FAILED`, only by the owner
//!   (`locked_by = me`), so an engine that lost its lease changes nothing.
//!
//! Chunk commits are fenced the same way (see `worker`).

use sqlx::{PgPool, Row};
use time::Date;

use super::domain::{DateRange, JobId};
use super::limits::SETTLEMENT_ATTEMPTS_MAX;

/// The statuses, as stored and as answered.
pub const QUEUED: &str = "QUEUED";
pub const RUNNING: &str = "RUNNING";
pub const COMPLETED: &str = "COMPLETED";
pub const CANCELLED: &str = "CANCELLED";
pub const FAILED: &str = "FAILED";

/// A job this engine has just claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub job_id: String,
    pub from: Date,
    pub to: Date,
    pub attempts: i32,
    pub cancel_requested: bool,
    /// `None` until the job is planned.
    pub chunks_total: Option<i32>,
}

/// What `GET /jobs/{id}` shows.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub job_id: String,
    pub status: String,
    /// Whole percent, 0 to 100; 100 once COMPLETED.
    pub progress: i64,
    pub processed: i64,
    pub total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download_url: Option<String>,
    pub from: String,
    pub to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn download_url(job_id: &str) -> String {
    format!("/downloads/{job_id}.csv")
}

/// Queues a job; with an idempotency key, the job already queued under it if
/// any. Returns the job id, its status, and the stored fingerprint of the
/// request that created it.
pub async fn enqueue(
    pool: &PgPool,
    range: DateRange,
    key: Option<&str>,
) -> Result<(String, String, Option<String>), sqlx::Error> {
    let fingerprint = range.fingerprint();
    let inserted = sqlx::query(
        "INSERT INTO jobs (from_date, to_date, idempotency_key, request_fingerprint)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (idempotency_key) DO NOTHING
         RETURNING job_id::text, status",
    )
    .bind(range.from())
    .bind(range.to())
    .bind(key)
    .bind(&fingerprint)
    .fetch_optional(pool)
    .await?;
    if let Some(row) = inserted {
        return Ok((row.try_get(0)?, row.try_get(1)?, Some(fingerprint)));
    }
    // Only a key conflict inserts nothing; the row exists (jobs are never
    // deleted by the engine).
    let row = sqlx::query("SELECT job_id::text, status, request_fingerprint FROM jobs WHERE idempotency_key = $1")
        .bind(key)
        .fetch_one(pool)
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
}

pub async fn view(pool: &PgPool, id: &JobId) -> Result<Option<JobView>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT job_id::text, status, processed_count, total_count, from_date, to_date, error
         FROM jobs WHERE job_id = $1::uuid",
    )
    .bind(id.as_str())
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let job_id: String = row.try_get(0)?;
    let status: String = row.try_get(1)?;
    let processed: i64 = row.try_get(2)?;
    let total: i64 = row.try_get(3)?;
    let from: Date = row.try_get(4)?;
    let to: Date = row.try_get(5)?;
    let completed = status == COMPLETED;
    let progress = if completed {
        100
    } else if total > 0 {
        // Floor, so 100 appears only with the last chunk; processed never
        // decreases and total is fixed once planned, so this is monotonic.
        (processed.saturating_mul(100) / total).clamp(0, 100)
    } else {
        0
    };
    Ok(Some(JobView {
        download_url: completed.then(|| download_url(&job_id)),
        job_id,
        status,
        progress,
        processed,
        total,
        from: from.to_string(),
        to: to.to_string(),
        error: row.try_get(6)?,
    }))
}

/// The status and range of a job, for the download.
pub async fn status_and_range(pool: &PgPool, id: &JobId) -> Result<Option<(String, Date, Date)>, sqlx::Error> {
    let row = sqlx::query("SELECT status, from_date, to_date FROM jobs WHERE job_id = $1::uuid")
        .bind(id.as_str())
        .fetch_optional(pool)
        .await?;
    row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .transpose()
}

/// Requests a cancel. A queued job, or a running one whose owner is gone
/// (lease lapsed), is cancelled at once; a running one is flagged, and its
/// owner stops at its next heartbeat. Returns the status after the update,
/// or the unchanged status of a job that cannot be cancelled (`None`: no
/// such job).
pub async fn request_cancel(pool: &PgPool, id: &JobId) -> Result<Option<String>, sqlx::Error> {
    let updated: Option<String> = sqlx::query_scalar(
        "WITH now_cancelled AS (
             SELECT job_id, (status = 'QUEUED' OR lease_until IS NULL OR lease_until < now()) AS at_once
             FROM jobs WHERE job_id = $1::uuid AND status IN ('QUEUED', 'RUNNING')
             FOR UPDATE
         )
         UPDATE jobs j SET
             cancel_requested = true,
             status = CASE WHEN c.at_once THEN 'CANCELLED' ELSE j.status END,
             finished_at = CASE WHEN c.at_once THEN now() ELSE j.finished_at END,
             locked_by = CASE WHEN c.at_once THEN NULL ELSE j.locked_by END,
             updated_at = now() AT TIME ZONE 'UTC'
         FROM now_cancelled c WHERE j.job_id = c.job_id
         RETURNING j.status",
    )
    .bind(id.as_str())
    .fetch_optional(pool)
    .await?;
    if updated.is_some() {
        return Ok(updated);
    }
    sqlx::query_scalar("SELECT status FROM jobs WHERE job_id = $1::uuid")
        .bind(id.as_str())
        .fetch_optional(pool)
        .await
}

pub async fn status(pool: &PgPool, id: &JobId) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT status FROM jobs WHERE job_id = $1::uuid")
        .bind(id.as_str())
        .fetch_optional(pool)
        .await
}

/// Claims the oldest claimable job for `engine`, with a lease of `lease_ms`.
/// Jobs whose owners keep dying (attempts exhausted) are failed instead.
pub async fn claim(pool: &PgPool, engine: &str, lease_ms: i64) -> Result<Option<Claimed>, sqlx::Error> {
    sqlx::query(
        "UPDATE jobs SET status = 'FAILED', finished_at = now(), locked_by = NULL,
             error = 'the job was interrupted ' || attempts || ' times; giving up',
             updated_at = now() AT TIME ZONE 'UTC'
         WHERE status = 'RUNNING' AND lease_until < now() AND attempts >= $1",
    )
    .bind(SETTLEMENT_ATTEMPTS_MAX)
    .execute(pool)
    .await?;
    let row = sqlx::query(
        "WITH next AS (
             SELECT job_id FROM jobs
             WHERE status = 'QUEUED'
                OR (status = 'RUNNING' AND (lease_until IS NULL OR lease_until < now()) AND attempts < $3)
             ORDER BY created_at
             LIMIT 1
             FOR UPDATE SKIP LOCKED
         )
         UPDATE jobs j SET
             status = 'RUNNING',
             locked_by = $1,
             lease_until = now() + make_interval(secs => $2::float8 / 1000),
             attempts = j.attempts + 1,
             started_at = coalesce(j.started_at, now()),
             updated_at = now() AT TIME ZONE 'UTC'
         FROM next WHERE j.job_id = next.job_id
         RETURNING j.job_id::text, j.from_date, j.to_date, j.attempts, j.cancel_requested, j.chunks_total",
    )
    .bind(engine)
    .bind(lease_ms)
    .bind(SETTLEMENT_ATTEMPTS_MAX)
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        Ok(Claimed {
            job_id: r.try_get(0)?,
            from: r.try_get(1)?,
            to: r.try_get(2)?,
            attempts: r.try_get(3)?,
            cancel_requested: r.try_get(4)?,
            chunks_total: r.try_get(5)?,
        })
    })
    .transpose()
}

/// What the owner learns from a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Lease renewed; keep going.
    Renewed,
    /// Lease renewed, and a cancel was requested.
    CancelRequested,
    /// The job is no longer ours (taken over, or finished by a cancel).
    Lost,
}

/// Every write a worker makes to the job it runs, guarded in one place: it
/// changes the job only while the job is still this engine's (`locked_by`)
/// and RUNNING, so an engine that lost its lease (taken over, or finished by
/// a cancel) changes nothing. `$1` is the job id, `$2` the engine; further
/// parameters follow.
macro_rules! own_job_update {
    ($set:literal) => {
        own_job_update!($set, "")
    };
    ($set:literal, $tail:literal) => {
        concat!(
            "UPDATE jobs SET ",
            $set,
            " WHERE job_id = $1::uuid AND locked_by = $2 AND status = 'RUNNING' ",
            $tail
        )
    };
}

pub async fn heartbeat(pool: &PgPool, job_id: &str, engine: &str, lease_ms: i64) -> Result<Beat, sqlx::Error> {
    let cancel: Option<bool> = sqlx::query_scalar(own_job_update!(
        "lease_until = now() + make_interval(secs => $3::float8 / 1000)",
        "RETURNING cancel_requested"
    ))
    .bind(job_id)
    .bind(engine)
    .bind(lease_ms)
    .fetch_optional(pool)
    .await?;
    Ok(match cancel {
        None => Beat::Lost,
        Some(true) => Beat::CancelRequested,
        Some(false) => Beat::Renewed,
    })
}

/// Marks the job COMPLETED, unless a cancel was requested meanwhile (then
/// CANCELLED). Returns the final status, or `None` if the job is not ours.
pub async fn finish(pool: &PgPool, job_id: &str, engine: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(own_job_update!(
        "status = CASE WHEN cancel_requested THEN 'CANCELLED' ELSE 'COMPLETED' END,
             progress = CASE WHEN cancel_requested THEN progress ELSE 100 END,
             result_path = CASE WHEN cancel_requested THEN NULL ELSE '/downloads/' || job_id || '.csv' END,
             finished_at = now(), locked_by = NULL, lease_until = NULL,
             updated_at = now() AT TIME ZONE 'UTC'",
        "RETURNING status"
    ))
    .bind(job_id)
    .bind(engine)
    .fetch_optional(pool)
    .await
}

pub async fn cancelled(pool: &PgPool, job_id: &str, engine: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(own_job_update!(
        "status = 'CANCELLED', finished_at = now(), locked_by = NULL, lease_until = NULL,
             updated_at = now() AT TIME ZONE 'UTC'"
    ))
    .bind(job_id)
    .bind(engine)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives the job back (shutdown): still RUNNING, claimable at once, and the
/// claim is not counted as an attempt.
pub async fn release(pool: &PgPool, job_id: &str, engine: &str) -> Result<(), sqlx::Error> {
    sqlx::query(own_job_update!(
        "locked_by = NULL, lease_until = now(), attempts = greatest(attempts - 1, 0),
             updated_at = now() AT TIME ZONE 'UTC'"
    ))
    .bind(job_id)
    .bind(engine)
    .execute(pool)
    .await?;
    Ok(())
}

/// The job's run failed: it is retried by any engine after `retry_ms`, or
/// FAILED once its attempts are spent.
pub async fn failed(pool: &PgPool, job_id: &str, engine: &str, error: &str, retry_ms: i64) -> Result<(), sqlx::Error> {
    sqlx::query(own_job_update!(
        "status = CASE WHEN attempts >= $4 THEN 'FAILED' ELSE status END,
             finished_at = CASE WHEN attempts >= $4 THEN now() ELSE NULL END,
             locked_by = NULL,
             lease_until = now() + make_interval(secs => $5::float8 / 1000),
             error = $3,
             updated_at = now() AT TIME ZONE 'UTC'"
    ))
    .bind(job_id)
    .bind(engine)
    .bind(error)
    .bind(SETTLEMENT_ATTEMPTS_MAX)
    .bind(retry_ms)
    .execute(pool)
    .await?;
    Ok(())
}

/// Jobs per status, for the gauges.
pub async fn counts(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT status, count(*) FROM jobs WHERE status IN ('QUEUED', 'RUNNING') GROUP BY status")
        .fetch_all(pool)
        .await
}
