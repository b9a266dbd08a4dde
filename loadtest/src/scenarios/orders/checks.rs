//! The orders run's invariants: the stock adds up on every product, holds
//! come back, Redis sold exactly the quantity the driver was told was
//! completed, Postgres holds exactly the orders the driver was told of (by
//! id: the engine's rows keyed by event id could never show a doubled
//! request as a second row, a second order id could), keyed retries got the
//! first answer, every unknown outcome was found out, and
//! `GET /admin/reconcile` agrees.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::engine;
use crate::common::http::{Client, Method, Target};
use crate::common::stores::{QUERY_TIMEOUT, connect_pg};
use crate::common::verdict::Check;

use super::args::OrdersArgs;
use super::load::{Records, TIMEOUT};

/// The live stock, read once the 1 s holds have expired.
pub struct Stock {
    pub sold: i64,
    pub reserved: i64,
    /// Products whose counts do not add up.
    pub bad: Vec<String>,
}

/// Reads every product until nothing is reserved (5 s at most: holds of 1 s
/// expire, and the engine returns their stock within 1 s more).
pub async fn read_stock(target: &Target, products: &[u64], stock: i64) -> Result<Stock, String> {
    let mut client = Client::new(target, TIMEOUT);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = Stock {
            sold: 0,
            reserved: 0,
            bad: Vec::new(),
        };
        for id in products {
            let answer = client.call(Method::GET, &format!("/products/{id}"), &[], b"").await;
            let p = answer.body();
            let n = |f: &str| p[f].as_i64().unwrap_or(i64::MIN);
            if answer.status() != Some(200)
                || n("available") < 0
                || n("available") + n("reserved") + n("sold") != n("stock_total")
                || n("stock_total") != stock
            {
                s.bad.push(answer.describe());
            }
            s.sold += n("sold");
            s.reserved += n("reserved");
        }
        if s.reserved == 0 || Instant::now() > deadline {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn stock(args: &OrdersArgs, s: &Stock, rec: &Records) -> Vec<Check> {
    let told = rec.completed_quantity();
    let total_stock = args.stock * args.products as i64;
    vec![
        Check::new(
            "stock_invariant",
            s.bad.is_empty(),
            format!(
                "available + reserved + sold = stock_total and available >= 0 on every product; bad: {:?}",
                s.bad
            ),
        ),
        Check::new(
            "holds_released",
            s.reserved == 0,
            format!(
                "{} still reserved 5 s after the load (holds of 1 s left to expire)",
                s.reserved
            ),
        ),
        Check::new(
            "sold_equals_completed",
            s.sold == told,
            format!("Redis sold {}, the driver was told {told} completed", s.sold),
        ),
        Check::new(
            "never_oversold",
            s.sold <= total_stock,
            format!(
                "sold {} of {total_stock}, {} OUT_OF_STOCK refusals{}",
                s.sold,
                rec.out_of_stock,
                if rec.out_of_stock > 0 {
                    " (demand exceeded stock)"
                } else {
                    ""
                }
            ),
        ),
    ]
}

pub fn answers(rec: &Records, unresolved: &[String], unknown: usize) -> Vec<Check> {
    vec![
        Check::new(
            "idempotent_replays",
            rec.replays_differing == 0,
            format!(
                "{} keyed retries got the first answer (Idempotent-Replayed), {} did not",
                rec.replays_identical, rec.replays_differing
            ),
        ),
        Check::new(
            "no_unexpected_answer",
            rec.unexpected.is_empty(),
            format!("{:?}", rec.unexpected),
        ),
        Check::new(
            "outcomes_found",
            unresolved.is_empty(),
            format!(
                "{unknown} requests got no answer or a 503; {} of them could not be found out {:?}",
                unresolved.len(),
                &unresolved[..unresolved.len().min(3)]
            ),
        ),
    ]
}

/// Postgres's orders of the run's products against the driver's record.
pub async fn postgres(target: &Target, database_url: Option<&str>, products: &[u64], rec: &Records) -> Check {
    const NAME: &str = "orders_as_acknowledged";
    let Some(url) = database_url else {
        return Check::skipped(NAME, "no --database-url / DATABASE_URL");
    };
    if let Err(e) = engine::wait_flushed(target, Duration::from_secs(120)).await {
        return Check::fail(NAME, e);
    }
    let mut pg = match connect_pg(url).await {
        Ok(pg) => pg,
        Err(e) => return Check::fail(NAME, e),
    };
    let ids: Vec<i64> = products.iter().map(|p| *p as i64).collect();
    let query = sqlx::query_as::<_, (String, i64, i32, String)>(
        "SELECT id::text, product_id, quantity, status FROM orders WHERE product_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut pg);
    let rows = match tokio::time::timeout(QUERY_TIMEOUT, query).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => return Check::fail(NAME, e.to_string()),
        Err(_) => return Check::fail(NAME, "query timed out"),
    };
    let told: BTreeSet<&str> = rec.told.iter().map(|t| t.id.as_str()).collect();
    let held: BTreeSet<&str> = rows.iter().map(|(id, ..)| id.as_str()).collect();
    let mut completed_told: BTreeMap<i64, i64> = BTreeMap::new();
    for t in rec.told.iter().filter(|t| t.completed) {
        *completed_told.entry(t.product as i64).or_default() += t.quantity;
    }
    let mut completed_held: BTreeMap<i64, i64> = BTreeMap::new();
    for (_, product, quantity, status) in &rows {
        if status == "completed" {
            *completed_held.entry(*product).or_default() += i64::from(*quantity);
        }
    }
    let sample = |d: Vec<&&str>| format!("{:?}", &d[..d.len().min(3)]);
    Check::new(
        NAME,
        told == held && completed_told == completed_held && rows.len() == told.len(),
        format!(
            "{} rows, the driver knows {} orders; missing {}, never acknowledged {}; completed quantity per product \
             in Postgres {}, told {}",
            rows.len(),
            told.len(),
            sample(told.difference(&held).collect()),
            sample(held.difference(&told).collect()),
            completed_held.values().sum::<i64>(),
            completed_told.values().sum::<i64>()
        ),
    )
}

/// `GET /admin/reconcile` (Postgres's history against Redis's live counts);
/// it waits for the flush itself, and answers 503 `BACKLOG_NOT_FLUSHED`
/// until then.
pub async fn reconcile(target: &Target, admin_token: &str) -> Check {
    let auth = format!("Bearer {admin_token}");
    let mut client = Client::new(target, TIMEOUT);
    let mut last = Value::Null;
    for _ in 0..12 {
        let answer = client
            .call(Method::GET, "/admin/reconcile", &[("authorization", &auth)], b"")
            .await;
        last = answer.body().clone();
        if answer.status() == Some(200) {
            break;
        }
    }
    Check::new(
        "reconcile_ok",
        last["ok"] == json!(true),
        format!("Postgres = Redis: {last}"),
    )
}
