//! Sparkplug B through the MQTT endpoint of a real `fabrik run`, with Mosquitto's clients as
//! the edge node: a birth registers metrics and aliases, data by alias is stored under the
//! metric names, a sequence gap makes Fabrik publish the NCMD rebirth request the
//! specification asks for, which the node receives on its command topic, and the node's
//! death marks its metrics stale.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use fabrik_connect::sparkplug::proto::Payload;
use fabrik_connect::sparkplug::{DataType, Value, decode_payload, encode_payload, new_metric};

use crate::mqtt::{eventually, http, query};
use crate::support::Process;

pub(crate) fn payload(
    seq: u64,
    metrics: &[(Option<&str>, Option<u64>, DataType, Value)],
) -> Vec<u8> {
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms");
    encode_payload(&Payload {
        timestamp: Some(now_ms),
        seq: Some(seq),
        metrics: metrics
            .iter()
            .map(|(name, alias, dt, value)| {
                new_metric(*name, *alias, *dt, value, Some(now_ms)).expect("metric")
            })
            .collect(),
        ..Payload::default()
    })
}

/// Bytes as the lowercase hex the test's Python peers read (`bytes.fromhex`).
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of the hex the test's Python peers print (`bytes.hex()`).
pub(crate) fn from_hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Publishes `bytes` with `mosquitto_pub` (QoS 1), through a file of its own in `dir`.
pub(crate) fn publish_bytes(
    addr: &str,
    user: &str,
    token: &str,
    topic: &str,
    bytes: &[u8],
    dir: &std::path::Path,
) {
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = dir.join(format!("payload-{n}.bin"));
    std::fs::write(&file, bytes).expect("payload file");
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let out = Command::new("mosquitto_pub")
        .args([
            "-h", host, "-p", port, "-q", "1", "-u", user, "-P", token, "-t", topic, "-f",
        ])
        .arg(&file)
        .output()
        .expect("mosquitto_pub (apt install mosquitto-clients)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn births_data_by_alias_and_a_sequence_gap_that_asks_for_a_rebirth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Process::start_with_args(&dir.path().join("data"), &[], &[]);
    let addr = p.mqtt.clone().expect("mqtt address");
    let (code, created) = http(
        &p.url,
        reqwest::Method::POST,
        "/api/v1/devices",
        Some(serde_json::json!({"id": "edge-1", "sparkplug_node": "Plant1/edge-1"})),
    );
    assert_eq!(code, 201, "{created}");
    let token = created["token"].as_str().expect("token").to_owned();

    // The node listens on its command topic, as a Sparkplug edge node does.
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let mut commands = Command::new("mosquitto_sub")
        .args([
            "-h",
            host,
            "-p",
            port,
            "-u",
            "edge-1",
            "-P",
            &token,
            "-t",
            "spBv1.0/Plant1/NCMD/edge-1",
            "-C",
            "1",
            "-W",
            "30",
            "-F",
            "%x",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    std::thread::sleep(Duration::from_millis(500));

    let birth = payload(
        0,
        &[
            (Some("bdSeq"), None, DataType::Int64, Value::I64(0)),
            (
                Some("Motor/Speed"),
                Some(1),
                DataType::Float,
                Value::F64(1480.0),
            ),
            (
                Some("Motor/Running"),
                Some(2),
                DataType::Boolean,
                Value::Bool(true),
            ),
        ],
    );
    publish_bytes(
        &addr,
        "edge-1",
        &token,
        "spBv1.0/Plant1/NBIRTH/edge-1",
        &birth,
        dir.path(),
    );
    let data = payload(1, &[(None, Some(1), DataType::Float, Value::F64(1510.5))]);
    publish_bytes(
        &addr,
        "edge-1",
        &token,
        "spBv1.0/Plant1/NDATA/edge-1",
        &data,
        dir.path(),
    );
    eventually("data by alias is stored under the metric's name", || {
        let (code, rows) = http(
            &p.url,
            reqwest::Method::POST,
            "/api/v1/query",
            Some(
                serde_json::json!({"sql": "SELECT count(*) AS n FROM sparkplug WHERE \"Motor/Speed\" = 1510.5"}),
            ),
        );
        code == 200 && rows[0]["n"] == 1
    });
    let rows = query(
        &p.url,
        "SELECT device, \"group\", edge_node, \"Motor/Running\" FROM sparkplug WHERE \"Motor/Running\" IS NOT NULL",
    );
    assert_eq!(rows[0]["device"], "Plant1/edge-1", "{rows:?}");
    assert_eq!(rows[0]["group"], "Plant1");
    assert_eq!(rows[0]["edge_node"], "edge-1");
    assert_eq!(rows[0]["Motor/Running"], true);

    // seq 1 → 5: messages were lost; Fabrik asks the node for a rebirth.
    let gap = payload(5, &[(None, Some(1), DataType::Float, Value::F64(1490.0))]);
    publish_bytes(
        &addr,
        "edge-1",
        &token,
        "spBv1.0/Plant1/NDATA/edge-1",
        &gap,
        dir.path(),
    );
    let stdout = commands.stdout.take().expect("stdout");
    let line = BufReader::new(stdout)
        .lines()
        .next()
        .expect("an NCMD within 30 s")
        .expect("line");
    let _ = commands.wait();
    let ncmd = decode_payload(&from_hex(line.trim())).expect("a Sparkplug payload");
    let rebirth = ncmd
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some("Node Control/Rebirth"))
        .expect("the rebirth metric");
    assert_eq!(
        fabrik_connect::sparkplug::metric_value(rebirth, DataType::Boolean, "rebirth")
            .expect("value"),
        Value::Bool(true)
    );

    // A payload that is not Sparkplug protobuf is a dead letter with the reason, not lost.
    publish_bytes(
        &addr,
        "edge-1",
        &token,
        "spBv1.0/Plant1/NDATA/edge-1",
        b"\xff\xff\xff",
        dir.path(),
    );
    eventually("the broken payload is dead-lettered", || {
        let (code, rows) = http(
            &p.url,
            reqwest::Method::POST,
            "/api/v1/query",
            Some(
                serde_json::json!({"sql": "SELECT reason FROM _dead_letters WHERE mapping = 'sparkplug'"}),
            ),
        );
        code == 200
            && rows
                .as_array()
                .and_then(|r| r.first())
                .and_then(|r| r["reason"].as_str())
                .is_some_and(|r| r.contains("Sparkplug"))
    });

    // The node's death (its will, with the birth's bdSeq): its metrics' last values are stale
    // from then on, which `_point_errors` says per metric.
    let death = payload(0, &[(Some("bdSeq"), None, DataType::Int64, Value::I64(0))]);
    publish_bytes(
        &addr,
        "edge-1",
        &token,
        "spBv1.0/Plant1/NDEATH/edge-1",
        &death,
        dir.path(),
    );
    let stale_sql = "SELECT signal, reason FROM _point_errors WHERE source = 'sparkplug' AND \
                     table_name = 'sparkplug' AND device = 'Plant1/edge-1' ORDER BY signal";
    eventually("the metrics are marked stale", || {
        let (code, rows) = http(
            &p.url,
            reqwest::Method::POST,
            "/api/v1/query",
            Some(serde_json::json!({ "sql": stale_sql })),
        );
        code == 200 && rows.as_array().is_some_and(|r| r.len() == 2)
    });
    let stale = query(&p.url, stale_sql);
    assert_eq!(stale[0]["signal"], "Motor/Running", "{stale:?}");
    assert_eq!(stale[1]["signal"], "Motor/Speed", "{stale:?}");
    assert!(
        stale[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("NDEATH")),
        "{stale:?}"
    );
    let (status, _) = p.terminate();
    assert!(status.success());
}
