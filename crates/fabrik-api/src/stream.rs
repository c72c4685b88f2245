//! `/api/v1/devices/{id}/stream`: Server-Sent Events with a device's rows as they are stored,
//! sent once a second, for live charts and last values that update in place.

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use crate::extract::Query;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
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
/// How far before the newest row sent each query looks again, in nanoseconds: a row stored
/// after a newer one (a source timestamp a little behind, a batch split across two periods)
/// or at the same time as one already sent is sent then, once. Older late rows are not.
const LATE_NS: i64 = 10_000_000_000;

/// What a stream has sent: the newest row's time, and the rows (time, event data) from
/// [`LATE_NS`] before it on, so that each is sent once.
#[derive(Default)]
struct Sent {
    newest: Option<i64>,
    recent: HashSet<(i64, String)>,
    /// A resumed stream (`Last-Event-ID`): the rows up to this time were sent on the earlier
    /// connection.
    resumed_after: Option<i64>,
}

impl Sent {
    /// A stream that goes on from the row an earlier connection last sent, at `time_ns`.
    fn resuming(time_ns: i64) -> Self {
        Self {
            newest: Some(time_ns),
            recent: HashSet::new(),
            resumed_after: Some(time_ns),
        }
    }

    /// `rows` (oldest first) less those already sent, as events whose id is the row's time in
    /// nanoseconds; remembers them.
    fn events(&mut self, rows: Vec<(i64, String)>) -> Vec<Result<Event, Infallible>> {
        let mut events = Vec::new();
        for (time_ns, data) in rows {
            if self.resumed_after.is_some_and(|after| time_ns <= after) {
                continue;
            }
            if self.recent.insert((time_ns, data.clone())) {
                events.push(Ok(Event::default().id(time_ns.to_string()).data(data)));
                self.newest = Some(self.newest.map_or(time_ns, |n| n.max(time_ns)));
            }
        }
        if let Some(newest) = self.newest {
            self.recent
                .retain(|(time_ns, _)| *time_ns >= newest.saturating_sub(LATE_NS));
        }
        events
    }
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/stream", tag = "devices", security(("token" = [])),
    params(("id" = String, Path, description = "device id"), StreamParams,
           ("Last-Event-ID" = Option<String>, Header, description = "the id of the last event an earlier connection received: the stream goes on after that row instead of starting at the newest")),
    responses((status = 200, description = "text/event-stream; the device's newest row, then each row stored after it (at most 100 a second, the newest), one event each, whose id is the row's time in nanoseconds and whose data is {\"time\": RFC 3339, \"values\": {signal: number|bool|string}} (the row's non-null values)"),
              (status = 400, description = "a bad request: an unknown query parameter, or a Last-Event-ID this stream did not send", body = crate::error::ErrorBody),
              (status = 404, description = "no such device", body = crate::error::ErrorBody)))]
pub(crate) async fn device_stream(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(params): Query<StreamParams>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // What EventSource sends on reconnecting: the rows in between are not lost.
    let sent = match headers.get("last-event-id") {
        None => Sent::default(),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|id| id.trim().parse::<i64>().ok())
            .map(Sent::resuming)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Last-Event-ID {value:?} is not an id this stream sends (a row's time in \
                     nanoseconds)"
                ))
            })?,
    };
    let table = crate::devices::table_of(&state, &id, params.table).await?;
    if table.contains('"') || id.contains('\'') {
        return Err(ApiError::bad_request("invalid table or device id"));
    }
    let store = state.store.clone();
    // Every row, not only the newest at each tick: a point reported on its own (an OPC UA
    // data change, a Sparkplug report by exception) is a row of its own, and would be missed.
    let stream = futures::stream::unfold(
        (store, table, id, tokio::time::interval(PERIOD), sent),
        |(store, table, id, mut ticker, mut sent)| async move {
            ticker.tick().await;
            let from = sent.newest.map(|newest| newest.saturating_sub(LATE_NS));
            let events = match rows_from(&store, &table, &id, from).await {
                Ok(rows) => sent.events(rows),
                Err(e) => vec![Ok(
                    Event::default().data(serde_json::json!({ "error": e }).to_string())
                )],
            };
            Some((
                futures::stream::iter(events),
                (store, table, id, ticker, sent),
            ))
        },
    )
    .flatten();
    // An endless response would hold the server's graceful stop until its deadline.
    let stream = futures::StreamExt::take_until(stream, state.stopping.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The device's rows from `from` (nanoseconds) on, oldest first, at most [`ROWS_PER_PERIOD`]
/// (the newest); with no `from`, its newest row. Each as its time in nanoseconds and the
/// event's data, `{time, values}`, with the `device` and lineage columns and nulls left out.
async fn rows_from(
    store: &fabrik_store::Store,
    table: &str,
    device: &str,
    from: Option<i64>,
) -> Result<Vec<(i64, String)>, String> {
    let (newer, limit) = match from {
        Some(ns) => (
            format!(" AND time >= to_timestamp_nanos({ns})"),
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
    let mut events: Vec<(i64, String)> = rows
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
                serde_json::json!({ "time": time, "values": values }).to_string(),
            ))
        })
        .collect();
    events.reverse();
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_row_is_sent_once_also_when_it_comes_late_or_ties_with_one_sent() {
        let mut sent = Sent::default();
        let row = |ns: i64, v: &str| {
            (
                ns,
                format!("{{\"time\":{ns},\"values\":{{\"v\":\"{v}\"}}}}"),
            )
        };
        assert_eq!(sent.events(vec![row(100, "a")]).len(), 1);
        // Queried again from LATE_NS before: the row already sent is not sent again, a row
        // at the same time with other values is, and so is one stored late, before it.
        let again = sent.events(vec![
            row(50, "late"),
            row(100, "a"),
            row(100, "b"),
            row(200, "c"),
        ]);
        assert_eq!(again.len(), 3);
        assert_eq!(sent.newest, Some(200));
        // What is older than LATE_NS before the newest is forgotten.
        sent.events(vec![row(200 + LATE_NS, "d")]);
        assert!(sent.recent.iter().all(|(ns, _)| *ns >= 200));
        assert_eq!(sent.recent.len(), 2);
        // Resumed after 100: rows up to it were sent before.
        let mut resumed = Sent::resuming(100);
        let events = resumed.events(vec![row(90, "x"), row(100, "a"), row(150, "y")]);
        assert_eq!(events.len(), 1);
        assert_eq!(resumed.newest, Some(150));
    }
}
