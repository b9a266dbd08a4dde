//! The flood case: the engine's capacity measured with a short closed loop,
//! then checkouts sent open-loop at a multiple of it, each when it is due
//! whatever became of the ones before (independent clients). What is
//! admitted must keep a bounded latency, what is not must be told 503 with
//! `Retry-After` at once, and the engine's memory must stay bounded.
//!
//! The driver shares the machine: a request's latency counts from when the
//! driver got to it (a wait for a free slot included, which the engine's
//! slowness would cause), and how late the driver itself was, and the rate
//! it reached, are reported apart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

use crate::common::http::{Conn, Method, Outcome, Target};
use crate::common::proc::rss;
use crate::scenarios::sale::report::Invariant;

pub struct FloodConfig {
    pub factor: f64,
    pub secs: f64,
    pub capacity_secs: f64,
    pub capacity_clients: usize,
    pub outstanding_max: usize,
    /// User ids `<tag>-f<n>`, items from `item_base`.
    pub tag: String,
    pub item_base: u64,
    pub items: u64,
    pub engine_pid: Option<u32>,
    pub admitted_p99_max: Duration,
    pub shed_p99_max: Duration,
    pub peak_rss_max_mib: u64,
}

struct Shot {
    status: Option<u16>,
    code: String,
    retry_after: bool,
    latency: Duration,
}

struct Shooter {
    target: Target,
    idle: Mutex<Vec<Conn>>,
    next: AtomicU64,
    cfg: Arc<FloodConfig>,
}

impl Shooter {
    /// One checkout on an idle connection, or a new one; its latency
    /// counts from `since`.
    async fn shoot(&self, since: Instant) -> Shot {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = format!(
            "/checkout?user_id={}-f{}&id={}",
            self.cfg.tag,
            n / 900,
            self.cfg.item_base + n % self.cfg.items + 1
        );
        let idle = self.idle.lock().map(|mut idle| idle.pop()).ok().flatten();
        let mut conn = match idle {
            Some(conn) if !conn.is_closed() => conn,
            _ => match Conn::connect(&self.target, Duration::from_secs(10)).await {
                Ok(conn) => conn,
                Err(e) => {
                    return Shot {
                        status: None,
                        code: e,
                        retry_after: false,
                        latency: since.elapsed(),
                    };
                }
            },
        };
        let outcome = conn
            .request(&self.target, Method::POST, &path, Duration::from_secs(30))
            .await;
        let shot = match outcome {
            Outcome::Response { status, body, .. } => Shot {
                status: Some(status),
                code: serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                    .unwrap_or_default(),
                retry_after: conn.last_flags().retry_after,
                latency: since.elapsed(),
            },
            Outcome::Timeout => Shot {
                status: None,
                code: "timeout".into(),
                retry_after: false,
                latency: since.elapsed(),
            },
            Outcome::Transport(e) => Shot {
                status: None,
                code: e,
                retry_after: false,
                latency: since.elapsed(),
            },
        };
        if !conn.is_closed()
            && let Ok(mut idle) = self.idle.lock()
        {
            idle.push(conn);
        }
        shot
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

pub async fn run(target: &Target, cfg: FloodConfig) -> (Vec<Invariant>, serde_json::Value) {
    let cfg = Arc::new(cfg);
    let shooter = Arc::new(Shooter {
        target: target.clone(),
        idle: Mutex::new(Vec::new()),
        next: AtomicU64::new(0),
        cfg: cfg.clone(),
    });
    let mut out = Vec::new();

    // Unloaded latency: one request at a time.
    let mut unloaded = histogram();
    for _ in 0..300 {
        let shot = shooter.shoot(Instant::now()).await;
        record(&mut unloaded, shot.latency);
    }

    // Capacity: a closed loop.
    let started = Instant::now();
    let run_for = Duration::from_secs_f64(cfg.capacity_secs);
    let mut clients = Vec::new();
    for _ in 0..cfg.capacity_clients {
        let shooter = shooter.clone();
        clients.push(tokio::spawn(async move {
            let mut served = 0u64;
            while started.elapsed() < run_for {
                served += u64::from(shooter.shoot(Instant::now()).await.status == Some(200));
            }
            served
        }));
    }
    let mut served = 0;
    for c in clients {
        served += c.await.unwrap_or(0);
    }
    let capacity = served as f64 / started.elapsed().as_secs_f64();
    if capacity < 1.0 {
        out.push(Invariant::fail(
            "flood_capacity",
            "the engine served nothing in the closed loop",
        ));
        return (out, serde_json::json!({"capacity_per_sec": capacity}));
    }
    let rss_before = cfg.engine_pid.and_then(|pid| {
        let _ = rss::reset_peak(pid);
        rss::read(pid).ok()
    });

    let rate = capacity * cfg.factor;
    let total = (rate * cfg.secs) as u64;
    let outstanding = Arc::new(Semaphore::new(cfg.outstanding_max));
    let flood_started = Instant::now();
    let flood_ends = flood_started + Duration::from_secs_f64(cfg.secs);
    let mut shots = Vec::with_capacity(total as usize);
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
        let Ok(permit) = outstanding.clone().acquire_owned().await else {
            break;
        };
        let shooter = shooter.clone();
        shots.push(tokio::spawn(async move {
            let shot = shooter.shoot(reached).await;
            drop(permit);
            shot
        }));
    }
    let sending = flood_started.elapsed();
    let sent = shots.len() as u64;
    let reached = sent as f64 / sending.as_secs_f64() / capacity;
    let (mut admitted, mut shed) = (histogram(), histogram());
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut without_retry_after = 0u64;
    for shot in shots {
        let Ok(shot) = shot.await else { continue };
        match shot.status {
            Some(200) => record(&mut admitted, shot.latency),
            Some(503) => {
                record(&mut shed, shot.latency);
                without_retry_after += u64::from(!shot.retry_after);
            }
            _ => {}
        }
        let key = match shot.status {
            Some(200) => "200".to_owned(),
            Some(s) => format!("{s} {}", shot.code),
            None => format!("no answer: {}", shot.code.chars().take(60).collect::<String>()),
        };
        *statuses.entry(key).or_default() += 1;
    }
    let peak = cfg.engine_pid.and_then(|pid| rss::read(pid).ok());

    let figures = format!(
        "capacity {capacity:.0}/s, unloaded p99 {:.1} ms; flood at {rate:.0}/s for {:.1} s: {sent} sent in {:.1} s \
         ({:.0}/s, {:.1}x capacity; the driver reached {late} over 100 ms late, {full} found {} in flight); admitted {} \
         (p50 {:.1} ms, p99 {:.1} ms), shed {} (p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms)",
        ms(&unloaded, 0.99),
        cfg.secs,
        sending.as_secs_f64(),
        sent as f64 / sending.as_secs_f64(),
        reached,
        cfg.outstanding_max,
        admitted.len(),
        ms(&admitted, 0.5),
        ms(&admitted, 0.99),
        shed.len(),
        ms(&shed, 0.5),
        ms(&shed, 0.99),
        ms(&shed, 1.0),
    );
    println!("flood: {figures}");
    let others: Vec<String> = statuses
        .iter()
        .filter(|(k, _)| *k != "200" && !k.starts_with("503"))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    out.push(Invariant::check(
        "flood_served",
        !admitted.is_empty(),
        format!("{} admitted during the flood", admitted.len()),
    ));
    let shed_detail = format!(
        "{} shed with 503 (sent at {reached:.1}x capacity, {:.0}x asked), {without_retry_after} of them without \
         Retry-After",
        shed.len(),
        cfg.factor
    );
    // A driver that could not send above the capacity did not overload the
    // engine: nothing to shed says nothing about it.
    out.push(if shed.is_empty() && reached < 1.5 {
        Invariant::skip(
            "flood_shed_with_503",
            format!(
                "{shed_detail}: the driver did not overload the engine (run it from another machine, or --threads)"
            ),
        )
    } else {
        Invariant::check(
            "flood_shed_with_503",
            !shed.is_empty() && without_retry_after == 0,
            shed_detail,
        )
    });
    out.push(Invariant::check(
        "flood_no_other_answer",
        others.is_empty(),
        format!("answers other than 200 and 503: {others:?}"),
    ));
    out.push(Invariant::check(
        "flood_admitted_p99",
        ms(&admitted, 0.99) < cfg.admitted_p99_max.as_secs_f64() * 1000.0,
        format!(
            "admitted p99 {:.1} ms (unloaded {:.1} ms), bound {:?}",
            ms(&admitted, 0.99),
            ms(&unloaded, 0.99),
            cfg.admitted_p99_max
        ),
    ));
    out.push(if shed.is_empty() {
        Invariant::skip("flood_shed_fast", "nothing was shed")
    } else {
        Invariant::check(
            "flood_shed_fast",
            ms(&shed, 0.99) < cfg.shed_p99_max.as_secs_f64() * 1000.0,
            format!("shed p99 {:.1} ms, bound {:?}", ms(&shed, 0.99), cfg.shed_p99_max),
        )
    });
    match (rss_before, peak) {
        (Some(before), Some(peak)) => out.push(Invariant::check(
            "flood_memory_bounded",
            peak.hwm_kib < cfg.peak_rss_max_mib * 1024,
            format!(
                "engine RSS {:.1} MiB before, peak {:.1} MiB during the flood (VmHWM), bound {} MiB",
                before.rss_kib as f64 / 1024.0,
                peak.hwm_kib as f64 / 1024.0,
                cfg.peak_rss_max_mib
            ),
        )),
        _ => out.push(Invariant::skip(
            "flood_memory_bounded",
            "no --engine-pid (or its /proc/<pid>/status is not readable)",
        )),
    }
    let json = serde_json::json!({
        "capacity_per_sec": capacity,
        "unloaded_p99_ms": ms(&unloaded, 0.99),
        "rate_per_sec": rate,
        "sent": sent,
        "sent_late": late,
        "found_outstanding_max": full,
        "reached_rate_per_sec": sent as f64 / sending.as_secs_f64(),
        "sending_secs": sending.as_secs_f64(),
        "admitted": admitted.len(),
        "admitted_p50_ms": ms(&admitted, 0.5),
        "admitted_p99_ms": ms(&admitted, 0.99),
        "shed": shed.len(),
        "shed_p50_ms": ms(&shed, 0.5),
        "shed_p99_ms": ms(&shed, 0.99),
        "shed_max_ms": ms(&shed, 1.0),
        "statuses": statuses,
        "rss_before_mib": rss_before.map(|m| m.rss_kib as f64 / 1024.0),
        "peak_rss_mib": peak.map(|m| m.hwm_kib as f64 / 1024.0),
    });
    (out, json)
}
