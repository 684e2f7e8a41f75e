//! One error type for every handler, rendered as
//! `{"error":{"code":…,"message":…}}` with the right status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::openapi::{ErrorBody, ErrorCode, ErrorDetail};
use crate::store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized,
    /// A sign-in with an unknown username or a wrong password: 401 that says
    /// so (not "send a token", which is what [`ApiError::Unauthorized`] says).
    WrongCredentials,
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    Unprocessable(String),
    PayloadTooLarge(String),
    UnsupportedMediaType(String),
    TooManyRequests(String),
    /// A bounded resource (photo decode slots) stayed busy: 503 with
    /// `Retry-After`.
    Busy {
        message: String,
        retry_after_s: u64,
    },
    /// The database cannot be reached right now: 503, retry later.
    Unavailable(String),
    /// Storage failed: the client gets a short message, the log gets the cause.
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
            // The request carried something the database cannot hold (a
            // value out of range, text with U+0000): the client's to fix.
            StoreError::Refused(m) => ApiError::Unprocessable(m),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        use ErrorCode as C;
        let mut retry_after = None;
        let (status, code, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, C::BadRequest, m),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                C::Unauthorized,
                "send Authorization: Bearer <token>".to_owned(),
            ),
            ApiError::WrongCredentials => (
                StatusCode::UNAUTHORIZED,
                C::Unauthorized,
                "unknown username or wrong password".to_owned(),
            ),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, C::Forbidden, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, C::NotFound, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, C::Conflict, m),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, C::Unprocessable, m),
            ApiError::PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, C::TooLarge, m),
            ApiError::UnsupportedMediaType(m) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                C::UnsupportedMediaType,
                m,
            ),
            ApiError::TooManyRequests(m) => (StatusCode::TOO_MANY_REQUESTS, C::RateLimited, m),
            ApiError::Busy {
                message,
                retry_after_s,
            } => {
                retry_after = Some(retry_after_s);
                (StatusCode::SERVICE_UNAVAILABLE, C::Unavailable, message)
            }
            ApiError::Unavailable(cause) => {
                tracing::warn!(%cause, "database unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    C::Unavailable,
                    "the database is unavailable; retry later".to_owned(),
                )
            }
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    C::Internal,
                    "internal error; see the aggregator log".to_owned(),
                )
            }
        };
        // The body is the documented `ErrorBody` schema, not a second spelling of it.
        let body = ErrorBody {
            error: ErrorDetail { code, message },
        };
        let mut resp = (status, Json(body)).into_response();
        if let Some(s) = retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        resp
    }
}

/// Gives axum's own rejections (a path id that is not a number, a malformed
/// query string, a method the route does not have, a failed WebSocket
/// upgrade) the same `{"error":{code,message}}` body as every other error.
/// Handler errors are JSON already and pass through untouched.
pub async fn json_errors(resp: Response) -> Response {
    use axum::http::header;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    use ErrorCode as C;
    let code = match status.as_u16() {
        401 => C::Unauthorized,
        403 => C::Forbidden,
        404 => C::NotFound,
        405 => C::MethodNotAllowed,
        409 => C::Conflict,
        413 => C::TooLarge,
        415 => C::UnsupportedMediaType,
        422 => C::Unprocessable,
        429 => C::RateLimited,
        503 => C::Unavailable,
        s if s < 500 => C::BadRequest,
        _ => C::Internal,
    };
    let mut out = (
        status,
        Json(ErrorBody {
            error: ErrorDetail { code, message },
        }),
    )
        .into_response();
    // A 405 says which methods the route has.
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}
