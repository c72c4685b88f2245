//! A challenger model in the shadow of a pipeline's model: it scores the same windows, its
//! verdicts go to `shadow_inferences` beside the champion's and raise alerts only on the
//! devices of an A/B split, and the comparison counts the windows both scored and the ones
//! operators labelled.

use crate::mqtt::{eventually, http, query};
use crate::support::{Process, count_if_any, now_ns};

const SECOND: i64 = 1_000_000_000;

/// The champion learns robust z-scores; the challenger, PCA T²+Q, has a threshold every
/// window's score is above, so it flags everything. A second pipeline on the same pumps and
/// windows has an alert rule of its own: its labels must not count for the first.
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
model = "pca_t2q"
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

[[alerting.rules]]
name = "alone-anomaly"
table = "inferences"
value = "score / threshold"
key = "device"
filter = "pipeline = 'alone'"
condition = "above"
threshold = 1.0
severity = "warning"
context = ["pipeline"]
interval = "200ms"
start = "earliest"
"#;

/// 600 s of three pumps at 1 Hz; pump-a's and pump-c's vibration jump by 3 from second 500.
fn history(start: i64) -> String {
    let mut body = String::new();
    for t in 0..600_i64 {
        let wobble = ((t * 7919) % 13) as f64 / 13.0;
        for device in ["pump-a", "pump-b", "pump-c"] {
            let fault = if device != "pump-b" && t >= 500 {
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

#[test]
fn a_shadow_model_scores_the_same_windows_without_alerting_and_is_compared() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = crate::support::start_configured(dir.path(), CONFIG);
    let start = (now_ns() - 3600 * SECOND) / (10 * SECOND) * (10 * SECOND);
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", &history(start)),
        200
    );
    // 60 windows a pump, 20 learnt from: 40 scored by each model.
    eventually("both models scored every window", || {
        count_if_any(&p.url, "SELECT count(*) AS n FROM shadow_inferences") == Some(120)
            && count_if_any(
                &p.url,
                "SELECT count(*) AS n FROM inferences WHERE pipeline = 'pumps'",
            ) == Some(120)
    });
    let rows = query(
        &p.url,
        "SELECT device, model, flag, champion_flag, champion_model, window_id \
         FROM shadow_inferences WHERE device = 'pump-a' ORDER BY time",
    );
    assert!(rows.iter().all(|r| r["flag"] == true), "{rows:?}");
    assert!(rows.iter().all(|r| r["model"] == "pca_t2q"), "{rows:?}");
    assert!(rows.iter().all(|r| r["champion_model"] == "robust_z"));
    let champion_flags = rows.iter().filter(|r| r["champion_flag"] == true).count();
    assert_eq!(champion_flags, 10, "the fault's ten windows");
    assert!(
        rows[0]["window_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("pumps/pump-a/"))
    );

    // Only the champion alerts: on pump-a and pump-c, though the challenger flagged every
    // window of every pump.
    let alerts_of = |rule: &str| crate::support::alerts_of(&p.url, rule);
    eventually("both pipelines' alerts fire", || {
        alerts_of("pump-anomaly").len() == 2 && alerts_of("alone-anomaly").len() == 2
    });
    let mut keys: Vec<String> = alerts_of("pump-anomaly")
        .iter()
        .map(|a| a["key"].as_str().unwrap_or_default().to_owned())
        .collect();
    keys.sort();
    assert_eq!(keys, ["pump-a", "pump-c"]);
    // Operators confirm pump-a's alert, call pump-c's false, and confirm the other
    // pipeline's alerts on the same windows (which must not count for this one).
    let ack = |alert: &serde_json::Value, feedback: &str| {
        let id = alert["id"].as_str().expect("id");
        let (ok, text) =
            crate::support::client_command(&p.url, &["alert", "ack", id, "--feedback", feedback]);
        assert!(ok, "{text}");
    };
    for alert in alerts_of("pump-anomaly") {
        let verdict = if alert["key"] == "pump-a" {
            "true_positive"
        } else {
            "false_positive"
        };
        ack(&alert, verdict);
    }
    for alert in alerts_of("alone-anomaly") {
        ack(&alert, "true_positive");
    }

    let (code, comparison) = http(
        &p.url,
        reqwest::Method::GET,
        "/api/v1/pipelines/pumps/shadow",
        None,
    );
    assert_eq!(code, 200, "{comparison}");
    assert_eq!(comparison["champion"], "robust_z");
    assert_eq!(comparison["challenger"], "pca_t2q");
    assert!(
        comparison["challenger_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("1+")),
        "{comparison}"
    );
    assert_eq!(comparison["windows"], 120, "{comparison}");
    assert_eq!(comparison["unpaired"], 0, "{comparison}");
    assert_eq!(comparison["champion_flags"], 20, "{comparison}");
    assert_eq!(comparison["challenger_flags"], 120, "{comparison}");
    assert_eq!(comparison["both_flagged"], 20, "{comparison}");
    assert_eq!(comparison["agreement"], 20.0 / 120.0, "{comparison}");
    // One label per alert of this pipeline: the other pipeline's two are not counted.
    assert_eq!(comparison["confirmed"], 1, "{comparison}");
    assert_eq!(
        comparison["confirmed_flagged_by_challenger"], 1,
        "{comparison}"
    );
    assert_eq!(comparison["false_alarms"], 1, "{comparison}");
    assert_eq!(
        comparison["false_alarms_flagged_by_challenger"], 1,
        "{comparison}"
    );
    // Both right on the confirmed fault, both wrong on the false alarm: nothing to decide.
    let decision = &comparison["decision"];
    assert_eq!(decision["verdict"], "undecided", "{comparison}");
    assert_eq!(decision["test"], "mSPRT");
    assert_eq!(
        (
            &decision["windows"],
            &decision["champion_right"],
            &decision["challenger_right"]
        ),
        (&2.into(), &1.into(), &1.into()),
        "{comparison}"
    );
    assert_eq!(decision["p_value"], 1.0, "{comparison}");
    let devices = comparison["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 3);
    assert_eq!(devices[1]["device"], "pump-b");
    assert_eq!(devices[1]["champion_flags"], 0);
    assert_eq!(devices[1]["challenger_flags"], 40);

    let (ok, text) = crate::support::client_command(&p.url, &["pipeline", "shadow", "pumps"]);
    assert!(ok, "{text}");
    assert!(text.contains("120 windows scored by both"), "{text}");
    assert!(text.contains("same verdict on 16.7 %"), "{text}");
    assert!(
        text.contains("confirmed faults (true positives): 1, flagged by the challenger too: 1"),
        "{text}"
    );
    assert!(
        text.contains("decision (mSPRT at alpha 0.05): undecided; right on 1 (champion) vs 1 (challenger) of 2 labelled windows"),
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
    for alpha in ["0", "0.6", "NaN"] {
        let (code, body) = status(&format!("/api/v1/pipelines/pumps/shadow?alpha={alpha}"));
        assert_eq!(code, 400, "alpha={alpha}: {body}");
        assert!(body.to_string().contains("`alpha`"), "{body}");
    }
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// An uploaded ONNX model as the challenger: checked when the pipeline is defined, counted as
/// a user of its model (which may then be neither deleted nor replaced by one that does not
/// fit it), and scoring in the shadow.
#[test]
fn an_uploaded_model_as_challenger_is_checked_and_held_like_the_pipelines_own() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../fabrik-onnx/tests/fixtures");
    let forest = std::fs::read(format!("{fixtures}/iforest_100.onnx")).expect("fixture");
    let projection = std::fs::read(format!("{fixtures}/scaler_pca4.onnx")).expect("fixture");
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Process::start_with_args(&dir.path().join("data"), &[], &[]);
    let start = (now_ns() - 3600 * SECOND) / (10 * SECOND) * (10 * SECOND);
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", &history(start)),
        200
    );
    // Eight features, as the forest takes.
    let definition = |challenger: &str, features: serde_json::Value| {
        serde_json::json!({
            "name": "champ",
            "table": "pump",
            "signals": ["vibration", "current"],
            "features": features,
            "training_windows": 10,
            "interval": "200ms",
            "lateness": "0s",
            "start": "earliest",
            "shadow": {"model": "onnx", "model_name": challenger},
        })
    };
    let eight = serde_json::json!(["mean", "std", "min", "max"]);
    let put = |body: serde_json::Value, dry_run: bool| {
        let path = if dry_run {
            "/api/v1/pipelines/champ?dry_run=true"
        } else {
            "/api/v1/pipelines/champ"
        };
        http(&p.url, reqwest::Method::PUT, path, Some(body))
    };

    // Not uploaded yet: a warning that the pipeline runs without it.
    let (code, dry) = put(definition("forest", eight.clone()), true);
    assert_eq!(code, 200, "{dry}");
    let warnings = dry["warnings"].to_string();
    assert!(
        warnings.contains("shadow: model `forest` is not uploaded")
            && warnings.contains("the shadow model does not run (the pipeline does)"),
        "{dry}"
    );
    let (code, stored) = crate::pipelines::put_bytes(&p.url, "/api/v1/models/forest", forest);
    assert_eq!(code, 201, "{stored}");
    // A challenger its model does not fit is refused, naming the shadow's field.
    let (code, error) = put(definition("forest", serde_json::json!(["mean"])), false);
    assert_eq!(code, 400, "{error}");
    let message = error["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("shadow.model_name") && message.contains("takes 8 features"),
        "{error}"
    );

    let (code, status) = put(definition("forest", eight), false);
    assert_eq!(code, 201, "{status}");
    eventually("the uploaded forest scores in the shadow", || {
        count_if_any(
            &p.url,
            "SELECT count(*) AS n FROM shadow_inferences WHERE model = 'onnx:forest'",
        )
        .is_some_and(|n| n > 0)
    });
    let (_, models) = http(&p.url, reqwest::Method::GET, "/api/v1/models", None);
    assert_eq!(
        models[0]["used_by"],
        serde_json::json!(["champ"]),
        "{models}"
    );
    // Its model can be neither replaced by one that does not fit it nor deleted.
    let (code, error) = crate::pipelines::put_bytes(&p.url, "/api/v1/models/forest", projection);
    assert_eq!(code, 409, "{error}");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("pipeline `champ`: as its shadow model")),
        "{error}"
    );
    let (code, error) = http(
        &p.url,
        reqwest::Method::DELETE,
        "/api/v1/models/forest",
        None,
    );
    assert_eq!(code, 409, "{error}");
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// An A/B split: the challenger's verdicts are the pipeline's on pump-c. It learns for ten
/// windows longer than the champion, whose verdicts stand in meanwhile.
const SPLIT_CONFIG: &str = r#"
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
use_case = "pumps-ab"

[pipelines.shadow]
model = "pca_t2q"
threshold = 0.000001
training_windows = 30
live_devices = ["pump-c"]

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

/// The A/B split's arms on the use case's KPI, recorded each interval of the KPI series as
/// `ab_kpis` rows (decision 0072): windows each model acted on, over the next half minute,
/// written as the pipeline would, and the pumps' own rows beside them. Each interval compared
/// is an OpenLineage run (decision 0082).
#[test]
fn an_ab_splits_kpis_are_recorded_as_a_series() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "{SPLIT_CONFIG}\n[usecases]\nrecord_every = \"1s\"\n\n[openlineage]\nfile = \"lineage.jsonl\"\n"
    );
    let p = crate::support::start_configured(dir.path(), &config);
    let (code, body) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/usecases/pumps-ab",
        Some(serde_json::json!({
            "objective": "Quieter pumps",
            "pilot": {"devices": ["pump-a", "pump-c"]},
            "kpis": [{"name": "vibration", "kind": "aggregate", "table": "pump",
                      "signal": "vibration", "aggregate": "mean", "unit": "mm/s"}]
        })),
    );
    assert_eq!(code, 201, "{body}");
    let (from, to) = (now_ns() - SECOND, now_ns() + 40 * SECOND);
    let mut lines = String::new();
    // One window a pump across the next 40 s: the champion's verdicts on pump-a, the
    // challenger's (live) on pump-c.
    for (device, live) in [("pump-a", false), ("pump-c", true)] {
        lines.push_str(&format!(
            "shadow_inferences,pipeline=pumps,device={device},model=pca_t2q flag=false,\
             score=0.1,window_id=\"{device}/0\",model_version=\"c1\",live={live},\
             window_start={from}i,window_end={to}i,trained_from=0i,trained_until=1i,\
             champion_model=\"robust_z\",champion_model_version=\"v1\",champion_flag=false,\
             champion_score=0.2 {}\n",
            to - 1
        ));
    }
    for k in 0..410 {
        let time = from + k * SECOND / 10;
        lines.push_str(&format!(
            "pump,device=pump-a vibration=2.0 {time}\npump,device=pump-c vibration=1.0 {time}\n"
        ));
    }
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", &lines),
        200
    );
    let recorded = || {
        query(
            &p.url,
            "SELECT champion, challenger, champion_devices, challenger_devices, \
             challenger_model, challenger_version, champion_version, unit, p_value \
             FROM ab_kpis WHERE pipeline = 'pumps' AND use_case = 'pumps-ab' \
             AND kpi = 'vibration' AND challenger IS NOT NULL ORDER BY time DESC LIMIT 1",
        )
    };
    eventually("an interval of the split recorded", || {
        count_if_any(
            &p.url,
            "SELECT count(*) AS n FROM ab_kpis WHERE challenger IS NOT NULL",
        )
        .is_some_and(|n| n > 0)
    });
    let row = &recorded()[0];
    assert_eq!(
        (
            &row["champion"],
            &row["challenger"],
            &row["champion_devices"],
            &row["challenger_devices"]
        ),
        (&2.0.into(), &1.0.into(), &1.into(), &1.into()),
        "{row}"
    );
    assert_eq!(
        (
            &row["challenger_model"],
            &row["challenger_version"],
            &row["champion_version"],
            &row["unit"]
        ),
        (
            &"pca_t2q".into(),
            &"c1".into(),
            &"v1".into(),
            &"mm/s".into()
        ),
        "{row}"
    );
    // One device an arm: one way to assign them apart, which tells nothing.
    assert_eq!(row["p_value"], 1.0, "{row}");
    // The comparison's lineage: from the arms' verdicts and the KPI's table into `ab_kpis`.
    let file = dir.path().join("data").join("lineage.jsonl");
    let compared = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|e| {
                e["job"]["name"] == "pipeline.pumps.ab_kpis" && e["eventType"] == "COMPLETE"
            })
            .collect()
    };
    eventually("an A/B comparison's run in the lineage file", || {
        !compared().is_empty()
    });
    let run = &compared()[0];
    let inputs: Vec<&str> = run["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(inputs, ["shadow_inferences", "pump"], "{run}");
    assert_eq!(run["outputs"][0]["name"], "ab_kpis");
    assert_eq!(
        run["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"], 1,
        "one KPI compared: {run}"
    );
    assert!(
        run["run"]["facets"]["nominalTime"]["nominalStartTime"].is_string(),
        "{run}"
    );
    let (status, _) = p.terminate();
    assert!(status.success());
}

#[test]
fn an_ab_split_lets_the_challenger_act_on_its_devices_and_labels_count_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = crate::support::start_configured(dir.path(), SPLIT_CONFIG);
    // The use case the pipeline serves, all three pumps in its pilot: its KPI is compared
    // between the arms.
    let (code, body) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/usecases/pumps-ab",
        Some(serde_json::json!({
            "objective": "Quieter pumps",
            "pilot": {"devices": ["pump-a", "pump-b", "pump-c"]},
            "kpis": [
                {"name": "vibration", "kind": "aggregate", "table": "pump",
                 "signal": "vibration", "aggregate": "mean", "unit": "mm/s"},
                {"name": "precision", "kind": "alert_precision", "rules": ["pump-anomaly"]}
            ]
        })),
    );
    assert_eq!(code, 201, "{body}");
    let start = (now_ns() - 3600 * SECOND) / (10 * SECOND) * (10 * SECOND);
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", &history(start)),
        200
    );
    // 60 windows a pump: the champion scores 40, the challenger 30.
    eventually("both models scored every window", || {
        count_if_any(&p.url, "SELECT count(*) AS n FROM shadow_inferences") == Some(90)
            && count_if_any(
                &p.url,
                "SELECT count(*) AS n FROM inferences WHERE pipeline = 'pumps'",
            ) == Some(120)
    });
    // pump-c's verdicts: the champion's while the challenger learnt, then the challenger's,
    // marked as such; the other pumps' are the champion's alone.
    let rows = query(
        &p.url,
        "SELECT device, model, count(*) AS n, sum(CASE WHEN challenger THEN 1 ELSE 0 END) AS c \
         FROM inferences WHERE pipeline = 'pumps' GROUP BY device, model ORDER BY device, model",
    );
    let summary: Vec<(String, String, i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["device"].as_str().unwrap_or_default().to_owned(),
                r["model"].as_str().unwrap_or_default().to_owned(),
                r["n"].as_i64().unwrap_or(-1),
                r["c"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    let expected = [
        ("pump-a", "robust_z", 40, 0),
        ("pump-b", "robust_z", 40, 0),
        ("pump-c", "pca_t2q", 30, 30),
        ("pump-c", "robust_z", 10, 0),
    ]
    .map(|(d, m, n, c)| (d.to_owned(), m.to_owned(), n, c));
    assert_eq!(summary, expected, "{rows:?}");

    // The challenger alerts on pump-c (it flags every window), the champion on pump-a.
    let alerts = || crate::support::alerts_of(&p.url, "pump-anomaly");
    eventually("pump-a's and pump-c's alerts fire", || alerts().len() == 2);
    let mut keys: Vec<String> = alerts()
        .iter()
        .map(|a| a["key"].as_str().unwrap_or_default().to_owned())
        .collect();
    keys.sort();
    assert_eq!(keys, ["pump-a", "pump-c"]);
    // The champion's span on pump-c, where it writes no rows once the challenger acts, is
    // kept beside the challenger's verdicts for a restart.
    let spans = query(
        &p.url,
        "SELECT count(DISTINCT champion_trained_until) AS n, \
         sum(CASE WHEN champion_trained_until IS NULL THEN 1 ELSE 0 END) AS missing \
         FROM shadow_inferences WHERE device = 'pump-c'",
    );
    assert_eq!(
        (&spans[0]["n"], &spans[0]["missing"]),
        (&1.into(), &0.into()),
        "{spans:?}"
    );
    let stand_in = query(
        &p.url,
        "SELECT DISTINCT trained_until FROM inferences WHERE device = 'pump-c' \
         AND model = 'robust_z'",
    );
    let kept = query(
        &p.url,
        "SELECT DISTINCT champion_trained_until AS trained_until FROM shadow_inferences \
         WHERE device = 'pump-c'",
    );
    assert_eq!(stand_in, kept);
    // pump-a's fault is confirmed; the challenger's alert on pump-c, which started before
    // pump-c's fault, is called false.
    for alert in alerts() {
        let verdict = if alert["key"] == "pump-a" {
            "true_positive"
        } else {
            "false_positive"
        };
        let id = alert["id"].as_str().expect("id");
        let (ok, text) =
            crate::support::client_command(&p.url, &["alert", "ack", id, "--feedback", verdict]);
        assert!(ok, "{text}");
    }

    let (code, c) = http(
        &p.url,
        reqwest::Method::GET,
        "/api/v1/pipelines/pumps/shadow",
        None,
    );
    assert_eq!(code, 200, "{c}");
    assert_eq!(
        (&c["windows"], &c["unpaired"], &c["live_windows"]),
        (&90.into(), &0.into(), &30.into()),
        "{c}"
    );
    assert_eq!(
        (
            &c["champion_flags"],
            &c["challenger_flags"],
            &c["both_flagged"]
        ),
        (&20.into(), &90.into(), &20.into()),
        "{c}"
    );
    // Both labels count, the challenger's alert's too: the champion would not have raised
    // that false alarm.
    assert_eq!(
        (
            &c["confirmed"],
            &c["confirmed_flagged_by_champion"],
            &c["confirmed_flagged_by_challenger"]
        ),
        (&1.into(), &1.into(), &1.into()),
        "{c}"
    );
    assert_eq!(
        (
            &c["false_alarms"],
            &c["false_alarms_flagged_by_champion"],
            &c["false_alarms_flagged_by_challenger"]
        ),
        (&1.into(), &0.into(), &1.into()),
        "{c}"
    );
    let d = &c["decision"];
    assert_eq!(
        (&d["windows"], &d["champion_right"], &d["challenger_right"]),
        (&2.into(), &2.into(), &1.into()),
        "{c}"
    );
    let devices = c["devices"].as_array().expect("devices");
    let live: Vec<(&str, i64)> = devices
        .iter()
        .map(|d| {
            (
                d["device"].as_str().unwrap_or_default(),
                d["live_windows"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(live, [("pump-a", 0), ("pump-b", 0), ("pump-c", 30)]);
    // The arms: the challenger acted on pump-c's 30 windows and flagged them all; the
    // champion on the other two pumps' 60. Three devices: three ways to pick the one.
    let arms = &c["arms"];
    assert_eq!(
        (
            &arms["challenger"]["devices"],
            &arms["challenger"]["windows"],
            &arms["challenger"]["alerts"]
        ),
        (&1.into(), &30.into(), &30.into()),
        "{c}"
    );
    assert_eq!(
        (&arms["champion"]["devices"], &arms["champion"]["windows"]),
        (&2.into(), &60.into()),
        "{c}"
    );
    assert_eq!(
        (
            &arms["alert_rate"]["permutations"],
            &arms["alert_rate"]["exact"]
        ),
        (&3.into(), &true.into()),
        "{c}"
    );

    let (ok, text) = crate::support::client_command(&p.url, &["pipeline", "shadow", "pumps"]);
    assert!(ok, "{text}");
    assert!(
        text.contains(
            "A/B split: the challenger's verdicts were the pipeline's on 30 of these windows"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "false alarms (false positives): 1, flagged by the champion: 0, by the challenger: 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("challenger acted on 1 device(s), 30 windows: 30 alerts (100.00 %)"),
        "{text}"
    );
    assert!(text.contains("over devices (all 3 assignments)"), "{text}");
    assert!(
        text.contains("FROM ab_kpis WHERE pipeline = 'pumps'"),
        "the per-interval series is named: {text}"
    );

    // The use case's KPI in each arm: each pump's mean vibration over the time each model
    // acted on it, as SQL over the same spans gives it (alert precision is the arms' own).
    let kpis = arms["kpis"].as_array().expect("kpis");
    assert_eq!(kpis.len(), 1, "{c}");
    let vibration = &kpis[0];
    assert_eq!(
        (
            &vibration["name"],
            &vibration["unit"],
            &vibration["champion_devices"],
            &vibration["challenger_devices"],
            &vibration["comparison"]["permutations"]
        ),
        (
            &"vibration".into(),
            &"mm/s".into(),
            &2.into(),
            &1.into(),
            &3.into()
        ),
        "{vibration}"
    );
    // Each run of windows is [first window's start, last window's end): one run a pump here.
    let mean_over_span = |device: &str, live: &str| -> (f64, f64) {
        let span = query(
            &p.url,
            &format!(
                "SELECT min(window_start) AS first, max(window_end) AS last \
                 FROM shadow_inferences WHERE device = '{device}' AND {live}"
            ),
        );
        let (first, last) = (
            span[0]["first"].as_i64().expect("first"),
            span[0]["last"].as_i64().expect("last"),
        );
        let mean = query(
            &p.url,
            &format!(
                "SELECT avg(vibration) AS v, count(*) AS n FROM pump WHERE device = '{device}' \
                 AND time >= to_timestamp_nanos({first}) AND time < to_timestamp_nanos({last})"
            ),
        );
        (
            mean[0]["v"].as_f64().expect("mean"),
            mean[0]["n"].as_f64().expect("rows"),
        )
    };
    let challenger = mean_over_span("pump-c", "live IS TRUE").0;
    // The arm pools the devices' means by their rows.
    let (a, b) = (
        mean_over_span("pump-a", "live IS NOT TRUE"),
        mean_over_span("pump-b", "live IS NOT TRUE"),
    );
    let champion = (a.0 * a.1 + b.0 * b.1) / (a.1 + b.1);
    let close = |field: &str, expected: f64| {
        let got = vibration[field].as_f64().expect(field);
        assert!(
            (got - expected).abs() < 1e-9,
            "{field}: {got} vs {expected}"
        );
    };
    close("challenger", challenger);
    close("champion", champion);
    assert!(
        text.contains("KPI vibration (mm/s, lower is better): challenger "),
        "{text}"
    );

    // A share outside 0..1 is refused, naming the field.
    let bad = serde_json::json!({
        "name": "pumps-2",
        "table": "pump",
        "signals": ["vibration"],
        "shadow": {"model": "pca_t2q", "live_share": 1.5},
    });
    let (code, error) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/pipelines/pumps-2?dry_run=true",
        Some(bad),
    );
    assert_eq!(code, 400, "{error}");
    assert!(error.to_string().contains("shadow.live_share"), "{error}");
    let (status, _) = p.terminate();
    assert!(status.success());
}
