//! Rust binding of `lua/wallet_apply.lua`: typed operations in, typed
//! outcomes out. The script's reply strings are decoded here and nowhere
//! else.

use std::sync::LazyLock;

use fred::types::Value;

use super::WalletError;
use super::domain::{BonusGrant, Currency, PlayerId, Transaction};
use super::limits::{
    WALLET_BALANCE_MINOR_MAX, WALLET_EVENTS_PER_PLAYER_MAX, WALLET_EVENTS_RETENTION, WALLET_NOTIFY_STREAM_MAX,
};
use crate::redis::executor::{BatchScript, Executor, batch_script};
use crate::redis::keyspace::{Keyspace, Shard};
use crate::redis::lua::{LuaScript, reply_i64, reply_str};

pub static WALLET_APPLY: LazyLock<BatchScript> = LazyLock::new(|| batch_script!("wallet_apply", 6, 15));

/// Claims a transaction's `(reference, type)` for its account, or gives a
/// refused attempt's claim back, on the reference's own shard: see
/// `lua/wallet_claim.lua`. It appends no event; the shared epilogue then
/// writes nothing.
pub static WALLET_CLAIM: LazyLock<BatchScript> = LazyLock::new(|| batch_script!("wallet_claim", 1, 3));

/// The keys of one account; all in the player's shard, so one hash slot for
/// every currency of the player.
pub struct AccountKeys {
    pub shard: Shard,
    pub account: String,
    pub references: String,
    pub expiry: String,
    pub events: String,
    pub notify: String,
    pub seq: String,
}

impl AccountKeys {
    pub fn new(keys: &Keyspace, player: &str, currency: &str) -> Self {
        let shard = keys.shard_of_text(player);
        Self {
            shard,
            account: keys.key(shard, format_args!("wallet:acct:{currency}:{player}")),
            references: keys.key(shard, format_args!("wallet:refs:{player}")),
            expiry: expiry_key(keys, shard),
            events: keys.key(shard, format_args!("wallet:events:{player}")),
            notify: notify_key(keys, shard),
            seq: keys.key(shard, format_args!("wallet:seq")),
        }
    }

    fn into_vec(self) -> Vec<String> {
        vec![
            self.account,
            self.references,
            self.expiry,
            self.events,
            self.notify,
            self.seq,
        ]
    }
}

/// The shard's bonus expiry zset: member `<currency>:<player>`, score the
/// expiry in ms.
pub fn expiry_key(keys: &Keyspace, shard: Shard) -> String {
    keys.key(shard, format_args!("wallet:bonus_expiry"))
}

/// The shard's notify stream: each entry lists the players a call changed.
pub fn notify_key(keys: &Keyspace, shard: Shard) -> String {
    keys.key(shard, format_args!("wallet:notify"))
}

/// A bonus as a transaction's answer shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BonusSnapshot {
    pub id: String,
    pub status: String,
    pub wagered_minor: i64,
    pub required_minor: i64,
}

/// What a transaction answered (the first time, and on every replay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub transaction_id: String,
    pub cash_minor: i64,
    pub bonus_minor: i64,
    pub bonus: Option<BonusSnapshot>,
    /// True when this is the stored answer of an earlier identical request.
    pub replayed: bool,
}

/// The field a `REFERENCE_REUSED` reply of either script names.
fn reused_field(field: &str) -> &'static str {
    match field {
        "player_id" => "player_id",
        "currency" => "currency",
        "amount_minor" => "amount_minor",
        "game" => "game",
        _ => "bet_reference_id",
    }
}

/// Decodes a refusal, counting every outcome.
fn refusal(script: &LuaScript, reply: &[Value]) -> Result<Option<String>, WalletError> {
    let text = reply_str(script, reply, 0)?;
    let error = match text.as_str() {
        "OK" | "REPLAY" | "NOOP" => {
            super::metrics::wallet_outcome(match text.as_str() {
                "OK" => "OK",
                "REPLAY" => "REPLAY",
                _ => "NOOP",
            });
            return Ok(Some(text));
        }
        "INSUFFICIENT_FUNDS" => WalletError::InsufficientFunds,
        "BET_NOT_FOUND" => WalletError::BetNotFound,
        "BET_REFUNDED" => WalletError::BetRefunded,
        "BET_SETTLED" => WalletError::BetSettled,
        "REFUND_AMOUNT_MISMATCH" => WalletError::RefundAmountMismatch,
        "MAX_BET_EXCEEDED" => WalletError::MaxBetExceeded,
        "BALANCE_LIMIT_EXCEEDED" => WalletError::BalanceLimitExceeded,
        "BONUS_ACTIVE" => WalletError::BonusActive,
        "OUTBOX_FULL" => WalletError::OutboxFull,
        "REFERENCE_REUSED" => WalletError::ReferenceReused(reused_field(&reply_str(script, reply, 1)?)),
        other => {
            return Err(WalletError::Script(
                script.unexpected(format!("unknown outcome {other:?}")),
            ));
        }
    };
    super::metrics::wallet_outcome(error.outcome_label());
    Err(error)
}

#[allow(clippy::too_many_arguments)]
fn args(
    op: &str,
    now_ms: i64,
    player: &PlayerId,
    currency: Currency,
    reference: &str,
    amount: i64,
    detail: &str,
    max_bet: i64,
    expires_ms: i64,
    required: i64,
    contributions: &str,
) -> Vec<Value> {
    vec![
        op.into(),
        now_ms.into(),
        player.as_str().into(),
        currency.code().into(),
        reference.into(),
        amount.into(),
        detail.into(),
        max_bet.into(),
        expires_ms.into(),
        required.into(),
        contributions.into(),
        (WALLET_EVENTS_PER_PLAYER_MAX as i64).into(),
        (WALLET_EVENTS_RETENTION.as_millis() as i64).into(),
        WALLET_BALANCE_MINOR_MAX.into(),
        (WALLET_NOTIFY_STREAM_MAX as i64).into(),
    ]
}

/// The claim call of `tx`'s reference: its shard, key and arguments.
fn claim_call(keys: &Keyspace, tx: &Transaction, op: &str) -> (Shard, Vec<String>, Vec<Value>) {
    let reference = tx.reference.as_str();
    let shard = keys.shard_of_text(reference);
    let key = keys.key(shard, format_args!("wallet:claim:{}:{reference}", tx.kind.as_str()));
    let args = vec![op.into(), tx.player.as_str().into(), tx.currency.code().into()];
    (shard, vec![key], args)
}

/// Makes `(tx.reference, tx.kind)` belong to the transaction's account, or
/// refuses because another account holds it. Passing says nothing about the
/// transaction itself: [`apply`] decides that, on the player's shard; if it
/// refuses, [`release`] gives this attempt's claim back.
pub async fn claim(executor: &Executor, keys: &Keyspace, tx: &Transaction) -> Result<(), WalletError> {
    let (shard, key, args) = claim_call(keys, tx, "claim");
    let script = &*WALLET_CLAIM;
    let reply = executor.call(script, shard, key, args).await?;
    match reply_str(&script.lua, &reply, 0)?.as_str() {
        "OK" => Ok(()),
        "REFERENCE_REUSED" => {
            let error = WalletError::ReferenceReused(reused_field(&reply_str(&script.lua, &reply, 1)?));
            super::metrics::wallet_outcome(error.outcome_label());
            Err(error)
        }
        other => Err(WalletError::Script(
            script.lua.unexpected(format!("unknown claim outcome {other:?}")),
        )),
    }
}

/// Gives back the claim [`claim`] took for `tx`, once [`apply`] refused it
/// in a way that proves it moved no money (see [`WalletError::applied_nothing`]);
/// the reference is free again when no other attempt of the account holds
/// it. Never called when the outcome is unknown: that claim stays.
pub async fn release(executor: &Executor, keys: &Keyspace, tx: &Transaction) -> Result<(), WalletError> {
    let (shard, key, args) = claim_call(keys, tx, "release");
    let script = &*WALLET_CLAIM;
    let reply = executor.call(script, shard, key, args).await?;
    match reply_str(&script.lua, &reply, 0)?.as_str() {
        "OK" => Ok(()),
        other => Err(WalletError::Script(
            script.lua.unexpected(format!("unknown release outcome {other:?}")),
        )),
    }
}

/// Applies one client transaction (or replays its first answer).
pub async fn apply(executor: &Executor, keys: &Keyspace, tx: &Transaction, now_ms: i64) -> Result<Answer, WalletError> {
    let account = AccountKeys::new(keys, tx.player.as_str(), tx.currency.code());
    let shard = account.shard;
    let args = args(
        tx.kind.as_str(),
        now_ms,
        &tx.player,
        tx.currency,
        tx.reference.as_str(),
        tx.amount.get(),
        tx.detail.as_str(),
        0,
        0,
        0,
        "",
    );
    let script = &*WALLET_APPLY;
    let reply = executor.call(script, shard, account.into_vec(), args).await?;
    let outcome = refusal(&script.lua, &reply)?.unwrap_or_default();
    let lua = &script.lua;
    let bonus_id = reply_str(lua, &reply, 4)?;
    Ok(Answer {
        transaction_id: reply_str(lua, &reply, 1)?,
        cash_minor: reply_i64(lua, &reply, 2)?,
        bonus_minor: reply_i64(lua, &reply, 3)?,
        bonus: if bonus_id.is_empty() {
            None
        } else {
            Some(BonusSnapshot {
                id: bonus_id,
                status: reply_str(lua, &reply, 5)?,
                wagered_minor: reply_i64(lua, &reply, 6)?,
                required_minor: reply_i64(lua, &reply, 7)?,
            })
        },
        replayed: outcome == "REPLAY",
    })
}

/// A granted bonus's balances after the grant.
pub struct Granted {
    pub cash_minor: i64,
    pub bonus_minor: i64,
}

/// Grants a bonus under `bonus_id`, expiring at `expires_ms`.
pub async fn grant(
    executor: &Executor,
    keys: &Keyspace,
    grant: &BonusGrant,
    bonus_id: &str,
    now_ms: i64,
    expires_ms: i64,
) -> Result<Granted, WalletError> {
    let account = AccountKeys::new(keys, grant.player.as_str(), grant.currency.code());
    let shard = account.shard;
    let args = args(
        "grant",
        now_ms,
        &grant.player,
        grant.currency,
        bonus_id,
        grant.amount.get(),
        "",
        grant.max_bet.map_or(0, |m| m.get()),
        expires_ms,
        grant.required_minor(),
        &grant.contributions_text(),
    );
    let script = &*WALLET_APPLY;
    let reply = executor.call(script, shard, account.into_vec(), args).await?;
    refusal(&script.lua, &reply)?;
    Ok(Granted {
        cash_minor: reply_i64(&script.lua, &reply, 2)?,
        bonus_minor: reply_i64(&script.lua, &reply, 3)?,
    })
}

/// Expires the account's bonus if it is due; true if it did.
pub async fn expire(
    executor: &Executor,
    keys: &Keyspace,
    player: &PlayerId,
    currency: Currency,
    now_ms: i64,
) -> Result<bool, WalletError> {
    let account = AccountKeys::new(keys, player.as_str(), currency.code());
    let shard = account.shard;
    let args = args("expire", now_ms, player, currency, "", 0, "", 0, 0, 0, "");
    let script = &*WALLET_APPLY;
    let reply = executor.call(script, shard, account.into_vec(), args).await?;
    Ok(refusal(&script.lua, &reply)?.as_deref() == Some("OK"))
}
