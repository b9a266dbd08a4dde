//! Routes as data, and the router that composes them. A feature declares its
//! routes (method, path pattern, metric name, who may call it, handler); the
//! router matches paths with `matchit`, answers 404 and 405 (with `Allow`)
//! from the same list, checks the caller's credential against the route's
//! [`Access`] before the handler runs (the handler finds the `access::Caller` in
//! the request's extensions), and records the request metrics of every
//! response. A route carries
//! no text: what it does is said once, in its handler's `#[utoipa::path]`,
//! and the index reads it from the API document (see `apidoc::index`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper::{Method, Request};

use super::RequestError;
use super::access::{Access, Gate};
use super::error::{
    ADMIN_ANSWERS, ApiError, BODY_TOO_LARGE, CREDENTIAL_ANSWERS, EVERY_ROUTE, ErrorCode, error_response, respond,
};
use super::http::{HttpResponse, check_declared_size};
use crate::limits::REQUEST_URI_BYTES_MAX;
use crate::telemetry;

/// The path parameters of a matched route, e.g. `id` of `/items/{id}`,
/// still percent-encoded as they came.
#[derive(Debug, Default, Clone)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

type Handler = Arc<dyn Fn(Request<Incoming>, Params) -> BoxFuture<'static, HttpResponse> + Send + Sync>;

/// One route. `name` labels its metrics (low cardinality: never the path).
#[derive(Clone)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub name: &'static str,
    /// Who may call it; the router checks it before the handler runs.
    pub access: Access,
    /// Whether the credential may also come as `?access_token=` (event
    /// streams, which a browser opens without headers).
    pub token_in_query: bool,
    /// Whether the handler bounds its own body (uploads); every other route
    /// refuses a declared body over `REQUEST_BODY_BYTES_MAX` before it runs.
    pub own_body_limit: bool,
    /// The error codes its handler may answer, beyond those every route may
    /// (see [`RouteInfo::answers`]).
    answers: Vec<ErrorCode>,
    handler: Handler,
}

impl Route {
    /// A route whose handler gets `state` (the feature), the request and the
    /// path parameters, once the router has checked the caller against
    /// `access`.
    pub fn new<S, F, Fut, E>(
        method: Method,
        path: &'static str,
        name: &'static str,
        access: Access,
        state: Arc<S>,
        handler: F,
    ) -> Self
    where
        S: Send + Sync + 'static,
        F: Fn(Arc<S>, Request<Incoming>, Params) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HttpResponse, E>> + Send + 'static,
        E: ApiError,
    {
        Self {
            method,
            path,
            name,
            access,
            token_in_query: false,
            own_body_limit: false,
            answers: Vec::new(),
            handler: Arc::new(move |req, params| {
                let response = handler(state.clone(), req, params);
                Box::pin(async move { respond(response.await) })
            }),
        }
    }

    /// Takes the bearer credential from `?access_token=` as well (RFC 6750
    /// §2.3): a browser's `EventSource` cannot set `Authorization`. The
    /// query is never logged nor a metric label.
    pub fn with_token_in_query(mut self) -> Self {
        self.token_in_query = true;
        self
    }

    /// For handlers that stream a body larger than the general bound.
    pub fn with_own_body_limit(mut self) -> Self {
        self.own_body_limit = true;
        self
    }

    /// Error codes the handler may answer: its feature's, and the toolkit's
    /// groups it uses (`error::BODY_ANSWERS`, `SCRIPT_ANSWERS`). Called
    /// again, it adds to the list. The router adds what its access check
    /// answers (`ADMIN_ANSWERS`, `CREDENTIAL_ANSWERS`) itself. The API
    /// document's error responses of the route are generated from it.
    pub fn answers(mut self, codes: &'static [ErrorCode]) -> Self {
        for code in codes {
            if !self.answers.contains(code) {
                self.answers.push(*code);
            }
        }
        self
    }
}

/// A route as the router knows it: its method, path pattern and the error
/// codes it may answer. What it does comes from the API document
/// (`apidoc::index`).
#[derive(Debug, Clone)]
pub struct RouteInfo {
    pub method: Method,
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Every error code the route may answer: those it declares, then those
    /// the toolkit gives on every route (`error::EVERY_ROUTE`, and
    /// `BODY_TOO_LARGE` unless it bounds its own body), and those of its
    /// access check.
    pub answers: Vec<ErrorCode>,
}

/// Every route of every feature. Built once at start.
pub struct Router {
    gate: Gate,
    paths: matchit::Router<usize>,
    /// Per path pattern, its routes (one per method) and its `Allow` value.
    entries: Vec<(Vec<Route>, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("route {method} {path}: {source}")]
    Insert {
        method: Method,
        path: &'static str,
        source: matchit::InsertError,
    },
    #[error("route {method} {path} is declared twice")]
    Duplicate { method: Method, path: &'static str },
}

impl Router {
    pub fn new(routes: Vec<Route>, gate: Gate) -> Result<Self, RouterError> {
        let mut by_path: BTreeMap<&'static str, Vec<Route>> = BTreeMap::new();
        let mut order: Vec<&'static str> = Vec::new();
        for route in routes {
            let same_path = by_path.entry(route.path).or_default();
            if same_path.iter().any(|r| r.method == route.method) {
                return Err(RouterError::Duplicate {
                    method: route.method,
                    path: route.path,
                });
            }
            if same_path.is_empty() {
                order.push(route.path);
            }
            same_path.push(route);
        }
        let mut paths = matchit::Router::new();
        let mut entries = Vec::new();
        for path in order {
            let routes = by_path.remove(path).unwrap_or_default();
            let allow = routes.iter().map(|r| r.method.as_str()).collect::<Vec<_>>().join(", ");
            paths
                .insert(path, entries.len())
                .map_err(|source| RouterError::Insert {
                    method: routes.first().map_or(Method::GET, |r| r.method.clone()),
                    path,
                    source,
                })?;
            entries.push((routes, allow));
        }
        Ok(Self { gate, paths, entries })
    }

    /// Every route, in declaration order of their paths.
    pub fn describe(&self) -> Vec<RouteInfo> {
        self.entries
            .iter()
            .flat_map(|(routes, _)| routes.iter())
            .map(|r| {
                let mut answers = r.answers.clone();
                let access_answers: &[ErrorCode] = match r.access {
                    Access::Public => &[],
                    Access::Service(_) | Access::Player { .. } => CREDENTIAL_ANSWERS,
                    Access::Admin => ADMIN_ANSWERS,
                };
                let toolkit = access_answers
                    .iter()
                    .chain(EVERY_ROUTE)
                    .chain((!r.own_body_limit).then_some(&BODY_TOO_LARGE));
                for code in toolkit {
                    if !answers.contains(code) {
                        answers.push(*code);
                    }
                }
                RouteInfo {
                    method: r.method.clone(),
                    path: r.path,
                    access: r.access,
                    answers,
                }
            })
            .collect()
    }

    /// Answers one request; every response passes through here, so the
    /// request metrics see them all.
    pub async fn route(self: Arc<Self>, req: Request<Incoming>) -> Result<HttpResponse, Infallible> {
        let started = Instant::now();
        let (name, caller, response) = match self.find(&req) {
            Ok((route, params)) => {
                let (mut parts, body) = req.into_parts();
                match self.gate.check(route.access, &parts, &params, route.token_in_query) {
                    Ok(caller) => {
                        let label = caller.label();
                        parts.extensions.insert(caller);
                        let req = Request::from_parts(parts, body);
                        (route.name, label, (route.handler)(req, params).await)
                    }
                    Err(e) => (route.name, "refused", error_response(&e)),
                }
            }
            Err(e) => ("unknown", "none", error_response(&e)),
        };
        telemetry::http_request(name, response.status(), started.elapsed());
        telemetry::http_request_by_caller(caller, response.status());
        Ok(response)
    }

    /// The gate the router checks every request with.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    fn find(&self, req: &Request<Incoming>) -> Result<(&Route, Params), RequestError> {
        if req.uri().path_and_query().map_or(0, |pq| pq.as_str().len()) > REQUEST_URI_BYTES_MAX {
            return Err(RequestError::UriTooLong);
        }
        let matched = self.paths.at(req.uri().path()).map_err(|_| RequestError::NotFound)?;
        let (routes, allow) = &self.entries[*matched.value];
        let route = routes
            .iter()
            .find(|r| r.method == req.method())
            .ok_or_else(|| RequestError::MethodNotAllowed { allow: allow.clone() })?;
        // Oversized bodies are refused on every route, read or not, before
        // the handler runs; uploads bound their own.
        if !route.own_body_limit {
            check_declared_size(req)?;
        }
        let params = Params(
            matched
                .params
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        );
        Ok((route, params))
    }
}
