//! The sale scenarios: contest, sustained and contention.
//!
//! The phases of a run, in order: pre-flight (`GET /sales/current`), the
//! load, the invariant checks (what the driver was told, then Redis and
//! Postgres against it), the redis-benchmark baseline, the report.

pub mod args;
pub mod checks;
pub mod load;
pub mod redis_bench;
pub mod report;
pub mod stats;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::common::cost::{CostProbe, CostSetup, Requests};
use crate::common::fmt::fmt_opt;
use crate::common::http::{Conn, Method, Outcome, Target};
use crate::common::server::ServerKind;
use crate::common::stores::{connect_pg, connect_redis};
use crate::common::summary;
use crate::common::verdict::{Check, Checks};

use args::Args;
use checks::Expected;
use load::LoadConfig;
use redis_bench::BaselineConfig;
use report::Summary;
use stats::Progress;

/// What GET /sales/current says before the load.
struct SaleInfo {
    sale_id: Option<i64>,
}

/// Asks the engine about the current sale and warns about mismatched settings.
async fn preflight(target: &Target, args: &Args) -> Result<SaleInfo, String> {
    let mut conn = Conn::connect(target, Duration::from_secs(5))
        .await
        .map_err(|e| format!("{} not reachable at {}: {e}", args.server.label(), args.url))?;
    let outcome = conn
        .request(target, Method::GET, "/sales/current", Duration::from_secs(10))
        .await;
    let body = match outcome {
        Outcome::Response { status: 200, body, .. } => body,
        Outcome::Response { status, .. } => {
            eprintln!("warning: GET /sales/current answered {status}");
            return Ok(SaleInfo { sale_id: None });
        }
        Outcome::Timeout => return Err("GET /sales/current: no answer".into()),
        Outcome::Transport(e) => return Err(format!("GET /sales/current: {e}")),
    };
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        eprintln!("warning: GET /sales/current: body is not JSON");
        return Ok(SaleInfo { sale_id: None });
    };
    let num = |field: &str| v.get(field).and_then(Value::as_i64);
    let sale_id = num("sale_id");
    println!(
        "{}: sale {}, items_total {}, items_sold {}, per_user_limit {}",
        args.server.label(),
        fmt_opt(sale_id),
        fmt_opt(num("items_total")),
        fmt_opt(num("items_sold")),
        fmt_opt(num("per_user_limit")),
    );
    if let Some(total) = num("items_total")
        && total != args.items as i64
    {
        eprintln!(
            "warning: the engine sells {total} items per sale but --items is {}",
            args.items
        );
    }
    if let Some(limit) = num("per_user_limit")
        && limit != args.limit as i64
    {
        eprintln!(
            "warning: the engine's per-user limit is {limit} but --limit is {}",
            args.limit
        );
    }
    if let Some(sold) = num("items_sold")
        && sold > 0
    {
        eprintln!("warning: {sold} items of this sale are already sold (reused key prefix?): expect failures");
    }
    Ok(SaleInfo { sale_id })
}

/// Runs the scenario; its checks decide the exit code.
pub async fn run(args: Args) -> Result<Checks, String> {
    let target = Target::resolve(&args.url).await?;
    let sale_info = preflight(&target, &args).await?;

    // Connect to the stores before the load so the flush-lag measurement
    // does not include connection setup.
    let redis = match &args.redis_url {
        Some(url) => Some(connect_redis(url).await),
        None => None,
    };
    let pg = match &args.database_url {
        Some(url) => Some(connect_pg(url).await),
        None => None,
    };
    // The baseline server writes nothing to Postgres: nothing is checked
    // there (the cost table still measures Postgres's CPU).
    let engine = args.server == ServerKind::Engine;
    // What the cost table reads, found before the load.
    let cost = CostProbe::discover(CostSetup {
        server: args.server.label(),
        unit: "request",
        server_pid: args.server_pid,
        engine: engine.then(|| target.clone()),
        database_url: args.database_url.as_deref(),
        args: &args.cost,
    })
    .await;
    let progress = Arc::new(Progress::new());
    let (stop_watch, stop_rx) = tokio::sync::watch::channel(false);
    let (mut pg, watcher) = match pg {
        Some(Ok(conn)) if engine => {
            let handle = checks::spawn_flush_watch(conn, progress.clone(), args.items as u64, stop_rx);
            (None, Some(handle))
        }
        other => (other, None),
    };

    let cfg = Arc::new(LoadConfig {
        scenario: args.scenario,
        target,
        users: args.users,
        items: args.items,
        limit: args.limit,
        connections: args.connections,
        user_prefix: args.user_prefix.clone(),
        attempts: args.attempts,
        request_timeout: Duration::from_secs(args.request_timeout_secs),
        connect_timeout: Duration::from_secs(args.request_timeout_secs),
        max_duration: Duration::from_secs(args.max_secs),
        progress,
    });
    println!(
        "loadtest {}: {} users, {} items, {} connections against the {} at {} ...",
        args.scenario_name,
        args.users,
        args.items,
        args.connections,
        args.server.label(),
        args.url
    );
    let requests = cfg.progress.requests.clone();
    let (load, watch) = load::run_load(cfg, || cost.start(Requests::Live(requests))).await;
    let cost = match watch {
        Some(watch) => Some(watch.finish(Some(load.stats.total_requests())).await),
        None => None,
    };
    let _ = stop_watch.send(true);
    let mut early_flush = None;
    if let Some(handle) = watcher {
        pg = Some(match handle.await {
            Ok((conn, early)) => {
                early_flush = early;
                Ok(conn)
            }
            Err(e) => Err(format!("flush watcher failed: {e}")),
        });
    }

    let mut checks: Checks = checks::driver_checks(&args, &load).into_iter().collect();
    let sale = load.stats.sale_ids.iter().next().copied().or(sale_info.sale_id);
    let expected = sale.map(|sale| Expected {
        sale,
        limit: args.limit,
        user_prefix: &args.user_prefix,
        stats: &load.stats,
    });

    // Postgres first: the flush lag is measured from the end of the load.
    let mut flush_lag = None;
    let mut not_applicable = Vec::new();
    match (&mut pg, &expected) {
        _ if !engine => not_applicable.push("postgres: the baseline server writes nothing to Postgres".into()),
        (None, _) => checks.push(Check::skipped("postgres", "no --database-url / DATABASE_URL")),
        (Some(Err(e)), _) => checks.push(Check::fail("postgres", e.clone())),
        (Some(Ok(_)), None) => checks.push(Check::fail("postgres", "no sale id known")),
        (Some(Ok(conn)), Some(exp)) => {
            let outcome = checks::pg_checks(conn, exp, Duration::from_secs(args.flush_wait_secs), early_flush).await;
            flush_lag = outcome.flush_lag;
            checks.extend(outcome.checks);
        }
    }
    match (&redis, &expected) {
        (None, _) => checks.push(Check::skipped("redis", "no --redis-url / REDIS_URL")),
        (Some(Err(e)), _) => checks.push(Check::fail("redis", e.clone())),
        (Some(Ok(_)), None) => checks.push(Check::fail("redis", "no sale id known")),
        (Some(Ok(client)), Some(exp)) => {
            checks.extend(checks::redis_checks(client, &args.key_prefix, exp).await);
        }
    }

    let baseline = match (&redis, &args.redis_url) {
        _ if !engine => Some(redis_bench::Baseline {
            evalsha_per_sec: None,
            note: "not run against the baseline server (run.sh runs it with the engine)".into(),
        }),
        (Some(Ok(client)), Some(url)) if args.baseline => {
            println!("running the redis-benchmark baseline ...");
            Some(
                redis_bench::run(
                    client,
                    &BaselineConfig {
                        redis_url: url.clone(),
                        key_prefix: args.key_prefix.clone(),
                        lua_dir: args.lua_dir.clone(),
                        requests: args.bench_requests,
                        clients: args.bench_clients,
                    },
                )
                .await,
            )
        }
        (_, _) if !args.baseline => None,
        _ => Some(redis_bench::Baseline {
            evalsha_per_sec: None,
            note: "no usable Redis connection".into(),
        }),
    };

    let report = Summary {
        scenario: args.scenario_name,
        server: args.server,
        users: args.users,
        items: args.items,
        limit: args.limit,
        connections: args.connections,
        sale_id: sale,
        load: &load,
        checks: &checks,
        not_applicable,
        flush_lag,
        baseline,
        cost: cost.as_ref(),
    };
    report.print_human();
    summary::emit(args.json.as_deref(), &report.to_json());

    if let Some(Ok(client)) = &redis {
        let _ = fred::prelude::ClientLike::quit(client).await;
    }
    Ok(checks)
}
