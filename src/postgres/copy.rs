//! Rows for `COPY … FROM STDIN (FORMAT binary)`: the cheapest way to append
//! rows that can only be new. Postgres parses no text and evaluates no
//! expression per value (an `INSERT … SELECT FROM UNNEST` decodes its arrays,
//! materialises them and computes each timestamp), and the rows still pass
//! every index, unique constraint and check of their table. Measured on the
//! write-behind: `loadtest/RESULTS.md`.
//!
//! Each value is written in its column type's binary form, so the columns a
//! statement names must have exactly the types the calls here write:
//! [`BinaryRows::text`] for `text`, `char(n)` and `varchar`,
//! [`BinaryRows::int8`] for `bigint`, [`BinaryRows::int4`] for `integer`,
//! [`BinaryRows::millis`] for `timestamptz` and `timestamp`,
//! [`BinaryRows::uuid`] for `uuid`. A mismatch is a bug that Postgres
//! refuses whole, never stores; the API tests run every such statement.

use sqlx::PgConnection;

/// The binary format's signature, flags and header extension length.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Microseconds from the Unix epoch to Postgres's, 2000-01-01 UTC.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Past every instant Postgres accepts, yet not its infinity (`i64::MAX`).
const OUT_OF_RANGE_MICROS: i64 = i64::MAX - 1;

/// One `COPY`'s rows, encoded as they are added.
pub struct BinaryRows {
    buf: Vec<u8>,
    columns: i16,
    rows: usize,
}

impl BinaryRows {
    /// Rows of `columns` values each; `bytes` is a capacity hint.
    pub fn new(columns: i16, bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER.len() + bytes + 2);
        buf.extend_from_slice(HEADER);
        BinaryRows { buf, columns, rows: 0 }
    }

    /// Starts a row: exactly `columns` values must follow.
    pub fn row(&mut self) -> &mut Self {
        self.buf.extend_from_slice(&self.columns.to_be_bytes());
        self.rows += 1;
        self
    }

    pub fn text(&mut self, value: &str) -> &mut Self {
        self.value(value.as_bytes())
    }

    pub fn optional_text(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.text(value),
            None => self.null(),
        }
    }

    pub fn int8(&mut self, value: i64) -> &mut Self {
        self.value(&value.to_be_bytes())
    }

    pub fn int4(&mut self, value: i32) -> &mut Self {
        self.value(&value.to_be_bytes())
    }

    /// A `timestamptz` (or a `timestamp` holding UTC: the same binary form)
    /// from milliseconds since the Unix epoch. A value out of range becomes
    /// one Postgres refuses (a data error), never another instant: not
    /// `i64::MAX` or `i64::MIN`, which it reads as infinity.
    pub fn millis(&mut self, unix_ms: i64) -> &mut Self {
        let micros = unix_ms
            .checked_mul(1000)
            .and_then(|us| us.checked_sub(POSTGRES_EPOCH_MICROS))
            .unwrap_or(OUT_OF_RANGE_MICROS);
        self.int8(micros)
    }

    pub fn optional_millis(&mut self, unix_ms: Option<i64>) -> &mut Self {
        match unix_ms {
            Some(ms) => self.millis(ms),
            None => self.null(),
        }
    }

    pub fn uuid(&mut self, value: &uuid::Uuid) -> &mut Self {
        self.value(value.as_bytes())
    }

    pub fn null(&mut self) -> &mut Self {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    fn value(&mut self, bytes: &[u8]) -> &mut Self {
        // A batch is bounded far below 2 GiB, and so is each value in it;
        // one that were not would be cut to a length Postgres then refuses.
        let length = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
        self.buf.extend_from_slice(&length.to_be_bytes());
        self.buf.extend_from_slice(bytes);
        self
    }

    /// The whole stream: header, rows and trailer.
    fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

/// Runs `statement` (a `COPY <table> (<columns>) FROM STDIN (FORMAT binary)`)
/// in the caller's transaction with `rows`; returns how many it wrote.
pub async fn copy_binary(tx: &mut PgConnection, statement: &str, rows: BinaryRows) -> Result<u64, sqlx::Error> {
    let mut copy = tx.copy_in_raw(statement).await?;
    copy.send(rows.finish()).await?;
    copy.finish().await
}

#[cfg(test)]
mod tests {
    use super::BinaryRows;

    #[test]
    fn a_row_is_its_field_count_then_each_value_with_its_length() {
        let mut rows = BinaryRows::new(3, 0);
        rows.row().text("ab").int8(-2).null();
        let bytes = rows.finish();
        let body = &bytes[19..];
        assert_eq!(
            body,
            [
                &3i16.to_be_bytes()[..],
                &2i32.to_be_bytes(),
                b"ab",
                &8i32.to_be_bytes(),
                &(-2i64).to_be_bytes(),
                &(-1i32).to_be_bytes(),
                &(-1i16).to_be_bytes(),
            ]
            .concat()
        );
    }

    #[test]
    fn timestamps_count_from_the_year_2000_in_microseconds() {
        let mut rows = BinaryRows::new(1, 0);
        rows.row().millis(946_684_800_001);
        let bytes = rows.finish();
        assert_eq!(&bytes[25..33], &1000i64.to_be_bytes());
    }
}
