//! The `wallet` scenario: players bet, win and refund (a share of requests
//! sent twice with the same reference) while SSE clients stay connected,
//! one per player of the first `--sse-clients`. Reports operations/s, the
//! p99 of event delivery (from the 200 of a transaction to its `balance`
//! event on the player's stream), and checks conservation at the end: each
//! account's Redis balances equal the sums of its ledger rows in Postgres.
//!
//! `--server baseline` instead drives the baseline server's `POST /checkout`
//! over the same number of connections for `--secs`, and prints the
//! engine's operations/s as a ratio of its requests/s (`--engine-json`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::at_least_one;
use crate::common::http::{Conn, Method, Outcome, Target};
use crate::common::server::ServerKind;

/// Flags of `loadtest wallet`.
#[derive(Debug, Clone, clap::Args)]
pub struct WalletArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// engine, or baseline: `POST /checkout` of the baseline server over as
    /// many connections, for as long.
    #[arg(long, value_enum, default_value_t = ServerKind::Engine)]
    server: ServerKind,
    /// The server's process, for its CPU per operation.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Players.
    #[arg(long, default_value_t = 2000, value_parser = at_least_one())]
    players: usize,
    /// SSE clients, one per player of the first N (at most --players).
    #[arg(long, default_value_t = 1000)]
    sse_clients: usize,
    /// Keep-alive request connections.
    #[arg(long, default_value_t = 200, value_parser = at_least_one())]
    connections: usize,
    /// Load duration in seconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    secs: u64,
    /// Grants bonuses to half the players (none if unset).
    #[arg(long, env = "STAMPEDE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The engine's Postgres, for the conservation check.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    database_url: Option<String>,
    /// baseline: the engine run's summary, for the ratio.
    #[arg(long, value_name = "PATH")]
    engine_json: Option<PathBuf>,
    /// Also write the JSON summary to PATH.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

const TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(mut args: WalletArgs) -> Result<bool, String> {
    if args.sse_clients > args.players {
        return Err("--sse-clients must be at most --players".into());
    }
    args.admin_token = args.admin_token.filter(|t| !t.is_empty());
    args.database_url = args.database_url.filter(|u| !u.is_empty());
    let target = Target::resolve(&args.url).await?;
    if args.server == ServerKind::Baseline {
        return baseline(&args, &target).await;
    }
    let started_cpu = args
        .server_pid
        .and_then(|pid| crate::common::proc::cpu::process_cpu(pid).ok());
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let player = |p: usize| format!("lw{run_id}-{p}");

    // Seed: a deposit each; a bonus for every other player (if admin).
    println!("wallet: seeding {} players", args.players);
    let mut conn = Conn::connect(&target, TIMEOUT).await?;
    for p in 0..args.players {
        let body = json!({"player_id": player(p), "currency": "EUR", "type": "deposit",
                          "amount_minor": 1_000_000, "reference_id": format!("{}-seed", player(p))});
        expect_ok(&mut conn, &target, "/wallet/transactions", "", &body).await?;
        if p % 2 == 0
            && let Some(token) = &args.admin_token
        {
            let body = json!({"player_id": player(p), "currency": "EUR", "amount_minor": 50_000,
                              "wagering_multiplier": 20, "expires_in_secs": 3600,
                              "contributions": {"slots": 100, "table": 20, "live": 10}});
            let auth = format!("Authorization: Bearer {token}\r\n");
            expect_status(&mut conn, &target, "/bonuses", &auth, &body, 201).await?;
        }
    }

    // SSE clients.
    let tracker = Arc::new(Tracker::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut sse = Vec::new();
    for p in 0..args.sse_clients {
        let (target, tracker, stop, name) = (target.clone(), tracker.clone(), stop.clone(), player(p));
        sse.push(tokio::spawn(async move {
            sse_client(&target, &name, &tracker, &stop).await
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
    let ops = Arc::new(AtomicU64::new(0));
    let unexpected = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(args.secs);
    let started = Instant::now();
    let mut workers = Vec::new();
    for c in 0..args.connections {
        let (target, tracker, ops, unexpected) = (target.clone(), tracker.clone(), ops.clone(), unexpected.clone());
        let mine: Vec<(String, bool)> = (c..args.players)
            .step_by(args.connections)
            .map(|p| (player(p), p < args.sse_clients))
            .collect();
        workers.push(tokio::spawn(async move {
            worker(&target, &mine, until, &tracker, &ops, &unexpected).await
        }));
    }
    for w in workers {
        w.await.map_err(|e| e.to_string())??;
    }
    let elapsed = started.elapsed();
    let ops = ops.load(Ordering::SeqCst);
    let cpu = match (args.server_pid, started_cpu) {
        (Some(pid), Some(before)) => crate::common::proc::cpu::process_cpu(pid)
            .ok()
            .map(|after| after - before),
        _ => None,
    };
    // Let the last events arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    for s in sse {
        s.abort();
    }
    let (hist, missing) = tracker.finish();
    let ops_per_sec = ops as f64 / elapsed.as_secs_f64();
    let p = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "wallet: {ops} operations in {:.1} s = {ops_per_sec:.0} ops/s; {} unexpected answers",
        elapsed.as_secs_f64(),
        unexpected.load(Ordering::SeqCst)
    );
    println!(
        "wallet: event delivery over {} events: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {missing} not delivered",
        hist.len(),
        p(0.5),
        p(0.99),
        hist.max() as f64 / 1000.0
    );
    if let Some(cpu) = cpu {
        println!(
            "wallet: engine CPU {:.1} µs per operation",
            cpu.as_secs_f64() * 1e6 / ops.max(1) as f64
        );
    }

    // Conservation.
    let conserved = match &args.database_url {
        Some(url) => Some(conservation(&target, url, args.players, &player).await?),
        None => None,
    };
    let passed = conserved.unwrap_or(true) && missing == 0 && unexpected.load(Ordering::SeqCst) == 0;
    let summary = json!({
        "scenario": "wallet", "server": "engine",
        "players": args.players, "sse_clients": args.sse_clients, "connections": args.connections,
        "operations": ops, "elapsed_secs": elapsed.as_secs_f64(), "ops_per_sec": ops_per_sec,
        "event_delivery_ms": {"count": hist.len(), "p50": p(0.5), "p99": p(0.99),
                              "max": hist.max() as f64 / 1000.0},
        "events_missing": missing,
        "unexpected_answers": unexpected.load(Ordering::SeqCst),
        "engine_cpu_us_per_op": cpu.map(|c| c.as_secs_f64() * 1e6 / ops.max(1) as f64),
        "conserved": conserved,
        "passed": passed,
    });
    write_json(&args.json, &summary)?;
    Ok(passed)
}

/// Transactions of the SSE players awaiting their event: tx id → when its
/// 200 was read; events that came first wait in `early`.
#[derive(Default)]
struct Tracker {
    waiting: Mutex<(HashMap<String, Instant>, HashMap<String, Instant>)>,
    latencies: Mutex<Vec<u64>>,
    connected: AtomicU64,
}

impl Tracker {
    fn answered(&self, tx: String) {
        if let Ok(mut maps) = self.waiting.lock() {
            if maps.1.remove(&tx).is_some() {
                // The event beat the 200 to the driver.
                if let Ok(mut l) = self.latencies.lock() {
                    l.push(0);
                }
            } else {
                maps.0.insert(tx, Instant::now());
            }
        }
    }

    fn delivered(&self, tx: String) {
        let now = Instant::now();
        if let Ok(mut maps) = self.waiting.lock() {
            match maps.0.remove(&tx) {
                Some(at) => {
                    if let Ok(mut l) = self.latencies.lock() {
                        l.push(now.duration_since(at).as_micros() as u64);
                    }
                }
                None => {
                    maps.1.insert(tx, now);
                }
            }
        }
    }

    fn finish(&self) -> (Histogram<u64>, usize) {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
        if let Ok(l) = self.latencies.lock() {
            for v in l.iter() {
                let _ = hist.record((*v).max(1));
            }
        }
        let missing = self.waiting.lock().map(|m| m.0.len()).unwrap_or(0);
        (hist, missing)
    }
}

async fn sse_client(target: &Target, player: &str, tracker: &Tracker, stop: &AtomicBool) -> Result<(), String> {
    let mut stream = TcpStream::connect(target.addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let req = format!(
        "GET /wallet/{player}/events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        target.authority
    );
    stream.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut counted = false;
    while !stop.load(Ordering::Relaxed) {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if !counted && buf.windows(4).any(|w| w == b"\r\n\r\n") {
            counted = true;
            tracker.connected.fetch_add(1, Ordering::SeqCst);
        }
        // Frames are whole chunks; scan complete `data:` lines only.
        let mut consumed = 0;
        let mut at = 0;
        while let Some(start) = find(&buf[at..], b"data: ").map(|i| at + i) {
            let Some(end) = find(&buf[start..], b"\n").map(|i| start + i) else {
                break;
            };
            if let Some(tx) = transaction_id(&buf[start + 6..end]) {
                tracker.delivered(tx);
            }
            at = end;
            consumed = end;
        }
        buf.drain(..consumed);
    }
    Ok(())
}

/// The `transaction_id` of a JSON object the engine wrote (it comes first,
/// and ids need no escaping), without parsing the rest.
fn transaction_id(json: &[u8]) -> Option<String> {
    let key = b"\"transaction_id\":\"";
    let start = find(json, key)? + key.len();
    let len = json[start..].iter().position(|&b| b == b'"')?;
    String::from_utf8(json[start..start + len].to_vec()).ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One connection: its players in turn bet, then win (2 in 5), refund (1 in
/// 10) or nothing; one request in 5 is sent twice with the same reference.
async fn worker(
    target: &Target,
    players: &[(String, bool)],
    until: Instant,
    tracker: &Tracker,
    ops: &AtomicU64,
    unexpected: &AtomicU64,
) -> Result<(), String> {
    let mut conn = Conn::connect(target, TIMEOUT).await?;
    let mut n: u64 = 0;
    let games = ["slots", "table", "live"];
    while Instant::now() < until {
        for (player, tracked) in players {
            if Instant::now() >= until {
                break;
            }
            n += 1;
            // References are unique across players (the engine refuses a
            // reference another player holds), so each carries its player.
            let bet_ref = format!("{player}-b{n}");
            let amount = 10 + (n % 50) as i64;
            // Bodies as text: the driver shares the CPUs with the engine.
            let game = games[(n % 3) as usize];
            let mut steps = vec![format!(
                r#"{{"player_id":"{player}","currency":"EUR","type":"bet","amount_minor":{amount},"reference_id":"{bet_ref}","game":"{game}"}}"#
            )];
            match n % 10 {
                0..=3 => steps.push(format!(
                    r#"{{"player_id":"{player}","currency":"EUR","type":"win","amount_minor":{},"reference_id":"{player}-w{n}","bet_reference_id":"{bet_ref}"}}"#,
                    amount * 2
                )),
                4 => steps.push(format!(
                    r#"{{"player_id":"{player}","currency":"EUR","type":"refund","amount_minor":{amount},"reference_id":"{player}-r{n}","bet_reference_id":"{bet_ref}"}}"#
                )),
                _ => {}
            }
            for (i, body) in steps.iter().enumerate() {
                let times = if (n + i as u64).is_multiple_of(5) { 2 } else { 1 };
                for attempt in 0..times {
                    if conn.is_closed() {
                        conn = Conn::connect(target, TIMEOUT).await?;
                    }
                    let bytes = body;
                    let outcome = conn
                        .request_with_body(
                            target,
                            Method::POST,
                            "/wallet/transactions",
                            "Content-Type: application/json\r\n",
                            bytes.as_bytes(),
                            TIMEOUT,
                        )
                        .await;
                    match outcome {
                        Outcome::Response { status: 200, body, .. } => {
                            ops.fetch_add(1, Ordering::Relaxed);
                            if *tracked
                                && attempt == 0
                                && let Some(tx) = transaction_id(&body)
                            {
                                tracker.answered(tx);
                            }
                        }
                        // A refusal is an answer too (funds, bet cap).
                        Outcome::Response { status: 409 | 422, .. } => {
                            ops.fetch_add(1, Ordering::Relaxed);
                        }
                        Outcome::Response { status, body, .. } => {
                            unexpected.fetch_add(1, Ordering::Relaxed);
                            eprintln!("wallet: unexpected {status}: {}", String::from_utf8_lossy(&body));
                        }
                        Outcome::Timeout => {
                            unexpected.fetch_add(1, Ordering::Relaxed);
                        }
                        Outcome::Transport(e) => return Err(e),
                    }
                }
            }
        }
    }
    Ok(())
}

async fn expect_status(
    conn: &mut Conn,
    target: &Target,
    path: &str,
    headers: &str,
    body: &Value,
    want: u16,
) -> Result<Value, String> {
    let headers = format!("Content-Type: application/json\r\n{headers}");
    let bytes = body.to_string();
    match conn
        .request_with_body(target, Method::POST, path, &headers, bytes.as_bytes(), TIMEOUT)
        .await
    {
        Outcome::Response { status, body, .. } if status == want => {
            serde_json::from_slice(&body).map_err(|e| e.to_string())
        }
        Outcome::Response { status, body, .. } => Err(format!("{path}: {status} {}", String::from_utf8_lossy(&body))),
        other => Err(format!("{path}: {other:?}")),
    }
}

async fn expect_ok(conn: &mut Conn, target: &Target, path: &str, headers: &str, body: &Value) -> Result<Value, String> {
    expect_status(conn, target, path, headers, body, 200).await
}

async fn get_json(conn: &mut Conn, target: &Target, path: &str) -> Result<(u16, Value), String> {
    match conn.request(target, Method::GET, path, TIMEOUT).await {
        Outcome::Response { status, body, .. } => Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null))),
        other => Err(format!("{path}: {other:?}")),
    }
}

/// Waits for the outbox to drain, then compares every account's Redis
/// balances with the sums of its ledger rows.
async fn conservation(
    target: &Target,
    database_url: &str,
    players: usize,
    player: &impl Fn(usize) -> String,
) -> Result<bool, String> {
    let mut conn = Conn::connect(target, TIMEOUT).await?;
    let started = Instant::now();
    loop {
        let (_, health) = get_json(&mut conn, target, "/health").await?;
        if health.get("outbox_backlog").and_then(Value::as_u64) == Some(0) {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the outbox did not drain within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "wallet: outbox drained {:.2} s after the load",
        started.elapsed().as_secs_f64()
    );
    let db = sqlx::PgPool::connect(database_url).await.map_err(|e| e.to_string())?;
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT player_id, sum(cash_delta_minor)::bigint, sum(bonus_delta_minor)::bigint, count(*)
         FROM wallet_entries GROUP BY player_id",
    )
    .fetch_all(&db)
    .await
    .map_err(|e| e.to_string())?;
    db.close().await;
    let sums: HashMap<String, (i64, i64, i64)> = rows.into_iter().map(|(p, c, b, n)| (p, (c, b, n))).collect();
    let mut bad = 0;
    let mut entries = 0;
    for p in 0..players {
        let name = player(p);
        let (_, w) = get_json(&mut conn, target, &format!("/wallet/{name}?currency=EUR")).await?;
        let redis = (
            w.get("cash_minor").and_then(Value::as_i64).unwrap_or(-1),
            w.get("bonus_minor").and_then(Value::as_i64).unwrap_or(-1),
        );
        let (cash, bonus, n) = sums.get(&name).copied().unwrap_or((0, 0, 0));
        entries += n;
        if redis != (cash, bonus) {
            bad += 1;
            if bad <= 5 {
                eprintln!("wallet: {name}: Redis {redis:?}, ledger sums ({cash}, {bonus})");
            }
        }
    }
    println!("wallet: conservation over {players} accounts and {entries} ledger rows: {bad} mismatches");
    Ok(bad == 0)
}

/// The baseline server's requests/s over the same connection count.
async fn baseline(args: &WalletArgs, target: &Target) -> Result<bool, String> {
    let count = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(args.secs);
    let started = Instant::now();
    let mut workers = Vec::new();
    for c in 0..args.connections {
        let (target, count) = (target.clone(), count.clone());
        workers.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&target, TIMEOUT).await?;
            let mut i: u64 = 0;
            while Instant::now() < until {
                i += 1;
                if conn.is_closed() {
                    conn = Conn::connect(&target, TIMEOUT).await?;
                }
                let path = format!("/checkout?user_id=bw{c}-{i}&id={}", 1 + (c as u64 * 7919 + i) % 10_000);
                if let Outcome::Response { .. } = conn.request(&target, Method::POST, &path, TIMEOUT).await {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<(), String>(())
        }));
    }
    for w in workers {
        w.await.map_err(|e| e.to_string())??;
    }
    let rps = count.load(Ordering::SeqCst) as f64 / started.elapsed().as_secs_f64();
    println!(
        "baseline server: {rps:.0} requests/s (POST /checkout) over {} connections for {} s",
        args.connections, args.secs
    );
    let mut summary = json!({"scenario": "baseline-load", "server": "baseline", "requests_per_sec": rps,
                             "connections": args.connections, "secs": args.secs});
    if let Some(path) = &args.engine_json {
        let engine: Value = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| format!("cannot read {}", path.display()))?;
        if let Some(ops) = engine.get("ops_per_sec").and_then(Value::as_f64) {
            let ratio = ops / rps;
            println!("wallet: engine {ops:.0} ops/s / baseline {rps:.0} req/s = {ratio:.2} (target >= 0.8)");
            summary["engine_ops_per_sec"] = json!(ops);
            summary["ratio"] = json!(ratio);
            summary["event_delivery_p99_ms"] = engine["event_delivery_ms"]["p99"].clone();
        }
    }
    write_json(&args.json, &summary)?;
    Ok(true)
}

fn write_json(path: &Option<PathBuf>, value: &Value) -> Result<(), String> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_vec_pretty(value).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
