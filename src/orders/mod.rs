//! Limited-stock orders: products with live stock in Redis, orders decided
//! by one script call each, holds that expire, idempotency keys, and the
//! reconciliation of Redis's live counts with Postgres's history.
//!
//! - `domain`: input types (`ProductId`, `BuyerId`, `OrderId` which carries
//!   its shard, `NewProduct`; a bad `Idempotency-Key` as its error).
//! - `lua`: bindings of `lua/order_create.lua`, `lua/order_update.lua`,
//!   `lua/product_stock.lua` and `lua/stock_move.lua`.
//! - `handlers`: the routes.
//! - `split`: a product split over several slots (`STAMPEDE_STOCK_SPLIT`):
//!   the buyer's bucket, an order's refills, the moves of stock between
//!   buckets, and the read of a product's stock across its slots.
//! - `expiry`: the background task that expires due holds.
//! - `sweeper`: the background task that finishes transfers of split
//!   products a crash left in transit.
//! - `reconcile`: `GET /admin/reconcile`.
//! - `sink`: how the orders' outbox events land in Postgres.
//! - `settings`: idempotency key lifetime, the fee and the stock split, from
//!   the environment.

pub mod domain;
pub mod expiry;
pub mod handlers;
pub mod limits;
pub mod lua;
mod metrics;
pub mod reconcile;
pub mod settings;
pub mod sink;
pub mod split;
pub mod sweeper;

use std::sync::Arc;

use hyper::{Method, StatusCode};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ConfigError;
use crate::context::Context;
use crate::outbox::Sink;
use crate::redis::executor::BatchScript;
use crate::redis::lua::ScriptError;
use crate::server::access::Access;
use crate::server::error::{self, ApiError, ErrorCode};
use crate::server::feature::Feature;
use crate::server::{RequestError, Route};
use domain::Field;
use settings::OrdersSettings;

/// Why an orders request was refused.
#[derive(Debug, thiserror::Error)]
pub enum OrdersError {
    #[error("invalid `{0}`: {1}")]
    Invalid(Field, String),
    #[error("no such product")]
    ProductNotFound,
    #[error("fewer than the requested quantity are available")]
    OutOfStock,
    #[error("this order would pass the product's per-buyer limit")]
    BuyerLimitReached,
    #[error("no such order")]
    OrderNotFound,
    #[error("the hold expired before it was confirmed; its stock was returned")]
    OrderExpired,
    #[error("the order was cancelled")]
    OrderCancelled,
    #[error("the order is completed and cannot be cancelled")]
    OrderCompleted,
    #[error("this Idempotency-Key was used with another request")]
    IdempotencyKeyReused,
    #[error("the restock would take the product's stock past the ceiling")]
    StockLimit,
    #[error("the engine is shedding load until its backlog drains")]
    OutboxFull,
    #[error("the outbox backlog did not drain in time; reconcile compares flushed history only")]
    BacklogNotFlushed,
    /// A split product's stock kept moving between its slots: an order's
    /// refills were taken by other buyers each time, or a read kept seeing
    /// stock cross slots. Nothing was done; a retry shortly succeeds.
    #[error("the product's stock is being moved between its slots; retry shortly")]
    StockMoving,
    /// The order's script call failed after it may have reached Redis: the
    /// order may or may not exist. The id is the one it has if it does.
    #[error(
        "Redis did not answer: the order may or may not have been made. Look it up at GET /orders/{order_id} \
         (404: it was not made), or repeat the request with the same Idempotency-Key"
    )]
    OutcomeUnknown {
        order_id: String,
        source: fred::error::Error,
    },
    #[error("postgres: {0}")]
    Store(#[from] sqlx::Error),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Script(#[from] ScriptError),
}

impl OrdersError {
    /// The script outcome this refusal was decoded from, for the metric.
    fn outcome_label(&self) -> &'static str {
        match self {
            OrdersError::Script(_)
            | OrdersError::Request(_)
            | OrdersError::Invalid(..)
            | OrdersError::Store(_)
            | OrdersError::OutcomeUnknown { .. }
            | OrdersError::BacklogNotFlushed => "UNKNOWN",
            OrdersError::StockMoving => "STOCK_MOVING",
            other => other.error_code().code,
        }
    }
}

// The codes a OrdersError answers with; routes list the ones they may answer.
pub const INVALID_PRODUCT_ID: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_PRODUCT_ID");
pub const INVALID_QUANTITY: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_QUANTITY");
pub const INVALID_BUYER_ID: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_BUYER_ID");
pub const INVALID_HOLD_SECS: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_HOLD_SECS");
pub const INVALID_ORDER_ID: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_ORDER_ID");
pub const INVALID_IDEMPOTENCY_KEY: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_IDEMPOTENCY_KEY");
pub const INVALID_NAME: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_NAME");
pub const INVALID_STOCK: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_STOCK");
pub const INVALID_PRICE: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_PRICE");
pub const INVALID_MERCHANT_ID: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_MERCHANT_ID");
pub const INVALID_MAX_PER_BUYER: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_MAX_PER_BUYER");
pub const INVALID_ADD: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_ADD");
pub const PRODUCT_NOT_FOUND: ErrorCode = ErrorCode::new(StatusCode::NOT_FOUND, "PRODUCT_NOT_FOUND");
pub const OUT_OF_STOCK: ErrorCode = ErrorCode::new(StatusCode::CONFLICT, "OUT_OF_STOCK");
pub const BUYER_LIMIT_REACHED: ErrorCode = ErrorCode::new(StatusCode::FORBIDDEN, "BUYER_LIMIT_REACHED");
pub const ORDER_NOT_FOUND: ErrorCode = ErrorCode::new(StatusCode::NOT_FOUND, "ORDER_NOT_FOUND");
pub const ORDER_EXPIRED: ErrorCode = ErrorCode::new(StatusCode::GONE, "ORDER_EXPIRED");
pub const ORDER_CANCELLED: ErrorCode = ErrorCode::new(StatusCode::CONFLICT, "ORDER_CANCELLED");
pub const ORDER_COMPLETED: ErrorCode = ErrorCode::new(StatusCode::CONFLICT, "ORDER_COMPLETED");
pub const IDEMPOTENCY_KEY_REUSED: ErrorCode =
    ErrorCode::new(StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED");
pub const STOCK_LIMIT: ErrorCode = ErrorCode::new(StatusCode::CONFLICT, "STOCK_LIMIT");
pub const OUTBOX_FULL: ErrorCode = ErrorCode::new(StatusCode::SERVICE_UNAVAILABLE, "OUTBOX_FULL");
pub const BACKLOG_NOT_FLUSHED: ErrorCode = ErrorCode::new(StatusCode::SERVICE_UNAVAILABLE, "BACKLOG_NOT_FLUSHED");
pub const OUTCOME_UNKNOWN: ErrorCode = ErrorCode::new(StatusCode::SERVICE_UNAVAILABLE, "REDIS_UNAVAILABLE");
pub const STORE_UNAVAILABLE: ErrorCode = ErrorCode::new(StatusCode::SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE");

impl ApiError for OrdersError {
    fn error_code(&self) -> ErrorCode {
        match self {
            OrdersError::Invalid(Field::ProductId, _) => INVALID_PRODUCT_ID,
            OrdersError::Invalid(Field::Quantity, _) => INVALID_QUANTITY,
            OrdersError::Invalid(Field::BuyerId, _) => INVALID_BUYER_ID,
            OrdersError::Invalid(Field::HoldSecs, _) => INVALID_HOLD_SECS,
            OrdersError::Invalid(Field::OrderId, _) => INVALID_ORDER_ID,
            OrdersError::Invalid(Field::IdempotencyKey, _) => INVALID_IDEMPOTENCY_KEY,
            OrdersError::Invalid(Field::Name, _) => INVALID_NAME,
            OrdersError::Invalid(Field::Stock, _) => INVALID_STOCK,
            OrdersError::Invalid(Field::PriceCents, _) => INVALID_PRICE,
            OrdersError::Invalid(Field::MerchantId, _) => INVALID_MERCHANT_ID,
            OrdersError::Invalid(Field::MaxPerBuyer, _) => INVALID_MAX_PER_BUYER,
            OrdersError::Invalid(Field::Add, _) => INVALID_ADD,
            OrdersError::ProductNotFound => PRODUCT_NOT_FOUND,
            OrdersError::OutOfStock => OUT_OF_STOCK,
            OrdersError::BuyerLimitReached => BUYER_LIMIT_REACHED,
            OrdersError::OrderNotFound => ORDER_NOT_FOUND,
            OrdersError::OrderExpired => ORDER_EXPIRED,
            OrdersError::OrderCancelled => ORDER_CANCELLED,
            OrdersError::OrderCompleted => ORDER_COMPLETED,
            OrdersError::IdempotencyKeyReused => IDEMPOTENCY_KEY_REUSED,
            OrdersError::StockLimit => STOCK_LIMIT,
            OrdersError::OutboxFull => OUTBOX_FULL,
            OrdersError::BacklogNotFlushed => BACKLOG_NOT_FLUSHED,
            // The shared "retry shortly" answer: 503 with Retry-After.
            OrdersError::StockMoving => error::OVERLOADED,
            OrdersError::OutcomeUnknown { .. } => OUTCOME_UNKNOWN,
            OrdersError::Store(_) => STORE_UNAVAILABLE,
            OrdersError::Request(e) => e.error_code(),
            OrdersError::Script(e) => e.error_code(),
        }
    }

    fn is_internal(&self) -> bool {
        match self {
            OrdersError::Script(e) => e.is_internal(),
            OrdersError::Store(_) => true,
            _ => false,
        }
    }

    fn allow(&self) -> Option<&str> {
        match self {
            OrdersError::Request(e) => e.allow(),
            _ => None,
        }
    }

    fn challenge(&self) -> Option<&'static str> {
        match self {
            OrdersError::Request(e) => e.challenge(),
            _ => None,
        }
    }

    fn extra_field(&self) -> Option<(&'static str, &str)> {
        match self {
            OrdersError::OutcomeUnknown { order_id, .. } => Some(("order_id", order_id)),
            _ => None,
        }
    }
}

/// The orders feature: what its handlers and its background tasks need.
pub struct Orders {
    ctx: Arc<Context>,
    settings: OrdersSettings,
    /// The split of each product seen (recorded with the product, fixed).
    splits: split::Splits,
    /// One refill per bucket at a time in this engine.
    refills: split::Refills,
}

impl Orders {
    pub fn new(ctx: Arc<Context>) -> Result<Arc<Self>, ConfigError> {
        let settings = OrdersSettings::from_env(&ctx.config.env())?;
        // Each bucket has a shard of its own.
        ctx.keys.check_parts("STAMPEDE_STOCK_SPLIT", settings.stock_split)?;
        Ok(Arc::new(Self {
            ctx,
            settings,
            splits: split::Splits::default(),
            refills: split::Refills::default(),
        }))
    }
}

impl Feature for Orders {
    fn api(&self) -> utoipa::openapi::OpenApi {
        <handlers::OrdersApi as utoipa::OpenApi>::openapi()
    }

    fn name(&self) -> &'static str {
        "orders"
    }

    fn register_metrics(&self) {
        metrics::register();
    }

    fn routes(self: Arc<Self>) -> Vec<Route> {
        vec![
            Route::new(
                Method::POST,
                "/orders",
                "order_create",
                Access::service("orders"),
                self.clone(),
                |f, req, _| async move { handlers::create_order(&f, req).await },
            )
            .answers(error::BODY_ANSWERS)
            .answers(error::SCRIPT_ANSWERS)
            .answers(&[
                INVALID_PRODUCT_ID,
                INVALID_QUANTITY,
                INVALID_BUYER_ID,
                INVALID_HOLD_SECS,
                INVALID_IDEMPOTENCY_KEY,
                BUYER_LIMIT_REACHED,
                PRODUCT_NOT_FOUND,
                OUT_OF_STOCK,
                IDEMPOTENCY_KEY_REUSED,
                OUTBOX_FULL,
                OUTCOME_UNKNOWN,
            ]),
            Route::new(
                Method::GET,
                "/orders/{id}",
                "order_get",
                Access::player_checked_by_handler(),
                self.clone(),
                |f, req, params| async move { handlers::get_order(&f, req, params.get("id")).await },
            )
            .answers(&[
                INVALID_ORDER_ID,
                ORDER_NOT_FOUND,
                STORE_UNAVAILABLE,
                error::REDIS_UNAVAILABLE,
            ]),
            Route::new(
                Method::POST,
                "/orders/{id}/confirm",
                "order_confirm",
                Access::service("orders"),
                self.clone(),
                |f, req, params| async move { handlers::confirm_order(&f, req, params.get("id")).await },
            )
            .answers(error::SCRIPT_ANSWERS)
            .answers(&[
                INVALID_ORDER_ID,
                INVALID_IDEMPOTENCY_KEY,
                ORDER_NOT_FOUND,
                ORDER_CANCELLED,
                ORDER_EXPIRED,
                IDEMPOTENCY_KEY_REUSED,
                OUTBOX_FULL,
            ]),
            Route::new(
                Method::POST,
                "/orders/{id}/cancel",
                "order_cancel",
                Access::service("orders"),
                self.clone(),
                |f, req, params| async move { handlers::cancel_order(&f, req, params.get("id")).await },
            )
            .answers(error::SCRIPT_ANSWERS)
            .answers(&[
                INVALID_ORDER_ID,
                INVALID_IDEMPOTENCY_KEY,
                ORDER_NOT_FOUND,
                ORDER_COMPLETED,
                IDEMPOTENCY_KEY_REUSED,
                OUTBOX_FULL,
            ]),
            Route::new(
                Method::POST,
                "/products",
                "product_create",
                Access::Admin,
                self.clone(),
                |f, req, _| async move { handlers::create_product(&f, req).await },
            )
            .answers(error::BODY_ANSWERS)
            .answers(error::SCRIPT_ANSWERS)
            .answers(&[
                INVALID_NAME,
                INVALID_STOCK,
                INVALID_PRICE,
                INVALID_MERCHANT_ID,
                INVALID_MAX_PER_BUYER,
                STORE_UNAVAILABLE,
            ]),
            Route::new(
                Method::GET,
                "/products/{id}",
                "product_get",
                Access::Public,
                self.clone(),
                |f, _, params| async move { handlers::get_product(&f, params.get("id")).await },
            )
            .answers(&[
                INVALID_PRODUCT_ID,
                PRODUCT_NOT_FOUND,
                STORE_UNAVAILABLE,
                error::REDIS_UNAVAILABLE,
                error::OVERLOADED,
            ]),
            Route::new(
                Method::POST,
                "/products/{id}/stock",
                "product_restock",
                Access::Admin,
                self.clone(),
                |f, req, params| async move { handlers::restock(&f, req, params.get("id")).await },
            )
            .answers(error::BODY_ANSWERS)
            .answers(error::SCRIPT_ANSWERS)
            .answers(&[
                INVALID_PRODUCT_ID,
                INVALID_ADD,
                INVALID_IDEMPOTENCY_KEY,
                PRODUCT_NOT_FOUND,
                STOCK_LIMIT,
                IDEMPOTENCY_KEY_REUSED,
                OUTBOX_FULL,
                STORE_UNAVAILABLE,
            ]),
            Route::new(
                Method::GET,
                "/admin/reconcile",
                "reconcile",
                Access::Admin,
                self,
                |f, _, _| async move { reconcile::reconcile(&f).await },
            )
            .answers(&[
                BACKLOG_NOT_FLUSHED,
                STORE_UNAVAILABLE,
                error::REDIS_UNAVAILABLE,
                error::OVERLOADED,
            ]),
        ]
    }

    fn batch_scripts(&self) -> Vec<&'static BatchScript> {
        vec![
            &lua::ORDER_CREATE,
            &lua::ORDER_UPDATE,
            &lua::PRODUCT_STOCK,
            &lua::STOCK_MOVE,
        ]
    }

    fn sink(self: Arc<Self>) -> Option<Arc<dyn Sink>> {
        Some(sink::sink(self.settings.fee_bps))
    }

    fn spawn_background(self: Arc<Self>, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        vec![
            tokio::spawn(expiry::run(self.clone(), shutdown.clone())),
            tokio::spawn(sweeper::run(self, shutdown)),
        ]
    }
}
