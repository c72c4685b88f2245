//! The Sparkplug host-side session: a pure state machine per edge node `(group, edge_node)`
//! that tracks births and deaths (bdSeq), the per-message sequence number, and the metric
//! name/alias/data type tables, and turns each message into [`Sample`]s and [`Event`]s,
//! including the NCMD rebirth request to publish when the state can no longer be trusted.

use super::payload::{
    DataType, Value, decode_payload, encode_payload, metric_datatype, metric_value,
};
use super::proto::{Metric, Payload};
use super::topic::{MessageType, SparkplugTopic};
use super::{Result, SparkplugError};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

/// Name of the birth/death sequence metric.
pub const BD_SEQ: &str = "bdSeq";
/// Name of the node control metric that asks an edge node to rebirth.
pub const REBIRTH_METRIC: &str = "Node Control/Rebirth";

/// Maps `(group, edge_node, device)` to the Fabrik device id of samples and events.
pub type DeviceIdFn = Arc<dyn Fn(&str, &str, Option<&str>) -> String + Send + Sync>;

/// The default id scheme: `<group>/<edge_node>` and `<group>/<edge_node>/<device>`.
pub fn default_device_id(group: &str, edge_node: &str, device: Option<&str>) -> String {
    match device {
        Some(d) => format!("{group}/{edge_node}/{d}"),
        None => format!("{group}/{edge_node}"),
    }
}

/// Session settings.
#[derive(Clone)]
pub struct SessionConfig {
    /// The id scheme.
    pub device_id: DeviceIdFn,
    /// After a rebirth request, further problems of the same node do not ask again for this
    /// long (ms of receive time), unless the node has been born since.
    pub rebirth_holdoff_ms: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            device_id: Arc::new(default_device_id),
            rebirth_holdoff_ms: 5_000,
        }
    }
}

impl fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionConfig")
            .field("rebirth_holdoff_ms", &self.rebirth_holdoff_ms)
            .finish_non_exhaustive()
    }
}

/// One decoded metric value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Edge node or device id (see [`SessionConfig::device_id`]).
    pub device_id: String,
    /// Metric name (aliases resolved).
    pub metric: String,
    /// The metric's timestamp, else the payload's, else the receive time (ms since the epoch).
    pub timestamp_ms: u64,
    /// The value.
    pub value: Value,
    /// Its Sparkplug data type.
    pub datatype: DataType,
    /// Historical value (must not update the live value).
    pub is_historical: bool,
}

/// Why the host asks an edge node to rebirth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebirthReason {
    /// A data/device message came from a node that is not born (never, or dead since).
    NotBorn {
        /// The message type received.
        kind: MessageType,
    },
    /// The sequence number skipped (lost, reordered or duplicated messages).
    SeqGap {
        /// The sequence number expected.
        expected: u8,
        /// The one received.
        got: u8,
    },
    /// The message has no sequence number, or one past 255.
    BadSeq {
        /// The value received, if any.
        got: Option<u64>,
    },
    /// A device message for a device that has no live DBIRTH.
    UnknownDevice {
        /// The device id level of the topic.
        device: String,
    },
    /// A metric alias that no birth defined.
    UnknownAlias {
        /// The device, `None` for node metrics.
        device: Option<String>,
        /// The alias.
        alias: u64,
    },
    /// A metric name that no birth defined.
    UnknownMetric {
        /// The device, `None` for node metrics.
        device: Option<String>,
        /// The name.
        name: String,
    },
}

impl fmt::Display for RebirthReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = |d: &Option<String>| {
            d.as_ref()
                .map(|d| format!(" of device {d:?}"))
                .unwrap_or_default()
        };
        match self {
            Self::NotBorn { kind } => write!(f, "{kind} before the node's NBIRTH"),
            Self::SeqGap { expected, got } => {
                write!(f, "sequence gap: expected seq {expected}, got {got}")
            }
            Self::BadSeq { got: None } => f.write_str("message without a sequence number"),
            Self::BadSeq { got: Some(s) } => write!(f, "sequence number {s} is past 255"),
            Self::UnknownDevice { device } => write!(f, "device {device:?} has no live DBIRTH"),
            Self::UnknownAlias { device, alias } => {
                write!(f, "unknown metric alias {alias}{}", on(device))
            }
            Self::UnknownMetric { device, name } => {
                write!(f, "metric {name:?}{} is not in the birth", on(device))
            }
        }
    }
}

/// A state change or a request to the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The edge node or device (by id) came online (NBIRTH, DBIRTH).
    Online(String),
    /// The edge node or device went offline (NDEATH, DDEATH, or devices reset by a new NBIRTH).
    Offline(String),
    /// Publish `ncmd_payload` on `ncmd_topic` (QoS 0, not retained) to get a fresh NBIRTH.
    RebirthNeeded {
        /// The edge node's id.
        node: String,
        /// The first problem found in the message.
        reason: RebirthReason,
        /// `spBv1.0/<group>/NCMD/<edge_node>`.
        ncmd_topic: String,
        /// Encoded payload with `Node Control/Rebirth` = true.
        ncmd_payload: Vec<u8>,
    },
}

/// A metric that could not be turned into a sample (the rest of the message still is).
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedMetric {
    /// Edge node or device id.
    pub device_id: String,
    /// Metric name, or `alias N`.
    pub metric: String,
    /// Why.
    pub error: SparkplugError,
}

/// The metrics of a node or device that went offline: their last values are stale from
/// `timestamp_ms` on (the specification's STALE quality), until the next birth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    /// Edge node or device id (see [`SessionConfig::device_id`]).
    pub device_id: String,
    /// The metrics its birth declared, by name (sorted; `bdSeq` and the control metrics,
    /// which are commands, not measurements, left out).
    pub metrics: Vec<String>,
    /// When it went offline (ms since the epoch, on the node's clock): for an NDEATH, whose
    /// payload was written when the node connected (it is the node's MQTT will), its receive
    /// time moved by how far the node's clock was off Fabrik's in its last message (within a
    /// day); else the message's timestamp.
    pub timestamp_ms: u64,
    /// Why, for the `_point_errors` rows.
    pub reason: String,
}

/// The output of one message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    /// Decoded values.
    pub samples: Vec<Sample>,
    /// State changes and rebirth requests.
    pub events: Vec<Event>,
    /// Metrics whose values went stale with their node's or device's death.
    pub stale: Vec<Stale>,
    /// Metrics that were skipped.
    pub rejected: Vec<RejectedMetric>,
    /// Diagnostics for logs: ignored messages, suppressed rebirth requests.
    pub notes: Vec<String>,
}

impl Step {
    /// The rebirth request of this step, if any.
    pub fn rebirth(&self) -> Option<(&RebirthReason, &str, &[u8])> {
        self.events.iter().find_map(|e| match e {
            Event::RebirthNeeded {
                reason,
                ncmd_topic,
                ncmd_payload,
                ..
            } => Some((reason, ncmd_topic.as_str(), ncmd_payload.as_slice())),
            _ => None,
        })
    }
}

/// The most a node's clock is taken to be off Fabrik's (a day), in ms.
const MOST_CLOCK_OFFSET_MS: i64 = 86_400_000;

/// The metrics a birth declared.
#[derive(Debug, Clone, Default)]
struct MetricTable {
    by_alias: HashMap<u64, (String, DataType)>,
    by_name: HashMap<String, DataType>,
}

impl MetricTable {
    /// What goes stale of `device_id`'s metrics at a death.
    fn stale(&self, device_id: String, timestamp_ms: u64, reason: &str) -> Stale {
        let mut metrics: Vec<String> = self
            .by_name
            .keys()
            .filter(|name| {
                !name.is_empty()
                    && name.as_str() != BD_SEQ
                    && !name.starts_with("Node Control/")
                    && !name.starts_with("Device Control/")
            })
            .cloned()
            .collect();
        metrics.sort_unstable();
        Stale {
            device_id,
            metrics,
            timestamp_ms,
            reason: reason.to_owned(),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct DeviceState {
    online: bool,
    metrics: MetricTable,
}

/// The state machine of one edge node and its devices.
#[derive(Debug, Clone)]
pub struct NodeSession {
    group: String,
    edge_node: String,
    online: bool,
    bd_seq: Option<u64>,
    last_seq: Option<u8>,
    metrics: MetricTable,
    devices: BTreeMap<String, DeviceState>,
    rebirth_requested_at: Option<u64>,
    /// How far the node's clock, which its samples are stamped by, is ahead of Fabrik's (ms;
    /// negative: behind), as its last timestamped message (a death aside) showed.
    clock_offset_ms: i64,
    /// When each of its ids (the node's, its devices') was last marked stale.
    stale_at: HashMap<String, u64>,
}

impl NodeSession {
    /// A node never seen born.
    pub fn new(group: &str, edge_node: &str) -> Self {
        Self {
            group: group.to_owned(),
            edge_node: edge_node.to_owned(),
            online: false,
            bd_seq: None,
            last_seq: None,
            metrics: MetricTable::default(),
            devices: BTreeMap::new(),
            rebirth_requested_at: None,
            clock_offset_ms: 0,
            stale_at: HashMap::new(),
        }
    }

    /// Whether the node is born and not dead.
    pub fn is_online(&self) -> bool {
        self.online
    }

    /// Whether `device` is born and not dead.
    pub fn device_online(&self, device: &str) -> bool {
        self.online && self.devices.get(device).is_some_and(|d| d.online)
    }

    /// The bdSeq of the current (or last) NBIRTH.
    pub fn bd_seq(&self) -> Option<u64> {
        self.bd_seq
    }

    /// The last sequence number seen.
    pub fn last_seq(&self) -> Option<u8> {
        self.last_seq
    }

    /// Resolves a metric's name for a device or the node (after its birth).
    pub fn alias_name(&self, device: Option<&str>, alias: u64) -> Option<&str> {
        let table = match device {
            Some(d) => &self.devices.get(d)?.metrics,
            None => &self.metrics,
        };
        table.by_alias.get(&alias).map(|(n, _)| n.as_str())
    }

    /// A metric of the node's birth (`device` `None`) or of a device's: its data type and, if
    /// the birth gave one, its alias.
    pub fn metric(&self, device: Option<&str>, name: &str) -> Option<(DataType, Option<u64>)> {
        let table = match device {
            Some(d) => &self.devices.get(d)?.metrics,
            None => &self.metrics,
        };
        let datatype = *table.by_name.get(name)?;
        let alias = table
            .by_alias
            .iter()
            .find(|(_, (n, _))| n == name)
            .map(|(alias, _)| *alias);
        Some((datatype, alias))
    }

    /// Whether a birth of `device` was ever seen (alive or dead since).
    pub fn knows_device(&self, device: &str) -> bool {
        self.devices.contains_key(device)
    }

    fn id(&self, config: &SessionConfig, device: Option<&str>) -> String {
        (config.device_id)(&self.group, &self.edge_node, device)
    }

    /// Processes one message of this node (`device` is the topic's device level).
    pub fn handle(
        &mut self,
        config: &SessionConfig,
        kind: MessageType,
        device: Option<&str>,
        payload: &Payload,
        received_ms: u64,
    ) -> Step {
        let mut step = Step::default();
        let mut reasons = Vec::new();
        let node_id = self.id(config, None);
        match (kind, device) {
            (MessageType::NBirth, _) => self.nbirth(config, payload, received_ms, &mut step),
            (MessageType::NDeath, _) => self.ndeath(config, payload, received_ms, &mut step),
            (MessageType::NData, _) => {
                if self.require_born(kind, &mut reasons) {
                    self.check_seq(payload, &mut reasons);
                    let table = &self.metrics;
                    data(
                        table,
                        payload,
                        &node_id,
                        None,
                        received_ms,
                        &mut step,
                        &mut reasons,
                    );
                }
            }
            (MessageType::DBirth, Some(dev)) => {
                if self.require_born(kind, &mut reasons) {
                    self.check_seq(payload, &mut reasons);
                    let id = self.id(config, Some(dev));
                    let state = self.devices.entry(dev.to_owned()).or_default();
                    state.metrics = MetricTable::default();
                    birth(
                        &mut state.metrics,
                        payload,
                        &id,
                        false,
                        received_ms,
                        &mut step,
                    );
                    if !state.online {
                        state.online = true;
                        step.events.push(Event::Online(id));
                    }
                }
            }
            (MessageType::DData, Some(dev)) => {
                if self.require_born(kind, &mut reasons) {
                    self.check_seq(payload, &mut reasons);
                    let id = self.id(config, Some(dev));
                    match self.devices.get(dev).filter(|d| d.online) {
                        Some(state) => data(
                            &state.metrics,
                            payload,
                            &id,
                            Some(dev),
                            received_ms,
                            &mut step,
                            &mut reasons,
                        ),
                        None => reasons.push(RebirthReason::UnknownDevice {
                            device: dev.to_owned(),
                        }),
                    }
                }
            }
            (MessageType::DDeath, Some(dev)) => {
                if !self.online {
                    step.notes.push(format!(
                        "DDEATH of {dev:?} while the node is offline: ignored"
                    ));
                } else {
                    self.check_seq(payload, &mut reasons);
                    let id = self.id(config, Some(dev));
                    match self.devices.get_mut(dev) {
                        Some(state) if state.online => {
                            state.online = false;
                            step.stale.push(state.metrics.stale(
                                id.clone(),
                                payload.timestamp.unwrap_or(received_ms),
                                "DDEATH: the device went offline; its last values are stale",
                            ));
                            step.events.push(Event::Offline(id));
                        }
                        _ => step
                            .notes
                            .push(format!("DDEATH of {dev:?}, which is not online: ignored")),
                    }
                }
            }
            (MessageType::DBirth | MessageType::DData | MessageType::DDeath, None) => {
                step.notes
                    .push(format!("{kind} without a device id: ignored"));
            }
            (MessageType::NCmd | MessageType::DCmd | MessageType::State, _) => {
                step.notes
                    .push(format!("{kind} is host-originated: ignored"));
            }
        }
        if let Some(reason) = reasons.into_iter().next() {
            self.request_rebirth(config, reason, node_id, received_ms, &mut step);
        }
        if matches!(kind, MessageType::NBirth | MessageType::DBirth) {
            self.births_after_stale(payload.timestamp.unwrap_or(received_ms), &mut step);
        }
        for stale in &step.stale {
            self.stale_at
                .insert(stale.device_id.clone(), stale.timestamp_ms);
        }
        if kind != MessageType::NDeath
            && let Some(timestamp) = payload.timestamp
        {
            let offset = i64::try_from(timestamp)
                .unwrap_or(i64::MAX)
                .saturating_sub(i64::try_from(received_ms).unwrap_or(i64::MAX));
            // A timestamp further off than a day is a wrong one, not a clock's drift: it
            // would misplace every later death.
            if offset.abs() <= MOST_CLOCK_OFFSET_MS {
                self.clock_offset_ms = offset;
            }
        }
        step
    }

    /// A birth's values stand from the birth on: one stamped before its id was marked stale
    /// (a metric's timestamp is when it was sampled, which for a value that has not changed
    /// can be long ago) is stamped at the birth instead, or it would sort before the stale
    /// mark and count as ended by it.
    fn births_after_stale(&mut self, birth_ms: u64, step: &mut Step) {
        for sample in &mut step.samples {
            if let Some(&stale_ms) = self.stale_at.get(&sample.device_id)
                && sample.timestamp_ms <= stale_ms
            {
                sample.timestamp_ms = birth_ms.max(stale_ms.saturating_add(1));
            }
        }
        for sample in &step.samples {
            self.stale_at.remove(&sample.device_id);
        }
    }

    fn require_born(&self, kind: MessageType, reasons: &mut Vec<RebirthReason>) -> bool {
        if !self.online {
            reasons.push(RebirthReason::NotBorn { kind });
        }
        self.online
    }

    /// Every message after NBIRTH (NDATA, DBIRTH, DDATA, DDEATH) increments seq mod 256.
    fn check_seq(&mut self, payload: &Payload, reasons: &mut Vec<RebirthReason>) {
        let Some(got) = payload.seq.and_then(|s| u8::try_from(s).ok()) else {
            reasons.push(RebirthReason::BadSeq { got: payload.seq });
            return;
        };
        let expected = self.last_seq.map_or(0, |s| s.wrapping_add(1));
        if got != expected {
            reasons.push(RebirthReason::SeqGap { expected, got });
        }
        self.last_seq = Some(got);
    }

    fn nbirth(
        &mut self,
        config: &SessionConfig,
        payload: &Payload,
        received_ms: u64,
        step: &mut Step,
    ) {
        let node_id = self.id(config, None);
        // A new birth invalidates the devices: they are offline until their DBIRTH.
        let devices = std::mem::take(&mut self.devices);
        for (dev, state) in devices {
            if state.online {
                let id = self.id(config, Some(&dev));
                step.stale.push(state.metrics.stale(
                    id.clone(),
                    payload.timestamp.unwrap_or(received_ms),
                    "NBIRTH: the edge node was born again; the device is offline until its DBIRTH",
                ));
                step.events.push(Event::Offline(id));
            }
        }
        self.bd_seq = bd_seq(payload);
        if self.bd_seq.is_none() {
            step.notes.push("NBIRTH without a bdSeq metric".into());
        }
        self.last_seq = Some(match payload.seq.and_then(|s| u8::try_from(s).ok()) {
            Some(s) => s,
            None => {
                step.notes.push(format!(
                    "NBIRTH seq {:?} is not 0..=255: taken as 0",
                    payload.seq
                ));
                0
            }
        });
        self.metrics = MetricTable::default();
        birth(
            &mut self.metrics,
            payload,
            &node_id,
            true,
            received_ms,
            step,
        );
        self.rebirth_requested_at = None;
        if !self.online {
            self.online = true;
            step.events.push(Event::Online(node_id));
        }
    }

    fn ndeath(
        &mut self,
        config: &SessionConfig,
        payload: &Payload,
        received_ms: u64,
        step: &mut Step,
    ) {
        if !self.online {
            step.notes
                .push("NDEATH of a node that is not online: ignored".into());
            return;
        }
        let got = bd_seq(payload);
        if got != self.bd_seq {
            step.notes.push(format!(
                "stale NDEATH (bdSeq {got:?}, current birth has {:?}): ignored",
                self.bd_seq
            ));
            return;
        }
        // The death is the node's MQTT will, written when it connected: the broker's
        // delivery, not its timestamp, says when the node went.
        self.go_offline(
            config,
            received_ms,
            "NDEATH: the edge node went offline; its last values are stale",
            step,
        );
    }

    /// Marks the node and its online devices offline, their metrics stale from `received_ms`
    /// (Fabrik's clock) moved to the node's clock, which its samples are stamped by, so the
    /// mark sorts after the last of them.
    fn go_offline(&mut self, config: &SessionConfig, received_ms: u64, why: &str, step: &mut Step) {
        let received_ms = received_ms.saturating_add_signed(self.clock_offset_ms);
        for (dev, state) in &mut self.devices {
            if state.online {
                state.online = false;
                let id = (config.device_id)(&self.group, &self.edge_node, Some(dev));
                step.stale
                    .push(state.metrics.stale(id.clone(), received_ms, why));
                step.events.push(Event::Offline(id));
            }
        }
        self.online = false;
        self.last_seq = None;
        let node_id = self.id(config, None);
        step.stale
            .push(self.metrics.stale(node_id.clone(), received_ms, why));
        step.events.push(Event::Offline(node_id));
    }

    fn request_rebirth(
        &mut self,
        config: &SessionConfig,
        reason: RebirthReason,
        node: String,
        received_ms: u64,
        step: &mut Step,
    ) {
        if let Some(at) = self.rebirth_requested_at
            && received_ms < at.saturating_add(config.rebirth_holdoff_ms)
        {
            step.notes.push(format!(
                "rebirth needed ({reason}) but one was requested at {at} ms: not repeated"
            ));
            return;
        }
        self.rebirth_requested_at = Some(received_ms);
        step.events.push(Event::RebirthNeeded {
            node,
            reason,
            ncmd_topic: SparkplugTopic::node_topic(&self.group, MessageType::NCmd, &self.edge_node),
            ncmd_payload: rebirth_payload(received_ms),
        });
    }
}

/// The NCMD payload asking for a rebirth: `Node Control/Rebirth` = true (Boolean).
pub fn rebirth_payload(timestamp_ms: u64) -> Vec<u8> {
    let metric = Metric {
        name: Some(REBIRTH_METRIC.to_owned()),
        timestamp: Some(timestamp_ms),
        datatype: Some(DataType::Boolean.code()),
        value: Some(super::proto::MetricValue::BooleanValue(true)),
        ..Metric::default()
    };
    encode_payload(&Payload {
        timestamp: Some(timestamp_ms),
        metrics: vec![metric],
        ..Payload::default()
    })
}

/// The `bdSeq` metric's value (any integer type).
fn bd_seq(payload: &Payload) -> Option<u64> {
    let m = payload
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(BD_SEQ))?;
    let dt = metric_datatype(m, Some(DataType::UInt64), BD_SEQ).ok()?;
    match metric_value(m, dt, BD_SEQ).ok()? {
        Value::U64(v) => Some(v),
        Value::I64(v) => u64::try_from(v).ok(),
        _ => None,
    }
}

fn label(metric: &Metric) -> String {
    match (&metric.name, metric.alias) {
        (Some(n), _) => n.clone(),
        (None, Some(a)) => format!("alias {a}"),
        (None, None) => "<unnamed>".into(),
    }
}

fn sample(
    metric: &Metric,
    name: String,
    datatype: DataType,
    id: &str,
    payload: &Payload,
    received_ms: u64,
    step: &mut Step,
) {
    match metric_value(metric, datatype, &name) {
        Ok(value) => step.samples.push(Sample {
            device_id: id.to_owned(),
            metric: name,
            timestamp_ms: metric
                .timestamp
                .or(payload.timestamp)
                .unwrap_or(received_ms),
            value,
            datatype,
            is_historical: metric.is_historical == Some(true),
        }),
        Err(error) => step.rejected.push(RejectedMetric {
            device_id: id.to_owned(),
            metric: name,
            error,
        }),
    }
}

fn reject(step: &mut Step, id: &str, metric: String, error: SparkplugError) {
    step.rejected.push(RejectedMetric {
        device_id: id.to_owned(),
        metric,
        error,
    });
}

/// Records a birth's metric table and emits its values (except `bdSeq`) as samples.
fn birth(
    table: &mut MetricTable,
    payload: &Payload,
    id: &str,
    node: bool,
    received_ms: u64,
    step: &mut Step,
) {
    for metric in &payload.metrics {
        let Some(name) = metric.name.clone() else {
            reject(
                step,
                id,
                label(metric),
                SparkplugError::Unresolved {
                    metric: label(metric),
                    reason: "birth metric without a name".into(),
                },
            );
            continue;
        };
        let datatype = match metric_datatype(metric, None, &name) {
            Ok(t) => t,
            Err(e) => {
                reject(step, id, name, e);
                continue;
            }
        };
        table.by_name.insert(name.clone(), datatype);
        if let Some(alias) = metric.alias {
            table.by_alias.insert(alias, (name.clone(), datatype));
        }
        if node && name == BD_SEQ {
            continue;
        }
        sample(metric, name, datatype, id, payload, received_ms, step);
    }
}

/// Resolves a data message's metrics against the birth's table.
fn data(
    table: &MetricTable,
    payload: &Payload,
    id: &str,
    device: Option<&str>,
    received_ms: u64,
    step: &mut Step,
    reasons: &mut Vec<RebirthReason>,
) {
    for metric in &payload.metrics {
        let known = match (metric.alias, &metric.name) {
            (Some(alias), name) => match (table.by_alias.get(&alias), name) {
                (Some((n, t)), _) => Some((n.clone(), Some(*t))),
                (None, Some(n)) => Some((n.clone(), table.by_name.get(n).copied())),
                (None, None) => {
                    reasons.push(RebirthReason::UnknownAlias {
                        device: device.map(str::to_owned),
                        alias,
                    });
                    reject(
                        step,
                        id,
                        label(metric),
                        SparkplugError::Unresolved {
                            metric: label(metric),
                            reason: "alias not defined by the birth".into(),
                        },
                    );
                    None
                }
            },
            (None, Some(n)) => Some((n.clone(), table.by_name.get(n).copied())),
            (None, None) => {
                step.notes
                    .push("metric with neither name nor alias: skipped".into());
                None
            }
        };
        let Some((name, birth_type)) = known else {
            continue;
        };
        if birth_type.is_none() {
            reasons.push(RebirthReason::UnknownMetric {
                device: device.map(str::to_owned),
                name: name.clone(),
            });
        }
        match metric_datatype(metric, birth_type, &name) {
            Ok(datatype) => sample(metric, name, datatype, id, payload, received_ms, step),
            Err(e) => reject(step, id, name, e),
        }
    }
}

/// All edge nodes seen on the broker: routes each message to its [`NodeSession`].
#[derive(Debug, Default)]
pub struct SparkplugHost {
    config: SessionConfig,
    nodes: HashMap<(String, String), NodeSession>,
}

impl SparkplugHost {
    /// An empty host.
    pub fn new(config: SessionConfig) -> Self {
        Self {
            config,
            nodes: HashMap::new(),
        }
    }

    /// Processes one MQTT message. Errors (nothing changed): not a Sparkplug B topic, or a
    /// payload that is not a Sparkplug B protobuf; the caller dead-letters those.
    pub fn handle(&mut self, topic: &str, payload: &[u8], received_ms: u64) -> Result<Step> {
        let topic = SparkplugTopic::parse(topic)?;
        if let SparkplugTopic::HostState { host } = &topic {
            return Ok(Step {
                notes: vec![format!("STATE of host {host:?}: ignored")],
                ..Step::default()
            });
        }
        let payload = decode_payload(payload)?;
        Ok(self.handle_decoded(&topic, &payload, received_ms))
    }

    /// Processes an already parsed topic and decoded payload.
    pub fn handle_decoded(
        &mut self,
        topic: &SparkplugTopic,
        payload: &Payload,
        received_ms: u64,
    ) -> Step {
        match topic {
            SparkplugTopic::HostState { host } => Step {
                notes: vec![format!("STATE of host {host:?}: ignored")],
                ..Step::default()
            },
            SparkplugTopic::Node {
                group,
                kind,
                edge_node,
                device,
            } => {
                if matches!(
                    kind,
                    MessageType::NCmd | MessageType::DCmd | MessageType::State
                ) {
                    return Step {
                        notes: vec![format!("{kind} is host-originated: ignored")],
                        ..Step::default()
                    };
                }
                let node = self
                    .nodes
                    .entry((group.clone(), edge_node.clone()))
                    .or_insert_with(|| NodeSession::new(group, edge_node));
                node.handle(&self.config, *kind, device.as_deref(), payload, received_ms)
            }
        }
    }

    /// Fabrik lost the connection that `nodes`' messages came through (a host bridge's broker):
    /// those online go offline, their metrics stale from `received_ms` (Sparkplug asks a host
    /// to mark them STALE when it loses its server), until they are born again.
    pub fn connection_lost(
        &mut self,
        nodes: &[(String, String)],
        received_ms: u64,
        why: &str,
    ) -> Step {
        let mut step = Step::default();
        for key in nodes {
            if let Some(node) = self.nodes.get_mut(key).filter(|n| n.online) {
                // A request sent on the lost connection may never have reached the node: the
                // next one is not held back for it.
                node.rebirth_requested_at = None;
                let first = step.stale.len();
                node.go_offline(&self.config, received_ms, why, &mut step);
                for stale in &step.stale[first..] {
                    node.stale_at
                        .insert(stale.device_id.clone(), stale.timestamp_ms);
                }
            }
        }
        step
    }

    /// The session of an edge node, once it sent anything.
    pub fn node(&self, group: &str, edge_node: &str) -> Option<&NodeSession> {
        self.nodes.get(&(group.to_owned(), edge_node.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparkplug::payload::new_metric;
    use crate::sparkplug::proto::MetricValue;

    const G: &str = "g";
    const E: &str = "e";

    fn metric(name: Option<&str>, alias: Option<u64>, dt: DataType, v: Value) -> Metric {
        new_metric(name, alias, dt, &v, None).unwrap()
    }

    fn payload(seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
        encode_payload(&Payload {
            timestamp: Some(1_000),
            metrics,
            seq,
            ..Payload::default()
        })
    }

    fn nbirth(bd: i64) -> Vec<u8> {
        payload(
            Some(0),
            vec![
                metric(Some(BD_SEQ), None, DataType::Int64, Value::I64(bd)),
                metric(Some("temp"), Some(1), DataType::Float, Value::F64(20.5)),
                metric(Some("count"), Some(2), DataType::UInt32, Value::U64(7)),
            ],
        )
    }

    fn dbirth(seq: u64) -> Vec<u8> {
        payload(
            Some(seq),
            vec![metric(
                Some("rpm"),
                Some(1),
                DataType::Int16,
                Value::I64(-5),
            )],
        )
    }

    fn ndata(seq: u64, alias: u64) -> Vec<u8> {
        let mut m = metric(None, Some(alias), DataType::UInt32, Value::U64(8));
        m.datatype = None;
        payload(Some(seq), vec![m])
    }

    fn t(kind: &str, dev: Option<&str>) -> String {
        match dev {
            Some(d) => format!("spBv1.0/{G}/{kind}/{E}/{d}"),
            None => format!("spBv1.0/{G}/{kind}/{E}"),
        }
    }

    fn born() -> SparkplugHost {
        let mut host = SparkplugHost::default();
        let step = host.handle(&t("NBIRTH", None), &nbirth(3), 5).unwrap();
        assert_eq!(step.events, vec![Event::Online("g/e".into())]);
        host
    }

    fn assert_rebirth(step: &Step, want: RebirthReason) {
        let (reason, topic, bytes) = step.rebirth().expect("a rebirth request");
        assert_eq!(reason, &want);
        assert_eq!(topic, "spBv1.0/g/NCMD/e");
        let p = decode_payload(bytes).unwrap();
        assert_eq!(p.metrics.len(), 1);
        assert_eq!(p.metrics[0].name.as_deref(), Some(REBIRTH_METRIC));
        assert_eq!(p.metrics[0].datatype, Some(DataType::Boolean.code()));
        assert_eq!(p.metrics[0].value, Some(MetricValue::BooleanValue(true)));
    }

    #[test]
    fn nbirth_records_bdseq_seq_and_metrics() {
        let mut host = SparkplugHost::default();
        let step = host.handle(&t("NBIRTH", None), &nbirth(3), 5).unwrap();
        let names: Vec<_> = step.samples.iter().map(|s| s.metric.as_str()).collect();
        assert_eq!(names, ["temp", "count"], "bdSeq is not a sample");
        assert_eq!(step.samples[0].timestamp_ms, 1_000, "payload timestamp");
        assert_eq!(step.samples[0].device_id, "g/e");
        let node = host.node(G, E).unwrap();
        assert!(node.is_online());
        assert_eq!((node.bd_seq(), node.last_seq()), (Some(3), Some(0)));
        assert_eq!(node.alias_name(None, 2), Some("count"));
    }

    #[test]
    fn ndata_resolves_aliases_and_datatypes() {
        let mut host = born();
        let step = host.handle(&t("NDATA", None), &ndata(1, 2), 6).unwrap();
        assert_eq!(step.events, vec![]);
        assert_eq!(
            step.samples,
            vec![Sample {
                device_id: "g/e".into(),
                metric: "count".into(),
                timestamp_ms: 1_000,
                value: Value::U64(8),
                datatype: DataType::UInt32,
                is_historical: false,
            }]
        );
    }

    #[test]
    fn metric_timestamp_wins_then_payload_then_receive_time() {
        let mut host = born();
        let mut m = metric(Some("temp"), None, DataType::Float, Value::F64(1.0));
        m.timestamp = Some(777);
        m.is_historical = Some(true);
        let step = host
            .handle(&t("NDATA", None), &payload(Some(1), vec![m.clone()]), 6)
            .unwrap();
        assert_eq!(step.samples[0].timestamp_ms, 777);
        assert!(step.samples[0].is_historical);
        m.timestamp = None;
        let bytes = encode_payload(&Payload {
            seq: Some(2),
            metrics: vec![m],
            ..Payload::default()
        });
        let step = host.handle(&t("NDATA", None), &bytes, 66).unwrap();
        assert_eq!(step.samples[0].timestamp_ms, 66);
    }

    #[test]
    fn data_before_birth_asks_for_rebirth() {
        let mut host = SparkplugHost::default();
        let step = host.handle(&t("NDATA", None), &ndata(5, 1), 6).unwrap();
        assert!(step.samples.is_empty());
        assert_rebirth(
            &step,
            RebirthReason::NotBorn {
                kind: MessageType::NData,
            },
        );
        let step = host
            .handle(&t("DBIRTH", Some("d")), &dbirth(6), 10_000)
            .unwrap();
        assert_rebirth(
            &step,
            RebirthReason::NotBorn {
                kind: MessageType::DBirth,
            },
        );
    }

    #[test]
    fn seq_gap_asks_for_rebirth_but_keeps_the_data() {
        let mut host = born();
        let step = host.handle(&t("NDATA", None), &ndata(2, 2), 6).unwrap();
        assert_eq!(step.samples.len(), 1);
        assert_rebirth(
            &step,
            RebirthReason::SeqGap {
                expected: 1,
                got: 2,
            },
        );
        let step = host
            .handle(&t("NDATA", None), &payload(None, vec![]), 10_000)
            .unwrap();
        assert_rebirth(&step, RebirthReason::BadSeq { got: None });
        let step = host
            .handle(&t("NDATA", None), &payload(Some(256), vec![]), 20_000)
            .unwrap();
        assert_rebirth(&step, RebirthReason::BadSeq { got: Some(256) });
    }

    #[test]
    fn seq_wraps_at_256() {
        let mut host = born();
        for i in 1..=300u64 {
            let step = host
                .handle(&t("NDATA", None), &ndata(i % 256, 2), 6)
                .unwrap();
            assert!(step.events.is_empty(), "seq {i}: {:?}", step.events);
            assert_eq!(step.samples.len(), 1);
        }
    }

    #[test]
    fn unknown_alias_asks_for_rebirth() {
        let mut host = born();
        let step = host.handle(&t("NDATA", None), &ndata(1, 99), 6).unwrap();
        assert!(step.samples.is_empty());
        assert_eq!(step.rejected.len(), 1);
        assert_rebirth(
            &step,
            RebirthReason::UnknownAlias {
                device: None,
                alias: 99,
            },
        );
    }

    #[test]
    fn unknown_metric_name_asks_for_rebirth_and_is_decoded_if_typed() {
        let mut host = born();
        let m = metric(Some("new"), None, DataType::Boolean, Value::Bool(true));
        let step = host
            .handle(&t("NDATA", None), &payload(Some(1), vec![m]), 6)
            .unwrap();
        assert_eq!(step.samples.len(), 1);
        assert_rebirth(
            &step,
            RebirthReason::UnknownMetric {
                device: None,
                name: "new".into(),
            },
        );
    }

    #[test]
    fn rebirth_requests_are_held_off() {
        let mut host = born();
        let step = host.handle(&t("NDATA", None), &ndata(9, 1), 100).unwrap();
        assert!(step.rebirth().is_some());
        let step = host.handle(&t("NDATA", None), &ndata(20, 1), 200).unwrap();
        assert!(step.rebirth().is_none());
        assert!(step.notes.iter().any(|n| n.contains("not repeated")));
        let step = host
            .handle(&t("NDATA", None), &ndata(30, 1), 5_100)
            .unwrap();
        assert!(step.rebirth().is_some(), "after the hold-off");
        // A new birth clears the hold-off.
        host.handle(&t("NBIRTH", None), &nbirth(4), 5_200).unwrap();
        let step = host
            .handle(&t("NDATA", None), &ndata(40, 1), 5_300)
            .unwrap();
        assert!(step.rebirth().is_some());
    }

    #[test]
    fn device_lifecycle() {
        let mut host = born();
        let step = host.handle(&t("DBIRTH", Some("d")), &dbirth(1), 6).unwrap();
        assert_eq!(step.events, vec![Event::Online("g/e/d".into())]);
        assert_eq!(step.samples[0].value, Value::I64(-5));
        let mut m = metric(None, Some(1), DataType::Int16, Value::I64(-9));
        m.datatype = None;
        let step = host
            .handle(&t("DDATA", Some("d")), &payload(Some(2), vec![m]), 7)
            .unwrap();
        assert_eq!(step.samples[0].metric, "rpm");
        assert_eq!(step.samples[0].device_id, "g/e/d");
        assert_eq!(step.samples[0].value, Value::I64(-9));
        let step = host
            .handle(&t("DDEATH", Some("d")), &payload(Some(3), vec![]), 8)
            .unwrap();
        assert_eq!(step.events, vec![Event::Offline("g/e/d".into())]);
        assert_eq!(
            step.stale,
            vec![Stale {
                device_id: "g/e/d".into(),
                metrics: vec!["rpm".into()],
                timestamp_ms: 1_000,
                reason: "DDEATH: the device went offline; its last values are stale".into(),
            }],
            "the device's metrics are stale from the death's timestamp"
        );
        assert!(!host.node(G, E).unwrap().device_online("d"));
        let step = host
            .handle(&t("DDATA", Some("d")), &payload(Some(4), vec![]), 9)
            .unwrap();
        assert_rebirth(&step, RebirthReason::UnknownDevice { device: "d".into() });
        let step = host
            .handle(&t("DDEATH", Some("d")), &payload(Some(5), vec![]), 9)
            .unwrap();
        assert!(step.events.is_empty());
        assert!(step.stale.is_empty(), "not online: nothing goes stale");
        assert!(step.notes.iter().any(|n| n.contains("not online")));
    }

    #[test]
    fn ndeath_with_matching_bdseq_takes_node_and_devices_offline() {
        let mut host = born();
        host.handle(&t("DBIRTH", Some("a")), &dbirth(1), 6).unwrap();
        host.handle(&t("DBIRTH", Some("b")), &dbirth(2), 6).unwrap();
        let death = |bd| {
            payload(
                None,
                vec![metric(Some(BD_SEQ), None, DataType::Int64, Value::I64(bd))],
            )
        };
        let step = host.handle(&t("NDEATH", None), &death(2), 7).unwrap();
        assert!(step.events.is_empty(), "stale NDEATH is ignored");
        assert!(step.stale.is_empty(), "and marks nothing stale");
        assert!(host.node(G, E).unwrap().is_online());
        let step = host.handle(&t("NDEATH", None), &death(3), 5_000).unwrap();
        assert_eq!(
            step.events,
            vec![
                Event::Offline("g/e/a".into()),
                Event::Offline("g/e/b".into()),
                Event::Offline("g/e".into())
            ]
        );
        let stale: Vec<(&str, Vec<&str>, u64)> = step
            .stale
            .iter()
            .map(|s| {
                let metrics = s.metrics.iter().map(String::as_str).collect();
                (s.device_id.as_str(), metrics, s.timestamp_ms)
            })
            .collect();
        assert_eq!(
            stale,
            vec![
                ("g/e/a", vec!["rpm"], 5_994),
                ("g/e/b", vec!["rpm"], 5_994),
                ("g/e", vec!["count", "temp"], 5_994)
            ],
            "every metric but bdSeq, from when the will was delivered (5,000), on the node's \
             clock (its last message, stamped 1,000, arrived at 6): not the will's own time"
        );
        let node = host.node(G, E).unwrap();
        assert!(!node.is_online() && !node.device_online("a"));
        let step = host.handle(&t("NDEATH", None), &death(3), 9).unwrap();
        assert!(step.events.is_empty(), "already offline");
        assert!(step.stale.is_empty());
    }

    #[test]
    fn a_lost_connection_makes_its_nodes_stale_and_lets_them_be_asked_to_rebirth() {
        let mut host = born();
        host.handle(&t("DBIRTH", Some("a")), &dbirth(1), 6).unwrap();
        // A gap: a rebirth request, then none again within the hold-off.
        let gap = host.handle(&t("NDATA", None), &ndata(5, 1), 7).unwrap();
        assert!(gap.rebirth().is_some());
        let nodes = vec![(G.to_owned(), E.to_owned()), ("other".into(), "x".into())];
        let step = host.connection_lost(&nodes, 100, "lost");
        assert_eq!(
            step.events,
            vec![Event::Offline("g/e/a".into()), Event::Offline("g/e".into())],
            "an unknown node is no one's business"
        );
        let stale: Vec<(&str, u64, &str)> = step
            .stale
            .iter()
            .map(|s| (s.device_id.as_str(), s.timestamp_ms, s.reason.as_str()))
            .collect();
        assert_eq!(
            stale,
            vec![("g/e/a", 1_093, "lost"), ("g/e", 1_093, "lost")],
            "on the node's clock (its last message, stamped 1,000, arrived at 7), as a death"
        );
        assert!(!host.node(G, E).unwrap().is_online());
        assert!(
            host.connection_lost(&nodes, 150, "lost").stale.is_empty(),
            "told once"
        );
        // Back: its next report brings a rebirth request at once, within the hold-off of the
        // request sent on the lost connection.
        let after = host.handle(&t("NDATA", None), &ndata(6, 1), 200).unwrap();
        assert_rebirth(
            &after,
            RebirthReason::NotBorn {
                kind: MessageType::NData,
            },
        );
    }

    #[test]
    fn a_birth_after_a_death_counts_from_the_birth_and_a_death_by_the_nodes_clock() {
        let mut host = born();
        host.handle(&t("DBIRTH", Some("d")), &dbirth(1), 6).unwrap();
        let step = host
            .handle(&t("DDEATH", Some("d")), &payload(Some(2), vec![]), 7)
            .unwrap();
        assert_eq!(step.stale[0].timestamp_ms, 1_000);
        // The new birth's values carry the same timestamp as the death (the payloads' 1,000):
        // they would sort before the stale mark, so they are stamped just after it.
        let step = host.handle(&t("DBIRTH", Some("d")), &dbirth(3), 8).unwrap();
        assert_eq!(step.samples[0].timestamp_ms, 1_001);
        let mut m = metric(None, Some(1), DataType::Int16, Value::I64(-9));
        m.datatype = None;
        let step = host
            .handle(&t("DDATA", Some("d")), &payload(Some(4), vec![m]), 9)
            .unwrap();
        assert_eq!(step.samples[0].timestamp_ms, 1_000, "data is as stamped");
        // The node's last message (1,000 on its clock) arrived at 9 by Fabrik's: its clock
        // is 991 ms ahead, and its will, delivered at 20, is at 1,011 on that clock.
        let death = payload(
            None,
            vec![metric(Some(BD_SEQ), None, DataType::Int64, Value::I64(3))],
        );
        let step = host.handle(&t("NDEATH", None), &death, 20).unwrap();
        assert!(
            step.stale.iter().all(|s| s.timestamp_ms == 1_011),
            "{:?}",
            step.stale
        );

        // Born again, at 5,000: a metric sampled at 500 (unchanged since) is stamped at the
        // birth, after the stale mark; a timestamp a year off moves no later death.
        let old_sample = encode_payload(&Payload {
            timestamp: Some(5_000),
            seq: Some(0),
            metrics: vec![
                metric(Some(BD_SEQ), None, DataType::Int64, Value::I64(4)),
                new_metric(
                    Some("temp"),
                    Some(1),
                    DataType::Float,
                    &Value::F64(21.0),
                    Some(500),
                )
                .unwrap(),
            ],
            ..Payload::default()
        });
        let step = host.handle(&t("NBIRTH", None), &old_sample, 4_990).unwrap();
        assert_eq!(step.samples[0].metric, "temp");
        assert_eq!(step.samples[0].timestamp_ms, 5_000);
        let far = encode_payload(&Payload {
            timestamp: Some(5_000 + 365 * 86_400_000),
            seq: Some(1),
            ..Payload::default()
        });
        host.handle(&t("NDATA", None), &far, 5_010).unwrap();
        let death = payload(
            None,
            vec![metric(Some(BD_SEQ), None, DataType::Int64, Value::I64(4))],
        );
        let step = host.handle(&t("NDEATH", None), &death, 6_000).unwrap();
        assert_eq!(
            step.stale[0].timestamp_ms, 6_010,
            "10 ms ahead, from the birth"
        );
        // Born again, its payload stamped before the death: just after the death.
        let step = host.handle(&t("NBIRTH", None), &old_sample, 7_000).unwrap();
        assert_eq!(
            step.samples[0].timestamp_ms, 6_011,
            "after the death at 6,010"
        );
        // A birth with no death since its last is not moved.
        let step = host.handle(&t("NBIRTH", None), &old_sample, 7_100).unwrap();
        assert_eq!(
            step.samples[0].timestamp_ms, 500,
            "no stale mark since: as sampled"
        );
    }

    #[test]
    fn new_nbirth_resets_devices() {
        let mut host = born();
        host.handle(&t("DBIRTH", Some("a")), &dbirth(1), 6).unwrap();
        let step = host.handle(&t("NBIRTH", None), &nbirth(4), 7).unwrap();
        assert_eq!(step.events, vec![Event::Offline("g/e/a".into())]);
        assert_eq!(
            step.stale.len(),
            1,
            "the reborn node's device: {:?}",
            step.stale
        );
        assert_eq!(step.stale[0].device_id, "g/e/a");
        assert_eq!(step.stale[0].metrics, vec!["rpm".to_owned()]);
        let step = host
            .handle(&t("DDATA", Some("a")), &payload(Some(1), vec![]), 8)
            .unwrap();
        assert_rebirth(&step, RebirthReason::UnknownDevice { device: "a".into() });
    }

    #[test]
    fn id_scheme_is_configurable() {
        let mut host = SparkplugHost::new(SessionConfig {
            device_id: Arc::new(|g: &str, e: &str, d: Option<&str>| {
                format!(
                    "sp:{g}:{e}{}",
                    d.map(|d| format!(":{d}")).unwrap_or_default()
                )
            }),
            ..SessionConfig::default()
        });
        let step = host.handle(&t("NBIRTH", None), &nbirth(1), 5).unwrap();
        assert_eq!(step.events, vec![Event::Online("sp:g:e".into())]);
        let step = host.handle(&t("DBIRTH", Some("d")), &dbirth(1), 6).unwrap();
        assert_eq!(step.samples[0].device_id, "sp:g:e:d");
    }

    #[test]
    fn bad_metrics_are_rejected_individually() {
        let mut host = born();
        let mut bad = metric(Some("temp"), None, DataType::Float, Value::F64(1.0));
        bad.value = Some(MetricValue::StringValue("x".into()));
        let good = metric(Some("count"), None, DataType::UInt32, Value::U64(1));
        let step = host
            .handle(&t("NDATA", None), &payload(Some(1), vec![bad, good]), 6)
            .unwrap();
        assert_eq!(step.samples.len(), 1);
        assert_eq!(step.rejected.len(), 1);
        assert!(matches!(
            step.rejected[0].error,
            SparkplugError::ValueMismatch { .. }
        ));
        assert!(step.events.is_empty());
    }

    #[test]
    fn host_messages_topic_and_payload_errors() {
        let mut host = born();
        for topic in [
            "spBv1.0/g/NCMD/e",
            "spBv1.0/g/DCMD/e/d",
            "spBv1.0/STATE/scada",
            "spBv1.0/g/STATE/e",
        ] {
            let step = host.handle(topic, b"", 6).unwrap();
            assert!(step.samples.is_empty() && step.events.is_empty(), "{topic}");
            assert!(!step.notes.is_empty(), "{topic}");
        }
        assert!(matches!(
            host.handle("spBv1.0/g/BOGUS/e", b"", 6),
            Err(SparkplugError::InvalidTopic { .. })
        ));
        assert!(matches!(
            host.handle(&t("NDATA", None), &[0xFF, 0xFF], 6),
            Err(SparkplugError::Decode(_))
        ));
        // The node's state is untouched by the errors.
        assert!(
            host.handle(&t("NDATA", None), &ndata(1, 1), 7)
                .unwrap()
                .events
                .is_empty()
        );
    }
}
