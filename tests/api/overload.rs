//! Overload is answered fast: a request that waited too long in an executor
//! queue is shed before Redis, a connection over the bound gets a canned
//! 503 instead of a silent stall, and refused checkout attempts cannot crowd
//! real purchases out of the outbox.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::{ClientLike, KeysInterface};
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{PrivateRedis, TestApp, auth_line, scaled, spawn_app};

/// The lines of `/metrics` that start with `name{` and hold every label.
async fn metric_lines(app: &TestApp, name: &str, labels: &[&str]) -> Vec<String> {
    let text = http_text(app, "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .map(str::to_owned)
        .collect()
}

async fn http_text(app: &TestApp, path: &str) -> String {
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: test\r\n{}connection: close\r\n\r\n",
        auth_line()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("read");
    text
}

fn metric_value(line: &str) -> f64 {
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// Redis paused for 1.5 s while orders keep coming, one call in flight per
/// queue and a 200 ms queue deadline: the requests that waited past it are
/// answered 503 OVERLOADED (with Retry-After) once the queue is served, and
/// none of them reached Redis: its `sold` counts exactly the 200s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_that_waited_past_the_deadline_are_shed_before_redis() {
    let redis = PrivateRedis::fresh("queue-deadline", &[]);
    let app = Arc::new(
        spawn_app(&[
            ("REDIS_URL", redis.url().as_str()),
            ("STAMPEDE_SCRIPT_INFLIGHT", "1"),
            ("STAMPEDE_QUEUE_DEADLINE_MS", "200"),
            ("STAMPEDE_REDIS_COMMAND_TIMEOUT_MS", "10000"),
        ])
        .await,
    );
    let created = app
        .admin(
            Method::POST,
            "/products",
            Some(r#"{"name":"Slow","stock":1000,"price_cents":100,"merchant_id":1}"#),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let product = created.body["id"].as_i64().expect("id");

    let control = redis.client().await;
    let _: String = control
        .custom(fred::cmd!("CLIENT"), vec!["PAUSE", "1500", "WRITE"])
        .await
        .expect("CLIENT PAUSE on the private redis");
    let started = Instant::now();
    let mut orders = Vec::new();
    for k in 0..40 {
        let app = app.clone();
        orders.push(tokio::spawn(async move {
            let body = json!({"product_id": product, "quantity": 1, "buyer_id": format!("b{k}")}).to_string();
            let sent = Instant::now();
            let reply = app.request(Method::POST, "/orders", Some(&body)).await;
            (reply, sent.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut ok, mut shed) = (0, 0);
    let mut slowest_shed = Duration::ZERO;
    for order in orders {
        let (reply, took) = order.await.expect("order");
        match (reply.status, reply.error_code()) {
            (StatusCode::OK, _) => ok += 1,
            (StatusCode::SERVICE_UNAVAILABLE, "OVERLOADED") => {
                assert_eq!(reply.headers.get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]));
                shed += 1;
                slowest_shed = slowest_shed.max(took);
            }
            other => panic!("unexpected answer {other:?}: {:?}", reply.body),
        }
    }
    println!(
        "{ok} orders served, {shed} shed at the deadline; slowest shed answer {slowest_shed:?}, all within {:?}",
        started.elapsed()
    );
    assert!(shed > 0, "requests that waited past the deadline were shed");
    let stock = app.get(&format!("/products/{product}")).await;
    assert_eq!(stock.body["sold"].as_i64(), Some(ok), "shed orders never reached Redis");
    let lines = metric_lines(
        &app,
        "stampede_script_shed_total",
        &["script=\"order_create\"", "reason=\"deadline\""],
    )
    .await;
    assert!(
        lines.iter().map(|l| metric_value(l)).sum::<f64>() >= shed as f64,
        "shed requests are counted: {lines:?}"
    );
    Arc::into_inner(app).expect("done").finish().await;
    drop(redis);
}

/// Reads one whole response from `stream` (the server closes, or
/// Content-Length says it is complete).
async fn read_response(stream: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    let mut buf = [0_u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .expect("read");
        bytes.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if n == 0 {
            return text;
        }
        if let Some((head, body)) = text.split_once("\r\n\r\n")
            && let Some(length) = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_owned)
            })
            && body.len() >= length.trim().parse::<usize>().expect("length")
        {
            return text;
        }
    }
}

async fn get_health(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .expect("write");
    read_response(stream).await
}

/// With `STAMPEDE_MAX_CONNECTIONS=2` and two connections open, a third
/// gets a quick canned 503 OVERLOADED with Retry-After and Connection:
/// close; once one of the two closes, new connections are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_over_the_bound_gets_a_quick_503() {
    let app = spawn_app(&[("STAMPEDE_MAX_CONNECTIONS", "2")]).await;
    let mut first = TcpStream::connect(app.addr).await.expect("connect");
    let mut second = TcpStream::connect(app.addr).await.expect("connect");
    assert!(get_health(&mut first).await.starts_with("HTTP/1.1 200"));
    assert!(get_health(&mut second).await.starts_with("HTTP/1.1 200"));

    let started = Instant::now();
    let mut third = TcpStream::connect(app.addr).await.expect("connect");
    let answer = get_health(&mut third).await;
    let took = started.elapsed();
    println!("turned away in {took:?}:\n{answer}");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("retry-after: 1\r\n"), "{answer}");
    assert!(lower.contains("connection: close\r\n"), "{answer}");
    let body: serde_json::Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").expect("body").1).expect("JSON body");
    assert_eq!(body["error"]["code"], "OVERLOADED");
    assert!(took < scaled(Duration::from_secs(2)), "answered at once, not stalled");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), third.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "the engine closed the connection");

    // The held connections still work; one closes and a slot frees.
    assert!(get_health(&mut first).await.starts_with("HTTP/1.1 200"));
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut next = TcpStream::connect(app.addr).await.expect("connect");
        let answer = get_health(&mut next).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "no slot freed: {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rejected = metric_lines_over(&mut first, "stampede_connections_rejected_total").await;
    assert!(rejected >= 1.0, "rejections are counted");
    drop(first);
    app.finish().await;
}

/// A metric's value read over an already open connection (the bound is 2).
async fn metric_lines_over(stream: &mut TcpStream, name: &str) -> f64 {
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .expect("write");
    let text = read_response(stream).await;
    text.lines().filter(|l| l.starts_with(name)).map(metric_value).sum()
}

/// With the flusher held back (a 5 s linger) and an outbox bound of 40
/// events, refused checkout attempts are logged until the backlog reaches
/// their share (a quarter, 10); the next refused attempt is answered 503
/// OUTBOX_FULL with Retry-After and logs nothing, while codes are still
/// issued and spent. Every answered attempt ends in `checkout_attempts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_checkouts_cannot_crowd_purchases_out_of_the_outbox() {
    let mut app = spawn_app(&[
        ("STAMPEDE_OUTBOX_MAX_EVENTS", "40"),
        ("STAMPEDE_FLUSH_LINGER_MS", "5000"),
    ])
    .await;
    let code = app.code_for("buyer", 1).await;
    assert_eq!(app.purchase(&code).await.status, StatusCode::OK);

    let (mut logged_refusals, mut shed) = (0, 0);
    for u in 0..20 {
        let reply = app.checkout(&format!("bot{u}"), 1).await;
        match (reply.status, reply.error_code()) {
            (StatusCode::CONFLICT, "ITEM_SOLD") => {
                assert_eq!(shed, 0, "no refusal is logged once they are shed");
                logged_refusals += 1;
            }
            (StatusCode::SERVICE_UNAVAILABLE, "OUTBOX_FULL") => {
                assert_eq!(reply.headers.get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]));
                shed += 1;
            }
            other => panic!("unexpected {other:?}: {:?}", reply.body),
        }
    }
    let keys = &app.ctx.keys;
    let backlog: i64 = app
        .redis
        .get(keys.outbox_events(keys.shard_of_number(app.sale_id())))
        .await
        .expect("counter");
    println!("{logged_refusals} refusals logged, {shed} shed; backlog {backlog} events");
    assert!(logged_refusals > 0 && shed > 0);
    assert_eq!(backlog, 10, "refused attempts stopped at their share (40 / 4)");

    // Issued codes and purchases keep the rest of the bound.
    let code = app.code_for("buyer", 2).await;
    assert_eq!(app.purchase(&code).await.status, StatusCode::OK);
    let refused = app.checkout("late-bot", 2).await;
    assert_eq!(refused.error_code(), "OUTBOX_FULL");
    shed += 1;
    let lines = metric_lines(
        &app,
        "stampede_script_outcomes_total",
        &["script=\"checkout\"", "outcome=\"REFUSALS_FULL\""],
    )
    .await;
    assert!(
        lines.iter().map(|l| metric_value(l)).sum::<f64>() >= f64::from(shed),
        "{lines:?}"
    );

    // Stopping drains the outbox: every answered attempt is in Postgres.
    app.stop().await;
    let attempts: Vec<(String,)> = sqlx::query_as("SELECT outcome FROM checkout_attempts")
        .fetch_all(&app.db)
        .await
        .expect("attempts");
    let ok = attempts.iter().filter(|(o,)| o == "OK").count();
    let sold = attempts.iter().filter(|(o,)| o == "ITEM_SOLD").count();
    assert_eq!((ok, sold, attempts.len()), (2, logged_refusals, 2 + logged_refusals));
    app.finish().await;
}
