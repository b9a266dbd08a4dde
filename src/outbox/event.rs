use std::str::FromStr;

use fred::types::Value;

use crate::keyspace::Shard;

/// Why a batch could not be written. The batch stays pending and is retried.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("outbox event of unknown kind {0:?}")]
    UnknownKind(String),
    #[error("outbox event {event_id}: field {field:?} {problem}")]
    Malformed {
        event_id: String,
        field: &'static str,
        problem: &'static str,
    },
}

/// One outbox entry. Its `event_id` (`<shard>-<stream entry id>`) is unique
/// for the life of the stream and is the idempotency key in Postgres.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    event_id: String,
    entry_id: String,
    fields: Vec<(String, String)>,
}

impl OutboxEvent {
    pub fn new(shard: Shard, entry_id: String, fields: Vec<(String, String)>) -> Self {
        Self {
            event_id: format!("{}-{entry_id}", shard.index()),
            entry_id,
            fields,
        }
    }

    pub fn event_id(&self) -> &str {
        &self.event_id
    }

    pub fn entry_id(&self) -> &str {
        &self.entry_id
    }

    pub fn kind(&self) -> &str {
        self.lookup("kind").unwrap_or("")
    }

    fn lookup(&self, field: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == field).map(|(_, v)| v.as_str())
    }

    pub fn text(&self, field: &'static str) -> Result<&str, SinkError> {
        self.lookup(field).ok_or_else(|| self.malformed(field, "is missing"))
    }

    pub fn int<T: FromStr>(&self, field: &'static str) -> Result<T, SinkError> {
        self.text(field)?
            .parse()
            .map_err(|_| self.malformed(field, "is not an integer of the expected size"))
    }

    fn malformed(&self, field: &'static str, problem: &'static str) -> SinkError {
        SinkError::Malformed {
            event_id: self.event_id.clone(),
            field,
            problem,
        }
    }
}

/// Decodes an XREADGROUP reply (RESP2: `[[stream, [[id, [k, v, ...]], ...]]]`,
/// or nil when a blocking read timed out). Entries whose fields are nil were
/// deleted while pending; they are returned with no fields so they get acked.
pub fn decode_read_reply(shard: Shard, reply: Value) -> Result<Vec<OutboxEvent>, String> {
    let streams = match reply {
        Value::Null => return Ok(Vec::new()),
        Value::Array(streams) => streams,
        other => return Err(format!("unexpected XREADGROUP reply {other:?}")),
    };
    let mut events = Vec::new();
    for stream in streams {
        let Value::Array(mut pair) = stream else {
            return Err("stream element is not an array".into());
        };
        let Some(Value::Array(entries)) = pair.pop() else {
            return Err("stream element has no entry list".into());
        };
        for entry in entries {
            let Value::Array(mut parts) = entry else {
                return Err("entry is not an array".into());
            };
            if parts.len() != 2 {
                return Err(format!("entry has {} parts, expected 2", parts.len()));
            }
            let fields = parts.pop().unwrap_or(Value::Null);
            let id = parts
                .pop()
                .and_then(|v| v.as_string())
                .ok_or("entry id is not a string")?;
            let fields = match fields {
                Value::Null => Vec::new(),
                Value::Array(flat) => pairs(flat)?,
                other => return Err(format!("entry fields {other:?}")),
            };
            events.push(OutboxEvent::new(shard, id, fields));
        }
    }
    Ok(events)
}

fn pairs(flat: Vec<Value>) -> Result<Vec<(String, String)>, String> {
    if !flat.len().is_multiple_of(2) {
        return Err("odd number of field values".into());
    }
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let k = k.as_string().ok_or("field name is not a string")?;
        let v = v.as_string().ok_or("field value is not a string")?;
        out.push((k, v));
    }
    Ok(out)
}

impl crate::postgres::PostgresCause for SinkError {
    fn postgres_cause(&self) -> Option<&sqlx::Error> {
        match self {
            SinkError::Postgres(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::from(x)
    }

    #[test]
    fn decodes_entries_and_deleted_ones() {
        let reply = Value::Array(vec![Value::Array(vec![
            s("p:{3}:outbox"),
            Value::Array(vec![
                Value::Array(vec![
                    s("1-0"),
                    Value::Array(vec![s("kind"), s("purchase"), s("sale"), s("7")]),
                ]),
                Value::Array(vec![s("2-0"), Value::Null]),
            ]),
        ])]);
        let events = decode_read_reply(Shard::of_sale(3), reply).expect("decodes");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event_id(), "3-1-0");
        assert_eq!(events[0].kind(), "purchase");
        assert_eq!(events[0].int::<i64>("sale").expect("int"), 7);
        assert_eq!(events[1].kind(), "");
        assert!(
            decode_read_reply(Shard::of_sale(0), Value::Null)
                .expect("nil")
                .is_empty()
        );
    }
}
