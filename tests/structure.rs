//! Checks of the code's shape that the compiler cannot make, read from the
//! source tree (parsed with `syn`), so they fail the moment a change breaks
//! one:
//! - the layers import only downwards: a feature imports the infrastructure
//!   and the HTTP toolkit only (never another feature, never the wiring);
//!   the toolkit imports the infrastructure only; the infrastructure imports
//!   neither; nothing but the wiring imports the wiring (`main.rs` reaches it
//!   as `stampede::app`, from outside the library);
//! - the infrastructure and the toolkit never name a feature, in code,
//!   strings or comments;
//! - the README lists every route and every error code the code declares.
//!
//! The classes come from the tree: the wiring is `app`, the toolkit is
//! `server`, a feature is any other folder that implements `Feature`, and
//! every other module is infrastructure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::{self, Visit};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");

/// The top layer: start-up, the feature list, the operational routes.
const WIRING: &str = "app";
/// The HTTP toolkit.
const TOOLKIT: &str = "server";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Infrastructure,
    Toolkit,
    Feature,
    Wiring,
}

impl Class {
    /// Whether a module of this class may import a module of class `to`
    /// (its own module aside, which it always may).
    fn may_import(self, to: Class) -> bool {
        match self {
            Class::Wiring => true,
            Class::Feature => matches!(to, Class::Infrastructure | Class::Toolkit),
            Class::Toolkit => to == Class::Infrastructure,
            Class::Infrastructure => to == Class::Infrastructure,
        }
    }
}

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

fn parse(file: &Path) -> syn::File {
    let text = std::fs::read_to_string(file).expect("source reads");
    syn::parse_file(&text).unwrap_or_else(|e| panic!("{} does not parse: {e}", file.display()))
}

/// The library's top-level modules (`src/x.rs` or `src/x/`), each with its
/// files. `lib.rs` declares them and `main.rs` is the binary: neither is one.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(SRC).expect("src reads") {
        let path = entry.expect("entry").path();
        let Some(name) = path.file_stem().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if path.is_dir() {
            modules.insert(name, rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            modules.insert(name, vec![path]);
        }
    }
    modules
}

/// Finds `impl Feature for …` anywhere in a file.
#[derive(Default)]
struct FeatureImpls(usize);

impl<'ast> Visit<'ast> for FeatureImpls {
    fn visit_item_impl(&mut self, item: &'ast syn::ItemImpl) {
        if let Some((_, path, _)) = &item.trait_
            && path.segments.last().is_some_and(|s| s.ident == "Feature")
        {
            self.0 += 1;
        }
        visit::visit_item_impl(self, item);
    }
}

/// Every top-level module with its class.
fn classes() -> BTreeMap<String, Class> {
    modules()
        .into_iter()
        .map(|(name, files)| {
            let is_dir = Path::new(SRC).join(&name).is_dir();
            let class = if name == WIRING {
                Class::Wiring
            } else if name == TOOLKIT {
                Class::Toolkit
            } else if is_dir && implements_feature(&files) {
                Class::Feature
            } else {
                Class::Infrastructure
            };
            (name, class)
        })
        .collect()
}

fn implements_feature(files: &[PathBuf]) -> bool {
    files.iter().any(|file| {
        let mut found = FeatureImpls::default();
        found.visit_file(&parse(file));
        found.0 > 0
    })
}

fn features(classes: &BTreeMap<String, Class>) -> BTreeSet<String> {
    classes
        .iter()
        .filter(|(_, class)| **class == Class::Feature)
        .map(|(name, _)| name.clone())
        .collect()
}

/// The module path of a file: `src/sale/handlers.rs` is `sale::handlers`,
/// `src/sale/mod.rs` is `sale`, `src/config.rs` is `config`.
fn module_path(file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(SRC).expect("file under src");
    let mut path: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if path.last().is_some_and(|last| last == "mod") {
        path.pop();
    }
    path
}

/// The crate-level module path a path names, if it starts at `crate`,
/// `super` or `self` (resolved from `module`, the module the path is
/// written in); other roots (extern crates, names in scope) are not the
/// crate's modules by path.
fn resolve(module: &[String], segments: &[String]) -> Option<Vec<String>> {
    let (first, rest) = segments.split_first()?;
    let mut resolved: Vec<String> = match first.as_str() {
        "crate" => Vec::new(),
        "self" => module.to_vec(),
        "super" => module.get(..module.len().checked_sub(1)?)?.to_vec(),
        _ => return None,
    };
    let mut rest = rest.iter().peekable();
    while rest.peek().is_some_and(|s| *s == "super") {
        resolved.pop()?;
        rest.next();
    }
    resolved.extend(rest.cloned());
    Some(resolved)
}

/// Collects the crate modules a file reaches by path: every `use` tree
/// (groups nested and spread over lines included), every path in code and
/// types, and every `crate::…` written inside a macro call or an attribute
/// (`format!`, `#[error(…)]`, `#[utoipa::path(…)]`), which `syn` leaves as
/// tokens.
struct Imports {
    /// The module the visitor is in: the file's, plus inline `mod x { … }`.
    module: Vec<String>,
    /// Top-level module reached, and the path as written.
    found: BTreeSet<(String, String)>,
}

impl Imports {
    fn of_file(file: &Path) -> BTreeSet<(String, String)> {
        Self::of_source(module_path(file), &parse(file))
    }

    fn of_source(module: Vec<String>, ast: &syn::File) -> BTreeSet<(String, String)> {
        let mut imports = Imports {
            module,
            found: BTreeSet::new(),
        };
        imports.visit_file(ast);
        imports.found
    }

    fn record(&mut self, segments: &[String]) {
        if let Some(resolved) = resolve(&self.module, segments)
            && let Some(top) = resolved.first()
        {
            self.found.insert((top.clone(), segments.join("::")));
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.use_tree(prefix, &path.tree);
                prefix.pop();
            }
            syn::UseTree::Name(name) => {
                prefix.push(name.ident.to_string());
                self.record(prefix);
                prefix.pop();
            }
            syn::UseTree::Rename(rename) => {
                prefix.push(rename.ident.to_string());
                self.record(prefix);
                prefix.pop();
            }
            syn::UseTree::Glob(_) => {
                // `use crate::x::*` reaches `x`; `use super::*` the parent.
                prefix.push("*".into());
                self.record(prefix);
                prefix.pop();
            }
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }

    /// `crate :: a :: b` (or `super`, `self`) sequences in raw tokens.
    fn tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            if let TokenTree::Group(group) = &tokens[i] {
                self.tokens(group.stream());
                i += 1;
                continue;
            }
            let root = match &tokens[i] {
                TokenTree::Ident(ident) if ["crate", "super", "self"].contains(&ident.to_string().as_str()) => {
                    ident.to_string()
                }
                _ => {
                    i += 1;
                    continue;
                }
            };
            let mut segments = vec![root];
            let mut j = i + 1;
            while let (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)), Some(TokenTree::Ident(next))) =
                (tokens.get(j), tokens.get(j + 1), tokens.get(j + 2))
            {
                if a.as_char() != ':' || b.as_char() != ':' {
                    break;
                }
                segments.push(next.to_string());
                j += 3;
            }
            if segments.len() > 1 {
                self.record(&segments);
            }
            i = j.max(i + 1);
        }
    }
}

impl<'ast> Visit<'ast> for Imports {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if item.content.is_some() {
            self.module.push(item.ident.to_string());
            visit::visit_item_mod(self, item);
            self.module.pop();
        } else {
            visit::visit_item_mod(self, item);
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.segments.len() > 1 {
            let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
            self.record(&segments);
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.tokens(mac.tokens.clone());
        visit::visit_macro(self, mac);
    }

    fn visit_meta_list(&mut self, list: &'ast syn::MetaList) {
        self.tokens(list.tokens.clone());
        visit::visit_meta_list(self, list);
    }
}

#[test]
fn layers_import_only_downwards() {
    let classes = classes();
    for class in [Class::Infrastructure, Class::Toolkit, Class::Feature, Class::Wiring] {
        assert!(
            classes.values().any(|c| *c == class),
            "no {class:?} module found in src/, is the classification broken? {classes:?}"
        );
    }
    let modules = modules();
    let mut seen = 0;
    let mut violations = Vec::new();
    for (module, files) in &modules {
        let from = classes[module];
        for file in files {
            for (top, written) in Imports::of_file(file) {
                seen += 1;
                if top == *module || top == "*" {
                    continue;
                }
                let Some(&to) = classes.get(&top) else {
                    continue; // an item of the crate root, not a module
                };
                if !from.may_import(to) {
                    violations.push(format!(
                        "{} ({from:?}) reaches `{written}` ({to:?} `{top}`)",
                        file.strip_prefix(SRC).unwrap_or(file).display()
                    ));
                }
            }
        }
    }
    assert!(seen > 200, "only {seen} crate paths found: is the scan broken?");
    assert!(
        violations.is_empty(),
        "layer rule broken (features import infrastructure and the toolkit only, never another feature or \
         the wiring; the toolkit imports infrastructure only; infrastructure imports neither):\n{}",
        violations.join("\n")
    );
}

/// The words of a text: runs of letters and digits, split again where an
/// identifier changes case (`SaleConfig`) or at `_` (`sale_id`,
/// `WALLET_SSE_INBOX`), lowercased.
fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    for run in text.split(|c: char| !c.is_ascii_alphanumeric()) {
        let chars: Vec<char> = run.chars().collect();
        let mut start = 0;
        for i in 1..chars.len() {
            let (prev, here) = (chars[i - 1], chars[i]);
            let next_is_lower = chars.get(i + 1).is_some_and(|c| c.is_ascii_lowercase());
            // `fooBar` and `HTTPServer`: a capital after a lowercase letter,
            // or the last capital of a run when a lowercase letter follows.
            if (prev.is_ascii_lowercase() || prev.is_ascii_digit()) && here.is_ascii_uppercase()
                || prev.is_ascii_uppercase() && here.is_ascii_uppercase() && next_is_lower
            {
                words.push(chars[start..i].iter().collect::<String>().to_ascii_lowercase());
                start = i;
            }
        }
        if start < chars.len() {
            words.push(chars[start..].iter().collect::<String>().to_ascii_lowercase());
        }
    }
    words
}

/// Each line of `text` that names one of `features`, as `line: word`.
fn feature_names(text: &str, features: &BTreeSet<String>) -> Vec<String> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for word in words(line) {
            if features.contains(&word) {
                found.push(format!("{}: `{word}` in {}", n + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn infrastructure_and_toolkit_name_no_feature() {
    let classes = classes();
    let features = features(&classes);
    assert!(features.len() >= 2, "features found: {features:?}");
    let mut scanned = 0;
    let mut violations = Vec::new();
    for (module, files) in modules() {
        if !matches!(classes[&module], Class::Infrastructure | Class::Toolkit) {
            continue;
        }
        for file in files {
            scanned += 1;
            let text = std::fs::read_to_string(&file).expect("source reads");
            for hit in feature_names(&text, &features) {
                violations.push(format!("{}:{hit}", file.strip_prefix(SRC).unwrap_or(&file).display()));
            }
        }
    }
    assert!(scanned >= 10, "only {scanned} files scanned: is the scan broken?");
    assert!(
        violations.is_empty(),
        "the infrastructure and the HTTP toolkit must not name a feature ({features:?}), not even in a \
         comment or a test: say what the code does in general terms:\n{}",
        violations.join("\n")
    );
}

/// The scanners above must see what they are for; a scanner that saw
/// nothing would let every check pass.
#[test]
fn the_scanners_see_what_they_look_for() {
    let source: syn::File = syn::parse_str(
        r#"
        use crate::{
            redis::{lua::LuaScript, keyspace::Shard},
            wallet::WalletError,
        };
        use super::super::app::App;
        #[derive(thiserror::Error)]
        enum E {
            #[error("{} busy", crate::limits::UPLOADS_MAX)]
            Busy,
        }
        fn f() -> usize {
            let _ = format!("{}", crate::sale::limits::ITEMS);
            crate::orders::Orders::count()
        }
        mod tests {
            use super::*;
            use super::super::super::settlement::Job;
        }
        "#,
    )
    .expect("parses");
    let found: BTreeSet<String> = Imports::of_source(vec!["x".into(), "y".into()], &source)
        .into_iter()
        .map(|(top, _)| top)
        .collect();
    let expected: BTreeSet<String> = ["redis", "wallet", "app", "limits", "sale", "orders", "x", "settlement"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(found, expected);

    let features: BTreeSet<String> = ["sale", "wallet", "orders"].into_iter().map(str::to_owned).collect();
    assert_eq!(
        words("SaleConfig sale_id WALLET_SSE_INBOX HTTPServer wholesale sales, Orders'"),
        [
            "sale",
            "config",
            "sale",
            "id",
            "wallet",
            "sse",
            "inbox",
            "http",
            "server",
            "wholesale",
            "sales",
            "orders"
        ]
    );
    let hits = feature_names(
        "// a flash sale's burst\nlet x = SaleConfig;\nlet wholesale = 1;\n",
        &features,
    );
    assert_eq!(hits.len(), 2, "{hits:?}");
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
