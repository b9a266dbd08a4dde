-- Purchases ingested from gaming platforms (POST /ingest), upserted by
-- transaction_id, and the per-player loyalty kept up to date in the same
-- transactions.

CREATE TABLE platform_purchases (
    transaction_id text        PRIMARY KEY,
    player_id      text        NOT NULL,
    platform       text        NOT NULL,
    item_id        text        NOT NULL,
    item_name      text        NOT NULL,
    item_type      text        NOT NULL,
    -- Minor units of `currency` (cents, yen): exact, never a float.
    price_minor    bigint      NOT NULL CHECK (price_minor >= 0),
    currency       text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    purchased_at   timestamptz NOT NULL,
    -- The line's unknown fields, verbatim; NULL when there were none.
    extras         jsonb,
    ingested_at    timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- One row per player and currency: spend totals cannot be added across
-- currencies. Kept by deltas in the batch that changes the purchases, so it
-- is always exactly the sum over platform_purchases.
CREATE TABLE player_spend (
    player_id   text   NOT NULL,
    currency    text   NOT NULL,
    purchases   bigint NOT NULL CHECK (purchases >= 0),
    total_minor bigint NOT NULL CHECK (total_minor >= 0),
    PRIMARY KEY (player_id, currency)
) WITH (fillfactor = 70);  -- room on each page, so most updates are HOT (no index write)
