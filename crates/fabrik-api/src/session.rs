//! `/api/v1/session`: the dashboard trades a token for a session cookie once, so the token is
//! not kept in the page and `EventSource` (which cannot send headers) is authenticated too.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::ApiState;
use crate::auth::{Auth, SESSION_COOKIE, SESSION_LIFETIME};
use crate::error::ApiError;

/// A sign-in.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// An API token (the admin token).
    pub token: String,
}

fn cookie(value: &str, max_age: u64) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    ))
    .map_err(|e| ApiError::bad_request(e.to_string()))
}

#[utoipa::path(post, path = "/api/v1/session", tag = "auth",
    request_body = SignIn,
    responses((status = 204, description = "signed in; the session cookie is set"),
              (status = 401, description = "unknown token", body = crate::error::ErrorBody)))]
pub(crate) async fn sign_in(
    State(state): State<ApiState>,
    Json(request): Json<SignIn>,
) -> Result<Response, ApiError> {
    if !state.auth.check(&request.token) {
        metrics::counter!("fabrik_http_unauthorized_total").increment(1);
        return Err(ApiError::unauthorized());
    }
    let id = state.auth.create_session().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no randomness for a session id",
        )
    })?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie(&id, SESSION_LIFETIME.as_secs())?);
    Ok(response)
}

#[utoipa::path(delete, path = "/api/v1/session", tag = "auth",
    responses((status = 204, description = "signed out; the cookie is cleared")))]
pub(crate) async fn sign_out(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(id) = Auth::session_of(&headers) {
        state.auth.end_session(&id);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie("", 0)?);
    Ok(response)
}
