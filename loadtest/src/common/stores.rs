//! Connections to the engine's Redis and Postgres for the checks, and where
//! the engine keeps a sale in Redis.

use std::time::Duration;

use fred::prelude::{Builder, ClientLike, Config, KeysInterface};
use sqlx::{Connection, PgConnection};

/// Every query of a check is bounded: a stuck store fails the check, it
/// does not hang the run.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Key of sale `sale` under `prefix`: `P:{tag}:sale:S`, where the tag is
/// shard `S mod shards`'s in the layout the engine recorded in `P:layout`
/// at its first start (one hash slot per shard). Without a record, the 8
/// shards tagged 0..7 of engines that predate it.
pub async fn sale_key(client: &fred::prelude::Client, prefix: &str, sale: i64) -> Result<String, String> {
    let raw: Option<String> = client
        .get(format!("{prefix}:layout"))
        .await
        .map_err(|e| format!("reading {prefix}:layout: {e}"))?;
    let tags = match raw {
        Some(raw) => {
            serde_json::from_str::<Layout>(&raw)
                .map_err(|e| format!("{prefix}:layout is not a layout record: {e}"))?
                .tags
        }
        None => (0..8).map(|i: u8| i.to_string()).collect(),
    };
    if tags.is_empty() {
        return Err(format!("{prefix}:layout names no shard"));
    }
    Ok(sale_key_in(prefix, &tags, sale))
}

/// The part of the engine's layout record the checks need.
#[derive(serde::Deserialize)]
struct Layout {
    tags: Vec<String>,
}

/// `tags` is not empty.
fn sale_key_in(prefix: &str, tags: &[String], sale: i64) -> String {
    let tag = &tags[sale.rem_euclid(tags.len() as i64) as usize];
    format!("{prefix}:{{{tag}}}:sale:{sale}")
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
    fn sale_key_takes_the_tag_of_its_shard() {
        let numbered: Vec<String> = (0..8).map(|i: u8| i.to_string()).collect();
        assert_eq!(sale_key_in("stampede", &numbered, 412345), "stampede:{1}:sale:412345");
        assert_eq!(sale_key_in("lt1", &numbered, 16), "lt1:{0}:sale:16");
        let spread = vec!["0".to_owned(), "5".to_owned(), "12".to_owned()];
        assert_eq!(sale_key_in("lt1", &spread, 7), "lt1:{5}:sale:7");
    }
}
