//! Request and response helpers shared by every handler.

use std::borrow::Cow;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::RequestError;
use crate::limits::{REQUEST_BODY_BYTES_MAX, REQUEST_BODY_READ_TIMEOUT};

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
