//! The engine's own counts, from its `/metrics` (Prometheus text): the
//! calls of each batched script and the requests they carried, the flush
//! batches (one `outbox_ack` call each) and the events the flusher wrote to
//! Postgres, and the HTTP requests it answered.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::http::{Answer, Client, Method, Target};

/// How long a `/metrics` scrape may take.
const METRICS_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters of one engine at one instant, or their growth between two.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// Calls of each batched script (`stampede_script_batch_requests_count`).
    pub script_calls: BTreeMap<String, u64>,
    /// Requests those calls carried (`stampede_script_batch_requests_sum`).
    pub script_requests: BTreeMap<String, u64>,
    /// Flush batches (`stampede_flush_batch_rows_count`): the flusher calls
    /// `outbox_ack` once per batch it settles.
    pub flush_batches: u64,
    /// Events written to Postgres (`stampede_flushed_events_total`).
    pub flushed_events: u64,
    /// HTTP requests answered, every route but `/metrics` and `/health`
    /// (`stampede_http_requests_total`): what an observer's own scrapes and
    /// a balancer's probes do not inflate.
    pub http_requests: u64,
}

/// The script whose flush-batch count stands for its calls.
pub const FLUSH_SCRIPT: &str = "outbox_ack";

/// Routes whose requests are not load: the scrapes and the probes.
const NOT_LOAD: &[&str] = &["metrics", "health"];

/// `name="value"` in a label set `{a="x",b="y"}`.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=\"");
    let start = labels.find(&key)? + key.len();
    let rest = &labels[start..];
    rest.find('"').map(|end| &rest[..end])
}

/// A sample's value as a count (Prometheus prints counters as floats).
fn count(value: &str) -> u64 {
    value.trim().parse::<f64>().map_or(0, |v| v.max(0.0).round() as u64)
}

pub fn parse(text: &str) -> EngineCounters {
    let mut c = EngineCounters::default();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        match name {
            "stampede_script_batch_requests_count" => {
                if let Some(script) = label(labels, "script") {
                    *c.script_calls.entry(script.to_owned()).or_default() += count(value);
                }
            }
            "stampede_script_batch_requests_sum" => {
                if let Some(script) = label(labels, "script") {
                    *c.script_requests.entry(script.to_owned()).or_default() += count(value);
                }
            }
            "stampede_flush_batch_rows_count" => c.flush_batches += count(value),
            "stampede_flushed_events_total" => c.flushed_events += count(value),
            "stampede_http_requests_total" if !label(labels, "route").is_some_and(|r| NOT_LOAD.contains(&r)) => {
                c.http_requests += count(value);
            }
            _ => {}
        }
    }
    c
}

/// `GET /metrics` of the engine, read.
pub async fn scrape(target: &Target) -> Result<EngineCounters, String> {
    let mut client = Client::new(target, METRICS_TIMEOUT);
    match client.call(Method::GET, "/metrics", &[], b"").await {
        Answer::Reply { status: 200, raw, .. } => Ok(parse(&String::from_utf8_lossy(&raw))),
        other => Err(format!("GET /metrics: {}", other.describe())),
    }
}

impl EngineCounters {
    /// Growth from `before` to `self` (a counter that went down, an engine
    /// restart, counts from zero).
    pub fn since(&self, before: &EngineCounters) -> EngineCounters {
        let grown = |a: u64, b: u64| a.checked_sub(b).unwrap_or(a);
        let map = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| {
            a.iter()
                .map(|(k, v)| (k.clone(), grown(*v, b.get(k).copied().unwrap_or(0))))
                .collect()
        };
        EngineCounters {
            script_calls: map(&self.script_calls, &before.script_calls),
            script_requests: map(&self.script_requests, &before.script_requests),
            flush_batches: grown(self.flush_batches, before.flush_batches),
            flushed_events: grown(self.flushed_events, before.flushed_events),
            http_requests: grown(self.http_requests, before.http_requests),
        }
    }

    pub fn add(&mut self, other: &EngineCounters) {
        for (k, v) in &other.script_calls {
            *self.script_calls.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.script_requests {
            *self.script_requests.entry(k.clone()).or_default() += v;
        }
        self.flush_batches += other.flush_batches;
        self.flushed_events += other.flushed_events;
        self.http_requests += other.http_requests;
    }

    /// Calls of `script`: its batch count, or for `outbox_ack` the flush
    /// batches. `None`: the engine does not count that script.
    pub fn calls_of(&self, script: &str) -> Option<u64> {
        if script == FLUSH_SCRIPT {
            return Some(self.flush_batches);
        }
        self.script_calls.get(script).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE stampede_script_batch_requests histogram
stampede_script_batch_requests_bucket{script="purchase",le="1"} 3
stampede_script_batch_requests_sum{script="purchase"} 120
stampede_script_batch_requests_count{script="purchase"} 10
stampede_script_batch_requests_sum{script="checkout"} 0
stampede_script_batch_requests_count{script="checkout"} 0
stampede_flush_batch_rows_count 4
stampede_flushed_events_total 250
stampede_http_requests_total{route="purchase",status="200"} 100
stampede_http_requests_total{route="checkout",status="409"} 20
stampede_http_requests_total{route="metrics",status="200"} 7
stampede_http_requests_total{route="health",status="200"} 2
"#;

    #[test]
    fn reads_the_counts_it_needs() {
        let c = parse(TEXT);
        assert_eq!(c.script_calls["purchase"], 10);
        assert_eq!(c.script_requests["purchase"], 120);
        assert_eq!(c.script_calls["checkout"], 0);
        assert_eq!((c.flush_batches, c.flushed_events, c.http_requests), (4, 250, 120));
        assert_eq!(c.calls_of("outbox_ack"), Some(4));
        assert_eq!(c.calls_of("purchase"), Some(10));
        assert_eq!(c.calls_of("baseline_purchase"), None);
    }

    #[test]
    fn growth_and_sums() {
        let before = parse(TEXT);
        let after = parse(
            &TEXT
                .replace("} 10\n", "} 15\n")
                .replace("events_total 250", "events_total 300"),
        );
        let d = after.since(&before);
        assert_eq!(d.script_calls["purchase"], 5);
        assert_eq!(d.flushed_events, 50);
        assert_eq!(d.http_requests, 0);
        let mut sum = d.clone();
        sum.add(&d);
        assert_eq!((sum.script_calls["purchase"], sum.flushed_events), (10, 100));
    }
}
