//! The faults themselves: the engine's own Redis connections killed, and
//! Redis killed with SIGKILL and started again from its AOF.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::args::FaultsArgs;
use super::conns;
use super::mixed::Load;

/// The address of the Redis of `url`, to find the engine's connections to it.
pub async fn redis_addr(url: &str) -> Result<std::net::SocketAddr, String> {
    let rest = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .rsplit('@')
        .next()
        .unwrap_or_default();
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let with_port = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:6379")
    };
    tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| format!("cannot resolve {with_port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{with_port} resolved to nothing"))
}

/// Kills the engine's Redis connections every 30 ms for `--secs`.
pub async fn drop_connections(
    args: &FaultsArgs,
    redis: &fred::prelude::Client,
    redis_at: std::net::SocketAddr,
    load: &Load,
) -> Result<Map<String, Value>, String> {
    let pid = args.engine_pid.ok_or("no --engine-pid")?;
    let started = Instant::now();
    let before = load.unavailable();
    let (mut rounds, mut killed) = (0u64, 0usize);
    while started.elapsed() < Duration::from_secs(args.secs) {
        let sockets = conns::engine_sockets(pid, redis_at)?;
        killed += conns::kill(redis, &sockets).await?;
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let unavailable = load.unavailable() - before;
    println!(
        "faults drop: {rounds} rounds over {:.1} s killed {killed} of the engine's Redis connections; {unavailable} \
         calls answered 503 or nothing meanwhile",
        started.elapsed().as_secs_f64()
    );
    let mut out = serde_json::Map::new();
    out.insert("kill_rounds".into(), json!(rounds));
    out.insert("connections_killed".into(), json!(killed));
    out.insert("unavailable_during_fault".into(), json!(unavailable));
    if killed == 0 {
        return Err("no connection of the engine was killed".into());
    }
    Ok(out)
}

/// SIGKILL to the Redis of `--redis-pidfile`, then `redis-server
/// --redis-conf` again once the engine has answered 503 a few times.
pub async fn kill_redis(args: &FaultsArgs, load: &Load) -> Result<Map<String, Value>, String> {
    let (Some(pidfile), Some(conf)) = (&args.redis_pidfile, &args.redis_conf) else {
        return Err("no --redis-pidfile / --redis-conf".into());
    };
    let pid = std::fs::read_to_string(pidfile)
        .map_err(|e| format!("{}: {e}", pidfile.display()))?
        .trim()
        .to_owned();
    let status = Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .map_err(|e| format!("kill: {e}"))?;
    if !status.success() {
        return Err(format!("kill -KILL {pid} failed"));
    }
    let killed = Instant::now();
    let refused = load.wait_unavailable(20, Duration::from_secs(10)).await;
    let down_for = killed.elapsed();
    let status = Command::new("redis-server")
        .arg(conf)
        .status()
        .map_err(|e| format!("redis-server {}: {e}", conf.display()))?;
    if !status.success() {
        return Err(format!("redis-server {} failed", conf.display()));
    }
    let restarted = Instant::now();
    let recovered = load.wait_acknowledged(1, Duration::from_secs(60)).await;
    let recovered_in = restarted.elapsed();
    println!(
        "faults kill: Redis (pid {pid}) down {:.2} s; first acknowledgement {:.0} ms after its restart",
        down_for.as_secs_f64(),
        recovered_in.as_secs_f64() * 1000.0
    );
    if !refused {
        return Err("fewer than 20 calls answered 503 in the 10 s Redis was down".into());
    }
    if !recovered {
        return Err("nothing acknowledged within 60 s of Redis's restart".into());
    }
    let mut out = serde_json::Map::new();
    out.insert("redis_down_secs".into(), json!(down_for.as_secs_f64()));
    out.insert("recovered_ms".into(), json!(recovered_in.as_secs_f64() * 1000.0));
    Ok(out)
}
