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
    let mut entries = EntryRows::default();
    // Latest per bonus in this batch: one upsert may not touch a row twice.
    let mut bonuses: HashMap<String, &OutboxEvent> = HashMap::new();
    for event in events {
        match event.kind() {
            "wallet_entry" => entries.push(event)?,
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
    if !entries.event_id.is_empty() {
        // No ON CONFLICT: the flusher hands each event over once (its
        // markers), and a second entry for one reference, or a second copy
        // of one (an account's sequence number twice), must fail loudly,
        // never vanish.
        sqlx::query(
            "INSERT INTO wallet_entries
                 (event_id, transaction_id, seq, player_id, currency, type, reference_id, amount_minor,
                  cash_delta_minor, bonus_delta_minor, cash_after_minor, bonus_after_minor, bonus_id,
                  wagered_delta_minor, detail, created_at)
             SELECT e, t, s, p, c, ty, r, a, cd, bd, ca, ba, b, w, d,
                    to_timestamp(0) + at * interval '1 millisecond'
             FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::text[],
                         $14::bigint[], $15::text[], $16::bigint[])
                  AS u(e, t, s, p, c, ty, r, a, cd, bd, ca, ba, b, w, d, at)",
        )
        .bind(&entries.event_id)
        .bind(&entries.tx)
        .bind(&entries.seq)
        .bind(&entries.player)
        .bind(&entries.currency)
        .bind(&entries.kind)
        .bind(&entries.reference)
        .bind(&entries.amount)
        .bind(&entries.cash_delta)
        .bind(&entries.bonus_delta)
        .bind(&entries.cash_after)
        .bind(&entries.bonus_after)
        .bind(&entries.bonus_id)
        .bind(&entries.wagered_delta)
        .bind(&entries.detail)
        .bind(&entries.at_ms)
        .execute(&mut *tx)
        .await?;
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

/// Column vectors for one UNNEST insert: one round trip per batch.
#[derive(Default)]
struct EntryRows {
    event_id: Vec<String>,
    tx: Vec<String>,
    seq: Vec<i64>,
    player: Vec<String>,
    currency: Vec<String>,
    kind: Vec<String>,
    reference: Vec<String>,
    amount: Vec<i64>,
    cash_delta: Vec<i64>,
    bonus_delta: Vec<i64>,
    cash_after: Vec<i64>,
    bonus_after: Vec<i64>,
    bonus_id: Vec<Option<String>>,
    wagered_delta: Vec<i64>,
    detail: Vec<Option<String>>,
    at_ms: Vec<i64>,
}

impl EntryRows {
    /// Adds an entry; its sequence number is the `<n>` of the transaction
    /// id `<shard>-<n>`.
    fn push(&mut self, e: &OutboxEvent) -> Result<(), SinkError> {
        let tx = e.text("tx")?;
        let seq = tx
            .split_once('-')
            .and_then(|(_, n)| n.parse::<i64>().ok())
            .ok_or_else(|| SinkError::Malformed {
                event_id: e.event_id().to_owned(),
                field: "tx",
                problem: "is not <shard>-<seq>",
            })?;
        self.event_id.push(e.event_id().to_owned());
        self.tx.push(tx.to_owned());
        self.seq.push(seq);
        self.player.push(e.text("player")?.to_owned());
        self.currency.push(e.text("currency")?.to_owned());
        self.kind.push(e.text("type")?.to_owned());
        self.reference.push(e.text("reference")?.to_owned());
        self.amount.push(e.int("amount")?);
        self.cash_delta.push(e.int("cash_delta")?);
        self.bonus_delta.push(e.int("bonus_delta")?);
        self.cash_after.push(e.int("cash_after")?);
        self.bonus_after.push(e.int("bonus_after")?);
        self.bonus_id.push(e.optional_text("bonus_id")?);
        self.wagered_delta.push(e.int("wagered_delta")?);
        self.detail.push(e.optional_text("detail")?);
        self.at_ms.push(e.int("at")?);
        Ok(())
    }
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
