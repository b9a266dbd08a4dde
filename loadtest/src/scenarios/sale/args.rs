//! The flags of contest, sustained and contention, and the settings they
//! resolve to (defaults per scenario, shapes checked before any load).

use std::path::PathBuf;

use crate::common::cost::CostArgs;
use crate::common::cost::scripts::default_lua_dir;
use crate::common::server::ServerKind;

/// What the connection tasks play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Every user buys its own disjoint share of the items: no conflicts, pure throughput.
    Contest,
    /// Many users race for a few items.
    Contention,
}

impl Scenario {
    /// Status keys that are a normal part of the scenario, per endpoint.
    pub fn expected_statuses(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Scenario::Contest => (&["200"], &["200"]),
            Scenario::Contention => (
                &[
                    "200",
                    "409 ITEM_SOLD",
                    "403 USER_LIMIT_REACHED",
                    "429 TOO_MANY_CHECKOUTS",
                ],
                &["200", "409 ITEM_SOLD", "403 USER_LIMIT_REACHED"],
            ),
        }
    }
}

/// The three sale subcommands: the same flags, other defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaleKind {
    Contest,
    Sustained,
    Contention,
}

impl SaleKind {
    pub fn name(self) -> &'static str {
        match self {
            SaleKind::Contest => "contest",
            SaleKind::Sustained => "sustained",
            SaleKind::Contention => "contention",
        }
    }

    /// (scenario, users, items) by default.
    fn defaults(self) -> (Scenario, usize, usize) {
        match self {
            SaleKind::Contest => (Scenario::Contest, 1000, 10_000),
            SaleKind::Sustained => (Scenario::Contest, 20_000, 200_000),
            SaleKind::Contention => (Scenario::Contention, 2000, 20),
        }
    }
}

/// Flags of `loadtest contest|sustained|contention`.
#[derive(Debug, Clone, clap::Args)]
pub struct SaleArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// What is loaded: the engine, or the baseline server (then no Postgres
    /// checks and no redis-benchmark).
    #[arg(long, value_enum, default_value_t = ServerKind::Engine)]
    pub server: ServerKind,
    /// The server's process, for its CPU per request (not measured if unset).
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Virtual users [default: contest 1000, sustained 20000, contention 2000].
    #[arg(long)]
    pub users: Option<usize>,
    /// Items of the sale [default: contest 10000, sustained 200000, contention 20].
    #[arg(long)]
    pub items: Option<usize>,
    /// The engine's per-user purchase limit (its PER_USER_LIMIT).
    #[arg(long, default_value_t = 10)]
    pub limit: u64,
    /// Keep-alive connections, each running its users one after another
    /// [default: min(users, 1000)].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Contention: checkouts per user before it gives up.
    #[arg(long, default_value_t = 50)]
    pub attempts: usize,
    /// The engine's Postgres, for the checks (checks SKIPPED if unset).
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The engine's STAMPEDE_KEY_PREFIX.
    #[arg(long, env = "STAMPEDE_KEY_PREFIX", default_value = "stampede")]
    pub key_prefix: String,
    /// User ids are `<prefix>-<n>`.
    #[arg(long, default_value = "lt")]
    pub user_prefix: String,
    /// Also write the JSON summary to PATH.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Budget of the load phase, connecting included.
    #[arg(long, default_value_t = 120)]
    pub max_secs: u64,
    /// Timeout of each request (and each connect).
    #[arg(long, default_value_t = 10)]
    pub request_timeout_secs: u64,
    /// How long to wait for Postgres to catch up.
    #[arg(long, default_value_t = 30)]
    pub flush_wait_secs: u64,
    /// Where purchase.lua is [default: ./lua, else <repo>/lua].
    #[arg(long, value_name = "DIR")]
    pub lua_dir: Option<PathBuf>,
    /// Skip the redis-benchmark baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// redis-benchmark -n.
    #[arg(long, default_value_t = 100_000)]
    pub bench_requests: u64,
    /// redis-benchmark -c.
    #[arg(long, default_value_t = 50)]
    pub bench_clients: u32,
    #[command(flatten)]
    pub cost: CostArgs,
}

/// The settings of one sale run, defaults filled in and checked.
#[derive(Debug, Clone)]
pub struct Args {
    pub scenario_name: &'static str,
    pub scenario: Scenario,
    pub url: String,
    pub users: usize,
    pub items: usize,
    pub limit: u64,
    pub connections: usize,
    pub attempts: usize,
    pub redis_url: Option<String>,
    pub database_url: Option<String>,
    pub key_prefix: String,
    pub user_prefix: String,
    pub json: Option<PathBuf>,
    pub max_secs: u64,
    pub request_timeout_secs: u64,
    pub flush_wait_secs: u64,
    pub lua_dir: PathBuf,
    pub server: ServerKind,
    pub server_pid: Option<u32>,
    pub baseline: bool,
    pub bench_requests: u64,
    pub bench_clients: u32,
    pub cost: CostArgs,
}

impl Args {
    /// The flags of one of the three subcommands, with its defaults, or why
    /// they describe no sale the driver can run.
    pub fn resolve(kind: SaleKind, a: SaleArgs) -> Result<Args, String> {
        let (scenario, users, items) = kind.defaults();
        let users = a.users.unwrap_or(users);
        let nonempty = |v: Option<String>| v.filter(|v| !v.is_empty());
        let args = Args {
            scenario_name: kind.name(),
            scenario,
            url: a.url,
            users,
            items: a.items.unwrap_or(items),
            limit: a.limit,
            connections: a.connections.unwrap_or(users.min(1000)),
            attempts: a.attempts,
            redis_url: nonempty(a.cost.redis_url.clone()),
            database_url: nonempty(a.database_url),
            key_prefix: a.key_prefix,
            user_prefix: a.user_prefix,
            json: a.json,
            max_secs: a.max_secs,
            request_timeout_secs: a.request_timeout_secs,
            flush_wait_secs: a.flush_wait_secs,
            lua_dir: a.lua_dir.unwrap_or_else(default_lua_dir),
            server: a.server,
            server_pid: a.server_pid,
            baseline: !a.no_baseline,
            bench_requests: a.bench_requests,
            bench_clients: a.bench_clients,
            cost: a.cost,
        };
        args.validate()?;
        Ok(args)
    }

    fn validate(&self) -> Result<(), String> {
        if self.users == 0 || self.items == 0 {
            return Err("--users and --items must be > 0".into());
        }
        if self.connections == 0 || self.connections > self.users {
            return Err(format!("--connections must be between 1 and --users ({})", self.users));
        }
        if self.max_secs == 0 || self.request_timeout_secs == 0 {
            return Err("--max-secs and --request-timeout-secs must be > 0".into());
        }
        if self.scenario == Scenario::Contest {
            if !self.items.is_multiple_of(self.users) {
                return Err(format!(
                    "{}: --items ({}) must be a multiple of --users ({}) so every item has a buyer",
                    self.scenario_name, self.items, self.users
                ));
            }
            let k = (self.items / self.users) as u64;
            if k > self.limit {
                return Err(format!(
                    "{}: each user would buy items/users = {k} items, more than --limit {}",
                    self.scenario_name, self.limit
                ));
            }
        }
        if self.scenario == Scenario::Contention && self.attempts == 0 {
            return Err("--attempts must be > 0".into());
        }
        Ok(())
    }
}
