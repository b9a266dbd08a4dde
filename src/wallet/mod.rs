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
use crate::server::auth::AdminGuard;
use crate::server::error::{ApiError, ErrorCode};
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
    fn outcome_label(&self) -> &'static str {
        match self {
            WalletError::Store(_) | WalletError::Request(_) | WalletError::Script(_) | WalletError::Invalid(_) => {
                "UNKNOWN"
            }
            other => other.error_code().code,
        }
    }
}

impl ApiError for WalletError {
    fn error_code(&self) -> ErrorCode {
        use StatusCode as S;
        match self {
            WalletError::Invalid(Invalid(field, _)) => match field {
                Field::PlayerId => ErrorCode::new(S::BAD_REQUEST, "INVALID_PLAYER_ID"),
                Field::Currency => ErrorCode::new(S::BAD_REQUEST, "INVALID_CURRENCY"),
                Field::Type => ErrorCode::new(S::BAD_REQUEST, "INVALID_TYPE"),
                Field::AmountMinor => ErrorCode::new(S::BAD_REQUEST, "INVALID_AMOUNT"),
                Field::ReferenceId => ErrorCode::new(S::BAD_REQUEST, "INVALID_REFERENCE_ID"),
                Field::Game => ErrorCode::new(S::BAD_REQUEST, "INVALID_GAME"),
                Field::BetReferenceId => ErrorCode::new(S::BAD_REQUEST, "INVALID_BET_REFERENCE_ID"),
                Field::WageringMultiplier => ErrorCode::new(S::BAD_REQUEST, "INVALID_WAGERING_MULTIPLIER"),
                Field::ExpiresInSecs => ErrorCode::new(S::BAD_REQUEST, "INVALID_EXPIRES_IN"),
                Field::MaxBetMinor => ErrorCode::new(S::BAD_REQUEST, "INVALID_MAX_BET"),
                Field::Contributions => ErrorCode::new(S::BAD_REQUEST, "INVALID_CONTRIBUTIONS"),
                Field::Limit => ErrorCode::new(S::BAD_REQUEST, "INVALID_LIMIT"),
                Field::Before => ErrorCode::new(S::BAD_REQUEST, "INVALID_BEFORE"),
                Field::LastEventId => ErrorCode::new(S::BAD_REQUEST, "INVALID_LAST_EVENT_ID"),
            },
            WalletError::InsufficientFunds => ErrorCode::new(S::CONFLICT, "INSUFFICIENT_FUNDS"),
            WalletError::BetNotFound => ErrorCode::new(S::NOT_FOUND, "BET_NOT_FOUND"),
            WalletError::BetRefunded => ErrorCode::new(S::CONFLICT, "BET_REFUNDED"),
            WalletError::RefundAmountMismatch => ErrorCode::new(S::UNPROCESSABLE_ENTITY, "REFUND_AMOUNT_MISMATCH"),
            WalletError::MaxBetExceeded => ErrorCode::new(S::UNPROCESSABLE_ENTITY, "MAX_BET_EXCEEDED"),
            WalletError::BalanceLimitExceeded => ErrorCode::new(S::UNPROCESSABLE_ENTITY, "BALANCE_LIMIT_EXCEEDED"),
            WalletError::ReferenceReused(_) => ErrorCode::new(S::UNPROCESSABLE_ENTITY, "REFERENCE_REUSED"),
            WalletError::BonusActive => ErrorCode::new(S::CONFLICT, "BONUS_ACTIVE"),
            WalletError::AccountNotFound => ErrorCode::new(S::NOT_FOUND, "ACCOUNT_NOT_FOUND"),
            WalletError::StreamsFull => ErrorCode::new(S::SERVICE_UNAVAILABLE, "SSE_STREAMS_FULL"),
            WalletError::OutboxFull => ErrorCode::new(S::SERVICE_UNAVAILABLE, "OUTBOX_FULL"),
            WalletError::Store(_) => ErrorCode::new(S::SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE"),
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
    admin: AdminGuard,
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
            admin: AdminGuard::new(ctx.config.admin_token.as_ref()),
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
                self.clone(),
                |w, req, _| async move { handlers::transaction(&w, req).await },
            ),
            Route::new(
                Method::GET,
                "/wallet/{player_id}",
                "wallet_balance",
                self.clone(),
                |w, req, params| async move { handlers::balance(&w, req, params.get("player_id")).await },
            ),
            Route::new(
                Method::GET,
                "/wallet/{player_id}/transactions",
                "wallet_history",
                self.clone(),
                |w, req, params| async move { handlers::history(&w, req, params.get("player_id")).await },
            ),
            Route::new(
                Method::GET,
                "/wallet/{player_id}/events",
                "wallet_events",
                self.clone(),
                |w, req, params| async move { events::stream(&w, req, params.get("player_id")).await },
            ),
            Route::new(Method::POST, "/bonuses", "bonus_grant", self, |w, req, _| async move {
                handlers::grant_bonus(&w, req).await
            }),
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
