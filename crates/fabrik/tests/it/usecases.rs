//! Use cases in a real `fabrik run`: KPIs measured from stored rows (time-weighted downtime
//! and energy cost with gaps left out, an aggregate, alert precision from operators'
//! feedback) against a baseline; a gate that refuses a promotion until its KPIs hold; and a
//! pipeline of the use case that scores only the devices its stage allows, widened by a
//! promotion and narrowed again by a step back.

use crate::mqtt::{eventually, http, query};
use crate::support::{blocking_query_count, client_command, now_ns, post_status, start_configured};

const SECOND: i64 = 1_000_000_000;

const CONFIG: &str = r#"
[[alerting.rules]]
name = "pump-hot"
table = "pump"
value = "temperature"
key = "device"
condition = "above"
threshold = 80.0
interval = "200ms"
start = "earliest"

[[pipelines]]
name = "scoped"
use_case = "pumps"
table = "pump"
signals = ["temperature"]
window = "10 samples"
min_samples = 1
training_windows = 5
interval = "100ms"
lateness = "0s"
start = "earliest"
"#;

fn definition() -> serde_json::Value {
    serde_json::json!({
        "objective": "Halve unplanned pump downtime at plant A",
        "owner": "maintenance",
        "stakeholders": ["OT", "finance"],
        "pilot": {"devices": ["pump-a"]},
        "scale_up": {"devices": ["pump-b"]},
        "kpis": [
            {"name": "downtime", "kind": "downtime", "table": "pump", "condition": "NOT running", "target": 12.0},
            {"name": "energy", "kind": "energy_cost", "table": "pump", "signal": "current * 0.5",
             "price_per_kwh": 0.2, "currency": "EUR"},
            {"name": "coolest-running", "kind": "aggregate", "table": "pump",
             "signal": "temperature", "aggregate": "min", "filter": "running"},
            {"name": "running-rows", "kind": "aggregate", "table": "pump",
             "signal": "temperature", "aggregate": "count", "filter": "running"},
            {"name": "p95", "kind": "aggregate", "table": "pump", "signal": "temperature",
             "aggregate": "p95"},
            {"name": "precision", "kind": "alert_precision", "rules": ["pump-hot"]}
        ],
        "gates": {"scale_up": [
            {"kpi": "downtime", "at_most": 50.0},
            {"time_in_stage_at_least": "1s"}
        ]}
    })
}

/// One row every 10 s for an hour from `start`: down (and at 20 °C) over `down` (seconds
/// into the hour), silent over `silent`, 90 °C over each of `hot`.
fn hour(
    device: &str,
    start: i64,
    down: (i64, i64),
    silent: (i64, i64),
    hot: &[(i64, i64)],
) -> String {
    let mut body = String::new();
    for s in (0..3600).step_by(10) {
        if (silent.0..silent.1).contains(&s) {
            continue;
        }
        let running = !(down.0..down.1).contains(&s);
        let current = if running { 2.0 } else { 0.0 };
        let temperature = if hot.iter().any(|(a, b)| (*a..*b).contains(&s)) {
            90.0
        } else if !running {
            20.0
        } else {
            60.0 + (s % 70) as f64 / 10.0
        };
        body.push_str(&format!(
            "pump,device={device} running={running},current={current},temperature={temperature} {}\n",
            start + s * SECOND
        ));
    }
    body
}

fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn inferences_of(url: &str, device: &str) -> i64 {
    blocking_query_count(
        url,
        &format!(
            "SELECT count(*) FROM inferences WHERE pipeline = 'scoped' AND device = '{device}'"
        ),
    )
}

/// 100 rows at 100 Hz per device from half a second from now: ten windows each.
fn burst(url: &str, devices: &[&str]) {
    let start = now_ns() + SECOND / 2;
    let mut body = String::new();
    for device in devices {
        for i in 0..100 {
            body.push_str(&format!(
                "pump,device={device} running=true,current=2.0,temperature={} {}\n",
                60.0 + (i % 7) as f64,
                start + i * SECOND / 100
            ));
        }
    }
    assert_eq!(post_status(url, "/api/v1/write", &body), 200);
}

#[test]
fn kpis_decide_the_gate_and_the_stage_decides_which_devices_a_pipeline_scores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = start_configured(dir.path(), CONFIG);
    let url = p.url.clone();
    let api = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        http(&url, method, &format!("/api/v1/usecases{path}"), body)
    };

    // The pipeline names a use case nobody defined yet: it scores nothing and says why.
    eventually("the pipeline names its missing use case", || {
        let (_, status) = http(&url, reqwest::Method::GET, "/api/v1/pipelines/scoped", None);
        status["error"]
            .as_str()
            .is_some_and(|e| e.contains("use case `pumps` is not defined"))
    });

    // Two hours, three hours ago: the baseline hour, then the hour measured. pump-a is down
    // 600 s in the first and 300 s in the second, which also has a 610 s gap that is not
    // observed time; pump-b, outside the pilot, is down throughout.
    let t0 = (now_ns() - 3 * 3600 * SECOND) / (10 * SECOND) * (10 * SECOND);
    let t1 = t0 + 3600 * SECOND;
    let mut history = hour("pump-a", t0, (1200, 1800), (0, 0), &[]);
    history += &hour(
        "pump-a",
        t1,
        (600, 900),
        (2000, 2600),
        &[(100, 150), (3000, 3050)],
    );
    history += &hour("pump-b", t1, (0, 3600), (0, 0), &[(200, 250)]);
    assert_eq!(post_status(&url, "/api/v1/write", &history), 200);

    // A definition with faults is refused, each named, and nothing is stored.
    let mut bad = definition();
    bad["kpis"][0]["condition"] = "true) OR (1=1".into();
    bad["kpis"][1]
        .as_object_mut()
        .expect("kpi")
        .remove("price_per_kwh");
    let (code, body) = api(reqwest::Method::PUT, "/pumps", Some(bad));
    assert_eq!(code, 400, "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(message.contains("kpis[1].price_per_kwh"), "{message}");
    assert!(message.contains("kpis[0].condition"), "{message}");
    assert_eq!(api(reqwest::Method::GET, "", None).1, serde_json::json!([]));

    let mut with_baseline = definition();
    with_baseline["baseline"] = serde_json::json!({"from": rfc3339(t0), "to": rfc3339(t1)});
    let (code, body) = api(reqwest::Method::PUT, "/pumps", Some(with_baseline));
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["stage"], "pilot");
    assert_eq!(body["devices"], serde_json::json!(["pump-a"]));
    assert_eq!(body["pipelines"], serde_json::json!(["scoped"]));

    // The alerts of the hot spells, acknowledged: pump-a's first true, second false;
    // pump-b's true, but pump-b is not in the pilot.
    eventually("three hot spells raise three alerts", || {
        let (_, alerts) = http(
            &url,
            reqwest::Method::GET,
            "/api/v1/alerts?rule=pump-hot",
            None,
        );
        alerts.as_array().is_some_and(|a| a.len() == 3)
    });
    let (_, alerts) = http(
        &url,
        reqwest::Method::GET,
        "/api/v1/alerts?rule=pump-hot",
        None,
    );
    let mut alerts = alerts.as_array().cloned().expect("alerts");
    alerts.sort_by_key(|a| (a["key"].to_string(), a["started_at"].to_string()));
    for (alert, feedback) in alerts
        .iter()
        .zip(["true_positive", "false_positive", "true_positive"])
    {
        let id = alert["id"].as_str().expect("id");
        let (code, body) = http(
            &url,
            reqwest::Method::POST,
            &format!("/api/v1/alerts/{}/ack", id),
            Some(serde_json::json!({"feedback": feedback})),
        );
        assert_eq!(code, 200, "{body}");
    }

    // The measured hour against the baseline hour, on pump-a only.
    let (code, report) = api(
        reqwest::Method::GET,
        &format!(
            "/pumps/kpis?from={}&to={}",
            rfc3339(t1),
            rfc3339(t1 + 3600 * SECOND)
        ),
        None,
    );
    assert_eq!(code, 200, "{report}");
    let kpi = |name: &str| {
        report["kpis"]
            .as_array()
            .expect("kpis")
            .iter()
            .find(|k| k["name"] == name)
            .cloned()
            .expect("kpi")
    };
    let close = |value: &serde_json::Value, want: f64| {
        value
            .as_f64()
            .is_some_and(|v| (v - want).abs() < 1e-9 * want.abs().max(1.0))
    };
    // 300 s down in 2,980 s observed (the 610 s gap is not observed), against 600 in 3,590.
    let downtime = kpi("downtime");
    let (now, before) = (100.0 * 300.0 / 2980.0, 100.0 * 600.0 / 3590.0);
    assert!(close(&downtime["current"]["value"], now), "{downtime}");
    assert!(close(&downtime["baseline"]["value"], before), "{downtime}");
    assert!(
        close(&downtime["improvement"], (before - now) / before),
        "{downtime}"
    );
    assert_eq!(downtime["target_met"], true, "{downtime}");
    // 1 kW while running (2,680 of 2,980 s observed) at 0.2 EUR/kWh, per device-day.
    let energy = kpi("energy");
    assert!(
        close(&energy["current"]["value"], 0.2 * 2680.0 / 2980.0 * 24.0),
        "{energy}"
    );
    assert_eq!(energy["unit"], "EUR per device-day");
    // Only running rows count: the stop's 20 °C does not.
    let coolest = kpi("coolest-running");
    assert!(close(&coolest["current"]["value"], 60.0), "{coolest}");
    let running_rows = kpi("running-rows");
    assert!(
        close(&running_rows["current"]["value"], 270.0),
        "{running_rows}"
    );
    assert_eq!(running_rows["evidence_unit"], "rows");
    let p95 = kpi("p95")["current"]["value"].as_f64().expect("p95");
    assert!((66.0..=90.0).contains(&p95), "p95 {p95}");
    let precision = kpi("precision");
    assert!(close(&precision["current"]["value"], 0.5), "{precision}");
    assert_eq!(precision["current"]["evidence"], 2.0, "{precision}");

    // The measured hour in two halves: the stop is in the first; the gap and nothing else
    // in the second (300 s down in 1,790 s observed, then 0 in 1,180).
    let (code, history) = api(
        reqwest::Method::GET,
        &format!(
            "/pumps/kpis/history?from={}&to={}&buckets=2",
            rfc3339(t1),
            rfc3339(t1 + 3600 * SECOND)
        ),
        None,
    );
    assert_eq!(code, 200, "{history}");
    let trend = &history["kpis"][0];
    assert_eq!(trend["name"], "downtime");
    assert!(
        close(&trend["values"][0], 100.0 * 300.0 / 1790.0),
        "{trend}"
    );
    assert!(close(&trend["values"][1], 0.0), "{trend}");
    assert!(close(&trend["evidence"][1], 1180.0 / 3600.0), "{trend}");
    let second_start = history["bucket_starts"][1].as_str().expect("bucket start");
    let second_start = chrono::DateTime::parse_from_rfc3339(second_start).expect("rfc 3339");
    assert_eq!(second_start.timestamp_nanos_opt(), Some(t1 + 1800 * SECOND));
    let (code, _) = api(reqwest::Method::GET, "/pumps/kpis/history?buckets=0", None);
    assert_eq!(code, 400);
    // Seven buckets do not divide an hour into whole seconds: each edge is exact, and the
    // buckets cover the period from its start.
    let (code, uneven) = api(
        reqwest::Method::GET,
        &format!(
            "/pumps/kpis/history?from={}&to={}&buckets=7",
            rfc3339(t1),
            rfc3339(t1 + 3600 * SECOND)
        ),
        None,
    );
    assert_eq!(code, 200, "{uneven}");
    let starts: Vec<i64> = uneven["bucket_starts"]
        .as_array()
        .expect("starts")
        .iter()
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s.as_str().expect("start"))
                .expect("rfc 3339")
                .timestamp_nanos_opt()
                .expect("ns")
        })
        .collect();
    assert_eq!(starts.len(), 7);
    assert_eq!(starts[0], t1);
    assert_eq!(starts[1], t1 + 3600 * SECOND / 7);
    assert_eq!(
        uneven["kpis"][0]["values"].as_array().map(Vec::len),
        Some(7)
    );

    // In pilot the pipeline scores pump-a's history and none of pump-b's.
    eventually("pump-a's windows are scored", || {
        inferences_of(&url, "pump-a") >= 61
    });
    assert_eq!(inferences_of(&url, "pump-b"), 0);

    // The gate is judged on what happened since the pilot began: nothing yet.
    let (code, gate) = api(reqwest::Method::GET, "/pumps/gate", None);
    assert_eq!(code, 200, "{gate}");
    assert_eq!(gate["passed"], false, "{gate}");
    let promote = serde_json::json!({
        "from": "pilot", "to": "scale_up", "reason": "the pilot met its KPIs"
    });
    let (code, refused) = api(reqwest::Method::POST, "/pumps/stage", Some(promote.clone()));
    assert_eq!(code, 409, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("downtime ≤ 50 (measured nothing)")),
        "{refused}"
    );
    let (code, skipped) = api(
        reqwest::Method::POST,
        "/pumps/stage",
        Some(serde_json::json!({
            "from": "pilot", "to": "enterprise", "reason": "hurry", "force": true
        })),
    );
    assert_eq!(code, 409, "one gate at a time: {skipped}");
    // A decision made on a stage it is not at (a stale page) is refused.
    let (code, stale) = api(
        reqwest::Method::POST,
        "/pumps/stage",
        Some(serde_json::json!({"from": "enterprise", "to": "scale_up", "reason": "stale"})),
    );
    assert_eq!(code, 409, "{stale}");
    // pump-a runs in the pilot; then the gate passes.
    burst(&url, &["pump-a"]);
    std::thread::sleep(std::time::Duration::from_millis(1700));
    let (code, decision) = api(reqwest::Method::POST, "/pumps/stage", Some(promote));
    assert_eq!(code, 200, "{decision}");
    assert_eq!(decision["forced"], false, "{decision}");
    assert_eq!(decision["gate"]["passed"], true, "{decision}");
    assert_eq!(decision["actor"], "admin-token");

    // At scale-up pump-b is scored from the promotion on (its old rows stay unscored).
    burst(&url, &["pump-a", "pump-b"]);
    eventually("pump-b is scored after the promotion", || {
        inferences_of(&url, "pump-b") == 5
    });
    // Each inference names the use case and the stage it was scored under.
    let stages = query(
        &url,
        "SELECT use_case, stage, count(*) AS n FROM inferences \
         WHERE pipeline = 'scoped' AND device = 'pump-b' GROUP BY use_case, stage",
    );
    assert_eq!(
        stages,
        [serde_json::json!({"use_case": "pumps", "stage": "scale_up", "n": 5})]
    );
    assert!(
        blocking_query_count(
            &url,
            "SELECT count(*) FROM inferences WHERE device = 'pump-a' AND stage = 'pilot'"
        ) >= 61
    );

    // A step back to pilot: pump-b is left alone again while pump-a goes on.
    let (code, back) = api(
        reqwest::Method::POST,
        "/pumps/stage",
        Some(serde_json::json!({
            "from": "scale_up", "to": "pilot", "reason": "wrong pump-b baseline"
        })),
    );
    assert_eq!(code, 200, "{back}");
    let pump_a = inferences_of(&url, "pump-a");
    burst(&url, &["pump-a", "pump-b"]);
    eventually("pump-a's new windows are scored", || {
        inferences_of(&url, "pump-a") == pump_a + 10
    });
    assert_eq!(inferences_of(&url, "pump-b"), 5);

    // Removing a use case a pipeline names is refused; the decisions are on record.
    let (code, _) = api(reqwest::Method::DELETE, "/pumps", None);
    assert_eq!(code, 409);
    let (ok, text) = client_command(&url, &["usecase", "decisions", "pumps"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("pilot → scale_up  by admin-token: the pilot met"),
        "{text}"
    );
    assert!(text.contains("scale_up → pilot"), "{text}");
    let (ok, text) = client_command(&url, &["usecase", "gate", "pumps"]);
    assert!(ok && text.contains("Gate pilot → scale-up"), "{text}");
    let (ok, text) = client_command(&url, &["usecase", "list"]);
    assert!(
        ok && text.contains("pumps") && text.contains("pilot"),
        "{text}"
    );
    let (ok, text) = client_command(
        &url,
        &[
            "usecase", "demote", "pumps", "--to", "scale_up", "--reason", "up?",
        ],
    );
    assert!(!ok && text.contains("use `promote`"), "{text}");
    // A criterion nobody meets: only a forced promotion passes, and it says what it overrode.
    let mut strict = definition();
    strict["gates"]["scale_up"][0]["at_least"] = 99.0.into();
    let (code, body) = api(reqwest::Method::PUT, "/pumps", Some(strict));
    assert_eq!((code, &body["stage"]), (200, &"pilot".into()), "{body}");
    let (ok, text) = client_command(&url, &["usecase", "promote", "pumps", "--reason", "again"]);
    assert!(!ok && text.contains("downtime ≥ 99"), "{text}");
    let (ok, text) = client_command(
        &url,
        &[
            "usecase", "promote", "pumps", "--reason", "again", "--force",
        ],
    );
    assert!(
        ok && text.contains("moved from pilot to scale_up, forced past its gate"),
        "{text}"
    );
    let (_, decisions) = api(reqwest::Method::GET, "/pumps/decisions", None);
    let last = decisions
        .as_array()
        .and_then(|d| d.last())
        .expect("decision");
    assert_eq!(
        (&last["forced"], &last["gate"]["passed"]),
        (&true.into(), &false.into())
    );
    let (ok, text) = client_command(&url, &["usecase", "decisions", "pumps"]);
    assert!(ok && text.contains("overridden: downtime ≥ 99"), "{text}");
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// A gate decided by Wald's SPRT on alert precision: undecided before any label, passed once
/// the operators' confirmations of alerts since the stage began suffice, and the check says
/// after how many.
#[test]
fn an_sprt_gate_passes_once_enough_alerts_of_the_stage_are_confirmed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = start_configured(dir.path(), CONFIG);
    let url = p.url.clone();
    let pumps = ["pump-a", "pump-b", "pump-c"];
    let mut definition = definition();
    definition["pilot"] = serde_json::json!({"devices": pumps});
    definition["gates"] = serde_json::json!({"scale_up": [
        {"kpi": "precision", "sprt": {"good": 0.9, "bad": 0.3}}
    ]});
    // On a KPI that is not a rate, it is refused, naming the criterion.
    let mut wrong = definition.clone();
    wrong["gates"]["scale_up"][0]["kpi"] = "downtime".into();
    let (code, body) = http(
        &url,
        reqwest::Method::PUT,
        "/api/v1/usecases/pumps",
        Some(wrong),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("gates.scale_up[0].sprt")),
        "{body}"
    );
    let (code, body) = http(
        &url,
        reqwest::Method::PUT,
        "/api/v1/usecases/pumps",
        Some(definition),
    );
    assert_eq!(code, 201, "{body}");
    let gate = || {
        let (code, gate) = http(
            &url,
            reqwest::Method::GET,
            "/api/v1/usecases/pumps/gate",
            None,
        );
        assert_eq!(code, 200, "{gate}");
        gate
    };
    let before = gate();
    assert_eq!(before["passed"], false, "{before}");
    assert_eq!(
        before["checks"][0]["criterion"],
        "precision is 0.9 rather than 0.3 (SPRT, α 0.05, β 0.2)"
    );
    assert!(
        before["checks"][0]["measured_text"]
            .as_str()
            .is_some_and(|t| t.starts_with("undecided after 0 labelled alerts")),
        "{before}"
    );

    // A hot spell on each pump, after the stage began: three alerts, each confirmed.
    let start = now_ns() + SECOND;
    let mut body = String::new();
    for pump in pumps {
        for i in 0..5 {
            body.push_str(&format!(
                "pump,device={pump} running=true,current=2.0,temperature=90.0 {}\n",
                start + i * SECOND / 10
            ));
        }
    }
    assert_eq!(post_status(&url, "/api/v1/write", &body), 200);
    let alerts = || crate::support::alerts_of(&url, "pump-hot");
    eventually("three alerts fire", || alerts().len() == 3);
    for (n, alert) in alerts().iter().enumerate() {
        let id = alert["id"].as_str().expect("id");
        let (code, body) = http(
            &url,
            reqwest::Method::POST,
            &format!("/api/v1/alerts/{id}/ack"),
            Some(serde_json::json!({"feedback": "true_positive"})),
        );
        assert_eq!(code, 200, "{body}");
        // ln(0.9/0.3) = 1.10 a confirmation; ln(0.8/0.05) = 2.77 decides: on the third.
        let check = gate()["checks"][0].clone();
        assert_eq!(check["passed"], n == 2, "after {} labels: {check}", n + 1);
    }
    let after = gate();
    assert_eq!(after["passed"], true, "{after}");
    assert_eq!(
        after["checks"][0]["measured_text"],
        "0.9 after 3 labelled alerts"
    );
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// KPIs kept as a series: with `[usecases] record_every = "2s"` each use case's KPIs over
/// every 2 s interval become rows of `use_case_kpis`, measured on the stage's devices only,
/// and an alert rule pages on one.
#[test]
fn kpis_are_recorded_every_interval_and_an_alert_rule_pages_on_one() {
    const KPI_CONFIG: &str = r#"
[usecases]
record_every = "2s"

[openlineage]
file = "lineage.jsonl"

[[alerting.rules]]
name = "busy-pilot"
table = "use_case_kpis"
value = "value"
key = "use_case"
filter = "kpi = 'rows'"
condition = "above"
threshold = 5.0
interval = "200ms"
start = "earliest"
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = start_configured(dir.path(), KPI_CONFIG);
    let definition = serde_json::json!({
        "objective": "Keep the pilot pump busy",
        "pilot": {"devices": ["pump-a"]},
        "kpis": [{"name": "rows", "kind": "aggregate", "table": "pump",
                  "signal": "temperature", "aggregate": "count", "target": 100.0}]
    });
    let (code, body) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/usecases/pumps",
        Some(definition),
    );
    assert_eq!(code, 201, "{body}");
    // Ten rows a second for 60 s from now on pump-a (in the pilot) and pump-b (not).
    let start = now_ns();
    let mut rows = String::new();
    for i in 0..600 {
        for device in ["pump-a", "pump-b"] {
            rows.push_str(&format!(
                "pump,device={device} temperature=60.0 {}\n",
                start + i * SECOND / 10
            ));
        }
    }
    assert_eq!(post_status(&p.url, "/api/v1/write", &rows), 200);
    // A whole 2 s interval holds 20 of pump-a's rows; pump-b's would make it 40. Lower is
    // better for an aggregate, so 20 meets the target of 100.
    eventually("a whole interval is recorded", || {
        crate::support::count_if_any(
            &p.url,
            "SELECT count(*) AS n FROM use_case_kpis WHERE use_case = 'pumps' \
             AND kpi = 'rows' AND value = 20 AND evidence = 20 AND stage = 'pilot' \
             AND target = 100 AND target_met AND node <> '' AND detail LIKE 'count of temperature%'",
        )
        .is_some_and(|n| n > 0)
    });
    assert_eq!(
        blocking_query_count(
            &p.url,
            "SELECT count(*) FROM use_case_kpis WHERE value > 20"
        ),
        0
    );
    // Each measurement is a run of the use case's job in a lineage catalog (decision 0080):
    // the table its KPI reads into `use_case_kpis`, over the interval it measured.
    let measured = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.path().join("data").join("lineage.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("an event"))
            .filter(|e: &serde_json::Value| e["job"]["name"] == "usecase.pumps.kpis")
            .collect()
    };
    eventually("a measurement's run in the lineage file", || {
        measured().iter().any(|e| e["eventType"] == "COMPLETE")
    });
    let mut events = measured();
    // The newest run's COMPLETE may be a write behind its START.
    if events.len() % 2 == 1 && events.last().is_some_and(|e| e["eventType"] == "START") {
        events.pop();
    }
    // Each run: its START, then its COMPLETE, next to each other (queued together).
    for pair in events.chunks(2) {
        assert_eq!(pair.len(), 2, "a run without its end: {pair:?}");
        assert_eq!(pair[0]["eventType"], "START", "{pair:?}");
        assert_eq!(pair[1]["eventType"], "COMPLETE", "{pair:?}");
        assert_eq!(pair[0]["run"]["runId"], pair[1]["run"]["runId"]);
    }
    let run = &events[1];
    assert_eq!(run["inputs"][0]["name"], "pump", "{run}");
    assert_eq!(run["outputs"][0]["name"], "use_case_kpis", "{run}");
    assert_eq!(
        run["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"], 1,
        "one row per KPI: {run}"
    );
    let nominal = &run["run"]["facets"]["nominalTime"];
    let at = |key: &str| {
        chrono::DateTime::parse_from_rfc3339(nominal[key].as_str().expect("a time"))
            .expect("RFC 3339")
    };
    assert_eq!(
        at("nominalEndTime") - at("nominalStartTime"),
        chrono::TimeDelta::seconds(2),
        "the interval measured: {nominal}"
    );
    eventually("the alert rule on the KPI fires", || {
        crate::support::alerts_of(&p.url, "busy-pilot")
            .iter()
            .any(|alert| alert["key"] == "pumps")
    });
    // Down for three intervals: at the restart, the intervals that ended meanwhile are
    // measured from the rows stored, so the series has no hole.
    let (status, _) = p.terminate();
    assert!(status.success());
    std::thread::sleep(std::time::Duration::from_secs(6));
    let p = start_configured(dir.path(), KPI_CONFIG);
    let ends = || -> Vec<i64> {
        query(
            &p.url,
            "SELECT DISTINCT CAST(time AS BIGINT) AS t FROM use_case_kpis \
             WHERE kpi = 'rows' ORDER BY t",
        )
        .iter()
        .filter_map(|r| r["t"].as_i64())
        .collect()
    };
    let restarted = now_ns();
    eventually("an interval after the restart is recorded", || {
        ends().last().is_some_and(|&t| t > restarted)
    });
    let ends = ends();
    let gaps: Vec<i64> = ends.windows(2).map(|w| (w[1] - w[0]) / SECOND).collect();
    assert!(gaps.iter().all(|&g| g == 2), "one row every 2 s: {gaps:?}");
    // Those measured after the restart counted the rows written before it.
    assert!(
        crate::support::count_if_any(
            &p.url,
            &format!(
                "SELECT count(*) AS n FROM use_case_kpis WHERE kpi = 'rows' AND value = 20 \
                 AND time > to_timestamp_nanos({}) AND time < to_timestamp_nanos({restarted})",
                restarted - 5 * SECOND
            ),
        )
        .is_some_and(|n| n > 0),
        "{ends:?}"
    );
    let (status, _) = p.terminate();
    assert!(status.success());
}
