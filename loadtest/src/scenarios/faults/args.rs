//! The flags of `loadtest faults` and its cases.

use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Case {
    /// The engine's own Redis connections killed every 30 ms.
    Drop,
    /// Redis killed with SIGKILL and started again from its AOF.
    Kill,
    /// Checkouts open-loop at 5x the measured capacity.
    Flood,
}

impl Case {
    pub fn name(self) -> &'static str {
        match self {
            Case::Drop => "drop",
            Case::Kill => "kill",
            Case::Flood => "flood",
        }
    }

    /// Each case buys in a range of the sale of its own.
    pub fn item_base(self) -> u64 {
        match self {
            Case::Drop => 0,
            Case::Kill => 400_000,
            Case::Flood => 800_000,
        }
    }
}

/// Flags of `loadtest faults`. The engine needs ITEMS_PER_SALE >= 1000000
/// and PER_USER_LIMIT >= 100000 (run.sh sets both).
#[derive(Debug, Clone, clap::Args)]
pub struct FaultsArgs {
    /// The engine's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The engine's STAMPEDE_ADMIN_TOKEN: products, reconcile.
    #[arg(long, env = "STAMPEDE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// The engine's Redis.
    #[arg(long, env = "REDIS_URL", value_name = "URL")]
    pub redis_url: String,
    /// The engine's Postgres.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: String,
    /// The engine's STAMPEDE_KEY_PREFIX.
    #[arg(long, env = "STAMPEDE_KEY_PREFIX", default_value = "stampede")]
    pub key_prefix: String,
    /// The engine's process: its Redis connections (drop) and memory (flood).
    #[arg(long, value_name = "PID")]
    pub engine_pid: Option<u32>,
    /// Pid file of a Redis this run owns; with --redis-conf enables the kill case.
    #[arg(long, value_name = "PATH", requires = "redis_conf")]
    pub redis_pidfile: Option<PathBuf>,
    /// Its configuration file (AOF on), to start it again after the kill.
    #[arg(long, value_name = "PATH", requires = "redis_pidfile")]
    pub redis_conf: Option<PathBuf>,
    /// The cases to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "drop,kill,flood")]
    pub cases: Vec<Case>,
    /// How long the drop case drops connections, in seconds.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    pub secs: u64,
    /// How long the flood lasts, in seconds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub flood_secs: u64,
    /// Clients of each kind in the mixed load: N + 2 buyers, N orderers, N players.
    #[arg(long, default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10))]
    pub clients: usize,
    /// Also write the JSON summary to PATH.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}
