//! Sparkplug B setpoints (decision 0091) through a real `fabrik run`, with Mosquitto's clients
//! as the edge node: an operator's write becomes a DCMD (a device's metric) or an NCMD (the
//! node's) carrying the alias the birth gave, in the birth's type; the node's report of the
//! metric answers it (confirmed, or the value it kept instead); a node that reports nothing
//! leaves it unknown (504); values, offline nodes and devices and a missing subscriber are
//! refused before anything is sent.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fabrik_connect::sparkplug::proto::{MetricValue, Payload};
use fabrik_connect::sparkplug::{DataType, Value, decode_payload};

use crate::mqtt::{eventually, http, query};
use crate::sparkplug::{payload, publish_bytes};
use crate::support::Process;

const SPEED_ALIAS: u64 = 10;
const VALVE_ALIAS: u64 = 12;
const AUTO_ALIAS: u64 = 1;
/// What the simulated pump accepts as a speed: it keeps at most this.
const PUMP_TOP_SPEED: u32 = 1200;

/// The edge node's command side: `mosquitto_sub` on its NCMD and DCMD topics, and a thread
/// that records each command and answers as a node does — the speed and the auto flag are
/// applied (the speed within the pump's own limit) and reported at once; the valve is not.
struct EdgeNode {
    sub: Child,
    commands: Arc<Mutex<Vec<(String, Payload)>>>,
}

impl EdgeNode {
    fn start(addr: &str, token: &str, dir: &std::path::Path, seq: Arc<AtomicU64>) -> Self {
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        let mut sub = Command::new("mosquitto_sub")
            .args([
                "-h",
                host,
                "-p",
                port,
                "-u",
                "edge-1",
                "-P",
                token,
                "-t",
                "spBv1.0/Plant1/NCMD/edge-1",
                "-t",
                "spBv1.0/Plant1/DCMD/edge-1/#",
                "-F",
                "%t %x",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub (apt install mosquitto-clients)");
        let stdout = sub.stdout.take().expect("stdout");
        let commands: Arc<Mutex<Vec<(String, Payload)>>> = Arc::default();
        let seen = commands.clone();
        let (addr, token, dir) = (addr.to_owned(), token.to_owned(), dir.to_owned());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let Some((topic, hex)) = line.trim().split_once(' ') else {
                    continue;
                };
                let bytes: Vec<u8> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                    .collect();
                let command = decode_payload(&bytes).expect("a Sparkplug payload");
                seen.lock()
                    .expect("lock")
                    .push((topic.to_owned(), command.clone()));
                let metric = &command.metrics[0];
                let (report_topic, report) = match (topic, metric.alias, &metric.value) {
                    (
                        "spBv1.0/Plant1/DCMD/edge-1/pump-3",
                        Some(SPEED_ALIAS),
                        Some(MetricValue::IntValue(v)),
                    ) => (
                        "spBv1.0/Plant1/DDATA/edge-1/pump-3",
                        (
                            SPEED_ALIAS,
                            DataType::UInt16,
                            Value::U64(u64::from((*v).min(PUMP_TOP_SPEED))),
                        ),
                    ),
                    (
                        "spBv1.0/Plant1/NCMD/edge-1",
                        Some(AUTO_ALIAS),
                        Some(MetricValue::BooleanValue(b)),
                    ) => (
                        "spBv1.0/Plant1/NDATA/edge-1",
                        (AUTO_ALIAS, DataType::Boolean, Value::Bool(*b)),
                    ),
                    // The valve's command is lost on the node: nothing is reported.
                    _ => continue,
                };
                let (alias, datatype, value) = report;
                let n = seq.fetch_add(1, Ordering::SeqCst) + 1;
                let data = payload(n % 256, &[(None, Some(alias), datatype, value)]);
                publish_bytes(&addr, "edge-1", &token, report_topic, &data, &dir);
            }
        });
        Self { sub, commands }
    }

    fn commands(&self) -> Vec<(String, Payload)> {
        self.commands.lock().expect("lock").clone()
    }
}

impl Drop for EdgeNode {
    fn drop(&mut self) {
        let _ = self.sub.kill();
        let _ = self.sub.wait();
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
"#,
    )
    .expect("config");
    let p = Process::start_with_args(
        &dir.path().join("data"),
        &["--config", config.to_str().expect("utf-8")],
        &[],
    );
    let addr = p.mqtt.clone().expect("mqtt address");
    let (code, created) = http(
        &p.url,
        reqwest::Method::POST,
        "/api/v1/devices",
        Some(serde_json::json!({"id": "edge-1", "sparkplug_node": "Plant1/edge-1"})),
    );
    assert_eq!(code, 201, "{created}");
    let token = created["token"].as_str().expect("token").to_owned();

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
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("edge node `Plant1/edge-1` is offline")),
        "{refused}"
    );

    let seq = Arc::new(AtomicU64::new(1));
    let node = EdgeNode::start(&addr, &token, dir.path(), seq.clone());
    std::thread::sleep(Duration::from_millis(700));
    let nbirth = payload(
        0,
        &[
            (Some("bdSeq"), None, DataType::Int64, Value::I64(0)),
            (
                Some("Mode/Auto"),
                Some(AUTO_ALIAS),
                DataType::Boolean,
                Value::Bool(false),
            ),
        ],
    );
    publish_bytes(
        &addr,
        "edge-1",
        &token,
        "spBv1.0/Plant1/NBIRTH/edge-1",
        &nbirth,
        dir.path(),
    );
    let dbirth = payload(
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
    );
    publish_bytes(
        &addr,
        "edge-1",
        &token,
        "spBv1.0/Plant1/DBIRTH/edge-1/pump-3",
        &dbirth,
        dir.path(),
    );
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

    // A DCMD by alias, in the birth's type; the node reports the speed it took.
    let (code, written) = set(&p.url, "Plant1/edge-1/pump-3", "Pump/Speed", 900.into());
    assert_eq!(code, 200, "{written}");
    assert_eq!(
        (&written["read_back"], &written["confirmed"]),
        (&serde_json::json!(900), &serde_json::json!(true)),
        "{written}"
    );
    let commands = node.commands();
    assert_eq!(commands.len(), 1, "{commands:?}");
    let (topic, dcmd) = &commands[0];
    assert_eq!(topic, "spBv1.0/Plant1/DCMD/edge-1/pump-3");
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
        assert!(
            refused["message"].as_str().is_some_and(|m| m.contains(why)),
            "{why}: {refused}"
        );
    }
    assert_eq!(node.commands().len(), 2, "refused values sent nothing");

    // The node's own metric: an NCMD, answered by its NDATA.
    let (code, written) = set(&p.url, "Plant1/edge-1", "Mode/Auto", true.into());
    assert_eq!(code, 200, "{written}");
    assert_eq!(written["confirmed"], true, "{written}");
    let commands = node.commands();
    assert_eq!(commands[2].0, "spBv1.0/Plant1/NCMD/edge-1");
    assert_eq!(
        commands[2].1.metrics[0].value,
        Some(MetricValue::BooleanValue(true))
    );

    // A command the node never reports on: sent, and whether it was applied is unknown.
    let (code, unknown) = set(&p.url, "Plant1/edge-1/pump-3", "Pump/Valve", 55.into());
    assert_eq!(code, 504, "{unknown}");
    assert!(
        unknown["message"]
            .as_str()
            .is_some_and(|m| m.contains("whether it applied it is unknown")),
        "{unknown}"
    );
    assert_eq!(node.commands().len(), 4, "the valve's command was sent");

    // A metric the birth does not declare, and one not listed as writable.
    let (code, missing) = set(&p.url, "Plant1/edge-1/pump-3", "Pump/Flow Limit", 5.into());
    assert_eq!(code, 404, "{missing}");
    assert!(
        missing["message"]
            .as_str()
            .is_some_and(|m| m.contains("declares no metric `Pump/Flow Limit`")),
        "{missing}"
    );
    let (code, _) = set(&p.url, "Plant1/edge-1/pump-3", "Pump/Other", 5.into());
    assert_eq!(code, 403);
    assert_eq!(node.commands().len(), 4);

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
        code == 200 && rows.as_array().is_some_and(|r| r.len() == 4)
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
        ]
        .map(|(s, t)| (s.to_owned(), t.to_owned())),
        "{rows:?}"
    );
    assert_eq!(rows[1]["read_back"], 1200.0, "{rows:?}");
    assert_eq!(rows[0]["note"], "shift 2", "{rows:?}");

    // The device's death: refused, nothing sent.
    let n = seq.fetch_add(1, Ordering::SeqCst) + 1;
    publish_bytes(
        &addr,
        "edge-1",
        &token,
        "spBv1.0/Plant1/DDEATH/edge-1/pump-3",
        &payload(n, &[]),
        dir.path(),
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
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("device `Plant1/edge-1/pump-3` is offline")),
        "{refused}"
    );
    assert_eq!(node.commands().len(), 4);

    // Nobody listens on the node's command topic any more: nothing can be sent. (Until the
    // endpoint has seen the subscriber go, a try is sent and unanswered: 504.)
    drop(node);
    eventually("a command with no subscriber is refused", || {
        let (code, refused) = set(&p.url, "Plant1/edge-1", "Mode/Auto", false.into());
        code == 503
            && refused["message"].as_str().is_some_and(|m| {
                m.contains("no connected client subscribes to `spBv1.0/Plant1/NCMD/edge-1`")
            })
    });
    let (status, _) = p.terminate();
    assert!(status.success());
}
