//! `POST /ingest` of one file as a multipart body streamed from disk.
//!
//! The driver never holds the file: it sends the request head and the part
//! header, then the file in chunks as the socket takes them, then the closing
//! boundary. The length is known up front (part header + file size + closing
//! boundary), so the body goes with a `Content-Length`, as `curl -F` sends it.
//! One request per connection: the answer comes after the engine committed
//! every row, and reading it concurrently with the sending notices an early
//! refusal (413, 400) without waiting for the rest of the body to be written.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use rand::RngExt;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use crate::common::http::{MAX_HEAD_BYTES, Target, parse_head};

/// Bytes read from the file per write. Large enough to keep system calls
/// rare, small enough to stay far from what the engine buffers.
const CHUNK_BYTES: usize = 512 * 1024;
/// Chunks read ahead of the socket.
const CHUNKS_AHEAD: usize = 2;
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// The multipart envelope around the file: one part, field `file`.
#[derive(Debug, Clone)]
pub struct Framing {
    pub boundary: String,
    /// The opening boundary and the part's headers, up to the file's first byte.
    pub preamble: Vec<u8>,
    /// After the file's last byte: the closing boundary.
    pub epilogue: Vec<u8>,
}

impl Framing {
    pub fn new(boundary: &str, filename: &str) -> Framing {
        let preamble = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: application/x-ndjson\r\n\r\n"
        );
        Framing {
            boundary: boundary.to_string(),
            preamble: preamble.into_bytes(),
            epilogue: format!("\r\n--{boundary}--\r\n").into_bytes(),
        }
    }

    pub fn content_length(&self, file_len: u64) -> u64 {
        self.preamble.len() as u64 + file_len + self.epilogue.len() as u64
    }

    /// The request head, the part's preamble included (one write).
    pub fn request_head(&self, authority: &str, path_and_query: &str, file_len: u64) -> Vec<u8> {
        let mut head = format!(
            "POST {path_and_query} HTTP/1.1\r\nHost: {authority}\r\n\
             Content-Type: multipart/form-data; boundary={}\r\nContent-Length: {}\r\n\r\n",
            self.boundary,
            self.content_length(file_len)
        )
        .into_bytes();
        head.extend_from_slice(&self.preamble);
        head
    }
}

/// 128 random bits: the delimiter (CRLF, `--`, boundary) cannot turn up in
/// the file by chance, so the file need not be searched for it.
pub fn random_boundary() -> String {
    format!("stampede-loadtest-{:032x}", rand::rng().random::<u128>())
}

/// The file name for the part header: the base name, with anything that
/// would need escaping inside the quoted header value replaced.
pub fn part_filename(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() { "upload.ndjson".into() } else { safe }
}

/// What came back from one upload.
#[derive(Debug)]
pub struct UploadOutcome {
    pub status: u16,
    pub body: Bytes,
    pub content_length: u64,
    /// First byte sent -> whole answer read.
    pub elapsed: Duration,
    /// First byte sent -> last byte of the body written; `None` when the
    /// answer came before the body was all sent.
    pub body_sent: Option<Duration>,
    /// Why the body was not sent in full, when it was not.
    pub send_error: Option<String>,
}

/// Uploads `file` to `path_and_query` and reads the answer, within `timeout`.
/// `Err` when there is no complete answer (connection failure, timeout).
pub async fn upload(
    target: &Target,
    path_and_query: &str,
    file: &Path,
    timeout: Duration,
) -> Result<UploadOutcome, String> {
    let file_len = std::fs::metadata(file)
        .map_err(|e| format!("cannot stat {}: {e}", file.display()))?
        .len();
    let framing = Framing::new(&random_boundary(), &part_filename(file));
    let head = framing.request_head(&target.authority, path_and_query, file_len);
    let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(target.addr))
        .await
        .map_err(|_| format!("connect {}: timed out", target.addr))?
        .map_err(|e| format!("connect {}: {e}", target.addr))?;
    stream.set_nodelay(true).map_err(|e| format!("set_nodelay: {e}"))?;
    let (mut reader, mut writer) = stream.into_split();

    let start = Instant::now();
    let send = send_body(&mut writer, &head, &framing, file, file_len);
    let receive = receive_answer(&mut reader);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(send, receive, deadline);
    let mut sent: Option<Result<Instant, String>> = None;
    let answer = loop {
        tokio::select! {
            result = &mut send, if sent.is_none() => sent = Some(result.map(|()| Instant::now())),
            answer = &mut receive => break answer,
            () = &mut deadline => {
                let how_far = match &sent {
                    Some(Ok(_)) => "the whole body was sent",
                    Some(Err(_)) => "sending failed",
                    None => "still sending",
                };
                return Err(format!("no complete answer within {timeout:?} ({how_far})"));
            }
        }
    };
    let elapsed = start.elapsed();
    let (status, body) = match (answer, &sent) {
        (Ok(answer), _) => answer,
        (Err(e), Some(Err(send_error))) => return Err(format!("{send_error}; then {e}")),
        (Err(e), _) => return Err(e),
    };
    let (body_sent, send_error) = match sent {
        Some(Ok(at)) => (Some(at - start), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, Some("the engine answered before the whole body was sent".into())),
    };
    Ok(UploadOutcome {
        status,
        body,
        content_length: framing.content_length(file_len),
        elapsed,
        body_sent,
        send_error,
    })
}

async fn send_body(
    writer: &mut OwnedWriteHalf,
    head: &[u8],
    framing: &Framing,
    file: &Path,
    file_len: u64,
) -> Result<(), String> {
    let mut chunks = read_ahead(file.to_path_buf());
    writer.write_all(head).await.map_err(|e| format!("send: {e}"))?;
    let mut sent = 0u64;
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk?;
        sent += chunk.len() as u64;
        // The announced Content-Length must stay true.
        if sent > file_len {
            return Err(format!("{} grew while it was sent", file.display()));
        }
        writer.write_all(&chunk).await.map_err(|e| format!("send: {e}"))?;
    }
    if sent != file_len {
        return Err(format!(
            "{} shrank while it was sent ({sent} of {file_len} bytes)",
            file.display()
        ));
    }
    writer
        .write_all(&framing.epilogue)
        .await
        .map_err(|e| format!("send: {e}"))?;
    writer.flush().await.map_err(|e| format!("send: {e}"))
}

/// Reads `file` in chunks on a blocking thread, a couple of chunks ahead of
/// the socket. Stops when the receiver is dropped (the upload ended early).
fn read_ahead(file: PathBuf) -> mpsc::Receiver<Result<Vec<u8>, String>> {
    let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut source = match File::open(&file) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(format!("cannot open {}: {e}", file.display())));
                return;
            }
        };
        loop {
            let mut chunk = vec![0u8; CHUNK_BYTES];
            let n = match source.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.blocking_send(Err(format!("cannot read {}: {e}", file.display())));
                    return;
                }
            };
            chunk.truncate(n);
            if tx.blocking_send(Ok(chunk)).is_err() {
                return;
            }
        }
    });
    rx
}

async fn receive_answer(reader: &mut OwnedReadHalf) -> Result<(u16, Bytes), String> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    loop {
        match parse_head(&buf)? {
            Some(head) if buf.len() >= head.head_len + head.body_len => {
                buf.advance(head.head_len);
                return Ok((head.status, buf.split_to(head.body_len).freeze()));
            }
            Some(_) => {}
            None if buf.len() > MAX_HEAD_BYTES => {
                return Err(format!("answer head larger than {MAX_HEAD_BYTES} bytes"));
            }
            None => {}
        }
        buf.reserve(READ_CHUNK_BYTES);
        let n = reader.read_buf(&mut buf).await.map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                "connection closed before the answer".into()
            } else {
                "connection closed in the middle of the answer".into()
            });
        }
    }
}

/// The 200 answer of `POST /ingest`.
#[derive(Debug, Clone, Deserialize)]
pub struct IngestReply {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: u64,
    pub total: u64,
    #[serde(default)]
    pub errors: Vec<LineError>,
    #[serde(default)]
    pub errors_truncated: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LineError {
    pub line: u64,
    pub code: String,
    pub message: String,
}

/// `code: message` of an error answer (`{"error":{"code","message"}}`), else the body.
pub fn error_text(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Answer {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        code: String,
        message: String,
    }
    match serde_json::from_slice::<Answer>(body) {
        Ok(a) => format!("{}: {}", a.error.code, a.error.message),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let shown: String = text.chars().take(200).collect();
            format!("body {shown:?}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn framing_and_content_length() {
        let f = Framing::new("B0", "p.ndjson");
        assert_eq!(
            f.preamble,
            b"--B0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.ndjson\"\r\n\
              Content-Type: application/x-ndjson\r\n\r\n"
                .to_vec()
        );
        assert_eq!(f.epilogue, b"\r\n--B0--\r\n".to_vec());
        assert_eq!(f.content_length(0), (f.preamble.len() + f.epilogue.len()) as u64);
        assert_eq!(
            f.content_length(1000),
            (f.preamble.len() + 1000 + f.epilogue.len()) as u64
        );
        let head = String::from_utf8(f.request_head("127.0.0.1:1", "/ingest", 1000)).unwrap();
        let length = f.content_length(1000);
        assert!(
            head.starts_with(&format!(
                "POST /ingest HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\
                 Content-Type: multipart/form-data; boundary=B0\r\nContent-Length: {length}\r\n\r\n--B0\r\n"
            )),
            "{head}"
        );
        assert!(head.ends_with("\r\n\r\n"));
    }

    #[test]
    fn boundaries_and_filenames() {
        let (a, b) = (random_boundary(), random_boundary());
        assert_ne!(a, b);
        assert_eq!(a.len(), "stampede-loadtest-".len() + 32);
        // RFC 2046: at most 70 characters.
        assert!(a.len() <= 70);
        assert_eq!(
            part_filename(Path::new("/x/purchases-10-seed1.ndjson")),
            "purchases-10-seed1.ndjson"
        );
        assert_eq!(part_filename(Path::new("a \"b\".ndjson")), "a__b_.ndjson");
        assert_eq!(part_filename(Path::new("/")), "upload.ndjson");
    }

    #[test]
    fn reads_replies_and_errors() {
        let reply: IngestReply = serde_json::from_str(
            r#"{"created":3,"updated":1,"unchanged":2,"rejected":1,"total":7,
                "errors":[{"line":4,"code":"INVALID_PRICE","message":"bad"}],"errors_truncated":false}"#,
        )
        .unwrap();
        assert_eq!((reply.created, reply.total, reply.errors[0].line), (3, 7, 4));
        assert_eq!(
            error_text(br#"{"error":{"code":"PAYLOAD_TOO_LARGE","message":"too big"}}"#),
            "PAYLOAD_TOO_LARGE: too big"
        );
        assert_eq!(error_text(b"oops"), "body \"oops\"");
    }

    fn temp_file(name: &str, len: usize) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("loadtest-upload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let content: Vec<u8> = (0..len).map(|i| b"abcdefghij\n"[i % 11]).collect();
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Reads one request: the head, then exactly Content-Length body bytes.
    async fn read_request(sock: &mut TcpStream) -> (String, Vec<u8>) {
        let mut seen = Vec::new();
        let end = loop {
            if let Some(pos) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            seen.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(seen[..end].to_vec()).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        let mut body = seen[end..].to_vec();
        while body.len() < length {
            let mut chunk = vec![0u8; 64 * 1024];
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client stopped after {} of {length} bytes", body.len());
            body.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(body.len(), length, "more bytes than Content-Length");
        (head, body)
    }

    const REPLY: &str =
        r#"{"created":1,"updated":0,"unchanged":0,"rejected":0,"total":1,"errors":[],"errors_truncated":false}"#;

    #[tokio::test]
    async fn streams_the_exact_body() {
        let path = temp_file("exact.ndjson", 3 * CHUNK_BYTES + 17);
        let expected = std::fs::read(&path).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let (head, body) = read_request(&mut sock).await;
            let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{REPLY}", REPLY.len());
            sock.write_all(answer.as_bytes()).await.unwrap();
            (head, body)
        });
        let target = Target {
            addr,
            authority: addr.to_string(),
        };
        let outcome = upload(&target, "/ingest", &path, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(outcome.status, 200);
        assert_eq!(&outcome.body[..], REPLY.as_bytes());
        assert!(
            outcome.body_sent.is_some() && outcome.send_error.is_none(),
            "{outcome:?}"
        );

        let (head, body) = server.await.unwrap();
        let _ = std::fs::remove_file(&path);
        let boundary = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Type: multipart/form-data; boundary="))
            .unwrap();
        let framing = Framing::new(boundary, "exact.ndjson");
        assert_eq!(outcome.content_length, body.len() as u64);
        assert_eq!(body[..framing.preamble.len()], framing.preamble[..]);
        assert_eq!(
            body[framing.preamble.len()..body.len() - framing.epilogue.len()],
            expected[..]
        );
        assert!(body.ends_with(&framing.epilogue));
    }

    #[tokio::test]
    async fn an_early_answer_is_read_while_sending() {
        // Larger than what the loopback socket buffers can absorb.
        let path = temp_file("early.ndjson", 64 << 20);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut chunk = [0u8; 4096];
            let _ = sock.read(&mut chunk).await.unwrap();
            let body = r#"{"error":{"code":"PAYLOAD_TOO_LARGE","message":"no"}}"#;
            let answer = format!(
                "HTTP/1.1 413 Payload Too Large\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(answer.as_bytes()).await.unwrap();
            // Keep the connection open without reading: the client must not wait.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let target = Target {
            addr,
            authority: addr.to_string(),
        };
        let outcome = upload(&target, "/ingest", &path, Duration::from_secs(4)).await.unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(outcome.status, 413);
        assert_eq!(error_text(&outcome.body), "PAYLOAD_TOO_LARGE: no");
        assert!(
            outcome.body_sent.is_none() && outcome.send_error.is_some(),
            "{outcome:?}"
        );
    }
}
