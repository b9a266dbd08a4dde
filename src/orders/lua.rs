//! Rust bindings of the orders' scripts: typed arguments in, typed outcomes
//! out. The scripts' reply strings are decoded here and nowhere else.

use std::sync::LazyLock;

use fred::types::Value;

use super::OrdersError;
use super::domain::{BuyerId, OrderId, ProductId};
use super::limits::{
    ORDER_RECORD_RETENTION, PRODUCT_STOCK_MAX, STOCK_RECEIPT_RETENTION, STOCK_RECEIPTS_FORGOTTEN_PER_CALL,
};
use crate::redis::executor::{BatchScript, Executor, batch_script};
use crate::redis::keyspace::{Keyspace, Shard};
use crate::redis::lua::{LuaScript, ScriptError, reply_i64, reply_str, reply_text};
use crate::server::http::IdempotencyKey;

pub static ORDER_CREATE: LazyLock<BatchScript> = LazyLock::new(|| batch_script!("order_create", 5, 13));
pub static ORDER_UPDATE: LazyLock<BatchScript> = LazyLock::new(|| batch_script!("order_update", 5, 8));
pub static PRODUCT_STOCK: LazyLock<BatchScript> = LazyLock::new(|| batch_script!("product_stock", 2, 14));
pub static STOCK_MOVE: LazyLock<BatchScript> = LazyLock::new(|| batch_script!("stock_move", 4, 11));

/// Key names. Everything of a product (its stock, buyers, orders, their
/// idempotency records and the shard's holds) lives in the product's shard,
/// so every script call touches one hash slot. A product split over several
/// buckets (`split`) has one such set per bucket, on the bucket's shard,
/// under the same names: bucket 0 is the product's own shard and keys.
pub fn product_key(keys: &Keyspace, product: ProductId) -> String {
    bucket_key(keys, product.shard(keys), product)
}

/// The product's hash on `shard`: its stock there (one bucket's).
pub fn bucket_key(keys: &Keyspace, shard: Shard, product: ProductId) -> String {
    keys.key(shard, format_args!("product:{}", product.get()))
}

fn buyers_key(keys: &Keyspace, shard: Shard, product: ProductId) -> String {
    keys.key(shard, format_args!("product:{}:buyers", product.get()))
}

/// The transfers a split product's part on `shard` gave and that are not
/// yet dropped: transfer id -> `taker␟quantity␟created_ms`.
pub fn transit_key(keys: &Keyspace, shard: Shard, product: ProductId) -> String {
    keys.key(shard, format_args!("product:{}:transit", product.get()))
}

/// The transfer ids a split product's bucket on `shard` received (zset by
/// when).
pub fn receipts_key(keys: &Keyspace, shard: Shard, product: ProductId) -> String {
    keys.key(shard, format_args!("product:{}:received", product.get()))
}

/// The shard's transfers in transit, every product's, by creation time:
/// members `product␟tid␟taker␟quantity␟created_ms`, where the sweeper finds
/// the ones a crash left.
pub fn transits_key(keys: &Keyspace, shard: Shard) -> String {
    keys.key(shard, format_args!("transits"))
}

pub fn order_key(keys: &Keyspace, order: &OrderId) -> String {
    keys.key(order.shard(keys), format_args!("order:{}", order.as_str()))
}

/// The shard's zset of holds by expiry; members are `<product_id>:<order_id>`.
pub fn holds_key(keys: &Keyspace, shard: Shard) -> String {
    keys.key(shard, format_args!("holds"))
}

/// An idempotency record, scoped to its target (`p<id>` for orders of a
/// product, `o<uuid>` for confirm and cancel of an order, `s<id>` for
/// restocks of a product).
fn idem_key(keys: &Keyspace, shard: Shard, target: &str, key: Option<&IdempotencyKey>) -> String {
    match key {
        Some(key) => keys.key(shard, format_args!("idem:{target}:{}", key.as_str())),
        // Never read or written: the script's key slot must hold something.
        None => keys.key(shard, format_args!("idem:-")),
    }
}

/// An order as the scripts report it.
#[derive(Debug, Clone)]
pub struct OrderRecord {
    pub id: String,
    pub product_id: u64,
    pub quantity: i64,
    pub buyer_id: String,
    pub status: String,
    pub total_amount_cents: i64,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
}

/// What an order script decided for one request.
#[derive(Debug)]
pub struct Decided {
    /// The script's outcome word (the expiry task tells EXPIRED from SETTLED).
    pub outcome: String,
    /// The order, or the refusal (replayed ones included).
    pub result: Result<OrderRecord, OrdersError>,
    /// True when the answer is the stored one of an earlier request.
    pub replayed: bool,
}

fn int(script: &LuaScript, text: &str, what: &str) -> Result<i64, ScriptError> {
    text.parse()
        .map_err(|_| script.unexpected(format!("{what} {text:?} is not an integer")))
}

/// Decodes `{outcome, replayed, id, product, qty, buyer, status, total,
/// created, expires}`.
fn decide(script: &LuaScript, reply: &[Value]) -> Result<Decided, OrdersError> {
    let outcome = reply_str(script, reply, 0)?;
    let replayed = reply_i64(script, reply, 1)? == 1;
    let refusal = match outcome.as_str() {
        "OK" | "EXPIRED" | "NOT_DUE" => None,
        "OUT_OF_STOCK" => Some(OrdersError::OutOfStock),
        "BUYER_LIMIT_REACHED" => Some(OrdersError::BuyerLimitReached),
        "PRODUCT_NOT_FOUND" => Some(OrdersError::ProductNotFound),
        "ORDER_NOT_FOUND" => Some(OrdersError::OrderNotFound),
        "ORDER_EXPIRED" => Some(OrdersError::OrderExpired),
        "ORDER_CANCELLED" => Some(OrdersError::OrderCancelled),
        "ORDER_COMPLETED" => Some(OrdersError::OrderCompleted),
        "IDEMPOTENCY_KEY_REUSED" => Some(OrdersError::IdempotencyKeyReused),
        "OUTBOX_FULL" => Some(OrdersError::OutboxFull),
        "SETTLED" => Some(OrdersError::OrderNotFound),
        other => return Err(script.unexpected(format!("unknown outcome {other:?}")).into()),
    };
    let label = refusal.as_ref().map_or("OK", OrdersError::outcome_label);
    crate::telemetry::script_outcome(script.name(), label);
    if let Some(refusal) = refusal {
        return Ok(Decided {
            outcome,
            result: Err(refusal),
            replayed,
        });
    }
    let s = |i| reply_text(script, reply, i);
    let expires = s(9)?;
    let record = OrderRecord {
        id: s(2)?.into_owned(),
        product_id: int(script, &s(3)?, "product")? as u64,
        quantity: int(script, &s(4)?, "quantity")?,
        buyer_id: s(5)?.into_owned(),
        status: s(6)?.into_owned(),
        total_amount_cents: int(script, &s(7)?, "total")?,
        created_ms: int(script, &s(8)?, "created")?,
        expires_ms: if expires.is_empty() {
            None
        } else {
            Some(int(script, &expires, "expires")?)
        },
    };
    Ok(Decided {
        outcome,
        result: Ok(record),
        replayed,
    })
}

pub struct CreateRequest<'a> {
    pub product: ProductId,
    /// The order's id; it names the shard the order is decided on (the
    /// product's, or the buyer's bucket's).
    pub order: &'a OrderId,
    /// The buyer's bucket of a split product (`None`: not split).
    pub bucket: Option<u32>,
    /// Whether a bucket short of stock answers `Short` (a refill may serve
    /// it) rather than `OUT_OF_STOCK`.
    pub refill: bool,
    /// The most bucket 0 takes from the reserve beyond what an order lacks.
    pub refill_max: i64,
    pub quantity: i64,
    pub buyer: &'a BuyerId,
    pub hold_secs: Option<i64>,
    pub key: Option<&'a IdempotencyKey>,
    pub now_ms: i64,
    pub idempotency_ttl_ms: i64,
}

/// The request's fingerprint: a key reused with another one gets 422.
pub fn create_fingerprint(req: &CreateRequest<'_>) -> String {
    format!(
        "POST /orders\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
        req.product.get(),
        req.quantity,
        req.buyer.as_str(),
        req.hold_secs.unwrap_or(0)
    )
}

/// What order_create.lua answered for one order.
#[derive(Debug)]
pub enum Created {
    Decided(Decided),
    /// The bucket lacks this much stock and took nothing (`refill` only).
    Short(i64),
}

/// Runs order_create.lua for one order, on the order's shard.
pub async fn create(executor: &Executor, keys: &Keyspace, req: CreateRequest<'_>) -> Result<Created, OrdersError> {
    let order = req.order;
    let shard = order.shard(keys);
    let target = format!("p{}", req.product.get());
    let script = &*ORDER_CREATE;
    let args: Vec<Value> = vec![
        req.now_ms.into(),
        (req.product.get() as i64).into(),
        order.as_str().into(),
        req.buyer.as_str().into(),
        req.quantity.into(),
        (req.hold_secs.unwrap_or(0) * 1000).into(),
        req.key.map_or("", IdempotencyKey::as_str).into(),
        create_fingerprint(&req).into(),
        req.idempotency_ttl_ms.into(),
        (ORDER_RECORD_RETENTION.as_millis() as i64).into(),
        req.bucket.map_or(String::new(), |b| b.to_string()).into(),
        (if req.refill { "1" } else { "0" }).into(),
        req.refill_max.into(),
    ];
    let called = executor
        .call(
            script,
            shard,
            vec![
                bucket_key(keys, shard, req.product),
                buyers_key(keys, shard, req.product),
                order_key(keys, order),
                holds_key(keys, shard),
                idem_key(keys, shard, &target, req.key),
            ],
            args,
        )
        .await;
    let reply = match called {
        Ok(reply) => reply,
        // The call may have run: the client gets the id the order would
        // have, so it can look it up. (`Overloaded` never reached Redis.)
        Err(ScriptError::Redis(source)) => {
            tracing::warn!(order_id = order.as_str(), error = %source, "order call failed; outcome unknown");
            return Err(OrdersError::OutcomeUnknown {
                order_id: order.as_str().to_owned(),
                source,
            });
        }
        Err(other) => return Err(other.into()),
    };
    if reply_str(&script.lua, &reply, 0)? == "REFILL" {
        crate::telemetry::script_outcome(script.lua.name(), "REFILL");
        return Ok(Created::Short(reply_i64(&script.lua, &reply, 2)?));
    }
    decide(&script.lua, &reply).map(Created::Decided)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Confirm,
    Cancel,
    Expire,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Confirm => "confirm",
            Action::Cancel => "cancel",
            Action::Expire => "expire",
        }
    }
}

pub struct UpdateRequest<'a> {
    pub order: &'a OrderId,
    pub product: ProductId,
    pub action: Action,
    pub key: Option<&'a IdempotencyKey>,
    pub now_ms: i64,
    pub idempotency_ttl_ms: i64,
}

/// Runs order_update.lua for one order, on the order's shard: the product's
/// hash and buyers there are those of the bucket the order was taken from
/// (the product's own when it is not split), so its stock goes back there.
pub async fn update(executor: &Executor, keys: &Keyspace, req: UpdateRequest<'_>) -> Result<Decided, OrdersError> {
    let shard = req.order.shard(keys);
    let target = format!("o{}", req.order.as_str());
    let fingerprint = format!("POST /orders/{}/{}", req.order.as_str(), req.action.as_str());
    let script = &*ORDER_UPDATE;
    let args: Vec<Value> = vec![
        req.now_ms.into(),
        req.action.as_str().into(),
        req.order.as_str().into(),
        (req.product.get() as i64).into(),
        req.key.map_or("", IdempotencyKey::as_str).into(),
        fingerprint.into(),
        req.idempotency_ttl_ms.into(),
        (ORDER_RECORD_RETENTION.as_millis() as i64).into(),
    ];
    let reply = executor
        .call(
            script,
            shard,
            vec![
                order_key(keys, req.order),
                bucket_key(keys, shard, req.product),
                buyers_key(keys, shard, req.product),
                holds_key(keys, shard),
                idem_key(keys, shard, &target, req.key),
            ],
            args,
        )
        .await?;
    decide(&script.lua, &reply)
}

/// A product's live counters.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Stock {
    pub stock_total: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

#[derive(Clone, Copy)]
pub struct StockRequest<'a> {
    pub product: ProductId,
    /// The split a product seeded here gets (1: not split).
    pub split: u32,
    /// The Postgres row's values, to seed a product not yet in Redis.
    pub name: &'a str,
    pub stock_total: i64,
    pub price_cents: i64,
    pub merchant_id: i64,
    pub max_per_buyer: i64,
    /// `None`: seed only.
    pub add: Option<i64>,
    /// A restock's idempotency key: a repeat replays the first answer.
    pub key: Option<&'a IdempotencyKey>,
    pub idempotency_ttl_ms: i64,
    pub now_ms: i64,
}

/// What product_stock.lua decided for one request.
#[derive(Debug)]
pub struct StockDecided {
    /// The counters after the step, or the refusal (replayed ones included).
    /// For a split product, the head's, its reserve counted as available.
    pub result: Result<Stock, OrdersError>,
    /// True when the answer is the stored one of an earlier restock.
    pub replayed: bool,
    /// The product's split, as recorded in its head.
    pub split: u32,
}

/// Runs product_stock.lua: seeds the product (once), then restocks it.
pub async fn stock(executor: &Executor, keys: &Keyspace, req: StockRequest<'_>) -> Result<StockDecided, OrdersError> {
    let script = &*PRODUCT_STOCK;
    let shard = req.product.shard(keys);
    let target = format!("s{}", req.product.get());
    let fingerprint = format!(
        "POST /products/{}/stock\u{1f}{}",
        req.product.get(),
        req.add.unwrap_or(0)
    );
    let args: Vec<Value> = vec![
        req.now_ms.into(),
        (if req.add.is_some() { "restock" } else { "seed" }).into(),
        (req.product.get() as i64).into(),
        req.stock_total.into(),
        req.add.unwrap_or(0).into(),
        req.name.into(),
        req.price_cents.into(),
        req.merchant_id.into(),
        req.max_per_buyer.into(),
        PRODUCT_STOCK_MAX.into(),
        req.key.map_or("", IdempotencyKey::as_str).into(),
        fingerprint.into(),
        req.idempotency_ttl_ms.into(),
        i64::from(req.split).into(),
    ];
    let reply = executor
        .call(
            script,
            shard,
            vec![product_key(keys, req.product), idem_key(keys, shard, &target, req.key)],
            args,
        )
        .await?;
    let outcome = reply_str(&script.lua, &reply, 0)?;
    let refusal = match outcome.as_str() {
        "OK" => None,
        "STOCK_LIMIT" => Some(OrdersError::StockLimit),
        "OUTBOX_FULL" => Some(OrdersError::OutboxFull),
        "IDEMPOTENCY_KEY_REUSED" => Some(OrdersError::IdempotencyKeyReused),
        other => {
            return Err(OrdersError::Script(
                script.lua.unexpected(format!("unknown outcome {other:?}")),
            ));
        }
    };
    let label = refusal.as_ref().map_or("OK", OrdersError::outcome_label);
    crate::telemetry::script_outcome(script.lua.name(), label);
    let replayed = reply_i64(&script.lua, &reply, 5)? == 1;
    let split =
        u32::try_from(reply_i64(&script.lua, &reply, 6)?).map_err(|_| script.lua.unexpected("split out of range"))?;
    if let Some(refusal) = refusal {
        return Ok(StockDecided {
            result: Err(refusal),
            replayed,
            split,
        });
    }
    let n = |i| reply_i64(&script.lua, &reply, i);
    Ok(StockDecided {
        result: Ok(Stock {
            stock_total: n(1)?,
            available: n(2)?,
            reserved: n(3)?,
            sold: n(4)?,
        }),
        replayed,
        split,
    })
}

/// Creates bucket `bucket` (> 0) of a product split in `split`, on its own
/// shard, with the catalogue fields its orders need and no stock
/// (product_stock.lua's `bucket`). Idempotent.
pub async fn seed_bucket(
    executor: &Executor,
    keys: &Keyspace,
    req: StockRequest<'_>,
    shard: Shard,
) -> Result<(), OrdersError> {
    let script = &*PRODUCT_STOCK;
    let args: Vec<Value> = vec![
        req.now_ms.into(),
        "bucket".into(),
        (req.product.get() as i64).into(),
        0_i64.into(),
        0_i64.into(),
        "".into(),
        req.price_cents.into(),
        req.merchant_id.into(),
        req.max_per_buyer.into(),
        PRODUCT_STOCK_MAX.into(),
        "".into(),
        "".into(),
        req.idempotency_ttl_ms.into(),
        i64::from(req.split).into(),
    ];
    let reply = executor
        .call(
            script,
            shard,
            vec![bucket_key(keys, shard, req.product), idem_key(keys, shard, "", None)],
            args,
        )
        .await?;
    match reply_str(&script.lua, &reply, 0)?.as_str() {
        "OK" => Ok(()),
        other => Err(script.lua.unexpected(format!("bucket seed answered {other:?}")).into()),
    }
}

/// One step of a move of stock between the parts of a split product
/// (lua/stock_move.lua), on the slot of the part it names.
pub struct MoveStep<'a> {
    pub product: ProductId,
    /// The slot the step runs on: the giver's (give, drop) or the taker's.
    pub shard: Shard,
    pub transfer: &'a str,
    /// The bucket the stock goes to.
    pub taker: u32,
    pub now_ms: i64,
}

/// The limits a give is held to.
#[derive(Debug, Clone, Copy)]
pub struct GiveLimits {
    /// The most a give moves beyond what the taker lacks.
    pub refill_max: i64,
    /// Transfers a part may have in transit at once.
    pub transit_max: i64,
}

/// Whether the reserve gives, or a bucket's available stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Reserve,
    Bucket,
}

async fn move_step(
    executor: &Executor,
    keys: &Keyspace,
    step: &MoveStep<'_>,
    op: &str,
    quantity: i64,
    seventh: Value,
    limits: GiveLimits,
) -> Result<Vec<Value>, ScriptError> {
    let args: Vec<Value> = vec![
        op.into(),
        step.now_ms.into(),
        (step.product.get() as i64).into(),
        step.transfer.into(),
        i64::from(step.taker).into(),
        quantity.into(),
        seventh,
        limits.refill_max.into(),
        limits.transit_max.into(),
        (STOCK_RECEIPT_RETENTION.as_millis() as i64).into(),
        (STOCK_RECEIPTS_FORGOTTEN_PER_CALL as i64).into(),
    ];
    let keys_of = vec![
        bucket_key(keys, step.shard, step.product),
        transit_key(keys, step.shard, step.product),
        receipts_key(keys, step.shard, step.product),
        transits_key(keys, step.shard),
    ];
    executor.call(&STOCK_MOVE, step.shard, keys_of, args).await
}

/// What a give did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Given {
    /// This much left the giver and is in transit.
    Given(i64),
    /// The giver had nothing to give.
    Empty,
    /// The giver has too many transfers in transit already.
    Busy,
}

/// give: lowers the giver by what the taker lacks (`need`) or its share,
/// and records the transfer in transit.
pub async fn give(
    executor: &Executor,
    keys: &Keyspace,
    step: &MoveStep<'_>,
    need: i64,
    source: Source,
    limits: GiveLimits,
) -> Result<Given, OrdersError> {
    let source = match source {
        Source::Reserve => "reserve",
        Source::Bucket => "bucket",
    };
    let reply = move_step(executor, keys, step, "give", need, source.into(), limits).await?;
    let script = &STOCK_MOVE.lua;
    let outcome = reply_str(script, &reply, 0)?;
    crate::telemetry::script_outcome(script.name(), outcome_label(&outcome));
    match outcome.as_str() {
        "GIVEN" => Ok(Given::Given(reply_i64(script, &reply, 1)?)),
        "EMPTY" => Ok(Given::Empty),
        "BUSY" => Ok(Given::Busy),
        other => Err(script.unexpected(format!("give answered {other:?}")).into()),
    }
}

/// What a take did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// The taker has it: by this call, or by an earlier one (a repeat).
    Taken,
    /// The taker's bucket does not exist (never seeded): left in transit.
    NoBucket,
    /// The transfer is older than the receipts the taker still keeps: left
    /// in transit rather than risk crediting it twice.
    Stale,
}

/// take: raises the taker by what was given, once per transfer id.
pub async fn take(
    executor: &Executor,
    keys: &Keyspace,
    step: &MoveStep<'_>,
    quantity: i64,
    created_ms: i64,
) -> Result<Taken, OrdersError> {
    let limits = GiveLimits {
        refill_max: 0,
        transit_max: 0,
    };
    let reply = move_step(executor, keys, step, "take", quantity, created_ms.into(), limits).await?;
    let script = &STOCK_MOVE.lua;
    let outcome = reply_str(script, &reply, 0)?;
    crate::telemetry::script_outcome(script.name(), outcome_label(&outcome));
    match outcome.as_str() {
        "TAKEN" | "DONE" => Ok(Taken::Taken),
        "NO_BUCKET" => Ok(Taken::NoBucket),
        "STALE" => Ok(Taken::Stale),
        other => Err(script.unexpected(format!("take answered {other:?}")).into()),
    }
}

/// drop: removes the giver's in-transit record of a taken transfer.
pub async fn drop_transit(executor: &Executor, keys: &Keyspace, step: &MoveStep<'_>) -> Result<(), OrdersError> {
    let limits = GiveLimits {
        refill_max: 0,
        transit_max: 0,
    };
    let reply = move_step(executor, keys, step, "drop", 0, 0_i64.into(), limits).await?;
    match reply_str(&STOCK_MOVE.lua, &reply, 0)?.as_str() {
        "OK" => Ok(()),
        other => Err(STOCK_MOVE.lua.unexpected(format!("drop answered {other:?}")).into()),
    }
}

/// The metric label of a stock_move outcome (a fixed set).
fn outcome_label(outcome: &str) -> &'static str {
    match outcome {
        "GIVEN" => "GIVEN",
        "EMPTY" => "EMPTY",
        "BUSY" => "BUSY",
        "TAKEN" => "TAKEN",
        "DONE" => "DONE",
        "NO_BUCKET" => "NO_BUCKET",
        "STALE" => "STALE",
        _ => "UNKNOWN",
    }
}
