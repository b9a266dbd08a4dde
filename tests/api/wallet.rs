//! The wallet: exact money movement by reference, bonus wagering with exact
//! numbers, conservation between Redis and the Postgres ledger, live events
//! over SSE (also across two engines), a crash under load, bad input.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::interfaces::ClientLike;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    EngineProcess, HttpClient, Reply, TestApp, create_database, database_url, delete_keys, drop_database, engine_keys,
    http_client, redis_client, scaled, send, spawn_app, unique_name, wait_for_acknowledged,
};

fn tx_body(player: &str, kind: &str, amount: i64, reference: &str, extra: Value) -> String {
    let mut body = json!({
        "player_id": player, "currency": "EUR", "type": kind,
        "amount_minor": amount, "reference_id": reference,
    });
    if let (Some(map), Value::Object(extra)) = (body.as_object_mut(), extra) {
        map.extend(extra);
    }
    body.to_string()
}

async fn post_tx(app: &TestApp, player: &str, kind: &str, amount: i64, reference: &str, extra: Value) -> Reply {
    app.request(
        Method::POST,
        "/wallet/transactions",
        Some(&tx_body(player, kind, amount, reference, extra)),
    )
    .await
}

async fn ok_tx(app: &TestApp, player: &str, kind: &str, amount: i64, reference: &str, extra: Value) -> Value {
    let reply = post_tx(app, player, kind, amount, reference, extra).await;
    assert_eq!(reply.status, StatusCode::OK, "{kind} {reference}: {:?}", reply.body);
    reply.body
}

async fn grant(app: &TestApp, body: Value) -> Value {
    let reply = app.admin(Method::POST, "/bonuses", Some(&body.to_string())).await;
    assert_eq!(reply.status, StatusCode::CREATED, "grant: {:?}", reply.body);
    reply.body
}

async fn wallet(app: &TestApp, player: &str) -> Value {
    let reply = app.get(&format!("/wallet/{player}?currency=EUR")).await;
    assert_eq!(reply.status, StatusCode::OK, "wallet {player}: {:?}", reply.body);
    reply.body
}

fn balances(body: &Value) -> (i64, i64) {
    (
        body["cash_minor"].as_i64().expect("cash"),
        body["bonus_minor"].as_i64().expect("bonus"),
    )
}

/// Every account in Postgres: the sums of its entries equal its Redis
/// balances and its `wallet_accounts` row; the per-type sums add up to the
/// balance too. Returns the number of accounts checked.
async fn assert_conserved(app: &TestApp) -> usize {
    app.wait_flushed(Duration::from_secs(30)).await;
    let sums: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT player_id, currency::text, sum(cash_delta_minor)::bigint, sum(bonus_delta_minor)::bigint
         FROM wallet_entries GROUP BY player_id, currency",
    )
    .fetch_all(&app.db)
    .await
    .expect("sums");
    for (player, currency, cash, bonus) in &sums {
        let redis = app.get(&format!("/wallet/{player}?currency={currency}")).await;
        assert_eq!(balances(&redis.body), (*cash, *bonus), "{player}: Redis vs ledger sums");
        let by_type: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT type, sum(cash_delta_minor)::bigint, sum(bonus_delta_minor)::bigint
             FROM wallet_entries WHERE player_id = $1 AND currency = $2 GROUP BY type",
        )
        .bind(player)
        .bind(currency)
        .fetch_all(&app.db)
        .await
        .expect("by type");
        let cash_by_type: i64 = by_type.iter().map(|(_, c, _)| c).sum();
        let bonus_by_type: i64 = by_type.iter().map(|(_, _, b)| b).sum();
        assert_eq!(
            (cash_by_type, bonus_by_type),
            (*cash, *bonus),
            "{player}: per-type sums"
        );
        let row: (i64, i64) = sqlx::query_as(
            "SELECT cash_minor, bonus_minor FROM wallet_accounts WHERE player_id = $1 AND currency = $2",
        )
        .bind(player)
        .bind(currency)
        .fetch_one(&app.db)
        .await
        .expect("account row");
        assert_eq!(row, (*cash, *bonus), "{player}: wallet_accounts");
    }
    sums.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_bets_on_500_never_overdraw() {
    let app = spawn_app(&[]).await;
    ok_tx(&app, "p1", "deposit", 500, "dep-1", json!({})).await;
    let mut bets = Vec::new();
    for i in 0..1000 {
        let (http, addr) = (app.http.clone(), app.addr);
        bets.push(tokio::spawn(async move {
            let body = tx_body("p1", "bet", 1, &format!("bet-{i}"), json!({"game": "slots"}));
            send(&http, addr, Method::POST, "/wallet/transactions", Some(&body))
                .await
                .expect("answer")
        }));
    }
    let mut ok = 0;
    for bet in bets {
        let reply = bet.await.expect("task");
        match reply.status {
            StatusCode::OK => {
                ok += 1;
                assert!(reply.body["cash_minor"].as_i64().expect("cash") >= 0);
            }
            StatusCode::CONFLICT => assert_eq!(reply.error_code(), "INSUFFICIENT_FUNDS"),
            other => panic!("unexpected {other}: {:?}", reply.body),
        }
    }
    assert_eq!(ok, 500);
    assert_eq!(balances(&wallet(&app, "p1").await), (0, 0));
    assert_conserved(&app).await;
    let (entries, min_after): (i64, i64) =
        sqlx::query_as("SELECT count(*), min(cash_after_minor) FROM wallet_entries WHERE type = 'bet'")
            .fetch_one(&app.db)
            .await
            .expect("entries");
    assert_eq!(entries, 500);
    assert_eq!(min_after, 0, "never negative");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_reference_one_effect_and_the_same_answer() {
    let app = spawn_app(&[]).await;
    ok_tx(&app, "p2", "deposit", 100, "dep-1", json!({})).await;
    let mut calls = Vec::new();
    for _ in 0..50 {
        let (http, addr) = (app.http.clone(), app.addr);
        calls.push(tokio::spawn(async move {
            let body = tx_body("p2", "bet", 10, "bet-once", json!({"game": "slots"}));
            send(&http, addr, Method::POST, "/wallet/transactions", Some(&body))
                .await
                .expect("answer")
        }));
    }
    let mut bodies = HashSet::new();
    let mut replayed = 0;
    for call in calls {
        let reply = call.await.expect("task");
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        bodies.insert(reply.body.to_string());
        if reply.headers.get("idempotent-replayed").is_some_and(|v| v == "true") {
            replayed += 1;
        }
    }
    assert_eq!(bodies.len(), 1, "50 identical answers: {bodies:?}");
    assert_eq!(replayed, 49, "all but the first are replays");
    assert_eq!(balances(&wallet(&app, "p2").await), (90, 0), "one effect");

    // The same reference and type with other content: 422 naming the field.
    for (extra, amount, field) in [
        (json!({"game": "slots"}), 11, "amount_minor"),
        (json!({"game": "table"}), 10, "game"),
    ] {
        let reply = post_tx(&app, "p2", "bet", amount, "bet-once", extra).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", reply.body);
        assert_eq!(reply.error_code(), "REFERENCE_REUSED");
        let message = reply.body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(field), "{message} names {field}");
    }
    let mut other_currency: Value =
        serde_json::from_str(&tx_body("p2", "bet", 10, "bet-once", json!({"game":"slots"}))).expect("json");
    other_currency["currency"] = json!("USD");
    let reply = app
        .request(Method::POST, "/wallet/transactions", Some(&other_currency.to_string()))
        .await;
    assert_eq!(reply.error_code(), "REFERENCE_REUSED");
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("currency")
    );
    // The same reference with another type is another transaction.
    ok_tx(&app, "p2", "deposit", 5, "bet-once", json!({})).await;
    // A refused request is not recorded: after funds arrive, it applies.
    let refused = post_tx(&app, "p2", "withdrawal", 1000, "wd-1", json!({})).await;
    assert_eq!(refused.error_code(), "INSUFFICIENT_FUNDS");
    ok_tx(&app, "p2", "deposit", 1000, "dep-2", json!({})).await;
    ok_tx(&app, "p2", "withdrawal", 1000, "wd-1", json!({})).await;
    assert_eq!(balances(&wallet(&app, "p2").await), (95, 0));

    assert_conserved(&app).await;
    let bets: i64 = sqlx::query_scalar("SELECT count(*) FROM wallet_entries WHERE reference_id = 'bet-once'")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(bets, 2, "one bet and one deposit under that reference");
    app.finish().await;
}

/// `(reference_id, type)` is unique across players (a reference is an outside
/// system's id for one money movement): the first account to use a reference
/// owns it, even under a race.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reference_belongs_to_one_player() {
    let app = spawn_app(&[]).await;
    ok_tx(&app, "ref-a", "deposit", 100, "shared-1", json!({})).await;
    let other = post_tx(&app, "ref-b", "deposit", 100, "shared-1", json!({})).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", other.body);
    assert_eq!(other.error_code(), "REFERENCE_REUSED");
    let message = other.body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("player_id"), "{message} names player_id");
    let untouched = app.get("/wallet/ref-b?currency=EUR").await;
    assert_eq!(
        untouched.error_code(),
        "ACCOUNT_NOT_FOUND",
        "no account was made for ref-b"
    );
    // The owner repeating it is a replay; another type is another transaction.
    let again = post_tx(&app, "ref-a", "deposit", 100, "shared-1", json!({})).await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_eq!(
        again.headers.get("idempotent-replayed").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    ok_tx(&app, "ref-b", "deposit", 50, "ref-b-dep", json!({})).await;
    ok_tx(&app, "ref-b", "bet", 10, "shared-1", json!({"game": "slots"})).await;

    // 50 players race for one reference: exactly one deposit lands.
    let mut calls = Vec::new();
    for p in 0..50 {
        let (http, addr) = (app.http.clone(), app.addr);
        calls.push(tokio::spawn(async move {
            let body = tx_body(&format!("racer-{p}"), "deposit", 10, "race-1", json!({}));
            send(&http, addr, Method::POST, "/wallet/transactions", Some(&body))
                .await
                .expect("answer")
        }));
    }
    let (mut ok, mut reused) = (0, 0);
    for call in calls {
        let reply = call.await.expect("task");
        match reply.status {
            StatusCode::OK => ok += 1,
            StatusCode::UNPROCESSABLE_ENTITY if reply.error_code() == "REFERENCE_REUSED" => reused += 1,
            other => panic!("unexpected {other}: {:?}", reply.body),
        }
    }
    assert_eq!((ok, reused), (1, 49));
    let mut credited = 0;
    for p in 0..50 {
        let reply = app.get(&format!("/wallet/racer-{p}?currency=EUR")).await;
        if reply.status == StatusCode::OK {
            credited += balances(&reply.body).0;
        }
    }
    assert_eq!(credited, 10, "one deposit of 10 across all racers");

    assert_conserved(&app).await;
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM wallet_entries WHERE reference_id IN ('shared-1', 'race-1') AND type = 'deposit'",
    )
    .fetch_one(&app.db)
    .await
    .expect("count");
    assert_eq!(rows, 2, "one deposit row per reference");
    app.finish().await;
}

/// A transaction as its client was told of it: (transaction id, player,
/// reference, type, amount).
type ToldTx = (String, String, String, String, i64);

/// Sends `body` twice at once (a client retrying before the first answer),
/// so the two race on one reference. Returns the transaction it was told of
/// (both copies, if both applied, name the same one), or `None` if both were
/// refused for funds. Checks no answer shows a negative balance.
async fn send_racing_twice(http: &HttpClient, addr: SocketAddr, body: &str) -> Option<ToldTx> {
    let (a, b) = tokio::join!(
        send(http, addr, Method::POST, "/wallet/transactions", Some(body)),
        send(http, addr, Method::POST, "/wallet/transactions", Some(body)),
    );
    let mut told: Option<ToldTx> = None;
    for reply in [a, b] {
        let reply = reply.expect("answer");
        match reply.status {
            StatusCode::OK => {
                let (cash, bonus) = balances(&reply.body);
                assert!(cash >= 0 && bonus >= 0, "overdrawn: {:?}", reply.body);
                let b = &reply.body;
                let this: ToldTx = (
                    b["transaction_id"].as_str().expect("transaction_id").to_owned(),
                    serde_json::from_str::<Value>(body).expect("body")["player_id"]
                        .as_str()
                        .expect("player")
                        .to_owned(),
                    b["reference_id"].as_str().expect("reference").to_owned(),
                    b["type"].as_str().expect("type").to_owned(),
                    b["amount_minor"].as_i64().expect("amount"),
                );
                if let Some(earlier) = &told {
                    assert_eq!(earlier, &this, "one reference, one transaction");
                }
                told = Some(this);
            }
            StatusCode::CONFLICT => assert_eq!(reply.error_code(), "INSUFFICIENT_FUNDS", "{:?}", reply.body),
            other => panic!("unexpected {other}: {:?}", reply.body),
        }
    }
    told
}

/// Several clients per account at once (four streams of transactions per
/// player, each request sent twice at once), with less money than the bets
/// ask for, so balance checks race: no answer and no ledger entry is ever
/// negative, the ledger replays to every balance it states, money is
/// conserved between Redis and Postgres, and the ledger holds exactly the
/// transactions the clients were told of.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conservation_after_a_mixed_concurrent_run() {
    let app = spawn_app(&[]).await;
    let players = 20;
    let streams_per_player = 4;
    let mut told: Vec<ToldTx> = Vec::new();
    let mut granted = HashSet::new();
    for p in 0..players {
        let (player, reference) = (format!("m{p}"), format!("m{p}-seed"));
        let seed = ok_tx(&app, &player, "deposit", 1_000, &reference, json!({})).await;
        let id = seed["transaction_id"].as_str().expect("transaction_id").to_owned();
        told.push((id, player.clone(), reference, "deposit".into(), 1_000));
        if p % 2 == 0 {
            let bonus = grant(
                &app,
                json!({"player_id": player, "currency": "EUR", "amount_minor": 2_000,
                       "wagering_multiplier": 3, "expires_in_secs": 3600,
                       "contributions": {"slots": 100, "table": 20}}),
            )
            .await;
            granted.insert(bonus["id"].as_str().expect("bonus id").to_owned());
        }
    }
    // Bets ask for ~11,500 per player; seed, deposits, wins, refunds and
    // bonus can bring 7,700 at most: every player runs short.
    let told = Arc::new(std::sync::Mutex::new(told));
    let refused: Arc<Vec<AtomicUsize>> = Arc::new((0..players).map(|_| AtomicUsize::new(0)).collect());
    let in_flight: Arc<Vec<AtomicUsize>> = Arc::new((0..players).map(|_| AtomicUsize::new(0)).collect());
    let most_in_flight = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for p in 0..players {
        for stream in 0..streams_per_player {
            let (http, addr) = (app.http.clone(), app.addr);
            let (told, refused, in_flight, most) =
                (told.clone(), refused.clone(), in_flight.clone(), most_in_flight.clone());
            tasks.push(tokio::spawn(async move {
                let player = format!("m{p}");
                let send_twice = |body: String| {
                    let (http, told, refused, in_flight, most) = (
                        http.clone(),
                        told.clone(),
                        refused.clone(),
                        in_flight.clone(),
                        most.clone(),
                    );
                    async move {
                        let now = in_flight[p].fetch_add(2, Ordering::SeqCst) + 2;
                        most.fetch_max(now, Ordering::SeqCst);
                        let outcome = send_racing_twice(&http, addr, &body).await;
                        in_flight[p].fetch_sub(2, Ordering::SeqCst);
                        match &outcome {
                            Some(tx) => told.lock().expect("lock").push(tx.clone()),
                            None => {
                                refused[p].fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        outcome.is_some()
                    }
                };
                for step in 0..15 {
                    let i = stream * 15 + step;
                    let game = ["slots", "table", "live"][i % 3];
                    // References are unique across players: each carries its player.
                    let bet_ref = format!("{player}-b{i}");
                    match i % 6 {
                        0..=2 => {
                            send_twice(tx_body(&player, "bet", 300 + i as i64, &bet_ref, json!({"game": game}))).await;
                        }
                        3 => {
                            if send_twice(tx_body(&player, "bet", 90, &bet_ref, json!({"game": game}))).await {
                                let win = json!({"bet_reference_id": bet_ref});
                                send_twice(tx_body(&player, "win", 300, &format!("{player}-w{i}"), win)).await;
                            }
                        }
                        4 => {
                            if send_twice(tx_body(&player, "bet", 70, &bet_ref, json!({"game": game}))).await {
                                let refund = json!({"bet_reference_id": bet_ref});
                                send_twice(tx_body(&player, "refund", 70, &format!("{player}-r{i}"), refund)).await;
                            }
                        }
                        _ => {
                            send_twice(tx_body(&player, "deposit", 100, &format!("{player}-d{i}"), json!({}))).await;
                        }
                    }
                }
                // One withdrawal per player forfeits whatever bonus is left.
                if stream == 0 {
                    let reference = format!("{player}-wd");
                    send_twice(tx_body(&player, "withdrawal", 100, &reference, json!({}))).await;
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("player task");
    }
    let most = most_in_flight.load(Ordering::SeqCst);
    let refused: Vec<usize> = refused.iter().map(|r| r.load(Ordering::SeqCst)).collect();
    println!("at most {most} requests in flight on one account; refused for funds per player: {refused:?}");
    assert!(most > 2, "requests of one account never overlapped");
    assert!(refused.iter().all(|&n| n > 0), "every player ran short: {refused:?}");

    assert_eq!(assert_conserved(&app).await, players);
    // The ledger, replayed entry by entry, gives every balance each entry
    // states, none of them negative: no two transactions of an account
    // decided on the same balance.
    let entries: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT player_id, seq, cash_delta_minor, bonus_delta_minor, cash_after_minor, bonus_after_minor
         FROM wallet_entries ORDER BY player_id, currency, seq",
    )
    .fetch_all(&app.db)
    .await
    .expect("entries");
    let mut running: HashMap<String, (i64, i64)> = HashMap::new();
    for (player, seq, cash_delta, bonus_delta, cash_after, bonus_after) in &entries {
        let balance = running.entry(player.clone()).or_default();
        *balance = (balance.0 + cash_delta, balance.1 + bonus_delta);
        assert_eq!(*balance, (*cash_after, *bonus_after), "{player}, entry {seq}");
        assert!(balance.0 >= 0 && balance.1 >= 0, "{player} overdrawn at entry {seq}");
    }
    // Exactly the transactions the clients were told of, as told.
    let mut in_postgres: Vec<ToldTx> = sqlx::query_as(
        "SELECT transaction_id, player_id, reference_id, type, amount_minor FROM wallet_entries
         WHERE type IN ('deposit', 'withdrawal', 'bet', 'win', 'refund')",
    )
    .fetch_all(&app.db)
    .await
    .expect("client entries");
    let mut told = told.lock().expect("lock").clone();
    told.sort();
    in_postgres.sort();
    assert_eq!(in_postgres.len(), told.len(), "ledger entries vs transactions told");
    assert_eq!(in_postgres, told, "the ledger holds what the clients were told");
    let grants: Vec<String> =
        sqlx::query_scalar("SELECT reference_id FROM wallet_entries WHERE type = 'bonus_granted'")
            .fetch_all(&app.db)
            .await
            .expect("grants");
    assert_eq!(grants.len(), granted.len(), "one grant entry per bonus granted");
    assert_eq!(grants.into_iter().collect::<HashSet<_>>(), granted);
    app.finish().await;
}

#[tokio::test]
async fn the_crossing_bet_converts_the_bonus_with_contributions_counted() {
    let app = spawn_app(&[]).await;
    ok_tx(&app, "c1", "deposit", 2_000, "d1", json!({})).await;
    let bonus = grant(
        &app,
        json!({"player_id": "c1", "currency": "EUR", "amount_minor": 500, "wagering_multiplier": 2,
               "expires_in_secs": 3600, "contributions": {"slots": 100, "table": 20}}),
    )
    .await;
    assert_eq!(bonus["required_minor"], 1_000);
    assert_eq!(bonus["bonus_minor"], 500);
    let id = bonus["id"].as_str().expect("id").to_owned();

    let r = ok_tx(&app, "c1", "bet", 400, "b1", json!({"game": "slots"})).await; // 100%: +400
    assert_eq!(
        (r["cash_minor"].as_i64(), r["bonus"]["wagered_minor"].as_i64()),
        (Some(1_600), Some(400))
    );
    let r = ok_tx(&app, "c1", "bet", 500, "b2", json!({"game": "table"})).await; // 20%: +100
    assert_eq!(
        (r["cash_minor"].as_i64(), r["bonus"]["wagered_minor"].as_i64()),
        (Some(1_100), Some(500))
    );
    let r = ok_tx(&app, "c1", "bet", 300, "b3", json!({"game": "live"})).await; // unlisted: 0%
    assert_eq!(
        (r["cash_minor"].as_i64(), r["bonus"]["wagered_minor"].as_i64()),
        (Some(800), Some(500))
    );
    let r = ok_tx(&app, "c1", "bet", 499, "b4", json!({"game": "slots"})).await; // 999: not yet
    assert_eq!(r["bonus"]["status"], "active");
    assert_eq!(
        (r["cash_minor"].as_i64(), r["bonus_minor"].as_i64()),
        (Some(301), Some(500))
    );
    let state = wallet(&app, "c1").await;
    assert_eq!(state["bonus"]["remaining_minor"], 1);
    assert_eq!(state["bonus"]["progress_percent"], 99);
    assert_eq!(state["bonus"]["withdrawal_forfeits_minor"], 500);

    // 401 on slots: 301 from cash, 100 from bonus; wagered 1,400 >= 1,000:
    // the remaining bonus (400) becomes cash in the same call.
    let r = ok_tx(&app, "c1", "bet", 401, "b5", json!({"game": "slots"})).await;
    assert_eq!(r["bonus"]["status"], "completed");
    assert_eq!(r["bonus"]["wagered_minor"], 1_400);
    assert_eq!(
        (r["cash_minor"].as_i64(), r["bonus_minor"].as_i64()),
        (Some(400), Some(0))
    );
    assert!(wallet(&app, "c1").await["bonus"].is_null());

    assert_conserved(&app).await;
    let (cash_d, bonus_d): (i64, i64) = sqlx::query_as(
        "SELECT cash_delta_minor, bonus_delta_minor FROM wallet_entries WHERE type = 'bonus_completed' AND reference_id = $1",
    )
    .bind(&id)
    .fetch_one(&app.db)
    .await
    .expect("conversion entry");
    assert_eq!((cash_d, bonus_d), (400, -400));
    let (status, wagered): (String, i64) =
        sqlx::query_as("SELECT status, wagered_minor FROM bonuses WHERE bonus_id = $1")
            .bind(&id)
            .fetch_one(&app.db)
            .await
            .expect("bonus row");
    assert_eq!((status.as_str(), wagered), ("completed", 1_400));
    app.finish().await;
}

#[tokio::test]
async fn the_bet_cap_and_a_second_bonus_are_refused() {
    let app = spawn_app(&[]).await;
    ok_tx(&app, "k1", "deposit", 1_000, "d1", json!({})).await;
    grant(
        &app,
        json!({"player_id": "k1", "currency": "EUR", "amount_minor": 100, "expires_in_secs": 60,
               "max_bet_minor": 50, "contributions": {"slots": 100}}),
    )
    .await;
    let refused = post_tx(&app, "k1", "bet", 51, "b1", json!({"game": "slots"})).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.error_code(), "MAX_BET_EXCEEDED");
    assert_eq!(balances(&wallet(&app, "k1").await), (1_000, 100), "nothing changed");
    let r = ok_tx(&app, "k1", "bet", 50, "b2", json!({"game": "slots"})).await;
    assert_eq!(r["bonus"]["wagered_minor"], 50);
    let second = app
        .admin(
            Method::POST,
            "/bonuses",
            Some(&json!({"player_id": "k1", "currency": "EUR", "amount_minor": 10, "expires_in_secs": 60}).to_string()),
        )
        .await;
    assert_eq!(second.status, StatusCode::CONFLICT);
    assert_eq!(second.error_code(), "BONUS_ACTIVE");
    // Another currency is another account.
    let usd = app
        .admin(
            Method::POST,
            "/bonuses",
            Some(&json!({"player_id": "k1", "currency": "USD", "amount_minor": 10, "expires_in_secs": 60}).to_string()),
        )
        .await;
    assert_eq!(usd.status, StatusCode::CREATED, "{:?}", usd.body);
    assert_conserved(&app).await;
    app.finish().await;
}

#[tokio::test]
async fn a_bonus_is_forfeited_at_expiry_by_the_engine() {
    let app = spawn_app(&[]).await;
    ok_tx(&app, "e1", "deposit", 300, "d1", json!({})).await;
    let bonus = grant(
        &app,
        json!({"player_id": "e1", "currency": "EUR", "amount_minor": 250, "expires_in_secs": 60}),
    )
    .await;
    let id = bonus["id"].as_str().expect("id").to_owned();
    // The same player's USD bonus, due a second earlier: its keys share the
    // player's shard and expiry zset, so once the engine has expired it, it
    // has read that zset at a time the EUR bonus was not yet due.
    grant(
        &app,
        json!({"player_id": "e1", "currency": "USD", "amount_minor": 10, "expires_in_secs": 59}),
    )
    .await;
    app.clock.advance_ms(59_999);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !app.get("/wallet/e1?currency=USD").await.body["bonus"].is_null() {
        assert!(Instant::now() < deadline, "the USD bonus not expired by the engine");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(balances(&wallet(&app, "e1").await), (300, 250), "not yet due");
    app.clock.advance_ms(1);
    let deadline = Instant::now() + scaled(Duration::from_secs(3));
    loop {
        let state = wallet(&app, "e1").await;
        if state["bonus"].is_null() {
            assert_eq!(balances(&state), (300, 0), "the bonus balance is forfeited, cash kept");
            break;
        }
        assert!(Instant::now() < deadline, "bonus not expired by the engine");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_conserved(&app).await;
    let (bonus_d,): (i64,) = sqlx::query_as(
        "SELECT bonus_delta_minor FROM wallet_entries WHERE type = 'bonus_expired' AND reference_id = $1",
    )
    .bind(&id)
    .fetch_one(&app.db)
    .await
    .expect("expiry entry");
    assert_eq!(bonus_d, -250);
    let status: String = sqlx::query_scalar("SELECT status FROM bonuses WHERE bonus_id = $1")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .expect("bonus row");
    assert_eq!(status, "expired");
    app.finish().await;
}

#[tokio::test]
async fn a_withdrawal_forfeits_the_active_bonus() {
    let app = spawn_app(&[]).await;
    ok_tx(&app, "f1", "deposit", 100, "d1", json!({})).await;
    grant(
        &app,
        json!({"player_id": "f1", "currency": "EUR", "amount_minor": 50, "expires_in_secs": 600}),
    )
    .await;
    // Cash only: 120 is more than the cash (100) though not than cash + bonus.
    let refused = post_tx(&app, "f1", "withdrawal", 120, "w0", json!({})).await;
    assert_eq!(refused.error_code(), "INSUFFICIENT_FUNDS");
    assert_eq!(
        wallet(&app, "f1").await["bonus"]["status"],
        "active",
        "a refusal forfeits nothing"
    );
    let r = ok_tx(&app, "f1", "withdrawal", 30, "w1", json!({})).await;
    assert_eq!(
        (r["cash_minor"].as_i64(), r["bonus_minor"].as_i64()),
        (Some(70), Some(0))
    );
    assert_eq!(r["bonus"]["status"], "forfeited");
    assert_conserved(&app).await;
    let forfeited: i64 =
        sqlx::query_scalar("SELECT bonus_delta_minor FROM wallet_entries WHERE type = 'bonus_forfeited'")
            .fetch_one(&app.db)
            .await
            .expect("forfeit entry");
    assert_eq!(forfeited, -50);
    app.finish().await;
}

#[tokio::test]
async fn a_refund_undoes_the_split_and_the_contribution() {
    let app = spawn_app(&[]).await;
    ok_tx(&app, "r1", "deposit", 30, "d1", json!({})).await;
    grant(
        &app,
        json!({"player_id": "r1", "currency": "EUR", "amount_minor": 100, "expires_in_secs": 600,
               "contributions": {"slots": 50}}),
    )
    .await;
    // 50 on slots: 30 cash then 20 bonus; contributes floor(50 × 50%) = 25.
    let r = ok_tx(&app, "r1", "bet", 50, "b1", json!({"game": "slots"})).await;
    assert_eq!(
        (r["cash_minor"].as_i64(), r["bonus_minor"].as_i64()),
        (Some(0), Some(80))
    );
    assert_eq!(r["bonus"]["wagered_minor"], 25);
    // 7 on slots contributes floor(3.5) = 3.
    let r = ok_tx(&app, "r1", "bet", 7, "b2", json!({"game": "slots"})).await;
    assert_eq!(r["bonus"]["wagered_minor"], 28);
    let mismatch = post_tx(&app, "r1", "refund", 49, "rf1", json!({"bet_reference_id": "b1"})).await;
    assert_eq!(mismatch.error_code(), "REFUND_AMOUNT_MISMATCH");
    let r = ok_tx(&app, "r1", "refund", 50, "rf1", json!({"bet_reference_id": "b1"})).await;
    assert_eq!(
        (r["cash_minor"].as_i64(), r["bonus_minor"].as_i64()),
        (Some(30), Some(93))
    );
    assert_eq!(r["bonus"]["wagered_minor"], 3, "the bet's 25 are taken back");
    let again = post_tx(&app, "r1", "refund", 50, "rf2", json!({"bet_reference_id": "b1"})).await;
    assert_eq!(again.error_code(), "BET_REFUNDED");
    let missing = post_tx(&app, "r1", "refund", 50, "rf3", json!({"bet_reference_id": "nope"})).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.error_code(), "BET_NOT_FOUND");
    assert_conserved(&app).await;
    app.finish().await;
}

#[tokio::test]
async fn a_win_on_a_bonus_funded_bet_goes_to_the_bonus() {
    let app = spawn_app(&[]).await;
    ok_tx(&app, "w1", "deposit", 10, "d1", json!({})).await;
    grant(
        &app,
        json!({"player_id": "w1", "currency": "EUR", "amount_minor": 100, "expires_in_secs": 600,
               "contributions": {"slots": 100}}),
    )
    .await;
    // 30: 10 from cash, 20 from bonus.
    ok_tx(&app, "w1", "bet", 30, "b1", json!({"game": "slots"})).await;
    let r = ok_tx(&app, "w1", "win", 200, "win1", json!({"bet_reference_id": "b1"})).await;
    assert_eq!(
        (r["cash_minor"].as_i64(), r["bonus_minor"].as_i64()),
        (Some(0), Some(280))
    );
    // A cash-only bet's win goes to cash.
    ok_tx(&app, "w1", "deposit", 50, "d2", json!({})).await;
    ok_tx(&app, "w1", "bet", 40, "b2", json!({"game": "slots"})).await;
    let r = ok_tx(&app, "w1", "win", 75, "win2", json!({"bet_reference_id": "b2"})).await;
    assert_eq!(
        (r["cash_minor"].as_i64(), r["bonus_minor"].as_i64()),
        (Some(85), Some(280))
    );
    let missing = post_tx(&app, "w1", "win", 5, "win3", json!({"bet_reference_id": "b9"})).await;
    assert_eq!(missing.error_code(), "BET_NOT_FOUND");
    assert_conserved(&app).await;
    app.finish().await;
}

/// A test SSE client: reads frames as they arrive.
struct SseClient {
    body: Incoming,
    buffer: String,
}

#[derive(Debug, Clone)]
struct SseEvent {
    id: String,
    event: String,
    data: Value,
    /// The `data:` line as sent.
    raw: String,
}

/// The exact bytes of an event's JSON: its fields in this order, integers
/// as digits, no spaces (what clients have always received).
fn assert_exact_json(event: &SseEvent) {
    let d = &event.data;
    let expected = match event.event.as_str() {
        "balance" => format!(
            "{{\"transaction_id\":\"{}\",\"type\":\"{}\",\"reference_id\":\"{}\",\"currency\":\"{}\",\
             \"amount_minor\":{},\"cash_delta_minor\":{},\"bonus_delta_minor\":{},\"cash_minor\":{},\
             \"bonus_minor\":{},\"at_ms\":{}}}",
            d["transaction_id"].as_str().expect("transaction_id"),
            d["type"].as_str().expect("type"),
            d["reference_id"].as_str().expect("reference_id"),
            d["currency"].as_str().expect("currency"),
            d["amount_minor"].as_i64().expect("amount_minor"),
            d["cash_delta_minor"].as_i64().expect("cash_delta_minor"),
            d["bonus_delta_minor"].as_i64().expect("bonus_delta_minor"),
            d["cash_minor"].as_i64().expect("cash_minor"),
            d["bonus_minor"].as_i64().expect("bonus_minor"),
            d["at_ms"].as_i64().expect("at_ms"),
        ),
        "bonus" => format!(
            "{{\"bonus_id\":\"{}\",\"currency\":\"{}\",\"status\":\"{}\",\"wagered_minor\":{},\
             \"required_minor\":{},\"remaining_minor\":{},\"bonus_minor\":{},\"at_ms\":{}}}",
            d["bonus_id"].as_str().expect("bonus_id"),
            d["currency"].as_str().expect("currency"),
            d["status"].as_str().expect("status"),
            d["wagered_minor"].as_i64().expect("wagered_minor"),
            d["required_minor"].as_i64().expect("required_minor"),
            d["remaining_minor"].as_i64().expect("remaining_minor"),
            d["bonus_minor"].as_i64().expect("bonus_minor"),
            d["at_ms"].as_i64().expect("at_ms"),
        ),
        other => panic!("unexpected event {other}"),
    };
    assert_eq!(event.raw, expected, "{} event bytes", event.event);
}

impl SseClient {
    async fn connect(http: &HttpClient, addr: SocketAddr, player: &str, last_event_id: Option<&str>) -> Self {
        let mut builder = Request::builder()
            .method(Method::GET)
            .uri(format!("http://{addr}/wallet/{player}/events"))
            .header("authorization", format!("Bearer {}", crate::helpers::test_keys().all));
        if let Some(id) = last_event_id {
            builder = builder.header("last-event-id", id);
        }
        let response = http
            .request(builder.body(Full::new(Bytes::new())).expect("request"))
            .await
            .expect("stream opens");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut client = Self {
            body: response.into_body(),
            buffer: String::new(),
        };
        // The first frame is a comment: the stream is registered.
        client
            .next_frame(Duration::from_secs(5))
            .await
            .expect("connected comment");
        client
    }

    /// The next frame (event or comment) as text; `None` on timeout or end.
    async fn next_frame(&mut self, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame = self.buffer[..end].to_owned();
                self.buffer.drain(..end + 2);
                return Some(frame);
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame()).await.ok()??.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }

    async fn next_event(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.next_frame(left).await?;
            let (mut id, mut event, mut data, mut raw) = (String::new(), String::new(), Value::Null, String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.to_owned();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).expect("data is JSON");
                    raw = v.to_owned();
                }
            }
            if !id.is_empty() {
                return Some(SseEvent { id, event, data, raw });
            }
        }
    }

    /// Balance events until the one of `transaction_id`.
    async fn until_transaction(&mut self, transaction_id: &str, within: Duration) -> Vec<SseEvent> {
        let mut seen = Vec::new();
        loop {
            let event = self.next_event(within).await.expect("event arrives in time");
            let done = event.data["transaction_id"] == transaction_id;
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_arrive_within_100ms_and_resume_from_last_event_id() {
    let app = spawn_app(&[]).await;
    ok_tx(&app, "s1", "deposit", 1_000, "d0", json!({})).await;
    let mut sse = SseClient::connect(&app.http, app.addr, "s1", None).await;
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let reply = ok_tx(&app, "s1", "bet", 1, &format!("b{i}"), json!({"game": "slots"})).await;
        let answered = Instant::now();
        let tx = reply["transaction_id"].as_str().expect("tx");
        let seen = sse.until_transaction(tx, Duration::from_secs(2)).await;
        worst = worst.max(answered.elapsed());
        let event = seen.last().expect("event");
        assert_eq!(event.event, "balance");
        assert_eq!(event.data["type"], "bet");
        assert_eq!(event.data["cash_minor"], 1_000 - i - 1);
        assert_eq!(event.data["reference_id"], format!("b{i}"));
        assert_eq!(
            (
                &event.data["amount_minor"],
                &event.data["cash_delta_minor"],
                &event.data["bonus_delta_minor"]
            ),
            (&json!(1), &json!(-1), &json!(0))
        );
        assert_exact_json(event);
    }
    assert!(
        worst < scaled(Duration::from_millis(100)),
        "slowest event took {worst:?}"
    );

    // Bonus progress is pushed too.
    grant(
        &app,
        json!({"player_id": "s1", "currency": "EUR", "amount_minor": 100, "expires_in_secs": 600,
               "contributions": {"slots": 100}}),
    )
    .await;
    let reply = ok_tx(&app, "s1", "bet", 5, "bb", json!({"game": "slots"})).await;
    let seen = sse
        .until_transaction(reply["transaction_id"].as_str().expect("tx"), Duration::from_secs(2))
        .await;
    assert!(seen.iter().any(|e| e.event == "bonus" && e.data["status"] == "active"));
    seen.iter().for_each(assert_exact_json);
    let progress = sse.next_event(Duration::from_secs(2)).await.expect("progress");
    assert_eq!(progress.event, "bonus");
    assert_eq!(progress.data["wagered_minor"], 5);
    assert_eq!(progress.data["bonus_minor"], 100);
    assert_exact_json(&progress);
    let last_seen = progress.id.clone();
    drop(sse);

    // Missed while disconnected, then replayed in order from Last-Event-ID.
    let mut missed = Vec::new();
    for i in 0..3 {
        let r = ok_tx(&app, "s1", "deposit", 10, &format!("late{i}"), json!({})).await;
        missed.push(r["transaction_id"].as_str().expect("tx").to_owned());
    }
    let mut resumed = SseClient::connect(&app.http, app.addr, "s1", Some(&last_seen)).await;
    for tx in &missed {
        let event = resumed.next_event(Duration::from_secs(2)).await.expect("missed event");
        assert_eq!(event.data["transaction_id"], tx.as_str(), "no gap, in order");
        assert!(event.id > last_seen);
        // Read back from the player's stream, rendered the same.
        assert_exact_json(&event);
    }
    // Nothing else: the next event is that of a transaction made now.
    let marker = ok_tx(&app, "s1", "deposit", 1, "marker", json!({})).await;
    let event = resumed.next_event(Duration::from_secs(2)).await.expect("marker event");
    assert_eq!(event.data["transaction_id"], marker["transaction_id"], "nothing else");
    app.finish().await;
}

/// Events the script wrote as JSON (an engine of an earlier version, still
/// within the player stream's retention) reach clients as they are, pushed
/// and read back alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_stored_as_json_are_still_delivered() {
    let app = spawn_app(&[]).await;
    ok_tx(&app, "j1", "deposit", 10, "d0", json!({})).await;
    let mut sse = SseClient::connect(&app.http, app.addr, "j1", None).await;
    let redis = redis_client().await;
    let keys = engine_keys(&redis, &app.prefix).await;
    let account = stampede::wallet::lua::AccountKeys::new(&keys, "j1", "EUR");
    let json = r#"{"transaction_id":"0-1","type":"deposit","reference_id":"old","currency":"EUR","amount_minor":1,"cash_delta_minor":1,"bonus_delta_minor":0,"cash_minor":11,"bonus_minor":0,"at_ms":1}"#;
    let id: String = redis
        .custom(
            fred::cmd!("XADD"),
            vec![account.events.as_str(), "*", "e", "balance", "d", json],
        )
        .await
        .expect("XADD player stream");
    let pushed = format!("j1\u{1f}{id}\u{1f}balance\u{1f}{json}");
    let _: String = redis
        .custom(
            fred::cmd!("XADD"),
            vec![account.notify.as_str(), "*", "e", pushed.as_str()],
        )
        .await
        .expect("XADD notify stream");
    let event = sse.next_event(Duration::from_secs(2)).await.expect("pushed event");
    assert_eq!(
        (event.id.as_str(), event.event.as_str(), event.raw.as_str()),
        (id.as_str(), "balance", json)
    );
    drop(sse);
    // Read back from the player's stream, with one of the new kind after it.
    let reply = ok_tx(&app, "j1", "deposit", 1, "d1", json!({})).await;
    let mut resumed = SseClient::connect(&app.http, app.addr, "j1", Some("0-0")).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(resumed.next_event(Duration::from_secs(2)).await.expect("stored event"));
    }
    assert_eq!(seen[0].data["reference_id"], "d0");
    assert_eq!((seen[1].id.as_str(), seen[1].raw.as_str()), (id.as_str(), json));
    assert_eq!(seen[2].data["transaction_id"], reply["transaction_id"]);
    seen.iter().for_each(assert_exact_json);
    let _ = redis.quit().await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_on_one_engine_sees_bets_made_through_another() {
    let first = spawn_app(&[]).await;
    // The second engine shares the first's Redis key prefix and database.
    let db_url = {
        let base = database_url();
        let (scheme, rest) = base.split_once("://").expect("scheme");
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        format!("{scheme}://{authority}/{}", first.db_name)
    };
    let second = spawn_app(&[
        ("STAMPEDE_KEY_PREFIX", first.prefix.as_str()),
        ("DATABASE_URL", db_url.as_str()),
        ("STAMPEDE_CONSUMER", "second-engine"),
    ])
    .await;
    ok_tx(&first, "x1", "deposit", 100, "d0", json!({})).await;
    let mut sse = SseClient::connect(&first.http, first.addr, "x1", None).await;
    for i in 0..5 {
        let reply = ok_tx(&second, "x1", "bet", 3, &format!("b{i}"), json!({"game": "slots"})).await;
        let answered = Instant::now();
        sse.until_transaction(reply["transaction_id"].as_str().expect("tx"), Duration::from_secs(2))
            .await;
        assert!(
            answered.elapsed() < scaled(Duration::from_millis(100)),
            "{:?}",
            answered.elapsed()
        );
    }
    drop(sse);
    second.finish().await;
    first.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_bounded_and_end_on_shutdown() {
    let mut app = spawn_app(&[
        ("STAMPEDE_SSE_STREAMS_MAX", "1"),
        ("STAMPEDE_SHUTDOWN_GRACE_MS", "20000"),
    ])
    .await;
    let mut sse = SseClient::connect(&app.http, app.addr, "h1", None).await;
    let refused = app.get("/wallet/h2/events").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.error_code(), "SSE_STREAMS_FULL");
    assert!(refused.headers.get("retry-after").is_some());
    let started = Instant::now();
    let stopping = tokio::spawn(async move {
        app.stop().await;
        app
    });
    // The stream ends cleanly (end of body), long before the 20 s grace.
    let end = sse.next_frame(Duration::from_secs(10)).await;
    assert!(end.is_none(), "stream ended: {end:?}");
    let app = stopping.await.expect("stopped");
    assert!(
        started.elapsed() < scaled(Duration::from_secs(5)),
        "{:?}",
        started.elapsed()
    );
    app.finish().await;
}

#[tokio::test]
async fn bad_input_on_every_wallet_route_gets_a_stable_code() {
    let app = spawn_app(&[]).await;
    let long = "x".repeat(65);
    let tx_cases: Vec<(String, &str)> = vec![
        ("not json".into(), "INVALID_JSON"),
        (
            r#"{"player_id":"p","currency":"EUR","type":"deposit","amount_minor":5,"reference_id":"r","extra":1}"#
                .into(),
            "INVALID_JSON",
        ),
        (
            r#"{"currency":"EUR","type":"deposit","amount_minor":5,"reference_id":"r"}"#.into(),
            "INVALID_PLAYER_ID",
        ),
        (tx_body(&long, "deposit", 5, "r", json!({})), "INVALID_PLAYER_ID"),
        (tx_body("a b", "deposit", 5, "r", json!({})), "INVALID_PLAYER_ID"),
        (
            tx_body("p", "deposit", 5, "r", json!({"currency": "EURO"})),
            "INVALID_CURRENCY",
        ),
        (
            tx_body("p", "deposit", 5, "r", json!({"currency": "ZZZ"})),
            "INVALID_CURRENCY",
        ),
        (tx_body("p", "transfer", 5, "r", json!({})), "INVALID_TYPE"),
        (tx_body("p", "deposit", 0, "r", json!({})), "INVALID_AMOUNT"),
        (tx_body("p", "deposit", -5, "r", json!({})), "INVALID_AMOUNT"),
        (
            tx_body("p", "deposit", 5, "r", json!({"amount_minor": 1.5})),
            "INVALID_AMOUNT",
        ),
        (
            tx_body("p", "deposit", 5, "r", json!({"amount_minor": "5"})),
            "INVALID_AMOUNT",
        ),
        (
            tx_body("p", "deposit", 1_000_000_000_001, "r", json!({})),
            "INVALID_AMOUNT",
        ),
        (tx_body("p", "deposit", 5, "", json!({})), "INVALID_REFERENCE_ID"),
        (tx_body("p", "deposit", 5, &long, json!({})), "INVALID_REFERENCE_ID"),
        (tx_body("p", "bet", 5, "r", json!({})), "INVALID_GAME"),
        (tx_body("p", "bet", 5, "r", json!({"game": "Slots!"})), "INVALID_GAME"),
        (
            tx_body("p", "deposit", 5, "r", json!({"game": "slots"})),
            "INVALID_GAME",
        ),
        (tx_body("p", "win", 5, "r", json!({})), "INVALID_BET_REFERENCE_ID"),
        (
            tx_body("p", "bet", 5, "r", json!({"game": "slots", "bet_reference_id": "b"})),
            "INVALID_BET_REFERENCE_ID",
        ),
    ];
    for (body, code) in tx_cases {
        let reply = app.request(Method::POST, "/wallet/transactions", Some(&body)).await;
        assert!(reply.status.is_client_error(), "{body}: {:?}", reply.status);
        assert_eq!(reply.error_code(), code, "{body}");
    }
    let bonus = |extra: Value| {
        let mut body = json!({"player_id": "p", "currency": "EUR", "amount_minor": 100, "expires_in_secs": 60});
        if let (Some(map), Value::Object(extra)) = (body.as_object_mut(), extra) {
            map.extend(extra);
        }
        body.to_string()
    };
    let bonus_cases: Vec<(String, &str)> = vec![
        (bonus(json!({"wagering_multiplier": 0})), "INVALID_WAGERING_MULTIPLIER"),
        (
            bonus(json!({"wagering_multiplier": 101})),
            "INVALID_WAGERING_MULTIPLIER",
        ),
        (bonus(json!({"expires_in_secs": 0})), "INVALID_EXPIRES_IN"),
        (bonus(json!({"expires_in_secs": null})), "INVALID_EXPIRES_IN"),
        (bonus(json!({"max_bet_minor": -1})), "INVALID_MAX_BET"),
        (bonus(json!({"contributions": {"slots": 101}})), "INVALID_CONTRIBUTIONS"),
        (bonus(json!({"contributions": {"Slots": 10}})), "INVALID_CONTRIBUTIONS"),
        (bonus(json!({"contributions": [1]})), "INVALID_CONTRIBUTIONS"),
        (bonus(json!({"amount_minor": 0})), "INVALID_AMOUNT"),
        (bonus(json!({"currency": "XX"})), "INVALID_CURRENCY"),
    ];
    for (body, code) in bonus_cases {
        let reply = app.admin(Method::POST, "/bonuses", Some(&body)).await;
        assert!(reply.status.is_client_error(), "{body}: {:?}", reply.status);
        assert_eq!(reply.error_code(), code, "{body}");
    }
    let unauthorized = app.request(Method::POST, "/bonuses", Some(&bonus(json!({})))).await;
    assert_eq!(unauthorized.error_code(), "UNAUTHORIZED");
    let reads: Vec<(&str, u16, &str)> = vec![
        ("/wallet/p", 400, "INVALID_CURRENCY"),
        ("/wallet/p?currency=EUR", 404, "ACCOUNT_NOT_FOUND"),
        ("/wallet/a%20b?currency=EUR", 400, "INVALID_PLAYER_ID"),
        ("/wallet/p/transactions", 400, "INVALID_CURRENCY"),
        ("/wallet/p/transactions?currency=EUR&limit=0", 400, "INVALID_LIMIT"),
        ("/wallet/p/transactions?currency=EUR&limit=501", 400, "INVALID_LIMIT"),
        ("/wallet/p/transactions?currency=EUR&before=x", 400, "INVALID_BEFORE"),
        ("/wallet/a%20b/events", 400, "INVALID_PLAYER_ID"),
    ];
    for (path, status, code) in reads {
        let reply = app.get(path).await;
        assert_eq!((reply.status.as_u16(), reply.error_code()), (status, code), "{path}");
    }
    let bad_resume = app
        .request_with(Method::GET, "/wallet/p/events", None, &[("last-event-id", "nope")])
        .await;
    assert_eq!(bad_resume.error_code(), "INVALID_LAST_EVENT_ID");
    // Nothing was created by any of it.
    assert_eq!(
        app.get("/wallet/p?currency=EUR").await.error_code(),
        "ACCOUNT_NOT_FOUND"
    );
    app.finish().await;
}

#[tokio::test]
async fn history_pages_newest_first() {
    let app = spawn_app(&[]).await;
    for i in 0..5 {
        ok_tx(&app, "h1", "deposit", 10 + i, &format!("d{i}"), json!({})).await;
    }
    app.wait_flushed(Duration::from_secs(10)).await;
    let page = app.get("/wallet/h1/transactions?currency=EUR&limit=3").await;
    assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
    let refs: Vec<&str> = page.body["transactions"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|t| t["reference_id"].as_str())
        .collect();
    assert_eq!(refs, ["d4", "d3", "d2"]);
    let before = page.body["next_before"].as_i64().expect("cursor");
    let rest = app
        .get(&format!("/wallet/h1/transactions?currency=EUR&limit=3&before={before}"))
        .await;
    let refs: Vec<&str> = rest.body["transactions"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|t| t["reference_id"].as_str())
        .collect();
    assert_eq!(refs, ["d1", "d0"]);
    assert!(rest.body["next_before"].is_null());
    assert_eq!(rest.body["transactions"][0]["cash_minor"], 21);
    app.finish().await;
}

/// `kill -9` under load with an unflushed outbox, then a restart as another
/// consumer and every unanswered request retried: every acknowledged
/// transaction is in the ledger once, and the ledger sums to the balances.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_leaves_the_ledger_intact() {
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    let redis = redis_client().await;
    let mut first = EngineProcess::start(&db_url, &name, "wallet-a", &[("STAMPEDE_FLUSH_LINGER_MS", "10000")]).await;
    let http = http_client();
    let acknowledged = Arc::new(std::sync::Mutex::new(HashMap::<String, String>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let mut players = Vec::new();
    for p in 0..50 {
        let (http, acknowledged, done, addr) = (http.clone(), acknowledged.clone(), done.clone(), first.addr);
        players.push(tokio::spawn(async move {
            let mut unanswered = Vec::new();
            for i in 0..40 {
                let body = if i % 2 == 0 {
                    tx_body(&format!("k{p}"), "deposit", 100, &format!("k{p}-r{i}"), json!({}))
                } else {
                    tx_body(
                        &format!("k{p}"),
                        "bet",
                        60,
                        &format!("k{p}-r{i}"),
                        json!({"game": "slots"}),
                    )
                };
                match send(&http, addr, Method::POST, "/wallet/transactions", Some(&body)).await {
                    Ok(reply) if reply.status == StatusCode::OK => {
                        let tx = reply.body["transaction_id"].as_str().expect("tx").to_owned();
                        acknowledged.lock().expect("lock").insert(tx, body);
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(reply) => panic!("refused before the kill: {:?}", reply.body),
                    Err(_) => unanswered.push(body),
                }
            }
            unanswered
        }));
    }
    wait_for_acknowledged(&done, 600, &players, "transactions").await;
    first.kill_9();
    let mut unanswered = Vec::new();
    for player in players {
        unanswered.extend(player.await.expect("player task"));
    }

    let second = EngineProcess::start(&db_url, &name, "wallet-b", &[("STAMPEDE_FLUSH_CLAIM_IDLE_MS", "500")]).await;
    // Clients retry what got no answer: each applies once, or replays.
    for body in &unanswered {
        let reply = send(&http, second.addr, Method::POST, "/wallet/transactions", Some(body))
            .await
            .expect("answer after restart");
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    let (db, in_postgres) = ledger_once_drained(&redis, &name, &db_url).await;
    let acknowledged = acknowledged.lock().expect("lock").clone();
    for tx in acknowledged.keys() {
        assert!(in_postgres.contains(tx), "acknowledged {tx} missing from the ledger");
    }
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM wallet_entries")
        .fetch_one(&db)
        .await
        .expect("count");
    assert_eq!(entries, 50 * 40, "every request exactly once");
    let sums: Vec<(String, i64)> =
        sqlx::query_as("SELECT player_id, sum(cash_delta_minor)::bigint FROM wallet_entries GROUP BY player_id")
            .fetch_all(&db)
            .await
            .expect("sums");
    assert_eq!(sums.len(), 50);
    for (player, cash) in sums {
        let reply = send(
            &http,
            second.addr,
            Method::GET,
            &format!("/wallet/{player}?currency=EUR"),
            None,
        )
        .await
        .expect("wallet");
        assert_eq!(reply.body["cash_minor"].as_i64(), Some(cash), "{player}");
        assert_eq!(cash, 20 * 100 - 20 * 60, "{player}");
    }
    db.close().await;
    drop(second);
    drop_database(&database_url(), &name).await;
    delete_keys(&redis, &name).await;
    let _ = redis.quit().await;
}

/// A bet is settled once: after its win, a refund and a second win (another
/// reference) are refused with `BET_SETTLED`, leaving the balance as it was;
/// the win itself still replays.
#[tokio::test]
async fn a_won_bet_is_neither_refunded_nor_won_again() {
    let app = spawn_app(&[]).await;
    ok_tx(&app, "s1", "deposit", 100, "s1-d", json!({})).await;
    ok_tx(&app, "s1", "bet", 40, "s1-b", json!({"game": "slots"})).await;
    let won = ok_tx(&app, "s1", "win", 90, "s1-w", json!({"bet_reference_id": "s1-b"})).await;
    assert_eq!(balances(&won), (150, 0));
    let refund = post_tx(&app, "s1", "refund", 40, "s1-r", json!({"bet_reference_id": "s1-b"})).await;
    assert_eq!(refund.status, StatusCode::CONFLICT, "{:?}", refund.body);
    assert_eq!(refund.error_code(), "BET_SETTLED");
    let second = post_tx(&app, "s1", "win", 90, "s1-w2", json!({"bet_reference_id": "s1-b"})).await;
    assert_eq!(second.status, StatusCode::CONFLICT, "{:?}", second.body);
    assert_eq!(second.error_code(), "BET_SETTLED");
    let replay = post_tx(&app, "s1", "win", 90, "s1-w", json!({"bet_reference_id": "s1-b"})).await;
    assert_eq!(replay.status, StatusCode::OK, "{:?}", replay.body);
    assert_eq!(
        replay.headers.get("idempotent-replayed").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(
        balances(&wallet(&app, "s1").await),
        (150, 0),
        "the refusals moved nothing"
    );
    assert_conserved(&app).await;
    app.finish().await;
}

/// A player's reference hash is made a hash table once it holds 32 records
/// (`lua/wallet_apply.lua`: a listpack is scanned on every read and write).
/// Records written before and after that are all still found: each replays
/// its first answer, refuses other content, and a bet is settled once.
#[tokio::test]
async fn records_stay_exact_as_the_reference_hash_grows() {
    let app = spawn_app(&[]).await;
    ok_tx(&app, "h1", "deposit", 10_000, "h1-d", json!({})).await;
    let mut bets = Vec::new();
    for i in 0..20 {
        let reference = format!("h1-b{i}");
        bets.push((
            reference.clone(),
            ok_tx(&app, "h1", "bet", 10, &reference, json!({"game": "slots"})).await,
        ));
    }
    // Wins write the settled bet with their own record: the hash passes 32
    // fields on this path.
    for i in 0..16 {
        let bet = json!({"bet_reference_id": format!("h1-b{i}")});
        ok_tx(&app, "h1", "win", 5, &format!("h1-w{i}"), bet).await;
    }
    let refs = app
        .ctx
        .keys
        .key(app.ctx.keys.shard_of_text("h1"), format_args!("wallet:refs:h1"));
    let encoding: String = app
        .redis
        .custom(fred::cmd!("OBJECT"), vec!["ENCODING".to_owned(), refs])
        .await
        .expect("OBJECT ENCODING");
    assert_eq!(encoding, "hashtable");
    // Every bet, recorded before or after, replays its first answer.
    for (reference, first) in &bets {
        let replay = post_tx(&app, "h1", "bet", 10, reference, json!({"game": "slots"})).await;
        assert_eq!(replay.status, StatusCode::OK, "{reference}: {:?}", replay.body);
        assert_eq!(&replay.body, first, "{reference}");
        let other = post_tx(&app, "h1", "bet", 11, reference, json!({"game": "slots"})).await;
        assert_eq!(other.error_code(), "REFERENCE_REUSED", "{reference}");
    }
    // Won bets stay settled; the bets not yet won are still open.
    let again = post_tx(&app, "h1", "win", 5, "h1-again", json!({"bet_reference_id": "h1-b0"})).await;
    assert_eq!(again.error_code(), "BET_SETTLED", "{:?}", again.body);
    ok_tx(
        &app,
        "h1",
        "refund",
        10,
        "h1-r19",
        json!({"bet_reference_id": "h1-b19"}),
    )
    .await;
    // 10,000 - 20 bets of 10 + 16 wins of 5 + one refund of 10.
    assert_eq!(balances(&wallet(&app, "h1").await), (9_890, 0));
    assert_conserved(&app).await;
    app.finish().await;
}

/// Sends the two bodies at once, many times over (one bet each): exactly one
/// of each pair is applied; the other gets 409 with one of `codes`.
async fn race_pairs(app: &TestApp, pairs: Vec<(String, String)>, codes: &[&str]) -> Vec<(usize, String)> {
    let mut calls = Vec::new();
    for (a, b) in pairs {
        let (http, addr) = (app.http.clone(), app.addr);
        calls.push(tokio::spawn(async move {
            let (a, b) = tokio::join!(
                send(&http, addr, Method::POST, "/wallet/transactions", Some(&a)),
                send(&http, addr, Method::POST, "/wallet/transactions", Some(&b)),
            );
            (a.expect("answer"), b.expect("answer"))
        }));
    }
    let mut winners = Vec::new();
    for call in calls {
        let (a, b) = call.await.expect("task");
        let (winner, loser, index) = match (a.status, b.status) {
            (StatusCode::OK, _) => (a, b, 0),
            (_, StatusCode::OK) => (b, a, 1),
            _ => panic!("neither applied: {:?} {:?}", a.body, b.body),
        };
        assert_eq!(loser.status, StatusCode::CONFLICT, "{:?}", loser.body);
        assert!(codes.contains(&loser.error_code()), "{:?}", loser.body);
        winners.push((index, winner.body["type"].as_str().unwrap_or("").to_owned()));
    }
    winners
}

/// A refund racing its bet's win, and two wins racing on one bet: one of
/// each pair is applied, the other is refused, and the money is exactly what
/// the applied ones moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_racing_the_win_and_two_wins_racing_settle_each_bet_once() {
    let app = spawn_app(&[]).await;
    const BETS: i64 = 40;
    ok_tx(&app, "race-w", "deposit", BETS * 10, "race-w-d", json!({})).await;
    for i in 0..BETS {
        ok_tx(&app, "race-w", "bet", 10, &format!("rw-b{i}"), json!({"game": "slots"})).await;
    }
    let (half, all) = (BETS as usize / 2, BETS as usize);
    // Refund (10 back) against win (25 paid), per bet.
    let pairs = (0..half)
        .map(|i| {
            let bet = json!({"bet_reference_id": format!("rw-b{i}")});
            (
                tx_body("race-w", "refund", 10, &format!("rw-r{i}"), bet.clone()),
                tx_body("race-w", "win", 25, &format!("rw-w{i}"), bet),
            )
        })
        .collect();
    let refund_vs_win = race_pairs(&app, pairs, &["BET_SETTLED", "BET_REFUNDED"]).await;
    // Two wins of 25, two references, per bet.
    let pairs = (half..all)
        .map(|i| {
            let bet = json!({"bet_reference_id": format!("rw-b{i}")});
            (
                tx_body("race-w", "win", 25, &format!("rw-w{i}"), bet.clone()),
                tx_body("race-w", "win", 25, &format!("rw-x{i}"), bet),
            )
        })
        .collect();
    let win_vs_win = race_pairs(&app, pairs, &["BET_SETTLED"]).await;
    let refunds = refund_vs_win.iter().filter(|(_, t)| t == "refund").count() as i64;
    let wins = (half as i64 - refunds) + win_vs_win.len() as i64;
    println!(
        "refund vs win: {refunds} refunds won the race, {} wins; win vs win: {} first, {} second",
        half as i64 - refunds,
        win_vs_win.iter().filter(|(i, _)| *i == 0).count(),
        win_vs_win.iter().filter(|(i, _)| *i == 1).count()
    );
    assert_eq!(win_vs_win.len(), all - half);
    assert_eq!(
        balances(&wallet(&app, "race-w").await),
        (refunds * 10 + wins * 25, 0),
        "one settlement per bet"
    );
    let rows: i64 = {
        app.wait_flushed(Duration::from_secs(30)).await;
        sqlx::query_scalar(
            "SELECT count(*) FROM wallet_entries WHERE player_id = 'race-w' AND type IN ('win', 'refund')",
        )
        .fetch_one(&app.db)
        .await
        .expect("count")
    };
    assert_eq!(rows, BETS, "one win or refund row per bet");
    assert_conserved(&app).await;
    app.finish().await;
}

/// A refused transaction does not keep its reference: a withdrawal refused
/// under a guessed reference leaves it free for the real one of another
/// player, while a reference whose transaction succeeded stays its account's
/// and replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_transaction_leaves_its_reference_free() {
    let app = spawn_app(&[]).await;
    let guessed = post_tx(&app, "mallory", "withdrawal", 500, "payout-7", json!({})).await;
    assert_eq!(guessed.status, StatusCode::CONFLICT, "{:?}", guessed.body);
    assert_eq!(guessed.error_code(), "INSUFFICIENT_FUNDS");
    ok_tx(&app, "alice", "deposit", 1000, "alice-d", json!({})).await;
    let real = ok_tx(&app, "alice", "withdrawal", 500, "payout-7", json!({})).await;
    assert_eq!(balances(&real), (500, 0));
    // Now it is alice's: a repeat replays, mallory is refused by name.
    let again = post_tx(&app, "alice", "withdrawal", 500, "payout-7", json!({})).await;
    assert_eq!(
        again.headers.get("idempotent-replayed").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let late = post_tx(&app, "mallory", "withdrawal", 500, "payout-7", json!({})).await;
    assert_eq!(late.error_code(), "REFERENCE_REUSED", "{:?}", late.body);
    // A refused bet (no such bet to win on) frees its reference too.
    let bogus = post_tx(
        &app,
        "mallory",
        "win",
        5,
        "round-9",
        json!({"bet_reference_id": "nope"}),
    )
    .await;
    assert_eq!(bogus.error_code(), "BET_NOT_FOUND");
    ok_tx(&app, "alice", "bet", 100, "alice-b", json!({"game": "slots"})).await;
    ok_tx(
        &app,
        "alice",
        "win",
        5,
        "round-9",
        json!({"bet_reference_id": "alice-b"}),
    )
    .await;

    // 20 players without money race one with it for one reference: the
    // refusals give the reference back, so the funded player gets through
    // (it may meet a refused claim still in flight: REFERENCE_REUSED, then
    // retries), and exactly one withdrawal lands.
    let mut calls = Vec::new();
    for p in 0..20 {
        let (http, addr) = (app.http.clone(), app.addr);
        calls.push(tokio::spawn(async move {
            let body = tx_body(&format!("poor-{p}"), "withdrawal", 100, "race-ref", json!({}));
            let reply = send(&http, addr, Method::POST, "/wallet/transactions", Some(&body))
                .await
                .expect("answer");
            assert!(
                matches!(reply.error_code(), "INSUFFICIENT_FUNDS" | "REFERENCE_REUSED"),
                "{:?}",
                reply.body
            );
        }));
    }
    let mut tries = 0;
    loop {
        tries += 1;
        let reply = post_tx(&app, "alice", "withdrawal", 100, "race-ref", json!({})).await;
        if reply.status == StatusCode::OK {
            break;
        }
        assert_eq!(reply.error_code(), "REFERENCE_REUSED", "{:?}", reply.body);
        assert!(tries < 200, "the reference was never given back");
        tokio::task::yield_now().await;
    }
    for call in calls {
        call.await.expect("task");
    }
    println!("the funded withdrawal landed on try {tries}");
    assert_eq!(balances(&wallet(&app, "alice").await), (1000 - 500 - 100 + 5 - 100, 0));
    assert_conserved(&app).await;
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM wallet_entries WHERE reference_id IN ('payout-7', 'race-ref')")
            .fetch_one(&app.db)
            .await
            .expect("count");
    assert_eq!(rows, 2);
    app.finish().await;
}

/// What one player's stream of requests was told before the kill: the
/// transaction ids applied, and the request in flight when the engine died.
struct ClaimRun {
    applied: Vec<String>,
    in_flight: Option<(usize, usize, String)>,
}

/// `kill -9` while refused withdrawals under guessed references race the
/// real ones: a refusal that was answered gave its reference back (the real
/// withdrawal under it succeeds at once); a claim the crash caught between
/// claim and apply stays with the account that tried (the safe side: the
/// real one is refused by name, and nobody's money moved under it); every
/// transaction applies exactly once and the ledger sums to the balances.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_between_claim_and_apply_errs_on_the_safe_side() {
    const PLAYERS: usize = 30;
    const ROUNDS: usize = 20;
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    let redis = redis_client().await;
    let mut first = EngineProcess::start(&db_url, &name, "claim-a", &[("STAMPEDE_FLUSH_LINGER_MS", "10000")]).await;
    let http = http_client();
    let done = Arc::new(AtomicUsize::new(0));
    // Per round i of player p: the funded player deposits, a player without
    // money tries a withdrawal under the reference the funded one then uses.
    let round = |p: usize, i: usize| {
        [
            tx_body(&format!("cf{p}"), "deposit", 100, &format!("cf{p}-d{i}"), json!({})),
            tx_body(&format!("cg{p}"), "withdrawal", 50, &format!("cf{p}-w{i}"), json!({})),
            tx_body(&format!("cf{p}"), "withdrawal", 50, &format!("cf{p}-w{i}"), json!({})),
        ]
    };
    let mut players = Vec::new();
    for p in 0..PLAYERS {
        let (http, done, addr) = (http.clone(), done.clone(), first.addr);
        players.push(tokio::spawn(async move {
            let mut run = ClaimRun {
                applied: Vec::new(),
                in_flight: None,
            };
            for i in 0..ROUNDS {
                for (step, body) in round(p, i).into_iter().enumerate() {
                    match send(&http, addr, Method::POST, "/wallet/transactions", Some(&body)).await {
                        Ok(reply) if step == 1 => {
                            assert_eq!(reply.error_code(), "INSUFFICIENT_FUNDS", "{:?}", reply.body)
                        }
                        Ok(reply) if reply.status == StatusCode::OK => {
                            run.applied
                                .push(reply.body["transaction_id"].as_str().expect("tx").to_owned());
                        }
                        Ok(reply) => panic!("refused before the kill: {:?}", reply.body),
                        Err(_) => {
                            run.in_flight = Some((i, step, body));
                            return run;
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
            run
        }));
    }
    wait_for_acknowledged(&done, 600, &players, "requests").await;
    first.kill_9();
    let mut runs = Vec::new();
    for player in players {
        runs.push(player.await.expect("player task"));
    }

    let second = EngineProcess::start(&db_url, &name, "claim-b", &[("STAMPEDE_FLUSH_CLAIM_IDLE_MS", "500")]).await;
    let post = |body: String| {
        let http = http.clone();
        let addr = second.addr;
        async move {
            send(&http, addr, Method::POST, "/wallet/transactions", Some(&body))
                .await
                .expect("answer after restart")
        }
    };
    let mut applied: HashSet<String> = HashSet::new();
    let (mut stranded, mut freed) = (0, 0);
    for (p, run) in runs.iter().enumerate() {
        applied.extend(run.applied.iter().cloned());
        let Some((i, step, body)) = &run.in_flight else {
            continue;
        };
        // The client retries what got no answer.
        let retried = post(body.clone()).await;
        if *step == 1 {
            assert_eq!(retried.error_code(), "INSUFFICIENT_FUNDS", "{:?}", retried.body);
            // The real withdrawal under that reference: free, unless the
            // crash caught the refused attempt between claim and apply.
            let real = post(round(p, *i)[2].clone()).await;
            if real.status == StatusCode::OK {
                freed += 1;
                applied.insert(real.body["transaction_id"].as_str().expect("tx").to_owned());
            } else {
                assert_eq!(real.error_code(), "REFERENCE_REUSED", "{:?}", real.body);
                assert!(
                    real.body["error"]["message"]
                        .as_str()
                        .unwrap_or("")
                        .contains("player_id")
                );
                stranded += 1;
            }
        } else {
            assert_eq!(retried.status, StatusCode::OK, "{:?}", retried.body);
            applied.insert(retried.body["transaction_id"].as_str().expect("tx").to_owned());
        }
    }
    println!("after the kill: {freed} references free, {stranded} kept by the refused account");
    let (db, in_postgres) = ledger_once_drained(&redis, &name, &db_url).await;
    assert_eq!(
        in_postgres, applied,
        "the ledger holds exactly what clients were told of"
    );
    let refused_players: i64 = sqlx::query_scalar("SELECT count(*) FROM wallet_entries WHERE player_id LIKE 'cg%'")
        .fetch_one(&db)
        .await
        .expect("count");
    assert_eq!(refused_players, 0, "no refused withdrawal moved money");
    let sums: Vec<(String, i64)> =
        sqlx::query_as("SELECT player_id, sum(cash_delta_minor)::bigint FROM wallet_entries GROUP BY player_id")
            .fetch_all(&db)
            .await
            .expect("sums");
    for (player, cash) in sums {
        let reply = send(
            &http,
            second.addr,
            Method::GET,
            &format!("/wallet/{player}?currency=EUR"),
            None,
        )
        .await
        .expect("wallet");
        assert_eq!(reply.body["cash_minor"].as_i64(), Some(cash), "{player}");
    }
    db.close().await;
    drop(second);
    drop_database(&database_url(), &name).await;
    delete_keys(&redis, &name).await;
    let _ = redis.quit().await;
}

/// Once the outbox has drained after a restart: a pool on the test's
/// database and the ledger's transaction ids.
async fn ledger_once_drained(
    redis: &fred::clients::Client,
    name: &str,
    db_url: &str,
) -> (sqlx::PgPool, HashSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while crate::helpers::outbox_backlog(redis, name).await > 0 {
        assert!(Instant::now() < deadline, "outbox not drained after restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let db = sqlx::PgPool::connect(db_url).await.expect("db");
    let in_postgres: HashSet<String> = sqlx::query_scalar("SELECT transaction_id FROM wallet_entries")
        .fetch_all(&db)
        .await
        .expect("entries")
        .into_iter()
        .collect();
    (db, in_postgres)
}
