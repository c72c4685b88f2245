//! Setpoint writes (decision 0090) routed to the connector that reads the device: the Modbus
//! poller's devices, the OPC UA servers' items.

use std::sync::Arc;

use fabrik_api::setpoints::{
    DeviceAnswer, Setpoint, SetpointControl, SetpointError, SetpointValue,
};
use fabrik_connect::setpoint::SetValue;
use futures::future::BoxFuture;

/// Every connector that writes, in module order.
pub(crate) struct Connectors(pub(crate) Vec<Arc<dyn SetpointControl>>);

impl SetpointControl for Connectors {
    fn setpoints(&self) -> Vec<Setpoint> {
        let mut all: Vec<Setpoint> = self.0.iter().flat_map(|c| c.setpoints()).collect();
        all.sort_by(|a, b| (&a.device, &a.signal).cmp(&(&b.device, &b.signal)));
        all
    }

    fn serves(&self, device: &str) -> bool {
        self.0.iter().any(|c| c.serves(device))
    }

    fn set(
        &self,
        device: String,
        signal: String,
        value: SetpointValue,
    ) -> BoxFuture<'_, Result<DeviceAnswer, SetpointError>> {
        // The connector that lists the point writes it; else the one that reads the device
        // says the point is not writable; else nobody knows the device. (A device id may be
        // configured in more than one connector.)
        let lists = |c: &&Arc<dyn SetpointControl>| {
            c.setpoints()
                .iter()
                .any(|s| s.device == device && s.signal == signal)
        };
        let connector = self
            .0
            .iter()
            .find(lists)
            .or_else(|| self.0.iter().find(|c| c.serves(&device)));
        match connector {
            Some(connector) => connector.set(device, signal, value),
            None => Box::pin(async move {
                Err(SetpointError::UnknownDevice(format!(
                    "no Modbus device or OPC UA item is configured for device `{device}`"
                )))
            }),
        }
    }
}

/// The API's value as the connectors take it.
pub(crate) fn set_value(value: SetpointValue) -> SetValue {
    match value {
        SetpointValue::Bool(b) => SetValue::Bool(b),
        SetpointValue::Number(v) => SetValue::Number(v),
    }
}
