//! Logs and metrics: tracing set-up, the Prometheus recorder, and the shared
//! metrics (HTTP, scripts and the executor, the flusher and the outbox,
//! connections, dependencies, dead letters, Redis's settings), each
//! registered at start (`register_metrics`). Each feature names its own
//! metrics in its `metrics.rs` and registers them through
//! `Feature::register_metrics`; the Grafana dashboard reads them all,
//! by name, so names are never changed lightly. Labels stay low-cardinality:
//! routes, statuses, outcomes; never user ids.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::thread::LocalKey;
use std::time::Duration;

use hyper::StatusCode;
use metrics::{Counter, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second call (tests build several apps) keeps the first subscriber.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

/// The process-wide Prometheus recorder, installed on first use. Rendered by
/// our own `/metrics` route: the exporter's listener is not used.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency_buckets = [
                // Streamed uploads take seconds to minutes; the rest, milliseconds.
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
            ];
            let rows_buckets = [1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 7000.0];
            let batch_buckets = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency_buckets)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("stampede_flush_batch_rows".into()), &rows_buckets)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("stampede_script_batch_requests".into()), &batch_buckets)
                });
            match builder {
                Ok(builder) => {
                    let recorder = builder.build_recorder();
                    let handle = recorder.handle();
                    // Fails only if another recorder is installed; then ours
                    // renders empty, which is visible at once on /metrics.
                    let _ = metrics::set_global_recorder(recorder);
                    handle
                }
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Whether Redis or Postgres answered the last probe (1) or not (0).
pub fn dependency_up(dependency: &'static str, up: bool) {
    gauge!("stampede_dependency_up", "dependency" => dependency).set(if up { 1.0 } else { 0.0 });
}

/// Every shared metric exists from the start, so a dashboard panel or an
/// alert reads 0 rather than "no data" before the first event: counters at
/// 0, gauges at 0 until their first reading (each is refreshed at most an
/// interval after start), histograms with every bucket, `_sum` and
/// `_count` at 0 (metrics-exporter-prometheus 0.18 renders a histogram as
/// soon as its handle is registered, recorded or not). The labelled ones
/// follow from what the wiring knows at start (`register_routes`,
/// `register_batch_scripts`); each feature registers its own
/// (`Feature::register_metrics`).
pub fn register_metrics() {
    for name in [
        "stampede_flush_errors_total",
        "stampede_flushed_events_total",
        "stampede_connections_rejected_total",
        "stampede_dead_letters_total",
        "stampede_redis_router_restarts_total",
    ] {
        counter!(name).increment(0);
    }
    for name in [
        "stampede_dead_letters_unresolved",
        "stampede_outbox_backlog",
        "stampede_connections_open",
    ] {
        gauge!(name).increment(0.0);
    }
    for name in ["stampede_flush_batch_rows", "stampede_flush_duration_seconds"] {
        let _ = histogram!(name);
    }
    // Read once connected, before the first request; named here too so
    // that every recorded metric has one place that registers it.
    for dependency in ["redis", "postgres"] {
        gauge!("stampede_dependency_up", "dependency" => dependency).increment(0.0);
    }
    gauge!("stampede_redis_appendonly").increment(0.0);
}

/// The request metrics of every route, at 0. The status is 413 because
/// every route can answer it (a declared body over the bound is refused
/// before the handler runs, and uploads bound their own), so the series is
/// one the route really has; `unknown`, the router's name for a request
/// that matched no route, starts with its 404.
pub fn register_routes(routes: impl IntoIterator<Item = &'static str>) {
    let too_large = status_label(StatusCode::PAYLOAD_TOO_LARGE);
    let series = routes
        .into_iter()
        .map(|route| (route, too_large))
        .chain([("unknown", status_label(StatusCode::NOT_FOUND))]);
    for (route, status) in series {
        counter!("stampede_http_requests_total", "route" => route, "status" => status).increment(0);
        let _ = histogram!("stampede_http_request_duration_seconds", "route" => route, "status" => status);
    }
    // Refusals read 0 rather than "no data" until the first one.
    counter!("stampede_http_requests_by_caller_total", "caller" => "refused", "status" => status_label(StatusCode::UNAUTHORIZED))
        .increment(0);
}

/// The executor's metrics of every batched script, at 0.
pub fn register_batch_scripts(scripts: impl IntoIterator<Item = &'static str>) {
    for script in scripts {
        let _ = histogram!("stampede_script_batch_requests", "script" => script);
        for reason in ["queue_full", "deadline"] {
            counter!("stampede_script_shed_total", "script" => script, "reason" => reason).increment(0);
        }
        counter!("stampede_redis_wait_failed_total", "script" => script).increment(0);
        for outcome in ["sent", "seen"] {
            counter!("stampede_redis_resends_total", "script" => script, "outcome" => outcome).increment(0);
        }
    }
}

/// A feature's script outcomes at 0 (`script_outcome` counts them).
pub fn register_script_outcomes(script: &'static str, outcomes: &[&'static str]) {
    for &outcome in outcomes {
        counter!("stampede_script_outcomes_total", "script" => script, "outcome" => outcome).increment(0);
    }
}

pub fn http_request(route: &'static str, status: StatusCode, elapsed: Duration) {
    let status = status_label(status);
    const TOTAL: &str = "stampede_http_requests_total";
    const DURATION: &str = "stampede_http_request_duration_seconds";
    with_counter(
        handle_key(TOTAL, route, status),
        || counter!(TOTAL, "route" => route, "status" => status),
        |c| c.increment(1),
    );
    with_histogram(
        handle_key(DURATION, route, status),
        || histogram!(DURATION, "route" => route, "status" => status),
        |h| h.record(elapsed.as_secs_f64()),
    );
}

/// The handles of the metrics every request or batch moves, kept per
/// thread and found by the addresses of their name and label values.
/// Finding a labelled metric in the registry (building its key, hashing
/// and comparing it) cost about 2% of the engine's CPU under load, three to
/// five times per request. Every label kept here is a `'static` value from
/// a fixed set (routes, statuses, scripts, outcomes, and the callers: the
/// service keys' names, new ones only when the keys are read again), so a
/// map holds at most their product.
type HandleKey = [usize; 6];

fn handle_key(name: &'static str, first: &'static str, second: &'static str) -> HandleKey {
    [
        name.as_ptr() as usize,
        name.len(),
        first.as_ptr() as usize,
        first.len(),
        second.as_ptr() as usize,
        second.len(),
    ]
}

thread_local! {
    static COUNTERS: RefCell<HashMap<HandleKey, Counter>> = RefCell::new(HashMap::new());
    static HISTOGRAMS: RefCell<HashMap<HandleKey, Histogram>> = RefCell::new(HashMap::new());
}

/// Applies `apply` to the handle `make` registers, kept in `handles`: made
/// once per thread. The recorder is installed before the first is made, so
/// no kept handle is one that records nothing.
fn with_handle<H: 'static>(
    handles: &'static LocalKey<RefCell<HashMap<HandleKey, H>>>,
    key: HandleKey,
    make: impl FnOnce() -> H,
    apply: impl FnOnce(&H),
) {
    let _ = handles.try_with(|cell| match cell.try_borrow_mut() {
        Ok(mut map) => apply(map.entry(key).or_insert_with(|| {
            metrics_handle();
            make()
        })),
        Err(_) => apply(&make()),
    });
}

fn with_counter(key: HandleKey, make: impl FnOnce() -> Counter, apply: impl FnOnce(&Counter)) {
    with_handle(&COUNTERS, key, make, apply);
}

fn with_histogram(key: HandleKey, make: impl FnOnce() -> Histogram, apply: impl FnOnce(&Histogram)) {
    with_handle(&HISTOGRAMS, key, make, apply);
}

/// Adds `by` to the counter `name` with one label, through a handle kept
/// per thread: for a feature's metric that moves with every request. Its
/// values must come from a fixed set, as every label's.
pub fn count_labelled(name: &'static str, label: &'static str, value: &'static str, by: u64) {
    with_counter(
        handle_key(name, label, value),
        || counter!(name, label => value),
        |c| c.increment(by),
    );
}

/// Adds `by` to the counter `name`, which has no labels, through a handle
/// kept per thread.
pub fn count(name: &'static str, by: u64) {
    with_counter(handle_key(name, "", ""), || counter!(name), |c| c.increment(by));
}

/// Requests by caller: a service key's name (keys are few, so the label
/// stays low-cardinality), `player`, `admin`, `none` (public routes, open
/// mode) or `refused` (no valid credential). Never a secret, a token or a
/// query string.
pub fn http_request_by_caller(caller: &'static str, status: StatusCode) {
    const NAME: &str = "stampede_http_requests_by_caller_total";
    let status = status_label(status);
    with_counter(
        handle_key(NAME, caller, status),
        || counter!(NAME, "caller" => caller, "status" => status),
        |c| c.increment(1),
    );
}

fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        201 => "201",
        202 => "202",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        410 => "410",
        413 => "413",
        414 => "414",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        503 => "503",
        _ => "other",
    }
}

/// Counts a script's outcome, as the feature decoded it (so the label set
/// is the feature's fixed set of outcomes).
pub fn script_outcome(script: &'static str, outcome: &'static str) {
    const NAME: &str = "stampede_script_outcomes_total";
    with_counter(
        handle_key(NAME, script, outcome),
        || counter!(NAME, "script" => script, "outcome" => outcome),
        |c| c.increment(1),
    );
}

/// A request shed before Redis: its queue was full (`queue_full`) or it
/// waited past the queue deadline (`deadline`).
pub fn script_shed(script: &'static str, reason: &'static str) {
    counter!("stampede_script_shed_total", "script" => script, "reason" => reason).increment(1);
}

/// Requests of a batch answered 503 because fewer replicas than
/// `STAMPEDE_REDIS_WAIT_REPLICAS` acknowledged its call in time.
pub fn redis_wait_failed(script: &'static str, requests: usize) {
    counter!("stampede_redis_wait_failed_total", "script" => script).increment(requests as u64);
}

/// A batch call sent again after fred failed it unknown (`sent`), and the
/// resends that found the first sending had run (`seen`: 503 as before).
pub fn redis_resent(script: &'static str, outcome: &'static str) {
    counter!("stampede_redis_resends_total", "script" => script, "outcome" => outcome).increment(1);
}

/// A Redis client's routing task ended by an error and was started again.
pub fn redis_router_restarted() {
    counter!("stampede_redis_router_restarts_total").increment(1);
}

/// A connection turned away at the connection bound with a canned 503.
pub fn connection_rejected() {
    counter!("stampede_connections_rejected_total").increment(1);
}

/// Redis's append-only file as read at start: 1 on, 0 off, -1 unknown
/// (`CONFIG` disabled, or the checks switched off).
pub fn redis_appendonly(state: f64) {
    gauge!("stampede_redis_appendonly").set(state);
}

/// Requests one batched script call carried.
pub fn script_batch(script: &'static str, requests: usize) {
    histogram!("stampede_script_batch_requests", "script" => script).record(requests as f64);
}

pub fn flushed(rows: usize, elapsed: Duration) {
    counter!("stampede_flushed_events_total").increment(rows as u64);
    histogram!("stampede_flush_batch_rows").record(rows as f64);
    histogram!("stampede_flush_duration_seconds").record(elapsed.as_secs_f64());
}

pub fn flush_failed() {
    counter!("stampede_flush_errors_total").increment(1);
}

/// Outbox events set aside as dead letters by this engine.
pub fn dead_lettered(events: usize) {
    counter!("stampede_dead_letters_total").increment(events as u64);
}

/// Dead letters not yet resolved, over every engine (counted in Postgres).
pub fn dead_letters_unresolved(count: i64) {
    gauge!("stampede_dead_letters_unresolved").set(count as f64);
}

pub fn outbox_backlog(entries: u64) {
    gauge!("stampede_outbox_backlog").set(entries as f64);
}

pub fn connection_opened() {
    gauge!("stampede_connections_open").increment(1.0);
}

pub fn connection_closed() {
    gauge!("stampede_connections_open").decrement(1.0);
}
