//! The flags of `loadtest script-bench`.

use std::path::PathBuf;

/// The scripts a bench runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchScript {
    /// `checkout.lua` and `purchase.lua`: each checkout call followed by
    /// the purchase call that spends its codes.
    Sale,
    /// `wallet_apply.lua`: the `wallet` scenario's bets, wins, refunds and
    /// retries.
    Wallet,
}

impl BenchScript {
    /// The engine's requests per call under its load run: the sale's
    /// executor fills its batches, the wallet's calls held 22 operations in
    /// `loadtest/run.sh wallet`.
    pub fn default_batch(self) -> u32 {
        match self {
            BenchScript::Sale => 150,
            BenchScript::Wallet => 22,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BenchScript::Sale => "sale",
            BenchScript::Wallet => "wallet",
        }
    }
}

/// Flags of `loadtest script-bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScriptBenchArgs {
    /// A standalone Redis of yours, idle: the bench resets its command
    /// statistics (`CONFIG RESETSTAT`) before every block. It writes keys
    /// under `sb<pid>:{sb}:` and unlinks them after each block.
    #[arg(long, env = "REDIS_URL", value_name = "URL", hide_env_values = true)]
    pub redis_url: String,
    /// Which scripts: the sale's or the wallet's.
    #[arg(long, value_enum, default_value_t = BenchScript::Sale)]
    pub script: BenchScript,
    /// A folder holding the scripts in the engine's batch form
    /// (`checkout.lua` and `purchase.lua`, or `wallet_apply.lua`); repeat it
    /// to compare variants. The first is the reference every other is
    /// divided by.
    #[arg(long = "variant", value_name = "DIR", default_value = "lua")]
    pub variants: Vec<PathBuf>,
    /// Where `prologue.lua` and `epilogue.lua` are, which are joined around
    /// each script as the engine joins them.
    #[arg(long, value_name = "DIR", default_value = "lua/batch")]
    pub batch_dir: PathBuf,
    /// Requests per script call, as the engine's executor batches them
    /// [default: sale 150, wallet 22].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch: Option<u32>,
    /// Calls of each script per block (a block: one variant, measured once).
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// Blocks per variant, interleaved: variant 1, 2, ..., 1, 2, ...
    #[arg(long, value_name = "N", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub reps: u32,
    /// Also write the JSON summary to PATH.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

impl ScriptBenchArgs {
    /// Requests per call: `--batch`, or the script's default.
    pub fn batch(&self) -> u32 {
        self.batch.unwrap_or(self.script.default_batch())
    }
}
