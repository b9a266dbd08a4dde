//! Invariant checks after the load: what Redis and Postgres hold must agree
//! with what the driver saw.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::{Builder, ClientLike, Config, HashesInterface};
use fred::types::{ClusterHash, CustomCommand};
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::common::fmt::ms;
use crate::common::stats::Progress;
use crate::scenarios::sale::report::Invariant;

const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Key of sale `sale` under `prefix`: `P:{k}:sale:S` with k = S mod 8.
pub fn sale_key(prefix: &str, sale: i64) -> String {
    format!("{prefix}:{{{}}}:sale:{sale}", sale.rem_euclid(8))
}

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

/// What the driver saw, to compare against the stores.
pub struct Expected {
    pub sale: i64,
    pub limit: u64,
    pub purchases: u64,
    pub successful_checkouts: u64,
    /// Checkouts the engine answered with an outcome its checkout script
    /// records (200, 403, 404, 409, 429): each must be one row in Postgres.
    pub recorded_checkouts: u64,
    pub last_purchase: Option<Instant>,
}

pub async fn redis_checks(client: &fred::prelude::Client, prefix: &str, exp: &Expected) -> Vec<Invariant> {
    let key = sale_key(prefix, exp.sale);
    let mut out = Vec::new();

    let sold_key = format!("{key}:sold");
    let bitcount = client
        .custom::<i64, _>(
            CustomCommand::new_static("BITCOUNT", ClusterHash::FirstKey, false),
            vec![sold_key.clone()],
        )
        .await;
    out.push(match bitcount {
        Ok(n) => Invariant::check(
            "redis_sold_bitcount",
            u64::try_from(n).ok() == Some(exp.purchases),
            format!("BITCOUNT {sold_key} = {n}, purchases seen = {}", exp.purchases),
        ),
        Err(e) => Invariant::fail("redis_sold_bitcount", format!("BITCOUNT {sold_key}: {e}")),
    });

    let users_key = format!("{key}:users");
    match client.hgetall::<HashMap<String, String>, _>(users_key.as_str()).await {
        Ok(fields) => {
            let mut sum = 0u64;
            let mut max = 0u64;
            let mut users = 0u64;
            let mut over: Vec<String> = Vec::new();
            let mut unparsable: Vec<String> = Vec::new();
            for (field, value) in &fields {
                let Some(user) = field.strip_prefix("p:") else {
                    continue;
                };
                match value.parse::<u64>() {
                    Ok(n) => {
                        users += 1;
                        sum += n;
                        max = max.max(n);
                        if n > exp.limit && over.len() < 5 {
                            over.push(format!("{user}={n}"));
                        }
                    }
                    Err(_) => unparsable.push(format!("{field}={value:?}")),
                }
            }
            out.push(Invariant::check(
                "redis_user_limit",
                over.is_empty() && unparsable.is_empty(),
                format!(
                    "{users} buyers in {users_key}, max p: = {max}, limit = {}{}{}",
                    exp.limit,
                    if over.is_empty() {
                        String::new()
                    } else {
                        format!(", over: {}", over.join(" "))
                    },
                    if unparsable.is_empty() {
                        String::new()
                    } else {
                        format!(", unparsable: {}", unparsable.join(" "))
                    },
                ),
            ));
            out.push(Invariant::check(
                "redis_user_sum",
                sum == exp.purchases,
                format!("sum of p: = {sum}, purchases seen = {}", exp.purchases),
            ));
        }
        Err(e) => {
            out.push(Invariant::fail("redis_user_limit", format!("HGETALL {users_key}: {e}")));
            out.push(Invariant::fail("redis_user_sum", format!("HGETALL {users_key}: {e}")));
        }
    }
    out
}

/// Result of the Postgres checks.
pub struct PgOutcome {
    pub invariants: Vec<Invariant>,
    /// Last successful purchase response -> Postgres had all purchases.
    pub flush_lag: Option<Duration>,
}

async fn count_rows(conn: &mut PgConnection, sql: &'static str, sale: i64) -> Result<i64, String> {
    let query = sqlx::query_scalar::<_, i64>(sql).bind(sale).fetch_one(&mut *conn);
    match tokio::time::timeout(QUERY_TIMEOUT, query).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(format!("{sql}: {e}")),
        Err(_) => Err(format!("{sql}: timed out")),
    }
}

/// Polls `sql` (a count) every 10 ms until it reaches `want` or `until` passes.
/// Returns the last count and when `want` was reached.
async fn poll_count(
    conn: &mut PgConnection,
    sql: &'static str,
    sale: i64,
    want: u64,
    until: Instant,
) -> Result<(i64, Option<Instant>), String> {
    loop {
        let n = count_rows(conn, sql, sale).await?;
        let now = Instant::now();
        if u64::try_from(n).is_ok_and(|n| n >= want) {
            return Ok((n, Some(now)));
        }
        if now >= until {
            return Ok((n, None));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const COUNT_PURCHASES: &str = "SELECT count(*) FROM purchases WHERE sale_id = $1";
const COUNT_ATTEMPTS: &str = "SELECT count(*) FROM checkout_attempts WHERE sale_id = $1";
const PURCHASE_SUMMARY: &str = "SELECT count(*), count(DISTINCT item_id), \
     COALESCE((SELECT max(c) FROM (SELECT count(*) AS c FROM purchases WHERE sale_id = $1 GROUP BY user_id) per_user), 0) \
     FROM purchases WHERE sale_id = $1";

/// Postgres reached `count` purchases at `at` (seen while the load was still running).
#[derive(Clone, Copy)]
pub struct EarlyFlush {
    pub count: u64,
    pub at: Instant,
}

/// Watches Postgres while the load runs: once the driver has seen `items`
/// purchases (sold out), polls every 10 ms until Postgres has them too. This
/// matters in the contention scenario, where the load goes on long after the
/// sell-out. Before the sell-out it sends no query, so it does not load the
/// system under test. Stops when `stop` turns true; hands the connection back.
pub fn spawn_flush_watch(
    mut conn: PgConnection,
    progress: Arc<Progress>,
    items: u64,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<(PgConnection, Option<EarlyFlush>)> {
    tokio::spawn(async move {
        loop {
            if *stop.borrow() {
                return (conn, None);
            }
            if let Some(sale) = progress.sale()
                && progress.purchases() >= items
            {
                match count_rows(&mut conn, COUNT_PURCHASES, sale).await {
                    Ok(n) if u64::try_from(n).is_ok_and(|n| n >= items) => {
                        let at = Instant::now();
                        return (conn, Some(EarlyFlush { count: n as u64, at }));
                    }
                    Ok(_) => {}
                    // The checks after the load poll again and report the error.
                    Err(_) => return (conn, None),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                _ = stop.changed() => {}
            }
        }
    })
}

pub async fn pg_checks(
    conn: &mut PgConnection,
    exp: &Expected,
    wait: Duration,
    early: Option<EarlyFlush>,
) -> PgOutcome {
    let mut invariants = Vec::new();
    let until = Instant::now() + wait;

    // 1. Wait for the write-behind to catch up (cheap count, every 10 ms),
    //    unless the watcher already saw it happen during the load.
    let polled = match early.filter(|e| e.count == exp.purchases) {
        Some(e) => Ok((e.count as i64, Some(e.at))),
        None => poll_count(conn, COUNT_PURCHASES, exp.sale, exp.purchases, until).await,
    };
    let flush_lag = match polled {
        Ok((n, Some(reached))) => {
            let lag = exp.last_purchase.map(|last| reached.saturating_duration_since(last));
            invariants.push(Invariant::check(
                "pg_purchases_flushed",
                u64::try_from(n).ok() == Some(exp.purchases),
                format!(
                    "{n} rows in purchases, purchases seen = {}{}",
                    exp.purchases,
                    lag.map(|l| format!(", flushed {:.1} ms after the last purchase", ms(l)))
                        .unwrap_or_default()
                ),
            ));
            lag
        }
        Ok((n, None)) => {
            invariants.push(Invariant::fail(
                "pg_purchases_flushed",
                format!(
                    "only {n} of {} purchases in Postgres after waiting {wait:?}",
                    exp.purchases
                ),
            ));
            None
        }
        Err(e) => {
            invariants.push(Invariant::fail("pg_purchases_flushed", e));
            None
        }
    };

    // 2. No item twice, nobody over the limit.
    let summary = sqlx::query_as::<_, (i64, i64, i64)>(PURCHASE_SUMMARY)
        .bind(exp.sale)
        .fetch_one(&mut *conn);
    match tokio::time::timeout(QUERY_TIMEOUT, summary).await {
        Ok(Ok((count, distinct, max_per_user))) => {
            invariants.push(Invariant::check(
                "pg_no_duplicate_items",
                count == distinct,
                format!(
                    "count = {count}, distinct items = {distinct}, purchases seen = {}",
                    exp.purchases
                ),
            ));
            invariants.push(Invariant::check(
                "pg_user_limit",
                u64::try_from(max_per_user).is_ok_and(|m| m <= exp.limit),
                format!("max purchases per user = {max_per_user}, limit = {}", exp.limit),
            ));
        }
        Ok(Err(e)) => {
            invariants.push(Invariant::fail("pg_no_duplicate_items", e.to_string()));
            invariants.push(Invariant::fail("pg_user_limit", e.to_string()));
        }
        Err(_) => {
            invariants.push(Invariant::fail("pg_no_duplicate_items", "summary query timed out"));
            invariants.push(Invariant::fail("pg_user_limit", "summary query timed out"));
        }
    }

    // 3. Every checkout attempt the engine decided is logged, accepted or refused (contest rule).
    let until = until.max(Instant::now() + Duration::from_secs(10));
    invariants.push(
        match poll_count(conn, COUNT_ATTEMPTS, exp.sale, exp.recorded_checkouts, until).await {
            Ok((n, _)) => Invariant::check(
                "pg_checkout_attempts",
                u64::try_from(n).is_ok_and(|n| n == exp.recorded_checkouts),
                format!(
                    "{n} rows in checkout_attempts, checkouts answered with a recorded outcome = {} ({} of them 200)",
                    exp.recorded_checkouts, exp.successful_checkouts
                ),
            ),
            Err(e) => Invariant::fail("pg_checkout_attempts", e),
        },
    );

    PgOutcome { invariants, flush_lag }
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
