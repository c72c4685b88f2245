//! An A/B split's arms compared on the business KPIs of the pipeline's use case: each device's
//! downtime, energy cost or aggregate measured over the runs of windows each model acted on,
//! and the arms' pooled values tested over devices by permutation (decision 0057).
//!
//! Owns which time is measured for which arm and how runs combine; the KPIs' SQL is
//! `usecases`', the test `fabrik_ml::permutation`'s. The same comparison over each interval
//! of the use-case KPI series is what `kpi_series` records as `ab_kpis` rows (decision 0072).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use fabrik_api::pipelines::{ArmDifference, ArmKpi, IntervalArmKpis, ShadowComparison};
use fabrik_api::usecases::KpiMeter;
use fabrik_ml::permutation::{Weighted, compare_means};
use fabrik_registry::usecases::{Better, Kpi, KpiKind};
use fabrik_registry::{Registry, RegistryError};
use fabrik_runtime::config::PipelineConfig;
use fabrik_store::Store;

use crate::columns::cast_column;
use crate::shadow::{ARMS_SEED, LIVE_COLUMN, SHADOW_TABLE, within_days};
use crate::sql_text::literal;
use crate::usecases::StoreKpiMeter;

/// The longest window an interval of the KPI series looks for beyond its end: a week (a
/// window longer than that counts only where it ends within a week of the interval).
const LONGEST_WINDOW_NS: i64 = 7 * 24 * 3600 * 1_000_000_000;

/// Runs measured per KPI at most: each is one query, and a reading must stay quick. Past it
/// the KPI is not compared by arm (the use case's own reading still measures the fleet).
pub(crate) const MOST_RUNS: usize = 256;

/// A stretch of windows one model acted on, on one device: from the first window's start to
/// the last one's end (or the next run's start, where sliding windows overlap). A new run
/// starts where the acting model changes, or where the challenger trained afresh (a restart,
/// a redefinition: its training span changed), since the champion stood in meanwhile
/// without `shadow_inferences` rows. Gaps in the data (a pump stopped, a `filter`) do not
/// split a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArmRun {
    pub(crate) device: String,
    /// The challenger's verdicts were the pipeline's (else the champion's).
    pub(crate) live: bool,
    pub(crate) from_ns: i64,
    /// Exclusive.
    pub(crate) to_ns: i64,
}

/// The two models compared, by their tags and versions as `shadow_inferences` names them.
struct Pair<'a> {
    pipeline: &'a str,
    challenger: &'a str,
    champion: &'a str,
    challenger_version: &'a str,
    champion_version: &'a str,
}

/// The runs of each device in each arm over the comparison's period and versions; none before
/// the comparison has a pair of versions.
pub(crate) async fn arm_runs(
    store: &Store,
    comparison: &ShadowComparison,
) -> Result<Vec<ArmRun>, String> {
    let (Some(challenger_version), Some(champion_version)) = (
        comparison.challenger_version.as_deref(),
        comparison.champion_version.as_deref(),
    ) else {
        return Ok(Vec::new());
    };
    let pair = Pair {
        pipeline: &comparison.pipeline,
        challenger: &comparison.challenger,
        champion: &comparison.champion,
        challenger_version,
        champion_version,
    };
    runs_where(store, &pair, &within_days("s", comparison.days)).await
}

/// The runs of `pair`'s windows (alias `s`) that `period` admits.
async fn runs_where(store: &Store, pair: &Pair<'_>, period: &str) -> Result<Vec<ArmRun>, String> {
    if !store.has_table(SHADOW_TABLE) {
        return Ok(Vec::new());
    }
    // 1 where the challenger acted, else 0: an integer from a CASE, as a boolean `IS TRUE`
    // fed to the window functions below trips DataFusion's nullability check.
    let live = if store.has_column(SHADOW_TABLE, LIVE_COLUMN) {
        format!("CASE WHEN s.{LIVE_COLUMN} THEN 1 ELSE 0 END")
    } else {
        "0".to_owned()
    };
    // The challenger's training span on the device: a new one means it trained afresh (a
    // restart, a redefinition), and the champion stood in meanwhile.
    let trained = if store.has_column(SHADOW_TABLE, "trained_until") {
        "CAST(s.trained_from AS BIGINT) AS tf, CAST(s.trained_until AS BIGINT) AS tu"
    } else {
        "CAST(0 AS BIGINT) AS tf, CAST(0 AS BIGINT) AS tu"
    };
    let order = "OVER (PARTITION BY device ORDER BY ws, we)";
    let sql = format!(
        "WITH w AS (SELECT s.device AS device, {live} AS live, s.window_start AS ws, \
           s.window_end AS we, {trained} FROM {SHADOW_TABLE} s \
           WHERE s.pipeline = {} AND s.model = {} AND s.champion_model = {} \
           AND s.model_version = {} AND s.champion_model_version = {} AND {}), \
         marked AS (SELECT device, live, ws, we, \
           CASE WHEN lag(live) {order} IS NULL OR lag(live) {order} <> live \
             OR lag(tf) {order} <> tf OR lag(tu) {order} <> tu THEN 1 ELSE 0 END \
             AS starts FROM w), \
         numbered AS (SELECT device, live, ws, we, sum(starts) OVER (PARTITION BY device \
           ORDER BY ws, we ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS run \
           FROM marked) \
         SELECT device, CAST(max(live) AS BIGINT) AS live, CAST(min(ws) AS BIGINT) AS first, \
           CAST(max(we) AS BIGINT) AS last FROM numbered GROUP BY device, run \
           ORDER BY device, first",
        literal(pair.pipeline),
        literal(pair.challenger),
        literal(pair.champion),
        literal(pair.challenger_version),
        literal(pair.champion_version),
        period,
    );
    let output = store.query(&sql).await.map_err(|e| e.to_string())?;
    let mut runs = Vec::new();
    for batch in &output.batches {
        let device: StringArray = cast_column(batch, 0, &DataType::Utf8, "device")?;
        let live: Int64Array = cast_column(batch, 1, &DataType::Int64, "live")?;
        let first: Int64Array = cast_column(batch, 2, &DataType::Int64, "first")?;
        let last: Int64Array = cast_column(batch, 3, &DataType::Int64, "last")?;
        for row in 0..batch.num_rows() {
            if device.is_null(row) || first.is_null(row) || last.is_null(row) {
                continue;
            }
            runs.push(ArmRun {
                device: device.value(row).to_owned(),
                live: !live.is_null(row) && live.value(row) == 1,
                from_ns: first.value(row),
                to_ns: last.value(row),
            });
        }
    }
    // Sliding windows overlap: the last window of one run and the first of the next share
    // time, which belongs to the run that follows, not to both.
    for i in 1..runs.len() {
        if runs[i].device == runs[i - 1].device {
            let next_start = runs[i].from_ns;
            let previous = &mut runs[i - 1];
            previous.to_ns = previous.to_ns.min(next_start).max(previous.from_ns);
        }
    }
    Ok(runs)
}

/// The KPIs of use case `name` compared between the arms of `comparison`. They are an
/// addition to the comparison: what keeps them from being compared is the `Err` said beside
/// it, never a failure of the rest. A use case not defined (yet) has none.
pub(crate) async fn use_case_kpis(
    store: &Arc<Store>,
    registry: &Registry,
    name: &str,
    comparison: &ShadowComparison,
) -> Result<Vec<ArmKpi>, String> {
    let use_case = match registry.use_case(name).await {
        Err(RegistryError::UseCaseNotFound(_)) => return Ok(Vec::new()),
        Err(e) => return Err(format!("use case `{name}`: {e}")),
        Ok(use_case) => use_case,
    };
    let runs = arm_runs(store, comparison)
        .await
        .map_err(|e| format!("the arms' runs of windows: {e}"))?;
    // Table KPIs only: no alerts database, and no fleet scopes are needed to measure named
    // devices.
    let meter = StoreKpiMeter {
        store: store.clone(),
        alerting: None,
        hub: false,
    };
    Ok(arm_kpis(store, &meter, &use_case.definition.kpis, &runs).await)
}

/// The A/B split of `champion` (whose `use_case` is `use_case`) and its shadow `challenger`,
/// compared on the use case's KPIs over `[from_ns, to_ns)` only: the runs of the latest pair
/// of versions with windows in the interval, cut to it. A use case not defined (yet), or no
/// windows in the interval, gives no KPIs; what keeps them from being compared is `kpis`'
/// `Err`.
pub(crate) async fn interval_kpis(
    store: &Arc<Store>,
    registry: &Registry,
    use_case: &str,
    (champion, challenger): (&PipelineConfig, &PipelineConfig),
    from_ns: i64,
    to_ns: i64,
) -> IntervalArmKpis {
    let mut compared = IntervalArmKpis {
        pipeline: champion.name.clone(),
        use_case: use_case.to_owned(),
        champion: crate::pipelines::model_tag(champion),
        challenger: crate::pipelines::model_tag(challenger),
        champion_version: None,
        challenger_version: None,
        kpis: Ok(Vec::new()),
    };
    let definition = match registry.use_case(use_case).await {
        Err(RegistryError::UseCaseNotFound(_)) => return compared,
        Err(e) => {
            compared.kpis = Err(format!("use case `{use_case}`: {e}"));
            return compared;
        }
        Ok(found) => found.definition,
    };
    if !store.has_table(SHADOW_TABLE) {
        return compared;
    }
    // A window belongs to the interval where it overlaps it; rows are dated at their
    // window's last instant, so none dated before the interval does, and none longer than
    // [`LONGEST_WINDOW_NS`] is looked for after it (the store prunes by time only).
    let period = format!(
        "s.time >= to_timestamp_nanos({from_ns}) AND s.time < to_timestamp_nanos({}) AND \
         s.window_start < {to_ns}",
        to_ns.saturating_add(LONGEST_WINDOW_NS)
    );
    // The versions of the latest window that ended within the interval (one that ends
    // after it may be a redefinition's first), else of any overlapping it.
    let latest = format!(
        "SELECT s.model_version AS challenger_version, s.champion_model_version AS \
         champion_version FROM {SHADOW_TABLE} s WHERE s.pipeline = {} AND s.model = {} AND \
         s.champion_model = {} AND s.champion_model_version IS NOT NULL AND {period} \
         ORDER BY CASE WHEN s.time < to_timestamp_nanos({to_ns}) THEN 0 ELSE 1 END, \
         s.time DESC LIMIT 1",
        literal(&compared.pipeline),
        literal(&compared.challenger),
        literal(&compared.champion),
    );
    let versions = match crate::shadow::latest_versions(store, &latest).await {
        Ok(versions) => versions,
        Err(e) => {
            compared.kpis = Ok(not_compared(
                &definition.kpis,
                &format!("the split's model versions: {e}"),
            ));
            return compared;
        }
    };
    let Some((challenger_version, champion_version)) = versions else {
        return compared;
    };
    compared.challenger_version = Some(challenger_version.clone());
    compared.champion_version = Some(champion_version.clone());
    let pair = Pair {
        pipeline: &compared.pipeline,
        challenger: &compared.challenger,
        champion: &compared.champion,
        challenger_version: &challenger_version,
        champion_version: &champion_version,
    };
    let runs = match runs_where(store, &pair, &period).await {
        Ok(runs) => runs,
        Err(e) => {
            compared.kpis = Ok(not_compared(
                &definition.kpis,
                &format!("the arms' runs of windows: {e}"),
            ));
            return compared;
        }
    };
    let runs: Vec<ArmRun> = runs
        .into_iter()
        .filter_map(|run| {
            let (from, to) = (run.from_ns.max(from_ns), run.to_ns.min(to_ns));
            (from < to).then_some(ArmRun {
                from_ns: from,
                to_ns: to,
                ..run
            })
        })
        .collect();
    let meter = StoreKpiMeter {
        store: store.clone(),
        alerting: None,
        hub: false,
    };
    compared.kpis = Ok(arm_kpis(store, &meter, &definition.kpis, &runs).await);
    compared
}

/// The table KPIs of `kpis`, each saying `why` it was not compared: a row per KPI that
/// says so, as for a KPI that could not be measured.
fn not_compared(kpis: &[Kpi], why: &str) -> Vec<ArmKpi> {
    kpis.iter()
        .filter(|k| k.kind != KpiKind::AlertPrecision)
        .map(|kpi| ArmKpi {
            name: kpi.name.clone(),
            unit: kpi.unit(),
            better: kpi.better(),
            challenger: None,
            challenger_devices: 0,
            champion: None,
            champion_devices: 0,
            comparison: ArmDifference {
                difference: None,
                p_value: None,
                permutations: 0,
                exact: false,
            },
            challenger_better: None,
            error: Some(why.to_owned()),
        })
        .collect()
}

/// How a KPI's values over several runs of one device combine, and how the devices of an arm
/// pool: shares and rates (downtime, energy cost, a mean, a percentile) by the evidence each
/// rests on — observed device-hours, rows — so an arm's value is its pooled one; extremes
/// and totals as such, each device weighing one.
fn combine(kpi: &Kpi, runs: &[(f64, f64)]) -> Option<Weighted> {
    let evidence: f64 = runs.iter().map(|&(_, e)| e).sum();
    let aggregate = kpi.aggregate.as_deref().unwrap_or_default();
    let value = match (kpi.kind, aggregate) {
        (KpiKind::Aggregate, "min") => runs.iter().map(|&(v, _)| v).reduce(f64::min)?,
        (KpiKind::Aggregate, "max") => runs.iter().map(|&(v, _)| v).reduce(f64::max)?,
        (KpiKind::Aggregate, "sum" | "count") => runs.iter().map(|&(v, _)| v).sum(),
        // Percentiles of several runs are approximated by their evidence-weighted mean.
        _ if evidence > 0.0 => runs.iter().map(|&(v, e)| v * e).sum::<f64>() / evidence,
        _ => return None,
    };
    let pooled = matches!(kpi.kind, KpiKind::Downtime | KpiKind::EnergyCost)
        || (kpi.kind == KpiKind::Aggregate
            && !matches!(aggregate, "min" | "max" | "sum" | "count"));
    Some(Weighted {
        value,
        weight: if pooled { evidence } else { 1.0 },
    })
}

/// Each table KPI of `kpis` measured on every run, combined per device and arm, the arms
/// compared. Alert precision is left out: the arms' precision is compared on the split's own
/// labels.
pub(crate) async fn arm_kpis(
    store: &Store,
    meter: &dyn KpiMeter,
    kpis: &[Kpi],
    runs: &[ArmRun],
) -> Vec<ArmKpi> {
    let mut compared = Vec::new();
    for kpi in kpis.iter().filter(|k| k.kind != KpiKind::AlertPrecision) {
        // Per (device, live): each run's (value, evidence).
        let mut measured: BTreeMap<(&str, bool), Vec<(f64, f64)>> = BTreeMap::new();
        let table = kpi.table.as_deref().unwrap_or_default();
        let mut error = if !store.has_table(table) {
            Some(format!("no table `{table}` yet"))
        } else if runs.len() > MOST_RUNS {
            Some(format!(
                "{} runs of windows in the split, more than the {MOST_RUNS} measured per reading",
                runs.len()
            ))
        } else {
            None
        };
        if error.is_none() {
            for run in runs {
                let measure = meter
                    .measure(
                        kpi.clone(),
                        Some(vec![run.device.clone()]),
                        run.from_ns,
                        run.to_ns,
                    )
                    .await;
                if let Some(e) = measure.error {
                    error.get_or_insert_with(|| format!("{}: {e}", run.device));
                    continue;
                }
                if let Some(value) = measure.value {
                    measured
                        .entry((run.device.as_str(), run.live))
                        .or_default()
                        .push((value, measure.evidence));
                }
            }
        }
        let (mut challenger, mut champion) = (Vec::new(), Vec::new());
        for (&(_, live), values) in &measured {
            if let Some(unit) = combine(kpi, values) {
                if live {
                    challenger.push(unit);
                } else {
                    champion.push(unit);
                }
            }
        }
        let test = compare_means(&champion, &challenger, ARMS_SEED);
        compared.push(ArmKpi {
            name: kpi.name.clone(),
            unit: kpi.unit(),
            better: kpi.better(),
            challenger: test.mean_b,
            challenger_devices: challenger.len() as u64,
            champion: test.mean_a,
            champion_devices: champion.len() as u64,
            comparison: ArmDifference {
                difference: test.difference,
                p_value: test.p_value,
                permutations: test.permutations,
                exact: test.exact,
            },
            challenger_better: test
                .difference
                .filter(|d| *d != 0.0)
                .map(|d| (d < 0.0) == (kpi.better() == Better::Lower)),
            error,
        });
    }
    compared
}

#[cfg(test)]
mod tests {

    use super::*;

    const MINUTE: i64 = 60_000_000_000;

    /// 30 one-minute windows of `device` from `start`, as the pipeline writes them (dated at
    /// the window's last instant): both models' verdicts where `scored(k)`, the challenger
    /// live where `live(k)`; and the pump's own rows each minute, `running` and `vibration`
    /// as `down(k)` says.
    fn device_lines(
        device: &str,
        start: i64,
        scored: impl Fn(usize) -> bool,
        live: impl Fn(usize) -> bool,
        down: impl Fn(usize) -> bool,
    ) -> String {
        device_lines_trained(device, start, scored, live, down, |_| 1, 1)
    }

    /// [`device_lines`], the challenger's training span numbered by `trained(k)`, windows
    /// `window_minutes` long (sliding, a minute apart, when longer than one).
    fn device_lines_trained(
        device: &str,
        start: i64,
        scored: impl Fn(usize) -> bool,
        live: impl Fn(usize) -> bool,
        down: impl Fn(usize) -> bool,
        trained: impl Fn(usize) -> i64,
        window_minutes: i64,
    ) -> String {
        let mut body = String::new();
        for k in 0..30 {
            let window_start = start + k as i64 * MINUTE;
            let window_end = window_start + window_minutes * MINUTE;
            let (running, vibration) = if down(k) { (false, 2.0) } else { (true, 1.0) };
            body.push_str(&format!(
                "pump,device={device} running={running},vibration={vibration} {window_start}\n"
            ));
            if !scored(k) {
                continue;
            }
            let live = if live(k) { ",live=true" } else { "" };
            body.push_str(&format!(
                "shadow_inferences,pipeline=pump-health,device={device},model=iforest \
                 flag=false,score=0.1,window_id=\"{device}/{k}\",model_version=\"c1\"{live},\
                 window_start={window_start}i,window_end={window_end}i,trained_from={}i,trained_until={}i,\
                 champion_model=\"robust_z\",champion_model_version=\"v1\",champion_flag=false,\
                 champion_score=0.2 {}\n",
                trained(k) * MINUTE,
                (trained(k) + 5) * MINUTE,
                window_end - 1
            ));
        }
        body
    }

    fn kpi(json: serde_json::Value) -> Kpi {
        serde_json::from_value(json).expect("kpi")
    }

    #[tokio::test]
    async fn each_device_is_measured_where_each_model_acted_and_the_arms_compared() {
        let start = fabrik_core::Timestamp::now().nanos() - 3 * 3600 * 1_000_000_000;
        let always = |_: usize| true;
        let never = |_: usize| false;
        // The champion acts on pumps a and b, which are down all along; the challenger on c
        // and d, which run. Pump e moved to the challenger half-way: down before, running
        // after, so it counts once in each arm. Pump f is the challenger's, but a restart
        // left windows 10 to 19 to the champion while the challenger learnt again (no
        // shadow rows, a new training span after): f was down then, which is not the
        // challenger's time. Pump g is the challenger's and stopped sending for windows 10
        // to 19 (its data has a gap, its model did not change): one run.
        let mut lines = String::new();
        lines += &device_lines("pump-a", start, always, never, always);
        lines += &device_lines("pump-b", start, always, never, always);
        lines += &device_lines("pump-c", start, always, always, never);
        lines += &device_lines("pump-d", start, always, always, never);
        lines += &device_lines("pump-e", start, always, |k| k >= 15, |k| k < 15);
        let restart = |k: usize| (10..20).contains(&k);
        lines += &device_lines_trained(
            "pump-f",
            start,
            |k| !restart(k),
            always,
            restart,
            |k| if k < 10 { 1 } else { 2 },
            1,
        );
        // Pump h's windows slide (two minutes long, a minute apart) and it moved to the
        // challenger at window 15: the minute both windows cover is the challenger's.
        lines += &device_lines_trained("pump-h", start, always, |k| k >= 15, |k| k < 15, |_| 1, 2);
        lines += &device_lines("pump-g", start, |k| !restart(k), always, never);
        let (_dir, store) = crate::test_store::store_with(&lines).await;
        let champion = crate::pipelines::demo_pipeline();
        let mut challenger = champion.clone();
        challenger.model = "iforest".into();
        let comparison = crate::shadow::compare(&store, &champion, &challenger, 7, 0.05)
            .await
            .expect("compare");
        assert!(comparison.arms.is_some(), "{comparison:?}");

        let runs = arm_runs(&store, &comparison).await.expect("runs");
        let of = |device: &str| -> Vec<(bool, i64, i64)> {
            runs.iter()
                .filter(|r| r.device == device)
                .map(|r| (r.live, r.from_ns, r.to_ns))
                .collect()
        };
        assert_eq!(of("pump-a"), [(false, start, start + 30 * MINUTE)]);
        assert_eq!(
            of("pump-e"),
            [
                (false, start, start + 15 * MINUTE),
                (true, start + 15 * MINUTE, start + 30 * MINUTE)
            ]
        );
        assert_eq!(
            of("pump-f"),
            [
                (true, start, start + 10 * MINUTE),
                (true, start + 20 * MINUTE, start + 30 * MINUTE)
            ],
            "the restart's gap is no one's run"
        );
        assert_eq!(of("pump-g"), [(true, start, start + 30 * MINUTE)]);
        assert_eq!(
            of("pump-h"),
            [
                (false, start, start + 15 * MINUTE),
                (true, start + 15 * MINUTE, start + 31 * MINUTE)
            ]
        );
        assert_eq!(runs.len(), 11, "{runs:?}");

        let kpis = [
            kpi(
                serde_json::json!({"name": "downtime", "kind": "downtime", "table": "pump",
                                   "condition": "NOT running"}),
            ),
            kpi(
                serde_json::json!({"name": "vibration", "kind": "aggregate", "table": "pump",
                                   "signal": "vibration", "aggregate": "mean", "unit": "mm/s"}),
            ),
            kpi(
                serde_json::json!({"name": "precision", "kind": "alert_precision",
                                   "rules": ["pump-anomaly"]}),
            ),
            kpi(
                serde_json::json!({"name": "energy", "kind": "energy_cost", "table": "meters",
                                   "signal": "kw", "price_per_kwh": 0.2}),
            ),
        ];
        let meter = StoreKpiMeter {
            store: store.clone(),
            alerting: None,
            hub: false,
        };
        let compared = arm_kpis(&store, &meter, &kpis, &runs).await;
        let names: Vec<&str> = compared.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(
            names,
            ["downtime", "vibration", "energy"],
            "precision is the arms' own"
        );

        let downtime = &compared[0];
        assert_eq!(
            (downtime.champion, downtime.challenger),
            (Some(100.0), Some(0.0)),
            "{downtime:?}"
        );
        assert_eq!(
            (downtime.champion_devices, downtime.challenger_devices),
            (4, 6)
        );
        assert_eq!(downtime.comparison.difference, Some(-100.0));
        // Four units against six, completely apart: 1 of the 210 assignments.
        assert!(downtime.comparison.exact);
        assert_eq!(downtime.comparison.permutations, 210);
        assert!((downtime.comparison.p_value.expect("p") - 1.0 / 210.0).abs() < 1e-12);
        assert_eq!(downtime.challenger_better, Some(true), "lower downtime");
        assert_eq!(downtime.unit, "%");

        let vibration = &compared[1];
        assert_eq!(
            (vibration.champion, vibration.challenger),
            (Some(2.0), Some(1.0))
        );
        assert_eq!(vibration.unit, "mm/s");
        assert_eq!(vibration.challenger_better, Some(true));

        let energy = &compared[2];
        assert_eq!((energy.champion, energy.challenger), (None, None));
        assert_eq!(energy.comparison.p_value, None);
        assert_eq!(energy.error.as_deref(), Some("no table `meters` yet"));
    }

    /// An interval of the KPI series measures each model only where it acted within the
    /// interval: runs that began before it or end after it are cut to it.
    #[tokio::test]
    async fn an_interval_compares_only_the_time_each_model_acted_within_it() {
        let start = fabrik_core::Timestamp::now().nanos() - 3 * 3600 * 1_000_000_000;
        let always = |_: usize| true;
        let never = |_: usize| false;
        // The champion acts on pump-a, down for its first 12 minutes; the challenger on
        // pump-c, running all along; pump-e moved to the challenger at minute 15, down
        // before.
        let mut lines = String::new();
        lines += &device_lines("pump-a", start, always, never, |k| k < 12);
        lines += &device_lines("pump-c", start, always, always, never);
        lines += &device_lines("pump-e", start, always, |k| k >= 15, |k| k < 15);
        let (dir, store) = crate::test_store::store_with(&lines).await;
        let registry = Registry::open(&dir.path().join("registry.db"))
            .await
            .expect("registry");
        let champion = crate::pipelines::demo_pipeline();
        let mut challenger = champion.clone();
        challenger.model = "iforest".into();
        let pair = (&champion, &challenger);
        // Bounds half way through windows: the runs are cut, not just filtered.
        let (from, to) = (
            start + 10 * MINUTE + MINUTE / 2,
            start + 20 * MINUTE + MINUTE / 2,
        );

        // The use case not defined yet: nothing to compare.
        let undefined = interval_kpis(&store, &registry, "pumps", pair, from, to).await;
        assert_eq!(undefined.kpis, Ok(Vec::new()));
        let definition = serde_json::from_value(serde_json::json!({
            "name": "pumps", "objective": "fewer stops", "pilot": {"devices": ["pump-a"]},
            "kpis": [{"name": "downtime", "kind": "downtime", "table": "pump",
                      "condition": "NOT running"}]
        }))
        .expect("definition");
        registry.put_use_case(definition).await.expect("use case");

        let compared = interval_kpis(&store, &registry, "pumps", pair, from, to).await;
        assert_eq!(
            (
                compared.challenger_version.as_deref(),
                compared.champion_version.as_deref()
            ),
            (Some("c1"), Some("v1"))
        );
        let kpis = compared.kpis.expect("kpis");
        let downtime = &kpis[0];
        assert_eq!(
            (downtime.champion_devices, downtime.challenger_devices),
            (2, 2),
            "{downtime:?}"
        );
        // Observed time runs from one row to the next within a run. pump-a, cut to
        // [10.5, 20.5): rows at minutes 11 to 20, 1 of the 9 minutes between them down;
        // pump-e, the champion's run cut to [10.5, 15): rows at 11 to 14, all 3 minutes
        // down. Pooled by observed time: 4 of 12 minutes. (Uncut, the runs would give 26 of
        // 43.)
        let champion_down = downtime.champion.expect("champion");
        assert!(
            (champion_down - 100.0 * 4.0 / 12.0).abs() < 1e-9,
            "{downtime:?}"
        );
        assert_eq!(downtime.challenger, Some(0.0), "{downtime:?}");
        assert_eq!(downtime.error, None);

        // An interval without windows compares nothing.
        let later = start + 3 * 3600 * 1_000_000_000;
        let empty =
            interval_kpis(&store, &registry, "pumps", pair, later, later + 10 * MINUTE).await;
        assert_eq!(empty.kpis, Ok(Vec::new()));
        assert_eq!(empty.champion_version, None);
    }

    #[test]
    fn runs_combine_by_evidence_for_shares_and_as_such_for_extremes_and_totals() {
        let aggregate = |name: &str| {
            kpi(
                serde_json::json!({"name": "k", "kind": "aggregate", "table": "t",
                                   "signal": "v", "aggregate": name}),
            )
        };
        let downtime = kpi(
            serde_json::json!({"name": "d", "kind": "downtime", "table": "t",
                                               "condition": "NOT running"}),
        );
        // 10 % down over 9 h, 100 % over 1 h: 19 % over 10 h.
        let runs = [(10.0, 9.0), (100.0, 1.0)];
        let pooled = combine(&downtime, &runs).expect("unit");
        assert!((pooled.value - 19.0).abs() < 1e-12 && pooled.weight == 10.0);
        assert_eq!(
            combine(&aggregate("max"), &runs),
            Some(Weighted {
                value: 100.0,
                weight: 1.0
            })
        );
        assert_eq!(
            combine(&aggregate("count"), &runs).map(|u| u.value),
            Some(110.0)
        );
        assert_eq!(
            combine(&aggregate("mean"), &runs).map(|u| u.weight),
            Some(10.0)
        );
        assert_eq!(combine(&downtime, &[(5.0, 0.0)]), None, "nothing observed");
    }
}
