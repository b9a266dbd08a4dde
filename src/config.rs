//! The shared configuration, from environment variables, validated once at
//! start-up. A bad value stops the engine with a message naming the variable.
//! Each feature reads its own settings from the same variables
//! (`Config::env`), in its own `settings.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::limits;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var} is required ({hint})")]
    Missing { var: &'static str, hint: &'static str },
    #[error("{var}={value:?} is invalid: {reason}")]
    Invalid {
        var: &'static str,
        value: String,
        reason: String,
    },
}

/// How the write-behind flusher batches.
#[derive(Debug, Clone)]
pub struct FlushConfig {
    /// Most outbox entries written to Postgres in one transaction.
    pub batch_rows: usize,
    /// How long a partial batch waits for more entries before it is written.
    /// Every shard commits on its own, and a commit's fsync and per-statement
    /// work cost Postgres CPU on the machine that also runs Redis and the
    /// engine: under the load driver's order scenario, 100 ms instead of
    /// 20 ms cut Postgres's CPU per order by about a third (250 ms saved no
    /// more; loadtest/RESULTS.md).
    pub linger: Duration,
    /// Entries pending this long on another consumer are taken over.
    pub claim_idle: Duration,
    /// This engine's consumer name in the outbox consumer group. Stable across
    /// restarts on one host, so a restarted engine resumes its own pending
    /// entries at once.
    pub consumer: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Every variable as it was read, so features parse their own settings
    /// (`Config::env`) in their own folder.
    pub vars: Vars,
    pub listen: Vec<SocketAddr>,
    pub redis_url: String,
    pub database_url: String,
    pub key_prefix: String,
    /// Outbox shards (`STAMPEDE_OUTBOX_SHARDS`): recorded in Redis at the
    /// first start, and must match the record on every later one. Unset:
    /// the record's count, or at the first start the topology's default
    /// (`redis::layout`).
    pub outbox_shards: Option<u64>,
    pub flush: FlushConfig,
    pub redis_pool_size: usize,
    pub postgres_pool_size: u32,
    pub max_connections: usize,
    /// Tokio worker threads; 1 selects the current-thread scheduler.
    pub worker_threads: usize,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Unflushed events per outbox shard before writes are shed (503).
    pub outbox_events_max: u64,
    /// Batched script calls in flight at once per script and shard.
    pub script_inflight: usize,
    /// Requests waiting per (script, shard) queue before 503 `OVERLOADED`.
    pub script_queue_max: usize,
    /// A request that waited longer than this in an executor queue is shed
    /// (503 `OVERLOADED`) and never sent to Redis.
    pub queue_deadline: Duration,
    /// How long a Redis command may take, reconnect included, before the
    /// request fails with 503.
    pub redis_command_timeout: Duration,
    /// Whether Redis's eviction and persistence settings are checked at start.
    pub redis_checks: bool,
    /// Replicas that must acknowledge a batch call's writes (`WAIT`) before
    /// any request of the batch is answered; 0 = no `WAIT`.
    pub redis_wait_replicas: u32,
    /// How long that `WAIT` may take; past it the batch answers 503.
    pub redis_wait_timeout: Duration,
    /// `STAMPEDE_REUSEPORT`: listeners take `SO_REUSEPORT`, so several engine
    /// processes on one host share a port and the kernel spreads connections.
    pub reuseport: bool,
    /// `STAMPEDE_ADMIN_TOKEN`; `None` disables the admin routes.
    pub admin_token: Option<Secret>,
    /// Who may call the routes (`server::access`).
    pub access: AccessConfig,
}

/// Where the service keys and the player tokens' verification key come
/// from, and whether the engine may serve without them.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// `STAMPEDE_API_KEYS_FILE`: one service key a line (name, scopes, the
    /// SHA-256 of its secret).
    pub keys_file: Option<std::path::PathBuf>,
    /// `STAMPEDE_PLAYER_TOKEN_SECRET`: the HS256 secret shared with the
    /// operator's backend, which signs the player tokens.
    pub player_token_secret: Option<Secret>,
    /// `STAMPEDE_PLAYER_TOKEN_PUBLIC_KEY`: an Ed25519 public key (PEM, or
    /// the path of a PEM file) for player tokens signed with EdDSA.
    pub player_token_public_key: Option<String>,
    /// `STAMPEDE_AUTH=off`: every route but the admin ones is open, whatever
    /// the listen addresses, as the operator asked.
    pub off: bool,
    /// `STAMPEDE_METRICS_REQUIRE_KEY`: `/metrics` takes a key with the
    /// `metrics` scope.
    pub metrics_require_key: bool,
}

/// A value that never shows in logs or `Debug` output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The environment as read at start. Its `Debug` lists names only: values
/// include secrets (the admin token, database passwords).
#[derive(Clone, Default)]
pub struct Vars(BTreeMap<String, String>);

impl std::fmt::Debug for Vars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars().collect())
    }

    /// A valid configuration: `vars` over the one variable with no default.
    /// What the features' settings tests read their own settings from.
    #[cfg(test)]
    pub fn for_tests(vars: &[(&str, &str)]) -> Self {
        Self::from_vars(
            [("DATABASE_URL", "x")]
                .iter()
                .chain(vars)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .expect("the shared settings are valid")
    }

    /// Builds the configuration from any variable source (tests pass a map).
    pub fn from_vars(vars: BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let vars = Vars(vars);
        let env = Env { vars: &vars };
        let listen = env.listen("STAMPEDE_LISTEN", "0.0.0.0:8080")?;
        let database_url = env.get("DATABASE_URL").ok_or(ConfigError::Missing {
            var: "DATABASE_URL",
            hint: "e.g. postgres://postgres@127.0.0.1:5441/stampede",
        })?;
        let key_prefix = env.get("STAMPEDE_KEY_PREFIX").unwrap_or_else(|| "stampede".into());
        if key_prefix.is_empty() || key_prefix.contains(['{', '}']) {
            return Err(ConfigError::Invalid {
                var: "STAMPEDE_KEY_PREFIX",
                value: key_prefix,
                reason: "must be non-empty and must not contain '{' or '}' (they mark hash tags)".into(),
            });
        }
        let outbox_shards = env.optional_number("STAMPEDE_OUTBOX_SHARDS", 1, limits::OUTBOX_SHARDS_MAX)?;
        let consumer = env.get("STAMPEDE_CONSUMER").unwrap_or_else(default_consumer_name);
        let outbox_events_max = env.number(
            "STAMPEDE_OUTBOX_MAX_EVENTS",
            limits::OUTBOX_EVENTS_DEFAULT,
            1,
            1_000_000_000,
        )?;
        let script_inflight = env.number("STAMPEDE_SCRIPT_INFLIGHT", 2, 1, limits::SCRIPT_INFLIGHT_MAX)?;
        let max_connections = env.number(
            "STAMPEDE_MAX_CONNECTIONS",
            limits::MAX_CONNECTIONS_DEFAULT,
            1,
            1_000_000,
        )?;
        let script_queue_max = script_queue_max(&env, max_connections)?;
        let queue_deadline = Duration::from_millis(env.number(
            "STAMPEDE_QUEUE_DEADLINE_MS",
            limits::QUEUE_DEADLINE_DEFAULT.as_millis() as u64,
            1,
            60_000,
        )?);
        let redis_command_timeout = Duration::from_millis(env.number(
            "STAMPEDE_REDIS_COMMAND_TIMEOUT_MS",
            limits::REDIS_COMMAND_TIMEOUT.as_millis() as u64,
            50,
            60_000,
        )?);
        let redis_checks = env.switch("STAMPEDE_REDIS_CHECKS", true)?;
        let redis_wait_replicas = env.number("STAMPEDE_REDIS_WAIT_REPLICAS", 0, 0, limits::REDIS_WAIT_REPLICAS_MAX)?;
        let redis_wait_timeout = redis_wait_timeout(&env, redis_command_timeout)?;
        let reuseport = env.switch("STAMPEDE_REUSEPORT", false)?;
        let admin_token = env.get("STAMPEDE_ADMIN_TOKEN").map(|t| Secret(t.trim().to_owned()));
        if let Some(Secret(token)) = &admin_token
            && (token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ConfigError::Invalid {
                var: "STAMPEDE_ADMIN_TOKEN",
                value: "(hidden)".into(),
                reason: "must be at least 16 printable ASCII characters without spaces".into(),
            });
        }
        let player_token_secret = env
            .get("STAMPEDE_PLAYER_TOKEN_SECRET")
            .map(|t| Secret(t.trim().to_owned()));
        if let Some(Secret(secret)) = &player_token_secret
            && secret.len() < 32
        {
            return Err(ConfigError::Invalid {
                var: "STAMPEDE_PLAYER_TOKEN_SECRET",
                value: "(hidden)".into(),
                reason: "must be at least 32 characters (HS256 needs a key as long as its hash)".into(),
            });
        }
        let access = AccessConfig {
            keys_file: env
                .get("STAMPEDE_API_KEYS_FILE")
                .filter(|f| !f.trim().is_empty())
                .map(std::path::PathBuf::from),
            player_token_secret,
            player_token_public_key: env
                .get("STAMPEDE_PLAYER_TOKEN_PUBLIC_KEY")
                .filter(|k| !k.trim().is_empty()),
            off: !env.switch("STAMPEDE_AUTH", true)?,
            metrics_require_key: env.switch("STAMPEDE_METRICS_REQUIRE_KEY", false)?,
        };
        Ok(Self {
            access,
            outbox_events_max,
            script_inflight,
            script_queue_max,
            queue_deadline,
            redis_command_timeout,
            redis_checks,
            redis_wait_replicas,
            redis_wait_timeout,
            reuseport,
            max_connections,
            admin_token,
            listen,
            redis_url: env.get("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            database_url,
            key_prefix,
            outbox_shards,
            flush: FlushConfig {
                batch_rows: env.number("STAMPEDE_FLUSH_BATCH_ROWS", 5000, 1, limits::FLUSH_BATCH_ROWS_MAX)?,
                linger: Duration::from_millis(env.number("STAMPEDE_FLUSH_LINGER_MS", 100, 0, 10_000)?),
                claim_idle: Duration::from_millis(env.number(
                    "STAMPEDE_FLUSH_CLAIM_IDLE_MS",
                    30_000,
                    100,
                    3_600_000,
                )?),
                consumer,
            },
            redis_pool_size: env.number("STAMPEDE_REDIS_POOL", 4, 1, 64)?,
            postgres_pool_size: env.number("STAMPEDE_PG_POOL", 16, 2, 256)?,
            worker_threads: env.number("STAMPEDE_WORKER_THREADS", default_worker_threads(), 1, 1024)?,
            header_read_timeout: Duration::from_millis(env.number(
                "STAMPEDE_HEADER_READ_TIMEOUT_MS",
                5_000,
                50,
                600_000,
            )?),
            shutdown_grace: Duration::from_millis(env.number("STAMPEDE_SHUTDOWN_GRACE_MS", 10_000, 0, 600_000)?),
            vars,
        })
    }

    /// The variables, for a feature that reads its own settings.
    pub fn env(&self) -> Env<'_> {
        Env { vars: &self.vars }
    }
}

/// `STAMPEDE_SCRIPT_QUEUE_MAX`. Each HTTP/1.1 connection has at most one
/// request in flight, so a queue bound at or above the connection bound could
/// never fill and `OVERLOADED` would never answer: refused. The default is
/// capped at half the connection bound for the same reason.
fn script_queue_max(env: &Env<'_>, max_connections: usize) -> Result<usize, ConfigError> {
    let default = limits::SCRIPT_QUEUE_DEPTH_DEFAULT.min(max_connections / 2).max(1);
    let Some(raw) = env.get("STAMPEDE_SCRIPT_QUEUE_MAX") else {
        return Ok(default);
    };
    let value: usize = env.number("STAMPEDE_SCRIPT_QUEUE_MAX", default, 1, 1_000_000)?;
    if value >= max_connections {
        return Err(ConfigError::Invalid {
            var: "STAMPEDE_SCRIPT_QUEUE_MAX",
            value: raw,
            reason: format!(
                "must be below STAMPEDE_MAX_CONNECTIONS ({max_connections}): each connection has at most one \
                 request in flight, so a larger queue never fills and OVERLOADED could never answer"
            ),
        });
    }
    Ok(value)
}

/// `STAMPEDE_REDIS_WAIT_TIMEOUT_MS`. `WAIT` is a Redis command like any
/// other: past the command timeout fred gives up on it first, so a longer
/// `WAIT` could never report its count. Refused rather than silently cut.
fn redis_wait_timeout(env: &Env<'_>, command_timeout: Duration) -> Result<Duration, ConfigError> {
    let default = limits::REDIS_WAIT_TIMEOUT_DEFAULT.min(command_timeout / 2);
    let millis = env.number(
        "STAMPEDE_REDIS_WAIT_TIMEOUT_MS",
        default.as_millis() as u64,
        1,
        limits::REDIS_WAIT_TIMEOUT_MAX.as_millis() as u64,
    )?;
    let timeout = Duration::from_millis(millis);
    if timeout >= command_timeout {
        return Err(ConfigError::Invalid {
            var: "STAMPEDE_REDIS_WAIT_TIMEOUT_MS",
            value: millis.to_string(),
            reason: format!(
                "must be below STAMPEDE_REDIS_COMMAND_TIMEOUT_MS ({} ms): the WAIT command itself must answer \
                 before the command timeout ends it",
                command_timeout.as_millis()
            ),
        });
    }
    Ok(timeout)
}

/// One core is left to Redis, which runs beside the engine and is single
/// threaded: measured on 2 cores, one engine thread sold ~20% more than two.
fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| usize::from(n).saturating_sub(1).max(1))
}

fn default_consumer_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "stampede".into())
}

/// Typed, bounded reads of variables; every error names its variable.
pub struct Env<'a> {
    vars: &'a Vars,
}

impl Env<'_> {
    /// The value, unless unset or blank.
    pub fn get(&self, var: &str) -> Option<String> {
        self.vars.0.get(var).filter(|v| !v.trim().is_empty()).cloned()
    }

    /// A whole number in `min..=max`, or `default` when unset.
    pub fn number<T>(&self, var: &'static str, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        Ok(self.optional_number(var, min, max)?.unwrap_or(default))
    }

    /// A whole number in `min..=max`, or `None` when unset.
    pub fn optional_number<T>(&self, var: &'static str, min: T, max: T) -> Result<Option<T>, ConfigError>
    where
        T: FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(raw) = self.get(var) else {
            return Ok(None);
        };
        let invalid = |reason: String| ConfigError::Invalid {
            var,
            value: raw.clone(),
            reason,
        };
        let value: T = raw.trim().parse().map_err(|_| invalid("not a whole number".into()))?;
        if value < min || value > max {
            return Err(invalid(format!("must be between {min} and {max}")));
        }
        Ok(Some(value))
    }

    /// `on` or `off` (also `true`/`false`, `1`/`0`), or `default` when unset.
    pub fn switch(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        let Some(raw) = self.get(var) else {
            return Ok(default);
        };
        match raw.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "1" | "yes" => Ok(true),
            "off" | "false" | "0" | "no" => Ok(false),
            _ => Err(ConfigError::Invalid {
                var,
                value: raw,
                reason: "expected on or off".into(),
            }),
        }
    }

    fn listen(&self, var: &'static str, default: &str) -> Result<Vec<SocketAddr>, ConfigError> {
        let raw = self.get(var).unwrap_or_else(|| default.into());
        let addrs: Result<Vec<SocketAddr>, _> = raw.split(',').map(|a| a.trim().parse()).collect();
        match addrs {
            Ok(addrs) if !addrs.is_empty() => Ok(addrs),
            _ => Err(ConfigError::Invalid {
                var,
                value: raw,
                reason: "expected host:port, or several separated by commas".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn defaults_match_the_replaced_services() {
        let c = config(&[("DATABASE_URL", "postgres://x/y")]).expect("valid");
        assert_eq!(c.listen, vec!["0.0.0.0:8080".parse().expect("addr")]);
    }

    #[test]
    fn errors_name_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "DATABASE_URL"),
            (&[("DATABASE_URL", "x"), ("STAMPEDE_LISTEN", "nope")], "STAMPEDE_LISTEN"),
            (
                &[("DATABASE_URL", "x"), ("STAMPEDE_KEY_PREFIX", "a{b")],
                "STAMPEDE_KEY_PREFIX",
            ),
            (
                &[("DATABASE_URL", "x"), ("STAMPEDE_FLUSH_BATCH_ROWS", "100000")],
                "STAMPEDE_FLUSH_BATCH_ROWS",
            ),
            (
                &[
                    ("DATABASE_URL", "x"),
                    ("STAMPEDE_MAX_CONNECTIONS", "100"),
                    ("STAMPEDE_SCRIPT_QUEUE_MAX", "100"),
                ],
                "STAMPEDE_SCRIPT_QUEUE_MAX",
            ),
            (
                &[("DATABASE_URL", "x"), ("STAMPEDE_QUEUE_DEADLINE_MS", "0")],
                "STAMPEDE_QUEUE_DEADLINE_MS",
            ),
            (
                &[("DATABASE_URL", "x"), ("STAMPEDE_REDIS_COMMAND_TIMEOUT_MS", "10")],
                "STAMPEDE_REDIS_COMMAND_TIMEOUT_MS",
            ),
            (
                &[("DATABASE_URL", "x"), ("STAMPEDE_REDIS_CHECKS", "maybe")],
                "STAMPEDE_REDIS_CHECKS",
            ),
            (
                &[("DATABASE_URL", "x"), ("STAMPEDE_REDIS_WAIT_REPLICAS", "99")],
                "STAMPEDE_REDIS_WAIT_REPLICAS",
            ),
            (
                &[("DATABASE_URL", "x"), ("STAMPEDE_REDIS_WAIT_TIMEOUT_MS", "2000")],
                "STAMPEDE_REDIS_WAIT_TIMEOUT_MS",
            ),
            (
                &[("DATABASE_URL", "x"), ("STAMPEDE_REUSEPORT", "maybe")],
                "STAMPEDE_REUSEPORT",
            ),
        ];
        for (vars, var) in cases {
            let err = config(vars).expect_err("must be refused").to_string();
            assert!(err.starts_with(var), "{err:?} should name {var}");
        }
    }

    #[test]
    fn the_queue_bound_stays_below_the_connection_bound() {
        let c = config(&[("DATABASE_URL", "x")]).expect("valid");
        assert_eq!(c.script_queue_max, limits::SCRIPT_QUEUE_DEPTH_DEFAULT);
        assert!(c.script_queue_max < c.max_connections);
        let small = config(&[("DATABASE_URL", "x"), ("STAMPEDE_MAX_CONNECTIONS", "10")]).expect("valid");
        assert_eq!(small.script_queue_max, 5);
        let one = config(&[("DATABASE_URL", "x"), ("STAMPEDE_MAX_CONNECTIONS", "1")]).expect("valid");
        assert_eq!(one.script_queue_max, 1);
        let set = config(&[
            ("DATABASE_URL", "x"),
            ("STAMPEDE_MAX_CONNECTIONS", "100"),
            ("STAMPEDE_SCRIPT_QUEUE_MAX", "99"),
        ])
        .expect("valid");
        assert_eq!(set.script_queue_max, 99);
    }

    #[test]
    fn several_listen_addresses() {
        let c = config(&[("DATABASE_URL", "x"), ("STAMPEDE_LISTEN", "127.0.0.1:1, 127.0.0.1:2")]).expect("valid");
        assert_eq!(c.listen.len(), 2);
    }
}
