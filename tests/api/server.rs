//! The HTTP server: graceful shutdown drains the outbox; bodies and request
//! heads are bounded in size and time.

use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{auth_line, scaled, spawn_app};

/// Shutdown stops accepting, finishes what is in flight and flushes the
/// outbox: Postgres holds every purchase when the engine returns, even with a
/// flusher that would otherwise linger.
#[tokio::test]
async fn graceful_shutdown_flushes_the_outbox() {
    let mut app = spawn_app(&[("STAMPEDE_FLUSH_LINGER_MS", "10000")]).await;
    for item in 1..=30 {
        let code = app.code_for(&format!("user-{}", item % 3), item).await;
        assert_eq!(app.purchase(&code).await.status, StatusCode::OK);
    }
    app.stop().await;
    assert_eq!(app.purchases_in_postgres().await, 30);
    let refused = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(app.addr)).await;
    assert!(matches!(refused, Ok(Err(_))), "listener closed after shutdown");
    app.finish().await;
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_413() {
    let app = spawn_app(&[]).await;
    let huge = format!(r#"{{"checkout_code": "{}"}}"#, "a".repeat(20 * 1024));
    let reply = app.request(Method::POST, "/purchase", Some(&huge)).await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "BODY_TOO_LARGE")
    );

    // Chunked, so no declared size: the limit still holds while reading.
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    let mut request = format!(
        "POST /purchase HTTP/1.1\r\nhost: x\r\n{}transfer-encoding: chunked\r\n\r\n",
        auth_line()
    )
    .into_bytes();
    for _ in 0..20 {
        request.extend_from_slice(b"400\r\n");
        request.extend_from_slice(&[b'a'; 1024]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&request).await.expect("send");
    let mut response = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut response))
        .await
        .expect("answer in time")
        .expect("read");
    let head = String::from_utf8_lossy(&response[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    app.finish().await;
}

/// A client that sends nothing, or trickles its headers, is cut off by the
/// header-read timeout instead of holding a connection forever.
#[tokio::test]
async fn slow_or_silent_clients_are_disconnected() {
    let app = spawn_app(&[("STAMPEDE_HEADER_READ_TIMEOUT_MS", "300")]).await;

    let started = Instant::now();
    let silent = TcpStream::connect(app.addr).await.expect("connect");
    assert_cut_off(silent, "silent").await;
    assert!(
        started.elapsed() < scaled(Duration::from_secs(2)),
        "silent client kept {:?}",
        started.elapsed()
    );

    // 50 bytes of headers at one byte per 50 ms would take 2.5 s (both
    // scaled alike on a slow machine).
    let started = Instant::now();
    let trickle = TcpStream::connect(app.addr).await.expect("connect");
    let (mut reader, mut writer) = trickle.into_split();
    let writing = tokio::spawn(async move {
        for byte in b"POST /checkout?user_id=u&id=1 HTTP/1.1\r\nhost: x\r\n\r\n" {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(scaled(Duration::from_millis(50))).await;
        }
    });
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(scaled(Duration::from_secs(5)), reader.read(&mut buf))
        .await
        .expect("trickling client is cut off");
    assert_closed_or_408(read, &buf, "trickle");
    assert!(
        started.elapsed() < scaled(Duration::from_secs(2)),
        "trickling client kept {:?}",
        started.elapsed()
    );
    writing.abort();
    // The engine still serves others.
    assert_eq!(app.get("/health").await.status, StatusCode::OK);
    app.finish().await;
}

async fn assert_cut_off(mut stream: TcpStream, who: &str) {
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{who} client still connected after 5 s"));
    assert_closed_or_408(read, &buf, who);
}

fn assert_closed_or_408(read: std::io::Result<usize>, buf: &[u8], who: &str) {
    match read {
        Ok(0) | Err(_) => {}
        Ok(n) => {
            let head = String::from_utf8_lossy(&buf[..n]);
            assert!(head.starts_with("HTTP/1.1 408"), "{who} client got {head}");
        }
    }
}
