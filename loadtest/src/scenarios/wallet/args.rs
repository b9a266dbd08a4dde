//! The flags of `loadtest wallet`.

use std::path::PathBuf;

use crate::common::at_least_one;
use crate::common::cost::CostArgs;
use crate::common::server::ServerKind;

/// Flags of `loadtest wallet`.
#[derive(Debug, Clone, clap::Args)]
pub struct WalletArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// engine, or baseline: `POST /checkout` of the baseline server over as
    /// many connections, for as long.
    #[arg(long, value_enum, default_value_t = ServerKind::Engine)]
    pub server: ServerKind,
    /// The server's process, for its CPU per operation.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Players.
    #[arg(long, default_value_t = 2000, value_parser = at_least_one())]
    pub players: usize,
    /// SSE clients, one per player of the first N (at most --players).
    #[arg(long, default_value_t = 1000)]
    pub sse_clients: usize,
    /// Keep-alive request connections.
    #[arg(long, default_value_t = 200, value_parser = at_least_one())]
    pub connections: usize,
    /// Load duration in seconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub secs: u64,
    /// Grants bonuses to half the players (none if unset).
    #[arg(long, env = "STAMPEDE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The engine's Postgres, for the conservation check.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// baseline: the engine run's summary, for the ratio.
    #[arg(long, value_name = "PATH")]
    pub engine_json: Option<PathBuf>,
    /// Also write the JSON summary to PATH.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub cost: CostArgs,
}
