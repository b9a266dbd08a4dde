//! The load driver's shape, checked on its source (like the engine's
//! tests/structure.rs):
//!
//! - no import cycle between its files: a module's `use` lines and the
//!   `crate::`/`super::` paths in its code are its edges; a file that uses
//!   an item of its parent module while the parent uses it is a cycle;
//! - `common/` names no scenario and not the command line;
//! - a scenario never reaches into another scenario;
//! - every scenario folder has the same files: `args.rs`, `mod.rs`,
//!   `checks.rs`, `report.rs`;
//! - nothing parses flags by hand: clap reads the command line, so nothing
//!   else reads `std::env::args`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `loadtest/src`, without the baseline server (a binary of its own).
fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "bin") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `scenarios/sale/mod.rs` -> `crate::scenarios::sale`; `common/http.rs` ->
/// `crate::common::http`; `main.rs` -> `crate`.
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).expect("under src/");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "main")) {
        parts.pop();
    }
    std::iter::once("crate".to_owned())
        .chain(parts)
        .collect::<Vec<_>>()
        .join("::")
}

/// The code of a file without its comments, string literals and test module.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                // Raw strings are rare here and hold no paths; a plain one
                // ends at an unescaped quote.
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap_or(tree).trim().to_owned()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .filter(|i| !i.trim().is_empty())
        .flat_map(|i| expand(&format!("{prefix}{}", i.trim())))
        .collect()
}

/// Every path a file names: its `use` trees, and `crate::`/`super::` paths
/// written in its code.
fn paths_in(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        let after = &rest[at + 4..];
        if before.is_none_or(|c| !c.is_alphanumeric() && c != '_')
            && let Some(end) = after.find(';')
        {
            out.extend(expand(&after[..end].replace(['\n', ' '], "")));
        }
        rest = after;
    }
    for root in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(root) {
            let before = rest[..at].chars().last();
            let path: String = rest[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            if before.is_none_or(|c| !c.is_alphanumeric() && c != '_' && c != ':') {
                out.push(path.trim_end_matches(':').to_owned());
            }
            rest = &rest[at + root.len()..];
        }
    }
    out
}

/// Child modules a file declares (`mod x;`, `pub mod x;`).
fn children_in(code: &str) -> BTreeSet<String> {
    code.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
        })
        .collect()
}

/// A path as an absolute module path, or `None` for another crate.
fn resolve(module: &str, children: &BTreeSet<String>, path: &str) -> Option<String> {
    let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<&str> = module.split("::").collect();
    match segments.first().copied()? {
        "crate" => base.clear(),
        "self" => {
            segments.remove(0);
        }
        "super" => {
            while segments.first() == Some(&"super") {
                segments.remove(0);
                base.pop();
            }
        }
        first if children.contains(first) => {}
        _ => return None,
    }
    base.extend(segments);
    Some(base.join("::"))
}

/// Each module and the modules it imports from.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let modules: BTreeMap<String, String> = files
        .iter()
        .map(|f| {
            (
                module_of(f),
                code_of(&std::fs::read_to_string(f).expect("readable source")),
            )
        })
        .collect();
    let mut edges = BTreeMap::new();
    for (module, code) in &modules {
        let children = children_in(code);
        let mut targets = BTreeSet::new();
        for path in paths_in(code) {
            let Some(mut target) = resolve(module, &children, &path) else {
                continue;
            };
            // The module a path lands in: its longest prefix that is a file.
            while !modules.contains_key(&target) {
                match target.rfind("::") {
                    Some(at) => target.truncate(at),
                    None => break,
                }
            }
            if modules.contains_key(&target) && target != *module {
                targets.insert(target);
            }
        }
        edges.insert(module.clone(), targets);
    }
    edges
}

#[test]
fn no_import_cycle() {
    let edges = graph();
    assert!(edges.len() > 30, "the scan found too few modules: {:?}", edges.keys());
    // Depth-first search; a module met again on the current path closes a cycle.
    fn visit<'a>(
        m: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|p| *p == m) {
            cycles.push(format!("{} -> {m}", path[at..].join(" -> ")));
            return;
        }
        if !done.insert(m) {
            return;
        }
        path.push(m);
        for t in edges.get(m).into_iter().flatten() {
            visit(t, edges, path, done, cycles);
        }
        path.pop();
    }
    let mut cycles = Vec::new();
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        visit(m, &edges, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn common_and_scenarios_stay_apart() {
    let mut wrong = Vec::new();
    for (module, targets) in graph() {
        for t in targets {
            let scenario_of = |m: &str| {
                m.strip_prefix("crate::scenarios::")
                    .map(|r| r.split("::").next().unwrap_or(r).to_owned())
            };
            if module.starts_with("crate::common") && (t.starts_with("crate::scenarios") || t == "crate::cli") {
                wrong.push(format!("{module} (common) uses {t}"));
            }
            if let (Some(from), Some(to)) = (scenario_of(&module), scenario_of(&t))
                && from != to
            {
                wrong.push(format!("{module} (scenario {from}) uses {t} (scenario {to})"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_scenario_has_the_same_shape() {
    let dir = src().join("scenarios");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("scenarios/") {
        let path = entry.expect("an entry").path();
        if !path.is_dir() {
            continue;
        }
        for file in ["args.rs", "mod.rs", "checks.rs", "report.rs"] {
            if !path.join(file).is_file() {
                missing.push(format!("{}/{file}", path.display()));
            }
        }
    }
    assert!(missing.is_empty(), "missing: {missing:?}");
}

#[test]
fn no_flag_is_parsed_by_hand() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.push(src().join("bin").join("baseline-server.rs"));
    let mut found = Vec::new();
    for f in files {
        let code = code_of(&std::fs::read_to_string(&f).expect("readable source"));
        for needle in ["env::args", "args_os", "fn parse(argv"] {
            if code.contains(needle) {
                found.push(format!("{}: {needle}", f.display()));
            }
        }
    }
    assert!(found.is_empty(), "clap reads the command line: {found:?}");
}

#[test]
fn the_scanner_sees_what_it_should() {
    assert_eq!(
        expand("super::{a, b::{c, d as e}}"),
        ["super::a", "super::b::c", "super::b::d"]
    );
    let code = code_of("use crate::x::Y; // use crate::z;\nlet s = \"crate::w\"; super::v::f();\n");
    assert_eq!(paths_in(&code), ["crate::x::Y", "crate::x::Y", "super::v::f"]);
    let children = BTreeSet::from(["args".to_owned()]);
    assert_eq!(
        resolve("crate::scenarios::sale", &children, "args::Args").as_deref(),
        Some("crate::scenarios::sale::args::Args")
    );
    assert_eq!(
        resolve("crate::scenarios::sale::checks", &BTreeSet::new(), "super::X").as_deref(),
        Some("crate::scenarios::sale::X")
    );
    assert_eq!(resolve("crate", &BTreeSet::new(), "serde_json::Value"), None);
}
