//! What the sale's connection tasks were told, merged once they have
//! finished, and the one counter they share while they run.
//!
//! The record is the driver's own: every code a checkout answered 200 with,
//! and every purchase answered 200 (its code, item and user). The checks
//! compare Redis and Postgres with it, not with counts the schema would keep
//! right anyway.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use crate::common::stats::EndpointStats;

/// A purchase answered 200: what the buyer was told it owns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Acknowledged {
    pub code: String,
    /// The `item_id` of the answer (the item asked for, if the answer had none).
    pub item: i64,
    /// The user's number: its id is `<user prefix>-<user>`.
    pub user: usize,
}

/// Everything one connection task (or the whole run, after merging) observed.
pub struct RunStats {
    pub checkout: EndpointStats,
    pub purchase: EndpointStats,
    /// Codes of the checkouts answered 200.
    pub checkout_codes: Vec<String>,
    /// Purchases answered 200.
    pub acknowledged: Vec<Acknowledged>,
    /// When the last 200 from /purchase arrived.
    pub last_purchase: Option<Instant>,
    /// Sale ids seen in 200 responses.
    pub sale_ids: BTreeSet<i64>,
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
            checkout_codes: Vec::new(),
            acknowledged: Vec::new(),
            last_purchase: None,
            sale_ids: BTreeSet::new(),
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
        self.checkout_codes.extend(other.checkout_codes);
        self.acknowledged.extend(other.acknowledged);
        self.last_purchase = self.last_purchase.max(other.last_purchase);
        self.sale_ids.extend(other.sale_ids);
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

    pub fn purchases(&self) -> u64 {
        self.acknowledged.len() as u64
    }

    pub fn successful_checkouts(&self) -> u64 {
        self.checkout_codes.len() as u64
    }

    /// Item ids the driver was told were bought more than once.
    pub fn items_told_twice(&self) -> Vec<i64> {
        let mut seen = BTreeMap::<i64, u32>::new();
        for a in &self.acknowledged {
            *seen.entry(a.item).or_default() += 1;
        }
        seen.into_iter().filter(|(_, n)| *n > 1).map(|(item, _)| item).collect()
    }

    /// Purchases per user as the driver was told them.
    pub fn purchases_per_user(&self) -> BTreeMap<usize, u64> {
        let mut per_user = BTreeMap::new();
        for a in &self.acknowledged {
            *per_user.entry(a.user).or_default() += 1;
        }
        per_user
    }
}

/// The only shared state of the load: how many purchases succeeded so far and
/// in which sale, so the flush watcher can start polling Postgres as soon as
/// the sale is sold out (which may be long before the load ends), and how
/// many requests were answered or failed, so the cost table knows each
/// slice's share.
pub struct Progress {
    purchases: AtomicU64,
    sale: AtomicI64,
    pub requests: Arc<AtomicU64>,
}

const NO_SALE: i64 = i64::MIN;

impl Progress {
    pub fn new() -> Progress {
        Progress {
            purchases: AtomicU64::new(0),
            sale: AtomicI64::new(NO_SALE),
            requests: Arc::new(AtomicU64::new(0)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(code: &str, item: i64, user: usize) -> Acknowledged {
        Acknowledged {
            code: code.into(),
            item,
            user,
        }
    }

    #[test]
    fn the_record_counts_what_the_driver_was_told() {
        let mut a = RunStats::new();
        a.acknowledged = vec![ack("c1", 1, 0), ack("c2", 2, 0)];
        let mut b = RunStats::new();
        b.acknowledged = vec![ack("c3", 2, 1)];
        a.merge(b);
        assert_eq!(a.purchases(), 3);
        assert_eq!(a.items_told_twice(), vec![2]);
        assert_eq!(a.purchases_per_user(), BTreeMap::from([(0, 2), (1, 1)]));
    }
}
