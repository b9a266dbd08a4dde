//! Names of the scripts Redis runs, by the SHA1 an `EVALSHA` carries, and
//! the commands they call.
//!
//! The engine calls `lua/<name>.lua` by the SHA1 of what it loads: for a
//! batched script, `lua/batch/prologue.lua`, the file and
//! `lua/batch/epilogue.lua` joined (`batch_script!` in
//! `src/redis/executor.rs`); for the others (`outbox_ack`), the file alone.
//! Both digests of every file are named, so neither list has to be kept
//! here. The baseline server's scripts (`loadtest/lua/`) are loaded as they
//! are.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Default location of the engine's Lua scripts: `lua/` in the working
/// directory, else `lua/` at the workspace root (next to this crate).
pub fn default_lua_dir() -> PathBuf {
    let cwd = PathBuf::from("lua");
    if cwd.join("purchase.lua").is_file() {
        return cwd;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("lua")
}

/// The baseline server's scripts: this crate's `lua/`.
pub fn default_baseline_lua_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("lua")
}

/// What the scripts of some folders are called and call.
#[derive(Debug, Clone, Default)]
pub struct ScriptNames {
    by_sha: BTreeMap<String, String>,
    /// Commands a script calls (`redis.call('hset', ...)`), lower case.
    pub commands: BTreeSet<String>,
    /// Folders that could not be read, and why.
    pub problems: Vec<String>,
}

impl ScriptNames {
    /// Reads every `*.lua` of `dirs` (and `batch/` below each, for the
    /// batch form).
    pub fn load(dirs: &[PathBuf]) -> ScriptNames {
        let mut names = ScriptNames::default();
        for dir in dirs {
            let read = |name: &str| std::fs::read_to_string(dir.join("batch").join(name)).ok();
            let batch = read("prologue.lua").zip(read("epilogue.lua"));
            let entries = match std::fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) => {
                    names.problems.push(format!("{}: {e}", dir.display()));
                    continue;
                }
            };
            let mut files: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "lua"))
                .collect();
            files.sort();
            for path in files {
                let (Some(stem), Ok(body)) = (
                    path.file_stem().and_then(|s| s.to_str()),
                    std::fs::read_to_string(&path),
                ) else {
                    continue;
                };
                names.add(stem, &body, batch.as_ref().map(|(p, e)| (p.as_str(), e.as_str())));
            }
        }
        names
    }

    /// Names `body` (and its batch form) `name`, and notes what it calls.
    pub fn add(&mut self, name: &str, body: &str, batch: Option<(&str, &str)>) {
        self.by_sha.insert(fred::util::sha1_hash(body), name.to_owned());
        if let Some((prologue, epilogue)) = batch {
            let joined = format!("{prologue}{body}{epilogue}");
            self.by_sha.insert(fred::util::sha1_hash(&joined), name.to_owned());
            self.commands.extend(called_commands(prologue));
            self.commands.extend(called_commands(epilogue));
        }
        self.commands.extend(called_commands(body));
    }

    /// The script's file name, or `sha <first 8 hex digits>` for a script
    /// none of the folders holds.
    pub fn name_of(&self, sha: &str) -> String {
        let sha = sha.to_ascii_lowercase();
        match self.by_sha.get(&sha) {
            Some(name) => name.clone(),
            None => format!("sha {}", sha.get(..8).unwrap_or(&sha)),
        }
    }
}

/// The command names of `redis.call('x', ...)` and `redis.pcall("x", ...)`.
fn called_commands(lua: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for call in ["redis.call(", "redis.pcall("] {
        for (at, _) in lua.match_indices(call) {
            let rest = lua[at + call.len()..].trim_start();
            let Some(quote) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') else {
                continue;
            };
            if let Some(end) = rest[1..].find(quote) {
                out.insert(rest[1..1 + end].to_ascii_lowercase());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_file_and_its_batch_form() {
        let mut n = ScriptNames::default();
        n.add(
            "purchase",
            "return redis.call('HMGET', KEYS[1], 'a')\n",
            Some(("local x = 1\n", "return x\n")),
        );
        n.add(
            "outbox_ack",
            "redis.pcall( \"xack\", KEYS[1]) redis.call('XDEL', KEYS[1])",
            None,
        );
        let bare = fred::util::sha1_hash("return redis.call('HMGET', KEYS[1], 'a')\n");
        let joined = fred::util::sha1_hash("local x = 1\nreturn redis.call('HMGET', KEYS[1], 'a')\nreturn x\n");
        assert_eq!(n.name_of(&bare), "purchase");
        assert_eq!(n.name_of(&joined.to_ascii_uppercase()), "purchase");
        assert_eq!(n.name_of("0123456789abcdef"), "sha 01234567");
        assert_eq!(
            n.commands.iter().map(String::as_str).collect::<Vec<_>>(),
            ["hmget", "xack", "xdel"]
        );
    }

    #[test]
    fn names_the_engine_s_own_scripts() {
        // The engine's batched purchase script, as `batch_script!` joins it.
        let dir = default_lua_dir();
        let n = ScriptNames::load(&[dir.clone(), default_baseline_lua_dir()]);
        assert!(n.problems.is_empty(), "{:?}", n.problems);
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        let joined = format!(
            "{}{}{}",
            read(dir.join("batch/prologue.lua")),
            read(dir.join("purchase.lua")),
            read(dir.join("batch/epilogue.lua"))
        );
        assert_eq!(n.name_of(&fred::util::sha1_hash(&joined)), "purchase");
        let baseline = read(default_baseline_lua_dir().join("baseline_purchase.lua"));
        assert_eq!(n.name_of(&fred::util::sha1_hash(&baseline)), "baseline_purchase");
        assert!(n.commands.contains("xadd") && n.commands.contains("hset"));
    }
}
