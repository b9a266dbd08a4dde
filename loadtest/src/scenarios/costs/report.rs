//! `loadtest costs` printed and as JSON: the cost table alone.

use serde_json::{Value, json};

use crate::common::cost::report::CostReport;
use crate::common::verdict::Checks;

pub struct Report<'a> {
    pub url: &'a str,
    pub cost: &'a CostReport,
    pub checks: &'a Checks,
}

impl Report<'_> {
    pub fn print_human(&self) {
        println!();
        println!("== stampede costs: {} ==", self.url);
        self.cost.phase_cpu.print_human("engine");
        self.cost.print_human();
        println!();
        println!("checks:");
        self.checks.print();
    }

    pub fn to_json(&self) -> Value {
        let mut summary = json!({
            "scenario": "costs",
            "url": self.url,
            "requests": self.cost.phase_requests,
            "secs": self.cost.phase_secs,
            "cpu": self.cost.phase_cpu.to_json(),
            "cost": self.cost.to_json(),
        });
        self.checks.add_to(&mut summary);
        summary
    }
}
