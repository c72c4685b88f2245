//! Writes to edge nodes' metrics (decision 0091): which metrics the configuration lets
//! operators set ([`plan`]), the NCMD or DCMD that carries a value in the type the node's
//! birth declares ([`command_payload`]), and [`SparkplugCommands`], which publishes it through
//! the broker and waits for the node to report the value it then holds — Sparkplug commands
//! are not acknowledged, so the node's next report of the metric is the only answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fabrik_runtime::sparkplug::SparkplugConfig;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::payload::{DataType, Value, encode_payload, new_metric};
use super::proto::Payload;
use super::session::{BD_SEQ, Sample, SparkplugHost, Stale};
use super::topic::{MessageType, SparkplugTopic};
use super::{Result, SparkplugError};
use crate::setpoint::{NumberType, SetValue, Written, checked_number, checked_text};

/// A metric operators may set.
#[derive(Debug, Clone, PartialEq)]
pub struct WritablePoint {
    /// The Sparkplug id as stored: `group/edge_node[/device]`.
    pub device_id: String,
    /// Group id.
    pub group: String,
    /// Edge node id.
    pub edge_node: String,
    /// Device id; `None` for a node's own metric (written with an NCMD).
    pub device: Option<String>,
    /// The metric's name.
    pub metric: String,
    /// The range writes may set (numeric metrics).
    pub range: Option<(f64, f64)>,
    /// Engineering unit.
    pub unit: Option<String>,
}

impl WritablePoint {
    /// The topic its command goes to: the node's NCMD or the device's DCMD.
    pub fn command_topic(&self) -> String {
        let kind = if self.device.is_some() {
            MessageType::DCmd
        } else {
            MessageType::NCmd
        };
        SparkplugTopic::Node {
            group: self.group.clone(),
            kind,
            edge_node: self.edge_node.clone(),
            device: self.device.clone(),
        }
        .to_string()
    }
}

/// The `[sparkplug]` section, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandPlan {
    /// The topic Fabrik's host state is published on: `spBv1.0/STATE/<host_id>`.
    pub state_topic: String,
    /// The writable metrics.
    pub points: Vec<WritablePoint>,
    /// How long a write waits for the node's report.
    pub timeout: Duration,
}

/// Checks the `[sparkplug]` section; every problem as (path, message).
pub fn plan(config: &SparkplugConfig) -> std::result::Result<CommandPlan, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let timeout = match fabrik_runtime::units::parse_duration(&config.command_timeout) {
        Ok(d) if d.is_zero() => {
            problems.push((
                "sparkplug.command_timeout".to_owned(),
                "must be greater than zero".to_owned(),
            ));
            Duration::ZERO
        }
        Ok(d) => d,
        Err(e) => {
            problems.push(("sparkplug.command_timeout".to_owned(), e));
            Duration::ZERO
        }
    };
    let state = SparkplugTopic::HostState {
        host: config.host_id.clone(),
    };
    let state_topic = state.to_string();
    if let Err(e) = SparkplugTopic::parse(&state_topic).and_then(|parsed| {
        if parsed == state {
            Ok(())
        } else {
            Err(SparkplugError::InvalidTopic {
                topic: state_topic.clone(),
                reason: "a host id is one topic level".into(),
            })
        }
    }) {
        problems.push(("sparkplug.host_id".to_owned(), e.to_string()));
    }
    let mut points: Vec<WritablePoint> = Vec::new();
    for (i, entry) in config.setpoints.iter().enumerate() {
        let path = format!("sparkplug.setpoints[{i}]");
        match point(entry) {
            Ok(p) => {
                if points
                    .iter()
                    .any(|q| q.device_id == p.device_id && q.metric == p.metric)
                {
                    problems.push((
                        path,
                        format!(
                            "device `{}` metric `{}` is listed twice",
                            p.device_id, p.metric
                        ),
                    ));
                } else {
                    points.push(p);
                }
            }
            Err(e) => problems.push((path, e)),
        }
    }
    if problems.is_empty() {
        Ok(CommandPlan {
            state_topic,
            points,
            timeout,
        })
    } else {
        Err(problems)
    }
}

fn point(
    entry: &fabrik_runtime::sparkplug::SparkplugSetpointConfig,
) -> Result<WritablePoint, String> {
    let levels: Vec<&str> = entry.device.split('/').collect();
    let (group, edge_node, device) = match levels.as_slice() {
        [g, n] => (*g, *n, None),
        [g, n, d] => (*g, *n, Some(*d)),
        _ => {
            return Err(format!(
                "device `{}` is not group/edge_node or group/edge_node/device",
                entry.device
            ));
        }
    };
    let point = WritablePoint {
        device_id: entry.device.clone(),
        group: group.to_owned(),
        edge_node: edge_node.to_owned(),
        device: device.map(str::to_owned),
        metric: entry.metric.clone(),
        range: None,
        unit: entry.unit.clone(),
    };
    // The ids must make a topic a node would publish on: no empty level, no wildcard.
    if let Err(e) = SparkplugTopic::parse(&point.command_topic()) {
        return Err(format!("device `{}`: {e}", entry.device));
    }
    let metric = entry.metric.as_str();
    if metric.trim().is_empty() {
        return Err("metric must not be empty".into());
    }
    if metric == BD_SEQ
        || metric.starts_with("Node Control/")
        || metric.starts_with("Device Control/")
    {
        return Err(format!(
            "metric `{metric}` is part of the Sparkplug session, not a setpoint"
        ));
    }
    let range = match (entry.min, entry.max) {
        (None, None) => None,
        (Some(min), Some(max)) if min.is_finite() && max.is_finite() && min <= max => {
            Some((min, max))
        }
        (Some(min), Some(max)) => {
            return Err(format!(
                "min {min} and max {max} are not a range of finite numbers, lowest first"
            ));
        }
        _ => return Err("min and max are given together".into()),
    };
    Ok(WritablePoint { range, ..point })
}

/// The command that sets `metric` to `value` (already of `datatype`): the alias alone when the
/// birth gave one, else the name, as the specification asks of NCMD and DCMD; no data type
/// (the birth declared it) and no sequence number (the host has none), stamped `now_ms`.
pub fn command_payload(
    metric: &str,
    alias: Option<u64>,
    datatype: DataType,
    value: &Value,
    now_ms: u64,
) -> Result<Vec<u8>> {
    let name = alias.is_none().then_some(metric);
    let mut encoded = new_metric(name, alias, datatype, value, Some(now_ms))?;
    encoded.datatype = None;
    Ok(encode_payload(&Payload {
        timestamp: Some(now_ms),
        metrics: vec![encoded],
        ..Payload::default()
    }))
}

/// `value` as a metric of `datatype` holds it, within `range`.
pub fn to_metric_value(
    datatype: DataType,
    value: SetValue,
    range: Option<(f64, f64)>,
) -> std::result::Result<Value, String> {
    use DataType as T;
    let ty = match datatype {
        T::Boolean => {
            return match value {
                SetValue::Bool(b) => Ok(Value::Bool(b)),
                _ => Err("the metric is a Boolean: give true or false".into()),
            };
        }
        T::String | T::Text => {
            return match value {
                SetValue::Text(text) => Ok(Value::Str(checked_text(text)?)),
                _ => Err(format!("the metric is a {datatype:?}: give text")),
            };
        }
        T::Int8 => NumberType::Int8,
        T::Int16 => NumberType::Int16,
        T::Int32 => NumberType::Int32,
        T::Int64 => NumberType::Int64,
        T::UInt8 => NumberType::UInt8,
        T::UInt16 => NumberType::UInt16,
        T::UInt32 => NumberType::UInt32,
        T::UInt64 => NumberType::UInt64,
        T::Float => NumberType::Float,
        T::Double => NumberType::Double,
        other => {
            return Err(format!(
                "the metric is a {other:?}; only numbers, Booleans and text are written"
            ));
        }
    };
    let Some(range) = range else {
        return Err(format!(
            "the metric is a {datatype:?}, and its setpoint declares no `min` and `max`: \
             nothing is written to it until the configuration says what range operators may set"
        ));
    };
    let SetValue::Number(number) = value else {
        return Err(format!("the metric is a {datatype:?}: give a number"));
    };
    let kind = format!("{datatype:?}");
    let checked = checked_number(number, ty, range, "the metric", &kind)?;
    // Exact: `checked_number` kept integers whole and inside their type.
    Ok(match ty {
        NumberType::Int8 | NumberType::Int16 | NumberType::Int32 | NumberType::Int64 => {
            Value::I64(checked as i64)
        }
        NumberType::UInt8 | NumberType::UInt16 | NumberType::UInt32 | NumberType::UInt64 => {
            Value::U64(checked as u64)
        }
        NumberType::Float | NumberType::Double => Value::F64(checked),
    })
}

/// Whether a reported value is the one sent (numbers compared as numbers: a node may report
/// an integer metric through either integer field).
fn same(sent: &Value, reported: &Value) -> bool {
    let number = |v: &Value| match v {
        Value::I64(n) => Some(*n as f64),
        Value::U64(n) => Some(*n as f64),
        Value::F64(n) => Some(*n),
        _ => None,
    };
    match (number(sent), number(reported)) {
        (Some(a), Some(b)) => a == b,
        _ => sent == reported,
    }
}

/// Publishes a message of the host (a command) on one of the brokers edge nodes use, to be
/// dropped undelivered after the instant given; whether it was queued (`client id, topic,
/// payload, expiry`). On Fabrik's own endpoint a client id sends it to that client only, none
/// to every subscriber; a bridge's broker delivers it to its subscribers.
pub type Publish = Arc<dyn Fn(Option<&str>, &str, Bytes, Instant) -> bool + Send + Sync>;

/// An edge node: (group id, edge node id).
type NodeKey = (String, String);

/// How long a rebirth request may wait in a queue before it is no longer worth sending.
const REBIRTH_REQUEST_LIFETIME: Duration = Duration::from_secs(60);

/// Where an edge node's last NBIRTH came from: the source (`mqtt`, `bridge:<name>`), and on
/// Fabrik's endpoint the MQTT client that published it.
#[derive(Debug, Clone)]
struct Route {
    source: Arc<str>,
    client: Option<Arc<str>>,
}

/// A node's live report of a writable metric.
#[derive(Debug, Clone)]
struct Report {
    value: Value,
    /// When Fabrik's endpoint received the message that carried it (ns since the epoch).
    received_ns: i64,
}

/// One writable metric's reports and its write lock.
struct Watched {
    /// The node's last report (`None` before any, and after a death made it stale).
    reports: watch::Sender<Option<Report>>,
    /// One write at a time per metric, so each waits for the report of its own command.
    writing: tokio::sync::Mutex<()>,
}

/// Fabrik as the Sparkplug host that commands edge nodes: shares the ingest path's sessions
/// (births, aliases, data types, who is online) and sees every sample it decodes.
pub struct SparkplugCommands {
    host: Arc<Mutex<SparkplugHost>>,
    plan: CommandPlan,
    /// Device id → metric → its reports.
    watched: HashMap<String, HashMap<String, Watched>>,
    /// Where each node's last NBIRTH came from.
    node_routes: Mutex<HashMap<NodeKey, Route>>,
    /// The ways out, by source: Fabrik's endpoint and the bridges that are the nodes' host.
    publishers: Mutex<HashMap<String, Publish>>,
}

/// How a write's wait for the node's report ended.
enum Heard {
    /// It reported the value sent.
    Same(Value),
    /// Its last report before the deadline was another value.
    Other(Value),
    /// No report.
    Nothing,
}

/// What a command goes out with, from the node's current birth, and the way to it.
struct Target {
    datatype: DataType,
    alias: Option<u64>,
    publish: Publish,
    /// The node's MQTT client on Fabrik's endpoint (`None` through a bridge).
    client: Option<Arc<str>>,
    /// Why nothing was queued, when the publish queued nothing.
    not_queued: String,
}

impl SparkplugCommands {
    /// Commands for `plan`'s points, over the sessions in `host`.
    pub fn new(plan: CommandPlan, host: Arc<Mutex<SparkplugHost>>) -> Self {
        let mut watched: HashMap<String, HashMap<String, Watched>> = HashMap::new();
        for p in &plan.points {
            watched.entry(p.device_id.clone()).or_default().insert(
                p.metric.clone(),
                Watched {
                    reports: watch::Sender::new(None),
                    writing: tokio::sync::Mutex::new(()),
                },
            );
        }
        Self {
            host,
            plan,
            watched,
            node_routes: Mutex::new(HashMap::new()),
            publishers: Mutex::new(HashMap::new()),
        }
    }

    /// The sessions the ingest path keeps (and these commands read).
    pub fn host(&self) -> Arc<Mutex<SparkplugHost>> {
        self.host.clone()
    }

    /// Sends the host's messages to nodes that came through `source` (the MQTT endpoint,
    /// [`crate::mqtt::SOURCE`], or `bridge:<name>`) by `publish` from now on.
    pub fn connect(&self, source: &str, publish: Publish) {
        self.publishers.lock().insert(source.to_owned(), publish);
    }

    /// Asks an edge node that came through `source` to rebirth: publishes `payload` (an NCMD)
    /// on `topic` there. False when nothing was queued: no way out to that source (a bridge
    /// that is not the nodes' host), or it is not connected or its queue is full.
    pub fn request_rebirth(&self, source: &str, topic: &str, payload: Bytes) -> bool {
        let publish = self.publishers.lock().get(source).cloned();
        publish.is_some_and(|publish| {
            publish(
                None,
                topic,
                payload,
                Instant::now() + REBIRTH_REQUEST_LIFETIME,
            )
        })
    }

    /// The topic of Fabrik's host state.
    pub fn state_topic(&self) -> &str {
        &self.plan.state_topic
    }

    /// The writable metrics.
    pub fn points(&self) -> &[WritablePoint] {
        &self.plan.points
    }

    /// A writable metric's data type and alias from the node's current birth, if it has one.
    pub fn declared(&self, point: &WritablePoint) -> Option<(DataType, Option<u64>)> {
        let host = self.host.lock();
        host.node(&point.group, &point.edge_node)?
            .metric(point.device.as_deref(), &point.metric)
    }

    /// Whether `device` is a writable metric's or one a birth announced.
    pub fn knows(&self, device: &str) -> bool {
        if self.plan.points.iter().any(|p| p.device_id == device) {
            return true;
        }
        let levels: Vec<&str> = device.split('/').collect();
        let host = self.host.lock();
        match levels.as_slice() {
            [g, n] => host.node(g, n).is_some(),
            [g, n, d] => host.node(g, n).is_some_and(|node| node.knows_device(d)),
            _ => false,
        }
    }

    /// Notes where a message on `topic` came from: its `source`, and on Fabrik's endpoint the
    /// MQTT client that published it. An NBIRTH's is where the node's commands go. Called with
    /// the sessions' lock held, in the same step as the birth, so a command never pairs one
    /// birth's aliases with another's client.
    pub fn note_publisher(&self, topic: &str, source: &str, publisher: Option<&str>) {
        if !topic.contains("/NBIRTH/") {
            return;
        }
        if let Ok(SparkplugTopic::Node {
            group, edge_node, ..
        }) = SparkplugTopic::parse(topic)
        {
            self.node_routes.lock().insert(
                (group, edge_node),
                Route {
                    source: Arc::from(source),
                    client: publisher.map(Arc::from),
                },
            );
        }
    }

    /// The edge nodes whose last NBIRTH came through `source`.
    pub fn nodes_from(&self, source: &str) -> Vec<(String, String)> {
        let mut nodes: Vec<(String, String)> = self
            .node_routes
            .lock()
            .iter()
            .filter(|(_, route)| &*route.source == source)
            .map(|(node, _)| node.clone())
            .collect();
        nodes.sort_unstable();
        nodes
    }

    /// Takes what the ingest path decoded from one message received at `received_ns`: its
    /// samples (the reports writes wait for) and deaths (after which the last report no longer
    /// says what the node holds).
    pub fn observe(&self, received_ns: i64, samples: &[Sample], stale: &[Stale]) {
        if self.plan.points.is_empty() {
            return;
        }
        for sample in samples.iter().filter(|s| !s.is_historical) {
            if let Some(w) = self
                .watched
                .get(&sample.device_id)
                .and_then(|metrics| metrics.get(&sample.metric))
            {
                w.reports.send_replace(Some(Report {
                    value: sample.value.clone(),
                    received_ns,
                }));
            }
        }
        for dead in stale {
            if let Some(metrics) = self.watched.get(&dead.device_id) {
                for w in metrics.values() {
                    w.reports.send_replace(None);
                }
            }
        }
    }

    /// Sets `metric` of `device` to `value`: checks it against the point and the node's
    /// birth, publishes the command to the node (its own MQTT client on Fabrik's endpoint, or
    /// the broker of the bridge it came through), and waits for the node to report the metric.
    pub async fn write(
        &self,
        device: &str,
        metric: &str,
        value: SetValue,
    ) -> Result<Written<Value>> {
        let Some(point) = self
            .plan
            .points
            .iter()
            .find(|p| p.device_id == device && p.metric == metric)
        else {
            return Err(if self.knows(device) {
                SparkplugError::NotWritable {
                    device: device.to_owned(),
                    metric: metric.to_owned(),
                }
            } else {
                SparkplugError::UnknownDevice(device.to_owned())
            });
        };
        let watched = self
            .watched
            .get(device)
            .and_then(|m| m.get(metric))
            .ok_or_else(|| SparkplugError::UnknownDevice(device.to_owned()))?;
        // Checked before waiting for another write, so a refusal is not held behind it; and
        // again below, against the birth current when the command goes out.
        {
            let host = self.host.lock();
            let target = self.target(&host, point)?;
            self.checked(point, target.datatype, value.clone())?;
        }
        // A second write of the same metric waits for the first's answer, then gives up.
        let _writing = tokio::time::timeout(self.plan.timeout, watched.writing.lock())
            .await
            .map_err(|_| {
                SparkplugError::CommandBusy(format!(
                    "another write of device `{device}` metric `{metric}` is still waiting for \
                     its report; nothing was sent"
                ))
            })?;
        let topic = point.command_topic();
        let mut reports = watched.reports.subscribe();
        let before = reports.borrow_and_update().clone();
        let sent_ms = now_ms();
        let start = Instant::now();
        let deadline = start + self.plan.timeout;
        let (sent, published_ns) = {
            // Held from the birth's alias to the publish: a rebirth in between could give the
            // alias to another metric. (The broker never takes this lock.)
            let host = self.host.lock();
            let target = self.target(&host, point)?;
            let sent = self.checked(point, target.datatype, value)?;
            let payload = command_payload(metric, target.alias, target.datatype, &sent, sent_ms)?;
            // Dropped undelivered at half the wait: a command held in the node's backed-up
            // queue must not be carried out after its caller was answered.
            if !(target.publish)(
                target.client.as_deref(),
                &topic,
                Bytes::from(payload),
                start + self.plan.timeout / 2,
            ) {
                return Err(SparkplugError::NotSent(target.not_queued));
            }
            (sent, fabrik_core::Timestamp::now().nanos())
        };
        match wait_for_report(&mut reports, &sent, published_ns, deadline.into()).await {
            Heard::Same(v) => Ok(Written {
                read_back: Ok(v),
                confirmed: true,
            }),
            Heard::Other(v) => Ok(Written {
                read_back: Ok(v),
                confirmed: false,
            }),
            // Report by exception: a node that already held the value has nothing to report.
            // What it last reported is no read-back, so the write is unverified.
            Heard::Nothing if before.as_ref().is_some_and(|b| same(&sent, &b.value)) => {
                Ok(Written {
                    read_back: Err(format!(
                        "the node reported nothing within {} ms of the command; it had \
                         reported {} before it (a node reports a metric only when it changes)",
                        self.plan.timeout.as_millis(),
                        shown(&sent)
                    )),
                    confirmed: false,
                })
            }
            Heard::Nothing => Err(SparkplugError::NoReport {
                device: device.to_owned(),
                metric: metric.to_owned(),
                waited_ms: u64::try_from(self.plan.timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    /// `value` checked against the point's range and the birth's `datatype`.
    fn checked(&self, point: &WritablePoint, datatype: DataType, value: SetValue) -> Result<Value> {
        to_metric_value(datatype, value, point.range).map_err(|reason| {
            SparkplugError::InvalidSetpoint {
                device: point.device_id.clone(),
                metric: point.metric.clone(),
                reason,
            }
        })
    }

    /// Where and how the point's command goes: its node (and device) online, its birth
    /// declaring the metric, born through Fabrik's own endpoint or a bridge that is its host.
    fn target(&self, host: &SparkplugHost, point: &WritablePoint) -> Result<Target> {
        let node = host
            .node(&point.group, &point.edge_node)
            .filter(|n| n.is_online())
            .ok_or_else(|| {
                SparkplugError::Offline(format!(
                    "edge node `{}/{}` is offline (no birth since it connected, or dead since): \
                     nothing was sent",
                    point.group, point.edge_node
                ))
            })?;
        if let Some(d) = point.device.as_deref()
            && !node.device_online(d)
        {
            return Err(SparkplugError::Offline(format!(
                "device `{}` is offline (no DBIRTH, or a DDEATH since): nothing was sent",
                point.device_id
            )));
        }
        let (datatype, alias) = node
            .metric(point.device.as_deref(), &point.metric)
            .ok_or_else(|| SparkplugError::UndeclaredMetric {
                device: point.device_id.clone(),
                metric: point.metric.clone(),
            })?;
        let node = format!("{}/{}", point.group, point.edge_node);
        let route = self
            .node_routes
            .lock()
            .get(&(point.group.clone(), point.edge_node.clone()))
            .cloned()
            .ok_or_else(|| {
                SparkplugError::NotSent(format!(
                    "edge node `{node}`'s birth came from no known source: nothing was sent"
                ))
            })?;
        let publish = self.publishers.lock().get(&*route.source).cloned();
        let (publish, not_queued) = match (publish, route.source.strip_prefix("bridge:")) {
            (Some(publish), Some(bridge)) => (
                publish,
                format!(
                    "bridge `{bridge}`, which edge node `{node}` came through, is not connected \
                     to its broker or has a full queue: nothing was sent"
                ),
            ),
            (None, Some(bridge)) => {
                return Err(SparkplugError::NotSent(format!(
                    "edge node `{node}` reaches Fabrik through bridge `{bridge}`, which is not \
                     the Sparkplug host on its broker (`sparkplug_host = true` in its \
                     `[[bridges]]` entry makes it one): nothing was sent"
                )));
            }
            (Some(publish), None) => {
                let client = route.client.clone().ok_or_else(|| {
                    SparkplugError::NotSent(format!(
                        "edge node `{node}`'s birth came from no MQTT client: nothing was sent"
                    ))
                })?;
                let not_queued = format!(
                    "edge node `{node}` (MQTT client `{client}`) is not connected, does not \
                     subscribe to `{}`, or has a full queue: nothing was sent",
                    point.command_topic()
                );
                (publish, not_queued)
            }
            (None, None) => {
                return Err(SparkplugError::NotSent(format!(
                    "the MQTT endpoint edge node `{node}` came through does not run in this \
                     process (see --target): nothing was sent"
                )));
            }
        };
        Ok(Target {
            datatype,
            alias,
            publish,
            client: route.client,
            not_queued,
        })
    }
}

/// A value as a message shows it.
fn shown(value: &Value) -> String {
    match value {
        Value::I64(n) => n.to_string(),
        Value::U64(n) => n.to_string(),
        Value::F64(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        // Quoted, as the API shows text (decision 0095); a message names at most 100
        // characters of it.
        Value::Str(text) if text.chars().count() > 100 => {
            format!("{:?}…", text.chars().take(100).collect::<String>())
        }
        Value::Str(text) => format!("{text:?}"),
        other => format!("{other:?}"),
    }
}

/// Waits until the node reports `sent` in a message received after `published_ns`, or the
/// deadline; the last other value it so reported otherwise. Reports received before the
/// command went out (a message still in the ingest queue) are no answer to it.
async fn wait_for_report(
    reports: &mut watch::Receiver<Option<Report>>,
    sent: &Value,
    published_ns: i64,
    deadline: tokio::time::Instant,
) -> Heard {
    let mut last = None;
    loop {
        tokio::select! {
            changed = reports.changed() => {
                if changed.is_err() {
                    break;
                }
                match reports.borrow_and_update().clone() {
                    Some(r) if r.received_ns <= published_ns => {}
                    Some(r) if same(sent, &r.value) => return Heard::Same(r.value),
                    Some(r) => last = Some(r.value),
                    // A death since: what it reported before is no answer.
                    None => last = None,
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    last.map_or(Heard::Nothing, Heard::Other)
}

/// Fabrik's host state (Sparkplug 3.0 `STATE` payload), to publish retained at QoS 1; both
/// the online and the offline state carry the time it came online (`since_ms`).
pub fn state_payload(online: bool, since_ms: u64) -> Vec<u8> {
    serde_json::json!({ "online": online, "timestamp": since_ms })
        .to_string()
        .into_bytes()
}

/// Milliseconds since the Unix epoch, by the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparkplug::decode_payload;
    use crate::sparkplug::proto::MetricValue;

    fn config(text: &str) -> SparkplugConfig {
        #[derive(serde::Deserialize)]
        struct Root {
            sparkplug: SparkplugConfig,
        }
        toml::from_str::<Root>(text).expect("parses").sparkplug
    }

    #[test]
    fn the_example_plans() {
        let plan = plan(&config(fabrik_runtime::sparkplug::EXAMPLE)).expect("valid");
        assert_eq!(plan.timeout, Duration::from_secs(5));
        assert_eq!(plan.state_topic, "spBv1.0/STATE/fabrik");
        assert_eq!(plan.points.len(), 1);
        let p = &plan.points[0];
        assert_eq!(
            (p.group.as_str(), p.edge_node.as_str()),
            ("plant-1", "edge-01")
        );
        assert_eq!(p.device, None);
        assert_eq!(p.range, Some((6.0, 8.5)));
        assert_eq!(p.command_topic(), "spBv1.0/plant-1/NCMD/edge-01");
    }

    #[test]
    fn bad_entries_are_named() {
        let problems = plan(&config(
            r#"
            [sparkplug]
            host_id = "a/b"
            command_timeout = "0s"
            [[sparkplug.setpoints]]
            device = "g"
            metric = "m"
            [[sparkplug.setpoints]]
            device = "g/n/d"
            metric = "Node Control/Reboot"
            [[sparkplug.setpoints]]
            device = "g/n/d"
            metric = "Speed"
            min = 5.0
            [[sparkplug.setpoints]]
            device = "g/+/d"
            metric = "Speed"
            [[sparkplug.setpoints]]
            device = "g/n/d"
            metric = "Speed"
            min = 9.0
            max = 1.0
            [[sparkplug.setpoints]]
            device = "g/n/d"
            metric = "Flow"
            [[sparkplug.setpoints]]
            device = "g/n/d"
            metric = "Flow"
            "#,
        ))
        .expect_err("invalid");
        let text = format!("{problems:?}");
        for expected in [
            "sparkplug.command_timeout",
            "sparkplug.host_id",
            "[0]\", \"device `g` is not group/edge_node",
            "[1]\", \"metric `Node Control/Reboot` is part of the Sparkplug session",
            "[2]\", \"min and max are given together",
            "[3]\", \"device `g/+/d`",
            "[4]\", \"min 9 and max 1 are not a range",
            "[6]\", \"device `g/n/d` metric `Flow` is listed twice",
        ] {
            assert!(text.contains(expected), "{expected} not in {text}");
        }
        assert_eq!(problems.len(), 8, "{text}");
    }

    #[test]
    fn values_take_the_birth_type() {
        let range = Some((-1000.0, 70_000.0));
        assert_eq!(
            to_metric_value(DataType::UInt16, SetValue::Number(900.0), range),
            Ok(Value::U64(900))
        );
        assert_eq!(
            to_metric_value(DataType::Int32, SetValue::Number(-12.0), range),
            Ok(Value::I64(-12))
        );
        assert_eq!(
            to_metric_value(DataType::Float, SetValue::Number(7.25), range),
            Ok(Value::F64(7.25))
        );
        assert_eq!(
            to_metric_value(DataType::Boolean, SetValue::Bool(true), None),
            Ok(Value::Bool(true))
        );
        let refused = |dt, v, range| to_metric_value(dt, v, range).expect_err("refused");
        assert!(
            refused(DataType::UInt16, SetValue::Number(900.5), range)
                .contains("not a whole number")
        );
        assert!(
            refused(DataType::UInt16, SetValue::Number(66_000.0), range)
                .contains("does not fit a UInt16")
        );
        assert!(
            refused(DataType::Int8, SetValue::Number(70_001.0), range)
                .contains("outside the point's range")
        );
        assert!(
            refused(DataType::Float, SetValue::Number(1e40), Some((0.0, 1e300)))
                .contains("does not fit a Float")
        );
        assert!(
            refused(DataType::Double, SetValue::Number(1.0), None)
                .contains("declares no `min` and `max`")
        );
        assert!(refused(DataType::Double, SetValue::Bool(true), range).contains("give a number"));
        assert!(refused(DataType::Boolean, SetValue::Number(1.0), None).contains("true or false"));
        assert!(refused(DataType::String, SetValue::Number(1.0), range).contains("give text"));
        assert!(
            refused(DataType::Double, SetValue::Text("1".into()), range).contains("give a number")
        );
        assert!(
            refused(DataType::Bytes, SetValue::Number(1.0), range)
                .contains("only numbers, Booleans and text")
        );
        // Text metrics take text (no range applies), within the length kept.
        for datatype in [DataType::String, DataType::Text] {
            assert_eq!(
                to_metric_value(datatype, SetValue::Text("Recipe B-7".into()), None),
                Ok(Value::Str("Recipe B-7".into()))
            );
        }
        let long = "x".repeat(crate::setpoint::MAX_TEXT + 1);
        assert!(
            refused(DataType::String, SetValue::Text(long), None)
                .contains("the text has 1001 characters; at most 1000 are written")
        );
    }

    #[test]
    fn a_command_carries_the_alias_alone_or_else_the_name() {
        let by_alias = decode_payload(
            &command_payload("Speed", Some(10), DataType::UInt16, &Value::U64(900), 1_000)
                .expect("encodes"),
        )
        .expect("decodes");
        assert_eq!(by_alias.timestamp, Some(1_000));
        assert_eq!(by_alias.seq, None);
        let m = &by_alias.metrics[0];
        assert_eq!(
            (m.name.as_deref(), m.alias, m.datatype),
            (None, Some(10), None)
        );
        assert_eq!(m.value, Some(MetricValue::IntValue(900)));
        let by_name = decode_payload(
            &command_payload("Mode", None, DataType::Boolean, &Value::Bool(true), 1_000)
                .expect("encodes"),
        )
        .expect("decodes");
        let m = &by_name.metrics[0];
        assert_eq!((m.name.as_deref(), m.alias), (Some("Mode"), None));
        assert_eq!(m.value, Some(MetricValue::BooleanValue(true)));
    }

    /// Commands for `Site/edge-9`'s `Speed`, the node born (alias 5, a `Double`) through
    /// `source`.
    fn born_through(source: &str) -> SparkplugCommands {
        let plan = plan(&config(
            "[sparkplug]\ncommand_timeout = \"100ms\"\n[[sparkplug.setpoints]]\n\
             device = \"Site/edge-9\"\nmetric = \"Speed\"\nmin = 0.0\nmax = 100.0\n",
        ))
        .expect("valid");
        let commands = SparkplugCommands::new(
            plan,
            Arc::new(Mutex::new(SparkplugHost::new(Default::default()))),
        );
        let birth = encode_payload(&Payload {
            timestamp: Some(1),
            seq: Some(0),
            metrics: vec![
                new_metric(Some(BD_SEQ), None, DataType::Int64, &Value::I64(0), None)
                    .expect("metric"),
                new_metric(
                    Some("Speed"),
                    Some(5),
                    DataType::Double,
                    &Value::F64(40.0),
                    None,
                )
                .expect("metric"),
            ],
            ..Payload::default()
        });
        let topic = "spBv1.0/Site/NBIRTH/edge-9";
        let host = commands.host();
        let mut host = host.lock();
        host.handle(topic, &birth, 1).expect("a birth");
        commands.note_publisher(topic, source, None);
        drop(host);
        commands
    }

    #[test]
    fn where_each_node_came_from_is_kept_without_setpoints() {
        // A host bridge marks its nodes stale when it loses its broker, setpoints or not.
        let commands = SparkplugCommands::new(
            plan(&config("[sparkplug]\n")).expect("valid"),
            Arc::new(Mutex::new(SparkplugHost::new(Default::default()))),
        );
        commands.note_publisher("spBv1.0/Site/NBIRTH/edge-9", "bridge:plant", None);
        commands.note_publisher("spBv1.0/Site/NBIRTH/edge-1", "mqtt", Some("edge-1"));
        commands.note_publisher("spBv1.0/Site/NDATA/edge-2", "bridge:plant", None);
        assert_eq!(
            commands.nodes_from("bridge:plant"),
            vec![("Site".to_owned(), "edge-9".to_owned())]
        );
        // A node born again elsewhere is no longer that bridge's.
        commands.note_publisher("spBv1.0/Site/NBIRTH/edge-9", "mqtt", Some("edge-9"));
        assert!(commands.nodes_from("bridge:plant").is_empty());
    }

    #[tokio::test]
    async fn a_command_goes_back_the_way_the_node_came() {
        // Through a bridge that is not the nodes' host: refused, naming the setting.
        let commands = born_through("bridge:plant");
        let refused = commands
            .write("Site/edge-9", "Speed", SetValue::Number(55.0))
            .await
            .expect_err("no way out");
        assert!(
            matches!(&refused, SparkplugError::NotSent(m) if m.contains("bridge `plant`") && m.contains("sparkplug_host")),
            "{refused}"
        );

        // Through a host bridge: published there, to the broker rather than one client.
        // (client, topic) of each publish.
        type Sent = Vec<(Option<String>, String)>;
        let sent: Arc<Mutex<Sent>> = Arc::default();
        let seen = sent.clone();
        commands.connect(
            "bridge:plant",
            Arc::new(move |client, topic, _, _| {
                seen.lock()
                    .push((client.map(str::to_owned), topic.to_owned()));
                true
            }),
        );
        let unanswered = commands
            .write("Site/edge-9", "Speed", SetValue::Number(55.0))
            .await
            .expect_err("nobody reports in a unit test");
        assert!(
            matches!(unanswered, SparkplugError::NoReport { .. }),
            "{unanswered}"
        );
        assert_eq!(
            sent.lock().as_slice(),
            [(None, "spBv1.0/Site/NCMD/edge-9".to_owned())]
        );
        assert!(commands.request_rebirth("bridge:plant", "spBv1.0/Site/NCMD/edge-9", Bytes::new()));
        assert!(!commands.request_rebirth(
            "bridge:other",
            "spBv1.0/Site/NCMD/edge-9",
            Bytes::new()
        ));

        // A bridge whose client cannot queue it: nothing sent, and said so.
        commands.connect("bridge:plant", Arc::new(|_, _, _, _| false));
        let down = commands
            .write("Site/edge-9", "Speed", SetValue::Number(55.0))
            .await
            .expect_err("not queued");
        assert!(
            matches!(&down, SparkplugError::NotSent(m) if m.contains("not connected")),
            "{down}"
        );
    }
}
