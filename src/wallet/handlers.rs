//! HTTP handlers of the wallet. State changes make exactly one script call
//! each; reads go to Redis (balances) or Postgres (history) directly.

use std::collections::BTreeMap;

use fred::interfaces::HashesInterface;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};
use rand::RngExt;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::domain::{BonusBody, Currency, Field, Invalid, PlayerId, TransactionBody};
use super::limits::{WALLET_HISTORY_LIMIT_DEFAULT, WALLET_HISTORY_LIMIT_MAX};
use super::lua::{self, AccountKeys, BonusSnapshot};
use super::{Wallet, WalletError};
use crate::redis::lua::ScriptError;
use crate::server::error::ErrorBody;
use crate::server::http::{HttpResponse, PageError, Query, json, read_json, rfc3339};

/// The wallet's part of `GET /openapi.json`.
#[derive(OpenApi)]
#[openapi(
    paths(transaction, balance, history, super::events::stream, grant_bonus),
    components(schemas(ErrorBody))
)]
pub struct WalletApi;

#[derive(Serialize, ToSchema)]
#[schema(as = Transaction)]
struct TransactionReply<'a> {
    transaction_id: &'a str,
    reference_id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    amount_minor: i64,
    cash_minor: i64,
    bonus_minor: i64,
    /// The account's bonus after the transaction, if it has one.
    bonus: Option<BonusProgress<'a>>,
}

/// A bonus as a transaction's answer shows it.
#[derive(Serialize, ToSchema)]
struct BonusProgress<'a> {
    id: &'a str,
    /// `active`, or how it ended: `completed`, `expired` or `forfeited`.
    status: &'a str,
    wagered_minor: i64,
    required_minor: i64,
}

impl<'a> From<&'a BonusSnapshot> for BonusProgress<'a> {
    fn from(b: &'a BonusSnapshot) -> Self {
        Self {
            id: &b.id,
            status: &b.status,
            wagered_minor: b.wagered_minor,
            required_minor: b.required_minor,
        }
    }
}

#[utoipa::path(post, path = "/wallet/transactions", tag = "wallet", summary = "Move money, exactly once per reference",
    request_body = TransactionBody,
    responses(
        (status = 200, description = "applied (`Idempotent-Replayed: true` on a repeat)", body = TransactionReply),
    ))]
pub async fn transaction(wallet: &Wallet, req: Request<Incoming>) -> Result<HttpResponse, WalletError> {
    let body: TransactionBody = read_json(req).await?;
    let tx = body.validate()?;
    let ctx = &*wallet.ctx;
    // (reference, type) is unique across players: the reference's shard
    // settles whose it is before the player's shard decides the transaction.
    lua::claim(&ctx.executor, &ctx.keys, &tx).await?;
    let now_ms = ctx.clock.now_ms();
    let answer = match lua::apply(&ctx.executor, &ctx.keys, &tx, now_ms).await {
        Ok(answer) => answer,
        Err(refused) => {
            // A refused attempt gives its claim back, so a guessed reference
            // does not keep the real transaction out. If the release fails the
            // claim stays (the safe side: the reference stays this account's)
            // and the client still gets the true answer, the refusal.
            if refused.applied_nothing()
                && let Err(e) = lua::release(&ctx.executor, &ctx.keys, &tx).await
            {
                tracing::warn!(error = %e, "wallet reference claim not released; it stays the account's");
            }
            return Err(refused);
        }
    };
    let mut response = json(
        StatusCode::OK,
        &TransactionReply {
            transaction_id: &answer.transaction_id,
            reference_id: tx.reference.as_str(),
            kind: tx.kind.as_str(),
            amount_minor: tx.amount.get(),
            cash_minor: answer.cash_minor,
            bonus_minor: answer.bonus_minor,
            bonus: answer.bonus.as_ref().map(BonusProgress::from),
        },
    );
    if answer.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

#[derive(Serialize, ToSchema)]
#[schema(as = Bonus)]
struct BonusReply<'a> {
    id: &'a str,
    player_id: &'a str,
    currency: &'static str,
    /// `active` when granted.
    status: &'static str,
    amount_minor: i64,
    wagering_multiplier: i64,
    required_minor: i64,
    wagered_minor: i64,
    max_bet_minor: Option<i64>,
    contributions: &'a BTreeMap<String, i64>,
    expires_at: String,
    cash_minor: i64,
    bonus_minor: i64,
}

#[utoipa::path(post, path = "/bonuses", tag = "wallet", summary = "Grant a bonus (admin)",
    request_body = BonusBody,
    responses(
        (status = 201, description = "the bonus; required_minor = amount_minor × wagering_multiplier", body = BonusReply),
    ))]
pub async fn grant_bonus(wallet: &Wallet, req: Request<Incoming>) -> Result<HttpResponse, WalletError> {
    let body: BonusBody = read_json(req).await?;
    let grant = body.validate()?;
    let ctx = &*wallet.ctx;
    let now_ms = ctx.clock.now_ms();
    let expires_ms = now_ms + grant.expires_in_secs * 1000;
    let random: [u8; 8] = rand::rng().random();
    let bonus_id = format!("bn_{}", hex::encode(random));
    let granted = lua::grant(&ctx.executor, &ctx.keys, &grant, &bonus_id, now_ms, expires_ms).await?;
    Ok(json(
        StatusCode::CREATED,
        &BonusReply {
            id: &bonus_id,
            player_id: grant.player.as_str(),
            currency: grant.currency.code(),
            status: "active",
            amount_minor: grant.amount.get(),
            wagering_multiplier: grant.multiplier,
            required_minor: grant.required_minor(),
            wagered_minor: 0,
            max_bet_minor: grant.max_bet.map(|m| m.get()),
            contributions: &grant.contributions,
            expires_at: rfc3339(expires_ms),
            cash_minor: granted.cash_minor,
            bonus_minor: granted.bonus_minor,
        },
    ))
}

fn player_param(raw: Option<&str>) -> Result<PlayerId, WalletError> {
    let decoded = raw.map(|r| percent_encoding::percent_decode_str(r).decode_utf8_lossy().into_owned());
    Ok(PlayerId::parse(decoded.as_deref())?)
}

#[derive(Serialize, ToSchema)]
struct ActiveBonus {
    id: String,
    /// `active`.
    status: &'static str,
    amount_minor: i64,
    required_minor: i64,
    wagered_minor: i64,
    remaining_minor: i64,
    /// Whole percent of the requirement wagered (floor).
    progress_percent: i64,
    max_bet_minor: Option<i64>,
    contributions: BTreeMap<String, i64>,
    expires_at: String,
    /// What a withdrawal now would forfeit: the whole bonus balance.
    withdrawal_forfeits_minor: i64,
}

#[derive(Serialize, ToSchema)]
#[schema(as = Balance)]
struct BalanceReply {
    player_id: String,
    currency: &'static str,
    cash_minor: i64,
    bonus_minor: i64,
    total_minor: i64,
    bonus: Option<ActiveBonus>,
}

/// `GET /wallet/{player_id}?currency=`: live from Redis, one HMGET.
#[utoipa::path(get, path = "/wallet/{player_id}", tag = "wallet", summary = "Balances and the active bonus, live",
    params(("player_id" = String, Path, description = "percent-encoded"),
           ("currency" = String, Query, description = "ISO 4217")),
    responses(
        (status = 200, description = "balances, bonus progress, what a withdrawal would forfeit", body = BalanceReply),
    ))]
pub async fn balance(
    wallet: &Wallet,
    req: Request<Incoming>,
    player: Option<&str>,
) -> Result<HttpResponse, WalletError> {
    let player = player_param(player)?;
    let query = Query::parse(req.uri().query());
    let currency = Currency::parse(query.get(&["currency"]))?;
    let ctx = &*wallet.ctx;
    let keys = AccountKeys::new(&ctx.keys, player.as_str(), currency.code());
    let v: Vec<Option<String>> = ctx
        .redis
        .hmget(
            &keys.account,
            vec![
                "cash", "bonus", "b_id", "b_amt", "b_req", "b_wag", "b_max", "b_exp", "b_con",
            ],
        )
        .await
        .map_err(|e| WalletError::Script(ScriptError::Redis(e)))?;
    let num = |i: usize| v.get(i).and_then(|x| x.as_deref()).and_then(|x| x.parse::<i64>().ok());
    let Some(cash) = num(0) else {
        return Err(WalletError::AccountNotFound);
    };
    let bonus_minor = num(1).unwrap_or(0);
    let bonus = v.get(2).and_then(Clone::clone).map(|id| {
        let required = num(4).unwrap_or(0);
        let wagered = num(5).unwrap_or(0);
        let max_bet = num(6).unwrap_or(0);
        ActiveBonus {
            id,
            status: "active",
            amount_minor: num(3).unwrap_or(0),
            required_minor: required,
            wagered_minor: wagered,
            remaining_minor: (required - wagered).max(0),
            progress_percent: if required > 0 { wagered * 100 / required } else { 0 },
            max_bet_minor: (max_bet > 0).then_some(max_bet),
            contributions: parse_contributions(v.get(8).and_then(|x| x.as_deref()).unwrap_or("")),
            expires_at: rfc3339(num(7).unwrap_or(0)),
            withdrawal_forfeits_minor: bonus_minor,
        }
    });
    Ok(json(
        StatusCode::OK,
        &BalanceReply {
            player_id: player.as_str().to_owned(),
            currency: currency.code(),
            cash_minor: cash,
            bonus_minor,
            total_minor: cash + bonus_minor,
            bonus,
        },
    ))
}

/// `,slots=100,table=20,` as the script stores it.
fn parse_contributions(text: &str) -> BTreeMap<String, i64> {
    text.split(',')
        .filter_map(|pair| pair.split_once('='))
        .filter_map(|(game, pct)| pct.parse().ok().map(|pct| (game.to_owned(), pct)))
        .collect()
}

#[derive(Serialize, sqlx::FromRow, ToSchema)]
struct HistoryRow {
    #[serde(skip)]
    seq: i64,
    transaction_id: String,
    #[serde(rename = "type")]
    kind: String,
    reference_id: String,
    amount_minor: i64,
    cash_delta_minor: i64,
    bonus_delta_minor: i64,
    cash_minor: i64,
    bonus_minor: i64,
    bonus_id: Option<String>,
    wagered_delta_minor: i64,
    /// The bet's game, or the bet a win or refund settles.
    detail: Option<String>,
    created_at: String,
}

#[derive(Serialize, ToSchema)]
#[schema(as = History)]
struct HistoryReply {
    player_id: String,
    currency: &'static str,
    transactions: Vec<HistoryRow>,
    /// Pass as `before` for the next (older) page; null on the last page.
    next_before: Option<i64>,
}

/// `GET /wallet/{player_id}/transactions?currency=&limit=&before=`: the
/// ledger from Postgres, newest first. It trails Redis by the flusher's
/// linger plus one batch write (~100 ms normally; longer while
/// Postgres is away).
#[utoipa::path(get, path = "/wallet/{player_id}/transactions", tag = "wallet", summary = "The ledger, newest first, from Postgres",
    params(("player_id" = String, Path, description = "percent-encoded"),
           ("currency" = String, Query, description = "ISO 4217"),
           ("limit" = Option<i64>, Query, description = "page size"),
           ("before" = Option<i64>, Query, description = "`next_before` of the previous page")),
    responses(
        (status = 200, description = "a page of the ledger", body = HistoryReply),
    ))]
pub async fn history(
    wallet: &Wallet,
    req: Request<Incoming>,
    player: Option<&str>,
) -> Result<HttpResponse, WalletError> {
    let player = player_param(player)?;
    let query = Query::parse(req.uri().query());
    let currency = Currency::parse(query.get(&["currency"]))?;
    let page = query
        .page(WALLET_HISTORY_LIMIT_DEFAULT, WALLET_HISTORY_LIMIT_MAX)
        .map_err(|e| match e {
            PageError::Limit => Invalid(Field::Limit, "must be a whole number from 1 to 500"),
            PageError::Before => Invalid(Field::Before, "must be a positive whole number (a next_before)"),
        })?;
    let rows: Vec<HistoryRow> = sqlx::query_as(
        "SELECT seq, transaction_id, type AS kind, reference_id, amount_minor, cash_delta_minor,
                bonus_delta_minor, cash_after_minor AS cash_minor, bonus_after_minor AS bonus_minor,
                bonus_id, wagered_delta_minor, detail,
                to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS created_at
         FROM wallet_entries
         WHERE player_id = $1 AND currency = $2 AND ($3::bigint IS NULL OR seq < $3)
         ORDER BY seq DESC
         LIMIT $4",
    )
    .bind(player.as_str())
    .bind(currency.code())
    .bind(page.before)
    .bind(page.limit)
    .fetch_all(&wallet.ctx.postgres)
    .await?;
    let next_before = page.next_before(rows.len(), rows.last().map(|r| r.seq));
    Ok(json(
        StatusCode::OK,
        &HistoryReply {
            player_id: player.as_str().to_owned(),
            currency: currency.code(),
            transactions: rows,
            next_before,
        },
    ))
}
