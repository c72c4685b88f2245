//! An A/B split's arms compared on the business KPIs of the pipeline's use case: each device's
//! downtime, energy cost or aggregate measured over the time each model acted on it, and the
//! arms' means tested over devices by permutation (decision 0057).
//!
//! Owns which spans are measured and the comparison; the KPIs' SQL is `usecases`', the test
//! `fabrik_ml::permutation`'s.

use datafusion::arrow::array::{Array, BooleanArray, Int64Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use fabrik_api::pipelines::{ArmDifference, ArmKpi, ShadowComparison};
use fabrik_api::usecases::KpiMeter;
use fabrik_ml::permutation::compare_means;
use fabrik_registry::usecases::{Better, Kpi, KpiKind};
use fabrik_store::Store;

use crate::columns::cast_column;
use crate::shadow::{ARMS_SEED, LIVE_COLUMN, SHADOW_TABLE, within_days};
use crate::sql_text::literal;

/// Device spans measured per KPI at most: each is one query, and an API reading must stay
/// quick. Past it the KPI is not compared by arm (its use case's own reading still measures
/// the fleet).
pub(crate) const MOST_SPANS: usize = 256;

/// The time one model acted on one device within the comparison: from its first window to its
/// last of the compared pair of versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArmSpan {
    pub(crate) device: String,
    /// The challenger's verdicts were the pipeline's (else the champion's).
    pub(crate) live: bool,
    pub(crate) from_ns: i64,
    pub(crate) to_ns: i64,
}

/// Each device's span in each arm over the comparison's period and versions; none before the
/// comparison has a pair of versions.
pub(crate) async fn arm_spans(
    store: &Store,
    comparison: &ShadowComparison,
) -> Result<Vec<ArmSpan>, String> {
    let (Some(challenger_version), Some(champion_version)) = (
        comparison.challenger_version.as_deref(),
        comparison.champion_version.as_deref(),
    ) else {
        return Ok(Vec::new());
    };
    if !store.has_table(SHADOW_TABLE) {
        return Ok(Vec::new());
    }
    let live = if store.has_column(SHADOW_TABLE, LIVE_COLUMN) {
        format!("s.{LIVE_COLUMN} IS TRUE")
    } else {
        "false".to_owned()
    };
    let sql = format!(
        "SELECT s.device, {live} AS live, CAST(min(s.time) AS BIGINT) AS first, \
         CAST(max(s.time) AS BIGINT) AS last FROM {SHADOW_TABLE} s \
         WHERE s.pipeline = {} AND s.model = {} AND s.champion_model = {} \
         AND s.model_version = {} AND s.champion_model_version = {} AND {} \
         GROUP BY s.device, {live} ORDER BY s.device, live",
        literal(&comparison.pipeline),
        literal(&comparison.challenger),
        literal(&comparison.champion),
        literal(challenger_version),
        literal(champion_version),
        within_days("s", comparison.days),
    );
    let output = store.query(&sql).await.map_err(|e| e.to_string())?;
    let mut spans = Vec::new();
    for batch in &output.batches {
        let device: StringArray = cast_column(batch, 0, &DataType::Utf8, "device")?;
        let live: BooleanArray = cast_column(batch, 1, &DataType::Boolean, "live")?;
        let first: Int64Array = cast_column(batch, 2, &DataType::Int64, "first")?;
        let last: Int64Array = cast_column(batch, 3, &DataType::Int64, "last")?;
        for row in 0..batch.num_rows() {
            if device.is_null(row) || first.is_null(row) || last.is_null(row) {
                continue;
            }
            spans.push(ArmSpan {
                device: device.value(row).to_owned(),
                live: !live.is_null(row) && live.value(row),
                from_ns: first.value(row),
                to_ns: last.value(row),
            });
        }
    }
    Ok(spans)
}

/// Each table KPI of `kpis` measured on every span, the arms' means compared. Alert precision
/// is left out: the arms' precision is already compared on the split's own labels.
pub(crate) async fn arm_kpis(meter: &dyn KpiMeter, kpis: &[Kpi], spans: &[ArmSpan]) -> Vec<ArmKpi> {
    let mut compared = Vec::new();
    for kpi in kpis.iter().filter(|k| k.kind != KpiKind::AlertPrecision) {
        let (mut challenger, mut champion) = (Vec::new(), Vec::new());
        let mut error = None;
        if spans.len() > MOST_SPANS {
            error = Some(format!(
                "{} device spans in the split, more than the {MOST_SPANS} measured per reading",
                spans.len()
            ));
        } else {
            for span in spans {
                // The span's last window counts: the period is half-open.
                let measured = meter
                    .measure(
                        kpi.clone(),
                        Some(vec![span.device.clone()]),
                        span.from_ns,
                        span.to_ns.saturating_add(1),
                    )
                    .await;
                if let Some(e) = measured.error {
                    error.get_or_insert_with(|| format!("{}: {e}", span.device));
                    continue;
                }
                if let Some(value) = measured.value {
                    if span.live {
                        challenger.push(value);
                    } else {
                        champion.push(value);
                    }
                }
            }
        }
        let test = compare_means(&champion, &challenger, ARMS_SEED);
        let better = kpi.better();
        compared.push(ArmKpi {
            name: kpi.name.clone(),
            unit: kpi.unit(),
            better,
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
                .map(|d| (d < 0.0) == (better == Better::Lower)),
            error,
        });
    }
    compared
}

#[cfg(test)]
mod tests {
    use fabrik_core::{Precision, SourceId};
    use fabrik_store::{Store, StoreOptions};

    use super::*;
    use crate::usecases::StoreKpiMeter;

    const MINUTE: i64 = 60_000_000_000;

    /// 30 one-minute windows of `device` from `start`: both models' verdicts, the challenger
    /// live on the windows `live` says; and the pump's own rows at the same times, `running`
    /// and `vibration` as `down(k)` says for window k.
    fn device_lines(
        device: &str,
        start: i64,
        live: impl Fn(usize) -> bool,
        down: impl Fn(usize) -> bool,
    ) -> String {
        let mut body = String::new();
        for k in 0..30 {
            let time = start + k as i64 * MINUTE;
            let live = if live(k) { ",live=true" } else { "" };
            let (running, vibration) = if down(k) { (false, 2.0) } else { (true, 1.0) };
            body.push_str(&format!(
                "shadow_inferences,pipeline=pump-health,device={device},model=iforest \
                 flag=false,score=0.1,window_id=\"{device}/{k}\",model_version=\"c1\"{live},\
                 champion_model=\"robust_z\",champion_model_version=\"v1\",champion_flag=false,\
                 champion_score=0.2 {time}\n\
                 pump,device={device} running={running},vibration={vibration} {time}\n"
            ));
        }
        body
    }

    fn kpi(json: serde_json::Value) -> Kpi {
        serde_json::from_value(json).expect("kpi")
    }

    #[tokio::test]
    async fn each_device_is_measured_where_each_model_acted_and_the_arms_compared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(StoreOptions::new(dir.path()))
            .await
            .expect("store");
        let start = fabrik_core::Timestamp::now().nanos() - 3 * 3600 * 1_000_000_000;
        // The champion acts on pumps a and b, which are down all along; the challenger on c
        // and d, which run. Pump e moved to the challenger half-way: down before, running
        // after, so it counts once in each arm.
        let mut lines = String::new();
        lines += &device_lines("pump-a", start, |_| false, |_| true);
        lines += &device_lines("pump-b", start, |_| false, |_| true);
        lines += &device_lines("pump-c", start, |_| true, |_| false);
        lines += &device_lines("pump-d", start, |_| true, |_| false);
        lines += &device_lines("pump-e", start, |k| k >= 15, |k| k < 15);
        store
            .write_lines(&lines, Precision::Ns, SourceId::http())
            .await
            .expect("write");
        let champion = crate::pipelines::demo_pipeline();
        let mut challenger = champion.clone();
        challenger.model = "iforest".into();
        let comparison = crate::shadow::compare(&store, &champion, &challenger, 7, 0.05)
            .await
            .expect("compare");
        assert!(comparison.arms.is_some(), "{comparison:?}");

        let spans = arm_spans(&store, &comparison).await.expect("spans");
        let of = |device: &str| -> Vec<(bool, i64, i64)> {
            spans
                .iter()
                .filter(|s| s.device == device)
                .map(|s| (s.live, s.from_ns, s.to_ns))
                .collect()
        };
        assert_eq!(spans.len(), 6, "{spans:?}");
        assert_eq!(
            of("pump-e"),
            [
                (false, start, start + 14 * MINUTE),
                (true, start + 15 * MINUTE, start + 29 * MINUTE)
            ]
        );

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
        let compared = arm_kpis(&meter, &kpis, &spans).await;
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
            (3, 3)
        );
        assert_eq!(downtime.comparison.difference, Some(-100.0));
        // Three units against three, completely apart: 2 of the 20 assignments.
        assert!(downtime.comparison.exact);
        assert_eq!(downtime.comparison.permutations, 20);
        assert!((downtime.comparison.p_value.expect("p") - 0.1).abs() < 1e-12);
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
        assert!(
            energy
                .error
                .as_deref()
                .is_some_and(|e| e.contains("meters")),
            "the missing table is named: {energy:?}"
        );
    }
}
