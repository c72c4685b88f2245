//! The MQTT endpoint against Eclipse Paho's Python client (paho-mqtt 2.x), MQTT 3.1.1 and 5.0:
//! QoS 0/1/2 into the store, retained messages, last will, persistent sessions, QoS 2 exactly
//! once (also across a dropped handshake), TLS with the generated certificate, and mTLS where a
//! client certificate is the device identity. The scenarios live in
//! `crates/fabrik-connect/tests/peers/paho_clients.py`; each prints what it checked.

use std::process::Command;

use crate::mqtt::http;
use crate::support::{Process, TOKEN, python};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fabrik-connect/tests/peers/paho_clients.py"
);

fn run_script(args: &[&str], scenarios: bool) {
    let out = Command::new(python())
        .arg(SCRIPT)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} (FABRIK_PYTHON; .ci/run sets it): {e}",
                python()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "paho scenarios failed (is paho-mqtt 2 installed? .ci/run installs it):\n{stdout}\n{stderr}"
    );
    if scenarios {
        assert!(stdout.contains("ok "), "no check ran:\n{stdout}");
    }
}

fn register(url: &str, id: &str) -> String {
    let (code, body) = http(
        url,
        reqwest::Method::POST,
        "/api/v1/devices",
        Some(serde_json::json!({"id": id, "type": "pump"})),
    );
    assert_eq!(code, 201, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

#[test]
fn paho_clients_over_tcp_and_tls_in_both_protocol_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let certs_s = certs.to_str().expect("utf-8");
    run_script(&["gen-certs", certs_s, "--cn", "pump-a"], false);
    let data = dir.path().join("data");
    let p = Process::start_with_args(&data, &[], &[("FABRIK__MQTT__TLS_LISTEN", "127.0.0.1:0")]);
    let token = register(&p.url, "pump-1");
    let device = format!("pump-1:{token}");
    let ca = data.join("tls").join("mqtt-cert.pem");
    run_script(
        &[
            "--url",
            &p.url,
            "--token",
            TOKEN,
            "--mqtt",
            p.mqtt.as_deref().expect("mqtt"),
            "--mqtts",
            p.mqtts.as_deref().expect("mqtts"),
            "--ca",
            ca.to_str().expect("utf-8"),
            "--wrong-ca",
            certs.join("other-ca.pem").to_str().expect("utf-8"),
            "--device",
            &device,
            "all-plain",
        ],
        true,
    );
    let (status, _) = p.terminate();
    assert!(status.success());
}

#[test]
fn a_client_certificate_is_the_device_identity_and_nothing_else_gets_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let certs_s = certs.to_str().expect("utf-8");
    run_script(&["gen-certs", certs_s, "--cn", "pump-a"], false);
    let data = dir.path().join("data");
    let ca = certs.join("ca.pem");
    let p = Process::start_with_args(
        &data,
        &[],
        &[
            ("FABRIK__MQTT__TLS_LISTEN", "127.0.0.1:0"),
            ("FABRIK__MQTT__TLS_CLIENT_CA", ca.to_str().expect("utf-8")),
            ("FABRIK__MQTT__TLS_REQUIRE_CLIENT_CERT", "true"),
        ],
    );
    let a = format!("pump-a:{}", register(&p.url, "pump-a"));
    let b = format!("pump-b:{}", register(&p.url, "pump-b"));
    let server_ca = data.join("tls").join("mqtt-cert.pem");
    run_script(
        &[
            "--url",
            &p.url,
            "--token",
            TOKEN,
            "--mqtt",
            p.mqtt.as_deref().expect("mqtt"),
            "--mqtts",
            p.mqtts.as_deref().expect("mqtts"),
            "--ca",
            server_ca.to_str().expect("utf-8"),
            "--certs",
            certs_s,
            "--device",
            &a,
            "--device",
            &b,
            "mtls",
        ],
        true,
    );
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// A client that sends far more QoS 1 messages than the receive maximum and the message rate
/// allow, without waiting (as paho re-sends its offline queue at a reconnect), is slowed, not
/// disconnected: every message is acknowledged and stored, at no more than the rate. Before,
/// it was cut off, and each reconnect replayed a longer queue: locked out for good.
#[test]
fn a_burst_beyond_the_receive_maximum_and_the_rate_is_slowed_not_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = Process::start_with_args(
        &data,
        &[],
        &[
            ("FABRIK__MQTT__RECEIVE_MAXIMUM", "20"),
            ("FABRIK__MQTT__MAX_MESSAGE_RATE", "500"),
        ],
    );
    run_script(
        &[
            "--url",
            &p.url,
            "--token",
            TOKEN,
            "--mqtt",
            p.mqtt.as_deref().expect("mqtt"),
            "--rate",
            "500",
            "burst",
        ],
        true,
    );
    let log = p.drain_log().join("\n");
    assert!(!log.contains("protocol violation"), "{log}");
    let (status, _) = p.terminate();
    assert!(status.success());
}
