//! What an oha run must show: no error (oha counts a connection error or a
//! timeout; a request cut by `-z` is not one), a rate above zero, and only
//! the statuses the recipe expects, 200 among them.

use serde_json::Value;

use crate::common::verdict::Check;

use super::args::Recipe;

pub fn checks(recipe: Recipe, result: &Value) -> Vec<Check> {
    let summary = &result["summary"];
    let success_rate = summary["successRate"].as_f64();
    let rate = summary["requestsPerSec"].as_f64();
    let statuses: Vec<(String, u64)> = result["statusCodeDistribution"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default();
    let expected = recipe.expected_statuses();
    let others: Vec<&(String, u64)> = statuses
        .iter()
        .filter(|(k, _)| !expected.contains(&k.as_str()))
        .collect();
    let ok = statuses.iter().find(|(k, _)| k == "200").map_or(0, |(_, n)| *n);
    vec![
        Check::new(
            "oha_no_errors",
            success_rate == Some(1.0),
            format!(
                "successRate {}; errors {}",
                success_rate.map_or("missing".into(), |r| r.to_string()),
                result["errorDistribution"]
            ),
        ),
        Check::new(
            "oha_rate",
            rate.is_some_and(|r| r > 0.0),
            format!(
                "requestsPerSec {}",
                rate.map_or("missing".into(), |r| format!("{r:.1}"))
            ),
        ),
        Check::new(
            "oha_statuses",
            others.is_empty() && ok > 0,
            format!("statuses {statuses:?}; expected {expected:?}, 200 among them"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::common::verdict::Verdict;

    fn verdicts(recipe: Recipe, result: Value) -> Vec<Verdict> {
        checks(recipe, &result).iter().map(|c| c.verdict).collect()
    }

    #[test]
    fn errors_rates_and_statuses() {
        let good = json!({"summary": {"successRate": 1.0, "requestsPerSec": 812.5},
                          "statusCodeDistribution": {"200": 8125}, "errorDistribution": {}});
        assert_eq!(verdicts(Recipe::Checkout, good), [Verdict::Pass; 3]);
        let refused = json!({"summary": {"successRate": 1.0, "requestsPerSec": 5.0},
                             "statusCodeDistribution": {"200": 40, "409": 10}});
        assert_eq!(verdicts(Recipe::Purchase, refused.clone()), [Verdict::Pass; 3]);
        assert_eq!(
            verdicts(Recipe::Wallet, refused),
            [Verdict::Pass, Verdict::Pass, Verdict::Fail]
        );
        let broken = json!({"summary": {"successRate": 0.98, "requestsPerSec": 0.0},
                            "statusCodeDistribution": {"503": 3},
                            "errorDistribution": {"connection closed": 2}});
        assert_eq!(verdicts(Recipe::Orders, broken), [Verdict::Fail; 3]);
        assert_eq!(verdicts(Recipe::Orders, json!({})), [Verdict::Fail; 3]);
    }
}
