//! `GET /live`: one page, no build step, that shows the engine at work (the
//! current sale's sold and left, purchases/s, purchase p99, outbox backlog,
//! orders and wallet activity), and `GET /live/events`, the Server-Sent
//! Events stream that keeps it live: a JSON snapshot every
//! `LIVE_TICK`. Part of the wiring layer: it reads the sale's keys and every
//! feature's metrics by name.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::config::ConfigError;
use crate::context::Context;
use crate::limits::SSE_SEND_STALL_MAX;
use crate::outbox::Flusher;
use crate::sale::domain::SaleWindow;
use crate::sale::settings::SaleSettings;
use crate::server::Route;
use crate::server::access::Access;
use crate::server::error::{ApiError, ErrorCode};
use crate::server::feature::Feature;
use crate::server::http::{HttpResponse, with_content_type};

/// How often a snapshot is pushed.
const LIVE_TICK: Duration = Duration::from_millis(500);
/// Open `/live/events` streams. They share one snapshot a tick.
const LIVE_STREAMS_MAX: usize = 64;

const PAGE: &str = include_str!("live.html");

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("{LIVE_STREAMS_MAX} live streams are open already; retry shortly")]
    TooManyStreams,
}

// The codes a LiveError answers with; routes list the ones they may answer.
pub const LIVE_STREAMS_FULL: ErrorCode = ErrorCode::new(StatusCode::SERVICE_UNAVAILABLE, "LIVE_STREAMS_FULL");

impl ApiError for LiveError {
    fn error_code(&self) -> ErrorCode {
        LIVE_STREAMS_FULL
    }
}

pub struct Live {
    ctx: Arc<Context>,
    /// The sale's rules, to know the current sale and its size.
    sale: SaleSettings,
    flusher: Arc<Flusher>,
    metrics: PrometheusHandle,
    streams: Arc<Semaphore>,
    shutdown: OnceLock<watch::Receiver<bool>>,
    /// The latest snapshot and the counters its rates were taken from. One
    /// stream computes it (rendering every metric and reading Redis), the
    /// others reuse it within the tick: 64 streams rendering on their own
    /// took the engine long enough under load to delay everything else.
    latest: tokio::sync::Mutex<Latest>,
}

#[derive(Default)]
struct Latest {
    counters: Option<(Instant, Counters)>,
    frame: Option<(Instant, Bytes)>,
}

impl Live {
    pub fn new(ctx: Arc<Context>, flusher: Arc<Flusher>, metrics: PrometheusHandle) -> Result<Arc<Self>, ConfigError> {
        let sale = SaleSettings::from_env(&ctx.config.env())?;
        Ok(Arc::new(Self {
            ctx,
            sale,
            flusher,
            metrics,
            streams: Arc::new(Semaphore::new(LIVE_STREAMS_MAX)),
            shutdown: OnceLock::new(),
            latest: tokio::sync::Mutex::new(Latest::default()),
        }))
    }

    /// Pushes a snapshot every tick until the client goes, stops reading
    /// (`SSE_SEND_STALL_MAX`) or the engine stops. Every wait (the tick,
    /// the snapshot's Redis reads, the send) also watches for the client
    /// leaving, so a departed client frees its slot at once, even while
    /// Redis is slow or away.
    async fn push(
        self: Arc<Self>,
        tx: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
        mut stop: Option<watch::Receiver<bool>>,
        _permit: OwnedSemaphorePermit,
    ) {
        let mut tick = tokio::time::interval(LIVE_TICK);
        // A snapshot slower than a tick (Redis away) is followed by one
        // tick's wait, not by a burst of the missed ones.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = async {
                tick.tick().await;
                let frame = Frame::data(self.latest_frame().await);
                tokio::time::timeout(SSE_SEND_STALL_MAX, tx.send(Ok(frame))).await
            };
            tokio::select! {
                sent = step => match sent {
                    Ok(Ok(())) => {}
                    // Gone, or not reading.
                    Ok(Err(_)) | Err(_) => return,
                },
                _ = tx.closed() => return,
                _ = async {
                    match stop.as_mut() {
                        Some(stop) => { let _ = stop.wait_for(|s| *s).await; }
                        None => std::future::pending::<()>().await,
                    }
                } => return,
            }
        }
    }

    /// The current snapshot as an SSE frame: the shared one if it is less
    /// than half a tick old, else a new one (rates over the time since the
    /// last).
    async fn latest_frame(&self) -> Bytes {
        let mut latest = self.latest.lock().await;
        let now = Instant::now();
        if let Some((at, frame)) = &latest.frame
            && now.saturating_duration_since(*at) < LIVE_TICK / 2
        {
            return frame.clone();
        }
        let counters = Counters::read(&self.metrics.render());
        let snapshot = self
            .snapshot(&counters, latest.counters.as_ref().map(|(at, c)| (now - *at, c)))
            .await;
        let data = serde_json::to_string(&snapshot).unwrap_or_else(|_| "{}".into());
        let frame = Bytes::from(format!("event: snapshot\ndata: {data}\n\n"));
        latest.counters = Some((now, counters));
        latest.frame = Some((now, frame.clone()));
        frame
    }

    async fn snapshot(&self, now: &Counters, before: Option<(Duration, &Counters)>) -> Snapshot {
        let ctx = &self.ctx;
        let window = SaleWindow::at(ctx.clock.now_ms(), self.sale.period_secs);
        let (items, sold) =
            match crate::sale::lua::progress(&ctx.redis, &ctx.keys, window.sale_id, self.sale.split).await {
                Ok(p) => (p.items, p.sold),
                Err(_) => (None, 0),
            };
        let items_total = items.unwrap_or(u64::from(self.sale.items));
        let rate = |name: &str| -> f64 {
            match before {
                Some((elapsed, old)) if !elapsed.is_zero() => {
                    (now.get(name) - old.get(name)).max(0.0) / elapsed.as_secs_f64()
                }
                _ => 0.0,
            }
        };
        let purchase_p99_ms = before.and_then(|(_, old)| now.quantile_ms(old, PURCHASE_LATENCY, 0.99));
        Snapshot {
            sale_id: window.sale_id,
            items_total,
            items_sold: sold,
            items_left: items_total.saturating_sub(sold),
            purchases_per_sec: rate(PURCHASES),
            purchase_p99_ms,
            outbox_backlog: self.flusher.backlog().await.unwrap_or(0),
            orders_per_sec: rate(ORDERS),
            orders_total: now.get(ORDERS) as u64,
            wallet_ops_per_sec: rate(WALLET_OPS),
            wallet_ops_total: now.get(WALLET_OPS) as u64,
        }
    }
}

/// What the page shows; rates are over the last tick.
#[derive(Serialize)]
struct Snapshot {
    sale_id: u64,
    items_total: u64,
    items_sold: u64,
    items_left: u64,
    purchases_per_sec: f64,
    purchase_p99_ms: Option<f64>,
    outbox_backlog: u64,
    orders_per_sec: f64,
    orders_total: u64,
    wallet_ops_per_sec: f64,
    wallet_ops_total: u64,
}

/// The series the page follows, as `name{label filter}` prefixes of the
/// Prometheus exposition.
const PURCHASES: &str = "stampede_script_outcomes_total{outcome=\"OK\",script=\"purchase\"}";
const ORDERS: &str = "stampede_script_outcomes_total{outcome=\"OK\",script=\"order_create\"}";
const WALLET_OPS: &str = "stampede_http_requests_total{route=\"wallet_";
const PURCHASE_LATENCY: &str = "stampede_http_request_duration_seconds_bucket{route=\"purchase\"";

/// Sums of the rendered metrics, by series text, for the page's few series.
struct Counters {
    values: HashMap<String, f64>,
}

impl Counters {
    /// Parses the text exposition format: `name{labels} value`.
    fn read(text: &str) -> Self {
        let mut values = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some((series, value)) = line.rsplit_once(' ')
                && let Ok(value) = value.parse::<f64>()
            {
                values.insert(series.to_owned(), value);
            }
        }
        Self { values }
    }

    /// The sum over series whose text starts with `prefix` (labels are
    /// rendered sorted, so a prefix selects by the first labels).
    fn get(&self, prefix: &str) -> f64 {
        let (name, labels) = prefix.split_once('{').unwrap_or((prefix, ""));
        let wanted: Vec<&str> = labels
            .trim_end_matches('}')
            .split(',')
            .filter(|l| !l.is_empty())
            .collect();
        self.values
            .iter()
            .filter(|(series, _)| {
                let (n, l) = series.split_once('{').unwrap_or((series.as_str(), ""));
                n == name && wanted.iter().all(|w| l.contains(w.trim_end_matches('"')))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// A quantile of a histogram's observations between `old` and `self`,
    /// from its cumulative buckets, in milliseconds.
    fn quantile_ms(&self, old: &Counters, prefix: &str, q: f64) -> Option<f64> {
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for (series, value) in &self.values {
            if !series.starts_with(prefix) {
                continue;
            }
            let le = series.split("le=\"").nth(1)?.split('"').next()?;
            let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            let delta = value - old.values.get(series).copied().unwrap_or(0.0);
            match buckets.iter_mut().find(|(b, _)| *b == bound) {
                Some((_, count)) => *count += delta,
                None => buckets.push((bound, delta)),
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        buckets
            .iter()
            .find(|(_, count)| *count >= rank)
            .map(|(bound, _)| if bound.is_finite() { bound * 1000.0 } else { f64::NAN })
            .filter(|ms| ms.is_finite())
    }
}

/// An mpsc receiver as a `Stream`, without another crate.
fn tokio_stream_from<T>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

impl Feature for Live {
    fn name(&self) -> &'static str {
        "live"
    }

    fn routes(self: Arc<Self>) -> Vec<Route> {
        vec![
            Route::new(
                Method::GET,
                "/live",
                "live",
                Access::Public,
                self.clone(),
                |_, _, _| async move { Ok::<_, Infallible>(page()) },
            ),
            Route::new(
                Method::GET,
                "/live/events",
                "live_events",
                Access::Public,
                self,
                |live, _, _| async move { events(live) },
            )
            .answers(&[LIVE_STREAMS_FULL]),
        ]
    }

    fn api(&self) -> utoipa::openapi::OpenApi {
        <LiveApi as utoipa::OpenApi>::openapi()
    }

    fn spawn_background(self: Arc<Self>, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let _ = self.shutdown.set(shutdown);
        Vec::new()
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(page, events))]
struct LiveApi;

#[utoipa::path(get, path = "/live", tag = "ops", summary = "A live page of the engine at work (sale, orders, wallet), fed by /live/events",
    responses((status = 200, description = "an HTML page", content_type = "text/html", body = String)))]
fn page() -> HttpResponse {
    with_content_type(
        StatusCode::OK,
        Bytes::from_static(PAGE.as_bytes()),
        "text/html; charset=utf-8",
    )
}

#[utoipa::path(get, path = "/live/events", tag = "ops", summary = "Server-Sent Events feeding the live page: a snapshot of the engine every 500 ms",
    responses(
        (status = 200, description = "`event: snapshot` frames, JSON data", content_type = "text/event-stream", body = crate::server::apidoc::SseEvent),
    ))]
fn events(live: Arc<Live>) -> Result<HttpResponse, LiveError> {
    let permit = live
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| LiveError::TooManyStreams)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
    let stop = live.shutdown.get().cloned();
    tokio::spawn(live.push(tx, stop, permit));
    let stream = tokio_stream_from(rx);
    let body = StreamBody::new(stream)
        .map_err(|never: Infallible| match never {})
        .boxed();
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE x counter\n\
stampede_script_outcomes_total{outcome=\"OK\",script=\"purchase\"} 7\n\
stampede_script_outcomes_total{outcome=\"ITEM_SOLD\",script=\"purchase\"} 3\n\
stampede_http_request_duration_seconds_bucket{route=\"purchase\",status=\"200\",le=\"0.005\"} 90\n\
stampede_http_request_duration_seconds_bucket{route=\"purchase\",status=\"200\",le=\"0.01\"} 99\n\
stampede_http_request_duration_seconds_bucket{route=\"purchase\",status=\"200\",le=\"+Inf\"} 100\n";

    #[test]
    fn counters_and_quantiles_from_the_exposition() {
        let now = Counters::read(TEXT);
        assert_eq!(now.get(PURCHASES), 7.0);
        let empty = Counters::read("");
        assert_eq!(now.quantile_ms(&empty, PURCHASE_LATENCY, 0.5), Some(5.0));
        assert_eq!(now.quantile_ms(&empty, PURCHASE_LATENCY, 0.99), Some(10.0));
        assert_eq!(now.quantile_ms(&now, PURCHASE_LATENCY, 0.99), None);
    }
}
