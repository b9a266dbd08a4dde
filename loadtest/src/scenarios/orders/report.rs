//! The orders run printed and as JSON: orders/s (`POST /orders` decided per
//! second, retries included: each is one request and one script call),
//! p50 and p99, then the checks.

use serde_json::{Value, json};

use crate::common::cost::report::CostReport;
use crate::common::fmt::{fmt_ratio, ratio};
use crate::common::stats::quantile_ms;
use crate::common::verdict::Checks;

use super::args::OrdersArgs;
use super::load::Records;

pub struct Report<'a> {
    pub args: &'a OrdersArgs,
    pub rec: &'a Records,
    pub elapsed_secs: f64,
    /// Requests whose outcome was unknown after the load.
    pub unknown: usize,
    pub unresolved: &'a [String],
    pub checks: &'a Checks,
    pub cost: &'a CostReport,
}

impl Report<'_> {
    fn orders_per_sec(&self) -> f64 {
        self.rec.orders_decided as f64 / self.elapsed_secs
    }

    pub fn print_human(&self) {
        let rec = self.rec;
        let orders_us = rec.orders_us.histogram();
        println!(
            "orders: {:.0} orders/s ({} decided in {:.2} s; {} ok, {} out of stock), p50 {:.2} ms, p99 {:.2} ms; \
             all requests {:.0}/s; {} unknown outcomes, {} not found out",
            self.orders_per_sec(),
            rec.orders_decided,
            self.elapsed_secs,
            rec.orders_ok,
            rec.out_of_stock,
            quantile_ms(&orders_us, 0.5),
            quantile_ms(&orders_us, 0.99),
            rec.requests as f64 / self.elapsed_secs,
            self.unknown,
            self.unresolved.len(),
        );
        if let Some(b) = self.args.baseline_rps {
            println!(
                "baseline server: {b:.0} requests/s; orders/s / baseline = {}",
                fmt_ratio(ratio(Some(self.orders_per_sec()), Some(b)))
            );
        }
        self.cost.print_human();
        println!("invariants:");
        self.checks.print();
    }

    pub fn to_json(&self) -> Value {
        let (args, rec) = (self.args, self.rec);
        let (orders_us, all_us) = (rec.orders_us.histogram(), rec.all_us.histogram());
        let mut summary = json!({
            "scenario": "orders",
            "products": args.products,
            "stock_per_product": args.stock,
            "buyers": args.buyers,
            "connections": args.connections,
            "operations": args.operations,
            "elapsed_secs": self.elapsed_secs,
            "requests": rec.requests,
            "requests_per_sec": rec.requests as f64 / self.elapsed_secs,
            "orders_decided": rec.orders_decided,
            "orders_per_sec": self.orders_per_sec(),
            "successful_orders_per_sec": rec.orders_ok as f64 / self.elapsed_secs,
            "orders_ok": rec.orders_ok,
            "out_of_stock": rec.out_of_stock,
            "confirmed": rec.confirmed,
            "cancelled": rec.cancelled,
            "left_to_expire": rec.left_to_expire,
            "completed_quantity": rec.completed_quantity(),
            "unknown_outcomes": self.unknown,
            "unresolved": self.unresolved,
            "orders_p50_ms": quantile_ms(&orders_us, 0.5),
            "orders_p99_ms": quantile_ms(&orders_us, 0.99),
            "orders_max_ms": quantile_ms(&orders_us, 1.0),
            "all_p50_ms": quantile_ms(&all_us, 0.5),
            "all_p99_ms": quantile_ms(&all_us, 0.99),
            "baseline_requests_per_sec": args.baseline_rps,
            "ratio_orders_to_baseline": ratio(Some(self.orders_per_sec()), args.baseline_rps),
            "cpu": self.cost.phase_cpu.to_json(),
            "cost": self.cost.to_json(),
        });
        self.checks.add_to(&mut summary);
        summary
    }
}
