//! Request and response helpers shared by every handler.

use std::borrow::Cow;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

use super::RequestError;
use crate::error::ApiError;
use crate::limits::{REQUEST_BODY_BYTES_MAX, REQUEST_BODY_READ_TIMEOUT};

pub type HttpResponse = Response<Full<Bytes>>;

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
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: Cow<'a, str>,
}

pub fn error_response(error: &ApiError) -> HttpResponse {
    let (status, code) = error.status_and_code();
    let message: Cow<str> = if error.is_internal() {
        tracing::error!(error = %error, code, "request failed");
        Cow::Borrowed("the engine could not complete the request; retry later")
    } else {
        Cow::Owned(error.to_string())
    };
    let mut response = json(
        status,
        &ErrorBody {
            error: ErrorDetail { code, message },
        },
    );
    if let Some(secs) = error.retry_after_secs() {
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if let ApiError::Request(RequestError::MethodNotAllowed { allow }) = error {
        response.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    }
    response
}
