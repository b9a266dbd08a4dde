//! A slow Redis link: 300 ms added each way by the proxy while the engine
//! waits at most 250 ms for a reply (`STAMPEDE_REDIS_COMMAND_TIMEOUT_MS`).
//! Calls past the timeout answer 503 without waiting longer, their commands
//! still reach Redis later (and may take effect), the clients find out
//! which did, and nothing is done twice.

use std::time::{Duration, Instant};

use super::proxy::Proxy;
use super::{MACHINE, MIXED_LOAD_ENGINE, Mix, MixedLoad, check, create_products, print_figures, quantile_ms, resolve};
use crate::helpers::{PrivateRedis, scaled, spawn_app};

const ADDED: Duration = Duration::from_millis(300);
const COMMAND_TIMEOUT_MS: &str = "250";
/// How long the link stays slow.
const SLOW_FOR: Duration = Duration::from_secs(2);
/// A 503 must come well before the engine's default 2 s wait.
const ANSWERED_WITHIN: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_redis_link_answers_503_past_the_command_timeout_and_doubles_nothing() {
    let _machine = MACHINE.lock().await;
    let started = Instant::now();
    let redis = PrivateRedis::fresh("faults-latency", &[]);
    let proxy = Proxy::start(redis.addr()).await;
    let url = proxy.redis_url();
    let mut settings = MIXED_LOAD_ENGINE.to_vec();
    settings.push(("REDIS_URL", url.as_str()));
    settings.push(("STAMPEDE_REDIS_COMMAND_TIMEOUT_MS", COMMAND_TIMEOUT_MS));
    let app = spawn_app(&settings).await;
    let products = create_products(&app.http, app.addr, &[100_000, 100_000, 100_000, 40]).await;
    let load = MixedLoad::start(
        &app.http,
        app.addr,
        &products,
        Mix {
            buyers: 4,
            orderers: 3,
            players: 3,
            pause: Duration::ZERO,
        },
    );
    load.wait_acknowledged(100, Duration::from_secs(30), "before the link slows down")
        .await;

    proxy.set_latency(ADDED);
    let slow = Instant::now();
    load.wait_unavailable(
        30,
        Duration::from_secs(20),
        "with 300 ms added each way and a 250 ms command timeout",
    )
    .await;
    tokio::time::sleep_until((slow + SLOW_FOR).into()).await;
    proxy.set_latency(Duration::ZERO);
    load.wait_acknowledged(100, Duration::from_secs(30), "once the link is fast again")
        .await;
    let records = load.stop().await;
    // Every late command has reached Redis before anything is looked up.
    proxy.wait_idle(Duration::from_secs(10)).await;
    app.wait_flushed(Duration::from_secs(60)).await;
    let resolution = resolve(&app.http, app.addr, &records).await;
    let failures = check(&app, &products, &records, &resolution).await;

    let mut latencies = records.unavailable_latencies.clone();
    let (p50, p99, max) = (
        quantile_ms(&mut latencies, 0.5),
        quantile_ms(&mut latencies, 0.99),
        quantile_ms(&mut latencies, 1.0),
    );
    println!(
        "faults::latency: {} ms added each way for {:.1} s, command timeout {COMMAND_TIMEOUT_MS} ms: {} calls \
         answered 503 after p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms",
        ADDED.as_millis(),
        SLOW_FOR.as_secs_f64(),
        records.unavailable_total(),
    );
    print_figures("latency", &records, &resolution);
    println!("faults::latency: case took {:.1} s", started.elapsed().as_secs_f64());
    assert!(
        records.unavailable.keys().all(|k| !k.contains("no answer")),
        "calls went unanswered: {:?}",
        records.unavailable
    );
    assert!(
        p99 < scaled(ANSWERED_WITHIN).as_secs_f64() * 1000.0,
        "503s took p99 {p99:.0} ms: the engine waited past its command timeout"
    );
    assert!(failures.is_empty(), "invariants broken:\n{}", failures.join("\n"));
    app.finish().await;
    drop(proxy);
    drop(redis);
}
