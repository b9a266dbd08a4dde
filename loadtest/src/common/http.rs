//! A minimal raw HTTP/1.1 keep-alive client.
//!
//! One `Conn` is one TCP connection owned by the task that uses it: no
//! connection task, no channel. A request is one `write_all` of a reused
//! buffer, then reads into a reused buffer until the response is complete.
//! Requests are sent strictly one after another (no pipelining), which is
//! what a virtual user does.
//!
//! Only what the engine sends is supported: a response framed by
//! `Content-Length` (chunked or unframed responses are an error, not a guess).
//! The driver runs on the machine it measures, so every request should cost
//! as little CPU as possible.

use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `Authorization: Bearer <key>` for every request without its own: the
/// engine's service key (`--api-key`), set once at start.
static API_KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub fn set_api_key(key: &str) {
    let _ = API_KEY.set(format!("Bearer {}", key.trim()));
}

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

/// The request method (only the ones the driver sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method(&'static str);

impl Method {
    pub const GET: Method = Method("GET");
    pub const POST: Method = Method("POST");

    pub fn as_str(self) -> &'static str {
        self.0
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

/// Initial size of the read buffer; an engine answer is a few hundred bytes.
const READ_BUF_BYTES: usize = 8 * 1024;
/// Free space guaranteed before each read.
const READ_CHUNK_BYTES: usize = 4 * 1024;
/// A response head larger than this is refused.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A response body larger than this is refused.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Headers parsed per response (the engine sends about five).
const MAX_HEADERS: usize = 32;

pub struct Conn {
    stream: TcpStream,
    /// Read buffer. A body is split off it without copying; once the caller
    /// drops the body, the next `reserve` reclaims the same allocation.
    buf: BytesMut,
    /// The bytes of the request being sent, rebuilt in place each time.
    req: Vec<u8>,
    /// Not reusable: the server said `Connection: close`, or the last
    /// exchange failed or was cancelled (timeout) half-way.
    closed: bool,
    /// Headers of the last complete response that a caller may ask about.
    last: Flags,
}

/// The few response headers the fault checks read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// `Retry-After` was present.
    pub retry_after: bool,
    /// `Idempotent-Replayed: true`: the answer of an earlier request.
    pub replayed: bool,
}

impl Conn {
    /// Opens a TCP connection (TCP_NODELAY).
    pub async fn connect(target: &Target, timeout: Duration) -> Result<Conn, String> {
        let connect = async {
            let stream = TcpStream::connect(target.addr)
                .await
                .map_err(|e| format!("connect {}: {e}", target.addr))?;
            stream.set_nodelay(true).map_err(|e| format!("set_nodelay: {e}"))?;
            Ok(Conn {
                stream,
                buf: BytesMut::with_capacity(READ_BUF_BYTES),
                req: Vec::with_capacity(256),
                closed: false,
                last: Flags::default(),
            })
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(result) => result,
            Err(_) => Err(format!("connect {}: timed out after {timeout:?}", target.addr)),
        }
    }

    /// The flags of the last complete response on this connection.
    pub fn last_flags(&self) -> Flags {
        self.last
    }

    /// True if the connection can no longer be used: the server asked to
    /// close it, an exchange failed, or the server closed it (or sent
    /// something unasked) while it was idle.
    pub fn is_closed(&self) -> bool {
        if self.closed {
            return true;
        }
        // Between two requests the server has nothing to say, so any read
        // readiness means EOF, an error or stray bytes. The readiness is what
        // the reactor already saw: no system call unless it is set.
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            // Readiness may be stale (the last read filled the buffer): look.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                match self.stream.try_read(&mut probe) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
                    // Ok(0): EOF; Ok(_): bytes nobody asked for; Err: reset.
                    _ => true,
                }
            }
        }
    }

    /// Sends one request and reads the whole body, bounded by `timeout`.
    pub async fn request(
        &mut self,
        target: &Target,
        method: Method,
        path_and_query: &str,
        timeout: Duration,
    ) -> Outcome {
        self.request_with(target, method, path_and_query, &[], b"", timeout)
            .await
    }

    /// As `request_with`, with the extra headers as preformatted lines
    /// (each ending in `\r\n`, e.g. `Content-Type: application/json\r\n`).
    pub async fn request_with_body(
        &mut self,
        target: &Target,
        method: Method,
        path_and_query: &str,
        headers: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Outcome {
        let pairs: Vec<(&str, &str)> = headers.split("\r\n").filter_map(|line| line.split_once(": ")).collect();
        self.request_with(target, method, path_and_query, &pairs, body, timeout)
            .await
    }

    /// A request with extra headers (`name: value`, no CR/LF) and a body.
    pub async fn request_with(
        &mut self,
        target: &Target,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Outcome {
        if !path_and_query.starts_with('/') || path_and_query.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Outcome::Transport(format!("bad request {path_and_query:?}: not an origin-form path"));
        }
        if headers
            .iter()
            .any(|(k, v)| k.bytes().chain(v.bytes()).any(|b| b == b'\r' || b == b'\n'))
        {
            return Outcome::Transport("bad header: CR or LF".into());
        }
        self.req.clear();
        self.req.extend_from_slice(method.as_str().as_bytes());
        self.req.push(b' ');
        self.req.extend_from_slice(path_and_query.as_bytes());
        self.req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        self.req.extend_from_slice(target.authority.as_bytes());
        if let Some(bearer) = API_KEY.get()
            && !headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        {
            self.req.extend_from_slice(b"\r\nAuthorization: ");
            self.req.extend_from_slice(bearer.as_bytes());
        }
        for (name, value) in headers {
            self.req.extend_from_slice(b"\r\n");
            self.req.extend_from_slice(name.as_bytes());
            self.req.extend_from_slice(b": ");
            self.req.extend_from_slice(value.as_bytes());
        }
        self.req.extend_from_slice(b"\r\nContent-Length: ");
        self.req.extend_from_slice(body.len().to_string().as_bytes());
        self.req.extend_from_slice(b"\r\n\r\n");
        self.req.extend_from_slice(body);

        let start = Instant::now();
        match tokio::time::timeout(timeout, self.exchange()).await {
            Ok(Ok((status, body))) => Outcome::Response {
                status,
                body,
                latency: start.elapsed(),
            },
            Ok(Err(e)) => Outcome::Transport(e),
            Err(_) => Outcome::Timeout,
        }
    }

    /// Writes `self.req` and reads one response. Leaves `closed` set unless
    /// the exchange completed and the server keeps the connection open.
    async fn exchange(&mut self) -> Result<(u16, Bytes), String> {
        if self.closed {
            return Err("connection closed".into());
        }
        // Cleared only on success: an error or a cancelled exchange (timeout)
        // leaves the connection in an unknown state.
        self.closed = true;
        // No pipelining: nothing may be left over from the previous answer.
        self.buf.clear();
        self.stream
            .write_all(&self.req)
            .await
            .map_err(|e| format!("send: {e}"))?;

        let mut head: Option<Head> = None;
        loop {
            if head.is_none() && !self.buf.is_empty() {
                head = parse_head(&self.buf)?;
                if head.is_none() && self.buf.len() > MAX_HEAD_BYTES {
                    return Err(format!("response head larger than {MAX_HEAD_BYTES} bytes"));
                }
            }
            if let Some(h) = &head
                && self.buf.len() >= h.head_len + h.body_len
            {
                self.buf.advance(h.head_len);
                let body = self.buf.split_to(h.body_len).freeze();
                // Bytes after the answer were not asked for (no pipelining):
                // the connection cannot be trusted any more.
                self.closed = h.close || !self.buf.is_empty();
                self.last = h.flags;
                return Ok((h.status, body));
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK_BYTES {
                // Reclaims the buffer when the previous body is gone.
                self.buf.reserve(READ_CHUNK_BYTES);
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| format!("receive: {e}"))?;
            if n == 0 {
                return Err(if self.buf.is_empty() {
                    "connection closed before the response".into()
                } else {
                    "connection closed in the middle of the response".into()
                });
            }
        }
    }
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the status line and headers, blank line included.
    pub head_len: usize,
    pub body_len: usize,
    /// The server closes the connection after this response.
    pub close: bool,
    pub flags: Flags,
}

/// Parses a response head at the start of `buf`. `Ok(None)`: incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad response head: {e}")),
    };
    let status = resp.code.ok_or("bad response head: no status")?;
    // HTTP/1.0 closes unless asked to keep alive; 1.1 keeps alive unless told to close.
    let http10 = resp.version == Some(0);
    let mut close = http10;
    let mut flags = Flags::default();
    let mut content_length: Option<usize> = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let len = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| format!("bad Content-Length {:?}", String::from_utf8_lossy(h.value)))?;
            if content_length.is_some_and(|prev| prev != len) {
                return Err("conflicting Content-Length headers".into());
            }
            content_length = Some(len);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!(
                "unsupported framing: Transfer-Encoding {:?}",
                String::from_utf8_lossy(h.value)
            ));
        } else if h.name.eq_ignore_ascii_case("retry-after") {
            flags.retry_after = true;
        } else if h.name.eq_ignore_ascii_case("idempotent-replayed") {
            flags.replayed = h.value.trim_ascii().eq_ignore_ascii_case(b"true");
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if http10 && token.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
    }
    let body_len = match (status, content_length) {
        (100..=199, _) => return Err(format!("unsupported framing: interim response {status}")),
        // Never a body, whatever the headers say.
        (204 | 304, _) => 0,
        (_, Some(len)) if len > MAX_BODY_BYTES => {
            return Err(format!("response body of {len} bytes is over {MAX_BODY_BYTES}"));
        }
        (_, Some(len)) => len,
        (_, None) => return Err(format!("unsupported framing: {status} response without Content-Length")),
    };
    Ok(Some(Head {
        status,
        head_len,
        body_len,
        close,
        flags,
    }))
}

/// Appends `value` percent-encoded for a query string (everything but RFC 3986 unreserved).
pub fn push_query_value(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
}

/// Percent-encodes a query-string value (everything but RFC 3986 unreserved).
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    push_query_value(&mut out, value);
    out
}

/// One answer, or why there was none.
#[derive(Debug)]
pub enum Answer {
    Reply {
        status: u16,
        /// The body as JSON (`Null` when it is not JSON).
        body: serde_json::Value,
        /// The body as it came.
        raw: Bytes,
        /// `Idempotent-Replayed: true`: the first answer of a keyed request.
        replayed: bool,
        latency: Duration,
    },
    /// No answer (a timeout, a connection that failed): whether the engine
    /// carried the request out is unknown.
    Lost(String),
}

impl Answer {
    pub fn status(&self) -> Option<u16> {
        match self {
            Answer::Reply { status, .. } => Some(*status),
            Answer::Lost(_) => None,
        }
    }

    /// `error.code` of an error body, or "".
    pub fn code(&self) -> &str {
        match self {
            Answer::Reply { body, .. } => body["error"]["code"].as_str().unwrap_or(""),
            Answer::Lost(_) => "",
        }
    }

    pub fn body(&self) -> &serde_json::Value {
        match self {
            Answer::Reply { body, .. } => body,
            Answer::Lost(_) => &serde_json::Value::Null,
        }
    }

    pub fn latency(&self) -> Option<Duration> {
        match self {
            Answer::Reply { latency, .. } => Some(*latency),
            Answer::Lost(_) => None,
        }
    }

    /// The engine may or may not have carried the request out: no answer,
    /// or a 503 other than a shed (`OVERLOADED`, `OUTBOX_FULL`: refused
    /// before anything was written). See the engine's docs/operations.md, "After a 503".
    pub fn outcome_unknown(&self) -> bool {
        match self {
            Answer::Lost(_) => true,
            Answer::Reply { status: 503, .. } => !self.shed(),
            Answer::Reply { .. } => false,
        }
    }

    /// 503 `OVERLOADED` or `OUTBOX_FULL`: not carried out.
    pub fn shed(&self) -> bool {
        self.status() == Some(503) && ["OVERLOADED", "OUTBOX_FULL"].contains(&self.code())
    }

    pub fn describe(&self) -> String {
        match self {
            Answer::Reply { status, body, .. } => format!("{status} {body}"),
            Answer::Lost(why) => format!("no answer: {why}"),
        }
    }
}

/// A keep-alive connection that sends every request once: a request whose
/// connection fails is an unknown outcome (`Answer::Lost`), never a retry.
/// It reconnects only before a request, when the connection is known to be
/// closed, so nothing was sent on it.
pub struct Client {
    target: Target,
    conn: Option<Conn>,
    timeout: Duration,
}

impl Client {
    pub fn new(target: &Target, timeout: Duration) -> Client {
        Client {
            target: target.clone(),
            conn: None,
            timeout,
        }
    }

    pub async fn call(&mut self, method: Method, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        if self.conn.as_ref().is_none_or(Conn::is_closed) {
            match Conn::connect(&self.target, self.timeout).await {
                Ok(conn) => self.conn = Some(conn),
                Err(e) => return Answer::Lost(e),
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return Answer::Lost("no connection".into());
        };
        match conn
            .request_with(&self.target, method, path, headers, body, self.timeout)
            .await
        {
            Outcome::Response { status, body, latency } => Answer::Reply {
                status,
                body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                raw: body,
                replayed: conn.last_flags().replayed,
                latency,
            },
            Outcome::Timeout => {
                self.conn = None;
                Answer::Lost(format!("no answer within {:?}", self.timeout))
            }
            Outcome::Transport(e) => {
                self.conn = None;
                Answer::Lost(e)
            }
        }
    }

    /// `call` with a JSON body (or none).
    pub async fn call_json(&mut self, method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.call(method, path, &all, body.as_bytes()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn encodes_reserved_characters() {
        assert_eq!(encode_query_value("lt-12"), "lt-12");
        assert_eq!(encode_query_value("a+b/c=="), "a%2Bb%2Fc%3D%3D");
        assert_eq!(encode_query_value("é "), "%C3%A9%20");
    }

    #[test]
    fn detects_port() {
        assert!(has_port("127.0.0.1:8080"));
        assert!(!has_port("localhost"));
        assert!(has_port("[::1]:80"));
        assert!(!has_port("[::1]"));
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\
date: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n{\"code\":1}\n";

    #[test]
    fn parses_a_complete_head() {
        let head = parse_head(OK).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.body_len, 11);
        assert_eq!(&OK[head.head_len..], b"{\"code\":1}\n");
        assert!(!head.close);
    }

    #[test]
    fn head_split_anywhere_is_incomplete_not_an_error() {
        let end = OK.len() - 11;
        for cut in 0..end {
            assert_eq!(parse_head(&OK[..cut]), Ok(None), "cut at {cut}");
        }
        // The head alone is enough to know the framing; the body may follow later.
        assert_eq!(parse_head(&OK[..end]).unwrap().unwrap().head_len, end);
    }

    #[test]
    fn connection_close_and_http10() {
        let close = b"HTTP/1.1 503 Service Unavailable\r\nConnection: keep-alive, Close\r\ncontent-length: 2\r\n\r\n{}";
        let head = parse_head(close).unwrap().unwrap();
        assert_eq!((head.status, head.body_len, head.close), (503, 2, true));
        let old = b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(parse_head(old).unwrap().unwrap().close);
        let old_ka = b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n";
        assert!(!parse_head(old_ka).unwrap().unwrap().close);
    }

    #[test]
    fn retry_after_and_replayed_flags() {
        let shed = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 2\r\n\r\n{}";
        let flags = parse_head(shed).unwrap().unwrap().flags;
        assert_eq!(
            flags,
            Flags {
                retry_after: true,
                replayed: false
            }
        );
        let replay = b"HTTP/1.1 200 OK\r\nIdempotent-Replayed: true\r\ncontent-length: 2\r\n\r\n{}";
        assert!(parse_head(replay).unwrap().unwrap().flags.replayed);
        assert_eq!(parse_head(OK).unwrap().unwrap().flags, Flags::default());
    }

    #[test]
    fn unsupported_framing_is_an_error() {
        let missing = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nhello";
        assert!(parse_head(missing).unwrap_err().contains("unsupported framing"));
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        assert!(parse_head(chunked).unwrap_err().contains("unsupported framing"));
        let bad = b"HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n";
        assert!(parse_head(bad).is_err());
        let twice = b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n";
        assert!(parse_head(twice).is_err());
        // 204 has no body even without Content-Length.
        let empty = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(parse_head(empty).unwrap().unwrap().body_len, 0);
    }

    /// A server on 127.0.0.1 that, per accepted connection, reads one request
    /// head per element of `answers` and writes that answer in the given pieces.
    async fn serve(answers: Vec<Vec<&'static [u8]>>) -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for pieces in answers {
                // Read up to the end of one request head.
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut chunk = [0u8; 1024];
                    let n = sock.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "client closed early");
                    seen.extend_from_slice(&chunk[..n]);
                }
                let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let req = String::from_utf8(seen.drain(..end).collect()).unwrap();
                assert!(req.starts_with("POST /x?a=1 HTTP/1.1\r\nHost: "), "{req}");
                assert!(req.ends_with("\r\nContent-Length: 0\r\n\r\n"), "{req}");
                for piece in pieces {
                    sock.write_all(piece).await.unwrap();
                    sock.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            // Dropping the socket closes the connection.
        });
        Target {
            addr,
            authority: addr.to_string(),
        }
    }

    async fn post(conn: &mut Conn, target: &Target) -> Result<(u16, Bytes), String> {
        match conn
            .request(target, Method::POST, "/x?a=1", Duration::from_secs(5))
            .await
        {
            Outcome::Response { status, body, .. } => Ok((status, body)),
            Outcome::Timeout => Err("timeout".into()),
            Outcome::Transport(e) => Err(e),
        }
    }

    #[tokio::test]
    async fn keep_alive_whole_and_split_responses() {
        let target = serve(vec![
            vec![OK],
            // Split inside the status line, the headers and the body.
            vec![&OK[..7], &OK[7..40], &OK[40..OK.len() - 4], &OK[OK.len() - 4..]],
            vec![OK],
        ])
        .await;
        let mut conn = Conn::connect(&target, Duration::from_secs(5)).await.unwrap();
        for _ in 0..3 {
            assert!(!conn.is_closed());
            let (status, body) = post(&mut conn, &target).await.unwrap();
            assert_eq!(status, 200);
            assert_eq!(&body[..], b"{\"code\":1}\n");
        }
        // The server has gone away: noticed while idle, before the next request.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(conn.is_closed());
    }

    #[tokio::test]
    async fn connection_close_marks_the_connection_closed() {
        const CLOSE: &[u8] = b"HTTP/1.1 409 Conflict\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}";
        let target = serve(vec![vec![CLOSE]]).await;
        let mut conn = Conn::connect(&target, Duration::from_secs(5)).await.unwrap();
        let (status, body) = post(&mut conn, &target).await.unwrap();
        assert_eq!((status, &body[..]), (409, &b"{}"[..]));
        assert!(conn.is_closed());
        assert!(post(&mut conn, &target).await.is_err());
    }

    #[tokio::test]
    async fn missing_content_length_is_a_transport_error() {
        const UNFRAMED: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nhello";
        let target = serve(vec![vec![UNFRAMED]]).await;
        let mut conn = Conn::connect(&target, Duration::from_secs(5)).await.unwrap();
        let err = post(&mut conn, &target).await.unwrap_err();
        assert!(err.contains("unsupported framing"), "{err}");
        assert!(conn.is_closed());
    }

    #[tokio::test]
    async fn eof_mid_response_is_an_error() {
        let target = serve(vec![vec![&OK[..OK.len() - 3]]]).await;
        let mut conn = Conn::connect(&target, Duration::from_secs(5)).await.unwrap();
        let err = post(&mut conn, &target).await.unwrap_err();
        assert!(err.contains("middle of the response"), "{err}");
    }
}
