//! The MQTT bridge of a real `fabrik run` reading from a real Mosquitto broker: messages on
//! the subscribed filters are mapped and stored with source `bridge:<name>`, others are not
//! subscribed, and after the broker restarts the bridge reconnects and resubscribes by itself.

use std::process::Command;
use std::time::Duration;

use crate::mqtt::{eventually, http, query};
use crate::support::{Peer, Process, free_port};

/// A Mosquitto broker on `port`, anonymous, no persistence; killed on drop.
fn start_broker(dir: &std::path::Path, port: u16) -> Peer {
    start_broker_with(dir, port, "")
}

/// [`start_broker`] with more lines of Mosquitto's configuration.
pub(crate) fn start_broker_with(dir: &std::path::Path, port: u16, more: &str) -> Peer {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{more}"),
    )
    .expect("conf");
    let mut command = Command::new(mosquitto_path());
    command.args(["-c", conf.to_str().expect("utf-8")]);
    Peer::listening(
        command,
        port,
        "mosquitto must be installed (apt install mosquitto; .ci/run does)",
    )
}

fn mosquitto_path() -> &'static str {
    if std::path::Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    }
}

fn publish(port: u16, topic: &str, payload: &str) {
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            payload,
        ])
        .output()
        .expect("mosquitto_pub");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn count(url: &str, sql: &str) -> i64 {
    let (code, rows) = http(
        url,
        reqwest::Method::POST,
        "/api/v1/query",
        Some(serde_json::json!({ "sql": sql })),
    );
    if code != 200 {
        return 0;
    }
    rows[0]["n"].as_i64().unwrap_or(0)
}

#[test]
fn bridged_messages_are_mapped_and_the_bridge_survives_a_broker_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let broker = start_broker(dir.path(), port);
    let config = dir.path().join("fabrik.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[openlineage]
file = "lineage.jsonl"

[[bridges]]
name = "plant"
address = "127.0.0.1:{port}"
topics = ["plant/+/telemetry"]
qos = 1

[[mappings]]
name = "plant-telemetry"
source = "bridge:plant"
topic = "plant/{{device}}/telemetry"
measurement = "line"
"#
        ),
    )
    .expect("config");
    let p = Process::start_with_args(
        &dir.path().join("data"),
        &["--config", config.to_str().expect("utf-8")],
        &[],
    );
    // The subscription is made asynchronously after start; publish until one arrives.
    eventually("a bridged message is stored", || {
        publish(port, "plant/press-1/telemetry", r#"{"pressure": 4.5}"#);
        count(&p.url, "SELECT count(*) AS n FROM line") > 0
    });
    publish(port, "plant/press-1/other", r#"{"pressure": 99}"#);
    let rows = query(
        &p.url,
        "SELECT device, pressure, _source FROM line ORDER BY time DESC LIMIT 1",
    );
    assert_eq!(rows[0]["device"], "press-1", "{rows:?}");
    assert_eq!(rows[0]["pressure"], 4.5, "{rows:?}");
    assert_eq!(rows[0]["_source"], "bridge:plant", "{rows:?}");
    // A malformed payload on a subscribed topic is a dead letter, not lost.
    publish(port, "plant/press-1/telemetry", "{not json");
    eventually("the malformed message is dead-lettered", || {
        count(
            &p.url,
            "SELECT count(*) AS n FROM _dead_letters WHERE source = 'bridge:plant'",
        ) > 0
    });

    // The broker goes away and comes back on the same port: the bridge resubscribes.
    drop(broker);
    std::thread::sleep(Duration::from_millis(500));
    let _broker = start_broker(dir.path(), port);
    eventually("messages flow again after the broker restart", || {
        publish(port, "plant/press-2/telemetry", r#"{"pressure": 5.5}"#);
        count(
            &p.url,
            "SELECT count(*) AS n FROM line WHERE device = 'press-2'",
        ) > 0
    });
    assert_eq!(
        count(&p.url, "SELECT count(*) AS n FROM line WHERE pressure = 99"),
        0,
        "an unsubscribed topic was stored"
    );
    let (status, _) = p.terminate();
    assert!(status.success());
    // Lineage (decision 0082): the bridge's job reads its mapping's topic filter on the plant
    // broker, into the mapped table and the dead letters.
    let end = crate::support::last_lineage_event(dir.path(), "ingest.bridge.plant");
    assert_eq!(end["eventType"], "COMPLETE", "{end}");
    assert_eq!(
        end["inputs"][0]["namespace"],
        format!("mqtt://127.0.0.1:{port}")
    );
    assert_eq!(end["inputs"][0]["name"], "plant/+/telemetry");
    assert_eq!(
        end["inputs"][0]["facets"]["version"]["datasetVersion"],
        "plant-telemetry@1"
    );
    let outputs = crate::support::names(&end["outputs"]);
    assert!(
        outputs.contains(&"line") && outputs.contains(&"_dead_letters"),
        "{end}"
    );
}

/// `mqtt_version = "5"`: the bridge connects to Mosquitto as an MQTT 5 client (its log says
/// so), subscribes, and stores what an MQTT 5 publisher sends (with a user property, which
/// the rows do not keep).
#[test]
fn a_bridge_speaks_mqtt_5() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let log = dir.path().join("mosquitto.log");
    let _broker = start_broker_with(
        dir.path(),
        port,
        // Started as root, Mosquitto writes its log as the `mosquitto` user, which cannot
        // enter the test's private directory: it stays root (no effect when not root).
        &format!("log_dest file {}\nlog_type all\nuser root\n", log.display()),
    );
    let config = dir.path().join("fabrik.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[bridges]]
name = "plant5"
address = "127.0.0.1:{port}"
topics = ["plant/+/telemetry"]
qos = 1
mqtt_version = "5"

[[mappings]]
name = "plant-telemetry"
source = "bridge:plant5"
topic = "plant/{{device}}/telemetry"
measurement = "line"
"#
        ),
    )
    .expect("config");
    let p = Process::start_with_args(
        &dir.path().join("data"),
        &["--config", config.to_str().expect("utf-8")],
        &[],
    );
    eventually("a message from an MQTT 5 publisher is stored", || {
        let out = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-t",
                "plant/press-5/telemetry",
                "-D",
                "publish",
                "user-property",
                "line",
                "5",
                "-m",
                r#"{"pressure": 5.5}"#,
            ])
            .output()
            .expect("mosquitto_pub");
        assert!(out.status.success(), "{out:?}");
        count(&p.url, "SELECT count(*) AS n FROM line") > 0
    });
    let rows = query(&p.url, "SELECT device, pressure FROM line LIMIT 1");
    assert_eq!(
        (&rows[0]["device"], &rows[0]["pressure"]),
        (&"press-5".into(), &5.5.into())
    );
    // Mosquitto names each client's protocol version as it connects: p5 is MQTT 5.
    let text = std::fs::read_to_string(&log).expect("mosquitto log");
    assert!(
        text.lines()
            .any(|line| line.contains("as fabrik-bridge-plant5 (p5")),
        "{text}"
    );
    let (status, _) = p.terminate();
    assert!(status.success());
}
