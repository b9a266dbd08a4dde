//! Redis time per script, from its slow log.
//!
//! `INFO commandstats` adds up every `EVALSHA` whatever script it ran. With
//! `slowlog-log-slower-than 0` Redis logs every command with its duration in
//! microseconds, its first arguments (an `EVALSHA`'s second is the SHA1 of
//! the script) and its client. A script's inner commands are logged too, by
//! a client without an address (`?:0`), and before the script's own entry
//! (Redis logs a command when it ends, and a script runs alone): so each
//! script call is seen with its inner commands, and "Lua itself" is its
//! duration minus theirs.
//!
//! This module reads the entries; `sampler.rs` decides when they are logged.

use std::collections::BTreeMap;

use fred::types::Value;

use super::info::{CommandStat, is_script_command};
use super::scripts::ScriptNames;

/// One slow log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: u64,
    pub usec: u64,
    /// The command and its first arguments (Redis keeps 32 at most, each cut
    /// at 128 bytes).
    pub args: Vec<String>,
    /// `ip:port` of the client; empty or `?:0` for a script's inner commands.
    pub client: String,
}

impl Entry {
    fn command(&self) -> String {
        self.args.first().map(|c| c.to_ascii_lowercase()).unwrap_or_default()
    }

    fn inner(&self) -> bool {
        self.client.is_empty() || self.client.starts_with('?')
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_string()),
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Double(d) => Some(d.to_string()),
        _ => None,
    }
}

/// The reply of `SLOWLOG GET`.
pub fn parse_entries(reply: &Value) -> Result<Vec<Entry>, String> {
    let Value::Array(entries) = reply else {
        return Err(format!("SLOWLOG GET: not an array: {reply:?}"));
    };
    entries
        .iter()
        .map(|entry| {
            let bad = || format!("SLOWLOG GET: unreadable entry {entry:?}");
            let Value::Array(fields) = entry else {
                return Err(bad());
            };
            let int = |i: usize| {
                fields
                    .get(i)
                    .and_then(Value::as_i64)
                    .and_then(|v| u64::try_from(v).ok())
            };
            let args = match fields.get(3) {
                Some(Value::Array(args)) => args.iter().filter_map(text).collect(),
                _ => return Err(bad()),
            };
            Ok(Entry {
                id: int(0).ok_or_else(bad)?,
                usec: int(2).ok_or_else(bad)?,
                args,
                client: fields.get(4).and_then(text).unwrap_or_default(),
            })
        })
        .collect()
}

/// What the slow log showed of one script.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptSample {
    pub calls: u64,
    /// The calls' durations: the inner commands included.
    pub usec: u64,
    /// Its inner commands, by name.
    pub inner: BTreeMap<String, CommandStat>,
}

impl ScriptSample {
    pub fn inner_total(&self) -> CommandStat {
        let mut all = CommandStat::default();
        for stat in self.inner.values() {
            all.add(*stat);
        }
        all
    }

    fn add(&mut self, other: &ScriptSample) {
        self.calls += other.calls;
        self.usec += other.usec;
        for (name, stat) in &other.inner {
            self.inner.entry(name.clone()).or_default().add(*stat);
        }
    }
}

/// Everything the slow log showed over the sampled slices.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// By script name (see `ScriptNames::name_of`).
    pub scripts: BTreeMap<String, ScriptSample>,
    /// Commands clients sent themselves (not from a script), by name.
    pub direct: BTreeMap<String, CommandStat>,
    /// Commands of a client without an address that no script entry
    /// follows (a module's calls): counted apart.
    pub stray_inner: CommandStat,
    /// Entries read.
    pub entries: u64,
    /// Reads that found the log full: its oldest entries were dropped.
    pub full_reads: u64,
    /// What logging one inner command adds to its script's logged time, in
    /// µs, as calibrated on this Redis before the phase.
    pub logging_us: Option<f64>,
}

/// What names a script call: the script's file for `EVALSHA` (and for an
/// `EVAL` whose body the log kept whole), the function for `FCALL`.
fn script_name(entry: &Entry, names: &ScriptNames) -> String {
    let command = entry.command();
    let arg = entry.args.get(1).map(String::as_str).unwrap_or("");
    match command.as_str() {
        "evalsha" | "evalsha_ro" => names.name_of(arg),
        // A longer body ends with "... (N more bytes)" in the log.
        "eval" | "eval_ro" if !arg.ends_with("more bytes)") => names.name_of(&fred::util::sha1_hash(arg)),
        "eval" | "eval_ro" => "eval (body cut short by the log)".into(),
        _ => format!("fcall {arg}"),
    }
}

impl Sample {
    /// Adds the entries of one read of one server's log. `limit`: the
    /// log's length at the time (a read of that many entries found it full).
    pub fn digest(&mut self, mut entries: Vec<Entry>, names: &ScriptNames, limit: u64) {
        if entries.len() as u64 >= limit {
            self.full_reads += 1;
        }
        self.entries += entries.len() as u64;
        entries.sort_by_key(|e| e.id);
        let mut pending = ScriptSample::default();
        for entry in &entries {
            let command = entry.command();
            if entry.inner() {
                pending.inner.entry(command).or_default().add(CommandStat {
                    calls: 1,
                    usec: entry.usec,
                });
            } else if is_script_command(&command) {
                pending.calls = 1;
                pending.usec = entry.usec;
                self.scripts
                    .entry(script_name(entry, names))
                    .or_default()
                    .add(&std::mem::take(&mut pending));
            } else if command == "config" || command == "slowlog" {
                // The sampler's own commands.
            } else {
                self.direct.entry(command).or_default().add(CommandStat {
                    calls: 1,
                    usec: entry.usec,
                });
            }
            if !pending.inner.is_empty() && !entry.inner() {
                self.stray_inner.add(pending.inner_total());
                pending = ScriptSample::default();
            }
        }
        self.stray_inner.add(pending.inner_total());
    }

    /// Calls and time of every script together.
    pub fn scripts_total(&self) -> CommandStat {
        let mut all = CommandStat::default();
        for s in self.scripts.values() {
            all.add(CommandStat {
                calls: s.calls,
                usec: s.usec,
            });
        }
        all
    }

    /// The share of `command`'s time the scripts spent, when the sample saw
    /// it at all.
    pub fn inner_share(&self, command: &str) -> Option<f64> {
        let mut inner = CommandStat::default();
        for script in self.scripts.values() {
            if let Some(stat) = script.inner.get(command) {
                inner.add(*stat);
            }
        }
        let direct = self.direct.get(command).copied().unwrap_or_default();
        match (inner.calls + direct.calls, inner.usec + direct.usec) {
            (0, _) => None,
            // Every call took under a microsecond: count calls instead.
            (calls, 0) => Some(inner.calls as f64 / calls as f64),
            (_, usec) => Some(inner.usec as f64 / usec as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, usec: u64, args: &[&str], client: &str) -> Value {
        Value::Array(vec![
            Value::Integer(id as i64),
            Value::Integer(1_796_560_497),
            Value::Integer(usec as i64),
            Value::Array(args.iter().map(|a| Value::String((*a).into())).collect()),
            Value::String(client.into()),
            Value::String("".into()),
        ])
    }

    #[test]
    fn each_script_call_takes_the_inner_commands_before_it() {
        let mut names = ScriptNames::default();
        names.add("purchase", "body-p", None);
        names.add("checkout", "body-c", None);
        let sha_p = fred::util::sha1_hash("body-p");
        let sha_c = fred::util::sha1_hash("body-c");
        // Newest first, as SLOWLOG GET answers.
        let reply = Value::Array(vec![
            entry(9, 3, &["hget", "k"], "?:0"),
            entry(8, 40, &["EVALSHA", &sha_c, "2"], "127.0.0.1:5001"),
            entry(7, 2, &["hset", "k", "v"], "?:0"),
            entry(6, 5, &["xadd", "s"], "?:0"),
            entry(5, 12, &["XREADGROUP", "GROUP"], "127.0.0.1:5002"),
            entry(4, 30, &["evalsha", &sha_p, "1"], "127.0.0.1:5001"),
            entry(3, 4, &["hset", "k"], "?:0"),
            entry(2, 25, &["evalsha", "feedface00", "0"], "127.0.0.1:5001"),
            entry(
                1,
                9,
                &["CONFIG", "SET", "slowlog-log-slower-than", "0"],
                "127.0.0.1:5003",
            ),
        ]);
        let entries = parse_entries(&reply).unwrap();
        assert_eq!(entries.len(), 9);
        let mut s = Sample::default();
        s.digest(entries, &names, 1000);
        assert_eq!(s.entries, 9);
        assert_eq!(s.full_reads, 0);
        // Entry 3 ran inside the purchase call (4), entries 6 and 7 inside
        // the checkout call (8); the call of entry 2 ran no logged command.
        let p = &s.scripts["purchase"];
        assert_eq!((p.calls, p.usec), (1, 30));
        assert_eq!(p.inner["hset"], CommandStat { calls: 1, usec: 4 });
        let c = &s.scripts["checkout"];
        assert_eq!((c.calls, c.usec), (1, 40));
        assert_eq!(c.inner["hset"], CommandStat { calls: 1, usec: 2 });
        assert_eq!(c.inner_total(), CommandStat { calls: 2, usec: 7 });
        assert!(s.scripts["sha feedface"].inner.is_empty());
        assert_eq!(s.direct["xreadgroup"], CommandStat { calls: 1, usec: 12 });
        assert!(
            !s.direct.contains_key("config"),
            "the sampler's own commands are left out"
        );
        // The newest hget has no script entry after it (a module's call, or
        // an entry lost): counted apart.
        assert_eq!(s.stray_inner, CommandStat { calls: 1, usec: 3 });
        assert_eq!(s.scripts_total(), CommandStat { calls: 3, usec: 95 });
        assert_eq!(s.inner_share("hset"), Some(1.0));
        assert_eq!(s.inner_share("xreadgroup"), Some(0.0));
        assert_eq!(s.inner_share("get"), None);
        // A read as long as the log: it was full.
        let mut full = Sample::default();
        full.digest(parse_entries(&reply).unwrap(), &names, 9);
        assert_eq!(full.full_reads, 1);
        assert!(parse_entries(&Value::String("x".into())).is_err());
    }

    #[test]
    fn names_eval_and_fcall() {
        let mut names = ScriptNames::default();
        names.add("tiny", "return 1", None);
        let e = |args: &[&str]| Entry {
            id: 1,
            usec: 1,
            args: args.iter().map(|a| a.to_string()).collect(),
            client: "127.0.0.1:1".into(),
        };
        assert_eq!(script_name(&e(&["EVAL", "return 1", "0"]), &names), "tiny");
        assert_eq!(
            script_name(&e(&["EVAL", "local x... (200 more bytes)", "0"]), &names),
            "eval (body cut short by the log)"
        );
        assert_eq!(script_name(&e(&["FCALL", "buy", "1"]), &names), "fcall buy");
    }
}
