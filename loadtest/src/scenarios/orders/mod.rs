//! The `orders` scenario: B buyers over P products of limited stock.
//!
//! Each connection runs a mix of operations one after another (`load.rs`):
//! plain orders (70%), holds that are confirmed (10%), cancelled (5%) or
//! left to expire (5%), and orders with an `Idempotency-Key` sent twice (10%,
//! the retry must get the same status and body). Every state-changing
//! request is sent once; an unknown outcome is found out after the load
//! (`resolve.rs`). Demand exceeds the stock, so products sell out under
//! load. Then the checks (`checks.rs`) and the report: orders/s
//! (`POST /orders` decided per second) and p50/p99.

pub mod args;
mod checks;
mod load;
mod report;
mod resolve;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use serde_json::json;

use crate::common::cost::{CostProbe, CostSetup, Requests};
use crate::common::http::{Client, Method, Target};
use crate::common::summary;
use crate::common::verdict::Checks;

pub use args::OrdersArgs;
use load::{Records, TIMEOUT, Work};
use report::Report;

/// Creates the products as admin (each `POST /products` sent once).
async fn create_products(target: &Target, args: &OrdersArgs) -> Result<Vec<u64>, String> {
    let auth = format!("Bearer {}", args.admin_token);
    let mut client = Client::new(target, TIMEOUT);
    let mut products = Vec::new();
    for p in 0..args.products {
        let body = json!({"name": format!("load-{p}"), "stock": args.stock, "price_cents": 1999, "merchant_id": 1})
            .to_string();
        let answer = client
            .call_json(Method::POST, "/products", &[("authorization", &auth)], &body)
            .await;
        if answer.status() != Some(201) {
            return Err(format!("POST /products: {}", answer.describe()));
        }
        products.push(answer.body()["id"].as_u64().ok_or("a product without an id")?);
    }
    Ok(products)
}

pub async fn run(mut args: OrdersArgs) -> Result<Checks, String> {
    if args.admin_token.is_empty() {
        return Err("orders needs --admin-token or STAMPEDE_ADMIN_TOKEN (products are created as admin)".into());
    }
    args.database_url = args.database_url.filter(|u| !u.is_empty());
    let target = Target::resolve(&args.url).await?;
    let products = create_products(&target, &args).await?;
    println!(
        "loadtest orders: {} products x {} stock, {} buyers, {} operations over {} connections against {} ...",
        args.products, args.stock, args.buyers, args.operations, args.connections, args.url
    );
    let cost = CostProbe::discover(CostSetup::engine(
        "request",
        &target,
        args.server_pid,
        args.database_url.as_deref(),
        &args.cost,
    ))
    .await;
    let work = Arc::new(Work {
        target: target.clone(),
        products: Arc::new(products.clone()),
        buyers: args.buyers,
        requests: Arc::new(AtomicU64::new(0)),
    });
    let watch = cost.start(Requests::Live(work.requests.clone()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let share = args.operations / args.connections + usize::from(c < args.operations % args.connections);
        tasks.push(tokio::spawn(load::connection(work.clone(), share)));
    }
    let mut rec = Records::new();
    for task in tasks {
        rec.merge(task.await.map_err(|e| format!("connection task: {e}"))?);
    }
    let elapsed_secs = started.elapsed().as_secs_f64();
    let cost = watch.finish(Some(rec.requests)).await;

    let unknown = rec.unknown_orders.len() + rec.unknown_actions.len();
    let unresolved = resolve::resolve(&target, &mut rec).await;
    let stock = checks::read_stock(&target, &products, args.stock).await?;
    let mut all = Checks::new();
    all.extend(checks::stock(&args, &stock, &rec));
    all.extend(checks::answers(&rec, &unresolved, unknown));
    all.push(checks::postgres(&target, args.database_url.as_deref(), &products, &rec).await);
    all.push(checks::reconcile(&target, &args.admin_token).await);

    let report = Report {
        args: &args,
        rec: &rec,
        elapsed_secs,
        unknown,
        unresolved: &unresolved,
        checks: &all,
        cost: &cost,
    };
    report.print_human();
    summary::write(args.json.as_deref(), &report.to_json());
    Ok(all)
}
