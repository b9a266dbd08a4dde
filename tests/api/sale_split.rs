//! A sale split over several hash slots (`STAMPEDE_SALE_SPLIT`): the same
//! rules as on one slot, the per-user limit exact across slots, and a
//! purchase cut between its steps resolved by the sweeper on the safe side.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fred::interfaces::{ClientLike, SortedSetsInterface};
use futures::future::join_all;
use hyper::{Method, StatusCode};

use crate::helpers::{
    EngineProcess, create_database, database_url, delete_keys, drop_database, engine_keys, http_client, outbox_backlog,
    redis_client, send, sold_over_shards, spawn_app, unique_name, user_counts, wait_for_acknowledged,
};
use crate::sale::{greedy_user_gets_exactly_the_limit, purchase_200_times_at_once, thousand_buyers_contest};

const SPLIT: (&str, &str) = ("STAMPEDE_SALE_SPLIT", "3");
/// Each part has a shard of its own: more shards than parts, on one Redis
/// (whose default is 2) as on a cluster.
const SHARDS: (&str, &str) = ("STAMPEDE_OUTBOX_SHARDS", "8");

/// 1000 buyers × 10 over 10,000 items on three slots: exactly 10,000 sold,
/// each once, nobody over the limit, in Redis and in Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_sale_thousand_buyers_sell_exactly_ten_thousand_items() {
    thousand_buyers_contest(&[SPLIT, SHARDS]).await;
}

/// One user's 15 codes, on items of all three parts, purchased at once:
/// exactly the limit goes through, with no reservation left; one code bought
/// 200 times at once is spent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_sale_concurrent_purchases_never_overrun_the_user_limit() {
    let app = Arc::new(spawn_app(&[SPLIT, SHARDS]).await);
    greedy_user_gets_exactly_the_limit(&app).await;
    let counts = app.user_counts(app.sale_id()).await;
    assert_eq!(counts.get("greedy"), Some(&(10, 0)), "{counts:?}");

    let code = app.code_for("alice", 20).await;
    // Checked out while the item is free, spent after it is sold.
    let late = app.code_for("bob", 20).await;
    let by_status = purchase_200_times_at_once(&app, &code).await;
    assert_eq!(by_status.get(&StatusCode::OK), Some(&1), "{by_status:?}");
    let state = app.get(&format!("/codes/{code}")).await;
    assert_eq!(state.body["state"], "spent", "{:?}", state.body);
    let counts = app.user_counts(app.sale_id()).await;
    assert_eq!(counts.get("alice"), Some(&(1, 0)), "{counts:?}");

    // A code refused for good is void: it answers the same again.
    let sold = app.purchase(&late).await;
    assert_eq!(sold.error_code(), "ITEM_SOLD", "{:?}", sold.body);
    assert_eq!(app.purchase(&late).await.error_code(), "ITEM_SOLD");
    assert_eq!(app.get(&format!("/codes/{late}")).await.body["state"], "void");
    assert_eq!(app.user_counts(app.sale_id()).await.get("bob"), Some(&(0, 0)));
    assert_eq!(app.sold_over_shards(app.sale_id()).await, 11);

    // Postgres: one sale row (every part recorded the opening), each
    // answered checkout attempt once, and reconcile sums the parts.
    app.wait_flushed(Duration::from_secs(30)).await;
    let (sales, attempts, purchases): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM sales), (SELECT count(*) FROM checkout_attempts),
                (SELECT count(*) FROM purchases)",
    )
    .fetch_one(&app.db)
    .await
    .expect("counts");
    assert_eq!((sales, attempts, purchases), (1, 15 + 1 + 2, 11));
    let reconcile = app.admin(Method::GET, "/admin/reconcile", None).await;
    assert_eq!(reconcile.body["ok"], true, "{:?}", reconcile.body);
    assert_eq!(reconcile.body["sales_checked"], 1, "{:?}", reconcile.body);
    Arc::into_inner(app).expect("done").finish().await;
}

/// What a buyer was told of one code.
#[derive(Debug, Clone)]
enum Told {
    Bought,
    Refused,
    /// The purchase was sent and never answered: the engine died under it.
    Cut,
}

/// `kill -9` of an engine while 120 users each buy 15 codes at once (the
/// limit is 10), so purchases die between their steps; then another engine,
/// whose sweeper resolves every reservation left behind. Nobody ends over
/// the limit in Redis or Postgres, every reservation is resolved, Redis and
/// Postgres agree per user, every acknowledged purchase is in Postgres, and
/// each cut purchase's code reports the truth (`spent` exactly when
/// Postgres has it), which a retry confirms.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_sale_kill_9_between_steps_leaves_nobody_over_the_limit() {
    const USERS: u32 = 120;
    const CODES: u32 = 15;
    const LIMIT: i64 = 10;
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    let redis = redis_client().await;
    let settings = [
        SPLIT,
        SHARDS,
        ("SALE_PERIOD_SECS", "86400"),
        ("STAMPEDE_SALE_RESERVATION_TIMEOUT_MS", "3000"),
    ];
    let mut first = EngineProcess::start(&db_url, &name, "split-a", &settings).await;
    let sale_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after epoch")
        .as_millis() as u64
        / 86_400_000;
    let http = http_client();
    let done = Arc::new(AtomicUsize::new(0));
    let mut users = Vec::new();
    for u in 0..USERS {
        let (http, done, addr) = (http.clone(), done.clone(), first.addr);
        users.push(tokio::spawn(async move {
            let user = format!("s{u}");
            let mut codes = Vec::new();
            for k in 0..CODES {
                let item = u * CODES + k + 1;
                match send(
                    &http,
                    addr,
                    Method::POST,
                    &format!("/checkout?user_id={user}&id={item}"),
                    None,
                )
                .await
                {
                    Ok(reply) if reply.status == StatusCode::OK => {
                        codes.push(reply.body["code"].as_str().expect("code").to_owned())
                    }
                    Ok(reply) => panic!("checkout refused before the kill: {:?}", reply.body),
                    Err(_) => break,
                }
            }
            let told = join_all(codes.iter().map(|code| {
                let (http, done) = (http.clone(), done.clone());
                async move {
                    match send(&http, addr, Method::POST, &format!("/purchase?code={code}"), None).await {
                        Ok(reply) if reply.status == StatusCode::OK => {
                            done.fetch_add(1, Ordering::SeqCst);
                            Told::Bought
                        }
                        Ok(reply) => {
                            assert_eq!(reply.error_code(), "USER_LIMIT_REACHED", "{:?}", reply.body);
                            Told::Refused
                        }
                        Err(_) => Told::Cut,
                    }
                }
            }))
            .await;
            (user, codes.into_iter().zip(told).collect::<Vec<_>>())
        }));
    }
    wait_for_acknowledged(&done, 300, &users, "purchases").await;
    first.kill_9();
    let mut told: Vec<(String, String, Told)> = Vec::new();
    for user in users {
        let (user, codes) = user.await.expect("user task");
        told.extend(codes.into_iter().map(|(code, t)| (user.clone(), code, t)));
    }
    let cut = told.iter().filter(|(_, _, t)| matches!(t, Told::Cut)).count();
    let left = reservations_left(&redis, &name, sale_id).await;
    println!(
        "{} purchases acknowledged, {cut} cut by the kill, {left} reservations left behind",
        done.load(Ordering::SeqCst)
    );

    let second = EngineProcess::start(
        &db_url,
        &name,
        "split-b",
        &[
            settings[0],
            settings[1],
            settings[2],
            ("STAMPEDE_FLUSH_CLAIM_IDLE_MS", "500"),
        ],
    )
    .await;
    let started = Instant::now();
    while reservations_left(&redis, &name, sale_id).await > 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "reservations not resolved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("the sweeper resolved them in {:?}", started.elapsed());
    let db = drained(&redis, &name, &db_url).await;
    let in_postgres = check_counts(&redis, &name, sale_id, &db, LIMIT).await;
    for (user, code, t) in &told {
        if matches!(t, Told::Bought) {
            assert!(
                in_postgres.contains(code),
                "acknowledged purchase {code} of {user} missing"
            );
        }
        if matches!(t, Told::Refused) {
            assert!(
                !in_postgres.contains(code),
                "refused purchase {code} of {user} in Postgres"
            );
        }
    }

    // Each cut purchase: the lookup reports the truth, and a retry agrees.
    let mut states: HashMap<String, usize> = HashMap::new();
    for (_, code, _) in told.iter().filter(|(_, _, t)| matches!(t, Told::Cut)) {
        let state = send(&http, second.addr, Method::GET, &format!("/codes/{code}"), None)
            .await
            .expect("lookup");
        let word = state.body["state"].as_str().expect("state").to_owned();
        assert_eq!(word == "spent", in_postgres.contains(code), "{code}: {:?}", state.body);
        let retry = send(
            &http,
            second.addr,
            Method::POST,
            &format!("/purchase?code={code}"),
            None,
        )
        .await
        .expect("retry");
        let expected: &[&str] = match word.as_str() {
            "spent" => &["CODE_USED"],
            "void" => &["CODE_EXPIRED", "ITEM_SOLD"],
            _ => &["", "USER_LIMIT_REACHED"],
        };
        assert!(
            expected.contains(&retry.error_code()),
            "{code} {word}: {:?}",
            retry.body
        );
        *states.entry(word).or_default() += 1;
    }
    println!("cut purchases after the sweep: {states:?}");
    db.close().await;
    let db = drained(&redis, &name, &db_url).await;
    check_counts(&redis, &name, sale_id, &db, LIMIT).await;
    db.close().await;
    drop(second);
    drop_database(&database_url(), &name).await;
    delete_keys(&redis, &name).await;
    let _ = redis.quit().await;
}

/// Reservations not yet resolved, over every shard (the zset's `_` member
/// only creates it).
pub async fn reservations_left(redis: &fred::clients::Client, prefix: &str, sale_id: u64) -> u64 {
    let keys = engine_keys(redis, prefix).await;
    let mut left = 0;
    for shard in keys.shards() {
        let n: u64 = redis
            .zcount(
                keys.key(shard, format_args!("sale:{sale_id}:reserving")),
                f64::NEG_INFINITY,
                f64::MAX,
            )
            .await
            .expect("ZCOUNT");
        left += n;
    }
    left
}

async fn drained(redis: &fred::clients::Client, prefix: &str, db_url: &str) -> sqlx::PgPool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while outbox_backlog(redis, prefix).await > 0 {
        assert!(Instant::now() < deadline, "outbox not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sqlx::PgPool::connect(db_url).await.expect("db")
}

/// Nobody over the limit, no reservation left, Redis and Postgres agree per
/// user and in all; returns the codes Postgres holds purchases of.
pub async fn check_counts(
    redis: &fred::clients::Client,
    prefix: &str,
    sale_id: u64,
    db: &sqlx::PgPool,
    limit: i64,
) -> HashSet<String> {
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT user_id, code FROM purchases WHERE sale_id = $1")
        .bind(sale_id as i64)
        .fetch_all(db)
        .await
        .expect("purchases");
    let mut per_user: HashMap<String, i64> = HashMap::new();
    for (user, _) in &rows {
        *per_user.entry(user.clone()).or_default() += 1;
    }
    let counts = user_counts(redis, prefix, sale_id).await;
    for (user, (purchased, reserved)) in &counts {
        assert_eq!(*reserved, 0, "{user} has a reservation left");
        assert!(*purchased <= limit, "{user} holds {purchased} in Redis");
        assert_eq!(
            per_user.get(user).copied().unwrap_or(0),
            *purchased,
            "{user}: Postgres against Redis"
        );
    }
    for (user, n) in &per_user {
        assert!(*n <= limit, "{user} bought {n} in Postgres");
    }
    assert_eq!(sold_over_shards(redis, prefix, sale_id).await, rows.len() as i64);
    rows.into_iter().map(|(_, code)| code).collect()
}

/// Each part of a sale needs a shard of its own: a split above the shard
/// count is refused at start, saying both settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_above_the_shard_count_is_refused_at_start() {
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    let refusal = EngineProcess::expect_refusal(
        &db_url,
        &name,
        &[("STAMPEDE_OUTBOX_SHARDS", "4"), ("STAMPEDE_SALE_SPLIT", "5")],
        Duration::from_secs(30),
    )
    .await;
    let (status, stderr) = refusal.expect("a split of 5 over 4 shards refuses to start");
    assert_eq!(status.code(), Some(2), "a configuration error: {stderr}");
    for says in ["STAMPEDE_SALE_SPLIT", "STAMPEDE_OUTBOX_SHARDS"] {
        assert!(stderr.contains(says), "the message names {says}: {stderr}");
    }
    drop_database(&database_url(), &name).await;
    let redis = redis_client().await;
    delete_keys(&redis, &name).await;
    let _ = redis.quit().await;
}
