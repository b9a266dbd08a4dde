//! The flash sale's rules, through the real engine against real Redis and Postgres.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::Client as RedisClient;
use hyper::{Method, StatusCode};
use rand::RngExt;
use sqlx::PgPool;
use stampede::clock::Clock;

use crate::helpers::{HttpClient, Reply, TestApp, send, sold_over_shards, spawn_app, user_counts};

/// 1000 buyers race over 10,000 items.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_buyers_sell_exactly_ten_thousand_items() {
    thousand_buyers_contest(&[]).await;
}

/// The contest, on an engine started with `overrides` (a sale split over
/// several slots runs it too); Redis is checked over every shard, then
/// Postgres.
pub async fn thousand_buyers_contest(overrides: &[(&str, &str)]) {
    let app = Arc::new(spawn_app(overrides).await);
    contest(&app.http, app.addr).await;
    let sale = app.sale_id();
    assert_contest_in_redis(&app.redis, &app.prefix, sale).await;
    app.wait_flushed(Duration::from_secs(30)).await;
    assert_contest_in_postgres(&app.db, sale).await;
    Arc::into_inner(app).expect("all buyers done").finish().await;
}

/// Items of the contest: the sale's default stock.
pub const CONTEST_ITEMS: u32 = 10_000;
const CONTEST_BUYERS: u32 = 1000;
const CONTEST_LIMIT: usize = 10;
/// How long a buyer of a contest run under faults may keep waiting out 503s
/// and reservations left behind on one item before the contest fails.
const CONTEST_BUYER_PATIENCE: Duration = Duration::from_secs(60);

/// The contest, through `addr` (one engine, or several behind one port):
/// 1000 buyers race over 10,000 items. Each starts near its own share but
/// with a random overlap into its neighbours', walks forward until it holds
/// 10 items or has seen every item sold. So any item left unsold would mean
/// some buyer stopped early, and any double sale shows up here. Returns
/// once every item is sold exactly once and no buyer is over the limit,
/// with what the buyers sent. Any answer but a sale, `ITEM_SOLD` and, at
/// the end, the limit fails it.
pub async fn contest(http: &HttpClient, addr: SocketAddr) -> ContestFigures {
    run_contest(http, addr, On503::Fail).await
}

/// The contest while something takes Redis away now and then: a buyer
/// answered 503 finds out what happened as docs/operations.md ("After a
/// 503") tells a client to: a checkout is sent again (at once after
/// `REDIS_UNAVAILABLE`, after the `Retry-After` when shed); after a
/// purchase's `REDIS_UNAVAILABLE` and the `Retry-After`, the code is looked
/// up (`spent`: bought; `issued`: bought again; `void`: the item checked
/// out again). The same end: every item sold exactly once, nobody over the
/// limit. Returns what the buyers sent and met.
pub async fn contest_finding_out(http: &HttpClient, addr: SocketAddr) -> ContestFigures {
    run_contest(http, addr, On503::FindOut).await
}

/// What a contest buyer does with an answer that only a fault explains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On503 {
    Fail,
    FindOut,
}

/// What the buyers of a contest sent, and what those of a contest run
/// under faults met on the way.
#[derive(Debug, Default, Clone, Copy)]
pub struct ContestFigures {
    /// Requests sent, and the most one buyer sent: the last buyers to fill
    /// their share walk past thousands of sold items, each a refused
    /// checkout.
    pub requests: usize,
    pub most_of_one_buyer: usize,
    /// Requests answered 503 (each retried or followed by a lookup).
    pub unavailable: usize,
    /// Purchases of unknown outcome whose code was looked up.
    pub looked_up: usize,
    /// Of those, the ones that had gone through (`spent`).
    pub found_spent: usize,
    /// Codes found `void` (or refused as expired), whose item was checked
    /// out again.
    pub checked_out_again: usize,
    /// Waits for a reservation left behind to be released (the limit
    /// counted it).
    pub held_by_reservation: usize,
}

impl ContestFigures {
    fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.most_of_one_buyer = self.most_of_one_buyer.max(other.requests);
        self.unavailable += other.unavailable;
        self.looked_up += other.looked_up;
        self.found_spent += other.found_spent;
        self.checked_out_again += other.checked_out_again;
        self.held_by_reservation += other.held_by_reservation;
    }
}

/// One contest buyer's client.
struct Buyer {
    http: HttpClient,
    addr: SocketAddr,
    user: String,
    on_503: On503,
    /// When waiting on the current item fails the contest.
    patience: Instant,
    met: ContestFigures,
}

/// How one item ended for a buyer.
enum Got {
    Bought,
    Sold,
}

impl Buyer {
    async fn send(&mut self, method: Method, path: &str) -> Reply {
        self.met.requests += 1;
        send(&self.http, self.addr, method, path, None)
            .await
            .expect("engine answers")
    }

    fn finds_out(&self) -> bool {
        self.on_503 == On503::FindOut
    }

    /// Fails once the buyer has spent its patience on one item.
    fn keep_patience(&self, reply: &Reply, why: &str) {
        assert!(
            Instant::now() < self.patience,
            "{} still waiting on one item after {CONTEST_BUYER_PATIENCE:?}: {why} {:?}",
            self.user,
            reply.body
        );
    }

    /// Waits `Retry-After` (1 s when absent), failing once the buyer's
    /// patience is spent.
    async fn wait(&self, reply: &Reply, why: &str) {
        self.keep_patience(reply, why);
        let secs = reply.retry_after_secs().unwrap_or(1);
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }

    /// A checkout; under faults one answered `503 REDIS_UNAVAILABLE` is
    /// checked out again at once (a checkout reserves nothing), one shed
    /// (`OVERLOADED`) after the wait.
    async fn checkout(&mut self, item: u32) -> Reply {
        loop {
            let reply = self
                .send(Method::POST, &format!("/checkout?user_id={}&id={item}", self.user))
                .await;
            if reply.status != StatusCode::SERVICE_UNAVAILABLE || !self.finds_out() {
                return reply;
            }
            self.met.unavailable += 1;
            if reply.error_code() == "REDIS_UNAVAILABLE" {
                self.keep_patience(&reply, "checkout");
            } else {
                self.wait(&reply, "checkout").await;
            }
        }
    }

    /// The code's state, read again while the lookup answers 503.
    async fn look_up(&mut self, code: &str) -> String {
        self.met.looked_up += 1;
        loop {
            let reply = self.send(Method::GET, &format!("/codes/{code}")).await;
            if reply.status == StatusCode::OK {
                return reply.body["state"].as_str().expect("state").to_owned();
            }
            assert_eq!(
                reply.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{code}: {:?}",
                reply.body
            );
            self.met.unavailable += 1;
            self.wait(&reply, "code lookup").await;
        }
    }

    /// Checks `item` out and purchases it, until it is bought or found sold.
    async fn buy(&mut self, item: u32) -> Got {
        self.patience = Instant::now() + CONTEST_BUYER_PATIENCE;
        'checkout: loop {
            let checkout = self.checkout(item).await;
            match checkout.error_code() {
                "" => {}
                "ITEM_SOLD" => return Got::Sold,
                // A reservation of a purchase that did not go through holds
                // a unit of the limit until it is released (by the
                // purchase's last step, or the sweeper).
                "USER_LIMIT_REACHED" if self.finds_out() => {
                    self.met.held_by_reservation += 1;
                    self.wait(&checkout, "the limit, below it").await;
                    continue;
                }
                other => panic!("{} checkout {item}: unexpected {other} {:?}", self.user, checkout.body),
            }
            let code = checkout.body["code"].as_str().expect("code").to_owned();
            loop {
                let purchase = self.send(Method::POST, &format!("/purchase?code={code}")).await;
                let unknown = match (purchase.status, purchase.error_code()) {
                    (StatusCode::OK, _) => return Got::Bought,
                    (_, "ITEM_SOLD") => return Got::Sold,
                    _ if !self.finds_out() => {
                        panic!("{} purchase {item}: unexpected {:?}", self.user, purchase.body)
                    }
                    // Not carried out: buy again after the wait.
                    (StatusCode::SERVICE_UNAVAILABLE, "OVERLOADED" | "OUTBOX_FULL") => false,
                    (StatusCode::SERVICE_UNAVAILABLE, "REDIS_UNAVAILABLE") => true,
                    // Spent: by an earlier try that answered 503.
                    (_, "CODE_USED") => true,
                    // Void: the sweeper resolved an abandoned try.
                    (_, "CODE_EXPIRED") => {
                        self.met.checked_out_again += 1;
                        continue 'checkout;
                    }
                    (_, "USER_LIMIT_REACHED") => {
                        self.met.held_by_reservation += 1;
                        self.wait(&purchase, "the limit, below it").await;
                        continue;
                    }
                    _ => panic!("{} purchase {item}: unexpected {:?}", self.user, purchase.body),
                };
                if purchase.status == StatusCode::SERVICE_UNAVAILABLE {
                    self.met.unavailable += 1;
                    self.wait(&purchase, "purchase").await;
                }
                if !unknown {
                    continue;
                }
                match self.look_up(&code).await.as_str() {
                    "spent" => {
                        self.met.found_spent += 1;
                        return Got::Bought;
                    }
                    "issued" => continue,
                    "void" | "expired" => {
                        self.met.checked_out_again += 1;
                        continue 'checkout;
                    }
                    other => panic!("{} code {code} of item {item}: state {other}", self.user),
                }
            }
        }
    }
}

async fn run_contest(http: &HttpClient, addr: SocketAddr, on_503: On503) -> ContestFigures {
    let mut buyers = Vec::new();
    for buyer in 0..CONTEST_BUYERS {
        let mut client = Buyer {
            http: http.clone(),
            addr,
            user: format!("buyer-{buyer}"),
            on_503,
            patience: Instant::now() + CONTEST_BUYER_PATIENCE,
            met: ContestFigures::default(),
        };
        buyers.push(tokio::spawn(async move {
            let start = (buyer * 10 + rand::rng().random_range(0..30)) % CONTEST_ITEMS;
            let mut bought = Vec::new();
            let mut seen_sold = 0;
            let mut offset = 0;
            while bought.len() < CONTEST_LIMIT && seen_sold < CONTEST_ITEMS {
                let item = (start + offset) % CONTEST_ITEMS + 1;
                offset += 1;
                match client.buy(item).await {
                    Got::Bought => bought.push(item),
                    Got::Sold => seen_sold += 1,
                }
            }
            // Over the limit is refused at checkout.
            let over = client.checkout((start + offset) % CONTEST_ITEMS + 1).await;
            assert!(
                matches!(over.error_code(), "USER_LIMIT_REACHED" | "ITEM_SOLD"),
                "{} past the limit: {:?}",
                client.user,
                over.body
            );
            (client.user, bought, client.met)
        }));
    }
    let mut owner_of: HashMap<u32, String> = HashMap::new();
    let mut total = 0;
    let mut met = ContestFigures::default();
    for buyer in buyers {
        let (user, bought, figures) = buyer.await.expect("buyer task");
        met.add(&figures);
        assert!(bought.len() <= CONTEST_LIMIT, "{user} bought {}", bought.len());
        total += bought.len();
        for item in bought {
            if let Some(first) = owner_of.insert(item, user.clone()) {
                panic!("item {item} sold twice: {first} and {user}");
            }
        }
    }
    assert_eq!(total, CONTEST_ITEMS as usize, "every item sold exactly once");
    met
}

/// Redis holds the contest's sale exactly, over every shard of `prefix`:
/// 10,000 items sold and as many purchases counted over the users, nobody
/// over the limit, no reservation left.
pub async fn assert_contest_in_redis(redis: &RedisClient, prefix: &str, sale: u64) {
    assert_eq!(sold_over_shards(redis, prefix, sale).await, i64::from(CONTEST_ITEMS));
    let counts = user_counts(redis, prefix, sale).await;
    assert_eq!(counts.values().map(|(p, _)| p).sum::<i64>(), i64::from(CONTEST_ITEMS));
    for (user, (purchased, reserved)) in &counts {
        assert!(*purchased <= CONTEST_LIMIT as i64, "{user} holds {purchased} in Redis");
        assert_eq!(*reserved, 0, "{user} has a reservation left");
    }
}

/// Postgres holds the contest's sale exactly: every item once, no buyer
/// over the limit. Call once the outbox is flushed.
pub async fn assert_contest_in_postgres(db: &PgPool, sale: u64) {
    let (count, distinct, max_per_user): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT item_id),
                (SELECT COALESCE(max(n), 0) FROM (SELECT count(*) AS n FROM purchases GROUP BY user_id) u)
         FROM purchases WHERE sale_id = $1",
    )
    .bind(sale as i64)
    .fetch_one(db)
    .await
    .expect("query purchases");
    assert_eq!((count, distinct), (i64::from(CONTEST_ITEMS), i64::from(CONTEST_ITEMS)));
    assert!(max_per_user <= CONTEST_LIMIT as i64);
}

/// 200 concurrent purchases of one code: exactly one succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_code_is_spent_once_under_200_concurrent_purchases() {
    let app = Arc::new(spawn_app(&[]).await);
    let code = app.code_for("alice", 7).await;
    let by_status = purchase_200_times_at_once(&app, &code).await;
    assert_eq!(by_status.get(&StatusCode::OK), Some(&1), "{by_status:?}");
    assert_eq!(by_status.get(&StatusCode::CONFLICT), Some(&199), "{by_status:?}");
    Arc::into_inner(app).expect("done").finish().await;
}

/// Sends 200 purchases of `code` at once; every 409 is `CODE_USED`. The
/// replies counted by status.
pub async fn purchase_200_times_at_once(app: &Arc<TestApp>, code: &str) -> HashMap<StatusCode, usize> {
    let mut attempts = Vec::new();
    for _ in 0..200 {
        let (app, code) = (app.clone(), code.to_owned());
        attempts.push(tokio::spawn(async move { app.purchase(&code).await }));
    }
    let mut by_status: HashMap<StatusCode, usize> = HashMap::new();
    for attempt in attempts {
        let reply = attempt.await.expect("task");
        if reply.status == StatusCode::CONFLICT {
            assert_eq!(reply.error_code(), "CODE_USED");
        }
        *by_status.entry(reply.status).or_default() += 1;
    }
    by_status
}

/// One user holding 15 codes, purchasing all at once, gets exactly the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_purchases_never_overrun_the_user_limit() {
    let app = Arc::new(spawn_app(&[]).await);
    greedy_user_gets_exactly_the_limit(&app).await;
    Arc::into_inner(app).expect("done").finish().await;
}

/// User `greedy` checks out items 1 to 15 and purchases them all at once:
/// exactly the limit (10) goes through, the rest are `USER_LIMIT_REACHED`,
/// and so is a further checkout.
pub async fn greedy_user_gets_exactly_the_limit(app: &Arc<TestApp>) {
    let mut codes = Vec::new();
    for item in 1..=15 {
        codes.push(app.code_for("greedy", item).await);
    }
    let mut purchases = Vec::new();
    for code in codes {
        let app = app.clone();
        purchases.push(tokio::spawn(async move { app.purchase(&code).await }));
    }
    let mut ok = 0;
    for purchase in purchases {
        let reply = purchase.await.expect("task");
        match reply.status {
            StatusCode::OK => ok += 1,
            StatusCode::FORBIDDEN => assert_eq!(reply.error_code(), "USER_LIMIT_REACHED"),
            other => panic!("unexpected {other}: {:?}", reply.body),
        }
    }
    assert_eq!(ok, 10);
    let refused = app.checkout("greedy", 100).await;
    assert_eq!(
        (refused.status, refused.error_code()),
        (StatusCode::FORBIDDEN, "USER_LIMIT_REACHED")
    );
}

#[tokio::test]
async fn an_expired_code_is_gone() {
    let app = spawn_app(&[("CHECKOUT_TTL_SECS", "60")]).await;
    let code = app.code_for("bob", 3).await;
    app.clock.advance_ms(60_000);
    let reply = app.purchase(&code).await;
    assert_eq!((reply.status, reply.error_code()), (StatusCode::GONE, "CODE_EXPIRED"));
    // The item was never sold: a fresh code buys it.
    let fresh = app.code_for("bob", 3).await;
    assert_eq!(app.purchase(&fresh).await.status, StatusCode::OK);
    app.finish().await;
}

#[tokio::test]
async fn a_code_just_before_expiry_still_buys() {
    let app = spawn_app(&[("CHECKOUT_TTL_SECS", "60")]).await;
    let code = app.code_for("bob", 3).await;
    app.clock.advance_ms(59_999);
    assert_eq!(app.purchase(&code).await.status, StatusCode::OK);
    app.finish().await;
}

/// Sale N+1 starts with fresh stock and refuses codes of sale N.
#[tokio::test]
async fn a_sale_rollover_invalidates_old_codes_and_restocks() {
    let app = spawn_app(&[("SALE_PERIOD_SECS", "60"), ("ITEMS_PER_SALE", "5")]).await;
    let first_sale = app.sale_id();
    let sold_code = app.code_for("carol", 1).await;
    assert_eq!(app.purchase(&sold_code).await.status, StatusCode::OK);
    let stale_code = app.code_for("carol", 2).await;
    let sold_out = app.checkout("dave", 1).await;
    assert_eq!(
        (sold_out.status, sold_out.error_code()),
        (StatusCode::CONFLICT, "ITEM_SOLD")
    );

    app.clock.advance_ms(60_000);
    let second_sale = app.sale_id();
    assert_eq!(second_sale, first_sale + 1);
    let stale = app.purchase(&stale_code).await;
    assert_eq!((stale.status, stale.error_code()), (StatusCode::GONE, "SALE_OVER"));
    let code = app.code_for("dave", 1).await;
    let bought = app.purchase(&code).await;
    assert_eq!(bought.status, StatusCode::OK);
    assert_eq!(bought.body["sale_id"], second_sale);
    let current = app.get("/sales/current").await;
    assert_eq!(current.body["sale_id"], second_sale);
    assert_eq!(current.body["items_sold"], 1);
    assert_eq!(current.body["items_total"], 5);

    app.wait_flushed(Duration::from_secs(10)).await;
    let sales: Vec<i64> = sqlx::query_scalar("SELECT sale_id FROM sales ORDER BY sale_id")
        .fetch_all(&app.db)
        .await
        .expect("sales");
    assert_eq!(sales, vec![first_sale as i64, second_sale as i64]);
    app.finish().await;
}

/// Contest rule: every checkout attempt, accepted or refused, lands in
/// Postgres with its outcome.
#[tokio::test]
async fn every_checkout_attempt_reaches_postgres() {
    let app = spawn_app(&[("ITEMS_PER_SALE", "3"), ("PER_USER_LIMIT", "1")]).await;
    let code = app.code_for("erin", 1).await;
    assert_eq!(app.purchase(&code).await.status, StatusCode::OK);
    let expected: [(&str, u32, &str); 5] = [
        ("erin", 1, "OK"),
        ("frank", 1, "ITEM_SOLD"),
        ("frank", 4, "ITEM_NOT_FOUND"),
        ("erin", 2, "USER_LIMIT_REACHED"),
        ("frank", 2, "OK"),
    ];
    for (user, item, _) in &expected[1..] {
        app.checkout(user, *item).await;
    }
    app.wait_flushed(Duration::from_secs(10)).await;
    let rows: Vec<(String, i64, String, Option<String>, bool)> = sqlx::query_as(
        "SELECT user_id, item_id, outcome, code, expires_at IS NOT NULL FROM checkout_attempts ORDER BY attempted_at, event_id",
    )
    .fetch_all(&app.db)
    .await
    .expect("attempts");
    assert_eq!(rows.len(), expected.len(), "{rows:?}");
    for ((user, item, outcome, code, has_expiry), (want_user, want_item, want_outcome)) in rows.iter().zip(expected) {
        assert_eq!(
            (user.as_str(), *item, outcome.as_str()),
            (want_user, i64::from(want_item), want_outcome)
        );
        assert_eq!(code.is_some(), want_outcome == "OK");
        assert_eq!(*has_expiry, want_outcome == "OK");
    }
    app.finish().await;
}

#[tokio::test]
async fn purchase_accepts_a_json_body_as_well_as_a_query() {
    let app = spawn_app(&[]).await;
    // `item_id=item1` is how the replaced Go service's clients name items.
    let checkout = app.post("/checkout?user_id=user1&item_id=item1").await;
    assert_eq!(checkout.status, StatusCode::OK);
    assert_eq!(checkout.body["item_id"], 1);
    let code = checkout.body["checkout_code"]
        .as_str()
        .expect("checkout_code")
        .to_owned();
    let body = format!(r#"{{"checkout_code": "{code}"}}"#);
    let reply = app.request(hyper::Method::POST, "/purchase", Some(&body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["success"], true);
    assert_eq!(reply.body["item_id"], 1);
    app.finish().await;
}

#[tokio::test]
async fn current_sale_health_and_index_report() {
    let app = spawn_app(&[]).await;
    let current = app.get("/sales/current").await;
    assert_eq!(current.status, StatusCode::OK);
    assert_eq!(current.body["items_total"], 10_000);
    assert_eq!(current.body["items_sold"], 0);
    assert_eq!(current.body["per_user_limit"], 10);
    assert_eq!(current.body["opened"], false);
    let health = app.get("/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["status"], "ok");
    assert_eq!(health.body["outbox_backlog"], 0);
    let index = app.get("/").await;
    let paths: HashSet<&str> = index.body["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert!(paths.contains("/checkout") && paths.contains("/purchase"));
    let code = app.code_for("gina", 9).await;
    app.purchase(&code).await;
    let metrics = app
        .http
        .get(app.url("/metrics").parse().expect("uri"))
        .await
        .expect("metrics answer");
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = http_body_util::BodyExt::collect(metrics.into_body())
        .await
        .expect("body")
        .to_bytes();
    let text = String::from_utf8_lossy(&text);
    for name in [
        "stampede_http_requests_total",
        "stampede_http_request_duration_seconds_bucket",
        "stampede_script_outcomes_total",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}");
    }
    assert!(!text.contains("gina"), "user ids never appear in metrics");
    let _ = app.clock.now_ms();
    app.finish().await;
}

/// Checkouts and purchases racing for a few items: exactly one buyer each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contention_for_few_items_sells_each_once() {
    let app = Arc::new(spawn_app(&[("ITEMS_PER_SALE", "20")]).await);
    let mut racers = Vec::new();
    for racer in 0..300 {
        let app = app.clone();
        racers.push(tokio::spawn(async move {
            let user = format!("racer-{racer}");
            let item = racer % 20 + 1;
            let checkout = app.checkout(&user, item).await;
            if checkout.status != StatusCode::OK {
                assert_eq!(checkout.error_code(), "ITEM_SOLD");
                return None;
            }
            let code = checkout.body["code"].as_str().expect("code").to_owned();
            let reply = app.purchase(&code).await;
            match reply.status {
                StatusCode::OK => Some(item),
                _ => {
                    assert_eq!(reply.error_code(), "ITEM_SOLD");
                    None
                }
            }
        }));
    }
    let mut sold = Vec::new();
    for racer in racers {
        sold.extend(racer.await.expect("task"));
    }
    sold.sort_unstable();
    assert_eq!(sold, (1..=20).collect::<Vec<_>>(), "each item sold exactly once");
    Arc::into_inner(app).expect("done").finish().await;
}

/// A user's codes are capped per sale; past the cap the answer says to come
/// back when the sale ends, since only the next sale takes another checkout.
#[tokio::test]
async fn too_many_checkouts_says_when_to_come_back() {
    let app = spawn_app(&[("SALE_PERIOD_SECS", "60")]).await;
    // The clock stands 1 s into the sale: it ends 59 s from now.
    for i in 0..1_000 {
        let reply = app.post(&format!("/checkout?user_id=hoarder&id={}", 1 + i % 50)).await;
        assert_eq!(reply.status, StatusCode::OK, "checkout {i}: {:?}", reply.body);
    }
    let refused = app.post("/checkout?user_id=hoarder&id=1").await;
    assert_eq!(
        (refused.status, refused.error_code()),
        (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_CHECKOUTS")
    );
    assert_eq!(refused.retry_after_secs(), Some(59));
    // Another user is not held back by the first one's codes.
    let other = app.post("/checkout?user_id=someone&id=1").await;
    assert_eq!(other.status, StatusCode::OK, "{:?}", other.body);
    app.finish().await;
}

/// One call may carry checkouts of two sales (around an hour's turn), each
/// sale's keys and settings sent once per run of its checkouts: every
/// checkout is judged against its own sale's, and its code records them.
#[tokio::test]
async fn a_call_with_checkouts_of_two_sales_judges_each_against_its_own() {
    use fred::interfaces::{ClientLike, KeysInterface};
    use fred::types::Value;
    use stampede::redis::lua::Marked;
    use stampede::sale::lua::CHECKOUT;

    let redis = crate::helpers::redis_client().await;
    let prefix = crate::helpers::unique_name();
    let key = |rest: String| format!("{prefix}:{{0}}:{rest}");
    let now = stampede::clock::SystemClock.now_ms();
    // (sale, items, per-user limit)
    let sales = [(1_i64, 10_i64, 1_i64), (2, 5, 3)];
    let part = |(sale, items, limit): (i64, i64, i64)| -> (Vec<String>, Vec<Value>) {
        (
            ["meta", "sold", "users"]
                .map(|k| key(format!("sale:{sale}:{k}")))
                .to_vec(),
            [sale, now, now + 3_600_000, items, limit, 50, 1_000]
                .map(Value::from)
                .to_vec(),
        )
    };
    // (sale index, item, user, sends the sale's part)
    let checkouts = [
        (0, 3, "a", true),
        (0, 11, "b", false),
        (1, 6, "c", true),
        (1, 4, "d", false),
        (0, 2, "e", true),
    ];
    let mut keys = vec![key("outbox".into()), key("outbox:events".into())];
    let mut args: Vec<Value> = vec![(checkouts.len() as i64).into(), 1_000_000.into()];
    for (i, &(sale, item, user, sends)) in checkouts.iter().enumerate() {
        args.push(i64::from(sends).into());
        if sends {
            let (k, a) = part(sales[sale]);
            keys.extend(k);
            args.extend(a);
        }
        keys.push(key(format!("code:c{i}")));
        args.extend([
            now.into(),
            item.into(),
            user.into(),
            format!("c{i}").into(),
            (now + 600_000).into(),
            600_000.into(),
            7_200_000.into(),
        ]);
    }
    keys.push(key("call:two-sales".into()));
    args.push(20_000.into());
    let replies = CHECKOUT
        .lua
        .call_on(&redis, keys, args, Marked::No)
        .await
        .expect("the call runs");
    let outcomes: Vec<String> = replies
        .into_iter()
        .map(|r| match r {
            Value::Array(v) => v[0].as_string().expect("an outcome"),
            other => panic!("a reply array, not {other:?}"),
        })
        .collect();
    // Item 11 is past sale 1's 10 items; item 6 past sale 2's 5.
    assert_eq!(outcomes, ["OK", "ITEM_NOT_FOUND", "ITEM_NOT_FOUND", "OK", "OK"]);
    // Each code records its own sale and that sale's limit.
    for (i, sale, item, user, limit) in [(0, 1, 3, "a", 1), (3, 2, 4, "d", 3), (4, 1, 2, "e", 1)] {
        let stored: String = redis.get(key(format!("code:c{i}"))).await.expect("GET code");
        let fields: Vec<&str> = stored.split('\u{1f}').collect();
        assert_eq!(
            (fields[0], fields[1], fields[2], fields[4]),
            (
                sale.to_string().as_str(),
                user,
                item.to_string().as_str(),
                limit.to_string().as_str()
            ),
            "code c{i}: {stored:?}"
        );
    }
    crate::helpers::delete_keys(&redis, &prefix).await;
    let _ = redis.quit().await;
}
