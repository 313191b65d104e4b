//! API errors: `{"error":{"code":"…","message":"…"}}` with the status that fits.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pgrealm_schema::ValueError;
use serde_json::json;

use crate::auth::AuthError;
use crate::store::{PathError, StoreError};

/// An error answer of the HTTP API.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// The same error, its message followed by `more` (what happened because of it, what to
    /// do next).
    pub(crate) fn and(mut self, more: &str) -> Self {
        self.message = format!("{}; {more}", self.message);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthenticated(m) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", m)
            }
            AuthError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            AuthError::Keys(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
        }
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.to_string())
    }
}

impl From<ValueError> for ApiError {
    fn from(e: ValueError) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_value", e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Path(p) => p.into(),
            StoreError::Pruned { .. } => ApiError::new(StatusCode::GONE, "pruned", e.to_string()),
            StoreError::UnknownClass { .. } => ApiError::not_found(e.to_string()),
            // The client rebuilds the store error from the detail.
            StoreError::MetadataChanged { detail } => {
                ApiError::new(StatusCode::CONFLICT, "metadata_changed", detail)
            }
            StoreError::Value { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_value", e.to_string())
            }
            other => {
                tracing::error!(error = %other, "store error while serving a request");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    other.to_string(),
                )
            }
        }
    }
}
