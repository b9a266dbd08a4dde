//! Nothing a client was told succeeded is lost: not when the engine is
//! killed, not when Redis forgets its scripts. (Redis killed or cut off,
//! Postgres down: see the fault suite, `tests/api/faults/`.)

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fred::interfaces::ClientLike;
use hyper::StatusCode;

use crate::helpers::{
    EngineProcess, buy, create_database, database_url, delete_keys, drop_database, http_client, outbox_backlog,
    redis_client, spawn_app, unique_name, wait_for_acknowledged,
};

/// `kill -9` while the outbox holds entries (some delivered to the dead
/// consumer, some never read), then a restart as another consumer: Postgres
/// ends with exactly what Redis committed, every acknowledged purchase
/// included, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_with_unflushed_outbox_loses_nothing() {
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    let redis = redis_client().await;
    // A long linger keeps the first batch pending and the rest unread.
    let mut first = EngineProcess::start(&db_url, &name, "engine-a", &[("STAMPEDE_FLUSH_LINGER_MS", "10000")]).await;

    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let http = http_client();
    let mut buyers = Vec::new();
    for buyer in 0..100u32 {
        let (http, acknowledged, done, addr) = (http.clone(), acknowledged.clone(), done.clone(), first.addr);
        buyers.push(tokio::spawn(async move {
            for k in 0..10u32 {
                let item = buyer * 10 + k + 1;
                match buy(&http, addr, &format!("u{buyer}"), item).await {
                    Ok(reply) if reply.status == StatusCode::OK => {
                        acknowledged.lock().expect("lock").push(item);
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(reply) => panic!("purchase refused before the kill: {:?}", reply.body),
                    Err(_) => return, // the engine died under us: outcome unknown
                }
            }
        }));
    }
    wait_for_acknowledged(&done, 300, &buyers, "purchases").await;
    assert!(
        outbox_backlog(&redis, &name).await > 0,
        "outbox holds entries at the kill"
    );
    assert!(
        largest_outbox_entry(&redis, &name).await > 1,
        "some unflushed entries hold a batch of several events"
    );
    first.kill_9();
    for buyer in buyers {
        buyer.await.expect("buyer task");
    }
    let acknowledged: HashSet<u32> = acknowledged.lock().expect("lock").iter().copied().collect();

    let mut second = EngineProcess::start(&db_url, &name, "engine-b", &[("STAMPEDE_FLUSH_CLAIM_IDLE_MS", "500")]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while outbox_backlog(&redis, &name).await > 0 {
        assert!(Instant::now() < deadline, "outbox not drained after restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let sale: i64 = {
        let db = sqlx::PgPool::connect(&db_url).await.expect("db");
        let items: Vec<(i64, i64)> = sqlx::query_as("SELECT sale_id, item_id FROM purchases")
            .fetch_all(&db)
            .await
            .expect("purchases");
        let in_postgres: HashSet<u32> = items.iter().map(|(_, item)| *item as u32).collect();
        assert_eq!(in_postgres.len(), items.len(), "no purchase twice");
        assert!(
            acknowledged.is_subset(&in_postgres),
            "acknowledged purchases missing from Postgres: {:?}",
            acknowledged.difference(&in_postgres).collect::<Vec<_>>()
        );
        let sale = items.first().map(|(sale, _)| *sale).expect("some purchases");
        let sold_in_redis: i64 = redis
            .custom(
                fred::cmd!("BITCOUNT"),
                vec![format!(
                    "{name}:{{{}}}:sale:{sale}:sold",
                    sale as u64 % stampede::limits::OUTBOX_SHARDS
                )],
            )
            .await
            .expect("BITCOUNT");
        assert_eq!(
            sold_in_redis,
            items.len() as i64,
            "Postgres holds exactly what Redis committed"
        );
        let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM checkout_attempts WHERE outcome = 'OK'")
            .fetch_one(&db)
            .await
            .expect("attempts");
        assert!(attempts >= items.len() as i64);
        db.close().await;
        sale
    };
    assert!(sale > 0);
    assert!(second.terminate().success(), "SIGTERM exits 0");
    drop_database(&database_url(), &name).await;
    delete_keys(&redis, &name).await;
    let _ = redis.quit().await;
}

/// The most events one entry of any outbox shard of `prefix` holds (a
/// batched entry is `kind, values` pairs).
async fn largest_outbox_entry(redis: &fred::clients::Client, prefix: &str) -> usize {
    let mut largest = 0;
    for shard in 0..stampede::limits::OUTBOX_SHARDS {
        let entries: fred::types::Value = redis
            .custom(
                fred::cmd!("XRANGE"),
                vec![format!("{prefix}:{{{shard}}}:outbox"), "-".into(), "+".into()],
            )
            .await
            .expect("XRANGE");
        if let fred::types::Value::Array(entries) = entries {
            for entry in entries {
                if let fred::types::Value::Array(parts) = entry
                    && let Some(fred::types::Value::Array(fields)) = parts.get(1)
                {
                    largest = largest.max(fields.len() / 2);
                }
            }
        }
    }
    largest
}

/// SCRIPT FLUSH while buyers are buying: the engine reloads scripts on
/// NOSCRIPT and no client sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn script_cache_flush_mid_run_is_invisible_to_clients() {
    let app = Arc::new(spawn_app(&[]).await);
    let flusher = {
        let redis = redis_client().await;
        tokio::spawn(async move {
            for _ in 0..25 {
                let _: () = redis
                    .custom(fred::cmd!("SCRIPT"), vec!["FLUSH"])
                    .await
                    .expect("SCRIPT FLUSH");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut buyers = Vec::new();
    for buyer in 0..100u32 {
        let app = app.clone();
        buyers.push(tokio::spawn(async move {
            for k in 0..5u32 {
                let reply = buy(&app.http, app.addr, &format!("u{buyer}"), buyer * 5 + k + 1)
                    .await
                    .expect("answer");
                assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
            }
        }));
    }
    for buyer in buyers {
        buyer.await.expect("buyer");
    }
    flusher.await.expect("flusher");
    app.wait_flushed(Duration::from_secs(10)).await;
    assert_eq!(app.purchases_in_postgres().await, 500);
    Arc::into_inner(app).expect("done").finish().await;
}
