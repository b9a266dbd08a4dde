-- product_stock.lua: seed a product's live stock, or restock it, each
-- atomically, in a batch.
--
-- seed: creates the product's hash from its Postgres row, once. It is
-- idempotent (a product already seeded is left alone, whatever it sold since),
-- so `POST /products` and every restock may call it again after a failure.
-- restock: adds to stock_total and available together, so
-- available + reserved + sold = stock_total holds after the step. A restock
-- with an idempotency key records the key with its answer in the same step,
-- so repeating it (after a 503 whose outcome is unknown) replays the answer
-- instead of adding again; the same key with another amount is refused.
--
-- A product split over K > 1 buckets (STAMPEDE_STOCK_SPLIT, docs/orders.md):
-- seed creates its head, bucket 0, which records the split and holds
-- stock_total and the reserve (all the seeded stock: buckets refill from it
-- as orders need); bucket creates one other bucket (no stock of its own yet);
-- a restock adds to stock_total and the reserve together, on the head. The
-- split a product was seeded with is its own for good: a restock follows the
-- head's, not the caller's. `available` in the reply counts the reserve.
--
-- Batch protocol (lua/batch/prologue.lua, src/redis/executor.rs):
-- KEYS: 1 outbox stream, 2 unflushed-event counter, then per request (2):
--       product hash, idempotency record (a placeholder when there is no key).
-- ARGV: 1 requests, 2 outbox bound (events), then per request (14):
--       now_ms, action (seed | restock | bucket), product_id, stock (the
--       Postgres row's, to seed), added (restock), name, price_cents,
--       merchant_id, max_per_buyer, stock ceiling, idempotency key ('' for
--       none), request fingerprint, idempotency ttl_ms, split (K, recorded by
--       a product or a bucket seeded here). A restock of a product not
--       yet seeded (its creation answered 503) seeds it first.
-- Reply: per request {outcome, stock_total, available, reserved, sold,
--       replayed (0/1), split}.
-- Outcomes: OK, STOCK_LIMIT (both stored under the key and replayed),
--       IDEMPOTENCY_KEY_REUSED, OUTBOX_FULL (not stored: they change nothing).
-- Events: product_restocked (product, added, stock_total, at).
-- The split a product was seeded with (1 when it is not split).
local function split_of(product)
  return tonumber(redis.call('HGET', product, 'split') or '1')
end

-- One bucket of a split product other than its head: the catalogue fields
-- its orders need, and no stock until a refill brings some. Idempotent.
local function bucket(product, price, merchant, limit, split_arg)
  if redis.call('EXISTS', product) == 0 then
    -- Writes start here.
    redis.call('HSET', product, 'available', '0', 'reserved', '0', 'sold', '0', 'price_cents', price,
      'merchant_id', merchant, 'max_per_buyer', limit, 'split', split_arg, 'moves', '0')
  end
  return {'OK', 0, 0, 0, 0, 0, 1}
end

local function stock(product, idem, now, action, product_id, seed, amount, name, price, merchant, limit, ceiling,
                     key, fp, idem_ttl, split_arg)
  if action == 'bucket' then
    return bucket(product, price, merchant, limit, split_arg)
  end
  local keyed = action == 'restock' and key ~= ''
  if keyed then
    local seen = redis.call('HMGET', idem, 'fp', 'outcome', 'total', 'available', 'reserved', 'sold')
    if seen[1] then
      if seen[1] ~= fp then
        return {'IDEMPOTENCY_KEY_REUSED', 0, 0, 0, 0, 0, 1}
      end
      return {seen[2], tonumber(seen[3]), tonumber(seen[4]), tonumber(seen[5]), tonumber(seen[6]), 1,
        split_of(product)}
    end
  end
  local exists = redis.call('EXISTS', product) == 1
  local total = tonumber(seed)
  if exists then
    total = tonumber(redis.call('HGET', product, 'stock_total'))
  end
  local reply
  local split = exists and split_of(product) or tonumber(split_arg)
  if action == 'restock' and total + tonumber(amount) > tonumber(ceiling) then
    reply = {'STOCK_LIMIT', 0, 0, 0, 0, 0, split}
  elseif action == 'restock' and outbox_full() then
    return {'OUTBOX_FULL', 0, 0, 0, 0, 0, split}
  else
    -- Writes start here.
    if not exists and split > 1 then
      redis.call('HSET', product, 'stock_total', seed, 'available', '0', 'reserved', '0', 'sold', '0', 'reserve', seed,
        'price_cents', price, 'merchant_id', merchant, 'max_per_buyer', limit, 'name', name, 'split', split,
        'moves', '0')
    elseif not exists then
      redis.call('HSET', product, 'stock_total', seed, 'available', seed, 'reserved', '0', 'sold', '0',
        'price_cents', price, 'merchant_id', merchant, 'max_per_buyer', limit, 'name', name)
    end
    if action == 'restock' then
      redis.call('HINCRBY', product, 'stock_total', amount)
      redis.call('HINCRBY', product, split > 1 and 'reserve' or 'available', amount)
      -- %d, never tostring: it prints 1e+14 from 10^14 up.
      emit('product_restocked', {product_id, amount, string.format('%d', total + tonumber(amount)), now})
    end
    local c = redis.call('HMGET', product, 'stock_total', 'available', 'reserved', 'sold', 'reserve')
    reply = {'OK', tonumber(c[1]), tonumber(c[2]) + tonumber(c[5] or '0'), tonumber(c[3]), tonumber(c[4]), 0, split}
  end
  if keyed then
    redis.call('HSET', idem, 'fp', fp, 'outcome', reply[1], 'total', reply[2], 'available', reply[3],
      'reserved', reply[4], 'sold', reply[5])
    redis.call('PEXPIRE', idem, idem_ttl)
  end
  return reply
end

for r = 0, n - 1 do
  local k, a = 2 + r * 2, 2 + r * 14
  replies[r + 1] = stock(KEYS[k + 1], KEYS[k + 2], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5],
    ARGV[a + 6], ARGV[a + 7], ARGV[a + 8], ARGV[a + 9], ARGV[a + 10], ARGV[a + 11], ARGV[a + 12], ARGV[a + 13],
    ARGV[a + 14])
end
