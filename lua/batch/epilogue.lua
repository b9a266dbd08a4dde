
-- batch/epilogue.lua: the end every batch script shares (see
-- batch/prologue.lua). The batch's events go to the outbox as one entry and
-- the counter counts them, in the same call that decided them; then each
-- request gets its reply.
if #events > 0 then
  redis.call('XADD', outbox, '*', unpack(events))
  redis.call('INCRBY', counter, #events / 2)
end
return replies
