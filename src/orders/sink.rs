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
use crate::postgres::copy::{BinaryRows, copy_binary};

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

/// A buy-now order's row, in the order `write` gives its values.
const COPY_ORDERS: &str = "COPY orders
     (id, product_id, buyer_id, quantity, total_amount_cents, status, created_at, expires_at, updated_at,
      idempotency_key, event_id)
     FROM STDIN (FORMAT binary)";
const ORDER_COLUMNS: i16 = 11;
/// About what one order takes in `COPY`'s binary form: a capacity hint.
const ORDER_BYTES: usize = 192;

/// A hold's row leaves `reserved` once, whichever of its events lands first.
const UPSERT_ORDERS: &str = "INSERT INTO orders (id, product_id, buyer_id, quantity, total_amount_cents, status,
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
        WHERE orders.status = 'reserved' AND EXCLUDED.status <> 'reserved'";

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
    event_id: Vec<String>,
    product: Vec<i64>,
    total: Vec<i64>,
    at_ms: Vec<i64>,
}

/// The `transactions` rows of a batch's completed orders.
///
/// Straight from the batch's completed events, without reading the rows
/// back: a completed order is terminal, so its event carries the row's final
/// values. An order completes once, and its event is handed over once, so a
/// second row for it fails loudly (the primary key) instead of vanishing in
/// an ON CONFLICT; the rows can only be new, so they are copied.
///
/// The fee is floor(t × bps / 10000) computed as (t / 10000) × bps +
/// (t % 10000) × bps / 10000: exact, where t × bps itself could pass 2^63
/// (10^15 × 10^4). `transactions.merchant_id` is 32-bit: a product of a
/// larger merchant id is left out rather than failing the batch, and so is
/// an order of a product that is not there (none is: a product row is
/// durable before Redis takes an order for it).
async fn copy_paid(tx: &mut PgConnection, paid: &PaidRows, fee_bps: i64) -> Result<(), SinkError> {
    let mut products = paid.product.clone();
    products.sort_unstable();
    products.dedup();
    let merchants: HashMap<i64, i64> = sqlx::query_as("SELECT id, merchant_id FROM products WHERE id = ANY($1)")
        .bind(&products)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
    let mut rows = BinaryRows::new(PAID_COLUMNS, paid.id.len() * PAID_BYTES);
    for (i, id) in paid.id.iter().enumerate() {
        let Some(merchant) = merchants.get(&paid.product[i]).and_then(|&m| i32::try_from(m).ok()) else {
            continue;
        };
        let total = paid.total[i];
        let fee = (total / 10_000)
            .checked_mul(fee_bps)
            .zip((total % 10_000).checked_mul(fee_bps))
            .and_then(|(whole, part)| whole.checked_add(part / 10_000));
        let malformed = |field, problem| SinkError::Malformed {
            event_id: paid.event_id[i].clone(),
            field,
            problem,
        };
        let uuid = uuid::Uuid::parse_str(id).map_err(|_| malformed("id", "is not a UUID"))?;
        let fee = fee.ok_or_else(|| malformed("total", "gives a fee past 2^63"))?;
        rows.row()
            .uuid(&uuid)
            .int4(merchant)
            .int8(total)
            .int8(fee)
            .text("PAID")
            .millis(paid.at_ms[i]);
    }
    if !rows.is_empty() {
        copy_binary(&mut *tx, COPY_PAID, rows).await?;
    }
    Ok(())
}

/// A paid order's settlement row; `paid_at` holds UTC without a time zone,
/// whose binary form counts from 2000-01-01 as a `timestamptz`'s does.
const COPY_PAID: &str =
    "COPY transactions (id, merchant_id, amount_cents, fee_cents, status, paid_at) FROM STDIN (FORMAT binary)";
const PAID_COLUMNS: i16 = 6;
/// About what one paid row takes in `COPY`'s binary form: a capacity hint.
const PAID_BYTES: usize = 80;

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
    // be new: a plain insert (by `COPY`, the cheapest), which costs Postgres
    // far less than the upsert's conflict check. A hold's events may land in any order (a dead
    // engine's pending entries may be written after newer ones), so they go
    // through the upsert.
    let mut new_orders = BinaryRows::new(ORDER_COLUMNS, order_ids.len() * ORDER_BYTES);
    let mut held_orders = OrderRows::default();
    let mut paid = PaidRows::default();
    for id in order_ids {
        let event = latest[id];
        let status = event.text("status")?;
        let expires_ms = event.optional_int("expires_ms")?;
        let (product, total, at_ms) = (event.int("product")?, event.int("total")?, event.int("at")?);
        let (buyer, quantity, created_ms) = (event.text("buyer")?, event.int("quantity")?, event.int("created_ms")?);
        let key = event.optional_text("key")?;
        if status == "completed" && expires_ms.is_none() {
            let uuid = uuid::Uuid::parse_str(id).map_err(|_| SinkError::Malformed {
                event_id: event.event_id().to_owned(),
                field: "id",
                problem: "is not a UUID",
            })?;
            new_orders
                .row()
                .uuid(&uuid)
                .int8(product)
                .text(buyer)
                .int4(quantity)
                .int8(total)
                .text(status)
                .millis(created_ms)
                .null()
                .millis(at_ms)
                .optional_text(key.as_deref())
                .text(event.event_id());
        } else {
            let rows = &mut held_orders;
            rows.id.push(id.to_owned());
            rows.product.push(product);
            rows.buyer.push(buyer.to_owned());
            rows.quantity.push(quantity);
            rows.total.push(total);
            rows.status.push(status.to_owned());
            rows.created_ms.push(created_ms);
            rows.expires_ms.push(expires_ms);
            rows.at_ms.push(at_ms);
            rows.key.push(key);
            rows.event_id.push(event.event_id().to_owned());
        }
        if status == "completed" {
            paid.id.push(id.to_owned());
            paid.event_id.push(event.event_id().to_owned());
            paid.product.push(product);
            paid.total.push(total);
            paid.at_ms.push(at_ms);
        }
    }
    if !new_orders.is_empty() {
        copy_binary(&mut *tx, COPY_ORDERS, new_orders).await?;
    }
    if !held_orders.id.is_empty() {
        held_orders.bind(sqlx::query(UPSERT_ORDERS)).execute(&mut *tx).await?;
    }
    if !paid.id.is_empty() {
        copy_paid(&mut *tx, &paid, fee_bps).await?;
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
