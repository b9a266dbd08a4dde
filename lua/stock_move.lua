-- stock_move.lua: the steps that move stock between the parts of a product
-- split over several slots (STAMPEDE_STOCK_SPLIT, docs/orders.md): its
-- reserve (on bucket 0's slot) and its buckets. A move is three calls, each
-- on one slot, keyed by a transfer id, the giver first:
--
-- give: on the giver's slot. Lowers the reserve, or the bucket's available,
--       by what it gives, and records the transfer as in transit: the
--       product's transit hash (tid -> taker|quantity|created) and the
--       shard's transits zset (scored by creation, for the sweeper). It gives
--       what the taker lacks, or its share if more (the reserve: 1/K of it; a
--       bucket: half its available), the share at most refill_max. EMPTY
--       when it has nothing; BUSY when it already has transit_max transfers
--       in transit (the transit hash stays small enough to read whole).
-- take: on the taker's slot. Raises its available by the quantity and
--       records the transfer id as received, once: a repeat finds the receipt
--       and changes nothing, so the sweeper may finish a transfer whichever
--       step a crash cut it after. Receipts are forgotten after the retention
--       (a bounded number per call); a take for a transfer older than the
--       newest forgotten receipt is refused (STALE) rather than risk a second
--       credit, and the stock stays in transit, counted, for an operator.
-- drop: on the giver's slot, once taken: removes the in-transit record.
--
-- So stock is counted once at every instant: in the giver's counters, then in
-- transit (given and not yet received), then in the taker's; a transit
-- record whose id the taker has received counts no more, which is why drop
-- changes no count. give and take bump the slot's `moves`: a reader of every
-- slot compares them before and after, so its sum is taken only when no
-- stock crossed slots while it read.
--
-- Redis does not roll back a script that fails half-way, so each request's
-- checks come before its writes, and nothing here raises an error: inputs
-- were validated by the engine. Nothing here is an event: stock moving
-- between the parts of a product changes none of Postgres's counts.
--
-- Batch protocol (lua/batch/prologue.lua, src/redis/executor.rs):
-- KEYS: 1 outbox stream, 2 unflushed-event counter, then per request (4):
--       the product's hash on this slot (bucket, or head), its transit hash,
--       its receipts zset, the shard's transits zset.
-- ARGV: 1 requests, 2 outbox bound (events), then per request (11):
--       op (give | take | drop), now_ms, product_id, transfer id, taker
--       (bucket index), quantity (give: what the taker lacks; take: what was
--       given), source (give: reserve | bucket) or created_ms (take),
--       refill_max, transit_max, receipt retention_ms, receipts forgotten per
--       call.
-- Reply: give {'GIVEN', quantity}, {'EMPTY', 0} or {'BUSY', 0}; take
--       {'TAKEN'}, {'DONE'} (received before), {'NO_BUCKET'} or {'STALE'};
--       drop {'OK'}.

local function give(product, transit, index, a)
  local now, product_id, tid, taker, need, source = ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5],
    tonumber(ARGV[a + 6]), ARGV[a + 7]
  local p = redis.call('HMGET', product, 'available', 'reserve', 'split')
  local field = source == 'reserve' and 'reserve' or 'available'
  local spare = tonumber((source == 'reserve' and p[2] or p[1]) or '0')
  if spare <= 0 then
    return {'EMPTY', 0}
  end
  if redis.call('HLEN', transit) >= tonumber(ARGV[a + 9]) then
    return {'BUSY', 0}
  end
  local share
  if source == 'reserve' then
    share = math.ceil(spare / tonumber(p[3] or '1'))
  else
    share = math.floor(spare / 2)
  end
  local q = math.min(spare, math.max(need, math.min(share, tonumber(ARGV[a + 8]))))

  -- Writes start here. Counts are written with %d, never tostring.
  local record = taker .. S .. string.format('%d', q) .. S .. now
  redis.call('HINCRBY', product, field, string.format('%d', -q))
  redis.call('HINCRBY', product, 'moves', '1')
  redis.call('HSET', transit, tid, record)
  redis.call('ZADD', index, now, product_id .. S .. tid .. S .. record)
  return {'GIVEN', q}
end

local function take(product, receipts, a)
  local now, tid, q, created = tonumber(ARGV[a + 2]), ARGV[a + 4], ARGV[a + 6], tonumber(ARGV[a + 7])
  if redis.call('ZSCORE', receipts, tid) then
    return {'DONE'}
  end
  local p = redis.call('HMGET', product, 'available', 'receipts_forgotten_to')
  if not p[1] then
    return {'NO_BUCKET'}
  end
  if created <= tonumber(p[2] or '-1') then
    return {'STALE'}
  end

  -- Writes start here.
  redis.call('HINCRBY', product, 'available', string.format('%d', q))
  redis.call('HINCRBY', product, 'moves', '1')
  redis.call('ZADD', receipts, now, tid)
  local old = redis.call('ZRANGEBYSCORE', receipts, '-inf', now - tonumber(ARGV[a + 10]), 'WITHSCORES',
    'LIMIT', 0, tonumber(ARGV[a + 11]))
  if #old > 0 then
    for i = 1, #old, 2 do
      redis.call('ZREM', receipts, old[i])
    end
    redis.call('HSET', product, 'receipts_forgotten_to', old[#old])
  end
  return {'TAKEN'}
end

local function drop(transit, index, a)
  local product_id, tid = ARGV[a + 3], ARGV[a + 4]
  local record = redis.call('HGET', transit, tid)
  if record then
    -- Writes start here.
    redis.call('HDEL', transit, tid)
    redis.call('ZREM', index, product_id .. S .. tid .. S .. record)
  end
  return {'OK'}
end

for r = 0, n - 1 do
  local k, a = 2 + r * 4, 2 + r * 11
  local product, transit, receipts, index = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local op = ARGV[a + 1]
  if op == 'give' then
    replies[r + 1] = give(product, transit, index, a)
  elseif op == 'take' then
    replies[r + 1] = take(product, receipts, a)
  else
    replies[r + 1] = drop(transit, index, a)
  end
end
