//! `/api/v1/devices/{id}/stream`: Server-Sent Events with a device's latest values, once a
//! second, for live charts that update in place.

use std::convert::Infallible;
use std::time::Duration;

use crate::extract::Query;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::ApiState;
use crate::error::ApiError;

/// Parameters of the stream.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamParams {
    /// The table to read (default: the device's type, as the default mappings store it).
    pub table: Option<String>,
}

/// How often a new event is sent.
const PERIOD: Duration = Duration::from_secs(1);

#[utoipa::path(get, path = "/api/v1/devices/{id}/stream", tag = "devices", security(("token" = [])),
    params(("id" = String, Path, description = "device id"), StreamParams),
    responses((status = 200, description = "text/event-stream; each event's data is {\"time\": RFC 3339, \"values\": {signal: number|bool|string}}"),
              (status = 404, description = "no such device", body = crate::error::ErrorBody)))]
pub(crate) async fn device_stream(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(params): Query<StreamParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let table: String = match params.table {
        Some(t) => t,
        None => {
            let registry = state.registry.as_ref().ok_or_else(|| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the registry module does not run here; pass ?table=",
                )
            })?;
            let device = registry.get(&id).await?;
            if device.device_type.is_empty() {
                "telemetry".to_owned()
            } else {
                device.device_type
            }
        }
    };
    if table.contains('"') || id.contains('\'') {
        return Err(ApiError::bad_request("invalid table or device id"));
    }
    let store = state.store.clone();
    let stream = futures::stream::unfold(
        (store, table, id, tokio::time::interval(PERIOD)),
        |(store, table, id, mut ticker)| async move {
            ticker.tick().await;
            let data = latest_row(&store, &table, &id)
                .await
                .unwrap_or_else(|e| serde_json::json!({ "error": e }));
            let event = Event::default().data(data.to_string());
            Some((Ok(event), (store, table, id, ticker)))
        },
    );
    // An endless response would hold the server's graceful stop until its deadline.
    let stream = futures::StreamExt::take_until(stream, state.stopping.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The device's latest row as `{time, values}`, lineage and tag columns left out.
async fn latest_row(
    store: &fabrik_store::Store,
    table: &str,
    device: &str,
) -> Result<serde_json::Value, String> {
    let sql =
        format!("SELECT * FROM \"{table}\" WHERE device = '{device}' ORDER BY time DESC LIMIT 1");
    let output = store.query(&sql).await.map_err(|e| e.to_string())?;
    let rows = crate::routes::batches_to_json(&output.batches)?;
    let Some(serde_json::Value::Object(row)) = rows.into_iter().next() else {
        return Ok(serde_json::json!({ "time": null, "values": {} }));
    };
    let time = row.get("time").cloned().unwrap_or(serde_json::Value::Null);
    let values: serde_json::Map<String, serde_json::Value> = row
        .into_iter()
        .filter(|(k, v)| k != "time" && k != "device" && !k.starts_with('_') && !v.is_null())
        .collect();
    Ok(serde_json::json!({ "time": time, "values": values }))
}
