//! Inference pipelines in a real `fabrik run`: stored history replayed through a pipeline,
//! a fault found in the right device and windows, explained by the right signal, and traced
//! back to its exact input samples.

use crate::mqtt::{eventually, http, query};
use crate::support::{Process, blocking_query_count, now_ns};

const SECOND: i64 = 1_000_000_000;

const CONFIG: &str = r#"
[[pipelines]]
name = "pumps"
table = "pump"
signals = ["vibration", "current"]
window = "10s"
features = ["mean", "std", "max"]
training_windows = 20
threshold = "quantile:1.0*1.5"
interval = "200ms"
lateness = "0s"
start = "earliest"

[[pipelines]]
name = "pumps-forest"
table = "pump"
signals = ["vibration", "current"]
window = "10s"
features = ["mean", "std", "max"]
model = "iforest"
training_windows = 20
threshold = "quantile:1.0*1.05"
interval = "200ms"
lateness = "0s"
start = "earliest"

[[pipelines]]
name = "elsewhere"
table = "pump"
site = "no-such-site"
signals = ["vibration"]
interval = "200ms"
start = "earliest"

[[pipelines]]
name = "north"
table = "pump"
site = "north"
signals = ["vibration"]
window = "10s"
features = ["mean"]
training_windows = 20
interval = "200ms"
lateness = "0s"
start = "earliest"

[[pipelines]]
name = "no-table"
table = "compressor"
signals = ["vibration"]
interval = "200ms"
start = "earliest"

[[pipelines]]
name = "typo"
table = "pump"
signals = ["vibraton", "current"]
interval = "200ms"
start = "earliest"

[[pipelines]]
name = "too-short"
table = "pump"
signals = ["vibration"]
window = "2s"
min_samples = 3
interval = "200ms"
lateness = "0s"
start = "earliest"
"#;

/// 600 s of two pumps at 1 Hz ending an hour ago; pump-a's vibration jumps by 3 from
/// second 500.
fn history(start_ns: i64) -> String {
    let mut body = String::new();
    for t in 0..600i64 {
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
                start_ns + t * SECOND
            ));
        }
    }
    body
}

/// pump-a's row at `t` (ns): vibration and current wobbling a little around their normal, as
/// a 5 Hz stream gives them.
pub(crate) fn steady_pump_a(t: i64) -> String {
    let wobble = ((t / (SECOND / 5)) * 7919 % 13) as f64 / 13.0;
    format!(
        "pump,device=pump-a vibration={},current={} {t}\n",
        2.0 + wobble * 0.2,
        10.0 + wobble
    )
}

/// Writes the 40 s of [`steady_pump_a`] at 5 Hz before `now` (ns): twenty 2 s windows of ten
/// samples.
pub(crate) fn write_recent_pump_a(url: &str, now: i64) {
    let history: String = (1..=200)
        .map(|i| steady_pump_a(now - i * SECOND / 5))
        .collect();
    assert_eq!(
        crate::support::post_status(url, "/api/v1/write", &history),
        200
    );
}

/// Writes [`history`] from `start`.
fn write_history(url: &str, start: i64) {
    assert_eq!(
        crate::support::post_status(url, "/api/v1/write", &history(start)),
        200
    );
}

/// Writes [`history`] so that it ends an hour ago, aligned to the 10 s windows (each then
/// holds exactly ten samples), and returns its start.
fn write_history_an_hour_ago(url: &str) -> i64 {
    let now_ns = now_ns();
    let start = (now_ns - 3600 * SECOND) / (10 * SECOND) * (10 * SECOND);
    write_history(url, start);
    start
}

/// The status code of `DELETE path`.
fn delete(url: &str, path: &str) -> u16 {
    http(url, reqwest::Method::DELETE, path, None).0
}

#[test]
fn a_replayed_fault_is_flagged_explained_and_traced_to_its_samples() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fabrik.toml");
    std::fs::write(&config, CONFIG).expect("config");
    let data = dir.path().join("data");
    let p = Process::start_with_args(&data, &["--config", config.to_str().expect("utf-8")], &[]);
    for (device, site) in [("pump-a", "north"), ("pump-b", "south")] {
        let (code, body) = http(
            &p.url,
            reqwest::Method::POST,
            "/api/v1/devices",
            Some(serde_json::json!({"id": device, "site": site})),
        );
        assert_eq!(code, 201, "{body}");
    }

    let start = write_history_an_hour_ago(&p.url);

    await_inferences(
        &p.url,
        "pumps",
        80,
        "the pipeline scores every window after training",
    );
    // A built-in model's version: the algorithm's and a digest of the definition.
    let versions = query(
        &p.url,
        "SELECT DISTINCT model_version FROM inferences WHERE pipeline = 'pumps'",
    );
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert!(
        versions[0]["model_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("1+") && v.len() == 10),
        "{versions:?}"
    );
    // Selected by site: the north pump's 60 windows, 20 of them training; none of the south's.
    await_inferences(&p.url, "north", 40, "the site's pipeline scores its pump");
    assert_eq!(
        blocking_query_count(
            &p.url,
            "SELECT count(*) FROM inferences WHERE pipeline = 'north' AND device <> 'pump-a'"
        ),
        0
    );
    let (_, status) = http(
        &p.url,
        reqwest::Method::GET,
        "/api/v1/pipelines/pumps",
        None,
    );
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["windows"], 120, "{status}");
    assert_eq!(status["devices"], 2, "{status}");
    assert_eq!(status["training_devices"], 0, "{status}");
    assert_eq!(status["anomalies"], 10, "{status}");
    assert_eq!(status["features"][0], "vibration.mean", "{status}");

    let flagged = query(
        &p.url,
        "SELECT device, window_start, window_end, samples, top_signal, contributions, window_id, \
         last_arrival, trained_from, trained_until FROM inferences \
         WHERE pipeline = 'pumps' AND flag = true ORDER BY time",
    );
    assert_eq!(flagged.len(), 10, "{flagged:?}");
    for row in &flagged {
        assert_eq!(row["device"], "pump-a", "{row}");
        // The data its model learnt from: the pump's first 20 windows of 10 s.
        assert_eq!(row["trained_from"].as_i64(), Some(start), "{row}");
        assert_eq!(
            row["trained_until"].as_i64(),
            Some(start + 200 * SECOND),
            "{row}"
        );
        assert_eq!(row["top_signal"], "vibration", "{row}");
        assert!(row["window_start"].as_i64().expect("start") >= start + 500 * SECOND);
        let contributions: serde_json::Value =
            serde_json::from_str(row["contributions"].as_str().expect("json")).expect("json");
        let top = contributions
            .as_object()
            .expect("object")
            .iter()
            .max_by(|a, b| a.1.as_f64().partial_cmp(&b.1.as_f64()).expect("numbers"))
            .expect("a contribution");
        assert!(top.0.starts_with("vibration."), "{contributions}");
    }
    // No window of the healthy pump is flagged.
    assert_eq!(
        blocking_query_count(
            &p.url,
            "SELECT count(*) FROM inferences WHERE device = 'pump-b' AND flag = true"
        ),
        0
    );
    // Lineage: the window's id and span select exactly the samples it was computed from.
    let first = &flagged[0];
    let (ws, we) = (
        first["window_start"].as_i64().expect("start"),
        first["window_end"].as_i64().expect("end"),
    );
    assert_eq!(
        first["window_id"].as_str(),
        Some(format!("pumps/pump-a/{ws}").as_str())
    );
    let inputs = blocking_query_count(
        &p.url,
        &format!(
            "SELECT count(*) FROM pump WHERE device = 'pump-a' \
             AND time >= to_timestamp_nanos({ws}) AND time < to_timestamp_nanos({we})"
        ),
    );
    assert_eq!(Some(inputs), first["samples"].as_i64());
    assert_eq!(inputs, 10);
    // A sample that arrives later for that span was not part of the inference: the arrival
    // bound still selects exactly its inputs.
    let late = format!("pump,device=pump-a vibration=99,current=1 {}\n", ws + 1);
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", &late),
        200
    );
    let last_arrival = first["last_arrival"].as_i64().expect("last_arrival");
    let span = format!(
        "FROM pump WHERE device = 'pump-a' AND time >= to_timestamp_nanos({ws}) \
         AND time < to_timestamp_nanos({we})"
    );
    assert_eq!(
        blocking_query_count(&p.url, &format!("SELECT count(*) {span}")),
        11
    );
    assert_eq!(
        blocking_query_count(
            &p.url,
            &format!("SELECT count(*) {span} AND _raw_id <= {last_arrival}")
        ),
        10
    );

    // The Isolation Forest grown on each pump's own first windows finds the same fault.
    await_inferences(
        &p.url,
        "pumps-forest",
        80,
        "the forest pipeline scores every window",
    );
    let forest_flags = query(
        &p.url,
        "SELECT device, window_start, model, top_signal FROM inferences \
         WHERE pipeline = 'pumps-forest' AND flag = true ORDER BY time",
    );
    assert_eq!(forest_flags.len(), 10, "{forest_flags:?}");
    for row in &forest_flags {
        assert_eq!(row["device"], "pump-a", "{row}");
        assert_eq!(row["model"], "iforest", "{row}");
        assert_eq!(row["top_signal"], "vibration", "{row}");
        assert!(row["window_start"].as_i64().expect("start") >= start + 500 * SECOND);
    }

    // The pipeline whose selection matches nothing says so; the others ran regardless.
    let (_, all) = http(&p.url, reqwest::Method::GET, "/api/v1/pipelines", None);
    let elsewhere = all
        .as_array()
        .expect("list")
        .iter()
        .find(|s| s["name"] == "elsewhere")
        .cloned()
        .expect("listed");
    assert!(
        elsewhere["error"]
            .as_str()
            .is_some_and(|e| e.contains("no registered device")),
        "{elsewhere}"
    );
    // Two samples per 2 s window against `min_samples` 3: never a complete window, and the
    // status says why instead of nothing.
    eventually("the starved pipeline says why", || {
        let (_, too_short) = http(
            &p.url,
            reqwest::Method::GET,
            "/api/v1/pipelines/too-short",
            None,
        );
        let why = too_short["error"].as_str().unwrap_or_default();
        too_short["inferences"] == 0
            && why.contains("no complete window yet")
            && why.contains("2 sample(s) of `vibration`")
            && why.contains("`min_samples` is 3")
    });
    // A table nobody has written and a signal the table lacks are waits, named as such.
    let pipeline_error = |name: &str| {
        let (_, status) = http(
            &p.url,
            reqwest::Method::GET,
            &format!("/api/v1/pipelines/{name}"),
            None,
        );
        status["error"].as_str().unwrap_or_default().to_owned()
    };
    eventually("the pipeline on a missing table says so", || {
        pipeline_error("no-table").contains("table `compressor` has no rows yet")
    });
    eventually("the pipeline with a missing signal names it", || {
        let why = pipeline_error("typo");
        why.contains("table `pump` has no column `vibraton` yet")
            && why.contains("vibration")
            && !why.contains("`current`")
    });
    let (code, _) = http(&p.url, reqwest::Method::GET, "/api/v1/pipelines/nope", None);
    assert_eq!(code, 404);
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// The benchmark detectors as pipeline models: RART (NAB) with each feature its own stream and
/// the training windows its probationary period, and DBZ (SKAB) with each feature a channel.
#[test]
fn the_benchmark_detectors_flag_the_onset_of_a_replayed_fault_in_its_own_signal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fabrik.toml");
    std::fs::write(
        &config,
        r#"
[[pipelines]]
name = "pumps-rart"
table = "pump"
signals = ["vibration", "current"]
window = "10s"
features = ["mean"]
model = "rart"
training_windows = 20
interval = "200ms"
lateness = "0s"
start = "earliest"

[[pipelines]]
name = "pumps-dbz"
table = "pump"
signals = ["vibration", "current"]
window = "2s"
min_samples = 2
features = ["mean"]
model = "dbz"
training_windows = 140
interval = "200ms"
lateness = "0s"
start = "earliest"
"#,
    )
    .expect("config");
    let data = dir.path().join("data");
    let p = Process::start_with_args(&data, &["--config", config.to_str().expect("utf-8")], &[]);
    // Within one hour of the day, so RART's time-of-day evidence is the same on every run.
    let now_ns = now_ns();
    let hour = 3600 * SECOND;
    let start = (now_ns - 3 * hour) / hour * hour;
    write_history(&p.url, start);
    await_inferences(
        &p.url,
        "pumps-rart",
        80,
        "the pipeline scores every window after training",
    );
    // Neither names a threshold: each gets its model's own alarm level.
    for (name, threshold) in [("pumps-rart", "0.72"), ("pumps-dbz", "1.0")] {
        let (_, status) = pipeline_status(&p.url, name);
        assert_eq!(status["threshold"], threshold, "{status}");
    }
    let first = first_flag(&p.url, "pumps-rart", "rart");
    assert_eq!(
        first["window_start"].as_i64(),
        Some(start + 500 * SECOND),
        "the first window of the fault: {first}"
    );

    // DBZ's rolling mean of 20 two-second windows crosses its threshold within 40 s.
    await_inferences(
        &p.url,
        "pumps-dbz",
        320,
        "the DBZ pipeline scores every window after training",
    );
    let first = first_flag(&p.url, "pumps-dbz", "dbz");
    let onset = first["window_start"].as_i64().expect("start") - start;
    assert!(
        (500 * SECOND..540 * SECOND).contains(&onset),
        "first flag {} s into the history: {first}",
        onset / SECOND
    );
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// The first window pipeline `name` flagged, after checking that every flagged window is
/// pump-a's (the healthy pump-b never is), scored by `model` and led by the vibration.
fn first_flag(url: &str, name: &str, model: &str) -> serde_json::Value {
    let flagged = query(
        url,
        &format!(
            "SELECT device, window_start, model, top_signal FROM inferences \
             WHERE pipeline = '{name}' AND flag = true ORDER BY time"
        ),
    );
    for row in &flagged {
        assert_eq!(
            row["device"], "pump-a",
            "the healthy pump was flagged: {flagged:?}"
        );
        assert_eq!(row["model"], model, "{flagged:?}");
    }
    let first = flagged.first().expect("a flagged window").clone();
    assert_eq!(first["top_signal"], "vibration", "{flagged:?}");
    first
}

#[test]
fn config_check_names_every_pipeline_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        r#"
[[pipelines]]
name = "p"
table = "pump"
signals = ["v"]
features = ["mean", "median"]
model = "lstm"
threshold = "high"
window = "10s"
hop = "20s"
"#,
    )
    .expect("config");
    let out = std::process::Command::new(crate::support::fabrik_bin())
        .args(["config", "check"])
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "pipelines[0].features",
        "`median`",
        "pipelines[0].model",
        "`lstm`",
        "pipelines[0].threshold",
        "pipelines[0].hop",
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
}

#[test]
fn onnx_models_run_in_pipelines_and_one_that_does_not_fit_fails_alone() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../fabrik-onnx/tests/fixtures");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fabrik.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[pipelines]]
name = "forest"
table = "pump"
signals = ["vibration", "current"]
window = "10s"
features = ["mean", "std", "min", "max"]
model = "onnx"
model_path = "{fixtures}/iforest_100.onnx"
training_windows = 10
interval = "200ms"
lateness = "0s"
start = "earliest"

[[pipelines]]
name = "classifier"
table = "pump"
signals = ["vibration", "current"]
window = "10s"
features = ["mean", "std", "min", "max"]
model = "onnx"
model_path = "{fixtures}/rf_clf_50.onnx"
training_windows = 10
interval = "200ms"
lateness = "0s"
start = "earliest"

[pipelines.performance]
targets = "inspections"
target = "defect"
chunk = 10
reference_chunks = 6
metrics = ["roc_auc", "accuracy"]

[[pipelines]]
name = "misfit"
table = "pump"
signals = ["vibration"]
features = ["mean", "std", "max"]
model = "onnx"
model_path = "{fixtures}/iforest_100.onnx"
interval = "200ms"
start = "earliest"

[[pipelines]]
name = "missing"
table = "pump"
signals = ["vibration"]
model = "onnx"
model_path = "{fixtures}/no-such-model.onnx"
interval = "200ms"
start = "earliest"
"#
        ),
    )
    .expect("config");
    let p = Process::start_with_args(
        &dir.path().join("data"),
        &["--config", config.to_str().expect("utf-8")],
        &[],
    );
    let start = write_history_an_hour_ago(&p.url);
    // Every window of both pumps inspected, defects alternating window by window.
    let mut inspections = String::new();
    for k in 0..60 {
        for device in ["pump-a", "pump-b"] {
            inspections.push_str(&format!(
                "inspections,device={device} defect={} {}\n",
                k % 2 == 1,
                start + k * 10 * SECOND + 5 * SECOND
            ));
        }
    }
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", &inspections),
        200
    );
    // Alone this takes about 2 s; with the whole suite sharing two cores it once took longer
    // than the usual 20 s, so this wait is longer and says where the pipeline stood.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let (_, s) = http(
            &p.url,
            reqwest::Method::GET,
            "/api/v1/pipelines/forest",
            None,
        );
        if s["inferences"].as_u64().unwrap_or(0) >= 100 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ONNX pipeline did not score 100 windows in 90 s: {s}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (_, all) = http(&p.url, reqwest::Method::GET, "/api/v1/pipelines", None);
    let by_name = |name: &str| {
        all.as_array()
            .expect("list")
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .expect("listed")
    };
    assert_eq!(by_name("forest")["state"], "running");
    // A classifier's probability is flagged above one half unless told otherwise: the
    // calibrated default (largest training score × 1.5) could exceed 1.
    let classifier = by_name("classifier");
    assert_eq!(classifier["state"], "running", "{classifier}");
    assert_eq!(classifier["threshold"], "0.5", "{classifier}");
    let misfit = by_name("misfit");
    assert_eq!(misfit["state"], "failed", "{misfit}");
    assert!(
        misfit["error"]
            .as_str()
            .is_some_and(|e| e.contains("input `X` takes 8 features, the pipeline computes 3")),
        "{misfit}"
    );
    let missing = by_name("missing");
    assert_eq!(missing["state"], "failed", "{missing}");
    assert!(
        missing["error"]
            .as_str()
            .is_some_and(|e| e.contains("no-such-model.onnx")),
        "{missing}"
    );
    // Every inference names the model (the file's stem) and its content version.
    let versions = query(
        &p.url,
        "SELECT DISTINCT model_version, model FROM inferences WHERE pipeline = 'forest'",
    );
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(versions[0]["model"], "onnx:iforest_100");
    assert_eq!(
        versions[0]["model_version"].as_str().map(str::len),
        Some(16)
    );
    // The classifier's performance: fitted on its first 60 inspected windows, estimated on
    // every whole chunk of 10 after them (the other 40 of its 100 windows), with the realized
    // values beside.
    await_inferences(
        &p.url,
        "classifier",
        100,
        "the classifier scored every window",
    );
    let (code, report) = http(
        &p.url,
        reqwest::Method::GET,
        "/api/v1/pipelines/classifier/performance",
        None,
    );
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["problem"], serde_json::Value::Null, "{report}");
    assert_eq!(report["reference"]["windows"], 60, "{report}");
    assert_eq!(report["reference"]["positives"], 30, "{report}");
    let chunks = report["chunks"].as_array().expect("chunks");
    assert_eq!(chunks.len(), 4, "{report}");
    assert_eq!(report["pending"], 0, "{report}");
    let first = &chunks[0]["estimates"];
    assert_eq!(first[0]["metric"], "roc_auc");
    assert_eq!(first[1]["metric"], "accuracy");
    assert_eq!(chunks[0]["with_outcomes"], 10);
    assert!(first[1]["realized"].as_f64().is_some(), "{report}");
    let (ok, out) =
        crate::support::client_command(&p.url, &["pipeline", "performance", "classifier"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("reference: 60 windows with outcomes (30 positive) of 60 scored"),
        "{out}"
    );
    // The reference is fixed; asked for, a new one is looked for among the windows from a
    // time on (none after this one: no reference, said), or from the first window again.
    let fixed_at = report["reference"]["fixed_at"].as_i64().expect("fixed_at");
    let new_reference = |body: serde_json::Value| {
        http(
            &p.url,
            reqwest::Method::POST,
            "/api/v1/pipelines/classifier/performance/reference",
            Some(body),
        )
    };
    let (code, body) = new_reference(serde_json::json!({"from": "next tuesday"}));
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("`from` is `next tuesday`")),
        "{body}"
    );
    let (code, none) = new_reference(serde_json::json!({"from": "2100-01-01T00:00:00Z"}));
    assert_eq!(code, 200, "{none}");
    assert_eq!(none["reference"], serde_json::Value::Null, "{none}");
    assert!(
        none["problem"]
            .as_str()
            .is_some_and(|why| why.contains("since 2100-01-01")),
        "{none}"
    );
    let (ok, out) = crate::support::client_command(
        &p.url,
        &["pipeline", "performance", "classifier", "--new-reference"],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("reference: 60 windows with outcomes (30 positive) of 60 scored"),
        "{out}"
    );
    let (_, renewed) = http(
        &p.url,
        reqwest::Method::GET,
        "/api/v1/pipelines/classifier/performance",
        None,
    );
    assert!(
        renewed["reference"]["fixed_at"]
            .as_i64()
            .is_some_and(|at| at > fixed_at),
        "{renewed}"
    );
    // A pipeline without the section: 404, named.
    let (code, body) = http(
        &p.url,
        reqwest::Method::GET,
        "/api/v1/pipelines/forest/performance",
        None,
    );
    assert_eq!(code, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("[pipelines.performance]")),
        "{body}"
    );
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// A pipeline of the configuration file, which the API may read but not change.
const CONFIGURED_ONLY: &str = r#"
[[pipelines]]
name = "configured"
table = "pump"
signals = ["vibration"]
interval = "200ms"
lateness = "0s"
start = "earliest"
"#;

/// The `pumps` pipeline of [`CONFIG`] as an API definition, with `threshold`.
fn api_pumps(threshold: &str) -> serde_json::Value {
    serde_json::json!({
        "name": "api-pumps",
        "table": "pump",
        "signals": ["vibration", "current"],
        "window": "10s",
        "features": ["mean", "std", "max"],
        "training_windows": 20,
        "threshold": threshold,
        "interval": "200ms",
        "lateness": "0s",
        "start": "earliest",
    })
}

/// Waits until pipeline `name` has produced `count` inferences.
fn await_inferences(url: &str, name: &str, count: u64, what: &str) {
    eventually(what, || {
        let (code, status) = pipeline_status(url, name);
        code == 200 && status["inferences"] == count
    });
}

fn pipeline_status(url: &str, name: &str) -> (u16, serde_json::Value) {
    http(
        url,
        reqwest::Method::GET,
        &format!("/api/v1/pipelines/{name}"),
        None,
    )
}

#[test]
fn pipelines_defined_through_the_api_run_are_replaced_survive_restarts_and_are_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fabrik.toml");
    std::fs::write(&config, CONFIGURED_ONLY).expect("config");
    let data = dir.path().join("data");
    let args = ["--config", config.to_str().expect("utf-8")];
    let p = Process::start_with_args(&data, &args, &[]);
    write_history_an_hour_ago(&p.url);

    // Defined through the API: it runs like a configured one and finds pump-a's fault.
    let (code, created) = put_pipeline(&p.url, "api-pumps", api_pumps("quantile:1.0*1.5"));
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["origin"], "api", "{created}");
    // Its whole definition reads back, defaults filled in.
    assert_eq!(created["definition"]["training_windows"], 20, "{created}");
    assert_eq!(created["definition"]["lateness"], "0s", "{created}");
    assert_eq!(
        created["definition"]["device_column"], "device",
        "{created}"
    );
    assert_eq!(created["state"], "running", "{created}");
    await_inferences(
        &p.url,
        "api-pumps",
        80,
        "the API's pipeline scores every window",
    );
    let (_, status) = pipeline_status(&p.url, "api-pumps");
    assert_eq!(status["anomalies"], 10, "{status}");
    let flagged = blocking_query_count(
        &p.url,
        "SELECT count(*) FROM inferences WHERE pipeline = 'api-pumps' AND flag = true \
         AND device = 'pump-a'",
    );
    assert_eq!(flagged, 10);

    // The same definition again (a configuration-sync job's run) changes nothing: the
    // dry run says so, and the pipeline is not restarted (its counters go on).
    let (code, dry) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/pipelines/api-pumps?dry_run=true",
        Some(api_pumps("quantile:1.0*1.5")),
    );
    assert_eq!(code, 200, "{dry}");
    assert_eq!(dry["action"], "unchanged", "{dry}");
    let (code, again) = put_pipeline(&p.url, "api-pumps", api_pumps("quantile:1.0*1.5"));
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["inferences"], 80, "not restarted: {again}");
    // A replaying pipeline would replay the same first windows: a retrain is refused.
    let (code, refused) = http(
        &p.url,
        reqwest::Method::POST,
        "/api/v1/pipelines/api-pumps/retrain",
        None,
    );
    assert_eq!(code, 400, "{refused}");
    assert!(
        refused.to_string().contains("start = \\\"earliest\\\""),
        "{refused}"
    );
    // A dry run warns of a selection that matches no device, and of PCA fitted to fewer
    // than five training windows per feature (6 features, 20 windows).
    let mut doubtful = api_pumps("quantile:1.0*1.5");
    doubtful["site"] = "nowhere".into();
    doubtful["model"] = "pca_t2q".into();
    let (code, dry) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/pipelines/api-pumps?dry_run=true",
        Some(doubtful.clone()),
    );
    assert_eq!(code, 200, "{dry}");
    let warnings = dry["warnings"].to_string();
    assert!(
        warnings.contains("no registered device matches")
            && warnings.contains("6 features from 20 training windows"),
        "{dry}"
    );
    // A device named outright that the registry does not know may be misspelt.
    let mut ghost = api_pumps("quantile:1.0*1.5");
    ghost["devices"] = serde_json::json!(["pump-gost"]);
    let (_, dry) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/pipelines/api-pumps?dry_run=true",
        Some(ghost),
    );
    assert!(
        dry["warnings"]
            .to_string()
            .contains("`pump-gost` not registered"),
        "{dry}"
    );
    // Applied directly, the answer carries the same warnings.
    doubtful["name"] = "doubtful".into();
    let (code, applied) = put_pipeline(&p.url, "doubtful", doubtful);
    assert_eq!(code, 201, "{applied}");
    assert!(
        applied["warnings"]
            .to_string()
            .contains("no registered device matches"),
        "{applied}"
    );
    let (code, _) = http(
        &p.url,
        reqwest::Method::DELETE,
        "/api/v1/pipelines/doubtful",
        None,
    );
    assert_eq!(code, 204);

    // Bad definitions are refused with the field named, and change nothing.
    let mut bad = api_pumps("quantile:1.0*1.5");
    bad["window"] = "ten seconds".into();
    bad["signals"] = serde_json::json!([]);
    let (code, error) = put_pipeline(&p.url, "api-pumps", bad);
    assert_eq!(code, 400, "{error}");
    let message = error["error"].as_str().expect("message");
    assert!(
        message.contains("window") && message.contains("signals"),
        "{message}"
    );
    // Columns of the wrong kind: a field as the device column, a text field as a signal.
    let mut by_field = api_pumps("quantile:1.0*1.5");
    by_field["device_column"] = "current".into();
    by_field["signals"] = serde_json::json!(["vibration"]);
    let (code, error) = put_pipeline(&p.url, "api-pumps", by_field);
    assert_eq!(code, 400, "{error}");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("device_column") && e.contains("not a tag")),
        "{error}"
    );
    assert_eq!(
        crate::support::post_status(
            &p.url,
            "/api/v1/write",
            "modes,device=pump-a mode=\"auto\",load=1 1\n"
        ),
        200
    );
    let mut texts = api_pumps("quantile:1.0*1.5");
    texts["name"] = "texts".into();
    texts["table"] = "modes".into();
    texts["signals"] = serde_json::json!(["load", "mode"]);
    // A text signal names WAV clips by blob id; text that is not one stops the pipeline,
    // naming the signal and the value.
    let (code, answer) = put_pipeline(&p.url, "texts", texts);
    assert_eq!(code, 201, "{answer}");
    eventually("the text signal's error is shown", || {
        let (_, status) = pipeline_status(&p.url, "texts");
        status["error"]
            .as_str()
            .is_some_and(|e| e.contains("`mode` holds `auto`, which is not a blob id"))
    });
    assert_eq!(delete(&p.url, "/api/v1/pipelines/texts"), 204);
    let mut unknown = api_pumps("quantile:1.0*1.5");
    unknown["windw"] = "10s".into();
    let (code, error) = put_pipeline(&p.url, "api-pumps", unknown);
    assert_eq!(code, 400, "{error}");
    assert!(
        error["error"].as_str().is_some_and(|e| e.contains("windw")),
        "{error}"
    );
    // A value of the wrong type names its field, in one definition and in a list of them.
    let mut mistyped = api_pumps("quantile:1.0*1.5");
    mistyped["signals"] = "vibration".into();
    let (code, error) = put_pipeline(&p.url, "api-pumps", mistyped.clone());
    assert_eq!(code, 400, "{error}");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("signals: invalid type")),
        "{error}"
    );
    let (code, error) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/pipelines",
        Some(serde_json::json!([api_pumps("quantile:1.0*1.5"), mistyped])),
    );
    assert_eq!(code, 400, "{error}");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("[1].signals: invalid type")),
        "{error}"
    );
    let mut quoted = api_pumps("quantile:1.0*1.5");
    quoted["name"] = "x'y".into();
    let (code, error) = put_pipeline(&p.url, "x'y", quoted);
    assert_eq!(code, 400, "{error}");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("name: `x'y`: use 1–128 letters")),
        "{error}"
    );
    let (code, error) = put_pipeline(&p.url, "other-name", api_pumps("quantile:1.0*1.5"));
    assert_eq!(code, 400, "{error}");
    let (_, status) = pipeline_status(&p.url, "api-pumps");
    assert_eq!(status["threshold"], "quantile:1.0*1.5", "{status}");
    assert_eq!(status["state"], "running", "{status}");

    // The configuration file's pipeline is changed there, not through the API.
    let (_, configured) = pipeline_status(&p.url, "configured");
    assert_eq!(configured["origin"], "config", "{configured}");
    let mut takeover = api_pumps("quantile:1.0*1.5");
    takeover["name"] = "configured".into();
    let (code, error) = put_pipeline(&p.url, "configured", takeover);
    assert_eq!(code, 409, "{error}");
    assert_eq!(delete(&p.url, "/api/v1/pipelines/configured"), 409);

    // Replacing stops the old definition and starts the new one, which replays the history.
    let (code, replaced) = put_pipeline(&p.url, "api-pumps", api_pumps("quantile:1.0*1.2"));
    assert_eq!(code, 200, "{replaced}");
    assert_eq!(replaced["threshold"], "quantile:1.0*1.2", "{replaced}");
    eventually("the replaced pipeline scores every window again", || {
        let (_, status) = pipeline_status(&p.url, "api-pumps");
        status["inferences"] == 80 && status["threshold"] == "quantile:1.0*1.2"
    });

    // The definition is stored, so it runs again after a restart.
    let (status, _) = p.terminate();
    assert!(status.success());
    let p = Process::start_with_args(&data, &args, &[]);
    let (code, status) = pipeline_status(&p.url, "api-pumps");
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["origin"], "api", "{status}");
    assert_eq!(status["threshold"], "quantile:1.0*1.2", "{status}");
    eventually("the restored pipeline scores every window", || {
        pipeline_status(&p.url, "api-pumps").1["inferences"] == 80
    });

    // Several at once: all or none.
    let batch = |definitions: serde_json::Value| {
        http(
            &p.url,
            reqwest::Method::PUT,
            "/api/v1/pipelines",
            Some(definitions),
        )
    };
    let named = |name: &str| {
        let mut definition = api_pumps("quantile:1.0*1.5");
        definition["name"] = name.into();
        definition
    };
    let mut bad = named("batch-bad");
    bad["window"] = "ten seconds".into();
    let (code, error) = batch(serde_json::json!([named("batch-a"), bad]));
    assert_eq!(code, 400, "{error}");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("batch-bad.window")),
        "{error}"
    );
    let (code, error) = batch(serde_json::json!([named("batch-a"), named("configured")]));
    assert_eq!(code, 409, "{error}");
    assert_eq!(pipeline_status(&p.url, "batch-a").0, 404, "none applied");
    // A dry run of a batch checks each and applies none; a misspelt option is refused
    // rather than ignored (which would apply the batch).
    let (code, checked) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/pipelines?dry_run=true",
        Some(serde_json::json!([named("batch-a"), named("batch-b")])),
    );
    assert_eq!(code, 200, "{checked}");
    assert_eq!(checked[0]["action"], "define", "{checked}");
    assert_eq!(checked[1]["name"], "batch-b", "{checked}");
    let (code, error) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/pipelines?dryrun=true",
        Some(serde_json::json!([named("batch-a")])),
    );
    assert_eq!(code, 400, "{error}");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("dryrun")),
        "{error}"
    );
    assert_eq!(pipeline_status(&p.url, "batch-a").0, 404, "none applied");
    let (code, applied) = batch(serde_json::json!([named("batch-a"), named("batch-b")]));
    assert_eq!(code, 200, "{applied}");
    assert_eq!(applied[0]["name"], "batch-a", "{applied}");
    assert_eq!(applied[1]["origin"], "api", "{applied}");
    for name in ["batch-a", "batch-b"] {
        assert_eq!(pipeline_status(&p.url, name).1["state"], "running");
        assert_eq!(delete(&p.url, &format!("/api/v1/pipelines/{name}")), 204);
    }

    // The CLI defines pipelines from a file as the configuration file writes them.
    let file = dir.path().join("forest.toml");
    std::fs::write(
        &file,
        "[[pipelines]]\nname = \"cli-forest\"\ntable = \"pump\"\n\
         signals = [\"vibration\", \"current\"]\nmodel = \"iforest\"\n\
         training_windows = 20\ninterval = \"200ms\"\nstart = \"earliest\"\n",
    )
    .expect("pipeline file");
    let cli = |args: &[&str]| crate::support::client_command(&p.url, args);
    let (ok, text) = cli(&[
        "pipeline",
        "apply",
        "--dry-run",
        file.to_str().expect("utf-8"),
    ]);
    assert!(ok && text.contains("would define cli-forest"), "{text}");
    assert!(!text.contains("warning"), "its input is all there: {text}");
    assert_eq!(pipeline_status(&p.url, "cli-forest").0, 404, "a dry run");
    // What would keep a valid definition from scoring is said before it is applied.
    let waiting = dir.path().join("waiting.toml");
    std::fs::write(
        &waiting,
        "[[pipelines]]\nname = \"cli-typo\"\ntable = \"pump\"\n\
         signals = [\"vibraton\", \"current\"]\nmodel = \"onnx\"\nmodel_name = \"pump-ae\"\n",
    )
    .expect("pipeline file");
    let (ok, text) = cli(&[
        "pipeline",
        "apply",
        "--dry-run",
        waiting.to_str().expect("utf-8"),
    ]);
    assert!(
        ok && text.contains("would define cli-typo")
            && text.contains(
                "warning: pipeline `cli-typo`: table `pump` has no column `vibraton` yet"
            )
            && text.contains("model `pump-ae` is not uploaded"),
        "{text}"
    );
    // One bad definition in a file: nothing in it is applied, and the problem is named.
    let mixed = dir.path().join("mixed.toml");
    std::fs::write(
        &mixed,
        "[[pipelines]]\nname = \"cli-good\"\ntable = \"pump\"\nsignals = [\"vibration\"]\n\n\
         [[pipelines]]\nname = \"cli-bad\"\ntable = \"pump\"\nsignals = [\"vibration\"]\n\
         window = \"ten seconds\"\n",
    )
    .expect("pipeline file");
    let (ok, text) = cli(&["pipeline", "apply", mixed.to_str().expect("utf-8")]);
    assert!(
        !ok && text.contains("nothing applied")
            && text.contains("pipeline `cli-bad`")
            && text.contains("window")
            && !text.contains("pipeline `cli-good`"),
        "{text}"
    );
    assert_eq!(
        pipeline_status(&p.url, "cli-good").0,
        404,
        "nothing applied"
    );
    let (ok, text) = cli(&["pipeline", "apply", file.to_str().expect("utf-8")]);
    assert!(ok && text.contains("defined cli-forest"), "{text}");
    let (ok, text) = cli(&[
        "pipeline",
        "apply",
        "--dry-run",
        file.to_str().expect("utf-8"),
    ]);
    assert!(ok && text.contains("unchanged cli-forest"), "{text}");
    let (ok, text) = cli(&["pipeline", "apply", file.to_str().expect("utf-8")]);
    assert!(
        ok && text.contains("unchanged cli-forest (running)"),
        "{text}"
    );
    let (ok, text) = cli(&["pipeline", "list"]);
    assert!(ok, "{text}");
    let forest_line = text
        .lines()
        .find(|line| line.starts_with("cli-forest"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        forest_line.contains("api") && forest_line.contains("iforest"),
        "{text}"
    );
    let (ok, text) = cli(&["pipeline", "rm", "configured"]);
    assert!(!ok && text.contains("configuration file"), "{text}");
    let (ok, text) = cli(&["pipeline", "rm", "cli-forest"]);
    assert!(ok && text.contains("removed cli-forest"), "{text}");

    // Removed: stopped, unlisted, and gone after the next restart too.
    assert_eq!(delete(&p.url, "/api/v1/pipelines/api-pumps"), 204);
    assert_eq!(pipeline_status(&p.url, "api-pumps").0, 404);
    assert_eq!(delete(&p.url, "/api/v1/pipelines/api-pumps"), 404);
    let (status, _) = p.terminate();
    assert!(status.success());
    let p = Process::start_with_args(&data, &args, &[]);
    let (_, all) = http(&p.url, reqwest::Method::GET, "/api/v1/pipelines", None);
    let names: Vec<&str> = all
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["configured"], "{all}");
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// Defines (or replaces) pipeline `name` through the API.
fn put_pipeline(url: &str, name: &str, definition: serde_json::Value) -> (u16, serde_json::Value) {
    http(
        url,
        reqwest::Method::PUT,
        &format!("/api/v1/pipelines/{name}"),
        Some(definition),
    )
}

pub(crate) fn put_bytes(url: &str, path: &str, bytes: Vec<u8>) -> (u16, serde_json::Value) {
    put_bytes_with(url, path, bytes, &[])
}

/// [`put_bytes`] with more headers.
fn put_bytes_with(
    url: &str,
    path: &str,
    bytes: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    crate::support::send_blocking_json(|client| {
        let request = client
            .put(format!("{url}{path}"))
            .bearer_auth(crate::support::TOKEN)
            .header("content-type", "application/octet-stream");
        headers
            .iter()
            .fold(request, |request, (name, value)| {
                request.header(*name, *value)
            })
            .body(bytes)
    })
}

/// A pipeline scoring the pump's vibration and current with the uploaded model `model`.
fn uploaded_model_pipeline(name: &str, model: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "table": "pump",
        "signals": ["vibration", "current"],
        "features": ["mean", "std", "min", "max"],
        "model": "onnx",
        "model_name": model,
        "training_windows": 10,
        "interval": "200ms",
        "lateness": "0s",
        "start": "earliest",
    })
}

#[test]
fn uploaded_models_run_in_pipelines_are_replaced_in_place_and_deleted_when_unused() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../fabrik-onnx/tests/fixtures");
    let forest = std::fs::read(format!("{fixtures}/iforest_100.onnx")).expect("fixture");
    let autoencoder = std::fs::read(format!("{fixtures}/mlp_ae_8_4_8.onnx")).expect("fixture");
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Process::start_with_args(&dir.path().join("data"), &[], &[]);
    write_history_an_hour_ago(&p.url);

    // What is not a model Fabrik can run, or not a usable name, is refused.
    let (code, error) = put_bytes(&p.url, "/api/v1/models/pump-model", b"not onnx".to_vec());
    assert_eq!(code, 400, "{error}");
    let (code, error) = put_bytes(&p.url, "/api/v1/models/.hidden", forest.clone());
    assert_eq!(code, 400, "{error}");
    let (_, models) = http(&p.url, reqwest::Method::GET, "/api/v1/models", None);
    assert_eq!(models, serde_json::json!([]));

    let (code, stored) = put_bytes(&p.url, "/api/v1/models/pump-model", forest.clone());
    assert_eq!(code, 201, "{stored}");
    assert_eq!(stored["bytes"], forest.len(), "{stored}");
    assert_eq!(
        stored["sha256"].as_str().map(str::len),
        Some(64),
        "{stored}"
    );
    let forest_version = stored["version"].as_str().expect("version").to_owned();

    // A relative file path through the API would be read from wherever the server runs.
    let (code, error) = put_pipeline(
        &p.url,
        "relative",
        serde_json::json!({
            "name": "relative",
            "table": "pump",
            "signals": ["vibration", "current"],
            "features": ["mean", "std", "min", "max"],
            "model": "onnx",
            "model_path": "models/pump.onnx",
        }),
    );
    assert_eq!(code, 400, "{error}");
    assert!(
        error.to_string().contains("model_path") && error.to_string().contains("relative"),
        "{error}"
    );

    let definition = uploaded_model_pipeline("uploaded", "pump-model");
    let (code, status) = put_pipeline(&p.url, "uploaded", definition.clone());
    assert_eq!(code, 201, "{status}");
    eventually("the uploaded forest scores every window", || {
        pipeline_status(&p.url, "uploaded").1["inferences"] == 100
    });
    let versions = query(
        &p.url,
        "SELECT DISTINCT model_version FROM inferences WHERE pipeline = 'uploaded'",
    );
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(versions[0]["model_version"], forest_version.as_str());
    let (_, models) = http(&p.url, reqwest::Method::GET, "/api/v1/models", None);
    assert_eq!(
        models[0]["used_by"],
        serde_json::json!(["uploaded"]),
        "{models}"
    );

    // The same bytes again change nothing: the file is not rewritten and the pipeline keeps
    // running, not re-trained.
    let stored_file = dir.path().join("data/models/pump-model.onnx");
    let modified = || {
        std::fs::metadata(&stored_file)
            .and_then(|m| m.modified())
            .expect("stored model")
    };
    let before = modified();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (code, again) = put_bytes(&p.url, "/api/v1/models/pump-model", forest.clone());
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["version"], forest_version.as_str(), "{again}");
    assert_eq!(modified(), before);
    assert_eq!(pipeline_status(&p.url, "uploaded").1["inferences"], 100);

    // Replacing the model restarts its pipeline with the new one, which re-scores the history.
    let (code, replaced) = put_bytes(&p.url, "/api/v1/models/pump-model", autoencoder.clone());
    assert_eq!(code, 200, "{replaced}");
    assert_eq!(
        replaced["used_by"],
        serde_json::json!(["uploaded"]),
        "{replaced}"
    );
    let autoencoder_version = replaced["version"].as_str().expect("version").to_owned();
    assert_ne!(autoencoder_version, forest_version);
    eventually("the autoencoder re-scores every window", || {
        blocking_query_count(
            &p.url,
            &format!(
                "SELECT count(*) FROM inferences WHERE pipeline = 'uploaded' \
                 AND model_version = '{autoencoder_version}'"
            ),
        ) == 100
    });

    // A replacement that does not fit its pipeline is refused, naming the pipeline and
    // why; the model in use stays, and so does the pipeline.
    let projection = std::fs::read(format!("{fixtures}/scaler_pca4.onnx")).expect("fixture");
    let (code, error) = put_bytes(&p.url, "/api/v1/models/pump-model", projection);
    assert_eq!(code, 409, "{error}");
    let message = error["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("pipeline `uploaded`")
            && message.contains("4 values per row, the pipeline computes 8 features"),
        "{error}"
    );
    let (_, models) = http(&p.url, reqwest::Method::GET, "/api/v1/models", None);
    assert_eq!(
        models[0]["version"],
        autoencoder_version.as_str(),
        "{models}"
    );
    assert_eq!(pipeline_status(&p.url, "uploaded").1["state"], "running");
    // So is a definition its uploaded model does not fit, in a dry run too.
    let mut narrow = definition.clone();
    narrow["name"] = "narrow".into();
    narrow["features"] = serde_json::json!(["mean"]);
    for path in [
        "/api/v1/pipelines/narrow?dry_run=true",
        "/api/v1/pipelines/narrow",
    ] {
        let (code, error) = http(&p.url, reqwest::Method::PUT, path, Some(narrow.clone()));
        assert_eq!(code, 400, "{path}: {error}");
        let message = error["error"].as_str().unwrap_or_default();
        assert!(
            message.contains("model_name: model `pump-model`")
                && message.contains("takes 8 features, the pipeline computes 2")
                && !message.contains("/models/"),
            "{path}: {error}"
        );
    }

    // The CLI lists it with its user.
    let (ok, text) = crate::support::client_command(&p.url, &["model", "list"]);
    assert!(ok, "{text}");
    let line = text
        .lines()
        .find(|line| line.starts_with("pump-model"))
        .unwrap_or_default();
    assert!(
        line.contains(&autoencoder_version) && line.ends_with("uploaded"),
        "{text}"
    );

    // It downloads as it was uploaded, over the API and with the CLI; a name that cannot
    // be a model's is refused before anything is sent.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let downloaded = rt.block_on(async {
        crate::support::http_client()
            .get(format!("{}/api/v1/models/pump-model", p.url))
            .bearer_auth(crate::support::TOKEN)
            .send()
            .await
            .expect("request")
            .bytes()
            .await
            .expect("body")
    });
    assert!(
        downloaded.as_ref() == autoencoder.as_slice(),
        "download differs"
    );
    let saved = dir.path().join("saved.onnx");
    let saved_arg = saved.to_string_lossy().into_owned();
    let (ok, text) =
        crate::support::client_command(&p.url, &["model", "download", "pump-model", &saved_arg]);
    assert!(ok, "{text}");
    assert!(std::fs::read(&saved).expect("saved") == autoencoder);
    let (ok, text) =
        crate::support::client_command(&p.url, &["model", "upload", "../x", &saved_arg]);
    assert!(!ok && text.contains("`../x`: a model name is"), "{text}");
    let (code, _) = http(&p.url, reqwest::Method::GET, "/api/v1/models/nope", None);
    assert_eq!(code, 404);

    // A model in use is not deleted; once its pipeline is gone, it is.
    let (code, error) = http(
        &p.url,
        reqwest::Method::DELETE,
        "/api/v1/models/pump-model",
        None,
    );
    assert_eq!(code, 409, "{error}");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("uploaded")),
        "{error}"
    );
    assert_eq!(delete(&p.url, "/api/v1/pipelines/uploaded"), 204);
    assert_eq!(delete(&p.url, "/api/v1/models/pump-model"), 204);
    assert_eq!(delete(&p.url, "/api/v1/models/pump-model"), 404);

    // A pipeline naming a model that is not there fails alone, saying so.
    let (code, status) = put_pipeline(&p.url, "uploaded", definition);
    assert_eq!(code, 201, "{status}");
    eventually("the pipeline without its model reports it", || {
        let (_, status) = pipeline_status(&p.url, "uploaded");
        status["state"] == "failed"
            && status["error"]
                .as_str()
                .is_some_and(|e| e.contains("no uploaded model named `pump-model`"))
    });
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// A stored definition that no longer compiles stays stored and listed as failed, even when
/// a model it names is uploaded and the pipelines using that model are restarted.
#[test]
fn a_stored_definition_that_does_not_compile_survives_its_model_being_uploaded() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../fabrik-onnx/tests/fixtures");
    let forest = std::fs::read(format!("{fixtures}/iforest_100.onnx")).expect("fixture");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let stored = data.join("pipelines.json");
    std::fs::write(
        &stored,
        r#"[{"name": "stale", "table": "pump", "signals": ["vibration"], "model": "onnx",
             "model_name": "pump-model", "threshold": "bogus"}]"#,
    )
    .expect("stored definitions");
    let p = Process::start_with_args(&data, &[], &[]);
    let (_, status) = pipeline_status(&p.url, "stale");
    assert_eq!(status["state"], "failed", "{status}");
    assert!(
        status["error"]
            .as_str()
            .is_some_and(|e| e.contains("threshold")),
        "{status}"
    );

    let (code, model) = put_bytes(&p.url, "/api/v1/models/pump-model", forest);
    assert_eq!(code, 201, "{model}");
    assert_eq!(model["used_by"], serde_json::json!(["stale"]), "{model}");
    let (_, status) = pipeline_status(&p.url, "stale");
    assert_eq!(status["state"], "failed", "{status}");

    // Another change rewrites the file: the failed definition is still in it.
    let mut other_definition = api_pumps("quantile:1.0*1.5");
    other_definition["name"] = "other".into();
    let (code, other) = put_pipeline(&p.url, "other", other_definition);
    assert_eq!(code, 201, "{other}");
    let names: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(
        &std::fs::read_to_string(&stored).expect("file"),
    )
    .expect("json")
    .iter()
    .filter_map(|d| d["name"].as_str().map(str::to_owned))
    .collect();
    assert_eq!(names, ["other", "stale"]);
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// A pipeline's `filter` keeps one operating state: a pump that stops for a minute is
/// flagged by a pipeline that sees every row, and not by one that reads `running` rows only.
#[test]
fn a_filtered_pipeline_learns_and_scores_one_operating_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fabrik.toml");
    let pipeline = |name: &str, filter: &str| {
        format!(
            "[[pipelines]]\nname = \"{name}\"\ntable = \"pump\"\nsignals = [\"vibration\", \
             \"current\"]\nwindow = \"10s\"\ntraining_windows = 20\n{filter}\
             interval = \"200ms\"\nlateness = \"0s\"\nstart = \"earliest\"\n\n"
        )
    };
    std::fs::write(
        &config,
        pipeline("every-row", "") + &pipeline("running-only", "filter = \"running\"\n"),
    )
    .expect("config");
    let p = Process::start_with_args(
        &dir.path().join("data"),
        &["--config", config.to_str().expect("utf-8")],
        &[],
    );
    // 600 s at 1 Hz ending an hour ago, windows aligned; the pump stops from 400 s to 460 s.
    let start = (now_ns() - 3600 * SECOND) / (10 * SECOND) * (10 * SECOND);
    let mut body = String::new();
    for t in 0..600i64 {
        let wobble = ((t * 7919) % 13) as f64 / 13.0;
        let running = !(400..460).contains(&t);
        let (vibration, current) = if running {
            (2.0 + wobble * 0.2, 10.0 + wobble)
        } else {
            (0.01 * wobble, 0.02)
        };
        body.push_str(&format!(
            "pump,device=pump-a running={running},vibration={vibration},current={current} {}\n",
            start + t * SECOND
        ));
    }
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", &body),
        200
    );
    // 60 windows; 20 train; the filtered pipeline never sees the six stopped ones.
    await_inferences(
        &p.url,
        "every-row",
        40,
        "every window after training is scored",
    );
    await_inferences(
        &p.url,
        "running-only",
        34,
        "only running windows are scored",
    );
    let stopped = |name: &str| {
        blocking_query_count(
            &p.url,
            &format!(
                "SELECT count(*) FROM inferences WHERE pipeline = '{name}' AND flag = true \
                 AND window_start >= {} AND window_start < {}",
                start + 400 * SECOND,
                start + 460 * SECOND
            ),
        )
    };
    assert_eq!(
        stopped("every-row"),
        6,
        "the stop is unlike anything it learnt"
    );
    assert_eq!(stopped("running-only"), 0);
    let flagged_running = blocking_query_count(
        &p.url,
        "SELECT count(*) FROM inferences WHERE pipeline = 'running-only' AND flag = true",
    );
    assert_eq!(
        flagged_running, 0,
        "nothing else about this pump is unusual"
    );
    let (_, status) = pipeline_status(&p.url, "running-only");
    assert_eq!(status["filter"], "running", "{status}");
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// A pipeline defined where data already flows (`start = "now"`) trains on the stored windows
/// just before it started and scores from then on: no waiting `training_windows` windows,
/// and no inference for a window of the stored history.
#[test]
fn a_pipeline_defined_on_flowing_data_trains_on_its_recent_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Process::start(&dir.path().join("data"), &[]);
    // The last 40 s of pump-a at 5 Hz: twenty 2 s windows of ten samples.
    write_recent_pump_a(&p.url, now_ns());
    let defined_at = now_ns();
    let (code, body) = put_pipeline(
        &p.url,
        "recent",
        serde_json::json!({
            "name": "recent",
            "table": "pump",
            "signals": ["vibration", "current"],
            "window": "2s",
            "training_windows": 10,
            "interval": "200ms",
            "lateness": "0s",
            "start": "now",
        }),
    );
    assert_eq!(code, 201, "{body}");
    // Trained without a single new sample: only the stored history can have trained it.
    eventually("the pipeline trains on its history", || {
        let (_, status) = pipeline_status(&p.url, "recent");
        status["devices"] == 1 && status["training_devices"] == 0
    });
    // New samples are scored as their windows close.
    eventually("live windows are scored", || {
        let t = now_ns();
        assert_eq!(
            crate::support::post_status(&p.url, "/api/v1/write", &steady_pump_a(t)),
            200
        );
        let (_, status) = pipeline_status(&p.url, "recent");
        status["inferences"].as_u64().unwrap_or(0) >= 2
    });
    let live = query(
        &p.url,
        "SELECT window_start, window_end FROM inferences WHERE pipeline = 'recent'",
    );
    assert!(live.len() >= 2, "{live:?}");
    for row in &live {
        let end = row["window_end"].as_i64().expect("end");
        assert!(
            end > defined_at,
            "a window of the stored history was scored: {row}"
        );
    }
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// The restart test's pipeline: the pumps' vibration and current in `window`s, each
/// device learning from `training_windows` of them, from now on.
fn steady(window: &str, training_windows: u32) -> serde_json::Value {
    serde_json::json!({
        "name": "steady",
        "table": "pump",
        "signals": ["vibration", "current"],
        "window": window,
        "training_windows": training_windows,
        "interval": "100ms",
        "lateness": "0s",
        "start": "now",
    })
}

/// `definition` with other features than the default: another model version.
fn with_features(mut definition: serde_json::Value) -> serde_json::Value {
    definition["features"] = serde_json::json!(["mean", "max"]);
    definition
}

/// A restart during a fault: the pipeline relearns each device from the windows it learnt
/// from before (its saved training span), not from the faulty windows just before the
/// restart, so the fault is still flagged afterwards.
#[test]
fn a_restarted_pipeline_relearns_its_training_span_not_the_fault_before_the_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = Process::start(&data, &[]);
    // 20 Hz: ten samples per 500 ms window. `fault` lifts the vibration by 3.
    let sample = |t: i64, fault: bool| {
        let wobble = ((t / (SECOND / 20)) * 7919 % 13) as f64 / 13.0;
        let lift = if fault { 3.0 } else { 0.0 };
        format!(
            "pump,device=pump-a vibration={},current={} {t}\n",
            2.0 + wobble * 0.2 + lift,
            10.0 + wobble
        )
    };
    let now = now_ns();
    let history: String = (1..=200)
        .map(|i| sample(now - i * SECOND / 20, false))
        .collect();
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", &history),
        200
    );
    // With a challenger in its shadow, which must come back from its own saved spans too.
    let mut shadowed = steady("500ms", 10);
    shadowed["shadow"] = serde_json::json!({"model": "robust_z", "threshold": "quantile:1.0*1.6"});
    let (code, body) = put_pipeline(&p.url, "steady", shadowed);
    assert_eq!(code, 201, "{body}");
    eventually("the pipeline trains on its history", || {
        let (_, status) = pipeline_status(&p.url, "steady");
        status["devices"] == 1 && status["training_devices"] == 0
    });
    // The fault, written as it happens, is flagged.
    let write_fault = |url: &str| {
        let t = now_ns();
        let lines = sample(t, true) + &sample(t - SECOND / 20, true);
        crate::support::post_status(url, "/api/v1/write", &lines);
    };
    let flagged = "SELECT trained_from, trained_until FROM inferences \
                   WHERE pipeline = 'steady' AND flag = true";
    eventually("the fault is flagged", || {
        write_fault(&p.url);
        let (_, status) = pipeline_status(&p.url, "steady");
        status["anomalies"].as_u64().unwrap_or(0) >= 1
    });
    let span = query(&p.url, flagged)[0].clone();
    let shadow_flagged = "SELECT trained_from, trained_until FROM shadow_inferences \
                          WHERE pipeline = 'steady' AND flag = true";
    eventually("the shadow model flags the fault", || {
        write_fault(&p.url);
        !query(&p.url, shadow_flagged).is_empty()
    });
    let shadow_span = query(&p.url, shadow_flagged)[0].clone();
    // It lasts longer than the history a restart would otherwise learn from (11 windows and
    // one more window's length: 6 s).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(8);
    while std::time::Instant::now() < until {
        write_fault(&p.url);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (status, _) = p.terminate();
    assert!(status.success());

    let p = Process::start(&data, &[]);
    // The windows scored after `since` (at least three, the fault written meanwhile).
    let scored_after = |since: i64, what: &str| {
        let sql = format!(
            "SELECT flag, trained_from, trained_until FROM inferences \
             WHERE pipeline = 'steady' AND window_start > {since}"
        );
        eventually(what, || {
            write_fault(&p.url);
            query(&p.url, &sql).len() >= 3
        });
        query(&p.url, &sql)
    };
    let restarted = now_ns();
    for row in scored_after(restarted, "windows after the restart are scored") {
        assert_eq!(row["flag"], true, "the fault was learnt as normal: {row}");
        assert_eq!(row["trained_from"], span["trained_from"], "{row}");
        assert_eq!(row["trained_until"], span["trained_until"], "{row}");
    }
    let challenged = format!(
        "SELECT flag, trained_from, trained_until FROM shadow_inferences \
         WHERE pipeline = 'steady' AND window_start > {restarted}"
    );
    eventually("the shadow model scores after the restart", || {
        write_fault(&p.url);
        query(&p.url, &challenged).len() >= 3
    });
    for row in query(&p.url, &challenged) {
        assert_eq!(
            row["flag"], true,
            "the shadow model learnt the fault: {row}"
        );
        assert_eq!(row["trained_from"], shadow_span["trained_from"], "{row}");
        assert_eq!(row["trained_until"], shadow_span["trained_until"], "{row}");
    }
    // Redefined during the fault (other features: another model version), it also learns
    // from the span the device was learnt from, not from the fault before the change.
    let (code, body) = put_pipeline(&p.url, "steady", with_features(steady("500ms", 10)));
    assert_eq!(code, 200, "{body}");
    let redefined = now_ns();
    for row in scored_after(redefined, "windows after the redefinition are scored") {
        assert_eq!(row["flag"], true, "the fault was learnt as normal: {row}");
        assert_eq!(row["trained_from"], span["trained_from"], "{row}");
        assert_eq!(row["trained_until"], span["trained_until"], "{row}");
    }
    // Longer windows: the span (5 s) holds too few of them; the device learns from the
    // windows before the span's end, not from the fault before the change.
    let (code, body) = put_pipeline(&p.url, "steady", with_features(steady("750ms", 10)));
    assert_eq!(code, 200, "{body}");
    let widened = now_ns();
    for row in scored_after(widened, "windows after the widening are scored") {
        assert_eq!(row["flag"], true, "the fault was learnt as normal: {row}");
        assert!(
            row["trained_until"].as_i64() <= span["trained_until"].as_i64()
                && row["trained_from"].as_i64() < span["trained_from"].as_i64(),
            "trained before the span's end, from earlier windows: {row} {span}"
        );
    }
    // Asked to, it learns afresh from the recent windows (here the fault, now its normal).
    let (ok, text) = crate::support::client_command(&p.url, &["pipeline", "retrain", "steady"]);
    assert!(ok, "{text}");
    let saved_until = span["trained_until"].as_i64().expect("until");
    let retrained = format!(
        "SELECT flag FROM inferences WHERE pipeline = 'steady' AND trained_until > {saved_until}"
    );
    // Its first windows may still straddle the change; while the fault goes on, it must come
    // to take it as normal (a model that kept its old training flags every window for ever).
    eventually(
        "the retrained model takes the fault it learnt from as normal",
        || {
            write_fault(&p.url);
            query(&p.url, &retrained)
                .iter()
                .any(|row| row["flag"] == false)
        },
    );
    // A definition that needs more windows than the device was ever known normal in cannot
    // keep its span: the device learns from the recent history, and the log says so.
    let (code, body) = put_pipeline(&p.url, "steady", with_features(steady("10 samples", 200)));
    assert_eq!(code, 200, "{body}");
    let mut said = Vec::new();
    eventually("the lost span is logged", || {
        said.extend(p.drain_log());
        said.iter().any(|line| {
            line.contains("saved training spans hold too few windows") && line.contains("pump-a")
        })
    });
    let (code, _) = http(
        &p.url,
        reqwest::Method::POST,
        "/api/v1/pipelines/nope/retrain",
        None,
    );
    assert_eq!(code, 404);
    let (status, _) = p.terminate();
    assert!(status.success());
}

#[test]
fn models_load_only_when_signed_by_a_trusted_key() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../fabrik-onnx/tests/fixtures");
    let forest = std::fs::read(format!("{fixtures}/iforest_100.onnx")).expect("fixture");
    let autoencoder = std::fs::read(format!("{fixtures}/mlp_ae_8_4_8.onnx")).expect("fixture");
    let dir = tempfile::tempdir().expect("tempdir");
    let offline = "http://127.0.0.1:9";
    let prefix = dir.path().join("signing");
    let prefix = prefix.to_str().expect("utf-8");
    let (ok, out) = crate::support::client_command(offline, &["model", "keygen", "--out", prefix]);
    assert!(ok, "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = std::fs::metadata(format!("{prefix}.key")).expect("private key");
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
    }
    let (ok, out) = crate::support::client_command(offline, &["model", "keygen", "--out", prefix]);
    assert!(
        !ok && out.contains("signing.key"),
        "a key was overwritten: {out}"
    );
    let model_file = dir.path().join("forest.onnx");
    std::fs::write(&model_file, &forest).expect("model");
    let model_file = model_file.to_str().expect("utf-8");
    let key_file = format!("{prefix}.key");
    let (ok, out) =
        crate::support::client_command(offline, &["model", "sign", "--key", &key_file, model_file]);
    assert!(ok, "{out}");
    let signature = std::fs::read_to_string(format!("{model_file}.sig")).expect("signature");

    let config = dir.path().join("fabrik.toml");
    std::fs::write(
        &config,
        format!("[models]\ntrusted_keys = [\"{prefix}.pub\"]\n"),
    )
    .expect("config");
    let data = dir.path().join("data");
    let args = ["--config", config.to_str().expect("utf-8")];
    let p = Process::start_with_args(&data, &args, &[]);
    write_history_an_hour_ago(&p.url);

    // Unsigned, or signed for other bytes: refused, naming why.
    let (code, error) = put_bytes(&p.url, "/api/v1/models/pump-model", forest.clone());
    assert_eq!(code, 400, "{error}");
    assert!(error.to_string().contains("not signed"), "{error}");
    let (code, error) = put_bytes_with(
        &p.url,
        "/api/v1/models/pump-model",
        autoencoder.clone(),
        &[("x-fabrik-model-signature", signature.trim())],
    );
    assert_eq!(code, 400, "{error}");
    assert!(error.to_string().contains("does not verify"), "{error}");
    let (_, models) = http(&p.url, reqwest::Method::GET, "/api/v1/models", None);
    assert_eq!(models, serde_json::json!([]));

    // `fabrik model upload` sends FILE.sig along.
    let (ok, out) =
        crate::support::client_command(&p.url, &["model", "upload", "pump-model", model_file]);
    assert!(ok && out.contains("signed by"), "{out}");
    let (_, models) = http(&p.url, reqwest::Method::GET, "/api/v1/models", None);
    let key_id = models[0]["signed_by"]
        .as_str()
        .expect("signed_by")
        .to_owned();
    assert_eq!(key_id.len(), 16, "{models}");
    assert!(out.contains(&key_id), "{out}");
    let definition = uploaded_model_pipeline("signed", "pump-model");
    let (code, status) = put_pipeline(&p.url, "signed", definition.clone());
    assert_eq!(code, 201, "{status}");
    await_inferences(
        &p.url,
        "signed",
        100,
        "the signed model scores every window",
    );

    // A model file on the server's disk, its signature beside it.
    let mut by_path = definition.clone();
    by_path["name"] = serde_json::json!("by-path");
    by_path["model_name"] = serde_json::Value::Null;
    by_path["model_path"] = serde_json::json!(model_file);
    let (code, status) = put_pipeline(&p.url, "by-path", by_path);
    assert_eq!(code, 201, "{status}");
    await_inferences(
        &p.url,
        "by-path",
        100,
        "the signed file scores every window",
    );
    // ... re-signed with a key Fabrik does not trust.
    let other = dir.path().join("other");
    let other = other.to_str().expect("utf-8");
    let (ok, out) = crate::support::client_command(offline, &["model", "keygen", "--out", other]);
    assert!(ok, "{out}");
    std::fs::remove_file(format!("{model_file}.sig")).expect("remove the signature");
    let other_key = format!("{other}.key");
    let (ok, out) = crate::support::client_command(
        offline,
        &["model", "sign", "--key", &other_key, model_file],
    );
    assert!(ok, "{out}");

    // Behind Fabrik's back, another model (one that fits the pipeline) takes the file's place:
    // a new definition is refused, and after a restart the pipeline fails to load.
    let stored = data.join("models/pump-model.onnx");
    std::fs::write(&stored, &autoencoder).expect("swap the model");
    let mut changed = definition.clone();
    changed["interval"] = serde_json::json!("300ms");
    let (code, error) = put_pipeline(&p.url, "signed", changed);
    assert_eq!(code, 400, "{error}");
    assert!(error.to_string().contains("does not verify"), "{error}");
    let _ = p.terminate();
    let p = Process::start_with_args(&data, &args, &[]);
    eventually("the swapped model is refused at start", || {
        let (_, status) = pipeline_status(&p.url, "signed");
        status["state"] == "failed"
            && status["error"].as_str().is_some_and(|e| {
                e.contains("refused before loading") && e.contains("does not verify")
            })
    });
    let (_, models) = http(&p.url, reqwest::Method::GET, "/api/v1/models", None);
    assert!(models[0]["signed_by"].is_null(), "{models}");
    eventually(
        "a file signed by an untrusted key is refused at start",
        || {
            let (_, status) = pipeline_status(&p.url, "by-path");
            status["state"] == "failed"
                && status["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("does not verify with any trusted key"))
        },
    );
}
