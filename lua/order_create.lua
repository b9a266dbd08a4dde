-- order_create.lua: decide a batch of orders, each atomically and in order,
-- exactly as if each came alone (a later order sees the stock an earlier one
-- took).
--
-- One request is decided whole here: its idempotency key, the stock, the
-- buyer's count, the order record, the hold's expiry entry and the outbox
-- event. So a duplicate sent concurrently finds the first one's record and
-- never runs twice, and the stock counters keep
-- available + reserved + sold = stock_total after every step.
--
-- A product split over several slots (STAMPEDE_STOCK_SPLIT, docs/orders.md)
-- is decided here too, one bucket at a time: the product hash is the buyer's
-- bucket, which holds the buyer's count, and the order is recorded with its
-- bucket. Bucket 0 also holds the product's reserve (`reserve`): an order
-- there that its available cannot serve takes what it lacks, plus a share,
-- from the reserve in the same step. Another bucket that cannot serve it
-- answers REFILL with what it lacks, taking nothing, unless the engine says
-- a rebalance already found nothing to move (refill 0): then OUT_OF_STOCK.
-- A product that is not split has no reserve and is refused as always.
--
-- Redis does not roll back a script that fails half-way, so each request's
-- checks come before its writes, and nothing here raises an error: inputs
-- were validated by the engine.
--
-- Batch protocol (lua/batch/prologue.lua, src/redis/executor.rs):
-- KEYS: 1 outbox stream, 2 unflushed-event counter, then per request (5):
--       product hash, product's buyers hash, order hash, shard's holds zset,
--       idempotency record (a placeholder when there is no key).
-- ARGV: 1 requests, 2 outbox bound (events), then per request (13):
--       now_ms, product_id, order_id, buyer_id, quantity, hold_ms (0: buy now),
--       idempotency key ('' for none), request fingerprint, idempotency ttl_ms,
--       order record ttl_ms, bucket ('' when not split), refill (1: answer
--       REFILL when short, 0: OUT_OF_STOCK), most a refill moves beyond the
--       need.
-- Reply: per request {outcome, replayed (0/1), id, product_id, quantity,
--       buyer_id, status, total_cents, created_ms, expires_ms ('' for none)}
--       for an order, {outcome, replayed} for a refusal (most answers once a
--       product sells out: the short reply is less to encode and decode);
--       {'REFILL', 0, lacking} for a bucket short of stock.
-- Outcomes: OK, OUT_OF_STOCK, BUYER_LIMIT_REACHED, PRODUCT_NOT_FOUND (all
--       stored under the idempotency key and replayed), IDEMPOTENCY_KEY_REUSED,
--       OUTBOX_FULL, REFILL (not stored: they change nothing).
-- Events: order (id, product, buyer, quantity, total, status, created_ms,
--       expires_ms, idempotency key, at_ms).
local RECORD = {'fp', 'outcome', 'id', 'product', 'qty', 'buyer', 'status', 'total', 'created', 'expires'}
-- The product hashes (or buckets) this call has read, by key, kept equal to
-- Redis by this call's own writes (nothing else runs during a script): a
-- call's orders are mostly for a few products, and once one sells out every
-- later order for it only reads it.
local products = {}

local function order(product, buyers, order_key, holds, idem, now, product_id, order_id, buyer, qty_arg,
                     hold_ms, key, fp, idem_ttl, order_ttl, bucket, refill, refill_max)
  if key ~= '' then
    local seen = redis.call('HMGET', idem, unpack(RECORD))
    if seen[1] then
      if seen[1] ~= fp then
        return {'IDEMPOTENCY_KEY_REUSED', 0}
      end
      if seen[2] ~= 'OK' then
        return {seen[2], 1}
      end
      return {seen[2], 1, seen[3], seen[4], seen[5], seen[6], seen[7], seen[8], seen[9], seen[10]}
    end
  end
  -- Shed rather than grow the outbox without bound while Postgres is away.
  if outbox_full() then
    return {'OUTBOX_FULL', 0}
  end

  local qty = tonumber(qty_arg)
  local p = products[product]
  if not p then
    p = redis.call('HMGET', product, 'available', 'price_cents', 'max_per_buyer', 'reserve', 'split', 'reserved',
      'sold')
    products[product] = p
  end
  local outcome = 'OK'
  local bought, draw, lacking = 0, 0, 0
  if not p[1] then
    outcome = 'PRODUCT_NOT_FOUND'
  else
    local limit = tonumber(p[3])
    if limit > 0 then
      bought = tonumber(redis.call('HGET', buyers, buyer) or '0')
    end
    if limit > 0 and bought + qty > limit then
      outcome = 'BUYER_LIMIT_REACHED'
    elseif tonumber(p[1]) < qty then
      local available, reserve = tonumber(p[1]), tonumber(p[4] or '0')
      if available + reserve >= qty then
        -- What it lacks, plus its share of the reserve (at most refill_max).
        local share = math.min(math.ceil(reserve / tonumber(p[5] or '1')), tonumber(refill_max))
        draw = math.min(reserve, math.max(qty - available, share))
      elseif refill == '1' then
        outcome, lacking = 'REFILL', qty - available - reserve
      else
        outcome = 'OUT_OF_STOCK'
      end
    end
  end

  local reply
  if outcome == 'REFILL' then
    return {'REFILL', 0, lacking}
  elseif outcome ~= 'OK' then
    reply = {outcome, 0}
  else
    -- Writes start here. Money and times are written with %d: tostring
    -- prints 1e+14 from 10^14 up, which no reader parses as an integer.
    -- Both stay below 2^53 (limits.rs), so the doubles hold them exactly.
    local total = string.format('%d', qty * tonumber(p[2]))
    local status, expires = 'completed', ''
    -- The product's counters, read above, are written back in one HSET:
    -- one command instead of two or four HINCRBYs, in the same atomic call.
    -- Every argument is a string: redis.call prints a Lua number with
    -- %.14g, which costs more than the command.
    local available = string.format('%d', tonumber(p[1]) + draw - qty)
    -- The counter the order's quantity moves to, and its place in p.
    local held, held_at = 'sold', 7
    if tonumber(hold_ms) > 0 then
      status, expires = 'reserved', string.format('%d', tonumber(now) + tonumber(hold_ms))
      held, held_at = 'reserved', 6
      redis.call('ZADD', holds, expires, product_id .. ':' .. order_id)
    end
    local held_count = string.format('%d', tonumber(p[held_at] or '0') + qty)
    if draw > 0 then
      local reserve = string.format('%d', tonumber(p[4]) - draw)
      redis.call('HSET', product, 'available', available, held, held_count, 'reserve', reserve)
      p[4] = reserve
    else
      redis.call('HSET', product, 'available', available, held, held_count)
    end
    p[1], p[held_at] = available, held_count
    -- Counted only where a limit applies: the hash would otherwise grow by
    -- one field per buyer for nothing.
    if tonumber(p[3]) > 0 then
      redis.call('HINCRBY', buyers, buyer, qty_arg)
    end
    redis.call('HSET', order_key, 'product', product_id, 'qty', qty_arg, 'buyer', buyer, 'status', status,
      'total', total, 'created', now, 'expires', expires, 'key', key, 'updated', now)
    if bucket ~= '' then
      redis.call('HSET', order_key, 'bucket', bucket)
    end
    redis.call('PEXPIRE', order_key, order_ttl)
    emit('order', {order_id, product_id, buyer, qty_arg, total, status, now, expires, key, now})
    reply = {'OK', 0, order_id, product_id, qty_arg, buyer, status, total, now, expires}
  end
  if key ~= '' then
    if outcome == 'OK' then
      redis.call('HSET', idem, 'fp', fp, 'outcome', 'OK', 'id', reply[3], 'product', reply[4], 'qty', reply[5],
        'buyer', reply[6], 'status', reply[7], 'total', reply[8], 'created', reply[9], 'expires', reply[10])
    else
      redis.call('HSET', idem, 'fp', fp, 'outcome', outcome)
    end
    redis.call('PEXPIRE', idem, idem_ttl)
  end
  return reply
end

for r = 0, n - 1 do
  local k, a = 2 + r * 5, 2 + r * 13
  replies[r + 1] = order(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5],
    ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8],
    ARGV[a + 9], ARGV[a + 10], ARGV[a + 11], ARGV[a + 12], ARGV[a + 13])
end
