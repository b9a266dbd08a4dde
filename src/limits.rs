//! Every bound the engine enforces, named with its unit, with the reason for
//! its value. Values that operators may tune live in [`crate::config`] and are
//! checked against the hard ceilings here at start-up.

use std::time::Duration;

/// Longest `user_id` accepted. Bounds the key and field sizes a user can make
/// Redis store, and the `user_id` column.
pub const USER_ID_BYTES_MAX: usize = 64;

/// Longest checkout code accepted on input. Real codes are far shorter
/// (sale id + 32 hex digits); anything longer is garbage, refused before Redis.
pub const CHECKOUT_CODE_BYTES_MAX: usize = 64;

/// Random bits in a checkout code: guessing one is hopeless (2^-128).
pub const CHECKOUT_CODE_RANDOM_BYTES: usize = 16;

/// Largest request body read. The only body we accept is
/// `{"checkout_code": "..."}`; 16 KiB leaves room for clients that pad.
pub const REQUEST_BODY_BYTES_MAX: usize = 16 * 1024;

/// Longest request URI. A query holds two short parameters.
pub const REQUEST_URI_BYTES_MAX: usize = 2 * 1024;

/// Most bytes hyper buffers for a request head (request line and headers);
/// beyond it the connection is closed. Our clients send a short URI and a few
/// headers; 16 KiB leaves room for proxies' headers. hyper's floor is 8 KiB.
pub const REQUEST_HEAD_BYTES_MAX: usize = 16 * 1024;

/// How long a client may take to send a body once its headers arrived.
pub const REQUEST_BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest an event stream (wallet or `/live/events`) waits for its client
/// to take the next frame. Frames are small and few (an idle stream sends a
/// heartbeat every 15 s), so a client this far behind has stopped reading;
/// ending its stream frees its slot, and it can reconnect (`Last-Event-ID`).
pub const SSE_SEND_STALL_MAX: Duration = Duration::from_secs(30);

/// Codes one user may hold per sale. Each live code is a Redis hash; without a
/// cap one client could pin unbounded memory by checking out in a loop.
pub const CHECKOUT_CODES_PER_USER_MAX: u32 = 1_000;

/// Outbox shards: each sale's keys and its outbox live under the hash tag
/// `{sale_id % OUTBOX_SHARDS}`, so a cluster spreads consecutive sales over
/// nodes. Fixed, because changing it moves keys: drain the outbox first.
pub const OUTBOX_SHARDS: u64 = 8;

/// Default of `STAMPEDE_OUTBOX_MAX_EVENTS`: unflushed events one outbox shard
/// may hold before scripts shed new writes with 503. At ~150 bytes an event
/// this is ~150 MiB of Redis per shard, hours of a sale's traffic while
/// Postgres is away.
pub const OUTBOX_EVENTS_DEFAULT: u64 = 1_000_000;

/// Ceiling for `STAMPEDE_FLUSH_BATCH_ROWS` (events per Postgres transaction,
/// and so entries per ack): the ack script passes the entry ids to `unpack`,
/// and Lua's C stack takes at most ~8000 values.
pub const FLUSH_BATCH_ROWS_MAX: usize = 7_000;

/// Requests one batched script call carries. Each request appends at most
/// two events, each two values of the one `XADD`, which Lua passes through
/// `unpack`: 4 × 256 values stay far below its ~8000. Larger batches gain
/// little: at 256 the per-call overhead is already under 1% of the call.
pub const SCRIPT_BATCH_REQUESTS_MAX: usize = 256;

/// Default of `STAMPEDE_SCRIPT_QUEUE_MAX`: requests that may wait for one
/// script on one shard while its calls are in flight; beyond it requests are
/// shed with 503 `OVERLOADED` rather than queued without limit. It must be
/// fillable: each HTTP/1.1 connection has at most one request in flight, so
/// a queue bound at or above the connection bound could never be reached
/// (checked below for the defaults, and at start for the settings, where the
/// default is also capped at half the connection bound). 4,096 is a fraction
/// of a second of one shard's work at the rates measured in ARCHITECTURE.md
/// (5,000-15,000 script requests/s), so the queue deadline usually sheds
/// first; a flash sale puts all its traffic on one shard, so nearly half the
/// default connection bound may wait on it.
pub const SCRIPT_QUEUE_DEPTH_DEFAULT: usize = 4_096;

/// Default of `STAMPEDE_MAX_CONNECTIONS`: open client connections.
pub const MAX_CONNECTIONS_DEFAULT: usize = 10_000;

/// Ceiling of `STAMPEDE_SCRIPT_INFLIGHT`, calls in flight per queue.
pub const SCRIPT_INFLIGHT_MAX: usize = 16;

/// Default of `STAMPEDE_QUEUE_DEADLINE_MS`: a request that waited longer than
/// this in an executor queue is answered 503 `OVERLOADED` and never sent to
/// Redis. Normal waits are one call or two (a few ms; tens at the p99 on a
/// busy 2-core machine), and a flash sale's opening burst of a few thousand
/// requests clears in well under half a second, so admitted traffic is never
/// shed. Past it the engine is behind: a request would wait longer than a
/// person notices, and holding it only makes every later one slower. Shedding
/// keeps what is admitted fast and tells the rest to come back (`Retry-After:
/// 1`). Far below the Redis command timeout and clients' own timeouts.
pub const QUEUE_DEADLINE_DEFAULT: Duration = Duration::from_millis(500);

/// Connections being turned away at the connection bound at once. Each gets
/// a canned 503 and a short lingering close (so the client reads the answer
/// instead of a reset); beyond this many, accepting pauses and the kernel's
/// backlog holds the rest.
pub const CONNECTIONS_REJECTING_MAX: usize = 256;

/// How long a turned-away connection may take to read its 503 and close, and
/// the most bytes of its request read and discarded meanwhile.
pub const CONNECTION_REJECT_LINGER: Duration = Duration::from_millis(500);
pub const CONNECTION_REJECT_DRAIN_BYTES_MAX: usize = 64 * 1024;

/// Refused checkout attempts (`ITEM_SOLD`, `USER_LIMIT_REACHED`, …) are
/// logged in the outbox like every attempt, but only while a shard's backlog
/// is below this fraction of `STAMPEDE_OUTBOX_MAX_EVENTS` (1/4): a flood of
/// refused attempts from random user ids while Postgres is away can then take
/// at most a quarter of the bound, and purchases, orders, wallet entries and
/// issued codes keep the rest. Beyond it a refused attempt is answered 503
/// `OUTBOX_FULL`, so every answered attempt stays in the attempt log.
pub const OUTBOX_REFUSED_ATTEMPTS_SHARE_DIVISOR: u64 = 4;

/// Longest the flusher backs off between retries while Postgres is down.
pub const FLUSH_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// First back-off after a failed flush; doubles up to the maximum.
pub const FLUSH_RETRY_BACKOFF_MIN: Duration = Duration::from_millis(50);

/// Every Postgres statement the flusher runs must finish within this.
pub const POSTGRES_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Times an event must fail alone, with a data error, before the flusher sets
/// it aside as a dead letter. More than one, so that a fault that only looks
/// like the event's (a row another writer is about to fix, an error class we
/// misjudge) gets the flush back-off between tries to clear: 5 tries span
/// about 0.75 s of back-off (50 + 100 + 200 + 400 ms) plus the writes. Few,
/// because the event's whole shard waits meanwhile.
pub const DEAD_LETTER_AFTER_ATTEMPTS: u32 = 5;

/// Longest error text (and kind) a dead letter stores: a Postgres message or
/// a decoding error is far shorter; an injected kind could be anything. The
/// raw fields are kept whole: they are the event.
pub const DEAD_LETTER_TEXT_BYTES_MAX: usize = 4_096;

/// Default and largest page of `GET /admin/dead-letters`: each row carries
/// the event's raw fields (a few hundred bytes).
pub const DEAD_LETTERS_PAGE_DEFAULT: i64 = 50;
pub const DEAD_LETTERS_PAGE_MAX: i64 = 500;

/// How often each engine counts unresolved dead letters for
/// `stampede_dead_letters_unresolved` (an index-only count of a partial
/// index that is empty when all is well).
pub const DEAD_LETTER_GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// Default of `STAMPEDE_REDIS_COMMAND_TIMEOUT_MS`: how long a Redis command
/// may wait for its reply (including a reconnect) before the request fails
/// with 503 instead of hanging.
pub const REDIS_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

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

/// Listen backlog. A flash sale opens ~1000 connections at once; tokio's
/// default (128) drops SYNs, which clients retry after ~200 ms.
pub const LISTEN_BACKLOG: u32 = 4096;

/// How often metrics upkeep runs (histogram rotation in the exporter).
pub const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// How often the outbox backlog gauge is refreshed when the flusher is idle.
pub const BACKLOG_GAUGE_INTERVAL: Duration = Duration::from_secs(1);

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

// ---- orders (src/orders/) ----

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

/// Longest `Idempotency-Key`, as the issue states (255 printable ASCII).
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;

/// Default and ceiling of `STAMPEDE_IDEMPOTENCY_TTL_SECS`: how long a key's
/// first answer is kept for replay. Each key is a small Redis hash (~300 B).
pub const IDEMPOTENCY_TTL_SECS_DEFAULT: u64 = 86_400;
pub const IDEMPOTENCY_TTL_SECS_MAX: u64 = 7 * 86_400;

/// How often Redis and Postgres are probed for `stampede_dependency_up`
/// (one PING and one `SELECT 1` a second: nothing next to the traffic).
pub const DEPENDENCY_PROBE_INTERVAL: Duration = Duration::from_secs(1);

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
// The order id's last byte carries its shard (src/orders/domain.rs).
const _: () = assert!(256 % OUTBOX_SHARDS == 0);
// Every order script appends at most one event per request.
const _: () = assert!(HOLDS_EXPIRED_PER_PASS_MAX <= SCRIPT_QUEUE_DEPTH_DEFAULT);
// ---- Wallet (src/wallet/) ----

/// Longest player, reference or bonus id. Each reference is kept in Redis
/// for ever (exactly once, however late the repeat), so its length is
/// memory: ~100-160 bytes per UUID reference, see ARCHITECTURE.md.
pub const WALLET_ID_BYTES_MAX: usize = 64;

/// Longest game category (`slots`, `table`, `live`…).
pub const WALLET_GAME_BYTES_MAX: usize = 32;

/// Largest amount of one transaction or bonus, in minor units (10^12 cents
/// is ten billion euros).
pub const WALLET_AMOUNT_MINOR_MAX: i64 = 1_000_000_000_000;

/// Largest balance (cash + bonus) an account may reach; a credit beyond it
/// is refused. Lua holds numbers as doubles, exact only below 2^53 (~9×10^15).
pub const WALLET_BALANCE_MINOR_MAX: i64 = 1_000_000_000_000_000;

/// Wagering multiplier bounds and default (the 1..=100, 10).
pub const BONUS_WAGERING_MULTIPLIER_MAX: i64 = 100;
pub const BONUS_WAGERING_MULTIPLIER_DEFAULT: i64 = 10;

/// Longest bonus lifetime: a year.
pub const BONUS_EXPIRES_IN_SECS_MAX: i64 = 365 * 24 * 3600;

/// Games listed in one bonus's contributions; each is read by every bet.
pub const BONUS_CONTRIBUTION_GAMES_MAX: usize = 16;

/// Events kept per player stream for `Last-Event-ID` resumption (`XADD
/// MAXLEN ~`, so a little more). Measured ~315 bytes each: ~320 KB per
/// active player at most; streams of idle players expire after the retention
/// below.
pub const WALLET_EVENTS_PER_PLAYER_MAX: u64 = 1_000;

/// A player's event stream expires this long after its last event.
pub const WALLET_EVENTS_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Entries kept in a shard's notify stream (one per script call, holding
/// that call's events: ~300 bytes each, so a few KiB a call). Only live
/// fan-out readers use it, which read up to `WALLET_NOTIFY_READ_COUNT`
/// entries at a time; a reader that gets a full page may have been trimmed
/// past, and resyncs its streams from their players' streams.
pub const WALLET_NOTIFY_STREAM_MAX: u64 = 1_000;
pub const WALLET_NOTIFY_READ_COUNT: u64 = 500;

/// Events waiting for one stream's client; beyond it, the stream resyncs
/// from the player's stream instead of queueing more.
pub const WALLET_SSE_INBOX: usize = 256;

/// How long the fan-out task's `XREAD BLOCK` waits before it checks for
/// shutdown. Below the Redis command timeout.
pub const WALLET_NOTIFY_BLOCK: Duration = Duration::from_millis(1_000);

/// How long a fan-out task waits after a failed read before the next: it
/// retries for as long as the engine runs (it holds no client's slot), and
/// this keeps a Redis outage from turning it into a busy loop.
pub const WALLET_FANOUT_RETRY_DELAY: Duration = Duration::from_millis(200);

/// Default and ceiling of `STAMPEDE_SSE_STREAMS_MAX`, the open event
/// streams per engine (503 beyond). Each costs a connection slot and a few
/// KiB; the default leaves the connection bound room for requests.
pub const WALLET_SSE_STREAMS_DEFAULT: usize = 5_000;
pub const WALLET_SSE_STREAMS_CEILING: usize = 100_000;

/// A heartbeat comment on an idle event stream: keeps proxies from closing
/// it and finds clients that left.
pub const WALLET_SSE_HEARTBEAT: Duration = Duration::from_secs(15);

/// Events one stream reads from Redis per `XRANGE`.
pub const WALLET_SSE_READ_BATCH: usize = 100;

/// Reads of the player's stream one event stream tries in a row before it
/// ends (each bounded by `REDIS_COMMAND_TIMEOUT`, with
/// `WALLET_SSE_READ_RETRY_DELAY` between). Three cover a reconnect of the
/// pool; past them Redis is away, and a stream that waits on it only holds
/// a `STAMPEDE_SSE_STREAMS_MAX` slot: the client (told `retry: 1000`)
/// reconnects with `Last-Event-ID` and misses nothing.
pub const WALLET_SSE_READ_ATTEMPTS_MAX: u32 = 3;
pub const WALLET_SSE_READ_RETRY_DELAY: Duration = Duration::from_millis(200);

/// How often the bonus expiry task looks for due bonuses, and how many it
/// expires per shard per pass (the rest wait for the next pass; a bet
/// expires a due bonus itself anyway).
pub const WALLET_EXPIRY_TICK: Duration = Duration::from_millis(100);
pub const WALLET_EXPIRY_BATCH: usize = 256;

/// Default and ceiling of `limit` on the transaction history.
pub const WALLET_HISTORY_LIMIT_DEFAULT: i64 = 50;
pub const WALLET_HISTORY_LIMIT_MAX: i64 = 500;

/// Most outbox events one wallet request appends: an expiry settled first
/// (entry + state), then a bet (entry + state) that completes the bonus
/// (entry + state).
pub const WALLET_EVENTS_PER_REQUEST_MAX: usize = 6;
// ---- Settlement jobs ----

/// Longest settlement range, in days (inclusive): a leap year. Bounds a
/// job's plan (a chunk per day at least) and its work.
pub const SETTLEMENT_RANGE_DAYS_MAX: i64 = 366;

/// Ceiling for `STAMPEDE_SETTLEMENT_WORKERS`: each running job holds up to
/// `STAMPEDE_SETTLEMENT_CHUNKS_IN_FLIGHT` Postgres connections plus one for
/// its heartbeat, out of `STAMPEDE_PG_POOL`.
pub const SETTLEMENT_WORKERS_MAX: usize = 16;

/// Default and ceiling for `STAMPEDE_SETTLEMENT_BATCH_ROWS`, about how many
/// transactions one chunk (one transaction) settles. 10,000 is the spec's
/// BATCH_SIZE; a chunk of that size takes tens of milliseconds, which bounds
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

/// Longest `Idempotency-Key` accepted.
pub const SETTLEMENT_IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

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

const _: () = assert!(CHECKOUT_CODE_RANDOM_BYTES * 2 + 21 <= CHECKOUT_CODE_BYTES_MAX);
const _: () = assert!(FLUSH_BATCH_ROWS_MAX < 8_000);
const _: () = assert!(2 + 4 * SCRIPT_BATCH_REQUESTS_MAX < 8_000);
const _: () = assert!(SCRIPT_BATCH_REQUESTS_MAX <= FLUSH_BATCH_ROWS_MAX);
const _: () = assert!(REQUEST_HEAD_BYTES_MAX >= 8192 && REQUEST_HEAD_BYTES_MAX > REQUEST_URI_BYTES_MAX);
const _: () = assert!(FLUSH_RETRY_BACKOFF_MIN.as_millis() < FLUSH_RETRY_BACKOFF_MAX.as_millis());
const _: () = assert!(DEAD_LETTER_AFTER_ATTEMPTS >= 1);
const _: () = assert!(DEAD_LETTERS_PAGE_DEFAULT <= DEAD_LETTERS_PAGE_MAX);
const _: () = assert!(INGEST_BATCH_ROWS_DEFAULT <= INGEST_BATCH_ROWS_CEILING);
const _: () = assert!(INGEST_UPLOAD_BYTES_DEFAULT <= INGEST_UPLOAD_BYTES_CEILING);
const _: () = assert!(2 + 2 * WALLET_EVENTS_PER_REQUEST_MAX * SCRIPT_BATCH_REQUESTS_MAX < 8_000);
const _: () = assert!(WALLET_AMOUNT_MINOR_MAX * BONUS_WAGERING_MULTIPLIER_MAX < WALLET_BALANCE_MINOR_MAX);
const _: () = assert!(WALLET_BALANCE_MINOR_MAX < (1 << 53));
// wallet_apply.lua: a credit is added to the balance before the bound is
// checked; a bonus's wagering requirement is its amount times the
// multiplier; a bet's contribution is its amount times a percentage.
const _: () = assert!(WALLET_BALANCE_MINOR_MAX + WALLET_AMOUNT_MINOR_MAX < (1 << 53));
const _: () = assert!(WALLET_AMOUNT_MINOR_MAX * BONUS_WAGERING_MULTIPLIER_MAX < (1 << 53));
const _: () = assert!(WALLET_AMOUNT_MINOR_MAX * 100 < (1 << 53));
const _: () = assert!(WALLET_NOTIFY_BLOCK.as_millis() < REDIS_COMMAND_TIMEOUT.as_millis());
const _: () = assert!(WALLET_SSE_STREAMS_DEFAULT <= WALLET_SSE_STREAMS_CEILING);
const _: () = assert!(WALLET_HISTORY_LIMIT_DEFAULT <= WALLET_HISTORY_LIMIT_MAX);
const _: () = assert!(WALLET_NOTIFY_READ_COUNT < WALLET_NOTIFY_STREAM_MAX);
const _: () = assert!(SETTLEMENT_BATCH_ROWS_DEFAULT <= SETTLEMENT_BATCH_ROWS_CEILING);
const _: () = assert!(SETTLEMENT_HEARTBEAT_INTERVAL.as_millis() * 2 < SETTLEMENT_LEASE_MIN.as_millis());
const _: () = assert!(SETTLEMENT_HEARTBEAT_INTERVAL.as_millis() < SETTLEMENT_CANCEL_WAIT.as_millis());
// OVERLOADED is reachable with the defaults: the connections can fill a queue
// even while every call in flight carries a full batch.
const _: () =
    assert!(SCRIPT_QUEUE_DEPTH_DEFAULT + SCRIPT_INFLIGHT_MAX * SCRIPT_BATCH_REQUESTS_MAX < MAX_CONNECTIONS_DEFAULT);
const _: () = assert!(SCRIPT_QUEUE_DEPTH_DEFAULT <= MAX_CONNECTIONS_DEFAULT / 2);
// A request shed at the deadline is answered before a Redis call could
// have failed it: shedding is the faster answer.
const _: () = assert!(QUEUE_DEADLINE_DEFAULT.as_millis() < REDIS_COMMAND_TIMEOUT.as_millis());
const _: () = assert!(WALLET_EXPIRY_BATCH <= SCRIPT_QUEUE_DEPTH_DEFAULT);
const _: () = assert!(OUTBOX_REFUSED_ATTEMPTS_SHARE_DIVISOR > 1);
