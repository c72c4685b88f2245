//! A pipeline's classifier performance while outcomes are unknown (`[pipelines.performance]`,
//! decision 0059): its scored windows (`inferences` of the latest model version) joined with
//! the outcomes that arrived in a table, NannyML's CBPE fitted on the first chunks of windows
//! with outcomes and estimated on every whole chunk after them; each chunk's estimates kept
//! as rows of `model_performance` once it is whole, for alert rules and the trend.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use fabrik_api::pipelines::{
    MetricEstimate, PerformanceChunk, PerformanceReference, PerformanceReport, ReferenceMetric,
};
use fabrik_core::{Point, Quality, Timestamp, Value};
use fabrik_ml::cbpe::{self, Cbpe, Metric};
use fabrik_runtime::config::{PerformanceConfig, PipelineConfig};
use fabrik_store::Store;
use tokio_util::sync::CancellationToken;

use crate::columns::cast_column;
use crate::pipelines::{CHALLENGER_COLUMN, INFERENCES_TABLE};
use crate::sql_text::literal;

/// Chunks reported: the latest this many.
const MOST_CHUNKS: usize = 200;
/// The reference is looked for among the version's first this many windows, and may hold at
/// most [`MOST_REFERENCE`]: at least 1 window in 10 of its span must have an outcome.
const MOST_SEARCHED: usize = 250_000;
/// Most windows in a reference (`chunk × reference_chunks`).
const MOST_REFERENCE: usize = 25_000;
/// Fewest reference chunks: the thresholds are ±3σ of their realized values (NannyML warns
/// below 6).
const FEWEST_REFERENCE_CHUNKS: u32 = 6;
/// A chunk's realized value is shown when at least this share of its windows has an outcome.
const REALIZED_SHARE: f64 = 0.5;

/// The metric of a configured name.
fn metric(name: &str) -> Option<Metric> {
    Metric::ALL.into_iter().find(|m| m.name() == name)
}

/// Problems of the `[pipelines.performance]` section of `pipeline`, as `(field, message)`.
pub(crate) fn problems(
    pipeline: &PipelineConfig,
    config: &PerformanceConfig,
) -> Vec<(String, String)> {
    let mut found = Vec::new();
    // CBPE reads scores as the probability of the positive class; an anomaly score is none.
    let output = pipeline.model_output.as_str();
    if pipeline.model != "onnx"
        || !(output.starts_with("probability") || output.starts_with("auto"))
    {
        found.push((
            "performance".to_owned(),
            format!(
                "estimates a classifier's performance from its probabilities: needs model = \"onnx\" with model_output = \"probability\" (or `auto` resolving to it), not model `{}` with `{output}`",
                pipeline.model
            ),
        ));
    }
    let mut problem = |field: &str, message: String| {
        found.push((format!("performance.{field}"), message));
    };
    for (field, name) in [
        ("targets", &config.targets),
        ("target", &config.target),
        ("device_column", &config.device_column),
    ] {
        if !crate::pipelines::sql_identifier_ok(name) {
            problem(
                field,
                format!("`{name}` cannot name a table or column: not empty, no `\"`"),
            );
        }
    }
    if !(config.decision_threshold > 0.0 && config.decision_threshold < 1.0) {
        problem(
            "decision_threshold",
            format!(
                "{}: the probability from which the classifier predicts the positive class lies between 0 and 1",
                config.decision_threshold
            ),
        );
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
    if !(FEWEST_REFERENCE_CHUNKS..=1_000).contains(&config.reference_chunks) {
        problem(
            "reference_chunks",
            format!(
                "{}: the alert thresholds are ±3σ of {FEWEST_REFERENCE_CHUNKS} to 1,000 reference chunks",
                config.reference_chunks
            ),
        );
    } else if config.chunk as usize * config.reference_chunks as usize > MOST_REFERENCE {
        problem(
            "reference_chunks",
            format!(
                "{} chunks of {} make a reference of {} windows; at most {MOST_REFERENCE}",
                config.reference_chunks,
                config.chunk,
                config.chunk as usize * config.reference_chunks as usize
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
    outcome: Option<bool>,
}

/// The rows of one model version of a pipeline, its own (on the devices of an A/B split the
/// live challenger's verdicts are in `inferences` too, under the same pipeline).
struct Rows {
    filter: String,
}

impl Rows {
    fn own(store: &Store, pipeline: &str) -> Self {
        let mut filter = format!("pipeline = {}", literal(pipeline));
        if store.has_column(INFERENCES_TABLE, CHALLENGER_COLUMN) {
            filter.push_str(&format!(" AND {CHALLENGER_COLUMN} IS NOT TRUE"));
        }
        Self { filter }
    }

    fn of_version(mut self, version: &str) -> Self {
        self.filter
            .push_str(&format!(" AND model_version = {}", literal(version)));
        self
    }

    /// Also only the windows after `first` and up to `last` (if given) in window order (end,
    /// device, start).
    fn between(&self, first: &Scored, last: Option<&Scored>) -> String {
        let key = |w: &Scored, after: bool| {
            let (beyond, at) = if after { (">", ">") } else { ("<", "<=") };
            format!(
                "(window_end {beyond} {end} OR (window_end = {end} AND (device {beyond} {device} OR \
                 (device = {device} AND window_start {at} {start}))))",
                end = w.end,
                start = w.start,
                device = literal(&w.device),
            )
        };
        let mut filter = format!("{} AND {}", self.filter, key(first, true));
        if let Some(last) = last {
            filter.push_str(&format!(" AND {}", key(last, false)));
        }
        filter
    }
}

/// The pipeline's own model version that scored last.
async fn latest_version(store: &Store, rows: &Rows) -> Result<Option<String>, String> {
    let sql = format!(
        "SELECT model_version FROM {INFERENCES_TABLE} WHERE {} ORDER BY time DESC LIMIT 1",
        rows.filter
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

/// The first `limit` windows `filter` selects in window order (end, device, start), or with
/// `newest` the last `limit`, still in window order.
async fn scored_windows(
    store: &Store,
    filter: &str,
    limit: usize,
    newest: bool,
) -> Result<Vec<Scored>, String> {
    let order = if newest { "DESC" } else { "ASC" };
    let sql = format!(
        "SELECT device, window_start, window_end, score FROM {INFERENCES_TABLE} WHERE {filter} \
         ORDER BY window_end {order}, device {order}, window_start {order} LIMIT {limit}"
    );
    let output = store.query(&sql).await.map_err(|e| e.to_string())?;
    let mut windows = Vec::new();
    for batch in &output.batches {
        let device: StringArray = cast_column(batch, 0, &DataType::Utf8, "device")?;
        let start: Int64Array = cast_column(batch, 1, &DataType::Int64, "window_start")?;
        let end: Int64Array = cast_column(batch, 2, &DataType::Int64, "window_end")?;
        let score: Float64Array = cast_column(batch, 3, &DataType::Float64, "score")?;
        for row in 0..batch.num_rows() {
            if device.is_null(row) || start.is_null(row) || end.is_null(row) || score.is_null(row) {
                continue;
            }
            windows.push(Scored {
                device: device.value(row).to_owned(),
                start: start.value(row),
                end: end.value(row),
                score: score.value(row),
                outcome: None,
            });
        }
    }
    if newest {
        windows.reverse();
    }
    Ok(windows)
}

/// How many windows `filter` selects.
async fn count(store: &Store, filter: &str) -> Result<usize, String> {
    counted(
        store,
        &format!("SELECT count(*) FROM {INFERENCES_TABLE} WHERE {filter}"),
    )
    .await
}

/// The count a `SELECT count(*) …` query gives.
async fn counted(store: &Store, sql: &str) -> Result<usize, String> {
    let output = store.query(sql).await.map_err(|e| e.to_string())?;
    let mut total = 0;
    for batch in &output.batches {
        let counts: Int64Array = cast_column(batch, 0, &DataType::Int64, "count")?;
        total += (0..counts.len())
            .filter(|&row| counts.is_valid(row))
            .map(|row| usize::try_from(counts.value(row)).unwrap_or(0))
            .sum::<usize>();
    }
    Ok(total)
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
            if window.start < time.saturating_sub(longest) {
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

/// Labels `windows` with the outcomes that arrived for them; `Err` names what keeps the
/// outcomes from being read (said in the report).
async fn label(
    store: &Store,
    config: &PerformanceConfig,
    windows: &mut [Scored],
) -> Result<(), String> {
    let (Some(from), Some(until)) = (
        windows.iter().map(|w| w.start).min(),
        windows.iter().map(|w| w.end).max(),
    ) else {
        return Ok(());
    };
    if !store.has_table(&config.targets) {
        return Err(format!(
            "the outcomes' table `{}` does not exist (yet): no outcome has been written to it",
            config.targets
        ));
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
    join_outcomes(windows, &found);
    Ok(())
}

/// The table a pipeline's references are fixed in: a row per pipeline, model version and
/// basis, written once (decision 0069).
pub(crate) const REFERENCES_TABLE: &str = "_performance_references";

/// The lineage source of those rows: only this process's own count (a hub's store also holds
/// its edges' rows, which name their pipelines, not its own).
const REFERENCE_SOURCE: &str = "performance";

/// A reference as it was found: its windows' scores and outcomes in window order, its first
/// window's start, its last window (the chunks after it are counted from there), how many
/// windows its span holds, and when it was fixed (ns).
#[derive(Debug, Clone, PartialEq)]
struct FixedReference {
    scores: Vec<f64>,
    outcomes: Vec<bool>,
    first_start: i64,
    last: Scored,
    span_windows: usize,
    fixed_at: i64,
    /// The windows it was looked for among started at or after this (ns), as a new reference
    /// asked for them to.
    searched_from: Option<i64>,
    /// The new reference asked for (its row's time) that it answers, if one was.
    after_reset: Option<i64>,
}

/// What a reference is found by besides the model version: another value of any of these
/// finds (and fixes) a new one. The metrics and the decision threshold are not among them:
/// the fit is made again from the fixed scores and outcomes at every look.
fn reference_basis(config: &PerformanceConfig) -> String {
    format!(
        "chunk={};reference_chunks={};targets={};target={};device_column={}",
        config.chunk, config.reference_chunks, config.targets, config.target, config.device_column
    )
}

/// The version's first `chunk × reference_chunks` windows with outcomes, in window order,
/// among its first [`MOST_SEARCHED`]; `Ok(Err(problem))` while there are not enough.
async fn find_reference(
    store: &Store,
    config: &PerformanceConfig,
    rows: &Rows,
    from: Option<i64>,
) -> Result<Result<FixedReference, String>, String> {
    let chunk = config.chunk as usize;
    let wanted = chunk * config.reference_chunks as usize;
    let filter = match from {
        Some(from) => format!("{} AND window_start >= {from}", rows.filter),
        None => rows.filter.clone(),
    };
    let since = from
        .map(|from| format!(" since {}", crate::pipelines::rfc3339(from)))
        .unwrap_or_default();
    let mut head = scored_windows(store, &filter, MOST_SEARCHED, false).await?;
    if head.is_empty() {
        return Ok(Err(format!("the pipeline has scored no window{since} yet")));
    }
    if let Err(e) = label(store, config, &mut head).await {
        return Ok(Err(e));
    }
    let mut reference = Vec::with_capacity(wanted.min(head.len()));
    let (mut first_index, mut span) = (None, 0);
    for (index, window) in head.iter().enumerate() {
        if let Some(outcome) = window.outcome {
            let first = *first_index.get_or_insert(index);
            reference.push((window, outcome));
            if reference.len() == wanted {
                span = index + 1 - first;
                break;
            }
        }
    }
    let Some(last) = reference
        .last()
        .filter(|_| reference.len() == wanted)
        .map(|(w, _)| (*w).clone())
    else {
        return Ok(Err(format!(
            "{} of the {wanted} windows with outcomes the reference needs ({} chunks of {chunk}) have arrived in `{}`{since}{}",
            reference.len(),
            config.reference_chunks,
            config.targets,
            if head.len() == MOST_SEARCHED {
                format!(" among the model version's first {MOST_SEARCHED} windows")
            } else {
                String::new()
            }
        )));
    };
    Ok(Ok(FixedReference {
        scores: reference.iter().map(|(w, _)| w.score).collect(),
        outcomes: reference.iter().map(|(_, t)| *t).collect(),
        first_start: reference.first().map_or(last.start, |(w, _)| w.start),
        last,
        span_windows: span,
        fixed_at: Timestamp::now().nanos(),
        searched_from: from,
        after_reset: None,
    }))
}

/// Keeps `reference` as the one of `pipeline`'s `version` under `basis`. Scores are written
/// as Rust prints them (`{:e}`), which reads back to the same bits (NaN and infinities too).
async fn fix_reference(
    store: &Store,
    pipeline: &str,
    version: &str,
    basis: &str,
    reference: &FixedReference,
) -> Result<(), String> {
    // In exponent form: as short as the plain one, and a probability of 1e-300 stays 6
    // characters rather than 300.
    let scores: Vec<String> = reference
        .scores
        .iter()
        .map(|score| format!("{score:e}"))
        .collect();
    let outcomes: String = reference
        .outcomes
        .iter()
        .map(|&o| if o { '1' } else { '0' })
        .collect();
    let mut point = Point {
        measurement: REFERENCES_TABLE.to_owned(),
        tags: vec![
            ("pipeline".to_owned(), pipeline.to_owned()),
            ("model_version".to_owned(), version.to_owned()),
            ("basis".to_owned(), basis.to_owned()),
        ],
        fields: vec![
            ("scores".to_owned(), Value::Str(scores.join(","))),
            ("outcomes".to_owned(), Value::Str(outcomes)),
            ("first_start".to_owned(), Value::I64(reference.first_start)),
            (
                "last_device".to_owned(),
                Value::Str(reference.last.device.clone()),
            ),
            ("last_start".to_owned(), Value::I64(reference.last.start)),
            ("last_end".to_owned(), Value::I64(reference.last.end)),
            (
                "span_windows".to_owned(),
                Value::I64(i64::try_from(reference.span_windows).unwrap_or(i64::MAX)),
            ),
        ],
        time: Timestamp(reference.fixed_at),
        quality: Quality::Good,
    };
    if let Some(from) = reference.searched_from {
        point
            .fields
            .push(("search_from".to_owned(), Value::I64(from)));
    }
    if let Some(reset) = reference.after_reset {
        point
            .fields
            .push(("after_reset".to_owned(), Value::I64(reset)));
    }
    store
        .write_computed(&[point], REFERENCE_SOURCE, REFERENCES_TABLE)
        .await
        .map(|_| ())
        .map_err(|e| format!("writing {REFERENCES_TABLE}: {e}"))
}

/// What `_performance_references` says of `pipeline`'s `version` under `basis`: the
/// reference fixed since the latest new reference was asked for (the first, should two looks
/// have fixed one at once), where that asked the search to start, and the newest row's time
/// (a row written next is stamped after it, whatever the clock says, so it is never taken
/// for one before it).
#[derive(Debug, Default)]
struct References {
    fixed: Option<FixedReference>,
    search_from: Option<i64>,
    /// The latest new reference asked for: its row's time.
    reset_at: Option<i64>,
    newest: Option<i64>,
}

/// Reads [`References`] of `pipeline`'s `version` under `basis`.
async fn references(
    store: &Store,
    pipeline: &str,
    version: &str,
    basis: &str,
) -> Result<References, String> {
    if !store.has_table(REFERENCES_TABLE) {
        return Ok(References::default());
    }
    let of_this = format!(
        "_source = {} AND pipeline = {} AND model_version = {} AND basis = {}",
        literal(REFERENCE_SOURCE),
        literal(pipeline),
        literal(version),
        literal(basis)
    );
    let mut found = References::default();
    let newest =
        format!("SELECT CAST(max(time) AS BIGINT) FROM {REFERENCES_TABLE} WHERE {of_this}");
    for batch in &store
        .query(&newest)
        .await
        .map_err(|e| e.to_string())?
        .batches
    {
        let time: Int64Array = cast_column(batch, 0, &DataType::Int64, "time")?;
        if !time.is_empty() && time.is_valid(0) {
            found.newest = Some(time.value(0));
        }
    }
    // Rows of both kinds: a new reference asked for (`reset`), and references fixed. Either
    // kind may be the first the table holds, so each kind's columns are asked for only once
    // a row of it brought them.
    let mut fixed_only = String::new();
    if store.has_column(REFERENCES_TABLE, "reset") {
        fixed_only = " AND reset IS NOT TRUE".to_owned();
        let search_from = if store.has_column(REFERENCES_TABLE, "search_from") {
            "search_from"
        } else {
            "CAST(NULL AS BIGINT)"
        };
        let sql = format!(
            "SELECT CAST(time AS BIGINT) AS reset_at, {search_from} AS search_from FROM \
             {REFERENCES_TABLE} WHERE {of_this} AND reset ORDER BY time DESC LIMIT 1"
        );
        for batch in &store.query(&sql).await.map_err(|e| e.to_string())?.batches {
            if batch.num_rows() == 0 {
                continue;
            }
            let reset_at: Int64Array = cast_column(batch, 0, &DataType::Int64, "time")?;
            let from: Int64Array = cast_column(batch, 1, &DataType::Int64, "search_from")?;
            found.reset_at = Some(reset_at.value(0));
            found.search_from = from.is_valid(0).then(|| from.value(0));
        }
    }
    if !store.has_column(REFERENCES_TABLE, "scores") {
        return Ok(found);
    }
    // After a new reference was asked for, only one found for that very request counts: a
    // look that began before it fixes one without its `from`, which is not the answer.
    let answering = match found.reset_at {
        None => String::new(),
        Some(_) if !store.has_column(REFERENCES_TABLE, "after_reset") => return Ok(found),
        Some(reset) => format!(" AND after_reset = {reset}"),
    };
    let search_from = if store.has_column(REFERENCES_TABLE, "search_from") {
        "search_from"
    } else {
        "CAST(NULL AS BIGINT)"
    };
    let sql = format!(
        "SELECT scores, outcomes, first_start, last_device, last_start, last_end, span_windows, \
         CAST(time AS BIGINT) AS fixed_at, {search_from} AS search_from FROM {REFERENCES_TABLE} \
         WHERE {of_this}{fixed_only}{answering} ORDER BY time LIMIT 1"
    );
    let output = store.query(&sql).await.map_err(|e| e.to_string())?;
    let damaged = |what: &str| {
        format!(
            "the performance reference fixed for `{pipeline}` (model version {version}) is damaged: {what}"
        )
    };
    for batch in &output.batches {
        if batch.num_rows() == 0 {
            continue;
        }
        let text = |column: usize, name: &str| -> Result<String, String> {
            let values: StringArray = cast_column(batch, column, &DataType::Utf8, name)?;
            Ok(if values.is_valid(0) {
                values.value(0).to_owned()
            } else {
                String::new()
            })
        };
        let number = |column: usize, name: &str| -> Result<i64, String> {
            let values: Int64Array = cast_column(batch, column, &DataType::Int64, name)?;
            values
                .is_valid(0)
                .then(|| values.value(0))
                .ok_or_else(|| damaged(&format!("no {name}")))
        };
        let scores = text(0, "scores")?
            .split(',')
            .map(|score| {
                score
                    .parse::<f64>()
                    .map_err(|e| damaged(&format!("a score `{score}`: {e}")))
            })
            .collect::<Result<Vec<f64>, String>>()?;
        let outcomes = text(1, "outcomes")?
            .chars()
            .map(|outcome| match outcome {
                '1' => Ok(true),
                '0' => Ok(false),
                other => Err(damaged(&format!("an outcome `{other}`"))),
            })
            .collect::<Result<Vec<bool>, String>>()?;
        if scores.len() != outcomes.len() {
            return Err(damaged(&format!(
                "{} scores, {} outcomes",
                scores.len(),
                outcomes.len()
            )));
        }
        found.fixed = Some(FixedReference {
            scores,
            outcomes,
            first_start: number(2, "first_start")?,
            last: Scored {
                device: text(3, "last_device")?,
                start: number(4, "last_start")?,
                end: number(5, "last_end")?,
                score: 0.0,
                outcome: None,
            },
            span_windows: usize::try_from(number(6, "span_windows")?).unwrap_or(0),
            fixed_at: number(7, "time")?,
            searched_from: {
                let from: Int64Array = cast_column(batch, 8, &DataType::Int64, "search_from")?;
                from.is_valid(0).then(|| from.value(0))
            },
            after_reset: found.reset_at,
        });
        break;
    }
    Ok(found)
}

/// Asks for a new reference of `pipeline`'s latest model version: the next look finds one
/// among the windows with outcomes as they are then, starting at or after `from` (ns) when
/// given, and fixes it (decision 0069). For a reference fixed on outcomes found wrong since,
/// or a period known to be good. `Err` when the pipeline has scored no window yet (nothing to
/// replace).
pub(crate) async fn new_reference(
    store: &Store,
    pipeline: &PipelineConfig,
    config: &PerformanceConfig,
    from: Option<i64>,
) -> Result<Result<PerformanceReport, String>, String> {
    let rows = Rows::own(store, &pipeline.name);
    let version = if store.has_table(INFERENCES_TABLE) {
        latest_version(store, &rows).await?
    } else {
        None
    };
    let Some(version) = version else {
        return Ok(Err(format!(
            "pipeline `{}` has scored no window yet: there is no reference to replace",
            pipeline.name
        )));
    };
    let basis = reference_basis(config);
    let known = references(store, &pipeline.name, &version, &basis).await?;
    let mut fields = vec![("reset".to_owned(), Value::Bool(true))];
    if let Some(from) = from {
        fields.push(("search_from".to_owned(), Value::I64(from)));
    }
    let point = Point {
        measurement: REFERENCES_TABLE.to_owned(),
        tags: vec![
            ("pipeline".to_owned(), pipeline.name.clone()),
            ("model_version".to_owned(), version),
            ("basis".to_owned(), basis),
        ],
        fields,
        time: Timestamp(after_newest(known.newest)),
        quality: Quality::Good,
    };
    store
        .write_computed(&[point], REFERENCE_SOURCE, REFERENCES_TABLE)
        .await
        .map_err(|e| format!("writing {REFERENCES_TABLE}: {e}"))?;
    report(store, pipeline, config)
        .await
        .map(Ok)
        .map_err(|e| format!("a new reference was asked for, but the report after it failed: {e}"))
}

/// Now, or just after `newest` if the clock says otherwise.
fn after_newest(newest: Option<i64>) -> i64 {
    let now = Timestamp::now().nanos();
    newest.map_or(now, |newest| now.max(newest.saturating_add(1)))
}

/// The report of `pipeline`, which has `[pipelines.performance]` `config`.
pub(crate) async fn report(
    store: &Store,
    pipeline: &PipelineConfig,
    config: &PerformanceConfig,
) -> Result<PerformanceReport, String> {
    report_with(store, pipeline, config, MOST_CHUNKS).await
}

/// [`report`], showing at most `most_chunks` chunks.
async fn report_with(
    store: &Store,
    pipeline: &PipelineConfig,
    config: &PerformanceConfig,
    most_chunks: usize,
) -> Result<PerformanceReport, String> {
    let metrics: Vec<Metric> = config.metrics.iter().filter_map(|m| metric(m)).collect();
    let mut report = PerformanceReport {
        pipeline: pipeline.name.clone(),
        model_version: None,
        chunk: config.chunk,
        decision_threshold: config.decision_threshold,
        metrics: metrics.iter().map(|m| m.name().to_owned()).collect(),
        reference: None,
        chunks: Vec::new(),
        pending: 0,
        problem: None,
    };
    let no_windows = "the pipeline has scored no window yet".to_owned();
    if !store.has_table(INFERENCES_TABLE) {
        report.problem = Some(no_windows);
        return Ok(report);
    }
    let rows = Rows::own(store, &pipeline.name);
    let Some(version) = latest_version(store, &rows).await? else {
        report.problem = Some(no_windows);
        return Ok(report);
    };
    let rows = rows.of_version(&version);
    report.model_version = Some(version.clone());
    let chunk = config.chunk as usize;

    // The reference: fixed the first time it was found and fitted, else the version's first
    // windows with outcomes, in window order.
    let basis = reference_basis(config);
    let known = references(store, &pipeline.name, &version, &basis).await?;
    let (reference, is_new) = match known.fixed {
        Some(fixed) => (fixed, false),
        None => match find_reference(store, config, &rows, known.search_from).await? {
            Ok(mut found) => {
                found.fixed_at = after_newest(known.newest);
                found.after_reset = known.reset_at;
                (found, true)
            }
            Err(problem) => {
                report.problem = Some(problem);
                return Ok(report);
            }
        },
    };
    let wanted = reference.scores.len();
    let threshold = config.decision_threshold;
    let predict =
        |scores: &[f64]| -> Vec<bool> { scores.iter().map(|&s| s >= threshold).collect() };
    let positives = reference.outcomes.iter().filter(|&&t| t).count();
    let fitted = match Cbpe::fit(
        &reference.scores,
        &predict(&reference.scores),
        &reference.outcomes,
        &metrics,
        chunk,
    ) {
        Ok(fitted) => fitted,
        Err(e) => {
            report.problem = Some(format!(
                "the reference ({positives} of {wanted} outcomes positive) cannot be fitted: {e}{}",
                if positives == 0 || positives == wanted {
                    format!(
                        "; `{}` must record both outcomes (a window without a row is unknown, not negative)",
                        config.targets
                    )
                } else {
                    String::new()
                }
            ));
            return Ok(report);
        }
    };
    // Fixed once it fits, so outcomes that arrive late for earlier windows, or retention
    // removing its windows, do not move it and the chunks counted from its end. One that
    // cannot be fitted is not: more outcomes may make it fit.
    if is_new
        && let Err(e) = fix_reference(store, &pipeline.name, &version, &basis, &reference).await
    {
        tracing::warn!(pipeline = %pipeline.name, error = %e, "The performance reference could not be fixed; it is found again at the next look.");
    }
    report.reference = Some(PerformanceReference {
        from: reference.first_start,
        until: reference.last.end,
        windows: wanted as u64,
        span_windows: reference.span_windows as u64,
        positives: positives as u64,
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
        fixed_at: reference.fixed_at,
        searched_from: reference.searched_from,
    });

    // The chunks after it, up to the newest window now: counted, then only the latest read,
    // newest first (a sorted top-k, whatever the count), so chunk boundaries are counted
    // from the reference's end.
    let last = reference.last;
    let after = rows.between(&last, None);
    let newest = scored_windows(store, &after, 1, true).await?;
    let Some(newest) = newest.first() else {
        return Ok(report);
    };
    let upto = rows.between(&last, Some(newest));
    let total = count(store, &upto).await?;
    let whole = total / chunk;
    let shown = whole.min(most_chunks);
    let pending = total - whole * chunk;
    report.pending = pending as u64;
    let mut tail = scored_windows(store, &upto, shown * chunk + pending, true).await?;
    tail.truncate(shown * chunk);
    if let Err(e) = label(store, config, &mut tail).await {
        report.problem = Some(e);
    }
    let first_shown = whole - shown;
    for (position, part) in tail.chunks_exact(chunk).enumerate() {
        let from = part.iter().map(|w| w.start).min().unwrap_or(last.end);
        let scores: Vec<f64> = part.iter().map(|w| w.score).collect();
        let predictions = predict(&scores);
        let estimates = match fitted.estimate(&scores, &predictions) {
            Ok(estimates) => estimates,
            Err(e) => {
                report.problem.get_or_insert_with(|| {
                    format!(
                        "the chunk from {} cannot be estimated: {e}",
                        crate::pipelines::rfc3339(from)
                    )
                });
                continue;
            }
        };
        let labelled: Vec<(&Scored, bool)> = part
            .iter()
            .filter_map(|w| w.outcome.map(|o| (w, o)))
            .collect();
        let shown = labelled.len() as f64 >= REALIZED_SHARE * part.len() as f64;
        let realized = |metric: Metric| {
            let scores: Vec<f64> = labelled.iter().map(|(w, _)| w.score).collect();
            let outcomes: Vec<bool> = labelled.iter().map(|(_, o)| *o).collect();
            shown
                .then(|| cbpe::realized(metric, &outcomes, &predict(&scores), &scores))
                .flatten()
        };
        report.chunks.push(PerformanceChunk {
            index: (first_shown + position) as u64,
            from,
            until: part.iter().map(|w| w.end).max().unwrap_or(from),
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
    Ok(report)
}

/// The table each chunk's estimates are recorded in.
pub(crate) const PERFORMANCE_TABLE: &str = "model_performance";

/// How often a pipeline's new whole chunks are looked for.
const RECORD_EVERY: Duration = Duration::from_secs(60);

/// A chunk's estimates as rows of [`PERFORMANCE_TABLE`], one per metric, stamped at the
/// chunk's last instant.
fn chunk_points(pipeline: &str, version: &str, chunk: &PerformanceChunk, time: i64) -> Vec<Point> {
    chunk
        .estimates
        .iter()
        .map(|e| {
            let count = |n: u64| Value::I64(i64::try_from(n).unwrap_or(i64::MAX));
            let mut fields = vec![
                ("estimated".to_owned(), Value::F64(e.estimated)),
                ("sampling_error".to_owned(), Value::F64(e.sampling_error)),
                ("alert".to_owned(), Value::Bool(e.alert)),
                ("chunk".to_owned(), count(chunk.index)),
                ("windows".to_owned(), count(chunk.windows)),
                ("with_outcomes".to_owned(), count(chunk.with_outcomes)),
                ("chunk_from".to_owned(), Value::I64(chunk.from)),
                ("chunk_until".to_owned(), Value::I64(chunk.until)),
                ("model_version".to_owned(), Value::Str(version.to_owned())),
            ];
            if let Some(realized) = e.realized {
                fields.push(("realized".to_owned(), Value::F64(realized)));
            }
            Point {
                measurement: PERFORMANCE_TABLE.to_owned(),
                tags: vec![
                    ("pipeline".to_owned(), pipeline.to_owned()),
                    ("metric".to_owned(), e.metric.clone()),
                ],
                fields,
                time: Timestamp(time),
                quality: Quality::Good,
            }
        })
        .collect()
}

/// The newest chunk of `version` recorded for `pipeline`, as (its end, its index), if any.
/// By end first: a reference picked again (decision 0069) counts its chunks from another
/// place, so an index alone would record windows twice or wait for months.
async fn recorded_through(
    store: &Store,
    pipeline: &str,
    version: &str,
) -> Result<Option<(i64, i64)>, String> {
    if !store.has_column(PERFORMANCE_TABLE, "chunk")
        || !store.has_column(PERFORMANCE_TABLE, "chunk_until")
    {
        return Ok(None);
    }
    let sql = format!(
        "SELECT chunk_until, chunk FROM {PERFORMANCE_TABLE} WHERE pipeline = {} AND \
         model_version = {} ORDER BY chunk_until DESC, chunk DESC LIMIT 1",
        literal(pipeline),
        literal(version)
    );
    let output = store.query(&sql).await.map_err(|e| e.to_string())?;
    for batch in &output.batches {
        let until: Int64Array = cast_column(batch, 0, &DataType::Int64, "chunk_until")?;
        let index: Int64Array = cast_column(batch, 1, &DataType::Int64, "chunk")?;
        if !index.is_empty() && index.is_valid(0) && until.is_valid(0) {
            return Ok(Some((until.value(0), index.value(0))));
        }
    }
    Ok(None)
}

/// Records every whole chunk of `pipeline` not recorded yet, once a minute, until `stop`:
/// each chunk's estimates as it was first estimated (realized values that arrive later are
/// in the report, not in the row).
pub(crate) async fn record(
    store: Arc<Store>,
    pipeline: PipelineConfig,
    config: PerformanceConfig,
    stop: CancellationToken,
) {
    let name = pipeline.name.clone();
    // The newest chunk recorded (end, index), per model version (read back once per
    // version).
    let mut recorded: HashMap<String, (i64, i64)> = HashMap::new();
    let mut last_problem = None;
    let mut ticker = tokio::time::interval(RECORD_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = record_new_chunks(&store, &pipeline, &config, &mut recorded) => outcome,
        };
        let problem = match outcome {
            Ok((written, problem)) => {
                if written > 0 {
                    tracing::debug!(pipeline = %name, chunks = written, "Recorded the estimated performance of new chunks.");
                }
                problem
            }
            Err(e) => Some(e),
        };
        // Said when it starts and when it ends, not every minute (while outcomes accumulate
        // its counts change at every look).
        match (&problem, &last_problem) {
            (Some(problem), None) => {
                tracing::warn!(pipeline = %name, problem = %problem, "The pipeline's performance is not recorded for now.");
            }
            (None, Some(_)) => {
                tracing::info!(pipeline = %name, "The pipeline's performance is recorded again.");
            }
            _ => {}
        }
        last_problem = problem;
    }
}

/// One look for new whole chunks: how many were recorded, and the report's problem (what
/// can be recorded still is).
async fn record_new_chunks(
    store: &Store,
    pipeline: &PipelineConfig,
    config: &PerformanceConfig,
    recorded: &mut HashMap<String, (i64, i64)>,
) -> Result<(usize, Option<String>), String> {
    let report = report(store, pipeline, config).await?;
    let problem = report.problem.clone();
    let Some(version) = report.model_version.clone() else {
        return Ok((0, problem));
    };
    const NONE_YET: (i64, i64) = (i64::MIN, -1);
    if !recorded.contains_key(&version) {
        let through = recorded_through(store, &pipeline.name, &version)
            .await?
            .unwrap_or(NONE_YET);
        recorded.insert(version.clone(), through);
    }
    let through = recorded.get(&version).copied().unwrap_or(NONE_YET);
    let key = |c: &PerformanceChunk| (c.until, i64::try_from(c.index).unwrap_or(i64::MAX));
    // Chunks that end after the newest recorded: within one reference those after it by
    // index; after a reference was picked again, none over windows already recorded. A chunk
    // that becomes whole only after another one ending at the same instant was recorded
    // (windows scored late into the past) is not recorded; the report still shows it.
    let new: Vec<(usize, &PerformanceChunk)> = report
        .chunks
        .iter()
        .enumerate()
        .filter(|(_, c)| through == NONE_YET || c.until > through.0)
        .collect();
    let Some(newest) = new.iter().map(|(_, c)| key(c)).max() else {
        return Ok((0, problem));
    };
    // A row per chunk and metric at the chunk's last instant; chunks that end at the same
    // instant (more devices than windows per chunk) are stamped a nanosecond apart, each
    // before the one before it (a count that does not change as chunks are added), so none
    // overwrites another.
    let points: Vec<Point> = new
        .iter()
        .flat_map(|&(position, chunk)| {
            let earlier_same_end = report.chunks[..position]
                .iter()
                .rev()
                .take_while(|c| c.until == chunk.until)
                .count();
            let time = chunk.until - 1 - earlier_same_end as i64;
            chunk_points(&pipeline.name, &version, chunk, time)
        })
        .collect();
    crate::pipelines::store_rows(store, &pipeline.name, &points, PERFORMANCE_TABLE)
        .await
        .map_err(|e| format!("writing {PERFORMANCE_TABLE}: {e}"))?;
    recorded.insert(version, newest);
    Ok((new.len(), problem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabrik_core::{Precision, SourceId, Timestamp};

    const MINUTE: i64 = 60_000_000_000;

    /// What a `SELECT count(*) …` of the store says.
    async fn rows(store: &Store, sql: &str) -> usize {
        counted(store, sql).await.expect("count")
    }

    fn window(device: &str, start: i64, end: i64) -> Scored {
        Scored {
            device: device.into(),
            start,
            end,
            score: 0.5,
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
        pipeline.model = "onnx".into();
        pipeline.model_output = "probability".into();
        let performance = PerformanceConfig {
            targets: "inspections".into(),
            target: "defect".into(),
            device_column: "device".into(),
            decision_threshold: 0.5,
            chunk: 200,
            reference_chunks: 6,
            metrics: vec!["roc_auc".into(), "accuracy".into()],
        };
        (pipeline, performance)
    }

    /// What [`history`] wrote, in window order.
    struct Generated {
        lines: String,
        scores: Vec<f64>,
        outcomes: Vec<bool>,
        inspected: Vec<bool>,
    }

    /// A classifier's windows on two pumps, a minute each, as the pipeline writes them, and
    /// inspections whose outcomes follow its probabilities (calibrated). From window `shift`
    /// on, the inputs move where the model is unsure (probabilities between 0.4 and 0.6).
    /// Windows `inspected` picks have an inspection. Besides: an earlier model version over
    /// the same windows of pump-a, and an A/B challenger's newer rows, neither of which
    /// counts.
    fn history(windows: usize, shift: usize, inspected: impl Fn(usize) -> bool) -> Generated {
        let start = Timestamp::now().nanos() - 10 * 24 * 60 * MINUTE;
        let mut draws = Draws(7);
        let mut generated = Generated {
            lines: String::new(),
            scores: Vec::new(),
            outcomes: Vec::new(),
            inspected: Vec::new(),
        };
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
            // The stored flag is the pipeline's alert verdict, not the classifier's decision.
            generated.lines.push_str(&format!(
                "inferences,pipeline=quality,device={device},model=onnx:clf score={score},\
                 flag=true,window_start={window_start}i,window_end={window_end}i,\
                 model_version=\"v2\" {}\n",
                window_end - 1
            ));
            if device == "pump-a" && k < 600 {
                generated.lines.push_str(&format!(
                    "inferences,pipeline=quality,device=pump-a,model=onnx:old score=0.99,\
                     flag=true,window_start={window_start}i,window_end={window_end}i,\
                     model_version=\"v1\" {}\n",
                    window_end - 2
                ));
            }
            if inspected(k) {
                generated.lines.push_str(&format!(
                    "inspections,device={device} defect={}i {}\n",
                    i64::from(defect),
                    window_start + MINUTE / 2
                ));
            }
            generated.scores.push(score);
            generated.outcomes.push(defect);
            generated.inspected.push(inspected(k));
        }
        // A challenger live on pump-b scored last; its rows are not the pipeline's own.
        let end = start + (windows / 2) as i64 * MINUTE;
        generated.lines.push_str(&format!(
            "inferences,pipeline=quality,device=pump-b,model=onnx:new score=0.2,flag=false,\
             window_start={end}i,window_end={}i,model_version=\"c1\",challenger=true {}\n",
            end + MINUTE,
            end + MINUTE - 1
        ));
        generated
    }

    async fn reported(lines: &str) -> PerformanceReport {
        let (_dir, store) = crate::test_store::store_with(lines).await;
        let (pipeline, performance) = config();
        report(&store, &pipeline, &performance)
            .await
            .expect("report")
    }

    #[tokio::test]
    async fn a_shift_to_where_the_model_is_unsure_is_estimated_before_outcomes_arrive() {
        // 5,000 windows; three in four inspected up to window 3,000, none after; the inputs
        // shift at 2,400.
        let inspected = |k: usize| k < 3_000 && k % 4 != 3;
        let g = history(5_000, 2_400, inspected);
        let (_dir, store) = crate::test_store::store_with(&g.lines).await;
        let (pipeline, performance) = config();
        let report = report(&store, &pipeline, &performance)
            .await
            .expect("report");
        assert_eq!(report.problem, None, "{report:?}");
        assert_eq!(report.model_version.as_deref(), Some("v2"));

        // The reference: the first 1,200 inspected windows, in window order.
        let labelled: Vec<usize> = (0..5_000).filter(|&k| g.inspected[k]).collect();
        let reference = &labelled[..1_200];
        let after = reference[1_199] + 1;
        let got = report.reference.as_ref().expect("reference");
        assert_eq!((got.windows, got.span_windows), (1_200, after as u64));
        let pick = |rows: &[usize], of: &[f64]| rows.iter().map(|&k| of[k]).collect::<Vec<_>>();
        let reference_scores = pick(reference, &g.scores);
        let reference_outcomes: Vec<bool> = reference.iter().map(|&k| g.outcomes[k]).collect();
        assert_eq!(
            got.positives,
            reference_outcomes.iter().filter(|&&o| o).count() as u64
        );
        let chunks = (5_000 - after) / 200;
        assert_eq!(report.chunks.len(), chunks);
        assert_eq!(report.pending, ((5_000 - after) % 200) as u64);

        // The same estimator fitted on the same rows from the generated data rather than
        // the store, its predictions from the decision threshold (not the stored flags): every
        // estimate equal, and the realized values on the inspected windows.
        let predict = |scores: &[f64]| scores.iter().map(|&s| s >= 0.5).collect::<Vec<_>>();
        let fitted = Cbpe::fit(
            &reference_scores,
            &predict(&reference_scores),
            &reference_outcomes,
            &[Metric::RocAuc, Metric::Accuracy],
            200,
        )
        .expect("fit");
        for (i, chunk) in report.chunks.iter().enumerate() {
            let rows: Vec<usize> = (after + i * 200..after + (i + 1) * 200).collect();
            let scores = pick(&rows, &g.scores);
            let expected = fitted
                .estimate(&scores, &predict(&scores))
                .expect("estimate");
            for (got, want) in chunk.estimates.iter().zip(&expected) {
                assert_eq!(got.metric, want.metric.name());
                assert!((got.estimated - want.value).abs() < 1e-12, "chunk {i}");
                assert_eq!(got.alert, want.alert, "chunk {i}");
            }
            let seen: Vec<usize> = rows.into_iter().filter(|&k| g.inspected[k]).collect();
            assert_eq!(chunk.with_outcomes, seen.len() as u64, "chunk {i}");
            let realized = (seen.len() >= 100).then(|| {
                let scores = pick(&seen, &g.scores);
                let outcomes: Vec<bool> = seen.iter().map(|&k| g.outcomes[k]).collect();
                cbpe::realized(Metric::RocAuc, &outcomes, &predict(&scores), &scores)
            });
            assert_eq!(chunk.estimates[0].realized, realized.flatten(), "chunk {i}");
        }
        // Before the shift the estimate tracks what was realized and stays inside the
        // thresholds; after it, ROC AUC falls below them, in the chunks from window 3,000 on
        // too, where no outcome is stored.
        let auc = |i: usize| &report.chunks[i].estimates[0];
        for i in 0..4 {
            assert!(!auc(i).alert, "chunk {i}: {:?}", auc(i));
            let realized = auc(i).realized.expect("realized");
            assert!(
                (auc(i).estimated - realized).abs() < 4.0 * auc(i).sampling_error + 0.02,
                "chunk {i}: {:?}",
                auc(i)
            );
        }
        for i in 5..chunks {
            assert!(auc(i).alert, "chunk {i}: {:?}", auc(i));
            assert!(auc(i).estimated < 0.7, "chunk {i}: {:?}", auc(i));
        }
        assert!(report.chunks[chunks - 1].with_outcomes == 0);

        // Shown fewer, the latest chunks are the same ones.
        let latest = report_with(&store, &pipeline, &performance, 5)
            .await
            .expect("report");
        assert_eq!(latest.chunks[..], report.chunks[chunks - 5..]);
        assert_eq!(latest.pending, report.pending);
    }

    /// Writes the inspections of [`history`]'s windows that `inspected` picks (again, for
    /// those already written: the same rows).
    async fn write_every_inspection(store: &Store, inspected: impl Fn(usize) -> bool) {
        let all = history(5_000, 2_400, inspected);
        let inspections: String = all
            .lines
            .lines()
            .filter(|line| line.starts_with("inspections"))
            .map(|line| format!("{line}\n"))
            .collect();
        store
            .write_lines(&inspections, Precision::Ns, SourceId::http())
            .await
            .expect("inspections");
    }

    #[tokio::test]
    async fn a_reference_stays_fixed_when_outcomes_arrive_late_for_earlier_windows() {
        // Inspections from window 400 on at first: the reference starts there.
        let inspected = |k: usize| k < 3_000 && k % 4 != 3;
        let g = history(5_000, 2_400, |k| inspected(k) && k >= 400);
        let (_dir, store) = crate::test_store::store_with(&g.lines).await;
        let (pipeline, mut performance) = config();
        let first = report(&store, &pipeline, &performance)
            .await
            .expect("report");
        assert_eq!(first.problem, None, "{first:?}");
        let reference = first.reference.clone().expect("reference");
        assert!(reference.fixed_at > 0, "{reference:?}");
        assert!(!first.chunks.is_empty());

        // The outcomes of windows 0 to 399 arrive late. Found again, the reference would
        // start at window 0 and every chunk would move; fixed, nothing changes.
        write_every_inspection(&store, inspected).await;
        let again = report(&store, &pipeline, &performance)
            .await
            .expect("report");
        assert_eq!(again.reference, first.reference);
        assert_eq!(again.chunks, first.chunks);
        assert_eq!(again.pending, first.pending);
        // The decision threshold and the metrics are not part of it: the same windows, fitted
        // again.
        performance.decision_threshold = 0.6;
        performance.metrics = vec!["f1".into()];
        let refitted = report(&store, &pipeline, &performance)
            .await
            .expect("report");
        let kept = refitted.reference.as_ref().expect("reference");
        assert_eq!(
            (kept.from, kept.until, kept.fixed_at),
            (reference.from, reference.until, reference.fixed_at)
        );
        assert_eq!(kept.metrics[0].metric, "f1");

        // Another chunk size finds a new reference, among the outcomes as they are now: from
        // window 0, 200 minutes (400 windows on two pumps) earlier.
        performance.chunk = 100;
        let rebased = report(&store, &pipeline, &performance)
            .await
            .expect("report");
        let new = rebased.reference.as_ref().expect("reference");
        assert_eq!(new.from, reference.from - 200 * MINUTE, "{new:?}");
        assert_eq!(new.windows, 600);
        assert!(new.fixed_at > reference.fixed_at);
        assert_eq!(
            rows(
                &store,
                &format!("SELECT count(*) AS n FROM {REFERENCES_TABLE} WHERE pipeline = 'quality'")
            )
            .await,
            2
        );
    }

    #[tokio::test]
    async fn a_new_reference_is_found_on_request_and_fixed_again() {
        let inspected = |k: usize| k < 3_000 && k % 4 != 3;
        let g = history(5_000, 2_400, |k| inspected(k) && k >= 400);
        let (_dir, store) = crate::test_store::store_with(&g.lines).await;
        let (pipeline, performance) = config();
        // Nothing scored: nothing to replace.
        let (_empty_dir, empty) = crate::test_store::store_with("pump,device=p1 v=1 1\n").await;
        let refused = new_reference(&empty, &pipeline, &performance, None)
            .await
            .expect("looked");
        assert!(
            refused
                .as_ref()
                .is_err_and(|why| why.contains("has scored no window yet")),
            "{refused:?}"
        );
        let first = report(&store, &pipeline, &performance)
            .await
            .expect("report")
            .reference
            .expect("reference");
        assert_eq!(first.searched_from, None);

        let mut recorded = HashMap::new();
        let (written, _) = record_new_chunks(&store, &pipeline, &performance, &mut recorded)
            .await
            .expect("record");
        assert!(written > 0);
        let all_rows = "SELECT count(*) AS n FROM model_performance WHERE pipeline = 'quality'";
        let rows_before = rows(&store, all_rows).await;

        // The outcomes of windows 0 to 399 arrive late; asked for, a new reference is found
        // among the outcomes as they are now, 200 minutes earlier, and fixed.
        write_every_inspection(&store, inspected).await;
        let renewed = new_reference(&store, &pipeline, &performance, None)
            .await
            .expect("looked")
            .expect("renewed");
        let second = renewed.reference.clone().expect("reference");
        assert_eq!(second.from, first.from - 200 * MINUTE, "{second:?}");
        assert!(second.fixed_at > first.fixed_at);
        // Its chunks are counted from an earlier end: only those that end after the newest
        // recorded are recorded (the windows that were pending), none over windows already
        // recorded, with the look's memory or after a restart.
        let newest_recorded = recorded.get("v2").copied().expect("recorded").0;
        let (written, _) = record_new_chunks(&store, &pipeline, &performance, &mut recorded)
            .await
            .expect("record");
        assert!(written <= 1, "{written}");
        let (again, _) = record_new_chunks(&store, &pipeline, &performance, &mut HashMap::new())
            .await
            .expect("record");
        assert_eq!(again, 0);
        assert_eq!(rows(&store, all_rows).await, rows_before + 2 * written);
        let up_to_then = format!("{all_rows} AND chunk_until <= {newest_recorded}");
        assert_eq!(rows(&store, &up_to_then).await, rows_before);
        let again = report(&store, &pipeline, &performance)
            .await
            .expect("report");
        assert_eq!(again.reference.as_ref(), Some(&second));
        assert_eq!(again.chunks, renewed.chunks);

        // From a time: only windows starting then or later, here those of window 1,000 on
        // (500 minutes after window 0).
        let from = second.from + 500 * MINUTE;
        let third = new_reference(&store, &pipeline, &performance, Some(from))
            .await
            .expect("looked")
            .expect("renewed")
            .reference
            .expect("reference");
        assert_eq!((third.from, third.searched_from), (from, Some(from)));
        let kept = report(&store, &pipeline, &performance)
            .await
            .expect("report")
            .reference
            .expect("reference");
        assert_eq!(kept, third);
        // Too late a start: no reference, and the report says from when it looked.
        let after_outcomes = second.from + 2_000 * MINUTE;
        let none = new_reference(&store, &pipeline, &performance, Some(after_outcomes))
            .await
            .expect("looked")
            .expect("asked");
        assert_eq!(none.reference, None);
        assert!(
            none.problem
                .as_deref()
                .is_some_and(|why| why.contains(" since ")),
            "{none:?}"
        );
    }

    #[tokio::test]
    async fn a_new_reference_asked_for_before_any_fits_is_found_once_outcomes_arrive() {
        // 750 windows with outcomes, the reference needs 1,200.
        let g = history(5_000, 2_400, |k| k < 1_000 && k % 4 != 3);
        let (_dir, store) = crate::test_store::store_with(&g.lines).await;
        let (pipeline, performance) = config();
        let asked = new_reference(&store, &pipeline, &performance, None)
            .await
            .expect("looked")
            .expect("asked");
        assert_eq!(asked.reference, None);
        assert!(
            asked
                .problem
                .as_deref()
                .is_some_and(|why| why.starts_with("750 of the 1200")),
            "{asked:?}"
        );
        // The table holds a reset row only: reading it is no error, and once the outcomes
        // arrive the reference is found and fixed.
        write_every_inspection(&store, |k| k < 3_000 && k % 4 != 3).await;
        let found = report(&store, &pipeline, &performance)
            .await
            .expect("report");
        assert_eq!(found.problem, None, "{found:?}");
        let reference = found.reference.expect("reference");
        let again = report(&store, &pipeline, &performance)
            .await
            .expect("report")
            .reference
            .expect("reference");
        assert_eq!(again, reference, "fixed");
    }

    #[tokio::test]
    async fn each_whole_chunk_is_recorded_once_as_rows_alert_rules_read() {
        let g = history(3_000, 2_400, |k| k < 2_000);
        let (_dir, store) = crate::test_store::store_with(&g.lines).await;
        let (pipeline, performance) = config();
        let mut recorded = HashMap::new();
        let written = record_new_chunks(&store, &pipeline, &performance, &mut recorded)
            .await
            .expect("record")
            .0;
        let report = report(&store, &pipeline, &performance)
            .await
            .expect("report");
        assert_eq!(written, report.chunks.len());
        assert!(written >= 8, "{report:?}");
        let all = "SELECT count(*) AS n FROM model_performance WHERE pipeline = 'quality'";
        assert_eq!(rows(&store, all).await, 2 * written);
        // The rows say what the report says: the chunks after the shift alert on ROC AUC.
        let alerting = report
            .chunks
            .iter()
            .filter(|c| c.estimates[0].alert)
            .count();
        assert!(alerting > 0);
        assert_eq!(
            rows(
                &store,
                "SELECT count(*) AS n FROM model_performance WHERE pipeline = 'quality' \
                 AND metric = 'roc_auc' AND alert AND model_version = 'v2'"
            )
            .await,
            alerting
        );
        // Nothing new: nothing written; after a restart (nothing in memory) neither.
        let again = record_new_chunks(&store, &pipeline, &performance, &mut recorded)
            .await
            .expect("record")
            .0;
        assert_eq!(again, 0);
        let mut restarted = HashMap::new();
        let after_restart = record_new_chunks(&store, &pipeline, &performance, &mut restarted)
            .await
            .expect("record")
            .0;
        assert_eq!(after_restart, 0);
        assert_eq!(rows(&store, all).await, 2 * written);
    }

    /// Windows of `devices` pumps a minute each, minutes `minutes`, all ending together each
    /// minute, inspected throughout (outcomes following the probabilities).
    fn fleet(devices: usize, minutes: std::ops::Range<i64>, start: i64) -> String {
        let mut draws = Draws(minutes.start as u64 + 11);
        let mut lines = String::new();
        for minute in minutes {
            for d in 0..devices {
                let window_start = start + minute * MINUTE;
                let window_end = window_start + MINUTE;
                let score = draws.next();
                let defect = draws.next() < score;
                lines.push_str(&format!(
                    "inferences,pipeline=quality,device=pump-{d:02},model=onnx:clf score={score},\
                     flag=true,window_start={window_start}i,window_end={window_end}i,\
                     model_version=\"v2\" {}\n\
                     inspections,device=pump-{d:02} defect={}i {}\n",
                    window_end - 1,
                    i64::from(defect),
                    window_start + MINUTE / 2
                ));
            }
        }
        lines
    }

    #[tokio::test]
    async fn chunks_that_end_together_are_each_recorded_once_and_new_ones_after() {
        // 30 pumps, chunks of 10 windows: three chunks end at every minute.
        let start = Timestamp::now().nanos() - 24 * 60 * MINUTE;
        let (_dir, store) = crate::test_store::store_with(&fleet(30, 0..10, start)).await;
        let (pipeline, mut performance) = config();
        performance.chunk = 10;
        let mut recorded = HashMap::new();
        let first = record_new_chunks(&store, &pipeline, &performance, &mut recorded)
            .await
            .expect("record")
            .0;
        // 300 windows, 60 in the reference: 24 chunks, three per minute.
        assert_eq!(first, 24);
        let all = "SELECT count(*) AS n FROM model_performance WHERE pipeline = 'quality'";
        let chunks = "SELECT count(DISTINCT chunk) AS n FROM model_performance";
        assert_eq!(
            rows(&store, all).await,
            2 * 24,
            "no chunk overwrote another"
        );
        assert_eq!(rows(&store, chunks).await, 24);
        // Two more minutes scored: only their six chunks are written, after a restart too.
        store
            .write_lines(&fleet(30, 10..12, start), Precision::Ns, SourceId::http())
            .await
            .expect("write");
        let mut restarted = HashMap::new();
        let second = record_new_chunks(&store, &pipeline, &performance, &mut restarted)
            .await
            .expect("record")
            .0;
        assert_eq!(second, 6);
        assert_eq!(rows(&store, all).await, 2 * 30);
        assert_eq!(rows(&store, chunks).await, 30);
        let report = report(&store, &pipeline, &performance)
            .await
            .expect("report");
        let indices: Vec<u64> = report.chunks.iter().map(|c| c.index).collect();
        assert_eq!(indices, (0..30).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn missing_outcomes_and_refused_fits_say_why() {
        // Too few outcomes.
        let g = history(1_500, 1_500, |k| k < 600);
        let report = reported(&g.lines).await;
        assert_eq!(report.reference, None);
        assert!(report.chunks.is_empty());
        assert_eq!(
            report.problem.as_deref(),
            Some(
                "600 of the 1200 windows with outcomes the reference needs (6 chunks of 200) have arrived in `inspections`"
            )
        );
        // No table of outcomes at all.
        let without: String = g
            .lines
            .lines()
            .filter(|l| !l.starts_with("inspections"))
            .map(|l| format!("{l}\n"))
            .collect();
        let report = reported(&without).await;
        assert_eq!(
            report.problem.as_deref(),
            Some(
                "the outcomes' table `inspections` does not exist (yet): no outcome has been written to it"
            )
        );
        // The table without the configured column.
        let renamed = g.lines.replace("defect=", "faulty=");
        let report = reported(&renamed).await;
        assert!(
            report
                .problem
                .as_deref()
                .is_some_and(|p| p.starts_with("reading the outcomes (`inspections`):")
                    && p.contains("defect")),
            "{report:?}"
        );
        // Only positive outcomes recorded: the fit is refused, and the cause named.
        let positives_only: String = g
            .lines
            .lines()
            .filter(|l| !l.starts_with("inspections") || l.contains("defect=1i"))
            .map(|l| format!("{l}\n"))
            .chain((0..1_500).map(|k| {
                // Within each window of the history (its start is a few ms earlier).
                let start = Timestamp::now().nanos() - 10 * 24 * 60 * MINUTE;
                let device = if k % 2 == 0 { "pump-a" } else { "pump-b" };
                format!(
                    "inspections,device={device} defect=1i {}\n",
                    start + (k / 2) * MINUTE + 1
                )
            }))
            .collect();
        let report = reported(&positives_only).await;
        assert!(
            report.problem.as_deref().is_some_and(|p| p.contains(
                "must record both outcomes (a window without a row is unknown, not negative)"
            )),
            "{report:?}"
        );
        // No inferences.
        let report = reported("inspections,device=pump-a defect=1i 1\n").await;
        assert_eq!(
            report.problem.as_deref(),
            Some("the pipeline has scored no window yet")
        );
    }

    #[test]
    fn a_section_that_cannot_work_is_refused_by_field() {
        let (mut pipeline, mut performance) = config();
        performance.chunk = 1;
        performance.reference_chunks = 5;
        performance.metrics = vec!["auc".into(), "f1".into(), "f1".into()];
        performance.target = "de\"fect".into();
        performance.decision_threshold = 1.0;
        pipeline.model = "iforest".into();
        let fields: Vec<String> = problems(&pipeline, &performance)
            .into_iter()
            .map(|(field, message)| format!("{field}: {message}"))
            .collect();
        assert_eq!(fields.len(), 7, "{fields:?}");
        assert!(
            fields[0].starts_with("performance: estimates a classifier's performance"),
            "{fields:?}"
        );
        assert!(fields[1].starts_with("performance.target: "), "{fields:?}");
        assert!(
            fields[2].starts_with("performance.decision_threshold: 1:"),
            "{fields:?}"
        );
        assert!(
            fields[3].starts_with("performance.chunk: 1 windows"),
            "{fields:?}"
        );
        assert!(
            fields[4].starts_with("performance.reference_chunks: 5:"),
            "{fields:?}"
        );
        assert!(fields[5].contains("`auc` is not one of"), "{fields:?}");
        assert!(fields[6].contains("`f1` is named twice"), "{fields:?}");
        let (pipeline, mut performance) = config();
        assert!(problems(&pipeline, &performance).is_empty());
        performance.chunk = 30_000;
        let too_big = problems(&pipeline, &performance);
        assert!(
            too_big[0]
                .1
                .contains("a reference of 180000 windows; at most 25000"),
            "{too_big:?}"
        );
    }
}
