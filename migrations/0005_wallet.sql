-- Wallet and bonus wagering: what the flusher copies out of Redis.
-- Redis decides every balance (lua/wallet_apply.lua); these tables record
-- it. Each insert is keyed by the outbox event id, so replaying an outbox
-- entry is a no-op.

-- The ledger, append-only: one row per money movement, bonus state changes
-- included (granted, completed, expired, forfeited). An account's balance is
-- the sum of its rows' deltas.
CREATE TABLE wallet_entries (
    transaction_id      TEXT PRIMARY KEY,          -- "<shard>-<seq>"
    event_id            TEXT NOT NULL UNIQUE,
    seq                 BIGINT NOT NULL,           -- order within the player's shard
    player_id           TEXT NOT NULL,
    currency            CHAR(3) NOT NULL,
    type                TEXT NOT NULL CHECK (type IN (
                            'deposit', 'withdrawal', 'bet', 'win', 'refund',
                            'bonus_granted', 'bonus_completed', 'bonus_expired', 'bonus_forfeited')),
    reference_id        TEXT NOT NULL,             -- the client's reference; the bonus id for bonus_*
    amount_minor        BIGINT NOT NULL CHECK (amount_minor >= 0),
    cash_delta_minor    BIGINT NOT NULL,
    bonus_delta_minor   BIGINT NOT NULL,
    cash_after_minor    BIGINT NOT NULL CHECK (cash_after_minor >= 0),
    bonus_after_minor   BIGINT NOT NULL CHECK (bonus_after_minor >= 0),
    bonus_id            TEXT,
    wagered_delta_minor BIGINT NOT NULL,
    detail              TEXT,                      -- the bet's game, or the bet reference of a win/refund
    created_at          TIMESTAMPTZ NOT NULL,
    -- References are scoped to their player (see ARCHITECTURE.md): Redis
    -- decided this already; Postgres refuses to record a reference twice
    -- even if Redis were ever wrong, and the flusher then fails loudly.
    CONSTRAINT wallet_entries_one_per_reference UNIQUE (player_id, reference_id, type)
);
CREATE INDEX wallet_entries_history ON wallet_entries (player_id, currency, seq DESC);

-- The latest balances the ledger reached, per account.
CREATE TABLE wallet_accounts (
    player_id    TEXT NOT NULL,
    currency     CHAR(3) NOT NULL,
    cash_minor   BIGINT NOT NULL CHECK (cash_minor >= 0),
    bonus_minor  BIGINT NOT NULL CHECK (bonus_minor >= 0),
    seq          BIGINT NOT NULL,                  -- the entry these balances follow
    updated_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (player_id, currency)
);

-- Every bonus and its latest state.
CREATE TABLE bonuses (
    bonus_id        TEXT PRIMARY KEY,
    player_id       TEXT NOT NULL,
    currency        CHAR(3) NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('active', 'completed', 'expired', 'forfeited')),
    amount_minor    BIGINT NOT NULL CHECK (amount_minor > 0),
    required_minor  BIGINT NOT NULL CHECK (required_minor > 0),
    wagered_minor   BIGINT NOT NULL CHECK (wagered_minor >= 0),
    max_bet_minor   BIGINT,
    contributions   TEXT NOT NULL,                 -- ",slots=100,table=20,"
    expires_at      TIMESTAMPTZ NOT NULL,
    version         BIGINT NOT NULL,               -- seq of the entry of the latest change
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX bonuses_account ON bonuses (player_id, currency);
