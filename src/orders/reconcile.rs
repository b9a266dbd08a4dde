//! `GET /admin/reconcile`: Redis's live counts against Postgres's history,
//! once the outbox backlog is flushed.
//!
//! - Per product: Redis's `sold` and `reserved` against the sums of
//!   completed and reserved orders in Postgres, `stock_total` against the
//!   catalogue row (initial stock plus flushed restocks), and the invariant
//!   `available + reserved + sold = stock_total`, `available >= 0` in Redis.
//!   A product split over several slots is summed over its buckets, its
//!   reserve and its stock in transit (`split::read`), each at least 0.
//! - Per flash sale still in Redis: the sold bitmap's BITCOUNT against the
//!   sale's rows in `purchases`. The key is read by its documented layout
//!   (`<prefix>:{shard}:sale:<id>:sold`, one per part of a sale split over
//!   several shards, summed); this feature does not import the sale feature.
//! - Every unresolved dead letter of the outbox: an event Redis decided that
//!   Postgres does not hold, a mismatch until a replay resolves it.
//!
//! The comparison is exact when no order changes state while it runs; under
//! traffic a change between its two reads shows as a transient mismatch, so
//! run it quiet (the load scenario calls it at the end).

use std::time::Instant;

use fred::interfaces::{ClientLike, KeysInterface};
use hyper::StatusCode;
use serde::Serialize;

use super::domain::ProductId;
use super::limits::{RECONCILE_DEAD_LETTERS_MAX, RECONCILE_FLUSH_WAIT, RECONCILE_PRODUCTS_MAX, RECONCILE_SALES_MAX};
use super::lua::Stock;
use super::metrics;
use super::{Orders, OrdersError, split};
use crate::outbox::dead_letters::{self, StatusFilter};
use crate::redis::lua::ScriptError;
use crate::server::http::{HttpResponse, json};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Mismatch {
    /// `product`, `sale` or `dead_letter` (`id` is the dead letter's).
    kind: &'static str,
    id: i64,
    /// What differs: `sold`, `reserved`, `stock_total`, `invariant`,
    /// `missing_in_redis`; `unresolved` for a dead letter (redis 1,
    /// postgres 0: decided, not recorded).
    field: &'static str,
    redis: i64,
    postgres: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Reconcile)]
struct Report {
    ok: bool,
    checked: usize,
    products_checked: usize,
    sales_checked: usize,
    /// Outbox events set aside and not yet replayed; each is a mismatch
    /// (the newest `RECONCILE_DEAD_LETTERS_MAX` are listed).
    dead_letters_unresolved: i64,
    mismatches: Vec<Mismatch>,
}

fn redis_error(e: fred::error::Error) -> OrdersError {
    OrdersError::Script(ScriptError::Redis(e))
}

#[utoipa::path(get, path = "/admin/reconcile", tag = "orders", summary = "Redis's live counts against Postgres's history (admin)",
    responses(
        (status = 200, description = "`ok` and every mismatch, per product, per flash sale and per unresolved dead letter", body = Report),
    ))]
pub async fn reconcile(feature: &Orders) -> Result<HttpResponse, OrdersError> {
    wait_flushed(feature).await?;
    let mut mismatches = Vec::new();
    let products = products(feature, &mut mismatches).await?;
    let product_mismatches = mismatches.len();
    let sales = sales(feature, &mut mismatches).await?;
    let sale_mismatches = mismatches.len() - product_mismatches;
    let dead_letters = unresolved_dead_letters(feature, &mut mismatches).await?;
    metrics::reconcile_mismatches("product", product_mismatches as u64);
    metrics::reconcile_mismatches("sale", sale_mismatches as u64);
    metrics::reconcile_mismatches("dead_letter", dead_letters.max(0) as u64);
    if !mismatches.is_empty() {
        tracing::warn!(?mismatches, "reconcile found drift between Redis and Postgres");
    }
    Ok(json(
        StatusCode::OK,
        &Report {
            ok: mismatches.is_empty() && dead_letters == 0,
            checked: products + sales,
            products_checked: products,
            sales_checked: sales,
            dead_letters_unresolved: dead_letters,
            mismatches,
        },
    ))
}

/// Lists the newest unresolved dead letters as mismatches; returns how many
/// there are in all.
async fn unresolved_dead_letters(feature: &Orders, mismatches: &mut Vec<Mismatch>) -> Result<i64, OrdersError> {
    let postgres = &feature.ctx.postgres;
    let count = dead_letters::count_unresolved(postgres).await?;
    if count > 0 {
        let listed = dead_letters::list(postgres, StatusFilter::Unresolved, None, RECONCILE_DEAD_LETTERS_MAX).await?;
        mismatches.extend(listed.into_iter().map(|letter| Mismatch {
            kind: "dead_letter",
            id: letter.id,
            field: "unresolved",
            redis: 1,
            postgres: 0,
        }));
    }
    Ok(count)
}

/// Waits until every outbox shard's unflushed-event counter is 0.
async fn wait_flushed(feature: &Orders) -> Result<(), OrdersError> {
    let state = &*feature.ctx;
    let deadline = Instant::now() + RECONCILE_FLUSH_WAIT;
    loop {
        let mut backlog = 0;
        for shard in state.keys.shards() {
            let count: Option<i64> = state
                .redis
                .get(state.keys.outbox_events(shard))
                .await
                .map_err(redis_error)?;
            backlog += count.unwrap_or(0).max(0);
        }
        if backlog == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(OrdersError::BacklogNotFlushed);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn products(feature: &Orders, mismatches: &mut Vec<Mismatch>) -> Result<usize, OrdersError> {
    let state = &*feature.ctx;
    let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT p.id, p.stock_total,
                COALESCE(SUM(o.quantity) FILTER (WHERE o.status = 'completed'), 0)::bigint,
                COALESCE(SUM(o.quantity) FILTER (WHERE o.status = 'reserved'), 0)::bigint
         FROM products p LEFT JOIN orders o ON o.product_id = p.id
         GROUP BY p.id ORDER BY p.id DESC LIMIT $1",
    )
    .bind(RECONCILE_PRODUCTS_MAX)
    .fetch_all(&state.postgres)
    .await?;
    for (id, stock_total, sold, reserved) in &rows {
        // A split product summed over its slots (`split::read`).
        let Some(live) = split::read(&state.redis, &state.keys, ProductId::new(*id)?).await? else {
            mismatches.push(Mismatch {
                kind: "product",
                id: *id,
                field: "missing_in_redis",
                redis: 0,
                postgres: *stock_total,
            });
            continue;
        };
        let Stock {
            stock_total: r_total,
            available: r_available,
            reserved: r_reserved,
            sold: r_sold,
        } = live.stock;
        for (field, redis, postgres) in [
            ("sold", r_sold, *sold),
            ("reserved", r_reserved, *reserved),
            ("stock_total", r_total, *stock_total),
            ("invariant", r_available + r_reserved + r_sold, r_total),
        ] {
            if redis != postgres {
                mismatches.push(Mismatch {
                    kind: "product",
                    id: *id,
                    field,
                    redis,
                    postgres,
                });
            }
        }
        // Every part of a split product, its reserve and its stock in
        // transit, are at least 0 too.
        let lowest = live.parts.as_ref().map_or(r_available, |parts| {
            parts
                .buckets
                .iter()
                .map(|b| b.available)
                .chain([parts.reserve, parts.in_transit, r_available])
                .min()
                .unwrap_or(r_available)
        });
        if lowest < 0 {
            mismatches.push(Mismatch {
                kind: "product",
                id: *id,
                field: "available",
                redis: lowest,
                postgres: 0,
            });
        }
    }
    Ok(rows.len())
}

async fn sales(feature: &Orders, mismatches: &mut Vec<Mismatch>) -> Result<usize, OrdersError> {
    let state = &*feature.ctx;
    let rows: Vec<(i64, i64)> =
        sqlx::query_as("SELECT sale_id, count(*) FROM purchases GROUP BY sale_id ORDER BY sale_id DESC LIMIT $1")
            .bind(RECONCILE_SALES_MAX)
            .fetch_all(&state.postgres)
            .await?;
    let mut checked = 0;
    for (sale_id, purchases) in rows {
        // The sale feature's key layout (src/sale/lua.rs, SaleKeys): a sale
        // split over several slots has a sold bitmap on each of its parts'
        // shards, at most one per shard, so the sum over every shard is the
        // sale's count however it is split.
        let (mut live, mut sold) = (false, 0_i64);
        for shard in state.keys.shards() {
            let key = state.keys.key(shard, format_args!("sale:{sale_id}:sold"));
            let exists: i64 = state.redis.exists(&key).await.map_err(redis_error)?;
            if exists == 0 {
                continue;
            }
            live = true;
            let part: i64 = state
                .redis
                .custom(fred::cmd!("BITCOUNT"), vec![key])
                .await
                .map_err(redis_error)?;
            sold += part;
        }
        if !live {
            continue; // past its retention in Redis: nothing live to compare
        }
        checked += 1;
        if sold != purchases {
            mismatches.push(Mismatch {
                kind: "sale",
                id: sale_id,
                field: "sold",
                redis: sold,
                postgres: purchases,
            });
        }
    }
    Ok(checked)
}
