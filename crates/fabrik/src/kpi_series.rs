//! Use cases' KPIs kept as a series (`use_case_kpis`, decision 0037): at every multiple of
//! `[usecases] record_every`, each use case's KPIs measured over the interval just ended on
//! its stage's devices, a row per KPI. Alert rules can then page on a business KPI, a hub
//! receives its edges' KPIs through their uplinks, and the trend outlives the raw rows'
//! retention.

use std::sync::Arc;
use std::time::Duration;

use fabrik_api::usecases::KpiMeter;
use fabrik_core::{Lineage, Point, Quality, SourceId, Timestamp, Value};
use fabrik_registry::Registry;
use fabrik_registry::usecases::{KpiValue, UseCase};
use fabrik_runtime::services::ServiceHandle;
use fabrik_store::Store;
use tokio_util::sync::CancellationToken;

use crate::usecases::StoreKpiMeter;

/// The table KPIs are recorded in.
pub(crate) const KPIS_TABLE: &str = "use_case_kpis";

/// Starts recording every `every` (none when zero).
pub(crate) fn start(
    every: Duration,
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
        loop {
            // The next multiple of the interval: rows at aligned times, whenever the process
            // started. Intervals missed while it was down are not measured afterwards.
            let now = Timestamp::now().nanos();
            let end = (now / every_ns + 1) * every_ns;
            let wait = Duration::from_nanos(u64::try_from(end - now).unwrap_or(0));
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
            if let Err(e) = record(&store, &registry, &meter, end - every_ns, end).await {
                tracing::warn!(error = %e, "Use-case KPIs could not be recorded.");
            }
        }
    });
    ServiceHandle { stop, task }
}

/// Measures every use case's KPIs over `[from_ns, to_ns)` and stores a row per KPI.
async fn record(
    store: &Store,
    registry: &Registry,
    meter: &StoreKpiMeter,
    from_ns: i64,
    to_ns: i64,
) -> Result<(), String> {
    let use_cases = registry.use_cases().await.map_err(|e| e.to_string())?;
    let fleet = meter.fleet_devices().await;
    let mut points = Vec::new();
    for use_case in &use_cases {
        let devices = registry
            .stage_devices_in(use_case, &fleet)
            .await
            .map_err(|e| e.to_string())?;
        for kpi in &use_case.definition.kpis {
            let measured = meter
                .measure(kpi.clone(), devices.clone(), from_ns, to_ns)
                .await;
            let value = KpiValue::of(kpi, measured, None);
            points.push(kpi_point(use_case, &value, to_ns - 1));
        }
    }
    if points.is_empty() {
        return Ok(());
    }
    let lineage = Lineage {
        source: SourceId("usecases".into()),
        raw_id: store.next_raw_id(),
        mapping_version: 0,
    };
    store
        .write_points(&points, lineage, KPIS_TABLE)
        .await
        .map_err(|e| e.to_string())?;
    metrics::counter!("fabrik_use_case_kpis_recorded_total").increment(points.len() as u64);
    Ok(())
}

/// One KPI of one use case over one interval, stamped at the interval's last instant.
fn kpi_point(use_case: &UseCase, kpi: &KpiValue, time_ns: i64) -> Point {
    let mut fields = vec![
        ("evidence".to_owned(), Value::F64(kpi.current.evidence)),
        ("unit".to_owned(), Value::Str(kpi.unit.clone())),
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
            ("use_case".to_owned(), use_case.name.clone()),
            ("kpi".to_owned(), kpi.name.clone()),
            ("stage".to_owned(), use_case.stage.as_str().to_owned()),
        ],
        fields,
        time: Timestamp(time_ns),
        quality: Quality::Good,
    }
}
