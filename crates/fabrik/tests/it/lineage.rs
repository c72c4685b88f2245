//! Lineage from raw message to decision (`/api/v1/lineage`, `fabrik alert lineage`): a pump's
//! history published over MQTT by `mosquitto_pub`, a fault in it flagged by a pipeline and
//! fired as an alert, and the alert traced back to the exact rows its window read and the
//! messages, byte for byte, those rows were decoded from.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::mqtt::{eventually, http, query, register};
use crate::support::{client_command, now_ns, post_status};

const SECOND: i64 = 1_000_000_000;

const CONFIG: &str = r#"
[[alerting.rules]]
name = "pump-anomaly"
table = "inferences"
value = "score / threshold"
key = "device"
filter = "pipeline = 'pumps'"
condition = "above"
threshold = 1.0
clear = 0.8
context = ["window_id", "pipeline", "top_signal"]
interval = "200ms"
start = "earliest"
"#;

/// Publishes `lines` (one JSON message each) as device `device` at QoS 1 with one
/// `mosquitto_pub -l`: it returns once every message is acknowledged, so stored.
fn publish_lines(mqtt: &str, device: &str, token: &str, lines: &[String]) {
    let (host, port) = crate::mqtt::host_port(mqtt);
    let topic = format!("devices/{device}/telemetry");
    let mut publisher = Command::new("mosquitto_pub")
        .args([
            "-h", &host, "-p", &port, "-q", "1", "-i", device, "-u", device, "-P", token, "-t",
            &topic, "-l",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub (apt install mosquitto-clients)");
    let mut stdin = publisher.stdin.take().expect("stdin");
    for line in lines {
        writeln!(stdin, "{line}").expect("write a line");
    }
    drop(stdin);
    let out = publisher.wait_with_output().expect("mosquitto_pub");
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn an_alert_is_traced_back_to_its_input_rows_and_their_raw_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = crate::support::start_configured(dir.path(), CONFIG);
    let mqtt = p.mqtt.clone().expect("the MQTT endpoint");
    let token = register(&p.url, "pump-a");

    // Five minutes of one reading a second, an hour ago; the vibration jumps after 250 s.
    let start_ms = (now_ns() - 3_600 * SECOND) / 1_000_000 / 10_000 * 10_000;
    let lines: Vec<String> = (0..300i64)
        .map(|t| {
            let wobble = ((t * 7919) % 13) as f64 / 13.0;
            let fault = if t >= 250 { 3.0 } else { 0.0 };
            format!(
                r#"{{"ts": {}, "vibration": {}, "current": {}}}"#,
                start_ms + t * 1000,
                2.0 + wobble * 0.2 + fault,
                10.0 + wobble
            )
        })
        .collect();
    publish_lines(&mqtt, "pump-a", &token, &lines);
    // One reading of a normal window written over HTTP: an input row with no raw message.
    let normal_window = (start_ms + 220_000) * 1_000_000;
    let written = format!(
        "pump,device=pump-a vibration=2.1,current=10.5 {}\n",
        normal_window + 5_500_000_000
    );
    assert_eq!(post_status(&p.url, "/api/v1/write", &written), 200);
    // Defined once every message is stored: a pipeline reading history while it still
    // arrives (`lateness = "0s"`) would score the window the messages were filling with
    // the part it found, which is what it read and what the lineage would show.
    let (status, body) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/pipelines/pumps",
        Some(serde_json::json!({
            "name": "pumps",
            "table": "pump",
            "signals": ["vibration", "current"],
            "window": "10s",
            "features": ["mean", "std", "max"],
            "training_windows": 20,
            "interval": "200ms",
            "lateness": "0s",
            "start": "earliest",
        })),
    );
    assert_eq!(status, 201, "{body}");
    let by_ts: BTreeMap<i64, &String> = (0..300i64)
        .map(|t| (start_ms + t * 1000, &lines[t as usize]))
        .collect();

    let mut alert_id = String::new();
    eventually("the anomaly's alert", || {
        let (_, alerts) = http(
            &p.url,
            reqwest::Method::GET,
            "/api/v1/alerts?rule=pump-anomaly",
            None,
        );
        match alerts.as_array().and_then(|a| a.first()) {
            Some(alert) => {
                alert_id = alert["id"].as_str().unwrap_or_default().to_owned();
                true
            }
            None => false,
        }
    });

    let (status, lineage) = http(
        &p.url,
        reqwest::Method::GET,
        // Alert and window ids need no escaping in a query string (`~`, `/`, `-`).
        &format!("/api/v1/lineage?alert={alert_id}"),
        None,
    );
    assert_eq!(status, 200, "{lineage}");
    assert_eq!(lineage["alert"], alert_id.as_str());
    let window_id = lineage["window_id"].as_str().expect("window id").to_owned();
    let inference = &lineage["inference"];
    assert_eq!(inference["window_id"], window_id.as_str());
    assert_eq!(inference["flag"], true, "{inference}");
    assert_eq!(inference["device"], "pump-a");
    let window_start = inference["window_start"].as_i64().expect("start");
    assert!(
        window_start >= (start_ms + 240_000) * 1_000_000,
        "a window of the fault: {inference}"
    );

    // The window's rows: exactly as many as it counted, all from MQTT.
    let inputs = &lineage["inputs"];
    let rows = inputs["rows"].as_array().expect("rows");
    assert_eq!(
        rows.len() as i64,
        inference["samples"].as_i64().expect("samples")
    );
    assert_eq!(rows.len(), 10, "{inputs}");
    assert_eq!(inputs["table"], "pump");
    assert_eq!(inputs["truncated"], false);
    assert_eq!(inputs["sources"], serde_json::json!({ "mqtt": 10 }));
    for row in rows {
        assert_eq!(row["device"], "pump-a", "{row}");
        assert_eq!(row["_mapping_version"], 1, "{row}");
        assert!(row["vibration"].as_f64().is_some(), "{row}");
    }

    // And the messages they came from, as they were published.
    let messages = &lineage["messages"];
    assert_eq!(messages["rows_without_message"], 0, "{messages}");
    let kept = messages["rows"].as_array().expect("messages");
    assert_eq!(kept.len(), 10, "{messages}");
    for (message, row) in kept.iter().zip(rows) {
        assert_eq!(message["_raw_id"], row["_raw_id"], "{message} {row}");
        assert_eq!(message["topic"], "devices/pump-a/telemetry");
        let payload = message["payload"].as_str().expect("payload");
        let sent: serde_json::Value = serde_json::from_str(payload).expect("JSON payload");
        let ts = sent["ts"].as_i64().expect("ts");
        assert_eq!(
            Some(&payload.to_owned()),
            by_ts.get(&ts).copied(),
            "byte for byte"
        );
        assert!(
            ts * 1_000_000 >= window_start && ts * 1_000_000 < window_start + 10 * SECOND,
            "a message of the window: {payload}"
        );
    }

    // A reading that arrives later for the same span was not part of the decision.
    let late = format!(
        "pump,device=pump-a vibration=99,current=1 {}\n",
        window_start + 1
    );
    assert_eq!(post_status(&p.url, "/api/v1/write", &late), 200);
    let (status, by_window) = http(
        &p.url,
        reqwest::Method::GET,
        &format!("/api/v1/lineage?window_id={window_id}"),
        None,
    );
    assert_eq!(status, 200, "{by_window}");
    assert_eq!(
        by_window["inputs"]["rows"].as_array().map(Vec::len),
        Some(10)
    );
    assert_eq!(by_window["inference"], lineage["inference"]);
    let stored = query(
        &p.url,
        &format!(
            "SELECT count(*) AS n FROM pump WHERE time >= to_timestamp_nanos({window_start}) \
             AND time < to_timestamp_nanos({})",
            window_start + 10 * SECOND
        ),
    );
    assert_eq!(stored[0]["n"], 11, "the late reading is stored");

    // A window with a reading written over HTTP: counted, and counted as without a message.
    let (status, mixed) = http(
        &p.url,
        reqwest::Method::GET,
        &format!("/api/v1/lineage?window_id=pumps/pump-a/{normal_window}"),
        None,
    );
    assert_eq!(status, 200, "{mixed}");
    assert_eq!(mixed["inference"]["samples"], 11, "{mixed}");
    assert_eq!(mixed["inputs"]["rows"].as_array().map(Vec::len), Some(11));
    assert_eq!(
        mixed["inputs"]["sources"],
        serde_json::json!({ "http": 1, "mqtt": 10 })
    );
    assert_eq!(mixed["messages"]["rows"].as_array().map(Vec::len), Some(10));
    assert_eq!(mixed["messages"]["rows_without_message"], 1);

    // Bad questions name what is wrong.
    for (path, code, says) in [
        ("/api/v1/lineage", 400, "exactly one"),
        ("/api/v1/lineage?window_id=a&alert=b", 400, "exactly one"),
        (
            "/api/v1/lineage?window_id=pumps/pump-z/1",
            404,
            "pumps/pump-z/1",
        ),
        ("/api/v1/lineage?alert=nope", 404, "nope"),
        ("/api/v1/lineage?window=x", 400, "unknown field `window`"),
        (
            "/api/v1/lineage?window_id=pumps/pump-a/x",
            404,
            "pumps/pump-a/x",
        ),
    ] {
        let (status, body) = http(&p.url, reqwest::Method::GET, path, None);
        assert_eq!(status, code, "{path}: {body}");
        assert!(body.to_string().contains(says), "{path}: {body}");
    }

    // The CLI says the same.
    let (ok, text) = client_command(&p.url, &["alert", "lineage", &alert_id]);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("window    {window_id}")), "{text}");
    assert!(text.contains("10 rows of table pump"), "{text}");
    assert!(
        text.contains("10 raw messages kept; 0 input rows have none"),
        "{text}"
    );
    assert!(text.contains("devices/pump-a/telemetry"), "{text}");
    let (ok, text) = client_command(&p.url, &["pipeline", "lineage", &window_id, "--json"]);
    assert!(ok, "{text}");
    let printed: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(printed["inputs"]["rows"].as_array().map(Vec::len), Some(10));
}
