//! Baseline: the raw EVALSHA rate of the purchase script's shortest path
//! (unknown code), measured with `redis-benchmark` against the same Redis.
//! The script is the engine's batch form (`lua/batch/prologue.lua`, then
//! `purchase.lua`, then `lua/batch/epilogue.lua`, as the engine joins them)
//! called with a batch of one request.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fred::prelude::LuaInterface;
use tokio::process::Command;

const BENCH_TIMEOUT: Duration = Duration::from_secs(120);

pub struct BaselineConfig {
    pub redis_url: String,
    pub key_prefix: String,
    pub lua_dir: PathBuf,
    pub requests: u64,
    pub clients: u32,
}

pub struct Baseline {
    /// Requests/s reported by redis-benchmark, if it ran.
    pub evalsha_per_sec: Option<f64>,
    /// Why it did not run, or the exact command that ran.
    pub note: String,
}

impl Baseline {
    fn skipped(note: impl Into<String>) -> Baseline {
        Baseline {
            evalsha_per_sec: None,
            note: note.into(),
        }
    }
}

/// Host, port and credentials of a `redis://[user[:pass]@]host[:port][/db]` URL.
#[derive(Debug, PartialEq, Eq)]
pub struct RedisAddr {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub db: Option<u32>,
}

pub fn parse_redis_url(url: &str) -> Result<RedisAddr, String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| format!("not a redis:// url: {url:?}"))?;
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, p),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((name, pass)) => ((!name.is_empty()).then(|| name.to_string()), Some(pass.to_string())),
            None => (None, Some(u.to_string())),
        },
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (
            h,
            p.parse::<u16>().map_err(|_| format!("bad port in redis url {url:?}"))?,
        ),
        _ => (hostport, 6379),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.is_empty() { "127.0.0.1" } else { host };
    let db_text = path.split('?').next().unwrap_or_default();
    let db = if db_text.is_empty() {
        None
    } else {
        Some(
            db_text
                .parse::<u32>()
                .map_err(|_| format!("bad db number in redis url {url:?}"))?,
        )
    };
    Ok(RedisAddr {
        host: host.to_string(),
        port,
        user,
        password,
        db,
    })
}

/// Extracts requests/s from `redis-benchmark -q --csv` output:
/// a header line, then `"test","rps","avg_latency_ms",...` with 7 numbers at the end.
pub fn parse_csv_rps(output: &str) -> Option<f64> {
    output
        .lines()
        .filter(|l| l.starts_with('"') && !l.starts_with("\"test\""))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            // Count from the end: the test name itself may contain commas.
            let rps = fields.len().checked_sub(7).map(|i| fields[i])?;
            rps.trim().trim_matches('"').parse::<f64>().ok()
        })
        .next_back()
}

pub async fn run(client: &fred::prelude::Client, cfg: &BaselineConfig) -> Baseline {
    let lua_path = cfg.lua_dir.join("purchase.lua");
    let mut script = String::new();
    for part in ["batch/prologue.lua", "purchase.lua", "batch/epilogue.lua"] {
        let path = cfg.lua_dir.join(part);
        match tokio::fs::read_to_string(&path).await {
            Ok(s) => script.push_str(&s),
            Err(e) => return Baseline::skipped(format!("cannot read {}: {e}", path.display())),
        }
    }
    let sha: String = match client.script_load(script).await {
        Ok(sha) => sha,
        Err(e) => return Baseline::skipped(format!("SCRIPT LOAD {}: {e}", lua_path.display())),
    };
    let addr = match parse_redis_url(&cfg.redis_url) {
        Ok(a) => a,
        Err(e) => return Baseline::skipped(e),
    };

    let p = &cfg.key_prefix;
    let mut args: Vec<String> = vec![
        "-h".into(),
        addr.host.clone(),
        "-p".into(),
        addr.port.to_string(),
        "-c".into(),
        cfg.clients.to_string(),
        "-n".into(),
        cfg.requests.to_string(),
        // Below 2^31: redis-benchmark reads -r as a C int, and a larger value
        // wraps to a negative one, which turns `__rand_int__` off (every call
        // then shares one mark and all but the first answer SEEN).
        "-r".into(),
        "2000000000".into(),
        "-q".into(),
        "--csv".into(),
    ];
    if let Some(db) = addr.db {
        args.extend(["--dbnum".into(), db.to_string()]);
    }
    let mut shown = args.join(" ");
    if let Some(pass) = &addr.password {
        if let Some(user) = &addr.user {
            args.extend(["--user".into(), user.clone()]);
        }
        args.extend(["-a".into(), pass.clone()]);
        shown.push_str(" -a ***");
    }
    let command: Vec<String> = vec![
        // The batch protocol (src/redis/executor.rs): the outbox and its
        // counter, then one request's code, sold bitmap and users hash, then
        // the call's mark (redis-benchmark puts a new random number below
        // 2*10^9 in place of each `__rand_int__`: two of them, so no two calls
        // of a run share a mark); a batch of 1, the
        // outbox bound, then now, the active sale, the code, then the mark's
        // lifetime (ms).
        "EVALSHA".into(),
        sha.clone(),
        "6".into(),
        format!("{p}:{{7}}:outbox-bench"),
        format!("{p}:{{7}}:outbox-bench:events"),
        format!("{p}:{{7}}:code:nonexistent"),
        format!("{p}:{{7}}:sale:0:sold"),
        format!("{p}:{{7}}:sale:0:users"),
        format!("{p}:{{7}}:call:__rand_int__:__rand_int__"),
        "1".into(),
        "1000000".into(),
        "0".into(),
        "0".into(),
        "nonexistent".into(),
        "20000".into(),
    ];
    shown = format!("redis-benchmark {shown} {}", command.join(" "));
    args.extend(command);

    let child = Command::new("redis-benchmark")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Baseline::skipped(
                "redis-benchmark not found on PATH (apt-get install redis-tools): baseline skipped",
            );
        }
        Err(e) => return Baseline::skipped(format!("cannot start redis-benchmark: {e}")),
    };
    let output = match tokio::time::timeout(BENCH_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return Baseline::skipped(format!("redis-benchmark failed: {e}")),
        Err(_) => {
            return Baseline::skipped(format!("redis-benchmark did not finish within {BENCH_TIMEOUT:?}"));
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    match parse_csv_rps(&stdout) {
        Some(rps) if output.status.success() => Baseline {
            evalsha_per_sec: Some(rps),
            note: shown,
        },
        _ => {
            let hint = if stderr.contains("Error from server") {
                " (redis-benchmark stops at the first error reply: the script's unknown-code path must return a normal reply, not an error)"
            } else {
                ""
            };
            Baseline::skipped(format!(
                "redis-benchmark exited with {}{hint}: {} {}",
                output.status,
                stderr.trim(),
                stdout.trim()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_benchmark_csv() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"EVALSHA abc 5 p:{7}:code:x a,b 0\",\"14925.37\",\"2.212\",\"0.120\",\"1.239\",\"6.111\",\"11.927\",\"20.319\"\n";
        assert_eq!(parse_csv_rps(out), Some(14925.37));
        assert_eq!(parse_csv_rps("\"test\",\"rps\"\n"), None);
        assert_eq!(parse_csv_rps(""), None);
    }

    #[test]
    fn parses_redis_urls() {
        let a = parse_redis_url("redis://127.0.0.1:6391").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.db), ("127.0.0.1", 6391, None));
        let a = parse_redis_url("redis://:secret@localhost/2").unwrap();
        assert_eq!(a.host, "localhost");
        assert_eq!(a.port, 6379);
        assert_eq!(a.password.as_deref(), Some("secret"));
        assert_eq!(a.user, None);
        assert_eq!(a.db, Some(2));
        let a = parse_redis_url("redis://bob:pw@[::1]:7000/").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 7000));
        assert_eq!(a.user.as_deref(), Some("bob"));
        assert!(parse_redis_url("http://x").is_err());
    }
}
