//! The engine on Redis Cluster: the outbox shards spread over the primaries
//! (shard i on primary i mod P, so consecutive sales land on different
//! primaries), the shard count recorded at first start and a later start
//! with another count refused, and what a moved slot does to a call.
//!
//! The spread test runs on the cluster of `REDIS_CLUSTER_URL` (or
//! `REDIS_URL` when that is a cluster URL): `scripts/test.sh` starts one.
//! The moved-slot test reshards, so it starts a private cluster of its own
//! (`services.sh cluster-start`, first port `STAMPEDE_TEST_CLUSTER_PORT`,
//! default 7541), and so does the migration test (that port + 10).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fred::clients::Client as RedisClient;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::config::Config as RedisConfig;
use hyper::StatusCode;
use stampede::redis::layout::{Primary, primaries};

use crate::helpers::{
    EngineProcess, TestApp, create_database, database_url, delete_keys, drop_database, redis_url, scaled, spawn_app,
    spawn_app_on, unique_name,
};
use crate::private_cluster::PrivateCluster;

/// A cluster the tests may share (never reshard, kill or flush it).
fn shared_cluster_url() -> String {
    if let Ok(url) = std::env::var("REDIS_CLUSTER_URL") {
        return url;
    }
    let url = redis_url();
    assert!(
        url.starts_with("redis-cluster://"),
        "these tests need a Redis Cluster: set REDIS_CLUSTER_URL (scripts/test.sh starts one with \
         `services.sh cluster-start`), or run the suite with REDIS_URL set to a cluster URL"
    );
    url
}

/// Which primary serves `key`.
fn primary_of<'a>(primaries: &'a [Primary], key: &str) -> &'a Primary {
    let slot = fred::util::redis_keyslot(key.as_bytes());
    primaries
        .iter()
        .find(|p| p.ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)))
        .expect("every slot is served")
}

/// A plain client of one node: it answers only for the slots it serves
/// (anything else is a MOVED error, not followed).
async fn node_client(primary: &Primary) -> RedisClient {
    let url = format!("redis://{}:{}", primary.server.host, primary.server.port);
    let client = RedisClient::new(RedisConfig::from_url(&url).expect("url"), None, None, None);
    client.init().await.expect("node connects");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_shards_spread_evenly_over_the_primaries() {
    let url = shared_cluster_url();
    let app = spawn_app(&[("REDIS_URL", url.as_str()), ("STAMPEDE_OUTBOX_SHARDS", "12")]).await;
    let keys = &app.ctx.keys;
    let primaries = primaries(&app.ctx.redis).await.expect("CLUSTER SLOTS");
    let nodes: Vec<RedisClient> = futures::future::join_all(primaries.iter().map(node_client)).await;
    assert_eq!(keys.shard_count(), 12);
    println!(
        "{} primaries; tags {:?}",
        primaries.len(),
        keys.shards().map(|s| keys.tag(s)).collect::<Vec<_>>()
    );

    // Shard i's outbox is on primary i mod P, where the flusher created it.
    let mut per_primary: HashMap<usize, usize> = HashMap::new();
    for shard in keys.shards() {
        let outbox = keys.outbox(shard);
        let index = primaries
            .iter()
            .position(|p| p == primary_of(&primaries, &outbox))
            .expect("a primary");
        assert_eq!(
            index as u64,
            shard.index() % primaries.len() as u64,
            "shard {shard:?}: {outbox}"
        );
        let there: u64 = nodes[index].exists(&outbox).await.expect("EXISTS on its node");
        assert_eq!(there, 1, "{outbox} is held by primary {index}");
        *per_primary.entry(index).or_default() += 1;
    }
    println!("outbox shards per primary: {per_primary:?}");
    assert!(
        per_primary.values().all(|n| *n == 12 / primaries.len()),
        "{per_primary:?}"
    );

    // Consecutive sales land on different primaries; a purchase writes its
    // sale's keys on the primary its shard names.
    let sale = app.sale_id();
    let owners: Vec<_> = (sale..sale + primaries.len() as u64)
        .map(|id| primary_of(&primaries, &app.sale_key(id, ":sold")).server.clone())
        .collect();
    let distinct: std::collections::HashSet<_> = owners.iter().collect();
    assert_eq!(distinct.len(), primaries.len(), "sales {sale}.. on {owners:?}");
    let code = app.code_for("spread-buyer", 1).await;
    assert_eq!(app.purchase(&code).await.status, StatusCode::OK);
    let sold = app.sale_key(sale, ":sold");
    let holder = primaries
        .iter()
        .position(|p| p == primary_of(&primaries, &sold))
        .expect("a primary");
    let there: u64 = nodes[holder].exists(&sold).await.expect("EXISTS");
    assert_eq!(there, 1, "{sold} on primary {holder}");
    for node in nodes {
        let _ = node.quit().await;
    }
    let prefix = app.prefix.clone();
    app.finish().await;
    // `finish` cleans up on REDIS_URL's server; this engine's keys are here.
    let client = RedisClient::new(RedisConfig::from_url(&url).expect("url"), None, None, None);
    client.init().await.expect("cluster connects");
    delete_keys(&client, &prefix).await;
    let _ = client.quit().await;
}

/// The shard count is recorded at the first start: the topology's default
/// when unset (2 on a standalone Redis, 8 on a cluster). A later start with
/// another count exits 2 saying what the record holds and what to do; one
/// with the setting unset takes the record's. On whatever Redis the suite
/// runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_another_shard_count_refuses_and_says_what_to_do() {
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    let redis = crate::helpers::redis_client().await;
    let mut first = EngineProcess::start(&db_url, &name, "", &[]).await;
    assert!(first.terminate().success(), "SIGTERM exits 0");
    let recorded = crate::helpers::engine_keys(&redis, &name).await.shard_count();
    let default = match crate::helpers::redis_url().starts_with("redis-cluster://") {
        true => 8,
        false => 2,
    };
    assert_eq!(
        recorded, default,
        "a first start without the setting records the topology's default"
    );

    let refusal = EngineProcess::expect_refusal(
        &db_url,
        &name,
        &[("STAMPEDE_OUTBOX_SHARDS", "12")],
        Duration::from_secs(30),
    )
    .await;
    let (status, stderr) = refusal.expect("a start with 12 shards over another recorded count refuses");
    println!("exited with {status}: {}", stderr.trim());
    assert_eq!(status.code(), Some(2), "a configuration error: {stderr}");
    for says in [
        "STAMPEDE_OUTBOX_SHARDS is 12",
        &format!("{recorded} outbox shards"),
        &format!("{name}:layout"),
        &format!("STAMPEDE_OUTBOX_SHARDS={recorded}"),
        "STAMPEDE_KEY_PREFIX",
    ] {
        assert!(stderr.contains(says), "the message says {says:?}: {stderr}");
    }
    // The recorded count still starts, named or not.
    let recorded_setting = recorded.to_string();
    for settings in [&[("STAMPEDE_OUTBOX_SHARDS", recorded_setting.as_str())][..], &[]] {
        let mut again = EngineProcess::start(&db_url, &name, "", settings).await;
        assert!(again.terminate().success());
    }
    assert_eq!(crate::helpers::engine_keys(&redis, &name).await.shard_count(), recorded);
    drop_database(&database_url(), &name).await;
    crate::helpers::delete_keys(&redis, &name).await;
    let _ = redis.quit().await;
}

/// A private cluster for a test that reshards, on the first port
/// (`STAMPEDE_TEST_CLUSTER_PORT`, default 7541) plus `offset`: each such
/// test has its own.
fn private_cluster(offset: u16) -> PrivateCluster {
    let port: u16 = std::env::var("STAMPEDE_TEST_CLUSTER_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(7541);
    PrivateCluster::start(port + offset, 0)
}

/// An engine on `cluster` (4 pooled clients) with a code checked out by
/// `user`, and where the current sale's slot is and may go.
struct SlotToMove {
    app: TestApp,
    code: String,
    /// The sale's sold bitmap: its slot is the one that moves.
    sold: String,
    slot: u16,
    from: u16,
    to: u16,
    ports: Vec<u16>,
}

async fn slot_to_move(cluster: &PrivateCluster, user: &str) -> SlotToMove {
    let app = spawn_app_on(
        &database_url(),
        &[("REDIS_URL", cluster.url.as_str()), ("STAMPEDE_REDIS_POOL", "4")],
    )
    .await;
    let sale = app.sale_id();
    let code = app.code_for(user, 1).await;
    let sold = app.sale_key(sale, ":sold");
    let slot = fred::util::redis_keyslot(sold.as_bytes());
    let ports: Vec<u16> = (cluster.port..cluster.port + 3).collect();
    let primaries = primaries(&app.ctx.redis).await.expect("slots");
    let from = primary_of(&primaries, &sold).server.port;
    let to = *ports.iter().find(|p| **p != from).expect("another primary");
    SlotToMove {
        app,
        code,
        sold,
        slot,
        from,
        to,
        ports,
    }
}

/// Moves `slot` with its keys from `from` to `to` (node ports), the way
/// `redis-cli --cluster reshard` does, one slot.
fn move_slot(cluster: &PrivateCluster, slot: u16, from: u16, to: u16, all: &[u16]) {
    migrate_slot_keys(cluster, slot, from, to);
    finish_slot_move(cluster, slot, from, to, all);
}

/// The first half of a slot's move: both nodes mark it (importing,
/// migrating) and every key of it goes to `to`. Until the move finishes,
/// `from` still owns the slot and answers a call on those keys `ASK`.
fn migrate_slot_keys(cluster: &PrivateCluster, slot: u16, from: u16, to: u16) {
    let cli = |port: u16, args: &[&str]| cluster.cli(port, args);
    let slot = slot.to_string();
    let from_id = cli(from, &["CLUSTER", "MYID"]);
    let to_id = cli(to, &["CLUSTER", "MYID"]);
    assert_eq!(cli(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]), "OK");
    assert_eq!(cli(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]), "OK");
    loop {
        let keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "1000"]);
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        if keys.is_empty() {
            break;
        }
        let port = to.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys);
        assert_eq!(cli(from, &args), "OK", "MIGRATE");
    }
}

/// The second half: every node learns that `to` owns the slot.
fn finish_slot_move(cluster: &PrivateCluster, slot: u16, from: u16, to: u16, all: &[u16]) {
    let cli = |port: u16, args: &[&str]| cluster.cli(port, args);
    let slot = slot.to_string();
    let to_id = cli(to, &["CLUSTER", "MYID"]);
    for node in [to, from].iter().chain(all.iter().filter(|p| **p != to && **p != from)) {
        assert_eq!(cli(*node, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]), "OK");
    }
}

/// fred does not follow MOVED under `max_command_attempts = 1` (its
/// redirect re-writes the command through the spent attempt counter): it
/// re-reads the slot map, then fails the call with an error it also gives a
/// call whose reply a dropped connection lost. The executor sends such a
/// call again; the call's mark (set when it runs) makes that safe. So after
/// a slot moves, every call lands at the first request, once: the purchase
/// is bought once, and the pooled clients that meet the move answer the
/// checkouts after it without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_slot_moves_calls_land_without_an_error() {
    let cluster = private_cluster(0);
    let SlotToMove {
        app,
        code,
        sold,
        slot,
        from,
        to,
        ports,
    } = slot_to_move(&cluster, "mover").await;
    move_slot(&cluster, slot, from, to, &ports);
    println!("moved slot {slot} of {sold} from :{from} to :{to}");

    let moved_at = Instant::now();
    let reply = app.purchase(&code).await;
    println!("purchase after the move: {} {:?}", reply.status, reply.body);
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let within = scaled(Duration::from_secs(15));
    let sold_count: i64 = loop {
        match app.ctx.redis.custom(fred::cmd!("BITCOUNT"), vec![sold.clone()]).await {
            Ok(count) => break count,
            Err(e) => {
                assert!(moved_at.elapsed() < within, "BITCOUNT still failing: {e}");
                println!("BITCOUNT after the move: {e}");
            }
        }
    };
    assert_eq!(sold_count, 1, "bought once");
    // More checkouts than pooled clients, on the moved slot: each client
    // that still routes by the old map meets MOVED, and none answers 503.
    for i in 0..20 {
        let reply = app.checkout(&format!("mover-{i}"), 2 + i).await;
        assert_eq!(reply.status, StatusCode::OK, "checkout {i}: {:?}", reply.body);
    }
    println!("all calls landed, the last {:?} after the move", moved_at.elapsed());
    app.finish().await;
    drop(cluster);
}

/// While a slot migrates, a call whose keys already went to the importing
/// node is answered `ASK` by the old one. fred, allowed one write per
/// command, fails it unrun, and ends that client's routing task for good;
/// the engine starts the task again. So calls during the migration answer
/// 503 and change nothing, and once the move finishes every pooled client
/// serves again (without the restart, each client that met an `ASK` would
/// time out every later call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_slot_migration_calls_fail_unrun_and_the_engine_serves_on() {
    let cluster = private_cluster(10);
    let SlotToMove {
        app,
        code,
        sold,
        slot,
        from,
        to,
        ports,
    } = slot_to_move(&cluster, "migrant").await;
    migrate_slot_keys(&cluster, slot, from, to);
    println!("slot {slot} of {sold} migrating from :{from} to :{to}");

    // Twice the pool's clients, so every one of them meets the migration.
    let mut landed = false;
    for _ in 0..8 {
        let reply = app.purchase(&code).await;
        println!("purchase while migrating: {} {:?}", reply.status, reply.body);
        if reply.status == StatusCode::OK {
            landed = true;
            break;
        }
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", reply.body);
    }
    finish_slot_move(&cluster, slot, from, to, &ports);
    let moved_at = Instant::now();
    let within = scaled(Duration::from_secs(15));
    while !landed {
        let reply = app.purchase(&code).await;
        println!("purchase after the move: {} {:?}", reply.status, reply.body);
        landed = reply.status == StatusCode::OK;
        if !landed {
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", reply.body);
            assert!(
                moved_at.elapsed() < within,
                "purchases still fail {:?} after the move",
                moved_at.elapsed()
            );
        }
    }
    // Bought once: none of the failed calls ran.
    let sold_count: i64 = loop {
        match app.ctx.redis.custom(fred::cmd!("BITCOUNT"), vec![sold.clone()]).await {
            Ok(count) => break count,
            Err(e) => {
                assert!(moved_at.elapsed() < within, "BITCOUNT still failing: {e}");
                println!("BITCOUNT after the move: {e}");
            }
        }
    };
    assert_eq!(sold_count, 1);
    // Every pooled client serves: more calls than clients, each landing.
    for i in 0..12 {
        let next = loop {
            let reply = app.checkout(&format!("migrant-{i}"), 2 + i).await;
            if reply.status == StatusCode::OK || moved_at.elapsed() > within {
                break reply;
            }
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", reply.body);
        };
        assert_eq!(next.status, StatusCode::OK, "{:?}", next.body);
    }
    println!("all calls land {:?} after the move", moved_at.elapsed());
    app.finish().await;
    drop(cluster);
}
