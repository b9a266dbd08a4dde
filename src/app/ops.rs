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
use serde_json::json;

use super::dead_letters;
use crate::context::Context;
use crate::outbox::Flusher;
use crate::redis::settings::RedisSettings;
use crate::server::http::{HttpResponse, json, with_content_type};
use crate::server::route::RouteInfo;
use crate::server::{Route, apidoc};

/// Each dependency check answers within this, so /health never hangs.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Ops {
    ctx: Arc<Context>,
    flusher: Arc<Flusher>,
    metrics: PrometheusHandle,
    redis_settings: RedisSettings,
    index: OnceLock<Vec<RouteInfo>>,
    api: OnceLock<Bytes>,
}

/// The base of the API document: its description and the operational routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "stampede",
        description = "A Redis-first flash-sale engine. Every error is JSON `{\"error\":{\"code\",\"message\"}}`; \
clients switch on `code`. Any route may also answer `NOT_FOUND` (404, unknown route), `METHOD_NOT_ALLOWED` (405), \
`BODY_TIMEOUT` (408), `BODY_TOO_LARGE` (413), `URI_TOO_LONG` (414); admin routes `UNAUTHORIZED` (401) and \
`ADMIN_DISABLED` (403); script-backed routes `REDIS_UNAVAILABLE` and `OVERLOADED` (503, with `Retry-After`) and \
`INTERNAL` (500). A connection opened while the engine is at its connection bound is answered `OVERLOADED` (503, \
`Retry-After`, `Connection: close`) whatever it asks."
    ),
    paths(health_doc, metrics_doc, index_doc, openapi_doc),
    components(schemas(HealthDoc, crate::server::error::ErrorBody)),
    modifiers(&AdminScheme)
)]
struct OpsApi;

/// The `admin` security scheme admin routes name: a bearer token.
struct AdminScheme;

impl utoipa::Modify for AdminScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("STAMPEDE_ADMIN_TOKEN"))
                    .build(),
            ),
        );
    }
}

/// `/health`'s body, for the document.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // describes `Health` for the API document only
struct HealthDoc {
    /// `ok`, `degraded` (Postgres unreachable: sales go on) or `down`.
    status: String,
    redis: String,
    postgres: String,
    outbox_backlog: Option<u64>,
    /// Redis's persistence as read at start: `appendonly` (`yes`/`no`) and
    /// `appendfsync`; `unknown` when Redis would not say.
    redis_appendonly: String,
    redis_appendfsync: String,
    /// Settings that weaken a guarantee (e.g. `appendonly no`), for people.
    warnings: Vec<String>,
}

#[utoipa::path(get, path = "/health", tag = "ops", summary = "Redis, Postgres and outbox backlog",
    responses((status = 200, description = "up (`ok` or `degraded`)", body = HealthDoc),
              (status = 503, description = "Redis unreachable (`down`)", body = HealthDoc)))]
#[allow(dead_code)]
fn health_doc() {}

#[utoipa::path(get, path = "/metrics", tag = "ops", summary = "Prometheus metrics",
    responses((status = 200, description = "text exposition format", content_type = "text/plain", body = String)))]
#[allow(dead_code)]
fn metrics_doc() {}

#[utoipa::path(get, path = "/", tag = "ops", summary = "The index of every route",
    responses((status = 200, description = "name, version and every route with its description", body = Object)))]
#[allow(dead_code)]
fn index_doc() {}

#[utoipa::path(get, path = "/openapi.json", tag = "ops", summary = "This document (OpenAPI 3.1)",
    responses((status = 200, description = "the OpenAPI document", body = Object)))]
#[allow(dead_code)]
fn openapi_doc() {}

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

    /// The API document: the operational routes' and every feature's parts.
    pub fn set_api(&self, parts: impl IntoIterator<Item = utoipa::openapi::OpenApi>) {
        let mut base = <OpsApi as utoipa::OpenApi>::openapi();
        base.merge(<dead_letters::DeadLettersApi as utoipa::OpenApi>::openapi());
        let document = apidoc::assemble(base, parts);
        match document.to_json() {
            Ok(json) => {
                let _ = self.api.set(Bytes::from(json));
            }
            Err(e) => tracing::error!(error = %e, "the API document does not serialize"),
        }
    }

    /// The route list `GET /` serves, known once the router is built.
    pub fn set_index(&self, routes: Vec<RouteInfo>) {
        let _ = self.index.set(routes);
    }

    pub fn routes(self: Arc<Self>) -> Vec<Route> {
        let dead_letters = dead_letters::routes(self.ctx.clone(), self.flusher.clone());
        let mut routes = vec![
            Route::new(
                Method::GET,
                "/health",
                "health",
                "Redis, Postgres and outbox backlog; 503 when Redis is unreachable",
                self.clone(),
                |ops, _, _| async move { Ok::<_, Infallible>(ops.health().await) },
            ),
            Route::new(
                Method::GET,
                "/metrics",
                "metrics",
                "Prometheus metrics",
                self.clone(),
                |ops, _, _| async move { Ok::<_, Infallible>(ops.metrics()) },
            ),
            Route::new(
                Method::GET,
                "/openapi.json",
                "openapi",
                "The OpenAPI 3.1 document of every route, generated from the code",
                self.clone(),
                |ops, _, _| async move {
                    let body = ops.api.get().cloned().unwrap_or_default();
                    Ok::<_, Infallible>(with_content_type(StatusCode::OK, body, "application/json"))
                },
            ),
            Route::new(Method::GET, "/", "index", "This index", self, |ops, _, _| async move {
                Ok::<_, Infallible>(ops.index())
            }),
        ];
        routes.extend(dead_letters);
        routes
    }

    fn index(&self) -> HttpResponse {
        json(
            StatusCode::OK,
            &json!({
                "name": "stampede",
                "version": env!("CARGO_PKG_VERSION"),
                "endpoints": self.index.get().cloned().unwrap_or_default(),
            }),
        )
    }

    /// 503 only when Redis is unreachable: without Postgres the engine still
    /// sells (the outbox holds the backlog), so that is "degraded", not down.
    async fn health(&self) -> HttpResponse {
        let redis_ok = matches!(
            tokio::time::timeout(HEALTH_CHECK_TIMEOUT, self.ctx.redis.ping::<String>(None)).await,
            Ok(Ok(_))
        );
        let postgres_ok = matches!(
            tokio::time::timeout(
                HEALTH_CHECK_TIMEOUT,
                sqlx::query("SELECT 1").execute(&self.ctx.postgres)
            )
            .await,
            Ok(Ok(_))
        );
        let backlog = match redis_ok {
            true => tokio::time::timeout(HEALTH_CHECK_TIMEOUT, self.flusher.backlog())
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
                redis_appendonly: self.redis_settings.appendonly.as_deref().unwrap_or("unknown"),
                redis_appendfsync: self.redis_settings.appendfsync.as_deref().unwrap_or("unknown"),
                warnings: &self.redis_settings.warnings,
            },
        )
    }

    fn metrics(&self) -> HttpResponse {
        with_content_type(
            StatusCode::OK,
            Bytes::from(self.metrics.render()),
            "text/plain; version=0.0.4",
        )
    }
}

#[derive(Serialize)]
struct Health<'a> {
    status: &'static str,
    redis: &'static str,
    postgres: &'static str,
    /// Outbox events committed in Redis and not yet in Postgres.
    outbox_backlog: Option<u64>,
    redis_appendonly: &'a str,
    redis_appendfsync: &'a str,
    warnings: &'a [String],
}
