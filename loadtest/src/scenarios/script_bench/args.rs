//! The flags of `loadtest script-bench`.

use std::path::PathBuf;

/// Flags of `loadtest script-bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScriptBenchArgs {
    /// A standalone Redis of yours, idle: the bench resets its command
    /// statistics (`CONFIG RESETSTAT`) before every block. It writes keys
    /// under `sb<pid>:{sb}:` and unlinks them after each block.
    #[arg(long, env = "REDIS_URL", value_name = "URL", hide_env_values = true)]
    pub redis_url: String,
    /// A folder holding a `checkout.lua` and a `purchase.lua` in the
    /// engine's batch form; repeat it to compare variants. The first is the
    /// reference every other is divided by.
    #[arg(long = "variant", value_name = "DIR", default_value = "lua")]
    pub variants: Vec<PathBuf>,
    /// Where `prologue.lua` and `epilogue.lua` are, which are joined around
    /// each script as the engine joins them.
    #[arg(long, value_name = "DIR", default_value = "lua/batch")]
    pub batch_dir: PathBuf,
    /// Requests per script call, as the engine's executor batches them.
    #[arg(long, value_name = "N", default_value_t = 150, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch: u32,
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
