//! Start-up and wiring: connect, migrate, load scripts, bind, then serve and
//! flush until told to stop. Build and run are separate so tests can learn
//! the bound port before serving (`App::build` then `run_until_stopped`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use fred::clients::Pool;
use fred::interfaces::ClientLike;
use fred::types::Builder;
use fred::types::config::{Config as RedisConfig, ReconnectPolicy};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::clock::SharedClock;
use crate::config::{Config, ConfigError};
use crate::keyspace::Keyspace;
use crate::limits::REDIS_COMMAND_TIMEOUT;
use crate::outbox::{FlushError, Flusher};
use crate::scripts::{LuaScript, ScriptError};
use crate::{sale, server, telemetry};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Script(#[from] ScriptError),
    #[error(transparent)]
    Flush(#[from] FlushError),
}

/// What every handler can reach.
pub struct AppState {
    pub config: Config,
    pub clock: SharedClock,
    pub redis: Pool,
    pub postgres: PgPool,
    pub keys: Keyspace,
    pub flusher: Arc<Flusher>,
    pub metrics: PrometheusHandle,
    /// Uploads being ingested; bounded, as each holds Postgres connections
    /// (`STAMPEDE_INGEST_WRITERS`) for its whole duration.
    pub ingest_slots: Semaphore,
}

pub struct App {
    state: Arc<AppState>,
    listeners: Vec<TcpListener>,
    redis_builder: Builder,
}

/// Every script the engine calls, loaded at start so the first request does
/// not pay for SCRIPT LOAD.
fn all_scripts() -> [&'static LuaScript; 3] {
    [
        &sale::scripts::CHECKOUT,
        &sale::scripts::PURCHASE,
        &crate::outbox::flusher::OUTBOX_ACK,
    ]
}

impl App {
    pub async fn build(config: Config, clock: SharedClock) -> Result<Self, StartupError> {
        let metrics = telemetry::metrics_handle();
        let redis_builder = redis_builder(&config.redis_url)?;
        let redis = redis_builder.build_pool(config.redis_pool_size)?;
        redis.init().await?;
        for script in all_scripts() {
            script.load(&redis).await?;
        }

        let postgres = crate::postgres::connect(&config).await?;
        sqlx::migrate!("./migrations").run(&postgres).await?;

        let keys = Keyspace::new(config.key_prefix.clone());
        let flusher = Arc::new(Flusher::new(
            redis.clone(),
            postgres.clone(),
            keys.clone(),
            config.flush.clone(),
        ));
        flusher.ensure_groups().await?;

        let mut listeners = Vec::new();
        for addr in &config.listen {
            let listener = server::bind(*addr).map_err(|source| StartupError::Bind { addr: *addr, source })?;
            listeners.push(listener);
        }
        Ok(Self {
            state: Arc::new(AppState {
                config,
                clock,
                redis,
                postgres,
                keys,
                flusher,
                metrics,
                ingest_slots: Semaphore::new(crate::limits::INGEST_UPLOADS_MAX),
            }),
            listeners,
            redis_builder,
        })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves and flushes until `shutdown` resolves; then stops accepting,
    /// finishes in-flight requests, drains the outbox into Postgres (bounded
    /// by the shutdown grace) and returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        let state = self.state;
        let (stop_tx, stop_rx) = watch::channel(false);
        let flushing = tokio::spawn(state.flusher.clone().run(self.redis_builder, stop_rx.clone()));
        let upkeep = tokio::spawn(metrics_upkeep(state.metrics.clone(), stop_rx));
        tracing::info!(listen = ?state.config.listen, "serving");

        server::serve(self.listeners, state.clone(), shutdown).await;

        let _ = stop_tx.send(true);
        let _ = flushing.await;
        let _ = upkeep.await;
        let deadline = Instant::now() + state.config.shutdown_grace;
        match state.flusher.drain(deadline).await {
            Ok(flushed) => tracing::info!(flushed, "outbox drained"),
            Err(e) => tracing::warn!(error = %e, "outbox not drained; it stays in Redis and flushes at next start"),
        }
        let _ = state.redis.quit().await;
        state.postgres.close().await;
    }
}

fn redis_builder(url: &str) -> Result<Builder, StartupError> {
    let mut builder = Builder::from_config(RedisConfig::from_url(url)?);
    builder
        .with_performance_config(|perf| perf.default_command_timeout = REDIS_COMMAND_TIMEOUT)
        .with_connection_config(|conn| conn.connection_timeout = REDIS_COMMAND_TIMEOUT)
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    Ok(builder)
}

async fn metrics_upkeep(handle: PrometheusHandle, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(crate::limits::METRICS_UPKEEP_INTERVAL);
    while !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            _ = stop.changed() => {}
        }
    }
}
