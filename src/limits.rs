//! The shared bounds (HTTP, connections, the executor, the outbox and its
//! flusher, Redis, Postgres, dead letters), each named with its unit and the
//! reason for its value. Values that operators may tune live in
//! [`crate::config`] and are checked against the hard ceilings here at
//! start-up. Each feature's own bounds are in its `limits.rs`, with the
//! compile-time checks that relate them to these.

use std::time::Duration;

/// Longest user id accepted (a `user_id`, a `buyer_id`). Bounds the key and
/// field sizes a user can make Redis store, and the columns that hold it.
pub const USER_ID_BYTES_MAX: usize = 64;

/// Largest request body read. The bodies read whole are small JSON objects of
/// a few short fields; 16 KiB leaves room for clients that pad. (A route that
/// streams its upload bounds its body itself.)
pub const REQUEST_BODY_BYTES_MAX: usize = 16 * 1024;

/// Longest `Idempotency-Key`, in bytes, on every route that takes one: the
/// common choice of the IETF draft's implementations (Stripe's too). A key is
/// stored with each answer it guards (a Redis key name, a Postgres column),
/// so it is bounded like any stored input.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;

/// Longest request URI. A query holds two short parameters.
pub const REQUEST_URI_BYTES_MAX: usize = 2 * 1024;

/// Most bytes hyper buffers for a request head (request line and headers);
/// beyond it the connection is closed. Our clients send a short URI and a few
/// headers; 16 KiB leaves room for proxies' headers. hyper's floor is 8 KiB.
pub const REQUEST_HEAD_BYTES_MAX: usize = 16 * 1024;

/// How long a client may take to send a body once its headers arrived.
pub const REQUEST_BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest an event stream (Server-Sent Events) waits for its client
/// to take the next frame. Frames are small and few (an idle stream sends a
/// heartbeat every 15 s), so a client this far behind has stopped reading;
/// ending its stream frees its slot, and it can reconnect (`Last-Event-ID`).
pub const SSE_SEND_STALL_MAX: Duration = Duration::from_secs(30);

/// Default of `STAMPEDE_OUTBOX_SHARDS` on a Redis Cluster: each entity's
/// keys and its outbox live under the hash tag of shard `id % shards` (or a
/// hash of a text id), and the shards spread over the primaries. 8 is also
/// the count of engines that predate the setting, whose keys are adopted
/// where they are. Fixed for a deployment at its first start
/// (`redis::layout`), because changing it moves keys.
pub const OUTBOX_SHARDS_DEFAULT: u64 = 8;

/// Default of `STAMPEDE_OUTBOX_SHARDS` on a standalone Redis, where shards
/// spread nothing: every call pays a fixed cost (the call, its mark, the
/// outbox append, a Postgres transaction), and fewer shards put more
/// requests in each. Measured with `loadtest/run.sh`: 2 shards instead of
/// 8 cut the Redis, engine and Postgres CPU per request wherever requests
/// spread over the shards (loadtest/RESULTS.md); 2 keeps two flusher lanes
/// to Postgres.
pub const OUTBOX_SHARDS_STANDALONE_DEFAULT: u64 = 2;

/// Ceiling of `STAMPEDE_OUTBOX_SHARDS`. Every shard costs each batch script a
/// queue and its workers, the flusher a reader, and each per-shard
/// background pass or reader of the features one call or connection per
/// shard; 1024 is far more than a cluster's primaries need to share the work
/// evenly, and leaves room in ids that carry their shard in two bytes.
pub const OUTBOX_SHARDS_MAX: u64 = 1_024;

/// Most candidate tags tried for one shard when the layout picks tags whose
/// hash slot a given primary serves. A primary holding 1/P of the slots takes
/// about P tries a tag; one holding a single slot of 16,384 about 16,384. A
/// search this long means a primary holds almost no slots: the layout then
/// refuses to start rather than search without end.
pub const LAYOUT_TAG_SEARCH_MAX: u64 = 1_000_000;

/// Times a script call answered `TRYAGAIN` is sent again. Redis answers it,
/// without running the script, while the slot of its keys is being migrated
/// and only some of them have moved; the migration of one slot's keys takes
/// milliseconds, so a few short pauses usually outlast it. Past them the
/// request answers 503 as any failed call does.
pub const REDIS_TRYAGAIN_RETRIES_MAX: u32 = 3;

/// Pause before each resend after `TRYAGAIN`.
pub const REDIS_TRYAGAIN_PAUSE: Duration = Duration::from_millis(20);

/// Times a batch call is sent again after fred failed it without knowing
/// whether it ran: a `MOVED` or `ASK` redirection (it did not: the node
/// refused it) and a connection dropped under it (it may have) end with the
/// same error. The call's mark makes the resend safe: a call that ran
/// answers `SEEN` and runs nothing. Two, so that a call meeting `MOVED` and
/// then `ASK` in one reshard still lands; past them the request answers 503.
pub const REDIS_RESENDS_MAX: u32 = 2;

/// Pause before each such resend: fred has re-read the slot map after
/// `MOVED` already, and restarts a routing task that `ASK` ended in 20 ms.
pub const REDIS_RESEND_PAUSE: Duration = Duration::from_millis(20);

/// How long a batch call's mark lives in Redis, in command timeouts
/// (`STAMPEDE_REDIS_COMMAND_TIMEOUT_MS`): every sending of a call is issued
/// within `REDIS_RESENDS_MAX + 1` timeouts of the first, and a mark must
/// outlive them all, with room for a stalled Redis to run a late one. Ten
/// (20 s by default) is that with margin; at a few thousand calls a second
/// the marks hold a few megabytes.
pub const BATCH_MARK_TTL_TIMEOUTS: u32 = 10;

/// Pauses before a Redis client's routing task, ended by an error, is
/// started again: the first, then doubled per restart in a row up to the
/// last. Short, because while it is down every command of that client
/// fails; bounded, so a setup that ends it at once cannot spin.
pub const REDIS_ROUTER_RESTART_PAUSE_MIN: Duration = Duration::from_millis(20);
pub const REDIS_ROUTER_RESTART_PAUSE_MAX: Duration = Duration::from_secs(2);

/// Default of `STAMPEDE_OUTBOX_MAX_EVENTS`: unflushed events one outbox shard
/// may hold before scripts shed new writes with 503. At ~150 bytes an event
/// this is ~150 MiB of Redis per shard, hours of a burst's traffic while
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
/// of a second of one shard's work at the rates measured in loadtest/RESULTS.md
/// (5,000-15,000 script requests/s), so the queue deadline usually sheds
/// first; a burst on one entity puts all its traffic on one shard, so
/// nearly half the default connection bound may wait on it.
pub const SCRIPT_QUEUE_DEPTH_DEFAULT: usize = 4_096;

/// Default of `STAMPEDE_MAX_CONNECTIONS`: open client connections.
pub const MAX_CONNECTIONS_DEFAULT: usize = 10_000;

/// Ceiling of `STAMPEDE_SCRIPT_INFLIGHT`, calls in flight per queue.
pub const SCRIPT_INFLIGHT_MAX: usize = 16;

/// Default of `STAMPEDE_QUEUE_DEADLINE_MS`: a request that waited longer than
/// this in an executor queue is answered 503 `OVERLOADED` and never sent to
/// Redis. Normal waits are one call or two (a few ms; tens at the p99 on a
/// busy 2-core machine), and an opening burst of a few thousand
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

/// Most replicas `STAMPEDE_REDIS_WAIT_REPLICAS` may ask for. A primary with
/// more replicas than this is unusual, and asking for more than exist makes
/// every state change wait out its timeout and answer 503.
pub const REDIS_WAIT_REPLICAS_MAX: u32 = 5;

/// Default of `STAMPEDE_REDIS_WAIT_TIMEOUT_MS`: a replica on the same network
/// acknowledges within a millisecond or two; one that has not within this is
/// lagging or gone, and the batch answers 503 rather than hold its requests.
pub const REDIS_WAIT_TIMEOUT_DEFAULT: Duration = Duration::from_millis(500);

/// Most `STAMPEDE_REDIS_WAIT_TIMEOUT_MS` may be: the requests of a batch wait
/// for it, holding their connections.
pub const REDIS_WAIT_TIMEOUT_MAX: Duration = Duration::from_secs(10);

/// Listen backlog. A burst opens ~1000 connections at once; tokio's
/// default (128) drops SYNs, which clients retry after ~200 ms.
pub const LISTEN_BACKLOG: u32 = 4096;

/// How often metrics upkeep runs (histogram rotation in the exporter).
pub const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// How often the outbox backlog gauge is refreshed when the flusher is idle.
pub const BACKLOG_GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// How often Redis and Postgres are probed for `stampede_dependency_up`
/// (one PING and one `SELECT 1` a second: nothing next to the traffic).
pub const DEPENDENCY_PROBE_INTERVAL: Duration = Duration::from_secs(1);

const _: () = assert!(FLUSH_BATCH_ROWS_MAX < 8_000);
const _: () = assert!(1 <= OUTBOX_SHARDS_DEFAULT && OUTBOX_SHARDS_DEFAULT <= OUTBOX_SHARDS_MAX);
const _: () = assert!(1 <= OUTBOX_SHARDS_STANDALONE_DEFAULT && OUTBOX_SHARDS_STANDALONE_DEFAULT <= OUTBOX_SHARDS_MAX);
// A TRYAGAIN resend finishes well inside the Redis command timeout.
const _: () = assert!(
    (REDIS_TRYAGAIN_RETRIES_MAX as u128) * REDIS_TRYAGAIN_PAUSE.as_millis() < REDIS_COMMAND_TIMEOUT.as_millis() / 2
);
const _: () = assert!(2 + 4 * SCRIPT_BATCH_REQUESTS_MAX < 8_000);
const _: () = assert!(SCRIPT_BATCH_REQUESTS_MAX <= FLUSH_BATCH_ROWS_MAX);
const _: () = assert!(REQUEST_HEAD_BYTES_MAX >= 8192 && REQUEST_HEAD_BYTES_MAX > REQUEST_URI_BYTES_MAX);
const _: () = assert!(FLUSH_RETRY_BACKOFF_MIN.as_millis() < FLUSH_RETRY_BACKOFF_MAX.as_millis());
const _: () = assert!(DEAD_LETTER_AFTER_ATTEMPTS >= 1);
const _: () = assert!(DEAD_LETTERS_PAGE_DEFAULT <= DEAD_LETTERS_PAGE_MAX);
// OVERLOADED is reachable with the defaults: the connections can fill a queue
// even while every call in flight carries a full batch.
const _: () =
    assert!(SCRIPT_QUEUE_DEPTH_DEFAULT + SCRIPT_INFLIGHT_MAX * SCRIPT_BATCH_REQUESTS_MAX < MAX_CONNECTIONS_DEFAULT);
const _: () = assert!(SCRIPT_QUEUE_DEPTH_DEFAULT <= MAX_CONNECTIONS_DEFAULT / 2);
// A request shed at the deadline is answered before a Redis call could
// have failed it: shedding is the faster answer.
const _: () = assert!(QUEUE_DEADLINE_DEFAULT.as_millis() < REDIS_COMMAND_TIMEOUT.as_millis());
