//! The orders' bounds, each named with its unit and the reason for its value.
//! The shared bounds are in `crate::limits`; the compile-time checks at the
//! end relate these bounds to each other and to the shared ones they rest on.

use std::time::Duration;

use crate::limits::{OUTBOX_SHARDS_MAX, SCRIPT_QUEUE_DEPTH_DEFAULT};

/// Largest `quantity` of one order. A buyer of a limited-stock product takes
/// a handful; the bound keeps `quantity * price_cents` far from overflow.
pub const ORDER_QUANTITY_MAX: i64 = 1_000;

/// Largest `stock` of a product and largest restock. Lua counts in doubles,
/// exact up to 2^53: stock and totals stay far below.
pub const PRODUCT_STOCK_MAX: i64 = 1_000_000_000;

/// Largest price, in cents (ten billion dollars): with `ORDER_QUANTITY_MAX`
/// an order's total stays below 2^53, exact in Lua.
pub const PRODUCT_PRICE_CENTS_MAX: i64 = 1_000_000_000_000;

/// Longest product name; it is stored in the product's Redis hash.
pub const PRODUCT_NAME_BYTES_MAX: usize = 200;

/// Longest `hold_secs`: a reservation holds stock others cannot buy.
pub const HOLD_SECS_MAX: i64 = 3_600;

/// Default and ceiling of `STAMPEDE_IDEMPOTENCY_TTL_SECS`: how long a key's
/// first answer is kept for replay. Each key is a small Redis hash (~300 B).
pub const IDEMPOTENCY_TTL_SECS_DEFAULT: u64 = 86_400;
pub const IDEMPOTENCY_TTL_SECS_MAX: u64 = 7 * 86_400;

/// Default of `STAMPEDE_FEE_BPS`: the fee, in basis points, of the
/// transaction a completed order becomes for settlement (2.5%).
pub const FEE_BPS_DEFAULT: i64 = 250;

/// How long an order's Redis record lives after its last change. Within it
/// `GET /orders/{id}` answers from Redis, confirm and cancel act; later,
/// reads go to Postgres. One record is ~250 B: a million orders a day keep
/// ~250 MB. It must outlive every hold (checked below).
pub const ORDER_RECORD_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// How often each engine looks for holds due to expire. The issue asks for
/// stock back within 1 s; a pass is one ZRANGEBYSCORE per shard.
pub const HOLD_EXPIRY_INTERVAL: Duration = Duration::from_millis(100);

/// Holds expired per shard in one pass before the next read; a larger wave
/// takes several passes back to back, never an unbounded reply.
pub const HOLDS_EXPIRED_PER_PASS_MAX: usize = 1_024;

/// Products and flash sales one `GET /admin/reconcile` compares; `checked`
/// says how many it did.
pub const RECONCILE_PRODUCTS_MAX: i64 = 10_000;
pub const RECONCILE_SALES_MAX: i64 = 1_000;

/// Unresolved dead letters reconcile lists one by one as mismatches (newest
/// first); `dead_letters_unresolved` counts them all.
pub const RECONCILE_DEAD_LETTERS_MAX: i64 = 1_000;

/// How long reconcile waits for the outbox backlog to reach 0 before it
/// answers 503 `BACKLOG_NOT_FLUSHED`: comparing earlier would report events
/// still in flight as drift.
pub const RECONCILE_FLUSH_WAIT: Duration = Duration::from_secs(5);

const _: () = assert!(ORDER_RECORD_RETENTION.as_secs() > HOLD_SECS_MAX as u64 * 2);
// Lua numbers are doubles, exact below 2^53, and `%d` prints them exactly:
// an order's total (order_create.lua) and a restock's new total, computed
// before it is checked against the ceiling (product_stock.lua), stay below.
const _: () = assert!((ORDER_QUANTITY_MAX as i128) * (PRODUCT_PRICE_CENTS_MAX as i128) < (1_i128 << 53));
const _: () = assert!(PRODUCT_STOCK_MAX < (1 << 52));
const _: () = assert!(PRODUCT_STOCK_MAX + PRODUCT_STOCK_MAX < (1 << 53));
// Every order script appends at most one event per request.
const _: () = assert!(HOLDS_EXPIRED_PER_PASS_MAX <= SCRIPT_QUEUE_DEPTH_DEFAULT);
// The order id's last two bytes carry its shard (src/orders/domain.rs), and
// ids made when the last byte alone did (8 shards) keep naming theirs.
const _: () = assert!(OUTBOX_SHARDS_MAX <= 65_536 && 256 % crate::limits::OUTBOX_SHARDS_DEFAULT == 0);
