//! The bridge module: subscribes to external MQTT brokers (`[[bridges]]`) and feeds their
//! messages into the ingest path as source `bridge:<name>`, where `[[mappings]]` with that
//! source turn them into rows (or dead letters).
//!
//! The client reconnects with backoff and resubscribes by itself; a QoS 1 message is
//! acknowledged to the broker only once the ingest path has stored it.

use std::collections::BTreeSet;
use std::sync::Arc;

use fabrik_connect::client::{ClientEvent, ClientOptions, ClientTls, MqttClient};
use fabrik_connect::ingest::RawMessage;
use fabrik_connect::message_trace;
use fabrik_core::Timestamp;
use fabrik_runtime::ServiceHandle;
use fabrik_runtime::config::{BridgeConfig, Config};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Problems of `[[bridges]]`, as `bridges[i].field`.
pub(crate) fn check(config: &Config) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for (i, b) in config.bridges.iter().enumerate() {
        let mut problem = |field: &str, message: String| {
            problems.push((format!("bridges[{i}].{field}"), message));
        };
        if b.name.is_empty()
            || !b
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        {
            problem(
                "name",
                format!("`{}`: use letters, digits, `-` and `_`", b.name),
            );
        }
        if !names.insert(b.name.as_str()) {
            problem("name", format!("`{}` is used by an earlier bridge", b.name));
        }
        if b.address
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            problem("address", format!("`{}` is not host:port", b.address));
        }
        if b.topics.is_empty() {
            problem("topics", "name at least one topic filter".into());
        }
        for t in &b.topics {
            if let Err(e) = fabrik_connect::mqtt::topic::validate_filter(t) {
                problem("topics", format!("`{t}`: {e}"));
            }
        }
        if b.qos > 1 {
            problem(
                "qos",
                format!("{} (the bridge subscribes at QoS 0 or 1)", b.qos),
            );
        }
        if let Err(e) = fabrik_connect::client::speaks_mqtt5(b.mqtt_version.as_deref()) {
            problem("mqtt_version", e);
        }
        // The broker keeps the bridge's session under its id; an empty one would be a new
        // session, never expiring under MQTT 5, at every reconnect.
        if b.client_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty())
        {
            problem(
                "client_id",
                "must not be empty (leave it out for `fabrik-bridge-<name>`)".into(),
            );
        }
        if !b.tls && (b.ca.is_some() || b.server_name.is_some()) {
            problem("tls", "`ca` and `server_name` need `tls = true`".into());
        }
    }
    problems
}

fn options(b: &BridgeConfig) -> ClientOptions {
    let mut o = ClientOptions::new(
        b.address.clone(),
        b.client_id
            .clone()
            .unwrap_or_else(|| format!("fabrik-bridge-{}", b.name)),
    );
    o.username = b.username.clone();
    o.password = b.password.clone();
    // A persistent session keeps QoS 1 messages for us while the link is down.
    o.clean_session = false;
    // Checked by `check`.
    o.mqtt5 = fabrik_connect::client::speaks_mqtt5(b.mqtt_version.as_deref()).unwrap_or(false);
    if b.tls {
        let host = b.address.rsplit_once(':').map_or("", |(h, _)| h).to_owned();
        o.tls = Some(ClientTls {
            ca: b.ca.clone().map(Into::into),
            insecure: false,
            server_name: b.server_name.clone().unwrap_or(host),
        });
    }
    o
}

/// Starts one client per bridge.
pub(crate) async fn start(
    config: &Config,
    ingest: mpsc::Sender<RawMessage>,
) -> Result<ServiceHandle, String> {
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for b in &config.bridges {
        let (client, events) = MqttClient::start(options(b), stop.child_token())
            .map_err(|e| format!("bridge `{}`: {e}", b.name))?;
        let filters: Vec<(String, u8)> = b.topics.iter().map(|t| (t.clone(), b.qos)).collect();
        // Queued in the client and re-sent after every reconnect.
        client
            .subscribe(filters)
            .await
            .map_err(|e| format!("bridge `{}`: {e}", b.name))?;
        tracing::info!(bridge = %b.name, address = %b.address, topics = ?b.topics, "MQTT bridge started.");
        tasks.push(tokio::spawn(forward(
            Arc::from(format!("bridge:{}", b.name)),
            client,
            events,
            ingest.clone(),
        )));
    }
    let token = stop.clone();
    let task = tokio::spawn(async move {
        token.cancelled().await;
        for task in tasks {
            let _ = task.await;
        }
        Ok(())
    });
    Ok(ServiceHandle { stop, task })
}

/// Moves messages from one bridge client into the ingest queue until the client stops.
async fn forward(
    source: Arc<str>,
    // Kept alive so the client's command channel stays open.
    _client: MqttClient,
    mut events: mpsc::Receiver<ClientEvent>,
    ingest: mpsc::Sender<RawMessage>,
) {
    while let Some(event) = events.recv().await {
        match event {
            ClientEvent::Connected => tracing::info!(bridge = %source, "Bridge connected."),
            ClientEvent::Disconnected(reason) => {
                tracing::warn!(bridge = %source, reason, "Bridge disconnected; reconnecting.");
            }
            ClientEvent::Message(m) => {
                let trace = message_trace::MessageTrace::start(
                    message_trace::Arrival {
                        source: &source,
                        topic: &m.topic,
                        client_id: None,
                        payload_bytes: m.payload.len(),
                    },
                    message_trace::traceparent(&m.user_properties),
                );
                let message = RawMessage {
                    source: source.clone(),
                    topic: Arc::from(m.topic.as_str()),
                    payload: m.payload,
                    received_at: Timestamp::now(),
                    publisher: None,
                    done: m.done,
                    trace,
                };
                if ingest.send(message).await.is_err() {
                    return;
                }
            }
        }
    }
}
