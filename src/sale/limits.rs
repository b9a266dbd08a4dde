//! The sale's bounds, each named with its unit and the reason for its value.
//! The shared bounds are in `crate::limits`; the compile-time checks at the
//! end relate these bounds to each other and to the shared ones they rest on.

use std::time::Duration;

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

const _: () = assert!(CHECKOUT_CODE_RANDOM_BYTES * 2 + 21 <= CHECKOUT_CODE_BYTES_MAX);
const _: () = assert!(OUTBOX_REFUSED_ATTEMPTS_SHARE_DIVISOR > 1);
