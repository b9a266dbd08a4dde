//! The write-behind flusher. Per outbox shard: read a batch through the
//! consumer group, write it to Postgres in one transaction (idempotent on
//! event id), and only after COMMIT acknowledge and delete it.
//!
//! At-least-once delivery (nothing is acked before it is committed) plus
//! idempotent writes gives exactly-once rows. Entries pending on a consumer
//! that died are taken over with XAUTOCLAIM; a restarted engine with the same
//! consumer name resumes its own pending entries first.
//!
//! Poison: a batch that Postgres refuses because of its data (see
//! `SinkError::is_data_error`) is narrowed down by halving, each half in its
//! own transaction, to the events that fail alone; the rest is written. An
//! event that failed alone `DEAD_LETTER_AFTER_ATTEMPTS` times, each after the
//! flush back-off, is set aside in `outbox_dead_letters` (committed before
//! its entry is acknowledged), as is at once an event that cannot be decoded;
//! its shard then flows on. A batch that fails for any other reason (Postgres
//! away or busy) is retried whole after the back-off, and nothing is set
//! aside. The happy path is unchanged: one transaction per batch.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use fred::clients::{Client, Pool};
use fred::interfaces::{ClientLike, KeysInterface, StreamsInterface};
use fred::types::Value;
use sqlx::PgPool;
use tokio::sync::watch;

use super::applied::{self, Placed};
use super::dead_letters::{self, DeadLetter, NewDeadLetter, RetryError};
use super::event::{decode_entry, decode_read_reply};
use super::{CONSUMER_GROUP, OutboxEntry, OutboxEvent, SinkError, SinkRegistry};
use crate::clock::SharedClock;
use crate::config::FlushConfig;
use crate::limits::{
    DEAD_LETTER_AFTER_ATTEMPTS, DEAD_LETTER_GAUGE_INTERVAL, FLUSH_RETRY_BACKOFF_MAX, FLUSH_RETRY_BACKOFF_MIN,
    POSTGRES_STATEMENT_TIMEOUT, SCRIPT_BATCH_REQUESTS_MAX,
};
use crate::postgres::{self, BatchError};
use crate::redis::keyspace::{Keyspace, Shard};
use crate::redis::lua::{LuaScript, ScriptError};
use crate::telemetry;

pub static OUTBOX_ACK: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("outbox_ack", include_str!("../../lua/outbox_ack.lua")));

/// How long one blocking read waits for new entries before the loop checks
/// for shutdown again. Below the Redis command timeout, or the wait would be
/// reported as a failure.
const READ_BLOCK: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error(transparent)]
    Script(#[from] ScriptError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("unreadable outbox reply: {0}")]
    Decode(String),
    #[error("postgres did not commit the batch within {0:?}")]
    Timeout(Duration),
    /// The rest of the batch is written and acknowledged; these events'
    /// entries stay pending for their next attempt.
    #[error("{held} events failed alone and wait for their next attempt; first: {first}")]
    Poisoned { held: usize, first: String },
}

impl FlushError {
    /// Whether the batch's own events caused it (see `SinkError::is_data_error`).
    fn is_data_error(&self) -> bool {
        matches!(self, FlushError::Sink(e) if e.is_data_error())
    }
}

/// An event that failed alone, while its entry stays pending.
#[derive(Debug, Clone)]
struct Failure {
    attempts: u32,
    first_ms: i64,
}

pub struct Flusher {
    redis: Pool,
    postgres: PgPool,
    keys: Keyspace,
    config: FlushConfig,
    sinks: Arc<SinkRegistry>,
    clock: SharedClock,
    /// Per shard: the pending events that failed alone, by event id. Only
    /// the shard's own flushing task touches its map, and it holds at most
    /// one batch's events: it is replaced after every narrowing and emptied
    /// by the next clean batch.
    failures: Vec<Mutex<HashMap<String, Failure>>>,
}

impl Flusher {
    pub fn new(
        redis: Pool,
        postgres: PgPool,
        keys: Keyspace,
        config: FlushConfig,
        sinks: SinkRegistry,
        clock: SharedClock,
    ) -> Self {
        let failures = keys.shards().map(|_| Mutex::new(HashMap::new())).collect();
        Self {
            redis,
            postgres,
            keys,
            config,
            sinks: Arc::new(sinks),
            clock,
            failures,
        }
    }

    /// Creates the consumer group on every shard's stream (and the stream).
    pub async fn ensure_groups(&self) -> Result<(), FlushError> {
        for shard in self.keys.shards() {
            self.ensure_group(shard).await?;
        }
        Ok(())
    }

    async fn ensure_group(&self, shard: Shard) -> Result<(), FlushError> {
        let created: Result<Value, _> = self
            .redis
            .xgroup_create(self.keys.outbox(shard), CONSUMER_GROUP, "0", true)
            .await;
        match created {
            Err(e) if e.details().starts_with("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
            Ok(_) => Ok(()),
        }
    }

    /// Unflushed events over all shards: the scripts count what they append
    /// and the acknowledgement what it deletes, in the same atomic steps.
    pub async fn backlog(&self) -> Result<u64, FlushError> {
        // One GET per shard: the counters live in different hash slots.
        let mut total = 0;
        for shard in self.keys.shards() {
            let count: Option<i64> = self.redis.get(self.keys.outbox_events(shard)).await?;
            total += count.unwrap_or(0).max(0) as u64;
        }
        Ok(total)
    }

    /// Flushes at most one batch from `shard` without blocking. Returns the
    /// number of entries made durable in Postgres. Tests drain with this.
    pub async fn flush_once(&self, shard: Shard) -> Result<usize, FlushError> {
        self.flush_from(shard, self.redis.next(), None).await
    }

    /// Flushes every shard until all are empty, or until `deadline`. A shard
    /// holding an event that failed alone is left for the next start: its
    /// next attempt is due after a back-off, not in a hurry at shutdown.
    pub async fn drain(&self, deadline: Instant) -> Result<usize, FlushError> {
        let mut flushed = 0;
        let mut held_back: HashSet<u64> = HashSet::new();
        loop {
            let mut pass = 0;
            for shard in self.keys.shards() {
                if held_back.contains(&shard.index()) {
                    continue;
                }
                match self.flush_once(shard).await {
                    Ok(n) => pass += n,
                    Err(e @ FlushError::Poisoned { .. }) => {
                        tracing::warn!(shard = shard.index(), error = %e, "shard left pending at shutdown");
                        held_back.insert(shard.index());
                    }
                    Err(e) => return Err(e),
                }
            }
            flushed += pass;
            if pass == 0 || Instant::now() >= deadline {
                return Ok(flushed);
            }
        }
    }

    /// Replays dead letter `id` through this engine's sinks (see
    /// [`dead_letters::retry`]), then refreshes the unresolved gauge.
    pub async fn retry_dead_letter(&self, id: i64) -> Result<DeadLetter, RetryError> {
        let result = dead_letters::retry(&self.postgres, &self.sinks, id, self.clock.now_ms()).await;
        self.refresh_dead_letter_gauge().await;
        result
    }

    async fn refresh_dead_letter_gauge(&self) {
        if let Ok(count) = dead_letters::count_unresolved(&self.postgres).await {
            telemetry::dead_letters_unresolved(count);
        }
    }

    async fn flush_from(&self, shard: Shard, reader: &Client, block: Option<Duration>) -> Result<usize, FlushError> {
        let outbox = self.keys.outbox(shard);
        // Own pending entries first: what a crash or a failed write left behind.
        let mut batch = self.read_events(shard, reader, &outbox, "0", None).await?;
        if batch.is_empty() {
            batch = self.read_events(shard, reader, &outbox, ">", block).await?;
            if batch.is_empty() {
                return Ok(0);
            }
            // A partial batch lingers briefly so a burst is written as one.
            let events = event_count(&batch);
            if events < self.config.batch_rows && !self.config.linger.is_zero() {
                tokio::time::sleep(self.config.linger).await;
                let more = self.read_more(shard, reader, &outbox, None, events).await?;
                batch.extend(more);
            }
        }
        let started = Instant::now();
        let placed: Vec<Placed> = batch
            .iter()
            .flat_map(|entry| {
                entry.events.iter().map(|event| Placed {
                    entry: entry.entry_id.as_str(),
                    event,
                    whole_entry: entry.undecodable.is_empty(),
                })
            })
            .collect();
        let events: Vec<&OutboxEvent> = placed.iter().map(|p| p.event).collect();
        let mut set_aside: Vec<NewDeadLetter> = Vec::new();
        let mut held: HashSet<String> = HashSet::new();
        let mut first_held_error = String::new();
        let mut written = events.len();
        if !events.is_empty() {
            match self.write(shard, &placed).await {
                Ok(()) => self.forget_failures(shard),
                Err(e) if e.is_data_error() => {
                    let poison = self.narrow(shard, &placed, e).await?;
                    written -= poison.len();
                    let now = self.clock.now_ms();
                    let ids: Vec<String> = poison.iter().map(|(i, _)| events[*i].event_id().to_owned()).collect();
                    let known = dead_letters::already_set_aside(&self.postgres, &ids)
                        .await
                        .map_err(SinkError::Postgres)?;
                    let mut failures = self.failures_of(shard);
                    let mut still: HashMap<String, Failure> = HashMap::new();
                    for (index, error) in poison {
                        let event = &events[index];
                        let id = event.event_id().to_owned();
                        let mut failure = failures.remove(&id).unwrap_or(Failure {
                            attempts: 0,
                            first_ms: now,
                        });
                        failure.attempts += 1;
                        tracing::warn!(shard = shard.index(), event_id = %id, attempts = failure.attempts,
                            error = %error, "outbox event fails alone");
                        if failure.attempts >= DEAD_LETTER_AFTER_ATTEMPTS || known.contains(&id) {
                            set_aside.push(NewDeadLetter {
                                event_id: id,
                                shard: shard.index(),
                                entry_id: placed[index].entry.to_owned(),
                                fields: event.raw_fields(),
                                error: error.to_string(),
                                attempts: failure.attempts,
                                first_failed_ms: failure.first_ms,
                                last_failed_ms: now,
                            });
                        } else {
                            if held.is_empty() {
                                first_held_error = error.to_string();
                            }
                            held.insert(id.clone());
                            still.insert(id, failure);
                        }
                    }
                    *failures = still;
                }
                // Postgres away, busy or slow: the whole batch stays pending
                // and nothing is blamed on its events.
                Err(e) => return Err(e),
            }
        }
        // Acked with each entry's event count, so the backlog counter drops
        // by exactly what was deleted. An entry holding an event that waits
        // for its next attempt stays pending, whole.
        let settled: Vec<&OutboxEntry> = batch
            .iter()
            .filter(|entry| held.is_empty() || !entry.events.iter().any(|e| held.contains(e.event_id())))
            .collect();
        // An event that cannot be decoded never will be: set aside at once
        // (with its entry, when the entry is acknowledged).
        let now = self.clock.now_ms();
        for entry in &settled {
            for bad in &entry.undecodable {
                tracing::warn!(shard = shard.index(), event_id = %bad.event_id, error = %bad.error,
                    "outbox event cannot be decoded");
                set_aside.push(NewDeadLetter {
                    event_id: bad.event_id.clone(),
                    shard: shard.index(),
                    entry_id: entry.entry_id.clone(),
                    fields: bad.fields.clone(),
                    error: bad.error.clone(),
                    attempts: 1,
                    first_failed_ms: now,
                    last_failed_ms: now,
                });
            }
        }
        if !set_aside.is_empty() {
            // Committed before the acknowledgement: a crash in between sets
            // the event aside again, onto the same row.
            dead_letters::set_aside(&self.postgres, &set_aside)
                .await
                .map_err(SinkError::Postgres)?;
            for letter in &set_aside {
                tracing::error!(shard = shard.index(), event_id = %letter.event_id, attempts = letter.attempts,
                    error = %letter.error, "outbox event set aside as a dead letter");
            }
            telemetry::dead_lettered(set_aside.len());
            self.refresh_dead_letter_gauge().await;
        }
        if !settled.is_empty() {
            let mut args: Vec<Value> = Vec::with_capacity(1 + settled.len() * 2);
            args.push(CONSUMER_GROUP.into());
            for entry in &settled {
                args.push(entry.entry_id.as_str().into());
                args.push((entry.event_count() as i64).into());
            }
            OUTBOX_ACK
                .call(&self.redis, vec![outbox, self.keys.outbox_events(shard)], args)
                .await?;
        }
        telemetry::flushed(written, started.elapsed());
        if !held.is_empty() {
            return Err(FlushError::Poisoned {
                held: held.len(),
                first: first_held_error,
            });
        }
        Ok(written + set_aside.len())
    }

    /// Splits a batch that failed for its data into halves, each written in
    /// its own transaction (idempotent, so a half written twice is no harm),
    /// down to the events that fail alone; returns those with their errors.
    /// About two writes per halving per bad event. A fault of the moment on
    /// the way stops it: the whole batch then stays pending and is retried.
    async fn narrow(
        &self,
        shard: Shard,
        events: &[Placed<'_>],
        failed: FlushError,
    ) -> Result<Vec<(usize, FlushError)>, FlushError> {
        let mut poison = Vec::new();
        let mut failing = vec![(0, events.len(), failed)];
        while let Some((lo, hi, error)) = failing.pop() {
            if hi - lo == 1 {
                poison.push((lo, error));
                continue;
            }
            let mid = lo + (hi - lo) / 2;
            let mut halves = Vec::new();
            for (a, b) in [(lo, mid), (mid, hi)] {
                // A half may end inside an entry: each event is marked alone.
                let half: Vec<Placed> = events[a..b]
                    .iter()
                    .map(|p| Placed {
                        whole_entry: false,
                        ..*p
                    })
                    .collect();
                match self.write(shard, &half).await {
                    Ok(()) => {}
                    Err(e) if e.is_data_error() => halves.push((a, b, e)),
                    Err(e) => return Err(e),
                }
            }
            // First half first.
            failing.extend(halves.into_iter().rev());
        }
        poison.sort_by_key(|(index, _)| *index);
        Ok(poison)
    }

    fn failures_of(&self, shard: Shard) -> std::sync::MutexGuard<'_, HashMap<String, Failure>> {
        // A panic while holding it cannot leave the map inconsistent.
        self.failures[shard.index() as usize]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A clean batch: whatever failed before has been written since (or
    /// taken over by another consumer).
    fn forget_failures(&self, shard: Shard) {
        let mut failures = self.failures_of(shard);
        if !failures.is_empty() {
            failures.clear();
        }
    }

    /// Reads up to a batch of events (`batch_rows`), entry by entry.
    async fn read_events(
        &self,
        shard: Shard,
        reader: &Client,
        outbox: &str,
        from: &str,
        block: Option<Duration>,
    ) -> Result<Vec<OutboxEntry>, FlushError> {
        // The first read may block; it takes what fits even if every entry
        // it returns is a full script batch.
        let first = self.entries_that_fit(0);
        let mut batch = self.read(shard, reader, outbox, from, first, block).await?;
        if batch.len() == first {
            let events = event_count(&batch);
            let after = match from {
                ">" => None,
                _ => batch.last().map(|e| e.entry_id.clone()),
            };
            let more = self.read_more(shard, reader, outbox, after.as_deref(), events).await?;
            batch.extend(more);
        }
        Ok(batch)
    }

    /// Entries read after `events` are already in the batch, without blocking,
    /// until the batch is full or there are no more. New entries continue
    /// from `>`; pending ones from the last entry read (`after`).
    async fn read_more(
        &self,
        shard: Shard,
        reader: &Client,
        outbox: &str,
        after: Option<&str>,
        mut events: usize,
    ) -> Result<Vec<OutboxEntry>, FlushError> {
        let mut more: Vec<OutboxEntry> = Vec::new();
        let mut cursor = after.map(str::to_owned);
        while events < self.config.batch_rows {
            let count = self.entries_that_fit(events);
            let from = cursor.as_deref().unwrap_or(">");
            let read = self.read(shard, reader, outbox, from, count, None).await?;
            let drained = read.len() < count;
            events += event_count(&read);
            if cursor.is_some()
                && let Some(last) = read.last()
            {
                cursor = Some(last.entry_id.clone());
            }
            more.extend(read);
            if drained {
                break;
            }
        }
        Ok(more)
    }

    /// How many entries can be read with `events` already in the batch and
    /// the batch still bounded by `batch_rows`, whatever each entry holds.
    fn entries_that_fit(&self, events: usize) -> usize {
        (self.config.batch_rows.saturating_sub(events) / SCRIPT_BATCH_REQUESTS_MAX.max(1)).max(1)
    }

    async fn read(
        &self,
        shard: Shard,
        reader: &Client,
        outbox: &str,
        from: &str,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<OutboxEntry>, FlushError> {
        let reply: Result<Value, _> = reader
            .xreadgroup(
                CONSUMER_GROUP,
                self.config.consumer.as_str(),
                Some(count as u64),
                block.map(|b| b.as_millis() as u64),
                false,
                outbox,
                from,
            )
            .await;
        let reply = match reply {
            // The stream or its group vanished (FLUSHALL, a new Redis): recreate.
            Err(e) if e.details().starts_with("NOGROUP") => {
                self.ensure_group(shard).await?;
                return Ok(Vec::new());
            }
            other => other?,
        };
        let raw = decode_read_reply(reply).map_err(FlushError::Decode)?;
        Ok(raw
            .into_iter()
            .map(|entry| decode_entry(shard, entry, |kind| self.sinks.kind(kind)))
            .collect())
    }

    /// Writes `events` in one transaction, less those Postgres already holds
    /// (see [`applied`]), and marks them held in the same transaction.
    async fn write(&self, shard: Shard, events: &[Placed<'_>]) -> Result<(), FlushError> {
        let sinks = self.sinks.clone();
        let now_ms = self.clock.now_ms();
        postgres::commit_batch(&self.postgres, POSTGRES_STATEMENT_TIMEOUT, events, move |tx, events| {
            let sinks = sinks.clone();
            Box::pin(async move {
                let fresh = applied::claim(&mut *tx, shard.index(), events, now_ms).await?;
                sinks.write_events(tx, &fresh).await
            })
        })
        .await
        .map_err(|e| match e {
            BatchError::Postgres(e) => FlushError::Sink(SinkError::Postgres(e)),
            BatchError::Write(e) => FlushError::Sink(e),
            BatchError::Timeout(limit) => FlushError::Timeout(limit),
        })
    }

    /// Drops the markers of entries older than the shard's oldest entry still
    /// in the stream (see [`applied`]). With the stream empty it waits for
    /// the next time: an entry appended and written meanwhile would be newer
    /// than any bound read now, but no entry says where that bound is.
    async fn forget_markers(&self, shard: Shard) -> Result<(), FlushError> {
        let first: Value = self.redis.xrange(self.keys.outbox(shard), "-", "+", Some(1)).await?;
        let oldest = match first {
            Value::Array(entries) => match entries.into_iter().next() {
                Some(Value::Array(entry)) => entry.into_iter().next().and_then(|id| id.into_string()),
                _ => None,
            },
            _ => None,
        };
        if let Some(oldest) = oldest {
            let dropped = applied::forget_before(&self.postgres, shard.index(), &oldest)
                .await
                .map_err(SinkError::Postgres)?;
            tracing::debug!(shard = shard.index(), dropped, "outbox markers dropped");
        }
        Ok(())
    }

    /// Takes over entries that another consumer has held longer than the
    /// claim threshold; they are then read as this consumer's pending entries.
    async fn claim_abandoned(&self, shard: Shard) -> Result<(), FlushError> {
        // One batch per claim interval: a long-dead consumer's backlog moves
        // over in bounded steps rather than one unbounded reply.
        let _: Value = self
            .redis
            .xautoclaim(
                self.keys.outbox(shard),
                CONSUMER_GROUP,
                self.config.consumer.as_str(),
                self.config.claim_idle.as_millis() as u64,
                "0-0",
                Some(self.config.batch_rows as u64),
                true,
            )
            .await?;
        Ok(())
    }

    /// Runs one flushing task per shard until `shutdown` turns true. Each
    /// task has its own Redis connection: a blocking read would otherwise
    /// stall every command pipelined behind it.
    pub async fn run(self: Arc<Self>, readers: fred::types::Builder, shutdown: watch::Receiver<bool>) {
        let mut tasks = Vec::new();
        for shard in self.keys.shards() {
            let flusher = self.clone();
            let reader = match readers.build() {
                Ok(reader) => reader,
                Err(e) => {
                    tracing::error!(shard = shard.index(), error = %e, "cannot build an outbox reader");
                    continue;
                }
            };
            let shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = crate::redis::client::init(&reader).await {
                    tracing::error!(error = %e, "outbox reader could not connect; retrying in its loop");
                }
                flusher.run_shard(shard, &reader, shutdown).await;
                let _ = reader.quit().await;
            }));
        }
        tasks.push(tokio::spawn(backlog_gauge(self.clone(), shutdown.clone())));
        tasks.push(tokio::spawn(dead_letter_gauge(self.clone(), shutdown)));
        for task in tasks {
            let _ = task.await;
        }
    }

    async fn run_shard(&self, shard: Shard, reader: &Client, shutdown: watch::Receiver<bool>) {
        let mut backoff = FLUSH_RETRY_BACKOFF_MIN;
        let mut last_claim: Option<Instant> = None;
        while !*shutdown.borrow() {
            if last_claim.is_none_or(|t| t.elapsed() >= self.config.claim_idle / 2) {
                last_claim = Some(Instant::now());
                if let Err(e) = self.claim_abandoned(shard).await {
                    tracing::warn!(shard = shard.index(), error = %e, "XAUTOCLAIM failed");
                }
                if let Err(e) = self.forget_markers(shard).await {
                    tracing::warn!(shard = shard.index(), error = %e, "outbox markers not dropped; next time");
                }
            }
            match self.flush_from(shard, reader, Some(READ_BLOCK)).await {
                Ok(_) => backoff = FLUSH_RETRY_BACKOFF_MIN,
                Err(e) => {
                    telemetry::flush_failed();
                    tracing::warn!(shard = shard.index(), error = %e, retry_in = ?backoff, "flush failed; batch stays pending");
                    let mut shutdown = shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(FLUSH_RETRY_BACKOFF_MAX);
                }
            }
        }
    }
}

async fn backlog_gauge(flusher: Arc<Flusher>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(crate::limits::BACKLOG_GAUGE_INTERVAL);
    while !*shutdown.borrow() {
        tokio::select! {
            _ = tick.tick() => {
                if let Ok(backlog) = flusher.backlog().await {
                    telemetry::outbox_backlog(backlog);
                }
            }
            _ = shutdown.changed() => {}
        }
    }
}

/// Unresolved dead letters, counted in Postgres (over every engine).
async fn dead_letter_gauge(flusher: Arc<Flusher>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(DEAD_LETTER_GAUGE_INTERVAL);
    while !*shutdown.borrow() {
        tokio::select! {
            _ = tick.tick() => flusher.refresh_dead_letter_gauge().await,
            _ = shutdown.changed() => {}
        }
    }
}

fn event_count(entries: &[OutboxEntry]) -> usize {
    entries.iter().map(OutboxEntry::event_count).sum()
}
