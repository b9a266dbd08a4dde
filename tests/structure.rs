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
//! - the guides (README.md and docs/*.md) match the code both ways: every
//!   route, error code and setting the code declares is documented (a
//!   feature's in its own guide, `docs/<feature>.md`; a setting once), and
//!   every documented route and error code exists in the code.
//!
//! The classes come from the tree: the wiring is `app`, the toolkit is
//! `server`, a feature is any other folder that implements `Feature`, and
//! every other module is infrastructure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::{self, Visit};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

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

// The guides (README.md and docs/*.md) against the code, both ways. The
// guides are read as Markdown tables, by their headers:
// - `| method | path | …`: a route per row, `| GET | `/live` | …`;
// - `| status | code | …`: error codes per row, `| 400 | `A`, `B` | …`;
// - `| variable | default | …`: a setting per row, `| `STAMPEDE_X` | …`.
// A row of such a table that is not written that way fails the check (it
// would otherwise be skipped in silence). A route, code or setting declared
// in a feature's folder belongs in that feature's guide, `docs/<feature>.md`;
// the shared ones (toolkit, wiring, infrastructure) in any guide.

/// `StatusCode` constants the error codes are declared with, by name.
const STATUSES: &[(&str, u16)] = &[
    ("BAD_REQUEST", 400),
    ("UNAUTHORIZED", 401),
    ("FORBIDDEN", 403),
    ("NOT_FOUND", 404),
    ("METHOD_NOT_ALLOWED", 405),
    ("REQUEST_TIMEOUT", 408),
    ("CONFLICT", 409),
    ("GONE", 410),
    ("PAYLOAD_TOO_LARGE", 413),
    ("URI_TOO_LONG", 414),
    ("UNSUPPORTED_MEDIA_TYPE", 415),
    ("UNPROCESSABLE_ENTITY", 422),
    ("TOO_MANY_REQUESTS", 429),
    ("INTERNAL_SERVER_ERROR", 500),
    ("SERVICE_UNAVAILABLE", 503),
];

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// Variables read by a library rather than by our code: documented, never
/// found in the source.
const READ_BY_LIBRARIES: &[&str] = &[
    // tracing_subscriber's `EnvFilter::try_from_default_env`.
    "RUST_LOG",
    // mimalloc's options, read by the allocator when the process starts.
    "MIMALLOC_ALLOW_THP",
];

/// What the source declares, each item with the top-level module that
/// declares it: every `ErrorCode::new(StatusCode::X, "CODE")`, every
/// `Route::new(Method::X, "/path", …)` and every setting read through the
/// `env` of `crate::config::Env` (`env.number("STAMPEDE_X", …)`). Calls
/// inside macro calls (`vec![Route::new(…), …]`) are read too; comments
/// are not code, so a code named in a comment is not a declaration.
#[derive(Default)]
struct Declared {
    module: String,
    file: String,
    codes: BTreeSet<(String, u16, String)>,
    routes: BTreeSet<(String, String, String)>,
    settings: BTreeSet<(String, String)>,
    /// Declarations not in the form above, which the scan cannot read.
    unreadable: Vec<String>,
}

impl Declared {
    fn of_tree() -> Self {
        let mut declared = Declared::default();
        for file in rust_files(Path::new(SRC)) {
            declared.module = module_path(&file).first().cloned().unwrap_or_default();
            declared.file = file.strip_prefix(SRC).expect("under src").display().to_string();
            declared.visit_file(&parse(&file));
        }
        declared
    }

    fn of_source(module: &str, source: &str) -> Self {
        let mut declared = Declared {
            module: module.into(),
            file: format!("{module}.rs"),
            ..Declared::default()
        };
        declared.visit_file(&syn::parse_file(source).expect("parses"));
        declared
    }
}

/// The last segment of a path expression (`StatusCode::GONE`, `S::GONE`,
/// `Method::GET`), or of a path's named function (`ErrorCode::new`).
fn last_ident(expr: &syn::Expr) -> Option<String> {
    match expr {
        syn::Expr::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

fn path_ends_with(expr: &syn::Expr, tail: [&str; 2]) -> bool {
    let syn::Expr::Path(p) = expr else {
        return false;
    };
    let segments: Vec<String> = p.path.segments.iter().map(|s| s.ident.to_string()).collect();
    segments.len() >= 2 && segments[segments.len() - 2..] == tail
}

fn string_literal(expr: &syn::Expr) -> Option<String> {
    match expr {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s), ..
        }) => Some(s.value()),
        _ => None,
    }
}

fn is_variable_name(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_uppercase())
        && text.contains('_')
        && text
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

impl<'ast> Visit<'ast> for Declared {
    fn visit_expr_call(&mut self, call: &'ast syn::ExprCall) {
        let args: Vec<&syn::Expr> = call.args.iter().collect();
        if path_ends_with(&call.func, ["ErrorCode", "new"]) {
            let status = args
                .first()
                .and_then(|e| last_ident(e))
                .and_then(|name| STATUSES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s));
            match (status, args.get(1).and_then(|e| string_literal(e))) {
                (Some(status), Some(code)) => {
                    self.codes.insert((self.module.clone(), status, code));
                }
                _ => self.unreadable.push(format!(
                    "{}: an ErrorCode::new(…) not written ErrorCode::new(StatusCode::X, \"CODE\") with X in STATUSES",
                    self.file
                )),
            }
        }
        if path_ends_with(&call.func, ["Route", "new"]) {
            let method = args
                .first()
                .and_then(|e| last_ident(e))
                .filter(|m| METHODS.contains(&m.as_str()));
            match (method, args.get(1).and_then(|e| string_literal(e))) {
                (Some(method), Some(path)) => {
                    self.routes.insert((self.module.clone(), method, path));
                }
                _ => self.unreadable.push(format!(
                    "{}: a Route::new(…) not written Route::new(Method::X, \"/path\", …)",
                    self.file
                )),
            }
        }
        visit::visit_expr_call(self, call);
    }

    fn visit_expr_method_call(&mut self, call: &'ast syn::ExprMethodCall) {
        let on_env = last_ident(&call.receiver).is_some_and(|r| r == "env");
        if on_env
            && let Some(var) = call.args.first().and_then(string_literal)
            && is_variable_name(&var)
        {
            self.settings.insert((self.module.clone(), var));
        }
        visit::visit_expr_method_call(self, call);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        use syn::parse::Parser;
        let exprs = syn::punctuated::Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated;
        if let Ok(exprs) = exprs.parse2(mac.tokens.clone()) {
            for expr in &exprs {
                self.visit_expr(expr);
            }
        }
        visit::visit_macro(self, mac);
    }
}

/// The guides: `README.md` and every `docs/*.md`, by path from the root.
fn guides() -> BTreeMap<String, String> {
    let mut guides = BTreeMap::new();
    guides.insert(
        "README.md".to_owned(),
        std::fs::read_to_string(Path::new(ROOT).join("README.md")).expect("README.md reads"),
    );
    for entry in std::fs::read_dir(Path::new(ROOT).join("docs")).expect("docs/ reads") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            let name = format!("docs/{}", path.file_name().expect("name").to_string_lossy());
            guides.insert(name, std::fs::read_to_string(&path).expect("guide reads"));
        }
    }
    guides
}

/// The cells of a Markdown table row, trimmed; `None` for any other line.
fn cells(line: &str) -> Option<Vec<String>> {
    let inner = line.trim().strip_prefix('|')?.strip_suffix('|')?;
    Some(inner.split('|').map(|c| c.trim().to_owned()).collect())
}

/// A Markdown table: its header's cells (lower case) and its rows' cells,
/// each with its line number.
struct Table {
    header: Vec<String>,
    rows: Vec<(usize, Vec<String>)>,
}

/// Every table of a Markdown text, outside fenced code blocks.
fn tables(text: &str) -> Vec<Table> {
    let mut tables = Vec::new();
    let mut current: Option<Table> = None;
    let mut fenced = false;
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        let row = if fenced { None } else { cells(line) };
        match (row, current.as_mut()) {
            (Some(row), Some(table)) => {
                let separator = row
                    .iter()
                    .all(|c| !c.is_empty() && c.trim_matches(':').chars().all(|ch| ch == '-'));
                if !separator {
                    table.rows.push((index + 1, row));
                }
            }
            (Some(row), None) => {
                current = Some(Table {
                    header: row.iter().map(|c| c.to_lowercase()).collect(),
                    rows: Vec::new(),
                })
            }
            (None, _) => tables.extend(current.take()),
        }
    }
    tables.extend(current);
    tables
}

/// The text between backticks, if the cell is exactly one code span.
fn code_span(cell: &str) -> Option<&str> {
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.is_empty() && !inner.contains('`')).then_some(inner)
}

fn is_code_name(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_uppercase())
        && text
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// What the guides document, each item with the guides (`file:line`) that
/// document it.
#[derive(Default)]
struct Documented {
    codes: BTreeMap<(u16, String), Vec<String>>,
    routes: BTreeMap<(String, String), Vec<String>>,
    settings: BTreeMap<String, Vec<String>>,
    /// Rows of a route, error or settings table that are not written as
    /// the check reads them.
    unreadable: Vec<String>,
}

impl Documented {
    fn of(guides: &BTreeMap<String, String>) -> Self {
        let mut documented = Documented::default();
        for (file, text) in guides {
            for table in tables(text) {
                let kind = match table.header.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                    ["method", "path", ..] => "route",
                    ["status", "code", ..] => "code",
                    ["variable", ..] => "setting",
                    _ => continue,
                };
                for (line, row) in &table.rows {
                    let at = format!("{file}:{line}");
                    let first = row.first().map(String::as_str).unwrap_or_default();
                    let second = row.get(1).map(String::as_str).unwrap_or_default();
                    let read = match kind {
                        "route" => documented.route(first, second, &at),
                        "code" => documented.code(first, second, &at),
                        _ => documented.setting(first, &at),
                    };
                    if !read {
                        documented
                            .unreadable
                            .push(format!("{at}: a {kind} row the check cannot read: {row:?}"));
                    }
                }
            }
        }
        documented
    }

    /// `| GET | `/path` |`: one method, one path, nothing else in the cell.
    fn route(&mut self, method: &str, path: &str, at: &str) -> bool {
        let Some(path) = code_span(path) else { return false };
        if !METHODS.contains(&method) || !path.starts_with('/') || path.contains(['?', ' ']) {
            return false;
        }
        self.routes
            .entry((method.to_owned(), path.to_owned()))
            .or_default()
            .push(at.to_owned());
        true
    }

    /// `| 400 | `A`, `B` |`: one status, codes separated by commas.
    fn code(&mut self, status: &str, codes: &str, at: &str) -> bool {
        let Some(status) = status.parse::<u16>().ok().filter(|s| (100..600).contains(s)) else {
            return false;
        };
        let names: Option<Vec<&str>> = codes
            .split(", ")
            .map(|c| code_span(c).filter(|name| is_code_name(name)))
            .collect();
        let Some(names) = names else { return false };
        for name in names {
            self.codes
                .entry((status, name.to_owned()))
                .or_default()
                .push(at.to_owned());
        }
        true
    }

    /// `| `STAMPEDE_X` | default | meaning |`.
    fn setting(&mut self, var: &str, at: &str) -> bool {
        let Some(var) = code_span(var).filter(|v| is_code_name(v)) else {
            return false;
        };
        self.settings.entry(var.to_owned()).or_default().push(at.to_owned());
        true
    }
}

/// The guide a declaration belongs in: its feature's, or any for the
/// shared ones.
fn guide_of(module: &str, features: &BTreeSet<String>) -> Option<String> {
    features.contains(module).then(|| format!("docs/{module}.md"))
}

fn documented_in(places: Option<&Vec<String>>, guide: &Option<String>) -> bool {
    places.is_some_and(|places| match guide {
        Some(guide) => places.iter().any(|at| at.starts_with(&format!("{guide}:"))),
        None => !places.is_empty(),
    })
}

#[test]
fn the_guides_document_every_route_and_error_code() {
    let declared = Declared::of_tree();
    assert!(declared.unreadable.is_empty(), "{:#?}", declared.unreadable);
    assert!(
        declared.codes.len() > 30,
        "too few codes found, is the scan broken? {:?}",
        declared.codes
    );
    assert!(
        declared.routes.len() >= 9,
        "too few routes found, is the scan broken? {:?}",
        declared.routes
    );
    let features = features(&classes());
    let documented = Documented::of(&guides());
    let mut missing = Vec::new();
    for (module, status, code) in &declared.codes {
        let guide = guide_of(module, &features);
        if !documented_in(documented.codes.get(&(*status, code.clone())), &guide) {
            let place = guide.unwrap_or_else(|| "any guide".into());
            missing.push(format!(
                "{status} `{code}` (src/{module}): no `| {status} | `{code}` |` row in {place}"
            ));
        }
    }
    for (module, method, path) in &declared.routes {
        let guide = guide_of(module, &features);
        if !documented_in(documented.routes.get(&(method.clone(), path.clone())), &guide) {
            let place = guide.unwrap_or_else(|| "any guide".into());
            missing.push(format!(
                "{method} {path} (src/{module}): no `| {method} | `{path}` |` row in {place}"
            ));
        }
    }
    assert!(missing.is_empty(), "undocumented:\n{}", missing.join("\n"));
}

#[test]
fn every_documented_route_and_error_code_exists() {
    let declared = Declared::of_tree();
    let codes: BTreeSet<(u16, String)> = declared.codes.iter().map(|(_, s, c)| (*s, c.clone())).collect();
    let routes: BTreeSet<(String, String)> = declared.routes.iter().map(|(_, m, p)| (m.clone(), p.clone())).collect();
    let documented = Documented::of(&guides());
    assert!(
        documented.codes.len() > 30 && documented.routes.len() >= 9,
        "too few rows read"
    );
    let mut stale = documented.unreadable.clone();
    for ((status, code), places) in &documented.codes {
        if !codes.contains(&(*status, code.clone())) {
            stale.push(format!("{places:?}: {status} `{code}` is not declared by the code"));
        }
    }
    for ((method, path), places) in &documented.routes {
        if !routes.contains(&(method.clone(), path.clone())) {
            stale.push(format!("{places:?}: {method} {path} is not a route of the code"));
        }
    }
    assert!(
        stale.is_empty(),
        "documented but not in the code:\n{}",
        stale.join("\n")
    );
}

#[test]
fn every_setting_is_documented_once() {
    let declared = Declared::of_tree();
    assert!(
        declared.settings.len() >= 20,
        "too few settings found: {:?}",
        declared.settings
    );
    let features = features(&classes());
    let documented = Documented::of(&guides());
    let mut wrong = Vec::new();
    for (module, var) in &declared.settings {
        let guide = guide_of(module, &features);
        if !documented_in(documented.settings.get(var), &guide) {
            let place = guide.unwrap_or_else(|| "any guide".into());
            wrong.push(format!(
                "{var} (src/{module}): no `| `{var}` |` row of a settings table in {place}"
            ));
        }
    }
    let read: BTreeSet<&str> = declared.settings.iter().map(|(_, v)| v.as_str()).collect();
    for (var, places) in &documented.settings {
        if places.len() > 1 {
            wrong.push(format!("{var} is documented {} times: {places:?}", places.len()));
        }
        if !read.contains(var.as_str()) && !READ_BY_LIBRARIES.contains(&var.as_str()) {
            wrong.push(format!("{places:?}: {var} is not read by the code"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The scanners above must see what they are for, and match exactly.
#[test]
fn the_guide_scanners_see_what_they_look_for() {
    let declared = Declared::of_source(
        "wallet",
        r#"
        // ErrorCode::new(StatusCode::GONE, "IN_A_COMMENT") is no declaration.
        fn code(e: &E) -> ErrorCode {
            match e {
                E::A => ErrorCode::new(S::BAD_REQUEST, "INVALID_A"),
                E::B => crate::server::error::ErrorCode::new(StatusCode::SERVICE_UNAVAILABLE, "B_DOWN"),
                E::C => ErrorCode::new(status, "C"),
            }
        }
        fn routes() -> Vec<Route> {
            vec![
                Route::new(Method::GET, "/live", "live", s, |_, _, _| async { Ok(x(vec![1])) }),
                Route::new(Method::POST, "/live/{id}/events", "e", s, h),
            ]
        }
        fn settings(env: &Env<'_>) { env.number("STAMPEDE_X_MS", 1, 0, 2)?; other.get("NOT_A_SETTING"); }
        "#,
    );
    let codes: Vec<_> = declared.codes.iter().map(|(m, s, c)| format!("{m} {s} {c}")).collect();
    assert_eq!(codes, ["wallet 400 INVALID_A", "wallet 503 B_DOWN"]);
    assert_eq!(declared.unreadable.len(), 1, "{:?}", declared.unreadable);
    let routes: Vec<_> = declared.routes.iter().map(|(_, m, p)| format!("{m} {p}")).collect();
    assert_eq!(routes, ["GET /live", "POST /live/{id}/events"]);
    let settings: Vec<_> = declared.settings.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(settings, ["STAMPEDE_X_MS"]);

    let guide = "\
| method | path | what |
|---|---|---|
| GET | `/live/events` | the stream |
| GET | `/live?x=1` | a query is not a path |

  | status | code | when |
  |---|---|---|
  | 400 | `INVALID_A`, `INVALID_B` | two codes |
  | 401 / 403 | `A` / `B` | unreadable |

```
| GET | `/in/a/fence` | not a table |
```
| variable | default | meaning |
|---|---|---|
| `STAMPEDE_X_MS` | `1` | x |
";
    let documented = Documented::of(&BTreeMap::from([("docs/wallet.md".to_owned(), guide.to_owned())]));
    let routes: Vec<_> = documented.routes.keys().map(|(m, p)| format!("{m} {p}")).collect();
    // `/live/events` documents `/live/events`, never `/live`.
    assert_eq!(routes, ["GET /live/events"]);
    let codes: Vec<_> = documented.codes.keys().map(|(s, c)| format!("{s} {c}")).collect();
    assert_eq!(codes, ["400 INVALID_A", "400 INVALID_B"]);
    assert_eq!(documented.unreadable.len(), 2, "{:?}", documented.unreadable);
    assert_eq!(documented.settings.keys().collect::<Vec<_>>(), ["STAMPEDE_X_MS"]);
    assert_eq!(documented.codes[&(400, "INVALID_A".to_owned())], ["docs/wallet.md:8"]);

    // A feature's code belongs in its own guide; a shared one in any.
    let features: BTreeSet<String> = ["wallet".to_owned()].into();
    let invalid_a = documented.codes.get(&(400, "INVALID_A".to_owned()));
    assert!(documented_in(invalid_a, &guide_of("wallet", &features)));
    assert!(!documented_in(
        invalid_a,
        &guide_of("orders", &["orders".to_owned()].into())
    ));
    assert!(documented_in(invalid_a, &guide_of("server", &features)));
}

/// The `${NAME…}` references in a compose file, as (name, what follows the
/// name up to the closing brace).
fn compose_references(text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        rest = &rest[start + 2..];
        let Some(end) = rest.find('}') else { break };
        let inner = &rest[..end];
        let name_len = inner
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(inner.len());
        found.push((inner[..name_len].to_string(), inner[name_len..].to_string()));
        rest = &rest[end..];
    }
    found
}

fn compose_problems(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, tail) in compose_references(text) {
        let secret = ["PASSWORD", "TOKEN", "SECRET", "KEY"].iter().any(|s| name.contains(s));
        if secret && !tail.starts_with(":?") {
            problems.push(format!(
                "${{{name}{tail}}}: a secret must be required (`:?message`), never defaulted"
            ));
        }
    }
    for line in text.lines() {
        let line = line.trim();
        if let Some(role) = line.strip_prefix("GF_AUTH_ANONYMOUS_ORG_ROLE:")
            && role.trim().trim_matches('"') != "Viewer"
        {
            problems.push(format!("{line}: anonymous Grafana visitors may be Viewers at most"));
        }
        if line.starts_with("GF_AUTH_DISABLE_LOGIN_FORM") {
            problems.push(format!("{line}: the admin must be able to sign in"));
        }
        if line.starts_with("GF_SECURITY_ADMIN_PASSWORD:") && !line.contains(":?") {
            problems.push(format!("{line}: Grafana's admin password must be the user's"));
        }
    }
    if !text.contains("GF_SECURITY_ADMIN_PASSWORD:") {
        problems.push("Grafana's admin password is not set: it would be the image's default".into());
    }
    problems
}

/// docker-compose.yml ships no secret: every password and token is the
/// user's (compose refuses to start without it), and anonymous Grafana
/// visitors can only look.
#[test]
fn docker_compose_has_no_default_secret() {
    let path = Path::new(ROOT).join("docker-compose.yml");
    let text = std::fs::read_to_string(&path).expect("docker-compose.yml");
    let problems = compose_problems(&text);
    assert!(problems.is_empty(), "docker-compose.yml: {problems:#?}");
    assert!(
        compose_references(&text)
            .iter()
            .any(|(n, _)| n == "STAMPEDE_ADMIN_TOKEN"),
        "the admin token comes from the user"
    );
    // The check can fail: the shapes it refuses are refused.
    for bad in [
        "X: ${STAMPEDE_ADMIN_TOKEN:-dev-token}",
        "X: ${POSTGRES_PASSWORD}",
        "GF_AUTH_ANONYMOUS_ORG_ROLE: Admin\nGF_SECURITY_ADMIN_PASSWORD: ${G:?x}",
        "GF_AUTH_DISABLE_LOGIN_FORM: \"true\"\nGF_SECURITY_ADMIN_PASSWORD: ${G:?x}",
        "GF_SECURITY_ADMIN_PASSWORD: admin",
    ] {
        assert!(!compose_problems(bad).is_empty(), "not refused: {bad}");
    }
}

// ---------------------------------------------------------------------------
// One description per route: the API document is derived from the handlers.
//
// A route is declared once (`Route::new(Method::X, "/path", name, state,
// closure)`), and the closure calls its handler, a free function that
// carries `#[utoipa::path]` with the same method and path and a `summary`
// (which `GET /` shows). The types the document names are the types the
// code reads and writes: a request body derives `Deserialize`, a response
// body `Serialize`, both `ToSchema`. What cannot be such a type (a multipart
// upload, an event stream's frames, a body read as a JSON value so that each
// fault has its own code) is listed below with its reason; no other item is
// allowed to be dead code, so a stand-in cannot hide.
// ---------------------------------------------------------------------------

/// Types the API document describes that no handler serializes or
/// deserializes, each with the reason there is no such type.
const DOCUMENT_ONLY: &[(&str, &str)] = &[
    (
        "SseEvent",
        "an event stream's frames are written line by line (`event:`, `data:`, `id:`)",
    ),
    (
        "IngestForm",
        "the upload is multipart/form-data, streamed through multer, never deserialized",
    ),
    (
        "CreateJob",
        "the body is read as a JSON value so that each fault has its own code (INVALID_BODY, UNKNOWN_FIELD, \
         MISSING_FIELD, INVALID_DATE)",
    ),
];

/// Names a document may give as a body that are not types of the crate.
const BUILTIN_BODIES: &[&str] = &["String", "Object", "str", "Value", "bool", "i64", "u64"];

/// A parsed source file and the module it is.
struct Source {
    module: Vec<String>,
    name: String,
    ast: syn::File,
}

fn sources() -> Vec<Source> {
    rust_files(Path::new(SRC))
        .into_iter()
        .filter(|file| !matches!(file.file_name().and_then(|n| n.to_str()), Some("lib.rs" | "main.rs")))
        .map(|file| Source {
            module: module_path(&file),
            name: file.strip_prefix(SRC).unwrap_or(&file).display().to_string(),
            ast: parse(&file),
        })
        .collect()
}

fn path_names(path: &syn::Path) -> Vec<String> {
    path.segments.iter().map(|s| s.ident.to_string()).collect()
}

fn is_attr(attr: &syn::Attribute, name: &[&str]) -> bool {
    let names = path_names(attr.path());
    names.len() >= name.len() && names[names.len() - name.len()..].iter().zip(name).all(|(a, b)| a == b)
}

/// What a `#[utoipa::path(method, path = "…", summary = "…", …)]` says.
#[derive(Debug, Clone, Default)]
struct PathAttr {
    method: String,
    path: String,
    summary: Option<String>,
    /// Types named by `request_body = T` or `request_body(content = T)`.
    requests: Vec<String>,
    /// Types named by `body = T` in the responses.
    responses: Vec<String>,
}

/// The string a literal token holds, if it is a plain string literal.
fn token_string(token: &TokenTree) -> Option<String> {
    let TokenTree::Literal(literal) = token else {
        return None;
    };
    match syn::Lit::new(literal.clone()) {
        syn::Lit::Str(s) => Some(s.value()),
        _ => None,
    }
}

/// The tokens after `key =` up to the next comma outside angle brackets.
fn value_after(tokens: &[TokenTree], at: usize) -> TokenStream {
    let mut depth = 0i32;
    let mut value = Vec::new();
    for token in &tokens[at..] {
        if let TokenTree::Punct(p) = token {
            match p.as_char() {
                '<' => depth += 1,
                '>' => depth -= 1,
                ',' if depth == 0 => break,
                _ => {}
            }
        }
        value.push(token.clone());
    }
    value.into_iter().collect()
}

/// The crate's type names a type mentions, through `Option`, `Vec`, `Box`,
/// references and slices: `Option<Vec<a::B>>` is `B`.
fn type_names(ty: &syn::Type, names: &mut Vec<String>) {
    match ty {
        syn::Type::Path(path) => {
            let Some(last) = path.path.segments.last() else {
                return;
            };
            let ident = last.ident.to_string();
            if let syn::PathArguments::AngleBracketed(args) = &last.arguments
                && ["Option", "Vec", "Box"].contains(&ident.as_str())
            {
                for arg in &args.args {
                    if let syn::GenericArgument::Type(inner) = arg {
                        type_names(inner, names);
                    }
                }
            } else {
                names.push(ident);
            }
        }
        syn::Type::Reference(r) => type_names(&r.elem, names),
        syn::Type::Slice(s) => type_names(&s.elem, names),
        syn::Type::Array(a) => type_names(&a.elem, names),
        syn::Type::Paren(p) => type_names(&p.elem, names),
        _ => names.push("<unrecognised type>".into()),
    }
}

fn parsed_type_names(tokens: TokenStream, names: &mut Vec<String>) {
    match syn::parse2::<syn::Type>(tokens) {
        Ok(ty) => type_names(&ty, names),
        Err(_) => names.push("<unparsable type>".into()),
    }
}

/// The body types in a token list, recursively: `body = T`,
/// `request_body = T`, `content = T` (inside `request_body(…)`).
fn body_types(tokens: TokenStream, in_request: bool, attr: &mut PathAttr) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    for (i, token) in tokens.iter().enumerate() {
        match token {
            TokenTree::Group(group) => {
                let request = in_request
                    || matches!(i.checked_sub(1).map(|j| &tokens[j]), Some(TokenTree::Ident(id)) if id == "request_body");
                body_types(group.stream(), request, attr);
            }
            TokenTree::Ident(ident) => {
                let is_assignment = matches!(tokens.get(i + 1), Some(TokenTree::Punct(p)) if p.as_char() == '=');
                if !is_assignment {
                    continue;
                }
                let key = ident.to_string();
                let target = match key.as_str() {
                    "request_body" => &mut attr.requests,
                    "content" if in_request => &mut attr.requests,
                    "body" if !in_request => &mut attr.responses,
                    _ => continue,
                };
                parsed_type_names(value_after(&tokens, i + 2), target);
            }
            _ => {}
        }
    }
}

fn path_attr(attr: &syn::Attribute) -> Option<PathAttr> {
    if !is_attr(attr, &["utoipa", "path"]) {
        return None;
    }
    let syn::Meta::List(list) = &attr.meta else {
        return Some(PathAttr::default());
    };
    let tokens: Vec<TokenTree> = list.tokens.clone().into_iter().collect();
    let mut found = PathAttr::default();
    if let Some(TokenTree::Ident(method)) = tokens.first() {
        found.method = method.to_string();
    }
    // Top-level `key = "value"` pairs only: `params(("id" = String, Path …))`
    // nests its own.
    for (i, token) in tokens.iter().enumerate() {
        let TokenTree::Ident(key) = token else { continue };
        let is_assignment = matches!(tokens.get(i + 1), Some(TokenTree::Punct(p)) if p.as_char() == '=');
        let value = tokens.get(i + 2).and_then(token_string);
        match (key.to_string().as_str(), is_assignment, value) {
            ("path", true, Some(v)) => found.path = v,
            ("summary", true, Some(v)) => found.summary = Some(v),
            _ => {}
        }
    }
    body_types(list.tokens.clone(), false, &mut found);
    Some(found)
}

/// A free function of the crate.
#[derive(Debug, Clone)]
struct FnInfo {
    file: String,
    documented: Option<PathAttr>,
}

/// A struct or enum of the crate: what it derives, and whether it is
/// allowed to be dead code.
#[derive(Debug, Clone)]
struct TypeInfo {
    file: String,
    top: String,
    derives: BTreeSet<String>,
}

/// A `Route::new(…)` call.
#[derive(Debug, Clone)]
struct RouteCall {
    file: String,
    method: String,
    path: String,
    /// The crate paths the handler closure calls (or the function passed).
    calls: Vec<Vec<String>>,
}

/// Everything the route checks need, gathered from the parsed sources.
#[derive(Default)]
struct Inventory {
    fns: BTreeMap<Vec<String>, FnInfo>,
    types: BTreeMap<String, Vec<TypeInfo>>,
    routes: Vec<RouteCall>,
    /// `components(schemas(…))` of every `#[openapi(…)]`, with the file.
    component_types: Vec<(String, String)>,
    /// `#[utoipa::path]` on something other than a free function.
    misplaced_paths: Vec<String>,
    /// `allow(dead_code)` found: the file and the item it covers.
    dead_code: Vec<(String, String)>,
}

struct InventoryVisitor<'a> {
    inventory: &'a mut Inventory,
    file: String,
    module: Vec<String>,
}

/// The crate paths a closure calls (`f(…)`, `a::f(…)`): method calls are
/// not followed, so a handler must be a free function.
#[derive(Default)]
struct Calls(Vec<Vec<String>>);

impl<'ast> Visit<'ast> for Calls {
    fn visit_expr_call(&mut self, call: &'ast syn::ExprCall) {
        if let syn::Expr::Path(path) = &*call.func {
            self.0.push(path_names(&path.path));
        }
        visit::visit_expr_call(self, call);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        for expr in macro_exprs(mac) {
            self.visit_expr(&expr);
        }
        visit::visit_macro(self, mac);
    }
}

/// The expressions of a macro call written as a comma-separated list
/// (`vec![…]`, `format!(…)`): `syn` leaves macro bodies as tokens, and
/// routes are declared inside `vec![…]`.
fn macro_exprs(mac: &syn::Macro) -> Vec<syn::Expr> {
    use syn::parse::Parser;
    syn::punctuated::Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated
        .parse2(mac.tokens.clone())
        .map(|list| list.into_iter().collect())
        .unwrap_or_default()
}

fn derives(attrs: &[syn::Attribute]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident("derive")) {
        let _ = attr.parse_nested_meta(|meta| {
            if let Some(last) = meta.path.segments.last() {
                found.insert(last.ident.to_string());
            }
            Ok(())
        });
    }
    found
}

fn allows_dead_code(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("allow")
            && matches!(&attr.meta, syn::Meta::List(list) if list.tokens.to_string().contains("dead_code"))
    })
}

impl InventoryVisitor<'_> {
    fn record_type(&mut self, ident: &syn::Ident, attrs: &[syn::Attribute]) {
        let name = ident.to_string();
        if allows_dead_code(attrs) {
            self.inventory.dead_code.push((self.file.clone(), name.clone()));
        }
        self.inventory.types.entry(name).or_default().push(TypeInfo {
            file: self.file.clone(),
            top: self.module.first().cloned().unwrap_or_default(),
            derives: derives(attrs),
        });
    }
}

impl<'ast> Visit<'ast> for InventoryVisitor<'_> {
    fn visit_file(&mut self, file: &'ast syn::File) {
        if allows_dead_code(&file.attrs) {
            self.inventory
                .dead_code
                .push((self.file.clone(), "the whole module (#![allow])".into()));
        }
        visit::visit_file(self, file);
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if allows_dead_code(&item.attrs) {
            self.inventory
                .dead_code
                .push((self.file.clone(), format!("mod {}", item.ident)));
        }
        if item.content.is_some() {
            self.module.push(item.ident.to_string());
            visit::visit_item_mod(self, item);
            self.module.pop();
        }
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        if allows_dead_code(&item.attrs) {
            self.inventory
                .dead_code
                .push((self.file.clone(), format!("fn {}", item.sig.ident)));
        }
        let mut key = self.module.clone();
        key.push(item.sig.ident.to_string());
        self.inventory.fns.insert(
            key,
            FnInfo {
                file: self.file.clone(),
                documented: item.attrs.iter().find_map(path_attr),
            },
        );
        visit::visit_item_fn(self, item);
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        if allows_dead_code(&item.attrs) {
            self.inventory
                .dead_code
                .push((self.file.clone(), format!("fn {}", item.sig.ident)));
        }
        if item.attrs.iter().any(|a| is_attr(a, &["utoipa", "path"])) {
            self.inventory
                .misplaced_paths
                .push(format!("{}: method `{}`", self.file, item.sig.ident));
        }
        visit::visit_impl_item_fn(self, item);
    }

    fn visit_item_struct(&mut self, item: &'ast syn::ItemStruct) {
        self.record_type(&item.ident, &item.attrs);
        visit::visit_item_struct(self, item);
    }

    fn visit_item_enum(&mut self, item: &'ast syn::ItemEnum) {
        self.record_type(&item.ident, &item.attrs);
        visit::visit_item_enum(self, item);
    }

    fn visit_item_const(&mut self, item: &'ast syn::ItemConst) {
        if allows_dead_code(&item.attrs) {
            self.inventory
                .dead_code
                .push((self.file.clone(), format!("const {}", item.ident)));
        }
        visit::visit_item_const(self, item);
    }

    fn visit_attribute(&mut self, attr: &'ast syn::Attribute) {
        if attr.path().is_ident("openapi")
            && let syn::Meta::List(list) = &attr.meta
        {
            let tokens: Vec<TokenTree> = list.tokens.clone().into_iter().collect();
            for pair in tokens.windows(2) {
                let (TokenTree::Ident(key), TokenTree::Group(group)) = (&pair[0], &pair[1]) else {
                    continue;
                };
                if key != "components" {
                    continue;
                }
                let inner: Vec<TokenTree> = group.stream().into_iter().collect();
                for pair in inner.windows(2) {
                    if let (TokenTree::Ident(key), TokenTree::Group(schemas)) = (&pair[0], &pair[1])
                        && key == "schemas"
                    {
                        let list: Vec<TokenTree> = schemas.stream().into_iter().collect();
                        for item in list.split(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == ',')) {
                            let mut names = Vec::new();
                            parsed_type_names(item.iter().cloned().collect(), &mut names);
                            for name in names {
                                self.inventory.component_types.push((self.file.clone(), name));
                            }
                        }
                    }
                }
            }
        }
        visit::visit_attribute(self, attr);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        for expr in macro_exprs(mac) {
            self.visit_expr(&expr);
        }
        visit::visit_macro(self, mac);
    }

    fn visit_expr_call(&mut self, call: &'ast syn::ExprCall) {
        let is_route_new = matches!(&*call.func, syn::Expr::Path(p) if path_names(&p.path).ends_with(&["Route".to_owned(), "new".to_owned()]));
        if is_route_new {
            let args: Vec<&syn::Expr> = call.args.iter().collect();
            let method = match args.first() {
                Some(syn::Expr::Path(p)) => p.path.segments.last().map(|s| s.ident.to_string()).unwrap_or_default(),
                _ => String::new(),
            };
            let path = match args.get(1) {
                Some(syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s), ..
                })) => s.value(),
                _ => String::new(),
            };
            let calls = match args.last() {
                Some(syn::Expr::Closure(closure)) => {
                    let mut calls = Calls::default();
                    calls.visit_expr(&closure.body);
                    calls.0
                }
                Some(syn::Expr::Path(p)) => vec![path_names(&p.path)],
                _ => Vec::new(),
            };
            self.inventory.routes.push(RouteCall {
                file: self.file.clone(),
                method,
                path,
                calls,
            });
        }
        visit::visit_expr_call(self, call);
    }
}

fn inventory(sources: &[Source]) -> Inventory {
    let mut inventory = Inventory::default();
    for source in sources {
        let mut visitor = InventoryVisitor {
            inventory: &mut inventory,
            file: source.name.clone(),
            module: source.module.clone(),
        };
        visitor.visit_file(&source.ast);
    }
    inventory
}

/// The crate function a call names, written in `module`: `crate::`/
/// `super::`/`self::` paths resolve as imports do; any other path is read
/// as relative to the module (`handlers::checkout`, `health`).
fn resolve_fn<'a>(inventory: &'a Inventory, module: &[String], call: &[String]) -> Option<(Vec<String>, &'a FnInfo)> {
    let absolute = resolve(module, call).unwrap_or_else(|| {
        let mut path = module.to_vec();
        path.extend(call.iter().cloned());
        path
    });
    inventory.fns.get(&absolute).map(|info| (absolute, info))
}

/// The module of a file (routes are declared at a file's top level).
fn module_of(sources: &[Source], file: &str) -> Vec<String> {
    sources
        .iter()
        .find(|s| s.name == file)
        .map(|s| s.module.clone())
        .unwrap_or_default()
}

/// Every route's handler carries the route's `#[utoipa::path]` (same
/// method and path, a summary), and every `#[utoipa::path]` is a routed
/// handler. Returns the routes seen and the violations.
fn route_violations(sources: &[Source], inventory: &Inventory) -> (usize, Vec<String>) {
    let mut violations: Vec<String> = inventory
        .misplaced_paths
        .iter()
        .map(|m| format!("{m} carries #[utoipa::path]: document a free function the route's closure calls"))
        .collect();
    let mut handlers = BTreeSet::new();
    for route in &inventory.routes {
        let at = format!("{} ({} {})", route.file, route.method, route.path);
        let module = module_of(sources, &route.file);
        let resolved: Vec<(Vec<String>, &FnInfo)> = route
            .calls
            .iter()
            .filter_map(|call| resolve_fn(inventory, &module, call))
            .collect();
        let [(handler, info)] = resolved.as_slice() else {
            violations.push(format!(
                "{at}: its closure must call exactly one free function of the crate, its handler (found {:?}); \
                 a method or an inline body cannot carry #[utoipa::path]",
                resolved.iter().map(|(p, _)| p.join("::")).collect::<Vec<_>>()
            ));
            continue;
        };
        handlers.insert(handler.clone());
        let name = handler.join("::");
        let Some(doc) = &info.documented else {
            violations.push(format!(
                "{at}: its handler `{name}` ({}) has no #[utoipa::path]",
                info.file
            ));
            continue;
        };
        if !doc.method.eq_ignore_ascii_case(&route.method) || doc.path != route.path {
            violations.push(format!(
                "{at}: its handler `{name}` documents {} {} instead",
                doc.method.to_uppercase(),
                doc.path
            ));
        }
        if doc.summary.as_deref().is_none_or(|s| s.trim().is_empty()) {
            violations.push(format!(
                "{at}: its handler `{name}` has no `summary`, the route's one description (GET / shows it)"
            ));
        }
    }
    for (path, info) in &inventory.fns {
        if info.documented.is_some() && !handlers.contains(path) {
            violations.push(format!(
                "{}: `{}` carries #[utoipa::path] but no route calls it: document the handler itself",
                info.file,
                path.join("::")
            ));
        }
    }
    (inventory.routes.len(), violations)
}

/// Every type the document names is one the code reads (request bodies:
/// `Deserialize`) or writes (responses: `Serialize`), and derives
/// `ToSchema`; or it is listed in `DOCUMENT_ONLY`. Returns the types
/// checked and the violations.
fn document_type_violations(inventory: &Inventory) -> (usize, Vec<String>) {
    let mut named: Vec<(String, String, &str)> = Vec::new();
    for info in inventory.fns.values() {
        if let Some(doc) = &info.documented {
            named.extend(
                doc.requests
                    .iter()
                    .map(|t| (info.file.clone(), t.clone(), "Deserialize")),
            );
            named.extend(
                doc.responses
                    .iter()
                    .map(|t| (info.file.clone(), t.clone(), "Serialize")),
            );
        }
    }
    named.extend(
        inventory
            .component_types
            .iter()
            .map(|(file, t)| (file.clone(), t.clone(), "Serialize` or `Deserialize")),
    );
    let mut violations = Vec::new();
    let mut checked = 0;
    for (file, name, needs) in &named {
        if BUILTIN_BODIES.contains(&name.as_str()) {
            continue;
        }
        checked += 1;
        let Some(candidates) = inventory.types.get(name) else {
            violations.push(format!(
                "{file}: the document names `{name}`, which is no type of the crate"
            ));
            continue;
        };
        // The type of that name nearest the attribute: in its file, else in
        // its top-level module, else anywhere.
        let top = file.split('/').next().unwrap_or("").trim_end_matches(".rs");
        let nearest = [
            candidates.iter().filter(|t| t.file == *file).collect::<Vec<_>>(),
            candidates.iter().filter(|t| t.top == top).collect(),
            candidates.iter().collect(),
        ]
        .into_iter()
        .find(|tier| !tier.is_empty())
        .unwrap_or_default();
        for ty in nearest {
            if !ty.derives.contains("ToSchema") {
                violations.push(format!("{file}: `{name}` ({}) does not derive ToSchema", ty.file));
            }
            if DOCUMENT_ONLY.iter().any(|(n, _)| n == name) {
                continue;
            }
            let ok = match *needs {
                "Deserialize" => ty.derives.contains("Deserialize"),
                "Serialize" => ty.derives.contains("Serialize"),
                _ => ty.derives.contains("Serialize") || ty.derives.contains("Deserialize"),
            };
            if !ok {
                violations.push(format!(
                    "{file}: the document names `{name}` ({}), which does not derive `{needs}`: describe the type \
                     the handler actually {}",
                    ty.file,
                    match *needs {
                        "Deserialize" => "reads",
                        "Serialize" => "writes",
                        _ => "reads or writes",
                    }
                ));
            }
        }
    }
    (checked, violations)
}

/// `allow(dead_code)` only on the document-only types, which must exist,
/// derive `ToSchema` and neither `Serialize` nor `Deserialize` (else they
/// are real types and leave the list).
fn dead_code_violations(inventory: &Inventory) -> Vec<String> {
    let mut violations: Vec<String> = inventory
        .dead_code
        .iter()
        .filter(|(_, item)| !DOCUMENT_ONLY.iter().any(|(n, _)| n == item))
        .map(|(file, item)| {
            format!(
                "{file}: `allow(dead_code)` on {item}: code that nothing runs is a stand-in; derive the document from \
                 the real types (or list a type that cannot be one in DOCUMENT_ONLY, with why)"
            )
        })
        .collect();
    for (name, _) in DOCUMENT_ONLY {
        match inventory.types.get(*name).map(Vec::as_slice) {
            Some([ty]) => {
                if !ty.derives.contains("ToSchema")
                    || ty.derives.contains("Serialize")
                    || ty.derives.contains("Deserialize")
                {
                    violations.push(format!(
                        "{}: `{name}` is in DOCUMENT_ONLY, so it derives ToSchema and neither Serialize nor \
                         Deserialize (found {:?})",
                        ty.file, ty.derives
                    ));
                }
            }
            found => violations.push(format!(
                "DOCUMENT_ONLY names `{name}`: expected one such type, found {found:?}"
            )),
        }
    }
    violations
}

#[test]
fn every_route_is_described_once_by_its_handler() {
    let sources = sources();
    let inventory = inventory(&sources);
    let (routes, violations) = route_violations(&sources, &inventory);
    assert!(
        routes >= 25,
        "only {routes} `Route::new` calls found: is the scan broken?"
    );
    assert!(
        violations.is_empty(),
        "a route's description lives in its handler's #[utoipa::path] (method, path, summary), which the \
         document and GET / both read:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_document_names_only_the_types_the_handlers_read_and_write() {
    let sources = sources();
    let inventory = inventory(&sources);
    let (checked, mut violations) = document_type_violations(&inventory);
    // 58 when the error responses became generated from the route list (the
    // handlers no longer name `ErrorBody` once per error status).
    assert!(
        checked >= 50,
        "only {checked} document types found: is the scan broken?"
    );
    violations.extend(dead_code_violations(&inventory));
    assert!(
        violations.is_empty(),
        "the document's schemas must be derived from the handlers' own types, and no stand-in may hide as \
         dead code:\n{}",
        violations.join("\n")
    );
}

/// The route checks above must catch what they are for: each breach below
/// is reported.
#[test]
fn the_route_checks_catch_what_they_look_for() {
    let feature = r#"
        use crate::server::Route;
        pub fn routes(s: Arc<S>) -> Vec<Route> {
            vec![
                Route::new(Method::GET, "/good", "good", s.clone(), |s, _, _| async move { handlers::good(&s).await }),
                Route::new(Method::GET, "/bare", "bare", s.clone(), |s, _, _| async move { handlers::bare(&s).await }),
                Route::new(Method::POST, "/moved", "moved", s.clone(), |s, _, _| async move { handlers::moved(&s).await }),
                Route::new(Method::GET, "/silent", "silent", s.clone(), |s, _, _| async move { handlers::silent(&s).await }),
                Route::new(Method::GET, "/method", "method", s, |s, _, _| async move { s.method().await }),
            ]
        }
    "#;
    let handlers = r#"
        #![allow(dead_code)]
        #[derive(utoipa::OpenApi)]
        #[openapi(paths(good), components(schemas(Reply, Loose)))]
        pub struct Api;
        #[derive(Serialize, ToSchema)]
        struct Reply { a: i64 }
        #[derive(ToSchema)]
        struct Loose { a: i64 }
        #[derive(Serialize, ToSchema)]
        struct WrongWay { a: i64 }
        #[allow(dead_code)]
        fn stand_in() {}
        #[utoipa::path(get, path = "/good", summary = "Good", request_body = WrongWay,
            responses((status = 200, description = "ok", body = Option<Reply>), (status = 404, body = Missing)))]
        pub async fn good(s: &S) {}
        pub async fn bare(s: &S) {}
        #[utoipa::path(post, path = "/elsewhere", summary = "Moved")]
        pub async fn moved(s: &S) {}
        #[utoipa::path(get, path = "/silent")]
        pub async fn silent(s: &S) {}
        #[utoipa::path(get, path = "/orphan", summary = "Nobody routes here")]
        fn orphan_doc() {}
        impl S {
            #[utoipa::path(get, path = "/method", summary = "A method")]
            async fn method(&self) {}
        }
    "#;
    let sources = vec![
        Source {
            module: vec!["f".into()],
            name: "f/mod.rs".into(),
            ast: syn::parse_str(feature).expect("parses"),
        },
        Source {
            module: vec!["f".into(), "handlers".into()],
            name: "f/handlers.rs".into(),
            ast: syn::parse_str(handlers).expect("parses"),
        },
    ];
    let inventory = inventory(&sources);
    let (routes, violations) = route_violations(&sources, &inventory);
    assert_eq!(routes, 5);
    let expect = |violations: &[String], needle: &str| {
        assert!(
            violations.iter().any(|v| v.contains(needle)),
            "no violation mentions {needle:?}: {violations:#?}"
        );
    };
    expect(
        &violations,
        "`f::handlers::bare` (f/handlers.rs) has no #[utoipa::path]",
    );
    expect(&violations, "`f::handlers::moved` documents POST /elsewhere instead");
    expect(&violations, "`f::handlers::silent` has no `summary`");
    expect(
        &violations,
        "(GET /method): its closure must call exactly one free function",
    );
    expect(&violations, "method `method` carries #[utoipa::path]");
    expect(
        &violations,
        "`f::handlers::orphan_doc` carries #[utoipa::path] but no route calls it",
    );
    assert!(
        !violations.iter().any(|v| v.contains("(GET /good)")),
        "the good route is fine: {violations:#?}"
    );
    let (_, violations) = document_type_violations(&inventory);
    expect(
        &violations,
        "`WrongWay` (f/handlers.rs), which does not derive `Deserialize`",
    );
    expect(&violations, "`Missing`, which is no type of the crate");
    expect(
        &violations,
        "`Loose` (f/handlers.rs), which does not derive `Serialize` or `Deserialize`",
    );
    assert!(
        !violations.iter().any(|v| v.contains("`Reply`")),
        "Reply is fine: {violations:#?}"
    );
    let violations = dead_code_violations(&inventory);
    expect(&violations, "`allow(dead_code)` on the whole module");
    expect(&violations, "`allow(dead_code)` on fn stand_in");
    expect(
        &violations,
        "DOCUMENT_ONLY names `SseEvent`: expected one such type, found None",
    );
}

/// The string literals in a token stream, groups (macro arguments, blocks)
/// included.
fn literals_in(tokens: TokenStream, out: &mut BTreeSet<String>) {
    for token in tokens {
        match token {
            TokenTree::Group(group) => literals_in(group.stream(), out),
            TokenTree::Literal(literal) => {
                if let Ok(syn::Lit::Str(s)) = syn::parse_str::<syn::Lit>(&literal.to_string()) {
                    out.insert(s.value());
                }
            }
            _ => {}
        }
    }
}

/// Metric names a metrics macro (`counter!`, `gauge!`, `histogram!`) is
/// called with as its first argument, in a token stream.
fn metric_macro_names(tokens: TokenStream, out: &mut BTreeSet<String>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    for (i, token) in tokens.iter().enumerate() {
        match token {
            TokenTree::Ident(ident) if ["counter", "gauge", "histogram"].contains(&ident.to_string().as_str()) => {
                let bang = matches!(tokens.get(i + 1), Some(TokenTree::Punct(p)) if p.as_char() == '!');
                if let (true, Some(TokenTree::Group(args))) = (bang, tokens.get(i + 2))
                    && let Some(TokenTree::Literal(first)) = args.stream().into_iter().next()
                    && let Ok(syn::Lit::Str(s)) = syn::parse_str::<syn::Lit>(&first.to_string())
                {
                    out.insert(s.value());
                }
            }
            TokenTree::Group(group) => metric_macro_names(group.stream(), out),
            _ => {}
        }
    }
}

/// The bodies of the functions named `register…` in a token stream.
fn register_fn_bodies(tokens: TokenStream, out: &mut Vec<TokenStream>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            TokenTree::Ident(kw) if kw == "fn" => {
                if let Some(TokenTree::Ident(name)) = tokens.get(i + 1)
                    && name.to_string().starts_with("register")
                {
                    let body = tokens[i + 2..].iter().find_map(|t| match t {
                        TokenTree::Group(g) if g.delimiter() == proc_macro2::Delimiter::Brace => Some(g.stream()),
                        _ => None,
                    });
                    out.extend(body);
                }
            }
            TokenTree::Group(group) => register_fn_bodies(group.stream(), out),
            _ => {}
        }
        i += 1;
    }
}

/// What the registration functions (`register…` in `src/telemetry.rs` and
/// the features' `metrics.rs`) name, and every metric name `src/` records.
fn registered_and_recorded(files: &[PathBuf]) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut registered = BTreeSet::new();
    let mut recorded = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(file).expect("source reads");
        let tokens: TokenStream = text.parse().expect("source tokenizes");
        metric_macro_names(tokens.clone(), &mut recorded);
        if file.ends_with("telemetry.rs") || file.ends_with("metrics.rs") {
            let mut bodies = Vec::new();
            register_fn_bodies(tokens, &mut bodies);
            for body in bodies {
                literals_in(body, &mut registered);
            }
        }
    }
    (registered, recorded)
}

/// Every metric the engine records is registered at start by a
/// `register…` function (`src/telemetry.rs` or the feature's `metrics.rs`),
/// so it is exported, at 0, before it first happens. (The API test
/// `dashboards::every_metric_in_the_source_is_exported_before_the_first_request`
/// checks the same against a running engine's `/metrics`.)
#[test]
fn every_metric_is_registered_at_start() {
    let (registered, recorded) = registered_and_recorded(&rust_files(Path::new(SRC)));
    assert!(
        recorded.len() >= 30,
        "the scan found only {} metric names: is it broken?",
        recorded.len()
    );
    let missing: Vec<&String> = recorded.iter().filter(|name| !registered.contains(*name)).collect();
    assert!(
        missing.is_empty(),
        "metrics recorded in src/ but not registered at start: {missing:?}"
    );
    // The check can fail: a recorded metric no register function names.
    let fixture: TokenStream = r#"
        pub fn register() { counter!("a_total", "k" => "v").increment(0); }
        pub fn seen() { counter!("a_total").increment(1); gauge!("b_open").set(1.0); }
    "#
    .parse()
    .expect("fixture tokenizes");
    let mut rec = BTreeSet::new();
    metric_macro_names(fixture.clone(), &mut rec);
    let mut bodies = Vec::new();
    register_fn_bodies(fixture, &mut bodies);
    let mut reg = BTreeSet::new();
    for body in bodies {
        literals_in(body, &mut reg);
    }
    let unregistered: Vec<&String> = rec.iter().filter(|n| !reg.contains(*n)).collect();
    assert_eq!(unregistered, vec!["b_open"]);
}
