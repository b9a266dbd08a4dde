//! The ingest run for people and as JSON.
//!
//! Invariants decide the exit code, as in the sale scenarios. The two
//! performance targets (memory growth, share of the `\copy` rate) are shown
//! as PASS/FAIL lines of their own but, like the sale scenarios' sell-out
//! time, only decide the exit code with `--enforce-targets`: the machine is
//! shared and its speed drifts, an invariant does not.

use serde_json::{Map, Value, json};

use crate::common::cost::report::CostReport;
use crate::common::fmt::{fmt_mib, fmt_rate, fmt_ratio, mib};
use crate::common::proc::cpu::{CpuRun, cpus};
use crate::common::verdict::{Checks, Verdict};

use super::checks::{COPY_RATIO_TARGET, RSS_GROWTH_LIMIT_MIB};
use super::runs::{BaselineRun, Figures, UploadRun};
use super::upload::error_text;

/// What the report shows.
pub struct Report<'a> {
    pub f: &'a Figures<'a>,
    /// The invariants (the baseline's included).
    pub checks: &'a Checks,
    pub targets: &'a Checks,
    pub enforce_targets: bool,
    /// The verdict of the run: the invariants, and the targets when enforced.
    pub passed: bool,
}

impl Report<'_> {
    pub fn print_human(&self) {
        println!();
        println!("== stampede loadtest: ingest ==");
        println!(
            "engine {}, pid {}",
            self.f.url,
            match (self.f.engine_pid, &self.f.engine_name) {
                (Some(pid), Some(name)) => format!("{pid} ({name})"),
                (Some(pid), None) => pid.to_string(),
                _ => "- (memory not measured)".into(),
            }
        );
        println!();
        for upload in &self.f.uploads {
            print_upload(upload);
        }
        for cost in self.f.uploads.iter().filter_map(|u| u.cost.as_ref()) {
            cost.print_human();
        }
        println!("distinct rows   {} transaction ids over all files", self.f.distinct);
        println!();
        match self.f.rss_growth_mib() {
            Some(g) => {
                println!("rss growth      peak large - peak small = {g:.1} MiB (target <= {RSS_GROWTH_LIMIT_MIB} MiB)")
            }
            None => println!("rss growth      - (not measured)"),
        }
        match &self.f.baseline {
            None => println!("copy baseline   - (disabled)"),
            Some(b) => match (&b.copy, &b.csv) {
                (Some(copy), csv) => {
                    println!(
                        "copy baseline   {} rows in {:.3} s: {} rows/s (psql \\copy of a {:.1} MB CSV)",
                        copy.copied,
                        copy.elapsed.as_secs_f64(),
                        fmt_rate(b.rows_per_sec()),
                        csv.map_or(0.0, |c| c.bytes as f64 / 1e6)
                    );
                    if let Some(cpu) = &b.cpu {
                        println!("                {}", fmt_cpu(cpu, copy.elapsed.as_secs_f64()));
                    }
                    for index in &b.indexes {
                        println!("                {index}");
                    }
                    println!(
                        "ratio           engine lines/s / copy rows/s = {} (target >= {COPY_RATIO_TARGET:.2}); distinct rows/s / copy rows/s = {}",
                        fmt_ratio(self.f.ratio_lines()),
                        fmt_ratio(self.f.ratio_rows())
                    );
                }
                (None, _) => println!(
                    "copy baseline   - ({})",
                    b.skipped.as_deref().unwrap_or("failed: see the invariants")
                ),
            },
        }
        println!();
        let targets = self.targets;
        println!(
            "targets{}:",
            if self.enforce_targets {
                " (enforced)"
            } else {
                " (reported; --enforce-targets makes them decide the exit code)"
            }
        );
        targets.print();
        println!();
        println!("invariants:");
        self.checks.print();
        let notes: Vec<&String> = self
            .f
            .uploads
            .iter()
            .flat_map(|u| u.notes.iter())
            .chain(self.f.baseline.iter().flat_map(|b| b.notes.iter()))
            .collect();
        if !notes.is_empty() {
            println!();
            println!("notes:");
            for note in notes {
                println!("  {note}");
            }
        }
        println!();
        println!(
            "targets: {} met, {} missed{}",
            targets.count(Verdict::Pass),
            targets.count(Verdict::Fail),
            if self.enforce_targets {
                " (enforced: a missed one fails the run)"
            } else {
                ""
            }
        );
    }

    pub fn to_json(&self) -> Value {
        let targets = self.targets;
        let mut uploads = Map::new();
        for u in &self.f.uploads {
            uploads.insert(u.label.to_string(), upload_json(u));
        }
        let baseline = self.f.baseline.as_ref().map(|b| {
            json!({
                "csv": b.csv_path.display().to_string(),
                "csv_bytes": b.csv.map(|c| c.bytes),
                "rows": b.csv.map(|c| c.rows),
                "copy_secs": b.secs(),
                "rows_per_sec": b.rows_per_sec(),
                "copied": b.copy.as_ref().map(|c| c.copied),
                "command": b.copy.as_ref().map(|c| c.command.clone()),
                "indexes": b.indexes,
                "skipped": b.skipped,
                "machine_busy_pct": b.cpu.and_then(|c| c.machine_busy).map(|b| b * 100.0),
                "background_busy_pct": b.cpu.and_then(|c| c.background_busy).map(|b| b * 100.0),
                "notes": b.notes,
            })
        });
        let large = self.f.upload("large");
        json!({
            "scenario": "ingest",
            "url": self.f.url,
            "engine_pid": self.f.engine_pid,
            "uploads": uploads,
            "distinct_rows": self.f.distinct,
            "lines": large.map(|u| u.scan.lines),
            "upload_secs": large.and_then(|u| u.outcome.as_ref().ok()).map(|o| o.elapsed.as_secs_f64()),
            "lines_per_sec": large.and_then(UploadRun::lines_per_sec),
            "rows_per_sec": large.and_then(UploadRun::rows_per_sec),
            "rss_peak_small_mib": self.f.upload("small").and_then(UploadRun::peak_kib).map(mib),
            "rss_peak_large_mib": large.and_then(UploadRun::peak_kib).map(mib),
            "rss_growth_mib": self.f.rss_growth_mib(),
            "rss_growth_limit_mib": RSS_GROWTH_LIMIT_MIB,
            "copy": baseline,
            "copy_secs": self.f.baseline.as_ref().and_then(BaselineRun::secs),
            "copy_rows_per_sec": self.f.copy_rows_per_sec(),
            "ratio_lines_to_copy": self.f.ratio_lines(),
            "ratio_rows_to_copy": self.f.ratio_rows(),
            "ratio_target": COPY_RATIO_TARGET,
            "targets": targets.to_json(),
            "targets_met": targets.count(Verdict::Pass) == targets.len(),
            "targets_enforced": self.enforce_targets,
            "invariants": self.checks.to_json(),
            "skipped": self.checks.iter().filter(|c| c.verdict == Verdict::Skipped).map(|c| c.name.clone()).collect::<Vec<_>>(),
            "passed": self.passed,
        })
    }
}

/// One upload's lines of the report.
fn print_upload(u: &UploadRun) {
    let s = &u.scan;
    println!(
        "upload {:<8} {}: {} lines, {} distinct ids ({} new), {:.1} MB",
        u.label,
        s.path.display(),
        s.lines,
        s.distinct,
        s.new_ids,
        s.bytes as f64 / 1e6
    );
    match &u.outcome {
        Ok(o) => {
            let sent = o.body_sent.map_or("body not all sent".to_string(), |d| {
                format!("body sent after {:.3} s", d.as_secs_f64())
            });
            println!(
                "                {:.3} s: {} lines/s, {} distinct rows/s, {:.1} MB/s ({sent}; status {})",
                o.elapsed.as_secs_f64(),
                fmt_rate(u.lines_per_sec()),
                fmt_rate(u.rows_per_sec()),
                o.content_length as f64 / 1e6 / o.elapsed.as_secs_f64().max(1e-9),
                o.status
            );
        }
        Err(e) => println!("                failed: {e}"),
    }
    if let Some(r) = u.reply() {
        println!(
            "                created {}, updated {}, unchanged {}, rejected {}, total {}",
            r.created, r.updated, r.unchanged, r.rejected, r.total
        );
    }
    if let Ok(o) = &u.outcome {
        println!("                {}", fmt_cpu(&u.cpu, o.elapsed.as_secs_f64()));
    }
    if let Some(m) = &u.mem {
        println!(
            "                engine RSS {} MiB before, peak {} MiB, {} MiB after",
            fmt_mib(m.before_kib),
            fmt_mib(m.peak_kib()),
            fmt_mib(m.after_kib)
        );
        println!(
            "                (high-water mark {} MiB; {} samples, peak {} MiB, largest gap {:.0} ms{})",
            fmt_mib(m.hwm_kib),
            m.sampled.samples,
            fmt_mib((m.sampled.samples > 0).then_some(m.sampled.peak_kib)),
            m.sampled.max_gap.as_secs_f64() * 1000.0,
            m.reset_error
                .as_ref()
                .map_or(String::new(), |e| format!("; high-water mark not reset: {e}"))
        );
    }
}

/// One upload in the JSON summary.
fn upload_json(u: &UploadRun) -> Value {
    let s = &u.scan;
    let outcome = u.outcome.as_ref().ok();
    let reply = u.reply();
    let mut v = json!({
        "file": s.path.display().to_string(),
        "file_bytes": s.bytes,
        "lines": s.lines,
        "distinct_ids": s.distinct,
        "new_ids": s.new_ids,
        "content_length": outcome.map(|o| o.content_length),
        "status": outcome.map(|o| o.status),
        "upload_secs": outcome.map(|o| o.elapsed.as_secs_f64()),
        "body_sent_secs": outcome.and_then(|o| o.body_sent).map(|d| d.as_secs_f64()),
        "lines_per_sec": u.lines_per_sec(),
        "rows_per_sec": u.rows_per_sec(),
        "created": reply.map(|r| r.created),
        "updated": reply.map(|r| r.updated),
        "unchanged": reply.map(|r| r.unchanged),
        "rejected": reply.map(|r| r.rejected),
        "total": reply.map(|r| r.total),
        "errors_truncated": reply.map(|r| r.errors_truncated),
        "error": match (&u.outcome, &u.reply) {
            (Err(e), _) | (Ok(_), Some(Err(e))) => Some(e.clone()),
            (Ok(o), None) => Some(format!("{}: {}", o.status, error_text(&o.body))),
            (Ok(o), Some(Ok(_))) => o.send_error.clone(),
        },
        "engine_cpu_secs": u.cpu.engine.map(|d| d.as_secs_f64()),
        "machine_busy_pct": u.cpu.machine_busy.map(|b| b * 100.0),
        "background_busy_pct": u.cpu.background_busy.map(|b| b * 100.0),
        "cost": u.cost.as_ref().map(CostReport::to_json),
        "notes": u.notes,
    });
    if let (Some(m), Some(obj)) = (&u.mem, v.as_object_mut())
        && let Value::Object(mem) = m.to_json()
    {
        obj.extend(mem);
    }
    v
}

/// `CPU: engine 3.4 s (27% of one core), machine 86% busy of 2 CPUs (0% in the second before)`.
fn fmt_cpu(cpu: &CpuRun, secs: f64) -> String {
    let mut parts = Vec::new();
    if let Some(d) = cpu.engine.filter(|_| secs > 0.0) {
        parts.push(format!(
            "engine {:.1} s ({:.0}% of one core)",
            d.as_secs_f64(),
            d.as_secs_f64() / secs * 100.0
        ));
    }
    let machine = cpu
        .machine_busy
        .map_or("-".to_string(), |b| format!("{:.0}%", b * 100.0));
    let before = cpu
        .background_busy
        .map_or("-".to_string(), |b| format!("{:.0}%", b * 100.0));
    parts.push(format!(
        "machine {machine} busy of {} CPUs ({before} in the second before)",
        cpus()
    ));
    format!("CPU: {}", parts.join(", "))
}
