//! `baseline-server`: the yardstick the engine is measured against.
//!
//! The same API shape as the engine (`POST /checkout`, `POST /purchase`,
//! `GET /sales/current`, `GET /health`) so the load driver's scenarios run
//! against it unchanged, built from the least a Redis-first sale needs: a
//! hyper 1 server and one EVALSHA per request (fred). No Postgres, no
//! metrics, no sale window, no checks beyond parsing the query: whatever the
//! engine spends above this is what its features cost. See
//! loadtest/README.md ("Baseline server") and the two scripts in
//! loadtest/lua/.
//!
//! One sale, id 0, keys under `<prefix>:{0}:` (the engine's layout for sale
//! 0, so the driver's Redis checks apply as they are):
//! `sale:0:sold` (bitmap), `sale:0:users` (hash, `p:<user>` = purchases),
//! `code:<code>` (string with a TTL), `attempts` (stream).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use fred::prelude::{Builder, ClientLike, Config, Pool, Value};
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpSocket;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CHECKOUT_LUA: &str = include_str!("../../lua/baseline_checkout.lua");
const PURCHASE_LUA: &str = include_str!("../../lua/baseline_purchase.lua");

/// Accept backlog: a sale opens ~1000 connections at once (see STACK-NOTES).
const LISTEN_BACKLOG: u32 = 4096;
/// The only sale this server knows.
const SALE_ID: u64 = 0;
/// The engine's bounds on what it stores per request.
const USER_ID_BYTES_MAX: usize = 64;
const CODE_BYTES_MAX: usize = 128;

/// A hyper server with one EVALSHA per request: the yardstick of
/// loadtest/run.sh.
#[derive(Debug, Parser)]
#[command(name = "baseline-server", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18081")]
    listen: SocketAddr,
    /// Redis.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Key prefix: keys are P:{0}:... (no braces: they would move the hash tag).
    #[arg(long, default_value = "baseline", value_parser = prefix)]
    prefix: String,
    /// Items of the sale: 1..=N can be bought.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    items: u32,
    /// Purchases per user.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    limit: u32,
    /// Lifetime of a checkout code, in seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..))]
    code_ttl_secs: u32,
    /// Tokio worker threads, always the multi-thread scheduler [default:
    /// CPUs - 1, at least 1, like the engine].
    #[arg(long)]
    workers: Option<NonZeroUsize>,
    /// Redis connections (the engine's default).
    #[arg(long, default_value = "4")]
    redis_pool: NonZeroUsize,
}

fn prefix(value: &str) -> Result<String, String> {
    if value.is_empty() || value.contains(['{', '}']) {
        return Err("must be non-empty and without braces (they would move the hash tag)".into());
    }
    Ok(value.to_owned())
}

impl Args {
    fn workers(&self) -> usize {
        self.workers.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| usize::from(n).saturating_sub(1).max(1)),
            usize::from,
        )
    }
}

struct State {
    redis: Pool,
    checkout: Script,
    purchase: Script,
    sold_key: String,
    users_key: String,
    stream_key: String,
    /// `<prefix>:{0}:code:`, the code follows.
    code_key_prefix: String,
    items: u32,
    limit: u32,
    code_ttl_secs: u32,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers())
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(serve(args)),
        Err(e) => Err(format!("cannot start tokio: {e}")),
    };
    // Only a setup error ends the server; SIGTERM kills it (nothing to flush).
    if let Err(e) = result {
        eprintln!("baseline-server: {e}");
    }
    std::process::ExitCode::from(2)
}

async fn serve(args: Args) -> Result<(), String> {
    let config = Config::from_url(&args.redis_url).map_err(|e| format!("bad redis url: {e}"))?;
    let redis = Builder::from_config(config)
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(2))
        .with_connection_config(|c| c.connection_timeout = Duration::from_secs(2))
        .build_pool(args.redis_pool.get())
        .map_err(|e| format!("redis pool: {e}"))?;
    redis
        .init()
        .await
        .map_err(|e| format!("cannot connect to redis: {e}"))?;
    let checkout = Script::from_lua(CHECKOUT_LUA);
    let purchase = Script::from_lua(PURCHASE_LUA);
    for script in [&checkout, &purchase] {
        script
            .load(redis.next())
            .await
            .map_err(|e| format!("SCRIPT LOAD: {e}"))?;
    }
    let tag = format!("{}:{{{SALE_ID}}}", args.prefix);
    let state = Arc::new(State {
        redis,
        checkout,
        purchase,
        sold_key: format!("{tag}:sale:{SALE_ID}:sold"),
        users_key: format!("{tag}:sale:{SALE_ID}:users"),
        stream_key: format!("{tag}:attempts"),
        code_key_prefix: format!("{tag}:code:"),
        items: args.items,
        limit: args.limit,
        code_ttl_secs: args.code_ttl_secs,
    });

    let socket = if args.listen.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    socket.set_reuseaddr(true).map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    socket
        .bind(args.listen)
        .map_err(|e| format!("bind {}: {e}", args.listen))?;
    let listener = socket.listen(LISTEN_BACKLOG).map_err(|e| format!("listen: {e}"))?;
    eprintln!(
        "baseline-server: listening on {}, keys {tag}:*, items {}, limit {}, {} workers, {} redis connections",
        args.listen,
        args.items,
        args.limit,
        args.workers(),
        args.redis_pool
    );

    let mut http = http1::Builder::new();
    http.keep_alive(true);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("baseline-server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let connection = http.serve_connection(TokioIo::new(stream), service_fn(move |req| route(state.clone(), req)));
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

type HttpResponse = Response<Full<Bytes>>;

async fn route(state: Arc<State>, req: Request<Incoming>) -> Result<HttpResponse, Infallible> {
    let query = req.uri().query();
    let reply = match (req.method(), req.uri().path()) {
        (&Method::POST, "/checkout") => checkout(&state, query).await,
        (&Method::POST, "/purchase") => purchase(&state, query).await,
        (&Method::GET, "/sales/current") => current(&state).await,
        (&Method::GET, "/health") => Ok(json(StatusCode::OK, &Health { status: "ok" })),
        _ => Err("NOT_FOUND"),
    };
    Ok(reply.unwrap_or_else(error_reply))
}

/// An error code of the engine's (`{"error":{"code":...}}`) is an `Err(code)`.
type Reply = Result<HttpResponse, &'static str>;

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

#[derive(Serialize)]
struct CheckoutIssued<'a> {
    code: &'a str,
    /// The same code under the name the engine also answers with.
    checkout_code: &'a str,
    sale_id: u64,
    item_id: u32,
    user_id: &'a str,
}

async fn checkout(state: &State, query: Option<&str>) -> Reply {
    let (user, item) = checkout_params(query, state.items)?;
    let code = format!("{SALE_ID}-{:032x}", rand::random::<u128>());
    let keys = vec![
        state.sold_key.clone(),
        state.users_key.clone(),
        format!("{}{code}", state.code_key_prefix),
        state.stream_key.clone(),
    ];
    let args: Vec<Value> = vec![
        item.into(),
        user.as_str().into(),
        code.as_str().into(),
        state.code_ttl_secs.into(),
        state.limit.into(),
    ];
    let reply = eval(state, &state.checkout, keys, args).await?;
    match reply.first().and_then(Value::as_str).as_deref() {
        Some("OK") => Ok(json(
            StatusCode::OK,
            &CheckoutIssued {
                code: &code,
                checkout_code: &code,
                sale_id: SALE_ID,
                item_id: item,
                user_id: &user,
            },
        )),
        Some(outcome) => Err(known_outcome(outcome)),
        None => Err("INTERNAL"),
    }
}

#[derive(Serialize)]
struct Purchased {
    status: &'static str,
    success: bool,
    sale_id: u64,
    item_id: i64,
    user_purchases: i64,
}

async fn purchase(state: &State, query: Option<&str>) -> Reply {
    let code = purchase_param(query)?;
    let keys = vec![
        format!("{}{code}", state.code_key_prefix),
        state.sold_key.clone(),
        state.users_key.clone(),
        state.stream_key.clone(),
    ];
    let args: Vec<Value> = vec![code.as_str().into(), state.limit.into()];
    let reply = eval(state, &state.purchase, keys, args).await?;
    match reply.first().and_then(Value::as_str).as_deref() {
        Some("OK") => {
            let (Some(item_id), Some(user_purchases)) = (
                reply.get(1).and_then(Value::as_i64),
                reply.get(2).and_then(Value::as_i64),
            ) else {
                return Err("INTERNAL");
            };
            Ok(json(
                StatusCode::OK,
                &Purchased {
                    status: "success",
                    success: true,
                    sale_id: SALE_ID,
                    item_id,
                    user_purchases,
                },
            ))
        }
        Some(outcome) => Err(known_outcome(outcome)),
        None => Err("INTERNAL"),
    }
}

#[derive(Serialize)]
struct CurrentSale {
    sale_id: u64,
    opened: bool,
    items_total: u64,
    items_sold: u64,
    items_left: u64,
    per_user_limit: u32,
}

/// What the driver's pre-flight reads. The bitmap's count: no script.
async fn current(state: &State) -> Reply {
    let sold: u64 = state
        .redis
        .custom(
            CustomCommand::new_static("BITCOUNT", ClusterHash::FirstKey, false),
            vec![state.sold_key.clone()],
        )
        .await
        .map_err(|_| "REDIS_UNAVAILABLE")?;
    let total = u64::from(state.items);
    Ok(json(
        StatusCode::OK,
        &CurrentSale {
            sale_id: SALE_ID,
            opened: true,
            items_total: total,
            items_sold: sold,
            items_left: total.saturating_sub(sold),
            per_user_limit: state.limit,
        },
    ))
}

/// One EVALSHA (SCRIPT LOAD and again on NOSCRIPT); the script's array.
async fn eval(state: &State, script: &Script, keys: Vec<String>, args: Vec<Value>) -> Result<Vec<Value>, &'static str> {
    match script
        .evalsha_with_reload::<Value, _, _>(state.redis.next(), keys, args)
        .await
    {
        Ok(Value::Array(values)) => Ok(values),
        Ok(_) => Err("INTERNAL"),
        Err(_) => Err("REDIS_UNAVAILABLE"),
    }
}

/// The first value of the first of `names` in the query string, decoded.
fn query_param(query: Option<&str>, names: &[&str]) -> Option<String> {
    let pairs: Vec<_> = form_urlencoded::parse(query.unwrap_or("").as_bytes()).collect();
    names
        .iter()
        .find_map(|name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.to_string()))
}

/// `user_id` and `id` (or `item_id`) of a checkout, as the engine reads them.
fn checkout_params(query: Option<&str>, items: u32) -> Result<(String, u32), &'static str> {
    let user = query_param(query, &["user_id"])
        .filter(|u| !u.is_empty())
        .ok_or("MISSING_USER_ID")?;
    if user.len() > USER_ID_BYTES_MAX || user.chars().any(char::is_control) {
        return Err("INVALID_USER_ID");
    }
    let item = query_param(query, &["id", "item_id"])
        .filter(|i| !i.is_empty())
        .ok_or("MISSING_ITEM_ID")?;
    let digits = item.strip_prefix("item").unwrap_or(&item);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("INVALID_ITEM_ID");
    }
    match digits.parse::<u32>() {
        Ok(n) if (1..=items).contains(&n) => Ok((user, n)),
        Ok(0) | Err(_) => Err("INVALID_ITEM_ID"),
        Ok(_) => Err("ITEM_NOT_FOUND"),
    }
}

/// `code` (or `checkout_code`) of a purchase: only the query string.
fn purchase_param(query: Option<&str>) -> Result<String, &'static str> {
    let code = query_param(query, &["code", "checkout_code"]).ok_or("MISSING_CODE")?;
    let code = code.trim();
    if code.is_empty() {
        return Err("MISSING_CODE");
    }
    if code.len() > CODE_BYTES_MAX || code.chars().any(char::is_control) {
        return Err("INVALID_CODE");
    }
    Ok(code.to_string())
}

/// A script's refusal, as a `'static` error code; anything else is a bug.
fn known_outcome(outcome: &str) -> &'static str {
    match outcome {
        "ITEM_SOLD" => "ITEM_SOLD",
        "USER_LIMIT_REACHED" => "USER_LIMIT_REACHED",
        "CODE_NOT_FOUND" => "CODE_NOT_FOUND",
        _ => "INTERNAL",
    }
}

/// The engine's status for each error code the baseline can answer.
fn error_status(code: &str) -> StatusCode {
    match code {
        "ITEM_SOLD" => StatusCode::CONFLICT,
        "USER_LIMIT_REACHED" => StatusCode::FORBIDDEN,
        "CODE_NOT_FOUND" | "ITEM_NOT_FOUND" | "NOT_FOUND" => StatusCode::NOT_FOUND,
        "REDIS_UNAVAILABLE" => StatusCode::SERVICE_UNAVAILABLE,
        "INTERNAL" => StatusCode::INTERNAL_SERVER_ERROR,
        // MISSING_* and INVALID_*.
        _ => StatusCode::BAD_REQUEST,
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize)]
struct ErrorDetail {
    code: &'static str,
    message: &'static str,
}

fn error_reply(code: &'static str) -> HttpResponse {
    json(
        error_status(code),
        &ErrorBody {
            error: ErrorDetail {
                code,
                message: "refused by the baseline server",
            },
        },
    )
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    // Plain structs of strings and numbers: serializing cannot fail.
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn checkout_params_like_the_engine() {
        assert_eq!(checkout_params(Some("user_id=lt-3&id=7"), 10), Ok(("lt-3".into(), 7)));
        assert_eq!(
            checkout_params(Some("item_id=item10&user_id=a%20b"), 10),
            Ok(("a b".into(), 10))
        );
        assert_eq!(checkout_params(Some("id=7"), 10), Err("MISSING_USER_ID"));
        assert_eq!(checkout_params(Some("user_id=&id=7"), 10), Err("MISSING_USER_ID"));
        assert_eq!(checkout_params(Some("user_id=u%1F&id=7"), 10), Err("INVALID_USER_ID"));
        assert_eq!(
            checkout_params(Some(&format!("user_id={}&id=1", "u".repeat(65))), 10),
            Err("INVALID_USER_ID")
        );
        assert_eq!(checkout_params(Some("user_id=u"), 10), Err("MISSING_ITEM_ID"));
        assert_eq!(checkout_params(Some("user_id=u&id=0"), 10), Err("INVALID_ITEM_ID"));
        assert_eq!(checkout_params(Some("user_id=u&id=-1"), 10), Err("INVALID_ITEM_ID"));
        assert_eq!(checkout_params(Some("user_id=u&id=11"), 10), Err("ITEM_NOT_FOUND"));
        assert_eq!(checkout_params(None, 10), Err("MISSING_USER_ID"));
    }

    #[test]
    fn purchase_param_reads_code_or_checkout_code() {
        assert_eq!(purchase_param(Some("code=0-abc")), Ok("0-abc".into()));
        assert_eq!(purchase_param(Some("checkout_code=%200-abc%20")), Ok("0-abc".into()));
        assert_eq!(purchase_param(Some("code=")), Err("MISSING_CODE"));
        assert_eq!(purchase_param(None), Err("MISSING_CODE"));
        assert_eq!(purchase_param(Some("code=a%0Ab")), Err("INVALID_CODE"));
    }

    #[test]
    fn statuses_are_the_engines() {
        assert_eq!(error_status("ITEM_SOLD"), StatusCode::CONFLICT);
        assert_eq!(error_status("USER_LIMIT_REACHED"), StatusCode::FORBIDDEN);
        assert_eq!(error_status("CODE_NOT_FOUND"), StatusCode::NOT_FOUND);
        assert_eq!(error_status("MISSING_CODE"), StatusCode::BAD_REQUEST);
        assert_eq!(known_outcome("ITEM_SOLD"), "ITEM_SOLD");
        assert_eq!(known_outcome("SOMETHING_ELSE"), "INTERNAL");
    }

    #[test]
    fn replies_have_the_fields_the_driver_reads() {
        let issued = CheckoutIssued {
            code: "0-ab",
            checkout_code: "0-ab",
            sale_id: 0,
            item_id: 7,
            user_id: "lt-1",
        };
        let v: serde_json::Value = serde_json::to_value(&issued).unwrap();
        assert_eq!(
            (v["code"].as_str(), v["checkout_code"].as_str()),
            (Some("0-ab"), Some("0-ab"))
        );
        assert_eq!(v["sale_id"], 0);
        let refused = error_reply("ITEM_SOLD");
        assert_eq!(refused.status(), StatusCode::CONFLICT);
    }

    #[test]
    fn args_defaults_and_refusals() {
        let parse =
            |line: &str| Args::try_parse_from(std::iter::once("baseline-server").chain(line.split_whitespace()));
        let a = parse("--prefix ltb --items 2000 --limit=10").unwrap();
        assert_eq!(
            (a.prefix.as_str(), a.items, a.limit, a.redis_pool.get()),
            ("ltb", 2000, 10, 4)
        );
        assert!(a.workers() >= 1);
        assert_eq!(parse("--workers=3").unwrap().workers(), 3);
        assert!(parse("--prefix a{b}").is_err());
        assert!(parse("--items 0").is_err());
        assert!(parse("--workers 0").is_err());
        assert!(parse("--bogus 1").is_err());
        let help = parse("--help").unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        Args::command().debug_assert();
    }
}
