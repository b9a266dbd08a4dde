//! The ingest's bounds, each named with its unit and the reason for its value.
//! The shared bounds are in `crate::limits`; the compile-time checks at the
//! end relate these bounds to each other and to the shared ones they rest on.

use std::time::Duration;

/// Longest NDJSON line accepted by `POST /ingest`. A purchase is ~300 bytes;
/// 16 KiB leaves room for generous extras while bounding what one line may
/// make the engine buffer.
pub const INGEST_LINE_BYTES_MAX: usize = 16 * 1024;

/// Longest identifier in a purchase line (transaction, player, item ids):
/// platform ids are UUIDs or shorter; the bound keeps index entries small.
pub const INGEST_ID_BYTES_MAX: usize = 128;

/// Longest `item_name`.
pub const INGEST_NAME_BYTES_MAX: usize = 512;

/// Largest price, in minor units: 10^12 cents is ten billion dollars. Keeps a
/// player's spend total far from `bigint` overflow.
pub const INGEST_PRICE_MINOR_MAX: i64 = 1_000_000_000_000;

/// Default and ceiling for `STAMPEDE_INGEST_MAX_BYTES`, the largest upload.
/// A million purchases is ~300 MB.
pub const INGEST_UPLOAD_BYTES_DEFAULT: u64 = 1 << 30;
pub const INGEST_UPLOAD_BYTES_CEILING: u64 = 64 << 30;

/// Default and ceiling for `STAMPEDE_INGEST_BATCH_ROWS`: rows per Postgres
/// transaction. Larger batches amortise commits and round trips (10,000
/// measured best; 20,000 no better); the ceiling bounds the engine memory one
/// upload holds: up to three batches per writer (filling, queued, committing).
pub const INGEST_BATCH_ROWS_DEFAULT: usize = 10_000;
pub const INGEST_BATCH_ROWS_CEILING: usize = 50_000;

/// Batches parsed ahead of the one being written. One is enough to overlap
/// parsing with Postgres; more would only hold memory.
pub const INGEST_BATCHES_AHEAD: usize = 1;

/// Ceiling for `STAMPEDE_INGEST_WRITERS`, the Postgres connections one
/// upload writes through: past the server's cores they only add lock waits.
pub const INGEST_WRITERS_MAX: usize = 16;

/// Uploads processed at once; more get 429. Each holds up to
/// `STAMPEDE_INGEST_WRITERS` Postgres connections for its whole duration.
pub const INGEST_UPLOADS_MAX: usize = 2;

/// Line errors listed in an ingest response; the counts stay exact beyond it.
pub const INGEST_ERRORS_REPORTED_MAX: usize = 100;

/// Default for `STAMPEDE_INGEST_IDLE_TIMEOUT_MS`: how long an upload may go
/// without sending a byte before it is abandoned (it holds an upload slot and
/// Postgres connections meanwhile).
pub const INGEST_BODY_IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// Largest multipart field other than `file` (skipped, but read).
pub const INGEST_OTHER_FIELD_BYTES_MAX: u64 = 64 * 1024;

/// Most bytes accepted before an upload's first multipart boundary, and in
/// one part's header block (after its boundary, through the blank line).
/// Clients send no preamble and a header block of ~150 bytes (a
/// `Content-Disposition` with the file name, a `Content-Type`); 64 KiB
/// leaves room for long names. Without them the multipart parser would
/// hold up to the whole upload and search it again as each chunk arrives.
pub const INGEST_MULTIPART_PREAMBLE_BYTES_MAX: usize = 64 * 1024;
pub const INGEST_PART_HEADER_BYTES_MAX: usize = 64 * 1024;

/// Longest multipart boundary, as RFC 2046 allows (1–70 characters). It is
/// looked for across chunk edges, so its length is work per chunk.
pub const MULTIPART_BOUNDARY_BYTES_MAX: usize = 70;

const _: () = assert!(INGEST_BATCH_ROWS_DEFAULT <= INGEST_BATCH_ROWS_CEILING);
const _: () = assert!(INGEST_UPLOAD_BYTES_DEFAULT <= INGEST_UPLOAD_BYTES_CEILING);
