//! What the engine documents for a client that did not learn the outcome of
//! a request (docs/operations.md, "After a 503"): how to find it out without
//! sending the request again blindly. And when its outbox is flushed.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::{Answer, Client, Method, Target};

/// An order request whose answer was lost or a 503.
#[derive(Debug, Clone)]
pub struct UnknownOrder {
    /// The `order_id` a 503 carries: the id the order has if it was made.
    pub order_id: Option<String>,
    /// `OVERLOADED` or `OUTBOX_FULL`: refused before anything was written.
    pub shed: bool,
    /// Its `Idempotency-Key`, if it had one.
    pub key: Option<String>,
    /// The request's body, to repeat it with its key.
    pub body: String,
}

impl UnknownOrder {
    /// What a client knows after sending `body` (with `key`) and getting `answer`.
    pub fn of(answer: &Answer, key: Option<&str>, body: &str) -> UnknownOrder {
        UnknownOrder {
            order_id: answer.body()["error"]["order_id"].as_str().map(str::to_owned),
            shed: answer.shed(),
            key: key.map(str::to_owned),
            body: body.to_owned(),
        }
    }
}

/// What became of an unknown order.
#[derive(Debug, Clone, PartialEq)]
pub enum OrderFate {
    /// The request made this order (its record: `id`, `status`, ...).
    Made(Value),
    /// It made nothing, and its keyed repeat made this one.
    MadeByRetry(Value),
    /// It made nothing.
    NotMade,
    /// It cannot be found out, and why.
    Unresolved(String),
}

/// Finds out what an unknown order became: `GET /orders/{order_id}` with
/// the id of its 503, and with an `Idempotency-Key` the request again with
/// the same key (made at most once whatever happened: a replay says the
/// first one was made). Both answers must agree.
pub async fn resolve_order(client: &mut Client, order: &UnknownOrder) -> OrderFate {
    let mut problems = Vec::new();
    let mut exists: Option<Value> = None;
    let mut absent = false;
    if let Some(id) = &order.order_id {
        let reply = client.call(Method::GET, &format!("/orders/{id}"), &[], b"").await;
        match (reply.status(), reply.code()) {
            (Some(200), _) => exists = Some(reply.body().clone()),
            (Some(404), "ORDER_NOT_FOUND") => absent = true,
            _ => problems.push(format!("GET /orders/{id}: {}", reply.describe())),
        }
    }
    let mut by_retry = None;
    if let Some(key) = &order.key {
        let again = client
            .call_json(Method::POST, "/orders", &[("idempotency-key", key)], &order.body)
            .await;
        let replayed = matches!(again, Answer::Reply { replayed: true, .. });
        match again.status() {
            Some(200) if (replayed && absent) || (!replayed && exists.is_some()) => problems.push(format!(
                "order {:?} (key {key}): GET said it {}, its keyed repeat answered {}",
                order.order_id,
                if absent { "was not made" } else { "was made" },
                again.describe()
            )),
            Some(200) if replayed => {
                let id = again.body()["id"].as_str().unwrap_or_default();
                if order.order_id.as_deref().is_some_and(|known| known != id) {
                    problems.push(format!(
                        "order {:?}: its keyed repeat replayed another order {id}",
                        order.order_id
                    ));
                }
                exists = Some(again.body().clone());
            }
            Some(200) => {
                absent = true;
                by_retry = Some(again.body().clone());
            }
            Some(409) if exists.is_some() => problems.push(format!(
                "order {:?} exists but its keyed repeat answered {}",
                order.order_id,
                again.describe()
            )),
            Some(409) if again.code() == "OUT_OF_STOCK" => absent = true,
            _ => problems.push(format!(
                "keyed repeat of order {:?} (key {key}): {}",
                order.order_id,
                again.describe()
            )),
        }
    }
    if !problems.is_empty() {
        return OrderFate::Unresolved(problems.join("; "));
    }
    match (exists, by_retry) {
        (Some(order), _) => OrderFate::Made(order),
        (None, Some(order)) => OrderFate::MadeByRetry(order),
        // Shed before Redis: nothing was written (the counts check it).
        (None, None) if absent || order.shed => OrderFate::NotMade,
        (None, None) => OrderFate::Unresolved(format!(
            "an order without Idempotency-Key and without an order_id (no answer, or a 503 without one): its \
             outcome cannot be found ({})",
            order.body
        )),
    }
}

/// What became of a purchase whose answer was lost or a 503.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeFate {
    /// `spent`: the purchase went through.
    Spent,
    /// `issued` (or `expired`): it did not.
    NotSpent,
    Unresolved(String),
}

/// `GET /codes/{code}`: `spent` means the purchase went through.
pub async fn resolve_code(client: &mut Client, code: &str) -> CodeFate {
    let reply = client.call(Method::GET, &format!("/codes/{code}"), &[], b"").await;
    match (reply.status(), reply.body()["state"].as_str()) {
        (Some(200), Some("spent")) => CodeFate::Spent,
        (Some(200), Some("issued" | "expired")) => CodeFate::NotSpent,
        _ => CodeFate::Unresolved(format!("GET /codes/{code}: {}", reply.describe())),
    }
}

/// Waits (up to `within`) until `GET /health` shows an empty outbox: every
/// acknowledged change is in Postgres.
pub async fn wait_flushed(target: &Target, within: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut client = Client::new(target, Duration::from_secs(10));
    loop {
        let health = client.call(Method::GET, "/health", &[], b"").await;
        if health.body()["outbox_backlog"].as_u64() == Some(0) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            return Err(format!("outbox not flushed after {within:?}: {}", health.describe()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
