//! A private Redis Cluster for tests that break, reshape or measure one
//! (kill a primary, move a slot, drop every connection, read each primary's
//! command statistics): `scripts/services.sh cluster-start` on its own
//! ports, stopped and removed when dropped, also when the test panics.
//!
//! The private clusters' first ports (each takes the next ones too, and its
//! bus ports +10000); no two may overlap:
//! - 7311..7313: the suite's cluster of `scripts/test.sh`
//!   (`STAMPEDE_SUITE_CLUSTER_PORT`), not made here;
//! - 7541..7543 and 7551..7553: `cluster::`'s moved-slot and migration tests
//!   (`STAMPEDE_TEST_CLUSTER_PORT`, + 10 for the second);
//! - 7581..7583: `split_balance::`'s tests, one after another
//!   (`STAMPEDE_TEST_BALANCE_PORT`);
//! - 7611..7616: `scale_out::`'s failover test (3 primaries, 3 replicas).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivateCluster {
    services: String,
    /// The first node's port; the others follow.
    pub port: u16,
    replicas: u16,
    dir: PathBuf,
    pub url: String,
}

/// Primaries of every private cluster (`services.sh`'s default, passed on
/// so that `ports()` and the script agree whatever the caller's setting).
const PRIMARIES: u16 = 3;

impl PrivateCluster {
    /// Three primaries with `replicas` replicas each, from `port` on (bus
    /// ports +10000, all below the ephemeral range as `services.sh`
    /// requires). With replicas, returns once each primary has one in sync.
    pub fn start(port: u16, replicas: u16) -> Self {
        let services = std::env::var("STAMPEDE_TEST_SERVICES")
            .expect("STAMPEDE_TEST_SERVICES must name scripts/services.sh: run the tests with scripts/test.sh");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cluster-{port}"));
        let mut cluster = Self {
            services,
            port,
            replicas,
            dir,
            url: String::new(),
        };
        // A cluster left by an interrupted run is in no known state.
        cluster.run("cluster-stop", None);
        cluster.url = cluster.run("cluster-start", None).trim().to_owned();
        assert!(
            cluster.url.starts_with("redis-cluster://"),
            "cluster URL: {}",
            cluster.url
        );
        if replicas > 0 {
            cluster.wait_replicas_online();
        }
        cluster
    }

    /// The nodes' ports, primaries first as `services.sh` created them.
    pub fn ports(&self) -> std::ops::Range<u16> {
        self.port..self.port + PRIMARIES * (1 + self.replicas)
    }

    /// The primaries' ports, as `services.sh` created them (before any
    /// failover).
    pub fn primaries(&self) -> std::ops::Range<u16> {
        self.port..self.port + PRIMARIES
    }

    /// A test client of the cluster, connected. It has no reconnect policy:
    /// make it after whatever drops connections has stopped.
    pub async fn client(&self) -> fred::clients::Client {
        use fred::interfaces::ClientLike;
        let redis = fred::clients::Client::new(
            fred::types::config::Config::from_url(&self.url).expect("cluster URL parses"),
            None,
            None,
            None,
        );
        redis.init().await.expect("test client reaches the cluster");
        redis
    }

    /// `cluster_state:ok` comes before the replicas' first sync: until each
    /// primary has an online replica, every `WAIT 1` would come up short.
    fn wait_replicas_online(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in self.ports() {
            loop {
                let info = self.cli(port, &["info", "replication"]);
                if info.contains("role:slave") || info.contains("state=online") {
                    break;
                }
                assert!(Instant::now() < deadline, "node {port} has no online replica: {info}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Runs `services.sh action` for this cluster (on `node` alone, for
    /// `cluster-node-start`); returns the `REDIS_CLUSTER_URL` it exported.
    /// Its output is captured before the `eval` (which would answer 0 for a
    /// failed script), and the caller's `REDIS_CLUSTER_URL` (the shared
    /// cluster's) is not passed on, so a failed action fails here instead
    /// of handing back the shared cluster.
    fn run(&self, action: &str, node: Option<u16>) -> String {
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(r#"exports="$(bash "$0" "$1")" && eval "$exports" && printf '%s' "${REDIS_CLUSTER_URL:-}""#)
            .arg(&self.services)
            .arg(action)
            .env_remove("REDIS_CLUSTER_URL")
            .env("STAMPEDE_CLUSTER_PORT", self.port.to_string())
            .env("STAMPEDE_CLUSTER_PRIMARIES", PRIMARIES.to_string())
            .env("STAMPEDE_CLUSTER_REPLICAS", self.replicas.to_string())
            .env("STAMPEDE_CLUSTER_NODE_TIMEOUT_MS", "2000")
            .env("STAMPEDE_CLUSTER_DIR", &self.dir)
            .stderr(Stdio::inherit());
        if let Some(node) = node {
            command.env("STAMPEDE_CLUSTER_NODE", node.to_string());
        }
        let output = command.output().expect("services.sh runs");
        assert!(output.status.success(), "services.sh {action} failed");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `redis-cli` against the node on `port`; its reply, trimmed.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The port of the primary that serves `slot`, as node `ask` sees it:
    /// a master not flagged as failed.
    pub fn owner(&self, ask: u16, slot: u16) -> Option<u16> {
        for line in self.cli(ask, &["cluster", "nodes"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let mut ends = range.splitn(2, '-').map(|n| n.parse::<u16>().ok());
                match (ends.next().flatten(), ends.next()) {
                    (Some(first), None) => first == slot,
                    (Some(first), Some(Some(last))) => (first..=last).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                let port = fields[1].split(['@', ':']).nth(1)?.parse().ok()?;
                return Some(port);
            }
        }
        None
    }

    /// Starts a killed node again, as its supervisor would: it rejoins as
    /// a replica of the node promoted in its place.
    pub fn restart(&self, port: u16) {
        self.run("cluster-node-start", Some(port));
    }

    /// Whether the primary on `port` has a replica in sync.
    pub fn has_online_replica(&self, port: u16) -> bool {
        self.cli(port, &["info", "replication"]).contains("state=online")
    }

    pub fn kill_9(&self, port: u16) {
        let pid = std::fs::read_to_string(self.dir.join(port.to_string()).join("redis.pid")).expect("node pid file");
        let status = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -9 {}", pid.trim());
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.services)
            .arg("cluster-stop")
            .env("STAMPEDE_CLUSTER_PORT", self.port.to_string())
            .env("STAMPEDE_CLUSTER_PRIMARIES", PRIMARIES.to_string())
            .env("STAMPEDE_CLUSTER_REPLICAS", self.replicas.to_string())
            .env("STAMPEDE_CLUSTER_DIR", &self.dir)
            .stdout(Stdio::null())
            .status();
    }
}
