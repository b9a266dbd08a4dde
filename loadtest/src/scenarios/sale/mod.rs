//! The sale scenarios: contest, sustained and contention.

pub mod checks;
pub mod load;
pub mod redis_bench;
pub mod report;
