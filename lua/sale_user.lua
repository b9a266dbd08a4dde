-- sale_user.lua: the user's side of a sale split over several parts
-- (STAMPEDE_SALE_SPLIT > 1), on the user's part. checkout.lua and
-- purchase.lua decide a sale that lives on one part; a split sale decides
-- the user's counters here and the item on the item's part (sale_item.lua),
-- each on its own hash slot, so the per-user limit is kept exact across
-- slots by a reservation: a unit of the limit is reserved here before the
-- item's part may spend the code, and confirmed (or released) here after.
--
-- The user's counters, in the part's users hash: p:<user> purchased,
-- r:<user> reserved (purchases in flight), c:<user> codes held. The rule
-- kept at every instant: p + r <= limit. Each code has a ticket on the
-- user's part, "sale|user|item|expires|limit" then "|reserved|at",
-- "|bought|at" or "|void|<reason>" once it moves; reserved codes are also in
-- the part's reserving zset (score: when reserved) where the sweeper finds
-- the ones a crash or an unknown outcome left behind.
--
-- ops:
-- issue:   the user's checks of a checkout, once the item's part has
--          passed it and written the code (USER_LIMIT_REACHED counting the
--          reserved, TOO_MANY_CHECKOUTS); OK writes the ticket and counts the
--          code. Records the attempt, accepted or refused: the item's part
--          recorded nothing for an attempt it let through. Opens the part.
-- reserve: p + r < limit, else USER_LIMIT_REACHED; the code's ticket moves
--          to reserved and r grows. A repeat for a reserved code answers
--          RESERVED again (the existing reservation); a bought one CODE_USED,
--          a void one its reason.
-- settle:  with the item part's verdict, which is final ('spent', or
--          'void:<reason>' once the code can never be spent): a reserved
--          ticket moves to bought (r -> p) or void (r released). Idempotent:
--          every caller of one code carries the same verdict.
--
-- Redis does not roll back a script that fails half-way, so each request's
-- reads and checks come before its writes, and nothing here raises an error:
-- inputs were validated by the engine.
--
-- Batch protocol (lua/batch/prologue.lua, src/redis/executor.rs):
-- KEYS: 1 outbox stream, 2 unflushed-event counter, then per request (4):
--       part's meta hash, users hash, the code's ticket, reserving zset.
-- ARGV: 1 requests, 2 outbox bound (events), then per request (16):
--       op, now_ms, sale_id (issue: the window's; reserve: the active one),
--       starts_ms, ends_ms, items, per_user_limit, user_id, item_id, code,
--       expires_ms, code_ttl_ms, sale_ttl_ms, max_codes_per_user, refused
--       attempts' bound (events), verdict (settle).
-- Reply: issue {outcome}; reserve {'RESERVED', item,
--       purchased} or {refusal}; settle {'OK', purchased}.
-- Events: sale_opened, checkout (passed by the item's checks).
local sales = {}

local function issue(meta, users, ticket, zset, a)
  local now, sale_id, item_arg, user = ARGV[a + 2], ARGV[a + 3], ARGV[a + 9], ARGV[a + 8]
  if outbox_full() then
    return {'OUTBOX_FULL'}
  end
  local sale = sales[meta]
  if not sale then
    local stored = redis.call('HMGET', meta, 'items', 'limit')
    sale = {opening = stored[1] == false, items = stored[1], limit = stored[2]}
    sales[meta] = sale
  end
  local limit = sale.opening and ARGV[a + 7] or sale.limit
  local counts = redis.call('HMGET', users, 'p:' .. user, 'r:' .. user, 'c:' .. user)
  local outcome = 'OK'
  if tonumber(counts[1] or '0') + tonumber(counts[2] or '0') >= tonumber(limit) then
    outcome = 'USER_LIMIT_REACHED'
  elseif tonumber(counts[3] or '0') >= tonumber(ARGV[a + 14]) then
    outcome = 'TOO_MANY_CHECKOUTS'
  end
  if outcome ~= 'OK' and outbox_full(tonumber(ARGV[a + 15])) then
    return {'REFUSALS_FULL'}
  end

  -- Writes start here.
  if sale.opening then
    local items = ARGV[a + 6]
    redis.call('HSET', meta, 'items', items, 'limit', limit, 'starts_ms', ARGV[a + 4], 'ends_ms', ARGV[a + 5])
    redis.call('PEXPIRE', meta, ARGV[a + 13])
    redis.call('HSET', users, '_', '')
    redis.call('PEXPIRE', users, ARGV[a + 13])
    -- A member no range of due reservations reaches creates the zset now,
    -- so it gets its expiry once.
    redis.call('ZADD', zset, 'inf', '_')
    redis.call('PEXPIRE', zset, ARGV[a + 13])
    sale.opening, sale.items, sale.limit = false, items, limit
    -- Every part records the opening; the sink keeps the first per sale.
    emit('sale_opened', {sale_id, ARGV[a + 4], ARGV[a + 5], items, limit, now})
  end
  local issued_code, expires = '', ''
  if outcome == 'OK' then
    issued_code, expires = ARGV[a + 10], ARGV[a + 11]
    redis.call('SET', ticket, sale_id .. S .. user .. S .. item_arg .. S .. expires .. S .. limit, 'PX', ARGV[a + 12])
    redis.call('HINCRBY', users, 'c:' .. user, '1')
  end
  emit_joined('checkout',
    sale_id .. S .. user .. S .. item_arg .. S .. outcome .. S .. issued_code .. S .. expires .. S .. now)
  return {outcome}
end

local function reserve(users, ticket, zset, a)
  local now, active, code = ARGV[a + 2], ARGV[a + 3], ARGV[a + 10]
  local stored = redis.call('GET', ticket)
  if not stored then
    return {'CODE_NOT_FOUND'}
  end
  local f = split(stored)
  local sale, user, item, expires, limit, state = f[1], f[2], f[3], f[4], f[5], f[6]
  local bought = tonumber(redis.call('HGET', users, 'p:' .. user) or '0')
  if state == 'reserved' then
    return {'RESERVED', tonumber(item), bought}
  elseif state == 'bought' then
    return {'CODE_USED'}
  elseif state == 'void' then
    return {f[7]}
  end
  if sale ~= active then
    return {'SALE_OVER'}
  end
  if tonumber(now) >= tonumber(expires) then
    return {'CODE_EXPIRED'}
  end
  local reserved = tonumber(redis.call('HGET', users, 'r:' .. user) or '0')
  if bought + reserved >= tonumber(limit) then
    return {'USER_LIMIT_REACHED'}
  end

  -- Writes start here. The ticket keeps its TTL.
  redis.call('SET', ticket, stored .. S .. 'reserved' .. S .. now, 'KEEPTTL')
  redis.call('HINCRBY', users, 'r:' .. user, '1')
  redis.call('ZADD', zset, now, code)
  return {'RESERVED', tonumber(item), bought}
end

local function settle(users, ticket, zset, a)
  local code, verdict = ARGV[a + 10], ARGV[a + 16]
  local stored = redis.call('GET', ticket)
  if not stored then
    -- Past its retention: nothing left to move (the reserved unit stays
    -- counted, which errs on the user's side of the limit, never over it).
    redis.call('ZREM', zset, code)
    return {'OK', 0}
  end
  local f = split(stored)
  local user, state = f[2], f[6]
  local base = table.concat({f[1], f[2], f[3], f[4], f[5]}, S)
  if state == nil or state == 'reserved' then
    -- Writes start here.
    if verdict == 'spent' then
      if state == 'reserved' then
        redis.call('HINCRBY', users, 'r:' .. user, '-1')
        redis.call('HINCRBY', users, 'p:' .. user, '1')
        redis.call('SET', ticket, base .. S .. 'bought' .. S .. ARGV[a + 2], 'KEEPTTL')
      end
    else
      if state == 'reserved' then
        redis.call('HINCRBY', users, 'r:' .. user, '-1')
      end
      local reason = string.sub(verdict, 6)
      redis.call('SET', ticket, base .. S .. 'void' .. S .. reason, 'KEEPTTL')
    end
    redis.call('ZREM', zset, code)
  end
  return {'OK', tonumber(redis.call('HGET', users, 'p:' .. user) or '0')}
end

for r = 0, n - 1 do
  local k, a = 2 + r * 4, 2 + r * 16
  local meta, users, ticket, zset = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local op = ARGV[a + 1]
  if op == 'issue' then
    replies[r + 1] = issue(meta, users, ticket, zset, a)
  elseif op == 'reserve' then
    replies[r + 1] = reserve(users, ticket, zset, a)
  else
    replies[r + 1] = settle(users, ticket, zset, a)
  end
end
