//! `loadtest faults`: the fault suite's cases (tests/api/faults/) against a
//! running engine, so a deployment can be checked the same way.
//!
//! - `drop`: the engine's own Redis connections are killed (`CLIENT KILL
//!   ID`, found through /proc: nobody else's) every 30 ms under a mixed load.
//! - `kill`: Redis is killed with SIGKILL under the load and started again
//!   from its AOF; only for a Redis this run owns (`--redis-pidfile` and
//!   `--redis-conf`, as `run.sh faults` starts it), else SKIPPED.
//! - `flood`: checkouts open-loop at 5× the capacity measured just before.
//!
//! Files: `args` (flags), `mixed` (the load of drop and kill, and the
//! resolution of its unknown outcomes), `flood`, `inject` (the faults),
//! `conns` (the engine's Redis connections), `checks`, `report`.

pub mod args;
mod checks;
mod conns;
mod flood;
mod inject;
mod mixed;
mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Map;

use crate::common::http::Target;
use crate::common::stores::{connect_pg, connect_redis};
use crate::common::summary;
use crate::common::verdict::{Check, Checks};

use args::Case;
pub use args::FaultsArgs;
use flood::FloodConfig;
use mixed::{Load, Mix};
use report::CaseReport;

pub async fn run(args: FaultsArgs) -> Result<Checks, String> {
    if args.admin_token.is_empty() || args.redis_url.is_empty() || args.database_url.is_empty() {
        return Err("faults needs --admin-token, --redis-url and --database-url \
                    (or STAMPEDE_ADMIN_TOKEN, REDIS_URL, DATABASE_URL)"
            .into());
    }
    let target = Target::resolve(&args.url).await?;
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let mut cases = Vec::new();
    let mut all = Checks::new();
    for case in &args.cases {
        println!("faults {}: ...", case.name());
        let started = Instant::now();
        let (checks, figures) = match case {
            Case::Drop | Case::Kill => mixed_case(*case, &args, &target, &run_id).await?,
            Case::Flood => flood_case(&args, &target, &run_id).await,
        };
        let report = CaseReport {
            case: *case,
            secs: started.elapsed().as_secs_f64(),
            checks,
            figures,
        };
        report.print();
        all.extend(report.checks.iter().cloned());
        cases.push(report);
    }
    summary::write(args.json.as_deref(), &report::summary(&args.url, &cases, &all));
    Ok(all)
}

async fn flood_case(args: &FaultsArgs, target: &Target, run_id: &str) -> (Checks, Map<String, serde_json::Value>) {
    let cfg = Arc::new(FloodConfig {
        factor: 5.0,
        secs: args.flood_secs as f64,
        capacity_secs: 2.0,
        capacity_clients: 256,
        outstanding_max: 1000,
        tag: format!("f{run_id}"),
        item_base: Case::Flood.item_base(),
        items: 200_000,
        engine_pid: args.engine_pid,
        admitted_p99_max: Duration::from_secs(2),
        shed_p99_max: Duration::from_secs(2),
        peak_rss_max_mib: 1024,
    });
    let run = flood::run(target, cfg.clone()).await;
    let figures = report::flood_figures(&run, &cfg);
    (checks::flood(&run, &cfg).into_iter().collect(), figures)
}

/// The drop and kill cases: the mixed load, the fault, the resolution of
/// every unknown outcome, the checks.
async fn mixed_case(
    case: Case,
    args: &FaultsArgs,
    target: &Target,
    run_id: &str,
) -> Result<(Checks, Map<String, serde_json::Value>), String> {
    let skipped = |why: String| Ok((Checks::from_iter([Check::skipped(case.name(), why)]), Map::new()));
    let redis = connect_redis(&args.redis_url).await?;
    let redis_at = inject::redis_addr(&args.redis_url).await?;
    // Whether the fault can be made at all, before any load.
    match case {
        Case::Drop => {
            let Some(pid) = args.engine_pid else {
                return skipped("no --engine-pid: the engine's Redis connections cannot be told apart".into());
            };
            let sockets = conns::engine_sockets(pid, redis_at)?;
            if sockets.is_empty() {
                return skipped(format!(
                    "process {pid} holds no connection to {redis_at} (another host, or NAT in between?)"
                ));
            }
        }
        Case::Kill => {
            if args.redis_pidfile.is_none() || args.redis_conf.is_none() {
                return skipped(
                    "Redis is not this run's own (REDIS_URL points elsewhere): it is not ours to kill".into(),
                );
            }
        }
        Case::Flood => unreachable!("the flood has its own driver"),
    }
    let tag = format!("f{run_id}{}", case.name());
    let products = mixed::create_products(target, &args.admin_token, &tag, &[100_000, 100_000, 100_000, 40]).await?;
    let mix = Mix {
        buyers: args.clients + 2,
        orderers: args.clients,
        players: args.clients,
        tag,
        item_base: case.item_base(),
    };
    let load = Load::start(target, &products, mix.clone());
    let mut checks = Checks::new();
    let mut figures = Map::new();
    let name = |n: &str| format!("{}_{n}", case.name());
    if !load.wait_acknowledged(100, Duration::from_secs(30)).await {
        checks.push(Check::fail(
            name("serves"),
            "fewer than 100 requests acknowledged in 30 s before the fault",
        ));
    }
    let fault = match case {
        Case::Drop => inject::drop_connections(args, &redis, redis_at, &load).await,
        _ => inject::kill_redis(args, &load).await,
    };
    match fault {
        Ok(f) => figures.extend(f),
        Err(e) => checks.push(Check::fail(name("fault"), e)),
    }
    let recovered = load.wait_acknowledged(100, Duration::from_secs(60)).await;
    checks.push(Check::new(
        name("recovers"),
        recovered,
        if recovered {
            "100 more requests acknowledged after the fault, the engine not restarted"
        } else {
            "fewer than 100 requests acknowledged within 60 s of the fault's end"
        },
    ));
    let records = load.stop().await;
    let resolution = mixed::resolve(target, &records).await;
    // A fresh client: after a kill the first one's connection is gone.
    let redis = connect_redis(&args.redis_url).await?;
    let mut pg = connect_pg(&args.database_url).await?;
    checks.extend(
        checks::mixed(
            case.name(),
            checks::Stores {
                target,
                admin_token: &args.admin_token,
                redis: &redis,
                key_prefix: &args.key_prefix,
                pg: &mut pg,
            },
            &products,
            &mix,
            &records,
            &resolution,
        )
        .await,
    );
    figures.extend(report::load_figures(case, &products, &records, &resolution));
    Ok((checks, figures))
}
