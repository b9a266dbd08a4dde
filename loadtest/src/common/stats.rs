//! Per-connection counters, merged once all connection tasks have finished
//! (no shared state on the hot path).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Latency histogram + status counts of one endpoint.
pub struct EndpointStats {
    /// Microseconds, 1 µs .. 120 s, 3 significant digits.
    pub latency_us: Histogram<u64>,
    /// "200", "409 ITEM_SOLD", "timeout", "transport", ... -> count.
    pub statuses: BTreeMap<String, u64>,
    /// Requests that got any answer or failed (everything that was sent).
    pub requests: u64,
}

impl EndpointStats {
    pub fn new() -> EndpointStats {
        EndpointStats {
            latency_us: new_histogram(),
            statuses: BTreeMap::new(),
            requests: 0,
        }
    }

    pub fn record_response(&mut self, status_key: &str, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
        self.latency_us.saturating_record(us);
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

    fn merge(&mut self, other: &EndpointStats) {
        // Both histograms have the same bounds, so `add` cannot fail; keep going if it does.
        if let Err(e) = self.latency_us.add(&other.latency_us) {
            eprintln!("warning: histogram merge failed: {e:?}");
        }
        self.requests += other.requests;
        for (k, v) in &other.statuses {
            *self.statuses.entry(k.clone()).or_insert(0) += v;
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 120_000_000, 3) {
        Ok(h) => h,
        // The bounds above are constants that hdrhistogram accepts.
        Err(e) => panic!("histogram bounds rejected: {e:?}"),
    }
}

/// Everything one connection task (or the whole run, after merging) observed.
pub struct RunStats {
    pub checkout: EndpointStats,
    pub purchase: EndpointStats,
    pub successful_checkouts: u64,
    pub purchases: u64,
    /// When the last 200 from /purchase arrived.
    pub last_purchase: Option<Instant>,
    /// Sale ids seen in 200 responses.
    pub sale_ids: BTreeSet<i64>,
    /// Item id of every successful purchase (may repeat if the engine double-sells).
    pub purchased_items: Vec<i64>,
    /// Successful purchases of the busiest user, as seen by the driver.
    pub max_user_purchases: u64,
    /// Bodies that were 200 but could not be understood.
    pub bad_bodies: u64,
    /// Connections that could not be (re-)established.
    pub connect_errors: u64,
    pub reconnects: u64,
    /// Users whose work was cut short (run deadline passed or connection lost).
    pub abandoned_users: u64,
    pub deadline_hit: bool,
    /// First few error details, for the report.
    pub error_samples: Vec<String>,
}

const MAX_ERROR_SAMPLES: usize = 5;

impl RunStats {
    pub fn new() -> RunStats {
        RunStats {
            checkout: EndpointStats::new(),
            purchase: EndpointStats::new(),
            successful_checkouts: 0,
            purchases: 0,
            last_purchase: None,
            sale_ids: BTreeSet::new(),
            purchased_items: Vec::new(),
            max_user_purchases: 0,
            bad_bodies: 0,
            connect_errors: 0,
            reconnects: 0,
            abandoned_users: 0,
            deadline_hit: false,
            error_samples: Vec::new(),
        }
    }

    pub fn note_error(&mut self, detail: String) {
        if self.error_samples.len() < MAX_ERROR_SAMPLES {
            self.error_samples.push(detail);
        }
    }

    pub fn merge(&mut self, other: RunStats) {
        self.checkout.merge(&other.checkout);
        self.purchase.merge(&other.purchase);
        self.successful_checkouts += other.successful_checkouts;
        self.purchases += other.purchases;
        self.last_purchase = self.last_purchase.max(other.last_purchase);
        self.sale_ids.extend(other.sale_ids);
        self.purchased_items.extend(other.purchased_items);
        self.max_user_purchases = self.max_user_purchases.max(other.max_user_purchases);
        self.bad_bodies += other.bad_bodies;
        self.connect_errors += other.connect_errors;
        self.reconnects += other.reconnects;
        self.abandoned_users += other.abandoned_users;
        self.deadline_hit |= other.deadline_hit;
        for e in other.error_samples {
            self.note_error(e);
        }
    }

    pub fn total_requests(&self) -> u64 {
        self.checkout.requests + self.purchase.requests
    }

    /// Number of item ids that were reported as purchased more than once.
    pub fn duplicate_items(&self) -> usize {
        let mut sorted = self.purchased_items.clone();
        sorted.sort_unstable();
        sorted.windows(2).filter(|w| w[0] == w[1]).count()
    }
}

/// The only shared state of the load: how many purchases succeeded so far and
/// in which sale, so the flush watcher can start polling Postgres as soon as
/// the sale is sold out (which may be long before the load ends).
pub struct Progress {
    purchases: AtomicU64,
    sale: AtomicI64,
}

const NO_SALE: i64 = i64::MIN;

impl Progress {
    pub fn new() -> Progress {
        Progress {
            purchases: AtomicU64::new(0),
            sale: AtomicI64::new(NO_SALE),
        }
    }

    pub fn record_purchase(&self, sale: Option<i64>) {
        if let Some(sale) = sale {
            self.sale.store(sale, Ordering::Relaxed);
        }
        self.purchases.fetch_add(1, Ordering::Relaxed);
    }

    pub fn purchases(&self) -> u64 {
        self.purchases.load(Ordering::Relaxed)
    }

    pub fn sale(&self) -> Option<i64> {
        let sale = self.sale.load(Ordering::Relaxed);
        (sale != NO_SALE).then_some(sale)
    }
}
