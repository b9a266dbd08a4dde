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

pub const USAGE: &str = "\
faults flags (default):
  --url URL               the engine's base URL (http://127.0.0.1:8080)
  --admin-token T         the engine's STAMPEDE_ADMIN_TOKEN ($STAMPEDE_ADMIN_TOKEN): products, reconcile
  --redis-url URL         the engine's Redis ($REDIS_URL)
  --database-url URL      the engine's Postgres ($DATABASE_URL)
  --key-prefix P          the engine's STAMPEDE_KEY_PREFIX ($STAMPEDE_KEY_PREFIX or stampede)
  --engine-pid PID        the engine's process: its Redis connections (drop) and memory (flood)
  --redis-pidfile PATH    pid file of a Redis this run owns; with --redis-conf enables the kill case
  --redis-conf PATH       its configuration file (AOF on), to start it again after the kill
  --cases LIST            comma-separated: drop,kill,flood (all three)
  --secs N                how long the drop case drops connections (4)
  --flood-secs N          how long the flood lasts (3)
  --clients N             clients of each kind in the mixed load: N buyers, N orderers, N players (4)
  --json PATH             also write the JSON summary to PATH
  --threads N             tokio worker threads (number of CPUs)

The engine needs ITEMS_PER_SALE >= 1000000 and PER_USER_LIMIT >= 100000 (run.sh sets both).";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Drop,
    Kill,
    Flood,
}

impl Case {
    fn parse(s: &str) -> Result<Case, String> {
        match s {
            "drop" => Ok(Case::Drop),
            "kill" => Ok(Case::Kill),
            "flood" => Ok(Case::Flood),
            other => Err(format!("--cases: drop, kill or flood, not {other:?}")),
        }
    }

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

#[derive(Debug)]
pub struct FaultsArgs {
    url: String,
    admin_token: String,
    redis_url: Option<String>,
    database_url: Option<String>,
    key_prefix: String,
    engine_pid: Option<u32>,
    redis_pidfile: Option<PathBuf>,
    redis_conf: Option<PathBuf>,
    cases: Vec<Case>,
    secs: u64,
    flood_secs: u64,
    clients: usize,
    json: Option<PathBuf>,
    pub threads: Option<usize>,
}

impl FaultsArgs {
    /// `Ok(None)` means --help.
    pub fn parse(argv: impl IntoIterator<Item = String>) -> Result<Option<Self>, String> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut a = FaultsArgs {
            url: "http://127.0.0.1:8080".into(),
            admin_token: env("STAMPEDE_ADMIN_TOKEN").unwrap_or_default(),
            redis_url: env("REDIS_URL"),
            database_url: env("DATABASE_URL"),
            key_prefix: env("STAMPEDE_KEY_PREFIX").unwrap_or_else(|| "stampede".into()),
            engine_pid: None,
            redis_pidfile: None,
            redis_conf: None,
            cases: vec![Case::Drop, Case::Kill, Case::Flood],
            secs: 4,
            flood_secs: 3,
            clients: 4,
            json: None,
            threads: None,
        };
        let mut argv = argv.into_iter();
        while let Some(flag) = argv.next() {
            if flag == "-h" || flag == "--help" {
                return Ok(None);
            }
            let value = argv.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let num = |v: &str| v.parse::<u64>().map_err(|_| format!("{flag}: not a number: {v:?}"));
            match flag.as_str() {
                "--url" => a.url = value,
                "--admin-token" => a.admin_token = value,
                "--redis-url" => a.redis_url = Some(value),
                "--database-url" => a.database_url = Some(value),
                "--key-prefix" => a.key_prefix = value,
                "--engine-pid" => a.engine_pid = Some(num(&value)? as u32),
                "--redis-pidfile" => a.redis_pidfile = Some(value.into()),
                "--redis-conf" => a.redis_conf = Some(value.into()),
                "--cases" => a.cases = value.split(',').map(Case::parse).collect::<Result<_, _>>()?,
                "--secs" => a.secs = num(&value)?,
                "--flood-secs" => a.flood_secs = num(&value)?,
                "--clients" => a.clients = num(&value)? as usize,
                "--json" => a.json = Some(value.into()),
                "--threads" => a.threads = Some(num(&value)? as usize),
                other => return Err(format!("unknown flag {other:?}")),
            }
        }
        if a.admin_token.is_empty() {
            return Err("faults needs --admin-token or STAMPEDE_ADMIN_TOKEN (products, reconcile)".into());
        }
        if a.redis_url.is_none() || a.database_url.is_none() {
            return Err("faults needs --redis-url and --database-url (or REDIS_URL, DATABASE_URL)".into());
        }
        if a.cases.is_empty() || a.secs == 0 || a.flood_secs == 0 || a.clients == 0 || a.clients > 10 {
            return Err("--cases must not be empty, --secs and --flood-secs > 0, --clients 1..=10".into());
        }
        Ok(Some(a))
    }
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
    let target = Target::resolve(&args.url).await?;
    let redis_url = args.redis_url.clone().unwrap_or_default();
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
    let mut pg = crate::scenarios::sale::checks::connect_pg(args.database_url.as_deref().unwrap_or_default()).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Option<FaultsArgs>, String> {
        FaultsArgs::parse(line.split_whitespace().map(str::to_string))
    }

    #[test]
    fn flags() {
        let a =
            parse("--admin-token t --redis-url redis://x:1 --database-url postgres://y --cases drop,flood --secs 2")
                .unwrap()
                .unwrap();
        assert_eq!(a.cases, vec![Case::Drop, Case::Flood]);
        assert_eq!(a.secs, 2);
        assert!(parse("--admin-token t --redis-url r --database-url d --cases nope").is_err());
        assert!(parse("--help").unwrap().is_none());
    }
}
