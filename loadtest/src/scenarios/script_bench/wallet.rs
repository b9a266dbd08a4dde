//! The wallet's requests for `loadtest script-bench --script wallet`:
//! `lua/wallet_apply.lua` in its batch form, with the mix the `wallet`
//! scenario's driver sends (`scenarios::wallet::load`).
//!
//! Each variant gets its own players, seeded once before the first block as
//! the scenario seeds them (a deposit each, a bonus for every other one), so
//! that their reference hashes grow over the run as they do under load. A
//! block is `--rounds` calls of `--batch` operations: each step is a bet,
//! then its win (2 in 5) or refund (1 in 10) in the same call, and one
//! request in 5 comes twice (a client's retry, answered as a replay).

use std::time::{SystemTime, UNIX_EPOCH};

use fred::prelude::Client;
use fred::types::Value;

use super::{OUTBOX_BOUND, ScriptBenchArgs, evalsha};

/// The players of each variant, as many as the `wallet` scenario's.
const PLAYERS: u64 = 2_000;
/// Operations per call while seeding.
const SEED_BATCH: usize = 20;
const SEED_DEPOSIT: i64 = 1_000_000;
const SEED_BONUS: i64 = 50_000;
/// The scenario's bonus: wagering 20x, an hour, these contributions.
const BONUS_WAGERING: i64 = 20;
const BONUS_CONTRIBUTIONS: &str = ",slots=100,table=20,live=10,";
const GAMES: [&str; 3] = ["slots", "table", "live"];
/// The engine's per-request settings (`src/wallet/limits.rs`): player
/// stream length, its retention in ms, the balance bound, the notify
/// stream's length.
const SETTINGS: [&str; 4] = ["1000", "86400000", "1000000000000000", "1000"];

/// One variant's players and the keys written for them.
pub struct Players {
    /// `<run>:{<n>}:w<variant>`: the script reads the shard number from the
    /// braces of the entry counter's key, as the engine names it.
    prefix: String,
    /// Steps taken so far: each names its own references.
    step: u64,
    /// Keys that are not any one player's (the call marks among them).
    written: Vec<String>,
}

impl Players {
    pub fn new(run_id: &str, variant: usize) -> Players {
        Players {
            prefix: format!("{run_id}:{{9}}:w{variant}"),
            step: 0,
            written: Vec::new(),
        }
    }

    fn player(&self, i: u64) -> String {
        format!("p{i}")
    }

    /// Every key written for these players, for the bench to unlink.
    pub fn keys(&self) -> Vec<String> {
        let mut keys = self.written.clone();
        for i in 0..PLAYERS {
            let player = self.player(i);
            keys.push(format!("{}:wallet:acct:EUR:{player}", self.prefix));
            keys.push(format!("{}:wallet:refs:{player}", self.prefix));
            keys.push(format!("{}:wallet:events:{player}", self.prefix));
        }
        keys
    }

    /// One request's keys and arguments, in `lua/wallet_apply.lua`'s order.
    fn request(
        &self,
        player: &str,
        op: &str,
        reference: &str,
        amount: i64,
        detail: &str,
        bonus: Option<i64>,
    ) -> Request {
        let p = &self.prefix;
        let keys = vec![
            format!("{p}:wallet:acct:EUR:{player}"),
            format!("{p}:wallet:refs:{player}"),
            format!("{p}:wallet:bonus_expiry"),
            format!("{p}:wallet:events:{player}"),
            format!("{p}:wallet:notify"),
            format!("{p}:wallet:seq"),
        ];
        let now = now_ms();
        // A grant's expiry, wagering and contributions (the scenario's
        // bonus has no bet cap); zero and empty for a transaction.
        let (expires, required, contributions) = match bonus {
            Some(required) => ((now + 3_600_000).to_string(), required.to_string(), BONUS_CONTRIBUTIONS),
            None => ("0".into(), "0".into(), ""),
        };
        let mut args = vec![
            op.to_owned(),
            now.to_string(),
            player.to_owned(),
            "EUR".into(),
            reference.to_owned(),
            amount.to_string(),
            detail.to_owned(),
            "0".into(),
            expires,
            required,
            contributions.to_owned(),
        ];
        args.extend(SETTINGS.iter().map(|s| (*s).to_owned()));
        Request { keys, args }
    }

    /// A deposit for each player and a bonus for every other one. Returns
    /// how many were not answered OK.
    pub async fn seed(&mut self, client: &Client, sha: &str) -> Result<u64, String> {
        let mut requests = Vec::new();
        for i in 0..PLAYERS {
            let player = self.player(i);
            requests.push(self.request(&player, "deposit", &format!("{player}-seed"), SEED_DEPOSIT, "", None));
            if i % 2 == 0 {
                let bonus = format!("{player}-bonus");
                requests.push(self.request(
                    &player,
                    "grant",
                    &bonus,
                    SEED_BONUS,
                    "",
                    Some(SEED_BONUS * BONUS_WAGERING),
                ));
            }
        }
        let mut not_ok = 0;
        for (n, chunk) in requests.chunks(SEED_BATCH).enumerate() {
            not_ok += count_refused(&self.call(client, sha, chunk, &format!("seed{n}")).await?);
        }
        Ok(not_ok)
    }

    /// One block. Returns the operations sent and how many were answered
    /// other than OK or REPLAY.
    pub async fn block(
        &mut self,
        client: &Client,
        sha: &str,
        block: u64,
        args: &ScriptBenchArgs,
    ) -> Result<(u64, u64), String> {
        let (mut sent, mut not_ok) = (0u64, 0u64);
        for round in 0..args.rounds {
            let mut requests = Vec::with_capacity(args.batch() as usize + 2);
            while requests.len() < args.batch() as usize {
                self.step += 1;
                requests.extend(self.step_requests());
            }
            sent += requests.len() as u64;
            not_ok += count_refused(&self.call(client, sha, &requests, &format!("b{block}r{round}")).await?);
        }
        Ok((sent, not_ok))
    }

    /// A step of the scenario's driver: a bet, then its win or refund or
    /// nothing; each request sent twice one time in 5.
    fn step_requests(&self) -> Vec<Request> {
        let k = self.step;
        let player = self.player(k % PLAYERS);
        let bet_ref = format!("{player}-b{k}");
        let amount = 10 + (k % 50) as i64;
        let mut steps = vec![self.request(&player, "bet", &bet_ref, amount, GAMES[(k % 3) as usize], None)];
        match k % 10 {
            0..=3 => steps.push(self.request(&player, "win", &format!("{player}-w{k}"), amount * 2, &bet_ref, None)),
            4 => steps.push(self.request(&player, "refund", &format!("{player}-r{k}"), amount, &bet_ref, None)),
            _ => {}
        }
        let mut out = Vec::with_capacity(steps.len() * 2);
        for (i, step) in steps.into_iter().enumerate() {
            if (k + i as u64).is_multiple_of(5) {
                out.push(step.clone());
            }
            out.push(step);
        }
        out
    }

    async fn call(&mut self, client: &Client, sha: &str, requests: &[Request], name: &str) -> Result<Value, String> {
        let p = &self.prefix;
        let mut keys = vec![format!("{p}:outbox"), format!("{p}:outbox:events")];
        let mut argv = vec![requests.len().to_string(), OUTBOX_BOUND.to_string()];
        for r in requests {
            keys.extend(r.keys.iter().cloned());
            argv.extend(r.args.iter().cloned());
        }
        let mark = format!("{p}:call:{name}");
        keys.push(mark.clone());
        argv.push("60000".into());
        if self.written.is_empty() {
            self.written.extend(keys[..2].iter().cloned());
            self.written.extend(
                requests[0].keys[2..]
                    .iter()
                    .filter(|k| !k.contains(":events:"))
                    .cloned(),
            );
        }
        self.written.push(mark);
        evalsha(client, sha, keys, argv).await
    }
}

#[derive(Clone)]
struct Request {
    keys: Vec<String>,
    args: Vec<String>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Requests of a batch reply answered other than OK or REPLAY: a variant
/// that refuses what the engine's script accepts does other work.
fn count_refused(reply: &Value) -> u64 {
    let Value::Array(items) = reply else { return 1 };
    items
        .iter()
        .filter(|item| {
            let Value::Array(inner) = item else { return true };
            !matches!(inner.first().and_then(Value::as_str).as_deref(), Some("OK" | "REPLAY"))
        })
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_the_scenarios() {
        let mut players = Players::new("sb1", 0);
        let mut ops = std::collections::HashMap::new();
        let mut total = 0;
        for _ in 0..1000 {
            players.step += 1;
            for r in players.step_requests() {
                assert_eq!(r.keys.len(), 6);
                assert_eq!(r.args.len(), 15);
                *ops.entry(r.args[0].clone()).or_insert(0) += 1;
                total += 1;
            }
        }
        // Per 10 steps: 10 bets, 4 wins and a refund; the bets of steps
        // 0 and 5 and the refund of step 4 come twice.
        assert_eq!((ops["bet"], ops["win"], ops["refund"]), (1200, 400, 200));
        assert_eq!(total, 1800);
        assert!(players.prefix.contains("{9}"));
    }

    #[test]
    fn replays_count_as_answered() {
        let ok = Value::Array(vec![Value::String("OK".into())]);
        let replay = Value::Array(vec![Value::String("REPLAY".into())]);
        let refused = Value::Array(vec![Value::String("INSUFFICIENT_FUNDS".into())]);
        assert_eq!(count_refused(&Value::Array(vec![ok, replay, refused])), 1);
        assert_eq!(count_refused(&Value::Null), 1);
    }
}
