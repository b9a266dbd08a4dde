//! Live progress: `GET /wallet/{player_id}/events` as Server-Sent Events.
//!
//! Events flow through Redis, so a client sees changes made through any
//! engine. `wallet_apply.lua` appends each event to the player's stream
//! (`XADD MAXLEN ~`; its entry ids are the SSE `id:`s) and, once per call,
//! the same events with their ids to its shard's notify stream. Both carry
//! the event's values as the outbox has them (joined by the unit
//! separator), not JSON: the script's Redis time is the wallet's scarce
//! resource, so the JSON a client sees is rendered here (`render`), once
//! per event and engine, and only for a player someone watches. Per engine,
//! one fan-out task per shard `XREAD BLOCK`s that notify stream on a
//! connection of its own and hands each event, framed once, to this
//! engine's streams of that player. A stream reads the player's stream
//! itself (`XRANGE` from its last id) only to resume (`Last-Event-ID`) or to
//! resync when it may have missed a push (full inbox, failed or lagging
//! fan-out read); it skips pushed events at or before its last id, so it
//! never repeats or reorders one. So an engine holds 8 blocking
//! connections whatever its number of clients, and a reconnecting client
//! resumes without a gap within the player stream's retention
//! (`WALLET_EVENTS_PER_PLAYER_MAX`, `WALLET_EVENTS_RETENTION`).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fred::clients::{Client, Pool};
use fred::interfaces::ClientLike;
use fred::types::config::{Config as RedisConfig, ReconnectPolicy};
use fred::types::{Builder, Value};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use super::domain::{EventId, PlayerId};
use super::limits::{
    WALLET_FANOUT_RETRY_DELAY, WALLET_NOTIFY_BLOCK, WALLET_NOTIFY_READ_COUNT, WALLET_SSE_HEARTBEAT, WALLET_SSE_INBOX,
    WALLET_SSE_READ_ATTEMPTS_MAX, WALLET_SSE_READ_BATCH, WALLET_SSE_READ_RETRY_DELAY,
};
use super::lua::{AccountKeys, notify_key};
use super::metrics;
use super::{Wallet, WalletError};
use crate::context::Context;
use crate::limits::SSE_SEND_STALL_MAX;
use crate::redis::keyspace::Shard;
use crate::redis::lua::ScriptError;
use crate::server::http::{BodyError, HttpResponse};

/// One open stream as the hub sees it: its id, where pushed events go, and
/// how to tell it to resync from the player's stream.
struct Registered {
    id: u64,
    inbox: mpsc::Sender<(EventId, Bytes)>,
    resync: Arc<Notify>,
    /// Set when a push did not fit: nothing more is pushed until the stream
    /// has caught up from the player's stream, so it never skips one.
    overflowed: Arc<AtomicBool>,
}

/// This engine's open event streams, by player, and their bound.
pub struct Hub {
    slots: Arc<Semaphore>,
    subscribers: Mutex<HashMap<String, Vec<Registered>>>,
    next_id: AtomicU64,
}

/// One open stream's registration; dropping it unregisters and frees its slot.
struct Subscription {
    hub: Arc<Hub>,
    player: String,
    id: u64,
    inbox: mpsc::Receiver<(EventId, Bytes)>,
    resync: Arc<Notify>,
    overflowed: Arc<AtomicBool>,
    _slot: OwnedSemaphorePermit,
}

impl Hub {
    pub fn new(streams_max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(streams_max)),
            subscribers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// Registers a stream of `player`; `None` at the bound.
    fn subscribe(self: &Arc<Self>, player: &str) -> Option<Subscription> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, inbox) = mpsc::channel(WALLET_SSE_INBOX);
        let resync = Arc::new(Notify::new());
        let overflowed = Arc::new(AtomicBool::new(false));
        if let Ok(mut map) = self.subscribers.lock() {
            map.entry(player.to_owned()).or_default().push(Registered {
                id,
                inbox: tx,
                resync: resync.clone(),
                overflowed: overflowed.clone(),
            });
        }
        metrics::wallet_sse_streams(1.0);
        Some(Subscription {
            hub: self.clone(),
            player: player.to_owned(),
            id,
            inbox,
            resync,
            overflowed,
            _slot: slot,
        })
    }

    /// Hands an event to this engine's streams of `player`, framing it
    /// (`frame`) only if there is one. A stream whose inbox is full is told
    /// to resync instead (a `Notify` permit is kept, so that wake-up is not
    /// lost).
    fn deliver(&self, player: &str, id: EventId, frame: impl FnOnce() -> Option<Bytes>) {
        if let Ok(map) = self.subscribers.lock()
            && let Some(list) = map.get(player)
            && !list.is_empty()
        {
            let Some(frame) = frame() else { return };
            for r in list {
                if r.overflowed.load(Ordering::Acquire) {
                    continue;
                }
                if r.inbox.try_send((id, frame.clone())).is_err() {
                    r.overflowed.store(true, Ordering::Release);
                    r.resync.notify_one();
                }
            }
        }
    }

    /// Tells every stream to resync from its player's stream: after a failed
    /// or possibly trimmed fan-out read, any of them may have missed events.
    fn resync_all(&self) {
        if let Ok(map) = self.subscribers.lock() {
            for r in map.values().flatten() {
                r.resync.notify_one();
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut map) = self.hub.subscribers.lock()
            && let Some(list) = map.get_mut(&self.player)
        {
            list.retain(|r| r.id != self.id);
            if list.is_empty() {
                map.remove(&self.player);
            }
        }
        metrics::wallet_sse_streams(-1.0);
    }
}

/// `GET /wallet/{player_id}/events`.
#[utoipa::path(get, path = "/wallet/{player_id}/events", tag = "wallet", summary = "Server-Sent Events of the player's balances and bonus progress",
    params(("player_id" = String, Path, description = "percent-encoded"),
           ("Last-Event-ID" = Option<String>, Header, description = "resume after this event: `<ms>-<seq>`, each part at most 2^64 - 1")),
    responses(
        (status = 200, description = "an event stream; each event has an `id:`", content_type = "text/event-stream", body = crate::server::apidoc::SseEvent),
    ))]
pub async fn stream(
    wallet: &Wallet,
    req: Request<Incoming>,
    player: Option<&str>,
) -> Result<HttpResponse, WalletError> {
    let decoded = player.map(|r| percent_encoding::percent_decode_str(r).decode_utf8_lossy().into_owned());
    let player = PlayerId::parse(decoded.as_deref())?;
    let resume = match req.headers().get("last-event-id") {
        None => None,
        Some(value) => Some(EventId::parse(value.to_str().unwrap_or(""))?),
    };
    let ctx = &*wallet.ctx;
    // Any currency: the stream key does not depend on it.
    let key = AccountKeys::new(&ctx.keys, player.as_str(), "XXX").events;
    let Some(subscription) = wallet.hub.subscribe(player.as_str()) else {
        metrics::wallet_sse_refused();
        return Err(WalletError::StreamsFull);
    };
    // Registered before the start is read, so nothing after it is missed.
    let (last, read_first) = match resume {
        Some(id) => (id, true),
        None => (latest_id(&ctx.redis, &key).await?, false),
    };
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(feed(
        Feed {
            subscription,
            redis: ctx.redis.clone(),
            key,
            last,
            read_first,
            shutdown: wallet.shutdown.clone(),
        },
        tx,
    ));
    let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|frame| frame.map(|b| Ok::<_, BodyError>(Frame::data(b))))
    }));
    let mut response = Response::new(body.boxed());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The newest id of a stream, or `0-0` when it has none.
async fn latest_id(redis: &Pool, key: &str) -> Result<EventId, WalletError> {
    let reply: Value = redis
        .custom(fred::cmd!("XREVRANGE"), vec![key, "+", "-", "COUNT", "1"])
        .await
        .map_err(|e| WalletError::Script(ScriptError::Redis(e)))?;
    Ok(decode_entries(reply)
        .into_iter()
        .next()
        .and_then(|(id, _)| EventId::parse(&id).ok())
        .unwrap_or(EventId::START))
}

/// `[[id, [field, value, ...]], ...]` into ids and field maps.
fn decode_entries(reply: Value) -> Vec<(String, Vec<(String, String)>)> {
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(mut parts) = entry else {
                return None;
            };
            if parts.len() != 2 {
                return None;
            }
            let fields = match parts.pop() {
                Some(Value::Array(flat)) => flat
                    .chunks(2)
                    .filter_map(|kv| Some((kv.first()?.as_string()?, kv.get(1)?.as_string()?)))
                    .collect(),
                _ => Vec::new(),
            };
            let id = parts.pop()?.as_string()?;
            Some((id, fields))
        })
        .collect()
}

struct Feed {
    subscription: Subscription,
    redis: Pool,
    key: String,
    last: EventId,
    read_first: bool,
    shutdown: watch::Receiver<bool>,
}

/// Why a stream's task ended (logged at debug; every one frees the slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The client went away (its body, the receiver, was dropped).
    ClientGone,
    /// The engine is stopping.
    Shutdown,
    /// The client took no frame for `SSE_SEND_STALL_MAX`.
    Stalled,
    /// `WALLET_SSE_READ_ATTEMPTS_MAX` reads of the player's stream failed in
    /// a row; the client reconnects with `Last-Event-ID`.
    ReadFailed,
}

/// Runs `work` unless the client leaves or the engine stops first: every
/// wait of a stream goes through this, so none outlives its client.
async fn unless_gone<T>(
    tx: &mpsc::Sender<Bytes>,
    shutdown: &mut watch::Receiver<bool>,
    work: impl Future<Output = T>,
) -> Result<T, Ended> {
    tokio::select! {
        out = work => Ok(out),
        _ = tx.closed() => Err(Ended::ClientGone),
        // Also when the sender is gone: the wallet is being dropped.
        _ = shutdown.wait_for(|stopping| *stopping) => Err(Ended::Shutdown),
    }
}

/// Hands a frame to the client's body, unless it left, the engine stops, or
/// it took nothing for `stall`: a client that stops reading would otherwise
/// hold its slot for as long as it keeps the connection open.
async fn send_frame(
    tx: &mpsc::Sender<Bytes>,
    shutdown: &mut watch::Receiver<bool>,
    frame: Bytes,
    stall: Duration,
) -> Result<(), Ended> {
    match unless_gone(tx, shutdown, tokio::time::timeout(stall, tx.send(frame))).await? {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Ended::ClientGone),
        Err(_) => Err(Ended::Stalled),
    }
}

/// One stream's task: writes the events the fan-out pushes (skipping any
/// at or before its last id), reads the player's stream from its last id
/// when told to resync (and first, when resuming), heartbeats when idle.
/// Every wait, reads and retries included, also watches for the client
/// leaving and for shutdown; the task ends on either, when the client stops
/// reading, or after `WALLET_SSE_READ_ATTEMPTS_MAX` failed reads in a row.
async fn feed(mut feed: Feed, tx: mpsc::Sender<Bytes>) {
    let ended = match feed_loop(&mut feed, &tx).await {
        Ok(never) => match never {},
        Err(ended) => ended,
    };
    match ended {
        Ended::ReadFailed | Ended::Stalled => tracing::info!(?ended, "wallet event stream ended"),
        Ended::ClientGone | Ended::Shutdown => tracing::debug!(?ended, "wallet event stream ended"),
    }
    // Dropping `feed` unregisters the stream and frees its slot.
}

async fn feed_loop(feed: &mut Feed, tx: &mpsc::Sender<Bytes>) -> Result<std::convert::Infallible, Ended> {
    let mut pending: VecDeque<Bytes> = VecDeque::new();
    pending.push_back(Bytes::from_static(b": connected\nretry: 1000\n\n"));
    let mut read = feed.read_first;
    let mut failed_reads: u32 = 0;
    let start = tokio::time::Instant::now() + WALLET_SSE_HEARTBEAT;
    let mut heartbeat = tokio::time::interval_at(start, WALLET_SSE_HEARTBEAT);
    // After a long read, one heartbeat, not a burst of the missed ones.
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        while let Some(frame) = pending.pop_front() {
            send_frame(tx, &mut feed.shutdown, frame, SSE_SEND_STALL_MAX).await?;
        }
        if *feed.shutdown.borrow() {
            return Err(Ended::Shutdown);
        }
        if read {
            let result = unless_gone(tx, &mut feed.shutdown, read_after(&feed.redis, &feed.key, feed.last)).await?;
            match result {
                Ok(entries) => {
                    failed_reads = 0;
                    // A full page: there may be more.
                    read = entries.len() == WALLET_SSE_READ_BATCH;
                    let mut sent = 0;
                    for (id, fields) in entries {
                        let Ok(id) = EventId::parse(&id) else { continue };
                        if id > feed.last {
                            if let Some(frame) = frame(&id, &fields) {
                                pending.push_back(frame);
                                sent += 1;
                            }
                            feed.last = id;
                        }
                    }
                    metrics::wallet_sse_events(sent);
                }
                Err(e) => {
                    failed_reads += 1;
                    if failed_reads >= WALLET_SSE_READ_ATTEMPTS_MAX {
                        tracing::warn!(error = %e, attempts = failed_reads, "wallet event stream read failed; ending the stream");
                        return Err(Ended::ReadFailed);
                    }
                    unless_gone(tx, &mut feed.shutdown, tokio::time::sleep(WALLET_SSE_READ_RETRY_DELAY)).await?;
                }
            }
            continue;
        }
        tokio::select! {
            pushed = feed.subscription.inbox.recv() => {
                // The hub keeps the sender while the stream is registered.
                let Some((id, frame)) = pushed else { return Err(Ended::Shutdown) };
                if id > feed.last {
                    feed.last = id;
                    metrics::wallet_sse_events(1);
                    pending.push_back(frame);
                }
            }
            _ = feed.subscription.resync.notified() => {
                // What was pushed before an overflow comes first, in order;
                // then pushes resume and the read covers the rest.
                while let Ok((id, frame)) = feed.subscription.inbox.try_recv() {
                    if id > feed.last {
                        feed.last = id;
                        pending.push_back(frame);
                    }
                }
                feed.subscription.overflowed.store(false, Ordering::Release);
                read = true;
            }
            _ = heartbeat.tick() => pending.push_back(Bytes::from_static(b": heartbeat\n\n")),
            _ = tx.closed() => return Err(Ended::ClientGone),
            _ = feed.shutdown.wait_for(|stopping| *stopping) => return Err(Ended::Shutdown),
        }
    }
}

/// Entries after `last`, at most `WALLET_SSE_READ_BATCH`. Nothing can
/// follow the largest id, and Redis refuses an exclusive range from it, so
/// that read is answered here.
async fn read_after(
    redis: &Pool,
    key: &str,
    last: EventId,
) -> Result<Vec<(String, Vec<(String, String)>)>, fred::error::Error> {
    if last == EventId::MAX {
        return Ok(Vec::new());
    }
    let from = format!("({last}");
    let count = WALLET_SSE_READ_BATCH.to_string();
    let reply: Value = redis
        .custom(
            fred::cmd!("XRANGE"),
            vec![key, from.as_str(), "+", "COUNT", count.as_str()],
        )
        .await?;
    Ok(decode_entries(reply))
}

/// `id:`, `event:` and `data:` of one player stream entry: fields `e` (the
/// event's name) and `v` (its values), or `d` (its JSON) in an entry written
/// before the script stopped rendering JSON (kept for the stream's
/// retention). `None` for an entry that is neither.
fn frame(id: &EventId, fields: &[(String, String)]) -> Option<Bytes> {
    let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let name = get("e")?;
    match (get("v"), get("d")) {
        (Some(values), _) => sse_frame(id, name, &render(name, values)?),
        (None, Some(json)) => sse_frame(id, name, json),
        (None, None) => None,
    }
}

fn sse_frame(id: &EventId, name: &str, data: &str) -> Option<Bytes> {
    Some(Bytes::from(format!("id: {id}\nevent: {name}\ndata: {data}\n\n")))
}

/// The JSON of a `balance` or `bonus` event from the values the script
/// stored (see `publish` in lua/wallet_apply.lua): a `wallet_entry` outbox
/// event's, or a `bonus_state` one's followed by the bonus balance. Ids,
/// codes and currencies are validated to `[A-Za-z0-9._:-]` and numbers are
/// the script's `%d`, so they go in as they are, byte for byte what the
/// script rendered before. `None` for an event of another name or shape.
fn render(name: &str, values: &str) -> Option<String> {
    let mut v = [""; 14];
    let mut count = 0;
    for (slot, part) in v.iter_mut().zip(values.split('\u{1f}')) {
        *slot = part;
        count += 1;
    }
    match (name, count) {
        // tx, player, currency, type, reference, amount, cash delta, bonus
        // delta, cash, bonus, bonus id, wagered delta, detail, at.
        ("balance", 14) => Some(format!(
            "{{\"transaction_id\":\"{}\",\"type\":\"{}\",\"reference_id\":\"{}\",\"currency\":\"{}\",\
             \"amount_minor\":{},\"cash_delta_minor\":{},\"bonus_delta_minor\":{},\"cash_minor\":{},\
             \"bonus_minor\":{},\"at_ms\":{}}}",
            v[0], v[3], v[4], v[2], v[5], v[6], v[7], v[8], v[9], v[13]
        )),
        // bonus id, player, currency, status, amount, required, wagered,
        // max bet, expiry, contributions, last entry, at; bonus balance.
        ("bonus", 13) => {
            let required: i64 = v[5].parse().ok()?;
            let wagered: i64 = v[6].parse().ok()?;
            let remaining = required.saturating_sub(wagered).max(0);
            Some(format!(
                "{{\"bonus_id\":\"{}\",\"currency\":\"{}\",\"status\":\"{}\",\"wagered_minor\":{},\
                 \"required_minor\":{},\"remaining_minor\":{remaining},\"bonus_minor\":{},\"at_ms\":{}}}",
                v[0], v[2], v[3], v[6], v[5], v[12], v[11]
            ))
        }
        _ => None,
    }
}

/// Starts one fan-out reader per shard.
pub fn spawn_fanout(ctx: &Arc<Context>, hub: Arc<Hub>, shutdown: &mut watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    ctx.keys
        .shards()
        .map(|shard| tokio::spawn(fanout(ctx.clone(), hub.clone(), shard, shutdown.clone())))
        .collect()
}

/// A client of its own for blocking reads, which hold their connection.
async fn blocking_client(url: &str) -> Result<Client, fred::error::Error> {
    let mut builder = Builder::from_config(RedisConfig::from_url(url)?);
    builder
        .with_performance_config(|perf| perf.default_command_timeout = WALLET_NOTIFY_BLOCK * 3)
        .with_connection_config(|conn| conn.connection_timeout = Duration::from_secs(2))
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    let client = builder.build()?;
    if let Err(e) = crate::redis::client::init(&client).await {
        // fred does not stop a client that is dropped: stop it.
        let _ = client.quit().await;
        return Err(e);
    }
    Ok(client)
}

async fn fanout(ctx: Arc<Context>, hub: Arc<Hub>, shard: Shard, mut shutdown: watch::Receiver<bool>) {
    let key = notify_key(&ctx.keys, shard);
    let block_ms = WALLET_NOTIFY_BLOCK.as_millis().to_string();
    let count = WALLET_NOTIFY_READ_COUNT.to_string();
    let mut client: Option<Client> = None;
    let mut last: Option<String> = None;
    while !*shutdown.borrow() {
        let pass = async {
            if client.is_none() {
                client = Some(blocking_client(&ctx.config.redis_url).await?);
            }
            let Some(c) = client.as_ref() else {
                return Ok(());
            };
            let from = match &last {
                Some(id) => id.clone(),
                None => {
                    let id = latest_id(&ctx.redis, &key)
                        .await
                        .map_err(|_| fred::error::Error::new(fred::error::ErrorKind::IO, "latest id"))?;
                    let id = id.to_string();
                    last = Some(id.clone());
                    id
                }
            };
            let reply: Value = c
                .custom(
                    fred::cmd!("XREAD"),
                    vec![
                        "COUNT",
                        count.as_str(),
                        "BLOCK",
                        block_ms.as_str(),
                        "STREAMS",
                        key.as_str(),
                        from.as_str(),
                    ],
                )
                .await?;
            // RESP2: [[stream, [[id, [v, event, v, event, ...]], ...]]], or
            // nil on timeout; each event is player␟id␟name␟values (`e`:
            // player␟id␟name␟json, from a script that rendered JSON).
            if let Value::Array(mut streams) = reply
                && let Some(Value::Array(mut pair)) = streams.pop()
                && let Some(entries) = pair.pop()
            {
                let entries = decode_entries(entries);
                if entries.len() as u64 >= WALLET_NOTIFY_READ_COUNT {
                    // Behind by a full page: the stream may have been
                    // trimmed past us, so every stream checks its own.
                    hub.resync_all();
                }
                for (id, fields) in entries {
                    for (field, event) in &fields {
                        let values = match field.as_str() {
                            "v" => true,
                            "e" => false,
                            _ => continue,
                        };
                        let mut parts = event.splitn(4, '\u{1f}');
                        if let (Some(player), Some(Ok(event_id)), Some(name), Some(data)) = (
                            parts.next(),
                            parts.next().map(EventId::parse),
                            parts.next(),
                            parts.next(),
                        ) {
                            hub.deliver(player, event_id, || {
                                if values {
                                    sse_frame(&event_id, name, &render(name, data)?)
                                } else {
                                    sse_frame(&event_id, name, data)
                                }
                            });
                        }
                    }
                    last = Some(id);
                }
            }
            Ok::<(), fred::error::Error>(())
        };
        let result = tokio::select! {
            r = pass => r,
            _ = shutdown.changed() => break,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, shard = shard.index(), "wallet fan-out read failed; retrying");
            metrics::wallet_fanout_error();
            hub.resync_all();
            // The client is kept, and fred reconnects it: a client dropped
            // without `quit` keeps its connection task, which reconnects for
            // ever (one idle connection per shard left behind per outage).
            tokio::select! {
                _ = tokio::time::sleep(WALLET_FANOUT_RETRY_DELAY) => {}
                _ = shutdown.changed() => break,
            }
        }
    }
    if let Some(c) = client {
        let _ = c.quit().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_frame_waits_for_its_client_within_bounds() {
        let (stop, mut shutdown) = watch::channel(false);
        let (tx, mut rx) = mpsc::channel::<Bytes>(1);
        let frame = || Bytes::from_static(b": x\n\n");
        let stall = Duration::from_millis(50);
        assert_eq!(send_frame(&tx, &mut shutdown, frame(), stall).await, Ok(()));
        // The client reads nothing more: the next frame gives up after the stall.
        let started = tokio::time::Instant::now();
        assert_eq!(
            send_frame(&tx, &mut shutdown, frame(), stall).await,
            Err(Ended::Stalled)
        );
        assert!(started.elapsed() >= stall);
        assert_eq!(rx.recv().await.as_deref(), Some(b": x\n\n".as_slice()));
        // A client that reads takes it.
        assert_eq!(send_frame(&tx, &mut shutdown, frame(), stall).await, Ok(()));
        // Shutdown ends a waiting send at once, however long the stall bound.
        let _ = stop.send(true);
        assert_eq!(
            send_frame(&tx, &mut shutdown, frame(), Duration::from_secs(3600)).await,
            Err(Ended::Shutdown)
        );
        // So does the client leaving.
        let (_stop, mut running) = watch::channel(false);
        drop(rx);
        assert_eq!(
            send_frame(&tx, &mut running, frame(), Duration::from_secs(3600)).await,
            Err(Ended::ClientGone)
        );
    }
}
