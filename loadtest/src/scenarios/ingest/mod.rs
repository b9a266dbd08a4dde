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
//! 5. report: invariants (exit code) and the two targets.

mod csv;
mod files;
mod report;
mod store;
mod upload;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::http::{Conn, Method, Outcome, Target};
use crate::common::proc::{cpu, rss};
use crate::scenarios::sale::checks::connect_pg;
use crate::scenarios::sale::report::Invariant;

use files::{CsvFile, FileScan, IdIndex};
use report::{BaselineRun, IngestSummary, MemRun, UploadRun};
use store::CopyFailure;
use upload::IngestReply;

/// The memory target: peak RSS of the large upload at most this much
/// above the small one's.
pub const RSS_GROWTH_LIMIT_MIB: f64 = 64.0;
/// How long the machine's background load is measured before a timed phase.
const BACKGROUND_WINDOW: Duration = Duration::from_secs(1);

/// The throughput target: engine lines/s at least this share of the
/// `\copy` rows/s of the same run.
pub const COPY_RATIO_TARGET: f64 = 0.40;

/// Flags of `loadtest ingest`.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// The engine's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The large NDJSON file: its upload is the one compared with \copy.
    #[arg(long, value_name = "PATH")]
    pub file: PathBuf,
    /// A smaller file uploaded first: the memory reference (none if unset or empty).
    // An OsString: clap refuses an empty PathBuf.
    #[arg(long, value_name = "PATH")]
    pub small_file: Option<std::ffi::OsString>,
    /// The engine's process, for its RSS and CPU (not measured if unset).
    #[arg(long, value_name = "PID")]
    pub engine_pid: Option<u32>,
    /// The engine's Postgres, for the checks and the baseline (both SKIPPED if unset).
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Also write the JSON summary to PATH.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Where the baseline CSV is written [default: <file stem>.copy.csv next to --file].
    #[arg(long, value_name = "PATH")]
    pub csv: Option<PathBuf>,
    /// Keep the CSV afterwards (deleted by default).
    #[arg(long)]
    pub keep_csv: bool,
    /// psql binary of the baseline.
    #[arg(long, default_value = "psql")]
    pub psql: String,
    /// Skip the \copy baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Do not CHECKPOINT Postgres before each timed phase.
    #[arg(long)]
    pub no_checkpoint: bool,
    /// Budget of one upload, and of the \copy, in seconds.
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_secs: u64,
    /// RSS sampling period in milliseconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub sample_ms: u64,
    /// A missed target (RSS growth, \copy ratio) makes the exit code 1.
    #[arg(long)]
    pub enforce_targets: bool,
}

impl IngestArgs {
    /// An empty `--small-file=` (what a script passes for "none") is none,
    /// as is an empty DATABASE_URL.
    fn normalised(mut self) -> IngestArgs {
        self.small_file = self.small_file.filter(|p| !p.is_empty());
        self.database_url = self.database_url.filter(|u| !u.is_empty());
        self
    }

    /// Where the baseline CSV goes: `--csv`, else next to the large file.
    fn csv_path(&self) -> PathBuf {
        self.csv.clone().unwrap_or_else(|| {
            let mut name = self.file.file_stem().unwrap_or_default().to_os_string();
            name.push(".copy.csv");
            self.file.with_file_name(name)
        })
    }
}

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
    let outcome = upload::upload(target, "/ingest", &scan.path, Duration::from_secs(args.max_secs)).await;
    let cpu = cpu_start.finish(args.engine_pid, background);
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
            run.invariants
                .push(Invariant::fail("copy_baseline", format!("CSV conversion: {e}")));
            remove_csv(args, &csv_path);
            return run;
        }
    };
    run.csv = Some(csv);
    match store::create_baseline_table(conn).await {
        Ok(indexes) => run.indexes = indexes,
        Err(e) => {
            run.invariants.push(Invariant::fail("copy_baseline", e));
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
            run.invariants.push(Invariant::check(
                "copy_baseline",
                copy.copied == csv.rows,
                format!("psql reported COPY {}, CSV rows {}", copy.copied, csv.rows),
            ));
            run.copy = Some(copy);
            run.invariants.push(store::same_data_check(conn, csv.rows).await);
        }
        Err(CopyFailure::Skipped(why)) => run.skipped = Some(why),
        Err(CopyFailure::Failed(why)) => run.invariants.push(Invariant::fail("copy_baseline", why)),
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
pub async fn run(args: IngestArgs) -> Result<bool, String> {
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
        let label = if i == large_file_number as usize {
            "large"
        } else {
            "small"
        };
        let run = upload_one(&args, &target, label, scan, pg.as_mut()).await;
        uploads.push(run);
    }

    let distinct = index.distinct();
    let mut invariants: Vec<Invariant> = uploads.iter().flat_map(UploadRun::invariants).collect();
    let uploads_ok = uploads.iter().all(UploadRun::succeeded);
    let baseline = match (&mut pg, &args.database_url) {
        (Some(conn), Some(url)) => {
            invariants.extend(store::checks(conn, distinct).await);
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
            invariants.push(Invariant::skip("postgres", "no --database-url / DATABASE_URL"));
            None
        }
    };

    let summary = IngestSummary {
        url: &args.url,
        engine_pid: args.engine_pid,
        engine_name,
        uploads,
        distinct,
        invariants,
        baseline,
        enforce_targets: args.enforce_targets,
    };
    summary.print_human();
    crate::scenarios::sale::report::emit_json(args.json.as_deref(), &summary.to_json())?;
    Ok(summary.passed())
}
