//! The transfer sweeper of split products: every `STOCK_SWEEP_TICK`, per
//! shard, the transfers in transit for longer than
//! `STAMPEDE_STOCK_TRANSIT_TIMEOUT_MS` (an order's engine died, or a call
//! failed, between a transfer's steps) are finished by `split::finish`: the
//! taker takes the stock (once: it keeps the transfer's id), then the
//! giver's record is dropped. Every engine runs it, whatever its own
//! `STAMPEDE_STOCK_SPLIT` (products keep the split they were created with);
//! each step is idempotent, so two engines finishing one transfer, or a
//! sweeper and the order that made it, agree. Up to
//! `STAMPEDE_STOCK_SWEEP_BATCH` transfers per shard per tick.

use std::sync::Arc;

use futures_util::future::join_all;
use tokio::sync::watch;

use super::limits::STOCK_SWEEP_TICK;
use super::split::{self, InTransit};
use super::{Orders, OrdersError, lua};
use crate::redis::due::due_members;
use crate::redis::keyspace::Shard;
use crate::redis::lua::ScriptError;
use crate::ticker;

pub async fn run(feature: Arc<Orders>, shutdown: watch::Receiver<bool>) {
    ticker::every(STOCK_SWEEP_TICK, shutdown, || {
        let feature = feature.clone();
        async move {
            let now_ms = feature.ctx.clock.now_ms();
            for shard in feature.ctx.keys.shards() {
                if let Err(e) = pass(&feature, shard, now_ms).await {
                    tracing::warn!(error = %e, shard = shard.index(), "transfer sweep failed; retrying next tick");
                }
            }
        }
    })
    .await;
}

/// Finishes the due transfers given on `shard` (up to a batch); returns how
/// many it finished.
pub async fn pass(feature: &Orders, shard: Shard, now_ms: i64) -> Result<usize, OrdersError> {
    let ctx = &*feature.ctx;
    let due = due_members(
        &ctx.redis,
        lua::transits_key(&ctx.keys, shard),
        now_ms - feature.settings.transit_timeout_ms,
        feature.settings.sweep_batch,
    )
    .await
    .map_err(|e| OrdersError::Script(ScriptError::Redis(e)))?;
    let transfers: Vec<InTransit> = due.iter().filter_map(|m| InTransit::parse(m)).collect();
    if transfers.len() < due.len() {
        tracing::warn!(
            shard = shard.index(),
            unreadable = due.len() - transfers.len(),
            "transit records this engine did not write; left for an operator"
        );
    }
    // Concurrent calls ride one batched script call per shard.
    let results = join_all(transfers.iter().map(|t| split::finish(feature, shard, t, now_ms))).await;
    let mut finished = 0;
    for result in results {
        if result? {
            finished += 1;
        }
    }
    if finished > 0 {
        tracing::info!(
            shard = shard.index(),
            finished,
            "finished transfers a crash left in transit"
        );
    }
    Ok(finished)
}
