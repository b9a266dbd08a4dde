//! What makes a script bench worth reading.

use crate::common::verdict::Check;

/// Every request was answered as the engine's scripts answer it (OK; a
/// wallet retry REPLAY): a variant that refuses what it should accept does
/// other work, and its figures compare nothing.
pub fn checks(refused: u64) -> Vec<Check> {
    vec![Check::new(
        "every_request_ok",
        refused == 0,
        format!("{refused} requests answered otherwise"),
    )]
}
