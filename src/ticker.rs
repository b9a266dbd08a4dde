//! The loop of a periodic background pass (a sweeper, an expiry task):
//! one pass every tick until shutdown, so each such task is only its pass.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

/// Runs `pass` every `period` until `shutdown` turns true; the first tick
/// is at once. A tick missed while a pass ran long is skipped rather than
/// made up in a burst: each pass reads what is due at its own time, so one
/// straight after another would find next to nothing. Shutdown is seen
/// between passes; a pass under way finishes first.
/// `pass` makes each pass's future; it owns what it uses (a clone of the
/// task's `Arc`), since a future borrowing from the closure is not known to
/// be `Send` for `tokio::spawn`.
pub async fn every<F, Pass>(period: Duration, mut shutdown: watch::Receiver<bool>, mut pass: Pass)
where
    Pass: FnMut() -> F,
    F: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        pass().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn passes_run_on_each_tick_until_shutdown() {
        let (stop, shutdown) = watch::channel(false);
        let passes = Arc::new(AtomicUsize::new(0));
        let counted = passes.clone();
        let task = tokio::spawn(every(Duration::from_millis(5), shutdown, move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        }));
        tokio::time::timeout(Duration::from_secs(5), async {
            while passes.load(Ordering::SeqCst) < 3 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("three passes within 5 s");
        stop.send(true).expect("the loop still listens");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the loop returns at shutdown")
            .expect("the loop does not panic");
    }
}
