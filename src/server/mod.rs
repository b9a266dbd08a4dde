//! The HTTP toolkit. It names no feature: features build on it.
//!
//! - this module: listeners with a deep accept backlog, a bound on open
//!   connections (beyond it a quick canned 503), HTTP/1.1 keep-alive with a
//!   header-read timeout, and graceful shutdown (stop accepting, let
//!   in-flight requests finish, bounded wait);
//! - `route`: routes as data and the router that composes them;
//! - `error`: the trait through which an error becomes a response;
//! - `http`: query, body and JSON helpers;
//! - `access`: who may call each route, checked by the router;
//! - `auth`: the admin guard;
//! - `apidoc`: the API document assembled from the features' parts;
//! - `feature`: the contract a feature implements.

pub mod access;
pub mod apidoc;
pub mod auth;
pub mod error;
pub mod feature;
pub mod http;
pub mod route;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

pub use route::{Params, Route, Router};

use crate::config::Config;
use crate::limits::{
    CONNECTION_REJECT_DRAIN_BYTES_MAX, CONNECTION_REJECT_LINGER, CONNECTIONS_REJECTING_MAX, LISTEN_BACKLOG,
};
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
    #[error("this route needs `Authorization: Bearer <service key or player token>`")]
    CredentialMissing,
    // One answer whatever is wrong (an unknown key name, a wrong secret, a
    // bad signature, an expired token), so it tells nothing of which.
    #[error("the credential is not valid")]
    CredentialInvalid,
    #[error("the credential does not allow this route")]
    Forbidden,
}

/// Binds with a listen backlog deep enough for an opening burst of
/// connections. With `reuseport`, the socket takes `SO_REUSEPORT` before it
/// binds: several processes (of the same user) bind the same address, each
/// with its own accept queue, and the kernel spreads new connections over
/// them by a hash of the client's address and port. No process hands
/// connections to another, so one that stops takes only its own queue.
pub fn bind(addr: SocketAddr, reuseport: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuseport {
        set_reuseport(&socket)?;
    }
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[cfg(unix)]
fn set_reuseport(socket: &TcpSocket) -> std::io::Result<()> {
    socket.set_reuseport(true)
}

#[cfg(not(unix))]
fn set_reuseport(_: &TcpSocket) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "STAMPEDE_REUSEPORT needs SO_REUSEPORT (Linux, BSD)",
    ))
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
    let rejecting = Arc::new(Semaphore::new(CONNECTIONS_REJECTING_MAX));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accepting = tokio::task::JoinSet::new();
    for listener in listeners {
        accepting.spawn(accept_loop(
            listener,
            router.clone(),
            config.header_read_timeout,
            graceful.clone(),
            Slots {
                serving: slots.clone(),
                rejecting: rejecting.clone(),
            },
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

/// Room for connections: `serving` bounds the open ones; `rejecting` the
/// ones being turned away at that bound.
struct Slots {
    serving: Arc<Semaphore>,
    rejecting: Arc<Semaphore>,
}

/// What the next accepted connection will get.
enum Room {
    Serve(OwnedSemaphorePermit),
    TurnAway(OwnedSemaphorePermit),
}

/// The answer of a connection over the bound: written as is, without hyper,
/// so turning a connection away costs one write and no request parsing.
static OVERLOADED_RESPONSE: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let body = r#"{"error":{"code":"OVERLOADED","message":"the engine is at its connection bound; retry shortly"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

async fn accept_loop(
    listener: TcpListener,
    router: Arc<Router>,
    header_read_timeout: std::time::Duration,
    graceful: Arc<GracefulShutdown>,
    slots: Slots,
    mut stop: watch::Receiver<bool>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(crate::limits::REQUEST_HEAD_BYTES_MAX)
        .keep_alive(true)
        // One buffer per response, not head and body as two iovecs: under
        // load the server's CPU per request was 1.2 µs lower (median of 15
        // interleaved pairs, lower in 11; loadtest/RESULTS.md). Responses
        // are small; a large one is copied once more.
        .writev(false);
    loop {
        // Room for the next connection: a slot to serve it or, at the
        // connection bound, one to turn it away with a quick 503. With
        // neither, stop accepting: the kernel backlog holds the rest.
        let room = tokio::select! {
            biased;
            _ = stop.changed() => return,
            permit = slots.serving.clone().acquire_owned() => match permit {
                Ok(permit) => Room::Serve(permit),
                Err(_) => return,
            },
            permit = slots.rejecting.clone().acquire_owned() => match permit {
                Ok(permit) => Room::TurnAway(permit),
                Err(_) => return,
            },
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
        // A slot may have freed while this connection was awaited.
        let permit = match room {
            Room::Serve(permit) => permit,
            Room::TurnAway(turn_away) => match slots.serving.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    telemetry::connection_rejected();
                    tokio::spawn(reject(stream, turn_away));
                    continue;
                }
            },
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

/// Answers a connection over the bound with the canned 503, then closes it
/// gently: our side first (FIN after the answer), then reading what the
/// client sent until it closes too. Closing with its request unread would
/// send a reset, which can destroy the answer before the client reads it.
/// Bounded in time and bytes; the permit bounds how many run at once.
async fn reject(mut stream: TcpStream, permit: OwnedSemaphorePermit) {
    let _ = tokio::time::timeout(CONNECTION_REJECT_LINGER, async {
        stream.write_all(&OVERLOADED_RESPONSE).await?;
        stream.shutdown().await?;
        let mut buf = [0_u8; 4096];
        let mut drained = 0;
        while drained < CONNECTION_REJECT_DRAIN_BYTES_MAX {
            match stream.read(&mut buf).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    drop(permit);
}
