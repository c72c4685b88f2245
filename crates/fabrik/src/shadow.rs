//! Challenger models (`[pipelines.shadow]`) as data: each window the challenger scores is a row
//! of `shadow_inferences` beside the champion's verdict on the same window, never read by alert
//! rules or use-case KPIs (they read `inferences`); and the comparison of the two, on every
//! window and on the windows operators labelled through alert feedback.

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, BooleanArray, Int64Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use fabrik_api::pipelines::{ShadowComparison, ShadowDevice};
use fabrik_core::Value;
use fabrik_ml::pipeline::Inference;
use fabrik_runtime::config::PipelineConfig;
use fabrik_store::Store;

use crate::columns::cast_column;
use crate::pipelines::{inference_point, model_tag, model_version};
use crate::sql_text::literal;

/// The table challengers' inferences are written to.
pub(crate) const SHADOW_TABLE: &str = "shadow_inferences";

/// Stores the challenger's `challenged` inferences of pipeline `champion` (its definition; the
/// challenger's is `challenger`), each with the champion's score and flag on the same window
/// when the champion scored it (`champion_inferences`, from the same pass). Whether there
/// was anything to store.
pub(crate) async fn record(
    store: &Store,
    champion: &PipelineConfig,
    challenger: &PipelineConfig,
    champion_inferences: &[Inference],
    challenged: &[Inference],
) -> Result<bool, String> {
    if challenged.is_empty() {
        return Ok(false);
    }
    let pipeline = &champion.name;
    let by_window: BTreeMap<(&str, i64), &Inference> = champion_inferences
        .iter()
        .map(|i| ((i.device.as_str(), i.window_start_ns), i))
        .collect();
    let (champion_tag, challenger_tag) = (model_tag(champion), model_tag(challenger));
    let mut disagreements = 0_u64;
    let points: Vec<_> = challenged
        .iter()
        .map(|inference| {
            let version = model_version(challenger, &inference.model_version);
            let mut point = inference_point(pipeline, &challenger_tag, &version, inference);
            point.measurement = SHADOW_TABLE.to_owned();
            point.fields.push((
                "champion_model".to_owned(),
                Value::Str(champion_tag.clone()),
            ));
            if let Some(verdict) =
                by_window.get(&(inference.device.as_str(), inference.window_start_ns))
            {
                disagreements += u64::from(verdict.flag != inference.flag);
                point.fields.push((
                    "champion_model_version".to_owned(),
                    Value::Str(model_version(champion, &verdict.model_version)),
                ));
                point.fields.push((
                    "champion_score".to_owned(),
                    Value::F64(verdict.score.clamp(f64::MIN, f64::MAX)),
                ));
                point
                    .fields
                    .push(("champion_flag".to_owned(), Value::Bool(verdict.flag)));
            }
            point
        })
        .collect();
    crate::pipelines::store_rows(store, pipeline, &points, SHADOW_TABLE)
        .await
        .map_err(|e| format!("storing the shadow model's inferences: {e}"))?;
    metrics::counter!("fabrik_pipeline_shadow_inferences_total", "pipeline" => pipeline.clone())
        .increment(points.len() as u64);
    metrics::counter!("fabrik_pipeline_shadow_disagreements_total", "pipeline" => pipeline.clone())
        .increment(disagreements);
    Ok(true)
}

/// `<alias>.time` within the last `days` days.
fn within_days(alias: &str, days: u32) -> String {
    format!("{alias}.time > now() - INTERVAL '{days} days'")
}

/// Whether a query failed because a column it names was never written (a table's columns are
/// those of its rows so far).
fn missing_column(error: &str, column: &str) -> bool {
    // DataFusion lists the valid fields after the missing one; only the missing one counts.
    let missing = error.split("Valid fields").next().unwrap_or(error);
    missing.contains("No field named") && missing.contains(column)
}

/// Runs `sql`, or `None` when it names a column `column` not written yet.
async fn query_unless_missing(
    store: &Store,
    sql: &str,
    column: &str,
) -> Result<Option<fabrik_store::QueryOutput>, String> {
    match store.query(sql).await {
        Ok(output) => Ok(Some(output)),
        Err(e) if missing_column(&e.to_string(), column) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// The challenger `challenger` of pipeline `champion` against it over the last `days` days:
/// the windows of the latest pair of model versions (a retuned challenger, or a champion
/// redefined, starts a new comparison rather than mixing in verdicts of another definition).
pub(crate) async fn compare(
    store: &Store,
    champion: &PipelineConfig,
    challenger: &PipelineConfig,
    days: u32,
) -> Result<ShadowComparison, String> {
    let pipeline = &champion.name;
    let (champion_tag, challenger_tag) = (model_tag(champion), model_tag(challenger));
    let mut comparison = ShadowComparison {
        pipeline: pipeline.clone(),
        champion: champion_tag.clone(),
        challenger: challenger_tag.clone(),
        champion_version: None,
        challenger_version: None,
        days,
        windows: 0,
        unpaired: 0,
        champion_flags: 0,
        challenger_flags: 0,
        both_flagged: 0,
        agreement: None,
        confirmed: 0,
        confirmed_flagged_by_challenger: 0,
        false_alarms: 0,
        false_alarms_flagged_by_challenger: 0,
        devices: Vec::new(),
    };
    if !store.has_table(SHADOW_TABLE) {
        return Ok(comparison);
    }
    let of_these = format!(
        "s.pipeline = {} AND s.model = {} AND s.champion_model = {} AND {}",
        literal(pipeline),
        literal(&challenger_tag),
        literal(&champion_tag),
        within_days("s", days)
    );
    let latest = format!(
        "SELECT s.model_version, s.champion_model_version FROM {SHADOW_TABLE} s \
         WHERE {of_these} AND s.champion_model_version IS NOT NULL ORDER BY s.time DESC LIMIT 1"
    );
    let Some(output) = query_unless_missing(store, &latest, "champion_model_version").await? else {
        return Ok(comparison);
    };
    for batch in &output.batches {
        let challenger_version: StringArray =
            cast_column(batch, 0, &DataType::Utf8, "model_version")?;
        let champion_version: StringArray =
            cast_column(batch, 1, &DataType::Utf8, "champion_model_version")?;
        if batch.num_rows() > 0 {
            comparison.challenger_version = Some(challenger_version.value(0).to_owned());
            comparison.champion_version = Some(champion_version.value(0).to_owned());
        }
    }
    let (Some(challenger_version), Some(champion_version)) = (
        comparison.challenger_version.clone(),
        comparison.champion_version.clone(),
    ) else {
        return Ok(comparison);
    };
    let paired = format!(
        "{of_these} AND s.model_version = {} AND s.champion_model_version = {}",
        literal(&challenger_version),
        literal(&champion_version)
    );
    let sql = format!(
        "SELECT s.device, count(*) AS windows, \
         sum(CASE WHEN s.champion_flag THEN 1 ELSE 0 END) AS champion_flags, \
         sum(CASE WHEN s.flag THEN 1 ELSE 0 END) AS challenger_flags, \
         sum(CASE WHEN s.flag AND s.champion_flag THEN 1 ELSE 0 END) AS both_flagged \
         FROM {SHADOW_TABLE} s WHERE {paired} GROUP BY s.device ORDER BY s.device"
    );
    let output = store.query(&sql).await.map_err(|e| e.to_string())?;
    for batch in &output.batches {
        let device: StringArray = cast_column(batch, 0, &DataType::Utf8, "device")?;
        let count = |index: usize, what: &str| -> Result<Int64Array, String> {
            cast_column(batch, index, &DataType::Int64, what)
        };
        let (windows, champion_flags, challenger_flags, both) = (
            count(1, "windows")?,
            count(2, "champion_flags")?,
            count(3, "challenger_flags")?,
            count(4, "both_flagged")?,
        );
        for row in 0..batch.num_rows() {
            let value = |array: &Int64Array| u64::try_from(array.value(row)).unwrap_or(0);
            comparison.devices.push(ShadowDevice {
                device: device.value(row).to_owned(),
                windows: value(&windows),
                champion_flags: value(&champion_flags),
                challenger_flags: value(&challenger_flags),
                both_flagged: value(&both),
            });
        }
    }
    for device in &comparison.devices {
        comparison.windows += device.windows;
        comparison.champion_flags += device.champion_flags;
        comparison.challenger_flags += device.challenger_flags;
        comparison.both_flagged += device.both_flagged;
    }
    if comparison.windows > 0 {
        let different =
            comparison.champion_flags + comparison.challenger_flags - 2 * comparison.both_flagged;
        comparison.agreement =
            Some((comparison.windows - different) as f64 / comparison.windows as f64);
    }
    // Windows of this challenger version the champion did not score in the same pass (a
    // count window restored from a saved span starts elsewhere; a device still learning).
    let unpaired = format!(
        "SELECT count(*) AS n FROM {SHADOW_TABLE} s WHERE s.pipeline = {} AND s.model = {} \
         AND s.champion_model = {} AND s.model_version = {} AND s.champion_flag IS NULL \
         AND {}",
        literal(pipeline),
        literal(&challenger_tag),
        literal(&champion_tag),
        literal(&challenger_version),
        within_days("s", days)
    );
    let output = store.query(&unpaired).await.map_err(|e| e.to_string())?;
    for batch in &output.batches {
        let n: Int64Array = cast_column(batch, 0, &DataType::Int64, "count")?;
        if batch.num_rows() > 0 {
            comparison.unpaired = u64::try_from(n.value(0)).unwrap_or(0);
        }
    }
    labelled(store, &paired, &champion_version, &mut comparison).await?;
    Ok(comparison)
}

/// Counts the windows operators labelled: an alert on a pipeline's inferences starts at a
/// flagged window, and its `alert_labels` row is stamped at that window's time, naming the
/// pipeline when the rule's context carries it (rows that do not are not counted: they cannot
/// be told from another pipeline's alert on the same device and instant). Only windows of the
/// compared pair: flagged by the champion's version and scored by the challenger's (`paired`);
/// each once, confirmed if any alert on it was.
async fn labelled(
    store: &Store,
    paired: &str,
    champion_version: &str,
    comparison: &mut ShadowComparison,
) -> Result<(), String> {
    let days = comparison.days;
    let labels = fabrik_api::alerts::ALERT_LABELS_TABLE;
    if !store.has_table(labels) {
        return Ok(());
    }
    let pipeline = literal(&comparison.pipeline);
    // One verdict per window: confirmed if any rule's alert on it was confirmed.
    let sql = format!(
        "SELECT i.window_id, bool_or(l.true_positive) AS confirmed, bool_or(s.flag) AS flag \
         FROM {labels} l \
         JOIN inferences i ON i.device = l.device AND i.time = l.time AND i.pipeline = {pipeline} \
         AND i.flag AND i.model_version = {champion} AND {i_within} \
         JOIN (SELECT * FROM {SHADOW_TABLE} s WHERE {paired}) s \
         ON s.device = i.device AND s.window_id = i.window_id \
         WHERE l.pipeline = {pipeline} AND {l_within} GROUP BY i.window_id",
        champion = literal(champion_version),
        i_within = within_days("i", days),
        l_within = within_days("l", days),
    );
    let Some(output) = query_unless_missing(store, &sql, "l.pipeline").await? else {
        return Ok(());
    };
    for batch in &output.batches {
        let confirmed: BooleanArray = cast_column(batch, 1, &DataType::Boolean, "true_positive")?;
        let flagged: BooleanArray = cast_column(batch, 2, &DataType::Boolean, "flag")?;
        for row in 0..batch.num_rows() {
            if confirmed.is_null(row) {
                continue;
            }
            let caught = !flagged.is_null(row) && flagged.value(row);
            if confirmed.value(row) {
                comparison.confirmed += 1;
                comparison.confirmed_flagged_by_challenger += u64::from(caught);
            } else {
                comparison.false_alarms += 1;
                comparison.false_alarms_flagged_by_challenger += u64::from(caught);
            }
        }
    }
    Ok(())
}
