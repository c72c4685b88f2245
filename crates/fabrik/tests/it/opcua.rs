//! The opcua module of a real `fabrik run` against a Python asyncua server: subscribed values
//! are stored in the server's table with their quality, a node whose status is Bad lands
//! in `_point_errors` with the status, a writable analog item with no configured range is
//! listed and written within the `EURange` its node declares (decision 0094), and
//! `fabrik opcua browse` shows what the server's variables declare.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::mqtt::{eventually, http, query};
use crate::support::Process;

#[test]
fn subscribed_opcua_values_are_stored_and_bad_ones_explained() {
    let python = crate::support::python();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fabrik-connect/tests/peers/opcua_server.py"
    );
    let mut server = Command::new(&python)
        .args([script, "--port", "0", "--bad"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{python}` (FABRIK_PYTHON; .ci/run sets it): {e}"));
    let stdout = server.stdout.take().expect("stdout");
    let port: u16 = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("READY ")
                .map(|p| p.trim().parse().expect("port"))
        })
        .expect("the server prints READY <port> (is asyncua installed? .ci/run installs it)");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fabrik.toml");
    let pki = dir.path().join("pki");
    std::fs::write(
        &config,
        format!(
            r#"
[updates]
node = "edge-3"

[openlineage]
file = "lineage.jsonl"

[[opcua.servers]]
id = "line-1"
measurement = "line"
endpoint = "opc.tcp://127.0.0.1:{port}/fabrik/"
pki_dir = "{}"
trust_server = "trust_on_first_use"
device = "pump-1"
publishing_interval_ms = 100

[[opcua.servers.items]]
node_id = "ns=2;s=Pump1.Pressure"
signal = "pressure"
sampling_interval_ms = 100

[[opcua.servers.items]]
node_id = "ns=2;s=Pump1.Running"
signal = "running"

[[opcua.servers.items]]
node_id = "ns=2;s=Pump1.Broken"
signal = "broken"

[[opcua.servers.items]]
node_id = "ns=2;s=Pump1.Flow"
signal = "flow"
writable = true
"#,
            pki.display()
        ),
    )
    .expect("config");
    let p = Process::start_with_args(
        &dir.path().join("data"),
        &["--config", config.to_str().expect("utf-8")],
        &[],
    );
    eventually("pressure samples are stored", || {
        let (code, rows) = http(
            &p.url,
            reqwest::Method::POST,
            "/api/v1/query",
            Some(serde_json::json!({"sql": "SELECT count(pressure) AS n FROM line"})),
        );
        code == 200 && rows[0]["n"].as_i64().unwrap_or(0) >= 3
    });
    let rows = query(
        &p.url,
        "SELECT device, pressure, _quality, _source FROM line WHERE pressure IS NOT NULL LIMIT 1",
    );
    assert_eq!(rows[0]["device"], "pump-1", "{rows:?}");
    assert!(rows[0]["pressure"].is_f64(), "{rows:?}");
    assert_eq!(rows[0]["_quality"], "good", "{rows:?}");
    assert_eq!(rows[0]["_source"], "opcua:pump-1", "{rows:?}");
    eventually("the Bad node is explained in _point_errors", || {
        let (code, rows) = http(
            &p.url,
            reqwest::Method::POST,
            "/api/v1/query",
            Some(
                serde_json::json!({"sql": "SELECT reason FROM _point_errors WHERE signal = 'broken'"}),
            ),
        );
        code == 200
            && rows
                .as_array()
                .and_then(|r| r.first())
                .and_then(|r| r["reason"].as_str())
                .is_some_and(|r| r.contains("BadSensorFailure"))
    });
    // Commissioning: `fabrik opcua browse` shows what the server's variables declare.
    let browsed = Command::new(crate::support::fabrik_bin())
        .args([
            "opcua",
            "browse",
            "--endpoint",
            &format!("opc.tcp://127.0.0.1:{port}/fabrik/"),
            "--node",
            "ns=2;s=Pump1",
            "--pki-dir",
        ])
        .arg(dir.path().join("browse-pki"))
        .output()
        .expect("fabrik opcua browse");
    let text = String::from_utf8_lossy(&browsed.stdout);
    assert!(
        browsed.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&browsed.stderr)
    );
    let flow = text
        .lines()
        .find(|l| l.starts_with("ns=2;s=Pump1.Flow "))
        .unwrap_or_else(|| panic!("Flow browsed:\n{text}"));
    assert!(
        flow.contains(" Double ") && flow.ends_with("EURange 0..=80 l/min"),
        "{text}"
    );
    // The flow item declares no range: the node's EURange and unit are listed, read when the
    // session connected, and limit what may be written.
    eventually("the node's declared range is listed", || {
        let (code, points) = http(&p.url, reqwest::Method::GET, "/api/v1/setpoints", None);
        code == 200
            && points.as_array().is_some_and(|points| {
                points.iter().any(|point| {
                    point["signal"] == "flow"
                        && point["data_type"] == "Double"
                        && point["min"] == 0.0
                        && point["max"] == 80.0
                        && point["range_from"] == "device"
                        && point["unit"] == "l/min"
                })
            })
    });
    let (ok, out) = crate::support::client_command(&p.url, &["device", "setpoints"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("0..=80 l/min (declared by the device)"),
        "{out}"
    );
    let (ok, out) =
        crate::support::client_command(&p.url, &["device", "set", "pump-1", "flow", "90"]);
    assert!(!ok, "{out}");
    assert!(out.contains("outside the node's EURange 0..=80"), "{out}");
    let (ok, out) =
        crate::support::client_command(&p.url, &["device", "set", "pump-1", "flow", "62.5"]);
    assert!(ok, "{out}");
    assert!(out.contains("pump-1/flow = 62.5"), "{out}");
    let (status, _) = p.terminate();
    assert!(status.success());
    let _ = server.kill();
    let _ = server.wait();
    // Lineage (decision 0082): the device the server reports is the input of `ingest.opcua`,
    // its signals as columns; its table and the point errors are the outputs.
    let end = crate::support::last_lineage_event(dir.path(), "ingest.opcua");
    assert_eq!(end["eventType"], "COMPLETE", "{end}");
    let input = &end["inputs"][0];
    assert_eq!(input["namespace"], format!("opc.tcp://127.0.0.1:{port}"));
    assert_eq!(input["name"], "pump-1");
    let signals = crate::support::names(&input["facets"]["schema"]["fields"]);
    assert_eq!(signals, ["pressure", "running", "broken", "flow"]);
    let outputs = crate::support::names(&end["outputs"]);
    assert_eq!(outputs, ["_point_errors", "line"], "{end}");
}
