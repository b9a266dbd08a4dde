//! Which feature's sink writes which outbox event kind: the write-behind
//! counterpart of the router. A new feature adds its sink here.

use sqlx::PgConnection;

use super::{OutboxEvent, SinkError};
use crate::sale;

/// Writes one batch inside the caller's transaction.
pub async fn write_batch(tx: &mut PgConnection, batch: &[OutboxEvent]) -> Result<(), SinkError> {
    let mut sale_events = Vec::new();
    for event in batch {
        match event.kind() {
            // Entries deleted while pending carry no fields; nothing to write.
            "" => {}
            kind if sale::sink::KINDS.contains(&kind) => sale_events.push(event),
            kind => return Err(SinkError::UnknownKind(kind.to_owned())),
        }
    }
    if !sale_events.is_empty() {
        sale::sink::write(tx, &sale_events).await?;
    }
    Ok(())
}
