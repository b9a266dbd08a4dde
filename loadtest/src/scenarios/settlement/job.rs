//! One timed job of the engine (POST to COMPLETED, then the CSV download)
//! and one timed run of the psql baseline.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::common::proc::rss;

use super::args::SettlementArgs;

/// hyper's client, not the driver's own: the CSV download comes chunked
/// (it streams from Postgres), which the driver's client refuses to guess
/// at. hyper-util sends a request again only if it never started writing
/// it, so nothing here is sent twice.
pub type Http = Client<HttpConnector, Full<Bytes>>;

pub fn http() -> Http {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// One engine job: seconds to COMPLETED, seconds to download, the CSV and
/// the job's final view.
pub struct JobRun {
    pub job_secs: f64,
    pub download_secs: f64,
    pub csv: Bytes,
    pub view: Value,
    pub peak_rss_mib: Option<f64>,
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
pub async fn engine_job(http: &Http, args: &SettlementArgs, from: &str, to: &str) -> Result<JobRun, String> {
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
pub async fn baseline(args: &SettlementArgs, csv_path: &std::path::Path) -> Result<(f64, Bytes), String> {
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
