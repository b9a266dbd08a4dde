-- (reference_id, type) is unique across players, as the wallet spec says:
-- lua/wallet_claim.lua makes a reference belong to one account before
-- lua/wallet_apply.lua decides the transaction, and Postgres refuses a
-- second entry for it even if Redis were ever wrong (the flusher then fails
-- loudly). Bonus entries carry their bonus id, unique per bonus, so each
-- bonus_* type still appears once per bonus.
--
-- The old per-player constraint, (player_id, reference_id, type), is implied
-- by the new one. event_id stays UNIQUE: it is what a replayed outbox entry
-- conflicts on.
ALTER TABLE wallet_entries DROP CONSTRAINT wallet_entries_one_per_reference;
ALTER TABLE wallet_entries ADD CONSTRAINT wallet_entries_one_per_reference UNIQUE (reference_id, type);
