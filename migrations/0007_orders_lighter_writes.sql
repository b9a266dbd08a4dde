-- Two per-row costs of the flusher's order writes, measured under
-- `loadtest/run.sh orders` (pg_stat_statements and perf), removed.
--
-- The foreign key to products ran once per order row as
-- `SELECT ... FROM products ... FOR KEY SHARE`: every order of a product
-- locked the same product row, from the concurrent batches of all outbox
-- shards. Nothing is lost without it: a product row is durable before its
-- 201, Redis refuses an order for a product it has not seeded from that row,
-- so the flusher only writes orders of existing products, and products are
-- never deleted.
ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_product_id_fkey;

-- The unique index on event_id guarded nothing: a replayed event is already
-- a no-op through the upsert on the order id, whose status only ever leaves
-- `reserved` once; and a double order would carry another order id, which
-- no event-id index could catch. The column stays, to say which event set
-- the current status.
ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_event_id_key;
