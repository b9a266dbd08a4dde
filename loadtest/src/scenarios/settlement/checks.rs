//! The settlement run's checks: each run's CSV equal to psql's byte for
//! byte, its `settlements` rows equal to a direct `GROUP BY`, `processed` =
//! `total` = the PAID transactions of the range; and the large job's peak
//! RSS within 64 MiB of the small one's.

use sqlx::PgPool;

use crate::common::verdict::Check;

/// The memory target: the large job's peak RSS at most this much
/// above the small job's.
pub const RSS_GROWTH_LIMIT_MIB: f64 = 64.0;

/// Rows of `settlements` in the range that differ from a direct GROUP BY
/// over `transactions`, both ways.
pub async fn rows_differing(db: &PgPool, from: &str, to: &str) -> Result<i64, String> {
    let direct = "SELECT merchant_id, paid_at::date AS date, sum(amount_cents)::bigint, sum(fee_cents)::bigint,
                         (sum(amount_cents) - sum(fee_cents))::bigint, count(*)::int
                  FROM transactions WHERE status = 'PAID' AND paid_at >= $1::date AND paid_at < $2::date + 1
                  GROUP BY 1, 2";
    let stored = "SELECT merchant_id, date, gross_cents, fee_cents, net_cents, txn_count
                  FROM settlements WHERE date BETWEEN $1::date AND $2::date";
    let sql = format!(
        "SELECT (SELECT count(*) FROM ({direct} EXCEPT {stored}) a) + (SELECT count(*) FROM ({stored} EXCEPT {direct}) b)"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(from)
        .bind(to)
        .fetch_one(db)
        .await
        .map_err(|e| e.to_string())
}

/// One timed run against the SQL run directly.
pub fn run(
    n: usize,
    csv_equal: bool,
    differing: i64,
    processed_total: (&serde_json::Value, &serde_json::Value),
    paid: i64,
) -> Vec<Check> {
    let (processed, total) = processed_total;
    vec![
        Check::new(
            format!("run{n}_csv_as_psql"),
            csv_equal,
            if csv_equal {
                "the engine's CSV equals psql's byte for byte"
            } else {
                "the engine's CSV differs from psql's"
            },
        ),
        Check::new(
            format!("run{n}_rows_as_group_by"),
            differing == 0,
            format!("{differing} settlements rows differ from a direct GROUP BY over transactions (both ways)"),
        ),
        Check::new(
            format!("run{n}_counts"),
            *processed == paid && *total == paid,
            format!("processed {processed}, total {total}, PAID transactions of the range {paid}"),
        ),
    ]
}

/// The large job's peak RSS against the small one's.
pub fn rss_growth(growth: Option<f64>) -> Check {
    match growth {
        Some(g) => Check::new(
            "rss_growth",
            g <= RSS_GROWTH_LIMIT_MIB,
            format!("peak RSS growth small -> large job {g:.1} MiB (limit {RSS_GROWTH_LIMIT_MIB} MiB)"),
        ),
        None => Check::skipped(
            "rss_growth",
            "no --engine-pid, or no --small-from/--small-to job to compare with",
        ),
    }
}
