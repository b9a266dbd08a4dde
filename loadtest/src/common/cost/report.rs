//! The cost table: what a request (or an operation, a line) cost each
//! process and each script, from the counters read at the window's edges.
//! Everything here is arithmetic on those readings, so it is tested
//! without a server.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::info::{CommandStat, NodeCounters, is_script_command};
use super::metrics::EngineCounters;
use super::perf::RedisProfile;
use super::slowlog::Sample;
use crate::common::fmt::fmt_value;
use crate::common::proc::cpu_split::CpuReport;
use crate::common::proc::rss::Mapped;

/// The growth of every counter over a window (one slice, or several added).
#[derive(Debug, Clone, Default)]
pub struct Growth {
    pub requests: u64,
    pub secs: f64,
    /// Per Redis server, in the order of `Measured::node_names`; `None`
    /// where a reading failed.
    pub nodes: Vec<Option<NodeCounters>>,
    pub engine: Option<EngineCounters>,
}

impl Growth {
    /// The slices added up; the default for none.
    pub fn sum<'a>(mut slices: impl Iterator<Item = &'a Growth>) -> Growth {
        let Some(first) = slices.next() else {
            return Growth::default();
        };
        let mut all = first.clone();
        for g in slices {
            all.add(g);
        }
        all
    }

    /// Adds a later slice: a reading missing from either is missing from the sum.
    fn add(&mut self, other: &Growth) {
        self.requests += other.requests;
        self.secs += other.secs;
        for (a, b) in self.nodes.iter_mut().zip(&other.nodes) {
            match (a.as_mut(), b) {
                (Some(a), Some(b)) => a.add(b),
                _ => *a = None,
            }
        }
        match (self.engine.as_mut(), &other.engine) {
            (Some(a), Some(b)) => a.add(b),
            _ => self.engine = None,
        }
    }

    /// Every server's counters added up; `None` if one is missing.
    fn redis(&self) -> Option<NodeCounters> {
        let mut all: Option<NodeCounters> = None;
        for node in &self.nodes {
            let node = node.as_ref()?;
            match all.as_mut() {
                Some(all) => all.add(node),
                None => all = Some(node.clone()),
            }
        }
        all
    }
}

/// What the watch recorded, before any arithmetic.
pub struct Measured {
    /// `engine`, `baseline server`, `deployment`.
    pub server: String,
    /// `request`, `operation`, `line`.
    pub unit: &'static str,
    /// The window the table is about: the whole phase, or its slices
    /// without the slow log.
    pub main: Growth,
    /// The whole phase.
    pub phase: Growth,
    /// The slices with the slow log on, if any.
    pub sampled: Option<(Growth, usize, Sample)>,
    pub node_names: Vec<String>,
    /// Commands the scripts' source calls (`redis.call('x', ...)`).
    pub script_commands: BTreeSet<String>,
    pub cpu: CpuReport,
    pub phase_cpu: CpuReport,
    pub notes: Vec<String>,
}

/// Redis's time over the window, all servers or one.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisTotals {
    /// `INFO cpu`: user + sys of the process, in µs.
    pub cpu_us: Option<u64>,
    /// What clients asked for, each command once: the scripts (their inner
    /// commands inside them) and the commands sent directly; this
    /// measurement's own left out.
    pub commands: CommandStat,
    /// EVALSHA, EVAL, FCALL and their read-only forms.
    pub scripts: CommandStat,
    /// Time of the commands scripts ran (counted inside `scripts` too).
    pub inner_us: f64,
    /// Time of the commands clients sent themselves.
    pub direct_us: f64,
}

impl RedisTotals {
    /// The scripts' time beyond their inner commands: the interpreter, the
    /// arguments, the replies.
    pub fn lua_us(&self) -> f64 {
        (self.scripts.usec as f64 - self.inner_us).max(0.0)
    }
}

/// One command, over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandCost {
    pub name: String,
    pub stat: CommandStat,
    /// Share of its time spent inside scripts.
    pub inner_share: f64,
    /// Where that share comes from.
    pub share_from: &'static str,
}

/// One script, over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptCost {
    pub name: String,
    pub calls: Option<f64>,
    pub calls_from: &'static str,
    /// Requests its calls carried (the engine's batches).
    pub carried: Option<u64>,
    /// Its share of the scripts' µs, its inner commands' part of that.
    pub usec: Option<f64>,
    pub inner_usec: Option<f64>,
    /// Calls the slow log saw.
    pub sampled_calls: u64,
}

/// The slow log's part.
#[derive(Debug, Clone, PartialEq)]
pub struct SlowlogSummary {
    pub slices: usize,
    pub requests: u64,
    pub secs: f64,
    pub entries: u64,
    pub full_reads: u64,
    /// What logging each inner command adds to its script's time, as
    /// calibrated on this Redis before the phase.
    pub overhead_us: Option<f64>,
    pub stray_inner: CommandStat,
}

pub struct CostReport {
    pub server: String,
    pub unit: &'static str,
    pub requests: u64,
    pub secs: f64,
    pub phase_requests: u64,
    pub phase_secs: f64,
    pub window: String,
    pub redis: Option<RedisTotals>,
    /// Each server, when there are several.
    pub primaries: Vec<(String, Option<RedisTotals>)>,
    pub commands: Vec<CommandCost>,
    pub scripts: Vec<ScriptCost>,
    pub script_method: String,
    pub flushed_events: Option<u64>,
    pub cpu: CpuReport,
    pub phase_cpu: CpuReport,
    pub slowlog: Option<SlowlogSummary>,
    /// Redis's CPU split by what it was doing (`--perf-redis`).
    pub redis_profile: Option<RedisProfile>,
    /// The server's memory at the end of the phase (`--server-pid`).
    pub server_memory: Option<Mapped>,
    pub notes: Vec<String>,
}

/// Commands this measurement sends itself: left out of the commands' time.
fn own_command(name: &str) -> bool {
    name == "info" || name.starts_with("config|") || name.starts_with("slowlog|") || name == "cluster|slots"
}

/// The share of each command's time spent in scripts: what the slow log saw
/// of it, else 1 for a command the scripts' source calls, else 0.
fn share_of(name: &str, sample: Option<&Sample>, source: &BTreeSet<String>) -> (f64, &'static str) {
    if let Some(share) = sample.and_then(|s| s.inner_share(name)) {
        return (share, "slow log");
    }
    if source.contains(name) {
        (1.0, "scripts' source")
    } else {
        (0.0, "")
    }
}

fn totals(c: &NodeCounters, sample: Option<&Sample>, source: &BTreeSet<String>) -> RedisTotals {
    let mut t = RedisTotals {
        cpu_us: c.cpu_us,
        commands: CommandStat::default(),
        scripts: c.scripts(),
        inner_us: 0.0,
        direct_us: 0.0,
    };
    let mut direct_calls = 0.0;
    for (name, stat) in &c.commands {
        if own_command(name) || is_script_command(name) {
            continue;
        }
        let (share, _) = share_of(name, sample, source);
        t.inner_us += share * stat.usec as f64;
        t.direct_us += (1.0 - share) * stat.usec as f64;
        direct_calls += (1.0 - share) * stat.calls as f64;
    }
    t.commands = CommandStat {
        calls: t.scripts.calls + direct_calls.round() as u64,
        usec: t.scripts.usec + t.direct_us.round() as u64,
    };
    t
}

/// Per-script µs: each script's share of the slow log's script time, less
/// what logging its inner commands added, applied to the window's measured
/// script time.
fn attribute(m: &Measured, redis: Option<&RedisTotals>) -> (Vec<ScriptCost>, String, Option<SlowlogSummary>) {
    let engine = m.main.engine.as_ref();
    let sample = m.sampled.as_ref();
    let mut names: BTreeSet<String> = engine
        .map(|e| {
            e.script_calls
                .iter()
                .filter(|(_, calls)| **calls > 0)
                .map(|(name, _)| name.clone())
                .collect()
        })
        .unwrap_or_default();
    if engine.is_some_and(|e| e.flush_batches > 0) {
        names.insert(super::metrics::FLUSH_SCRIPT.to_owned());
    }
    if let Some((_, _, s)) = sample {
        names.extend(s.scripts.keys().cloned());
    }

    // What the log added per inner command, as calibrated before the phase.
    let mut summary = None;
    let mut overhead = 0.0;
    if let Some((on, slices, s)) = sample {
        overhead = s.logging_us.unwrap_or(0.0);
        summary = Some(SlowlogSummary {
            slices: *slices,
            requests: on.requests,
            secs: on.secs,
            entries: s.entries,
            full_reads: s.full_reads,
            overhead_us: s.logging_us,
            stray_inner: s.stray_inner,
        });
    }
    // Each script's sampled time without the log's own part, and its inner part.
    let corrected: BTreeMap<&str, (f64, f64)> = sample
        .map(|(_, _, s)| {
            s.scripts
                .iter()
                .map(|(name, x)| {
                    let inner = x.inner_total();
                    let own = (x.usec as f64 - overhead * inner.calls as f64).max(inner.usec as f64);
                    (name.as_str(), (own, inner.usec as f64))
                })
                .collect()
        })
        .unwrap_or_default();
    let sampled_total: f64 = corrected.values().map(|(own, _)| own).sum();
    let sampled_calls: u64 = sample.map_or(0, |(_, _, s)| s.scripts_total().calls);

    let scripts = names
        .into_iter()
        .map(|name| {
            let seen = sample.and_then(|(_, _, s)| s.scripts.get(&name));
            let (calls, calls_from) = match (engine.and_then(|e| e.calls_of(&name)), seen, redis) {
                (Some(calls), _, _) => (
                    Some(calls as f64),
                    if name == super::metrics::FLUSH_SCRIPT {
                        "engine /metrics (flush batches)"
                    } else {
                        "engine /metrics"
                    },
                ),
                (None, Some(seen), Some(r)) if sampled_calls > 0 => (
                    Some(r.scripts.calls as f64 * seen.calls as f64 / sampled_calls as f64),
                    "commandstats x slow log share",
                ),
                _ => (None, ""),
            };
            let (usec, inner_usec) = match (corrected.get(name.as_str()), redis) {
                (Some((own, inner)), Some(r)) if sampled_total > 0.0 => {
                    let usec = r.scripts.usec as f64 * own / sampled_total;
                    (Some(usec), Some(usec * inner / own.max(f64::MIN_POSITIVE)))
                }
                _ => (None, None),
            };
            ScriptCost {
                carried: engine.and_then(|e| e.script_requests.get(&name).copied()),
                sampled_calls: seen.map_or(0, |s| s.calls),
                name,
                calls,
                calls_from,
                usec,
                inner_usec,
            }
        })
        .collect();
    let method = match &summary {
        Some(_) => "µs: the window's script µs (commandstats) split by each script's share of the slow log's, \
                    less what logging its inner commands cost"
            .to_owned(),
        None => "µs: not split by script (the slow log is sampled only on a Redis the run may reconfigure: \
                 --slowlog-sample)"
            .to_owned(),
    };
    (scripts, method, summary)
}

/// The table from the readings.
pub fn compute(m: Measured) -> CostReport {
    let sample = m.sampled.as_ref().map(|(_, _, s)| s);
    let redis = m.main.redis().map(|c| totals(&c, sample, &m.script_commands));
    let primaries = if m.node_names.len() > 1 {
        m.node_names
            .iter()
            .zip(&m.main.nodes)
            .map(|(name, c)| (name.clone(), c.as_ref().map(|c| totals(c, sample, &m.script_commands))))
            .collect()
    } else {
        Vec::new()
    };
    let mut commands: Vec<CommandCost> = m
        .main
        .redis()
        .map(|c| {
            c.commands
                .into_iter()
                .filter(|(name, _)| !own_command(name))
                .map(|(name, stat)| {
                    let (inner_share, share_from) = if is_script_command(&name) {
                        (0.0, "")
                    } else {
                        share_of(&name, sample, &m.script_commands)
                    };
                    CommandCost {
                        name,
                        stat,
                        inner_share,
                        share_from,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    commands.sort_by(|a, b| b.stat.usec.cmp(&a.stat.usec).then(a.name.cmp(&b.name)));
    let (scripts, script_method, slowlog) = attribute(&m, redis.as_ref());
    let mut notes = m.notes;
    // commandstats and the slow log time a command by the wall clock.
    if let Some(t) = &redis
        && let Some(cpu) = t.cpu_us
        && t.commands.usec as f64 > WALL_OVER_CPU_NOTED * cpu as f64
    {
        notes.push(format!(
            "Redis's commands took {:.0}% of its CPU time in wall time: it waited for a CPU in the middle of \
             them (the machine was busy), so the commands' µs are inflated; read their shares",
            100.0 * t.commands.usec as f64 / cpu as f64
        ));
    }
    let window = match &slowlog {
        Some(s) => format!(
            "the phase without its {} slow-log slices ({:.2} s of {:.2} s)",
            s.slices, m.main.secs, m.phase.secs
        ),
        None => "the whole phase".into(),
    };
    CostReport {
        server: m.server,
        unit: m.unit,
        requests: m.main.requests,
        secs: m.main.secs,
        phase_requests: m.phase.requests,
        phase_secs: m.phase.secs,
        window,
        redis,
        primaries,
        commands,
        scripts,
        script_method: format!(
            "calls: engine /metrics where it counts the script, else commandstats split by the slow log; {script_method}"
        ),
        flushed_events: m.main.engine.as_ref().map(|e| e.flushed_events),
        cpu: m.cpu,
        phase_cpu: m.phase_cpu,
        slowlog,
        redis_profile: None,
        server_memory: None,
        notes,
    }
}

/// Commands' wall time above Redis's CPU time by this factor is worth a
/// note: Redis's own network and event loop alone keep it below.
const WALL_OVER_CPU_NOTED: f64 = 1.1;

/// How many commands the table names by name, the rest summed.
const COMMANDS_LISTED: usize = 6;

impl CostReport {
    /// `x` per unit of the window.
    fn per(&self, x: f64) -> Option<f64> {
        (self.requests > 0).then(|| x / self.requests as f64)
    }

    fn cpu_us(&self, role: &str) -> Option<f64> {
        self.cpu
            .rows
            .iter()
            .find(|r| r.role == role)
            .and_then(|r| r.us_per_request)
    }

    /// Postgres CPU per event the flusher wrote in the window.
    pub fn postgres_us_per_flushed_event(&self) -> Option<f64> {
        let secs = self.cpu.rows.iter().find(|r| r.role == "postgres")?.cpu_secs?;
        let events = self.flushed_events.filter(|e| *e > 0)?;
        Some(secs * 1e6 / events as f64)
    }

    fn redis_json(&self, t: &RedisTotals) -> Value {
        json!({
            "cpu_us": t.cpu_us.and_then(|c| self.per(c as f64)),
            "commands_us": self.per(t.commands.usec as f64),
            "commands_calls": self.per(t.commands.calls as f64),
            "scripts_us": self.per(t.scripts.usec as f64),
            "script_calls": self.per(t.scripts.calls as f64),
            "inner_us": self.per(t.inner_us),
            "lua_us": self.per(t.lua_us()),
            "direct_us": self.per(t.direct_us),
        })
    }

    pub fn to_json(&self) -> Value {
        let scripts: Vec<Value> = self
            .scripts
            .iter()
            .map(|s| {
                json!({
                    "script": s.name,
                    "calls_per_unit": s.calls.and_then(|c| self.per(c)),
                    "calls_from": s.calls_from,
                    "requests_per_call": s.carried.zip(s.calls).filter(|(_, c)| *c > 0.0).map(|(r, c)| r as f64 / c),
                    "us_per_unit": s.usec.and_then(|u| self.per(u)),
                    "us_per_call": s.usec.zip(s.calls).filter(|(_, c)| *c > 0.0).map(|(u, c)| u / c),
                    "inner_us_per_unit": s.inner_usec.and_then(|u| self.per(u)),
                    "lua_us_per_unit": s.usec.zip(s.inner_usec).and_then(|(u, i)| self.per(u - i)),
                    "sampled_calls": s.sampled_calls,
                })
            })
            .collect();
        let commands: Vec<Value> = self
            .commands
            .iter()
            .map(|c| {
                json!({
                    "command": c.name,
                    "calls_per_unit": self.per(c.stat.calls as f64),
                    "us_per_unit": self.per(c.stat.usec as f64),
                    "inner_share": c.inner_share,
                    "inner_share_from": c.share_from,
                })
            })
            .collect();
        json!({
            "server": self.server,
            "unit": self.unit,
            "requests": self.requests,
            "secs": self.secs,
            "phase_requests": self.phase_requests,
            "phase_secs": self.phase_secs,
            "window": self.window,
            "redis": self.redis.as_ref().map(|t| self.redis_json(t)),
            "primaries": self.primaries.iter().map(|(name, t)| json!({
                "node": name,
                "redis": t.as_ref().map(|t| self.redis_json(t)),
            })).collect::<Vec<_>>(),
            "commands": commands,
            "scripts": scripts,
            "script_method": self.script_method,
            "flushed_events": self.flushed_events,
            "postgres_us_per_flushed_event": self.postgres_us_per_flushed_event(),
            "cpu": self.cpu.to_json(),
            "slowlog": self.slowlog.as_ref().map(|s| json!({
                "slices": s.slices,
                "requests": s.requests,
                "secs": s.secs,
                "entries": s.entries,
                "full_reads": s.full_reads,
                "overhead_us_per_inner_command": s.overhead_us,
                "stray_inner_calls": s.stray_inner.calls,
            })),
            "redis_profile": self.redis_profile.as_ref().map(|p| p.to_json(self.redis_cpu_per_unit())),
            "server_memory": self.server_memory.map(|m| json!({"rss_kib": m.rss_kib, "anon_huge_kib": m.anon_huge_kib})),
            "notes": self.notes,
        })
    }

    /// The commands of `pick`, most time first, the rest summed.
    fn command_list(&self, pick: impl Fn(&CommandCost) -> f64) -> String {
        let mut parts: Vec<(String, f64)> = self
            .commands
            .iter()
            .map(|c| (c.name.clone(), pick(c) * c.stat.usec as f64))
            .filter(|(_, us)| *us > 0.0)
            .collect();
        parts.sort_by(|a, b| b.1.total_cmp(&a.1));
        let rest: f64 = parts.iter().skip(COMMANDS_LISTED).map(|(_, us)| us).sum();
        let mut out: Vec<String> = parts
            .iter()
            .take(COMMANDS_LISTED)
            .map(|(name, us)| format!("{name} {}", fmt_value(self.per(*us))))
            .collect();
        if rest > 0.0 {
            out.push(format!("others {}", fmt_value(self.per(rest))));
        }
        out.join(", ")
    }

    pub fn print_human(&self) {
        let unit = self.unit;
        println!(
            "cost per {unit} ({}; {} {unit}s in {:.3} s: {})",
            self.server, self.requests, self.secs, self.window
        );
        if self.requests == 0 {
            println!("  no {unit} in the window: nothing to divide by");
            return;
        }
        let row = |label: &str, v: Option<f64>, note: &str| {
            println!("  {label:<34}{:>9}  {note}", fmt_value(v));
        };
        match &self.redis {
            Some(t) => {
                row("redis CPU (INFO cpu)", t.cpu_us.and_then(|c| self.per(c as f64)), "");
                row(
                    "redis commands (commandstats)",
                    self.per(t.commands.usec as f64),
                    &format!(
                        "{} calls/{unit}, each once (scripts with their inner commands)",
                        fmt_value(self.per(t.commands.calls as f64))
                    ),
                );
                row(
                    "  scripts (evalsha, eval, fcall)",
                    self.per(t.scripts.usec as f64),
                    &format!("{} calls/{unit}", fmt_value(self.per(t.scripts.calls as f64))),
                );
                row(
                    "    inner commands",
                    self.per(t.inner_us),
                    &self.command_list(|c| c.inner_share),
                );
                row("    Lua itself", self.per(t.lua_us()), "scripts - inner commands");
                row(
                    "  commands sent by clients",
                    self.per(t.direct_us),
                    &self.command_list(|c| {
                        if is_script_command(&c.name) {
                            0.0
                        } else {
                            1.0 - c.inner_share
                        }
                    }),
                );
            }
            None => println!("  redis                             -  (not measured)"),
        }
        for role in ["server", "redis", "postgres"] {
            let label = match role {
                "server" => format!("{} CPU (/proc)", self.server),
                other => format!("{other} CPU (/proc)"),
            };
            let note = match role {
                "postgres" => match (self.postgres_us_per_flushed_event(), self.flushed_events) {
                    (Some(us), Some(events)) => format!("= {us:.1} µs per flushed event ({events} events)"),
                    _ => "per flushed event: - (no event flushed in the window)".into(),
                },
                _ => String::new(),
            };
            row(&label, self.cpu_us(role), &note);
        }
        if let Some(m) = self.server_memory {
            println!(
                "  {:<34}{:>9.1}  MiB resident at the end, {:.1} MiB of it in transparent huge pages{}",
                format!("{} memory", self.server),
                m.rss_kib as f64 / 1024.0,
                m.anon_huge_kib as f64 / 1024.0,
                if m.anon_huge_kib > 0 {
                    " (each first touch zeroes 2 MiB: docs/operations.md, MIMALLOC_ALLOW_THP)"
                } else {
                    ""
                }
            );
        }
        if self.scripts.is_empty() {
            println!("  per script: no script call in the window");
        } else {
            println!("  per script ({}):", self.script_method);
            println!(
                "    {:<18}{:>11}{:>10}{:>10}{:>10}{:>12}{:>10}",
                "script",
                format!("calls/{}", short(unit)),
                "req/call",
                "µs/call",
                format!("µs/{}", short(unit)),
                "inner µs",
                "Lua µs"
            );
            for s in &self.scripts {
                let per_call = s.usec.zip(s.calls).filter(|(_, c)| *c > 0.0).map(|(u, c)| u / c);
                let carried = s
                    .carried
                    .zip(s.calls)
                    .filter(|(_, c)| *c > 0.0)
                    .map(|(r, c)| r as f64 / c);
                println!(
                    "    {:<18}{:>11}{:>10}{:>10}{:>10}{:>12}{:>10}",
                    s.name,
                    fmt_value(s.calls.and_then(|c| self.per(c))),
                    fmt_value(carried),
                    fmt_value(per_call),
                    fmt_value(s.usec.and_then(|u| self.per(u))),
                    fmt_value(s.inner_usec.and_then(|u| self.per(u))),
                    fmt_value(s.usec.zip(s.inner_usec).and_then(|(u, i)| self.per(u - i))),
                );
            }
        }
        if let Some(s) = &self.slowlog {
            let rate = |n: u64, secs: f64| if secs > 0.0 { Some(n as f64 / secs) } else { None };
            println!(
                "  slow log: {} slices, {:.2} s ({} {unit}s/s in them, {} outside), {} entries{}; logging cost {} µs per \
                 inner command",
                s.slices,
                s.secs,
                fmt_value(rate(s.requests, s.secs)),
                fmt_value(rate(self.requests, self.secs)),
                s.entries,
                if s.full_reads > 0 {
                    format!(" (the log was full in {} reads: raise --slowlog-max-len)", s.full_reads)
                } else {
                    String::new()
                },
                fmt_value(s.overhead_us),
            );
        }
        if !self.primaries.is_empty() {
            println!("  per primary (µs/{unit}):");
            println!(
                "    {:<24}{:>10}{:>10}{:>10}{:>14}",
                "node", "CPU", "commands", "scripts", "script calls"
            );
            for (name, t) in &self.primaries {
                match t {
                    Some(t) => println!(
                        "    {name:<24}{:>10}{:>10}{:>10}{:>14}",
                        fmt_value(t.cpu_us.and_then(|c| self.per(c as f64))),
                        fmt_value(self.per(t.commands.usec as f64)),
                        fmt_value(self.per(t.scripts.usec as f64)),
                        fmt_value(self.per(t.scripts.calls as f64)),
                    ),
                    None => println!("    {name:<24}  not read"),
                }
            }
        }
        if let Some(profile) = &self.redis_profile {
            profile.print_human(unit, self.redis_cpu_per_unit());
        }
        for note in &self.notes {
            println!("  note: {note}");
        }
    }

    /// Redis's CPU per unit (`INFO cpu`), which a profile's shares split.
    fn redis_cpu_per_unit(&self) -> Option<f64> {
        self.redis
            .as_ref()
            .and_then(|t| t.cpu_us)
            .and_then(|c| self.per(c as f64))
    }
}

fn short(unit: &str) -> &str {
    match unit {
        "request" => "req",
        "operation" => "op",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::cost::slowlog::ScriptSample;
    use crate::common::proc::cpu_split::{Watched, split};

    fn counters(cpu_us: u64, commands: &[(&str, u64, u64)]) -> NodeCounters {
        NodeCounters {
            cpu_us: Some(cpu_us),
            commands: commands
                .iter()
                .map(|(n, calls, usec)| {
                    (
                        n.to_string(),
                        CommandStat {
                            calls: *calls,
                            usec: *usec,
                        },
                    )
                })
                .collect(),
        }
    }

    fn cpu() -> CpuReport {
        let watched: Vec<Watched> = ["server", "redis", "postgres", "driver"]
            .map(|role| Watched {
                role,
                probe: None,
                source: String::new(),
            })
            .into();
        // postgres: 0.5 s.
        split(
            &watched,
            &[Some(100), Some(80), Some(50), Some(10)],
            Some(300),
            None,
            1000,
            1.0,
        )
    }

    fn engine(calls: &[(&str, u64, u64)], flush_batches: u64, flushed_events: u64) -> EngineCounters {
        EngineCounters {
            script_calls: calls.iter().map(|(n, c, _)| (n.to_string(), *c)).collect(),
            script_requests: calls.iter().map(|(n, _, r)| (n.to_string(), *r)).collect(),
            flush_batches,
            flushed_events,
            http_requests: 0,
        }
    }

    fn sample() -> Sample {
        let mut s = Sample::default();
        let script = |calls, usec, inner: &[(&str, u64, u64)]| ScriptSample {
            calls,
            usec,
            inner: inner
                .iter()
                .map(|(n, c, u)| (n.to_string(), CommandStat { calls: *c, usec: *u }))
                .collect(),
        };
        // purchase: 10 calls, 3000 µs, of which hset 500; checkout 10 calls, 1000 µs, of which hget 200.
        s.scripts
            .insert("purchase".into(), script(10, 3000, &[("hset", 100, 500)]));
        s.scripts
            .insert("checkout".into(), script(10, 1000, &[("hget", 100, 200)]));
        s.direct.insert("xreadgroup".into(), CommandStat { calls: 5, usec: 50 });
        s.direct.insert("hget".into(), CommandStat { calls: 10, usec: 50 });
        s.entries = 235;
        s
    }

    fn measured(sampled: Option<(Growth, usize, Sample)>) -> Measured {
        let main = Growth {
            requests: 1000,
            secs: 1.0,
            nodes: vec![
                Some(counters(
                    30_000,
                    &[
                        ("evalsha", 100, 16_000),
                        ("hset", 1000, 2000),
                        ("hget", 1000, 1000),
                        ("xreadgroup", 50, 500),
                        ("info", 4, 400),
                    ],
                )),
                Some(counters(10_000, &[("evalsha", 100, 4_000)])),
            ],
            engine: Some(engine(
                &[("purchase", 100, 500), ("checkout", 100, 500), ("order_create", 0, 0)],
                20,
                1000,
            )),
        };
        Measured {
            server: "engine".into(),
            unit: "request",
            phase: main.clone(),
            main,
            sampled,
            node_names: vec!["a:1".into(), "b:2".into()],
            script_commands: ["hset", "hget"].map(String::from).into(),
            cpu: cpu(),
            phase_cpu: cpu(),
            notes: Vec::new(),
        }
    }

    #[test]
    fn without_the_slow_log_calls_but_no_split_by_script() {
        let r = compute(measured(None));
        let t = r.redis.as_ref().unwrap();
        assert_eq!(t.cpu_us, Some(40_000));
        assert_eq!(
            t.scripts,
            CommandStat {
                calls: 200,
                usec: 20_000
            }
        );
        // INFO is this measurement's own; hset and hget are in the scripts'
        // source, so inside the scripts' time already.
        assert_eq!(
            t.commands,
            CommandStat {
                calls: 250,
                usec: 20_500
            }
        );
        assert_eq!((t.inner_us, t.direct_us, t.lua_us()), (3000.0, 500.0, 17_000.0));
        assert_eq!(r.primaries.len(), 2);
        let names: Vec<&str> = r.scripts.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["checkout", "outbox_ack", "purchase"],
            "scripts never called are left out"
        );
        let p = &r.scripts[2];
        assert_eq!((p.calls, p.carried, p.usec), (Some(100.0), Some(500), None));
        assert_eq!(r.scripts[1].calls_from, "engine /metrics (flush batches)");
        assert!(r.script_method.contains("not split by script"));
        // 0.5 s of Postgres over 1000 flushed events.
        assert_eq!(r.postgres_us_per_flushed_event(), Some(500.0));
        let j = r.to_json();
        assert_eq!(j["redis"]["cpu_us"], 40.0);
        assert_eq!(j["redis"]["scripts_us"], 20.0);
        assert_eq!(j["scripts"][2]["calls_per_unit"], 0.1);
        assert_eq!(j["scripts"][2]["requests_per_call"], 5.0);
        assert!(j["scripts"][2]["us_per_unit"].is_null());
        assert_eq!(j["primaries"][1]["redis"]["scripts_us"], 4.0);
        assert_eq!(j["postgres_us_per_flushed_event"], 500.0);
        assert!(r.notes.is_empty());
        // The commands' wall time well above the CPU time: a note says why.
        let mut m = measured(None);
        m.main.nodes[0].as_mut().unwrap().cpu_us = Some(10_000);
        m.main.nodes[1].as_mut().unwrap().cpu_us = Some(0);
        let r = compute(m);
        assert!(r.notes.iter().any(|n| n.contains("waited for a CPU")), "{:?}", r.notes);
    }

    #[test]
    fn the_slow_log_splits_the_measured_script_time() {
        let on = Growth {
            requests: 200,
            secs: 0.2,
            nodes: vec![Some(counters(9000, &[("evalsha", 20, 2200)])), Some(counters(0, &[]))],
            engine: None,
        };
        // Logging each inner command added 1 µs to its script's time.
        let logged = Sample {
            logging_us: Some(1.0),
            ..sample()
        };
        let r = compute(measured(Some((on, 2, logged))));
        let s = r.slowlog.as_ref().unwrap();
        assert_eq!(s.overhead_us, Some(1.0));
        // Without the log: purchase 3000 - 100 = 2900 µs, checkout 1000 - 100 = 900 µs.
        let p = r.scripts.iter().find(|s| s.name == "purchase").unwrap();
        let c = r.scripts.iter().find(|s| s.name == "checkout").unwrap();
        let total = 20_000.0;
        assert!((p.usec.unwrap() - total * 2900.0 / 3800.0).abs() < 1e-6);
        assert!((c.usec.unwrap() - total * 900.0 / 3800.0).abs() < 1e-6);
        assert!((p.inner_usec.unwrap() - p.usec.unwrap() * 500.0 / 2900.0).abs() < 1e-6);
        assert_eq!(p.sampled_calls, 10);
        // hget: the log saw 200 µs inside scripts and 50 µs sent directly.
        let t = r.redis.as_ref().unwrap();
        assert!((t.inner_us - (2000.0 + 1000.0 * 0.8)).abs() < 1e-6);
        let hget = r.commands.iter().find(|c| c.name == "hget").unwrap();
        assert_eq!((hget.inner_share, hget.share_from), (0.8, "slow log"));
        assert!(r.window.contains("without its 2 slow-log slices"));
        assert!(r.script_method.contains("share of the slow log's"));
        let j = r.to_json();
        assert_eq!(j["slowlog"]["entries"], 235);
        assert!(j["scripts"][2]["us_per_call"].as_f64().unwrap() > 0.0);
    }

    #[test]
    fn growth_adds_slices_and_loses_a_node_it_could_not_read() {
        let a = Growth {
            requests: 10,
            secs: 0.5,
            nodes: vec![Some(counters(5, &[("get", 1, 1)])), Some(counters(1, &[]))],
            engine: Some(engine(&[("purchase", 2, 4)], 1, 3)),
        };
        let b = Growth {
            requests: 5,
            secs: 0.25,
            nodes: vec![Some(counters(5, &[("get", 1, 1)])), None],
            engine: Some(engine(&[("purchase", 1, 1)], 0, 2)),
        };
        let sum = Growth::sum([&a, &b].into_iter());
        assert_eq!((sum.requests, sum.secs), (15, 0.75));
        assert_eq!(sum.nodes[0].as_ref().unwrap().cpu_us, Some(10));
        assert!(sum.nodes[1].is_none());
        assert!(sum.redis().is_none(), "a sum over the servers needs every server");
        let e = sum.engine.unwrap();
        assert_eq!((e.script_calls["purchase"], e.flushed_events), (3, 5));
        assert_eq!(Growth::sum([&b].into_iter()).requests, 5);
        assert_eq!(Growth::sum(std::iter::empty()).requests, 0);
        let no_engine = Growth {
            engine: None,
            ..b.clone()
        };
        assert!(Growth::sum([&a, &no_engine].into_iter()).engine.is_none());
    }
}
