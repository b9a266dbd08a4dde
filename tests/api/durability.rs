//! Nothing a client was told succeeded is lost, and nothing is recorded
//! twice: not when the engine is killed (before or during a commit), not
//! when Redis forgets its scripts. (Redis killed or cut off,
//! Postgres down: see the fault suite, `tests/api/faults/`.)

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fred::interfaces::ClientLike;
use hyper::{Method, StatusCode};

use crate::helpers::{
    EngineProcess, buy, create_database, database_url, delete_keys, drop_database, engine_keys, http_client,
    outbox_backlog, redis_client, send, spawn_app, unique_name, wait_for_acknowledged,
};

/// What a buyer was told about one item, or what it was doing when the
/// engine died under it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Told {
    /// Checkout said OK with this code, purchase said OK for this sale.
    Bought { user: String, code: String, sale: i64 },
    /// The checkout was sent and never answered.
    CheckoutCut { user: String },
    /// Checkout said OK with this code; the purchase was sent and never answered.
    PurchaseCut { user: String, code: String },
}

/// `kill -9` while the outbox holds entries (some delivered to the dead
/// consumer, some never read), then a restart as another consumer: Postgres
/// ends with exactly what the buyers were told (plus, at most, the one
/// request each had in flight at the kill), once each, and with what Redis
/// committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_with_unflushed_outbox_loses_nothing() {
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    let redis = redis_client().await;
    // A long linger keeps the first batch pending and the rest unread.
    let mut first = EngineProcess::start(&db_url, &name, "engine-a", &[("STAMPEDE_FLUSH_LINGER_MS", "10000")]).await;

    // Each buyer's own record, item by item: what it was told.
    let told = Arc::new(std::sync::Mutex::new(HashMap::<u32, Told>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let http = http_client();
    let mut buyers = Vec::new();
    for buyer in 0..100u32 {
        let (http, told, done, addr) = (http.clone(), told.clone(), done.clone(), first.addr);
        buyers.push(tokio::spawn(async move {
            let user = format!("u{buyer}");
            for k in 0..10u32 {
                let item = buyer * 10 + k + 1;
                let record = |t: Told| told.lock().expect("lock").insert(item, t);
                let checkout = send(
                    &http,
                    addr,
                    Method::POST,
                    &format!("/checkout?user_id={user}&id={item}"),
                    None,
                )
                .await;
                let code = match checkout {
                    Ok(reply) if reply.status == StatusCode::OK => {
                        reply.body["code"].as_str().expect("code").to_owned()
                    }
                    Ok(reply) => panic!("checkout refused before the kill: {:?}", reply.body),
                    Err(_) => {
                        record(Told::CheckoutCut { user });
                        return; // the engine died under us: outcome unknown
                    }
                };
                match send(&http, addr, Method::POST, &format!("/purchase?code={code}"), None).await {
                    Ok(reply) if reply.status == StatusCode::OK => {
                        let sale = reply.body["sale_id"].as_i64().expect("sale_id");
                        assert_eq!(reply.body["item_id"], item, "{:?}", reply.body);
                        record(Told::Bought {
                            user: user.clone(),
                            code,
                            sale,
                        });
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(reply) => panic!("purchase refused before the kill: {:?}", reply.body),
                    Err(_) => {
                        record(Told::PurchaseCut { user, code });
                        return;
                    }
                }
            }
        }));
    }
    wait_for_acknowledged(&done, 300, &buyers, "purchases").await;
    assert!(
        outbox_backlog(&redis, &name).await > 0,
        "outbox holds entries at the kill"
    );
    assert!(
        largest_outbox_entry(&redis, &name).await > 1,
        "some unflushed entries hold a batch of several events"
    );
    first.kill_9();
    for buyer in buyers {
        buyer.await.expect("buyer task");
    }
    let told = told.lock().expect("lock").clone();
    let bought = told.values().filter(|t| matches!(t, Told::Bought { .. })).count();
    let sales: HashSet<i64> = told
        .values()
        .filter_map(|t| match t {
            Told::Bought { sale, .. } => Some(*sale),
            _ => None,
        })
        .collect();
    assert_eq!(sales.len(), 1, "every purchase was told one sale: {sales:?}");
    let sale = *sales.iter().next().expect("a sale");
    println!(
        "{bought} purchases acknowledged, {} requests cut by the kill",
        told.len() - bought
    );

    let mut second = EngineProcess::start(&db_url, &name, "engine-b", &[("STAMPEDE_FLUSH_CLAIM_IDLE_MS", "500")]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while outbox_backlog(&redis, &name).await > 0 {
        assert!(Instant::now() < deadline, "outbox not drained after restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let db = sqlx::PgPool::connect(&db_url).await.expect("db");
    // Every purchase row, against the buyers' record: each acknowledged one
    // is there as told (user, code, sale), and the only others are purchases
    // cut by the kill (the engine may have committed them before dying).
    let rows: Vec<(i64, i64, String, String)> =
        sqlx::query_as("SELECT sale_id, item_id, user_id, code FROM purchases ORDER BY item_id")
            .fetch_all(&db)
            .await
            .expect("purchases");
    let mut in_postgres: HashMap<u32, (i64, String, String)> = HashMap::new();
    for (row_sale, item, user, code) in &rows {
        let earlier = in_postgres.insert(*item as u32, (*row_sale, user.clone(), code.clone()));
        assert!(earlier.is_none(), "item {item} bought twice");
    }
    for (item, t) in &told {
        let row = in_postgres.get(item);
        match t {
            Told::Bought {
                user,
                code,
                sale: told_sale,
            } => assert_eq!(
                row,
                Some(&(*told_sale, user.clone(), code.clone())),
                "acknowledged purchase of item {item}"
            ),
            Told::PurchaseCut { user, code } => assert!(
                row.is_none_or(|r| *r == (sale, user.clone(), code.clone())),
                "item {item}, purchase cut by the kill: {row:?}"
            ),
            Told::CheckoutCut { .. } => assert!(row.is_none(), "item {item} bought without a code: {row:?}"),
        }
    }
    for item in in_postgres.keys() {
        assert!(told.contains_key(item), "item {item} in Postgres was never asked for");
    }
    let sold_in_redis: i64 = redis
        .custom(
            fred::cmd!("BITCOUNT"),
            vec![{
                let keys = engine_keys(&redis, &name).await;
                keys.key(keys.shard_of_number(sale as u64), format_args!("sale:{sale}:sold"))
            }],
        )
        .await
        .expect("BITCOUNT");
    assert_eq!(
        sold_in_redis,
        rows.len() as i64,
        "Postgres holds exactly what Redis committed"
    );
    // Issued codes against the buyers' record: one OK attempt per code the
    // buyers were given (a second row would be a checkout recorded twice),
    // for the user and item it was given for, and otherwise only the
    // checkouts cut by the kill.
    let attempts: Vec<(String, i64, String)> =
        sqlx::query_as("SELECT user_id, item_id, code FROM checkout_attempts WHERE outcome = 'OK' AND sale_id = $1")
            .bind(sale)
            .fetch_all(&db)
            .await
            .expect("attempts");
    let mut codes: HashMap<String, (String, u32)> = HashMap::new();
    for (user, item, code) in attempts {
        let earlier = codes.insert(code.clone(), (user, item as u32));
        assert!(earlier.is_none(), "code {code} issued twice");
    }
    for (item, t) in &told {
        match t {
            Told::Bought { user, code, .. } | Told::PurchaseCut { user, code } => assert_eq!(
                codes.remove(code),
                Some((user.clone(), *item)),
                "the code given for item {item}"
            ),
            Told::CheckoutCut { user } => {
                let before = codes.len();
                codes.retain(|_, (u, i)| !(u == user && i == item));
                assert!(
                    before - codes.len() <= 1,
                    "item {item}: the cut checkout issued several codes"
                );
            }
        }
    }
    assert!(codes.is_empty(), "codes no buyer was given: {codes:?}");
    db.close().await;
    assert!(second.terminate().success(), "SIGTERM exits 0");
    drop_database(&database_url(), &name).await;
    delete_keys(&redis, &name).await;
    let _ = redis.quit().await;
}

/// `kill -9` while Postgres commits a batch (held at COMMIT by a deferred
/// trigger that sleeps once per transaction), so the batch's rows commit
/// and its entries are never acknowledged; the next engine reads them again.
/// Each row is in Postgres once: the write finds its entries' markers and
/// writes nothing the second time (the sale's tables have no unique index
/// on the event id that would catch a second copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_committed_but_never_acknowledged_is_written_once() {
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    let redis = redis_client().await;
    let mut first = EngineProcess::start(&db_url, &name, "engine-a", &[]).await;
    let db = sqlx::PgPool::connect(&db_url).await.expect("db");
    for statement in [
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF current_setting('test.slept', true) IS DISTINCT FROM 'yes' THEN
             PERFORM set_config('test.slept', 'yes', true);
             PERFORM pg_sleep(3);
           END IF;
           RETURN NULL;
         END $$",
        "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON purchases
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()",
    ] {
        sqlx::query(statement).execute(&db).await.expect("slow commit trigger");
    }

    let http = http_client();
    const BOUGHT: u32 = 20;
    for item in 1..=BOUGHT {
        let reply = buy(&http, first.addr, &format!("u{item}"), item).await.expect("buy");
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    // The flusher is inside COMMIT once a backend sleeps in the trigger.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sleeping: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'",
        )
        .fetch_one(&db)
        .await
        .expect("pg_stat_activity");
        if sleeping > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no batch reached COMMIT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill_9();
    // Postgres finishes the COMMIT without its client.
    let deadline = Instant::now() + Duration::from_secs(20);
    let committed = loop {
        let purchases: i64 = sqlx::query_scalar("SELECT count(*) FROM purchases")
            .fetch_one(&db)
            .await
            .expect("count");
        if purchases > 0 {
            break purchases;
        }
        assert!(Instant::now() < deadline, "the held batch never committed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        outbox_backlog(&redis, &name).await > 0,
        "the committed batch's entries were never acknowledged"
    );
    sqlx::query("DROP TRIGGER slow_commit ON purchases")
        .execute(&db)
        .await
        .expect("drop trigger");

    // Another consumer takes the dead one's entries over and writes them.
    let mut second = EngineProcess::start(&db_url, &name, "engine-b", &[("STAMPEDE_FLUSH_CLAIM_IDLE_MS", "500")]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while outbox_backlog(&redis, &name).await > 0 {
        assert!(Instant::now() < deadline, "outbox not drained after restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (purchases, items): (i64, i64) = sqlx::query_as("SELECT count(*), count(DISTINCT item_id) FROM purchases")
        .fetch_one(&db)
        .await
        .expect("purchases");
    let (attempts, events): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM checkout_attempts")
            .fetch_one(&db)
            .await
            .expect("attempts");
    println!(
        "{committed} purchases committed before the kill; after the restart: {purchases} purchases, {attempts} attempts"
    );
    assert_eq!(
        (purchases, items),
        (i64::from(BOUGHT), i64::from(BOUGHT)),
        "each purchase once"
    );
    assert_eq!(
        (attempts, events),
        (i64::from(BOUGHT), i64::from(BOUGHT)),
        "each attempt once"
    );
    db.close().await;
    assert!(second.terminate().success(), "SIGTERM exits 0");
    drop_database(&database_url(), &name).await;
    delete_keys(&redis, &name).await;
    let _ = redis.quit().await;
}

/// The most events one entry of any outbox shard of `prefix` holds (a
/// batched entry is `kind, values` pairs).
async fn largest_outbox_entry(redis: &fred::clients::Client, prefix: &str) -> usize {
    let mut largest = 0;
    let keys = engine_keys(redis, prefix).await;
    for shard in keys.shards() {
        let entries: fred::types::Value = redis
            .custom(fred::cmd!("XRANGE"), vec![keys.outbox(shard), "-".into(), "+".into()])
            .await
            .expect("XRANGE");
        if let fred::types::Value::Array(entries) = entries {
            for entry in entries {
                if let fred::types::Value::Array(parts) = entry
                    && let Some(fred::types::Value::Array(fields)) = parts.get(1)
                {
                    largest = largest.max(fields.len() / 2);
                }
            }
        }
    }
    largest
}

/// SCRIPT FLUSH while buyers are buying: the engine reloads scripts on
/// NOSCRIPT and no client sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn script_cache_flush_mid_run_is_invisible_to_clients() {
    let app = Arc::new(spawn_app(&[]).await);
    let flusher = {
        let redis = redis_client().await;
        tokio::spawn(async move {
            for _ in 0..25 {
                let _: () = redis
                    .custom(fred::cmd!("SCRIPT"), vec!["FLUSH"])
                    .await
                    .expect("SCRIPT FLUSH");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut buyers = Vec::new();
    for buyer in 0..100u32 {
        let app = app.clone();
        buyers.push(tokio::spawn(async move {
            for k in 0..5u32 {
                let reply = buy(&app.http, app.addr, &format!("u{buyer}"), buyer * 5 + k + 1)
                    .await
                    .expect("answer");
                assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
            }
        }));
    }
    for buyer in buyers {
        buyer.await.expect("buyer");
    }
    flusher.await.expect("flusher");
    app.wait_flushed(Duration::from_secs(10)).await;
    assert_eq!(app.purchases_in_postgres().await, 500);
    Arc::into_inner(app).expect("done").finish().await;
}
