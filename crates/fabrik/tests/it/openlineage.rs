//! OpenLineage events end to end (decision 0080): a real `fabrik run` sends its pipelines' runs
//! and the models their devices learn to an HTTP endpoint that checks every event with
//! OpenLineage's own Python client (`tests/peers/openlineage_receiver.py`, PyPI
//! openlineage-python), and appends the same events to a file.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::mqtt::{eventually, http, publish, query, register};
use crate::pipelines::{steady_pump_a, write_recent_pump_a};
use crate::support::{Peer, free_port, now_ns, python, start_configured};

const RECEIVER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/peers/openlineage_receiver.py"
);
const KEY: &str = "catalog-key-7";

/// Each event as `job type`, for messages.
fn summary(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| format!("{} {}", e["job"]["name"], e["eventType"]))
        .collect()
}

/// Each run's events: a START first, then RUNNING events only, then exactly one COMPLETE,
/// FAIL or ABORT, and nothing after it.
fn every_run_begins_and_ends_once(events: &[Value]) {
    let mut runs: Vec<&Value> = events.iter().map(|e| &e["run"]["runId"]).collect();
    runs.sort_by_key(|id| id.to_string());
    runs.dedup();
    for id in runs {
        let types: Vec<&str> = events
            .iter()
            .filter(|e| e["run"]["runId"] == *id)
            .map(|e| e["eventType"].as_str().unwrap_or("?"))
            .collect();
        let well_formed = types.len() >= 2
            && types[0] == "START"
            && matches!(types[types.len() - 1], "COMPLETE" | "FAIL" | "ABORT")
            && types[1..types.len() - 1].iter().all(|t| *t == "RUNNING");
        assert!(well_formed, "run {id}: {types:?}");
    }
}

/// The receiver on a free port, recording to `out` and refusing the first `refuse` requests
/// with 503; stopped on drop.
fn catalog(out: &Path, refuse: u32) -> (u16, Peer) {
    let port = free_port();
    let mut receiver = Command::new(python());
    receiver
        .arg(RECEIVER)
        .arg(port.to_string())
        .arg(out)
        .arg(refuse.to_string());
    let peer = Peer::listening(
        receiver,
        port,
        "the OpenLineage receiver needs Python with openlineage-python (.ci/run installs it)",
    );
    (port, peer)
}

/// The complete lines of a JSON-lines file, each parsed: a last line still being written (no
/// newline yet) is left for the next read.
fn lines(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// The events the catalog accepted.
fn accepted(out: &Path) -> Vec<Value> {
    lines(out)
        .into_iter()
        .filter(|l| l.get("event").is_some() && l.get("error").is_none())
        .map(|l| l["event"].clone())
        .collect()
}

fn of<'a>(events: &'a [Value], job: &str, event_type: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["job"]["name"] == job && e["eventType"] == event_type)
        .collect()
}

fn schema(dataset: &Value) -> Vec<(String, String)> {
    dataset["facets"]["schema"]["fields"]
        .as_array()
        .map(|fields| {
            fields
                .iter()
                .map(|f| {
                    (
                        f["name"].as_str().unwrap_or_default().to_owned(),
                        f["type"].as_str().unwrap_or("-").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A configuration with `before`, lineage to the catalog on `port` and to `lineage.jsonl`, and
/// an alert rule that never fires, whose run is open while Fabrik runs.
fn hot_rule_reported_to(port: u16, before: &str) -> String {
    format!(
        r#"{before}
[openlineage]
url = "http://127.0.0.1:{port}"
file = "lineage.jsonl"

[[alerting.rules]]
name = "hot"
table = "oven"
value = "celsius"
key = "device"
condition = "above"
threshold = 250.0
"#
    )
}

/// The list of open runs in the data directory under `dir`; `null` while there is none.
fn open_runs(dir: &Path) -> Value {
    std::fs::read(dir.join("data").join("openlineage-open-runs.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[test]
fn pipelines_and_the_models_their_devices_learn_reach_a_lineage_catalog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("catalog.jsonl");
    let file = dir.path().join("lineage.jsonl");
    let missing = dir.path().join("missing.onnx");
    // The first request is refused: the sender must try it again.
    let (port, _catalog) = catalog(&out, 1);
    let config = format!(
        r#"
[updates]
node = "edge-7"

[openlineage]
url = "http://127.0.0.1:{port}/"
api_key = "{KEY}"
file = "{file}"
running_interval = "1s"

[[pipelines]]
name = "broken"
table = "pump"
signals = ["vibration"]
model = "onnx"
model_path = "{missing}"

[[alerting.rules]]
name = "recent-anomaly"
table = "inferences"
value = "score / threshold"
key = "device"
filter = "pipeline = 'recent'"
condition = "above"
threshold = 1.0
context = ["top_signal"]
"#,
        file = file.display(),
        missing = missing.display(),
    );
    let p = start_configured(dir.path(), &config);

    // A pipeline that fails to load is a run that started and failed, saying why.
    eventually("the failed pipeline's run at the catalog", || {
        !of(&accepted(&out), "pipeline.broken", "FAIL").is_empty()
    });
    let events = accepted(&out);
    let failed = of(&events, "pipeline.broken", "FAIL")[0];
    let started = of(&events, "pipeline.broken", "START");
    assert_eq!(started.len(), 1, "{:?}", summary(&events));
    assert_eq!(started[0]["run"]["runId"], failed["run"]["runId"]);
    let message = failed["run"]["facets"]["errorMessage"]["message"]
        .as_str()
        .expect("an error message");
    assert!(message.contains("missing.onnx"), "{message}");
    assert_eq!(failed["job"]["namespace"], "fabrik://edge-7");
    assert_eq!(
        failed["inputs"][1]["namespace"], "file",
        "the ONNX model file, named as OpenLineage names local files: {failed}"
    );

    // An alert rule is a streaming job from its table to the alerts, with the query it reads.
    // (The alerts module starts after the pipelines, and the catalog refused the first event:
    // its START may come after the broken pipeline's end.)
    eventually("the alert rule's run at the catalog", || {
        !of(&accepted(&out), "alert_rule.recent-anomaly", "START").is_empty()
    });
    let events = accepted(&out);
    let rule = of(&events, "alert_rule.recent-anomaly", "START");
    assert_eq!(rule.len(), 1, "{:?}", summary(&events));
    let rule = rule[0];
    assert_eq!(rule["inputs"][0]["name"], "inferences");
    assert_eq!(rule["outputs"][0]["name"], "alerting.alerts");
    let sql = rule["job"]["facets"]["sql"]["query"]
        .as_str()
        .expect("the rule's query");
    assert!(
        sql.contains("FROM \"inferences\"") && sql.contains("pipeline = 'recent'"),
        "{sql}"
    );

    // Forty seconds of pump-a at 5 Hz, stored before the pipeline is defined: it learns from
    // them at once.
    let now = now_ns();
    write_recent_pump_a(&p.url, now);
    let definition = serde_json::json!({
        "name": "recent",
        "table": "pump",
        "signals": ["vibration", "current"],
        "window": "2s",
        "training_windows": 10,
        "interval": "200ms",
        "lateness": "0s",
        "start": "now",
    });
    let (code, body) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/pipelines/recent",
        Some(definition.clone()),
    );
    assert_eq!(code, 201, "{body}");
    // Live windows are scored, and the run reports the rows it wrote every second.
    eventually("a RUNNING event with the inferences written", || {
        assert_eq!(
            crate::support::post_status(&p.url, "/api/v1/write", &steady_pump_a(now_ns())),
            200
        );
        of(&accepted(&out), "pipeline.recent", "RUNNING")
            .iter()
            .any(|e| {
                e["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"].as_u64() > Some(0)
            })
    });
    let events = accepted(&out);
    let start = of(&events, "pipeline.recent", "START");
    assert_eq!(start.len(), 1, "{:?}", summary(&events));
    let start = start[0];
    let run_id = start["run"]["runId"].as_str().expect("a run id").to_owned();
    assert_eq!(
        start["job"]["facets"]["jobType"]["processingType"],
        "STREAMING"
    );
    let table = &start["inputs"][0];
    assert_eq!(
        (table["namespace"].as_str(), table["name"].as_str()),
        (Some("fabrik://edge-7"), Some("pump"))
    );
    assert_eq!(
        schema(table),
        [
            ("time".to_owned(), "timestamp".to_owned()),
            ("device".to_owned(), "string".to_owned()),
            ("vibration".to_owned(), "float".to_owned()),
            ("current".to_owned(), "float".to_owned()),
        ],
        "the columns the pipeline reads, typed as the store holds them"
    );
    assert_eq!(start["outputs"][0]["name"], "inferences");
    assert!(
        schema(&start["outputs"][0]).contains(&("score".to_owned(), "float".to_owned())),
        "{start}"
    );

    // pump-a's model: a training run under the pipeline's, whose output is that device's
    // model, versioned by the span it learnt from — the span its inferences name.
    let trained = of(&events, "pipeline.recent.training", "COMPLETE");
    assert_eq!(
        trained.len(),
        1,
        "one device, trained once: {:?}",
        summary(&events)
    );
    let trained = trained[0];
    assert_eq!(
        of(&events, "pipeline.recent.training", "START")[0]["run"]["runId"],
        trained["run"]["runId"]
    );
    assert_eq!(trained["run"]["facets"]["parent"]["run"]["runId"], run_id);
    assert_eq!(
        trained["run"]["facets"]["parent"]["job"]["name"],
        "pipeline.recent"
    );
    let rows = query(
        &p.url,
        "SELECT model_version, trained_from, trained_until FROM inferences \
         WHERE pipeline = 'recent' LIMIT 1",
    );
    let row = &rows[0];
    let (from, until) = (
        row["trained_from"].as_i64().expect("trained_from"),
        row["trained_until"].as_i64().expect("trained_until"),
    );
    assert!(
        from < until && until <= now,
        "learnt from the stored history: {row}"
    );
    let nominal = &trained["run"]["facets"]["nominalTime"];
    assert_eq!(nominal["nominalStartTime"], rfc3339(from));
    assert_eq!(nominal["nominalEndTime"], rfc3339(until));
    let model = &trained["outputs"][0];
    assert_eq!(model["name"], "models/recent/pump-a");
    assert_eq!(
        model["facets"]["version"]["datasetVersion"],
        format!(
            "{}@{}",
            row["model_version"].as_str().expect("model_version"),
            rfc3339(until)
        )
    );

    // A redefinition ends the run and starts another.
    let mut changed = definition;
    changed["features"] = serde_json::json!(["mean", "max"]);
    let (code, body) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/pipelines/recent",
        Some(changed),
    );
    assert_eq!(code, 200, "{body}");
    eventually("the replaced run's end and the new run's start", || {
        let events = accepted(&out);
        !of(&events, "pipeline.recent", "COMPLETE").is_empty()
            && of(&events, "pipeline.recent", "START").len() == 2
    });
    let events = accepted(&out);
    let ended = of(&events, "pipeline.recent", "COMPLETE")[0];
    assert_eq!(ended["run"]["runId"], run_id.as_str());
    let second = of(&events, "pipeline.recent", "START")[1]["run"]["runId"].clone();
    assert_ne!(second, run_id.as_str());

    // The run still going when Fabrik stops ends with it, before the process exits.
    let (status, log) = p.terminate();
    assert!(status.success(), "{status}: {}", log.join("\n"));
    let lines = lines(&out);
    let events = accepted(&out);
    assert!(
        of(&events, "pipeline.recent", "COMPLETE")
            .iter()
            .any(|e| e["run"]["runId"] == second),
        "the last run's end was sent at shutdown"
    );
    assert_eq!(
        of(&events, "alert_rule.recent-anomaly", "COMPLETE")[0]["run"]["runId"],
        rule["run"]["runId"],
        "the rule's run ended with the process"
    );

    // Every run began once and ended once, and sent nothing after its end; a running one
    // reported at most once a second, the rows it wrote never going down.
    every_run_begins_and_ends_once(&events);
    for run in events.iter().filter(|e| e["eventType"] == "START") {
        let id = &run["run"]["runId"];
        let running: Vec<&Value> = events
            .iter()
            .filter(|e| e["run"]["runId"] == *id && e["eventType"] == "RUNNING")
            .collect();
        for pair in running.windows(2) {
            let at = |e: &Value| {
                chrono::DateTime::parse_from_rfc3339(e["eventTime"].as_str().expect("time"))
                    .expect("RFC 3339")
            };
            assert!(
                at(pair[1]) - at(pair[0]) >= chrono::TimeDelta::milliseconds(900),
                "RUNNING events closer than running_interval: {pair:?}"
            );
            let rows = |e: &Value| {
                e["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"].as_u64()
            };
            assert!(rows(pair[1]) >= rows(pair[0]), "{pair:?}");
        }
    }
    // A device's model is reported once per run of the pipeline (each start learns anew).
    let mut models: Vec<(String, String)> = of(&events, "pipeline.recent.training", "COMPLETE")
        .iter()
        .map(|e| {
            (
                e["run"]["facets"]["parent"]["run"]["runId"].to_string(),
                e["outputs"][0]["name"].to_string(),
            )
        })
        .collect();
    let reported = models.len();
    models.sort();
    models.dedup();
    assert!(reported >= 1 && models.len() == reported, "{models:?}");

    // Every event passed OpenLineage's client, carried the key, and the refused one came again.
    let errors: Vec<&Value> = lines.iter().filter(|l| l.get("error").is_some()).collect();
    assert!(errors.is_empty(), "events the client refused: {errors:?}");
    assert_eq!(
        lines.iter().filter(|l| l.get("refused").is_some()).count(),
        1
    );
    assert!(
        lines
            .iter()
            .filter(|l| l.get("event").is_some())
            .all(|l| l["authorization"] == format!("Bearer {KEY}")),
        "a request without the key"
    );
    // The file holds the same events, in the order they were made.
    let in_file: Vec<Value> = std::fs::read_to_string(&file)
        .expect("the events file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("an event per line"))
        .collect();
    assert_eq!(in_file, events);
}

/// A catalog that cannot be reached keeps no event from the file, and does not keep Fabrik
/// from stopping: the file holds every run's start and end.
#[test]
fn the_file_gets_every_event_while_the_catalog_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing listens there.
    let down = free_port();
    let config = hot_rule_reported_to(down, "");
    let p = start_configured(dir.path(), &config);
    // Relative: in the data directory.
    let file = dir.path().join("data").join("lineage.jsonl");
    eventually("the rule's start in the file", || {
        !of(&lines(&file), "alert_rule.hot", "START").is_empty()
    });
    let (status, log) = p.terminate();
    assert!(status.success(), "{status}: {}", log.join("\n"));
    let events = lines(&file);
    every_run_begins_and_ends_once(&events);
    assert_eq!(
        of(&events, "alert_rule.hot", "COMPLETE").len(),
        1,
        "{:?}",
        summary(&events)
    );
    assert!(
        log.iter()
            .any(|l| l.contains("OpenLineage event not delivered to the catalog")),
        "the catalog's failures are logged: {}",
        log.join("\n")
    );
}

/// Ingest is a job from the MQTT endpoint's topic filters to the tables its messages filled,
/// and another from the HTTP write endpoints to theirs.
/// A process killed with runs open leaves them open in the catalog only until its next start,
/// which ABORTs them (each event rebuilt by openlineage-python at the receiver).
#[test]
fn ingest_is_a_job_and_a_killed_process_runs_are_aborted_at_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("catalog.jsonl");
    let (port, _catalog) = catalog(&out, 0);
    let config = hot_rule_reported_to(port, "[updates]\nnode = \"edge-9\"\n");
    let p = start_configured(dir.path(), &config);
    let mqtt = p.mqtt.clone().expect("the MQTT endpoint");
    let token = register(&p.url, "oven-1");
    let sent = publish(
        &mqtt,
        "mqttv311",
        "1",
        "oven-1",
        &token,
        "devices/oven-1/telemetry/oven",
        r#"{"celsius": 180.5}"#,
    );
    assert!(sent.status.success(), "{sent:?}");
    eventually("ingest's start at the catalog", || {
        !of(&accepted(&out), "ingest.mqtt", "START").is_empty()
    });
    let events = accepted(&out);
    let ingest = of(&events, "ingest.mqtt", "START")[0];
    assert_eq!(ingest["job"]["facets"]["jobType"]["jobType"], "INGEST");
    let topics: Vec<(&str, &str)> = ingest["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|i| {
            (
                i["namespace"].as_str().unwrap_or("?"),
                i["name"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert!(
        topics.contains(&("mqtt://edge-9", "devices/+/telemetry/+")),
        "the default mappings' topic filters: {topics:?}"
    );
    // The raw messages kept (`_raw`) are an output too.
    let outputs: Vec<(&str, &str, u64)> = ingest["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| {
            (
                o["namespace"].as_str().unwrap_or("?"),
                o["name"].as_str().unwrap_or("?"),
                o["outputFacets"]["outputStatistics"]["rowCount"]
                    .as_u64()
                    .unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        outputs,
        [
            ("fabrik://edge-9", "_raw", 1),
            ("fabrik://edge-9", "oven", 1)
        ]
    );
    // Rows written over HTTP are a job of their own, from the endpoint they came through.
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", "oven,device=oven-2 celsius=90"),
        200
    );
    eventually("the HTTP ingest's start at the catalog", || {
        !of(&accepted(&out), "ingest.http", "START").is_empty()
    });
    let events = accepted(&out);
    let http_ingest = of(&events, "ingest.http", "START")[0];
    assert_eq!(http_ingest["inputs"][0]["namespace"], "http://edge-9");
    assert_eq!(http_ingest["inputs"][0]["name"], "/api/v1/write");
    assert_eq!(http_ingest["outputs"][0]["name"], "oven");
    assert_eq!(
        http_ingest["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"],
        1
    );
    // The three runs' STARTs in the file too, before the kill.
    const JOBS: [&str; 3] = ["ingest.mqtt", "ingest.http", "alert_rule.hot"];
    let file = dir.path().join("data").join("lineage.jsonl");
    eventually("the runs' starts in the file", || {
        let events = lines(&file);
        JOBS.iter().all(|job| !of(&events, job, "START").is_empty())
    });
    let events = lines(&file);
    let mut open: Vec<String> = JOBS
        .iter()
        .map(|job| of(&events, job, "START")[0]["run"]["runId"].to_string())
        .collect();
    open.sort();
    let listed = || -> Vec<String> {
        let listed = open_runs(dir.path());
        let mut ids: Vec<String> = listed["runs"]
            .as_array()
            .map(|runs| runs.iter().map(|r| r["run_id"].to_string()).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    };
    eventually("the runs in the list of open runs", || listed() == open);
    // A second `fabrik run` on the same directory (a mistake) fails on the store's lock and
    // aborts none of the live process's runs.
    let mut second = Command::new(crate::support::fabrik_bin())
        .args(["run", "--config"])
        .arg(dir.path().join("fabrik.toml"))
        .env("FABRIK__STORE__DATA_DIR", dir.path().join("data"))
        .env("FABRIK__HTTP__LISTEN", "127.0.0.1:0")
        .env("FABRIK__MQTT__LISTEN", "127.0.0.1:0")
        .env("FABRIK__AUTH__ADMIN_TOKEN", crate::support::TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("a second fabrik run");
    let given_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while second.try_wait().expect("its status").is_none() {
        if std::time::Instant::now() > given_up {
            let _ = second.kill();
            panic!("a second fabrik run on the same directory kept running");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let second = second.wait_with_output().expect("its output");
    assert!(!second.status.success(), "{second:?}");
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("in use by another Fabrik process"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(listed(), open, "the live process's runs are still listed");
    p.kill9();
    assert!(
        lines(&file).iter().all(|e| e["eventType"] != "ABORT"),
        "the second process aborted nothing"
    );

    let p = start_configured(dir.path(), &config);
    eventually("the killed process's runs aborted at the catalog", || {
        accepted(&out)
            .iter()
            .filter(|e| e["eventType"] == "ABORT")
            .count()
            >= 3
    });
    let events = accepted(&out);
    let mut aborted: Vec<String> = events
        .iter()
        .filter(|e| e["eventType"] == "ABORT")
        .map(|e| e["run"]["runId"].to_string())
        .collect();
    aborted.sort();
    assert_eq!(aborted, open, "{:?}", summary(&events));
    // The new process's rule run is listed (and only it); a clean stop ends it and empties the
    // list.
    eventually("the restarted rule's run listed", || {
        let starts = of(&lines(&file), "alert_rule.hot", "START").len();
        starts == 2 && listed().len() == 1
    });
    let (status, log) = p.terminate();
    assert!(status.success(), "{status}: {}", log.join("\n"));
    assert!(listed().is_empty(), "a clean stop leaves no run open");
    // A third start aborts nothing: its rule starts with no ABORT before it.
    let p = start_configured(dir.path(), &config);
    eventually("the third start's rule run", || {
        of(&lines(&file), "alert_rule.hot", "START").len() == 3
    });
    let (status, _) = p.terminate();
    assert!(status.success());
    let in_file = lines(&file);
    assert_eq!(
        in_file.iter().filter(|e| e["eventType"] == "ABORT").count(),
        3,
        "{:?}",
        summary(&in_file)
    );
    // Every run in the file began once and ended once: the killed process's by their ABORT.
    every_run_begins_and_ends_once(&in_file);
}

/// A catalog that got a run's START but not its end (it went down before Fabrik stopped) gets
/// the run's ABORT at the next start; the file, which got the COMPLETE, gets none.
#[test]
fn a_catalog_that_missed_a_runs_end_gets_its_abort_at_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("catalog.jsonl");
    let (port, receiver) = catalog(&out, 0);
    let config = hot_rule_reported_to(port, "");
    let file = dir.path().join("data").join("lineage.jsonl");
    let listed = || open_runs(dir.path());
    let transports = |listed: &Value| -> Vec<String> {
        let mut transports: Vec<String> = listed["runs"][0]["transports"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        transports.sort();
        transports
    };
    let p = start_configured(dir.path(), &config);
    eventually("the rule's START at the catalog and in the file", || {
        !of(&accepted(&out), "alert_rule.hot", "START").is_empty()
            && !of(&lines(&file), "alert_rule.hot", "START").is_empty()
    });
    eventually("the rule's run listed on both transports", || {
        transports(&listed()) == ["file", "http"]
    });
    let run_id = of(&lines(&file), "alert_rule.hot", "START")[0]["run"]["runId"].clone();
    assert_eq!(listed()["runs"][0]["run_id"], run_id);
    drop(receiver);
    let (status, _) = p.terminate();
    assert!(status.success());
    assert_eq!(of(&lines(&file), "alert_rule.hot", "COMPLETE").len(), 1);
    let after = listed();
    assert_eq!(after["runs"].as_array().map(Vec::len), Some(1), "{after}");
    assert_eq!(after["runs"][0]["run_id"], run_id);
    assert_eq!(transports(&after), ["http"], "{after}");

    // The catalog back (on another port: the old one may have been taken meanwhile).
    let back = dir.path().join("catalog-back.jsonl");
    let (back_port, _receiver) = catalog(&back, 0);
    let config = config.replace(&format!(":{port}\""), &format!(":{back_port}\""));
    let p = start_configured(dir.path(), &config);
    eventually("the ABORT at the catalog", || {
        !of(&accepted(&back), "alert_rule.hot", "ABORT").is_empty()
    });
    assert_eq!(
        of(&accepted(&back), "alert_rule.hot", "ABORT")[0]["run"]["runId"],
        run_id
    );
    let (status, _) = p.terminate();
    assert!(status.success());
    let in_file = lines(&file);
    assert!(
        in_file.iter().all(|e| e["eventType"] != "ABORT"),
        "the file had the COMPLETE: {:?}",
        summary(&in_file)
    );
    every_run_begins_and_ends_once(&in_file);
}
