//! The ingest run's checks: each upload answered with a report that adds
//! up to its file, Postgres against the files, the baseline against the
//! engine's rows; and apart from them the two performance targets.

use sqlx::PgConnection;

use crate::common::fmt::{fmt_mib, fmt_rate, fmt_ratio};
use crate::common::verdict::{Check, Checks};

use super::runs::{Figures, UploadRun};
use super::store;
use super::upload::error_text;

/// The memory target: peak RSS of the large upload at most this much
/// above the small one's.
pub const RSS_GROWTH_LIMIT_MIB: f64 = 64.0;

/// The throughput target: engine lines/s at least this share of the
/// `\copy` rows/s of the same run.
pub const COPY_RATIO_TARGET: f64 = 0.40;

/// The upload was answered 200 with a report that adds up to its file.
pub fn upload(u: &UploadRun) -> Vec<Check> {
    let name = format!("upload_{}", u.label);
    let answered = match (&u.outcome, &u.reply) {
        (Err(e), _) => Check::fail(&name, e.clone()),
        (Ok(o), None) => Check::fail(&name, format!("answered {}: {}", o.status, error_text(&o.body))),
        (Ok(_), Some(Err(e))) => Check::fail(&name, e.clone()),
        (Ok(o), Some(Ok(_))) => match &o.send_error {
            Some(e) => Check::fail(name, format!("answered 200 but the body was not all sent: {e}")),
            None => Check::new(
                &name,
                true,
                format!(
                    "200 after {:.3} s for {} bytes of multipart body",
                    o.elapsed.as_secs_f64(),
                    o.content_length
                ),
            ),
        },
    };
    let counts_name = format!("upload_{}_counts", u.label);
    let counts = match u.reply() {
        None => Check::fail(counts_name, "no ingest report to check"),
        Some(r) => {
            let ok = r.total == u.scan.lines
                && r.rejected == 0
                && r.created + r.updated + r.unchanged == r.total
                && r.created == u.scan.new_ids;
            let mut detail = format!(
                "total {} (non-blank lines {}), created {} (new ids {}), updated {}, unchanged {}, rejected {}",
                r.total, u.scan.lines, r.created, u.scan.new_ids, r.updated, r.unchanged, r.rejected
            );
            if !r.errors.is_empty() {
                let first: Vec<String> = r
                    .errors
                    .iter()
                    .take(3)
                    .map(|e| format!("line {} {}: {}", e.line, e.code, e.message))
                    .collect();
                detail.push_str(&format!("; first errors: {}", first.join("; ")));
            }
            Check::new(counts_name, ok, detail)
        }
    };
    vec![answered, counts]
}

/// The two performance targets; they decide the exit code only
/// with `--enforce-targets`.
pub fn targets(f: &Figures<'_>) -> Vec<Check> {
    let mut out = Vec::new();
    let small = f.upload("small");
    let large = f.upload("large");
    let name = "rss_growth";
    out.push(match (f.engine_pid, small, large) {
        (None, _, _) => Check::skipped(name, "no --engine-pid"),
        (_, None, _) | (_, _, None) => Check::skipped(name, "no --small-file to compare with"),
        (_, Some(s), Some(l)) if !s.succeeded() || !l.succeeded() => {
            Check::skipped(name, "an upload failed: its peak means nothing")
        }
        (_, Some(s), Some(l)) => match f.rss_growth_mib() {
            None => Check::skipped(name, "no RSS figure (see the notes)"),
            Some(growth) => Check::new(
                name,
                growth <= RSS_GROWTH_LIMIT_MIB,
                format!(
                    "peak RSS {} MiB for {} lines - {} MiB for {} lines = {growth:.1} MiB (target <= {RSS_GROWTH_LIMIT_MIB} MiB)",
                    fmt_mib(l.peak_kib()),
                    l.scan.lines,
                    fmt_mib(s.peak_kib()),
                    s.scan.lines
                ),
            ),
        },
    });
    let name = "throughput_vs_copy";
    out.push(match (&f.baseline, f.ratio_lines()) {
        (None, _) => Check::skipped(name, "no \\copy baseline (--no-baseline or no database)"),
        (Some(b), None) => Check::skipped(
            name,
            b.skipped.clone().unwrap_or_else(|| "no engine or \\copy rate".into()),
        ),
        (Some(_), Some(r)) => Check::new(
            name,
            r >= COPY_RATIO_TARGET,
            format!(
                "engine {} lines/s / \\copy {} rows/s = {} (target >= {COPY_RATIO_TARGET:.2})",
                fmt_rate(f.upload("large").and_then(UploadRun::lines_per_sec)),
                fmt_rate(f.copy_rows_per_sec()),
                fmt_ratio(Some(r))
            ),
        ),
    });
    out
}

/// The checks that decide the exit code: the invariants, and the targets
/// too with `--enforce-targets` (the machine is shared and its speed
/// drifts; an invariant does not).
pub fn deciding(invariants: &Checks, targets: &Checks, enforce_targets: bool) -> Checks {
    let mut out = invariants.clone();
    if enforce_targets {
        out.extend(targets.iter().cloned());
    }
    out
}

/// What must hold once both uploads are answered (every row is committed
/// before the answer, so there is nothing to wait for).
pub async fn postgres(conn: &mut PgConnection, distinct: u64) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(
        match store::scalar(conn, "SELECT count(*) FROM platform_purchases").await {
            Ok(n) => Check::new(
                "pg_rows",
                u64::try_from(n).ok() == Some(distinct),
                format!("{n} rows in platform_purchases, distinct transaction ids in the files = {distinct}"),
            ),
            Err(e) => Check::fail("pg_rows", e),
        },
    );
    out.push(
        match store::scalar(conn, "SELECT COALESCE(sum(purchases), 0)::bigint FROM player_spend").await {
            Ok(n) => Check::new(
                "pg_spend_purchases",
                u64::try_from(n).ok() == Some(distinct),
                format!("sum(purchases) in player_spend = {n}, distinct transaction ids = {distinct}"),
            ),
            Err(e) => Check::fail("pg_spend_purchases", e),
        },
    );
    // player_spend is kept by deltas; it must be exactly the aggregate.
    const SPEND_MISMATCHES: &str = "SELECT count(*) FROM \
         (SELECT player_id, currency, count(*) AS n, sum(price_minor) AS total \
          FROM platform_purchases GROUP BY player_id, currency) p \
         FULL JOIN player_spend s USING (player_id, currency) \
         WHERE (COALESCE(p.n, 0), COALESCE(p.total, 0)) \
               IS DISTINCT FROM (COALESCE(s.purchases, 0), COALESCE(s.total_minor, 0))";
    out.push(match store::scalar(conn, SPEND_MISMATCHES).await {
        Ok(n) => Check::new(
            "pg_spend_exact",
            n == 0,
            format!("{n} (player, currency) rows of player_spend differ from count/sum over platform_purchases"),
        ),
        Err(e) => Check::fail("pg_spend_exact", e),
    });
    out
}

/// The baseline holds the same data as the engine stored for those ids.
pub async fn same_data(conn: &mut PgConnection, csv_rows: u64) -> Check {
    const DIFFERENT: &str = "SELECT count(*) FROM copy_baseline b \
         LEFT JOIN platform_purchases p USING (transaction_id) \
         WHERE p.transaction_id IS NULL \
            OR (b.player_id, b.platform, b.item_id, b.item_name, b.item_type, b.price_minor, b.currency, \
                b.purchased_at, b.extras) \
               IS DISTINCT FROM (p.player_id, p.platform, p.item_id, p.item_name, p.item_type, p.price_minor, \
                p.currency, p.purchased_at, p.extras)";
    const SAMPLE: &str = "SELECT b.transaction_id FROM copy_baseline b \
         LEFT JOIN platform_purchases p USING (transaction_id) \
         WHERE p.transaction_id IS NULL \
            OR (b.player_id, b.platform, b.item_id, b.item_name, b.item_type, b.price_minor, b.currency, \
                b.purchased_at, b.extras) \
               IS DISTINCT FROM (p.player_id, p.platform, p.item_id, p.item_name, p.item_type, p.price_minor, \
                p.currency, p.purchased_at, p.extras) \
         ORDER BY 1 LIMIT 3";
    let rows = match store::scalar(conn, "SELECT count(*) FROM copy_baseline").await {
        Ok(n) => n,
        Err(e) => return Check::fail("copy_same_data", e),
    };
    let different = match store::scalar(conn, DIFFERENT).await {
        Ok(n) => n,
        Err(e) => return Check::fail("copy_same_data", e),
    };
    let mut detail = format!(
        "{rows} rows in {} (CSV rows {csv_rows}), {different} missing from or different in platform_purchases",
        store::BASELINE_TABLE
    );
    if different > 0 {
        let sample = sqlx::query_scalar::<_, String>(SAMPLE).fetch_all(&mut *conn);
        if let Ok(Ok(ids)) = tokio::time::timeout(store::QUERY_TIMEOUT, sample).await {
            detail.push_str(&format!(", e.g. {ids:?}"));
        }
    }
    Check::new(
        "copy_same_data",
        different == 0 && u64::try_from(rows).ok() == Some(csv_rows),
        detail,
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::common::proc::cpu::CpuRun;
    use crate::common::proc::rss::Sampled;
    use crate::common::verdict::Verdict;
    use crate::scenarios::ingest::files::FileScan;
    use crate::scenarios::ingest::runs::{BaselineRun, MemRun};
    use crate::scenarios::ingest::store::CopyRun;
    use crate::scenarios::ingest::upload::{IngestReply, UploadOutcome};

    fn upload(label: &'static str, lines: u64, secs: u64, peak_mib: u64) -> UploadRun {
        let reply = IngestReply {
            created: lines,
            updated: 0,
            unchanged: 0,
            rejected: 0,
            total: lines,
            errors: Vec::new(),
            errors_truncated: false,
        };
        UploadRun {
            label,
            scan: FileScan {
                path: PathBuf::from(format!("{label}.ndjson")),
                bytes: lines * 300,
                lines,
                distinct: lines,
                new_ids: lines,
            },
            outcome: Ok(UploadOutcome {
                status: 200,
                body: bytes::Bytes::new(),
                content_length: lines * 300 + 200,
                elapsed: Duration::from_secs(secs),
                body_sent: Some(Duration::from_secs(secs)),
                send_error: None,
            }),
            reply: Some(Ok(reply)),
            mem: Some(MemRun {
                before_kib: Some(10 << 10),
                after_kib: Some(20 << 10),
                hwm_kib: Some(peak_mib << 10),
                reset_error: None,
                sampled: Sampled {
                    peak_kib: (peak_mib << 10) - 100,
                    samples: 10,
                    ..Sampled::default()
                },
            }),
            cpu: CpuRun::default(),
            cost: None,
            notes: Vec::new(),
        }
    }

    fn figures(large_peak_mib: u64, copy_secs: u64) -> Figures<'static> {
        let mut baseline = BaselineRun::new(PathBuf::from("x.csv"));
        baseline.copy = Some(CopyRun {
            elapsed: Duration::from_secs(copy_secs),
            copied: 1_000_000,
            command: String::new(),
        });
        Figures {
            url: "http://x",
            engine_pid: Some(1),
            engine_name: None,
            // 100,000 lines/s for the large file.
            uploads: vec![
                upload("small", 100_000, 1, 50),
                upload("large", 1_000_000, 10, large_peak_mib),
            ],
            distinct: 1_100_000,
            baseline: Some(baseline),
        }
    }

    fn verdicts(f: &Figures<'_>) -> Vec<Verdict> {
        targets(f).iter().map(|t| t.verdict).collect()
    }

    #[test]
    fn targets_pass_and_fail_at_their_limits() {
        // Growth 64 MiB exactly, copy 250,000 rows/s: ratio 0.40 exactly.
        let f = figures(50 + 64, 4);
        assert_eq!(verdicts(&f), [Verdict::Pass, Verdict::Pass]);
        assert_eq!(f.rss_growth_mib(), Some(64.0));
        assert_eq!(f.ratio_lines(), Some(0.4));
        // Growth 65 MiB, copy 1,000,000 rows/s: ratio 0.1.
        let f = figures(50 + 65, 1);
        assert_eq!(verdicts(&f), [Verdict::Fail, Verdict::Fail]);
        assert_eq!(f.ratio_lines(), Some(0.1));
    }

    #[test]
    fn missed_targets_decide_the_exit_code_only_when_enforced() {
        let invariants: Checks = [Check::new("x", true, "")].into_iter().collect();
        let missed: Checks = targets(&figures(200, 1)).into_iter().collect();
        assert!(deciding(&invariants, &missed, false).passed());
        assert!(!deciding(&invariants, &missed, true).passed());
        let met: Checks = targets(&figures(60, 4)).into_iter().collect();
        assert!(deciding(&invariants, &met, true).passed());
        let mut failed = invariants.clone();
        failed.push(Check::fail("y", ""));
        assert!(!deciding(&failed, &met, false).passed());
    }

    #[test]
    fn a_failed_upload_skips_the_targets() {
        let mut f = figures(60, 4);
        f.uploads[1].outcome = Err("connection reset".into());
        assert_eq!(verdicts(&f), [Verdict::Skipped, Verdict::Skipped]);
        assert!(upload_checks_fail(&f.uploads[1]));
    }

    fn upload_checks_fail(u: &UploadRun) -> bool {
        super::upload(u).iter().any(|c| c.verdict == Verdict::Fail)
    }
}
