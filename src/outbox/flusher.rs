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
use fred::interfaces::{ClientLike, StreamsInterface};
use fred::types::Value;
use sqlx::PgPool;
use tokio::sync::watch;

use super::event::decode_read_reply;
use super::{CONSUMER_GROUP, OutboxEvent, SinkError, sinks};
use crate::config::FlushConfig;
use crate::keyspace::{Keyspace, Shard};
use crate::limits::{FLUSH_RETRY_BACKOFF_MAX, FLUSH_RETRY_BACKOFF_MIN, POSTGRES_STATEMENT_TIMEOUT};
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
}

impl Flusher {
    pub fn new(redis: Pool, postgres: PgPool, keys: Keyspace, config: FlushConfig) -> Self {
        Self {
            redis,
            postgres,
            keys,
            config,
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

    /// Unflushed entries over all shards (the streams keep nothing else).
    pub async fn backlog(&self) -> Result<u64, FlushError> {
        let mut total = 0;
        for shard in Shard::all() {
            let len: u64 = self.redis.xlen(self.keys.outbox(shard)).await?;
            total += len;
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
        let mut batch = self
            .read(shard, reader, &outbox, "0", self.config.batch_rows, None)
            .await?;
        if batch.is_empty() {
            batch = self
                .read(shard, reader, &outbox, ">", self.config.batch_rows, block)
                .await?;
            if batch.is_empty() {
                return Ok(0);
            }
            // A partial batch lingers briefly so a burst is written as one.
            if batch.len() < self.config.batch_rows && !self.config.linger.is_zero() {
                tokio::time::sleep(self.config.linger).await;
                let room = self.config.batch_rows - batch.len();
                batch.extend(self.read(shard, reader, &outbox, ">", room, None).await?);
            }
        }
        let started = Instant::now();
        self.write(&batch).await?;
        let ids: Vec<Value> = std::iter::once(Value::from(CONSUMER_GROUP))
            .chain(batch.iter().map(|e| Value::from(e.entry_id())))
            .collect();
        OUTBOX_ACK.call(&self.redis, vec![outbox], ids).await?;
        telemetry::flushed(batch.len(), started.elapsed());
        Ok(batch.len())
    }

    async fn read(
        &self,
        shard: Shard,
        reader: &Client,
        outbox: &str,
        from: &str,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<OutboxEvent>, FlushError> {
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
        decode_read_reply(shard, reply).map_err(FlushError::Decode)
    }

    async fn write(&self, batch: &[OutboxEvent]) -> Result<(), FlushError> {
        postgres::commit_batch(&self.postgres, POSTGRES_STATEMENT_TIMEOUT, batch, |tx, batch| {
            Box::pin(sinks::write_batch(tx, batch))
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
