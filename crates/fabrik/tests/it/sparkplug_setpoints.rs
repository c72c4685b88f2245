//! Sparkplug B setpoints (decision 0091) through a real `fabrik run`, with a Paho client as the
//! edge node: an operator's write becomes a DCMD (a device's metric) or an NCMD (the node's)
//! sent to the node's own client at QoS 0, carrying the alias the birth gave, in the birth's
//! type; the node's report of the metric answers it (confirmed, or the value it kept instead);
//! a node that reports nothing leaves it unknown (504), or unverified when it had already
//! reported that value; values, offline nodes and devices and a node that is gone are refused
//! before anything is sent. Fabrik's host state is retained for the nodes.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fabrik_connect::sparkplug::proto::{MetricValue, Payload};
use fabrik_connect::sparkplug::{DataType, Value, decode_payload};

use crate::mqtt::{eventually, http, query};
use crate::sparkplug::{from_hex, payload, to_hex};
use crate::support::Process;

const SPEED_ALIAS: u64 = 10;
const VALVE_ALIAS: u64 = 12;
const AUTO_ALIAS: u64 = 1;
const RECIPE_ALIAS: u64 = 2;
/// What the simulated pump accepts as a speed: it keeps at most this.
const PUMP_TOP_SPEED: u32 = 1200;

/// The edge node as one Paho MQTT client (as a real node is: its births and its command
/// subscription share a session). Python moves bytes; the payloads are built and read here.
const NODE_SCRIPT: &str = r#"
import sys, paho.mqtt.client as mqtt
host, port, user, token = sys.argv[1:5]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="edge-1-node")
c.username_pw_set(user, token)
def on_connect(cl, ud, flags, rc, props):
    cl.subscribe([("spBv1.0/Plant1/NCMD/edge-1", 1), ("spBv1.0/Plant1/DCMD/edge-1/#", 1)])
def on_subscribe(cl, ud, mid, rcs, props):
    print("ready", flush=True)
def on_message(cl, ud, m):
    print("cmd", m.topic, m.qos, int(m.retain), m.payload.hex(), flush=True)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect(host, int(port))
c.loop_start()
for line in sys.stdin:
    topic, payload = line.split()
    c.publish(topic, bytes.fromhex(payload), qos=1).wait_for_publish(10)
"#;

/// A command as the node received it: topic, QoS, retain flag, payload.
type Received = (String, u8, bool, Payload);

/// The edge node: records each command and answers as a node does — the speed and the auto
/// flag are applied (the speed within the pump's own limit) and reported at once; the valve's
/// command is lost on the node, nothing reported.
struct EdgeNode {
    child: Child,
    stdin: Arc<Mutex<ChildStdin>>,
    commands: Arc<Mutex<Vec<Received>>>,
    seq: Arc<AtomicU64>,
}

impl EdgeNode {
    fn start(addr: &str, token: &str) -> Self {
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        let mut child = Command::new(crate::support::python())
            .args(["-c", NODE_SCRIPT, host, port, "edge-1", token])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python with paho-mqtt (FABRIK_PYTHON)");
        let stdin = Arc::new(Mutex::new(child.stdin.take().expect("stdin")));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines.next().expect("the node's first line").expect("line");
        assert_eq!(first, "ready", "the node subscribed to its command topics");
        let commands: Arc<Mutex<Vec<Received>>> = Arc::default();
        // Births are seq 0 (NBIRTH) and 1 (DBIRTH); reports follow.
        let seq = Arc::new(AtomicU64::new(1));
        let node = Self {
            child,
            stdin,
            commands: commands.clone(),
            seq: seq.clone(),
        };
        let answer = node.sender();
        std::thread::spawn(move || {
            for line in lines {
                let Ok(line) = line else { return };
                let parts: Vec<&str> = line.split(' ').collect();
                let ["cmd", topic, qos, retain, hex] = parts.as_slice() else {
                    continue;
                };
                let Ok(command) = decode_payload(&from_hex(hex)) else {
                    continue;
                };
                commands.lock().expect("lock").push((
                    (*topic).to_owned(),
                    qos.parse().unwrap_or(9),
                    *retain == "1",
                    command.clone(),
                ));
                let Some(metric) = command.metrics.first() else {
                    continue;
                };
                let (report_topic, alias, datatype, value) =
                    match (*topic, metric.alias, &metric.value) {
                        (
                            "spBv1.0/Plant1/DCMD/edge-1/pump-3",
                            Some(SPEED_ALIAS),
                            Some(MetricValue::IntValue(v)),
                        ) => (
                            "spBv1.0/Plant1/DDATA/edge-1/pump-3",
                            SPEED_ALIAS,
                            DataType::UInt16,
                            Value::U64(u64::from((*v).min(PUMP_TOP_SPEED))),
                        ),
                        (
                            "spBv1.0/Plant1/NCMD/edge-1",
                            Some(AUTO_ALIAS),
                            Some(MetricValue::BooleanValue(b)),
                        ) => (
                            "spBv1.0/Plant1/NDATA/edge-1",
                            AUTO_ALIAS,
                            DataType::Boolean,
                            Value::Bool(*b),
                        ),
                        (
                            "spBv1.0/Plant1/NCMD/edge-1",
                            Some(RECIPE_ALIAS),
                            Some(MetricValue::StringValue(recipe)),
                        ) => (
                            "spBv1.0/Plant1/NDATA/edge-1",
                            RECIPE_ALIAS,
                            DataType::String,
                            Value::Str(recipe.clone()),
                        ),
                        _ => continue,
                    };
                let n = seq.fetch_add(1, Ordering::SeqCst) + 1;
                answer(
                    report_topic,
                    &payload(n % 256, &[(None, Some(alias), datatype, value)]),
                );
            }
        });
        node
    }

    /// What publishes through the node's own client.
    fn sender(&self) -> impl Fn(&str, &[u8]) + Send + 'static {
        let stdin = self.stdin.clone();
        move |topic, bytes| {
            let mut stdin = stdin.lock().expect("lock");
            writeln!(stdin, "{topic} {}", to_hex(bytes)).expect("the node takes a publish");
            stdin.flush().expect("flush");
        }
    }

    fn publish(&self, topic: &str, bytes: &[u8]) {
        self.sender()(topic, bytes);
    }

    /// The node's births: its own `Mode/Auto` (alias 1) and `Recipe` (alias 2, a `String`),
    /// and pump-3's speed (alias 10, a `UInt16`, at 600) and valve (alias 12, a `Double`, at
    /// 20).
    fn births(&self) {
        self.publish(
            "spBv1.0/Plant1/NBIRTH/edge-1",
            &payload(
                0,
                &[
                    (Some("bdSeq"), None, DataType::Int64, Value::I64(0)),
                    (
                        Some("Mode/Auto"),
                        Some(AUTO_ALIAS),
                        DataType::Boolean,
                        Value::Bool(false),
                    ),
                    (
                        Some("Recipe"),
                        Some(RECIPE_ALIAS),
                        DataType::String,
                        Value::Str("A-100".into()),
                    ),
                ],
            ),
        );
        self.publish(
            "spBv1.0/Plant1/DBIRTH/edge-1/pump-3",
            &payload(
                1,
                &[
                    (
                        Some("Pump/Speed"),
                        Some(SPEED_ALIAS),
                        DataType::UInt16,
                        Value::U64(600),
                    ),
                    (
                        Some("Pump/Valve"),
                        Some(VALVE_ALIAS),
                        DataType::Double,
                        Value::F64(20.0),
                    ),
                ],
            ),
        );
    }

    fn next_seq(&self) -> u64 {
        (self.seq.fetch_add(1, Ordering::SeqCst) + 1) % 256
    }

    fn commands(&self) -> Vec<Received> {
        self.commands.lock().expect("lock").clone()
    }

    /// Waits until the node has received `n` commands and returns them. Commands arrive in
    /// order, so the one expected at `n - 1` also says nothing was sent before it.
    fn wait_for(&self, n: usize) -> Vec<Received> {
        eventually(&format!("the node received {n} commands"), || {
            self.commands().len() >= n
        });
        let commands = self.commands();
        assert_eq!(commands.len(), n, "{commands:#?}");
        commands
    }
}

impl Drop for EdgeNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn set(
    url: &str,
    device: &str,
    metric: &str,
    value: serde_json::Value,
) -> (u16, serde_json::Value) {
    let encode = |s: &str| s.replace('/', "%2F");
    http(
        url,
        reqwest::Method::POST,
        &format!(
            "/api/v1/devices/{}/setpoints/{}",
            encode(device),
            encode(metric)
        ),
        Some(serde_json::json!({ "value": value, "note": "shift 2" })),
    )
}

/// Registers the edge node `edge-1` (Sparkplug node `Plant1/edge-1`); its token.
fn register_edge_node(url: &str) -> String {
    let (code, created) = http(
        url,
        reqwest::Method::POST,
        "/api/v1/devices",
        Some(serde_json::json!({"id": "edge-1", "sparkplug_node": "Plant1/edge-1"})),
    );
    assert_eq!(code, 201, "{created}");
    created["token"].as_str().expect("token").to_owned()
}

/// `mosquitto_sub` as the edge node on Fabrik's host state, for `count` messages (30 s at
/// most).
fn host_state(addr: &str, token: &str, count: u32) -> Command {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let mut sub = Command::new("mosquitto_sub");
    sub.args(["-h", host, "-p", port, "-u", "edge-1", "-P", token])
        .args([
            "-t",
            "spBv1.0/STATE/#",
            "-W",
            "30",
            "-C",
            &count.to_string(),
        ]);
    sub
}

fn says(answer: &serde_json::Value, what: &str) -> bool {
    answer["message"]
        .as_str()
        .or_else(|| answer["read_back_error"].as_str())
        .is_some_and(|m| m.contains(what))
}

#[test]
fn operators_set_edge_node_metrics_with_commands_the_node_answers_by_reporting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fabrik.toml");
    std::fs::write(
        &config,
        r#"
[sparkplug]
command_timeout = "2s"

[[sparkplug.setpoints]]
device = "Plant1/edge-1/pump-3"
metric = "Pump/Speed"
min = 0.0
max = 1500.0
unit = "rpm"

[[sparkplug.setpoints]]
device = "Plant1/edge-1/pump-3"
metric = "Pump/Valve"
min = 0.0
max = 100.0

[[sparkplug.setpoints]]
device = "Plant1/edge-1/pump-3"
metric = "Pump/Flow Limit"
min = 0.0
max = 100.0

[[sparkplug.setpoints]]
device = "Plant1/edge-1"
metric = "Mode/Auto"

[[sparkplug.setpoints]]
device = "Plant1/edge-1"
metric = "Recipe"
"#,
    )
    .expect("config");
    let p = Process::start_with_args(
        &dir.path().join("data"),
        &["--config", config.to_str().expect("utf-8")],
        &[],
    );
    let addr = p.mqtt.clone().expect("mqtt address");
    let token = register_edge_node(&p.url);

    // Fabrik is the nodes' primary host: its state is retained where they look for it.
    let state = host_state(&addr, &token, 1)
        .arg("-v")
        .output()
        .expect("mosquitto_sub");
    let state = String::from_utf8_lossy(&state.stdout);
    assert!(
        state.starts_with("spBv1.0/STATE/fabrik {\"online\":true,\"timestamp\":"),
        "{state}"
    );

    // Before any birth: listed, of a type only the birth will tell, and not written.
    let (code, points) = http(&p.url, reqwest::Method::GET, "/api/v1/setpoints", None);
    assert_eq!(code, 200, "{points}");
    let speed = points
        .as_array()
        .and_then(|a| a.iter().find(|s| s["signal"] == "Pump/Speed"))
        .expect("the speed is listed")
        .clone();
    assert_eq!(speed["protocol"], "sparkplug", "{speed}");
    assert_eq!(speed["data_type"], "birth", "{speed}");
    let (code, refused) = set(&p.url, "Plant1/edge-1/pump-3", "Pump/Speed", 900.into());
    assert_eq!(code, 503, "{refused}");
    assert!(
        says(&refused, "edge node `Plant1/edge-1` is offline"),
        "{refused}"
    );

    let node = EdgeNode::start(&addr, &token);
    node.births();
    eventually("the birth gives the speed its type", || {
        let (_, points) = http(&p.url, reqwest::Method::GET, "/api/v1/setpoints", None);
        points.as_array().is_some_and(|a| {
            a.iter().any(|s| {
                s["signal"] == "Pump/Speed"
                    && s["data_type"] == "UInt16"
                    && s["address"] == "spBv1.0/Plant1/DCMD/edge-1/pump-3 (alias 10)"
            })
        })
    });

    // A DCMD by alias, in the birth's type, at QoS 0 and not retained; the node reports the
    // speed it took.
    let (code, written) = set(&p.url, "Plant1/edge-1/pump-3", "Pump/Speed", 900.into());
    assert_eq!(code, 200, "{written}");
    assert_eq!(
        (&written["read_back"], &written["confirmed"]),
        (&serde_json::json!(900), &serde_json::json!(true)),
        "{written}"
    );
    let commands = node.wait_for(1);
    let (topic, qos, retain, dcmd) = &commands[0];
    assert_eq!(topic, "spBv1.0/Plant1/DCMD/edge-1/pump-3");
    assert_eq!((*qos, *retain), (0, false));
    assert!(dcmd.timestamp.is_some() && dcmd.seq.is_none(), "{dcmd:?}");
    let metric = &dcmd.metrics[0];
    assert_eq!(
        (metric.name.as_deref(), metric.alias, metric.datatype),
        (None, Some(SPEED_ALIAS), None),
        "the alias alone, and no data type, as the specification asks: {metric:?}"
    );
    assert_eq!(metric.value, Some(MetricValue::IntValue(900)));

    // The pump keeps at most 1200: answered with what it holds, not confirmed.
    let (code, written) = set(&p.url, "Plant1/edge-1/pump-3", "Pump/Speed", 1400.into());
    assert_eq!(code, 200, "{written}");
    assert_eq!(
        (&written["read_back"], &written["confirmed"]),
        (&serde_json::json!(1200), &serde_json::json!(false)),
        "{written}"
    );

    // Values the point may not take are refused before anything is sent.
    for (value, why) in [
        (
            serde_json::json!(900.5),
            "the metric holds a UInt16: 900.5 is not a whole number",
        ),
        (
            serde_json::json!(2000),
            "2000 is outside the point's range 0..=1500",
        ),
        (serde_json::json!(true), "give a number"),
    ] {
        let (code, refused) = set(&p.url, "Plant1/edge-1/pump-3", "Pump/Speed", value);
        assert_eq!(code, 422, "{refused}");
        assert!(says(&refused, why), "{why}: {refused}");
    }

    // The node's own metric: an NCMD, answered by its NDATA. It is the third command the
    // node received: the refused values sent nothing.
    let (code, written) = set(&p.url, "Plant1/edge-1", "Mode/Auto", true.into());
    assert_eq!(code, 200, "{written}");
    assert_eq!(written["confirmed"], true, "{written}");
    let commands = node.wait_for(3);
    assert_eq!(commands[2].0, "spBv1.0/Plant1/NCMD/edge-1");
    assert_eq!(
        commands[2].3.metrics[0].value,
        Some(MetricValue::BooleanValue(true))
    );

    // A command the node never reports on: sent, and whether it was applied is unknown.
    let (code, unknown) = set(&p.url, "Plant1/edge-1/pump-3", "Pump/Valve", 55.into());
    assert_eq!(code, 504, "{unknown}");
    assert!(
        says(&unknown, "whether it applied it is unknown"),
        "{unknown}"
    );

    // A metric the birth does not declare, and one not listed as writable: nothing sent.
    let (code, missing) = set(&p.url, "Plant1/edge-1/pump-3", "Pump/Flow Limit", 5.into());
    assert_eq!(code, 503, "{missing}");
    assert!(
        says(&missing, "declares no metric `Pump/Flow Limit`"),
        "{missing}"
    );
    let (code, _) = set(&p.url, "Plant1/edge-1/pump-3", "Pump/Other", 5.into());
    assert_eq!(code, 403);

    // The valve's last report (its birth) is 20: set to 20, the node has nothing new to
    // report, so the write is made but unverified.
    let (code, unverified) = set(&p.url, "Plant1/edge-1/pump-3", "Pump/Valve", 20.into());
    assert_eq!(code, 200, "{unverified}");
    assert_eq!(unverified["confirmed"], false, "{unverified}");
    assert_eq!(
        unverified["read_back"],
        serde_json::Value::Null,
        "{unverified}"
    );
    assert!(
        says(&unverified, "it had reported 20 before it"),
        "{unverified}"
    );
    let commands = node.wait_for(5);
    assert_eq!(commands[3].0, "spBv1.0/Plant1/DCMD/edge-1/pump-3");
    assert_eq!(
        commands[4].3.metrics[0].value,
        Some(MetricValue::DoubleValue(20.0)),
        "the valve's second command is the fifth: the refusals sent nothing"
    );

    // Each write that reached the node is a row of `_device_writes`.
    let rows_sql = "SELECT signal, status, value, read_back, note FROM _device_writes \
                    WHERE device LIKE 'Plant1/%' ORDER BY time";
    eventually("the writes are stored", || {
        let (code, rows) = http(
            &p.url,
            reqwest::Method::POST,
            "/api/v1/query",
            Some(serde_json::json!({ "sql": rows_sql })),
        );
        code == 200 && rows.as_array().is_some_and(|r| r.len() == 5)
    });
    let rows = query(&p.url, rows_sql);
    let summary: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["signal"].as_str().unwrap_or_default().to_owned(),
                r["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("Pump/Speed", "confirmed"),
            ("Pump/Speed", "unconfirmed"),
            ("Mode/Auto", "confirmed"),
            ("Pump/Valve", "failed"),
            ("Pump/Valve", "unverified"),
        ]
        .map(|(s, t)| (s.to_owned(), t.to_owned())),
        "{rows:?}"
    );
    assert_eq!(rows[1]["read_back"], 1200.0, "{rows:?}");
    assert_eq!(rows[0]["note"], "shift 2", "{rows:?}");

    // The device's death: refused, nothing sent (the next command the node receives is the
    // node's own).
    node.publish(
        "spBv1.0/Plant1/DDEATH/edge-1/pump-3",
        &payload(node.next_seq(), &[]),
    );
    eventually("the device's death marks its metrics stale", || {
        let (code, rows) = http(
            &p.url,
            reqwest::Method::POST,
            "/api/v1/query",
            Some(
                serde_json::json!({ "sql": "SELECT count(*) AS n FROM _point_errors \
                WHERE device = 'Plant1/edge-1/pump-3'" }),
            ),
        );
        code == 200 && rows[0]["n"].as_i64().is_some_and(|n| n > 0)
    });
    let (code, refused) = set(&p.url, "Plant1/edge-1/pump-3", "Pump/Speed", 700.into());
    assert_eq!(code, 503, "{refused}");
    assert!(
        says(&refused, "device `Plant1/edge-1/pump-3` is offline"),
        "{refused}"
    );
    let (code, written) = set(&p.url, "Plant1/edge-1", "Mode/Auto", false.into());
    assert_eq!(
        (code, &written["confirmed"]),
        (200, &serde_json::json!(true))
    );
    assert_eq!(node.wait_for(6)[5].0, "spBv1.0/Plant1/NCMD/edge-1");

    // A text metric takes text (decision 0095): an NCMD with the string, confirmed by the
    // node's report; a number for it, or text for the Boolean, is refused with nothing sent.
    let (code, refused) = set(&p.url, "Plant1/edge-1", "Recipe", 7.into());
    assert_eq!(code, 422, "{refused}");
    assert!(
        says(&refused, "the metric is a String: give text"),
        "{refused}"
    );
    let (code, refused) = set(&p.url, "Plant1/edge-1", "Mode/Auto", "on".into());
    assert_eq!(code, 422, "{refused}");
    assert!(says(&refused, "give true or false"), "{refused}");
    let (code, written) = set(&p.url, "Plant1/edge-1", "Recipe", "B-200 \"night\"".into());
    assert_eq!(code, 200, "{written}");
    assert_eq!(
        (
            &written["value"],
            &written["read_back"],
            &written["confirmed"]
        ),
        (
            &serde_json::json!("B-200 \"night\""),
            &serde_json::json!("B-200 \"night\""),
            &serde_json::json!(true)
        ),
        "{written}"
    );
    let command = &node.wait_for(7)[6];
    assert_eq!(command.0, "spBv1.0/Plant1/NCMD/edge-1");
    assert_eq!(
        (command.3.metrics[0].alias, &command.3.metrics[0].value),
        (
            Some(RECIPE_ALIAS),
            &Some(MetricValue::StringValue("B-200 \"night\"".into()))
        )
    );
    let (_, points) = http(&p.url, reqwest::Method::GET, "/api/v1/setpoints", None);
    assert!(
        points.as_array().is_some_and(|a| a
            .iter()
            .any(|s| s["signal"] == "Recipe" && s["data_type"] == "String")),
        "{points}"
    );
    // Stored as text, beside the numbers' `value` column.
    let rows = query(
        &p.url,
        "SELECT status, value, text, read_back_text FROM _device_writes \
         WHERE signal = 'Recipe'",
    );
    assert_eq!(
        rows,
        [serde_json::json!({"status": "confirmed", "value": null,
            "text": "B-200 \"night\"", "read_back_text": "B-200 \"night\""})],
    );

    // The node's client is gone (its NDEATH not sent, as when a link just drops): nothing can
    // be sent to it, whoever else listens.
    drop(node);
    eventually(
        "a command to a node whose client is gone is refused",
        || {
            let (code, refused) = set(&p.url, "Plant1/edge-1", "Mode/Auto", true.into());
            code == 503 && says(&refused, "(MQTT client `edge-1-node`) is not connected")
        },
    );

    // At shutdown the nodes still connected hear the host go, with its birth's timestamp.
    let mut watcher = host_state(&addr, &token, 2)
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    let mut states = BufReader::new(watcher.stdout.take().expect("stdout")).lines();
    let online = states.next().expect("the retained state").expect("line");
    let (status, _) = p.terminate();
    assert!(status.success());
    let offline = states.next().expect("the offline state").expect("line");
    let _ = watcher.wait();
    let online: serde_json::Value = serde_json::from_str(&online).expect("JSON");
    let offline: serde_json::Value = serde_json::from_str(&offline).expect("JSON");
    assert_eq!(
        (&online["online"], &offline["online"]),
        (&serde_json::json!(true), &serde_json::json!(false))
    );
    assert_eq!(online["timestamp"], offline["timestamp"]);
}

/// The alert whose rule is `rule`, once it fires.
fn firing(url: &str, rule: &str) -> serde_json::Value {
    let mut found = serde_json::Value::Null;
    eventually(&format!("`{rule}` fires"), || {
        let (code, alerts) = http(
            url,
            reqwest::Method::GET,
            &format!("/api/v1/alerts?state=firing&rule={rule}"),
            None,
        );
        match alerts.as_array().and_then(|a| a.first()) {
            Some(alert) if code == 200 => {
                found = alert.clone();
                true
            }
            _ => false,
        }
    });
    found
}

fn apply(url: &str, id: &str) -> (u16, serde_json::Value) {
    http(
        url,
        reqwest::Method::POST,
        &format!("/api/v1/alerts/{}/apply", id.replace('/', "%2F")),
        Some(serde_json::json!({})),
    )
}

#[test]
fn an_alerts_proposed_setpoint_is_applied_by_an_operator_and_names_the_alert() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = crate::support::start_configured(
        dir.path(),
        r#"
[sparkplug]
command_timeout = "2s"

[[sparkplug.setpoints]]
device = "Plant1/edge-1/pump-3"
metric = "Pump/Speed"
min = 0.0
max = 1500.0

[[alerting.rules]]
name = "pump-too-fast"
table = "sparkplug"
value = '"Pump/Speed"'
filter = '"Pump/Speed" IS NOT NULL'
condition = "above"
threshold = 1000.0
interval = "1s"
[alerting.rules.action]
signal = "Pump/Speed"
value = 800
summary = "Slow the pump to 800 rpm"

[[alerting.rules]]
name = "pump-running"
table = "sparkplug"
value = '"Pump/Speed"'
filter = '"Pump/Speed" IS NOT NULL'
condition = "above"
threshold = 0.0
interval = "1s"
"#,
    );
    let addr = p.mqtt.clone().expect("mqtt address");
    let token = register_edge_node(&p.url);
    let node = EdgeNode::start(&addr, &token);
    node.births();
    // The pump runs too fast: the rule fires and proposes its set-point.
    node.publish(
        "spBv1.0/Plant1/DDATA/edge-1/pump-3",
        &payload(
            node.next_seq(),
            &[(None, Some(SPEED_ALIAS), DataType::UInt16, Value::U64(1100))],
        ),
    );
    let alert = firing(&p.url, "pump-too-fast");
    let id = alert["id"].as_str().expect("id").to_owned();
    assert_eq!(
        alert["action"],
        serde_json::json!({
            "device": "Plant1/edge-1/pump-3",
            "signal": "Pump/Speed",
            "value": 800.0,
            "summary": "Slow the pump to 800 rpm",
        }),
        "{alert}"
    );
    // A rule that proposes nothing has nothing to apply.
    let quiet = firing(&p.url, "pump-running");
    assert!(quiet.get("action").is_none(), "{quiet}");
    let (code, refused) = apply(&p.url, quiet["id"].as_str().expect("id"));
    assert_eq!(code, 409, "{refused}");
    assert!(
        says(&refused, "rule `pump-running` proposes no action"),
        "{refused}"
    );
    assert!(node.commands().is_empty());

    // An operator applies it (here through the CLI): the node takes it and reports it.
    let (ok, out) =
        crate::support::client_command(&p.url, &["alert", "apply", &id, "--note", "WO-17"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("Plant1/edge-1/pump-3/Pump/Speed = 800"),
        "{out}"
    );
    let commands = node.wait_for(1);
    assert_eq!(
        commands[0].3.metrics[0].value,
        Some(MetricValue::IntValue(800))
    );
    // The write names the alert it applied, in its row and in the audit log.
    let rows_sql = "SELECT signal, status, value, alert, note FROM _device_writes";
    eventually("the write is stored", || {
        let (code, rows) = http(
            &p.url,
            reqwest::Method::POST,
            "/api/v1/query",
            Some(serde_json::json!({ "sql": rows_sql })),
        );
        code == 200 && rows.as_array().is_some_and(|r| r.len() == 1)
    });
    let rows = query(&p.url, rows_sql);
    assert_eq!(rows[0]["alert"], id.as_str(), "{rows:?}");
    assert_eq!(
        (&rows[0]["status"], &rows[0]["note"]),
        (&serde_json::json!("confirmed"), &serde_json::json!("WO-17")),
        "{rows:?}"
    );
    // The alert says what was done about it.
    let (code, shown) = http(
        &p.url,
        reqwest::Method::GET,
        &format!("/api/v1/alerts/{}", id.replace('/', "%2F")),
        None,
    );
    assert_eq!(code, 200, "{shown}");
    let applied = &shown["applied"][0];
    assert_eq!(
        (
            &applied["signal"],
            &applied["status"],
            &applied["value"],
            &applied["read_back"],
            &applied["note"]
        ),
        (
            &serde_json::json!("Pump/Speed"),
            &serde_json::json!("confirmed"),
            &serde_json::json!(800.0),
            &serde_json::json!(800.0),
            &serde_json::json!("WO-17")
        ),
        "{shown}"
    );
    let (code, audit) = http(&p.url, reqwest::Method::GET, "/api/v1/audit?limit=50", None);
    assert_eq!(code, 200, "{audit}");
    assert!(
        audit.to_string().contains("POST /api/v1/alerts/{id}/apply")
            && audit.to_string().contains("(proposed by alert "),
        "{audit}"
    );

    // The speed is down: the alert resolves, and its proposal is no longer applied.
    eventually("the alert resolves", || {
        let (_, alerts) = http(
            &p.url,
            reqwest::Method::GET,
            "/api/v1/alerts?state=resolved&rule=pump-too-fast",
            None,
        );
        alerts.as_array().is_some_and(|a| !a.is_empty())
    });
    let (code, refused) = apply(&p.url, &id);
    assert_eq!(code, 409, "{refused}");
    assert!(
        says(
            &refused,
            "is resolved: its proposed action is applied only while it fires"
        ),
        "{refused}"
    );
    assert_eq!(node.commands().len(), 1);
    let (status, _) = p.terminate();
    assert!(status.success());
}
