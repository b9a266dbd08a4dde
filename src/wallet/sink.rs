//! Writes the wallet's outbox events to Postgres: the ledger
//! (`wallet_entries`, append-only) and each bonus's latest state
//! (`bonuses`). The balances an account reached are its latest entry's
//! (the `wallet_accounts` view), so they cost no write of their own. The
//! flusher hands each event over once (its markers), so entries are plain
//! inserts; the bonus upsert only moves forward (`version`), so an older
//! event never overwrites a newer one.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::PgConnection;

use crate::outbox::{EventKind, OutboxEvent, Sink, SinkError, SinkFn};
use crate::postgres::copy::{BinaryRows, copy_binary};

/// The wallet's events, with their values in the order `wallet_apply.lua`
/// writes them.
const KINDS: &[EventKind] = &[
    EventKind {
        name: "wallet_entry",
        fields: &[
            "tx",
            "player",
            "currency",
            "type",
            "reference",
            "amount",
            "cash_delta",
            "bonus_delta",
            "cash_after",
            "bonus_after",
            "bonus_id",
            "wagered_delta",
            "detail",
            "at",
        ],
    },
    EventKind {
        name: "bonus_state",
        fields: &[
            "bonus",
            "player",
            "currency",
            "status",
            "amount",
            "required",
            "wagered",
            "max_bet",
            "expires_ms",
            "contributions",
            "version",
            "at",
        ],
    },
];

/// Where the wallet's events land: `wallet_entries`, `bonuses`.
pub fn sink() -> Arc<dyn Sink> {
    Arc::new(SinkFn::new(KINDS, |tx, events| Box::pin(write(tx, events))))
}

async fn write(tx: &mut PgConnection, events: &[&OutboxEvent]) -> Result<(), SinkError> {
    let mut entries = BinaryRows::new(ENTRY_COLUMNS, events.len() * ENTRY_BYTES);
    // Latest per bonus in this batch: one upsert may not touch a row twice.
    let mut bonuses: HashMap<String, &OutboxEvent> = HashMap::new();
    for event in events {
        match event.kind() {
            "wallet_entry" => push_entry(&mut entries, event)?,
            "bonus_state" => {
                let version: i64 = event.int("version")?;
                let id = event.text("bonus")?.to_owned();
                let newer = match bonuses.get(&id) {
                    Some(existing) => existing.int::<i64>("version")? < version,
                    None => true,
                };
                if newer {
                    bonuses.insert(id, event);
                }
            }
            other => return Err(SinkError::UnknownKind(other.to_owned())),
        }
    }
    if !entries.is_empty() {
        // No ON CONFLICT: the flusher hands each event over once (its
        // markers), and a second entry for one reference, or a second copy
        // of one (an account's sequence number twice), must fail loudly,
        // never vanish. So the entries can only be new, which is what
        // `COPY` writes cheapest.
        copy_binary(&mut *tx, COPY_ENTRIES, entries).await?;
    }
    if !bonuses.is_empty() {
        let mut rows = BonusRows::default();
        let mut sorted: Vec<_> = bonuses.into_values().collect();
        sorted.sort_by(|a, b| a.event_id().cmp(b.event_id()));
        for event in sorted {
            rows.push(event)?;
        }
        sqlx::query(
            "INSERT INTO bonuses (bonus_id, player_id, currency, status, amount_minor, required_minor,
                                  wagered_minor, max_bet_minor, contributions, expires_at, version, updated_at)
             SELECT i, p, c, st, a, r, w, NULLIF(m, 0), co,
                    to_timestamp(0) + x * interval '1 millisecond', v,
                    to_timestamp(0) + at * interval '1 millisecond'
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
                         $7::bigint[], $8::bigint[], $9::text[], $10::bigint[], $11::bigint[], $12::bigint[])
                  AS u(i, p, c, st, a, r, w, m, co, x, v, at)
             ON CONFLICT (bonus_id) DO UPDATE
             SET status = EXCLUDED.status, wagered_minor = EXCLUDED.wagered_minor,
                 version = EXCLUDED.version, updated_at = EXCLUDED.updated_at
             WHERE bonuses.version < EXCLUDED.version",
        )
        .bind(&rows.id)
        .bind(&rows.player)
        .bind(&rows.currency)
        .bind(&rows.status)
        .bind(&rows.amount)
        .bind(&rows.required)
        .bind(&rows.wagered)
        .bind(&rows.max_bet)
        .bind(&rows.contributions)
        .bind(&rows.expires_ms)
        .bind(&rows.version)
        .bind(&rows.at_ms)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// The ledger's columns, in the order [`push_entry`] writes them.
const COPY_ENTRIES: &str = "COPY wallet_entries
     (event_id, transaction_id, seq, player_id, currency, type, reference_id, amount_minor, cash_delta_minor,
      bonus_delta_minor, cash_after_minor, bonus_after_minor, bonus_id, wagered_delta_minor, detail, created_at)
     FROM STDIN (FORMAT binary)";
const ENTRY_COLUMNS: i16 = 16;
/// About what one entry takes in `COPY`'s binary form: a capacity hint.
const ENTRY_BYTES: usize = 256;

/// Adds an entry; its sequence number is the `<n>` of the transaction id
/// `<shard>-<n>`.
fn push_entry(rows: &mut BinaryRows, e: &OutboxEvent) -> Result<(), SinkError> {
    let tx = e.text("tx")?;
    let seq = tx
        .split_once('-')
        .and_then(|(_, n)| n.parse::<i64>().ok())
        .ok_or_else(|| SinkError::Malformed {
            event_id: e.event_id().to_owned(),
            field: "tx",
            problem: "is not <shard>-<seq>",
        })?;
    // Every value is read before the row starts, so a malformed event
    // leaves no half row behind.
    let (player, currency, kind, reference) = (
        e.text("player")?,
        e.text("currency")?,
        e.text("type")?,
        e.text("reference")?,
    );
    let (amount, cash_delta, bonus_delta) = (e.int("amount")?, e.int("cash_delta")?, e.int("bonus_delta")?);
    let (cash_after, bonus_after, bonus_id) = (
        e.int("cash_after")?,
        e.int("bonus_after")?,
        e.optional_text("bonus_id")?,
    );
    let (wagered_delta, detail, at_ms) = (e.int("wagered_delta")?, e.optional_text("detail")?, e.int("at")?);
    rows.row()
        .text(e.event_id())
        .text(tx)
        .int8(seq)
        .text(player)
        .text(currency)
        .text(kind)
        .text(reference)
        .int8(amount)
        .int8(cash_delta)
        .int8(bonus_delta)
        .int8(cash_after)
        .int8(bonus_after)
        .optional_text(bonus_id.as_deref())
        .int8(wagered_delta)
        .optional_text(detail.as_deref())
        .millis(at_ms);
    Ok(())
}

#[derive(Default)]
struct BonusRows {
    id: Vec<String>,
    player: Vec<String>,
    currency: Vec<String>,
    status: Vec<String>,
    amount: Vec<i64>,
    required: Vec<i64>,
    wagered: Vec<i64>,
    max_bet: Vec<i64>,
    contributions: Vec<String>,
    expires_ms: Vec<i64>,
    version: Vec<i64>,
    at_ms: Vec<i64>,
}

impl BonusRows {
    fn push(&mut self, e: &OutboxEvent) -> Result<(), SinkError> {
        self.id.push(e.text("bonus")?.to_owned());
        self.player.push(e.text("player")?.to_owned());
        self.currency.push(e.text("currency")?.to_owned());
        self.status.push(e.text("status")?.to_owned());
        self.amount.push(e.int("amount")?);
        self.required.push(e.int("required")?);
        self.wagered.push(e.int("wagered")?);
        self.max_bet.push(e.int("max_bet")?);
        self.contributions.push(e.text("contributions")?.to_owned());
        self.expires_ms.push(e.int("expires_ms")?);
        self.version.push(e.int("version")?);
        self.at_ms.push(e.int("at")?);
        Ok(())
    }
}
