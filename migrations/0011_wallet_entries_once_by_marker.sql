-- Wallet entries reach Postgres once each through the flusher's markers
-- (migration 0010, src/outbox/applied.rs), so their event id needs no
-- unique index: one index entry and an ON CONFLICT check less per entry.
-- The transaction id (the primary key) and one entry per reference stay
-- unique: a second copy of an entry still fails loudly.
ALTER TABLE wallet_entries DROP CONSTRAINT IF EXISTS wallet_entries_event_id_key;
