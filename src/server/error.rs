//! How an error becomes an HTTP response. The toolkit defines the trait; each
//! feature's error enum implements it in the feature's own folder, so this
//! module never names a feature and a new feature adds no line here.

use std::borrow::Cow;

use hyper::StatusCode;
use hyper::header::{ALLOW, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use serde::Serialize;
use serde::ser::SerializeMap;

use super::RequestError;
use super::http::{HttpResponse, json};
use crate::redis::lua::ScriptError;

/// A status and the stable machine-readable code clients switch on.
/// Declared with [`ErrorCode::new`] where an error maps itself, so a test can
/// collect every code from the source and check the guides (docs/) list it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub status: StatusCode,
    pub code: &'static str,
}

impl ErrorCode {
    pub const fn new(status: StatusCode, code: &'static str) -> Self {
        Self { status, code }
    }
}

// The toolkit's codes: the requests any route may get wrong, the admin guard
// and the script calls. A route lists those it may answer (`Route::answers`)
// beside its feature's; the ones the router and the listener give on every
// route are `EVERY_ROUTE`.
pub const INVALID_JSON: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "INVALID_JSON");
pub const BODY_TOO_LARGE: ErrorCode = ErrorCode::new(StatusCode::PAYLOAD_TOO_LARGE, "BODY_TOO_LARGE");
pub const BODY_TIMEOUT: ErrorCode = ErrorCode::new(StatusCode::REQUEST_TIMEOUT, "BODY_TIMEOUT");
pub const BODY_UNREADABLE: ErrorCode = ErrorCode::new(StatusCode::BAD_REQUEST, "BODY_UNREADABLE");
pub const URI_TOO_LONG: ErrorCode = ErrorCode::new(StatusCode::URI_TOO_LONG, "URI_TOO_LONG");
pub const NOT_FOUND: ErrorCode = ErrorCode::new(StatusCode::NOT_FOUND, "NOT_FOUND");
pub const METHOD_NOT_ALLOWED: ErrorCode = ErrorCode::new(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED");
pub const UNAUTHORIZED: ErrorCode = ErrorCode::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
pub const ADMIN_DISABLED: ErrorCode = ErrorCode::new(StatusCode::FORBIDDEN, "ADMIN_DISABLED");
pub const FORBIDDEN: ErrorCode = ErrorCode::new(StatusCode::FORBIDDEN, "FORBIDDEN");
pub const REDIS_UNAVAILABLE: ErrorCode = ErrorCode::new(StatusCode::SERVICE_UNAVAILABLE, "REDIS_UNAVAILABLE");
pub const OVERLOADED: ErrorCode = ErrorCode::new(StatusCode::SERVICE_UNAVAILABLE, "OVERLOADED");
pub const INTERNAL: ErrorCode = ErrorCode::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL");

/// What the router and the listener may answer on any route, whatever it
/// declares: a path with other methods, a request target over the bound, a
/// connection over the connection bound (the canned `OVERLOADED`). A route
/// that does not bound its own body adds `BODY_TOO_LARGE` (see
/// `Route::with_own_body_limit`).
pub const EVERY_ROUTE: &[ErrorCode] = &[METHOD_NOT_ALLOWED, URI_TOO_LONG, OVERLOADED];

/// What a route that reads a JSON body (`http::read_json`, `http::read_body`)
/// may answer.
pub const BODY_ANSWERS: &[ErrorCode] = &[INVALID_JSON, BODY_UNREADABLE, BODY_TIMEOUT];

/// What the router answers on an admin route (`access::Access::Admin`).
pub const ADMIN_ANSWERS: &[ErrorCode] = &[UNAUTHORIZED, ADMIN_DISABLED];

/// What the router answers on a route that takes a service key or a player
/// token (`access::Access::Service`, `Player`).
pub const CREDENTIAL_ANSWERS: &[ErrorCode] = &[UNAUTHORIZED, FORBIDDEN];

/// What a route that calls a Lua script may answer (`ScriptError`).
pub const SCRIPT_ANSWERS: &[ErrorCode] = &[REDIS_UNAVAILABLE, OVERLOADED, INTERNAL];

/// An error a handler may return. The `Display` text is the message shown to
/// the client, unless [`ApiError::is_internal`] says it is not for them.
pub trait ApiError: std::error::Error + Send + Sync + 'static {
    fn error_code(&self) -> ErrorCode;

    /// Seconds a client should wait before retrying. Every 503 is a pass
    /// that clears by itself (Redis back, backlog drained), so it says 1.
    fn retry_after_secs(&self) -> Option<u32> {
        (self.error_code().status == StatusCode::SERVICE_UNAVAILABLE).then_some(1)
    }

    /// Infrastructure errors are logged in full and answered with a generic
    /// message: their text may name hosts, keys or SQL.
    fn is_internal(&self) -> bool {
        false
    }

    /// For 401 and 403: the `WWW-Authenticate` challenge (RFC 6750 §3).
    fn challenge(&self) -> Option<&'static str> {
        None
    }

    /// For 405: the methods the path does allow.
    fn allow(&self) -> Option<&str> {
        None
    }

    /// One more field of the error object beside `code` and `message`, for
    /// an error that names something the client can look up: e.g. the id of
    /// what a request whose outcome is unknown may have made.
    fn extra_field(&self) -> Option<(&'static str, &str)> {
        None
    }
}

/// Every error: `{"error":{"code":"ITEM_SOLD","message":"item already sold"}}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

/// `code` and `message`, and, for some errors, one more field naming what
/// to look up (e.g. `order_id` of an order whose outcome is unknown).
#[derive(utoipa::ToSchema)]
pub struct ErrorDetail<'a> {
    /// Stable: clients switch on it.
    code: &'a str,
    /// For people; may change.
    #[schema(value_type = String)]
    message: Cow<'a, str>,
    #[schema(ignore)]
    extra: Option<(&'static str, &'a str)>,
}

impl Serialize for ErrorDetail<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2 + usize::from(self.extra.is_some())))?;
        map.serialize_entry("code", self.code)?;
        map.serialize_entry("message", &self.message)?;
        if let Some((name, value)) = self.extra {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// `{"error":{"code":…,"message":…}}` with the error's status, `Retry-After`
/// and `Allow` where they apply.
pub fn error_response(error: &dyn ApiError) -> HttpResponse {
    let ErrorCode { status, code } = error.error_code();
    let message: Cow<str> = if error.is_internal() {
        tracing::error!(error = %error, code, "request failed");
        Cow::Borrowed("the engine could not complete the request; retry later")
    } else {
        Cow::Owned(error.to_string())
    };
    let mut response = json(
        status,
        &ErrorBody {
            error: ErrorDetail {
                code,
                message,
                extra: error.extra_field(),
            },
        },
    );
    if let Some(secs) = error.retry_after_secs() {
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(challenge) = error.challenge() {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    }
    if let Some(allow) = error.allow().and_then(|a| HeaderValue::from_str(a).ok()) {
        response.headers_mut().insert(ALLOW, allow);
    }
    response
}

/// The response of a handler's result.
pub fn respond<E: ApiError>(result: Result<HttpResponse, E>) -> HttpResponse {
    result.unwrap_or_else(|e| error_response(&e))
}

/// For handlers that cannot fail.
impl ApiError for std::convert::Infallible {
    fn error_code(&self) -> ErrorCode {
        match *self {}
    }
}

impl ApiError for RequestError {
    fn error_code(&self) -> ErrorCode {
        match self {
            RequestError::InvalidJson(_) => INVALID_JSON,
            RequestError::BodyTooLarge => BODY_TOO_LARGE,
            RequestError::BodyTimeout => BODY_TIMEOUT,
            RequestError::BodyRead => BODY_UNREADABLE,
            RequestError::UriTooLong => URI_TOO_LONG,
            RequestError::NotFound => NOT_FOUND,
            RequestError::MethodNotAllowed { .. } => METHOD_NOT_ALLOWED,
            RequestError::Unauthorized => UNAUTHORIZED,
            RequestError::AdminDisabled => ADMIN_DISABLED,
            RequestError::CredentialMissing | RequestError::CredentialInvalid => UNAUTHORIZED,
            RequestError::Forbidden => FORBIDDEN,
        }
    }

    fn challenge(&self) -> Option<&'static str> {
        match self {
            RequestError::Unauthorized | RequestError::CredentialMissing => Some("Bearer"),
            RequestError::CredentialInvalid => Some(r#"Bearer error="invalid_token""#),
            RequestError::Forbidden => Some(r#"Bearer error="insufficient_scope""#),
            _ => None,
        }
    }

    fn allow(&self) -> Option<&str> {
        match self {
            RequestError::MethodNotAllowed { allow } => Some(allow),
            _ => None,
        }
    }
}

impl ApiError for ScriptError {
    fn error_code(&self) -> ErrorCode {
        match self {
            ScriptError::Redis(_) => REDIS_UNAVAILABLE,
            ScriptError::Overloaded => OVERLOADED,
            ScriptError::UnexpectedReply { .. } => INTERNAL,
        }
    }

    fn is_internal(&self) -> bool {
        !matches!(self, ScriptError::Overloaded)
    }
}
