//! One upload in flight: the request task splits and parses lines as chunks
//! arrive and hands full batches to writer tasks, which commit them while the
//! next batches are being parsed.
//!
//! Lines are spread over the writers by a hash of their `transaction_id`: all
//! lines of one id go to one writer, which commits its batches in file order,
//! so every line is still compared with the state its predecessors left.
//! Several writers let Postgres use more than one core, and one writer's
//! commit (a WAL flush) overlap another's work.
//!
//! Only whole batches are ever handed over, and the last, partial batches
//! only once the whole upload has arrived intact. If the upload is cut off,
//! each writer finishes the batch it is committing (a batch is one
//! transaction: all of it or none) and starts no other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::IngestError;
use super::limits::{INGEST_BATCHES_AHEAD, INGEST_ERRORS_REPORTED_MAX, INGEST_LINE_BYTES_MAX};
use super::lines::{Line, LineSplitter};
use super::metrics;
use super::record::{LineError, PurchaseRecord, parse_line};
use super::sink::{self, BatchCounts};
use crate::limits::POSTGRES_STATEMENT_TIMEOUT;
use crate::postgres::{self, BatchError};
use crate::redis::keyspace::stable_hash;

/// The response to a finished upload. Every non-blank line is counted
/// exactly once: `total = created + updated + unchanged + rejected`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IngestReport {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: u64,
    pub total: u64,
    /// The first rejected lines, in file order.
    pub errors: Vec<RejectedLine>,
    /// Whether more lines were rejected than `errors` lists.
    pub errors_truncated: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RejectedLine {
    pub line: u64,
    pub code: &'static str,
    pub message: String,
}

/// What the writer committed, and how it stopped.
#[derive(Debug, Default)]
struct Written {
    counts: BatchCounts,
    lines: u64,
}

type WriterResult = Result<Written, (Written, BatchError<sqlx::Error>)>;

pub struct Upload {
    splitter: LineSplitter,
    batch_rows: usize,
    /// The batch being filled, per writer.
    filling: Vec<Vec<PurchaseRecord>>,
    /// Full batches waiting to be handed over: (writer, batch).
    full: Vec<(usize, Vec<PurchaseRecord>)>,
    rejected: u64,
    errors: Vec<RejectedLine>,
    to_writers: Vec<mpsc::Sender<Vec<PurchaseRecord>>>,
    writers: Vec<JoinHandle<WriterResult>>,
    /// Set when the upload is abandoned (error or dropped request): the
    /// writers then start no further batch.
    abandoned: Arc<AtomicBool>,
}

impl Upload {
    pub fn start(postgres: PgPool, batch_rows: usize, writers: usize) -> Self {
        let abandoned = Arc::new(AtomicBool::new(false));
        let (to_writers, writers): (Vec<_>, Vec<_>) = (0..writers.max(1))
            .map(|_| {
                let (to_writer, batches) = mpsc::channel(INGEST_BATCHES_AHEAD);
                let writer = tokio::spawn(write_batches(postgres.clone(), batches, abandoned.clone()));
                (to_writer, writer)
            })
            .unzip();
        Self {
            splitter: LineSplitter::new(INGEST_LINE_BYTES_MAX),
            batch_rows,
            filling: (0..to_writers.len()).map(|_| Vec::with_capacity(batch_rows)).collect(),
            full: Vec::new(),
            rejected: 0,
            errors: Vec::new(),
            to_writers,
            writers,
            abandoned,
        }
    }

    /// Parses the lines a chunk completes; hands full batches to the writers.
    pub async fn feed(&mut self, chunk: &[u8]) -> Result<(), IngestError> {
        let Self {
            splitter,
            batch_rows,
            filling,
            full,
            rejected,
            errors,
            ..
        } = self;
        let _ = splitter.push(chunk, |line| {
            if let Some(record) = take_line(line, rejected, errors) {
                let writer = writer_of(&record.transaction_id, filling.len());
                filling[writer].push(record);
                if filling[writer].len() >= *batch_rows {
                    let batch = std::mem::replace(&mut filling[writer], Vec::with_capacity(*batch_rows));
                    full.push((writer, batch));
                }
            }
            Ok::<(), ()>(())
        });
        self.hand_over_full().await
    }

    /// The upload arrived whole: commit the rest and report.
    pub async fn finish(mut self) -> Result<IngestReport, IngestError> {
        let Self {
            splitter,
            filling,
            rejected,
            errors,
            ..
        } = &mut self;
        let _ = splitter.finish(|line| {
            if let Some(record) = take_line(line, rejected, errors) {
                let writer = writer_of(&record.transaction_id, filling.len());
                filling[writer].push(record);
            }
            Ok::<(), ()>(())
        });
        for (writer, batch) in std::mem::take(&mut self.filling).into_iter().enumerate() {
            if !batch.is_empty() {
                self.full.push((writer, batch));
            }
        }
        self.hand_over_full().await?;
        // Closing the channels tells the writers there is nothing more.
        self.to_writers.clear();
        let (written, failure) = self.join_writers().await;
        if let Some(source) = failure {
            return Err(IngestError::Store {
                committed: written.lines,
                source,
            });
        }
        let counts = written.counts;
        let total = counts.created + counts.updated + counts.unchanged + self.rejected;
        Ok(IngestReport {
            created: counts.created,
            updated: counts.updated,
            unchanged: counts.unchanged,
            rejected: self.rejected,
            total,
            errors_truncated: self.rejected > self.errors.len() as u64,
            errors: std::mem::take(&mut self.errors),
        })
    }

    /// Gives up on the upload: each writer completes the batch it is in (if
    /// any) and stops. Returns the lines committed.
    pub async fn abandon(mut self) -> u64 {
        self.abandoned.store(true, Ordering::SeqCst);
        self.to_writers.clear();
        self.join_writers().await.0.lines
    }

    async fn hand_over_full(&mut self) -> Result<(), IngestError> {
        for (writer, batch) in std::mem::take(&mut self.full) {
            let sent = match self.to_writers.get(writer) {
                Some(to_writer) => to_writer.send(batch).await.is_ok(),
                None => false,
            };
            if !sent {
                // A writer stopped early: only a failure does that.
                self.abandoned.store(true, Ordering::SeqCst);
                self.to_writers.clear();
                let (written, failure) = self.join_writers().await;
                return Err(IngestError::Store {
                    committed: written.lines,
                    source: failure.unwrap_or_else(|| {
                        BatchError::Postgres(sqlx::Error::Protocol("an ingest writer stopped early".into()))
                    }),
                });
            }
        }
        Ok(())
    }

    /// Waits for every writer: what they committed in all, and the first
    /// failure if any.
    async fn join_writers(&mut self) -> (Written, Option<BatchError<sqlx::Error>>) {
        let mut written = Written::default();
        let mut failure = None;
        for writer in std::mem::take(&mut self.writers) {
            let (part, error) = match writer.await {
                Ok(Ok(part)) => (part, None),
                Ok(Err((part, source))) => (part, Some(source)),
                Err(join) => (
                    Written::default(),
                    Some(BatchError::Postgres(sqlx::Error::Protocol(format!(
                        "ingest writer task failed: {join}"
                    )))),
                ),
            };
            written.counts.add(part.counts);
            written.lines += part.lines;
            if failure.is_none() {
                failure = error;
            }
        }
        (written, failure)
    }
}

/// Which writer takes an id: stable within an upload (every line of one id
/// goes to one writer), spread evenly.
fn writer_of(transaction_id: &str, writers: usize) -> usize {
    (stable_hash(transaction_id) % writers as u64) as usize
}

impl Drop for Upload {
    /// A request dropped mid-upload (the client went away) stops the
    /// writers after their current batch.
    fn drop(&mut self) {
        self.abandoned.store(true, Ordering::SeqCst);
    }
}

/// A parsed line, or `None` after counting and (within the cap) listing it
/// as rejected.
fn take_line(line: Line<'_>, rejected: &mut u64, errors: &mut Vec<RejectedLine>) -> Option<PurchaseRecord> {
    let (number, error) = match line {
        Line::Text { number, bytes } => match parse_line(bytes) {
            Ok(record) => return Some(record),
            Err(error) => (number, error),
        },
        Line::TooLong { number } => (number, LineError::too_long(INGEST_LINE_BYTES_MAX)),
    };
    *rejected += 1;
    if errors.len() < INGEST_ERRORS_REPORTED_MAX {
        errors.push(RejectedLine {
            line: number,
            code: error.code.as_str(),
            message: error.message,
        });
    }
    None
}

async fn write_batches(
    postgres: PgPool,
    mut batches: mpsc::Receiver<Vec<PurchaseRecord>>,
    abandoned: Arc<AtomicBool>,
) -> WriterResult {
    let mut written = Written::default();
    while let Some(batch) = batches.recv().await {
        if abandoned.load(Ordering::SeqCst) {
            break;
        }
        let started = Instant::now();
        let result = postgres::commit_batch(&postgres, POSTGRES_STATEMENT_TIMEOUT, batch.as_slice(), |tx, batch| {
            Box::pin(sink::write(tx, batch))
        })
        .await;
        match result {
            Ok(counts) => {
                metrics::ingest_batch(batch.len(), started.elapsed());
                written.counts.add(counts);
                written.lines += batch.len() as u64;
            }
            Err(e) => {
                metrics::ingest_batch_failed();
                return Err((written, e));
            }
        }
    }
    Ok(written)
}
