//! CPU spent during a timed phase: the engine's own (`/proc/<pid>/stat`) and
//! the whole machine's busy share (`/proc/stat`). On a small shared machine a
//! rate means little without them: they tell whether the engine was the
//! bottleneck or waited for Postgres, and whether the machine was saturated.

use std::time::Duration;

/// Clock ticks per second of the `/proc` CPU counters. Linux fixes USER_HZ
/// at 100 on every architecture it reports to user space.
const USER_HZ: u64 = 100;

/// utime + stime of a process (all its threads), in ticks, from the text of
/// `/proc/<pid>/stat`.
pub fn parse_process_stat(text: &str) -> Result<u64, String> {
    // The name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("no ')' in the stat file")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let tick = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("unreadable field {} of the stat file", i + 3))
    };
    Ok(tick(11)? + tick(12)?)
}

pub fn process_cpu(pid: u32) -> Result<Duration, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let ticks = parse_process_stat(&text)?;
    Ok(Duration::from_millis(ticks * 1000 / USER_HZ))
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
