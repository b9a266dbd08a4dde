-- Two of the wallet write-behind's per-entry costs, removed (Postgres CPU
-- per flushed event before and after: loadtest/RESULTS.md).
--
-- The ledger had three indexes: the transaction id, the history's
-- (player, currency, seq) and one entry per (reference, type). An account's
-- entries are numbered by its shard's counter, so (player, currency, seq)
-- names one entry as surely as the transaction id "<shard>-<seq>" did: it
-- becomes the key, serves the history (read newest first), and a second
-- copy of an entry still fails loudly. Nothing reads an entry by its
-- transaction id; the column stays, for people.
ALTER TABLE wallet_entries DROP CONSTRAINT IF EXISTS wallet_entries_pkey;
DROP INDEX IF EXISTS wallet_entries_history;
ALTER TABLE wallet_entries ADD PRIMARY KEY (player_id, currency, seq);

-- The balances an account reached were upserted for every batch, each an
-- index probe and a row update costing more than the entry itself. Every
-- balance change is an entry carrying the balances after it, so the latest
-- entry of an account is its balance: a view gives the same rows from the
-- ledger, reading the key backwards.
DROP TABLE IF EXISTS wallet_accounts;
CREATE VIEW wallet_accounts AS
SELECT DISTINCT ON (player_id, currency)
       player_id, currency, cash_after_minor AS cash_minor, bonus_after_minor AS bonus_minor, seq,
       created_at AS updated_at
FROM wallet_entries
ORDER BY player_id, currency, seq DESC;
