//! The sale run for people (the printed report) and for `compare` and
//! scripts (the JSON summary).

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::cost::report::CostReport;
use crate::common::fmt::{fmt_opt, fmt_rate, fmt_ratio, ms, ratio};
use crate::common::server::ServerKind;
use crate::common::stats::{Latency, Tail};
use crate::common::verdict::Checks;

use super::load::LoadResult;
use super::redis_bench::Baseline;

/// The tail the report places in time: the slowest 1% of each endpoint.
const TAIL_QUANTILE: f64 = 0.99;

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
    pub checks: &'a Checks,
    /// Checks that do not apply to this server, and why.
    pub not_applicable: Vec<String>,
    pub flush_lag: Option<Duration>,
    pub baseline: Option<Baseline>,
    /// CPU per request of the processes involved over the measured phase,
    /// and the cost table.
    pub cost: Option<&'a CostReport>,
}

impl Summary<'_> {
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
        (secs > 0.0).then(|| self.load.stats.purchases() as f64 / secs)
    }

    fn requests_per_sec(&self) -> Option<f64> {
        let secs = self.load_secs();
        (secs > 0.0).then(|| self.load.stats.total_requests() as f64 / secs)
    }

    fn baseline_rps(&self) -> Option<f64> {
        self.baseline.as_ref().and_then(|b| b.evalsha_per_sec)
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
            fmt_opt(self.sale_id),
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
            "purchases       {:<10} {} /s",
            s.purchases(),
            fmt_rate(self.purchases_per_sec())
        );
        println!(
            "requests        {:<10} {} /s over {:.3} s",
            s.total_requests(),
            fmt_rate(self.requests_per_sec()),
            self.load_secs()
        );
        println!("checkouts ok    {}", s.successful_checkouts());
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
            let l = Latency::of(&ep.latency());
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
        // Where the slowest requests fall: a stall at one moment shows as a
        // narrow span of send times, queueing as one spread over the run.
        for (name, ep) in [("checkout", &s.checkout), ("purchase", &s.purchase)] {
            if let Some(t) = ep.tail(self.load.start, TAIL_QUANTILE) {
                println!(
                    "{name} slowest 1%: {} requests of {:.1} ms or more, sent {:.1} .. {:.1} ms after the start \
                     (median {:.1})",
                    t.requests, t.from_ms, t.first_ms, t.last_ms, t.median_ms
                );
            }
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
                        fmt_ratio(ratio(self.purchases_per_sec(), Some(rps))),
                        fmt_ratio(ratio(self.requests_per_sec(), Some(rps))),
                    );
                }
                None => println!("baseline        skipped: {}", b.note),
            },
        }
        match self.cost {
            Some(cost) => {
                cost.phase_cpu.print_human(self.server.label());
                cost.print_human();
            }
            None => println!("cpu             - (no measured phase)"),
        }
        println!();
        println!("invariants:");
        self.checks.print();
        for why in &self.not_applicable {
            println!("not checked: {why}");
        }
        if !s.error_samples.is_empty() {
            println!();
            println!("first errors:");
            for e in &s.error_samples {
                println!("  {e}");
            }
        }
    }

    pub fn to_json(&self) -> Value {
        let s = &self.load.stats;
        let baseline = self.baseline_rps();
        let mut summary = json!({
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
            "purchases": s.purchases(),
            "successful_checkouts": s.successful_checkouts(),
            "requests": s.total_requests(),
            "purchases_per_sec": self.purchases_per_sec(),
            "requests_per_sec": self.requests_per_sec(),
            "latency": {
                "checkout": Latency::of(&s.checkout.latency()).to_json(),
                "purchase": Latency::of(&s.purchase.latency()).to_json(),
            },
            "slowest_1pct": {
                "checkout": s.checkout.tail(self.load.start, TAIL_QUANTILE).map(Tail::to_json),
                "purchase": s.purchase.tail(self.load.start, TAIL_QUANTILE).map(Tail::to_json),
            },
            "status_counts": {
                "checkout": s.checkout.statuses,
                "purchase": s.purchase.statuses,
            },
            "reconnects": s.reconnects,
            "connect_errors": s.connect_errors,
            "abandoned_users": s.abandoned_users,
            "not_applicable": self.not_applicable,
            "flush_lag_ms": self.flush_lag.map(ms),
            "baseline_evalsha_per_sec": baseline,
            "baseline_note": self.baseline.as_ref().map(|b| b.note.clone()),
            "ratio_purchases_to_baseline": ratio(self.purchases_per_sec(), baseline),
            "ratio_requests_to_baseline": ratio(self.requests_per_sec(), baseline),
            "cpu": self.cost.map(|c| c.phase_cpu.to_json()),
            "cost": self.cost.map(CostReport::to_json),
            "error_samples": s.error_samples,
        });
        self.checks.add_to(&mut summary);
        summary
    }
}
