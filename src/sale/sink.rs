//! Writes the sale's outbox events to Postgres. The flusher hands each event
//! over once (its markers, `outbox::applied`), so attempts and purchases are
//! plain inserts, with no unique index on the event id to keep up, written
//! by `COPY`, the cheapest way to append rows that can only be new.

use std::sync::Arc;

use sqlx::PgConnection;

use crate::outbox::{EventKind, OutboxEvent, Sink, SinkError, SinkFn};
use crate::postgres::copy::{BinaryRows, copy_binary};

/// The sale's events, with their values in the order the scripts write them.
const KINDS: &[EventKind] = &[
    EventKind {
        name: "sale_opened",
        fields: &["sale", "starts_ms", "ends_ms", "items", "limit", "at"],
    },
    EventKind {
        name: "checkout",
        fields: &["sale", "user", "item", "outcome", "code", "expires_ms", "at"],
    },
    EventKind {
        name: "purchase",
        fields: &["sale", "user", "item", "code", "at"],
    },
];

/// Where the sale's events land: `sales`, `checkout_attempts`, `purchases`.
pub fn sink() -> Arc<dyn Sink> {
    Arc::new(SinkFn::new(KINDS, |tx, events| Box::pin(write(tx, events))))
}

async fn write(tx: &mut PgConnection, events: &[&OutboxEvent]) -> Result<(), SinkError> {
    let mut sales = SaleRows::default();
    let mut attempts = BinaryRows::new(ATTEMPT_COLUMNS, events.len() * ROW_BYTES);
    let mut purchases = BinaryRows::new(PURCHASE_COLUMNS, events.len() * ROW_BYTES);
    for event in events {
        match event.kind() {
            "sale_opened" => sales.push(event)?,
            "checkout" => push_attempt(&mut attempts, event)?,
            "purchase" => push_purchase(&mut purchases, event)?,
            other => return Err(SinkError::UnknownKind(other.to_owned())),
        }
    }
    // Sales first: attempts and purchases of a sale follow its opening.
    if !sales.sale_id.is_empty() {
        sqlx::query(
            "INSERT INTO sales (sale_id, starts_at, ends_at, items, per_user_limit, opened_at)
             SELECT s, to_timestamp(0) + st * interval '1 millisecond',
                    to_timestamp(0) + en * interval '1 millisecond', i, l,
                    to_timestamp(0) + a * interval '1 millisecond'
             FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::int[], $5::int[], $6::bigint[])
                  AS t(s, st, en, i, l, a)
             ON CONFLICT (sale_id) DO NOTHING",
        )
        .bind(&sales.sale_id)
        .bind(&sales.starts_ms)
        .bind(&sales.ends_ms)
        .bind(&sales.items)
        .bind(&sales.limit)
        .bind(&sales.at_ms)
        .execute(&mut *tx)
        .await?;
    }
    if !attempts.is_empty() {
        copy_binary(&mut *tx, COPY_ATTEMPTS, attempts).await?;
    }
    if !purchases.is_empty() {
        // No ON CONFLICT: a second purchase of one item must fail loudly
        // (purchases_one_per_item), never vanish.
        copy_binary(&mut *tx, COPY_PURCHASES, purchases).await?;
    }
    Ok(())
}

/// Column vectors for the sales' UNNEST upsert: one round trip per batch.
#[derive(Default)]
struct SaleRows {
    sale_id: Vec<i64>,
    starts_ms: Vec<i64>,
    ends_ms: Vec<i64>,
    items: Vec<i32>,
    limit: Vec<i32>,
    at_ms: Vec<i64>,
}

impl SaleRows {
    fn push(&mut self, e: &OutboxEvent) -> Result<(), SinkError> {
        self.sale_id.push(e.int("sale")?);
        self.starts_ms.push(e.int("starts_ms")?);
        self.ends_ms.push(e.int("ends_ms")?);
        self.items.push(e.int("items")?);
        self.limit.push(e.int("limit")?);
        self.at_ms.push(e.int("at")?);
        Ok(())
    }
}

const COPY_ATTEMPTS: &str = "COPY checkout_attempts
     (event_id, sale_id, user_id, item_id, outcome, code, expires_at, attempted_at) FROM STDIN (FORMAT binary)";
const ATTEMPT_COLUMNS: i16 = 8;
const COPY_PURCHASES: &str =
    "COPY purchases (event_id, sale_id, item_id, user_id, code, purchased_at) FROM STDIN (FORMAT binary)";
const PURCHASE_COLUMNS: i16 = 6;
/// About what an attempt or a purchase takes in `COPY`'s binary form: a
/// capacity hint.
const ROW_BYTES: usize = 128;

/// Every value is read before the row starts, so a malformed event leaves
/// no half row behind.
fn push_attempt(rows: &mut BinaryRows, e: &OutboxEvent) -> Result<(), SinkError> {
    let (sale, user, item, outcome) = (e.int("sale")?, e.text("user")?, e.int("item")?, e.text("outcome")?);
    let (code, expires_ms, at_ms) = (e.optional_text("code")?, e.optional_int("expires_ms")?, e.int("at")?);
    rows.row()
        .text(e.event_id())
        .int8(sale)
        .text(user)
        .int8(item)
        .text(outcome)
        .optional_text(code.as_deref())
        .optional_millis(expires_ms)
        .millis(at_ms);
    Ok(())
}

fn push_purchase(rows: &mut BinaryRows, e: &OutboxEvent) -> Result<(), SinkError> {
    let (sale, item, user) = (e.int("sale")?, e.int("item")?, e.text("user")?);
    let (code, at_ms) = (e.text("code")?, e.int("at")?);
    rows.row()
        .text(e.event_id())
        .int8(sale)
        .int8(item)
        .text(user)
        .text(code)
        .millis(at_ms);
    Ok(())
}
