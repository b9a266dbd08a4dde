-- Limited-stock orders. Redis decides (lua/order_create.lua,
-- lua/order_update.lua); the flusher copies the outcome here. `products` is
-- the exception: its row is written by `POST /products` before Redis is
-- seeded, so an order can never reference a product Postgres lacks.

CREATE TABLE products (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT NOT NULL,
    price_cents   BIGINT NOT NULL CHECK (price_cents >= 0),
    merchant_id   BIGINT NOT NULL CHECK (merchant_id >= 0),
    -- 0: no per-buyer limit.
    max_per_buyer INTEGER NOT NULL DEFAULT 0 CHECK (max_per_buyer >= 0),
    -- Initial stock plus every flushed restock.
    stock_total   BIGINT NOT NULL CHECK (stock_total >= 0),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per restock event: replaying an outbox entry inserts nothing and so
-- raises stock_total once.
CREATE TABLE product_restocks (
    event_id     TEXT PRIMARY KEY,
    product_id   BIGINT NOT NULL REFERENCES products (id),
    added        BIGINT NOT NULL CHECK (added > 0),
    stock_total  BIGINT NOT NULL,
    restocked_at TIMESTAMPTZ NOT NULL
);

-- The seed's columns plus status, expires_at, idempotency key and event id.
CREATE TABLE orders (
    id                 UUID PRIMARY KEY,
    product_id         BIGINT NOT NULL REFERENCES products (id),
    buyer_id           TEXT NOT NULL,
    quantity           INTEGER NOT NULL CHECK (quantity > 0),
    total_amount_cents BIGINT NOT NULL CHECK (total_amount_cents >= 0),
    status             TEXT NOT NULL
                       CHECK (status IN ('completed', 'reserved', 'cancelled', 'expired')),
    created_at         TIMESTAMPTZ NOT NULL,
    -- Holds only: when an unconfirmed hold expires.
    expires_at         TIMESTAMPTZ,
    updated_at         TIMESTAMPTZ NOT NULL,
    idempotency_key    TEXT,
    -- The outbox event that set the current status: a replayed event finds
    -- its row and changes nothing.
    event_id           TEXT NOT NULL UNIQUE
);
-- No secondary indexes: every order row costs the flusher one heap insert
-- and an entry in each index, on the machine that also runs Redis. Orders are
-- read by id (the primary key); reconcile aggregates them all, a sequential
-- scan either way. idempotency_key is not unique: a key may be used again
-- once its retention (STAMPEDE_IDEMPOTENCY_TTL_SECS) is over, as with Stripe.
-- Within it, Redis answers a repeated key from its record in the same script
-- call that would create the order, so no second order is made.
