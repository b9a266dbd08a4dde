//! The `settlement` scenario: a settlement job over a million transactions,
//! timed from `POST /jobs/settlement` to `COMPLETED` plus the CSV download,
//! against the same-run `psql` baseline, with the results checked against
//! SQL run directly and the engine's memory watched.
//!
//! Phases (the transactions are already loaded by `stampede gen-transactions`):
//! 1. a job over the small range (the memory reference);
//! 2. `--runs` times: the baseline (`psql` running one `INSERT … SELECT …
//!    GROUP BY … ON CONFLICT` into a table like `settlements`, then `\copy
//!    (SELECT …) TO` a CSV), then the engine's job over the large range and
//!    its download; each run checks the engine's CSV byte for byte against
//!    psql's, the `settlements` rows against a direct `GROUP BY`, and
//!    `processed` = `total` = the PAID transactions of the range;
//! 3. report: times, ratios engine / baseline, peak RSS of both jobs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::common::at_least_one;
use crate::common::proc::rss;

/// The targets.
pub const RATIO_TARGET: f64 = 1.5;
pub const RSS_GROWTH_LIMIT_MIB: f64 = 64.0;

type Http = Client<HttpConnector, Full<Bytes>>;

/// Flags of `loadtest settlement`.
#[derive(Debug, Clone, clap::Args)]
pub struct SettlementArgs {
    /// The engine's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The engine's Postgres (the transactions, the baseline, the checks).
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: String,
    /// The engine's STAMPEDE_ADMIN_TOKEN (jobs are admin routes).
    #[arg(long, env = "STAMPEDE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// The engine's process, for its peak RSS.
    #[arg(long, value_name = "PID")]
    pub engine_pid: Option<u32>,
    /// First day of the large range (YYYY-MM-DD).
    #[arg(long, default_value = "2025-01-01", value_parser = date)]
    pub from: String,
    /// Last day of the large range.
    #[arg(long, default_value = "2025-01-31", value_parser = date)]
    pub to: String,
    /// First day of the small range, the memory reference (none if unset).
    #[arg(long, value_parser = date, requires = "small_to")]
    pub small_from: Option<String>,
    /// Last day of the small range.
    #[arg(long, value_parser = date, requires = "small_from")]
    pub small_to: Option<String>,
    /// Timed runs, each with its psql baseline.
    #[arg(long, default_value_t = 3, value_parser = at_least_one())]
    pub runs: usize,
    /// psql binary of the baseline.
    #[arg(long, default_value = "psql")]
    pub psql: String,
    /// Also write the JSON summary to PATH.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Budget of one job, POST to COMPLETED.
    #[arg(long, default_value_t = 600)]
    pub max_secs: u64,
}

/// A `YYYY-MM-DD` date: it goes into the baseline's SQL text as it is.
fn date(value: &str) -> Result<String, String> {
    let ok = value.len() == 10
        && value.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 4 | 7) {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!("{value:?} is not a YYYY-MM-DD date"))
    }
}

/// One engine job: seconds to COMPLETED, seconds to download, the CSV and
/// the job's final view.
struct JobRun {
    job_secs: f64,
    download_secs: f64,
    csv: Bytes,
    view: Value,
    peak_rss_mib: Option<f64>,
}

async fn request(
    http: &Http,
    args: &SettlementArgs,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<(StatusCode, Bytes), String> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("{}{path}", args.url))
        .header("authorization", format!("Bearer {}", args.admin_token));
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    let req = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let res = http.request(req).await.map_err(|e| format!("{path}: {e}"))?;
    let status = res.status();
    let bytes = res
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{path}: {e}"))?
        .to_bytes();
    Ok((status, bytes))
}

/// POST, poll every 10 ms until COMPLETED, download.
async fn engine_job(http: &Http, args: &SettlementArgs, from: &str, to: &str) -> Result<JobRun, String> {
    if let Some(pid) = args.engine_pid {
        rss::reset_peak(pid)?;
    }
    let started = Instant::now();
    let body = json!({"from": from, "to": to}).to_string();
    let (status, reply) = request(http, args, Method::POST, "/jobs/settlement", Some(body)).await?;
    if status != StatusCode::ACCEPTED {
        return Err(format!(
            "POST /jobs/settlement: {status} {}",
            String::from_utf8_lossy(&reply)
        ));
    }
    let reply: Value = serde_json::from_slice(&reply).map_err(|e| e.to_string())?;
    let id = reply["job_id"].as_str().ok_or("no job_id")?.to_owned();
    let deadline = started + Duration::from_secs(args.max_secs);
    let view = loop {
        let (status, body) = request(http, args, Method::GET, &format!("/jobs/{id}"), None).await?;
        let view: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if status != StatusCode::OK {
            return Err(format!("GET /jobs/{id}: {status} {view}"));
        }
        match view["status"].as_str() {
            Some("COMPLETED") => break view,
            Some("FAILED" | "CANCELLED") => return Err(format!("job ended {view}")),
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(format!("job not completed within {} s: {view}", args.max_secs));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let completed = started.elapsed();
    let (status, csv) = request(http, args, Method::GET, &format!("/downloads/{id}.csv"), None).await?;
    if status != StatusCode::OK {
        return Err(format!("download: {status}"));
    }
    let total = started.elapsed();
    let peak_rss_mib = args
        .engine_pid
        .map(rss::read)
        .transpose()?
        .map(|m| m.hwm_kib as f64 / 1024.0);
    Ok(JobRun {
        job_secs: completed.as_secs_f64(),
        download_secs: (total - completed).as_secs_f64(),
        csv,
        view,
        peak_rss_mib,
    })
}

/// The baseline: one psql session upserting the range's settlements into
/// `baseline_settlements` (like `settlements`) and `\copy`ing them out.
async fn baseline(args: &SettlementArgs, csv_path: &std::path::Path) -> Result<(f64, Bytes), String> {
    let (from, to) = (&args.from, &args.to);
    let script = format!(
        "INSERT INTO baseline_settlements (merchant_id, date, gross_cents, fee_cents, net_cents, txn_count, unique_run_id)
         SELECT merchant_id, paid_at::date, sum(amount_cents), sum(fee_cents), sum(amount_cents) - sum(fee_cents),
                count(*), '00000000-0000-4000-8000-000000000000'
         FROM transactions
         WHERE status = 'PAID' AND paid_at >= '{from}' AND paid_at < date '{to}' + 1
         GROUP BY 1, 2
         ON CONFLICT (merchant_id, date) DO UPDATE SET gross_cents = EXCLUDED.gross_cents,
             fee_cents = EXCLUDED.fee_cents, net_cents = EXCLUDED.net_cents, txn_count = EXCLUDED.txn_count,
             generated_at = EXCLUDED.generated_at, unique_run_id = EXCLUDED.unique_run_id;
\\copy (SELECT merchant_id, date, gross_cents, fee_cents, net_cents, txn_count FROM baseline_settlements WHERE date BETWEEN '{from}' AND '{to}' ORDER BY merchant_id, date) TO '{}' WITH (FORMAT csv, HEADER)
",
        csv_path.display()
    );
    let script_path = csv_path.with_extension("sql");
    std::fs::write(&script_path, script).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let status = tokio::process::Command::new(&args.psql)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &args.database_url, "-f"])
        .arg(&script_path)
        .status()
        .await
        .map_err(|e| format!("{}: {e}", args.psql))?;
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        return Err(format!("psql baseline failed: {status}"));
    }
    let csv = std::fs::read(csv_path).map_err(|e| e.to_string())?;
    Ok((secs, Bytes::from(csv)))
}

/// Rows of `settlements` in the range that differ from a direct GROUP BY
/// over `transactions`, both ways.
async fn rows_differing(db: &PgPool, from: &str, to: &str) -> Result<i64, String> {
    let direct = "SELECT merchant_id, paid_at::date AS date, sum(amount_cents)::bigint, sum(fee_cents)::bigint,
                         (sum(amount_cents) - sum(fee_cents))::bigint, count(*)::int
                  FROM transactions WHERE status = 'PAID' AND paid_at >= $1::date AND paid_at < $2::date + 1
                  GROUP BY 1, 2";
    let stored = "SELECT merchant_id, date, gross_cents, fee_cents, net_cents, txn_count
                  FROM settlements WHERE date BETWEEN $1::date AND $2::date";
    let sql = format!(
        "SELECT (SELECT count(*) FROM ({direct} EXCEPT {stored}) a) + (SELECT count(*) FROM ({stored} EXCEPT {direct}) b)"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(from)
        .bind(to)
        .fetch_one(db)
        .await
        .map_err(|e| e.to_string())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub async fn run(args: SettlementArgs) -> Result<bool, String> {
    if args.database_url.is_empty() || args.admin_token.is_empty() {
        return Err("settlement needs --database-url and --admin-token (or DATABASE_URL, STAMPEDE_ADMIN_TOKEN)".into());
    }
    let db = PgPool::connect(&args.database_url).await.map_err(|e| e.to_string())?;
    sqlx::query("CREATE TABLE IF NOT EXISTS baseline_settlements (LIKE settlements INCLUDING ALL)")
        .execute(&db)
        .await
        .map_err(|e| e.to_string())?;
    let paid: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM transactions WHERE status = 'PAID' AND paid_at >= $1::date AND paid_at < $2::date + 1",
    )
    .bind(&args.from)
    .bind(&args.to)
    .fetch_one(&db)
    .await
    .map_err(|e| e.to_string())?;
    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM transactions")
        .fetch_one(&db)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "settlement: {all} transactions in the table, {paid} PAID in {}..{}",
        args.from, args.to
    );
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let http: Http = Client::builder(TokioExecutor::new()).build(connector);
    let mut ok = true;

    let small = match (&args.small_from, &args.small_to) {
        (Some(from), Some(to)) => {
            let run = engine_job(&http, &args, from, to).await?;
            println!(
                "small job {from}..{to}: {} transactions, {:.3} s + download {:.3} s, peak RSS {}",
                run.view["processed"],
                run.job_secs,
                run.download_secs,
                run.peak_rss_mib.map_or("-".into(), |m| format!("{m:.1} MiB"))
            );
            Some(run)
        }
        _ => None,
    };

    let csv_path = std::env::temp_dir().join(format!("settlement-baseline-{}.csv", std::process::id()));
    let mut runs = Vec::new();
    for n in 1..=args.runs {
        let (baseline_secs, baseline_csv) = baseline(&args, &csv_path).await?;
        let job = engine_job(&http, &args, &args.from, &args.to).await?;
        let engine_secs = job.job_secs + job.download_secs;
        let differing = rows_differing(&db, &args.from, &args.to).await?;
        let csv_equal = job.csv == baseline_csv;
        let counts_ok = job.view["processed"] == paid && job.view["total"] == paid;
        ok &= csv_equal && differing == 0 && counts_ok;
        let ratio = engine_secs / baseline_secs;
        println!(
            "run {n}: engine {engine_secs:.3} s (job {:.3} s + download {:.3} s, {} bytes), psql baseline {baseline_secs:.3} s, \
             ratio {ratio:.2}; CSV equal to psql's: {csv_equal}; rows differing from GROUP BY: {differing}; \
             processed = total = {paid}: {counts_ok}; peak RSS {}",
            job.job_secs,
            job.download_secs,
            job.csv.len(),
            job.peak_rss_mib.map_or("-".into(), |m| format!("{m:.1} MiB"))
        );
        runs.push(json!({
            "engine_secs": engine_secs, "job_secs": job.job_secs, "download_secs": job.download_secs,
            "baseline_secs": baseline_secs, "ratio": ratio, "csv_equal": csv_equal,
            "rows_differing": differing, "counts_ok": counts_ok, "peak_rss_mib": job.peak_rss_mib,
            "csv_bytes": job.csv.len(),
        }));
    }
    let _ = std::fs::remove_file(&csv_path);
    let _ = std::fs::remove_file(csv_path.with_extension("sql"));
    let mut ratios: Vec<f64> = runs.iter().filter_map(|r| r["ratio"].as_f64()).collect();
    let median_ratio = median(&mut ratios);
    let large_peak = runs
        .iter()
        .filter_map(|r| r["peak_rss_mib"].as_f64())
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let growth = small
        .as_ref()
        .and_then(|s| s.peak_rss_mib)
        .zip(large_peak)
        .map(|(s, l)| l - s);
    println!(
        "settlement: median ratio engine / psql {median_ratio:.2} (target <= {RATIO_TARGET}){}",
        growth.map_or(String::new(), |g| format!(
            "; peak RSS growth small -> large job {g:.1} MiB (target <= {RSS_GROWTH_LIMIT_MIB})"
        ))
    );
    if let Some(g) = growth {
        ok &= g <= RSS_GROWTH_LIMIT_MIB;
    }
    println!("settlement: checks {}", if ok { "passed" } else { "FAILED" });
    if let Some(path) = &args.json {
        let summary = json!({
            "scenario": "settlement", "from": args.from, "to": args.to, "paid": paid, "transactions": all,
            "runs": runs, "median_ratio": median_ratio, "ratio_target": RATIO_TARGET,
            "small_peak_rss_mib": small.and_then(|s| s.peak_rss_mib), "large_peak_rss_mib": large_peak,
            "rss_growth_mib": growth, "checks_passed": ok,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&summary).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    db.close().await;
    Ok(ok)
}
