-- baseline_checkout.lua: the baseline server's checkout, in one EVALSHA.
--
-- The least a Redis-first checkout can do: refuse a sold item or a user at
-- the limit, else store a code that expires, and log the attempt. It is
-- what the engine's lua/checkout.lua does without the sale window, the
-- per-user cap on live codes and the outbox bound, so the engine's run
-- divided by the baseline server's shows what those, HTTP handling and
-- Postgres cost on top.
--
-- Checks first, writes after: Redis does not roll back a script that fails
-- half-way.
--
-- KEYS: 1 sold bitmap, 2 per-user counters hash (fields p:<user>),
--       3 code string, 4 attempts stream (all share one hash tag).
-- ARGV: 1 item id, 2 user id, 3 code, 4 code TTL in seconds, 5 per-user limit.
-- Reply: {'OK'}, {'ITEM_SOLD'} or {'USER_LIMIT_REACHED'}.
local sold, users, code_key, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local item, user = ARGV[1], ARGV[2]

local outcome = 'OK'
if redis.call('GETBIT', sold, item) == 1 then
  outcome = 'ITEM_SOLD'
elseif tonumber(redis.call('HGET', users, 'p:' .. user) or '0') >= tonumber(ARGV[5]) then
  outcome = 'USER_LIMIT_REACHED'
end

local code = ''
if outcome == 'OK' then
  code = ARGV[3]
  -- "item|user" with \31 (unit separator) as the bar: the server refuses
  -- user ids with control characters.
  redis.call('SET', code_key, item .. '\31' .. user, 'EX', ARGV[4])
end
-- Every attempt is logged, accepted or refused, as the engine logs them.
redis.call('XADD', stream, '*', 'kind', 'checkout', 'user', user, 'item', item,
  'outcome', outcome, 'code', code)
return {outcome}
