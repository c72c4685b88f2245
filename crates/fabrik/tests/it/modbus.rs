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

/// The setpoints of a real `fabrik run` against pymodbus (decision 0090): operators set the
/// points declared writable, the device's own value is read back and polled, a device that
/// keeps a value of its own is reported, and every write is in `_device_writes` and the audit
/// log with its value; viewers, undeclared points and values outside the range are refused
/// with nothing sent.
#[test]
fn operators_set_writable_points_and_every_write_is_recorded() {
    use crate::users::{add_user, call, sign_in};
    let (mut server, port) = modbus_server();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fabrik.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[modbus.devices]]
id = "drive-1"
measurement = "drive"
address = "127.0.0.1:{port}"
timeout_ms = 500

[[modbus.devices.maps]]
poll_interval_ms = 100

[[modbus.devices.maps.points]]
name = "speed_setpoint"
table = "holding"
address = 42
type = "u16"
scale = 0.1
unit = "rpm"
writable = true
min = 0.0
max = 1500.0

[[modbus.devices.maps.points]]
name = "torque_limit"
table = "holding"
address = 45
type = "u16"
writable = true
min = 0.0
max = 1000.0

[[modbus.devices.maps.points]]
name = "enable"
table = "coil"
address = 7
type = "bool"
writable = true

[[modbus.devices.maps.points]]
name = "speed"
table = "holding"
address = 0
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
    let url = p.url.clone();

    let (ok, out) = crate::support::client_command(&url, &["device", "setpoints"]);
    assert!(ok, "{out}");
    for line in [
        "drive-1              speed_setpoint       modbus   holding 42..43   u16    0..=1500 rpm",
        "drive-1              torque_limit         modbus   holding 45..46   u16    0..=1000",
        "drive-1              enable               modbus   coil 7..8        bool   true/false",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
    assert!(
        !out.contains("speed "),
        "a point not declared writable is not listed:\n{out}"
    );

    let password = add_user(&url, "ana", "operator");
    let (_, _, ana) = sign_in(&url, "ana", &password);
    let ana = ana.expect("operator session");
    let password = add_user(&url, "vic", "viewer");
    let (_, _, vic) = sign_in(&url, "vic", &password);
    let vic = vic.expect("viewer session");
    let set = |who: &str, device: &str, signal: &str, body: serde_json::Value| {
        call(
            &url,
            reqwest::Method::POST,
            &format!("/api/v1/devices/{device}/setpoints/{signal}"),
            Some(who),
            Some(body),
        )
    };

    // An operator sets a scaled register: the device holds it and the polls see it.
    let (status, written, _) = set(
        &ana,
        "drive-1",
        "speed_setpoint",
        serde_json::json!({"value": 1234.5, "note": "WO-4711"}),
    );
    assert_eq!(status, 200, "{written}");
    assert_eq!(written["read_back"], 1234.5, "{written}");
    assert_eq!(written["confirmed"], true, "{written}");
    eventually("the polled table shows the new setpoint", || {
        let rows = query(
            &url,
            "SELECT speed_setpoint FROM drive ORDER BY time DESC LIMIT 1",
        );
        rows.first()
            .and_then(|r| r["speed_setpoint"].as_f64())
            .is_some_and(|v| (v - 1234.5).abs() < 1e-9)
    });
    // A coil.
    let (status, written, _) = set(
        &ana,
        "drive-1",
        "enable",
        serde_json::json!({"value": true}),
    );
    assert_eq!(
        (status, &written["read_back"]),
        (200, &serde_json::json!(true)),
        "{written}"
    );
    // The device keeps at most 500 in this register: answered, but not confirmed.
    let (status, written, _) = set(
        &ana,
        "drive-1",
        "torque_limit",
        serde_json::json!({"value": 900}),
    );
    assert_eq!(status, 200, "{written}");
    assert_eq!(
        (&written["read_back"], &written["confirmed"]),
        (&serde_json::json!(500), &serde_json::json!(false)),
        "{written}"
    );

    // Refused, with nothing sent: a viewer, a point not declared writable, a value outside the
    // range or of the wrong kind, a device that is not configured.
    let refusals = [
        (
            &vic,
            "drive-1",
            "speed_setpoint",
            serde_json::json!({"value": 10}),
            403,
            "needs the operator role",
        ),
        (
            &ana,
            "drive-1",
            "speed",
            serde_json::json!({"value": 10}),
            403,
            "is not writable",
        ),
        (
            &ana,
            "drive-1",
            "speed_setpoint",
            serde_json::json!({"value": 1500.5}),
            422,
            "outside the point's range 0..=1500 rpm",
        ),
        (
            &ana,
            "drive-1",
            "speed_setpoint",
            serde_json::json!({"value": 12.34}),
            422,
            "nearest is 12.3 rpm",
        ),
        (
            &ana,
            "drive-1",
            "enable",
            serde_json::json!({"value": 1}),
            422,
            "give true or false",
        ),
        (
            &ana,
            "drive-9",
            "enable",
            serde_json::json!({"value": true}),
            404,
            "no Modbus device, OPC UA item or Sparkplug setpoint is configured for device `drive-9`",
        ),
        // Text is a value (decision 0095), of the wrong kind for a switch.
        (
            &ana,
            "drive-1",
            "enable",
            serde_json::json!({"value": "on"}),
            422,
            "give true or false",
        ),
        (
            &ana,
            "drive-1",
            "enable",
            serde_json::json!({"value": [true]}),
            400,
            "value",
        ),
    ];
    for (who, device, signal, body, want, says) in refusals {
        let (status, error, _) = set(who, device, signal, body.clone());
        assert_eq!(status, want, "{device}/{signal} {body}: {error}");
        assert!(
            error.to_string().contains(says),
            "{device}/{signal} {body}: {error}"
        );
    }

    // The CLI: a confirmed write succeeds, one the device did not take fails.
    let (ok, out) = crate::support::client_command(
        &url,
        &["device", "set", "drive-1", "speed_setpoint", "100"],
    );
    assert!(ok, "{out}");
    assert!(out.contains("drive-1/speed_setpoint = 100"), "{out}");
    let (ok, out) =
        crate::support::client_command(&url, &["device", "set", "drive-1", "torque_limit", "700"]);
    assert!(!ok, "{out}");
    assert!(out.contains("holds 500"), "{out}");

    // Every write that reached the device is a row; the refused ones are not.
    let rows = query(
        &url,
        "SELECT signal, actor, status, value, read_back, note FROM _device_writes ORDER BY time",
    );
    let seen: Vec<(String, String, String, f64, f64)> = rows
        .iter()
        .map(|r| {
            (
                r["signal"].as_str().unwrap_or_default().to_owned(),
                r["actor"].as_str().unwrap_or_default().to_owned(),
                r["status"].as_str().unwrap_or_default().to_owned(),
                r["value"].as_f64().unwrap_or(f64::NAN),
                r["read_back"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    let row = |signal: &str, actor: &str, status: &str, value: f64, read_back: f64| {
        (
            signal.to_owned(),
            actor.to_owned(),
            status.to_owned(),
            value,
            read_back,
        )
    };
    assert_eq!(
        seen,
        [
            row("speed_setpoint", "ana", "confirmed", 1234.5, 1234.5),
            row("enable", "ana", "confirmed", 1.0, 1.0),
            row("torque_limit", "ana", "unconfirmed", 900.0, 500.0),
            row("speed_setpoint", "admin-token", "confirmed", 100.0, 100.0),
            row("torque_limit", "admin-token", "unconfirmed", 700.0, 500.0),
        ],
        "{rows:#?}"
    );
    assert_eq!(rows[0]["note"], "WO-4711");

    // The audit log names the value and the outcome of each, refusals included.
    let (status, entries) = http(&url, reqwest::Method::GET, "/api/v1/audit?limit=100", None);
    assert_eq!(status, 200, "{entries}");
    let targets: Vec<(String, String, u64)> = entries
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| {
            e["action"]
                .as_str()
                .is_some_and(|a| a.contains("/setpoints/"))
        })
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or_default().to_owned(),
                e["target"].as_str().unwrap_or_default().to_owned(),
                e["status"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    for (actor, target, status) in [
        (
            "ana",
            "drive-1/speed_setpoint = 1234.5: read back 1234.5",
            200,
        ),
        (
            "ana",
            "drive-1/torque_limit = 900: read back 500, not what was written",
            200,
        ),
        (
            "ana",
            "drive-1/speed_setpoint = 1500.5: device `drive-1`: point `speed_setpoint`: 1500.5 rpm is outside",
            422,
        ),
        (
            "ana",
            "drive-1/speed = 10: device `drive-1`: point `speed` is not writable",
            403,
        ),
        (
            "vic",
            "/api/v1/devices/drive-1/setpoints/speed_setpoint",
            403,
        ),
    ] {
        assert!(
            targets
                .iter()
                .any(|(a, t, s)| a == actor && t.starts_with(target) && *s == status),
            "no audit entry by {actor} starting `{target}` with {status} in {targets:#?}"
        );
    }
    // The body that does not parse is refused before the handler: recorded all the same.
    assert!(
        targets.iter().any(|(a, t, s)| a == "ana"
            && t == "/api/v1/devices/drive-1/setpoints/enable"
            && *s == 400),
        "{targets:#?}"
    );
    assert_eq!(
        targets.iter().filter(|(a, _, _)| a == "ana").count(),
        10,
        "one entry per write asked for, no more: {targets:#?}"
    );

    // A person's writes are theirs (GDPR, decision 0040): exported, then erased in place.
    let (status, theirs) = http(&url, reqwest::Method::GET, "/api/v1/people/ana", None);
    assert_eq!(status, 200, "{theirs}");
    assert_eq!(
        theirs["device_writes"].as_array().map(Vec::len),
        Some(3),
        "{theirs}"
    );
    let (status, erased) = http(&url, reqwest::Method::DELETE, "/api/v1/people/ana", None);
    assert_eq!(
        (status, &erased["device_writes"]),
        (200, &serde_json::json!(3)),
        "{erased}"
    );
    let rows = query(
        &url,
        "SELECT actor, note, value FROM _device_writes WHERE signal = 'speed_setpoint' ORDER BY time",
    );
    assert_eq!(rows.len(), 2, "rewritten in place, not added: {rows:#?}");
    assert_eq!(
        (&rows[0]["actor"], &rows[0]["note"], &rows[0]["value"]),
        (
            &serde_json::json!("(erased)"),
            &serde_json::json!(""),
            &serde_json::json!(1234.5)
        ),
        "{rows:#?}"
    );
    assert_eq!(rows[1]["actor"], "admin-token", "{rows:#?}");

    let (status, _) = p.terminate();
    assert!(status.success());
    let _ = server.kill();
    let _ = server.wait();
}
