//! The script bench's table and JSON summary.

use serde_json::{Value, json};

use super::args::ScriptBenchArgs;
use super::{BenchScript, Block};
use crate::common::verdict::Checks;

/// One variant's figures over its blocks.
pub struct Row {
    pub variant: String,
    pub script_us_median: f64,
    pub script_us_min: f64,
    pub cpu_us_median: f64,
    /// Block by block against the first variant's block of the same rep.
    pub ratio_median: f64,
    pub ratio_quartiles: (f64, f64),
}

impl Row {
    pub fn new(variant: &str, own: &[Block], first: &[Block]) -> Row {
        let script: Vec<f64> = own.iter().map(|b| b.script_us).collect();
        let cpu: Vec<f64> = own.iter().map(|b| b.cpu_us).collect();
        let paired: Vec<f64> = own.iter().zip(first).map(|(b, f)| b.script_us / f.script_us).collect();
        Row {
            variant: variant.to_owned(),
            script_us_median: median(&script),
            script_us_min: script.iter().copied().fold(f64::INFINITY, f64::min),
            cpu_us_median: median(&cpu),
            ratio_median: median(&paired),
            ratio_quartiles: (quantile(&paired, 0.25), quantile(&paired, 0.75)),
        }
    }
}

pub fn print_human(script: BenchScript, rows: &[Row]) {
    let request = match script {
        BenchScript::Sale => "a checkout or a purchase",
        BenchScript::Wallet => "a wallet operation",
    };
    println!("per request ({request}), EVALSHA µs and Redis CPU µs:");
    println!(
        "  {:<32} {:>9} {:>9} {:>9} {:>9}  quartiles",
        "variant", "median", "min", "cpu", "/ first"
    );
    for row in rows {
        println!(
            "  {:<32} {:>9.2} {:>9.2} {:>9.2} {:>9.3}  {:.3} .. {:.3}",
            row.variant,
            row.script_us_median,
            row.script_us_min,
            row.cpu_us_median,
            row.ratio_median,
            row.ratio_quartiles.0,
            row.ratio_quartiles.1,
        );
    }
}

pub fn to_json(args: &ScriptBenchArgs, rows: &[Row], checks: &Checks) -> Value {
    let variants: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "variant": r.variant,
                "script_us_median": r.script_us_median,
                "script_us_min": r.script_us_min,
                "cpu_us_median": r.cpu_us_median,
                "ratio_to_first_median": r.ratio_median,
                "ratio_to_first_quartiles": [r.ratio_quartiles.0, r.ratio_quartiles.1],
            })
        })
        .collect();
    json!({
        "scenario": "script-bench",
        "script": args.script.name(),
        "batch": args.batch(),
        "rounds": args.rounds,
        "reps": args.reps,
        "variants": variants,
        "passed": checks.passed(),
    })
}

fn median(values: &[f64]) -> f64 {
    quantile(values, 0.5)
}

/// The `q` quantile of `values` (linear between neighbours); NaN when none
/// is finite.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_between_neighbours() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(median(&v), 2.5);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn a_row_pairs_each_block_with_the_first_variants() {
        let first = [
            Block {
                script_us: 10.0,
                cpu_us: 12.0,
            },
            Block {
                script_us: 20.0,
                cpu_us: 24.0,
            },
        ];
        let own = [
            Block {
                script_us: 9.0,
                cpu_us: 11.0,
            },
            Block {
                script_us: 18.0,
                cpu_us: 22.0,
            },
        ];
        let row = Row::new("v", &own, &first);
        assert!((row.ratio_median - 0.9).abs() < 1e-9);
        assert_eq!(row.script_us_min, 9.0);
    }
}
