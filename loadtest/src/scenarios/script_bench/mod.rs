//! `loadtest script-bench`: what the sale's or the wallet's scripts cost
//! Redis per request, variant against variant, where a machine's noise
//! cannot decide it.
//!
//! Whole load runs on a shared machine swing by a quarter between runs, as
//! much as most script changes. So this runs the real batch scripts
//! (`lua/batch/prologue.lua`, the script, `lua/batch/epilogue.lua`, joined as
//! the engine joins them) straight against an idle Redis. A sale block is
//! `--rounds` checkout calls of `--batch` new codes each, each followed by
//! the purchase call that spends them; a wallet block is `--rounds` calls
//! of `--batch` operations of the `wallet` scenario's mix (see `wallet`).
//! Blocks of the variants interleave, `--reps` times. Per block, `INFO
//! commandstats` gives EVALSHA's microseconds and `INFO cpu` the server's
//! CPU, per request (a checkout, a purchase or a wallet operation). The
//! report gives each variant's median and minimum, and the median of its
//! paired ratios to the first variant (block by block, so that a slow
//! minute slows both sides of a pair).

pub mod args;
mod checks;
mod report;
mod wallet;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use fred::prelude::{Client, ClientLike};
use fred::types::Value;

use crate::common::cost::info::{self, NodeCounters};
use crate::common::cost::redis::command;
use crate::common::stores::connect_redis;
use crate::common::summary;
use crate::common::verdict::Checks;

pub use args::{BenchScript, ScriptBenchArgs};

/// The hash tag every key of the bench shares: one slot, as in the engine.
const TAG: &str = "{sb}";
/// The outbox bound given to the scripts: never reached here.
const OUTBOX_BOUND: &str = "1000000000";
/// Unlinked per command when a block's keys go.
const UNLINK_CHUNK: usize = 500;

/// One variant: its folder and its scripts' SHA-1s once loaded, in the
/// order of [`script_files`].
struct Variant {
    dir: String,
    scripts: Vec<String>,
}

/// The files a variant's folder holds for `script`.
fn script_files(script: BenchScript) -> &'static [&'static str] {
    match script {
        BenchScript::Sale => &["checkout.lua", "purchase.lua"],
        BenchScript::Wallet => &["wallet_apply.lua"],
    }
}

/// One block's cost per request, in microseconds.
#[derive(Clone, Copy)]
pub struct Block {
    pub script_us: f64,
    pub cpu_us: f64,
}

pub async fn run(args: ScriptBenchArgs) -> Result<Checks, String> {
    if args.redis_url.starts_with("redis-cluster") {
        return Err("script-bench reads one server's statistics: give it a standalone Redis".into());
    }
    let client = connect_redis(&args.redis_url).await?;
    let prologue = read(&args.batch_dir.join("prologue.lua"))?;
    let epilogue = read(&args.batch_dir.join("epilogue.lua"))?;
    let mut variants = Vec::new();
    for dir in &args.variants {
        let load =
            |name: &str| -> Result<String, String> { Ok(format!("{prologue}{}{epilogue}", read(&dir.join(name))?)) };
        let mut scripts = Vec::new();
        for name in script_files(args.script) {
            scripts.push(send_str(&client, "SCRIPT", vec!["LOAD".into(), load(name)?]).await?);
        }
        variants.push(Variant {
            dir: dir.display().to_string(),
            scripts,
        });
    }
    let calls = match args.script {
        BenchScript::Sale => format!("{} checkout and {} purchase calls", args.rounds, args.rounds),
        BenchScript::Wallet => format!("{} wallet_apply calls", args.rounds),
    };
    println!(
        "script-bench: {} variant(s), {} blocks each of {calls} of {} requests",
        variants.len(),
        args.reps,
        args.batch()
    );
    let run_id = format!("sb{}", std::process::id());
    let mut blocks: Vec<Vec<Block>> = vec![Vec::new(); variants.len()];
    let mut refused = 0u64;
    let mut block_no = 0u64;
    // The wallet's players live for the whole run, so that their records
    // pile up as under load; the sale's keys go after each block.
    let mut players: Vec<wallet::Players> = Vec::new();
    if args.script == BenchScript::Wallet {
        for (v, variant) in variants.iter().enumerate() {
            let mut own = wallet::Players::new(&run_id, v);
            refused += own.seed(&client, &variant.scripts[0]).await?;
            players.push(own);
        }
    }
    for _ in 0..args.reps {
        for (v, variant) in variants.iter().enumerate() {
            block_no += 1;
            let prefix = format!("{run_id}:{TAG}:{block_no}");
            send(&client, "CONFIG", vec!["RESETSTAT".into()]).await?;
            let before = counters(&client).await?;
            let (requests, not_ok, keys) = match players.get_mut(v) {
                Some(own) => {
                    let (requests, not_ok) = own.block(&client, &variant.scripts[0], block_no, &args).await?;
                    (requests, not_ok, Vec::new())
                }
                None => block(&client, variant, &prefix, block_no, &args).await?,
            };
            let after = counters(&client).await?;
            refused += not_ok;
            for chunk in keys.chunks(UNLINK_CHUNK) {
                send(&client, "UNLINK", chunk.to_vec()).await?;
            }
            let script_us = after.commands.get("evalsha").map_or(0, |s| s.usec) as f64;
            let cpu_us = after.cpu_us.unwrap_or(0).saturating_sub(before.cpu_us.unwrap_or(0)) as f64;
            blocks[v].push(Block {
                script_us: script_us / requests as f64,
                cpu_us: cpu_us / requests as f64,
            });
        }
    }
    for own in &players {
        for chunk in own.keys().chunks(UNLINK_CHUNK) {
            send(&client, "UNLINK", chunk.to_vec()).await?;
        }
    }
    let rows: Vec<report::Row> = variants
        .iter()
        .zip(&blocks)
        .map(|(variant, own)| report::Row::new(&variant.dir, own, &blocks[0]))
        .collect();
    report::print_human(args.script, &rows);
    let checks: Checks = checks::checks(refused).into_iter().collect();
    summary::write(args.json.as_deref(), &report::to_json(&args, &rows, &checks));
    Ok(checks)
}

/// One block: `rounds` checkout calls of `batch` new codes each, each
/// followed by the purchase call that spends them. Returns the requests
/// sent, how many were not answered OK, and every key written.
async fn block(
    client: &Client,
    variant: &Variant,
    prefix: &str,
    sale: u64,
    args: &ScriptBenchArgs,
) -> Result<(u64, u64, Vec<String>), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| format!("clock: {e}"))?
        .as_millis() as u64;
    let (outbox, counter) = (format!("{prefix}:outbox"), format!("{prefix}:outbox:events"));
    let (meta, sold, users) = (
        format!("{prefix}:sale"),
        format!("{prefix}:sale:sold"),
        format!("{prefix}:sale:users"),
    );
    let items = u64::from(args.batch()) * u64::from(args.rounds);
    // Every checkout call names these first; the block unlinks them after.
    let sale_keys = vec![outbox.clone(), counter.clone(), meta, sold.clone(), users.clone()];
    let mut written = sale_keys.clone();
    let (mut requests, mut not_ok, mut item) = (0u64, 0u64, 0u64);
    for round in 0..u64::from(args.rounds) {
        let at = now + round;
        let mut keys = sale_keys.clone();
        let mut argv = vec![args.batch().to_string(), OUTBOX_BOUND.to_string()];
        let mut codes = Vec::with_capacity(args.batch() as usize);
        for i in 0..args.batch() {
            item += 1;
            // 20,000 buyers of 10 items each at most: every checkout is new.
            let user = format!("u{}", item % 20_000);
            let code = format!("c{sale}x{item}");
            if i == 0 {
                // The sale's part: sale, window, items, per-user limit, codes
                // per user, refused attempts' bound (checkout.lua).
                argv.extend([
                    "1".into(),
                    sale.to_string(),
                    (now - 1_000).to_string(),
                    (now + 3_600_000).to_string(),
                    items.to_string(),
                    "10".into(),
                    "20".into(),
                    "250000".into(),
                ]);
            } else {
                argv.push("0".into());
            }
            let code_key = format!("{prefix}:code:{code}");
            keys.push(code_key.clone());
            argv.extend([
                at.to_string(),
                item.to_string(),
                user,
                code.clone(),
                (at + 300_000).to_string(),
                "300000".into(),
                "7200000".into(),
            ]);
            codes.push((code_key, code));
        }
        let mark = format!("{prefix}:call:c{round}");
        keys.push(mark.clone());
        argv.push("60000".into());
        written.push(mark);
        not_ok += count_not_ok(&evalsha(client, &variant.scripts[0], keys, argv).await?);

        let mut keys = vec![outbox.clone(), counter.clone()];
        let mut argv = vec![args.batch().to_string(), OUTBOX_BOUND.to_string()];
        for (code_key, code) in codes {
            keys.extend([code_key.clone(), sold.clone(), users.clone()]);
            argv.extend([(at + 5).to_string(), sale.to_string(), code]);
            written.push(code_key);
        }
        let mark = format!("{prefix}:call:p{round}");
        keys.push(mark.clone());
        argv.push("60000".into());
        written.push(mark);
        not_ok += count_not_ok(&evalsha(client, &variant.scripts[1], keys, argv).await?);
        requests += 2 * u64::from(args.batch());
    }
    Ok((requests, not_ok, written))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

async fn send(client: &Client, name: &'static str, args: Vec<String>) -> Result<Value, String> {
    client
        .custom(command(name), args)
        .await
        .map_err(|e| format!("{name}: {e}"))
}

async fn send_str(client: &Client, name: &'static str, args: Vec<String>) -> Result<String, String> {
    let reply = send(client, name, args).await?;
    reply
        .as_string()
        .ok_or_else(|| format!("{name}: unexpected reply {reply:?}"))
}

async fn evalsha(client: &Client, sha: &str, keys: Vec<String>, argv: Vec<String>) -> Result<Value, String> {
    let mut all = Vec::with_capacity(2 + keys.len() + argv.len());
    all.push(sha.to_owned());
    all.push(keys.len().to_string());
    all.extend(keys);
    all.extend(argv);
    send(client, "EVALSHA", all).await
}

async fn counters(client: &Client) -> Result<NodeCounters, String> {
    let text = send_str(client, "INFO", vec!["cpu".into(), "commandstats".into()]).await?;
    Ok(info::parse(&text))
}

/// Requests of a batch reply answered other than OK (`{'OK', ...}` or a
/// bare `'OK'`).
fn count_not_ok(reply: &Value) -> u64 {
    let Value::Array(items) = reply else { return 1 };
    items
        .iter()
        .filter(|item| {
            let first = match item {
                Value::Array(inner) => inner.first(),
                other => Some(*other),
            };
            first.and_then(Value::as_str).as_deref() != Some("OK")
        })
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_reply_counts_what_was_not_ok() {
        let ok = Value::Array(vec![Value::String("OK".into())]);
        let sold = Value::Array(vec![Value::String("ITEM_SOLD".into())]);
        let reply = Value::Array(vec![ok.clone(), sold, Value::String("OK".into())]);
        assert_eq!(count_not_ok(&reply), 1);
        assert_eq!(count_not_ok(&Value::Null), 1);
    }
}
