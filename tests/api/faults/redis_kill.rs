//! Redis `kill -9` under the mixed load, then a restart from its AOF
//! (`appendfsync always`): while it is down the engine answers 503 at once
//! (its health too); once it is back the engine serves again without a
//! restart of its own, every acknowledged effect is still there, the outbox
//! flushes and Postgres agrees with Redis.

use std::time::{Duration, Instant};

use hyper::StatusCode;

use super::{MACHINE, MIXED_LOAD_ENGINE, Mix, MixedLoad, check, create_products, print_figures, resolve};
use crate::helpers::{PrivateRedis, scaled, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_kill_9_and_restart_keep_every_acknowledged_effect() {
    let _machine = MACHINE.lock().await;
    let started = Instant::now();
    let mut redis = PrivateRedis::fresh("faults-kill", &[]);
    let url = redis.url();
    let mut settings = MIXED_LOAD_ENGINE.to_vec();
    settings.push(("REDIS_URL", url.as_str()));
    let app = spawn_app(&settings).await;
    let products = create_products(&app.http, app.addr, &[100_000, 100_000, 100_000, 40]).await;
    let load = MixedLoad::start(
        &app.http,
        app.addr,
        &products,
        Mix {
            buyers: 6,
            orderers: 4,
            players: 4,
            pause: Duration::ZERO,
        },
    );
    load.wait_acknowledged(200, Duration::from_secs(30), "before the kill")
        .await;
    let acknowledged_at_kill = load.acknowledged();

    redis.crash();
    let killed = Instant::now();
    let health = app.get("/health").await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", health.body);
    assert_eq!(health.body["redis"], "unreachable");
    // REDIS_UNAVAILABLE, or OVERLOADED when it queued behind calls waiting
    // for the dead Redis past the queue deadline.
    let refused = app.checkout("nobody", 999_999).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", refused.body);
    assert!(
        ["REDIS_UNAVAILABLE", "OVERLOADED"].contains(&refused.error_code()),
        "{:?}",
        refused.body
    );
    let refused_within = killed.elapsed();
    assert!(
        refused_within < scaled(Duration::from_secs(8)),
        "requests hung on a dead Redis"
    );
    load.wait_unavailable(20, Duration::from_secs(10), "while Redis is down")
        .await;
    let down_for = killed.elapsed();

    redis.restart();
    let restarted = Instant::now();
    load.wait_acknowledged(
        1,
        Duration::from_secs(30),
        "after the restart (the engine recovers by itself)",
    )
    .await;
    let recovered_in = restarted.elapsed();
    load.wait_acknowledged(200, Duration::from_secs(30), "after the restart")
        .await;
    let records = load.stop().await;
    let flushing = Instant::now();
    app.wait_flushed(Duration::from_secs(60)).await;
    let flushed_in = flushing.elapsed();
    let resolution = resolve(&app.http, app.addr, &records).await;
    let failures = check(&app, &products, &records, &resolution).await;

    println!(
        "faults::redis_kill: {acknowledged_at_kill} requests acknowledged before the kill; Redis down {:.2} s, a \
         request refused {:.0} ms after the kill; first acknowledgement {:.0} ms after the restart; outbox flushed \
         {:.0} ms after the load",
        down_for.as_secs_f64(),
        refused_within.as_secs_f64() * 1000.0,
        recovered_in.as_secs_f64() * 1000.0,
        flushed_in.as_secs_f64() * 1000.0,
    );
    print_figures("redis_kill", &records, &resolution);
    println!("faults::redis_kill: case took {:.1} s", started.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "invariants broken:\n{}", failures.join("\n"));
    app.finish().await;
    drop(redis);
}
