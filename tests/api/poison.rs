//! Poison in the outbox: an event Postgres refuses for its data, or one that
//! cannot be decoded, is set aside as a dead letter within a bounded time,
//! never lost, and never holds up the other events of its shard; a replay
//! after the operator's fix lands it. A Postgres outage sets nothing aside.
//! And money at its largest accepted size reaches Postgres exact.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fred::interfaces::ClientLike;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use stampede::clock::Clock;
use stampede::limits::DEAD_LETTER_AFTER_ATTEMPTS;
use stampede::orders::limits::{ORDER_QUANTITY_MAX, PRODUCT_PRICE_CENTS_MAX, PRODUCT_STOCK_MAX};

use crate::helpers::{TestApp, buy, free_port, spawn_app, spawn_app_on};

/// Appends one entry of `events` events to outbox shard `shard` exactly as
/// the scripts do: the entry and its events counted, in one atomic step. A
/// batched entry holds one event per field; an older one-event entry, one.
async fn inject(app: &TestApp, shard: u64, events: u32, fields: &[(&str, &str)]) {
    let mut args: Vec<String> = vec![
        "redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2)) \
         redis.call('INCRBY', KEYS[2], ARGV[1]) return 1"
            .to_owned(),
        "2".to_owned(),
        app.ctx.keys.outbox(app.ctx.keys.shard_of_number(shard)),
        app.ctx.keys.outbox_events(app.ctx.keys.shard_of_number(shard)),
        events.to_string(),
    ];
    for (k, v) in fields {
        args.push((*k).to_owned());
        args.push((*v).to_owned());
    }
    let _: i64 = app
        .redis
        .custom(fred::cmd!("EVAL"), args)
        .await
        .expect("XADD into the outbox");
}

async fn dead_letters(app: &TestApp, query: &str) -> Vec<Value> {
    let reply = app
        .admin(Method::GET, &format!("/admin/dead-letters{query}"), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.body["dead_letters"].as_array().cloned().expect("a list")
}

/// Waits for `n` unresolved dead letters; returns them and how long it took.
async fn wait_dead_letters(app: &TestApp, n: usize, within: Duration) -> (Vec<Value>, Duration) {
    let started = Instant::now();
    loop {
        let letters = dead_letters(app, "").await;
        if letters.len() >= n {
            return (letters, started.elapsed());
        }
        assert!(
            started.elapsed() < within,
            "{} of {n} dead letters after {within:?}: {letters:?}",
            letters.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn reconcile(app: &TestApp) -> Value {
    let reply = app.admin(Method::GET, "/admin/reconcile", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.body
}

/// Purchases of `items` by distinct users, all at once; panics unless each
/// succeeds.
async fn buy_all(app: &TestApp, items: std::ops::RangeInclusive<u32>) -> u32 {
    let mut buyers = Vec::new();
    for item in items {
        let (http, addr) = (app.http.clone(), app.addr);
        buyers.push(tokio::spawn(async move {
            let reply = buy(&http, addr, &format!("buyer-{item}"), item).await.expect("answer");
            assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        }));
    }
    let bought = buyers.len() as u32;
    for buyer in buyers {
        buyer.await.expect("buyer");
    }
    bought
}

/// A second purchase of an item already in Postgres, under another event
/// id (as lost Redis state would write it), on the sale's shard while real
/// purchases go on there: it is set aside after its attempts, the others
/// land, reconcile reports it, a retry before the fix still fails and is
/// recorded, and after the fix the retry lands it and reconcile is ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_event_is_set_aside_and_its_shard_flows_on() {
    let app = spawn_app(&[]).await;
    let sale = app.sale_id();
    let shard = app.ctx.keys.shard_of_number(sale).index();
    let first = buy(&app.http, app.addr, "first", 1).await.expect("answer");
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    app.wait_flushed(Duration::from_secs(10)).await;

    let before = tokio::spawn({
        let (http, addr) = (app.http.clone(), app.addr);
        async move {
            for item in 2..=21u32 {
                let reply = buy(&http, addr, &format!("buyer-{item}"), item).await.expect("answer");
                assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
            }
        }
    });
    let now = app.clock.now_ms();
    let poison = format!("{sale}\u{1f}intruder\u{1f}1\u{1f}intruder-code\u{1f}{now}");
    inject(&app, shard, 1, &[("purchase", &poison)]).await;
    let injected = Instant::now();
    let after = buy_all(&app, 22..=61).await;
    before.await.expect("purchases around the poison");
    let bought = 1 + 20 + i64::from(after);

    let (letters, took) = wait_dead_letters(&app, 1, Duration::from_secs(30)).await;
    println!(
        "set aside {:?} after the injection ({took:?} of polling)",
        injected.elapsed()
    );
    let letter = &letters[0];
    assert_eq!(letter["kind"], "purchase");
    assert_eq!(letter["shard"], json!(shard));
    assert_eq!(letter["fields"], json!(["purchase", poison]));
    assert_eq!(letter["attempts"], json!(DEAD_LETTER_AFTER_ATTEMPTS));
    assert_eq!(letter["status"], "unresolved");
    assert!(letter["resolved_at"].is_null());
    let error = letter["error"].as_str().expect("error");
    assert!(error.contains("purchases_one_per_item"), "{error}");
    assert!(
        letter["event_id"]
            .as_str()
            .is_some_and(|id| id.starts_with(&format!("{shard}-"))),
        "{letter}"
    );
    let id = letter["id"].as_i64().expect("id");

    // The rest of the shard flowed on: every real purchase is in Postgres.
    app.wait_flushed(Duration::from_secs(10)).await;
    assert_eq!(app.purchases_in_postgres().await, bought);
    assert_eq!(app.sold_in_redis(sale).await, bought);

    let report = reconcile(&app).await;
    assert_eq!(report["ok"], json!(false), "{report}");
    assert_eq!(report["dead_letters_unresolved"], json!(1));
    assert!(
        report["mismatches"]
            .as_array()
            .expect("mismatches")
            .contains(&json!({"kind": "dead_letter", "id": id, "field": "unresolved", "redis": 1, "postgres": 0})),
        "{report}"
    );

    // Before the fix, a retry fails with a stable code and is recorded.
    let retry = app
        .admin(Method::POST, &format!("/admin/dead-letters/{id}/retry"), None)
        .await;
    assert_eq!(
        (retry.status, retry.error_code()),
        (StatusCode::CONFLICT, "DEAD_LETTER_STILL_FAILING"),
        "{:?}",
        retry.body
    );
    let again = &dead_letters(&app, "").await[0];
    assert_eq!(again["attempts"], json!(DEAD_LETTER_AFTER_ATTEMPTS + 1));
    assert_eq!(again["status"], "unresolved");

    // The operator's fix: the intruder's purchase is the one to keep.
    sqlx::query("DELETE FROM purchases WHERE sale_id = $1 AND item_id = 1")
        .bind(sale as i64)
        .execute(&app.db)
        .await
        .expect("delete the conflicting row");
    let retry = app
        .admin(Method::POST, &format!("/admin/dead-letters/{id}/retry"), None)
        .await;
    assert_eq!(retry.status, StatusCode::OK, "{:?}", retry.body);
    assert_eq!(retry.body["status"], "resolved");
    assert!(retry.body["resolved_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    let owner: String = sqlx::query_scalar("SELECT user_id FROM purchases WHERE sale_id = $1 AND item_id = 1")
        .bind(sale as i64)
        .fetch_one(&app.db)
        .await
        .expect("the replayed purchase");
    assert_eq!(owner, "intruder");
    // A repeated retry changes nothing.
    let repeated = app
        .admin(Method::POST, &format!("/admin/dead-letters/{id}/retry"), None)
        .await;
    assert_eq!(repeated.status, StatusCode::OK);
    assert_eq!(repeated.body, retry.body);

    assert!(dead_letters(&app, "").await.is_empty());
    assert_eq!(dead_letters(&app, "?status=resolved").await.len(), 1);
    assert_eq!(dead_letters(&app, "?status=all&limit=1").await.len(), 1);
    let report = reconcile(&app).await;
    assert_eq!(report["ok"], json!(true), "{report}");
    assert_eq!(report["dead_letters_unresolved"], json!(0));

    // The routes' refusals.
    let missing = app.admin(Method::POST, "/admin/dead-letters/999999/retry", None).await;
    assert_eq!(
        (missing.status, missing.error_code()),
        (StatusCode::NOT_FOUND, "DEAD_LETTER_NOT_FOUND")
    );
    let bad = app.admin(Method::POST, "/admin/dead-letters/x/retry", None).await;
    assert_eq!(
        (bad.status, bad.error_code()),
        (StatusCode::BAD_REQUEST, "INVALID_DEAD_LETTER_ID")
    );
    for (query, code) in [
        ("?status=gone", "INVALID_DEAD_LETTER_STATUS"),
        ("?limit=0", "INVALID_LIMIT"),
        ("?limit=501", "INVALID_LIMIT"),
        ("?before=-1", "INVALID_BEFORE"),
    ] {
        let reply = app
            .admin(Method::GET, &format!("/admin/dead-letters{query}"), None)
            .await;
        assert_eq!(
            (reply.status, reply.error_code()),
            (StatusCode::BAD_REQUEST, code),
            "{query}"
        );
    }
    let anonymous = app.get("/admin/dead-letters").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let anonymous = app.post(&format!("/admin/dead-letters/{id}/retry")).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    app.finish().await;
}

/// Events that cannot be decoded (a kind no sink knows, a wrong number of
/// values, an older one-event entry of an unknown kind) are set aside raw at
/// once, without failing the read of the others; a value that does not
/// parse is set aside after its attempts. Real purchases on the same shard
/// land meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undecodable_and_unparseable_events_are_set_aside_raw() {
    let app = spawn_app(&[]).await;
    let sale = app.sale_id();
    let shard = app.ctx.keys.shard_of_number(sale).index();
    let now = app.clock.now_ms();
    let unparseable = format!("{sale}\u{1f}someone\u{1f}1e+14\u{1f}code-x\u{1f}{now}");
    let before = buy_all(&app, 1..=20).await;
    inject(
        &app,
        shard,
        3,
        &[
            ("no_such_kind", "1\u{1f}2"),
            ("purchase", "only-one-value"),
            ("purchase", &unparseable),
        ],
    )
    .await;
    inject(&app, shard, 1, &[("kind", "refund_v2"), ("sale", "1")]).await;
    let after = buy_all(&app, 21..=60).await;

    let (letters, took) = wait_dead_letters(&app, 4, Duration::from_secs(30)).await;
    println!("four dead letters after {took:?}");
    app.wait_flushed(Duration::from_secs(10)).await;
    assert_eq!(app.purchases_in_postgres().await, i64::from(before + after));

    let by_kind = |kind: &str, fields: Value| -> Value {
        letters
            .iter()
            .find(|l| l["kind"] == kind && l["fields"] == fields)
            .unwrap_or_else(|| panic!("no dead letter {kind} {fields} in {letters:?}"))
            .clone()
    };
    let unknown = by_kind("no_such_kind", json!(["no_such_kind", "1\u{1f}2"]));
    assert_eq!(unknown["attempts"], json!(1));
    assert!(
        unknown["error"].as_str().expect("error").contains("unknown kind"),
        "{unknown}"
    );
    let short = by_kind("purchase", json!(["purchase", "only-one-value"]));
    assert_eq!(short["attempts"], json!(1));
    assert!(
        short["error"].as_str().expect("error").contains("number of values"),
        "{short}"
    );
    let legacy = by_kind("refund_v2", json!(["kind", "refund_v2", "sale", "1"]));
    assert_eq!(legacy["attempts"], json!(1));
    let bad_value = by_kind("purchase", json!(["purchase", unparseable]));
    assert_eq!(bad_value["attempts"], json!(DEAD_LETTER_AFTER_ATTEMPTS));
    assert!(
        bad_value["error"].as_str().expect("error").contains("item"),
        "{bad_value}"
    );
    // The three events of one entry keep the entry's id and their places in it.
    let entry = unknown["entry_id"].as_str().expect("entry id");
    for (letter, index) in [(&unknown, 0), (&short, 1), (&bad_value, 2)] {
        assert_eq!(letter["entry_id"], entry);
        assert_eq!(letter["event_id"], format!("{shard}-{entry}-{index}"));
    }
    assert_eq!(
        legacy["event_id"],
        format!("{shard}-{}", legacy["entry_id"].as_str().expect("id"))
    );

    // Nothing an operator does to Postgres makes these writable: a retry
    // says so, and they stay unresolved.
    for letter in [&unknown, &bad_value] {
        let id = letter["id"].as_i64().expect("id");
        let retry = app
            .admin(Method::POST, &format!("/admin/dead-letters/{id}/retry"), None)
            .await;
        assert_eq!(retry.error_code(), "DEAD_LETTER_STILL_FAILING", "{:?}", retry.body);
    }
    let report = reconcile(&app).await;
    assert_eq!(report["ok"], json!(false));
    assert_eq!(report["dead_letters_unresolved"], json!(4));
    // Paged, newest first.
    let page = app.admin(Method::GET, "/admin/dead-letters?limit=3", None).await;
    let ids: Vec<i64> = page.body["dead_letters"]
        .as_array()
        .expect("page")
        .iter()
        .map(|l| l["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    let next = page.body["next_before"].as_i64().expect("next_before");
    let rest = dead_letters(&app, &format!("?limit=3&before={next}")).await;
    assert_eq!(rest.len(), 1);
    app.finish().await;
}

/// Postgres stopped while purchases go on, then started again: the flusher
/// retries whole batches through the outage, the backlog drains, and nothing
/// is set aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_outage_sets_nothing_aside() {
    let services = std::env::var("STAMPEDE_TEST_SERVICES")
        .expect("STAMPEDE_TEST_SERVICES must name scripts/services.sh: run the tests with scripts/test.sh");
    let port = free_port().to_string();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pg-poison-{port}"));
    let postgres = |action: &str| {
        let status = Command::new("bash")
            .arg(&services)
            .arg(action)
            .env("STAMPEDE_PG_DIR", &dir)
            .env("STAMPEDE_PG_PORT", &port)
            .stdout(Stdio::null())
            .status()
            .expect("services.sh runs");
        assert!(status.success(), "services.sh {action} failed");
    };
    postgres("pg-start");
    let server_url = format!("postgres://postgres@127.0.0.1:{port}/stampede");
    let app = spawn_app_on(&server_url, &[]).await;
    let product = create_product(&app, 1_000, 250).await;

    let mut bought = buy_all(&app, 1..=20).await;
    postgres("pg-stop");
    let outage = Instant::now();
    let outage_for = Duration::from_secs(5);
    let mut item = 20;
    let mut orders = 0;
    while outage.elapsed() < outage_for {
        item += 1;
        let reply = buy(&app.http, app.addr, &format!("outage-{item}"), item)
            .await
            .expect("answer");
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        bought += 1;
        let order = json!({"product_id": product, "quantity": 1, "buyer_id": format!("b{item}")}).to_string();
        let reply = app.request(Method::POST, "/orders", Some(&order)).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        orders += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(app.flusher.backlog().await.expect("backlog") > 0);
    postgres("pg-start");
    let back = Instant::now();
    app.wait_flushed(Duration::from_secs(60)).await;
    println!(
        "outage of {outage_for:?}: {bought} purchases and {orders} orders, drained {:?} after Postgres returned",
        back.elapsed()
    );
    assert_eq!(app.purchases_in_postgres().await, i64::from(bought));
    let set_aside: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_dead_letters")
        .fetch_one(&app.db)
        .await
        .expect("dead letters");
    assert_eq!(set_aside, 0, "an outage is no reason to set anything aside");
    let report = reconcile(&app).await;
    assert_eq!(report["ok"], json!(true), "{report}");
    app.finish().await;
    postgres("pg-stop");
    let _ = std::fs::remove_dir_all(&dir);
}

async fn create_product(app: &TestApp, stock: i64, price_cents: i64) -> u64 {
    let body = json!({"name": "Ingot", "stock": stock, "price_cents": price_cents, "merchant_id": 7}).to_string();
    let reply = app.admin(Method::POST, "/products", Some(&body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.body["id"].as_u64().expect("product id")
}

/// The largest order the API accepts (the largest price times the largest
/// quantity: 10^15 cents), bought at once and held then confirmed, reaches
/// the orders rows, the settlement transactions and a settlement exact; the
/// largest restock reaches the catalogue exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_money_reaches_postgres_exact() {
    let app = spawn_app(&[]).await;
    let total = PRODUCT_PRICE_CENTS_MAX * ORDER_QUANTITY_MAX;
    assert_eq!(total, 1_000_000_000_000_000);
    let fee = total / 10_000 * 250; // STAMPEDE_FEE_BPS's default, exact here
    let mut orders = Vec::new();
    for hold in [None, Some(60)] {
        let product = create_product(&app, ORDER_QUANTITY_MAX, PRODUCT_PRICE_CENTS_MAX).await;
        let mut body = json!({"product_id": product, "quantity": ORDER_QUANTITY_MAX, "buyer_id": "whale"});
        if let Some(secs) = hold {
            body["hold_secs"] = json!(secs);
        }
        let reply = app.request(Method::POST, "/orders", Some(&body.to_string())).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.body["total_amount_cents"], json!(total));
        let id = reply.body["id"].as_str().expect("order id").to_owned();
        if hold.is_some() {
            let confirmed = app.post(&format!("/orders/{id}/confirm")).await;
            assert_eq!(confirmed.status, StatusCode::OK, "{:?}", confirmed.body);
            assert_eq!(confirmed.body["total_amount_cents"], json!(total));
        }
        let read = app.get(&format!("/orders/{id}")).await;
        assert_eq!(read.body["total_amount_cents"], json!(total));
        orders.push(id);
    }
    let empty = create_product(&app, 0, 1).await;
    let restock = app
        .admin(
            Method::POST,
            &format!("/products/{empty}/stock"),
            Some(&json!({"add": PRODUCT_STOCK_MAX}).to_string()),
        )
        .await;
    assert_eq!(restock.status, StatusCode::OK, "{:?}", restock.body);
    assert_eq!(restock.body["stock_total"], json!(PRODUCT_STOCK_MAX));
    app.wait_flushed(Duration::from_secs(10)).await;

    for id in &orders {
        let (status, amount): (String, i64) =
            sqlx::query_as("SELECT status, total_amount_cents FROM orders WHERE id = $1::uuid")
                .bind(id)
                .fetch_one(&app.db)
                .await
                .expect("order row");
        assert_eq!((status.as_str(), amount), ("completed", total));
        let (amount, fee_cents): (i64, i64) =
            sqlx::query_as("SELECT amount_cents, fee_cents FROM transactions WHERE id = $1::uuid")
                .bind(id)
                .fetch_one(&app.db)
                .await
                .expect("settlement transaction");
        assert_eq!((amount, fee_cents), (total, fee));
    }
    let (added, stock_total): (i64, i64) =
        sqlx::query_as("SELECT added, stock_total FROM product_restocks WHERE product_id = $1")
            .bind(empty as i64)
            .fetch_one(&app.db)
            .await
            .expect("restock row");
    assert_eq!((added, stock_total), (PRODUCT_STOCK_MAX, PRODUCT_STOCK_MAX));
    let catalogue: i64 = sqlx::query_scalar("SELECT stock_total FROM products WHERE id = $1")
        .bind(empty as i64)
        .fetch_one(&app.db)
        .await
        .expect("product row");
    assert_eq!(catalogue, PRODUCT_STOCK_MAX);

    // Settled: both orders in one settlement of their merchant's day.
    let day: String = sqlx::query_scalar("SELECT to_char(paid_at, 'YYYY-MM-DD') FROM transactions LIMIT 1")
        .fetch_one(&app.db)
        .await
        .expect("day");
    let job = app
        .admin(
            Method::POST,
            "/jobs/settlement",
            Some(&json!({"from": day, "to": day}).to_string()),
        )
        .await;
    assert_eq!(job.status, StatusCode::ACCEPTED, "{:?}", job.body);
    let job_id = job.body["job_id"].as_str().expect("job id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.admin(Method::GET, &format!("/jobs/{job_id}"), None).await.body["status"] != "COMPLETED" {
        assert!(Instant::now() < deadline, "settlement job not completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let settled: (i64, i64, i64, i32) =
        sqlx::query_as("SELECT gross_cents, fee_cents, net_cents, txn_count FROM settlements WHERE merchant_id = 7")
            .fetch_one(&app.db)
            .await
            .expect("settlement");
    assert_eq!(settled, (2 * total, 2 * fee, 2 * (total - fee), 2));

    assert!(dead_letters(&app, "?status=all").await.is_empty());
    let report = reconcile(&app).await;
    assert_eq!(report["ok"], json!(true), "{report}");
    app.finish().await;
}

/// Rows the write-behind copies (`COPY`, not an INSERT) that Postgres
/// refuses are set aside like any other: one ledger entry and one order
/// breaking a check, each in an entry between good events of its kind. The
/// good ones land, a paid order with its settlement row, and only the two
/// refused wait as dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copied_rows_postgres_refuses_are_set_aside_and_the_rest_land() {
    let app = spawn_app(&[]).await;
    let product = create_product(&app, 10, 500).await;
    let now = app.clock.now_ms();
    let entry = |seq: u32, player: &str, cash_after: i64| {
        format!(
            "0-{seq}\u{1f}{player}\u{1f}EUR\u{1f}deposit\u{1f}copy-ref-{seq}\u{1f}100\u{1f}100\u{1f}0\u{1f}{cash_after}\
             \u{1f}0\u{1f}\u{1f}0\u{1f}\u{1f}{now}"
        )
    };
    let (good_a, refused_entry, good_b) = (entry(1, "copy-a", 100), entry(2, "copy-b", -5), entry(3, "copy-c", 100));
    inject(
        &app,
        0,
        3,
        &[
            ("wallet_entry", &good_a),
            ("wallet_entry", &refused_entry),
            ("wallet_entry", &good_b),
        ],
    )
    .await;
    let order = |id: &str, quantity: u32| {
        format!(
            "{id}\u{1f}{product}\u{1f}copy-buyer\u{1f}{quantity}\u{1f}500\u{1f}completed\u{1f}{now}\u{1f}\u{1f}\u{1f}{now}"
        )
    };
    let paid = "00000000-0000-4000-8000-000000000001";
    let refused_order = order("00000000-0000-4000-8000-000000000002", 0);
    inject(&app, 1, 2, &[("order", &order(paid, 1)), ("order", &refused_order)]).await;

    let (letters, _) = wait_dead_letters(&app, 2, Duration::from_secs(30)).await;
    let mut refused: Vec<(String, String)> = letters
        .iter()
        .map(|l| (l["kind"].as_str().expect("kind").to_owned(), l["error"].to_string()))
        .collect();
    refused.sort();
    assert_eq!(refused[0].0, "order");
    assert!(refused[0].1.contains("quantity"), "{refused:?}");
    assert_eq!(refused[1].0, "wallet_entry");
    assert!(refused[1].1.contains("cash_after"), "{refused:?}");
    assert!(
        letters
            .iter()
            .any(|l| l["fields"] == json!(["wallet_entry", refused_entry]))
    );
    assert!(letters.iter().any(|l| l["fields"] == json!(["order", refused_order])));

    app.wait_flushed(Duration::from_secs(10)).await;
    let players: Vec<String> = sqlx::query_scalar("SELECT player_id FROM wallet_entries ORDER BY player_id")
        .fetch_all(&app.db)
        .await
        .expect("ledger");
    assert_eq!(players, ["copy-a", "copy-c"]);
    let row: (i32, i64, String, i64) = sqlx::query_as(
        "SELECT o.quantity, o.total_amount_cents, o.status, t.fee_cents
         FROM orders o JOIN transactions t ON t.id = o.id WHERE o.id = $1::uuid",
    )
    .bind(paid)
    .fetch_one(&app.db)
    .await
    .expect("the paid order and its settlement row");
    assert_eq!(row, (1, 500, "completed".to_owned(), 500 * 250 / 10_000));
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .expect("orders");
    assert_eq!(orders, 1);
    app.finish().await;
}
