//! Use cases: a business objective with KPIs measured from the data, the stage it has reached
//! (pilot → scale-up → enterprise), the devices each stage lets its pipelines score, the gates
//! between stages, and the record of every stage decision.
//!
//! Owns the definitions' shape and structural checks, their table and the decisions' table,
//! the resolution of a stage's scope to devices, and the pure judgement of a gate from
//! measured KPIs. Measuring a KPI needs the store and the alerts, which this crate does not
//! know: the caller measures and hands the values in.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;

use crate::{DeviceFilter, Registry, RegistryError, now_ns};

/// How far a use case has come; each stage lets its pipelines score more devices.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Only the pilot devices.
    Pilot,
    /// The pilot devices and the scale-up scope.
    ScaleUp,
    /// Every device the pipelines select.
    Enterprise,
}

impl Stage {
    /// The name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pilot => "pilot",
            Self::ScaleUp => "scale_up",
            Self::Enterprise => "enterprise",
        }
    }

    /// The name people read (`scale-up`).
    pub fn display(self) -> &'static str {
        match self {
            Self::Pilot => "pilot",
            Self::ScaleUp => "scale-up",
            Self::Enterprise => "enterprise",
        }
    }

    /// The stage a gate leads to from this one.
    pub fn next(self) -> Option<Self> {
        match self {
            Self::Pilot => Some(Self::ScaleUp),
            Self::ScaleUp => Some(Self::Enterprise),
            Self::Enterprise => None,
        }
    }
}

impl std::str::FromStr for Stage {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "pilot" => Ok(Self::Pilot),
            "scale_up" | "scale-up" => Ok(Self::ScaleUp),
            "enterprise" => Ok(Self::Enterprise),
            other => Err(format!(
                "`{other}` is not a stage: pilot, scale_up or enterprise"
            )),
        }
    }
}

/// The devices of one stage: those listed, and the registered ones matching every selector
/// given (site, type, label).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceScope {
    /// Devices by id (they need not be registered: data written over HTTP names its own).
    pub devices: Vec<String>,
    /// Registered devices of this site.
    pub site: Option<String>,
    /// Registered devices of this type.
    pub device_type: Option<String>,
    /// Registered devices with this label, `key=value`.
    pub label: Option<String>,
}

impl DeviceScope {
    fn has_selector(&self) -> bool {
        self.site.is_some() || self.device_type.is_some() || self.label.is_some()
    }

    fn is_empty(&self) -> bool {
        self.devices.is_empty() && !self.has_selector()
    }
}

/// What a KPI measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KpiKind {
    /// Share of the observed device time (%) in which `condition` held: the time from each
    /// row to the device's next row counts, gaps longer than `max_gap` are not observed.
    Downtime,
    /// Cost of the energy drawn per device-day: `signal` is the power in kW, integrated over
    /// time as for downtime, times `price_per_kwh`.
    EnergyCost,
    /// An aggregate (`mean`, `min`, `max`, `sum`, `count`, `p50`, `p90`, `p95`, `p99`) of
    /// `signal` over the rows: a latency's p95, an anomaly rate from `inferences`.
    Aggregate,
    /// Of the acknowledged alerts of `rules` that started in the period, the share the
    /// operators marked true positive.
    AlertPrecision,
}

/// Which way a KPI improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    /// Lower is better (downtime, cost, latency).
    Lower,
    /// Higher is better (precision, throughput).
    Higher,
}

/// One business KPI of a use case, measured from stored data over a period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Kpi {
    /// Unique within the use case; gates name it.
    pub name: String,
    /// What it measures.
    pub kind: KpiKind,
    /// The table read (not for `alert_precision`).
    #[serde(default)]
    pub table: Option<String>,
    /// The tag column naming the device.
    #[serde(default = "device_column")]
    pub device_column: String,
    /// `downtime`: a SQL condition over the table's columns that holds while the device is
    /// down (`NOT running`, `speed_rpm < 100`).
    #[serde(default)]
    pub condition: Option<String>,
    /// `energy_cost`: the power in kW; `aggregate`: the value aggregated. A column or a SQL
    /// expression over the columns (`motor_current * 0.589`).
    #[serde(default)]
    pub signal: Option<String>,
    /// `aggregate`: mean, min, max, sum, count, p50, p90, p95 or p99.
    #[serde(default)]
    pub aggregate: Option<String>,
    /// A SQL condition: only rows where it holds count (`pipeline = 'pump-health'`).
    #[serde(default)]
    pub filter: Option<String>,
    /// `energy_cost`: price of a kWh.
    #[serde(default)]
    pub price_per_kwh: Option<f64>,
    /// `energy_cost`: the currency, for display.
    #[serde(default)]
    pub currency: Option<String>,
    /// `alert_precision`: the alert rules whose alerts count.
    #[serde(default)]
    pub rules: Vec<String>,
    /// For display; defaults by kind (`%`, the currency per device-day, `ratio`).
    #[serde(default)]
    pub unit: Option<String>,
    /// Which way it improves; defaults by kind (higher for `alert_precision`, else lower).
    #[serde(default)]
    pub better: Option<Better>,
    /// The value the use case aims for.
    #[serde(default)]
    pub target: Option<f64>,
    /// Longer gaps between a device's rows are not observed time (downtime, energy).
    #[serde(default = "five_minutes")]
    pub max_gap: String,
}

impl Kpi {
    /// Which way it improves, the default filled in.
    pub fn better(&self) -> Better {
        self.better.unwrap_or(match self.kind {
            KpiKind::AlertPrecision => Better::Higher,
            _ => Better::Lower,
        })
    }

    /// What its evidence counts.
    pub fn evidence_unit(&self) -> &'static str {
        match self.kind {
            KpiKind::Downtime | KpiKind::EnergyCost => "device-hours",
            KpiKind::Aggregate => "rows",
            KpiKind::AlertPrecision => "labelled alerts",
        }
    }

    /// Its unit, the default filled in.
    pub fn unit(&self) -> String {
        if let Some(unit) = &self.unit {
            return unit.clone();
        }
        match self.kind {
            KpiKind::Downtime => "%".into(),
            KpiKind::EnergyCost => format!(
                "{} per device-day",
                self.currency.as_deref().unwrap_or("cost")
            ),
            KpiKind::Aggregate => String::new(),
            KpiKind::AlertPrecision => "ratio".into(),
        }
    }
}

fn device_column() -> String {
    "device".into()
}

fn five_minutes() -> String {
    "5m".into()
}

/// The period before the use case that its KPIs are compared with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// Start (RFC 3339).
    pub from: String,
    /// End (RFC 3339), after `from`.
    pub to: String,
}

/// One condition of a gate. Every bound given must hold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GateCriterion {
    /// The KPI the bounds apply to.
    pub kpi: Option<String>,
    /// The KPI's value is at least this.
    pub at_least: Option<f64>,
    /// The KPI's value is at most this.
    pub at_most: Option<f64>,
    /// The KPI improved on the baseline by at least this fraction (0.2: 20 %).
    pub improvement_at_least: Option<f64>,
    /// The KPI rests on at least this much evidence (rows, labelled alerts, device-hours).
    pub evidence_at_least: Option<f64>,
    /// The use case has been in its stage at least this long (`14d`).
    pub time_in_stage_at_least: Option<String>,
    /// An `alert_precision` KPI decided by Wald's SPRT over the stage's labelled alerts in the
    /// order they started, rather than read off its value: holds once the evidence favours
    /// the `good` precision over the `bad` one at the error rates given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sprt: Option<RateTest>,
}

/// The hypotheses and error rates of a [`GateCriterion`]'s SPRT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateTest {
    /// A precision the use case should pass with (0.8).
    pub good: f64,
    /// A precision it should fail with (0.6).
    pub bad: f64,
    /// The highest acceptable chance of passing a use case whose precision is `bad`
    /// (default 0.05).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// The highest acceptable chance of failing one whose precision is `good` (default 0.2).
    #[serde(default = "default_beta")]
    pub beta: f64,
}

fn default_alpha() -> f64 {
    0.05
}

fn default_beta() -> f64 {
    0.2
}

/// The criteria of the two gates.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Gates {
    /// Pilot → scale-up.
    pub scale_up: Vec<GateCriterion>,
    /// Scale-up → enterprise.
    pub enterprise: Vec<GateCriterion>,
}

impl Gates {
    /// The criteria of the gate into `stage`.
    pub fn into_stage(&self, stage: Stage) -> &[GateCriterion] {
        match stage {
            Stage::Pilot => &[],
            Stage::ScaleUp => &self.scale_up,
            Stage::Enterprise => &self.enterprise,
        }
    }
}

/// A use case as defined: the objective it serves, who owns it, its KPIs, its scopes and its
/// gates. `PUT /api/v1/usecases/{name}` takes it as JSON, `fabrik usecase define` as TOML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UseCaseDefinition {
    /// Unique name: 1 to 64 of a-z, 0-9, `.`, `_` and `-`.
    pub name: String,
    /// The strategic objective it serves, in the business's words.
    pub objective: String,
    /// Who answers for it.
    #[serde(default)]
    pub owner: String,
    /// Who defined success with the owner (OT, IT, finance, compliance).
    #[serde(default)]
    pub stakeholders: Vec<String>,
    /// The devices of the pilot.
    #[serde(default)]
    pub pilot: DeviceScope,
    /// The devices added at scale-up (the pilot's stay).
    #[serde(default)]
    pub scale_up: DeviceScope,
    /// The devices added at enterprise; empty: no limit (every device the pipelines select,
    /// and every device of a KPI's table).
    #[serde(default)]
    pub enterprise: DeviceScope,
    /// Its KPIs.
    #[serde(default)]
    pub kpis: Vec<Kpi>,
    /// The period its KPIs are compared with.
    #[serde(default)]
    pub baseline: Option<Baseline>,
    /// What each stage gate requires.
    #[serde(default)]
    pub gates: Gates,
}

/// Most KPIs of one use case: each is a query whenever its KPIs or gate are read.
pub const MOST_KPIS: usize = 32;

/// The aggregates a KPI of kind `aggregate` may name.
pub const AGGREGATES: [&str; 9] = [
    "mean", "min", "max", "sum", "count", "p50", "p90", "p95", "p99",
];

/// Whether `name` can name a use case or a KPI.
pub fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// Nanoseconds since the epoch of an RFC 3339 time.
pub fn parse_time(text: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|e| format!("`{text}` is not an RFC 3339 time: {e}"))?
        .timestamp_nanos_opt()
        .ok_or_else(|| format!("`{text}` is out of range"))
}

/// RFC 3339 with nanoseconds, UTC.
pub fn format_time(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

impl UseCaseDefinition {
    /// Every structural problem, each with the field it is in (`kpis[1].price_per_kwh`). The
    /// SQL in `condition`, `signal` and `filter` is checked by whoever runs it.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem = |field: String, text: String| problems.push((field, text));
        if !name_ok(&self.name) {
            problem(
                "name".into(),
                format!("`{}`: 1 to 64 of a-z, 0-9, `.`, `_` and `-`", self.name),
            );
        }
        // Bounds a dashboard and a decision record can show; the body limit is far larger.
        let long = |text: &str, most: usize| text.chars().count() > most;
        for (field, text, most) in [
            ("objective", self.objective.as_str(), 1_000),
            ("owner", self.owner.as_str(), 200),
        ] {
            if long(text, most) {
                problem(field.into(), format!("at most {most} characters"));
            }
        }
        if self.stakeholders.len() > 50 || self.stakeholders.iter().any(|s| long(s, 200)) {
            problem(
                "stakeholders".into(),
                "at most 50, of at most 200 characters each".into(),
            );
        }
        if self.kpis.len() > MOST_KPIS {
            problem("kpis".into(), format!("at most {MOST_KPIS}"));
        }
        if self.objective.trim().is_empty() {
            problem(
                "objective".into(),
                "must say which business objective the use case serves".into(),
            );
        }
        for (field, scope) in [
            ("pilot", &self.pilot),
            ("scale_up", &self.scale_up),
            ("enterprise", &self.enterprise),
        ] {
            if let Some(label) = &scope.label
                && !label.contains('=')
            {
                problem(
                    format!("{field}.label"),
                    format!("`{label}`: expected `key=value`"),
                );
            }
            if scope.devices.iter().any(|d| d.trim().is_empty()) {
                problem(format!("{field}.devices"), "a device id is empty".into());
            }
        }
        if self.pilot.is_empty() {
            problem(
                "pilot".into(),
                "names no device: a pilot runs on devices listed or selected by site, type \
                 or label"
                    .into(),
            );
        }
        let mut names = BTreeSet::new();
        for (i, kpi) in self.kpis.iter().enumerate() {
            let at = |field: &str| format!("kpis[{i}].{field}");
            if !name_ok(&kpi.name) {
                problem(
                    at("name"),
                    format!("`{}`: 1 to 64 of a-z, 0-9, `.`, `_` and `-`", kpi.name),
                );
            } else if !names.insert(kpi.name.as_str()) {
                problem(at("name"), format!("`{}` is defined twice", kpi.name));
            }
            kpi_problems(kpi, &at, &mut problem);
        }
        if let Some(baseline) = &self.baseline {
            match (parse_time(&baseline.from), parse_time(&baseline.to)) {
                (Ok(from), Ok(to)) if from >= to => {
                    problem("baseline.to".into(), "must be after `from`".into())
                }
                (from, to) => {
                    if let Err(e) = from {
                        problem("baseline.from".into(), e);
                    }
                    if let Err(e) = to {
                        problem("baseline.to".into(), e);
                    }
                }
            }
        }
        for (gate, criteria) in [
            ("scale_up", &self.gates.scale_up),
            ("enterprise", &self.gates.enterprise),
        ] {
            for (j, criterion) in criteria.iter().enumerate() {
                let at = |field: &str| format!("gates.{gate}[{j}].{field}");
                criterion_problems(self, criterion, &at, &mut problem);
            }
        }
        problems
    }

    fn kpi(&self, name: &str) -> Option<&Kpi> {
        self.kpis.iter().find(|k| k.name == name)
    }
}

fn kpi_problems(kpi: &Kpi, at: &dyn Fn(&str) -> String, problem: &mut dyn FnMut(String, String)) {
    let needs = |field: &str, present: bool, problem: &mut dyn FnMut(String, String)| {
        if !present {
            problem(
                at(field),
                format!("a `{}` KPI needs it", kind_name(kpi.kind)),
            );
        }
    };
    let unused = |field: &str, present: bool, problem: &mut dyn FnMut(String, String)| {
        if present {
            problem(
                at(field),
                format!("a `{}` KPI does not use it", kind_name(kpi.kind)),
            );
        }
    };
    let reads_table = kpi.kind != KpiKind::AlertPrecision;
    if reads_table {
        needs("table", kpi.table.is_some(), problem);
        unused("rules", !kpi.rules.is_empty(), problem);
    } else {
        unused("table", kpi.table.is_some(), problem);
        unused("filter", kpi.filter.is_some(), problem);
        needs("rules", !kpi.rules.is_empty(), problem);
    }
    match kpi.kind {
        KpiKind::Downtime => {
            needs("condition", kpi.condition.is_some(), problem);
            unused("signal", kpi.signal.is_some(), problem);
        }
        KpiKind::EnergyCost => {
            needs("signal", kpi.signal.is_some(), problem);
            unused("condition", kpi.condition.is_some(), problem);
            match kpi.price_per_kwh {
                None => needs("price_per_kwh", false, problem),
                Some(p) if !(p.is_finite() && p >= 0.0) => {
                    problem(at("price_per_kwh"), format!("{p}: must be 0 or more"))
                }
                Some(_) => {}
            }
        }
        KpiKind::Aggregate => {
            needs("signal", kpi.signal.is_some(), problem);
            unused("condition", kpi.condition.is_some(), problem);
            match kpi.aggregate.as_deref() {
                None => needs("aggregate", false, problem),
                Some(a) if !AGGREGATES.contains(&a) => problem(
                    at("aggregate"),
                    format!("`{a}`: one of {}", AGGREGATES.join(", ")),
                ),
                Some(_) => {}
            }
        }
        KpiKind::AlertPrecision => {
            unused("condition", kpi.condition.is_some(), problem);
            unused("signal", kpi.signal.is_some(), problem);
        }
    }
    if kpi.kind != KpiKind::Aggregate {
        unused("aggregate", kpi.aggregate.is_some(), problem);
    }
    if kpi.kind != KpiKind::EnergyCost {
        unused("price_per_kwh", kpi.price_per_kwh.is_some(), problem);
        unused("currency", kpi.currency.is_some(), problem);
    }
    for (field, column) in [
        ("table", kpi.table.as_deref()),
        ("device_column", Some(kpi.device_column.as_str())),
    ] {
        if let Some(column) = column
            && (column.is_empty() || column.contains('"'))
        {
            problem(
                at(field),
                format!("`{column}` cannot name a table or column"),
            );
        }
    }
    match fabrik_runtime::units::parse_duration(&kpi.max_gap) {
        Ok(d) if d.is_zero() => problem(at("max_gap"), "must be more than 0".into()),
        Ok(_) => {}
        Err(e) => problem(at("max_gap"), e),
    }
    if let Some(target) = kpi.target
        && !target.is_finite()
    {
        problem(at("target"), "must be a number".into());
    }
}

fn criterion_problems(
    definition: &UseCaseDefinition,
    criterion: &GateCriterion,
    at: &dyn Fn(&str) -> String,
    problem: &mut dyn FnMut(String, String),
) {
    let kpi_bounds = [
        criterion.at_least,
        criterion.at_most,
        criterion.improvement_at_least,
        criterion.evidence_at_least,
    ];
    let has_kpi_bound = kpi_bounds.iter().any(Option::is_some) || criterion.sprt.is_some();
    if !has_kpi_bound && criterion.time_in_stage_at_least.is_none() {
        problem(
            at("kpi"),
            "a criterion needs a bound: at_least, at_most, improvement_at_least, \
             evidence_at_least, sprt or time_in_stage_at_least"
                .into(),
        );
    }
    if let Some(test) = &criterion.sprt {
        let kind = criterion
            .kpi
            .as_deref()
            .and_then(|name| definition.kpi(name))
            .map(|kpi| kpi.kind);
        if kind.is_some_and(|kind| kind != KpiKind::AlertPrecision) {
            problem(
                at("sprt"),
                "an SPRT decides a rate: it needs an `alert_precision` KPI".into(),
            );
        }
        let better = criterion
            .kpi
            .as_deref()
            .and_then(|name| definition.kpi(name))
            .map_or(Better::Higher, Kpi::better);
        for (field, value) in [("good", test.good), ("bad", test.bad)] {
            if !(value > 0.0 && value < 1.0) {
                problem(
                    at(&format!("sprt.{field}")),
                    format!("{value}: a precision strictly between 0 and 1"),
                );
            }
        }
        let ordered = match better {
            Better::Higher => test.good > test.bad,
            Better::Lower => test.good < test.bad,
        };
        // The order is a precision's; another kind of KPI is refused above.
        let precision = kind.is_none_or(|kind| kind == KpiKind::AlertPrecision);
        if precision && !ordered {
            let way = match better {
                Better::Higher => "below",
                Better::Lower => "above",
            };
            problem(
                at("sprt.bad"),
                format!(
                    "{}: must lie {way} `good` ({}), as the KPI is better {}",
                    test.bad,
                    test.good,
                    if better == Better::Higher {
                        "higher"
                    } else {
                        "lower"
                    }
                ),
            );
        }
        for (field, value) in [("alpha", test.alpha), ("beta", test.beta)] {
            if !(value > 0.0 && value <= 0.5) {
                problem(
                    at(&format!("sprt.{field}")),
                    format!("{value}: an error rate above 0 and at most 0.5"),
                );
            }
        }
        if test.alpha + test.beta >= 1.0 {
            problem(
                at("sprt.beta"),
                "alpha + beta must be below 1: otherwise no evidence decides".into(),
            );
        }
    }
    if let Some(bound) = kpi_bounds.into_iter().flatten().find(|b| !b.is_finite()) {
        problem(at("kpi"), format!("{bound} is not a bound"));
    }
    match &criterion.kpi {
        Some(name) if definition.kpi(name).is_none() => {
            problem(at("kpi"), format!("no KPI is named `{name}`"))
        }
        None if has_kpi_bound => problem(at("kpi"), "the bounds need the KPI they apply to".into()),
        _ => {}
    }
    if criterion.improvement_at_least.is_some() && definition.baseline.is_none() {
        problem(
            at("improvement_at_least"),
            "an improvement needs the use case's `baseline` period".into(),
        );
    }
    if let Some(time) = &criterion.time_in_stage_at_least
        && let Err(e) = fabrik_runtime::units::parse_duration(time)
    {
        problem(at("time_in_stage_at_least"), e);
    }
}

fn kind_name(kind: KpiKind) -> &'static str {
    match kind {
        KpiKind::Downtime => "downtime",
        KpiKind::EnergyCost => "energy_cost",
        KpiKind::Aggregate => "aggregate",
        KpiKind::AlertPrecision => "alert_precision",
    }
}

/// A use case as stored: its definition and the stage it has reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UseCase {
    /// Its name.
    pub name: String,
    /// The stage it has reached.
    pub stage: Stage,
    /// When it entered that stage (RFC 3339).
    pub stage_since: String,
    /// When it was first defined (RFC 3339).
    pub created_at: String,
    /// When its definition or stage last changed (RFC 3339).
    pub updated_at: String,
    /// Its definition.
    pub definition: UseCaseDefinition,
}

/// A KPI's value over one period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KpiMeasure {
    /// `None`: nothing to measure in the period (no rows, no labelled alert).
    pub value: Option<f64>,
    /// How much it rests on: device-hours observed (downtime, energy), rows (aggregate),
    /// labelled alerts (precision).
    pub evidence: f64,
    /// What it was computed from, in words.
    pub detail: String,
    /// Why it could not be measured (its table not written yet, a column missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `alert_precision`: each labelled alert's verdict (true: confirmed) in the order the
    /// alerts started, for a gate's SPRT. Not part of the API's answer.
    #[serde(skip)]
    pub labels: Vec<bool>,
}

impl KpiMeasure {
    /// A measure that failed, with the reason.
    pub fn failed(error: String) -> Self {
        Self {
            value: None,
            evidence: 0.0,
            detail: String::new(),
            error: Some(error),
            labels: Vec::new(),
        }
    }
}

/// A KPI measured over a period, beside its baseline and target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KpiValue {
    /// The KPI's name.
    pub name: String,
    /// What it measures.
    pub kind: KpiKind,
    /// Its unit.
    pub unit: String,
    /// Which way it improves.
    pub better: Better,
    /// What `evidence` counts: `device-hours`, `rows` or `labelled alerts`.
    pub evidence_unit: String,
    /// The measure over the period.
    pub current: KpiMeasure,
    /// The measure over the baseline period, on the same devices.
    pub baseline: Option<KpiMeasure>,
    /// Relative change against the baseline, positive when better (0.25: 25 % better).
    pub improvement: Option<f64>,
    /// The value aimed for.
    pub target: Option<f64>,
    /// Whether the current value meets the target.
    pub target_met: Option<bool>,
}

impl KpiValue {
    /// Puts a KPI's measures together.
    pub fn of(kpi: &Kpi, current: KpiMeasure, baseline: Option<KpiMeasure>) -> Self {
        let better = kpi.better();
        let improvement = match (current.value, baseline.as_ref().and_then(|b| b.value)) {
            (Some(now), Some(before)) if before != 0.0 => {
                let change = (now - before) / before.abs();
                Some(match better {
                    Better::Lower => -change,
                    Better::Higher => change,
                })
            }
            _ => None,
        };
        let target_met = kpi
            .target
            .zip(current.value)
            .map(|(target, value)| match better {
                Better::Lower => value <= target,
                Better::Higher => value >= target,
            });
        Self {
            name: kpi.name.clone(),
            kind: kpi.kind,
            unit: kpi.unit(),
            better,
            evidence_unit: kpi.evidence_unit().to_owned(),
            current,
            baseline,
            improvement,
            target: kpi.target,
            target_met,
        }
    }
}

/// One criterion of a gate, judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GateCheck {
    /// The criterion, in words (`downtime ≤ 5`).
    pub criterion: String,
    /// What was measured for it.
    pub measured: Option<f64>,
    /// The unit of `measured`: `s` for time in the stage, the KPI's unit for its value,
    /// `fraction` for an improvement, the evidence's unit for evidence.
    pub unit: String,
    /// `measured` as people read it (`5 min 54 s`, `25 %`, `87 rows`, `nothing`).
    pub measured_text: String,
    /// Whether it holds.
    pub passed: bool,
}

/// A gate judged on the KPIs measured since the use case entered its stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GateReport {
    /// The stage it leaves.
    pub from: Stage,
    /// The stage it leads to.
    pub to: Stage,
    /// Whether every check holds (and there is one).
    pub passed: bool,
    /// Each bound of each criterion.
    pub checks: Vec<GateCheck>,
    /// The period measured (RFC 3339): from entering the stage until now.
    pub measured_from: String,
    /// End of the period measured.
    pub measured_to: String,
    /// The KPIs the checks read.
    pub kpis: Vec<KpiValue>,
}

/// Judges the gate out of `stage` (none past enterprise). A gate with no criteria does not
/// pass: promotion then takes a recorded decision to force it.
pub fn judge_gate(
    definition: &UseCaseDefinition,
    stage: Stage,
    stage_since_ns: i64,
    now_ns: i64,
    kpis: Vec<KpiValue>,
) -> Option<GateReport> {
    let to = stage.next()?;
    let mut checks = Vec::new();
    let by_name: BTreeMap<&str, &KpiValue> = kpis.iter().map(|k| (k.name.as_str(), k)).collect();
    for criterion in definition.gates.into_stage(to) {
        if let Some(time) = &criterion.time_in_stage_at_least {
            let need = fabrik_runtime::units::parse_duration(time)
                .map_or(f64::INFINITY, |d| d.as_secs_f64());
            let spent = (now_ns - stage_since_ns) as f64 / 1e9;
            checks.push(GateCheck {
                criterion: format!("time in {} ≥ {time}", stage.display()),
                measured: Some(spent),
                unit: "s".into(),
                measured_text: measured_text(Some(spent), "s"),
                passed: spent >= need,
            });
        }
        let Some(name) = &criterion.kpi else { continue };
        let value = by_name.get(name.as_str());
        let current = value.and_then(|v| v.current.value);
        let unit = value.map_or_else(String::new, |v| v.unit.clone());
        let evidence_unit = value.map_or_else(String::new, |v| v.evidence_unit.clone());
        let mut check =
            |text: String, measured: Option<f64>, unit: &str, holds: &dyn Fn(f64) -> bool| {
                checks.push(GateCheck {
                    criterion: text,
                    measured,
                    unit: unit.to_owned(),
                    measured_text: measured_text(measured, unit),
                    passed: measured.is_some_and(holds),
                });
            };
        if let Some(bound) = criterion.at_least {
            check(format!("{name} ≥ {bound}"), current, &unit, &|v| {
                v >= bound
            });
        }
        if let Some(bound) = criterion.at_most {
            check(format!("{name} ≤ {bound}"), current, &unit, &|v| {
                v <= bound
            });
        }
        if let Some(bound) = criterion.improvement_at_least {
            let improvement = value.and_then(|v| v.improvement);
            check(
                format!(
                    "{name} improved on the baseline by ≥ {}",
                    measured_text(Some(bound), "fraction")
                ),
                improvement,
                "fraction",
                &|v| v >= bound,
            );
        }
        if let Some(bound) = criterion.evidence_at_least {
            let evidence = value.map(|v| v.current.evidence);
            check(
                format!("{name} rests on ≥ {bound} {evidence_unit}"),
                evidence,
                &evidence_unit,
                &|v| v >= bound,
            );
        }
        if let Some(test) = &criterion.sprt {
            let labels = value.map_or(&[][..], |v| v.current.labels.as_slice());
            let mut sprt = sprt_check(name, test, labels);
            // A precision that could not be measured is not "undecided": say why.
            if let Some(error) = value.and_then(|v| v.current.error.as_deref()) {
                sprt.passed = false;
                sprt.measured = None;
                sprt.measured_text = format!("not measured: {error}");
            }
            checks.push(sprt);
        }
    }
    Some(GateReport {
        from: stage,
        to,
        passed: !checks.is_empty() && checks.iter().all(|c| c.passed),
        checks,
        measured_from: format_time(stage_since_ns),
        measured_to: format_time(now_ns),
        kpis,
    })
}

/// Runs a criterion's SPRT over the labelled alerts in the order they started: it holds once
/// the test decides for the good precision; deciding for the bad one, or not yet, fails it.
fn sprt_check(name: &str, test: &RateTest, labels: &[bool]) -> GateCheck {
    use fabrik_ml::sequential::{Decision, Sprt};
    let criterion = format!(
        "{name} is {} rather than {} (SPRT, α {}, β {})",
        test.good, test.bad, test.alpha, test.beta
    );
    let unit = "labelled alerts".to_owned();
    let mut sprt = match Sprt::new(test.bad, test.good, test.alpha, test.beta) {
        Ok(sprt) => sprt,
        Err(e) => {
            return GateCheck {
                criterion,
                measured: None,
                unit,
                measured_text: e.to_string(),
                passed: false,
            };
        }
    };
    for &confirmed in labels {
        if sprt.update(confirmed) != Decision::Continue {
            break;
        }
    }
    let n = sprt.observations();
    let (passed, measured_text) = match sprt.decision() {
        Decision::RejectNull => (true, format!("{} after {n} labelled alerts", test.good)),
        Decision::AcceptNull => (false, format!("{} after {n} labelled alerts", test.bad)),
        Decision::Continue => {
            let (lower, upper) = sprt.bounds();
            (
                false,
                format!(
                    "undecided after {n} labelled alerts (log-likelihood ratio {:.2}; {} at {:.2}, {} at {:.2})",
                    sprt.llr(),
                    test.good,
                    upper,
                    test.bad,
                    lower
                ),
            )
        }
    };
    GateCheck {
        criterion,
        measured: Some(n as f64),
        unit,
        measured_text,
        passed,
    }
}

/// A measured value with its unit, as people read it: seconds as a duration, a fraction as a
/// percentage, anything else as a number with its unit.
pub fn measured_text(measured: Option<f64>, unit: &str) -> String {
    let Some(value) = measured else {
        return "nothing".into();
    };
    match unit {
        "s" => {
            let mut left = value.max(0.0).floor() as u64;
            let mut parts = Vec::new();
            for (name, size) in [("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1)] {
                if left >= size || (name == "s" && parts.is_empty()) {
                    parts.push(format!("{} {name}", left / size));
                    left %= size;
                }
            }
            parts.truncate(2);
            parts.join(" ")
        }
        "fraction" => format!("{} %", round_for_display(value * 100.0)),
        "" => round_for_display(value),
        unit => format!("{} {unit}", round_for_display(value)),
    }
}

/// Four significant digits, no trailing zeros.
fn round_for_display(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return format!("{value}");
    }
    let digits = (4 - 1 - value.abs().log10().floor() as i32).max(0) as usize;
    let text = format!("{value:.digits$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// A recorded change of stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StageDecision {
    /// The use case.
    pub use_case: String,
    /// When (RFC 3339).
    pub time: String,
    /// The stage left.
    pub from: Stage,
    /// The stage entered.
    pub to: Stage,
    /// Who decided.
    pub actor: String,
    /// A promotion made although its gate did not pass.
    pub forced: bool,
    /// Why, in the decider's words.
    pub reason: String,
    /// The gate as judged when a promotion was decided (none for a step back, or for a stage
    /// a release set: its gate was judged where that decision was made).
    pub gate: Option<GateReport>,
}

/// What a stage change asks for, checked against the use case as it was read when it is
/// written.
#[derive(Debug, Clone)]
pub struct StageChange {
    /// The stage the decision was made on; the change fails if another got there first.
    pub from: Stage,
    /// When the use case entered that stage (RFC 3339), as read: a round trip through
    /// another stage meanwhile fails the change too.
    pub since: String,
    /// When the use case last changed (RFC 3339), as read: a redefinition meanwhile (other
    /// gate criteria) fails the change.
    pub updated_at: String,
    /// The stage to enter.
    pub to: Stage,
    /// Who decides.
    pub actor: String,
    /// Whether a failed gate is overridden.
    pub forced: bool,
    /// Why.
    pub reason: String,
    /// The gate as judged.
    pub gate: Option<GateReport>,
}

impl Registry {
    /// Stores a use case's definition: a new one starts in pilot, a changed one keeps its
    /// stage. Returns it and whether it is new.
    pub async fn put_use_case(
        &self,
        definition: UseCaseDefinition,
    ) -> Result<(UseCase, bool), RegistryError> {
        let problems = definition.problems();
        if !problems.is_empty() {
            return Err(RegistryError::Invalid(describe(&problems)));
        }
        let json = serde_json::to_string(&definition)
            .map_err(|e| RegistryError::Invalid(e.to_string()))?;
        let now = now_ns();
        let inserted = sqlx::query(
            "INSERT INTO use_cases (name, definition, stage, stage_since, created_at, updated_at) \
             VALUES ($1, $2, 'pilot', $3, $4, $5) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&definition.name)
        .bind(&json)
        .bind(now)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let created = inserted.rows_affected() == 1;
        if !created {
            sqlx::query("UPDATE use_cases SET definition = $1, updated_at = $2 WHERE name = $3")
                .bind(&json)
                .bind(now)
                .bind(&definition.name)
                .execute(&self.pool)
                .await?;
        }
        tracing::info!(use_case = %definition.name, created, "Use case defined.");
        Ok((self.use_case(&definition.name).await?, created))
    }

    /// One use case.
    pub async fn use_case(&self, name: &str) -> Result<UseCase, RegistryError> {
        let row = sqlx::query(
            "SELECT name, definition, stage, stage_since, created_at, updated_at FROM use_cases \
             WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| RegistryError::UseCaseNotFound(name.to_owned()))?;
        use_case_from_row(&row)
    }

    /// Every use case, by name.
    pub async fn use_cases(&self) -> Result<Vec<UseCase>, RegistryError> {
        sqlx::query(
            "SELECT name, definition, stage, stage_since, created_at, updated_at FROM use_cases \
             ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(use_case_from_row)
        .collect()
    }

    /// Forgets a use case; its decisions stay on record. Pipelines that name it then score
    /// no device.
    pub async fn remove_use_case(&self, name: &str) -> Result<(), RegistryError> {
        let gone = sqlx::query("DELETE FROM use_cases WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        if gone.rows_affected() == 0 {
            return Err(RegistryError::UseCaseNotFound(name.to_owned()));
        }
        tracing::info!(use_case = name, "Use case removed.");
        Ok(())
    }

    /// Moves a use case to another stage and records the decision, in one transaction. Fails
    /// with a conflict if it changed since it was read (`change.from`, `since`,
    /// `updated_at`).
    pub async fn change_stage(
        &self,
        name: &str,
        change: StageChange,
    ) -> Result<StageDecision, RegistryError> {
        let now = now_ns();
        let gate = change
            .gate
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| RegistryError::Invalid(e.to_string()))?;
        let since = parse_time(&change.since).map_err(RegistryError::Invalid)?;
        let updated = parse_time(&change.updated_at).map_err(RegistryError::Invalid)?;
        let mut tx = self.pool.begin().await?;
        // The update comes first: it takes the write lock before the next id is read.
        let moved = sqlx::query(
            "UPDATE use_cases SET stage = $1, stage_since = $2, updated_at = $3 \
             WHERE name = $4 AND stage = $5 AND stage_since = $6 AND updated_at = $7",
        )
        .bind(change.to.as_str())
        .bind(now)
        .bind(now)
        .bind(name)
        .bind(change.from.as_str())
        .bind(since)
        .bind(updated)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            drop(tx);
            let current = self.use_case(name).await?;
            return Err(RegistryError::Conflict(format!(
                "use case `{name}` changed while the decision was made (it is at {} since {}): \
                 look again",
                current.stage.display(),
                current.stage_since
            )));
        }
        // SQLite's write lock is already held; PostgreSQL's row lock covers only this use
        // case, so two changes of different ones would read the same last id.
        if self.dialect == crate::Dialect::Postgres {
            sqlx::query("LOCK TABLE use_case_decisions IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
        }
        // Plain SQL both SQLite and PostgreSQL take: no AUTOINCREMENT or SERIAL.
        let last: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM use_case_decisions")
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO use_case_decisions \
             (id, use_case, time, from_stage, to_stage, actor, forced, reason, gate) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(last.unwrap_or(0) + 1)
        .bind(name)
        .bind(now)
        .bind(change.from.as_str())
        .bind(change.to.as_str())
        .bind(&change.actor)
        .bind(i64::from(change.forced))
        .bind(&change.reason)
        .bind(gate)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(
            use_case = name,
            from = change.from.as_str(),
            to = change.to.as_str(),
            actor = %change.actor,
            forced = change.forced,
            "Use case changed stage."
        );
        Ok(StageDecision {
            use_case: name.to_owned(),
            time: format_time(now),
            from: change.from,
            to: change.to,
            actor: change.actor,
            forced: change.forced,
            reason: change.reason,
            gate: change.gate,
        })
    }

    /// A use case's stage decisions, oldest first (also those of a removed use case).
    pub async fn stage_decisions(&self, name: &str) -> Result<Vec<StageDecision>, RegistryError> {
        self.decisions_where("use_case", name).await
    }

    /// The stage decisions `actor` made, oldest first (a person's data, GDPR Art. 15).
    pub async fn stage_decisions_by(
        &self,
        actor: &str,
    ) -> Result<Vec<StageDecision>, RegistryError> {
        self.decisions_where("actor", actor).await
    }

    async fn decisions_where(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Vec<StageDecision>, RegistryError> {
        // Audited: `column` is one of the two constants above; the value is bound.
        let sql = format!(
            "SELECT use_case, time, from_stage, to_stage, actor, forced, reason, gate \
             FROM use_case_decisions WHERE {column} = $1 ORDER BY id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(value)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let gate: Option<String> = r.try_get("gate")?;
                Ok(StageDecision {
                    use_case: r.try_get("use_case")?,
                    time: format_time(r.try_get("time")?),
                    from: stage_of(&r.try_get::<String, _>("from_stage")?)?,
                    to: stage_of(&r.try_get::<String, _>("to_stage")?)?,
                    actor: r.try_get("actor")?,
                    forced: r.try_get::<i64, _>("forced")? != 0,
                    reason: r.try_get("reason")?,
                    gate: gate
                        .map(|g| serde_json::from_str(&g))
                        .transpose()
                        .map_err(|e| corrupt("gate", &e.to_string()))?,
                })
            })
            .collect()
    }

    /// The devices a use case's pipelines may score at its stage now: the pilot scope,
    /// widened by the scale-up scope at scale-up and by the enterprise scope at enterprise,
    /// where an empty enterprise scope is no limit (`None`).
    pub async fn use_case_devices(
        &self,
        name: &str,
    ) -> Result<(Stage, Option<Vec<String>>), RegistryError> {
        let use_case = self.use_case(name).await?;
        Ok((use_case.stage, self.stage_devices(&use_case).await?))
    }

    /// [`Registry::use_case_devices`] of a use case already read: the devices of the stage
    /// it was read at.
    pub async fn stage_devices(
        &self,
        use_case: &UseCase,
    ) -> Result<Option<Vec<String>>, RegistryError> {
        self.stage_devices_in(use_case, &[]).await
    }

    /// [`Registry::stage_devices`], the selectors also matched against `fleet`: the devices
    /// other nodes register, as a hub knows them (decision 0036). An id several nodes (this
    /// one included) register is selected only when every node's record of it matches.
    pub async fn stage_devices_in(
        &self,
        use_case: &UseCase,
        fleet: &[crate::FleetDevice],
    ) -> Result<Option<Vec<String>>, RegistryError> {
        let definition = &use_case.definition;
        let scopes: &[&DeviceScope] = match use_case.stage {
            Stage::Enterprise if definition.enterprise.is_empty() => return Ok(None),
            Stage::Pilot => &[&definition.pilot],
            Stage::ScaleUp => &[&definition.pilot, &definition.scale_up],
            Stage::Enterprise => &[
                &definition.pilot,
                &definition.scale_up,
                &definition.enterprise,
            ],
        };
        let mut all = BTreeSet::new();
        for scope in scopes {
            all.extend(self.scope_devices(scope, fleet).await?);
        }
        Ok(Some(all.into_iter().collect()))
    }

    async fn scope_devices(
        &self,
        scope: &DeviceScope,
        fleet: &[crate::FleetDevice],
    ) -> Result<Vec<String>, RegistryError> {
        let mut devices: BTreeSet<String> = scope.devices.iter().cloned().collect();
        if scope.has_selector() {
            let filter = DeviceFilter {
                site: scope.site.clone(),
                device_type: scope.device_type.clone(),
                state: None,
                label: scope.label.clone(),
            };
            if fleet.is_empty() {
                devices.extend(self.list(&filter).await?.into_iter().map(|d| d.id));
            } else {
                // This registry's devices are records like the fleet's: an id it and an edge
                // describe differently is in neither scope.
                let own = self.list(&DeviceFilter::default()).await?;
                let records: Vec<crate::FleetDevice> = own
                    .into_iter()
                    .map(|d| crate::FleetDevice {
                        node: String::new(),
                        id: d.id,
                        site: d.site,
                        device_type: d.device_type,
                        labels: d.labels,
                    })
                    .chain(fleet.iter().cloned())
                    .collect();
                devices.extend(fleet_matches(&filter, &records));
            }
        }
        Ok(devices.into_iter().collect())
    }
}

/// The ids of `fleet` whose every record matches `filter`: a device two nodes register with
/// different sites is in neither site's scope, since its rows could not be told apart.
fn fleet_matches(filter: &DeviceFilter, fleet: &[crate::FleetDevice]) -> Vec<String> {
    let mut verdicts: BTreeMap<&str, bool> = BTreeMap::new();
    for device in fleet {
        let matches = filter.matches(&device.site, &device.device_type, &device.labels);
        *verdicts.entry(device.id.as_str()).or_insert(true) &= matches;
    }
    verdicts
        .into_iter()
        .filter(|(_, matches)| *matches)
        .map(|(id, _)| id.to_owned())
        .collect()
}

/// `field: problem; field: problem`.
pub fn describe(problems: &[(String, String)]) -> String {
    problems
        .iter()
        .map(|(field, text)| format!("{field}: {text}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn corrupt(what: &str, detail: &str) -> RegistryError {
    RegistryError::Corrupt(format!(
        "stored use case has an unreadable {what}: {detail}"
    ))
}

fn stage_of(text: &str) -> Result<Stage, RegistryError> {
    text.parse().map_err(|e: String| corrupt("stage", &e))
}

fn use_case_from_row(row: &sqlx::any::AnyRow) -> Result<UseCase, RegistryError> {
    let json: String = row.try_get("definition")?;
    let definition: UseCaseDefinition =
        serde_json::from_str(&json).map_err(|e| corrupt("definition", &e.to_string()))?;
    Ok(UseCase {
        name: row.try_get("name")?,
        stage: stage_of(&row.try_get::<String, _>("stage")?)?,
        stage_since: format_time(row.try_get("stage_since")?),
        created_at: format_time(row.try_get("created_at")?),
        updated_at: format_time(row.try_get("updated_at")?),
        definition,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn definition() -> UseCaseDefinition {
        serde_json::from_value(serde_json::json!({
            "name": "pump-uptime",
            "objective": "Cut unplanned pump downtime by 20 %",
            "pilot": {"devices": ["pump-01"]},
            "scale_up": {"site": "plant-a"},
            "baseline": {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"},
            "kpis": [
                {"name": "downtime", "kind": "downtime", "table": "pump", "condition": "NOT running", "target": 5.0},
                {"name": "precision", "kind": "alert_precision", "rules": ["pump-anomaly"]}
            ],
            "gates": {"scale_up": [
                {"kpi": "downtime", "at_most": 5.0, "improvement_at_least": 0.2},
                {"kpi": "precision", "at_least": 0.8, "evidence_at_least": 10},
                {"time_in_stage_at_least": "14d"}
            ]}
        }))
        .unwrap()
    }

    fn measure(value: Option<f64>, evidence: f64) -> KpiMeasure {
        KpiMeasure {
            value,
            evidence,
            detail: String::new(),
            error: None,
            labels: Vec::new(),
        }
    }

    #[test]
    fn a_sound_definition_has_no_problems_and_each_fault_is_named() {
        assert_eq!(definition().problems(), Vec::new());
        let mut bad = definition();
        bad.objective = " ".into();
        bad.pilot = DeviceScope::default();
        bad.kpis[0].condition = None;
        bad.kpis[0].price_per_kwh = Some(0.2);
        bad.kpis[1].table = Some("alerts".into());
        bad.kpis.push(bad.kpis[1].clone());
        bad.gates.scale_up[0].kpi = Some("uptime".into());
        bad.gates.enterprise.push(GateCriterion::default());
        bad.baseline = None;
        let fields: Vec<String> = bad.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "objective",
                "pilot",
                "kpis[0].condition",
                "kpis[0].price_per_kwh",
                "kpis[1].table",
                "kpis[2].name",
                "kpis[2].table",
                "gates.scale_up[0].kpi",
                "gates.scale_up[0].improvement_at_least",
                "gates.enterprise[0].kpi",
            ]
        );
    }

    #[test]
    fn measured_values_read_with_their_units() {
        assert_eq!(measured_text(Some(354.9), "s"), "5 min 54 s");
        assert_eq!(measured_text(Some(90_061.0), "s"), "1 d 1 h");
        assert_eq!(measured_text(Some(0.25), "fraction"), "25 %");
        assert_eq!(measured_text(Some(87.0), "rows"), "87 rows");
        assert_eq!(measured_text(Some(0.833_333), ""), "0.8333");
        assert_eq!(measured_text(None, "rows"), "nothing");
    }

    #[test]
    fn improvement_is_signed_so_that_better_is_positive() {
        let definition = definition();
        let downtime = KpiValue::of(
            &definition.kpis[0],
            measure(Some(3.0), 100.0),
            Some(measure(Some(4.0), 100.0)),
        );
        assert_eq!(downtime.improvement, Some(0.25));
        assert_eq!(downtime.target_met, Some(true));
        let precision = KpiValue::of(
            &definition.kpis[1],
            measure(Some(0.9), 12.0),
            Some(measure(Some(0.6), 10.0)),
        );
        assert!((precision.improvement.unwrap() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn a_gate_passes_only_when_every_bound_holds() {
        let definition = definition();
        let day = 86_400_000_000_000_i64;
        let kpis = |downtime: f64, precision: f64, labelled: f64| {
            vec![
                KpiValue::of(
                    &definition.kpis[0],
                    measure(Some(downtime), 500.0),
                    Some(measure(Some(5.0), 500.0)),
                ),
                KpiValue::of(
                    &definition.kpis[1],
                    measure(Some(precision), labelled),
                    None,
                ),
            ]
        };
        let judge = |days: i64, k| judge_gate(&definition, Stage::Pilot, 0, days * day, k).unwrap();
        let passing = judge(15, kpis(3.5, 0.85, 12.0));
        assert!(passing.passed, "{passing:?}");
        assert_eq!(passing.checks.len(), 5);
        assert_eq!(passing.to, Stage::ScaleUp);
        // Each bound on its own fails the gate.
        assert!(!judge(13, kpis(3.5, 0.85, 12.0)).passed);
        assert!(!judge(15, kpis(4.5, 0.85, 12.0)).passed, "improvement 10 %");
        assert!(!judge(15, kpis(3.5, 0.75, 12.0)).passed);
        assert!(!judge(15, kpis(3.5, 0.85, 9.0)).passed);
        // A KPI with nothing measured fails its bounds.
        let mut unmeasured = kpis(3.5, 0.85, 12.0);
        unmeasured[1].current.value = None;
        assert!(!judge(15, unmeasured).passed);
        // No gate out of enterprise; an empty gate never passes.
        assert!(judge_gate(&definition, Stage::Enterprise, 0, day, vec![]).is_none());
        let empty = judge_gate(&definition, Stage::ScaleUp, 0, day, vec![]).unwrap();
        assert!(!empty.passed && empty.checks.is_empty());
    }

    fn sprt_definition() -> UseCaseDefinition {
        let mut definition = definition();
        definition.gates.scale_up = vec![GateCriterion {
            kpi: Some("precision".into()),
            sprt: Some(RateTest {
                good: 0.8,
                bad: 0.6,
                alpha: 0.05,
                beta: 0.2,
            }),
            ..GateCriterion::default()
        }];
        definition
    }

    #[test]
    fn an_sprt_criterion_holds_once_the_labels_in_order_favour_the_good_precision() {
        let definition = sprt_definition();
        let judge = |labels: Vec<bool>| {
            let confirmed = labels.iter().filter(|&&c| c).count() as f64;
            let mut current = measure(
                (!labels.is_empty()).then(|| confirmed / labels.len() as f64),
                labels.len() as f64,
            );
            current.labels = labels;
            let kpis = vec![KpiValue::of(&definition.kpis[1], current, None)];
            let report = judge_gate(&definition, Stage::Pilot, 0, 1, kpis).unwrap();
            assert_eq!(report.checks.len(), 1);
            report.checks[0].clone()
        };
        // Each confirmed alert adds ln(0.8/0.6) = 0.288 to the log-likelihood ratio, which
        // decides for 0.8 at ln(0.8/0.05) = 2.77: on the tenth.
        let passed = judge(vec![true; 12]);
        assert!(passed.passed, "{passed:?}");
        assert_eq!(passed.measured, Some(10.0));
        assert_eq!(passed.measured_text, "0.8 after 10 labelled alerts");
        assert_eq!(
            passed.criterion,
            "precision is 0.8 rather than 0.6 (SPRT, α 0.05, β 0.2)"
        );
        // Three false alarms first decide for 0.6 (ln(0.2/0.95) = -1.56); what follows is
        // not read, though the precision over all of them is 0.87.
        let mut labels = vec![false; 3];
        labels.extend([true; 20]);
        let failed = judge(labels);
        assert!(!failed.passed);
        assert_eq!(failed.measured_text, "0.6 after 3 labelled alerts");
        // Too few either way.
        let undecided = judge(vec![true, false, true, true]);
        assert!(!undecided.passed);
        assert!(
            undecided
                .measured_text
                .starts_with("undecided after 4 labelled alerts"),
            "{undecided:?}"
        );
        assert!(!judge(Vec::new()).passed);
        // A precision that could not be measured says why.
        let mut failed = KpiMeasure::failed("needs the alerts module".into());
        failed.labels = vec![true; 12];
        let kpis = vec![KpiValue::of(&definition.kpis[1], failed, None)];
        let report = judge_gate(&definition, Stage::Pilot, 0, 1, kpis).unwrap();
        assert!(!report.passed);
        assert_eq!(
            report.checks[0].measured_text,
            "not measured: needs the alerts module"
        );
    }

    #[test]
    fn a_fleet_device_is_selected_only_when_every_node_agrees() {
        let device =
            |node: &str, id: &str, site: &str, label: Option<(&str, &str)>| crate::FleetDevice {
                node: node.into(),
                id: id.into(),
                site: site.into(),
                device_type: "pump".into(),
                labels: label
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .into_iter()
                    .collect(),
            };
        let fleet = [
            device("line-1", "pump-a", "plant-a", Some(("line", "1"))),
            device("line-1", "pump-b", "plant-b", None),
            device("line-2", "pump-c", "plant-a", None),
            // The same id on two nodes, at two sites.
            device("line-1", "pump-x", "plant-a", None),
            device("line-2", "pump-x", "plant-b", None),
        ];
        let filter = |site: Option<&str>, label: Option<&str>| DeviceFilter {
            site: site.map(str::to_owned),
            label: label.map(str::to_owned),
            ..DeviceFilter::default()
        };
        assert_eq!(
            fleet_matches(&filter(Some("plant-a"), None), &fleet),
            ["pump-a", "pump-c"]
        );
        assert_eq!(
            fleet_matches(&filter(None, Some("line=1")), &fleet),
            ["pump-a"]
        );
        assert_eq!(
            fleet_matches(&filter(None, Some("line")), &fleet),
            ["pump-a"]
        );
        assert!(fleet_matches(&filter(Some("plant-c"), None), &fleet).is_empty());
    }

    #[test]
    fn an_sprt_criterion_needs_a_precision_kpi_and_sound_rates() {
        assert_eq!(sprt_definition().problems(), Vec::new());
        let mut bad = sprt_definition();
        bad.gates.scale_up[0].kpi = Some("downtime".into());
        let mut rates = bad.gates.scale_up[0].clone();
        rates.kpi = Some("precision".into());
        if let Some(test) = rates.sprt.as_mut() {
            test.good = 1.5;
            test.bad = 1.5;
            test.beta = 0.0;
        }
        bad.gates.enterprise.push(rates);
        // Backwards for a precision (higher is better), and error rates no evidence meets.
        let mut backwards = bad.gates.scale_up[0].clone();
        backwards.kpi = Some("precision".into());
        if let Some(test) = backwards.sprt.as_mut() {
            (test.good, test.bad, test.alpha, test.beta) = (0.6, 0.8, 0.5, 0.5);
        }
        bad.gates.enterprise.push(backwards);
        let fields: Vec<String> = bad.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "gates.scale_up[0].sprt",
                "gates.enterprise[0].sprt.good",
                "gates.enterprise[0].sprt.bad",
                "gates.enterprise[0].sprt.bad",
                "gates.enterprise[0].sprt.beta",
                "gates.enterprise[1].sprt.bad",
                "gates.enterprise[1].sprt.beta",
            ]
        );
        // A criterion without an SPRT carries no `sprt` key, so definitions released to
        // nodes that predate it still read.
        let json = serde_json::to_value(definition()).expect("json");
        assert!(json["gates"]["scale_up"][0].get("sprt").is_none(), "{json}");
    }
}

#[cfg(test)]
mod stored {
    use super::tests::definition;
    use super::*;
    use crate::NewDevice;

    async fn registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Registry::open(&dir.path().join("registry.db"))
            .await
            .expect("open");
        for (id, site) in [
            ("pump-01", "plant-a"),
            ("pump-02", "plant-a"),
            ("pump-09", "plant-b"),
        ] {
            let device = NewDevice {
                id: id.into(),
                site: Some(site.into()),
                ..NewDevice::default()
            };
            registry.add(device).await.expect("add");
        }
        (dir, registry)
    }

    async fn change(registry: &Registry, from: Stage, to: Stage) -> StageChange {
        let read = registry.use_case("pump-uptime").await.expect("read");
        StageChange {
            from,
            since: read.stage_since,
            updated_at: read.updated_at,
            to,
            actor: "admin".into(),
            forced: false,
            reason: "pilot met its KPIs".into(),
            gate: None,
        }
    }

    #[tokio::test]
    async fn a_hub_adds_its_fleets_devices_where_every_record_agrees() {
        let (_dir, registry) = registry().await;
        registry.put_use_case(definition()).await.expect("put");
        let promote = change(&registry, Stage::Pilot, Stage::ScaleUp).await;
        registry
            .change_stage("pump-uptime", promote)
            .await
            .expect("promote");
        let use_case = registry.use_case("pump-uptime").await.expect("read");
        let edge = |id: &str, site: &str| crate::FleetDevice {
            node: "line-1".into(),
            id: id.into(),
            site: site.into(),
            device_type: String::new(),
            labels: BTreeMap::new(),
        };
        // An edge's pump at plant-a joins; pump-02, which this registry puts at plant-a and
        // the edge at plant-b, is in neither scope; pump-01 stays as the pilot lists it.
        let fleet = [edge("pump-20", "plant-a"), edge("pump-02", "plant-b")];
        let devices = registry
            .stage_devices_in(&use_case, &fleet)
            .await
            .expect("devices");
        assert_eq!(
            devices,
            Some(vec!["pump-01".to_owned(), "pump-20".to_owned()])
        );
        assert_eq!(
            registry.stage_devices(&use_case).await.expect("devices"),
            Some(vec!["pump-01".to_owned(), "pump-02".to_owned()])
        );
    }

    #[tokio::test]
    async fn each_stage_widens_the_devices_and_every_change_is_on_record() {
        let (_dir, registry) = registry().await;
        let (use_case, created) = registry.put_use_case(definition()).await.expect("put");
        assert!(created);
        assert_eq!(use_case.stage, Stage::Pilot);
        let devices = |r: &Registry| {
            let r = r.clone();
            async move { r.use_case_devices("pump-uptime").await.expect("devices") }
        };
        assert_eq!(
            devices(&registry).await,
            (Stage::Pilot, Some(vec!["pump-01".to_owned()]))
        );
        let promote = change(&registry, Stage::Pilot, Stage::ScaleUp).await;
        registry
            .change_stage("pump-uptime", promote.clone())
            .await
            .expect("promote");
        // The pilot's device stays; the site adds the other pump of plant-a only.
        assert_eq!(
            devices(&registry).await,
            (
                Stage::ScaleUp,
                Some(vec!["pump-01".to_owned(), "pump-02".to_owned()])
            )
        );
        // Redefining keeps the stage.
        let mut changed = definition();
        changed.owner = "maintenance".into();
        let (again, created) = registry.put_use_case(changed).await.expect("redefine");
        assert!(!created);
        assert_eq!(again.stage, Stage::ScaleUp);
        assert_eq!(again.definition.owner, "maintenance");
        // A change decided on what it was before is refused and not recorded: from a stage
        // it is no longer at, or from the stage it is at but read before a redefinition.
        let stale = registry.change_stage("pump-uptime", promote).await;
        assert!(
            matches!(stale, Err(RegistryError::Conflict(_))),
            "{stale:?}"
        );
        let mut outdated = change(&registry, Stage::ScaleUp, Stage::Enterprise).await;
        outdated.updated_at = format_time(parse_time(&outdated.updated_at).unwrap() - 1);
        let refused = registry.change_stage("pump-uptime", outdated).await;
        assert!(
            matches!(refused, Err(RegistryError::Conflict(_))),
            "{refused:?}"
        );
        let promote = change(&registry, Stage::ScaleUp, Stage::Enterprise).await;
        registry
            .change_stage("pump-uptime", promote)
            .await
            .expect("promote");
        assert_eq!(devices(&registry).await, (Stage::Enterprise, None));
        // An enterprise scope limits enterprise too: every scope so far, and plant-b's pump.
        let mut bounded = definition();
        bounded.enterprise.site = Some("plant-b".into());
        registry.put_use_case(bounded).await.expect("redefine");
        assert_eq!(
            devices(&registry).await,
            (
                Stage::Enterprise,
                Some(vec![
                    "pump-01".to_owned(),
                    "pump-02".to_owned(),
                    "pump-09".to_owned()
                ])
            )
        );
        let decisions = registry
            .stage_decisions("pump-uptime")
            .await
            .expect("decisions");
        let steps: Vec<(Stage, Stage)> = decisions.iter().map(|d| (d.from, d.to)).collect();
        assert_eq!(
            steps,
            [
                (Stage::Pilot, Stage::ScaleUp),
                (Stage::ScaleUp, Stage::Enterprise)
            ]
        );
        // Removed, its pipelines have no devices to score, and the record stays.
        registry
            .remove_use_case("pump-uptime")
            .await
            .expect("remove");
        assert!(matches!(
            registry.use_case_devices("pump-uptime").await,
            Err(RegistryError::UseCaseNotFound(_))
        ));
        assert_eq!(
            registry.stage_decisions("pump-uptime").await.unwrap().len(),
            2
        );
    }

    #[tokio::test]
    async fn a_faulty_definition_is_refused_naming_its_fields() {
        let (_dir, registry) = registry().await;
        let mut bad = definition();
        bad.kpis[0].max_gap = "soon".into();
        let refused = registry.put_use_case(bad).await;
        match refused {
            Err(RegistryError::Invalid(text)) => {
                assert!(text.starts_with("kpis[0].max_gap: "), "{text}")
            }
            other => panic!("{other:?}"),
        }
        assert!(registry.use_cases().await.unwrap().is_empty());
    }
}
