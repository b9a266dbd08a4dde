//! Request and response helpers shared by every handler.

use std::borrow::Cow;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{HeaderMap, Request, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::RequestError;
use crate::limits::{IDEMPOTENCY_KEY_BYTES_MAX, REQUEST_BODY_BYTES_MAX, REQUEST_BODY_READ_TIMEOUT};

/// A response body: most are one buffer; event streams and CSV downloads
/// are streamed, hence the box.
pub type ResponseBody = BoxBody<Bytes, BodyError>;
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;
pub type HttpResponse = Response<ResponseBody>;

/// A body of one buffer.
pub fn full(body: Bytes) -> ResponseBody {
    Full::new(body).map_err(|never| match never {}).boxed()
}

/// Query parameters, decoded once per request.
pub struct Query<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> Query<'a> {
    pub fn parse(query: Option<&'a str>) -> Self {
        Self(form_urlencoded::parse(query.unwrap_or("").as_bytes()).collect())
    }

    /// The first value of the first of `names` that is present.
    pub fn get(&self, names: &[&str]) -> Option<&str> {
        names
            .iter()
            .find_map(|name| self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_ref()))
    }

    /// A page of a list read newest first, by keyset: `limit` (1 to `max`;
    /// `default` when absent) and `before` (a positive cursor, the previous
    /// page's `next_before`; none for the first page).
    pub fn page(&self, default: i64, max: i64) -> Result<Page, PageError> {
        let limit = match self.get(&["limit"]) {
            None => default,
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|l| (1..=max).contains(l))
                .ok_or(PageError::Limit)?,
        };
        let before = match self.get(&["before"]) {
            None => None,
            Some(raw) => Some(raw.parse::<i64>().ok().filter(|b| *b > 0).ok_or(PageError::Before)?),
        };
        Ok(Page { limit, before })
    }
}

/// Which page of a list a request asks for (see [`Query::page`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub before: Option<i64>,
}

impl Page {
    /// The cursor of the next page: the last key of a full page; none once a
    /// page comes back short.
    pub fn next_before(&self, rows: usize, last: Option<i64>) -> Option<i64> {
        (rows as i64 == self.limit).then_some(last).flatten()
    }
}

/// Which page parameter is out of its range; each feature answers with its
/// own error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageError {
    Limit,
    Before,
}

/// Refuses a body whose declared size is over the bound before reading it.
pub fn check_declared_size<B: Body>(req: &Request<B>) -> Result<(), RequestError> {
    match req.body().size_hint().upper() {
        Some(declared) if declared > REQUEST_BODY_BYTES_MAX as u64 => Err(RequestError::BodyTooLarge),
        _ => Ok(()),
    }
}

/// Reads a body of at most the bound, within the read timeout.
pub async fn read_body(req: Request<Incoming>) -> Result<Bytes, RequestError> {
    check_declared_size(&req)?;
    let limited = Limited::new(req.into_body(), REQUEST_BODY_BYTES_MAX);
    match tokio::time::timeout(REQUEST_BODY_READ_TIMEOUT, limited.collect()).await {
        Err(_) => Err(RequestError::BodyTimeout),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(RequestError::BodyTooLarge),
        Ok(Err(_)) => Err(RequestError::BodyRead),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    match serde_json::to_vec(value) {
        Ok(body) => with_content_type(status, body.into(), "application/json"),
        Err(e) => {
            tracing::error!(error = %e, "response did not serialize");
            with_content_type(
                StatusCode::INTERNAL_SERVER_ERROR,
                Bytes::from_static(br#"{"error":{"code":"INTERNAL","message":"internal error"}}"#),
                "application/json",
            )
        }
    }
}

pub fn with_content_type(status: StatusCode, body: Bytes, content_type: &'static str) -> HttpResponse {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Reads a bounded body and parses it as JSON of `T`. An empty body is
/// parsed as `{}`, so a type whose fields are all optional accepts it.
pub async fn read_json<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, RequestError> {
    let body = read_body(req).await?;
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    serde_json::from_slice(text).map_err(|e| RequestError::InvalidJson(e.to_string()))
}

/// A time in milliseconds since the epoch as every answer writes it: RFC 3339
/// in UTC with milliseconds (`2025-01-01T00:00:00.000Z`). Empty for a time
/// RFC 3339 cannot write (before year 0 or after 9999), which no clock gives.
pub fn rfc3339(ms: i64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(format).ok())
        .unwrap_or_default()
}

/// An `Idempotency-Key` header: 1 to [`IDEMPOTENCY_KEY_BYTES_MAX`] printable
/// ASCII characters (a space included, as in a structured-field string). The
/// one parser of the header: each feature answers a bad key with its own
/// error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

/// The header is present but not a valid key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "Idempotency-Key must be 1 to {} printable ASCII characters",
    IDEMPOTENCY_KEY_BYTES_MAX
)]
pub struct InvalidIdempotencyKey;

impl IdempotencyKey {
    /// The request's key, if it sent one.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, InvalidIdempotencyKey> {
        let Some(value) = headers.get("idempotency-key") else {
            return Ok(None);
        };
        let bytes = value.as_bytes();
        if bytes.is_empty()
            || bytes.len() > IDEMPOTENCY_KEY_BYTES_MAX
            || !bytes.iter().all(|b| (0x20..=0x7e).contains(b))
        {
            return Err(InvalidIdempotencyKey);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| InvalidIdempotencyKey)?;
        Ok(Some(Self(text.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_in_utc_with_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_735_689_600_123), "2025-01-01T00:00:00.123Z");
        assert_eq!(rfc3339(i64::MAX), "");
    }

    #[test]
    fn pages_are_bounded() {
        let page = |q: &str| Query::parse(Some(q)).page(50, 500);
        assert_eq!(
            page(""),
            Ok(Page {
                limit: 50,
                before: None
            })
        );
        assert_eq!(
            page("limit=500&before=7"),
            Ok(Page {
                limit: 500,
                before: Some(7)
            })
        );
        assert_eq!(page("limit=0"), Err(PageError::Limit));
        assert_eq!(page("limit=501"), Err(PageError::Limit));
        assert_eq!(page("limit=x"), Err(PageError::Limit));
        assert_eq!(page("before=0"), Err(PageError::Before));
        assert_eq!(page("before=-1"), Err(PageError::Before));
        let full = Page { limit: 2, before: None };
        assert_eq!(full.next_before(2, Some(9)), Some(9));
        assert_eq!(full.next_before(1, Some(9)), None);
    }

    #[test]
    fn idempotency_keys_are_bounded_printable_ascii() {
        let headers = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert("idempotency-key", HeaderValue::from_bytes(v).expect("header value"));
            h
        };
        let key = |v: &[u8]| IdempotencyKey::from_headers(&headers(v));
        assert_eq!(IdempotencyKey::from_headers(&HeaderMap::new()), Ok(None));
        assert_eq!(
            key(b"abc-123 x").expect("ok").as_ref().map(IdempotencyKey::as_str),
            Some("abc-123 x")
        );
        assert!(key(&[b'k'; IDEMPOTENCY_KEY_BYTES_MAX]).expect("the longest").is_some());
        assert_eq!(key(&[b'k'; IDEMPOTENCY_KEY_BYTES_MAX + 1]), Err(InvalidIdempotencyKey));
        assert_eq!(key(b""), Err(InvalidIdempotencyKey));
        assert_eq!(key(b"a\tb"), Err(InvalidIdempotencyKey));
        assert_eq!(key(&[0xc3, 0xa9]), Err(InvalidIdempotencyKey));
    }
}
