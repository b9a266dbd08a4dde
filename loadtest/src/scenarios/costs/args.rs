//! The flags of `loadtest costs`.

use std::path::PathBuf;

use crate::common::cost::CostArgs;

/// Flags of `loadtest costs`.
#[derive(Debug, Clone, clap::Args)]
pub struct CostsArgs {
    /// The engine's base URL: its `/metrics` counts the requests and the
    /// script calls.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The engine's process, for its CPU per request (not measured if unset
    /// or not on this machine).
    #[arg(long, value_name = "PID")]
    pub engine_pid: Option<u32>,
    /// The engine's Postgres, to find its processes (not measured if unset).
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Measure for this long.
    #[arg(long, value_name = "S", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..),
          conflicts_with = "requests")]
    pub secs: u64,
    /// Measure until the engine has answered this many requests (its
    /// `/metrics`, scrapes and probes left out) instead of for --secs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,
    /// With --requests: give up waiting after this long.
    #[arg(long, value_name = "S", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_secs: u64,
    /// Also write the JSON summary to PATH.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub cost: CostArgs,
}
