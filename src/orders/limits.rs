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

/// Most buckets one product's stock may be split into
/// (`STAMPEDE_STOCK_SPLIT`). Each bucket has a shard of its own (two on one
/// shard would share keys), so it may not exceed `STAMPEDE_OUTBOX_SHARDS`
/// either (checked at start); an order that finds its bucket dry visits up
/// to every other bucket, so the split bounds that walk too.
pub const STOCK_SPLIT_MAX: u32 = 16;

/// Default and bounds of `STAMPEDE_STOCK_REFILL_MAX`: the most one refill
/// moves beyond what the order lacks. A refill takes its share (a 1/K of the
/// reserve, half a donor bucket's available) so that the next orders of the
/// bucket need none; this caps the share, trading refill calls for stock
/// spread thinner. By default only the share limits it.
pub const STOCK_REFILL_MAX_DEFAULT: i64 = PRODUCT_STOCK_MAX;

/// Refills one order of a split product may make itself, once its turn at
/// the bucket's gate comes: a refill's stock can be taken by orders just
/// arriving at the bucket before the order that asked for it gets there, or
/// be on its way between buckets. Past this, and
/// while stock still moves, the order answers 503 `OVERLOADED` (retry)
/// rather than keep its client waiting; it is never answered `OUT_OF_STOCK`
/// while the product has stock enough for it.
pub const STOCK_REFILL_ROUNDS_MAX: usize = 4;

/// Gates an engine keeps for the refills of buckets (one refill per bucket
/// at a time; buckets share gates by hash, so it is bounded whatever the
/// number of products, at the price of two buckets on one gate waiting for
/// each other).
pub const STOCK_REFILL_GATES: usize = 1_024;

/// How long an order waits before asking again when a refill found nothing
/// to move but the product has stock on its way between buckets: a
/// transfer's take follows its give at once, so a few milliseconds see it
/// land.
pub const STOCK_TRANSIT_PAUSE: Duration = Duration::from_millis(5);

/// Tries of a read of a split product's stock across its slots (one read of
/// each part, then their `moves` again): a try is discarded when stock moved
/// between slots while it read, and after this many the read answers 503
/// `OVERLOADED` (retry) rather than a sum that may be off.
pub const STOCK_READ_TRIES_MAX: usize = 8;

/// Transfers one part of a split product may have in transit at once (each
/// is a refill in flight, or one a crash left for the sweeper). A reader
/// reads a part's transit hash whole, so it stays this small; a give past it
/// is refused (503 `OVERLOADED`) and changes nothing.
pub const STOCK_TRANSIT_PER_PART_MAX: i64 = 1_024;

/// How long a bucket remembers the id of a transfer it received, so a second
/// take of it (the sweeper finishing a transfer the order finished too)
/// changes nothing. A take is sent right after its give, or by a sweeper
/// that just read the transfer, so it arrives within the queue deadline plus
/// the command timeout (at most two minutes) or never; an hour is far past
/// that, and past the longest a sweeper leaves a transfer (below).
pub const STOCK_RECEIPT_RETENTION: Duration = Duration::from_secs(3600);

/// Receipts past their retention one take forgets: the set shrinks as it
/// grows, by bounded work per call.
pub const STOCK_RECEIPTS_FORGOTTEN_PER_CALL: usize = 64;

/// Default and bounds of `STAMPEDE_STOCK_TRANSIT_TIMEOUT_MS`: a transfer in
/// transit longer than this is taken for cut by a crash (its order's engine
/// died between the steps) and finished by the sweeper. Finishing is
/// idempotent, so a sweeper racing a live order only repeats a step that
/// changes nothing; the timeout only spares that work.
pub const STOCK_TRANSIT_TIMEOUT_MS_DEFAULT: u64 = 5_000;
pub const STOCK_TRANSIT_TIMEOUT_MS_MAX: u64 = 600_000;

/// Default and ceiling of `STAMPEDE_STOCK_SWEEP_BATCH`: transfers the
/// sweeper finishes per shard per tick (two script calls each); a larger
/// backlog takes several ticks, never an unbounded reply.
pub const STOCK_SWEEP_BATCH_DEFAULT: usize = 256;
pub const STOCK_SWEEP_BATCH_MAX: usize = SCRIPT_QUEUE_DEPTH_DEFAULT;

/// How often each engine sweeps: one ZRANGEBYSCORE per shard.
pub const STOCK_SWEEP_TICK: Duration = Duration::from_millis(500);

/// Products whose split an engine remembers (a product's split never
/// changes once recorded). Past it the memory is cleared and refilled by
/// one read per product.
pub const PRODUCT_SPLITS_CACHED_MAX: usize = 100_000;

const _: () = assert!(ORDER_RECORD_RETENTION.as_secs() > HOLD_SECS_MAX as u64 * 2);
// A receipt outlives any take still on its way (queue deadline and command
// timeout are at most a minute each) and the longest a transfer waits for
// the sweeper.
const _: () = assert!(STOCK_RECEIPT_RETENTION.as_secs() > 10 * 120);
const _: () = assert!(STOCK_RECEIPT_RETENTION.as_millis() > 2 * STOCK_TRANSIT_TIMEOUT_MS_MAX as u128);
const _: () = assert!(STOCK_SPLIT_MAX >= 1 && STOCK_SPLIT_MAX as u64 <= OUTBOX_SHARDS_MAX);
// Every swept transfer, and every give of one rebalance, is a request in a
// script queue.
const _: () = assert!(STOCK_SWEEP_BATCH_MAX <= SCRIPT_QUEUE_DEPTH_DEFAULT);
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
