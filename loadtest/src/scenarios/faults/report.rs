//! What each fault case measured, printed and as JSON: its figures and its
//! checks.

use serde_json::{Map, Value, json};

use crate::common::stats::quantile_ms;
use crate::common::verdict::Checks;

use super::args::Case;
use super::flood::{FloodConfig, FloodRun};
use super::mixed::{Product, Records, Resolution};

/// One case's checks and figures.
pub struct CaseReport {
    pub case: Case,
    pub secs: f64,
    pub checks: Checks,
    pub figures: Map<String, Value>,
}

impl CaseReport {
    pub fn print(&self) {
        self.checks.print();
        println!("faults {}: {:.1} s", self.case.name(), self.secs);
    }

    pub fn to_json(&self) -> Value {
        json!({"secs": self.secs, "figures": self.figures, "invariants": self.checks.to_json()})
    }
}

/// The whole run: `{"scenario": "faults", "cases": {...}, "invariants", "passed", "skipped"}`.
pub fn summary(url: &str, cases: &[CaseReport], all: &Checks) -> Value {
    let per_case: Map<String, Value> = cases.iter().map(|c| (c.case.name().to_owned(), c.to_json())).collect();
    let mut out = json!({"scenario": "faults", "url": url, "cases": per_case});
    all.add_to(&mut out);
    out
}

/// The mixed load's figures: what the clients were told, and what became of
/// the outcomes they were not told.
pub fn load_figures(
    case: Case,
    products: &[Product],
    records: &Records,
    resolution: &Resolution,
) -> Map<String, Value> {
    let (unknown, wallet_taken) = records.unknown_outcomes();
    let taken = resolution.purchases_taken.len() + resolution.orders_taken.len() + wallet_taken;
    println!(
        "faults {}: {} requests; purchases {} acknowledged, {} unknown ({} took effect); orders {} acknowledged, {} \
         out of stock, {} unknown ({} took effect, {} made by their keyed retry); wallet {} transactions ({} had \
         taken effect before their resend); 503s and lost calls {} {:?}; of {unknown} unknown outcomes {taken} had \
         taken effect",
        case.name(),
        records.requests,
        records.purchases.len(),
        records.purchases_unknown.len(),
        resolution.purchases_taken.len(),
        records.orders.len(),
        records.out_of_stock,
        records.orders_unknown.len(),
        resolution.orders_taken.len(),
        resolution.orders_by_retry.len(),
        records.wallet.len(),
        wallet_taken,
        records.unavailable_total(),
        records.unavailable,
    );
    let mut out = Map::new();
    out.insert(
        "products".into(),
        json!(products.iter().map(|p| p.id).collect::<Vec<_>>()),
    );
    out.insert("requests".into(), json!(records.requests));
    out.insert("purchases".into(), json!(records.purchases.len()));
    out.insert("orders".into(), json!(records.orders.len()));
    out.insert("wallet_transactions".into(), json!(records.wallet.len()));
    out.insert("unavailable".into(), json!(records.unavailable));
    out.insert("unknown_outcomes".into(), json!(unknown));
    out.insert("unknown_that_took_effect".into(), json!(taken));
    out
}

/// The flood's figures, printed on one line and as JSON.
pub fn flood_figures(run: &FloodRun, cfg: &FloodConfig) -> Map<String, Value> {
    let sending = run.sending.as_secs_f64();
    let reached_rate = if sending > 0.0 { run.sent as f64 / sending } else { 0.0 };
    let (admitted, shed) = (&run.admitted, &run.shed);
    println!(
        "flood: capacity {:.0}/s, unloaded p99 {:.1} ms; flood at {:.0}/s for {:.1} s: {} sent in {sending:.1} s \
         ({reached_rate:.0}/s, {:.1}x capacity; the driver reached {} over 100 ms late, {} found {} in flight); \
         admitted {} (p50 {:.1} ms, p99 {:.1} ms), shed {} (p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms)",
        run.capacity,
        quantile_ms(&run.unloaded, 0.99),
        run.rate,
        cfg.secs,
        run.sent,
        run.reached,
        run.late,
        run.full,
        cfg.outstanding_max,
        admitted.len(),
        quantile_ms(admitted, 0.5),
        quantile_ms(admitted, 0.99),
        shed.len(),
        quantile_ms(shed, 0.5),
        quantile_ms(shed, 0.99),
        quantile_ms(shed, 1.0),
    );
    let figures = json!({
        "capacity_per_sec": run.capacity,
        "unloaded_p99_ms": quantile_ms(&run.unloaded, 0.99),
        "rate_per_sec": run.rate,
        "sent": run.sent,
        "sent_late": run.late,
        "found_outstanding_max": run.full,
        "reached_rate_per_sec": reached_rate,
        "sending_secs": sending,
        "admitted": admitted.len(),
        "admitted_p50_ms": quantile_ms(admitted, 0.5),
        "admitted_p99_ms": quantile_ms(admitted, 0.99),
        "shed": shed.len(),
        "shed_p50_ms": quantile_ms(shed, 0.5),
        "shed_p99_ms": quantile_ms(shed, 0.99),
        "shed_max_ms": quantile_ms(shed, 1.0),
        "statuses": run.statuses,
        "rss_before_mib": run.rss_before.map(|m| m.rss_kib as f64 / 1024.0),
        "peak_rss_mib": run.peak.map(|m| m.hwm_kib as f64 / 1024.0),
    });
    match figures {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}
