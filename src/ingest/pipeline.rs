//! One upload in flight: the request task splits and parses lines as chunks
//! arrive and hands full batches to a writer task, which commits them one at
//! a time, in order, while the next batch is being parsed.
//!
//! Only whole batches are ever handed over, and the last, partial batch only
//! once the whole upload has arrived intact. If the upload is cut off, the
//! writer finishes the batch it is committing (a batch is one transaction:
//! all of it or none) and starts no other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::lines::{Line, LineSplitter};
use super::record::{LineError, PurchaseRecord, parse_line};
use super::sink::{self, BatchCounts};
use crate::limits::{
    INGEST_BATCHES_AHEAD, INGEST_ERRORS_REPORTED_MAX, INGEST_LINE_BYTES_MAX, POSTGRES_STATEMENT_TIMEOUT,
};
use crate::postgres::{self, BatchError};
use crate::telemetry;

/// The response to a finished upload. Every non-blank line is counted
/// exactly once: `total = created + updated + unchanged + rejected`.
#[derive(Debug, Serialize)]
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

#[derive(Debug, Serialize)]
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
    batch: Vec<PurchaseRecord>,
    full: Vec<Vec<PurchaseRecord>>,
    rejected: u64,
    errors: Vec<RejectedLine>,
    to_writer: Option<mpsc::Sender<Vec<PurchaseRecord>>>,
    writer: Option<JoinHandle<WriterResult>>,
    /// Set when the upload is abandoned (error or dropped request): the
    /// writer then starts no further batch.
    abandoned: Arc<AtomicBool>,
}

/// Why feeding the upload stopped.
pub enum FeedError {
    /// The writer failed; the upload cannot complete.
    Store {
        committed: u64,
        source: BatchError<sqlx::Error>,
    },
}

impl Upload {
    pub fn start(postgres: PgPool, batch_rows: usize) -> Self {
        let (to_writer, batches) = mpsc::channel(INGEST_BATCHES_AHEAD);
        let abandoned = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn(write_batches(postgres, batches, abandoned.clone()));
        Self {
            splitter: LineSplitter::new(INGEST_LINE_BYTES_MAX),
            batch_rows,
            batch: Vec::with_capacity(batch_rows),
            full: Vec::new(),
            rejected: 0,
            errors: Vec::new(),
            to_writer: Some(to_writer),
            writer: Some(writer),
            abandoned,
        }
    }

    /// Parses the lines a chunk completes; hands full batches to the writer.
    pub async fn feed(&mut self, chunk: &[u8]) -> Result<(), FeedError> {
        let Self {
            splitter,
            batch_rows,
            batch,
            full,
            rejected,
            errors,
            ..
        } = self;
        let _ = splitter.push(chunk, |line| {
            take_line(line, batch, rejected, errors);
            if batch.len() >= *batch_rows {
                full.push(std::mem::replace(batch, Vec::with_capacity(*batch_rows)));
            }
            Ok::<(), ()>(())
        });
        self.hand_over_full().await
    }

    /// The upload arrived whole: commit the rest and report.
    pub async fn finish(mut self) -> Result<IngestReport, FeedError> {
        let Self {
            splitter,
            batch,
            rejected,
            errors,
            ..
        } = &mut self;
        let _ = splitter.finish(|line| {
            take_line(line, batch, rejected, errors);
            Ok::<(), ()>(())
        });
        let last = std::mem::take(&mut self.batch);
        if !last.is_empty() {
            self.full.push(last);
        }
        self.hand_over_full().await?;
        // Closing the channel tells the writer there is nothing more.
        self.to_writer = None;
        let written = self.join_writer().await?;
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

    /// Gives up on the upload: the writer completes the batch it is in (if
    /// any) and stops. Returns the lines committed.
    pub async fn abandon(mut self) -> u64 {
        self.abandoned.store(true, Ordering::SeqCst);
        self.to_writer = None;
        match self.join_writer().await {
            Ok(written) => written.lines,
            Err(FeedError::Store { committed, .. }) => committed,
        }
    }

    async fn hand_over_full(&mut self) -> Result<(), FeedError> {
        for batch in std::mem::take(&mut self.full) {
            let sent = match &self.to_writer {
                Some(to_writer) => to_writer.send(batch).await.is_ok(),
                None => false,
            };
            if !sent {
                // The writer stopped early: only a failure does that.
                self.to_writer = None;
                self.join_writer().await?;
            }
        }
        Ok(())
    }

    async fn join_writer(&mut self) -> Result<Written, FeedError> {
        let Some(writer) = self.writer.take() else {
            return Ok(Written::default());
        };
        match writer.await {
            Ok(Ok(written)) => Ok(written),
            Ok(Err((written, source))) => Err(FeedError::Store {
                committed: written.lines,
                source,
            }),
            Err(join) => Err(FeedError::Store {
                committed: 0,
                source: BatchError::Postgres(sqlx::Error::Protocol(format!("ingest writer task failed: {join}"))),
            }),
        }
    }
}

impl Drop for Upload {
    /// A request dropped mid-upload (the client went away) stops the writer
    /// after its current batch.
    fn drop(&mut self) {
        self.abandoned.store(true, Ordering::SeqCst);
    }
}

fn take_line(line: Line<'_>, batch: &mut Vec<PurchaseRecord>, rejected: &mut u64, errors: &mut Vec<RejectedLine>) {
    let (number, error) = match line {
        Line::Text { number, bytes } => match parse_line(bytes) {
            Ok(record) => {
                batch.push(record);
                return;
            }
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
                telemetry::ingest_batch(batch.len(), started.elapsed());
                written.counts.add(counts);
                written.lines += batch.len() as u64;
            }
            Err(e) => {
                telemetry::ingest_batch_failed();
                return Err((written, e));
            }
        }
    }
    Ok(written)
}
