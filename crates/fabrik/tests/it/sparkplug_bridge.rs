//! Fabrik as the Sparkplug host on an external broker (decision 0093): a real Mosquitto, a
//! `fabrik run` whose bridge has `sparkplug_host = true`, and a Paho client as an edge node on
//! that broker. Fabrik's `STATE` is retained there (online on connecting, its will after a
//! `kill -9`, offline again with the same timestamp when it stops); a write to the node's
//! metric goes out as an NCMD through the bridge and is confirmed by the node's report; a
//! sequence gap brings a rebirth request through the same way; a node behind a bridge that is
//! not its host is refused with nothing sent. When the broker goes away, the node's metrics
//! are marked stale and writes refused until, the broker back, the node's next report brings
//! a rebirth request and its birth. Mosquitto's log shows the offline `STATE` is
//! published before the DISCONNECT (the will carries the same payload, so the nodes alone
//! cannot tell).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fabrik_connect::sparkplug::proto::MetricValue;
use fabrik_connect::sparkplug::{DataType, Value, decode_payload};

use crate::bridge::start_broker_with;
use crate::mqtt::{eventually, http, query};
use crate::sparkplug::{from_hex, payload, to_hex};
use crate::support::{Process, free_port, metric};

const SPEED_ALIAS: u64 = 5;

/// Two edge nodes on one Paho client (`Site/edge-9` and `Other/edge-7`): Python moves bytes,
/// the payloads are built and read here. It prints what arrives on Fabrik's `STATE` and the
/// nodes' NCMD topics.
const NODE_SCRIPT: &str = r#"
import sys, paho.mqtt.client as mqtt
host, port = sys.argv[1:3]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="edge-9")
def on_connect(cl, ud, flags, rc, props):
    cl.subscribe([("spBv1.0/STATE/fabrik", 1), ("spBv1.0/Site/NCMD/edge-9", 0),
                  ("spBv1.0/Other/NCMD/edge-7", 0)])
def on_subscribe(cl, ud, mid, rcs, props):
    print("ready", flush=True)
def on_message(cl, ud, m):
    print("msg", m.topic, m.payload.hex(), flush=True)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect(host, int(port))
c.loop_start()
for line in sys.stdin:
    topic, payload = line.split()
    c.publish(topic, bytes.fromhex(payload), qos=1).wait_for_publish(10)
"#;

struct EdgeNodes {
    child: Child,
    stdin: ChildStdin,
    received: mpsc::Receiver<(String, Vec<u8>)>,
}

impl EdgeNodes {
    fn start(port: u16) -> Self {
        let mut child = Command::new(crate::support::python())
            .args(["-c", NODE_SCRIPT, "127.0.0.1", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python with paho-mqtt (FABRIK_PYTHON)");
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines.next().expect("the nodes' first line").expect("line");
        assert_eq!(first, "ready", "the nodes subscribed");
        let (tx, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let parts: Vec<&str> = line.split(' ').collect();
                let ["msg", topic, hex] = parts.as_slice() else {
                    continue;
                };
                if tx.send(((*topic).to_owned(), from_hex(hex))).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            stdin,
            received,
        }
    }

    fn publish(&mut self, topic: &str, bytes: &[u8]) {
        writeln!(self.stdin, "{topic} {}", to_hex(bytes)).expect("the nodes take a publish");
        self.stdin.flush().expect("flush");
    }

    /// The next message on `topic` (30 s at most); others before it are skipped.
    fn next_on(&self, topic: &str) -> Vec<u8> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.received.recv_timeout(left) {
                Ok((t, bytes)) if t == topic => return bytes,
                Ok(_) => {}
                Err(_) => panic!("nothing on `{topic}` within 30 s"),
            }
        }
    }

    /// The next `STATE` of host `fabrik`: (online, timestamp).
    fn next_state(&self) -> (bool, u64) {
        let bytes = self.next_on("spBv1.0/STATE/fabrik");
        let state: serde_json::Value = serde_json::from_slice(&bytes).expect("STATE is JSON");
        (
            state["online"].as_bool().expect("online"),
            state["timestamp"].as_u64().expect("timestamp"),
        )
    }

    /// `Site/edge-9` reports its speed: an NDATA with sequence number `seq`.
    fn report_speed(&mut self, seq: u64, speed: f64) {
        self.publish(
            "spBv1.0/Site/NDATA/edge-9",
            &payload(
                seq,
                &[(None, Some(SPEED_ALIAS), DataType::Double, Value::F64(speed))],
            ),
        );
    }

    /// Waits for the next command to `Site/edge-9`: a rebirth request.
    fn expect_rebirth_request(&self) {
        let rebirth = decode_payload(&self.next_on("spBv1.0/Site/NCMD/edge-9")).expect("an NCMD");
        assert_eq!(
            rebirth.metrics[0].name.as_deref(),
            Some("Node Control/Rebirth"),
            "{rebirth:?}"
        );
        assert_eq!(
            rebirth.metrics[0].value,
            Some(MetricValue::BooleanValue(true))
        );
    }

    /// A node's birth: `bdSeq`, the rebirth control and `Line/Speed` (alias 5, a `Double`).
    fn birth(&mut self, group: &str, node: &str, speed: f64) {
        self.publish(
            &format!("spBv1.0/{group}/NBIRTH/{node}"),
            &payload(
                0,
                &[
                    (Some("bdSeq"), None, DataType::Int64, Value::I64(0)),
                    (
                        Some("Node Control/Rebirth"),
                        None,
                        DataType::Boolean,
                        Value::Bool(false),
                    ),
                    (
                        Some("Line/Speed"),
                        Some(SPEED_ALIAS),
                        DataType::Double,
                        Value::F64(speed),
                    ),
                ],
            ),
        );
    }
}

impl Drop for EdgeNodes {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn set_speed(url: &str, device: &str, value: f64) -> (u16, serde_json::Value) {
    http(
        url,
        reqwest::Method::POST,
        &format!(
            "/api/v1/devices/{}/setpoints/Line%2FSpeed",
            device.replace('/', "%2F")
        ),
        Some(serde_json::json!({ "value": value })),
    )
}

/// Whether a write to `Site/edge-9` goes out again: nobody answers it here, and the node's
/// birth had already reported the value, so it is taken unverified.
fn set_speed_checked(url: &str) -> bool {
    let (code, answer) = set_speed(url, "Site/edge-9", 56.0);
    code == 200 && answer["confirmed"] == false
}

/// Whether Fabrik holds the node's birth: its setpoint shows the birth's data type.
fn born(url: &str, device: &str) -> bool {
    let (code, list) = http(url, reqwest::Method::GET, "/api/v1/setpoints", None);
    code == 200
        && list.as_array().is_some_and(|l| {
            l.iter()
                .any(|p| p["device"] == device && p["data_type"] == "Double")
        })
}

#[test]
fn fabrik_is_the_sparkplug_host_on_a_bridged_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let log = dir.path().join("mosquitto.log");
    // Started as root, Mosquitto would run as its own user, which cannot write in the test's
    // directory; `user root` keeps it as whoever started it.
    let logging = format!("user root\nlog_dest file {}\nlog_type all\n", log.display());
    let broker = start_broker_with(dir.path(), port, &logging);
    let mut nodes = EdgeNodes::start(port);
    let config = dir.path().join("fabrik.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[sparkplug]
command_timeout = "3s"

[[sparkplug.setpoints]]
device = "Site/edge-9"
metric = "Line/Speed"
min = 0.0
max = 100.0

[[sparkplug.setpoints]]
device = "Other/edge-7"
metric = "Line/Speed"
min = 0.0
max = 100.0

[[bridges]]
name = "site"
address = "127.0.0.1:{port}"
topics = ["spBv1.0/Site/#"]
qos = 0
sparkplug_host = true

[[bridges]]
name = "other"
address = "127.0.0.1:{port}"
topics = ["spBv1.0/Other/#"]
qos = 0
"#
        ),
    )
    .expect("config");
    let data = dir.path().join("data");
    let args = ["--config", config.to_str().expect("utf-8")];
    let p = Process::start_with_args(&data, &args, &[]);

    // Online, retained on the broker for the nodes that wait for their primary host.
    let (online, first_since) = nodes.next_state();
    assert!(
        online,
        "Fabrik's STATE says online once its bridge connected"
    );
    let connected = r#"fabrik_bridge_connected{bridge="site"}"#;
    let lost = r#"fabrik_bridge_connections_lost_total{bridge="site"}"#;
    eventually("the bridge counts as connected", || {
        metric(&p.url, connected) == Some(1.0)
    });

    // The plain bridge subscribes in its own time: births are sent until both are held.
    eventually("Fabrik holds both births", || {
        nodes.birth("Site", "edge-9", 40.0);
        nodes.birth("Other", "edge-7", 40.0);
        std::thread::sleep(Duration::from_millis(200));
        born(&p.url, "Site/edge-9") && born(&p.url, "Other/edge-7")
    });

    // A write goes out through the bridge as the node's NCMD, with the birth's alias and type,
    // and the node's report confirms it.
    let (tx, answer) = mpsc::channel();
    let url = p.url.clone();
    std::thread::spawn(move || {
        let _ = tx.send(set_speed(&url, "Site/edge-9", 55.0));
    });
    let command = decode_payload(&nodes.next_on("spBv1.0/Site/NCMD/edge-9")).expect("an NCMD");
    assert_eq!(command.metrics.len(), 1, "{command:?}");
    assert_eq!(command.metrics[0].alias, Some(SPEED_ALIAS), "{command:?}");
    assert_eq!(
        command.metrics[0].value,
        Some(MetricValue::DoubleValue(55.0)),
        "{command:?}"
    );
    nodes.report_speed(1, 55.0);
    let (code, written) = answer
        .recv_timeout(Duration::from_secs(30))
        .expect("the write answered");
    assert_eq!(code, 200, "{written}");
    assert_eq!(written["confirmed"], true, "{written}");

    // A node behind a bridge that is not its host: refused, and nothing reaches it.
    let (code, refused) = set_speed(&p.url, "Other/edge-7", 60.0);
    assert_eq!(code, 503, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("bridge `other`") && m.contains("sparkplug_host")),
        "{refused}"
    );

    // A sequence gap: the rebirth request goes back through the host bridge.
    nodes.report_speed(7, 56.0);
    nodes.expect_rebirth_request();

    // The broker goes away: what Fabrik knows of the node through it is stale, and writes
    // are refused.
    drop(broker);
    let stale_sql = "SELECT reason FROM _point_errors WHERE source = 'sparkplug' AND \
                     device = 'Site/edge-9' AND signal = 'Line/Speed'";
    eventually("the node's metric is marked stale", || {
        // No table until the first row.
        let (code, rows) = http(
            &p.url,
            reqwest::Method::POST,
            "/api/v1/query",
            Some(serde_json::json!({ "sql": stale_sql })),
        );
        code == 200
            && rows.as_array().is_some_and(|rows| {
                rows.iter().any(|r| {
                    r["reason"].as_str().is_some_and(|m| {
                        m.contains("lost its connection to the broker of `bridge:site`")
                    })
                })
            })
    });
    assert!(
        query(
            &p.url,
            "SELECT count(*) AS n FROM _point_errors WHERE device = 'Other/edge-7'"
        )[0]["n"]
            == 0,
        "a bridge that is not the host leaves its nodes as they were"
    );
    assert_eq!(metric(&p.url, connected), Some(0.0));
    assert_eq!(
        metric(&p.url, lost),
        Some(1.0),
        "one loss, however many failed attempts"
    );
    let (code, offline) = set_speed(&p.url, "Site/edge-9", 57.0);
    assert_eq!(code, 503, "{offline}");
    assert!(
        offline["message"]
            .as_str()
            .is_some_and(|m| m.contains("offline")),
        "{offline}"
    );

    // The broker restarts (without what it retained): the bridge's new connection says online
    // with a later timestamp.
    let _broker = start_broker_with(dir.path(), port, &logging);
    let (online, second_since) = nodes.next_state();
    assert!(online, "online again after the broker's restart");
    assert!(second_since > first_since, "{second_since} > {first_since}");
    // The node, which did not see it go, reports on: Fabrik asks it to rebirth, and after the
    // birth its metric can be set again.
    nodes.report_speed(8, 56.0);
    nodes.expect_rebirth_request();
    nodes.birth("Site", "edge-9", 56.0);
    eventually("the node takes writes again", || set_speed_checked(&p.url));

    // A late will of the first connection, arriving after the new one said online, is
    // answered by saying online again.
    let late_will = format!(r#"{{"online":false,"timestamp":{first_since}}}"#);
    let published = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-r"])
        .args(["-t", "spBv1.0/STATE/fabrik", "-m", &late_will])
        .status()
        .expect("mosquitto_pub");
    assert!(published.success());
    assert_eq!(nodes.next_state(), (false, first_since), "the late will");
    assert_eq!(
        nodes.next_state(),
        (true, second_since),
        "the current connection's STATE, said again"
    );

    // Killed: the broker publishes the will, offline with the connection's own timestamp.
    p.kill9();
    assert_eq!(nodes.next_state(), (false, second_since), "the will");

    // Started again: online with a later timestamp; stopped: offline with that one.
    let p = Process::start_with_args(&data, &args, &[]);
    let (online, third_since) = nodes.next_state();
    assert!(online);
    assert!(third_since > second_since, "{third_since} > {second_since}");
    let (status, _) = p.terminate();
    assert!(status.success(), "{status}");
    assert_eq!(
        nodes.next_state(),
        (false, third_since),
        "the offline STATE published before a deliberate disconnect"
    );
    // The broker may write its log line a moment after the node heard the message.
    eventually("Mosquitto logged the DISCONNECT", || {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("Received DISCONNECT from fabrik-bridge-site"))
    });
    let log = std::fs::read_to_string(&log).expect("mosquitto's log");
    let from_host: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("from fabrik-bridge-site"))
        .collect();
    let [.., last_publish, last] = from_host.as_slice() else {
        panic!("{log}");
    };
    assert!(
        last_publish.contains("Received PUBLISH")
            && last_publish.contains("'spBv1.0/STATE/fabrik'"),
        "{from_host:#?}"
    );
    assert!(last.contains("Received DISCONNECT"), "{from_host:#?}");
}
