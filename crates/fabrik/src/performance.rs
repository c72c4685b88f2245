//! A pipeline's classifier performance while outcomes are unknown (`[pipelines.performance]`,
//! decision 0059): its scored windows (`inferences` of the latest model version) joined with
//! the outcomes that arrived in a table, NannyML's CBPE fitted on the first chunks of windows
//! with outcomes and estimated on every whole chunk after them.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, BooleanArray, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use fabrik_api::pipelines::{
    MetricEstimate, PerformanceChunk, PerformanceReference, PerformanceReport, ReferenceMetric,
};
use fabrik_ml::cbpe::{self, Cbpe, Metric};
use fabrik_runtime::config::{PerformanceConfig, PipelineConfig};
use fabrik_store::Store;

use crate::columns::cast_column;
use crate::pipelines::INFERENCES_TABLE;
use crate::sql_text::literal;

/// Chunks reported: the latest this many.
const MOST_CHUNKS: usize = 200;
/// Scored windows read: the reference and what follows, up to this many (2,000 chunks of
/// 500), so one estimate stays a bounded query.
const MOST_WINDOWS: usize = 1_000_000;
/// A chunk's realized value is shown when at least this share of its windows has an outcome.
const REALIZED_SHARE: f64 = 0.5;

/// The metric of a configured name.
fn metric(name: &str) -> Option<Metric> {
    Metric::ALL.into_iter().find(|m| m.name() == name)
}

/// Problems of a `[pipelines.performance]` section, as `(field, message)`.
pub(crate) fn problems(config: &PerformanceConfig) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut problem = |field: &str, message: String| {
        found.push((format!("performance.{field}"), message));
    };
    for (field, name) in [
        ("targets", &config.targets),
        ("target", &config.target),
        ("device_column", &config.device_column),
    ] {
        if name.is_empty() || name.contains('"') || name.contains('\0') {
            problem(
                field,
                format!("`{name}` cannot name a table or column: not empty, no `\"`"),
            );
        }
    }
    if !(2..=100_000).contains(&config.chunk) {
        problem(
            "chunk",
            format!(
                "{} windows: a chunk holds 2 to 100,000 (its sampling error falls with √size)",
                config.chunk
            ),
        );
    }
    if !(2..=1_000).contains(&config.reference_chunks) {
        problem(
            "reference_chunks",
            format!(
                "{}: the alert thresholds are the spread of 2 to 1,000 reference chunks",
                config.reference_chunks
            ),
        );
    }
    if config.metrics.is_empty() {
        problem(
            "metrics",
            "name one metric at least: roc_auc, f1, accuracy, precision, recall".into(),
        );
    }
    let mut seen = Vec::new();
    for name in &config.metrics {
        if metric(name).is_none() {
            problem(
                "metrics",
                format!("`{name}` is not one of roc_auc, f1, accuracy, precision, recall"),
            );
        } else if seen.contains(&name) {
            problem("metrics", format!("`{name}` is named twice"));
        }
        seen.push(name);
    }
    found
}

/// One scored window, with its outcome once it arrived.
#[derive(Debug, Clone, PartialEq)]
struct Scored {
    device: String,
    start: i64,
    end: i64,
    score: f64,
    flag: bool,
    outcome: Option<bool>,
}

/// The latest model version of `pipeline` that scored windows.
async fn latest_version(store: &Store, pipeline: &str) -> Result<Option<String>, String> {
    let sql = format!(
        "SELECT model_version FROM {INFERENCES_TABLE} WHERE pipeline = {} \
         ORDER BY time DESC LIMIT 1",
        literal(pipeline)
    );
    let output = store.query(&sql).await.map_err(|e| e.to_string())?;
    for batch in &output.batches {
        let versions: StringArray = cast_column(batch, 0, &DataType::Utf8, "model_version")?;
        if !versions.is_empty() && versions.is_valid(0) {
            return Ok(Some(versions.value(0).to_owned()));
        }
    }
    Ok(None)
}

/// The windows version `version` of `pipeline` scored, oldest first (by window end, then
/// device), at most [`MOST_WINDOWS`] of them.
async fn scored_windows(
    store: &Store,
    pipeline: &str,
    version: &str,
) -> Result<Vec<Scored>, String> {
    let sql = format!(
        "SELECT device, window_start, window_end, score, flag FROM {INFERENCES_TABLE} \
         WHERE pipeline = {} AND model_version = {} ORDER BY window_end, device LIMIT {MOST_WINDOWS}",
        literal(pipeline),
        literal(version)
    );
    let output = store.query(&sql).await.map_err(|e| e.to_string())?;
    let mut windows = Vec::new();
    for batch in &output.batches {
        let device: StringArray = cast_column(batch, 0, &DataType::Utf8, "device")?;
        let start: Int64Array = cast_column(batch, 1, &DataType::Int64, "window_start")?;
        let end: Int64Array = cast_column(batch, 2, &DataType::Int64, "window_end")?;
        let score: Float64Array = cast_column(batch, 3, &DataType::Float64, "score")?;
        let flag: BooleanArray = cast_column(batch, 4, &DataType::Boolean, "flag")?;
        for row in 0..batch.num_rows() {
            if [device.is_null(row), start.is_null(row), end.is_null(row)]
                .into_iter()
                .chain([score.is_null(row), flag.is_null(row)])
                .any(|null| null)
            {
                continue;
            }
            windows.push(Scored {
                device: device.value(row).to_owned(),
                start: start.value(row),
                end: end.value(row),
                score: score.value(row),
                flag: flag.value(row),
                outcome: None,
            });
        }
    }
    Ok(windows)
}

/// Marks each window with the outcomes of its device that fall inside it (positive if any
/// is): `outcomes` are `(device, time, positive)`.
fn join_outcomes(windows: &mut [Scored], outcomes: &[(String, i64, bool)]) {
    let mut by_device: HashMap<&str, Vec<usize>> = HashMap::new();
    for (index, window) in windows.iter().enumerate() {
        by_device.entry(&window.device).or_default().push(index);
    }
    let mut longest: HashMap<&str, i64> = HashMap::new();
    for (device, indices) in &mut by_device {
        indices.sort_by_key(|&i| windows[i].start);
        let length = indices
            .iter()
            .map(|&i| windows[i].end - windows[i].start)
            .max()
            .unwrap_or(0);
        longest.insert(device, length);
    }
    let mut marks: Vec<(usize, bool)> = Vec::new();
    for (device, time, positive) in outcomes {
        let Some(indices) = by_device.get(device.as_str()) else {
            continue;
        };
        let longest = longest.get(device.as_str()).copied().unwrap_or(0);
        // Windows that start at or before the outcome; those that also end after it hold it.
        let mut at = indices.partition_point(|&i| windows[i].start <= *time);
        while at > 0 {
            at -= 1;
            let window = &windows[indices[at]];
            if window.start < time - longest {
                break;
            }
            if *time < window.end {
                marks.push((indices[at], *positive));
            }
        }
    }
    for (index, positive) in marks {
        let outcome = &mut windows[index].outcome;
        *outcome = Some(outcome.unwrap_or(false) || positive);
    }
}

/// The outcomes in `[from, until)` of the devices, from the targets table.
async fn outcomes(
    store: &Store,
    config: &PerformanceConfig,
    from: i64,
    until: i64,
) -> Result<Vec<(String, i64, bool)>, String> {
    if !store.has_table(&config.targets) {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT \"{device}\", CAST(time AS BIGINT), CAST(\"{target}\" AS DOUBLE) FROM \"{table}\" \
         WHERE time >= to_timestamp_nanos({from}) AND time < to_timestamp_nanos({until})",
        device = config.device_column,
        target = config.target,
        table = config.targets,
    );
    let output = store
        .query(&sql)
        .await
        .map_err(|e| format!("reading the outcomes (`{}`): {e}", config.targets))?;
    let mut found = Vec::new();
    for batch in &output.batches {
        let device: StringArray = cast_column(batch, 0, &DataType::Utf8, &config.device_column)?;
        let time: Int64Array = cast_column(batch, 1, &DataType::Int64, "time")?;
        let target: Float64Array = cast_column(batch, 2, &DataType::Float64, &config.target)?;
        for row in 0..batch.num_rows() {
            if device.is_null(row) || time.is_null(row) || target.is_null(row) {
                continue;
            }
            found.push((
                device.value(row).to_owned(),
                time.value(row),
                target.value(row) >= 0.5,
            ));
        }
    }
    Ok(found)
}

/// The report of `pipeline`, which has `[pipelines.performance]` `config`.
pub(crate) async fn report(
    store: &Store,
    pipeline: &PipelineConfig,
    config: &PerformanceConfig,
) -> Result<PerformanceReport, String> {
    let metrics: Vec<Metric> = config.metrics.iter().filter_map(|m| metric(m)).collect();
    let mut report = PerformanceReport {
        pipeline: pipeline.name.clone(),
        model_version: None,
        chunk: config.chunk,
        metrics: metrics.iter().map(|m| m.name().to_owned()).collect(),
        reference: None,
        chunks: Vec::new(),
        pending: 0,
        problem: None,
    };
    if !store.has_table(INFERENCES_TABLE) {
        report.problem = Some("the pipeline has scored no window yet".into());
        return Ok(report);
    }
    let Some(version) = latest_version(store, &pipeline.name).await? else {
        report.problem = Some("the pipeline has scored no window yet".into());
        return Ok(report);
    };
    let mut windows = scored_windows(store, &pipeline.name, &version).await?;
    report.model_version = Some(version);
    let (Some(from), Some(until)) = (
        windows.iter().map(|w| w.start).min(),
        windows.iter().map(|w| w.end).max(),
    ) else {
        report.problem = Some("the pipeline has scored no window yet".into());
        return Ok(report);
    };
    // A targets table without the configured column is the operator's to fix, not a failure
    // of the request: said in the report.
    match outcomes(store, config, from, until).await {
        Ok(found) => join_outcomes(&mut windows, &found),
        Err(e) => {
            report.problem = Some(e);
            report.pending = windows.len() as u64;
            return Ok(report);
        }
    }
    estimate(&windows, config, &metrics, &mut report);
    Ok(report)
}

/// Fits on the first labelled windows and estimates every whole chunk after them.
fn estimate(
    windows: &[Scored],
    config: &PerformanceConfig,
    metrics: &[Metric],
    report: &mut PerformanceReport,
) {
    let chunk = config.chunk as usize;
    let wanted = chunk * config.reference_chunks as usize;
    // The reference: windows with outcomes, from the first, until there are enough.
    let mut reference = Vec::with_capacity(wanted);
    let mut after = windows.len();
    for (position, window) in windows.iter().enumerate() {
        if let Some(outcome) = window.outcome {
            reference.push((window, outcome));
            if reference.len() == wanted {
                after = position + 1;
                break;
            }
        }
    }
    if reference.len() < wanted {
        report.problem = Some(format!(
            "{} of the {wanted} windows with outcomes the reference needs ({} chunks of {chunk}) have arrived in `{}`",
            reference.len(),
            config.reference_chunks,
            config.targets
        ));
        report.pending = windows.len() as u64;
        return;
    }
    let scores: Vec<f64> = reference.iter().map(|(w, _)| w.score).collect();
    let flags: Vec<bool> = reference.iter().map(|(w, _)| w.flag).collect();
    let targets: Vec<bool> = reference.iter().map(|(_, t)| *t).collect();
    let fitted = match Cbpe::fit(&scores, &flags, &targets, metrics, chunk) {
        Ok(fitted) => fitted,
        Err(e) => {
            report.problem = Some(format!("the reference cannot be fitted: {e}"));
            return;
        }
    };
    let first = reference.first().map_or(0, |(w, _)| w.start);
    let last = reference.last().map_or(0, |(w, _)| w.end);
    let mut chunks = Vec::new();
    let rest = &windows[after..];
    let whole = rest.len() / chunk;
    report.pending = (rest.len() % chunk) as u64;
    for part in rest
        .chunks_exact(chunk)
        .skip(whole.saturating_sub(MOST_CHUNKS))
    {
        let scores: Vec<f64> = part.iter().map(|w| w.score).collect();
        let flags: Vec<bool> = part.iter().map(|w| w.flag).collect();
        let estimates = match fitted.estimate(&scores, &flags) {
            Ok(estimates) => estimates,
            Err(e) => {
                report.problem = Some(format!(
                    "the chunk from {} cannot be estimated: {e}",
                    part[0].start
                ));
                break;
            }
        };
        let labelled: Vec<&Scored> = part.iter().filter(|w| w.outcome.is_some()).collect();
        let shown = labelled.len() as f64 >= REALIZED_SHARE * part.len() as f64;
        let realized = |metric: Metric| {
            shown.then(|| {
                cbpe::realized(
                    metric,
                    &labelled
                        .iter()
                        .map(|w| w.outcome.unwrap_or(false))
                        .collect::<Vec<_>>(),
                    &labelled.iter().map(|w| w.flag).collect::<Vec<_>>(),
                    &labelled.iter().map(|w| w.score).collect::<Vec<_>>(),
                )
            })?
        };
        chunks.push(PerformanceChunk {
            from: part[0].start,
            until: part.iter().map(|w| w.end).max().unwrap_or(part[0].end),
            windows: part.len() as u64,
            with_outcomes: labelled.len() as u64,
            estimates: estimates
                .iter()
                .map(|e| MetricEstimate {
                    metric: e.metric.name().to_owned(),
                    estimated: e.value,
                    sampling_error: e.sampling_error,
                    alert: e.alert,
                    realized: realized(e.metric),
                })
                .collect(),
        });
    }
    report.reference = Some(PerformanceReference {
        from: first,
        until: last,
        windows: reference.len() as u64,
        positives: targets.iter().filter(|&&t| t).count() as u64,
        calibrated: fitted.calibrated(),
        metrics: fitted
            .thresholds()
            .into_iter()
            .map(|(metric, lower, upper)| ReferenceMetric {
                metric: metric.name().to_owned(),
                lower_threshold: lower,
                upper_threshold: upper,
            })
            .collect(),
    });
    report.chunks = chunks;
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabrik_core::{Precision, SourceId};

    const MINUTE: i64 = 60_000_000_000;

    fn window(device: &str, start: i64, end: i64) -> Scored {
        Scored {
            device: device.into(),
            start,
            end,
            score: 0.5,
            flag: false,
            outcome: None,
        }
    }

    #[test]
    fn an_outcome_labels_the_windows_of_its_device_that_hold_it() {
        // Sliding windows of 2 minutes every minute on pump-a, one 5-minute window on pump-b.
        let mut windows: Vec<Scored> = (0..4)
            .map(|k| window("pump-a", k * MINUTE, (k + 2) * MINUTE))
            .collect();
        windows.push(window("pump-b", 0, 5 * MINUTE));
        join_outcomes(
            &mut windows,
            &[
                ("pump-a".into(), 2 * MINUTE + 1, false),
                // At a window's end: not in it (ends are exclusive).
                ("pump-a".into(), 5 * MINUTE, true),
                ("pump-b".into(), MINUTE, false),
                ("pump-b".into(), 4 * MINUTE, true),
                ("pump-c".into(), MINUTE, true),
            ],
        );
        let outcomes: Vec<Option<bool>> = windows.iter().map(|w| w.outcome).collect();
        assert_eq!(
            outcomes,
            vec![None, Some(false), Some(false), None, Some(true)]
        );
    }

    /// SplitMix64 draws in [0, 1).
    struct Draws(u64);

    impl Draws {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as f64 / u64::MAX as f64
        }
    }

    fn config() -> (PipelineConfig, PerformanceConfig) {
        let mut pipeline = crate::pipelines::demo_pipeline();
        pipeline.name = "quality".into();
        let performance = PerformanceConfig {
            targets: "inspections".into(),
            target: "defect".into(),
            device_column: "device".into(),
            chunk: 200,
            reference_chunks: 5,
            metrics: vec!["roc_auc".into(), "accuracy".into()],
        };
        (pipeline, performance)
    }

    /// A classifier's windows on two pumps, a minute each, as the pipeline writes them, and
    /// inspections whose outcomes follow its probabilities (calibrated): `(scores, outcomes)`
    /// in window order. From window `shift` on, the inputs move where the model is unsure
    /// (probabilities between 0.4 and 0.6). Inspections cover windows below `inspected`.
    fn history(windows: usize, shift: usize, inspected: usize) -> (String, Vec<f64>, Vec<bool>) {
        let start = Timestamp::now().nanos() - 10 * 24 * 60 * MINUTE;
        let mut draws = Draws(7);
        let mut lines = String::new();
        // An earlier model version, whose windows do not count.
        lines.push_str(&format!(
            "inferences,pipeline=quality,device=pump-a,model=onnx:clf score=0.9,flag=true,\
             window_start={}i,window_end={}i,model_version=\"v1\" {}\n",
            start - MINUTE,
            start,
            start - 1
        ));
        let (mut scores, mut outcomes) = (Vec::new(), Vec::new());
        for k in 0..windows {
            let device = if k % 2 == 0 { "pump-a" } else { "pump-b" };
            let window_start = start + (k / 2) as i64 * MINUTE;
            let window_end = window_start + MINUTE;
            let score = if k < shift {
                draws.next()
            } else {
                0.4 + 0.2 * draws.next()
            };
            let defect = draws.next() < score;
            lines.push_str(&format!(
                "inferences,pipeline=quality,device={device},model=onnx:clf score={score},\
                 flag={},window_start={window_start}i,window_end={window_end}i,\
                 model_version=\"v2\" {}\n",
                score >= 0.5,
                window_end - 1
            ));
            if k < inspected {
                lines.push_str(&format!(
                    "inspections,device={device} defect={}i {}\n",
                    i64::from(defect),
                    window_start + MINUTE / 2
                ));
            }
            scores.push(score);
            outcomes.push(defect);
        }
        (lines, scores, outcomes)
    }

    async fn reported(lines: &str) -> PerformanceReport {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(fabrik_store::StoreOptions::new(dir.path()))
            .await
            .expect("store");
        store
            .write_lines(lines, Precision::Ns, SourceId::http())
            .await
            .expect("write");
        let (pipeline, performance) = config();
        report(&store, &pipeline, &performance)
            .await
            .expect("report")
    }

    use fabrik_core::Timestamp;

    #[tokio::test]
    async fn a_shift_to_where_the_model_is_unsure_is_estimated_before_outcomes_arrive() {
        // 4,000 windows: the reference is the first 1,000 (all inspected); the inputs shift
        // at 2,400; inspections stop at 3,000.
        let (lines, scores, outcomes) = history(4_000, 2_400, 3_000);
        let report = reported(&lines).await;
        assert_eq!(report.problem, None, "{report:?}");
        assert_eq!(report.model_version.as_deref(), Some("v2"));
        let reference = report.reference.as_ref().expect("reference");
        assert_eq!(reference.windows, 1_000);
        assert_eq!(
            reference.positives,
            outcomes[..1_000].iter().filter(|&&o| o).count() as u64
        );
        assert_eq!(report.chunks.len(), 15);
        assert_eq!(report.pending, 0);

        // The same estimator fitted on the same rows, in the same order, from the generated
        // data rather than the store: every estimate equal.
        let flags: Vec<bool> = scores.iter().map(|&s| s >= 0.5).collect();
        let fitted = Cbpe::fit(
            &scores[..1_000],
            &flags[..1_000],
            &outcomes[..1_000],
            &[Metric::RocAuc, Metric::Accuracy],
            200,
        )
        .expect("fit");
        for (i, chunk) in report.chunks.iter().enumerate() {
            let rows = 1_000 + i * 200..1_200 + i * 200;
            let expected = fitted
                .estimate(&scores[rows.clone()], &flags[rows.clone()])
                .expect("estimate");
            for (got, want) in chunk.estimates.iter().zip(&expected) {
                assert_eq!(got.metric, want.metric.name());
                assert!((got.estimated - want.value).abs() < 1e-12, "chunk {i}");
                assert_eq!(got.alert, want.alert, "chunk {i}");
            }
            // Realized where the windows were inspected (up to window 3,000), on them.
            let realized = chunk.estimates[0].realized;
            if rows.end <= 3_000 {
                assert_eq!(chunk.with_outcomes, 200);
                let want = cbpe::realized(
                    Metric::RocAuc,
                    &outcomes[rows.clone()],
                    &flags[rows.clone()],
                    &scores[rows],
                );
                assert_eq!(realized, want, "chunk {i}");
            } else {
                assert_eq!((chunk.with_outcomes, realized), (0, None), "chunk {i}");
            }
        }
        // Before the shift the estimate tracks what was realized and stays inside the
        // thresholds; after it, ROC AUC falls below them before any outcome says so.
        let auc = |i: usize| &report.chunks[i].estimates[0];
        for i in 0..7 {
            assert!(!auc(i).alert, "chunk {i}: {:?}", auc(i));
            let realized = auc(i).realized.expect("realized");
            assert!(
                (auc(i).estimated - realized).abs() < 4.0 * auc(i).sampling_error + 0.02,
                "chunk {i}: {:?}",
                auc(i)
            );
        }
        for i in 7..15 {
            assert!(auc(i).alert, "chunk {i}: {:?}", auc(i));
            assert!(auc(i).estimated < 0.7, "chunk {i}: {:?}", auc(i));
        }
        assert!(auc(8).realized.expect("inspected") < 0.75);
    }

    #[tokio::test]
    async fn too_few_outcomes_say_how_many_arrived() {
        let (lines, _, _) = history(1_500, 1_500, 600);
        let report = reported(&lines).await;
        assert_eq!(report.reference, None);
        assert!(report.chunks.is_empty());
        assert_eq!(
            report.problem.as_deref(),
            Some(
                "600 of the 1000 windows with outcomes the reference needs (5 chunks of 200) have arrived in `inspections`"
            )
        );
        // No table of outcomes at all: the same, with none.
        let without: String = lines
            .lines()
            .filter(|l| !l.starts_with("inspections"))
            .map(|l| format!("{l}\n"))
            .collect();
        let report = reported(&without).await;
        assert!(
            report
                .problem
                .as_deref()
                .is_some_and(|p| p.starts_with("0 of the 1000")),
            "{report:?}"
        );
        // No inferences: said so.
        let report = reported("inspections,device=pump-a defect=1i 1\n").await;
        assert_eq!(
            report.problem.as_deref(),
            Some("the pipeline has scored no window yet")
        );
    }

    #[test]
    fn a_section_that_cannot_work_is_refused_by_field() {
        let (_, mut performance) = config();
        performance.chunk = 1;
        performance.reference_chunks = 1;
        performance.metrics = vec!["auc".into(), "f1".into(), "f1".into()];
        performance.target = "de\"fect".into();
        let fields: Vec<String> = problems(&performance)
            .into_iter()
            .map(|(field, message)| format!("{field}: {message}"))
            .collect();
        assert_eq!(fields.len(), 5, "{fields:?}");
        assert!(fields[0].starts_with("performance.target: "), "{fields:?}");
        assert!(
            fields[1].starts_with("performance.chunk: 1 windows"),
            "{fields:?}"
        );
        assert!(
            fields[2].starts_with("performance.reference_chunks: 1:"),
            "{fields:?}"
        );
        assert!(fields[3].contains("`auc` is not one of"), "{fields:?}");
        assert!(fields[4].contains("`f1` is named twice"), "{fields:?}");
        assert!(problems(&config().1).is_empty());
    }
}
