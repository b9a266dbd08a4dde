//! The Grafana dashboards and alert rules, proven against a real Prometheus:
//! it scrapes a FRESH engine (a process of its own, no request yet), then a
//! live engine under a short load of every feature; each time every query
//! of every panel is evaluated through Prometheus's HTTP API and must return
//! data; the alert rules must pass `promtool check rules` and load. And every
//! metric the source names is exported before the first request.
//!
//! Needs `prometheus` and `promtool` (Debian's `prometheus` package, which
//! `scripts/test.sh` installs).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use serde_json::Value;

use crate::helpers::{
    EngineProcess, TestApp, auth_line, create_database, database_url, delete_keys, drop_database, free_port,
    http_client, redis_client, spawn_app, unique_name,
};
use crate::ingest::{file, line, upload};

const DASHBOARDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/dashboards");
const ALERT_RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/alerts.yml");

/// Grafana's variables, as a dashboard user would have them.
fn with_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$__range", "5m")
        .replace("$__interval", "5s")
        .replace("$route", ".*")
}

struct Prometheus {
    child: Child,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(dir: &Path, target: &str) -> Prometheus {
    let port = free_port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {ALERT_RULES}\n\
             scrape_configs:\n  - job_name: stampede\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .expect("prometheus config writes");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus starts: install Debian's `prometheus` package (scripts/test.sh does)");
    Prometheus { child, port }
}

async fn prometheus_get(port: u16, path_and_query: &str) -> Option<Value> {
    let http = http_client();
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("http://127.0.0.1:{port}{path_and_query}"))
        .body(Full::new(bytes::Bytes::new()))
        .ok()?;
    let res = http.request(req).await.ok()?;
    if res.status() != StatusCode::OK {
        return None;
    }
    let body = res.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

fn encode(query: &str) -> String {
    form_urlencoded::byte_serialize(query.as_bytes()).collect()
}

/// Every (dashboard, panel title, query) of `grafana/dashboards/*.json`.
fn panel_queries() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(DASHBOARDS)
        .expect("dashboards folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for path in files {
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("reads")).expect("JSON");
        let name = dashboard["title"].as_str().unwrap_or("?").to_owned();
        let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
        for panel in panels {
            for target in panel["targets"].as_array().cloned().unwrap_or_default() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((
                        name.clone(),
                        panel["title"].as_str().unwrap_or("?").to_owned(),
                        expr.to_owned(),
                    ));
                }
            }
        }
    }
    out
}

/// A product for the orders' share of the load; returns its id.
async fn a_product(app: &TestApp) -> u64 {
    let reply = app
        .admin(
            Method::POST,
            "/products",
            Some(r#"{"name":"dash","stock":100000,"price_cents":100,"merchant_id":1}"#),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.body["id"].as_u64().expect("product id")
}

/// Orders: plain, held then confirmed or cancelled, and a retried key.
async fn some_orders(app: &TestApp, product: u64, round: u32) {
    let order = format!(r#"{{"product_id":{product},"quantity":1,"buyer_id":"dash-{round}"}}"#);
    let key = format!("dash-key-{round}");
    for _ in 0..2 {
        let reply = app
            .request_with(Method::POST, "/orders", Some(&order), &[("idempotency-key", &key)])
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    let hold = format!(r#"{{"product_id":{product},"quantity":1,"buyer_id":"dash-h{round}","hold_secs":60}}"#);
    for action in ["confirm", "cancel"] {
        let held = app.request(Method::POST, "/orders", Some(&hold)).await;
        let id = held.body["id"].as_str().expect("order id").to_owned();
        let _ = app.post(&format!("/orders/{id}/{action}")).await;
        let _ = app.get(&format!("/orders/{id}")).await;
    }
}

/// Wallet: deposits, bets and wins, a repeated reference, and an event
/// stream held open for a moment.
async fn some_wallet(app: &TestApp, round: u32) {
    let player = format!("dash-player-{}", round % 3);
    // An event stream open while the money moves: it is pushed the events.
    let listening = {
        let (addr, player) = (app.addr, player.clone());
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
                return;
            };
            let request = format!("GET /wallet/{player}/events HTTP/1.1\r\nHost: x\r\n{}\r\n", auth_line());
            let _ = stream.write_all(request.as_bytes()).await;
            let mut buf = [0u8; 4096];
            let until = tokio::time::Instant::now() + Duration::from_millis(500);
            while let Ok(Ok(n)) = tokio::time::timeout_at(until, stream.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    for (kind, extra) in [("deposit", ""), ("bet", r#","game":"slots""#)] {
        let body = format!(
            r#"{{"player_id":"{player}","currency":"EUR","type":"{kind}","amount_minor":100,"reference_id":"r{round}"{extra}}}"#
        );
        for _ in 0..2 {
            let reply = app.request(Method::POST, "/wallet/transactions", Some(&body)).await;
            assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        }
    }
    let win = format!(
        r#"{{"player_id":"{player}","currency":"EUR","type":"win","amount_minor":50,"reference_id":"w{round}","bet_reference_id":"r{round}"}}"#
    );
    let _ = app.request(Method::POST, "/wallet/transactions", Some(&win)).await;
    let _ = app.get(&format!("/wallet/{player}?currency=EUR")).await;
    let _ = app.get(&format!("/wallet/{player}/transactions?currency=EUR")).await;
    let _ = listening.await;
}

/// A little of everything the dashboards show: sales (bought, refused,
/// unknown codes), bad requests, an upload, a player lookup, a settlement
/// job and its CSV, health.
async fn some_load(app: &TestApp, round: u32) {
    for k in 0..5u32 {
        let item = round * 5 + k + 1;
        let code = app.code_for(&format!("dash-{round}"), item).await;
        assert_eq!(app.purchase(&code).await.status, StatusCode::OK);
        // Someone else's later attempt at the same item: a refusal.
        let _ = app.checkout(&format!("late-{round}"), item).await;
    }
    let _ = app.purchase(&format!("{}-{}", app.sale_id(), "0".repeat(32))).await;
    let _ = app.get("/nope").await;
    let lines = vec![line(&format!("dash-tx-{round}"), "dash-player", "1.00", "EUR")];
    assert_eq!(upload(app, &file(&lines)).await.status, StatusCode::OK);
    let _ = app.get("/players/dash-player").await;
    settlement_job(app, round).await;
    let _ = app.get("/health").await;
}

/// A transaction, a settlement job over its day, its status until
/// completed, and its CSV.
async fn settlement_job(app: &TestApp, round: u32) {
    sqlx::query(
        "INSERT INTO transactions (merchant_id, amount_cents, fee_cents, status, paid_at)
         VALUES ($1, 1000, 30, 'PAID', '2025-01-01 12:00:00')",
    )
    .bind(round as i32 + 1)
    .execute(&app.db)
    .await
    .expect("transaction");
    let created = app
        .admin(
            Method::POST,
            "/jobs/settlement",
            Some(r#"{"from":"2025-01-01","to":"2025-01-01"}"#),
        )
        .await;
    assert_eq!(created.status, StatusCode::ACCEPTED, "{:?}", created.body);
    let id = created.body["job_id"].as_str().expect("job id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.admin(Method::GET, &format!("/jobs/{id}"), None).await.body["status"] != "COMPLETED" {
        assert!(Instant::now() < deadline, "settlement job not completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let csv = app.admin(Method::GET, &format!("/downloads/{id}.csv"), None).await;
    assert_eq!(csv.status, StatusCode::OK);
}

/// Evaluates every panel query in the Prometheus on `port`, each until it
/// returns a series or for 10 s; returns the panels left without data.
async fn panels_without_data(port: u16, phase: &str) -> Vec<String> {
    let queries = panel_queries();
    assert!(queries.len() > 20, "found only {} panel queries", queries.len());
    let mut empty = Vec::new();
    for (dashboard, panel, expr) in &queries {
        let query = with_variables(expr);
        let deadline = Instant::now() + Duration::from_secs(10);
        let result = loop {
            let reply = prometheus_get(port, &format!("/api/v1/query?query={}", encode(&query))).await;
            let series = reply
                .as_ref()
                .and_then(|r| r["data"]["result"].as_array())
                .map_or(0, Vec::len);
            if series > 0 || Instant::now() > deadline {
                break series;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        println!("{phase}: panel {dashboard} / {panel}: {result} series  ({query})");
        if result == 0 {
            empty.push(format!("{dashboard} / {panel}: {query}"));
        }
    }
    empty
}

/// The alert rules loaded in the Prometheus on `port` and evaluate without
/// error.
async fn assert_rules_evaluate(port: u16) {
    // Rules are evaluated every second; wait for a first evaluation.
    let deadline = Instant::now() + Duration::from_secs(10);
    let evaluated: Vec<(String, String)> = loop {
        let rules = prometheus_get(port, "/api/v1/rules").await.expect("rules API");
        let groups = rules["data"]["groups"].as_array().cloned().unwrap_or_default();
        let evaluated: Vec<(String, String)> = groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or("?").to_owned(),
                    r["health"].as_str().unwrap_or("?").to_owned(),
                )
            })
            .collect();
        if evaluated.iter().all(|(_, health)| health != "unknown") || Instant::now() > deadline {
            break evaluated;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!("alert rules: {evaluated:?}");
    assert!(!evaluated.is_empty(), "no alert rule loaded");
    let broken: Vec<_> = evaluated.iter().filter(|(_, health)| health == "err").collect();
    assert!(broken.is_empty(), "alert rules failing to evaluate: {broken:?}");
}

/// An engine as a process of its own (so its metrics are its own, not those
/// of the other tests running in this one), on a fresh database and key
/// prefix, that has answered nothing yet: waits until it listens by trying
/// to connect, without sending a request. Returns it with its name.
async fn fresh_engine() -> (EngineProcess, String) {
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    let engine = EngineProcess::spawn(&db_url, &name, "", &[], Stdio::inherit());
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(engine.addr).await.is_err() {
        assert!(Instant::now() < deadline, "the engine did not listen within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (engine, name)
}

async fn remove_engine_data(name: &str) {
    drop_database(&database_url(), name).await;
    let redis = redis_client().await;
    delete_keys(&redis, name).await;
    let _: Result<(), _> = fred::interfaces::ClientLike::quit(&redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_has_data_in_a_real_prometheus() {
    let rules = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(ALERT_RULES)
        .output()
        .expect("promtool runs: install Debian's `prometheus` package (scripts/test.sh does)");
    assert!(
        rules.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&rules.stdout),
        String::from_utf8_lossy(&rules.stderr)
    );

    // A fresh engine, before any load: every panel reads 0 (or NaN for a
    // quantile of no samples), never "no data".
    let (engine, name) = fresh_engine().await;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("prometheus-{name}"));
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    let prometheus = start_prometheus(&dir, &engine.addr.to_string());
    let empty_when_fresh = panels_without_data(prometheus.port, "fresh").await;
    assert_rules_evaluate(prometheus.port).await;
    drop(prometheus);
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
    remove_engine_data(&name).await;
    assert!(
        empty_when_fresh.is_empty(),
        "panels with no data on a fresh engine, before any load:\n{}",
        empty_when_fresh.join("\n")
    );

    let app = spawn_app(&[]).await;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("prometheus-{}", app.prefix));
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    let prometheus = start_prometheus(&dir, &app.addr.to_string());

    // Load for a while, so rates have several scrapes to work on.
    let product = a_product(&app).await;
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(8) {
        some_load(&app, round).await;
        some_orders(&app, product, round).await;
        some_wallet(&app, round).await;
        round += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reconcile = app.admin(Method::GET, "/admin/reconcile", None).await;
    assert_eq!(reconcile.status, StatusCode::OK, "{:?}", reconcile.body);

    let empty = panels_without_data(prometheus.port, "loaded").await;
    assert_rules_evaluate(prometheus.port).await;

    drop(prometheus);
    let _ = std::fs::remove_dir_all(&dir);
    app.finish().await;
    assert!(
        empty.is_empty(),
        "panels whose query returned no data:\n{}",
        empty.join("\n")
    );
}

/// Every metric name in the source: each `"stampede_…"` string of `src/`
/// (the names given to `counter!`, `gauge!` and `histogram!`, those
/// registered by a loop over a list, and those the live page reads), with
/// the macro calls checked to be among them.
fn metric_names_in_source() -> BTreeSet<String> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("source folder") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let is_name = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut files = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    let (mut names, mut in_macros) = (BTreeSet::new(), BTreeSet::new());
    for file in files {
        let text = std::fs::read_to_string(&file).expect("source reads");
        for (at, _) in text.match_indices("\"stampede_") {
            let name: String = text[at + 1..].chars().take_while(|&c| is_name(c)).collect();
            names.insert(name);
        }
        for call in ["counter!(", "gauge!(", "histogram!("] {
            for (at, _) in text.match_indices(call) {
                let rest = text[at + call.len()..].trim_start();
                if let Some(literal) = rest.strip_prefix('"') {
                    in_macros.insert(literal.chars().take_while(|&c| is_name(c)).collect::<String>());
                }
            }
        }
    }
    assert!(
        in_macros.is_subset(&names),
        "macro names not found as strings: {in_macros:?}"
    );
    names
}

/// The metric names of the exposition's samples (`name{labels} value` or
/// `name value`), with `_bucket`, `_sum` and `_count` as rendered.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// A fresh engine's first answer is `GET /metrics`, and it already holds
/// every metric the source names: counters and gauges as samples,
/// histograms with their `_count` (so a rate or a ratio over them is 0 or
/// NaN, never "no data").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_the_source_is_exported_before_the_first_request() {
    let names = metric_names_in_source();
    assert!(names.len() > 30, "found only {} metric names in src/", names.len());
    let (engine, name) = fresh_engine().await;
    let reply = {
        let http = http_client();
        let req = Request::builder()
            .method(Method::GET)
            .uri(format!("http://{}/metrics", engine.addr))
            .body(Full::new(bytes::Bytes::new()))
            .expect("request");
        let res = http.request(req).await.expect("GET /metrics answers");
        assert_eq!(res.status(), StatusCode::OK);
        let body = res.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8(body.to_vec()).expect("text")
    };
    drop(engine);
    remove_engine_data(&name).await;
    let exported = exported_names(&reply);
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| {
            let as_histogram = format!("{name}_count");
            !exported.contains(*name) && !exported.contains(&as_histogram)
        })
        .collect();
    println!(
        "{} metric names in src/, {} sample lines exported before the first request",
        names.len(),
        reply.lines().filter(|l| !l.starts_with('#')).count()
    );
    assert!(
        missing.is_empty(),
        "metrics named in src/ but not exported before the first request: {missing:?}"
    );
}
