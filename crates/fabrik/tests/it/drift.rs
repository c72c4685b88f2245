//! Drift watches end to end: a pump that moves to a new operating point drifts from what its
//! model learnt, the checks are rows of `model_drift` and an alert rule's input, the API and
//! the CLI show them, and after the configured run of drifted checks the pump learns its new
//! normal; a pump that stays where it learnt never drifts.

use crate::mqtt::{eventually, http, query};
use crate::support::{Process, blocking_query_count, count_if_any, now_ns};

const SECOND: i64 = 1_000_000_000;

const CONFIG: &str = r#"
[[pipelines]]
name = "levels"
table = "pump"
signals = ["vibration", "current"]
window = "10s"
features = ["mean", "std"]
training_windows = 20
interval = "200ms"
lateness = "0s"
start = "earliest"

[pipelines.drift]
windows = 20
retrain_after = 2

[[alerting.rules]]
name = "input-drift"
table = "model_drift"
value = "drifted_share"
key = "device"
filter = "pipeline = 'levels'"
condition = "above"
threshold = 0.4
clear = 0.1
severity = "warning"
context = ["drifted_features"]
interval = "200ms"
start = "earliest"
"#;

/// 1,000 s of two pumps at 1 Hz from `start`; pump-a's levels (not their spread) move at
/// second 400.
fn history(start: i64) -> String {
    let mut body = String::new();
    for t in 0..1000_i64 {
        let wobble = ((t * 7919) % 13) as f64 / 13.0;
        for device in ["pump-a", "pump-b"] {
            let shift = if device == "pump-a" && t >= 400 {
                1.0
            } else {
                0.0
            };
            body.push_str(&format!(
                "pump,device={device} vibration={},current={} {}\n",
                2.0 + wobble * 0.2 + 3.0 * shift,
                10.0 + wobble + 5.0 * shift,
                start + t * SECOND
            ));
        }
    }
    body
}

fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[test]
fn a_pump_that_moves_drifts_raises_an_alert_and_learns_its_new_normal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fabrik.toml");
    std::fs::write(&config, CONFIG).expect("config");
    let p = Process::start_with_args(
        &dir.path().join("data"),
        &["--config", config.to_str().expect("utf-8")],
        &[],
    );
    let start = (now_ns() - 3600 * SECOND) / (10 * SECOND) * (10 * SECOND);
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", &history(start)),
        200
    );
    // 100 windows a pump: 20 train, 80 are scored, four checks of 20.
    // The table exists once the first check is written.
    eventually("every check is stored", || {
        count_if_any(&p.url, "SELECT count(*) AS n FROM model_drift") == Some(8)
    });
    let verdicts = |device: &str| -> String {
        let rows = query(
            &p.url,
            &format!(
                "SELECT dataset_drift, consecutive, retrained, drifted_features, anomalies \
                 FROM model_drift WHERE device = '{device}' ORDER BY time"
            ),
        );
        let columns = [
            "dataset_drift",
            "consecutive",
            "retrained",
            "drifted_features",
            "anomalies",
        ];
        let tuples: Vec<Vec<serde_json::Value>> = rows
            .iter()
            .map(|row| columns.iter().map(|c| row[*c].clone()).collect())
            .collect();
        serde_json::Value::from(tuples).to_string()
    };
    let moved = verdicts("pump-a");
    assert_eq!(
        moved,
        serde_json::json!([
            [false, 0, false, "", 0],
            [true, 1, false, "vibration.mean,current.mean", 20],
            [true, 2, true, "vibration.mean,current.mean", 20],
            [false, 0, false, "", 0],
        ])
        .to_string(),
        "pump-a: stable, drifted twice (then retrained), stable against its new normal"
    );
    assert!(
        !verdicts("pump-b").contains("true"),
        "pump-b never drifts nor retrains: {}",
        verdicts("pump-b")
    );

    // The API: each device's latest check, with every feature's test.
    let (code, checks) = http(
        &p.url,
        reqwest::Method::GET,
        "/api/v1/pipelines/levels/drift",
        None,
    );
    assert_eq!(code, 200, "{checks}");
    let checks = checks.as_array().expect("list").clone();
    assert_eq!(checks.len(), 2, "{checks:?}");
    let pump_a = checks
        .iter()
        .find(|c| c["device"] == "pump-a")
        .expect("pump-a");
    assert_eq!(pump_a["dataset_drift"], false, "{pump_a}");
    // It now compares with the windows it retrained on: seconds 600–800.
    assert_eq!(
        pump_a["reference_from"],
        rfc3339(start + 600 * SECOND),
        "{pump_a}"
    );
    assert_eq!(
        pump_a["reference_until"],
        rfc3339(start + 800 * SECOND),
        "{pump_a}"
    );
    assert_eq!(
        pump_a["current_until"],
        rfc3339(start + 1000 * SECOND),
        "{pump_a}"
    );
    let features = pump_a["features"].as_array().expect("features");
    let names: Vec<&str> = features
        .iter()
        .filter_map(|f| f["feature"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "vibration.mean",
            "vibration.std",
            "current.mean",
            "current.std"
        ]
    );
    assert!(
        features
            .iter()
            .all(|f| f["method"] == "ks" && f["threshold"] == 0.05)
    );
    // Its later inferences were scored by the retrained model.
    let retrained_inferences = blocking_query_count(
        &p.url,
        &format!(
            "SELECT count(*) FROM inferences WHERE device = 'pump-a' AND trained_from = {}",
            start + 600 * SECOND
        ),
    );
    assert_eq!(retrained_inferences, 20);
    let (code, _) = http(
        &p.url,
        reqwest::Method::GET,
        "/api/v1/pipelines/nothing/drift",
        None,
    );
    assert_eq!(code, 404);

    // The drift raised an alert on pump-a naming the features, which cleared once it had
    // learnt; pump-b had none.
    eventually("the drift alert resolved", || {
        let (_, alerts) = http(
            &p.url,
            reqwest::Method::GET,
            "/api/v1/alerts?state=resolved",
            None,
        );
        alerts
            .as_array()
            .is_some_and(|a| a.iter().any(|alert| alert["rule"] == "input-drift"))
    });
    let (_, alerts) = http(&p.url, reqwest::Method::GET, "/api/v1/alerts", None);
    let drift_alerts: Vec<&serde_json::Value> = alerts
        .as_array()
        .expect("alerts")
        .iter()
        .filter(|alert| alert["rule"] == "input-drift")
        .collect();
    assert_eq!(drift_alerts.len(), 1, "{alerts}");
    assert_eq!(drift_alerts[0]["key"], "pump-a");
    assert_eq!(
        drift_alerts[0]["annotations"]["drifted_features"], "vibration.mean,current.mean",
        "{}",
        drift_alerts[0]
    );

    // The CLI: a line per device, the drifted features' tests under it (all with --all).
    let (ok, text) =
        crate::support::client_command(&p.url, &["pipeline", "drift", "levels", "--all"]);
    assert!(ok, "{text}");
    assert!(text.contains("2 device(s), 0 drifted"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("pump-a") && l.contains("stable")),
        "{text}"
    );
    assert_eq!(text.matches(" ks ").count(), 8, "{text}");
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// A pump whose current stops following its load at second 1,200 (mirrored around its level:
/// each signal keeps its distribution) drifts by reconstruction in the checks after the break,
/// with the numbers in `model_drift`; a watch that cannot draw its thresholds is refused.
#[test]
fn a_broken_relation_between_signals_drifts_by_reconstruction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fabrik.toml");
    let pipeline = |training: u32| {
        format!(
            "[[pipelines]]\nname = \"relation\"\ntable = \"pump\"\nsignals = [\"load\", \"current\"]\n\
             window = \"10s\"\nfeatures = [\"mean\", \"std\"]\ntraining_windows = {training}\n\
             interval = \"200ms\"\nlateness = \"0s\"\nstart = \"earliest\"\n\n\
             [pipelines.drift]\nmethod = \"reconstruction\"\nwindows = 20\n"
        )
    };
    std::fs::write(&config, pipeline(10)).expect("config");
    let checked = std::process::Command::new(crate::support::fabrik_bin())
        .args(["config", "check", config.to_str().expect("utf-8")])
        .output()
        .expect("config check");
    let said = String::from_utf8_lossy(&checked.stderr).into_owned()
        + &String::from_utf8_lossy(&checked.stdout);
    assert!(!checked.status.success(), "{said}");
    assert!(
        said.contains("drift.method") && said.contains("needs 20"),
        "{said}"
    );

    std::fs::write(&config, pipeline(40)).expect("config");
    let p = Process::start_with_args(
        &dir.path().join("data"),
        &["--config", config.to_str().expect("utf-8")],
        &[],
    );
    let start = (now_ns() - 3600 * SECOND) / (10 * SECOND) * (10 * SECOND);
    let mut body = String::new();
    for t in 0..2000_i64 {
        let load = (t as f64 * std::f64::consts::TAU / 97.0).sin();
        let wobble = ((t * 7919) % 13) as f64 / 13.0 * 0.1;
        let follows = if t >= 1200 { -2.0 } else { 2.0 };
        body.push_str(&format!(
            "pump,device=pump-a load={},current={} {}\n",
            2.0 + load + wobble,
            10.0 + follows * load + wobble,
            start + t * SECOND
        ));
    }
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", &body),
        200
    );
    // 200 windows: 40 train, 160 are scored, eight checks of 20; the break is at window 120.
    eventually("every check is stored", || {
        count_if_any(&p.url, "SELECT count(*) AS n FROM model_drift") == Some(8)
    });
    let rows = query(
        &p.url,
        "SELECT dataset_drift, reconstruction_error > reconstruction_upper AS above, \
         reconstruction_components, drifted_features FROM model_drift ORDER BY time",
    );
    let verdicts: Vec<bool> = rows
        .iter()
        .map(|row| row["dataset_drift"] == true)
        .collect();
    assert_eq!(
        verdicts,
        [false, false, false, false, true, true, true, true],
        "{rows:?}"
    );
    assert!(
        rows[4]["above"] == true && rows[0]["above"] == false,
        "{rows:?}"
    );
    assert!(
        rows[4]["reconstruction_components"]
            .as_i64()
            .is_some_and(|k| (1..4).contains(&k)),
        "{rows:?}"
    );
    let named = rows[4]["drifted_features"].as_str().unwrap_or_default();
    assert!(
        named.contains("current.mean") || named.contains("load.mean"),
        "{rows:?}"
    );
}
