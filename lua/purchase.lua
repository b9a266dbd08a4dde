-- purchase.lua: spend a checkout code, atomically.
--
-- The code is spent, the item marked sold, the user's count raised and the
-- event appended to the outbox in one step, so no interleaving of concurrent
-- purchases can sell an item twice, overrun a user's limit or spend a code
-- twice. Refusals write nothing.
--
-- Redis does not roll back a script that fails half-way, so every read and
-- check happens before the first write.
--
-- KEYS: 1 code string, 2 sold bitmap, 3 per-user counters hash,
--       4 outbox stream (all share one hash tag).
-- ARGV: 1 now_ms, 2 active sale_id, 3 code, 4 outbox_max_len
-- Reply: {'OK', outbox_entry_id, item_id, user_purchases} or {refusal}.
local code_key, sold, users, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local stored = redis.call('GET', code_key)
if not stored then
  return {'CODE_NOT_FOUND'}
end
-- "sale|user|item|expires|limit", then "|used_at" once spent (see checkout.lua).
local f = {}
for part in string.gmatch(stored, '[^\31]+') do
  f[#f + 1] = part
end
local sale, user, item, expires, limit, used = f[1], f[2], f[3], f[4], f[5], f[6]
if used then
  return {'CODE_USED'}
end
if sale ~= ARGV[2] then
  return {'SALE_OVER'}
end
if tonumber(ARGV[1]) >= tonumber(expires) then
  return {'CODE_EXPIRED'}
end
if redis.call('GETBIT', sold, item) == 1 then
  return {'ITEM_SOLD'}
end
local bought = tonumber(redis.call('HGET', users, 'p:' .. user) or '0')
if bought >= tonumber(limit) then
  return {'USER_LIMIT_REACHED'}
end
-- Shed rather than grow the outbox without bound while Postgres is away.
if redis.call('XLEN', outbox) >= tonumber(ARGV[4]) then
  return {'OUTBOX_FULL'}
end

-- Writes start here.
redis.call('SETBIT', sold, item, 1)
redis.call('HINCRBY', users, 'p:' .. user, 1)
redis.call('SET', code_key, stored .. '\31' .. ARGV[1], 'KEEPTTL')
local entry = redis.call('XADD', outbox, '*', 'kind', 'purchase', 'sale', sale,
  'user', user, 'item', item, 'code', ARGV[3], 'at', ARGV[1])
return {'OK', entry, tonumber(item), bought + 1}
