//! The opcua module: subscribes to the `[[opcua.servers]]` and stores what they report.
//!
//! Good and uncertain readings of a device at one timestamp become one row of the server's
//! table (quality kept in `_quality`); a bad reading (a Bad status, a refused node id, a lost
//! connection) becomes a row of `_point_errors` with the status, as Modbus errors do. The items
//! declared writable are set through [`OpcUaSetpoints`] (decision 0090).

use std::collections::BTreeMap;
use std::sync::Arc;

use fabrik_api::setpoints::{
    DeviceAnswer, Setpoint, SetpointControl, SetpointError, SetpointValue,
};
use fabrik_connect::opcua::{
    self, OpcUaClient, OpcUaError, OpcUaWriter, Quality as OpcQuality, Reading,
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

const OPC_UA: Connector = Connector {
    location: "opcua",
    name: "OPC UA",
    write_errors: "fabrik_opcua_write_errors_total",
};

/// Problems of the `[opcua]` section.
pub(crate) fn check(config: &Config) -> Vec<(String, String)> {
    match opcua::plan(&config.opcua) {
        Ok(_) => Vec::new(),
        Err(opcua::OpcUaError::Config(problems)) => problems
            .into_iter()
            .map(|p| ("opcua".to_owned(), p))
            .collect(),
        Err(e) => vec![("opcua".to_owned(), e.to_string())],
    }
}

/// Each monitored item's device (the item's, else the server's, else the server id) with the
/// server's table.
fn item_devices(config: &Config) -> impl Iterator<Item = (String, &str)> {
    config.opcua.servers.iter().flat_map(|server| {
        server.items.iter().map(move |item| {
            let device = item
                .device
                .clone()
                .or_else(|| server.device.clone())
                .unwrap_or_else(|| server.id.clone());
            (device, server.measurement.as_str())
        })
    })
}

/// Which table each device's readings go to.
fn tables(config: &Config) -> BTreeMap<String, String> {
    item_devices(config)
        .map(|(device, table)| (device, table.to_owned()))
        .collect()
}

/// How many items each device has (an outage reports every one of them Bad).
fn item_counts(config: &Config) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (device, _) in item_devices(config) {
        *out.entry(device).or_default() += 1;
    }
    out
}

/// Starts one client per server and the writer that stores their readings (and, with a
/// registry, keeps registered devices' state up to date); returns also what sets the items
/// declared writable.
pub(crate) async fn start(
    config: &Config,
    store: Arc<Store>,
    registry: Option<Registry>,
    lineage: Option<Emitter>,
) -> Result<(ServiceHandle, Arc<dyn SetpointControl>), String> {
    let lineage = lineage.map(|emitter| IngestLineage::opcua(emitter, config));
    let tables = tables(config);
    let counts = item_counts(config);
    let stop = CancellationToken::new();
    let (tx, rx) = mpsc::channel(QUEUE);
    let client =
        OpcUaClient::start(&config.opcua, tx, stop.child_token()).map_err(|e| e.to_string())?;
    let setpoints: Arc<dyn SetpointControl> = Arc::new(OpcUaSetpoints(client.writer()));
    if !config.opcua.servers.is_empty() {
        tracing::info!(
            servers = config.opcua.servers.len(),
            "OPC UA clients started."
        );
    }
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let states = registry.map(|r| DeviceStates::new(r, "opcua"));
        write_readings(rx, &store, &tables, states, &counts, lineage.as_ref()).await;
        if let Some(lineage) = &lineage {
            lineage.ended();
        }
        client.stopped().await;
        // With no server configured the writer ends at once; the module still runs until stopped.
        token.cancelled().await;
        Ok(())
    });
    Ok((ServiceHandle { stop, task }, setpoints))
}

/// The API's way to the OPC UA items declared writable.
struct OpcUaSetpoints(OpcUaWriter);

impl SetpointControl for OpcUaSetpoints {
    fn serves(&self, device: &str) -> bool {
        self.0.serves(device)
    }

    fn setpoints(&self) -> Vec<Setpoint> {
        self.0
            .items()
            .into_iter()
            .map(|item| {
                let listed = item.write_range();
                let range = listed.map(|(range, _)| range);
                let range_from = listed.map(|(_, from)| from);
                let declared = item.declared.as_ref();
                Setpoint {
                    device: item.device.to_string(),
                    signal: item.signal.to_string(),
                    protocol: "opcua".into(),
                    address: item.node_text,
                    // The node's own type, once read on connecting.
                    data_type: declared
                        .and_then(|d| d.data_type.clone())
                        .unwrap_or_else(|| "node".into()),
                    min: range.map(|(min, _)| min),
                    max: range.map(|(_, max)| max),
                    range_from: range_from.map(str::to_owned),
                    unit: declared.and_then(|d| d.unit.clone()),
                }
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

/// What the API makes of an OPC UA write's failure: a refused or failed call may have reached
/// the server; a timeout leaves it unknown.
fn setpoint_error(e: OpcUaError) -> SetpointError {
    let message = e.to_string();
    match e {
        OpcUaError::UnknownDevice(_) => SetpointError::UnknownDevice(message),
        OpcUaError::NotWritable { .. } => SetpointError::NotWritable(message),
        OpcUaError::InvalidValue { .. } => SetpointError::Invalid(message),
        OpcUaError::WriteRefused { .. } => SetpointError::DeviceFailed(message),
        OpcUaError::Busy(_) => SetpointError::Busy(message),
        // The transport had no connection to send on: nothing went out.
        OpcUaError::Request { ref status, .. } if status.starts_with("BadNotConnected") => {
            SetpointError::Unavailable(message)
        }
        OpcUaError::Request { ref status, .. }
            if status.starts_with("BadTimeout") || status.starts_with("BadRequestTimeout") =>
        {
            SetpointError::Timeout(message)
        }
        OpcUaError::Request { .. } => SetpointError::DeviceFailed(message),
        _ => SetpointError::Unavailable(message),
    }
}

async fn write_readings(
    mut rx: mpsc::Receiver<Reading>,
    store: &Store,
    tables: &BTreeMap<String, String>,
    mut states: Option<DeviceStates>,
    item_counts: &BTreeMap<String, usize>,
    lineage: Option<&IngestLineage>,
) {
    while let Some(batch) = next_batch(&mut rx).await {
        if let Some(states) = states.as_mut() {
            track_state(states, &batch, item_counts).await;
        }
        let groups = to_groups(store, batch, tables);
        store_batch(store, &groups, lineage, &OPC_UA).await;
    }
}

/// A device with any usable reading is online; one whose every item is reported Bad at once
/// (the connector's outage report) is offline. A single Bad item (a failed sensor) changes
/// nothing.
async fn track_state(
    states: &mut DeviceStates,
    batch: &[Reading],
    item_counts: &BTreeMap<String, usize>,
) {
    let mut per_device: BTreeMap<&str, (bool, std::collections::BTreeSet<&str>, &str)> =
        BTreeMap::new();
    for r in batch {
        let entry = per_device
            .entry(&r.device_id)
            .or_insert((false, Default::default(), ""));
        if r.quality == OpcQuality::Bad {
            entry.1.insert(&r.signal);
            entry.2 = &r.status;
        } else {
            entry.0 = true;
        }
    }
    for (device, (usable, bad, status)) in per_device {
        states.count(device, !usable);
        if usable {
            states.set(device, true, "data changes arrive").await;
        } else if bad.len() >= item_counts.get(device).copied().unwrap_or(usize::MAX) {
            states.set(device, false, status).await;
        }
    }
}

fn to_groups(
    store: &Store,
    readings: Vec<Reading>,
    tables: &BTreeMap<String, String>,
) -> Vec<(Lineage, Vec<Point>)> {
    // (device, time, uncertain) → the values of that row.
    type RowKey = (Arc<str>, i64, bool);
    let mut rows: BTreeMap<RowKey, Vec<(String, Value)>> = BTreeMap::new();
    let mut errors = Vec::new();
    let table_of = |device: &str| {
        tables
            .get(device)
            .cloned()
            .unwrap_or_else(|| "opcua".into())
    };
    for r in readings {
        let value = match r.value {
            Some(opcua::Value::F64(v)) if !v.is_finite() => Err(format!(
                "{v} is not a number the store keeps (status {})",
                r.status
            )),
            Some(value) if r.quality != OpcQuality::Bad => Ok(value),
            _ => Err(r.status.clone()),
        };
        match value {
            // A point that was not read, or whose value cannot be kept, ends the value before
            // it as a bad sample does (decision 0087).
            Err(reason) => errors.push(point_error(
                PointOf {
                    device: &r.device_id,
                    signal: &r.signal,
                    table: &table_of(&r.device_id),
                },
                "opcua",
                reason,
                r.timestamp_ns,
            )),
            Ok(value) => {
                let quality = r.quality;
                let value = match value {
                    opcua::Value::F64(v) => Value::F64(v),
                    opcua::Value::I64(v) => Value::I64(v),
                    opcua::Value::Bool(v) => Value::Bool(v),
                    opcua::Value::Str(v) => Value::Str(v),
                };
                rows.entry((
                    r.device_id.clone(),
                    r.timestamp_ns,
                    quality == OpcQuality::Uncertain,
                ))
                .or_default()
                .push((r.signal.to_string(), value));
            }
        }
    }
    let lineage = |source: &str| Lineage {
        source: SourceId(source.to_owned()),
        raw_id: store.next_raw_id(),
        mapping_version: 0,
    };
    let mut out: Vec<(Lineage, Vec<Point>)> = rows
        .into_iter()
        .map(|((device, time, uncertain), fields)| {
            let point = Point {
                measurement: table_of(&device),
                tags: vec![("device".into(), device.to_string())],
                fields,
                time: Timestamp(time),
                quality: if uncertain {
                    Quality::Uncertain
                } else {
                    Quality::Good
                },
            };
            (lineage(&format!("opcua:{device}")), vec![point])
        })
        .collect();
    if !errors.is_empty() {
        out.push((lineage("opcua"), errors));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_value_that_is_not_a_finite_number_is_a_point_error_of_its_table() {
        let (_dir, store) = crate::test_store::store_with("other,device=x v=1 1\n").await;
        let reading = |signal: &str, value: f64| Reading {
            device_id: Arc::from("filler"),
            signal: Arc::from(signal),
            timestamp_ns: 1_000,
            value: Some(opcua::Value::F64(value)),
            quality: OpcQuality::Good,
            status: "Good".into(),
        };
        let tables = BTreeMap::from([("filler".to_owned(), "line".to_owned())]);
        let groups = to_groups(
            &store,
            vec![reading("speed", f64::NAN), reading("temp", 61.5)],
            &tables,
        );
        let points: Vec<&Point> = groups.iter().flat_map(|(_, points)| points).collect();
        let error = points
            .iter()
            .find(|p| p.measurement == crate::readings::POINT_ERRORS_TABLE)
            .expect("a point error");
        assert!(error.tags.contains(&("signal".into(), "speed".into())));
        assert!(error.tags.contains(&("table_name".into(), "line".into())));
        let row = points
            .iter()
            .find(|p| p.measurement == "line")
            .expect("the row");
        assert_eq!(row.fields, vec![("temp".to_owned(), Value::F64(61.5))]);
    }
}
