//! The registry on PostgreSQL (decision 0055): a `fabrik run` whose devices, users and audit
//! log live in a real PostgreSQL server (Debian's `postgresql`, run by the test on a free
//! port), across a restart, with tampering done in the database found by `fabrik audit
//! verify`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::mqtt::{eventually, host_port, http, mosquitto, query, register};
use crate::support::{Process, client_command, fabrik_bin, free_port};

/// A PostgreSQL server of its own, in a temporary directory; stopped on drop.
pub(crate) struct Postgres {
    child: Child,
    port: u16,
    bin: PathBuf,
    _dir: tempfile::TempDir,
}

/// The newest installed server's programs (`FABRIK_POSTGRES_BIN` names another).
fn server_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("FABRIK_POSTGRES_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL must be installed (apt install postgresql; .ci/run does)")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let major = path.file_name()?.to_str()?.parse().ok()?;
            Some((major, path.join("bin")))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("a PostgreSQL server in /usr/lib/postgresql")
        .1
}

/// The `postgres` account's uid and gid when the tests run as root (the server refuses root).
fn server_account() -> Option<(u32, u32)> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0");
    if !root {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    let line = passwd
        .lines()
        .find(|line| line.starts_with("postgres:"))
        .expect("the postgres account (made by Debian's postgresql package)");
    let fields: Vec<&str> = line.split(':').collect();
    Some((
        fields[2].parse().expect("uid"),
        fields[3].parse().expect("gid"),
    ))
}

fn as_account(command: &mut Command, account: Option<(u32, u32)>) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = account {
        command.uid(uid).gid(gid);
    }
    command.env("LC_ALL", "C")
}

impl Postgres {
    pub(crate) fn start() -> Postgres {
        let bin = server_bin();
        let dir = tempfile::tempdir().expect("tempdir");
        let account = server_account();
        if let Some((uid, gid)) = account {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        let data = dir.path().join("data");
        let init = as_account(&mut Command::new(bin.join("initdb")), account)
            .args(["-D", data.to_str().expect("utf-8")])
            .args(["-U", "fabrik", "--auth=trust", "-E", "UTF8", "--no-locale"])
            .arg("--no-sync")
            .output()
            .expect("initdb");
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let port = free_port();
        let child = as_account(&mut Command::new(bin.join("postgres")), account)
            .args(["-D", data.to_str().expect("utf-8")])
            .args(["-p", &port.to_string()])
            .args(["-k", dir.path().to_str().expect("utf-8")])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres");
        let server = Postgres {
            child,
            port,
            bin,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.try_psql("postgres", "SELECT 1").is_err() {
            assert!(Instant::now() < deadline, "PostgreSQL did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// The URL of `database` as user `fabrik` with `password` (trust: any password passes).
    pub(crate) fn url(&self, database: &str, password: &str) -> String {
        format!(
            "postgres://fabrik:{password}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    fn try_psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let psql = self.bin.join("psql");
        let out = Command::new(if psql.exists() {
            psql
        } else {
            PathBuf::from("psql")
        })
        .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
        .args([
            "-U",
            "fabrik",
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-tAc",
            sql,
        ])
        .output()
        .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `sql` in `database` with psql; its output, tuples only.
    pub(crate) fn psql(&self, database: &str, sql: &str) -> String {
        self.try_psql(database, sql)
            .unwrap_or_else(|e| panic!("psql {sql}: {e}"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The backends notice their postmaster is gone and exit too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes one reading at QoS 1 as `device` with `token`; the client's output.
fn publish(mqtt: &str, device: &str, token: &str) -> std::process::Output {
    let (h, port) = host_port(mqtt);
    let topic = format!("devices/{device}/telemetry");
    mosquitto(
        "mosquitto_pub",
        &[
            "-h",
            &h,
            "-p",
            &port,
            "-q",
            "1",
            "-u",
            device,
            "-P",
            token,
            "-t",
            &topic,
            "-m",
            r#"{"pressure": 4.2}"#,
        ],
    )
}

/// `fabrik run` that is expected to stop by itself: its exit status and output.
fn run_to_exit(data: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let mut command = Command::new(fabrik_bin());
    command
        .arg("run")
        .env("FABRIK__STORE__DATA_DIR", data)
        .env("FABRIK__HTTP__LISTEN", "127.0.0.1:0")
        .env("FABRIK__MQTT__LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("fabrik run");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("fabrik run did not stop on a registry it cannot open");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_node_keeps_its_registry_in_postgresql_across_a_restart() {
    let server = Postgres::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");

    // A database that does not exist stops the start, naming it without the password.
    let missing = server.url("fabrik", "s3cret-pw");
    let (ok, out) = run_to_exit(&data, &[("FABRIK__REGISTRY__DATABASE_URL", &missing)]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("postgres://fabrik:***@127.0.0.1") && out.contains("fabrik"),
        "{out}"
    );
    assert!(!out.contains("s3cret-pw"), "the password was shown: {out}");

    server.psql("postgres", "CREATE DATABASE fabrik");
    let url = server.url("fabrik", "s3cret-pw");
    let env = [("FABRIK__REGISTRY__DATABASE_URL", url.as_str())];
    let p = Process::start(&data, &env);
    assert!(
        !data.join("registry.db").exists(),
        "the registry went to a file, not to PostgreSQL"
    );
    // A device registered through the API, in PostgreSQL, publishes with its token.
    let token = register(&p.url, "pump-pg");
    assert_eq!(
        server.psql("fabrik", "SELECT id || ' ' || device_type FROM devices"),
        "pump-pg pump"
    );
    let mqtt = p.mqtt.as_deref().expect("mqtt");
    let out = publish(mqtt, "pump-pg", &token);
    assert!(out.status.success(), "{out:?}");
    let out = publish(mqtt, "pump-pg", "wrong");
    assert!(!out.status.success(), "a wrong token was let in");
    eventually("the reading is stored", || {
        crate::support::count_if_any(
            &p.url,
            "SELECT count(*) AS n FROM pump WHERE device = 'pump-pg'",
        ) == Some(1)
    });
    // Its activity counters are written to PostgreSQL (every second).
    eventually("the device's message count", || {
        server.psql(
            "fabrik",
            "SELECT messages FROM devices WHERE id = 'pump-pg'",
        ) == "1"
    });
    let body =
        json!({"name": "vera", "role": "viewer", "password": "correct horse battery staple"});
    assert_eq!(
        http(&p.url, Method::POST, "/api/v1/users", Some(body)).0,
        201
    );
    let (ok, out) = client_command(&p.url, &["audit", "verify"]);
    assert!(ok && out.contains("intact: 2 entries"), "{out}");
    drop(p);

    // After a restart the device, its history and the user are still there, and the chain
    // goes on from where it was.
    let p = Process::start(&data, &env);
    let (status, device) = http(&p.url, Method::GET, "/api/v1/devices/pump-pg", None);
    assert_eq!(status, 200, "{device}");
    assert_eq!(device["messages"], 1);
    let (status, users) = http(&p.url, Method::GET, "/api/v1/users", None);
    assert_eq!(status, 200);
    assert!(users.to_string().contains("vera"), "{users}");
    let rows = query(&p.url, "SELECT count(*) AS n FROM pump");
    assert_eq!(rows[0]["n"], 1);
    assert_eq!(
        http(&p.url, Method::DELETE, "/api/v1/users/vera", None).0,
        204
    );
    let (ok, out) = client_command(&p.url, &["audit", "verify"]);
    assert!(ok && out.contains("intact: 3 entries"), "{out}");
    assert_eq!(
        server.psql("fabrik", "SELECT max(version) FROM schema_migrations"),
        server.psql("fabrik", "SELECT count(*) FROM schema_migrations"),
        "every migration applied once"
    );

    // Someone with write access to the database makes the registered device look like
    // another one's registration: the chain names the entry.
    server.psql(
        "fabrik",
        "UPDATE audit_log SET target = '/api/v1/devices/other' WHERE seq = 1",
    );
    let (ok, out) = client_command(&p.url, &["audit", "verify"]);
    assert!(!ok, "{out}");
    assert!(out.contains("broken at entry 1"), "{out}");
}

#[test]
fn a_pilots_registry_is_copied_into_postgresql_and_its_audit_chain_goes_on() {
    let server = Postgres::start();
    server.psql("postgres", "CREATE DATABASE hub");
    let url = server.url("hub", "s3cret-pw");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");

    // A pilot on the embedded files: a device that connected (events numbered by SQLite), a
    // user, their audit entries, and an acknowledged alert.
    let file = dir.path().join("fabrik.toml");
    std::fs::write(&file, OVEN_RULE).expect("config");
    let config = ["--config", file.to_str().expect("utf-8")];
    let p = Process::start_with_args(&data, &config, &[]);
    let token = register(&p.url, "pump-1");
    assert!(
        publish(p.mqtt.as_deref().expect("mqtt"), "pump-1", &token)
            .status
            .success()
    );
    let body =
        json!({"name": "vera", "role": "viewer", "password": "correct horse battery staple"});
    assert_eq!(
        http(&p.url, Method::POST, "/api/v1/users", Some(body)).0,
        201
    );
    let alert = fire_and_acknowledge(&p.url);
    let (ok, out) = client_command(&p.url, &["audit", "verify"]);
    assert!(ok && out.contains("intact: 3 entries"), "{out}");
    let (status, events) = http(&p.url, Method::GET, "/api/v1/devices/pump-1/events", None);
    assert_eq!(status, 200, "{events}");
    let events_before = events.as_array().map_or(0, Vec::len);
    assert!(events_before >= 2, "{events}");
    let (status, _) = p.terminate();
    assert!(status.success());

    // The copy, with Fabrik stopped; the URL from the environment, never printed whole.
    let copy = |target: &str| {
        let out = Command::new(fabrik_bin())
            .args([
                "registry",
                "copy",
                "--data-dir",
                data.to_str().expect("utf-8"),
            ])
            .env("FABRIK__REGISTRY__DATABASE_URL", target)
            .output()
            .expect("fabrik registry copy");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, out) = copy(&url);
    assert!(ok, "{out}");
    assert!(!out.contains("s3cret-pw"), "{out}");
    assert!(
        out.contains("devices") && out.contains("audit_log"),
        "{out}"
    );
    assert!(out.contains("alerts.db") && out.contains("outbox"), "{out}");
    assert_eq!(server.psql("hub", "SELECT count(*) FROM audit_log"), "3");
    assert_eq!(server.psql("hub", "SELECT count(*) FROM alerts"), "1");
    // Into a registry that has rows: refused, naming the table, nothing changed.
    let (ok, out) = copy(&url);
    assert!(!ok, "{out}");
    assert!(out.contains("`alerts`") && out.contains("empty"), "{out}");
    assert!(
        !out.contains("registry was copied"),
        "checked before copying: {out}"
    );

    // The node on PostgreSQL: the device's token works, its new events are numbered after
    // the copied ones, and the audit chain verifies and goes on under the same key.
    let env = [("FABRIK__REGISTRY__DATABASE_URL", url.as_str())];
    let p = Process::start_with_args(&data, &config, &env);
    assert!(
        p.startup_log
            .iter()
            .any(|line| line.contains("alerts.db") && line.contains("is not read")),
        "the files left behind are named at start: {:?}",
        p.startup_log
    );
    let (status, moved) = http(
        &p.url,
        Method::GET,
        &format!("/api/v1/alerts/{alert}"),
        None,
    );
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["state"], "firing", "{moved}");
    assert_eq!(moved["ack"]["feedback"], "true_positive", "{moved}");
    assert!(
        publish(p.mqtt.as_deref().expect("mqtt"), "pump-1", &token)
            .status
            .success()
    );
    eventually("the new connection's events", || {
        let (_, events) = http(&p.url, Method::GET, "/api/v1/devices/pump-1/events", None);
        events.as_array().map_or(0, Vec::len) > events_before
    });
    assert_eq!(
        http(&p.url, Method::DELETE, "/api/v1/users/vera", None).0,
        204
    );
    let (ok, out) = client_command(&p.url, &["audit", "verify"]);
    assert!(ok && out.contains("intact: 4 entries"), "{out}");
}

const OVEN_RULE: &str = r#"
[[alerting.rules]]
name = "oven-hot"
table = "oven"
value = "celsius"
key = "device"
condition = "above"
threshold = 80.0
interval = "200ms"
start = "earliest"
"#;

/// Makes `OVEN_RULE` fire and acknowledges the alert as a true positive; returns its id.
fn fire_and_acknowledge(url: &str) -> String {
    let line = format!(
        "oven,device=oven-1 celsius=95 {}\n",
        crate::support::now_ns()
    );
    assert_eq!(
        crate::support::post_status(url, "/api/v1/write", &line),
        200
    );
    let firing = || {
        let (_, alerts) = http(url, Method::GET, "/api/v1/alerts?state=firing", None);
        alerts.as_array().cloned().unwrap_or_default()
    };
    eventually("the oven's alert fires", || !firing().is_empty());
    let id = firing()[0]["id"].as_str().expect("id").to_owned();
    let (status, body) = http(
        url,
        Method::POST,
        &format!("/api/v1/alerts/{id}/ack"),
        Some(json!({"feedback": "true_positive", "comment": "door left open"})),
    );
    assert_eq!(status, 200, "{body}");
    id
}

#[test]
fn alerts_and_their_acknowledgements_live_in_postgresql_too() {
    let server = Postgres::start();
    server.psql("postgres", "CREATE DATABASE fabrik");
    let url = server.url("fabrik", "s3cret-pw");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("fabrik.toml");
    std::fs::write(&file, OVEN_RULE).expect("config");
    let data = dir.path().join("data");
    let start = || {
        Process::start_with_args(
            &data,
            &["--config", file.to_str().expect("utf-8")],
            &[("FABRIK__REGISTRY__DATABASE_URL", url.as_str())],
        )
    };
    let p = start();
    let id = fire_and_acknowledge(&p.url);
    assert!(
        !data.join("alerts.db").exists(),
        "the alerts went to a file, not to PostgreSQL"
    );
    assert_eq!(
        server.psql(
            "fabrik",
            "SELECT state || ' ' || ack_by || ' ' || feedback FROM alerts WHERE rule = 'oven-hot'"
        ),
        "firing admin-token true_positive"
    );
    drop(p);

    // After a restart the alert is still firing, acknowledged, from PostgreSQL.
    let p = start();
    let (status, alert) = http(&p.url, Method::GET, &format!("/api/v1/alerts/{id}"), None);
    assert_eq!(status, 200, "{alert}");
    assert_eq!(alert["state"], "firing", "{alert}");
    assert_eq!(alert["ack"]["feedback"], "true_positive", "{alert}");
    assert_eq!(alert["ack"]["comment"], "door left open", "{alert}");
}
