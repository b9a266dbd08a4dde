//! A flood at five times what the engine serves: its capacity is measured
//! first (a short closed-loop run), then checkouts are sent open-loop at 5×
//! that rate, each when it is due whether or not earlier ones were answered
//! (as independent clients would). With a small `STAMPEDE_QUEUE_DEADLINE_MS`
//! the engine serves what it can with a bounded latency and sheds the rest
//! at once with 503 and `Retry-After`; its memory stays bounded.
//!
//! On 2 shared cores a driver cannot offer five times what an engine serves
//! when the CPU bounds both (measured: it reached 1.0–2.2×). So here Redis
//! bounds the engine, as it bounds a flash sale: the link to it is slow (the
//! proxy adds 50 ms each way) and each queue has one call of at most 256
//! requests in flight, so the checkouts decided per second are bounded by
//! the link, whatever the CPU. The queue deadline, 150 ms, is a round trip
//! and a half. (`loadtest/run.sh faults` floods a CPU-bound engine, for a
//! driver on a machine of its own.)
//!
//! A request's latency counts from when the driver got to it (a wait for a
//! free slot included, which the engine's slowness would cause); how late
//! the driver itself was, and the rate it reached, are printed apart.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use tokio::sync::Semaphore;

use super::proxy::Proxy;
use super::{MACHINE, quantile_ms};
use crate::helpers::{
    EngineProcess, HttpClient, PrivateRedis, create_database, database_url, drop_database, http_client, scaled, send,
    unique_name,
};

const QUEUE_DEADLINE_MS: &str = "150";
const REDIS_LINK_LATENCY: Duration = Duration::from_millis(50);
/// The flood's rate, in multiples of the measured capacity.
const FLOOD_FACTOR: f64 = 5.0;
const FLOOD_FOR: Duration = Duration::from_secs(3);
const CAPACITY_RUN: Duration = Duration::from_secs(2);
/// Checkouts of the unloaded reference, one after another.
const UNLOADED_REQUESTS: usize = 30;
/// Enough clients to fill the 256-request batches every round trip.
const CAPACITY_CLIENTS: usize = 1536;
/// Requests in flight at once at most (each on its own connection): what
/// a few thousand impatient clients would hold, above what 5× the capacity
/// times the admitted latency needs.
const OUTSTANDING_MAX: usize = 4000;
/// Generous sanity bounds; the figures are printed.
const ADMITTED_P99_MAX: Duration = Duration::from_secs(2);
const SHED_P99_MAX: Duration = Duration::from_secs(2);
const PEAK_RSS_MAX_KIB: u64 = 512 * 1024;

/// One checkout, each with a user and item of its own.
#[derive(Debug)]
struct Answer {
    status: Option<StatusCode>,
    code: String,
    retry_after: bool,
    latency: Duration,
    answered_at: Instant,
}

async fn checkout(http: &HttpClient, addr: std::net::SocketAddr, n: u64, since: Instant) -> Answer {
    let path = format!("/checkout?user_id=fl{}&id={}", n / 900, n % 1_000_000 + 1);
    match send(http, addr, Method::POST, &path, None).await {
        Ok(reply) => Answer {
            status: Some(reply.status),
            code: reply.error_code().to_owned(),
            retry_after: reply.headers.contains_key("retry-after"),
            latency: since.elapsed(),
            answered_at: Instant::now(),
        },
        Err(e) => Answer {
            status: None,
            code: e,
            retry_after: false,
            latency: since.elapsed(),
            answered_at: Instant::now(),
        },
    }
}

fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("engine status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("memory field")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_at_five_times_capacity_is_shed_fast_with_bounded_memory() {
    let _machine = MACHINE.lock().await;
    let started = Instant::now();
    let redis = PrivateRedis::fresh("faults-flood", &[]);
    let proxy = Proxy::start(redis.addr()).await;
    let url = proxy.redis_url();
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    let engine = EngineProcess::start(
        &db_url,
        &name,
        "",
        &[
            ("REDIS_URL", url.as_str()),
            ("STAMPEDE_QUEUE_DEADLINE_MS", QUEUE_DEADLINE_MS),
            ("STAMPEDE_SCRIPT_INFLIGHT", "1"),
            ("ITEMS_PER_SALE", "1000000"),
            ("PER_USER_LIMIT", "1000000"),
        ],
    )
    .await;
    let addr = engine.addr;
    let next = Arc::new(AtomicU64::new(0));
    let http = http_client();

    proxy.set_latency(REDIS_LINK_LATENCY);

    // Unloaded: one client, one request at a time. (With one call in flight
    // and a 100 ms round trip, several clients at once would queue behind
    // each other's calls for most of the 150 ms deadline: a load, not the
    // unloaded reference, and shed by design when the machine stalls.)
    let mut unloaded = Vec::new();
    for _ in 0..UNLOADED_REQUESTS {
        let answer = checkout(&http, addr, next.fetch_add(1, Ordering::SeqCst), Instant::now()).await;
        assert_eq!(answer.status, Some(StatusCode::OK), "unloaded checkout: {answer:?}");
        unloaded.push(answer.latency);
    }
    let unloaded_p99 = quantile_ms(&mut unloaded, 0.99);

    // Capacity: a closed loop of enough clients.
    let capacity_started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CAPACITY_CLIENTS {
        let (http, next) = (http.clone(), next.clone());
        clients.push(tokio::spawn(async move {
            let mut served = 0u64;
            while capacity_started.elapsed() < CAPACITY_RUN {
                let answer = checkout(&http, addr, next.fetch_add(1, Ordering::SeqCst), Instant::now()).await;
                served += u64::from(answer.status == Some(StatusCode::OK));
            }
            served
        }));
    }
    let mut served = 0;
    for client in clients {
        served += client.await.expect("capacity client");
    }
    let capacity = served as f64 / capacity_started.elapsed().as_secs_f64();
    let rss_before = memory_kib(engine.pid(), "VmRSS:");

    // The flood: request i is due at i / rate, sent then whatever happened
    // to the ones before.
    let rate = capacity * FLOOD_FACTOR;
    let total = (rate * FLOOD_FOR.as_secs_f64()) as u64;
    let outstanding = Arc::new(Semaphore::new(OUTSTANDING_MAX));
    let flood_started = Instant::now();
    let flood_ends = flood_started + FLOOD_FOR;
    let mut sent = Vec::with_capacity(total as usize);
    let (mut late, mut full) = (0u64, 0u64);
    for i in 0..total {
        let due = flood_started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let reached = Instant::now();
        // A driver that cannot keep up stops on time rather than late.
        if reached > flood_ends {
            break;
        }
        if reached.duration_since(due) > Duration::from_millis(100) {
            late += 1;
        }
        if outstanding.available_permits() == 0 {
            full += 1;
        }
        let permit = outstanding.clone().acquire_owned().await.expect("semaphore");
        let (http, n) = (http.clone(), next.fetch_add(1, Ordering::SeqCst));
        sent.push(tokio::spawn(async move {
            let answer = checkout(&http, addr, n, reached).await;
            drop(permit);
            answer
        }));
    }
    let sending = flood_started.elapsed();
    let total = sent.len() as u64;
    let mut answers = Vec::with_capacity(sent.len());
    for request in sent {
        answers.push(request.await.expect("flood request"));
    }
    let peak_rss = memory_kib(engine.pid(), "VmHWM:");

    let mut admitted: Vec<Duration> = answers
        .iter()
        .filter(|a| a.status == Some(StatusCode::OK))
        .map(|a| a.latency)
        .collect();
    let shed: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == Some(StatusCode::SERVICE_UNAVAILABLE))
        .collect();
    let mut shed_latency: Vec<Duration> = shed.iter().map(|a| a.latency).collect();
    let without_retry_after = shed.iter().filter(|a| !a.retry_after).count();
    // How soon an overloaded engine starts telling clients to come back.
    let first_shed_ms = shed
        .iter()
        .map(|a| a.answered_at.saturating_duration_since(flood_started).as_secs_f64() * 1000.0)
        .fold(f64::INFINITY, f64::min);
    let mut others: std::collections::BTreeMap<String, u64> = Default::default();
    for a in &answers {
        if a.status != Some(StatusCode::OK) {
            let key = match a.status {
                Some(status) => format!("{} {}", status.as_u16(), a.code),
                None => format!("no answer: {}", a.code),
            };
            *others.entry(key).or_default() += 1;
        }
    }
    let admitted_p99 = quantile_ms(&mut admitted, 0.99);
    let admitted_p50 = quantile_ms(&mut admitted, 0.5);
    let (shed_p50, shed_p99, shed_max) = (
        quantile_ms(&mut shed_latency, 0.5),
        quantile_ms(&mut shed_latency, 0.99),
        quantile_ms(&mut shed_latency, 1.0),
    );
    println!(
        "faults::flood: Redis link +{} ms each way; capacity {capacity:.0} checkouts/s ({CAPACITY_CLIENTS} clients, closed loop), unloaded p99 \
         {unloaded_p99:.1} ms; flood at {rate:.0}/s for {:.1} s: {total} sent in {:.1} s ({:.0}/s, {:.1}x capacity; \
         the driver reached {late} over 100 ms late, {full} found {OUTSTANDING_MAX} in flight), {} admitted (p50 \
         {admitted_p50:.1} ms, p99 {admitted_p99:.1} ms), {} shed (p50 {shed_p50:.1} ms, p99 {shed_p99:.1} ms, max \
         {shed_max:.1} ms); answers other than 200: {others:?}",
        REDIS_LINK_LATENCY.as_millis(),
        FLOOD_FOR.as_secs_f64(),
        sending.as_secs_f64(),
        total as f64 / sending.as_secs_f64(),
        total as f64 / sending.as_secs_f64() / capacity,
        admitted.len(),
        shed.len(),
    );
    println!(
        "faults::flood: first 503 {first_shed_ms:.1} ms after the flood began; engine RSS {:.1} MiB before the flood, \
         peak {:.1} MiB (VmHWM); case took {:.1} s",
        rss_before as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        started.elapsed().as_secs_f64()
    );
    drop(engine);
    drop_database(&database_url(), &name).await;
    drop(proxy);
    drop(redis);

    assert!(!admitted.is_empty(), "nothing was served during the flood");
    assert!(!shed.is_empty(), "nothing was shed at {FLOOD_FACTOR}× capacity");
    assert_eq!(
        others.keys().filter(|k| !k.starts_with("503 ")).count(),
        0,
        "answers other than 200 and 503: {others:?}"
    );
    assert_eq!(without_retry_after, 0, "503s without Retry-After");
    assert!(
        admitted_p99 < scaled(ADMITTED_P99_MAX).as_secs_f64() * 1000.0,
        "admitted p99 {admitted_p99:.1} ms (unloaded {unloaded_p99:.1} ms)"
    );
    assert!(
        shed_p99 < scaled(SHED_P99_MAX).as_secs_f64() * 1000.0,
        "shed requests waited p99 {shed_p99:.1} ms for their 503"
    );
    assert!(peak_rss < PEAK_RSS_MAX_KIB, "peak RSS {peak_rss} KiB");
}
