//! Which feature's sink writes which outbox event kind: the write-behind
//! counterpart of the router. A new feature adds its sink here.

use std::collections::HashMap;

use sqlx::PgConnection;

use super::{OutboxEvent, SinkError};
use crate::sale;

/// Writes one batch inside the caller's transaction.
pub async fn write_batch(tx: &mut PgConnection, batch: &[OutboxEvent]) -> Result<(), SinkError> {
    let mut by_feature: HashMap<&'static str, Vec<&OutboxEvent>> = HashMap::new();
    for event in batch {
        // Entries deleted while pending carry no fields; nothing to write.
        if event.kind().is_empty() {
            continue;
        }
        let feature = if sale::sink::KINDS.contains(&event.kind()) {
            "sale"
        } else {
            return Err(SinkError::UnknownKind(event.kind().to_owned()));
        };
        by_feature.entry(feature).or_default().push(event);
    }
    if let Some(events) = by_feature.get("sale") {
        sale::sink::write(tx, events).await?;
    }
    Ok(())
}
