//! One oha run printed and as JSON: its rate and latencies as oha measured
//! them, and the checks.

use serde_json::{Value, json};

use crate::common::verdict::Checks;

use super::args::Recipe;

/// Seconds (oha's unit) to milliseconds, when present.
fn ms(v: &Value) -> Option<f64> {
    v.as_f64().map(|s| s * 1000.0)
}

pub fn print(recipe: Recipe, result: &Value, checks: &Checks) {
    let s = &result["summary"];
    let p = &result["latencyPercentiles"];
    let fmt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    println!(
        "oha {}: {} requests/s over {} s; latency p50 {} ms, p99 {} ms; statuses {}",
        recipe.name(),
        fmt(s["requestsPerSec"].as_f64()),
        fmt(s["total"].as_f64()),
        fmt(ms(&p["p50"])),
        fmt(ms(&p["p99"])),
        result["statusCodeDistribution"]
    );
    println!("invariants:");
    checks.print();
}

pub fn to_json(recipe: Recipe, result: &Value, checks: &Checks) -> Value {
    let s = &result["summary"];
    let p = &result["latencyPercentiles"];
    let mut out = json!({
        "scenario": "oha",
        "recipe": recipe.name(),
        "requests_per_sec": s["requestsPerSec"],
        "success_rate": s["successRate"],
        "secs": s["total"],
        "p50_ms": ms(&p["p50"]),
        "p99_ms": ms(&p["p99"]),
        "status_counts": result["statusCodeDistribution"],
        "errors": result["errorDistribution"],
    });
    checks.add_to(&mut out);
    out
}
