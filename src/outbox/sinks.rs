//! Which sink writes which outbox event kind: the write-behind counterpart of
//! the router. Features register their sinks at start; this names none.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use sqlx::PgConnection;

use super::{EventKind, OutboxEvent, SinkError};

/// Where a feature's outbox events land in Postgres. `write` runs inside the
/// flusher's transaction and gets each event once: the flusher leaves out
/// the events Postgres already holds (an entry read again after a crash
/// between COMMIT and the acknowledgement), by markers it commits in the
/// same transaction (`outbox::applied`).
pub trait Sink: Send + Sync + 'static {
    fn kinds(&self) -> &'static [EventKind];

    fn write<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [&'a OutboxEvent],
    ) -> BoxFuture<'a, Result<(), SinkError>>;
}

/// A [`Sink`] made of the event kinds it writes and the function that
/// writes a batch of them: what a feature's sink needs, without a type and
/// an impl of its own. `write` gets the flusher's transaction and the events.
pub struct SinkFn<F> {
    kinds: &'static [EventKind],
    write: F,
}

impl<F> SinkFn<F>
where
    F: for<'a> Fn(&'a mut PgConnection, &'a [&'a OutboxEvent]) -> BoxFuture<'a, Result<(), SinkError>>
        + Send
        + Sync
        + 'static,
{
    pub fn new(kinds: &'static [EventKind], write: F) -> Self {
        Self { kinds, write }
    }
}

impl<F> Sink for SinkFn<F>
where
    F: for<'a> Fn(&'a mut PgConnection, &'a [&'a OutboxEvent]) -> BoxFuture<'a, Result<(), SinkError>>
        + Send
        + Sync
        + 'static,
{
    fn kinds(&self) -> &'static [EventKind] {
        self.kinds
    }

    fn write<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [&'a OutboxEvent],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        (self.write)(tx, events)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("event kind {0:?} is registered by two sinks")]
pub struct DuplicateKind(&'static str);

#[derive(Default, Clone)]
pub struct SinkRegistry {
    sinks: Vec<Arc<dyn Sink>>,
    kinds: HashMap<&'static str, (usize, EventKind)>,
}

impl SinkRegistry {
    pub fn register(&mut self, sink: Arc<dyn Sink>) -> Result<(), DuplicateKind> {
        let index = self.sinks.len();
        for kind in sink.kinds() {
            if self.kinds.insert(kind.name, (index, *kind)).is_some() {
                return Err(DuplicateKind(kind.name));
            }
        }
        self.sinks.push(sink);
        Ok(())
    }

    pub fn kind(&self, name: &str) -> Option<EventKind> {
        self.kinds.get(name).map(|(_, kind)| *kind)
    }

    /// Writes one batch inside the caller's transaction: each sink gets its
    /// events in one call, in the order the sinks were registered.
    pub async fn write_events(&self, tx: &mut PgConnection, batch: &[&OutboxEvent]) -> Result<(), SinkError> {
        let mut per_sink: Vec<Vec<&OutboxEvent>> = vec![Vec::new(); self.sinks.len()];
        for &event in batch {
            let (index, _) = self
                .kinds
                .get(event.kind())
                .ok_or_else(|| SinkError::UnknownKind(event.kind().to_owned()))?;
            per_sink[*index].push(event);
        }
        for (sink, events) in self.sinks.iter().zip(&per_sink) {
            if !events.is_empty() {
                sink.write(tx, events).await?;
            }
        }
        Ok(())
    }
}
