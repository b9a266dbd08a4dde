//! The mixed load of the fault cases, what its clients were told, how their
//! unknown outcomes are found out, and the invariants checked against those
//! records (the same as the fault suite's, tests/api/faults/mod.rs).
//!
//! Buyers check out and buy items of their own, a purchase sent once per
//! code; orderers order 1–3 of a product, every other order with an
//! `Idempotency-Key`, never sent again during the load; players deposit and
//! bet, each transaction sent again with its reference until it is decided.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fred::prelude::ClientLike;
use fred::types::{ClusterHash, CustomCommand};
use rand::RngExt;
use serde_json::{Value, json};
use sqlx::PgConnection;
use tokio::task::JoinHandle;

use crate::common::http::{Conn, Method, Outcome, Target};
use crate::scenarios::sale::report::Invariant;

const TIMEOUT: Duration = Duration::from_secs(30);
/// How long a player sends a transaction again before giving up on it.
const DECIDE_WITHIN: Duration = Duration::from_secs(90);
/// Items of the sale reserved for each buyer of a case.
pub const ITEMS_PER_BUYER: u64 = 20_000;

/// One answer, or why there was none.
pub enum Answer {
    Reply { status: u16, body: Value, replayed: bool },
    Lost(String),
}

impl Answer {
    pub fn status(&self) -> Option<u16> {
        match self {
            Answer::Reply { status, .. } => Some(*status),
            Answer::Lost(_) => None,
        }
    }

    fn code(&self) -> &str {
        match self {
            Answer::Reply { body, .. } => body["error"]["code"].as_str().unwrap_or(""),
            Answer::Lost(_) => "",
        }
    }

    fn body(&self) -> &Value {
        match self {
            Answer::Reply { body, .. } => body,
            Answer::Lost(_) => &Value::Null,
        }
    }

    fn describe(&self) -> String {
        match self {
            Answer::Reply { status, body, .. } => format!("{status} {body}"),
            Answer::Lost(why) => format!("no answer: {why}"),
        }
    }
}

/// A keep-alive connection that never sends a request twice: a request
/// whose connection fails is an unknown outcome, not a retry.
pub struct Client {
    target: Target,
    conn: Option<Conn>,
}

impl Client {
    pub fn new(target: &Target) -> Self {
        Self {
            target: target.clone(),
            conn: None,
        }
    }

    pub async fn call(&mut self, method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        if self.conn.as_ref().is_none_or(Conn::is_closed) {
            match Conn::connect(&self.target, TIMEOUT).await {
                Ok(conn) => self.conn = Some(conn),
                Err(e) => return Answer::Lost(e),
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return Answer::Lost("no connection".into());
        };
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        match conn
            .request_with(&self.target, method, path, &all, body.as_bytes(), TIMEOUT)
            .await
        {
            Outcome::Response { status, body, .. } => Answer::Reply {
                status,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                replayed: conn.last_flags().replayed,
            },
            Outcome::Timeout => {
                self.conn = None;
                Answer::Lost(format!("no answer within {TIMEOUT:?}"))
            }
            Outcome::Transport(e) => {
                self.conn = None;
                Answer::Lost(e)
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Product {
    pub id: u64,
    pub stock: i64,
}

/// Creates products through the admin API.
pub async fn create_products(target: &Target, token: &str, tag: &str, stocks: &[i64]) -> Result<Vec<Product>, String> {
    let mut client = Client::new(target);
    let auth = format!("Bearer {token}");
    let mut out = Vec::new();
    for (n, stock) in stocks.iter().enumerate() {
        let body = json!({"name": format!("{tag}-{n}"), "stock": stock, "price_cents": 500, "merchant_id": 1});
        let answer = client
            .call(
                Method::POST,
                "/products",
                &[("authorization", &auth)],
                &body.to_string(),
            )
            .await;
        if answer.status() != Some(201) {
            return Err(format!("POST /products: {}", answer.describe()));
        }
        let id = answer.body()["id"].as_u64().ok_or("a product without an id")?;
        out.push(Product { id, stock: *stock });
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct Purchase {
    pub code: String,
    pub item: u64,
}

impl Purchase {
    fn sale(&self) -> Option<i64> {
        self.code.split('-').next().and_then(|s| s.parse().ok())
    }
}

#[derive(Debug, Clone)]
pub struct Order {
    pub id: String,
    pub product: u64,
    pub quantity: i64,
}

#[derive(Debug, Clone)]
pub struct UnknownOrder {
    pub order_id: Option<String>,
    /// `OVERLOADED` or `OUTBOX_FULL`: refused before anything was written
    /// (no id to look up; the counts check that nothing was).
    pub shed: bool,
    pub key: Option<String>,
    pub body: String,
    pub product: u64,
    pub quantity: i64,
}

#[derive(Debug, Clone)]
pub struct WalletTx {
    pub player: String,
    pub reference: String,
    pub delta: i64,
    pub resent: bool,
    pub replayed: bool,
}

#[derive(Debug, Default)]
pub struct Records {
    pub requests: u64,
    pub purchases: Vec<Purchase>,
    pub purchases_unknown: Vec<Purchase>,
    pub own_code_used: Vec<String>,
    pub orders: Vec<Order>,
    pub orders_unknown: Vec<UnknownOrder>,
    pub out_of_stock: u64,
    pub wallet: Vec<WalletTx>,
    pub players: Vec<String>,
    pub wallet_undecided: Vec<String>,
    pub unavailable: BTreeMap<String, u64>,
    pub unexpected: Vec<String>,
}

impl Records {
    fn merge(&mut self, o: Records) {
        self.requests += o.requests;
        self.purchases.extend(o.purchases);
        self.purchases_unknown.extend(o.purchases_unknown);
        self.own_code_used.extend(o.own_code_used);
        self.orders.extend(o.orders);
        self.orders_unknown.extend(o.orders_unknown);
        self.out_of_stock += o.out_of_stock;
        self.wallet.extend(o.wallet);
        self.players.extend(o.players);
        self.wallet_undecided.extend(o.wallet_undecided);
        for (k, v) in o.unavailable {
            *self.unavailable.entry(k).or_default() += v;
        }
        self.unexpected.extend(o.unexpected);
    }

    pub fn unavailable_total(&self) -> u64 {
        self.unavailable.values().sum()
    }

    /// Calls whose outcome the client was not told, and of those the wallet
    /// transactions found to have taken effect (their resend was a replay).
    pub fn unknown_outcomes(&self) -> (usize, usize) {
        let resent = self.wallet.iter().filter(|t| t.resent).count();
        let replayed = self.wallet.iter().filter(|t| t.resent && t.replayed).count();
        (
            self.purchases_unknown.len() + self.orders_unknown.len() + resent,
            replayed,
        )
    }
}

#[derive(Default)]
pub struct Progress {
    stop: AtomicBool,
    pub acknowledged: AtomicUsize,
    pub unavailable: AtomicUsize,
}

/// How many clients of each kind; `tag` names the case's users, players
/// and products (unique per run), `item_base` its range of the sale.
#[derive(Clone)]
pub struct Mix {
    pub buyers: usize,
    pub orderers: usize,
    pub players: usize,
    pub tag: String,
    pub item_base: u64,
}

#[derive(Clone)]
struct Ctx {
    target: Target,
    products: Arc<Vec<Product>>,
    progress: Arc<Progress>,
    mix: Arc<Mix>,
}

impl Ctx {
    fn stopped(&self) -> bool {
        self.progress.stop.load(Ordering::SeqCst)
    }

    fn acknowledged(&self) {
        self.progress.acknowledged.fetch_add(1, Ordering::SeqCst);
    }

    async fn unavailable(&self, rec: &mut Records, route: &str, answer: &Answer) {
        let key = match answer {
            Answer::Reply { status, .. } => format!("{route} {status} {}", answer.code()),
            Answer::Lost(_) => format!("{route} no answer"),
        };
        *rec.unavailable.entry(key).or_default() += 1;
        self.progress.unavailable.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn unknown_outcome(answer: &Answer) -> bool {
    matches!(answer, Answer::Lost(_)) || answer.status() == Some(503)
}

pub struct Load {
    pub progress: Arc<Progress>,
    tasks: Vec<JoinHandle<Records>>,
}

impl Load {
    pub fn start(target: &Target, products: &[Product], mix: Mix) -> Load {
        let ctx = Ctx {
            target: target.clone(),
            products: Arc::new(products.to_vec()),
            progress: Arc::new(Progress::default()),
            mix: Arc::new(mix),
        };
        let mut tasks = Vec::new();
        for b in 0..ctx.mix.buyers {
            tasks.push(tokio::spawn(buyer(ctx.clone(), b as u64)));
        }
        for o in 0..ctx.mix.orderers {
            tasks.push(tokio::spawn(orderer(ctx.clone(), o)));
        }
        for p in 0..ctx.mix.players {
            tasks.push(tokio::spawn(player(ctx.clone(), p)));
        }
        Load {
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

    /// Waits until `n` more requests are acknowledged; false after `within`.
    pub async fn wait_acknowledged(&self, n: usize, within: Duration) -> bool {
        let target = self.acknowledged() + n;
        let deadline = Instant::now() + within;
        while self.acknowledged() < target {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Waits until `n` more calls answered 503 or nothing; false after `within`.
    pub async fn wait_unavailable(&self, n: usize, within: Duration) -> bool {
        let target = self.unavailable() + n;
        let deadline = Instant::now() + within;
        while self.unavailable() < target {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    pub async fn stop(self) -> Records {
        self.progress.stop.store(true, Ordering::SeqCst);
        let mut records = Records::default();
        for task in self.tasks {
            match task.await {
                Ok(r) => records.merge(r),
                Err(e) => records.unexpected.push(format!("client task failed: {e}")),
            }
        }
        records
    }
}

async fn buyer(ctx: Ctx, b: u64) -> Records {
    let mut rec = Records::default();
    let mut client = Client::new(&ctx.target);
    for n in 1..=ITEMS_PER_BUYER {
        if ctx.stopped() {
            break;
        }
        let item = ctx.mix.item_base + b * ITEMS_PER_BUYER + n;
        let user = format!("{}-b{b}-{}", ctx.mix.tag, n / 500);
        rec.requests += 1;
        let checkout = client
            .call(Method::POST, &format!("/checkout?user_id={user}&id={item}"), &[], "")
            .await;
        let code = match (&checkout, checkout.status()) {
            (_, Some(200)) => match checkout.body()["code"].as_str() {
                Some(code) => code.to_owned(),
                None => {
                    rec.unexpected
                        .push(format!("checkout: 200 without a code: {}", checkout.body()));
                    continue;
                }
            },
            _ if unknown_outcome(&checkout) => {
                ctx.unavailable(&mut rec, "POST /checkout", &checkout).await;
                continue;
            }
            _ => {
                rec.unexpected.push(format!("POST /checkout: {}", checkout.describe()));
                continue;
            }
        };
        rec.requests += 1;
        let answer = client
            .call(Method::POST, &format!("/purchase?code={code}"), &[], "")
            .await;
        let purchase = Purchase { code, item };
        if answer.status() == Some(200) {
            rec.purchases.push(purchase);
            ctx.acknowledged();
        } else if answer.code() == "CODE_USED" {
            rec.own_code_used.push(purchase.code);
        } else if unknown_outcome(&answer) {
            rec.purchases_unknown.push(purchase);
            ctx.unavailable(&mut rec, "POST /purchase", &answer).await;
        } else {
            rec.unexpected.push(format!("POST /purchase: {}", answer.describe()));
        }
    }
    rec
}

async fn orderer(ctx: Ctx, o: usize) -> Records {
    let mut rec = Records::default();
    let mut client = Client::new(&ctx.target);
    let mut n = 0u64;
    while !ctx.stopped() {
        n += 1;
        let (product, quantity, nonce) = {
            let mut rng = rand::rng();
            let product = ctx.products[rng.random_range(0..ctx.products.len())];
            (product, rng.random_range(1..=3i64), rng.random::<u64>())
        };
        let body = json!({"product_id": product.id, "quantity": quantity, "buyer_id": format!("{}-o{o}", ctx.mix.tag)})
            .to_string();
        let key = n
            .is_multiple_of(2)
            .then(|| format!("{}-k{o}-{n}-{nonce:x}", ctx.mix.tag));
        let headers: Vec<(&str, &str)> = key.iter().map(|k| ("idempotency-key", k.as_str())).collect();
        rec.requests += 1;
        let answer = client.call(Method::POST, "/orders", &headers, &body).await;
        if answer.status() == Some(200) {
            rec.orders.push(Order {
                id: answer.body()["id"].as_str().unwrap_or_default().to_owned(),
                product: product.id,
                quantity,
            });
            ctx.acknowledged();
        } else if answer.code() == "OUT_OF_STOCK" {
            rec.out_of_stock += 1;
        } else if unknown_outcome(&answer) {
            rec.orders_unknown.push(UnknownOrder {
                order_id: answer.body()["error"]["order_id"].as_str().map(str::to_owned),
                shed: ["OVERLOADED", "OUTBOX_FULL"].contains(&answer.code()),
                key: key.clone(),
                body: body.clone(),
                product: product.id,
                quantity,
            });
            ctx.unavailable(&mut rec, "POST /orders", &answer).await;
        } else {
            rec.unexpected.push(format!("POST /orders: {}", answer.describe()));
        }
    }
    rec
}

async fn player(ctx: Ctx, p: usize) -> Records {
    let mut rec = Records::default();
    let mut client = Client::new(&ctx.target);
    let player = format!("{}-p{p}", ctx.mix.tag);
    rec.players.push(player.clone());
    let mut balance = 0i64;
    let mut n = 0u64;
    while !ctx.stopped() {
        n += 1;
        let (kind, amount) = if balance < 1000 {
            ("deposit", 5000)
        } else {
            ("bet", rand::rng().random_range(100..=900i64))
        };
        let reference = format!("{player}-{n}");
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
            let answer = client.call(Method::POST, "/wallet/transactions", &[], &body).await;
            if let Answer::Reply {
                status: 200,
                body: reply,
                replayed,
                ..
            } = &answer
            {
                let delta = if kind == "deposit" { amount } else { -amount };
                balance += delta;
                if reply["cash_minor"].as_i64() != Some(balance) {
                    rec.unexpected.push(format!(
                        "{reference}: the answer says cash {}, the player's own sum is {balance}",
                        reply["cash_minor"]
                    ));
                }
                rec.wallet.push(WalletTx {
                    player: player.clone(),
                    reference: reference.clone(),
                    delta,
                    resent: attempts > 1,
                    replayed: *replayed,
                });
                ctx.acknowledged();
                break;
            }
            if !unknown_outcome(&answer) {
                rec.unexpected
                    .push(format!("POST /wallet/transactions: {}", answer.describe()));
                break;
            }
            ctx.unavailable(&mut rec, "POST /wallet/transactions", &answer).await;
            if Instant::now() > deadline {
                rec.wallet_undecided.push(reference);
                return rec;
            }
        }
    }
    rec
}

#[derive(Debug, Default)]
pub struct Resolution {
    pub purchases_taken: Vec<Purchase>,
    pub orders_taken: Vec<Order>,
    pub orders_by_retry: Vec<Order>,
    pub unresolved: Vec<String>,
}

/// Finds out what every unknown purchase and order became: the code looked
/// up, the order read by the id of its 503, a keyed order sent again.
pub async fn resolve(target: &Target, records: &Records) -> Resolution {
    let mut out = Resolution::default();
    let mut client = Client::new(target);
    for purchase in &records.purchases_unknown {
        let reply = client
            .call(Method::GET, &format!("/codes/{}", purchase.code), &[], "")
            .await;
        match (reply.status(), reply.body()["state"].as_str()) {
            (Some(200), Some("spent")) => out.purchases_taken.push(purchase.clone()),
            (Some(200), Some("issued")) => {}
            _ => out
                .unresolved
                .push(format!("GET /codes/{}: {}", purchase.code, reply.describe())),
        }
    }
    for order in &records.orders_unknown {
        let mut exists = None;
        let mut id_found = order.order_id.clone();
        if let Some(id) = &order.order_id {
            let reply = client.call(Method::GET, &format!("/orders/{id}"), &[], "").await;
            match (reply.status(), reply.code()) {
                (Some(200), _) => exists = Some(true),
                (Some(404), "ORDER_NOT_FOUND") => exists = Some(false),
                _ => out.unresolved.push(format!("GET /orders/{id}: {}", reply.describe())),
            }
        }
        if let Some(key) = &order.key {
            let again = client
                .call(Method::POST, "/orders", &[("idempotency-key", key)], &order.body)
                .await;
            let replayed = matches!(again, Answer::Reply { replayed: true, .. });
            let id = again.body()["id"].as_str().unwrap_or_default().to_owned();
            match (again.status(), replayed, exists) {
                (Some(200), true, Some(false)) | (Some(200), false, Some(true)) => out.unresolved.push(format!(
                    "order {:?} (key {key}): GET said exists = {exists:?}, its retry answered {}",
                    order.order_id,
                    again.describe()
                )),
                (Some(200), true, _) => {
                    if order.order_id.as_ref().is_some_and(|known| *known != id) {
                        out.unresolved.push(format!(
                            "order {:?}: its retry replayed another order {id}",
                            order.order_id
                        ));
                    }
                    exists = Some(true);
                    id_found = Some(id);
                }
                (Some(200), false, _) => {
                    exists = Some(false);
                    out.orders_by_retry.push(Order {
                        id,
                        product: order.product,
                        quantity: order.quantity,
                    });
                }
                (Some(409), _, Some(true)) => out.unresolved.push(format!(
                    "order {:?} exists but its retry answered {}",
                    order.order_id,
                    again.describe()
                )),
                (Some(409), _, _) if again.code() == "OUT_OF_STOCK" => exists = Some(false),
                _ => out.unresolved.push(format!(
                    "retry of order {:?} (key {key}): {}",
                    order.order_id,
                    again.describe()
                )),
            }
        }
        match exists {
            Some(true) => out.orders_taken.push(Order {
                id: id_found.unwrap_or_default(),
                product: order.product,
                quantity: order.quantity,
            }),
            Some(false) => {}
            // Said not done; if it were, the counts would not add up.
            None if order.shed => {}
            None if order.key.is_none() && order.order_id.is_none() => out.unresolved.push(format!(
                "an order without Idempotency-Key was answered 503 without an order_id: its outcome cannot be found \
                 ({})",
                order.body
            )),
            None => {}
        }
    }
    out
}

/// Where the checks look.
pub struct Stores<'a> {
    pub target: &'a Target,
    pub admin_token: &'a str,
    pub redis: &'a fred::prelude::Client,
    pub key_prefix: &'a str,
    pub pg: &'a mut PgConnection,
}

/// Waits (up to `within`) until `GET /health` shows an empty outbox.
pub async fn wait_flushed(target: &Target, within: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut client = Client::new(target);
    loop {
        let health = client.call(Method::GET, "/health", &[], "").await;
        if health.body()["outbox_backlog"].as_u64() == Some(0) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            return Err(format!("outbox not flushed after {within:?}: {}", health.describe()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The invariants of a case, named `<case>_<invariant>`.
pub async fn check(
    case: &str,
    stores: Stores<'_>,
    products: &[Product],
    mix: &Mix,
    records: &Records,
    resolution: &Resolution,
) -> Vec<Invariant> {
    let name = |n: &str| format!("{case}_{n}");
    let mut out = Vec::new();
    if let Err(e) = wait_flushed(stores.target, Duration::from_secs(120)).await {
        out.push(Invariant::fail(&name("outbox_flushed"), e));
    }
    out.push(Invariant::check(
        &name("answers_expected"),
        records.unexpected.is_empty(),
        format!(
            "{} unexpected answers {:?}",
            records.unexpected.len(),
            first(&records.unexpected)
        ),
    ));
    out.push(Invariant::check(
        &name("outcomes_found"),
        resolution.unresolved.is_empty() && records.wallet_undecided.is_empty(),
        format!(
            "{} unknown outcomes could not be found {:?}; {} wallet transactions still 503 after {DECIDE_WITHIN:?}",
            resolution.unresolved.len(),
            first(&resolution.unresolved),
            records.wallet_undecided.len()
        ),
    ));
    out.push(Invariant::check(
        &name("no_code_used_for_own_purchase"),
        records.own_code_used.is_empty(),
        format!(
            "{} buyers told CODE_USED for the purchase they sent once {:?}",
            records.own_code_used.len(),
            first(&records.own_code_used)
        ),
    ));

    // Purchases: Postgres and Redis hold exactly what the buyers know.
    let expected: Vec<&Purchase> = records.purchases.iter().chain(&resolution.purchases_taken).collect();
    let pattern = format!("{}-b%", mix.tag);
    match sqlx::query_as::<_, (String, i64)>("SELECT code, item_id FROM purchases WHERE user_id LIKE $1")
        .bind(&pattern)
        .fetch_all(&mut *stores.pg)
        .await
    {
        Ok(rows) => {
            let known: BTreeSet<&str> = expected.iter().map(|p| p.code.as_str()).collect();
            let held: BTreeSet<&str> = rows.iter().map(|(c, _)| c.as_str()).collect();
            let items: HashMap<&str, u64> = expected.iter().map(|p| (p.code.as_str(), p.item)).collect();
            let wrong_item = rows
                .iter()
                .filter(|(c, i)| items.get(c.as_str()).is_some_and(|known| *known as i64 != *i))
                .count();
            out.push(Invariant::check(
                &name("purchases_exactly_once_in_postgres"),
                known == held && wrong_item == 0,
                format!(
                    "{} rows, buyers know {} ({} acknowledged + {} 503s that took effect); missing {:?}, unknown to \
                     the buyers {:?}, wrong item {wrong_item}",
                    rows.len(),
                    known.len(),
                    records.purchases.len(),
                    resolution.purchases_taken.len(),
                    known.difference(&held).take(3).collect::<Vec<_>>(),
                    held.difference(&known).take(3).collect::<Vec<_>>()
                ),
            ));
        }
        Err(e) => out.push(Invariant::fail(
            &name("purchases_exactly_once_in_postgres"),
            e.to_string(),
        )),
    }
    let mut per_sale: BTreeMap<i64, i64> = BTreeMap::new();
    for purchase in &expected {
        *per_sale.entry(purchase.sale().unwrap_or(-1)).or_default() += 1;
    }
    let mut sold_detail = Vec::new();
    let mut sold_ok = true;
    for (sale, count) in &per_sale {
        // A case's items are its own (ranges far apart, byte-aligned): the
        // sale's sold bits in its range.
        let key = format!(
            "{}:sold",
            crate::scenarios::sale::checks::sale_key(stores.key_prefix, *sale)
        );
        let first_bit = mix.item_base;
        let last_bit = mix.item_base + mix.buyers as u64 * ITEMS_PER_BUYER;
        let bits = stores
            .redis
            .custom::<i64, _>(
                CustomCommand::new_static("BITCOUNT", ClusterHash::FirstKey, false),
                vec![key.clone(), (first_bit / 8).to_string(), (last_bit / 8).to_string()],
            )
            .await;
        match bits {
            Ok(n) => {
                sold_ok &= n == *count;
                sold_detail.push(format!("sale {sale}: {n} sold bits, buyers bought {count}"));
            }
            Err(e) => {
                sold_ok = false;
                sold_detail.push(format!("BITCOUNT {key}: {e}"));
            }
        }
    }
    out.push(Invariant::check(
        &name("redis_sold_bits"),
        sold_ok,
        sold_detail.join("; "),
    ));

    // Orders.
    let orders: Vec<&Order> = records
        .orders
        .iter()
        .chain(&resolution.orders_taken)
        .chain(&resolution.orders_by_retry)
        .collect();
    let ids: Vec<i64> = products.iter().map(|p| p.id as i64).collect();
    match sqlx::query_as::<_, (String, i64, i32, String)>(
        "SELECT id::text, product_id, quantity, status FROM orders WHERE product_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *stores.pg)
    .await
    {
        Ok(rows) => {
            let known: BTreeSet<&str> = orders.iter().map(|o| o.id.as_str()).collect();
            let held: BTreeSet<&str> = rows.iter().map(|(id, ..)| id.as_str()).collect();
            out.push(Invariant::check(
                &name("orders_exactly_once_in_postgres"),
                known == held,
                format!(
                    "{} rows, orderers know {} ({} acknowledged + {} 503s that took effect + {} made by their keyed \
                     retry); missing {:?}, unknown to the orderers {:?}",
                    rows.len(),
                    known.len(),
                    records.orders.len(),
                    resolution.orders_taken.len(),
                    resolution.orders_by_retry.len(),
                    known.difference(&held).take(3).collect::<Vec<_>>(),
                    held.difference(&known).take(3).collect::<Vec<_>>()
                ),
            ));
            let mut client = Client::new(stores.target);
            let mut detail = Vec::new();
            let mut ok = true;
            for product in products {
                let told: i64 = orders
                    .iter()
                    .filter(|o| o.product == product.id)
                    .map(|o| o.quantity)
                    .sum();
                let completed: i64 = rows
                    .iter()
                    .filter(|(_, p, _, s)| *p as u64 == product.id && s == "completed")
                    .map(|(_, _, q, _)| i64::from(*q))
                    .sum();
                let live = client
                    .call(Method::GET, &format!("/products/{}", product.id), &[], "")
                    .await;
                let n = |f: &str| live.body()[f].as_i64().unwrap_or(i64::MIN);
                let adds_up = n("available") >= 0
                    && n("available") + n("reserved") + n("sold") == n("stock_total")
                    && n("stock_total") == product.stock;
                ok &= n("sold") == told && completed == told && adds_up;
                detail.push(format!(
                    "product {}: Redis sold {}, Postgres completed {completed}, told {told}{}",
                    product.id,
                    n("sold"),
                    if adds_up { "" } else { " (stock does not add up)" }
                ));
            }
            out.push(Invariant::check(&name("stock_sold_as_told"), ok, detail.join("; ")));
        }
        Err(e) => out.push(Invariant::fail(&name("orders_exactly_once_in_postgres"), e.to_string())),
    }

    // Wallet.
    let pattern = format!("{}-p%", mix.tag);
    match sqlx::query_as::<_, (String, String, i64)>(
        "SELECT player_id, reference_id, cash_delta_minor FROM wallet_entries \
         WHERE player_id LIKE $1 AND type IN ('deposit', 'bet')",
    )
    .bind(&pattern)
    .fetch_all(&mut *stores.pg)
    .await
    {
        Ok(rows) => {
            let known: BTreeSet<(&str, &str)> = records
                .wallet
                .iter()
                .map(|t| (t.player.as_str(), t.reference.as_str()))
                .collect();
            let held: BTreeSet<(&str, &str)> = rows.iter().map(|(p, r, _)| (p.as_str(), r.as_str())).collect();
            let mut client = Client::new(stores.target);
            let mut bad = Vec::new();
            for player in &records.players {
                let told: i64 = records
                    .wallet
                    .iter()
                    .filter(|t| t.player == *player)
                    .map(|t| t.delta)
                    .sum();
                let ledger: i64 = rows.iter().filter(|(p, ..)| p == player).map(|(.., d)| d).sum();
                let live = client
                    .call(Method::GET, &format!("/wallet/{player}?currency=EUR"), &[], "")
                    .await;
                let cash = match live.status() {
                    Some(200) => live.body()["cash_minor"].as_i64().unwrap_or(i64::MIN),
                    Some(404) => 0,
                    _ => i64::MIN,
                };
                if cash != told || ledger != told {
                    bad.push(format!("{player}: Redis {cash}, ledger {ledger}, told {told}"));
                }
            }
            out.push(Invariant::check(
                &name("wallet_as_told"),
                known == held && bad.is_empty(),
                format!(
                    "{} ledger entries, players told of {}; missing {:?}, unknown {:?}; balances off: {bad:?}",
                    rows.len(),
                    known.len(),
                    known.difference(&held).take(3).collect::<Vec<_>>(),
                    held.difference(&known).take(3).collect::<Vec<_>>()
                ),
            ));
        }
        Err(e) => out.push(Invariant::fail(&name("wallet_as_told"), e.to_string())),
    }

    // Reconcile: Postgres's history against Redis's live counts, everything.
    let auth = format!("Bearer {}", stores.admin_token);
    let mut client = Client::new(stores.target);
    let mut last = String::new();
    let mut ok = false;
    for _ in 0..6 {
        let reply = client
            .call(Method::GET, "/admin/reconcile", &[("authorization", &auth)], "")
            .await;
        last = reply.describe();
        if reply.status() == Some(200) {
            ok = reply.body()["ok"] == json!(true);
            break;
        }
    }
    out.push(Invariant::check(&name("reconcile_ok"), ok, last));
    out
}

fn first(list: &[String]) -> &[String] {
    &list[..list.len().min(3)]
}
