//! The one way a run reports what it checked: each check is PASS, FAIL or
//! SKIPPED, and the run's result follows from the list.
//!
//! A SKIPPED check (no database given, a fault that cannot be made here)
//! checked nothing, so it never counts as passed: the final line names every
//! skipped check, a run in which nothing passed is not a pass, and `--strict`
//! makes any skipped check fail the run (what a CI gate wants: nothing may
//! go unchecked silently).

use std::process::ExitCode;

use serde_json::{Map, Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    Skipped,
}

impl Verdict {
    /// The word in the printed report.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skipped => "SKIPPED",
        }
    }

    /// The word in the JSON summary.
    pub fn json(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Skipped => "skipped",
        }
    }
}

/// One named check and what it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
}

impl Check {
    /// PASS when `ok`, else FAIL.
    pub fn new(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            verdict: if ok { Verdict::Pass } else { Verdict::Fail },
            detail: detail.into(),
        }
    }

    pub fn fail(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check::new(name, false, detail)
    }

    /// Not checked, and why.
    pub fn skipped(name: impl Into<String>, why: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            verdict: Verdict::Skipped,
            detail: why.into(),
        }
    }

    /// `PASS name: detail`.
    pub fn line(&self) -> String {
        format!("{} {}: {}", self.verdict.label(), self.name, self.detail)
    }
}

/// The checks of a run, in the order they were made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checks(Vec<Check>);

impl Checks {
    pub fn new() -> Checks {
        Checks(Vec::new())
    }

    pub fn push(&mut self, check: Check) {
        self.0.push(check);
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Check> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    fn names(&self, verdict: Verdict) -> Vec<&str> {
        self.0
            .iter()
            .filter(|c| c.verdict == verdict)
            .map(|c| c.name.as_str())
            .collect()
    }

    pub fn count(&self, verdict: Verdict) -> usize {
        self.0.iter().filter(|c| c.verdict == verdict).count()
    }

    /// Nothing failed and something passed. Skipped checks do not count:
    /// a run that checked nothing did not pass.
    pub fn passed(&self) -> bool {
        self.count(Verdict::Fail) == 0 && self.count(Verdict::Pass) > 0
    }

    /// `passed()`, and with `strict` nothing skipped either.
    pub fn passed_strictly(&self, strict: bool) -> bool {
        self.passed() && !(strict && self.count(Verdict::Skipped) > 0)
    }

    /// One line per check.
    pub fn print(&self) {
        for check in &self.0 {
            println!("{}", check.line());
        }
    }

    /// The last line of a run: its result, the failed checks and every
    /// skipped one by name.
    pub fn result_line(&self, strict: bool) -> String {
        let (passed, failed, skipped) = (
            self.count(Verdict::Pass),
            self.names(Verdict::Fail),
            self.names(Verdict::Skipped),
        );
        let skipped_part = if skipped.is_empty() {
            String::new()
        } else {
            format!(
                "; SKIPPED{}: {}",
                if strict { " (--strict: a failure)" } else { "" },
                skipped.join(", ")
            )
        };
        let word = match (failed.is_empty(), passed) {
            (false, _) => "FAIL",
            (true, 0) => "SKIPPED",
            (true, _) if strict && !skipped.is_empty() => "FAIL",
            (true, _) => "PASS",
        };
        let failed_part = if failed.is_empty() {
            String::new()
        } else {
            format!("{} failed: {}; ", failed.len(), failed.join(", "))
        };
        if passed == 0 && failed.is_empty() {
            format!("RESULT: {word} (nothing was checked{skipped_part})")
        } else {
            format!(
                "RESULT: {word} ({failed_part}{passed} of {} checks passed{skipped_part})",
                self.0.len()
            )
        }
    }

    /// `{"name": {"result": "pass", "detail": "..."}, ...}`.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        for check in &self.0 {
            map.insert(
                check.name.clone(),
                json!({"result": check.verdict.json(), "detail": check.detail}),
            );
        }
        Value::Object(map)
    }

    /// Adds `invariants`, `passed` and `skipped` to a JSON summary.
    pub fn add_to(&self, summary: &mut Value) {
        if let Some(obj) = summary.as_object_mut() {
            obj.insert("invariants".into(), self.to_json());
            obj.insert("passed".into(), json!(self.passed()));
            obj.insert("skipped".into(), json!(self.names(Verdict::Skipped)));
        }
    }

    /// 0 passed, 1 a check failed (or nothing was checked, or with `strict`
    /// a check was skipped).
    pub fn exit_code(&self, strict: bool) -> ExitCode {
        if self.passed_strictly(strict) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }
}

impl Extend<Check> for Checks {
    fn extend<I: IntoIterator<Item = Check>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

impl FromIterator<Check> for Checks {
    fn from_iter<I: IntoIterator<Item = Check>>(iter: I) -> Checks {
        Checks(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Checks {
    type Item = &'a Check;
    type IntoIter = std::slice::Iter<'a, Check>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(list: &[(&str, Verdict)]) -> Checks {
        list.iter()
            .map(|(name, v)| Check {
                name: (*name).into(),
                verdict: *v,
                detail: String::new(),
            })
            .collect()
    }

    #[test]
    fn a_skipped_check_is_never_a_pass() {
        let c = checks(&[("a", Verdict::Pass), ("b", Verdict::Skipped)]);
        assert!(c.passed());
        assert!(!c.passed_strictly(true));
        assert_eq!(c.result_line(false), "RESULT: PASS (1 of 2 checks passed; SKIPPED: b)");
        assert_eq!(
            c.result_line(true),
            "RESULT: FAIL (1 of 2 checks passed; SKIPPED (--strict: a failure): b)"
        );
        // Nothing checked is not a pass.
        let c = checks(&[("a", Verdict::Skipped), ("b", Verdict::Skipped)]);
        assert!(!c.passed());
        assert_eq!(
            c.result_line(false),
            "RESULT: SKIPPED (nothing was checked; SKIPPED: a, b)"
        );
        assert!(!Checks::new().passed());
        assert_eq!(
            Checks::new().result_line(false),
            "RESULT: SKIPPED (nothing was checked)"
        );
    }

    #[test]
    fn a_failure_names_itself() {
        let c = checks(&[("a", Verdict::Pass), ("b", Verdict::Fail), ("c", Verdict::Skipped)]);
        assert!(!c.passed());
        assert_eq!(
            c.result_line(false),
            "RESULT: FAIL (1 failed: b; 1 of 3 checks passed; SKIPPED: c)"
        );
        let mut summary = json!({"scenario": "x"});
        c.add_to(&mut summary);
        assert_eq!(summary["invariants"]["b"]["result"], "fail");
        assert_eq!(summary["invariants"]["c"]["result"], "skipped");
        assert_eq!(summary["passed"], false);
        assert_eq!(summary["skipped"], json!(["c"]));
        assert_eq!(Check::new("x", true, "d").line(), "PASS x: d");
    }
}
