//! The invariants of the drop and kill cases (the fault suite's,
//! tests/api/faults/mod.rs), checked against what the clients were told
//! and what the unknown outcomes were found to be: Postgres and Redis must
//! hold exactly the acknowledged purchases, orders and wallet transactions
//! plus the unknown ones that took effect, nothing else.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use fred::prelude::ClientLike;
use fred::types::{ClusterHash, CustomCommand};
use serde_json::json;
use sqlx::PgConnection;

use crate::common::engine;
use crate::common::fmt::{mib, ms};
use crate::common::http::{Client, Method, Target};
use crate::common::stats::quantile_ms;
use crate::common::stores::sale_key;
use crate::common::verdict::Check;

use super::flood::{FloodConfig, FloodRun};
use super::mixed::{DECIDE_WITHIN, ITEMS_PER_BUYER, Mix, Order, Product, Purchase, Records, Resolution, TIMEOUT};

/// Where the checks look.
pub struct Stores<'a> {
    pub target: &'a Target,
    pub admin_token: &'a str,
    pub redis: &'a fred::prelude::Client,
    pub key_prefix: &'a str,
    pub pg: &'a mut PgConnection,
}

/// The invariants of a case, named `<case>_<invariant>`.
pub async fn mixed(
    case: &str,
    stores: Stores<'_>,
    products: &[Product],
    mix: &Mix,
    records: &Records,
    resolution: &Resolution,
) -> Vec<Check> {
    let name = |n: &str| format!("{case}_{n}");
    let mut out = Vec::new();
    if let Err(e) = engine::wait_flushed(stores.target, Duration::from_secs(120)).await {
        out.push(Check::fail(name("outbox_flushed"), e));
    }
    out.push(Check::new(
        name("answers_expected"),
        records.unexpected.is_empty(),
        format!(
            "{} unexpected answers {:?}",
            records.unexpected.len(),
            first(&records.unexpected)
        ),
    ));
    out.push(Check::new(
        name("outcomes_found"),
        resolution.unresolved.is_empty() && records.wallet_undecided.is_empty(),
        format!(
            "{} unknown outcomes could not be found {:?}; {} wallet transactions still 503 after {DECIDE_WITHIN:?}",
            resolution.unresolved.len(),
            first(&resolution.unresolved),
            records.wallet_undecided.len()
        ),
    ));
    out.push(Check::new(
        name("no_code_used_for_own_purchase"),
        records.own_code_used.is_empty(),
        format!(
            "{} buyers told CODE_USED for the purchase they sent once {:?}",
            records.own_code_used.len(),
            first(&records.own_code_used)
        ),
    ));

    // Purchases: Postgres and Redis hold exactly what the buyers know.
    let expected: Vec<&Purchase> = records.purchases.iter().chain(&resolution.purchases_taken).collect();
    let pattern = format!("{}-b%", mix.tag);
    match sqlx::query_as::<_, (String, i64)>("SELECT code, item_id FROM purchases WHERE user_id LIKE $1")
        .bind(&pattern)
        .fetch_all(&mut *stores.pg)
        .await
    {
        Ok(rows) => {
            let known: BTreeSet<&str> = expected.iter().map(|p| p.code.as_str()).collect();
            let held: BTreeSet<&str> = rows.iter().map(|(c, _)| c.as_str()).collect();
            let items: HashMap<&str, u64> = expected.iter().map(|p| (p.code.as_str(), p.item)).collect();
            let wrong_item = rows
                .iter()
                .filter(|(c, i)| items.get(c.as_str()).is_some_and(|known| *known as i64 != *i))
                .count();
            out.push(Check::new(
                name("purchases_exactly_once_in_postgres"),
                known == held && wrong_item == 0,
                format!(
                    "{} rows, buyers know {} ({} acknowledged + {} 503s that took effect); missing {:?}, unknown to \
                     the buyers {:?}, wrong item {wrong_item}",
                    rows.len(),
                    known.len(),
                    records.purchases.len(),
                    resolution.purchases_taken.len(),
                    known.difference(&held).take(3).collect::<Vec<_>>(),
                    held.difference(&known).take(3).collect::<Vec<_>>()
                ),
            ));
        }
        Err(e) => out.push(Check::fail(name("purchases_exactly_once_in_postgres"), e.to_string())),
    }
    let mut per_sale: BTreeMap<i64, i64> = BTreeMap::new();
    for purchase in &expected {
        *per_sale.entry(purchase.sale().unwrap_or(-1)).or_default() += 1;
    }
    let mut sold_detail = Vec::new();
    let mut sold_ok = true;
    for (sale, count) in &per_sale {
        // A case's items are its own (ranges far apart, byte-aligned): the
        // sale's sold bits in its range.
        let key = match sale_key(stores.redis, stores.key_prefix, *sale).await {
            Ok(key) => format!("{key}:sold"),
            Err(e) => {
                sold_ok = false;
                sold_detail.push(format!("sale {sale}: {e}"));
                continue;
            }
        };
        let first_bit = mix.item_base;
        let last_bit = mix.item_base + mix.buyers as u64 * ITEMS_PER_BUYER;
        let bits = stores
            .redis
            .custom::<i64, _>(
                CustomCommand::new_static("BITCOUNT", ClusterHash::FirstKey, false),
                vec![key.clone(), (first_bit / 8).to_string(), (last_bit / 8).to_string()],
            )
            .await;
        match bits {
            Ok(n) => {
                sold_ok &= n == *count;
                sold_detail.push(format!("sale {sale}: {n} sold bits, buyers bought {count}"));
            }
            Err(e) => {
                sold_ok = false;
                sold_detail.push(format!("BITCOUNT {key}: {e}"));
            }
        }
    }
    out.push(Check::new(name("redis_sold_bits"), sold_ok, sold_detail.join("; ")));

    // Orders.
    let orders: Vec<&Order> = records
        .orders
        .iter()
        .chain(&resolution.orders_taken)
        .chain(&resolution.orders_by_retry)
        .collect();
    let ids: Vec<i64> = products.iter().map(|p| p.id as i64).collect();
    match sqlx::query_as::<_, (String, i64, i32, String)>(
        "SELECT id::text, product_id, quantity, status FROM orders WHERE product_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *stores.pg)
    .await
    {
        Ok(rows) => {
            let known: BTreeSet<&str> = orders.iter().map(|o| o.id.as_str()).collect();
            let held: BTreeSet<&str> = rows.iter().map(|(id, ..)| id.as_str()).collect();
            out.push(Check::new(
                name("orders_exactly_once_in_postgres"),
                known == held,
                format!(
                    "{} rows, orderers know {} ({} acknowledged + {} 503s that took effect + {} made by their keyed \
                     retry); missing {:?}, unknown to the orderers {:?}",
                    rows.len(),
                    known.len(),
                    records.orders.len(),
                    resolution.orders_taken.len(),
                    resolution.orders_by_retry.len(),
                    known.difference(&held).take(3).collect::<Vec<_>>(),
                    held.difference(&known).take(3).collect::<Vec<_>>()
                ),
            ));
            let mut client = Client::new(stores.target, TIMEOUT);
            let mut detail = Vec::new();
            let mut ok = true;
            for product in products {
                let told: i64 = orders
                    .iter()
                    .filter(|o| o.product == product.id)
                    .map(|o| o.quantity)
                    .sum();
                let completed: i64 = rows
                    .iter()
                    .filter(|(_, p, _, s)| *p as u64 == product.id && s == "completed")
                    .map(|(_, _, q, _)| i64::from(*q))
                    .sum();
                let live = client
                    .call_json(Method::GET, &format!("/products/{}", product.id), &[], "")
                    .await;
                let n = |f: &str| live.body()[f].as_i64().unwrap_or(i64::MIN);
                let adds_up = n("available") >= 0
                    && n("available") + n("reserved") + n("sold") == n("stock_total")
                    && n("stock_total") == product.stock;
                ok &= n("sold") == told && completed == told && adds_up;
                detail.push(format!(
                    "product {}: Redis sold {}, Postgres completed {completed}, told {told}{}",
                    product.id,
                    n("sold"),
                    if adds_up { "" } else { " (stock does not add up)" }
                ));
            }
            out.push(Check::new(name("stock_sold_as_told"), ok, detail.join("; ")));
        }
        Err(e) => out.push(Check::fail(name("orders_exactly_once_in_postgres"), e.to_string())),
    }

    // Wallet.
    let pattern = format!("{}-p%", mix.tag);
    match sqlx::query_as::<_, (String, String, i64)>(
        "SELECT player_id, reference_id, cash_delta_minor FROM wallet_entries \
         WHERE player_id LIKE $1 AND type IN ('deposit', 'bet')",
    )
    .bind(&pattern)
    .fetch_all(&mut *stores.pg)
    .await
    {
        Ok(rows) => {
            let known: BTreeSet<(&str, &str)> = records
                .wallet
                .iter()
                .map(|t| (t.player.as_str(), t.reference.as_str()))
                .collect();
            let held: BTreeSet<(&str, &str)> = rows.iter().map(|(p, r, _)| (p.as_str(), r.as_str())).collect();
            let mut client = Client::new(stores.target, TIMEOUT);
            let mut bad = Vec::new();
            for player in &records.players {
                let told: i64 = records
                    .wallet
                    .iter()
                    .filter(|t| t.player == *player)
                    .map(|t| t.delta)
                    .sum();
                let ledger: i64 = rows.iter().filter(|(p, ..)| p == player).map(|(.., d)| d).sum();
                let live = client
                    .call_json(Method::GET, &format!("/wallet/{player}?currency=EUR"), &[], "")
                    .await;
                let cash = match live.status() {
                    Some(200) => live.body()["cash_minor"].as_i64().unwrap_or(i64::MIN),
                    Some(404) => 0,
                    _ => i64::MIN,
                };
                if cash != told || ledger != told {
                    bad.push(format!("{player}: Redis {cash}, ledger {ledger}, told {told}"));
                }
            }
            out.push(Check::new(
                name("wallet_as_told"),
                known == held && bad.is_empty(),
                format!(
                    "{} ledger entries, players told of {}; missing {:?}, unknown {:?}; balances off: {bad:?}",
                    rows.len(),
                    known.len(),
                    known.difference(&held).take(3).collect::<Vec<_>>(),
                    held.difference(&known).take(3).collect::<Vec<_>>()
                ),
            ));
        }
        Err(e) => out.push(Check::fail(name("wallet_as_told"), e.to_string())),
    }

    // Reconcile: Postgres's history against Redis's live counts, everything.
    let auth = format!("Bearer {}", stores.admin_token);
    let mut client = Client::new(stores.target, TIMEOUT);
    let mut last = String::new();
    let mut ok = false;
    for _ in 0..6 {
        let reply = client
            .call_json(Method::GET, "/admin/reconcile", &[("authorization", &auth)], "")
            .await;
        last = reply.describe();
        if reply.status() == Some(200) {
            ok = reply.body()["ok"] == json!(true);
            break;
        }
    }
    out.push(Check::new(name("reconcile_ok"), ok, last));
    out
}

fn first(list: &[String]) -> &[String] {
    &list[..list.len().min(3)]
}

/// The flood's invariants: admitted requests keep a bounded latency, the
/// rest is told 503 with `Retry-After` at once, nothing else, and the
/// engine's memory stays bounded.
pub fn flood(run: &FloodRun, cfg: &FloodConfig) -> Vec<Check> {
    let mut out = Vec::new();
    if run.capacity < 1.0 {
        out.push(Check::fail(
            "flood_capacity",
            "the engine served nothing in the closed loop",
        ));
        return out;
    }
    let (admitted, shed) = (&run.admitted, &run.shed);
    let others: Vec<String> = run
        .statuses
        .iter()
        .filter(|(k, _)| *k != "200" && !k.starts_with("503"))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    out.push(Check::new(
        "flood_served",
        !admitted.is_empty(),
        format!("{} admitted during the flood", admitted.len()),
    ));
    let shed_detail = format!(
        "{} shed with 503 (sent at {:.1}x capacity, {:.0}x asked), {} of them without Retry-After",
        shed.len(),
        run.reached,
        cfg.factor,
        run.without_retry_after
    );
    // A driver that could not send above the capacity did not overload the
    // engine: nothing to shed says nothing about it.
    out.push(if shed.is_empty() && run.reached < 1.5 {
        Check::skipped(
            "flood_shed_with_503",
            format!(
                "{shed_detail}: the driver did not overload the engine (run it from another machine, or --threads)"
            ),
        )
    } else {
        Check::new(
            "flood_shed_with_503",
            !shed.is_empty() && run.without_retry_after == 0,
            shed_detail,
        )
    });
    out.push(Check::new(
        "flood_no_other_answer",
        others.is_empty(),
        format!("answers other than 200 and 503: {others:?}"),
    ));
    out.push(Check::new(
        "flood_admitted_p99",
        quantile_ms(admitted, 0.99) < ms(cfg.admitted_p99_max),
        format!(
            "admitted p99 {:.1} ms (unloaded {:.1} ms), bound {:?}",
            quantile_ms(admitted, 0.99),
            quantile_ms(&run.unloaded, 0.99),
            cfg.admitted_p99_max
        ),
    ));
    out.push(if shed.is_empty() {
        Check::skipped("flood_shed_fast", "nothing was shed")
    } else {
        Check::new(
            "flood_shed_fast",
            quantile_ms(shed, 0.99) < ms(cfg.shed_p99_max),
            format!(
                "shed p99 {:.1} ms, bound {:?}",
                quantile_ms(shed, 0.99),
                cfg.shed_p99_max
            ),
        )
    });
    out.push(match (run.rss_before, run.peak) {
        (Some(before), Some(peak)) => Check::new(
            "flood_memory_bounded",
            peak.hwm_kib < cfg.peak_rss_max_mib * 1024,
            format!(
                "engine RSS {:.1} MiB before, peak {:.1} MiB during the flood (VmHWM), bound {} MiB",
                mib(before.rss_kib),
                mib(peak.hwm_kib),
                cfg.peak_rss_max_mib
            ),
        ),
        _ => Check::skipped(
            "flood_memory_bounded",
            "no --engine-pid (or its /proc/<pid>/status is not readable)",
        ),
    });
    out
}
