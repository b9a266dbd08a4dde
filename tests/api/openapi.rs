//! `GET /openapi.json` describes every route of the route list and every
//! error code the code declares: it is generated from the code, and this
//! test fails the moment a route or a code is added without its description.

use std::collections::BTreeSet;
use std::path::Path;

use hyper::StatusCode;

use crate::helpers::spawn_app;

/// The modules that declare error codes: a scan that finds none in one of
/// them is broken, not a module without errors.
const MODULES_WITH_CODES: &[&str] = &["server", "app", "sale", "ingest", "orders", "wallet", "settlement"];

/// Every `ErrorCode::new(StatusCode::X, "CODE")` in the source, with the
/// top-level module (`src/<module>/…` or `src/<module>.rs`) that declares
/// it. A text scan: `tests/structure.rs` reads the same calls with `syn`,
/// but it is another test binary, and sharing its scanner would mean a
/// module of its own; reading comments too, this scan can only find more.
fn error_codes() -> BTreeSet<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut codes = BTreeSet::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("source folder") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let module = path
                .strip_prefix(&src)
                .ok()
                .and_then(|p| p.components().next())
                .and_then(|c| c.as_os_str().to_str())
                .map(|m| m.trim_end_matches(".rs").to_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for call in text.split("ErrorCode::new(").skip(1) {
                let call: String = call.chars().take_while(|c| *c != ')').collect();
                if let Some(code) = call.split('"').nth(1) {
                    codes.insert((module.clone(), code.to_owned()));
                }
            }
        }
    }
    codes
}

#[tokio::test]
async fn the_document_describes_every_route_and_error_code() {
    let app = spawn_app(&[]).await;
    let reply = app.get("/openapi.json").await;
    assert_eq!(reply.status, StatusCode::OK);
    let doc = reply.body;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")),
        "OpenAPI 3.1: {:?}",
        doc["openapi"]
    );

    let index = app.get("/").await.body;
    let routes = index["endpoints"].as_array().expect("route list");
    assert!(routes.len() >= 10);
    let mut undocumented = Vec::new();
    for route in routes {
        let (method, path) = (
            route["method"].as_str().expect("method").to_lowercase(),
            route["path"].as_str().expect("path"),
        );
        let operation = &doc["paths"][path][&method];
        if !operation.is_object() || operation["responses"].as_object().is_none_or(|r| r.is_empty()) {
            undocumented.push(format!("{method} {path}"));
        }
        // The index's text is the document's: one description per route.
        assert_eq!(
            route["description"], operation["summary"],
            "{method} {path}: the index and the document disagree"
        );
    }
    assert!(
        undocumented.is_empty(),
        "routes missing from /openapi.json: {undocumented:?}"
    );
    // And the document describes no route the engine does not serve.
    let served: BTreeSet<(String, String)> = routes
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap_or("").to_lowercase(),
                r["path"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let mut unserved = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if !served.contains(&(method.clone(), path.clone())) {
                unserved.push(format!("{method} {path}"));
            }
        }
    }
    assert!(unserved.is_empty(), "operations no route serves: {unserved:?}");

    let text = doc.to_string();
    let codes = error_codes();
    // A scan that finds nothing would pass whatever the document says.
    let silent: Vec<_> = MODULES_WITH_CODES
        .iter()
        .filter(|module| !codes.iter().any(|(m, _)| m == *module))
        .collect();
    assert!(
        silent.is_empty() && codes.len() >= 50,
        "the scan found {} codes and none in {silent:?}: is it broken? {codes:?}",
        codes.len()
    );
    let missing: Vec<_> = codes
        .into_iter()
        .filter(|(_, code)| !text.contains(&format!("`{code}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "error codes missing from /openapi.json: {missing:?}"
    );
    app.finish().await;
}
