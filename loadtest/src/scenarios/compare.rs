//! `loadtest compare`: the engine's run next to the baseline server's.
//! Its args, its run, its checks (both runs passed) and its report (the
//! table) fit in this one file.
//!
//! Reads the JSON summaries of two runs of the same scenario, one against
//! the engine and one against `baseline-server`, prints a table figure |
//! engine | baseline | engine/baseline, and writes the engine's summary with
//! the baseline's and the ratios added (`run.sh` runs it after both loads).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::common::fmt::{fmt_ratio, fmt_value, ratio};
use crate::common::verdict::{Check, Checks, Verdict};

/// Flags of `loadtest compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// The engine run's JSON summary.
    #[arg(long, value_name = "ENGINE.json")]
    engine: PathBuf,
    /// The baseline server run's JSON summary.
    #[arg(long, value_name = "BASELINE.json")]
    baseline: PathBuf,
    /// Write the engine's summary with the baseline's and the ratios added to OUT.
    #[arg(long, value_name = "OUT")]
    json: Option<PathBuf>,
}

/// One compared figure: where it is in a run's JSON summary.
struct Figure {
    /// Key in `vs_baseline_server.ratios`.
    key: &'static str,
    label: &'static str,
    pointer: &'static str,
}

const FIGURES: &[Figure] = &[
    Figure {
        key: "sell_out_secs",
        label: "sell-out s",
        pointer: "/sell_out_secs",
    },
    Figure {
        key: "purchases_per_sec",
        label: "purchases/s",
        pointer: "/purchases_per_sec",
    },
    Figure {
        key: "requests_per_sec",
        label: "requests/s",
        pointer: "/requests_per_sec",
    },
    Figure {
        key: "checkout_p50_ms",
        label: "checkout p50 ms",
        pointer: "/latency/checkout/p50_ms",
    },
    Figure {
        key: "checkout_p99_ms",
        label: "checkout p99 ms",
        pointer: "/latency/checkout/p99_ms",
    },
    Figure {
        key: "purchase_p50_ms",
        label: "purchase p50 ms",
        pointer: "/latency/purchase/p50_ms",
    },
    Figure {
        key: "purchase_p99_ms",
        label: "purchase p99 ms",
        pointer: "/latency/purchase/p99_ms",
    },
    Figure {
        key: "cpu_us_server",
        label: "CPU µs/req server",
        pointer: "/cpu/us_per_request/server",
    },
    Figure {
        key: "cpu_us_redis",
        label: "CPU µs/req redis",
        pointer: "/cpu/us_per_request/redis",
    },
    Figure {
        key: "cpu_us_postgres",
        label: "CPU µs/req postgres",
        pointer: "/cpu/us_per_request/postgres",
    },
    Figure {
        key: "cpu_us_driver",
        label: "CPU µs/req driver",
        pointer: "/cpu/us_per_request/driver",
    },
    Figure {
        key: "cpu_us_other",
        label: "CPU µs/req other",
        pointer: "/cpu/us_per_request/other",
    },
    Figure {
        key: "cpu_us_machine",
        label: "CPU µs/req machine",
        pointer: "/cpu/us_per_request/machine",
    },
    Figure {
        key: "redis_info_cpu_us",
        label: "Redis INFO cpu µs/req",
        pointer: "/cost/redis/cpu_us",
    },
    Figure {
        key: "redis_scripts_us",
        label: "scripts µs/req",
        pointer: "/cost/redis/scripts_us",
    },
    Figure {
        key: "redis_lua_us",
        label: "Lua itself µs/req",
        pointer: "/cost/redis/lua_us",
    },
    Figure {
        key: "redis_script_calls",
        label: "script calls/req",
        pointer: "/cost/redis/script_calls",
    },
];

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: &'static str,
    pub label: &'static str,
    pub engine: Option<f64>,
    pub baseline: Option<f64>,
    pub ratio: Option<f64>,
}

pub fn rows(engine: &Value, baseline: &Value) -> Vec<Row> {
    FIGURES
        .iter()
        .map(|f| {
            let e = engine.pointer(f.pointer).and_then(Value::as_f64);
            let b = baseline.pointer(f.pointer).and_then(Value::as_f64);
            Row {
                key: f.key,
                label: f.label,
                engine: e,
                baseline: b,
                ratio: ratio(e, b),
            }
        })
        .collect()
}

/// The printed table.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<22} {:>10} {:>10} {:>16}\n",
        "figure", "engine", "baseline", "engine/baseline"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<22} {:>10} {:>10} {:>16}\n",
            r.label,
            fmt_value(r.engine),
            fmt_value(r.baseline),
            fmt_ratio(r.ratio)
        ));
    }
    out
}

/// The engine's summary with `baseline_server` (the baseline's whole
/// summary) and `vs_baseline_server` (the table and the ratios) added.
pub fn merged(engine: &Value, baseline: &Value, rows: &[Row]) -> Result<Value, String> {
    let mut out = engine
        .as_object()
        .cloned()
        .ok_or("the engine's summary is not a JSON object")?;
    let mut ratios = Map::new();
    let mut figures = Vec::new();
    for r in rows {
        ratios.insert(r.key.into(), json!(r.ratio));
        figures.push(json!({
            "key": r.key,
            "figure": r.label,
            "engine": r.engine,
            "baseline": r.baseline,
            "ratio": r.ratio,
        }));
    }
    let passed = |v: &Value| v.get("passed").and_then(Value::as_bool);
    out.insert("baseline_server".into(), baseline.clone());
    out.insert(
        "vs_baseline_server".into(),
        json!({
            "ratio": "engine / baseline server",
            "ratios": ratios,
            "figures": figures,
            "engine_passed": passed(engine),
            "baseline_passed": passed(baseline),
        }),
    );
    Ok(Value::Object(out))
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))
}

/// The two runs' own verdicts: a ratio of a failed run means nothing.
fn checks(engine: &Value, baseline: &Value) -> Checks {
    let verdict = |name: &str, v: &Value| match v.get("passed").and_then(Value::as_bool) {
        Some(passed) => Check::new(name, passed, format!("its summary says passed = {passed}")),
        None => Check::fail(name, "its summary has no \"passed\""),
    };
    [verdict("engine_run", engine), verdict("baseline_run", baseline)]
        .into_iter()
        .collect()
}

/// Prints the table; writes the merged summary to `--json`.
pub fn run(args: CompareArgs) -> Result<Checks, String> {
    let engine = read_json(&args.engine)?;
    let baseline = read_json(&args.baseline)?;
    let scenario = |v: &Value| v.get("scenario").and_then(Value::as_str).unwrap_or("?").to_string();
    if scenario(&engine) != scenario(&baseline) {
        eprintln!(
            "warning: comparing scenario {} with scenario {}",
            scenario(&engine),
            scenario(&baseline)
        );
    }
    let rows = rows(&engine, &baseline);
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).map_or("?".into(), |n| n.to_string());
    println!();
    println!(
        "== engine vs baseline server: {}, {} users, {} items, {} connections ==",
        scenario(&engine),
        num(&engine, "users"),
        num(&engine, "items"),
        num(&engine, "connections")
    );
    print!("{}", table(&rows));
    let checks = checks(&engine, &baseline);
    let label = |name: &str| {
        checks
            .iter()
            .find(|c| c.name == name)
            .map_or(Verdict::Fail.label(), |c| c.verdict.label())
    };
    println!(
        "invariants: engine {}, baseline server {}",
        label("engine_run"),
        label("baseline_run")
    );
    let merged = merged(&engine, &baseline, &rows)?;
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&merged).map_err(|e| format!("JSON: {e}"))?;
        std::fs::write(path, format!("{text}\n")).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(sell_out: f64, p99: f64, server_us: f64, pg_us: Option<f64>) -> Value {
        json!({
            "scenario": "contest", "passed": true,
            "sell_out_secs": sell_out, "purchases_per_sec": 2000.0 / sell_out, "requests_per_sec": null,
            "latency": {"checkout": {"p50_ms": 5.0, "p99_ms": p99}, "purchase": {"p50_ms": 4.0, "p99_ms": p99}},
            "cpu": {"us_per_request": {"server": server_us, "redis": 20.0, "postgres": pg_us, "driver": 10.0}},
        })
    }

    #[test]
    fn ratios_are_engine_over_baseline() {
        let rows = rows(
            &summary(2.0, 30.0, 48.0, Some(9.0)),
            &summary(0.5, 10.0, 16.0, Some(0.0)),
        );
        let get = |key: &str| rows.iter().find(|r| r.key == key).unwrap().clone();
        assert_eq!(get("sell_out_secs").ratio, Some(4.0));
        assert_eq!(get("purchases_per_sec").ratio, Some(0.25));
        assert_eq!(get("checkout_p99_ms").ratio, Some(3.0));
        assert_eq!(get("cpu_us_server").ratio, Some(3.0));
        // A baseline of 0 (an idle Postgres) or a missing figure: no ratio.
        assert_eq!(get("cpu_us_postgres").ratio, None);
        assert_eq!(get("cpu_us_postgres").engine, Some(9.0));
        assert_eq!(get("requests_per_sec").ratio, None);
        assert_eq!(get("cpu_us_other").engine, None);
        assert_eq!(rows.len(), FIGURES.len());
    }

    #[test]
    fn a_failed_run_fails_the_comparison() {
        let engine = summary(2.0, 30.0, 48.0, Some(9.0));
        let mut baseline = summary(0.5, 10.0, 16.0, None);
        assert!(checks(&engine, &baseline).passed());
        baseline["passed"] = json!(false);
        assert!(!checks(&engine, &baseline).passed());
        assert!(!checks(&json!({}), &engine).passed());
    }

    #[test]
    fn table_and_merged_summary() {
        let engine = summary(2.0, 30.0, 48.0, Some(9.0));
        let baseline = summary(0.5, 10.0, 16.0, None);
        let rows = rows(&engine, &baseline);
        let text = table(&rows);
        let first = text.lines().next().unwrap();
        assert!(first.starts_with("figure") && first.ends_with("engine/baseline"));
        let sell_out = text.lines().find(|l| l.starts_with("sell-out s")).unwrap();
        assert_eq!(
            sell_out.split_whitespace().collect::<Vec<_>>(),
            ["sell-out", "s", "2.000", "0.500", "4.00"]
        );
        let m = merged(&engine, &baseline, &rows).unwrap();
        assert_eq!(m["sell_out_secs"], 2.0);
        assert_eq!(m["baseline_server"]["sell_out_secs"], 0.5);
        assert_eq!(m["vs_baseline_server"]["ratios"]["sell_out_secs"], 4.0);
        assert!(m["vs_baseline_server"]["ratios"]["cpu_us_postgres"].is_null());
        assert_eq!(m["vs_baseline_server"]["baseline_passed"], true);
        assert!(merged(&json!([1]), &baseline, &rows).is_err());
    }
}
