//! Where Redis's CPU goes inside a script call, which `INFO commandstats`
//! cannot tell: with `--perf-redis FILE`, Redis's processes are recorded by
//! `perf record -g` for the measured phase, and the cost table splits
//! Redis's CPU by what each sample's stack was doing (the commands a script
//! runs, the glue of `redis.call`, the Lua interpreter, the AOF, the
//! network…).
//!
//! The split needs stacks perf can walk and name: a `redis-server` built
//! with frame pointers and symbols (loadtest/README.md says how). Debian's
//! is stripped and has none, so its stacks stop at the first frame; the
//! report then says how few samples reached Redis's event loop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::fmt::fmt_value;

/// Samples per second: enough for a split to the percent over a 10-20 s
/// phase, few enough that `perf script` reads them back in seconds.
const FREQUENCY: &str = "999";

/// How long `perf record` may take to write its file once told to stop.
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// Below this share of samples whose stack reached Redis's event loop, the
/// split is not worth reading.
const WALKED_ENOUGH: f64 = 0.8;

/// What a sample of Redis was doing, by its stack (leaf first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// The commands a script ran (`call()` below `scriptCall`).
    ScriptCommands,
    /// `redis.call` around them: arguments to Redis objects, checks, the
    /// reply parsed back into Lua.
    CallGlue,
    /// The KEYS and ARGV tables of each call.
    KeysArgv,
    /// The script's reply turned into the client's.
    ReplyConversion,
    LuaGc,
    /// The interpreter and Lua's libraries (string.format, concatenation,
    /// tables).
    Lua,
    /// EVALSHA's own work around the script.
    EvalSetup,
    /// Each write command written into the AOF buffer.
    AofPropagation,
    /// The AOF written and fsynced before the replies go out.
    AofFsync,
    /// Commands clients sent themselves, and command dispatch.
    DirectCommands,
    NetworkRead,
    NetworkWrite,
    /// The event loop's own work, timers and the rest of `beforeSleep`.
    EventLoop,
    /// A stack that stopped before the event loop: mostly libc (malloc,
    /// printf, strtod), built without frame pointers, called by Lua.
    Unwalked,
}

impl Part {
    pub const ALL: [Part; 14] = [
        Part::ScriptCommands,
        Part::CallGlue,
        Part::KeysArgv,
        Part::ReplyConversion,
        Part::LuaGc,
        Part::Lua,
        Part::EvalSetup,
        Part::AofPropagation,
        Part::AofFsync,
        Part::DirectCommands,
        Part::NetworkRead,
        Part::NetworkWrite,
        Part::EventLoop,
        Part::Unwalked,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Part::ScriptCommands => "script: its commands",
            Part::CallGlue => "script: redis.call glue",
            Part::KeysArgv => "script: KEYS/ARGV tables",
            Part::ReplyConversion => "script: reply conversion",
            Part::LuaGc => "script: Lua GC",
            Part::Lua => "script: Lua interpreter",
            Part::EvalSetup => "script: EVALSHA around it",
            Part::AofPropagation => "AOF: commands into its buffer",
            Part::AofFsync => "AOF: write and fsync",
            Part::DirectCommands => "clients' own commands, dispatch",
            Part::NetworkRead => "network: read and parse",
            Part::NetworkWrite => "network: write replies",
            Part::EventLoop => "event loop, timers",
            Part::Unwalked => "stack not walked (libc under Lua)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Part::ScriptCommands => "script_commands",
            Part::CallGlue => "call_glue",
            Part::KeysArgv => "keys_argv",
            Part::ReplyConversion => "reply_conversion",
            Part::LuaGc => "lua_gc",
            Part::Lua => "lua",
            Part::EvalSetup => "eval_setup",
            Part::AofPropagation => "aof_propagation",
            Part::AofFsync => "aof_fsync",
            Part::DirectCommands => "direct_commands",
            Part::NetworkRead => "network_read",
            Part::NetworkWrite => "network_write",
            Part::EventLoop => "event_loop",
            Part::Unwalked => "unwalked",
        }
    }
}

/// The part a stack (function names, leaf first) belongs to.
pub fn categorize(frames: &[&str]) -> Part {
    let has = |name: &str| frames.contains(&name);
    let at = |name: &str| frames.iter().position(|f| *f == name);
    if !has("aeMain") && !has("main") {
        return Part::Unwalked;
    }
    let (rules, default): (&[(&[&str], Part)], Part) = if has("luaCallFunction") {
        if let Some(script_call) = at("scriptCall") {
            // A `call` nearer the leaf than `scriptCall` runs the command.
            return if frames[..script_call].contains(&"call") {
                Part::ScriptCommands
            } else {
                Part::CallGlue
            };
        }
        (&INSIDE_SCRIPTS, Part::Lua)
    } else {
        (&OUTSIDE_SCRIPTS, Part::EventLoop)
    };
    // The first rule whose functions the stack holds.
    rules
        .iter()
        .find(|(names, _)| names.iter().any(|n| has(n)))
        .map_or(default, |(_, part)| *part)
}

/// The parts of a script call other than its commands, in the order they
/// are tried; the rest is the interpreter.
const INSIDE_SCRIPTS: [(&[&str], Part); 4] = [
    (&["luaRedisGenericCommand"], Part::CallGlue),
    (&["luaCreateArray"], Part::KeysArgv),
    (&["luaReplyToRedisReply"], Part::ReplyConversion),
    (
        &["luaC_step", "luaC_fullgc", "singlestep", "propagatemark", "sweeplist"],
        Part::LuaGc,
    ),
];

/// The parts of Redis's loop outside a script, in the order they are tried
/// (a command's AOF propagation runs under `processCommand`, so before it).
const OUTSIDE_SCRIPTS: [(&[&str], Part); 6] = [
    (&["evalGenericCommand"], Part::EvalSetup),
    (
        &["propagatePendingCommands", "propagateNow", "feedAppendOnlyFile"],
        Part::AofPropagation,
    ),
    (&["flushAppendOnlyFile", "fdatasync", "redis_fsync"], Part::AofFsync),
    (&["processCommand"], Part::DirectCommands),
    (&["readQueryFromClient"], Part::NetworkRead),
    (
        &["handleClientsWithPendingWrites", "writeToClient", "sendReplyToClient"],
        Part::NetworkWrite,
    ),
];

/// Redis's samples split by part.
#[derive(Debug, Clone, Default)]
pub struct RedisProfile {
    pub samples: u64,
    pub parts: HashMap<Part, u64>,
}

impl RedisProfile {
    /// Reads `perf script`'s text: each sample a header line, then its
    /// frames indented (`address symbol+offset (object)`, leaf first), then
    /// a blank line.
    pub fn parse(text: &str) -> RedisProfile {
        let mut profile = RedisProfile::default();
        let mut frames: Vec<&str> = Vec::new();
        let mut in_sample = false;
        let mut close = |frames: &mut Vec<&str>, in_sample: &mut bool| {
            if *in_sample {
                profile.samples += 1;
                *profile.parts.entry(categorize(frames)).or_default() += 1;
            }
            frames.clear();
            *in_sample = false;
        };
        for line in text.lines() {
            if line.trim().is_empty() {
                close(&mut frames, &mut in_sample);
            } else if line.starts_with([' ', '\t']) {
                let mut words = line.split_whitespace();
                let (_address, symbol) = (words.next(), words.next().unwrap_or("[unknown]"));
                frames.push(symbol.split('+').next().unwrap_or(symbol));
            } else {
                close(&mut frames, &mut in_sample);
                in_sample = true;
            }
        }
        close(&mut frames, &mut in_sample);
        profile
    }

    fn share(&self, part: Part) -> f64 {
        if self.samples == 0 {
            return 0.0;
        }
        self.parts.get(&part).copied().unwrap_or(0) as f64 / self.samples as f64
    }

    fn walked(&self) -> f64 {
        1.0 - self.share(Part::Unwalked)
    }

    /// The parts, largest first.
    fn ranked(&self) -> Vec<Part> {
        let mut parts: Vec<Part> = Part::ALL.iter().copied().filter(|p| self.share(*p) > 0.0).collect();
        parts.sort_by(|a, b| self.share(*b).total_cmp(&self.share(*a)));
        parts
    }

    /// `redis_us`: Redis's CPU per unit (`INFO cpu`), which each share splits.
    pub fn print_human(&self, unit: &str, redis_us: Option<f64>) {
        println!(
            "  redis CPU by part (perf record -g, {} samples; µs/{unit}: the share of INFO cpu's)",
            self.samples
        );
        for part in self.ranked() {
            let share = self.share(part);
            println!(
                "    {:<36}{:>5.1}%  {:>7}",
                part.label(),
                100.0 * share,
                fmt_value(redis_us.map(|us| us * share))
            );
        }
        if self.walked() < WALKED_ENOUGH {
            println!(
                "    note: only {:.0}% of the stacks reached Redis's event loop: profile a redis-server \
                 built with frame pointers and symbols (loadtest/README.md)",
                100.0 * self.walked()
            );
        }
    }

    pub fn to_json(&self, redis_us: Option<f64>) -> Value {
        let parts: serde_json::Map<String, Value> = Part::ALL
            .iter()
            .map(|p| {
                let share = self.share(*p);
                (
                    p.key().to_owned(),
                    json!({"share": share, "us": redis_us.map(|us| us * share)}),
                )
            })
            .collect();
        json!({"samples": self.samples, "walked": self.walked(), "parts": parts})
    }
}

/// `perf record` attached to Redis's processes for the phase.
pub struct PerfRecording {
    child: Child,
    file: PathBuf,
}

impl PerfRecording {
    pub fn start(pids: &[u32], file: &Path) -> Result<PerfRecording, String> {
        if pids.is_empty() {
            return Err("no local Redis process to record".into());
        }
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let child = Command::new("perf")
            .args(["record", "-g", "-F", FREQUENCY, "-p", &pids.join(","), "-o"])
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("perf record did not start: {e}"))?;
        Ok(PerfRecording {
            child,
            file: file.to_owned(),
        })
    }

    /// Stops the recording (SIGINT, as perf expects) and splits it.
    pub fn finish(mut self) -> Result<RedisProfile, String> {
        let pid = self.child.id().to_string();
        let told = Command::new("kill").args(["-INT", &pid]).status();
        // On every early return, Drop kills what is left of perf.
        if !matches!(told, Ok(s) if s.success()) {
            return Err("perf record could not be told to stop".into());
        }
        let deadline = Instant::now() + STOP_WITHIN;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                _ => return Err(format!("perf record did not stop within {STOP_WITHIN:?}")),
            }
        }
        let out = Command::new("perf")
            .args(["script", "-F", "comm,ip,sym", "-i"])
            .arg(&self.file)
            .stderr(Stdio::null())
            .output()
            .map_err(|e| format!("perf script did not run: {e}"))?;
        if !out.status.success() {
            return Err(format!("perf script failed on {}", self.file.display()));
        }
        Ok(RedisProfile::parse(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// A run that ends before the phase does (an error, a panic) leaves no
/// `perf record` behind.
impl Drop for PerfRecording {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOP: [&str; 8] = [
        "call",
        "processCommand",
        "processInputBuffer",
        "readQueryFromClient",
        "connSocketEventHandler",
        "aeProcessEvents.part.0",
        "aeMain",
        "main",
    ];

    fn stack(leaf: &[&'static str], root: &[&'static str]) -> Vec<&'static str> {
        leaf.iter().chain(root).copied().collect()
    }

    #[test]
    fn a_command_inside_a_script_is_told_from_the_glue_around_it() {
        let script = [
            "luaRedisGenericCommand",
            "luaV_execute",
            "luaCallFunction",
            "evalGenericCommand",
        ];
        let inner = stack(&["dictFind", "hmgetCommand", "call", "scriptCall"], &script);
        assert_eq!(categorize(&stack(&inner, &LOOP)), Part::ScriptCommands);
        let glue = stack(&["luaArgsToRedisArgv"], &script);
        assert_eq!(categorize(&stack(&glue, &LOOP)), Part::CallGlue);
        let checks = stack(&["scriptVerifyACL", "scriptCall"], &script);
        assert_eq!(categorize(&stack(&checks, &LOOP)), Part::CallGlue);
    }

    #[test]
    fn the_rest_of_a_script_and_of_the_loop() {
        let lua = ["luaV_execute", "luaCallFunction", "evalGenericCommand"];
        assert_eq!(categorize(&stack(&stack(&["str_format"], &lua), &LOOP)), Part::Lua);
        assert_eq!(
            categorize(&stack(&stack(&["sweeplist", "luaC_step"], &lua), &LOOP)),
            Part::LuaGc
        );
        let arrays = [
            "lua_pushlstring",
            "luaCreateArray",
            "luaCallFunction",
            "evalGenericCommand",
        ];
        assert_eq!(categorize(&stack(&arrays, &LOOP)), Part::KeysArgv);
        let fsync = [
            "fdatasync",
            "flushAppendOnlyFile",
            "beforeSleep",
            "aeProcessEvents.part.0",
            "aeMain",
            "main",
        ];
        assert_eq!(categorize(&fsync), Part::AofFsync);
        let feed = ["feedAppendOnlyFile", "propagatePendingCommands", "afterCommand", "call"];
        assert_eq!(categorize(&stack(&feed, &LOOP[1..])), Part::AofPropagation);
        assert_eq!(categorize(&["malloc"]), Part::Unwalked);
        assert_eq!(categorize(&stack(&["xreadCommand"], &LOOP)), Part::DirectCommands);
    }

    #[test]
    fn reads_perf_scripts_text() {
        let text = "redis-server \n\
                    \t    55d0c0a1b2c3 dictFind+0x33 (/usr/bin/redis-server)\n\
                    \t    55d0c0a1b2c4 call+0x10 (/usr/bin/redis-server)\n\
                    \t    55d0c0a1b2c5 processCommand+0x10 (/usr/bin/redis-server)\n\
                    \t    55d0c0a1b2c6 aeMain+0x10 (/usr/bin/redis-server)\n\
                    \n\
                    redis-server \n\
                    \t    7f00 malloc+0x2 (/usr/lib/libc.so.6)\n\
                    \n\
                    redis-server \n\
                    \t    7f00 [unknown] (/usr/lib/libc.so.6)\n";
        let p = RedisProfile::parse(text);
        assert_eq!(p.samples, 3);
        assert_eq!(p.parts.get(&Part::DirectCommands), Some(&1));
        assert_eq!(p.parts.get(&Part::Unwalked), Some(&2));
        assert!((p.walked() - 1.0 / 3.0).abs() < 1e-9);
        let json = p.to_json(Some(30.0));
        let us = json["parts"]["unwalked"]["us"].as_f64().unwrap_or_default();
        assert!((us - 20.0).abs() < 1e-9, "{json}");
    }
}
