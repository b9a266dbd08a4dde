//! The load itself: connection tasks, virtual users, the two scenarios.
//!
//! Each connection task opens one keep-alive connection, waits on a shared
//! barrier (so connection setup stays outside the measured window) and then
//! runs its virtual users one after another.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngExt;
use serde::Deserialize;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::common::http::{Conn, Method, Outcome, Target, encode_query_value, push_query_value};
use crate::common::stats::EndpointStats;

use super::args::Scenario;
use super::stats::{Acknowledged, Progress, RunStats};

pub struct LoadConfig {
    pub scenario: Scenario,
    pub target: Target,
    pub users: usize,
    pub items: usize,
    pub limit: u64,
    pub connections: usize,
    pub user_prefix: String,
    /// Contention: checkout attempts per user before giving up.
    pub attempts: usize,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Budget for the whole load phase (connecting included).
    pub max_duration: Duration,
    /// Live counters for the flush watcher.
    pub progress: Arc<Progress>,
}

pub struct LoadResult {
    pub stats: RunStats,
    /// Barrier released: all connections were up.
    pub start: Instant,
    /// All connection tasks finished (or were aborted).
    pub end: Instant,
    pub connect_duration: Duration,
    /// Set when tasks had to be aborted or the connect phase never finished.
    pub aborted: Option<String>,
}

/// Users handled by connection `c` of `conns`: contiguous, as even as possible.
pub fn users_of_connection(c: usize, conns: usize, users: usize) -> Range<usize> {
    (c * users / conns)..((c + 1) * users / conns)
}

/// Runs the load. `at_start` runs once all connections are up, just before
/// the clock of the measured phase starts (the CPU readings); its result
/// comes back with the load's, `None` if the connect phase never finished.
pub async fn run_load<T>(cfg: Arc<LoadConfig>, at_start: impl FnOnce() -> T) -> (LoadResult, Option<T>) {
    let conns = cfg.connections;
    let phase_start = Instant::now();
    let deadline = phase_start + cfg.max_duration;
    let barrier = Arc::new(Barrier::new(conns + 1));
    let mut tasks = JoinSet::new();
    for c in 0..conns {
        let users = users_of_connection(c, conns, cfg.users);
        tasks.spawn(connection_task(cfg.clone(), barrier.clone(), users, deadline));
    }

    let mut stats = RunStats::new();
    if tokio::time::timeout_at(deadline.into(), barrier.wait()).await.is_err() {
        tasks.abort_all();
        let now = Instant::now();
        let result = LoadResult {
            stats,
            start: now,
            end: now,
            connect_duration: now - phase_start,
            aborted: Some("connect phase did not finish before --max-secs".into()),
        };
        return (result, None);
    }
    // The connection tasks are released; with one driver thread they run only
    // once this returns, with more the readings overlap their first ~1 ms.
    let started = at_start();
    let start = Instant::now();
    let connect_duration = start - phase_start;
    let bar = progress_bar(cfg.clone());

    // Tasks stop by themselves at `deadline`; this is the backstop.
    let hard_stop = deadline + cfg.request_timeout + Duration::from_secs(5);
    let mut aborted = None;
    loop {
        match tokio::time::timeout_at(hard_stop.into(), tasks.join_next()).await {
            Ok(Some(Ok(task_stats))) => stats.merge(task_stats),
            Ok(Some(Err(e))) => stats.note_error(format!("connection task failed: {e}")),
            Ok(None) => break,
            Err(_) => {
                let left = tasks.len();
                tasks.abort_all();
                aborted = Some(format!(
                    "{left} connection tasks still running at the hard stop: aborted"
                ));
                break;
            }
        }
    }
    bar.abort();
    let result = LoadResult {
        stats,
        start,
        end: Instant::now(),
        connect_duration,
        aborted,
    };
    (result, Some(started))
}

/// Purchases so far out of the items on sale, on a terminal only (indicatif
/// draws nothing when stderr is not one, so logs and CI stay clean).
fn progress_bar(cfg: Arc<LoadConfig>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let bar = indicatif::ProgressBar::new(cfg.items as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} purchases ({per_sec}, eta {eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            bar.set_position(cfg.progress.purchases());
            if bar.position() >= cfg.items as u64 {
                bar.finish_and_clear();
                return;
            }
        }
    })
}

async fn connection_task(
    cfg: Arc<LoadConfig>,
    barrier: Arc<Barrier>,
    users: Range<usize>,
    deadline: Instant,
) -> RunStats {
    let mut stats = RunStats::new();
    let conn = match Conn::connect(&cfg.target, cfg.connect_timeout).await {
        Ok(conn) => Some(conn),
        Err(e) => {
            stats.connect_errors += 1;
            stats.note_error(e);
            None
        }
    };
    // Always reach the barrier, even without a connection, or everybody waits forever.
    barrier.wait().await;

    let mut vu = Vu {
        cfg,
        conn,
        stats,
        deadline,
        gave_up: false,
    };
    for user in users {
        if vu.gave_up {
            vu.stats.abandoned_users += 1;
            continue;
        }
        match vu.cfg.scenario {
            Scenario::Contest => vu.contest_user(user).await,
            Scenario::Contention => vu.contention_user(user).await,
        }
        if vu.gave_up {
            vu.stats.abandoned_users += 1;
        }
    }
    vu.stats
}

#[derive(Clone, Copy)]
enum Endpoint {
    Checkout,
    Purchase,
}

/// A parsed HTTP answer: the status and the few body fields the driver reads.
struct Reply {
    status: u16,
    /// `error.code` of an error body, if any.
    error_code: Option<String>,
    /// `code` (a checkout's code), if a string.
    code: Option<String>,
    /// `sale_id`, a number or a numeric string.
    sale_id: Option<i64>,
    /// `item_id`, a number or a numeric string.
    item_id: Option<i64>,
}

/// The state of one connection task while it plays its users.
struct Vu {
    cfg: Arc<LoadConfig>,
    conn: Option<Conn>,
    stats: RunStats,
    deadline: Instant,
    /// Set once the deadline passed or the connection could not be re-established.
    gave_up: bool,
}

impl Vu {
    fn endpoint_stats(&mut self, endpoint: Endpoint) -> &mut EndpointStats {
        match endpoint {
            Endpoint::Checkout => &mut self.stats.checkout,
            Endpoint::Purchase => &mut self.stats.purchase,
        }
    }

    /// Sends one POST. `None` means the request was not made or got no answer;
    /// `gave_up` tells whether this task should stop altogether.
    async fn post(&mut self, endpoint: Endpoint, path: &str) -> Option<Reply> {
        let now = Instant::now();
        if now >= self.deadline {
            self.stats.deadline_hit = true;
            self.gave_up = true;
            return None;
        }
        let timeout = self.cfg.request_timeout.min(self.deadline - now);

        if self.conn.as_ref().is_none_or(Conn::is_closed) {
            let had_conn = self.conn.is_some();
            match Conn::connect(&self.cfg.target, self.cfg.connect_timeout).await {
                Ok(conn) => {
                    if had_conn {
                        self.stats.reconnects += 1;
                    }
                    self.conn = Some(conn);
                }
                Err(e) => {
                    self.conn = None;
                    self.stats.connect_errors += 1;
                    self.stats.note_error(e);
                    self.gave_up = true;
                    return None;
                }
            }
        }
        let cfg = self.cfg.clone();
        let conn = self.conn.as_mut()?;
        let outcome = conn.request(&cfg.target, Method::POST, path, timeout).await;
        // Counted like the endpoint's statistics below: every outcome.
        cfg.progress.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match outcome {
            Outcome::Response { status, body, latency } => {
                // Not JSON (or not an object): no fields, as before.
                let fields: BodyFields = serde_json::from_slice(&body).unwrap_or_default();
                let error_code = fields.error.and_then(|e| e.code).map(str::to_owned);
                let key = match (&error_code, status) {
                    (_, 200) => Cow::Borrowed("200"),
                    (Some(code), _) => Cow::Owned(format!("{status} {code}")),
                    (None, _) => Cow::Owned(status.to_string()),
                };
                if status != 200 && self.cfg.scenario == Scenario::Contest {
                    let text = String::from_utf8_lossy(&body);
                    let text: String = text.chars().take(200).collect();
                    self.stats.note_error(format!("{path} -> {status} {text}"));
                }
                self.endpoint_stats(endpoint).record_response(&key, now, latency);
                Some(Reply {
                    status,
                    error_code,
                    code: fields.code.map(str::to_owned),
                    sale_id: fields.sale_id,
                    item_id: fields.item_id,
                })
            }
            Outcome::Timeout => {
                self.conn = None;
                self.endpoint_stats(endpoint).record_failure("timeout");
                self.stats.note_error(format!("{path}: no answer within {timeout:?}"));
                if timeout < self.cfg.request_timeout {
                    // The timeout was cut short by the run deadline: stop here.
                    self.stats.deadline_hit = true;
                    self.gave_up = true;
                }
                None
            }
            Outcome::Transport(e) => {
                self.conn = None;
                self.endpoint_stats(endpoint).record_failure("transport");
                self.stats.note_error(format!("{path}: {e}"));
                None
            }
        }
    }

    /// POST /checkout. On 200 returns the code; the reply is returned either way.
    /// `user_q` is the user id, already encoded for the query string.
    async fn checkout(&mut self, user_q: &str, item: usize) -> Option<(Reply, Option<String>)> {
        let path = format!("/checkout?user_id={user_q}&id={item}");
        let mut reply = self.post(Endpoint::Checkout, &path).await?;
        if reply.status != 200 {
            return Some((reply, None));
        }
        let code = reply.code.take();
        match &code {
            Some(code) => {
                self.stats.checkout_codes.push(code.clone());
                if let Some(sale) = reply.sale_id {
                    self.stats.sale_ids.insert(sale);
                }
            }
            None => {
                self.stats.bad_bodies += 1;
                self.stats.note_error(format!("{path}: 200 without a \"code\" field"));
            }
        }
        Some((reply, code))
    }

    /// POST /purchase, sent once. Records what the buyer was told on 200.
    async fn purchase(&mut self, code: &str, item: usize, user: usize) -> Option<Reply> {
        let mut path = String::with_capacity(15 + code.len());
        path.push_str("/purchase?code=");
        push_query_value(&mut path, code);
        let reply = self.post(Endpoint::Purchase, &path).await?;
        if reply.status == 200 {
            self.stats.last_purchase = Some(Instant::now());
            let sale = reply.sale_id;
            self.cfg.progress.record_purchase(sale);
            self.stats.acknowledged.push(Acknowledged {
                code: code.to_owned(),
                item: reply.item_id.unwrap_or(item as i64),
                user,
            });
            if let Some(sale) = sale {
                self.stats.sale_ids.insert(sale);
            }
        }
        Some(reply)
    }

    /// Contest: user `u` buys items u*k+1 ..= u*k+k, one after another.
    async fn contest_user(&mut self, user: usize) {
        let k = self.cfg.items / self.cfg.users;
        let user_q = encode_query_value(&format!("{}-{user}", self.cfg.user_prefix));
        for item in (user * k + 1)..=(user * k + k) {
            let Some((_, code)) = self.checkout(&user_q, item).await else {
                if self.gave_up {
                    return;
                }
                continue;
            };
            let Some(code) = code else { continue };
            if self.purchase(&code, item, user).await.is_none() && self.gave_up {
                break;
            }
        }
    }

    /// Contention: try random items not yet known to be sold until all are
    /// sold (as far as this user knows), the limit is reached or attempts run out.
    async fn contention_user(&mut self, user: usize) {
        let user_q = encode_query_value(&format!("{}-{user}", self.cfg.user_prefix));
        let mut unknown: Vec<usize> = (1..=self.cfg.items).collect();
        let mut bought = 0u64;
        let mut attempts = 0;
        while !unknown.is_empty() && attempts < self.cfg.attempts && bought < self.cfg.limit {
            attempts += 1;
            let idx = rand::rng().random_range(0..unknown.len());
            let item = unknown[idx];
            let Some((reply, code)) = self.checkout(&user_q, item).await else {
                if self.gave_up {
                    break;
                }
                continue;
            };
            match (reply.status, reply.error_code.as_deref(), code) {
                (200, _, Some(code)) => {
                    let Some(reply) = self.purchase(&code, item, user).await else {
                        if self.gave_up {
                            break;
                        }
                        continue;
                    };
                    match (reply.status, reply.error_code.as_deref()) {
                        (200, _) => {
                            bought += 1;
                            unknown.swap_remove(idx);
                        }
                        (409, Some("ITEM_SOLD")) => {
                            unknown.swap_remove(idx);
                        }
                        (403, _) => break,
                        _ => {}
                    }
                }
                (409, Some("ITEM_SOLD"), _) => {
                    unknown.swap_remove(idx);
                }
                (403, _, _) | (429, _, _) => break,
                _ => {}
            }
        }
    }
}

/// The body fields the driver reads: `code`, `sale_id`, `item_id` and
/// `error.code`. serde skips everything else without building a tree, and the
/// strings are borrowed from the body: the engine's codes and error codes never
/// need JSON escapes. A body of another shape reads as all-absent, which the
/// driver counts as a bad body.
#[derive(Deserialize, Default)]
#[serde(default)]
struct BodyFields<'a> {
    code: Option<&'a str>,
    sale_id: Option<i64>,
    item_id: Option<i64>,
    #[serde(borrow)]
    error: Option<ErrorFields<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ErrorFields<'a> {
    code: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_cover_all_users_once() {
        for (conns, users) in [(1000, 1000), (1000, 20000), (7, 100), (3, 2)] {
            let conns = conns.min(users);
            let mut next = 0;
            for c in 0..conns {
                let r = users_of_connection(c, conns, users);
                assert_eq!(r.start, next);
                next = r.end;
            }
            assert_eq!(next, users);
        }
    }

    fn fields(body: &[u8]) -> (Option<String>, Option<i64>, Option<i64>, Option<String>) {
        let f: BodyFields = serde_json::from_slice(body).unwrap_or_default();
        (
            f.code.map(str::to_owned),
            f.sale_id,
            f.item_id,
            f.error.and_then(|e| e.code).map(str::to_owned),
        )
    }

    #[test]
    fn body_fields_of_the_engine_replies() {
        let checkout = br#"{"code":"498700-0a1b","checkout_code":"498700-0a1b","expires_at":"2026-01-01T00:00:00Z","sale_id":498700,"item_id":7,"user_id":"lt-0"}"#;
        assert_eq!(
            fields(checkout),
            (Some("498700-0a1b".into()), Some(498700), Some(7), None)
        );
        let purchase = br#"{"status":"success","success":true,"message":"ok","sale_id":498700,"item_id":42,"user_purchases":1,"purchased_at":"x"}"#;
        assert_eq!(fields(purchase), (None, Some(498700), Some(42), None));
        let refusal = br#"{"error":{"code":"ITEM_SOLD","message":"item already sold"}}"#;
        assert_eq!(fields(refusal), (None, None, None, Some("ITEM_SOLD".into())));
        for malformed in [&b"not json"[..], b"", b"[1]", br#"{"code":5}"#, br#"{"code":"x""#] {
            assert_eq!(fields(malformed), (None, None, None, None), "{malformed:?}");
        }
    }
}
