//! The outbox: Redis Streams that every state-changing script appends to, and
//! the flusher that copies them to Postgres (invariants 1 and 2).
//!
//! - `event`: entries and events as the sinks see them.
//! - `flusher`: consumer-group reader, batch writer, acknowledger; narrows a
//!   batch refused for its data down to the events that fail alone.
//! - `sinks`: the `Sink` trait (and `SinkFn`, the sink a feature builds from
//!   its event kinds and a write function), and the registry that
//!   dispatches each event kind to its sink.
//! - `applied`: the markers that say which entries and events Postgres
//!   already holds, so that each event reaches its sink once.
//! - `dead_letters`: the events set aside, and the functions that list,
//!   count and replay them.

mod applied;
pub mod dead_letters;
mod event;
pub mod flusher;
mod sinks;

pub use event::{EventKind, OutboxEntry, OutboxEvent, SinkError, Undecodable, VALUE_SEPARATOR};
pub use flusher::{FlushError, Flusher};
pub use sinks::{DuplicateKind, Sink, SinkFn, SinkRegistry};

/// The consumer group every engine reads the outboxes through.
pub const CONSUMER_GROUP: &str = "flusher";
