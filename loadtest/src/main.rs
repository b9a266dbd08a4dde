//! `loadtest`: the load driver of the stampede engine (see loadtest/README.md).
//!
//! Layout:
//! - `cli.rs`: the command line, one subcommand per scenario;
//! - `common/`: what every scenario uses (the HTTP client, statistics,
//!   number formatting, the `/proc` readers);
//! - `scenarios/<name>/`: one scenario each, all of the same shape: its
//!   flags, its run, its checks, its report.
//!
//! This file only turns the command line into a scenario's run on a tokio
//! runtime, and its result into the exit code.

mod cli;
mod common;
mod scenarios;

use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use common::verdict::Checks;
use scenarios::sale::args::{Args as SaleRun, SaleKind};
use scenarios::{compare, costs, faults, ingest, oha, orders, sale, script_bench, settlement, wallet};

/// The driver shares the machine with the engine: a cheaper allocator leaves
/// more CPU to what is being measured.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Run = Pin<Box<dyn Future<Output = Result<Checks, String>>>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The settlement run times the engine against psql on the same cores:
    // one driver thread leaves them the rest unless asked otherwise.
    if let Some(key) = &cli.api_key {
        common::http::set_api_key(key);
    }
    let threads = match &cli.command {
        Command::Settlement(_) => cli.threads.or(NonZeroUsize::new(1)),
        _ => cli.threads,
    };
    let sale_run = |kind: SaleKind, args| -> Result<Run, String> {
        let args = SaleRun::resolve(kind, args)?;
        Ok(Box::pin(sale::run(args)))
    };
    let run: Result<Run, String> = match cli.command {
        Command::Contest(args) => sale_run(SaleKind::Contest, args),
        Command::Sustained(args) => sale_run(SaleKind::Sustained, args),
        Command::Contention(args) => sale_run(SaleKind::Contention, args),
        Command::Ingest(args) => Ok(Box::pin(ingest::run(args))),
        Command::Orders(args) => Ok(Box::pin(orders::run(args))),
        Command::Wallet(args) => Ok(Box::pin(wallet::run(args))),
        Command::Settlement(args) => Ok(Box::pin(settlement::run(args))),
        Command::Faults(args) => Ok(Box::pin(faults::run(args))),
        Command::Oha(args) => Ok(Box::pin(async move { oha::run(args) })),
        Command::Compare(args) => Ok(Box::pin(async move { compare::run(args) })),
        Command::Costs(args) => Ok(Box::pin(costs::run(args))),
        Command::ScriptBench(args) => Ok(Box::pin(script_bench::run(args))),
    };
    match run {
        Ok(run) => block_on(threads.map(usize::from), cli.strict, run),
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs a scenario on a tokio runtime of `threads` workers, prints the
/// result line of its checks and maps them to the exit code (0 passed, 1 a
/// check failed, 2 setup error).
fn block_on(threads: Option<usize>, strict: bool, scenario: Run) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start tokio: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(scenario) {
        Ok(checks) => {
            println!();
            println!("{}", checks.result_line(strict));
            checks.exit_code(strict)
        }
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::from(2)
        }
    }
}
