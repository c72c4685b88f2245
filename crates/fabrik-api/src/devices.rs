//! `/api/v1/devices`: register, list, show, change and remove devices, rotate their tokens and
//! read their connection history. Thin handlers over the registry.

use crate::extract::Query;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use fabrik_registry::{
    Device, DeviceEvent, DeviceFilter, DevicePatch, NewDevice, Registry, RegistryError,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::ApiState;
use crate::error::ApiError;

/// The table a device's rows are in: `given`, else the device's type, as the default mappings
/// store them (`telemetry` for a device without a type).
pub(crate) async fn table_of(
    state: &ApiState,
    id: &str,
    given: Option<String>,
) -> Result<String, ApiError> {
    if let Some(table) = given {
        return Ok(table);
    }
    let registry = state.registry.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the registry module does not run here; pass ?table=",
        )
    })?;
    let device = registry.get(id).await?;
    Ok(if device.device_type.is_empty() {
        "telemetry".to_owned()
    } else {
        device.device_type
    })
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            RegistryError::Exists(_) => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            RegistryError::Invalid(_) => Self::bad_request(e.to_string()),
            RegistryError::BadCredentials => Self::unauthorized(),
            RegistryError::UserNotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            RegistryError::UserExists(_) => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            RegistryError::UseCaseNotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            RegistryError::Refused(_) => {
                Self::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
            }
            RegistryError::Absent(_) => {
                Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            RegistryError::Conflict(_) => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            RegistryError::Locked { .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "locked", e.to_string())
            }
            other => {
                tracing::error!(error = %other, "Registry request failed.");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the server log",
                )
            }
        }
    }
}

pub(crate) fn registry(state: &ApiState) -> Result<&Registry, ApiError> {
    state.registry.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the registry module does not run in this process (see --target)",
        )
    })
}

/// A registered device with its new token, which is shown only in this response.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceWithToken {
    /// The device.
    #[serde(flatten)]
    pub device: Device,
    /// Its token: the MQTT password (user name = device id). Shown once.
    pub token: String,
}

/// A new token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenBody {
    /// The token, shown once; the previous one no longer works.
    pub token: String,
}

/// Parameters of the history listing.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Newest events to return (default 100, at most 1000).
    pub limit: Option<u32>,
}

#[utoipa::path(post, path = "/api/v1/devices", tag = "devices", security(("token" = [])),
    request_body = NewDevice,
    responses((status = 201, description = "registered; the token is in this response only", body = DeviceWithToken),
              (status = 400, description = "invalid id or field", body = crate::error::ErrorBody),
              (status = 409, description = "the id is taken", body = crate::error::ErrorBody)))]
pub(crate) async fn create(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    crate::extract::Json(new): crate::extract::Json<NewDevice>,
) -> Result<impl IntoResponse, ApiError> {
    let (device, token) = registry(&state)?.add(new).await?;
    Ok((StatusCode::CREATED, Json(DeviceWithToken { device, token })))
}

#[utoipa::path(get, path = "/api/v1/devices", tag = "devices", security(("token" = [])),
    params(DeviceFilter),
    responses((status = 200, description = "devices, by id", body = Vec<Device>)))]
pub(crate) async fn list(
    State(state): State<ApiState>,
    Query(filter): Query<DeviceFilter>,
) -> Result<Json<Vec<Device>>, ApiError> {
    // A state no device can be in would answer an empty list that looks like "none".
    if let Some(state) = filter.state.as_deref()
        && !matches!(state, "online" | "offline" | "never")
    {
        return Err(ApiError::bad_request(format!(
            "state: `{state}` is not one of online, offline, never"
        )));
    }
    Ok(Json(registry(&state)?.list(&filter).await?))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "devices", security(("token" = [])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Device), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn show(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Device>, ApiError> {
    Ok(Json(registry(&state)?.get(&id).await?))
}

#[utoipa::path(patch, path = "/api/v1/devices/{id}", tag = "devices", security(("token" = [])),
    params(("id" = String, Path, description = "device id")), request_body = DevicePatch,
    responses((status = 200, body = Device), (status = 400, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn update(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    crate::extract::Json(patch): crate::extract::Json<DevicePatch>,
) -> Result<Json<Device>, ApiError> {
    Ok(Json(registry(&state)?.patch(&id, patch).await?))
}

#[utoipa::path(delete, path = "/api/v1/devices/{id}", tag = "devices", security(("token" = [])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 204, description = "removed (its stored data stays)"),
              (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn remove(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    registry(&state)?.remove(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/token", tag = "devices", security(("token" = [])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, description = "new token (shown once); the old one stops working", body = TokenBody),
              (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn rotate_token(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<TokenBody>, ApiError> {
    let token = registry(&state)?.rotate_token(&id).await?;
    Ok(Json(TokenBody { token }))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/events", tag = "devices", security(("token" = [])),
    params(("id" = String, Path, description = "device id"), EventParams),
    responses((status = 200, description = "newest first", body = Vec<DeviceEvent>),
              (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn events(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(params): Query<EventParams>,
) -> Result<Json<Vec<DeviceEvent>>, ApiError> {
    let registry = registry(&state)?;
    registry.get(&id).await?;
    let limit = params.limit.unwrap_or(100).min(1000);
    Ok(Json(registry.events(&id, limit).await?))
}
