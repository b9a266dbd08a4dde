//! After the load: what became of every order request and every confirm or
//! cancel whose outcome the driver was not told, found out the way the
//! engine documents (`GET /orders/{order_id}` with the id of a 503, the
//! keyed request again with its key, a confirm or cancel read back and, if
//! it did not happen, repeated: the engine answers a repeat with the same
//! 200). Each one ends in the record, or as unresolved.

use std::collections::HashMap;

use crate::common::engine::{self, OrderFate};
use crate::common::http::{Client, Method, Target};

use super::load::{Plan, Records, TIMEOUT, Told};

/// Moves every unknown outcome of `rec` into its record; returns the ones
/// that could not be found out.
pub async fn resolve(target: &Target, rec: &mut Records) -> Vec<String> {
    let mut unresolved = Vec::new();
    let mut client = Client::new(target, TIMEOUT);
    for unknown in std::mem::take(&mut rec.unknown_orders) {
        let order = match engine::resolve_order(&mut client, &unknown.order).await {
            OrderFate::Made(order) | OrderFate::MadeByRetry(order) => order,
            OrderFate::NotMade => continue,
            OrderFate::Unresolved(why) => {
                unresolved.push(why);
                continue;
            }
        };
        let id = order["id"].as_str().unwrap_or_default().to_owned();
        let mut completed = order["status"] == "completed";
        // A hold the driver never heard of still gets its planned end, so
        // that no 60 s hold outlives the run.
        if let Some(action) = unknown.plan.action()
            && order["status"] == "reserved"
        {
            match act(&mut client, &id, action).await {
                Ok(status) => completed = status == "completed",
                Err(why) => unresolved.push(why),
            }
        }
        if unknown.plan == Plan::Expire {
            rec.left_to_expire += 1;
        }
        rec.told.push(Told {
            id,
            product: unknown.product,
            quantity: unknown.quantity,
            completed,
        });
    }
    let index: HashMap<String, usize> = rec.told.iter().enumerate().map(|(i, t)| (t.id.clone(), i)).collect();
    for unknown in std::mem::take(&mut rec.unknown_actions) {
        let Some(&i) = index.get(&unknown.id) else {
            unresolved.push(format!(
                "{} of an order the driver does not know: {}",
                unknown.action, unknown.id
            ));
            continue;
        };
        let read = client
            .call(Method::GET, &format!("/orders/{}", unknown.id), &[], b"")
            .await;
        let status = match (read.status(), read.body()["status"].as_str()) {
            (Some(200), Some("reserved")) => act(&mut client, &unknown.id, unknown.action).await,
            (Some(200), Some(status)) => Ok(status.to_owned()),
            _ => Err(format!("GET /orders/{}: {}", unknown.id, read.describe())),
        };
        match status {
            Ok(status) => rec.told[i].completed = status == "completed",
            Err(why) => unresolved.push(why),
        }
    }
    unresolved
}

/// `POST /orders/{id}/{action}`, once; the order's status after it.
async fn act(client: &mut Client, id: &str, action: &str) -> Result<String, String> {
    let answer = client
        .call(Method::POST, &format!("/orders/{id}/{action}"), &[], b"")
        .await;
    match (answer.status(), answer.body()["status"].as_str()) {
        (Some(200), Some(status)) => Ok(status.to_owned()),
        // The hold expired first: nothing was sold.
        (Some(410), _) => Ok("expired".to_owned()),
        _ => Err(format!("{action} {id}: {}", answer.describe())),
    }
}
