//! Writes the sale's outbox events to Postgres. The flusher hands each event
//! over once (its markers, `outbox::applied`), so attempts and purchases are
//! plain inserts, with no unique index on the event id to keep up.

use std::sync::Arc;

use sqlx::PgConnection;

use crate::outbox::{EventKind, OutboxEvent, Sink, SinkError, SinkFn};

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
    let mut attempts = AttemptRows::default();
    let mut purchases = PurchaseRows::default();
    for event in events {
        match event.kind() {
            "sale_opened" => sales.push(event)?,
            "checkout" => attempts.push(event)?,
            "purchase" => purchases.push(event)?,
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
    if !attempts.event_id.is_empty() {
        sqlx::query(
            "INSERT INTO checkout_attempts
                 (event_id, sale_id, user_id, item_id, outcome, code, expires_at, attempted_at)
             SELECT e, s, u, i, o, c, to_timestamp(0) + x * interval '1 millisecond',
                    to_timestamp(0) + a * interval '1 millisecond'
             FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                         $7::bigint[], $8::bigint[]) AS t(e, s, u, i, o, c, x, a)",
        )
        .bind(&attempts.event_id)
        .bind(&attempts.sale_id)
        .bind(&attempts.user_id)
        .bind(&attempts.item_id)
        .bind(&attempts.outcome)
        .bind(&attempts.code)
        .bind(&attempts.expires_ms)
        .bind(&attempts.at_ms)
        .execute(&mut *tx)
        .await?;
    }
    if !purchases.event_id.is_empty() {
        // No ON CONFLICT: a second purchase of one item must fail loudly
        // (purchases_one_per_item), never vanish.
        sqlx::query(
            "INSERT INTO purchases (event_id, sale_id, item_id, user_id, code, purchased_at)
             SELECT e, s, i, u, c, to_timestamp(0) + a * interval '1 millisecond'
             FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::bigint[])
                  AS t(e, s, i, u, c, a)",
        )
        .bind(&purchases.event_id)
        .bind(&purchases.sale_id)
        .bind(&purchases.item_id)
        .bind(&purchases.user_id)
        .bind(&purchases.code)
        .bind(&purchases.at_ms)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Column vectors for one UNNEST insert each: one round trip per table per batch.
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

#[derive(Default)]
struct AttemptRows {
    event_id: Vec<String>,
    sale_id: Vec<i64>,
    user_id: Vec<String>,
    item_id: Vec<i64>,
    outcome: Vec<String>,
    code: Vec<Option<String>>,
    expires_ms: Vec<Option<i64>>,
    at_ms: Vec<i64>,
}

impl AttemptRows {
    fn push(&mut self, e: &OutboxEvent) -> Result<(), SinkError> {
        self.event_id.push(e.event_id().to_owned());
        self.sale_id.push(e.int("sale")?);
        self.user_id.push(e.text("user")?.to_owned());
        self.item_id.push(e.int("item")?);
        self.outcome.push(e.text("outcome")?.to_owned());
        self.code.push(e.optional_text("code")?);
        self.expires_ms.push(e.optional_int("expires_ms")?);
        self.at_ms.push(e.int("at")?);
        Ok(())
    }
}

#[derive(Default)]
struct PurchaseRows {
    event_id: Vec<String>,
    sale_id: Vec<i64>,
    item_id: Vec<i64>,
    user_id: Vec<String>,
    code: Vec<String>,
    at_ms: Vec<i64>,
}

impl PurchaseRows {
    fn push(&mut self, e: &OutboxEvent) -> Result<(), SinkError> {
        self.event_id.push(e.event_id().to_owned());
        self.sale_id.push(e.int("sale")?);
        self.item_id.push(e.int("item")?);
        self.user_id.push(e.text("user")?.to_owned());
        self.code.push(e.text("code")?.to_owned());
        self.at_ms.push(e.int("at")?);
        Ok(())
    }
}
