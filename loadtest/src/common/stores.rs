//! Connections to the engine's Redis and Postgres for the checks, and where
//! the engine keeps a sale in Redis.

use std::time::Duration;

use fred::prelude::{Builder, ClientLike, Config};
use sqlx::{Connection, PgConnection};

/// Every query of a check is bounded: a stuck store fails the check, it
/// does not hang the run.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Key of sale `sale` under `prefix`: `P:{k}:sale:S` with k = S mod 8 (the
/// engine's layout: one hash slot per shard).
pub fn sale_key(prefix: &str, sale: i64) -> String {
    format!("{prefix}:{{{}}}:sale:{sale}", sale.rem_euclid(8))
}

/// A client that sends each command once: a check never runs twice.
pub async fn connect_redis(url: &str) -> Result<fred::prelude::Client, String> {
    let config = Config::from_url(url).map_err(|e| format!("bad redis url {url:?}: {e}"))?;
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| p.default_command_timeout = QUERY_TIMEOUT)
        .build()
        .map_err(|e| format!("redis client: {e}"))?;
    match tokio::time::timeout(QUERY_TIMEOUT, client.init()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(format!("cannot connect to redis {url}: {e}")),
        Err(_) => Err(format!("cannot connect to redis {url}: timed out")),
    }
}

pub async fn connect_pg(url: &str) -> Result<PgConnection, String> {
    match tokio::time::timeout(QUERY_TIMEOUT, PgConnection::connect(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(format!("cannot connect to postgres: {e}")),
        Err(_) => Err("cannot connect to postgres: timed out".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sale_key_uses_literal_hash_tag() {
        assert_eq!(sale_key("stampede", 412345), "stampede:{1}:sale:412345");
        assert_eq!(sale_key("lt1", 16), "lt1:{0}:sale:16");
    }
}
