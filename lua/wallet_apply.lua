-- wallet_apply.lua: apply a batch of wallet operations, each atomically and
-- in order, exactly as if each came alone; a later request sees what the
-- earlier ones wrote.
--
-- Operations: deposit, withdrawal, bet, win, refund (client transactions,
-- exactly once per (reference, type) of a player), grant (a bonus), expire
-- (the engine's bonus expiry). Every balance change is a ledger event in
-- the outbox, an event in the player's event stream (SSE) and the same
-- event in the shard's notify stream, all in this call. The streams carry
-- the outbox event's values, not JSON: the engine renders the JSON clients
-- see where it reads them (src/wallet/events.rs), so the shard's Redis,
-- which runs this script for every engine, no longer formats it.
--
-- Redis does not roll back a script that fails half-way, so each request's
-- reads and checks come before its writes, and nothing here raises an error:
-- inputs were validated by the engine. Amounts are integers below 2^53
-- (limits.rs), so Lua's doubles hold them exactly; they are written with
-- %d, never tostring (which would print 1e+15).
--
-- Batch protocol (lua/batch/prologue.lua, src/redis/executor.rs):
-- KEYS: 1 outbox stream, 2 unflushed-event counter, then per request (6):
--       account hash, player's reference hash, shard's bonus expiry zset,
--       player's event stream, shard's notify stream, shard's entry counter.
-- ARGV: 1 requests, 2 outbox bound (events), then per request (15):
--       op, now_ms, player, currency, reference (bonus id for grant), amount,
--       detail (game of a bet, bet reference of a win/refund), max_bet,
--       expires_ms, required, contributions (",slots=100,table=20,"),
--       player stream maxlen, player stream ttl_ms, balance bound,
--       notify stream maxlen.
-- Reply per request:
--   {'OK'|'REPLAY', tx_id, cash, bonus, bonus_id, bonus_status, wagered, required}
--   {'REFERENCE_REUSED', field} | {refusal}
--   grant: {'OK', bonus_id, cash, bonus}; expire: {'OK'|'NOOP'}
-- Events: wallet_entry, bonus_state.
--
-- Account hash: cash, bonus, and while a bonus is active b_id, b_amt,
-- b_req, b_wag, b_max (0: no cap), b_exp, b_con. The bonus balance is 0
-- whenever no bonus is active.
-- Reference hash: '<t>:<reference>' -> record (t: d deposit, w withdrawal,
-- b bet, W win, r refund), fields joined by \31:
--   1 currency, 2 amount, 3 detail, 4 tx_id, 5 cash, 6 bonus, 7 bonus_id,
--   8 bonus_status, 9 wagered, 10 required [bet: 11 cash part, 12 bonus
--   part, 13 contribution, 14 refunded 0/1, 15 won 0/1 (absent on bets
--   recorded before wins were counted: read as 0)]
-- and 'B:<bonus_id>' -> final status of an ended bonus (for late wins and
-- refunds of bets it funded), and, once the hash holds REFS_HASHED_AT
-- fields, '\31ht' -> PAD. Kept for ever: see ARCHITECTURE.md.
local notify = {}   -- notify stream key -> its entry's field/value list
local seqs = {}     -- entry counter key -> {value, tag}
local notify_maxlen = '10000'
local TYPE_CODE = {deposit = 'd', withdrawal = 'w', bet = 'b', win = 'W', refund = 'r'}
local ACCOUNT = {'cash', 'bonus', 'b_id', 'b_amt', 'b_req', 'b_wag', 'b_max', 'b_exp', 'b_con'}
local BONUS_FIELDS = {'b_id', 'b_amt', 'b_req', 'b_wag', 'b_max', 'b_exp', 'b_con'}
-- The values of the events, each joined by S in one string.format.
local ENTRY_VALUES = '%s\31%s\31%s\31%s\31%s\31%d\31%d\31%d\31%d\31%d\31%s\31%d\31%s\31%s'
local BONUS_VALUES = '%s\31%s\31%s\31%s\31%d\31%d\31%d\31%d\31%d\31%s\31%d\31%s'
-- A reference record's first ten fields, and a bet's five more.
local RECORD = '%s\31%d\31%s\31%s\31%d\31%d\31%s\31%s\31%d\31%d'
local BET_EXTRA = '\31%d\31%d\31%d\31%s\31%s'
-- Redis keeps a small hash as a listpack, which every HGET and HSET scans
-- from the start and every new field reallocates: on a reference hash of
-- ~90 records that cost a wallet operation ~16% more than a hash table
-- (measured). A value longer than hash-max-listpack-value (64 by default)
-- makes Redis turn the hash into a hash table for good, so a hash that
-- reaches REFS_HASHED_AT fields gets one such field, '\31ht' (no record's
-- field starts with a control character). Smaller hashes stay listpacks,
-- which take less memory while a scan is still short.
local REFS_HASHED = '\31ht'
local REFS_HASHED_AT = 32
local PAD = string.rep('-', 80)

local function int(x)
  return string.format('%d', x)
end

-- The expiry zset's member names the account: "<currency>:<player>".
local function member(c)
  return c.cur .. ':' .. c.player
end


-- The shard's next entry number and the transaction id "<shard>-<n>".
-- Read once per call, written back once at the end.
local function next_tx(c)
  local s = seqs[c.seq]
  if not s then
    s = {value = tonumber(redis.call('GET', c.seq) or '0'), tag = string.match(c.seq, '{(%d+)}')}
    seqs[c.seq] = s
  end
  s.value = s.value + 1
  return s.value, string.format('%s-%d', s.tag, s.value)
end

local function load(key)
  local v = redis.call('HMGET', key, unpack(ACCOUNT))
  local a = {key = key, exists = v[1] ~= false, cash = tonumber(v[1] or '0'), bonus = tonumber(v[2] or '0')}
  if v[3] then
    a.b = {id = v[3], amt = tonumber(v[4]), req = tonumber(v[5]), wag = tonumber(v[6]),
           max = tonumber(v[7]), exp = tonumber(v[8]), con = v[9], status = 'active'}
  end
  return a
end

-- One event in the player's stream (the SSE feed), and the same event in
-- the shard's notify stream at the end of the call. `values` are the
-- event's values joined by S (src/wallet/events.rs `render` reads them):
-- the outbox event's, and for a bonus event the bonus balance after it.
local function publish(c, name, values)
  local id = redis.call('XADD', c.stream, 'MAXLEN', '~', c.maxlen, '*', 'e', name, 'v', values)
  if not c.stream_touched then
    redis.call('PEXPIRE', c.stream, c.ttl)
    c.stream_touched = true
  end
  -- The same event, with its id, for the engines' fan-out readers.
  local nk = notify[c.notify]
  if not nk then
    nk = {}
    notify[c.notify] = nk
  end
  nk[#nk + 1] = 'v'
  nk[#nk + 1] = c.player .. S .. id .. S .. name .. S .. values
end

-- A ledger entry: outbox event and balance event. Returns the tx id.
local function entry(c, a, typ, ref, amount, cash_d, bonus_d, wag_d, detail, bonus_id)
  local seq, tx = next_tx(c)
  c.last_seq = seq
  -- tx, player, currency, type, reference, amount, cash delta, bonus
  -- delta, cash, bonus, bonus id, wagered delta, detail, at.
  local values = string.format(ENTRY_VALUES, tx, c.player, c.cur, typ, ref, amount, cash_d, bonus_d, a.cash,
    a.bonus, bonus_id or '', wag_d, detail or '', c.now)
  emit_joined('wallet_entry', values)
  publish(c, 'balance', values)
  return tx
end

-- The bonus's state as an outbox event (upserted into `bonuses`) and an
-- event in the player's stream.
local function bonus_state(c, a, b)
  -- bonus id, player, currency, status, amount, required, wagered, max
  -- bet, expiry, contributions, last entry, at; the stream adds the bonus
  -- balance.
  local values = string.format(BONUS_VALUES, b.id, c.player, c.cur, b.status, b.amt, b.req, b.wag, b.max, b.exp,
    b.con, c.last_seq, c.now)
  emit_joined('bonus_state', values)
  publish(c, 'bonus', string.format('%s\31%d', values, a.bonus))
end

-- Ends the active bonus: completed moves the bonus balance to cash; expired
-- and forfeited drop it. One ledger entry either way.
local function end_bonus(c, a, status)
  local b = a.b
  local amount = a.bonus
  local cash_d = 0
  if status == 'completed' then
    cash_d = amount
  end
  a.cash, a.bonus, a.b = a.cash + cash_d, 0, nil
  b.status = status
  redis.call('HSET', a.key, 'cash', int(a.cash), 'bonus', '0')
  redis.call('HDEL', a.key, unpack(BONUS_FIELDS))
  redis.call('ZREM', c.zset, member(c))
  redis.call('HSET', c.refs, 'B:' .. b.id, status)
  entry(c, a, 'bonus_' .. status, b.id, amount, cash_d, -amount, 0, '', b.id)
  bonus_state(c, a, b)
  c.ended = b
end

-- Where a late win or refund of a bonus-funded bet goes once the bet's
-- bonus is no longer active: to cash if it completed (its balance became
-- cash), nowhere if it expired or was forfeited (so were its funds).
local function ended_status(c, bonus_id)
  return redis.call('HGET', c.refs, 'B:' .. bonus_id)
end

local function balance_ok(c, a, credit)
  return a.cash + a.bonus + credit <= c.balance_max
end

-- The client transactions. Each returns a refusal code, or nil and the
-- extra record fields (bets) after writing.
local ops = {}

function ops.deposit(c, a, amount)
  if not balance_ok(c, a, amount) then
    return 'BALANCE_LIMIT_EXCEEDED'
  end
  a.cash = a.cash + amount
  redis.call('HSET', a.key, 'cash', int(a.cash), 'bonus', int(a.bonus))
  c.tx = entry(c, a, 'deposit', c.ref, amount, amount, 0, 0, '', a.b and a.b.id)
end

function ops.withdrawal(c, a, amount)
  if amount > a.cash then
    return 'INSUFFICIENT_FUNDS'
  end
  a.cash = a.cash - amount
  redis.call('HSET', a.key, 'cash', int(a.cash), 'bonus', int(a.bonus))
  c.tx = entry(c, a, 'withdrawal', c.ref, amount, -amount, 0, 0, '', a.b and a.b.id)
  if a.b then
    end_bonus(c, a, 'forfeited')
  end
end

function ops.bet(c, a, amount, game)
  local b = a.b
  if b and b.max > 0 and amount > b.max then
    return 'MAX_BET_EXCEEDED'
  end
  if amount > a.cash + a.bonus then
    return 'INSUFFICIENT_FUNDS'
  end
  local cash_part = math.min(a.cash, amount)
  local bonus_part = amount - cash_part
  local contribution = 0
  if b then
    -- Games are [a-z0-9_] (validated), so no pattern magic in them.
    local pct = tonumber(string.match(b.con, ',' .. game .. '=(%d+),') or '0')
    contribution = math.floor(amount * pct / 100)
    b.wag = b.wag + contribution
  end
  a.cash, a.bonus = a.cash - cash_part, a.bonus - bonus_part
  if b then
    redis.call('HSET', a.key, 'cash', int(a.cash), 'bonus', int(a.bonus), 'b_wag', int(b.wag))
  else
    redis.call('HSET', a.key, 'cash', int(a.cash), 'bonus', int(a.bonus))
  end
  c.tx = entry(c, a, 'bet', c.ref, amount, -cash_part, -bonus_part, contribution, game, b and b.id)
  if b then
    if b.wag >= b.req then
      -- The crossing bet converts the whole bonus balance in this call.
      end_bonus(c, a, 'completed')
    elseif contribution > 0 then
      bonus_state(c, a, b)
    end
  end
  return nil, string.format(BET_EXTRA, cash_part, bonus_part, contribution, '0', '0')
end

-- The bet a win or refund names (its record, read with the request's own
-- in transaction()), if it is a bet of this account still open; else nil
-- and the refusal. A bet is settled once: by one win or by its refund. A
-- second win would pay the same stake twice, and a refund after its win
-- would return the stake the win already settled.
local function open_bet(c)
  local stored = c.bet_record
  if not stored then
    return nil, 'BET_NOT_FOUND'
  end
  local f = split(stored)
  if f[1] ~= c.cur then
    return nil, 'BET_NOT_FOUND'
  end
  if f[14] == '1' then
    return nil, 'BET_REFUNDED'
  end
  if f[15] == '1' then
    return nil, 'BET_SETTLED'
  end
  return {fields = f, amount = tonumber(f[2]), bonus_id = f[7], cash_part = tonumber(f[11]),
          bonus_part = tonumber(f[12]), contribution = tonumber(f[13])}
end

function ops.win(c, a, amount, bet_ref)
  local bet, refusal = open_bet(c)
  if not bet then
    return refusal
  end
  if not balance_ok(c, a, amount) then
    return 'BALANCE_LIMIT_EXCEEDED'
  end
  local cash_d, bonus_d = amount, 0
  if bet.bonus_part > 0 then
    if a.b and a.b.id == bet.bonus_id then
      cash_d, bonus_d = 0, amount
    elseif ended_status(c, bet.bonus_id) ~= 'completed' then
      cash_d = 0
    end
  end
  a.cash, a.bonus = a.cash + cash_d, a.bonus + bonus_d
  redis.call('HSET', a.key, 'cash', int(a.cash), 'bonus', int(a.bonus))
  local f = bet.fields
  f[15] = '1'
  c.bet_settled = table.concat(f, S)
  c.tx = entry(c, a, 'win', c.ref, amount, cash_d, bonus_d, 0, bet_ref, a.b and a.b.id)
end

function ops.refund(c, a, amount, bet_ref)
  local bet, refusal = open_bet(c)
  if not bet then
    return refusal
  end
  if amount ~= bet.amount then
    return 'REFUND_AMOUNT_MISMATCH'
  end
  local cash_d, bonus_d, wag_d = bet.cash_part, 0, 0
  local b = a.b
  local same_bonus = b and b.id == bet.bonus_id
  if bet.bonus_part > 0 then
    if same_bonus then
      bonus_d = bet.bonus_part
    elseif ended_status(c, bet.bonus_id) == 'completed' then
      cash_d = cash_d + bet.bonus_part
    end
  end
  if same_bonus and bet.contribution > 0 then
    wag_d = -math.min(bet.contribution, b.wag)
    b.wag = b.wag + wag_d
  end
  a.cash, a.bonus = a.cash + cash_d, a.bonus + bonus_d
  if same_bonus then
    redis.call('HSET', a.key, 'cash', int(a.cash), 'bonus', int(a.bonus), 'b_wag', int(b.wag))
  else
    redis.call('HSET', a.key, 'cash', int(a.cash), 'bonus', int(a.bonus))
  end
  local f = bet.fields
  f[14] = '1'
  c.bet_settled = table.concat(f, S)
  c.tx = entry(c, a, 'refund', c.ref, amount, cash_d, bonus_d, wag_d, bet_ref, b and b.id)
  if wag_d ~= 0 then
    bonus_state(c, a, b)
  end
end

-- The answer of a transaction, as stored and as replied (numbers as
-- numbers: the record formats them with %d).
local function answer(c, a)
  local b = a.b or c.ended
  if b then
    return {c.tx, a.cash, a.bonus, b.id, b.status, b.wag, b.req}
  end
  return {c.tx, a.cash, a.bonus, '', '', 0, 0}
end

-- The account as of now. Writes may start here: a bonus past its expiry is
-- expired first, as the expiry task would have (it may not have run yet).
local function load_current(c)
  local a = load(c.acct)
  if a.b and tonumber(c.now) >= a.b.exp then
    end_bonus(c, a, 'expired')
  end
  return a
end

local function reply_of(outcome, ans)
  return {outcome, ans[1], tonumber(ans[2]), tonumber(ans[3]), ans[4], ans[5], tonumber(ans[6]), tonumber(ans[7])}
end

local function transaction(c, op, amount, detail)
  local code = TYPE_CODE[op]
  local field = code .. ':' .. c.ref
  local stored
  if op == 'win' or op == 'refund' then
    -- The bet it settles comes in the same read (false when absent).
    local v = redis.call('HMGET', c.refs, field, REFS_HASHED, 'b:' .. detail)
    stored, c.hashed, c.bet_record = v[1], v[2], v[3]
  else
    local v = redis.call('HMGET', c.refs, field, REFS_HASHED)
    stored, c.hashed = v[1], v[2]
  end
  if stored then
    -- Seen before: the same request gets the first answer; other content
    -- is refused, naming the first field that differs.
    local f = split(stored)
    if f[1] ~= c.cur then
      return {'REFERENCE_REUSED', 'currency'}
    elseif f[2] ~= int(amount) then
      return {'REFERENCE_REUSED', 'amount_minor'}
    elseif f[3] ~= detail then
      return {'REFERENCE_REUSED', op == 'bet' and 'game' or 'bet_reference_id'}
    end
    return reply_of('REPLAY', {f[4], f[5], f[6], f[7], f[8], f[9], f[10]})
  end
  -- Shed rather than grow the outbox without bound while Postgres is away.
  if outbox_full() then
    return {'OUTBOX_FULL'}
  end
  local a = load_current(c)
  local refusal, extra = ops[op](c, a, amount, detail)
  if refusal then
    return {refusal}
  end
  local ans = answer(c, a)
  local record = string.format(RECORD, c.cur, amount, detail, unpack(ans))
  if extra then
    record = record .. extra
  end
  -- The record that finds the hash at REFS_HASHED_AT fields or more
  -- brings the field that makes it a hash table.
  local pad = not c.hashed and redis.call('HLEN', c.refs) >= REFS_HASHED_AT
  if c.bet_settled then
    -- The settled bet's record, written with this one.
    if pad then
      redis.call('HSET', c.refs, field, record, 'b:' .. detail, c.bet_settled, REFS_HASHED, PAD)
    else
      redis.call('HSET', c.refs, field, record, 'b:' .. detail, c.bet_settled)
    end
  elseif pad then
    redis.call('HSET', c.refs, field, record, REFS_HASHED, PAD)
  else
    redis.call('HSET', c.refs, field, record)
  end
  return {'OK', unpack(ans)}
end

local function grant(c, amount, required, max_bet, expires, contributions)
  if outbox_full() then
    return {'OUTBOX_FULL'}
  end
  local a = load_current(c)
  if a.b then
    return {'BONUS_ACTIVE'}
  end
  if not balance_ok(c, a, amount) then
    return {'BALANCE_LIMIT_EXCEEDED'}
  end
  local b = {id = c.ref, amt = amount, req = required, wag = 0, max = max_bet, exp = expires,
             con = contributions, status = 'active'}
  a.bonus = a.bonus + amount
  a.b = b
  redis.call('HSET', a.key, 'cash', int(a.cash), 'bonus', int(a.bonus), 'b_id', b.id, 'b_amt', int(amount),
    'b_req', int(required), 'b_wag', '0', 'b_max', int(max_bet), 'b_exp', int(expires), 'b_con', contributions)
  redis.call('ZADD', c.zset, int(expires), member(c))
  entry(c, a, 'bonus_granted', b.id, amount, 0, amount, 0, '', b.id)
  bonus_state(c, a, b)
  return {'OK', b.id, a.cash, a.bonus}
end

local function expire(c)
  local a = load(c.acct)
  if not a.b then
    -- A member left behind (the bonus ended another way): drop it.
    redis.call('ZREM', c.zset, member(c))
    return {'NOOP'}
  end
  if tonumber(c.now) < a.b.exp then
    return {'NOOP'}
  end
  if outbox_full() then
    return {'OUTBOX_FULL'}
  end
  end_bonus(c, a, 'expired')
  return {'OK'}
end

for r = 0, n - 1 do
  local k, g = 2 + r * 6, 2 + r * 15
  local c = {
    acct = KEYS[k + 1], refs = KEYS[k + 2], zset = KEYS[k + 3], stream = KEYS[k + 4],
    notify = KEYS[k + 5], seq = KEYS[k + 6],
    now = ARGV[g + 2], player = ARGV[g + 3], cur = ARGV[g + 4], ref = ARGV[g + 5],
    maxlen = ARGV[g + 12], ttl = ARGV[g + 13], balance_max = tonumber(ARGV[g + 14]),
  }
  notify_maxlen = ARGV[g + 15]
  local op, amount, detail = ARGV[g + 1], tonumber(ARGV[g + 6]), ARGV[g + 7]
  if op == 'grant' then
    replies[r + 1] = grant(c, amount, tonumber(ARGV[g + 10]), tonumber(ARGV[g + 8]), tonumber(ARGV[g + 9]),
      ARGV[g + 11])
  elseif op == 'expire' then
    replies[r + 1] = expire(c)
  else
    replies[r + 1] = transaction(c, op, amount, detail)
  end
end

-- Once per batch: the entry counters reached, and one notify entry per
-- shard stream (batch/epilogue.lua then appends the outbox entry).
for key, s in pairs(seqs) do
  redis.call('SET', key, int(s.value))
end
for key, nk in pairs(notify) do
  redis.call('XADD', key, 'MAXLEN', '~', notify_maxlen, '*', unpack(nk))
end
