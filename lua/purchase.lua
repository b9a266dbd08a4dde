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
-- KEYS: 1 code hash, 2 sale meta hash, 3 sold bitmap, 4 per-user counters
--       hash, 5 outbox stream (all share one hash tag).
-- ARGV: 1 now_ms, 2 active sale_id, 3 code, 4 outbox_max_len, 5 sale_ttl_ms
-- Reply: {'OK', outbox_entry_id, item_id, user_purchases, items_sold} or {refusal}.
local code_key, meta, sold, users, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = tonumber(ARGV[1])

local c = redis.call('HMGET', code_key, 'sale', 'user', 'item', 'expires_ms', 'used')
local sale, user, item, expires, used = c[1], c[2], c[3], c[4], c[5]
if not sale then
  return {'CODE_NOT_FOUND'}
end
if used then
  return {'CODE_USED'}
end
if sale ~= ARGV[2] then
  return {'SALE_OVER'}
end
if now >= tonumber(expires) then
  return {'CODE_EXPIRED'}
end
local limit = redis.call('HGET', meta, 'limit')
if not limit then
  -- The sale's keys outlived their retention: nothing left to sell from.
  return {'SALE_OVER'}
end
if redis.call('GETBIT', sold, tonumber(item)) == 1 then
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
redis.call('SETBIT', sold, tonumber(item), 1)
redis.call('PEXPIRE', sold, ARGV[5])
redis.call('HINCRBY', users, 'p:' .. user, 1)
local items_sold = redis.call('HINCRBY', meta, 'sold', 1)
redis.call('HSET', code_key, 'used', ARGV[1])
local entry = redis.call('XADD', outbox, '*', 'kind', 'purchase', 'sale', sale,
  'user', user, 'item', item, 'code', ARGV[3], 'at', ARGV[1])
return {'OK', entry, tonumber(item), bought + 1, items_sold}
