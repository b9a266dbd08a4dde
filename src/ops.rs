//! Operational endpoints: the index, health and metrics.

use std::time::Duration;

use bytes::Bytes;
use fred::interfaces::ClientLike;
use hyper::StatusCode;
use serde::Serialize;
use serde_json::json;

use crate::app::AppState;
use crate::server::http::{HttpResponse, json, with_content_type};
use crate::server::router::ROUTES;

/// Each dependency check answers within this, so /health never hangs.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

pub fn index() -> HttpResponse {
    let endpoints: Vec<_> = ROUTES
        .iter()
        .map(|(method, path, description)| json!({"method": method, "path": path, "description": description}))
        .collect();
    json(
        StatusCode::OK,
        &json!({
            "name": "stampede",
            "version": env!("CARGO_PKG_VERSION"),
            "endpoints": endpoints,
        }),
    )
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    redis: &'static str,
    postgres: &'static str,
    /// Outbox entries committed in Redis and not yet in Postgres.
    outbox_backlog: Option<u64>,
}

/// 503 only when Redis is unreachable: without Postgres the engine still
/// sells (the outbox holds the backlog), so that is "degraded", not down.
pub async fn health(state: &AppState) -> HttpResponse {
    let redis_ok = matches!(
        tokio::time::timeout(HEALTH_CHECK_TIMEOUT, state.redis.ping::<String>(None)).await,
        Ok(Ok(_))
    );
    let postgres_ok = matches!(
        tokio::time::timeout(HEALTH_CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&state.postgres)).await,
        Ok(Ok(_))
    );
    let backlog = match redis_ok {
        true => tokio::time::timeout(HEALTH_CHECK_TIMEOUT, state.flusher.backlog())
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

pub fn metrics(state: &AppState) -> HttpResponse {
    with_content_type(
        StatusCode::OK,
        Bytes::from(state.metrics.render()),
        "text/plain; version=0.0.4",
    )
}
