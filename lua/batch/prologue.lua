-- batch/prologue.lua: the start every batch script shares, joined in front
-- of the script's own file at build time (`batch_script!` in
-- src/redis/executor.rs); batch/epilogue.lua closes it.
--
-- KEYS: 1 outbox stream, 2 unflushed-event counter, then the requests' keys,
-- then the call's mark.
-- ARGV: 1 requests (n), 2 outbox bound (events), then the requests' args,
-- then the mark's lifetime (ms).
-- The script decides its n requests in order, puts each reply in `replies`,
-- appends its events with emit() (or emit_joined()), and sheds a write with
-- OUTBOX_FULL when outbox_full(): the counter is read once, and this
-- batch's own events count too.
local outbox, counter = KEYS[1], KEYS[2]
local n, bound = tonumber(ARGV[1]), tonumber(ARGV[2])
-- The last key marks this call, the last argument says how long (ms). The
-- executor sends a call again when fred failed it without knowing whether
-- it ran (a redirection: it did not; a dropped connection: it may have). A
-- mark already set means this call ran: it answers SEEN and does nothing.
if not redis.call('SET', KEYS[#KEYS], '1', 'NX', 'PX', ARGV[#ARGV]) then
  return redis.error_reply('SEEN this call already ran')
end
local pending = tonumber(redis.call('GET', counter) or '0')
local events, replies = {}, {}
-- Separates an event's values, and the fields of records kept in Redis
-- (ASCII unit separator): ids and codes cannot contain control characters.
local S = '\31'

-- The fields of a record joined by S, empty ones kept.
local function split(s)
  local f = {}
  for part in string.gmatch(s .. S, '([^\31]*)\31') do
    f[#f + 1] = part
  end
  return f
end

-- Appends one event: its kind, then its values joined by S.
local function emit(kind, values)
  events[#events + 1] = kind
  events[#events + 1] = table.concat(values, S)
end

-- Appends one event whose values the script already joined by S: one
-- string.format, or for values that are all strings one concatenation,
-- costs less than a table of values and table.concat (about a microsecond
-- per checkout, measured). Never a number in a concatenation: Lua would
-- print it with %.14g.
local function emit_joined(kind, joined)
  events[#events + 1] = kind
  events[#events + 1] = joined
end

-- Whether the outbox already holds `limit` events (by default its bound).
local function outbox_full(limit)
  return pending + #events / 2 >= (limit or bound)
end

