//! The wallet's input types, parsed once at the edge: the core and the
//! script never see raw strings. Ids are restricted to characters that need
//! no escaping in JSON, keys or the outbox's `\x1f`-joined values.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use super::limits::{
    BONUS_CONTRIBUTION_GAMES_MAX, BONUS_EXPIRES_IN_SECS_MAX, BONUS_WAGERING_MULTIPLIER_DEFAULT,
    BONUS_WAGERING_MULTIPLIER_MAX, WALLET_AMOUNT_MINOR_MAX, WALLET_GAME_BYTES_MAX, WALLET_ID_BYTES_MAX,
};

/// A request field, named as clients send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    PlayerId,
    Currency,
    Type,
    AmountMinor,
    ReferenceId,
    Game,
    BetReferenceId,
    WageringMultiplier,
    ExpiresInSecs,
    MaxBetMinor,
    Contributions,
    Limit,
    Before,
    LastEventId,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::PlayerId => "player_id",
            Field::Currency => "currency",
            Field::Type => "type",
            Field::AmountMinor => "amount_minor",
            Field::ReferenceId => "reference_id",
            Field::Game => "game",
            Field::BetReferenceId => "bet_reference_id",
            Field::WageringMultiplier => "wagering_multiplier",
            Field::ExpiresInSecs => "expires_in_secs",
            Field::MaxBetMinor => "max_bet_minor",
            Field::Contributions => "contributions",
            Field::Limit => "limit",
            Field::Before => "before",
            Field::LastEventId => "Last-Event-ID",
        })
    }
}

/// A field that is missing or invalid, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub Field, pub &'static str);

fn is_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')
}

fn id(field: Field, raw: Option<&str>) -> Result<String, Invalid> {
    let raw = raw.filter(|r| !r.is_empty()).ok_or(Invalid(field, "is required"))?;
    if raw.len() > WALLET_ID_BYTES_MAX {
        return Err(Invalid(field, "is longer than 64 bytes"));
    }
    if !raw.bytes().all(is_id_char) {
        return Err(Invalid(field, "may hold only letters, digits and - _ . :"));
    }
    Ok(raw.to_owned())
}

/// A player id: 1–64 of `[A-Za-z0-9._:-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayerId(String);

impl PlayerId {
    pub fn parse(raw: Option<&str>) -> Result<Self, Invalid> {
        id(Field::PlayerId, raw).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A client's transaction reference (or a bet's, in a win or refund).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceId(String);

impl ReferenceId {
    pub fn parse(field: Field, raw: Option<&str>) -> Result<Self, Invalid> {
        id(field, raw).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An ISO 4217 currency code, upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency(&'static str);

impl Currency {
    pub fn parse(raw: Option<&str>) -> Result<Self, Invalid> {
        let raw = raw
            .filter(|r| !r.is_empty())
            .ok_or(Invalid(Field::Currency, "is required"))?;
        if raw.len() != 3 {
            return Err(Invalid(Field::Currency, "is not an ISO 4217 currency code"));
        }
        iso_currency::Currency::from_code(&raw.to_ascii_uppercase())
            .map(|c| Self(c.code()))
            .ok_or(Invalid(Field::Currency, "is not an ISO 4217 currency code"))
    }

    pub fn code(self) -> &'static str {
        self.0
    }
}

/// A game category: 1–32 of `[a-z0-9_]` (the script matches it in a Lua
/// pattern, where these characters have no special meaning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Game(String);

impl Game {
    pub fn parse(raw: Option<&str>) -> Result<Self, Invalid> {
        let raw = raw
            .filter(|r| !r.is_empty())
            .ok_or(Invalid(Field::Game, "is required for a bet"))?;
        if raw.len() > WALLET_GAME_BYTES_MAX || !raw.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_')) {
            return Err(Invalid(Field::Game, "must be 1-32 of a-z, 0-9 and _"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A positive amount in minor units, at most `WALLET_AMOUNT_MINOR_MAX`.
/// Taken from a JSON value so that a float, a string or a negative number
/// gets this field's code rather than a generic JSON error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount(i64);

impl Amount {
    pub fn parse(field: Field, raw: Option<&Value>) -> Result<Self, Invalid> {
        let raw = raw.ok_or(Invalid(field, "is required"))?;
        let value = raw
            .as_i64()
            .ok_or(Invalid(field, "must be a whole number of minor units"))?;
        if value <= 0 {
            return Err(Invalid(field, "must be positive"));
        }
        if value > WALLET_AMOUNT_MINOR_MAX {
            return Err(Invalid(field, "exceeds 10^12 minor units"));
        }
        Ok(Self(value))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxType {
    Deposit,
    Withdrawal,
    Bet,
    Win,
    Refund,
}

impl TxType {
    pub fn parse(raw: Option<&str>) -> Result<Self, Invalid> {
        match raw {
            None | Some("") => Err(Invalid(Field::Type, "is required")),
            Some("deposit") => Ok(Self::Deposit),
            Some("withdrawal") => Ok(Self::Withdrawal),
            Some("bet") => Ok(Self::Bet),
            Some("win") => Ok(Self::Win),
            Some("refund") => Ok(Self::Refund),
            Some(_) => Err(Invalid(Field::Type, "must be deposit, withdrawal, bet, win or refund")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deposit => "deposit",
            Self::Withdrawal => "withdrawal",
            Self::Bet => "bet",
            Self::Win => "win",
            Self::Refund => "refund",
        }
    }
}

// Its fields are read loosely (any JSON value, any may be absent) so that
// `validate` answers a fault with the field's own code; the `schema`
// attributes state what a valid request holds, for the API document.
/// `POST /wallet/transactions`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransactionBody {
    #[schema(value_type = String, required = true)]
    player_id: Option<String>,
    /// ISO 4217 with a minor unit.
    #[schema(value_type = String, required = true)]
    currency: Option<String>,
    /// `deposit`, `withdrawal`, `bet`, `win` or `refund`.
    #[serde(rename = "type")]
    #[schema(value_type = String, required = true)]
    kind: Option<String>,
    /// Integer minor units, > 0.
    #[schema(value_type = i64, required = true)]
    amount_minor: Option<Value>,
    /// With `type`, unique per player: a repeat replays the first answer.
    #[schema(value_type = String, required = true)]
    reference_id: Option<String>,
    /// A bet's game category (its wagering contribution).
    game: Option<String>,
    /// The bet a win or refund settles.
    bet_reference_id: Option<String>,
}

/// What a transaction names beyond its amount: a bet's game, the bet of a
/// win or refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detail {
    None,
    Game(Game),
    Bet(ReferenceId),
}

impl Detail {
    pub fn as_str(&self) -> &str {
        match self {
            Detail::None => "",
            Detail::Game(g) => g.as_str(),
            Detail::Bet(r) => r.as_str(),
        }
    }
}

/// A validated transaction.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub player: PlayerId,
    pub currency: Currency,
    pub kind: TxType,
    pub amount: Amount,
    pub reference: ReferenceId,
    pub detail: Detail,
}

impl TransactionBody {
    pub fn validate(self) -> Result<Transaction, Invalid> {
        let player = PlayerId::parse(self.player_id.as_deref())?;
        let currency = Currency::parse(self.currency.as_deref())?;
        let kind = TxType::parse(self.kind.as_deref())?;
        let amount = Amount::parse(Field::AmountMinor, self.amount_minor.as_ref())?;
        let reference = ReferenceId::parse(Field::ReferenceId, self.reference_id.as_deref())?;
        let detail = match kind {
            TxType::Bet => {
                if self.bet_reference_id.is_some() {
                    return Err(Invalid(Field::BetReferenceId, "is only for a win or a refund"));
                }
                Detail::Game(Game::parse(self.game.as_deref())?)
            }
            TxType::Win | TxType::Refund => {
                if self.game.is_some() {
                    return Err(Invalid(Field::Game, "is only for a bet"));
                }
                Detail::Bet(ReferenceId::parse(
                    Field::BetReferenceId,
                    self.bet_reference_id.as_deref(),
                )?)
            }
            TxType::Deposit | TxType::Withdrawal => {
                if self.game.is_some() {
                    return Err(Invalid(Field::Game, "is only for a bet"));
                }
                if self.bet_reference_id.is_some() {
                    return Err(Invalid(Field::BetReferenceId, "is only for a win or a refund"));
                }
                Detail::None
            }
        };
        Ok(Transaction {
            player,
            currency,
            kind,
            amount,
            reference,
            detail,
        })
    }
}

// Read loosely, as `TransactionBody` is.
/// `POST /bonuses` (admin).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BonusBody {
    #[schema(value_type = String, required = true)]
    player_id: Option<String>,
    #[schema(value_type = String, required = true)]
    currency: Option<String>,
    #[schema(value_type = i64, required = true)]
    amount_minor: Option<Value>,
    /// 1-100, default 10.
    #[schema(value_type = Option<i64>)]
    wagering_multiplier: Option<Value>,
    #[schema(value_type = i64, required = true)]
    expires_in_secs: Option<Value>,
    #[schema(value_type = Option<i64>)]
    max_bet_minor: Option<Value>,
    /// Percent per game category; a game not listed counts 0%.
    #[schema(value_type = Option<BTreeMap<String, i64>>)]
    contributions: Option<Value>,
}

/// A validated bonus grant.
#[derive(Debug, Clone)]
pub struct BonusGrant {
    pub player: PlayerId,
    pub currency: Currency,
    pub amount: Amount,
    pub multiplier: i64,
    pub expires_in_secs: i64,
    pub max_bet: Option<Amount>,
    /// Game → percent (0–100), sorted by game.
    pub contributions: BTreeMap<String, i64>,
}

impl BonusGrant {
    pub fn required_minor(&self) -> i64 {
        self.amount.get() * self.multiplier
    }

    /// As the script reads it: `,slots=100,table=20,` (`,` alone for none).
    pub fn contributions_text(&self) -> String {
        let mut text = String::from(",");
        for (game, pct) in &self.contributions {
            text.push_str(game);
            text.push('=');
            text.push_str(&pct.to_string());
            text.push(',');
        }
        text
    }
}

fn whole(
    field: Field,
    raw: Option<&Value>,
    default: i64,
    min: i64,
    max: i64,
    why: &'static str,
) -> Result<i64, Invalid> {
    let Some(raw) = raw.filter(|v| !v.is_null()) else {
        return Ok(default);
    };
    match raw.as_i64() {
        Some(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(Invalid(field, why)),
    }
}

impl BonusBody {
    pub fn validate(self) -> Result<BonusGrant, Invalid> {
        let player = PlayerId::parse(self.player_id.as_deref())?;
        let currency = Currency::parse(self.currency.as_deref())?;
        let amount = Amount::parse(Field::AmountMinor, self.amount_minor.as_ref())?;
        let multiplier = whole(
            Field::WageringMultiplier,
            self.wagering_multiplier.as_ref(),
            BONUS_WAGERING_MULTIPLIER_DEFAULT,
            1,
            BONUS_WAGERING_MULTIPLIER_MAX,
            "must be a whole number from 1 to 100",
        )?;
        if self.expires_in_secs.as_ref().is_none_or(Value::is_null) {
            return Err(Invalid(Field::ExpiresInSecs, "is required"));
        }
        let expires_in_secs = whole(
            Field::ExpiresInSecs,
            self.expires_in_secs.as_ref(),
            0,
            1,
            BONUS_EXPIRES_IN_SECS_MAX,
            "must be a whole number of seconds from 1 to a year",
        )?;
        let max_bet = match self.max_bet_minor.as_ref().filter(|v| !v.is_null()) {
            None => None,
            Some(v) => Some(Amount::parse(Field::MaxBetMinor, Some(v))?),
        };
        let mut contributions = BTreeMap::new();
        match self.contributions.as_ref() {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                if map.len() > BONUS_CONTRIBUTION_GAMES_MAX {
                    return Err(Invalid(Field::Contributions, "lists more than 16 games"));
                }
                for (game, pct) in map {
                    let game = Game::parse(Some(game))
                        .map_err(|_| Invalid(Field::Contributions, "games must be 1-32 of a-z, 0-9 and _"))?;
                    let pct = pct.as_i64().filter(|p| (0..=100).contains(p)).ok_or(Invalid(
                        Field::Contributions,
                        "percentages must be whole numbers from 0 to 100",
                    ))?;
                    contributions.insert(game.0, pct);
                }
            }
            Some(_) => return Err(Invalid(Field::Contributions, "must be an object of game: percent")),
        }
        Ok(BonusGrant {
            player,
            currency,
            amount,
            multiplier,
            expires_in_secs,
            max_bet,
            contributions,
        })
    }
}

/// A Redis stream entry id, as SSE `id:` and `Last-Event-ID`: `<ms>-<seq>`,
/// both parts unsigned 64-bit, as Redis stores them. Held as numbers, so an
/// id Redis would refuse (a part past 2^64 - 1) never reaches it, and ids
/// compare as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl EventId {
    /// The id before every entry: a stream read from it starts at the first.
    pub const START: EventId = EventId { ms: 0, seq: 0 };

    /// The largest id Redis allows: nothing can follow it.
    pub const MAX: EventId = EventId {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    /// `<ms>-<seq>`, each part 1–20 ASCII digits within u64. Anything else,
    /// a part past u64 included, is refused: it is no id we ever sent.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let invalid = Invalid(Field::LastEventId, "must be an event id as sent in `id:`");
        let (ms, seq) = raw.split_once('-').ok_or(invalid.clone())?;
        let part = |digits: &str| -> Option<u64> {
            // `u64::from_str` alone would take a leading `+`.
            if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse().ok()
        };
        match (part(ms), part(seq)) {
            (Some(ms), Some(seq)) => Ok(Self { ms, seq }),
            _ => Err(invalid),
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tx(value: Value) -> Result<Transaction, Invalid> {
        serde_json::from_value::<TransactionBody>(value)
            .expect("shape")
            .validate()
    }

    #[test]
    fn a_bet_needs_a_game_and_a_win_its_bet() {
        let bet = tx(
            json!({"player_id":"p1","currency":"eur","type":"bet","amount_minor":5,"reference_id":"r1","game":"slots"}),
        )
        .expect("valid");
        assert_eq!(bet.currency.code(), "EUR");
        assert_eq!(bet.detail, Detail::Game(Game("slots".into())));
        assert_eq!(
            tx(json!({"player_id":"p1","currency":"EUR","type":"bet","amount_minor":5,"reference_id":"r1"}))
                .expect_err("no game")
                .0,
            Field::Game
        );
        assert_eq!(
            tx(json!({"player_id":"p1","currency":"EUR","type":"win","amount_minor":5,"reference_id":"r1"}))
                .expect_err("no bet")
                .0,
            Field::BetReferenceId
        );
    }

    #[test]
    fn amounts_are_positive_whole_and_bounded() {
        for bad in [
            json!(0),
            json!(-1),
            json!(1.5),
            json!("5"),
            json!(1_000_000_000_001_i64),
        ] {
            let err =
                tx(json!({"player_id":"p","currency":"EUR","type":"deposit","amount_minor":bad,"reference_id":"r"}))
                    .expect_err("refused");
            assert_eq!(err.0, Field::AmountMinor);
        }
    }

    #[test]
    fn ids_and_currencies_are_checked() {
        assert_eq!(PlayerId::parse(Some("a b")).expect_err("space").0, Field::PlayerId);
        assert!(PlayerId::parse(Some(&"x".repeat(65))).is_err());
        assert!(PlayerId::parse(Some("player-5:eu_1.x")).is_ok());
        assert!(Currency::parse(Some("XXZ")).is_err());
        assert!(Game::parse(Some("Slots")).is_err());
        assert_eq!(
            EventId::parse("1700000000000-3"),
            Ok(EventId {
                ms: 1_700_000_000_000,
                seq: 3
            })
        );
        assert_eq!(
            EventId::parse("18446744073709551615-18446744073709551615"),
            Ok(EventId::MAX)
        );
        assert_eq!(EventId::parse("007-0").map(|id| id.to_string()), Ok("7-0".to_owned()));
        for bad in [
            "17-",
            "-3",
            "abc",
            "17",
            "1-2-3",
            "+1-0",
            "1-+0",
            " 1-0",
            "1e3-0",
            "99999999999999999999-0",
            "0-99999999999999999999",
            "18446744073709551616-0",
            "0-18446744073709551616",
            "000000000000000000001-0",
        ] {
            assert!(EventId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bonus_has_defaults_and_bounds() {
        let grant: BonusBody = serde_json::from_value(json!({
            "player_id":"p","currency":"EUR","amount_minor":1000,"expires_in_secs":60,
            "contributions":{"slots":100,"table":20}
        }))
        .expect("shape");
        let grant = grant.validate().expect("valid");
        assert_eq!(grant.multiplier, 10);
        assert_eq!(grant.required_minor(), 10_000);
        assert_eq!(grant.contributions_text(), ",slots=100,table=20,");
        let bad: BonusBody = serde_json::from_value(json!({
            "player_id":"p","currency":"EUR","amount_minor":1000,"expires_in_secs":60,"wagering_multiplier":101
        }))
        .expect("shape");
        assert_eq!(bad.validate().expect_err("multiplier").0, Field::WageringMultiplier);
    }
}
