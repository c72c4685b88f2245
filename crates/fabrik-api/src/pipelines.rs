//! `/api/v1/pipelines`: the inference pipelines of this process and how each is doing.
//!
//! Owns the shared [`PipelineBoard`] the pipeline runner writes and the handlers read; the
//! inferences themselves are rows of the `inferences` table, queried with SQL.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use parking_lot::RwLock;
use serde::Serialize;
use utoipa::ToSchema;

use crate::ApiState;
use crate::error::ApiError;

/// What a pipeline is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PipelineState {
    /// Reading data and scoring windows.
    Running,
    /// Disabled in the configuration, or stopped with the process.
    Stopped,
    /// Could not load or keeps failing; `error` says why.
    Failed,
}

/// One pipeline's definition and live counters.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PipelineStatus {
    /// Unique name.
    pub name: String,
    /// Its state.
    pub state: PipelineState,
    /// Why it failed, or the last transient problem (e.g. its table does not exist yet).
    pub error: Option<String>,
    /// Input table.
    pub table: String,
    /// Input signals.
    pub signals: Vec<String>,
    /// Model name.
    pub model: String,
    /// Model inputs, `signal.feature`, in order.
    pub features: Vec<String>,
    /// Window, as configured.
    pub window: String,
    /// Threshold, as configured.
    pub threshold: String,
    /// Devices seen.
    pub devices: u64,
    /// Devices still learning their normal.
    pub training_devices: u64,
    /// Windows closed.
    pub windows: u64,
    /// Windows skipped for missing samples.
    pub incomplete_windows: u64,
    /// Inferences written.
    pub inferences: u64,
    /// Inferences flagged anomalous.
    pub anomalies: u64,
    /// Samples read.
    pub samples: u64,
    /// Data is complete up to this time (RFC 3339), if the pipeline has run.
    pub horizon: Option<String>,
}

/// The pipelines of this process, by name; written by the runner, read by the API.
pub type PipelineBoard = Arc<RwLock<BTreeMap<String, PipelineStatus>>>;

fn board(state: &ApiState) -> Result<&PipelineBoard, ApiError> {
    state.pipelines.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the pipelines module does not run in this process (see --target)",
        )
    })
}

#[utoipa::path(get, path = "/api/v1/pipelines", tag = "pipelines", security(("token" = [])),
    responses((status = 200, description = "every configured pipeline", body = [PipelineStatus]),
              (status = 503, description = "the pipelines module does not run here", body = crate::error::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<ApiState>,
) -> Result<Json<Vec<PipelineStatus>>, ApiError> {
    Ok(Json(board(&state)?.read().values().cloned().collect()))
}

#[utoipa::path(get, path = "/api/v1/pipelines/{name}", tag = "pipelines", security(("token" = [])),
    params(("name" = String, Path, description = "pipeline name")),
    responses((status = 200, description = "the pipeline", body = PipelineStatus),
              (status = 404, description = "no such pipeline", body = crate::error::ErrorBody)))]
pub(crate) async fn show(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<PipelineStatus>, ApiError> {
    board(&state)?
        .read()
        .get(&name)
        .cloned()
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no pipeline named `{name}`"),
            )
        })
}
