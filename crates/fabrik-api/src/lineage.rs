//! `GET /api/v1/lineage`: where a pipeline's decision came from — the inference row a window
//! id (or an alert that names one) leads to, the input rows that window read, and the
//! raw messages those rows were decoded from, as received. Lineage from raw message to
//! decision in one answer, so an operator asking "why did this fire?" need not write the SQL.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::Query;
use crate::fleet::literal;

/// The table pipelines write their inferences to.
const INFERENCES: &str = "inferences";
/// The table raw messages are kept in (`keep_raw`).
const RAW: &str = "_raw";
/// Input rows listed at most; a window longer than this is cut (and says so).
const MAX_INPUT_ROWS: usize = 10_000;
/// Raw messages listed at most.
const MAX_MESSAGES: usize = 1_000;
/// Characters of a payload listed at most (the row's `bytes` says how long it was): a
/// thousand messages of up to a megabyte each would make an answer no one reads.
const MAX_PAYLOAD_CHARS: usize = 4_096;
/// How long before its id a message may have been received: the ingest queue's wait.
const RECEIPT_MARGIN_NS: i64 = 3_600 * 1_000_000_000;

/// Cuts a listed message's payload to [`MAX_PAYLOAD_CHARS`], marking the cut with `…`.
fn cut_payload(row: &mut Value) {
    if let Some(payload) = row.get_mut("payload")
        && let Some(text) = payload.as_str()
        && let Some((at, _)) = text.char_indices().nth(MAX_PAYLOAD_CHARS)
    {
        *payload = Value::String(format!("{}…", &text[..at]));
    }
}

/// Which decision to trace back: exactly one of the two.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LineageParams {
    /// A window id, as inference rows and alerts carry it (`<pipeline>/<device>/<window
    /// start, ns>`).
    pub window_id: Option<String>,
    /// An alert id; the alert must name its window (its rule's `context` includes
    /// `window_id`, as the demo's `pump-anomaly` does).
    pub alert: Option<String>,
}

/// A decision and what it was made from.
#[derive(Debug, Serialize, ToSchema)]
pub struct Lineage {
    /// The window.
    pub window_id: String,
    /// The alert asked about, if the question started there.
    pub alert: Option<String>,
    /// The inference row, every column (as `/api/v1/query` returns rows). When several
    /// models scored the window (a redefinition with another model), the latest written.
    #[schema(value_type = Object)]
    pub inference: Value,
    /// The rows the window read.
    pub inputs: LineageInputs,
    /// The raw messages those rows were decoded from.
    pub messages: LineageMessages,
}

/// The input rows of a window: those the store can still select for it (a row overwritten
/// since drops out; compare the count with the inference's `samples`).
#[derive(Debug, Serialize, ToSchema)]
pub struct LineageInputs {
    /// The table read: the pipeline's as it is defined now.
    pub table: String,
    /// The query that selected them: the window's device and span, the pipeline's filter,
    /// and `_raw_id <= last_arrival` (rows that arrived for the span after the window was
    /// scored were not part of it; absent for inferences written before `last_arrival` was).
    pub sql: String,
    /// Time, the device column, the signals and the lineage columns of each row, in time
    /// order.
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<Value>,
    /// More rows matched than are listed (10,000).
    pub truncated: bool,
    /// Rows per lineage source (`_source`: `mqtt`, `bridge:<name>`, `modbus:<device>`, ...).
    pub sources: BTreeMap<String, u64>,
}

/// The raw messages behind the input rows.
#[derive(Debug, Serialize, ToSchema)]
pub struct LineageMessages {
    /// `_raw` rows (source, device, topic, payload as received, bytes) whose `_raw_id` an
    /// input row carries, in arrival order. A clip's payload is its blob id; a payload
    /// longer than 4,096 characters is cut there, ending in `…` (`bytes` is its length).
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<Value>,
    /// Input rows with no raw message here: written over HTTP, polled over Modbus or OPC UA
    /// (no message to keep), stored while `keep_raw` was off, or past `_raw`'s retention.
    pub rows_without_message: u64,
    /// More messages matched than are listed (1,000).
    pub truncated: bool,
}

fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
}

/// `"name"` as an SQL identifier.
pub(crate) fn identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[utoipa::path(get, path = "/api/v1/lineage", tag = "pipelines", security(("token" = [])),
    params(LineageParams),
    responses((status = 200, description = "the inference, its input rows and their raw messages", body = Lineage),
              (status = 400, description = "neither or both of `window_id` and `alert`", body = crate::error::ErrorBody),
              (status = 404, description = "no such alert or inference, an alert that names no window, or a pipeline no longer defined here", body = crate::error::ErrorBody),
              (status = 503, description = "the pipelines module (or, for `alert`, the alerts module) does not run here", body = crate::error::ErrorBody)))]
pub(crate) async fn show(
    State(state): State<ApiState>,
    Query(params): Query<LineageParams>,
) -> Result<Json<Lineage>, ApiError> {
    let (window_id, alert) = match (params.window_id, params.alert) {
        (Some(window), None) => (window, None),
        (None, Some(id)) => {
            let alert = crate::alerts::alerting(&state)?.db().get(&id).await?;
            let window = alert.annotations.get("window_id").cloned().ok_or_else(|| {
                not_found(format!(
                    "alert `{id}` names no window: its rule `{}` does not put `window_id` in \
                     its `context` (an alert on inferences can)",
                    alert.rule
                ))
            })?;
            (window, Some(id))
        }
        _ => {
            return Err(ApiError::bad_request(
                "name the decision with exactly one of `window_id` and `alert`",
            ));
        }
    };
    let inference = inference(&state, &window_id).await?;
    // A hub holds its edges' inferences but not what their windows read: the rows and
    // messages of the edge's devices are the edge's (and ids of two nodes do not compare).
    if let Some(node) = inference["_source"]
        .as_str()
        .and_then(|s| s.strip_prefix("uplink:"))
    {
        let node = node.split('/').next().unwrap_or(node);
        return Err(not_found(format!(
            "window `{window_id}` was scored on edge node `{node}`, whose uplink sent the \
             inference here: ask that node for its lineage"
        )));
    }
    let pipeline = inference["pipeline"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let status = crate::pipelines::board(&state)?
        .read()
        .get(&pipeline)
        .cloned()
        .ok_or_else(|| {
            not_found(format!(
                "pipeline `{pipeline}`, which scored window `{window_id}`, is not defined \
                 here any more: its input table is unknown"
            ))
        })?;
    let number = |column: &str| {
        inference[column].as_i64().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("inference of window `{window_id}` has no integer `{column}`"),
            )
        })
    };
    let (start, end) = (number("window_start")?, number("window_end")?);
    // Rows written before inferences recorded their last arrival have no bound: every row
    // of the span is listed.
    let last_arrival = inference["last_arrival"].as_i64();
    let device = inference["device"].as_str().unwrap_or_default();
    let device_column = &status.definition.device_column;
    let mut columns = vec![identifier("time"), identifier(device_column)];
    columns.extend(status.signals.iter().map(|s| identifier(s)));
    columns.extend(
        ["_raw_id", "_source", "_mapping_version", "_quality"]
            .into_iter()
            .map(identifier),
    );
    let mut sql = format!(
        "SELECT {} FROM {} WHERE {} = {} AND time >= to_timestamp_nanos({start}) \
         AND time < to_timestamp_nanos({end})",
        columns.join(", "),
        identifier(&status.table),
        identifier(device_column),
        literal(device),
    );
    if let Some(last_arrival) = last_arrival {
        sql.push_str(&format!(" AND _raw_id <= {last_arrival}"));
    }
    if let Some(filter) = &status.filter {
        // As the pipeline embeds it: one expression, checked when it was defined.
        sql.push_str(&format!(" AND (\n{filter}\n)"));
    }
    sql.push_str(" ORDER BY time, _raw_id");
    let mut rows = rows_of(&state, &format!("{sql} LIMIT {}", MAX_INPUT_ROWS + 1)).await?;
    let truncated = rows.len() > MAX_INPUT_ROWS;
    rows.truncate(MAX_INPUT_ROWS);
    let mut sources = BTreeMap::new();
    for row in &rows {
        let source = row["_source"].as_str().unwrap_or_default().to_owned();
        *sources.entry(source).or_insert(0) += 1;
    }
    let messages = messages(&state, &rows).await?;
    Ok(Json(Lineage {
        window_id,
        alert,
        inference,
        inputs: LineageInputs {
            table: status.table,
            sql,
            rows,
            truncated,
            sources,
        },
        messages,
    }))
}

async fn rows_of(state: &ApiState, sql: &str) -> Result<Vec<Value>, ApiError> {
    // The store's own status (a timeout, an overloaded store, a column not written yet).
    let output = state.store.query(sql).await?;
    crate::routes::batches_to_json(&output.batches).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("encoding the rows: {e}"),
        )
    })
}

/// The inference row of `window_id`, the latest written.
async fn inference(state: &ApiState, window_id: &str) -> Result<Value, ApiError> {
    let missing = || not_found(format!("no inference has window id `{window_id}`"));
    // `<pipeline>/<device>/<window start>`; the row is dated at the window's last instant,
    // so its start bounds the scan to the segments from there on.
    let start: i64 = window_id
        .rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(missing)?;
    if !state.store.has_table(INFERENCES) {
        return Err(missing());
    }
    let sql = format!(
        "SELECT * FROM {INFERENCES} WHERE window_id = {} AND time >= to_timestamp_nanos({start}) \
         ORDER BY _raw_id DESC LIMIT 1",
        literal(window_id)
    );
    rows_of(state, &sql)
        .await?
        .into_iter()
        .next()
        .ok_or_else(missing)
}

/// The raw messages of `rows`, by their `_raw_id`s.
async fn messages(state: &ApiState, rows: &[Value]) -> Result<LineageMessages, ApiError> {
    let ids: BTreeSet<u64> = rows.iter().filter_map(|r| r["_raw_id"].as_u64()).collect();
    let wanted: Vec<u64> = ids.iter().copied().take(MAX_MESSAGES).collect();
    let found = match (wanted.first(), wanted.last()) {
        (Some(&first), Some(&last)) if state.store.has_table(RAW) => {
            let list: Vec<String> = wanted.iter().map(u64::to_string).collect();
            // A raw row is dated at receipt, and its id is taken from the clock just after
            // (later still when the ingest queue was full): the ids bound the segments read.
            let from = i64::try_from(first).unwrap_or(i64::MAX) - RECEIPT_MARGIN_NS;
            let until = i64::try_from(last).unwrap_or(i64::MAX);
            let sql = format!(
                "SELECT * FROM {RAW} WHERE time >= to_timestamp_nanos({from}) \
                 AND time <= to_timestamp_nanos({until}) AND _raw_id IN ({}) ORDER BY _raw_id",
                list.join(", ")
            );
            let mut rows = rows_of(state, &sql).await?;
            for row in &mut rows {
                cut_payload(row);
            }
            rows
        }
        _ => Vec::new(),
    };
    let kept: BTreeSet<u64> = found.iter().filter_map(|r| r["_raw_id"].as_u64()).collect();
    let listed: BTreeSet<u64> = wanted.into_iter().collect();
    // Rows whose id was beyond the listed messages are not counted as without one.
    let rows_without_message = rows
        .iter()
        .filter_map(|r| r["_raw_id"].as_u64())
        .filter(|id| listed.contains(id) && !kept.contains(id))
        .count() as u64;
    Ok(LineageMessages {
        rows: found,
        rows_without_message,
        truncated: ids.len() > MAX_MESSAGES,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_payload_is_cut_and_says_so() {
        let long = "é".repeat(MAX_PAYLOAD_CHARS + 10);
        let mut row = serde_json::json!({ "payload": long, "bytes": 8212 });
        cut_payload(&mut row);
        let cut = row["payload"].as_str().expect("text");
        assert_eq!(cut.chars().count(), MAX_PAYLOAD_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(row["bytes"], 8212);
        let mut short = serde_json::json!({ "payload": "{\"v\": 1}" });
        cut_payload(&mut short);
        assert_eq!(short["payload"], "{\"v\": 1}");
    }
}
