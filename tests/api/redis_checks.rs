//! Redis is checked at start: an eviction policy refuses to start (it would
//! delete the keys the guarantees rest on), a missing append-only file is a
//! warning that `/health` repeats, a disabled `CONFIG` is a warning, fewer
//! replicas than `STAMPEDE_REDIS_WAIT_REPLICAS` asks for is a warning, and
//! `STAMPEDE_REDIS_CHECKS=off` skips the checks.

use hyper::StatusCode;
use stampede::app::App;

use crate::helpers::{
    PrivateRedis, clock_at_sale_start, create_database, database_url, drop_database, engine_config, spawn_app,
    unique_name,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_policy_refuses_to_start() {
    let redis = PrivateRedis::fresh("redis-lru", &["--maxmemory-policy", "allkeys-lru"]);
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    let config = engine_config(&db_url, &name, &[("REDIS_URL", redis.url().as_str())]);
    let refused = App::build(config, clock_at_sale_start(3600)).await;
    let message = match refused {
        Ok(_) => panic!("the engine started under allkeys-lru"),
        Err(e) => e.to_string(),
    };
    println!("{message}");
    for says in [
        "maxmemory-policy",
        "allkeys-lru",
        "noeviction",
        "CONFIG SET maxmemory-policy noeviction",
        "redis.conf",
    ] {
        assert!(message.contains(says), "the message says {says:?}: {message}");
    }
    drop_database(&database_url(), &name).await;
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_append_only_file_it_starts_and_says_so() {
    let redis = PrivateRedis::fresh("redis-no-aof", &["--appendonly", "no"]);
    let app = spawn_app(&[("REDIS_URL", redis.url().as_str())]).await;
    let health = app.get("/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["redis_appendonly"], "no", "{:?}", health.body);
    let warnings = health.body["warnings"].as_array().expect("warnings");
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("appendonly"))),
        "{warnings:?}"
    );
    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    app.finish().await;
    drop(redis);

    // The recommended settings: no warning.
    let durable = PrivateRedis::fresh("redis-aof", &[]);
    let app = spawn_app(&[("REDIS_URL", durable.url().as_str())]).await;
    let health = app.get("/health").await;
    assert_eq!(
        (&health.body["redis_appendonly"], &health.body["redis_appendfsync"]),
        (&serde_json::json!("yes"), &serde_json::json!("always"))
    );
    assert_eq!(health.body["warnings"], serde_json::json!([]));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_config_command_is_a_warning() {
    let redis = PrivateRedis::fresh("redis-no-config", &["--rename-command", "CONFIG", ""]);
    let app = spawn_app(&[("REDIS_URL", redis.url().as_str())]).await;
    let health = app.get("/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["redis_appendonly"], "unknown", "{:?}", health.body);
    let warnings = health.body["warnings"].as_array().expect("warnings");
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("maxmemory-policy"))),
        "{warnings:?}"
    );
    app.finish().await;
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checks_can_be_switched_off() {
    let redis = PrivateRedis::fresh("redis-lru-unchecked", &["--maxmemory-policy", "allkeys-lru"]);
    let app = spawn_app(&[("REDIS_URL", redis.url().as_str()), ("STAMPEDE_REDIS_CHECKS", "off")]).await;
    let health = app.get("/health").await;
    assert_eq!(health.status, StatusCode::OK);
    let warnings = health.body["warnings"].as_array().expect("warnings");
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("not checked"))),
        "{warnings:?}"
    );
    app.finish().await;
    drop(redis);
}

/// With `WAIT 1` and no replica, every write would wait out the timeout and
/// answer 503: the engine says so at start and on `/health`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_more_replicas_than_there_are_is_a_warning() {
    let redis = PrivateRedis::fresh("redis-no-replica", &[]);
    let app = spawn_app(&[
        ("REDIS_URL", redis.url().as_str()),
        ("STAMPEDE_REDIS_WAIT_REPLICAS", "1"),
    ])
    .await;
    let health = app.get("/health").await;
    let warnings = health.body["warnings"].as_array().expect("warnings");
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .is_some_and(|w| w.contains("0 replica(s) connected") && w.contains("STAMPEDE_REDIS_WAIT_REPLICAS is 1"))),
        "{warnings:?}"
    );
    app.finish().await;
    drop(redis);
}
