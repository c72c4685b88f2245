//! Setpoint writes (decision 0090) routed to the connector that reads the device: the Modbus
//! poller's devices, the OPC UA servers' items, the Sparkplug edge nodes' metrics (decision
//! 0091).

use std::sync::Arc;

use fabrik_api::setpoints::{
    DeviceAnswer, Setpoint, SetpointControl, SetpointError, SetpointValue,
};
use fabrik_connect::setpoint::{SetValue, Written};
use fabrik_runtime::config::Config;
use futures::future::BoxFuture;

/// Every connector that writes, in module order.
pub(crate) struct Connectors(pub(crate) Vec<Arc<dyn SetpointControl>>);

impl SetpointControl for Connectors {
    fn setpoints(&self) -> Vec<Setpoint> {
        let mut all: Vec<Setpoint> = self.0.iter().flat_map(|c| c.setpoints()).collect();
        // A range configured for a point that turns out to hold text does not apply to it.
        for text in all
            .iter_mut()
            .filter(|s| fabrik_api::setpoints::takes_text(&s.data_type))
        {
            (text.min, text.max, text.range_from) = (None, None, None);
        }
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
                    "no Modbus device, OPC UA item or Sparkplug setpoint is configured for \
                     device `{device}` (a Sparkplug metric's device is `group/edge_node` or \
                     `group/edge_node/device`)"
                )))
            }),
        }
    }
}

/// The API's answer from a connector's write: `error` says what its failure means to the
/// API, `json` how the value read back is shown.
pub(crate) async fn answered<V, E>(
    write: impl std::future::Future<Output = Result<Written<V>, E>>,
    error: fn(E) -> SetpointError,
    json: fn(V) -> serde_json::Value,
) -> Result<DeviceAnswer, SetpointError> {
    let written = write.await.map_err(error)?;
    Ok(DeviceAnswer {
        read_back: written.read_back.map(json),
        confirmed: written.confirmed,
    })
}

/// A value read back, as JSON (Modbus and OPC UA values serialize as bare numbers, Booleans
/// and strings).
pub(crate) fn to_json<V: serde::Serialize>(value: V) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// The API's value as the connectors take it.
pub(crate) fn set_value(value: SetpointValue) -> SetValue {
    match value {
        SetpointValue::Bool(b) => SetValue::Bool(b),
        SetpointValue::Number(v) => SetValue::Number(v),
        SetpointValue::Text(text) => SetValue::Text(text),
    }
}

/// Every point the configuration declares writable: (device, point, connector, where).
fn declared(config: &Config) -> Vec<(&str, &str, &'static str, String)> {
    let mut declared: Vec<(&str, &str, &'static str, String)> = Vec::new();
    for d in &config.modbus.devices {
        for p in d.maps.iter().flat_map(|m| &m.points).filter(|p| p.writable) {
            declared.push((&d.id, &p.name, "modbus", "[[modbus.devices]]".to_owned()));
        }
    }
    for server in &config.opcua.servers {
        for item in server.items.iter().filter(|i| i.writable) {
            if let Some(device) = item.device.as_ref().or(server.device.as_ref()) {
                declared.push((
                    device,
                    &item.signal,
                    "opcua",
                    format!("[[opcua.servers]] `{}` item `{}`", server.id, item.node_id),
                ));
            }
        }
    }
    for (i, p) in config.sparkplug.setpoints.iter().enumerate() {
        declared.push((
            &p.device,
            &p.metric,
            "sparkplug",
            format!("sparkplug.setpoints[{i}]"),
        ));
    }
    declared
}

/// The configuration's writable points as (device, point).
pub(crate) fn writable_points(config: &Config) -> Vec<(String, String)> {
    declared(config)
        .into_iter()
        .map(|(device, point, _, _)| (device.to_owned(), point.to_owned()))
        .collect()
}

/// Why a rule's proposed action (decision 0092) names no point of `writable`, if it does not.
pub(crate) fn unwritable_action(
    rule: &fabrik_runtime::config::AlertRuleConfig,
    writable: &[(String, String)],
) -> Option<String> {
    let action = rule.action.as_ref()?;
    let found = writable
        .iter()
        .any(|(d, s)| *s == action.signal && action.device.as_deref().is_none_or(|want| want == d));
    (!found).then(|| {
        format!(
            "rule `{}` proposes setting `{}`{}, which no connector declares writable \
             (`writable = true`, or a [[sparkplug.setpoints]] entry)",
            rule.name,
            action.signal,
            action
                .device
                .as_deref()
                .map(|d| format!(" of device `{d}`"))
                .unwrap_or_default()
        )
    })
}

/// A device's point declared writable in two connectors would be listed twice and written
/// through one only: refused, naming both places; and a rule's proposed action must name a
/// writable point.
pub(crate) fn check(config: &Config) -> Vec<(String, String)> {
    // (device, point, connector, where): each connector checks its own duplicates.
    let declared = declared(config);
    let mut problems = Vec::new();
    // A rule's proposed action (decision 0092) names a point some connector declares writable:
    // a proposal nobody can apply would only show up when the alert fires.
    let writable = writable_points(config);
    for (i, rule) in config.alerting.rules.iter().enumerate() {
        if let Some(problem) = unwritable_action(rule, &writable) {
            problems.push((format!("alerting.rules[{i}].action"), problem));
        }
    }
    for (n, (device, signal, connector, place)) in declared.iter().enumerate() {
        if let Some((_, _, _, first)) = declared[..n]
            .iter()
            .find(|(d, s, c, _)| d == device && s == signal && c != connector)
        {
            problems.push((
                "setpoints".to_owned(),
                format!(
                    "device `{device}` point `{signal}` is declared writable in {first} and in \
                     {place}; declare it in one place"
                ),
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rules_proposed_action_must_name_a_writable_point() {
        let config: Config = toml::from_str(
            r#"
            [[modbus.devices]]
            id = "pump-1"
            address = "127.0.0.1:502"
            [[modbus.devices.maps]]
            poll_interval_ms = 1000
            [[modbus.devices.maps.points]]
            name = "speed"
            table = "holding"
            address = 0
            type = "u16"
            writable = true
            min = 0.0
            max = 10.0

            [[alerting.rules]]
            name = "fast"
            table = "pump"
            value = "speed"
            condition = "above"
            threshold = 9.0
            action = { signal = "speed", value = 5 }

            [[alerting.rules]]
            name = "elsewhere"
            table = "pump"
            value = "speed"
            condition = "above"
            threshold = 9.0
            action = { signal = "speed", value = 5, device = "pump-2" }

            [[alerting.rules]]
            name = "flow"
            table = "pump"
            value = "speed"
            condition = "above"
            threshold = 9.0
            action = { signal = "flow", value = true }
            "#,
        )
        .expect("parses");
        let problems = check(&config);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].0, "alerting.rules[1].action");
        assert!(
            problems[0]
                .1
                .contains("rule `elsewhere` proposes setting `speed` of device `pump-2`"),
            "{problems:?}"
        );
        assert_eq!(problems[1].0, "alerting.rules[2].action");
    }

    #[test]
    fn a_point_writable_in_both_connectors_is_refused() {
        let config: Config = toml::from_str(
            r#"
            [[modbus.devices]]
            id = "pump-1"
            address = "127.0.0.1:502"
            [[modbus.devices.maps]]
            poll_interval_ms = 1000
            [[modbus.devices.maps.points]]
            name = "speed"
            table = "holding"
            address = 0
            type = "u16"
            writable = true
            min = 0.0
            max = 10.0

            [[opcua.servers]]
            id = "plc"
            endpoint = "opc.tcp://127.0.0.1:4840/"
            pki_dir = "pki"
            device = "pump-1"
            [[opcua.servers.items]]
            node_id = "ns=2;s=Speed"
            signal = "speed"
            writable = true
            min = 0.0
            max = 10.0
            [[opcua.servers.items]]
            node_id = "ns=2;s=Other"
            signal = "other"
            writable = true
            min = 0.0
            max = 10.0
            "#,
        )
        .expect("parses");
        let problems = check(&config);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].1.contains(
                "device `pump-1` point `speed` is declared writable in [[modbus.devices]] and \
                 in [[opcua.servers]] `plc` item `ns=2;s=Speed`"
            ),
            "{problems:?}"
        );
    }
}
