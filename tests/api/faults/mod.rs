//! The fault suite: the engine under a mixed load (purchases, orders with and
//! without `Idempotency-Key`, wallet transactions) while real faults happen
//! to it: Redis connections cut mid-call, Redis killed and restarted,
//! Postgres stopped or slow to answer, a slow Redis link, a flood, a
//! misconfigured Redis.
//!
//! Every client keeps its own record of what it was told: the acknowledged
//! purchases, orders and transactions, and each 503 with what it needs to
//! find out what happened (the code, the order id or key, the reference).
//! After the fault the records are resolved the way a client would (a code
//! looked up, an order read, a transaction sent again with its reference),
//! and the invariants are checked against those records: nothing
//! acknowledged is lost, nothing is done twice, Redis and Postgres agree.
//!
//! A poison event in an outbox (set aside as a dead letter while its shard
//! flows on, replayed once fixed) is the dead letters' own test,
//! `tests/api/poison.rs`; a call cut exactly before or after Redis ran it,
//! `tests/api/at_most_once.rs`.

mod dropped_connections;
mod eviction_policy;
mod flood;
mod latency;
mod postgres_outage;
mod postgres_stall;
pub(crate) mod proxy;
mod redis_kill;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fred::interfaces::ClientLike;
use hyper::{Method, StatusCode};
use rand::RngExt;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::helpers::{ADMIN_TOKEN, HttpClient, Reply, TestApp, send_with};

/// Engine settings of the mixed-load cases: a sale large enough for every
/// buyer to buy items of its own, and no per-user limit in the way.
pub const MIXED_LOAD_ENGINE: [(&str, &str); 2] = [("ITEMS_PER_SALE", "1000000"), ("PER_USER_LIMIT", "1000000")];

/// Items of the sale reserved for each buyer: buyer b buys b × this + 1, …
const ITEMS_PER_BUYER: u64 = 20_000;

/// The cases that load the machine take turns: on 2 shared cores their
/// timings mean something only when they do not compete with each other.
pub static MACHINE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a client waits for an answer before it counts the call as lost.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// How long a player keeps sending a transaction again before giving up.
const DECIDE_WITHIN: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy)]
pub struct Product {
    pub id: u64,
    pub stock: i64,
}

/// Creates products of the given stocks through the admin API.
pub async fn create_products(http: &HttpClient, addr: SocketAddr, stocks: &[i64]) -> Vec<Product> {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let mut products = Vec::new();
    for (n, stock) in stocks.iter().enumerate() {
        let body = json!({"name": format!("fault-{n}"), "stock": stock, "price_cents": 500, "merchant_id": 1});
        let reply = send_with(
            http,
            addr,
            Method::POST,
            "/products",
            Some(&body.to_string()),
            &[("authorization", auth.as_str())],
        )
        .await
        .expect("engine answers");
        assert_eq!(reply.status, StatusCode::CREATED, "create product: {:?}", reply.body);
        let id = reply.body["id"].as_u64().expect("product id");
        products.push(Product { id, stock: *stock });
    }
    products
}

/// How many clients of each kind, and their pause between operations.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub buyers: usize,
    pub orderers: usize,
    pub players: usize,
    pub pause: Duration,
}

/// A purchase: its code (`<sale>-<hex>`) and item.
#[derive(Debug, Clone)]
pub struct Purchase {
    pub code: String,
    pub item: u64,
}

impl Purchase {
    fn sale(&self) -> i64 {
        self.code
            .split('-')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("a code starts with its sale")
    }
}

#[derive(Debug, Clone)]
pub struct Order {
    pub id: String,
    pub product: u64,
    pub quantity: i64,
}

/// An order whose outcome the client was not told.
#[derive(Debug, Clone)]
pub struct UnknownOrder {
    /// The id the engine chose, from the 503's body.
    pub order_id: Option<String>,
    /// `OVERLOADED` or `OUTBOX_FULL`: refused before anything was written
    /// (no id to look up; the counts check that nothing was).
    pub shed: bool,
    pub key: Option<String>,
    pub body: String,
    pub product: u64,
    pub quantity: i64,
}

/// An acknowledged wallet transaction.
#[derive(Debug, Clone)]
pub struct WalletTx {
    pub player: String,
    pub reference: String,
    pub delta: i64,
    /// Sent more than once (an earlier attempt answered 503 or nothing).
    pub resent: bool,
    /// The final answer was a replay: an earlier attempt had taken effect.
    pub replayed: bool,
}

/// What the clients were told.
#[derive(Debug, Default)]
pub struct Records {
    pub requests: u64,
    pub purchases: Vec<Purchase>,
    /// Purchases answered 503, or not answered at all.
    pub purchases_unknown: Vec<Purchase>,
    /// `CODE_USED` for a code its buyer sent once: only a resend explains it.
    pub own_code_used: Vec<String>,
    /// (sent at, latency) of every purchase.
    pub purchase_latencies: Vec<(Instant, Duration)>,
    pub orders: Vec<Order>,
    pub orders_unknown: Vec<UnknownOrder>,
    pub out_of_stock: u64,
    pub wallet: Vec<WalletTx>,
    pub players: Vec<String>,
    /// Transactions still answered 503 after `DECIDE_WITHIN`.
    pub wallet_undecided: Vec<String>,
    /// `"<route> <status> <code>"` → count, for the 503s and lost calls.
    pub unavailable: BTreeMap<String, u64>,
    pub unavailable_latencies: Vec<Duration>,
    pub unexpected: Vec<String>,
}

impl Records {
    fn merge(&mut self, other: Records) {
        self.requests += other.requests;
        self.purchases.extend(other.purchases);
        self.purchases_unknown.extend(other.purchases_unknown);
        self.own_code_used.extend(other.own_code_used);
        self.purchase_latencies.extend(other.purchase_latencies);
        self.orders.extend(other.orders);
        self.orders_unknown.extend(other.orders_unknown);
        self.out_of_stock += other.out_of_stock;
        self.wallet.extend(other.wallet);
        self.players.extend(other.players);
        self.wallet_undecided.extend(other.wallet_undecided);
        for (k, v) in other.unavailable {
            *self.unavailable.entry(k).or_default() += v;
        }
        self.unavailable_latencies.extend(other.unavailable_latencies);
        self.unexpected.extend(other.unexpected);
    }

    /// Calls answered 503 or not answered, all routes.
    pub fn unavailable_total(&self) -> u64 {
        self.unavailable.values().sum()
    }
}

/// Live counters of a running load, for the cases to wait on.
#[derive(Default)]
pub struct Progress {
    stop: AtomicBool,
    pub acknowledged: AtomicUsize,
    pub unavailable: AtomicUsize,
}

impl Progress {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct Ctx {
    http: HttpClient,
    addr: SocketAddr,
    products: Arc<Vec<Product>>,
    pause: Duration,
    progress: Arc<Progress>,
}

/// One call's answer, or why there was none.
enum Answer {
    Reply(Reply, Duration),
    Lost(String, Duration),
}

impl Ctx {
    async fn call(&self, method: Method, path: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Answer {
        let started = Instant::now();
        let sent = send_with(&self.http, self.addr, method, path, body, headers);
        match tokio::time::timeout(ANSWER_WITHIN, sent).await {
            Ok(Ok(reply)) => Answer::Reply(reply, started.elapsed()),
            Ok(Err(e)) => Answer::Lost(e, started.elapsed()),
            Err(_) => Answer::Lost(format!("no answer within {ANSWER_WITHIN:?}"), started.elapsed()),
        }
    }

    fn acknowledged(&self) {
        self.progress.acknowledged.fetch_add(1, Ordering::SeqCst);
    }

    /// Notes a 503 or a lost call, and pauses so a client does not spin on
    /// an engine that cannot serve it.
    async fn unavailable(&self, rec: &mut Records, route: &str, answer: &Answer) {
        let (what, latency) = match answer {
            Answer::Reply(reply, latency) => (
                format!("{route} {} {}", reply.status.as_u16(), reply.error_code()),
                *latency,
            ),
            Answer::Lost(why, latency) => (
                format!("{route} no answer ({})", why.chars().take(60).collect::<String>()),
                *latency,
            ),
        };
        *rec.unavailable.entry(what).or_default() += 1;
        rec.unavailable_latencies.push(latency);
        self.progress.unavailable.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_503(reply: &Reply) -> bool {
    reply.status == StatusCode::SERVICE_UNAVAILABLE
}

fn unexpected(rec: &mut Records, route: &str, reply: &Reply) {
    rec.unexpected
        .push(format!("{route}: {} {}", reply.status.as_u16(), reply.body));
}

/// The mixed load: buyers, orderers and players, each a task running until
/// `stop`.
pub struct MixedLoad {
    pub progress: Arc<Progress>,
    tasks: Vec<JoinHandle<Records>>,
}

impl MixedLoad {
    pub fn start(http: &HttpClient, addr: SocketAddr, products: &[Product], mix: Mix) -> Self {
        assert!(
            mix.buyers as u64 * ITEMS_PER_BUYER <= 1_000_000,
            "more buyers than the sale has items for"
        );
        let ctx = Ctx {
            http: http.clone(),
            addr,
            products: Arc::new(products.to_vec()),
            pause: mix.pause,
            progress: Arc::new(Progress::default()),
        };
        let mut tasks = Vec::new();
        for b in 0..mix.buyers {
            tasks.push(tokio::spawn(buyer(ctx.clone(), b as u64)));
        }
        for o in 0..mix.orderers {
            tasks.push(tokio::spawn(orderer(ctx.clone(), o)));
        }
        for p in 0..mix.players {
            tasks.push(tokio::spawn(player(ctx.clone(), p)));
        }
        Self {
            progress: ctx.progress,
            tasks,
        }
    }

    pub fn acknowledged(&self) -> usize {
        self.progress.acknowledged.load(Ordering::SeqCst)
    }

    pub fn unavailable(&self) -> usize {
        self.progress.unavailable.load(Ordering::SeqCst)
    }

    /// Waits until `n` more requests are acknowledged than at the call
    /// (fails after `within`: the engine did not serve again).
    pub async fn wait_acknowledged(&self, n: usize, within: Duration, what: &str) {
        let target = self.acknowledged() + n;
        let deadline = Instant::now() + within;
        while self.acknowledged() < target {
            assert!(
                Instant::now() < deadline,
                "{what}: only {} of {n} more requests acknowledged within {within:?}",
                n - (target - self.acknowledged())
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `n` more calls answered 503 (or nothing) than at the call.
    pub async fn wait_unavailable(&self, n: usize, within: Duration, what: &str) {
        let target = self.unavailable() + n;
        let deadline = Instant::now() + within;
        while self.unavailable() < target {
            assert!(
                Instant::now() < deadline,
                "{what}: fewer than {n} 503s within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the clients (a player first settles its transaction in
    /// flight) and gathers their records.
    pub async fn stop(self) -> Records {
        self.progress.stop.store(true, Ordering::SeqCst);
        let mut records = Records::default();
        for task in self.tasks {
            records.merge(task.await.expect("client task"));
        }
        records
    }
}

/// Checkout then purchase, each item once, a purchase sent once per code.
async fn buyer(ctx: Ctx, b: u64) -> Records {
    let mut rec = Records::default();
    for n in 1..=ITEMS_PER_BUYER {
        if ctx.progress.stopped() {
            break;
        }
        let item = b * ITEMS_PER_BUYER + n;
        // A user holds at most 1000 codes of a sale: a few users per buyer.
        let user = format!("fb{b}-{}", n / 500);
        rec.requests += 1;
        let path = format!("/checkout?user_id={user}&id={item}");
        let checkout = ctx.call(Method::POST, &path, None, &[]).await;
        let code = match &checkout {
            Answer::Reply(reply, _) if reply.status == StatusCode::OK => {
                reply.body["code"].as_str().expect("checkout code").to_owned()
            }
            // An unknown checkout leaves at most a code nobody will spend.
            Answer::Reply(reply, _) if is_503(reply) => {
                ctx.unavailable(&mut rec, "POST /checkout", &checkout).await;
                continue;
            }
            Answer::Lost(..) => {
                ctx.unavailable(&mut rec, "POST /checkout", &checkout).await;
                continue;
            }
            Answer::Reply(reply, _) => {
                unexpected(&mut rec, "POST /checkout", reply);
                continue;
            }
        };
        rec.requests += 1;
        let sent = Instant::now();
        let answer = ctx
            .call(Method::POST, &format!("/purchase?code={code}"), None, &[])
            .await;
        let purchase = Purchase { code, item };
        match &answer {
            Answer::Reply(reply, latency) => {
                rec.purchase_latencies.push((sent, *latency));
                if reply.status == StatusCode::OK {
                    rec.purchases.push(purchase);
                    ctx.acknowledged();
                } else if reply.error_code() == "CODE_USED" {
                    rec.own_code_used.push(purchase.code);
                } else if is_503(reply) {
                    rec.purchases_unknown.push(purchase);
                    ctx.unavailable(&mut rec, "POST /purchase", &answer).await;
                } else {
                    unexpected(&mut rec, "POST /purchase", reply);
                }
            }
            Answer::Lost(..) => {
                rec.purchases_unknown.push(purchase);
                ctx.unavailable(&mut rec, "POST /purchase", &answer).await;
            }
        }
        tokio::time::sleep(ctx.pause).await;
    }
    rec
}

/// Orders of 1–3 on a random product, every other one with an
/// `Idempotency-Key`; never sent again during the load.
async fn orderer(ctx: Ctx, o: usize) -> Records {
    let mut rec = Records::default();
    let mut n = 0u64;
    while !ctx.progress.stopped() {
        n += 1;
        let (product, quantity, nonce) = {
            let mut rng = rand::rng();
            let product = ctx.products[rng.random_range(0..ctx.products.len())];
            (product, rng.random_range(1..=3i64), rng.random::<u64>())
        };
        let body = json!({"product_id": product.id, "quantity": quantity, "buyer_id": format!("fo{o}")}).to_string();
        let key = n.is_multiple_of(2).then(|| format!("fk{o}-{n}-{nonce:x}"));
        let headers: Vec<(&str, &str)> = key.iter().map(|k| ("idempotency-key", k.as_str())).collect();
        rec.requests += 1;
        let answer = ctx.call(Method::POST, "/orders", Some(&body), &headers).await;
        let unknown = |order_id: Option<String>, shed: bool| UnknownOrder {
            order_id,
            shed,
            key: key.clone(),
            body: body.clone(),
            product: product.id,
            quantity,
        };
        match &answer {
            Answer::Reply(reply, _) if reply.status == StatusCode::OK => {
                rec.orders.push(Order {
                    id: reply.body["id"].as_str().expect("order id").to_owned(),
                    product: product.id,
                    quantity,
                });
                ctx.acknowledged();
            }
            Answer::Reply(reply, _) if reply.error_code() == "OUT_OF_STOCK" => rec.out_of_stock += 1,
            Answer::Reply(reply, _) if is_503(reply) => {
                let order_id = reply.body["error"]["order_id"].as_str().map(str::to_owned);
                let shed = ["OVERLOADED", "OUTBOX_FULL"].contains(&reply.error_code());
                rec.orders_unknown.push(unknown(order_id, shed));
                ctx.unavailable(&mut rec, "POST /orders", &answer).await;
            }
            Answer::Lost(..) => {
                rec.orders_unknown.push(unknown(None, false));
                ctx.unavailable(&mut rec, "POST /orders", &answer).await;
            }
            Answer::Reply(reply, _) => unexpected(&mut rec, "POST /orders", reply),
        }
        tokio::time::sleep(ctx.pause).await;
    }
    rec
}

/// Deposits and bets, each sent again with its reference until decided;
/// every answer's balance must be the client's own running sum.
async fn player(ctx: Ctx, p: usize) -> Records {
    let mut rec = Records::default();
    let player = format!("fp{p}");
    rec.players.push(player.clone());
    let mut balance = 0i64;
    let mut n = 0u64;
    while !ctx.progress.stopped() {
        n += 1;
        let (kind, amount) = if balance < 1000 {
            ("deposit", 5000)
        } else {
            ("bet", rand::rng().random_range(100..=900i64))
        };
        let reference = format!("fp{p}-{n}");
        let mut body = json!({
            "player_id": player, "currency": "EUR", "type": kind,
            "amount_minor": amount, "reference_id": reference,
        });
        if kind == "bet" {
            body["game"] = json!("slots");
        }
        let body = body.to_string();
        let deadline = Instant::now() + DECIDE_WITHIN;
        let mut attempts = 0;
        loop {
            attempts += 1;
            rec.requests += 1;
            let answer = ctx.call(Method::POST, "/wallet/transactions", Some(&body), &[]).await;
            match &answer {
                Answer::Reply(reply, _) if reply.status == StatusCode::OK => {
                    let delta = if kind == "deposit" { amount } else { -amount };
                    balance += delta;
                    if reply.body["cash_minor"].as_i64() != Some(balance) {
                        rec.unexpected.push(format!(
                            "{player} {reference}: the answer says cash {}, the client's sum is {balance}",
                            reply.body["cash_minor"]
                        ));
                    }
                    rec.wallet.push(WalletTx {
                        player: player.clone(),
                        reference: reference.clone(),
                        delta,
                        resent: attempts > 1,
                        replayed: reply.headers.contains_key("idempotent-replayed"),
                    });
                    ctx.acknowledged();
                    break;
                }
                Answer::Reply(reply, _) if !is_503(reply) => {
                    unexpected(&mut rec, "POST /wallet/transactions", reply);
                    break;
                }
                _ => {
                    ctx.unavailable(&mut rec, "POST /wallet/transactions", &answer).await;
                    if Instant::now() > deadline {
                        rec.wallet_undecided.push(reference);
                        return rec;
                    }
                }
            }
        }
        tokio::time::sleep(ctx.pause).await;
    }
    rec
}

/// What the 503s turned out to be, found out as a client would.
#[derive(Debug, Default)]
pub struct Resolution {
    pub purchases_taken: Vec<Purchase>,
    pub purchases_not_taken: usize,
    pub orders_taken: Vec<Order>,
    pub orders_not_taken: usize,
    /// Keyed orders that had not taken effect, made by their retry.
    pub orders_by_retry: Vec<Order>,
    pub unresolved: Vec<String>,
}

impl Resolution {
    pub fn took_effect(&self) -> usize {
        self.purchases_taken.len() + self.orders_taken.len()
    }
}

/// Resolves every unknown purchase (`GET /codes/{code}`) and order
/// (`GET /orders/{id}` with the id of its 503; a keyed one is also sent
/// again with its key, which must replay the same order or make it now).
/// Call it once the fault is over and nothing is left in flight.
pub async fn resolve(http: &HttpClient, addr: SocketAddr, records: &Records) -> Resolution {
    let mut out = Resolution::default();
    let get = |path: String| async move {
        send_with(http, addr, Method::GET, &path, None, &[])
            .await
            .expect("engine answers")
    };
    for purchase in &records.purchases_unknown {
        let reply = get(format!("/codes/{}", purchase.code)).await;
        match reply.body["state"].as_str() {
            Some("spent") if reply.status == StatusCode::OK => out.purchases_taken.push(purchase.clone()),
            Some("issued") if reply.status == StatusCode::OK => out.purchases_not_taken += 1,
            _ => out.unresolved.push(format!(
                "GET /codes/{}: {} {}",
                purchase.code,
                reply.status.as_u16(),
                reply.body
            )),
        }
    }
    for order in &records.orders_unknown {
        // Some(true): exists, Some(false): does not, None: not known.
        let mut exists = None;
        let mut id_found = order.order_id.clone();
        if let Some(id) = &order.order_id {
            let reply = get(format!("/orders/{id}")).await;
            match (reply.status, reply.error_code()) {
                (StatusCode::OK, _) => {
                    if reply.body["product_id"].as_u64() != Some(order.product)
                        || reply.body["quantity"].as_i64() != Some(order.quantity)
                        || reply.body["status"] != "completed"
                    {
                        out.unresolved.push(format!(
                            "GET /orders/{id}: {} is not the order sent: {}",
                            reply.body, order.body
                        ));
                    }
                    exists = Some(true);
                }
                (StatusCode::NOT_FOUND, "ORDER_NOT_FOUND") => exists = Some(false),
                (status, _) => out
                    .unresolved
                    .push(format!("GET /orders/{id}: {} {}", status.as_u16(), reply.body)),
            }
        }
        if let Some(key) = &order.key {
            let again = send_with(
                http,
                addr,
                Method::POST,
                "/orders",
                Some(&order.body),
                &[("idempotency-key", key.as_str())],
            )
            .await
            .expect("engine answers");
            let replayed = again.headers.contains_key("idempotent-replayed");
            let id = again.body["id"].as_str().unwrap_or_default().to_owned();
            match (again.status, replayed, exists) {
                (StatusCode::OK, true, Some(false)) | (StatusCode::OK, false, Some(true)) => out.unresolved.push(format!(
                    "order {:?} (key {key}): GET said exists = {exists:?}, its retry answered {} (replayed: {replayed})",
                    order.order_id, again.body
                )),
                (StatusCode::OK, true, _) => {
                    if order.order_id.as_ref().is_some_and(|known| *known != id) {
                        out.unresolved.push(format!(
                            "order {:?} (key {key}): the retry replayed another order {id}",
                            order.order_id
                        ));
                    }
                    exists = Some(true);
                    id_found = Some(id);
                }
                (StatusCode::OK, false, _) => {
                    exists = Some(false);
                    out.orders_by_retry.push(Order {
                        id,
                        product: order.product,
                        quantity: order.quantity,
                    });
                }
                (StatusCode::CONFLICT, _, Some(true)) => out.unresolved.push(format!(
                    "order {:?} (key {key}) exists but its retry answered {}",
                    order.order_id, again.body
                )),
                (StatusCode::CONFLICT, _, _) if again.error_code() == "OUT_OF_STOCK" => exists = Some(false),
                (status, _, _) => out.unresolved.push(format!(
                    "retry of order {:?} (key {key}): {} {}",
                    order.order_id,
                    status.as_u16(),
                    again.body
                )),
            }
        }
        match (exists, &order.order_id) {
            (Some(true), _) => out.orders_taken.push(Order {
                id: id_found.unwrap_or_default(),
                product: order.product,
                quantity: order.quantity,
            }),
            (Some(false), _) => out.orders_not_taken += 1,
            // Said not done; if it were, the counts would not add up.
            (None, None) if order.shed => out.orders_not_taken += 1,
            (None, None) if order.key.is_none() => out.unresolved.push(format!(
                "an order without Idempotency-Key was answered 503 without an order_id: its outcome cannot be \
                 found ({})",
                order.body
            )),
            (None, _) => {}
        }
    }
    out
}

/// Checks every invariant against the clients' records once the outbox is
/// flushed (the resolution's retries included); returns what failed.
pub async fn check(app: &TestApp, products: &[Product], records: &Records, resolution: &Resolution) -> Vec<String> {
    app.wait_flushed(Duration::from_secs(60)).await;
    let mut failed = Vec::new();
    failed.extend(
        records
            .unexpected
            .iter()
            .take(20)
            .map(|u| format!("unexpected answer: {u}")),
    );
    failed.extend(
        resolution
            .unresolved
            .iter()
            .take(20)
            .map(|u| format!("unresolved: {u}")),
    );
    if !records.own_code_used.is_empty() {
        failed.push(format!(
            "{} buyers were told CODE_USED for the purchase they sent once (a resend ran it twice), e.g. {:?}",
            records.own_code_used.len(),
            &records.own_code_used[..records.own_code_used.len().min(3)]
        ));
    }
    if !records.wallet_undecided.is_empty() {
        failed.push(format!(
            "wallet transactions still answered 503 after {DECIDE_WITHIN:?}: {:?}",
            records.wallet_undecided
        ));
    }
    failed.extend(check_purchases(app, records, resolution).await);
    failed.extend(check_orders(app, products, records, resolution).await);
    failed.extend(check_wallet(app, records).await);
    let mut reconcile = Value::Null;
    for _ in 0..6 {
        let reply = app.admin(Method::GET, "/admin/reconcile", None).await;
        reconcile = reply.body;
        if reply.status == StatusCode::OK {
            break;
        }
    }
    if reconcile["ok"] != json!(true) {
        failed.push(format!("GET /admin/reconcile: {reconcile}"));
    }
    failed
}

async fn check_purchases(app: &TestApp, records: &Records, resolution: &Resolution) -> Vec<String> {
    let mut failed = Vec::new();
    let expected: Vec<&Purchase> = records.purchases.iter().chain(&resolution.purchases_taken).collect();
    let codes: BTreeSet<&str> = expected.iter().map(|p| p.code.as_str()).collect();
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT code, item_id FROM purchases")
        .fetch_all(&app.db)
        .await
        .expect("purchases");
    let in_postgres: BTreeSet<&str> = rows.iter().map(|(code, _)| code.as_str()).collect();
    let missing: Vec<_> = codes.difference(&in_postgres).take(5).collect();
    let extra: Vec<_> = in_postgres.difference(&codes).take(5).collect();
    if !missing.is_empty() || !extra.is_empty() {
        failed.push(format!(
            "purchases: Postgres holds {} rows, the clients know {} (acknowledged {} + 503s that took effect {}); \
             missing {missing:?}, unknown to the clients {extra:?}",
            rows.len(),
            codes.len(),
            records.purchases.len(),
            resolution.purchases_taken.len()
        ));
    }
    let items: HashMap<&str, u64> = expected.iter().map(|p| (p.code.as_str(), p.item)).collect();
    for (code, item) in &rows {
        if items.get(code.as_str()).is_some_and(|known| *known as i64 != *item) {
            failed.push(format!(
                "purchase {code}: item {item} in Postgres, {:?} bought",
                items[code.as_str()]
            ));
        }
    }
    let mut per_sale: BTreeMap<i64, i64> = BTreeMap::new();
    for purchase in &expected {
        *per_sale.entry(purchase.sale()).or_default() += 1;
    }
    for (sale, count) in per_sale {
        let sold: i64 = app
            .ctx
            .redis
            .custom(fred::cmd!("BITCOUNT"), vec![app.sale_key(sale as u64, ":sold")])
            .await
            .expect("BITCOUNT");
        if sold != count {
            failed.push(format!(
                "sale {sale}: Redis's sold bitmap counts {sold}, the clients bought {count}"
            ));
        }
    }
    failed
}

async fn check_orders(app: &TestApp, products: &[Product], records: &Records, resolution: &Resolution) -> Vec<String> {
    let mut failed = Vec::new();
    let expected: Vec<&Order> = records
        .orders
        .iter()
        .chain(&resolution.orders_taken)
        .chain(&resolution.orders_by_retry)
        .collect();
    let rows: Vec<(String, i64, i32, String)> =
        sqlx::query_as("SELECT id::text, product_id, quantity, status FROM orders")
            .fetch_all(&app.db)
            .await
            .expect("orders");
    let ids: BTreeSet<&str> = expected.iter().map(|o| o.id.as_str()).collect();
    let in_postgres: BTreeSet<&str> = rows.iter().map(|(id, ..)| id.as_str()).collect();
    let missing: Vec<_> = ids.difference(&in_postgres).take(5).collect();
    let extra = in_postgres.difference(&ids).count();
    if !missing.is_empty() || extra != 0 {
        failed.push(format!(
            "orders: Postgres holds {} rows, the clients know {} (acknowledged {} + 503s that took effect {} + \
             made by a retry {}); missing {missing:?}, {extra} rows unknown to the clients",
            rows.len(),
            expected.len(),
            records.orders.len(),
            resolution.orders_taken.len(),
            resolution.orders_by_retry.len()
        ));
    }
    for product in products {
        let told: i64 = expected
            .iter()
            .filter(|o| o.product == product.id)
            .map(|o| o.quantity)
            .sum();
        let completed: i64 = rows
            .iter()
            .filter(|(_, p, _, status)| *p as u64 == product.id && status == "completed")
            .map(|(_, _, q, _)| i64::from(*q))
            .sum();
        let live = app.get(&format!("/products/{}", product.id)).await;
        let n = |f: &str| live.body[f].as_i64().unwrap_or(i64::MIN);
        if n("sold") != told || completed != told {
            failed.push(format!(
                "product {}: Redis sold {}, Postgres completed {completed}, the clients were told {told} \
                 (acknowledged + 503s that took effect)",
                product.id,
                n("sold")
            ));
        }
        if n("available") < 0
            || n("available") + n("reserved") + n("sold") != n("stock_total")
            || n("stock_total") != product.stock
        {
            failed.push(format!("product {}: stock does not add up: {}", product.id, live.body));
        }
    }
    failed
}

async fn check_wallet(app: &TestApp, records: &Records) -> Vec<String> {
    let mut failed = Vec::new();
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT player_id, reference_id, cash_delta_minor FROM wallet_entries WHERE type IN ('deposit', 'bet')",
    )
    .fetch_all(&app.db)
    .await
    .expect("wallet entries");
    let in_postgres: BTreeSet<(&str, &str)> = rows.iter().map(|(p, r, _)| (p.as_str(), r.as_str())).collect();
    let told: BTreeSet<(&str, &str)> = records
        .wallet
        .iter()
        .map(|t| (t.player.as_str(), t.reference.as_str()))
        .collect();
    if in_postgres != told || rows.len() != records.wallet.len() {
        failed.push(format!(
            "wallet: Postgres holds {} entries, the players were told of {}; missing {:?}, unknown {:?}",
            rows.len(),
            records.wallet.len(),
            told.difference(&in_postgres).take(5).collect::<Vec<_>>(),
            in_postgres.difference(&told).take(5).collect::<Vec<_>>()
        ));
    }
    for player in &records.players {
        let told: i64 = records
            .wallet
            .iter()
            .filter(|t| t.player == *player)
            .map(|t| t.delta)
            .sum();
        let ledger: i64 = rows.iter().filter(|(p, ..)| p == player).map(|(_, _, d)| d).sum();
        let live = app.get(&format!("/wallet/{player}?currency=EUR")).await;
        let cash = match live.status {
            StatusCode::OK => live.body["cash_minor"].as_i64().unwrap_or(i64::MIN),
            StatusCode::NOT_FOUND => 0,
            _ => i64::MIN,
        };
        if cash != told || ledger != told {
            failed.push(format!(
                "player {player}: Redis cash {cash}, ledger sum {ledger}, acknowledged transactions sum {told}"
            ));
        }
    }
    failed
}

/// The figures every mixed-load case prints.
pub fn print_figures(case: &str, records: &Records, resolution: &Resolution) {
    let resent = records.wallet.iter().filter(|t| t.resent).count();
    let replayed = records.wallet.iter().filter(|t| t.resent && t.replayed).count();
    println!(
        "faults::{case}: {} requests; purchases {} acknowledged, {} unknown ({} took effect); orders {} acknowledged, \
         {} out of stock, {} unknown ({} took effect, {} made by their keyed retry); wallet {} transactions, {} sent \
         again after a 503 ({} had taken effect)",
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
        resent,
        replayed,
    );
    println!(
        "faults::{case}: 503s and lost calls {} ({:?})",
        records.unavailable_total(),
        records.unavailable
    );
}

/// The `q` quantile of `values`, in ms.
pub fn quantile_ms(values: &mut [Duration], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort();
    let idx = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
    values[idx].as_secs_f64() * 1000.0
}
