//! A Redis that may evict keys (`maxmemory-policy` other than
//! `noeviction`) would silently drop sold bits, codes and idempotency
//! records: the engine binary refuses to start on it, exits non-zero and
//! says why on stderr, where an operator's process supervisor shows it.
//! (What the message says in full, and `STAMPEDE_REDIS_CHECKS=off`, are
//! checked in-process by `tests/api/redis_checks.rs`.)

use std::time::{Duration, Instant};

use crate::helpers::{EngineProcess, PrivateRedis, create_database, database_url, drop_database, unique_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_process_exits_on_an_evicting_redis() {
    let started = Instant::now();
    let redis = PrivateRedis::fresh(
        "faults-evicting",
        &["--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru"],
    );
    let url = redis.url();
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    let refusal =
        EngineProcess::expect_refusal(&db_url, &name, &[("REDIS_URL", url.as_str())], Duration::from_secs(30)).await;
    drop_database(&database_url(), &name).await;
    drop(redis);

    let (status, stderr) = refusal.expect("the engine refuses a Redis whose maxmemory-policy is allkeys-lru");
    println!(
        "faults::eviction_policy: exited after {:.2} s with {status}: {}",
        started.elapsed().as_secs_f64(),
        stderr.trim()
    );
    assert!(!status.success(), "exit status {status}");
    assert!(
        stderr.contains("maxmemory-policy") && stderr.contains("noeviction"),
        "the message names the setting and the value it needs: {stderr}"
    );
}
