//! Operational endpoints: the index, health and metrics. Part of the top
//! layer: it reads the flusher's backlog and the route list the wiring built.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use fred::interfaces::ClientLike;
use hyper::{Method, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::json;

use crate::outbox::Flusher;
use crate::server::Route;
use crate::server::http::{HttpResponse, json, with_content_type};
use crate::server::route::RouteInfo;
use crate::services::Services;

/// Each dependency check answers within this, so /health never hangs.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Ops {
    services: Arc<Services>,
    flusher: Arc<Flusher>,
    metrics: PrometheusHandle,
    index: OnceLock<Vec<RouteInfo>>,
}

impl Ops {
    pub fn new(services: Arc<Services>, flusher: Arc<Flusher>, metrics: PrometheusHandle) -> Arc<Self> {
        Arc::new(Self {
            services,
            flusher,
            metrics,
            index: OnceLock::new(),
        })
    }

    /// The route list `GET /` serves, known once the router is built.
    pub fn set_index(&self, routes: Vec<RouteInfo>) {
        let _ = self.index.set(routes);
    }

    pub fn routes(self: Arc<Self>) -> Vec<Route> {
        vec![
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
            Route::new(Method::GET, "/", "index", "This index", self, |ops, _, _| async move {
                Ok::<_, Infallible>(ops.index())
            }),
        ]
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
            tokio::time::timeout(HEALTH_CHECK_TIMEOUT, self.services.redis.ping::<String>(None)).await,
            Ok(Ok(_))
        );
        let postgres_ok = matches!(
            tokio::time::timeout(
                HEALTH_CHECK_TIMEOUT,
                sqlx::query("SELECT 1").execute(&self.services.postgres)
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
struct Health {
    status: &'static str,
    redis: &'static str,
    postgres: &'static str,
    /// Outbox events committed in Redis and not yet in Postgres.
    outbox_backlog: Option<u64>,
}
