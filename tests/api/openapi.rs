//! `GET /openapi.json` describes every route of the route list and every
//! error code the code declares: it is generated from the code, and this
//! test fails the moment a route or a code is added without its description.
//! A route's error responses are generated from the codes the route list
//! declares for it (`Route::answers`): the test compares the two, and checks
//! every code the source declares is answered by at least one route.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use hyper::StatusCode;
use serde_json::Value;
use stampede::app::App;
use stampede::server::error::{BODY_TOO_LARGE, EVERY_ROUTE};
use stampede::server::route::RouteInfo;

use crate::helpers::{TestApp, database_url, engine_config, spawn_app};

/// Codes no route answers: the router's answer to a path no route has.
const ANSWERED_BY_NO_ROUTE: &[&str] = &["NOT_FOUND"];

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
        .iter()
        .filter(|(_, code)| !text.contains(&format!("`{code}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "error codes missing from /openapi.json: {missing:?}"
    );

    // Each route's error responses are the ones its declared codes make:
    // one per status, naming exactly its codes, with the error body, and
    // `Retry-After` where a client is asked to come back.
    let declared = route_list(&app).await;
    assert_eq!(declared.len(), routes.len(), "the route list and the index disagree");
    let mut wrong = Vec::new();
    for route in &declared {
        let method = route.method.as_str().to_lowercase();
        let responses = &doc["paths"][route.path][&method]["responses"];
        let mut by_status: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
        for code in &route.answers {
            let codes = by_status.entry(code.status.as_u16()).or_default();
            if !codes.contains(&code.code) {
                codes.push(code.code);
            }
        }
        for (status, codes) in &by_status {
            let response = &responses[status.to_string()];
            if !is_error_body(response) {
                // A handler's own answer at a status the toolkit shares
                // (`/health`'s 503): the toolkit's codes stay out of it.
                let toolkit = codes
                    .iter()
                    .all(|c| EVERY_ROUTE.iter().chain([&BODY_TOO_LARGE]).any(|t| t.code == *c));
                if !(toolkit && response.is_object()) {
                    wrong.push(format!("{method} {}: {status} is no error response", route.path));
                }
                continue;
            }
            let expected = codes.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ");
            if response["description"] != expected.as_str() {
                wrong.push(format!(
                    "{method} {}: {status} says {} instead of {expected}",
                    route.path, response["description"]
                ));
            }
            let retry_after = response["headers"]["Retry-After"].is_object();
            if retry_after != matches!(status, 429 | 503) {
                wrong.push(format!(
                    "{method} {}: {status} Retry-After declared: {retry_after}",
                    route.path
                ));
            }
        }
        // No error response a declared code does not make.
        for (status, response) in responses.as_object().into_iter().flatten() {
            let status: u16 = status.parse().unwrap_or(0);
            if is_error_body(response) && !by_status.contains_key(&status) {
                wrong.push(format!("{method} {}: {status} answers no declared code", route.path));
            }
        }
    }
    assert!(wrong.is_empty(), "generated error responses:\n{}", wrong.join("\n"));

    // A floor, so the comparison above can fail: every code the source
    // declares is answered by at least one route.
    let answered: BTreeSet<&str> = declared.iter().flat_map(|r| r.answers.iter().map(|c| c.code)).collect();
    let unanswered: Vec<_> = codes
        .iter()
        .filter(|(_, code)| !answered.contains(code.as_str()) && !ANSWERED_BY_NO_ROUTE.contains(&code.as_str()))
        .collect();
    assert!(
        unanswered.is_empty(),
        "codes no route lists in its `answers`: {unanswered:?}"
    );
    app.finish().await;
}

/// Whether a response is an error response: its body is `ErrorBody`.
fn is_error_body(response: &Value) -> bool {
    response["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/ErrorBody"
}

/// The route list of an engine built like `app` (same database and key
/// prefix), each route with the codes it declares, as the router holds it.
async fn route_list(app: &TestApp) -> Vec<RouteInfo> {
    let server = database_url();
    let server = server.split('?').next().unwrap_or(&server);
    let server = server.rsplit_once('/').map_or(server, |(s, _)| s);
    let db_url = format!("{server}/{}", app.db_name);
    let engine = App::build(engine_config(&db_url, &app.prefix, &[]), app.clock.clone())
        .await
        .expect("engine builds");
    engine.routes()
}
