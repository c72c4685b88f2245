//! The ingest path of connectors: raw messages in (MQTT publishes from the device endpoint or
//! a bridge), rows out. It batches what is queued, finds each message's mapping, decodes it,
//! stamps lineage (source, raw-message id, mapping version), keeps the raw message when asked,
//! and writes everything as one store write. Messages that match a mapping but cannot be
//! decoded, or that a device sent to a topic no mapping covers, become dead letters with the
//! reason and the raw bytes: nothing is dropped silently. A QoS 1/2 message is answered (and so
//! acknowledged to its client) only after its rows, or its dead letter, are durable.

use std::sync::Arc;
use std::time::Duration;

pub use bytes::Bytes;
use fabrik_core::{Lineage, Point, Quality, RawMessageIds, SourceId, Timestamp, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::mapping::{self, DeviceInfo, Mapping};
use crate::message_trace::{MessageTrace, Outcome};
use crate::mqtt::ClientIdentity;
use crate::point_errors::{PointOf, point_error};
use crate::sparkplug::command::SparkplugCommands;
use crate::sparkplug::{
    Event as SparkplugEvent, Sample as SparkplugSample, SessionConfig, SparkplugHost,
    Step as SparkplugStep, Value as SparkplugValue,
};

/// Table of messages that could not be mapped.
pub const DEAD_LETTERS: &str = "_dead_letters";
/// Table of raw messages (when `keep_raw` is on).
pub const RAW: &str = "_raw";

/// A raw message from any connector.
#[derive(Debug)]
pub struct RawMessage {
    /// Connector instance: `mqtt`, `bridge:<name>`.
    pub source: Arc<str>,
    /// Topic (or address) it arrived on.
    pub topic: Arc<str>,
    /// Bytes as received.
    pub payload: Bytes,
    /// Receipt time.
    pub received_at: Timestamp,
    /// The authenticated publisher, for messages from the device endpoint.
    pub publisher: Option<Arc<ClientIdentity>>,
    /// Answered once the message's rows or dead letter are durable (or with the error).
    pub done: Option<oneshot::Sender<Result<(), String>>>,
    /// Its trace span ([`crate::message_trace`]), closed once it is answered; usually none.
    pub trace: MessageTrace,
}

/// Where rows go (the store, in `fabrik run`).
#[async_trait::async_trait]
pub trait RecordSink: Send + Sync + 'static {
    /// Writes groups of points, each with its lineage, all or none. The error names what
    /// failed.
    async fn write(&self, groups: &[(Lineage, Vec<Point>)]) -> Result<(), SinkError>;

    /// Stores a payload as a blob under its SHA-256 (see [`fabrik_core::BlobId`]), durably,
    /// before the rows naming it are written; the hold it returns is kept until they are (a
    /// store's sweep of unnamed blobs leaves the blob meanwhile). A sink without blob storage
    /// refuses.
    async fn put_blob(&self, _bytes: &Bytes, _content_type: &str) -> Result<BlobHold, SinkError> {
        Err(SinkError::Rejected("this sink stores no blobs".into()))
    }
}

/// What a sink hands back for a stored blob, dropped once the rows naming it are written.
pub type BlobHold = Box<dyn std::any::Any + Send + Sync>;

/// Clips stored at once by one batch: each costs a few fsyncs, which the filesystem's journal
/// commits together when they overlap.
const BLOB_STORES_AT_ONCE: usize = 8;

/// Why a write failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkError {
    /// The rows were refused (a type conflict, say): a retry would fail again.
    Rejected(String),
    /// The store could not take them now (disk full, shutting down): the sender should retry.
    Unavailable(String),
}

/// What the ingest path needs to know about devices.
pub trait DeviceDirectory: Send + Sync + 'static {
    /// Type of a registered device (empty if unknown).
    fn device_type(&self, device_id: &str) -> String;
    /// Counts a message of a device (and whether it was dead-lettered).
    fn count(&self, device_id: &str, failed: bool);
}

/// Settings of the ingest path.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Keep every raw message in the `_raw` table.
    pub keep_raw: bool,
    /// Messages taken into one store write at most.
    pub max_batch: usize,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            keep_raw: true,
            max_batch: 2000,
        }
    }
}

/// The ingest worker: call [`Ingest::run`] on a task.
pub struct Ingest {
    mappings: Vec<Mapping>,
    sink: Arc<dyn RecordSink>,
    devices: Arc<dyn DeviceDirectory>,
    ids: Arc<RawMessageIds>,
    settings: IngestSettings,
    /// Sparkplug B edge-node sessions (births, aliases, sequence numbers), shared with the
    /// commands that write to edge nodes.
    sparkplug: Arc<parking_lot::Mutex<SparkplugHost>>,
    /// Writes to edge nodes' metrics, which wait for the samples decoded here; and the ways
    /// out to the nodes, which rebirth requests take.
    commands: Option<Arc<SparkplugCommands>>,
    stored_counter: metrics::Counter,
    dead_letter_counter: metrics::Counter,
}

/// The topic of the message a bridge that is a Sparkplug host sends into the ingest queue when
/// it loses its broker (no payload): ordered after every message it received before, it marks
/// the Sparkplug nodes behind it offline. A `$` topic, which no broker delivers to a wildcard
/// subscription and which `[[bridges]]` may not subscribe to.
pub const CONNECTION_LOST_TOPIC: &str = "$fabrik/connection-lost";

/// The table Sparkplug B metrics are stored in (tags `device`, `group`, `edge_node`; one column
/// per metric name).
pub const SPARKPLUG_TABLE: &str = "sparkplug";

/// One message on its way through a batch.
struct Pending {
    message: RawMessage,
    raw_id: fabrik_core::RawMessageId,
    device: Option<String>,
    /// Mapped rows with their lineage, or the dead letter.
    rows: Result<(Lineage, Vec<Point>), (String, String)>,
    /// The message matched no mapping and is not device data: nothing to store.
    ignored: bool,
    /// The media type its payload is stored under as a blob (a WAV clip), if it is one.
    blob: Option<&'static str>,
    /// Keeps the stored blob from the store's sweep until the rows naming it are written.
    blob_hold: Option<BlobHold>,
}

fn payload_text(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(text) => text.to_owned(),
        Err(_) => {
            let mut s = String::from("base64:");
            s.push_str(&base64_encode(payload));
            s
        }
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Ingest {
    /// A worker over `mappings` (compiled), writing to `sink`.
    pub fn new(
        mappings: Vec<Mapping>,
        sink: Arc<dyn RecordSink>,
        devices: Arc<dyn DeviceDirectory>,
        ids: Arc<RawMessageIds>,
        settings: IngestSettings,
    ) -> Self {
        Self {
            mappings,
            sink,
            devices,
            ids,
            settings,
            sparkplug: Arc::new(parking_lot::Mutex::new(SparkplugHost::new(
                SessionConfig::default(),
            ))),
            commands: None,
            // Handles taken once: looking a counter up by name on every message cost ~1 % of
            // the MQTT path.
            stored_counter: metrics::counter!("fabrik_ingest_messages_total"),
            dead_letter_counter: metrics::counter!("fabrik_ingest_dead_letters_total"),
        }
    }

    /// Keeps the Sparkplug sessions in `commands`' host, and shows it every sample and death,
    /// so writes to edge nodes see what the nodes report; rebirth requests go out its way.
    pub fn with_commands(mut self, commands: Arc<SparkplugCommands>) -> Self {
        self.sparkplug = commands.host();
        self.commands = Some(commands);
        self
    }

    /// Sparkplug B: births and data become rows of [`SPARKPLUG_TABLE`], deaths mark nodes
    /// offline and their metrics stale (rows of `_point_errors`), a sequence gap or unknown alias asks the node to rebirth (NCMD).
    fn prepare_sparkplug(
        &self,
        message: RawMessage,
        raw_id: fabrik_core::RawMessageId,
        device: Option<String>,
    ) -> Pending {
        message.trace.record("otel.name", "ingest sparkplug");
        let received_ms = u64::try_from(message.received_at.nanos() / 1_000_000).unwrap_or(0);
        let step = {
            let mut host = self.sparkplug.lock();
            let step = host.handle(&message.topic, &message.payload, received_ms);
            // In the same step as the birth: commands never pair its aliases with another
            // birth's client.
            if let (Ok(_), Some(commands)) = (&step, &self.commands) {
                commands.note_publisher(
                    &message.topic,
                    &message.source,
                    message.publisher.as_ref().map(|p| p.client_id.as_str()),
                );
            }
            step
        };
        let step = match step {
            Ok(step) => step,
            Err(e) => {
                return Pending {
                    rows: Err(("sparkplug".into(), e.to_string())),
                    device,
                    raw_id,
                    ignored: false,
                    blob: None,
                    blob_hold: None,
                    message,
                };
            }
        };
        self.sparkplug_pending(message, raw_id, device, step)
    }

    /// Fabrik lost the broker of bridge `message.source` (a [`CONNECTION_LOST_TOPIC`] message
    /// its client sent): the Sparkplug nodes whose births came through it go offline and their
    /// metrics stale, as the specification asks of a host that loses its server.
    fn prepare_connection_lost(
        &self,
        message: RawMessage,
        raw_id: fabrik_core::RawMessageId,
    ) -> Pending {
        let received_ms = u64::try_from(message.received_at.nanos() / 1_000_000).unwrap_or(0);
        let nodes = self
            .commands
            .as_ref()
            .map(|c| c.nodes_from(&message.source))
            .unwrap_or_default();
        let why = format!(
            "Fabrik lost its connection to the broker of `{}`; the edge node's last values \
             are stale until it is born again",
            message.source
        );
        let step = self
            .sparkplug
            .lock()
            .connection_lost(&nodes, received_ms, &why);
        if step.stale.is_empty() {
            return Pending {
                rows: Ok((
                    Lineage {
                        source: SourceId(message.source.to_string()),
                        raw_id,
                        mapping_version: 0,
                    },
                    Vec::new(),
                )),
                device: None,
                raw_id,
                ignored: true,
                blob: None,
                blob_hold: None,
                message,
            };
        }
        self.sparkplug_pending(message, raw_id, None, step)
    }

    /// The rows and side effects of one Sparkplug step: events logged, rebirth requests sent
    /// back where the message came from, samples and deaths shown to the commands.
    fn sparkplug_pending(
        &self,
        message: RawMessage,
        raw_id: fabrik_core::RawMessageId,
        device: Option<String>,
        step: SparkplugStep,
    ) -> Pending {
        for event in &step.events {
            match event {
                SparkplugEvent::Online(id) => {
                    tracing::info!(node = %id, "Sparkplug node or device online.")
                }
                SparkplugEvent::Offline(id) => {
                    tracing::info!(node = %id, "Sparkplug node or device offline.")
                }
                SparkplugEvent::RebirthNeeded {
                    node,
                    reason,
                    ncmd_topic,
                    ncmd_payload,
                } => {
                    tracing::warn!(node = %node, reason = ?reason, "Sparkplug session out of step; asking the node to rebirth.");
                    metrics::counter!("fabrik_sparkplug_rebirth_requests_total").increment(1);
                    // Back where the node's message came from: Fabrik's endpoint, or the broker
                    // of a bridge that is the nodes' host.
                    let sent = self.commands.as_ref().is_some_and(|commands| {
                        commands.request_rebirth(
                            &message.source,
                            ncmd_topic,
                            Bytes::from(ncmd_payload.clone()),
                        )
                    });
                    if !sent {
                        tracing::warn!(node = %node, source = %message.source, "Rebirth request not sent: no way to the node from here (a bridge that is not its Sparkplug host, or not connected), or a full queue.");
                    }
                }
            }
        }
        if let Some(commands) = &self.commands {
            commands.observe(message.received_at.nanos(), &step.samples, &step.stale);
        }
        for rejected in &step.rejected {
            tracing::debug!(device = %rejected.device_id, metric = %rejected.metric, error = %rejected.error, "Sparkplug metric not stored.");
        }
        let lineage = Lineage {
            source: SourceId(message.source.to_string()),
            raw_id,
            mapping_version: 0,
        };
        let mut points = sparkplug_points(&step.samples);
        // A death makes the node's or device's last values stale: a `_point_errors` row per
        // metric says so, and ends their values in rollups' time-weighted means.
        for stale in &step.stale {
            let time_ns = ms_to_ns(stale.timestamp_ms);
            for metric in &stale.metrics {
                points.push(point_error(
                    PointOf {
                        device: &stale.device_id,
                        signal: metric,
                        table: SPARKPLUG_TABLE,
                    },
                    "sparkplug",
                    stale.reason.clone(),
                    time_ns,
                ));
            }
        }
        Pending {
            rows: Ok((lineage, points)),
            device,
            raw_id,
            ignored: false,
            blob: None,
            blob_hold: None,
            message,
        }
    }

    /// Takes messages until `shutdown` fires and the channel is drained.
    pub async fn run(self, mut rx: mpsc::Receiver<RawMessage>, shutdown: CancellationToken) {
        let mut batch = Vec::with_capacity(self.settings.max_batch);
        loop {
            let first = tokio::select! {
                m = rx.recv() => m,
                _ = shutdown.cancelled() => {
                    // Stop taking new work, but finish what is queued: its senders wait.
                    rx.close();
                    rx.recv().await
                }
            };
            let Some(first) = first else { break };
            batch.push(first);
            while batch.len() < self.settings.max_batch {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            self.process(std::mem::take(&mut batch)).await;
        }
        tracing::debug!("Ingest worker stopped.");
    }

    fn prepare(&self, message: RawMessage) -> Pending {
        let p = self.prepare_untraced(message);
        let trace = &p.message.trace;
        if trace.is_traced() {
            if let Some(device) = &p.device {
                trace.record("fabrik.device", device.as_str());
            }
            if let Ok((_, points)) = &p.rows {
                trace.record("fabrik.points", points.len() as u64);
            }
        }
        p
    }

    fn prepare_untraced(&self, message: RawMessage) -> Pending {
        let raw_id = self.ids.next();
        let publisher_device = message.publisher.as_ref().and_then(|p| p.device_id.clone());
        if message.topic.starts_with("spBv1.0/") {
            return self.prepare_sparkplug(message, raw_id, publisher_device);
        }
        // Only a bridge's own client says this; no broker delivers a `$` topic it could match.
        if &*message.topic == CONNECTION_LOST_TOPIC
            && message.source.starts_with("bridge:")
            && message.publisher.is_none()
        {
            return self.prepare_connection_lost(message, raw_id);
        }
        let found = mapping::find(&self.mappings, &message.source, &message.topic);
        match found {
            None => {
                let device_data = publisher_device.is_some();
                Pending {
                    rows: Err((
                        String::new(),
                        format!("no mapping covers topic `{}`", message.topic),
                    )),
                    device: publisher_device,
                    raw_id,
                    ignored: !device_data,
                    blob: None,
                    blob_hold: None,
                    message,
                }
            }
            Some((m, captures)) => {
                message.trace.mapped(&m.name, m.version);
                let device = captures.get("device").cloned();
                let info = DeviceInfo {
                    device_type: device
                        .as_deref()
                        .map(|d| self.devices.device_type(d))
                        .unwrap_or_default(),
                };
                let lineage = Lineage {
                    source: SourceId(message.source.to_string()),
                    raw_id,
                    mapping_version: m.version,
                };
                let rows = m
                    .map(&captures, &message.payload, message.received_at, &info)
                    .map(|points| (lineage, points))
                    .map_err(|e| (m.name.clone(), e.to_string()));
                Pending {
                    blob: rows.as_ref().ok().and(m.blob_media_type()),
                    blob_hold: None,
                    rows,
                    device,
                    raw_id,
                    ignored: false,
                    message,
                }
            }
        }
    }

    fn dead_letter(p: &Pending, mapping: &str, reason: &str) -> (Lineage, Vec<Point>) {
        let mut tags = vec![("source".to_owned(), p.message.source.to_string())];
        if let Some(d) = &p.device {
            tags.push(("device".to_owned(), d.clone()));
        }
        let lineage = Lineage {
            source: SourceId(p.message.source.to_string()),
            raw_id: p.raw_id,
            mapping_version: 0,
        };
        let point = Point {
            measurement: DEAD_LETTERS.to_owned(),
            tags,
            fields: vec![
                ("topic".to_owned(), Value::Str(p.message.topic.to_string())),
                ("mapping".to_owned(), Value::Str(mapping.to_owned())),
                ("reason".to_owned(), Value::Str(reason.to_owned())),
                (
                    "payload".to_owned(),
                    Value::Str(payload_text(&p.message.payload)),
                ),
            ],
            time: p.message.received_at,
            quality: Quality::Bad,
        };
        (lineage, vec![point])
    }

    fn raw_row(p: &Pending) -> (Lineage, Vec<Point>) {
        let mut tags = vec![("source".to_owned(), p.message.source.to_string())];
        if let Some(d) = &p.device {
            tags.push(("device".to_owned(), d.clone()));
        }
        let lineage = Lineage {
            source: SourceId(p.message.source.to_string()),
            raw_id: p.raw_id,
            mapping_version: 0,
        };
        (
            lineage,
            vec![Point {
                measurement: RAW.to_owned(),
                tags,
                fields: vec![
                    ("topic".to_owned(), Value::Str(p.message.topic.to_string())),
                    (
                        "payload".to_owned(),
                        // A clip is kept once, as its blob: the raw copy names it.
                        Value::Str(match p.blob {
                            Some(_) => fabrik_core::BlobId::of(&p.message.payload).to_string(),
                            None => payload_text(&p.message.payload),
                        }),
                    ),
                    (
                        "bytes".to_owned(),
                        Value::U64(p.message.payload.len() as u64),
                    ),
                ],
                time: p.message.received_at,
                quality: Quality::Good,
            }],
        )
    }

    /// Moves the rows one message contributes into `out` (data or dead letter, plus its raw
    /// copy); what stays in `p` is enough to build its dead letter if the batch is refused.
    fn take_groups(&self, p: &mut Pending, out: &mut Vec<(Lineage, Vec<Point>)>) {
        let data = match &mut p.rows {
            // A message may carry no values (a Sparkplug death): only its raw copy is kept.
            Ok(rows) if !rows.1.is_empty() => Some((rows.0.clone(), std::mem::take(&mut rows.1))),
            _ => None,
        };
        match data {
            Some(group) => out.push(group),
            None => {
                if let Err((mapping, reason)) = &p.rows {
                    out.push(Self::dead_letter(p, mapping, reason));
                }
            }
        }
        if self.settings.keep_raw {
            out.push(Self::raw_row(p));
        }
    }

    /// The rows one message contributes (data or dead letter, plus its raw copy).
    fn groups_of(&self, p: &Pending) -> Vec<(Lineage, Vec<Point>)> {
        let mut out = Vec::with_capacity(2);
        match &p.rows {
            // A message may carry no values (a Sparkplug death): only its raw copy is kept.
            Ok(rows) if rows.1.is_empty() => {}
            Ok(rows) => out.push(rows.clone()),
            Err((mapping, reason)) => out.push(Self::dead_letter(p, mapping, reason)),
        }
        if self.settings.keep_raw {
            out.push(Self::raw_row(p));
        }
        out
    }

    async fn process(&self, messages: Vec<RawMessage>) {
        let mut pending: Vec<Pending> = Vec::with_capacity(messages.len());
        for m in messages {
            let mut p = self.prepare(m);
            if p.ignored {
                p.message.trace.end(Outcome::NotStored);
                if let Some(done) = p.message.done {
                    let _ = done.send(Ok(()));
                }
                continue;
            }
            pending.push(p);
        }
        self.store_blobs(&mut pending).await;
        if pending.is_empty() {
            return;
        }
        // Rows are moved, not copied, into one write; each message's span of it is kept so a
        // refused batch can be retried message by message.
        let mut all: Vec<(Lineage, Vec<Point>)> = Vec::with_capacity(pending.len() * 2);
        let mut spans = Vec::with_capacity(pending.len());
        for p in &mut pending {
            let start = all.len();
            self.take_groups(p, &mut all);
            spans.push(start..all.len());
        }
        if all.is_empty() {
            for p in pending {
                self.finish(p, Ok(()));
            }
            return;
        }
        for p in &pending {
            p.message.trace.will_store_as(p.raw_id.0);
        }
        match self.sink.write(&all).await {
            Ok(()) => {
                for p in pending {
                    self.finish(p, Ok(()));
                }
            }
            Err(SinkError::Unavailable(reason)) => {
                tracing::warn!(messages = pending.len(), reason = %reason, "Ingest could not store messages; their senders will retry.");
                for mut p in pending {
                    p.message.trace.end(Outcome::Failed(&reason));
                    if let Some(done) = p.message.done {
                        let _ = done.send(Err(reason.clone()));
                    }
                }
            }
            Err(SinkError::Rejected(_)) => {
                // One message spoilt the batch (a field type conflict, say): store them one by
                // one so only the culprits become dead letters.
                for (mut p, span) in pending.into_iter().zip(spans) {
                    let result = match self.sink.write(&all[span]).await {
                        Ok(()) => Ok(()),
                        Err(SinkError::Rejected(reason)) => {
                            let mapping = match &p.rows {
                                Ok((l, _)) => format!("v{}", l.mapping_version),
                                Err((m, _)) => m.clone(),
                            };
                            p.rows = Err((mapping, reason));
                            // No row names the clip now: the raw copy keeps its bytes, and the
                            // unnamed blob is left to the store's sweep.
                            p.blob = None;
                            p.blob_hold = None;
                            match self.sink.write(&self.groups_of(&p)).await {
                                Ok(()) => Ok(()),
                                Err(SinkError::Rejected(r) | SinkError::Unavailable(r)) => Err(r),
                            }
                        }
                        Err(SinkError::Unavailable(reason)) => Err(reason),
                    };
                    self.finish(p, result);
                }
            }
        }
    }

    /// Stores the payloads that are blobs, before the rows naming them, several at once: one
    /// the sink refuses becomes a dead letter; one it cannot store now is answered with the
    /// error (its sender retries) and leaves the batch.
    async fn store_blobs(&self, pending: &mut Vec<Pending>) {
        use futures::StreamExt;
        if pending.iter().all(|p| p.blob.is_none()) {
            return;
        }
        // The futures are made first: a stream mapping borrowed messages through a closure
        // trips the compiler's proof that the worker's future is `Send`.
        let stores: Vec<_> = pending.iter().map(|p| self.store_blob(p)).collect();
        let outcomes: Vec<Option<Result<BlobHold, SinkError>>> = futures::stream::iter(stores)
            .buffered(BLOB_STORES_AT_ONCE)
            .collect()
            .await;
        let mut kept = Vec::with_capacity(pending.len());
        for (mut p, outcome) in pending.drain(..).zip(outcomes) {
            match outcome {
                None => kept.push(p),
                Some(Ok(hold)) => {
                    p.blob_hold = Some(hold);
                    kept.push(p);
                }
                Some(Err(SinkError::Rejected(reason))) => {
                    let mapping = match &p.rows {
                        Ok((lineage, _)) => format!("v{}", lineage.mapping_version),
                        Err((mapping, _)) => mapping.clone(),
                    };
                    p.rows = Err((mapping, format!("storing the clip: {reason}")));
                    // Not stored: the raw copy keeps the bytes instead of naming a blob.
                    p.blob = None;
                    kept.push(p);
                }
                Some(Err(SinkError::Unavailable(reason))) => {
                    tracing::warn!(topic = %p.message.topic, reason = %reason, "Ingest could not store a clip; its sender will retry.");
                    p.message.trace.end(Outcome::Failed(&reason));
                    if let Some(done) = p.message.done {
                        let _ = done.send(Err(reason));
                    }
                }
            }
        }
        *pending = kept;
    }

    async fn store_blob(&self, p: &Pending) -> Option<Result<BlobHold, SinkError>> {
        let media_type = p.blob?;
        Some(self.sink.put_blob(&p.message.payload, media_type).await)
    }

    fn finish(&self, mut p: Pending, result: Result<(), String>) {
        let failed = p.rows.is_err();
        if let Some(device) = &p.device {
            self.devices.count(device, failed);
        }
        if failed && result.is_ok() {
            self.dead_letter_counter.increment(1);
            if let Err((mapping, reason)) = &p.rows {
                tracing::debug!(topic = %p.message.topic, mapping = %mapping, reason = %reason, "Message stored as a dead letter.");
            }
        }
        if result.is_ok() {
            self.stored_counter.increment(1);
        }
        let trace = &mut p.message.trace;
        if result.is_ok() {
            // Only now does a row carry the id (a retried message gets a new one).
            trace.record("fabrik.raw_id", p.raw_id.0);
        }
        match (&result, &p.rows) {
            (Err(reason), _) => trace.end(Outcome::Failed(reason)),
            (Ok(()), Err((_, reason))) => {
                // A batch that refused the message's rows left them uncounted.
                trace.record("fabrik.points", 0_u64);
                trace.end(Outcome::DeadLetter(reason));
            }
            (Ok(()), Ok(_)) => trace.end(Outcome::Stored),
        }
        // The span ends as the sender is answered (when `p` is dropped, after this).
        if let Some(done) = p.message.done {
            let _ = done.send(result);
        }
    }
}

/// Sparkplug samples as rows: one per device and timestamp, one column per metric. Metric names
/// keep their `/` (`Motor/Speed`), which SQL reaches as `"Motor/Speed"`.
fn sparkplug_points(samples: &[SparkplugSample]) -> Vec<Point> {
    let mut rows: std::collections::BTreeMap<(&str, u64), Vec<(String, Value)>> =
        std::collections::BTreeMap::new();
    let mut errors = Vec::new();
    for s in samples {
        // NaN or ±∞, which the store does not keep, or a metric sent as null: its value is
        // not known from then on, which a `_point_errors` row says (and a rollup's
        // time-weighted mean heeds).
        let unknown = match &s.value {
            SparkplugValue::F64(v) if !v.is_finite() => {
                Some(format!("{v} is not a number the store keeps"))
            }
            SparkplugValue::Null => {
                Some("the metric was sent as null: its value is not known".into())
            }
            _ => None,
        };
        if let Some(reason) = unknown {
            errors.push(point_error(
                PointOf {
                    device: &s.device_id,
                    signal: &s.metric,
                    table: SPARKPLUG_TABLE,
                },
                "sparkplug",
                reason,
                ms_to_ns(s.timestamp_ms),
            ));
            continue;
        }
        let value = match &s.value {
            SparkplugValue::I64(v) => Value::I64(*v),
            SparkplugValue::U64(v) => Value::U64(*v),
            SparkplugValue::F64(v) => Value::F64(*v),
            SparkplugValue::Bool(v) => Value::Bool(*v),
            SparkplugValue::Str(v) => Value::Str(v.clone()),
            SparkplugValue::Unsupported { json, .. } => Value::Str(json.clone()),
            SparkplugValue::Bytes(b) => Value::Str(b.iter().map(|x| format!("{x:02x}")).collect()),
            SparkplugValue::Array(items) => Value::Str(format!("{items:?}")),
            SparkplugValue::Null => continue, // a point error above
        };
        rows.entry((s.device_id.as_str(), s.timestamp_ms))
            .or_default()
            .push((s.metric.clone(), value));
    }
    rows.into_iter()
        .map(|((device, ms), fields)| {
            let mut parts = device.splitn(3, '/');
            let mut tags = vec![("device".to_owned(), device.to_owned())];
            if let (Some(group), Some(edge)) = (parts.next(), parts.next()) {
                tags.push(("group".to_owned(), group.to_owned()));
                tags.push(("edge_node".to_owned(), edge.to_owned()));
            }
            Point {
                measurement: SPARKPLUG_TABLE.to_owned(),
                tags,
                fields,
                time: Timestamp(ms_to_ns(ms)),
                quality: Quality::Good,
            }
        })
        .chain(errors)
        .collect()
}

/// Milliseconds since the epoch as nanoseconds (saturating).
fn ms_to_ns(ms: u64) -> i64 {
    i64::try_from(ms)
        .unwrap_or(i64::MAX / 1_000_000)
        .saturating_mul(1_000_000)
}

/// How long a sender may wait for the ingest queue before it counts as stuck (used in logs).
pub const QUEUE_WAIT_WARN: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use parking_lot::Mutex;

    #[derive(Default)]
    struct MemorySink {
        written: Mutex<Vec<(Lineage, Vec<Point>)>>,
        blobs: Mutex<Vec<(Bytes, String)>>,
        reject_field: Option<String>,
    }

    #[async_trait::async_trait]
    impl RecordSink for MemorySink {
        async fn write(&self, groups: &[(Lineage, Vec<Point>)]) -> Result<(), SinkError> {
            if let Some(bad) = &self.reject_field
                && groups
                    .iter()
                    .flat_map(|(_, ps)| ps)
                    .any(|p| p.fields.iter().any(|(k, _)| k == bad))
            {
                return Err(SinkError::Rejected(format!("field `{bad}` conflicts")));
            }
            self.written.lock().extend(groups.iter().cloned());
            Ok(())
        }

        async fn put_blob(&self, bytes: &Bytes, content_type: &str) -> Result<BlobHold, SinkError> {
            self.blobs
                .lock()
                .push((bytes.clone(), content_type.to_owned()));
            Ok(Box::new(()))
        }
    }

    struct Devices;
    impl DeviceDirectory for Devices {
        fn device_type(&self, _: &str) -> String {
            "pump".into()
        }
        fn count(&self, _: &str, _: bool) {}
    }

    fn ingest(sink: Arc<MemorySink>) -> Ingest {
        let mappings = mapping::default_mappings()
            .iter()
            .map(|m| mapping::compile(m).expect("mapping"))
            .collect();
        Ingest::new(
            mappings,
            sink,
            Arc::new(Devices),
            Arc::new(RawMessageIds::new()),
            IngestSettings::default(),
        )
    }

    fn message(
        topic: &str,
        payload: &str,
        device: Option<&str>,
    ) -> (RawMessage, oneshot::Receiver<Result<(), String>>) {
        let (tx, rx) = oneshot::channel();
        let publisher = device.map(|d| {
            Arc::new(ClientIdentity {
                device_id: Some(d.into()),
                ..ClientIdentity::default()
            })
        });
        (
            RawMessage {
                source: Arc::from("mqtt"),
                topic: Arc::from(topic),
                payload: Bytes::from(payload.to_owned()),
                received_at: Timestamp(1_000),
                publisher,
                done: Some(tx),
                trace: MessageTrace::none(),
            },
            rx,
        )
    }

    fn tables(sink: &MemorySink) -> Vec<String> {
        sink.written
            .lock()
            .iter()
            .flat_map(|(_, ps)| ps.iter().map(|p| p.measurement.clone()))
            .collect()
    }

    #[tokio::test]
    async fn good_bad_and_unmapped_messages_each_end_somewhere() {
        let sink = Arc::new(MemorySink::default());
        let worker = ingest(sink.clone());
        let (good, good_rx) = message("devices/p1/telemetry", r#"{"v": 1.5}"#, Some("p1"));
        let (bad, bad_rx) = message("devices/p1/telemetry", "{oops", Some("p1"));
        let (unmapped, unmapped_rx) = message("devices/p1/status", "online", Some("p1"));
        let (chatter, chatter_rx) = message("app/notes", "hello", None);
        worker.process(vec![good, bad, unmapped, chatter]).await;
        for rx in [good_rx, bad_rx, unmapped_rx, chatter_rx] {
            assert_eq!(rx.await.expect("answered"), Ok(()));
        }
        let t = tables(&sink);
        assert_eq!(t.iter().filter(|t| *t == "pump").count(), 1);
        assert_eq!(t.iter().filter(|t| *t == DEAD_LETTERS).count(), 2);
        assert_eq!(
            t.iter().filter(|t| *t == RAW).count(),
            3,
            "raw copies of all but chatter"
        );
        let written = sink.written.lock();
        let dead: Vec<&Point> = written
            .iter()
            .flat_map(|(_, ps)| ps)
            .filter(|p| p.measurement == DEAD_LETTERS)
            .collect();
        let reasons: Vec<String> = dead
            .iter()
            .map(|p| match &p.fields[2].1 {
                Value::Str(s) => s.clone(),
                _ => String::new(),
            })
            .collect();
        assert!(
            reasons.iter().any(|r| r.contains("not JSON")),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("no mapping covers")),
            "{reasons:?}"
        );
        // The data row and its raw copy share the raw-message id (lineage).
        let data = written
            .iter()
            .find(|(_, ps)| ps[0].measurement == "pump")
            .expect("data");
        let raw = written
            .iter()
            .find(|(l, ps)| ps[0].measurement == RAW && l.raw_id == data.0.raw_id);
        assert!(raw.is_some(), "raw copy with the same raw id");
        assert_eq!(data.0.mapping_version, 1);
    }

    #[tokio::test]
    async fn a_rejected_message_is_dead_lettered_without_losing_the_others() {
        let sink = Arc::new(MemorySink {
            reject_field: Some("conflict".into()),
            ..MemorySink::default()
        });
        let worker = ingest(sink.clone());
        let (a, a_rx) = message("devices/p1/telemetry", r#"{"v": 1}"#, Some("p1"));
        let (b, b_rx) = message("devices/p2/telemetry", r#"{"conflict": 1}"#, Some("p2"));
        worker.process(vec![a, b]).await;
        assert_eq!(a_rx.await.expect("a"), Ok(()));
        assert_eq!(b_rx.await.expect("b"), Ok(()));
        let t = tables(&sink);
        assert_eq!(t.iter().filter(|t| *t == "pump").count(), 1);
        assert_eq!(t.iter().filter(|t| *t == DEAD_LETTERS).count(), 1);
    }

    /// The fields of each message span as it closed, in close order.
    #[derive(Clone, Default)]
    struct ClosedSpans(Arc<parking_lot::Mutex<Vec<BTreeMap<String, String>>>>);

    struct SpanFields(BTreeMap<String, String>);

    impl tracing::field::Visit for SpanFields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }
    }

    impl<S> tracing_subscriber::Layer<S> for ClosedSpans
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            id: &tracing::span::Id,
            ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut fields = SpanFields(BTreeMap::new());
            attrs.record(&mut fields);
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(fields);
            }
        }
        fn on_record(
            &self,
            id: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            if let Some(span) = ctx.span(id)
                && let Some(fields) = span.extensions_mut().get_mut::<SpanFields>()
            {
                values.record(fields);
            }
        }
        fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
            if let Some(span) = ctx.span(&id)
                && let Some(fields) = span.extensions_mut().remove::<SpanFields>()
            {
                self.0.lock().push(fields.0);
            }
        }
    }

    fn traced(
        topic: &str,
        payload: &str,
        device: Option<&str>,
        traceparent: &str,
    ) -> (RawMessage, oneshot::Receiver<Result<(), String>>) {
        let (mut m, rx) = message(topic, payload, device);
        m.trace = MessageTrace::start(
            crate::message_trace::Arrival {
                source: "mqtt",
                topic,
                client_id: device,
                payload_bytes: payload.len(),
            },
            Some(traceparent),
        );
        (m, rx)
    }

    #[tokio::test]
    async fn each_traced_message_ends_its_span_with_how_it_ended() {
        use tracing_subscriber::layer::SubscriberExt;
        let closed = ClosedSpans::default();
        let _default =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(closed.clone()));
        fabrik_runtime::telemetry::set_spans_exported();
        let sink = Arc::new(MemorySink {
            reject_field: Some("conflict".into()),
            ..MemorySink::default()
        });
        let worker = ingest(sink.clone());
        let context = |n: u8, flags: &str| format!("00-{:032x}-{:016x}-{flags}", n, n);
        let (stored, _) = traced(
            "devices/p1/telemetry",
            r#"{"v": 1}"#,
            Some("p1"),
            &context(1, "01"),
        );
        let (refused, _) = traced(
            "devices/p2/telemetry",
            r#"{"conflict": 1}"#,
            Some("p2"),
            &context(2, "01"),
        );
        let (unreadable, _) = traced(
            "devices/p1/telemetry",
            "{oops",
            Some("p1"),
            &context(3, "01"),
        );
        let (chatter, _) = traced("app/notes", "hello", None, &context(4, "01"));
        let (unsampled, _) = traced(
            "devices/p1/telemetry",
            r#"{"v": 2}"#,
            Some("p1"),
            &context(5, "00"),
        );
        let (malformed, _) = traced("devices/p1/telemetry", r#"{"v": 3}"#, Some("p1"), "01-zz");
        assert!(!unsampled.trace.is_traced() && !malformed.trace.is_traced());
        let (lost, _) = traced(
            "devices/p1/telemetry",
            r#"{"v": 4}"#,
            Some("p1"),
            &context(6, "01"),
        );
        worker
            .process(vec![
                stored, refused, unreadable, chatter, unsampled, malformed,
            ])
            .await;
        drop(lost);

        let spans = closed.0.lock().clone();
        let outcome_of = |traceparent: &str| {
            spans
                .iter()
                .find(|s| s.get("traceparent").map(String::as_str) == Some(traceparent))
                .unwrap_or_else(|| panic!("no span for {traceparent}: {spans:?}"))
                .clone()
        };
        assert_eq!(
            spans.len(),
            5,
            "no span for the unsampled or malformed: {spans:?}"
        );
        let stored = outcome_of(&context(1, "01"));
        assert_eq!(stored["fabrik.outcome"], "stored");
        assert_eq!(stored["otel.name"], "ingest device-telemetry");
        assert_eq!(stored["fabrik.points"], "1");
        let raw_ids: Vec<String> = sink
            .written
            .lock()
            .iter()
            .filter(|(_, ps)| {
                ps.iter().any(|p| {
                    p.measurement == "pump"
                        && p.fields
                            .iter()
                            .any(|(k, v)| k == "v" && matches!(v, Value::F64(x) if *x == 1.0))
                })
            })
            .map(|(lineage, _)| lineage.raw_id.0.to_string())
            .collect();
        assert_eq!(
            raw_ids,
            vec![stored["fabrik.raw_id"].clone()],
            "the row's id"
        );
        assert_eq!(
            stored["fabrik.link_id"], stored["fabrik.raw_id"],
            "the id the span is found by, said before the write"
        );
        let refused = outcome_of(&context(2, "01"));
        assert_eq!(refused["fabrik.outcome"], "dead_letter", "{refused:?}");
        assert_eq!(refused["fabrik.points"], "0");
        assert!(
            refused["otel.status_message"].contains("conflict"),
            "{refused:?}"
        );
        let unreadable = outcome_of(&context(3, "01"));
        assert_eq!(unreadable["fabrik.outcome"], "dead_letter");
        assert_eq!(unreadable["otel.status_code"], "ERROR");
        let chatter = outcome_of(&context(4, "01"));
        assert_eq!(chatter["fabrik.outcome"], "not_stored");
        assert!(
            !chatter.contains_key("fabrik.raw_id"),
            "no row carries its id"
        );
        let lost = outcome_of(&context(6, "01"));
        assert_eq!(lost["fabrik.outcome"], "failed");
        assert_eq!(lost["otel.status_message"], "dropped before it was stored");
    }

    #[tokio::test]
    async fn a_clip_is_stored_as_a_blob_named_by_its_row_and_a_bad_one_dead_lettered() {
        let sink = Arc::new(MemorySink::default());
        let worker = ingest(sink.clone());
        let clip = fabrik_core::wav::encode_pcm16(8_000, 1, &[0; 4_000]);
        let id = fabrik_core::BlobId::of(&clip).to_string();
        let (good, good_rx) = message("devices/p1/clips/acoustic", "", Some("p1"));
        let good = RawMessage {
            payload: Bytes::from(clip.clone()),
            received_at: Timestamp(2_000_000_000),
            ..good
        };
        let (bad, bad_rx) = message("devices/p1/clips/acoustic", "RIFF-not-wave", Some("p1"));
        worker.process(vec![good, bad]).await;
        assert_eq!(good_rx.await.expect("good"), Ok(()));
        assert_eq!(bad_rx.await.expect("bad"), Ok(()));
        let blobs = sink.blobs.lock().clone();
        assert_eq!(blobs, vec![(Bytes::from(clip), "audio/wav".to_owned())]);
        let written = sink.written.lock();
        let points: Vec<&Point> = written.iter().flat_map(|(_, ps)| ps).collect();
        let row = points
            .iter()
            .find(|p| p.measurement == "clips")
            .expect("the clip's row");
        assert_eq!(
            row.fields,
            vec![("acoustic".to_owned(), Value::Str(id.clone()))]
        );
        // At its receipt: a row dated earlier than pipelines' read horizon would be missed.
        assert_eq!(row.time, Timestamp(2_000_000_000));
        assert!(
            points
                .iter()
                .any(|p| p.measurement == fabrik_core::blob::BLOBS_TABLE)
        );
        let raw = points.iter().find(|p| {
            p.measurement == RAW && p.fields.iter().any(|(_, v)| *v == Value::Str(id.clone()))
        });
        assert!(
            raw.is_some(),
            "the raw copy names the blob instead of repeating it"
        );
        let dead = points
            .iter()
            .find(|p| p.measurement == DEAD_LETTERS)
            .expect("dead letter");
        assert!(
            matches!(&dead.fields[2].1, Value::Str(r) if r.contains("not a WAV clip")),
            "{dead:?}"
        );
    }

    /// A clip whose rows the store refuses becomes a dead letter whose raw copy keeps the
    /// bytes: no row names the stored blob, which the store's sweep will delete.
    #[tokio::test]
    async fn a_clip_whose_row_is_refused_keeps_its_bytes_in_the_raw_copy() {
        let sink = Arc::new(MemorySink {
            reject_field: Some("acoustic".into()),
            ..MemorySink::default()
        });
        let worker = ingest(sink.clone());
        let clip = fabrik_core::wav::encode_pcm16(8_000, 1, &[7; 800]);
        let id = fabrik_core::BlobId::of(&clip).to_string();
        let (m, rx) = message("devices/p1/clips/acoustic", "", Some("p1"));
        let m = RawMessage {
            payload: Bytes::from(clip),
            ..m
        };
        worker.process(vec![m]).await;
        assert_eq!(rx.await.expect("answer"), Ok(()));
        let written = sink.written.lock();
        let points: Vec<&Point> = written.iter().flat_map(|(_, ps)| ps).collect();
        assert!(points.iter().any(|p| p.measurement == DEAD_LETTERS));
        let raw = points
            .iter()
            .find(|p| p.measurement == RAW)
            .expect("raw copy");
        assert!(
            raw.fields
                .iter()
                .any(|(k, v)| k == "payload"
                    && matches!(v, Value::Str(t) if t.starts_with("base64:"))),
            "{raw:?}"
        );
        assert!(
            !points
                .iter()
                .any(|p| p.fields.iter().any(|(_, v)| *v == Value::Str(id.clone()))),
            "nothing written names the blob"
        );
    }

    #[test]
    fn a_sparkplug_metric_that_is_null_or_not_a_finite_number_is_a_point_error() {
        let sample = |metric: &str, value: f64| SparkplugSample {
            device_id: "g/e/d".into(),
            metric: metric.into(),
            timestamp_ms: 5,
            value: SparkplugValue::F64(value),
            datatype: crate::sparkplug::DataType::Double,
            is_historical: false,
        };
        let mut null = sample("level", 0.0);
        null.value = SparkplugValue::Null;
        let points = sparkplug_points(&[sample("flow", f64::INFINITY), sample("temp", 20.5), null]);
        assert_eq!(points.len(), 3, "{points:?}");
        assert!(points[2].tags.contains(&("signal".into(), "level".into())));
        assert_eq!(points[0].measurement, SPARKPLUG_TABLE);
        assert_eq!(
            points[0].fields,
            vec![("temp".to_owned(), Value::F64(20.5))]
        );
        assert_eq!(
            points[1].measurement,
            crate::point_errors::POINT_ERRORS_TABLE
        );
        assert!(points[1].tags.contains(&("signal".into(), "flow".into())));
        assert!(
            points[1]
                .tags
                .contains(&("table_name".into(), SPARKPLUG_TABLE.into()))
        );
        assert_eq!(points[1].time, Timestamp(5_000_000));
    }

    #[test]
    fn binary_payloads_are_kept_as_base64() {
        assert_eq!(payload_text(b"hi"), "hi");
        assert_eq!(payload_text(&[0xff, 0x00, 0x10]), "base64:/wAQ");
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64_encode(b"a"), "YQ==");
    }
}
