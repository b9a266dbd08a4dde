-- The write-behind's exactly-once, kept by a marker per outbox stream entry
-- instead of a unique index on every row's event id (src/outbox/applied.rs):
-- a write leaves out the events whose entry (or, for an event written alone,
-- the event itself) is marked, and marks the rest in the same transaction.
-- One marker covers a whole script call's events, so the per-row cost of a
-- unique index entry and an ON CONFLICT check goes (measured under
-- `loadtest/run.sh sustained`: Postgres CPU per flushed event before and
-- after is in loadtest/RESULTS.md).
CREATE TABLE outbox_applied (
    shard      INTEGER     NOT NULL,
    entry      TEXT        NOT NULL,  -- the stream entry id, "<ms>-<seq>"
    event      TEXT        NOT NULL,  -- '' for the whole entry, else the one event written alone
    entry_ms   BIGINT      NOT NULL,  -- the entry id's milliseconds: markers of entries older than the stream's oldest are dropped
    applied_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (shard, entry, event)
);

-- The sale's rows are written once each through the markers: their event id
-- stays, to say which event wrote the row, without its unique index.
ALTER TABLE checkout_attempts DROP CONSTRAINT IF EXISTS checkout_attempts_pkey;
ALTER TABLE purchases DROP CONSTRAINT IF EXISTS purchases_pkey;

-- Indexes no query of ours uses, each an entry per row for the flusher.
-- Nothing reads attempts or purchases by (sale, user): Redis answers every
-- per-user question, and the checks that count per user read a whole sale.
DROP INDEX IF EXISTS checkout_attempts_sale_user;
DROP INDEX IF EXISTS purchases_sale_user;
-- A code names one item of one sale, so a code recorded twice is an item
-- recorded twice, which purchases_one_per_item (the last line against an
-- oversell) already refuses.
ALTER TABLE purchases DROP CONSTRAINT IF EXISTS purchases_code_key;
