//! A batch whose deadline passes while Postgres has not yet answered its
//! `BEGIN` (a slow link, a stalled server) must not leave its connection in
//! the pool inside that transaction: every later statement on it would run
//! in one transaction that never commits, holding its locks (the settlement
//! queue's claims, the flusher's batches).

use std::net::SocketAddr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::proxy::Proxy;
use crate::helpers::{database_url, unique_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_off_before_begin_is_answered_leaves_no_open_transaction() {
    let direct: PgConnectOptions = database_url().parse().expect("DATABASE_URL");
    let upstream: SocketAddr = tokio::net::lookup_host((direct.get_host(), direct.get_port()))
        .await
        .expect("resolve Postgres")
        .next()
        .expect("Postgres address");
    let proxy = Proxy::start(upstream).await;
    let name = unique_name();
    let options = direct
        .clone()
        .host("127.0.0.1")
        .port(proxy.addr.port())
        .application_name(&name);
    // One connection: the batch's and every later statement's. Not pinged
    // when acquired, so the delay falls on the batch's `BEGIN`.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .expect("pool through the proxy");

    proxy.set_latency(Duration::from_millis(400));
    let deadline = Duration::from_millis(200);
    let result = stampede::postgres::commit_batch(&pool, deadline, &(), |tx, _| {
        Box::pin(async move { sqlx::query("SELECT 1").execute(tx).await.map(|_| ()) })
    })
    .await;
    assert!(
        matches!(result, Err(stampede::postgres::BatchError::Timeout(_))),
        "{result:?}"
    );
    proxy.set_latency(Duration::ZERO);
    proxy.wait_idle(Duration::from_secs(5)).await;

    // A later statement on the pool, then the sessions seen from outside:
    // none of the pool's is left inside a transaction.
    let watcher = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(direct)
        .await
        .expect("a direct connection");
    for _ in 0..3 {
        sqlx::query("SELECT 1")
            .execute(&pool)
            .await
            .expect("a statement after the batch");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let states: Vec<Option<String>> =
            sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE application_name = $1")
                .bind(&name)
                .fetch_all(&watcher)
                .await
                .expect("pg_stat_activity");
        assert!(
            states.iter().all(|s| s.as_deref() == Some("idle")),
            "the pool's sessions: {states:?}"
        );
    }
    pool.close().await;
    watcher.close().await;
}
