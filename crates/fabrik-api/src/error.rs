//! The one place errors become HTTP responses: `{"error": "...", "code": "..."}` with a status
//! that says whose fault it was. Internal details are logged, not sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fabrik_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// A stable machine-readable code.
    pub code: &'static str,
    /// The same text as `error`, under the key InfluxDB 2 clients read.
    pub message: String,
}

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Its handler recorded the request in the audit log already.
    self_recorded: bool,
}

impl ApiError {
    /// An error with an explicit status.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            self_recorded: false,
        }
    }

    /// Marks the error as recorded in the audit log by its handler (see
    /// [`crate::audit::SelfRecorded`]).
    pub fn self_recorded(self) -> Self {
        Self {
            self_recorded: true,
            ..self
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401.
    pub fn unauthorized() -> Self {
        Self::unauthorized_because("missing or invalid token: send `Authorization: Bearer <token>`")
    }

    /// 401 saying why.
    pub fn unauthorized_because(why: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", why)
    }

    /// 413.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than the limit of {limit} bytes (http.max_body_size)"),
        )
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = match status.as_u16() {
            400 => "bad_request",
            403 => "read_only",
            408 => "query_timeout",
            503 => "unavailable",
            507 => "insufficient_storage",
            _ => "internal",
        };
        if status.is_server_error() {
            tracing::error!(error = %e, status = status.as_u16(), "Request failed.");
        }
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            "internal error; see the server log".to_owned()
        } else {
            e.to_string()
        };
        Self::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message.clone(),
            code: self.code,
            message: self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.self_recorded {
            response.extensions_mut().insert(crate::audit::SelfRecorded);
        }
        response
    }
}
