//! The player wallet: exact money movement by reference, bonus wagering,
//! and live progress over Server-Sent Events.
//!
//! - `domain`: input types (`PlayerId`, `Currency`, `Amount`, `Transaction`,
//!   `BonusGrant`) and their validation.
//! - `lua`: the binding of `lua/wallet_apply.lua`, which decides every
//!   balance change (transactions, bonus grants, bonus expiry) in one call.
//! - `handlers`: `POST /wallet/transactions`, `POST /bonuses`,
//!   `GET /wallet/{player_id}`, `GET /wallet/{player_id}/transactions`.
//! - `events`: `GET /wallet/{player_id}/events` (SSE) and the per-shard
//!   fan-out of Redis notifications to this engine's streams.
//! - `expiry`: the background task that expires due bonuses.
//! - `sink`: how the ledger lands in Postgres.
//! - `settings`: the bound on open event streams, from the environment.

pub mod domain;
pub mod events;
mod expiry;
pub mod handlers;
pub mod limits;
pub mod lua;
mod metrics;
pub mod settings;
pub mod sink;

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
use domain::{Field, Invalid};
use settings::WalletSettings;

/// Why a wallet request was refused. Every refusal leaves the wallet as it
/// was.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    #[error("`{}` {}", .0.0, .0.1)]
    Invalid(Invalid),
    #[error("the balance cannot cover this amount")]
    InsufficientFunds,
    #[error("no bet of this account has that bet_reference_id")]
    BetNotFound,
    #[error("that bet was refunded")]
    BetRefunded,
    #[error("that bet's win was already paid: a bet has one win, and is not refunded after it")]
    BetSettled,
    #[error("a refund must return the bet's whole amount_minor")]
    RefundAmountMismatch,
    #[error("the bet exceeds the active bonus's max_bet_minor")]
    MaxBetExceeded,
    #[error("the balance would exceed 10^15 minor units")]
    BalanceLimitExceeded,
    #[error("this reference_id was used for a transaction of this type with another `{0}`")]
    ReferenceReused(&'static str),
    #[error("the account already has an active bonus")]
    BonusActive,
    #[error("no such account")]
    AccountNotFound,
    #[error("too many event streams are open; retry shortly")]
    StreamsFull,
    #[error("the engine is shedding load until its backlog drains")]
    OutboxFull,
    #[error("postgres: {0}")]
    Store(#[from] sqlx::Error),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Script(#[from] ScriptError),
}

impl From<Invalid> for WalletError {
    fn from(invalid: Invalid) -> Self {
        WalletError::Invalid(invalid)
    }
}

impl WalletError {
    /// True when the transaction that got this error from `wallet_apply.lua`
    /// certainly moved no money and found no record of its reference: the
    /// script looked the reference up, found none, and refused. Only then is
    /// the attempt's claim given back. A replay or a reuse (the account's own
    /// record exists) and every script error keep it: even `Overloaded`,
    /// which is also what a request gets when its executor worker is gone
    /// mid-call, so it does not prove the call never ran.
    pub fn applied_nothing(&self) -> bool {
        match self {
            WalletError::InsufficientFunds
            | WalletError::BetNotFound
            | WalletError::BetRefunded
            | WalletError::BetSettled
            | WalletError::RefundAmountMismatch
            | WalletError::MaxBetExceeded
            | WalletError::BalanceLimitExceeded
            | WalletError::OutboxFull => true,
            WalletError::Invalid(_)
            | WalletError::ReferenceReused(_)
            | WalletError::BonusActive
            | WalletError::AccountNotFound
            | WalletError::StreamsFull
            | WalletError::Store(_)
            | WalletError::Request(_)
            | WalletError::Script(_) => false,
        }
    }

    fn outcome_label(&self) -> &'static str {
        match self {
            WalletError::Store(_) | WalletError::Request(_) | WalletError::Script(_) | WalletError::Invalid(_) => {
                "UNKNOWN"
            }
            other => other.error_code().code,
        }
    }
}

// The codes a WalletError answers with; routes list the ones they may answer.
pub const INVALID_PLAYER_ID: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_PLAYER_ID");
pub const INVALID_CURRENCY: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_CURRENCY");
pub const INVALID_TYPE: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_TYPE");
pub const INVALID_AMOUNT: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_AMOUNT");
pub const INVALID_REFERENCE_ID: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_REFERENCE_ID");
pub const INVALID_GAME: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_GAME");
pub const INVALID_BET_REFERENCE_ID: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_BET_REFERENCE_ID");
pub const INVALID_WAGERING_MULTIPLIER: ErrorCode =
    ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_WAGERING_MULTIPLIER");
pub const INVALID_EXPIRES_IN: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_EXPIRES_IN");
pub const INVALID_MAX_BET: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_MAX_BET");
pub const INVALID_CONTRIBUTIONS: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_CONTRIBUTIONS");
pub const INVALID_LIMIT: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_LIMIT");
pub const INVALID_BEFORE: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_BEFORE");
pub const INVALID_LAST_EVENT_ID: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_LAST_EVENT_ID");
pub const INSUFFICIENT_FUNDS: ErrorCode = ErrorCode::new(StatusCode::CONFLICT, "INSUFFICIENT_FUNDS");
pub const BET_NOT_FOUND: ErrorCode = ErrorCode::new(StatusCode::NOT_FOUND, "BET_NOT_FOUND");
pub const BET_REFUNDED: ErrorCode = ErrorCode::new(StatusCode::CONFLICT, "BET_REFUNDED");
pub const BET_SETTLED: ErrorCode = ErrorCode::new(StatusCode::CONFLICT, "BET_SETTLED");
pub const REFUND_AMOUNT_MISMATCH: ErrorCode =
    ErrorCode::new(StatusCode::UNPROCESSABLE_ENTITY, "REFUND_AMOUNT_MISMATCH");
pub const MAX_BET_EXCEEDED: ErrorCode = ErrorCode::new(StatusCode::UNPROCESSABLE_ENTITY, "MAX_BET_EXCEEDED");
pub const BALANCE_LIMIT_EXCEEDED: ErrorCode =
    ErrorCode::new(StatusCode::UNPROCESSABLE_ENTITY, "BALANCE_LIMIT_EXCEEDED");
pub const REFERENCE_REUSED: ErrorCode = ErrorCode::new(StatusCode::UNPROCESSABLE_ENTITY, "REFERENCE_REUSED");
pub const BONUS_ACTIVE: ErrorCode = ErrorCode::new(StatusCode::CONFLICT, "BONUS_ACTIVE");
pub const ACCOUNT_NOT_FOUND: ErrorCode = ErrorCode::new(StatusCode::NOT_FOUND, "ACCOUNT_NOT_FOUND");
pub const SSE_STREAMS_FULL: ErrorCode = ErrorCode::new(StatusCode::SERVICE_UNAVAILABLE, "SSE_STREAMS_FULL");
pub const OUTBOX_FULL: ErrorCode = ErrorCode::new(StatusCode::SERVICE_UNAVAILABLE, "OUTBOX_FULL");
pub const STORE_UNAVAILABLE: ErrorCode = ErrorCode::new(StatusCode::SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE");

impl ApiError for WalletError {
    fn error_code(&self) -> ErrorCode {
        match self {
            WalletError::Invalid(Invalid(field, _)) => match field {
                Field::PlayerId => INVALID_PLAYER_ID,
                Field::Currency => INVALID_CURRENCY,
                Field::Type => INVALID_TYPE,
                Field::AmountMinor => INVALID_AMOUNT,
                Field::ReferenceId => INVALID_REFERENCE_ID,
                Field::Game => INVALID_GAME,
                Field::BetReferenceId => INVALID_BET_REFERENCE_ID,
                Field::WageringMultiplier => INVALID_WAGERING_MULTIPLIER,
                Field::ExpiresInSecs => INVALID_EXPIRES_IN,
                Field::MaxBetMinor => INVALID_MAX_BET,
                Field::Contributions => INVALID_CONTRIBUTIONS,
                Field::Limit => INVALID_LIMIT,
                Field::Before => INVALID_BEFORE,
                Field::LastEventId => INVALID_LAST_EVENT_ID,
            },
            WalletError::InsufficientFunds => INSUFFICIENT_FUNDS,
            WalletError::BetNotFound => BET_NOT_FOUND,
            WalletError::BetRefunded => BET_REFUNDED,
            WalletError::BetSettled => BET_SETTLED,
            WalletError::RefundAmountMismatch => REFUND_AMOUNT_MISMATCH,
            WalletError::MaxBetExceeded => MAX_BET_EXCEEDED,
            WalletError::BalanceLimitExceeded => BALANCE_LIMIT_EXCEEDED,
            WalletError::ReferenceReused(_) => REFERENCE_REUSED,
            WalletError::BonusActive => BONUS_ACTIVE,
            WalletError::AccountNotFound => ACCOUNT_NOT_FOUND,
            WalletError::StreamsFull => SSE_STREAMS_FULL,
            WalletError::OutboxFull => OUTBOX_FULL,
            WalletError::Store(_) => STORE_UNAVAILABLE,
            WalletError::Request(e) => e.error_code(),
            WalletError::Script(e) => e.error_code(),
        }
    }

    fn is_internal(&self) -> bool {
        match self {
            WalletError::Store(_) => true,
            WalletError::Script(e) => e.is_internal(),
            _ => false,
        }
    }

    fn allow(&self) -> Option<&str> {
        match self {
            WalletError::Request(e) => e.allow(),
            _ => None,
        }
    }
}

/// The wallet feature: what its handlers and tasks need.
pub struct Wallet {
    ctx: Arc<Context>,
    hub: Arc<events::Hub>,
    /// Turns true when the engine begins to shut down; open event streams
    /// end on it.
    shutdown: watch::Receiver<bool>,
    shutdown_tx: watch::Sender<bool>,
}

impl Wallet {
    pub fn new(ctx: Arc<Context>) -> Result<Arc<Self>, ConfigError> {
        let settings = WalletSettings::from_env(&ctx.config.env())?;
        let (shutdown_tx, shutdown) = watch::channel(false);
        Ok(Arc::new(Self {
            hub: Arc::new(events::Hub::new(settings.sse_streams_max)),
            ctx,
            shutdown,
            shutdown_tx,
        }))
    }
}

impl Feature for Wallet {
    fn api(&self) -> utoipa::openapi::OpenApi {
        <handlers::WalletApi as utoipa::OpenApi>::openapi()
    }

    fn name(&self) -> &'static str {
        "wallet"
    }

    fn register_metrics(&self) {
        metrics::register();
    }

    fn routes(self: Arc<Self>) -> Vec<Route> {
        vec![
            Route::new(
                Method::POST,
                "/wallet/transactions",
                "wallet_transaction",
                Access::service("wallet"),
                self.clone(),
                |w, req, _| async move { handlers::transaction(&w, req).await },
            )
            .answers(error::BODY_ANSWERS)
            .answers(error::SCRIPT_ANSWERS)
            .answers(&[
                INVALID_PLAYER_ID,
                INVALID_CURRENCY,
                INVALID_TYPE,
                INVALID_AMOUNT,
                INVALID_REFERENCE_ID,
                INVALID_GAME,
                INVALID_BET_REFERENCE_ID,
                BET_NOT_FOUND,
                ACCOUNT_NOT_FOUND,
                INSUFFICIENT_FUNDS,
                BET_REFUNDED,
                BET_SETTLED,
                MAX_BET_EXCEEDED,
                REFERENCE_REUSED,
                REFUND_AMOUNT_MISMATCH,
                BALANCE_LIMIT_EXCEEDED,
                OUTBOX_FULL,
            ]),
            Route::new(
                Method::GET,
                "/wallet/{player_id}",
                "wallet_balance",
                Access::player("player_id"),
                self.clone(),
                |w, req, params| async move { handlers::balance(&w, req, params.get("player_id")).await },
            )
            .answers(&[
                INVALID_PLAYER_ID,
                INVALID_CURRENCY,
                ACCOUNT_NOT_FOUND,
                error::REDIS_UNAVAILABLE,
            ]),
            Route::new(
                Method::GET,
                "/wallet/{player_id}/transactions",
                "wallet_history",
                Access::player("player_id"),
                self.clone(),
                |w, req, params| async move { handlers::history(&w, req, params.get("player_id")).await },
            )
            .answers(&[
                INVALID_PLAYER_ID,
                INVALID_CURRENCY,
                INVALID_LIMIT,
                INVALID_BEFORE,
                STORE_UNAVAILABLE,
            ]),
            Route::new(
                Method::GET,
                "/wallet/{player_id}/events",
                "wallet_events",
                Access::player("player_id"),
                self.clone(),
                |w, req, params| async move { events::stream(&w, req, params.get("player_id")).await },
            )
            .with_token_in_query()
            .answers(&[
                INVALID_PLAYER_ID,
                INVALID_LAST_EVENT_ID,
                SSE_STREAMS_FULL,
                error::REDIS_UNAVAILABLE,
            ]),
            Route::new(
                Method::POST,
                "/bonuses",
                "bonus_grant",
                Access::Admin,
                self,
                |w, req, _| async move { handlers::grant_bonus(&w, req).await },
            )
            .answers(error::BODY_ANSWERS)
            .answers(error::SCRIPT_ANSWERS)
            .answers(&[
                INVALID_PLAYER_ID,
                INVALID_CURRENCY,
                INVALID_AMOUNT,
                INVALID_WAGERING_MULTIPLIER,
                INVALID_EXPIRES_IN,
                INVALID_MAX_BET,
                INVALID_CONTRIBUTIONS,
                BONUS_ACTIVE,
                BALANCE_LIMIT_EXCEEDED,
                OUTBOX_FULL,
            ]),
        ]
    }

    fn batch_scripts(&self) -> Vec<&'static BatchScript> {
        vec![&lua::WALLET_CLAIM, &lua::WALLET_APPLY]
    }

    fn sink(self: Arc<Self>) -> Option<Arc<dyn Sink>> {
        Some(sink::sink())
    }

    fn spawn_background(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        // Open event streams watch our own channel, which follows the engine's.
        let forward = self.shutdown_tx.clone();
        let mut forward_rx = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            while !*forward_rx.borrow() {
                if forward_rx.changed().await.is_err() {
                    break;
                }
            }
            let _ = forward.send(true);
        }));
        tasks.push(tokio::spawn(expiry::run(self.ctx.clone(), shutdown.clone())));
        tasks.extend(events::spawn_fanout(&self.ctx, self.hub.clone(), &mut shutdown));
        tasks
    }
}
