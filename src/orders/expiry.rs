//! The hold expiry task. Every engine runs one: each pass reads, per shard,
//! the holds due at `now` from the shard's zset (a read), then expires each
//! through `order_update.lua` (action `expire`), which checks the hold is
//! still reserved and due and returns its stock in the same atomic step.
//! Two engines reading the same due hold both call the script; the second
//! finds it `expired` and changes nothing, so stock never returns twice.

use std::sync::Arc;

use futures_util::future::join_all;
use tokio::sync::watch;

use super::Orders;
use super::domain::{OrderId, ProductId};
use super::limits::{HOLD_EXPIRY_INTERVAL, HOLDS_EXPIRED_PER_PASS_MAX};
use super::lua::{self, Action, UpdateRequest};
use super::metrics;
use crate::redis::due::due_members;
use crate::redis::keyspace::Shard;

pub async fn run(feature: Arc<Orders>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(HOLD_EXPIRY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*shutdown.borrow() {
        tokio::select! {
            _ = tick.tick() => {
                for shard in feature.ctx.keys.shards() {
                    if let Err(e) = expire_due(&feature, shard).await {
                        tracing::warn!(error = %e, shard = shard.index(), "hold expiry pass failed; retrying next tick");
                    }
                }
            }
            _ = shutdown.changed() => {}
        }
    }
}

/// Expires the holds of `shard` due now, page by page. Returns how many this
/// engine expired.
pub async fn expire_due(feature: &Orders, shard: Shard) -> Result<u64, super::OrdersError> {
    let state = &*feature.ctx;
    let key = lua::holds_key(&state.keys, shard);
    let mut expired = 0;
    loop {
        let now_ms = state.clock.now_ms();
        let due = due_members(&state.redis, key.clone(), now_ms, HOLDS_EXPIRED_PER_PASS_MAX)
            .await
            .map_err(|e| super::OrdersError::Script(crate::redis::lua::ScriptError::Redis(e)))?;
        let page = due.len();
        let members: Vec<(ProductId, OrderId)> = due.iter().filter_map(|m| parse_member(m)).collect();
        // Members this engine did not write; left for an operator, counted.
        let mut failed = (page - members.len()) as u64;
        // All at once: the executor batches them into few script calls.
        let results = join_all(members.into_iter().map(|(product, order)| async move {
            lua::update(
                &state.executor,
                &state.keys,
                UpdateRequest {
                    order: &order,
                    product,
                    action: Action::Expire,
                    key: None,
                    now_ms,
                    idempotency_ttl_ms: feature.settings.idempotency_ttl_ms,
                },
            )
            .await
        }))
        .await;
        let (mut settled, mut not_due) = (0, 0);
        for result in results {
            match result.map(|d| d.outcome) {
                Ok(outcome) if outcome == "EXPIRED" => expired += 1,
                Ok(outcome) if outcome == "NOT_DUE" => not_due += 1,
                Ok(_) => settled += 1,
                Err(_) => failed += 1,
            }
        }
        metrics::holds_expired("settled", settled);
        if failed > 0 {
            tracing::warn!(
                failed,
                shard = shard.index(),
                "some holds could not be expired; retrying next tick"
            );
        }
        // A full page may hide more due holds: read again, unless nothing
        // moved (all failed or not due), which the next tick retries.
        if page < HOLDS_EXPIRED_PER_PASS_MAX || failed + not_due == page as u64 {
            break;
        }
    }
    metrics::holds_expired("expired", expired);
    Ok(expired)
}

/// `<product_id>:<order_id>`, as order_create.lua writes it.
fn parse_member(member: &str) -> Option<(ProductId, OrderId)> {
    let (product, order) = member.split_once(':')?;
    let product = ProductId::parse(Some(product)).ok()?;
    let order = OrderId::parse(Some(order)).ok()?;
    Some((product, order))
}
