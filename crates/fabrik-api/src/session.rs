//! `/api/v1/session`: the dashboard trades a token, or a user name and password, for a session
//! cookie once, so no secret is kept in the page and `EventSource` (which cannot send headers)
//! is authenticated too. `GET` tells who the session is.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::ApiState;
use crate::auth::{Auth, Identity, SESSION_COOKIE, SESSION_LIFETIME};
use crate::error::ApiError;

/// A sign-in: a token, or a user name and password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// An API token (the admin token).
    #[serde(default)]
    pub token: Option<String>,
    /// A user's name (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    /// That user's password.
    #[serde(default)]
    pub password: Option<String>,
}

/// The session cookie; `Secure` over HTTPS, so a browser never sends it to the same host in
/// clear (cookies are not bound to a port).
fn cookie(value: &str, max_age: u64, secure: bool) -> Result<HeaderValue, ApiError> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .map_err(|e| ApiError::bad_request(e.to_string()))
}

#[utoipa::path(post, path = "/api/v1/session", tag = "auth",
    request_body = SignIn,
    responses((status = 200, description = "signed in; the session cookie is set", body = Identity),
              (status = 400, description = "neither a token nor a user name and password", body = crate::error::ErrorBody),
              (status = 401, description = "unknown token, or unknown user or wrong password", body = crate::error::ErrorBody),
              (status = 429, description = "too many failed sign-ins for this user name", body = crate::error::ErrorBody)))]
pub(crate) async fn sign_in(
    State(state): State<ApiState>,
    crate::extract::Json(request): crate::extract::Json<SignIn>,
) -> Result<Response, ApiError> {
    // To completion, so a client that hangs up does not take the entry with it.
    crate::audit::to_completion(async move {
        let claimed = request.username.clone();
        let by_token = request.token.is_some();
        let result = start_session(&state, request).await;
        let status = match &result {
            Ok(response) => response.status().as_u16(),
            Err(e) => e.status().as_u16(),
        };
        let event = fabrik_registry::AuditEvent {
            actor: sign_in_actor(&state, claimed, by_token).await,
            action: "sign-in".into(),
            target: "/api/v1/session".into(),
            status,
        };
        if result.is_ok() {
            crate::audit::record(&state, event).await;
        } else {
            crate::audit::record_refusal(&state, event).await;
        }
        result
    })
    .await?
}

/// Who a sign-in claimed to be: a user's name, `admin-token` (never the secret), or
/// `unknown user` for a name no user has, which is often a password typed in the wrong field
/// and must not be kept.
async fn sign_in_actor(state: &ApiState, claimed: Option<String>, by_token: bool) -> String {
    match (claimed, by_token) {
        (Some(name), _) => match &state.registry {
            Some(registry) if registry.has_user(&name).await.unwrap_or(false) => name,
            _ => "unknown user".to_owned(),
        },
        (None, true) => "admin-token".to_owned(),
        (None, false) => "anonymous".to_owned(),
    }
}

async fn start_session(state: &ApiState, request: SignIn) -> Result<Response, ApiError> {
    let identity = match request {
        SignIn {
            token: Some(token),
            username: None,
            password: None,
        } => {
            if !state.auth.check(&token) {
                metrics::counter!("fabrik_http_unauthorized_total").increment(1);
                return Err(ApiError::unauthorized_because("unknown token"));
            }
            Identity::admin_token()
        }
        SignIn {
            token: None,
            username: Some(name),
            password: Some(password),
        } => {
            let registry = state.registry.as_ref().ok_or_else(|| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the registry module, which keeps the users, does not run in this process",
                )
            })?;
            match registry.verify_user(&name, &password).await {
                Ok(user) => {
                    tracing::info!(user = %user.name, role = user.role.as_str(), "Signed in.");
                    Identity {
                        name: user.name,
                        role: user.role,
                    }
                }
                Err(e) => {
                    metrics::counter!("fabrik_http_unauthorized_total").increment(1);
                    // The registry's wording for bad credentials is a device's.
                    let reason = match &e {
                        fabrik_registry::RegistryError::BadCredentials => {
                            "unknown user or wrong password".to_owned()
                        }
                        other => other.to_string(),
                    };
                    // Not the name as typed: it is often a password in the wrong field, and the
                    // process log is shipped. The audit entry names the user, if one exists.
                    tracing::warn!(error = %reason, "Sign-in refused.");
                    return Err(match e {
                        fabrik_registry::RegistryError::BadCredentials => {
                            ApiError::unauthorized_because("unknown user or wrong password")
                        }
                        other => other.into(),
                    });
                }
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                "sign in with either `token`, or `username` and `password`",
            ));
        }
    };
    let id = state.auth.create_session(identity.clone()).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no randomness for a session id",
        )
    })?;
    let mut response = Json(identity).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&id, SESSION_LIFETIME.as_secs(), state.https)?,
    );
    Ok(response)
}

#[utoipa::path(get, path = "/api/v1/session", tag = "auth",
    responses((status = 200, description = "who this session (or token) is", body = Identity),
              (status = 401, description = "not signed in", body = crate::error::ErrorBody)))]
pub(crate) async fn whoami(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Identity>, ApiError> {
    state
        .auth
        .identify(&headers, None)
        .map(Json)
        .ok_or_else(ApiError::unauthorized)
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
        .insert(header::SET_COOKIE, cookie("", 0, state.https)?);
    Ok(response)
}
