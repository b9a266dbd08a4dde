//! The sale's invariants: first what the driver was told must be possible
//! (no item sold twice, nobody over the limit, one sale), then Redis and
//! Postgres must hold exactly what the driver was told, compared item by
//! item and code by code with its own record. A count the schema keeps
//! right anyway (the unique index on a sale's item makes a doubled row
//! impossible) proves nothing, so none of these is a count alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::{HashesInterface, KeysInterface};
use sqlx::PgConnection;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::common::fmt::ms;
use crate::common::stores::{QUERY_TIMEOUT, sale_key};
use crate::common::verdict::Check;

use super::args::{Args, Scenario};
use super::load::LoadResult;
use super::stats::{Acknowledged, Progress, RunStats};

/// What the driver was told, to compare the stores with.
pub struct Expected<'a> {
    pub sale: i64,
    pub limit: u64,
    pub user_prefix: &'a str,
    pub stats: &'a RunStats,
}

impl Expected<'_> {
    fn user_id(&self, user: usize) -> String {
        format!("{}-{user}", self.user_prefix)
    }

    /// Checkouts answered with an outcome the engine's checkout script
    /// records in Postgres (200 and its refusals; not a shed 503), per
    /// outcome: `OK` for 200, the error code otherwise.
    fn recorded_outcomes(&self) -> BTreeMap<String, u64> {
        const RECORDED: [&str; 4] = [
            "ITEM_NOT_FOUND",
            "ITEM_SOLD",
            "USER_LIMIT_REACHED",
            "TOO_MANY_CHECKOUTS",
        ];
        let mut out = BTreeMap::new();
        for (status, n) in &self.stats.checkout.statuses {
            let outcome = match status.split_once(' ') {
                None if status == "200" => "OK",
                Some((_, code)) if RECORDED.contains(&code) => code,
                _ => continue,
            };
            *out.entry(outcome.to_owned()).or_default() += n;
        }
        out
    }
}

/// A few elements of a set difference, for a detail line.
fn sample<T: std::fmt::Debug>(items: impl Iterator<Item = T>) -> String {
    let first: Vec<T> = items.take(3).collect();
    format!("{first:?}")
}

/// Invariants about what the driver itself saw.
pub fn driver_checks(args: &Args, load: &LoadResult) -> Vec<Check> {
    let s = &load.stats;
    let mut out = Vec::new();
    let mut trouble = Vec::new();
    if let Some(why) = &load.aborted {
        trouble.push(why.clone());
    }
    if s.deadline_hit {
        trouble.push(format!("--max-secs {} reached", args.max_secs));
    }
    if s.connect_errors > 0 {
        trouble.push(format!("{} connect errors", s.connect_errors));
    }
    if s.abandoned_users > 0 {
        trouble.push(format!("{} users abandoned", s.abandoned_users));
    }
    out.push(Check::new(
        "load_completed",
        trouble.is_empty(),
        if trouble.is_empty() {
            format!(
                "all {} users ran over {} connections ({} reconnects)",
                args.users, args.connections, s.reconnects
            )
        } else {
            trouble.join(", ")
        },
    ));

    let (ok_checkout, ok_purchase) = args.scenario.expected_statuses();
    let bad = s.checkout.count_not_in(ok_checkout) + s.purchase.count_not_in(ok_purchase);
    let (name, what) = match args.scenario {
        Scenario::Contest => ("http_all_200", "non-200 answers or failed requests"),
        Scenario::Contention => ("no_unexpected_status", "unexpected answers or failed requests"),
    };
    out.push(Check::new(
        name,
        bad == 0 && s.bad_bodies == 0,
        format!(
            "{bad} {what}, {} unparsable 200 bodies (checkout 200: {}, purchase 200: {})",
            s.bad_bodies,
            s.checkout.count("200"),
            s.purchase.count("200")
        ),
    ));

    let (name, what) = match args.scenario {
        Scenario::Contest => ("all_items_purchased", "every item bought exactly once"),
        Scenario::Contention => ("exactly_items_sold", "exactly --items purchases succeeded"),
    };
    out.push(Check::new(
        name,
        s.purchases() == args.items as u64,
        format!("{} purchases succeeded, items = {} ({what})", s.purchases(), args.items),
    ));
    let twice = s.items_told_twice();
    out.push(Check::new(
        "driver_no_item_twice",
        twice.is_empty(),
        format!(
            "{} item ids were acknowledged to two buyers {}",
            twice.len(),
            sample(twice.iter())
        ),
    ));
    let busiest = s.purchases_per_user().into_values().max().unwrap_or(0);
    out.push(Check::new(
        "driver_user_limit",
        busiest <= args.limit,
        format!("busiest user was told of {busiest} purchases, limit {}", args.limit),
    ));
    out.push(Check::new(
        "single_sale_id",
        s.sale_ids.len() == 1,
        format!("sale ids in responses: {:?}", s.sale_ids),
    ));
    out
}

/// The sale's sold bitmap and per-user counts against the driver's record.
pub async fn redis_checks(client: &fred::prelude::Client, prefix: &str, exp: &Expected<'_>) -> Vec<Check> {
    let mut out = Vec::new();
    let key = match sale_key(client, prefix, exp.sale).await {
        Ok(key) => key,
        Err(e) => {
            out.push(Check::fail("redis_sold_bits", e.clone()));
            out.push(Check::fail("redis_user_limit", e.clone()));
            out.push(Check::fail("redis_user_counts", e));
            return out;
        }
    };
    let told_items: BTreeSet<i64> = exp.stats.acknowledged.iter().map(|a| a.item).collect();

    let sold_key = format!("{key}:sold");
    // The bitmap itself (a bit per item: 25 KB for 200,000 items): which
    // items Redis holds sold, not only how many.
    out.push(match client.get::<Option<Vec<u8>>, _>(sold_key.as_str()).await {
        Ok(bitmap) => {
            let sold = set_bits(bitmap.as_deref().unwrap_or_default());
            let missing: Vec<&i64> = told_items.difference(&sold).collect();
            let unknown: Vec<&i64> = sold.difference(&told_items).collect();
            Check::new(
                "redis_sold_bits",
                missing.is_empty() && unknown.is_empty(),
                format!(
                    "{} bits set in {sold_key}, {} items acknowledged; acknowledged but not set {}, set but never \
                     acknowledged {}",
                    sold.len(),
                    told_items.len(),
                    sample(missing.iter()),
                    sample(unknown.iter())
                ),
            )
        }
        Err(e) => Check::fail("redis_sold_bits", format!("GET {sold_key}: {e}")),
    });

    let users_key = format!("{key}:users");
    match client.hgetall::<HashMap<String, String>, _>(users_key.as_str()).await {
        Ok(fields) => {
            let mut held = BTreeMap::new();
            let mut unparsable = Vec::new();
            for (field, value) in &fields {
                let Some(user) = field.strip_prefix("p:") else {
                    continue;
                };
                match value.parse::<u64>() {
                    Ok(0) => {}
                    Ok(n) => {
                        held.insert(user.to_owned(), n);
                    }
                    Err(_) => unparsable.push(format!("{field}={value:?}")),
                }
            }
            let over: Vec<String> = held
                .iter()
                .filter(|(_, n)| **n > exp.limit)
                .map(|(u, n)| format!("{u}={n}"))
                .collect();
            out.push(Check::new(
                "redis_user_limit",
                over.is_empty() && unparsable.is_empty(),
                format!(
                    "{} buyers in {users_key}, max p: = {}, limit = {}; over {}, unparsable {}",
                    held.len(),
                    held.values().max().unwrap_or(&0),
                    exp.limit,
                    sample(over.iter()),
                    sample(unparsable.iter())
                ),
            ));
            let told: BTreeMap<String, u64> = exp
                .stats
                .purchases_per_user()
                .into_iter()
                .map(|(u, n)| (exp.user_id(u), n))
                .collect();
            let differing: Vec<String> = told
                .keys()
                .chain(held.keys())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|u| told.get(*u) != held.get(*u))
                .map(|u| format!("{u}: Redis {:?}, told {:?}", held.get(u), told.get(u)))
                .collect();
            out.push(Check::new(
                "redis_user_counts",
                differing.is_empty(),
                format!(
                    "p: counts of {} buyers against the purchases each was told of; {} differ {}",
                    told.len(),
                    differing.len(),
                    sample(differing.iter())
                ),
            ));
        }
        Err(e) => {
            out.push(Check::fail("redis_user_limit", format!("HGETALL {users_key}: {e}")));
            out.push(Check::fail("redis_user_counts", format!("HGETALL {users_key}: {e}")));
        }
    }
    out
}

/// Item ids of the set bits of a Redis bitmap (bit 0 is the most
/// significant bit of the first byte, as SETBIT counts).
pub fn set_bits(bitmap: &[u8]) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    for (i, byte) in bitmap.iter().enumerate() {
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                out.insert((i * 8 + bit) as i64);
            }
        }
    }
    out
}

/// Result of the Postgres checks.
pub struct PgOutcome {
    pub checks: Vec<Check>,
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
const PURCHASES: &str = "SELECT code, item_id, user_id FROM purchases WHERE sale_id = $1";
const ATTEMPTS: &str = "SELECT outcome, code FROM checkout_attempts WHERE sale_id = $1";

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
    exp: &Expected<'_>,
    wait: Duration,
    early: Option<EarlyFlush>,
) -> PgOutcome {
    let mut checks = Vec::new();
    let until = Instant::now() + wait;
    let purchases = exp.stats.purchases();

    // 1. Wait for the write-behind to catch up (cheap count, every 10 ms),
    //    unless the watcher already saw it happen during the load.
    let polled = match early.filter(|e| e.count == purchases) {
        Some(e) => Ok((e.count as i64, Some(e.at))),
        None => poll_count(conn, COUNT_PURCHASES, exp.sale, purchases, until).await,
    };
    let flush_lag = match polled {
        Ok((n, Some(reached))) => {
            let lag = exp
                .stats
                .last_purchase
                .map(|last| reached.saturating_duration_since(last));
            checks.push(Check::new(
                "pg_purchases_flushed",
                u64::try_from(n).ok() == Some(purchases),
                format!(
                    "{n} rows in purchases, purchases acknowledged = {purchases}{}",
                    lag.map(|l| format!(", flushed {:.1} ms after the last purchase", ms(l)))
                        .unwrap_or_default()
                ),
            ));
            lag
        }
        Ok((n, None)) => {
            checks.push(Check::fail(
                "pg_purchases_flushed",
                format!("only {n} of {purchases} purchases in Postgres after waiting {wait:?}"),
            ));
            None
        }
        Err(e) => {
            checks.push(Check::fail("pg_purchases_flushed", e));
            None
        }
    };

    // 2. The rows are the acknowledged purchases, code by code, each with
    //    the item and the buyer the driver was told.
    let rows = sqlx::query_as::<_, (String, i64, String)>(PURCHASES)
        .bind(exp.sale)
        .fetch_all(&mut *conn);
    match tokio::time::timeout(QUERY_TIMEOUT, rows).await {
        Ok(Ok(rows)) => {
            checks.push(purchases_as_acknowledged(exp, &rows));
            let mut per_user: HashMap<&str, u64> = HashMap::new();
            for (_, _, user) in &rows {
                *per_user.entry(user.as_str()).or_default() += 1;
            }
            let busiest = per_user.values().max().copied().unwrap_or(0);
            checks.push(Check::new(
                "pg_user_limit",
                busiest <= exp.limit,
                format!("max purchases per user = {busiest}, limit = {}", exp.limit),
            ));
        }
        Ok(Err(e)) => {
            checks.push(Check::fail("pg_purchases_as_acknowledged", e.to_string()));
            checks.push(Check::fail("pg_user_limit", e.to_string()));
        }
        Err(_) => {
            checks.push(Check::fail("pg_purchases_as_acknowledged", "query timed out"));
            checks.push(Check::fail("pg_user_limit", "query timed out"));
        }
    }

    // 3. Every checkout attempt the engine decided is logged, accepted or
    //    refused: the accepted ones by the code the driver was given, the
    //    refused ones by outcome.
    let outcomes = exp.recorded_outcomes();
    let recorded: u64 = outcomes.values().sum();
    let until = until.max(Instant::now() + Duration::from_secs(10));
    let check = match poll_count(conn, COUNT_ATTEMPTS, exp.sale, recorded, until).await {
        Err(e) => Check::fail("pg_checkout_attempts", e),
        Ok(_) => {
            let rows = sqlx::query_as::<_, (String, Option<String>)>(ATTEMPTS)
                .bind(exp.sale)
                .fetch_all(&mut *conn);
            match tokio::time::timeout(QUERY_TIMEOUT, rows).await {
                Ok(Ok(rows)) => attempts_as_answered(exp, &outcomes, &rows),
                Ok(Err(e)) => Check::fail("pg_checkout_attempts", e.to_string()),
                Err(_) => Check::fail("pg_checkout_attempts", "query timed out"),
            }
        }
    };
    checks.push(check);
    PgOutcome { checks, flush_lag }
}

/// The purchase rows against the acknowledged purchases: the same codes,
/// and for each the item and the buyer the driver was told.
fn purchases_as_acknowledged(exp: &Expected<'_>, rows: &[(String, i64, String)]) -> Check {
    let told: BTreeMap<&str, &Acknowledged> = exp.stats.acknowledged.iter().map(|a| (a.code.as_str(), a)).collect();
    let held: BTreeMap<&str, (i64, &str)> = rows.iter().map(|(c, i, u)| (c.as_str(), (*i, u.as_str()))).collect();
    let missing: Vec<&&str> = told.keys().filter(|c| !held.contains_key(*c)).collect();
    let unknown: Vec<&&str> = held.keys().filter(|c| !told.contains_key(*c)).collect();
    let wrong: Vec<String> = told
        .iter()
        .filter_map(|(code, a)| {
            let (item, user) = held.get(code)?;
            let user_told = exp.user_id(a.user);
            (*item != a.item || *user != user_told)
                .then(|| format!("{code}: row ({item}, {user}), told ({}, {user_told})", a.item))
        })
        .collect();
    Check::new(
        "pg_purchases_as_acknowledged",
        missing.is_empty() && unknown.is_empty() && wrong.is_empty() && rows.len() == told.len(),
        format!(
            "{} rows, {} purchases acknowledged; acknowledged but missing {} {}, never acknowledged {} {}, other \
             item or buyer {} {}",
            rows.len(),
            told.len(),
            missing.len(),
            sample(missing.iter()),
            unknown.len(),
            sample(unknown.iter()),
            wrong.len(),
            sample(wrong.iter())
        ),
    )
}

/// The attempt rows against the checkout answers.
fn attempts_as_answered(
    exp: &Expected<'_>,
    outcomes: &BTreeMap<String, u64>,
    rows: &[(String, Option<String>)],
) -> Check {
    let told: BTreeSet<&str> = exp.stats.checkout_codes.iter().map(String::as_str).collect();
    let held: BTreeSet<&str> = rows
        .iter()
        .filter(|(o, _)| o == "OK")
        .filter_map(|(_, c)| c.as_deref())
        .collect();
    let mut per_outcome: BTreeMap<String, u64> = BTreeMap::new();
    for (outcome, _) in rows {
        *per_outcome.entry(outcome.clone()).or_default() += 1;
    }
    let missing: Vec<&&str> = told.difference(&held).collect();
    let unknown: Vec<&&str> = held.difference(&told).collect();
    Check::new(
        "pg_checkout_attempts",
        missing.is_empty() && unknown.is_empty() && per_outcome == *outcomes,
        format!(
            "rows per outcome {per_outcome:?}, checkouts answered per outcome {outcomes:?}; codes given but not \
             recorded {}, recorded but never given {}",
            sample(missing.iter()),
            sample(unknown.iter())
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::verdict::Verdict;

    #[test]
    fn bitmap_bits_are_item_ids() {
        assert_eq!(set_bits(&[0b1000_0001, 0b0100_0000]), BTreeSet::from([0, 7, 9]));
        assert!(set_bits(&[]).is_empty());
    }

    fn expected(stats: &RunStats) -> Expected<'_> {
        Expected {
            sale: 7,
            limit: 10,
            user_prefix: "lt",
            stats,
        }
    }

    #[test]
    fn rows_must_be_the_acknowledged_purchases() {
        let mut stats = RunStats::new();
        stats.acknowledged = vec![
            Acknowledged {
                code: "7-a".into(),
                item: 1,
                user: 0,
            },
            Acknowledged {
                code: "7-b".into(),
                item: 2,
                user: 1,
            },
        ];
        let exp = expected(&stats);
        let row = |c: &str, i: i64, u: &str| (c.to_owned(), i, u.to_owned());
        let same = [row("7-a", 1, "lt-0"), row("7-b", 2, "lt-1")];
        assert_eq!(purchases_as_acknowledged(&exp, &same).verdict, Verdict::Pass);
        // A row the driver was never told of fails, even with the count right.
        let other = [row("7-a", 1, "lt-0"), row("7-c", 2, "lt-1")];
        assert_eq!(purchases_as_acknowledged(&exp, &other).verdict, Verdict::Fail);
        let wrong_buyer = [row("7-a", 1, "lt-0"), row("7-b", 2, "lt-9")];
        assert_eq!(purchases_as_acknowledged(&exp, &wrong_buyer).verdict, Verdict::Fail);
    }

    #[test]
    fn attempts_by_code_and_outcome() {
        let mut stats = RunStats::new();
        stats.checkout_codes = vec!["7-a".into()];
        stats
            .checkout
            .record_response("200", Instant::now(), Duration::from_millis(1));
        stats
            .checkout
            .record_response("409 ITEM_SOLD", Instant::now(), Duration::from_millis(1));
        stats.checkout.record_failure("timeout");
        let exp = expected(&stats);
        let outcomes = exp.recorded_outcomes();
        assert_eq!(outcomes, BTreeMap::from([("ITEM_SOLD".into(), 1), ("OK".into(), 1)]));
        let rows = [
            ("OK".to_owned(), Some("7-a".to_owned())),
            ("ITEM_SOLD".to_owned(), None),
        ];
        assert_eq!(attempts_as_answered(&exp, &outcomes, &rows).verdict, Verdict::Pass);
        let rows = [
            ("OK".to_owned(), Some("7-z".to_owned())),
            ("ITEM_SOLD".to_owned(), None),
        ];
        assert_eq!(attempts_as_answered(&exp, &outcomes, &rows).verdict, Verdict::Fail);
    }
}
