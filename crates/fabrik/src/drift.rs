//! Pipelines' drift checks as data: each check a row of the `model_drift` table (queryable,
//! and an alert rule's input like any table), its metrics and log line, and each device's
//! latest check read back for `GET /api/v1/pipelines/{name}/drift`.

use std::collections::BTreeMap;

use datafusion::arrow::array::{BooleanArray, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use fabrik_api::pipelines::{DriftStatus, FeatureDriftStatus};
use fabrik_core::{Point, Quality, Timestamp, Value};
use fabrik_ml::pipeline::DriftCheck;
use fabrik_store::Store;

use crate::columns::cast_column;
use crate::pipelines::rfc3339;
use crate::sql_text::literal;

/// The table drift checks are written to.
pub(crate) const DRIFT_TABLE: &str = "model_drift";

/// How far back the latest check of a device is looked for.
const LATEST_WITHIN_DAYS: u32 = 30;

/// The features of `check` that drifted, most drifted first: smallest p-value, or largest
/// distance (p-value tests and distance tests are not mixed within a check unless `auto`
/// chose both, and then p-values come first).
fn drifted_features(feature_names: &[String], check: &DriftCheck) -> Vec<String> {
    let mut drifted: Vec<(bool, f64, &String)> = check
        .drift
        .features
        .iter()
        .zip(feature_names)
        .filter(|(feature, _)| feature.drifted)
        .map(|(feature, name)| {
            let p_value = feature.method.is_p_value();
            // Ascending sort: small p-values and large distances first.
            let key = if p_value {
                feature.score
            } else {
                -feature.score
            };
            (!p_value, key, name)
        })
        .collect();
    drifted.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    drifted
        .into_iter()
        .map(|(_, _, name)| name.clone())
        .collect()
}

/// A check as a row: tags `pipeline` and `device`, the check's numbers as fields, the
/// features' tests as a JSON array in `features`, stamped at the last instant of the windows checked.
fn check_point(pipeline: &str, feature_names: &[String], check: &DriftCheck) -> Point {
    let features = serde_json::Value::Array(
        check
            .drift
            .features
            .iter()
            .zip(feature_names)
            .map(|(feature, name)| {
                serde_json::json!({
                    "feature": name,
                    "method": feature.method.name(),
                    "score": finite(feature.score, feature.method.is_p_value()),
                    "threshold": feature.threshold,
                    "drifted": feature.drifted,
                })
            })
            .collect(),
    );
    let count = |n: usize| Value::I64(i64::try_from(n).unwrap_or(i64::MAX));
    let mut fields = vec![
        (
            "dataset_drift".to_owned(),
            Value::Bool(check.drift.dataset_drift),
        ),
        ("drifted_share".to_owned(), Value::F64(check.drift.share)),
        (
            "drifted_features".to_owned(),
            Value::Str(drifted_features(feature_names, check).join(",")),
        ),
        ("features".to_owned(), Value::Str(features.to_string())),
        (
            "consecutive".to_owned(),
            Value::I64(i64::from(check.consecutive)),
        ),
        ("retrained".to_owned(), Value::Bool(check.retrained)),
        (
            "retrained_from".to_owned(),
            Value::I64(check.retrained_from.unwrap_or(0)),
        ),
        (
            "retrain_error".to_owned(),
            Value::Str(check.retrain_error.clone().unwrap_or_default()),
        ),
        ("windows".to_owned(), count(check.windows)),
        ("anomalies".to_owned(), count(check.anomalies)),
        (
            "reference_windows".to_owned(),
            count(check.reference_windows),
        ),
        ("reference_from".to_owned(), Value::I64(check.reference.0)),
        ("reference_until".to_owned(), Value::I64(check.reference.1)),
        ("current_from".to_owned(), Value::I64(check.current.0)),
        ("current_until".to_owned(), Value::I64(check.current.1)),
        (
            "model_version".to_owned(),
            Value::Str(check.model_version.clone()),
        ),
    ];
    if let Some(whole) = &check.drift.reconstruction {
        fields.extend([
            ("reconstruction_error".to_owned(), Value::F64(whole.error)),
            ("reconstruction_upper".to_owned(), Value::F64(whole.upper)),
            (
                "reconstruction_components".to_owned(),
                count(whole.components),
            ),
        ]);
        if let Some(lower) = whole.lower {
            fields.push(("reconstruction_lower".to_owned(), Value::F64(lower)));
        }
    }
    Point {
        measurement: DRIFT_TABLE.to_owned(),
        tags: vec![
            ("pipeline".to_owned(), pipeline.to_owned()),
            ("device".to_owned(), check.device.clone()),
        ],
        fields,
        time: Timestamp(check.current.1 - 1),
        quality: Quality::Good,
    }
}

/// JSON has no NaN or infinities (a p-value never is one; a distance over an empty bin may
/// be): an undefined score shows no drift (a p-value of 1, a distance of 0), as its verdict
/// was.
fn finite(x: f64, p_value: bool) -> f64 {
    match (x.is_nan(), p_value) {
        (true, true) => 1.0,
        (true, false) => 0.0,
        _ => x.clamp(f64::MIN, f64::MAX),
    }
}

/// Stores `checks` of pipeline `pipeline` (features named `feature_names`), counts them, and
/// logs the drifted ones and the retrainings.
pub(crate) async fn record(
    store: &Store,
    pipeline: &str,
    feature_names: &[String],
    checks: &[DriftCheck],
) -> Result<(), String> {
    if checks.is_empty() {
        return Ok(());
    }
    let points: Vec<Point> = checks
        .iter()
        .map(|check| check_point(pipeline, feature_names, check))
        .collect();
    crate::pipelines::store_rows(store, pipeline, &points, DRIFT_TABLE)
        .await
        .map_err(|e| format!("storing drift checks: {e}"))?;
    for check in checks {
        let outcome = if check.drift.dataset_drift {
            "drifted"
        } else {
            "stable"
        };
        metrics::counter!(
            "fabrik_pipeline_drift_checks_total",
            "pipeline" => pipeline.to_owned(),
            "outcome" => outcome
        )
        .increment(1);
        if check.drift.dataset_drift {
            tracing::warn!(
                pipeline = %pipeline,
                device = %check.device,
                drifted_share = check.drift.share,
                features = %drifted_features(feature_names, check).join(", "),
                consecutive = check.consecutive,
                "A device's input drifted from the windows its model learnt from."
            );
        }
        if let Some(error) = &check.retrain_error {
            tracing::warn!(
                pipeline = %pipeline,
                device = %check.device,
                error = %error,
                "A device's input drifted long enough to retrain, but retraining failed; it keeps its model."
            );
        }
        if check.retrained {
            metrics::counter!(
                "fabrik_pipeline_drift_retrains_total",
                "pipeline" => pipeline.to_owned()
            )
            .increment(1);
            tracing::info!(
                pipeline = %pipeline,
                device = %check.device,
                from = %rfc3339(check.current.1),
                "Device retrained on its drifted windows: they are its new normal."
            );
        }
    }
    Ok(())
}

/// Per device, its latest drift retraining of `pipeline` in the last `days` days: the check's
/// time (ns) and the span learnt from. The inferences after a retraining name that span; one
/// made at the last check before a stop is named only here.
pub(crate) async fn retrain_spans(
    store: &Store,
    pipeline: &str,
    days: u32,
) -> Result<BTreeMap<String, (i64, (i64, i64))>, String> {
    let mut spans = BTreeMap::new();
    if !store.has_table(DRIFT_TABLE) {
        return Ok(spans);
    }
    let quoted = literal(pipeline);
    let sql = format!(
        "SELECT device, CAST(time AS BIGINT) AS at, retrained_from, current_until \
         FROM {DRIFT_TABLE} WHERE pipeline = {quoted} AND retrained = true \
         AND time > now() - INTERVAL '{days} days'"
    );
    let output = match store.query(&sql).await {
        Ok(output) => output,
        // Checks written before retrainings were recorded have no such column.
        Err(e) if e.to_string().contains("retrained") => return Ok(spans),
        Err(e) => return Err(e.to_string()),
    };
    for batch in &output.batches {
        let device: StringArray = cast_column(batch, 0, &DataType::Utf8, "device")?;
        let at: Int64Array = cast_column(batch, 1, &DataType::Int64, "time")?;
        let from: Int64Array = cast_column(batch, 2, &DataType::Int64, "retrained_from")?;
        let until: Int64Array = cast_column(batch, 3, &DataType::Int64, "current_until")?;
        for row in 0..batch.num_rows() {
            let entry = (at.value(row), (from.value(row), until.value(row)));
            spans
                .entry(device.value(row).to_owned())
                .and_modify(|latest: &mut (i64, (i64, i64))| {
                    if entry.0 > latest.0 {
                        *latest = entry;
                    }
                })
                .or_insert(entry);
        }
    }
    Ok(spans)
}

/// Each device's latest check of `pipeline` in the last [`LATEST_WITHIN_DAYS`] days, drifted
/// devices first, then by device.
pub(crate) async fn latest(store: &Store, pipeline: &str) -> Result<Vec<DriftStatus>, String> {
    if !store.has_table(DRIFT_TABLE) {
        return Ok(Vec::new());
    }
    let quoted = literal(pipeline);
    let sql = format!(
        "SELECT device, dataset_drift, drifted_share, drifted_features, consecutive, retrained, \
         windows, anomalies, reference_windows, reference_from, reference_until, current_from, \
         current_until, model_version, features FROM (SELECT *, row_number() OVER \
         (PARTITION BY device ORDER BY time DESC) AS newest FROM {DRIFT_TABLE} \
         WHERE pipeline = {quoted} AND time > now() - INTERVAL '{LATEST_WITHIN_DAYS} days') \
         WHERE newest = 1"
    );
    let output = store.query(&sql).await.map_err(|e| e.to_string())?;
    let mut statuses = Vec::new();
    for batch in &output.batches {
        let text = |index: usize, what: &str| -> Result<StringArray, String> {
            cast_column(batch, index, &DataType::Utf8, what)
        };
        let integer = |index: usize, what: &str| -> Result<Int64Array, String> {
            cast_column(batch, index, &DataType::Int64, what)
        };
        let flag = |index: usize, what: &str| -> Result<BooleanArray, String> {
            cast_column(batch, index, &DataType::Boolean, what)
        };
        let device = text(0, "device")?;
        let dataset_drift = flag(1, "dataset_drift")?;
        let share: Float64Array = cast_column(batch, 2, &DataType::Float64, "drifted_share")?;
        let drifted = text(3, "drifted_features")?;
        let consecutive = integer(4, "consecutive")?;
        let retrained = flag(5, "retrained")?;
        let windows = integer(6, "windows")?;
        let anomalies = integer(7, "anomalies")?;
        let reference_windows = integer(8, "reference_windows")?;
        let reference_from = integer(9, "reference_from")?;
        let reference_until = integer(10, "reference_until")?;
        let current_from = integer(11, "current_from")?;
        let current_until = integer(12, "current_until")?;
        let version = text(13, "model_version")?;
        let features = text(14, "features")?;
        for row in 0..batch.num_rows() {
            let count = |array: &Int64Array| u64::try_from(array.value(row)).unwrap_or(0);
            let per_feature: Vec<serde_json::Value> =
                serde_json::from_str(features.value(row)).unwrap_or_default();
            statuses.push(DriftStatus {
                device: device.value(row).to_owned(),
                dataset_drift: dataset_drift.value(row),
                drifted_share: share.value(row),
                drifted_features: drifted
                    .value(row)
                    .split(',')
                    .filter(|name| !name.is_empty())
                    .map(str::to_owned)
                    .collect(),
                consecutive: count(&consecutive),
                retrained: retrained.value(row),
                windows: count(&windows),
                anomalies: count(&anomalies),
                reference_windows: count(&reference_windows),
                reference_from: rfc3339(reference_from.value(row)),
                reference_until: rfc3339(reference_until.value(row)),
                current_from: rfc3339(current_from.value(row)),
                current_until: rfc3339(current_until.value(row)),
                model_version: version.value(row).to_owned(),
                features: per_feature
                    .into_iter()
                    .map(|test| FeatureDriftStatus {
                        feature: test["feature"].as_str().unwrap_or_default().to_owned(),
                        method: test["method"].as_str().unwrap_or_default().to_owned(),
                        score: test["score"].as_f64().unwrap_or(f64::NAN),
                        threshold: test["threshold"].as_f64().unwrap_or(f64::NAN),
                        drifted: test["drifted"].as_bool().unwrap_or(false),
                    })
                    .collect(),
            });
        }
    }
    statuses.sort_by(|a, b| {
        b.dataset_drift
            .cmp(&a.dataset_drift)
            .then_with(|| a.device.cmp(&b.device))
    });
    Ok(statuses)
}
