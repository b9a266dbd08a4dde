//! The one place where errors become HTTP responses: status, stable code,
//! message. Feature modules return their own typed errors; this maps them.

use hyper::StatusCode;

use crate::ingest::IngestError;
use crate::outbox::FlushError;
use crate::sale::SaleError;
use crate::sale::domain::Param;
use crate::scripts::ScriptError;
use crate::server::RequestError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Sale(#[from] SaleError),
    #[error(transparent)]
    Script(#[from] ScriptError),
    #[error(transparent)]
    Flush(#[from] FlushError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

impl ApiError {
    /// Status and stable machine-readable code. Clients switch on the code;
    /// the message is for people.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            ApiError::Request(e) => match e {
                RequestError::Missing(Param::UserId) => (S::BAD_REQUEST, "MISSING_USER_ID"),
                RequestError::Missing(Param::ItemId) => (S::BAD_REQUEST, "MISSING_ITEM_ID"),
                RequestError::Missing(Param::Code) => (S::BAD_REQUEST, "MISSING_CODE"),
                RequestError::Invalid(Param::UserId, _) => (S::BAD_REQUEST, "INVALID_USER_ID"),
                RequestError::Invalid(Param::ItemId, _) => (S::BAD_REQUEST, "INVALID_ITEM_ID"),
                RequestError::Invalid(Param::Code, _) => (S::BAD_REQUEST, "INVALID_CODE"),
                RequestError::InvalidJson(_) => (S::BAD_REQUEST, "INVALID_JSON"),
                RequestError::BodyTooLarge => (S::PAYLOAD_TOO_LARGE, "BODY_TOO_LARGE"),
                RequestError::BodyTimeout => (S::REQUEST_TIMEOUT, "BODY_TIMEOUT"),
                RequestError::BodyRead => (S::BAD_REQUEST, "BODY_UNREADABLE"),
                RequestError::UriTooLong => (S::URI_TOO_LONG, "URI_TOO_LONG"),
                RequestError::NotFound => (S::NOT_FOUND, "NOT_FOUND"),
                RequestError::MethodNotAllowed { .. } => (S::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
            },
            ApiError::Sale(e) => match e {
                SaleError::ItemNotFound => (S::NOT_FOUND, "ITEM_NOT_FOUND"),
                SaleError::ItemSold => (S::CONFLICT, "ITEM_SOLD"),
                SaleError::UserLimitReached => (S::FORBIDDEN, "USER_LIMIT_REACHED"),
                SaleError::TooManyCheckouts => (S::TOO_MANY_REQUESTS, "TOO_MANY_CHECKOUTS"),
                SaleError::CodeNotFound => (S::NOT_FOUND, "CODE_NOT_FOUND"),
                SaleError::CodeUsed => (S::CONFLICT, "CODE_USED"),
                SaleError::CodeExpired => (S::GONE, "CODE_EXPIRED"),
                SaleError::SaleOver => (S::GONE, "SALE_OVER"),
                SaleError::OutboxFull => (S::SERVICE_UNAVAILABLE, "OUTBOX_FULL"),
                SaleError::Script(e) => script_status(e),
            },
            ApiError::Script(e) => script_status(e),
            ApiError::Flush(_) => (S::SERVICE_UNAVAILABLE, "BACKLOG_UNAVAILABLE"),
            ApiError::Ingest(e) => match e {
                IngestError::Busy => (S::TOO_MANY_REQUESTS, "INGEST_BUSY"),
                IngestError::NotMultipart => (S::UNSUPPORTED_MEDIA_TYPE, "NOT_MULTIPART"),
                IngestError::MissingFileField => (S::BAD_REQUEST, "MISSING_FILE_FIELD"),
                IngestError::UnsupportedFileType(_) => (S::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_FILE_TYPE"),
                IngestError::EmptyFile => (S::BAD_REQUEST, "EMPTY_FILE"),
                IngestError::TooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "UPLOAD_TOO_LARGE"),
                IngestError::Stalled { .. } => (S::REQUEST_TIMEOUT, "UPLOAD_STALLED"),
                IngestError::Interrupted { .. } => (S::BAD_REQUEST, "UPLOAD_INTERRUPTED"),
                IngestError::Malformed { .. } => (S::BAD_REQUEST, "MALFORMED_MULTIPART"),
                IngestError::Store { .. } | IngestError::Postgres(_) => (S::SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE"),
                IngestError::InvalidPlayerId(_) => (S::BAD_REQUEST, "INVALID_PLAYER_ID"),
                IngestError::PlayerNotFound => (S::NOT_FOUND, "PLAYER_NOT_FOUND"),
            },
        }
    }

    /// Seconds a client should wait before retrying, for refusals that pass.
    pub fn retry_after_secs(&self) -> Option<u32> {
        if matches!(self, ApiError::Ingest(IngestError::Busy)) {
            return Some(1);
        }
        match self.status_and_code().0 {
            StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        }
    }

    /// Whether the message may be shown to the client. Infrastructure errors
    /// are logged in full and answered with a generic message.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            ApiError::Script(_)
                | ApiError::Flush(_)
                | ApiError::Sale(SaleError::Script(_))
                | ApiError::Ingest(IngestError::Postgres(_))
        )
    }
}

fn script_status(e: &ScriptError) -> (StatusCode, &'static str) {
    match e {
        ScriptError::Redis(_) => (StatusCode::SERVICE_UNAVAILABLE, "REDIS_UNAVAILABLE"),
        ScriptError::UnexpectedReply { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
    }
}
