-- checkout.lua: decide one checkout attempt and record it, atomically.
--
-- Every attempt, accepted or refused, is appended to the shard's outbox so
-- Postgres ends up with the full attempt log (contest rule). The sale is
-- opened lazily here, on its first checkout, so that no background task has
-- to race the clock to create it.
--
-- Redis does not roll back a script that fails half-way, so every read and
-- check happens before the first write. Calls are kept few: this runs once
-- per checkout, and Redis is the shared bottleneck.
--
-- KEYS: 1 sale meta hash, 2 sold bitmap, 3 per-user counters hash,
--       4 code string, 5 outbox stream (all share one hash tag).
-- ARGV: 1 now_ms, 2 sale_id, 3 starts_ms, 4 ends_ms, 5 items, 6 per_user_limit,
--       7 item_id, 8 user_id, 9 code, 10 expires_ms, 11 code_ttl_ms,
--       12 sale_ttl_ms, 13 max_codes_per_user, 14 outbox_max_len
-- Reply: {outcome, outbox_entry_id} or {'OUTBOX_FULL'}.
local meta, sold, users, code_key, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now, sale_id, item_arg, user, code = ARGV[1], ARGV[2], ARGV[7], ARGV[8], ARGV[9]

-- Shed rather than grow the outbox without bound while Postgres is away.
if redis.call('XLEN', outbox) >= tonumber(ARGV[14]) then
  return {'OUTBOX_FULL'}
end

-- A sale keeps the size and limit it opened with, even if the config changes.
local stored = redis.call('HMGET', meta, 'items', 'limit')
local opening = stored[1] == false
local items = opening and ARGV[5] or stored[1]
local limit = opening and ARGV[6] or stored[2]
local item = tonumber(item_arg)
local counts = redis.call('HMGET', users, 'p:' .. user, 'c:' .. user)

local outcome = 'OK'
if item > tonumber(items) then
  outcome = 'ITEM_NOT_FOUND'
elseif redis.call('GETBIT', sold, item) == 1 then
  outcome = 'ITEM_SOLD'
elseif tonumber(counts[1] or '0') >= tonumber(limit) then
  outcome = 'USER_LIMIT_REACHED'
elseif tonumber(counts[2] or '0') >= tonumber(ARGV[13]) then
  -- Each live code costs memory; a per-user cap bounds what one user can pin.
  outcome = 'TOO_MANY_CHECKOUTS'
end

-- Writes start here.
if opening then
  -- Create every key of the sale now so each gets its expiry once, instead
  -- of a PEXPIRE on every later write. Items are numbered from 1, so bit 0
  -- of the sold bitmap is free to create it.
  redis.call('HSET', meta, 'items', items, 'limit', limit, 'starts_ms', ARGV[3], 'ends_ms', ARGV[4])
  redis.call('PEXPIRE', meta, ARGV[12])
  redis.call('SETBIT', sold, 0, 0)
  redis.call('PEXPIRE', sold, ARGV[12])
  redis.call('HSET', users, '_', '')
  redis.call('PEXPIRE', users, ARGV[12])
  redis.call('XADD', outbox, '*', 'kind', 'sale_opened', 'sale', sale_id,
    'starts_ms', ARGV[3], 'ends_ms', ARGV[4], 'items', items, 'limit', limit, 'at', now)
end

local issued_code, expires = '', ''
if outcome == 'OK' then
  issued_code, expires = code, ARGV[10]
  -- One string, "sale|user|item|expires|limit" with \31 (unit separator) as
  -- the bar: user ids cannot contain control characters.
  redis.call('SET', code_key, sale_id .. '\31' .. user .. '\31' .. item_arg .. '\31' .. expires .. '\31' .. limit,
    'PX', ARGV[11])
  redis.call('HINCRBY', users, 'c:' .. user, 1)
end

local entry = redis.call('XADD', outbox, '*', 'kind', 'checkout', 'sale', sale_id,
  'user', user, 'item', item_arg, 'outcome', outcome,
  'code', issued_code, 'expires_ms', expires, 'at', now)
return {outcome, entry}
