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

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::common::http::{Conn, Method, Outcome, Target};
use crate::common::proc::cpu_split::CpuSplit;
use crate::common::server::ServerKind;
use crate::common::stats::Progress;

use args::{Args, Scenario};
use checks::Expected;
use load::{LoadConfig, LoadResult};
use redis_bench::BaselineConfig;
use report::{Invariant, Summary};

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

fn fmt_opt(v: Option<i64>) -> String {
    v.map_or("?".into(), |v| v.to_string())
}

/// Invariants about what the driver itself saw.
fn driver_invariants(args: &Args, load: &LoadResult) -> Vec<Invariant> {
    let s = &load.stats;
    let mut out = Vec::new();
    let mut trouble = Vec::new();
    if let Some(why) = &load.aborted {
        trouble.push(why.clone());
    }
    if s.deadline_hit {
        trouble.push(format!("--max-secs {} reached", args.max_secs));
    }
    if s.connect_errors > 0 {
        trouble.push(format!("{} connect errors", s.connect_errors));
    }
    if s.abandoned_users > 0 {
        trouble.push(format!("{} users abandoned", s.abandoned_users));
    }
    out.push(Invariant::check(
        "load_completed",
        trouble.is_empty(),
        if trouble.is_empty() {
            format!(
                "all {} users ran over {} connections ({} reconnects)",
                args.users, args.connections, s.reconnects
            )
        } else {
            trouble.join(", ")
        },
    ));

    let (ok_checkout, ok_purchase) = args.scenario.expected_statuses();
    let bad = s.checkout.count_not_in(ok_checkout) + s.purchase.count_not_in(ok_purchase);
    let (name, what) = match args.scenario {
        Scenario::Contest => ("http_all_200", "non-200 answers or failed requests"),
        Scenario::Contention => ("no_unexpected_status", "unexpected answers or failed requests"),
    };
    out.push(Invariant::check(
        name,
        bad == 0 && s.bad_bodies == 0,
        format!(
            "{bad} {what}, {} unparsable 200 bodies (checkout 200: {}, purchase 200: {})",
            s.bad_bodies,
            s.checkout.count("200"),
            s.purchase.count("200")
        ),
    ));

    let (name, what) = match args.scenario {
        Scenario::Contest => ("all_items_purchased", "every item bought exactly once"),
        Scenario::Contention => ("exactly_items_sold", "exactly --items purchases succeeded"),
    };
    out.push(Invariant::check(
        name,
        s.purchases == args.items as u64,
        format!("{} purchases succeeded, items = {} ({what})", s.purchases, args.items),
    ));
    let dups = s.duplicate_items();
    out.push(Invariant::check(
        "driver_no_item_twice",
        dups == 0,
        format!("{dups} item ids were reported sold more than once"),
    ));
    out.push(Invariant::check(
        "driver_user_limit",
        s.max_user_purchases <= args.limit,
        format!("busiest user bought {}, limit {}", s.max_user_purchases, args.limit),
    ));
    out.push(Invariant::check(
        "single_sale_id",
        s.sale_ids.len() == 1,
        format!("sale ids in responses: {:?}", s.sale_ids),
    ));
    out
}

/// Returns Ok(true) when every invariant passed.
pub async fn run(args: Args) -> Result<bool, String> {
    let target = Target::resolve(&args.url).await?;
    let sale_info = preflight(&target, &args).await?;

    // Connect to the stores before the load so the flush-lag measurement
    // does not include connection setup.
    let redis = match &args.redis_url {
        Some(url) => Some(checks::connect_redis(url).await),
        None => None,
    };
    let mut pg = match &args.database_url {
        Some(url) => Some(checks::connect_pg(url).await),
        None => None,
    };
    // The processes whose CPU is measured, found before the load.
    let cpu_split = CpuSplit::discover(
        args.server_pid,
        redis.as_ref().and_then(|r| r.as_ref().ok()),
        pg.as_mut().and_then(|p| p.as_mut().ok()),
    )
    .await;
    // The baseline server writes nothing to Postgres: the connection above
    // only found its processes.
    let engine = args.server == ServerKind::Engine;
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
    let (load, cpu_start) = load::run_load(cfg, || cpu_split.snapshot()).await;
    let cpu_end = cpu_split.snapshot();
    let cpu = cpu_start.map(|start| {
        cpu_split.report(
            &start,
            &cpu_end,
            load.stats.total_requests(),
            (load.end - load.start).as_secs_f64(),
        )
    });
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

    let mut invariants = driver_invariants(&args, &load);
    let sale = load.stats.sale_ids.iter().next().copied().or(sale_info.sale_id);
    let expected = sale.map(|sale| Expected {
        sale,
        limit: args.limit,
        purchases: load.stats.purchases,
        successful_checkouts: load.stats.successful_checkouts,
        recorded_checkouts: load
            .stats
            .checkout
            .statuses
            .iter()
            .filter(|(status, _)| {
                ["200", "403", "404", "409", "429"]
                    .iter()
                    .any(|s| status.starts_with(s))
            })
            .map(|(_, n)| *n)
            .sum(),
        last_purchase: load.stats.last_purchase,
    });

    // Postgres first: the flush lag is measured from the end of the load.
    let mut flush_lag = None;
    match (&mut pg, &expected) {
        _ if !engine => invariants.push(Invariant::skip(
            "postgres",
            "the baseline server writes nothing to Postgres",
        )),
        (None, _) => invariants.push(Invariant::skip("postgres", "no --database-url / DATABASE_URL")),
        (Some(Err(e)), _) => invariants.push(Invariant::fail("postgres", e.clone())),
        (Some(Ok(_)), None) => invariants.push(Invariant::fail("postgres", "no sale id known")),
        (Some(Ok(conn)), Some(exp)) => {
            let outcome = checks::pg_checks(conn, exp, Duration::from_secs(args.flush_wait_secs), early_flush).await;
            flush_lag = outcome.flush_lag;
            invariants.extend(outcome.invariants);
        }
    }
    match (&redis, &expected) {
        (None, _) => invariants.push(Invariant::skip("redis", "no --redis-url / REDIS_URL")),
        (Some(Err(e)), _) => invariants.push(Invariant::fail("redis", e.clone())),
        (Some(Ok(_)), None) => invariants.push(Invariant::fail("redis", "no sale id known")),
        (Some(Ok(client)), Some(exp)) => {
            invariants.extend(checks::redis_checks(client, &args.key_prefix, exp).await);
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

    let summary = Summary {
        scenario: args.scenario_name,
        server: args.server,
        users: args.users,
        items: args.items,
        limit: args.limit,
        connections: args.connections,
        sale_id: sale,
        load: &load,
        invariants,
        flush_lag,
        baseline,
        cpu,
    };
    summary.print_human();
    report::emit_json(args.json.as_deref(), &summary.to_json())?;

    if let Some(Ok(client)) = &redis {
        let _ = fred::prelude::ClientLike::quit(client).await;
    }
    Ok(summary.passed())
}
