//! `--server baseline`: the baseline server's `POST /checkout` over as many
//! connections, for as long, to set the engine's operations/s against (one
//! request and one script call each, like one wallet operation).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::cost::{CostProbe, CostSetup, Requests};
use crate::common::fmt::fmt_ratio;
use crate::common::http::{Conn, Method, Outcome, Target};
use crate::common::summary;
use crate::common::verdict::{Check, Checks};

use super::args::WalletArgs;
use super::load::TIMEOUT;

pub async fn run(args: &WalletArgs, target: &Target) -> Result<Checks, String> {
    let cost = CostProbe::discover(CostSetup {
        server: "baseline server",
        unit: "request",
        server_pid: args.server_pid,
        engine: None,
        database_url: None,
        args: &args.cost,
    })
    .await;
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    // Answered or not: what the cost table divides by.
    let sent = Arc::new(AtomicU64::new(0));
    let watch = cost.start(Requests::Live(sent.clone()));
    let until = Instant::now() + Duration::from_secs(args.secs);
    let started = Instant::now();
    let mut workers = Vec::new();
    for c in 0..args.connections {
        let (target, answered, failed, sent) = (target.clone(), answered.clone(), failed.clone(), sent.clone());
        workers.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&target, TIMEOUT).await?;
            let mut i: u64 = 0;
            while Instant::now() < until {
                i += 1;
                if conn.is_closed() {
                    conn = Conn::connect(&target, TIMEOUT).await?;
                }
                let path = format!("/checkout?user_id=bw{c}-{i}&id={}", 1 + (c as u64 * 7919 + i) % 10_000);
                match conn.request(&target, Method::POST, &path, TIMEOUT).await {
                    Outcome::Response { .. } => answered.fetch_add(1, Ordering::Relaxed),
                    Outcome::Timeout | Outcome::Transport(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    for w in workers {
        w.await.map_err(|e| e.to_string())??;
    }
    let (answered, failed) = (answered.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    let rps = answered as f64 / started.elapsed().as_secs_f64();
    let cost = watch.finish(Some(answered + failed)).await;
    println!(
        "baseline server: {rps:.0} requests/s (POST /checkout) over {} connections for {} s",
        args.connections, args.secs
    );
    cost.phase_cpu.print_human("baseline server");
    cost.print_human();
    let checks: Checks = [Check::new(
        "baseline_answered",
        answered > 0 && failed == 0,
        format!("{answered} requests answered, {failed} without an answer"),
    )]
    .into_iter()
    .collect();
    let mut out = json!({"scenario": "baseline-load", "server": "baseline", "requests_per_sec": rps,
                         "connections": args.connections, "secs": args.secs,
                         "cpu": cost.phase_cpu.to_json(), "cost": cost.to_json()});
    if let Some(path) = &args.engine_json {
        let engine: Value = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| format!("cannot read {}", path.display()))?;
        if let Some(ops) = engine.get("ops_per_sec").and_then(Value::as_f64) {
            let ratio = ops / rps;
            println!(
                "wallet: engine {ops:.0} ops/s / baseline {rps:.0} req/s = {} (target >= 0.8)",
                fmt_ratio(Some(ratio))
            );
            out["engine_ops_per_sec"] = json!(ops);
            out["ratio"] = json!(ratio);
            out["event_delivery_p99_ms"] = engine["event_delivery_ms"]["p99"].clone();
        }
    }
    checks.add_to(&mut out);
    summary::write(args.json.as_deref(), &out);
    Ok(checks)
}
