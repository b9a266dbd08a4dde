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
use crate::common::stats::{new_histogram, record};

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

/// What the flood measured.
pub struct FloodRun {
    /// Checkouts served per second by the closed loop; below 1 nothing else ran.
    pub capacity: f64,
    /// One request at a time, before anything else.
    pub unloaded: Histogram<u64>,
    /// The rate asked for: capacity x factor.
    pub rate: f64,
    pub sent: u64,
    /// Sent over 100 ms after they were due.
    pub late: u64,
    /// Found `outstanding_max` requests in flight.
    pub full: u64,
    pub sending: Duration,
    /// The rate reached, as a multiple of the capacity.
    pub reached: f64,
    pub admitted: Histogram<u64>,
    pub shed: Histogram<u64>,
    /// "200", "503 OVERLOADED", "no answer: ..." -> count.
    pub statuses: BTreeMap<String, u64>,
    /// 503s without Retry-After.
    pub without_retry_after: u64,
    pub rss_before: Option<rss::Mem>,
    pub peak: Option<rss::Mem>,
}

impl Default for FloodRun {
    fn default() -> FloodRun {
        FloodRun {
            capacity: 0.0,
            unloaded: new_histogram(),
            rate: 0.0,
            sent: 0,
            late: 0,
            full: 0,
            sending: Duration::ZERO,
            reached: 0.0,
            admitted: new_histogram(),
            shed: new_histogram(),
            statuses: BTreeMap::new(),
            without_retry_after: 0,
            rss_before: None,
            peak: None,
        }
    }
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

/// Measures the capacity, then floods at `factor` times it.
pub async fn run(target: &Target, cfg: Arc<FloodConfig>) -> FloodRun {
    let shooter = Arc::new(Shooter {
        target: target.clone(),
        idle: Mutex::new(Vec::new()),
        next: AtomicU64::new(0),
        cfg: cfg.clone(),
    });

    // Unloaded latency: one request at a time.
    let mut unloaded = new_histogram();
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
    let mut run = FloodRun {
        capacity,
        unloaded,
        ..FloodRun::default()
    };
    if capacity < 1.0 {
        return run;
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
    let (mut admitted, mut shed) = (new_histogram(), new_histogram());
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
    run.peak = cfg.engine_pid.and_then(|pid| rss::read(pid).ok());
    run.rss_before = rss_before;
    run.rate = rate;
    run.sent = sent;
    run.late = late;
    run.full = full;
    run.sending = sending;
    run.reached = reached;
    run.admitted = admitted;
    run.shed = shed;
    run.statuses = statuses;
    run.without_retry_after = without_retry_after;
    run
}
