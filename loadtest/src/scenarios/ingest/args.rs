//! The flags of `loadtest ingest`.

use std::path::PathBuf;

use crate::common::cost::CostArgs;

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
    #[command(flatten)]
    pub cost: CostArgs,
}

impl IngestArgs {
    /// An empty `--small-file=` (what a script passes for "none") is none,
    /// as is an empty DATABASE_URL.
    pub fn normalised(mut self) -> IngestArgs {
        self.small_file = self.small_file.filter(|p| !p.is_empty());
        self.database_url = self.database_url.filter(|u| !u.is_empty());
        self
    }

    /// Where the baseline CSV goes: `--csv`, else next to the large file.
    pub fn csv_path(&self) -> PathBuf {
        self.csv.clone().unwrap_or_else(|| {
            let mut name = self.file.file_stem().unwrap_or_default().to_os_string();
            name.push(".copy.csv");
            self.file.with_file_name(name)
        })
    }
}
