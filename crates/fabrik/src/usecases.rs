//! Measuring a use case's KPIs: each kind as one SQL query over the store (time-weighted for
//! downtime and energy, so a device that reports twice as often does not count twice), or,
//! for alert precision, from the operators' feedback on alerts.
//!
//! Owns the SQL each KPI becomes and the check of the SQL fragments a definition carries; the
//! definitions, stages and gates are the registry's (`fabrik_registry::usecases`).

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use fabrik_alert::db::AlertQuery;
use fabrik_alert::{Alerting, Feedback};
use fabrik_api::usecases::KpiMeter;
use fabrik_registry::usecases::{Kpi, KpiKind, KpiMeasure, UseCaseDefinition, parse_time};
use fabrik_store::Store;
use futures::future::BoxFuture;

use crate::columns::cast_column;
use crate::sql_text::{embedded, identifier, literal, one_expression};

/// Nanoseconds in an hour, and in a day.
const HOUR_NS: f64 = 3.6e12;
const DAY_NS: f64 = 8.64e13;
/// Most alerts of one rule read for a precision.
const MOST_ALERTS: u32 = 100_000;

/// Measures KPIs with the store's SQL and, when the alerts module runs here, the alerts.
pub(crate) struct StoreKpiMeter {
    pub(crate) store: Arc<Store>,
    pub(crate) alerting: Option<Arc<Alerting>>,
    /// This process is a hub: scopes also select the devices its edges mirror (`_devices`),
    /// and alert precision is read from the `alert_labels` rows its edges forward (and its
    /// own), not from its alerts database, which holds only its own alerts. An edge's scopes
    /// and precision stay its registry's and its alerts'.
    pub(crate) hub: bool,
}

impl KpiMeter for StoreKpiMeter {
    fn check(&self, definition: UseCaseDefinition) -> BoxFuture<'_, Vec<(String, String)>> {
        Box::pin(async move { sql_problems(&definition) })
    }

    fn measure(
        &self,
        kpi: Kpi,
        devices: Option<Vec<String>>,
        from_ns: i64,
        to_ns: i64,
    ) -> BoxFuture<'_, KpiMeasure> {
        Box::pin(async move {
            let measured = match kpi.kind {
                KpiKind::AlertPrecision if self.hub => {
                    self.stored_precision(&kpi, devices.as_deref(), from_ns, to_ns)
                        .await
                }
                KpiKind::AlertPrecision => {
                    self.alert_precision(&kpi, devices.as_deref(), from_ns, to_ns)
                        .await
                }
                _ => {
                    self.table_kpi(&kpi, devices.as_deref(), from_ns, to_ns)
                        .await
                }
            };
            measured.unwrap_or_else(KpiMeasure::failed)
        })
    }

    fn fleet_devices(&self) -> BoxFuture<'_, Result<Vec<fabrik_registry::FleetDevice>, String>> {
        Box::pin(async move {
            if !self.hub {
                return Ok(Vec::new());
            }
            crate::device_mirror::fleet_devices(&self.store).await
        })
    }
}

/// The SQL fragments of a definition that are not one expression, named by field.
pub(crate) fn sql_problems(definition: &UseCaseDefinition) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (i, kpi) in definition.kpis.iter().enumerate() {
        for (field, text) in [
            ("condition", &kpi.condition),
            ("signal", &kpi.signal),
            ("filter", &kpi.filter),
        ] {
            if let Some(text) = text
                && let Err(e) = one_expression(text)
            {
                problems.push((format!("kpis[{i}].{field}"), e));
            }
        }
    }
    problems
}

/// The rows of a KPI's table in the period, on the devices (the filter is the caller's: a
/// time-weighted KPI applies it after each row's interval is known).
fn row_selection(kpi: &Kpi, devices: Option<&[String]>, from_ns: i64, to_ns: i64) -> String {
    rows_in(
        kpi.table.as_deref().unwrap_or_default(),
        &kpi.device_column,
        devices,
        from_ns,
        to_ns,
    )
}

/// ` FROM table WHERE` the rows of `[from_ns, to_ns)` whose `device_column` is one of
/// `devices` (`None`: any).
fn rows_in(
    table: &str,
    device_column: &str,
    devices: Option<&[String]>,
    from_ns: i64,
    to_ns: i64,
) -> String {
    let mut sql = format!(
        " FROM {} WHERE time >= to_timestamp_nanos({from_ns}) AND time < to_timestamp_nanos({to_ns})",
        identifier(table)
    );
    if let Some(devices) = devices {
        let list: Vec<String> = devices.iter().map(|d| literal(d)).collect();
        // An empty scope selects nothing; `IN ()` is not SQL.
        let list = if list.is_empty() {
            "NULL".to_owned()
        } else {
            list.join(", ")
        };
        sql.push_str(&format!(" AND {} IN ({list})", identifier(device_column)));
    }
    sql
}

/// The SQL of a table KPI; its answer is one row.
pub(crate) fn kpi_sql(
    kpi: &Kpi,
    devices: Option<&[String]>,
    from_ns: i64,
    to_ns: i64,
) -> Result<String, String> {
    let rows = row_selection(kpi, devices, from_ns, to_ns);
    let device = identifier(&kpi.device_column);
    let max_gap_ns = fabrik_runtime::units::parse_duration(&kpi.max_gap)?.as_nanos();
    // Each row stands for the time until its device's next row, unless that gap is too long
    // to say what happened in it. The filter picks rows after their intervals are known, so
    // a row it leaves out does not lend its time to the row before; a row whose value is
    // unknown is not observed time. Durations are summed as floats: an integer sum wraps.
    let keep = kpi
        .filter
        .as_deref()
        .map_or_else(|| "true".to_owned(), |f| embedded(f).to_string());
    let timed = |value: &str| {
        format!(
            "SELECT COUNT(DISTINCT d) AS devices, SUM(CAST(dt AS DOUBLE)) AS observed_ns, \
             SUM({value}) AS weighted FROM (SELECT {device} AS d, {v} AS v, {keep} AS keep, \
             CAST(LEAD(time) OVER (PARTITION BY {device} ORDER BY time) AS BIGINT) \
             - CAST(time AS BIGINT) AS dt{rows}) AS intervals \
             WHERE dt IS NOT NULL AND dt <= {max_gap_ns} AND keep AND v IS NOT NULL",
            v = match kpi.kind {
                KpiKind::Downtime =>
                    embedded(kpi.condition.as_deref().unwrap_or("false")).to_string(),
                _ => format!(
                    "CAST({} AS DOUBLE)",
                    embedded(kpi.signal.as_deref().unwrap_or("NULL"))
                ),
            }
        )
    };
    Ok(match kpi.kind {
        KpiKind::Downtime => timed("CASE WHEN v THEN CAST(dt AS DOUBLE) ELSE 0.0 END"),
        KpiKind::EnergyCost => timed("v * CAST(dt AS DOUBLE)"),
        KpiKind::Aggregate => {
            let aggregate = match kpi.aggregate.as_deref().unwrap_or("mean") {
                "mean" => "AVG(v)".to_owned(),
                "min" => "MIN(v)".to_owned(),
                "max" => "MAX(v)".to_owned(),
                "sum" => "SUM(v)".to_owned(),
                "count" => "CAST(COUNT(v) AS DOUBLE)".to_owned(),
                "p50" => "median(v)".to_owned(),
                percentile => {
                    let q: f64 = percentile
                        .trim_start_matches('p')
                        .parse::<f64>()
                        .map_err(|_| format!("`{percentile}` is not an aggregate"))?
                        / 100.0;
                    format!("approx_percentile_cont({q}) WITHIN GROUP (ORDER BY v)")
                }
            };
            let filter = kpi
                .filter
                .as_deref()
                .map_or_else(String::new, |f| format!(" AND {}", embedded(f)));
            format!(
                "SELECT CAST({aggregate} AS DOUBLE) AS value, COUNT(v) AS n FROM \
                 (SELECT CAST({} AS DOUBLE) AS v{rows}{filter}) AS selected",
                embedded(kpi.signal.as_deref().unwrap_or("NULL"))
            )
        }
        KpiKind::AlertPrecision => return Err("alert precision is not read from a table".into()),
    })
}

impl StoreKpiMeter {
    async fn table_kpi(
        &self,
        kpi: &Kpi,
        devices: Option<&[String]>,
        from_ns: i64,
        to_ns: i64,
    ) -> Result<KpiMeasure, String> {
        let sql = kpi_sql(kpi, devices, from_ns, to_ns)?;
        let output = self.store.query(&sql).await.map_err(|e| e.to_string())?;
        let batch = output
            .batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .ok_or("the query returned no row")?;
        let float = |name: &str| -> Option<f64> {
            let column = batch.column_by_name(name)?;
            let values = column.as_primitive_opt::<Float64Type>()?;
            (!values.is_null(0)).then(|| values.value(0))
        };
        let int = |name: &str| -> i64 {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_primitive_opt::<Int64Type>())
                .filter(|v| !v.is_null(0))
                .map_or(0, |v| v.value(0))
        };
        Ok(match kpi.kind {
            KpiKind::Aggregate => {
                let n = int("n");
                KpiMeasure {
                    value: if n > 0 { float("value") } else { None },
                    evidence: n as f64,
                    detail: format!(
                        "{} of {} over {n} rows",
                        kpi.aggregate.as_deref().unwrap_or("mean"),
                        kpi.signal.as_deref().unwrap_or_default()
                    ),
                    error: None,
                    labels: Vec::new(),
                }
            }
            KpiKind::Downtime | KpiKind::EnergyCost => {
                let devices = int("devices");
                let observed_ns = float("observed_ns").unwrap_or(0.0);
                let weighted = float("weighted").unwrap_or(0.0);
                let observed_hours = observed_ns / HOUR_NS;
                let (value, detail) = if kpi.kind == KpiKind::Downtime {
                    (
                        100.0 * weighted / observed_ns,
                        format!(
                            "{:.2} h down in {observed_hours:.2} h observed on {devices} devices",
                            weighted / HOUR_NS
                        ),
                    )
                } else {
                    // kW × ns → kWh.
                    let kwh = weighted / HOUR_NS;
                    let cost = kwh * kpi.price_per_kwh.unwrap_or(0.0);
                    (
                        cost / (observed_ns / DAY_NS),
                        format!(
                            "{kwh:.3} kWh, {cost:.2}{} in {observed_hours:.2} h observed on \
                             {devices} devices",
                            kpi.currency
                                .as_deref()
                                .map_or_else(String::new, |c| format!(" {c}"))
                        ),
                    )
                };
                KpiMeasure {
                    value: (observed_ns > 0.0).then_some(value),
                    evidence: observed_hours,
                    detail,
                    error: None,
                    labels: Vec::new(),
                }
            }
            KpiKind::AlertPrecision => {
                return Err("alert precision is not read from a table".into());
            }
        })
    }

    async fn alert_precision(
        &self,
        kpi: &Kpi,
        devices: Option<&[String]>,
        from_ns: i64,
        to_ns: i64,
    ) -> Result<KpiMeasure, String> {
        let alerting = self
            .alerting
            .as_ref()
            .ok_or("alert precision needs the alerts module in this process")?;
        let (mut true_positives, mut false_positives, mut unlabelled) = (0u64, 0u64, 0u64);
        // (started, confirmed) of each labelled alert, for a gate's SPRT.
        let mut labels = Vec::new();
        let mut cut_short = Vec::new();
        for rule in &kpi.rules {
            let query = AlertQuery {
                rule: Some(rule.clone()),
                ..AlertQuery::default()
            };
            let alerts = alerting
                .db()
                .find(&query, MOST_ALERTS)
                .await
                .map_err(|e| e.to_string())?;
            if alerts.len() >= MOST_ALERTS as usize {
                cut_short.push(rule.as_str());
            }
            for alert in alerts {
                if alert.fired_at.is_none() || &alert.rule != rule {
                    continue;
                }
                let started = parse_time(&alert.started_at)?;
                let in_scope = devices.is_none_or(|d| d.contains(&alert.key));
                if started < from_ns || started >= to_ns || !in_scope {
                    continue;
                }
                match alert.ack.map(|a| a.feedback) {
                    Some(Feedback::TruePositive) => {
                        true_positives += 1;
                        labels.push((started, true));
                    }
                    Some(Feedback::FalsePositive) => {
                        false_positives += 1;
                        labels.push((started, false));
                    }
                    None => unlabelled += 1,
                }
            }
        }
        let labelled = true_positives + false_positives;
        // Several rules interleave; the test reads their alerts as they started.
        labels.sort_by_key(|&(started, _)| started);
        Ok(KpiMeasure {
            value: (labelled > 0).then(|| true_positives as f64 / labelled as f64),
            evidence: labelled as f64,
            detail: format!(
                "{true_positives} true and {false_positives} false positives; {unlabelled} \
                 fired alerts not labelled{}",
                if cut_short.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (only the {MOST_ALERTS} alerts of {} changed last were read)",
                        cut_short.join(", ")
                    )
                }
            ),
            error: None,
            labels: labels.into_iter().map(|(_, confirmed)| confirmed).collect(),
        })
    }

    /// Alert precision from `alert_labels` rows (one per labelled alert, stamped at its start,
    /// a relabel overwriting it): what a hub knows of its edges' alerts. Only rows an alerts
    /// module wrote (here, or on an edge that forwarded them) count, not rows written through
    /// the API. Unlabelled alerts do not travel, so only the labelled ones are counted.
    async fn stored_precision(
        &self,
        kpi: &Kpi,
        devices: Option<&[String]>,
        from_ns: i64,
        to_ns: i64,
    ) -> Result<KpiMeasure, String> {
        let table = fabrik_api::alerts::ALERT_LABELS_TABLE;
        let mut labels = Vec::new();
        if self.store.has_table(table) && !kpi.rules.is_empty() {
            let rules: Vec<String> = kpi.rules.iter().map(|r| literal(r)).collect();
            let sql = format!(
                "SELECT true_positive{} AND rule IN ({}) \
                 AND (_source = 'alerts' OR _source LIKE 'uplink:%/alerts') \
                 AND true_positive IS NOT NULL AND device IS NOT NULL ORDER BY time, device",
                rows_in(table, "device", devices, from_ns, to_ns),
                rules.join(", ")
            );
            let output = self.store.query(&sql).await.map_err(|e| e.to_string())?;
            for batch in &output.batches {
                let confirmed: BooleanArray =
                    cast_column(batch, 0, &DataType::Boolean, "true_positive")?;
                labels.extend(confirmed.iter().flatten());
            }
        }
        let true_positives = labels.iter().filter(|&&c| c).count();
        let false_positives = labels.len() - true_positives;
        Ok(KpiMeasure {
            value: (!labels.is_empty()).then(|| true_positives as f64 / labels.len() as f64),
            evidence: labels.len() as f64,
            detail: format!(
                "{true_positives} true and {false_positives} false positives, from the labels \
                 the fleet's nodes forwarded (alerts not labelled do not travel)"
            ),
            error: None,
            labels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kpi(json: serde_json::Value) -> Kpi {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_scope_and_filter_bound_the_rows_and_an_empty_scope_selects_none() {
        let downtime = kpi(serde_json::json!({
            "name": "d", "kind": "downtime", "table": "pump", "condition": "NOT running",
            "filter": "site = 'a'", "max_gap": "1m"
        }));
        let sql = kpi_sql(&downtime, Some(&["p'1".to_owned()]), 10, 20).unwrap();
        assert!(sql.contains("\"device\" IN ('p''1')"), "{sql}");
        assert!(sql.contains("(\nsite = 'a'\n) AS keep"), "{sql}");
        assert!(sql.contains("AND keep AND v IS NOT NULL"), "{sql}");
        assert!(sql.contains("dt <= 60000000000"), "{sql}");
        let none = kpi_sql(&downtime, Some(&[]), 10, 20).unwrap();
        assert!(none.contains("IN (NULL)"), "{none}");
        let all = kpi_sql(&downtime, None, 10, 20).unwrap();
        assert!(!all.contains(" IN ("), "{all}");
    }

    #[test]
    fn a_quote_in_a_table_or_device_column_name_stays_inside_the_identifier() {
        let mean = kpi(serde_json::json!({
            "name": "m", "kind": "aggregate", "table": "line\"s", "signal": "x",
            "device_column": "d\" OR 1=1 --"
        }));
        let sql = kpi_sql(&mean, Some(&["p1".to_owned()]), 10, 20).unwrap();
        assert!(sql.contains(" FROM \"line\"\"s\" WHERE"), "{sql}");
        assert!(sql.contains("\"d\"\" OR 1=1 --\" IN ('p1')"), "{sql}");
    }

    #[test]
    fn sql_that_is_not_one_expression_is_named_by_field() {
        let definition: UseCaseDefinition = serde_json::from_value(serde_json::json!({
            "name": "u", "objective": "o", "pilot": {"devices": ["a"]},
            "kpis": [{"name": "d", "kind": "downtime", "table": "t", "condition": "true) OR (1=1"}]
        }))
        .unwrap();
        let problems = sql_problems(&definition);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "kpis[0].condition");
    }
}
