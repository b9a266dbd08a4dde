//! The builder of every Redis client the engine makes.

use std::time::{Duration, Instant};

use fred::clients::{Client, Pool};
use fred::interfaces::ClientLike;
use fred::types::config::{ClusterDiscoveryPolicy, Config as RedisConfig, ReconnectPolicy};
use fred::types::{Builder, ConnectHandle};

use crate::limits::{REDIS_ROUTER_RESTART_PAUSE_MAX, REDIS_ROUTER_RESTART_PAUSE_MIN};
use crate::telemetry;

/// The clients of every script call, state-changing read and flusher read.
///
/// A call is sent at most once: `max_command_attempts = 1`. fred's default
/// (3) writes again, after a reconnect, the commands that were written but
/// not answered when a connection closed, so a script that ran but whose
/// reply was lost would run twice (an order taking its stock twice, a buyer
/// told `CODE_USED` for their own purchase). With 1, such a command fails
/// with the connection error instead, and the request answers 503 with a way
/// to find out what happened. What else fred does, read in its 10.1 source,
/// is in ARCHITECTURE.md ("A call runs at most once").
///
/// On a cluster, fred learns a new topology from `CLUSTER SLOTS` when a
/// reply is `MOVED` and whenever a node's connection closes (it reconnects
/// through a cluster sync, retried on the reconnect policy until the slots'
/// owners answer). When a primary dies its replica is promoted after the
/// node timeout; until then the sync keeps failing on the dead node and
/// commands wait, up to the command timeout, then answer 503. Discovery uses
/// the cached routing table as well as the URL's nodes (`UseCache`): if the
/// dead primary is the URL's first node, any other known node answers.
pub fn builder(url: &str, command_timeout: Duration) -> Result<Builder, fred::error::Error> {
    let mut config = RedisConfig::from_url(url)?;
    if config.server.is_clustered() {
        config
            .server
            .set_cluster_discovery_policy(ClusterDiscoveryPolicy::UseCache)?;
    }
    let mut builder = Builder::from_config(config);
    builder
        .with_performance_config(|perf| perf.default_command_timeout = command_timeout)
        .with_connection_config(|conn| {
            conn.connection_timeout = command_timeout;
            // `CLUSTER SLOTS` during a sync: fred's 10 s default would hold
            // every command through a topology change on a hung node.
            conn.internal_command_timeout = command_timeout;
            conn.max_command_attempts = 1;
            // No unresponsive-connection checks (fred's default): they
            // close a slow connection and fail what is in flight on it,
            // turning a slow answer into an unknown outcome.
            conn.unresponsive = Default::default();
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    Ok(builder)
}

/// Connects every client of `pool` (as `Pool::init`) and keeps each one's
/// routing task running; see [`init`].
pub async fn init_pool(pool: &Pool) -> Result<(), fred::error::Error> {
    futures_util::future::try_join_all(pool.clients().iter().map(init)).await?;
    Ok(())
}

/// Connects `client` and keeps its routing task running.
///
/// fred ends a client's routing task for good on some errors, and nothing
/// starts it again: every later command then waits out its timeout. One
/// such error is an `ASK` redirection (a slot being migrated) met with no
/// write attempt left, which `max_command_attempts = 1` makes certain; a
/// cluster sync that fails past the reconnect policy is another. A
/// supervisor starts the task again after a pause. Nothing is resent by
/// this: the commands the old task held were failed to their callers, and
/// fred never writes a command whose caller timed out.
pub async fn init(client: &Client) -> Result<(), fred::error::Error> {
    let handle = client.init().await?;
    tokio::spawn(supervise(client.clone(), handle));
    Ok(())
}

async fn supervise(client: Client, mut handle: ConnectHandle) {
    let mut pause = REDIS_ROUTER_RESTART_PAUSE_MIN;
    loop {
        let started = Instant::now();
        match handle.await {
            // `QUIT`: closed on purpose.
            Ok(Ok(())) => return,
            Ok(Err(e)) if e.is_canceled() => return,
            Ok(Err(e)) => {
                tracing::warn!(client = %client.id(), error = %e, "a Redis client's router ended; starting it again")
            }
            Err(e) => {
                tracing::warn!(client = %client.id(), error = %e, "a Redis client's router failed; starting it again")
            }
        }
        telemetry::redis_router_restarted();
        // A router that served a while before ending starts again at once;
        // one that keeps ending backs off, so a broken setup cannot spin.
        if started.elapsed() > REDIS_ROUTER_RESTART_PAUSE_MAX * 4 {
            pause = REDIS_ROUTER_RESTART_PAUSE_MIN;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(REDIS_ROUTER_RESTART_PAUSE_MAX);
        handle = client.connect();
    }
}
