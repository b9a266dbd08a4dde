//! Inputs parsed at the edge: the job request's dates, job ids, and a bad
//! idempotency key as this feature's error. The handlers and the queue see
//! only these types.

use serde_json::{Map, Value};
use time::Date;
use time::macros::format_description;

use super::SettlementError;
use super::limits::SETTLEMENT_RANGE_DAYS_MAX;
use crate::server::http::InvalidIdempotencyKey;

/// A field of the request body, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    From,
    To,
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Field::From => "from",
            Field::To => "to",
        })
    }
}

/// An inclusive range of UTC days, at most `SETTLEMENT_RANGE_DAYS_MAX` long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    from: Date,
    to: Date,
}

impl DateRange {
    pub fn new(from: Date, to: Date) -> Result<Self, SettlementError> {
        if from > to {
            return Err(SettlementError::FromAfterTo);
        }
        let days = (to - from).whole_days() + 1;
        if days > SETTLEMENT_RANGE_DAYS_MAX {
            return Err(SettlementError::RangeTooLong(days));
        }
        Ok(Self { from, to })
    }

    /// Parses `{"from": "YYYY-MM-DD", "to": "YYYY-MM-DD"}`; any other field
    /// is refused, so a typo (`"form"`) cannot silently settle something else.
    pub fn from_body(body: &Value) -> Result<Self, SettlementError> {
        let object: &Map<String, Value> = body.as_object().ok_or(SettlementError::NotAnObject)?;
        if let Some(unknown) = object.keys().find(|k| *k != "from" && *k != "to") {
            let mut name = unknown.clone();
            name.truncate(64);
            return Err(SettlementError::UnknownField(name));
        }
        let date = |field: Field| -> Result<Date, SettlementError> {
            let value = object
                .get(&field.to_string())
                .ok_or(SettlementError::MissingField(field))?;
            value
                .as_str()
                .and_then(parse_date)
                .ok_or(SettlementError::InvalidDate(field))
        };
        Self::new(date(Field::From)?, date(Field::To)?)
    }

    pub fn from(&self) -> Date {
        self.from
    }

    pub fn to(&self) -> Date {
        self.to
    }

    /// What an idempotent replay must match: the range, canonically written.
    pub fn fingerprint(&self) -> String {
        format!("settlement:{}..{}", self.from, self.to)
    }
}

/// `YYYY-MM-DD`, a real calendar day, nothing around it.
pub fn parse_date(text: &str) -> Option<Date> {
    if text.len() != 10 {
        return None;
    }
    Date::parse(text, format_description!("[year]-[month]-[day]")).ok()
}

/// A job id: a UUID in its canonical lower- or upper-case text form. Anything
/// else cannot name a job, so it is "not found" without a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobId(String);

impl JobId {
    pub fn parse(raw: &str) -> Result<Self, SettlementError> {
        let bytes = raw.as_bytes();
        let shaped = bytes.len() == 36
            && bytes.iter().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => *b == b'-',
                _ => b.is_ascii_hexdigit(),
            });
        if shaped {
            Ok(Self(raw.to_ascii_lowercase()))
        } else {
            Err(SettlementError::JobNotFound)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The toolkit parses the `Idempotency-Key` header; a bad one is this
/// feature's `INVALID_IDEMPOTENCY_KEY`.
impl From<InvalidIdempotencyKey> for SettlementError {
    fn from(_: InvalidIdempotencyKey) -> Self {
        SettlementError::InvalidIdempotencyKey
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn code(result: Result<DateRange, SettlementError>) -> &'static str {
        use crate::server::error::ApiError;
        match result {
            Ok(_) => "OK",
            Err(e) => e.error_code().code,
        }
    }

    #[test]
    fn ranges_are_checked() {
        let range = |body: Value| code(DateRange::from_body(&body));
        assert_eq!(range(json!({"from": "2025-01-01", "to": "2025-01-31"})), "OK");
        assert_eq!(range(json!({"from": "2025-01-01", "to": "2025-01-01"})), "OK");
        // 2024 is a leap year: 366 days is the longest range.
        assert_eq!(range(json!({"from": "2024-01-01", "to": "2024-12-31"})), "OK");
        assert_eq!(
            range(json!({"from": "2024-01-01", "to": "2025-01-01"})),
            "RANGE_TOO_LONG"
        );
        assert_eq!(
            range(json!({"from": "2025-02-01", "to": "2025-01-31"})),
            "FROM_AFTER_TO"
        );
        assert_eq!(range(json!({"from": "2025-02-30", "to": "2025-03-01"})), "INVALID_DATE");
        assert_eq!(range(json!({"from": "2025-1-01", "to": "2025-03-01"})), "INVALID_DATE");
        assert_eq!(
            range(json!({"from": "2025-01-01T00:00:00Z", "to": "2025-03-01"})),
            "INVALID_DATE"
        );
        assert_eq!(range(json!({"from": 20250101, "to": "2025-03-01"})), "INVALID_DATE");
        assert_eq!(range(json!({"from": "2025-01-01"})), "MISSING_FIELD");
        assert_eq!(
            range(json!({"from": "2025-01-01", "to": "2025-01-02", "merchant": 1})),
            "UNKNOWN_FIELD"
        );
        assert_eq!(range(json!(["2025-01-01"])), "INVALID_BODY");
    }

    #[test]
    fn job_ids_are_uuids() {
        assert!(JobId::parse("7d444840-9dc0-11d1-b245-5ffdce74fad2").is_ok());
        assert_eq!(
            JobId::parse("7D444840-9DC0-11D1-B245-5FFDCE74FAD2")
                .map(|id| id.to_string())
                .ok(),
            Some("7d444840-9dc0-11d1-b245-5ffdce74fad2".to_owned())
        );
        for bad in [
            "",
            "job_123",
            "7d444840-9dc0-11d1-b245-5ffdce74fad",
            "7d444840x9dc0-11d1-b245-5ffdce74fad2",
        ] {
            assert!(JobId::parse(bad).is_err(), "{bad}");
        }
    }
}
