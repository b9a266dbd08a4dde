//! A state-changing call runs at most once, even when its connection drops
//! after Redis ran it: the engine never resends a call, answers 503 with a
//! way to find out what happened, and every way it offers tells the truth.
//!
//! A TCP proxy between the engine and a private Redis (the fault suite's,
//! `faults::proxy`) cuts the engine's connections: right after forwarding a
//! script call (Redis runs it, the reply is lost) or right before (it never
//! reaches Redis).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::faults::proxy::{CallCuts, Proxy};
use crate::helpers::{ADMIN_TOKEN, PrivateRedis, Reply, TestApp, send_with, spawn_app};

/// A request that reads, repeated while the engine is reconnecting (reads
/// are safe to repeat; the engine never repeats them itself either).
async fn read(app: &TestApp, path: &str) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = app.get(path).await;
        if reply.status != StatusCode::SERVICE_UNAVAILABLE {
            return reply;
        }
        assert!(Instant::now() < deadline, "{path} still 503: {:?}", reply.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn admin_with_key(app: &TestApp, path: &str, body: &Value, key: &str) -> Reply {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    send_with(
        &app.http,
        app.addr,
        Method::POST,
        path,
        Some(&body.to_string()),
        &[("authorization", auth.as_str()), ("idempotency-key", key)],
    )
    .await
    .expect("engine answers")
}

/// Orders without an Idempotency-Key while the proxy cuts one script call
/// in five after Redis ran it and one in five before it arrived. Redis's
/// `sold` is exactly the orders clients were told of plus the 503s whose
/// order turned out to exist (`GET /orders/{order_id}`), never more; the
/// outbox carries each once into Postgres. Then a restock and a wallet
/// deposit cut after Redis ran them: repeated with the same key or
/// reference, each is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_whose_reply_is_lost_is_never_run_twice() {
    let redis = PrivateRedis::fresh("at-most-once", &[]);
    let proxy = Proxy::start(redis.addr()).await;
    let proxy_url = proxy.redis_url();
    let app = Arc::new(
        spawn_app(&[
            ("REDIS_URL", proxy_url.as_str()),
            ("STAMPEDE_REDIS_COMMAND_TIMEOUT_MS", "1000"),
        ])
        .await,
    );
    let created = app
        .admin(
            Method::POST,
            "/products",
            Some(r#"{"name":"Cut","stock":100000,"price_cents":100,"merchant_id":1}"#),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let product = created.body["id"].as_i64().expect("product id");

    proxy.cut_calls(CallCuts::Mixed, ":product:");
    let told_ok = Arc::new(AtomicUsize::new(0));
    let unknown = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for c in 0..20 {
        let (app, told_ok, unknown) = (app.clone(), told_ok.clone(), unknown.clone());
        clients.push(tokio::spawn(async move {
            for k in 0..15 {
                let body = json!({"product_id": product, "quantity": 1, "buyer_id": format!("b{c}-{k}")});
                let reply = app.request(Method::POST, "/orders", Some(&body.to_string())).await;
                match (reply.status, reply.error_code()) {
                    (StatusCode::OK, _) => {
                        told_ok.fetch_add(1, Ordering::SeqCst);
                    }
                    (StatusCode::SERVICE_UNAVAILABLE, "REDIS_UNAVAILABLE") => {
                        assert_eq!(reply.headers.get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]));
                        let id = reply.body["error"]["order_id"]
                            .as_str()
                            .expect("a 503 names the order id");
                        unknown.lock().expect("lock").push(id.to_owned());
                    }
                    _ => panic!("unexpected answer: {} {:?}", reply.status, reply.body),
                }
            }
        }));
    }
    for client in clients {
        client.await.expect("client");
    }
    proxy.cut_calls(CallCuts::None, "");

    let unknown: Vec<String> = std::mem::take(&mut *unknown.lock().expect("lock"));
    let mut took_effect = 0;
    for id in &unknown {
        let reply = read(&app, &format!("/orders/{id}")).await;
        match reply.status {
            StatusCode::OK => took_effect += 1,
            StatusCode::NOT_FOUND => assert_eq!(reply.error_code(), "ORDER_NOT_FOUND"),
            other => panic!("GET /orders/{id}: {other} {:?}", reply.body),
        }
    }
    let told_ok = told_ok.load(Ordering::SeqCst);
    let stock = read(&app, &format!("/products/{product}")).await;
    let sold = stock.body["sold"].as_i64().expect("sold");
    println!(
        "orders: {told_ok} answered 200, {} answered 503 of which {took_effect} had taken effect; sold {sold}; \
         calls cut after Redis ran them: {}, before: {}",
        unknown.len(),
        proxy.calls_cut_after(),
        proxy.calls_cut_before(),
    );
    assert_eq!(
        sold,
        (told_ok + took_effect) as i64,
        "Redis sold exactly what clients were told plus the 503s that took effect"
    );
    assert!(
        proxy.calls_cut_after() > 0 && took_effect > 0,
        "some calls ran in Redis and lost their reply"
    );
    assert!(unknown.len() > took_effect, "some calls never reached Redis");
    let distinct: HashSet<&String> = unknown.iter().collect();
    assert_eq!(distinct.len(), unknown.len(), "each 503 names its own order");
    app.wait_flushed(Duration::from_secs(30)).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .expect("orders");
    assert_eq!(rows, sold, "Postgres holds each order once");

    // A restock cut after Redis ran it: the admin repeats it with its key.
    let before = stock.body["stock_total"].as_i64().expect("stock_total");
    let path = format!("/products/{product}/stock");
    proxy.cut_calls(CallCuts::OnceAfter, ":product:");
    let first = admin_with_key(&app, &path, &json!({"add": 50}), "restock-1").await;
    assert_eq!(
        (first.status, first.error_code()),
        (StatusCode::SERVICE_UNAVAILABLE, "REDIS_UNAVAILABLE")
    );
    let again = loop {
        let reply = admin_with_key(&app, &path, &json!({"add": 50}), "restock-1").await;
        if reply.status != StatusCode::SERVICE_UNAVAILABLE {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_eq!(
        again.headers.get("idempotent-replayed").map(|v| v.as_bytes()),
        Some(&b"true"[..]),
        "the cut restock had run: its answer is replayed"
    );
    assert_eq!(again.body["stock_total"].as_i64(), Some(before + 50));
    let reused = admin_with_key(&app, &path, &json!({"add": 7}), "restock-1").await;
    assert_eq!(reused.error_code(), "IDEMPOTENCY_KEY_REUSED");
    let after = read(&app, &format!("/products/{product}")).await;
    assert_eq!(after.body["stock_total"].as_i64(), Some(before + 50), "applied once");

    // A wallet deposit cut after Redis applied it: repeated with its
    // reference, it is replayed, not applied again.
    proxy.cut_calls(CallCuts::OnceAfter, "wallet:acct:");
    let deposit = json!({"player_id": "p-cut", "currency": "EUR", "type": "deposit",
                         "amount_minor": 1234, "reference_id": "dep-cut-1"})
    .to_string();
    let first = app.request(Method::POST, "/wallet/transactions", Some(&deposit)).await;
    assert_eq!(
        (first.status, first.error_code()),
        (StatusCode::SERVICE_UNAVAILABLE, "REDIS_UNAVAILABLE")
    );
    let again = loop {
        let reply = app.request(Method::POST, "/wallet/transactions", Some(&deposit)).await;
        if reply.status != StatusCode::SERVICE_UNAVAILABLE {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_eq!(
        again.headers.get("idempotent-replayed").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let wallet = read(&app, "/wallet/p-cut?currency=EUR").await;
    assert_eq!(wallet.body["cash_minor"].as_i64(), Some(1234), "deposited once");

    Arc::into_inner(app).expect("clients done").finish().await;
    drop(proxy);
    drop(redis);
}
