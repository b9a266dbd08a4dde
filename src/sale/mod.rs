//! The flash sale: hourly sales of numbered items, checkout codes, purchases.
//!
//! - `domain`: input types (`UserId`, `ItemId`, `CheckoutCode`, `SaleWindow`).
//! - `scripts`: bindings of `lua/checkout.lua` and `lua/purchase.lua`.
//! - `handlers`: `POST /checkout`, `POST /purchase`, `GET /sales/current`.
//! - `sink`: how the sale's outbox events land in Postgres.

pub mod domain;
pub mod handlers;
pub mod scripts;
pub mod sink;

use crate::scripts::ScriptError;

/// Why a sale request was refused. Mapped to HTTP in `crate::error`.
#[derive(Debug, thiserror::Error)]
pub enum SaleError {
    #[error("no such item in this sale")]
    ItemNotFound,
    #[error("item already sold")]
    ItemSold,
    #[error("user has reached the purchase limit for this sale")]
    UserLimitReached,
    #[error("user holds too many checkout codes for this sale")]
    TooManyCheckouts,
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
    #[error(transparent)]
    Script(#[from] ScriptError),
}
