//! The sale's vocabulary, parsed at the edge: handlers turn raw query strings
//! into these types, and nothing past them sees an unchecked string.

use rand::RngExt;

use super::SaleError;
use super::limits::{CHECKOUT_CODE_BYTES_MAX, CHECKOUT_CODE_RANDOM_BYTES};
use crate::limits::USER_ID_BYTES_MAX;

/// Which request parameter an input error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    UserId,
    ItemId,
    Code,
}

impl std::fmt::Display for Param {
    /// The parameter's name on the wire.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Param::UserId => "user_id",
            Param::ItemId => "id",
            Param::Code => "code",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserId(String);

impl UserId {
    pub fn parse(raw: Option<&str>) -> Result<Self, SaleError> {
        let raw = raw.ok_or(SaleError::Missing(Param::UserId))?;
        if raw.is_empty() {
            return Err(SaleError::Missing(Param::UserId));
        }
        if raw.len() > USER_ID_BYTES_MAX {
            return Err(SaleError::Invalid(Param::UserId, "longer than 64 bytes"));
        }
        if raw.chars().any(char::is_control) {
            return Err(SaleError::Invalid(Param::UserId, "contains control characters"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An item number within a sale, 1-based. Whether it is in range depends on
/// the sale (its size is fixed when it opens), so the script checks that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemId(u32);

impl ItemId {
    /// Accepts `42` and, for clients written for the Go service this engine
    /// replaces, which send `item_id=item1`, `item42`.
    pub fn parse(raw: Option<&str>) -> Result<Self, SaleError> {
        let raw = raw.ok_or(SaleError::Missing(Param::ItemId))?;
        if raw.is_empty() {
            return Err(SaleError::Missing(Param::ItemId));
        }
        let digits = raw.strip_prefix("item").unwrap_or(raw);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SaleError::Invalid(Param::ItemId, "must be a positive whole number"));
        }
        match digits.parse::<u32>() {
            Ok(0) => Err(SaleError::Invalid(Param::ItemId, "items are numbered from 1")),
            Ok(n) => Ok(Self(n)),
            Err(_) => Err(SaleError::Invalid(Param::ItemId, "out of range")),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// A checkout code: `<sale_id>-<32 hex digits>`. The sale id up front lets the
/// purchase find the code's hash slot without a lookup; the 128 random bits
/// make it unguessable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutCode {
    sale_id: u64,
    text: String,
}

impl CheckoutCode {
    pub fn generate(sale_id: u64) -> Self {
        let random: [u8; CHECKOUT_CODE_RANDOM_BYTES] = rand::rng().random();
        Self {
            sale_id,
            text: format!("{sale_id}-{}", hex::encode(random)),
        }
    }

    /// A code of a sale split in parts: its first two hex digits name the
    /// user's part and the item's part (each below `SALE_SPLIT_MAX`, so a
    /// digit), so a purchase and a lookup find both slots from the code
    /// alone. It keeps 120 random bits: guessing one stays hopeless.
    pub fn generate_split(sale_id: u64, user_part: u32, item_part: u32) -> Self {
        let mut random: [u8; CHECKOUT_CODE_RANDOM_BYTES] = rand::rng().random();
        random[0] = ((user_part as u8 & 0x0f) << 4) | (item_part as u8 & 0x0f);
        Self {
            sale_id,
            text: format!("{sale_id}-{}", hex::encode(random)),
        }
    }

    /// The user's and the item's part of a split sale's code (see
    /// `generate_split`); meaningless for a sale that is not split.
    pub fn parts(&self) -> (u32, u32) {
        let digit = |i: usize| {
            self.text
                .rsplit('-')
                .next()
                .and_then(|random| random.as_bytes().get(i))
                .and_then(|b| (*b as char).to_digit(16))
                .unwrap_or(0)
        };
        (digit(0), digit(1))
    }

    pub fn parse(raw: Option<&str>) -> Result<Self, SaleError> {
        let raw = raw.map(str::trim).ok_or(SaleError::Missing(Param::Code))?;
        if raw.is_empty() {
            return Err(SaleError::Missing(Param::Code));
        }
        let malformed = SaleError::Invalid(Param::Code, "not a checkout code issued by this engine");
        if raw.len() > CHECKOUT_CODE_BYTES_MAX {
            return Err(malformed);
        }
        let Some((sale, random)) = raw.split_once('-') else {
            return Err(malformed);
        };
        let well_formed = !sale.is_empty()
            && sale.bytes().all(|b| b.is_ascii_digit())
            && random.len() == CHECKOUT_CODE_RANDOM_BYTES * 2
            && random.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let sale_id = sale.parse().ok().filter(|_| well_formed).ok_or(malformed)?;
        Ok(Self {
            sale_id,
            text: raw.to_owned(),
        })
    }

    pub fn sale_id(&self) -> u64 {
        self.sale_id
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Sale N covers `[N * period, (N + 1) * period)` milliseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaleWindow {
    pub sale_id: u64,
    pub starts_ms: i64,
    pub ends_ms: i64,
}

impl SaleWindow {
    pub fn at(now_ms: i64, period_secs: u64) -> Self {
        let period_ms = (period_secs * 1000) as i64;
        let sale_id = now_ms.max(0) / period_ms;
        Self {
            sale_id: sale_id as u64,
            starts_ms: sale_id * period_ms,
            ends_ms: (sale_id + 1) * period_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_ids() {
        let cases: &[(Option<&str>, Option<u32>)] = &[
            (Some("1"), Some(1)),
            (Some("item1"), Some(1)),
            (Some("10000"), Some(10_000)),
            (Some("4294967295"), Some(u32::MAX)),
            (Some("4294967296"), None),
            (Some("0"), None),
            (Some("-1"), None),
            (Some("+1"), None),
            (Some("1.5"), None),
            (Some("abc"), None),
            (Some("item"), None),
            (Some(""), None),
            (None, None),
        ];
        for (raw, want) in cases {
            assert_eq!(ItemId::parse(*raw).ok().map(ItemId::get), *want, "{raw:?}");
        }
    }

    #[test]
    fn user_ids() {
        assert!(UserId::parse(Some("user123")).is_ok());
        assert!(UserId::parse(Some(&"u".repeat(64))).is_ok());
        assert!(UserId::parse(Some(&"u".repeat(65))).is_err());
        assert!(UserId::parse(Some("")).is_err());
        assert!(UserId::parse(None).is_err());
        assert!(UserId::parse(Some("a\nb")).is_err());
    }

    #[test]
    fn codes_round_trip_and_garbage_is_refused() {
        let code = CheckoutCode::generate(493_013);
        let parsed = CheckoutCode::parse(Some(code.as_str())).expect("own code parses");
        assert_eq!(parsed.sale_id(), 493_013);
        assert_eq!(code.as_str().len(), "493013-".len() + 32);
        for garbage in [
            "",
            "x",
            "a1b2c3d4e5f6g7h8",
            "CHK_219b6c54_5175",
            "12-zz",
            "-abc",
            &"1".repeat(65),
        ] {
            assert!(CheckoutCode::parse(Some(garbage)).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn split_codes_name_their_parts() {
        for (user, item) in [(0, 0), (2, 1), (7, 7), (15, 3)] {
            let code = CheckoutCode::generate_split(42, user, item);
            let parsed = CheckoutCode::parse(Some(code.as_str())).expect("own code parses");
            assert_eq!(parsed.parts(), (user, item));
        }
    }

    #[test]
    fn windows_follow_the_clock() {
        let w = SaleWindow::at(7_199_999, 3600);
        assert_eq!((w.sale_id, w.starts_ms, w.ends_ms), (1, 3_600_000, 7_200_000));
        assert_eq!(SaleWindow::at(7_200_000, 3600).sale_id, 2);
    }
}
