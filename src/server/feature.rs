//! The contract a feature implements. The wiring (`app`) lists the features
//! once; from that list it builds the router, loads the scripts, registers
//! the outbox sinks and the metrics, and starts the background tasks. A feature imports infrastructure
//! and this toolkit only, never `crate::app` and never another feature.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Route;
use crate::outbox::Sink;
use crate::redis::executor::BatchScript;
use crate::redis::lua::LuaScript;

pub trait Feature: Send + Sync + 'static {
    /// Names the feature in logs.
    fn name(&self) -> &'static str;

    /// Its routes. The handlers hold what they need (an `Arc` of the feature).
    fn routes(self: Arc<Self>) -> Vec<Route>;

    /// Its part of `GET /openapi.json`: every route, parameter, body,
    /// response and error code (a test checks none is missing).
    fn api(&self) -> utoipa::openapi::OpenApi;

    /// Its scripts called one request at a time (reads, admin steps),
    /// loaded at start so the first request does not pay for loading them.
    fn scripts(&self) -> Vec<&'static LuaScript> {
        Vec::new()
    }

    /// Its scripts called through the batched executor (every hot-path
    /// state change), registered with it and loaded at start.
    fn batch_scripts(&self) -> Vec<&'static BatchScript> {
        Vec::new()
    }

    /// Where its outbox events land in Postgres.
    fn sink(self: Arc<Self>) -> Option<Arc<dyn Sink>> {
        None
    }

    /// Registers its metrics of rare events at zero, at start, so that a
    /// dashboard or an alert on their rate reads 0 rather than "no data".
    fn register_metrics(&self) {}

    /// Its background work (expiring holds, running jobs), which must end
    /// when `shutdown` turns true. It turns true when shutdown begins, while
    /// in-flight requests may still be finishing, so that long-lived
    /// responses (event streams) can end.
    fn spawn_background(self: Arc<Self>, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let _ = shutdown;
        Vec::new()
    }
}
