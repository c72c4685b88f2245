//! The bridge module: subscribes to external MQTT brokers (`[[bridges]]`) and feeds their
//! messages into the ingest path as source `bridge:<name>`, where `[[mappings]]` with that
//! source turn them into rows (or dead letters).
//!
//! The client reconnects with backoff and resubscribes by itself; a QoS 1 message is
//! acknowledged to the broker only once the ingest path has stored it.
//!
//! A bridge with `sparkplug_host = true` (decision 0093) is also Fabrik's Sparkplug host
//! session on that broker: its `STATE` is the client's will and its first publish on every
//! connection, and rebirth requests and commands to the edge nodes that came through it are
//! published there.

use std::collections::BTreeSet;
use std::sync::Arc;

use fabrik_connect::client::{ClientEvent, ClientOptions, ClientTls, MqttClient, Presence};
use fabrik_connect::ingest::RawMessage;
use fabrik_connect::message_trace;
use fabrik_connect::sparkplug::command::{SparkplugCommands, state_payload};
use fabrik_core::Timestamp;
use fabrik_runtime::ServiceHandle;
use fabrik_runtime::config::{BridgeConfig, Config};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Problems of `[[bridges]]`, as `bridges[i].field`.
pub(crate) fn check(config: &Config) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    let mut host_brokers = BTreeSet::new();
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
            // Fabrik's own events on the ingest queue use that prefix.
            let proper = fabrik_connect::mqtt::topic::split_shared(t)
                .ok()
                .flatten()
                .map_or(t.as_str(), |(_, filter)| filter);
            if proper.starts_with("$fabrik/") || proper == "$fabrik" {
                problem(
                    "topics",
                    format!("`{t}`: `$fabrik/` topics are Fabrik's own"),
                );
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
        // Two host sessions on one broker share one STATE topic: either's will would say the
        // host is gone while the other is still there.
        if b.sparkplug_host && !host_brokers.insert(b.address.as_str()) {
            problem(
                "sparkplug_host",
                format!(
                    "an earlier bridge is already the Sparkplug host on `{}`; one bridge per \
                     broker may be",
                    b.address
                ),
            );
        }
        // A host that hears no births has nothing to command.
        if b.sparkplug_host
            && !b
                .topics
                .iter()
                .any(|t| fabrik_connect::mqtt::topic::overlaps(t, "spBv1.0/+/NBIRTH/+"))
        {
            problem(
                "sparkplug_host",
                "the bridge's topics receive no Sparkplug births; subscribe to `spBv1.0/#` (or \
                 a group's `spBv1.0/<group>/#`)"
                    .into(),
            );
        }
    }
    problems
}

/// The client's options; `host_state` is the `STATE` topic of a bridge that is the Sparkplug
/// host on its broker.
fn options(b: &BridgeConfig, host_state: Option<&str>) -> ClientOptions {
    let mut o = ClientOptions::new(
        b.address.clone(),
        b.client_id
            .clone()
            .unwrap_or_else(|| format!("fabrik-bridge-{}", b.name)),
    );
    o.username = b.username.clone();
    o.password = b.password.clone();
    // Subscribed before the first connection says anything (a host's STATE brings births).
    o.subscriptions = b.topics.iter().map(|t| (t.clone(), b.qos)).collect();
    // A persistent session keeps QoS 1 messages for us while the link is down. A Sparkplug host
    // starts clean, as the specification asks: its nodes rebirth for it instead.
    o.clean_session = host_state.is_some();
    o.presence = host_state.map(|topic| Presence {
        topic: topic.to_owned(),
        payload: Arc::new(|online: bool, since: u64| {
            fabrik_connect::ingest::Bytes::from(state_payload(online, since))
        }),
    });
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

/// Starts one client per bridge; those that are the Sparkplug host on their broker carry
/// `commands`' rebirth requests and writes to the nodes there.
pub(crate) async fn start(
    config: &Config,
    ingest: mpsc::Sender<RawMessage>,
    commands: Arc<SparkplugCommands>,
) -> Result<ServiceHandle, String> {
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for b in &config.bridges {
        let host_state = b.sparkplug_host.then(|| commands.state_topic());
        let (client, events) = MqttClient::start(options(b, host_state), stop.child_token())
            .map_err(|e| format!("bridge `{}`: {e}", b.name))?;
        if b.sparkplug_host {
            let client = client.clone();
            commands.connect(
                &format!("bridge:{}", b.name),
                Arc::new(move |_, topic, payload, expires_at| {
                    client.try_publish_until(topic, payload, expires_at.into())
                }),
            );
        }
        tracing::info!(bridge = %b.name, address = %b.address, topics = ?b.topics, "MQTT bridge started.");
        tasks.push(tokio::spawn(forward(
            Arc::from(format!("bridge:{}", b.name)),
            b.sparkplug_host,
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

/// Moves messages from one bridge client into the ingest queue until the client stops; a
/// Sparkplug host bridge also tells it when the broker is lost, after what came before.
async fn forward(
    source: Arc<str>,
    sparkplug_host: bool,
    // Kept alive so the client's command channel stays open.
    _client: MqttClient,
    mut events: mpsc::Receiver<ClientEvent>,
    ingest: mpsc::Sender<RawMessage>,
) {
    let mut connected = false;
    let name = source.strip_prefix("bridge:").unwrap_or(&source).to_owned();
    let up = metrics::gauge!("fabrik_bridge_connected", "bridge" => name.clone());
    let losses = metrics::counter!("fabrik_bridge_connections_lost_total", "bridge" => name);
    up.set(0.0);
    while let Some(event) = events.recv().await {
        match event {
            ClientEvent::Connected => {
                connected = true;
                up.set(1.0);
                tracing::info!(bridge = %source, "Bridge connected.");
            }
            ClientEvent::Disconnected(reason) => {
                tracing::warn!(bridge = %source, reason, "Bridge disconnected; reconnecting.");
                up.set(0.0);
                // Failed attempts while away say so again; the loss is told once.
                let was_connected = std::mem::take(&mut connected);
                if was_connected {
                    losses.increment(1);
                }
                if was_connected && sparkplug_host {
                    let lost = RawMessage {
                        source: source.clone(),
                        topic: Arc::from(fabrik_connect::ingest::CONNECTION_LOST_TOPIC),
                        payload: fabrik_connect::ingest::Bytes::new(),
                        received_at: Timestamp::now(),
                        publisher: None,
                        done: None,
                        trace: message_trace::MessageTrace::none(),
                    };
                    if ingest.send(lost).await.is_err() {
                        return;
                    }
                }
            }
            // Only the bridge itself says this (above); a broker's message with that topic
            // is nobody's.
            ClientEvent::Message(m) if m.topic == fabrik_connect::ingest::CONNECTION_LOST_TOPIC => {
                if let Some(done) = m.done {
                    let _ = done.send(Ok(()));
                }
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
    up.set(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_bridge(topics: &str) -> Config {
        toml::from_str(&format!(
            "[[bridges]]\nname = \"site\"\naddress = \"broker:1883\"\ntopics = {topics}\n\
             sparkplug_host = true\n"
        ))
        .expect("parses")
    }

    #[test]
    fn a_sparkplug_host_bridge_must_hear_births() {
        for heard in [
            r#"["spBv1.0/#"]"#,
            r#"["spBv1.0/Site/#"]"#,
            r##"["#"]"##,
            r#"["plant/+/telemetry", "spBv1.0/+/NBIRTH/+"]"#,
        ] {
            assert_eq!(check(&host_bridge(heard)), Vec::new(), "{heard}");
        }
        for deaf in [r#"["plant/+/telemetry"]"#, r#"["spBv1.0/Site/NDATA/+"]"#] {
            let problems = check(&host_bridge(deaf));
            assert_eq!(problems.len(), 1, "{deaf}: {problems:?}");
            assert_eq!(problems[0].0, "bridges[0].sparkplug_host");
        }
    }

    #[test]
    fn fabriks_own_topics_are_not_subscribed() {
        for own in ["$fabrik/connection-lost", "$share/g/$fabrik/#"] {
            let problems = check(&host_bridge(&format!(r#"["spBv1.0/#", "{own}"]"#)));
            assert_eq!(problems.len(), 1, "{own}: {problems:?}");
            assert_eq!(problems[0].0, "bridges[0].topics");
        }
    }

    #[test]
    fn one_host_bridge_per_broker() {
        let mut config = host_bridge(r#"["spBv1.0/#"]"#);
        let mut second = config.bridges[0].clone();
        second.name = "site-again".into();
        config.bridges.push(second.clone());
        let problems = check(&config);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "bridges[1].sparkplug_host");
        // Another broker, or the same one read without being its host: fine.
        config.bridges[1].address = "other-broker:1883".into();
        assert_eq!(check(&config), Vec::new());
        config.bridges[1] = second;
        config.bridges[1].sparkplug_host = false;
        assert_eq!(check(&config), Vec::new());
    }

    #[test]
    fn a_sparkplug_host_bridge_starts_clean_with_its_state_as_will() {
        let config = host_bridge(r#"["spBv1.0/#"]"#);
        let host = options(&config.bridges[0], Some("spBv1.0/STATE/fabrik"));
        assert!(
            host.clean_session,
            "the specification asks a host for a clean session"
        );
        let presence = host.presence.expect("a presence");
        assert_eq!(presence.topic, "spBv1.0/STATE/fabrik");
        assert_eq!(
            &(presence.payload)(false, 7)[..],
            br#"{"online":false,"timestamp":7}"#
        );
        assert_eq!(host.subscriptions, vec![("spBv1.0/#".to_owned(), 1)]);
        let plain = options(&config.bridges[0], None);
        assert!(!plain.clean_session && plain.presence.is_none());
    }
}
