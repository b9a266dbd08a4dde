//! The HTTP toolkit. It names no feature: features build on it.
//!
//! - this module: listeners with a deep accept backlog, a bound on open
//!   connections, HTTP/1.1 keep-alive with a header-read timeout, and graceful
//!   shutdown (stop accepting, let in-flight requests finish, bounded wait);
//! - `route`: routes as data and the router that composes them;
//! - `error`: the trait through which an error becomes a response;
//! - `http`: query, body and JSON helpers;
//! - `auth`: the admin guard;
//! - `apidoc`: the API document assembled from the features' parts;
//! - `feature`: the contract a feature implements.

pub mod apidoc;
pub mod auth;
pub mod error;
pub mod feature;
pub mod http;
pub mod route;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, watch};

pub use route::{Params, Route, Router};

use crate::config::Config;
use crate::limits::LISTEN_BACKLOG;
use crate::telemetry;

/// Bad requests that any route may get, before feature logic runs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("request body exceeds {} bytes", crate::limits::REQUEST_BODY_BYTES_MAX)]
    BodyTooLarge,
    #[error("request body not received in time")]
    BodyTimeout,
    #[error("request body could not be read")]
    BodyRead,
    #[error("request URI exceeds {} bytes", crate::limits::REQUEST_URI_BYTES_MAX)]
    UriTooLong,
    #[error("no such route")]
    NotFound,
    #[error("method not allowed; allowed: {allow}")]
    MethodNotAllowed { allow: String },
    #[error("this route needs `Authorization: Bearer <admin token>`")]
    Unauthorized,
    #[error("admin routes are disabled: STAMPEDE_ADMIN_TOKEN is not set")]
    AdminDisabled,
}

/// Binds with a listen backlog deep enough for a sale's opening burst.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves until `shutdown` resolves, then stops accepting and waits (bounded
/// by the configured grace) for in-flight requests.
pub async fn serve(
    listeners: Vec<TcpListener>,
    router: Arc<Router>,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = Arc::new(GracefulShutdown::new());
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accepting = tokio::task::JoinSet::new();
    for listener in listeners {
        accepting.spawn(accept_loop(
            listener,
            router.clone(),
            config.header_read_timeout,
            graceful.clone(),
            slots.clone(),
            stop_rx.clone(),
        ));
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    // Listeners are dropped as their loops end: no new connections.
    while accepting.join_next().await.is_some() {}
    let grace = config.shutdown_grace;
    // The accept loops are done, so this is the last reference.
    let Ok(graceful) = Arc::try_unwrap(graceful) else {
        tokio::time::sleep(grace).await;
        return;
    };
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("in-flight requests finished"),
        _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "shutdown grace elapsed; closing remaining connections"),
    }
}

async fn accept_loop(
    listener: TcpListener,
    router: Arc<Router>,
    header_read_timeout: std::time::Duration,
    graceful: Arc<GracefulShutdown>,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(crate::limits::REQUEST_HEAD_BYTES_MAX)
        .keep_alive(true);
    loop {
        // At the connection bound, stop accepting: the kernel backlog holds
        // the rest until a slot frees, rather than us growing without limit.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = service_fn(move |req| router.clone().route(req));
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        telemetry::connection_opened();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            telemetry::connection_closed();
            drop(permit);
        });
    }
}
