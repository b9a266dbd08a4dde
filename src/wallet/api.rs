//! The wallet's part of `GET /openapi.json`: every route, its parameters,
//! bodies, answers and error codes.

#![allow(dead_code)] // the items below describe the API; only their derives are used

use std::collections::BTreeMap;

use utoipa::{OpenApi, ToSchema};

use crate::server::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    paths(transaction, balance, history, events, grant_bonus),
    components(schemas(
        TransactionBody,
        Transaction,
        Bonus,
        ActiveBonus,
        Balance,
        History,
        HistoryRow,
        BonusBody,
        ErrorBody
    ))
)]
pub struct WalletApi;

/// `POST /wallet/transactions`.
#[derive(ToSchema)]
struct TransactionBody {
    player_id: String,
    /// ISO 4217 with a minor unit.
    currency: String,
    /// `deposit`, `withdrawal`, `bet`, `win` or `refund`.
    #[schema(rename = "type")]
    kind: String,
    /// Integer minor units, > 0.
    amount_minor: i64,
    /// With `type`, unique per player: a repeat replays the first answer.
    reference_id: String,
    /// A bet's game category (its wagering contribution).
    game: Option<String>,
    /// The bet a win or refund settles.
    bet_reference_id: Option<String>,
}

#[derive(ToSchema)]
struct Bonus {
    id: String,
    player_id: String,
    currency: String,
    /// `active`, `completed`, `expired` or `forfeited`.
    status: String,
    amount_minor: i64,
    wagering_multiplier: i64,
    required_minor: i64,
    wagered_minor: i64,
    max_bet_minor: Option<i64>,
    contributions: BTreeMap<String, i64>,
    expires_at: String,
    cash_minor: i64,
    bonus_minor: i64,
}

#[derive(ToSchema)]
struct Transaction {
    transaction_id: String,
    reference_id: String,
    #[schema(rename = "type")]
    kind: String,
    amount_minor: i64,
    cash_minor: i64,
    bonus_minor: i64,
    /// The account's bonus after the transaction, if it has one.
    #[schema(value_type = Option<Object>)]
    bonus: Option<Bonus>,
}

#[derive(ToSchema)]
struct ActiveBonus {
    id: String,
    status: String,
    amount_minor: i64,
    required_minor: i64,
    wagered_minor: i64,
    remaining_minor: i64,
    progress_percent: i64,
    max_bet_minor: Option<i64>,
    contributions: BTreeMap<String, i64>,
    expires_at: String,
    withdrawal_forfeits_minor: i64,
}

#[derive(ToSchema)]
struct Balance {
    player_id: String,
    currency: String,
    cash_minor: i64,
    bonus_minor: i64,
    total_minor: i64,
    bonus: Option<ActiveBonus>,
}

#[derive(ToSchema)]
struct HistoryRow {
    transaction_id: String,
    #[schema(rename = "type")]
    kind: String,
    reference_id: String,
    amount_minor: i64,
    cash_delta_minor: i64,
    bonus_delta_minor: i64,
    cash_minor: i64,
    bonus_minor: i64,
    bonus_id: Option<String>,
    wagered_delta_minor: i64,
    detail: Option<String>,
    created_at: String,
}

#[derive(ToSchema)]
struct History {
    player_id: String,
    currency: String,
    transactions: Vec<HistoryRow>,
    next_before: Option<i64>,
}

/// `POST /bonuses` (admin).
#[derive(ToSchema)]
struct BonusBody {
    player_id: String,
    currency: String,
    amount_minor: i64,
    /// 1-100, default 10.
    wagering_multiplier: Option<i64>,
    expires_in_secs: i64,
    max_bet_minor: Option<i64>,
    /// Percent per game category; a game not listed counts 0%.
    contributions: Option<BTreeMap<String, i64>>,
}

#[utoipa::path(post, path = "/wallet/transactions", tag = "wallet", summary = "Move money, exactly once per reference",
    request_body = TransactionBody,
    responses(
        (status = 200, description = "applied (`Idempotent-Replayed: true` on a repeat)", body = Transaction),
        (status = 400, description = "`INVALID_PLAYER_ID`, `INVALID_CURRENCY`, `INVALID_TYPE`, `INVALID_AMOUNT`, `INVALID_REFERENCE_ID`, `INVALID_GAME`, `INVALID_BET_REFERENCE_ID`, `INVALID_JSON`", body = ErrorBody),
        (status = 404, description = "`BET_NOT_FOUND`, `ACCOUNT_NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`INSUFFICIENT_FUNDS`, `BET_REFUNDED`", body = ErrorBody),
        (status = 422, description = "`MAX_BET_EXCEEDED`, `REFERENCE_REUSED`, `REFUND_AMOUNT_MISMATCH`, `BALANCE_LIMIT_EXCEEDED`", body = ErrorBody),
        (status = 503, description = "`OUTBOX_FULL`, `REDIS_UNAVAILABLE`", body = ErrorBody),
    ))]
fn transaction() {}

#[utoipa::path(get, path = "/wallet/{player_id}", tag = "wallet", summary = "Balances and the active bonus, live",
    params(("player_id" = String, Path, description = "percent-encoded"),
           ("currency" = String, Query, description = "ISO 4217")),
    responses(
        (status = 200, description = "balances, bonus progress, what a withdrawal would forfeit", body = Balance),
        (status = 400, description = "`INVALID_PLAYER_ID`, `INVALID_CURRENCY`", body = ErrorBody),
        (status = 404, description = "`ACCOUNT_NOT_FOUND`", body = ErrorBody),
        (status = 503, description = "`REDIS_UNAVAILABLE`", body = ErrorBody),
    ))]
fn balance() {}

#[utoipa::path(get, path = "/wallet/{player_id}/transactions", tag = "wallet", summary = "The ledger, newest first, from Postgres",
    params(("player_id" = String, Path, description = "percent-encoded"),
           ("currency" = String, Query, description = "ISO 4217"),
           ("limit" = Option<i64>, Query, description = "page size"),
           ("before" = Option<i64>, Query, description = "`next_before` of the previous page")),
    responses(
        (status = 200, description = "a page of the ledger", body = History),
        (status = 400, description = "`INVALID_PLAYER_ID`, `INVALID_CURRENCY`, `INVALID_LIMIT`, `INVALID_BEFORE`", body = ErrorBody),
        (status = 503, description = "`STORE_UNAVAILABLE`", body = ErrorBody),
    ))]
fn history() {}

#[utoipa::path(get, path = "/wallet/{player_id}/events", tag = "wallet", summary = "Server-Sent Events of the player's balances and bonus progress",
    params(("player_id" = String, Path, description = "percent-encoded"),
           ("Last-Event-ID" = Option<String>, Header, description = "resume after this event: `<ms>-<seq>`, each part at most 2^64 - 1")),
    responses(
        (status = 200, description = "an event stream; each event has an `id:`", content_type = "text/event-stream", body = crate::server::apidoc::SseEvent),
        (status = 400, description = "`INVALID_PLAYER_ID`, `INVALID_LAST_EVENT_ID`", body = ErrorBody),
        (status = 503, description = "`SSE_STREAMS_FULL`, `REDIS_UNAVAILABLE`", body = ErrorBody),
    ))]
fn events() {}

#[utoipa::path(post, path = "/bonuses", tag = "wallet", summary = "Grant a bonus (admin)",
    security(("admin" = [])),
    request_body = BonusBody,
    responses(
        (status = 201, description = "the bonus; required_minor = amount_minor × wagering_multiplier", body = Bonus),
        (status = 400, description = "`INVALID_PLAYER_ID`, `INVALID_CURRENCY`, `INVALID_AMOUNT`, `INVALID_WAGERING_MULTIPLIER`, `INVALID_EXPIRES_IN`, `INVALID_MAX_BET`, `INVALID_CONTRIBUTIONS`, `INVALID_JSON`", body = ErrorBody),
        (status = 401, description = "`UNAUTHORIZED`", body = ErrorBody),
        (status = 403, description = "`ADMIN_DISABLED`", body = ErrorBody),
        (status = 409, description = "`BONUS_ACTIVE`", body = ErrorBody),
        (status = 422, description = "`BALANCE_LIMIT_EXCEEDED`", body = ErrorBody),
        (status = 503, description = "`OUTBOX_FULL`, `REDIS_UNAVAILABLE`", body = ErrorBody),
    ))]
fn grant_bonus() {}
