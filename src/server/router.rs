//! The router: a plain `match` on method and path. Every response passes
//! through [`route`], which records the request metrics.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Method, Request};

use super::RequestError;
use super::http::{HttpResponse, check_declared_size, error_response};
use crate::app::AppState;
use crate::error::ApiError;
use crate::limits::REQUEST_URI_BYTES_MAX;
use crate::{ingest, ops, sale, telemetry};

/// Every route: method, path, what it does. Served as the index at `GET /`
/// and used to answer 405 with the right `Allow` header.
pub const ROUTES: &[(&str, &str, &str)] = &[
    (
        "POST",
        "/checkout",
        "Get a checkout code: ?user_id=U&id=I (or item_id=I)",
    ),
    (
        "POST",
        "/purchase",
        "Spend a checkout code: ?code=C or JSON {\"checkout_code\": C}",
    ),
    (
        "POST",
        "/ingest",
        "Upload purchases as NDJSON: multipart/form-data, field `file`",
    ),
    (
        "GET",
        "/players/{id}",
        "A player's loyalty: purchases, spend per currency, tier",
    ),
    (
        "GET",
        "/sales/current",
        "The current sale: window, items total and sold, per-user limit",
    ),
    (
        "GET",
        "/health",
        "Redis, Postgres and outbox backlog; 503 when Redis is unreachable",
    ),
    ("GET", "/metrics", "Prometheus metrics"),
    ("GET", "/", "This index"),
];

pub async fn route(state: Arc<AppState>, req: Request<Incoming>) -> Result<HttpResponse, Infallible> {
    let started = Instant::now();
    let (route, result) = dispatch(&state, req).await;
    let response = result.unwrap_or_else(|e| error_response(&e));
    telemetry::http_request(route, response.status(), started.elapsed());
    Ok(response)
}

async fn dispatch(state: &AppState, req: Request<Incoming>) -> (&'static str, Result<HttpResponse, ApiError>) {
    if req.uri().path_and_query().map_or(0, |pq| pq.as_str().len()) > REQUEST_URI_BYTES_MAX {
        return ("unknown", Err(RequestError::UriTooLong.into()));
    }
    // Refuse oversized bodies on every route, read or not, before anything
    // else; uploads have their own, larger bound.
    if req.uri().path() != "/ingest"
        && let Err(e) = check_declared_size(&req)
    {
        return ("unknown", Err(e.into()));
    }
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/checkout") => ("checkout", sale::handlers::checkout(state, req).await),
        (&Method::POST, "/purchase") => ("purchase", sale::handlers::purchase(state, req).await),
        (&Method::POST, "/ingest") => ("ingest", ingest::handlers::ingest(state, req).await),
        (&Method::GET, path) if path.starts_with(PLAYERS_PREFIX) => (
            "player",
            ingest::handlers::player(state, &path[PLAYERS_PREFIX.len()..]).await,
        ),
        (&Method::GET, "/sales/current") => ("sales_current", sale::handlers::current(state).await),
        (&Method::GET, "/health") => ("health", Ok(ops::health(state).await)),
        (&Method::GET, "/metrics") => ("metrics", Ok(ops::metrics(state))),
        (&Method::GET, "/") => ("index", Ok(ops::index())),
        (_, path) => ("unknown", Err(not_routed(path).into())),
    }
}

const PLAYERS_PREFIX: &str = "/players/";

fn not_routed(path: &str) -> RequestError {
    let pattern = if path.starts_with(PLAYERS_PREFIX) {
        "/players/{id}"
    } else {
        path
    };
    match ROUTES.iter().find(|(_, p, _)| *p == pattern) {
        Some((method, _, _)) => RequestError::MethodNotAllowed { allow: method },
        None => RequestError::NotFound,
    }
}
