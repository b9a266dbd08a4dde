//! The flash sale: hourly sales of numbered items, checkout codes, purchases.
//!
//! - `domain`: input types (`UserId`, `ItemId`, `CheckoutCode`, `SaleWindow`).
//! - `lua`: bindings of `lua/checkout.lua` and `lua/purchase.lua`.
//! - `handlers`: `POST /checkout`, `POST /purchase`, `GET /sales/current`,
//!   `GET /codes/{code}`.
//! - `split`: a sale spread over several slots (`STAMPEDE_SALE_SPLIT`): the
//!   steps of checkout and purchase across the user's and the item's part,
//!   bindings of `lua/sale_user.lua` and `lua/sale_item.lua`.
//! - `sweeper`: the background task that resolves a split sale's
//!   reservations left behind.
//! - `sink`: how the sale's outbox events land in Postgres.
//! - `settings`: the rules of every sale, from the environment.

pub mod domain;
pub mod handlers;
pub mod limits;
pub mod lua;
mod metrics;
pub mod settings;
pub mod sink;
pub mod split;
mod sweeper;

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
use domain::Param;
use settings::SaleSettings;

/// Why a sale request was refused.
#[derive(Debug, thiserror::Error)]
pub enum SaleError {
    #[error("missing parameter `{0}`")]
    Missing(Param),
    #[error("invalid `{0}`: {1}")]
    Invalid(Param, &'static str),
    #[error("no such item in this sale")]
    ItemNotFound,
    #[error("item already sold")]
    ItemSold,
    #[error("user has reached the purchase limit for this sale")]
    UserLimitReached,
    #[error("user holds too many checkout codes for this sale")]
    TooManyCheckouts {
        /// Seconds until the sale ends (`Retry-After`).
        retry_after_secs: u32,
    },
    #[error("unknown checkout code")]
    CodeNotFound,
    #[error("checkout code already used")]
    CodeUsed,
    #[error("checkout code expired")]
    CodeExpired,
    #[error("the sale this code belongs to is over")]
    SaleOver,
    #[error("the engine is shedding load until its backlog drains")]
    OutboxFull,
    /// A refused checkout attempt past its share of the outbox bound.
    #[error("the engine is shedding refused checkout attempts until its backlog drains; retry shortly")]
    RefusalsFull,
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Script(#[from] ScriptError),
}

impl SaleError {
    /// The script outcome this refusal was decoded from, for the metric.
    fn outcome_label(&self) -> &'static str {
        match self {
            SaleError::Script(_) | SaleError::Request(_) | SaleError::Missing(_) | SaleError::Invalid(..) => "UNKNOWN",
            // Its own label: the answer is OUTBOX_FULL, the cause the share.
            SaleError::RefusalsFull => "REFUSALS_FULL",
            other => other.error_code().code,
        }
    }
}

// The codes a SaleError answers with; routes list the ones they may answer.
pub const MISSING_USER_ID: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "MISSING_USER_ID");
pub const MISSING_ITEM_ID: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "MISSING_ITEM_ID");
pub const MISSING_CODE: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "MISSING_CODE");
pub const INVALID_USER_ID: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_USER_ID");
pub const INVALID_ITEM_ID: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_ITEM_ID");
pub const INVALID_CODE: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_CODE");
pub const ITEM_NOT_FOUND: ErrorCode = ErrorCode::new(StatusCode::NOT_FOUND, "ITEM_NOT_FOUND");
pub const ITEM_SOLD: ErrorCode = ErrorCode::new(StatusCode::CONFLICT, "ITEM_SOLD");
pub const USER_LIMIT_REACHED: ErrorCode = ErrorCode::new(StatusCode::FORBIDDEN, "USER_LIMIT_REACHED");
pub const TOO_MANY_CHECKOUTS: ErrorCode = ErrorCode::new(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_CHECKOUTS");
pub const CODE_NOT_FOUND: ErrorCode = ErrorCode::new(StatusCode::NOT_FOUND, "CODE_NOT_FOUND");
pub const CODE_USED: ErrorCode = ErrorCode::new(StatusCode::CONFLICT, "CODE_USED");
pub const CODE_EXPIRED: ErrorCode = ErrorCode::new(StatusCode::GONE, "CODE_EXPIRED");
pub const SALE_OVER: ErrorCode = ErrorCode::new(StatusCode::GONE, "SALE_OVER");
pub const OUTBOX_FULL: ErrorCode = ErrorCode::new(StatusCode::SERVICE_UNAVAILABLE, "OUTBOX_FULL");

impl ApiError for SaleError {
    fn error_code(&self) -> ErrorCode {
        match self {
            SaleError::Missing(Param::UserId) => MISSING_USER_ID,
            SaleError::Missing(Param::ItemId) => MISSING_ITEM_ID,
            SaleError::Missing(Param::Code) => MISSING_CODE,
            SaleError::Invalid(Param::UserId, _) => INVALID_USER_ID,
            SaleError::Invalid(Param::ItemId, _) => INVALID_ITEM_ID,
            SaleError::Invalid(Param::Code, _) => INVALID_CODE,
            SaleError::ItemNotFound => ITEM_NOT_FOUND,
            SaleError::ItemSold => ITEM_SOLD,
            SaleError::UserLimitReached => USER_LIMIT_REACHED,
            SaleError::TooManyCheckouts { .. } => TOO_MANY_CHECKOUTS,
            SaleError::CodeNotFound => CODE_NOT_FOUND,
            SaleError::CodeUsed => CODE_USED,
            SaleError::CodeExpired => CODE_EXPIRED,
            SaleError::SaleOver => SALE_OVER,
            SaleError::OutboxFull | SaleError::RefusalsFull => OUTBOX_FULL,
            SaleError::Request(e) => e.error_code(),
            SaleError::Script(e) => e.error_code(),
        }
    }

    fn retry_after_secs(&self) -> Option<u32> {
        match self {
            SaleError::TooManyCheckouts { retry_after_secs } => Some(*retry_after_secs),
            other => (other.error_code().status == StatusCode::SERVICE_UNAVAILABLE).then_some(1),
        }
    }

    fn is_internal(&self) -> bool {
        match self {
            SaleError::Script(e) => e.is_internal(),
            _ => false,
        }
    }

    fn allow(&self) -> Option<&str> {
        match self {
            SaleError::Request(e) => e.allow(),
            _ => None,
        }
    }
}

/// The sale feature: what its handlers need.
pub struct Sale {
    ctx: Arc<Context>,
    settings: SaleSettings,
}

impl Sale {
    pub fn new(ctx: Arc<Context>) -> Result<Arc<Self>, ConfigError> {
        let settings = SaleSettings::from_env(&ctx.config.env())?;
        // Resolving a reservation voids its code: it must not happen while
        // the purchase that made it may still reach Redis. Only a split sale
        // reserves.
        let in_flight_ms = (ctx.config.queue_deadline + ctx.config.redis_command_timeout).as_millis() as i64;
        if settings.split > 1 && settings.reservation_timeout_ms <= in_flight_ms {
            return Err(ConfigError::Invalid {
                var: "STAMPEDE_SALE_RESERVATION_TIMEOUT_MS",
                value: settings.reservation_timeout_ms.to_string(),
                reason: format!(
                    "must exceed STAMPEDE_QUEUE_DEADLINE_MS + STAMPEDE_REDIS_COMMAND_TIMEOUT_MS ({in_flight_ms} ms)"
                ),
            });
        }
        // Each part has a shard of its own.
        ctx.keys.check_parts("STAMPEDE_SALE_SPLIT", settings.split)?;
        Ok(Arc::new(Self { ctx, settings }))
    }
}

impl Feature for Sale {
    fn name(&self) -> &'static str {
        "sale"
    }

    fn register_metrics(&self) {
        metrics::register();
    }

    fn routes(self: Arc<Self>) -> Vec<Route> {
        vec![
            Route::new(
                Method::POST,
                "/checkout",
                "checkout",
                Access::service("sale"),
                self.clone(),
                |sale, req, _| async move { handlers::checkout(&sale, req).await },
            )
            .answers(error::SCRIPT_ANSWERS)
            .answers(&[
                MISSING_USER_ID,
                INVALID_USER_ID,
                MISSING_ITEM_ID,
                INVALID_ITEM_ID,
                USER_LIMIT_REACHED,
                ITEM_NOT_FOUND,
                ITEM_SOLD,
                TOO_MANY_CHECKOUTS,
                OUTBOX_FULL,
            ]),
            Route::new(
                Method::POST,
                "/purchase",
                "purchase",
                Access::service("sale"),
                self.clone(),
                |sale, req, _| async move { handlers::purchase(&sale, req).await },
            )
            .answers(error::BODY_ANSWERS)
            .answers(error::SCRIPT_ANSWERS)
            .answers(&[
                MISSING_CODE,
                INVALID_CODE,
                USER_LIMIT_REACHED,
                CODE_NOT_FOUND,
                ITEM_SOLD,
                CODE_USED,
                CODE_EXPIRED,
                SALE_OVER,
                OUTBOX_FULL,
            ]),
            Route::new(
                Method::GET,
                "/sales/current",
                "sales_current",
                Access::Public,
                self.clone(),
                |sale, _, _| async move { handlers::current(&sale).await },
            )
            .answers(&[error::REDIS_UNAVAILABLE]),
            Route::new(
                Method::GET,
                "/codes/{code}",
                "code_state",
                Access::Public,
                self,
                |sale, _, params| async move { handlers::code_state(&sale, params.get("code")).await },
            )
            .answers(&[
                INVALID_CODE,
                MISSING_CODE,
                CODE_NOT_FOUND,
                error::INTERNAL,
                error::REDIS_UNAVAILABLE,
            ]),
        ]
    }

    fn api(&self) -> utoipa::openapi::OpenApi {
        <handlers::SaleApi as utoipa::OpenApi>::openapi()
    }

    fn batch_scripts(&self) -> Vec<&'static BatchScript> {
        vec![&lua::CHECKOUT, &lua::PURCHASE, &split::SALE_USER, &split::SALE_ITEM]
    }

    fn spawn_background(self: Arc<Self>, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        if self.settings.split > 1 {
            vec![tokio::spawn(sweeper::run(self, shutdown))]
        } else {
            Vec::new()
        }
    }

    fn sink(self: Arc<Self>) -> Option<Arc<dyn Sink>> {
        Some(sink::sink())
    }
}
