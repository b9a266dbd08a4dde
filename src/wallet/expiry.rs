//! Bonus expiry: every `WALLET_EXPIRY_TICK`, per shard, the accounts whose
//! bonus is due (read from the shard's expiry zset) are expired by
//! `wallet_apply.lua`, which checks again atomically, forfeits the bonus
//! balance and writes the ledger entry. Any transaction on the account
//! expires a due bonus too, so the tick only bounds how long an idle
//! account shows a bonus past its expiry.

use std::sync::Arc;

use futures_util::future::join_all;
use tokio::sync::watch;

use super::domain::{Currency, PlayerId};
use super::limits::{WALLET_EXPIRY_BATCH, WALLET_EXPIRY_TICK};
use super::lua::{self, expiry_key};
use super::metrics;
use crate::context::Context;
use crate::redis::due::due_members;
use crate::redis::keyspace::Shard;
use crate::ticker;

pub async fn run(ctx: Arc<Context>, shutdown: watch::Receiver<bool>) {
    ticker::every(WALLET_EXPIRY_TICK, shutdown, || {
        let ctx = ctx.clone();
        async move {
            for shard in ctx.keys.shards() {
                match pass(&ctx, shard).await {
                    Ok(expired) if expired > 0 => metrics::wallet_bonus_expired(expired),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, shard = shard.index(), "bonus expiry pass failed"),
                }
            }
        }
    })
    .await;
}

/// Expires the due bonuses of one shard (up to a batch); returns how many.
async fn pass(ctx: &Context, shard: Shard) -> Result<u64, String> {
    let now_ms = ctx.clock.now_ms();
    let due = due_members(&ctx.redis, expiry_key(&ctx.keys, shard), now_ms, WALLET_EXPIRY_BATCH)
        .await
        .map_err(|e| e.to_string())?;
    let accounts: Vec<(PlayerId, Currency)> = due
        .iter()
        .filter_map(|m| {
            // "<currency>:<player>", as the script writes it.
            let (currency, player) = m.split_once(':')?;
            Some((
                PlayerId::parse(Some(player)).ok()?,
                Currency::parse(Some(currency)).ok()?,
            ))
        })
        .collect();
    // Concurrent calls ride one batched script call.
    let results = join_all(
        accounts
            .iter()
            .map(|(player, currency)| lua::expire(&ctx.executor, &ctx.keys, player, *currency, now_ms)),
    )
    .await;
    let mut expired = 0;
    for result in results {
        match result {
            Ok(true) => expired += 1,
            Ok(false) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(expired)
}
