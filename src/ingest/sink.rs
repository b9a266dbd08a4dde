//! How a batch of parsed lines lands in Postgres, inside the caller's
//! transaction: an upsert by `transaction_id` whose every line gets an exact
//! outcome, and the players' spend adjusted by the same transaction.
//!
//! Outcomes come from Postgres itself, not from a read before the write, so
//! they stay exact when two uploads race on the same ids:
//! 1. `INSERT … ON CONFLICT DO NOTHING` creates the new rows (waiting for a
//!    concurrent insert of the same id to commit, then treating it as old).
//! 2. The rest are locked and compared column by column; only those that
//!    differ are updated. What the update returns is `updated`, the remainder
//!    `unchanged`.
//!
//! Most rows of a batch are usually new, and `COPY` writes those about twice
//! as fast as an upsert (heap inserts in bulk). So the first round asks which
//! of its ids exist, copies the others, and takes the existing ones down the
//! update path. Should a racing upload insert one of the copied ids in
//! between, the copy fails on the unique index; it is rolled back to a
//! savepoint and the round goes through the upsert instead, so the outcome
//! stays exact either way.
//!
//! A statement may touch a row once, so a batch holding the same id several
//! times runs in rounds: the n-th occurrence of every id goes in round n, and
//! rounds run in file order. Each line is thus compared with the state left by
//! the lines before it, as if the file were applied line by line.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::{PgConnection, Postgres};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::record::PurchaseRecord;

/// What one batch did, line by line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchCounts {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
}

impl BatchCounts {
    pub fn add(&mut self, other: BatchCounts) {
        self.created += other.created;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
    }
}

/// Writes `records` (in file order) and the spend they change.
pub async fn write(tx: &mut PgConnection, records: &[PurchaseRecord]) -> Result<BatchCounts, sqlx::Error> {
    let mut counts = BatchCounts::default();
    let mut spend = SpendDeltas::default();
    for (number, round) in rounds(records).into_iter().enumerate() {
        let existing = if number == 0 && round.len() >= COPY_ROWS_MIN {
            match copy_new(tx, records, &round).await? {
                Some(existing) => existing,
                None => insert_new(tx, records, &round).await?,
            }
        } else {
            insert_new(tx, records, &round).await?
        };
        let mut is_existing = vec![false; round.len()];
        for &position in &existing {
            is_existing[position] = true;
        }
        for (&index, existing) in round.iter().zip(&is_existing) {
            if !existing {
                spend.add(
                    &records[index].player_id,
                    records[index].currency,
                    1,
                    records[index].price_minor,
                );
            }
        }
        counts.created += (round.len() - existing.len()) as u64;
        if existing.is_empty() {
            continue;
        }
        let candidates: Vec<usize> = existing.iter().map(|&position| round[position]).collect();
        let updated = update_changed(tx, records, &candidates).await?;
        counts.updated += updated.len() as u64;
        counts.unchanged += (candidates.len() - updated.len()) as u64;
        for (index, old) in updated {
            spend.add(&old.player_id, &old.currency, -1, -old.price_minor);
            spend.add(
                &records[index].player_id,
                records[index].currency,
                1,
                records[index].price_minor,
            );
        }
    }
    spend.write(tx).await?;
    Ok(counts)
}

/// Splits a batch into rounds without repeated ids. Within a round, rows are
/// sorted by id, so concurrent uploads lock rows in the same order.
fn rounds(records: &[PurchaseRecord]) -> Vec<Vec<usize>> {
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(records.len());
    for (index, record) in records.iter().enumerate() {
        let round = match seen.entry(record.transaction_id.as_str()) {
            Entry::Vacant(slot) => *slot.insert(0),
            Entry::Occupied(mut slot) => {
                *slot.get_mut() += 1;
                *slot.get()
            }
        };
        if round == rounds.len() {
            rounds.push(Vec::new());
        }
        rounds[round].push(index);
    }
    for round in &mut rounds {
        round.sort_unstable_by(|a, b| records[*a].transaction_id.cmp(&records[*b].transaction_id));
    }
    rounds
}

/// Column arrays of the rows at `indices`, bound as one `UNNEST`.
struct Columns<'a> {
    transaction_id: Vec<&'a str>,
    player_id: Vec<&'a str>,
    platform: Vec<&'static str>,
    item_id: Vec<&'a str>,
    item_name: Vec<&'a str>,
    item_type: Vec<&'static str>,
    price_minor: Vec<i64>,
    currency: Vec<&'static str>,
    purchased_at: Vec<OffsetDateTime>,
    extras: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    fn of(records: &'a [PurchaseRecord], indices: &[usize]) -> Self {
        let column = |f: &dyn Fn(&'a PurchaseRecord) -> &'a str| indices.iter().map(|&i| f(&records[i])).collect();
        Self {
            transaction_id: column(&|r| &r.transaction_id),
            player_id: column(&|r| &r.player_id),
            platform: indices.iter().map(|&i| records[i].platform.as_str()).collect(),
            item_id: column(&|r| &r.item_id),
            item_name: column(&|r| &r.item_name),
            item_type: indices.iter().map(|&i| records[i].item_type.as_str()).collect(),
            price_minor: indices.iter().map(|&i| records[i].price_minor).collect(),
            currency: indices.iter().map(|&i| records[i].currency).collect(),
            purchased_at: indices.iter().map(|&i| records[i].purchased_at).collect(),
            extras: indices.iter().map(|&i| records[i].extras.as_deref()).collect(),
        }
    }

    fn bind<'q, O>(&'q self, query: QueryAs<'q, Postgres, O, PgArguments>) -> QueryAs<'q, Postgres, O, PgArguments> {
        query
            .bind(&self.transaction_id)
            .bind(&self.player_id)
            .bind(&self.platform)
            .bind(&self.item_id)
            .bind(&self.item_name)
            .bind(&self.item_type)
            .bind(&self.price_minor)
            .bind(&self.currency)
            .bind(&self.purchased_at)
            .bind(&self.extras)
    }
}

/// The input rows as a relation, in the column order of `Columns::bind`.
const INPUT: &str = "UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
     $7::int8[], $8::text[], $9::timestamptz[], $10::text[]) WITH ORDINALITY \
     AS i(transaction_id, player_id, platform, item_id, item_name, item_type, \
          price_minor, currency, purchased_at, extras, ord)";

/// Below this many rows a `COPY` saves less than its extra round trips cost.
const COPY_ROWS_MIN: usize = 64;

const COPY_COLUMNS: &str = "COPY platform_purchases (transaction_id, player_id, platform, item_id, item_name, \
     item_type, price_minor, currency, purchased_at, extras) FROM STDIN";

/// Copies the rows of `round` whose id does not exist yet; returns the
/// positions of those that do, or `None` if a racing insert beat the copy
/// (nothing of it remains: the caller then upserts the round).
async fn copy_new(
    tx: &mut PgConnection,
    records: &[PurchaseRecord],
    round: &[usize],
) -> Result<Option<Vec<usize>>, sqlx::Error> {
    let ids: Vec<&str> = round.iter().map(|&i| records[i].transaction_id.as_str()).collect();
    let found: Vec<String> =
        sqlx::query_scalar("SELECT transaction_id FROM platform_purchases WHERE transaction_id = ANY($1::text[])")
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
    let found: HashSet<&str> = found.iter().map(String::as_str).collect();
    let (existing, new): (Vec<usize>, Vec<usize>) =
        (0..round.len()).partition(|&position| found.contains(ids[position]));
    if new.is_empty() {
        return Ok(Some(existing));
    }
    let mut text = Vec::with_capacity(new.len() * 256);
    for &position in &new {
        copy_row(&mut text, &records[round[position]]);
    }
    sqlx::query("SAVEPOINT ingest_copy").execute(&mut *tx).await?;
    let copied = async {
        let mut copy = tx.copy_in_raw(COPY_COLUMNS).await?;
        copy.send(text).await?;
        copy.finish().await
    }
    .await;
    match copied {
        Ok(_) => {
            sqlx::query("RELEASE SAVEPOINT ingest_copy").execute(&mut *tx).await?;
            Ok(Some(existing))
        }
        Err(e) if is_unique_violation(&e) => {
            tracing::debug!("a racing upload inserted an id first; upserting the round instead");
            super::metrics::ingest_copy_fallback();
            sqlx::query("ROLLBACK TO SAVEPOINT ingest_copy")
                .execute(&mut *tx)
                .await?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    error.as_database_error().is_some_and(|db| db.is_unique_violation())
}

/// One row in `COPY`'s text format: tab-separated, `\N` for NULL.
fn copy_row(out: &mut Vec<u8>, record: &PurchaseRecord) {
    let fields: [&str; 6] = [
        &record.transaction_id,
        &record.player_id,
        record.platform.as_str(),
        &record.item_id,
        &record.item_name,
        record.item_type.as_str(),
    ];
    for field in fields {
        copy_escaped(out, field);
        out.push(b'\t');
    }
    out.extend_from_slice(record.price_minor.to_string().as_bytes());
    out.push(b'\t');
    out.extend_from_slice(record.currency.as_bytes());
    out.push(b'\t');
    // RFC 3339 with its offset: unambiguous whatever the session time zone.
    let at = record.purchased_at.format(&Rfc3339).unwrap_or_default();
    out.extend_from_slice(at.as_bytes());
    out.push(b'\t');
    match &record.extras {
        Some(extras) => copy_escaped(out, extras),
        None => out.extend_from_slice(b"\\N"),
    }
    out.push(b'\n');
}

/// Escapes what `COPY` text format treats specially. Validated fields hold
/// no control characters, but extras are raw JSON, which may hold tabs and
/// newlines between tokens and backslashes in strings.
fn copy_escaped(out: &mut Vec<u8>, text: &str) {
    for byte in text.bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            other => out.push(other),
        }
    }
}

/// Inserts the rows whose id is new; returns the positions (in `round`) of
/// those whose id already existed. Usually none, so usually no rows come back.
async fn insert_new(
    tx: &mut PgConnection,
    records: &[PurchaseRecord],
    round: &[usize],
) -> Result<Vec<usize>, sqlx::Error> {
    let sql = format!(
        "WITH input AS (SELECT * FROM {INPUT}),
         created AS (
             INSERT INTO platform_purchases
                 (transaction_id, player_id, platform, item_id, item_name, item_type,
                  price_minor, currency, purchased_at, extras)
             SELECT transaction_id, player_id, platform, item_id, item_name, item_type,
                    price_minor, currency, purchased_at, extras::jsonb
             FROM input ORDER BY ord
             ON CONFLICT (transaction_id) DO NOTHING
             RETURNING transaction_id)
         SELECT ord FROM input
         WHERE NOT EXISTS (SELECT 1 FROM created WHERE created.transaction_id = input.transaction_id)"
    );
    let columns = Columns::of(records, round);
    let rows: Vec<(i64,)> = columns
        .bind(sqlx::query_as(sqlx::AssertSqlSafe(sql)))
        .fetch_all(&mut *tx)
        .await?;
    // ORDINALITY counts from 1; the bound arrays came from `round`.
    Ok(rows
        .into_iter()
        .filter_map(|(ord,)| usize::try_from(ord - 1).ok())
        .filter(|position| *position < round.len())
        .collect())
}

/// What a row held before an update: the part of it that spend depends on.
#[derive(sqlx::FromRow)]
struct OldSpend {
    transaction_id: String,
    player_id: String,
    currency: String,
    price_minor: i64,
}

/// Updates the existing rows whose content differs; returns them with what
/// they held before. Rows are locked in id order before they are compared.
async fn update_changed(
    tx: &mut PgConnection,
    records: &[PurchaseRecord],
    indices: &[usize],
) -> Result<Vec<(usize, OldSpend)>, sqlx::Error> {
    let sql = format!(
        "WITH input AS (SELECT * FROM {INPUT}),
         old AS (
             SELECT p.* FROM platform_purchases p JOIN input USING (transaction_id)
             ORDER BY p.transaction_id
             FOR UPDATE OF p)
         UPDATE platform_purchases p
         SET player_id = i.player_id, platform = i.platform, item_id = i.item_id,
             item_name = i.item_name, item_type = i.item_type, price_minor = i.price_minor,
             currency = i.currency, purchased_at = i.purchased_at, extras = i.extras::jsonb,
             updated_at = now()
         FROM input i JOIN old o USING (transaction_id)
         WHERE p.transaction_id = i.transaction_id
           AND (o.player_id, o.platform, o.item_id, o.item_name, o.item_type, o.price_minor,
                o.currency, o.purchased_at, o.extras)
               IS DISTINCT FROM
               (i.player_id, i.platform, i.item_id, i.item_name, i.item_type, i.price_minor,
                i.currency, i.purchased_at, i.extras::jsonb)
         RETURNING p.transaction_id, o.player_id, o.currency, o.price_minor"
    );
    let columns = Columns::of(records, indices);
    let old: Vec<OldSpend> = columns
        .bind(sqlx::query_as(sqlx::AssertSqlSafe(sql)))
        .fetch_all(&mut *tx)
        .await?;
    let position: HashMap<&str, usize> = indices
        .iter()
        .map(|&i| (records[i].transaction_id.as_str(), i))
        .collect();
    Ok(old
        .into_iter()
        .filter_map(|row| position.get(row.transaction_id.as_str()).map(|&i| (i, row)))
        .collect())
}

/// Net change of each player's spend in one currency over a batch.
#[derive(Default)]
struct SpendDeltas(HashMap<(String, String), (i64, i64)>);

impl SpendDeltas {
    fn add(&mut self, player_id: &str, currency: &str, purchases: i64, minor: i64) {
        let delta = self.0.entry((player_id.to_owned(), currency.to_owned())).or_default();
        delta.0 += purchases;
        delta.1 += minor;
    }

    async fn write(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        let mut deltas: Vec<_> = self.0.into_iter().filter(|(_, delta)| *delta != (0, 0)).collect();
        // Same lock order in every transaction: no deadlock between uploads.
        deltas.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        // Postgres checks an upsert's proposed row against the CHECKs before
        // it finds the conflict, so a negative delta cannot go through the
        // upsert. Negative deltas come only from updated purchases, whose
        // old spend row exists: a plain UPDATE takes them.
        let (gains, losses): (Vec<_>, Vec<_>) = deltas.into_iter().partition(|(_, (n, m))| *n >= 0 && *m >= 0);
        const UPSERT: &str = "INSERT INTO player_spend AS s (player_id, currency, purchases, total_minor)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[])
             ON CONFLICT (player_id, currency) DO UPDATE
             SET purchases = s.purchases + EXCLUDED.purchases,
                 total_minor = s.total_minor + EXCLUDED.total_minor";
        const UPDATE: &str = "UPDATE player_spend AS s
             SET purchases = s.purchases + d.purchases, total_minor = s.total_minor + d.total_minor
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[])
                  AS d(player_id, currency, purchases, total_minor)
             WHERE s.player_id = d.player_id AND s.currency = d.currency";
        for (sql, deltas) in [(UPSERT, gains), (UPDATE, losses)] {
            if deltas.is_empty() {
                continue;
            }
            let (keys, amounts): (Vec<_>, Vec<_>) = deltas.into_iter().unzip();
            let (players, currencies): (Vec<String>, Vec<String>) = keys.into_iter().unzip();
            let (purchases, minor): (Vec<i64>, Vec<i64>) = amounts.into_iter().unzip();
            sqlx::query(sql)
                .bind(&players)
                .bind(&currencies)
                .bind(&purchases)
                .bind(&minor)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }
}
