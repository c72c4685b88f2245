//! `/api/v1/devices/{id}/stream`: Server-Sent Events with a device's rows as they are stored,
//! sent once a second, for live charts and last values that update in place.

use std::convert::Infallible;
use std::time::Duration;

use crate::extract::Query;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt as _};
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

/// How often the table is asked for new rows.
const PERIOD: Duration = Duration::from_secs(1);
/// The most rows sent per period (the newest): a chart needs no more, and a device that
/// writes faster does not make the stream fall ever further behind.
const ROWS_PER_PERIOD: usize = 100;

#[utoipa::path(get, path = "/api/v1/devices/{id}/stream", tag = "devices", security(("token" = [])),
    params(("id" = String, Path, description = "device id"), StreamParams),
    responses((status = 200, description = "text/event-stream; the device's newest row, then each row stored after it (at most 100 a second, the newest), one event each, whose data is {\"time\": RFC 3339, \"values\": {signal: number|bool|string}} (the row's non-null values)"),
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
    // Every row, not only the newest at each tick: a point reported on its own (an OPC UA
    // data change, a Sparkplug report by exception) is a row of its own, and would be missed.
    let stream = futures::stream::unfold(
        (store, table, id, tokio::time::interval(PERIOD), None),
        |(store, table, id, mut ticker, mut sent_up_to)| async move {
            ticker.tick().await;
            let events = match rows_after(&store, &table, &id, sent_up_to).await {
                Ok(rows) => rows
                    .into_iter()
                    .map(|(time_ns, row)| {
                        sent_up_to = Some(time_ns);
                        Ok(Event::default().data(row.to_string()))
                    })
                    .collect(),
                Err(e) => vec![Ok(
                    Event::default().data(serde_json::json!({ "error": e }).to_string())
                )],
            };
            Some((
                futures::stream::iter(events),
                (store, table, id, ticker, sent_up_to),
            ))
        },
    )
    .flatten();
    // An endless response would hold the server's graceful stop until its deadline.
    let stream = futures::StreamExt::take_until(stream, state.stopping.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The device's rows stored after `after` (nanoseconds), oldest first, at most
/// [`ROWS_PER_PERIOD`] (the newest); with no `after`, its newest row. Each as its time in
/// nanoseconds and `{time, values}`, lineage and tag columns and nulls left out.
async fn rows_after(
    store: &fabrik_store::Store,
    table: &str,
    device: &str,
    after: Option<i64>,
) -> Result<Vec<(i64, serde_json::Value)>, String> {
    let (newer, limit) = match after {
        Some(ns) => (
            format!(" AND time > to_timestamp_nanos({ns})"),
            ROWS_PER_PERIOD,
        ),
        None => (String::new(), 1),
    };
    let sql = format!(
        "SELECT *, CAST(time AS BIGINT) AS \"_stream_ns\" FROM \"{table}\" \
         WHERE device = '{device}'{newer} ORDER BY time DESC LIMIT {limit}"
    );
    let output = store.query(&sql).await.map_err(|e| e.to_string())?;
    let rows = crate::routes::batches_to_json(&output.batches)?;
    let mut events: Vec<(i64, serde_json::Value)> = rows
        .into_iter()
        .filter_map(|row| match row {
            serde_json::Value::Object(row) => Some(row),
            _ => None,
        })
        .filter_map(|row| {
            let time_ns = row.get("_stream_ns")?.as_i64()?;
            let time = row.get("time").cloned().unwrap_or(serde_json::Value::Null);
            let values: serde_json::Map<String, serde_json::Value> = row
                .into_iter()
                .filter(|(k, v)| {
                    k != "time" && k != "device" && !k.starts_with('_') && !v.is_null()
                })
                .collect();
            Some((
                time_ns,
                serde_json::json!({ "time": time, "values": values }),
            ))
        })
        .collect();
    events.reverse();
    Ok(events)
}
