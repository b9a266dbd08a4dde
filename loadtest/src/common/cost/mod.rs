//! What one request costs, per process and per script: the cost table of
//! every measuring scenario and of `loadtest costs`.
//!
//! A [`CostProbe`] finds what it can read: every Redis server of the
//! deployment (each primary of a cluster), the engine's `/metrics`, the
//! processes of `/proc` (`proc::cpu_split`). [`CostProbe::start`] reads all
//! of them when the measured phase starts, [`CostWatch::finish`] when it
//! ends, and the table ([`report`]) divides their growth by the requests of
//! the phase.
//!
//! Redis's `INFO commandstats` does not tell one script from another. With
//! `--slowlog-sample` (only for a Redis that is the caller's to reconfigure:
//! `run.sh` gives it for the Redis it starts), the phase is cut into slices:
//! every `--slowlog-every-ms`, a slice of `--slowlog-ms` runs with
//! `slowlog-log-slower-than 0`, and the entries it logged name each script
//! call by its SHA1, with its duration and its inner commands (`slowlog.rs`).
//! The table is then read over the other slices only, which the log did not
//! slow down, and each script's share of the sampled script time splits the
//! measured one. Readings are taken at every slice's edges, so each slice's
//! requests are known (`Requests`). The watch runs on a thread of its own,
//! so that its reading never holds up the driver's load.

pub mod info;
pub mod metrics;
pub mod perf;
pub mod redis;
pub mod report;
pub mod scripts;
pub mod slowlog;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;
use tokio::sync::oneshot;

use crate::common::http::Target;
use crate::common::proc::cpu_split::{CpuSplit, CpuUsage, Snapshot};
use crate::common::proc::rss;
use crate::common::stores::connect_pg;
use info::NodeCounters;
use metrics::EngineCounters;
use perf::PerfRecording;
use redis::{RedisNodes, SlowlogGuard};
use report::{CostReport, Growth, Measured};
use scripts::ScriptNames;
use slowlog::Sample;

/// Flags of the cost table, the same for every scenario that prints one.
#[derive(Debug, Clone, clap::Args)]
pub struct CostArgs {
    /// The engine's Redis (`redis-cluster://h:p?node=h2:p2` for a cluster:
    /// every primary is read): its CPU and commands per request, and for
    /// the sale its checks and the redis-benchmark baseline (not measured,
    /// and those SKIPPED, if unset).
    #[arg(long, env = "REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Split Redis's time by script: during the phase, slices with
    /// `slowlog-log-slower-than 0` on every primary (and `slowlog-max-len`
    /// raised), put back after. Only for a Redis that is yours to
    /// reconfigure: it changes its settings and empties its slow log
    /// (run.sh gives it for the Redis it starts itself).
    #[arg(long)]
    pub slowlog_sample: bool,
    /// Length of each slow-log slice.
    #[arg(long, value_name = "MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(10..))]
    pub slowlog_ms: u64,
    /// One slice every this long (the rest of the phase is what the table
    /// is about).
    #[arg(long, value_name = "MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(20..))]
    pub slowlog_every_ms: u64,
    /// Entries the slow log may hold during a slice; beyond, its oldest are
    /// dropped and the report says so (each takes about a kilobyte of
    /// Redis memory).
    #[arg(long, value_name = "N", default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(128..=10_000_000))]
    pub slowlog_max_len: u64,
    /// Folders of the Lua scripts, to name each SHA1 an EVALSHA carries
    /// [default: ./lua or <repo>/lua, and loadtest/lua].
    #[arg(long = "scripts-dir", value_name = "DIR")]
    pub scripts_dirs: Vec<PathBuf>,
    /// Record Redis's processes with `perf record -g` into FILE for the
    /// phase, and split Redis's CPU by what it was doing (`perf.rs`): needs
    /// `perf`, Redis on this machine, and for a useful split a
    /// redis-server with frame pointers and symbols (loadtest/README.md).
    #[arg(long, value_name = "FILE")]
    pub perf_redis: Option<PathBuf>,
}

impl CostArgs {
    fn slices(&self) -> Option<(Duration, Duration)> {
        (self.slowlog_sample && self.slowlog_every_ms > self.slowlog_ms).then(|| {
            (
                Duration::from_millis(self.slowlog_every_ms - self.slowlog_ms),
                Duration::from_millis(self.slowlog_ms),
            )
        })
    }
}

/// Where the requests of a slice are counted.
#[derive(Clone)]
pub enum Requests {
    /// The driver's own count, as it goes.
    Live(Arc<AtomicU64>),
    /// The engine's `stampede_http_requests_total` (its load routes).
    EngineHttp,
    /// Known only at the end (`finish` gets it): the phase is not sliced.
    AtEnd,
}

/// What is measured and how it is found.
pub struct CostSetup<'a> {
    /// `engine`, `baseline server`, `deployment`: the name of the server row.
    pub server: &'static str,
    /// `request`, `operation`, `line`.
    pub unit: &'static str,
    pub server_pid: Option<u32>,
    /// The engine, for its `/metrics` (none for the baseline server).
    pub engine: Option<Target>,
    /// The Postgres whose processes are measured (a connection finds them,
    /// then closes).
    pub database_url: Option<&'a str>,
    pub args: &'a CostArgs,
}

impl<'a> CostSetup<'a> {
    /// The engine at `target` (its `/metrics` read), measured per `unit`.
    pub fn engine(
        unit: &'static str,
        target: &Target,
        server_pid: Option<u32>,
        database_url: Option<&'a str>,
        args: &'a CostArgs,
    ) -> CostSetup<'a> {
        CostSetup {
            server: "engine",
            unit,
            server_pid,
            engine: Some(target.clone()),
            database_url,
            args,
        }
    }
}

/// Everything a reading needs, found once before the phase.
struct Shared {
    server: &'static str,
    unit: &'static str,
    /// Connected again by the watch, on its own thread.
    redis_url: Option<String>,
    /// `host:port` of each Redis server, in the order of every reading.
    node_names: Vec<String>,
    engine: Option<Target>,
    cpu: CpuSplit,
    names: ScriptNames,
    /// (off, on) lengths of the slices, when the slow log is sampled.
    slices: Option<(Duration, Duration)>,
    max_len: u64,
    /// Redis's local processes, and where to record them (`--perf-redis`).
    redis_pids: Vec<u32>,
    perf_file: Option<PathBuf>,
    /// The server measured, whose memory is read at the end.
    server_pid: Option<u32>,
    notes: Vec<String>,
}

/// What the watch needs to start: the first mark, taken at the instant the
/// phase starts, and where the end mark will come from.
struct Launch {
    requests: Requests,
    first: Mark,
    stopped: oneshot::Receiver<Mark>,
}

/// The readings found, and the watch's thread waiting for the phase.
pub struct CostProbe {
    shared: Arc<Shared>,
    launch: oneshot::Sender<Launch>,
    recorded: oneshot::Receiver<Recording>,
}

impl CostProbe {
    /// Finds what can be read, and starts the watch's thread: it runs on a
    /// runtime of its own, connected to Redis before the phase, because
    /// reading thousands of slow log entries on the driver's (one) thread
    /// would hold up the responses of a sampled slice until the next slice,
    /// which would then count them.
    pub async fn discover(setup: CostSetup<'_>) -> CostProbe {
        let shared = Arc::new(Shared::discover(setup).await);
        let (launch, launched) = oneshot::channel::<Launch>();
        let (done, recorded) = oneshot::channel();
        let watched = shared.clone();
        let spawned = std::thread::Builder::new().name("cost-watch".into()).spawn(move || {
            let recording = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(record(watched, launched)),
                Err(e) => Some(Recording::failed(format!("the cost watch has no runtime: {e}"))),
            };
            if let Some(recording) = recording {
                let _ = done.send(recording);
            }
        });
        if let Err(e) = spawned {
            eprintln!("warning: the cost watch did not start: {e}");
        }
        CostProbe {
            shared,
            launch,
            recorded,
        }
    }

    /// Reads everything now (`/proc` and the driver's count at once, the
    /// rest a round trip later) and keeps reading at every slice's edge
    /// until [`CostWatch::finish`].
    pub fn start(self, requests: Requests) -> CostWatch {
        let perf = self
            .shared
            .perf_file
            .as_deref()
            .map(|file| PerfRecording::start(&self.shared.redis_pids, file));
        let first = self.shared.mark(&requests, None);
        let (stop, stopped) = oneshot::channel();
        let _ = self.launch.send(Launch {
            requests: requests.clone(),
            first,
            stopped,
        });
        CostWatch {
            probe: self.shared,
            requests,
            stop,
            recorded: self.recorded,
            perf,
        }
    }
}

impl Shared {
    async fn discover(setup: CostSetup<'_>) -> Shared {
        let mut notes = Vec::new();
        let redis_url = setup.args.redis_url.clone().filter(|u| !u.is_empty());
        let redis = match &redis_url {
            Some(url) => match RedisNodes::connect(url).await {
                Ok(nodes) => Some(nodes),
                Err(e) => {
                    notes.push(format!("Redis not measured: {e}"));
                    None
                }
            },
            None => {
                notes.push("Redis not measured: no --redis-url".into());
                None
            }
        };
        let pids = match &redis {
            Some(nodes) => Some(nodes.pids().await),
            None => None,
        };
        let node_names = redis.as_ref().map(|r| r.names().to_vec()).unwrap_or_default();
        let redis_pids = match &pids {
            Some(Ok(pids)) => pids.clone(),
            _ => Vec::new(),
        };
        if let Some(nodes) = &redis {
            nodes.quit().await;
        }
        let mut pg = match setup.database_url.filter(|u| !u.is_empty()) {
            Some(url) => connect_pg(url).await.ok(),
            None => None,
        };
        let cpu = CpuSplit::discover(setup.server_pid, pids, pg.as_mut()).await;
        if let Some(pg) = pg {
            let _ = pg.close().await;
        }
        let dirs = if setup.args.scripts_dirs.is_empty() {
            vec![scripts::default_lua_dir(), scripts::default_baseline_lua_dir()]
        } else {
            setup.args.scripts_dirs.clone()
        };
        let names = ScriptNames::load(&dirs);
        notes.extend(names.problems.iter().map(|p| format!("scripts not named: {p}")));
        let mut slices = setup.args.slices();
        if slices.is_some() && redis.is_none() {
            slices = None;
        }
        if redis.is_some() && slices.is_none() {
            notes.push(
                "INFO counts every client of this Redis: exact only if the load measured is all it serves".into(),
            );
        }
        Shared {
            server: setup.server,
            unit: setup.unit,
            redis_url: redis.and(redis_url),
            node_names,
            engine: setup.engine,
            cpu,
            names,
            slices,
            max_len: setup.args.slowlog_max_len,
            redis_pids,
            perf_file: setup.args.perf_redis.clone(),
            server_pid: setup.server_pid,
            notes,
        }
    }

    /// The readings that must be taken at the instant itself.
    fn mark(&self, requests: &Requests, total: Option<u64>) -> Mark {
        Mark {
            at: Instant::now(),
            proc: self.cpu.snapshot(),
            requests: total.or(match requests {
                Requests::Live(n) => Some(n.load(Ordering::Relaxed)),
                _ => None,
            }),
        }
    }

    /// A mark completed with what takes a round trip: Redis and `/metrics`.
    async fn point(&self, nodes: Option<&RedisNodes>, mark: Mark) -> Point {
        let redis = match nodes {
            Some(nodes) => nodes.counters().await,
            None => Vec::new(),
        };
        let engine = match &self.engine {
            Some(target) => Some(metrics::scrape(target).await),
            None => None,
        };
        let requests = mark
            .requests
            .or_else(|| engine.as_ref().and_then(|e| e.as_ref().ok()).map(|e| e.http_requests));
        Point {
            at: mark.at,
            proc: mark.proc,
            requests,
            redis,
            engine,
        }
    }
}

struct Mark {
    at: Instant,
    proc: Snapshot,
    requests: Option<u64>,
}

/// Every reading at one instant.
#[derive(Clone)]
struct Point {
    at: Instant,
    proc: Snapshot,
    requests: Option<u64>,
    redis: Vec<Result<NodeCounters, String>>,
    engine: Option<Result<EngineCounters, String>>,
}

/// Two points, and whether the slow log was on between them.
struct Slice {
    sampled: bool,
    from: Point,
    to: Point,
}

struct Recording {
    slices: Vec<Slice>,
    sample: Option<Sample>,
    notes: Vec<String>,
}

impl Recording {
    fn failed(why: String) -> Recording {
        Recording {
            slices: Vec::new(),
            sample: None,
            notes: vec![why],
        }
    }
}

/// The phase being measured.
pub struct CostWatch {
    probe: Arc<Shared>,
    requests: Requests,
    stop: oneshot::Sender<Mark>,
    recorded: oneshot::Receiver<Recording>,
    perf: Option<Result<PerfRecording, String>>,
}

/// The watch's thread: connects and sets the slow log up before the phase
/// (its calibration, the settings), waits for the phase, reads it, puts the
/// settings back. `None` when the probe was dropped before its phase.
async fn record(probe: Arc<Shared>, launched: oneshot::Receiver<Launch>) -> Option<Recording> {
    let mut notes = Vec::new();
    let redis = match &probe.redis_url {
        Some(url) => match RedisNodes::connect(url).await {
            Ok(nodes) => Some(nodes),
            Err(e) => {
                notes.push(format!("Redis not measured: {e}"));
                None
            }
        },
        None => None,
    };
    let mut guard = None;
    let mut logging_us = None;
    if let (Some(nodes), Some(_)) = (&redis, probe.slices) {
        match nodes.slowlog(probe.max_len).await {
            Ok(g) => {
                match g.calibrate().await {
                    Ok(us) => logging_us = Some(us),
                    Err(e) => notes.push(format!("slow log's cost not calibrated: {e}")),
                }
                guard = Some(g);
            }
            Err(e) => notes.push(format!("slow log not sampled: {e}")),
        }
    }
    let mut recording = match launched.await {
        Ok(launch) => Some(sliced(&probe, redis.as_ref(), guard.as_ref(), logging_us, launch, notes).await),
        Err(_) => None,
    };
    if let Some(guard) = guard
        && let Err(e) = guard.restore().await
        && let Some(r) = recording.as_mut()
    {
        r.notes.push(format!("slow log settings not restored: {e}"));
    }
    if let Some(nodes) = &redis {
        nodes.quit().await;
    }
    recording
}

/// The phase's readings: one slice, or slices with and without the slow log.
async fn sliced(
    probe: &Shared,
    redis: Option<&RedisNodes>,
    guard: Option<&SlowlogGuard<'_>>,
    logging_us: Option<f64>,
    launch: Launch,
    mut notes: Vec<String>,
) -> Recording {
    let guard = match (guard, &launch.requests) {
        (Some(_), Requests::AtEnd) => {
            notes.push("slow log not sampled: this run counts its units only at the end".into());
            None
        }
        (guard, _) => guard,
    };
    let mut from = probe.point(redis, launch.first).await;
    let mut edges = Edges {
        probe,
        redis,
        requests: launch.requests,
        stopped: launch.stopped,
        slices: Vec::new(),
    };
    let (Some(guard), Some((off, on))) = (guard, probe.slices) else {
        let ended = edges.wait(Duration::MAX).await;
        edges.close(from, false, ended).await;
        return Recording {
            slices: edges.slices,
            sample: None,
            notes,
        };
    };
    let mut sample = Sample {
        logging_us,
        ..Sample::default()
    };
    loop {
        let ended = edges.wait(off).await;
        let (edge, last) = edges.close(from, false, ended).await;
        if last {
            break;
        }
        // The sampler's own commands fall in the slice they serve.
        from = edge;
        if let Err(e) = guard.start().await {
            note(&mut notes, format!("slow log: {e}"));
        }
        let ended = edges.wait(on).await;
        if let Err(e) = guard.collect(&probe.names, &mut sample).await {
            note(&mut notes, format!("slow log: {e}"));
        }
        let (edge, last) = edges.close(from, true, ended).await;
        if last {
            break;
        }
        from = edge;
    }
    Recording {
        slices: edges.slices,
        sample: Some(sample),
        notes,
    }
}

/// The slices read so far, and how the next edge is read.
struct Edges<'a> {
    probe: &'a Shared,
    redis: Option<&'a RedisNodes>,
    requests: Requests,
    stopped: oneshot::Receiver<Mark>,
    slices: Vec<Slice>,
}

impl Edges<'_> {
    /// Sleeps `len`, or returns the end mark if the phase ends first (or the
    /// watch was dropped: then nothing reads the result).
    async fn wait(&mut self, len: Duration) -> Option<Mark> {
        tokio::select! {
            mark = &mut self.stopped => Some(mark.unwrap_or_else(|_| self.probe.mark(&self.requests, None))),
            () = tokio::time::sleep(len) => None,
        }
    }

    /// Ends the slice that began at `from` at `ended` (the phase's end mark)
    /// or now, and returns its end, the next one's start, and whether the
    /// phase has ended. The end mark is looked for before marking, so no
    /// edge is read after the end; one older than `from` (taken while `from`
    /// was being read, with more than one driver thread) is replaced by one
    /// taken now, a little late rather than a slice of negative length.
    async fn close(&mut self, from: Point, sampled: bool, ended: Option<Mark>) -> (Point, bool) {
        let (mark, last) = match ended {
            Some(end) => (end, true),
            None => match self.stopped.try_recv() {
                Ok(end) => (end, true),
                Err(oneshot::error::TryRecvError::Closed) => (self.probe.mark(&self.requests, None), true),
                Err(oneshot::error::TryRecvError::Empty) => (self.probe.mark(&self.requests, None), false),
            },
        };
        let mark = if mark.at < from.at {
            self.probe.mark(&self.requests, None)
        } else {
            mark
        };
        let to = self.probe.point(self.redis, mark).await;
        self.slices.push(Slice {
            sampled,
            from,
            to: to.clone(),
        });
        (to, last)
    }
}

/// A slice's growth; its problems noted once.
fn growth(probe: &Shared, s: &Slice, notes: &mut Vec<String>) -> (Growth, CpuUsage) {
    let nodes = s
        .from
        .redis
        .iter()
        .zip(&s.to.redis)
        .map(|(a, b)| match (a, b) {
            (Ok(a), Ok(b)) => Some(b.since(a)),
            (Err(e), _) | (_, Err(e)) => {
                note(notes, e.clone());
                None
            }
        })
        .collect();
    let engine = match (&s.from.engine, &s.to.engine) {
        (Some(Ok(a)), Some(Ok(b))) => Some(b.since(a)),
        (Some(Err(e)), _) | (_, Some(Err(e))) => {
            note(notes, e.clone());
            None
        }
        _ => None,
    };
    let requests = match (s.from.requests, s.to.requests) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    };
    (
        Growth {
            requests,
            secs: (s.to.at - s.from.at).as_secs_f64(),
            nodes,
            engine,
        },
        probe.cpu.usage(&s.from.proc, &s.to.proc),
    )
}

fn note(notes: &mut Vec<String>, note: String) {
    if !notes.contains(&note) {
        notes.push(note);
    }
}

impl CostWatch {
    /// Ends the phase now: `/proc` at once, the rest after. `total`: the
    /// phase's units as the driver counted them, needed when it counts them
    /// only at the end (`Requests::AtEnd`), authoritative otherwise.
    pub async fn finish(self, total: Option<u64>) -> CostReport {
        let end = self.probe.mark(&self.requests, None);
        let _ = self.stop.send(end);
        let probe = self.probe;
        let mut rec = self
            .recorded
            .await
            .unwrap_or_else(|_| Recording::failed("the cost watch ended without its readings".into()));
        let mut notes = probe.notes.clone();
        notes.append(&mut rec.notes);
        let mut slices = Vec::new();
        for s in &rec.slices {
            slices.push((s.sampled, growth(&probe, s, &mut notes)));
        }
        // The driver's total is the phase's count: with one slice, that
        // slice's; with several, what the live count had not seen at the
        // last edge goes to the last slice.
        let counted: u64 = slices.iter().map(|(_, (g, _))| g.requests).sum();
        match (total, slices.last_mut()) {
            (Some(total), Some((_, (last, _)))) if rec.slices.len() == 1 => last.requests = total,
            (Some(total), Some((_, (last, _)))) => last.requests += total.saturating_sub(counted),
            _ => {}
        }
        let sampled = rec.sample.is_some();
        let pick = |want_sampled: Option<bool>| {
            let chosen: Vec<&(bool, (Growth, CpuUsage))> = slices
                .iter()
                .filter(|(s, _)| want_sampled.is_none_or(|w| *s == w))
                .collect();
            let growth = Growth::sum(chosen.iter().map(|(_, (g, _))| g));
            let mut usage: Option<CpuUsage> = None;
            for (_, (_, u)) in &chosen {
                match usage.as_mut() {
                    Some(all) => all.add(u),
                    None => usage = Some(u.clone()),
                }
            }
            (growth, usage)
        };
        let (phase, phase_usage) = pick(None);
        let (main, main_usage) = if sampled { pick(Some(false)) } else { pick(None) };
        let sampled_part = rec.sample.map(|sample| {
            let (on, _) = pick(Some(true));
            let count = slices.iter().filter(|(s, _)| *s).count();
            (on, count, sample)
        });
        let report_of = |usage: Option<CpuUsage>, g: &Growth| {
            let usage = usage.unwrap_or_else(|| {
                let now = probe.cpu.snapshot();
                probe.cpu.usage(&now, &now)
            });
            probe.cpu.report_usage(&usage, g.requests, g.secs)
        };
        let measured = Measured {
            server: probe.server.to_owned(),
            unit: probe.unit,
            cpu: report_of(main_usage, &main),
            phase_cpu: report_of(phase_usage, &phase),
            main,
            phase,
            sampled: sampled_part,
            node_names: probe.node_names.clone(),
            script_commands: probe.names.commands.clone(),
            notes,
        };
        let mut report = report::compute(measured);
        // Stopped after the last reading: perf's own exit is not the phase's.
        let profile = match self.perf {
            Some(Ok(recording)) => Some(
                tokio::task::spawn_blocking(move || recording.finish())
                    .await
                    .unwrap_or_else(|e| Err(format!("perf's reader failed: {e}"))),
            ),
            Some(Err(e)) => Some(Err(e)),
            None => None,
        };
        match profile {
            Some(Ok(profile)) => report.redis_profile = Some(profile),
            Some(Err(e)) => report.notes.push(format!("Redis not profiled: {e}")),
            None => {}
        }
        if let Some(pid) = probe.server_pid {
            match rss::read_mapped(pid) {
                Ok(memory) => report.server_memory = Some(memory),
                Err(e) => report.notes.push(format!("{} memory not read: {e}", probe.server)),
            }
        }
        report
    }
}
