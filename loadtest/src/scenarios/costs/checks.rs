//! What makes a cost table worth reading.

use crate::common::cost::report::CostReport;
use crate::common::verdict::Check;

/// The window saw requests, and every Redis server was read throughout.
pub fn checks(cost: &CostReport, wanted: Option<u64>) -> Vec<Check> {
    let mut out = vec![Check::new(
        "requests_in_window",
        cost.requests > 0 && wanted.is_none_or(|n| cost.phase_requests >= n),
        match wanted {
            Some(n) => format!(
                "{} requests in {:.2} s, {n} wanted",
                cost.phase_requests, cost.phase_secs
            ),
            None => format!("{} requests in {:.2} s", cost.phase_requests, cost.phase_secs),
        },
    )];
    out.push(match &cost.redis {
        Some(_) => Check::new(
            "redis_read",
            true,
            format!(
                "INFO of {} server(s) at every edge of the window",
                cost.primaries.len().max(1)
            ),
        ),
        None => Check::fail("redis_read", cost.notes.join("; ")),
    });
    out
}
