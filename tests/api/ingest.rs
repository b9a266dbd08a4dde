//! `POST /ingest` and `GET /players/{id}` against the real engine and a real
//! Postgres: exact outcomes, duplicates, re-uploads, bad lines, refusals, a
//! client that goes away, and uploads that race.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use stampede::ingest::generate::write_lines;
use stampede::ingest::record::parse_line;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Reply, TestApp, auth_line, scaled, spawn_app, test_keys};

const BOUNDARY: &str = "stampede-test-boundary-7f3a";

/// A purchase line; `price` is raw JSON text so tests control its spelling.
pub fn line(id: &str, player: &str, price: &str, currency: &str) -> String {
    format!(
        r#"{{"transaction_id":"{id}","player_id":"{player}","platform":"steam","item_id":"dlc-1","item_name":"Frozen Citadel","item_type":"dlc","price":{price},"currency":"{currency}","purchased_at":"2026-11-01T10:00:00Z"}}"#
    )
}

pub fn file(lines: &[String]) -> Vec<u8> {
    let mut out = lines.join("\n").into_bytes();
    out.push(b'\n');
    out
}

/// A multipart body holding `content` as field `file` (plus any other text
/// fields before it).
fn multipart(content: &[u8], part_type: &str, others: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in others {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"purchases.ndjson\"\r\n\
             Content-Type: {part_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn post_body(app: &TestApp, content_type: &str, body: Vec<u8>) -> Reply {
    let req = Request::builder()
        .method(Method::POST)
        .uri(app.url("/ingest"))
        .header("content-type", content_type)
        .header("authorization", format!("Bearer {}", test_keys().all))
        .body(Full::new(Bytes::from(body)))
        .expect("request builds");
    let res = app.http.request(req).await.expect("engine answers");
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.expect("body reads").to_bytes();
    Reply {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        headers,
    }
}

pub async fn upload(app: &TestApp, content: &[u8]) -> Reply {
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    post_body(app, &content_type, multipart(content, "application/x-ndjson", &[])).await
}

/// The counts of a 200 reply, in the order created, updated, unchanged,
/// rejected, total.
fn counts(reply: &Reply) -> [u64; 5] {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    ["created", "updated", "unchanged", "rejected", "total"].map(|k| reply.body[k].as_u64().expect(k))
}

/// player_spend must equal the sum over platform_purchases, per player and
/// currency: the loyalty is kept by deltas, so any slip shows here.
async fn assert_spend_matches_purchases(db: &PgPool) {
    let mismatches: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
             SELECT player_id, currency, count(*) AS purchases, sum(price_minor) AS total_minor
             FROM platform_purchases GROUP BY 1, 2) p
         FULL JOIN (SELECT * FROM player_spend WHERE purchases > 0) s USING (player_id, currency)
         WHERE p.purchases IS DISTINCT FROM s.purchases OR p.total_minor IS DISTINCT FROM s.total_minor",
    )
    .fetch_one(db)
    .await
    .expect("spend query");
    assert_eq!(mismatches, 0, "player_spend disagrees with platform_purchases");
}

/// A generated file of `count` lines and how many of them are redeliveries.
fn generated_file(count: u64, seed: u64) -> (Vec<u8>, u64) {
    let mut content = Vec::new();
    let generated = write_lines(count, seed, &mut content, |_| {}).expect("generates");
    (content, generated.redeliveries)
}

/// Opens an upload of `content_length` bytes on a raw connection and sends
/// its head; the caller sends (or withholds) the body.
async fn start_raw_upload(addr: SocketAddr, content_length: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    let head = format!(
        "POST /ingest HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         {}Content-Length: {content_length}\r\n\r\n",
        auth_line()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream
}

async fn rows(db: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM platform_purchases")
        .fetch_one(db)
        .await
        .expect("count")
}

#[tokio::test]
async fn created_updated_and_unchanged_are_exact() {
    let app = spawn_app(&[]).await;
    let first = upload(
        &app,
        &file(&[
            line("t-1", "p-1", "9.99", "USD"),
            line("t-2", "p-1", "\"1500\"", "JPY"),
            line("t-3", "p-2", "4.50", "EUR"),
        ]),
    )
    .await;
    assert_eq!(counts(&first), [3, 0, 0, 0, 3]);

    // t-1 as before, t-2 repriced, t-3 moved to another player, t-4 new.
    let second = upload(
        &app,
        &file(&[
            line("t-1", "p-1", "9.99", "USD"),
            line("t-2", "p-1", "1200", "JPY"),
            line("t-3", "p-3", "4.50", "EUR"),
            line("t-4", "p-3", "0.99", "EUR"),
        ]),
    )
    .await;
    assert_eq!(counts(&second), [1, 2, 1, 0, 4]);
    assert_eq!(second.body["errors"], json!([]));

    let (price, updated_later): (i64, bool) = sqlx::query_as(
        "SELECT price_minor, updated_at > ingested_at FROM platform_purchases WHERE transaction_id = 't-2'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((price, updated_later), (1200, true));
    assert_spend_matches_purchases(&app.db).await;

    let p1 = app.get("/players/p-1").await;
    assert_eq!(p1.status, StatusCode::OK);
    assert_eq!(p1.body["purchase_count"], 2);
    assert_eq!(p1.body["tier"], "bronze");
    assert_eq!(
        p1.body["spend"],
        json!([
            {"currency": "JPY", "purchases": 1, "total_minor": 1200, "total": "1200"},
            {"currency": "USD", "purchases": 1, "total_minor": 999, "total": "9.99"},
        ])
    );
    // p-2 lost its only purchase to p-3.
    let p2 = app.get("/players/p-2").await;
    assert_eq!(
        (p2.status, p2.error_code()),
        (StatusCode::NOT_FOUND, "PLAYER_NOT_FOUND")
    );
    let p3 = app.get("/players/p-3").await;
    assert_eq!(p3.body["spend"][0]["total"], "5.49");
    app.finish().await;
}

#[tokio::test]
async fn duplicates_within_one_file_count_once_per_line_in_file_order() {
    let lines = [
        line("a", "p-1", "1.00", "USD"),
        line("a", "p-1", "1.00", "USD"),
        line("b", "p-2", "2.00", "USD"),
        line("a", "p-1", "3.00", "USD"),
        line("a", "p-1", "3.00", "USD"),
        line("b", "p-2", "2.00", "USD"),
        line("a", "p-1", "1.00", "USD"),
    ];
    // Small batches and several writers put repeats within one batch, across
    // batches, and across writers' interleavings.
    for (batch_rows, writers) in [("1000", "1"), ("2", "1"), ("1", "3"), ("3", "2")] {
        let app = spawn_app(&[
            ("STAMPEDE_INGEST_BATCH_ROWS", batch_rows),
            ("STAMPEDE_INGEST_WRITERS", writers),
        ])
        .await;
        let reply = upload(&app, &file(&lines)).await;
        // a: created, unchanged, updated (3.00), unchanged, updated (1.00); b: created, unchanged.
        assert_eq!(
            counts(&reply),
            [2, 2, 3, 0, 7],
            "batch rows {batch_rows}, writers {writers}"
        );
        let price: i64 = sqlx::query_scalar("SELECT price_minor FROM platform_purchases WHERE transaction_id = 'a'")
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert_eq!(price, 100, "the last line wins");
        assert_spend_matches_purchases(&app.db).await;
        app.finish().await;
    }
}

#[tokio::test]
async fn resending_the_same_file_changes_nothing() {
    let app = spawn_app(&[("STAMPEDE_INGEST_BATCH_ROWS", "500")]).await;
    let (content, redeliveries) = generated_file(3_000, 11);
    let distinct: HashSet<String> = content
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| parse_line(l).unwrap().transaction_id)
        .collect();
    let distinct = distinct.len() as u64;
    assert_eq!(distinct, 3_000 - redeliveries);

    let first = upload(&app, &content).await;
    assert_eq!(counts(&first), [distinct, 0, redeliveries, 0, 3_000]);
    let spend_before: Vec<(String, String, i64, i64)> =
        sqlx::query_as("SELECT * FROM player_spend ORDER BY player_id, currency")
            .fetch_all(&app.db)
            .await
            .unwrap();

    let again = upload(&app, &content).await;
    assert_eq!(counts(&again), [0, 0, 3_000, 0, 3_000]);
    let spend_after: Vec<(String, String, i64, i64)> =
        sqlx::query_as("SELECT * FROM player_spend ORDER BY player_id, currency")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(spend_before, spend_after);
    assert_eq!(rows(&app.db).await, distinct as i64);
    assert_spend_matches_purchases(&app.db).await;
    app.finish().await;
}

#[tokio::test]
async fn bad_lines_are_reported_by_line_number_and_good_ones_land() {
    let app = spawn_app(&[]).await;
    let mut content = b"\xEF\xBB\xBF".to_vec(); // a BOM, as some exporters write
    let lines: Vec<String> = vec![
        line("g-1", "p-1", "1.00", "USD"),                                               // 1
        "{\"transaction_id\": oops}".into(),                                             // 2 invalid JSON
        "".into(),                                                                       // 3 blank: skipped
        line("g-2", "p-1", "2.00", "USD").replace(",\"player_id\":\"p-1\"", ""),         // 4 missing field
        line("g-3", "p-1", "3.00", "USD").replace("2026-11-01T10:00:00Z", "01/11/2026"), // 5 bad timestamp
        line("g-4", "p-1", "-3.00", "USD"),                                              // 6 negative price
        line("g-5", "p-1", "\"free\"", "USD"),                                           // 7 non-numeric price
        line("g-6", "p-1", "1.00", "USD").replace("steam", "dreamcast"),                 // 8 unknown platform
        format!("{}\r", line("g-7", "p-2", "7.00", "USD")),                              // 9 CRLF: fine
        format!("{{\"pad\":\"{}\"}}", "x".repeat(20_000)),                               // 10 over the line bound
        line("g-8", "p-2", "8.00", "GBP").replace('}', ",\"region\":\"EU\"}"),           // 11 extra field: kept
        "[1,2,3]".into(),                                                                // 12 not an object
    ];
    content.extend_from_slice(lines.join("\n").as_bytes());
    content.extend_from_slice(b"\n");
    content.extend_from_slice(line("g-9", "p-3", "9.00", "USD").as_bytes()); // 13, no final newline

    let reply = upload(&app, &content).await;
    assert_eq!(counts(&reply), [4, 0, 0, 8, 12]);
    let reported: Vec<(u64, String)> = reply.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["code"].as_str().unwrap().to_owned()))
        .collect();
    let expected = [
        (2, "INVALID_JSON"),
        (4, "MISSING_FIELD"),
        (5, "INVALID_TIMESTAMP"),
        (6, "NEGATIVE_PRICE"),
        (7, "INVALID_PRICE"),
        (8, "UNKNOWN_PLATFORM"),
        (10, "LINE_TOO_LONG"),
        (12, "NOT_AN_OBJECT"),
    ]
    .map(|(l, c)| (l, c.to_owned()));
    assert_eq!(reported, expected);
    assert!(
        reply.body["errors"][1]["message"]
            .as_str()
            .unwrap()
            .contains("player_id")
    );
    assert_eq!(reply.body["errors_truncated"], false);

    let landed: Vec<String> = sqlx::query_scalar("SELECT transaction_id FROM platform_purchases ORDER BY 1")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(landed, ["g-1", "g-7", "g-8", "g-9"]);
    let extras: Value = sqlx::query_scalar("SELECT extras::text FROM platform_purchases WHERE transaction_id = 'g-8'")
        .fetch_one(&app.db)
        .await
        .map(|text: String| serde_json::from_str(&text).unwrap())
        .unwrap();
    assert_eq!(extras, json!({"region": "EU"}));
    app.finish().await;
}

#[tokio::test]
async fn the_error_list_is_capped_but_the_counts_stay_exact() {
    let app = spawn_app(&[]).await;
    let mut lines: Vec<String> = (0..150).map(|i| format!("not json {i}")).collect();
    lines.push(line("ok-1", "p-1", "1.00", "USD"));
    let reply = upload(&app, &file(&lines)).await;
    assert_eq!(counts(&reply), [1, 0, 0, 150, 151]);
    assert_eq!(reply.body["errors"].as_array().unwrap().len(), 100);
    assert_eq!(reply.body["errors_truncated"], true);
    app.finish().await;
}

#[tokio::test]
async fn bad_uploads_get_a_clear_4xx() {
    let app = spawn_app(&[("STAMPEDE_INGEST_MAX_BYTES", "4000")]).await;
    let multipart_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let good = file(&[line("x-1", "p-1", "1.00", "USD")]);

    let cases: Vec<(&str, String, Vec<u8>, StatusCode, &str)> = vec![
        (
            "not multipart",
            "application/x-ndjson".into(),
            good.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "NOT_MULTIPART",
        ),
        (
            "multipart without a boundary",
            "multipart/form-data".into(),
            good.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "NOT_MULTIPART",
        ),
        (
            "no file field",
            multipart_type.clone(),
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--{BOUNDARY}--\r\n")
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            "MISSING_FILE_FIELD",
        ),
        (
            "empty file",
            multipart_type.clone(),
            multipart(b"", "application/x-ndjson", &[]),
            StatusCode::BAD_REQUEST,
            "EMPTY_FILE",
        ),
        (
            "only blank lines",
            multipart_type.clone(),
            multipart(b"\n\r\n  \n", "application/x-ndjson", &[]),
            StatusCode::BAD_REQUEST,
            "EMPTY_FILE",
        ),
        (
            "an image",
            multipart_type.clone(),
            multipart(&good, "image/png", &[]),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_FILE_TYPE",
        ),
        (
            "over the size bound",
            multipart_type.clone(),
            multipart(&good.repeat(40), "application/x-ndjson", &[]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "UPLOAD_TOO_LARGE",
        ),
        (
            "garbage instead of multipart",
            multipart_type.clone(),
            b"this is not multipart at all".to_vec(),
            StatusCode::BAD_REQUEST,
            "MALFORMED_MULTIPART",
        ),
        (
            "cut short before the closing boundary",
            multipart_type.clone(),
            multipart(&good, "application/x-ndjson", &[])[..good.len() + 100].to_vec(),
            StatusCode::BAD_REQUEST,
            "UPLOAD_INTERRUPTED",
        ),
    ];
    for (name, content_type, body, status, code) in cases {
        let reply = post_body(&app, &content_type, body).await;
        assert_eq!(
            (reply.status, reply.error_code()),
            (status, code),
            "{name}: {}",
            reply.body
        );
        assert!(
            reply.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}"
        );
    }
    // Text fields beside the file are fine, and curl's octet-stream passes.
    let with_note = post_body(
        &app,
        &multipart_type,
        multipart(&good, "application/octet-stream", &[("source", "steam")]),
    )
    .await;
    assert_eq!(counts(&with_note), [1, 0, 0, 0, 1]);

    // Over the bound without a declared length: cut off while streaming.
    let big = multipart(&good.repeat(40), "application/x-ndjson", &[]);
    let (status, body) = raw_upload(app.addr, &big, None, true).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("UPLOAD_TOO_LARGE"), "{body}");
    assert_eq!(rows(&app.db).await, 1, "nothing from the refused uploads landed");
    app.finish().await;
}

/// Sends an upload over a raw connection, chunked when `declared` is None.
/// With `read_reply`, returns the status and body; otherwise closes the
/// connection right after the last byte (a client that goes away).
async fn raw_upload(addr: SocketAddr, body: &[u8], declared: Option<usize>, read_reply: bool) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    let length = match declared {
        Some(n) => format!("Content-Length: {n}\r\n"),
        None => "Transfer-Encoding: chunked\r\n".into(),
    };
    let head = format!(
        "POST /ingest HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n{}{length}Connection: close\r\n\r\n",
        auth_line()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    for chunk in body.chunks(1024) {
        let sent = if declared.is_some() {
            stream.write_all(chunk).await
        } else {
            let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
            stream.write_all(&framed).await
        };
        if sent.is_err() {
            break; // the engine refused and closed: read its answer
        }
    }
    if declared.is_none() {
        let _ = stream.write_all(b"0\r\n\r\n").await;
    }
    if !read_reply {
        return (0, String::new());
    }
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut reply)).await;
    let text = String::from_utf8_lossy(&reply).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn a_client_that_disconnects_mid_upload_leaves_no_half_written_batch() {
    let batch_rows = 100;
    let app = spawn_app(&[("STAMPEDE_INGEST_BATCH_ROWS", "100"), ("STAMPEDE_INGEST_WRITERS", "2")]).await;
    let lines: Vec<String> = (0..10_000)
        .map(|i| line(&format!("d-{i:05}"), &format!("p-{}", i % 37), "1.25", "EUR"))
        .collect();
    let whole = multipart(&file(&lines), "application/x-ndjson", &[]);
    // Send the first 1,050 lines and the framing before them, announce the
    // whole length, then hang up.
    let sent_lines = 1_050;
    let cut = whole.len() - file(&lines[sent_lines..]).len() - format!("\r\n--{BOUNDARY}--\r\n").len();
    let partial = &whole[..cut];
    raw_upload(app.addr, partial, Some(whole.len()), false).await;

    // Wait until the engine has finished whatever it was committing.
    let mut last = -1;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = rows(&app.db).await;
        if now == last || Instant::now() > deadline {
            break;
        }
        last = now;
    }
    let landed: Vec<String> = sqlx::query_scalar("SELECT transaction_id FROM platform_purchases")
        .fetch_all(&app.db)
        .await
        .unwrap();
    eprintln!("{} of {sent_lines} sent lines landed before the hang-up", landed.len());
    assert!(
        landed.len().is_multiple_of(batch_rows),
        "{} rows: a batch was half written",
        landed.len()
    );
    assert!(landed.len() < sent_lines, "the unfinished last batch was committed");
    let sent: HashSet<String> = (0..sent_lines).map(|i| format!("d-{i:05}")).collect();
    assert!(
        landed.iter().all(|id| sent.contains(id)),
        "a row that was never sent landed"
    );
    assert_spend_matches_purchases(&app.db).await;

    // Re-sending the whole file completes it, and only the rest is new.
    let reply = upload(&app, &file(&lines)).await;
    assert_eq!(counts(&reply)[0], 10_000 - landed.len() as u64);
    assert_eq!(rows(&app.db).await, 10_000);
    app.finish().await;
}

#[tokio::test]
async fn racing_uploads_of_the_same_rows_count_each_row_once() {
    let app = spawn_app(&[("STAMPEDE_INGEST_BATCH_ROWS", "250")]).await;
    let (content, redeliveries) = generated_file(4_000, 23);
    let distinct = 4_000 - redeliveries;
    let (a, b) = tokio::join!(upload(&app, &content), upload(&app, &content));
    let (a, b) = (counts(&a), counts(&b));
    assert_eq!(
        a[0] + b[0],
        distinct,
        "each id is created by exactly one upload: {a:?} {b:?}"
    );
    assert_eq!(a[1] + b[1], 0, "same content: nothing to update");
    assert_eq!(a[2] + b[2], 8_000 - distinct);
    assert_eq!(rows(&app.db).await, distinct as i64);
    assert_spend_matches_purchases(&app.db).await;
    app.finish().await;
}

#[tokio::test]
async fn player_lookups_validate_the_id() {
    let app = spawn_app(&[]).await;
    upload(&app, &file(&[line("s-1", "space player", "5.00", "USD")])).await;
    let found = app.get("/players/space%20player").await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.body);
    assert_eq!(found.body["player_id"], "space player");
    let too_long = app.get(&format!("/players/{}", "x".repeat(200))).await;
    assert_eq!(
        (too_long.status, too_long.error_code()),
        (StatusCode::BAD_REQUEST, "INVALID_PLAYER_ID")
    );
    let wrong_method = app.post("/players/p-1").await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    app.finish().await;
}

#[tokio::test]
async fn a_stalled_upload_is_abandoned_with_408() {
    let app = spawn_app(&[("STAMPEDE_INGEST_IDLE_TIMEOUT_MS", "300")]).await;
    let whole = multipart(&file(&[line("s-1", "p-1", "1.00", "USD")]), "application/x-ndjson", &[]);
    let mut stream = start_raw_upload(app.addr, whole.len()).await;
    stream.write_all(&whole[..whole.len() / 2]).await.unwrap();
    // ... and nothing more, while keeping the connection open.
    let mut reply = Vec::new();
    let started = Instant::now();
    let _ = tokio::time::timeout(scaled(Duration::from_secs(10)), stream.read_to_end(&mut reply)).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("UPLOAD_STALLED"), "{text}");
    assert!(
        started.elapsed() < scaled(Duration::from_secs(5)),
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!(rows(&app.db).await, 0);
    app.finish().await;
}

#[tokio::test]
async fn a_third_concurrent_upload_is_told_to_retry() {
    let app = spawn_app(&[]).await;
    let whole = multipart(&file(&[line("b-1", "p-1", "1.00", "USD")]), "application/x-ndjson", &[]);
    // Two uploads that started and are still sending hold both slots.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut stream = start_raw_upload(app.addr, whole.len()).await;
        stream.write_all(&whole[..10]).await.unwrap();
        holders.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = upload(&app, &file(&[line("b-2", "p-1", "1.00", "USD")])).await;
    assert_eq!(
        (third.status, third.error_code()),
        (StatusCode::TOO_MANY_REQUESTS, "INGEST_BUSY")
    );
    drop(holders);
    // The slots come back once those clients are gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let retry = upload(&app, &file(&[line("b-2", "p-1", "1.00", "USD")])).await;
        if retry.status == StatusCode::OK || Instant::now() > deadline {
            assert_eq!(counts(&retry), [1, 0, 0, 0, 1]);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.finish().await;
}

#[tokio::test]
async fn a_stuck_postgres_gives_503_not_a_hang() {
    let app = spawn_app(&[]).await;
    // Another session holds the table: every write waits for the lock.
    let mut blocker = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE platform_purchases IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let started = Instant::now();
    let reply = upload(&app, &file(&[line("l-1", "p-1", "1.00", "USD")])).await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (StatusCode::SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE")
    );
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("0 lines were committed"),
        "{}",
        reply.body
    );
    // Bounded by the lock/statement timeout, not by the blocker.
    assert!(
        started.elapsed() < scaled(Duration::from_secs(25)),
        "took {:?}",
        started.elapsed()
    );
    blocker.rollback().await.unwrap();
    let retry = upload(&app, &file(&[line("l-1", "p-1", "1.00", "USD")])).await;
    assert_eq!(counts(&retry), [1, 0, 0, 0, 1]);
    app.finish().await;
}

#[tokio::test]
async fn extras_and_names_survive_the_bulk_copy_verbatim() {
    // Enough rows that the batch takes the COPY path, with every character
    // COPY's text format treats specially.
    let app = spawn_app(&[]).await;
    let tricky = "{\"note\":\"tab\\there, back\\\\slash, new\\nline\",\t\"nested\":\r{\"n\": [1, 2.50, null]}}";
    let lines: Vec<String> = (0..200)
        .map(|i| {
            line(&format!("c-{i:03}"), "p-1", "1.00", "USD")
                .replace("Frozen Citadel", "Frozen \\\\ Citadel")
                .replace('}', &format!(",\"meta\":{tricky}}}"))
        })
        .collect();
    let reply = upload(&app, &file(&lines)).await;
    assert_eq!(counts(&reply), [200, 0, 0, 0, 200]);
    let (name, extras): (String, String) =
        sqlx::query_as("SELECT item_name, extras::text FROM platform_purchases WHERE transaction_id = 'c-123'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(name, "Frozen \\ Citadel");
    let extras: Value = serde_json::from_str(&extras).unwrap();
    assert_eq!(
        extras,
        json!({"meta": {"note": "tab\there, back\\slash, new\nline", "nested": {"n": [1, 2.50, null]}}})
    );
    // Sent again, identical: the stored JSONB compares equal.
    let again = upload(&app, &file(&lines)).await;
    assert_eq!(counts(&again), [0, 0, 200, 0, 200]);
    app.finish().await;
}
