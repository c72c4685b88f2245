//! The audit log in a real `fabrik run`: changes, refusals and sign-ins recorded under who made
//! them, each written to the process log with its hash, and a change made to the database
//! behind Fabrik's back found by `fabrik audit verify` after a restart.

use reqwest::Method;
use serde_json::json;

use crate::mqtt::http;
use crate::support::{Process, client_command};
use crate::users::call;

#[test]
fn changes_refusals_and_sign_ins_are_chained_and_tampering_is_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = Process::start(&data, &[]);
    // A change by the admin token, a refused sign-in, a viewer refused a change, and data
    // written (not a change: not recorded).
    let password = "correct horse battery staple";
    let body = json!({"name": "vera", "role": "viewer", "password": password});
    assert_eq!(
        http(&p.url, Method::POST, "/api/v1/users", Some(body)).0,
        201
    );
    let body = json!({"username": "vera", "password": "wrong password!"});
    assert_eq!(
        call(&p.url, Method::POST, "/api/v1/session", None, Some(body)).0,
        401
    );
    let body = json!({"username": "vera", "password": password});
    let (status, _, session) = call(&p.url, Method::POST, "/api/v1/session", None, Some(body));
    assert_eq!(status, 200);
    let (status, _, _) = call(
        &p.url,
        Method::DELETE,
        "/api/v1/users/vera",
        session.as_deref(),
        None,
    );
    assert_eq!(status, 403);
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", "m,device=d1 v=1"),
        200
    );
    // A method the API does not use is refused before the role check: not a refusal to record.
    let probe = Method::from_bytes(b"PROBE").expect("method");
    let (status, _, _) = call(&p.url, probe, "/api/v1/tables", session.as_deref(), None);
    assert_eq!(status, 405);

    let (status, _, _) = call(
        &p.url,
        Method::GET,
        "/api/v1/audit?limit=10",
        session.as_deref(),
        None,
    );
    assert_eq!(status, 403, "a viewer does not read the audit log");
    let (status, entries) = http(&p.url, Method::GET, "/api/v1/audit?limit=10", None);
    assert_eq!(status, 200, "{entries}");
    let entries = entries.as_array().expect("entries").clone();
    let seen: Vec<(String, String, u64)> = entries
        .iter()
        .rev()
        .map(|e| {
            (
                e["actor"].as_str().expect("actor").to_owned(),
                e["action"].as_str().expect("action").to_owned(),
                e["status"].as_u64().expect("status"),
            )
        })
        .collect();
    let expected = [
        ("admin-token", "POST /api/v1/users", 201),
        ("vera", "sign-in", 401),
        ("vera", "sign-in", 200),
        ("vera", "DELETE /api/v1/users/{name}", 403),
        ("vera", "GET /api/v1/audit", 403),
    ];
    let expected: Vec<(String, String, u64)> = expected
        .iter()
        .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), *c))
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(entries[1]["target"], "/api/v1/users/vera");
    let (ok, out) = client_command(&p.url, &["audit", "verify"]);
    assert!(ok && out.contains("intact: 5 entries"), "{out}");
    let (ok, out) = client_command(&p.url, &["audit", "list"]);
    assert!(ok && out.contains("DELETE /api/v1/users/{name}"), "{out}");
    // Each entry is in the process log with its hash: the copy to compare the head with.
    let head = entries[0]["hash"].as_str().expect("hash").to_owned();
    let (_, log) = p.terminate();
    assert!(
        log.iter()
            .any(|line| line.contains("Audit.") && line.contains(&head)),
        "the newest entry's hash is not in the log"
    );

    // Behind Fabrik's back: entry 2 (the refused sign-in) is made to look successful.
    let python = crate::support::python();
    let status = std::process::Command::new(python)
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
             c.execute('UPDATE audit_log SET status = 200 WHERE seq = 2'); c.commit()",
            data.join("registry.db").to_str().expect("utf-8"),
        ])
        .status()
        .expect("python");
    assert!(status.success());
    let p = Process::start(&data, &[]);
    let (ok, out) = client_command(&p.url, &["audit", "verify"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("broken at entry 2") && out.contains("entries 1 to 1 fit"),
        "{out}"
    );
}

#[test]
fn refused_sign_ins_are_held_back_past_ten_and_a_lost_key_is_not_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = Process::start(&data, &[]);
    let body =
        json!({"name": "vera", "role": "viewer", "password": "correct horse battery staple"});
    assert_eq!(
        http(&p.url, Method::POST, "/api/v1/users", Some(body)).0,
        201
    );
    // A password typed into the name field is not kept.
    let body = json!({"username": "s3cret-typed-in-the-wrong-field", "password": "x"});
    assert_eq!(
        call(&p.url, Method::POST, "/api/v1/session", None, Some(body)).0,
        401
    );
    // A guesser: five wrong passwords lock the name, the rest are refused at once (429).
    let statuses: Vec<u16> = (0..25)
        .map(|n| {
            let body = json!({"username": "vera", "password": format!("guess number {n}")});
            call(&p.url, Method::POST, "/api/v1/session", None, Some(body)).0
        })
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        20,
        "{statuses:?}"
    );

    let (status, entries) = http(&p.url, Method::GET, "/api/v1/audit?limit=100", None);
    assert_eq!(status, 200, "{entries}");
    let entries = entries.as_array().expect("entries").clone();
    let text = serde_json::to_string(&entries).expect("json");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(
        entries
            .iter()
            .any(|e| e["actor"] == "unknown user" && e["status"] == 401),
        "{text}"
    );
    let vera: Vec<u64> = entries
        .iter()
        .filter(|e| e["actor"] == "vera" && e["action"] == "sign-in")
        .map(|e| e["status"].as_u64().expect("status"))
        .collect();
    // Ten one by one (five 401, five 429); the other fifteen are counted for a summary.
    assert_eq!(vera.len(), 10, "{text}");
    assert_eq!(vera.iter().filter(|s| **s == 429).count(), 5, "{text}");
    let (_, _) = p.terminate();

    // The key is lost: Fabrik refuses to start rather than begin a chain the old entries
    // cannot be checked against.
    std::fs::remove_file(data.join("audit.key")).expect("remove the key");
    let out = std::process::Command::new(crate::support::fabrik_bin())
        .arg("run")
        .env("FABRIK__STORE__DATA_DIR", &data)
        .env("FABRIK__HTTP__LISTEN", "127.0.0.1:0")
        .env("FABRIK__MQTT__LISTEN", "127.0.0.1:0")
        .output()
        .expect("fabrik run");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("audit.key is missing") && text.contains("set-aside"),
        "{text}"
    );
    // Set aside, it starts on a new chain.
    let (ok, out) = client_command(
        "http://127.0.0.1:9",
        &[
            "audit",
            "set-aside",
            "--data-dir",
            data.to_str().expect("utf-8"),
        ],
    );
    assert!(ok && out.contains("audit_log_set_aside_"), "{out}");
    let p = Process::start(&data, &[]);
    let (ok, out) = client_command(&p.url, &["audit", "verify"]);
    assert!(ok && out.contains("intact: 0 entries"), "{out}");
}

/// The status of the control citing `reference` in a compliance report.
fn control_status(report: &serde_json::Value, reference: &str) -> String {
    report["controls"]
        .as_array()
        .expect("controls")
        .iter()
        .find(|c| {
            c["references"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r == reference))
        })
        .and_then(|c| c["status"].as_str())
        .unwrap_or_else(|| panic!("no control {reference} in {report}"))
        .to_owned()
}

#[test]
fn the_compliance_report_follows_the_configuration_and_the_audit_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = Process::start(&data, &[]);
    let (status, report) = http(&p.url, Method::GET, "/api/v1/compliance", None);
    assert_eq!(status, 200, "{report}");
    assert_eq!(control_status(&report, "NIST 800-53 SI-7"), "not_met");
    assert_eq!(control_status(&report, "NIST 800-53 AU-2"), "met");
    // No users yet: only the shared admin token.
    assert_eq!(control_status(&report, "NIST 800-53 IA-2"), "partial");
    let (ok, out) = client_command(&p.url, &["compliance", "--strict"]);
    assert!(
        !ok && out.contains("[not_met] Software and information integrity"),
        "{out}"
    );
    // A viewer signs in by name, but changes are still the shared token's until an admin does.
    for (name, role, met) in [("vera", "viewer", "partial"), ("ada", "admin", "met")] {
        let body = json!({"name": name, "role": role, "password": "correct horse battery staple"});
        assert_eq!(
            http(&p.url, Method::POST, "/api/v1/users", Some(body)).0,
            201
        );
        let (_, report) = http(&p.url, Method::GET, "/api/v1/compliance", None);
        assert_eq!(control_status(&report, "NIST 800-53 IA-2"), met, "{report}");
    }
    let _ = p.terminate();

    // Signed models required and MQTT over TLS only: nothing is left not met.
    let offline = "http://127.0.0.1:9";
    let prefix = dir.path().join("signing");
    let prefix = prefix.to_str().expect("utf-8");
    let (ok, out) = client_command(offline, &["model", "keygen", "--out", prefix]);
    assert!(ok, "{out}");
    let config = dir.path().join("fabrik.toml");
    std::fs::write(
        &config,
        format!("[models]\ntrusted_keys = [\"{prefix}.pub\"]\n"),
    )
    .expect("config");
    let args = ["--config", config.to_str().expect("utf-8")];
    let tls_only = [
        ("FABRIK__MQTT__LISTEN", ""),
        ("FABRIK__MQTT__TLS_LISTEN", "127.0.0.1:0"),
    ];
    let p = Process::start_with_args(&data, &args, &tls_only);
    let (_, report) = http(&p.url, Method::GET, "/api/v1/compliance", None);
    assert_eq!(
        control_status(&report, "NIST 800-53 SI-7"),
        "met",
        "{report}"
    );
    assert_eq!(
        control_status(&report, "NIST 800-53 SC-8"),
        "partial",
        "{report}"
    );
    let (ok, out) = client_command(&p.url, &["compliance", "--strict"]);
    assert!(ok, "{out}");
    let _ = p.terminate();

    // The audit log edited behind Fabrik's back.
    let python = crate::support::python();
    let edited = std::process::Command::new(python)
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
             c.execute('UPDATE audit_log SET actor = \\'someone\\' WHERE seq = 1'); c.commit()",
            data.join("registry.db").to_str().expect("utf-8"),
        ])
        .status()
        .expect("python");
    assert!(edited.success());
    let p = Process::start_with_args(&data, &args, &tls_only);
    let (_, report) = http(&p.url, Method::GET, "/api/v1/compliance", None);
    assert_eq!(
        control_status(&report, "NIST 800-53 AU-2"),
        "not_met",
        "{report}"
    );
}
