-- purchase.lua: spend a batch of checkout codes, each atomically and in
-- order, exactly as if each came alone.
--
-- A code is spent, its item marked sold, its user's count raised and the
-- event appended to the outbox in one step, so no interleaving of purchases
-- can sell an item twice, overrun a user's limit or spend a code twice; a
-- later request in the batch sees what the earlier ones wrote. Refusals
-- write nothing.
--
-- Redis does not roll back a script that fails half-way, so each request's
-- reads and checks come before its writes, and nothing here raises an error:
-- inputs were validated by the engine.
--
-- Batch protocol (lua/batch/prologue.lua, src/redis/executor.rs):
-- KEYS: 1 outbox stream, 2 unflushed-event counter, then per request:
--       code string, sold bitmap, per-user counters hash.
-- ARGV: 1 requests, 2 outbox bound (events), then per request (3):
--       now_ms, active sale_id, code.
-- Reply: per request {'OK', item_id, user_purchases} or {refusal}.
-- Events: purchase.

-- The numbers many requests of a call share (their clock reading, their
-- sale's limit), each converted once: Lua's tonumber is a strtod.
local nums = {}
local function num(s)
  local v = nums[s]
  if not v then
    v = tonumber(s)
    nums[s] = v
  end
  return v
end

local function purchase(code_key, sold, users, now, active_sale, code)
  local stored = redis.call('GET', code_key)
  if not stored then
    return {'CODE_NOT_FOUND'}
  end
  -- "sale|user|item|expires|limit", then "|used_at" once spent (checkout.lua).
  -- Split with plain finds: no pattern, no closure, per request.
  local b1 = string.find(stored, '\31', 1, true)
  local b2 = string.find(stored, '\31', b1 + 1, true)
  local b3 = string.find(stored, '\31', b2 + 1, true)
  local b4 = string.find(stored, '\31', b3 + 1, true)
  local b5 = string.find(stored, '\31', b4 + 1, true)
  local sale, user = string.sub(stored, 1, b1 - 1), string.sub(stored, b1 + 1, b2 - 1)
  local item, expires = string.sub(stored, b2 + 1, b3 - 1), string.sub(stored, b3 + 1, b4 - 1)
  local limit = string.sub(stored, b4 + 1, (b5 or 0) - 1)
  if b5 then
    return {'CODE_USED'}
  end
  if sale ~= active_sale then
    return {'SALE_OVER'}
  end
  if num(now) >= tonumber(expires) then
    return {'CODE_EXPIRED'}
  end
  if redis.call('GETBIT', sold, item) == 1 then
    return {'ITEM_SOLD'}
  end
  local field = 'p:' .. user
  local bought = tonumber(redis.call('HGET', users, field) or '0')
  if bought >= num(limit) then
    return {'USER_LIMIT_REACHED'}
  end
  -- Shed rather than grow the outbox without bound while Postgres is away.
  if outbox_full() then
    return {'OUTBOX_FULL'}
  end

  -- Writes start here. Their arguments are strings: a Lua number would be
  -- printed with %.14g first, which costs more than the command.
  redis.call('SETBIT', sold, item, '1')
  redis.call('HINCRBY', users, field, '1')
  -- Marks the code spent in place; the key keeps its TTL.
  redis.call('APPEND', code_key, '\31' .. now)
  -- Every value is a string: one concatenation, no table.
  emit_joined('purchase', sale .. S .. user .. S .. item .. S .. code .. S .. now)
  return {'OK', tonumber(item), bought + 1}
end

for r = 0, n - 1 do
  local k, a = 2 + r * 3, 2 + r * 3
  replies[r + 1] = purchase(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3])
end
