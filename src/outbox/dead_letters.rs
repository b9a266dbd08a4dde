//! Dead letters: outbox events the flusher set aside because they cannot be
//! written (migration 0008), so that one bad event never holds up the rest
//! of its shard. Nothing is dropped: a row keeps the event's raw fields, and
//! [`retry`] replays it through the same sinks once an operator has fixed
//! what made Postgres refuse it.
//!
//! The flusher writes rows here (`set_aside`); the wiring lists and retries
//! them (`GET /admin/dead-letters`, `POST /admin/dead-letters/{id}/retry`);
//! reconcile counts the unresolved ones as mismatches.

use std::collections::HashSet;
use std::sync::Arc;

use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use super::applied::{self, Placed};
use super::event::{decode_stored, stored_kind};
use super::{SinkError, SinkRegistry};
use crate::limits::{DEAD_LETTER_TEXT_BYTES_MAX, POSTGRES_STATEMENT_TIMEOUT};
use crate::postgres::{self, BatchError, PostgresCause};

/// An event to set aside, as the flusher last saw it fail.
#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    pub event_id: String,
    pub shard: u64,
    pub entry_id: String,
    /// The raw fields (see `Undecodable::fields`); the kind is read from them.
    pub fields: Vec<String>,
    pub error: String,
    pub attempts: u32,
    pub first_failed_ms: i64,
    pub last_failed_ms: i64,
}

/// A row of `outbox_dead_letters`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub event_id: String,
    pub kind: String,
    pub shard: i32,
    pub entry_id: String,
    pub fields: Vec<String>,
    pub error: String,
    pub attempts: i32,
    pub first_failed_ms: i64,
    pub last_failed_ms: i64,
    /// `unresolved` or `resolved`.
    pub status: String,
    pub resolved_ms: Option<i64>,
}

impl DeadLetter {
    pub fn is_resolved(&self) -> bool {
        self.status == "resolved"
    }
}

/// Which dead letters a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Unresolved,
    Resolved,
    All,
}

impl StatusFilter {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "unresolved" => Some(Self::Unresolved),
            "resolved" => Some(Self::Resolved),
            "all" => Some(Self::All),
            _ => None,
        }
    }

    /// A fixed condition per filter, so `unresolved` reads the partial index.
    fn condition(self) -> &'static str {
        match self {
            Self::Unresolved => "status = 'unresolved'",
            Self::Resolved => "status = 'resolved'",
            Self::All => "true",
        }
    }
}

/// Why a replay did not resolve a dead letter.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("no dead letter {0}")]
    NotFound(i64),
    /// The sinks refused the event again, because of its data: the new error
    /// is recorded on the row.
    #[error("the event still cannot be written: {}", .letter.error)]
    StillFailing { letter: Box<DeadLetter> },
    /// Postgres could not be asked (away, busy, timed out): nothing changed.
    #[error("postgres: {0}")]
    Unavailable(String),
}

const COLUMNS: &str = "id, event_id, kind, shard, entry_id, fields, error, attempts,
     (extract(epoch FROM first_failed_at) * 1000)::bigint AS first_failed_ms,
     (extract(epoch FROM last_failed_at) * 1000)::bigint AS last_failed_ms,
     status, (extract(epoch FROM resolved_at) * 1000)::bigint AS resolved_ms";

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    event_id: String,
    kind: String,
    shard: i32,
    entry_id: String,
    fields: Vec<u8>,
    error: String,
    attempts: i32,
    first_failed_ms: i64,
    last_failed_ms: i64,
    status: String,
    resolved_ms: Option<i64>,
}

impl From<Row> for DeadLetter {
    fn from(row: Row) -> Self {
        DeadLetter {
            id: row.id,
            event_id: row.event_id,
            kind: row.kind,
            shard: row.shard,
            entry_id: row.entry_id,
            fields: decode_fields(&row.fields),
            error: row.error,
            attempts: row.attempts,
            first_failed_ms: row.first_failed_ms,
            last_failed_ms: row.last_failed_ms,
            status: row.status,
            resolved_ms: row.resolved_ms,
        }
    }
}

/// The raw fields are kept as a JSON array of strings in bytes: JSON escapes
/// what `text` cannot hold (NUL), so no value can fail its own set-aside.
fn encode_fields(fields: &[String]) -> Vec<u8> {
    serde_json::to_vec(fields).unwrap_or_default()
}

fn decode_fields(bytes: &[u8]) -> Vec<String> {
    serde_json::from_slice(bytes).unwrap_or_else(|_| vec![String::from_utf8_lossy(bytes).into_owned()])
}

/// Text for a `text` column: without NUL, and at most
/// `DEAD_LETTER_TEXT_BYTES_MAX` bytes (cut at a character boundary).
fn storable(text: &str) -> String {
    let mut end = text.len().min(DEAD_LETTER_TEXT_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].replace('\0', "\u{fffd}")
}

/// Writes the rows and commits: the caller acknowledges the events' entries
/// only after this returns. Idempotent on the event id: setting aside an
/// event again (after a crash before the acknowledgement) adds its attempts
/// to its row.
pub(super) async fn set_aside(pool: &PgPool, letters: &[NewDeadLetter]) -> Result<(), sqlx::Error> {
    let mut rows = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for letter in letters {
        rows.0.push(letter.event_id.clone());
        rows.1.push(storable(stored_kind(&letter.fields)));
        rows.2.push(letter.shard as i32);
        rows.3.push(letter.entry_id.clone());
        rows.4.push(encode_fields(&letter.fields));
        rows.5.push(storable(&letter.error));
        rows.6.push(letter.attempts.min(i32::MAX as u32) as i32);
        rows.7.push(letter.first_failed_ms);
        rows.8.push(letter.last_failed_ms);
    }
    sqlx::query(
        "INSERT INTO outbox_dead_letters
             (event_id, kind, shard, entry_id, fields, error, attempts, first_failed_at, last_failed_at)
         SELECT e, k, s, n, f, r, a, to_timestamp(0) + fi * interval '1 millisecond',
                to_timestamp(0) + la * interval '1 millisecond'
         FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::bytea[], $6::text[], $7::int[],
                     $8::bigint[], $9::bigint[]) AS u(e, k, s, n, f, r, a, fi, la)
         ON CONFLICT (event_id) DO UPDATE
            SET attempts = outbox_dead_letters.attempts + EXCLUDED.attempts,
                error = EXCLUDED.error, last_failed_at = EXCLUDED.last_failed_at
            WHERE outbox_dead_letters.status = 'unresolved'",
    )
    .bind(&rows.0)
    .bind(&rows.1)
    .bind(&rows.2)
    .bind(&rows.3)
    .bind(&rows.4)
    .bind(&rows.5)
    .bind(&rows.6)
    .bind(&rows.7)
    .bind(&rows.8)
    .execute(pool)
    .await?;
    Ok(())
}

/// Which of `event_ids` have a row already: set aside before, by this
/// engine ahead of a crash or by another consumer of the same entry.
pub(super) async fn already_set_aside(pool: &PgPool, event_ids: &[String]) -> Result<HashSet<String>, sqlx::Error> {
    let found: Vec<String> = sqlx::query_scalar("SELECT event_id FROM outbox_dead_letters WHERE event_id = ANY($1)")
        .bind(event_ids)
        .fetch_all(pool)
        .await?;
    Ok(found.into_iter().collect())
}

/// Up to `limit` dead letters, newest first, with an id below `before`.
pub async fn list(
    pool: &PgPool,
    filter: StatusFilter,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM outbox_dead_letters
         WHERE {} AND ($1::bigint IS NULL OR id < $1)
         ORDER BY id DESC LIMIT $2",
        filter.condition()
    );
    let rows: Vec<Row> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(before)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(DeadLetter::from).collect())
}

/// Dead letters not yet resolved: events Redis decided that Postgres lacks.
pub async fn count_unresolved(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM outbox_dead_letters WHERE status = 'unresolved'")
        .fetch_one(pool)
        .await
}

/// What stopped a replay inside its transaction.
#[derive(Debug, thiserror::Error)]
enum ReplayError {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error(transparent)]
    Event(SinkError),
}

impl PostgresCause for ReplayError {
    fn postgres_cause(&self) -> Option<&sqlx::Error> {
        match self {
            ReplayError::Postgres(e) => Some(e),
            ReplayError::Event(e) => e.postgres_cause(),
        }
    }
}

/// Replays dead letter `id` through `sinks`: decoded from its raw fields
/// with today's sinks, written as the flusher would, and marked resolved in
/// the same transaction, so the event's rows and its resolution commit
/// together or not at all. A resolved letter is answered as it is (a repeated
/// retry changes nothing). When the sinks refuse it again for its data, the
/// new error and one more attempt are recorded.
pub async fn retry(pool: &PgPool, sinks: &Arc<SinkRegistry>, id: i64, now_ms: i64) -> Result<DeadLetter, RetryError> {
    let outcome = postgres::commit_batch(pool, POSTGRES_STATEMENT_TIMEOUT, &id, |tx, id| {
        let sinks = sinks.clone();
        Box::pin(replay(tx, sinks, *id, now_ms))
    })
    .await;
    match outcome {
        Ok(Some(letter)) => Ok(letter),
        Ok(None) => Err(RetryError::NotFound(id)),
        Err(BatchError::Write(ReplayError::Event(e))) if e.is_data_error() => {
            let row: Option<Row> = sqlx::query_as(AssertSqlSafe(format!(
                "UPDATE outbox_dead_letters
                 SET error = $2, attempts = attempts + 1,
                     last_failed_at = to_timestamp(0) + $3 * interval '1 millisecond'
                 WHERE id = $1 AND status = 'unresolved'
                 RETURNING {COLUMNS}"
            )))
            .bind(id)
            .bind(storable(&e.to_string()))
            .bind(now_ms)
            .fetch_optional(pool)
            .await
            .map_err(|e| RetryError::Unavailable(e.to_string()))?;
            match row {
                Some(row) => Err(RetryError::StillFailing {
                    letter: Box::new(row.into()),
                }),
                // Resolved meanwhile by a concurrent retry.
                None => find(pool, id).await?.ok_or(RetryError::NotFound(id)),
            }
        }
        Err(e) => Err(RetryError::Unavailable(e.to_string())),
    }
}

async fn replay(
    tx: &mut PgConnection,
    sinks: Arc<SinkRegistry>,
    id: i64,
    now_ms: i64,
) -> Result<Option<DeadLetter>, ReplayError> {
    // Locked: two replays of one letter run one after the other, and the
    // second finds it resolved.
    let row: Option<Row> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM outbox_dead_letters WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let letter = DeadLetter::from(row);
    if letter.is_resolved() {
        return Ok(Some(letter));
    }
    let event =
        decode_stored(letter.event_id.clone(), &letter.fields, |kind| sinks.kind(kind)).map_err(ReplayError::Event)?;
    // Marked as written alone, so its entry, should it be read again, does
    // not write it a second time (and a letter whose event Postgres already
    // holds writes nothing).
    let placed = [Placed {
        entry: &letter.entry_id,
        event: &event,
        whole_entry: false,
    }];
    let fresh = applied::claim(&mut *tx, letter.shard as u64, &placed, now_ms)
        .await
        .map_err(ReplayError::Event)?;
    sinks.write_events(&mut *tx, &fresh).await.map_err(ReplayError::Event)?;
    let resolved: Row = sqlx::query_as(AssertSqlSafe(format!(
        "UPDATE outbox_dead_letters
         SET status = 'resolved', resolved_at = to_timestamp(0) + $2 * interval '1 millisecond'
         WHERE id = $1
         RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(now_ms)
    .fetch_one(&mut *tx)
    .await?;
    Ok(Some(resolved.into()))
}

async fn find(pool: &PgPool, id: i64) -> Result<Option<DeadLetter>, RetryError> {
    let row: Option<Row> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM outbox_dead_letters WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(|e| RetryError::Unavailable(e.to_string()))?;
    Ok(row.map(DeadLetter::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_fields_survive_what_text_cannot_hold() {
        let fields = vec!["purchase".to_owned(), "1\u{1f}u\u{0}x\u{1f}3".to_owned()];
        assert_eq!(decode_fields(&encode_fields(&fields)), fields);
        assert_eq!(storable("a\u{0}b"), "a\u{fffd}b");
        let long = "é".repeat(DEAD_LETTER_TEXT_BYTES_MAX);
        let cut = storable(&long);
        assert!(cut.len() <= DEAD_LETTER_TEXT_BYTES_MAX && cut.chars().all(|c| c == 'é'));
    }
}
