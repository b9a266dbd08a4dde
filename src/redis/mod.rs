//! The Redis layer: everything the engine knows about talking to Redis.
//!
//! - `client`: the one builder of every Redis client (a call is sent at most
//!   once, timeouts, reconnect policy).
//! - `settings`: the Redis settings the guarantees rest on, checked at start.
//! - `keyspace`: key names and the shard hash tag every script's keys carry.
//! - `layout`: how many shards and which tag each has, recorded at first
//!   start; on a cluster, consecutive shards on different primaries.
//! - `lua`: Lua scripts embedded from `lua/`, called by EVALSHA with an EVAL
//!   fallback; `ScriptError` and the reply helpers.
//! - `executor`: the batched script executor every hot-path state change goes
//!   through, and the batch protocol its scripts follow.
//! - `wait`: `WAIT` for replicas after each batch call, when asked for.
//! - `due`: the read of what a time-scored sorted set holds due, with which
//!   every periodic pass starts.
//!
//! It is infrastructure: it names no feature.

pub mod client;
pub mod due;
pub mod executor;
pub mod keyspace;
pub mod layout;
pub mod lua;
pub mod settings;
pub mod wait;
