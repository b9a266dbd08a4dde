//! Operational endpoints: the index, health and metrics, and the outbox's
//! dead letters (`super::dead_letters`). Part of the top layer: it reads the
//! flusher's backlog and the route list the wiring built.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use fred::interfaces::ClientLike;
use hyper::{Method, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use super::dead_letters;
use crate::context::Context;
use crate::outbox::Flusher;
use crate::redis::settings::RedisSettings;
use crate::server::Route;
use crate::server::access::{Access, METRICS_SCOPE};
use crate::server::apidoc::{self, ApiDocError, IndexEntry};
use crate::server::http::{HttpResponse, json, with_content_type};
use crate::server::route::RouteInfo;

/// Each dependency check answers within this, so /health never hangs.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Ops {
    ctx: Arc<Context>,
    flusher: Arc<Flusher>,
    metrics: PrometheusHandle,
    redis_settings: RedisSettings,
    index: OnceLock<Vec<IndexEntry>>,
    api: OnceLock<Bytes>,
}

/// The base of the API document: its description and the operational routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "stampede",
        description = "A Redis-first flash-sale engine. Every error is JSON `{\"error\":{\"code\",\"message\"}}`; \
clients switch on `code`. Each operation lists, per status, the codes it may answer (generated from its route's \
declared codes); an unknown path answers `NOT_FOUND` (404). A connection opened while the engine is at its \
connection bound is answered `OVERLOADED` (503, `Retry-After`, `Connection: close`) whatever it asks."
    ),
    paths(health, metrics, index, openapi),
    components(schemas(crate::server::error::ErrorBody))
)]
struct OpsApi;

impl Ops {
    pub fn new(
        ctx: Arc<Context>,
        flusher: Arc<Flusher>,
        metrics: PrometheusHandle,
        redis_settings: RedisSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            ctx,
            flusher,
            metrics,
            redis_settings,
            index: OnceLock::new(),
            api: OnceLock::new(),
        })
    }

    /// The API document (the operational routes' and every feature's
    /// parts) and the index of `routes`, whose text it reads from the
    /// document. Fails when a route has no documented operation.
    pub fn publish(
        &self,
        routes: &[RouteInfo],
        parts: impl IntoIterator<Item = utoipa::openapi::OpenApi>,
    ) -> Result<(), ApiDocError> {
        let mut base = <OpsApi as utoipa::OpenApi>::openapi();
        base.merge(<dead_letters::DeadLettersApi as utoipa::OpenApi>::openapi());
        let document = apidoc::assemble(base, parts, routes)?;
        let endpoints = apidoc::index(&document, routes)?;
        let json = document.to_json()?;
        let _ = self.api.set(Bytes::from(json));
        let _ = self.index.set(endpoints);
        Ok(())
    }

    pub fn routes(self: Arc<Self>) -> Vec<Route> {
        let dead_letters = dead_letters::routes(self.ctx.clone(), self.flusher.clone());
        // Metrics name routes and keys, not players: public unless the
        // operator asks for a key.
        let metrics_access = match self.ctx.config.access.metrics_require_key {
            true => Access::service(METRICS_SCOPE),
            false => Access::Public,
        };
        let mut routes = vec![
            Route::new(
                Method::GET,
                "/health",
                "health",
                Access::Public,
                self.clone(),
                |ops, _, _| async move { Ok::<_, Infallible>(health(&ops).await) },
            ),
            Route::new(
                Method::GET,
                "/metrics",
                "metrics",
                metrics_access,
                self.clone(),
                |ops, _, _| async move { Ok::<_, Infallible>(metrics(&ops)) },
            ),
            Route::new(
                Method::GET,
                "/openapi.json",
                "openapi",
                Access::Public,
                self.clone(),
                |ops, _, _| async move { Ok::<_, Infallible>(openapi(&ops)) },
            ),
            Route::new(
                Method::GET,
                "/",
                "index",
                Access::Public,
                self,
                |ops, _, _| async move { Ok::<_, Infallible>(index(&ops)) },
            ),
        ];
        routes.extend(dead_letters);
        routes
    }
}

/// `GET /`'s body. Its fields are in the order the index has always
/// written them (alphabetical), which clients may have come to rely on.
#[derive(Serialize, utoipa::ToSchema)]
struct Index<'a> {
    /// Every route, each with its summary in this document.
    endpoints: &'a [IndexEntry],
    name: &'static str,
    version: &'static str,
}

#[utoipa::path(get, path = "/", tag = "ops", summary = "The index of every route",
    responses((status = 200, description = "name, version and every route with its summary", body = Index)))]
fn index(ops: &Ops) -> HttpResponse {
    json(
        StatusCode::OK,
        &Index {
            endpoints: ops.index.get().map_or(&[], Vec::as_slice),
            name: "stampede",
            version: env!("CARGO_PKG_VERSION"),
        },
    )
}

#[utoipa::path(get, path = "/openapi.json", tag = "ops", summary = "The OpenAPI 3.1 document of every route, generated from the code",
    responses((status = 200, description = "the OpenAPI document", body = Object)))]
fn openapi(ops: &Ops) -> HttpResponse {
    let body = ops.api.get().cloned().unwrap_or_default();
    with_content_type(StatusCode::OK, body, "application/json")
}

/// 503 only when Redis is unreachable: without Postgres the engine still
/// sells (the outbox holds the backlog), so that is "degraded", not down.
#[utoipa::path(get, path = "/health", tag = "ops", summary = "Redis, Postgres and outbox backlog",
    responses((status = 200, description = "up (`ok` or `degraded`)", body = Health),
              (status = 503, description = "Redis unreachable (`down`)", body = Health)))]
async fn health(ops: &Ops) -> HttpResponse {
    let redis_ok = matches!(
        tokio::time::timeout(HEALTH_CHECK_TIMEOUT, ops.ctx.redis.ping::<String>(None)).await,
        Ok(Ok(_))
    );
    let postgres_ok = matches!(
        tokio::time::timeout(HEALTH_CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&ops.ctx.postgres)).await,
        Ok(Ok(_))
    );
    let backlog = match redis_ok {
        true => tokio::time::timeout(HEALTH_CHECK_TIMEOUT, ops.flusher.backlog())
            .await
            .ok()
            .and_then(Result::ok),
        false => None,
    };
    let (status, word) = match (redis_ok, postgres_ok) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "down"),
        (true, false) => (StatusCode::OK, "degraded"),
        (true, true) => (StatusCode::OK, "ok"),
    };
    json(
        status,
        &Health {
            status: word,
            redis: if redis_ok { "ok" } else { "unreachable" },
            postgres: if postgres_ok { "ok" } else { "unreachable" },
            outbox_backlog: backlog,
            redis_appendonly: ops.redis_settings.appendonly.as_deref().unwrap_or("unknown"),
            redis_appendfsync: ops.redis_settings.appendfsync.as_deref().unwrap_or("unknown"),
            warnings: &ops.redis_settings.warnings,
        },
    )
}

#[utoipa::path(get, path = "/metrics", tag = "ops", summary = "Prometheus metrics",
    responses((status = 200, description = "text exposition format", content_type = "text/plain", body = String)))]
fn metrics(ops: &Ops) -> HttpResponse {
    with_content_type(
        StatusCode::OK,
        Bytes::from(ops.metrics.render()),
        "text/plain; version=0.0.4",
    )
}

#[derive(Serialize, utoipa::ToSchema)]
struct Health<'a> {
    /// `ok`, `degraded` (Postgres unreachable: sales go on) or `down`.
    status: &'static str,
    /// `ok` or `unreachable`.
    redis: &'static str,
    /// `ok` or `unreachable`.
    postgres: &'static str,
    /// Outbox events committed in Redis and not yet in Postgres; null when
    /// Redis could not say.
    outbox_backlog: Option<u64>,
    /// Redis's persistence as read at start: `appendonly` (`yes`/`no`) and
    /// `appendfsync`; `unknown` when Redis would not say.
    redis_appendonly: &'a str,
    redis_appendfsync: &'a str,
    /// Settings that weaken a guarantee (e.g. `appendonly no`), for people.
    warnings: &'a [String],
}
