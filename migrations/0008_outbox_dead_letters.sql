-- Outbox events the flusher could not write and set aside, so that one bad
-- event never holds up the rest of its shard (ARCHITECTURE.md, invariant 2).
-- A row is written, and its stream entry acknowledged, only after the event
-- failed alone with a data error DEAD_LETTER_AFTER_ATTEMPTS times, or at
-- once when it cannot be decoded at all. Nothing is dropped: the row holds
-- the event as the stream held it, and `POST /admin/dead-letters/{id}/retry`
-- replays it through the sinks once an operator has fixed its cause.
CREATE TABLE outbox_dead_letters (
    id              BIGSERIAL PRIMARY KEY,
    -- `<shard>-<entry id>-<n>`: what every sink is idempotent on. A second
    -- set-aside of the same event (a crash before the acknowledgement) finds
    -- its row.
    event_id        TEXT NOT NULL UNIQUE,
    -- The kind as the stream named it (it may be one no sink knows).
    kind            TEXT NOT NULL,
    shard           INTEGER NOT NULL,
    entry_id        TEXT NOT NULL,
    -- The event's raw fields as the stream held them (a JSON array of
    -- strings: `[kind, values]` for a batched entry, every field and value of
    -- an older one-event entry), stored as bytes: a value Postgres refuses as
    -- text (a NUL byte) must not fail its own set-aside.
    fields          BYTEA NOT NULL,
    -- The last failure: a Postgres error, or why it could not be decoded.
    error           TEXT NOT NULL,
    -- Failed writes: the flusher's, then each failed replay.
    attempts        INTEGER NOT NULL CHECK (attempts >= 0),
    first_failed_at TIMESTAMPTZ NOT NULL,
    last_failed_at  TIMESTAMPTZ NOT NULL,
    -- `unresolved` until a replay wrote it.
    status          TEXT NOT NULL DEFAULT 'unresolved' CHECK (status IN ('unresolved', 'resolved')),
    resolved_at     TIMESTAMPTZ,
    CHECK ((status = 'resolved') = (resolved_at IS NOT NULL))
);
-- What the gauge, the alert, reconcile and the default listing read: empty
-- when all is well, so counting it costs nothing.
CREATE INDEX outbox_dead_letters_unresolved ON outbox_dead_letters (id) WHERE status = 'unresolved';
