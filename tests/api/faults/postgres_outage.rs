//! Postgres stopped for a minute under the mixed load: sales, orders and
//! wallet transactions go on (Redis decides them; the outbox holds their
//! events), purchases keep answering 200 fast, `/health` says degraded with
//! a backlog, and once Postgres is back the backlog drains with every
//! acknowledged purchase, order and transaction in Postgres exactly once.

use std::time::{Duration, Instant};

use hyper::StatusCode;

use super::{MACHINE, MIXED_LOAD_ENGINE, Mix, MixedLoad, check, create_products, print_figures, quantile_ms, resolve};
use crate::helpers::{PrivatePostgres, scaled, spawn_app_on};

const OUTAGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sales_go_on_while_postgres_is_down_for_a_minute() {
    let _machine = MACHINE.lock().await;
    let started = Instant::now();
    let mut postgres = PrivatePostgres::start("outage");
    let app = spawn_app_on(&postgres.server_url(), &MIXED_LOAD_ENGINE).await;
    let products = create_products(&app.http, app.addr, &[100_000, 100_000, 100_000, 40]).await;
    // A light load for the whole minute: the backlog grows, the CPUs stay
    // available to the others.
    let load = MixedLoad::start(
        &app.http,
        app.addr,
        &products,
        Mix {
            buyers: 3,
            orderers: 2,
            players: 2,
            pause: Duration::from_millis(20),
        },
    );
    load.wait_acknowledged(50, Duration::from_secs(30), "before the outage")
        .await;

    postgres.stop();
    let outage = Instant::now();
    let deadline = outage + Duration::from_secs(10);
    loop {
        let health = app.get("/health").await;
        if health.body["postgres"] == "unreachable" {
            assert_eq!(health.status, StatusCode::OK, "{:?}", health.body);
            assert_eq!(health.body["status"], "degraded");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/health did not notice Postgres is down: {:?}",
            health.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acknowledged_at_outage = load.acknowledged();
    tokio::time::sleep_until((outage + OUTAGE).into()).await;
    let health = app.get("/health").await;
    let backlog = health.body["outbox_backlog"].as_u64().unwrap_or(0);
    assert!(backlog > 0, "the outbox holds the outage's events: {:?}", health.body);
    let acknowledged_during = load.acknowledged() - acknowledged_at_outage;

    postgres.start_again();
    let back = Instant::now();
    let records = load.stop().await;
    app.wait_flushed(Duration::from_secs(120)).await;
    let drained_in = back.elapsed();

    let mut during: Vec<Duration> = records
        .purchase_latencies
        .iter()
        .filter(|(at, _)| *at >= outage && *at < back)
        .map(|(_, latency)| *latency)
        .collect();
    let purchases_during = during.len();
    let (p50, p99, max) = (
        quantile_ms(&mut during, 0.5),
        quantile_ms(&mut during, 0.99),
        quantile_ms(&mut during, 1.0),
    );
    let resolution = resolve(&app.http, app.addr, &records).await;
    let failures = check(&app, &products, &records, &resolution).await;
    println!(
        "faults::postgres_outage: Postgres down {:.1} s; {acknowledged_during} requests acknowledged meanwhile, \
         {purchases_during} purchases (p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms); backlog {backlog} \
         entries at the restart, drained {:.1} s after it",
        back.duration_since(outage).as_secs_f64(),
        drained_in.as_secs_f64(),
    );
    print_figures("postgres_outage", &records, &resolution);
    println!(
        "faults::postgres_outage: case took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(purchases_during > 0, "no purchase during the outage");
    assert_eq!(
        records.unavailable_total(),
        0,
        "requests refused while only Postgres was down: {:?}",
        records.unavailable
    );
    let bound = scaled(Duration::from_secs(1)).as_secs_f64() * 1000.0;
    assert!(p99 < bound, "purchases stalled on Postgres: p99 {p99:.1} ms");
    assert!(failures.is_empty(), "invariants broken:\n{}", failures.join("\n"));
    app.finish().await;
    drop(postgres);
}
