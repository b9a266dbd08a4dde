//! The Redis settings the engine's guarantees rest on, read once at start.
//!
//! - `maxmemory-policy` must be `noeviction`: under any eviction policy Redis
//!   may drop keys the guarantees are made of (what is sold, one-time codes,
//!   idempotency records, references already applied), which would sell an
//!   item twice or apply a request twice. Anything else refuses to start.
//! - `appendonly yes` with `appendfsync always` is what makes an
//!   acknowledged write survive a Redis crash. Otherwise the engine warns,
//!   and `/health` and `stampede_redis_appendonly` say so.
//!
//! On Redis Cluster every primary is checked (each holds its share of the
//! keys), and a refusal or warning names the node. Managed services may
//! disable or rename `CONFIG`: then the engine warns and goes on, since it
//! cannot tell. `STAMPEDE_REDIS_CHECKS=off` skips it.

use fred::clients::Pool;
use fred::interfaces::ClientLike;
use fred::prelude::Server;
use fred::types::{InfoKind, Value};

/// What was read, `None` where Redis would not say.
#[derive(Debug, Clone, Default)]
pub struct RedisSettings {
    pub checked: bool,
    /// On a cluster, each setting is the one of the first primary (in slot
    /// order) whose value the warnings are about, or else of the first.
    pub maxmemory_policy: Option<String>,
    pub appendonly: Option<String>,
    pub appendfsync: Option<String>,
    /// For people, shown by `/health` and logged at start.
    pub warnings: Vec<String>,
}

impl RedisSettings {
    /// The checks were switched off (`STAMPEDE_REDIS_CHECKS=off`).
    pub fn unchecked() -> Self {
        Self {
            warnings: vec!["Redis settings were not checked (STAMPEDE_REDIS_CHECKS=off)".into()],
            ..Self::default()
        }
    }

    /// 1 when the append-only file is on, 0 when off, -1 when unknown.
    pub fn appendonly_gauge(&self) -> f64 {
        match self.appendonly.as_deref() {
            Some("yes") => 1.0,
            Some(_) => 0.0,
            None => -1.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedisSettingsError {
    #[error(
        "Redis's maxmemory-policy is {policy:?}{node}: under an eviction policy Redis may delete keys the engine's guarantees \
         rest on (what is sold, one-time codes, idempotency records, references already applied), which would \
         sell an item twice or apply a request twice. Set it to noeviction: `redis-cli CONFIG SET maxmemory-policy noeviction`, and \
         `maxmemory-policy noeviction` in redis.conf so that it survives a restart. (STAMPEDE_REDIS_CHECKS=off \
         skips this check, at that risk.)"
    )]
    Eviction { policy: String, node: String },
    #[error("cannot list the cluster's primaries to check their settings: {0}")]
    Primaries(String),
}

/// Reads the settings of every primary; refuses an eviction policy on any,
/// warns about the rest.
pub async fn check(redis: &Pool, wait_replicas: u32) -> Result<RedisSettings, RedisSettingsError> {
    let nodes: Vec<Option<Server>> = match redis.next().is_clustered() {
        true => crate::redis::layout::primaries(redis)
            .await
            .map_err(|e| RedisSettingsError::Primaries(e.to_string()))?
            .into_iter()
            .map(|p| Some(p.server))
            .collect(),
        false => vec![None],
    };
    let mut settings = RedisSettings {
        checked: true,
        ..RedisSettings::default()
    };
    let mut first = true;
    for node in &nodes {
        let one = check_node(redis, node.as_ref(), wait_replicas).await?;
        let flagged = !one.warnings.is_empty();
        if first || (flagged && settings.warnings.is_empty()) {
            settings.maxmemory_policy = one.maxmemory_policy;
            settings.appendonly = one.appendonly;
            settings.appendfsync = one.appendfsync;
        }
        first = false;
        settings.warnings.extend(one.warnings);
    }
    for warning in settings.warnings.iter().filter(|w| !w.starts_with("cannot read")) {
        tracing::warn!("{warning}");
    }
    Ok(settings)
}

/// The checks on one node (`None`: the one server of a standalone Redis).
async fn check_node(
    redis: &Pool,
    node: Option<&Server>,
    wait_replicas: u32,
) -> Result<RedisSettings, RedisSettingsError> {
    let on = node.map(|n| format!(" on primary {n}")).unwrap_or_default();
    let mut settings = RedisSettings::default();
    // With too few replicas every write would wait out the WAIT timeout and
    // answer 503: say so at start rather than at the first write.
    if wait_replicas > 0 {
        match connected_replicas(redis, node).await {
            Ok(Some(n)) if n < u64::from(wait_replicas) => settings.warnings.push(format!(
                "{n} replica(s) connected{on}, but STAMPEDE_REDIS_WAIT_REPLICAS is {wait_replicas}: every write there \
                 waits STAMPEDE_REDIS_WAIT_TIMEOUT_MS and answers 503 until enough replicas are in sync"
            )),
            Ok(_) => {}
            Err(e) => settings.warnings.push(format!(
                "cannot read Redis's replicas{on} (INFO replication failed: {e}); STAMPEDE_REDIS_WAIT_REPLICAS not checked"
            )),
        }
    }
    for (name, slot) in [
        ("maxmemory-policy", &mut settings.maxmemory_policy),
        ("appendonly", &mut settings.appendonly),
        ("appendfsync", &mut settings.appendfsync),
    ] {
        match config_get(redis, node, name).await {
            Ok(value) => *slot = value,
            Err(e) => {
                let warning = format!("cannot read Redis's {name}{on} (CONFIG GET failed: {e}); not checked");
                tracing::warn!("{warning}");
                settings.warnings.push(warning);
            }
        }
    }
    if let Some(policy) = &settings.maxmemory_policy
        && policy != "noeviction"
    {
        return Err(RedisSettingsError::Eviction {
            policy: policy.clone(),
            node: on,
        });
    }
    match settings.appendonly.as_deref() {
        Some("yes") => {}
        Some(other) => settings.warnings.push(format!(
            "Redis's appendonly is {other:?}{on}: acknowledged writes since its last snapshot are lost if Redis \
             restarts; set `appendonly yes` and `appendfsync always`"
        )),
        None => {}
    }
    if settings.appendonly.as_deref() == Some("yes")
        && let Some(fsync) = settings.appendfsync.as_deref()
        && fsync != "always"
    {
        settings.warnings.push(format!(
            "Redis's appendfsync is {fsync:?}{on}: acknowledged writes of up to the last second are lost if the \
             machine fails; set `appendfsync always`"
        ));
    }
    Ok(settings)
}

/// `CONFIG GET name` on `node` (or the one server): the value, `None` if
/// Redis does not know the name.
/// `connected_slaves` of `INFO replication` on `node` (the one Redis when
/// `None`).
async fn connected_replicas(redis: &Pool, node: Option<&Server>) -> Result<Option<u64>, fred::error::Error> {
    let client = redis.next();
    let info: String = match node {
        Some(node) => {
            client
                .with_cluster_node(node.clone())
                .info(Some(InfoKind::Replication))
                .await?
        }
        None => client.info(Some(InfoKind::Replication)).await?,
    };
    Ok(info
        .lines()
        .find_map(|l| l.trim().strip_prefix("connected_slaves:"))
        .and_then(|n| n.parse().ok()))
}

async fn config_get(redis: &Pool, node: Option<&Server>, name: &str) -> Result<Option<String>, fred::error::Error> {
    let args = vec!["GET", name];
    let reply: Value = match node {
        Some(node) => {
            redis
                .next()
                .with_cluster_node(node.clone())
                .custom(fred::cmd!("CONFIG"), args)
                .await?
        }
        None => redis.next().custom(fred::cmd!("CONFIG"), args).await?,
    };
    // RESP2 answers [name, value]; RESP3 a map.
    let value = match reply {
        Value::Array(values) => values.into_iter().nth(1),
        Value::Map(map) => map.inner().into_iter().next().map(|(_, v)| v),
        _ => None,
    };
    Ok(value.and_then(|v| v.as_string()))
}
