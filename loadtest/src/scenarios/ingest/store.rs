//! Postgres side of the ingest scenario: the fresh-table precondition and
//! the `\copy` baseline (a psql subprocess, as
//! an operator would load the same rows by hand).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::PgConnection;
use tokio::process::Command;

use super::csv::COLUMNS;

/// The checks aggregate a million rows: far above the sale checks' 10 s.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(300);

/// The baseline table, created in the load database next to the engine's.
pub const BASELINE_TABLE: &str = "copy_baseline";

pub async fn scalar(conn: &mut PgConnection, sql: &'static str) -> Result<i64, String> {
    let query = sqlx::query_scalar::<_, i64>(sql).fetch_one(&mut *conn);
    match tokio::time::timeout(QUERY_TIMEOUT, query).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(format!("{sql}: {e}")),
        Err(_) => Err(format!("{sql}: timed out after {QUERY_TIMEOUT:?}")),
    }
}

async fn execute(conn: &mut PgConnection, sql: &'static str) -> Result<(), String> {
    let query = sqlx::raw_sql(sql).execute(&mut *conn);
    match tokio::time::timeout(QUERY_TIMEOUT, query).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{sql}: {e}")),
        Err(_) => Err(format!("{sql}: timed out after {QUERY_TIMEOUT:?}")),
    }
}

/// Rows already in `platform_purchases` (the checks need an empty table).
pub async fn existing_rows(conn: &mut PgConnection) -> Result<i64, String> {
    scalar(conn, "SELECT count(*) FROM platform_purchases").await
}

/// Writes the dirty buffers out before a timed phase, so that neither the
/// engine nor `\copy` pays for the writes of the phase before it. Needs
/// superuser or `pg_checkpoint`; without it the phases just run unsettled.
pub async fn checkpoint(conn: &mut PgConnection) -> Result<(), String> {
    execute(conn, "CHECKPOINT").await
}

/// Creates the baseline table: `platform_purchases`' columns, types,
/// defaults, constraints and indexes (its primary key on transaction_id).
/// Returns the index definitions, to show what `\copy` had to maintain.
pub async fn create_baseline_table(conn: &mut PgConnection) -> Result<Vec<String>, String> {
    execute(
        conn,
        "DROP TABLE IF EXISTS copy_baseline; \
         CREATE TABLE copy_baseline (LIKE platform_purchases INCLUDING ALL)",
    )
    .await?;
    let query = sqlx::query_scalar::<_, String>(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = $1 ORDER BY indexname",
    )
    .bind(BASELINE_TABLE)
    .fetch_all(&mut *conn);
    let indexes = match tokio::time::timeout(QUERY_TIMEOUT, query).await {
        Ok(Ok(defs)) => defs,
        Ok(Err(e)) => return Err(format!("listing the indexes of {BASELINE_TABLE}: {e}")),
        Err(_) => return Err(format!("listing the indexes of {BASELINE_TABLE}: timed out")),
    };
    if !indexes
        .iter()
        .any(|d| d.contains("UNIQUE") && d.ends_with("(transaction_id)"))
    {
        return Err(format!(
            "{BASELINE_TABLE} has no unique index on transaction_id (platform_purchases' indexes: {indexes:?})"
        ));
    }
    Ok(indexes)
}

/// One timed `\copy`.
#[derive(Debug, Clone)]
pub struct CopyRun {
    /// psql start -> psql exit: connecting, reading the CSV, COPY, commit.
    pub elapsed: Duration,
    /// Rows psql reported (`COPY n`).
    pub copied: u64,
    pub command: String,
}

/// Why there is no baseline figure.
#[derive(Debug, Clone)]
pub enum CopyFailure {
    /// psql is not installed: the baseline is skipped, not failed.
    Skipped(String),
    Failed(String),
}

/// The `\copy` meta-command for `csv`.
pub fn copy_command(csv: &Path) -> Result<String, String> {
    let path = csv.to_str().ok_or_else(|| format!("{} is not UTF-8", csv.display()))?;
    // psql reads the name between single quotes; keep it simple rather than escape.
    if path.contains(['\'', '\n', '\r']) {
        return Err(format!("the CSV path {path:?} contains a quote or a line break"));
    }
    Ok(format!(
        "\\copy {BASELINE_TABLE} ({}) FROM '{path}' WITH (FORMAT csv)",
        COLUMNS.join(", ")
    ))
}

/// `COPY 950123` (psql's command tag) -> 950123.
pub fn parse_copy_tag(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COPY "))
        .filter_map(|n| n.trim().parse().ok())
        .next_back()
}

/// Runs `psql -c '\copy ...'` and times it, psql start-up included (tens of
/// milliseconds, against seconds of COPY).
pub async fn run_copy(psql: &str, database_url: &str, csv: &Path, timeout: Duration) -> Result<CopyRun, CopyFailure> {
    let command = copy_command(csv).map_err(CopyFailure::Failed)?;
    let start = Instant::now();
    let child = Command::new(psql)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-d", database_url, "-c", &command])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CopyFailure::Skipped(format!(
                "{psql} not found on PATH (apt-get install postgresql-client): baseline skipped"
            )));
        }
        Err(e) => return Err(CopyFailure::Failed(format!("cannot start {psql}: {e}"))),
    };
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return Err(CopyFailure::Failed(format!("{psql} failed: {e}"))),
        Err(_) => return Err(CopyFailure::Failed(format!("{psql} did not finish within {timeout:?}"))),
    };
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    match parse_copy_tag(&stdout) {
        Some(copied) if output.status.success() => Ok(CopyRun {
            elapsed,
            copied,
            command: format!("psql -X -v ON_ERROR_STOP=1 -d <database-url> -c \"{command}\""),
        }),
        _ => Err(CopyFailure::Failed(format!(
            "{psql} exited with {}: {} {}",
            output.status,
            stderr.trim(),
            stdout.trim()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_command_lists_the_columns() {
        assert_eq!(
            copy_command(Path::new("/d/p.csv")).unwrap(),
            "\\copy copy_baseline (transaction_id, player_id, platform, item_id, item_name, item_type, \
             price_minor, currency, purchased_at, extras) FROM '/d/p.csv' WITH (FORMAT csv)"
        );
        assert!(copy_command(Path::new("/d/it's.csv")).is_err());
    }

    #[test]
    fn parses_the_copy_tag() {
        assert_eq!(parse_copy_tag("COPY 950123\n"), Some(950_123));
        assert_eq!(parse_copy_tag("COPY 0"), Some(0));
        assert_eq!(parse_copy_tag(""), None);
        assert_eq!(parse_copy_tag("ERROR: x"), None);
    }
}
