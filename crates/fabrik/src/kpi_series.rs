//! Use cases' KPIs kept as a series (`use_case_kpis`, decision 0037): shortly after every
//! multiple of `[usecases] record_every`, each use case's KPIs measured over the interval just
//! ended on its stage's devices, a row per KPI and node. Alert rules can then page on a
//! business KPI, a hub receives its edges' KPIs through their uplinks, and the trend outlives
//! the raw rows' retention.

use std::sync::Arc;
use std::time::Duration;

use fabrik_api::usecases::KpiMeter;
use fabrik_core::{Point, Quality, Timestamp, Value};
use fabrik_registry::Registry;
use fabrik_registry::usecases::{KpiMeasure, KpiValue, UseCase};
use fabrik_runtime::services::ServiceHandle;
use fabrik_store::Store;
use tokio_util::sync::CancellationToken;

use crate::usecases::StoreKpiMeter;

/// The table KPIs are recorded in.
pub(crate) const KPIS_TABLE: &str = "use_case_kpis";

/// The longest wait after an interval ends before it is measured, for rows still on their
/// way (a batching connector, an uplink); a tenth of the interval when that is shorter.
const LONGEST_SETTLING: Duration = Duration::from_secs(60);

/// Starts recording every `every` (none when zero) as node `node`.
pub(crate) fn start(
    every: Duration,
    node: String,
    store: Arc<Store>,
    registry: Registry,
    meter: StoreKpiMeter,
) -> ServiceHandle {
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
        loop {
            // The interval that ends at the next multiple of `every`: rows at aligned times,
            // whenever the process started, measured once it has settled. Intervals missed
            // while the process was down, or while a measurement ran long, are not measured
            // afterwards.
            let (end, wait) = next_interval(Timestamp::now().nanos(), every_ns, settle_ns);
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
            let recorded = tokio::select! {
                () = token.cancelled() => return Ok(()),
                recorded = record(&store, &registry, &meter, &node, end - every_ns, end) => recorded,
            };
            if let Err(e) = recorded {
                tracing::warn!(error = %e, "Use-case KPIs could not be recorded.");
            }
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

/// Measures every use case's KPIs over `[from_ns, to_ns)` and stores a row per KPI.
async fn record(
    store: &Store,
    registry: &Registry,
    meter: &StoreKpiMeter,
    node: &str,
    from_ns: i64,
    to_ns: i64,
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
    store
        .write_computed(&points, "usecases", KPIS_TABLE)
        .await
        .map_err(|e| e.to_string())?;
    metrics::counter!("fabrik_use_case_kpis_recorded_total").increment(points.len() as u64);
    Ok(())
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
