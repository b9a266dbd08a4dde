//! Checks of the code's shape that the compiler cannot make:
//! - the layers import only downwards: no feature imports the wiring or
//!   another feature, the HTTP toolkit and the infrastructure name no
//!   feature;
//! - the README lists every route and every error code the code declares.
//!
//! They read the source tree, so they fail in CI the moment a change breaks
//! either rule.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");

/// The top layer: it may import anything.
const WIRING: &[&str] = &["app", "ops", "live", "main"];
/// The HTTP toolkit.
const TOOLKIT: &str = "server";

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("source folder reads") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Top-level modules of the crate: `src/x.rs` or `src/x/`.
fn modules() -> Vec<(String, bool)> {
    let mut modules: Vec<(String, bool)> = std::fs::read_dir(SRC)
        .expect("src reads")
        .map(|e| e.expect("entry").path())
        .filter_map(|p| {
            let is_dir = p.is_dir();
            let name = p.file_stem()?.to_str()?.to_owned();
            (is_dir || p.extension().is_some_and(|e| e == "rs")).then_some((name, is_dir))
        })
        .filter(|(name, _)| name != "lib")
        .collect();
    modules.sort();
    modules
}

/// A feature is a folder that implements the `Feature` contract.
fn features() -> BTreeSet<String> {
    modules()
        .into_iter()
        .filter(|(name, is_dir)| *is_dir && name != TOOLKIT)
        .filter(|(name, _)| {
            rust_files(&Path::new(SRC).join(name)).iter().any(|f| {
                std::fs::read_to_string(f)
                    .unwrap_or_default()
                    .contains("impl Feature for")
            })
        })
        .map(|(name, _)| name)
        .collect()
}

/// `crate::<module>` paths a file names, outside comments.
fn crate_imports(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).expect("source reads");
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
        // `use crate::{a, b}` groups.
        if let Some(at) = code.find("crate::{") {
            let group = &code[at + "crate::{".len()..];
            for part in group.split([',', '}']) {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
    }
    found
}

#[test]
fn layers_import_only_downwards() {
    let features = features();
    assert!(
        features.contains("sale") && features.contains("ingest"),
        "features found: {features:?}"
    );
    let mut violations = Vec::new();
    for (module, is_dir) in modules() {
        if WIRING.contains(&module.as_str()) {
            continue;
        }
        let files = if is_dir {
            rust_files(&Path::new(SRC).join(&module))
        } else {
            vec![Path::new(SRC).join(format!("{module}.rs"))]
        };
        let is_feature = features.contains(&module);
        let is_toolkit = module == TOOLKIT;
        for file in files {
            for import in crate_imports(&file) {
                let forbidden = WIRING.contains(&import.as_str())
                    || (features.contains(&import) && import != module)
                    || (!is_feature && !is_toolkit && import == TOOLKIT);
                if forbidden {
                    violations.push(format!("{} imports crate::{import}", file.display()));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layer rule broken (features import infrastructure and the toolkit only; \
         the toolkit and infrastructure name no feature):\n{}",
        violations.join("\n")
    );
}

/// Every `ErrorCode::new(StatusCode::X, "CODE")` in the source.
fn error_codes() -> BTreeSet<String> {
    let mut codes = BTreeSet::new();
    for file in rust_files(Path::new(SRC)) {
        let text = std::fs::read_to_string(&file).expect("source reads");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("ErrorCode::new(") {
            rest = &rest[at + "ErrorCode::new(".len()..];
            let call: String = rest.chars().take_while(|c| *c != ')').collect();
            if let Some(code) = call.split('"').nth(1) {
                codes.insert(code.to_owned());
            }
        }
    }
    codes
}

#[test]
fn the_readme_lists_every_error_code() {
    let readme = std::fs::read_to_string(README).expect("README reads");
    let codes = error_codes();
    assert!(codes.len() > 30, "too few codes found, is the scan broken? {codes:?}");
    let missing: Vec<_> = codes
        .iter()
        .filter(|code| !readme.contains(&format!("`{code}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md does not list these error codes: {missing:?}"
    );
}

/// Every `Route::new(Method::X, "/path"` in the source.
fn routes() -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for file in rust_files(Path::new(SRC)) {
        let text = std::fs::read_to_string(&file).expect("source reads");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("Route::new(") {
            rest = &rest[at + "Route::new(".len()..];
            let head: String = rest.chars().take(300).collect();
            let method = head
                .split("Method::")
                .nth(1)
                .map(|m| m.chars().take_while(|c| c.is_ascii_uppercase()).collect::<String>());
            let path = head.split('"').nth(1).map(str::to_owned);
            if let (Some(method), Some(path)) = (method, path) {
                routes.insert((method, path));
            }
        }
    }
    routes
}

#[test]
fn the_readme_lists_every_route() {
    let readme = std::fs::read_to_string(README).expect("README reads");
    let routes = routes();
    assert!(
        routes.len() >= 9,
        "too few routes found, is the scan broken? {routes:?}"
    );
    let missing: Vec<_> = routes
        .iter()
        .filter(|(method, path)| !readme.contains(&format!("| {method} | `{path}")))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md's API table has no row `| METHOD | `PATH…` for: {missing:?}"
    );
}
