//! `GET /openapi.json`: the API document, assembled from the features' own
//! parts (each derived from its handlers with `utoipa`), then completed from
//! the route list with the answers every route may give (404, 405, 413,
//! 414, 503 …), so no operation's document misses a status the toolkit can
//! send.

use utoipa::openapi::path::Operation;
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};

/// One Server-Sent Event, as a `text/event-stream` response's schema: a
/// client (and schemathesis) checks each event against it.
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
