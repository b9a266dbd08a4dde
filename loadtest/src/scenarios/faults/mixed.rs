//! The mixed load of the fault cases, what its clients were told, how their
//! unknown outcomes are found out, and the invariants checked against those
//! records (the same as the fault suite's, tests/api/faults/mod.rs).
//!
//! Buyers check out and buy items of their own, a purchase sent once per
//! code; orderers order 1–3 of a product, every other order with an
//! `Idempotency-Key`, never sent again during the load; players deposit and
//! bet, each transaction sent again with its reference until it is decided.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::RngExt;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::common::engine::{self, CodeFate, OrderFate};
use crate::common::http::{Answer, Client, Method, Target};

pub const TIMEOUT: Duration = Duration::from_secs(30);
/// How long a player sends a transaction again before giving up on it.
pub const DECIDE_WITHIN: Duration = Duration::from_secs(90);
/// Items of the sale reserved for each buyer of a case.
pub const ITEMS_PER_BUYER: u64 = 20_000;

#[derive(Debug, Clone, Copy)]
pub struct Product {
    pub id: u64,
    pub stock: i64,
}

/// Creates products through the admin API.
pub async fn create_products(target: &Target, token: &str, tag: &str, stocks: &[i64]) -> Result<Vec<Product>, String> {
    let mut client = Client::new(target, TIMEOUT);
    let auth = format!("Bearer {token}");
    let mut out = Vec::new();
    for (n, stock) in stocks.iter().enumerate() {
        let body = json!({"name": format!("{tag}-{n}"), "stock": stock, "price_cents": 500, "merchant_id": 1});
        let answer = client
            .call_json(
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
    pub fn sale(&self) -> Option<i64> {
        self.code.split('-').next().and_then(|s| s.parse().ok())
    }
}

#[derive(Debug, Clone)]
pub struct Order {
    pub id: String,
    pub product: u64,
    pub quantity: i64,
}

/// An order whose answer was lost or a 503, and what it asked for.
#[derive(Debug, Clone)]
pub struct UnknownOrder {
    pub order: engine::UnknownOrder,
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
    let mut client = Client::new(&ctx.target, TIMEOUT);
    for n in 1..=ITEMS_PER_BUYER {
        if ctx.stopped() {
            break;
        }
        let item = ctx.mix.item_base + b * ITEMS_PER_BUYER + n;
        let user = format!("{}-b{b}-{}", ctx.mix.tag, n / 500);
        rec.requests += 1;
        let checkout = client
            .call_json(Method::POST, &format!("/checkout?user_id={user}&id={item}"), &[], "")
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
            .call_json(Method::POST, &format!("/purchase?code={code}"), &[], "")
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
    let mut client = Client::new(&ctx.target, TIMEOUT);
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
        let answer = client.call_json(Method::POST, "/orders", &headers, &body).await;
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
                order: engine::UnknownOrder::of(&answer, key.as_deref(), &body),
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
    let mut client = Client::new(&ctx.target, TIMEOUT);
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
            let answer = client.call_json(Method::POST, "/wallet/transactions", &[], &body).await;
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
/// up, the order read by the id of its 503, a keyed order sent again with
/// its key (see `common::engine`).
pub async fn resolve(target: &Target, records: &Records) -> Resolution {
    let mut out = Resolution::default();
    let mut client = Client::new(target, TIMEOUT);
    for purchase in &records.purchases_unknown {
        match engine::resolve_code(&mut client, &purchase.code).await {
            CodeFate::Spent => out.purchases_taken.push(purchase.clone()),
            CodeFate::NotSpent => {}
            CodeFate::Unresolved(why) => out.unresolved.push(why),
        }
    }
    for unknown in &records.orders_unknown {
        let order = |record: &Value| Order {
            id: record["id"].as_str().unwrap_or_default().to_owned(),
            product: unknown.product,
            quantity: unknown.quantity,
        };
        match engine::resolve_order(&mut client, &unknown.order).await {
            OrderFate::Made(record) => out.orders_taken.push(order(&record)),
            OrderFate::MadeByRetry(record) => out.orders_by_retry.push(order(&record)),
            OrderFate::NotMade => {}
            OrderFate::Unresolved(why) => out.unresolved.push(why),
        }
    }
    out
}
