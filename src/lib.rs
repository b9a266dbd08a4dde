//! stampede: a Redis-first flash-sale engine.
//!
//! # Layout
//!
//! Features, each owning its handlers, script bindings and Postgres sink:
//! - [`sale`]: hourly flash sales, checkout codes, purchases.
//! - [`ingest`]: NDJSON purchase uploads, upserted into Postgres, and the
//!   player loyalty they feed.
//!
//! Shared infrastructure:
//! - [`app`]: start-up and wiring (`App::build`, `run_until_stopped`).
//! - [`server`]: listeners, connection bound, router, HTTP helpers.
//! - [`scripts`]: Lua script loading and EVALSHA with reload.
//! - [`outbox`]: the Redis Stream outboxes and the write-behind flusher.
//! - [`postgres`]: the pool and the batch writer every feature commits through.
//! - [`keyspace`]: Redis key names and hash tags.
//! - [`config`], [`limits`], [`clock`], [`telemetry`], [`error`] (the one
//!   place errors become HTTP), [`ops`] (index, health, metrics).
//!
//! See ARCHITECTURE.md for the invariants and where each is upheld.

pub mod app;
pub mod clock;
pub mod config;
pub mod error;
pub mod ingest;
pub mod keyspace;
pub mod limits;
pub mod ops;
pub mod outbox;
pub mod postgres;
pub mod sale;
pub mod scripts;
pub mod server;
pub mod telemetry;
