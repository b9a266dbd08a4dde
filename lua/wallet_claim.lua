-- wallet_claim.lua: make a (reference, type) belong to one account, or give
-- it back when every attempt that claimed it was refused.
--
-- A wallet transaction is decided by wallet_apply.lua on its player's
-- shard, which sees only that player's references. A reference is an outside
-- system's id for one money movement (a game round, a payment), so
-- (reference_id, type) is unique across all players, and before that call the
-- engine claims the reference here, on the reference's own shard: the first
-- account to claim it holds it; a claim by another account is refused,
-- naming the field that differs. Postgres's unique index on
-- (reference_id, type) records the same rule.
--
-- The claim counts the attempts that took it and were not given back:
-- 'claim' adds one, 'release' takes one off and deletes the claim at zero.
-- The engine releases only after wallet_apply.lua refused the transaction
-- with no record of the reference on the player's shard (a funds or bet
-- refusal, not a replay or a reuse), so that attempt certainly moved no
-- money. An attempt that succeeded, or whose outcome is unknown (a 503, or
-- an engine that died between the two calls), is never released: its
-- count stays, and the reference stays its account's for good. So the count
-- reaches zero only when every attempt that claimed it was refused, and a
-- claim is never given up while any attempt might still have moved money:
-- two accounts can never both succeed under one reference.
--
-- Value: '<player>\31<currency>\31<count>'. A claim taken before counts
-- existed is '<player>\31<currency>': held for good, never released.
--
-- Nothing here is an outbox event: the claim's only durable effect is the
-- ledger entry that wallet_apply.lua writes, which carries the reference.
-- Joined with batch/prologue.lua (n, S, split, replies) and
-- batch/epilogue.lua, which appends nothing when there is no event.
-- Nothing raises: inputs were validated by the engine.
--
-- Batch protocol (src/redis/executor.rs):
-- KEYS: 1 outbox stream, 2 unflushed-event counter (no event: unused), then per
--       request (1): the claim key of (type, reference).
-- ARGV: 1 requests, 2 outbox bound (unused), then per request (3):
--       op ('claim' | 'release'), player, currency.
-- Reply per request: {'OK'} | {'REFERENCE_REUSED', 'player_id' | 'currency'}
--   (release always answers {'OK'}).

for i = 1, n do
  local key = KEYS[2 + i]
  local op, player, currency = ARGV[2 + 3 * i - 2], ARGV[2 + 3 * i - 1], ARGV[2 + 3 * i]
  local owner = player .. S .. currency
  local held = redis.call('GET', key)
  local f = held and split(held) or {}
  local count = tonumber(f[3] or '')
  local holder = (f[1] or '') .. S .. (f[2] or '')
  if op == 'release' then
    -- Only the holder's own counted attempts are given back; a claim of
    -- another account, or one held for good, is left as it is.
    if held and holder == owner and count then
      if count <= 1 then
        redis.call('DEL', key)
      else
        redis.call('SET', key, owner .. S .. string.format('%d', count - 1))
      end
    end
    replies[i] = {'OK'}
  elseif not held then
    redis.call('SET', key, owner .. S .. '1')
    replies[i] = {'OK'}
  elseif holder == owner then
    if count then
      redis.call('SET', key, owner .. S .. string.format('%d', count + 1))
    end
    replies[i] = {'OK'}
  elseif f[1] ~= player then
    replies[i] = {'REFERENCE_REUSED', 'player_id'}
  else
    replies[i] = {'REFERENCE_REUSED', 'currency'}
  end
end
