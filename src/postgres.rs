//! Postgres plumbing shared by every feature: the pool, and the batch writer
//! that the write-behind flusher and any feature writing Postgres directly
//! commit through.
//!
//! A batch is one transaction, bounded in time as a whole (the server-side
//! `statement_timeout` bounds each statement; a batch is several). A batch
//! that loses a deadlock or serialization race is rolled back whole and run
//! again: it is all-or-nothing, so a retry cannot double-apply anything.

pub mod copy;

use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgConnection, PgPool, Postgres};

use crate::config::Config;
use crate::limits::POSTGRES_STATEMENT_TIMEOUT;

/// How long start-up waits for Postgres to accept connections.
const POSTGRES_STARTUP_WAIT: Duration = Duration::from_secs(30);

/// Attempts at a batch that keeps losing lock races to concurrent writers.
const BATCH_ATTEMPTS_MAX: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum BatchError<E> {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("{0}")]
    Write(E),
    #[error("postgres did not commit the batch within {0:?}")]
    Timeout(Duration),
}

/// Connects, retrying while Postgres starts. Every connection carries a
/// statement and lock timeout, so no query can hang a request or the flusher.
pub async fn connect(config: &Config) -> Result<PgPool, sqlx::Error> {
    let statement_timeout = POSTGRES_STATEMENT_TIMEOUT.as_millis().to_string();
    let options: PgConnectOptions = config.database_url.parse::<PgConnectOptions>()?.options([
        ("statement_timeout", statement_timeout.as_str()),
        ("lock_timeout", statement_timeout.as_str()),
    ]);
    let deadline = Instant::now() + POSTGRES_STARTUP_WAIT;
    loop {
        let connected = PgPoolOptions::new()
            .max_connections(config.postgres_pool_size)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await;
        match connected {
            Ok(pool) => return Ok(pool),
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(error = %e, "postgres not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs `write` on `batch` in one transaction and commits, all within `timeout`.
/// A deadlock or serialization failure rolls back and runs `write` again.
pub async fn commit_batch<B: ?Sized, T, E>(
    pool: &PgPool,
    timeout: Duration,
    batch: &B,
    mut write: impl for<'c> FnMut(&'c mut PgConnection, &'c B) -> BoxFuture<'c, Result<T, E>>,
) -> Result<T, BatchError<E>>
where
    E: PostgresCause,
{
    let mut attempt = 1;
    loop {
        let run = async {
            let mut tx = Batch::begin(pool).await?;
            match write(tx.connection(), batch).await {
                Ok(value) => {
                    tx.commit().await?;
                    Ok::<T, BatchError<E>>(value)
                }
                Err(e) => {
                    // The write's error is what the caller acts on. A
                    // rollback that fails leaves the connection to be
                    // closed, which rolls back too.
                    if let Err(rollback) = tx.rollback().await {
                        tracing::debug!(error = %rollback, "rollback failed; the connection is closed");
                    }
                    Err(BatchError::Write(e))
                }
            }
        };
        let result = tokio::time::timeout(timeout, run)
            .await
            .unwrap_or(Err(BatchError::Timeout(timeout)));
        match result {
            Err(e) if attempt < BATCH_ATTEMPTS_MAX && e.lost_race() => {
                tracing::info!(attempt, error = %e, "batch lost a lock race; retrying");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// One batch's transaction on a pooled connection. Dropped before its
/// `COMMIT` or `ROLLBACK` was acknowledged (the batch's deadline passed, or
/// the task running it was cancelled), it closes its connection, and Postgres
/// rolls the transaction back when the session ends. It is never handed back
/// to the pool: sqlx's own transaction returns a connection whose `BEGIN` was
/// sent but not yet acknowledged to the pool still inside that transaction,
/// and every later statement on it then runs in one transaction that never
/// commits, holding its locks.
struct Batch {
    conn: PoolConnection<Postgres>,
    ended: bool,
}

impl Batch {
    async fn begin(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let mut tx = Batch {
            conn: pool.acquire().await?,
            ended: false,
        };
        tx.conn.execute("BEGIN").await?;
        Ok(tx)
    }

    fn connection(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    async fn commit(mut self) -> Result<(), sqlx::Error> {
        self.conn.execute("COMMIT").await?;
        self.ended = true;
        Ok(())
    }

    async fn rollback(mut self) -> Result<(), sqlx::Error> {
        self.conn.execute("ROLLBACK").await?;
        self.ended = true;
        Ok(())
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if !self.ended {
            self.conn.close_on_drop();
        }
    }
}

/// Whether Postgres refused a statement because of the data it was given,
/// so the same rows would be refused again whatever the moment: SQLSTATE
/// class 21 (cardinality violation: one statement touching a row twice),
/// 22 (data exception: a value out of range, a bad encoding), 23 (integrity
/// constraint violation: a unique index, a check) and 54 (program limit
/// exceeded: an index row or an array too large). Every other
/// error (connection refused or reset, pool timeout, statement timeout and
/// query_canceled, serialization failure and deadlock, lock_not_available,
/// insufficient resources, admin shutdown, a server starting up), and every
/// error that is not a Postgres reply at all, is taken to be a fault of the
/// moment: retried, never blamed on the data.
pub fn is_data_error(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| ["21", "22", "23", "54"].iter().any(|class| code.starts_with(class)))
}

/// Errors that may carry a Postgres deadlock or serialization failure.
pub trait PostgresCause: std::fmt::Display {
    fn postgres_cause(&self) -> Option<&sqlx::Error>;
}

impl PostgresCause for sqlx::Error {
    fn postgres_cause(&self) -> Option<&sqlx::Error> {
        Some(self)
    }
}

impl<E: PostgresCause> BatchError<E> {
    fn lost_race(&self) -> bool {
        let error = match self {
            BatchError::Postgres(e) => Some(e),
            BatchError::Write(e) => e.postgres_cause(),
            BatchError::Timeout(_) => None,
        };
        // 40P01 deadlock_detected, 40001 serialization_failure.
        error
            .and_then(|e| e.as_database_error())
            .and_then(|db| db.code())
            .is_some_and(|code| code == "40P01" || code == "40001")
    }
}
