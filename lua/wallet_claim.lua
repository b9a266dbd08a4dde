-- wallet_claim.lua: make a (reference, type) belong to one account, for ever.
--
-- A wallet transaction is decided by wallet_apply.lua on its player's
-- shard, which sees only that player's references. A reference is an outside
-- system's id for one money movement (a game round, a payment), so
-- (reference_id, type) is unique across all players, and before that call the
-- engine claims the reference here, on the reference's own shard: the first
-- account to claim it owns it; a claim by another account is refused, naming
-- the field that differs. A claim changes no balance and is never undone: a
-- repeat by the owner passes (wallet_apply.lua then replays or refuses it),
-- and a claim whose transaction was refused, or never ran because the engine
-- died between the two calls, stays the owner's, so a retry completes it.
-- Postgres's unique index on (reference_id, type) records the same rule.
--
-- Nothing here is an outbox event: the claim's only durable effect is the
-- ledger entry that wallet_apply.lua writes, which carries the reference.
-- Nothing raises: inputs were validated by the engine.
--
-- Batch protocol (src/redis/executor.rs):
-- KEYS: 1 outbox stream, 2 unflushed-event counter (both unused), then per
--       request (1): the claim key of (type, reference).
-- ARGV: 1 requests, 2 outbox bound (unused), then per request (2):
--       player, currency.
-- Reply per request: {'OK'} | {'REFERENCE_REUSED', 'player_id' | 'currency'}.
local n = tonumber(ARGV[1])
local S = '\31'
local replies = {}
for i = 1, n do
  local key = KEYS[2 + i]
  local player, currency = ARGV[2 + 2 * i - 1], ARGV[2 + 2 * i]
  local owner = player .. S .. currency
  -- SET NX GET: one command that claims or tells who holds it.
  local held = redis.call('SET', key, owner, 'NX', 'GET')
  if not held or held == owner then
    replies[i] = {'OK'}
  elseif string.sub(held, 1, #player + 1) ~= player .. S then
    replies[i] = {'REFERENCE_REUSED', 'player_id'}
  else
    replies[i] = {'REFERENCE_REUSED', 'currency'}
  end
end
return replies
