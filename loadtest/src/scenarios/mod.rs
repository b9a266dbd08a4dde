//! One module per scenario of the command line.

pub mod compare;
pub mod costs;
pub mod faults;
pub mod ingest;
pub mod oha;
pub mod orders;
pub mod sale;
pub mod script_bench;
pub mod settlement;
pub mod wallet;
