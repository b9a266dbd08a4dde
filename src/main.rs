//! The `stampede` binary: `stampede serve`, `stampede gen-purchases`,
//! `stampede gen-transactions`.

use std::process::ExitCode;
use std::sync::Arc;

use stampede::app::{App, StartupError};
use stampede::clock::SystemClock;
use stampede::config::Config;

/// glibc malloc took a fifth of the engine's CPU under load (perf); every
/// request allocates a little, from many threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
usage: stampede serve
       stampede gen-purchases [--count N] [--output FILE] [--seed S]
       stampede gen-transactions [--count N] [--merchants M] [--from DATE --to DATE] [--seed S]

serve          run the engine; configuration comes from environment variables (README.md)
gen-purchases  write N purchase lines as NDJSON (default 1000) to FILE
               (default data/test-YYYYMMDD-HHMMSS.ndjson); the same seed gives the same file,
               different seeds give disjoint transaction ids (default: from the clock)
gen-transactions  load N merchant transactions (default 1000000) into the `transactions` table of
               DATABASE_URL by COPY: M merchants (default 1000), paid from DATE to DATE inclusive
               (default 2025-01-01 to 2025-01-31), about 90% PAID, 1% on a UTC day boundary;
               the same seed gives the same rows (default: from the clock)";

fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    match command.as_deref() {
        Some("serve") => serve(),
        Some("gen-purchases") => gen_purchases(std::env::args().skip(2).collect()),
        Some("gen-transactions") => gen_transactions(std::env::args().skip(2).collect()),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
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
        let app = match App::build(config, Arc::new(SystemClock)).await {
            Ok(app) => app,
            // Each feature reads its own settings as it is built: a bad one
            // is a configuration error like a bad shared setting.
            Err(StartupError::Config(e)) => {
                eprintln!("stampede: configuration error: {e}");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("stampede: start-up failed: {e}");
                return ExitCode::FAILURE;
            }
        };
        app.run_until_stopped(shutdown_signal()).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

fn gen_purchases(args: Vec<String>) -> ExitCode {
    let now = time::OffsetDateTime::now_utc();
    let mut count: u64 = 1000;
    let mut seed: u64 = now.unix_timestamp_nanos() as u64;
    let stamp = now
        .format(time::macros::format_description!(
            "[year][month][day]-[hour][minute][second]"
        ))
        .unwrap_or_default();
    let mut output = std::path::PathBuf::from(format!("data/test-{stamp}.ndjson"));
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let value = args.next();
        let parsed = match (flag.as_str(), value.as_deref()) {
            ("--count" | "-count", Some(v)) => v.parse().map(|v| count = v).is_ok(),
            ("--seed" | "-seed", Some(v)) => v.parse().map(|v| seed = v).is_ok(),
            ("--output" | "-output", Some(v)) => {
                output = v.into();
                true
            }
            _ => false,
        };
        if !parsed {
            eprintln!("stampede gen-purchases: bad argument {flag:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
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

fn gen_transactions(args: Vec<String>) -> ExitCode {
    use stampede::settlement::domain::parse_date;
    use stampede::settlement::generate::{Options, run};
    let mut options = Options {
        count: 1_000_000,
        merchants: 1000,
        from: time::macros::date!(2025 - 01 - 01),
        to: time::macros::date!(2025 - 01 - 31),
        seed: time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64,
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let value = args.next();
        let parsed = match (flag.as_str(), value.as_deref()) {
            ("--count", Some(v)) => v.parse().map(|v| options.count = v).is_ok(),
            ("--merchants", Some(v)) => v.parse().map(|v| options.merchants = v).is_ok(),
            ("--seed", Some(v)) => v.parse().map(|v| options.seed = v).is_ok(),
            ("--from", Some(v)) => parse_date(v).map(|d| options.from = d).is_some(),
            ("--to", Some(v)) => parse_date(v).map(|d| options.to = d).is_some(),
            _ => false,
        };
        if !parsed {
            eprintln!("stampede gen-transactions: bad argument {flag:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
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
