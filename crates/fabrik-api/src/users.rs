//! `/api/v1/users`: the people who sign in to the dashboard and API, with their roles. Admins
//! manage them; a user may change their own password.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use fabrik_registry::{Role, User};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ApiState;
use crate::auth::Identity;
use crate::devices::registry;
use crate::error::ApiError;

/// A user to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Sign-in name: 1 to 64 of a-z, 0-9, `.`, `_`, `-`.
    pub name: String,
    /// admin, operator or viewer.
    pub role: Role,
    /// At least 12 characters; generated (and returned once) when absent.
    #[serde(default)]
    pub password: Option<String>,
}

/// A created user, with the generated password when none was given (shown only now).
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedUser {
    /// The user.
    #[serde(flatten)]
    pub user: User,
    /// The generated password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// A new password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPassword {
    /// At least 12 characters.
    pub password: String,
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    responses((status = 200, description = "every user", body = [User]),
              (status = 403, description = "not an admin", body = crate::error::ErrorBody)))]
pub(crate) async fn list(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
) -> Result<Json<Vec<User>>, ApiError> {
    Ok(Json(registry(&state)?.users().await?))
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users",
    request_body = NewUser,
    responses((status = 201, description = "created; a generated password is in the body, once", body = CreatedUser),
              (status = 400, description = "bad name or too short a password", body = crate::error::ErrorBody),
              (status = 409, description = "the name is taken", body = crate::error::ErrorBody)))]
pub(crate) async fn create(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Extension(by): Extension<Identity>,
    crate::extract::Json(request): crate::extract::Json<NewUser>,
) -> Result<(StatusCode, Json<CreatedUser>), ApiError> {
    let (user, password) = registry(&state)?
        .add_user(&request.name, request.role, request.password)
        .await?;
    tracing::info!(user = %user.name, role = user.role.as_str(), by = %by.name, "User created.");
    Ok((StatusCode::CREATED, Json(CreatedUser { user, password })))
}

#[utoipa::path(delete, path = "/api/v1/users/{name}", tag = "users",
    params(("name" = String, Path, description = "user name")),
    responses((status = 204, description = "removed; their sessions end"),
              (status = 404, description = "no such user", body = crate::error::ErrorBody)))]
pub(crate) async fn remove(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    registry(&state)?.remove_user(&name).await?;
    state.auth.end_sessions_of(&name);
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/api/v1/users/{name}/password", tag = "users",
    params(("name" = String, Path, description = "user name")),
    request_body = NewPassword,
    responses((status = 204, description = "changed; the user's sessions end (sign in again)"),
              (status = 400, description = "too short", body = crate::error::ErrorBody),
              (status = 403, description = "neither an admin nor this user", body = crate::error::ErrorBody),
              (status = 404, description = "no such user", body = crate::error::ErrorBody)))]
pub(crate) async fn set_password(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Extension(by): Extension<Identity>,
    Path(name): Path<String>,
    crate::extract::Json(request): crate::extract::Json<NewPassword>,
) -> Result<StatusCode, ApiError> {
    if by.role != Role::Admin && by.name != name {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("`{}` may change only their own password", by.name),
        ));
    }
    registry(&state)?
        .set_password(&name, &request.password)
        .await?;
    state.auth.end_sessions_of(&name);
    Ok(StatusCode::NO_CONTENT)
}
