//! A simulated Sparkplug B edge node: a compressor that announces its metrics with NBIRTH
//! (bdSeq, names, aliases, types), then publishes NDATA by alias every interval with the
//! sequence number the specification requires, and answers a `Node Control/Rebirth` command
//! (NCMD) with a fresh NBIRTH, as a real edge node does. Its pressure set-point is writable:
//! an NCMD that sets it (by alias, or by name) is applied within the compressor's own limits
//! and reported at once in an NDATA, as report-by-exception asks.

use std::time::Duration;

use fabrik_connect::client::{ClientEvent, ClientOptions, MqttClient};
use fabrik_connect::sparkplug::proto::Payload;
use fabrik_connect::sparkplug::{DataType, Value, decode_payload, encode_payload, new_metric};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

/// How the edge node logs in and where it lives in the Sparkplug namespace.
#[derive(Debug, Clone)]
pub struct EdgeNode {
    /// Registered device id (MQTT user name).
    pub device_id: String,
    /// Its token (MQTT password).
    pub token: String,
    /// Sparkplug group id.
    pub group: String,
    /// Sparkplug edge node id.
    pub node: String,
}

/// The writable metric: the pressure the compressor regulates to, in bar.
pub const SETPOINT_METRIC: &str = "Compressor/Pressure Setpoint";
const SETPOINT_ALIAS: u64 = 4;
/// What the compressor itself accepts as a set-point; beyond it, it holds the nearest limit.
const SETPOINT_LIMITS: (f64, f64) = (5.0, 9.0);

const METRICS: [(&str, u64, DataType); 4] = [
    ("Compressor/Pressure", 1, DataType::Double),
    ("Compressor/Temperature", 2, DataType::Double),
    ("Compressor/Running", 3, DataType::Boolean),
    (SETPOINT_METRIC, SETPOINT_ALIAS, DataType::Double),
];

/// The `[[sparkplug.setpoints]]` entry that lets operators set the edge node `group/node`'s
/// pressure set-point (the demo parses this same text).
pub fn setpoint_config_toml(group: &str, node: &str) -> String {
    format!(
        r#"[[sparkplug.setpoints]]
device = "{group}/{node}"
metric = "{SETPOINT_METRIC}"
min = 6.0
max = 8.5
unit = "bar"
"#
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

struct Compressor {
    rng: SmallRng,
    t: f64,
    setpoint: f64,
}

impl Compressor {
    fn values(&mut self, step_s: f64) -> [Value; 4] {
        self.t += step_s;
        let pressure =
            self.setpoint + 0.4 * (self.t / 60.0).sin() + self.rng.random_range(-0.05..0.05);
        let temperature = 64.0 + 3.0 * (self.t / 300.0).sin() + self.rng.random_range(-0.2..0.2);
        [
            Value::F64(pressure),
            Value::F64(temperature),
            Value::Bool(true),
            Value::F64(self.setpoint),
        ]
    }
}

fn payload(seq: u64, metrics: Vec<fabrik_connect::sparkplug::proto::Metric>) -> Vec<u8> {
    encode_payload(&Payload {
        timestamp: Some(now_ms()),
        seq: Some(seq),
        metrics,
        ..Payload::default()
    })
}

fn birth(bd_seq: u64, values: &[Value; 4]) -> Vec<u8> {
    let ts = Some(now_ms());
    let mut metrics = Vec::with_capacity(4);
    if let Ok(m) = new_metric(
        Some("bdSeq"),
        None,
        DataType::Int64,
        &Value::I64(bd_seq as i64),
        ts,
    ) {
        metrics.push(m);
    }
    for ((name, alias, datatype), value) in METRICS.iter().zip(values) {
        if let Ok(m) = new_metric(Some(name), Some(*alias), *datatype, value, ts) {
            metrics.push(m);
        }
    }
    payload(0, metrics)
}

fn data(seq: u64, values: &[Value; 4]) -> Vec<u8> {
    let ts = Some(now_ms());
    let metrics = METRICS
        .iter()
        .zip(values)
        .filter_map(|((_, alias, datatype), value)| {
            new_metric(None, Some(*alias), *datatype, value, ts).ok()
        })
        .collect();
    payload(seq, metrics)
}

/// What an NCMD asks: a rebirth, and the set-point it sets, if any.
fn command(bytes: &[u8]) -> (bool, Option<f64>) {
    let Ok(payload) = decode_payload(bytes) else {
        return (false, None);
    };
    let rebirth = payload
        .metrics
        .iter()
        .any(|m| m.name.as_deref() == Some("Node Control/Rebirth"));
    let setpoint = payload
        .metrics
        .iter()
        .find(|m| m.alias == Some(SETPOINT_ALIAS) || m.name.as_deref() == Some(SETPOINT_METRIC))
        .and_then(|m| match m.value {
            Some(fabrik_connect::sparkplug::proto::MetricValue::DoubleValue(v)) => Some(v),
            _ => None,
        })
        .filter(|v| v.is_finite());
    (rebirth, setpoint)
}

/// Runs the edge node until `shutdown`.
pub async fn run_edge_node(
    edge: EdgeNode,
    mqtt_address: String,
    interval: Duration,
    seed: u64,
    shutdown: CancellationToken,
) {
    let mut options = ClientOptions::new(mqtt_address, format!("sim-{}", edge.device_id));
    options.username = Some(edge.device_id.clone());
    options.password = Some(edge.token.clone());
    options.max_backoff = Duration::from_secs(5);
    let (client, mut events) = match MqttClient::start(options, shutdown.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(node = %edge.node, error = %e, "Simulated edge node cannot start.");
            return;
        }
    };
    let prefix = format!("spBv1.0/{}", edge.group);
    let birth_topic = format!("{prefix}/NBIRTH/{}", edge.node);
    let data_topic = format!("{prefix}/NDATA/{}", edge.node);
    let _ = client
        .subscribe(vec![(format!("{prefix}/NCMD/{}", edge.node), 1)])
        .await;
    let mut compressor = Compressor {
        rng: SmallRng::seed_from_u64(seed),
        t: 0.0,
        setpoint: 7.5,
    };
    let mut bd_seq = 0u64;
    let mut seq = 0u64;
    let mut need_birth = true;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            event = events.recv() => match event {
                None => break,
                // Every new connection starts a new session: birth again with the next bdSeq.
                Some(ClientEvent::Connected) => need_birth = true,
                Some(ClientEvent::Disconnected(_)) => {}
                Some(ClientEvent::Message(m)) => {
                    let (rebirth, setpoint) = command(&m.payload);
                    if rebirth {
                        tracing::info!(node = %edge.node, "Rebirth requested; sending NBIRTH.");
                        need_birth = true;
                    }
                    if let Some(done) = m.done {
                        let _ = done.send(Ok(()));
                    }
                    if let Some(v) = setpoint {
                        compressor.setpoint = v.clamp(SETPOINT_LIMITS.0, SETPOINT_LIMITS.1);
                        tracing::info!(node = %edge.node, setpoint = compressor.setpoint, "Pressure set-point commanded.");
                        // Reported at once, not at the next tick.
                        tick.reset_immediately();
                    }
                }
            },
            _ = tick.tick() => {
                let values = compressor.values(interval.as_secs_f64());
                let (topic, bytes) = if need_birth {
                    need_birth = false;
                    seq = 0;
                    bd_seq = (bd_seq + 1) % 256;
                    (&birth_topic, birth(bd_seq, &values))
                } else {
                    seq = (seq + 1) % 256;
                    (&data_topic, data(seq, &values))
                };
                if let Err(e) = client.publish(topic, bytes, 1, false).await {
                    tracing::debug!(node = %edge.node, error = %e, "Sparkplug publish failed.");
                    need_birth = true;
                }
            }
        }
    }
}
