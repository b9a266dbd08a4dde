//! Writes the orders' outbox events to Postgres, idempotently: replaying a
//! batch (after a crash between COMMIT and acknowledgement) changes nothing.
//!
//! An `order` event carries the whole order with its new status, so rows
//! are upserted: a hold's final status wins over `reserved` whichever event
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
/// order id, so a replay inserts nothing twice.
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
    let mut orders = OrderRows::default();
    for id in order_ids {
        let event = latest[id];
        orders.id.push(id.to_owned());
        orders.product.push(event.int("product")?);
        orders.buyer.push(event.text("buyer")?.to_owned());
        orders.quantity.push(event.int("quantity")?);
        orders.total.push(event.int("total")?);
        orders.status.push(event.text("status")?.to_owned());
        orders.created_ms.push(event.int("created_ms")?);
        orders.expires_ms.push(event.optional_int("expires_ms")?);
        orders.at_ms.push(event.int("at")?);
        orders.key.push(event.optional_text("key")?);
        orders.event_id.push(event.event_id().to_owned());
    }
    if !orders.id.is_empty() {
        sqlx::query(
            "INSERT INTO orders (id, product_id, buyer_id, quantity, total_amount_cents, status,
                                 created_at, expires_at, updated_at, idempotency_key, event_id)
             SELECT i::uuid, p, b, q, t, s,
                    to_timestamp(0) + c * interval '1 millisecond',
                    to_timestamp(0) + x * interval '1 millisecond',
                    to_timestamp(0) + a * interval '1 millisecond', k, e
             FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::int[], $5::bigint[], $6::text[],
                         $7::bigint[], $8::bigint[], $9::bigint[], $10::text[], $11::text[])
                  AS t(i, p, b, q, t, s, c, x, a, k, e)
             ON CONFLICT (id) DO UPDATE
                SET status = EXCLUDED.status, updated_at = EXCLUDED.updated_at, event_id = EXCLUDED.event_id
                WHERE orders.status = 'reserved' AND EXCLUDED.status <> 'reserved'",
        )
        .bind(&orders.id)
        .bind(&orders.product)
        .bind(&orders.buyer)
        .bind(&orders.quantity)
        .bind(&orders.total)
        .bind(&orders.status)
        .bind(&orders.created_ms)
        .bind(&orders.expires_ms)
        .bind(&orders.at_ms)
        .bind(&orders.key)
        .bind(&orders.event_id)
        .execute(&mut *tx)
        .await?;
        // Straight from the batch's completed events, without reading the
        // rows back: a completed order is terminal, so its event carries the
        // row's final values, and a replay conflicts on the id.
        // Money columns are bigint (migration 0009), so every total fits.
        // The fee is floor(t × bps / 10000) computed as (t / 10000) × bps +
        // (t % 10000) × bps / 10000: exact, and t × bps itself could pass
        // 2^63 (10^15 × 10^4). `transactions.merchant_id` is 32-bit: a
        // product of a larger merchant id is left out rather than failing the batch.
        sqlx::query(
            "INSERT INTO transactions (id, merchant_id, amount_cents, fee_cents, status, paid_at)
             SELECT o.i::uuid, p.merchant_id::int, o.t, (o.t / 10000) * $4 + (o.t % 10000) * $4 / 10000, 'PAID',
                    (to_timestamp(0) + o.a * interval '1 millisecond') AT TIME ZONE 'UTC'
             FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $5::bigint[], $6::text[]) AS o(i, p, t, a, s)
             JOIN products p ON p.id = o.p
             WHERE o.s = 'completed' AND p.merchant_id <= 2147483647
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&orders.id)
        .bind(&orders.product)
        .bind(&orders.total)
        .bind(fee_bps)
        .bind(&orders.at_ms)
        .bind(&orders.status)
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
