//! A product split over several hash slots (`STAMPEDE_STOCK_SPLIT`): the
//! same rules as on one slot (no oversell, holds return their stock, the
//! buyer limit), with
//! `Σ available + Σ reserved + Σ sold + reserve + in transit = stock_total`
//! sampled while stock moves between buckets, transfers cut between their
//! steps finished by the sweeper, and a `kill -9` under load.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fred::interfaces::SortedSetsInterface;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use stampede::clock::Clock;
use stampede::orders::OrdersError;
use stampede::orders::domain::{BuyerId, ProductId};
use stampede::orders::lua::{self as orders_lua, GiveLimits, Given, MoveStep, Source, Taken};
use stampede::orders::split::{self, bucket_of, bucket_shard};
use stampede::redis::keyspace::Keyspace;

use crate::helpers::{HttpClient, TestApp, redis_client, send, spawn_app};
use crate::orders::{
    assert_invariant, counts, create_product, kill_9_under_order_load, order, product, reconcile_ok,
    statuses_in_postgres, transfers_in_transit, wait_released,
};

const SPLIT: (&str, &str) = ("STAMPEDE_STOCK_SPLIT", "3");
/// Each part has a shard of its own: more shards than parts, on one Redis
/// (whose default is 2) as on a cluster.
const SHARDS: (&str, &str) = ("STAMPEDE_OUTBOX_SHARDS", "8");

/// The split parts of a product as `GET /products/{id}` shows them:
/// (reserve, in transit, each bucket's (available, reserved, sold)).
fn parts(p: &Value) -> (i64, i64, Vec<(i64, i64, i64)>) {
    let split = &p["split"];
    let n = |v: &Value, f: &str| v[f].as_i64().unwrap_or_else(|| panic!("{f} in {p}"));
    let buckets = split["buckets"]
        .as_array()
        .unwrap_or_else(|| panic!("buckets in {p}"))
        .iter()
        .map(|b| (n(b, "available"), n(b, "reserved"), n(b, "sold")))
        .collect();
    (n(split, "reserve"), n(split, "in_transit"), buckets)
}

/// The invariant over every part: the totals add up, and so do the parts.
pub fn assert_split_invariant(p: &Value) {
    assert_invariant(p);
    let (_, available, reserved, sold) = counts(p);
    let (reserve, in_transit, buckets) = parts(p);
    assert!(reserve >= 0 && in_transit >= 0, "{p}");
    assert!(buckets.iter().all(|b| b.0 >= 0 && b.1 >= 0 && b.2 >= 0), "{p}");
    assert_eq!(
        buckets.iter().map(|b| b.0).sum::<i64>() + reserve + in_transit,
        available,
        "Σ available + reserve + in transit: {p}"
    );
    assert_eq!(buckets.iter().map(|b| b.1).sum::<i64>(), reserved, "Σ reserved: {p}");
    assert_eq!(buckets.iter().map(|b| b.2).sum::<i64>(), sold, "Σ sold: {p}");
}

/// Samples the product `every` while `running`, checking the invariant over
/// every part at each sample; returns (samples, reads answered 503 because
/// stock kept moving while they read).
pub fn sample_invariant(
    http: HttpClient,
    addr: std::net::SocketAddr,
    id: u64,
    every: Duration,
    running: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    tokio::spawn(async move {
        let (mut samples, mut moving) = (0, 0);
        while running.load(Ordering::SeqCst) {
            let reply = send(&http, addr, Method::GET, &format!("/products/{id}"), None)
                .await
                .expect("product read");
            match reply.status {
                StatusCode::OK => {
                    assert_split_invariant(&reply.body);
                    samples += 1;
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(reply.error_code(), "OVERLOADED", "{:?}", reply.body);
                    moving += 1;
                }
                other => panic!("product read answered {other}: {:?}", reply.body),
            }
            tokio::time::sleep(every).await;
        }
        (samples, moving)
    })
}

/// Samples the product through Redis every 2 ms while `running`, reading
/// every bucket, the reserve and the transfers in transit as the engine
/// does (`split::read`: each part once, then the parts' `moves` again, so a
/// read straddling a move between slots is discarded), and checks the
/// invariant at each sample; returns (samples, reads that kept seeing stock
/// move). It runs on a thread of its own, with its own connection, so the
/// storm of orders does not starve it; it has sampled once when this
/// returns.
async fn sample_redis(keys: Keyspace, id: u64, running: Arc<AtomicBool>) -> std::thread::JoinHandle<(usize, usize)> {
    let (ready, started) = tokio::sync::oneshot::channel();
    let sampler = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let redis = redis_client().await;
            let product = ProductId::new(id as i64).expect("id");
            let (mut samples, mut moving) = (0, 0);
            let mut ready = Some(ready);
            loop {
                match split::read(&redis, &keys, product).await {
                    Ok(Some(read)) => {
                        let (stock, parts) = (read.stock, read.parts.expect("split"));
                        assert!(parts.reserve >= 0 && parts.in_transit >= 0, "{parts:?}");
                        assert!(parts.buckets.iter().all(|b| b.available >= 0), "{parts:?}");
                        let available: i64 = parts.buckets.iter().map(|b| b.available).sum();
                        let reserved: i64 = parts.buckets.iter().map(|b| b.reserved).sum();
                        let sold: i64 = parts.buckets.iter().map(|b| b.sold).sum();
                        assert_eq!(
                            available + reserved + sold + parts.reserve + parts.in_transit,
                            stock.stock_total,
                            "Σ available + Σ reserved + Σ sold + reserve + in transit = stock_total: {parts:?}"
                        );
                        samples += 1;
                    }
                    Err(OrdersError::StockMoving) => moving += 1,
                    other => panic!("read: {other:?}"),
                }
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
                if !running.load(Ordering::SeqCst) {
                    return (samples, moving);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    });
    started.await.expect("the sampler read once");
    sampler
}

/// Transfers the product's buckets received (their receipts).
async fn transfers_received(app: &TestApp, id: u64) -> u64 {
    let product = ProductId::new(id as i64).expect("id");
    let mut received = 0;
    for bucket in 0..3 {
        let shard = bucket_shard(&app.ctx.keys, product, bucket);
        let n: u64 = app
            .redis
            .zcard(orders_lua::receipts_key(&app.ctx.keys, shard, product))
            .await
            .expect("ZCARD");
        received += n;
    }
    received
}

/// A buyer id of each bucket (of 3), for tests that place orders in a
/// chosen bucket.
fn buyers_by_bucket(prefix: &str) -> [String; 3] {
    let mut found: [Option<String>; 3] = [None, None, None];
    for i in 0.. {
        let name = format!("{prefix}{i}");
        let bucket = bucket_of(&BuyerId::parse(name.clone()).expect("buyer"), 3) as usize;
        found[bucket].get_or_insert(name);
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found.map(|b| b.expect("found"))
}

/// 500 concurrent orders on a product of stock 100 split in 3: exactly 100
/// sold, every other order `OUT_OF_STOCK`, the invariant over every part at
/// every sample during the run and after, Postgres equal to Redis. Refills
/// move at most 5 beyond what is lacking, so stock moves between the slots
/// throughout the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_five_hundred_concurrent_orders_sell_exactly_the_stock() {
    let app = spawn_app(&[SPLIT, SHARDS, ("STAMPEDE_STOCK_REFILL_MAX", "5")]).await;
    let id = create_product(&app, 100, 1999, 0).await;
    let created = product(&app, id).await;
    assert_split_invariant(&created);
    // A share each: buckets 1 and 2 by a transfer from the reserve, bucket
    // 0's stays in the reserve.
    assert_eq!(parts(&created), (34, 0, vec![(0, 0, 0), (33, 0, 0), (33, 0, 0)]));
    let running = Arc::new(AtomicBool::new(true));
    let sampler = sample_invariant(
        app.http.clone(),
        app.addr,
        id,
        Duration::from_millis(2),
        running.clone(),
    );
    let direct = sample_redis(app.ctx.keys.clone(), id, running.clone()).await;

    let storm = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..500 {
        let (http, addr) = (app.http.clone(), app.addr);
        tasks.push(tokio::spawn(async move {
            let body = json!({"product_id": id, "quantity": 1, "buyer_id": format!("user-{i}")}).to_string();
            send(&http, addr, Method::POST, "/orders", Some(&body))
                .await
                .expect("answer")
        }));
    }
    let (mut ok, mut out_of_stock) = (0, 0);
    for task in tasks {
        let reply = task.await.expect("task");
        match reply.status {
            StatusCode::OK => {
                assert_eq!(reply.body["status"], "completed");
                ok += 1;
            }
            StatusCode::CONFLICT => {
                assert_eq!(reply.error_code(), "OUT_OF_STOCK");
                out_of_stock += 1;
            }
            other => panic!("unexpected {other}: {:?}", reply.body),
        }
    }
    let storm = storm.elapsed();
    running.store(false, Ordering::SeqCst);
    let (samples, moving) = sampler.await.expect("sampler");
    let (direct_samples, direct_moving) = direct.join().expect("sampler");
    assert!(samples > 0 && direct_samples > 0, "the invariant was never sampled");
    assert_eq!((ok, out_of_stock), (100, 400), "exactly the stock succeeds");

    let p = product(&app, id).await;
    assert_split_invariant(&p);
    assert_eq!(counts(&p), (100, 0, 0, 100));
    let (reserve, in_transit, buckets) = parts(&p);
    assert_eq!((reserve, in_transit), (0, 0));
    println!(
        "500 orders in {storm:?}; sold per bucket {:?}; {} transfers; {samples} samples through the route ({moving} answered 503), \
         {direct_samples} through Redis ({direct_moving} saw stock moving {} times in a row)",
        buckets.iter().map(|b| b.2).collect::<Vec<_>>(),
        transfers_received(&app, id).await,
        stampede::orders::limits::STOCK_READ_TRIES_MAX
    );
    app.wait_flushed(Duration::from_secs(10)).await;
    assert_eq!(statuses_in_postgres(&app, id).await["completed"], (100, 100));
    reconcile_ok(&app).await;
    app.finish().await;
}

/// A new product's stock is shared out over the buckets; holds, cancels and
/// expiries return stock to the bucket the order took it from; buckets
/// refill from the reserve and then from each other; an order is refused
/// only when the stock left is less than it asks; a buyer's limit holds
/// across concurrent orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_holds_return_stock_to_their_bucket_and_limits_hold() {
    let app = spawn_app(&[SPLIT, SHARDS]).await;
    let [x0, x1, x2] = buyers_by_bucket("x");
    let id = create_product(&app, 30, 100, 3).await;
    let hold = |buyer: &str, quantity: i64, secs: i64| json!({"product_id": id, "quantity": quantity, "buyer_id": buyer, "hold_secs": secs});
    let check = |p: &Value, reserve: i64, buckets: [(i64, i64, i64); 3]| {
        assert_split_invariant(p);
        assert_eq!(parts(p), (reserve, 0, buckets.to_vec()), "{p}");
    };

    // Created with a share in each bucket but the head's, in the reserve.
    check(&product(&app, id).await, 10, [(0, 0, 0), (10, 0, 0), (10, 0, 0)]);
    let a = order(&app, &hold(&x1, 2, 60), None).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    check(&product(&app, id).await, 10, [(0, 0, 0), (8, 2, 0), (10, 0, 0)]);
    let a_id = a.body["id"].as_str().expect("id");
    let cancelled = app.post(&format!("/orders/{a_id}/cancel")).await;
    assert_eq!(cancelled.body["status"], "cancelled", "{:?}", cancelled.body);
    check(&product(&app, id).await, 10, [(0, 0, 0), (10, 0, 0), (10, 0, 0)]);

    // A hold of bucket 2 expires back into bucket 2.
    let b = order(&app, &hold(&x2, 3, 5), None).await;
    assert_eq!(b.status, StatusCode::OK, "{:?}", b.body);
    check(&product(&app, id).await, 10, [(0, 0, 0), (10, 0, 0), (7, 3, 0)]);
    app.clock.advance_ms(5_000);
    let p = wait_released(&app, id, Duration::from_secs(10)).await;
    check(&p, 10, [(0, 0, 0), (10, 0, 0), (10, 0, 0)]);
    let b_id = b.body["id"].as_str().expect("id");
    assert_eq!(app.get(&format!("/orders/{b_id}")).await.body["status"], "expired");

    // Bucket 0 draws ceil(10 / 3) = 4 from the reserve in its own call.
    let c = order(&app, &hold(&x0, 1, 60), None).await;
    check(&product(&app, id).await, 6, [(3, 1, 0), (10, 0, 0), (10, 0, 0)]);
    let c_id = c.body["id"].as_str().expect("id");
    let confirmed = app.post(&format!("/orders/{c_id}/confirm")).await;
    assert_eq!(confirmed.body["status"], "completed", "{:?}", confirmed.body);
    check(&product(&app, id).await, 6, [(3, 0, 1), (10, 0, 0), (10, 0, 0)]);

    // x1's cancelled hold no longer counts: 10 orders at once, exactly 3 go
    // through (the limit), all from bucket 1.
    let one = json!({"product_id": id, "quantity": 1, "buyer_id": x1});
    let replies = futures::future::join_all((0..10).map(|_| order(&app, &one, None))).await;
    let mut by_code: HashMap<String, usize> = HashMap::new();
    for reply in &replies {
        *by_code.entry(reply.error_code().to_owned()).or_default() += 1;
    }
    assert_eq!(by_code.get(""), Some(&3), "{by_code:?}");
    assert_eq!(by_code.get("BUYER_LIMIT_REACHED"), Some(&7), "{by_code:?}");
    check(&product(&app, id).await, 6, [(3, 0, 1), (7, 0, 3), (10, 0, 0)]);

    // A product without a limit: buckets gather from the reserve and the
    // other buckets, and an order is refused only when less is left than it
    // asks, wherever the stock is.
    let [y0, y1, y2] = buyers_by_bucket("y");
    let id = create_product(&app, 12, 100, 0).await;
    let buy = |buyer: &str, quantity: i64| json!({"product_id": id, "quantity": quantity, "buyer_id": buyer});
    check(&product(&app, id).await, 4, [(0, 0, 0), (4, 0, 0), (4, 0, 0)]);
    for (buyer, reserve, buckets) in [
        (&y1, 4, [(0, 0, 0), (3, 0, 1), (4, 0, 0)]),
        (&y2, 4, [(0, 0, 0), (3, 0, 1), (3, 0, 1)]),
        (&y0, 2, [(1, 0, 1), (3, 0, 1), (3, 0, 1)]),
    ] {
        assert_eq!(order(&app, &buy(buyer, 1), None).await.status, StatusCode::OK);
        check(&product(&app, id).await, reserve, buckets);
    }
    // Bucket 2 lacks 3 of 6: the reserve gives its 2, bucket 0 its 1.
    assert_eq!(order(&app, &buy(&y2, 6), None).await.status, StatusCode::OK);
    check(&product(&app, id).await, 0, [(0, 0, 1), (3, 0, 1), (0, 0, 7)]);
    // 3 left, all in bucket 1: 4 is refused (the 3 move to bucket 0 on the
    // way), 3 goes through, then nothing is left anywhere.
    let refused = order(&app, &buy(&y0, 4), None).await;
    assert_eq!(
        (refused.status, refused.error_code()),
        (StatusCode::CONFLICT, "OUT_OF_STOCK")
    );
    check(&product(&app, id).await, 0, [(3, 0, 1), (0, 0, 1), (0, 0, 7)]);
    assert_eq!(order(&app, &buy(&y0, 3), None).await.status, StatusCode::OK);
    assert_eq!(order(&app, &buy(&y1, 1), None).await.error_code(), "OUT_OF_STOCK");
    let p = product(&app, id).await;
    check(&p, 0, [(0, 0, 4), (0, 0, 1), (0, 0, 7)]);
    assert_eq!(counts(&p), (12, 0, 0, 12));

    // A restock goes to the reserve, and sells again.
    let restocked = app
        .admin(Method::POST, &format!("/products/{id}/stock"), Some(r#"{"add": 5}"#))
        .await;
    assert_eq!(restocked.status, StatusCode::OK, "{:?}", restocked.body);
    check(&restocked.body, 5, [(0, 0, 4), (0, 0, 1), (0, 0, 7)]);
    assert_eq!(order(&app, &buy(&y1, 5), None).await.status, StatusCode::OK);
    assert_eq!(counts(&product(&app, id).await), (17, 0, 0, 17));

    app.wait_flushed(Duration::from_secs(10)).await;
    assert_eq!(statuses_in_postgres(&app, id).await["completed"], (6, 17));
    reconcile_ok(&app).await;
    app.finish().await;
}

/// A transfer cut between its steps (as a crash would leave it) is counted
/// in transit, on the giver's side, until the sweeper finishes it; one cut
/// after its take is not counted twice; finishing it again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_transfers_cut_between_their_steps_are_finished_by_the_sweeper() {
    let app = spawn_app(&[SPLIT, SHARDS, ("STAMPEDE_STOCK_TRANSIT_TIMEOUT_MS", "1000")]).await;
    let id = create_product(&app, 10, 100, 0).await;
    let (ctx, product_id) = (&app.ctx, ProductId::new(id as i64).expect("id"));
    let limits = GiveLimits {
        refill_max: 1_000,
        transit_max: 16,
    };
    let step = |transfer: &'static str, shard_of: u32, taker: u32| MoveStep {
        product: product_id,
        shard: bucket_shard(&ctx.keys, product_id, shard_of),
        transfer,
        taker,
        now_ms: app.clock.now_ms(),
    };
    let give = |transfer, giver, taker, need, source| async move {
        orders_lua::give(
            &ctx.executor,
            &ctx.keys,
            &step(transfer, giver, taker),
            need,
            source,
            limits,
        )
        .await
        .expect("give")
    };
    let p = product(&app, id).await;
    assert_eq!(parts(&p), (3, 0, vec![(0, 0, 0), (4, 0, 0), (3, 0, 0)]), "{p}");
    // Given by the reserve to bucket 2, never taken: a crash after step 1.
    assert_eq!(give("cut-1", 0, 2, 2, Source::Reserve).await, Given::Given(2));
    let p = product(&app, id).await;
    assert_split_invariant(&p);
    assert_eq!(
        parts(&p),
        (1, 2, vec![(0, 0, 0), (4, 0, 0), (3, 0, 0)]),
        "counted in transit: {p}"
    );
    // Given by bucket 1 to bucket 0 (half of its 4) and taken, never
    // dropped: a crash after step 2.
    assert_eq!(give("cut-2", 1, 0, 1, Source::Bucket).await, Given::Given(2));
    let taken = orders_lua::take(&ctx.executor, &ctx.keys, &step("cut-2", 0, 0), 2, app.clock.now_ms())
        .await
        .expect("take");
    assert_eq!(taken, Taken::Taken);
    let p = product(&app, id).await;
    assert_split_invariant(&p);
    assert_eq!(
        parts(&p),
        (1, 2, vec![(2, 0, 0), (2, 0, 0), (3, 0, 0)]),
        "not counted twice: {p}"
    );
    assert_eq!(transfers_in_transit(&app.redis, &app.prefix).await, 2);

    // Past the timeout the sweeper finishes both.
    app.clock.advance_ms(1_000);
    let started = Instant::now();
    while transfers_in_transit(&app.redis, &app.prefix).await > 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "transfers not swept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("swept in {:?}", started.elapsed());
    let p = product(&app, id).await;
    assert_split_invariant(&p);
    assert_eq!(parts(&p), (1, 0, vec![(2, 0, 0), (2, 0, 0), (5, 0, 0)]), "{p}");
    // A second take of a finished transfer changes nothing.
    let again = orders_lua::take(&ctx.executor, &ctx.keys, &step("cut-1", 2, 2), 2, app.clock.now_ms())
        .await
        .expect("take");
    assert_eq!(again, Taken::Taken);
    assert_eq!(parts(&product(&app, id).await).2[2], (5, 0, 0));
    // The swept stock sells.
    let buyer = buyers_by_bucket("z")[2].clone();
    let bought = order(&app, &json!({"product_id": id, "quantity": 5, "buyer_id": buyer}), None).await;
    assert_eq!(bought.status, StatusCode::OK, "{:?}", bought.body);
    assert_eq!(counts(&product(&app, id).await), (10, 5, 0, 5));
    app.wait_flushed(Duration::from_secs(10)).await;
    reconcile_ok(&app).await;
    app.finish().await;
}

/// `kill -9` under split order load: 50 buyers, all of one bucket, on a
/// product of 3,000 (1,000 a bucket), refills of at most 2 beyond what an
/// order lacks, so that once their bucket is dry stock moves to it all the
/// time: after the restarted engine's sweeper nothing is in transit, the
/// invariant holds, and no acknowledged order is lost (the checks of
/// `orders::kill_9_under_order_load_loses_no_order`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_kill_9_under_order_load_loses_no_order_and_nothing_stays_in_transit() {
    let buyers = (0..)
        .map(|i| format!("k{i}"))
        .filter(|b| bucket_of(&BuyerId::parse(b.clone()).expect("buyer"), 3) == 1)
        .take(50)
        .collect();
    kill_9_under_order_load(
        &[
            SPLIT,
            SHARDS,
            ("STAMPEDE_STOCK_REFILL_MAX", "2"),
            ("STAMPEDE_STOCK_TRANSIT_TIMEOUT_MS", "500"),
        ],
        3_000,
        buyers,
    )
    .await;
}
