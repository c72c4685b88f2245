//! `/api/v1/devices` against an in-process server: the registry's contract over HTTP.

use crate::support::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_registered_listed_changed_and_removed() {
    let s = Server::start().await;
    let create = |body: serde_json::Value| s.post("/api/v1/devices").json(&body).send();
    let r = create(serde_json::json!({"id": "pump-7", "type": "pump", "site": "north", "labels": {"line": "2"}}))
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let created: serde_json::Value = r.json().await.expect("json");
    let token = created["token"].as_str().expect("token shown once");
    assert!(token.starts_with("fdt_"));
    assert_eq!(created["state"], "never");

    // Bad input names what is wrong; a taken id is a conflict.
    let r = create(serde_json::json!({"id": "pump/7"}))
        .await
        .expect("bad id");
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(
        body["error"].as_str().expect("error").contains("device id"),
        "{body}"
    );
    let r = create(serde_json::json!({"id": "pump-7"}))
        .await
        .expect("dup");
    assert_eq!(r.status(), 409);
    let r = create(serde_json::json!({"id": "x", "colour": "red"}))
        .await
        .expect("unknown field");
    assert!(r.status().is_client_error());

    create(serde_json::json!({"id": "motor-1", "type": "motor", "site": "south"}))
        .await
        .expect("second");
    let get = |path: &str| {
        s.client
            .get(format!("{}{path}", s.url))
            .bearer_auth(crate::support::TOKEN)
            .send()
    };
    let list: Vec<serde_json::Value> = get("/api/v1/devices?site=north")
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], "pump-7");
    assert!(list[0].get("token").is_none(), "tokens are never listed");
    let list: Vec<serde_json::Value> = get("/api/v1/devices?label=line%3D2")
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list.len(), 1);
    // A misspelt filter, or a state no device can be in, is refused rather than answered
    // with every device or none; so is a parameter an endpoint does not take.
    for path in [
        "/api/v1/devices?sit=north",
        "/api/v1/devices?state=bogus",
        "/api/v1/devices/pump-7?x=1",
        "/api/v1/tables?x=1",
        "/api/v1/pipelines?state=failed",
    ] {
        let r = get(path).await.expect("get");
        assert_eq!(r.status(), 400, "{path}");
    }

    let r = s
        .client
        .patch(format!("{}/api/v1/devices/pump-7", s.url))
        .bearer_auth(crate::support::TOKEN)
        .json(&serde_json::json!({"name": "Feed pump", "labels": {"line": "3"}}))
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), 200);
    let d: serde_json::Value = r.json().await.expect("json");
    assert_eq!(d["name"], "Feed pump");
    assert_eq!(d["labels"]["line"], "3");

    let r = s
        .post("/api/v1/devices/pump-7/token")
        .send()
        .await
        .expect("rotate");
    assert_eq!(r.status(), 200);
    let rotated: serde_json::Value = r.json().await.expect("json");
    assert_ne!(rotated["token"].as_str(), Some(token));

    let events: Vec<serde_json::Value> = get("/api/v1/devices/pump-7/events")
        .await
        .expect("events")
        .json()
        .await
        .expect("json");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, vec!["token_rotated", "updated", "registered"]);

    let r = s
        .client
        .delete(format!("{}/api/v1/devices/pump-7", s.url))
        .bearer_auth(crate::support::TOKEN)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    assert_eq!(
        get("/api/v1/devices/pump-7").await.expect("gone").status(),
        404
    );
    // Without a token, nothing.
    let r = s
        .client
        .get(format!("{}/api/v1/devices", s.url))
        .send()
        .await
        .expect("anon");
    assert_eq!(r.status(), 401);
    s.shutdown().await;
}
