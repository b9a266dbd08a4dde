//! The settlement run printed and as JSON: each run's times and its ratio
//! engine / psql, the median ratio (target <= 1.5), the peak RSS of both
//! jobs.

use serde_json::{Value, json};

use crate::common::fmt::{fmt_opt, fmt_ratio};
use crate::common::verdict::Checks;

use super::checks::RSS_GROWTH_LIMIT_MIB;

/// The speed target: the engine's job and download at most this
/// many times psql's (reported, not checked: the machine's speed drifts).
pub const RATIO_TARGET: f64 = 1.5;

/// One timed run's figures.
pub struct RunFigures {
    pub engine_secs: f64,
    pub job_secs: f64,
    pub download_secs: f64,
    pub baseline_secs: f64,
    pub csv_equal: bool,
    pub rows_differing: i64,
    pub counts_ok: bool,
    pub peak_rss_mib: Option<f64>,
    pub csv_bytes: usize,
}

impl RunFigures {
    pub fn ratio(&self) -> f64 {
        self.engine_secs / self.baseline_secs
    }

    pub fn print(&self, n: usize, paid: i64) {
        println!(
            "run {n}: engine {:.3} s (job {:.3} s + download {:.3} s, {} bytes), psql baseline {:.3} s, ratio {}; \
             CSV equal to psql's: {}; rows differing from GROUP BY: {}; processed = total = {paid}: {}; peak RSS {}",
            self.engine_secs,
            self.job_secs,
            self.download_secs,
            self.csv_bytes,
            self.baseline_secs,
            fmt_ratio(Some(self.ratio())),
            self.csv_equal,
            self.rows_differing,
            self.counts_ok,
            fmt_opt(self.peak_rss_mib.map(|m| format!("{m:.1} MiB")))
        );
    }

    fn to_json(&self) -> Value {
        json!({
            "engine_secs": self.engine_secs, "job_secs": self.job_secs, "download_secs": self.download_secs,
            "baseline_secs": self.baseline_secs, "ratio": self.ratio(), "csv_equal": self.csv_equal,
            "rows_differing": self.rows_differing, "counts_ok": self.counts_ok, "peak_rss_mib": self.peak_rss_mib,
            "csv_bytes": self.csv_bytes,
        })
    }
}

pub struct Report<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub paid: i64,
    pub transactions: i64,
    pub runs: &'a [RunFigures],
    pub small_peak_rss_mib: Option<f64>,
    pub checks: &'a Checks,
}

impl Report<'_> {
    pub fn median_ratio(&self) -> f64 {
        let mut ratios: Vec<f64> = self.runs.iter().map(RunFigures::ratio).collect();
        ratios.sort_by(f64::total_cmp);
        ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN)
    }

    pub fn large_peak_rss_mib(&self) -> Option<f64> {
        large_peak_rss_mib(self.runs)
    }

    pub fn rss_growth_mib(&self) -> Option<f64> {
        rss_growth_mib(self.small_peak_rss_mib, self.runs)
    }

    pub fn print_human(&self) {
        println!(
            "settlement: median ratio engine / psql {} (target <= {RATIO_TARGET}){}",
            fmt_ratio(Some(self.median_ratio())),
            self.rss_growth_mib().map_or(String::new(), |g| format!(
                "; peak RSS growth small -> large job {g:.1} MiB (target <= {RSS_GROWTH_LIMIT_MIB})"
            ))
        );
        println!("invariants:");
        self.checks.print();
    }

    pub fn to_json(&self) -> Value {
        let mut summary = json!({
            "scenario": "settlement", "from": self.from, "to": self.to, "paid": self.paid,
            "transactions": self.transactions,
            "runs": self.runs.iter().map(RunFigures::to_json).collect::<Vec<_>>(),
            "median_ratio": self.median_ratio(), "ratio_target": RATIO_TARGET,
            "small_peak_rss_mib": self.small_peak_rss_mib, "large_peak_rss_mib": self.large_peak_rss_mib(),
            "rss_growth_mib": self.rss_growth_mib(), "checks_passed": self.checks.passed(),
        });
        self.checks.add_to(&mut summary);
        summary
    }
}

/// The highest peak RSS of the large jobs.
fn large_peak_rss_mib(runs: &[RunFigures]) -> Option<f64> {
    runs.iter()
        .filter_map(|r| r.peak_rss_mib)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
}

/// Peak RSS of the large jobs minus the small job's.
pub fn rss_growth_mib(small_peak_rss_mib: Option<f64>, runs: &[RunFigures]) -> Option<f64> {
    small_peak_rss_mib.zip(large_peak_rss_mib(runs)).map(|(s, l)| l - s)
}
