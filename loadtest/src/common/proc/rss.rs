//! The engine's resident memory, from `/proc/<pid>/status` (and, for the
//! cost table, `smaps_rollup`'s transparent huge pages).
//!
//! Two measures of the peak during an upload:
//! - a sampler thread reads `VmRSS` every few milliseconds. A thread, not a
//!   tokio task: the driver's runtime is busy writing the upload, and a
//!   sample that waits for it would be late exactly when memory is high;
//! - the kernel's high-water mark `VmHWM`, reset before the upload by writing
//!   `5` to `/proc/<pid>/clear_refs`: exact, whatever happens between two
//!   samples. It needs the right to write that file (same user as the engine,
//!   Linux >= 4.0); without it only the samples count.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Memory figures of one read of the status file, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mem {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// The value of a `Name:   123 kB` line of a `/proc` file; `missing` says
/// why the line may be absent.
fn kib_field(text: &str, name: &str, missing: &str) -> Result<u64, String> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .ok_or_else(|| format!("no {name} in {missing}"))?;
    line.trim()
        .strip_suffix("kB")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| format!("unreadable {name}: {line:?}"))
}

/// Parses `VmRSS` and `VmHWM` (`VmRSS:\t  123456 kB`) out of a status file.
pub fn parse_status(text: &str) -> Result<Mem, String> {
    let missing = "the status file (a kernel thread, or a zombie?)";
    Ok(Mem {
        rss_kib: kib_field(text, "VmRSS", missing)?,
        hwm_kib: kib_field(text, "VmHWM", missing)?,
    })
}

pub fn read(pid: u32) -> Result<Mem, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse_status(&text)
}

/// A process's resident memory and how much of it the kernel backs with
/// transparent huge pages, in KiB (`/proc/<pid>/smaps_rollup`). Each first
/// touch of such a page zeroes 2 MiB: a server that allocates fresh memory
/// in a burst pays for that in its latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    pub rss_kib: u64,
    pub anon_huge_kib: u64,
}

/// Parses `Rss` and `AnonHugePages` (`Rss:  123456 kB`) out of a
/// `smaps_rollup` file.
pub fn parse_smaps_rollup(text: &str) -> Result<Mapped, String> {
    Ok(Mapped {
        rss_kib: kib_field(text, "Rss", "smaps_rollup")?,
        anon_huge_kib: kib_field(text, "AnonHugePages", "smaps_rollup")?,
    })
}

pub fn read_mapped(pid: u32) -> Result<Mapped, String> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse_smaps_rollup(&text)
}

/// The process name (`comm`), to tell the user which process is measured.
pub fn command_name(pid: u32) -> Result<String, String> {
    let path = format!("/proc/{pid}/comm");
    std::fs::read_to_string(&path)
        .map(|s| s.trim_end().to_string())
        .map_err(|e| format!("cannot read {path}: {e}"))
}

/// Resets `VmHWM` to the current RSS.
pub fn reset_peak(pid: u32) -> Result<(), String> {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(&path, "5").map_err(|e| format!("cannot write {path}: {e}"))
}

/// What the sampler saw between `start` and `stop`.
#[derive(Debug, Clone, Default)]
pub struct Sampled {
    pub peak_kib: u64,
    pub samples: u64,
    /// The largest gap between two successful samples.
    pub max_gap: Duration,
    pub errors: u64,
    pub last_error: Option<String>,
}

pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Sampled>,
}

impl Sampler {
    pub fn start(pid: u32, every: Duration) -> Result<Sampler, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("rss-sampler".into())
            .spawn(move || {
                let mut out = Sampled::default();
                let mut last_ok: Option<Instant> = None;
                loop {
                    // One last sample after the stop request: the end counts too.
                    let stopping = flag.load(Ordering::Relaxed);
                    match read(pid) {
                        Ok(mem) => {
                            let now = Instant::now();
                            if let Some(prev) = last_ok {
                                out.max_gap = out.max_gap.max(now - prev);
                            }
                            last_ok = Some(now);
                            out.samples += 1;
                            out.peak_kib = out.peak_kib.max(mem.rss_kib);
                        }
                        Err(e) => {
                            out.errors += 1;
                            out.last_error = Some(e);
                        }
                    }
                    if stopping {
                        return out;
                    }
                    std::thread::park_timeout(every);
                }
            })
            .map_err(|e| format!("cannot start the RSS sampler thread: {e}"))?;
        Ok(Sampler { stop, handle })
    }

    /// Stops the thread (it takes one more sample) and returns what it saw.
    pub fn stop(self) -> Sampled {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.thread().unpark();
        self.handle.join().unwrap_or_else(|_| Sampled {
            last_error: Some("the sampler thread panicked".into()),
            errors: 1,
            ..Sampled::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tstampede\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t 1234568 kB\n\
VmSize:\t 1200000 kB\nVmHWM:\t   98765 kB\nVmRSS:\t   45678 kB\nRssAnon:\t   40000 kB\nThreads:\t3\n";

    #[test]
    fn parses_rss_and_high_water_mark() {
        assert_eq!(
            parse_status(STATUS),
            Ok(Mem {
                rss_kib: 45678,
                hwm_kib: 98765
            })
        );
        // Kernel threads have no Vm lines.
        assert!(parse_status("Name:\tkthreadd\nState:\tS\n").is_err());
        assert!(parse_status("VmHWM:\t1 kB\nVmRSS:\tlots kB\n").is_err());
    }

    #[test]
    fn parses_smaps_rollup() {
        let rollup = "55d0c0a00000-7ffd1e5f4000 ---p 00000000 00:00 0                          [rollup]\n\
Rss:              123456 kB\nPss:              120000 kB\nAnonymous:        100000 kB\n\
AnonHugePages:      4096 kB\nShmemPmdMapped:        0 kB\n";
        assert_eq!(
            parse_smaps_rollup(rollup),
            Ok(Mapped {
                rss_kib: 123456,
                anon_huge_kib: 4096
            })
        );
        assert!(parse_smaps_rollup("Rss: 1 kB\n").is_err());
        let this = read_mapped(std::process::id()).unwrap();
        assert!(this.rss_kib > 0 && this.anon_huge_kib <= this.rss_kib, "{this:?}");
    }

    #[test]
    fn samples_this_process() {
        let pid = std::process::id();
        let before = read(pid).unwrap();
        assert!(before.rss_kib > 0 && before.hwm_kib >= before.rss_kib);
        let sampler = Sampler::start(pid, Duration::from_millis(1)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let seen = sampler.stop();
        assert!(seen.samples >= 2, "{seen:?}");
        assert!(seen.peak_kib > 0 && seen.errors == 0, "{seen:?}");
        assert_eq!(command_name(pid).map(|n| !n.is_empty()), Ok(true));
    }
}
