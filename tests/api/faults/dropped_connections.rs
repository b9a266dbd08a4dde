//! Redis connections dropped mid-call under the mixed load: `CLIENT KILL
//! TYPE normal` on the private Redis and the proxy cutting (and for a moment
//! refusing) every connection, in turns, every 30 ms. A call whose
//! connection went away has an unknown outcome: the engine must not send it
//! again by itself, must answer 503, and the client must be able to find out
//! what happened. Nothing may be done twice.

use std::time::{Duration, Instant};

use fred::interfaces::ClientLike;

use super::proxy::Proxy;
use super::{MACHINE, MIXED_LOAD_ENGINE, Mix, MixedLoad, check, create_products, print_figures, resolve};
use crate::helpers::{PrivateRedis, spawn_app};

/// How long the connections keep being dropped.
const FAULTS_FOR: Duration = Duration::from_secs(4);
/// The time between two drops.
const EVERY: Duration = Duration::from_millis(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_dropped_mid_call_do_nothing_twice() {
    let _machine = MACHINE.lock().await;
    let started = Instant::now();
    let redis = PrivateRedis::fresh("faults-drop", &[]);
    let proxy = Proxy::start(redis.addr()).await;
    let url = proxy.redis_url();
    let mut settings = MIXED_LOAD_ENGINE.to_vec();
    settings.push(("REDIS_URL", url.as_str()));
    let app = spawn_app(&settings).await;
    // Three products that do not sell out, one that does.
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
    load.wait_acknowledged(100, Duration::from_secs(30), "before the faults")
        .await;

    // Straight to Redis: CLIENT KILL skips the connection that sends it.
    let killer = fred::clients::Client::new(
        fred::types::config::Config::from_url(&redis.url()).expect("url"),
        None,
        None,
        None,
    );
    killer.init().await.expect("killer connects");
    let (mut kill_commands, mut killed, mut cut_rounds, mut cut) = (0u64, 0i64, 0u64, 0usize);
    let faults = Instant::now();
    let mut round = 0u64;
    while faults.elapsed() < FAULTS_FOR {
        round += 1;
        if round.is_multiple_of(2) {
            let n: i64 = killer
                .custom(fred::cmd!("CLIENT"), vec!["KILL", "TYPE", "normal"])
                .await
                .expect("CLIENT KILL");
            kill_commands += 1;
            killed += n;
        } else {
            cut_rounds += 1;
            cut += proxy.cut_all();
            if round % 10 == 1 {
                proxy.refuse_for(Duration::from_millis(100));
            }
        }
        tokio::time::sleep(EVERY).await;
    }
    let _ = killer.quit().await;
    let during = load.unavailable();
    load.wait_acknowledged(
        100,
        Duration::from_secs(30),
        "after the faults (the engine serves again by itself)",
    )
    .await;
    let records = load.stop().await;
    let load_secs = started.elapsed();
    app.wait_flushed(Duration::from_secs(60)).await;
    let resolution = resolve(&app.http, app.addr, &records).await;
    let failures = check(&app, &products, &records, &resolution).await;

    println!(
        "faults::dropped_connections: {:.1} s of faults: {kill_commands} CLIENT KILLs closed {killed} connections, \
         {cut_rounds} proxy cuts closed {cut} (counted {}), {} connections refused; {during} calls answered 503 \
         or nothing during the faults",
        FAULTS_FOR.as_secs_f64(),
        proxy.cut_count(),
        proxy.refused_count(),
    );
    print_figures("dropped_connections", &records, &resolution);
    println!(
        "faults::dropped_connections: {} of {} calls with an unknown outcome had taken effect; case took {:.1} s \
         (load {:.1} s)",
        resolution.took_effect() + records.wallet.iter().filter(|t| t.resent && t.replayed).count(),
        records.purchases_unknown.len()
            + records.orders_unknown.len()
            + records.wallet.iter().filter(|t| t.resent).count(),
        started.elapsed().as_secs_f64(),
        load_secs.as_secs_f64()
    );
    assert!(killed + cut as i64 > 0, "the faults closed no connection");
    assert!(failures.is_empty(), "invariants broken:\n{}", failures.join("\n"));
    app.finish().await;
    drop(proxy);
    drop(redis);
}
