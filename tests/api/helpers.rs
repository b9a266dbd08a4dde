//! The test harness: each test gets the real engine on a random port, its own
//! Postgres database and its own Redis key prefix, against the real services
//! that `scripts/test.sh` starts (REDIS_URL, DATABASE_URL).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::clients::Client as RedisClient;
use fred::interfaces::{ClientLike, HashesInterface, KeysInterface};
use fred::types::config::Config as RedisConfig;
use fred::types::scan::Scanner;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, PgPool};
use stampede::app::App;
use stampede::clock::ManualClock;
use stampede::config::Config;
use stampede::context::Context;
use stampede::outbox::Flusher;
use stampede::redis::keyspace::Keyspace;
use stampede::sale::settings::SaleSettings;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").expect("REDIS_URL must be set: run the tests with scripts/test.sh")
}

pub fn database_url() -> String {
    std::env::var("DATABASE_URL").expect("DATABASE_URL must be set: run the tests with scripts/test.sh")
}

/// The admin token every test engine is started with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The player-token secret every test engine shares with the tests, which
/// sign the tokens as the operator's backend would.
pub const PLAYER_TOKEN_SECRET: &str = "test-player-token-secret-0123456789abcdef";

/// The service scopes the engine's routes ask for, and the two beside them.
pub const SCOPES: &[&str] = &["sale", "orders", "wallet", "ingest", "read", "metrics"];

/// The keys file every test engine starts with: a key per scope, and `all`
/// with every scope, which the request helpers send unless told otherwise.
pub struct TestKeys {
    pub path: std::path::PathBuf,
    /// Every scope.
    pub all: String,
    /// One key per scope, by scope.
    pub by_scope: BTreeMap<&'static str, String>,
}

pub fn test_keys() -> &'static TestKeys {
    static KEYS: std::sync::OnceLock<TestKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        use stampede::server::access::new_key;
        let mut lines = vec!["# made by the test harness".to_owned()];
        let all_scopes: Vec<String> = SCOPES.iter().map(|s| (*s).to_owned()).collect();
        let all = new_key("all", &all_scopes).expect("key");
        lines.push(all.line);
        let mut by_scope = BTreeMap::new();
        for scope in SCOPES {
            let key = new_key(&format!("only-{scope}"), &[(*scope).to_owned()]).expect("key");
            lines.push(key.line);
            by_scope.insert(*scope, key.secret);
        }
        let path =
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("api-keys-{}.txt", std::process::id()));
        std::fs::write(&path, lines.join("\n") + "\n").expect("keys file written");
        TestKeys {
            path,
            all: all.secret,
            by_scope,
        }
    })
}

/// `Authorization: Bearer <key with every scope>`, as a header line for a
/// request written by hand.
pub fn auth_line() -> String {
    format!("Authorization: Bearer {}\r\n", test_keys().all)
}

/// A player token of `player`, signed with the test engines' secret,
/// valid for a day (`exp_secs` from the epoch otherwise).
pub fn player_token(player: &str, exp_secs: Option<i64>) -> String {
    let exp = exp_secs.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after epoch")
            .as_secs() as i64
            + 86_400
    });
    stampede::server::access::player_token(PLAYER_TOKEN_SECRET, player, exp).expect("token signs")
}

/// A unique name for this test's database and Redis key prefix.
pub fn unique_name() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

/// Creates a fresh database on the server of `server_url`; returns its URL.
pub async fn create_database(server_url: &str, name: &str) -> String {
    let options: PgConnectOptions = server_url.parse().expect("DATABASE_URL parses");
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .expect("connect to the postgres database");
    admin
        .execute(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
        .await
        .expect("create test database");
    let mut url = url_without_database(server_url);
    url.push('/');
    url.push_str(name);
    url
}

fn url_without_database(url: &str) -> String {
    // postgres://user@host:port/db?params -> postgres://user@host:port
    let (scheme, rest) = url.split_once("://").expect("URL has a scheme");
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

pub async fn drop_database(server_url: &str, name: &str) {
    let options: PgConnectOptions = server_url.parse().expect("DATABASE_URL parses");
    if let Ok(mut admin) = PgConnection::connect_with(&options.database("postgres")).await {
        let _ = admin
            .execute(AssertSqlSafe(format!(
                r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
            )))
            .await;
    }
}

/// Start of the real current sale window plus a second, so tests start inside
/// a sale with the whole period ahead of them.
pub fn clock_at_sale_start(period_secs: u64) -> Arc<ManualClock> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after epoch")
        .as_millis() as i64;
    let period_ms = period_secs as i64 * 1000;
    ManualClock::new(now / period_ms * period_ms + 1000)
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub clock: Arc<ManualClock>,
    pub ctx: Arc<Context>,
    /// The sale's rules this engine runs with.
    pub sale: SaleSettings,
    pub flusher: Arc<Flusher>,
    pub prefix: String,
    pub db_name: String,
    pub db: PgPool,
    pub redis: RedisClient,
    pub http: HttpClient,
    server_url: String,
    /// False for an engine that shares another's database and key prefix
    /// (`spawn_app_sharing`): the first one removes them.
    owns_data: bool,
    stop: Option<oneshot::Sender<()>>,
    running: Option<JoinHandle<()>>,
}

/// Starts the engine with the test defaults plus `overrides` (env var names).
pub async fn spawn_app(overrides: &[(&str, &str)]) -> TestApp {
    spawn_app_on(&database_url(), overrides).await
}

pub async fn spawn_app_on(server_url: &str, overrides: &[(&str, &str)]) -> TestApp {
    stampede::telemetry::init_tracing();
    let name = unique_name();
    let db_url = create_database(server_url, &name).await;
    start_engine(server_url, &name, db_url, None, overrides).await
}

/// A second engine on `other`'s Redis key prefix, database and clock, as
/// another process of the same deployment would be (its own consumer name).
#[allow(dead_code)] // for the multi-engine tests of the features
pub async fn spawn_app_sharing(other: &TestApp, overrides: &[(&str, &str)]) -> TestApp {
    let mut db_url = url_without_database(&other.server_url);
    db_url.push('/');
    db_url.push_str(&other.db_name);
    let consumer = format!("{}-second-consumer", other.prefix);
    let mut vars: Vec<(&str, &str)> = vec![("STAMPEDE_CONSUMER", &consumer)];
    vars.extend_from_slice(overrides);
    start_engine(
        &other.server_url,
        &other.prefix,
        db_url,
        Some(other.clock.clone()),
        &vars,
    )
    .await
}

/// The configuration a test engine runs with: the test defaults, its
/// database and key prefix, then `overrides` (env var names).
pub fn engine_config(db_url: &str, name: &str, overrides: &[(&str, &str)]) -> Config {
    let mut vars: BTreeMap<String, String> = [
        ("REDIS_URL", redis_url()),
        ("DATABASE_URL", db_url.to_owned()),
        ("STAMPEDE_LISTEN", "127.0.0.1:0".into()),
        ("STAMPEDE_KEY_PREFIX", name.to_owned()),
        ("STAMPEDE_CONSUMER", format!("{name}-consumer")),
        ("STAMPEDE_FLUSH_LINGER_MS", "2".into()),
        ("STAMPEDE_SHUTDOWN_GRACE_MS", "5000".into()),
        ("STAMPEDE_ADMIN_TOKEN", ADMIN_TOKEN.into()),
        ("STAMPEDE_API_KEYS_FILE", test_keys().path.display().to_string()),
        ("STAMPEDE_PLAYER_TOKEN_SECRET", PLAYER_TOKEN_SECRET.into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in overrides {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    Config::from_vars(vars).expect("test config is valid")
}

async fn start_engine(
    server_url: &str,
    name: &str,
    db_url: String,
    clock: Option<Arc<ManualClock>>,
    overrides: &[(&str, &str)],
) -> TestApp {
    let owns_data = clock.is_none();
    let name = name.to_owned();
    let config = engine_config(&db_url, &name, overrides);
    let sale = SaleSettings::from_env(&config.env()).expect("test sale settings are valid");
    let clock = clock.unwrap_or_else(|| clock_at_sale_start(sale.period_secs));
    let app = App::build(config, clock.clone()).await.expect("engine starts");
    let addr = app.local_addrs()[0];
    let ctx = app.context();
    let flusher = app.flusher();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until_stopped(async {
        let _ = stop_rx.await;
    }));

    let redis = redis_client().await;
    let db = PgPool::connect(&db_url).await.expect("test database connects");
    let http = http_client();
    TestApp {
        addr,
        clock,
        ctx,
        sale,
        flusher,
        prefix: name.clone(),
        db_name: name,
        db,
        redis,
        http,
        server_url: server_url.to_owned(),
        owns_data,
        stop: Some(stop_tx),
        running: Some(running),
    }
}

/// A reply: status and JSON body (Null when the body is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub headers: hyper::HeaderMap,
}

impl Reply {
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// The `Retry-After` header in whole seconds, when there is one.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.headers
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// One request; `Err` when the connection failed (an engine killed mid-test).
pub async fn send(
    http: &HttpClient,
    addr: SocketAddr,
    method: Method,
    path_and_query: &str,
    body: Option<&str>,
) -> Result<Reply, String> {
    send_with(http, addr, method, path_and_query, body, &[]).await
}

/// One request with extra headers (`Idempotency-Key`, …), and the key with
/// every scope unless they carry an `Authorization` (an empty one sends
/// none).
pub async fn send_with(
    http: &HttpClient,
    addr: SocketAddr,
    method: Method,
    path_and_query: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let bearer = format!("Bearer {}", test_keys().all);
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
    {
        all.push(("authorization", &bearer));
    }
    all.retain(|(name, value)| !(name.eq_ignore_ascii_case("authorization") && value.is_empty()));
    send_raw(http, addr, method, path_and_query, body, &all).await
}

/// One request with exactly these headers: no credential is added.
pub async fn send_raw(
    http: &HttpClient,
    addr: SocketAddr,
    method: Method,
    path_and_query: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path_and_query}"));
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let req = builder
        .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
        .map_err(|e| e.to_string())?;
    let res = http.request(req).await.map_err(|e| e.to_string())?;
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        headers,
    })
}

/// Checkout then purchase; the purchased item on success.
pub async fn buy(http: &HttpClient, addr: SocketAddr, user: &str, item: u32) -> Result<Reply, String> {
    let checkout = send(
        http,
        addr,
        Method::POST,
        &format!("/checkout?user_id={user}&id={item}"),
        None,
    )
    .await?;
    let Some(code) = checkout.body["code"].as_str() else {
        return Ok(checkout);
    };
    send(http, addr, Method::POST, &format!("/purchase?code={code}"), None).await
}

/// A port that was free a moment ago, for engines started as a process.
/// Waits until `done` reaches `target` requests acknowledged by an engine
/// about to be killed. Fails, rather than hangs, if every client task has
/// stopped first (a refusal panics a client's task) or after a minute.
pub async fn wait_for_acknowledged<T>(done: &AtomicUsize, target: usize, clients: &[JoinHandle<T>], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::SeqCst) < target {
        let stopped = clients.iter().all(JoinHandle::is_finished);
        assert!(
            !stopped && Instant::now() < deadline,
            "only {} {what} acknowledged before the kill",
            done.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port()
}

pub async fn redis_client() -> RedisClient {
    let redis = RedisClient::new(
        RedisConfig::from_url(&redis_url()).expect("REDIS_URL parses"),
        None,
        None,
        None,
    );
    redis.init().await.expect("test redis client connects");
    redis
}

/// The key space of the engines on `prefix`, as the shard layout their
/// first start recorded in Redis (on a cluster, the tags are not the shard
/// numbers), for tests that name keys of an engine in another process.
pub async fn engine_keys(redis: &RedisClient, prefix: &str) -> Keyspace {
    let raw: Option<String> = redis.get(format!("{prefix}:layout")).await.expect("GET layout");
    let record: Value = serde_json::from_str(&raw.expect("the engine recorded its layout")).expect("layout is JSON");
    let tags = record["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .map(|t| t.as_str().expect("tag").to_owned())
        .collect();
    Keyspace::new(prefix, tags)
}

/// Entries left in all outbox shards of `prefix`.
pub async fn outbox_backlog(redis: &RedisClient, prefix: &str) -> u64 {
    let keys = engine_keys(redis, prefix).await;
    let mut total = 0;
    for shard in keys.shards() {
        let len: u64 = redis
            .custom(fred::cmd!("XLEN"), vec![keys.outbox(shard)])
            .await
            .expect("XLEN");
        total += len;
    }
    total
}

/// Every key matching `pattern`, on every primary of a cluster (a plain
/// SCAN on a clustered client reads one node).
pub async fn keys_matching(redis: &RedisClient, pattern: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut pages = match redis.is_clustered() {
        true => redis.scan_cluster(pattern.to_owned(), Some(1000), None).boxed(),
        false => redis.scan(pattern.to_owned(), Some(1000), None).boxed(),
    };
    while let Some(page) = pages.next().await {
        let mut page = page.expect("SCAN");
        for key in page.take_results().unwrap_or_default() {
            found.push(key.into_string().expect("key is text"));
        }
    }
    found
}

/// Items sold in Redis for `sale_id` of `prefix`, over every shard.
pub async fn sold_over_shards(redis: &RedisClient, prefix: &str, sale_id: u64) -> i64 {
    let keys = engine_keys(redis, prefix).await;
    let mut sold = 0;
    for shard in keys.shards() {
        let part: i64 = redis
            .custom(
                fred::cmd!("BITCOUNT"),
                vec![keys.key(shard, format_args!("sale:{sale_id}:sold"))],
            )
            .await
            .expect("BITCOUNT");
        sold += part;
    }
    sold
}

/// Each user's `p:` (purchased) and `r:` (reserved) counts for `sale_id`,
/// summed over every shard's users hash.
pub async fn user_counts(redis: &RedisClient, prefix: &str, sale_id: u64) -> HashMap<String, (i64, i64)> {
    let keys = engine_keys(redis, prefix).await;
    let mut counts: HashMap<String, (i64, i64)> = HashMap::new();
    for shard in keys.shards() {
        let fields: HashMap<String, String> = redis
            .hgetall(keys.key(shard, format_args!("sale:{sale_id}:users")))
            .await
            .expect("HGETALL");
        for (field, value) in fields {
            let n: i64 = value.parse().unwrap_or(0);
            if let Some(user) = field.strip_prefix("p:") {
                counts.entry(user.to_owned()).or_default().0 += n;
            } else if let Some(user) = field.strip_prefix("r:") {
                counts.entry(user.to_owned()).or_default().1 += n;
            }
        }
    }
    counts
}

impl TestApp {
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub async fn request(&self, method: Method, path_and_query: &str, body: Option<&str>) -> Reply {
        send(&self.http, self.addr, method, path_and_query, body)
            .await
            .expect("engine answers")
    }

    /// A request with extra headers.
    #[allow(dead_code)] // for the admin and idempotency tests of the features
    pub async fn request_with(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        send_with(&self.http, self.addr, method, path_and_query, body, headers)
            .await
            .expect("engine answers")
    }

    /// A request as the admin (`Authorization: Bearer <ADMIN_TOKEN>`).
    #[allow(dead_code)] // for the admin routes of the features
    pub async fn admin(&self, method: Method, path_and_query: &str, body: Option<&str>) -> Reply {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        self.request_with(method, path_and_query, body, &[("authorization", auth.as_str())])
            .await
    }

    pub async fn post(&self, path_and_query: &str) -> Reply {
        self.request(Method::POST, path_and_query, None).await
    }

    pub async fn get(&self, path_and_query: &str) -> Reply {
        self.request(Method::GET, path_and_query, None).await
    }

    pub async fn checkout(&self, user: &str, item: u32) -> Reply {
        self.post(&format!("/checkout?user_id={user}&id={item}")).await
    }

    /// Checks out and returns the code; panics unless the checkout succeeded.
    pub async fn code_for(&self, user: &str, item: u32) -> String {
        let reply = self.checkout(user, item).await;
        assert_eq!(reply.status, StatusCode::OK, "checkout {user}/{item}: {:?}", reply.body);
        reply.body["code"].as_str().expect("code in reply").to_owned()
    }

    pub async fn purchase(&self, code: &str) -> Reply {
        self.post(&format!("/purchase?code={code}")).await
    }

    pub fn sale_id(&self) -> u64 {
        let period_ms = self.sale.period_secs as i64 * 1000;
        use stampede::clock::Clock;
        (self.clock.now_ms() / period_ms) as u64
    }

    /// Redis key of the current sale's `suffix` (e.g. ":sold").
    pub fn sale_key(&self, sale_id: u64, suffix: &str) -> String {
        let keys = &self.ctx.keys;
        keys.key(keys.shard_of_number(sale_id), format_args!("sale:{sale_id}{suffix}"))
    }

    pub async fn sold_in_redis(&self, sale_id: u64) -> i64 {
        let key = self.sale_key(sale_id, ":sold");
        self.redis
            .custom::<i64, _>(fred::cmd!("BITCOUNT"), vec![key])
            .await
            .expect("BITCOUNT")
    }

    /// Items sold in Redis over every shard: a sale split over several
    /// slots has a sold bitmap on each of its parts' shards.
    pub async fn sold_over_shards(&self, sale_id: u64) -> i64 {
        sold_over_shards(&self.redis, &self.prefix, sale_id).await
    }

    /// Each user's purchased and reserved counts in Redis, over every part.
    pub async fn user_counts(&self, sale_id: u64) -> HashMap<String, (i64, i64)> {
        user_counts(&self.redis, &self.prefix, sale_id).await
    }

    pub async fn purchases_in_postgres(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM purchases")
            .fetch_one(&self.db)
            .await
            .expect("count purchases")
    }

    /// Waits until the outbox is empty (everything committed in Postgres).
    pub async fn wait_flushed(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let backlog = self.flusher.backlog().await.expect("backlog readable");
            if backlog == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "outbox still holds {backlog} entries after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the engine (graceful: drains the outbox) and waits for it.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(running) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(30), running)
                .await
                .expect("engine stops within 30 s")
                .expect("engine task did not panic");
        }
    }

    /// Stops the engine and removes the test's database and Redis keys.
    pub async fn finish(mut self) {
        self.stop().await;
        self.db.close().await;
        if self.owns_data {
            drop_database(&self.server_url, &self.db_name).await;
            delete_keys(&self.redis, &self.prefix).await;
            // Removed: nothing left for `drop` to do.
            self.owns_data = false;
        }
        let _ = self.redis.quit().await;
    }
}

/// How long a dropped, unfinished [`TestApp`] tries to remove its data.
const DROP_CLEANUP_WITHIN: Duration = Duration::from_secs(15);

impl Drop for TestApp {
    /// A test that fails (panics) before `finish` would leave its database
    /// and keys behind, one per failure, on a Postgres and a Redis that
    /// outlive the run. They are removed here instead. `drop` cannot await,
    /// and this thread's runtime may be unwinding, so the removal runs on a
    /// thread of its own with a runtime of its own, joined before returning.
    /// A test may have stopped or paused the servers it used: the removal
    /// gives up after `DROP_CLEANUP_WITHIN` rather than hang the run.
    fn drop(&mut self) {
        if !self.owns_data {
            return;
        }
        let (server_url, db_name, prefix) = (self.server_url.clone(), self.db_name.clone(), self.prefix.clone());
        let redis_config = self.redis.client_config();
        let removal = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            let removal = async move {
                drop_database(&server_url, &db_name).await;
                let redis = RedisClient::new(redis_config, None, None, None);
                if redis.init().await.is_ok() {
                    delete_keys(&redis, &prefix).await;
                    let _ = redis.quit().await;
                }
            };
            let _ = runtime.block_on(async { tokio::time::timeout(DROP_CLEANUP_WITHIN, removal).await });
        });
        let _ = removal.join();
    }
}

pub async fn delete_keys(redis: &RedisClient, prefix: &str) {
    // One DEL per hash slot: on a cluster a DEL of keys in several slots
    // is refused (CROSSSLOT).
    let mut by_slot: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for key in keys_matching(redis, &format!("{prefix}:*")).await {
        by_slot
            .entry(fred::util::redis_keyslot(key.as_bytes()))
            .or_default()
            .push(key);
    }
    for keys in by_slot.into_values() {
        for chunk in keys.chunks(1000) {
            let _: Result<i64, _> = redis.del(chunk.to_vec()).await;
        }
    }
}

/// A private redis-server, so a test can crash, pause or misconfigure it
/// without disturbing others: `appendonly yes`, `appendfsync always` (an
/// acknowledged write survives a `kill -9`), no snapshots, then `extra`
/// arguments (a later option wins).
pub struct PrivateRedis {
    child: Option<Child>,
    pub port: u16,
    pub dir: std::path::PathBuf,
    extra: Vec<String>,
    /// Made by `fresh`: removed with the server.
    owns_dir: bool,
}

impl PrivateRedis {
    #[allow(dead_code)] // for tests that restart a Redis in a folder of their own
    pub fn start(port: u16, dir: &std::path::Path) -> Self {
        Self::start_with(port, dir, &[])
    }

    pub fn start_with(port: u16, dir: &std::path::Path, extra: &[&str]) -> Self {
        let mut redis = Self {
            child: None,
            port,
            dir: dir.to_owned(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            owns_dir: false,
        };
        redis.run();
        redis
    }

    fn run(&mut self) {
        std::fs::create_dir_all(&self.dir).expect("redis dir");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts (scripts/services.sh installs it)");
        self.child = Some(child);
        // PONG only once its AOF is replayed (-LOADING before).
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.pong() {
            assert!(
                Instant::now() < deadline,
                "private redis on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pong(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 64];
        conn.write_all(b"PING\r\n").is_ok() && conn.read(&mut reply).is_ok_and(|n| reply[..n].starts_with(b"+PONG"))
    }

    /// A private Redis in a fresh folder under the test target directory,
    /// removed when it is dropped.
    pub fn fresh(name: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        let mut redis = Self::start_with(port, &dir, extra);
        redis.owns_dir = true;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    #[allow(dead_code)] // for the fault suite's proxy
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A client of this Redis, for the test's own commands.
    pub async fn client(&self) -> RedisClient {
        let redis = RedisClient::new(
            RedisConfig::from_url(&self.url()).expect("private redis URL parses"),
            None,
            None,
            None,
        );
        redis.init().await.expect("private redis client connects");
        redis
    }

    /// SIGKILL: whatever was not yet in the AOF is lost, as in a crash.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, folder and arguments: it replays
    /// its AOF first.
    #[allow(dead_code)] // for the fault suite's kill -9
    pub fn restart(&mut self) {
        self.crash();
        self.run();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.crash();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The engine as a separate process, so it can be killed with SIGKILL.
pub struct EngineProcess {
    child: Child,
    pub addr: std::net::SocketAddr,
}

impl EngineProcess {
    /// `consumer` names it in the outbox consumer group; empty: unique to
    /// this process (`<prefix>-<port>`). `extra` overrides the defaults
    /// (`REDIS_URL` included). Waits until `GET /health` answers 200.
    pub async fn start(db_url: &str, prefix: &str, consumer: &str, extra: &[(&str, &str)]) -> Self {
        let engine = Self::spawn(db_url, prefix, consumer, extra, Stdio::inherit());
        engine.wait_healthy().await;
        engine
    }

    /// [`start`](Self::start) listening on `listen` (`addr` is the first,
    /// where its health and metrics are read), e.g. its own address and one
    /// it shares with others (`STAMPEDE_REUSEPORT=on`).
    #[allow(dead_code)] // for the scale-out tests
    pub async fn start_listening(
        db_url: &str,
        prefix: &str,
        consumer: &str,
        listen: &[std::net::SocketAddr],
        extra: &[(&str, &str)],
    ) -> Self {
        let joined: Vec<String> = listen.iter().map(|a| a.to_string()).collect();
        let joined = joined.join(",");
        let mut vars = vec![("STAMPEDE_LISTEN", joined.as_str())];
        vars.extend_from_slice(extra);
        let mut engine = Self::spawn(db_url, prefix, consumer, &vars, Stdio::inherit());
        engine.addr = listen[0];
        engine.wait_healthy().await;
        engine
    }

    async fn wait_healthy(&self) {
        let engine = self;
        let http = http_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(reply) = send(&http, engine.addr, Method::GET, "/health", None).await
                && reply.status == StatusCode::OK
            {
                return;
            }
            assert!(Instant::now() < deadline, "engine did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts it without waiting: until it listens, requests are refused.
    pub fn spawn(db_url: &str, prefix: &str, consumer: &str, extra: &[(&str, &str)], stderr: Stdio) -> Self {
        let port = free_port();
        let consumer = match consumer {
            "" => format!("{prefix}-{port}"),
            named => named.to_owned(),
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_stampede"));
        command
            .arg("serve")
            .env("REDIS_URL", redis_url())
            .env("DATABASE_URL", db_url)
            .env("STAMPEDE_LISTEN", format!("127.0.0.1:{port}"))
            .env("STAMPEDE_KEY_PREFIX", prefix)
            .env("STAMPEDE_CONSUMER", &consumer)
            .env("STAMPEDE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("STAMPEDE_API_KEYS_FILE", &test_keys().path)
            .env("STAMPEDE_PLAYER_TOKEN_SECRET", PLAYER_TOKEN_SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in extra {
            command.env(k, v);
        }
        let child = command.spawn().expect("engine binary starts");
        Self {
            child,
            addr: format!("127.0.0.1:{port}").parse().expect("addr"),
        }
    }

    /// Starts an engine that is expected to refuse to start: `Ok` with its
    /// exit status and what it wrote to stderr once it exits; `Err` if it
    /// answered `GET /health` with 200 instead, or still ran after `within`.
    #[allow(dead_code)] // for the start-up checks of the fault suite
    pub async fn expect_refusal(
        db_url: &str,
        prefix: &str,
        extra: &[(&str, &str)],
        within: Duration,
    ) -> Result<(std::process::ExitStatus, String), String> {
        let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{prefix}-stderr.log"));
        let file = std::fs::File::create(&log).expect("engine stderr file");
        let mut engine = Self::spawn(db_url, prefix, "", extra, Stdio::from(file));
        let http = http_client();
        let deadline = Instant::now() + within;
        let outcome = loop {
            if let Some(status) = engine.child.try_wait().expect("engine status") {
                let stderr = std::fs::read_to_string(&log).unwrap_or_default();
                break Ok((status, stderr));
            }
            if let Ok(reply) = send(&http, engine.addr, Method::GET, "/health", None).await
                && reply.status == StatusCode::OK
            {
                break Err("the engine started and answered GET /health with 200".to_owned());
            }
            if Instant::now() > deadline {
                break Err(format!("the engine still ran {within:?} after its start"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let _ = std::fs::remove_file(&log);
        outcome
    }

    /// The process id (its memory is read from /proc/<pid>/status).
    #[allow(dead_code)] // for the flood case of the fault suite
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("engine exits")
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private Postgres (scripts/services.sh pg-start with its own
/// STAMPEDE_PG_DIR and STAMPEDE_PG_PORT), so a test can stop it.
#[allow(dead_code)] // for the Postgres outage of the fault suite
pub struct PrivatePostgres {
    services: String,
    pub port: u16,
    dir: std::path::PathBuf,
    running: bool,
}

#[allow(dead_code)] // for the Postgres outage of the fault suite
impl PrivatePostgres {
    pub fn start(name: &str) -> Self {
        let services = std::env::var("STAMPEDE_TEST_SERVICES")
            .expect("STAMPEDE_TEST_SERVICES must name scripts/services.sh: run the tests with scripts/test.sh");
        let port = free_port();
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pg-{name}-{port}"));
        let mut postgres = Self {
            services,
            port,
            dir,
            running: false,
        };
        postgres.start_again();
        postgres
    }

    fn services(&self, action: &str) {
        let status = Command::new("bash")
            .arg(&self.services)
            .arg(action)
            .env("STAMPEDE_PG_DIR", &self.dir)
            .env("STAMPEDE_PG_PORT", self.port.to_string())
            .stdout(Stdio::null())
            .status()
            .expect("services.sh runs");
        assert!(status.success(), "services.sh {action} failed");
    }

    /// The server's URL (database `stampede`), for `spawn_app_on`.
    pub fn server_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/stampede", self.port)
    }

    /// Returns once it accepts queries.
    pub fn start_again(&mut self) {
        self.services("pg-start");
        self.running = true;
    }

    /// Returns once it is really down.
    pub fn stop(&mut self) {
        self.services("pg-stop");
        self.running = false;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("log"));
    }
}

/// How many times slower than a quiet development machine this one runs:
/// `STAMPEDE_TEST_SLOWNESS` (a number >= 1, default 1), read once. Every
/// latency a test asserts passes through `scaled`, so a loaded machine can
/// run the same checks without loosening any bound by default.
pub fn slowness() -> f64 {
    static SLOWNESS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *SLOWNESS.get_or_init(|| match std::env::var("STAMPEDE_TEST_SLOWNESS") {
        Err(_) => 1.0,
        Ok(text) => match text.trim().parse::<f64>() {
            Ok(factor) if factor.is_finite() && factor >= 1.0 => factor,
            _ => panic!("STAMPEDE_TEST_SLOWNESS must be a number >= 1, not {text:?}"),
        },
    })
}

/// A latency bound a test asserts, on this machine (see `slowness`).
pub fn scaled(bound: Duration) -> Duration {
    bound.mul_f64(slowness())
}
