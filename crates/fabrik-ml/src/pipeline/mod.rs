//! Inference pipelines as pure computation: samples in, per-device windows, features, a model,
//! a calibrated threshold, and inferences out, each naming the window it came from.
//!
//! - [`window`]: tumbling and sliding windows by time or count;
//! - [`features`]: moments, extremes, slope and FFT band power;
//! - [`model`]: the window models and their explanations;
//! - [`onnx`]: ONNX models (autoencoders, IsolationForest, classifiers) as window models.
//!
//! A device's model trains on that device's first `training_windows` windows (the threshold is
//! calibrated on the same windows), so each pump learns its own normal. Reading samples from
//! the store and writing inferences back is the caller's job.

pub mod explain;
pub mod features;
pub mod model;
pub mod onnx;
#[cfg(test)]
mod simulated_pump;
pub mod window;

use std::collections::BTreeMap;

pub use features::{Feature, FeatureExtractor};
pub use model::{BuiltinModel, WindowModel, column_medians};
pub use onnx::{ModelSource, OnnxScore, OnnxWindowModel};
pub use window::{DeviceWindows, Row, Window, WindowSpec};

use crate::MlError;
use crate::drift::{DatasetDrift, DriftMethod, dataset_drift};

/// How a score becomes a flag.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThresholdSpec {
    /// Flag scores above this value.
    Fixed(f64),
    /// Flag scores above the `quantile` of the training windows' scores, moved away from the
    /// normal scores by `margin` (see [`calibrated_threshold`]).
    Quantile {
        /// In (0, 1].
        quantile: f64,
        /// Multiplier (≥ 1 widens the normal band).
        margin: f64,
    },
}

impl ThresholdSpec {
    /// Parses `0.9` (fixed) or `quantile:0.99` / `quantile:0.99*1.5` (calibrated, margin).
    pub fn parse(text: &str) -> Result<Self, MlError> {
        let invalid = |reason: String| MlError::Parameter {
            name: "threshold",
            reason,
        };
        if let Some(rest) = text.strip_prefix("quantile:") {
            let (q, margin) = rest.split_once('*').unwrap_or((rest, "1"));
            let q: f64 = q
                .trim()
                .parse()
                .map_err(|_| invalid(format!("`{text}`: `{q}` is not a number")))?;
            let margin: f64 = margin
                .trim()
                .parse()
                .map_err(|_| invalid(format!("`{text}`: `{margin}` is not a number")))?;
            if !(q > 0.0 && q <= 1.0 && margin > 0.0 && margin.is_finite()) {
                return Err(invalid(format!(
                    "`{text}`: needs 0 < quantile ≤ 1 and a positive margin"
                )));
            }
            Ok(Self::Quantile {
                quantile: q,
                margin,
            })
        } else {
            let value: f64 = text.trim().parse().map_err(|_| {
                invalid(format!(
                    "`{text}` is neither a number nor `quantile:<q>[*<margin>]`"
                ))
            })?;
            if !value.is_finite() {
                return Err(invalid(format!("`{text}` is not finite")));
            }
            Ok(Self::Fixed(value))
        }
    }
}

/// What a pipeline computes, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineSpec {
    /// Unique name; stored with every inference.
    pub name: String,
    /// Input signals, in feature order.
    pub signals: Vec<String>,
    /// Windowing.
    pub window: WindowSpec,
    /// Features computed for every signal.
    pub features: Vec<Feature>,
    /// Windows each device trains on before it is scored.
    pub training_windows: usize,
    /// Fewest samples of every signal a window needs to be scored.
    pub min_samples: usize,
    /// Score → flag.
    pub threshold: ThresholdSpec,
    /// Contributions kept per inference (the largest ones).
    pub top_contributions: usize,
    /// Whether and how each device's input is watched for drift from what its model learnt.
    pub drift: Option<DriftSpec>,
}

/// Drift monitoring of a pipeline's input: each device's last `windows` windows (their
/// features) against the windows its model learnt from, feature by feature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftSpec {
    /// The test (Evidently's automatic choice by default).
    pub method: DriftMethod,
    /// The test's threshold (its default when `None`).
    pub threshold: Option<f64>,
    /// Windows per check: the current sample. Checks do not overlap.
    pub windows: usize,
    /// The share of features that must drift for the device's input to count as drifted.
    pub share: f64,
    /// A device whose input drifted this many checks in a row learns afresh from the last
    /// `training_windows` windows of the last check (`None`: never; an operator retrains).
    pub retrain_after: Option<u32>,
}

/// Largest current sample of a drift check. The exact KS test of unequal samples walks a band
/// that widens with the statistic, inside the pipeline's pass: 1,000 reference windows
/// against 2,000 under a strong shift took 82 ms for 12 features (`benches/drift.rs`,
/// docs/benchmarks.md), once per 2,000 windows of the device.
pub const MOST_DRIFT_WINDOWS: usize = 2_000;

/// One device's drift check.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftCheck {
    /// The device.
    pub device: String,
    /// The span of the windows the model learnt from (the reference), ns.
    pub reference: (i64, i64),
    /// The span of the windows checked (start of the first, end of the last), ns.
    pub current: (i64, i64),
    /// Windows in the reference and in the check.
    pub reference_windows: usize,
    /// Windows checked.
    pub windows: usize,
    /// How many of the windows checked were flagged anomalous.
    pub anomalies: usize,
    /// Per feature (in [`Pipeline::feature_names`] order) and overall.
    pub drift: DatasetDrift,
    /// Drifted checks in a row, this one included (0 when it did not drift).
    pub consecutive: u32,
    /// Whether the device then learnt afresh from the checked windows.
    pub retrained: bool,
    /// When it did: the start of the first window it learnt from (the last
    /// `training_windows` of the check), ns.
    pub retrained_from: Option<i64>,
    /// Why a retraining the check called for failed (the device kept its model).
    pub retrain_error: Option<String>,
    /// The version of the model that scored the windows checked.
    pub model_version: String,
}

/// One scored window.
#[derive(Debug, Clone, PartialEq)]
pub struct Inference {
    /// The device.
    pub device: String,
    /// Window start (inclusive), ns.
    pub window_start_ns: i64,
    /// Window end (exclusive), ns.
    pub window_end_ns: i64,
    /// Samples in the window.
    pub samples: usize,
    /// The largest arrival id among them: the window read exactly its span's rows that
    /// arrived up to here (a row that arrives later for the span was not part of it).
    pub last_arrival: i64,
    /// The model's score.
    pub score: f64,
    /// The threshold it was compared with.
    pub threshold: f64,
    /// Whether the window is anomalous.
    pub flag: bool,
    /// The largest per-feature shares of the score, largest first (`signal.feature`).
    pub contributions: Vec<(String, f64)>,
    /// The signal whose features' shares sum highest (over all of them, not only the
    /// `contributions` kept), if any share is above 0.
    pub top_signal: Option<String>,
    /// The version of the model that scored it.
    pub model_version: String,
    /// Start of the first of the device's windows the model learnt (and its threshold was
    /// calibrated) on, ns. A built-in model's version names its definition; this span names
    /// the data, which a restart or a redefinition trains afresh.
    pub trained_from_ns: i64,
    /// End of the last of those windows, ns.
    pub trained_until_ns: i64,
}

impl Inference {
    /// Stable id of the input window: pipeline, device and window start. With the window's
    /// span it selects the exact input samples from the store.
    pub fn window_id(&self, pipeline: &str) -> String {
        format!("{pipeline}/{}/{}", self.device, self.window_start_ns)
    }

    /// The signal whose features together contributed most, if any did.
    pub fn top_signal(&self) -> Option<&str> {
        self.top_signal.as_deref()
    }
}

/// The signal whose features' shares (signal-major, as the pipeline orders them) sum highest;
/// the first of equals; `None` when no share is above 0.
fn top_signal(signals: &[String], shares: &[f64]) -> Option<String> {
    if signals.is_empty() || !shares.len().is_multiple_of(signals.len()) {
        return None;
    }
    let per_signal = shares.len() / signals.len();
    let mut best: Option<(usize, f64)> = None;
    for (index, chunk) in shares.chunks(per_signal.max(1)).enumerate() {
        let total: f64 = chunk.iter().filter(|share| **share > 0.0).sum();
        if total > best.map_or(0.0, |(_, most)| most) {
            best = Some((index, total));
        }
    }
    best.map(|(index, _)| signals[index].clone())
}

enum Phase {
    /// The device's windows so far, with their start times.
    Training(Vec<Vec<f64>>, Vec<i64>),
    Scoring {
        model: Box<dyn WindowModel>,
        threshold: f64,
        medians: Vec<f64>,
        /// Start of the first training window and end of the last, ns.
        trained: (i64, i64),
        /// The drift watch, when the pipeline has one.
        monitor: Option<Box<DriftMonitor>>,
    },
}

/// A scoring device's drift watch: the features it learnt from and those of the windows
/// scored since the last check.
struct DriftMonitor {
    reference: Vec<Vec<f64>>,
    current: Vec<Vec<f64>>,
    /// Start of each current window, ns.
    current_starts: Vec<i64>,
    anomalies: usize,
    consecutive: u32,
}

impl DriftMonitor {
    fn new(reference: Vec<Vec<f64>>) -> Box<Self> {
        Box::new(Self {
            reference,
            current: Vec::new(),
            current_starts: Vec::new(),
            anomalies: 0,
            consecutive: 0,
        })
    }
}

struct DeviceState {
    windows: DeviceWindows,
    phase: Phase,
    /// Rows dated before this are not taken (see [`Pipeline::skip_rows_before`]).
    skip_before_ns: i64,
    /// The device's rows were read from this time on: a window starting earlier lacks the
    /// rows before it and is dropped (see [`Pipeline::history_read_from`]).
    read_from_ns: i64,
}

impl DeviceState {
    fn new(window: WindowSpec, read_from_ns: i64) -> Self {
        Self {
            windows: DeviceWindows::new(window),
            phase: Phase::Training(Vec::new(), Vec::new()),
            skip_before_ns: i64::MIN,
            read_from_ns,
        }
    }
}

/// Counters of one pipeline, for status pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PipelineCounters {
    /// Windows closed.
    pub windows: u64,
    /// Windows skipped because a signal had too few samples.
    pub incomplete_windows: u64,
    /// Inferences produced.
    pub inferences: u64,
    /// Inferences flagged anomalous.
    pub anomalies: u64,
    /// Devices still training.
    pub training_devices: u64,
    /// Devices being scored.
    pub scoring_devices: u64,
    /// Model fits or scores that failed.
    pub model_errors: u64,
}

/// A running pipeline's state across all its devices.
pub struct Pipeline {
    spec: PipelineSpec,
    model: Box<dyn Fn() -> Box<dyn WindowModel> + Send + Sync>,
    feature_names: Vec<String>,
    devices: BTreeMap<String, DeviceState>,
    extractor: FeatureExtractor,
    counters: PipelineCounters,
    last_error: Option<String>,
    /// Why the most recent incomplete window was skipped.
    last_incomplete: Option<String>,
    /// Windows ending at or before this (stored history read at start) only train.
    history_until_ns: i64,
    /// Where reading the stored history began, for devices first seen in it (see
    /// [`Pipeline::history_read_from`]).
    history_read_from_ns: i64,
    /// Drift checks made since they were last taken.
    drift_checks: Vec<DriftCheck>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("spec", &self.spec)
            .field("devices", &self.devices.len())
            .finish()
    }
}

impl Pipeline {
    /// A pipeline whose devices each get a fresh model from `model`.
    pub fn new(
        spec: PipelineSpec,
        model: impl Fn() -> Box<dyn WindowModel> + Send + Sync + 'static,
    ) -> Result<Self, MlError> {
        if spec.signals.is_empty() || spec.features.is_empty() {
            return Err(MlError::Parameter {
                name: "signals",
                reason: format!(
                    "pipeline `{}` needs at least one signal and one feature",
                    spec.name
                ),
            });
        }
        if spec.training_windows == 0 {
            return Err(MlError::Parameter {
                name: "training_windows",
                reason: "must be at least 1".into(),
            });
        }
        if let Some(drift) = &spec.drift {
            let invalid = |reason: String| MlError::Parameter {
                name: "drift",
                reason,
            };
            if !(1..=MOST_DRIFT_WINDOWS).contains(&drift.windows) {
                return Err(invalid(format!(
                    "`windows` is {}; a check takes 1 to {MOST_DRIFT_WINDOWS} windows",
                    drift.windows
                )));
            }
            if !(drift.share > 0.0 && drift.share <= 1.0) {
                return Err(invalid(format!(
                    "`share` is {}; it is a share of the features, above 0 and at most 1",
                    drift.share
                )));
            }
            if drift.retrain_after.is_some() && drift.windows < spec.training_windows {
                return Err(invalid(format!(
                    "`retrain_after` retrains on the last {} windows of a check (the \
                     training windows), but a check has only `windows` = {}",
                    spec.training_windows, drift.windows
                )));
            }
        }
        let feature_names = spec
            .signals
            .iter()
            .flat_map(|s| {
                spec.features
                    .iter()
                    .map(move |f| format!("{s}.{}", f.name()))
            })
            .collect();
        Ok(Self {
            spec,
            model: Box::new(model),
            feature_names,
            devices: BTreeMap::new(),
            extractor: FeatureExtractor::new(),
            counters: PipelineCounters::default(),
            last_error: None,
            last_incomplete: None,
            history_until_ns: i64::MIN,
            history_read_from_ns: i64::MIN,
            drift_checks: Vec::new(),
        })
    }

    /// The drift checks made since the last call, oldest first.
    pub fn take_drift_checks(&mut self) -> Vec<DriftCheck> {
        std::mem::take(&mut self.drift_checks)
    }

    /// The spec.
    pub fn spec(&self) -> &PipelineSpec {
        &self.spec
    }

    /// `signal.feature` names in model input order.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// Counters so far.
    pub fn counters(&self) -> PipelineCounters {
        let mut counters = self.counters;
        counters.training_devices = 0;
        counters.scoring_devices = 0;
        for state in self.devices.values() {
            match state.phase {
                Phase::Training(..) => counters.training_devices += 1,
                Phase::Scoring { .. } => counters.scoring_devices += 1,
            }
        }
        counters
    }

    /// The most recent model error, if any.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Windows ending at or before `end_ns` are stored history: they train a device's model
    /// (its first `training_windows` complete ones) but are never scored, so a pipeline that
    /// starts, or restarts, on recent history scores only windows still to come and never
    /// writes a second inference for a window scored before.
    pub fn train_only_until(&mut self, end_ns: i64) {
        self.history_until_ns = end_ns;
    }

    /// The stored history is read from `from_ns` on (inclusive): a window that starts earlier
    /// holds only its rows from `from_ns` and is dropped, for every device first seen after
    /// this call. Reading begins at an arbitrary time, so the first window was partial, and
    /// as a training window it skewed the threshold (a review: a retrained device's threshold
    /// 88 % above the one its full windows give).
    pub fn history_read_from(&mut self, from_ns: i64) {
        self.history_read_from_ns = from_ns;
    }

    /// [`Self::history_read_from`] for one device, seen or not (a saved training span
    /// replayed).
    pub fn rows_read_from(&mut self, device: &str, from_ns: i64) {
        let window = self.spec.window;
        self.devices
            .entry(device.to_owned())
            .or_insert_with(|| DeviceState::new(window, from_ns))
            .read_from_ns = from_ns;
    }

    /// Whether `device` has trained and is being scored.
    pub fn is_scoring(&self, device: &str) -> bool {
        self.devices
            .get(device)
            .is_some_and(|state| matches!(state.phase, Phase::Scoring { .. }))
    }

    /// Forgets `device` (it trains again from the next rows pushed).
    pub fn forget(&mut self, device: &str) {
        self.devices.remove(device);
    }

    /// Rows of `device` dated before `time_ns` are no longer taken: it has read them already
    /// (its training span, read ahead of the other rows), and a sliding window would count
    /// the ones it still holds twice.
    pub fn skip_rows_before(&mut self, device: &str, time_ns: i64) {
        if let Some(state) = self.devices.get_mut(device) {
            state.skip_before_ns = time_ns;
        }
    }

    /// Why the most recent incomplete window was skipped, e.g. "device `m-1`: 2 samples of
    /// `current` in the window, `min_samples` is 3".
    pub fn last_incomplete(&self) -> Option<&str> {
        self.last_incomplete.as_deref()
    }

    /// Adds a sample of `device` (values in signal order).
    pub fn push(&mut self, device: &str, row: Row) {
        let (window, read_from_ns) = (self.spec.window, self.history_read_from_ns);
        let state = self
            .devices
            .entry(device.to_owned())
            .or_insert_with(|| DeviceState::new(window, read_from_ns));
        if row.time_ns < state.skip_before_ns {
            return;
        }
        state.windows.push(row);
    }

    /// Closes every window complete at `horizon_ns`, trains or scores it, and returns the
    /// inferences of scored windows.
    pub fn advance(&mut self, horizon_ns: i64) -> Vec<Inference> {
        let mut out = Vec::new();
        let mut features = Vec::with_capacity(self.feature_names.len());
        for (device, state) in &mut self.devices {
            for window in state.windows.close(horizon_ns) {
                if window.start_ns < state.read_from_ns {
                    continue;
                }
                self.counters.windows += 1;
                if let Err(shortfall) =
                    window_features(&mut self.extractor, &self.spec, &window, &mut features)
                {
                    self.counters.incomplete_windows += 1;
                    self.last_incomplete = Some(match shortfall {
                        Shortfall::Samples { signal, samples } => format!(
                            "device `{device}`: {samples} sample(s) of `{}` in the window, \
                             `min_samples` is {}",
                            self.spec.signals[signal],
                            self.spec.min_samples.max(1)
                        ),
                        Shortfall::NotFinite => format!(
                            "device `{device}`: a feature of the window is not a finite number"
                        ),
                    });
                    continue;
                }
                if window.end_ns <= self.history_until_ns
                    && matches!(state.phase, Phase::Scoring { .. })
                {
                    continue;
                }
                let mut checked = None;
                match step(
                    &self.spec,
                    &self.model,
                    &self.feature_names,
                    &mut state.phase,
                    device,
                    &window,
                    &features,
                    &mut checked,
                ) {
                    Ok(Some(inference)) => {
                        self.counters.inferences += 1;
                        self.counters.anomalies += u64::from(inference.flag);
                        out.push(inference);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.counters.model_errors += 1;
                        self.last_error = Some(format!("device {device}: {e}"));
                    }
                }
                match checked {
                    Some(Ok(check)) => self.drift_checks.push(check),
                    Some(Err(e)) => {
                        self.counters.model_errors += 1;
                        self.last_error = Some(format!("device {device}: drift check: {e}"));
                    }
                    None => {}
                }
            }
        }
        out
    }
}

/// Why a window was not scored.
enum Shortfall {
    /// Signal number `signal` had only `samples` finite values.
    Samples { signal: usize, samples: usize },
    /// A feature came out NaN or infinite.
    NotFinite,
}

/// Fills `out` with the window's features, or says why the window cannot be scored.
fn window_features(
    extractor: &mut FeatureExtractor,
    spec: &PipelineSpec,
    window: &Window,
    out: &mut Vec<f64>,
) -> Result<(), Shortfall> {
    out.clear();
    let mut times = Vec::with_capacity(window.rows.len());
    let mut values = Vec::with_capacity(window.rows.len());
    for j in 0..spec.signals.len() {
        times.clear();
        values.clear();
        for row in &window.rows {
            if let Some(Some(v)) = row.values.get(j)
                && v.is_finite()
            {
                times.push(row.time_ns);
                values.push(*v);
            }
        }
        if values.len() < spec.min_samples.max(1) {
            return Err(Shortfall::Samples {
                signal: j,
                samples: values.len(),
            });
        }
        extractor.extract(&times, &values, &spec.features, out);
    }
    if out.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(Shortfall::NotFinite)
    }
}

/// Fits a fresh model on `rows` (started at `times`, the last ending at `end_ns`) and
/// calibrates its threshold: the scoring phase that follows training, or a retraining.
fn learn(
    spec: &PipelineSpec,
    make_model: &(dyn Fn() -> Box<dyn WindowModel> + Send + Sync),
    rows: Vec<Vec<f64>>,
    times: Vec<i64>,
    end_ns: i64,
) -> Result<Phase, MlError> {
    let mut model = make_model();
    model.fit_at(&rows, &times)?;
    let threshold = if model.calibrates_held_out() {
        // Too few windows for every fold to fit: the model's own scores.
        calibrate_held_out(make_model, &rows, &times, model.as_ref(), spec.threshold)
            .or_else(|_| calibrate(model.as_ref(), &rows, spec.threshold))?
    } else {
        calibrate(model.as_ref(), &rows, spec.threshold)?
    };
    let first_start = times.first().copied().unwrap_or(end_ns);
    let medians = column_medians(&rows);
    Ok(Phase::Scoring {
        model,
        threshold,
        medians,
        trained: (first_start, end_ns),
        monitor: spec.drift.map(|_| DriftMonitor::new(rows)),
    })
}

/// Trains on or scores one complete window of `device`; a drift check it completes goes to
/// `checked`.
#[allow(clippy::too_many_arguments)]
fn step(
    spec: &PipelineSpec,
    make_model: &(dyn Fn() -> Box<dyn WindowModel> + Send + Sync),
    feature_names: &[String],
    phase: &mut Phase,
    device: &str,
    window: &Window,
    features: &[f64],
    checked: &mut Option<Result<DriftCheck, MlError>>,
) -> Result<Option<Inference>, MlError> {
    if let Phase::Training(rows, times) = phase {
        rows.push(features.to_vec());
        times.push(window.start_ns);
        if rows.len() >= spec.training_windows {
            let (rows, times) = (std::mem::take(rows), std::mem::take(times));
            *phase = learn(spec, make_model, rows, times, window.end_ns)?;
        }
        return Ok(None);
    }
    let inference = score(spec, feature_names, phase, device, window, features)?;
    let (
        Some(drift),
        Phase::Scoring {
            trained,
            monitor: Some(monitor),
            ..
        },
    ) = (spec.drift, &mut *phase)
    else {
        return Ok(Some(inference));
    };
    monitor.current.push(features.to_vec());
    monitor.current_starts.push(window.start_ns);
    monitor.anomalies += usize::from(inference.flag);
    if monitor.current.len() < drift.windows {
        return Ok(Some(inference));
    }
    let current = std::mem::take(&mut monitor.current);
    let starts = std::mem::take(&mut monitor.current_starts);
    let anomalies = std::mem::replace(&mut monitor.anomalies, 0);
    let found = match dataset_drift(
        &monitor.reference,
        &current,
        drift.method,
        drift.threshold,
        drift.share,
    ) {
        Ok(found) => found,
        Err(e) => {
            *checked = Some(Err(e));
            return Ok(Some(inference));
        }
    };
    monitor.consecutive = if found.dataset_drift {
        monitor.consecutive + 1
    } else {
        0
    };
    let mut check = DriftCheck {
        device: device.to_owned(),
        reference: *trained,
        current: (
            starts.first().copied().unwrap_or(window.start_ns),
            window.end_ns,
        ),
        reference_windows: monitor.reference.len(),
        windows: current.len(),
        anomalies,
        drift: found,
        consecutive: monitor.consecutive,
        retrained: false,
        retrained_from: None,
        retrain_error: None,
        model_version: inference.model_version.clone(),
    };
    if drift
        .retrain_after
        .is_some_and(|after| monitor.consecutive >= after)
    {
        // The last `training_windows` windows: a restart that replays this span trains on as
        // many windows as a device's first training did.
        let keep = spec.training_windows.min(current.len());
        let rows = current[current.len() - keep..].to_vec();
        let times = starts[starts.len() - keep..].to_vec();
        let from = times.first().copied();
        match learn(spec, make_model, rows, times, window.end_ns) {
            Ok(relearnt) => {
                *phase = relearnt;
                check.retrained = true;
                check.retrained_from = from;
            }
            // The check is kept (it is the evidence of the drift); the device keeps its
            // model, and tries again at its next drifted check.
            Err(e) => check.retrain_error = Some(e.to_string()),
        }
    }
    *checked = Some(Ok(check));
    Ok(Some(inference))
}

/// Scores one window of a device that has trained.
fn score(
    spec: &PipelineSpec,
    feature_names: &[String],
    phase: &mut Phase,
    device: &str,
    window: &Window,
    features: &[f64],
) -> Result<Inference, MlError> {
    let Phase::Scoring {
        model,
        threshold,
        medians,
        trained,
        ..
    } = phase
    else {
        return Err(MlError::Parameter {
            name: "phase",
            reason: format!("device {device} has not trained yet"),
        });
    };
    let score = model.score_at(features, window.start_ns)?;
    // A NaN (or −∞) is never above the threshold: scored, the window would pass as
    // normal whatever it holds, so a model that puts one out is failing. +∞ (an error
    // that overflowed on an extreme window) is above any threshold, and flagged.
    if score.is_nan() || score == f64::NEG_INFINITY {
        return Err(MlError::Score {
            model: model.name().to_owned(),
            reason: format!("the score of the window is {score}, not a finite number"),
        });
    }
    let flag = score > *threshold;
    // A flagged window is what an operator reads to find the signals at fault: it is
    // explained by Owen values (a few hundred probes); a normal one by occlusion (a
    // probe per feature).
    let mut shares = if flag {
        model.explain_flagged(features, medians, spec.features.len())?
    } else {
        model.contributions(features, medians)?
    };
    // A flagged window names its signals even when no combination of them raises the
    // score above the normal window's; a normal window is not explained that way (it
    // would name noise).
    if flag && shares.iter().all(|&share| share <= 0.0) {
        shares = model::single_feature_rises(model.as_ref(), features, medians)?;
    }
    let top_signal = top_signal(&spec.signals, &shares);
    let mut contributions: Vec<(String, f64)> = feature_names
        .iter()
        .cloned()
        .zip(shares)
        .filter(|(_, share)| *share > 0.0)
        .collect();
    contributions.sort_by(|a, b| b.1.total_cmp(&a.1));
    contributions.truncate(spec.top_contributions);
    Ok(Inference {
        device: device.to_owned(),
        window_start_ns: window.start_ns,
        window_end_ns: window.end_ns,
        samples: window.rows.len(),
        last_arrival: window.rows.iter().map(|row| row.arrival).max().unwrap_or(0),
        score,
        threshold: *threshold,
        flag,
        contributions,
        top_signal,
        model_version: model.version().to_owned(),
        trained_from_ns: trained.0,
        trained_until_ns: trained.1,
    })
}

/// Folds of [`calibrate_held_out`].
const CALIBRATION_FOLDS: usize = 5;

/// How far above the in-sample threshold the held-out one may go: a held-out score is
/// unbounded, and one odd training window (a start-up transient) would otherwise set a
/// threshold no later fault reaches.
const HELD_OUT_LIMIT: f64 = 3.0;

/// [`calibrate`] on out-of-sample scores: the training windows in [`CALIBRATION_FOLDS`]
/// contiguous folds (sliding windows share samples with their neighbours, which interleaved
/// folds would leave in the fit), each scored by a model fitted on the others; at most
/// [`HELD_OUT_LIMIT`] times the in-sample threshold of `fitted` (the model fitted on all of
/// them), which also gives the score's bound. An error when a fold's model cannot be
/// fitted.
pub fn calibrate_held_out(
    make_model: &(dyn Fn() -> Box<dyn WindowModel> + Send + Sync),
    rows: &[Vec<f64>],
    times: &[i64],
    fitted: &dyn WindowModel,
    spec: ThresholdSpec,
) -> Result<f64, MlError> {
    let ThresholdSpec::Quantile { quantile, margin } = spec else {
        return calibrate(fitted, rows, spec);
    };
    let folds = CALIBRATION_FOLDS.min(rows.len());
    let fold_of = |index: usize| index * folds / rows.len();
    let mut scores = Vec::with_capacity(rows.len());
    for fold in 0..folds {
        let (mut fit_rows, mut fit_times) = (Vec::new(), Vec::new());
        for (index, (row, time)) in rows.iter().zip(times).enumerate() {
            if fold_of(index) != fold {
                fit_rows.push(row.clone());
                fit_times.push(*time);
            }
        }
        let mut model = make_model();
        model.fit_at(&fit_rows, &fit_times)?;
        for (_, row) in rows
            .iter()
            .enumerate()
            .filter(|(index, _)| fold_of(*index) == fold)
        {
            scores.push(model.probe(row)?);
        }
    }
    finite_training_scores(fitted, &scores)?;
    scores.sort_by(f64::total_cmp);
    let held_out = calibrated_threshold(&scores, quantile, margin, fitted.score_bound());
    let in_sample = calibrate(fitted, rows, spec)?;
    Ok(held_out
        .min(in_sample.max(0.0) * HELD_OUT_LIMIT)
        .max(in_sample))
}

/// A training window scored NaN or ±∞ leaves no threshold to calibrate.
fn finite_training_scores(model: &dyn WindowModel, scores: &[f64]) -> Result<(), MlError> {
    match scores.iter().find(|score| !score.is_finite()) {
        Some(bad) => Err(MlError::Score {
            model: model.name().to_owned(),
            reason: format!(
                "the model scored a training window {bad}, not a finite number (an overflow \
                 or a log of 0 in the model?): no threshold can be calibrated from it"
            ),
        }),
        None => Ok(()),
    }
}

fn calibrate(
    model: &dyn WindowModel,
    rows: &[Vec<f64>],
    spec: ThresholdSpec,
) -> Result<f64, MlError> {
    match spec {
        ThresholdSpec::Fixed(value) => Ok(value),
        ThresholdSpec::Quantile { quantile, margin } => {
            let mut scores = rows
                .iter()
                .map(|r| model.probe(r))
                .collect::<Result<Vec<f64>, _>>()?;
            finite_training_scores(model, &scores)?;
            scores.sort_by(f64::total_cmp);
            Ok(calibrated_threshold(
                &scores,
                quantile,
                margin,
                model.score_bound(),
            ))
        }
    }
}

/// The threshold `quantile:<quantile>*<margin>` calibrates from the training windows'
/// `sorted` scores: their `quantile` q, moved by the margin m away from the normal scores, in
/// the way the score's scale allows.
///
/// - Scores with an upper bound b (an Isolation Forest's 2^(−E(h)/c), Half-Space Trees' mass
///   deficit: both at most 1): the headroom above q shrinks by m, b − (b − q)/m. Multiplying
///   instead put the threshold above 1 whenever a training window scored 0.67 or more, and
///   such a pipeline never flagged anything.
/// - Non-negative scores (z-scores, errors, ratios to a limit): m × q, "m times the worst
///   seen in training".
/// - Scores that go negative (an ONNX Isolation Forest's negated decision function is
///   negative for inliers): median + m × (q − median). Multiplying a negative q by 1.5 put the
///   threshold below every normal score, and every window was flagged.
///
/// All three are q at m = 1.
pub fn calibrated_threshold(sorted: &[f64], quantile: f64, margin: f64, bound: Option<f64>) -> f64 {
    let Some(&lowest) = sorted.first() else {
        return 0.0;
    };
    let at = |fraction: f64| sorted[((sorted.len() as f64 - 1.0) * fraction).round() as usize];
    let q = at(quantile);
    match bound {
        Some(bound) if q < bound => bound - (bound - q) / margin,
        Some(bound) => bound,
        None if lowest >= 0.0 => q * margin,
        None => {
            // The median proper: of an even count, the mean of the middle two.
            let n = sorted.len();
            let median = if n.is_multiple_of(2) {
                (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
            } else {
                sorted[n / 2]
            };
            median + margin * (q - median)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn spec(model_windows: usize) -> PipelineSpec {
        PipelineSpec {
            name: "pumps".into(),
            signals: vec!["vibration".into(), "current".into()],
            window: WindowSpec::Time {
                size_ns: 10 * S,
                hop_ns: 10 * S,
            },
            features: vec![Feature::Mean, Feature::Std],
            training_windows: model_windows,
            min_samples: 5,
            threshold: ThresholdSpec::parse("quantile:1.0*1.5").unwrap(),
            top_contributions: 3,
            drift: None,
        }
    }

    /// One sample per second; vibration jumps by `fault` from second `fault_from`.
    fn feed(p: &mut Pipeline, device: &str, seconds: std::ops::Range<i64>, fault_from: i64) {
        for t in seconds {
            let wobble = ((t * 7919) % 13) as f64 / 13.0;
            let vibration = 2.0 + wobble * 0.2 + if t >= fault_from { 3.0 } else { 0.0 };
            let current = 10.0 + wobble;
            p.push(
                device,
                Row {
                    time_ns: t * S,
                    values: vec![Some(vibration), Some(current)],
                    arrival: t,
                },
            );
        }
    }

    /// 1,000 s of `device` at 1 Hz whose two signals' levels (not their spread) move up from
    /// second `shift_from`.
    fn feed_level_shift(p: &mut Pipeline, device: &str, shift_from: i64) {
        for t in 0..1000_i64 {
            let wobble = ((t * 7919) % 13) as f64 / 13.0;
            let shift = if t >= shift_from { 1.0 } else { 0.0 };
            p.push(
                device,
                Row {
                    time_ns: t * S,
                    values: vec![
                        Some(2.0 + wobble * 0.2 + 3.0 * shift),
                        Some(10.0 + wobble + 5.0 * shift),
                    ],
                    arrival: t,
                },
            );
        }
    }

    /// A device whose current stops following its vibration from second 1,200 (the current
    /// mirrored around its level: every feature keeps its distribution) drifts by
    /// reconstruction, in the checks after the break only.
    #[test]
    fn a_drift_check_by_reconstruction_sees_a_broken_relation_between_signals() {
        let mut spec = spec(40);
        spec.drift = Some(DriftSpec {
            method: DriftMethod::Reconstruction,
            threshold: None,
            windows: 20,
            share: 0.5,
            retrain_after: None,
        });
        let mut p = Pipeline::new(spec, || BuiltinModel::RobustZ.build()).unwrap();
        for t in 0..2000_i64 {
            let load = (t as f64 * std::f64::consts::TAU / 97.0).sin();
            let wobble = ((t * 7919) % 13) as f64 / 13.0 * 0.1;
            let follows = if t >= 1200 { -2.0 } else { 2.0 };
            p.push(
                "pump-01",
                Row {
                    time_ns: t * S,
                    values: vec![
                        Some(2.0 + load + wobble),
                        Some(10.0 + follows * load + wobble),
                    ],
                    arrival: t,
                },
            );
        }
        p.advance(2000 * S);
        let checks = p.take_drift_checks();
        let verdicts: Vec<bool> = checks.iter().map(|c| c.drift.dataset_drift).collect();
        assert_eq!(
            verdicts,
            [false, false, false, false, true, true, true, true],
            "{checks:?}"
        );
        let whole = checks[4].drift.reconstruction.as_ref().expect("numbers");
        assert!(
            whole.error > whole.upper && whole.reference_chunks == 10,
            "{whole:?}"
        );
        assert!(
            checks[4]
                .drift
                .features
                .iter()
                .all(|f| f.method == DriftMethod::Reconstruction)
        );
    }

    #[test]
    fn drift_checks_compare_each_device_with_what_it_learnt_and_retrain_when_asked() {
        let mut spec = spec(20);
        spec.drift = Some(DriftSpec {
            method: DriftMethod::Auto,
            threshold: None,
            windows: 20,
            share: 0.5,
            retrain_after: Some(2),
        });
        let mut p = Pipeline::new(spec, || BuiltinModel::RobustZ.build()).unwrap();
        // pump-01 moves to a new operating point at second 400 (both signals' levels, not
        // their spread); pump-02 stays where it learnt.
        feed_level_shift(&mut p, "pump-01", 400);
        feed_level_shift(&mut p, "pump-02", i64::MAX);
        let inferences = p.advance(1000 * S);
        let checks = p.take_drift_checks();
        assert!(p.take_drift_checks().is_empty(), "taken once");
        let of = |device: &str| -> Vec<&DriftCheck> {
            checks.iter().filter(|c| c.device == device).collect()
        };
        // 80 scored windows each: four checks of 20, the first on seconds 200–400.
        let (moved, stayed) = (of("pump-01"), of("pump-02"));
        assert_eq!((moved.len(), stayed.len()), (4, 4), "{checks:?}");
        assert_eq!(moved[0].current, (200 * S, 400 * S));
        assert_eq!(moved[0].reference, (0, 200 * S));
        assert!(stayed.iter().all(|c| !c.drift.dataset_drift), "{stayed:?}");
        let verdicts: Vec<(bool, u32, bool)> = moved
            .iter()
            .map(|c| (c.drift.dataset_drift, c.consecutive, c.retrained))
            .collect();
        assert_eq!(
            verdicts,
            vec![
                (false, 0, false),
                (true, 1, false),
                (true, 2, true),
                (false, 0, false)
            ],
            "{moved:?}"
        );
        // The levels drifted (KS, Evidently's choice for 20 windows), the spreads did not.
        let second = &moved[1].drift;
        assert!(second.features.iter().all(|f| f.method == DriftMethod::Ks));
        let drifted: Vec<bool> = second.features.iter().map(|f| f.drifted).collect();
        assert_eq!(drifted, vec![true, false, true, false], "{second:?}");
        assert_eq!(second.share, 0.5);
        // The shifted windows were flagged until the device learnt its new normal from the
        // third check's windows, which its later inferences name as their training span.
        assert_eq!(moved[1].anomalies, 20);
        assert_eq!(moved[3].reference, (600 * S, 800 * S));
        assert_eq!(moved[3].anomalies, 0);
        let last = inferences
            .iter()
            .rfind(|i| i.device == "pump-01")
            .expect("scored");
        assert_eq!(
            (last.trained_from_ns, last.trained_until_ns),
            (600 * S, 800 * S)
        );
        assert!(!last.flag);
    }

    /// A robust z model that cannot learn windows whose first feature is above 4.
    struct RefusesHighLevels(Box<dyn WindowModel>);

    impl WindowModel for RefusesHighLevels {
        fn name(&self) -> &str {
            "refuses-high-levels"
        }
        fn version(&self) -> &str {
            "1"
        }
        fn fit(&mut self, rows: &[Vec<f64>]) -> Result<(), MlError> {
            if rows.iter().any(|row| row[0] > 4.0) {
                return Err(MlError::Parameter {
                    name: "rows",
                    reason: "too high to learn".into(),
                });
            }
            self.0.fit(rows)
        }
        fn score(&mut self, row: &[f64]) -> Result<f64, MlError> {
            self.0.score(row)
        }
        fn probe(&self, row: &[f64]) -> Result<f64, MlError> {
            self.0.probe(row)
        }
    }

    #[test]
    fn a_retraining_that_fails_keeps_the_check_and_the_model() {
        let mut spec = spec(20);
        spec.drift = Some(DriftSpec {
            method: DriftMethod::Auto,
            threshold: None,
            windows: 20,
            share: 0.5,
            retrain_after: Some(2),
        });
        let mut p = Pipeline::new(spec, || {
            Box::new(RefusesHighLevels(BuiltinModel::RobustZ.build())) as Box<dyn WindowModel>
        })
        .unwrap();
        feed_level_shift(&mut p, "pump-01", 400);
        let inferences = p.advance(1000 * S);
        let checks = p.take_drift_checks();
        let verdicts: Vec<(bool, u32, bool, bool)> = checks
            .iter()
            .map(|c| {
                (
                    c.drift.dataset_drift,
                    c.consecutive,
                    c.retrained,
                    c.retrain_error.is_some(),
                )
            })
            .collect();
        // Every drifted check is kept, each retraining tried and refused.
        assert_eq!(
            verdicts,
            vec![
                (false, 0, false, false),
                (true, 1, false, false),
                (true, 2, false, true),
                (true, 3, false, true)
            ],
            "{checks:?}"
        );
        assert!(
            checks[2]
                .retrain_error
                .as_deref()
                .is_some_and(|e| e.contains("too high"))
        );
        // The device kept the model it first learnt, and its verdicts.
        let last = inferences.last().expect("scored");
        assert_eq!((last.trained_from_ns, last.trained_until_ns), (0, 200 * S));
        assert!(last.flag);
    }

    #[test]
    fn a_drift_watch_that_cannot_work_is_refused() {
        let with = |windows: usize, share: f64, retrain_after: Option<u32>| {
            let mut spec = spec(20);
            spec.drift = Some(DriftSpec {
                method: DriftMethod::Ks,
                threshold: None,
                windows,
                share,
                retrain_after,
            });
            Pipeline::new(spec, || BuiltinModel::RobustZ.build())
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(with(20, 0.5, Some(1)), None);
        assert!(with(0, 0.5, None).is_some_and(|e| e.contains("`windows` is 0")));
        assert!(with(20, 0.0, None).is_some_and(|e| e.contains("`share` is 0")));
        assert!(with(10, 0.5, Some(1)).is_some_and(|e| e.contains("only `windows` = 10")));
    }

    #[test]
    fn devices_train_then_a_fault_is_flagged_and_explained() {
        let mut p = Pipeline::new(spec(20), || BuiltinModel::RobustZ.build()).unwrap();
        feed(&mut p, "pump-01", 0..400, 300);
        feed(&mut p, "pump-02", 0..400, i64::MAX);
        let inferences = p.advance(400 * S);
        let counters = p.counters();
        assert_eq!(counters.windows, 80);
        assert_eq!(counters.scoring_devices, 2);
        // 20 training windows per device, the other 20 scored.
        assert_eq!(inferences.len(), 40);
        let flagged: Vec<&Inference> = inferences.iter().filter(|i| i.flag).collect();
        assert_eq!(flagged.len(), 10, "{flagged:#?}");
        assert!(flagged.iter().all(|i| i.device == "pump-01"));
        assert!(flagged.iter().all(|i| i.window_start_ns >= 300 * S));
        assert_eq!(flagged[0].top_signal(), Some("vibration"));
        assert_eq!(flagged[0].contributions[0].0, "vibration.mean");
        assert_eq!(
            flagged[0].window_id("pumps"),
            format!("pumps/pump-01/{}", 300 * S)
        );
    }

    /// Reading the stored history from an arbitrary time cuts the first window short: it is
    /// dropped, so a device learns only from whole windows.
    #[test]
    fn a_window_cut_short_by_where_reading_began_is_not_learnt_from() {
        let trained_from = |read_from: Option<i64>| {
            let mut p = Pipeline::new(spec(20), || BuiltinModel::RobustZ.build()).unwrap();
            if let Some(from) = read_from {
                p.history_read_from(from * S);
            }
            // Rows from 3 s on: the window [0 s, 10 s) holds 7 of its 10.
            feed(&mut p, "pump-01", 3..400, i64::MAX);
            let inferences = p.advance(400 * S);
            (inferences[0].trained_from_ns / S, p.counters().windows)
        };
        assert_eq!(
            trained_from(None),
            (0, 40),
            "without it, the partial window trains"
        );
        assert_eq!(trained_from(Some(3)), (10, 39));
        // The same for one device whose saved span is replayed from a given time.
        let mut p = Pipeline::new(spec(20), || BuiltinModel::RobustZ.build()).unwrap();
        p.rows_read_from("pump-01", 3 * S);
        feed(&mut p, "pump-01", 3..400, i64::MAX);
        feed(&mut p, "pump-02", 3..400, i64::MAX);
        let inferences = p.advance(400 * S);
        let first = |device: &str| {
            inferences
                .iter()
                .find(|i| i.device == device)
                .map(|i| i.trained_from_ns / S)
        };
        assert_eq!((first("pump-01"), first("pump-02")), (Some(10), Some(0)));
    }

    /// Scores the vibration mean; explains a normal window one way and a flagged one another.
    struct TwoExplanations;

    impl WindowModel for TwoExplanations {
        fn name(&self) -> &str {
            "two"
        }
        fn version(&self) -> &str {
            "1"
        }
        fn fit(&mut self, _rows: &[Vec<f64>]) -> Result<(), MlError> {
            Ok(())
        }
        fn score(&mut self, row: &[f64]) -> Result<f64, MlError> {
            self.probe(row)
        }
        fn probe(&self, row: &[f64]) -> Result<f64, MlError> {
            Ok(row[0])
        }
        fn contributions(&self, _row: &[f64], _medians: &[f64]) -> Result<Vec<f64>, MlError> {
            Ok(vec![0.0, 0.0, 1.0, 0.0])
        }
        fn explain_flagged(
            &self,
            _row: &[f64],
            _medians: &[f64],
            features_per_signal: usize,
        ) -> Result<Vec<f64>, MlError> {
            assert_eq!(features_per_signal, 2);
            Ok(vec![0.3, 0.3, 0.4, 0.0])
        }
    }

    /// A flagged window gets the model's explanation for flagged windows, and its top signal
    /// is the one whose features' shares sum highest, not the one with the largest single
    /// share.
    #[test]
    fn a_flagged_window_is_explained_for_operators_and_names_the_signal_with_most_weight() {
        let mut p = Pipeline::new(spec(20), || Box::new(TwoExplanations)).unwrap();
        feed(&mut p, "pump-01", 0..400, 300);
        let inferences = p.advance(400 * S);
        let (flagged, normal): (Vec<&Inference>, Vec<&Inference>) =
            inferences.iter().partition(|i| i.flag);
        assert_eq!(flagged.len(), 10);
        assert!(!normal.is_empty());
        for inference in &flagged {
            assert_eq!(inference.contributions[0], ("current.mean".to_owned(), 0.4));
            assert_eq!(inference.top_signal(), Some("vibration"));
        }
        for inference in &normal {
            assert_eq!(
                inference.contributions,
                vec![("current.mean".to_owned(), 1.0)]
            );
            assert_eq!(inference.top_signal(), Some("current"));
        }
    }

    #[test]
    fn a_calibrated_threshold_respects_the_scale_of_the_scores() {
        let sorted = [0.1, 0.2, 0.3, 0.4, 0.8];
        // Unbounded, non-negative: margin × the worst training score.
        assert!((calibrated_threshold(&sorted, 1.0, 1.5, None) - 1.2).abs() < 1e-12);
        // Bounded by 1: the headroom above it shrinks, and the threshold stays below 1.
        let bounded = calibrated_threshold(&sorted, 1.0, 1.5, Some(1.0));
        assert!((bounded - (1.0 - 0.2 / 1.5)).abs() < 1e-12, "{bounded}");
        assert_eq!(calibrated_threshold(&[0.5, 1.0], 1.0, 1.5, Some(1.0)), 1.0);
        // Negative normal scores: the margin widens the band around the median, not toward
        // minus infinity.
        let negative = [-0.3, -0.2, -0.15, -0.12, -0.1];
        let t = calibrated_threshold(&negative, 1.0, 1.5, None);
        assert!((t - (-0.15 + 1.5 * 0.05)).abs() < 1e-12, "{t}");
        assert!(t > -0.1, "above every training score: {t}");
        // All three are the quantile itself at margin 1.
        for bound in [None, Some(1.0)] {
            assert_eq!(calibrated_threshold(&sorted, 1.0, 1.0, bound), 0.8);
        }
        assert_eq!(calibrated_threshold(&negative, 1.0, 1.0, None), -0.1);
        // Of an even count, the median is the mean of the middle two.
        let even = [-0.4, -0.3, -0.1, 0.0];
        let t = calibrated_threshold(&even, 1.0, 1.5, None);
        assert!((t - (-0.2 + 1.5 * 0.2)).abs() < 1e-12, "{t}");
    }

    /// Isolation Forest and Half-Space Trees score in [0, 1]: with the default calibrated
    /// threshold they flag the fault, and only the fault.
    #[test]
    fn bounded_models_flag_with_the_default_threshold() {
        for model in [BuiltinModel::IsolationForest, BuiltinModel::Hst] {
            assert_eq!(model.build().score_bound(), Some(1.0), "{model:?}");
            let mut spec = spec(20);
            spec.threshold = ThresholdSpec::parse(&model.default_threshold()).unwrap();
            let mut p = Pipeline::new(spec, move || model.build()).unwrap();
            feed(&mut p, "pump-01", 0..400, 300);
            let inferences = p.advance(400 * S);
            let flagged: Vec<i64> = inferences
                .iter()
                .filter(|i| i.flag)
                .map(|i| i.window_start_ns / S)
                .collect();
            assert!(
                inferences.iter().all(|i| i.threshold < 1.0),
                "{model:?}: {inferences:#?}"
            );
            let scores: Vec<(i64, f64, f64)> = inferences
                .iter()
                .map(|i| (i.window_start_ns / S, i.score, i.threshold))
                .collect();
            assert!(!flagged.is_empty(), "{model:?} flags nothing: {scores:?}");
            assert!(
                flagged.iter().all(|&start| start >= 300),
                "{model:?} flags normal windows: {flagged:?}"
            );
        }
    }

    /// A device retrained on its saved span ahead of the other rows: it scores, takes none
    /// of the rows before the span's end again, and one forgotten trains afresh.
    #[test]
    fn a_device_read_ahead_takes_no_row_twice_and_can_be_forgotten() {
        let mut p = Pipeline::new(spec(20), || BuiltinModel::RobustZ.build()).unwrap();
        feed(&mut p, "pump-01", 0..200, i64::MAX);
        assert!(p.advance(200 * S).is_empty());
        assert!(p.is_scoring("pump-01"));
        p.skip_rows_before("pump-01", 200 * S);
        let windows = p.counters().windows;
        // Rows of the span again (as a history read overlapping it would push): not taken.
        feed(&mut p, "pump-01", 150..200, i64::MAX);
        feed(&mut p, "pump-01", 200..230, i64::MAX);
        let scored = p.advance(230 * S);
        assert_eq!(p.counters().windows, windows + 3);
        assert!(scored.iter().all(|i| i.samples == 10), "{scored:#?}");
        p.forget("pump-01");
        assert!(!p.is_scoring("pump-01"));
        assert_eq!(
            p.counters().training_devices + p.counters().scoring_devices,
            0
        );
    }

    #[test]
    fn stored_history_trains_but_is_never_scored() {
        let mut p = Pipeline::new(spec(20), || BuiltinModel::RobustZ.build()).unwrap();
        p.train_only_until(300 * S);
        // 30 windows of history: the first 20 train, the 10 after them are not scored.
        feed(&mut p, "pump-01", 0..300, i64::MAX);
        assert!(p.advance(300 * S).is_empty());
        assert_eq!(p.counters().scoring_devices, 1, "trained on history alone");
        // Live windows score from the first one on, fault included.
        feed(&mut p, "pump-01", 300..340, 320);
        let inferences = p.advance(340 * S);
        let starts: Vec<i64> = inferences.iter().map(|i| i.window_start_ns / S).collect();
        assert_eq!(starts, [300, 310, 320, 330]);
        assert!(inferences[2].flag && !inferences[0].flag, "{inferences:#?}");
        // Each inference names the history it was learnt from: the first 20 windows.
        assert!(
            inferences
                .iter()
                .all(|i| (i.trained_from_ns, i.trained_until_ns) == (0, 200 * S)),
            "{inferences:#?}"
        );
    }

    #[test]
    fn windows_missing_a_signal_are_counted_not_scored() {
        let mut p = Pipeline::new(spec(2), || BuiltinModel::RobustZ.build()).unwrap();
        for t in 0..10 {
            p.push(
                "pump-01",
                Row {
                    time_ns: t * S,
                    values: vec![Some(1.0), None],
                    arrival: t,
                },
            );
        }
        assert!(p.advance(10 * S).is_empty());
        assert_eq!(p.counters().incomplete_windows, 1);
        let why = p.last_incomplete().expect("a reason");
        let second = &p.spec().signals[1];
        assert!(
            why.contains("pump-01") && why.contains(&format!("0 sample(s) of `{second}`")),
            "{why}"
        );
    }

    #[test]
    fn a_model_that_cannot_fit_is_reported() {
        let mut p = Pipeline::new(spec(2), || BuiltinModel::RobustZ.build()).unwrap();
        feed(&mut p, "pump-01", 0..20, i64::MAX);
        p.advance(20 * S);
        assert_eq!(p.counters().model_errors, 1);
        assert!(p.last_error().unwrap().contains("at least 3"));
    }

    /// Scores NaN from window `nan_from` on (its training windows are fine), as an ONNX
    /// graph dividing by zero does.
    #[derive(Clone)]
    struct NanAfter {
        scored: usize,
        nan_from: usize,
        probe_nan: bool,
    }

    impl WindowModel for NanAfter {
        fn name(&self) -> &str {
            "nan-after"
        }
        fn version(&self) -> &str {
            "1"
        }
        fn fit(&mut self, _rows: &[Vec<f64>]) -> Result<(), MlError> {
            Ok(())
        }
        fn score(&mut self, row: &[f64]) -> Result<f64, MlError> {
            self.scored += 1;
            if self.scored > self.nan_from {
                Ok(f64::NAN)
            } else {
                self.probe(row)
            }
        }
        fn probe(&self, row: &[f64]) -> Result<f64, MlError> {
            Ok(if self.probe_nan { f64::NAN } else { row[0] })
        }
    }

    #[test]
    fn a_score_that_is_not_a_number_is_a_model_error_not_a_normal_window() {
        let mut p = Pipeline::new(spec(2), || {
            Box::new(NanAfter {
                scored: 0,
                nan_from: 1,
                probe_nan: false,
            }) as Box<dyn WindowModel>
        })
        .unwrap();
        feed(&mut p, "pump-01", 0..40, i64::MAX);
        let inferences = p.advance(40 * S);
        assert_eq!(
            inferences.len(),
            1,
            "only the finite score: {inferences:#?}"
        );
        assert_eq!(p.counters().model_errors, 1);
        assert!(
            p.last_error().unwrap().contains("not a finite number"),
            "{:?}",
            p.last_error()
        );
        // Nor is a threshold calibrated from training scores that are not numbers.
        let mut p = Pipeline::new(spec(2), || {
            Box::new(NanAfter {
                scored: 0,
                nan_from: usize::MAX,
                probe_nan: true,
            }) as Box<dyn WindowModel>
        })
        .unwrap();
        feed(&mut p, "pump-01", 0..40, i64::MAX);
        assert!(p.advance(40 * S).is_empty());
        assert!(p.counters().model_errors > 0);
        assert!(
            p.last_error().unwrap().contains("no threshold"),
            "{:?}",
            p.last_error()
        );
    }

    #[test]
    fn thresholds_parse_with_named_errors() {
        assert_eq!(
            ThresholdSpec::parse("4.5").unwrap(),
            ThresholdSpec::Fixed(4.5)
        );
        assert_eq!(
            ThresholdSpec::parse("quantile:0.99").unwrap(),
            ThresholdSpec::Quantile {
                quantile: 0.99,
                margin: 1.0
            }
        );
        assert!(ThresholdSpec::parse("quantile:1.5").is_err());
        let err = ThresholdSpec::parse("high").unwrap_err().to_string();
        assert!(err.contains("`high`"), "{err}");
    }
}
