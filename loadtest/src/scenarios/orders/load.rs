//! The orders load: connections running a mix of operations one after
//! another, each state-changing request sent once. What a connection was
//! told is its record; what it was not told (no answer, or a 503 that may
//! have taken effect) is kept as an unknown outcome, found out after the
//! load the way the engine documents (`resolve.rs`), never by sending the
//! request again blindly: an order without an `Idempotency-Key` sent twice
//! can be two orders.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::RngExt;
use serde_json::json;

use crate::common::engine;
use crate::common::http::{Answer, Client, Method, Target};
use crate::common::stats::Latencies;

/// A request's budget.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Unexpected answers kept for the report, per connection and in all.
const UNEXPECTED_KEPT: usize = 20;

/// What an operation does with its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// An order, completed at once (70%).
    Plain,
    /// A 60 s hold, then confirmed (10%).
    Confirm,
    /// A 60 s hold, then cancelled (5%).
    Cancel,
    /// A 1 s hold left to expire (5%).
    Expire,
    /// An order with an `Idempotency-Key`, sent twice: a client retry that
    /// must get the first answer (10%).
    Keyed,
}

impl Plan {
    fn of(roll: u32) -> Plan {
        match roll {
            0..70 => Plan::Plain,
            70..80 => Plan::Confirm,
            80..85 => Plan::Cancel,
            85..90 => Plan::Expire,
            _ => Plan::Keyed,
        }
    }

    fn hold_secs(self) -> Option<u64> {
        match self {
            Plan::Confirm | Plan::Cancel => Some(60),
            Plan::Expire => Some(1),
            Plan::Plain | Plan::Keyed => None,
        }
    }

    /// The hold's planned end: `confirm` or `cancel`.
    pub fn action(self) -> Option<&'static str> {
        match self {
            Plan::Confirm => Some("confirm"),
            Plan::Cancel => Some("cancel"),
            _ => None,
        }
    }
}

/// An order the driver knows exists, and whether it was told it is completed.
#[derive(Debug, Clone)]
pub struct Told {
    pub id: String,
    pub product: u64,
    pub quantity: i64,
    pub completed: bool,
}

/// `POST /orders` without a known outcome.
#[derive(Debug, Clone)]
pub struct UnknownOrder {
    pub order: engine::UnknownOrder,
    pub product: u64,
    pub quantity: i64,
    pub plan: Plan,
}

/// A confirm or cancel of a known hold without a known outcome.
#[derive(Debug, Clone)]
pub struct UnknownAction {
    pub id: String,
    pub action: &'static str,
}

/// What the connections were told.
pub struct Records {
    /// `POST /orders` latencies, µs.
    pub orders_us: Latencies,
    /// Every answered request's latency, µs.
    pub all_us: Latencies,
    /// `POST /orders` answered 200 or 409 (decided).
    pub orders_decided: u64,
    pub orders_ok: u64,
    pub out_of_stock: u64,
    pub confirmed: u64,
    pub cancelled: u64,
    pub left_to_expire: u64,
    pub replays_identical: u64,
    pub replays_differing: u64,
    pub told: Vec<Told>,
    pub unknown_orders: Vec<UnknownOrder>,
    pub unknown_actions: Vec<UnknownAction>,
    pub unexpected: Vec<String>,
    pub requests: u64,
}

impl Records {
    pub fn new() -> Records {
        Records {
            orders_us: Latencies::default(),
            all_us: Latencies::default(),
            orders_decided: 0,
            orders_ok: 0,
            out_of_stock: 0,
            confirmed: 0,
            cancelled: 0,
            left_to_expire: 0,
            replays_identical: 0,
            replays_differing: 0,
            told: Vec::new(),
            unknown_orders: Vec::new(),
            unknown_actions: Vec::new(),
            unexpected: Vec::new(),
            requests: 0,
        }
    }

    pub fn merge(&mut self, o: Records) {
        self.orders_us.merge(&o.orders_us);
        self.all_us.merge(&o.all_us);
        self.orders_decided += o.orders_decided;
        self.orders_ok += o.orders_ok;
        self.out_of_stock += o.out_of_stock;
        self.confirmed += o.confirmed;
        self.cancelled += o.cancelled;
        self.left_to_expire += o.left_to_expire;
        self.replays_identical += o.replays_identical;
        self.replays_differing += o.replays_differing;
        self.told.extend(o.told);
        self.unknown_orders.extend(o.unknown_orders);
        self.unknown_actions.extend(o.unknown_actions);
        self.requests += o.requests;
        for e in o.unexpected {
            self.unexpected(e);
        }
    }

    pub fn unexpected(&mut self, what: String) {
        if self.unexpected.len() < UNEXPECTED_KEPT {
            self.unexpected.push(what);
        }
    }

    /// The quantity the driver was told is completed.
    pub fn completed_quantity(&self) -> i64 {
        self.told.iter().filter(|t| t.completed).map(|t| t.quantity).sum()
    }

    /// Counts a request in the record and in the run's live count.
    fn answered(&mut self, answer: &Answer, order: bool, live: &AtomicU64) {
        self.requests += 1;
        live.fetch_add(1, Ordering::Relaxed);
        if let Some(latency) = answer.latency() {
            self.all_us.record(latency);
            if order {
                self.orders_us.record(latency);
            }
        }
    }
}

/// What one connection runs.
pub struct Work {
    pub target: Target,
    pub products: Arc<Vec<u64>>,
    pub buyers: usize,
    /// Requests answered (or lost) so far, by every connection.
    pub requests: Arc<AtomicU64>,
}

/// One connection: `operations` operations one after another.
pub async fn connection(work: Arc<Work>, operations: usize) -> Records {
    let mut rec = Records::new();
    let mut client = Client::new(&work.target, TIMEOUT);
    for op in 0..operations {
        let (plan, product, quantity, buyer, key) = {
            let mut rng = rand::rng();
            let product = work.products[rng.random_range(0..work.products.len())];
            let key = format!("k-{}-{op}-{}", rng.random::<u64>(), product);
            (
                Plan::of(rng.random_range(0..100u32)),
                product,
                rng.random_range(1..=3i64),
                format!("b{}", rng.random_range(0..work.buyers)),
                key,
            )
        };
        let mut body = json!({"product_id": product, "quantity": quantity, "buyer_id": buyer});
        if let Some(secs) = plan.hold_secs() {
            body["hold_secs"] = json!(secs);
        }
        let body = body.to_string();
        let key = (plan == Plan::Keyed).then_some(key);
        let headers: Vec<(&str, &str)> = key.iter().map(|k| ("idempotency-key", k.as_str())).collect();
        let first = client.call_json(Method::POST, "/orders", &headers, &body).await;
        rec.answered(&first, true, &work.requests);
        let id = match (first.status(), first.code()) {
            (Some(200), _) => {
                rec.orders_decided += 1;
                rec.orders_ok += 1;
                first.body()["id"].as_str().unwrap_or_default().to_owned()
            }
            (Some(409), "OUT_OF_STOCK") => {
                rec.orders_decided += 1;
                rec.out_of_stock += 1;
                continue;
            }
            _ if first.outcome_unknown() => {
                rec.unknown_orders.push(UnknownOrder {
                    order: engine::UnknownOrder::of(&first, key.as_deref(), &body),
                    product,
                    quantity,
                    plan,
                });
                continue;
            }
            _ => {
                rec.unexpected(format!("POST /orders: {}", first.describe()));
                continue;
            }
        };
        let told = rec.told.len();
        rec.told.push(Told {
            id: id.clone(),
            product,
            quantity,
            completed: matches!(plan, Plan::Plain | Plan::Keyed),
        });
        match plan {
            Plan::Keyed => {
                // The retry of a client that did not see the answer: the key
                // makes it safe, and it must get the first answer back.
                let again = client.call_json(Method::POST, "/orders", &headers, &body).await;
                rec.answered(&again, true, &work.requests);
                match &again {
                    Answer::Reply {
                        status, raw, replayed, ..
                    } => {
                        rec.orders_decided += 1;
                        let same = first.status() == Some(*status)
                            && matches!(&first, Answer::Reply { raw: first_raw, .. } if first_raw == raw);
                        if same && *replayed {
                            rec.replays_identical += 1;
                        } else {
                            rec.replays_differing += 1;
                        }
                    }
                    Answer::Lost(why) => rec.unexpected(format!("keyed retry of {id}: no answer: {why}")),
                }
            }
            Plan::Confirm | Plan::Cancel => {
                let action = plan.action().unwrap_or("confirm");
                let answer = client
                    .call(Method::POST, &format!("/orders/{id}/{action}"), &[], b"")
                    .await;
                rec.answered(&answer, false, &work.requests);
                match answer.status() {
                    Some(200) if action == "confirm" => {
                        rec.confirmed += 1;
                        rec.told[told].completed = true;
                    }
                    Some(200) => rec.cancelled += 1,
                    _ if answer.outcome_unknown() => rec.unknown_actions.push(UnknownAction { id, action }),
                    _ => rec.unexpected(format!("{action} {id}: {}", answer.describe())),
                }
            }
            Plan::Expire => rec.left_to_expire += 1,
            Plan::Plain => {}
        }
    }
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_of_plans() {
        let count = |p: Plan| (0..100).filter(|r| Plan::of(*r) == p).count();
        assert_eq!(
            [Plan::Plain, Plan::Confirm, Plan::Cancel, Plan::Expire, Plan::Keyed].map(count),
            [70, 10, 5, 5, 10]
        );
        assert_eq!(Plan::Expire.hold_secs(), Some(1));
        assert_eq!(Plan::Keyed.hold_secs(), None);
    }

    #[test]
    fn completed_quantity_is_what_the_driver_was_told() {
        let mut rec = Records::new();
        let told = |id: &str, quantity, completed| Told {
            id: id.into(),
            product: 1,
            quantity,
            completed,
        };
        rec.told = vec![told("a", 2, true), told("b", 3, false)];
        let mut other = Records::new();
        other.told = vec![told("c", 1, true)];
        rec.merge(other);
        assert_eq!(rec.completed_quantity(), 3);
    }
}
