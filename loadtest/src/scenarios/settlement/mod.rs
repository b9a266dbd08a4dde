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

pub mod args;
mod checks;
mod job;
mod report;

use sqlx::PgPool;

use crate::common::fmt::fmt_opt;
use crate::common::summary;
use crate::common::verdict::Checks;

pub use args::SettlementArgs;
use report::{Report, RunFigures};

pub async fn run(args: SettlementArgs) -> Result<Checks, String> {
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
    let transactions: i64 = sqlx::query_scalar("SELECT count(*) FROM transactions")
        .fetch_one(&db)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "settlement: {transactions} transactions in the table, {paid} PAID in {}..{}",
        args.from, args.to
    );
    let http = job::http();

    let small = match (&args.small_from, &args.small_to) {
        (Some(from), Some(to)) => {
            let run = job::engine_job(&http, &args, from, to).await?;
            println!(
                "small job {from}..{to}: {} transactions, {:.3} s + download {:.3} s, peak RSS {}",
                run.view["processed"],
                run.job_secs,
                run.download_secs,
                fmt_opt(run.peak_rss_mib.map(|m| format!("{m:.1} MiB")))
            );
            Some(run)
        }
        _ => None,
    };

    let csv_path = std::env::temp_dir().join(format!("settlement-baseline-{}.csv", std::process::id()));
    let mut all = Checks::new();
    let mut runs = Vec::new();
    for n in 1..=args.runs {
        let (baseline_secs, baseline_csv) = job::baseline(&args, &csv_path).await?;
        let job = job::engine_job(&http, &args, &args.from, &args.to).await?;
        let differing = checks::rows_differing(&db, &args.from, &args.to).await?;
        let csv_equal = job.csv == baseline_csv;
        all.extend(checks::run(
            n,
            csv_equal,
            differing,
            (&job.view["processed"], &job.view["total"]),
            paid,
        ));
        let figures = RunFigures {
            engine_secs: job.job_secs + job.download_secs,
            job_secs: job.job_secs,
            download_secs: job.download_secs,
            baseline_secs,
            csv_equal,
            rows_differing: differing,
            counts_ok: job.view["processed"] == paid && job.view["total"] == paid,
            peak_rss_mib: job.peak_rss_mib,
            csv_bytes: job.csv.len(),
        };
        figures.print(n, paid);
        runs.push(figures);
    }
    let _ = std::fs::remove_file(&csv_path);
    let _ = std::fs::remove_file(csv_path.with_extension("sql"));
    db.close().await;

    let small_peak_rss_mib = small.and_then(|s| s.peak_rss_mib);
    all.push(checks::rss_growth(report::rss_growth_mib(small_peak_rss_mib, &runs)));
    let report = Report {
        from: &args.from,
        to: &args.to,
        paid,
        transactions,
        runs: &runs,
        small_peak_rss_mib,
        checks: &all,
    };
    report.print_human();
    summary::write(args.json.as_deref(), &report.to_json());
    Ok(all)
}
