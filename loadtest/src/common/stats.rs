//! Latencies and status counts, kept per connection task and merged once
//! the tasks have finished (no shared state on the hot path).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Latencies in µs, as they came, for one connection task or merged. A
/// task does not keep a histogram of its own: one of 1 µs .. 120 s at 3
/// significant digits takes ~150 KB, and 1000 connections' two made the
/// driver zero ~300 MB, on page faults that stalled its thread into the
/// measured window (the first run after a quiet spell paid most). The
/// histogram is made once, from everything merged.
#[derive(Debug, Default)]
pub struct Latencies(Vec<u32>);

impl Latencies {
    pub fn record(&mut self, latency: Duration) {
        self.0.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
    }

    pub fn merge(&mut self, other: &Latencies) {
        self.0.extend_from_slice(&other.0);
    }

    /// As a histogram, each latency recorded as [`record`] does.
    pub fn histogram(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        for &us in &self.0 {
            record(&mut h, Duration::from_micros(u64::from(us)));
        }
        h
    }
}

/// Latencies + status counts of one endpoint.
pub struct EndpointStats {
    latencies: Latencies,
    /// When each answered request was sent, in the order of `latencies`:
    /// where in the run its slowest requests fall ([`EndpointStats::tail`]).
    sent: Vec<Instant>,
    /// "200", "409 ITEM_SOLD", "timeout", "transport", ... -> count.
    pub statuses: BTreeMap<String, u64>,
    /// Requests that got any answer or failed (everything that was sent).
    pub requests: u64,
}

impl EndpointStats {
    pub fn new() -> EndpointStats {
        EndpointStats {
            latencies: Latencies::default(),
            sent: Vec::new(),
            statuses: BTreeMap::new(),
            requests: 0,
        }
    }

    pub fn record_response(&mut self, status_key: &str, sent: Instant, latency: Duration) {
        self.latencies.record(latency);
        self.sent.push(sent);
        self.requests += 1;
        // The key is allocated once per distinct status, not per request.
        match self.statuses.get_mut(status_key) {
            Some(count) => *count += 1,
            None => {
                self.statuses.insert(status_key.to_string(), 1);
            }
        }
    }

    pub fn record_failure(&mut self, kind: &str) {
        self.requests += 1;
        *self.statuses.entry(kind.to_string()).or_insert(0) += 1;
    }

    /// The answers' latencies as a histogram.
    pub fn latency(&self) -> Histogram<u64> {
        self.latencies.histogram()
    }

    /// The requests at or above the `q` quantile of latency: how many, and
    /// when they were sent (ms after `start`: first, median, last).
    pub fn tail(&self, start: Instant, q: f64) -> Option<Tail> {
        let h = self.latency();
        if h.is_empty() {
            return None;
        }
        let bound = h.value_at_quantile(q);
        let mut sent_ms: Vec<f64> = self
            .latencies
            .0
            .iter()
            .zip(&self.sent)
            .filter(|(us, _)| u64::from(**us).max(1) >= bound)
            .map(|(_, at)| at.saturating_duration_since(start).as_secs_f64() * 1000.0)
            .collect();
        sent_ms.sort_by(f64::total_cmp);
        let (first, last) = (*sent_ms.first()?, *sent_ms.last()?);
        Some(Tail {
            requests: sent_ms.len(),
            from_ms: bound as f64 / 1000.0,
            first_ms: first,
            median_ms: sent_ms[sent_ms.len() / 2],
            last_ms: last,
        })
    }

    pub fn count(&self, status_key: &str) -> u64 {
        self.statuses.get(status_key).copied().unwrap_or(0)
    }

    /// Requests whose status key is not in `allowed`.
    pub fn count_not_in(&self, allowed: &[&str]) -> u64 {
        self.statuses
            .iter()
            .filter(|(k, _)| !allowed.contains(&k.as_str()))
            .map(|(_, v)| *v)
            .sum()
    }

    pub fn merge(&mut self, other: &EndpointStats) {
        self.latencies.merge(&other.latencies);
        self.sent.extend_from_slice(&other.sent);
        self.requests += other.requests;
        for (k, v) in &other.statuses {
            *self.statuses.entry(k.clone()).or_insert(0) += v;
        }
    }
}

/// Microseconds, 1 µs .. 120 s, 3 significant digits: every latency the
/// driver records.
pub fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 120_000_000, 3) {
        Ok(h) => h,
        // The bounds above are constants that hdrhistogram accepts.
        Err(e) => panic!("histogram bounds rejected: {e:?}"),
    }
}

/// Records a latency (at least 1 µs, at most the histogram's bound).
pub fn record(h: &mut Histogram<u64>, latency: Duration) {
    h.saturating_record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1));
}

/// The `q` quantile in milliseconds; 0 for an empty histogram.
pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

/// The slowest requests of an endpoint: those of `from_ms` or more, and
/// when they were sent after the load's start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tail {
    pub requests: usize,
    pub from_ms: f64,
    pub first_ms: f64,
    pub median_ms: f64,
    pub last_ms: f64,
}

impl Tail {
    pub fn to_json(self) -> Value {
        json!({
            "requests": self.requests, "from_ms": self.from_ms, "sent_first_ms": self.first_ms,
            "sent_median_ms": self.median_ms, "sent_last_ms": self.last_ms,
        })
    }
}

/// p50, p90, p99 and max of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            p50: quantile_ms(h, 0.50),
            p90: quantile_ms(h, 0.90),
            p99: quantile_ms(h, 0.99),
            max: quantile_ms(h, 1.0),
        }
    }

    pub fn to_json(self) -> Value {
        json!({"p50_ms": self.p50, "p90_ms": self.p90, "p99_ms": self.p99, "max_ms": self.max})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_latencies_make_one_histogram() {
        let start = Instant::now();
        let mut all = EndpointStats::new();
        for conn in 0..3_u64 {
            let mut one = EndpointStats::new();
            for ms in 1..=100 {
                let sent = start + Duration::from_millis(ms);
                one.record_response("200", sent, Duration::from_millis(ms + conn * 100));
            }
            one.record_failure("timeout");
            all.merge(&one);
        }
        assert_eq!(all.requests, 303);
        assert_eq!(all.count("200"), 300);
        let latency = Latency::of(&all.latency());
        assert!((latency.p50 - 150.0).abs() < 1.0, "{latency:?}");
        assert!((latency.max - 300.0).abs() < 1.0, "{latency:?}");
        // The slowest 1% are the third connection's last requests, sent
        // 97-100 ms after the start (the histogram's bucket decides 3 or 4).
        let tail = all.tail(start, 0.99).expect("a tail");
        assert!((3..=4).contains(&tail.requests), "{tail:?}");
        assert!(
            tail.first_ms >= 96.99 && (tail.last_ms - 100.0).abs() < 0.01,
            "{tail:?}"
        );
        // Below 1 µs still counts, as 1 µs.
        let mut fast = EndpointStats::new();
        fast.record_response("200", start, Duration::from_nanos(10));
        assert_eq!(fast.latency().len(), 1);
    }
}
