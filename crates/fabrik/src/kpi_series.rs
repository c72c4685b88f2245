//! Use cases' KPIs kept as a series (`use_case_kpis`, decision 0037): shortly after every
//! multiple of `[usecases] record_every`, each use case's KPIs measured over the interval just
//! ended on its stage's devices, a row per KPI and node. Alert rules can then page on a
//! business KPI, a hub receives its edges' KPIs through their uplinks, and the trend outlives
//! the raw rows' retention. Over the same intervals, each A/B split's arms compared on its
//! use case's KPIs (`ab_kpis`, decision 0072), when the pipelines run in this process.

use std::sync::Arc;
use std::time::Duration;

use fabrik_api::pipelines::{ArmKpi, IntervalArmKpis, PipelineControl};
use fabrik_api::usecases::KpiMeter;
use fabrik_core::{Point, Quality, Timestamp, Value};
use fabrik_registry::Registry;
use fabrik_registry::usecases::{Better, KpiMeasure, KpiValue, UseCase};
use fabrik_runtime::services::ServiceHandle;
use fabrik_store::Store;
use tokio_util::sync::CancellationToken;

use crate::usecases::StoreKpiMeter;

/// The table KPIs are recorded in.
pub(crate) const KPIS_TABLE: &str = "use_case_kpis";
/// The table A/B splits' arms are recorded in, a row per KPI and interval.
pub(crate) const AB_KPIS_TABLE: &str = "ab_kpis";

/// The longest wait after an interval ends before it is measured, for rows still on their
/// way (a batching connector, an uplink); a tenth of the interval when that is shorter.
const LONGEST_SETTLING: Duration = Duration::from_secs(60);

/// What the series is recorded from.
pub(crate) struct Sources {
    pub(crate) store: Arc<Store>,
    pub(crate) registry: Registry,
    pub(crate) meter: StoreKpiMeter,
    /// The pipelines of this process, for their A/B splits; none when they run elsewhere.
    pub(crate) pipelines: Option<Arc<dyn PipelineControl>>,
    /// Where each use case's measurement is reported as an OpenLineage run, if anywhere.
    pub(crate) lineage: Option<crate::openlineage::Emitter>,
}

/// Starts recording every `every` (none when zero) as node `node`.
pub(crate) fn start(every: Duration, node: String, sources: Sources) -> ServiceHandle {
    let Sources {
        store,
        registry,
        meter,
        pipelines,
        lineage,
    } = sources;
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        if every.is_zero() {
            token.cancelled().await;
            return Ok(());
        }
        let every_ns = i64::try_from(every.as_nanos()).unwrap_or(i64::MAX).max(1);
        let settle = (every / 10).min(LONGEST_SETTLING);
        let settle_ns = i64::try_from(settle.as_nanos()).unwrap_or(0);
        let started = Timestamp::now().nanos();
        let (mut end, _) = next_interval(started, every_ns, settle_ns);
        // The intervals that ended while the process was down come first: a restart leaves
        // no hole in the series.
        let missed = tokio::select! {
            () = token.cancelled() => return Ok(()),
            missed = first_missed_end(&store, every_ns, end) => missed,
        };
        match missed {
            Ok(Some(first)) => {
                tracing::info!(
                    intervals = (end - first) / every_ns,
                    "Measuring the use-case KPI intervals that ended while Fabrik was down."
                );
                end = first;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "The use-case KPI intervals missed while Fabrik was down could not be found; they are not measured.");
            }
        }
        loop {
            // Intervals end at multiples of `every`, whenever the process started, and are
            // measured once they have settled: one after the other, catching up after a
            // measurement that ran long, and never more than the most recent
            // [`MOST_MISSED_INTERVALS`] behind. An interval that ended before the start
            // also waits for a settling time after the start, for the rows of the outage
            // still on their way (a device's buffer, an uplink's backlog).
            let now = Timestamp::now().nanos();
            let (due, _) = next_interval(now, every_ns, settle_ns);
            end = end.max(due.saturating_sub(MOST_MISSED_INTERVALS.saturating_mul(every_ns)));
            let ready_at = end.max(started).saturating_add(settle_ns);
            let wait = Duration::from_nanos(u64::try_from(ready_at - now).unwrap_or(0));
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
            // The arms one interval behind the use cases' KPIs: a pipeline writes a window
            // only once its lateness has passed the window's end, which may be long after
            // the interval's settling time; an interval measured before its last windows
            // were written would miss them for good. First, so that a stop in between
            // leaves the use cases' interval unrecorded too, and a restart measures both
            // again.
            if let Some(pipelines) = &pipelines {
                let (from, to) = (end - 2 * every_ns, end - every_ns);
                let recorded = tokio::select! {
                    () = token.cancelled() => return Ok(()),
                    recorded = record_arms(
                        &store,
                        pipelines.as_ref(),
                        &node,
                        (from, to),
                        lineage.as_ref().map(|emitter| (emitter, &registry)),
                    ) => recorded,
                };
                if let Err(e) = recorded {
                    tracing::warn!(error = %e, "A/B splits' KPIs could not be recorded.");
                }
            }
            let recorded = tokio::select! {
                () = token.cancelled() => return Ok(()),
                recorded = record(&store, &registry, &meter, &node, end - every_ns, end, lineage.as_ref()) => recorded,
            };
            if let Err(e) = recorded {
                tracing::warn!(error = %e, "Use-case KPIs could not be recorded.");
            }
            end = end.saturating_add(every_ns);
        }
    });
    ServiceHandle { stop, task }
}

/// The end of the next interval to measure at `now` (the first multiple of `every_ns` whose
/// settling time has not passed), and how long to wait until it has settled.
fn next_interval(now: i64, every_ns: i64, settle_ns: i64) -> (i64, Duration) {
    let end = (now.saturating_sub(settle_ns) / every_ns + 1).saturating_mul(every_ns);
    let wait = u64::try_from(end.saturating_add(settle_ns) - now).unwrap_or(0);
    (end, Duration::from_nanos(wait))
}

/// The most intervals the loop is ever behind: after a long outage, or measurements slower
/// than the interval, the most recent ones are measured (a node down for months does not
/// spend its start measuring every hour of them).
const MOST_MISSED_INTERVALS: i64 = 1_000;

/// The lineage source of the rows this process records (`_source`): a hub's rows from its
/// edges carry their uplink's instead, and a renamed node's earlier rows are still its own.
const KPIS_SOURCE: &str = "usecases";

/// The end of the first interval this process did not measure before `next_end` (the one it
/// would measure next), if any: none before its first record, none that would overlap an
/// interval it measured (after `record_every` grew).
async fn first_missed_end(
    store: &Store,
    every_ns: i64,
    next_end: i64,
) -> Result<Option<i64>, String> {
    if !store.has_table(KPIS_TABLE) {
        return Ok(None);
    }
    let sql = format!(
        "SELECT CAST(max(time) AS BIGINT) AS last FROM {KPIS_TABLE} WHERE _source = {}",
        crate::sql_text::literal(KPIS_SOURCE)
    );
    let last = crate::columns::query_i64(store, &sql).await?;
    // Rows are stamped at their interval's last instant.
    Ok(last.and_then(|last| first_end_after(last.saturating_add(1), every_ns, next_end)))
}

/// The first multiple of `every_ns` whose interval starts at or after `last_end`, if it is
/// before `next_end`.
fn first_end_after(last_end: i64, every_ns: i64, next_end: i64) -> Option<i64> {
    let every = i128::from(every_ns);
    let reach = i128::from(last_end) + every;
    let first = (reach + every - 1).div_euclid(every) * every;
    i64::try_from(first).ok().filter(|&first| first < next_end)
}

/// Measures every use case's KPIs over `[from_ns, to_ns)` and stores a row per KPI; with
/// `lineage`, each use case's measurement is a run of its job (decision 0080).
async fn record(
    store: &Store,
    registry: &Registry,
    meter: &StoreKpiMeter,
    node: &str,
    from_ns: i64,
    to_ns: i64,
    lineage: Option<&crate::openlineage::Emitter>,
) -> Result<(), String> {
    let use_cases = registry.use_cases().await.map_err(|e| e.to_string())?;
    let fleet = meter
        .fleet_devices()
        .await
        .map_err(|e| format!("the fleet's devices (`_devices`) could not be read: {e}"));
    let mut points = Vec::new();
    for use_case in &use_cases {
        // A use case whose devices cannot be read gets rows saying why; the others count.
        let devices = match &fleet {
            Ok(fleet) => registry
                .stage_devices_in(use_case, fleet)
                .await
                .map_err(|e| format!("the stage's devices could not be read: {e}")),
            Err(e) => Err(e.clone()),
        };
        for kpi in &use_case.definition.kpis {
            let measured = match &devices {
                Ok(devices) => {
                    meter
                        .measure(kpi.clone(), devices.clone(), from_ns, to_ns)
                        .await
                }
                Err(e) => KpiMeasure::failed(e.clone()),
            };
            let value = KpiValue::of(kpi, measured, None);
            points.push(kpi_point(node, use_case, &value, to_ns - 1));
        }
    }
    if points.is_empty() {
        return Ok(());
    }
    let written = store
        .write_computed(&points, "usecases", KPIS_TABLE)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    if let Some(emitter) = lineage {
        for use_case in &use_cases {
            report_measured(emitter, use_case, meter.hub, (from_ns, to_ns), &written);
        }
    }
    written?;
    metrics::counter!("fabrik_use_case_kpis_recorded_total").increment(points.len() as u64);
    Ok(())
}

/// A use case's measurement over `span` as a run of `usecase.<name>.kpis` (decision 0080): the
/// tables its KPIs read (the alerts for an alert precision, on a hub the `alert_labels` its
/// edges forward) into `use_case_kpis`, a row per KPI; a FAIL when the rows were not stored.
fn report_measured(
    emitter: &crate::openlineage::Emitter,
    use_case: &UseCase,
    hub: bool,
    span: (i64, i64),
    written: &Result<(), String>,
) {
    let kpis = &use_case.definition.kpis;
    if kpis.is_empty() {
        return;
    }
    let inputs = kpi_inputs(emitter, use_case, hub);
    report_batch(
        emitter,
        format!("usecase.{}.kpis", use_case.name),
        "KPI",
        span,
        &inputs,
        (KPIS_TABLE, kpis.len()),
        written,
    );
}

/// The tables `use_case`'s KPIs read, as datasets of this node: on a hub the `_devices` that
/// scope its devices, and the `alert_labels` its edges forward for an alert precision.
fn kpi_inputs(
    emitter: &crate::openlineage::Emitter,
    use_case: &UseCase,
    hub: bool,
) -> Vec<crate::openlineage::Dataset> {
    use crate::openlineage::Dataset;
    let mut inputs: Vec<Dataset> = Vec::new();
    if hub {
        inputs.push(Dataset::new(
            &emitter.datasets,
            fabrik_api::fleet::DEVICES_TABLE,
        ));
    }
    for kpi in &use_case.definition.kpis {
        let table = match (&kpi.kind, &kpi.table) {
            (fabrik_registry::usecases::KpiKind::AlertPrecision, _) if hub => {
                fabrik_api::alerts::ALERT_LABELS_TABLE
            }
            (fabrik_registry::usecases::KpiKind::AlertPrecision, _) => {
                crate::alerts::ALERTS_DATASET
            }
            (_, Some(table)) => table.as_str(),
            (_, None) => continue,
        };
        if !inputs.iter().any(|d| d.name == table) {
            inputs.push(Dataset::new(&emitter.datasets, table));
        }
    }
    inputs
}

/// A measurement over `span` as a run of the batch job `job`: START and its end queued
/// together, from `inputs` into `output` (`(table, rows written)`); a FAIL with the reason
/// when the rows were not stored.
fn report_batch(
    emitter: &crate::openlineage::Emitter,
    job: String,
    job_type: &'static str,
    span: (i64, i64),
    inputs: &[crate::openlineage::Dataset],
    output: (&str, usize),
    written: &Result<(), String>,
) {
    use crate::openlineage::{Dataset, EventType, JobRun, KEEP_FREE, now};
    // A catch-up after a restart measures many intervals back to back: beyond the room the
    // ends of other runs need, a measurement's run is not reported (and counted).
    if emitter.room() < KEEP_FREE + 2 {
        metrics::counter!("fabrik_openlineage_events_total", "transport" => "any", "outcome" => "skipped")
            .increment(2);
        return;
    }
    let (table, rows) = output;
    let mut output = Dataset::new(&emitter.datasets, table);
    output.rows_written = Some(if written.is_ok() { rows as u64 } else { 0 });
    let run = JobRun::batch(emitter, job, job_type, span);
    let at = now();
    let (end, error) = match written {
        Ok(()) => (EventType::Complete, None),
        Err(e) => (EventType::Fail, Some(e.as_str())),
    };
    emitter.emit_all(&[
        run.event(EventType::Start, &at, inputs, &[], None),
        run.event(end, &at, inputs, std::slice::from_ref(&output), error),
    ]);
}

/// An A/B split's comparison over `span` as a run of `pipeline.<name>.ab_kpis` (decision
/// 0082): from `shadow_inferences` (which model acted on which windows: the challenger's rows
/// carry the champion's verdicts too) and the tables of the KPIs compared (an alert
/// precision is not compared by arm), into `ab_kpis`, a row per KPI compared.
fn report_arms(
    emitter: &crate::openlineage::Emitter,
    split: &IntervalArmKpis,
    compared: usize,
    use_case: Option<&UseCase>,
    span: (i64, i64),
    written: &Result<(), String>,
) {
    use crate::openlineage::Dataset;
    let mut inputs = vec![Dataset::new(&emitter.datasets, crate::shadow::SHADOW_TABLE)];
    let compared_tables = use_case
        .into_iter()
        .flat_map(|use_case| &use_case.definition.kpis)
        .filter(|kpi| kpi.kind != fabrik_registry::usecases::KpiKind::AlertPrecision)
        .filter_map(|kpi| kpi.table.as_deref());
    for table in compared_tables {
        if !inputs.iter().any(|d| d.name == table) {
            inputs.push(Dataset::new(&emitter.datasets, table));
        }
    }
    report_batch(
        emitter,
        format!("pipeline.{}.ab_kpis", split.pipeline),
        "AB_TEST",
        span,
        &inputs,
        (AB_KPIS_TABLE, compared),
        written,
    );
}

/// Compares every A/B split's arms on its use case's KPIs over `[from_ns, to_ns)` and stores a
/// row per KPI (none for a split without windows in the interval).
async fn record_arms(
    store: &Store,
    pipelines: &dyn PipelineControl,
    node: &str,
    (from_ns, to_ns): (i64, i64),
    lineage: Option<(&crate::openlineage::Emitter, &Registry)>,
) -> Result<(), String> {
    let splits = pipelines
        .interval_arm_kpis(from_ns, to_ns)
        .await
        .map_err(|e| e.to_string())?;
    let mut points = Vec::new();
    for split in &splits {
        match &split.kpis {
            Ok(kpis) => points.extend(
                kpis.iter()
                    .map(|kpi| arm_kpi_point(node, split, kpi, to_ns - 1)),
            ),
            Err(e) => {
                tracing::warn!(pipeline = %split.pipeline, use_case = %split.use_case, error = %e, "An A/B split's arms could not be compared on its use case's KPIs.");
            }
        }
    }
    if points.is_empty() {
        return Ok(());
    }
    let written = store
        .write_computed(&points, KPIS_SOURCE, AB_KPIS_TABLE)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    if let Some((emitter, registry)) = lineage {
        // The KPIs' tables name the inputs; a registry that cannot say leaves the verdicts.
        let use_cases = registry.use_cases().await.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "The use cases could not be read for the A/B comparisons' lineage.");
            Vec::new()
        });
        for split in &splits {
            let Ok(kpis) = &split.kpis else { continue };
            if kpis.is_empty() {
                continue;
            }
            let use_case = use_cases.iter().find(|u| u.name == split.use_case);
            report_arms(
                emitter,
                split,
                kpis.len(),
                use_case,
                (from_ns, to_ns),
                &written,
            );
        }
    }
    written?;
    metrics::counter!("fabrik_ab_kpis_recorded_total").increment(points.len() as u64);
    Ok(())
}

/// One KPI of one A/B split over one interval: each arm's value and devices, their
/// difference and its p-value, the models and versions compared.
fn arm_kpi_point(node: &str, split: &IntervalArmKpis, kpi: &ArmKpi, time_ns: i64) -> Point {
    let text = |value: &str| Value::Str(value.to_owned());
    let mut fields = vec![
        ("unit".to_owned(), text(&kpi.unit)),
        (
            "better".to_owned(),
            text(match kpi.better {
                Better::Lower => "lower",
                Better::Higher => "higher",
            }),
        ),
        (
            "champion_devices".to_owned(),
            Value::I64(i64::try_from(kpi.champion_devices).unwrap_or(i64::MAX)),
        ),
        (
            "challenger_devices".to_owned(),
            Value::I64(i64::try_from(kpi.challenger_devices).unwrap_or(i64::MAX)),
        ),
        ("champion_model".to_owned(), text(&split.champion)),
        ("challenger_model".to_owned(), text(&split.challenger)),
        (
            "champion_version".to_owned(),
            text(split.champion_version.as_deref().unwrap_or_default()),
        ),
        (
            "challenger_version".to_owned(),
            text(split.challenger_version.as_deref().unwrap_or_default()),
        ),
        (
            "permutations".to_owned(),
            Value::I64(i64::try_from(kpi.comparison.permutations).unwrap_or(i64::MAX)),
        ),
        (
            "error".to_owned(),
            text(kpi.error.as_deref().unwrap_or_default()),
        ),
    ];
    let numbers = [
        ("champion", kpi.champion),
        ("challenger", kpi.challenger),
        ("difference", kpi.comparison.difference),
        ("p_value", kpi.comparison.p_value),
    ];
    for (name, value) in numbers {
        if let Some(value) = value.filter(|v| v.is_finite()) {
            fields.push((name.to_owned(), Value::F64(value)));
        }
    }
    if let Some(better) = kpi.challenger_better {
        fields.push(("challenger_better".to_owned(), Value::Bool(better)));
    }
    Point {
        measurement: AB_KPIS_TABLE.to_owned(),
        tags: vec![
            ("node".to_owned(), node.to_owned()),
            ("pipeline".to_owned(), split.pipeline.clone()),
            ("use_case".to_owned(), split.use_case.clone()),
            ("kpi".to_owned(), kpi.name.clone()),
        ],
        fields,
        time: Timestamp(time_ns),
        quality: Quality::Good,
    }
}

/// One KPI of one use case over one interval, as node `node` measured it (so a hub keeps
/// each edge's row and its own apart), stamped at the interval's last instant.
fn kpi_point(node: &str, use_case: &UseCase, kpi: &KpiValue, time_ns: i64) -> Point {
    let mut fields = vec![
        ("evidence".to_owned(), Value::F64(kpi.current.evidence)),
        ("unit".to_owned(), Value::Str(kpi.unit.clone())),
        ("detail".to_owned(), Value::Str(kpi.current.detail.clone())),
        (
            "error".to_owned(),
            Value::Str(kpi.current.error.clone().unwrap_or_default()),
        ),
    ];
    if let Some(value) = kpi.current.value.filter(|v| v.is_finite()) {
        fields.push(("value".to_owned(), Value::F64(value)));
    }
    if let Some(target) = kpi.target.filter(|t| t.is_finite()) {
        fields.push(("target".to_owned(), Value::F64(target)));
    }
    if let Some(met) = kpi.target_met {
        fields.push(("target_met".to_owned(), Value::Bool(met)));
    }
    Point {
        measurement: KPIS_TABLE.to_owned(),
        tags: vec![
            ("node".to_owned(), node.to_owned()),
            ("use_case".to_owned(), use_case.name.clone()),
            ("kpi".to_owned(), kpi.name.clone()),
            ("stage".to_owned(), use_case.stage.as_str().to_owned()),
        ],
        fields,
        time: Timestamp(time_ns),
        quality: Quality::Good,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_interval_missed_while_down_follows_the_last_measured() {
        // Measured up to 20 (rows at 19); the loop's next end is 60: from 30 on were missed.
        assert_eq!(first_end_after(20, 10, 60), Some(30));
        // Nothing missed.
        assert_eq!(first_end_after(50, 10, 60), None);
        // `record_every` grew from 10 to 25 after an interval ending at 40: the first missed
        // one starts at or after 40, so none overlaps what was measured.
        assert_eq!(first_end_after(40, 25, 150), Some(75));
        // No overflow near the end of time (an interval of centuries).
        let century = 100 * 365 * 86_400 * 1_000_000_000_i64;
        assert_eq!(first_end_after(i64::MAX - 10, century, i64::MAX), None);
    }

    #[test]
    fn each_interval_is_measured_once_after_it_settles() {
        let (every, settle) = (2_000, 200);
        // Just after an interval ended, within its settling time: that interval, soon.
        assert_eq!(
            next_interval(10_100, every, settle),
            (10_000, Duration::from_nanos(100))
        );
        // Once measured, the next one, after it too has settled.
        assert_eq!(
            next_interval(10_250, every, settle),
            (12_000, Duration::from_nanos(1_950))
        );
        // Exactly on a boundary: that interval, after its settling time.
        assert_eq!(
            next_interval(12_000, every, settle),
            (12_000, Duration::from_nanos(200))
        );
        // Far in the future does not overflow.
        let (end, _) = next_interval(i64::MAX - 5, every, settle);
        assert!(end >= i64::MAX - 5 - settle);
    }
}
