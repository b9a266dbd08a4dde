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
use crate::{env_nonempty, parse_num};

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

#[derive(Debug)]
pub struct IngestArgs {
    pub url: String,
    /// The large file: its upload is the one compared with `\copy`.
    pub file: PathBuf,
    /// The small file, uploaded first: the memory reference.
    pub small_file: Option<PathBuf>,
    pub engine_pid: Option<u32>,
    pub database_url: Option<String>,
    pub json: Option<PathBuf>,
    pub csv: Option<PathBuf>,
    pub keep_csv: bool,
    pub psql: String,
    pub baseline: bool,
    pub checkpoint: bool,
    pub max_secs: u64,
    pub sample_ms: u64,
    pub enforce_targets: bool,
    pub threads: Option<usize>,
}

impl IngestArgs {
    /// Flags after `ingest`. `Ok(None)` means --help.
    pub fn parse(argv: impl IntoIterator<Item = String>) -> Result<Option<IngestArgs>, String> {
        let mut argv = argv.into_iter();
        let mut a = IngestArgs {
            url: "http://127.0.0.1:8080".into(),
            file: PathBuf::new(),
            small_file: None,
            engine_pid: None,
            database_url: env_nonempty("DATABASE_URL"),
            json: None,
            csv: None,
            keep_csv: false,
            psql: "psql".into(),
            baseline: true,
            checkpoint: true,
            max_secs: 1800,
            sample_ms: 20,
            enforce_targets: false,
            threads: None,
        };
        let mut file = None;
        while let Some(flag) = argv.next() {
            match flag.as_str() {
                "-h" | "--help" => return Ok(None),
                "--no-baseline" => {
                    a.baseline = false;
                    continue;
                }
                "--no-checkpoint" => {
                    a.checkpoint = false;
                    continue;
                }
                "--keep-csv" => {
                    a.keep_csv = true;
                    continue;
                }
                "--enforce-targets" => {
                    a.enforce_targets = true;
                    continue;
                }
                _ => {}
            }
            // Accept both `--flag value` and `--flag=value`.
            let (flag, value) = match flag.split_once('=') {
                Some((f, v)) => (f.to_string(), v.to_string()),
                None => {
                    let v = argv.next().ok_or_else(|| format!("{flag} needs a value"))?;
                    (flag, v)
                }
            };
            match flag.as_str() {
                "--url" => a.url = value,
                "--file" => file = Some(PathBuf::from(value)),
                "--small-file" => a.small_file = Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty()),
                "--engine-pid" => a.engine_pid = Some(parse_num(&flag, &value)?),
                "--database-url" => a.database_url = Some(value),
                "--json" => a.json = Some(PathBuf::from(value)),
                "--csv" => a.csv = Some(PathBuf::from(value)),
                "--psql" => a.psql = value,
                "--max-secs" => a.max_secs = parse_num(&flag, &value)?,
                "--sample-ms" => a.sample_ms = parse_num(&flag, &value)?,
                "--threads" => a.threads = Some(parse_num(&flag, &value)?),
                other => return Err(format!("unknown flag {other:?} for ingest")),
            }
        }
        a.file = file.ok_or("ingest needs --file PATH (the large NDJSON file)")?;
        if a.max_secs == 0 || a.sample_ms == 0 {
            return Err("--max-secs and --sample-ms must be > 0".into());
        }
        if a.threads == Some(0) {
            return Err("--threads must be > 0".into());
        }
        Ok(Some(a))
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
        && args.checkpoint
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
    if args.checkpoint
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

    let mut paths: Vec<PathBuf> = args.small_file.iter().cloned().collect();
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
            if !args.baseline {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Option<IngestArgs>, String> {
        IngestArgs::parse(line.split_whitespace().map(str::to_string))
    }

    #[test]
    fn needs_the_large_file() {
        assert!(parse("").is_err());
        assert!(parse("--help").unwrap().is_none());
        let a = parse("--file /d/big.ndjson --small-file=/d/s.ndjson --engine-pid 42")
            .unwrap()
            .unwrap();
        assert_eq!(a.file, PathBuf::from("/d/big.ndjson"));
        assert_eq!(a.small_file, Some(PathBuf::from("/d/s.ndjson")));
        assert_eq!((a.engine_pid, a.max_secs, a.sample_ms), (Some(42), 1800, 20));
        assert!(a.baseline && a.checkpoint && !a.enforce_targets && !a.keep_csv);
        assert_eq!(a.csv_path(), PathBuf::from("/d/big.copy.csv"));
        assert!(parse("--file x --engine-pid nope").is_err());
        assert!(parse("--file x --users 3").is_err());
        assert!(parse("--file x --sample-ms 0").is_err());
    }

    #[test]
    fn flags_without_values() {
        let a = parse("--file x --no-baseline --no-checkpoint --keep-csv --enforce-targets --small-file=")
            .unwrap()
            .unwrap();
        assert!(!a.baseline && !a.checkpoint && a.keep_csv && a.enforce_targets);
        assert_eq!(a.small_file, None);
    }
}
