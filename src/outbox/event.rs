use std::borrow::Cow;
use std::str::FromStr;

use fred::types::Value;

use crate::keyspace::Shard;
use crate::scripts::value_text;

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

/// The separator of an event's values in a batched entry (ASCII unit
/// separator): ids and codes may not contain control characters, so it never
/// occurs inside a value.
pub const VALUE_SEPARATOR: char = '\u{1f}';

/// An event kind a feature appends to the outbox, and the names of its values
/// in the order its scripts write them.
#[derive(Debug, Clone, Copy)]
pub struct EventKind {
    pub name: &'static str,
    pub fields: &'static [&'static str],
}

/// One event as the sinks see it. Its `event_id` is unique for the life of
/// the stream and is the idempotency key in Postgres: `<shard>-<entry id>-<n>`
/// for the n-th event of a batched entry (`<shard>-<entry id>` for an entry
/// written before batching, which held one event).
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    event_id: String,
    kind: String,
    fields: Vec<(&'static str, String)>,
}

impl OutboxEvent {
    pub fn new(event_id: String, kind: String, fields: Vec<(&'static str, String)>) -> Self {
        Self { event_id, kind, fields }
    }

    pub fn event_id(&self) -> &str {
        &self.event_id
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    fn lookup(&self, field: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| *k == field).map(|(_, v)| v.as_str())
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

/// One stream entry: the events one script call appended.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub entry_id: String,
    pub events: Vec<OutboxEvent>,
}

/// Raw stream entries, before their events are decoded.
pub struct RawEntry {
    pub entry_id: String,
    /// `None` for an entry deleted while pending: acked, nothing to write.
    pub fields: Option<Vec<(String, String)>>,
}

/// Decodes an XREADGROUP reply (RESP2: `[[stream, [[id, [k, v, ...]], ...]]]`,
/// or nil when a blocking read timed out).
pub fn decode_read_reply(reply: Value) -> Result<Vec<RawEntry>, String> {
    let streams = match reply {
        Value::Null => return Ok(Vec::new()),
        Value::Array(streams) => streams,
        other => return Err(format!("unexpected XREADGROUP reply {other:?}")),
    };
    let mut entries_out = Vec::new();
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
            let entry_id = parts
                .pop()
                .as_ref()
                .and_then(value_text)
                .map(Cow::into_owned)
                .ok_or("entry id is not a string")?;
            let fields = match fields {
                Value::Null => None,
                Value::Array(flat) => Some(pairs(flat)?),
                other => return Err(format!("entry fields {other:?}")),
            };
            entries_out.push(RawEntry { entry_id, fields });
        }
    }
    Ok(entries_out)
}

/// Turns a raw entry into its events. A batched entry holds `kind, values`
/// pairs; an entry written before batching holds one event as named fields,
/// starting with `kind`, and keeps its old event id so a replay stays
/// idempotent across the upgrade.
pub fn decode_entry(
    shard: Shard,
    raw: RawEntry,
    kind_of: impl Fn(&str) -> Option<EventKind>,
) -> Result<OutboxEntry, SinkError> {
    let Some(fields) = raw.fields else {
        return Ok(OutboxEntry {
            entry_id: raw.entry_id,
            events: Vec::new(),
        });
    };
    let base = format!("{}-{}", shard.index(), raw.entry_id);
    let legacy = fields.first().is_some_and(|(k, _)| k == "kind");
    let mut events = Vec::new();
    if legacy {
        let kind_name = fields[0].1.clone();
        let kind = kind_of(&kind_name).ok_or_else(|| SinkError::UnknownKind(kind_name.clone()))?;
        let named = kind
            .fields
            .iter()
            .filter_map(|name| fields.iter().find(|(k, _)| k == name).map(|(_, v)| (*name, v.clone())))
            .collect();
        events.push(OutboxEvent::new(base, kind_name, named));
    } else {
        for (index, (kind_name, values)) in fields.into_iter().enumerate() {
            let kind = kind_of(&kind_name).ok_or_else(|| SinkError::UnknownKind(kind_name.clone()))?;
            let event_id = format!("{base}-{index}");
            let values: Vec<&str> = values.split(VALUE_SEPARATOR).collect();
            if values.len() != kind.fields.len() {
                return Err(SinkError::Malformed {
                    event_id,
                    field: "values",
                    problem: "has another number of values than its kind declares",
                });
            }
            let named = kind
                .fields
                .iter()
                .copied()
                .zip(values.into_iter().map(str::to_owned))
                .collect();
            events.push(OutboxEvent::new(event_id, kind_name, named));
        }
    }
    Ok(OutboxEntry {
        entry_id: raw.entry_id,
        events,
    })
}

fn pairs(flat: Vec<Value>) -> Result<Vec<(String, String)>, String> {
    if !flat.len().is_multiple_of(2) {
        return Err("odd number of field values".into());
    }
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let k = value_text(&k).ok_or("field name is not a string")?.into_owned();
        let v = value_text(&v).ok_or("field value is not a string")?.into_owned();
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

    const PURCHASE: EventKind = EventKind {
        name: "purchase",
        fields: &["sale", "user"],
    };

    fn kinds(name: &str) -> Option<EventKind> {
        (name == "purchase").then_some(PURCHASE)
    }

    #[test]
    fn decodes_batched_legacy_and_deleted_entries() {
        let reply = Value::Array(vec![Value::Array(vec![
            s("p:{3}:outbox"),
            Value::Array(vec![
                Value::Array(vec![
                    s("5-0"),
                    Value::Array(vec![s("purchase"), s("7\u{1f}u1"), s("purchase"), s("7\u{1f}u2")]),
                ]),
                Value::Array(vec![
                    s("1-0"),
                    Value::Array(vec![s("kind"), s("purchase"), s("sale"), s("7"), s("user"), s("u0")]),
                ]),
                Value::Array(vec![s("2-0"), Value::Null]),
            ]),
        ])]);
        let raw = decode_read_reply(reply).expect("decodes");
        let entries: Vec<OutboxEntry> = raw
            .into_iter()
            .map(|r| decode_entry(Shard::of_sale(3), r, kinds).expect("entry"))
            .collect();
        assert_eq!(entries.len(), 3);
        let batched = &entries[0].events;
        assert_eq!(batched.len(), 2);
        assert_eq!(batched[0].event_id(), "3-5-0-0");
        assert_eq!(batched[1].event_id(), "3-5-0-1");
        assert_eq!(batched[1].text("user").expect("user"), "u2");
        assert_eq!(batched[0].int::<i64>("sale").expect("int"), 7);
        let legacy = &entries[1].events;
        assert_eq!(legacy[0].event_id(), "3-1-0");
        assert_eq!(legacy[0].text("user").expect("user"), "u0");
        assert!(entries[2].events.is_empty());
        assert!(decode_read_reply(Value::Null).expect("nil").is_empty());
    }

    #[test]
    fn a_wrong_number_of_values_or_an_unknown_kind_is_refused() {
        let raw = |fields: Vec<(&str, &str)>| RawEntry {
            entry_id: "9-0".into(),
            fields: Some(fields.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()),
        };
        let shard = Shard::of_sale(0);
        assert!(matches!(
            decode_entry(shard, raw(vec![("purchase", "7")]), kinds),
            Err(SinkError::Malformed { .. })
        ));
        assert!(matches!(
            decode_entry(shard, raw(vec![("refund", "7\u{1f}x")]), kinds),
            Err(SinkError::UnknownKind(_))
        ));
    }
}
