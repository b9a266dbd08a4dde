//! A Redis that may evict keys (`maxmemory-policy` other than
//! `noeviction`) would silently drop sold bits, stock and outbox entries:
//! the engine refuses to start on it, saying why, unless the checks are
//! turned off (`STAMPEDE_REDIS_CHECKS=off`, for managed services that hide
//! `CONFIG`).

use std::time::{Duration, Instant};

use crate::helpers::{EngineProcess, PrivateRedis, create_database, database_url, drop_database, unique_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_redis_is_refused_at_start() {
    let started = Instant::now();
    let redis = PrivateRedis::start(
        "evicting",
        &["--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru"],
    );
    let url = redis.url();
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;

    let refusal =
        EngineProcess::expect_refusal(&db_url, &name, &[("REDIS_URL", url.as_str())], Duration::from_secs(30)).await;
    let refused_in = started.elapsed();
    let unchecked = match &refusal {
        // Only worth trying once the refusal works.
        Ok(_) => Some(
            EngineProcess::start(
                &db_url,
                &name,
                "",
                &[("REDIS_URL", url.as_str()), ("STAMPEDE_REDIS_CHECKS", "off")],
            )
            .await,
        ),
        Err(_) => None,
    };
    drop(unchecked);
    drop_database(&database_url(), &name).await;
    drop(redis);

    let (status, stderr) = refusal.expect("the engine refuses a Redis whose maxmemory-policy is allkeys-lru");
    println!(
        "faults::eviction_policy: refused in {:.2} s with {status}: {}; case took {:.1} s",
        refused_in.as_secs_f64(),
        stderr.trim(),
        started.elapsed().as_secs_f64()
    );
    assert!(!status.success(), "exit status {status}");
    assert!(
        stderr.contains("maxmemory-policy") && stderr.contains("noeviction"),
        "the message names the setting and the value it needs: {stderr}"
    );
}
