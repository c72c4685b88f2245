//! The AsyncAPI 3.1 document of Fabrik's topics: what devices publish to the MQTT endpoint
//! (built from the default mappings, so a changed topic changes the document), the command
//! topics the ACLs let them read, Sparkplug B, MQTT alert notifications, and the uplink's NATS
//! subject. Committed as `docs/api/asyncapi.json` (a test fails when it is stale; regenerate
//! with `fabrik asyncapi > docs/api/asyncapi.json`) and served at `/api/v1/asyncapi.json`.

use fabrik_runtime::config::UplinkConfig;
use serde_json::{Map, Value, json};

/// `devices/{device}/telemetry` → the names of its `{...}` parameters.
fn parameters_of(address: &str) -> Vec<&str> {
    address
        .split('/')
        .flat_map(|level| level.split('.'))
        .filter_map(|level| level.strip_prefix('{').and_then(|l| l.strip_suffix('}')))
        .collect()
}

fn parameter_text(name: &str) -> &'static str {
    match name {
        "device" => "the device id: its MQTT user name, which the ACLs require in the topic",
        "measurement" => "the table the rows go to",
        "signal" => "the field of table `clips` that names the clip",
        "command" => "any command name, and deeper levels, below the device's `cmd`",
        "group" => "the Sparkplug group id",
        "edgeNode" => "the Sparkplug edge node id (the connecting device owns it)",
        "sparkplugDevice" => "a device behind the edge node",
        "hostId" => "Fabrik's Sparkplug host id (`[sparkplug] host_id`, default `fabrik`)",
        "messageType" => {
            "NBIRTH, NDEATH, NDATA, NCMD for the node; DBIRTH, DDEATH, DDATA, DCMD for a device"
        }
        "node" => "the edge node's name (`uplink.node`)",
        "topic" => {
            "the notifier's `topic` with `{rule}`, `{device}`, `{severity}`, `{status}` filled in (made topic-safe)"
        }
        _ => "",
    }
}

fn channel(address: &str, description: &str, message: &str, server: &str) -> Value {
    let parameters: Map<String, Value> = parameters_of(address)
        .into_iter()
        .map(|p| (p.to_owned(), json!({ "description": parameter_text(p) })))
        .collect();
    json!({
        "address": address,
        "description": description,
        "parameters": parameters,
        "messages": { message: { "$ref": format!("#/components/messages/{message}") } },
        "servers": [{ "$ref": format!("#/servers/{server}") }],
    })
}

fn operation(action: &str, channel: &str, summary: &str) -> Value {
    json!({
        "action": action,
        "channel": { "$ref": format!("#/channels/{channel}") },
        "summary": summary,
    })
}

/// The document as pretty JSON with a trailing newline.
pub(crate) fn document() -> String {
    let mut channels = Map::new();
    let mut operations = Map::new();
    for mapping in fabrik_connect::mapping::default_mappings() {
        let (message, what) = match mapping.format.as_str() {
            "wav" => (
                "wavClip",
                "a WAV clip, stored as a blob and named by a row of table `clips`",
            ),
            _ => (
                "jsonTelemetry",
                "a JSON object of readings, one row per message",
            ),
        };
        let table = match mapping.measurement.as_deref() {
            Some("{measurement}") => "the table named in the topic".to_owned(),
            Some(table) => format!("table `{table}`"),
            None => "the table named by the device's type".to_owned(),
        };
        channels.insert(
            mapping.name.clone(),
            channel(
                &mapping.topic,
                &format!("Default mapping `{}`: {what}, into {table}.", mapping.name),
                message,
                "device-endpoint",
            ),
        );
        operations.insert(
            format!("receive-{}", mapping.name),
            operation(
                "receive",
                &mapping.name,
                "Fabrik stores what devices publish here (QoS 1/2: acknowledged once durable).",
            ),
        );
    }
    channels.insert(
        "device-commands".into(),
        channel(
            "devices/{device}/cmd/{command}",
            "Commands to a device: the only topics a device may subscribe to by default \
             (`devices/{device_id}/cmd/#`); an operator connecting as `admin` publishes them.",
            "command",
            "device-endpoint",
        ),
    );
    operations.insert(
        "send-device-commands".into(),
        operation(
            "send",
            "device-commands",
            "The endpoint delivers commands to the device they name.",
        ),
    );
    channels.insert(
        "sparkplug-node".into(),
        channel(
            "spBv1.0/{group}/{messageType}/{edgeNode}",
            "Sparkplug B edge node messages (NBIRTH, NDEATH, NDATA in; NCMD out: a rebirth \
             request after a sequence gap, or an operator's write of a metric listed in \
             `[[sparkplug.setpoints]]`). Births register devices and metric aliases. The same \
             topics on the broker of a `[[bridges]]` entry with `sparkplug_host = true`.",
            "sparkplugPayload",
            "device-endpoint",
        ),
    );
    channels.insert(
        "sparkplug-device".into(),
        channel(
            "spBv1.0/{group}/{messageType}/{edgeNode}/{sparkplugDevice}",
            "Sparkplug B device messages (DBIRTH, DDEATH, DDATA in; DCMD out: an operator's \
             write of a metric listed in `[[sparkplug.setpoints]]`).",
            "sparkplugPayload",
            "device-endpoint",
        ),
    );
    for (name, what) in [
        ("sparkplug-node", "Fabrik stores node data and births."),
        ("sparkplug-device", "Fabrik stores device data and births."),
    ] {
        operations.insert(format!("receive-{name}"), operation("receive", name, what));
    }
    operations.insert(
        "send-sparkplug-rebirth".into(),
        operation(
            "send",
            "sparkplug-node",
            "NCMD with `Node Control/Rebirth` after a sequence gap.",
        ),
    );
    for (name, kind) in [("node", "NCMD"), ("device", "DCMD")] {
        operations.insert(
            format!("send-sparkplug-{name}-setpoint"),
            operation(
                "send",
                &format!("sparkplug-{name}"),
                &format!(
                    "{kind} (QoS 0, not retained) setting one metric an operator wrote \
                     (`POST /api/v1/devices/{{id}}/setpoints/{{metric}}`): by the alias its \
                     birth gave, else by name, in the birth's type; the node's next report of \
                     the metric answers it (decision 0091)."
                ),
            ),
        );
    }
    channels.insert(
        "sparkplug-host-state".into(),
        channel(
            "spBv1.0/STATE/{hostId}",
            "Fabrik's state as the edge nodes' Sparkplug primary host (QoS 1, retained), which \
             nodes configured with a primary host wait for before they birth (decisions 0091, \
             0093). Published on this endpoint, and on the broker of each `[[bridges]]` entry \
             with `sparkplug_host = true`.",
            "sparkplugState",
            "device-endpoint",
        ),
    );
    operations.insert(
        "send-sparkplug-host-state".into(),
        operation(
            "send",
            "sparkplug-host-state",
            "Online at start (through a host bridge: on every connection, after its \
             subscriptions, and again when an earlier connection's will arrives late); offline \
             with the same timestamp before a deliberate stop; through a host bridge, offline \
             is also its MQTT will.",
        ),
    );
    channels.insert(
        "alert-notifications".into(),
        channel(
            "{topic}",
            "An MQTT notifier's messages (`[[alerting.notifiers]] kind = \"mqtt\"`): one per \
             alert state change, retained if the notifier says so.",
            "alertNotification",
            "device-endpoint",
        ),
    );
    operations.insert(
        "send-alert-notifications".into(),
        operation("send", "alert-notifications", "Alert state changes."),
    );
    let uplink = UplinkConfig::default();
    channels.insert(
        "uplink".into(),
        channel(
            &format!("{}.{{node}}", uplink.subject),
            "Rows an edge node stored, forwarded to the hub's JetStream stream \
             (`uplink.stream`; prefix `uplink.subject`, shown with its default). Decision 0030.",
            "uplinkChunk",
            "hub-nats",
        ),
    );
    operations.insert(
        "send-uplink".into(),
        operation(
            "send",
            "uplink",
            "An edge node publishes each write, in WAL order, and waits for JetStream's \
             acknowledgement before it lets the WAL go.",
        ),
    );
    operations.insert(
        "receive-uplink".into(),
        operation(
            "receive",
            "uplink",
            "The hub's durable consumer stores each message, then acknowledges it; one it \
             cannot store becomes a `_dead_letters` row.",
        ),
    );
    // MQTT 5 user properties, as AsyncAPI's headers of a message (decision 0077).
    let trace_headers = json!({
        "type": "object",
        "properties": {
            "traceparent": {
                "type": "string",
                "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                "description": "MQTT 5 user property: the publisher's W3C trace context. A \
                    sampled one gives the message a span in the publisher's trace, from \
                    receipt until its rows are durable (`fabrik.raw_id` = the rows' `_raw_id`), \
                    exported when `[traces]` is on.",
            },
        },
    });
    let doc = json!({
        "asyncapi": "3.1.0",
        "info": {
            "title": "Fabrik topics",
            "version": "1",
            "description": "MQTT topics of Fabrik's device endpoint and the NATS subject of the \
                edge → hub uplink. Devices authenticate with user name = device id and password \
                = its token (or a client certificate whose CN is the device id); the ACLs deny \
                by default: a device publishes only under `devices/{device_id}/` and its \
                Sparkplug edge node's topics, and subscribes only to its `cmd` topics.",
        },
        "servers": {
            "device-endpoint": {
                "host": "localhost:1883",
                "protocol": "mqtt",
                "description": "MQTT 3.1.1 and 5.0 over TCP (`mqtt.listen`) or TLS \
                    (`mqtt.tls_listen`, protocol secure-mqtt).",
                "security": [
                    { "$ref": "#/components/securitySchemes/deviceToken" },
                    { "$ref": "#/components/securitySchemes/deviceCertificate" },
                ],
            },
            "hub-nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "A NATS server with JetStream (`uplink.url`, `hub.url`).",
                "security": [{ "$ref": "#/components/securitySchemes/natsCredentials" }],
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "securitySchemes": {
                "deviceToken": {
                    "type": "userPassword",
                    "description": "user name = device id, password = the device's token",
                },
                "deviceCertificate": {
                    "type": "X509",
                    "description": "mTLS: the client certificate's CN is the device id",
                },
                "natsCredentials": {
                    "type": "userPassword",
                    "description": "`user`/`password` or `token` of `[uplink]`/`[hub]`; TLS \
                        with `tls_ca`, mTLS with `tls_cert`/`tls_key`",
                },
            },
            "messages": {
                "jsonTelemetry": {
                    "contentType": "application/json",
                    "summary": "Readings: `ts` (number, unit by magnitude, or RFC 3339) is the \
                        time (default: receipt); `quality` good|uncertain|bad; every other \
                        scalar member is a field, nested objects flattened with `_`.",
                    "payload": {
                        "type": "object",
                        "properties": {
                            "ts": { "oneOf": [{ "type": "number" }, { "type": "string", "format": "date-time" }] },
                            "quality": { "type": "string", "enum": ["good", "uncertain", "bad"] },
                        },
                        "additionalProperties": {
                            "oneOf": [
                                { "type": "number" },
                                { "type": "boolean" },
                                { "type": "string" },
                                { "type": "object" },
                            ],
                        },
                    },
                    "headers": trace_headers,
                    "examples": [{ "payload": { "ts": 1_735_689_600_000_i64, "vibration_rms": 2.4, "temperature": 61.5 } }],
                },
                "wavClip": {
                    "contentType": "audio/wav",
                    "summary": "A PCM WAV recording (8/16/24/32-bit integer or 32-bit float); \
                        one that does not parse is a dead letter naming why.",
                    "payload": { "type": "string", "format": "binary" },
                    "headers": trace_headers,
                },
                "command": {
                    "summary": "Any payload; Fabrik routes it without reading it.",
                    "payload": { "type": "string", "format": "binary" },
                },
                "sparkplugPayload": {
                    "contentType": "application/x-protobuf",
                    "summary": "Sparkplug B protobuf payload (timestamp, metrics with names or \
                        aliases, seq).",
                    "payload": { "type": "string", "format": "binary" },
                    "headers": trace_headers,
                },
                "sparkplugState": {
                    "contentType": "application/json",
                    "summary": "Sparkplug 3.0 host application STATE.",
                    "payload": {
                        "type": "object",
                        "required": ["online", "timestamp"],
                        "properties": {
                            "online": { "type": "boolean" },
                            "timestamp": {
                                "type": "integer",
                                "description": "when Fabrik's endpoint started, or the host \
                                    bridge's connection was made (ms since the Unix epoch): the \
                                    same in its online and offline messages",
                            },
                        },
                    },
                    "examples": [{ "payload": { "online": true, "timestamp": 1_735_689_600_000_i64 } }],
                },
                "alertNotification": {
                    "contentType": "application/json",
                    "summary": "One alert's state.",
                    "payload": {
                        "type": "object",
                        "properties": {
                            "rule": { "type": "string" },
                            "device": { "type": "string" },
                            "severity": { "type": "string" },
                            "status": { "type": "string", "enum": ["firing", "resolved"] },
                        },
                    },
                },
                "uplinkChunk": {
                    "contentType": "application/vnd.apache.arrow.stream",
                    "summary": "The rows of one table and time partition of one write: an Arrow \
                        IPC stream whose schema carries each column's kind (`fabrik.kind`: \
                        time, tag, field:<type>, system), at most the server's max_payload.",
                    "headers": {
                        "type": "object",
                        "required": ["Nats-Msg-Id", "Fabrik-Table"],
                        "properties": {
                            "Nats-Msg-Id": { "type": "string", "description": "`<node>:<instance>:<wal seq>:<chunk>:<part>`, or `<node>:<instance>:backfill:<job>:<table>:<slice start>:<batch>:<part>` for a backfill's: re-sends are dropped by JetStream's duplicate window" },
                            "Fabrik-Table": { "type": "string", "description": "the table" },
                            "Fabrik-Wal-Seq": { "type": "string", "description": "the WAL record on the edge; `0` for a backfill's (read from the store, not the WAL)" },
                        },
                    },
                    "payload": { "type": "string", "format": "binary" },
                },
            },
        },
    });
    let mut text =
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed document is what the code says; regenerate with
    /// `fabrik asyncapi > docs/api/asyncapi.json`.
    #[test]
    fn the_committed_asyncapi_document_is_current() {
        let committed = include_str!("../../../docs/api/asyncapi.json");
        assert!(
            committed == document(),
            "docs/api/asyncapi.json is stale: run `cargo run -p fabrik -- asyncapi > docs/api/asyncapi.json`"
        );
    }

    /// Every channel's parameters are the ones its address names, and every operation points
    /// at a channel that exists.
    #[test]
    fn channels_declare_their_parameters_and_operations_their_channels() {
        let doc: Value = serde_json::from_str(&document()).expect("json");
        let channels = doc["channels"].as_object().expect("channels");
        assert!(channels.contains_key("device-telemetry"));
        assert_eq!(
            channels["device-telemetry"]["address"],
            "devices/{device}/telemetry"
        );
        for (name, channel) in channels {
            let address = channel["address"].as_str().expect("address");
            let declared: Vec<&String> = channel["parameters"]
                .as_object()
                .expect("parameters")
                .keys()
                .collect();
            assert_eq!(declared.len(), parameters_of(address).len(), "{name}");
            for p in parameters_of(address) {
                assert!(
                    !parameter_text(p).is_empty(),
                    "{name}: parameter {p} has no text"
                );
            }
        }
        for (name, op) in doc["operations"].as_object().expect("operations") {
            let target = op["channel"]["$ref"].as_str().expect("ref");
            let channel = target.trim_start_matches("#/channels/");
            assert!(channels.contains_key(channel), "{name} → {target}");
        }
    }
}
