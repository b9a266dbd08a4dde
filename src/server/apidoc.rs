//! `GET /openapi.json`: the API document, assembled from the features' own
//! parts (each derived with `utoipa` from its handlers and the types they
//! read and write), then completed with the answers every route may give
//! (405, 408, 413, 414), so no operation's document misses a status the
//! toolkit can send.
//!
//! The document is also the one place a route is described: `GET /` lists
//! each route of the router with its operation's `summary` ([`index`]), so
//! the index and the document cannot disagree, and a route without a
//! documented operation stops the engine at start.

use hyper::Method;
use serde::Serialize;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};

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

/// Answers the toolkit gives on any route, whatever the feature.
const TOOLKIT_ANSWERS: &[(&str, &str)] = &[
    (
        "405",
        "`METHOD_NOT_ALLOWED`: the path exists with other methods (see `Allow`)",
    ),
    ("408", "`BODY_TIMEOUT`: the body did not arrive within 5 s"),
    ("413", "`BODY_TOO_LARGE`: a body over 16 KiB"),
    ("414", "`URI_TOO_LONG`: a request target over 2 KiB"),
];

fn error_response(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

fn operations(doc: &mut OpenApi) -> impl Iterator<Item = &mut Operation> {
    doc.paths.paths.values_mut().flat_map(|item| {
        [
            item.get.as_mut(),
            item.put.as_mut(),
            item.post.as_mut(),
            item.delete.as_mut(),
            item.patch.as_mut(),
            item.head.as_mut(),
            item.options.as_mut(),
            item.trace.as_mut(),
        ]
        .into_iter()
        .flatten()
    })
}

/// The features' documents merged into `base`, each operation completed
/// with the toolkit's answers.
pub fn assemble(mut base: OpenApi, parts: impl IntoIterator<Item = OpenApi>) -> OpenApi {
    for part in parts {
        base.merge(part);
    }
    for operation in operations(&mut base) {
        for (status, description) in TOOLKIT_ANSWERS {
            operation
                .responses
                .responses
                .entry((*status).to_owned())
                .or_insert_with(|| error_response(description));
        }
    }
    base
}

/// One route as `GET /` lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IndexEntry {
    /// The summary of the route's operation in the API document.
    pub description: String,
    pub method: String,
    pub path: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiDocError {
    #[error(
        "route {method} {path} has no operation with a summary in the API document: give its handler a `#[utoipa::path]` with a `summary` and list it in its feature's `api()`"
    )]
    Undocumented { method: Method, path: &'static str },
    #[error("the API document does not serialize: {0}")]
    Serialize(#[from] serde_json::Error),
}

fn operation<'a>(item: &'a PathItem, method: &Method) -> Option<&'a Operation> {
    match *method {
        Method::GET => item.get.as_ref(),
        Method::PUT => item.put.as_ref(),
        Method::POST => item.post.as_ref(),
        Method::DELETE => item.delete.as_ref(),
        Method::PATCH => item.patch.as_ref(),
        Method::HEAD => item.head.as_ref(),
        Method::OPTIONS => item.options.as_ref(),
        Method::TRACE => item.trace.as_ref(),
        _ => None,
    }
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
