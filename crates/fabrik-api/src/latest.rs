//! `/api/v1/devices/{id}/latest`: each signal's newest value and when it was reported, however
//! long ago: the "current values" of a device whose points report only when they change.

use std::collections::BTreeMap;

use crate::extract::Query;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use fabrik_store::schema::{self, ColumnKind};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::ApiState;
use crate::error::ApiError;

/// Parameters of the latest values.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LatestParams {
    /// The table to read (default: the device's type, as the default mappings store it).
    pub table: Option<String>,
}

/// A device's newest value of each signal it has reported.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LatestValues {
    pub device: String,
    pub table: String,
    /// Per signal (field column), its newest value that is not null and when it was reported.
    /// Signals the device never reported (or whose reports are past the table's retention)
    /// are left out.
    pub values: BTreeMap<String, LatestValue>,
}

/// One signal's newest value.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LatestValue {
    /// A number, a Boolean or text, as stored.
    pub value: serde_json::Value,
    /// When the row holding it was stored for (RFC 3339).
    pub time: String,
    /// The same, in nanoseconds since the Unix epoch.
    pub time_ns: i64,
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/latest", tag = "devices", security(("token" = [])),
    params(("id" = String, Path, description = "device id"), LatestParams),
    responses((status = 200, description = "each signal's newest value and its time, from each series' last rows (not a scan of the history)", body = LatestValues),
              (status = 400, description = "an unknown query parameter", body = crate::error::ErrorBody),
              (status = 404, description = "no such device (when the registry runs here), no such table, or a table without a `device` tag", body = crate::error::ErrorBody),
              (status = 503, description = "the registry does not run here and no `table` was given", body = crate::error::ErrorBody)))]
pub(crate) async fn latest(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(params): Query<LatestParams>,
) -> Result<Json<LatestValues>, ApiError> {
    if let (Some(registry), Some(_)) = (&state.registry, &params.table) {
        registry.get(&id).await?;
    }
    let table = crate::devices::table_of(&state, &id, params.table).await?;
    let not_found = |what: &str| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} `{table}`"),
        )
    };
    let arrow_schema = state
        .store
        .table_schema(&table)
        .ok_or_else(|| not_found("no table"))?;
    // A device's rows are a series of their own only where `device` is a tag; elsewhere the
    // question is not one the last rows answer.
    let device_is_tag = arrow_schema
        .field_with_name(DEVICE)
        .ok()
        .and_then(schema::kind_of)
        == Some(ColumnKind::Tag);
    if !device_is_tag {
        return Err(not_found("no `device` tag in table"));
    }
    let signals: Vec<&str> = arrow_schema
        .fields()
        .iter()
        .filter(|f| matches!(schema::kind_of(f), Some(ColumnKind::Field(_))))
        .map(|f| f.name().as_str())
        .collect();
    if signals.is_empty() {
        return Ok(Json(LatestValues {
            device: id,
            table,
            values: BTreeMap::new(),
        }));
    }
    let output = state
        .store
        .query(&latest_sql(&table, &id, &signals))
        .await?;
    let rows = crate::routes::batches_to_json(&output.batches).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("encoding the latest values: {e}"),
        )
    })?;
    let mut values = BTreeMap::new();
    if let Some(row) = rows.first() {
        for (i, signal) in signals.iter().enumerate() {
            let value = &row[format!("v{i}")];
            let Some(time_ns) = row[format!("t{i}")].as_i64() else {
                continue;
            };
            if value.is_null() {
                continue;
            }
            values.insert(
                (*signal).to_owned(),
                LatestValue {
                    value: value.clone(),
                    time: fabrik_alert::model::rfc3339_ns(time_ns),
                    time_ns,
                },
            );
        }
    }
    Ok(Json(LatestValues {
        device: id,
        table,
        values,
    }))
}

/// The tag naming a device's rows.
const DEVICE: &str = "device";

/// The query for `device`'s newest value of each of `signals` in `table`, as `v{i}`, and its
/// time in nanoseconds, as `t{i}`: the shape the store answers from each series' last rows
/// (`fabrik_store` `last_rows`, decision 0096) rather than by reading the history.
pub fn latest_sql(table: &str, device: &str, signals: &[&str]) -> String {
    let aggregates: Vec<String> = signals
        .iter()
        .enumerate()
        .map(|(i, signal)| {
            let column = crate::lineage::identifier(signal);
            format!(
                "last_value({column} ORDER BY time) IGNORE NULLS AS v{i}, \
                 CAST(max(time) FILTER (WHERE {column} IS NOT NULL) AS BIGINT) AS t{i}"
            )
        })
        .collect();
    format!(
        "SELECT {} FROM {} WHERE {DEVICE} = '{}'",
        aggregates.join(", "),
        crate::lineage::identifier(table),
        device.replace('\'', "''"),
    )
}
