//! Bad input: each case is a 4xx JSON error with a stable code (or a closed
//! connection), never a 500 and never partial state.

use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::spawn_app;

#[tokio::test]
async fn bad_requests_get_stable_error_codes() {
    let app = spawn_app(&[]).await;
    let long_user = "u".repeat(65);
    let long_code = "1".repeat(65);
    let cases: Vec<(Method, String, Option<&str>, u16, &str)> = vec![
        (Method::POST, "/checkout?id=1".into(), None, 400, "MISSING_USER_ID"),
        (
            Method::POST,
            "/checkout?user_id=&id=1".into(),
            None,
            400,
            "MISSING_USER_ID",
        ),
        (
            Method::POST,
            format!("/checkout?user_id={long_user}&id=1"),
            None,
            400,
            "INVALID_USER_ID",
        ),
        (
            Method::POST,
            "/checkout?user_id=a%0Ab&id=1".into(),
            None,
            400,
            "INVALID_USER_ID",
        ),
        (Method::POST, "/checkout?user_id=u".into(), None, 400, "MISSING_ITEM_ID"),
        (
            Method::POST,
            "/checkout?user_id=u&id=".into(),
            None,
            400,
            "MISSING_ITEM_ID",
        ),
        (
            Method::POST,
            "/checkout?user_id=u&id=abc".into(),
            None,
            400,
            "INVALID_ITEM_ID",
        ),
        (
            Method::POST,
            "/checkout?user_id=u&id=0".into(),
            None,
            400,
            "INVALID_ITEM_ID",
        ),
        (
            Method::POST,
            "/checkout?user_id=u&id=-5".into(),
            None,
            400,
            "INVALID_ITEM_ID",
        ),
        (
            Method::POST,
            "/checkout?user_id=u&id=1.5".into(),
            None,
            400,
            "INVALID_ITEM_ID",
        ),
        (
            Method::POST,
            "/checkout?user_id=u&id=99999999999".into(),
            None,
            400,
            "INVALID_ITEM_ID",
        ),
        (
            Method::POST,
            "/checkout?user_id=u&id=10001".into(),
            None,
            404,
            "ITEM_NOT_FOUND",
        ),
        (Method::POST, "/purchase".into(), None, 400, "MISSING_CODE"),
        (Method::POST, "/purchase?code=".into(), None, 400, "MISSING_CODE"),
        (
            Method::POST,
            "/purchase?code=a1b2c3d4e5f6g7h8".into(),
            None,
            400,
            "INVALID_CODE",
        ),
        (
            Method::POST,
            "/purchase?code=CHK_219b6c54_5175".into(),
            None,
            400,
            "INVALID_CODE",
        ),
        (
            Method::POST,
            format!("/purchase?code={long_code}"),
            None,
            400,
            "INVALID_CODE",
        ),
        (
            Method::POST,
            format!("/purchase?code={}-{}", app.sale_id(), "0".repeat(32)),
            None,
            404,
            "CODE_NOT_FOUND",
        ),
        (
            Method::POST,
            format!("/purchase?code=1-{}", "0".repeat(32)),
            None,
            410,
            "SALE_OVER",
        ),
        (Method::POST, "/purchase".into(), Some("{not json"), 400, "INVALID_JSON"),
        (
            Method::POST,
            "/purchase".into(),
            Some(r#"{"checkout_code": ""}"#),
            400,
            "MISSING_CODE",
        ),
        (
            Method::POST,
            "/purchase".into(),
            Some(r#"{"checkout_code": 42}"#),
            400,
            "INVALID_JSON",
        ),
        (Method::POST, "/nope".into(), None, 404, "NOT_FOUND"),
        (
            Method::GET,
            "/checkout?user_id=u&id=1".into(),
            None,
            405,
            "METHOD_NOT_ALLOWED",
        ),
        (Method::DELETE, "/purchase".into(), None, 405, "METHOD_NOT_ALLOWED"),
        (Method::POST, "/health".into(), None, 405, "METHOD_NOT_ALLOWED"),
        (
            Method::POST,
            format!("/checkout?user_id=u&id=1&pad={}", "x".repeat(3000)),
            None,
            414,
            "URI_TOO_LONG",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let reply = app.request(method.clone(), &path, body).await;
        assert_eq!(
            (reply.status.as_u16(), reply.error_code()),
            (status, code),
            "{method} {path} {body:?}: {:?}",
            reply.body
        );
        assert!(reply.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        if status == 405 {
            // Allow comes from the route list: the methods the path has.
            let allow = reply.headers.get("allow").and_then(|v| v.to_str().ok());
            let want = if path == "/health" { "GET" } else { "POST" };
            assert_eq!(allow, Some(want), "{method} {path}");
        }
    }
    // None of those sold anything or opened a code that could be spent.
    assert_eq!(app.sold_in_redis(app.sale_id()).await, 0);
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
    let mut request = b"POST /purchase HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
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
        started.elapsed() < Duration::from_secs(2),
        "silent client kept {:?}",
        started.elapsed()
    );

    // 50 bytes of headers at one byte per 50 ms would take 2.5 s.
    let started = Instant::now();
    let trickle = TcpStream::connect(app.addr).await.expect("connect");
    let (mut reader, mut writer) = trickle.into_split();
    let writing = tokio::spawn(async move {
        for byte in b"POST /checkout?user_id=u&id=1 HTTP/1.1\r\nhost: x\r\n\r\n" {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read(&mut buf))
        .await
        .expect("trickling client is cut off");
    assert_closed_or_408(read, &buf, "trickle");
    assert!(
        started.elapsed() < Duration::from_secs(2),
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
