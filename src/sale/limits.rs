//! The sale's bounds, each named with its unit and the reason for its value.
//! The shared bounds are in `crate::limits`; the compile-time checks at the
//! end relate these bounds to each other and to the shared ones they rest on.

use std::time::Duration;

use crate::limits::SCRIPT_QUEUE_DEPTH_DEFAULT;

/// Longest checkout code accepted on input. Real codes are far shorter
/// (sale id + 32 hex digits); anything longer is garbage, refused before Redis.
pub const CHECKOUT_CODE_BYTES_MAX: usize = 64;

/// Random bits in a checkout code: guessing one is hopeless (2^-128).
pub const CHECKOUT_CODE_RANDOM_BYTES: usize = 16;

/// Codes one user may hold per sale. Each live code is a Redis hash; without a
/// cap one client could pin unbounded memory by checking out in a loop.
pub const CHECKOUT_CODES_PER_USER_MAX: u32 = 1_000;

/// Refused checkout attempts (`ITEM_SOLD`, `USER_LIMIT_REACHED`, …) are
/// logged in the outbox like every attempt, but only while a shard's backlog
/// is below this fraction of `STAMPEDE_OUTBOX_MAX_EVENTS` (1/4): a flood of
/// refused attempts from random user ids while Postgres is away can then take
/// at most a quarter of the bound, and purchases, orders, wallet entries and
/// issued codes keep the rest. Beyond it a refused attempt is answered 503
/// `OUTBOX_FULL`, so every answered attempt stays in the attempt log.
pub const OUTBOX_REFUSED_ATTEMPTS_SHARE_DIVISOR: u64 = 4;

/// A checkout code's key is kept this long past the code's expiry, so a late
/// purchase gets `CODE_EXPIRED` or `CODE_USED` rather than `CODE_NOT_FOUND`.
/// Codes are the bulk of Redis memory in a sale (one per checkout), so this
/// stays short; codes of finished sales are refused from the clock alone.
pub const CODE_RETENTION_AFTER_EXPIRY: Duration = Duration::from_secs(3600);

/// Sale keys are kept this long after the sale ends, so late purchases of old
/// codes get a clear `SALE_OVER` and operators can inspect a finished sale.
pub const SALE_RETENTION_AFTER_END: Duration = Duration::from_secs(24 * 3600);

/// Longest sale period accepted: a day; sale ids stay small and retention sane.
pub const SALE_PERIOD_SECS_MAX: u64 = 24 * 3600;

/// Largest sale accepted. The sold bitmap is items/8 bytes; 10M items is 1.25 MB.
pub const ITEMS_PER_SALE_MAX: u32 = 10_000_000;

/// Most parts one sale may be split into (`STAMPEDE_SALE_SPLIT`): a code
/// names its parts in one hex digit each. Each part is also on its own
/// shard (two parts on one shard would share keys), so the split may not
/// exceed `STAMPEDE_OUTBOX_SHARDS` either (checked at start).
pub const SALE_SPLIT_MAX: u32 = 16;

/// Default and bounds of `STAMPEDE_SALE_RESERVATION_TIMEOUT_MS`: a split
/// sale's reservation older than this is taken for abandoned (its purchase
/// crashed or got a 503) and resolved by the sweeper. It must outlast any
/// purchase still on its way (checked at start against the queue deadline
/// plus the Redis command timeout): resolving voids the code, and a
/// purchase that arrives later is refused. Until then the reserved unit
/// holds the user below the limit, never above it.
pub const SALE_RESERVATION_TIMEOUT_MS_DEFAULT: u64 = 10_000;
pub const SALE_RESERVATION_TIMEOUT_MS_MAX: u64 = 600_000;

/// How often each engine sweeps the reservations of the current and the
/// previous sale: one ZRANGEBYSCORE per part.
pub const SALE_SWEEP_TICK: Duration = Duration::from_millis(500);

/// Reservations resolved per part in one sweep (two script calls each);
/// a larger backlog takes several ticks, never an unbounded reply.
pub const SALE_SWEEP_BATCH: usize = 512;

const _: () = assert!(SALE_SPLIT_MAX >= 1 && SALE_SPLIT_MAX <= 16);
// Each swept reservation is one request in a script queue.
const _: () = assert!(SALE_SWEEP_BATCH <= SCRIPT_QUEUE_DEPTH_DEFAULT);
const _: () = assert!(CHECKOUT_CODE_RANDOM_BYTES * 2 + 21 <= CHECKOUT_CODE_BYTES_MAX);
const _: () = assert!(OUTBOX_REFUSED_ATTEMPTS_SHARE_DIVISOR > 1);
