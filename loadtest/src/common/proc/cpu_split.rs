//! CPU per request of the processes a sale run involves: the server under
//! test (the engine or the baseline server), Redis, Postgres and the driver
//! itself, from `/proc` readings taken when the measured phase starts (all
//! connections up, barrier released) and when it ends (every connection
//! task done). What the machine spent beyond those four is `other`: other
//! sessions' builds and tests, the kernel's softirqs, anything else.
//!
//! Processes are found before the load: the server by the pid it is given,
//! Redis by `INFO server`'s `process_id` (of every primary of a cluster:
//! their sum), Postgres by the postmaster pid in
//! `<data_directory>/postmaster.pid`. Redis and Postgres are counted as
//! process trees (see `cpu::tree_ticks`): a backend that exits during the
//! phase still counts. Without the postmaster pid, every process named
//! `postgres` is summed instead.
//!
//! Readings can be taken at any number of instants: the CPU between two of
//! them is a [`CpuUsage`], and usages add up, so a window made of several
//! slices (see `common::cost`) is reported like one.

use serde_json::{Map, Value, json};
use sqlx::PgConnection;

use crate::common::proc::cpu::{self, MachineCpu, ProcStat, USER_HZ};

/// How a watched process (or group) is found in the process table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Processes and their direct children, summed (one for a server, one
    /// per primary for a Redis Cluster whose nodes run here).
    Trees(Vec<u32>),
    /// Every process of that name.
    Named(&'static str),
}

impl Probe {
    fn ticks(&self, table: &[(u32, ProcStat)]) -> Option<u64> {
        match self {
            Probe::Trees(pids) => pids.iter().map(|pid| cpu::tree_ticks(*pid, table)).sum(),
            Probe::Named(comm) => Some(cpu::named_ticks(comm, table)),
        }
    }
}

/// One watched process: its role, how it is found and how it was found.
#[derive(Debug, Clone)]
pub struct Watched {
    pub role: &'static str,
    pub probe: Option<Probe>,
    /// "pid 123 (stampede)", or why it is not measured.
    pub source: String,
}

/// Readings at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    ticks: Vec<Option<u64>>,
    machine: Option<MachineCpu>,
}

pub struct CpuSplit {
    watched: Vec<Watched>,
}

/// `process_id` from the text of `INFO server`.
pub fn parse_info_pid(info: &str) -> Option<u32> {
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The postmaster's pid: the first line of `postmaster.pid`.
pub fn parse_postmaster_pid(text: &str) -> Option<u32> {
    text.lines().next().and_then(|l| l.trim().parse().ok())
}

fn comm_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_string())
}

/// The process trees rooted at `pids` if they all run here and their names
/// pass `expect`.
fn local_trees(role: &'static str, pids: &[u32], how: &str, expect: impl Fn(&str) -> bool) -> Watched {
    let mut names = Vec::new();
    for &pid in pids {
        match comm_of(pid) {
            Some(comm) if expect(&comm) => names.push(format!("pid {pid} ({comm})")),
            Some(comm) => {
                return Watched {
                    role,
                    probe: None,
                    source: format!("{how} gave pid {pid}, but that process here is {comm:?}: not measured"),
                };
            }
            None => {
                return Watched {
                    role,
                    probe: None,
                    source: format!("{how} gave pid {pid}, which is not a process of this machine: not measured"),
                };
            }
        }
    }
    if names.is_empty() {
        return Watched {
            role,
            probe: None,
            source: format!("{how} gave no pid: not measured"),
        };
    }
    Watched {
        role,
        probe: Some(Probe::Trees(pids.to_vec())),
        source: format!(
            "{} and {}, {how}",
            names.join(", "),
            if pids.len() == 1 {
                "its children"
            } else {
                "their children"
            }
        ),
    }
}

impl CpuSplit {
    /// Finds the processes. Each argument may be missing; that role is then
    /// reported as not measured. `redis`: the pids `INFO server` gave, one
    /// per primary, or why there are none.
    pub async fn discover(
        server_pid: Option<u32>,
        redis: Option<Result<Vec<u32>, String>>,
        pg: Option<&mut PgConnection>,
    ) -> CpuSplit {
        let server = match server_pid {
            Some(pid) => match comm_of(pid) {
                Some(comm) => Watched {
                    role: "server",
                    probe: Some(Probe::Trees(vec![pid])),
                    source: format!("pid {pid} ({comm}), --server-pid"),
                },
                None => Watched {
                    role: "server",
                    probe: None,
                    source: format!("--server-pid {pid} is not a running process: not measured"),
                },
            },
            None => Watched {
                role: "server",
                probe: None,
                source: "no --server-pid: not measured".into(),
            },
        };
        let redis = match redis {
            None => Watched {
                role: "redis",
                probe: None,
                source: "no Redis connection: not measured".into(),
            },
            Some(pids) => match pids {
                Ok(pids) => local_trees("redis", &pids, "INFO server", |c| c.starts_with("redis")),
                Err(e) => Watched {
                    role: "redis",
                    probe: None,
                    source: format!("{e}: not measured"),
                },
            },
        };
        let postgres = match pg {
            None => Watched {
                role: "postgres",
                probe: None,
                source: "no Postgres connection: not measured".into(),
            },
            Some(conn) => match postmaster_pid(conn).await {
                Ok((pid, file)) => local_trees("postgres", &[pid], &file, |c| c == "postgres"),
                Err(e) => Watched {
                    role: "postgres",
                    probe: Some(Probe::Named("postgres")),
                    source: format!("every process named postgres ({e})"),
                },
            },
        };
        let me = std::process::id();
        let driver = Watched {
            role: "driver",
            probe: Some(Probe::Trees(vec![me])),
            source: format!("pid {me} (this driver)"),
        };
        CpuSplit {
            watched: vec![server, redis, postgres, driver],
        }
    }

    /// Reads every watched process and the machine. About a millisecond:
    /// one pass over `/proc`.
    pub fn snapshot(&self) -> Snapshot {
        let table = cpu::process_table().unwrap_or_default();
        Snapshot {
            ticks: self
                .watched
                .iter()
                .map(|w| w.probe.as_ref().and_then(|p| p.ticks(&table)))
                .collect(),
            machine: cpu::machine().ok(),
        }
    }

    /// CPU between two snapshots.
    pub fn usage(&self, before: &Snapshot, after: &Snapshot) -> CpuUsage {
        let used = before
            .ticks
            .iter()
            .zip(&after.ticks)
            .map(|(b, a)| a.zip(*b).and_then(|(a, b)| a.checked_sub(b)))
            .collect();
        let machine = match (before.machine, after.machine) {
            (Some(b), Some(a)) => a
                .busy
                .checked_sub(b.busy)
                .zip(a.total.checked_sub(b.total))
                .map(|(busy, total)| MachineCpu { busy, total }),
            _ => None,
        };
        CpuUsage { used, machine }
    }

    /// A usage (one slice or several added up), per role and per request.
    pub fn report_usage(&self, usage: &CpuUsage, requests: u64, phase_secs: f64) -> CpuReport {
        let busy_share = usage
            .machine
            .filter(|m| m.total > 0)
            .map(|m| m.busy as f64 / m.total as f64);
        split(
            &self.watched,
            &usage.used,
            usage.machine.map(|m| m.busy),
            busy_share,
            requests,
            phase_secs,
        )
    }
}

/// Ticks each watched role used between two snapshots, and the machine's
/// busy and total ticks; `None` where a reading is missing.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuUsage {
    used: Vec<Option<u64>>,
    machine: Option<MachineCpu>,
}

impl CpuUsage {
    /// Adds another slice of the same `CpuSplit`: a role missing from
    /// either is missing from the sum.
    pub fn add(&mut self, other: &CpuUsage) {
        for (a, b) in self.used.iter_mut().zip(&other.used) {
            *a = a.zip(*b).map(|(a, b)| a + b);
        }
        self.machine = self.machine.zip(other.machine).map(|(a, b)| MachineCpu {
            busy: a.busy + b.busy,
            total: a.total + b.total,
        });
    }
}

async fn postmaster_pid(conn: &mut PgConnection) -> Result<(u32, String), String> {
    let dir: String = sqlx::query_scalar("SHOW data_directory")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| format!("SHOW data_directory: {e}"))?;
    let file = format!("{dir}/postmaster.pid");
    let text = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {file}: {e}"))?;
    let pid = parse_postmaster_pid(&text).ok_or_else(|| format!("no pid in {file}"))?;
    Ok((pid, file))
}

/// One role's share of the phase.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuRow {
    pub role: &'static str,
    pub source: String,
    pub cpu_secs: Option<f64>,
    pub us_per_request: Option<f64>,
}

/// CPU over the measured phase.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuReport {
    pub requests: u64,
    pub phase_secs: f64,
    /// server, redis, postgres, driver, then other (machine busy time not in
    /// the four) and machine (all busy time).
    pub rows: Vec<CpuRow>,
    pub machine_busy_share: Option<f64>,
}

fn ticks_secs(ticks: u64) -> f64 {
    ticks as f64 / USER_HZ as f64
}

fn per_request(secs: Option<f64>, requests: u64) -> Option<f64> {
    secs.filter(|_| requests > 0).map(|s| s * 1e6 / requests as f64)
}

/// The pure part of `CpuSplit::report`: ticks used per watched process and
/// by the whole machine, to seconds and microseconds per request.
pub fn split(
    watched: &[Watched],
    used: &[Option<u64>],
    machine_busy: Option<u64>,
    machine_busy_share: Option<f64>,
    requests: u64,
    phase_secs: f64,
) -> CpuReport {
    let mut rows: Vec<CpuRow> = watched
        .iter()
        .zip(used)
        .map(|(w, ticks)| {
            let secs = ticks.map(ticks_secs);
            CpuRow {
                role: w.role,
                source: w.source.clone(),
                cpu_secs: secs,
                us_per_request: per_request(secs, requests),
            }
        })
        .collect();
    let known: u64 = used.iter().flatten().sum();
    // The roles' trees may overlap the machine's count by a tick or two of
    // rounding: never below zero.
    let other = machine_busy.map(|m| ticks_secs(m.saturating_sub(known)));
    rows.push(CpuRow {
        role: "other",
        source: "machine busy time not in the rows above (other processes, interrupts)".into(),
        cpu_secs: other,
        us_per_request: per_request(other, requests),
    });
    let machine = machine_busy.map(ticks_secs);
    rows.push(CpuRow {
        role: "machine",
        source: format!("all busy time of the {} CPUs (/proc/stat)", cpu::cpus()),
        cpu_secs: machine,
        us_per_request: per_request(machine, requests),
    });
    CpuReport {
        requests,
        phase_secs,
        rows,
        machine_busy_share,
    }
}

impl CpuReport {
    #[cfg(test)]
    fn row(&self, role: &str) -> Option<&CpuRow> {
        self.rows.iter().find(|r| r.role == role)
    }

    pub fn to_json(&self) -> Value {
        let mut us = Map::new();
        let mut secs = Map::new();
        let mut sources = Map::new();
        for r in &self.rows {
            us.insert(r.role.into(), json!(r.us_per_request));
            secs.insert(r.role.into(), json!(r.cpu_secs));
            sources.insert(r.role.into(), json!(r.source));
        }
        json!({
            "requests": self.requests,
            "phase_secs": self.phase_secs,
            "cpus": cpu::cpus(),
            "machine_busy_pct": self.machine_busy_share.map(|s| s * 100.0),
            "us_per_request": us,
            "cpu_secs": secs,
            "sources": sources,
        })
    }

    /// Lines of the human report.
    pub fn print_human(&self, server_name: &str) {
        println!(
            "cpu             per request over the measured phase ({} requests in {:.3} s; machine {} busy of {} CPUs):",
            self.requests,
            self.phase_secs,
            self.machine_busy_share
                .map_or("-".to_string(), |s| format!("{:.0}%", s * 100.0)),
            cpu::cpus()
        );
        for r in &self.rows {
            let name = if r.role == "server" { server_name } else { r.role };
            match (r.us_per_request, r.cpu_secs) {
                (Some(us), Some(secs)) => {
                    println!("  {name:<16}{us:>8.1} µs  ({secs:.2} s)  {}", r.source)
                }
                _ => println!("  {name:<16}{:>8}     {}", "-", r.source),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_pids_in_info_and_pid_file() {
        let info = "# Server\r\nredis_version:7.0.15\r\nprocess_id:3012\r\nrun_id:abc\r\n";
        assert_eq!(parse_info_pid(info), Some(3012));
        assert_eq!(parse_info_pid("# Server\r\n"), None);
        let pid_file = "3101\n/work/x/.data/pg\n1796190000\n5441\n/tmp\n127.0.0.1\n  5441001         0\nready   \n";
        assert_eq!(parse_postmaster_pid(pid_file), Some(3101));
        assert_eq!(parse_postmaster_pid(""), None);
    }

    fn watched(role: &'static str) -> Watched {
        Watched {
            role,
            probe: None,
            source: String::new(),
        }
    }

    #[test]
    fn splits_ticks_per_request_and_other() {
        let w: Vec<Watched> = ["server", "redis", "postgres", "driver"].map(watched).into();
        // server 1 s, redis 0.8 s, postgres unknown, driver 0.2 s; machine 2.5 s busy.
        let used = [Some(100), Some(80), None, Some(20)];
        let r = split(&w, &used, Some(250), Some(0.625), 20_000, 2.0);
        let us = |role: &str| r.row(role).unwrap().us_per_request;
        // 100 ticks = 1 s over 20,000 requests = 50 µs each.
        assert_eq!(us("server"), Some(50.0));
        assert_eq!(us("redis"), Some(40.0));
        assert_eq!(us("postgres"), None);
        assert_eq!(us("driver"), Some(10.0));
        // 250 - 200 known ticks: 0.5 s.
        assert_eq!(r.row("other").unwrap().cpu_secs, Some(0.5));
        assert_eq!(us("machine"), Some(125.0));
        // The rows can add up to a tick more than the machine: other is 0, not negative.
        let r = split(&w, &used, Some(199), None, 20_000, 2.0);
        assert_eq!(r.row("other").unwrap().cpu_secs, Some(0.0));
        // No requests: seconds but no per-request figure.
        let r = split(&w, &used, None, None, 0, 0.0);
        assert_eq!(r.row("server").unwrap().cpu_secs, Some(1.0));
        assert_eq!(r.row("server").unwrap().us_per_request, None);
        assert_eq!(r.row("other").unwrap().cpu_secs, None);
        let j = r.to_json();
        assert_eq!(j["cpu_secs"]["redis"], 0.8);
        assert!(j["us_per_request"]["redis"].is_null());
    }
}
