//! The wallet load: seeding, the SSE clients, and the connections whose
//! players bet, win and refund. Each connection keeps its own record of
//! what it was told: every transaction answered 200 (its id) and every
//! player's balances in its last answer. A request without an answer, or
//! answered 503, is kept as unknown and found out after the load by sending
//! it again with its reference, which the engine applies at most once.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::http::{Conn, Method, Outcome, Target};
use crate::common::stats::{new_histogram, record};

/// A request's budget.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Unexpected answers kept for the report.
const UNEXPECTED_KEPT: usize = 20;
/// Each seeded player's deposit, and every other player's bonus.
const SEED_DEPOSIT: i64 = 1_000_000;
const SEED_BONUS: i64 = 50_000;

/// The fields of a transaction's 200 the driver keeps. The engine's ids
/// need no JSON escapes, so they are borrowed from the body.
#[derive(Deserialize)]
struct TxReply<'a> {
    transaction_id: &'a str,
    cash_minor: i64,
    bonus_minor: i64,
}

/// What the connections were told.
#[derive(Default)]
pub struct Records {
    /// Answers: 200s and refusals (409, 422).
    pub operations: u64,
    /// Ids of the transactions answered 200 (a replay repeats an id).
    pub told: Vec<String>,
    /// Each player's (cash, bonus) in its last 200, plus any bonus granted since.
    pub balances: HashMap<String, (i64, i64)>,
    /// Bodies of the requests answered 503 or not at all.
    pub unknown: Vec<String>,
    /// Players with such a request: the balance of their last answer may
    /// not be their balance.
    pub uncertain: HashSet<String>,
    /// Answers other than 200, 409, 422 (and the first few of them).
    pub unexpected: u64,
    pub unexpected_samples: Vec<String>,
}

impl Records {
    pub fn merge(&mut self, o: Records) {
        self.operations += o.operations;
        self.told.extend(o.told);
        self.balances.extend(o.balances);
        self.unknown.extend(o.unknown);
        self.uncertain.extend(o.uncertain);
        self.unexpected += o.unexpected;
        for s in o.unexpected_samples {
            self.note(s);
        }
    }

    fn note(&mut self, what: String) {
        if self.unexpected_samples.len() < UNEXPECTED_KEPT {
            self.unexpected_samples.push(what);
        }
    }

    /// A 200: its id, and the player's balances after it.
    fn acknowledged(&mut self, player: &str, body: &[u8]) -> Option<String> {
        let reply: TxReply = serde_json::from_slice(body).ok()?;
        self.told.push(reply.transaction_id.to_owned());
        self.balances
            .insert(player.to_owned(), (reply.cash_minor, reply.bonus_minor));
        Some(reply.transaction_id.to_owned())
    }

    /// A request of `player` without a known outcome.
    fn unknown(&mut self, player: &str, body: &str) {
        self.unknown.push(body.to_owned());
        self.uncertain.insert(player.to_owned());
    }
}

/// A deposit for each player, a bonus for every other one (with the admin
/// token): sent once each; anything but their 201/200 is a setup error.
pub async fn seed(target: &Target, players: &[String], admin_token: Option<&str>) -> Result<Records, String> {
    let mut rec = Records::default();
    let mut conn = Conn::connect(target, TIMEOUT).await?;
    for (p, player) in players.iter().enumerate() {
        let body = json!({"player_id": player, "currency": "EUR", "type": "deposit",
                          "amount_minor": SEED_DEPOSIT, "reference_id": format!("{player}-seed")});
        let reply = post(&mut conn, target, "/wallet/transactions", "", &body.to_string(), 200).await?;
        rec.acknowledged(player, &reply).ok_or_else(|| {
            format!(
                "the seed deposit of {player} answered {}",
                String::from_utf8_lossy(&reply)
            )
        })?;
        if p % 2 == 0
            && let Some(token) = admin_token
        {
            let body = json!({"player_id": player, "currency": "EUR", "amount_minor": SEED_BONUS,
                              "wagering_multiplier": 20, "expires_in_secs": 3600,
                              "contributions": {"slots": 100, "table": 20, "live": 10}});
            let auth = format!("Authorization: Bearer {token}\r\n");
            post(&mut conn, target, "/bonuses", &auth, &body.to_string(), 201).await?;
            if let Some(balance) = rec.balances.get_mut(player) {
                balance.1 += SEED_BONUS;
            }
        }
    }
    Ok(rec)
}

async fn post(
    conn: &mut Conn,
    target: &Target,
    path: &str,
    headers: &str,
    body: &str,
    want: u16,
) -> Result<bytes::Bytes, String> {
    let headers = format!("Content-Type: application/json\r\n{headers}");
    match conn
        .request_with_body(target, Method::POST, path, &headers, body.as_bytes(), TIMEOUT)
        .await
    {
        Outcome::Response { status, body, .. } if status == want => Ok(body),
        Outcome::Response { status, body, .. } => Err(format!("{path}: {status} {}", String::from_utf8_lossy(&body))),
        other => Err(format!("{path}: {other:?}")),
    }
}

/// Transactions of the SSE players awaiting their event: tx id → when its
/// 200 was read; events that came first wait in `early`.
#[derive(Default)]
pub struct Tracker {
    waiting: Mutex<(HashMap<String, Instant>, HashMap<String, Instant>)>,
    latencies: Mutex<Vec<Duration>>,
    pub connected: AtomicU64,
}

impl Tracker {
    fn answered(&self, tx: String) {
        if let Ok(mut maps) = self.waiting.lock() {
            if maps.1.remove(&tx).is_some() {
                // The event beat the 200 to the driver.
                if let Ok(mut l) = self.latencies.lock() {
                    l.push(Duration::ZERO);
                }
            } else {
                maps.0.insert(tx, Instant::now());
            }
        }
    }

    fn delivered(&self, tx: String) {
        let now = Instant::now();
        if let Ok(mut maps) = self.waiting.lock() {
            match maps.0.remove(&tx) {
                Some(at) => {
                    if let Ok(mut l) = self.latencies.lock() {
                        l.push(now.duration_since(at));
                    }
                }
                None => {
                    maps.1.insert(tx, now);
                }
            }
        }
    }

    /// Delivery latencies, and the events that never came.
    pub fn finish(&self) -> (Histogram<u64>, usize) {
        let mut hist = new_histogram();
        if let Ok(l) = self.latencies.lock() {
            for v in l.iter() {
                record(&mut hist, *v);
            }
        }
        let missing = self.waiting.lock().map(|m| m.0.len()).unwrap_or(0);
        (hist, missing)
    }
}

pub async fn sse_client(target: &Target, player: &str, tracker: &Tracker, stop: &AtomicBool) -> Result<(), String> {
    let mut stream = TcpStream::connect(target.addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let req = format!(
        "GET /wallet/{player}/events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        target.authority
    );
    stream.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut counted = false;
    while !stop.load(Ordering::Relaxed) {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if !counted && buf.windows(4).any(|w| w == b"\r\n\r\n") {
            counted = true;
            tracker.connected.fetch_add(1, Ordering::SeqCst);
        }
        // Frames are whole chunks; scan complete `data:` lines only.
        let mut consumed = 0;
        let mut at = 0;
        while let Some(start) = find(&buf[at..], b"data: ").map(|i| at + i) {
            let Some(end) = find(&buf[start..], b"\n").map(|i| start + i) else {
                break;
            };
            if let Some(tx) = transaction_id(&buf[start + 6..end]) {
                tracker.delivered(tx);
            }
            at = end;
            consumed = end;
        }
        buf.drain(..consumed);
    }
    Ok(())
}

/// The `transaction_id` of a JSON object the engine wrote (it comes first,
/// and ids need no escaping), without parsing the rest.
fn transaction_id(json: &[u8]) -> Option<String> {
    let key = b"\"transaction_id\":\"";
    let start = find(json, key)? + key.len();
    let len = json[start..].iter().position(|&b| b == b'"')?;
    String::from_utf8(json[start..start + len].to_vec()).ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One connection: its players in turn bet, then win (2 in 5), refund (1 in
/// 10) or nothing; one request in 5 is sent twice with the same reference
/// (a client retry, answered as a replay).
pub async fn worker(
    target: &Target,
    players: &[(String, bool)],
    until: Instant,
    tracker: &Tracker,
    ops: &AtomicU64,
) -> Result<Records, String> {
    let mut rec = Records::default();
    let mut conn = Conn::connect(target, TIMEOUT).await?;
    let mut n: u64 = 0;
    let games = ["slots", "table", "live"];
    while Instant::now() < until {
        for (player, tracked) in players {
            if Instant::now() >= until {
                break;
            }
            n += 1;
            // References are unique across players (the engine refuses a
            // reference another player holds), so each carries its player.
            let bet_ref = format!("{player}-b{n}");
            let amount = 10 + (n % 50) as i64;
            // Bodies as text: the driver shares the CPUs with the engine.
            let game = games[(n % 3) as usize];
            let mut steps = vec![format!(
                r#"{{"player_id":"{player}","currency":"EUR","type":"bet","amount_minor":{amount},"reference_id":"{bet_ref}","game":"{game}"}}"#
            )];
            match n % 10 {
                0..=3 => steps.push(format!(
                    r#"{{"player_id":"{player}","currency":"EUR","type":"win","amount_minor":{},"reference_id":"{player}-w{n}","bet_reference_id":"{bet_ref}"}}"#,
                    amount * 2
                )),
                4 => steps.push(format!(
                    r#"{{"player_id":"{player}","currency":"EUR","type":"refund","amount_minor":{amount},"reference_id":"{player}-r{n}","bet_reference_id":"{bet_ref}"}}"#
                )),
                _ => {}
            }
            for (i, body) in steps.iter().enumerate() {
                let times = if (n + i as u64).is_multiple_of(5) { 2 } else { 1 };
                for attempt in 0..times {
                    if conn.is_closed() {
                        conn = Conn::connect(target, TIMEOUT).await?;
                    }
                    let outcome = conn
                        .request_with_body(
                            target,
                            Method::POST,
                            "/wallet/transactions",
                            "Content-Type: application/json\r\n",
                            body.as_bytes(),
                            TIMEOUT,
                        )
                        .await;
                    match outcome {
                        Outcome::Response { status: 200, body, .. } => {
                            ops.fetch_add(1, Ordering::Relaxed);
                            rec.operations += 1;
                            match rec.acknowledged(player, &body) {
                                Some(tx) if *tracked && attempt == 0 => tracker.answered(tx),
                                Some(_) => {}
                                None => {
                                    rec.unexpected += 1;
                                    rec.note(format!("200 without a transaction: {}", String::from_utf8_lossy(&body)));
                                }
                            }
                        }
                        // A refusal is an answer too (funds, bet cap).
                        Outcome::Response { status: 409 | 422, .. } => {
                            ops.fetch_add(1, Ordering::Relaxed);
                            rec.operations += 1;
                        }
                        Outcome::Response {
                            status: 503,
                            body: reply,
                            ..
                        } => {
                            rec.unexpected += 1;
                            rec.note(format!("503 {}", String::from_utf8_lossy(&reply)));
                            rec.unknown(player, body);
                        }
                        Outcome::Response { status, body, .. } => {
                            rec.unexpected += 1;
                            rec.note(format!("{status} {}", String::from_utf8_lossy(&body)));
                        }
                        Outcome::Timeout | Outcome::Transport(_) => {
                            rec.unexpected += 1;
                            rec.note(format!("no answer to {body}"));
                            rec.unknown(player, body);
                        }
                    }
                }
            }
        }
    }
    Ok(rec)
}

/// Sends every unknown transaction again with its reference (applied at
/// most once: a repeat replays the first answer) and records its id;
/// returns the ones still not known.
pub async fn resolve(target: &Target, rec: &mut Records) -> Vec<String> {
    let mut unresolved = Vec::new();
    let mut conn: Option<Conn> = None;
    for body in std::mem::take(&mut rec.unknown) {
        if conn.as_ref().is_none_or(Conn::is_closed) {
            conn = Conn::connect(target, TIMEOUT).await.ok();
        }
        let Some(c) = conn.as_mut() else {
            unresolved.push(format!("cannot connect to send again {body}"));
            continue;
        };
        match post(c, target, "/wallet/transactions", "", &body, 200).await {
            // A replay carries the balances of its time, not today's: only the id counts.
            Ok(reply) => match serde_json::from_slice::<TxReply>(&reply) {
                Ok(tx) => rec.told.push(tx.transaction_id.to_owned()),
                Err(_) => unresolved.push(format!("{body}: {}", String::from_utf8_lossy(&reply))),
            },
            // Refused now: refused then too, nothing was applied.
            Err(e) if e.contains(": 409 ") || e.contains(": 422 ") => {}
            Err(e) => unresolved.push(format!("{body}: {e}")),
        }
    }
    unresolved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_keeps_ids_and_last_balances() {
        let mut rec = Records::default();
        let body = br#"{"transaction_id":"4-1","reference_id":"r","type":"bet","amount_minor":5,"cash_minor":95,"bonus_minor":0,"bonus":null}"#;
        assert_eq!(rec.acknowledged("p", body), Some("4-1".into()));
        assert!(rec.acknowledged("p", b"{}").is_none());
        assert_eq!(rec.told, vec!["4-1"]);
        assert_eq!(rec.balances["p"], (95, 0));
        assert_eq!(transaction_id(br#"{"transaction_id":"7-9","x":1}"#), Some("7-9".into()));
    }
}
