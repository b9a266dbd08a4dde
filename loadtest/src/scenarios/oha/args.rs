//! The flags of `loadtest oha`.

use std::path::PathBuf;

/// The recipes of loadtest/oha.sh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Recipe {
    Checkout,
    Purchase,
    Orders,
    Wallet,
}

impl Recipe {
    pub fn name(self) -> &'static str {
        match self {
            Recipe::Checkout => "checkout",
            Recipe::Purchase => "purchase",
            Recipe::Orders => "orders",
            Recipe::Wallet => "wallet",
        }
    }

    /// The statuses the recipe may get: fresh codes and orders answer 200; a
    /// code drawn again is 409 `CODE_USED`, an order past the stock 409
    /// `OUT_OF_STOCK`; a deposit drawn again is replayed with 200.
    pub fn expected_statuses(self) -> &'static [&'static str] {
        match self {
            Recipe::Checkout | Recipe::Wallet => &["200"],
            Recipe::Purchase | Recipe::Orders => &["200", "409"],
        }
    }
}

/// Flags of `loadtest oha`: checks the JSON result of one recipe of
/// loadtest/oha.sh (`oha --output-format json`).
#[derive(Debug, Clone, clap::Args)]
pub struct OhaArgs {
    /// Which recipe made the result (it sets the statuses expected).
    #[arg(long, value_enum)]
    pub recipe: Recipe,
    /// oha's JSON result.
    #[arg(long, value_name = "PATH")]
    pub result: PathBuf,
    /// Also write the JSON summary to PATH.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}
