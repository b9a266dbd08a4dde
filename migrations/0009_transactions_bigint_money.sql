-- A completed order becomes a `transactions` row for settlement, and an
-- order's total may reach 10^15 cents (PRODUCT_PRICE_CENTS_MAX ×
-- ORDER_QUANTITY_MAX): the seed's 32-bit money columns could hold only
-- totals up to ~21 million, so larger orders were left out of settlement.
-- Widened to bigint, as `settlements` already is; the settlement chunk's
-- sums were cast to bigint already. Rewrites the table and its indexes once.
ALTER TABLE transactions
    ALTER COLUMN amount_cents TYPE BIGINT,
    ALTER COLUMN fee_cents TYPE BIGINT;
