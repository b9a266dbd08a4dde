//! The wallet run printed and as JSON.

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::common::cost::report::CostReport;
use crate::common::stats::quantile_ms;
use crate::common::verdict::Checks;

use super::args::WalletArgs;
use super::load::Records;

pub struct Report<'a> {
    pub args: &'a WalletArgs,
    pub rec: &'a Records,
    pub elapsed_secs: f64,
    pub events: &'a Histogram<u64>,
    pub missing_events: usize,
    pub checks: &'a Checks,
    pub cost: &'a CostReport,
}

impl Report<'_> {
    fn ops_per_sec(&self) -> f64 {
        self.rec.operations as f64 / self.elapsed_secs
    }

    /// The engine's CPU per operation over the load.
    fn engine_cpu_us_per_op(&self) -> Option<f64> {
        self.cost
            .phase_cpu
            .rows
            .iter()
            .find(|r| r.role == "server")
            .and_then(|r| r.us_per_request)
    }

    pub fn print_human(&self) {
        println!(
            "wallet: {} operations in {:.1} s = {:.0} ops/s; {} unexpected answers",
            self.rec.operations,
            self.elapsed_secs,
            self.ops_per_sec(),
            self.rec.unexpected
        );
        println!(
            "wallet: event delivery over {} events: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} not delivered",
            self.events.len(),
            quantile_ms(self.events, 0.5),
            quantile_ms(self.events, 0.99),
            quantile_ms(self.events, 1.0),
            self.missing_events
        );
        if let Some(us) = self.engine_cpu_us_per_op() {
            println!("wallet: engine CPU {us:.1} µs per operation");
        }
        self.cost.phase_cpu.print_human("engine");
        self.cost.print_human();
        println!("invariants:");
        self.checks.print();
    }

    pub fn to_json(&self) -> Value {
        let args = self.args;
        let conserved = self
            .checks
            .iter()
            .find(|c| c.name == "conservation")
            .and_then(|c| match c.verdict {
                crate::common::verdict::Verdict::Skipped => None,
                v => Some(v == crate::common::verdict::Verdict::Pass),
            });
        let mut summary = json!({
            "scenario": "wallet", "server": "engine",
            "players": args.players, "sse_clients": args.sse_clients, "connections": args.connections,
            "operations": self.rec.operations, "elapsed_secs": self.elapsed_secs, "ops_per_sec": self.ops_per_sec(),
            "event_delivery_ms": {"count": self.events.len(), "p50": quantile_ms(self.events, 0.5),
                                  "p99": quantile_ms(self.events, 0.99), "max": quantile_ms(self.events, 1.0)},
            "events_missing": self.missing_events,
            "unexpected_answers": self.rec.unexpected,
            "transactions_acknowledged": self.rec.told.len(),
            "engine_cpu_us_per_op": self.engine_cpu_us_per_op(),
            "conserved": conserved,
            "cpu": self.cost.phase_cpu.to_json(),
            "cost": self.cost.to_json(),
        });
        self.checks.add_to(&mut summary);
        summary
    }
}
