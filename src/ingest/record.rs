//! One purchase line of an NDJSON upload, and the one place it is validated.
//!
//! A line is parsed in two steps: serde splits the object into raw values
//! without interpreting them, then each field is checked by its own rule. The
//! split step lets every rule report its own stable code (a mistyped field, a
//! bad timestamp and a negative price are different mistakes) instead of one
//! opaque "invalid JSON".

use std::borrow::Cow;
use std::fmt;

use iso_currency::Currency;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::limits::{INGEST_ID_BYTES_MAX, INGEST_NAME_BYTES_MAX, INGEST_PRICE_MINOR_MAX};

/// A validated purchase, ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchaseRecord {
    pub transaction_id: String,
    pub player_id: String,
    pub platform: Platform,
    pub item_id: String,
    pub item_name: String,
    pub item_type: ItemType,
    /// Price in the currency's minor unit (cents for USD, yen for JPY).
    pub price_minor: i64,
    /// ISO 4217 alphabetic code.
    pub currency: &'static str,
    /// Truncated to microseconds, the precision Postgres keeps, so that a
    /// re-sent line compares equal to what was stored.
    pub purchased_at: OffsetDateTime,
    /// The line's unknown top-level fields as a JSON object, kept verbatim.
    pub extras: Option<String>,
}

/// Why a line was rejected. The code is stable; clients switch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineErrorCode {
    LineTooLong,
    InvalidUtf8,
    InvalidJson,
    NotAnObject,
    DuplicateField,
    MissingField,
    InvalidFieldType,
    InvalidField,
    UnknownPlatform,
    UnknownItemType,
    InvalidPrice,
    NegativePrice,
    UnknownCurrency,
    InvalidTimestamp,
}

impl LineErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LineTooLong => "LINE_TOO_LONG",
            Self::InvalidUtf8 => "INVALID_UTF8",
            Self::InvalidJson => "INVALID_JSON",
            Self::NotAnObject => "NOT_AN_OBJECT",
            Self::DuplicateField => "DUPLICATE_FIELD",
            Self::MissingField => "MISSING_FIELD",
            Self::InvalidFieldType => "INVALID_FIELD_TYPE",
            Self::InvalidField => "INVALID_FIELD",
            Self::UnknownPlatform => "UNKNOWN_PLATFORM",
            Self::UnknownItemType => "UNKNOWN_ITEM_TYPE",
            Self::InvalidPrice => "INVALID_PRICE",
            Self::NegativePrice => "NEGATIVE_PRICE",
            Self::UnknownCurrency => "UNKNOWN_CURRENCY",
            Self::InvalidTimestamp => "INVALID_TIMESTAMP",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LineError {
    pub code: LineErrorCode,
    pub message: String,
}

impl LineError {
    pub fn new(code: LineErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn too_long(bytes_max: usize) -> Self {
        Self::new(LineErrorCode::LineTooLong, format!("line exceeds {bytes_max} bytes"))
    }
}

macro_rules! closed_set {
    ($(#[$doc:meta])* $name:ident, $unknown:expr, { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Case-insensitive: platforms spell themselves "Steam" or "STEAM".
            fn parse(text: &str) -> Result<Self, LineError> {
                $(if text.eq_ignore_ascii_case($text) { return Ok($name::$variant); })+
                Err(LineError::new($unknown, format!(
                    "unknown {} `{}`; expected one of: {}",
                    stringify!($name).to_lowercase(),
                    truncated(text),
                    [$($text),+].join(", "),
                )))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

closed_set!(
    /// The stores we take purchases from.
    Platform, LineErrorCode::UnknownPlatform, {
        Steam => "steam",
        Epic => "epic",
        Xbox => "xbox",
        PlayStation => "playstation",
        Nintendo => "nintendo",
        Gog => "gog",
        BattleNet => "battlenet",
        Ea => "ea",
        Ubisoft => "ubisoft",
        Itch => "itch",
        AppStore => "appstore",
        GooglePlay => "googleplay",
    }
);

closed_set!(
    /// What was bought.
    ItemType, LineErrorCode::UnknownItemType, {
        Game => "game",
        Dlc => "dlc",
        SeasonPass => "season_pass",
        Currency => "currency",
        Cosmetic => "cosmetic",
        Bundle => "bundle",
        Subscription => "subscription",
        Consumable => "consumable",
    }
);

/// The fields a line must carry, in the order docs/ingest.md documents them.
pub const REQUIRED_FIELDS: [&str; 9] = [
    "transaction_id",
    "player_id",
    "platform",
    "item_id",
    "item_name",
    "item_type",
    "price",
    "currency",
    "purchased_at",
];

/// Parses and validates one line (without its line terminator).
pub fn parse_line(line: &[u8]) -> Result<PurchaseRecord, LineError> {
    let text = std::str::from_utf8(line).map_err(|e| {
        LineError::new(
            LineErrorCode::InvalidUtf8,
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        )
    })?;
    let raw: RawRecord<'_> = serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => LineError::new(LineErrorCode::NotAnObject, "a line must be a JSON object"),
        _ => LineError::new(LineErrorCode::InvalidJson, format!("invalid JSON: {e}")),
    })?;
    raw.validate()
}

/// The object split into raw values, one slot per known field.
struct RawRecord<'a> {
    fields: [Option<&'a RawValue>; REQUIRED_FIELDS.len()],
    extras: Vec<(Cow<'a, str>, &'a RawValue)>,
    duplicate: Option<Cow<'a, str>>,
}

impl<'a> RawRecord<'a> {
    fn validate(self) -> Result<PurchaseRecord, LineError> {
        if let Some(name) = self.duplicate {
            return Err(LineError::new(
                LineErrorCode::DuplicateField,
                format!("field `{}` appears twice", truncated(&name)),
            ));
        }
        let [
            transaction_id,
            player_id,
            platform,
            item_id,
            item_name,
            item_type,
            price,
            currency,
            purchased_at,
        ] = self.fields;
        let currency = parse_currency(required_str("currency", currency)?.as_ref())?;
        Ok(PurchaseRecord {
            transaction_id: identifier("transaction_id", transaction_id)?,
            player_id: identifier("player_id", player_id)?,
            platform: Platform::parse(&required_str("platform", platform)?)?,
            item_id: identifier("item_id", item_id)?,
            item_name: text_field("item_name", item_name, INGEST_NAME_BYTES_MAX)?,
            item_type: ItemType::parse(&required_str("item_type", item_type)?)?,
            price_minor: parse_price(required("price", price)?, currency)?,
            currency: currency.code(),
            purchased_at: parse_timestamp(&required_str("purchased_at", purchased_at)?)?,
            extras: extras_object(&self.extras),
        })
    }
}

fn required<'a>(name: &str, value: Option<&'a RawValue>) -> Result<&'a RawValue, LineError> {
    match value {
        Some(raw) if raw.get() != "null" => Ok(raw),
        Some(_) => Err(LineError::new(LineErrorCode::MissingField, format!("`{name}` is null"))),
        None => Err(LineError::new(
            LineErrorCode::MissingField,
            format!("`{name}` is missing"),
        )),
    }
}

fn required_str<'a>(name: &str, value: Option<&'a RawValue>) -> Result<Cow<'a, str>, LineError> {
    let raw = required(name, value)?;
    if !raw.get().starts_with('"') {
        return Err(LineError::new(
            LineErrorCode::InvalidFieldType,
            format!("`{name}` must be a string"),
        ));
    }
    // A raw value that starts with a quote is a valid JSON string: the
    // splitter checked its syntax already.
    serde_json::from_str::<BorrowedStr<'a>>(raw.get())
        .map(|s| s.0)
        .map_err(|e| LineError::new(LineErrorCode::InvalidJson, format!("`{name}`: {e}")))
}

/// An identifier: non-empty, bounded, no control characters or surrounding
/// whitespace (they would make two ids that print the same compare unequal).
fn identifier(name: &str, value: Option<&RawValue>) -> Result<String, LineError> {
    let text = text_field(name, value, INGEST_ID_BYTES_MAX)?;
    if text.trim() != text {
        return Err(LineError::new(
            LineErrorCode::InvalidField,
            format!("`{name}` has leading or trailing whitespace"),
        ));
    }
    Ok(text)
}

fn text_field(name: &str, value: Option<&RawValue>, bytes_max: usize) -> Result<String, LineError> {
    let text = required_str(name, value)?;
    if text.trim().is_empty() {
        return Err(LineError::new(
            LineErrorCode::InvalidField,
            format!("`{name}` is empty"),
        ));
    }
    if text.len() > bytes_max {
        return Err(LineError::new(
            LineErrorCode::InvalidField,
            format!("`{name}` exceeds {bytes_max} bytes"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(LineError::new(
            LineErrorCode::InvalidField,
            format!("`{name}` contains a control character"),
        ));
    }
    Ok(text.into_owned())
}

fn parse_currency(code: &str) -> Result<Currency, LineError> {
    let unknown = || {
        LineError::new(
            LineErrorCode::UnknownCurrency,
            format!("`currency` `{}` is not an ISO 4217 code", truncated(code)),
        )
    };
    // ISO codes are upper case; "usd" is a common enough slip to accept.
    if code.len() != 3 {
        return Err(unknown());
    }
    let currency = Currency::from_code(&code.to_ascii_uppercase()).ok_or_else(unknown)?;
    // Funds and metals (XAU, XDR) have no minor unit: not a price currency.
    currency.exponent().ok_or_else(unknown)?;
    Ok(currency)
}

/// A price in major units, as a JSON number (`19.99`) or a string
/// (`"19.99"`), converted exactly to minor units: never through a float.
fn parse_price(raw: &RawValue, currency: Currency) -> Result<i64, LineError> {
    let text = raw.get();
    let decimal = if let Some(quoted) = text.strip_prefix('"') {
        quoted.strip_suffix('"').unwrap_or(quoted)
    } else if text.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']) {
        text
    } else {
        return Err(LineError::new(
            LineErrorCode::InvalidFieldType,
            "`price` must be a number or a decimal string",
        ));
    };
    let exponent = usize::from(currency.exponent().unwrap_or(0));
    decimal_to_minor(decimal, exponent).map_err(|code| {
        let message = match code {
            LineErrorCode::NegativePrice => format!("`price` {} is negative", truncated(decimal)),
            _ => format!(
                "`price` `{}` is not a plain decimal with at most {exponent} decimal places for {} and at most {} minor units",
                truncated(decimal),
                currency.code(),
                INGEST_PRICE_MINOR_MAX
            ),
        };
        LineError::new(code, message)
    })
}

/// `"12.30"` with exponent 2 is 1230. Digits past the exponent must be zeros;
/// exponent notation is refused rather than guessed at.
fn decimal_to_minor(decimal: &str, exponent: usize) -> Result<i64, LineErrorCode> {
    let invalid = LineErrorCode::InvalidPrice;
    if let Some(rest) = decimal.strip_prefix('-') {
        // "-0" and "-0.00" are zero written oddly, not a refund.
        return match decimal_to_minor(rest, exponent) {
            Ok(0) => Ok(0),
            Ok(_) => Err(LineErrorCode::NegativePrice),
            Err(e) => Err(e),
        };
    }
    let (whole, fraction) = decimal.split_once('.').unwrap_or((decimal, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) || (decimal.contains('.') && fraction.is_empty())
    {
        return Err(invalid);
    }
    let (kept, dropped) = fraction.split_at(fraction.len().min(exponent));
    if dropped.bytes().any(|b| b != b'0') {
        return Err(invalid);
    }
    let mut minor: i64 = 0;
    let padding = std::iter::repeat_n(b'0', exponent - kept.len());
    for digit in whole.bytes().chain(kept.bytes()).chain(padding) {
        minor = minor
            .checked_mul(10)
            .and_then(|m| m.checked_add(i64::from(digit - b'0')))
            .filter(|m| *m <= INGEST_PRICE_MINOR_MAX)
            .ok_or(invalid)?;
    }
    Ok(minor)
}

fn parse_timestamp(text: &str) -> Result<OffsetDateTime, LineError> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        LineError::new(
            LineErrorCode::InvalidTimestamp,
            format!("`purchased_at` `{}` is not RFC 3339: {e}", truncated(text)),
        )
    })?;
    let micros = parsed.nanosecond() / 1_000 * 1_000;
    parsed.replace_nanosecond(micros).map_err(|e| {
        LineError::new(
            LineErrorCode::InvalidTimestamp,
            format!("`purchased_at` out of range: {e}"),
        )
    })
}

fn extras_object(extras: &[(Cow<'_, str>, &RawValue)]) -> Option<String> {
    if extras.is_empty() {
        return None;
    }
    let mut object = String::from("{");
    for (i, (key, value)) in extras.iter().enumerate() {
        if i > 0 {
            object.push(',');
        }
        // Writing a str into a String cannot fail.
        object.push_str(&serde_json::to_string(key.as_ref()).unwrap_or_default());
        object.push(':');
        object.push_str(value.get());
    }
    object.push('}');
    Some(object)
}

/// Echoing user input in a message: enough to recognise it, never the whole line.
fn truncated(text: &str) -> Cow<'_, str> {
    const SHOWN_CHARS: usize = 40;
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => Cow::Owned(format!("{}…", &text[..cut])),
        None => Cow::Borrowed(text),
    }
}

/// A JSON string, borrowed from the line when it has no escapes.
struct BorrowedStr<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for BorrowedStr<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = BorrowedStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(StrVisitor)
    }
}

impl<'de> de::Deserialize<'de> for RawRecord<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RecordVisitor;
        impl<'de> Visitor<'de> for RecordVisitor {
            type Value = RawRecord<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut record = RawRecord {
                    fields: [None; REQUIRED_FIELDS.len()],
                    extras: Vec::new(),
                    duplicate: None,
                };
                while let Some(BorrowedStr(key)) = map.next_key()? {
                    let value: &'de RawValue = map.next_value()?;
                    match REQUIRED_FIELDS.iter().position(|name| *name == key) {
                        Some(slot) if record.fields[slot].is_some() => record.duplicate = Some(key),
                        Some(slot) => record.fields[slot] = Some(value),
                        None if record.extras.iter().any(|(seen, _)| *seen == key) => record.duplicate = Some(key),
                        None => record.extras.push((key, value)),
                    }
                }
                Ok(record)
            }
        }
        deserializer.deserialize_map(RecordVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"transaction_id":"steam-1","player_id":"p-1","platform":"steam","item_id":"cs2-case","item_name":"Weapon Case","item_type":"cosmetic","price":2.49,"currency":"USD","purchased_at":"2026-11-01T12:00:00Z"}"#;

    const GOOD_FIELDS: [(&str, &str); 9] = [
        ("transaction_id", r#""steam-1""#),
        ("player_id", r#""p-1""#),
        ("platform", r#""steam""#),
        ("item_id", r#""cs2-case""#),
        ("item_name", r#""Weapon Case""#),
        ("item_type", r#""cosmetic""#),
        ("price", "2.49"),
        ("currency", r#""USD""#),
        ("purchased_at", r#""2026-11-01T12:00:00Z""#),
    ];

    /// GOOD with one field's raw JSON text replaced (or dropped for `<absent>`),
    /// written by hand so that raw numbers reach the parser untouched.
    fn with(field: &str, raw: &str) -> String {
        let fields: Vec<String> = GOOD_FIELDS
            .iter()
            .map(|(name, value)| (*name, if *name == field { raw } else { *value }))
            .filter(|(_, value)| *value != "<absent>")
            .map(|(name, value)| format!("\"{name}\":{value}"))
            .collect();
        format!("{{{}}}", fields.join(","))
    }

    #[test]
    fn the_test_line_is_the_good_line() {
        assert_eq!(with("", ""), GOOD);
    }

    #[test]
    fn a_good_line_parses_exactly() {
        let record = parse_line(GOOD.as_bytes()).unwrap();
        assert_eq!(record.transaction_id, "steam-1");
        assert_eq!(record.platform, Platform::Steam);
        assert_eq!(record.item_type, ItemType::Cosmetic);
        assert_eq!(record.price_minor, 249);
        assert_eq!(record.currency, "USD");
        assert_eq!(record.purchased_at.unix_timestamp(), 1_793_534_400);
        assert_eq!(record.extras, None);
    }

    #[test]
    fn prices_convert_exactly_to_minor_units() {
        let cases: &[(&str, &str, Result<i64, LineErrorCode>)] = &[
            ("2.49", "USD", Ok(249)),
            ("\"2.49\"", "USD", Ok(249)),
            ("0.1", "EUR", Ok(10)),
            ("19.990", "EUR", Ok(1999)),
            ("7", "USD", Ok(700)),
            ("0", "USD", Ok(0)),
            ("-0.00", "USD", Ok(0)),
            ("1500", "JPY", Ok(1500)),
            ("1.5", "JPY", Err(LineErrorCode::InvalidPrice)),
            ("1.234", "KWD", Ok(1234)),
            ("1.999", "USD", Err(LineErrorCode::InvalidPrice)),
            ("-1.00", "USD", Err(LineErrorCode::NegativePrice)),
            ("\"-3\"", "USD", Err(LineErrorCode::NegativePrice)),
            ("1e3", "USD", Err(LineErrorCode::InvalidPrice)),
            ("\"abc\"", "USD", Err(LineErrorCode::InvalidPrice)),
            ("\"\"", "USD", Err(LineErrorCode::InvalidPrice)),
            ("\"1.\"", "USD", Err(LineErrorCode::InvalidPrice)),
            ("\".5\"", "USD", Err(LineErrorCode::InvalidPrice)),
            ("\" 1\"", "USD", Err(LineErrorCode::InvalidPrice)),
            ("true", "USD", Err(LineErrorCode::InvalidFieldType)),
            ("[1]", "USD", Err(LineErrorCode::InvalidFieldType)),
            ("99999999999999999999", "USD", Err(LineErrorCode::InvalidPrice)),
        ];
        for (price, currency, expected) in cases {
            let line = with("price", price).replace("\"USD\"", &format!("\"{currency}\""));
            let got = parse_line(line.as_bytes()).map(|r| r.price_minor).map_err(|e| e.code);
            assert_eq!(&got, expected, "price {price} {currency}");
        }
    }

    #[test]
    fn every_rule_has_its_own_code() {
        use LineErrorCode as C;
        let cases: Vec<(String, LineErrorCode)> = vec![
            ("{not json".into(), C::InvalidJson),
            ("".into(), C::InvalidJson),
            (format!("{GOOD} trailing"), C::InvalidJson),
            ("[1,2]".into(), C::NotAnObject),
            ("\"a string\"".into(), C::NotAnObject),
            ("42".into(), C::NotAnObject),
            (
                GOOD.replace("\"platform\":\"steam\"", "\"platform\":\"steam\",\"platform\":\"epic\""),
                C::DuplicateField,
            ),
            (with("transaction_id", "<absent>"), C::MissingField),
            (with("purchased_at", "null"), C::MissingField),
            (with("player_id", "42"), C::InvalidFieldType),
            (with("item_name", "{\"a\":1}"), C::InvalidFieldType),
            (with("transaction_id", "\"\""), C::InvalidField),
            (with("transaction_id", "\" t-1\""), C::InvalidField),
            (with("item_name", "\"a\\u0000b\""), C::InvalidField),
            (
                with("player_id", &format!("\"{}\"", "p".repeat(INGEST_ID_BYTES_MAX + 1))),
                C::InvalidField,
            ),
            (with("platform", "\"dreamcast\""), C::UnknownPlatform),
            (with("item_type", "\"nft\""), C::UnknownItemType),
            (with("currency", "\"XYZ\""), C::UnknownCurrency),
            (with("currency", "\"XAU\""), C::UnknownCurrency),
            (with("currency", "\"dollars\""), C::UnknownCurrency),
            (with("purchased_at", "\"yesterday\""), C::InvalidTimestamp),
            (with("purchased_at", "\"2026-13-01T00:00:00Z\""), C::InvalidTimestamp),
            (with("purchased_at", "\"2026-11-01 12:00:00\""), C::InvalidTimestamp),
            (with("purchased_at", "1793534400"), C::InvalidFieldType),
        ];
        for (line, expected) in cases {
            let got = parse_line(line.as_bytes()).map(|_| ()).map_err(|e| e.code);
            assert_eq!(got, Err(expected), "line {line}");
        }
        let invalid_utf8 = [GOOD.as_bytes(), b"\xff"].concat();
        assert_eq!(parse_line(&invalid_utf8).unwrap_err().code, C::InvalidUtf8);
    }

    #[test]
    fn unknown_fields_are_kept_as_extras() {
        let line = GOOD.replace('}', r#","region":"EU","promo":{"code":"X","pct":10}}"#);
        let record = parse_line(line.as_bytes()).unwrap();
        let extras: serde_json::Value = serde_json::from_str(record.extras.as_deref().unwrap()).unwrap();
        assert_eq!(
            extras,
            serde_json::json!({"region": "EU", "promo": {"code": "X", "pct": 10}})
        );
    }

    #[test]
    fn lenient_spellings_normalise() {
        let line = GOOD
            .replace("\"steam\"", "\"Steam\"")
            .replace("\"USD\"", "\"usd\"")
            .replace("\"cosmetic\"", "\"COSMETIC\"")
            .replace("12:00:00Z", "14:00:00.1234567+02:00");
        let record = parse_line(line.as_bytes()).unwrap();
        assert_eq!(record.platform, Platform::Steam);
        assert_eq!(record.currency, "USD");
        assert_eq!(record.item_type, ItemType::Cosmetic);
        assert_eq!(record.purchased_at.unix_timestamp(), 1_793_534_400);
        assert_eq!(record.purchased_at.nanosecond(), 123_456_000);
    }
}
