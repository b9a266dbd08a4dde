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
//! Each case prints its invariants PASS, FAIL or SKIPPED; the exit code is 1
//! if any failed.

mod conns;
mod flood;
mod mixed;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::http::Target;
use crate::scenarios::sale::report::{Invariant, Verdict};
use mixed::{Load, Mix, Product, Records, Resolution, Stores};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Case {
    /// The engine's own Redis connections killed every 30 ms.
    Drop,
    /// Redis killed with SIGKILL and started again from its AOF.
    Kill,
    /// Checkouts open-loop at 5x the measured capacity.
    Flood,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Drop => "drop",
            Case::Kill => "kill",
            Case::Flood => "flood",
        }
    }

    /// Each case buys in a range of the sale of its own.
    fn item_base(self) -> u64 {
        match self {
            Case::Drop => 0,
            Case::Kill => 400_000,
            Case::Flood => 800_000,
        }
    }
}

/// Flags of `loadtest faults`. The engine needs ITEMS_PER_SALE >= 1000000
/// and PER_USER_LIMIT >= 100000 (run.sh sets both).
#[derive(Debug, Clone, clap::Args)]
pub struct FaultsArgs {
    /// The engine's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The engine's STAMPEDE_ADMIN_TOKEN: products, reconcile.
    #[arg(long, env = "STAMPEDE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// The engine's Redis.
    #[arg(long, env = "REDIS_URL", value_name = "URL")]
    redis_url: String,
    /// The engine's Postgres.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    database_url: String,
    /// The engine's STAMPEDE_KEY_PREFIX.
    #[arg(long, env = "STAMPEDE_KEY_PREFIX", default_value = "stampede")]
    key_prefix: String,
    /// The engine's process: its Redis connections (drop) and memory (flood).
    #[arg(long, value_name = "PID")]
    engine_pid: Option<u32>,
    /// Pid file of a Redis this run owns; with --redis-conf enables the kill case.
    #[arg(long, value_name = "PATH", requires = "redis_conf")]
    redis_pidfile: Option<PathBuf>,
    /// Its configuration file (AOF on), to start it again after the kill.
    #[arg(long, value_name = "PATH", requires = "redis_pidfile")]
    redis_conf: Option<PathBuf>,
    /// The cases to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "drop,kill,flood")]
    cases: Vec<Case>,
    /// How long the drop case drops connections, in seconds.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    secs: u64,
    /// How long the flood lasts, in seconds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    flood_secs: u64,
    /// Clients of each kind in the mixed load: N + 2 buyers, N orderers, N players.
    #[arg(long, default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10))]
    clients: usize,
    /// Also write the JSON summary to PATH.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

/// One case's verdicts and figures.
struct Outcome {
    invariants: Vec<Invariant>,
    figures: Value,
}

impl Outcome {
    fn skipped(case: Case, why: impl Into<String>) -> Outcome {
        Outcome {
            invariants: vec![Invariant::skip(case.name(), why)],
            figures: Value::Null,
        }
    }
}

pub async fn run(args: FaultsArgs) -> Result<bool, String> {
    if args.admin_token.is_empty() || args.redis_url.is_empty() || args.database_url.is_empty() {
        return Err("faults needs --admin-token, --redis-url and --database-url \
                    (or STAMPEDE_ADMIN_TOKEN, REDIS_URL, DATABASE_URL)"
            .into());
    }
    let target = Target::resolve(&args.url).await?;
    let redis_url = args.redis_url.clone();
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let mut summary = serde_json::Map::new();
    let mut all = Vec::new();
    for case in &args.cases {
        println!("faults {}: ...", case.name());
        let started = Instant::now();
        let outcome = match case {
            Case::Drop | Case::Kill => mixed_case(*case, &args, &target, &redis_url, &run_id).await?,
            Case::Flood => {
                let (invariants, figures) = flood::run(
                    &target,
                    flood::FloodConfig {
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
                    },
                )
                .await;
                Outcome { invariants, figures }
            }
        };
        let secs = started.elapsed().as_secs_f64();
        for inv in &outcome.invariants {
            println!("{} {}: {}", label(inv.verdict), inv.name, inv.detail);
        }
        println!("faults {}: {secs:.1} s", case.name());
        let invariants: serde_json::Map<String, Value> = outcome
            .invariants
            .iter()
            .map(|i| (i.name.clone(), json!({"result": label(i.verdict), "detail": i.detail})))
            .collect();
        summary.insert(
            case.name().into(),
            json!({"secs": secs, "figures": outcome.figures, "invariants": invariants}),
        );
        all.extend(outcome.invariants);
    }
    let count = |v: Verdict| all.iter().filter(|i| i.verdict == v).count();
    let (passed, failed) = (count(Verdict::Pass), count(Verdict::Fail));
    let skipped: Vec<&str> = all
        .iter()
        .filter(|i| i.verdict == Verdict::Skip)
        .map(|i| i.name.as_str())
        .collect();
    let skipped = if skipped.is_empty() {
        String::new()
    } else {
        format!(", SKIPPED: {}", skipped.join(", "))
    };
    println!();
    match (failed, passed) {
        (0, 0) => println!("RESULT: SKIPPED (nothing was checked{skipped})"),
        (0, _) => println!("RESULT: PASS ({passed} checks passed{skipped})"),
        _ => println!("RESULT: FAIL ({failed} failed, {passed} passed{skipped})"),
    }
    let json = json!({"scenario": "faults", "url": args.url, "cases": summary, "passed": failed == 0});
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&json).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(failed == 0)
}

/// SKIPPED, never a pass: a case that did not run says so.
fn label(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
        Verdict::Skip => "SKIPPED",
    }
}

async fn redis_addr(url: &str) -> Result<std::net::SocketAddr, String> {
    let rest = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .rsplit('@')
        .next()
        .unwrap_or_default();
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let with_port = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:6379")
    };
    tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| format!("cannot resolve {with_port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{with_port} resolved to nothing"))
}

/// The drop and kill cases: the mixed load, the fault, the resolution of
/// every unknown outcome, the checks.
async fn mixed_case(
    case: Case,
    args: &FaultsArgs,
    target: &Target,
    redis_url: &str,
    run_id: &str,
) -> Result<Outcome, String> {
    let redis = crate::scenarios::sale::checks::connect_redis(redis_url).await?;
    let redis_at = redis_addr(redis_url).await?;
    // Whether the fault can be made at all, before any load.
    match case {
        Case::Drop => {
            let Some(pid) = args.engine_pid else {
                return Ok(Outcome::skipped(
                    case,
                    "no --engine-pid: the engine's Redis connections cannot be told apart",
                ));
            };
            let sockets = conns::engine_sockets(pid, redis_at)?;
            if sockets.is_empty() {
                return Ok(Outcome::skipped(
                    case,
                    format!("process {pid} holds no connection to {redis_at} (another host, or NAT in between?)"),
                ));
            }
        }
        Case::Kill => {
            if args.redis_pidfile.is_none() || args.redis_conf.is_none() {
                return Ok(Outcome::skipped(
                    case,
                    "Redis is not this run's own (REDIS_URL points elsewhere): it is not ours to kill",
                ));
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
    let mut invariants = Vec::new();
    let mut figures = serde_json::Map::new();
    if !load.wait_acknowledged(100, Duration::from_secs(30)).await {
        invariants.push(Invariant::fail(
            &format!("{}_serves", case.name()),
            "fewer than 100 requests acknowledged in 30 s before the fault",
        ));
    }
    let fault = match case {
        Case::Drop => drop_connections(args, &redis, redis_at, &load).await,
        _ => kill_redis(args, &load).await,
    };
    match fault {
        Ok(f) => {
            figures.extend(f);
        }
        Err(e) => invariants.push(Invariant::fail(&format!("{}_fault", case.name()), e)),
    }
    let recovered = load.wait_acknowledged(100, Duration::from_secs(60)).await;
    invariants.push(Invariant::check(
        &format!("{}_recovers", case.name()),
        recovered,
        if recovered {
            "100 more requests acknowledged after the fault, the engine not restarted".to_owned()
        } else {
            "fewer than 100 requests acknowledged within 60 s of the fault's end".to_owned()
        },
    ));
    let records = load.stop().await;
    let resolution = mixed::resolve(target, &records).await;
    // A fresh client: after a kill the first one's connection is gone.
    let redis = crate::scenarios::sale::checks::connect_redis(redis_url).await?;
    let mut pg = crate::scenarios::sale::checks::connect_pg(&args.database_url).await?;
    invariants.extend(
        mixed::check(
            case.name(),
            Stores {
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
    figures.extend(load_figures(case, &products, &records, &resolution));
    Ok(Outcome {
        invariants,
        figures: Value::Object(figures),
    })
}

fn load_figures(
    case: Case,
    products: &[Product],
    records: &Records,
    resolution: &Resolution,
) -> serde_json::Map<String, Value> {
    let (unknown, wallet_taken) = records.unknown_outcomes();
    let taken = resolution.purchases_taken.len() + resolution.orders_taken.len() + wallet_taken;
    println!(
        "faults {}: {} requests; purchases {} acknowledged, {} unknown ({} took effect); orders {} acknowledged, {} \
         out of stock, {} unknown ({} took effect, {} made by their keyed retry); wallet {} transactions ({} had \
         taken effect before their resend); 503s and lost calls {} {:?}; of {unknown} unknown outcomes {taken} had \
         taken effect",
        case.name(),
        records.requests,
        records.purchases.len(),
        records.purchases_unknown.len(),
        resolution.purchases_taken.len(),
        records.orders.len(),
        records.out_of_stock,
        records.orders_unknown.len(),
        resolution.orders_taken.len(),
        resolution.orders_by_retry.len(),
        records.wallet.len(),
        wallet_taken,
        records.unavailable_total(),
        records.unavailable,
    );
    let mut out = serde_json::Map::new();
    out.insert(
        "products".into(),
        json!(products.iter().map(|p| p.id).collect::<Vec<_>>()),
    );
    out.insert("requests".into(), json!(records.requests));
    out.insert("purchases".into(), json!(records.purchases.len()));
    out.insert("orders".into(), json!(records.orders.len()));
    out.insert("wallet_transactions".into(), json!(records.wallet.len()));
    out.insert("unavailable".into(), json!(records.unavailable));
    out.insert("unknown_outcomes".into(), json!(unknown));
    out.insert("unknown_that_took_effect".into(), json!(taken));
    out
}

/// Kills the engine's Redis connections every 30 ms for `--secs`.
async fn drop_connections(
    args: &FaultsArgs,
    redis: &fred::prelude::Client,
    redis_at: std::net::SocketAddr,
    load: &Load,
) -> Result<serde_json::Map<String, Value>, String> {
    let pid = args.engine_pid.ok_or("no --engine-pid")?;
    let started = Instant::now();
    let before = load.unavailable();
    let (mut rounds, mut killed) = (0u64, 0usize);
    while started.elapsed() < Duration::from_secs(args.secs) {
        let sockets = conns::engine_sockets(pid, redis_at)?;
        killed += conns::kill(redis, &sockets).await?;
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let unavailable = load.unavailable() - before;
    println!(
        "faults drop: {rounds} rounds over {:.1} s killed {killed} of the engine's Redis connections; {unavailable} \
         calls answered 503 or nothing meanwhile",
        started.elapsed().as_secs_f64()
    );
    let mut out = serde_json::Map::new();
    out.insert("kill_rounds".into(), json!(rounds));
    out.insert("connections_killed".into(), json!(killed));
    out.insert("unavailable_during_fault".into(), json!(unavailable));
    if killed == 0 {
        return Err("no connection of the engine was killed".into());
    }
    Ok(out)
}

/// SIGKILL to the Redis of `--redis-pidfile`, then `redis-server
/// --redis-conf` again once the engine has answered 503 a few times.
async fn kill_redis(args: &FaultsArgs, load: &Load) -> Result<serde_json::Map<String, Value>, String> {
    let (Some(pidfile), Some(conf)) = (&args.redis_pidfile, &args.redis_conf) else {
        return Err("no --redis-pidfile / --redis-conf".into());
    };
    let pid = std::fs::read_to_string(pidfile)
        .map_err(|e| format!("{}: {e}", pidfile.display()))?
        .trim()
        .to_owned();
    let status = Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .map_err(|e| format!("kill: {e}"))?;
    if !status.success() {
        return Err(format!("kill -KILL {pid} failed"));
    }
    let killed = Instant::now();
    let refused = load.wait_unavailable(20, Duration::from_secs(10)).await;
    let down_for = killed.elapsed();
    let status = Command::new("redis-server")
        .arg(conf)
        .status()
        .map_err(|e| format!("redis-server {}: {e}", conf.display()))?;
    if !status.success() {
        return Err(format!("redis-server {} failed", conf.display()));
    }
    let restarted = Instant::now();
    let recovered = load.wait_acknowledged(1, Duration::from_secs(60)).await;
    let recovered_in = restarted.elapsed();
    println!(
        "faults kill: Redis (pid {pid}) down {:.2} s; first acknowledgement {:.0} ms after its restart",
        down_for.as_secs_f64(),
        recovered_in.as_secs_f64() * 1000.0
    );
    if !refused {
        return Err("fewer than 20 calls answered 503 in the 10 s Redis was down".into());
    }
    if !recovered {
        return Err("nothing acknowledged within 60 s of Redis's restart".into());
    }
    let mut out = serde_json::Map::new();
    out.insert("redis_down_secs".into(), json!(down_for.as_secs_f64()));
    out.insert("recovered_ms".into(), json!(recovered_in.as_secs_f64() * 1000.0));
    Ok(out)
}
