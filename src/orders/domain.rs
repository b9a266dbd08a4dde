//! The orders' vocabulary, parsed at the edge: handlers turn raw bodies,
//! paths and headers into these types, and nothing past them sees an
//! unchecked value.

use rand::RngExt;

use super::OrdersError;
use super::limits::{
    HOLD_SECS_MAX, ORDER_QUANTITY_MAX, PRODUCT_NAME_BYTES_MAX, PRODUCT_PRICE_CENTS_MAX, PRODUCT_STOCK_MAX,
};
use crate::limits::{IDEMPOTENCY_KEY_BYTES_MAX, USER_ID_BYTES_MAX};
use crate::redis::keyspace::{Keyspace, Shard};
use crate::server::http::InvalidIdempotencyKey;

/// Which input an error is about; each has its own stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    ProductId,
    Quantity,
    BuyerId,
    HoldSecs,
    OrderId,
    IdempotencyKey,
    Name,
    Stock,
    PriceCents,
    MerchantId,
    MaxPerBuyer,
    Add,
}

impl std::fmt::Display for Field {
    /// The input's name on the wire.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Field::ProductId => "product_id",
            Field::Quantity => "quantity",
            Field::BuyerId => "buyer_id",
            Field::HoldSecs => "hold_secs",
            Field::OrderId => "order id",
            Field::IdempotencyKey => "Idempotency-Key",
            Field::Name => "name",
            Field::Stock => "stock",
            Field::PriceCents => "price_cents",
            Field::MerchantId => "merchant_id",
            Field::MaxPerBuyer => "max_per_buyer",
            Field::Add => "add",
        })
    }
}

/// A whole number in `min..=max`, or the field's error.
pub fn bounded(field: Field, value: i64, min: i64, max: i64) -> Result<i64, OrdersError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(OrdersError::Invalid(field, format!("must be between {min} and {max}")))
    }
}

/// A product id: a positive integer (Postgres `bigserial`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProductId(u64);

impl ProductId {
    pub fn new(raw: i64) -> Result<Self, OrdersError> {
        Ok(Self(bounded(Field::ProductId, raw, 1, i64::MAX)? as u64))
    }

    /// From a path segment.
    pub fn parse(raw: Option<&str>) -> Result<Self, OrdersError> {
        let raw = raw.unwrap_or("");
        if raw.is_empty() || raw.len() > 19 || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(OrdersError::Invalid(
                Field::ProductId,
                "must be a positive whole number".into(),
            ));
        }
        let value: i64 = raw
            .parse()
            .map_err(|_| OrdersError::Invalid(Field::ProductId, "out of range".into()))?;
        Self::new(value)
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// The shard of the product's keys, its orders and their idempotency keys.
    pub fn shard(self, keys: &Keyspace) -> Shard {
        keys.shard_of_number(self.0)
    }
}

/// A buyer id: 1 to 64 bytes, no control characters (they would break the
/// outbox's value separator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuyerId(String);

impl BuyerId {
    pub fn parse(raw: String) -> Result<Self, OrdersError> {
        let invalid = |why: &str| OrdersError::Invalid(Field::BuyerId, why.into());
        if raw.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if raw.len() > USER_ID_BYTES_MAX {
            return Err(invalid("longer than 64 bytes"));
        }
        if raw.chars().any(char::is_control) {
            return Err(invalid("contains control characters"));
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub fn quantity(raw: i64) -> Result<i64, OrdersError> {
    bounded(Field::Quantity, raw, 1, ORDER_QUANTITY_MAX)
}

pub fn hold_secs(raw: Option<i64>) -> Result<Option<i64>, OrdersError> {
    raw.map(|secs| bounded(Field::HoldSecs, secs, 1, HOLD_SECS_MAX))
        .transpose()
}

/// An order id: a time-ordered (version 7) UUID whose last two bytes, read
/// as a number, also name the order's shard (`number % shards`), the shard
/// of its product. So `GET /orders/{id}`, confirm and cancel find the
/// order's keys from the id alone, with no index that would have to live in
/// another hash slot.
///
/// The id starts with the millisecond the engine made it, so the order's
/// and its settlement row's primary keys in Postgres grow at their right
/// edge instead of at a random leaf: fewer pages touched, split and logged
/// per insert, and an index that stays in cache as it grows (a row keyed by
/// a random version 4 id cost Postgres 0.4–0.5 µs more at 60,000 rows, and
/// 1.5–1.8 µs more at a million). That millisecond is no secret: the
/// order's `created_at` says it. Past it the id keeps at least 64 random
/// bits (74 less the shard's up to 10). Ids made before (random, version 4)
/// parse and name their shard the same way, and so do those made when the
/// shard lived in the last byte alone (8 shards): 256 is a multiple of 8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderId {
    text: String,
    /// The last two bytes: the shard is this modulo the shard count.
    number: u64,
}

impl OrderId {
    /// `now_ms` is the engine's clock; a reading before the epoch (none is)
    /// would count as the epoch.
    pub fn generate(shard: Shard, keys: &Keyspace, now_ms: i64) -> Self {
        let random: [u8; 10] = rand::rng().random();
        // Sets the version (7) and variant bits, which are in bytes 6 and 8,
        // before the shard goes into the last two.
        let mut bytes = uuid::Builder::from_unix_timestamp_millis(now_ms.max(0) as u64, &random)
            .into_uuid()
            .into_bytes();
        let shards = keys.shard_count();
        let random = u64::from(u16::from_be_bytes([bytes[14], bytes[15]]));
        // The largest multiple of `shards` that fits two bytes bounds it, so
        // adding the shard's index never overflows.
        let number = (random % (65_536 / shards)) * shards + shard.index();
        [bytes[14], bytes[15]] = (number as u16).to_be_bytes();
        let text = uuid::Uuid::from_bytes(bytes).to_string();
        Self { text, number }
    }

    /// A canonical (lower-case, hyphenated) UUID; upper case is accepted.
    pub fn parse(raw: Option<&str>) -> Result<Self, OrdersError> {
        let malformed = || OrdersError::Invalid(Field::OrderId, "must be a UUID issued by this engine".into());
        let raw = raw.ok_or_else(malformed)?.to_ascii_lowercase();
        let well_formed = raw.len() == 36
            && raw.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_hexdigit(),
            });
        if !well_formed {
            return Err(malformed());
        }
        let number = u64::from(u16::from_str_radix(&raw[32..36], 16).map_err(|_| malformed())?);
        Ok(Self { text: raw, number })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn shard(&self, keys: &Keyspace) -> Shard {
        keys.shard_of_number(self.number)
    }
}

/// The toolkit parses the `Idempotency-Key` header; a bad one is this
/// feature's `INVALID_IDEMPOTENCY_KEY`, like any other bad input.
impl From<InvalidIdempotencyKey> for OrdersError {
    fn from(_: InvalidIdempotencyKey) -> Self {
        OrdersError::Invalid(
            Field::IdempotencyKey,
            format!("must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} printable ASCII characters"),
        )
    }
}

/// A new product's fields, checked.
#[derive(Debug, Clone)]
pub struct NewProduct {
    pub name: String,
    pub stock: i64,
    pub price_cents: i64,
    pub merchant_id: i64,
    pub max_per_buyer: i64,
}

impl NewProduct {
    pub fn new(
        name: String,
        stock: i64,
        price_cents: i64,
        merchant_id: i64,
        max_per_buyer: Option<i64>,
    ) -> Result<Self, OrdersError> {
        if name.trim().is_empty() || name.len() > PRODUCT_NAME_BYTES_MAX || name.chars().any(char::is_control) {
            return Err(OrdersError::Invalid(
                Field::Name,
                format!("must be 1 to {PRODUCT_NAME_BYTES_MAX} bytes without control characters"),
            ));
        }
        Ok(Self {
            name,
            stock: bounded(Field::Stock, stock, 0, PRODUCT_STOCK_MAX)?,
            price_cents: bounded(Field::PriceCents, price_cents, 0, PRODUCT_PRICE_CENTS_MAX)?,
            merchant_id: bounded(Field::MerchantId, merchant_id, 0, i64::MAX)?,
            max_per_buyer: bounded(
                Field::MaxPerBuyer,
                max_per_buyer.unwrap_or(0),
                0,
                ORDER_QUANTITY_MAX * 1000,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07, in the engine clock's milliseconds.
    const NOW_MS: i64 = 1_796_600_000_000;

    #[test]
    fn order_ids_made_later_sort_later() {
        let keys = Keyspace::numbered("p", 8);
        for shard in keys.shards() {
            let earlier = OrderId::generate(shard, &keys, NOW_MS);
            let later = OrderId::generate(keys.shard_of_number(7 - shard.index()), &keys, NOW_MS + 1);
            assert!(
                earlier.as_str() < later.as_str(),
                "{} < {}",
                earlier.as_str(),
                later.as_str()
            );
        }
    }

    #[test]
    fn order_ids_carry_their_shard_and_round_trip() {
        for count in [1, 3, 8, 12, 1000, crate::limits::OUTBOX_SHARDS_MAX] {
            let keys = Keyspace::numbered("p", count);
            for shard in keys.shards() {
                for _ in 0..10 {
                    let id = OrderId::generate(shard, &keys, NOW_MS);
                    let parsed = OrderId::parse(Some(id.as_str())).expect("own id parses");
                    assert_eq!(parsed.shard(&keys), shard);
                    assert_eq!(parsed.as_str(), id.as_str());
                    let uuid = uuid::Uuid::parse_str(id.as_str()).expect("a UUID");
                    assert_eq!(uuid.get_version_num(), 7, "version 7: {}", id.as_str());
                    assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
                    let (secs, nanos) = uuid.get_timestamp().expect("a timestamp").to_unix();
                    assert_eq!(secs as i64 * 1000 + i64::from(nanos / 1_000_000), NOW_MS);
                }
            }
        }
        let keys = Keyspace::numbered("p", 8);
        let upper = OrderId::generate(keys.shard_of_number(3), &keys, NOW_MS)
            .as_str()
            .to_ascii_uppercase();
        assert_eq!(
            OrderId::parse(Some(&upper)).expect("upper").shard(&keys),
            keys.shard_of_number(3)
        );
        // An id made when the last byte alone carried the shard (8 shards).
        let old = OrderId::parse(Some("5f0c2d1e-9a7b-4c3d-8e1f-a0b1c2d3e40b")).expect("old id");
        assert_eq!(old.shard(&keys), keys.shard_of_number(0x0b));
        for garbage in [
            "",
            "x",
            "order-123",
            "0000000000000000000000000000000000000",
            "g0000000-0000-4000-8000-000000000000",
        ] {
            assert!(OrderId::parse(Some(garbage)).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn inputs_are_bounded() {
        assert!(quantity(0).is_err());
        assert!(quantity(1).is_ok());
        assert!(quantity(ORDER_QUANTITY_MAX + 1).is_err());
        assert!(hold_secs(Some(0)).is_err());
        assert!(hold_secs(Some(3601)).is_err());
        assert_eq!(hold_secs(None).expect("none"), None);
        assert!(BuyerId::parse(String::new()).is_err());
        assert!(BuyerId::parse("u".repeat(65)).is_err());
        assert!(BuyerId::parse("a\u{1f}b".into()).is_err());
        assert!(ProductId::parse(Some("0")).is_err());
        assert!(ProductId::parse(Some("-1")).is_err());
        assert!(ProductId::parse(Some("99999999999999999999")).is_err());
        assert_eq!(ProductId::parse(Some("42")).expect("42").get(), 42);
    }
}
