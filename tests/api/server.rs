//! Server lifecycle: graceful shutdown drains the outbox.

use std::time::Duration;

use hyper::StatusCode;

use crate::helpers::spawn_app;

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
