//! What the ingest run measured: each upload, the `\copy` baseline, and the
//! figures the checks and the report derive from them.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::common::cost::report::CostReport;
use crate::common::fmt::{mib, ratio};
use crate::common::proc::cpu::CpuRun;
use crate::common::proc::rss::Sampled;
use crate::common::verdict::Check;

use super::files::{CsvFile, FileScan};
use super::store::CopyRun;
use super::upload::{IngestReply, UploadOutcome};

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

    pub fn to_json(&self) -> Value {
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
    /// The cost table of the large upload, per line.
    pub cost: Option<CostReport>,
    pub notes: Vec<String>,
}

impl UploadRun {
    pub fn reply(&self) -> Option<&IngestReply> {
        self.reply.as_ref().and_then(|r| r.as_ref().ok())
    }

    /// Answered 200 with a report, after the whole body was sent.
    pub fn succeeded(&self) -> bool {
        self.reply().is_some() && self.outcome.as_ref().is_ok_and(|o| o.send_error.is_none())
    }

    /// First byte sent -> answer read, for a successful upload.
    pub fn secs(&self) -> Option<f64> {
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

    pub fn peak_kib(&self) -> Option<u64> {
        self.mem.as_ref().and_then(MemRun::peak_kib)
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
    pub checks: Vec<Check>,
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
            checks: Vec::new(),
        }
    }

    pub fn skipped(csv_path: PathBuf, why: &str) -> BaselineRun {
        BaselineRun {
            skipped: Some(why.to_string()),
            ..BaselineRun::new(csv_path)
        }
    }

    pub fn secs(&self) -> Option<f64> {
        self.copy.as_ref().map(|c| c.elapsed.as_secs_f64()).filter(|s| *s > 0.0)
    }

    pub fn rows_per_sec(&self) -> Option<f64> {
        let copy = self.copy.as_ref()?;
        self.secs().map(|s| copy.copied as f64 / s)
    }
}

/// What the uploads and the baseline measured, and the figures derived
/// from them.
pub struct Figures<'a> {
    pub url: &'a str,
    pub engine_pid: Option<u32>,
    pub engine_name: Option<String>,
    pub uploads: Vec<UploadRun>,
    /// Distinct transaction ids over all files.
    pub distinct: u64,
    pub baseline: Option<BaselineRun>,
}

impl Figures<'_> {
    pub fn upload(&self, label: &str) -> Option<&UploadRun> {
        self.uploads.iter().find(|u| u.label == label)
    }

    pub fn copy_rows_per_sec(&self) -> Option<f64> {
        self.baseline.as_ref().and_then(BaselineRun::rows_per_sec)
    }

    pub fn ratio_lines(&self) -> Option<f64> {
        ratio(
            self.upload("large").and_then(UploadRun::lines_per_sec),
            self.copy_rows_per_sec(),
        )
    }

    pub fn ratio_rows(&self) -> Option<f64> {
        ratio(
            self.upload("large").and_then(UploadRun::rows_per_sec),
            self.copy_rows_per_sec(),
        )
    }

    /// Peak RSS of the large upload minus the small one's, in MiB.
    pub fn rss_growth_mib(&self) -> Option<f64> {
        let small = self.upload("small")?.peak_kib()?;
        let large = self.upload("large")?.peak_kib()?;
        let growth = (large as f64 - small as f64) / 1024.0;
        // Under 0.1 MiB is noise; it would print as "-0.0".
        Some(if growth.abs() < 0.05 { 0.0 } else { growth })
    }
}
