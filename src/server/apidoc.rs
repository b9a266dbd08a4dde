//! `GET /openapi.json`: the API document, assembled from the features' own
//! parts (each derived with `utoipa` from its handlers and the types they
//! read and write), then completed with each route's error responses,
//! generated from the codes the route declares (`Route::answers`) and those
//! the toolkit gives on every route: one response per status, naming its
//! codes, so no operation's document misses a status the engine can send
//! and no handler describes its errors a second time by hand.
//!
//! Each operation's `security` is generated the same way, from the route's
//! declared access (`access::Access`): the schemes `key` (a service key,
//! its scope as the requirement's role), `player` (a player token) and
//! `admin`, with the 401/403 answers of the router's check.
//!
//! The document is also the one place a route is described: `GET /` lists
//! each route of the router with its operation's `summary` ([`index`]), so
//! the index and the document cannot disagree, and a route without a
//! documented operation stops the engine at start.

use std::collections::BTreeMap;

use hyper::{Method, StatusCode};
use serde::Serialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};

use super::access::{Access, AccessInfo, READ_SCOPE};
use super::error::{BODY_TOO_LARGE, EVERY_ROUTE, ErrorCode};
use super::route::RouteInfo;

/// One Server-Sent Event, as a `text/event-stream` response's schema: a
/// client (and schemathesis) checks each event against it. For the document
/// only: event streams write their `event:`/`data:`/`id:` lines themselves,
/// there is no type to derive it from.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // describes the event stream for the API document only
pub struct SseEvent {
    /// The event type (`event:`).
    pub event: Option<String>,
    /// The payload (`data:`), JSON text.
    pub data: String,
    /// The event id (`id:`), for `Last-Event-ID`.
    pub id: Option<String>,
}

/// The error response of one status: its codes in backticks, the
/// `ErrorBody` schema, and `Retry-After` where the status asks a client to
/// come back (every 503 carries it, and a 429 whose refusal clears by
/// itself).
fn error_response(status: StatusCode, codes: &[&str]) -> RefOr<Response> {
    let description = codes
        .iter()
        .map(|code| format!("`{code}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    );
    if matches!(status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)))
                .description(Some("seconds to wait before retrying"))
                .build(),
        );
    }
    RefOr::T(response.build())
}

/// A route's codes by status, in the order of the statuses.
fn by_status(codes: &[ErrorCode]) -> BTreeMap<u16, (StatusCode, Vec<&'static str>)> {
    let mut statuses: BTreeMap<u16, (StatusCode, Vec<&'static str>)> = BTreeMap::new();
    for code in codes {
        let entry = statuses
            .entry(code.status.as_u16())
            .or_insert((code.status, Vec::new()));
        if !entry.1.contains(&code.code) {
            entry.1.push(code.code);
        }
    }
    statuses
}

/// Whether every one of `codes` is one the toolkit gives on any route.
fn toolkit_only(codes: &[&str]) -> bool {
    codes
        .iter()
        .all(|code| EVERY_ROUTE.iter().chain([&BODY_TOO_LARGE]).any(|c| c.code == *code))
}

/// The features' documents merged into `base`, and each route's operation
/// completed with its error responses. A handler that describes by hand a
/// status a route's own codes answer is refused: the codes are said once,
/// in the route list. A handler's own answer at a status only the toolkit
/// shares (`/health`'s 503 with its `Health` body) stays.
pub fn assemble(
    mut base: OpenApi,
    parts: impl IntoIterator<Item = OpenApi>,
    routes: &[RouteInfo],
) -> Result<OpenApi, ApiDocError> {
    for part in parts {
        base.merge(part);
    }
    add_security_schemes(&mut base);
    for route in routes {
        let Some(operation) = base
            .paths
            .paths
            .get_mut(route.path)
            .and_then(|item| operation_mut(item, &route.method))
        else {
            // `index` names the route the document does not describe.
            continue;
        };
        operation.security = security(route.access);
        for (status, (code, codes)) in by_status(&route.answers) {
            let key = status.to_string();
            if operation.responses.responses.contains_key(&key) {
                if toolkit_only(&codes) {
                    continue;
                }
                return Err(ApiDocError::HandWritten {
                    method: route.method.clone(),
                    path: route.path,
                    status,
                });
            }
            operation.responses.responses.insert(key, error_response(code, &codes));
        }
    }
    Ok(base)
}

/// The schemes operations name: a service key, a player token, the admin
/// token; all sent as `Authorization: Bearer …`.
fn add_security_schemes(doc: &mut OpenApi) {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
    let components = doc.components.get_or_insert_with(Default::default);
    let bearer = |description: &str, format: Option<&str>| {
        let mut http = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(description));
        if let Some(format) = format {
            http = http.bearer_format(format);
        }
        SecurityScheme::Http(http.build())
    };
    components.add_security_scheme(
        "key",
        bearer(
            "a service key `<name>.<secret>` from STAMPEDE_API_KEYS_FILE; the requirement's role is the scope it needs",
            None,
        ),
    );
    components.add_security_scheme(
        "player",
        bearer(
            "a player token (JWT, `sub` = the player): reads only that player's data",
            Some("JWT"),
        ),
    );
    components.add_security_scheme("admin", bearer("STAMPEDE_ADMIN_TOKEN", None));
}

/// An operation's security, from its route's access: any one requirement
/// of the list suffices; none for a public route.
fn security(access: Access) -> Option<Vec<utoipa::openapi::security::SecurityRequirement>> {
    use utoipa::openapi::security::SecurityRequirement;
    match access {
        Access::Public => None,
        Access::Service(scope) => Some(vec![SecurityRequirement::new("key", [scope])]),
        Access::Player { .. } => Some(vec![
            SecurityRequirement::new("key", [READ_SCOPE]),
            SecurityRequirement::new("player", Vec::<String>::new()),
        ]),
        Access::Admin => Some(vec![SecurityRequirement::new("admin", Vec::<String>::new())]),
    }
}

/// One route as `GET /` lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IndexEntry {
    /// The summary of the route's operation in the API document.
    pub description: String,
    pub method: String,
    pub path: &'static str,
    /// Who may call it.
    pub access: AccessInfo,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiDocError {
    #[error(
        "route {method} {path} has no operation with a summary in the API document: give its handler a `#[utoipa::path]` with a `summary` and list it in its feature's `api()`"
    )]
    Undocumented { method: Method, path: &'static str },
    #[error(
        "route {method} {path}: its handler's `#[utoipa::path]` describes the {status} response its error codes answer; drop it, the route list's `answers` generate it"
    )]
    HandWritten {
        method: Method,
        path: &'static str,
        status: u16,
    },
    #[error("the API document does not serialize: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// The operation of `method` in a path item, as `$as` (`as_ref`, `as_mut`)
/// gives it.
macro_rules! operation_of {
    ($item:expr, $method:expr, $as:ident) => {
        match *$method {
            Method::GET => $item.get.$as(),
            Method::PUT => $item.put.$as(),
            Method::POST => $item.post.$as(),
            Method::DELETE => $item.delete.$as(),
            Method::PATCH => $item.patch.$as(),
            Method::HEAD => $item.head.$as(),
            Method::OPTIONS => $item.options.$as(),
            Method::TRACE => $item.trace.$as(),
            _ => None,
        }
    };
}

fn operation<'a>(item: &'a PathItem, method: &Method) -> Option<&'a Operation> {
    operation_of!(item, method, as_ref)
}

fn operation_mut<'a>(item: &'a mut PathItem, method: &Method) -> Option<&'a mut Operation> {
    operation_of!(item, method, as_mut)
}

/// Every route with its operation's summary, in the router's order; an
/// error names the first route the document does not describe.
pub fn index(doc: &OpenApi, routes: &[RouteInfo]) -> Result<Vec<IndexEntry>, ApiDocError> {
    routes
        .iter()
        .map(|route| {
            let summary = doc
                .paths
                .paths
                .get(route.path)
                .and_then(|item| operation(item, &route.method))
                .and_then(|op| op.summary.clone())
                .filter(|summary| !summary.trim().is_empty());
            match summary {
                Some(description) => Ok(IndexEntry {
                    description,
                    method: route.method.to_string(),
                    path: route.path,
                    access: route.access.info(),
                }),
                None => Err(ApiDocError::Undocumented {
                    method: route.method.clone(),
                    path: route.path,
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem, PathsBuilder};
    use utoipa::openapi::{InfoBuilder, OpenApiBuilder};

    use super::*;

    fn document(summary: Option<&str>) -> OpenApi {
        let operation = OperationBuilder::new().summary(summary).build();
        OpenApiBuilder::new()
            .info(InfoBuilder::new().title("t").version("1").build())
            .paths(
                PathsBuilder::new()
                    .path("/things/{id}", PathItem::new(HttpMethod::Get, operation))
                    .build(),
            )
            .build()
    }

    fn route(method: Method) -> RouteInfo {
        RouteInfo {
            method,
            path: "/things/{id}",
            access: Access::Public,
            answers: Vec::new(),
        }
    }

    #[test]
    fn the_index_reads_each_summary_from_the_document() {
        let entries = index(&document(Some("A thing")), &[route(Method::GET)]).expect("documented");
        assert_eq!(entries.len(), 1);
        assert_eq!(
            (
                entries[0].method.as_str(),
                entries[0].path,
                entries[0].description.as_str()
            ),
            ("GET", "/things/{id}", "A thing")
        );
    }

    #[test]
    fn a_route_the_document_does_not_describe_is_refused() {
        for (doc, method) in [
            (document(Some("A thing")), Method::POST),
            (document(None), Method::GET),
            (document(Some(" ")), Method::GET),
        ] {
            assert!(matches!(
                index(&doc, &[route(method)]),
                Err(ApiDocError::Undocumented { .. })
            ));
        }
    }
}
