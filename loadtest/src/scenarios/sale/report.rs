//! Human summary and JSON summary of a run.

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::common::fmt::ms;
use crate::common::proc::cpu_split::CpuReport;
use crate::common::server::ServerKind;
use crate::common::stats::EndpointStats;
use crate::scenarios::sale::load::LoadResult;
use crate::scenarios::sale::redis_bench::Baseline;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Invariant {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
}

impl Invariant {
    pub fn check(name: &str, ok: bool, detail: impl Into<String>) -> Invariant {
        Invariant {
            name: name.to_string(),
            verdict: if ok { Verdict::Pass } else { Verdict::Fail },
            detail: detail.into(),
        }
    }

    pub fn fail(name: &str, detail: impl Into<String>) -> Invariant {
        Invariant::check(name, false, detail)
    }

    pub fn skip(name: &str, detail: impl Into<String>) -> Invariant {
        Invariant {
            name: name.to_string(),
            verdict: Verdict::Skip,
            detail: detail.into(),
        }
    }
}

/// Everything the report needs.
pub struct Summary<'a> {
    pub scenario: &'a str,
    pub server: ServerKind,
    pub users: usize,
    pub items: usize,
    pub limit: u64,
    pub connections: usize,
    pub sale_id: Option<i64>,
    pub load: &'a LoadResult,
    pub invariants: Vec<Invariant>,
    pub flush_lag: Option<Duration>,
    pub baseline: Option<Baseline>,
    /// CPU per request of the processes involved, over the measured phase.
    pub cpu: Option<CpuReport>,
}

impl Summary<'_> {
    pub fn passed(&self) -> bool {
        self.invariants.iter().all(|i| i.verdict != Verdict::Fail)
    }

    fn sell_out(&self) -> Option<Duration> {
        self.load
            .stats
            .last_purchase
            .map(|t| t.saturating_duration_since(self.load.start))
    }

    fn load_secs(&self) -> f64 {
        (self.load.end - self.load.start).as_secs_f64()
    }

    fn purchases_per_sec(&self) -> Option<f64> {
        let secs = self.sell_out()?.as_secs_f64();
        (secs > 0.0).then(|| self.load.stats.purchases as f64 / secs)
    }

    fn requests_per_sec(&self) -> Option<f64> {
        let secs = self.load_secs();
        (secs > 0.0).then(|| self.load.stats.total_requests() as f64 / secs)
    }

    fn baseline_rps(&self) -> Option<f64> {
        self.baseline.as_ref().and_then(|b| b.evalsha_per_sec)
    }

    fn ratio(value: Option<f64>, base: Option<f64>) -> Option<f64> {
        match (value, base) {
            (Some(v), Some(b)) if b > 0.0 => Some(v / b),
            _ => None,
        }
    }

    pub fn print_human(&self) {
        let s = &self.load.stats;
        println!();
        println!("== stampede loadtest: {} ({}) ==", self.scenario, self.server.label());
        println!(
            "users {}, items {}, limit {}, connections {}, sale {}",
            self.users,
            self.items,
            self.limit,
            self.connections,
            self.sale_id.map_or("?".to_string(), |v| v.to_string()),
        );
        println!(
            "connect phase   {:.3} s (outside the measured window)",
            self.load.connect_duration.as_secs_f64()
        );
        match self.sell_out() {
            Some(d) => println!(
                "sell-out        {:.3} s (start -> last successful purchase)",
                d.as_secs_f64()
            ),
            None => println!("sell-out        - (no successful purchase)"),
        }
        println!(
            "purchases       {:<10} {}",
            s.purchases,
            fmt_rate(self.purchases_per_sec())
        );
        println!(
            "requests        {:<10} {} over {:.3} s",
            s.total_requests(),
            fmt_rate(self.requests_per_sec()),
            self.load_secs()
        );
        println!("checkouts ok    {}", s.successful_checkouts);
        if s.reconnects + s.connect_errors + s.abandoned_users + s.bad_bodies > 0 {
            println!(
                "trouble         reconnects {}, connect errors {}, abandoned users {}, bad 200 bodies {}",
                s.reconnects, s.connect_errors, s.abandoned_users, s.bad_bodies
            );
        }
        println!();
        println!(
            "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9}  statuses",
            "endpoint", "p50 ms", "p90 ms", "p99 ms", "max ms", "requests"
        );
        for (name, ep) in [("checkout", &s.checkout), ("purchase", &s.purchase)] {
            let l = latency(ep);
            let statuses: Vec<String> = ep.statuses.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            println!(
                "{:<10} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9}  {}",
                name,
                l.p50,
                l.p90,
                l.p99,
                l.max,
                ep.requests,
                statuses.join(", ")
            );
        }
        println!();
        match self.flush_lag {
            Some(lag) => println!(
                "flush lag       {:.1} ms (last purchase response -> all rows in Postgres)",
                ms(lag)
            ),
            None => println!("flush lag       - (not measured)"),
        }
        match &self.baseline {
            None => println!("baseline        - (disabled)"),
            Some(b) => match b.evalsha_per_sec {
                Some(rps) => {
                    println!("baseline        {rps:.0} EVALSHA/s (purchase.lua, unknown-code path)");
                    println!("                {}", b.note);
                    println!(
                        "ratio           purchases/s / baseline = {}, requests/s / baseline = {}",
                        fmt_ratio(Self::ratio(self.purchases_per_sec(), Some(rps))),
                        fmt_ratio(Self::ratio(self.requests_per_sec(), Some(rps))),
                    );
                }
                None => println!("baseline        skipped: {}", b.note),
            },
        }
        match &self.cpu {
            Some(cpu) => cpu.print_human(self.server.label()),
            None => println!("cpu             - (no measured phase)"),
        }
        println!();
        println!("invariants:");
        for inv in &self.invariants {
            println!("{} {}: {}", inv.verdict.label(), inv.name, inv.detail);
        }
        if !s.error_samples.is_empty() {
            println!();
            println!("first errors:");
            for e in &s.error_samples {
                println!("  {e}");
            }
        }
        let failed = self.invariants.iter().filter(|i| i.verdict == Verdict::Fail).count();
        println!();
        if failed == 0 {
            println!("RESULT: PASS ({} checks)", self.invariants.len());
        } else {
            println!("RESULT: FAIL ({failed} of {} checks failed)", self.invariants.len());
        }
    }

    pub fn to_json(&self) -> Value {
        let s = &self.load.stats;
        let mut invariants = Map::new();
        for inv in &self.invariants {
            invariants.insert(
                inv.name.clone(),
                json!({"result": inv.verdict.label().to_lowercase(), "detail": inv.detail}),
            );
        }
        let baseline = self.baseline_rps();
        json!({
            "scenario": self.scenario,
            "server": self.server.name(),
            "users": self.users,
            "items": self.items,
            "limit": self.limit,
            "connections": self.connections,
            "sale_id": self.sale_id,
            "connect_secs": self.load.connect_duration.as_secs_f64(),
            "sell_out_secs": self.sell_out().map(|d| d.as_secs_f64()),
            "load_secs": self.load_secs(),
            "purchases": s.purchases,
            "successful_checkouts": s.successful_checkouts,
            "requests": s.total_requests(),
            "purchases_per_sec": self.purchases_per_sec(),
            "requests_per_sec": self.requests_per_sec(),
            "latency": {
                "checkout": latency(&s.checkout).to_json(),
                "purchase": latency(&s.purchase).to_json(),
            },
            "status_counts": {
                "checkout": s.checkout.statuses,
                "purchase": s.purchase.statuses,
            },
            "reconnects": s.reconnects,
            "connect_errors": s.connect_errors,
            "abandoned_users": s.abandoned_users,
            "invariants": invariants,
            "passed": self.passed(),
            "flush_lag_ms": self.flush_lag.map(ms),
            "baseline_evalsha_per_sec": baseline,
            "baseline_note": self.baseline.as_ref().map(|b| b.note.clone()),
            "ratio_purchases_to_baseline": Self::ratio(self.purchases_per_sec(), baseline),
            "ratio_requests_to_baseline": Self::ratio(self.requests_per_sec(), baseline),
            "cpu": self.cpu.as_ref().map(CpuReport::to_json),
            "error_samples": s.error_samples,
        })
    }
}

/// Writes the JSON summary to `path` (a failure is only a warning: the
/// summary is printed anyway), then prints it.
pub fn emit_json(path: Option<&Path>, json: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(json).map_err(|e| format!("JSON: {e}"))?;
    if let Some(path) = path {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(path, format!("{text}\n")) {
            eprintln!("warning: cannot write {}: {e}", path.display());
        }
    }
    println!();
    println!("{text}");
    Ok(())
}

struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Latency {
    fn to_json(&self) -> Value {
        json!({"p50_ms": self.p50, "p90_ms": self.p90, "p99_ms": self.p99, "max_ms": self.max})
    }
}

fn latency(ep: &EndpointStats) -> Latency {
    let h = &ep.latency_us;
    let to_ms = |us: u64| us as f64 / 1000.0;
    if h.is_empty() {
        return Latency {
            p50: 0.0,
            p90: 0.0,
            p99: 0.0,
            max: 0.0,
        };
    }
    Latency {
        p50: to_ms(h.value_at_quantile(0.50)),
        p90: to_ms(h.value_at_quantile(0.90)),
        p99: to_ms(h.value_at_quantile(0.99)),
        max: to_ms(h.max()),
    }
}

fn fmt_rate(rate: Option<f64>) -> String {
    rate.map_or("-".to_string(), |r| format!("{r:.1} /s"))
}

fn fmt_ratio(ratio: Option<f64>) -> String {
    ratio.map_or("-".to_string(), |r| format!("{r:.3}"))
}
