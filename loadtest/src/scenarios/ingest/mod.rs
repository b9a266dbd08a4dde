//! The `ingest` scenario: NDJSON files uploaded to `POST /ingest`, with the
//! engine's memory watched, against psql's `\copy` of the same rows.
//!
//! Phases, in order:
//! 1. scan the files (line counts, distinct transaction ids), outside any
//!    measured window;
//! 2. upload the small file, then the large one, each timed from the first
//!    byte sent to the whole answer read, with the engine's RSS sampled;
//! 3. check Postgres against the files;
//! 4. write the large file as CSV (last occurrence of each id), `\copy` it
//!    into a table like `platform_purchases` and time that;
//! 5. report: invariants (exit code) and the two performance targets.

pub mod args;
mod checks;
mod csv;
mod files;
mod report;
mod runs;
mod store;
mod upload;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::cost::{CostProbe, CostSetup, Requests};
use crate::common::http::{Conn, Method, Outcome, Target};
use crate::common::proc::{cpu, rss};
use crate::common::stores::connect_pg;
use crate::common::summary;
use crate::common::verdict::{Check, Checks};

pub use args::IngestArgs;
use files::{CsvFile, FileScan, IdIndex};
use report::Report;
use runs::{BaselineRun, Figures, MemRun, UploadRun};
use store::CopyFailure;
use upload::IngestReply;

/// How long the machine's background load is measured before a timed phase.
const BACKGROUND_WINDOW: Duration = Duration::from_secs(1);

/// Checks that the engine answers and lists the ingest route.
async fn preflight(target: &Target, url: &str) -> Result<(), String> {
    let mut conn = Conn::connect(target, Duration::from_secs(5))
        .await
        .map_err(|e| format!("engine not reachable at {url}: {e}"))?;
    match conn.request(target, Method::GET, "/", Duration::from_secs(10)).await {
        Outcome::Response { status, body, .. } => {
            if !String::from_utf8_lossy(&body).contains("/ingest") {
                eprintln!("warning: GET / answered {status} without listing /ingest: is this engine built with it?");
            }
            Ok(())
        }
        Outcome::Timeout => Err("GET /: no answer".into()),
        Outcome::Transport(e) => Err(format!("GET /: {e}")),
    }
}

/// Scans the files in order (small first), on a blocking thread.
async fn scan_files(paths: Vec<PathBuf>) -> Result<(IdIndex, Vec<FileScan>), String> {
    tokio::task::spawn_blocking(move || {
        let mut index = IdIndex::default();
        let mut scans = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            let number = u8::try_from(i).map_err(|_| "too many files")?;
            scans.push(files::scan(path, number, &mut index)?);
        }
        Ok((index, scans))
    })
    .await
    .map_err(|e| format!("scan task failed: {e}"))?
}

/// One upload, with the engine's memory watched around it.
async fn upload_one(
    args: &IngestArgs,
    target: &Target,
    label: &'static str,
    scan: FileScan,
    pg: Option<&mut sqlx::PgConnection>,
    cost: Option<CostProbe>,
) -> UploadRun {
    let mut notes = Vec::new();
    if let Some(conn) = pg
        && !args.no_checkpoint
        && let Err(e) = store::checkpoint(conn).await
    {
        notes.push(format!("CHECKPOINT before the upload failed: {e}"));
    }
    let background = cpu::background_busy(BACKGROUND_WINDOW).await;
    // Memory: reset the high-water mark, then sample until the answer is in.
    let mut sampler = None;
    let mut before = None;
    let mut reset_error = None;
    if let Some(pid) = args.engine_pid {
        if let Err(e) = rss::reset_peak(pid) {
            reset_error = Some(e);
        }
        before = rss::read(pid).ok();
        match rss::Sampler::start(pid, Duration::from_millis(args.sample_ms)) {
            Ok(s) => sampler = Some(s),
            Err(e) => notes.push(e),
        }
    }
    println!(
        "uploading {} ({} lines, {:.1} MB) ...",
        scan.path.display(),
        scan.lines,
        scan.bytes as f64 / 1e6
    );
    let cpu_start = cpu::CpuStart::now(args.engine_pid);
    // Lines are known only once the answer is in: the phase is not sliced.
    let watch = cost.map(|c| c.start(Requests::AtEnd));
    let outcome = upload::upload(target, "/ingest", &scan.path, Duration::from_secs(args.max_secs)).await;
    let cpu = cpu_start.finish(args.engine_pid, background);
    let cost = match watch {
        Some(watch) => Some(watch.finish(Some(scan.lines)).await),
        None => None,
    };
    let sampled = sampler.map(rss::Sampler::stop);
    let mem = match (args.engine_pid, sampled) {
        (Some(pid), Some(sampled)) => {
            let after = rss::read(pid).ok();
            Some(MemRun {
                before_kib: before.map(|m| m.rss_kib),
                after_kib: after.map(|m| m.rss_kib),
                hwm_kib: after.filter(|_| reset_error.is_none()).map(|m| m.hwm_kib),
                reset_error,
                sampled,
            })
        }
        _ => None,
    };
    let reply = match &outcome {
        Ok(o) if o.status == 200 => Some(serde_json::from_slice::<IngestReply>(&o.body).map_err(|e| {
            format!(
                "the 200 answer is not an ingest report ({e}): {}",
                upload::error_text(&o.body)
            )
        })),
        _ => None,
    };
    UploadRun {
        label,
        scan,
        outcome,
        reply,
        mem,
        cpu,
        cost,
        notes,
    }
}

/// Writes the CSV, creates the table, times `\copy`, compares the data.
async fn baseline(
    args: &IngestArgs,
    index: IdIndex,
    large_file_number: u8,
    conn: &mut sqlx::PgConnection,
    database_url: &str,
) -> BaselineRun {
    let csv_path = args.csv_path();
    let mut run = BaselineRun::new(csv_path.clone());
    println!("writing the baseline CSV {} ...", csv_path.display());
    let source = args.file.clone();
    let out = csv_path.clone();
    let written = tokio::task::spawn_blocking(move || files::write_csv(&source, large_file_number, &index, &out))
        .await
        .map_err(|e| format!("CSV task failed: {e}"))
        .and_then(|r| r);
    let csv: CsvFile = match written {
        Ok(csv) => csv,
        Err(e) => {
            run.checks
                .push(Check::fail("copy_baseline", format!("CSV conversion: {e}")));
            remove_csv(args, &csv_path);
            return run;
        }
    };
    run.csv = Some(csv);
    match store::create_baseline_table(conn).await {
        Ok(indexes) => run.indexes = indexes,
        Err(e) => {
            run.checks.push(Check::fail("copy_baseline", e));
            remove_csv(args, &csv_path);
            return run;
        }
    }
    if !args.no_checkpoint
        && let Err(e) = store::checkpoint(conn).await
    {
        run.notes.push(format!("CHECKPOINT before \\copy failed: {e}"));
    }
    println!("timing psql \\copy of {} rows ...", csv.rows);
    let background = cpu::background_busy(BACKGROUND_WINDOW).await;
    let cpu_start = cpu::CpuStart::now(None);
    let copied = store::run_copy(&args.psql, database_url, &csv_path, Duration::from_secs(args.max_secs)).await;
    run.cpu = Some(cpu_start.finish(None, background));
    match copied {
        Ok(copy) => {
            run.checks.push(Check::new(
                "copy_baseline",
                copy.copied == csv.rows,
                format!("psql reported COPY {}, CSV rows {}", copy.copied, csv.rows),
            ));
            run.copy = Some(copy);
            run.checks.push(checks::same_data(conn, csv.rows).await);
        }
        Err(CopyFailure::Skipped(why)) => run.skipped = Some(why),
        Err(CopyFailure::Failed(why)) => run.checks.push(Check::fail("copy_baseline", why)),
    }
    remove_csv(args, &csv_path);
    run
}

fn remove_csv(args: &IngestArgs, path: &Path) {
    if !args.keep_csv
        && let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("warning: cannot remove {}: {e}", path.display());
    }
}

/// Returns Ok(true) when every invariant passed (and, with
/// --enforce-targets, every target was met).
pub async fn run(args: IngestArgs) -> Result<Checks, String> {
    let args = args.normalised();
    let target = Target::resolve(&args.url).await?;
    preflight(&target, &args.url).await?;
    let engine_name = match args.engine_pid {
        Some(pid) => {
            rss::read(pid).map_err(|e| format!("--engine-pid {pid}: {e}"))?;
            Some(rss::command_name(pid)?)
        }
        None => {
            eprintln!("warning: no --engine-pid: the engine's memory is not measured");
            None
        }
    };
    let mut pg = match &args.database_url {
        Some(url) => {
            let mut conn = connect_pg(url).await?;
            let rows = store::existing_rows(&mut conn).await?;
            if rows != 0 {
                return Err(format!(
                    "platform_purchases already holds {rows} rows: run against a fresh database \
                     (loadtest/run.sh makes one), or TRUNCATE platform_purchases, player_spend"
                ));
            }
            Some(conn)
        }
        None => {
            eprintln!("warning: no --database-url / DATABASE_URL: Postgres checks and the \\copy baseline are skipped");
            None
        }
    };

    let mut paths: Vec<PathBuf> = args.small_file.iter().map(PathBuf::from).collect();
    paths.push(args.file.clone());
    println!("scanning {} file(s) ...", paths.len());
    let (index, scans) = scan_files(paths).await?;
    let large_file_number = u8::try_from(scans.len() - 1).map_err(|_| "too many files")?;

    let mut uploads = Vec::new();
    for (i, scan) in scans.into_iter().enumerate() {
        let large = i == large_file_number as usize;
        let label = if large { "large" } else { "small" };
        // The cost table is the large upload's.
        let cost = match large {
            true => Some(
                CostProbe::discover(CostSetup::engine(
                    "line",
                    &target,
                    args.engine_pid,
                    args.database_url.as_deref(),
                    &args.cost,
                ))
                .await,
            ),
            false => None,
        };
        let run = upload_one(&args, &target, label, scan, pg.as_mut(), cost).await;
        uploads.push(run);
    }

    let distinct = index.distinct();
    let mut invariants: Checks = uploads.iter().flat_map(checks::upload).collect();
    let uploads_ok = uploads.iter().all(UploadRun::succeeded);
    let baseline = match (&mut pg, &args.database_url) {
        (Some(conn), Some(url)) => {
            invariants.extend(checks::postgres(conn, distinct).await);
            if args.no_baseline {
                None
            } else if uploads_ok {
                Some(baseline(&args, index, large_file_number, conn, url).await)
            } else {
                Some(BaselineRun::skipped(
                    args.csv_path(),
                    "an upload failed: no ratio to compute",
                ))
            }
        }
        _ => {
            invariants.push(Check::skipped("postgres", "no --database-url / DATABASE_URL"));
            None
        }
    };

    if let Some(b) = &baseline {
        invariants.extend(b.checks.iter().cloned());
    }
    let figures = Figures {
        url: &args.url,
        engine_pid: args.engine_pid,
        engine_name,
        uploads,
        distinct,
        baseline,
    };
    let targets: Checks = checks::targets(&figures).into_iter().collect();
    let deciding = checks::deciding(&invariants, &targets, args.enforce_targets);
    let report = Report {
        f: &figures,
        checks: &invariants,
        targets: &targets,
        enforce_targets: args.enforce_targets,
        passed: deciding.passed(),
    };
    report.print_human();
    summary::emit(args.json.as_deref(), &report.to_json());
    Ok(deciding)
}
