//! Which outbox events Postgres already holds: a marker per stream entry
//! written whole, or per event written alone (a batch narrowed down to its
//! poison, a dead letter replayed), committed in the same transaction as the
//! events' rows. A write first drops what its markers say was written, so
//! each event reaches its sink once: an entry read again after a crash
//! between COMMIT and the acknowledgement, or taken over by another
//! consumer, writes nothing the second time. The sinks' tables then need no
//! unique index on the event id, and their inserts no `ON CONFLICT`: one
//! marker row per entry (a script call's events, up to a few hundred) costs
//! Postgres far less than an index entry and a conflict check per row.
//!
//! Markers are kept while their entry can still be read again, that is while
//! it is in the stream: [`forget_before`] drops those of entries older than
//! the stream's oldest, which were acknowledged and deleted.

use std::collections::HashSet;

use sqlx::PgConnection;

use super::{OutboxEvent, SinkError};

/// Marks one write: every writer of a shard takes its shard's lock first, so
/// two consumers holding one entry (one taken over while the other was slow)
/// write it one after the other, and the second finds the first's markers.
const SHARD_LOCK_CLASS: i32 = 0x5354_4d50; // "STMP"

/// The marker of a whole entry: no event id.
const WHOLE_ENTRY: &str = "";

/// One event with the stream entry it came from.
#[derive(Clone, Copy)]
pub(super) struct Placed<'a> {
    pub entry: &'a str,
    pub event: &'a OutboxEvent,
    /// Whether this write holds every event of the entry, so one marker
    /// covers them all. Not for a narrowed half or a replayed letter, nor
    /// for an entry with an event that could not be decoded: that event is
    /// set aside unwritten, and may be replayed later.
    pub whole_entry: bool,
}

/// The markers of a write's entries, found by one index probe per entry.
///
/// Written as `entry = ANY($2)`, the planner chooses by the table's
/// statistics, and a table too young to have any (a new database, before
/// autovacuum's first `ANALYZE`) got a scan of every marker of the shard,
/// each compared with every entry of the write: about a twentieth of
/// Postgres's CPU under a steady load's first minute. The subquery cannot be
/// merged into the join (`OFFSET 0`), so each entry is looked up on its own
/// by the key's prefix, whatever the statistics say.
const HELD: &str = "SELECT u.entry, m.event
     FROM UNNEST($2::text[]) AS u(entry)
     CROSS JOIN LATERAL (SELECT event FROM outbox_applied WHERE shard = $1 AND entry = u.entry OFFSET 0) AS m";

/// In the caller's transaction: takes the shard's lock, leaves out the events
/// Postgres already holds, marks the rest as held, and returns them in their
/// order. The caller writes them in the same transaction.
pub(super) async fn claim<'a>(
    tx: &mut PgConnection,
    shard: u64,
    events: &[Placed<'a>],
    now_ms: i64,
) -> Result<Vec<&'a OutboxEvent>, SinkError> {
    let shard = shard as i32;
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(SHARD_LOCK_CLASS)
        .bind(shard)
        .execute(&mut *tx)
        .await?;
    let mut entries: Vec<&str> = events.iter().map(|p| p.entry).collect();
    entries.dedup();
    let held: Vec<(String, String)> = sqlx::query_as(HELD)
        .bind(shard)
        .bind(&entries)
        .fetch_all(&mut *tx)
        .await?;
    let whole: HashSet<&str> = held
        .iter()
        .filter(|(_, event)| event == WHOLE_ENTRY)
        .map(|(entry, _)| entry.as_str())
        .collect();
    let alone: HashSet<&str> = held
        .iter()
        .filter(|(_, event)| event != WHOLE_ENTRY)
        .map(|(_, event)| event.as_str())
        .collect();
    let fresh: Vec<&Placed<'a>> = events
        .iter()
        .filter(|p| !whole.contains(p.entry) && !alone.contains(p.event.event_id()))
        .collect();
    let mut marked_entries: Vec<&str> = Vec::new();
    let mut marked_events: Vec<&str> = Vec::new();
    for p in &fresh {
        if !p.whole_entry {
            marked_entries.push(p.entry);
            marked_events.push(p.event.event_id());
        } else if marked_entries.last() != Some(&p.entry) || marked_events.last() != Some(&WHOLE_ENTRY) {
            marked_entries.push(p.entry);
            marked_events.push(WHOLE_ENTRY);
        }
    }
    if !marked_entries.is_empty() {
        let entry_ms: Vec<i64> = marked_entries.iter().map(|entry| entry_ms(entry)).collect();
        sqlx::query(
            "INSERT INTO outbox_applied (shard, entry, event, entry_ms, applied_at)
             SELECT $1, e, v, m, to_timestamp(0) + $5 * interval '1 millisecond'
             FROM UNNEST($2::text[], $3::text[], $4::bigint[]) AS t(e, v, m)",
        )
        .bind(shard)
        .bind(&marked_entries)
        .bind(&marked_events)
        .bind(&entry_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
    }
    Ok(fresh.into_iter().map(|p| p.event).collect())
}

/// Drops the markers of `shard`'s entries older than `oldest`, the oldest
/// entry id still in the stream: every older entry was acknowledged and
/// deleted, so it can never be read again. Returns how many were dropped.
pub(super) async fn forget_before(pool: &sqlx::PgPool, shard: u64, oldest: &str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM outbox_applied WHERE shard = $1 AND entry_ms < $2")
        .bind(shard as i32)
        .bind(entry_ms(oldest))
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// The milliseconds of a stream entry id (`<ms>-<seq>`); the ids Redis
/// gives always have them. One that does not parse counts as the newest, so
/// its marker is never dropped early.
fn entry_ms(entry: &str) -> i64 {
    entry
        .split_once('-')
        .map_or(entry, |(ms, _)| ms)
        .parse()
        .unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::entry_ms;

    #[test]
    fn entry_ids_give_their_milliseconds() {
        assert_eq!(entry_ms("1733490000123-7"), 1_733_490_000_123);
        assert_eq!(entry_ms("5-0"), 5);
        assert_eq!(entry_ms("garbage"), i64::MAX);
    }
}
