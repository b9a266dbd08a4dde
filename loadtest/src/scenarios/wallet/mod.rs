//! The `wallet` scenario: players bet, win and refund (a share of requests
//! sent twice with the same reference) while SSE clients stay connected,
//! one per player of the first `--sse-clients`. Reports operations/s and
//! the delivery time of the events (from the 200 of a transaction to its
//! `balance` event on the player's stream); checks the answers, the events,
//! each player's balances against its last answer and the ledger, and the
//! ledger against the transactions the driver was told of.
//!
//! `--server baseline` instead drives the baseline server's `POST /checkout`
//! over the same number of connections for `--secs` (`baseline.rs`).

pub mod args;
mod baseline;
mod checks;
mod load;
mod report;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::cost::{CostProbe, CostSetup, Requests};
use crate::common::engine;
use crate::common::http::Target;
use crate::common::server::ServerKind;
use crate::common::stores::connect_pg;
use crate::common::summary;
use crate::common::verdict::{Check, Checks};

pub use args::WalletArgs;
use load::{Records, Tracker};
use report::Report;

pub async fn run(mut args: WalletArgs) -> Result<Checks, String> {
    if args.sse_clients > args.players {
        return Err("--sse-clients must be at most --players".into());
    }
    args.admin_token = args.admin_token.filter(|t| !t.is_empty());
    args.database_url = args.database_url.filter(|u| !u.is_empty());
    let target = Target::resolve(&args.url).await?;
    if args.server == ServerKind::Baseline {
        return baseline::run(&args, &target).await;
    }
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let prefix = format!("lw{run_id}-");
    let players: Vec<String> = (0..args.players).map(|p| format!("{prefix}{p}")).collect();

    println!("wallet: seeding {} players", args.players);
    let mut rec = load::seed(&target, &players, args.admin_token.as_deref()).await?;

    // SSE clients.
    let tracker = Arc::new(Tracker::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut sse = Vec::new();
    for player in players.iter().take(args.sse_clients) {
        let (target, tracker, stop, name) = (target.clone(), tracker.clone(), stop.clone(), player.clone());
        sse.push(tokio::spawn(async move {
            load::sse_client(&target, &name, &tracker, &stop).await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while tracker.connected.load(Ordering::SeqCst) < args.sse_clients as u64 {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {} SSE clients connected",
                tracker.connected.load(Ordering::SeqCst),
                args.sse_clients
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "wallet: {} SSE clients connected; load for {} s",
        args.sse_clients, args.secs
    );

    // Load.
    let cost = CostProbe::discover(CostSetup::engine(
        "operation",
        &target,
        args.server_pid,
        args.database_url.as_deref(),
        &args.cost,
    ))
    .await;
    let ops = Arc::new(AtomicU64::new(0));
    let watch = cost.start(Requests::Live(ops.clone()));
    let until = Instant::now() + Duration::from_secs(args.secs);
    let started = Instant::now();
    let mut workers = Vec::new();
    for c in 0..args.connections {
        let (target, tracker, ops) = (target.clone(), tracker.clone(), ops.clone());
        let mine: Vec<(String, bool)> = (c..args.players)
            .step_by(args.connections)
            .map(|p| (players[p].clone(), p < args.sse_clients))
            .collect();
        workers.push(tokio::spawn(async move {
            load::worker(&target, &mine, until, &tracker, &ops).await
        }));
    }
    for w in workers {
        rec.merge(w.await.map_err(|e| e.to_string())??);
    }
    let elapsed = started.elapsed();
    let cost = watch.finish(Some(rec.operations)).await;
    // Let the last events arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    for s in sse {
        s.abort();
    }
    let (events, missing_events) = tracker.finish();
    let unresolved = load::resolve(&target, &mut rec).await;

    let mut all: Checks = checks::answers(&rec, missing_events, events.len(), &unresolved)
        .into_iter()
        .collect();
    all.extend(stores(&args, &target, &players, &prefix, &rec).await?);

    let report = Report {
        args: &args,
        rec: &rec,
        elapsed_secs: elapsed.as_secs_f64(),
        events: &events,
        missing_events,
        checks: &all,
        cost: &cost,
    };
    report.print_human();
    summary::write(args.json.as_deref(), &report.to_json());
    Ok(all)
}

/// Once the outbox is flushed: balances, ledger and conservation.
async fn stores(
    args: &WalletArgs,
    target: &Target,
    players: &[String],
    prefix: &str,
    rec: &Records,
) -> Result<Vec<Check>, String> {
    let flushed = engine::wait_flushed(target, checks::FLUSH_WITHIN).await;
    if let Ok(after) = &flushed {
        println!("wallet: outbox drained {:.2} s after the load", after.as_secs_f64());
    }
    let mut out = Vec::new();
    let ledger = match (&args.database_url, &flushed) {
        (None, _) => {
            out.push(Check::skipped(
                "ledger_as_acknowledged",
                "no --database-url / DATABASE_URL",
            ));
            Err(Check::skipped("conservation", "no --database-url / DATABASE_URL"))
        }
        (Some(_), Err(e)) => {
            out.push(Check::fail("ledger_as_acknowledged", e.clone()));
            Err(Check::fail("conservation", e.clone()))
        }
        (Some(url), Ok(_)) => {
            let mut pg = connect_pg(url).await?;
            out.push(checks::ledger_as_acknowledged(&mut pg, prefix, rec).await);
            Ok(checks::ledger_sums(&mut pg, prefix).await?)
        }
    };
    out.extend(checks::balances(target, players, rec, ledger.as_ref().map_err(Clone::clone)).await?);
    Ok(out)
}
