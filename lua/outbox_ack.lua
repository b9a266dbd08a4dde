-- outbox_ack.lua: forget outbox entries that are committed in Postgres.
--
-- Acknowledging and deleting in one step means an entry is either still
-- pending (and will be flushed again, harmlessly) or gone; the stream never
-- keeps acknowledged entries. The backlog counter drops by the events of the
-- entries this call actually deleted, so a repeated ack cannot count twice.
-- Entries hold a whole script batch each, so one XDEL per entry is cheap.
--
-- KEYS: 1 outbox stream, 2 its unflushed-event counter.
-- ARGV: 1 consumer group, then pairs (entry id, events in it).
-- Reply: {number of entries deleted}.
local outbox, counter = KEYS[1], KEYS[2]
local ids = {}
for i = 2, #ARGV, 2 do
  ids[#ids + 1] = ARGV[i]
end
if #ids == 0 then
  return {0}
end
redis.call('XACK', outbox, ARGV[1], unpack(ids))
local deleted, events = 0, 0
for i = 2, #ARGV, 2 do
  if redis.call('XDEL', outbox, ARGV[i]) == 1 then
    deleted = deleted + 1
    events = events + tonumber(ARGV[i + 1])
  end
end
if events > 0 and redis.call('DECRBY', counter, string.format('%d', events)) < 0 then
  -- Entries written before the counter existed were never counted.
  redis.call('SET', counter, '0')
end
return {deleted}
