//! What the ingest scenario measured, printed for people and as JSON.
//!
//! Invariants decide the exit code, as in the sale scenarios. The issue's
//! performance targets (memory growth, share of the `\copy` rate) are shown
//! as PASS/FAIL lines of their own but, like the sale scenarios' sell-out
//! time, only decide the exit code with `--enforce-targets`: the machine is
//! shared and its speed drifts, an invariant does not.

use std::path::PathBuf;

use serde_json::{Map, Value, json};

use super::files::{CsvFile, FileScan};
use super::store::CopyRun;
use super::upload::{IngestReply, UploadOutcome};
use super::{COPY_RATIO_TARGET, RSS_GROWTH_LIMIT_MIB};
use crate::common::proc::cpu::{CpuRun, cpus};
use crate::common::proc::rss::{Sampled, mib};
use crate::scenarios::sale::report::{Invariant, Verdict};

/// The engine's memory around one upload.
pub struct MemRun {
    pub before_kib: Option<u64>,
    pub after_kib: Option<u64>,
    /// `VmHWM` after the upload, when it could be reset before: the exact peak.
    pub hwm_kib: Option<u64>,
    pub reset_error: Option<String>,
    pub sampled: Sampled,
}

impl MemRun {
    /// The larger of the sampled peak and the high-water mark.
    pub fn peak_kib(&self) -> Option<u64> {
        let sampled = (self.sampled.samples > 0).then_some(self.sampled.peak_kib);
        match (sampled, self.hwm_kib) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).max(b.unwrap_or(0))),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "rss_before_mib": self.before_kib.map(mib),
            "rss_peak_mib": self.peak_kib().map(mib),
            "rss_peak_sampled_mib": (self.sampled.samples > 0).then(|| mib(self.sampled.peak_kib)),
            "rss_hwm_mib": self.hwm_kib.map(mib),
            "rss_after_mib": self.after_kib.map(mib),
            "rss_samples": self.sampled.samples,
            "rss_sample_max_gap_ms": self.sampled.max_gap.as_secs_f64() * 1000.0,
            "rss_sample_errors": self.sampled.errors,
            "rss_hwm_reset_error": self.reset_error,
        })
    }
}

/// One upload and what came back.
pub struct UploadRun {
    pub label: &'static str,
    pub scan: FileScan,
    pub outcome: Result<UploadOutcome, String>,
    /// The parsed 200 answer (`None` for any other status).
    pub reply: Option<Result<IngestReply, String>>,
    pub mem: Option<MemRun>,
    pub cpu: CpuRun,
    pub notes: Vec<String>,
}

impl UploadRun {
    fn reply(&self) -> Option<&IngestReply> {
        self.reply.as_ref().and_then(|r| r.as_ref().ok())
    }

    /// Answered 200 with a report, after the whole body was sent.
    pub fn succeeded(&self) -> bool {
        self.reply().is_some() && self.outcome.as_ref().is_ok_and(|o| o.send_error.is_none())
    }

    /// First byte sent -> answer read, for a successful upload.
    fn secs(&self) -> Option<f64> {
        match &self.outcome {
            Ok(o) if self.succeeded() => Some(o.elapsed.as_secs_f64()).filter(|s| *s > 0.0),
            _ => None,
        }
    }

    pub fn lines_per_sec(&self) -> Option<f64> {
        self.secs().map(|s| self.scan.lines as f64 / s)
    }

    pub fn rows_per_sec(&self) -> Option<f64> {
        self.secs().map(|s| self.scan.distinct as f64 / s)
    }

    fn peak_kib(&self) -> Option<u64> {
        self.mem.as_ref().and_then(MemRun::peak_kib)
    }

    pub fn invariants(&self) -> Vec<Invariant> {
        let name = format!("upload_{}", self.label);
        let answered = match (&self.outcome, &self.reply) {
            (Err(e), _) => Invariant::fail(&name, e.clone()),
            (Ok(o), None) => Invariant::fail(
                &name,
                format!("answered {}: {}", o.status, super::upload::error_text(&o.body)),
            ),
            (Ok(_), Some(Err(e))) => Invariant::fail(&name, e.clone()),
            (Ok(o), Some(Ok(_))) => match &o.send_error {
                Some(e) => Invariant::fail(&name, format!("answered 200 but the body was not all sent: {e}")),
                None => Invariant::check(
                    &name,
                    true,
                    format!(
                        "200 after {:.3} s for {} bytes of multipart body",
                        o.elapsed.as_secs_f64(),
                        o.content_length
                    ),
                ),
            },
        };
        let counts_name = format!("upload_{}_counts", self.label);
        let counts = match self.reply() {
            None => Invariant::fail(&counts_name, "no ingest report to check"),
            Some(r) => {
                let ok = r.total == self.scan.lines
                    && r.rejected == 0
                    && r.created + r.updated + r.unchanged == r.total
                    && r.created == self.scan.new_ids;
                let mut detail = format!(
                    "total {} (non-blank lines {}), created {} (new ids {}), updated {}, unchanged {}, rejected {}",
                    r.total, self.scan.lines, r.created, self.scan.new_ids, r.updated, r.unchanged, r.rejected
                );
                if !r.errors.is_empty() {
                    let first: Vec<String> = r
                        .errors
                        .iter()
                        .take(3)
                        .map(|e| format!("line {} {}: {}", e.line, e.code, e.message))
                        .collect();
                    detail.push_str(&format!("; first errors: {}", first.join("; ")));
                }
                Invariant::check(&counts_name, ok, detail)
            }
        };
        vec![answered, counts]
    }

    fn print_human(&self) {
        let s = &self.scan;
        println!(
            "upload {:<8} {}: {} lines, {} distinct ids ({} new), {:.1} MB",
            self.label,
            s.path.display(),
            s.lines,
            s.distinct,
            s.new_ids,
            s.bytes as f64 / 1e6
        );
        match &self.outcome {
            Ok(o) => {
                let sent = o.body_sent.map_or("body not all sent".to_string(), |d| {
                    format!("body sent after {:.3} s", d.as_secs_f64())
                });
                println!(
                    "                {:.3} s: {} lines/s, {} distinct rows/s, {:.1} MB/s ({sent}; status {})",
                    o.elapsed.as_secs_f64(),
                    fmt_rate(self.lines_per_sec()),
                    fmt_rate(self.rows_per_sec()),
                    o.content_length as f64 / 1e6 / o.elapsed.as_secs_f64().max(1e-9),
                    o.status
                );
            }
            Err(e) => println!("                failed: {e}"),
        }
        if let Some(r) = self.reply() {
            println!(
                "                created {}, updated {}, unchanged {}, rejected {}, total {}",
                r.created, r.updated, r.unchanged, r.rejected, r.total
            );
        }
        if let Ok(o) = &self.outcome {
            println!("                {}", fmt_cpu(&self.cpu, o.elapsed.as_secs_f64()));
        }
        if let Some(m) = &self.mem {
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

    fn to_json(&self) -> Value {
        let s = &self.scan;
        let outcome = self.outcome.as_ref().ok();
        let reply = self.reply();
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
            "lines_per_sec": self.lines_per_sec(),
            "rows_per_sec": self.rows_per_sec(),
            "created": reply.map(|r| r.created),
            "updated": reply.map(|r| r.updated),
            "unchanged": reply.map(|r| r.unchanged),
            "rejected": reply.map(|r| r.rejected),
            "total": reply.map(|r| r.total),
            "errors_truncated": reply.map(|r| r.errors_truncated),
            "error": match (&self.outcome, &self.reply) {
                (Err(e), _) | (Ok(_), Some(Err(e))) => Some(e.clone()),
                (Ok(o), None) => Some(format!("{}: {}", o.status, super::upload::error_text(&o.body))),
                (Ok(o), Some(Ok(_))) => o.send_error.clone(),
            },
            "engine_cpu_secs": self.cpu.engine.map(|d| d.as_secs_f64()),
            "machine_busy_pct": self.cpu.machine_busy.map(|b| b * 100.0),
            "background_busy_pct": self.cpu.background_busy.map(|b| b * 100.0),
            "notes": self.notes,
        });
        if let (Some(m), Some(obj)) = (&self.mem, v.as_object_mut())
            && let Value::Object(mem) = m.to_json()
        {
            obj.extend(mem);
        }
        v
    }
}

/// The `\copy` baseline.
pub struct BaselineRun {
    pub csv_path: PathBuf,
    pub csv: Option<CsvFile>,
    pub indexes: Vec<String>,
    pub copy: Option<CopyRun>,
    /// Why it did not run, when that is not a failure.
    pub skipped: Option<String>,
    /// CPU during the `\copy` (the machine's share only: the engine is idle).
    pub cpu: Option<CpuRun>,
    pub notes: Vec<String>,
    pub invariants: Vec<Invariant>,
}

impl BaselineRun {
    pub fn new(csv_path: PathBuf) -> BaselineRun {
        BaselineRun {
            csv_path,
            csv: None,
            indexes: Vec::new(),
            copy: None,
            skipped: None,
            cpu: None,
            notes: Vec::new(),
            invariants: Vec::new(),
        }
    }

    pub fn skipped(csv_path: PathBuf, why: &str) -> BaselineRun {
        BaselineRun {
            skipped: Some(why.to_string()),
            ..BaselineRun::new(csv_path)
        }
    }

    fn secs(&self) -> Option<f64> {
        self.copy.as_ref().map(|c| c.elapsed.as_secs_f64()).filter(|s| *s > 0.0)
    }

    pub fn rows_per_sec(&self) -> Option<f64> {
        let copy = self.copy.as_ref()?;
        self.secs().map(|s| copy.copied as f64 / s)
    }
}

pub struct IngestSummary<'a> {
    pub url: &'a str,
    pub engine_pid: Option<u32>,
    pub engine_name: Option<String>,
    pub uploads: Vec<UploadRun>,
    /// Distinct transaction ids over all files.
    pub distinct: u64,
    pub invariants: Vec<Invariant>,
    pub baseline: Option<BaselineRun>,
    pub enforce_targets: bool,
}

fn ratio(value: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (value, base) {
        (Some(v), Some(b)) if b > 0.0 => Some(v / b),
        _ => None,
    }
}

impl IngestSummary<'_> {
    fn upload(&self, label: &str) -> Option<&UploadRun> {
        self.uploads.iter().find(|u| u.label == label)
    }

    fn copy_rows_per_sec(&self) -> Option<f64> {
        self.baseline.as_ref().and_then(BaselineRun::rows_per_sec)
    }

    fn ratio_lines(&self) -> Option<f64> {
        ratio(
            self.upload("large").and_then(UploadRun::lines_per_sec),
            self.copy_rows_per_sec(),
        )
    }

    fn ratio_rows(&self) -> Option<f64> {
        ratio(
            self.upload("large").and_then(UploadRun::rows_per_sec),
            self.copy_rows_per_sec(),
        )
    }

    /// Peak RSS of the large upload minus the small one's, in MiB.
    fn rss_growth_mib(&self) -> Option<f64> {
        let small = self.upload("small")?.peak_kib()?;
        let large = self.upload("large")?.peak_kib()?;
        let growth = (large as f64 - small as f64) / 1024.0;
        // Under 0.1 MiB is noise; it would print as "-0.0".
        Some(if growth.abs() < 0.05 { 0.0 } else { growth })
    }

    fn all_invariants(&self) -> impl Iterator<Item = &Invariant> {
        self.invariants
            .iter()
            .chain(self.baseline.iter().flat_map(|b| b.invariants.iter()))
    }

    pub fn targets(&self) -> Vec<Invariant> {
        let mut out = Vec::new();
        let small = self.upload("small");
        let large = self.upload("large");
        let name = "rss_growth";
        out.push(match (self.engine_pid, small, large) {
            (None, _, _) => Invariant::skip(name, "no --engine-pid"),
            (_, None, _) | (_, _, None) => Invariant::skip(name, "no --small-file to compare with"),
            (_, Some(s), Some(l)) if !s.succeeded() || !l.succeeded() => {
                Invariant::skip(name, "an upload failed: its peak means nothing")
            }
            (_, Some(s), Some(l)) => match self.rss_growth_mib() {
                None => Invariant::skip(name, "no RSS figure (see the notes)"),
                Some(growth) => Invariant::check(
                    name,
                    growth <= RSS_GROWTH_LIMIT_MIB,
                    format!(
                        "peak RSS {} MiB for {} lines - {} MiB for {} lines = {growth:.1} MiB (target <= {RSS_GROWTH_LIMIT_MIB} MiB)",
                        fmt_mib(l.peak_kib()),
                        l.scan.lines,
                        fmt_mib(s.peak_kib()),
                        s.scan.lines
                    ),
                ),
            },
        });
        let name = "throughput_vs_copy";
        out.push(match (&self.baseline, self.ratio_lines()) {
            (None, _) => Invariant::skip(name, "no \\copy baseline (--no-baseline or no database)"),
            (Some(b), None) => Invariant::skip(
                name,
                b.skipped.clone().unwrap_or_else(|| "no engine or \\copy rate".into()),
            ),
            (Some(_), Some(r)) => Invariant::check(
                name,
                r >= COPY_RATIO_TARGET,
                format!(
                    "engine {} lines/s / \\copy {} rows/s = {r:.3} (target >= {COPY_RATIO_TARGET:.2})",
                    fmt_rate(self.upload("large").and_then(UploadRun::lines_per_sec)),
                    fmt_rate(self.copy_rows_per_sec())
                ),
            ),
        });
        out
    }

    pub fn passed(&self) -> bool {
        let invariants_ok = self.all_invariants().all(|i| i.verdict != Verdict::Fail);
        let targets_ok = !self.enforce_targets || self.targets().iter().all(|t| t.verdict != Verdict::Fail);
        invariants_ok && targets_ok
    }

    pub fn print_human(&self) {
        println!();
        println!("== stampede loadtest: ingest ==");
        println!(
            "engine {}, pid {}",
            self.url,
            match (self.engine_pid, &self.engine_name) {
                (Some(pid), Some(name)) => format!("{pid} ({name})"),
                (Some(pid), None) => pid.to_string(),
                _ => "- (memory not measured)".into(),
            }
        );
        println!();
        for upload in &self.uploads {
            upload.print_human();
        }
        println!("distinct rows   {} transaction ids over all files", self.distinct);
        println!();
        match self.rss_growth_mib() {
            Some(g) => {
                println!("rss growth      peak large - peak small = {g:.1} MiB (target <= {RSS_GROWTH_LIMIT_MIB} MiB)")
            }
            None => println!("rss growth      - (not measured)"),
        }
        match &self.baseline {
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
                        fmt_ratio(self.ratio_lines()),
                        fmt_ratio(self.ratio_rows())
                    );
                }
                (None, _) => println!(
                    "copy baseline   - ({})",
                    b.skipped.as_deref().unwrap_or("failed: see the invariants")
                ),
            },
        }
        println!();
        let targets = self.targets();
        println!(
            "targets{}:",
            if self.enforce_targets {
                " (enforced)"
            } else {
                " (reported; --enforce-targets makes them decide the exit code)"
            }
        );
        for t in &targets {
            println!("{} {}: {}", t.verdict.label(), t.name, t.detail);
        }
        println!();
        println!("invariants:");
        for inv in self.all_invariants() {
            println!("{} {}: {}", inv.verdict.label(), inv.name, inv.detail);
        }
        let notes: Vec<&String> = self
            .uploads
            .iter()
            .flat_map(|u| u.notes.iter())
            .chain(self.baseline.iter().flat_map(|b| b.notes.iter()))
            .collect();
        if !notes.is_empty() {
            println!();
            println!("notes:");
            for note in notes {
                println!("  {note}");
            }
        }
        let checks = self.all_invariants().count();
        let failed = self.all_invariants().filter(|i| i.verdict == Verdict::Fail).count();
        let missed = targets.iter().filter(|t| t.verdict == Verdict::Fail).count();
        let met = targets.iter().filter(|t| t.verdict == Verdict::Pass).count();
        println!();
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        println!(
            "RESULT: {verdict} ({failed} of {checks} checks failed; targets: {met} met, {missed} missed{})",
            if self.enforce_targets { ", enforced" } else { "" }
        );
    }

    pub fn to_json(&self) -> Value {
        let verdicts = |list: &mut dyn Iterator<Item = &Invariant>| {
            let mut map = Map::new();
            for inv in list {
                map.insert(
                    inv.name.clone(),
                    json!({"result": inv.verdict.label().to_lowercase(), "detail": inv.detail}),
                );
            }
            Value::Object(map)
        };
        let targets = self.targets();
        let mut uploads = Map::new();
        for u in &self.uploads {
            uploads.insert(u.label.to_string(), u.to_json());
        }
        let baseline = self.baseline.as_ref().map(|b| {
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
        let large = self.upload("large");
        json!({
            "scenario": "ingest",
            "url": self.url,
            "engine_pid": self.engine_pid,
            "uploads": uploads,
            "distinct_rows": self.distinct,
            "lines": large.map(|u| u.scan.lines),
            "upload_secs": large.and_then(|u| u.outcome.as_ref().ok()).map(|o| o.elapsed.as_secs_f64()),
            "lines_per_sec": large.and_then(UploadRun::lines_per_sec),
            "rows_per_sec": large.and_then(UploadRun::rows_per_sec),
            "rss_peak_small_mib": self.upload("small").and_then(UploadRun::peak_kib).map(mib),
            "rss_peak_large_mib": large.and_then(UploadRun::peak_kib).map(mib),
            "rss_growth_mib": self.rss_growth_mib(),
            "rss_growth_limit_mib": RSS_GROWTH_LIMIT_MIB,
            "copy": baseline,
            "copy_secs": self.baseline.as_ref().and_then(BaselineRun::secs),
            "copy_rows_per_sec": self.copy_rows_per_sec(),
            "ratio_lines_to_copy": self.ratio_lines(),
            "ratio_rows_to_copy": self.ratio_rows(),
            "ratio_target": COPY_RATIO_TARGET,
            "targets": verdicts(&mut targets.iter()),
            "targets_met": targets.iter().all(|t| t.verdict == Verdict::Pass),
            "targets_enforced": self.enforce_targets,
            "invariants": verdicts(&mut self.all_invariants()),
            "passed": self.passed(),
        })
    }
}

fn fmt_rate(rate: Option<f64>) -> String {
    rate.map_or("-".to_string(), |r| format!("{r:.0}"))
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("-".to_string(), |r| format!("{r:.3}"))
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

fn fmt_mib(kib: Option<u64>) -> String {
    kib.map_or("-".to_string(), |k| format!("{:.1}", mib(k)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn upload(label: &'static str, lines: u64, secs: u64, peak_mib: u64) -> UploadRun {
        let reply = IngestReply {
            created: lines,
            updated: 0,
            unchanged: 0,
            rejected: 0,
            total: lines,
            errors: Vec::new(),
            errors_truncated: false,
        };
        UploadRun {
            label,
            scan: FileScan {
                path: PathBuf::from(format!("{label}.ndjson")),
                bytes: lines * 300,
                lines,
                distinct: lines,
                new_ids: lines,
            },
            outcome: Ok(UploadOutcome {
                status: 200,
                body: bytes::Bytes::new(),
                content_length: lines * 300 + 200,
                elapsed: Duration::from_secs(secs),
                body_sent: Some(Duration::from_secs(secs)),
                send_error: None,
            }),
            reply: Some(Ok(reply)),
            mem: Some(MemRun {
                before_kib: Some(10 << 10),
                after_kib: Some(20 << 10),
                hwm_kib: Some(peak_mib << 10),
                reset_error: None,
                sampled: Sampled {
                    peak_kib: (peak_mib << 10) - 100,
                    samples: 10,
                    ..Sampled::default()
                },
            }),
            cpu: CpuRun::default(),
            notes: Vec::new(),
        }
    }

    fn summary(large_peak_mib: u64, copy_secs: u64, enforce_targets: bool) -> IngestSummary<'static> {
        let mut baseline = BaselineRun::new(PathBuf::from("x.csv"));
        baseline.copy = Some(CopyRun {
            elapsed: Duration::from_secs(copy_secs),
            copied: 1_000_000,
            command: String::new(),
        });
        IngestSummary {
            url: "http://x",
            engine_pid: Some(1),
            engine_name: None,
            // 100,000 lines/s for the large file.
            uploads: vec![
                upload("small", 100_000, 1, 50),
                upload("large", 1_000_000, 10, large_peak_mib),
            ],
            distinct: 1_100_000,
            invariants: vec![Invariant::check("x", true, "")],
            baseline: Some(baseline),
            enforce_targets,
        }
    }

    fn verdicts(s: &IngestSummary<'_>) -> Vec<Verdict> {
        s.targets().iter().map(|t| t.verdict).collect()
    }

    #[test]
    fn targets_pass_and_fail_at_their_limits() {
        // Growth 64 MiB exactly, copy 250,000 rows/s: ratio 0.40 exactly.
        let s = summary(50 + 64, 4, false);
        assert_eq!(verdicts(&s), [Verdict::Pass, Verdict::Pass]);
        assert_eq!(s.rss_growth_mib(), Some(64.0));
        assert_eq!(s.ratio_lines(), Some(0.4));
        // Growth 65 MiB, copy 1,000,000 rows/s: ratio 0.1.
        let s = summary(50 + 65, 1, false);
        assert_eq!(verdicts(&s), [Verdict::Fail, Verdict::Fail]);
        let json = s.to_json();
        assert_eq!(json["targets"]["rss_growth"]["result"], "fail");
        assert_eq!(json["ratio_lines_to_copy"], 0.1);
        assert_eq!(json["uploads"]["large"]["rss_peak_mib"], 115.0);
    }

    #[test]
    fn missed_targets_decide_the_exit_code_only_when_enforced() {
        assert!(summary(200, 1, false).passed());
        assert!(!summary(200, 1, true).passed());
        assert!(summary(60, 4, true).passed());
        let mut s = summary(60, 4, false);
        s.invariants.push(Invariant::fail("y", ""));
        assert!(!s.passed());
    }

    #[test]
    fn a_failed_upload_skips_the_targets() {
        let mut s = summary(60, 4, true);
        s.uploads[1].outcome = Err("connection reset".into());
        assert_eq!(verdicts(&s), [Verdict::Skip, Verdict::Skip]);
        assert!(s.uploads[1].invariants().iter().any(|i| i.verdict == Verdict::Fail));
    }
}
