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
-- Batch protocol (lua/batch/prologue.lua, src/redis/executor.rs):
-- KEYS: 1 outbox stream, 2 unflushed-event counter, then per request (2):
--       product hash, idempotency record (a placeholder when there is no key).
-- ARGV: 1 requests, 2 outbox bound (events), then per request (13):
--       now_ms, action (seed | restock), product_id, stock (the Postgres
--       row's, to seed), added (restock), name, price_cents, merchant_id,
--       max_per_buyer, stock ceiling, idempotency key ('' for none), request
--       fingerprint, idempotency ttl_ms. A restock of a product not yet
--       seeded (its creation answered 503) seeds it first.
-- Reply: per request {outcome, stock_total, available, reserved, sold,
--       replayed (0/1)}.
-- Outcomes: OK, STOCK_LIMIT (both stored under the key and replayed),
--       IDEMPOTENCY_KEY_REUSED, OUTBOX_FULL (not stored: they change nothing).
-- Events: product_restocked (product, added, stock_total, at).
local function stock(product, idem, now, action, product_id, seed, amount, name, price, merchant, limit, ceiling,
                     key, fp, idem_ttl)
  local keyed = action == 'restock' and key ~= ''
  if keyed then
    local seen = redis.call('HMGET', idem, 'fp', 'outcome', 'total', 'available', 'reserved', 'sold')
    if seen[1] then
      if seen[1] ~= fp then
        return {'IDEMPOTENCY_KEY_REUSED', 0, 0, 0, 0, 0}
      end
      return {seen[2], tonumber(seen[3]), tonumber(seen[4]), tonumber(seen[5]), tonumber(seen[6]), 1}
    end
  end
  local exists = redis.call('EXISTS', product) == 1
  local total = tonumber(seed)
  if exists then
    total = tonumber(redis.call('HGET', product, 'stock_total'))
  end
  local reply
  if action == 'restock' and total + tonumber(amount) > tonumber(ceiling) then
    reply = {'STOCK_LIMIT', 0, 0, 0, 0, 0}
  elseif action == 'restock' and outbox_full() then
    return {'OUTBOX_FULL', 0, 0, 0, 0, 0}
  else
    -- Writes start here.
    if not exists then
      redis.call('HSET', product, 'stock_total', seed, 'available', seed, 'reserved', 0, 'sold', 0,
        'price_cents', price, 'merchant_id', merchant, 'max_per_buyer', limit, 'name', name)
    end
    if action == 'restock' then
      redis.call('HINCRBY', product, 'stock_total', amount)
      redis.call('HINCRBY', product, 'available', amount)
      -- %d, never tostring: it prints 1e+14 from 10^14 up.
      emit('product_restocked', {product_id, amount, string.format('%d', total + tonumber(amount)), now})
    end
    local c = redis.call('HMGET', product, 'stock_total', 'available', 'reserved', 'sold')
    reply = {'OK', tonumber(c[1]), tonumber(c[2]), tonumber(c[3]), tonumber(c[4]), 0}
  end
  if keyed then
    redis.call('HSET', idem, 'fp', fp, 'outcome', reply[1], 'total', reply[2], 'available', reply[3],
      'reserved', reply[4], 'sold', reply[5])
    redis.call('PEXPIRE', idem, idem_ttl)
  end
  return reply
end

for r = 0, n - 1 do
  local k, a = 2 + r * 2, 2 + r * 13
  replies[r + 1] = stock(KEYS[k + 1], KEYS[k + 2], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5],
    ARGV[a + 6], ARGV[a + 7], ARGV[a + 8], ARGV[a + 9], ARGV[a + 10], ARGV[a + 11], ARGV[a + 12], ARGV[a + 13])
end
