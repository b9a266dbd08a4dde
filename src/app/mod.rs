//! Start-up and wiring, the top layer: connect, migrate, build the features,
//! compose their routes, load their scripts, register their sinks, bind; then
//! serve and flush until told to stop. Build and run are separate so tests
//! can learn the bound port before serving (`App::build` then
//! `run_until_stopped`).
//!
//! - this module: the feature list and start-up;
//! - `ops`: the index, health, metrics and the API document;
//! - `dead_letters`: the routes over the outbox's dead letters;
//! - `live`: the live page (`live.html`) and its event stream.

mod dead_letters;
pub mod live;
pub mod ops;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use fred::clients::Pool;
use fred::interfaces::ClientLike;
use fred::types::Builder;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::SharedClock;
use crate::config::{Config, ConfigError};
use crate::context::Context;
use crate::outbox::{DuplicateKind, FlushError, Flusher, SinkRegistry};
use crate::redis::executor::{Executor, ExecutorConfig, ExecutorError};
use crate::redis::layout::LayoutError;
use crate::redis::lua::{LuaScript, ScriptError};
use crate::redis::settings::{RedisSettings, RedisSettingsError};
use crate::redis::wait::WaitForReplicas;
use crate::server::access::{self, Gate, ReloadError};
use crate::server::apidoc::ApiDocError;
use crate::server::feature::Feature;
use crate::server::route::RouterError;
use crate::server::{self, Router};
use crate::{ingest, orders, sale, settlement, telemetry, wallet};
use ops::Ops;

/// Every feature of the engine: the one place a new feature is listed.
fn features(ctx: &Arc<Context>) -> Result<Vec<Arc<dyn Feature>>, ConfigError> {
    Ok(vec![
        sale::Sale::new(ctx.clone())?,
        ingest::Ingest::new(ctx.clone())?,
        orders::Orders::new(ctx.clone())?,
        wallet::Wallet::new(ctx.clone())?,
        settlement::Settlement::new(ctx.clone())?,
    ])
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error(transparent)]
    RedisSettings(#[from] RedisSettingsError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
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
    #[error(transparent)]
    Routes(#[from] RouterError),
    #[error(transparent)]
    Sinks(#[from] DuplicateKind),
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    #[error(transparent)]
    ApiDoc(#[from] ApiDocError),
}

pub struct App {
    ctx: Arc<Context>,
    features: Vec<Arc<dyn Feature>>,
    router: Arc<Router>,
    flusher: Arc<Flusher>,
    metrics: PrometheusHandle,
    listeners: Vec<TcpListener>,
    redis_builder: Builder,
}

impl App {
    pub async fn build(config: Config, clock: SharedClock) -> Result<Self, StartupError> {
        let metrics = telemetry::metrics_handle();
        telemetry::register_metrics();
        let redis_builder = crate::redis::client::builder(&config.redis_url, config.redis_command_timeout)?;
        let redis: Pool = redis_builder.build_pool(config.redis_pool_size)?;
        crate::redis::client::init_pool(&redis).await?;
        let redis_settings = match config.redis_checks {
            true => crate::redis::settings::check(&redis, config.redis_wait_replicas).await?,
            false => RedisSettings::unchecked(),
        };
        telemetry::redis_appendonly(redis_settings.appendonly_gauge());

        let postgres = crate::postgres::connect(&config).await?;
        sqlx::migrate!("./migrations").run(&postgres).await?;
        // Both answered just now; the probe takes over from here.
        telemetry::dependency_up("redis", true);
        telemetry::dependency_up("postgres", true);

        let keys = crate::redis::layout::establish(&redis, &config.key_prefix, config.outbox_shards).await?;
        let executor = Executor::new(
            redis.clone(),
            keys.clone(),
            ExecutorConfig {
                inflight: config.script_inflight,
                outbox_events_max: config.outbox_events_max,
                queue_max: config.script_queue_max,
                queue_deadline: config.queue_deadline,
                mark_ttl: config.redis_command_timeout * crate::limits::BATCH_MARK_TTL_TIMEOUTS,
                wait: WaitForReplicas::new(config.redis_wait_replicas, config.redis_wait_timeout),
            },
        );
        let ctx = Arc::new(Context {
            config,
            clock,
            redis,
            postgres,
            keys,
            executor,
        });
        let features = features(&ctx)?;

        // Every script is loaded now, so the first request does not pay for it.
        let mut batch_scripts = Vec::new();
        let mut scripts: Vec<&'static LuaScript> = vec![&crate::outbox::flusher::OUTBOX_ACK];
        let mut sinks = SinkRegistry::default();
        let mut routes = Vec::new();
        for feature in &features {
            batch_scripts.extend(feature.batch_scripts());
            scripts.extend(feature.scripts());
            if let Some(sink) = feature.clone().sink() {
                sinks.register(sink)?;
            }
            routes.extend(feature.clone().routes());
            feature.register_metrics();
            tracing::debug!(feature = feature.name(), "feature ready");
        }
        telemetry::register_batch_scripts(batch_scripts.iter().map(|s| s.lua.name()));
        scripts.extend(batch_scripts.iter().map(|s| &s.lua));
        for script in scripts {
            script.load(&ctx.redis).await?;
        }
        ctx.executor.start(&batch_scripts)?;

        let flusher = Arc::new(Flusher::new(
            ctx.redis.clone(),
            ctx.postgres.clone(),
            ctx.keys.clone(),
            ctx.config.flush.clone(),
            sinks,
            ctx.clock.clone(),
        ));
        flusher.ensure_groups().await?;

        // The live page is wired like a feature (routes, document, shutdown),
        // but reads every feature's metrics, so it lives at the top.
        let live: Arc<dyn Feature> = live::Live::new(ctx.clone(), flusher.clone(), metrics.clone())?;
        routes.extend(live.clone().routes());
        let mut features = features;
        features.push(live);

        let ops = Ops::new(ctx.clone(), flusher.clone(), metrics.clone(), redis_settings);
        routes.extend(ops.clone().routes());
        telemetry::register_routes(routes.iter().map(|r| r.name));
        let gate = Gate::new(
            &ctx.config.access,
            ctx.config.admin_token.as_ref(),
            &ctx.config.listen,
            &access::scopes(routes.iter().map(|r| &r.access)),
            ctx.clock.clone(),
        )?;
        if gate.is_open() {
            let reason = match ctx.config.access.off {
                true => "STAMPEDE_AUTH=off",
                false => "no keys file nor player-token key, every listen address loopback",
            };
            tracing::warn!(
                listen = ?ctx.config.listen,
                reason,
                "open mode: every route but the admin ones serves anyone; see docs/operations.md, Access"
            );
        }
        let router = Arc::new(Router::new(routes, gate)?);
        ops.publish(&router.describe(), features.iter().map(|f| f.api()))?;

        let mut listeners = Vec::new();
        for addr in &ctx.config.listen {
            let listener = server::bind(*addr, ctx.config.reuseport)
                .map_err(|source| StartupError::Bind { addr: *addr, source })?;
            listeners.push(listener);
        }
        Ok(Self {
            ctx,
            features,
            router,
            flusher,
            metrics,
            listeners,
            redis_builder,
        })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    pub fn context(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    pub fn flusher(&self) -> Arc<Flusher> {
        self.flusher.clone()
    }

    /// Reads the keys file again (see [`Gate::reload_keys`]); callable
    /// while the engine serves, e.g. on `SIGHUP`.
    pub fn key_reloader(&self) -> impl Fn() -> Result<usize, ReloadError> + Send + Sync + 'static {
        let router = self.router.clone();
        move || router.gate().reload_keys()
    }

    /// Every route, as `GET /` lists them.
    pub fn routes(&self) -> Vec<crate::server::route::RouteInfo> {
        self.router.describe()
    }

    /// Serves and flushes until `shutdown` resolves; then stops accepting,
    /// finishes in-flight requests, stops the features' background work,
    /// drains the outbox into Postgres (bounded by the shutdown grace) and
    /// returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        let ctx = self.ctx;
        let (stop_tx, stop_rx) = watch::channel(false);
        let flushing = tokio::spawn(self.flusher.clone().run(self.redis_builder, stop_rx.clone()));
        let upkeep = tokio::spawn(metrics_upkeep(self.metrics.clone(), stop_rx.clone()));
        let probing = tokio::spawn(probe_dependencies(ctx.clone(), stop_rx.clone()));
        // Features hear of shutdown as soon as it begins, so long-lived
        // responses (event streams) end instead of holding the grace period;
        // the flusher runs until in-flight requests are done.
        let (features_stop_tx, features_stop_rx) = watch::channel(false);
        let background: Vec<_> = self
            .features
            .iter()
            .flat_map(|f| f.clone().spawn_background(features_stop_rx.clone()))
            .collect();
        tracing::info!(listen = ?ctx.config.listen, "serving");

        let shutdown = async {
            shutdown.await;
            let _ = features_stop_tx.send(true);
        };
        server::serve(self.listeners, self.router, &ctx.config, shutdown).await;

        let _ = stop_tx.send(true);
        for task in background {
            let _ = task.await;
        }
        let _ = flushing.await;
        let _ = upkeep.await;
        let _ = probing.await;
        let deadline = Instant::now() + ctx.config.shutdown_grace;
        match self.flusher.drain(deadline).await {
            Ok(flushed) => tracing::info!(flushed, "outbox drained"),
            Err(e) => tracing::warn!(error = %e, "outbox not drained; it stays in Redis and flushes at next start"),
        }
        let _ = ctx.redis.quit().await;
        ctx.postgres.close().await;
    }
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

/// Probes Redis and Postgres every `DEPENDENCY_PROBE_INTERVAL`, so their
/// reachability is a metric (dashboards and alerts), not only `/health`.
async fn probe_dependencies(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(crate::limits::DEPENDENCY_PROBE_INTERVAL);
    while !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => {
                let timeout = crate::limits::DEPENDENCY_PROBE_INTERVAL;
                let redis = tokio::time::timeout(timeout, ctx.redis.ping::<String>(None)).await;
                telemetry::dependency_up("redis", matches!(redis, Ok(Ok(_))));
                let postgres = tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(&ctx.postgres)).await;
                telemetry::dependency_up("postgres", matches!(postgres, Ok(Ok(_))));
            }
            _ = stop.changed() => {}
        }
    }
}
