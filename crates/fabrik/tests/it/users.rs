//! Users and roles in a real `fabrik run`: created with `fabrik user`, signed in by password to
//! a session cookie, held to their role by what the API refuses (403 naming the role), locked
//! after repeated wrong passwords, recorded under their own name when they acknowledge or
//! silence, and signed out for good when removed.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::mqtt::eventually;
use crate::support::{Process, TOKEN, fabrik_bin};

/// A request with a session cookie (or none): (status, JSON body, Set-Cookie session value).
pub(crate) fn call(
    url: &str,
    method: reqwest::Method,
    path: &str,
    cookie: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value, Option<String>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let mut req = crate::support::http_client().request(method, format!("{url}{path}"));
        if let Some(c) = cookie {
            req = req.header("cookie", format!("fabrik_session={c}"));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let session = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| {
                v.split(';')
                    .next()
                    .and_then(|kv| kv.strip_prefix("fabrik_session="))
                    .map(str::to_owned)
            });
        let text = r.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
            session,
        )
    })
}

fn cli(url: &str, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new(fabrik_bin())
        .args(["user"])
        .args(args)
        .args(["--url", url, "--token", TOKEN])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fabrik user");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("fabrik user");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Adds an operator with `fabrik user add`; returns the generated password it printed.
fn add_operator(url: &str, name: &str) -> String {
    add_user(url, name, "operator")
}

/// Adds a user of `role` with `fabrik user add`; returns the generated password it printed.
pub(crate) fn add_user(url: &str, name: &str, role: &str) -> String {
    let (ok, out) = cli(url, &["add", name, "--role", role], None);
    assert!(ok, "{out}");
    out.lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("the generated password is printed")
        .trim()
        .to_owned()
}

pub(crate) fn sign_in(
    url: &str,
    name: &str,
    password: &str,
) -> (u16, serde_json::Value, Option<String>) {
    call(
        url,
        reqwest::Method::POST,
        "/api/v1/session",
        None,
        Some(serde_json::json!({"username": name, "password": password})),
    )
}

#[test]
fn users_sign_in_with_passwords_and_are_held_to_their_roles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Process::start(dir.path(), &[]);
    let url = p.url.clone();

    // An operator with a generated password, a viewer with a chosen one.
    let password = add_operator(&url, "ana");
    let (ok, out) = cli(
        &url,
        &["add", "vic", "--role", "viewer", "--password-stdin"],
        Some("correct horse battery\n"),
    );
    assert!(ok, "{out}");
    let (ok, out) = cli(&url, &["add", "eve", "--password-stdin"], Some("short\n"));
    assert!(!ok, "a short password is refused: {out}");
    assert!(out.contains("at least 12"), "{out}");
    let (ok, out) = cli(&url, &["list"], None);
    assert!(
        ok && out.contains("ana") && out.contains("operator") && out.contains("vic"),
        "{out}"
    );

    // Sign-in: a cookie and who it is.
    let (status, who, cookie) = sign_in(&url, "ana", &password);
    assert_eq!(status, 200, "{who}");
    assert_eq!(who["role"], "operator");
    let ana = cookie.expect("session cookie");
    let (status, me, _) = call(
        &url,
        reqwest::Method::GET,
        "/api/v1/session",
        Some(&ana),
        None,
    );
    assert_eq!((status, me["name"].as_str()), (200, Some("ana")));

    // An operator reads and silences, but does not register devices or list users.
    let (status, _, _) = call(
        &url,
        reqwest::Method::GET,
        "/api/v1/devices",
        Some(&ana),
        None,
    );
    assert_eq!(status, 200);
    let (status, refusal, _) = call(
        &url,
        reqwest::Method::POST,
        "/api/v1/devices",
        Some(&ana),
        Some(serde_json::json!({"id": "pump-9"})),
    );
    assert_eq!(status, 403, "{refusal}");
    assert!(
        refusal.to_string().contains("needs the admin role"),
        "{refusal}"
    );
    let (status, _, _) = call(
        &url,
        reqwest::Method::GET,
        "/api/v1/users",
        Some(&ana),
        None,
    );
    assert_eq!(status, 403);
    let (status, silence, _) = call(
        &url,
        reqwest::Method::POST,
        "/api/v1/silences",
        Some(&ana),
        Some(serde_json::json!({"device": "pump-1", "duration": "1h", "by": "somebody-else"})),
    );
    assert_eq!(status, 201, "{silence}");
    assert_eq!(
        silence["by"], "ana",
        "a user is recorded under their own name"
    );

    // A viewer queries but does not silence or write.
    let (status, _, cookie) = sign_in(&url, "vic", "correct horse battery");
    assert_eq!(status, 200);
    let vic = cookie.expect("cookie");
    let (status, rows, _) = call(
        &url,
        reqwest::Method::POST,
        "/api/v1/query",
        Some(&vic),
        Some(serde_json::json!({"sql": "SELECT 1 AS one"})),
    );
    assert_eq!((status, rows[0]["one"].as_i64()), (200, Some(1)));
    let (status, _, _) = call(
        &url,
        reqwest::Method::POST,
        "/api/v1/silences",
        Some(&vic),
        Some(serde_json::json!({"duration": "1h"})),
    );
    assert_eq!(status, 403);
    let (status, _, _) = call(
        &url,
        reqwest::Method::DELETE,
        "/api/v1/users/ana",
        Some(&vic),
        None,
    );
    assert_eq!(status, 403);
    // ... and changes only their own password.
    let (status, _, _) = call(
        &url,
        reqwest::Method::PUT,
        "/api/v1/users/ana/password",
        Some(&vic),
        Some(serde_json::json!({"password": "taken over by vic"})),
    );
    assert_eq!(status, 403);

    // Wrong passwords: 401 each, then the name is locked (even for the right password).
    for _ in 0..5 {
        let (status, _, cookie) = sign_in(&url, "vic", "not the password");
        assert_eq!(status, 401);
        assert!(cookie.is_none());
    }
    let (status, locked, _) = sign_in(&url, "vic", "correct horse battery");
    assert_eq!(status, 429, "{locked}");
    assert!(locked.to_string().contains("try again"), "{locked}");
    let (status, body, _) = sign_in(&url, "nobody", "whatever it is");
    assert_eq!(status, 401);
    assert!(
        body.to_string().contains("unknown user or wrong password"),
        "{body}"
    );
    let (status, _, _) = call(
        &url,
        reqwest::Method::POST,
        "/api/v1/session",
        None,
        Some(serde_json::json!({"username": "ana"})),
    );
    assert_eq!(status, 400, "a user name without a password");

    // Removing a user ends their sessions at once.
    let (ok, out) = cli(&url, &["rm", "ana"], None);
    assert!(ok, "{out}");
    eventually("ana's session ends", || {
        call(
            &url,
            reqwest::Method::GET,
            "/api/v1/devices",
            Some(&ana),
            None,
        )
        .0 == 401
    });
    let (_, ended, _) = call(
        &url,
        reqwest::Method::GET,
        "/api/v1/devices",
        Some(&ana),
        None,
    );
    assert!(
        ended.to_string().contains("session has ended"),
        "an ended session says so: {ended}"
    );
    let (status, _, _) = sign_in(&url, "ana", &password);
    assert_eq!(status, 401);

    // Users outlive a restart.
    let (status, _) = p.terminate();
    assert!(status.success());
    let p = Process::start(dir.path(), &[]);
    let (ok, out) = cli(&p.url, &["list"], None);
    assert!(ok && out.contains("vic") && !out.contains("ana"), "{out}");
}

/// A person's right of access: everything kept about them, for an admin to hand over.
#[test]
fn everything_kept_about_a_person_is_exported_for_admins_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Process::start(dir.path(), &[]);
    let url = p.url.clone();
    let password = add_operator(&url, "ana");
    let (status, _, cookie) = sign_in(&url, "ana", &password);
    assert_eq!(status, 200);
    let ana = cookie.expect("cookie");
    let (status, silence) = {
        let (status, body, _) = call(
            &url,
            reqwest::Method::POST,
            "/api/v1/silences",
            Some(&ana),
            Some(
                serde_json::json!({"device": "pump-1", "duration": "1h", "comment": "bearing swap"}),
            ),
        );
        (status, body)
    };
    assert_eq!(status, 201, "{silence}");
    // An operator may not read anyone's data, their own included: an admin answers requests.
    let (status, _, _) = call(
        &url,
        reqwest::Method::GET,
        "/api/v1/people/ana",
        Some(&ana),
        None,
    );
    assert_eq!(status, 403);
    // Bob's silence, which ana ends: his name and comment are his, not hers to receive.
    let bob_password = add_operator(&url, "bob");
    let (_, _, cookie) = sign_in(&url, "bob", &bob_password);
    let bob = cookie.expect("cookie");
    let (status, bobs, _) = call(
        &url,
        reqwest::Method::POST,
        "/api/v1/silences",
        Some(&bob),
        Some(serde_json::json!({"device": "pump-2", "duration": "1h", "comment": "bob's reason"})),
    );
    assert_eq!(status, 201, "{bobs}");
    let id = bobs["id"].as_str().expect("silence id");
    let (status, ended, _) = call(
        &url,
        reqwest::Method::DELETE,
        &format!("/api/v1/silences/{id}"),
        Some(&ana),
        None,
    );
    assert!(status < 300, "{status} {ended}");
    // An admin resets ana's password: an entry about her, by someone else.
    let (ok, out) = cli(&url, &["passwd", "ana"], Some("a new long password\n"));
    assert!(ok, "{out}");
    // She owns a use case.
    let (status, body) = crate::mqtt::http(
        &url,
        reqwest::Method::PUT,
        "/api/v1/usecases/pumps",
        Some(serde_json::json!({
            "objective": "fewer stops", "owner": "ana", "stakeholders": ["bob"],
            "pilot": {"devices": ["pump-1"]}
        })),
    );
    assert_eq!(status, 201, "{body}");

    let (ok, out) = crate::support::client_command(&url, &["privacy", "export", "ana"]);
    assert!(ok, "{out}");
    let data: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(data["user"]["name"], "ana");
    assert_eq!(data["user"]["role"], "operator");
    assert!(data["user"].get("password_hash").is_none(), "{data}");
    let actions: Vec<&str> = data["audit_entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"sign-in"), "{actions:?}");
    assert!(actions.contains(&"POST /api/v1/silences"), "{actions:?}");
    assert!(
        actions.contains(&"GET /api/v1/people/{name}"),
        "the refusal: {actions:?}"
    );
    assert!(
        data["audit_entries"]
            .as_array()
            .expect("entries")
            .iter()
            .all(|e| e["actor"] == "ana"),
        "{data}"
    );
    let silences = data["silences"].as_array().expect("silences");
    assert_eq!(silences.len(), 2, "{data}");
    let own = silences
        .iter()
        .find(|s| s["by"] == "ana")
        .expect("her silence");
    assert_eq!(own["comment"], "bearing swap");
    let ended = silences
        .iter()
        .find(|s| s["ended_by"] == "ana")
        .expect("the one she ended");
    assert_eq!(
        (&ended["by"], &ended["comment"]),
        (&"".into(), &serde_json::Value::Null)
    );
    assert!(!out.contains("bob's reason"), "{out}");
    let about: Vec<&str> = data["audit_entries_about"]
        .as_array()
        .expect("entries about her")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        about.contains(&"PUT /api/v1/users/{name}/password"),
        "{about:?}"
    );
    assert_eq!(
        data["use_cases"],
        serde_json::json!([{"use_case": "pumps", "role": "owner"}])
    );
    // Reading her data is on record too, by whom and whose.
    let (_, out) = crate::support::client_command(&url, &["privacy", "export", "ana"]);
    let again: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert!(
        again["audit_entries_about"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["action"] == "GET /api/v1/people/{name}" && e["actor"] == "admin-token"),
        "{again}"
    );
    // Nobody else's data: a name never seen has nothing.
    let (ok, out) = crate::support::client_command(&url, &["privacy", "export", "nobody"]);
    assert!(ok, "{out}");
    let none: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert!(
        none["user"].is_null() && none["audit_entries"] == serde_json::json!([]),
        "{none}"
    );
    assert_eq!(none["silences"], serde_json::json!([]));

    // Her verdicts as data, beside bob's.
    let lines = "alert_labels,rule=r,device=pump-1 alert_id=\"a1\",feedback=\"true_positive\",\
                 true_positive=true,by=\"ana\",comment=\"ana saw the bearing\" 1700000000000000000\n\
                 alert_labels,rule=r,device=pump-2 alert_id=\"a2\",feedback=\"false_positive\",\
                 true_positive=false,by=\"bob\",comment=\"bob's\" 1700000000000000000\n";
    assert_eq!(
        crate::support::post_status(&url, "/api/v1/write", lines),
        200
    );

    // Erasure: refused without --yes, then done.
    let (ok, out) = crate::support::client_command(&url, &["privacy", "erase", "ana"]);
    assert!(!ok && out.contains("--yes"), "{out}");
    let (ok, out) = crate::support::client_command(&url, &["privacy", "erase", "ana", "--yes"]);
    assert!(ok, "{out}");
    let erased: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(erased["registry"]["user_removed"], true, "{erased}");
    assert!(
        erased["registry"]["audit_entries_by"].as_i64().unwrap() >= 3,
        "{erased}"
    );
    assert!(
        erased["registry"]["audit_entries_about"].as_i64().unwrap() >= 3,
        "{erased}"
    );
    assert_eq!(
        erased["registry"]["use_cases"],
        serde_json::json!(["pumps"])
    );
    assert_eq!(
        (&erased["silences"], &erased["alert_labels"]),
        (&2.into(), &1.into())
    );
    // Her session ended with her user.
    let (status, _, _) = call(
        &url,
        reqwest::Method::GET,
        "/api/v1/alerts",
        Some(&ana),
        None,
    );
    assert_eq!(status, 401);
    // The audit chain still verifies, and her name is gone from it.
    let (status, check) =
        crate::mqtt::http(&url, reqwest::Method::GET, "/api/v1/audit/verify", None);
    assert_eq!(status, 200);
    assert_eq!(check["intact"], true, "{check}");
    assert!(check["erased_entries"].as_i64().unwrap() >= 6, "{check}");
    let (_, audit) =
        crate::mqtt::http(&url, reqwest::Method::GET, "/api/v1/audit?limit=1000", None);
    let text = audit.to_string();
    assert!(
        !text.contains("\"ana\"") && !text.contains("/ana"),
        "{text}"
    );
    // Nothing is left under her name (looking her up again is on record, as any lookup is).
    let (_, out) = crate::support::client_command(&url, &["privacy", "export", "ana"]);
    let after: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    for kept in [
        "audit_entries",
        "audit_entries_about",
        "silences",
        "alert_labels",
        "use_cases",
    ] {
        assert_eq!(after[kept], serde_json::json!([]), "{kept}: {after}");
    }
    assert!(after["user"].is_null(), "{after}");
    // Her label rewritten in place, bob's as it was.
    let (status, rows) = crate::mqtt::http(
        &url,
        reqwest::Method::POST,
        "/api/v1/query",
        Some(
            serde_json::json!({"sql": "SELECT device, alert_id, \"by\", comment, true_positive \
                                        FROM alert_labels ORDER BY device"}),
        ),
    );
    assert_eq!(status, 200, "{rows}");
    assert_eq!(
        rows,
        serde_json::json!([
            {"device": "pump-1", "alert_id": "a1", "by": "(erased)", "comment": "", "true_positive": true},
            {"device": "pump-2", "alert_id": "a2", "by": "bob", "comment": "bob's", "true_positive": false}
        ])
    );
    let (status, _) = p.terminate();
    assert!(status.success());
}
