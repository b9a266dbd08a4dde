//! CPU spent during a timed phase: a process's own (`/proc/<pid>/stat`), a
//! process tree's (a server and the children it forks: Postgres backends,
//! a Redis rewrite) and the whole machine's busy share (`/proc/stat`). On a
//! small shared machine a rate means little without them: they tell whether
//! the engine was the bottleneck or waited for Postgres, and whether the
//! machine was saturated.

use std::time::Duration;

/// Clock ticks per second of the `/proc` CPU counters. Linux fixes USER_HZ
/// at 100 on every architecture it reports to user space.
pub const USER_HZ: u64 = 100;

/// The fields of `/proc/<pid>/stat` this module reads (ticks of USER_HZ).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 2, the executable's name (at most 15 bytes), without parentheses.
    pub comm: String,
    /// Field 4.
    pub ppid: u32,
    /// Fields 14 and 15: CPU of the process itself, all its threads.
    pub utime: u64,
    pub stime: u64,
    /// Fields 16 and 17: whole-life CPU of the children it has waited for.
    pub cutime: u64,
    pub cstime: u64,
}

impl ProcStat {
    /// utime + stime.
    pub fn own(&self) -> u64 {
        self.utime + self.stime
    }
}

/// Parses the text of `/proc/<pid>/stat`.
pub fn parse_stat(text: &str) -> Result<ProcStat, String> {
    // The name (field 2) is in parentheses and may hold spaces and ')':
    // it ends at the last ')'.
    let (head, rest) = text.rsplit_once(')').ok_or("no ')' in the stat file")?;
    let comm = head
        .split_once('(')
        .map(|(_, name)| name.to_string())
        .ok_or("no '(' in the stat file")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); ppid is field 4, utime..cstime 14..17.
    let field = |i: usize| -> Result<&str, String> {
        fields
            .get(i)
            .copied()
            .ok_or_else(|| format!("no field {} in the stat file", i + 3))
    };
    let tick = |i: usize| -> Result<u64, String> {
        field(i)?
            .parse()
            .map_err(|_| format!("unreadable field {} of the stat file", i + 3))
    };
    // cutime and cstime are signed in the kernel's format; never below 0 in practice.
    let child_tick = |i: usize| -> Result<u64, String> {
        field(i)?
            .parse::<i64>()
            .map(|v| v.max(0) as u64)
            .map_err(|_| format!("unreadable field {} of the stat file", i + 3))
    };
    Ok(ProcStat {
        comm,
        ppid: field(1)?
            .parse()
            .map_err(|_| "unreadable field 4 of the stat file".to_string())?,
        utime: tick(11)?,
        stime: tick(12)?,
        cutime: child_tick(13)?,
        cstime: child_tick(14)?,
    })
}

/// utime + stime of a process (all its threads), in ticks, from the text of
/// `/proc/<pid>/stat`.
pub fn parse_process_stat(text: &str) -> Result<u64, String> {
    parse_stat(text).map(|s| s.own())
}

/// Every process of the machine (`/proc/<pid>/stat`), read in one pass.
/// Processes that exit while it reads are left out.
pub fn process_table() -> Result<Vec<(u32, ProcStat)>, String> {
    let dir = std::fs::read_dir("/proc").map_err(|e| format!("cannot list /proc: {e}"))?;
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Ok(stat) = parse_stat(&text)
        {
            out.push((pid, stat));
        }
    }
    Ok(out)
}

/// CPU ticks of process `root` and its direct children, from one
/// `process_table`: its own utime + stime, its cutime + cstime (children it
/// has already waited for, whole lives) and the utime + stime of its live
/// children. The difference of two readings is the tree's CPU in between,
/// whether a child lived through it, was born or exited during it, as long
/// as `root` waits for its children (a server does). `None`: no such process.
pub fn tree_ticks(root: u32, table: &[(u32, ProcStat)]) -> Option<u64> {
    let (_, stat) = table.iter().find(|(pid, _)| *pid == root)?;
    let children: u64 = table
        .iter()
        .filter(|(pid, s)| s.ppid == root && *pid != root)
        .map(|(_, s)| s.own())
        .sum();
    Some(stat.own() + stat.cutime + stat.cstime + children)
}

/// utime + stime summed over every process called `comm`. Cruder than
/// `tree_ticks`: the CPU of a process that exits between two readings is lost.
pub fn named_ticks(comm: &str, table: &[(u32, ProcStat)]) -> u64 {
    table.iter().filter(|(_, s)| s.comm == comm).map(|(_, s)| s.own()).sum()
}

/// Ticks to a duration.
pub fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 1000 / USER_HZ)
}

pub fn process_cpu(pid: u32) -> Result<Duration, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let ticks = parse_process_stat(&text)?;
    Ok(ticks_to_duration(ticks))
}

/// The machine's CPU counters, in ticks summed over all CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineCpu {
    pub busy: u64,
    pub total: u64,
}

/// The `cpu ` line of `/proc/stat`: user nice system idle iowait irq softirq
/// steal (guest time is already in user). Idle and iowait are not busy.
pub fn parse_machine_stat(text: &str) -> Result<MachineCpu, String> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .ok_or("no cpu line in /proc/stat")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| format!("unreadable /proc/stat value {v:?}"))
        })
        .collect::<Result<_, _>>()?;
    if values.len() < 5 {
        return Err("short cpu line in /proc/stat".into());
    }
    let total: u64 = values.iter().sum();
    Ok(MachineCpu {
        busy: total - values[3] - values[4],
        total,
    })
}

pub fn machine() -> Result<MachineCpu, String> {
    let text = std::fs::read_to_string("/proc/stat").map_err(|e| format!("cannot read /proc/stat: {e}"))?;
    parse_machine_stat(&text)
}

/// Share of all CPUs that were busy between two readings.
pub fn busy_share(before: MachineCpu, after: MachineCpu) -> Option<f64> {
    let total = after.total.checked_sub(before.total).filter(|t| *t > 0)?;
    let busy = after.busy.checked_sub(before.busy)?;
    Some(busy as f64 / total as f64)
}

/// Share of the machine busy over `window` while the run itself is idle:
/// what other processes (a build, another test) take from the phase that
/// follows. A run with a busy background says little about the engine.
pub async fn background_busy(window: Duration) -> Option<f64> {
    let before = machine().ok()?;
    tokio::time::sleep(window).await;
    busy_share(before, machine().ok()?)
}

/// Readings at the start of a phase.
pub struct CpuStart {
    engine: Option<Duration>,
    machine: Option<MachineCpu>,
}

/// CPU over one phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuRun {
    /// CPU time the engine used (all threads).
    pub engine: Option<Duration>,
    /// Share of the machine's CPUs that were busy (all processes).
    pub machine_busy: Option<f64>,
    /// The same share just before the phase, while the run was idle.
    pub background_busy: Option<f64>,
}

impl CpuStart {
    pub fn now(engine_pid: Option<u32>) -> CpuStart {
        CpuStart {
            engine: engine_pid.and_then(|pid| process_cpu(pid).ok()),
            machine: machine().ok(),
        }
    }

    pub fn finish(self, engine_pid: Option<u32>, background_busy: Option<f64>) -> CpuRun {
        let engine_after = engine_pid.and_then(|pid| process_cpu(pid).ok());
        CpuRun {
            engine: match (self.engine, engine_after) {
                (Some(a), Some(b)) => b.checked_sub(a),
                _ => None,
            },
            machine_busy: match (self.machine, machine().ok()) {
                (Some(a), Some(b)) => busy_share(a, b),
                _ => None,
            },
            background_busy,
        }
    }
}

/// CPUs of the machine, for the report.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_process_ticks_after_a_name_with_spaces() {
        let stat = "4242 (tokio runtime) S 1 4242 4242 0 -1 4194560 5000 0 0 0 1234 567 0 0 20 0 3 0 100 1000000 500";
        assert_eq!(parse_process_stat(stat), Ok(1234 + 567));
        assert!(parse_process_stat("4242 (x) S 1").is_err());
        assert!(process_cpu(std::process::id()).is_ok());
    }

    #[test]
    fn parses_parent_and_children_ticks() {
        // A name with ") " in it: the fields start after the last ')'.
        let stat = "77 (post) gres) S 12 77 77 0 -1 4194560 5000 0 0 0 30 20 -1 4 20 0 1 0 100 1000000 500";
        let s = parse_stat(stat).unwrap();
        assert_eq!(s.comm, "post) gres");
        assert_eq!((s.ppid, s.utime, s.stime, s.cutime, s.cstime), (12, 30, 20, 0, 4));
        assert_eq!(s.own(), 50);
        assert!(parse_stat("77 post S 1 2").is_err());
        let table = process_table().unwrap();
        assert!(table.iter().any(|(pid, _)| *pid == std::process::id()));
    }

    fn proc(comm: &str, ppid: u32, own: u64, children: u64) -> ProcStat {
        ProcStat {
            comm: comm.into(),
            ppid,
            utime: own,
            stime: 0,
            cutime: children,
            cstime: 0,
        }
    }

    #[test]
    fn tree_ticks_follow_children_that_come_and_go() {
        // postmaster 10 with backends 11 and 12; 20 is unrelated.
        let before = vec![
            (10, proc("postgres", 1, 100, 5)),
            (11, proc("postgres", 10, 40, 0)),
            (12, proc("postgres", 10, 7, 0)),
            (20, proc("redis-server", 1, 900, 0)),
        ];
        assert_eq!(tree_ticks(10, &before), Some(100 + 5 + 40 + 7));
        assert_eq!(tree_ticks(99, &before), None);
        // 12 exited after 3 more ticks (now in the parent's cutime: 5 + 10),
        // 11 used 20 more, 13 was born and used 6, the postmaster 1.
        let after = vec![
            (10, proc("postgres", 1, 101, 5 + 10)),
            (11, proc("postgres", 10, 60, 0)),
            (13, proc("postgres", 10, 6, 0)),
            (20, proc("redis-server", 1, 950, 0)),
        ];
        let used = tree_ticks(10, &after).unwrap() - tree_ticks(10, &before).unwrap();
        assert_eq!(used, 1 + 20 + 3 + 6);
        assert_eq!(named_ticks("postgres", &before), 147);
        assert_eq!(named_ticks("redis-server", &after), 950);
        assert_eq!(ticks_to_duration(250), Duration::from_millis(2500));
    }

    #[test]
    fn machine_busy_share() {
        let before = parse_machine_stat("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n").unwrap();
        assert_eq!(before, MachineCpu { busy: 150, total: 1000 });
        let after = parse_machine_stat("cpu  200 0 100 900 100 0 0 0 0 0\n").unwrap();
        assert_eq!(busy_share(before, after), Some(0.5));
        assert_eq!(busy_share(after, after), None);
        assert!(parse_machine_stat("intr 1 2").is_err());
        assert!(machine().is_ok());
    }
}
