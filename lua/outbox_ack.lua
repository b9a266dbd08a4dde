-- outbox_ack.lua: forget outbox entries that are committed in Postgres.
--
-- Acknowledging and deleting in one step means an entry is either still
-- pending (and will be flushed again, harmlessly) or gone; the stream never
-- keeps acknowledged entries, so its length is exactly the unflushed backlog.
--
-- KEYS: 1 outbox stream. ARGV: 1 consumer group, 2.. entry ids.
-- Reply: {number of entries deleted}.
local ids = {}
for i = 2, #ARGV do
  ids[#ids + 1] = ARGV[i]
end
if #ids == 0 then
  return {0}
end
redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
return {redis.call('XDEL', KEYS[1], unpack(ids))}
