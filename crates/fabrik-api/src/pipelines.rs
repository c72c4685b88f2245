//! `/api/v1/pipelines`: the inference pipelines of this process, how each is doing, and
//! defining, replacing and removing them at run time.
//!
//! Owns the shared [`PipelineBoard`] the pipeline runner writes and the handlers read, and the
//! [`PipelineControl`] interface the pipelines module implements; the inferences themselves
//! are rows of the `inferences` table, queried with SQL.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::extract::Query;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use fabrik_runtime::config::PipelineConfig;
use futures::future::BoxFuture;
use parking_lot::RwLock;
use serde::Serialize;
use utoipa::ToSchema;

use crate::ApiState;
pub use crate::control::{ApplyParams, ControlError, DryRun, describe_problems};
use crate::control::{created_or_replaced, named_definition};
use crate::error::ApiError;

/// Where a pipeline was defined, which decides who may change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PipelineOrigin {
    /// A `[[pipelines]]` entry of the configuration file: changed there, not through the API.
    Config,
    /// Defined through the API; kept in the data directory across restarts.
    Api,
    /// The demo plant's pipeline (`fabrik run --demo` without configured pipelines).
    Demo,
}

/// What a pipeline is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PipelineState {
    /// Reading data and scoring windows.
    Running,
    /// Disabled in the configuration, or stopped with the process.
    Stopped,
    /// Could not load or keeps failing; `error` says why.
    Failed,
}

/// One pipeline's definition and live counters.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PipelineStatus {
    /// Unique name.
    pub name: String,
    /// Where it was defined.
    pub origin: PipelineOrigin,
    /// Its state.
    pub state: PipelineState,
    /// Why it failed, or the last transient problem (e.g. its table does not exist yet).
    pub error: Option<String>,
    /// Input table.
    pub table: String,
    /// The SQL condition rows must meet to enter windows, if any.
    pub filter: Option<String>,
    /// Input signals.
    pub signals: Vec<String>,
    /// Model name.
    pub model: String,
    /// Model inputs, `signal.feature`, in order.
    pub features: Vec<String>,
    /// Window, as configured.
    pub window: String,
    /// Threshold, as configured.
    pub threshold: String,
    /// Devices seen.
    pub devices: u64,
    /// Devices still learning their normal.
    pub training_devices: u64,
    /// Windows closed.
    pub windows: u64,
    /// Windows skipped for missing samples.
    pub incomplete_windows: u64,
    /// Inferences written.
    pub inferences: u64,
    /// Inferences flagged anomalous.
    pub anomalies: u64,
    /// Samples read.
    pub samples: u64,
    /// Data is complete up to this time (RFC 3339), if the pipeline has run.
    pub horizon: Option<String>,
    /// The shadow model's last problem (it failed to load, to fit or to score a window, or
    /// its verdicts were not stored); never the pipeline's `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_error: Option<String>,
    /// The definition as applied, every field (defaults filled in): what a change replaces.
    pub definition: PipelineConfig,
    /// In the answer to a `PUT` only: what would keep it from working as applied (the
    /// dry run's warnings: input not written yet, a model not uploaded, a selection that
    /// matches no device, too few training windows).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One feature's part in a drift check.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct FeatureDriftStatus {
    /// `signal.feature`.
    pub feature: String,
    /// The test used: `ks`, `wasserstein`, `psi`, `jensenshannon`, `kl_div`, `hellinger`,
    /// `chisquare`, `z`, or `reconstruction` (all features together).
    pub method: String,
    /// Its p-value (`ks`, `chisquare`, `z`), distance (the others), or for `reconstruction`
    /// the feature's mean absolute residual (standardised), judged against its reference
    /// chunks' mean + threshold × standard deviation.
    pub score: f64,
    /// The threshold it was judged against.
    pub threshold: f64,
    /// Whether the feature drifted.
    pub drifted: bool,
}

/// A device's latest drift check: its last `windows` windows against the windows its model
/// learnt from.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct DriftStatus {
    /// The device.
    pub device: String,
    /// Whether at least the configured share of features drifted (by `reconstruction`:
    /// whether the reconstruction error left its thresholds; `model_drift` holds its
    /// numbers).
    pub dataset_drift: bool,
    /// The share of features that drifted.
    pub drifted_share: f64,
    /// The features that drifted, most drifted first.
    pub drifted_features: Vec<String>,
    /// Drifted checks in a row, this one included.
    pub consecutive: u64,
    /// Whether the device then learnt afresh from the windows checked.
    pub retrained: bool,
    /// Windows checked.
    pub windows: u64,
    /// How many of them were flagged anomalous.
    pub anomalies: u64,
    /// Windows the model learnt from (the reference).
    pub reference_windows: u64,
    /// Start of the first reference window (RFC 3339).
    pub reference_from: String,
    /// End of the last reference window.
    pub reference_until: String,
    /// Start of the first window checked.
    pub current_from: String,
    /// End of the last window checked: when the check was made, in data time.
    pub current_until: String,
    /// The model version that scored the windows checked.
    pub model_version: String,
    /// Every feature's test, in the pipeline's feature order.
    pub features: Vec<FeatureDriftStatus>,
}

/// A pipeline's classifier performance, estimated from its probabilities (NannyML's CBPE) in
/// chunks of scored windows, beside the realized values where outcomes arrived
/// (`[pipelines.performance]`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct PerformanceReport {
    /// The pipeline.
    pub pipeline: String,
    /// The model version estimated (the latest that scored windows); none before one did.
    pub model_version: Option<String>,
    /// Scored windows per chunk.
    pub chunk: u32,
    /// The probability from which the classifier's prediction is positive.
    pub decision_threshold: f64,
    /// The metrics estimated.
    pub metrics: Vec<String>,
    /// What the estimator was fitted on; none until enough windows have outcomes.
    pub reference: Option<PerformanceReference>,
    /// The whole chunks of windows scored after the reference, oldest first (the latest 200).
    pub chunks: Vec<PerformanceChunk>,
    /// Windows scored after the last whole chunk: estimated once the chunk is full.
    pub pending: u64,
    /// Why there is no estimate (not enough outcomes yet, or what the fit refused), or why
    /// a chunk or the realized values are missing.
    pub problem: Option<String>,
}

/// The reference of a performance estimate: the first chunks of windows with outcomes.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct PerformanceReference {
    /// Start of its first window, ns.
    pub from: i64,
    /// End of its last window, ns.
    pub until: i64,
    /// Windows in it (all with outcomes).
    pub windows: u64,
    /// Windows scored over its span, with and without outcomes: the share with outcomes is
    /// `windows / span_windows`.
    pub span_windows: u64,
    /// Their positive outcomes.
    pub positives: u64,
    /// Whether the scores are calibrated (isotonic) before estimating: only where it
    /// lowered the calibration error on held-out reference rows.
    pub calibrated: bool,
    /// Per metric: the alert thresholds, the reference chunks' realized mean ± 3σ.
    pub metrics: Vec<ReferenceMetric>,
    /// When the reference was fixed (ns): found the first time it could be fitted, it stays
    /// the same windows and outcomes from then on (outcomes that arrive later for earlier
    /// windows, or retention, do not move it) until the model version or the section's
    /// `chunk`, `reference_chunks`, `targets`, `target` or `device_column` change.
    #[serde(default)]
    pub fixed_at: i64,
    /// Start (ns) of the windows it was looked for among, when a new reference was asked for
    /// from a time (`POST …/performance/reference`); absent: from the model version's first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub searched_from: Option<i64>,
}

/// A metric on the reference.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct ReferenceMetric {
    /// The metric.
    pub metric: String,
    /// Below this the estimate alerts (none where it would be under 0).
    pub lower_threshold: Option<f64>,
    /// Above this the estimate alerts (none where it would be over 1).
    pub upper_threshold: Option<f64>,
}

/// One chunk of scored windows after the reference.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct PerformanceChunk {
    /// Its position after the reference (0: the first chunk after it).
    pub index: u64,
    /// Start of its first window, ns.
    pub from: i64,
    /// End of its last window, ns.
    pub until: i64,
    /// Windows in it.
    pub windows: u64,
    /// Of those, the ones whose outcome arrived.
    pub with_outcomes: u64,
    /// Per metric.
    pub estimates: Vec<MetricEstimate>,
}

/// One metric on one chunk.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct MetricEstimate {
    /// The metric.
    pub metric: String,
    /// Estimated from the model's (calibrated) probabilities.
    pub estimated: f64,
    /// The estimate's standard error at the chunk's size.
    pub sampling_error: f64,
    /// The estimate is outside the reference's thresholds.
    pub alert: bool,
    /// Computed from the outcomes on the chunk's windows that have one, when at least half do;
    /// none otherwise, or where the metric is undefined (one class).
    pub realized: Option<f64>,
}

/// How a pipeline's challenger (its `shadow` model) did against its model (the champion) on
/// the windows both scored, and on the windows operators labelled through alert feedback.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct ShadowComparison {
    /// The pipeline.
    pub pipeline: String,
    /// The champion's model tag (as the `model` column of `inferences`).
    pub champion: String,
    /// The challenger's model tag (as the `model` column of `shadow_inferences`).
    pub challenger: String,
    /// The champion's model version compared (the latest paired with the challenger's); none
    /// before a window was scored by both.
    pub champion_version: Option<String>,
    /// The challenger's model version compared.
    pub challenger_version: Option<String>,
    /// The comparison covers the last this many days.
    pub days: u32,
    /// Windows both models scored.
    pub windows: u64,
    /// Windows this challenger version scored that the champion did not score beside it (a
    /// device the champion was still learning, or count windows that start elsewhere after
    /// the champion restored a saved span); not in the other counts.
    pub unpaired: u64,
    /// Of those, the ones the champion flagged.
    pub champion_flags: u64,
    /// ... the challenger flagged.
    pub challenger_flags: u64,
    /// ... both flagged.
    pub both_flagged: u64,
    /// The share of windows with the same verdict (none without windows).
    pub agreement: Option<f64>,
    /// Of the windows both scored, those on devices the challenger was live on (an A/B
    /// split, `live_share` or `live_devices`): its verdicts were the pipeline's there.
    pub live_windows: u64,
    /// Windows both versions scored that started alerts operators confirmed (feedback
    /// `true_positive`), counted where the alert rule's context names the pipeline; a window
    /// two rules alerted on once, confirmed if either alert was. The alerts are the
    /// champion's, and on the devices of an A/B split the challenger's.
    pub confirmed: u64,
    /// Of those, the ones the challenger flagged: faults it caught or would have caught.
    pub confirmed_flagged_by_challenger: u64,
    /// ... the champion flagged (all of them without an A/B split).
    pub confirmed_flagged_by_champion: u64,
    /// Windows that started alerts operators called false (feedback `false_positive`).
    pub false_alarms: u64,
    /// Of those, the ones the challenger flagged: false alarms it raised or would have.
    pub false_alarms_flagged_by_challenger: u64,
    /// ... the champion flagged (all of them without an A/B split).
    pub false_alarms_flagged_by_champion: u64,
    /// Whether those labelled windows decide between the two models yet.
    pub decision: ShadowDecision,
    /// With an A/B split, the two arms side by side: what each model did where it acted,
    /// and whether their alert rates and precisions differ beyond what the assignment of
    /// devices to arms would give by chance; `None` unless both arms have windows.
    #[serde(default)]
    pub arms: Option<ShadowArms>,
    /// Per device.
    pub devices: Vec<ShadowDevice>,
}

/// The two arms of an A/B split: the challenger where it was live, the champion elsewhere.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct ShadowArms {
    /// Where the challenger's verdicts were the pipeline's.
    pub challenger: ShadowArm,
    /// Where the champion's were.
    pub champion: ShadowArm,
    /// Alerts (flagged windows) per window, the challenger's arm against the champion's.
    pub alert_rate: ArmDifference,
    /// Confirmed among labelled alerts, the challenger's arm against the champion's.
    pub precision: ArmDifference,
    /// The KPIs of the pipeline's use case (`use_case`) measured from tables — downtime,
    /// energy cost, aggregates — on each device over the runs of windows each model acted
    /// on, the arms' pooled values compared over devices the same way. Empty without a use
    /// case.
    #[serde(default)]
    pub kpis: Vec<ArmKpi>,
    /// Why the use case's KPIs could not be compared at all (its definition unreadable, the
    /// runs not queried); the rest of the comparison stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kpi_error: Option<String>,
}

/// One use-case KPI in each arm of an A/B split.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct ArmKpi {
    /// The KPI's name in the use case.
    pub name: String,
    /// Its unit (`%`, a currency per device-day, the definition's own; empty for an
    /// aggregate without one).
    pub unit: String,
    /// Which way it improves: `lower` or `higher`.
    pub better: fabrik_registry::usecases::Better,
    /// The challenger's arm's value: each device's value where the challenger acted, pooled
    /// by the evidence it rests on (observed hours, rows) for shares, rates, means and
    /// percentiles, averaged for extremes and totals.
    pub challenger: Option<f64>,
    /// Devices measured in the challenger's arm.
    pub challenger_devices: u64,
    /// The same for the champion.
    pub champion: Option<f64>,
    /// Devices measured in the champion's arm.
    pub champion_devices: u64,
    /// Challenger's value minus champion's, and its permutation test over devices.
    pub comparison: ArmDifference,
    /// Whether the difference goes the KPI's better way (`None`: no difference); a
    /// direction, not a verdict: read it with `comparison.p_value`.
    pub challenger_better: Option<bool>,
    /// Why this KPI, or some device's run, could not be measured (its table not written yet,
    /// a column missing, more runs than a reading measures): the first such reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An A/B split's arms compared on its use case's KPIs over one interval of the KPI series
/// (decision 0072).
#[derive(Debug, Clone, PartialEq)]
pub struct IntervalArmKpis {
    /// The pipeline.
    pub pipeline: String,
    /// The use case it names.
    pub use_case: String,
    /// The champion's and the challenger's model tags (`model` of their inferences).
    pub champion: String,
    pub challenger: String,
    /// The versions compared: the latest pair with windows in the interval; `None` when none
    /// had.
    pub champion_version: Option<String>,
    pub challenger_version: Option<String>,
    /// Each KPI compared (none without windows in the interval, or while the use case is not
    /// defined), or why they could not be.
    pub kpis: Result<Vec<ArmKpi>, String>,
}

/// What one model did on the devices (and windows) where it acted.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct ShadowArm {
    /// Devices with windows in this arm (a device moved between arms is in both).
    pub devices: u64,
    /// Windows it acted on.
    pub windows: u64,
    /// Of those, the ones it flagged: its alerts.
    pub alerts: u64,
    /// `alerts / windows`.
    pub alert_rate: Option<f64>,
    /// Its alerts that operators labelled (in the period).
    pub labelled: u64,
    /// Of those, the ones they confirmed.
    pub confirmed: u64,
    /// `confirmed / labelled`.
    pub precision: Option<f64>,
}

/// The challenger's arm minus the champion's, and a permutation test of it over devices.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct ArmDifference {
    /// Challenger's rate minus champion's; `None` when an arm has nothing to count.
    pub difference: Option<f64>,
    /// Two-sided: the share of assignments of the same devices to arms of the same sizes
    /// whose rates differ at least as much. Devices, not windows, are the units, because the
    /// split assigns devices and a device's windows are not independent. Two devices can
    /// never show a difference (p = 1).
    pub p_value: Option<f64>,
    /// Assignments weighed.
    pub permutations: u64,
    /// Whether those were all of them (else a seeded random sample).
    pub exact: bool,
}

/// What a [`ShadowDecision`] concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShadowVerdict {
    /// Not enough labelled windows to tell the two apart at the test's level.
    Undecided,
    /// The challenger would have been right on significantly more labelled windows.
    ChallengerBetter,
    /// The challenger would have been wrong on significantly more.
    ChampionBetter,
}

/// A sequential test on every labelled window of the compared pair of versions, from its
/// first, in time order (not only those of the period shown: a test whose start moved would
/// be a new test at each reading). On each a model was right if its verdict matches the
/// operators' (flagged a confirmed fault, or left a false alarm alone). A mixture SPRT on the
/// paired differences decides with an always-valid p-value: reading this on every visit keeps
/// the chance of a verdict where the two are equally right near `alpha`. It stops at the
/// first window where the p-value reaches `alpha`. Labels exist only where the acting model
/// alerted: the champion's, so a missed fault weighs as much as an avoided false alarm and a
/// challenger that flags less can win (see `challenger_missed`); with an A/B split also the
/// challenger's on its devices, where the faults only it caught are labelled too.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct ShadowDecision {
    /// The conclusion.
    pub verdict: ShadowVerdict,
    /// The test: `mSPRT` (normal mixture, paired).
    pub test: String,
    /// Its level: the highest acceptable chance of a verdict where the two are equally right.
    pub alpha: f64,
    /// The mixing variance: the squared size of the differences it is tuned to find.
    pub tau2: f64,
    /// Labelled windows tested (up to the deciding one).
    pub windows: u64,
    /// Of those, the ones the champion was right on.
    pub champion_right: u64,
    /// ... and the challenger.
    pub challenger_right: u64,
    /// ... and the confirmed faults the challenger did not flag.
    pub challenger_missed: u64,
    /// ... and those the champion did not flag (only on the devices of an A/B split).
    pub champion_missed: u64,
    /// The challenger's share right minus the champion's (none without windows).
    pub difference: Option<f64>,
    /// The always-valid p-value (1 before there is evidence).
    pub p_value: f64,
    /// When decided: the time of the labelled window it decided at (RFC 3339, UTC), which may
    /// be earlier than when a label made it so.
    pub decided_at: Option<String>,
}

/// One device's part of a [`ShadowComparison`].
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct ShadowDevice {
    /// The device.
    pub device: String,
    /// Windows both models scored.
    pub windows: u64,
    /// The champion flagged.
    pub champion_flags: u64,
    /// The challenger flagged.
    pub challenger_flags: u64,
    /// Both flagged.
    pub both_flagged: u64,
    /// Of its windows, those on which the challenger was live (an A/B split).
    pub live_windows: u64,
    /// Of its live windows, those the challenger flagged: its alerts there.
    #[serde(default)]
    pub live_flags: u64,
    /// Of its other windows, those the champion flagged: its alerts there.
    #[serde(default)]
    pub champion_acted_flags: u64,
}

/// The pipelines of this process, by name; written by the runner, read by the API.
pub type PipelineBoard = Arc<RwLock<BTreeMap<String, PipelineStatus>>>;

/// Defines, replaces and removes pipelines while the process runs; the pipelines module
/// implements it. A change is stored before it takes effect, so it survives a restart.
pub trait PipelineControl: Send + Sync {
    /// Checks `config`, stores it, and starts it, replacing (stopping first) a pipeline of the
    /// same name that was defined through the API. Returns whether it is new.
    fn apply(&self, config: PipelineConfig) -> BoxFuture<'_, Result<bool, ControlError>>;
    /// Applies several definitions together: all are checked first, then all are stored and
    /// started, or none is. Returns, per definition, whether it is new.
    fn apply_all(
        &self,
        configs: Vec<PipelineConfig>,
    ) -> BoxFuture<'_, Result<Vec<bool>, ControlError>>;
    /// Checks `config` as [`PipelineControl::apply`] would, changing nothing: what would
    /// happen, and what would keep it from scoring.
    fn check(&self, config: PipelineConfig) -> BoxFuture<'_, Result<DryRun, ControlError>>;
    /// Checks several definitions as [`PipelineControl::apply_all`] would, changing nothing.
    fn check_all(
        &self,
        configs: Vec<PipelineConfig>,
    ) -> BoxFuture<'_, Result<Vec<DryRun>, ControlError>>;
    /// Stops a pipeline defined through the API and forgets it.
    fn remove(&self, name: String) -> BoxFuture<'_, Result<(), ControlError>>;
    /// Restarts pipeline `name` with every device training afresh on the stored history
    /// before now, instead of on its saved training span (a model that learnt a fault).
    fn retrain(&self, name: String) -> BoxFuture<'_, Result<(), ControlError>>;
    /// Each device's latest drift check of pipeline `name` (from the `model_drift` table).
    fn drift(&self, name: String) -> BoxFuture<'_, Result<Vec<DriftStatus>, ControlError>>;
    /// How pipeline `name`'s shadow model compares with its model over the last `days` days,
    /// its sequential test at level `alpha`.
    fn shadow(
        &self,
        name: String,
        days: u32,
        alpha: f64,
    ) -> BoxFuture<'_, Result<ShadowComparison, ControlError>>;
    /// Every A/B split of a pipeline that names a use case, its arms compared on the use
    /// case's KPIs over `[from_ns, to_ns)` only: what the KPI series records (decision 0072).
    fn interval_arm_kpis(
        &self,
        from_ns: i64,
        to_ns: i64,
    ) -> BoxFuture<'_, Result<Vec<IntervalArmKpis>, ControlError>>;
    /// Pipeline `name`'s classifier performance estimated per chunk of scored windows
    /// (`[pipelines.performance]`).
    fn performance(&self, name: String) -> BoxFuture<'_, Result<PerformanceReport, ControlError>>;
    /// Sets pipeline `name`'s performance reference aside: a new one is found among the
    /// windows with outcomes as they are now, starting at or after `from` (ns) when given,
    /// and fixed. Returns the report after.
    fn new_performance_reference(
        &self,
        name: String,
        from: Option<i64>,
    ) -> BoxFuture<'_, Result<PerformanceReport, ControlError>>;
    /// The uploaded ONNX models.
    fn models(&self) -> BoxFuture<'_, Result<Vec<ModelInfo>, ControlError>>;
    /// Checks and stores an ONNX model under `name` with its detached signature (the
    /// signature file's text), restarting the pipelines that use it. Returns it and whether it
    /// is new.
    fn put_model(
        &self,
        name: String,
        bytes: Vec<u8>,
        signature: Option<String>,
    ) -> BoxFuture<'_, Result<(ModelInfo, bool), ControlError>>;
    /// Deletes an uploaded model that no pipeline uses.
    fn remove_model(&self, name: String) -> BoxFuture<'_, Result<(), ControlError>>;
    /// The `.onnx` file of an uploaded model, as it was uploaded.
    fn model_file(&self, name: String) -> BoxFuture<'_, Result<Vec<u8>, ControlError>>;
}

/// An ONNX model uploaded for pipelines to use with `model_name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ModelInfo {
    /// Its name.
    pub name: String,
    /// Size of the file.
    pub bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// The `model_version` its inferences carry.
    pub version: String,
    /// Each input's name, then its type and shape as the model declares them.
    pub inputs: Vec<String>,
    /// Output names.
    pub outputs: Vec<String>,
    /// Pipelines whose `model_name` is this model.
    pub used_by: Vec<String>,
    /// The trusted key whose signature it carries (first 16 hex digits of the key's SHA-256);
    /// absent for an unsigned model.
    pub signed_by: Option<String>,
}

/// The header that carries an uploaded model's detached signature (base64 Ed25519, the text
/// of the `.sig` file `fabrik model sign` writes).
pub const SIGNATURE_HEADER: &str = "x-fabrik-model-signature";

fn not_in_this_process() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the pipelines module does not run in this process (see --target)",
    )
}

fn control(state: &ApiState) -> Result<&Arc<dyn PipelineControl>, ApiError> {
    state
        .pipeline_control
        .as_ref()
        .ok_or_else(not_in_this_process)
}

pub(crate) fn board(state: &ApiState) -> Result<&PipelineBoard, ApiError> {
    state.pipelines.as_ref().ok_or_else(not_in_this_process)
}

#[utoipa::path(get, path = "/api/v1/pipelines", tag = "pipelines", security(("token" = [])),
    responses((status = 200, description = "every pipeline: configured, defined through the API, or the demo's", body = [PipelineStatus]),
              (status = 503, description = "the pipelines module does not run here", body = crate::error::ErrorBody)))]
pub(crate) async fn list(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
) -> Result<Json<Vec<PipelineStatus>>, ApiError> {
    Ok(Json(board(&state)?.read().values().cloned().collect()))
}

#[utoipa::path(get, path = "/api/v1/pipelines/{name}", tag = "pipelines", security(("token" = [])),
    params(("name" = String, Path, description = "pipeline name")),
    responses((status = 200, description = "the pipeline", body = PipelineStatus),
              (status = 404, description = "no such pipeline", body = crate::error::ErrorBody)))]
pub(crate) async fn show(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<PipelineStatus>, ApiError> {
    board(&state)?
        .read()
        .get(&name)
        .cloned()
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no pipeline named `{name}`"),
            )
        })
}

/// The body of a 200 answer to `PUT .../{name}`: the replaced pipeline, or what a dry run found.
/// Documents the answer's two shapes; the handler builds either directly.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum ReplacedPipeline {
    /// Replaced.
    Replaced(Box<PipelineStatus>),
    /// `dry_run=true`.
    DryRun(DryRun),
}

#[utoipa::path(put, path = "/api/v1/pipelines/{name}", tag = "pipelines", security(("token" = [])),
    params(("name" = String, Path, description = "pipeline name; must equal `name` in the body"), ApplyParams),
    request_body(content = PipelineConfig, description = "the fields of a `[[pipelines]]` entry, as JSON"),
    responses((status = 201, description = "defined and started (or stored stopped, with `enabled: false`)", body = PipelineStatus),
              (status = 200, description = "replaced (the previous definition was stopped first) or, with `dry_run=true`, checked without any change", body = ReplacedPipeline),
              (status = 400, description = "invalid definition; the message names each field", body = crate::error::ErrorBody),
              (status = 409, description = "defined in the configuration file", body = crate::error::ErrorBody),
              (status = 503, description = "the pipelines module does not run here", body = crate::error::ErrorBody)))]
pub(crate) async fn apply(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(params): Query<ApplyParams>,
    body: Bytes,
) -> Result<axum::response::Response, ApiError> {
    let control = control(&state)?;
    let config: PipelineConfig =
        named_definition(&body, &name, "pipeline", |c: &PipelineConfig| &c.name)?;
    if params.dry_run {
        return Ok(Json(control.check(config).await?).into_response());
    }
    // The dry run's warnings go with the answer: a client that applies directly sees them too.
    let warnings = control.check(config.clone()).await?.warnings;
    let created = control.apply(config).await?;
    let mut status = board(&state)?.read().get(&name).cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("pipeline `{name}` was stored but is not listed"),
        )
    })?;
    status.warnings = warnings;
    Ok((created_or_replaced(created), Json(status)).into_response())
}

/// The body of a 200 answer to `PUT /api/v1/pipelines`: the pipelines, or what a dry run
/// found for each. Documents the answer's two shapes; the handler builds either directly.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum AppliedPipelines {
    /// Applied, in the order given.
    Applied(Vec<PipelineStatus>),
    /// `dry_run=true`, in the order given.
    DryRun(Vec<DryRun>),
}

#[utoipa::path(put, path = "/api/v1/pipelines", tag = "pipelines", security(("token" = [])),
    params(ApplyParams),
    request_body(content = [PipelineConfig], description = "several `[[pipelines]]` entries, as a JSON list"),
    responses((status = 200, description = "all defined or replaced and started (or stored stopped, with `enabled: false`), in the order given; with `dry_run=true`, each checked without any change", body = AppliedPipelines),
              (status = 400, description = "at least one invalid definition; none was applied; the message names each `<pipeline>.<field>`", body = crate::error::ErrorBody),
              (status = 409, description = "one is defined in the configuration file; none was applied", body = crate::error::ErrorBody),
              (status = 503, description = "the pipelines module does not run here", body = crate::error::ErrorBody)))]
pub(crate) async fn apply_all(
    State(state): State<ApiState>,
    Query(params): Query<ApplyParams>,
    body: Bytes,
) -> Result<axum::response::Response, ApiError> {
    let control = control(&state)?;
    let configs: Vec<PipelineConfig> = crate::control::parse_body(&body, "pipeline definitions")?;
    if params.dry_run {
        return Ok(Json(control.check_all(configs).await?).into_response());
    }
    let names: Vec<String> = configs.iter().map(|c| c.name.clone()).collect();
    let checked = control.check_all(configs.clone()).await?;
    control.apply_all(configs).await?;
    let board = board(&state)?.read();
    names
        .iter()
        .zip(checked)
        .map(|(name, dry)| {
            let mut status = board.get(name).cloned().ok_or_else(|| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("pipeline `{name}` was stored but is not listed"),
                )
            })?;
            status.warnings = dry.warnings;
            Ok(status)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|statuses| Json(statuses).into_response())
}

#[utoipa::path(delete, path = "/api/v1/pipelines/{name}", tag = "pipelines", security(("token" = [])),
    params(("name" = String, Path, description = "pipeline name")),
    responses((status = 204, description = "stopped and forgotten; its inferences stay stored"),
              (status = 404, description = "no such pipeline", body = crate::error::ErrorBody),
              (status = 409, description = "defined in the configuration file", body = crate::error::ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<ApiState>,
    Query(_options): Query<crate::control::NoOptions>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    control(&state)?.remove(name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/pipelines/{name}/retrain", tag = "pipelines", security(("token" = [])),
    params(("name" = String, Path, description = "pipeline name")),
    responses((status = 204, description = "restarted; every device trains afresh on the stored windows before now (its training span there is kept from then on)"),
              (status = 404, description = "no such pipeline", body = crate::error::ErrorBody)))]
pub(crate) async fn retrain(
    State(state): State<ApiState>,
    Query(_options): Query<crate::control::NoOptions>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    control(&state)?.retrain(name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/pipelines/{name}/drift", tag = "pipelines", security(("token" = [])),
    params(("name" = String, Path, description = "pipeline name")),
    responses((status = 200, description = "each device's latest drift check of the last 30 days (also one made under an earlier definition of the pipeline), drifted devices first; empty when it has made none", body = [DriftStatus]),
              (status = 404, description = "no pipeline of that name", body = crate::error::ErrorBody),
              (status = 503, description = "the pipelines module does not run here", body = crate::error::ErrorBody)))]
pub(crate) async fn drift(
    State(state): State<ApiState>,
    Query(_options): Query<crate::control::NoOptions>,
    Path(name): Path<String>,
) -> Result<Json<Vec<DriftStatus>>, ApiError> {
    Ok(Json(control(&state)?.drift(name).await?))
}

/// `?days=&alpha=` of a shadow comparison.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShadowOptions {
    /// The last this many days (1 to 366; default 7).
    days: Option<u32>,
    /// The level of the sequential test on the labelled windows (above 0 and at most 0.5;
    /// default 0.05).
    alpha: Option<f64>,
}

#[utoipa::path(get, path = "/api/v1/pipelines/{name}/shadow", tag = "pipelines", security(("token" = [])),
    params(("name" = String, Path, description = "pipeline name"), ShadowOptions),
    responses((status = 200, description = "the challenger (`[pipelines.shadow]`) against the pipeline's model on the windows both scored, and on the windows of alerts operators labelled", body = ShadowComparison),
              (status = 400, description = "`days` or `alpha` out of range", body = crate::error::ErrorBody),
              (status = 404, description = "no pipeline of that name, or it has no shadow model", body = crate::error::ErrorBody),
              (status = 503, description = "the pipelines module does not run here", body = crate::error::ErrorBody)))]
pub(crate) async fn shadow(
    State(state): State<ApiState>,
    Query(options): Query<ShadowOptions>,
    Path(name): Path<String>,
) -> Result<Json<ShadowComparison>, ApiError> {
    let days = options.days.unwrap_or(7);
    if !(1..=366).contains(&days) {
        return Err(ApiError::bad_request(format!(
            "`days` is {days}: compare over 1 to 366 days"
        )));
    }
    let alpha = options.alpha.unwrap_or(0.05);
    if !(alpha > 0.0 && alpha <= 0.5) {
        return Err(ApiError::bad_request(format!(
            "`alpha` is {alpha}: the test's level lies above 0 and at most 0.5"
        )));
    }
    Ok(Json(control(&state)?.shadow(name, days, alpha).await?))
}

#[utoipa::path(get, path = "/api/v1/pipelines/{name}/performance", tag = "pipelines", security(("token" = [])),
    params(("name" = String, Path, description = "pipeline name")),
    responses((status = 200, description = "the classifier's performance estimated per chunk of scored windows from its probabilities (NannyML's CBPE), fitted on the first windows whose outcomes arrived; realized values beside where at least half a chunk's windows have outcomes", body = PerformanceReport),
              (status = 404, description = "no pipeline of that name, or it has no `[pipelines.performance]`", body = crate::error::ErrorBody),
              (status = 503, description = "the pipelines module does not run here", body = crate::error::ErrorBody)))]
pub(crate) async fn performance(
    State(state): State<ApiState>,
    Query(_options): Query<crate::control::NoOptions>,
    Path(name): Path<String>,
) -> Result<Json<PerformanceReport>, ApiError> {
    Ok(Json(control(&state)?.performance(name).await?))
}

/// `POST /api/v1/pipelines/{name}/performance/reference`.
#[derive(Debug, Default, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReference {
    /// Look for the new reference among windows starting at or after this time (RFC 3339): a
    /// period known to be good. Absent: from the model version's first window.
    pub from: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/pipelines/{name}/performance/reference", tag = "pipelines", security(("token" = [])),
    params(("name" = String, Path, description = "pipeline name")),
    request_body = NewReference,
    responses((status = 200, description = "the reference set aside; the report after, with the new reference when enough windows with outcomes are there (else `problem` says how many are), fixed from then on", body = PerformanceReport),
              (status = 400, description = "`from` is not RFC 3339", body = crate::error::ErrorBody),
              (status = 404, description = "no pipeline of that name, or it has no `[pipelines.performance]`", body = crate::error::ErrorBody),
              (status = 409, description = "the pipeline has scored no window yet: there is no reference to replace", body = crate::error::ErrorBody),
              (status = 503, description = "the pipelines module does not run here", body = crate::error::ErrorBody)))]
pub(crate) async fn new_performance_reference(
    State(state): State<ApiState>,
    Query(_options): Query<crate::control::NoOptions>,
    Path(name): Path<String>,
    crate::extract::Json(request): crate::extract::Json<NewReference>,
) -> Result<Json<PerformanceReport>, ApiError> {
    let from = request
        .from
        .as_deref()
        .map(|text| {
            fabrik_alert::model::parse_rfc3339(text).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`from` is `{text}`: not an RFC 3339 time (2026-12-01T00:00:00Z)"
                ))
            })
        })
        .transpose()?;
    Ok(Json(
        control(&state)?
            .new_performance_reference(name, from)
            .await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/models", tag = "pipelines", security(("token" = [])),
    responses((status = 200, description = "the uploaded ONNX models, by name", body = [ModelInfo]),
              (status = 503, description = "the pipelines module does not run here", body = crate::error::ErrorBody)))]
pub(crate) async fn models(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
) -> Result<Json<Vec<ModelInfo>>, ApiError> {
    Ok(Json(control(&state)?.models().await?))
}

#[utoipa::path(put, path = "/api/v1/models/{name}", tag = "pipelines", security(("token" = [])),
    params(("name" = String, Path, description = "model name: letters, digits, `.`, `_`, `-`; at most 64"),
           ("x-fabrik-model-signature" = Option<String>, Header, description = "the model's detached Ed25519 signature, base64 (the `.sig` file of `fabrik model sign`); required when `[models]` requires signatures")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the `.onnx` file"),
    responses((status = 201, description = "stored; pipelines can name it in `model_name`", body = ModelInfo),
              (status = 200, description = "replaced; the pipelines using it were restarted with it", body = ModelInfo),
              (status = 400, description = "not a model Fabrik can run (the message names the operator or problem), a bad name, or a signature that is missing (when required) or does not verify with a trusted key", body = crate::error::ErrorBody),
              (status = 409, description = "a pipeline uses the model and the new one does not fit it; the message names the pipeline", body = crate::error::ErrorBody),
              (status = 413, description = "the file is larger than http.max_body_size", body = crate::error::ErrorBody)))]
pub(crate) async fn put_model(
    State(state): State<ApiState>,
    Query(_options): Query<crate::control::NoOptions>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<impl IntoResponse, ApiError> {
    let limit = state.max_body_size;
    let file = crate::body::read_body(&headers, body, limit).await?;
    // The wire limit leaves room for gzip's overhead; a model is taken as it is.
    if file.len() > limit {
        return Err(ApiError::too_large(limit));
    }
    let signature = match headers.get(SIGNATURE_HEADER) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| {
                    ApiError::bad_request(format!("the `{SIGNATURE_HEADER}` header is not text"))
                })?
                .trim()
                .to_owned(),
        ),
    };
    let (info, created) = control(&state)?
        .put_model(name, file.to_vec(), signature)
        .await?;
    Ok((created_or_replaced(created), Json(info)))
}

#[utoipa::path(get, path = "/api/v1/models/{name}", tag = "pipelines", security(("token" = [])),
    params(("name" = String, Path, description = "model name")),
    responses((status = 200, description = "the `.onnx` file as it was uploaded", body = Vec<u8>, content_type = "application/octet-stream"),
              (status = 404, description = "no such model", body = crate::error::ErrorBody)))]
pub(crate) async fn model_file(
    State(state): State<ApiState>,
    Query(_options): Query<crate::control::NoOptions>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let bytes = control(&state)?.model_file(name).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        bytes,
    ))
}

#[utoipa::path(delete, path = "/api/v1/models/{name}", tag = "pipelines", security(("token" = [])),
    params(("name" = String, Path, description = "model name")),
    responses((status = 204, description = "deleted"),
              (status = 404, description = "no such model", body = crate::error::ErrorBody),
              (status = 409, description = "pipelines use it; the message names them", body = crate::error::ErrorBody)))]
pub(crate) async fn remove_model(
    State(state): State<ApiState>,
    Query(_options): Query<crate::control::NoOptions>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    control(&state)?.remove_model(name).await?;
    Ok(StatusCode::NO_CONTENT)
}
