//! `loadtest costs`: the cost table of a deployment that is already
//! running and already loaded by something else (a driver, users). Nothing
//! is started and nothing is sent but reads: `/metrics` of the engine (its
//! requests and script calls), `INFO` of every Redis primary, `/proc` for
//! the processes that run here. The window is `--secs` long, or lasts until
//! the engine has answered `--requests` requests.
//!
//! The slow log is sampled only with `--slowlog-sample`, which reconfigures
//! Redis: for a Redis that is yours (`run.sh costs` never gives it).

pub mod args;
mod checks;
mod report;

use std::time::{Duration, Instant};

use crate::common::cost::metrics::scrape;
use crate::common::cost::{CostProbe, CostSetup, Requests};
use crate::common::http::Target;
use crate::common::summary;
use crate::common::verdict::Checks;

pub use args::CostsArgs;
use report::Report;

/// How often `--requests` looks at the engine's count.
const POLL: Duration = Duration::from_millis(200);

pub async fn run(args: CostsArgs) -> Result<Checks, String> {
    let target = Target::resolve(&args.url).await?;
    scrape(&target)
        .await
        .map_err(|e| format!("{}: the engine's /metrics is needed to count requests: {e}", args.url))?;
    let probe = CostProbe::discover(CostSetup::engine(
        "request",
        &target,
        args.engine_pid,
        args.database_url.as_deref(),
        &args.cost,
    ))
    .await;
    match args.requests {
        Some(n) => println!("costs: measuring {} until it has answered {n} requests ...", args.url),
        None => println!("costs: measuring {} for {} s ...", args.url, args.secs),
    }
    let watch = probe.start(Requests::EngineHttp);
    let started = Instant::now();
    let first = scrape(&target).await?;
    match args.requests {
        None => tokio::time::sleep(Duration::from_secs(args.secs)).await,
        Some(n) => {
            let limit = Duration::from_secs(args.max_secs);
            while started.elapsed() < limit {
                tokio::time::sleep(POLL).await;
                if let Ok(now) = scrape(&target).await
                    && now.http_requests.saturating_sub(first.http_requests) >= n
                {
                    break;
                }
            }
        }
    }
    let cost = watch.finish(None).await;
    let checks: Checks = checks::checks(&cost, args.requests).into_iter().collect();
    let report = Report {
        url: &args.url,
        cost: &cost,
        checks: &checks,
    };
    report.print_human();
    summary::write(args.json.as_deref(), &report.to_json());
    Ok(checks)
}
