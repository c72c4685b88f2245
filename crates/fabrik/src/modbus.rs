//! The modbus module: polls the `[[modbus.devices]]` and stores what they answer, and sets
//! the points they declare writable when an operator asks (decision 0090).
//!
//! Good readings of one device and poll become one row of the device's table (one column per
//! point); a point that could not be read (timeout, exception, connection down) becomes a row
//! of `_point_errors` with quality `bad` and the reason, so a gap in the data is explained
//! rather than silent.

use std::collections::BTreeMap;
use std::sync::Arc;

use fabrik_api::setpoints::{
    DeviceAnswer, Setpoint, SetpointControl, SetpointError, SetpointValue,
};
use fabrik_connect::modbus::{
    self, ModbusError, ModbusPoller, ModbusWriter, Quality as ReadingQuality, Reading,
};
use fabrik_core::{Lineage, Point, Quality, SourceId, Timestamp, Value};
use fabrik_registry::Registry;
use fabrik_runtime::ServiceHandle;
use fabrik_runtime::config::Config;
use fabrik_store::Store;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::device_state::DeviceStates;
use crate::ingest_lineage::IngestLineage;
use crate::openlineage::Emitter;
use crate::readings::{Connector, PointOf, QUEUE, next_batch, point_error, store_batch};

const MODBUS: Connector = Connector {
    location: "modbus",
    name: "Modbus",
    write_errors: "fabrik_modbus_write_errors_total",
};

/// Problems of the `[modbus]` section, as `modbus: ...`.
pub(crate) fn check(config: &Config) -> Vec<(String, String)> {
    match modbus::plan(&config.modbus) {
        Ok(_) => Vec::new(),
        Err(modbus::ModbusError::Config(problems)) => problems
            .into_iter()
            .map(|p| ("modbus".to_owned(), p))
            .collect(),
        Err(e) => vec![("modbus".to_owned(), e.to_string())],
    }
}

/// Starts one polling task per device and the writer that stores their readings (and, with a
/// registry, keeps registered devices' state, last-seen time and counts up to date); returns
/// also what sets the devices' writable points.
pub(crate) async fn start(
    config: &Config,
    store: Arc<Store>,
    registry: Option<Registry>,
    lineage: Option<Emitter>,
) -> Result<(ServiceHandle, Arc<dyn SetpointControl>), String> {
    let lineage = lineage.map(|emitter| IngestLineage::modbus(emitter, config));
    let tables: BTreeMap<String, String> = config
        .modbus
        .devices
        .iter()
        .map(|d| (d.id.clone(), d.measurement.clone()))
        .collect();
    let stop = CancellationToken::new();
    let (tx, rx) = mpsc::channel(QUEUE);
    let poller =
        ModbusPoller::start(&config.modbus, tx, stop.child_token()).map_err(|e| e.to_string())?;
    let setpoints: Arc<dyn SetpointControl> = Arc::new(ModbusSetpoints(poller.writer()));
    if !tables.is_empty() {
        tracing::info!(devices = tables.len(), "Modbus polling started.");
    }
    let token = stop.clone();
    let task = tokio::spawn(async move {
        // The writer ends when every device task has dropped its sender: at once when no
        // device is configured, else after the stop. The module runs until it is stopped.
        let written =
            write_readings(rx, &store, &tables, registry.as_ref(), lineage.as_ref()).await;
        if let Some(lineage) = &lineage {
            lineage.ended();
        }
        poller.stopped().await;
        token.cancelled().await;
        written
    });
    Ok((ServiceHandle { stop, task }, setpoints))
}

/// The API's way to the Modbus devices' writable points.
struct ModbusSetpoints(ModbusWriter);

impl SetpointControl for ModbusSetpoints {
    fn serves(&self, device: &str) -> bool {
        self.0.polls(device)
    }

    fn setpoints(&self) -> Vec<Setpoint> {
        self.0
            .points()
            .into_iter()
            .map(|(device, point)| Setpoint {
                device: device.to_string(),
                signal: point.signal.to_string(),
                protocol: "modbus".into(),
                address: format!(
                    "{} {}..{}",
                    point.table,
                    point.address,
                    u32::from(point.address) + u32::from(point.codec.len)
                ),
                data_type: point.codec.data_type.to_string(),
                min: point.min,
                max: point.max,
                range_from: point.min.map(|_| "configuration".into()),
                unit: point.unit.as_deref().map(str::to_owned),
            })
            .collect()
    }

    fn set(
        &self,
        device: String,
        signal: String,
        value: SetpointValue,
    ) -> BoxFuture<'_, Result<DeviceAnswer, SetpointError>> {
        let value = crate::setpoints::set_value(value);
        Box::pin(async move {
            let write = self.0.write(&device, &signal, value);
            crate::setpoints::answered(write, setpoint_error, crate::setpoints::to_json).await
        })
    }
}

/// What the API makes of a Modbus write's failure: whether anything may have been sent
/// decides whether it is stored as a failed write.
fn setpoint_error(e: ModbusError) -> SetpointError {
    let message = e.to_string();
    match e {
        ModbusError::UnknownDevice(_) => SetpointError::UnknownDevice(message),
        ModbusError::NotWritable { .. } => SetpointError::NotWritable(message),
        ModbusError::InvalidValue { .. } => SetpointError::Invalid(message),
        ModbusError::Busy { .. } => SetpointError::Busy(message),
        ModbusError::Config(_)
        | ModbusError::Connect { .. }
        | ModbusError::Disconnected { .. }
        | ModbusError::Expired { .. }
        | ModbusError::Stopped(_) => SetpointError::Unavailable(message),
        ModbusError::Exception { .. } | ModbusError::Transport { .. } => {
            SetpointError::DeviceFailed(message)
        }
        ModbusError::Timeout { .. } | ModbusError::Interrupted(_) => {
            SetpointError::Timeout(message)
        }
    }
}

async fn write_readings(
    mut rx: mpsc::Receiver<Reading>,
    store: &Store,
    tables: &BTreeMap<String, String>,
    registry: Option<&Registry>,
    lineage: Option<&IngestLineage>,
) -> Result<(), String> {
    let mut states = registry.map(|r| DeviceStates::new(r.clone(), "modbus"));
    while let Some(batch) = next_batch(&mut rx).await {
        let polls = group_polls(batch);
        if let Some(states) = states.as_mut() {
            track_state(states, &polls).await;
        }
        let groups = to_groups(store, polls, tables);
        store_batch(store, &groups, lineage, &MODBUS).await;
    }
    Ok(())
}

type Polls = BTreeMap<(Arc<str>, i64), Vec<Reading>>;

fn group_polls(readings: Vec<Reading>) -> Polls {
    let mut polls: Polls = BTreeMap::new();
    for r in readings {
        polls
            .entry((r.device_id.clone(), r.timestamp_ns))
            .or_default()
            .push(r);
    }
    polls
}

/// A device is online while a poll reads anything; a poll that reads nothing (connection
/// refused, timeouts) takes it offline. Every poll counts as a message (an error when nothing
/// was read).
async fn track_state(states: &mut DeviceStates, polls: &Polls) {
    for ((device, _), readings) in polls {
        let good = readings.iter().any(|r| r.quality == ReadingQuality::Good);
        states.count(device, !good);
        let detail = if good {
            "polls answered".to_owned()
        } else {
            readings
                .iter()
                .find_map(|r| r.reason.clone())
                .unwrap_or_else(|| "no answer".into())
        };
        states.set(device, good, &detail).await;
    }
}

/// One group (one raw message in lineage terms) per device and poll.
fn to_groups(
    store: &Store,
    polls: Polls,
    tables: &BTreeMap<String, String>,
) -> Vec<(Lineage, Vec<Point>)> {
    polls
        .into_iter()
        .map(|((device, time), readings)| {
            let lineage = Lineage {
                source: SourceId(format!("modbus:{device}")),
                raw_id: store.next_raw_id(),
                mapping_version: 0,
            };
            let table = tables
                .get(&*device)
                .cloned()
                .unwrap_or_else(|| "modbus".into());
            let mut points = Vec::new();
            let mut fields = Vec::new();
            for r in readings {
                let value = match (r.quality, r.value) {
                    // A float register holding NaN or ±∞ (often a device's "not available"):
                    // the store keeps no such number, and one in a row would refuse the
                    // whole batch.
                    (ReadingQuality::Good, Some(modbus::Value::F64(v))) if !v.is_finite() => {
                        Err(format!("{v} is not a number the store keeps"))
                    }
                    (ReadingQuality::Good, Some(value)) => Ok(value),
                    _ => Err(r.reason.unwrap_or_else(|| "unreadable".into())),
                };
                match value {
                    Ok(value) => fields.push((r.signal.to_string(), convert(value))),
                    Err(reason) => points.push(point_error(
                        PointOf {
                            device: &device,
                            signal: &r.signal,
                            table: &table,
                        },
                        "modbus",
                        reason,
                        time,
                    )),
                }
            }
            if !fields.is_empty() {
                points.push(Point {
                    measurement: table,
                    tags: vec![("device".into(), device.to_string())],
                    fields,
                    time: Timestamp(time),
                    quality: Quality::Good,
                });
            }
            (lineage, points)
        })
        .collect()
}

fn convert(value: modbus::Value) -> Value {
    match value {
        modbus::Value::F64(v) => Value::F64(v),
        modbus::Value::I64(v) => Value::I64(v),
        modbus::Value::Bool(v) => Value::Bool(v),
        modbus::Value::Str(v) => Value::Str(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_float_register_holding_nan_is_a_point_error_and_the_row_keeps_the_others() {
        let (_dir, store) = crate::test_store::store_with("other,device=x v=1 1\n").await;
        let reading = |signal: &str, value: f64| Reading {
            device_id: Arc::from("plc-1"),
            signal: Arc::from(signal),
            timestamp_ns: 1_000,
            value: Some(modbus::Value::F64(value)),
            quality: ReadingQuality::Good,
            reason: None,
            unit: None,
        };
        let polls = group_polls(vec![reading("flow", f64::NAN), reading("pressure", 2.5)]);
        let tables = BTreeMap::from([("plc-1".to_owned(), "plc".to_owned())]);
        let groups = to_groups(&store, polls, &tables);
        let points: Vec<&Point> = groups.iter().flat_map(|(_, points)| points).collect();
        let error = points
            .iter()
            .find(|p| p.measurement == crate::readings::POINT_ERRORS_TABLE)
            .expect("a point error");
        assert!(error.tags.contains(&("signal".into(), "flow".into())));
        assert!(error.tags.contains(&("table_name".into(), "plc".into())));
        let row = points
            .iter()
            .find(|p| p.measurement == "plc")
            .expect("the row");
        assert_eq!(row.fields, vec![("pressure".to_owned(), Value::F64(2.5))]);
        // The store takes the batch: nothing in it is a number it refuses.
        store
            .write_groups(&groups, "modbus")
            .await
            .expect("written");
    }
}
