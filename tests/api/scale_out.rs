//! Scale-out: several engine processes behind one port (`SO_REUSEPORT`), and
//! acknowledged writes that survive a primary's failover (`WAIT`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::clients::Client as RedisClient;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::config::Config as RedisConfig;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::helpers::{
    ADMIN_TOKEN, EngineProcess, HttpClient, create_database, database_url, delete_keys, drop_database, engine_keys,
    free_port, http_client, redis_client, send, send_with, unique_name,
};
use crate::private_cluster::PrivateCluster;
use crate::sale::{CONTEST_ITEMS, assert_contest_in_postgres, contest};

/// A sale period of a day (the longest allowed): engines run as processes on
/// the system clock, and a sale that rolled over mid-test would refuse codes.
const SALE_PERIOD: (&str, &str) = ("SALE_PERIOD_SECS", "86400");

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `GET /admin/reconcile` until the backlog is flushed; its body.
async fn reconcile(http: &HttpClient, at: SocketAddr) -> Value {
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = send_with(
            http,
            at,
            Method::GET,
            "/admin/reconcile",
            None,
            &[("authorization", &admin)],
        )
        .await
        .expect("reconcile answers");
        if reply.status == StatusCode::OK {
            return reply.body;
        }
        assert_eq!(reply.error_code(), "BACKLOG_NOT_FLUSHED", "{:?}", reply.body);
        assert!(Instant::now() < deadline, "the backlog was not flushed within a minute");
    }
}

async fn current_sale(http: &HttpClient, at: SocketAddr) -> u64 {
    let reply = send(http, at, Method::GET, "/sales/current", None)
        .await
        .expect("sale answers");
    reply.body["sale_id"].as_u64().expect("sale_id")
}

/// Requests an engine served on a route, from its own `/metrics`.
async fn served(http: &HttpClient, at: SocketAddr, route: &str) -> u64 {
    let reply = send_raw_metrics(http, at).await;
    let label = format!("route=\"{route}\"");
    reply
        .lines()
        .filter(|l| l.starts_with("stampede_http_requests_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn send_raw_metrics(http: &HttpClient, at: SocketAddr) -> String {
    use http_body_util::BodyExt;
    let bearer = format!("Bearer {}", crate::helpers::test_keys().all);
    let req = hyper::Request::get(format!("http://{at}/metrics"))
        .header("authorization", bearer)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let res = http.request(req).await.expect("metrics answer");
    let body = res.into_body().collect().await.expect("metrics body").to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// Three engine processes share one port with `STAMPEDE_REUSEPORT=on`, each
/// also on its own address (for its health and metrics). The contest runs
/// through the shared port only: exactly 10,000 items sold, no buyer over the
/// limit, Postgres equal to Redis; and the kernel gave each engine some of
/// the connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_engines_on_one_port_sell_exactly_ten_thousand_items() {
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    let shared = addr(free_port());
    let mut engines = Vec::new();
    for i in 0..3 {
        let own = addr(free_port());
        let consumer = format!("{name}-engine-{i}");
        let extra = [("STAMPEDE_REUSEPORT", "on"), SALE_PERIOD];
        engines.push(EngineProcess::start_listening(&db_url, &name, &consumer, &[own, shared], &extra).await);
    }
    let http = http_client();
    let sale = current_sale(&http, shared).await;
    let started = Instant::now();
    contest(&http, shared).await;
    println!(
        "contest through one port over 3 engines: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let current = send(&http, shared, Method::GET, "/sales/current", None)
        .await
        .expect("sale answers");
    assert_eq!(current.body["sale_id"], json!(sale), "the sale rolled over mid-test");
    assert_eq!(current.body["items_sold"], json!(CONTEST_ITEMS));

    let report = reconcile(&http, shared).await;
    assert_eq!(report["ok"], json!(true), "{report}");
    let db = sqlx::PgPool::connect(&db_url).await.expect("db");
    assert_contest_in_postgres(&db, sale).await;
    db.close().await;

    let mut per_engine = Vec::new();
    for engine in &engines {
        per_engine.push(served(&http, engine.addr, "checkout").await + served(&http, engine.addr, "purchase").await);
    }
    println!("checkouts + purchases served per engine: {per_engine:?}");
    assert!(
        per_engine.iter().all(|&n| n > 0),
        "every engine served some of the connections: {per_engine:?}"
    );
    for engine in &mut engines {
        assert!(engine.terminate().success(), "SIGTERM exits 0");
    }
    drop_database(&database_url(), &name).await;
    delete_keys(&redis_client().await, &name).await;
}

/// The failover test's cluster ports: 6 nodes from here, bus ports +10000,
/// all below the ephemeral range (32768) as `services.sh` requires.
const FAILOVER_CLUSTER_PORT: u16 = 7611;

/// What the load saw, shared by its tasks.
#[derive(Default)]
struct Seen {
    /// Purchases answered 200: (user, item, when the request was sent).
    purchases: Mutex<Vec<(String, u32, Instant)>>,
    /// Orders answered 200: (id, product, when the request was sent).
    orders: Mutex<Vec<(String, u64, Instant)>>,
    unavailable: AtomicUsize,
    cut: AtomicUsize,
    /// The first purchase sent after the kill that succeeded: its answer.
    recovered: Mutex<Option<Instant>>,
    killed: Mutex<Option<Instant>>,
}

impl Seen {
    fn failed(&self, reply: &Result<crate::helpers::Reply, String>, what: &str) {
        match reply {
            Ok(r) if r.status == StatusCode::SERVICE_UNAVAILABLE => {
                self.unavailable.fetch_add(1, Ordering::SeqCst);
            }
            Ok(r) => panic!("{what}: unexpected {} {:?}", r.status, r.body),
            Err(_) => {
                self.cut.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn purchases_sent_after(&self, at: Instant) -> usize {
        let purchases = self.purchases.lock().expect("lock");
        purchases.iter().filter(|p| p.2 > at).count()
    }

    fn orders_sent_after(&self, at: Instant) -> usize {
        let orders = self.orders.lock().expect("lock");
        orders.iter().filter(|o| o.2 > at).count()
    }
}

const FAILOVER_BUYER_TASKS: u32 = 24;
const FAILOVER_ORDER_TASKS: u32 = 8;
const FAILOVER_ITEMS: u32 = 1_000_000;

/// Purchases through `engines` in turn: a new buyer each time, each task on
/// its own items, so every refusal but a 503 would be a bug.
fn buyer_load(
    task: u32,
    http: HttpClient,
    engines: Vec<SocketAddr>,
    seen: Arc<Seen>,
    running: Arc<AtomicBool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0u32;
        while running.load(Ordering::SeqCst) {
            let item = task + 1 + n * FAILOVER_BUYER_TASKS;
            assert!(item <= FAILOVER_ITEMS, "the load ran out of items");
            let user = format!("f{task}-{n}");
            let at = engines[n as usize % engines.len()];
            n += 1;
            let sent = Instant::now();
            let checkout = send(
                &http,
                at,
                Method::POST,
                &format!("/checkout?user_id={user}&id={item}"),
                None,
            )
            .await;
            let code = match &checkout {
                Ok(r) if r.status == StatusCode::OK => r.body["code"].as_str().expect("code").to_owned(),
                _ => {
                    seen.failed(&checkout, "checkout");
                    continue;
                }
            };
            let purchase = send(&http, at, Method::POST, &format!("/purchase?code={code}"), None).await;
            match &purchase {
                Ok(r) if r.status == StatusCode::OK => {
                    let done = Instant::now();
                    seen.purchases.lock().expect("lock").push((user, item, sent));
                    let killed = *seen.killed.lock().expect("lock");
                    if let Some(killed) = killed
                        && sent > killed
                    {
                        seen.recovered.lock().expect("lock").get_or_insert(done);
                    }
                }
                _ => seen.failed(&purchase, "purchase"),
            }
        }
    })
}

/// Completed orders of one unit, over `products`, through `engines`.
fn order_load(
    task: u32,
    http: HttpClient,
    engines: Vec<SocketAddr>,
    products: Vec<u64>,
    seen: Arc<Seen>,
    running: Arc<AtomicBool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0usize;
        while running.load(Ordering::SeqCst) {
            let product = products[n % products.len()];
            let at = engines[n % engines.len()];
            let body = json!({"product_id": product, "quantity": 1, "buyer_id": format!("o{task}-{n}")}).to_string();
            n += 1;
            let sent = Instant::now();
            let reply = send(&http, at, Method::POST, "/orders", Some(&body)).await;
            match &reply {
                Ok(r) if r.status == StatusCode::OK => {
                    let id = r.body["id"].as_str().expect("order id").to_owned();
                    seen.orders.lock().expect("lock").push((id, product, sent));
                }
                _ => seen.failed(&reply, "order"),
            }
        }
    })
}

/// Waits until `done()` holds, failing after `within` with `what` and what
/// the load saw.
async fn wait_until(within: Duration, what: &str, seen: &Seen, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} within {within:?}; so far {} purchases and {} orders acknowledged, {} answered 503, {} cut",
            seen.purchases.lock().expect("lock").len(),
            seen.orders.lock().expect("lock").len(),
            seen.unavailable.load(Ordering::SeqCst),
            seen.cut.load(Ordering::SeqCst),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A primary is killed with SIGKILL under purchase and order load, on a
/// private cluster with one replica per primary, two engines with
/// `STAMPEDE_REDIS_WAIT_REPLICAS=1`. The killed primary is the one holding
/// the sale's shard, so every purchase goes to it. Its replica is promoted,
/// the engines find it without a restart, and every purchase and order
/// acknowledged before, during and after is in Redis and in Postgres, none
/// twice, with the stock invariant and reconcile intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_a_primary_failover() {
    let cluster = PrivateCluster::start(FAILOVER_CLUSTER_PORT, 1);
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    let items = FAILOVER_ITEMS.to_string();
    let extra = [
        ("REDIS_URL", cluster.url.as_str()),
        ("STAMPEDE_REDIS_WAIT_REPLICAS", "1"),
        ("ITEMS_PER_SALE", items.as_str()),
        ("STAMPEDE_FLUSH_LINGER_MS", "10"),
        SALE_PERIOD,
    ];
    let a = EngineProcess::start(&db_url, &name, &format!("{name}-a"), &extra).await;
    let b = EngineProcess::start(&db_url, &name, &format!("{name}-b"), &extra).await;
    let engines = vec![a.addr, b.addr];
    let http = http_client();
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let mut products = Vec::new();
    for _ in 0..4 {
        let body = json!({"name": "Failover", "stock": 1_000_000, "price_cents": 10, "merchant_id": 1}).to_string();
        let created = send_with(
            &http,
            a.addr,
            Method::POST,
            "/products",
            Some(&body),
            &[("authorization", &admin)],
        )
        .await
        .expect("create product");
        assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
        products.push(created.body["id"].as_u64().expect("product id"));
    }
    let sale = current_sale(&http, a.addr).await;
    // Where the engines put the sale: the layout they recorded at start.
    // Read on a client of its own, closed before the kill: a test client
    // has no reconnect policy, and one kept across the failover would wait
    // forever on the dead node.
    let keys = {
        let redis = cluster_client(&cluster.url).await;
        let keys = engine_keys(&redis, &name).await;
        let _ = redis.quit().await;
        keys
    };
    let shard = keys.shard_of_number(sale);
    let sale_slot = fred::util::redis_keyslot(keys.outbox(shard).as_bytes());
    let victim = cluster
        .owner(FAILOVER_CLUSTER_PORT, sale_slot)
        .expect("the sale's slot has a primary");

    let seen = Arc::new(Seen::default());
    let running = Arc::new(AtomicBool::new(true));
    let mut load = Vec::new();
    for task in 0..FAILOVER_BUYER_TASKS {
        load.push(buyer_load(
            task,
            http.clone(),
            engines.clone(),
            seen.clone(),
            running.clone(),
        ));
    }
    for task in 0..FAILOVER_ORDER_TASKS {
        load.push(order_load(
            task,
            http.clone(),
            engines.clone(),
            products.clone(),
            seen.clone(),
            running.clone(),
        ));
    }
    let begun = Instant::now();
    wait_until(
        Duration::from_secs(60),
        "300 purchases and 100 orders before the kill",
        &seen,
        || seen.purchases_sent_after(begun) >= 300 && seen.orders_sent_after(begun) >= 100,
    )
    .await;

    cluster.kill_9(victim);
    let killed = Instant::now();
    *seen.killed.lock().expect("lock") = Some(killed);
    let witness = cluster.ports().find(|&p| p != victim).expect("another node");
    wait_until(Duration::from_secs(30), "a replica promoted", &seen, || {
        cluster.owner(witness, sale_slot).is_some_and(|p| p != victim)
    })
    .await;
    let promoted = Instant::now();
    let new_primary = cluster.owner(witness, sale_slot).expect("promoted");
    // The promoted replica has no replica of its own: with WAIT 1 every
    // write to its slots answers 503 (none is lost) until one is in sync
    // again, here the killed node, restarted.
    cluster.restart(victim);
    wait_until(
        Duration::from_secs(60),
        "the restarted node in sync as a replica",
        &seen,
        || cluster.has_online_replica(new_primary),
    )
    .await;
    let rejoined = Instant::now();
    wait_until(
        Duration::from_secs(60),
        "200 purchases and 100 orders sent after the promotion succeed (the engines recovered)",
        &seen,
        || seen.purchases_sent_after(promoted) >= 200 && seen.orders_sent_after(promoted) >= 100,
    )
    .await;
    running.store(false, Ordering::SeqCst);
    for task in load {
        task.await.expect("load task");
    }

    let recovered = seen
        .recovered
        .lock()
        .expect("lock")
        .expect("a purchase sent after the kill succeeded");
    let purchases = seen.purchases.lock().expect("lock").clone();
    let orders = seen.orders.lock().expect("lock").clone();
    println!(
        "failover: killed primary {victim}, replica {new_primary} promoted after {:.2} s, the killed node back in \
         sync as its replica after {:.2} s; first purchase sent after the kill succeeded {:.2} s after it; {} \
         purchases and {} orders acknowledged; {} answered 503, {} cut",
        (promoted - killed).as_secs_f64(),
        (rejoined - killed).as_secs_f64(),
        (recovered - killed).as_secs_f64(),
        purchases.len(),
        orders.len(),
        seen.unavailable.load(Ordering::SeqCst),
        seen.cut.load(Ordering::SeqCst),
    );

    // Redis: every acknowledged purchase's item is sold, every acknowledged
    // order is there.
    let redis = cluster_client(&cluster.url).await;
    let sold_key = keys.key(shard, format_args!("sale:{sale}:sold"));
    for (user, item, _) in &purchases {
        let bit: i64 = redis
            .custom(fred::cmd!("GETBIT"), vec![sold_key.clone(), item.to_string()])
            .await
            .expect("GETBIT");
        assert_eq!(
            bit, 1,
            "the purchase of item {item} by {user} was acknowledged but is lost in Redis"
        );
    }
    for (id, _, _) in &orders {
        let order = stampede::orders::domain::OrderId::parse(Some(id)).expect("an engine's order id");
        let exists: i64 = redis
            .exists(stampede::orders::lua::order_key(&keys, &order))
            .await
            .expect("EXISTS");
        assert_eq!(exists, 1, "order {id} was acknowledged but is lost in Redis");
    }

    // Postgres equals Redis (sales and products, the stock invariant), and
    // holds every acknowledged write once.
    let report = reconcile(&http, a.addr).await;
    assert_eq!(report["ok"], json!(true), "{report}");
    let db = sqlx::PgPool::connect(&db_url).await.expect("db");
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT user_id, item_id::bigint FROM purchases WHERE sale_id = $1")
        .bind(sale as i64)
        .fetch_all(&db)
        .await
        .expect("purchases");
    let items_in_pg: HashSet<i64> = rows.iter().map(|r| r.1).collect();
    assert_eq!(items_in_pg.len(), rows.len(), "an item sold twice");
    let rows: HashSet<(String, i64)> = rows.into_iter().collect();
    for (user, item, _) in &purchases {
        assert!(
            rows.contains(&(user.clone(), i64::from(*item))),
            "acknowledged purchase of {item} by {user} missing from Postgres"
        );
    }
    let order_rows: Vec<String> = sqlx::query_scalar("SELECT id::text FROM orders")
        .fetch_all(&db)
        .await
        .expect("orders");
    let order_ids: HashSet<&String> = order_rows.iter().collect();
    assert_eq!(order_ids.len(), order_rows.len(), "an order twice");
    for (id, _, _) in &orders {
        assert!(order_ids.contains(id), "acknowledged order {id} missing from Postgres");
    }
    for product in &products {
        let p = send(&http, b.addr, Method::GET, &format!("/products/{product}"), None)
            .await
            .expect("product");
        let n = |f: &str| p.body[f].as_i64().unwrap_or_else(|| panic!("{f} in {}", p.body));
        assert_eq!(
            n("available") + n("reserved") + n("sold"),
            n("stock_total"),
            "available + reserved + sold = stock_total: {}",
            p.body
        );
    }
    db.close().await;
    let _ = redis.quit().await;
    drop((a, b));
    drop_database(&database_url(), &name).await;
    drop(cluster);
}

/// A test client of the cluster at `url`, connected.
async fn cluster_client(url: &str) -> RedisClient {
    let redis = RedisClient::new(
        RedisConfig::from_url(url).expect("cluster URL parses"),
        None,
        None,
        None,
    );
    redis.init().await.expect("test client reaches the cluster");
    redis
}
