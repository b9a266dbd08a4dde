//! Limited-stock orders: no oversell under concurrency, idempotency keys,
//! holds that expire (once, whichever engine expires them), crash safety,
//! and stable errors for bad input.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fred::interfaces::SortedSetsInterface;
use futures::StreamExt;
use hyper::{Method, StatusCode};
use rand::RngExt;
use serde_json::{Value, json};

use crate::helpers::EngineProcess;
use crate::helpers::{
    ADMIN_TOKEN, HttpClient, Reply, TestApp, create_database, database_url, delete_keys, drop_database, engine_keys,
    http_client, keys_matching, redis_client, scaled, send, send_with, spawn_app, spawn_app_sharing, unique_name,
    wait_for_acknowledged,
};

pub async fn create_product(app: &TestApp, stock: i64, price_cents: i64, max_per_buyer: i64) -> u64 {
    let body = json!({"name": "Widget", "stock": stock, "price_cents": price_cents, "merchant_id": 7,
                      "max_per_buyer": max_per_buyer})
    .to_string();
    let reply = app.admin(Method::POST, "/products", Some(&body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.body["id"].as_u64().expect("integer id")
}

pub async fn order(app: &TestApp, body: &Value, key: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
    app.request_with(Method::POST, "/orders", Some(&body.to_string()), &headers)
        .await
}

pub async fn product(app: &TestApp, id: u64) -> Value {
    let reply = app.get(&format!("/products/{id}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.body
}

pub fn counts(p: &Value) -> (i64, i64, i64, i64) {
    let n = |f: &str| p[f].as_i64().unwrap_or_else(|| panic!("{f} in {p}"));
    (n("stock_total"), n("available"), n("reserved"), n("sold"))
}

pub fn assert_invariant(p: &Value) {
    let (total, available, reserved, sold) = counts(p);
    assert!(available >= 0, "available below 0: {p}");
    assert_eq!(
        available + reserved + sold,
        total,
        "available + reserved + sold = stock_total: {p}"
    );
}

/// Reads the product over and over while `running`, checking the invariant
/// at every sample; returns the number of samples.
fn watch_invariant(
    http: HttpClient,
    addr: std::net::SocketAddr,
    id: u64,
    running: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut samples = 0;
        while running.load(Ordering::SeqCst) {
            let reply = send(&http, addr, Method::GET, &format!("/products/{id}"), None)
                .await
                .expect("product read");
            assert_invariant(&reply.body);
            samples += 1;
        }
        samples
    })
}

pub async fn reconcile_ok(app: &TestApp) -> Value {
    let reply = app.admin(Method::GET, "/admin/reconcile", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["ok"], json!(true), "reconcile: {}", reply.body);
    reply.body
}

/// Postgres's count of each status for `product`.
pub async fn statuses_in_postgres(app: &TestApp, product: u64) -> HashMap<String, (i64, i64)> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT status, count(*), COALESCE(SUM(quantity), 0)::bigint FROM orders WHERE product_id = $1 GROUP BY status",
    )
    .bind(product as i64)
    .fetch_all(&app.db)
    .await
    .expect("orders by status");
    rows.into_iter().map(|(s, n, q)| (s, (n, q))).collect()
}

/// The classic oversell race: 500 concurrent orders for a product with stock 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_concurrent_orders_sell_exactly_the_stock() {
    let app = spawn_app(&[]).await;
    let id = create_product(&app, 100, 1999, 0).await;
    let running = Arc::new(AtomicBool::new(true));
    let watcher = watch_invariant(app.http.clone(), app.addr, id, running.clone());

    let mut tasks = Vec::new();
    for i in 0..500 {
        let (http, addr) = (app.http.clone(), app.addr);
        tasks.push(tokio::spawn(async move {
            let body = json!({"product_id": id, "quantity": 1, "buyer_id": format!("user-{i}")}).to_string();
            send(&http, addr, Method::POST, "/orders", Some(&body))
                .await
                .expect("answer")
        }));
    }
    let mut ok = Vec::new();
    let mut out_of_stock = 0;
    for task in tasks {
        let reply = task.await.expect("task");
        match reply.status {
            StatusCode::OK => ok.push(reply.body),
            StatusCode::CONFLICT => {
                assert_eq!(reply.error_code(), "OUT_OF_STOCK");
                out_of_stock += 1;
            }
            other => panic!("unexpected {other}: {:?}", reply.body),
        }
    }
    running.store(false, Ordering::SeqCst);
    assert!(watcher.await.expect("watcher") > 0);
    assert_eq!(ok.len(), 100, "exactly the stock succeeds");
    assert_eq!(out_of_stock, 400);
    let first = &ok[0];
    assert_eq!(first["status"], "completed");
    assert_eq!(first["total_amount_cents"], 1999);
    assert_eq!(first["product_id"], id);
    assert!(first["created_at"].as_str().expect("created_at").ends_with('Z'));
    let ids: HashSet<&str> = ok.iter().map(|o| o["id"].as_str().expect("id")).collect();
    assert_eq!(ids.len(), 100, "order ids are unique");
    // Readable at once, before any flush.
    let read = app.get(&format!("/orders/{}", first["id"].as_str().expect("id"))).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(&read.body, first);

    let p = product(&app, id).await;
    assert_eq!(counts(&p), (100, 0, 0, 100));
    app.wait_flushed(Duration::from_secs(10)).await;
    assert_eq!(statuses_in_postgres(&app, id).await["completed"], (100, 100));
    reconcile_ok(&app).await;
    app.finish().await;
}

/// Quantities 1 to 5 mixed, demand far over stock: nothing is half taken, no
/// refusal asked for less than what was left, and sold ends equal to stock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_quantities_never_oversell_and_sell_out_exactly() {
    let app = spawn_app(&[]).await;
    let id = create_product(&app, 100, 250, 0).await;
    let running = Arc::new(AtomicBool::new(true));
    let watcher = watch_invariant(app.http.clone(), app.addr, id, running.clone());
    let mut tasks = Vec::new();
    for i in 0..400 {
        let quantity: i64 = rand::rng().random_range(1..=5);
        let (http, addr) = (app.http.clone(), app.addr);
        tasks.push(tokio::spawn(async move {
            let body = json!({"product_id": id, "quantity": quantity, "buyer_id": format!("b{i}")}).to_string();
            (
                quantity,
                send(&http, addr, Method::POST, "/orders", Some(&body))
                    .await
                    .expect("answer"),
            )
        }));
    }
    let (mut sold, mut refused_quantities) = (0, Vec::new());
    for task in tasks {
        let (quantity, reply) = task.await.expect("task");
        match reply.status {
            StatusCode::OK => {
                assert_eq!(reply.body["quantity"], quantity);
                assert_eq!(reply.body["total_amount_cents"], quantity * 250);
                sold += quantity;
            }
            StatusCode::CONFLICT => refused_quantities.push(quantity),
            other => panic!("unexpected {other}: {:?}", reply.body),
        }
    }
    let (_, left, _, redis_sold) = counts(&product(&app, id).await);
    assert_eq!(redis_sold, sold);
    assert_eq!(left, 100 - sold);
    // Available only falls: a refusal that asked for no more than what is
    // left now would have been an all-or-nothing failure.
    assert!(
        refused_quantities.iter().all(|q| *q > left),
        "a request for at most {left} was refused"
    );
    // The remainder goes to single units, so sold reaches stock exactly.
    let mut tail = Vec::new();
    for i in 0..10 {
        let (http, addr) = (app.http.clone(), app.addr);
        tail.push(tokio::spawn(async move {
            let body = json!({"product_id": id, "quantity": 1, "buyer_id": format!("t{i}")}).to_string();
            send(&http, addr, Method::POST, "/orders", Some(&body))
                .await
                .expect("answer")
        }));
    }
    let tail_ok = futures::future::join_all(tail)
        .await
        .into_iter()
        .filter(|r| r.as_ref().expect("task").status == StatusCode::OK)
        .count() as i64;
    assert_eq!(tail_ok, left.min(10));
    running.store(false, Ordering::SeqCst);
    watcher.await.expect("watcher");
    let p = product(&app, id).await;
    assert_eq!(counts(&p), (100, 0, 0, 100), "sold equals stock exactly");
    app.wait_flushed(Duration::from_secs(10)).await;
    assert_eq!(statuses_in_postgres(&app, id).await["completed"].1, 100);
    reconcile_ok(&app).await;
    app.finish().await;
}

/// 50 concurrent POSTs with one key: one order, 50 identical bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_idempotency_key_makes_one_order() {
    let app = spawn_app(&[]).await;
    let id = create_product(&app, 10, 500, 0).await;
    let body = json!({"product_id": id, "quantity": 2, "buyer_id": "user-123"}).to_string();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (http, addr, body) = (app.http.clone(), app.addr, body.clone());
        tasks.push(tokio::spawn(async move {
            send_with(
                &http,
                addr,
                Method::POST,
                "/orders",
                Some(&body),
                &[("idempotency-key", "k-1")],
            )
            .await
            .expect("answer")
        }));
    }
    let replies: Vec<Reply> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
    assert!(replies.iter().all(|r| r.body == replies[0].body), "50 identical bodies");
    let replayed = replies
        .iter()
        .filter(|r| r.headers.get("idempotent-replayed").is_some())
        .count();
    assert_eq!(replayed, 49, "all but the first are replays");
    assert_eq!(counts(&product(&app, id).await), (10, 8, 0, 2), "one order");

    // Same key, another body: 422, nothing taken.
    let other = json!({"product_id": id, "quantity": 3, "buyer_id": "user-123"});
    let reply = order(&app, &other, Some("k-1")).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_code(), "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(counts(&product(&app, id).await), (10, 8, 0, 2));

    // A refusal is replayed too, even once stock is back.
    let big = json!({"product_id": id, "quantity": 9, "buyer_id": "u2"});
    let first = order(&app, &big, Some("k-2")).await;
    assert_eq!(
        (first.status, first.error_code()),
        (StatusCode::CONFLICT, "OUT_OF_STOCK")
    );
    let restocked = app
        .admin(Method::POST, &format!("/products/{id}/stock"), Some(r#"{"add": 5}"#))
        .await;
    assert_eq!(restocked.status, StatusCode::OK, "{:?}", restocked.body);
    assert_eq!(restocked.body["available"], 13);
    let again = order(&app, &big, Some("k-2")).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");

    // A 400 is not stored: the key stays free for a valid request.
    let bad = json!({"product_id": id, "quantity": 0, "buyer_id": "u3"});
    assert_eq!(order(&app, &bad, Some("k-3")).await.status, StatusCode::BAD_REQUEST);
    let good = json!({"product_id": id, "quantity": 1, "buyer_id": "u3"});
    let reply = order(&app, &good, Some("k-3")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers.get("idempotent-replayed").is_none());

    // Keys on confirm and cancel.
    let hold = order(
        &app,
        &json!({"product_id": id, "quantity": 1, "buyer_id": "h", "hold_secs": 60}),
        None,
    )
    .await;
    let order_id = hold.body["id"].as_str().expect("id").to_owned();
    let confirm = |key: &'static str| {
        let path = format!("/orders/{order_id}/confirm");
        let app = &app;
        async move {
            app.request_with(Method::POST, &path, None, &[("idempotency-key", key)])
                .await
        }
    };
    let first = confirm("c-1").await;
    let second = confirm("c-1").await;
    assert_eq!((first.status, second.status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(first.body, second.body);
    assert_eq!(second.headers["idempotent-replayed"], "true");
    // The confirm's key on a cancel is another request: 422.
    let cancel = |key: &'static str| {
        let path = format!("/orders/{order_id}/cancel");
        let app = &app;
        async move {
            app.request_with(Method::POST, &path, None, &[("idempotency-key", key)])
                .await
        }
    };
    let reused = cancel("c-1").await;
    assert_eq!(
        (reused.status, reused.error_code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED")
    );
    let refused = cancel("c-2").await;
    assert_eq!(
        (refused.status, refused.error_code()),
        (StatusCode::CONFLICT, "ORDER_COMPLETED")
    );
    let replayed = cancel("c-2").await;
    assert_eq!((replayed.status, &replayed.body), (StatusCode::CONFLICT, &refused.body));
    assert_eq!(replayed.headers["idempotent-replayed"], "true");
    app.wait_flushed(Duration::from_secs(10)).await;
    let keyed: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE idempotency_key = 'k-1'")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(keyed, 1);
    reconcile_ok(&app).await;
    app.finish().await;
}

/// The answers after a change of state, and the buyer limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_confirm_cancel_and_buyer_limits() {
    let app = spawn_app(&[]).await;
    let id = create_product(&app, 10, 100, 3).await;
    let hold = |buyer: &str, quantity: i64| json!({"product_id": id, "quantity": quantity, "buyer_id": buyer, "hold_secs": 60});

    let a = order(&app, &hold("alice", 2), None).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["status"], "reserved");
    assert!(a.body["expires_at"].is_string());
    assert_eq!(counts(&product(&app, id).await), (10, 8, 2, 0));
    let limit = order(&app, &hold("alice", 2), None).await;
    assert_eq!(
        (limit.status, limit.error_code()),
        (StatusCode::FORBIDDEN, "BUYER_LIMIT_REACHED")
    );
    let a_id = a.body["id"].as_str().expect("id");

    let confirmed = app.post(&format!("/orders/{a_id}/confirm")).await;
    assert_eq!(confirmed.status, StatusCode::OK);
    assert_eq!(confirmed.body["status"], "completed");
    assert_eq!(counts(&product(&app, id).await), (10, 8, 0, 2));
    assert_eq!(
        app.post(&format!("/orders/{a_id}/confirm")).await.body["status"],
        "completed"
    );
    let cancel = app.post(&format!("/orders/{a_id}/cancel")).await;
    assert_eq!(
        (cancel.status, cancel.error_code()),
        (StatusCode::CONFLICT, "ORDER_COMPLETED")
    );

    let b = order(&app, &hold("bob", 3), None).await;
    let b_id = b.body["id"].as_str().expect("id");
    let cancelled = app.post(&format!("/orders/{b_id}/cancel")).await;
    assert_eq!(
        (cancelled.status, &cancelled.body["status"]),
        (StatusCode::OK, &json!("cancelled"))
    );
    assert_eq!(counts(&product(&app, id).await), (10, 8, 0, 2), "the stock returned");
    assert_eq!(app.post(&format!("/orders/{b_id}/cancel")).await.status, StatusCode::OK);
    let confirm = app.post(&format!("/orders/{b_id}/confirm")).await;
    assert_eq!(
        (confirm.status, confirm.error_code()),
        (StatusCode::CONFLICT, "ORDER_CANCELLED")
    );
    // Bob's cancelled hold no longer counts against his limit.
    assert_eq!(order(&app, &hold("bob", 3), None).await.status, StatusCode::OK);

    let missing = app.post("/orders/00000000-0000-4000-8000-000000000000/confirm").await;
    assert_eq!(
        (missing.status, missing.error_code()),
        (StatusCode::NOT_FOUND, "ORDER_NOT_FOUND")
    );
    app.wait_flushed(Duration::from_secs(10)).await;
    reconcile_ok(&app).await;
    app.finish().await;
}

/// Waits (real time) until the product has no reserved stock.
pub async fn wait_released(app: &TestApp, id: u64, within: Duration) -> Value {
    wait_released_to(app, id, 0, within).await
}

/// Waits (real time) until the product's reserved stock is down to `reserved`.
async fn wait_released_to(app: &TestApp, id: u64, reserved: i64, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let p = product(app, id).await;
        assert_invariant(&p);
        if p["reserved"].as_i64().is_some_and(|r| r <= reserved) {
            return p;
        }
        assert!(Instant::now() < deadline, "holds not expired within {within:?}: {p}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_hold_returns_its_stock_within_a_second() {
    let app = spawn_app(&[]).await;
    let id = create_product(&app, 10, 100, 0).await;
    let hold = order(
        &app,
        &json!({"product_id": id, "quantity": 3, "buyer_id": "u", "hold_secs": 5}),
        None,
    )
    .await;
    let order_id = hold.body["id"].as_str().expect("id").to_owned();
    // A second hold on the same product (so in the same shard's zset) due a
    // second from now: once the expiry task has returned its stock, it has
    // read the zset at a time the first one was not yet due, and left it.
    let marker = order(
        &app,
        &json!({"product_id": id, "quantity": 1, "buyer_id": "marker", "hold_secs": 1}),
        None,
    )
    .await;
    assert_eq!(marker.status, StatusCode::OK, "{:?}", marker.body);
    assert_eq!(counts(&product(&app, id).await), (10, 6, 4, 0));
    app.clock.advance_ms(1_000);
    let p = wait_released_to(&app, id, 3, Duration::from_secs(10)).await;
    assert_eq!(counts(&p), (10, 7, 3, 0), "not due yet");
    app.clock.advance_ms(4_000);
    let started = Instant::now();
    let p = wait_released(&app, id, scaled(Duration::from_secs(1))).await;
    assert_eq!(counts(&p), (10, 10, 0, 0));
    eprintln!("hold expired {:?} after its expiry", started.elapsed());
    let read = app.get(&format!("/orders/{order_id}")).await;
    assert_eq!(read.body["status"], "expired");
    let confirm = app.post(&format!("/orders/{order_id}/confirm")).await;
    assert_eq!(
        (confirm.status, confirm.error_code()),
        (StatusCode::GONE, "ORDER_EXPIRED")
    );
    let cancel = app.post(&format!("/orders/{order_id}/cancel")).await;
    assert_eq!(
        (cancel.status, &cancel.body["status"]),
        (StatusCode::OK, &json!("expired"))
    );
    app.wait_flushed(Duration::from_secs(10)).await;
    assert_eq!(
        statuses_in_postgres(&app, id).await["expired"],
        (2, 4),
        "the hold and the marker"
    );
    reconcile_ok(&app).await;
    app.finish().await;
}

/// Places `n` holds of 1 to 5 concurrently over `apps`; returns the sum of
/// their quantities.
async fn place_holds(apps: &[&TestApp], id: u64, n: usize, hold_secs: i64) -> (i64, Vec<(String, i64)>) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let app = apps[i % apps.len()];
        let (http, addr) = (app.http.clone(), app.addr);
        let quantity: i64 = rand::rng().random_range(1..=5);
        tasks.push(tokio::spawn(async move {
            let body =
                json!({"product_id": id, "quantity": quantity, "buyer_id": format!("h{i}"), "hold_secs": hold_secs})
                    .to_string();
            let reply = send(&http, addr, Method::POST, "/orders", Some(&body))
                .await
                .expect("answer");
            assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
            (reply.body["id"].as_str().expect("id").to_owned(), quantity)
        }));
    }
    let holds: Vec<(String, i64)> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    (holds.iter().map(|(_, q)| q).sum(), holds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_holds_expiring_at_once_return_exactly_their_quantities() {
    let app = spawn_app(&[]).await;
    let id = create_product(&app, 6_000, 100, 0).await;
    let (held, _) = place_holds(&[&app], id, 1000, 30).await;
    assert_eq!(counts(&product(&app, id).await), (6_000, 6_000 - held, held, 0));
    app.clock.advance_ms(30_000);
    let p = wait_released(&app, id, scaled(Duration::from_secs(2))).await;
    assert_eq!(counts(&p), (6_000, 6_000, 0, 0), "exactly the held quantities returned");
    app.wait_flushed(Duration::from_secs(10)).await;
    assert_eq!(statuses_in_postgres(&app, id).await["expired"], (1000, held));
    reconcile_ok(&app).await;
    app.finish().await;
}

/// Confirms sent while the clock passes the holds' expiry: each hold ends
/// either completed (its confirm won) or expired (the expiry won, the
/// confirm got 410), never both, and the counters agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_confirm_racing_the_expiry_has_one_winner() {
    let app = spawn_app(&[]).await;
    let id = create_product(&app, 2_000, 100, 0).await;
    let (held, holds) = place_holds(&[&app], id, 300, 10).await;
    app.clock.advance_ms(9_990);
    // Confirms go out 20 at a time; once 150 have answered the clock crosses
    // the expiry, so the ones in flight race the expiry task's passes.
    let answered = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = holds
        .into_iter()
        .map(|(order_id, quantity)| {
            let (http, addr, clock, answered) = (app.http.clone(), app.addr, app.clock.clone(), answered.clone());
            async move {
                let reply = send(&http, addr, Method::POST, &format!("/orders/{order_id}/confirm"), None)
                    .await
                    .expect("answer");
                if answered.fetch_add(1, Ordering::SeqCst) + 1 == 150 {
                    clock.advance_ms(10);
                }
                (order_id, quantity, reply)
            }
        })
        .collect();
    let results: Vec<_> = futures::stream::iter(tasks).buffer_unordered(20).collect().await;
    let (mut confirmed, mut expired) = (0, 0);
    let mut outcome = HashMap::new();
    for (order_id, quantity, reply) in results {
        match reply.status {
            StatusCode::OK => {
                assert_eq!(reply.body["status"], "completed");
                confirmed += quantity;
                outcome.insert(order_id, "completed");
            }
            StatusCode::GONE => {
                expired += quantity;
                outcome.insert(order_id, "expired");
            }
            other => panic!("unexpected {other}: {:?}", reply.body),
        }
    }
    assert_eq!(confirmed + expired, held);
    assert!(
        confirmed > 0 && expired > 0,
        "both sides won some: {confirmed} / {expired}"
    );
    let p = wait_released(&app, id, scaled(Duration::from_secs(2))).await;
    assert_eq!(counts(&p), (2_000, 2_000 - confirmed, 0, confirmed));
    for (order_id, status) in &outcome {
        assert_eq!(&app.get(&format!("/orders/{order_id}")).await.body["status"], status);
    }
    eprintln!("confirmed {confirmed}, expired {expired}");
    app.wait_flushed(Duration::from_secs(10)).await;
    let pg = statuses_in_postgres(&app, id).await;
    assert_eq!(pg.get("completed").map_or(0, |s| s.1), confirmed);
    assert_eq!(pg.get("expired").map_or(0, |s| s.1), expired);
    reconcile_ok(&app).await;
    app.finish().await;
}

/// Two engines on one Redis expire the same holds; each hold's stock comes
/// back once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engines_never_return_a_holds_stock_twice() {
    let first = spawn_app(&[]).await;
    let second = spawn_app_sharing(&first, &[]).await;
    let id = create_product(&first, 5_000, 100, 0).await;
    let (held, _) = place_holds(&[&first, &second], id, 600, 20).await;
    assert_eq!(counts(&product(&second, id).await), (5_000, 5_000 - held, held, 0));
    // Both engines see the holds due at the same instant (shared clock).
    first.clock.advance_ms(20_000);
    let p = wait_released(&first, id, scaled(Duration::from_secs(2))).await;
    // A second return of any hold would push available past stock_total.
    assert_eq!(counts(&p), (5_000, 5_000, 0, 0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(counts(&product(&first, id).await), (5_000, 5_000, 0, 0));
    first.wait_flushed(Duration::from_secs(10)).await;
    assert_eq!(statuses_in_postgres(&first, id).await["expired"], (600, held));
    reconcile_ok(&first).await;
    second.finish().await;
    first.finish().await;
}

/// `kill -9` under order load, then a restart: Postgres holds exactly the
/// orders the buyers were told of (plus, at most, the one each had in
/// flight at the kill), as they were told, and the orders Redis committed;
/// reconcile is ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_order_load_loses_no_order() {
    let buyers = (0..50).map(|b| format!("b{b}")).collect();
    kill_9_under_order_load(&[], 100_000, buyers).await;
}

/// The body of the kill test, with `settings` for both engines, a product
/// of `stock`, and 50 `buyers` (a split product's adds its own checks:
/// every transfer a kill cut is finished by the restarted engine's sweeper,
/// and nothing stays in transit).
pub async fn kill_9_under_order_load(settings: &[(&str, &str)], stock: i64, buyers: Vec<String>) {
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    let redis = redis_client().await;
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let mut extra = vec![
        ("STAMPEDE_FLUSH_LINGER_MS", "10000"),
        ("STAMPEDE_ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    extra.extend_from_slice(settings);
    let mut engine = EngineProcess::start(&db_url, &name, "engine-a", &extra).await;
    let http = http_client();
    let body = json!({"name": "Crash", "stock": stock, "price_cents": 10, "merchant_id": 1}).to_string();
    let created = send_with(
        &http,
        engine.addr,
        Method::POST,
        "/products",
        Some(&body),
        &[("authorization", &admin)],
    )
    .await
    .expect("create");
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let id = created.body["id"].as_u64().expect("id");

    // Each buyer's own record: the orders it was told of (id -> buyer,
    // status, quantity), and the request it had in flight at the kill.
    let acknowledged = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let cut = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for buyer_id in buyers {
        let (http, acknowledged, cut, done, addr) = (
            http.clone(),
            acknowledged.clone(),
            cut.clone(),
            done.clone(),
            engine.addr,
        );
        tasks.push(tokio::spawn(async move {
            for k in 0..100 {
                // Every third order is a hold, so statuses differ.
                let (body, status, quantity) = if k % 3 == 0 {
                    (
                        json!({"product_id": id, "quantity": 1, "buyer_id": buyer_id, "hold_secs": 600}),
                        "reserved",
                        1,
                    )
                } else {
                    (
                        json!({"product_id": id, "quantity": 2, "buyer_id": buyer_id}),
                        "completed",
                        2,
                    )
                };
                match send(&http, addr, Method::POST, "/orders", Some(&body.to_string())).await {
                    Ok(reply) if reply.status == StatusCode::OK => {
                        let order_id = reply.body["id"].as_str().expect("id").to_owned();
                        assert_eq!(
                            (&reply.body["status"], &reply.body["quantity"]),
                            (&json!(status), &json!(quantity)),
                            "{:?}",
                            reply.body
                        );
                        let earlier = acknowledged
                            .lock()
                            .expect("lock")
                            .insert(order_id, (buyer_id.clone(), status.to_owned(), quantity));
                        assert!(earlier.is_none(), "one order id told twice");
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(reply) => panic!("order refused before the kill: {:?}", reply.body),
                    Err(_) => {
                        cut.lock()
                            .expect("lock")
                            .insert(buyer_id, (status.to_owned(), quantity));
                        return;
                    }
                }
            }
        }));
    }
    wait_for_acknowledged(&done, 1_000, &tasks, "orders").await;
    engine.kill_9();
    for task in tasks {
        task.await.expect("buyer task");
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();
    let cut = cut.lock().expect("lock").clone();
    println!(
        "{} orders acknowledged, {} cut by the kill, {} stock transfers left in transit",
        acknowledged.len(),
        cut.len(),
        transfers_in_transit(&redis, &name).await
    );

    let mut again = vec![
        ("STAMPEDE_FLUSH_CLAIM_IDLE_MS", "500"),
        ("STAMPEDE_ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    again.extend_from_slice(settings);
    let mut second = EngineProcess::start(&db_url, &name, "engine-b", &again).await;
    // The restarted engine's sweeper finishes every transfer the kill cut.
    let swept = Instant::now();
    while transfers_in_transit(&redis, &name).await > 0 {
        assert!(swept.elapsed() < Duration::from_secs(60), "transfers left in transit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("nothing in transit {:?} after the restart", swept.elapsed());
    // Each reconcile waits up to 5 s for the backlog; the restarted engine
    // claims the dead one's entries after 500 ms, so a minute is ample.
    let deadline = Instant::now() + Duration::from_secs(60);
    let reconcile = loop {
        assert!(
            Instant::now() < deadline,
            "the backlog was not flushed within a minute of the restart"
        );
        let reply = send_with(
            &http,
            second.addr,
            Method::GET,
            "/admin/reconcile",
            None,
            &[("authorization", &admin)],
        )
        .await
        .expect("reconcile");
        if reply.status == StatusCode::OK {
            break reply;
        }
        assert_eq!(reply.error_code(), "BACKLOG_NOT_FLUSHED", "{:?}", reply.body);
    };
    assert_eq!(reconcile.body["ok"], json!(true), "{}", reconcile.body);

    let db = sqlx::PgPool::connect(&db_url).await.expect("db");
    let rows: Vec<(String, String, String, i64)> =
        sqlx::query_as("SELECT id::text, buyer_id, status, quantity::bigint FROM orders WHERE product_id = $1")
            .bind(id as i64)
            .fetch_all(&db)
            .await
            .expect("orders");
    // Against the buyers' record: every order they were told of, as told;
    // besides, for a buyer whose request was cut by the kill, at most that
    // one order (an order placed twice would show here as one more).
    let mut unacknowledged: HashMap<String, usize> = HashMap::new();
    for (order_id, buyer, status, quantity) in &rows {
        match acknowledged.get(order_id) {
            Some(told) => assert_eq!(
                (&told.0, told.1.as_str(), told.2),
                (buyer, status.as_str(), *quantity),
                "order {order_id} as its buyer was told"
            ),
            None => {
                assert_eq!(
                    cut.get(buyer).map(|(s, q)| (s.as_str(), *q)),
                    Some((status.as_str(), *quantity)),
                    "order {order_id} of {buyer} was never acknowledged nor in flight at the kill"
                );
                *unacknowledged.entry(buyer.clone()).or_default() += 1;
            }
        }
    }
    assert!(
        unacknowledged.values().all(|&n| n == 1),
        "buyers with several orders no one was told of: {unacknowledged:?}"
    );
    let in_postgres: HashSet<String> = rows.iter().map(|(o, _, _, _)| o.clone()).collect();
    let told: HashSet<String> = acknowledged.keys().cloned().collect();
    assert!(
        told.is_subset(&in_postgres),
        "{} acknowledged orders missing from Postgres",
        told.difference(&in_postgres).count()
    );
    // Every order Redis holds is in Postgres, and nothing else is.
    let mut in_redis = HashSet::new();
    for key in keys_matching(&redis, &format!("{name}:*:order:*")).await {
        in_redis.insert(key.rsplit(':').next().expect("order id").to_owned());
    }
    assert_eq!(in_redis, in_postgres, "Postgres orders = Redis orders");
    let p = send(&http, second.addr, Method::GET, &format!("/products/{id}"), None)
        .await
        .expect("product");
    let (total, available, reserved, sold) = counts(&p.body);
    let sum = |status: &str| rows.iter().filter(|r| r.2 == status).map(|r| r.3).sum::<i64>();
    assert_eq!(
        (sold, reserved),
        (sum("completed"), sum("reserved")),
        "Postgres orders = Redis orders"
    );
    assert_eq!(available + reserved + sold, total);
    if let Some(parts) = p.body.get("split") {
        assert_eq!(parts["in_transit"], 0, "{}", p.body);
    }
    db.close().await;
    assert!(second.terminate().success(), "SIGTERM exits 0");
    drop_database(&database_url(), &name).await;
    delete_keys(&redis, &name).await;
}

/// A request and the status and code it must get.
type Case<'a> = (
    Method,
    String,
    Option<String>,
    Vec<(&'a str, &'a str)>,
    StatusCode,
    &'a str,
);

/// Every new route answers bad input with a 4xx JSON error and a stable
/// code, never a 5xx; admin routes want the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_stable_codes() {
    let app = spawn_app(&[]).await;
    let id = create_product(&app, 5, 100, 0).await;
    let long_key = "k".repeat(256);
    let order_path = "/orders/00000000-0000-4000-8000-000000000000";
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/orders".into(),
            Some("{".into()),
            vec![],
            StatusCode::BAD_REQUEST,
            "INVALID_JSON",
        ),
        (
            Method::POST,
            "/orders".into(),
            Some(r#"{"product_id":"1","quantity":1,"buyer_id":"u"}"#.into()),
            vec![],
            StatusCode::BAD_REQUEST,
            "INVALID_JSON",
        ),
        (
            Method::POST,
            "/orders".into(),
            Some(r#"{"product_id":1,"quantity":1}"#.into()),
            vec![],
            StatusCode::BAD_REQUEST,
            "INVALID_JSON",
        ),
        (
            Method::POST,
            "/orders".into(),
            Some(format!(r#"{{"product_id":{id},"quantity":1,"buyer_id":"u","x":1}}"#)),
            vec![],
            StatusCode::BAD_REQUEST,
            "INVALID_JSON",
        ),
        (
            Method::POST,
            "/orders".into(),
            Some(format!(r#"{{"product_id":{id},"quantity":0,"buyer_id":"u"}}"#)),
            vec![],
            StatusCode::BAD_REQUEST,
            "INVALID_QUANTITY",
        ),
        (
            Method::POST,
            "/orders".into(),
            Some(format!(r#"{{"product_id":{id},"quantity":1001,"buyer_id":"u"}}"#)),
            vec![],
            StatusCode::BAD_REQUEST,
            "INVALID_QUANTITY",
        ),
        (
            Method::POST,
            "/orders".into(),
            Some(format!(r#"{{"product_id":{id},"quantity":-1,"buyer_id":"u"}}"#)),
            vec![],
            StatusCode::BAD_REQUEST,
            "INVALID_QUANTITY",
        ),
        (
            Method::POST,
            "/orders".into(),
            Some(format!(r#"{{"product_id":{id},"quantity":1,"buyer_id":""}}"#)),
            vec![],
            StatusCode::BAD_REQUEST,
            "INVALID_BUYER_ID",
        ),
        (
            Method::POST,
            "/orders".into(),
            Some(format!(
                r#"{{"product_id":{id},"quantity":1,"buyer_id":"{}"}}"#,
                "u".repeat(65)
            )),
            vec![],
            StatusCode::BAD_REQUEST,
            "INVALID_BUYER_ID",
        ),
        (
            Method::POST,
            "/orders".into(),
            Some(format!(r#"{{"product_id":{id},"quantity":1,"buyer_id":"a\nb"}}"#)),
            vec![],
            StatusCode::BAD_REQUEST,
            "INVALID_BUYER_ID",
        ),
        (
            Method::POST,
            "/orders".into(),
            Some(r#"{"product_id":0,"quantity":1,"buyer_id":"u"}"#.into()),
            vec![],
            StatusCode::BAD_REQUEST,
            "INVALID_PRODUCT_ID",
        ),
        (
            Method::POST,
            "/orders".into(),
            Some(format!(
                r#"{{"product_id":{id},"quantity":1,"buyer_id":"u","hold_secs":0}}"#
            )),
            vec![],
            StatusCode::BAD_REQUEST,
            "INVALID_HOLD_SECS",
        ),
        (
            Method::POST,
            "/orders".into(),
            Some(format!(
                r#"{{"product_id":{id},"quantity":1,"buyer_id":"u","hold_secs":3601}}"#
            )),
            vec![],
            StatusCode::BAD_REQUEST,
            "INVALID_HOLD_SECS",
        ),
        (
            Method::POST,
            "/orders".into(),
            Some(format!(r#"{{"product_id":{id},"quantity":1,"buyer_id":"u"}}"#)),
            vec![("idempotency-key", long_key.as_str())],
            StatusCode::BAD_REQUEST,
            "INVALID_IDEMPOTENCY_KEY",
        ),
        (
            Method::POST,
            "/orders".into(),
            Some(r#"{"product_id":999999,"quantity":1,"buyer_id":"u"}"#.into()),
            vec![],
            StatusCode::NOT_FOUND,
            "PRODUCT_NOT_FOUND",
        ),
        (
            Method::GET,
            "/orders/order-123".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "INVALID_ORDER_ID",
        ),
        (
            Method::GET,
            order_path.into(),
            None,
            vec![],
            StatusCode::NOT_FOUND,
            "ORDER_NOT_FOUND",
        ),
        (
            Method::POST,
            "/orders/nope/confirm".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "INVALID_ORDER_ID",
        ),
        (
            Method::POST,
            "/orders/nope/cancel".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "INVALID_ORDER_ID",
        ),
        (
            Method::POST,
            format!("{order_path}/cancel"),
            None,
            vec![],
            StatusCode::NOT_FOUND,
            "ORDER_NOT_FOUND",
        ),
        (
            Method::GET,
            "/products/abc".into(),
            None,
            vec![],
            StatusCode::BAD_REQUEST,
            "INVALID_PRODUCT_ID",
        ),
        (
            Method::GET,
            "/products/424242".into(),
            None,
            vec![],
            StatusCode::NOT_FOUND,
            "PRODUCT_NOT_FOUND",
        ),
        (
            Method::POST,
            "/products".into(),
            Some("{}".into()),
            vec![],
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        ),
        (
            Method::POST,
            "/products".into(),
            Some("{}".into()),
            vec![("authorization", "Bearer wrong")],
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        ),
        (
            Method::POST,
            format!("/products/{id}/stock"),
            Some(r#"{"add":1}"#.into()),
            vec![],
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        ),
        (
            Method::GET,
            "/admin/reconcile".into(),
            None,
            vec![],
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        ),
    ];
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let admin_cases: Vec<(String, String, StatusCode, &str)> = vec![
        ("/products".into(), "[]".into(), StatusCode::BAD_REQUEST, "INVALID_JSON"),
        (
            "/products".into(),
            r#"{"name":"","stock":1,"price_cents":1,"merchant_id":1}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_NAME",
        ),
        (
            "/products".into(),
            r#"{"name":"x","stock":-1,"price_cents":1,"merchant_id":1}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_STOCK",
        ),
        (
            "/products".into(),
            r#"{"name":"x","stock":1,"price_cents":-1,"merchant_id":1}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_PRICE",
        ),
        (
            "/products".into(),
            r#"{"name":"x","stock":1,"price_cents":1,"merchant_id":-7}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_MERCHANT_ID",
        ),
        (
            "/products".into(),
            r#"{"name":"x","stock":1,"price_cents":1,"merchant_id":1,"max_per_buyer":-1}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_MAX_PER_BUYER",
        ),
        (
            format!("/products/{id}/stock"),
            r#"{"add":0}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_ADD",
        ),
        (
            format!("/products/{id}/stock"),
            r#"{"add":"x"}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_JSON",
        ),
        (
            "/products/0/stock".into(),
            r#"{"add":1}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_PRODUCT_ID",
        ),
        (
            "/products/777777/stock".into(),
            r#"{"add":1}"#.into(),
            StatusCode::NOT_FOUND,
            "PRODUCT_NOT_FOUND",
        ),
    ];
    let mut all = cases;
    for (path, body, status, code) in &admin_cases {
        all.push((
            Method::POST,
            path.clone(),
            Some(body.clone()),
            vec![("authorization", auth.as_str())],
            *status,
            code,
        ));
    }
    for (method, path, body, headers, status, code) in all {
        let reply = app.request_with(method.clone(), &path, body.as_deref(), &headers).await;
        assert_eq!(
            (reply.status, reply.error_code()),
            (status, code),
            "{method} {path} {body:?}: {:?}",
            reply.body
        );
    }
    // Nothing was taken by any of them.
    assert_eq!(counts(&product(&app, id).await), (5, 5, 0, 0));
    app.finish().await;
}

/// Transfers of split products' stock in transit, over every shard of
/// `prefix` (each shard's transits zset).
pub async fn transfers_in_transit(redis: &fred::clients::Client, prefix: &str) -> u64 {
    let keys = engine_keys(redis, prefix).await;
    let mut total = 0;
    for shard in keys.shards() {
        let n: u64 = redis
            .zcard(keys.key(shard, format_args!("transits")))
            .await
            .expect("ZCARD");
        total += n;
    }
    total
}
