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
//! Managed services may disable or rename `CONFIG`: then the engine warns
//! and goes on, since it cannot tell. `STAMPEDE_REDIS_CHECKS=off` skips it.

use fred::clients::Pool;
use fred::interfaces::ClientLike;
use fred::types::Value;

/// What was read, `None` where Redis would not say.
#[derive(Debug, Clone, Default)]
pub struct RedisSettings {
    pub checked: bool,
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
        "Redis's maxmemory-policy is {0:?}: under an eviction policy Redis may delete keys the engine's guarantees \
         rest on (what is sold, one-time codes, idempotency records, references already applied), which would \
         sell an item twice or apply a request twice. Set it to noeviction: `redis-cli CONFIG SET maxmemory-policy noeviction`, and \
         `maxmemory-policy noeviction` in redis.conf so that it survives a restart. (STAMPEDE_REDIS_CHECKS=off \
         skips this check, at that risk.)"
    )]
    Eviction(String),
}

/// Reads the settings; refuses an eviction policy, warns about the rest.
pub async fn check(redis: &Pool) -> Result<RedisSettings, RedisSettingsError> {
    let mut settings = RedisSettings {
        checked: true,
        ..RedisSettings::default()
    };
    for (name, slot) in [
        ("maxmemory-policy", &mut settings.maxmemory_policy),
        ("appendonly", &mut settings.appendonly),
        ("appendfsync", &mut settings.appendfsync),
    ] {
        match config_get(redis, name).await {
            Ok(value) => *slot = value,
            Err(e) => {
                let warning = format!("cannot read Redis's {name} (CONFIG GET failed: {e}); not checked");
                tracing::warn!("{warning}");
                settings.warnings.push(warning);
            }
        }
    }
    if let Some(policy) = &settings.maxmemory_policy
        && policy != "noeviction"
    {
        return Err(RedisSettingsError::Eviction(policy.clone()));
    }
    match settings.appendonly.as_deref() {
        Some("yes") => {}
        Some(other) => settings.warnings.push(format!(
            "Redis's appendonly is {other:?}: acknowledged writes since its last snapshot are lost if Redis \
             restarts; set `appendonly yes` and `appendfsync always`"
        )),
        None => {}
    }
    if settings.appendonly.as_deref() == Some("yes")
        && let Some(fsync) = settings.appendfsync.as_deref()
        && fsync != "always"
    {
        settings.warnings.push(format!(
            "Redis's appendfsync is {fsync:?}: acknowledged writes of up to the last second are lost if the \
             machine fails; set `appendfsync always`"
        ));
    }
    for warning in settings.warnings.iter().filter(|w| !w.starts_with("cannot read")) {
        tracing::warn!("{warning}");
    }
    Ok(settings)
}

/// `CONFIG GET name`: the value, `None` if Redis does not know the name.
async fn config_get(redis: &Pool, name: &str) -> Result<Option<String>, fred::error::Error> {
    let reply: Value = redis.next().custom(fred::cmd!("CONFIG"), vec!["GET", name]).await?;
    // RESP2 answers [name, value]; RESP3 a map.
    let value = match reply {
        Value::Array(values) => values.into_iter().nth(1),
        Value::Map(map) => map.inner().into_iter().next().map(|(_, v)| v),
        _ => None,
    };
    Ok(value.and_then(|v| v.as_string()))
}
