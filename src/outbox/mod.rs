//! The outbox: Redis Streams that every state-changing script appends to, and
//! the flusher that copies them to Postgres (invariants 1 and 2).
//!
//! - `event`: entries and events as the sinks see them.
//! - `flusher`: consumer-group reader, batch writer, acknowledger.
//! - `sinks`: the `Sink` trait features implement, and the registry that
//!   dispatches each event kind to its sink.

mod event;
pub mod flusher;
mod sinks;

pub use event::{EventKind, OutboxEntry, OutboxEvent, SinkError, VALUE_SEPARATOR};
pub use flusher::{FlushError, Flusher};
pub use sinks::{DuplicateKind, Sink, SinkRegistry};

/// The consumer group every engine reads the outboxes through.
pub const CONSUMER_GROUP: &str = "flusher";
