//! A minimal HTTP/1.1 keep-alive client on top of `hyper::client::conn::http1`.
//!
//! One `Conn` is one TCP connection; requests are sent strictly one after
//! another (no pipelining), which is what a virtual user does.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_LENGTH, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where the engine listens, resolved once.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// Value of the `Host` header (`host:port`).
    pub authority: String,
}

impl Target {
    /// Parses `http://host:port[/]` and resolves the host.
    pub async fn resolve(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("--url must start with http:// (got {url:?})"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(format!("--url has no host: {url:?}"));
        }
        let with_port = if has_port(authority) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(with_port.as_str())
            .await
            .map_err(|e| format!("cannot resolve {with_port}: {e}"))?
            .next()
            .ok_or_else(|| format!("{with_port} resolved to no address"))?;
        Ok(Target {
            addr,
            authority: authority.to_string(),
        })
    }
}

fn has_port(authority: &str) -> bool {
    match authority.rsplit_once(':') {
        // `[::1]:8080` has a port, `[::1]` does not.
        Some((_, port)) => !port.contains(']') && !port.is_empty(),
        None => false,
    }
}

/// What happened to one request.
#[derive(Debug)]
pub enum Outcome {
    /// A complete response (any status).
    Response {
        status: u16,
        body: Bytes,
        latency: Duration,
    },
    /// No complete response within the timeout; the connection is not reusable.
    Timeout,
    /// Connection-level failure; the connection is not reusable.
    Transport(String),
}

pub struct Conn {
    sender: SendRequest<Empty<Bytes>>,
}

impl Conn {
    /// Opens a TCP connection (TCP_NODELAY) and performs the HTTP/1 handshake.
    pub async fn connect(target: &Target, timeout: Duration) -> Result<Conn, String> {
        let connect = async {
            let stream = TcpStream::connect(target.addr)
                .await
                .map_err(|e| format!("connect {}: {e}", target.addr))?;
            stream.set_nodelay(true).map_err(|e| format!("set_nodelay: {e}"))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            // The connection task ends when the sender is dropped or the peer closes.
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Conn { sender })
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(result) => result,
            Err(_) => Err(format!("connect {}: timed out after {timeout:?}", target.addr)),
        }
    }

    /// True if the connection can no longer be used (peer closed it).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends one request and reads the whole body, bounded by `timeout`.
    pub async fn request(
        &mut self,
        target: &Target,
        method: Method,
        path_and_query: &str,
        timeout: Duration,
    ) -> Outcome {
        let req = match Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(HOST, target.authority.as_str())
            .header(CONTENT_LENGTH, "0")
            .body(Empty::<Bytes>::new())
        {
            Ok(req) => req,
            Err(e) => return Outcome::Transport(format!("bad request {path_and_query:?}: {e}")),
        };
        let start = Instant::now();
        let exchange = async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("connection not ready: {e}"))?;
            let resp = self.sender.send_request(req).await.map_err(|e| format!("send: {e}"))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok((status, body))) => Outcome::Response {
                status,
                body,
                latency: start.elapsed(),
            },
            Ok(Err(e)) => Outcome::Transport(e),
            Err(_) => Outcome::Timeout,
        }
    }
}

/// Percent-encodes a query-string value (everything but RFC 3986 unreserved).
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_reserved_characters() {
        assert_eq!(encode_query_value("lt-12"), "lt-12");
        assert_eq!(encode_query_value("a+b/c=="), "a%2Bb%2Fc%3D%3D");
    }

    #[test]
    fn detects_port() {
        assert!(has_port("127.0.0.1:8080"));
        assert!(!has_port("localhost"));
        assert!(has_port("[::1]:80"));
        assert!(!has_port("[::1]"));
    }
}
