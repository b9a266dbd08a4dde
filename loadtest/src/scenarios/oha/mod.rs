//! `loadtest oha`: reads the JSON result of one recipe of loadtest/oha.sh
//! and checks it with the driver's verdicts, so that an oha run can gate a
//! script as the driver's scenarios do (`run.sh oha` runs a recipe against
//! a fresh engine, then this).

pub mod args;
mod checks;
mod report;

use crate::common::summary;
use crate::common::verdict::Checks;

pub use args::OhaArgs;

pub fn run(args: OhaArgs) -> Result<Checks, String> {
    let text =
        std::fs::read_to_string(&args.result).map_err(|e| format!("cannot read {}: {e}", args.result.display()))?;
    let result: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", args.result.display()))?;
    let checks: Checks = checks::checks(args.recipe, &result).into_iter().collect();
    report::print(args.recipe, &result, &checks);
    summary::write(args.json.as_deref(), &report::to_json(args.recipe, &result, &checks));
    Ok(checks)
}
