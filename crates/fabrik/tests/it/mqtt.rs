//! The MQTT device endpoint of a real `fabrik run`, driven by Mosquitto's own clients
//! (`mosquitto_pub`, `mosquitto_sub`): registered devices, what reaches the store, what the ACLs
//! let through, and the connection history in the registry.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::{Process, TOKEN, blocking_query_count};

/// Runs a Mosquitto client to completion.
pub(crate) fn mosquitto(tool: &str, args: &[&str]) -> Output {
    Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} must be installed (apt install mosquitto-clients): {e}"))
}

pub(crate) fn host_port(addr: &str) -> (String, String) {
    let (h, p) = addr.rsplit_once(':').expect("host:port");
    (h.to_owned(), p.to_owned())
}

/// Publishes one message as a device (or the admin) and returns the client's output.
pub(crate) fn publish(
    addr: &str,
    version: &str,
    qos: &str,
    user: &str,
    password: &str,
    topic: &str,
    payload: &str,
) -> Output {
    let (h, p) = host_port(addr);
    mosquitto(
        "mosquitto_pub",
        &[
            "-h", &h, "-p", &p, "-V", version, "-q", qos, "-u", user, "-P", password, "-t", topic,
            "-m", payload,
        ],
    )
}

pub(crate) fn http(
    url: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    crate::support::send_blocking_json(|client| {
        let req = client
            .request(method, format!("{url}{path}"))
            .bearer_auth(TOKEN);
        match body {
            Some(b) => req.json(&b),
            None => req,
        }
    })
}

pub(crate) fn query(url: &str, sql: &str) -> Vec<serde_json::Value> {
    let (status, rows) = http(
        url,
        reqwest::Method::POST,
        "/api/v1/query",
        Some(serde_json::json!({ "sql": sql })),
    );
    assert_eq!(status, 200, "{sql}: {rows}");
    rows.as_array().cloned().unwrap_or_default()
}

/// Registers a pump; returns its token.
pub(crate) fn register(url: &str, id: &str) -> String {
    let (status, body) = http(
        url,
        reqwest::Method::POST,
        "/api/v1/devices",
        Some(serde_json::json!({"id": id, "type": "pump", "site": "north"})),
    );
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

/// Polls `check` until it holds (the ingest path is asynchronous to the HTTP API).
pub(crate) fn eventually(what: &str, check: impl FnMut() -> bool) {
    eventually_for(what, Duration::from_secs(20), check);
}

/// [`eventually`] with a longer guard, for work that takes long in a debug build on a loaded
/// machine (the deadline only keeps a broken feature from hanging the suite).
pub(crate) fn eventually_for(what: &str, guard: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + guard;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for: {what}");
}

#[test]
fn device_messages_become_rows_with_lineage_and_bad_ones_dead_letters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Process::start(dir.path(), &[]);
    let mqtt = p.mqtt.clone().expect("mqtt address in the banner");
    let token = register(&p.url, "pump-1");
    // MQTT 3.1.1 at QoS 1 and MQTT 5 at QoS 2: acknowledged only once stored, so the rows are
    // there when the client returns.
    let out = publish(
        &mqtt,
        "mqttv311",
        "1",
        "pump-1",
        &token,
        "devices/pump-1/telemetry",
        r#"{"ts": 1732500000000, "pressure": 2.5, "running": true}"#,
    );
    assert!(out.status.success(), "{out:?}");
    let out = publish(
        &mqtt,
        "mqttv5",
        "2",
        "pump-1",
        &token,
        "devices/pump-1/telemetry/env",
        r#"{"ts": "2024-11-25T02:00:01Z", "humidity": 40}"#,
    );
    assert!(out.status.success(), "{out:?}");
    let out = publish(
        &mqtt,
        "mqttv311",
        "1",
        "pump-1",
        &token,
        "devices/pump-1/telemetry",
        "{not json",
    );
    assert!(out.status.success(), "dead letters are accepted: {out:?}");

    let rows = query(
        &p.url,
        "SELECT device, pressure, running, _source, _mapping_version, _raw_id, time FROM pump",
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["device"], "pump-1");
    assert_eq!(rows[0]["pressure"], 2.5);
    assert_eq!(rows[0]["running"], true);
    assert_eq!(rows[0]["_source"], "mqtt");
    assert_eq!(rows[0]["_mapping_version"], 1);
    assert_eq!(rows[0]["time"], "2024-11-25T02:00:00");
    let env = query(&p.url, "SELECT humidity, time FROM env");
    assert_eq!(env[0]["humidity"], 40.0);
    assert_eq!(env[0]["time"], "2024-11-25T02:00:01");
    // Lineage: the raw message of the row is kept, byte for byte.
    let raw_id = rows[0]["_raw_id"].as_u64().expect("raw id");
    let raw = query(
        &p.url,
        &format!("SELECT topic, payload FROM _raw WHERE _raw_id = {raw_id}"),
    );
    assert_eq!(raw.len(), 1);
    assert_eq!(
        raw[0]["payload"],
        r#"{"ts": 1732500000000, "pressure": 2.5, "running": true}"#
    );
    // The malformed message is a dead letter with its reason and bytes.
    let dead = query(
        &p.url,
        "SELECT device, topic, reason, payload FROM _dead_letters",
    );
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["device"], "pump-1");
    assert_eq!(dead[0]["payload"], "{not json");
    assert!(
        dead[0]["reason"]
            .as_str()
            .expect("reason")
            .contains("not JSON"),
        "{dead:?}"
    );
    // The registry counts messages and errors (written every second).
    eventually("message counts in the registry", || {
        let (_, d) = http(&p.url, reqwest::Method::GET, "/api/v1/devices/pump-1", None);
        d["messages"] == 3 && d["errors"] == 1
    });
}

#[test]
fn acls_keep_devices_out_of_each_others_topics_by_what_is_delivered_and_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Process::start(dir.path(), &[]);
    let mqtt = p.mqtt.clone().expect("mqtt");
    let (h, port) = host_port(&mqtt);
    let a = register(&p.url, "pump-a");
    let b = register(&p.url, "pump-b");
    // An operator sees everything; device A tries to read B's commands.
    let spy = Command::new("mosquitto_sub")
        .args([
            "-h", &h, "-p", &port, "-V", "mqttv5", "-u", "admin", "-P", TOKEN, "-t", "#", "-v",
            "-W", "6",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    let intruder = Command::new("mosquitto_sub")
        .args([
            "-h",
            &h,
            "-p",
            &port,
            "-V",
            "mqttv5",
            "-u",
            "pump-a",
            "-P",
            &a,
            "-t",
            "devices/pump-b/cmd/#",
            "-v",
            "-W",
            "6",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    let owner = Command::new("mosquitto_sub")
        .args([
            "-h",
            &h,
            "-p",
            &port,
            "-V",
            "mqttv311",
            "-u",
            "pump-b",
            "-P",
            &b,
            "-t",
            "devices/pump-b/cmd/#",
            "-v",
            "-W",
            "6",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    std::thread::sleep(Duration::from_millis(1500));
    // A writes into B's namespace (3.1.1 cannot refuse a publish; 5.0 answers 0x87).
    publish(
        &mqtt,
        "mqttv311",
        "1",
        "pump-a",
        &a,
        "devices/pump-b/telemetry",
        r#"{"pressure": 99}"#,
    );
    let out = publish(
        &mqtt,
        "mqttv5",
        "1",
        "pump-a",
        &a,
        "devices/pump-b/telemetry",
        r#"{"pressure": 98}"#,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Not authorized"),
        "{out:?}"
    );
    // ... and into its own; the operator sends B a command.
    publish(
        &mqtt,
        "mqttv311",
        "1",
        "pump-a",
        &a,
        "devices/pump-a/telemetry",
        r#"{"pressure": 1}"#,
    );
    publish(
        &mqtt,
        "mqttv311",
        "1",
        "admin",
        TOKEN,
        "devices/pump-b/cmd/reboot",
        "now",
    );
    // Client ids and user names of `#` or `+` widen nothing.
    let out = publish(
        &mqtt,
        "mqttv311",
        "1",
        "#",
        &a,
        "devices/pump-b/telemetry",
        r#"{"pressure": 97}"#,
    );
    assert!(!out.status.success(), "a user name of # is not a device");

    let spy = spy.wait_with_output().expect("spy");
    let seen = String::from_utf8_lossy(&spy.stdout);
    assert!(seen.contains("devices/pump-a/telemetry"), "{seen}");
    assert!(seen.contains("devices/pump-b/cmd/reboot"), "{seen}");
    assert!(
        !seen.contains("devices/pump-b/telemetry"),
        "denied publishes are not delivered: {seen}"
    );
    let intruder = intruder.wait_with_output().expect("intruder");
    assert!(
        String::from_utf8_lossy(&intruder.stdout).trim().is_empty(),
        "{intruder:?}"
    );
    assert!(
        String::from_utf8_lossy(&intruder.stderr).contains("denied"),
        "{intruder:?}"
    );
    let owner = owner.wait_with_output().expect("owner");
    assert!(
        String::from_utf8_lossy(&owner.stdout).contains("devices/pump-b/cmd/reboot now"),
        "{owner:?}"
    );
    // Nothing of the denied publishes was stored.
    assert_eq!(
        blocking_query_count(&p.url, "SELECT count(*) FROM pump WHERE device = 'pump-b'"),
        0
    );
    assert_eq!(
        blocking_query_count(&p.url, "SELECT count(*) FROM pump WHERE device = 'pump-a'"),
        1
    );
    assert_eq!(
        blocking_query_count(
            &p.url,
            "SELECT count(*) FROM _raw WHERE topic LIKE 'devices/pump-b/%'"
        ),
        0
    );
}

#[test]
fn bad_credentials_are_refused_and_connections_are_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Process::start(dir.path(), &[]);
    let mqtt = p.mqtt.clone().expect("mqtt");
    let token = register(&p.url, "pump-1");
    for (user, password) in [
        ("pump-1", "fdt_wrong"),
        ("nobody", token.as_str()),
        ("admin", "nope"),
    ] {
        let out = publish(
            &mqtt,
            "mqttv311",
            "1",
            user,
            password,
            "devices/pump-1/telemetry",
            "{}",
        );
        assert!(!out.status.success(), "{user}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("bad user name or password"),
            "{out:?}"
        );
    }
    let out = publish(
        &mqtt,
        "mqttv311",
        "0",
        "pump-1",
        &token,
        "devices/pump-1/telemetry",
        r#"{"v": 1}"#,
    );
    assert!(out.status.success(), "{out:?}");
    // A rotated token replaces the old one at once.
    let (status, body) = http(
        &p.url,
        reqwest::Method::POST,
        "/api/v1/devices/pump-1/token",
        None,
    );
    assert_eq!(status, 200);
    let fresh = body["token"].as_str().expect("token").to_owned();
    assert!(
        !publish(
            &mqtt,
            "mqttv311",
            "1",
            "pump-1",
            &token,
            "devices/pump-1/telemetry",
            "{}"
        )
        .status
        .success()
    );
    assert!(
        publish(
            &mqtt,
            "mqttv311",
            "1",
            "pump-1",
            &fresh,
            "devices/pump-1/telemetry",
            r#"{"v": 2}"#
        )
        .status
        .success()
    );
    eventually("connected and disconnected events", || {
        let (_, events) = http(
            &p.url,
            reqwest::Method::GET,
            "/api/v1/devices/pump-1/events",
            None,
        );
        let kinds: Vec<&str> = events
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["kind"].as_str()).collect())
            .unwrap_or_default();
        kinds.iter().filter(|k| **k == "connected").count() == 2
            && kinds.iter().filter(|k| **k == "disconnected").count() == 2
            && kinds.contains(&"token_rotated")
    });
    let (_, device) = http(&p.url, reqwest::Method::GET, "/api/v1/devices/pump-1", None);
    assert_eq!(device["state"], "offline");
}

#[test]
fn the_demo_plant_publishes_through_the_endpoint_within_seconds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Process::start_with_args(dir.path(), &["--demo"], &[]);
    eventually("rows from the simulated pumps", || {
        let (status, rows) = http(
            &p.url,
            reqwest::Method::POST,
            "/api/v1/query",
            Some(serde_json::json!({"sql": "SELECT count(DISTINCT device) AS n FROM pump"})),
        );
        // 400 until the first row creates the table.
        status == 200 && rows[0]["n"] == 4
    });
    // A newcomer's first screen of log: no errors, and no alert rule failing because the
    // pipeline has not scored yet (the first demo fault comes after 90 s).
    let startup: Vec<String> = p
        .drain_log()
        .into_iter()
        .take_while(|line| !line.contains("Fault injected"))
        .collect();
    let faults: Vec<&String> = startup
        .iter()
        .filter(|line| line.contains(" ERROR ") || line.contains("Alert rule evaluation failed"))
        .collect();
    assert!(
        faults.is_empty(),
        "a healthy demo logs no faults: {faults:#?}"
    );
    assert!(
        startup
            .iter()
            .any(|line| line.contains("Alert rule waiting for its table")),
        "{startup:#?}"
    );
    let (_, devices) = http(
        &p.url,
        reqwest::Method::GET,
        "/api/v1/devices?label=simulated%3Dtrue",
        None,
    );
    let devices = devices.as_array().cloned().unwrap_or_default();
    // Four pumps and two motors publishing JSON, one Sparkplug B edge node, two chillers that
    // Fabrik polls over Modbus TCP and a filler line it subscribes to over OPC UA.
    assert_eq!(devices.len(), 10, "{devices:?}");
    eventually("every simulated device online", || {
        let (_, d) = http(
            &p.url,
            reqwest::Method::GET,
            "/api/v1/devices?state=online",
            None,
        );
        d.as_array().map_or(0, Vec::len) == 10
    });
    eventually(
        "the edge node's births and data are stored by metric name",
        || {
            let (status, rows) = http(
                &p.url,
                reqwest::Method::POST,
                "/api/v1/query",
                Some(
                    serde_json::json!({"sql": "SELECT count(*) AS n FROM sparkplug WHERE device = 'plant-1/edge-01' AND \"Compressor/Pressure\" > 5"}),
                ),
            );
            status == 200 && rows[0]["n"].as_i64().unwrap_or(0) >= 2
        },
    );
    let rows = query(
        &p.url,
        "SELECT vibration_rms, flow, motor_current FROM pump WHERE running LIMIT 5",
    );
    assert!(!rows.is_empty());
    for r in rows {
        let v = r["vibration_rms"].as_f64().expect("vibration");
        assert!((0.05..1.0).contains(&v), "{r}");
    }

    // The filler line arrives over OPC UA (Basic256Sha256, SignAndEncrypt), one row per tick.
    eventually("filler rows over OPC UA", || {
        let (status, rows) = http(
            &p.url,
            reqwest::Method::POST,
            "/api/v1/query",
            Some(
                serde_json::json!({"sql": "SELECT speed, product_temp, co2_pressure, good_count FROM filler \
                WHERE device = 'line-01' AND speed > 0 AND product_temp IS NOT NULL AND good_count IS NOT NULL LIMIT 3"}),
            ),
        );
        status == 200
            && rows.as_array().is_some_and(|r| r.len() == 3)
            && rows.as_array().into_iter().flatten().all(|r| {
                (2.0..6.0).contains(&r["product_temp"].as_f64().unwrap_or(0.0))
                    && (2.0..4.0).contains(&r["co2_pressure"].as_f64().unwrap_or(0.0))
                    && r["good_count"].as_i64().unwrap_or(0) >= 182_340
            })
    });

    // The chillers' register map decodes to plausible engineering values.
    let rows = query(
        &p.url,
        "SELECT supply_temp, return_temp, discharge_pressure, setpoint, energy, run_hours \
         FROM chiller WHERE device = 'chiller-01' AND supply_temp IS NOT NULL LIMIT 3",
    );
    assert!(!rows.is_empty());
    for r in &rows {
        let supply = r["supply_temp"].as_f64().expect("supply");
        assert!((3.0..12.0).contains(&supply), "{r}");
        assert!(r["return_temp"].as_f64().expect("return") > supply, "{r}");
        assert!(
            (5.0..20.0).contains(&r["discharge_pressure"].as_f64().expect("p")),
            "{r}"
        );
        assert_eq!(r["setpoint"], 7.0, "{r}");
        assert!(r["energy"].as_f64().expect("energy") >= 12_480.0, "{r}");
        assert!(r["run_hours"].as_f64().expect("hours") >= 3_120.5, "{r}");
    }
    let model = query(
        &p.url,
        "SELECT model FROM chiller WHERE device = 'chiller-02' AND model IS NOT NULL LIMIT 1",
    );
    assert_eq!(model[0]["model"], "FBK-CH200");

    // A Modbus client (pymodbus) changes chiller-01's set-point; the next polls show it.
    let log = p.drain_log().join("\n");
    let address = log
        .lines()
        .find(|l| l.contains("Modbus device connected") && l.contains("device=chiller-01"))
        .and_then(|l| l.split("address=").nth(1))
        .map(|a| a.trim().to_owned())
        .expect("the chiller's address in the log");
    let (host, port) = address.rsplit_once(':').expect("host:port");
    let python = crate::support::python();
    let script = format!(
        "from pymodbus.client import ModbusTcpClient\n\
         c = ModbusTcpClient('{host}', port={port})\n\
         assert c.connect()\n\
         r = c.write_register(100, 90)\n\
         assert not r.isError(), r\n\
         r = c.write_register(100, 900)\n\
         assert r.isError() and r.exception_code == 3, r\n\
         c.close()\n"
    );
    let out = std::process::Command::new(&python)
        .args(["-c", &script])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("the new set-point is polled", || {
        let rows = query(
            &p.url,
            "SELECT setpoint FROM chiller WHERE device = 'chiller-01' AND setpoint IS NOT NULL \
             ORDER BY time DESC LIMIT 1",
        );
        rows.first().is_some_and(|r| r["setpoint"] == 9.0)
    });
    // Through Fabrik (decision 0090): the demo's chillers declare the set-point writable
    // within 4..=15 °C, the range their controllers take.
    let (ok, out) =
        crate::support::client_command(&p.url, &["device", "set", "chiller-02", "setpoint", "8.5"]);
    assert!(ok, "{out}");
    assert!(out.contains("chiller-02/setpoint = 8.5"), "{out}");
    let (ok, out) =
        crate::support::client_command(&p.url, &["device", "set", "chiller-02", "setpoint", "3"]);
    assert!(
        !ok && out.contains("outside the point's range 4..=15 °C"),
        "{out}"
    );
    // A negative number is a value, not an option of the command.
    let (ok, out) =
        crate::support::client_command(&p.url, &["device", "set", "chiller-02", "setpoint", "-5"]);
    assert!(
        !ok && out.contains("-5 °C is outside the point's range 4..=15 °C"),
        "{out}"
    );
    eventually("the set-point written through Fabrik is polled", || {
        let rows = query(
            &p.url,
            "SELECT setpoint FROM chiller WHERE device = 'chiller-02' AND setpoint IS NOT NULL \
             ORDER BY time DESC LIMIT 1",
        );
        rows.first().is_some_and(|r| r["setpoint"] == 8.5)
    });
    // The filler line's speed set-point over OPC UA, through the same command; Fabrik refuses
    // what the node's declared EURange does not allow (the demo configures no range for it,
    // decision 0094).
    let (ok, out) = crate::support::client_command(
        &p.url,
        &["device", "set", "line-01", "speed_setpoint", "450"],
    );
    assert!(ok, "{out}");
    assert!(out.contains("line-01/speed_setpoint = 450"), "{out}");
    let (ok, out) = crate::support::client_command(
        &p.url,
        &["device", "set", "line-01", "speed_setpoint", "1000"],
    );
    assert!(
        !ok && out.contains("outside the node's EURange 0..=900"),
        "{out}"
    );
    // Its recipe is a String node: set as text (decision 0095), and only as text.
    let (ok, out) = crate::support::client_command(
        &p.url,
        &[
            "device",
            "set",
            "line-01",
            "recipe",
            "--text",
            "Lemon 0.33 l",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains(r#"line-01/recipe = "Lemon 0.33 l" (read back from the device)"#),
        "{out}"
    );
    let (ok, out) =
        crate::support::client_command(&p.url, &["device", "set", "line-01", "recipe", "7"]);
    assert!(
        !ok && out.contains("the node holds a String: give text"),
        "{out}"
    );
    let (ok, out) = crate::support::client_command(
        &p.url,
        &[
            "device",
            "set",
            "line-01",
            "speed_setpoint",
            "--text",
            "450",
        ],
    );
    assert!(
        !ok && out.contains("the node holds a Double: give a number"),
        "{out}"
    );
    let (ok, out) = crate::support::client_command(&p.url, &["device", "setpoints"]);
    assert!(ok, "{out}");
    for listed in [
        "chiller-01",
        "line-01",
        "ns=2;s=Line1.Filler.SpeedSetpoint",
        "0..=900 bottles/min (declared by the device)",
        "ns=2;s=Line1.Filler.Recipe String text (set with --text)",
    ] {
        assert!(out.contains(listed), "{listed} not in:\n{out}");
    }
    // The subscription reports the node's new value, and the write is on record.
    eventually("the set-point written through Fabrik is reported", || {
        let rows = query(
            &p.url,
            "SELECT speed_setpoint FROM filler WHERE device = 'line-01' \
             AND speed_setpoint IS NOT NULL ORDER BY time DESC LIMIT 1",
        );
        rows.first().is_some_and(|r| r["speed_setpoint"] == 450.0)
    });
    eventually("the recipe written through Fabrik is reported", || {
        let rows = query(
            &p.url,
            "SELECT recipe FROM filler WHERE device = 'line-01' AND recipe IS NOT NULL \
             ORDER BY time DESC LIMIT 1",
        );
        rows.first().is_some_and(|r| r["recipe"] == "Lemon 0.33 l")
    });
    // Each signal's newest value (decision 0096): the recipe, reported once, among them.
    let (ok, out) = crate::support::client_command(&p.url, &["device", "values", "line-01"]);
    assert!(ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("recipe ") && l.contains(r#""Lemon 0.33 l""#)),
        "{out}"
    );
    assert!(out.contains("of line-01 in table filler"), "{out}");
    let (ok, out) = crate::support::client_command(&p.url, &["device", "values", "line-99"]);
    assert!(!ok && out.contains("line-99"), "{out}");
    // The Sparkplug edge node's pressure set-point (decision 0091): an NCMD, which the node
    // answers with an NDATA reporting the value it took.
    let (ok, out) = crate::support::client_command(
        &p.url,
        &[
            "device",
            "set",
            "plant-1/edge-01",
            "Compressor/Pressure Setpoint",
            "8",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("plant-1/edge-01/Compressor/Pressure Setpoint = 8.0"),
        "{out}"
    );
    let (ok, out) = crate::support::client_command(
        &p.url,
        &[
            "device",
            "set",
            "plant-1/edge-01",
            "Compressor/Pressure Setpoint",
            "9",
        ],
    );
    assert!(
        !ok && out.contains("outside the point's range 6..=8.5"),
        "{out}"
    );
    eventually("the node's report of its new set-point is stored", || {
        let rows = query(
            &p.url,
            "SELECT \"Compressor/Pressure Setpoint\" AS sp FROM sparkplug \
             WHERE device = 'plant-1/edge-01' AND \"Compressor/Pressure Setpoint\" IS NOT NULL \
             ORDER BY time DESC LIMIT 1",
        );
        rows.first().is_some_and(|r| r["sp"] == 8.0)
    });
    let writes = query(
        &p.url,
        "SELECT device, signal, status, value, read_back, text, read_back_text \
         FROM _device_writes ORDER BY time",
    );
    let seen: Vec<String> = writes
        .iter()
        .map(|w| {
            format!(
                "{} {} {} {} {} {} {}",
                w["device"],
                w["signal"],
                w["status"],
                w["value"],
                w["read_back"],
                w["text"],
                w["read_back_text"]
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            r#""chiller-02" "setpoint" "confirmed" 8.5 8.5 null null"#,
            r#""line-01" "speed_setpoint" "confirmed" 450.0 450.0 null null"#,
            r#""line-01" "recipe" "confirmed" null null "Lemon 0.33 l" "Lemon 0.33 l""#,
            r#""plant-1/edge-01" "Compressor/Pressure Setpoint" "confirmed" 8.0 8.0 null null"#,
        ],
        "the refused writes are not rows: {writes:#?}"
    );
}

/// `mosquitto_sub` with a persistent session (`-c`), QoS 1, until `count` messages or `wait`
/// seconds; returns the `topic payload` lines.
fn persistent_sub(
    addr: &str,
    client_id: &str,
    filter: &str,
    count: &str,
    wait: &str,
) -> Vec<String> {
    let (h, p) = host_port(addr);
    let out = mosquitto(
        "mosquitto_sub",
        &[
            "-h", &h, "-p", &p, "-V", "mqttv311", "-u", "admin", "-P", TOKEN, "-i", client_id,
            "-c", "-q", "1", "-t", filter, "-v", "-C", count, "-W", wait,
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn retained_messages_and_persistent_sessions_survive_a_restart_and_a_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Process::start(dir.path(), &[]);
    let mqtt = p.mqtt.clone().expect("mqtt");
    // A persistent session subscribes, then goes away.
    let first = persistent_sub(&mqtt, "keeper", "plant/#", "1", "1");
    assert!(first.is_empty(), "{first:?}");
    let out = publish(
        &mqtt,
        "mqttv311",
        "1",
        "admin",
        TOKEN,
        "plant/state",
        "running",
    );
    assert!(out.status.success());
    // Retained: the same again with -r.
    let (h, port) = host_port(&mqtt);
    let out = mosquitto(
        "mosquitto_pub",
        &[
            "-h",
            &h,
            "-p",
            &port,
            "-u",
            "admin",
            "-P",
            TOKEN,
            "-q",
            "1",
            "-r",
            "-t",
            "plant/mode",
            "-m",
            "auto",
        ],
    );
    assert!(out.status.success());
    let (status, _) = p.terminate();
    assert!(status.success());

    // After a graceful restart: the retained message is there for a new subscriber, and the
    // offline session still collects QoS 1 messages.
    let p = Process::start(dir.path(), &[]);
    let mqtt = p.mqtt.clone().expect("mqtt");
    let (h, port) = host_port(&mqtt);
    let fresh = mosquitto(
        "mosquitto_sub",
        &[
            "-h",
            &h,
            "-p",
            &port,
            "-u",
            "admin",
            "-P",
            TOKEN,
            "-t",
            "plant/mode",
            "-v",
            "-C",
            "1",
            "-W",
            "5",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&fresh.stdout).trim(),
        "plant/mode auto"
    );
    let out = publish(
        &mqtt,
        "mqttv311",
        "1",
        "admin",
        TOKEN,
        "plant/alarm",
        "high",
    );
    assert!(out.status.success());
    // Let the saver write the change (it runs once a second), then crash.
    std::thread::sleep(Duration::from_millis(2500));
    p.kill9();

    let p = Process::start(dir.path(), &[]);
    let mqtt = p.mqtt.clone().expect("mqtt");
    let got = persistent_sub(&mqtt, "keeper", "plant/#", "3", "10");
    // The queued messages of the session (published while it was away, across a restart and
    // a crash), and the retained one again for the renewed subscription.
    assert!(got.contains(&"plant/state running".to_owned()), "{got:?}");
    assert!(got.contains(&"plant/alarm high".to_owned()), "{got:?}");
    assert!(got.contains(&"plant/mode auto".to_owned()), "{got:?}");
    let log = p.drain_log().join("\n");
    assert!(log.contains("MQTT state restored"), "{log}");
}
