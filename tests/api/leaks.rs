//! Nothing a client does holds the engine's resources past its bounds: event
//! streams free their slot as soon as their client leaves (whatever the
//! stream was doing) or once Redis has failed them a bounded number of
//! times; resume ids Redis would refuse never reach it; and an upload's
//! multipart preamble and part header blocks are refused past their bound
//! without being buffered or scanned to the end.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::json;
use stampede::ingest::limits::{INGEST_MULTIPART_PREAMBLE_BYTES_MAX, INGEST_PART_HEADER_BYTES_MAX};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    EngineProcess, PrivateRedis, auth_line, create_database, database_url, delete_keys, drop_database, free_port,
    http_client, redis_client, scaled, send, spawn_app, unique_name,
};

/// An event stream on a raw connection, so the test decides exactly when
/// the client goes away (dropping it closes the socket).
struct RawStream {
    stream: TcpStream,
    received: Vec<u8>,
}

/// What opening an event stream gave: the stream, or a refusal's status
/// line and body.
enum Opened {
    Streaming(RawStream),
    Refused(String),
}

impl RawStream {
    /// `GET path` with optional `Last-Event-ID`; returns once the first
    /// frame (the `: connected` comment) has arrived, or with the refusal.
    async fn open(addr: SocketAddr, path: &str, last_event_id: Option<&str>) -> Opened {
        Self::open_with(addr, path, last_event_id, true).await
    }

    /// As `open`; without `first_frame`, returns as soon as the 200 head
    /// arrived.
    async fn open_with(addr: SocketAddr, path: &str, last_event_id: Option<&str>, first_frame: bool) -> Opened {
        let mut stream = TcpStream::connect(addr).await.expect("connects");
        let resume = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        let auth = auth_line();
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n{resume}{auth}Connection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("request");
        let mut raw = RawStream {
            stream,
            received: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = String::from_utf8_lossy(&raw.received).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                if !head.starts_with("HTTP/1.1 200") {
                    // A refusal: read its (small) body to the end.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), raw.stream.read_to_end(&mut raw.received)).await;
                    return Opened::Refused(String::from_utf8_lossy(&raw.received).into_owned());
                }
                if !first_frame || body.contains("\n\n") {
                    return Opened::Streaming(raw);
                }
            }
            assert!(Instant::now() < deadline, "no answer to {path}: {text:?}");
            raw.read_some(deadline).await;
        }
    }

    /// Reads what arrives until `deadline`; false once the engine closed
    /// the stream.
    async fn read_some(&mut self, deadline: Instant) -> bool {
        let mut buffer = [0u8; 4096];
        match tokio::time::timeout_at(deadline.into(), self.stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.received.extend_from_slice(&buffer[..n]);
                true
            }
            Err(_) => true,
        }
    }

    /// Waits for the engine to end the stream (a chunked body's last chunk,
    /// or the connection closed); the time it took, or None by `within`.
    async fn wait_end(&mut self, within: Duration) -> Option<Duration> {
        let started = Instant::now();
        let deadline = started + within;
        while Instant::now() < deadline {
            if self.received.ends_with(b"\r\n0\r\n\r\n") || !self.read_some(deadline).await {
                return Some(started.elapsed());
            }
        }
        None
    }
}

/// Opens `path` until it is admitted (its slot is free again); the time
/// that took. Fails after `within`.
async fn wait_admitted(
    addr: SocketAddr,
    path: &str,
    last_event_id: Option<&str>,
    within: Duration,
) -> (RawStream, Duration) {
    let started = Instant::now();
    loop {
        match RawStream::open(addr, path, last_event_id).await {
            Opened::Streaming(stream) => return (stream, started.elapsed()),
            Opened::Refused(reply) => {
                assert!(reply.contains("STREAMS_FULL"), "{path}: {reply}");
                assert!(
                    started.elapsed() < within,
                    "{path}: no slot came back within {within:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Resume ids that are no event id, or one Redis would refuse (a part past
/// 2^64 - 1): refused with 400 before any slot or Redis is involved.
const REFUSED_IDS: &[&str] = &[
    "99999999999999999999-0",
    "0-99999999999999999999",
    "18446744073709551616-0",
    "0-18446744073709551616",
    "99999999999999999999-99999999999999999999",
    "18446744073709551616",
    "-1-0",
    "1--1",
    "+1-0",
    "1-0-0",
    "1.5-0",
    "0x10-0",
];

/// Ids Redis accepts but that lie at the edge: the largest of all (no
/// exclusive range can start after it), and the largest milliseconds.
const EDGE_IDS: &[&str] = &[
    "18446744073709551615-18446744073709551615",
    "18446744073709551615-0",
    "0-18446744073709551615",
];

/// The engine's `stampede_wallet_sse_streams` gauge.
async fn open_streams_gauge(addr: SocketAddr) -> f64 {
    let http = http_client();
    let request = hyper::Request::get(format!("http://{addr}/metrics"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let response = http.request(request).await.expect("metrics");
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("metrics body")
        .to_bytes();
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|line| line.strip_prefix("stampede_wallet_sse_streams "))
        .and_then(|value| value.trim().parse().ok())
        .expect("gauge present")
}

/// How many connections the Redis on `port` holds (this probe's included).
fn redis_connections(port: u16) -> usize {
    use std::io::{Read, Write};
    let mut probe = std::net::TcpStream::connect(("127.0.0.1", port)).expect("private redis");
    probe.write_all(b"CLIENT LIST\r\nQUIT\r\n").expect("CLIENT LIST");
    let mut reply = String::new();
    let _ = probe.read_to_string(&mut reply);
    reply.lines().filter(|line| line.contains(" addr=")).count()
}

/// Out-of-range `Last-Event-ID`s never hold a slot: the engine (a process
/// of its own, so its gauge is its own) with room for two streams refuses
/// them with 400, and streams opened and dropped at the edge ids leave the
/// gauge at 0 and new streams admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_resume_ids_hold_no_stream_slot() {
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    let engine = EngineProcess::start(&db_url, &name, "", &[("STAMPEDE_SSE_STREAMS_MAX", "2")]).await;
    for round in 0..5 {
        for id in REFUSED_IDS {
            match RawStream::open(engine.addr, "/wallet/p1/events", Some(id)).await {
                Opened::Refused(reply) => {
                    assert!(reply.starts_with("HTTP/1.1 400"), "round {round}, {id}: {reply}");
                    assert!(reply.contains("INVALID_LAST_EVENT_ID"), "round {round}, {id}: {reply}");
                }
                Opened::Streaming(_) => panic!("round {round}: {id} was taken as a resume id"),
            }
        }
        for id in EDGE_IDS {
            // Both slots, then a third is refused: the bound still holds.
            let (first, _) = wait_admitted(engine.addr, "/wallet/p1/events", Some(id), Duration::from_secs(5)).await;
            let (second, _) = wait_admitted(engine.addr, "/wallet/p2/events", Some(id), Duration::from_secs(5)).await;
            match RawStream::open(engine.addr, "/wallet/p3/events", Some(id)).await {
                Opened::Refused(reply) => assert!(reply.contains("SSE_STREAMS_FULL"), "{reply}"),
                Opened::Streaming(_) => panic!("a third stream was admitted past the bound"),
            }
            drop((first, second));
        }
    }
    // Every stream above was dropped by its client: the gauge returns to 0.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = open_streams_gauge(engine.addr).await;
        if open == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} streams still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_again, waited) = wait_admitted(engine.addr, "/wallet/p1/events", None, Duration::from_secs(5)).await;
    println!("a new stream was admitted {waited:?} after the gauge read 0");
    drop(engine);
    drop_database(&database_url(), &name).await;
    let redis = redis_client().await;
    delete_keys(&redis, &name).await;
}

/// A client that leaves an idle stream (waiting on the fan-out, between
/// heartbeats) frees its slot at once: with room for one stream, the next
/// is admitted right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_an_idle_stream_frees_its_slot_at_once() {
    let app = spawn_app(&[("STAMPEDE_SSE_STREAMS_MAX", "1")]).await;
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let resume = if i % 2 == 0 { None } else { Some("0-0") };
        let (stream, _) = wait_admitted(app.addr, "/wallet/idle/events", resume, scaled(Duration::from_secs(5))).await;
        drop(stream);
        let (next, waited) =
            wait_admitted(app.addr, "/wallet/idle2/events", None, scaled(Duration::from_secs(5))).await;
        slowest = slowest.max(waited);
        drop(next);
    }
    println!("slowest slot release after an idle client left: {slowest:?}");
    assert!(slowest < scaled(Duration::from_secs(5)), "{slowest:?}");
    // The live page's streams, between their ticks.
    let waited = live_slots_come_back(app.addr).await;
    println!("64 live slots back {waited:?} after their clients left");
    assert!(waited < scaled(Duration::from_secs(2)), "{waited:?}");
    app.finish().await;
}

/// Takes all 64 `/live/events` slots (a 65th is refused), drops every
/// client, and waits until all 64 are admitted again; how long that took.
async fn live_slots_come_back(addr: SocketAddr) -> Duration {
    let mut live = Vec::new();
    for _ in 0..64 {
        match RawStream::open_with(addr, "/live/events", None, false).await {
            Opened::Streaming(stream) => live.push(stream),
            Opened::Refused(reply) => panic!("live stream refused: {reply}"),
        }
    }
    match RawStream::open_with(addr, "/live/events", None, false).await {
        Opened::Refused(reply) => assert!(reply.contains("LIVE_STREAMS_FULL"), "{reply}"),
        Opened::Streaming(_) => panic!("a 65th live stream was admitted"),
    }
    drop(live);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(20);
    let mut again = Vec::new();
    while again.len() < 64 {
        match RawStream::open_with(addr, "/live/events", None, false).await {
            Opened::Streaming(stream) => again.push(stream),
            Opened::Refused(reply) => {
                assert!(reply.contains("LIVE_STREAMS_FULL"), "{reply}");
                assert!(Instant::now() < deadline, "live slots did not come back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    started.elapsed()
}

/// With Redis away, a stream resuming from `Last-Event-ID` fails its reads
/// and retries (each read waits up to the command timeout): a client that
/// leaves meanwhile frees its slot at once, not when the retries run out;
/// one that stays sees the stream end after the bounded retries, and its
/// slot comes back too. The fan-out's waits on a dead Redis hold nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_away_streams_end_after_bounded_retries_and_free_their_slot() {
    let port = free_port();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("redis-sse-{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    let mut redis = PrivateRedis::start(port, &dir);
    let url = format!("redis://127.0.0.1:{port}");
    let app = spawn_app(&[("REDIS_URL", url.as_str()), ("STAMPEDE_SSE_STREAMS_MAX", "1")]).await;
    let deposit = json!({"player_id": "r1", "currency": "EUR", "type": "deposit", "amount_minor": 5,
                         "reference_id": "d1"})
    .to_string();
    let reply = send(
        &app.http,
        app.addr,
        Method::POST,
        "/wallet/transactions",
        Some(&deposit),
    )
    .await
    .expect("answer");
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    // Opened while Redis is up, so it starts from the player's last event.
    let (mut open_before, _) = wait_admitted(app.addr, "/wallet/r1/events", None, Duration::from_secs(5)).await;

    let connections_before = redis_connections(port);
    redis.crash();
    // The fan-out's failed read makes the stream read its player's stream,
    // which fails too: after the bounded retries, the engine ends it.
    let ended = open_before.wait_end(Duration::from_secs(30)).await;
    println!("a stream ended {ended:?} after Redis went away");
    assert!(ended.is_some(), "the stream outlived its bounded retries");

    // A client that leaves during the retries frees the slot at once.
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        let (resuming, _) = wait_admitted(app.addr, "/wallet/r1/events", Some("0-0"), Duration::from_secs(20)).await;
        drop(resuming);
        let (next, waited) = wait_admitted(app.addr, "/wallet/r1/events", Some("0-0"), Duration::from_secs(20)).await;
        slowest = slowest.max(waited);
        // This one stays: its retries run out and the engine ends it.
        let mut next = next;
        let ended = next.wait_end(Duration::from_secs(30)).await;
        println!(
            "with Redis away: slot back {waited:?} after the client left; a staying client's stream ended after {ended:?}"
        );
        assert!(ended.is_some(), "the stream outlived its bounded retries");
    }
    // Each read waits up to the 2 s command timeout and the retries take
    // three: a slot that came back well before is the client's leaving.
    assert!(
        slowest < scaled(Duration::from_secs(2)),
        "slot came back after {slowest:?}"
    );

    // The live page's streams too: their snapshots wait on Redis, and all
    // 64 clients leave while they do.
    let waited = live_slots_come_back(app.addr).await;
    println!("with Redis away: 64 live slots back {waited:?} after their clients left");
    assert!(waited < scaled(Duration::from_secs(2)), "{waited:?}");

    // Redis back: streams work again, through the same fan-out.
    let _restarted = PrivateRedis::start(port, &redis.dir);
    let deadline = Instant::now() + Duration::from_secs(30);
    let back = loop {
        assert!(Instant::now() < deadline, "no event after Redis came back");
        // While Redis loads its data, reads fail and the stream ends: reopen.
        let (mut stream, _) = wait_admitted(app.addr, "/wallet/r1/events", Some("0-0"), Duration::from_secs(20)).await;
        while stream.read_some(deadline).await && Instant::now() < deadline {
            if String::from_utf8_lossy(&stream.received).contains("event: balance") {
                break;
            }
        }
        if String::from_utf8_lossy(&stream.received).contains("event: balance") {
            break stream;
        }
    };
    // The engine's connections all came back, and no more: a fan-out
    // client replaced without being stopped would reconnect beside its
    // successor (as quickly: same reconnect policy).
    let deadline = Instant::now() + Duration::from_secs(20);
    while redis_connections(port) < connections_before {
        assert!(Instant::now() < deadline, "the engine did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deposit = json!({"player_id": "r1", "currency": "EUR", "type": "deposit", "amount_minor": 5,
                         "reference_id": "d2"})
    .to_string();
    let reply = send(
        &app.http,
        app.addr,
        Method::POST,
        "/wallet/transactions",
        Some(&deposit),
    )
    .await
    .expect("answer");
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let mut back = back;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&back.received).contains("\"reference_id\":\"d2\"") {
        assert!(
            back.read_some(deadline).await && Instant::now() < deadline,
            "no live event after the restart"
        );
    }
    let connections_after = redis_connections(port);
    println!("connections to Redis: {connections_before} before the outage, {connections_after} after");
    assert_eq!(
        connections_after, connections_before,
        "connections left behind by the outage"
    );
    drop(back);
    app.finish().await;
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

const BOUNDARY: &str = "leaks-test-boundary-5c1d";

/// A purchase line of the ingest format.
fn purchase_line(id: &str) -> String {
    format!(
        r#"{{"transaction_id":"{id}","player_id":"p-1","platform":"steam","item_id":"dlc-1","item_name":"Citadel","item_type":"dlc","price":1.00,"currency":"USD","purchased_at":"2026-11-01T10:00:00Z"}}"#
    )
}

/// The file part: its header block (with `extra` header lines) and body,
/// and the closing delimiter.
fn file_part(extra_headers: &str, content: &str) -> Vec<u8> {
    format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.ndjson\"\r\n{extra_headers}\
         Content-Type: application/x-ndjson\r\n\r\n{content}\n\r\n--{BOUNDARY}--\r\n"
    )
    .into_bytes()
}

/// The status line and body of the answer on `stream`, or None by `within`.
async fn read_answer(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|n| n.trim().parse::<usize>().ok());
            if length.is_some_and(|n| body.len() >= n) {
                return Some(text);
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (!received.is_empty()).then_some(text),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => return None,
        }
    }
}

/// Opens an upload whose body is `declared` bytes, sends `sent` of them
/// (`body`'s start) and withholds the rest; the answer, if any comes while
/// the client waits.
async fn partial_upload(addr: SocketAddr, body: &[u8], sent: usize) -> (Option<String>, Duration) {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    let head = format!(
        "POST /ingest HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         {}Content-Length: {}\r\n\r\n",
        auth_line(),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let started = Instant::now();
    stream.write_all(&body[..sent]).await.expect("first part of the body");
    let answer = read_answer(&mut stream, Duration::from_secs(10)).await;
    (answer, started.elapsed())
}

/// Sends all of `body` as fast as the engine takes it while reading; the
/// answer and how many bytes had been written when it came.
async fn whole_upload(addr: SocketAddr, body: Vec<u8>) -> (Option<String>, usize, Duration) {
    let stream = TcpStream::connect(addr).await.expect("connects");
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /ingest HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         {}Content-Length: {}\r\n\r\n",
        auth_line(),
        body.len()
    );
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = written.clone();
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await.expect("head");
        for chunk in body.chunks(16 * 1024) {
            if writer.write_all(chunk).await.is_err() {
                return; // refused and closed
            }
            counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::SeqCst);
        }
    });
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut received)).await;
    let at = written.load(std::sync::atomic::Ordering::SeqCst);
    let elapsed = started.elapsed();
    sender.abort();
    let text = String::from_utf8_lossy(&received).into_owned();
    ((!text.is_empty()).then_some(text), at, elapsed)
}

/// A megabyte before the first boundary, or in a part's header block, is
/// refused with 400 and its code as soon as the bound is passed: the
/// answer comes while the client still withholds the rest of its body, so
/// the engine neither waited for nor buffered it. Within the bounds, such
/// uploads are taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_multipart_preamble_or_part_header_block_is_refused_at_its_bound() {
    let app = spawn_app(&[]).await;
    let megabyte = 1 << 20;
    let mut preamble = "x".repeat(megabyte).into_bytes();
    preamble.extend_from_slice(b"\r\n");
    let long_preamble = [preamble, file_part("", &purchase_line("pre-1"))].concat();
    let long_header = file_part(&format!("X-Pad: {}\r\n", "h".repeat(megabyte)), &purchase_line("hdr-1"));
    let cases = [
        (
            "preamble",
            &long_preamble,
            INGEST_MULTIPART_PREAMBLE_BYTES_MAX,
            "MULTIPART_PREAMBLE_TOO_LARGE",
        ),
        (
            "part header block",
            &long_header,
            INGEST_PART_HEADER_BYTES_MAX,
            "PART_HEADERS_TOO_LARGE",
        ),
    ];
    for (what, body, bound, code) in cases {
        // A little past the bound, and nothing more.
        let sent = bound + 4 * 1024;
        let (answer, took) = partial_upload(app.addr, body, sent).await;
        let answer =
            answer.unwrap_or_else(|| panic!("{what}: no answer while {} bytes were withheld", body.len() - sent));
        println!(
            "{what}: answered after {took:?}, with {} of {} bytes sent",
            sent,
            body.len()
        );
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
        assert!(answer.contains(code), "{what}: {answer}");

        // Sent whole, as fast as the engine reads.
        let (answer, written, took) = whole_upload(app.addr, body.clone()).await;
        println!(
            "{what}: sent whole, answered after {took:?}, {written} of {} bytes written",
            body.len()
        );
        let answer = answer.unwrap_or_else(|| panic!("{what}: no answer"));
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
        assert!(answer.contains(code), "{what}: {answer}");
    }

    // Within the bounds: a preamble and a long header block are fine.
    let preamble = "This is a preamble; clients ignore it.\r\n".repeat(1000);
    let body = [
        preamble.into_bytes(),
        file_part(&format!("X-Pad: {}\r\n", "h".repeat(60 * 1024)), &purchase_line("ok-1")),
    ]
    .concat();
    let (status, reply) = post_multipart(&app, BOUNDARY, body).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert!(reply.contains("\"created\":1"), "{reply}");
    // A boundary longer than RFC 2046 allows (70) is refused up front.
    let long = "b".repeat(71);
    let (status, reply) = post_multipart(&app, &long, format!("--{long}--\r\n").into_bytes()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert!(reply.contains("MALFORMED_MULTIPART"), "{reply}");
    app.finish().await;
}

async fn post_multipart(app: &crate::helpers::TestApp, boundary: &str, body: Vec<u8>) -> (StatusCode, String) {
    let request = hyper::Request::post(app.url("/ingest"))
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .header("authorization", format!("Bearer {}", crate::helpers::test_keys().all))
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("request");
    let response = app.http.request(request).await.expect("answer");
    let status = response.status();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}
