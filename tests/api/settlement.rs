//! Settlement jobs against the real engine and a real Postgres: results equal
//! SQL's GROUP BY, cancel within a second, `kill -9` resumes from the
//! checkpoint, overlapping jobs and two engines on one database, bad input.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use stampede::settlement::generate::{Options, load};
use time::macros::date;

use crate::helpers::{
    EngineProcess, HttpClient, Reply, TestApp, create_database, database_url, drop_database, http_client, scaled,
    send_with, spawn_app, unique_name,
};

const AUTH: &str = "Bearer test-admin-token-0123456789";

async fn admin_send(
    http: &HttpClient,
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    body: Option<&str>,
) -> Reply {
    send_with(http, addr, method, path, body, &[("authorization", AUTH)])
        .await
        .expect("engine answers")
}

/// Queues a job over `from..=to`; returns its id.
async fn post_job(http: &HttpClient, addr: std::net::SocketAddr, from: &str, to: &str) -> String {
    let body = json!({"from": from, "to": to}).to_string();
    let reply = admin_send(http, addr, Method::POST, "/jobs/settlement", Some(&body)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    assert_eq!(reply.body["status"], "QUEUED");
    reply.body["job_id"].as_str().expect("job_id").to_owned()
}

async fn job(http: &HttpClient, addr: std::net::SocketAddr, id: &str) -> Value {
    let reply = admin_send(http, addr, Method::GET, &format!("/jobs/{id}"), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.body
}

/// Polls the job until `status`, checking progress never goes back.
async fn wait_status(http: &HttpClient, addr: std::net::SocketAddr, id: &str, status: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    let mut last_progress = 0;
    let mut last_processed = 0;
    loop {
        let view = job(http, addr, id).await;
        let progress = view["progress"].as_i64().expect("progress");
        let processed = view["processed"].as_i64().expect("processed");
        assert!((0..=100).contains(&progress), "{view}");
        assert!(progress >= last_progress, "progress went back: {view}");
        assert!(processed >= last_processed, "processed went back: {view}");
        (last_progress, last_processed) = (progress, processed);
        if view["status"] == status {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} not {status} after {within:?}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The CSV of a job: status and text.
async fn download(http: &HttpClient, addr: std::net::SocketAddr, id: &str) -> (StatusCode, String) {
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{addr}/downloads/{id}.csv"))
        .header("authorization", AUTH)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let res = http.request(req).await.expect("engine answers");
    let status = res.status();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8(bytes.to_vec()).expect("UTF-8"))
}

/// What the settlements of `from..=to` must be, from the transactions by
/// plain SQL (half-open timestamp range, not the engine's date expression).
async fn expected_rows(db: &PgPool, from: &str, to: &str) -> Vec<(i32, String, i64, i64, i64, i32)> {
    sqlx::query_as(
        "SELECT merchant_id, to_char(paid_at, 'YYYY-MM-DD'), sum(amount_cents)::bigint, sum(fee_cents)::bigint,
                (sum(amount_cents) - sum(fee_cents))::bigint, count(*)::int
         FROM transactions
         WHERE status = 'PAID' AND paid_at >= $1::date AND paid_at < $2::date + 1
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(from)
    .bind(to)
    .fetch_all(db)
    .await
    .expect("expected rows")
}

async fn settled_rows(db: &PgPool, from: &str, to: &str) -> Vec<(i32, String, i64, i64, i64, i32)> {
    sqlx::query_as(
        "SELECT merchant_id, to_char(date, 'YYYY-MM-DD'), gross_cents, fee_cents, net_cents, txn_count
         FROM settlements WHERE date BETWEEN $1::date AND $2::date ORDER BY 1, 2",
    )
    .bind(from)
    .bind(to)
    .fetch_all(db)
    .await
    .expect("settlements")
}

fn csv_of(rows: &[(i32, String, i64, i64, i64, i32)]) -> String {
    let mut csv = String::from("merchant_id,date,gross_cents,fee_cents,net_cents,txn_count\n");
    for (m, d, g, f, n, c) in rows {
        csv.push_str(&format!("{m},{d},{g},{f},{n},{c}\n"));
    }
    csv
}

async fn paid_in_range(db: &PgPool, from: &str, to: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM transactions WHERE status = 'PAID' AND paid_at >= $1::date AND paid_at < $2::date + 1",
    )
    .bind(from)
    .bind(to)
    .fetch_one(db)
    .await
    .expect("count")
}

async fn generate(db_url: &str, count: u64, merchants: u32, seed: u64) {
    let mut conn = PgConnection::connect(db_url).await.expect("connect");
    let options = Options {
        count,
        merchants,
        from: date!(2025 - 01 - 01),
        to: date!(2025 - 01 - 31),
        seed,
    };
    load(&mut conn, options, |_| {}).await.expect("transactions load");
    let _ = conn.close().await;
}

async fn insert_txn(db: &PgPool, merchant: i32, amount: i32, fee: i32, status: &str, paid_at: &str) {
    sqlx::query(
        "INSERT INTO transactions (merchant_id, amount_cents, fee_cents, status, paid_at)
         VALUES ($1, $2, $3, $4, $5::timestamp)",
    )
    .bind(merchant)
    .bind(amount)
    .bind(fee)
    .bind(status)
    .bind(paid_at)
    .execute(db)
    .await
    .expect("insert transaction");
}

fn addr(app: &TestApp) -> std::net::SocketAddr {
    app.addr
}

/// Results equal SQL's GROUP BY: day boundaries to the microsecond, non-PAID
/// rows skipped, a one-transaction merchant, zero fees, a stale settlement
/// removed, rows outside the range untouched, days split into several
/// merchant chunks; and an empty range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_equal_sql_group_by() {
    // Tiny chunks, so days are split into merchant ranges.
    let app = spawn_app(&[("STAMPEDE_SETTLEMENT_BATCH_ROWS", "7")]).await;
    let db = &app.db;
    // Merchant 1: the last microsecond of Jan 1 and the first of Jan 2.
    insert_txn(db, 1, 1000, 30, "PAID", "2025-01-01 23:59:59.999999").await;
    insert_txn(db, 1, 2000, 60, "PAID", "2025-01-02 00:00:00").await;
    insert_txn(db, 1, 500, 15, "PAID", "2025-01-01 00:00:00").await;
    // Outside the range on both sides, to the microsecond.
    insert_txn(db, 1, 7777, 7, "PAID", "2024-12-31 23:59:59.999999").await;
    insert_txn(db, 1, 8888, 8, "PAID", "2025-01-04 00:00:00").await;
    // Not PAID: skipped.
    for status in ["PENDING", "FAILED", "REFUNDED", "CANCELLED", "paid"] {
        insert_txn(db, 2, 99_999, 1, status, "2025-01-02 12:00:00").await;
    }
    insert_txn(db, 2, 300, 0, "PAID", "2025-01-02 12:00:00").await;
    // A merchant with a single transaction, without a fee.
    insert_txn(db, 3, 4242, 0, "PAID", "2025-01-03 08:00:00").await;
    // A merchant with only refunded transactions: no settlement row.
    insert_txn(db, 4, 5000, 100, "REFUNDED", "2025-01-03 09:00:00").await;
    // Many merchants on Jan 2, so the day splits into merchant chunks.
    for m in 10..60 {
        insert_txn(db, m, 100 + m, m % 3, "PAID", "2025-01-02 06:00:00").await;
        insert_txn(db, m, 200 + m, 0, "PAID", "2025-01-02 18:30:00.5").await;
    }
    // A stale settlement (merchant 4 had PAID rows once) and one outside
    // the range: the first goes, the second stays.
    let run = "00000000-0000-4000-8000-000000000000";
    for (m, d) in [(4, "2025-01-03"), (9, "2025-02-01")] {
        sqlx::query(
            "INSERT INTO settlements (merchant_id, date, gross_cents, fee_cents, net_cents, txn_count, unique_run_id)
             VALUES ($1, $2::date, 1, 1, 0, 1, $3::uuid)",
        )
        .bind(m)
        .bind(d)
        .bind(run)
        .execute(db)
        .await
        .expect("stale settlement");
    }

    let id = post_job(&app.http, addr(&app), "2025-01-01", "2025-01-03").await;
    let view = wait_status(&app.http, addr(&app), &id, "COMPLETED", Duration::from_secs(30)).await;
    let expected = expected_rows(db, "2025-01-01", "2025-01-03").await;
    assert_eq!(settled_rows(db, "2025-01-01", "2025-01-03").await, expected);
    let paid = paid_in_range(db, "2025-01-01", "2025-01-03").await;
    assert_eq!(paid, 3 + 1 + 1 + 100);
    assert_eq!(view["processed"], paid);
    assert_eq!(view["total"], paid);
    assert_eq!(view["progress"], 100);
    assert_eq!(view["download_url"], format!("/downloads/{id}.csv"));
    // The boundary rows landed on their own days.
    let merchant_1: Vec<_> = expected.iter().filter(|r| r.0 == 1).cloned().collect();
    assert_eq!(
        merchant_1,
        vec![
            (1, "2025-01-01".into(), 1500, 45, 1455, 2),
            (1, "2025-01-02".into(), 2000, 60, 1940, 1)
        ]
    );
    assert!(expected.contains(&(3, "2025-01-03".into(), 4242, 0, 4242, 1)));
    assert!(!expected.iter().any(|r| r.0 == 4));
    let outside: i64 = sqlx::query_scalar("SELECT count(*) FROM settlements WHERE merchant_id = 9")
        .fetch_one(db)
        .await
        .expect("count");
    assert_eq!(outside, 1, "rows outside the range are untouched");
    let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM settlement_chunks WHERE job_id = $1::uuid")
        .bind(&id)
        .fetch_one(db)
        .await
        .expect("chunks");
    assert!(chunks > 3, "the busy day was split: {chunks} chunks");

    let (status, csv) = download(&app.http, addr(&app), &id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(csv, csv_of(&expected));

    // Re-running the range gives the same rows.
    let again = post_job(&app.http, addr(&app), "2025-01-01", "2025-01-03").await;
    wait_status(&app.http, addr(&app), &again, "COMPLETED", Duration::from_secs(30)).await;
    assert_eq!(settled_rows(db, "2025-01-01", "2025-01-03").await, expected);
    assert_eq!(download(&app.http, addr(&app), &again).await.1, csv);

    // An empty range: completed, nothing counted, a CSV of its header.
    let empty = post_job(&app.http, addr(&app), "2030-06-01", "2030-06-30").await;
    let view = wait_status(&app.http, addr(&app), &empty, "COMPLETED", Duration::from_secs(30)).await;
    assert_eq!((view["processed"].as_i64(), view["total"].as_i64()), (Some(0), Some(0)));
    assert_eq!(view["progress"], 100);
    let (status, csv) = download(&app.http, addr(&app), &empty).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(csv, "merchant_id,date,gross_cents,fee_cents,net_cents,txn_count\n");
    app.finish().await;
}

/// Bad input gets a 4xx JSON error with a stable code; idempotency keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_stable_codes() {
    // No workers: jobs stay QUEUED.
    let app = spawn_app(&[("STAMPEDE_SETTLEMENT_WORKERS", "0")]).await;
    let cases: Vec<(&str, u16, &str)> = vec![
        (r#"{"from":"2025-02-01","to":"2025-01-31"}"#, 400, "FROM_AFTER_TO"),
        (r#"{"from":"2024-01-01","to":"2025-01-01"}"#, 400, "RANGE_TOO_LONG"),
        (r#"{"from":"2025-13-01","to":"2025-01-31"}"#, 400, "INVALID_DATE"),
        (r#"{"from":"2025-01-01","to":"31/01/2025"}"#, 400, "INVALID_DATE"),
        (r#"{"from":"2025-01-01","to":null}"#, 400, "INVALID_DATE"),
        (r#"{"from":"2025-01-01"}"#, 400, "MISSING_FIELD"),
        (
            r#"{"from":"2025-01-01","to":"2025-01-31","merchant_id":1}"#,
            400,
            "UNKNOWN_FIELD",
        ),
        (r#"["2025-01-01"]"#, 400, "INVALID_BODY"),
        (r#"{"from":"2025-01-01","#, 400, "INVALID_JSON"),
    ];
    for (body, status, code) in cases {
        let reply = app.admin(Method::POST, "/jobs/settlement", Some(body)).await;
        assert_eq!(
            (reply.status.as_u16(), reply.error_code()),
            (status, code),
            "{body}: {:?}",
            reply.body
        );
    }
    let ok = r#"{"from":"2025-01-01","to":"2025-01-31"}"#;
    let reply = app.request(Method::POST, "/jobs/settlement", Some(ok)).await;
    assert_eq!((reply.status.as_u16(), reply.error_code()), (401, "UNAUTHORIZED"));
    let reply = app.get("/jobs/00000000-0000-4000-8000-000000000000").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    for path in ["/jobs/00000000-0000-4000-8000-000000000000", "/jobs/job_123"] {
        let reply = app.admin(Method::GET, path, None).await;
        assert_eq!(
            (reply.status.as_u16(), reply.error_code()),
            (404, "JOB_NOT_FOUND"),
            "{path}"
        );
    }
    let reply = app
        .admin(Method::POST, "/jobs/00000000-0000-4000-8000-000000000000/cancel", None)
        .await;
    assert_eq!((reply.status.as_u16(), reply.error_code()), (404, "JOB_NOT_FOUND"));
    for path in [
        "/downloads/00000000-0000-4000-8000-000000000000.csv",
        "/downloads/x.csv",
    ] {
        let reply = app.admin(Method::GET, path, None).await;
        assert_eq!(
            (reply.status.as_u16(), reply.error_code()),
            (404, "JOB_NOT_FOUND"),
            "{path}"
        );
    }
    let reply = app
        .admin(Method::GET, "/downloads/00000000-0000-4000-8000-000000000000.txt", None)
        .await;
    assert_eq!((reply.status.as_u16(), reply.error_code()), (404, "NOT_FOUND"));

    // Idempotency: same key and body, same job; another body, 422.
    let app_ref = &app;
    let post = |key: &'static str, body: &'static str| async move {
        app_ref
            .request_with(
                Method::POST,
                "/jobs/settlement",
                Some(body),
                &[("authorization", AUTH), ("idempotency-key", key)],
            )
            .await
    };
    let first = post("key-1", ok).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let replay = post("key-1", r#"{"to":"2025-01-31", "from":"2025-01-01"}"#).await;
    assert_eq!(replay.status, StatusCode::ACCEPTED);
    assert_eq!(replay.body["job_id"], first.body["job_id"]);
    let other = post("key-1", r#"{"from":"2025-01-01","to":"2025-01-30"}"#).await;
    assert_eq!(
        (other.status.as_u16(), other.error_code()),
        (422, "IDEMPOTENCY_KEY_REUSED")
    );
    let bad_key = post("", ok).await;
    assert_eq!(
        (bad_key.status.as_u16(), bad_key.error_code()),
        (400, "INVALID_IDEMPOTENCY_KEY")
    );
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(jobs, 1);

    // A queued job: no CSV yet; cancelled at once; still no CSV.
    let id = first.body["job_id"].as_str().expect("id").to_owned();
    let reply = app.admin(Method::GET, &format!("/downloads/{id}.csv"), None).await;
    assert_eq!((reply.status.as_u16(), reply.error_code()), (409, "JOB_NOT_COMPLETED"));
    let reply = app.admin(Method::POST, &format!("/jobs/{id}/cancel"), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["status"], "CANCELLED");
    let reply = app.admin(Method::GET, &format!("/downloads/{id}.csv"), None).await;
    assert_eq!((reply.status.as_u16(), reply.error_code()), (409, "JOB_NOT_COMPLETED"));
    // Cancelling again is harmless.
    let reply = app.admin(Method::POST, &format!("/jobs/{id}/cancel"), None).await;
    assert_eq!(reply.body["status"], "CANCELLED");
    app.finish().await;

    // Cancelling a completed job: 409.
    let app = spawn_app(&[]).await;
    let id = post_job(&app.http, addr(&app), "2025-01-01", "2025-01-01").await;
    wait_status(&app.http, addr(&app), &id, "COMPLETED", Duration::from_secs(30)).await;
    let reply = app.admin(Method::POST, &format!("/jobs/{id}/cancel"), None).await;
    assert_eq!(
        (reply.status.as_u16(), reply.error_code()),
        (409, "JOB_ALREADY_COMPLETED")
    );
    app.finish().await;
}

/// Chunks of a job: (done, total).
async fn chunk_counts(db: &PgPool, id: &str) -> (i64, i64) {
    sqlx::query_as("SELECT count(done_at), count(*) FROM settlement_chunks WHERE job_id = $1::uuid")
        .bind(id)
        .fetch_one(db)
        .await
        .expect("chunk counts")
}

/// Waits until the engine's `/metrics` shows `series` at `value` or more.
async fn wait_counter(http: &HttpClient, addr: std::net::SocketAddr, series: &str, value: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let req = Request::builder()
            .uri(format!("http://{addr}/metrics"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let res = http.request(req).await.expect("GET /metrics");
        let text = res.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&text);
        let now = text
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if now >= value as f64 {
            return;
        }
        assert!(Instant::now() < deadline, "{series} is {now}, not {value}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Postgres's own clock, as text, to compare with `pg_stat_activity`.
async fn postgres_now(db: &PgPool) -> String {
    sqlx::query_scalar("SELECT clock_timestamp()::text")
        .fetch_one(db)
        .await
        .expect("clock_timestamp")
}

/// Waits until no session on the test's database but this one is inside a
/// transaction (or a statement) that began before `since`: whatever was in
/// flight then has committed or rolled back. Work begun later (the workers
/// keep polling the queue) saw what was committed by then.
async fn wait_no_open_transaction(db: &PgPool, since: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let busy: Vec<(i32, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT pid, state, left(query, 120) FROM pg_stat_activity
             WHERE datname = current_database() AND backend_type = 'client backend'
               AND pid <> pg_backend_pid() AND state IS DISTINCT FROM 'idle'
               AND coalesce(xact_start, query_start) < $1::timestamptz",
        )
        .bind(since)
        .fetch_all(db)
        .await
        .expect("pg_stat_activity");
        if busy.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "sessions still busy: {busy:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Small chunks, one at a time: a job of ~180k PAID rows takes seconds.
const SLOW_JOB: &[(&str, &str)] = &[
    ("STAMPEDE_SETTLEMENT_BATCH_ROWS", "150"),
    ("STAMPEDE_SETTLEMENT_CHUNKS_IN_FLIGHT", "1"),
    ("STAMPEDE_SETTLEMENT_LEASE_MS", "1000"),
];

/// `kill -9` mid-job, then a restart: the job resumes from its checkpoint
/// (the chunks the dead engine committed stay its own and are not run
/// again), and its rows and CSV equal a clean run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_job_resumes_from_the_checkpoint() {
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    let mut first = EngineProcess::start(&db_url, &name, "", SLOW_JOB).await;
    let db = PgPool::connect(&db_url).await.expect("db");
    generate(&db_url, 200_000, 300, 11).await;
    let http = http_client();
    let id = post_job(&http, first.addr, "2025-01-01", "2025-01-31").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (done, total) = chunk_counts(&db, &id).await;
        if total > 0 && done * 4 >= total {
            assert!(done < total, "the job finished before the kill; make it slower");
            break;
        }
        assert!(Instant::now() < deadline, "job made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill_9();
    // A COMMIT the dead engine had already sent still completes on the
    // server: let its backends finish before reading what it left.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (done_at_kill, total) = chunk_counts(&db, &id).await;
    let processed_at_kill: i64 = sqlx::query_scalar("SELECT processed_count FROM jobs WHERE job_id = $1::uuid")
        .bind(&id)
        .fetch_one(&db)
        .await
        .expect("processed");
    assert!(done_at_kill > 0 && processed_at_kill > 0);

    let second = EngineProcess::start(&db_url, &name, "", SLOW_JOB).await;
    let view = wait_status(&http, second.addr, &id, "COMPLETED", Duration::from_secs(120)).await;
    let paid = paid_in_range(&db, "2025-01-01", "2025-01-31").await;
    assert_eq!(view["processed"], paid, "nothing counted twice, nothing missed");
    assert_eq!(view["total"], paid);
    // Resumed, not restarted: the chunks committed before the kill are
    // still the first engine's, the rest the second's, each done once.
    let by_engine: Vec<(String, i64)> = sqlx::query_as(
        "SELECT done_by, count(*) FROM settlement_chunks WHERE job_id = $1::uuid GROUP BY 1 ORDER BY 2 DESC",
    )
    .bind(&id)
    .fetch_all(&db)
    .await
    .expect("by engine");
    assert_eq!(by_engine.len(), 2, "{by_engine:?}");
    let first_engine_chunks = by_engine
        .iter()
        .find(|(engine, _)| engine.contains(&first.addr.port().to_string()))
        .map(|(_, n)| *n);
    assert_eq!(first_engine_chunks, Some(done_at_kill), "{by_engine:?}");
    assert_eq!(by_engine.iter().map(|(_, n)| n).sum::<i64>(), total);
    let (chunks_done, attempts): (i32, i32) =
        sqlx::query_as("SELECT chunks_done, attempts FROM jobs WHERE job_id = $1::uuid")
            .bind(&id)
            .fetch_one(&db)
            .await
            .expect("job");
    assert_eq!(i64::from(chunks_done), total);
    assert_eq!(attempts, 2);

    let expected = expected_rows(&db, "2025-01-01", "2025-01-31").await;
    assert_eq!(settled_rows(&db, "2025-01-01", "2025-01-31").await, expected);
    let (status, csv) = download(&http, second.addr, &id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(csv, csv_of(&expected));
    // A clean run of the same range gives the same file.
    let clean = post_job(&http, second.addr, "2025-01-01", "2025-01-31").await;
    wait_status(&http, second.addr, &clean, "COMPLETED", Duration::from_secs(120)).await;
    assert_eq!(download(&http, second.addr, &clean).await.1, csv);

    drop(second);
    db.close().await;
    drop_database(&database_url(), &name).await;
}

/// Cancel takes effect within a second, leaves no CSV, stops the chunks,
/// and the status is still there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_job_within_a_second() {
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    let mut engine = EngineProcess::start(&db_url, &name, "", SLOW_JOB).await;
    let db = PgPool::connect(&db_url).await.expect("db");
    generate(&db_url, 200_000, 300, 12).await;
    let http = http_client();
    let id = post_job(&http, engine.addr, "2025-01-01", "2025-01-31").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while chunk_counts(&db, &id).await.0 < 5 {
        assert!(Instant::now() < deadline, "job made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let asked = Instant::now();
    let reply = admin_send(&http, engine.addr, Method::POST, &format!("/jobs/{id}/cancel"), None).await;
    assert!(reply.status.is_success(), "{:?}", reply.body);
    wait_status(&http, engine.addr, &id, "CANCELLED", scaled(Duration::from_secs(1))).await;
    let cancelled_by = postgres_now(&db).await;
    let took = asked.elapsed();
    assert!(took <= scaled(Duration::from_secs(1)), "cancel took {took:?}");
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the cancel answer waited for it: {:?}",
        reply.body
    );

    // No chunk commits after the cancel; no CSV. Checked once the worker has
    // let the job go (its engine counted the cancelled run), every
    // transaction the engine had open at the cancel has ended, and a job queued since has
    // completed (the workers polled the queue, which hands out the oldest
    // claimable job first, and passed over this one): nothing is left then
    // that could commit a chunk of it.
    let done = chunk_counts(&db, &id).await;
    wait_counter(
        &http,
        engine.addr,
        r#"stampede_settlement_jobs_finished_total{status="cancelled"}"#,
        1,
    )
    .await;
    wait_no_open_transaction(&db, &cancelled_by).await;
    let later = post_job(&http, engine.addr, "2024-06-01", "2024-06-01").await;
    wait_status(&http, engine.addr, &later, "COMPLETED", Duration::from_secs(30)).await;
    assert_eq!(job(&http, engine.addr, &id).await["status"], "CANCELLED");
    assert_eq!(chunk_counts(&db, &id).await, done);
    assert!(done.0 < done.1, "cancelled before the end");
    let (status, _) = download(&http, engine.addr, &id).await;
    assert_eq!(status, StatusCode::CONFLICT);

    engine.kill_9();
    let engine = EngineProcess::start(&db_url, &name, "", SLOW_JOB).await;
    // A job queued now and run to completion: the new engine's workers have
    // polled the queue, which hands out the oldest claimable job first.
    let later = post_job(&http, engine.addr, "2024-06-02", "2024-06-02").await;
    wait_status(&http, engine.addr, &later, "COMPLETED", Duration::from_secs(30)).await;
    let view = job(&http, engine.addr, &id).await;
    assert_eq!(view["status"], "CANCELLED", "{view}");
    assert!(view.get("download_url").is_none());
    assert_eq!(
        chunk_counts(&db, &id).await,
        done,
        "a restart does not resume a cancelled job"
    );

    drop(engine);
    db.close().await;
    drop_database(&database_url(), &name).await;
}

/// Two engines on one database, overlapping jobs at once: every job runs on
/// one engine only, each chunk commits once, and the settlements equal SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_jobs_on_two_engines_leave_settlements_correct() {
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    let settings = [
        ("STAMPEDE_SETTLEMENT_BATCH_ROWS", "500"),
        ("STAMPEDE_SETTLEMENT_WORKERS", "2"),
        ("STAMPEDE_SETTLEMENT_POLL_MS", "20"),
    ];
    let a = EngineProcess::start(&db_url, &name, "", &settings).await;
    let b = EngineProcess::start(&db_url, &name, "", &settings).await;
    let db = PgPool::connect(&db_url).await.expect("db");
    generate(&db_url, 60_000, 200, 13).await;
    let http = http_client();
    let ranges = [
        ("2025-01-01", "2025-01-20"),
        ("2025-01-10", "2025-01-31"),
        ("2025-01-05", "2025-01-25"),
        ("2025-01-01", "2025-01-31"),
    ];
    let mut ids = Vec::new();
    for (i, (from, to)) in ranges.iter().enumerate() {
        let engine = if i % 2 == 0 { &a } else { &b };
        ids.push(post_job(&http, engine.addr, from, to).await);
    }
    for (id, (from, to)) in ids.iter().zip(ranges) {
        let view = wait_status(&http, a.addr, id, "COMPLETED", Duration::from_secs(60)).await;
        assert_eq!(view["processed"], paid_in_range(&db, from, to).await, "{view}");
        let engines: i64 =
            sqlx::query_scalar("SELECT count(DISTINCT done_by) FROM settlement_chunks WHERE job_id = $1::uuid")
                .bind(id)
                .fetch_one(&db)
                .await
                .expect("engines");
        assert_eq!(engines, 1, "job {id} ran on one engine");
    }
    let expected = expected_rows(&db, "2025-01-01", "2025-01-31").await;
    assert_eq!(settled_rows(&db, "2025-01-01", "2025-01-31").await, expected);
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM settlements")
        .fetch_one(&db)
        .await
        .expect("count");
    assert_eq!(total, expected.len() as i64);
    for (id, (from, to)) in ids.iter().zip(ranges) {
        let (status, csv) = download(&http, b.addr, id).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(csv, csv_of(&expected_rows(&db, from, to).await));
    }
    drop((a, b));
    db.close().await;
    drop_database(&database_url(), &name).await;
}

/// SIGTERM while a job runs: the engine stops promptly and hands the job
/// back (still RUNNING, lease expired, the claim not counted as an attempt);
/// the next engine takes it over at once and finishes it exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_a_running_job_back() {
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    // A long lease: only the hand-back can make the job claimable soon.
    let settings = [
        ("STAMPEDE_SETTLEMENT_BATCH_ROWS", "150"),
        ("STAMPEDE_SETTLEMENT_CHUNKS_IN_FLIGHT", "1"),
        ("STAMPEDE_SETTLEMENT_LEASE_MS", "600000"),
    ];
    let mut first = EngineProcess::start(&db_url, &name, "", &settings).await;
    let db = PgPool::connect(&db_url).await.expect("db");
    generate(&db_url, 200_000, 300, 14).await;
    let http = http_client();
    let id = post_job(&http, first.addr, "2025-01-01", "2025-01-31").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while chunk_counts(&db, &id).await.0 < 5 {
        assert!(Instant::now() < deadline, "job made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopping = Instant::now();
    let exit = first.terminate();
    assert!(exit.success(), "SIGTERM exits 0");
    assert!(
        stopping.elapsed() < scaled(Duration::from_secs(5)),
        "stopped in {:?}",
        stopping.elapsed()
    );
    let (status, locked_by, attempts): (String, Option<String>, i32) =
        sqlx::query_as("SELECT status, locked_by, attempts FROM jobs WHERE job_id = $1::uuid")
            .bind(&id)
            .fetch_one(&db)
            .await
            .expect("job");
    assert_eq!((status.as_str(), locked_by, attempts), ("RUNNING", None, 0));
    let (done_at_stop, _) = chunk_counts(&db, &id).await;

    let second = EngineProcess::start(&db_url, &name, "", &settings).await;
    let view = wait_status(&http, second.addr, &id, "COMPLETED", Duration::from_secs(120)).await;
    assert_eq!(view["processed"], paid_in_range(&db, "2025-01-01", "2025-01-31").await);
    let first_engine_chunks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM settlement_chunks WHERE job_id = $1::uuid AND done_by LIKE $2")
            .bind(&id)
            .bind(format!("%-{}-%", first.addr.port()))
            .fetch_one(&db)
            .await
            .expect("count");
    assert_eq!(first_engine_chunks, done_at_stop);
    assert_eq!(
        settled_rows(&db, "2025-01-01", "2025-01-31").await,
        expected_rows(&db, "2025-01-01", "2025-01-31").await
    );
    drop(second);
    db.close().await;
    drop_database(&database_url(), &name).await;
}

/// A job whose engine keeps dying is FAILED, not retried forever; a failed
/// job cannot be cancelled and has no CSV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_interrupted_too_often_fails() {
    let app = spawn_app(&[("STAMPEDE_SETTLEMENT_POLL_MS", "20")]).await;
    let id: String = sqlx::query_scalar(
        "INSERT INTO jobs (from_date, to_date, status, locked_by, lease_until, attempts)
         VALUES ('2025-01-01', '2025-01-31', 'RUNNING', 'a-dead-engine', now() - interval '1 second', 5)
         RETURNING job_id::text",
    )
    .fetch_one(&app.db)
    .await
    .expect("job");
    let view = wait_status(&app.http, addr(&app), &id, "FAILED", Duration::from_secs(10)).await;
    assert!(
        view["error"].as_str().is_some_and(|e| e.contains("interrupted")),
        "{view}"
    );
    let reply = app.admin(Method::POST, &format!("/jobs/{id}/cancel"), None).await;
    assert_eq!((reply.status.as_u16(), reply.error_code()), (409, "JOB_ALREADY_FAILED"));
    let reply = app.admin(Method::GET, &format!("/downloads/{id}.csv"), None).await;
    assert_eq!((reply.status.as_u16(), reply.error_code()), (409, "JOB_NOT_COMPLETED"));
    app.finish().await;
}

/// Completed orders become PAID transactions of their product's merchant,
/// with a fee of STAMPEDE_FEE_BPS rounded down, so a settlement covers the
/// engine's own sales; holds that are cancelled never do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_orders_are_settled_for_their_merchant() {
    let app = spawn_app(&[("STAMPEDE_FEE_BPS", "333")]).await;
    let product = app
        .admin(
            Method::POST,
            "/products",
            Some(r#"{"name":"mug","stock":100,"price_cents":1234,"merchant_id":4242}"#),
        )
        .await;
    assert_eq!(product.status, StatusCode::CREATED, "{:?}", product.body);
    let id = product.body["id"].as_u64().expect("product id");
    let order = |qty: u32, hold: &str| format!(r#"{{"product_id":{id},"quantity":{qty},"buyer_id":"b{qty}"{hold}}}"#);
    assert_eq!(
        app.request(Method::POST, "/orders", Some(&order(3, ""))).await.status,
        StatusCode::OK
    );
    for (qty, action) in [(2, "confirm"), (5, "cancel")] {
        let held = app
            .request(Method::POST, "/orders", Some(&order(qty, r#","hold_secs":60"#)))
            .await;
        let order_id = held.body["id"].as_str().expect("order id").to_owned();
        let reply = app.post(&format!("/orders/{order_id}/{action}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    app.wait_flushed(Duration::from_secs(10)).await;

    let rows: Vec<(i32, i64, i64, String)> =
        sqlx::query_as("SELECT merchant_id, amount_cents, fee_cents, status FROM transactions ORDER BY amount_cents")
            .fetch_all(&app.db)
            .await
            .expect("transactions");
    // 2 × 1234 = 2468, fee floor(2468 × 333 / 10000) = 82; 3 × 1234 = 3702, fee 123.
    assert_eq!(
        rows,
        vec![
            (4242, 2468, 82, "PAID".to_owned()),
            (4242, 3702, 123, "PAID".to_owned())
        ]
    );

    let today: String = sqlx::query_scalar("SELECT to_char(paid_at, 'YYYY-MM-DD') FROM transactions LIMIT 1")
        .fetch_one(&app.db)
        .await
        .expect("date");
    let job_id = post_job(&app.http, addr(&app), &today, &today).await;
    wait_status(&app.http, addr(&app), &job_id, "COMPLETED", Duration::from_secs(30)).await;
    let settled = settled_rows(&app.db, &today, &today).await;
    assert_eq!(settled, vec![(4242, today.clone(), 6170, 205, 5965, 2)]);
    app.finish().await;
}
