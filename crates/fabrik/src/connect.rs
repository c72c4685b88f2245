//! Wiring of device connectivity: the adapters through which the MQTT endpoint and the ingest
//! worker (fabrik-connect) reach the registry and the store, and the start functions of the
//! `registry`, `ingest` and `mqtt` modules.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fabrik_connect::ingest::{
    DeviceDirectory, Ingest, IngestSettings, RawMessage, RecordSink, SinkError,
};
use fabrik_connect::mapping;
use fabrik_connect::mqtt::{
    self, Acl, AclRule, Broker, BrokerLimits, ClientIdentity, ConnectRefusal, ConnectRequest,
    MqttEndpoint, MqttHooks, MqttLimits,
};
use fabrik_core::{Lineage, Point, RawMessageIds};
use fabrik_registry::{Registry, RegistryError};
use fabrik_runtime::{Config, ServiceHandle, Settings};
use fabrik_store::{Store, StoreError};
use parking_lot::RwLock;

use crate::ingest_lineage::IngestLineage;
use crate::openlineage::Emitter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The MQTT user name operators log in with, using the admin token as password.
pub(crate) const ADMIN_USER: &str = "admin";

/// Stores connector rows, and counts them for the ingest jobs' lineage when it is reported.
pub(crate) struct StoreSink {
    store: Arc<Store>,
    lineage: Option<Arc<IngestLineage>>,
}

#[async_trait::async_trait]
impl RecordSink for StoreSink {
    async fn write(&self, groups: &[(Lineage, Vec<Point>)]) -> Result<(), SinkError> {
        match self.store.write_groups(groups, "message").await {
            Ok(_) => {
                if let Some(lineage) = &self.lineage {
                    lineage.stored(groups);
                }
                Ok(())
            }
            Err(e @ (StoreError::SchemaConflict { .. } | StoreError::InvalidPoint { .. })) => {
                Err(SinkError::Rejected(e.to_string()))
            }
            Err(e) => Err(SinkError::Unavailable(e.to_string())),
        }
    }

    async fn put_blob(
        &self,
        bytes: &fabrik_connect::ingest::Bytes,
        content_type: &str,
    ) -> Result<fabrik_connect::ingest::BlobHold, SinkError> {
        let (blobs, bytes, media) = (
            self.store.blobs().clone(),
            bytes.clone(),
            content_type.to_owned(),
        );
        match tokio::task::spawn_blocking(move || blobs.put(&bytes, &media)).await {
            Ok(Ok(pin)) => Ok(Box::new(pin)),
            Ok(Err(e @ StoreError::InvalidPoint { .. })) => Err(SinkError::Rejected(e.to_string())),
            Ok(Err(e)) => Err(SinkError::Unavailable(e.to_string())),
            Err(e) => Err(SinkError::Unavailable(e.to_string())),
        }
    }
}

/// Device facts the ingest path needs, kept in memory (filled when devices authenticate).
#[derive(Clone, Default)]
pub(crate) struct Directory {
    types: Arc<RwLock<HashMap<String, String>>>,
    registry: Option<Registry>,
}

impl DeviceDirectory for Directory {
    fn device_type(&self, device_id: &str) -> String {
        self.types
            .read()
            .get(device_id)
            .cloned()
            .unwrap_or_default()
    }

    fn count(&self, device_id: &str, failed: bool) {
        if let Some(r) = &self.registry {
            r.count_message(device_id, failed);
        }
    }
}

/// A connection change, written to the registry by a background task.
type ConnectionEvent = (String, bool, String);

/// What the MQTT endpoint asks of Fabrik.
pub(crate) struct EndpointHooks {
    registry: Option<Registry>,
    directory: Directory,
    ingest: mpsc::Sender<RawMessage>,
    events: mpsc::Sender<ConnectionEvent>,
    allow_anonymous: bool,
    admin_token: Option<String>,
    /// `mqtt`, shared by every message instead of allocated per message.
    source: Arc<str>,
    /// Which devices must hold a current attestation to connect (decision 0050).
    attestation: fabrik_runtime::config::AttestationSettings,
}

fn identity_of(
    device: &fabrik_registry::Device,
    client_id: &str,
    username: &str,
) -> ClientIdentity {
    ClientIdentity {
        client_id: client_id.to_owned(),
        username: username.to_owned(),
        device_id: Some(device.id.clone()),
        sparkplug: device
            .sparkplug_node
            .as_deref()
            .and_then(|n| n.split_once('/'))
            .map(|(g, n)| (g.to_owned(), n.to_owned())),
        unrestricted: false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[async_trait::async_trait]
impl MqttHooks for EndpointHooks {
    async fn authenticate(
        &self,
        request: &ConnectRequest,
    ) -> Result<ClientIdentity, ConnectRefusal> {
        let username = request.username.clone().unwrap_or_default();
        let password = request
            .password
            .as_ref()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        if let (Some(admin), Some(pw)) = (&self.admin_token, &password)
            && username == ADMIN_USER
        {
            if constant_time_eq(admin.as_bytes(), pw.as_bytes()) {
                return Ok(ClientIdentity {
                    client_id: request.client_id.clone(),
                    username,
                    unrestricted: true,
                    ..ClientIdentity::default()
                });
            }
            return Err(ConnectRefusal::BadCredentials);
        }
        let registry = self.registry.as_ref();
        let device = match (&request.cert_identity, &password, registry) {
            (Some(cn), _, Some(r)) => match r.get(cn).await {
                Ok(d) if !d.disabled => Ok(d),
                Ok(_) | Err(RegistryError::NotFound(_)) => Err(ConnectRefusal::NotAuthorized),
                Err(_) => Err(ConnectRefusal::ServerBusy),
            },
            (None, Some(pw), Some(r)) if !username.is_empty() => {
                match r.authenticate(&username, pw).await {
                    Ok(d) => Ok(d),
                    Err(RegistryError::BadCredentials) => Err(ConnectRefusal::BadCredentials),
                    Err(e) => {
                        tracing::warn!(error = %e, "Registry unavailable for MQTT authentication.");
                        Err(ConnectRefusal::ServerBusy)
                    }
                }
            }
            _ if self.allow_anonymous => {
                return Ok(ClientIdentity {
                    client_id: request.client_id.clone(),
                    username,
                    unrestricted: true,
                    ..ClientIdentity::default()
                });
            }
            _ => Err(ConnectRefusal::BadCredentials),
        }?;
        if let Some(registry) = registry {
            match registry
                .attestation_gate(&device.id, &self.attestation)
                .await
            {
                Ok(None) => {}
                Ok(Some(reason)) => {
                    metrics::counter!("fabrik_mqtt_connect_unattested_total").increment(1);
                    tracing::warn!(device = %device.id, reason = %reason, "Connection refused: no current attestation.");
                    let _ = registry
                        .event(&device.id, "refused", &format!("not attested: {reason}"))
                        .await;
                    return Err(ConnectRefusal::NotAuthorized);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Registry unavailable for the attestation check.");
                    return Err(ConnectRefusal::ServerBusy);
                }
            }
        }
        self.directory
            .types
            .write()
            .insert(device.id.clone(), device.device_type.clone());
        Ok(identity_of(&device, &request.client_id, &username))
    }

    async fn ingest(&self, message: mqtt::Inbound) {
        let raw = RawMessage {
            source: self.source.clone(),
            topic: message.topic,
            payload: message.payload,
            received_at: message.received_at,
            publisher: Some(message.identity),
            done: message.done,
            trace: message.trace,
        };
        if let Err(mpsc::error::SendError(raw)) = self.ingest.send(raw).await
            && let Some(done) = raw.done
        {
            let _ = done.send(Err("Fabrik is shutting down".into()));
        }
    }

    fn offer(&self, message: mqtt::Inbound) {
        let raw = RawMessage {
            source: self.source.clone(),
            topic: message.topic,
            payload: message.payload,
            received_at: message.received_at,
            publisher: Some(message.identity),
            done: message.done,
            trace: message.trace,
        };
        if self.ingest.try_send(raw).is_err() {
            metrics::counter!("fabrik_ingest_dropped_total", "reason" => "queue_full").increment(1);
        }
    }

    fn connected(&self, identity: &ClientIdentity, peer: SocketAddr) {
        if let Some(id) = &identity.device_id {
            let _ = self.events.try_send((id.clone(), true, peer.to_string()));
        }
    }

    fn disconnected(&self, identity: &ClientIdentity, reason: &str) {
        if let Some(id) = &identity.device_id {
            let _ = self.events.try_send((id.clone(), false, reason.to_owned()));
        }
    }
}

/// Starts the registry — the database in `<data_dir>/registry.db`, or the PostgreSQL one of
/// `[registry] database_url` — and the task that writes device activity counters every second.
pub(crate) async fn start_registry(
    settings: &Settings,
    slot: &mut Option<Registry>,
) -> Result<ServiceHandle, String> {
    std::fs::create_dir_all(&settings.data_dir).map_err(|e| {
        format!(
            "cannot create the data directory {} (store.data_dir): {e}",
            settings.data_dir.display()
        )
    })?;
    let location = registry_location(settings);
    let registry = Registry::open_at(&location)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(database = %location.display(), "Registry open.");
    if settings.registry_database_url.is_some() {
        // Switching a node that had the embedded files copies nothing by itself.
        for file in ["registry.db", "alerts.db"] {
            let path = settings.data_dir.join(file);
            if path.exists() {
                tracing::warn!(
                    file = %path.display(),
                    "This file is not read while [registry] database_url is set: what it holds \
                     is not in PostgreSQL unless `fabrik registry copy` moved it there."
                );
            }
        }
    }
    if let Some(path) = &settings.attestation.endorsement_authorities {
        let authorities = fabrik_registry::attestation::activation::load_authorities(path)
            .map_err(|e| format!("attestation.endorsement_authorities: {e}"))?;
        tracing::info!(certificates = authorities.len(), path = %path.display(), "EK certificates are checked against these TPM vendor CAs.");
        registry.set_endorsement_authorities(authorities);
    }
    *slot = Some(registry.clone());
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = registry.flush_activity().await {
                        tracing::warn!(error = %e, "Could not write device activity.");
                    }
                    registry.flush_audit_refusals(false).await;
                }
            }
        }
        registry.close().await;
        Ok(())
    });
    Ok(ServiceHandle { stop, task })
}

/// Where the registry of `settings` keeps its tables; the audit key is `<data_dir>/audit.key`
/// either way.
pub(crate) fn registry_location(settings: &Settings) -> fabrik_registry::Location {
    match &settings.registry_database_url {
        Some(url) => fabrik_registry::Location::Postgres {
            url: url.clone(),
            audit_key: settings.data_dir.join("audit.key"),
        },
        None => fabrik_registry::Location::File(settings.data_dir.join("registry.db")),
    }
}

/// What the ingest module hands the MQTT module.
pub(crate) struct IngestWiring {
    pub(crate) tx: mpsc::Sender<RawMessage>,
    pub(crate) directory: Directory,
    /// Writes to edge nodes' metrics (Sparkplug commands) and rebirth requests: they read the
    /// ingest path's sessions, and the MQTT module and the bridges that are the nodes' host
    /// publish them.
    pub(crate) commands: Arc<fabrik_connect::sparkplug::command::SparkplugCommands>,
}

/// Starts the ingest worker over the configured (or built-in) mappings.
pub(crate) async fn start_ingest(
    config: &Config,
    settings: &Settings,
    store: Arc<Store>,
    registry: Option<Registry>,
    lineage: Option<Emitter>,
    slot: &mut Option<IngestWiring>,
) -> Result<ServiceHandle, String> {
    let configs = if config.mappings.is_empty() {
        mapping::default_mappings()
    } else {
        config.mappings.clone()
    };
    let mappings = configs
        .iter()
        .map(mapping::compile)
        .collect::<Result<Vec<_>, _>>()?;
    let directory = Directory {
        types: Arc::default(),
        registry,
    };
    let (tx, rx) = mpsc::channel(settings.ingest_queue);
    let commands = crate::sparkplug::commands(config)?;
    let lineage = lineage.map(|emitter| {
        let node = emitter.node().to_owned();
        Arc::new(IngestLineage::mqtt(emitter, config, &node))
    });
    let sink = StoreSink {
        store,
        lineage: lineage.clone(),
    };
    let worker = Ingest::new(
        mappings,
        Arc::new(sink),
        Arc::new(directory.clone()),
        Arc::new(RawMessageIds::new()),
        IngestSettings {
            keep_raw: settings.raw_retention.is_some(),
            ..IngestSettings::default()
        },
    )
    .with_commands(commands.clone());
    *slot = Some(IngestWiring {
        tx,
        directory,
        commands,
    });
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        worker.run(rx, token).await;
        if let Some(lineage) = lineage {
            lineage.ended();
        }
        Ok(())
    });
    Ok(ServiceHandle { stop, task })
}

fn acl_rules(config: &Config) -> Result<Vec<AclRule>, String> {
    if config.mqtt.acl.is_empty() {
        return Ok(mqtt::acl::default_rules());
    }
    config
        .mqtt
        .acl
        .iter()
        .enumerate()
        .map(|(i, r)| AclRule::from_config(r).map_err(|e| format!("mqtt.acl[{i}]: {e}")))
        .collect()
}

/// Problems with the parts of a configuration that fabrik-connect checks (mappings, ACLs),
/// as (path, message).
pub(crate) fn check(config: &Config) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (i, m) in config.mappings.iter().enumerate() {
        if let Err(e) = mapping::compile(m) {
            problems.push((format!("mappings[{i}]"), e));
        }
    }
    if let Err(e) = acl_rules(config) {
        problems.push(("mqtt.acl".to_owned(), e));
    }
    problems.extend(tls_file_problems(config));
    let authorities = config.attestation.endorsement_authorities.trim();
    if !authorities.is_empty()
        && let Err(e) = fabrik_registry::attestation::activation::load_authorities(
            std::path::Path::new(authorities),
        )
    {
        problems.push(("attestation.endorsement_authorities".to_owned(), e));
    }
    problems
}

/// The TLS files the configuration names for MQTT (with `mqtt.tls_listen`) and HTTPS (with
/// `http.tls`), read and matched as at start, so `fabrik config check` finds an unreadable
/// certificate, a key of another certificate or a file without a certificate before a
/// restart does.
fn tls_file_problems(config: &Config) -> Vec<(String, String)> {
    let file = |text: &str| {
        Some(text.trim().to_owned())
            .filter(|t| !t.is_empty())
            .map(std::path::PathBuf::from)
    };
    let mut problems = Vec::new();
    let mut check = |field: &str, settings: mqtt::tls::TlsSettings| {
        if let Err(e) = mqtt::tls::check_files(&settings) {
            problems.push((field.to_owned(), e.to_string()));
        }
    };
    let m = &config.mqtt;
    if !m.tls_listen.trim().is_empty() {
        check(
            "mqtt.tls_cert",
            mqtt::tls::TlsSettings {
                cert: file(&m.tls_cert),
                key: file(&m.tls_key),
                client_ca: file(&m.tls_client_ca),
                require_client_cert: m.tls_require_client_cert,
                generated_dir: std::path::PathBuf::new(),
                generated_names: Vec::new(),
                section: "mqtt",
            },
        );
    }
    // A certificate without its key (or the reverse) is reported by the HTTP section's own
    // check.
    if config.http.tls
        && config.http.tls_cert.trim().is_empty() == config.http.tls_key.trim().is_empty()
    {
        check(
            "http.tls_cert",
            mqtt::tls::TlsSettings {
                cert: file(&config.http.tls_cert),
                key: file(&config.http.tls_key),
                client_ca: None,
                require_client_cert: false,
                generated_dir: std::path::PathBuf::new(),
                generated_names: Vec::new(),
                section: "http",
            },
        );
    }
    problems
}

/// Saves the broker's retained messages and persistent sessions whenever they changed, at
/// most once a second, until `stop`.
async fn save_state(broker: Arc<Broker>, path: std::path::PathBuf, stop: CancellationToken) {
    let mut saved_at = broker.changes();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let changes = broker.changes();
        if changes == saved_at {
            continue;
        }
        let snapshot = broker.snapshot();
        let file = path.clone();
        match tokio::task::spawn_blocking(move || mqtt::persist::save(&file, &snapshot)).await {
            Ok(Ok(())) => saved_at = changes,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, file = %path.display(), "MQTT state not saved; retrying.");
            }
            Err(e) => tracing::warn!(error = %e, "MQTT state saver failed; retrying."),
        }
    }
}

/// Starts the MQTT endpoint on the configured listeners.
pub(crate) async fn start_mqtt(
    config: &Config,
    settings: &Settings,
    admin_token: Option<String>,
    registry: Option<Registry>,
    ingest: &IngestWiring,
) -> Result<(ServiceHandle, Vec<(SocketAddr, bool)>, Arc<Broker>), String> {
    let m = &settings.mqtt;
    if m.listen.is_none() && m.tls_listen.is_none() {
        return Err("mqtt.listen and mqtt.tls_listen are both empty; leave the mqtt module out with --target instead".into());
    }
    if config.mqtt.allow_anonymous {
        tracing::warn!(
            "mqtt.allow_anonymous is on: any client may connect without credentials and use every topic. Use this only for protocol test suites."
        );
    }
    let acl = Acl::new(acl_rules(config)?);
    let broker = Arc::new(Broker::new(BrokerLimits {
        max_queued_messages: m.max_queued_messages,
        ..BrokerLimits::default()
    }));
    // Retained messages and persistent sessions of the previous run.
    let state_file = settings.data_dir.join("mqtt").join("state.json");
    let loaded = {
        let path = state_file.clone();
        tokio::task::spawn_blocking(move || mqtt::persist::load(&path))
            .await
            .map_err(|e| e.to_string())?
    };
    match loaded {
        Ok(Some(snapshot)) => {
            let (retained, sessions) = broker.restore(snapshot)?;
            tracing::info!(retained, sessions, file = %state_file.display(), "MQTT state restored.");
        }
        Ok(None) => {}
        // A damaged state file must not keep devices from connecting: start empty, keep the
        // file for inspection.
        Err(e) => {
            let aside = state_file.with_extension("damaged");
            let _ = std::fs::rename(&state_file, &aside);
            tracing::error!(error = %e, kept_as = %aside.display(), "MQTT state not restored; starting without retained messages and sessions.");
        }
    }
    let (events_tx, mut events_rx) = mpsc::channel::<ConnectionEvent>(10_000);
    let hooks = Arc::new(EndpointHooks {
        registry: registry.clone(),
        directory: ingest.directory.clone(),
        ingest: ingest.tx.clone(),
        events: events_tx,
        allow_anonymous: config.mqtt.allow_anonymous,
        admin_token,
        source: Arc::from(mqtt::SOURCE),
        attestation: settings.attestation.clone(),
    });
    let stop = CancellationToken::new();
    // The connections close only after the module's stop has told the edge nodes the host is
    // going (its offline STATE, below): a token of their own, cancelled then.
    let connections_stop = CancellationToken::new();
    let endpoint = Arc::new(MqttEndpoint::new(
        broker.clone(),
        acl,
        hooks,
        MqttLimits {
            max_packet_size: m.max_packet_size,
            receive_maximum: m.receive_maximum,
            max_message_rate: m.max_message_rate,
            max_connections: m.max_connections,
            max_session_expiry: m.max_session_expiry,
            max_keep_alive: m.max_keep_alive,
            subscribe_denied_unspecified: m.subscribe_denied_unspecified,
            ..MqttLimits::default()
        },
        connections_stop.clone(),
    ));
    let mut listeners = Vec::new();
    let mut addresses = Vec::new();
    if let Some(addr) = m.listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} (mqtt.listen): {e}"))?;
        addresses.push((l.local_addr().map_err(|e| e.to_string())?, false));
        listeners.push((l, None));
    }
    if let Some(addr) = m.tls_listen {
        let tls = mqtt::tls::TlsAcceptor::new(&mqtt::tls::TlsSettings {
            cert: Some(config.mqtt.tls_cert.clone())
                .filter(|s| !s.is_empty())
                .map(Into::into),
            key: Some(config.mqtt.tls_key.clone())
                .filter(|s| !s.is_empty())
                .map(Into::into),
            client_ca: Some(config.mqtt.tls_client_ca.clone())
                .filter(|s| !s.is_empty())
                .map(Into::into),
            require_client_cert: config.mqtt.tls_require_client_cert,
            generated_dir: settings.data_dir.join("tls"),
            generated_names: vec!["localhost".into(), "127.0.0.1".into()],
            section: "mqtt",
        })
        .map_err(|e| e.to_string())?;
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} (mqtt.tls_listen): {e}"))?;
        addresses.push((l.local_addr().map_err(|e| e.to_string())?, true));
        listeners.push((l, Some(tls)));
    }
    let events_registry = registry;
    let attestation_registry = events_registry.clone();
    let attestation = settings.attestation.clone();
    let events_task = tokio::spawn(async move {
        while let Some((id, connected, detail)) = events_rx.recv().await {
            if let Some(r) = &events_registry
                && let Err(e) = r.set_connected(&id, connected, &detail).await
            {
                tracing::warn!(device = %id, error = %e, "Could not record a connection change.");
            }
        }
    });
    // Sparkplug commands (decision 0091) go to the edge node's own MQTT client only, at QoS 0
    // and not retained, as the specification asks; whether it was queued for that client tells
    // the writer whether anything was sent. Rebirth requests go through the broker like any
    // publish, so the edge node's subscription receives them.
    let command_broker = broker.clone();
    ingest.commands.connect(
        mqtt::SOURCE,
        Arc::new(move |client, topic, payload, expires_at| {
            let message = mqtt::broker::Message {
                topic: Arc::from(topic),
                payload,
                qos: 0,
                retain: false,
                properties: None,
                expires_at: Some(expires_at),
                publisher: None,
            };
            match client {
                Some(client) => command_broker.publish_to(client, message),
                // A rebirth request: published, whether or not the node subscribes.
                None => {
                    command_broker.publish(message);
                    true
                }
            }
        }),
    );
    // Fabrik as the Sparkplug primary host: its state, retained, so edge nodes that wait for
    // it birth (and those that lose it may move on).
    // Both carry the birth's timestamp, as the specification asks of the death's.
    let state_since = fabrik_connect::sparkplug::command::now_ms();
    let host_state = |online: bool| mqtt::broker::Message {
        topic: Arc::from(ingest.commands.state_topic()),
        payload: fabrik_connect::ingest::Bytes::from(
            fabrik_connect::sparkplug::command::state_payload(online, state_since),
        ),
        qos: 1,
        retain: true,
        properties: None,
        expires_at: None,
        publisher: None,
    };
    broker.publish(host_state(true));
    let offline_state = host_state(false);
    let broker_handle = broker.clone();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let mut servers = Vec::new();
        for (listener, tls) in listeners {
            let endpoint = endpoint.clone();
            servers.push(tokio::spawn(
                async move { endpoint.serve(listener, tls).await },
            ));
        }
        let saver = tokio::spawn(save_state(
            broker.clone(),
            state_file.clone(),
            token.clone(),
        ));
        let sweeper_broker = broker.clone();
        let sweeper_token = token.clone();
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = sweeper_token.cancelled() => break,
                    _ = tick.tick() => {
                        let ended = sweeper_broker.expire_sessions(std::time::Instant::now());
                        if ended > 0 {
                            tracing::debug!(sessions = ended, "Expired MQTT sessions removed.");
                        }
                        let stats = sweeper_broker.stats();
                        metrics::gauge!("fabrik_mqtt_sessions").set(stats.sessions as f64);
                        metrics::gauge!("fabrik_mqtt_subscriptions").set(stats.subscriptions as f64);
                        metrics::gauge!("fabrik_mqtt_retained_messages").set(stats.retained as f64);
                        metrics::gauge!("fabrik_mqtt_queued_messages").set(stats.queued as f64);
                    }
                }
            }
        });
        let watcher = attestation_registry.map(|registry| {
            tokio::spawn(watch_attestations(
                registry,
                broker.clone(),
                attestation,
                token.clone(),
            ))
        });
        token.cancelled().await;
        // Before the connections close, so connected edge nodes hear the host go; they are
        // woken at once, and a moment lets them send it.
        broker.publish(offline_state);
        tokio::time::sleep(Duration::from_millis(200)).await;
        connections_stop.cancel();
        for s in servers {
            let _ = s.await;
        }
        let _ = sweeper.await;
        if let Some(watcher) = watcher {
            let _ = watcher.await;
        }
        if !endpoint.drain(Duration::from_secs(5)).await {
            tracing::warn!("Some MQTT connections did not close within 5 s.");
        }
        // The last snapshot, with every session now disconnected.
        let _ = saver.await;
        let snapshot = broker.snapshot();
        let path = state_file.clone();
        match tokio::task::spawn_blocking(move || mqtt::persist::save(&path, &snapshot)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "MQTT state not saved at shutdown."),
            Err(e) => tracing::error!(error = %e, "MQTT state not saved at shutdown."),
        }
        // Dropping the endpoint drops the hooks and so the event sender: the event task
        // writes what is queued, then ends.
        drop(endpoint);
        let _ = tokio::time::timeout(Duration::from_secs(2), events_task).await;
        Ok(())
    });
    Ok((ServiceHandle { stop, task }, addresses, broker_handle))
}

/// How often connected devices' attestations are checked for expiry; a verdict or a change
/// of key or policy checks them at once.
const ATTESTATION_RECHECK: Duration = Duration::from_secs(30);

/// Ends the connections of devices whose attestation failed or expired since they connected
/// (decision 0050): the CONNECT gate, held for as long as they stay.
async fn watch_attestations(
    registry: Registry,
    broker: Arc<Broker>,
    settings: fabrik_runtime::config::AttestationSettings,
    stop: CancellationToken,
) {
    let changed = registry.attestation_changed();
    let mut tick = tokio::time::interval(ATTESTATION_RECHECK);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changed.notified() => {}
            _ = tick.tick() => {}
        }
        for id in broker.connected_devices() {
            match registry.attestation_gate(&id, &settings).await {
                Ok(None) => {}
                Ok(Some(reason)) => {
                    let ended = broker.revoke_device(&id);
                    metrics::counter!("fabrik_mqtt_attestation_revocations_total").increment(1);
                    tracing::warn!(device = %id, connections = ended, reason = %reason, "Connection ended: the device's attestation is no longer current.");
                    let _ = registry
                        .event(&id, "revoked", &format!("attestation: {reason}"))
                        .await;
                }
                Err(e) => {
                    tracing::warn!(device = %id, error = %e, "Could not check a connected device's attestation.");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_are_checked_as_they_would_be_read_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let garbage = dir.path().join("cert.pem");
        std::fs::write(&garbage, "not a certificate").expect("write");
        let mut config = Config::default();
        // Generated certificates need no file: nothing to check.
        config.http.tls = true;
        config.mqtt.tls_listen = "127.0.0.1:0".into();
        assert!(tls_file_problems(&config).is_empty());
        // A file without a certificate, and a key that is not there.
        config.http.tls_cert = garbage.display().to_string();
        config.http.tls_key = dir.path().join("missing.pem").display().to_string();
        config.mqtt.tls_client_ca = garbage.display().to_string();
        let problems = tls_file_problems(&config);
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["mqtt.tls_cert", "http.tls_cert"], "{problems:?}");
        assert!(problems[0].1.contains("no certificate"), "{problems:?}");
        assert!(problems[1].1.contains("cert.pem"), "{problems:?}");
        // A certificate without its key is the HTTP section's own problem, reported once.
        config.http.tls_key.clear();
        assert_eq!(tls_file_problems(&config).len(), 1);
    }
}
