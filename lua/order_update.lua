-- order_update.lua: confirm, cancel or expire a batch of orders, each
-- atomically and in order, exactly as if each came alone.
--
-- A hold leaves `reserved` once, by whichever request comes first: confirm
-- (to completed), cancel (to cancelled) or expiry (to expired, by the expiry
-- task of any engine, or by a confirm or cancel that arrives after
-- expires_at). The status check and the move of stock are one step, so a
-- hold's stock is never returned twice and a confirm racing an expiry has
-- exactly one winner. Every step keeps available + reserved + sold =
-- stock_total.
--
-- Redis does not roll back a script that fails half-way, so each request's
-- checks come before its writes, and nothing here raises an error: inputs
-- were validated by the engine.
--
-- Batch protocol (lua/batch/prologue.lua, src/redis/executor.rs):
-- KEYS: 1 outbox stream, 2 unflushed-event counter, then per request (5):
--       order hash, product hash, product's buyers hash, shard's holds zset,
--       idempotency record (a placeholder when there is no key).
-- ARGV: 1 requests, 2 outbox bound (events), then per request (8):
--       now_ms, action (confirm | cancel | expire), order_id, product_id,
--       idempotency key ('' for none), request fingerprint, idempotency
--       ttl_ms, order record ttl_ms.
-- Reply: per request {outcome, replayed (0/1), id, product_id, quantity,
--       buyer_id, status, total_cents, created_ms, expires_ms}; the order
--       fields are '' for refusals.
-- Outcomes: OK, ORDER_NOT_FOUND, ORDER_EXPIRED, ORDER_CANCELLED,
--       ORDER_COMPLETED (stored under the idempotency key and replayed),
--       IDEMPOTENCY_KEY_REUSED, OUTBOX_FULL (not stored); for expire:
--       EXPIRED, SETTLED (no longer reserved), NOT_DUE.
-- Events: order, with the order's new status (as in order_create.lua).
local RECORD = {'fp', 'outcome', 'id', 'product', 'qty', 'buyer', 'status', 'total', 'created', 'expires'}
local BLANK = {'', '', '', '', '', '', '', ''}

local function reply_of(outcome, order_id, o, status)
  if not o then
    return {outcome, 0, unpack(BLANK)}
  end
  return {outcome, 0, order_id, o[1], o[2], o[3], status, o[5], o[6], o[7]}
end

local function update(order_key, product, buyers, holds, idem, now, action, order_id, product_id, key, fp, idem_ttl,
                      order_ttl)
  if key ~= '' then
    local seen = redis.call('HMGET', idem, unpack(RECORD))
    if seen[1] then
      if seen[1] ~= fp then
        return {'IDEMPOTENCY_KEY_REUSED', 0, unpack(BLANK)}, false
      end
      return {seen[2], 1, seen[3], seen[4], seen[5], seen[6], seen[7], seen[8], seen[9], seen[10]}, false
    end
  end
  local member = product_id .. ':' .. order_id
  -- product, qty, buyer, status, total, created, expires, idempotency key
  local o = redis.call('HMGET', order_key, 'product', 'qty', 'buyer', 'status', 'total', 'created', 'expires', 'key')
  if not o[1] or o[1] ~= product_id then
    if action == 'expire' then
      redis.call('ZREM', holds, member)
      return {'SETTLED', 0, unpack(BLANK)}, false
    end
    return reply_of('ORDER_NOT_FOUND'), true
  end
  local status = o[4]
  local due = status == 'reserved' and tonumber(now) >= tonumber(o[7])

  -- What this request does: the new status (nil: none) and its outcome.
  local to, outcome
  if status == 'reserved' and due then
    to = 'expired'
    outcome = ({confirm = 'ORDER_EXPIRED', cancel = 'OK', expire = 'EXPIRED'})[action]
  elseif status == 'reserved' then
    to = ({confirm = 'completed', cancel = 'cancelled'})[action]
    outcome = action == 'expire' and 'NOT_DUE' or 'OK'
  elseif action == 'expire' then
    redis.call('ZREM', holds, member)
    return {'SETTLED', 0, unpack(BLANK)}, false
  elseif action == 'confirm' then
    outcome = ({completed = 'OK', expired = 'ORDER_EXPIRED', cancelled = 'ORDER_CANCELLED'})[status]
  else
    outcome = status == 'completed' and 'ORDER_COMPLETED' or 'OK'
  end

  if to then
    -- Shed rather than grow the outbox without bound while Postgres is away.
    if outbox_full() then
      return {'OUTBOX_FULL', 0, unpack(BLANK)}, false
    end
    -- Writes start here.
    -- The order's quantity as the strings redis.call takes (a Lua number
    -- would be printed with %.14g first).
    local count = tonumber(o[2])
    local qty, less = string.format('%d', count), string.format('%d', -count)
    redis.call('HINCRBY', product, 'reserved', less)
    if to == 'completed' then
      redis.call('HINCRBY', product, 'sold', qty)
    else
      redis.call('HINCRBY', product, 'available', qty)
      if tonumber(redis.call('HGET', product, 'max_per_buyer') or '0') > 0 then
        redis.call('HINCRBY', buyers, o[3], less)
      end
    end
    redis.call('ZREM', holds, member)
    redis.call('HSET', order_key, 'status', to, 'updated', now)
    redis.call('PEXPIRE', order_key, order_ttl)
    status = to
    emit('order', {order_id, o[1], o[3], o[2], o[5], to, o[6], o[7], o[8], now})
  end
  if outcome == 'OK' or outcome == 'EXPIRED' or outcome == 'NOT_DUE' then
    return reply_of(outcome, order_id, o, status), true
  end
  return reply_of(outcome), true
end

for r = 0, n - 1 do
  local k, a = 2 + r * 5, 2 + r * 8
  local key, fp, idem = ARGV[a + 5], ARGV[a + 6], KEYS[k + 5]
  local reply, store = update(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], idem, ARGV[a + 1], ARGV[a + 2],
    ARGV[a + 3], ARGV[a + 4], key, fp, ARGV[a + 7], ARGV[a + 8])
  if store and key ~= '' then
    redis.call('HSET', idem, 'fp', fp, 'outcome', reply[1], 'id', reply[3], 'product', reply[4], 'qty', reply[5],
      'buyer', reply[6], 'status', reply[7], 'total', reply[8], 'created', reply[9], 'expires', reply[10])
    redis.call('PEXPIRE', idem, ARGV[a + 7])
  end
  replies[r + 1] = reply
end
