//! A challenger model in the shadow of a pipeline's model: it scores the same windows, its
//! verdicts go to `shadow_inferences` beside the champion's and never raise alerts, and the
//! comparison counts the windows both scored and the ones operators labelled.

use crate::mqtt::{eventually, http, query};
use crate::support::{Process, now_ns};

const SECOND: i64 = 1_000_000_000;

/// The champion learns robust z-scores; the challenger is the same model with a threshold
/// every window's score is above, so it flags everything.
const CONFIG: &str = r#"
[[pipelines]]
name = "pumps"
table = "pump"
signals = ["vibration", "current"]
window = "10s"
features = ["mean", "std", "max"]
training_windows = 20
interval = "200ms"
lateness = "0s"
start = "earliest"

[pipelines.shadow]
model = "robust_z"
threshold = 0.000001

[[pipelines]]
name = "alone"
table = "pump"
signals = ["vibration"]
window = "10s"
interval = "200ms"
start = "earliest"

[[alerting.rules]]
name = "pump-anomaly"
table = "inferences"
value = "score / threshold"
key = "device"
filter = "pipeline = 'pumps'"
condition = "above"
threshold = 1.0
clear = 0.8
severity = "critical"
context = ["pipeline", "window_id"]
interval = "200ms"
start = "earliest"
"#;

/// 600 s of two pumps at 1 Hz; pump-a's vibration jumps by 3 from second 500.
fn history(start: i64) -> String {
    let mut body = String::new();
    for t in 0..600_i64 {
        let wobble = ((t * 7919) % 13) as f64 / 13.0;
        for device in ["pump-a", "pump-b"] {
            let fault = if device == "pump-a" && t >= 500 {
                3.0
            } else {
                0.0
            };
            body.push_str(&format!(
                "pump,device={device} vibration={},current={} {}\n",
                2.0 + wobble * 0.2 + fault,
                10.0 + wobble,
                start + t * SECOND
            ));
        }
    }
    body
}

fn count(url: &str, sql: &str) -> Option<u64> {
    let (code, rows) = http(
        url,
        reqwest::Method::POST,
        "/api/v1/query",
        Some(serde_json::json!({ "sql": sql })),
    );
    (code == 200).then(|| rows[0]["n"].as_u64()).flatten()
}

#[test]
fn a_shadow_model_scores_the_same_windows_without_alerting_and_is_compared() {
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
    // 60 windows a pump, 20 learnt from: 40 scored by each model.
    eventually("both models scored every window", || {
        count(&p.url, "SELECT count(*) AS n FROM shadow_inferences") == Some(80)
            && count(
                &p.url,
                "SELECT count(*) AS n FROM inferences WHERE pipeline = 'pumps'",
            ) == Some(80)
    });
    let rows = query(
        &p.url,
        "SELECT device, model, flag, champion_flag, champion_model, window_id \
         FROM shadow_inferences WHERE device = 'pump-a' ORDER BY time",
    );
    assert!(rows.iter().all(|r| r["flag"] == true), "{rows:?}");
    assert!(rows.iter().all(|r| r["champion_model"] == "robust_z"));
    let champion_flags = rows.iter().filter(|r| r["champion_flag"] == true).count();
    assert_eq!(champion_flags, 10, "the fault's ten windows");
    assert!(
        rows[0]["window_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("pumps/pump-a/"))
    );

    // Only the champion alerts: one alert, on pump-a, though the challenger flagged every
    // window of both pumps.
    eventually("the champion's alert fires", || {
        let (_, alerts) = http(&p.url, reqwest::Method::GET, "/api/v1/alerts", None);
        alerts.as_array().is_some_and(|a| !a.is_empty())
    });
    let (_, alerts) = http(&p.url, reqwest::Method::GET, "/api/v1/alerts", None);
    let alerts = alerts.as_array().expect("alerts").clone();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["key"], "pump-a");
    let id = alerts[0]["id"].as_str().expect("id").to_owned();
    let (ok, text) = crate::support::client_command(
        &p.url,
        &["alert", "ack", &id, "--feedback", "true_positive"],
    );
    assert!(ok, "{text}");

    let (code, comparison) = http(
        &p.url,
        reqwest::Method::GET,
        "/api/v1/pipelines/pumps/shadow",
        None,
    );
    assert_eq!(code, 200, "{comparison}");
    assert_eq!(comparison["champion"], "robust_z");
    assert_eq!(comparison["challenger"], "robust_z");
    assert_eq!(comparison["windows"], 80, "{comparison}");
    assert_eq!(comparison["champion_flags"], 10, "{comparison}");
    assert_eq!(comparison["challenger_flags"], 80, "{comparison}");
    assert_eq!(comparison["both_flagged"], 10, "{comparison}");
    assert_eq!(comparison["agreement"], 0.125, "{comparison}");
    assert_eq!(comparison["confirmed"], 1, "{comparison}");
    assert_eq!(
        comparison["confirmed_flagged_by_challenger"], 1,
        "{comparison}"
    );
    assert_eq!(comparison["false_alarms"], 0, "{comparison}");
    let devices = comparison["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[1]["device"], "pump-b");
    assert_eq!(devices[1]["champion_flags"], 0);
    assert_eq!(devices[1]["challenger_flags"], 40);

    let (ok, text) = crate::support::client_command(&p.url, &["pipeline", "shadow", "pumps"]);
    assert!(ok, "{text}");
    assert!(text.contains("80 windows scored by both"), "{text}");
    assert!(text.contains("same verdict on 12.5 %"), "{text}");
    assert!(
        text.contains("confirmed faults (true positives): 1, flagged by the challenger too: 1"),
        "{text}"
    );

    // A pipeline without a shadow model, an unknown one, and a period out of range.
    let status = |path: &str| http(&p.url, reqwest::Method::GET, path, None);
    let (code, body) = status("/api/v1/pipelines/alone/shadow");
    assert_eq!(code, 404, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("no shadow model")),
        "{body}"
    );
    assert_eq!(status("/api/v1/pipelines/nothing/shadow").0, 404);
    let (code, body) = status("/api/v1/pipelines/pumps/shadow?days=0");
    assert_eq!(code, 400, "{body}");
    let (status, _) = p.terminate();
    assert!(status.success());
}
