//! Challenger models (`[pipelines.shadow]`) as data: each window the challenger scores is a row
//! of `shadow_inferences` beside the champion's verdict on the same window, never read by alert
//! rules or use-case KPIs (they read `inferences`, where the pipeline writes the challenger's
//! verdicts only on the devices of an A/B split); and the comparison of the two, on every
//! window and on the windows operators labelled through alert feedback.

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, BooleanArray, Int64Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use fabrik_api::pipelines::{
    ArmDifference, ShadowArm, ShadowArms, ShadowComparison, ShadowDecision, ShadowDevice,
    ShadowVerdict,
};
use fabrik_core::Value;
use fabrik_ml::permutation::{RateComparison, Unit, compare_pooled_rates};
use fabrik_ml::pipeline::Inference;
use fabrik_ml::sequential::{Decision, MixtureSprt, Pairing};
use fabrik_runtime::config::PipelineConfig;
use fabrik_store::Store;

use crate::columns::cast_column;
use crate::pipelines::{inference_point, model_tag, model_version};
use crate::sql_text::literal;

/// The table challengers' inferences are written to.
pub(crate) const SHADOW_TABLE: &str = "shadow_inferences";

/// The column (true) of `shadow_inferences` rows on devices the challenger was live on (an A/B
/// split): its verdict was the pipeline's, and the champion's beside it the shadow.
pub(crate) const LIVE_COLUMN: &str = "live";

/// Stores the challenger's `challenged` inferences of pipeline `champion` (its definition; the
/// challenger's is `challenger`), each with the champion's score and flag on the same window
/// when the champion scored it (`champion_inferences`, from the same pass), and whether the
/// challenger was `live` on the device. Whether there was anything to store.
pub(crate) async fn record(
    store: &Store,
    champion: &PipelineConfig,
    challenger: &PipelineConfig,
    champion_inferences: &[Inference],
    challenged: &[Inference],
    live: impl Fn(&str) -> bool,
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
            let live = live(&inference.device);
            if live {
                point
                    .fields
                    .push((LIVE_COLUMN.to_owned(), Value::Bool(true)));
            }
            if let Some(verdict) =
                by_window.get(&(inference.device.as_str(), inference.window_start_ns))
            {
                // Where the challenger acts, the champion writes no rows of its own: its
                // span is kept here, for it to learn again from at a restart.
                if live {
                    point.fields.push((
                        "champion_trained_from".to_owned(),
                        Value::I64(verdict.trained_from_ns),
                    ));
                    point.fields.push((
                        "champion_trained_until".to_owned(),
                        Value::I64(verdict.trained_until_ns),
                    ));
                }
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

/// Nanoseconds in a day.
const DAY_NS: i64 = 86_400_000_000_000;

/// A timestamp as SQL: nanoseconds since the epoch.
fn timestamp_literal(ns: i64) -> String {
    format!("to_timestamp_nanos({ns})")
}

/// `<alias>.time` within the last `days` days.
pub(crate) fn within_days(alias: &str, days: u32) -> String {
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

/// The challenger's and the champion's versions in the first row `sql` selects (its first two
/// columns), if it has one with both; none when the table has no champions' versions yet
/// (rows written before they were).
pub(crate) async fn latest_versions(
    store: &Store,
    sql: &str,
) -> Result<Option<(String, String)>, String> {
    let Some(output) = query_unless_missing(store, sql, "champion_model_version").await? else {
        return Ok(None);
    };
    let Some(batch) = output.batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    let challenger: StringArray = cast_column(batch, 0, &DataType::Utf8, "model_version")?;
    let champion: StringArray = cast_column(batch, 1, &DataType::Utf8, "champion_model_version")?;
    if challenger.is_null(0) || champion.is_null(0) {
        return Ok(None);
    }
    Ok(Some((
        challenger.value(0).to_owned(),
        champion.value(0).to_owned(),
    )))
}

/// The challenger `challenger` of pipeline `champion` against it over the last `days` days:
/// the windows of the latest pair of model versions (a retuned challenger, or a champion
/// redefined, starts a new comparison rather than mixing in verdicts of another definition).
pub(crate) async fn compare(
    store: &Store,
    champion: &PipelineConfig,
    challenger: &PipelineConfig,
    days: u32,
    alpha: f64,
) -> Result<ShadowComparison, String> {
    // Each side of a pair is 1 (right) or 0 (wrong), so a difference lies within [-1, 1].
    let mut test = MixtureSprt::new(DECISION_TAU2, alpha, Pairing::Paired)
        .and_then(|test| test.with_difference_bounds(-1.0, 1.0))
        .map_err(|e| e.to_string())?;
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
        live_windows: 0,
        confirmed: 0,
        confirmed_flagged_by_challenger: 0,
        confirmed_flagged_by_champion: 0,
        false_alarms: 0,
        false_alarms_flagged_by_challenger: 0,
        false_alarms_flagged_by_champion: 0,
        decision: undecided(&test),
        arms: None,
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
    let Some((challenger_version, champion_version)) = latest_versions(store, &latest).await?
    else {
        return Ok(comparison);
    };
    comparison.challenger_version = Some(challenger_version.clone());
    comparison.champion_version = Some(champion_version.clone());
    let paired = format!(
        "{of_these} AND s.model_version = {} AND s.champion_model_version = {}",
        literal(&challenger_version),
        literal(&champion_version)
    );
    // A table written before A/B splits, or only by pure shadows, has no `live` column.
    let has_live = store.has_column(SHADOW_TABLE, LIVE_COLUMN);
    let (live_windows, live_flags, champion_acted_flags, live_any) = if has_live {
        (
            format!("sum(CASE WHEN s.{LIVE_COLUMN} THEN 1 ELSE 0 END)"),
            format!("sum(CASE WHEN s.{LIVE_COLUMN} AND s.flag THEN 1 ELSE 0 END)"),
            format!(
                "sum(CASE WHEN s.{LIVE_COLUMN} IS NOT TRUE AND s.champion_flag THEN 1 ELSE 0 END)"
            ),
            format!("bool_or(s.{LIVE_COLUMN} IS TRUE)"),
        )
    } else {
        (
            "CAST(0 AS BIGINT)".to_owned(),
            "CAST(0 AS BIGINT)".to_owned(),
            "sum(CASE WHEN s.champion_flag THEN 1 ELSE 0 END)".to_owned(),
            "false".to_owned(),
        )
    };
    let sql = format!(
        "SELECT s.device, count(*) AS windows, \
         sum(CASE WHEN s.champion_flag THEN 1 ELSE 0 END) AS champion_flags, \
         sum(CASE WHEN s.flag THEN 1 ELSE 0 END) AS challenger_flags, \
         sum(CASE WHEN s.flag AND s.champion_flag THEN 1 ELSE 0 END) AS both_flagged, \
         {live_windows} AS live_windows, {live_flags} AS live_flags, \
         {champion_acted_flags} AS champion_acted_flags \
         FROM {SHADOW_TABLE} s WHERE {paired} GROUP BY s.device ORDER BY s.device"
    );
    let output = store.query(&sql).await.map_err(|e| e.to_string())?;
    for batch in &output.batches {
        let device: StringArray = cast_column(batch, 0, &DataType::Utf8, "device")?;
        let count = |index: usize, what: &str| -> Result<Int64Array, String> {
            cast_column(batch, index, &DataType::Int64, what)
        };
        let (windows, champion_flags, challenger_flags, both, live) = (
            count(1, "windows")?,
            count(2, "champion_flags")?,
            count(3, "challenger_flags")?,
            count(4, "both_flagged")?,
            count(5, "live_windows")?,
        );
        let (live_flags, champion_acted_flags) =
            (count(6, "live_flags")?, count(7, "champion_acted_flags")?);
        for row in 0..batch.num_rows() {
            let value = |array: &Int64Array| u64::try_from(array.value(row)).unwrap_or(0);
            comparison.devices.push(ShadowDevice {
                device: device.value(row).to_owned(),
                windows: value(&windows),
                champion_flags: value(&champion_flags),
                challenger_flags: value(&challenger_flags),
                both_flagged: value(&both),
                live_windows: value(&live),
                live_flags: value(&live_flags),
                champion_acted_flags: value(&champion_acted_flags),
            });
        }
    }
    for device in &comparison.devices {
        comparison.windows += device.windows;
        comparison.champion_flags += device.champion_flags;
        comparison.challenger_flags += device.challenger_flags;
        comparison.both_flagged += device.both_flagged;
        comparison.live_windows += device.live_windows;
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
    // The decision reads every labelled window of the pair, from its first: a test whose
    // start moved with the period shown would be a new test at every reading.
    let pair_ever = format!(
        "s.pipeline = {} AND s.model = {} AND s.champion_model = {} AND s.model_version = {} \
         AND s.champion_model_version = {}",
        literal(pipeline),
        literal(&challenger_tag),
        literal(&champion_tag),
        literal(&challenger_version),
        literal(&champion_version)
    );
    // Bound the inferences scanned by the pair's first window: without it the join reads the
    // pipeline's inferences of every retained day at each reading.
    let first = format!(
        "SELECT CAST(min(s.time) AS BIGINT) AS first FROM {SHADOW_TABLE} s WHERE {pair_ever}"
    );
    let Some(first_ns) = crate::columns::query_i64(store, &first).await? else {
        return Ok(comparison);
    };
    let acting = format!(
        "((i.model = {} AND i.model_version = {}) OR (i.model = {} AND i.model_version = {}))",
        literal(&champion_tag),
        literal(&champion_version),
        literal(&challenger_tag),
        literal(&challenger_version),
    );
    let labels = labelled(
        store,
        &pair_ever,
        &acting,
        &live_any,
        first_ns,
        &mut comparison,
        &mut test,
    )
    .await?;
    comparison.arms = arms(&comparison.devices, &labels);
    Ok(comparison)
}

/// Per device and arm (`true`: the challenger's), the labelled alerts and how many of them
/// were confirmed, in the period shown.
type LabelsByArm = BTreeMap<(String, bool), (u64, u64)>;

/// Seeds the random assignments when a split has too many devices to weigh every one: fixed,
/// so the same data gives the same p-value at every reading.
pub(crate) const ARMS_SEED: u64 = 0x5EED_0FAB;

/// The two arms of an A/B split side by side, with permutation tests over devices; `None`
/// unless both arms have windows.
fn arms(devices: &[ShadowDevice], labels: &LabelsByArm) -> Option<ShadowArms> {
    let mut windows = (Vec::new(), Vec::new());
    for d in devices {
        let other_windows = d.windows.saturating_sub(d.live_windows);
        if d.live_windows > 0 {
            windows.0.push(Unit {
                events: d.live_flags,
                trials: d.live_windows,
            });
        }
        if other_windows > 0 {
            windows.1.push(Unit {
                events: d.champion_acted_flags,
                trials: other_windows,
            });
        }
    }
    let (challenger_windows, champion_windows) = windows;
    if challenger_windows.is_empty() || champion_windows.is_empty() {
        return None;
    }
    let (mut challenger_labels, mut champion_labels) = (Vec::new(), Vec::new());
    for (&(_, live), &(labelled, confirmed)) in labels {
        let unit = Unit {
            events: confirmed,
            trials: labelled,
        };
        if live {
            challenger_labels.push(unit);
        } else {
            champion_labels.push(unit);
        }
    }
    let alert_rate = compare_pooled_rates(&champion_windows, &challenger_windows, ARMS_SEED);
    let precision = compare_pooled_rates(&champion_labels, &challenger_labels, ARMS_SEED);
    let arm = |windows: &[Unit], labels: &[Unit], rate: Option<f64>, precision: Option<f64>| {
        let sum = |units: &[Unit]| {
            units.iter().fold((0, 0), |(events, trials), u| {
                (events + u.events, trials + u.trials)
            })
        };
        let ((alerts, windows_total), (confirmed, labelled)) = (sum(windows), sum(labels));
        ShadowArm {
            devices: windows.len() as u64,
            windows: windows_total,
            alerts,
            alert_rate: rate,
            labelled,
            confirmed,
            precision,
        }
    };
    let difference = |c: &RateComparison| ArmDifference {
        difference: c.difference,
        p_value: c.p_value,
        permutations: c.permutations,
        exact: c.exact,
    };
    Some(ShadowArms {
        challenger: arm(
            &challenger_windows,
            &challenger_labels,
            alert_rate.rate_b,
            precision.rate_b,
        ),
        champion: arm(
            &champion_windows,
            &champion_labels,
            alert_rate.rate_a,
            precision.rate_a,
        ),
        alert_rate: difference(&alert_rate),
        precision: difference(&precision),
        kpis: Vec::new(),
        kpi_error: None,
    })
}

/// The mixing variance of the decision: tuned to differences of about 0.1 in the share of
/// labelled windows a model is right on (one window in ten), the smallest worth acting on.
const DECISION_TAU2: f64 = 0.01;

/// The decision before any labelled window.
fn undecided(test: &MixtureSprt) -> ShadowDecision {
    ShadowDecision {
        verdict: ShadowVerdict::Undecided,
        test: "mSPRT".to_owned(),
        alpha: test.alpha(),
        tau2: test.tau2(),
        windows: 0,
        champion_right: 0,
        challenger_right: 0,
        challenger_missed: 0,
        champion_missed: 0,
        difference: None,
        p_value: test.p_value(),
        decided_at: None,
    }
}

/// Counts the windows operators labelled in the last `days` days, and decides on all of them:
/// an alert on a pipeline's inferences starts at a flagged window, and its `alert_labels` row
/// is stamped at that window's time, naming the pipeline when the rule's context carries it
/// (rows that do not are not counted: they cannot be told from another pipeline's alert on
/// the same device and instant). Only windows of the compared pair, ever: flagged in
/// `inferences` by one of the pair's versions (`acting`: the champion's, or the challenger's
/// where it is live) and scored by both (`pair`); each once, confirmed if any alert on it
/// was.
async fn labelled(
    store: &Store,
    pair: &str,
    acting: &str,
    live_any: &str,
    first_ns: i64,
    comparison: &mut ShadowComparison,
    test: &mut MixtureSprt,
) -> Result<LabelsByArm, String> {
    let mut by_arm = LabelsByArm::new();
    let counted_from = fabrik_core::Timestamp::now().nanos() - i64::from(comparison.days) * DAY_NS;
    let labels = fabrik_api::alerts::ALERT_LABELS_TABLE;
    if !store.has_table(labels) {
        return Ok(by_arm);
    }
    let pipeline = literal(&comparison.pipeline);
    // One verdict per window: confirmed if any rule's alert on it was confirmed. In time
    // order, which the sequential test needs.
    let sql = format!(
        "SELECT i.window_id, bool_or(l.true_positive) AS confirmed, bool_or(s.flag) AS flag, \
         bool_or(s.champion_flag) AS champion_flag, CAST(min(i.time) AS BIGINT) AS time, \
         min(i.device) AS device, {live_any} AS live \
         FROM {labels} l \
         JOIN inferences i ON i.device = l.device AND i.time = l.time AND i.pipeline = {pipeline} \
         AND i.flag AND {acting} AND i.time >= {first} \
         JOIN (SELECT * FROM {SHADOW_TABLE} s WHERE {pair} AND s.time >= {first}) s \
         ON s.device = i.device AND s.window_id = i.window_id \
         WHERE l.pipeline = {pipeline} AND l.time >= {first} GROUP BY i.window_id \
         ORDER BY time, i.window_id",
        first = timestamp_literal(first_ns),
    );
    let Some(output) = query_unless_missing(store, &sql, "l.pipeline").await? else {
        return Ok(by_arm);
    };
    for batch in &output.batches {
        let confirmed: BooleanArray = cast_column(batch, 1, &DataType::Boolean, "true_positive")?;
        let flagged: BooleanArray = cast_column(batch, 2, &DataType::Boolean, "flag")?;
        let champion_flagged: BooleanArray =
            cast_column(batch, 3, &DataType::Boolean, "champion_flag")?;
        let time: Int64Array = cast_column(batch, 4, &DataType::Int64, "time")?;
        let device: StringArray = cast_column(batch, 5, &DataType::Utf8, "device")?;
        let live: BooleanArray = cast_column(batch, 6, &DataType::Boolean, "live")?;
        for row in 0..batch.num_rows() {
            if confirmed.is_null(row) {
                continue;
            }
            let flags = Flags {
                challenger: !flagged.is_null(row) && flagged.value(row),
                champion: !champion_flagged.is_null(row) && champion_flagged.value(row),
            };
            let fault = confirmed.value(row);
            decide(
                &mut comparison.decision,
                test,
                fault,
                flags,
                time.value(row),
            );
            if time.value(row) <= counted_from {
                continue;
            }
            let arm = !live.is_null(row) && live.value(row);
            let counts = by_arm
                .entry((device.value(row).to_owned(), arm))
                .or_default();
            counts.0 += 1;
            counts.1 += u64::from(fault);
            if fault {
                comparison.confirmed += 1;
                comparison.confirmed_flagged_by_challenger += u64::from(flags.challenger);
                comparison.confirmed_flagged_by_champion += u64::from(flags.champion);
            } else {
                comparison.false_alarms += 1;
                comparison.false_alarms_flagged_by_challenger += u64::from(flags.challenger);
                comparison.false_alarms_flagged_by_champion += u64::from(flags.champion);
            }
        }
    }
    Ok(by_arm)
}

/// What each model said of one labelled window.
#[derive(Debug, Clone, Copy)]
struct Flags {
    champion: bool,
    challenger: bool,
}

/// Adds one labelled window to the decision: each model was right if its flag matches the
/// label (the acting model flagged it: the champion, or the challenger where it is live).
/// Windows after the deciding one count in the totals above, not in the test.
fn decide(
    decision: &mut ShadowDecision,
    test: &mut MixtureSprt,
    fault: bool,
    flags: Flags,
    time_ns: i64,
) {
    if decision.decided_at.is_some() {
        return;
    }
    let (champion_right, challenger_right) = (flags.champion == fault, flags.challenger == fault);
    decision.windows += 1;
    decision.champion_right += u64::from(champion_right);
    decision.challenger_right += u64::from(challenger_right);
    decision.challenger_missed += u64::from(fault && !flags.challenger);
    decision.champion_missed += u64::from(fault && !flags.champion);
    let rejected = test.update(
        f64::from(u8::from(champion_right)),
        f64::from(u8::from(challenger_right)),
    ) == Decision::RejectNull;
    decision.difference = test.difference();
    decision.p_value = test.p_value();
    if rejected {
        decision.decided_at = Some(crate::pipelines::rfc3339(time_ns));
        decision.verdict = if test.difference().unwrap_or(0.0) > 0.0 {
            ShadowVerdict::ChallengerBetter
        } else {
            ShadowVerdict::ChampionBetter
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000_000_000;

    /// The demo's pipeline as champion, an Isolation Forest as challenger.
    fn configs() -> (PipelineConfig, PipelineConfig) {
        let champion = crate::pipelines::demo_pipeline();
        let mut challenger = champion.clone();
        challenger.model = "iforest".into();
        (champion, challenger)
    }

    /// Windows of pump-a, a minute apart, that the champion flagged and an operator labelled,
    /// as the pipelines and the alert module write them: `(confirmed, challenger flagged)`.
    fn labelled_windows(verdicts: &[(bool, bool)]) -> String {
        labelled_windows_from(
            fabrik_core::Timestamp::now().nanos() - 2 * 3600 * 1_000_000_000,
            0,
            verdicts,
        )
    }

    /// The same from `start`, numbering windows from `first`.
    fn labelled_windows_from(start: i64, first: usize, verdicts: &[(bool, bool)]) -> String {
        let mut body = String::new();
        for (i, &(confirmed, challenger_flag)) in verdicts.iter().enumerate() {
            let k = first + i;
            let time = start + i as i64 * MINUTE;
            let window = format!("pump-health/pump-a/{k}");
            body.push_str(&format!(
                "inferences,pipeline=pump-health,device=pump-a,model=robust_z \
                 flag=true,score=2.0,window_id=\"{window}\",model_version=\"v1\" {time}\n\
                 shadow_inferences,pipeline=pump-health,device=pump-a,model=iforest \
                 flag={challenger_flag},score=0.5,window_id=\"{window}\",model_version=\"c1\",\
                 champion_model=\"robust_z\",champion_model_version=\"v1\",champion_flag=true,\
                 champion_score=2.0 {time}\n\
                 alert_labels,device=pump-a,pipeline=pump-health \
                 alert_id=\"a{k}\",true_positive={confirmed},by=\"op\" {time}\n"
            ));
        }
        body
    }

    async fn compared(verdicts: &[(bool, bool)], alpha: f64) -> ShadowComparison {
        compared_lines(&labelled_windows(verdicts), alpha).await
    }

    async fn compared_lines(lines: &str, alpha: f64) -> ShadowComparison {
        let (_dir, store) = crate::test_store::store_with(lines).await;
        let (champion, challenger) = configs();
        compare(&store, &champion, &challenger, 7, alpha)
            .await
            .expect("compare")
    }

    #[tokio::test]
    async fn labelled_windows_decide_for_the_challenger_once_they_suffice() {
        // The champion raised 24 false alarms, the challenger 2 of them; both caught all 6
        // confirmed faults. In time order, each fault after four false alarms.
        let verdicts: Vec<(bool, bool)> = (0..30)
            .map(|k| {
                let confirmed = k % 5 == 4;
                (confirmed, confirmed || k < 3 && k != 1)
            })
            .collect();
        let c = compared(&verdicts, 0.05).await;
        assert_eq!((c.false_alarms, c.confirmed), (24, 6), "{c:?}");
        assert_eq!(c.false_alarms_flagged_by_challenger, 2, "{c:?}");
        let d = &c.decision;
        assert_eq!(d.verdict, ShadowVerdict::ChallengerBetter, "{d:?}");
        assert!(d.p_value <= 0.05, "{d:?}");
        // Decided at the 17th window in time order (the reference arithmetic says so), and
        // the counts stop there: the challenger was wrong only on windows 0 and 2.
        assert_eq!(
            (d.windows, d.champion_right, d.challenger_right),
            (17, 3, 15),
            "{d:?}"
        );
        let decided = d.decided_at.as_deref().expect("decided at");
        assert!(decided.ends_with('Z'), "{decided}");

        // The same windows at a far stricter level: not decided.
        let strict = compared(&verdicts, 1e-9).await;
        assert_eq!(strict.decision.verdict, ShadowVerdict::Undecided);
        assert_eq!(strict.decision.windows, 30);
        assert!(strict.decision.decided_at.is_none());
    }

    #[tokio::test]
    async fn a_challenger_that_misses_confirmed_faults_loses() {
        // 20 confirmed faults, the challenger flagged 4; 4 false alarms it flagged too.
        let verdicts: Vec<(bool, bool)> =
            (0..24).map(|k| (k % 6 != 5, k % 6 == 5 || k < 4)).collect();
        let d = compared(&verdicts, 0.05).await.decision;
        assert_eq!(d.verdict, ShadowVerdict::ChampionBetter, "{d:?}");
        assert!(d.difference.is_some_and(|x| x < 0.0), "{d:?}");
        // Decided at the 19th window; of those, the challenger left 12 confirmed faults
        // unflagged (windows 4 to 18 but 5, 11 and 17, which were false alarms).
        assert_eq!((d.windows, d.challenger_missed), (19, 12), "{d:?}");
    }

    #[tokio::test]
    async fn the_decision_reads_the_pairs_whole_history_and_the_counts_the_period() {
        // Ten days ago, ten false alarms the challenger avoided; two hours ago, ten more.
        let now = fabrik_core::Timestamp::now().nanos();
        let day = 24 * 60 * MINUTE;
        let mut lines = labelled_windows_from(now - 10 * day, 0, &[(false, false); 10]);
        lines += &labelled_windows_from(now - 2 * 60 * MINUTE, 10, &[(false, false); 10]);
        let c = compared_lines(&lines, 0.05).await;
        assert_eq!(c.false_alarms, 10, "the last 7 days only: {c:?}");
        let d = &c.decision;
        assert_eq!(d.verdict, ShadowVerdict::ChallengerBetter, "{d:?}");
        assert_eq!(d.windows, 10, "decided within the old windows: {d:?}");
        let decided = chrono::DateTime::parse_from_rfc3339(d.decided_at.as_deref().expect("at"))
            .expect("RFC 3339");
        assert!(
            decided.timestamp() < (now - 9 * day) / 1_000_000_000,
            "{d:?}"
        );
    }

    /// Windows of pump-b, where the challenger is live (an A/B split): its verdicts are in
    /// `inferences`, flagged, the champion's beside them in the shadow rows. `(confirmed,
    /// champion flagged)`.
    fn live_windows_from(start: i64, first: usize, verdicts: &[(bool, bool)]) -> String {
        let mut body = String::new();
        for (i, &(confirmed, champion_flag)) in verdicts.iter().enumerate() {
            let k = first + i;
            let time = start + i as i64 * MINUTE;
            let window = format!("pump-health/pump-b/{k}");
            body.push_str(&format!(
                "inferences,pipeline=pump-health,device=pump-b,model=iforest \
                 flag=true,score=0.9,window_id=\"{window}\",model_version=\"c1\",challenger=true {time}\n\
                 shadow_inferences,pipeline=pump-health,device=pump-b,model=iforest \
                 flag=true,score=0.9,window_id=\"{window}\",model_version=\"c1\",live=true,\
                 champion_model=\"robust_z\",champion_model_version=\"v1\",\
                 champion_flag={champion_flag},champion_score=1.0 {time}\n\
                 alert_labels,device=pump-b,pipeline=pump-health \
                 alert_id=\"b{k}\",true_positive={confirmed},by=\"op\" {time}\n"
            ));
        }
        body
    }

    #[tokio::test]
    async fn a_live_challengers_labels_count_the_faults_only_it_caught() {
        let start = fabrik_core::Timestamp::now().nanos() - 3 * 3600 * 1_000_000_000;
        // On the champion's pump, four false alarms both raised. On the challenger's, twelve
        // confirmed faults the champion missed, then two false alarms it would have raised
        // too: labels a pure shadow never gets.
        let mut lines = labelled_windows_from(start, 0, &[(false, true); 4]);
        let mut live = vec![(true, false); 12];
        live.extend([(false, true); 2]);
        lines += &live_windows_from(start + 10 * MINUTE, 0, &live);
        let c = compared_lines(&lines, 0.05).await;
        assert_eq!(c.windows, 18, "{c:?}");
        assert_eq!(c.live_windows, 14, "{c:?}");
        let pump_b = c.devices.iter().find(|d| d.device == "pump-b").expect("b");
        assert_eq!((pump_b.windows, pump_b.live_windows), (14, 14), "{c:?}");
        assert_eq!((c.confirmed, c.false_alarms), (12, 6), "{c:?}");
        assert_eq!(
            (
                c.confirmed_flagged_by_challenger,
                c.confirmed_flagged_by_champion
            ),
            (12, 0),
            "{c:?}"
        );
        assert_eq!(
            (
                c.false_alarms_flagged_by_challenger,
                c.false_alarms_flagged_by_champion
            ),
            (6, 6),
            "{c:?}"
        );
        let d = &c.decision;
        assert_eq!(d.verdict, ShadowVerdict::ChallengerBetter, "{d:?}");
        assert_eq!(d.challenger_missed, 0, "{d:?}");
        assert!(d.champion_missed > 0, "{d:?}");
        assert_eq!(d.champion_right, 0, "{d:?}");
        assert_eq!(d.challenger_right, d.champion_missed, "{d:?}");
        // The arms: the challenger acted on pump-b (14 windows, all flagged, 12 of 14 labels
        // confirmed), the champion on pump-a (4 flagged, none confirmed). One device each: no
        // assignment of two devices can tell the models from the devices.
        let arms = c.arms.as_ref().expect("arms");
        assert_eq!(
            (
                arms.challenger.devices,
                arms.challenger.windows,
                arms.challenger.alerts
            ),
            (1, 14, 14)
        );
        assert_eq!(
            (arms.champion.windows, arms.champion.alerts),
            (4, 4),
            "{arms:?}"
        );
        assert_eq!(
            (arms.challenger.labelled, arms.challenger.confirmed),
            (14, 12)
        );
        assert_eq!((arms.champion.labelled, arms.champion.confirmed), (4, 0));
        assert_eq!(arms.precision.difference, Some(12.0 / 14.0));
        assert_eq!(
            (arms.precision.p_value, arms.precision.permutations),
            (Some(1.0), 2)
        );
    }

    #[tokio::test]
    async fn arms_of_several_devices_are_tested_over_devices() {
        let start = fabrik_core::Timestamp::now().nanos() - 3 * 3600 * 1_000_000_000;
        // Four devices per arm; the champion's pumps raise 10 alerts in 100 windows, the
        // challenger's 1. Of the 70 ways to split eight devices four and four, only this one
        // and its mirror are as far apart.
        let mut lines = String::new();
        for d in 0..8 {
            let live = d >= 4;
            for k in 0..100_i64 {
                let time = start + k * MINUTE;
                let window = format!("pump-health/p{d}/{k}");
                let flagged = if live { k == 0 } else { k % 10 == 0 };
                lines += &format!(
                    "shadow_inferences,pipeline=pump-health,device=p{d},model=iforest \
                     flag={flagged},score=0.5,window_id=\"{window}\",model_version=\"c1\",\
                     live={live},champion_model=\"robust_z\",champion_model_version=\"v1\",\
                     champion_flag={},champion_score=1.0 {time}\n",
                    !live && flagged
                );
            }
        }
        let c = compared_lines(&lines, 0.05).await;
        let arms = c.arms.expect("arms");
        assert_eq!(
            (
                arms.challenger.devices,
                arms.challenger.windows,
                arms.challenger.alerts
            ),
            (4, 400, 4)
        );
        assert_eq!((arms.champion.windows, arms.champion.alerts), (400, 40));
        let rate = &arms.alert_rate;
        assert!((rate.difference.unwrap() + 0.09).abs() < 1e-12, "{rate:?}");
        assert!(rate.exact);
        assert_eq!(rate.permutations, 70);
        assert!(
            (rate.p_value.unwrap() - 2.0 / 70.0).abs() < 1e-12,
            "{rate:?}"
        );
        // No labels: no precision to compare.
        assert_eq!(
            (arms.precision.difference, arms.precision.p_value),
            (None, None)
        );
    }

    #[tokio::test]
    async fn equal_verdicts_decide_nothing() {
        let verdicts: Vec<(bool, bool)> = (0..40).map(|k| (k % 2 == 0, true)).collect();
        let d = compared(&verdicts, 0.05).await.decision;
        assert_eq!(d.verdict, ShadowVerdict::Undecided, "{d:?}");
        assert_eq!(
            (d.windows, d.champion_right, d.challenger_right),
            (40, 20, 20)
        );
        assert_eq!(d.p_value, 1.0);
    }
}
