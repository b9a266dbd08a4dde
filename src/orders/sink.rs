//! Writes the orders' outbox events to Postgres. The flusher hands each
//! event over once (its markers), even when a batch is read again after a
//! crash between COMMIT and acknowledgement.
//!
//! An `order` event carries the whole order with its new status. A buy-now
//! order has one event in its life, so its row is a plain insert. A hold's
//! rows are upserted: its final status wins over `reserved` whichever event
//! lands first (a dead engine's pending entries may be claimed and written
//! after newer ones), and a terminal status is never overwritten (a hold
//! leaves `reserved` once).

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::PgConnection;

use crate::outbox::{EventKind, OutboxEvent, Sink, SinkError, SinkFn};

/// The orders' events, with their values in the order the scripts write them.
const KINDS: &[EventKind] = &[
    EventKind {
        name: "order",
        fields: &[
            "id",
            "product",
            "buyer",
            "quantity",
            "total",
            "status",
            "created_ms",
            "expires_ms",
            "key",
            "at",
        ],
    },
    EventKind {
        name: "product_restocked",
        fields: &["product", "added", "stock_total", "at"],
    },
];

/// Also the link to settlement: every completed order becomes a PAID row of
/// `transactions` (the settlement feature's table, the contract between the
/// two) for its product's merchant, with a fee of `fee_bps` basis points
/// rounded down, in the same transaction as the order row. Keyed by the
/// order id: a second row for one order fails loudly.
pub fn sink(fee_bps: i64) -> Arc<dyn Sink> {
    Arc::new(SinkFn::new(KINDS, move |tx, events| {
        Box::pin(write(tx, events, fee_bps))
    }))
}

#[derive(Default)]
struct OrderRows {
    id: Vec<String>,
    product: Vec<i64>,
    buyer: Vec<String>,
    quantity: Vec<i32>,
    total: Vec<i64>,
    status: Vec<String>,
    created_ms: Vec<i64>,
    expires_ms: Vec<Option<i64>>,
    at_ms: Vec<i64>,
    key: Vec<Option<String>>,
    event_id: Vec<String>,
}

/// The orders insert, for [`INSERT_ORDERS`] and [`UPSERT_ORDERS`].
macro_rules! insert_orders {
    () => {
        "INSERT INTO orders (id, product_id, buyer_id, quantity, total_amount_cents, status,
                         created_at, expires_at, updated_at, idempotency_key, event_id)
     SELECT i::uuid, p, b, q, t, s,
            to_timestamp(0) + c * interval '1 millisecond',
            to_timestamp(0) + x * interval '1 millisecond',
            to_timestamp(0) + a * interval '1 millisecond', k, e
     FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::int[], $5::bigint[], $6::text[],
                 $7::bigint[], $8::bigint[], $9::bigint[], $10::text[], $11::text[])
          AS t(i, p, b, q, t, s, c, x, a, k, e)"
    };
}

const INSERT_ORDERS: &str = insert_orders!();

/// A hold's row leaves `reserved` once, whichever of its events lands first.
const UPSERT_ORDERS: &str = concat!(
    insert_orders!(),
    " ON CONFLICT (id) DO UPDATE
        SET status = EXCLUDED.status, updated_at = EXCLUDED.updated_at, event_id = EXCLUDED.event_id
        WHERE orders.status = 'reserved' AND EXCLUDED.status <> 'reserved'"
);

impl OrderRows {
    fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(&self.id)
            .bind(&self.product)
            .bind(&self.buyer)
            .bind(&self.quantity)
            .bind(&self.total)
            .bind(&self.status)
            .bind(&self.created_ms)
            .bind(&self.expires_ms)
            .bind(&self.at_ms)
            .bind(&self.key)
            .bind(&self.event_id)
    }
}

/// The completed orders of a batch: one `transactions` row each.
#[derive(Default)]
struct PaidRows {
    id: Vec<String>,
    product: Vec<i64>,
    total: Vec<i64>,
    at_ms: Vec<i64>,
}

#[derive(Default)]
struct RestockRows {
    event_id: Vec<String>,
    product: Vec<i64>,
    added: Vec<i64>,
    stock_total: Vec<i64>,
    at_ms: Vec<i64>,
}

async fn write(tx: &mut PgConnection, events: &[&OutboxEvent], fee_bps: i64) -> Result<(), SinkError> {
    // One row per order per statement (Postgres refuses to upsert a row twice
    // in one INSERT): the last event of an order in the batch is its newest.
    let mut latest: HashMap<&str, &OutboxEvent> = HashMap::new();
    let mut order_ids: Vec<&str> = Vec::new();
    let mut restocks = RestockRows::default();
    for event in events {
        match event.kind() {
            "order" => {
                let id = event.text("id")?;
                if latest.insert(id, event).is_none() {
                    order_ids.push(id);
                }
            }
            "product_restocked" => {
                restocks.event_id.push(event.event_id().to_owned());
                restocks.product.push(event.int("product")?);
                restocks.added.push(event.int("added")?);
                restocks.stock_total.push(event.int("stock_total")?);
                restocks.at_ms.push(event.int("at")?);
            }
            other => return Err(SinkError::UnknownKind(other.to_owned())),
        }
    }
    // A buy-now order (completed, never held) has one event in its whole
    // life, and the markers hand each event over once, so its row can only
    // be new: a plain insert, which costs Postgres far less than the
    // upsert's conflict check. A hold's events may land in any order (a dead
    // engine's pending entries may be written after newer ones), so they go
    // through the upsert.
    let mut new_orders = OrderRows::default();
    let mut held_orders = OrderRows::default();
    let mut paid = PaidRows::default();
    for id in order_ids {
        let event = latest[id];
        let status = event.text("status")?;
        let expires_ms = event.optional_int("expires_ms")?;
        let rows = if status == "completed" && expires_ms.is_none() {
            &mut new_orders
        } else {
            &mut held_orders
        };
        let (product, total, at_ms) = (event.int("product")?, event.int("total")?, event.int("at")?);
        rows.id.push(id.to_owned());
        rows.product.push(product);
        rows.buyer.push(event.text("buyer")?.to_owned());
        rows.quantity.push(event.int("quantity")?);
        rows.total.push(total);
        rows.status.push(status.to_owned());
        rows.created_ms.push(event.int("created_ms")?);
        rows.expires_ms.push(expires_ms);
        rows.at_ms.push(at_ms);
        rows.key.push(event.optional_text("key")?);
        rows.event_id.push(event.event_id().to_owned());
        if status == "completed" {
            paid.id.push(id.to_owned());
            paid.product.push(product);
            paid.total.push(total);
            paid.at_ms.push(at_ms);
        }
    }
    if !new_orders.id.is_empty() {
        new_orders.bind(sqlx::query(INSERT_ORDERS)).execute(&mut *tx).await?;
    }
    if !held_orders.id.is_empty() {
        held_orders.bind(sqlx::query(UPSERT_ORDERS)).execute(&mut *tx).await?;
    }
    if !paid.id.is_empty() {
        // Straight from the batch's completed events, without reading the
        // rows back: a completed order is terminal, so its event carries the
        // row's final values. An order completes once, and its event is
        // handed over once, so a second row for it fails loudly instead of
        // vanishing in an ON CONFLICT.
        // Money columns are bigint (migration 0009), so every total fits.
        // The fee is floor(t × bps / 10000) computed as (t / 10000) × bps +
        // (t % 10000) × bps / 10000: exact, and t × bps itself could pass
        // 2^63 (10^15 × 10^4). `transactions.merchant_id` is 32-bit: a
        // product of a larger merchant id is left out rather than failing the batch.
        sqlx::query(
            "INSERT INTO transactions (id, merchant_id, amount_cents, fee_cents, status, paid_at)
             SELECT o.i::uuid, p.merchant_id::int, o.t, (o.t / 10000) * $4 + (o.t % 10000) * $4 / 10000, 'PAID',
                    (to_timestamp(0) + o.a * interval '1 millisecond') AT TIME ZONE 'UTC'
             FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $5::bigint[]) AS o(i, p, t, a)
             JOIN products p ON p.id = o.p
             WHERE p.merchant_id <= 2147483647",
        )
        .bind(&paid.id)
        .bind(&paid.product)
        .bind(&paid.total)
        .bind(fee_bps)
        .bind(&paid.at_ms)
        .execute(&mut *tx)
        .await?;
    }
    if !restocks.event_id.is_empty() {
        // A restock raises stock_total only when its event is new; the
        // total it carries is the one Redis reached, so GREATEST keeps the
        // newest whatever order batches land in.
        sqlx::query(
            "WITH added AS (
                 INSERT INTO product_restocks (event_id, product_id, added, stock_total, restocked_at)
                 SELECT e, p, n, s, to_timestamp(0) + a * interval '1 millisecond'
                 FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[]) AS t(e, p, n, s, a)
                 ON CONFLICT (event_id) DO NOTHING
                 RETURNING product_id, stock_total)
             UPDATE products SET stock_total = GREATEST(products.stock_total, m.total)
             FROM (SELECT product_id, max(stock_total) AS total FROM added GROUP BY product_id) m
             WHERE products.id = m.product_id",
        )
        .bind(&restocks.event_id)
        .bind(&restocks.product)
        .bind(&restocks.added)
        .bind(&restocks.stock_total)
        .bind(&restocks.at_ms)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
