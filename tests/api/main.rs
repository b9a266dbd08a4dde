//! All API tests in one binary: they share one build and run in parallel,
//! each against its own engine, database and Redis key prefix.

mod access;
mod at_most_once;
mod batching;
mod browser;
mod cluster;
mod dashboards;
mod durability;
mod faults;
mod helpers;
mod ingest;
mod leaks;
mod openapi;
mod orders;
mod orders_split;
mod overload;
mod poison;
mod private_cluster;
mod redis_checks;
mod sale;
mod sale_bad_input;
mod sale_split;
mod scale_out;
mod server;
mod settlement;
mod split_balance;
mod wallet;
