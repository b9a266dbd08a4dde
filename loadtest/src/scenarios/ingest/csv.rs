//! NDJSON purchase line -> one CSV row for the `\copy` baseline.
//!
//! The baseline is only fair if `\copy` loads exactly what the engine stores,
//! so this applies the engine's normalisations (see `src/ingest/record.rs`):
//! price as exact minor units of the currency (never through a float),
//! platform and item type lower case, currency upper case, timestamps cut to
//! microseconds (Postgres would round the seventh digit, the engine
//! truncates), unknown top-level fields as one JSON object (NULL when none).
//! The scenario then checks row by row that `copy_baseline` and
//! `platform_purchases` hold the same data.
//!
//! Validation is the engine's job: lines are assumed valid (the run checks
//! that the engine rejected none). What cannot be converted is an error.
//!
//! This deliberately does not reuse the engine's parser, though it splits
//! lines the same way: the row-by-row comparison is only a check if the
//! baseline's conversion is written independently of the code it checks.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Columns of a CSV row, in order: the `\copy` column list.
pub const COLUMNS: [&str; 10] = [
    "transaction_id",
    "player_id",
    "platform",
    "item_id",
    "item_name",
    "item_type",
    "price_minor",
    "currency",
    "purchased_at",
    "extras",
];

/// The fields a line must carry; every other top-level field is an extra.
const KNOWN: [&str; 9] = [
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

/// Decimal places of an ISO 4217 currency's minor unit. Codes not listed use
/// 2, which is what most currencies have.
pub fn currency_exponent(code: &str) -> u32 {
    const ZERO: &[&str] = &[
        "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF",
        "XPF",
    ];
    const THREE: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
    const FOUR: &[&str] = &["CLF", "UYW"];
    if ZERO.contains(&code) {
        0
    } else if THREE.contains(&code) {
        3
    } else if FOUR.contains(&code) {
        4
    } else {
        2
    }
}

/// `"12.30"` with exponent 2 is 1230, exactly. Digits past the exponent must
/// be zeros; exponent notation and negative prices are refused, as the engine
/// does (`-0` is zero).
pub fn decimal_to_minor(decimal: &str, exponent: u32) -> Result<i64, String> {
    let invalid = || format!("price {decimal:?} is not a plain decimal with at most {exponent} decimal places");
    let (negative, digits) = match decimal.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, decimal),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) || (digits.contains('.') && fraction.is_empty())
    {
        return Err(invalid());
    }
    let exponent = exponent as usize;
    let (kept, dropped) = fraction.split_at(fraction.len().min(exponent));
    if dropped.bytes().any(|b| b != b'0') {
        return Err(invalid());
    }
    let padding = std::iter::repeat_n(b'0', exponent - kept.len());
    let mut minor: i64 = 0;
    for digit in whole.bytes().chain(kept.bytes()).chain(padding) {
        minor = minor
            .checked_mul(10)
            .and_then(|m| m.checked_add(i64::from(digit - b'0')))
            .ok_or_else(invalid)?;
    }
    if negative && minor != 0 {
        return Err(format!("price {decimal:?} is negative"));
    }
    Ok(minor)
}

/// An RFC 3339 timestamp with its fraction cut to six digits (microseconds).
pub fn truncate_to_micros(timestamp: &str) -> Cow<'_, str> {
    let Some(dot) = timestamp.find('.') else {
        return Cow::Borrowed(timestamp);
    };
    let digits = timestamp[dot + 1..].bytes().take_while(u8::is_ascii_digit).count();
    if digits <= 6 {
        return Cow::Borrowed(timestamp);
    }
    let mut out = String::with_capacity(timestamp.len());
    out.push_str(&timestamp[..dot + 1 + 6]);
    out.push_str(&timestamp[dot + 1 + digits..]);
    Cow::Owned(out)
}

/// Appends one CSV field. Quoted when it holds a separator, a quote or a line
/// break, and when empty: in Postgres CSV an unquoted empty field is NULL.
pub fn push_field(out: &mut Vec<u8>, value: &str) {
    let needs_quotes = value.is_empty() || value.bytes().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'));
    if !needs_quotes {
        out.extend_from_slice(value.as_bytes());
        return;
    }
    out.push(b'"');
    for b in value.bytes() {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// One line split into raw values: the known fields by slot, the rest in order.
pub struct Purchase<'a> {
    fields: [Option<&'a RawValue>; KNOWN.len()],
    extras: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Purchase<'a> {
    pub fn parse(line: &'a [u8]) -> Result<Purchase<'a>, String> {
        let text = std::str::from_utf8(line).map_err(|e| format!("invalid UTF-8: {e}"))?;
        serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))
    }

    fn raw(&self, name: &str) -> Result<&'a RawValue, String> {
        let value = KNOWN.iter().position(|k| *k == name).and_then(|slot| self.fields[slot]);
        match value {
            Some(raw) if raw.get() != "null" => Ok(raw),
            _ => Err(format!("`{name}` is missing")),
        }
    }

    fn string(&self, name: &str) -> Result<Cow<'a, str>, String> {
        let raw = self.raw(name)?;
        serde_json::from_str::<JsonStr<'a>>(raw.get())
            .map(|s| s.0)
            .map_err(|e| format!("`{name}` is not a string: {e}"))
    }

    pub fn transaction_id(&self) -> Result<Cow<'a, str>, String> {
        self.string("transaction_id")
    }

    /// Price in minor units of `currency` (upper case).
    fn price_minor(&self, currency: &str) -> Result<i64, String> {
        let raw = self.raw("price")?.get();
        let decimal = match raw.strip_prefix('"') {
            Some(quoted) => quoted.strip_suffix('"').unwrap_or(quoted),
            None => raw,
        };
        decimal_to_minor(decimal, currency_exponent(currency))
    }

    /// The unknown fields as one JSON object, values verbatim.
    fn extras_json(&self) -> Option<String> {
        if self.extras.is_empty() {
            return None;
        }
        let mut object = String::from("{");
        for (i, (key, value)) in self.extras.iter().enumerate() {
            if i > 0 {
                object.push(',');
            }
            // Serialising a str cannot fail.
            object.push_str(&serde_json::to_string(key.as_ref()).unwrap_or_default());
            object.push(':');
            object.push_str(value.get());
        }
        object.push('}');
        Some(object)
    }

    /// Appends the row (with its newline) in `COLUMNS` order.
    pub fn write_csv(&self, out: &mut Vec<u8>) -> Result<(), String> {
        let currency = self.string("currency")?.to_ascii_uppercase();
        let price_minor = self.price_minor(&currency)?;
        let purchased_at = self.string("purchased_at")?;
        let values: [Cow<'_, str>; 9] = [
            self.string("transaction_id")?,
            self.string("player_id")?,
            Cow::Owned(self.string("platform")?.to_ascii_lowercase()),
            self.string("item_id")?,
            self.string("item_name")?,
            Cow::Owned(self.string("item_type")?.to_ascii_lowercase()),
            Cow::Owned(price_minor.to_string()),
            Cow::Owned(currency),
            truncate_to_micros(&purchased_at),
        ];
        for value in &values {
            push_field(out, value);
            out.push(b',');
        }
        // No extras: an unquoted empty field, which COPY reads as NULL.
        if let Some(extras) = self.extras_json() {
            push_field(out, &extras);
        }
        out.push(b'\n');
        Ok(())
    }
}

/// A JSON string, borrowed from the line when it has no escapes.
struct JsonStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for JsonStr<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = JsonStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(StrVisitor)
    }
}

impl<'de> Deserialize<'de> for Purchase<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PurchaseVisitor;
        impl<'de> Visitor<'de> for PurchaseVisitor {
            type Value = Purchase<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut purchase = Purchase {
                    fields: [None; KNOWN.len()],
                    extras: Vec::new(),
                };
                while let Some(JsonStr(key)) = map.next_key()? {
                    // Borrowed: the value keeps its exact text (a price stays "19.99").
                    let value: &'de RawValue = map.next_value()?;
                    match KNOWN.iter().position(|name| *name == key) {
                        Some(slot) => purchase.fields[slot] = Some(value),
                        None => purchase.extras.push((key, value)),
                    }
                }
                Ok(purchase)
            }
        }
        deserializer.deserialize_map(PurchaseVisitor)
    }
}

/// The `transaction_id` of a line.
pub fn transaction_id_of(line: &[u8]) -> Result<Cow<'_, str>, String> {
    Purchase::parse(line)?.transaction_id()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(line: &str) -> String {
        let mut out = Vec::new();
        Purchase::parse(line.as_bytes()).unwrap().write_csv(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    const LINE: &str = r#"{"transaction_id":"steam-1","player_id":"p-1","platform":"steam","item_id":"cs2-case","item_name":"Weapon Case","item_type":"cosmetic","price":2.49,"currency":"USD","purchased_at":"2026-11-01T12:00:00Z"}"#;

    #[test]
    fn plain_line_without_extras_ends_in_null() {
        assert_eq!(
            row(LINE),
            "steam-1,p-1,steam,cs2-case,Weapon Case,cosmetic,249,USD,2026-11-01T12:00:00Z,\n"
        );
    }

    #[test]
    fn quotes_commas_quotes_and_newlines() {
        let line = LINE.replace(r#""Weapon Case""#, r#""Case, \"Gold\"\nEdition""#);
        assert_eq!(
            row(&line),
            "steam-1,p-1,steam,cs2-case,\"Case, \"\"Gold\"\"\nEdition\",cosmetic,249,USD,2026-11-01T12:00:00Z,\n"
        );
    }

    #[test]
    fn extras_become_one_quoted_json_object() {
        let line = LINE.replace(
            "}",
            r#","region":"EU, west","promo":{"code":"X\"1","note":"a\nb"},"n":1.50}"#,
        );
        let csv = row(&line);
        let extras = csv
            .strip_prefix("steam-1,p-1,steam,cs2-case,Weapon Case,cosmetic,249,USD,2026-11-01T12:00:00Z,\"")
            .and_then(|s| s.strip_suffix("\"\n"))
            .unwrap();
        // The JSON escape `\n` stays two characters; only CSV doubles quotes.
        assert_eq!(
            extras,
            r#"{""region"":""EU, west"",""promo"":{""code"":""X\""1"",""note"":""a\nb""},""n"":1.50}"#
        );
        let json: serde_json::Value = serde_json::from_str(&extras.replace("\"\"", "\"")).unwrap();
        assert_eq!(json["promo"]["note"], "a\nb");
        assert_eq!(json["n"].to_string(), "1.5");
    }

    #[test]
    fn normalises_like_the_engine() {
        let line = LINE
            .replace("\"steam\"", "\"Steam\"")
            .replace("\"cosmetic\"", "\"COSMETIC\"")
            .replace("\"USD\"", "\"jpy\"")
            .replace("2.49", "\"1500\"")
            .replace("12:00:00Z", "14:00:00.1234567+02:00");
        assert_eq!(
            row(&line),
            "steam-1,p-1,steam,cs2-case,Weapon Case,cosmetic,1500,JPY,2026-11-01T14:00:00.123456+02:00,\n"
        );
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let line = LINE.replace(r#""p-1""#, r#""p-\u00e9\/x""#);
        assert!(row(&line).starts_with("steam-1,p-é/x,"));
    }

    #[test]
    fn empty_text_is_quoted_not_null() {
        let mut out = Vec::new();
        push_field(&mut out, "");
        push_field(&mut out, "a\rb");
        push_field(&mut out, "plain text");
        assert_eq!(out, b"\"\"\"a\rb\"plain text");
    }

    #[test]
    fn prices_convert_exactly() {
        let cases: &[(&str, &str, Result<i64, ()>)] = &[
            ("19.99", "USD", Ok(1999)),
            ("0.1", "EUR", Ok(10)),
            ("19.990", "GBP", Ok(1999)),
            ("7", "BRL", Ok(700)),
            ("0", "USD", Ok(0)),
            ("-0.00", "USD", Ok(0)),
            ("1500", "JPY", Ok(1500)),
            ("1500.00", "KRW", Ok(1500)),
            ("1.5", "JPY", Err(())),
            ("1.234", "KWD", Ok(1234)),
            ("1.999", "USD", Err(())),
            ("-1.00", "USD", Err(())),
            ("1e3", "USD", Err(())),
            ("", "USD", Err(())),
            ("1.", "USD", Err(())),
            (".5", "USD", Err(())),
            ("99999999999999999999", "USD", Err(())),
            // 0.1 + 0.2 style values must not go through a float.
            ("0.29", "USD", Ok(29)),
            ("1234567.89", "XYZ", Ok(123_456_789)),
        ];
        for (price, currency, expected) in cases {
            let got = decimal_to_minor(price, currency_exponent(currency)).map_err(|_| ());
            assert_eq!(&got, expected, "price {price} {currency}");
        }
        // As a JSON number and as a string.
        for price in ["0.29", "\"0.29\""] {
            assert!(row(&LINE.replace("2.49", price)).contains(",29,USD,"), "{price}");
        }
    }

    #[test]
    fn truncates_fraction_to_microseconds() {
        assert_eq!(truncate_to_micros("2026-11-01T12:00:00Z"), "2026-11-01T12:00:00Z");
        assert_eq!(truncate_to_micros("2026-11-01T12:00:00.5Z"), "2026-11-01T12:00:00.5Z");
        assert_eq!(
            truncate_to_micros("2026-11-01T12:00:00.123456789Z"),
            "2026-11-01T12:00:00.123456Z"
        );
        assert_eq!(
            truncate_to_micros("2026-11-01T12:00:00.1234567-05:00"),
            "2026-11-01T12:00:00.123456-05:00"
        );
    }

    #[test]
    fn reads_only_the_id() {
        assert_eq!(transaction_id_of(LINE.as_bytes()).unwrap(), "steam-1");
        assert!(transaction_id_of(b"{\"player_id\":\"p\"}").is_err());
        assert!(transaction_id_of(b"not json").is_err());
        let err = row_err(&LINE.replace("\"price\":2.49,", ""));
        assert!(err.contains("price"), "{err}");
    }

    fn row_err(line: &str) -> String {
        Purchase::parse(line.as_bytes())
            .unwrap()
            .write_csv(&mut Vec::new())
            .unwrap_err()
    }
}
