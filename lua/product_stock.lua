-- product_stock.lua: seed a product's live stock, or restock it, each
-- atomically, in a batch.
--
-- seed: creates the product's hash from its Postgres row, once. It is
-- idempotent (a product already seeded is left alone, whatever it sold since),
-- so `POST /products` and every restock may call it again after a failure.
-- restock: adds to stock_total and available together, so
-- available + reserved + sold = stock_total holds after the step.
--
-- Batch protocol (src/executor.rs):
-- KEYS: 1 outbox stream, 2 unflushed-event counter, then per request (1):
--       product hash.
-- ARGV: 1 requests, 2 outbox bound (events), then per request (10):
--       now_ms, action (seed | restock), product_id, stock (the Postgres
--       row's, to seed), added (restock), name, price_cents, merchant_id,
--       max_per_buyer, stock ceiling. A restock of a product not yet seeded
--       (its creation answered 503) seeds it first.
-- Reply: per request {outcome, stock_total, available, reserved, sold}.
-- Outcomes: OK, STOCK_LIMIT,
--       OUTBOX_FULL. Events: product_restocked (product, added, stock_total, at).
local outbox, counter = KEYS[1], KEYS[2]
local n, bound = tonumber(ARGV[1]), tonumber(ARGV[2])
local pending = tonumber(redis.call('GET', counter) or '0')
local events, replies = {}, {}

local function stock(product, now, action, product_id, seed, amount, name, price, merchant, limit, ceiling)
  local exists = redis.call('EXISTS', product) == 1
  local total = tonumber(seed)
  if exists then
    total = tonumber(redis.call('HGET', product, 'stock_total'))
  end
  if action == 'restock' then
    if total + tonumber(amount) > tonumber(ceiling) then
      return {'STOCK_LIMIT', 0, 0, 0, 0}
    end
    if pending + #events / 2 >= bound then
      return {'OUTBOX_FULL', 0, 0, 0, 0}
    end
  end
  -- Writes start here.
  if not exists then
    redis.call('HSET', product, 'stock_total', seed, 'available', seed, 'reserved', 0, 'sold', 0,
      'price_cents', price, 'merchant_id', merchant, 'max_per_buyer', limit, 'name', name)
  end
  if action == 'restock' then
    redis.call('HINCRBY', product, 'stock_total', amount)
    redis.call('HINCRBY', product, 'available', amount)
    events[#events + 1] = 'product_restocked'
    -- %d, never tostring: it prints 1e+14 from 10^14 up.
    events[#events + 1] = table.concat({product_id, amount, string.format('%d', total + tonumber(amount)), now}, '\31')
  end
  local c = redis.call('HMGET', product, 'stock_total', 'available', 'reserved', 'sold')
  return {'OK', tonumber(c[1]), tonumber(c[2]), tonumber(c[3]), tonumber(c[4])}
end

for r = 0, n - 1 do
  local k, a = 2 + r, 2 + r * 10
  replies[r + 1] = stock(KEYS[k + 1], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6],
    ARGV[a + 7], ARGV[a + 8], ARGV[a + 9], ARGV[a + 10])
end

if #events > 0 then
  redis.call('XADD', outbox, '*', unpack(events))
  redis.call('INCRBY', counter, #events / 2)
end
return replies
