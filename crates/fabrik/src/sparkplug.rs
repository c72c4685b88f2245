//! Sparkplug B setpoints (decision 0091): the edge nodes' metrics that `[[sparkplug.setpoints]]`
//! lets operators set, written as NCMD/DCMD commands through the MQTT endpoint.

use std::sync::Arc;

use fabrik_api::setpoints::{
    DeviceAnswer, Setpoint, SetpointControl, SetpointError, SetpointValue,
};
use fabrik_connect::sparkplug::command::{self, SparkplugCommands};
use fabrik_connect::sparkplug::{SparkplugError, Value};
use fabrik_runtime::config::Config;
use futures::future::BoxFuture;

/// The commands the configuration allows, with the sessions the ingest path will keep; the
/// section's problems (which `fabrik config check` reports through [`check`]) otherwise.
pub(crate) fn commands(config: &Config) -> Result<Arc<SparkplugCommands>, String> {
    let plan = command::plan(&config.sparkplug).map_err(|problems| {
        problems
            .into_iter()
            .map(|(path, message)| format!("{path}: {message}"))
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let host = Arc::new(parking_lot::Mutex::new(
        fabrik_connect::sparkplug::SparkplugHost::new(Default::default()),
    ));
    Ok(Arc::new(SparkplugCommands::new(plan, host)))
}

/// Problems of the `[sparkplug]` section, as (path, message).
pub(crate) fn check(config: &Config) -> Vec<(String, String)> {
    command::plan(&config.sparkplug).err().unwrap_or_default()
}

/// The API's way to the edge nodes' writable metrics.
pub(crate) struct SparkplugSetpoints(pub(crate) Arc<SparkplugCommands>);

impl SetpointControl for SparkplugSetpoints {
    fn serves(&self, device: &str) -> bool {
        self.0.knows(device)
    }

    fn setpoints(&self) -> Vec<Setpoint> {
        self.0
            .points()
            .iter()
            .map(|point| {
                let declared = self.0.declared(point);
                let alias = declared
                    .and_then(|(_, alias)| alias)
                    .map(|a| format!(" (alias {a})"))
                    .unwrap_or_default();
                Setpoint {
                    device: point.device_id.clone(),
                    signal: point.metric.clone(),
                    protocol: "sparkplug".into(),
                    address: format!("{}{alias}", point.command_topic()),
                    // Known from the node's birth; until one is seen, "birth".
                    data_type: declared.map_or_else(|| "birth".into(), |(dt, _)| format!("{dt:?}")),
                    min: point.range.map(|(min, _)| min),
                    max: point.range.map(|(_, max)| max),
                    range_from: point.range.map(|_| "configuration".into()),
                    unit: point.unit.clone(),
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
            crate::setpoints::answered(write, setpoint_error, json_of).await
        })
    }
}

/// A reported scalar as JSON (the kinds a setpoint takes: numbers, Booleans and text).
fn json_of(value: Value) -> serde_json::Value {
    match value {
        Value::Bool(b) => serde_json::Value::Bool(b),
        Value::I64(n) => serde_json::Value::from(n),
        Value::U64(n) => serde_json::Value::from(n),
        Value::F64(n) => serde_json::Value::from(n),
        Value::Str(s) => serde_json::Value::from(s),
        _ => serde_json::Value::Null,
    }
}

/// What the API makes of a Sparkplug write's failure. A command that was published and not
/// answered by a report may have been applied: a timeout, stored as a failed write.
fn setpoint_error(e: SparkplugError) -> SetpointError {
    let message = e.to_string();
    match e {
        SparkplugError::UnknownDevice(_) => SetpointError::UnknownDevice(message),
        SparkplugError::NotWritable { .. } => SetpointError::NotWritable(message),
        SparkplugError::InvalidSetpoint { .. } => SetpointError::Invalid(message),
        SparkplugError::CommandBusy(_) => SetpointError::Busy(message),
        SparkplugError::NoReport { .. } => SetpointError::Timeout(message),
        _ => SetpointError::Unavailable(message),
    }
}
