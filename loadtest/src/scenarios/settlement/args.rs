//! The flags of `loadtest settlement`.

use std::path::PathBuf;

use crate::common::at_least_one;

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
