//! The write-behind flusher. Per outbox shard: read a batch through the
//! consumer group, write it to Postgres in one transaction (idempotent on
//! event id), and only after COMMIT acknowledge and delete it.
//!
//! At-least-once delivery (nothing is acked before it is committed) plus
//! idempotent writes gives exactly-once rows. Entries pending on a consumer
//! that died are taken over with XAUTOCLAIM; a restarted engine with the same
//! consumer name resumes its own pending entries first.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use fred::clients::{Client, Pool};
use fred::interfaces::{ClientLike, KeysInterface, StreamsInterface};
use fred::types::Value;
use sqlx::PgPool;
use tokio::sync::watch;

use super::event::{decode_entry, decode_read_reply};
use super::{CONSUMER_GROUP, OutboxEntry, OutboxEvent, SinkError, SinkRegistry};
use crate::config::FlushConfig;
use crate::keyspace::{Keyspace, Shard};
use crate::limits::{
    FLUSH_RETRY_BACKOFF_MAX, FLUSH_RETRY_BACKOFF_MIN, POSTGRES_STATEMENT_TIMEOUT, SCRIPT_BATCH_REQUESTS_MAX,
};
use crate::postgres::{self, BatchError};
use crate::scripts::{LuaScript, ScriptError};
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
}

pub struct Flusher {
    redis: Pool,
    postgres: PgPool,
    keys: Keyspace,
    config: FlushConfig,
    sinks: Arc<SinkRegistry>,
}

impl Flusher {
    pub fn new(redis: Pool, postgres: PgPool, keys: Keyspace, config: FlushConfig, sinks: SinkRegistry) -> Self {
        Self {
            redis,
            postgres,
            keys,
            config,
            sinks: Arc::new(sinks),
        }
    }

    /// Creates the consumer group on every shard's stream (and the stream).
    pub async fn ensure_groups(&self) -> Result<(), FlushError> {
        for shard in Shard::all() {
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
        for shard in Shard::all() {
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

    /// Flushes every shard until all are empty, or until `deadline`.
    pub async fn drain(&self, deadline: Instant) -> Result<usize, FlushError> {
        let mut flushed = 0;
        loop {
            let mut pass = 0;
            for shard in Shard::all() {
                pass += self.flush_once(shard).await?;
            }
            flushed += pass;
            if pass == 0 || Instant::now() >= deadline {
                return Ok(flushed);
            }
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
        let events: Vec<OutboxEvent> = batch.iter().flat_map(|e| e.events.iter().cloned()).collect();
        self.write(&events).await?;
        // Acked with each entry's event count, so the backlog counter drops
        // by exactly what was deleted.
        let mut args: Vec<Value> = Vec::with_capacity(1 + batch.len() * 2);
        args.push(CONSUMER_GROUP.into());
        for entry in &batch {
            args.push(entry.entry_id.as_str().into());
            args.push((entry.events.len() as i64).into());
        }
        OUTBOX_ACK
            .call(&self.redis, vec![outbox, self.keys.outbox_events(shard)], args)
            .await?;
        telemetry::flushed(events.len(), started.elapsed());
        Ok(events.len())
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
        let mut entries = Vec::with_capacity(raw.len());
        for entry in raw {
            entries.push(decode_entry(shard, entry, |kind| self.sinks.kind(kind))?);
        }
        Ok(entries)
    }

    async fn write(&self, batch: &[OutboxEvent]) -> Result<(), FlushError> {
        let sinks = self.sinks.clone();
        postgres::commit_batch(&self.postgres, POSTGRES_STATEMENT_TIMEOUT, batch, move |tx, batch| {
            let sinks = sinks.clone();
            Box::pin(async move { sinks.write_batch(tx, batch).await })
        })
        .await
        .map_err(|e| match e {
            BatchError::Postgres(e) => FlushError::Sink(SinkError::Postgres(e)),
            BatchError::Write(e) => FlushError::Sink(e),
            BatchError::Timeout(limit) => FlushError::Timeout(limit),
        })
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
        for shard in Shard::all() {
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
                if let Err(e) = reader.init().await {
                    tracing::error!(error = %e, "outbox reader could not connect; retrying in its loop");
                }
                flusher.run_shard(shard, &reader, shutdown).await;
                let _ = reader.quit().await;
            }));
        }
        tasks.push(tokio::spawn(backlog_gauge(self.clone(), shutdown)));
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

fn event_count(entries: &[OutboxEntry]) -> usize {
    entries.iter().map(|e| e.events.len()).sum()
}
