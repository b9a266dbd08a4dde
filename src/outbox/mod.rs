//! The outbox: Redis Streams that every state-changing script appends to, and
//! the flusher that copies them to Postgres (invariants 1 and 2).
//!
//! - `event`: an outbox entry as the sinks see it.
//! - `flusher`: consumer-group reader, batch writer, acknowledger.
//! - `sinks`: which feature's sink writes which event kind.

mod event;
pub mod flusher;
mod sinks;

pub use event::{OutboxEvent, SinkError};
pub use flusher::{FlushError, Flusher};

/// The consumer group every engine reads the outboxes through.
pub const CONSUMER_GROUP: &str = "flusher";
