-- checkout.lua: decide a batch of checkout attempts, each atomically and in
-- order, exactly as if each came alone, and record them.
--
-- Every answered attempt, accepted or refused, is appended to the shard's
-- outbox so Postgres ends up with the full attempt log (contest rule).
-- Refused attempts may fill only their share of the outbox bound (a quarter,
-- see OUTBOX_REFUSED_ATTEMPTS_SHARE_DIVISOR): past it a refused attempt is
-- answered REFUSALS_FULL (503 OUTBOX_FULL) and not recorded, so a flood of
-- refused attempts cannot push purchases and issued codes into OUTBOX_FULL,
-- and every attempt that got an answer is still logged. A sale is opened
-- lazily here, on its first checkout, so that no background task has to race
-- the clock to create it.
--
-- Redis does not roll back a script that fails half-way, so each request's
-- reads and checks come before its writes, and nothing here raises an error:
-- inputs were validated by the engine. Calls are kept few: Redis is the
-- shared bottleneck.
--
-- Batch protocol (lua/batch/prologue.lua, src/redis/executor.rs):
-- KEYS: 1 outbox stream, 2 unflushed-event counter, then per request: the
--       sale's part (shared, see ARGV), then the code string.
--       The sale's part: sale meta hash, sold bitmap, per-user counters hash.
-- ARGV: 1 requests, 2 outbox bound (events), then per request: a flag, '1'
--       when the sale's part follows (keys and arguments), '0' when the
--       request shares the previous request's (the first always sends it);
--       then its own (7): now_ms, item_id, user_id, code, expires_ms,
--       code_ttl_ms, sale_ttl_ms.
--       The sale's part (7): sale_id, starts_ms, ends_ms, items,
--       per_user_limit, max_codes_per_user, refused attempts' bound (events).
-- Reply: per request {outcome}. Events: sale_opened, checkout.
-- A sale keeps the size and limit it opened with, even if the config changes.
-- Read once per batch, and updated when this batch opens the sale.
local sales = {}
-- The sale's part, as the last request that sent it gave it, and its
-- bounds as numbers: converted once per part, not once per request (Lua's
-- tonumber is a strtod).
local meta, sold, users, sale_id, starts, ends, sale_items, sale_limit, codes_max, refused_max
local sale_items_n, sale_limit_n, codes_max_n, refused_max_n
-- The last key and argument read.
local kc, ac = 2, 2

for r = 1, n do
  ac = ac + 1
  if ARGV[ac] == '1' then
    meta, sold, users = KEYS[kc + 1], KEYS[kc + 2], KEYS[kc + 3]
    sale_id, starts, ends, sale_items, sale_limit, codes_max, refused_max =
      ARGV[ac + 1], ARGV[ac + 2], ARGV[ac + 3], ARGV[ac + 4], ARGV[ac + 5], ARGV[ac + 6], ARGV[ac + 7]
    sale_items_n, sale_limit_n, codes_max_n, refused_max_n =
      tonumber(sale_items), tonumber(sale_limit), tonumber(codes_max), tonumber(refused_max)
    kc, ac = kc + 3, ac + 7
  end
  local code_key = KEYS[kc + 1]
  local now, item_arg, user, code, expires_at, code_ttl, sale_ttl =
    ARGV[ac + 1], ARGV[ac + 2], ARGV[ac + 3], ARGV[ac + 4], ARGV[ac + 5], ARGV[ac + 6], ARGV[ac + 7]
  kc, ac = kc + 1, ac + 7

  local outcome, sale, items, limit, items_n, limit_n
  -- Shed rather than grow the outbox without bound while Postgres is away:
  -- an attempt is recorded even when refused, so all of them are shed.
  if outbox_full() then
    outcome = 'OUTBOX_FULL'
  else
    sale = sales[meta]
    if not sale then
      local stored = redis.call('HMGET', meta, 'items', 'limit')
      sale = {opening = stored[1] == false, items = stored[1], limit = stored[2]}
      if not sale.opening then
        sale.items_n, sale.limit_n = tonumber(sale.items), tonumber(sale.limit)
      end
      sales[meta] = sale
    end
    if sale.opening then
      items, limit, items_n, limit_n = sale_items, sale_limit, sale_items_n, sale_limit_n
    else
      items, limit, items_n, limit_n = sale.items, sale.limit, sale.items_n, sale.limit_n
    end
    local item = tonumber(item_arg)
    local counts = redis.call('HMGET', users, 'p:' .. user, 'c:' .. user)

    outcome = 'OK'
    if item > items_n then
      outcome = 'ITEM_NOT_FOUND'
    -- Arguments of redis.call go as strings: a Lua number would be printed
    -- with %.14g first, which costs more than the command.
    elseif redis.call('GETBIT', sold, item_arg) == 1 then
      outcome = 'ITEM_SOLD'
    elseif tonumber(counts[1] or '0') >= limit_n then
      outcome = 'USER_LIMIT_REACHED'
    elseif tonumber(counts[2] or '0') >= codes_max_n then
      -- Each live code costs memory; a per-user cap bounds what one user can pin.
      outcome = 'TOO_MANY_CHECKOUTS'
    end
    -- A refused attempt is recorded only within its share of the bound.
    if outcome ~= 'OK' and outbox_full(refused_max_n) then
      outcome = 'REFUSALS_FULL'
    end
  end

  -- Writes start here, for an attempt that will be recorded.
  if outcome ~= 'OUTBOX_FULL' and outcome ~= 'REFUSALS_FULL' then
    if sale.opening then
      -- Create every key of the sale now so each gets its expiry once,
      -- instead of a PEXPIRE on every later write. Items are numbered from
      -- 1, so bit 0 of the sold bitmap is free to create it.
      redis.call('HSET', meta, 'items', items, 'limit', limit, 'starts_ms', starts, 'ends_ms', ends)
      redis.call('PEXPIRE', meta, sale_ttl)
      redis.call('SETBIT', sold, '0', '0')
      redis.call('PEXPIRE', sold, sale_ttl)
      redis.call('HSET', users, '_', '')
      redis.call('PEXPIRE', users, sale_ttl)
      sale.opening, sale.items, sale.limit, sale.items_n, sale.limit_n = false, items, limit, items_n, limit_n
      emit('sale_opened', {sale_id, starts, ends, items, limit, now})
    end
    local issued_code, expires = '', ''
    if outcome == 'OK' then
      issued_code, expires = code, expires_at
      -- One string, "sale|user|item|expires|limit" with \31 (unit separator)
      -- as the bar: user ids cannot contain control characters.
      redis.call('SET', code_key, sale_id .. S .. user .. S .. item_arg .. S .. expires .. S .. limit,
        'PX', code_ttl)
      redis.call('HINCRBY', users, 'c:' .. user, '1')
    end
    -- Every value is a string: one concatenation, no table.
    emit_joined('checkout',
      sale_id .. S .. user .. S .. item_arg .. S .. outcome .. S .. issued_code .. S .. expires .. S .. now)
  end
  replies[r] = {outcome}
end
