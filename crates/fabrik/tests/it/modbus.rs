//! The modbus module of a real `fabrik run` against a pymodbus TCP server: configured points
//! are polled into the device's table, and a point the server does not have is stored in
//! `_point_errors` with quality `bad` and the Modbus exception, while the good points go on.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::mqtt::{eventually, http, query};
use crate::support::Process;

/// Starts the fabrik-connect pymodbus peer; returns the child and its port.
fn modbus_server() -> (std::process::Child, u16) {
    let python = crate::support::python();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fabrik-connect/tests/peers/modbus_server.py"
    );
    let mut child = Command::new(&python)
        .args([script, "--port", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{python}` (FABRIK_PYTHON; .ci/run sets it): {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let port = loop {
        let line = lines
            .next()
            .expect("the server prints its port (is pymodbus installed? .ci/run installs it)")
            .expect("line");
        if let Some(port) = line.strip_prefix("PORT ") {
            break port.trim().parse().expect("port");
        }
    };
    (child, port)
}

#[test]
fn polled_points_are_stored_and_unreadable_ones_explained() {
    let (mut server, port) = modbus_server();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fabrik.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[openlineage]
file = "lineage.jsonl"

[[modbus.devices]]
id = "plc-1"
measurement = "plc"
address = "127.0.0.1:{port}"
timeout_ms = 500

[[modbus.devices.maps]]
poll_interval_ms = 100
max_gap = 0

[[modbus.devices.maps.points]]
name = "speed"
table = "holding"
address = 0
type = "u16"

[[modbus.devices.maps.points]]
name = "level"
table = "input"
address = 12
type = "f32"

[[modbus.devices.maps.points]]
name = "temperature"
table = "holding"
address = 38
type = "u16"
scale = 0.1
offset = -20.0

[[modbus.devices.maps.points]]
name = "running"
table = "coil"
address = 3
type = "bool"

[[modbus.devices.maps.points]]
name = "missing"
table = "holding"
address = 1000
type = "u16"
"#
        ),
    )
    .expect("config");
    let p = Process::start_with_args(
        &dir.path().join("data"),
        &["--config", config.to_str().expect("utf-8")],
        &[],
    );
    eventually("a few polls are stored", || {
        // The table appears with the first stored poll.
        let (code, rows) = http(
            &p.url,
            reqwest::Method::POST,
            "/api/v1/query",
            Some(serde_json::json!({"sql": "SELECT count(*) AS n FROM plc"})),
        );
        code == 200 && rows[0]["n"].as_i64().unwrap_or(0) >= 3
    });
    let rows = query(
        &p.url,
        "SELECT speed, level, temperature, running, _quality, _source FROM plc ORDER BY time DESC LIMIT 1",
    );
    let row = &rows[0];
    assert_eq!(row["speed"], 51234, "{row}");
    assert_eq!(row["level"], 3.5, "{row}");
    assert!(
        (row["temperature"].as_f64().expect("f64") - 80.0).abs() < 1e-9,
        "{row}"
    );
    assert_eq!(row["running"], true, "{row}");
    assert_eq!(row["_quality"], "good", "{row}");
    assert_eq!(row["_source"], "modbus:plc-1", "{row}");
    let errors = query(
        &p.url,
        "SELECT device, signal, reason, _quality FROM _point_errors LIMIT 1",
    );
    let error = &errors[0];
    assert_eq!(error["device"], "plc-1", "{error}");
    assert_eq!(error["signal"], "missing", "{error}");
    assert_eq!(error["_quality"], "bad", "{error}");
    assert!(
        error["reason"]
            .as_str()
            .is_some_and(|r| r.contains("exception 0x02")),
        "{error}"
    );
    let (status, _) = p.terminate();
    assert!(status.success());
    let _ = server.kill();
    let _ = server.wait();
    // Lineage (decision 0082): the polled device is the input of `ingest.modbus`, its points
    // as columns; its table and the point errors are the outputs.
    let end = crate::support::last_lineage_event(dir.path(), "ingest.modbus");
    assert_eq!(end["eventType"], "COMPLETE", "{end}");
    let input = &end["inputs"][0];
    assert_eq!(input["namespace"], format!("modbus://127.0.0.1:{port}"));
    assert_eq!(input["name"], "1/plc-1", "the default unit id, 1");
    let points = crate::support::names(&input["facets"]["schema"]["fields"]);
    assert_eq!(
        points,
        ["speed", "level", "temperature", "running", "missing"]
    );
    let outputs = crate::support::names(&end["outputs"]);
    assert_eq!(outputs, ["_point_errors", "plc"], "{end}");
}
