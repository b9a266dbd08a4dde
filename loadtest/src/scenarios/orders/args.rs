//! The flags of `loadtest orders`.

use crate::common::at_least_one;
use crate::common::cost::CostArgs;

/// Flags of `loadtest orders`.
#[derive(Debug, Clone, clap::Args)]
pub struct OrdersArgs {
    /// The engine's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The engine's STAMPEDE_ADMIN_TOKEN (products are created as admin).
    #[arg(long, env = "STAMPEDE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// Products.
    #[arg(long, default_value_t = 20, value_parser = at_least_one())]
    pub products: usize,
    /// Stock of each product.
    #[arg(long, default_value_t = 5000)]
    pub stock: i64,
    /// Distinct buyer ids.
    #[arg(long, default_value_t = 2000, value_parser = at_least_one())]
    pub buyers: usize,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 200, value_parser = at_least_one())]
    pub connections: usize,
    /// Operations in all; an operation is 1 or 2 requests.
    #[arg(long, default_value_t = 150_000, value_parser = at_least_one())]
    pub operations: usize,
    /// The baseline server's requests/s in the same run, for the ratio.
    #[arg(long, value_name = "X")]
    pub baseline_rps: Option<f64>,
    /// The engine's Postgres: its orders against the acknowledged ones
    /// (SKIPPED if unset).
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Also write the JSON summary to PATH.
    #[arg(long, value_name = "PATH")]
    pub json: Option<std::path::PathBuf>,
    /// The engine's process, for its CPU per request (not measured if unset).
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    #[command(flatten)]
    pub cost: CostArgs,
}
