use std::borrow::Cow;
use std::ops::Range;
use std::str::FromStr;

use fred::types::Value;

use crate::redis::keyspace::Shard;
use crate::redis::lua::value_text;

/// Why an event or a batch could not be written. A batch that fails because
/// of Postgres (`!is_data_error()`) stays pending and is retried whole; one
/// that fails because of its events is narrowed down to them (see the
/// flusher).
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

impl SinkError {
    /// Whether the event's own content caused this error, so that writing it
    /// again can only fail again: an event that cannot be decoded or parsed,
    /// or a Postgres error reply about the data (see
    /// [`crate::postgres::is_data_error`]). Everything else (Postgres away,
    /// busy, timed out, shutting down) is a fault of the moment.
    pub fn is_data_error(&self) -> bool {
        match self {
            SinkError::UnknownKind(_) | SinkError::Malformed { .. } => true,
            SinkError::Postgres(e) => crate::postgres::is_data_error(e),
        }
    }
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
    /// The values, joined by [`VALUE_SEPARATOR`] as a batched entry holds
    /// them, kept whole: each field is a span of it, so decoding an event
    /// copies its values once instead of once per field.
    values: String,
    fields: Vec<(&'static str, Range<usize>)>,
    /// Decoded from an entry written before batching (named fields).
    legacy: bool,
}

impl OutboxEvent {
    /// The event as its stream entry held it (see [`Undecodable::fields`]):
    /// what a dead letter keeps, and what [`decode_stored`] reads back. An
    /// older one-event entry's fields are given in its kind's order.
    pub fn raw_fields(&self) -> Vec<String> {
        if self.legacy {
            let mut out = vec!["kind".to_owned(), self.kind.clone()];
            for (name, span) in &self.fields {
                out.push((*name).to_owned());
                out.push(self.values.get(span.clone()).unwrap_or_default().to_owned());
            }
            return out;
        }
        vec![self.kind.clone(), self.values.clone()]
    }

    pub fn event_id(&self) -> &str {
        &self.event_id
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    fn lookup(&self, field: &str) -> Option<&str> {
        let (_, span) = self.fields.iter().find(|(k, _)| *k == field)?;
        self.values.get(span.clone())
    }

    pub fn text(&self, field: &'static str) -> Result<&str, SinkError> {
        self.lookup(field).ok_or_else(|| self.malformed(field, "is missing"))
    }

    pub fn int<T: FromStr>(&self, field: &'static str) -> Result<T, SinkError> {
        self.text(field)?
            .parse()
            .map_err(|_| self.malformed(field, "is not an integer of the expected size"))
    }

    /// A value the scripts leave empty when there is none (a refused
    /// attempt's code, an order's key): `None` then.
    pub fn optional_text(&self, field: &'static str) -> Result<Option<String>, SinkError> {
        let text = self.text(field)?;
        Ok((!text.is_empty()).then(|| text.to_owned()))
    }

    /// An integer the scripts leave empty when there is none (a hold's
    /// expiry): `None` then.
    pub fn optional_int<T: FromStr>(&self, field: &'static str) -> Result<Option<T>, SinkError> {
        if self.text(field)?.is_empty() {
            Ok(None)
        } else {
            self.int(field).map(Some)
        }
    }

    fn malformed(&self, field: &'static str, problem: &'static str) -> SinkError {
        SinkError::Malformed {
            event_id: self.event_id.clone(),
            field,
            problem,
        }
    }
}

/// One stream entry: the events one script call appended, decoded one by
/// one. An event that cannot be decoded (a kind no sink registered, the
/// wrong number of values) is kept raw beside the others, to be set aside
/// without holding them up.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub entry_id: String,
    pub events: Vec<OutboxEvent>,
    pub undecodable: Vec<Undecodable>,
}

impl OutboxEntry {
    /// Every event the entry holds, decoded or not: what the scripts counted
    /// when they appended it, and what its acknowledgement uncounts.
    pub fn event_count(&self) -> usize {
        self.events.len() + self.undecodable.len()
    }
}

/// An event as the stream held it, which could not be decoded.
#[derive(Debug, Clone)]
pub struct Undecodable {
    pub event_id: String,
    /// The kind as written (it may be one no sink knows), or empty.
    pub kind: String,
    /// The raw fields: `[kind, values]` for an event of a batched entry;
    /// every field and value of an older one-event entry.
    pub fields: Vec<String>,
    pub error: String,
}

/// Raw stream entries, before their events are decoded.
pub struct RawEntry {
    pub entry_id: String,
    pub fields: RawFields,
}

pub enum RawFields {
    /// The entry's field-value pairs.
    Pairs(Vec<(String, String)>),
    /// Deleted while pending: acked, nothing to write.
    Deleted,
    /// Not field-value pairs of text: kept as the reply showed it.
    Unreadable { shown: String, error: String },
}

/// Decodes an XREADGROUP reply (RESP2: `[[stream, [[id, [k, v, ...]], ...]]]`,
/// or nil when a blocking read timed out). Only a reply that is not that
/// shape at all, or an entry without an id (which could never be
/// acknowledged), fails the read; an entry whose fields are unreadable is
/// returned as such.
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
                Value::Null => RawFields::Deleted,
                // The entry is shown only when it cannot be read: formatting
                // every entry read cost the flusher a Debug rendering of a
                // whole batch of events each time.
                Value::Array(flat) => match pairs(&flat) {
                    Ok(pairs) => RawFields::Pairs(pairs),
                    Err(error) => RawFields::Unreadable {
                        shown: format!("{flat:?}"),
                        error,
                    },
                },
                other => RawFields::Unreadable {
                    shown: format!("{other:?}"),
                    error: "entry fields are not an array".into(),
                },
            };
            entries_out.push(RawEntry { entry_id, fields });
        }
    }
    Ok(entries_out)
}

/// Turns a raw entry into its events, each decoded on its own. A batched
/// entry holds `kind, values` pairs; an entry written before batching holds
/// one event as named fields, starting with `kind`, and keeps its old event
/// id so a replay stays idempotent across the upgrade.
pub fn decode_entry(shard: Shard, raw: RawEntry, kind_of: impl Fn(&str) -> Option<EventKind>) -> OutboxEntry {
    let mut entry = OutboxEntry {
        entry_id: raw.entry_id,
        events: Vec::new(),
        undecodable: Vec::new(),
    };
    let base = format!("{}-{}", shard.index(), entry.entry_id);
    let fields = match raw.fields {
        RawFields::Deleted => return entry,
        RawFields::Unreadable { shown, error } => {
            entry.undecodable.push(Undecodable {
                event_id: base,
                kind: String::new(),
                fields: vec![shown],
                error,
            });
            return entry;
        }
        RawFields::Pairs(fields) => fields,
    };
    let legacy = fields.first().is_some_and(|(k, _)| k == "kind");
    let mut sorted = |event_id: String, stored: Vec<String>| match decode_stored(event_id.clone(), &stored, &kind_of) {
        Ok(event) => entry.events.push(event),
        Err(e) => entry.undecodable.push(Undecodable {
            event_id,
            kind: stored_kind(&stored).to_owned(),
            fields: stored,
            error: e.to_string(),
        }),
    };
    if legacy {
        sorted(base, fields.into_iter().flat_map(|(k, v)| [k, v]).collect());
    } else {
        for (index, (kind_name, values)) in fields.into_iter().enumerate() {
            sorted(format!("{base}-{index}"), vec![kind_name, values]);
        }
    }
    entry
}

/// The kind named by an event's raw fields (see [`Undecodable::fields`]).
pub fn stored_kind(fields: &[String]) -> &str {
    match fields {
        [first, kind, ..] if first == "kind" => kind,
        [kind, ..] => kind,
        [] => "",
    }
}

/// Decodes one event from its raw fields (see [`Undecodable::fields`]):
/// what the flusher reads, and what a dead letter's replay starts from.
pub fn decode_stored(
    event_id: String,
    fields: &[String],
    kind_of: impl Fn(&str) -> Option<EventKind>,
) -> Result<OutboxEvent, SinkError> {
    match fields {
        [first, kind_name, rest @ ..] if first == "kind" => {
            let kind = kind_of(kind_name).ok_or_else(|| SinkError::UnknownKind(kind_name.clone()))?;
            let pairs: Vec<(&String, &String)> = rest.chunks_exact(2).map(|p| (&p[0], &p[1])).collect();
            // The named fields the kind declares, in its order, joined as a
            // batched entry's values are.
            let mut values = String::new();
            let mut fields = Vec::with_capacity(kind.fields.len());
            for name in kind.fields {
                if let Some((_, value)) = pairs.iter().find(|(k, _)| k == name) {
                    if !fields.is_empty() {
                        values.push(VALUE_SEPARATOR);
                    }
                    let start = values.len();
                    values.push_str(value);
                    fields.push((*name, start..values.len()));
                }
            }
            Ok(OutboxEvent {
                event_id,
                kind: kind_name.clone(),
                values,
                fields,
                legacy: true,
            })
        }
        [kind_name, values] => {
            let kind = kind_of(kind_name).ok_or_else(|| SinkError::UnknownKind(kind_name.clone()))?;
            match spans(values, kind.fields) {
                Some(fields) => Ok(OutboxEvent {
                    event_id,
                    kind: kind_name.clone(),
                    values: values.clone(),
                    fields,
                    legacy: false,
                }),
                None => Err(SinkError::Malformed {
                    event_id,
                    field: "values",
                    problem: "has another number of values than its kind declares",
                }),
            }
        }
        _ => Err(SinkError::Malformed {
            event_id,
            field: "fields",
            problem: "are neither a kind and its values nor named fields",
        }),
    }
}

/// Each of `names`, in order, with its span of the joined `values`; `None`
/// when there are more or fewer values than names.
fn spans(values: &str, names: &'static [&'static str]) -> Option<Vec<(&'static str, Range<usize>)>> {
    let mut fields = Vec::with_capacity(names.len());
    let mut names = names.iter();
    let mut start = 0;
    for (at, _) in values.match_indices(VALUE_SEPARATOR) {
        fields.push((*names.next()?, start..at));
        start = at + VALUE_SEPARATOR.len_utf8();
    }
    fields.push((*names.next()?, start..values.len()));
    names.next().is_none().then_some(fields)
}

fn pairs(flat: &[Value]) -> Result<Vec<(String, String)>, String> {
    if !flat.len().is_multiple_of(2) {
        return Err("odd number of field values".into());
    }
    let mut out = Vec::with_capacity(flat.len() / 2);
    for pair in flat.chunks_exact(2) {
        if let [k, v] = pair {
            let k = value_text(k).ok_or("field name is not a string")?.into_owned();
            let v = value_text(v).ok_or("field value is not a string")?.into_owned();
            out.push((k, v));
        }
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
    use crate::redis::keyspace::Keyspace;

    fn s(x: &str) -> Value {
        Value::from(x)
    }

    const PURCHASE: EventKind = EventKind {
        name: "purchase",
        fields: &["lot", "user"],
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
                    Value::Array(vec![s("kind"), s("purchase"), s("lot"), s("7"), s("user"), s("u0")]),
                ]),
                Value::Array(vec![s("2-0"), Value::Null]),
            ]),
        ])]);
        let raw = decode_read_reply(reply).expect("decodes");
        let entries: Vec<OutboxEntry> = raw
            .into_iter()
            .map(|r| decode_entry(Keyspace::numbered("p", 8).shard_of_number(3), r, kinds))
            .collect();
        assert_eq!(entries.len(), 3);
        assert!(entries.iter().all(|e| e.undecodable.is_empty()));
        let batched = &entries[0].events;
        assert_eq!(batched.len(), 2);
        assert_eq!(batched[0].event_id(), "3-5-0-0");
        assert_eq!(batched[1].event_id(), "3-5-0-1");
        assert_eq!(batched[1].text("user").expect("user"), "u2");
        assert_eq!(batched[0].int::<i64>("lot").expect("int"), 7);
        let legacy = &entries[1].events;
        assert_eq!(legacy[0].event_id(), "3-1-0");
        assert_eq!(legacy[0].text("user").expect("user"), "u0");
        assert!(entries[2].events.is_empty());
        assert_eq!(entries[2].event_count(), 0);
        assert!(decode_read_reply(Value::Null).expect("nil").is_empty());
    }

    /// One bad event is kept raw beside the good ones of its entry; an
    /// unreadable entry does not fail the read of the others.
    #[test]
    fn a_bad_event_is_kept_raw_and_spares_the_others() {
        let reply = Value::Array(vec![Value::Array(vec![
            s("p:{0}:outbox"),
            Value::Array(vec![
                Value::Array(vec![
                    s("9-0"),
                    Value::Array(vec![
                        s("purchase"),
                        s("7\u{1f}u1"),
                        s("purchase"),
                        s("7"),
                        s("refund"),
                        s("7\u{1f}x"),
                        s("purchase"),
                        s("8\u{1f}u2"),
                    ]),
                ]),
                Value::Array(vec![s("9-1"), Value::Array(vec![s("purchase")])]),
                Value::Array(vec![
                    s("9-2"),
                    Value::Array(vec![s("kind"), s("refund"), s("lot"), s("1")]),
                ]),
            ]),
        ])]);
        let entries: Vec<OutboxEntry> = decode_read_reply(reply)
            .expect("the read succeeds")
            .into_iter()
            .map(|r| decode_entry(Keyspace::numbered("p", 8).shard_of_number(0), r, kinds))
            .collect();
        assert_eq!(entries.len(), 3);
        let first = &entries[0];
        assert_eq!(first.event_count(), 4);
        let good: Vec<&str> = first.events.iter().map(OutboxEvent::event_id).collect();
        assert_eq!(good, ["0-9-0-0", "0-9-0-3"]);
        let bad = &first.undecodable;
        assert_eq!(
            (bad[0].event_id.as_str(), bad[0].kind.as_str()),
            ("0-9-0-1", "purchase")
        );
        assert_eq!(bad[0].fields, ["purchase", "7"]);
        assert!(bad[0].error.contains("number of values"), "{}", bad[0].error);
        assert_eq!((bad[1].event_id.as_str(), bad[1].kind.as_str()), ("0-9-0-2", "refund"));
        assert!(bad[1].error.contains("unknown kind"), "{}", bad[1].error);
        // An odd number of fields: the whole entry, raw, under its base id.
        assert!(entries[1].events.is_empty());
        assert_eq!(entries[1].undecodable[0].event_id, "0-9-1");
        // A legacy entry of an unknown kind keeps every field.
        assert_eq!(entries[2].undecodable[0].kind, "refund");
        assert_eq!(entries[2].undecodable[0].fields, ["kind", "refund", "lot", "1"]);
        // What a dead letter keeps of a decoded event is what the stream held.
        assert_eq!(first.events[1].raw_fields(), ["purchase", "8\u{1f}u2"]);
        // What a replay decodes from: the same fields give the same event.
        let again = decode_stored("0-9-0-0".into(), &["purchase".into(), "7\u{1f}u1".into()], kinds).expect("decodes");
        assert_eq!(again.text("user").expect("user"), "u1");
        assert!(matches!(
            decode_stored("x".into(), &["purchase".into()], kinds),
            Err(SinkError::Malformed { .. })
        ));
    }
}
