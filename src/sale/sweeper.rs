//! The reservation sweeper of a split sale: every `SALE_SWEEP_TICK`, per
//! part of the current and the previous sale, the reservations older than
//! `STAMPEDE_SALE_RESERVATION_TIMEOUT_MS` (a purchase that crashed or got a
//! 503 between its steps) are resolved by `split::resolve`: the item's part
//! voids the code unless it was spent, and the user's part settles the
//! reservation with that answer. Every engine runs it; each step is
//! idempotent, so two engines resolving one reservation agree.

use std::sync::Arc;

use futures_util::future::join_all;
use tokio::sync::watch;

use super::domain::{CheckoutCode, SaleWindow};
use super::limits::{SALE_SWEEP_BATCH, SALE_SWEEP_TICK};
use super::lua::SaleKeys;
use super::{Sale, split};
use crate::redis::due::due_members;
use crate::ticker;

pub async fn run(sale: Arc<Sale>, shutdown: watch::Receiver<bool>) {
    ticker::every(SALE_SWEEP_TICK, shutdown, || {
        let sale = sale.clone();
        async move {
            let now_ms = sale.ctx.clock.now_ms();
            let current = SaleWindow::at(now_ms, sale.settings.period_secs).sale_id;
            // A reservation made just before a sale ended is swept after it.
            for sale_id in [current, current.saturating_sub(1)] {
                for part in 0..sale.settings.split {
                    if let Err(e) = pass(&sale, sale_id, part, now_ms).await {
                        tracing::warn!(error = %e, sale_id, part, "reservation sweep failed; retrying next tick");
                    }
                }
            }
        }
    })
    .await;
}

/// Resolves the due reservations of one part (up to a batch); returns how
/// many it resolved.
async fn pass(sale: &Sale, sale_id: u64, part: u32, now_ms: i64) -> Result<usize, String> {
    let ctx = &*sale.ctx;
    let keys = SaleKeys::of_part(&ctx.keys, sale_id, part);
    let due = due_members(
        &ctx.redis,
        keys.reserving(),
        now_ms - sale.settings.reservation_timeout_ms,
        SALE_SWEEP_BATCH,
    )
    .await
    .map_err(|e| e.to_string())?;
    let codes: Vec<CheckoutCode> = due.iter().filter_map(|m| CheckoutCode::parse(Some(m)).ok()).collect();
    // Concurrent calls ride one batched script call per part.
    let results = join_all(
        codes
            .iter()
            .map(|code| split::resolve(&ctx.executor, &ctx.keys, sale_id, part, code, now_ms)),
    )
    .await;
    let (mut spent, mut voided) = (0, 0);
    for result in results {
        match result {
            Ok(true) => spent += 1,
            Ok(false) => voided += 1,
            Err(e) => return Err(e.to_string()),
        }
    }
    if spent + voided > 0 {
        tracing::info!(sale_id, part, spent, voided, "resolved reservations left behind");
    }
    Ok(spent + voided)
}
