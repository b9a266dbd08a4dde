//! The settlement jobs' bounds, each named with its unit and the reason for its value.
//! The shared bounds are in `crate::limits`; the compile-time checks at the
//! end relate these bounds to each other and to the shared ones they rest on.

use std::time::Duration;

/// Longest settlement range, in days (inclusive): a leap year. Bounds a
/// job's plan (a chunk per day at least) and its work.
pub const SETTLEMENT_RANGE_DAYS_MAX: i64 = 366;

/// Ceiling for `STAMPEDE_SETTLEMENT_WORKERS`: each running job holds up to
/// `STAMPEDE_SETTLEMENT_CHUNKS_IN_FLIGHT` Postgres connections plus one for
/// its heartbeat, out of `STAMPEDE_PG_POOL`.
pub const SETTLEMENT_WORKERS_MAX: usize = 16;

/// Default and ceiling for `STAMPEDE_SETTLEMENT_BATCH_ROWS`, about how many
/// transactions one chunk (one transaction) settles. A chunk of 10,000 takes
/// tens of milliseconds, which bounds
/// how long a cancel waits for the chunk in flight. A million rows in one
/// chunk would take about a second.
pub const SETTLEMENT_BATCH_ROWS_DEFAULT: i64 = 10_000;
pub const SETTLEMENT_BATCH_ROWS_CEILING: i64 = 1_000_000;

/// Ceiling for `STAMPEDE_SETTLEMENT_CHUNKS_IN_FLIGHT`: chunks of one job
/// committed at once. Past Postgres's cores they only queue.
pub const SETTLEMENT_CHUNKS_IN_FLIGHT_MAX: usize = 8;

/// Default and floor of `STAMPEDE_SETTLEMENT_LEASE_MS`: how long a running
/// job survives without a heartbeat before another engine takes it over.
/// Longer leases resume a killed engine's jobs later; shorter ones risk a
/// takeover during a long pause (the chunk commits are fenced either way).
pub const SETTLEMENT_LEASE_DEFAULT: Duration = Duration::from_secs(10);
pub const SETTLEMENT_LEASE_MIN: Duration = Duration::from_millis(500);

/// How often a job's owner renews its lease and reads the cancel flag: the
/// bulk of the 1 s a cancel may take.
pub const SETTLEMENT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);

/// Claims of one job before it is FAILED: a job that kills its engine every
/// time must not kill every engine forever.
pub const SETTLEMENT_ATTEMPTS_MAX: i32 = 5;

/// How long a job whose run failed (Postgres away) waits before any engine
/// retries it.
pub const SETTLEMENT_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Bound of one chunk's transaction (each statement also has the pool's
/// statement timeout); planning gets four times this.
pub const SETTLEMENT_CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// Statement timeout of the plan's count, which reads the whole range once.
pub const SETTLEMENT_PLAN_STATEMENT_TIMEOUT: Duration = Duration::from_secs(100);

/// How long `POST /jobs/{id}/cancel` waits for the owner to stop the job
/// before answering 202, and how often it looks.
pub const SETTLEMENT_CANCEL_WAIT: Duration = Duration::from_secs(1);
pub const SETTLEMENT_CANCEL_POLL: Duration = Duration::from_millis(20);

/// Downloads streaming at once; each holds a Postgres connection while the
/// client reads. More get 429.
pub const SETTLEMENT_DOWNLOADS_MAX: usize = 4;

/// A download's frames: rows are gathered into frames of about this size,
/// and at most this many frames wait for a slow client, so a download holds
/// at most ~0.5 MiB of the file.
pub const SETTLEMENT_DOWNLOAD_FRAME_BYTES: usize = 64 * 1024;
pub const SETTLEMENT_DOWNLOAD_BUFFER_FRAMES: usize = 8;

/// Statement timeout of a download's `COPY`: it runs as long as the client
/// takes to read the file.
pub const SETTLEMENT_DOWNLOAD_STATEMENT_TIMEOUT: Duration = Duration::from_secs(600);

/// How often the queued/running gauges are refreshed from the table.
pub const SETTLEMENT_GAUGE_INTERVAL: Duration = Duration::from_secs(1);

const _: () = assert!(SETTLEMENT_BATCH_ROWS_DEFAULT <= SETTLEMENT_BATCH_ROWS_CEILING);
const _: () = assert!(SETTLEMENT_HEARTBEAT_INTERVAL.as_millis() * 2 < SETTLEMENT_LEASE_MIN.as_millis());
const _: () = assert!(SETTLEMENT_HEARTBEAT_INTERVAL.as_millis() < SETTLEMENT_CANCEL_WAIT.as_millis());
