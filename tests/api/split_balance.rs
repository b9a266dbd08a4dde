//! A split entity's load spread over the primaries of a cluster: on a
//! private 3-primary cluster, each part of the entity on its own primary,
//! a sale split in 3 (`STAMPEDE_SALE_SPLIT`) whose contest sells exactly
//! 10,000, also while every primary drops every connection every 200 ms,
//! and a product split in 3 (`STAMPEDE_STOCK_SPLIT`) that sells exactly its
//! stock with the invariant sampled during the run. Each primary's script
//! time (`INFO commandstats`: `cmdstat_evalsha` + `cmdstat_eval` usec, reset
//! once the engine is up) is within 2x of the others': with the parts on
//! one primary the others would show next to nothing.
//!
//! That figure is not a timing, and it holds for the contest's tail as well
//! as its bulk: the last buyers walk past thousands of sold items (one
//! buyer may send thousands of requests), and a refused checkout of a split
//! sale is one call on the item's part, which consecutive items spread over
//! every part, so the few buyers who walk longest load no part more than
//! the others.
//!
//! The tests take turns on one private cluster's ports (first port
//! `STAMPEDE_TEST_BALANCE_PORT`, default 7581), each starting it afresh.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use fred::interfaces::ClientLike;
use hyper::{Method, StatusCode};
use serde_json::json;
use stampede::redis::keyspace::Keyspace;
use stampede::sale::domain::UserId;
use stampede::sale::split::user_part;

use crate::helpers::{HttpClient, Reply, TestApp, send, spawn_app};
use crate::orders::{counts, create_product, product, reconcile_ok, statuses_in_postgres};
use crate::orders_split::{assert_split_invariant, sample_invariant};
use crate::private_cluster::PrivateCluster;
use crate::sale::{assert_contest_in_postgres, assert_contest_in_redis, contest, contest_finding_out};
use crate::sale_split::{check_counts, reservations_left};

/// The parts of a split entity.
const PARTS: u32 = 3;
const SALE_SPLIT: (&str, &str) = ("STAMPEDE_SALE_SPLIT", "3");
const STOCK_SPLIT: (&str, &str) = ("STAMPEDE_STOCK_SPLIT", "3");
/// Part p of entity n is on shard `(n + p) mod shards`, and shard i on
/// primary `i mod 3`: with a shard count that is a multiple of 3 the three
/// parts are on the three primaries whatever n is. With the default 8,
/// the entities whose parts wrap (n mod 8 = 6 or 7: shards 6, 7, 0 or 7, 0,
/// 1) have two parts on one primary and none on the third.
const SHARDS: (&str, &str) = ("STAMPEDE_OUTBOX_SHARDS", "9");
/// The contest's per-user limit.
const LIMIT: i64 = 10;
/// The most script time one primary may take against another's.
const BALANCE_MAX: u64 = 2;
/// Between two rounds of `CLIENT KILL TYPE normal` on every primary.
const DROP_EVERY: Duration = Duration::from_millis(200);

/// The tests share the ports: one cluster at a time.
static CLUSTER_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn start_cluster() -> PrivateCluster {
    let port = std::env::var("STAMPEDE_TEST_BALANCE_PORT")
        .ok()
        .map(|p| p.parse().expect("STAMPEDE_TEST_BALANCE_PORT is a port"))
        .unwrap_or(7581);
    PrivateCluster::start(port, 0)
}

/// The port of the primary that serves each part of entity `n`; asserts
/// they are three different primaries (the test's premise).
fn parts_on_primaries(cluster: &PrivateCluster, keys: &Keyspace, n: u64, what: &str) -> Vec<u16> {
    let ports: Vec<u16> = (0..PARTS)
        .map(|part| {
            let slot = fred::util::redis_keyslot(keys.outbox(keys.shard_of_part(n, part)).as_bytes());
            cluster.owner(cluster.port, slot).expect("every slot is served")
        })
        .collect();
    let mut distinct = ports.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        PARTS as usize,
        "{what} {n}: parts on primaries {ports:?}"
    );
    ports
}

/// Zeroes every primary's command statistics.
fn reset_stats(cluster: &PrivateCluster) {
    for port in cluster.primaries() {
        assert_eq!(cluster.cli(port, &["CONFIG", "RESETSTAT"]), "OK", "node {port}");
    }
}

/// What the primary on `port` spent on scripts since the last reset:
/// (calls, microseconds) of `cmdstat_evalsha` and `cmdstat_eval`.
fn script_stats(cluster: &PrivateCluster, port: u16) -> (u64, u64) {
    let info = cluster.cli(port, &["INFO", "commandstats"]);
    info.lines()
        .filter(|line| line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:"))
        .map(|line| {
            let (_, fields) = line.trim().split_once(':').expect("cmdstat_<name>:<fields>");
            let field = |name: &str| {
                fields
                    .split(',')
                    .find_map(|field| field.strip_prefix(name)?.strip_prefix('='))
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("no {name} in {line}"))
            };
            (field("calls"), field("usec"))
        })
        .fold((0, 0), |(calls, usec), (c, u)| (calls + c, usec + u))
}

/// Each primary's script (calls, usec) since the last reset, by port.
struct ScriptTime(BTreeMap<u16, (u64, u64)>);

impl ScriptTime {
    /// Reads and prints it.
    fn read(cluster: &PrivateCluster, what: &str) -> Self {
        let time = Self(
            cluster
                .primaries()
                .map(|port| (port, script_stats(cluster, port)))
                .collect(),
        );
        let (min, max) = time.range();
        println!(
            "split_balance: {what}: script (calls, usec) per primary {:?}; max / min usec = {:.2}",
            time.0,
            max as f64 / min.max(1) as f64
        );
        time
    }

    /// The least and the most usec of a primary.
    fn range(&self) -> (u64, u64) {
        let usec = self.0.values().map(|s| s.1);
        (usec.clone().min().unwrap_or(0), usec.max().unwrap_or(0))
    }

    /// The most is within `BALANCE_MAX` times the least, which is above 0.
    fn assert_spread(&self, what: &str) {
        let (min, max) = self.range();
        assert!(
            min > 0 && max <= BALANCE_MAX * min,
            "{what}: script (calls, usec) per primary {:?}: the most usec is not within {BALANCE_MAX}x the least",
            self.0
        );
    }
}

/// Opens every part of the sale (each part records the opening on its first
/// checkout) with a checkout by one user of each user part of an item of
/// each item part, so the statistics reset after it count the contest only.
async fn open_sale(app: &TestApp) {
    for part in 0..PARTS {
        let user = (0..)
            .map(|i| format!("opener-{i}"))
            .find(|name| user_part(&UserId::parse(Some(name)).expect("user id"), PARTS) == part)
            .expect("a user of each part");
        // Item i is on part i mod 3.
        app.code_for(&user, part + PARTS).await;
    }
    let current = app.get("/sales/current").await;
    assert_eq!(current.body["opened"], true, "{:?}", current.body);
}

/// 1000 buyers x 10 over 10,000 items of a sale split in 3, one part on
/// each primary: exactly 10,000 sold in Redis and Postgres, nobody over the
/// limit, and each primary's script time within 2x of the others'.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_sale_contest_spreads_script_time_over_the_primaries() {
    let _turn = CLUSTER_TURN.lock().await;
    let cluster = start_cluster();
    let app = spawn_app(&[("REDIS_URL", cluster.url.as_str()), SALE_SPLIT, SHARDS]).await;
    let sale = app.sale_id();
    let primaries = parts_on_primaries(&cluster, &app.ctx.keys, sale, "sale");
    open_sale(&app).await;
    reset_stats(&cluster);

    let started = Instant::now();
    let sent = contest(&app.http, app.addr).await;
    let took = started.elapsed();
    let time = ScriptTime::read(&cluster, "sale contest");
    println!(
        "split_balance: sale {sale} on primaries {primaries:?}: contest in {:.1} s, {} requests, at most {} of \
         one buyer",
        took.as_secs_f64(),
        sent.requests,
        sent.most_of_one_buyer
    );
    let redis = cluster.client().await;
    assert_contest_in_redis(&redis, &app.prefix, sale).await;
    app.wait_flushed(Duration::from_secs(30)).await;
    assert_contest_in_postgres(&app.db, sale).await;
    let _ = redis.quit().await;
    time.assert_spread("sale contest");
    app.finish().await;
    drop(cluster);
}

/// Rounds of `CLIENT KILL TYPE normal` on every primary, `DROP_EVERY`
/// apart, while `running`: every connection of the engine is dropped, in
/// the middle of calls or between them. Each primary's killing client
/// skips itself (`SKIPME yes`). Returns (rounds, connections closed).
async fn drop_connections(cluster: &PrivateCluster, running: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, i64)> {
    let mut killers = Vec::new();
    for port in cluster.primaries() {
        let url = format!("redis://127.0.0.1:{port}");
        let killer = fred::clients::Client::new(
            fred::types::config::Config::from_url(&url).expect("node URL parses"),
            None,
            None,
            None,
        );
        killer.init().await.expect("killer connects");
        killers.push(killer);
    }
    tokio::spawn(async move {
        let (mut rounds, mut closed) = (0u64, 0i64);
        while running.load(Ordering::SeqCst) {
            for killer in &killers {
                let n: i64 = killer
                    .custom(fred::cmd!("CLIENT"), vec!["KILL", "TYPE", "normal", "SKIPME", "yes"])
                    .await
                    .expect("CLIENT KILL");
                closed += n;
            }
            rounds += 1;
            tokio::time::sleep(DROP_EVERY).await;
        }
        for killer in killers {
            let _ = killer.quit().await;
        }
        (rounds, closed)
    })
}

/// Moves the engine's manual clock on with real time while `running`: the
/// sweeper resolves a reservation left behind once the clock is past its
/// timeout, as it would on the system clock.
fn follow_real_time(app: &TestApp, running: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let clock = app.clock.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let mut followed = 0;
        while running.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let elapsed = started.elapsed().as_millis() as i64;
            clock.advance_ms(elapsed - followed);
            followed = elapsed;
        }
    })
}

/// The contest while every primary drops every connection every 200 ms:
/// buyers answered 503 find out what happened as a client would (the code
/// looked up, checked out again). Once the sweeper has resolved every
/// reservation left behind: exactly 10,000 sold, nobody over the limit,
/// Postgres equal to Redis per user, and the script time still within 2x
/// from primary to primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_sale_contest_under_dropped_connections_stays_exact_and_spread() {
    let _turn = CLUSTER_TURN.lock().await;
    let cluster = start_cluster();
    let app = spawn_app(&[
        ("REDIS_URL", cluster.url.as_str()),
        SALE_SPLIT,
        SHARDS,
        // Reservations left by purchases cut between their steps are
        // resolved 3 s after (the least the command timeout and queue
        // deadline allow), so the end state comes soon after the contest.
        ("STAMPEDE_SALE_RESERVATION_TIMEOUT_MS", "3000"),
    ])
    .await;
    let sale = app.sale_id();
    let primaries = parts_on_primaries(&cluster, &app.ctx.keys, sale, "sale");
    open_sale(&app).await;
    reset_stats(&cluster);

    let following = Arc::new(AtomicBool::new(true));
    let ticking = follow_real_time(&app, following.clone());
    let running = Arc::new(AtomicBool::new(true));
    let dropping = drop_connections(&cluster, running.clone()).await;
    let started = Instant::now();
    let met = contest_finding_out(&app.http, app.addr).await;
    let took = started.elapsed();
    running.store(false, Ordering::SeqCst);
    let (rounds, closed) = dropping.await.expect("dropping task");
    println!(
        "split_balance: sale {sale} on primaries {primaries:?}: contest under dropped connections in {:.1} s: \
         {rounds} rounds of CLIENT KILL closed {closed} connections; the buyers met {met:?}",
        took.as_secs_f64()
    );
    assert!(closed > 0, "the faults closed no connection");

    // The sweeper resolves the reservations purchases cut between their
    // steps left behind (a unit of the limit held, never an item).
    let redis = cluster.client().await;
    let swept = Instant::now();
    loop {
        let left = reservations_left(&redis, &app.prefix, sale).await;
        if left == 0 {
            break;
        }
        assert!(
            swept.elapsed() < Duration::from_secs(30),
            "{left} reservations left 30 s after the contest"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    following.store(false, Ordering::SeqCst);
    ticking.await.expect("clock task");
    println!(
        "split_balance: reservations resolved {:.1} s after the contest",
        swept.elapsed().as_secs_f64()
    );
    let time = ScriptTime::read(&cluster, "sale contest under dropped connections");
    assert_contest_in_redis(&redis, &app.prefix, sale).await;
    app.wait_flushed(Duration::from_secs(60)).await;
    assert_contest_in_postgres(&app.db, sale).await;
    check_counts(&redis, &app.prefix, sale, &app.db, LIMIT).await;
    let _ = redis.quit().await;
    time.assert_spread("sale contest under dropped connections");
    app.finish().await;
    drop(cluster);
}

/// Orders in flight at once.
const ORDERERS: u32 = 200;

/// One order of one unit by `buyer`; a 503 that says it was not carried
/// out (`OVERLOADED`: shed before Redis) is sent again after its
/// `Retry-After`.
async fn order_one(http: &HttpClient, addr: SocketAddr, id: u64, buyer: &str) -> Reply {
    let body = json!({"product_id": id, "quantity": 1, "buyer_id": buyer}).to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = send(http, addr, Method::POST, "/orders", Some(&body))
            .await
            .expect("engine answers");
        if (reply.status, reply.error_code()) != (StatusCode::SERVICE_UNAVAILABLE, "OVERLOADED") {
            return reply;
        }
        assert!(Instant::now() < deadline, "{buyer}: still shed after 60 s");
        let secs = reply.retry_after_secs().unwrap_or(1);
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
}

/// 4,000 buyers order one unit each of a product of stock 3,000 split in 3
/// (one bucket on each primary), 200 at a time, while the product is read
/// every 20 ms through `GET /products/{id}` (`split::read` over the three
/// slots) with the invariant asserted at every sample: exactly 3,000 sold,
/// every other order `OUT_OF_STOCK`, Postgres equal to Redis, and the
/// script time within 2x from primary to primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_product_orders_keep_the_invariant_and_spread_script_time() {
    const STOCK: i64 = 3_000;
    const ORDERS: u32 = 4_000;
    let _turn = CLUSTER_TURN.lock().await;
    let cluster = start_cluster();
    let app = spawn_app(&[("REDIS_URL", cluster.url.as_str()), STOCK_SPLIT, SHARDS]).await;
    let id = create_product(&app, STOCK, 1999, 0).await;
    let primaries = parts_on_primaries(&cluster, &app.ctx.keys, id, "product");
    assert_split_invariant(&product(&app, id).await);
    reset_stats(&cluster);

    let running = Arc::new(AtomicBool::new(true));
    let sampler = sample_invariant(
        app.http.clone(),
        app.addr,
        id,
        Duration::from_millis(20),
        running.clone(),
    );
    let started = Instant::now();
    let next = Arc::new(AtomicU32::new(0));
    let mut orderers = Vec::new();
    for _ in 0..ORDERERS {
        let (http, addr, next) = (app.http.clone(), app.addr, next.clone());
        orderers.push(tokio::spawn(async move {
            let (mut ok, mut out_of_stock) = (0u32, 0u32);
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= ORDERS {
                    return (ok, out_of_stock);
                }
                let reply = order_one(&http, addr, id, &format!("buyer-{n}")).await;
                match (reply.status, reply.error_code()) {
                    (StatusCode::OK, _) => {
                        assert_eq!(reply.body["status"], "completed", "{:?}", reply.body);
                        ok += 1;
                    }
                    (StatusCode::CONFLICT, "OUT_OF_STOCK") => out_of_stock += 1,
                    other => panic!("order of buyer-{n}: unexpected {other:?} {:?}", reply.body),
                }
            }
        }));
    }
    let (mut ok, mut out_of_stock) = (0, 0);
    for orderer in orderers {
        let (o, s) = orderer.await.expect("orderer");
        ok += o;
        out_of_stock += s;
    }
    let took = started.elapsed();
    running.store(false, Ordering::SeqCst);
    let (samples, moving) = sampler.await.expect("sampler");
    let time = ScriptTime::read(&cluster, "split product orders");
    let p = product(&app, id).await;
    println!(
        "split_balance: product {id} on primaries {primaries:?}: {ORDERS} orders in {:.1} s; \
         {samples} samples of the invariant ({moving} reads answered 503: stock kept moving); \
         sold per bucket {:?}",
        took.as_secs_f64(),
        p["split"]["buckets"]
            .as_array()
            .expect("buckets")
            .iter()
            .map(|b| b["sold"].as_i64().expect("sold"))
            .collect::<Vec<_>>()
    );
    assert!(samples > 0, "the invariant was never sampled");
    assert_eq!(
        (i64::from(ok), i64::from(out_of_stock)),
        (STOCK, i64::from(ORDERS) - STOCK),
        "exactly the stock sold"
    );
    assert_split_invariant(&p);
    assert_eq!(counts(&p), (STOCK, 0, 0, STOCK));
    app.wait_flushed(Duration::from_secs(30)).await;
    assert_eq!(statuses_in_postgres(&app, id).await["completed"], (STOCK, STOCK));
    reconcile_ok(&app).await;
    time.assert_spread("split product orders");
    app.finish().await;
    drop(cluster);
}
