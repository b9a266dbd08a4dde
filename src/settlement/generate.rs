//! `stampede gen-transactions`: realistic merchant transactions loaded into
//! Postgres by `COPY`, for tests, demos and the load scenario.
//!
//! - Statuses: about 90% `PAID`; the rest `PENDING`, `FAILED`, `REFUNDED`
//!   and `CANCELLED`, which settlement skips.
//! - Amounts are log-uniform from $1 to $2,000; the fee is 2.9% + 30¢
//!   rounded down, and zero for one transaction in twenty.
//! - `paid_at` is uniform over the range at microsecond precision, and one
//!   row in a hundred sits exactly on a UTC day boundary: `00:00:00` or
//!   `23:59:59.999999`.
//! - Merchants are uniform over `1..=merchants`.
//!
//! The same seed gives the same rows, ids included, so loading one seed
//! twice is refused by the primary key: use another seed to add rows.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor};
use time::Date;

/// Statuses and their weights (per thousand).
const STATUSES: &[(&str, u32)] = &[
    ("PAID", 900),
    ("PENDING", 40),
    ("FAILED", 30),
    ("REFUNDED", 20),
    ("CANCELLED", 10),
];
/// Share of rows placed exactly on a UTC day boundary.
const BOUNDARY_SHARE: f64 = 0.01;
/// Share of rows without a fee.
const ZERO_FEE_SHARE: f64 = 0.05;
/// Bytes of CSV sent to `COPY` at a time.
const COPY_CHUNK_BYTES: usize = 1 << 20;

const MICROS_PER_DAY: i64 = 86_400_000_000;

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("--from is after --to")]
    FromAfterTo,
    #[error("--merchants must be at least 1")]
    NoMerchants,
}

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub count: u64,
    pub merchants: u32,
    pub from: Date,
    pub to: Date,
    pub seed: u64,
}

/// What a run loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Generated {
    pub rows: u64,
    pub paid: u64,
    pub on_boundary: u64,
}

/// The row generator, one CSV line at a time.
pub struct Rows {
    rng: StdRng,
    options: Options,
    days: i64,
    epoch_day: i64,
}

impl Rows {
    pub fn new(options: Options) -> Result<Self, GenerateError> {
        if options.from > options.to {
            return Err(GenerateError::FromAfterTo);
        }
        if options.merchants == 0 {
            return Err(GenerateError::NoMerchants);
        }
        Ok(Self {
            rng: StdRng::seed_from_u64(options.seed),
            days: (options.to - options.from).whole_days() + 1,
            epoch_day: i64::from(options.from.to_julian_day()),
            options,
        })
    }

    /// Appends one row as CSV (`id,merchant_id,amount_cents,fee_cents,status,paid_at`)
    /// and says whether it is PAID and whether it sits on a day boundary.
    pub fn write_row(&mut self, out: &mut Vec<u8>) -> (bool, bool) {
        use std::io::Write;
        let rng = &mut self.rng;
        let id: [u8; 16] = rng.random();
        let merchant = rng.random_range(1..=self.options.merchants);
        let amount = (100.0 * 2000f64.powf(rng.random::<f64>())) as i64;
        let fee = if rng.random_bool(ZERO_FEE_SHARE) {
            0
        } else {
            (amount * 290 / 10_000 + 30).min(amount)
        };
        let pick = rng.random_range(0..1000);
        let mut acc = 0;
        let status = STATUSES
            .iter()
            .find(|(_, w)| {
                acc += w;
                pick < acc
            })
            .map_or("PAID", |s| s.0);
        let day = rng.random_range(0..self.days);
        let boundary = rng.random_bool(BOUNDARY_SHARE);
        let micros = if boundary {
            if rng.random_bool(0.5) { 0 } else { MICROS_PER_DAY - 1 }
        } else {
            rng.random_range(0..MICROS_PER_DAY)
        };
        let date = Date::from_julian_day((self.epoch_day + day) as i32).unwrap_or(self.options.from);
        let secs = micros / 1_000_000;
        let _ = writeln!(
            out,
            "{},{merchant},{amount},{fee},{status},{date} {:02}:{:02}:{:02}.{:06}",
            uuid_v4(id),
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            micros % 1_000_000,
        );
        (status == "PAID", boundary)
    }
}

/// A random (version 4) UUID in its text form.
fn uuid_v4(bytes: [u8; 16]) -> String {
    uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
}

/// Loads `options.count` rows into `transactions` by `COPY` in one
/// transaction, calling `on_progress` with the rows sent so far; then
/// vacuums and analyzes the table so the planner knows it and the settlement
/// index can be read without visiting the heap.
pub async fn load(
    conn: &mut PgConnection,
    options: Options,
    mut on_progress: impl FnMut(u64),
) -> Result<Generated, GenerateError> {
    let mut rows = Rows::new(options)?;
    let mut generated = Generated::default();
    let mut tx = conn.begin().await?;
    let mut copy = tx
        .copy_in_raw("COPY transactions (id, merchant_id, amount_cents, fee_cents, status, paid_at) FROM STDIN WITH (FORMAT csv)")
        .await?;
    let mut buffer = Vec::with_capacity(COPY_CHUNK_BYTES + 256);
    while generated.rows < options.count {
        let (paid, boundary) = rows.write_row(&mut buffer);
        generated.rows += 1;
        generated.paid += u64::from(paid);
        generated.on_boundary += u64::from(boundary);
        if buffer.len() >= COPY_CHUNK_BYTES {
            copy.send(std::mem::take(&mut buffer)).await?;
            buffer.reserve(COPY_CHUNK_BYTES + 256);
            on_progress(generated.rows);
        }
    }
    if !buffer.is_empty() {
        copy.send(buffer).await?;
    }
    copy.finish().await?;
    tx.commit().await?;
    on_progress(generated.rows);
    conn.execute("VACUUM (ANALYZE) transactions").await?;
    Ok(generated)
}

/// `stampede gen-transactions`: connects to `database_url` (migrating it
/// first, so a fresh database works) and loads, with a progress bar on a
/// terminal.
pub async fn run(database_url: &str, options: Options) -> Result<Generated, GenerateError> {
    let mut conn = PgConnection::connect(database_url).await?;
    sqlx::migrate!("./migrations")
        .run(&mut conn)
        .await
        .map_err(|e| GenerateError::Postgres(e.into()))?;
    let progress = ProgressBar::new(options.count).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} transactions  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.enable_steady_tick(Duration::from_millis(200));
    let generated = load(&mut conn, options, |rows| progress.set_position(rows)).await;
    progress.finish_and_clear();
    let _ = conn.close().await;
    generated
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;

    fn options(seed: u64) -> Options {
        Options {
            count: 0,
            merchants: 50,
            from: date!(2025 - 01 - 01),
            to: date!(2025 - 01 - 31),
            seed,
        }
    }

    #[test]
    fn rows_are_valid_and_the_shares_hold() {
        let mut rows = Rows::new(options(3)).unwrap();
        let mut out = Vec::new();
        let (mut paid, mut boundary) = (0, 0);
        for _ in 0..20_000 {
            let (p, b) = rows.write_row(&mut out);
            paid += u32::from(p);
            boundary += u32::from(b);
        }
        let text = String::from_utf8(out).unwrap();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 6, "{line}");
            assert_eq!(fields[0].len(), 36);
            let merchant: u32 = fields[1].parse().unwrap();
            assert!((1..=50).contains(&merchant));
            let (amount, fee): (i64, i64) = (fields[2].parse().unwrap(), fields[3].parse().unwrap());
            assert!(amount >= 100 && fee >= 0 && fee <= amount, "{line}");
            assert!(fields[5].starts_with("2025-01-"), "{line}");
        }
        assert!((17_600..18_400).contains(&paid), "{paid} paid");
        assert!((120..280).contains(&boundary), "{boundary} on a boundary");
        assert!(text.contains(" 00:00:00.000000") && text.contains(" 23:59:59.999999"));
    }

    #[test]
    fn same_seed_same_rows() {
        let rows_of = |seed| {
            let mut rows = Rows::new(options(seed)).unwrap();
            let mut out = Vec::new();
            for _ in 0..100 {
                rows.write_row(&mut out);
            }
            out
        };
        assert_eq!(rows_of(1), rows_of(1));
        assert_ne!(rows_of(1), rows_of(2));
    }
}
