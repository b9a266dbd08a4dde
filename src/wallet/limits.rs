//! The wallet's bounds, each named with its unit and the reason for its value.
//! The shared bounds are in `crate::limits`; the compile-time checks at the
//! end relate these bounds to each other and to the shared ones they rest on.

use std::time::Duration;

use crate::limits::{REDIS_COMMAND_TIMEOUT, SCRIPT_BATCH_REQUESTS_MAX, SCRIPT_QUEUE_DEPTH_DEFAULT};

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

/// Wagering multiplier bounds and default: 1..=100, 10 when not given. The
/// ceiling keeps a requirement (amount × multiplier) below 2^53, exact in
/// Lua (checked below).
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
const _: () = assert!(WALLET_EXPIRY_BATCH <= SCRIPT_QUEUE_DEPTH_DEFAULT);
