//! The `orders` scenario: B buyers over P products of limited stock.
//!
//! Each connection runs a mix of operations one after another: plain orders
//! (70%), holds that are confirmed (10%), cancelled (5%) or left to expire
//! (5%), and orders with an `Idempotency-Key` sent twice (10%, the retry
//! must get the same status and body). Demand exceeds the stock, so products
//! sell out under load. At the end it checks every invariant: for each
//! product `available + reserved + sold = stock_total`, `available >= 0`,
//! no hold left once they expired, sold equal to what the driver was told
//! was completed, and `GET /admin/reconcile` ok (Postgres equal to Redis).
//! It reports orders/s (`POST /orders` decided per second) and p50/p99.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::RngExt;
use serde_json::{Value, json};

use crate::common::at_least_one;
use crate::common::http::{Conn, Method, Outcome, Target};

/// Flags of `loadtest orders`.
#[derive(Debug, Clone, clap::Args)]
pub struct OrdersArgs {
    /// The engine's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The engine's STAMPEDE_ADMIN_TOKEN (products are created as admin).
    #[arg(long, env = "STAMPEDE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// Products.
    #[arg(long, default_value_t = 20, value_parser = at_least_one())]
    products: usize,
    /// Stock of each product.
    #[arg(long, default_value_t = 5000)]
    stock: i64,
    /// Distinct buyer ids.
    #[arg(long, default_value_t = 2000, value_parser = at_least_one())]
    buyers: usize,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 200, value_parser = at_least_one())]
    connections: usize,
    /// Operations in all; an operation is 1 or 2 requests.
    #[arg(long, default_value_t = 150_000, value_parser = at_least_one())]
    operations: usize,
    /// The baseline server's requests/s in the same run, for the ratio.
    #[arg(long, value_name = "X")]
    baseline_rps: Option<f64>,
    /// Also write the JSON summary to PATH.
    #[arg(long, value_name = "PATH")]
    json: Option<std::path::PathBuf>,
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// What one connection saw.
struct ConnStats {
    /// POST /orders latencies, µs.
    orders_us: Histogram<u64>,
    /// Every request's latency, µs.
    all_us: Histogram<u64>,
    /// POST /orders answered 200 or 409 (decided).
    orders_decided: u64,
    orders_ok: u64,
    out_of_stock: u64,
    /// Quantity the driver was told is completed (plain, confirmed, keyed).
    completed_quantity: i64,
    confirmed: u64,
    cancelled: u64,
    left_to_expire: u64,
    replays_identical: u64,
    replays_differing: u64,
    unexpected: Vec<String>,
    requests: u64,
}

impl ConnStats {
    fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds");
        Self {
            orders_us: h(),
            all_us: h(),
            orders_decided: 0,
            orders_ok: 0,
            out_of_stock: 0,
            completed_quantity: 0,
            confirmed: 0,
            cancelled: 0,
            left_to_expire: 0,
            replays_identical: 0,
            replays_differing: 0,
            unexpected: Vec::new(),
            requests: 0,
        }
    }

    fn merge(&mut self, o: ConnStats) {
        let _ = self.orders_us.add(&o.orders_us);
        let _ = self.all_us.add(&o.all_us);
        self.orders_decided += o.orders_decided;
        self.orders_ok += o.orders_ok;
        self.out_of_stock += o.out_of_stock;
        self.completed_quantity += o.completed_quantity;
        self.confirmed += o.confirmed;
        self.cancelled += o.cancelled;
        self.left_to_expire += o.left_to_expire;
        self.replays_identical += o.replays_identical;
        self.replays_differing += o.replays_differing;
        self.requests += o.requests;
        if self.unexpected.len() < 20 {
            self.unexpected.extend(o.unexpected.into_iter().take(20));
        }
    }
}

/// One request on `conn`, reconnecting once if the connection is gone.
async fn call(
    conn: &mut Option<Conn>,
    target: &Target,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, bytes::Bytes, Duration), String> {
    for _ in 0..2 {
        if conn.as_ref().is_none_or(Conn::is_closed) {
            *conn = Some(Conn::connect(target, TIMEOUT).await?);
        }
        let Some(c) = conn.as_mut() else { continue };
        match c.request_with(target, method, path, headers, body, TIMEOUT).await {
            Outcome::Response { status, body, latency } => return Ok((status, body, latency)),
            Outcome::Timeout => return Err(format!("{path}: timeout")),
            Outcome::Transport(_) => *conn = None,
        }
    }
    Err(format!("{path}: transport failed twice"))
}

fn record(h: &mut Histogram<u64>, latency: Duration) {
    h.saturating_record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1));
}

async fn connection(args: Arc<OrdersArgs>, target: Target, products: Arc<Vec<u64>>, operations: usize) -> ConnStats {
    let mut stats = ConnStats::new();
    let mut conn: Option<Conn> = None;
    for op in 0..operations {
        let (roll, product, quantity, buyer, key) = {
            let mut rng = rand::rng();
            let product = products[rng.random_range(0..products.len())];
            let key = format!("k-{}-{op}-{}", rng.random::<u64>(), product);
            (
                rng.random_range(0..100u32),
                product,
                rng.random_range(1..=3i64),
                format!("b{}", rng.random_range(0..args.buyers)),
                key,
            )
        };
        let hold_secs = match roll {
            70..85 => Some(60),
            85..90 => Some(1),
            _ => None,
        };
        let mut body = json!({"product_id": product, "quantity": quantity, "buyer_id": buyer});
        if let Some(secs) = hold_secs {
            body["hold_secs"] = json!(secs);
        }
        let body = body.to_string();
        let keyed = roll >= 90;
        let headers: Vec<(&str, &str)> = if keyed {
            vec![("content-type", "application/json"), ("idempotency-key", &key)]
        } else {
            vec![("content-type", "application/json")]
        };
        let first = call(&mut conn, &target, Method::POST, "/orders", &headers, body.as_bytes()).await;
        stats.requests += 1;
        let (status, reply, latency) = match first {
            Ok(r) => r,
            Err(e) => {
                stats.unexpected.push(e);
                continue;
            }
        };
        record(&mut stats.orders_us, latency);
        record(&mut stats.all_us, latency);
        match status {
            200 => {
                stats.orders_decided += 1;
                stats.orders_ok += 1;
            }
            409 => {
                stats.orders_decided += 1;
                stats.out_of_stock += 1;
                continue;
            }
            other => {
                stats
                    .unexpected
                    .push(format!("POST /orders {other}: {}", String::from_utf8_lossy(&reply)));
                continue;
            }
        }
        let order: Value = serde_json::from_slice(&reply).unwrap_or(Value::Null);
        let id = order["id"].as_str().unwrap_or_default().to_owned();
        match (roll, keyed) {
            (_, true) => {
                stats.completed_quantity += quantity;
                // The retry of a client that did not see the answer.
                match call(&mut conn, &target, Method::POST, "/orders", &headers, body.as_bytes()).await {
                    Ok((again_status, again, latency)) => {
                        stats.requests += 1;
                        record(&mut stats.orders_us, latency);
                        record(&mut stats.all_us, latency);
                        stats.orders_decided += 1;
                        if again_status == status && again == reply {
                            stats.replays_identical += 1;
                        } else {
                            stats.replays_differing += 1;
                        }
                    }
                    Err(e) => stats.unexpected.push(e),
                }
            }
            (70..80, _) | (80..85, _) => {
                let action = if roll < 80 { "confirm" } else { "cancel" };
                let path = format!("/orders/{id}/{action}");
                match call(&mut conn, &target, Method::POST, &path, &[], b"").await {
                    Ok((200, _, latency)) => {
                        stats.requests += 1;
                        record(&mut stats.all_us, latency);
                        if action == "confirm" {
                            stats.confirmed += 1;
                            stats.completed_quantity += quantity;
                        } else {
                            stats.cancelled += 1;
                        }
                    }
                    Ok((other, body, _)) => stats
                        .unexpected
                        .push(format!("{action} {other}: {}", String::from_utf8_lossy(&body))),
                    Err(e) => stats.unexpected.push(e),
                }
            }
            (85..90, _) => stats.left_to_expire += 1,
            _ => stats.completed_quantity += quantity,
        }
    }
    stats
}

fn check(name: &str, ok: bool, detail: String) -> Value {
    let word = if ok { "PASS" } else { "FAIL" };
    println!("  [{word}] {name}: {detail}");
    json!({"name": name, "passed": ok, "detail": detail})
}

async fn admin(target: &Target, token: &str, method: Method, path: &str, body: &str) -> Result<(u16, Value), String> {
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let mut conn = None;
    let (status, body, _) = call(&mut conn, target, method, path, &headers, body.as_bytes()).await?;
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

pub async fn run(args: OrdersArgs) -> Result<bool, String> {
    if args.admin_token.is_empty() {
        return Err("orders needs --admin-token or STAMPEDE_ADMIN_TOKEN (products are created as admin)".into());
    }
    let target = Target::resolve(&args.url).await?;
    let mut products = Vec::new();
    for p in 0..args.products {
        let body = json!({"name": format!("load-{p}"), "stock": args.stock, "price_cents": 1999, "merchant_id": 1})
            .to_string();
        let (status, reply) = admin(&target, &args.admin_token, Method::POST, "/products", &body).await?;
        if status != 201 {
            return Err(format!("POST /products answered {status}: {reply}"));
        }
        products.push(reply["id"].as_u64().ok_or("product without id")?);
    }
    println!(
        "loadtest orders: {} products x {} stock, {} buyers, {} operations over {} connections against {} ...",
        args.products, args.stock, args.buyers, args.operations, args.connections, args.url
    );
    let products = Arc::new(products);
    let args = Arc::new(args);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let share = args.operations / args.connections + usize::from(c < args.operations % args.connections);
        tasks.push(tokio::spawn(connection(
            args.clone(),
            target.clone(),
            products.clone(),
            share,
        )));
    }
    let mut stats = ConnStats::new();
    for task in tasks {
        stats.merge(task.await.map_err(|e| format!("connection task: {e}"))?);
    }
    let elapsed = started.elapsed().as_secs_f64();

    // Holds of 1 s expire; the engine returns their stock within 1 s more.
    let mut invariants = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let (sold, reserved, bad_products) = loop {
        let (mut sold, mut reserved, mut bad_products) = (0i64, 0i64, Vec::new());
        let mut conn = None;
        for id in products.iter() {
            let (status, body, _) = call(&mut conn, &target, Method::GET, &format!("/products/{id}"), &[], b"").await?;
            let p: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let n = |f: &str| p[f].as_i64().unwrap_or(i64::MIN);
            if status != 200
                || n("available") < 0
                || n("available") + n("reserved") + n("sold") != n("stock_total")
                || n("stock_total") != args.stock
            {
                bad_products.push(p.to_string());
            }
            sold += n("sold");
            reserved += n("reserved");
        }
        if reserved == 0 || Instant::now() > deadline {
            break (sold, reserved, bad_products);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("invariants:");
    invariants.push(check(
        "stock_invariant",
        bad_products.is_empty(),
        format!("available + reserved + sold = stock_total and available >= 0 on every product; bad: {bad_products:?}"),
    ));
    invariants.push(check(
        "holds_released",
        reserved == 0,
        format!("{reserved} still reserved 5 s after the load (holds of 1 s left to expire)"),
    ));
    invariants.push(check(
        "sold_equals_completed",
        sold == stats.completed_quantity,
        format!("Redis sold {sold}, driver told completed {}", stats.completed_quantity),
    ));
    let total_stock = args.stock * args.products as i64;
    invariants.push(check(
        "never_oversold",
        sold <= total_stock,
        format!(
            "sold {sold} of {total_stock}, {} OUT_OF_STOCK refusals{}",
            stats.out_of_stock,
            if stats.out_of_stock > 0 {
                " (demand exceeded stock)"
            } else {
                ""
            }
        ),
    ));
    invariants.push(check(
        "idempotent_replays",
        stats.replays_differing == 0,
        format!(
            "{} retries got the first answer, {} did not",
            stats.replays_identical, stats.replays_differing
        ),
    ));
    invariants.push(check(
        "no_unexpected_answer",
        stats.unexpected.is_empty(),
        format!("{:?}", stats.unexpected),
    ));
    // Waits for the flush itself; 503 BACKLOG_NOT_FLUSHED means retry.
    let mut reconcile = Value::Null;
    for _ in 0..12 {
        let (status, body) = admin(&target, &args.admin_token, Method::GET, "/admin/reconcile", "").await?;
        reconcile = body;
        if status == 200 {
            break;
        }
    }
    invariants.push(check(
        "reconcile_ok",
        reconcile["ok"] == json!(true),
        format!("Postgres = Redis: {reconcile}"),
    ));

    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    let orders_per_sec = stats.orders_decided as f64 / elapsed;
    let summary = json!({
        "scenario": "orders",
        "products": args.products,
        "stock_per_product": args.stock,
        "buyers": args.buyers,
        "connections": args.connections,
        "operations": args.operations,
        "elapsed_secs": elapsed,
        "requests": stats.requests,
        "requests_per_sec": stats.requests as f64 / elapsed,
        "orders_decided": stats.orders_decided,
        "orders_per_sec": orders_per_sec,
        "successful_orders_per_sec": stats.orders_ok as f64 / elapsed,
        "orders_ok": stats.orders_ok,
        "out_of_stock": stats.out_of_stock,
        "confirmed": stats.confirmed,
        "cancelled": stats.cancelled,
        "left_to_expire": stats.left_to_expire,
        "orders_p50_ms": q(&stats.orders_us, 0.5),
        "orders_p99_ms": q(&stats.orders_us, 0.99),
        "orders_max_ms": stats.orders_us.max() as f64 / 1000.0,
        "all_p50_ms": q(&stats.all_us, 0.5),
        "all_p99_ms": q(&stats.all_us, 0.99),
        "baseline_requests_per_sec": args.baseline_rps,
        "ratio_orders_to_baseline": args.baseline_rps.map(|b| orders_per_sec / b),
        "invariants": invariants,
    });
    println!(
        "orders: {:.0} orders/s ({} decided in {elapsed:.2} s; {} ok, {} out of stock), p50 {:.2} ms, p99 {:.2} ms; \
         all requests {:.0}/s",
        orders_per_sec,
        stats.orders_decided,
        stats.orders_ok,
        stats.out_of_stock,
        q(&stats.orders_us, 0.5),
        q(&stats.orders_us, 0.99),
        stats.requests as f64 / elapsed,
    );
    if let Some(b) = args.baseline_rps {
        println!(
            "baseline server: {b:.0} requests/s; orders/s / baseline = {:.2}",
            orders_per_sec / b
        );
    }
    let passed = summary["invariants"]
        .as_array()
        .is_some_and(|a| a.iter().all(|i| i["passed"] == json!(true)));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&summary).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(passed)
}
