//! Online/offline state of devices Fabrik reaches out to (Modbus polls, OPC UA
//! subscriptions): the connector decides from its readings, this keeps the registry's state,
//! events and counters in step, writing only on a change.

use std::collections::BTreeMap;

use fabrik_registry::Registry;

/// What the registry was last told about each device.
pub(crate) struct DeviceStates {
    registry: Registry,
    connector: &'static str,
    online: BTreeMap<String, bool>,
}

impl DeviceStates {
    pub(crate) fn new(registry: Registry, connector: &'static str) -> Self {
        Self {
            registry,
            connector,
            online: BTreeMap::new(),
        }
    }

    /// Counts one message (a poll, a batch of changes) for the device.
    pub(crate) fn count(&self, device: &str, failed: bool) {
        self.registry.count_message(device, failed);
    }

    /// Records `online` for `device` if it changed; unregistered devices are skipped.
    pub(crate) async fn set(&mut self, device: &str, online: bool, detail: &str) {
        if self.online.get(device) == Some(&online) {
            return;
        }
        if self.registry.get(device).await.is_err() {
            return;
        }
        let detail = format!("{}: {detail}", self.connector);
        match self.registry.set_connected(device, online, &detail).await {
            Ok(()) => {
                self.online.insert(device.to_owned(), online);
            }
            Err(e) => {
                tracing::warn!(device, connector = self.connector, error = %e, "Could not record a device's state.");
            }
        }
    }
}
