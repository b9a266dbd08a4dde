//! The workers. Each takes one job at a time from the queue and runs it:
//!
//! 1. Plan (once per job, in one transaction with `total_count`): one chunk
//!    per UTC day of the range, and a day holding more than
//!    `STAMPEDE_SETTLEMENT_BATCH_ROWS` PAID transactions is split into
//!    merchant ranges of about that many rows. A chunk owns whole
//!    (merchant, day) settlements, so it can replace them outright: no chunk
//!    ever adds to another's partial sums.
//! 2. Run the chunks not yet done, `STAMPEDE_SETTLEMENT_CHUNKS_IN_FLIGHT` at
//!    once. A chunk is ONE transaction: upsert its settlements from a
//!    `GROUP BY`, delete its stale ones, mark its plan row done, and add its
//!    count to the job's `processed_count`. So a crash can never count a
//!    chunk twice, and a resumed job runs exactly the chunks not committed.
//! 3. Meanwhile a heartbeat renews the lease every
//!    `SETTLEMENT_HEARTBEAT_INTERVAL` and reads the cancel flag; a cancel
//!    drops the chunks in flight (their transactions roll back) and marks
//!    the job CANCELLED.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::{StreamExt, TryStreamExt};
use sqlx::{PgConnection, PgPool, Row};
use time::Date;
use tokio::sync::watch;

use super::Settlement;
use super::limits::{
    SETTLEMENT_CHUNK_TIMEOUT, SETTLEMENT_GAUGE_INTERVAL, SETTLEMENT_HEARTBEAT_INTERVAL,
    SETTLEMENT_PLAN_STATEMENT_TIMEOUT, SETTLEMENT_RETRY_AFTER_FAILURE,
};
use super::metrics;
use super::queue::{self, Beat, Claimed};
use crate::postgres::{BatchError, PostgresCause, commit_batch};

/// One worker: claims and runs jobs until shutdown.
pub async fn run(feature: Arc<Settlement>, n: usize, mut shutdown: watch::Receiver<bool>) {
    let pool = feature.ctx.postgres.clone();
    let lease_ms = feature.settings.lease.as_millis() as i64;
    tracing::debug!(worker = n, engine = %feature.engine_id, "settlement worker started");
    while !*shutdown.borrow() {
        match queue::claim(&pool, &feature.engine_id, lease_ms).await {
            Ok(Some(job)) => {
                run_job(&feature, job, &mut shutdown).await;
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "settlement worker cannot reach the queue"),
        }
        tokio::select! {
            _ = feature.wake.notified() => {}
            _ = tokio::time::sleep(feature.settings.poll) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Why a job's run stopped before all its chunks were done.
enum Stop {
    Cancel,
    /// Another engine owns the job now, or it was finished by a cancel.
    Lost,
    Shutdown,
}

#[derive(Debug, thiserror::Error)]
enum ChunkError {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    /// The chunk was already committed or the job is no longer ours: the
    /// transaction was rolled back.
    #[error("the job is no longer this engine's")]
    Fenced,
}

impl PostgresCause for ChunkError {
    fn postgres_cause(&self) -> Option<&sqlx::Error> {
        match self {
            ChunkError::Postgres(e) => Some(e),
            ChunkError::Fenced => None,
        }
    }
}

async fn run_job(feature: &Settlement, job: Claimed, shutdown: &mut watch::Receiver<bool>) {
    let pool = &feature.ctx.postgres;
    let engine = feature.engine_id.as_str();
    let id = job.job_id.as_str();
    tracing::info!(job = id, from = %job.from, to = %job.to, attempt = job.attempts, "settlement job claimed");
    if job.cancel_requested {
        if let Err(e) = queue::cancelled(pool, id, engine).await {
            tracing::warn!(job = id, error = %e, "could not mark a cancelled job");
        }
        metrics::settlement_job_finished("cancelled");
        return;
    }
    let started = Instant::now();
    let outcome = tokio::select! {
        result = work(feature, &job) => match result {
            Ok(()) => Ok(None),
            Err(BatchError::Write(ChunkError::Fenced)) => Ok(Some(Stop::Lost)),
            Err(e) => Err(e),
        },
        stop = watch_job(feature, id, shutdown) => Ok(Some(stop)),
    };
    let finished = match outcome {
        Ok(None) => match queue::finish(pool, id, engine).await {
            Ok(Some(status)) => {
                tracing::info!(job = id, status, elapsed = ?started.elapsed(), "settlement job finished");
                metrics::settlement_job_finished(if status == queue::COMPLETED {
                    "completed"
                } else {
                    "cancelled"
                });
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        },
        Ok(Some(Stop::Cancel)) => {
            tracing::info!(job = id, "settlement job cancelled");
            metrics::settlement_job_finished("cancelled");
            queue::cancelled(pool, id, engine).await.map(|_| ())
        }
        Ok(Some(Stop::Lost)) => {
            tracing::warn!(job = id, "settlement job lost its lease; another engine runs it");
            Ok(())
        }
        Ok(Some(Stop::Shutdown)) => queue::release(pool, id, engine).await,
        Err(e) => {
            tracing::error!(job = id, error = %e, "settlement job run failed; it will be retried");
            metrics::settlement_job_failed();
            let retry_ms = SETTLEMENT_RETRY_AFTER_FAILURE.as_millis() as i64;
            queue::failed(pool, id, engine, &e.to_string(), retry_ms).await
        }
    };
    if let Err(e) = finished {
        // The lease lapses by itself; the job is then taken over.
        tracing::warn!(job = id, error = %e, "could not record the end of a settlement job run");
    }
}

/// Renews the lease until told to stop; returns why the job must stop.
async fn watch_job(feature: &Settlement, job_id: &str, shutdown: &mut watch::Receiver<bool>) -> Stop {
    let pool = &feature.ctx.postgres;
    let lease = feature.settings.lease;
    let lease_ms = lease.as_millis() as i64;
    let mut renewed = Instant::now();
    let mut tick = tokio::time::interval(SETTLEMENT_HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return Stop::Shutdown,
        }
        if *shutdown.borrow() {
            return Stop::Shutdown;
        }
        match queue::heartbeat(pool, job_id, &feature.engine_id, lease_ms).await {
            Ok(Beat::Renewed) => renewed = Instant::now(),
            Ok(Beat::CancelRequested) => return Stop::Cancel,
            Ok(Beat::Lost) => return Stop::Lost,
            // Postgres away: the chunks fail too; if the lease ran out
            // meanwhile, another engine may own the job, so stop.
            Err(e) if renewed.elapsed() >= lease => {
                tracing::warn!(job = job_id, error = %e, "lease not renewed in time");
                return Stop::Lost;
            }
            Err(e) => tracing::debug!(job = job_id, error = %e, "heartbeat failed"),
        }
    }
}

/// A chunk of the plan.
#[derive(Debug, Clone)]
struct Chunk {
    seq: i32,
    day: Date,
    merchant_lo: i32,
    merchant_hi: i32,
}

/// Plans the job if it is not yet planned, then runs its remaining chunks.
async fn work(feature: &Settlement, job: &Claimed) -> Result<(), BatchError<ChunkError>> {
    let pool = &feature.ctx.postgres;
    if job.chunks_total.is_none() {
        plan(feature, job).await?;
    }
    let pending = pending_chunks(pool, &job.job_id).await?;
    futures_util::stream::iter(pending)
        .map(|chunk| run_chunk(feature, &job.job_id, chunk))
        .buffer_unordered(feature.settings.chunks_in_flight)
        .try_for_each(|()| async { Ok(()) })
        .await
}

async fn pending_chunks(pool: &PgPool, job_id: &str) -> Result<Vec<Chunk>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, day, merchant_lo, merchant_hi FROM settlement_chunks
         WHERE job_id = $1::uuid AND done_at IS NULL ORDER BY seq",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Chunk {
                seq: r.try_get(0)?,
                day: r.try_get(1)?,
                merchant_lo: r.try_get(2)?,
                merchant_hi: r.try_get(3)?,
            })
        })
        .collect()
}

/// Counts the range's PAID transactions per day (the job's `total`) and
/// writes the chunks, in one transaction, fenced by the lease.
async fn plan(feature: &Settlement, job: &Claimed) -> Result<(), BatchError<ChunkError>> {
    let pool = &feature.ctx.postgres;
    let input = (job.clone(), feature.engine_id.clone(), feature.settings.batch_rows);
    commit_batch(
        pool,
        SETTLEMENT_CHUNK_TIMEOUT * 4,
        &input,
        |conn, (job, engine, batch_rows)| {
            let batch_rows = *batch_rows;
            Box::pin(async move {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SET LOCAL statement_timeout = {}",
                    SETTLEMENT_PLAN_STATEMENT_TIMEOUT.as_millis()
                )))
                .execute(&mut *conn)
                .await?;
                let days: Vec<(Date, i64, Option<i32>, Option<i32>)> = sqlx::query_as(
                    "SELECT d::date, coalesce(c.n, 0), c.lo, c.hi
                 FROM generate_series($1::date, $2::date, interval '1 day') AS d
                 LEFT JOIN (
                     SELECT paid_at::date AS day, count(*) AS n, min(merchant_id) AS lo, max(merchant_id) AS hi
                     FROM transactions
                     WHERE status = 'PAID' AND paid_at::date BETWEEN $1 AND $2
                     GROUP BY 1
                 ) c ON c.day = d::date
                 ORDER BY 1",
                )
                .bind(job.from)
                .bind(job.to)
                .fetch_all(&mut *conn)
                .await?;
                let chunks = split(&days, batch_rows);
                let total: i64 = days.iter().map(|d| d.1).sum();
                sqlx::query(
                    "INSERT INTO settlement_chunks (job_id, seq, day, merchant_lo, merchant_hi, planned)
                 SELECT $1::uuid, * FROM UNNEST($2::int[], $3::date[], $4::int[], $5::int[], $6::bigint[])",
                )
                .bind(&job.job_id)
                .bind(chunks.iter().map(|c| c.0.seq).collect::<Vec<_>>())
                .bind(chunks.iter().map(|c| c.0.day).collect::<Vec<_>>())
                .bind(chunks.iter().map(|c| c.0.merchant_lo).collect::<Vec<_>>())
                .bind(chunks.iter().map(|c| c.0.merchant_hi).collect::<Vec<_>>())
                .bind(chunks.iter().map(|c| c.1).collect::<Vec<_>>())
                .execute(&mut *conn)
                .await?;
                let planned = sqlx::query(
                    "UPDATE jobs SET total_count = $3, chunks_total = $4, updated_at = now() AT TIME ZONE 'UTC'
                 WHERE job_id = $1::uuid AND locked_by = $2 AND status = 'RUNNING' AND chunks_total IS NULL",
                )
                .bind(&job.job_id)
                .bind(engine)
                .bind(total)
                .bind(chunks.len() as i32)
                .execute(&mut *conn)
                .await?;
                if planned.rows_affected() != 1 {
                    return Err(ChunkError::Fenced);
                }
                tracing::info!(job = %job.job_id, total, chunks = chunks.len(), "settlement job planned");
                Ok(())
            })
        },
    )
    .await
}

/// The chunks of a plan, with the rows each is expected to hold: one per
/// day, and a day of more than `batch_rows` rows split into equal-width
/// merchant ranges (about `batch_rows` each when merchants are evenly
/// spread; one merchant's day is never split). The first and last ranges of
/// a day stretch to the ends of `integer`, so the day's chunks cover every
/// merchant: a chunk also deletes settlements its merchants no longer have.
fn split(days: &[(Date, i64, Option<i32>, Option<i32>)], batch_rows: i64) -> Vec<(Chunk, i64)> {
    let mut chunks = Vec::new();
    for &(day, rows, lo, hi) in days {
        let (lo, hi) = (i64::from(lo.unwrap_or(0)), i64::from(hi.unwrap_or(0)));
        let span = hi - lo + 1;
        let parts = (rows.max(1) + batch_rows - 1) / batch_rows.max(1);
        let parts = parts.clamp(1, span.max(1));
        let width = (span + parts - 1) / parts;
        for i in 0..parts {
            let start = if i == 0 { i64::from(i32::MIN) } else { lo + i * width };
            let end = if i == parts - 1 {
                i64::from(i32::MAX)
            } else {
                lo + (i + 1) * width - 1
            };
            let planned = rows / parts + i64::from(i < rows % parts);
            chunks.push((
                Chunk {
                    seq: chunks.len() as i32,
                    day,
                    merchant_lo: start as i32,
                    merchant_hi: end as i32,
                },
                planned,
            ));
        }
    }
    chunks
}

/// Settles one chunk in one transaction (see the module doc).
async fn run_chunk(feature: &Settlement, job_id: &str, chunk: Chunk) -> Result<(), BatchError<ChunkError>> {
    let started = Instant::now();
    let input = (job_id.to_owned(), feature.engine_id.clone(), chunk);
    let processed = commit_batch(
        &feature.ctx.postgres,
        SETTLEMENT_CHUNK_TIMEOUT,
        &input,
        |conn, (job_id, engine, chunk)| -> BoxFuture<'_, Result<i64, ChunkError>> {
            Box::pin(settle_chunk(conn, job_id, engine, chunk))
        },
    )
    .await?;
    metrics::settlement_chunk(processed as u64, started.elapsed());
    Ok(())
}

async fn settle_chunk(conn: &mut PgConnection, job_id: &str, engine: &str, chunk: &Chunk) -> Result<i64, ChunkError> {
    // Claim the plan row first: a chunk already committed (by an engine that
    // held the job before us) is not settled again.
    let open = sqlx::query(
        "SELECT 1 FROM settlement_chunks WHERE job_id = $1::uuid AND seq = $2 AND done_at IS NULL FOR UPDATE",
    )
    .bind(job_id)
    .bind(chunk.seq)
    .fetch_optional(&mut *conn)
    .await?;
    if open.is_none() {
        return Err(ChunkError::Fenced);
    }
    let processed: i64 = sqlx::query_scalar(
        "WITH agg AS (
             SELECT merchant_id, sum(amount_cents)::bigint AS gross, sum(fee_cents)::bigint AS fee,
                    count(*)::int AS n
             FROM transactions
             WHERE status = 'PAID' AND paid_at::date = $1 AND merchant_id BETWEEN $2 AND $3
             GROUP BY merchant_id
         ), stale AS (
             DELETE FROM settlements s
             WHERE s.date = $1 AND s.merchant_id BETWEEN $2 AND $3
               AND NOT EXISTS (SELECT 1 FROM agg WHERE agg.merchant_id = s.merchant_id)
         ), up AS (
             INSERT INTO settlements (merchant_id, date, gross_cents, fee_cents, net_cents, txn_count, unique_run_id)
             SELECT merchant_id, $1, gross, fee, gross - fee, n, $4::uuid FROM agg
             ON CONFLICT (merchant_id, date) DO UPDATE SET
                 gross_cents = EXCLUDED.gross_cents,
                 fee_cents = EXCLUDED.fee_cents,
                 net_cents = EXCLUDED.net_cents,
                 txn_count = EXCLUDED.txn_count,
                 generated_at = EXCLUDED.generated_at,
                 unique_run_id = EXCLUDED.unique_run_id
             RETURNING txn_count
         )
         SELECT coalesce(sum(txn_count), 0)::bigint FROM up",
    )
    .bind(chunk.day)
    .bind(chunk.merchant_lo)
    .bind(chunk.merchant_hi)
    .bind(job_id)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE settlement_chunks SET done_at = now(), done_by = $3, processed = $4
         WHERE job_id = $1::uuid AND seq = $2",
    )
    .bind(job_id)
    .bind(chunk.seq)
    .bind(engine)
    .bind(processed)
    .execute(&mut *conn)
    .await?;
    // Last, so the job row is locked only for the commit: parallel chunks of
    // one job queue on it for that long.
    let advanced = sqlx::query(
        "UPDATE jobs SET
             processed_count = processed_count + $3,
             chunks_done = chunks_done + 1,
             progress = CASE WHEN total_count > 0
                             THEN least(100, floor((processed_count + $3) * 10000.0 / total_count) / 100)
                             ELSE 0 END,
             updated_at = now() AT TIME ZONE 'UTC'
         WHERE job_id = $1::uuid AND locked_by = $2 AND status = 'RUNNING'",
    )
    .bind(job_id)
    .bind(engine)
    .bind(processed)
    .execute(&mut *conn)
    .await?;
    if advanced.rows_affected() != 1 {
        return Err(ChunkError::Fenced);
    }
    Ok(processed)
}

/// Refreshes the queued/running gauges from the table (every engine sees
/// the same queue).
pub async fn gauges(feature: Arc<Settlement>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SETTLEMENT_GAUGE_INTERVAL);
    while !*shutdown.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => continue,
        }
        if let Ok(counts) = queue::counts(&feature.ctx.postgres).await {
            let count = |status: &str| counts.iter().find(|(s, _)| s == status).map_or(0, |c| c.1);
            metrics::settlement_jobs(count(queue::QUEUED), count(queue::RUNNING));
        }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;

    #[test]
    fn a_day_splits_into_merchant_ranges_covering_every_merchant() {
        let days = [
            (date!(2025 - 01 - 01), 35, Some(1), Some(1000)),
            (date!(2025 - 01 - 02), 0, None, None),
            (date!(2025 - 01 - 03), 5, Some(7), Some(7)),
            (date!(2025 - 01 - 04), 50, Some(42), Some(42)),
        ];
        let chunks = split(&days, 10);
        let first: Vec<_> = chunks.iter().filter(|c| c.0.day == days[0].0).collect();
        assert_eq!(first.len(), 4);
        assert_eq!(first[0].0.merchant_lo, i32::MIN);
        assert_eq!(first[3].0.merchant_hi, i32::MAX);
        for pair in first.windows(2) {
            assert_eq!(
                pair[0].0.merchant_hi + 1,
                pair[1].0.merchant_lo,
                "ranges are contiguous"
            );
        }
        assert_eq!(first.iter().map(|c| c.1).sum::<i64>(), 35);
        // Empty days and single-merchant days are one chunk over every merchant.
        for day in [days[1].0, days[2].0, days[3].0] {
            let of_day: Vec<_> = chunks.iter().filter(|c| c.0.day == day).collect();
            assert_eq!(of_day.len(), 1);
            assert_eq!((of_day[0].0.merchant_lo, of_day[0].0.merchant_hi), (i32::MIN, i32::MAX));
        }
        let seqs: Vec<i32> = chunks.iter().map(|c| c.0.seq).collect();
        assert_eq!(seqs, (0..chunks.len() as i32).collect::<Vec<_>>());
    }
}
