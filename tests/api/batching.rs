//! The batched executor: requests that queue while a script call is in
//! flight ride the next call together, and each gets exactly the outcome it
//! would have got alone.

use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client as RedisClient;
use fred::interfaces::ClientLike;
use hyper::StatusCode;

use crate::helpers::{PrivateRedis, TestApp, scaled, spawn_app};

const TTL_SECS: i64 = 60;

/// Holds every script call in Redis (CLIENT PAUSE WRITE blocks EVALSHA), so
/// requests sent meanwhile queue in the engine in the order they are sent.
/// Only ever on a private Redis: a pause would stall every other test.
async fn pause_redis(redis: &RedisClient, ms: u64) {
    let _: String = redis
        .custom(
            fred::cmd!("CLIENT"),
            vec!["PAUSE".to_owned(), ms.to_string(), "WRITE".to_owned()],
        )
        .await
        .expect("CLIENT PAUSE");
}

async fn unpause_redis(redis: &RedisClient) {
    let _: String = redis
        .custom(fred::cmd!("CLIENT"), vec!["UNPAUSE"])
        .await
        .expect("CLIENT UNPAUSE");
}

/// Checks out one code and waits until its events are in Postgres, so the
/// outbox counter is back at zero before the next one (the bound is tiny).
async fn flushed_code(app: &TestApp, user: &str, item: u32) -> String {
    let code = app.code_for(user, item).await;
    app.wait_flushed(Duration::from_secs(10)).await;
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_of_mixed_requests_gives_each_its_solo_outcome() {
    // One call in flight per queue, so everything sent while the first call
    // is held in Redis goes out as one batch; a bound of 3 events puts the
    // fourth purchase of the batch over it.
    let redis = PrivateRedis::fresh("batching", &[]);
    let private = redis.client().await;
    let app = Arc::new(
        spawn_app(&[
            ("REDIS_URL", &redis.url()),
            ("STAMPEDE_SCRIPT_INFLIGHT", "1"),
            ("STAMPEDE_OUTBOX_MAX_EVENTS", "3"),
            ("PER_USER_LIMIT", "2"),
            ("CHECKOUT_TTL_SECS", &TTL_SECS.to_string()),
        ])
        .await,
    );
    // A code that will have expired by the time the batch runs.
    let expired = flushed_code(&app, "u3", 7).await;
    app.clock.advance_ms((TTL_SECS - 1) * 1000);
    let c1 = flushed_code(&app, "u1", 1).await;
    let c2 = flushed_code(&app, "u1", 2).await;
    let c3 = flushed_code(&app, "u1", 3).await;
    let c4 = flushed_code(&app, "u2", 2).await;
    let c5 = flushed_code(&app, "u2", 5).await;
    let c6 = flushed_code(&app, "u3", 6).await;
    app.clock.advance_ms(2000);
    let unknown = format!("{}-{}", app.sale_id(), "0".repeat(32));

    // In batch order, with the outcome each would get alone at that point.
    let batch: Vec<(&str, StatusCode, &str)> = vec![
        (&c1, StatusCode::OK, ""),
        (&c2, StatusCode::OK, ""),
        (&c3, StatusCode::FORBIDDEN, "USER_LIMIT_REACHED"),
        (&c4, StatusCode::CONFLICT, "ITEM_SOLD"),
        (&c5, StatusCode::OK, ""),
        (&c6, StatusCode::SERVICE_UNAVAILABLE, "OUTBOX_FULL"),
        (&expired, StatusCode::GONE, "CODE_EXPIRED"),
        (&c1, StatusCode::CONFLICT, "CODE_USED"),
        (&unknown, StatusCode::NOT_FOUND, "CODE_NOT_FOUND"),
    ];

    // Long enough for all the sends below; UNPAUSE ends it sooner.
    pause_redis(&private, scaled(Duration::from_secs(5)).as_millis() as u64).await;
    // The call that is in flight while the others queue.
    let first = {
        let app = app.clone();
        let unknown = unknown.clone();
        tokio::spawn(async move { app.purchase(&unknown).await })
    };
    tokio::time::sleep(scaled(Duration::from_millis(100))).await;
    let mut sent = Vec::new();
    for (code, _, _) in &batch {
        let app = app.clone();
        let code = code.to_string();
        sent.push(tokio::spawn(async move { app.purchase(&code).await }));
        // Sent one after another, so they queue in this order.
        tokio::time::sleep(scaled(Duration::from_millis(30))).await;
    }
    unpause_redis(&private).await;

    assert_eq!(first.await.expect("first").error_code(), "CODE_NOT_FOUND");
    for ((code, status, error), reply) in batch.iter().zip(sent) {
        let reply = reply.await.expect("purchase task");
        assert_eq!(
            (reply.status, reply.error_code()),
            (*status, *error),
            "code {code}: {:?}",
            reply.body
        );
    }

    // The three purchases rode one call: one outbox entry, three events.
    app.wait_flushed(Duration::from_secs(10)).await;
    let event_ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM purchases ORDER BY event_id")
        .fetch_all(&app.db)
        .await
        .expect("purchases");
    assert_eq!(event_ids.len(), 3, "{event_ids:?}");
    let entry = |id: &str| id.rsplit_once('-').map(|(entry, _)| entry.to_owned());
    assert!(
        event_ids.iter().all(|id| entry(id) == entry(&event_ids[0])),
        "one entry for the batch: {event_ids:?}"
    );
    let sold: i64 = private
        .custom(fred::cmd!("BITCOUNT"), vec![app.sale_key(app.sale_id(), ":sold")])
        .await
        .expect("BITCOUNT");
    assert_eq!(sold, 3);
    let app = Arc::into_inner(app).expect("no other handle");
    app.finish().await;
    let _ = private.quit().await;
}

#[tokio::test]
async fn a_code_can_be_looked_up_in_each_state() {
    let app = spawn_app(&[("CHECKOUT_TTL_SECS", &TTL_SECS.to_string())]).await;
    let issued = app.code_for("look", 1).await;
    let spent = app.code_for("look", 2).await;
    let expiring = app.code_for("look", 3).await;
    assert_eq!(app.purchase(&spent).await.status, StatusCode::OK);

    let reply = app.get(&format!("/codes/{issued}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["state"], "issued");
    assert_eq!(reply.body["item_id"], 1);
    assert!(reply.body.get("user_id").is_none(), "the user is not shown");
    assert!(reply.body.get("purchased_at").is_none());

    let reply = app.get(&format!("/codes/{spent}")).await;
    assert_eq!(reply.body["state"], "spent", "{:?}", reply.body);
    assert_eq!(reply.body["item_id"], 2);
    assert!(reply.body["purchased_at"].is_string());

    app.clock.advance_ms(TTL_SECS * 1000);
    let reply = app.get(&format!("/codes/{expiring}")).await;
    assert_eq!(reply.body["state"], "expired", "{:?}", reply.body);
    // A spent code stays spent after its expiry.
    assert_eq!(app.get(&format!("/codes/{spent}")).await.body["state"], "spent");

    let never = format!("{}-{}", app.sale_id(), "a".repeat(32));
    let reply = app.get(&format!("/codes/{never}")).await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (StatusCode::NOT_FOUND, "CODE_NOT_FOUND")
    );
    let reply = app.get("/codes/not-a-code").await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (StatusCode::BAD_REQUEST, "INVALID_CODE")
    );
    // Looking up changes nothing.
    assert_eq!(app.sold_in_redis(app.sale_id()).await, 1);
    app.finish().await;
}
