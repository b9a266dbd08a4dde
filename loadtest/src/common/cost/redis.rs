//! The Redis servers of a deployment, one by one: the server of a
//! `redis://` URL, or every primary of a `redis-cluster://` one (from
//! `CLUSTER SLOTS`), each asked for its own counters, pid and slow log.
//!
//! The slow log is reconfigured only through [`SlowlogGuard`], which a
//! caller gets by asking for it explicitly (`--slowlog-sample`: a Redis
//! that is the caller's to reconfigure) and which puts both settings back.

use std::collections::BTreeSet;

use fred::prelude::{Client, ClientLike, Server};
use fred::types::{ClusterHash, CustomCommand, Value};

use super::info::{self, NodeCounters};
use super::scripts::ScriptNames;
use super::slowlog::{self, Sample};
use crate::common::proc::cpu_split::parse_info_pid;
use crate::common::stores::connect_redis;

/// A connection that reaches each server of the deployment.
pub struct RedisNodes {
    client: Client,
    /// The cluster's primaries; empty for a single server.
    primaries: Vec<Server>,
    /// `host:port` of each server, for the report.
    names: Vec<String>,
}

/// `host:port` of a `redis://[user[:pass]@]host[:port][/db][?...]` URL.
fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}

/// The unique primaries of a `CLUSTER SLOTS` reply, in the order of their
/// first slot range.
fn primaries_of(reply: &Value) -> Result<Vec<(String, u16)>, String> {
    let bad = || format!("CLUSTER SLOTS: unexpected reply {reply:?}");
    let Value::Array(ranges) = reply else {
        return Err(bad());
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            return Err(bad());
        };
        let Some(Value::Array(node)) = fields.get(2) else {
            return Err(bad());
        };
        let host = node.first().and_then(Value::as_string).ok_or_else(bad)?;
        let port = node
            .get(1)
            .and_then(Value::as_i64)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(bad)?;
        if seen.insert((host.clone(), port)) {
            out.push((host, port));
        }
    }
    Ok(out)
}

/// A command by name, for any node (`ClusterHash::Random`): the server-wide
/// ones, `INFO`, `CONFIG`, `SLOWLOG`, which name no key to route by.
pub fn command(name: &'static str) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::Random, false)
}

/// The value of a `CONFIG GET name` reply (RESP2 pairs or a RESP3 map).
fn config_value(reply: Value) -> Option<String> {
    match reply {
        Value::Array(values) => values.into_iter().nth(1).and_then(|v| v.as_string()),
        Value::Map(map) => map.inner().into_iter().next().and_then(|(_, v)| v.as_string()),
        _ => None,
    }
}

impl RedisNodes {
    pub async fn connect(url: &str) -> Result<RedisNodes, String> {
        let client = connect_redis(url).await?;
        if !client.is_clustered() {
            return Ok(RedisNodes {
                client,
                primaries: Vec::new(),
                names: vec![authority(url)],
            });
        }
        let reply: Value = client
            .custom(command("CLUSTER"), vec!["SLOTS"])
            .await
            .map_err(|e| format!("CLUSTER SLOTS: {e}"))?;
        let found = primaries_of(&reply)?;
        if found.is_empty() {
            return Err("CLUSTER SLOTS names no primary".into());
        }
        Ok(RedisNodes {
            client,
            names: found.iter().map(|(h, p)| format!("{h}:{p}")).collect(),
            primaries: found.into_iter().map(|(h, p)| Server::new(h, p)).collect(),
        })
    }

    /// `host:port` of each server, in the order of every per-server answer.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// `name args` on server `i`.
    async fn on(&self, i: usize, name: &'static str, args: Vec<String>) -> Result<Value, String> {
        let sent = match self.primaries.get(i) {
            Some(server) => {
                self.client
                    .with_cluster_node(server.clone())
                    .custom(command(name), args)
                    .await
            }
            None => self.client.custom(command(name), args).await,
        };
        sent.map_err(|e| format!("{}: {name}: {e}", self.names[i]))
    }

    /// `name args` on every server, one after another.
    async fn each(&self, name: &'static str, args: &[&str]) -> Vec<Result<Value, String>> {
        let mut out = Vec::with_capacity(self.names.len());
        for i in 0..self.names.len() {
            out.push(self.on(i, name, args.iter().map(|a| a.to_string()).collect()).await);
        }
        out
    }

    /// `INFO cpu` and `INFO commandstats` of every server.
    pub async fn counters(&self) -> Vec<Result<NodeCounters, String>> {
        let mut out = Vec::with_capacity(self.names.len());
        for i in 0..self.names.len() {
            let mut text = String::new();
            let mut failed = None;
            for section in ["cpu", "commandstats"] {
                match self.on(i, "INFO", vec![section.into()]).await {
                    Ok(v) => text.push_str(&v.as_string().unwrap_or_default()),
                    Err(e) => failed = Some(e),
                }
            }
            out.push(match failed {
                Some(e) => Err(e),
                None => Ok(info::parse(&text)),
            });
        }
        out
    }

    /// The pid of every server, from `INFO server`.
    pub async fn pids(&self) -> Result<Vec<u32>, String> {
        let mut pids = Vec::new();
        for (reply, name) in self.each("INFO", &["server"]).await.into_iter().zip(&self.names) {
            let text = reply?.as_string().unwrap_or_default();
            pids.push(parse_info_pid(&text).ok_or_else(|| format!("{name}: INFO server has no process_id"))?);
        }
        Ok(pids)
    }

    /// Sets every server's slow log up for sampling: `max_len` entries,
    /// logging off until [`SlowlogGuard::start`], the log emptied.
    pub async fn slowlog(&self, max_len: u64) -> Result<SlowlogGuard<'_>, String> {
        let mut saved = Vec::new();
        for i in 0..self.names.len() {
            let mut values = Vec::new();
            for name in [SLOWER_THAN, MAX_LEN] {
                let reply = self.on(i, "CONFIG", vec!["GET".into(), name.into()]).await?;
                values.push(
                    config_value(reply).ok_or_else(|| format!("{}: CONFIG GET {name}: no value", self.names[i]))?,
                );
            }
            saved.push((values[0].clone(), values[1].clone()));
        }
        let guard = SlowlogGuard {
            nodes: self,
            saved,
            max_len,
        };
        guard
            .set_all(&[(MAX_LEN, &max_len.to_string()), (SLOWER_THAN, "-1")])
            .await?;
        for reply in self.each("SLOWLOG", &["RESET"]).await {
            reply?;
        }
        Ok(guard)
    }

    pub async fn quit(&self) {
        let _ = self.client.quit().await;
    }
}

const SLOWER_THAN: &str = "slowlog-log-slower-than";
const MAX_LEN: &str = "slowlog-max-len";

/// The calibration's script: `ARGV[1]` inner commands, each an ECHO of a
/// key-sized argument (the engine's inner commands carry a key and a few
/// short arguments; what the log copies of each is what it costs). No key,
/// so it runs on whichever primary it is sent to, and writes nothing.
const CALIBRATION_SCRIPT: &str = "for i = 1, tonumber(ARGV[1]) do redis.call('echo', ARGV[2]) end return 0";
const CALIBRATION_INNER: u64 = 200;
const CALIBRATION_ARG: &str = "stampede:{0}:sale:123456:users:calibration";
/// Runs with and without the log, alternated; the medians are compared.
const CALIBRATION_ROUNDS: usize = 9;

fn median(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0) as f64
}

/// The slow log of every server set up for sampling; [`restore`](Self::restore)
/// puts the settings it found back.
pub struct SlowlogGuard<'a> {
    nodes: &'a RedisNodes,
    /// (`slowlog-log-slower-than`, `slowlog-max-len`) of each server before.
    saved: Vec<(String, String)>,
    max_len: u64,
}

impl SlowlogGuard<'_> {
    async fn set_all(&self, settings: &[(&str, &str)]) -> Result<(), String> {
        for (name, value) in settings {
            for reply in self.nodes.each("CONFIG", &["SET", name, value]).await {
                reply?;
            }
        }
        Ok(())
    }

    /// What logging one inner command adds to its script's time, in µs:
    /// the calibration script timed (`INFO commandstats`) with the log off
    /// and on, on every server, before the phase. The log is emptied after.
    pub async fn calibrate(&self) -> Result<f64, String> {
        let mut per_server = Vec::new();
        for i in 0..self.nodes.names.len() {
            let (mut off, mut on) = (Vec::new(), Vec::new());
            for _ in 0..CALIBRATION_ROUNDS {
                off.push(self.timed_eval(i).await?);
                self.nodes
                    .on(i, "CONFIG", vec!["SET".into(), SLOWER_THAN.into(), "0".into()])
                    .await?;
                let timed = self.timed_eval(i).await;
                self.nodes
                    .on(i, "CONFIG", vec!["SET".into(), SLOWER_THAN.into(), "-1".into()])
                    .await?;
                on.push(timed?);
            }
            self.nodes.on(i, "SLOWLOG", vec!["RESET".into()]).await?;
            per_server.push((median(on) - median(off)) / CALIBRATION_INNER as f64);
        }
        Ok((per_server.iter().sum::<f64>() / per_server.len().max(1) as f64).max(0.0))
    }

    /// The µs one run of the calibration script took on server `i`.
    async fn timed_eval(&self, i: usize) -> Result<u64, String> {
        let eval_usec = |v: Value| {
            info::parse(&v.as_string().unwrap_or_default())
                .commands
                .get("eval")
                .map_or(0, |c| c.usec)
        };
        let before = eval_usec(self.nodes.on(i, "INFO", vec!["commandstats".into()]).await?);
        let args = vec![
            CALIBRATION_SCRIPT.to_string(),
            "0".into(),
            CALIBRATION_INNER.to_string(),
            CALIBRATION_ARG.into(),
        ];
        self.nodes.on(i, "EVAL", args).await?;
        let after = eval_usec(self.nodes.on(i, "INFO", vec!["commandstats".into()]).await?);
        Ok(after.saturating_sub(before))
    }

    /// Every command is logged from now on.
    pub async fn start(&self) -> Result<(), String> {
        self.set_all(&[(SLOWER_THAN, "0")]).await
    }

    /// Logging off, the entries since `start` read into `sample` and the log
    /// emptied.
    pub async fn collect(&self, names: &ScriptNames, sample: &mut Sample) -> Result<(), String> {
        self.set_all(&[(SLOWER_THAN, "-1")]).await?;
        let count = self.max_len.to_string();
        for (i, reply) in self
            .nodes
            .each("SLOWLOG", &["GET", &count])
            .await
            .into_iter()
            .enumerate()
        {
            let entries = slowlog::parse_entries(&reply?).map_err(|e| format!("{}: {e}", self.nodes.names[i]))?;
            sample.digest(entries, names, self.max_len);
        }
        for reply in self.nodes.each("SLOWLOG", &["RESET"]).await {
            reply?;
        }
        Ok(())
    }

    /// The settings each server had, and an empty log.
    pub async fn restore(self) -> Result<(), String> {
        let mut problems = Vec::new();
        for (i, (slower, len)) in self.saved.iter().enumerate() {
            for (name, value) in [(SLOWER_THAN, slower), (MAX_LEN, len)] {
                let args = vec!["SET".to_string(), name.to_string(), value.clone()];
                if let Err(e) = self.nodes.on(i, "CONFIG", args).await {
                    problems.push(e);
                }
            }
            if let Err(e) = self.nodes.on(i, "SLOWLOG", vec!["RESET".into()]).await {
                problems.push(e);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_s_server_and_a_cluster_s_primaries() {
        assert_eq!(authority("redis://127.0.0.1:6391"), "127.0.0.1:6391");
        assert_eq!(authority("redis://u:p@h:1/0?x=1"), "h:1");
        assert_eq!(
            authority("redis-cluster://127.0.0.1:7301?node=127.0.0.1:7302"),
            "127.0.0.1:7301"
        );
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::String(host.into()),
                Value::Integer(port),
                Value::String("id".into()),
            ])
        };
        let range = |a: i64, b: i64, primary: Value| Value::Array(vec![Value::Integer(a), Value::Integer(b), primary]);
        let reply = Value::Array(vec![
            range(0, 100, node("h", 7302)),
            range(101, 200, node("h", 7301)),
            range(201, 300, node("h", 7302)),
        ]);
        assert_eq!(
            primaries_of(&reply).unwrap(),
            [("h".to_string(), 7302), ("h".to_string(), 7301)]
        );
        assert!(primaries_of(&Value::Integer(1)).is_err());
        assert_eq!(
            config_value(Value::Array(vec![
                Value::String("slowlog-max-len".into()),
                Value::String("128".into())
            ])),
            Some("128".into())
        );
    }

    /// A redis-server of the test's own on a free port, killed on drop.
    struct OwnRedis {
        child: std::process::Child,
        port: u16,
    }

    impl OwnRedis {
        fn start() -> OwnRedis {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            let child = std::process::Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server (scripts/services.sh installs it)");
            OwnRedis { child, port }
        }
    }

    impl Drop for OwnRedis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    async fn config(nodes: &RedisNodes, name: &str) -> String {
        let reply = nodes.on(0, "CONFIG", vec!["GET".into(), name.into()]).await.unwrap();
        config_value(reply).unwrap()
    }

    #[tokio::test]
    async fn the_sampled_slow_log_names_scripts_and_is_put_back() {
        let redis = OwnRedis::start();
        let url = format!("redis://127.0.0.1:{}", redis.port);
        let mut nodes = None;
        for _ in 0..100 {
            if let Ok(n) = RedisNodes::connect(&url).await {
                nodes = Some(n);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let nodes = nodes.expect("the test's redis-server answers");
        assert_eq!(nodes.names(), [format!("127.0.0.1:{}", redis.port)]);
        assert_eq!(nodes.pids().await.unwrap(), [redis.child.id()]);
        let before = (config(&nodes, SLOWER_THAN).await, config(&nodes, MAX_LEN).await);

        let body = "redis.call('hset', KEYS[1], 'a', 1) return redis.call('hget', KEYS[1], 'a')";
        let mut names = ScriptNames::default();
        names.add("tiny", body, None);
        nodes.on(0, "SCRIPT", vec!["LOAD".into(), body.into()]).await.unwrap();
        let sha = fred::util::sha1_hash(body);
        let evalsha = || nodes.on(0, "EVALSHA", vec![sha.clone(), "1".into(), "k".into()]);
        let guard = nodes.slowlog(1000).await.unwrap();
        assert_eq!(config(&nodes, SLOWER_THAN).await, "-1");
        assert_eq!(config(&nodes, MAX_LEN).await, "1000");
        let cost = guard.calibrate().await.unwrap();
        println!("logging one inner command costs {cost:.3} µs here");
        assert!(cost < 20.0, "{cost} µs: the calibration timed something else");
        assert_eq!(config(&nodes, SLOWER_THAN).await, "-1");
        evalsha().await.unwrap();
        guard.start().await.unwrap();
        for _ in 0..3 {
            evalsha().await.unwrap();
        }
        let mut sample = Sample::default();
        guard.collect(&names, &mut sample).await.unwrap();
        // Called after the slice: not in the sample.
        evalsha().await.unwrap();
        let tiny = &sample.scripts["tiny"];
        assert_eq!(tiny.calls, 3);
        assert_eq!(tiny.inner["hset"].calls, 3);
        assert_eq!(tiny.inner["hget"].calls, 3);
        guard.restore().await.unwrap();
        assert_eq!(
            (config(&nodes, SLOWER_THAN).await, config(&nodes, MAX_LEN).await),
            before
        );
        let len = nodes.on(0, "SLOWLOG", vec!["LEN".into()]).await.unwrap();
        assert_eq!(len.as_i64(), Some(0));

        let counters = nodes.counters().await;
        let c = counters[0].as_ref().unwrap();
        assert_eq!(c.commands["evalsha"].calls, 5);
        assert_eq!(c.commands["eval"].calls, 2 * CALIBRATION_ROUNDS as u64);
        assert_eq!(c.commands["hset"].calls, 5);
        assert!(c.cpu_us.is_some());
        nodes.quit().await;
    }
}
