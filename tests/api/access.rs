//! Who may call what: every route of `GET /` is called with each kind of
//! credential and its answer checked against the access it declares, so a
//! route added later is covered without a line here. The check is about
//! access only: 401/403, or anything else.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_TOKEN, EngineProcess, HttpClient, TestApp, create_database, database_url, drop_database, player_token,
    send_raw, spawn_app, test_keys, unique_name,
};

const PLAYER: &str = "access-player-1";
const OTHER_PLAYER: &str = "access-player-2";

/// Status and `WWW-Authenticate` of one request, without reading the body:
/// event streams never end.
async fn status_of(
    http: &HttpClient,
    addr: SocketAddr,
    method: &Method,
    path: &str,
    bearer: Option<&str>,
) -> (StatusCode, Option<String>) {
    let mut builder = Request::builder()
        .method(method.clone())
        .uri(format!("http://{addr}{path}"));
    if let Some(bearer) = bearer {
        builder = builder.header("authorization", format!("Bearer {bearer}"));
    }
    let req = builder.body(Full::new(Bytes::new())).expect("request");
    let res = tokio::time::timeout(Duration::from_secs(30), http.request(req))
        .await
        .expect("answers in time")
        .expect("engine answers");
    let challenge = res
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (res.status(), challenge)
}

/// The body of a GET, as text.
async fn text_of(http: &HttpClient, addr: SocketAddr, path: &str) -> String {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let res = http.request(req).await.expect("engine answers");
    let body = res.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// A path of the pattern: the player parameter names `player`, others a
/// value of the right shape (the handler may refuse it: not an access
/// answer).
fn concrete(pattern: &str, player_param: Option<&str>, player: &str) -> String {
    let mut path = String::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        path.push_str(&rest[..open]);
        let close = rest[open..].find('}').expect("closed parameter") + open;
        let name = &rest[open + 1..close];
        path.push_str(if Some(name) == player_param {
            player
        } else {
            "00000000-0000-4000-8000-000000000001"
        });
        rest = &rest[close + 1..];
    }
    path.push_str(rest);
    path
}

/// What a request may be answered, as far as access goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Through,
    Unauthorized,
    Forbidden,
}

fn answered(status: StatusCode) -> Expect {
    match status {
        StatusCode::UNAUTHORIZED => Expect::Unauthorized,
        StatusCode::FORBIDDEN => Expect::Forbidden,
        _ => Expect::Through,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_its_access_declares() {
    let app = spawn_app(&[]).await;
    let index = app.get("/").await;
    assert_eq!(index.status, StatusCode::OK, "GET / is public: {:?}", index.body);
    let endpoints = index.body["endpoints"].as_array().expect("endpoints").clone();
    assert!(endpoints.len() >= 20, "too few routes: {}", endpoints.len());
    let keys = test_keys();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let same = player_token(PLAYER, None);
    let other = player_token(OTHER_PLAYER, None);
    let expired = player_token(PLAYER, Some(now - 3600));
    let mut wrong = Vec::new();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for endpoint in &endpoints {
        let method: Method = endpoint["method"].as_str().expect("method").parse().expect("a method");
        let pattern = endpoint["path"].as_str().expect("path");
        let access = &endpoint["access"];
        let kind = access["kind"].as_str().expect("access kind");
        let scope = access["scope"].as_str();
        let player_param = access["player_param"].as_str();
        *kinds.entry(kind.to_owned()).or_default() += 1;
        let path = concrete(pattern, player_param, PLAYER);
        // A key of another scope than the one the route asks for.
        let other_scope = if scope == Some("sale") { "orders" } else { "sale" };
        let right: Option<String> = match kind {
            "public" => None,
            "service" | "player" => Some(keys.by_scope[scope.expect("scope")].clone()),
            "admin" => Some(ADMIN_TOKEN.to_owned()),
            other => panic!("{method} {pattern}: unknown access kind {other}"),
        };
        use Expect::*;
        let cases: Vec<(&str, Option<&str>, Expect)> = vec![
            (
                "no credential",
                None,
                if kind == "public" { Through } else { Unauthorized },
            ),
            (
                "a key of another scope",
                Some(keys.by_scope[other_scope].as_str()),
                match kind {
                    "public" => Through,
                    "admin" => Unauthorized,
                    _ => Forbidden,
                },
            ),
            ("the right credential", right.as_deref(), Through),
            (
                "another player's token",
                Some(other.as_str()),
                match (kind, player_param) {
                    ("public", _) => Through,
                    // The handler compares what it reads: not an access
                    // answer for a thing that does not exist.
                    ("player", None) => Through,
                    ("player", Some(_)) | ("service", _) => Forbidden,
                    _ => Unauthorized,
                },
            ),
            (
                "the player's token",
                Some(same.as_str()),
                match kind {
                    "public" | "player" => Through,
                    "service" => Forbidden,
                    _ => Unauthorized,
                },
            ),
            (
                "an expired token",
                Some(expired.as_str()),
                if kind == "public" { Through } else { Unauthorized },
            ),
        ];
        for (what, bearer, expected) in cases {
            let (status, challenge) = status_of(&app.http, app.addr, &method, &path, bearer).await;
            let got = answered(status);
            println!("access: {method} {path} ({kind} {scope:?}) with {what}: {status}");
            if got != expected {
                wrong.push(format!(
                    "{method} {path} ({kind} {scope:?}) with {what}: {status}, expected {expected:?}"
                ));
            }
            if status == StatusCode::UNAUTHORIZED && !challenge.as_deref().is_some_and(|c| c.starts_with("Bearer")) {
                wrong.push(format!(
                    "{method} {path} with {what}: 401 without WWW-Authenticate: Bearer"
                ));
            }
            if what == "an expired token"
                && kind == "player"
                && challenge.as_deref() != Some(r#"Bearer error="invalid_token""#)
            {
                wrong.push(format!("{method} {path}: an expired token's 401 says {challenge:?}"));
            }
        }
    }
    println!("access: routes by kind {kinds:?}");
    for kind in ["public", "service", "player", "admin"] {
        assert!(kinds.contains_key(kind), "no {kind} route seen: {kinds:?}");
    }
    assert!(wrong.is_empty(), "{} wrong answers:\n{}", wrong.len(), wrong.join("\n"));
    app.finish().await;
}

/// Bad credentials tell nothing: an unknown key name and a known name with
/// a wrong secret get the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_answer_alike() {
    let app = spawn_app(&[]).await;
    let sale_key = &test_keys().by_scope["sale"];
    let (name, secret) = sale_key.split_once('.').expect("name.secret");
    let mut flipped = secret.to_owned();
    let last = if flipped.ends_with('0') { "1" } else { "0" };
    flipped.replace_range(flipped.len() - 1.., last);
    let wrong_secret = format!("{name}.{flipped}");
    let unknown_name = format!("nobody.{secret}");
    let mut answers = Vec::new();
    for bearer in [wrong_secret.as_str(), unknown_name.as_str(), "not-even-a-key"] {
        let auth = format!("Bearer {bearer}");
        let reply = send_raw(
            &app.http,
            app.addr,
            Method::POST,
            "/checkout?user_id=u1&id=1",
            None,
            &[("authorization", auth.as_str())],
        )
        .await
        .expect("answers");
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{bearer}: {:?}", reply.body);
        answers.push((reply.body.clone(), reply.headers.get("www-authenticate").cloned()));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:#?}");
    assert_eq!(answers[0].0["error"]["code"], "UNAUTHORIZED");
    // The key itself passes.
    let auth = format!("Bearer {sale_key}");
    let reply = send_raw(
        &app.http,
        app.addr,
        Method::POST,
        "/checkout?user_id=u1&id=1",
        None,
        &[("authorization", auth.as_str())],
    )
    .await
    .expect("answers");
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    app.finish().await;
}

async fn with_token(app: &TestApp, path: &str, token: &str) -> (StatusCode, Value) {
    let auth = format!("Bearer {token}");
    let reply = send_raw(
        &app.http,
        app.addr,
        Method::GET,
        path,
        None,
        &[("authorization", auth.as_str())],
    )
    .await
    .expect("answers");
    (reply.status, reply.body)
}

/// A player token reads its player's orders only: the router checks the
/// token, the handler the buyer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_reads_only_its_own_orders() {
    let app = spawn_app(&[]).await;
    let body = json!({"name": "Widget", "stock": 5, "price_cents": 100, "merchant_id": 7, "max_per_buyer": 5});
    let product = app.admin(Method::POST, "/products", Some(&body.to_string())).await;
    assert_eq!(product.status, StatusCode::CREATED, "{:?}", product.body);
    let order_body = json!({"product_id": product.body["id"], "quantity": 1, "buyer_id": PLAYER});
    let order = app
        .request(Method::POST, "/orders", Some(&order_body.to_string()))
        .await;
    assert_eq!(order.status, StatusCode::OK, "{:?}", order.body);
    let path = format!("/orders/{}", order.body["id"].as_str().expect("order id"));
    let (mine, body) = with_token(&app, &path, &player_token(PLAYER, None)).await;
    assert_eq!(mine, StatusCode::OK, "{body:?}");
    let (theirs, body) = with_token(&app, &path, &player_token(OTHER_PLAYER, None)).await;
    assert_eq!(theirs, StatusCode::FORBIDDEN, "{body:?}");
    assert_eq!(body["error"]["code"], "FORBIDDEN");
    let (read_key, body) = with_token(&app, &path, &test_keys().by_scope["read"]).await;
    assert_eq!(read_key, StatusCode::OK, "{body:?}");
    app.finish().await;
}

/// The event stream takes the token as `?access_token=` (browsers'
/// EventSource sends no headers), and the token shows in no metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_takes_the_token_in_the_query() {
    let app = spawn_app(&[]).await;
    let token = player_token(PLAYER, None);
    let mine = format!("/wallet/{PLAYER}/events?access_token={token}");
    let (status, _) = status_of(&app.http, app.addr, &Method::GET, &mine, None).await;
    assert_eq!(status, StatusCode::OK);
    let theirs = format!("/wallet/{OTHER_PLAYER}/events?access_token={token}");
    let (status, _) = status_of(&app.http, app.addr, &Method::GET, &theirs, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Another route does not read the query.
    let balance = format!("/wallet/{PLAYER}?currency=EUR&access_token={token}");
    let (status, _) = status_of(&app.http, app.addr, &Method::GET, &balance, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let raw = text_of(&app.http, app.addr, "/metrics").await;
    assert!(!raw.contains(&token), "a metric carries the token");
    assert!(
        raw.contains("stampede_http_requests_by_caller_total{caller=\"player\""),
        "requests are counted by caller"
    );
    assert!(!raw.contains("access_token"), "a metric label carries the query");
    app.finish().await;
}

/// Open mode on loopback: no keys, no player-token secret, every route but
/// the admin ones serves anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mode_on_loopback_serves_without_credentials() {
    let app = spawn_app(&[("STAMPEDE_API_KEYS_FILE", ""), ("STAMPEDE_PLAYER_TOKEN_SECRET", "")]).await;
    let checkout = send_raw(
        &app.http,
        app.addr,
        Method::POST,
        "/checkout?user_id=u1&id=1",
        None,
        &[],
    )
    .await
    .expect("answers");
    assert_eq!(checkout.status, StatusCode::OK, "{:?}", checkout.body);
    let wallet = send_raw(&app.http, app.addr, Method::GET, "/wallet/p1?currency=EUR", None, &[])
        .await
        .expect("answers");
    assert!(
        !matches!(wallet.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN),
        "{:?}",
        wallet.body
    );
    let admin = send_raw(&app.http, app.addr, Method::GET, "/admin/dead-letters", None, &[])
        .await
        .expect("answers");
    assert_eq!(admin.status, StatusCode::UNAUTHORIZED, "admin routes keep their token");
    app.finish().await;
}

/// Beyond loopback without keys the engine refuses to start and says how to
/// configure them; `STAMPEDE_AUTH=off` is the operator's explicit choice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_beyond_loopback_the_engine_refuses_to_start() {
    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    let port = crate::helpers::free_port();
    let listen = format!("0.0.0.0:{port}");
    let refusal = EngineProcess::expect_refusal(
        &db_url,
        &name,
        &[
            ("STAMPEDE_LISTEN", listen.as_str()),
            ("STAMPEDE_API_KEYS_FILE", ""),
            ("STAMPEDE_PLAYER_TOKEN_SECRET", ""),
        ],
        Duration::from_secs(60),
    )
    .await;
    drop_database(&database_url(), &name).await;
    let (status, stderr) = refusal.expect("the engine refuses to serve openly beyond loopback");
    println!("access: refused with {status}: {}", stderr.trim());
    assert_eq!(status.code(), Some(2), "a configuration error");
    assert!(
        stderr.contains("STAMPEDE_API_KEYS_FILE")
            && stderr.contains("stampede keys new")
            && stderr.contains("STAMPEDE_AUTH=off"),
        "{stderr}"
    );

    let app = spawn_app(&[
        ("STAMPEDE_LISTEN", "0.0.0.0:0"),
        ("STAMPEDE_API_KEYS_FILE", ""),
        ("STAMPEDE_PLAYER_TOKEN_SECRET", ""),
        ("STAMPEDE_AUTH", "off"),
    ])
    .await;
    let addr: SocketAddr = format!("127.0.0.1:{}", app.addr.port()).parse().expect("addr");
    let checkout = send_raw(&app.http, addr, Method::POST, "/checkout?user_id=u1&id=1", None, &[])
        .await
        .expect("answers");
    assert_eq!(checkout.status, StatusCode::OK, "{:?}", checkout.body);
    app.finish().await;
}

/// `stampede keys new` prints the secret, then the line of the keys file,
/// which holds its hash only.
#[test]
fn keys_new_prints_the_secret_and_the_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stampede"))
        .args(["keys", "new", "--name", "shop", "--scopes", "sale,orders"])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    let secret = lines[0].strip_prefix("secret: ").expect("first line: the secret");
    let line = lines[1].strip_prefix("line: ").expect("second line: the file's line");
    assert!(secret.starts_with("shop."), "{secret}");
    assert!(line.starts_with("shop sale,orders "), "{line}");
    assert!(
        !line.contains(secret.trim_start_matches("shop.")),
        "the line never holds the secret"
    );
}

/// A key rotated without a restart: on `SIGHUP` the engine reads its keys
/// file again. The new key works and the removed one is refused from the
/// next request on; a file that does not parse changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_a_key_without_a_restart() {
    use stampede::server::access::new_key;

    let name = unique_name();
    let db_url = create_database(&database_url(), &name).await;
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-keys.txt"));
    let old = new_key("shop", &["sale".to_owned()]).expect("key");
    let new = new_key("shop-2", &["sale".to_owned()]).expect("key");
    std::fs::write(&path, format!("{}\n", old.line)).expect("keys file");
    let keys_file = path.display().to_string();
    let engine = EngineProcess::start(&db_url, &name, "", &[("STAMPEDE_API_KEYS_FILE", keys_file.as_str())]).await;
    let http = crate::helpers::http_client();
    // A sale route: 401 is the gate's answer; anything else, the handler's.
    let status = |secret: String| {
        let http = http.clone();
        async move {
            status_of(
                &http,
                engine.addr,
                &Method::POST,
                "/checkout?user_id=u1&id=1",
                Some(&secret),
            )
            .await
            .0
        }
    };
    let hangup = |pid: u32| {
        let done = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(done.success(), "kill -HUP");
    };
    // Waits until `secret` is answered as `accepted` says (the reload is
    // asynchronous to the signal).
    let wait_for = |secret: String, accepted: bool| {
        let status = &status;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let now = status(secret.clone()).await;
                if (now != StatusCode::UNAUTHORIZED) == accepted {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "still {now} for a key that should be {}",
                    if accepted { "accepted" } else { "refused" }
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    assert_ne!(status(old.secret.clone()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(new.secret.clone()).await, StatusCode::UNAUTHORIZED);

    // Both keys while the service moves to the new secret.
    std::fs::write(&path, format!("{}\n{}\n", old.line, new.line)).expect("keys file");
    hangup(engine.pid());
    wait_for(new.secret.clone(), true).await;
    assert_ne!(status(old.secret.clone()).await, StatusCode::UNAUTHORIZED);

    // The old key removed.
    std::fs::write(&path, format!("{}\n", new.line)).expect("keys file");
    hangup(engine.pid());
    wait_for(old.secret.clone(), false).await;
    assert_ne!(status(new.secret.clone()).await, StatusCode::UNAUTHORIZED);

    // A file that does not parse, and one naming a scope no route asks for:
    // the keys in force stay, and the engine goes on serving.
    for broken in [
        "shop-3 sale not-a-hash\n".to_owned(),
        format!(
            "{}\n",
            new_key("shop-4", &["nosuchscope".to_owned()]).expect("key").line
        ),
    ] {
        std::fs::write(&path, broken).expect("keys file");
        hangup(engine.pid());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_ne!(
            status(new.secret.clone()).await,
            StatusCode::UNAUTHORIZED,
            "the keys in force stay"
        );
        assert_eq!(status(old.secret.clone()).await, StatusCode::UNAUTHORIZED);
    }

    drop(engine);
    let _ = std::fs::remove_file(&path);
    drop_database(&database_url(), &name).await;
}
