//! The alerting module: evaluates `[[alerting.rules]]` on new rows with SQL, drives
//! `fabrik_alert`'s lifecycle, and runs the notification outbox.
//!
//! Like pipelines, rules read the store (so they apply alike to samples from any source and to
//! the `inferences` table); a rule's value is any SQL expression, which is how expressions over
//! several signals are written.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use fabrik_alert::{Alerting, Condition, Notifier, Observation, Rule};
use fabrik_core::Timestamp;
use fabrik_runtime::ServiceHandle;
use fabrik_runtime::config::{AlertRuleConfig, Config, NotifierConfig};
use fabrik_runtime::units::parse_duration;
use fabrik_store::Store;
use tokio_util::sync::CancellationToken;

/// Rows read per rule and pass.
const READ_LIMIT: usize = 20_000;
/// How long a write may take between taking its raw-message id and committing.
const SETTLE_NS: i64 = 1_000_000_000;

/// A rule checked and ready to evaluate.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    config: AlertRuleConfig,
    rule: Rule,
    interval: Duration,
    replay: bool,
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks one rule; every problem with its field.
pub(crate) fn compile_rule(c: &AlertRuleConfig) -> Result<CompiledRule, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let mut problem = |field: &str, message: String| problems.push((field.to_owned(), message));
    if !name_ok(&c.name) {
        problem(
            "name",
            format!("`{}`: use letters, digits, `-`, `_` and `.`", c.name),
        );
    }
    for (field, value) in [("table", &c.table), ("key", &c.key)] {
        if value.is_empty() || value.contains('"') {
            problem(
                field,
                format!("`{value}` is not a usable column or table name"),
            );
        }
    }
    for (field, value) in [("value", Some(&c.value)), ("filter", c.filter.as_ref())] {
        if let Some(v) = value
            && (v.contains(';') || v.trim().is_empty())
        {
            problem(field, "must be one SQL expression".into());
        }
    }
    if !c.threshold.is_finite() {
        problem("threshold", "must be a finite number".into());
    }
    let clear = c.clear.unwrap_or(c.threshold);
    let condition = match c.condition.as_str() {
        "above" if clear <= c.threshold => Some(Condition::Above {
            fire: c.threshold,
            clear,
        }),
        "below" if clear >= c.threshold => Some(Condition::Below {
            fire: c.threshold,
            clear,
        }),
        "above" | "below" => {
            problem(
                "clear",
                "must be on the normal side of the threshold (≤ for above, ≥ for below)".into(),
            );
            None
        }
        "rate_above" if c.threshold > 0.0 => Some(Condition::RateAbove {
            per_second: c.threshold,
        }),
        "absent" if c.threshold > 0.0 => Some(Condition::Absent {
            after_ns: (c.threshold * 1e9) as i64,
        }),
        "rate_above" | "absent" => {
            problem("threshold", "must be greater than zero".into());
            None
        }
        other => {
            problem(
                "condition",
                format!("`{other}`: expected above, below, rate_above or absent"),
            );
            None
        }
    };
    let for_ns = parse_duration(&c.for_duration)
        .map_err(|e| problem("for", e))
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok());
    let interval = parse_duration(&c.interval)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            problem(
                "interval",
                format!("`{}` is not a duration > 0", c.interval),
            )
        })
        .ok();
    if !matches!(c.severity.as_str(), "critical" | "warning" | "info") {
        problem(
            "severity",
            format!("`{}`: expected critical, warning or info", c.severity),
        );
    }
    let replay = match c.start.as_str() {
        "now" => false,
        "earliest" => true,
        other => {
            problem("start", format!("`{other}`: expected `now` or `earliest`"));
            false
        }
    };
    match (condition, for_ns, interval) {
        (Some(condition), Some(for_ns), Some(interval)) if problems.is_empty() => {
            Ok(CompiledRule {
                rule: Rule {
                    name: c.name.clone(),
                    severity: c.severity.clone(),
                    condition,
                    for_ns,
                },
                config: c.clone(),
                interval,
                replay,
            })
        }
        _ => Err(problems),
    }
}

fn compile_notifier(n: &NotifierConfig) -> Result<Notifier, Vec<(String, String)>> {
    let mut problems = Vec::new();
    if !name_ok(&n.name) {
        problems.push((
            "name".to_owned(),
            format!("`{}` is not a valid name", n.name),
        ));
    }
    if n.kind != "webhook" {
        problems.push((
            "kind".to_owned(),
            format!("`{}`: only `webhook` is built so far", n.kind),
        ));
    }
    if !(n.url.starts_with("http://") || n.url.starts_with("https://")) {
        problems.push((
            "url".to_owned(),
            format!("`{}` is not an http(s) URL", n.url),
        ));
    }
    let timeout = parse_duration(&n.timeout)
        .map_err(|e| problems.push(("timeout".to_owned(), e)))
        .ok();
    match timeout {
        Some(timeout) if problems.is_empty() => Ok(Notifier::Webhook {
            name: n.name.clone(),
            url: n.url.clone(),
            timeout,
        }),
        _ => Err(problems),
    }
}

/// Problems of `[alerting]`, as `alerting.rules[i].field`.
pub(crate) fn check(config: &Config) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for (i, r) in config.alerting.rules.iter().enumerate() {
        if !names.insert(r.name.as_str()) {
            problems.push((
                format!("alerting.rules[{i}].name"),
                format!("`{}` is used by an earlier rule", r.name),
            ));
        }
        if let Err(found) = compile_rule(r) {
            problems.extend(
                found
                    .into_iter()
                    .map(|(f, m)| (format!("alerting.rules[{i}].{f}"), m)),
            );
        }
    }
    for (i, n) in config.alerting.notifiers.iter().enumerate() {
        if let Err(found) = compile_notifier(n) {
            problems.extend(
                found
                    .into_iter()
                    .map(|(f, m)| (format!("alerting.notifiers[{i}].{f}"), m)),
            );
        }
    }
    problems
}

/// The rule the demo plant gets when none is configured: anomalous windows of `pump-health`.
fn demo_rule() -> AlertRuleConfig {
    AlertRuleConfig {
        name: "pump-anomaly".into(),
        table: crate::pipelines::INFERENCES_TABLE.into(),
        value: "score / threshold".into(),
        key: "device".into(),
        filter: Some("pipeline = 'pump-health'".into()),
        condition: "above".into(),
        threshold: 1.0,
        clear: Some(0.8),
        for_duration: "0s".into(),
        severity: "warning".into(),
        context: vec!["top_signal".into(), "contributions".into()],
        interval: "1s".into(),
        start: "now".into(),
    }
}

/// Opens `<data_dir>/alerts.db`, then runs one evaluation task per rule and the outbox.
pub(crate) async fn start(
    config: &Config,
    data_dir: &std::path::Path,
    external_url: String,
    demo: bool,
    store: Arc<Store>,
) -> Result<(ServiceHandle, Arc<Alerting>), String> {
    let mut rule_configs = config.alerting.rules.clone();
    if demo && rule_configs.is_empty() && config.pipelines.is_empty() {
        rule_configs.push(demo_rule());
    }
    let rules = rule_configs
        .iter()
        .map(|c| {
            compile_rule(c).map_err(|p| {
                let (field, message) = p.into_iter().next().unwrap_or_default();
                format!("alert rule `{}`: {field}: {message}", c.name)
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let notifiers = config
        .alerting
        .notifiers
        .iter()
        .map(|n| {
            compile_notifier(n).map_err(|p| {
                let (field, message) = p.into_iter().next().unwrap_or_default();
                format!("notifier `{}`: {field}: {message}", n.name)
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let external_url = if config.alerting.external_url.is_empty() {
        external_url
    } else {
        config
            .alerting
            .external_url
            .trim_end_matches('/')
            .to_owned()
    };
    let alerting = Alerting::open(
        &data_dir.join("alerts.db"),
        rules.iter().map(|r| r.rule.clone()).collect(),
        notifiers,
        external_url,
    )
    .await
    .map_err(|e| e.to_string())?;
    let stop = CancellationToken::new();
    let mut tasks = vec![tokio::spawn(
        alerting.clone().run_outbox(stop.child_token()),
    )];
    for rule in rules {
        let evaluator = Evaluator {
            rule,
            store: store.clone(),
            alerting: alerting.clone(),
        };
        tasks.push(tokio::spawn(evaluator.run(stop.child_token())));
    }
    let token = stop.clone();
    let task = tokio::spawn(async move {
        token.cancelled().await;
        for task in tasks {
            let _ = task.await;
        }
        Ok(())
    });
    Ok((ServiceHandle { stop, task }, alerting))
}

struct Evaluator {
    rule: CompiledRule,
    store: Arc<Store>,
    alerting: Arc<Alerting>,
}

impl Evaluator {
    async fn run(self, stop: CancellationToken) {
        let name = self.rule.config.name.clone();
        let mut read_after = if self.rule.replay {
            None
        } else {
            Some(Timestamp::now().nanos())
        };
        let mut ticker = tokio::time::interval(self.rule.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_problem = String::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if let Err(e) = self.step(&mut read_after).await
                && e != last_problem
            {
                tracing::warn!(rule = %name, error = %e, "Alert rule evaluation failed; retrying.");
                last_problem = e;
            }
        }
    }

    async fn step(&self, read_after: &mut Option<i64>) -> Result<(), String> {
        let now = Timestamp::now().nanos();
        // Rows are read in arrival order (`_raw_id` starts from the receipt time in ns), so a
        // row with an old timestamp written now (an inference about a window that just
        // closed, a device's buffered backlog) is still evaluated. Ids younger than
        // `SETTLE_NS` are left for the next pass: a write that took its id earlier may still
        // be committing.
        let until = now - SETTLE_NS;
        loop {
            let (mut rows, mut last, page) = self.read(*read_after, until).await?;
            let full = page >= READ_LIMIT;
            if full && let Some(cut) = last {
                // One write's rows share a raw id; a page may end inside them. Leave that id
                // for the next page unless it is all this page holds.
                let keep = rows.iter().take_while(|(raw, _)| *raw < cut).count();
                if keep > 0 {
                    rows.truncate(keep);
                    last = Some(cut - 1);
                }
            }
            let observations: Vec<Observation> = rows.into_iter().map(|(_, o)| o).collect();
            if !observations.is_empty() {
                self.alerting
                    .observe(&self.rule.config.name, &observations)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            if let Some(last) = last {
                *read_after = Some(last);
            }
            if !full {
                break;
            }
        }
        let mut expected = BTreeMap::new();
        expected.insert(self.rule.config.name.clone(), Vec::new());
        self.alerting
            .tick(now, &expected)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn read(
        &self,
        after: Option<i64>,
        until: i64,
    ) -> Result<(Vec<(i64, Observation)>, Option<i64>, usize), String> {
        let c = &self.rule.config;
        let mut columns = vec![
            "CAST(_raw_id AS BIGINT) AS _arrival".to_owned(),
            "time".to_owned(),
            format!("\"{}\"", c.key),
            format!("CAST(({}) AS DOUBLE)", c.value),
        ];
        columns.extend(c.context.iter().map(|col| format!("\"{col}\"")));
        let mut sql = format!(
            "SELECT {} FROM \"{}\" WHERE _raw_id <= {until}",
            columns.join(", "),
            c.table
        );
        if let Some(after) = after {
            sql.push_str(&format!(" AND _raw_id > {after}"));
        }
        if let Some(filter) = &c.filter {
            sql.push_str(&format!(" AND ({filter})"));
        }
        sql.push_str(&format!(" ORDER BY _arrival, time LIMIT {READ_LIMIT}"));
        let output = self.store.query(&sql).await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let mut last = None;
        let page = output.batches.iter().map(|b| b.num_rows()).sum();
        for batch in &output.batches {
            let cast = |i: usize, to: &DataType| {
                datafusion::arrow::compute::cast(batch.column(i), to).map_err(|e| e.to_string())
            };
            let raw_ids = cast(0, &DataType::Int64)?;
            let raw_ids = raw_ids
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or("_raw_id did not cast")?;
            let times = cast(1, &DataType::Int64)?;
            let times = times
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or("time did not cast")?;
            let keys = cast(2, &DataType::Utf8)?;
            let keys = keys
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or("key did not cast")?;
            let values = cast(3, &DataType::Float64)?;
            let values = values
                .as_any()
                .downcast_ref::<Float64Array>()
                .ok_or("value did not cast")?;
            let mut context_columns = Vec::new();
            for (j, name) in c.context.iter().enumerate() {
                context_columns.push((name, cast(4 + j, &DataType::Utf8)?));
            }
            for i in 0..batch.num_rows() {
                if !raw_ids.is_null(i) {
                    last = Some(raw_ids.value(i));
                }
                if times.is_null(i) || keys.is_null(i) || values.is_null(i) {
                    continue;
                }
                let context = context_columns
                    .iter()
                    .filter_map(|(name, column)| {
                        let column = column.as_any().downcast_ref::<StringArray>()?;
                        (!column.is_null(i)).then(|| ((*name).clone(), column.value(i).to_owned()))
                    })
                    .collect();
                out.push((
                    raw_ids.value(i),
                    Observation {
                        key: keys.value(i).to_owned(),
                        time_ns: times.value(i),
                        value: values.value(i),
                        context,
                    },
                ));
            }
        }
        Ok((out, last, page))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_rule_compiles_and_bad_rules_name_their_fields() {
        assert!(compile_rule(&demo_rule()).is_ok());
        let mut bad = demo_rule();
        bad.condition = "over".into();
        bad.severity = "loud".into();
        bad.for_duration = "soon".into();
        let fields: Vec<String> = compile_rule(&bad)
            .unwrap_err()
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(fields, vec!["condition", "for", "severity"]);
        let mut inverted = demo_rule();
        inverted.clear = Some(2.0);
        assert_eq!(compile_rule(&inverted).unwrap_err()[0].0, "clear");
    }
}
