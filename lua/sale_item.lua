-- sale_item.lua: the item's side of a sale split over several parts
-- (STAMPEDE_SALE_SPLIT > 1), on the item's part; the user's side is
-- sale_user.lua (which explains the split). The code record lives here, next
-- to the sold bitmap, so spending a code and marking its item sold stay one
-- step: no interleaving sells an item twice or spends a code twice.
--
-- The code record is checkout.lua's, "sale|user|item|expires|limit", then
-- "|used_at" once spent (as purchase.lua writes it) or "|void|<reason>" once
-- it can never be spent. Spent and void are final: the verdict this script
-- gives for a code never changes, which is what lets the user's part settle
-- a reservation from it whoever asks.
--
-- ops:
-- checkout: the item's checks of a checkout (ITEM_NOT_FOUND, ITEM_SOLD),
--           which come first as in checkout.lua; OK writes the code record
--           and records nothing: the user's checks come next, and the
--           user's part records the attempt. A refusal is recorded here
--           (the attempt ends here). Opens the part.
-- spend:    purchase.lua without the user's limit, which the user's part
--           reserved: OK spends the code, marks the item sold and records the
--           purchase. A spent code answers SPENT; a code that can never be
--           spent (ITEM_SOLD, CODE_EXPIRED, SALE_OVER, unknown) is made void
--           in the same step and answers VOID with the reason; OUTBOX_FULL
--           changes nothing (the reservation waits for a retry or the sweeper).
-- void:     the sweeper's question for a reservation left behind, and the
--           end of a checkout the user's part refused: SPENT if the code was
--           spent, else the code is made void (if not already) and the
--           answer is VOID, so it can never be spent later.
--
-- Redis does not roll back a script that fails half-way, so each request's
-- reads and checks come before its writes, and nothing here raises an error:
-- inputs were validated by the engine.
--
-- Batch protocol (lua/batch/prologue.lua, src/redis/executor.rs):
-- KEYS: 1 outbox stream, 2 unflushed-event counter, then per request (3):
--       part's meta hash, sold bitmap, code record.
-- ARGV: 1 requests, 2 outbox bound (events), then per request (14):
--       op, now_ms, sale_id (checkout: the window's; spend: the active one),
--       starts_ms, ends_ms, items, per_user_limit, user_id, item_id, code,
--       expires_ms, code_ttl_ms, sale_ttl_ms, refused attempts' bound.
-- Reply: checkout {outcome}; spend {'OK', item}, {'SPENT'},
--       {'VOID', reason} or {'OUTBOX_FULL'}; void {'SPENT'} or {'VOID', reason}.
-- Events: sale_opened, checkout (refused at the item's checks), purchase.
local sales = {}

local function checkout(meta, sold, code_key, a)
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
  local items = sale.opening and ARGV[a + 6] or sale.items
  local limit = sale.opening and ARGV[a + 7] or sale.limit
  local outcome = 'OK'
  if tonumber(item_arg) > tonumber(items) then
    outcome = 'ITEM_NOT_FOUND'
  elseif redis.call('GETBIT', sold, item_arg) == 1 then
    outcome = 'ITEM_SOLD'
  end
  if outcome ~= 'OK' and outbox_full(tonumber(ARGV[a + 14])) then
    return {'REFUSALS_FULL'}
  end

  -- Writes start here.
  if sale.opening then
    redis.call('HSET', meta, 'items', items, 'limit', limit, 'starts_ms', ARGV[a + 4], 'ends_ms', ARGV[a + 5])
    redis.call('PEXPIRE', meta, ARGV[a + 13])
    redis.call('SETBIT', sold, '0', '0')
    redis.call('PEXPIRE', sold, ARGV[a + 13])
    sale.opening, sale.items, sale.limit = false, items, limit
    -- Every part records the opening; the sink keeps the first per sale.
    emit('sale_opened', {sale_id, ARGV[a + 4], ARGV[a + 5], items, limit, now})
  end
  if outcome == 'OK' then
    -- The limit the user's part checks the code against (its ticket's).
    redis.call('SET', code_key, sale_id .. S .. user .. S .. item_arg .. S .. ARGV[a + 11] .. S .. ARGV[a + 7],
      'PX', ARGV[a + 12])
  else
    emit_joined('checkout', sale_id .. S .. user .. S .. item_arg .. S .. outcome .. S .. S .. S .. now)
  end
  return {outcome}
end

-- Makes a code void for good (its record keeps its TTL), or leaves a void
-- record for one never seen, so the answer stays the same.
local function void(code_key, stored, reason, ttl)
  if stored then
    redis.call('APPEND', code_key, S .. 'void' .. S .. reason)
  else
    redis.call('SET', code_key, S .. S .. S .. S .. S .. 'void' .. S .. reason, 'PX', ttl)
  end
  return {'VOID', reason}
end

local function spend(sold, code_key, a, op)
  local now, active, code = ARGV[a + 2], ARGV[a + 3], ARGV[a + 10]
  local stored = redis.call('GET', code_key)
  local f = stored and split(stored) or {}
  if f[6] == 'void' then
    return {'VOID', f[7]}
  elseif f[6] then
    return {'SPENT'}
  end
  if op == 'void' then
    return void(code_key, stored, 'CODE_EXPIRED', ARGV[a + 12])
  end
  if not stored then
    return void(code_key, stored, 'CODE_NOT_FOUND', ARGV[a + 12])
  end
  local sale, user, item, expires = f[1], f[2], f[3], f[4]
  if sale ~= active then
    return void(code_key, stored, 'SALE_OVER', ARGV[a + 12])
  end
  if tonumber(now) >= tonumber(expires) then
    return void(code_key, stored, 'CODE_EXPIRED', ARGV[a + 12])
  end
  if redis.call('GETBIT', sold, item) == 1 then
    return void(code_key, stored, 'ITEM_SOLD', ARGV[a + 12])
  end
  -- Shed rather than grow the outbox without bound while Postgres is away.
  if outbox_full() then
    return {'OUTBOX_FULL'}
  end

  -- Writes start here.
  redis.call('SETBIT', sold, item, '1')
  redis.call('APPEND', code_key, S .. now)
  emit_joined('purchase', sale .. S .. user .. S .. item .. S .. code .. S .. now)
  return {'OK', tonumber(item)}
end

for r = 0, n - 1 do
  local k, a = 2 + r * 3, 2 + r * 14
  local meta, sold, code_key = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local op = ARGV[a + 1]
  if op == 'checkout' then
    replies[r + 1] = checkout(meta, sold, code_key, a)
  else
    replies[r + 1] = spend(sold, code_key, a, op)
  end
end
