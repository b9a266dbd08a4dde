//! `POST /ingest` and `GET /players/{id}`.

use std::collections::VecDeque;
use std::error::Error as _;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, StatusCode};
use multer::{Constraints, Multipart, SizeLimit};
use serde::Serialize;

use super::framing::{Framing, FramingBounds, FramingError};
use super::limits::{
    INGEST_ID_BYTES_MAX, INGEST_MULTIPART_PREAMBLE_BYTES_MAX, INGEST_OTHER_FIELD_BYTES_MAX,
    INGEST_PART_HEADER_BYTES_MAX, MULTIPART_BOUNDARY_BYTES_MAX,
};
use super::metrics;
use super::pipeline::{IngestReport, RejectedLine, Upload};
use super::{Ingest, IngestError};
use crate::server::error::ErrorBody;
use crate::server::http::{HttpResponse, json};

/// Ingest's part of `GET /openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(ingest, player),
    components(schemas(IngestReport, RejectedLine, PlayerLoyalty, CurrencySpend, ErrorBody))
)]
pub struct IngestApi;

/// The multipart form `POST /ingest` takes.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // describes the request for the API document only
struct IngestForm {
    /// NDJSON, one purchase per line (docs/ingest.md: "The purchase line").
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// The multipart field that carries the file, as clients send it:
/// `curl -F "file=@data/purchases.ndjson"`.
const FILE_FIELD: &str = "file";

/// Content types a client may give the file part. curl sends
/// `application/octet-stream` for an `.ndjson` file, so it must pass; what is
/// refused is what is clearly something else (an image, a zip, a CSV).
const FILE_CONTENT_TYPES: &[&str] = &[
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
    "application/x-jsonlines",
    "application/jsonlines",
    "application/json",
    "application/octet-stream",
    "text/plain",
    "text/x-ndjson",
];

#[utoipa::path(
    post,
    path = "/ingest",
    tag = "ingest",
    summary = "Upload purchases as NDJSON; upserted by transaction_id with exact counts",
    request_body(content = IngestForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "every line committed or rejected", body = IngestReport),
    )
)]
pub async fn ingest(state: &Ingest, req: Request<Incoming>) -> Result<HttpResponse, IngestError> {
    let result = receive(state, req).await;
    if let Err(IngestError::Store { committed, source }) = &result {
        tracing::error!(committed, error = %source, "ingest stopped: postgres failed");
    }
    metrics::ingest_upload(match &result {
        Ok(_) => "ok",
        Err(IngestError::Store { .. }) => "store_failed",
        Err(_) => "refused",
    });
    let report = result?;
    Ok(json(StatusCode::OK, &report))
}

async fn receive(state: &Ingest, req: Request<Incoming>) -> Result<IngestReport, IngestError> {
    let _slot = state.uploads.try_acquire().map_err(|_| IngestError::Busy)?;
    let ingest = &state.settings;
    let (limit, idle) = (ingest.max_bytes, ingest.idle_timeout);
    let boundary = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| multer::parse_boundary(value).ok())
        .ok_or(IngestError::NotMultipart)?;
    if boundary.len() > MULTIPART_BOUNDARY_BYTES_MAX {
        return Err(IngestError::Malformed {
            reason: format!("the boundary is longer than {MULTIPART_BOUNDARY_BYTES_MAX} bytes (RFC 2046)"),
            committed: 0,
        });
    }
    if hyper::body::Body::size_hint(req.body()).lower() > limit {
        return Err(IngestError::TooLarge { limit, committed: 0 });
    }
    let constraints = Constraints::new().size_limit(
        SizeLimit::new()
            .whole_stream(limit)
            .per_field(INGEST_OTHER_FIELD_BYTES_MAX)
            .for_field(FILE_FIELD, limit),
    );
    let framing = Framing::new(
        &boundary,
        FramingBounds {
            preamble_bytes: INGEST_MULTIPART_PREAMBLE_BYTES_MAX,
            part_header_bytes: INGEST_PART_HEADER_BYTES_MAX,
            body_bytes: limit,
        },
    );
    let body = guarded(body_chunks(req.into_body(), idle), framing);
    let mut multipart = Multipart::with_constraints(body, boundary, constraints);

    let mut upload = Upload::start(state.ctx.postgres.clone(), ingest.batch_rows, ingest.writers);
    let mut saw_file = false;
    let mut saw_field = false;
    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(multer::Error::IncompleteStream) if !saw_field => {
                return Err(IngestError::Malformed {
                    reason: "no multipart part before the end of the body".into(),
                    committed: upload.abandon().await,
                });
            }
            Err(e) => return Err(interrupted(e, limit, idle, upload.abandon().await)),
        };
        saw_field = true;
        let is_file = field.name() == Some(FILE_FIELD) && !saw_file;
        if is_file {
            saw_file = true;
            let content_type = field.content_type().map(|m| m.essence_str().to_owned());
            if let Some(content_type) = content_type.filter(|ct| !FILE_CONTENT_TYPES.contains(&ct.as_str())) {
                upload.abandon().await;
                return Err(IngestError::UnsupportedFileType(content_type));
            }
        }
        // Other fields, and any second file, are read (within their bound)
        // and ignored.
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) if is_file => upload.feed(&chunk).await?,
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => return Err(interrupted(e, limit, idle, upload.abandon().await)),
            }
        }
    }
    if !saw_file {
        upload.abandon().await;
        return Err(IngestError::MissingFileField);
    }
    let report = upload.finish().await?;
    if report.total == 0 {
        return Err(IngestError::EmptyFile);
    }
    metrics::ingest_lines(report.created, report.updated, report.unchanged, report.rejected);
    Ok(report)
}

/// Why the multipart stream stopped early, told apart so the client learns
/// whether to shrink, speed up or fix its upload.
fn interrupted(error: multer::Error, limit: u64, idle: Duration, committed: u64) -> IngestError {
    match error {
        multer::Error::StreamSizeExceeded { .. } => IngestError::TooLarge { limit, committed },
        multer::Error::FieldSizeExceeded { limit, .. } => IngestError::TooLarge { limit, committed },
        multer::Error::StreamReadFailed(cause) => match cause.downcast_ref::<BodyError>() {
            Some(BodyError::Stalled) => IngestError::Stalled { idle, committed },
            Some(BodyError::Framing(FramingError::Preamble { max })) => IngestError::PreambleTooLarge { max: *max },
            Some(BodyError::Framing(FramingError::PartHeaders { max })) => {
                IngestError::PartHeadersTooLarge { max: *max, committed }
            }
            Some(BodyError::Framing(FramingError::Body { .. })) => IngestError::TooLarge { limit, committed },
            _ => IngestError::Interrupted { committed },
        },
        multer::Error::IncompleteStream | multer::Error::IncompleteFieldData { .. } => {
            IngestError::Interrupted { committed }
        }
        other => IngestError::Malformed {
            reason: other.to_string(),
            committed,
        },
    }
}

#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("no bytes received within the idle timeout")]
    Stalled,
    #[error("reading the body: {0}")]
    Read(#[from] hyper::Error),
    #[error(transparent)]
    Framing(#[from] FramingError),
}

/// The body as multer may see it: through [`Framing`], which fails as soon
/// as the preamble or a part's header block passes its bound.
fn guarded(
    body: impl Stream<Item = Result<Bytes, BodyError>> + Send + 'static,
    framing: Framing,
) -> impl Stream<Item = Result<Bytes, BodyError>> + Send + 'static {
    let state = (Box::pin(body), framing, VecDeque::<Bytes>::new(), false);
    futures_util::stream::unfold(state, |(mut body, mut framing, mut ready, mut ended)| async move {
        loop {
            if let Some(piece) = ready.pop_front() {
                return Some((Ok(piece), (body, framing, ready, ended)));
            }
            if ended {
                return None;
            }
            let failed = match body.next().await {
                Some(Ok(chunk)) => framing.push(chunk, &mut ready).err().map(BodyError::from),
                Some(Err(e)) => Some(e),
                None => {
                    framing.finish(&mut ready);
                    ended = true;
                    None
                }
            };
            if let Some(e) = failed {
                // Nothing more is read after a failure.
                ready.clear();
                return Some((Err(e), (body, framing, ready, true)));
            }
        }
    })
}

/// The request body as a stream of data chunks, failing when the client
/// sends nothing for the idle timeout (a stalled upload would otherwise hold
/// an upload slot and a Postgres connection forever).
fn body_chunks(body: Incoming, idle: Duration) -> impl Stream<Item = Result<Bytes, BodyError>> + Send + 'static {
    futures_util::stream::unfold(Some(body), move |body| async move {
        let mut body = body?;
        loop {
            match tokio::time::timeout(idle, body.frame()).await {
                Err(_) => return Some((Err(BodyError::Stalled), None)),
                Ok(None) => return None,
                Ok(Some(Err(e))) => {
                    tracing::debug!(error = %e, source = ?e.source(), "upload body failed");
                    return Some((Err(BodyError::Read(e)), None));
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        return Some((Ok(data), Some(body)));
                    }
                    // Trailers carry nothing we use.
                }
            }
        }
    })
}

#[derive(Serialize, utoipa::ToSchema)]
struct PlayerLoyalty {
    player_id: String,
    purchase_count: i64,
    tier: &'static str,
    spend: Vec<CurrencySpend>,
}

#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
struct CurrencySpend {
    currency: String,
    purchases: i64,
    total_minor: i64,
    /// `total_minor` in major units, as an exact decimal string.
    #[sqlx(skip)]
    total: String,
}

/// Loyalty tiers by purchases over every platform and currency (spend cannot
/// rank players across currencies without exchange rates).
const TIERS: &[(i64, &str)] = &[(50, "platinum"), (20, "gold"), (5, "silver"), (1, "bronze")];

#[utoipa::path(
    get,
    path = "/players/{id}",
    tag = "ingest",
    summary = "A player's loyalty: purchases, spend per currency, tier",
    params(("id" = String, Path, description = "player id, percent-encoded")),
    responses(
        (status = 200, description = "the player's loyalty", body = PlayerLoyalty),
    )
)]
pub async fn player(state: &Ingest, raw_id: &str) -> Result<HttpResponse, IngestError> {
    let player_id = percent_decoded(raw_id)?;
    let mut spend: Vec<CurrencySpend> = sqlx::query_as(
        "SELECT currency, purchases, total_minor FROM player_spend
         WHERE player_id = $1 AND purchases > 0 ORDER BY currency",
    )
    .bind(&player_id)
    .fetch_all(&state.ctx.postgres)
    .await?;
    if spend.is_empty() {
        return Err(IngestError::PlayerNotFound);
    }
    for row in &mut spend {
        row.total = major_units(row.total_minor, &row.currency);
    }
    let purchase_count = spend.iter().map(|s| s.purchases).sum();
    let tier = TIERS
        .iter()
        .find(|(at_least, _)| purchase_count >= *at_least)
        .map_or("none", |(_, name)| name);
    Ok(json(
        StatusCode::OK,
        &PlayerLoyalty {
            player_id,
            purchase_count,
            tier,
            spend,
        },
    ))
}

fn percent_decoded(raw: &str) -> Result<String, IngestError> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| IngestError::InvalidPlayerId("not UTF-8 once percent-decoded"))?;
    if decoded.is_empty() {
        return Err(IngestError::InvalidPlayerId("empty"));
    }
    if decoded.len() > INGEST_ID_BYTES_MAX {
        return Err(IngestError::InvalidPlayerId("too long"));
    }
    Ok(decoded.into_owned())
}

/// 1234 USD cents is "12.34"; 1500 JPY is "1500".
fn major_units(minor: i64, currency: &str) -> String {
    let exponent = iso_currency::Currency::from_code(currency)
        .and_then(|c| c.exponent())
        .map_or(0, u32::from);
    if exponent == 0 {
        return minor.to_string();
    }
    let scale = 10_i64.pow(exponent);
    format!("{}.{:0width$}", minor / scale, minor % scale, width = exponent as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_units_are_exact() {
        assert_eq!(major_units(1234, "USD"), "12.34");
        assert_eq!(major_units(5, "EUR"), "0.05");
        assert_eq!(major_units(1500, "JPY"), "1500");
        assert_eq!(major_units(1234, "KWD"), "1.234");
    }

    #[test]
    fn player_ids_are_percent_decoded_and_bounded() {
        assert_eq!(percent_decoded("p%2D1").unwrap(), "p-1");
        assert_eq!(percent_decoded("a+b").unwrap(), "a+b");
        assert!(percent_decoded("%FF").is_err());
        assert!(percent_decoded("").is_err());
        assert!(percent_decoded(&"x".repeat(INGEST_ID_BYTES_MAX + 1)).is_err());
    }
}
