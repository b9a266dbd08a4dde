//! `loadtest`: load driver for the stampede engine.
//!
//! See loadtest/README.md. This file holds the command line and the order of
//! the phases: pre-flight, load, invariant checks, baseline, report.

mod common;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// The driver shares the machine with the engine: a cheaper allocator leaves
/// more CPU to what is being measured.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use serde_json::Value;

use crate::common::http::{Conn, Method, Outcome, Target};
use crate::common::proc::cpu_split::CpuSplit;
use crate::common::stats::Progress;
use crate::scenarios::sale::checks::Expected;
use crate::scenarios::sale::load::{LoadConfig, LoadResult, Scenario};
use crate::scenarios::sale::redis_bench::{BaselineConfig, default_lua_dir};
use crate::scenarios::sale::report::{Invariant, ServerKind, Summary};

const USAGE: &str = "\
usage: loadtest <contest|sustained|contention> [flags]
       loadtest ingest --file PATH [ingest flags]
       loadtest orders [orders flags: loadtest orders --help]
       loadtest wallet [wallet flags]
       loadtest settlement [settlement flags]
       loadtest faults [faults flags: loadtest faults --help]
       loadtest compare --engine ENGINE.json --baseline BASELINE.json [--json OUT]

scenarios:
  contest      every user buys its own k = items/users items (k <= limit), all users start at once
  sustained    contest with 20000 users / 200000 items by default, over --connections connections
  contention   users race for a few items (random picks) until everything is sold
  ingest       uploads NDJSON files to POST /ingest, watches the engine's RSS, times psql \\copy of the same rows
  orders       buyers over products of limited stock: orders, holds (confirmed, cancelled, expired), keyed retries
  wallet       players bet/win/refund with retried references while SSE clients listen (see wallet flags)
  settlement   times a settlement job (POST to COMPLETED plus the CSV) against psql's INSERT … GROUP BY and \\copy,
               checks the rows and the CSV against SQL, watches the engine's RSS (flags: --url, --database-url,
               --admin-token, --engine-pid, --from, --to, --small-from, --small-to, --runs 3, --psql, --json, --max-secs)
  faults       invariants under faults: the engine's Redis connections dropped, Redis killed and restarted,
               a flood at 5x capacity (each invariant PASS, FAIL or SKIPPED)
  compare      table and ratios engine / baseline server of two JSON summaries (run.sh runs it)

flags (default):
  --url URL               engine base URL (http://127.0.0.1:8080)
  --server KIND           engine, or baseline: the baseline server (no Postgres checks, no redis-benchmark) (engine)
  --server-pid PID        the server's process, for CPU per request (not measured if unset)
  --users N               virtual users (contest 1000, sustained 20000, contention 2000)
  --items N               items in the sale (contest 10000, sustained 200000, contention 20)
  --limit N               per-user purchase limit of the engine (10)
  --connections N         keep-alive connections; each runs its users one after another (min(users, 1000))
  --attempts N            contention: checkouts per user before giving up (50)
  --redis-url URL         Redis of the engine, for checks and baseline ($REDIS_URL; checks skipped if unset)
  --database-url URL      Postgres of the engine, for checks ($DATABASE_URL; checks skipped if unset)
  --key-prefix P          STAMPEDE_KEY_PREFIX of the engine ($STAMPEDE_KEY_PREFIX or stampede)
  --user-prefix S         user ids are S-<n> (lt)
  --json PATH             also write the JSON summary to PATH
  --max-secs N            budget of the load phase, connecting included (120)
  --request-timeout-secs N  per-request timeout (10)
  --flush-wait-secs N     how long to wait for Postgres to catch up (30)
  --lua-dir DIR           where purchase.lua is (./lua, else <repo>/lua)
  --no-baseline           skip the redis-benchmark baseline
  --bench-requests N      redis-benchmark -n (100000)
  --bench-clients N       redis-benchmark -c (50)
  --threads N             tokio worker threads (number of CPUs)
  -h, --help              this text

ingest flags (default):
  --url URL               engine base URL (http://127.0.0.1:8080)
  --file PATH             the large NDJSON file (required); its upload is compared with \\copy
  --small-file PATH       a smaller file uploaded first: the memory reference (none)
  --engine-pid PID        the engine's process, for its RSS and CPU (not measured if unset)
  --database-url URL      the engine's Postgres, for checks and baseline ($DATABASE_URL; skipped if unset)
  --psql PATH             psql binary for the baseline (psql)
  --csv PATH              where the baseline CSV is written (<file stem>.copy.csv next to --file)
  --keep-csv              keep the CSV afterwards (deleted by default)
  --no-baseline           skip the \\copy baseline
  --no-checkpoint         do not CHECKPOINT Postgres before each timed phase
  --max-secs N            budget of one upload, and of the \\copy (1800)
  --sample-ms N           RSS sampling period (20)
  --enforce-targets       a missed target (RSS growth, \\copy ratio) makes the exit code 1
  --json PATH             also write the JSON summary to PATH
  --threads N             tokio worker threads (number of CPUs)

exit code: 0 all invariants passed, 1 an invariant failed, 2 bad usage or setup error";

#[derive(Debug)]
struct Args {
    scenario_name: String,
    scenario: Scenario,
    url: String,
    users: usize,
    items: usize,
    limit: u64,
    connections: usize,
    attempts: usize,
    redis_url: Option<String>,
    database_url: Option<String>,
    key_prefix: String,
    user_prefix: String,
    json: Option<PathBuf>,
    max_secs: u64,
    request_timeout_secs: u64,
    flush_wait_secs: u64,
    lua_dir: PathBuf,
    server: ServerKind,
    server_pid: Option<u32>,
    baseline: bool,
    bench_requests: u64,
    bench_clients: u32,
    threads: Option<usize>,
}

fn parse_num<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: not a valid number: {value:?}"))
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Args {
    /// `Ok(None)` means --help.
    fn parse(argv: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
        let mut argv = argv.into_iter();
        let Some(scenario_name) = argv.next() else {
            return Err("missing scenario".into());
        };
        let (scenario, users, items) = match scenario_name.as_str() {
            "-h" | "--help" | "help" => return Ok(None),
            "contest" => (Scenario::Contest, 1000, 10_000),
            "sustained" => (Scenario::Contest, 20_000, 200_000),
            "contention" => (Scenario::Contention, 2000, 20),
            other => return Err(format!("unknown scenario {other:?}")),
        };
        let mut a = Args {
            scenario_name,
            scenario,
            url: "http://127.0.0.1:8080".into(),
            users,
            items,
            limit: 10,
            connections: 0,
            attempts: 50,
            redis_url: env_nonempty("REDIS_URL"),
            database_url: env_nonempty("DATABASE_URL"),
            key_prefix: env_nonempty("STAMPEDE_KEY_PREFIX").unwrap_or_else(|| "stampede".into()),
            user_prefix: "lt".into(),
            json: None,
            max_secs: 120,
            request_timeout_secs: 10,
            flush_wait_secs: 30,
            lua_dir: PathBuf::new(),
            server: ServerKind::Engine,
            server_pid: None,
            baseline: true,
            bench_requests: 100_000,
            bench_clients: 50,
            threads: None,
        };
        let mut lua_dir = None;
        while let Some(flag) = argv.next() {
            if flag == "-h" || flag == "--help" {
                return Ok(None);
            }
            if flag == "--no-baseline" {
                a.baseline = false;
                continue;
            }
            // Accept both `--flag value` and `--flag=value`.
            let (flag, value) = match flag.split_once('=') {
                Some((f, v)) => (f.to_string(), v.to_string()),
                None => {
                    let v = argv.next().ok_or_else(|| format!("{flag} needs a value"))?;
                    (flag, v)
                }
            };
            match flag.as_str() {
                "--url" => a.url = value,
                "--server" => a.server = ServerKind::parse(&value)?,
                "--server-pid" => a.server_pid = Some(parse_num(&flag, &value)?),
                "--users" => a.users = parse_num(&flag, &value)?,
                "--items" => a.items = parse_num(&flag, &value)?,
                "--limit" => a.limit = parse_num(&flag, &value)?,
                "--connections" => a.connections = parse_num(&flag, &value)?,
                "--attempts" => a.attempts = parse_num(&flag, &value)?,
                "--redis-url" => a.redis_url = Some(value),
                "--database-url" => a.database_url = Some(value),
                "--key-prefix" => a.key_prefix = value,
                "--user-prefix" => a.user_prefix = value,
                "--json" => a.json = Some(PathBuf::from(value)),
                "--max-secs" => a.max_secs = parse_num(&flag, &value)?,
                "--request-timeout-secs" => a.request_timeout_secs = parse_num(&flag, &value)?,
                "--flush-wait-secs" => a.flush_wait_secs = parse_num(&flag, &value)?,
                "--lua-dir" => lua_dir = Some(PathBuf::from(value)),
                "--bench-requests" => a.bench_requests = parse_num(&flag, &value)?,
                "--bench-clients" => a.bench_clients = parse_num(&flag, &value)?,
                "--threads" => a.threads = Some(parse_num(&flag, &value)?),
                other => return Err(format!("unknown flag {other:?}")),
            }
        }
        a.lua_dir = lua_dir.unwrap_or_else(default_lua_dir);
        if a.connections == 0 {
            a.connections = a.users.min(1000);
        }
        a.validate()?;
        Ok(Some(a))
    }

    fn validate(&self) -> Result<(), String> {
        if self.users == 0 || self.items == 0 {
            return Err("--users and --items must be > 0".into());
        }
        if self.connections == 0 || self.connections > self.users {
            return Err(format!("--connections must be between 1 and --users ({})", self.users));
        }
        if self.max_secs == 0 || self.request_timeout_secs == 0 {
            return Err("--max-secs and --request-timeout-secs must be > 0".into());
        }
        if self.threads == Some(0) {
            return Err("--threads must be > 0".into());
        }
        if self.scenario == Scenario::Contest {
            if !self.items.is_multiple_of(self.users) {
                return Err(format!(
                    "contest: --items ({}) must be a multiple of --users ({}) so every item has a buyer",
                    self.items, self.users
                ));
            }
            let k = (self.items / self.users) as u64;
            if k > self.limit {
                return Err(format!(
                    "contest: each user would buy items/users = {k} items, more than --limit {}",
                    self.limit
                ));
            }
        }
        if self.scenario == Scenario::Contention && self.attempts == 0 {
            return Err("--attempts must be > 0".into());
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1).peekable();
    // compare reads two JSON summaries: no load, no runtime.
    if argv.peek().is_some_and(|s| s == "compare") {
        argv.next();
        return match scenarios::compare::CompareArgs::parse(argv)
            .and_then(|a| a.map(scenarios::compare::run).transpose())
        {
            Ok(Some(true)) => ExitCode::SUCCESS,
            Ok(Some(false)) => ExitCode::from(1),
            Ok(None) => {
                println!("{USAGE}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadtest: {e}");
                ExitCode::from(2)
            }
        };
    }
    if argv.peek().is_some_and(|s| s == "settlement") {
        argv.next();
        return match scenarios::settlement::SettlementArgs::parse(argv) {
            Ok(Some(args)) => block_on(Some(1), scenarios::settlement::run(args)),
            Ok(None) => {
                println!("{USAGE}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadtest: {e}\n\n{USAGE}");
                ExitCode::from(2)
            }
        };
    }
    // The orders scenario has flags of its own.
    if argv.peek().is_some_and(|s| s == "orders") {
        argv.next();
        return match scenarios::orders::OrdersArgs::parse(argv) {
            Ok(Some(args)) => block_on(args.threads, scenarios::orders::run(args)),
            Ok(None) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loadtest: {e}");
                ExitCode::from(2)
            }
        };
    }
    // The faults scenario has flags of its own.
    if argv.peek().is_some_and(|s| s == "faults") {
        argv.next();
        return match scenarios::faults::FaultsArgs::parse(argv) {
            Ok(Some(args)) => block_on(args.threads, scenarios::faults::run(args)),
            Ok(None) => {
                println!("{USAGE}\n\n{}", scenarios::faults::USAGE);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadtest: {e}\n\n{}", scenarios::faults::USAGE);
                ExitCode::from(2)
            }
        };
    }
    // The wallet scenario has flags of its own.
    if argv.peek().is_some_and(|s| s == "wallet") {
        argv.next();
        return match scenarios::wallet::WalletArgs::parse(argv) {
            Ok(Some(args)) => block_on(args.threads, scenarios::wallet::run(args)),
            Ok(None) => {
                println!("{USAGE}\n\n{}", scenarios::wallet::USAGE);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadtest: {e}\n\n{}", scenarios::wallet::USAGE);
                ExitCode::from(2)
            }
        };
    }
    // The ingest scenario has flags of its own.
    if argv.peek().is_some_and(|s| s == "ingest") {
        argv.next();
        return match scenarios::ingest::IngestArgs::parse(argv) {
            Ok(Some(args)) => block_on(args.threads, scenarios::ingest::run(args)),
            Ok(None) => {
                println!("{USAGE}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadtest: {e}\n\n{USAGE}");
                ExitCode::from(2)
            }
        };
    }
    let args = match Args::parse(argv) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("loadtest: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    block_on(args.threads, run(args))
}

/// Runs a scenario on a tokio runtime of `threads` workers; maps its result
/// to the exit code (0 passed, 1 a check failed, 2 setup error).
fn block_on(threads: Option<usize>, scenario: impl Future<Output = Result<bool, String>>) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start tokio: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(scenario) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::from(2)
        }
    }
}

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
async fn run(args: Args) -> Result<bool, String> {
    let target = Target::resolve(&args.url).await?;
    let sale_info = preflight(&target, &args).await?;

    // Connect to the stores before the load so the flush-lag measurement
    // does not include connection setup.
    let redis = match &args.redis_url {
        Some(url) => Some(scenarios::sale::checks::connect_redis(url).await),
        None => None,
    };
    let mut pg = match &args.database_url {
        Some(url) => Some(scenarios::sale::checks::connect_pg(url).await),
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
            let handle = scenarios::sale::checks::spawn_flush_watch(conn, progress.clone(), args.items as u64, stop_rx);
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
    let (load, cpu_start) = scenarios::sale::load::run_load(cfg, || cpu_split.snapshot()).await;
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
            let outcome =
                scenarios::sale::checks::pg_checks(conn, exp, Duration::from_secs(args.flush_wait_secs), early_flush)
                    .await;
            flush_lag = outcome.flush_lag;
            invariants.extend(outcome.invariants);
        }
    }
    match (&redis, &expected) {
        (None, _) => invariants.push(Invariant::skip("redis", "no --redis-url / REDIS_URL")),
        (Some(Err(e)), _) => invariants.push(Invariant::fail("redis", e.clone())),
        (Some(Ok(_)), None) => invariants.push(Invariant::fail("redis", "no sale id known")),
        (Some(Ok(client)), Some(exp)) => {
            invariants.extend(scenarios::sale::checks::redis_checks(client, &args.key_prefix, exp).await);
        }
    }

    let baseline = match (&redis, &args.redis_url) {
        _ if !engine => Some(scenarios::sale::redis_bench::Baseline {
            evalsha_per_sec: None,
            note: "not run against the baseline server (run.sh runs it with the engine)".into(),
        }),
        (Some(Ok(client)), Some(url)) if args.baseline => {
            println!("running the redis-benchmark baseline ...");
            Some(
                scenarios::sale::redis_bench::run(
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
        _ => Some(scenarios::sale::redis_bench::Baseline {
            evalsha_per_sec: None,
            note: "no usable Redis connection".into(),
        }),
    };

    let summary = Summary {
        scenario: &args.scenario_name,
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
    scenarios::sale::report::emit_json(args.json.as_deref(), &summary.to_json())?;

    if let Some(Ok(client)) = &redis {
        let _ = fred::prelude::ClientLike::quit(client).await;
    }
    Ok(summary.passed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Option<Args>, String> {
        Args::parse(line.split_whitespace().map(str::to_string))
    }

    #[test]
    fn contest_defaults() {
        let a = parse("contest --redis-url redis://x:1 --database-url postgres://y")
            .unwrap()
            .unwrap();
        assert_eq!((a.users, a.items, a.limit, a.connections), (1000, 10_000, 10, 1000));
        assert_eq!(a.redis_url.as_deref(), Some("redis://x:1"));
    }

    #[test]
    fn sustained_uses_fewer_connections_than_users() {
        let a = parse("sustained").unwrap().unwrap();
        assert_eq!((a.users, a.items, a.connections), (20_000, 200_000, 1000));
        assert_eq!(a.scenario, Scenario::Contest);
    }

    #[test]
    fn rejects_bad_contest_shapes() {
        assert!(parse("contest --users 1000 --items 10000 --limit 10").is_ok());
        assert!(parse("contest --users 1000 --items 20000 --limit 10").is_err());
        assert!(parse("contest --users 3 --items 10").is_err());
        assert!(parse("contest --users 10 --connections 11 --items 10").is_err());
        assert!(parse("contest --bogus 1").is_err());
        assert!(parse("nope").is_err());
        assert!(parse("contest --help").unwrap().is_none());
    }

    #[test]
    fn server_kind_and_pid() {
        let a = parse("contest --server baseline --server-pid 42").unwrap().unwrap();
        assert_eq!((a.server, a.server_pid), (ServerKind::Baseline, Some(42)));
        let a = parse("sustained").unwrap().unwrap();
        assert_eq!((a.server, a.server_pid), (ServerKind::Engine, None));
        assert!(parse("contest --server nginx").is_err());
        assert!(parse("contest --server-pid x").is_err());
    }

    #[test]
    fn equals_form() {
        let a = parse("contention --users=10 --items=3").unwrap().unwrap();
        assert_eq!((a.users, a.items, a.connections), (10, 3, 10));
    }
}
