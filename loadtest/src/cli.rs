//! The command line: one subcommand per scenario, declared with clap's
//! derive (`--help` for each, `--flag=value` and `--flag value` alike).
//! Each scenario owns its flags (`scenarios/<name>`); this file only lists
//! them and the flags every run shares.

use std::num::NonZeroUsize;

use clap::{Parser, Subcommand};

use crate::scenarios::compare::CompareArgs;
use crate::scenarios::costs::CostsArgs;
use crate::scenarios::faults::FaultsArgs;
use crate::scenarios::ingest::IngestArgs;
use crate::scenarios::oha::OhaArgs;
use crate::scenarios::orders::OrdersArgs;
use crate::scenarios::sale::args::SaleArgs;
use crate::scenarios::script_bench::ScriptBenchArgs;
use crate::scenarios::settlement::SettlementArgs;
use crate::scenarios::wallet::WalletArgs;

/// Load driver of the stampede engine (see loadtest/README.md).
///
/// Every check ends PASS, FAIL or SKIPPED; the last line lists the failed
/// and the skipped ones. Exit code: 0 nothing failed and something passed,
/// 1 a check failed or nothing was checked (or, with --strict, a check was
/// skipped), 2 bad usage or a setup error.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Tokio worker threads of the driver [default: the number of CPUs].
    #[arg(long, global = true)]
    pub threads: Option<NonZeroUsize>,
    /// A SKIPPED check fails the run: nothing may go unchecked (for CI).
    #[arg(long, global = true)]
    pub strict: bool,
    /// A service key (`<name>.<secret>`, `stampede keys new`) sent as
    /// `Authorization: Bearer` on every request that carries no other
    /// credential; give it every scope the scenario calls.
    #[arg(long, global = true, env = "STAMPEDE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// A flag given twice takes its last value: `run.sh` passes its own flags
/// first and the caller's after them, which must win.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every user buys its own k = items/users items (k <= limit), all users
    /// start at once: raw throughput.
    #[command(args_override_self = true)]
    Contest(SaleArgs),
    /// The contest with 20,000 users and 200,000 items by default, over
    /// --connections connections.
    #[command(args_override_self = true)]
    Sustained(SaleArgs),
    /// Users race for a few items (random picks) until everything is sold.
    #[command(args_override_self = true)]
    Contention(SaleArgs),
    /// Uploads NDJSON files to POST /ingest, watches the engine's RSS, times
    /// psql \copy of the same rows.
    #[command(args_override_self = true)]
    Ingest(IngestArgs),
    /// Buyers over products of limited stock: orders, holds (confirmed,
    /// cancelled, expired), keyed retries.
    #[command(args_override_self = true)]
    Orders(OrdersArgs),
    /// Players bet, win and refund with retried references while SSE clients
    /// listen.
    #[command(args_override_self = true)]
    Wallet(WalletArgs),
    /// A settlement job (POST to COMPLETED plus the CSV) against psql's
    /// INSERT ... GROUP BY and \copy; rows and CSV checked against SQL.
    #[command(args_override_self = true)]
    Settlement(SettlementArgs),
    /// Invariants under faults: the engine's Redis connections dropped, Redis
    /// killed and restarted, a flood at 5x capacity.
    #[command(args_override_self = true)]
    Faults(FaultsArgs),
    /// Checks the JSON result of a loadtest/oha.sh recipe: no error, a rate,
    /// only the statuses expected (run.sh oha runs it).
    #[command(args_override_self = true)]
    Oha(OhaArgs),
    /// The table and ratios engine / baseline server of two JSON summaries
    /// (run.sh runs it).
    #[command(args_override_self = true)]
    Compare(CompareArgs),
    /// The cost per request (Redis by script, engine, Postgres) of a
    /// deployment already running and loaded, over a window of --secs or
    /// --requests; starts nothing.
    #[command(args_override_self = true)]
    Costs(CostsArgs),
    /// The sale's batch scripts straight against an idle Redis, variant
    /// against variant in interleaved blocks: EVALSHA and CPU microseconds
    /// per request, and each variant's paired ratio to the first.
    #[command(args_override_self = true)]
    ScriptBench(ScriptBenchArgs),
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::common::server::ServerKind;
    use crate::scenarios::sale::args::{Args, SaleKind, Scenario};
    use crate::scenarios::script_bench::BenchScript;

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("loadtest").chain(line.split_whitespace()))
    }

    /// The sale flags of `line` resolved as its subcommand would be.
    fn sale(line: &str) -> Result<Args, String> {
        let cli = parse(line).map_err(|e| e.to_string())?;
        match cli.command {
            Command::Contest(a) => Args::resolve(SaleKind::Contest, a),
            Command::Sustained(a) => Args::resolve(SaleKind::Sustained, a),
            Command::Contention(a) => Args::resolve(SaleKind::Contention, a),
            other => Err(format!("not a sale: {other:?}")),
        }
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn script_bench_defaults_to_the_engines_scripts() {
        let cli = parse("script-bench --redis-url redis://x:1 --variant /tmp/a").unwrap();
        let Command::ScriptBench(a) = cli.command else {
            panic!("not script-bench: {:?}", cli.command)
        };
        assert_eq!(a.variants, vec![std::path::PathBuf::from("/tmp/a")]);
        assert_eq!((a.batch(), a.rounds, a.reps), (150, 20, 30));
        let cli = parse("script-bench --redis-url redis://x:1").unwrap();
        let Command::ScriptBench(a) = cli.command else {
            panic!("not script-bench")
        };
        assert_eq!(a.variants, vec![std::path::PathBuf::from("lua")]);
        assert!(parse("script-bench --redis-url redis://x:1 --batch 0").is_err());
        let cli = parse("script-bench --redis-url redis://x:1 --script wallet").unwrap();
        let Command::ScriptBench(a) = cli.command else {
            panic!("not script-bench")
        };
        assert_eq!((a.script, a.batch()), (BenchScript::Wallet, 22));
    }

    #[test]
    fn contest_defaults() {
        let a = sale("contest --redis-url redis://x:1 --database-url postgres://y").unwrap();
        assert_eq!((a.users, a.items, a.limit, a.connections), (1000, 10_000, 10, 1000));
        assert_eq!(a.redis_url.as_deref(), Some("redis://x:1"));
        assert_eq!((a.server, a.server_pid, a.baseline), (ServerKind::Engine, None, true));
    }

    #[test]
    fn sustained_uses_fewer_connections_than_users() {
        let a = sale("sustained").unwrap();
        assert_eq!((a.users, a.items, a.connections), (20_000, 200_000, 1000));
        assert_eq!(a.scenario, Scenario::Contest);
    }

    #[test]
    fn rejects_bad_sale_shapes() {
        assert!(sale("contest --users 1000 --items 10000 --limit 10").is_ok());
        assert!(sale("contest --users 1000 --items 20000 --limit 10").is_err());
        assert!(sale("contest --users 3 --items 10").is_err());
        assert!(sale("contest --users 10 --connections 11 --items 10").is_err());
        assert!(sale("contest --bogus 1").is_err());
        assert!(sale("nope").is_err());
        assert!(sale("contest --server nginx").is_err());
        assert!(sale("contest --server-pid x").is_err());
    }

    #[test]
    fn both_flag_forms_and_the_global_threads() {
        let a = sale("contention --users=10 --items 3 --server=baseline --server-pid 42 --no-baseline").unwrap();
        assert_eq!((a.users, a.items, a.connections), (10, 3, 10));
        assert_eq!(
            (a.server, a.server_pid, a.baseline),
            (ServerKind::Baseline, Some(42), false)
        );
        let cli = parse("contest --threads=1").unwrap();
        assert_eq!(cli.threads.map(NonZeroUsize::get), Some(1));
        let cli = parse("--threads 2 orders --admin-token t").unwrap();
        assert_eq!(cli.threads.map(NonZeroUsize::get), Some(2));
        assert!(!cli.strict);
        assert!(parse("contest --strict").unwrap().strict);
        assert!(parse("contest --threads 0").is_err());
        // run.sh's flags first, the caller's after: the last one wins.
        let cli = parse("contest --threads 1 --redis-url a --threads 2 --redis-url=b").unwrap();
        assert_eq!(cli.threads.map(NonZeroUsize::get), Some(2));
        let Command::Contest(a) = cli.command else {
            panic!("not a contest")
        };
        assert_eq!(a.cost.redis_url.as_deref(), Some("b"));
    }

    #[test]
    fn help_is_clap_s_for_every_subcommand() {
        for sub in Cli::command().get_subcommands() {
            let name = sub.get_name().to_owned();
            let err = parse(&format!("{name} --help")).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp, "{name}");
            assert!(err.to_string().contains("Usage: loadtest"), "{name}: {err}");
        }
    }

    #[test]
    fn every_scenario_parses_both_forms() {
        for line in [
            "ingest --file x --small-file= --engine-pid=42 --no-baseline --no-checkpoint --keep-csv",
            "orders --admin-token=t --products 2 --stock=10 --connections 2 --operations=5",
            "wallet --server baseline --players=10 --sse-clients 0 --secs=1",
            "settlement --database-url d --admin-token t --from=2025-03-01 --to 2025-03-31 --runs=1",
            "faults --admin-token t --redis-url r --database-url=d --cases drop,flood --secs=2",
            "compare --engine a.json --baseline=b.json --json c.json",
            "costs --url http://e:1 --redis-url redis-cluster://a:1?node=b:2 --requests=500 --engine-pid 3",
            "costs --secs 5 --slowlog-sample --slowlog-ms=50 --slowlog-every-ms 200 --scripts-dir lua",
            "oha --recipe purchase --result=r.json --json s.json",
        ] {
            assert!(parse(line).is_ok(), "{line}: {:?}", parse(line).err());
        }
        assert!(parse("ingest").is_err(), "--file is required");
        assert!(parse("ingest --file x --sample-ms 0").is_err());
        assert!(parse("orders --admin-token t --products 0").is_err());
        assert!(parse("settlement --database-url d --admin-token t --from 2025-3-1").is_err());
        assert!(parse("settlement --database-url d --admin-token t --small-from 2025-03-01").is_err());
        assert!(parse("faults --admin-token t --redis-url r --database-url d --cases nope").is_err());
        assert!(parse("faults --admin-token t --redis-url r --database-url d --clients 11").is_err());
        assert!(parse("compare --engine a.json").is_err());
        assert!(
            parse("costs --secs 5 --requests 10").is_err(),
            "a window is one or the other"
        );
        assert!(parse("costs --slowlog-ms 5").is_err());
        assert!(parse("costs --secs 0").is_err());
    }
}
