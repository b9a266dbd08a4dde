//! The wallet run's invariants: every answer expected, every event of an
//! SSE player delivered, every unknown outcome found out; then, once the
//! outbox is flushed, each player's balances as its last answer told them,
//! the ledger holding exactly the transactions the driver was told of (by
//! transaction id: the ledger's unique reference could never show a doubled
//! request as a second row, a second id could), and each account's Redis
//! balances equal to the sums of its ledger rows.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use sqlx::PgConnection;

use crate::common::http::{Client, Method, Target};
use crate::common::stores::QUERY_TIMEOUT;
use crate::common::verdict::Check;

use super::load::{Records, TIMEOUT};

/// What a run's answers and events showed.
pub fn answers(rec: &Records, missing_events: usize, events: u64, unresolved: &[String]) -> Vec<Check> {
    vec![
        Check::new(
            "answers_expected",
            rec.unexpected == 0,
            format!(
                "{} answers other than 200, 409, 422 (503s and lost requests included) {:?}",
                rec.unexpected,
                &rec.unexpected_samples[..rec.unexpected_samples.len().min(3)]
            ),
        ),
        Check::new(
            "events_delivered",
            missing_events == 0,
            format!("{events} balance events of the SSE players delivered, {missing_events} never came"),
        ),
        Check::new(
            "outcomes_found",
            unresolved.is_empty(),
            format!(
                "{} transactions without a known outcome after sending them again {:?}",
                unresolved.len(),
                &unresolved[..unresolved.len().min(3)]
            ),
        ),
    ]
}

/// Each player's live balances (`GET /wallet`) against its last answer,
/// and against the sums of its ledger rows (or, without them, the
/// conservation check that says why).
pub async fn balances(
    target: &Target,
    players: &[String],
    rec: &Records,
    ledger: Result<&HashMap<String, (i64, i64, i64)>, Check>,
) -> Result<Vec<Check>, String> {
    let mut client = Client::new(target, TIMEOUT);
    let (mut off_told, mut off_ledger, mut entries) = (Vec::new(), Vec::new(), 0);
    for player in players {
        let live = client
            .call(Method::GET, &format!("/wallet/{player}?currency=EUR"), &[], b"")
            .await;
        if live.status() != Some(200) {
            return Err(format!("GET /wallet/{player}: {}", live.describe()));
        }
        let redis = (
            live.body()["cash_minor"].as_i64().unwrap_or(-1),
            live.body()["bonus_minor"].as_i64().unwrap_or(-1),
        );
        if !rec.uncertain.contains(player) && rec.balances.get(player) != Some(&redis) {
            off_told.push(format!(
                "{player}: Redis {redis:?}, last told {:?}",
                rec.balances.get(player)
            ));
        }
        if let Ok(ledger) = &ledger {
            let (cash, bonus, n) = ledger.get(player).copied().unwrap_or((0, 0, 0));
            entries += n;
            if redis != (cash, bonus) {
                off_ledger.push(format!("{player}: Redis {redis:?}, ledger sums ({cash}, {bonus})"));
            }
        }
    }
    let mut out = vec![Check::new(
        "balances_as_told",
        off_told.is_empty(),
        format!(
            "{} players (less {} with an unknown outcome): {} balances differ from their last answer {:?}",
            players.len(),
            rec.uncertain.len(),
            off_told.len(),
            &off_told[..off_told.len().min(3)]
        ),
    )];
    out.push(match ledger {
        Ok(_) => Check::new(
            "conservation",
            off_ledger.is_empty(),
            format!(
                "{} accounts, {entries} ledger rows: {} differ from their ledger sums {:?}",
                players.len(),
                off_ledger.len(),
                &off_ledger[..off_ledger.len().min(3)]
            ),
        ),
        Err(check) => check,
    });
    Ok(out)
}

/// Per player: sum of cash deltas, of bonus deltas, and the row count.
pub async fn ledger_sums(pg: &mut PgConnection, prefix: &str) -> Result<HashMap<String, (i64, i64, i64)>, String> {
    let query = sqlx::query_as::<_, (String, i64, i64, i64)>(
        "SELECT player_id, sum(cash_delta_minor)::bigint, sum(bonus_delta_minor)::bigint, count(*)
         FROM wallet_entries WHERE player_id LIKE $1 GROUP BY player_id",
    )
    .bind(format!("{prefix}%"))
    .fetch_all(&mut *pg);
    match tokio::time::timeout(QUERY_TIMEOUT, query).await {
        Ok(Ok(rows)) => Ok(rows.into_iter().map(|(p, c, b, n)| (p, (c, b, n))).collect()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the ledger sums timed out".into()),
    }
}

/// The ledger rows of the clients' own transactions against their ids.
pub async fn ledger_as_acknowledged(pg: &mut PgConnection, prefix: &str, rec: &Records) -> Check {
    const NAME: &str = "ledger_as_acknowledged";
    let query = sqlx::query_scalar::<_, String>(
        "SELECT transaction_id FROM wallet_entries
         WHERE player_id LIKE $1 AND type IN ('deposit', 'bet', 'win', 'refund')",
    )
    .bind(format!("{prefix}%"))
    .fetch_all(&mut *pg);
    let rows = match tokio::time::timeout(QUERY_TIMEOUT, query).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => return Check::fail(NAME, e.to_string()),
        Err(_) => return Check::fail(NAME, "query timed out"),
    };
    let told: BTreeSet<&str> = rec.told.iter().map(String::as_str).collect();
    let held: BTreeSet<&str> = rows.iter().map(String::as_str).collect();
    let sample = |d: Vec<&&str>| format!("{:?}", &d[..d.len().min(3)]);
    Check::new(
        NAME,
        told == held && rows.len() == held.len(),
        format!(
            "{} ledger rows of deposits, bets, wins and refunds; the driver was told of {} transactions; missing {}, \
             never acknowledged {}",
            rows.len(),
            told.len(),
            sample(told.difference(&held).collect()),
            sample(held.difference(&told).collect())
        ),
    )
}

/// How long the outbox may take to drain after the load.
pub const FLUSH_WITHIN: Duration = Duration::from_secs(60);
