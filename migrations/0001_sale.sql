-- Flash sales: what the write-behind flusher copies out of Redis.
-- Every table is keyed so that replaying an outbox entry is a no-op:
-- event_id is "<shard>-<stream entry id>", unique for the life of the stream.

CREATE TABLE sales (
    sale_id        BIGINT PRIMARY KEY,
    starts_at      TIMESTAMPTZ NOT NULL,
    ends_at        TIMESTAMPTZ NOT NULL,
    items          INTEGER NOT NULL CHECK (items > 0),
    per_user_limit INTEGER NOT NULL CHECK (per_user_limit > 0),
    opened_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE checkout_attempts (
    event_id     TEXT PRIMARY KEY,
    sale_id      BIGINT NOT NULL,
    user_id      TEXT NOT NULL,
    item_id      BIGINT NOT NULL,
    outcome      TEXT NOT NULL,
    code         TEXT,
    expires_at   TIMESTAMPTZ,
    attempted_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX checkout_attempts_sale_user ON checkout_attempts (sale_id, user_id);

CREATE TABLE purchases (
    event_id     TEXT PRIMARY KEY,
    sale_id      BIGINT NOT NULL,
    item_id      BIGINT NOT NULL,
    user_id      TEXT NOT NULL,
    code         TEXT NOT NULL UNIQUE,
    purchased_at TIMESTAMPTZ NOT NULL,
    -- The last line against an oversell: Redis decides, Postgres refuses to
    -- record the same item twice even if Redis were ever wrong.
    CONSTRAINT purchases_one_per_item UNIQUE (sale_id, item_id)
);
CREATE INDEX purchases_sale_user ON purchases (sale_id, user_id);
