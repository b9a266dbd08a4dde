-- baseline_purchase.lua: the baseline server's purchase, in one EVALSHA.
--
-- Spends a code from baseline_checkout.lua: the item is marked sold, the
-- user's count raised, the code deleted and the purchase logged in one
-- atomic step, so no item is sold twice and no user passes the limit.
-- Refusals write nothing. Checks first, writes after: Redis does not roll
-- back a script that fails half-way.
--
-- KEYS: 1 code string, 2 sold bitmap, 3 per-user counters hash (fields
--       p:<user>), 4 attempts stream (all share one hash tag).
-- ARGV: 1 code, 2 per-user limit.
-- Reply: {'OK', item_id, user_purchases}, or {'CODE_NOT_FOUND'},
--        {'ITEM_SOLD'}, {'USER_LIMIT_REACHED'}.
local code_key, sold, users, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local stored = redis.call('GET', code_key)
if not stored then
  return {'CODE_NOT_FOUND'}
end
-- "item|user" (see baseline_checkout.lua): the item has no \31 in it.
local bar = string.find(stored, '\31', 1, true)
local item, user = string.sub(stored, 1, bar - 1), string.sub(stored, bar + 1)
if redis.call('GETBIT', sold, item) == 1 then
  return {'ITEM_SOLD'}
end
local bought = tonumber(redis.call('HGET', users, 'p:' .. user) or '0')
if bought >= tonumber(ARGV[2]) then
  return {'USER_LIMIT_REACHED'}
end

-- Writes start here.
redis.call('SETBIT', sold, item, 1)
redis.call('HINCRBY', users, 'p:' .. user, 1)
redis.call('DEL', code_key)
redis.call('XADD', stream, '*', 'kind', 'purchase', 'user', user, 'item', item, 'code', ARGV[1])
return {'OK', tonumber(item), bought + 1}
