//! Rust bindings of the orders' scripts: typed arguments in, typed outcomes
//! out. The scripts' reply strings are decoded here and nowhere else.

use std::sync::LazyLock;

use fred::types::Value;

use super::OrdersError;
use super::domain::{BuyerId, OrderId, ProductId};
use super::limits::{ORDER_RECORD_RETENTION, PRODUCT_STOCK_MAX};
use crate::redis::executor::{BatchScript, Executor, batch_script};
use crate::redis::keyspace::{Keyspace, Shard};
use crate::redis::lua::{LuaScript, ScriptError, reply_i64, reply_str, reply_text};
use crate::server::http::IdempotencyKey;

pub static ORDER_CREATE: LazyLock<BatchScript> = LazyLock::new(|| batch_script!("order_create", 5, 10));
pub static ORDER_UPDATE: LazyLock<BatchScript> = LazyLock::new(|| batch_script!("order_update", 5, 8));
pub static PRODUCT_STOCK: LazyLock<BatchScript> = LazyLock::new(|| batch_script!("product_stock", 2, 13));

/// Key names. Everything of a product (its stock, buyers, orders, their
/// idempotency records and the shard's holds) lives in the product's shard,
/// so every script call touches one hash slot.
pub fn product_key(keys: &Keyspace, product: ProductId) -> String {
    keys.key(product.shard(keys), format_args!("product:{}", product.get()))
}

fn buyers_key(keys: &Keyspace, product: ProductId) -> String {
    keys.key(product.shard(keys), format_args!("product:{}:buyers", product.get()))
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

/// Runs order_create.lua for one order.
pub async fn create(executor: &Executor, keys: &Keyspace, req: CreateRequest<'_>) -> Result<Decided, OrdersError> {
    let shard = req.product.shard(keys);
    let order = OrderId::generate(shard, keys);
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
    ];
    let called = executor
        .call(
            script,
            shard,
            vec![
                product_key(keys, req.product),
                buyers_key(keys, req.product),
                order_key(keys, &order),
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
    decide(&script.lua, &reply)
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

/// Runs order_update.lua for one order.
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
                product_key(keys, req.product),
                buyers_key(keys, req.product),
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

pub struct StockRequest<'a> {
    pub product: ProductId,
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
    pub result: Result<Stock, OrdersError>,
    /// True when the answer is the stored one of an earlier restock.
    pub replayed: bool,
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
    if let Some(refusal) = refusal {
        return Ok(StockDecided {
            result: Err(refusal),
            replayed,
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
    })
}
