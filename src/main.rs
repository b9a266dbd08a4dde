//! The `stampede` binary: `stampede serve`, `stampede keys new`,
//! `stampede gen-purchases`, `stampede gen-transactions`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use time::Date;

use stampede::app::{App, StartupError};
use stampede::clock::SystemClock;
use stampede::config::Config;
use stampede::redis::layout::LayoutError;

/// glibc malloc took a fifth of the engine's CPU under load (perf); every
/// request allocates a little, from many threads. Built without transparent
/// huge pages (Cargo.toml says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The command line. `serve` takes its configuration from environment
/// variables (README.md), so that a container or a unit file sets it the
/// same way for every engine; the generators take flags. A flag given twice
/// takes its last value, as it did before clap (and as the load driver's do).
#[derive(Parser)]
#[command(
    name = "stampede",
    version,
    about = "A Redis-first flash-sale engine",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine; configuration comes from environment variables (README.md)
    Serve,
    /// Service keys (README.md, Access)
    #[command(subcommand)]
    Keys(Keys),
    /// Write purchase lines as NDJSON, for tests and demos of `POST /ingest`
    GenPurchases(GenPurchases),
    /// Load merchant transactions into the `transactions` table of DATABASE_URL by COPY
    #[command(after_help = "The database is migrated first. About 90% of the rows are PAID, 1% on a UTC day boundary.")]
    GenTransactions(GenTransactions),
}

#[derive(Subcommand)]
enum Keys {
    /// Make a key: prints its secret (shown only now) and the line to add to STAMPEDE_API_KEYS_FILE
    #[command(
        after_help = "The file holds only the secret's SHA-256. To rotate: add the new key's line, restart the engines, \
                      move the service to the new secret, remove the old line, restart again."
    )]
    New(NewKey),
}

#[derive(Args)]
#[command(args_override_self = true)]
struct NewKey {
    /// The key's name: in the credential, logs and metrics (a-z, 0-9, '-', '_')
    #[arg(long, value_name = "NAME")]
    name: String,
    /// What it may call, comma-separated: sale, orders, wallet, ingest, read, metrics
    #[arg(long, value_name = "SCOPES", value_delimiter = ',', required = true)]
    scopes: Vec<String>,
}

#[derive(Args)]
#[command(args_override_self = true)]
struct GenPurchases {
    /// Lines to write
    #[arg(long, value_name = "N", default_value_t = 1000)]
    count: u64,
    /// Where to write them [default: data/test-YYYYMMDD-HHMMSS.ndjson]
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// The same seed gives the same file; different seeds give disjoint
    /// transaction ids [default: from the clock]
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
}

#[derive(Args)]
#[command(args_override_self = true)]
struct GenTransactions {
    /// Transactions to load
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    count: u64,
    /// Merchants they are spread over
    #[arg(long, value_name = "M", default_value_t = 1000)]
    merchants: u32,
    /// First day paid (UTC, inclusive)
    #[arg(long, value_name = "DATE", default_value = "2025-01-01", value_parser = date)]
    from: Date,
    /// Last day paid (UTC, inclusive)
    #[arg(long, value_name = "DATE", default_value = "2025-01-31", value_parser = date)]
    to: Date,
    /// The same seed gives the same rows [default: from the clock]
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
}

/// A `YYYY-MM-DD` flag, read as the settlement routes read their dates.
fn date(text: &str) -> Result<Date, String> {
    stampede::settlement::domain::parse_date(text).ok_or_else(|| "expected a date as YYYY-MM-DD".to_owned())
}

/// A seed from the clock, for runs that did not ask for one.
fn clock_seed() -> u64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve => serve(),
        Command::Keys(Keys::New(args)) => new_key(args),
        Command::GenPurchases(args) => gen_purchases(args),
        Command::GenTransactions(args) => gen_transactions(args),
    }
}

fn serve() -> ExitCode {
    stampede::telemetry::init_tracing();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("stampede: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime(config.worker_threads) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("stampede: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        // Taken before anything else: a SIGHUP's default action ends the
        // process, and an operator may send one as soon as it runs.
        #[cfg(unix)]
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        let app = match App::build(config, Arc::new(SystemClock)).await {
            Ok(app) => app,
            // Each feature reads its own settings as it is built: a bad one
            // is a configuration error like a bad shared setting.
            Err(StartupError::Config(e)) => {
                eprintln!("stampede: configuration error: {e}");
                return ExitCode::from(2);
            }
            // A shard count other than the recorded one: a setting to fix.
            Err(StartupError::Layout(e @ LayoutError::CountChanged { .. })) => {
                eprintln!("stampede: configuration error: {e}");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("stampede: start-up failed: {e}");
                return ExitCode::FAILURE;
            }
        };
        #[cfg(unix)]
        let reloading = match hangups {
            Ok(hangups) => Some(tokio::spawn(reload_keys_on_hangup(hangups, app.key_reloader()))),
            Err(e) => {
                tracing::warn!(error = %e, "SIGHUP cannot be caught: the keys file is read at start only");
                None
            }
        };
        app.run_until_stopped(shutdown_signal()).await;
        #[cfg(unix)]
        if let Some(reloading) = reloading {
            reloading.abort();
        }
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

fn new_key(args: NewKey) -> ExitCode {
    match stampede::server::access::new_key(&args.name, &args.scopes) {
        Ok(key) => {
            println!("secret: {}", key.secret);
            println!("line: {}", key.line);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stampede keys new: {e}");
            ExitCode::from(2)
        }
    }
}

fn gen_purchases(args: GenPurchases) -> ExitCode {
    let GenPurchases { count, output, seed } = args;
    let seed = seed.unwrap_or_else(clock_seed);
    let output = output.unwrap_or_else(|| {
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]-[hour][minute][second]"
            ))
            .unwrap_or_default();
        PathBuf::from(format!("data/test-{stamp}.ndjson"))
    });
    let started = std::time::Instant::now();
    match stampede::ingest::generate::generate(count, &output, seed) {
        Ok(generated) => {
            eprintln!(
                "wrote {} lines ({} redeliveries, {} players, {:.1} MB) to {} in {:.1}s (seed {seed})",
                generated.lines,
                generated.redeliveries,
                generated.players,
                generated.bytes as f64 / 1e6,
                output.display(),
                started.elapsed().as_secs_f64(),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stampede gen-purchases: {e}");
            ExitCode::FAILURE
        }
    }
}

fn gen_transactions(args: GenTransactions) -> ExitCode {
    use stampede::settlement::generate::{Options, run};
    let options = Options {
        count: args.count,
        merchants: args.merchants,
        from: args.from,
        to: args.to,
        seed: args.seed.unwrap_or_else(clock_seed),
    };
    let Ok(database_url) = std::env::var("DATABASE_URL") else {
        eprintln!("stampede gen-transactions: DATABASE_URL is required");
        return ExitCode::from(2);
    };
    let runtime = match runtime(1) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("stampede: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = std::time::Instant::now();
    match runtime.block_on(run(&database_url, options)) {
        Ok(generated) => {
            eprintln!(
                "loaded {} transactions ({} PAID, {} on a day boundary) for {} merchants, {} to {}, in {:.1}s (seed {})",
                generated.rows,
                generated.paid,
                generated.on_boundary,
                options.merchants,
                options.from,
                options.to,
                started.elapsed().as_secs_f64(),
                options.seed,
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stampede gen-transactions: {e}");
            ExitCode::FAILURE
        }
    }
}

/// With one worker the engine runs on tokio's current-thread scheduler: on a
/// small machine shared with Redis and Postgres, skipping cross-thread
/// wake-ups is worth more than a second worker.
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

/// Each `SIGHUP` reads the keys file again: a key is added or removed
/// without a restart. A file that does not parse changes nothing.
#[cfg(unix)]
async fn reload_keys_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    reload: impl Fn() -> Result<usize, stampede::server::access::ReloadError>,
) {
    while hangups.recv().await.is_some() {
        match reload() {
            Ok(keys) => tracing::info!(keys, "SIGHUP: keys file read again; its keys are in force"),
            Err(e) => tracing::error!(error = %e, "SIGHUP: keys file not reloaded"),
        }
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown requested");
}
