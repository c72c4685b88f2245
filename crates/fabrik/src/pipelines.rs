//! The pipelines module: runs each `[[pipelines]]` entry as its own task that reads new rows
//! of its table with SQL, feeds them through `fabrik_ml::pipeline`, and writes every scored
//! window to the `inferences` table.
//!
//! Reading through the store's SQL (rather than a tap on the write path) means a pipeline sees
//! every source alike (HTTP, MQTT, bridges, replayed history) and can start from stored data.
//! Windows close `lateness` after their end, so samples that arrive a little late still count.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use fabrik_api::pipelines::{
    ControlError, DryRun, ModelInfo, PipelineBoard, PipelineControl, PipelineOrigin, PipelineState,
    PipelineStatus, describe_problems,
};
use fabrik_core::{Point, Quality, Timestamp, Value};
use fabrik_ml::drift::DriftMethod;
use fabrik_ml::pipeline::{
    BuiltinModel, DriftSpec, Feature, Inference, MOST_DRIFT_WINDOWS, ModelSource, OnnxScore,
    OnnxWindowModel, Pipeline, PipelineCounters, PipelineSpec, Row, ThresholdSpec, WindowSpec,
};
use fabrik_registry::usecases::Stage;
use fabrik_registry::{DeviceFilter, Registry};
use fabrik_runtime::ServiceHandle;
use fabrik_runtime::config::{Config, PipelineConfig};
use fabrik_runtime::units::parse_duration;
use fabrik_store::Store;

use crate::clips::SignalColumn;
use crate::columns::cast_column;
use crate::model_signature::ModelTrust;
use crate::pipeline_lineage::{ModelFile, PipelineLineage};
use crate::sql_text::literal;
use crate::stored::{compile_batch, definitions_json, read_definitions, store_file};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

/// The table every pipeline writes its inferences to.
pub(crate) const INFERENCES_TABLE: &str = "inferences";

/// The column (true) of the `inferences` rows a challenger wrote, on devices it is live on.
pub(crate) const CHALLENGER_COLUMN: &str = "challenger";
/// Windows closed per device, none of them complete, after which a pipeline's status says
/// why.
const STARVED_AFTER_WINDOWS: u64 = 3;
/// Training windows of a pipeline that names none (unless its model needs more).
const DEFAULT_TRAINING_WINDOWS: usize = 30;
/// Rows read per query, so a replay of a long history proceeds in bounded steps.
const READ_LIMIT: usize = 50_000;
/// The clips a stored row names: (signal index, blob id).
type ClipReferences = Vec<(usize, String)>;

/// Stored rows of a page with their devices and the clips they name.
type StoredRows = Vec<(String, Row, ClipReferences)>;

/// Stored rows per read when a signal is a clip: each becomes its clip's samples (a minute of
/// 48 kHz audio is 2.9 million), which stay in memory until their windows close.
const CLIP_READ_LIMIT: usize = 4;
/// How far back a restarting pipeline looks for its devices' training spans.
const SPAN_LOOKUP_DAYS: u32 = 30;
/// Most windows a sample may belong to (`window` / `hop`).
const MAX_OVERLAP: i64 = 1000;
/// The threshold of an ONNX classifier's probability when none is given.
const PROBABILITY_THRESHOLD: f64 = 0.5;

/// Which model a pipeline runs.
#[derive(Debug, Clone)]
enum ModelChoice {
    Builtin(BuiltinModel),
    /// Loaded when the pipeline starts; a load failure stops only this pipeline.
    Onnx {
        source: OnnxSource,
        output: String,
    },
}

/// Most message spans a pipeline page's span links to: enough to follow a window back to its
/// messages in a trace viewer, few enough that a page of a busy table does not make a span
/// of thousands of links (OpenTelemetry's SDKs keep 128).
const MESSAGE_LINKS: usize = 32;

/// Where an ONNX model's file is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OnnxSource {
    /// `model_path`, as given.
    Path(String),
    /// `model_name`: uploaded through the API, in the data directory's `models/`.
    Uploaded(String),
}

/// The directory in the data directory that holds uploaded models, `<name>.onnx`.
const MODELS_DIRECTORY: &str = "models";

/// Whether `name` can name an uploaded model (and so a file): 1–64 letters, digits, `.`,
/// `_`, `-`, not starting with `.`.
pub(crate) fn model_name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub(crate) const MODEL_NAME_RULE: &str =
    "a model name is 1–64 letters, digits, `.`, `_` or `-`, not starting with `.`";

/// A pipeline config checked and turned into what the runner needs.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    config: PipelineConfig,
    spec: PipelineSpec,
    model: ModelChoice,
    interval: Duration,
    lateness_ns: i64,
    replay: bool,
    /// The challenger scored on the same windows, if any: the pipeline's definition with the
    /// shadow's model fields.
    shadow: Option<Box<Compiled>>,
}

impl Compiled {
    /// Whether the challenger's verdicts are the pipeline's on `device` (an A/B split,
    /// `live_share` and `live_devices`), when it has verdicts there.
    pub(crate) fn challenger_live(&self, device: &str) -> bool {
        let Some(shadow) = &self.config.shadow else {
            return false;
        };
        shadow.live_devices.iter().any(|d| d == device)
            || shadow
                .live_share
                .is_some_and(|share| split_draw(&self.config.name, device) < share)
    }

    /// Whether any device can be in the challenger's arm.
    fn has_live_split(&self) -> bool {
        self.config.shadow.as_ref().is_some_and(|shadow| {
            !shadow.live_devices.is_empty() || shadow.live_share.is_some_and(|share| share > 0.0)
        })
    }
}

/// A device's draw for pipeline `pipeline`'s A/B split: uniform in [0, 1), the same on every
/// node, release and restart (FNV-1a, then SplitMix64's finaliser to spread similar names),
/// and independent of the other devices, so a new device moves no other between arms.
fn split_draw(pipeline: &str, device: &str) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in pipeline.bytes().chain([0xff]).chain(device.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    (hash >> 11) as f64 / (1_u64 << 53) as f64
}

fn duration_ns(text: &str) -> Result<i64, String> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    i64::try_from(d.as_nanos()).map_err(|_| "too long".to_owned())
}

/// `"10s"` → time; `"256 samples"` → count.
fn window_length(text: &str) -> Result<Result<i64, usize>, String> {
    match text.trim().strip_suffix("samples") {
        Some(count) => count
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .map(Err)
            .ok_or_else(|| format!("`{text}`: expected `<count> samples` with count ≥ 1")),
        None => duration_ns(text)
            .map(Ok)
            .map_err(|e| format!("`{text}`: {e}")),
    }
}

/// Whether `name` can be written as a quoted SQL identifier (`"name"`).
pub(crate) fn sql_identifier_ok(name: &str) -> bool {
    !name.is_empty() && !name.contains('"') && !name.contains('\0')
}

/// Checks one pipeline; every problem is reported with its field.
pub(crate) fn compile(config: &PipelineConfig) -> Result<Compiled, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let mut problem = |field: &str, message: String| problems.push((field.to_owned(), message));
    // The name is written into every inference row and matched in rules' filters
    // (`pipeline = '...'`), where a quote or a space would break them.
    if !(1..=128).contains(&config.name.len())
        || !config
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        problem(
            "name",
            format!(
                "`{}`: use 1–128 letters, digits, `-`, `_` and `.`",
                config.name
            ),
        );
    }
    if !sql_identifier_ok(&config.table) {
        problem(
            "table",
            format!("`{}` is not a usable table name", config.table),
        );
    }
    if !sql_identifier_ok(&config.device_column) {
        problem("device_column", "must be a tag column name".into());
    }
    if config.signals.is_empty() {
        problem("signals", "name at least one field column".into());
    }
    for (i, s) in config.signals.iter().enumerate() {
        if !sql_identifier_ok(s) {
            problem("signals", format!("`{s}` is not a usable column name"));
        } else if config.signals[..i].contains(s) {
            problem("signals", format!("`{s}` is named twice"));
        } else if *s == config.device_column {
            problem(
                "signals",
                format!("`{s}` is the device column, not a signal"),
            );
        } else if matches!(s.as_str(), "time" | "_raw_id") {
            // The read selects both already; as a signal the query would name them twice.
            problem(
                "signals",
                format!("`{s}` is the row's own timestamp or arrival id, not a signal"),
            );
        }
    }
    let mut features = Vec::new();
    for f in &config.features {
        match Feature::parse(f) {
            Ok(f) => features.push(f),
            Err(e) => problem("features", e.to_string()),
        }
    }
    if config.features.is_empty() {
        problem("features", "name at least one feature".into());
    }
    let onnx = |source| ModelChoice::Onnx {
        source,
        output: config.model_output.clone(),
    };
    let model = match (
        config.model.as_str(),
        config.model_path.as_deref().map(str::trim),
        config.model_name.as_deref(),
    ) {
        ("onnx", Some(path), None) if !path.is_empty() => {
            Some(onnx(OnnxSource::Path(path.to_owned())))
        }
        ("onnx", None, Some(name)) if model_name_ok(name) => {
            Some(onnx(OnnxSource::Uploaded(name.to_owned())))
        }
        ("onnx", None, Some(name)) => {
            problem("model_name", format!("`{name}`: {MODEL_NAME_RULE}"));
            None
        }
        ("onnx", Some(_), Some(_)) => {
            problem(
                "model_name",
                "give `model_path` or `model_name`, not both".into(),
            );
            None
        }
        ("onnx", _, _) => {
            problem(
                "model_path",
                "an `onnx` model needs `model_path` (a file) or `model_name` (uploaded)".into(),
            );
            None
        }
        (name, path, model_name) => {
            // A built-in model trains on the device: a model file or upload named with it
            // would be ignored, and the user left believing it runs.
            if path.is_some() || model_name.is_some() {
                let field = if path.is_some() {
                    "model_path"
                } else {
                    "model_name"
                };
                problem(
                    field,
                    format!("`{field}` is for `model = \"onnx\"`; `{name}` trains on the device"),
                );
            }
            BuiltinModel::parse(name)
                .map(ModelChoice::Builtin)
                .map_err(|e| problem("model", format!("{e}, or onnx")))
                .ok()
        }
    };
    if let Err(e) = fabrik_ml::pipeline::onnx::OutputChoice::parse(&config.model_output) {
        problem("model_output", e);
    }
    let threshold = ThresholdSpec::parse(&effective_threshold(config))
        .map_err(|e| problem("threshold", e.to_string()))
        .ok();
    // Every built-in model's score is ≥ 0 (distances, z magnitudes, anomaly probabilities):
    // a fixed threshold at or below 0 flags (nearly) every window.
    if let (Some(ModelChoice::Builtin(_)), Some(ThresholdSpec::Fixed(level))) = (&model, &threshold)
        && *level <= 0.0
    {
        problem(
            "threshold",
            format!(
                "{level}: `{}` scores are never negative, so it would flag every window",
                config.model
            ),
        );
    }
    let window = match window_length(&config.window) {
        Ok(length) => {
            let hop = match &config.hop {
                None => Some(length),
                Some(h) => window_length(h).map_err(|e| problem("hop", e)).ok(),
            };
            match (length, hop) {
                // Each sample is in size/hop windows: a slip of a unit (`10ms` for `10s`)
                // would score every sample thousands of times.
                (Ok(size_ns), Some(Ok(hop_ns)))
                    if hop_ns <= size_ns && hop_ns < size_ns / MAX_OVERLAP =>
                {
                    problem(
                        "hop",
                        format!(
                            "puts each sample in more than {MAX_OVERLAP} windows; a hop of at \
                             least 1/{MAX_OVERLAP} of the window"
                        ),
                    );
                    None
                }
                (Ok(size_ns), Some(Ok(hop_ns))) if hop_ns <= size_ns => {
                    Some(WindowSpec::Time { size_ns, hop_ns })
                }
                (Err(size), Some(Err(hop)))
                    if hop <= size && hop * MAX_OVERLAP as usize >= size =>
                {
                    Some(WindowSpec::Count { size, hop })
                }
                (Err(size), Some(Err(hop))) if hop <= size => {
                    problem(
                        "hop",
                        format!(
                            "puts each sample in more than {MAX_OVERLAP} windows ({size} \
                             samples every {hop}); a hop of at least 1/{MAX_OVERLAP} of the window"
                        ),
                    );
                    None
                }
                (_, None) => None,
                _ => {
                    problem(
                        "hop",
                        "must be of the same kind as `window` (duration or samples) and no \
                         longer than it"
                            .into(),
                    );
                    None
                }
            }
        }
        Err(e) => {
            problem("window", e);
            None
        }
    };
    if let Some(WindowSpec::Count { size, .. }) = window
        && (config.min_samples as usize) > size
    {
        problem(
            "min_samples",
            format!(
                "{} is more than the {size} samples a window holds: no window could be scored",
                config.min_samples
            ),
        );
    }
    let least = match &model {
        Some(ModelChoice::Builtin(builtin)) => builtin.min_training_windows(),
        _ => 1,
    };
    let training_windows = match config.training_windows {
        None => DEFAULT_TRAINING_WINDOWS.max(least),
        Some(0) => {
            problem("training_windows", "must be at least 1".into());
            1
        }
        Some(n) if (n as usize) < least => {
            problem(
                "training_windows",
                format!(
                    "model `{}` needs at least {least} training windows, got {n}",
                    config.model
                ),
            );
            least
        }
        Some(n) => n as usize,
    };
    let interval = parse_duration(&config.interval)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            problem(
                "interval",
                format!("`{}` is not a duration > 0", config.interval),
            )
        })
        .ok();
    let lateness_ns = parse_duration(&config.lateness)
        .map_err(|e| problem("lateness", e))
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok());
    let replay = match config.start.as_str() {
        "now" => false,
        "earliest" => true,
        other => {
            problem("start", format!("`{other}`: expected `now` or `earliest`"));
            false
        }
    };
    if let Some(label) = &config.label
        && !label.contains('=')
    {
        problem("label", format!("`{label}`: expected `key=value`"));
    }
    if let Some(use_case) = &config.use_case
        && !fabrik_registry::usecases::name_ok(use_case)
    {
        problem(
            "use_case",
            format!("`{use_case}` cannot name a use case: 1 to 64 of a-z, 0-9, `.`, `_` and `-`"),
        );
    }
    if let Some(filter) = &config.filter
        && let Err(why) = crate::sql_text::one_expression(filter)
    {
        problem("filter", why);
    }
    let drift = config.drift.as_ref().and_then(|drift| {
        let method = DriftMethod::parse(&drift.method)
            .map_err(|e| problem("drift.method", e.to_string()))
            .ok();
        if let Some(threshold) = drift.threshold
            && !(threshold.is_finite() && threshold >= 0.0)
        {
            problem(
                "drift.threshold",
                format!("{threshold} is not a p-value or distance (a number ≥ 0)"),
            );
        }
        let windows = drift
            .windows
            .map_or(training_windows, |windows| windows as usize);
        if !(1..=MOST_DRIFT_WINDOWS).contains(&windows) {
            problem(
                "drift.windows",
                format!("{windows}: a check takes 1 to {MOST_DRIFT_WINDOWS} windows"),
            );
        }
        if !(drift.share > 0.0 && drift.share <= 1.0) {
            problem(
                "drift.share",
                format!(
                    "{}: a share of the features, above 0 and at most 1",
                    drift.share
                ),
            );
        }
        if method == Some(DriftMethod::Ks) && training_windows > fabrik_ml::drift::ks::EXACT_UP_TO {
            problem(
                "drift.method",
                format!(
                    "`ks` compares with the {training_windows} training windows; SciPy's exact \
                     test, which Fabrik reproduces, takes at most {}: use `auto` or \
                     `wasserstein`",
                    fabrik_ml::drift::ks::EXACT_UP_TO
                ),
            );
        }
        let fewest = 2 * fabrik_ml::drift::RECONSTRUCTION_CHUNKS;
        if method == Some(DriftMethod::Reconstruction) && training_windows < fewest {
            problem(
                "drift.method",
                format!(
                    "`reconstruction` draws its thresholds from {} chunks of the training \
                     windows: it needs {fewest} of them, not {training_windows}",
                    fabrik_ml::drift::RECONSTRUCTION_CHUNKS
                ),
            );
        }
        let width = config.signals.len() * config.features.len();
        if method == Some(DriftMethod::Reconstruction) && width < 3 {
            // With two features the kept components are nearly always both (neither
            // explains 65 % when they correlate below 0.3): the error is rounding noise.
            problem(
                "drift.method",
                format!(
                    "`reconstruction` watches the relations among features through fewer \
                     components than features: it needs 3 features at least, not {width} \
                     ({} signals × {} features)",
                    config.signals.len(),
                    config.features.len()
                ),
            );
        }
        if method == Some(DriftMethod::Reconstruction) && windows < 2 {
            problem(
                "drift.windows",
                "`reconstruction` compares the mean error of 2 windows at least".into(),
            );
        }
        match drift.retrain_after {
            Some(_) if matches!(model, Some(ModelChoice::Onnx { .. })) => problem(
                "drift.retrain_after",
                "an ONNX model is trained elsewhere: retraining would only recalibrate its \
                 threshold on the drifted windows, hiding the drift; upload a model trained \
                 on the new data instead"
                    .into(),
            ),
            Some(0) => problem(
                "drift.retrain_after",
                "must be at least 1 (leave it out to never retrain on drift)".into(),
            ),
            Some(_) if windows < training_windows => problem(
                "drift.retrain_after",
                format!(
                    "retrains on the last {training_windows} windows of a check (the \
                     training windows), but `drift.windows` is {windows}"
                ),
            ),
            _ => {}
        }
        method.map(|method| DriftSpec {
            method,
            threshold: drift.threshold,
            windows,
            share: drift.share,
            retrain_after: drift.retrain_after,
        })
    });
    let shadow = config.shadow.as_ref().and_then(|shadow| {
        let challenger = PipelineConfig {
            model: shadow.model.clone(),
            model_path: shadow.model_path.clone(),
            model_name: shadow.model_name.clone(),
            model_output: shadow.model_output.clone(),
            threshold: shadow.threshold.clone(),
            // Both learn from the same windows unless the challenger needs others.
            training_windows: shadow.training_windows.or(config.training_windows),
            drift: None,
            shadow: None,
            performance: None,
            ..config.clone()
        };
        const OWN_FIELDS: [&str; 6] = [
            "model",
            "model_path",
            "model_name",
            "model_output",
            "threshold",
            "training_windows",
        ];
        match compile(&challenger) {
            Ok(compiled) => Some(Box::new(compiled)),
            Err(found) => {
                // The pipeline's own fields are reported once, as the pipeline's.
                for (field, message) in found {
                    if OWN_FIELDS.contains(&field.as_str()) {
                        problem(&format!("shadow.{field}"), message);
                    }
                }
                None
            }
        }
    });
    if let Some(performance) = &config.performance {
        for (field, message) in crate::performance::problems(config, performance) {
            problem(&field, message);
        }
    }
    if let Some(shadow) = &config.shadow {
        if shadow
            .live_share
            .is_some_and(|share| !(0.0..=1.0).contains(&share))
        {
            problem(
                "shadow.live_share",
                "must be a share of devices from 0 to 1 (0.25: about a quarter)".into(),
            );
        }
        if shadow.live_devices.iter().any(|d| d.trim().is_empty()) {
            problem(
                "shadow.live_devices",
                "a device id must not be empty".into(),
            );
        }
    }
    match (model, threshold, window, interval, lateness_ns) {
        (Some(model), Some(threshold), Some(window), Some(interval), Some(lateness_ns))
            if problems.is_empty() =>
        {
            Ok(Compiled {
                spec: PipelineSpec {
                    name: config.name.clone(),
                    signals: config.signals.clone(),
                    window,
                    features,
                    training_windows,
                    min_samples: config.min_samples as usize,
                    threshold,
                    top_contributions: 5,
                    drift,
                },
                config: config.clone(),
                model,
                interval,
                lateness_ns,
                replay,
                shadow,
            })
        }
        _ => Err(problems),
    }
}

/// Problems of every `[[pipelines]]` entry, as `pipelines[i].field`.
pub(crate) fn check(config: &Config) -> Vec<(String, String)> {
    let mut problems = ModelTrust::from_config(&config.models)
        .err()
        .unwrap_or_default();
    let mut names = BTreeSet::new();
    for (i, p) in config.pipelines.iter().enumerate() {
        if !names.insert(p.name.as_str()) {
            problems.push((
                format!("pipelines[{i}].name"),
                format!("`{}` is used by an earlier pipeline", p.name),
            ));
        }
        if let Err(found) = compile(p) {
            problems.extend(
                found
                    .into_iter()
                    .map(|(field, message)| (format!("pipelines[{i}].{field}"), message)),
            );
        }
    }
    problems
}

/// The pipeline the demo plant runs when none is configured: pump health from vibration,
/// current and pressure.
pub(crate) fn demo_pipeline() -> PipelineConfig {
    PipelineConfig {
        name: "pump-health".into(),
        enabled: true,
        table: "pump".into(),
        device_column: "device".into(),
        devices: Vec::new(),
        site: None,
        device_type: None,
        label: None,
        // In pilot it scores the pilot's pumps; a promotion widens that (`fabrik usecase`).
        use_case: Some(crate::demo::USE_CASE.into()),
        // The pumps stop and start on a duty cycle; a stop is normal, not an anomaly.
        filter: Some("running".into()),
        model_path: None,
        model_name: None,
        model_output: "auto".into(),
        signals: ["vibration_rms", "motor_current", "pressure", "flow"]
            .map(String::from)
            .to_vec(),
        window: "10s".into(),
        hop: None,
        features: ["mean", "std", "max"].map(String::from).to_vec(),
        // A window the pump stopped in holds its last few running samples; at the previous
        // 3, their noisier std and max flagged a healthy stop (a review).
        min_samples: 8,
        model: "robust_z".into(),
        // Twice the largest training score. At 1.5 times, a healthy pump's noise crossed it
        // within three minutes. Twelve windows estimate each feature's spread roughly: on
        // simulated healthy pumps 0.25 % of windows crossed (one false alarm in about 17
        // minutes on the demo's four pumps; a review saw one in nine), eighteen 0.03 %, with
        // every spike and drift still flagged (decision 0008, session 25).
        training_windows: Some(18),
        threshold: Some("quantile:1.0*2".into()),
        interval: "1s".into(),
        lateness: "2s".into(),
        start: "now".into(),
        // Every 5 minutes of a pump's running windows against the 3 minutes it learnt
        // from; pump-03's bearing wear shows in the features that drift.
        drift: Some(fabrik_runtime::config::DriftConfig {
            method: "auto".into(),
            threshold: None,
            windows: Some(30),
            share: 0.5,
            retrain_after: None,
        }),
        // A challenger scored on the same windows, to compare before switching
        // (`fabrik pipeline shadow pump-health`).
        shadow: Some(fabrik_runtime::config::ShadowConfig {
            model: "iforest".into(),
            model_path: None,
            model_name: None,
            model_output: "auto".into(),
            threshold: None,
            training_windows: None,
            live_share: None,
            live_devices: Vec::new(),
        }),
        // The demo's anomaly scores are no classifier's probabilities.
        performance: None,
    }
}

/// The demo's second pipeline: the pumps' sound, from the one-second WAV clips each running
/// pump publishes every 5 s (`devices/<id>/clips/acoustic`): loudness, the motor hum's band
/// and the band a worn bearing whines in (3.2 kHz).
pub(crate) fn demo_acoustic_pipeline() -> PipelineConfig {
    PipelineConfig {
        name: "pump-acoustic".into(),
        table: "clips".into(),
        filter: None,
        signals: vec!["acoustic".into()],
        window: "5s".into(),
        features: ["rms", "band:50-500", "band:2500-3500"]
            .map(String::from)
            .to_vec(),
        // One clip of 8,000 samples per window; a window the clip straddles has part of it.
        min_samples: 2_000,
        shadow: None,
        performance: None,
        ..demo_pipeline()
    }
}

fn feature_names(spec: &PipelineSpec) -> Vec<String> {
    spec.signals
        .iter()
        .flat_map(|s| {
            spec.features
                .iter()
                .map(move |f| format!("{s}.{}", f.name()))
        })
        .collect()
}

/// The registry filter of a pipeline's selection by site, type and label.
fn selection_filter(config: &PipelineConfig) -> DeviceFilter {
    DeviceFilter {
        site: config.site.clone(),
        device_type: config.device_type.clone(),
        state: None,
        label: config.label.clone(),
    }
}

/// Training windows too few for the features PCA T²+Q fits a covariance to: with fewer than
/// five windows per feature its estimate is poor and the calibrated threshold sits among
/// normal scores (a review: 10 windows for 8 features flagged 271 of 285 windows, mostly on
/// healthy data).
fn training_warning(compiled: &Compiled) -> Option<String> {
    const WINDOWS_PER_FEATURE: usize = 5;
    let features = feature_names(&compiled.spec).len();
    let windows = compiled.spec.training_windows;
    (matches!(compiled.model, ModelChoice::Builtin(BuiltinModel::PcaT2Q))
        && windows < WINDOWS_PER_FEATURE * features)
        .then(|| {
            format!(
                "`pca_t2q` learns {features} features from {windows} training windows; with \
                 fewer than {} (5 per feature) expect many false alarms",
                WINDOWS_PER_FEATURE * features
            )
        })
}

/// A pipeline's threshold: as given, else the model's own alarm level where its scores have
/// one ([`BuiltinModel::own_threshold`]), else the training windows' largest score with a
/// margin.
fn effective_threshold(config: &PipelineConfig) -> String {
    if let Some(given) = &config.threshold {
        return given.clone();
    }
    match BuiltinModel::parse(&config.model) {
        Ok(model) => model.default_threshold(),
        Err(_) => "quantile:1.0*1.5".to_owned(),
    }
}

/// The status of a pipeline that has not run yet; `features` is empty for a definition that
/// does not compile.
fn status_of(
    config: &PipelineConfig,
    features: Vec<String>,
    origin: PipelineOrigin,
    state: PipelineState,
    error: Option<String>,
) -> PipelineStatus {
    let c = config;
    PipelineStatus {
        warnings: Vec::new(),
        name: c.name.clone(),
        origin,
        state,
        error,
        table: c.table.clone(),
        filter: c.filter.clone(),
        signals: c.signals.clone(),
        model: c.model.clone(),
        features,
        window: c.hop.as_ref().map_or_else(
            || c.window.clone(),
            |hop| format!("{} every {hop}", c.window),
        ),
        threshold: effective_threshold(c),
        devices: 0,
        training_devices: 0,
        windows: 0,
        incomplete_windows: 0,
        inferences: 0,
        anomalies: 0,
        samples: 0,
        horizon: None,
        shadow_error: None,
        definition: c.clone(),
    }
}

/// The file in the data directory that keeps the pipelines defined through the API.
pub(crate) const STORED_PIPELINES_FILE: &str = "pipelines.json";

/// One pipeline the manager knows, running or not.
struct Managed {
    origin: PipelineOrigin,
    config: PipelineConfig,
    stop: CancellationToken,
    /// `None` when disabled or when its stored definition does not compile.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Managed {
    /// Stops the runner and waits until it has ended, so it cannot write after this returns.
    async fn stop(self) {
        self.stop.cancel();
        if let Some(task) = self.task {
            let _ = task.await;
        }
    }
}

#[derive(Default)]
struct Pipelines {
    by_name: std::collections::BTreeMap<String, Managed>,
    /// Stored API definitions whose name a configuration-file pipeline took: not run, but
    /// kept in the file.
    shadowed: Vec<PipelineConfig>,
}

/// Runs the pipelines of the configuration file, of the demo and of the API, and applies the
/// API's changes (stored in `pipelines.json` first, so they survive a restart).
pub(crate) struct PipelineManager {
    store: Arc<Store>,
    registry: Option<Registry>,
    board: PipelineBoard,
    stop: CancellationToken,
    stored_path: std::path::PathBuf,
    /// Uploaded models, `<name>.onnx` (and `<name>.onnx.sig`).
    models_dir: std::path::PathBuf,
    /// The keys models are checked with before they load.
    trust: ModelTrust,
    /// One change at a time; held while a replaced runner is stopped.
    pipelines: tokio::sync::Mutex<Pipelines>,
    /// Where each runner's OpenLineage events go, if anywhere.
    lineage: Option<crate::openlineage::Emitter>,
}

impl PipelineManager {
    /// Starts `compiled` (or records it as stopped when disabled) under its name.
    fn launch(&self, pipelines: &mut Pipelines, origin: PipelineOrigin, compiled: Compiled) {
        self.launch_with(pipelines, origin, compiled, true);
    }

    /// [`Self::launch`]; `restore_spans: false` makes every device train afresh instead of on
    /// its saved training span ([`Runner::retrain_on_saved_spans`]).
    fn launch_with(
        &self,
        pipelines: &mut Pipelines,
        origin: PipelineOrigin,
        compiled: Compiled,
        restore_spans: bool,
    ) {
        let config = compiled.config.clone();
        let stop = self.stop.child_token();
        let features = feature_names(&compiled.spec);
        if let Some(warning) = training_warning(&compiled) {
            tracing::warn!(pipeline = %config.name, "{warning}");
        }
        let task = if config.enabled {
            self.board.write().insert(
                config.name.clone(),
                status_of(&config, features, origin, PipelineState::Running, None),
            );
            let runner = Runner {
                compiled,
                store: self.store.clone(),
                registry: self.registry.clone(),
                board: self.board.clone(),
                models_dir: self.models_dir.clone(),
                trust: self.trust.clone(),
                restore_spans,
                emitter: self.lineage.clone(),
                lineage: None,
                written: std::sync::atomic::AtomicU64::new(0),
            };
            Some(tokio::spawn(runner.run(stop.clone())))
        } else {
            self.board.write().insert(
                config.name.clone(),
                status_of(
                    &config,
                    features,
                    origin,
                    PipelineState::Stopped,
                    Some("disabled".into()),
                ),
            );
            None
        };
        pipelines.by_name.insert(
            config.name.clone(),
            Managed {
                origin,
                config,
                stop,
                task,
            },
        );
    }

    /// Stops the runner of `compiled`'s name, if any, and waits for it, then starts
    /// `compiled` in its place, so two versions never write at once.
    async fn replace(&self, pipelines: &mut Pipelines, origin: PipelineOrigin, compiled: Compiled) {
        if let Some(previous) = pipelines.by_name.remove(&compiled.config.name) {
            previous.stop().await;
        }
        self.launch(pipelines, origin, compiled);
    }

    /// The API's definitions after a change: all of them but `except`, plus `with`.
    fn api_definitions(
        pipelines: &Pipelines,
        except: &str,
        with: Option<&PipelineConfig>,
    ) -> Vec<PipelineConfig> {
        let mut definitions: Vec<PipelineConfig> = pipelines
            .by_name
            .values()
            .filter(|m| m.origin == PipelineOrigin::Api && m.config.name != except)
            .map(|m| m.config.clone())
            .chain(pipelines.shadowed.iter().cloned())
            .chain(with.cloned())
            .collect();
        definitions.sort_by(|a, b| a.name.cmp(&b.name));
        definitions
    }

    async fn store_definitions(
        &self,
        definitions: Vec<PipelineConfig>,
    ) -> Result<(), ControlError> {
        store_file(self.stored_path.clone(), definitions_json(&definitions)?).await
    }

    /// Whether a definition named `name` through the API would be new (`false`: it replaces
    /// one defined through the API); refused for the configuration file's or the demo's.
    fn defines_anew(pipelines: &Pipelines, name: &str) -> Result<bool, ControlError> {
        match pipelines.by_name.get(name) {
            Some(existing) => Self::refuse_unless_api(existing).map(|()| false),
            None => Ok(true),
        }
    }

    /// What a selection by site, type or label would select now, if nothing: the pipeline
    /// would score no device (and says so once it runs).
    async fn selection_warning(&self, config: &PipelineConfig) -> Option<String> {
        let registry = self.registry.as_ref()?;
        if config.site.is_none() && config.device_type.is_none() && config.label.is_none() {
            // Devices named outright: one the registry does not know may be a misspelling
            // (or a source that writes without registering, over HTTP).
            let mut unknown = Vec::new();
            for device in &config.devices {
                if registry.get(device).await.is_err() {
                    unknown.push(format!("`{device}`"));
                }
            }
            return (!unknown.is_empty()).then(|| {
                format!(
                    "{} not registered: if misspelt, the pipeline never sees it",
                    unknown.join(", ")
                )
            });
        }
        let matching = registry.list(&selection_filter(config)).await.ok()?;
        let listed_and_matching =
            config.devices.is_empty() || matching.iter().any(|d| config.devices.contains(&d.id));
        (matching.is_empty() || !listed_and_matching).then(|| {
            "no registered device matches the selection (site, type, label and devices \
             together) yet; the pipeline scores none until one does"
                .to_owned()
        })
    }

    /// What the pipeline's use case lets it score now, if that is nothing.
    async fn use_case_warning(&self, config: &PipelineConfig) -> Option<String> {
        let use_case = config.use_case.as_ref()?;
        let Some(registry) = self.registry.as_ref() else {
            return Some("a pipeline of a use case needs the registry module".into());
        };
        match registry.use_case_devices(use_case).await {
            Err(e) => Some(format!("{e}: the pipeline scores no device until it is")),
            Ok((stage, Some(allowed))) if allowed.is_empty() => Some(format!(
                "use case `{use_case}` at {} allows no device yet",
                stage.as_str()
            )),
            Ok(_) => None,
        }
    }

    /// Whether `config` is what pipeline `config.name` already runs (or, disabled, keeps
    /// stopped): applying it again changes nothing, so a configuration-sync job that applies
    /// every definition on each run does not restart every pipeline. One that failed (a model
    /// that did not load) is started again.
    fn unchanged(pipelines: &Pipelines, config: &PipelineConfig) -> bool {
        pipelines.by_name.get(&config.name).is_some_and(|existing| {
            existing.origin == PipelineOrigin::Api
                && existing.config == *config
                && match &existing.task {
                    Some(task) => !task.is_finished(),
                    None => !config.enabled,
                }
        })
    }

    fn refuse_unless_api(managed: &Managed) -> Result<(), ControlError> {
        match managed.origin {
            PipelineOrigin::Api => Ok(()),
            PipelineOrigin::Config => Err(ControlError::NotChangeable(format!(
                "pipeline `{}` is defined in the configuration file; change it there",
                managed.config.name
            ))),
            PipelineOrigin::Demo => Err(ControlError::NotChangeable(format!(
                "pipeline `{}` is the demo plant's; define pipelines in the configuration \
                 file or under another name",
                managed.config.name
            ))),
        }
    }

    /// The ONNX model of `compiled`: if it is there and does not fit the pipeline, the
    /// definition is refused (`field` problems); if it is not there yet, a warning (the
    /// pipeline fails to load until it is).
    fn check_model(&self, compiled: &Compiled) -> Result<Option<String>, Vec<(String, String)>> {
        let champion = self.check_onnx(compiled);
        let Some(challenger) = &compiled.shadow else {
            return champion;
        };
        // The shadow model is checked as the pipeline's is, its problems and warning named
        // as its own.
        let challenger = self
            .check_onnx(challenger)
            .map(|warning| {
                warning.map(|w| {
                    format!(
                        "shadow: {}",
                        w.replace(
                            "the pipeline fails to load",
                            "the shadow model does not run (the pipeline does)"
                        )
                    )
                })
            })
            .map_err(|found| {
                found
                    .into_iter()
                    .map(|(field, why)| (format!("shadow.{field}"), why))
                    .collect::<Vec<_>>()
            });
        match (champion, challenger) {
            (Ok(a), Ok(b)) => Ok(match (a, b) {
                (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                (a, b) => a.or(b),
            }),
            (Err(mut a), Err(b)) => {
                a.extend(b);
                Err(a)
            }
            (Err(a), Ok(_)) | (Ok(_), Err(a)) => Err(a),
        }
    }

    /// [`Self::check_model`] for one model.
    fn check_onnx(&self, compiled: &Compiled) -> Result<Option<String>, Vec<(String, String)>> {
        let ModelChoice::Onnx { source, .. } = &compiled.model else {
            return Ok(None);
        };
        let (bytes, field) = match source {
            OnnxSource::Uploaded(name) => match std::fs::read(self.model_path(name)) {
                Ok(bytes) => (bytes, "model_name"),
                Err(_) => {
                    return Ok(Some(format!(
                        "model `{name}` is not uploaded: the pipeline fails to load until it is \
                         (`fabrik model upload {name} FILE`)"
                    )));
                }
            },
            // Read by the server from its working directory, which the client does not know
            // and a restart from elsewhere changes: a relative path loads now, fails later.
            OnnxSource::Path(path) if !std::path::Path::new(path).is_absolute() => {
                return Err(vec![(
                    "model_path".to_owned(),
                    format!(
                        "`{path}` is relative; through the API give an absolute path on the \
                         server, or upload the model (PUT /api/v1/models/{{name}}) and name it \
                         in `model_name`"
                    ),
                )]);
            }
            OnnxSource::Path(path) => match std::fs::read(path) {
                Ok(bytes) => (bytes, "model_path"),
                Err(e) => {
                    return Ok(Some(format!(
                        "model_path `{path}` cannot be read ({e}): the pipeline fails to load \
                         until it can"
                    )));
                }
            },
        };
        let file = match source {
            OnnxSource::Uploaded(name) => self.model_path(name),
            OnnxSource::Path(path) => std::path::PathBuf::from(path),
        };
        if let Err(why) = self.trust.check_file(&file, &bytes) {
            return Err(vec![(
                field.to_owned(),
                format!("the model is refused: {why}"),
            )]);
        }
        let model_source = match source {
            OnnxSource::Uploaded(name) => ModelSource::Uploaded(name),
            OnnxSource::Path(path) => ModelSource::Path(std::path::Path::new(path)),
        };
        match model_misfit(compiled, &bytes, model_source) {
            Some(why) => Err(vec![(field.to_owned(), why)]),
            None => Ok(None),
        }
    }

    /// Checks the columns and models of a batch, naming each problem `<pipeline>.<field>`;
    /// returns the warnings per definition.
    fn check_models(&self, compiled: &[Compiled]) -> Result<Vec<Option<String>>, ControlError> {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        for pipeline in compiled {
            problems.extend(
                column_kind_problems(&self.store, &pipeline.config)
                    .into_iter()
                    .map(|(field, why)| (format!("{}.{field}", pipeline.config.name), why)),
            );
            match self.check_model(pipeline) {
                Ok(warning) => warnings.push(warning),
                Err(found) => problems.extend(
                    found
                        .into_iter()
                        .map(|(field, why)| (format!("{}.{field}", pipeline.config.name), why)),
                ),
            }
        }
        if problems.is_empty() {
            Ok(warnings)
        } else {
            Err(ControlError::Invalid(problems))
        }
    }

    /// What [`Self::apply_definition`] checks, without storing or starting anything; and
    /// what would keep the pipeline from scoring once applied: input not in the store yet, an
    /// ONNX model not uploaded.
    async fn check_definition(&self, config: PipelineConfig) -> Result<DryRun, ControlError> {
        let compiled = compile(&config).map_err(ControlError::Invalid)?;
        let kinds = column_kind_problems(&self.store, &config);
        if !kinds.is_empty() {
            return Err(ControlError::Invalid(kinds));
        }
        let model_warning = self.check_model(&compiled).map_err(ControlError::Invalid)?;
        let pipelines = self.pipelines.lock().await;
        let created = Self::defines_anew(&pipelines, &config.name)?;
        let unchanged = Self::unchanged(&pipelines, &config);
        drop(pipelines);
        let mut warnings: Vec<String> = missing_input(&self.store, &config)
            .map(|missing| format!("{missing}; the pipeline waits for it"))
            .into_iter()
            .collect();
        warnings.extend(model_warning);
        warnings.extend(self.selection_warning(&config).await);
        warnings.extend(self.use_case_warning(&config).await);
        warnings.extend(training_warning(&compiled));
        let action = match (created, unchanged) {
            (true, _) => "define",
            (false, true) => "unchanged",
            (false, false) => "replace",
        };
        Ok(DryRun {
            name: config.name,
            action: action.to_owned(),
            warnings,
        })
    }

    async fn apply_definition(&self, config: PipelineConfig) -> Result<bool, ControlError> {
        let compiled = compile(&config).map_err(ControlError::Invalid)?;
        let kinds = column_kind_problems(&self.store, &config);
        if !kinds.is_empty() {
            return Err(ControlError::Invalid(kinds));
        }
        // Under the lock an upload also takes: a model replaced meanwhile is checked against
        // this pipeline, or this pipeline against the replacement.
        let mut pipelines = self.pipelines.lock().await;
        self.check_model(&compiled).map_err(ControlError::Invalid)?;
        let created = Self::defines_anew(&pipelines, &config.name)?;
        if Self::unchanged(&pipelines, &config) {
            tracing::info!(pipeline = %config.name, "Pipeline applied through the API unchanged; it keeps running.");
            return Ok(false);
        }
        let definitions = Self::api_definitions(&pipelines, &config.name, Some(&config));
        self.store_definitions(definitions).await?;
        tracing::info!(pipeline = %config.name, replaced = !created, "Pipeline defined through the API.");
        self.replace(&mut pipelines, PipelineOrigin::Api, compiled)
            .await;
        Ok(created)
    }

    /// Applies `configs` together: every one is checked first, and either all are stored
    /// (in one write of the definitions file) and started, or none is. Returns, per
    /// definition, whether it is new.
    async fn apply_definitions(
        &self,
        configs: Vec<PipelineConfig>,
    ) -> Result<Vec<bool>, ControlError> {
        let (compiled, names) = compile_batch(&configs, |c: &PipelineConfig| &c.name, compile)?;
        let mut pipelines = self.pipelines.lock().await;
        self.check_models(&compiled)?;
        let created = configs
            .iter()
            .map(|config| Self::defines_anew(&pipelines, &config.name))
            .collect::<Result<Vec<bool>, ControlError>>()?;
        let mut definitions: Vec<PipelineConfig> = pipelines
            .by_name
            .values()
            .filter(|m| m.origin == PipelineOrigin::Api && !names.contains(m.config.name.as_str()))
            .map(|m| m.config.clone())
            .chain(pipelines.shadowed.iter().cloned())
            .chain(configs.iter().cloned())
            .collect();
        definitions.sort_by(|a, b| a.name.cmp(&b.name));
        self.store_definitions(definitions).await?;
        for pipeline in compiled {
            if Self::unchanged(&pipelines, &pipeline.config) {
                tracing::info!(pipeline = %pipeline.config.name, "Pipeline applied through the API unchanged; it keeps running.");
                continue;
            }
            tracing::info!(pipeline = %pipeline.config.name, "Pipeline defined through the API.");
            self.replace(&mut pipelines, PipelineOrigin::Api, pipeline)
                .await;
        }
        Ok(created)
    }

    async fn remove_definition(&self, name: String) -> Result<(), ControlError> {
        let mut pipelines = self.pipelines.lock().await;
        let existing = pipelines
            .by_name
            .get(&name)
            .ok_or_else(|| ControlError::NotFound(format!("no pipeline named `{name}`")))?;
        Self::refuse_unless_api(existing)?;
        let definitions = Self::api_definitions(&pipelines, &name, None);
        self.store_definitions(definitions).await?;
        if let Some(previous) = pipelines.by_name.remove(&name) {
            previous.stop().await;
        }
        self.board.write().remove(&name);
        tracing::info!(pipeline = %name, "Pipeline removed through the API.");
        Ok(())
    }

    /// Pipeline `name`'s definition and its `[pipelines.performance]`.
    async fn performance_config(
        &self,
        name: &str,
    ) -> Result<(PipelineConfig, fabrik_runtime::config::PerformanceConfig), ControlError> {
        let config = {
            let pipelines = self.pipelines.lock().await;
            let managed = pipelines
                .by_name
                .get(name)
                .ok_or_else(|| ControlError::NotFound(format!("no pipeline named `{name}`")))?;
            // A stored definition that no longer compiles is not estimated on.
            compile(&managed.config)
                .map_err(ControlError::Invalid)?
                .config
        };
        let Some(performance) = config.performance.clone() else {
            return Err(ControlError::NotFound(format!(
                "pipeline `{name}` estimates no performance (`[pipelines.performance]`)"
            )));
        };
        Ok((config, performance))
    }

    /// Restarts pipeline `name`, whatever defined it, with every device training afresh: a
    /// model whose saved training span held a fault would otherwise come back at every
    /// restart. The definition does not change.
    async fn retrain_pipeline(&self, name: String) -> Result<(), ControlError> {
        let mut pipelines = self.pipelines.lock().await;
        let existing = pipelines
            .by_name
            .get(&name)
            .ok_or_else(|| ControlError::NotFound(format!("no pipeline named `{name}`")))?;
        let origin = existing.origin;
        let compiled = compile(&existing.config).map_err(ControlError::Invalid)?;
        // A replaying pipeline learns from the first stored windows: retrained, it would
        // replay the same ones (a review) while saying it learnt afresh.
        if compiled.replay {
            return Err(ControlError::Invalid(vec![(
                "start".into(),
                format!(
                    "pipeline `{name}` has `start = \"earliest\"`: it learns from the first \
                     stored windows, which a retrain would replay; to learn from recent \
                     windows, define it with `start = \"now\"`"
                ),
            )]));
        }
        if let Some(previous) = pipelines.by_name.remove(&name) {
            previous.stop().await;
        }
        tracing::info!(pipeline = %name, "Pipeline retraining: every device learns afresh from the stored windows before now.");
        self.launch_with(&mut pipelines, origin, compiled, false);
        Ok(())
    }
}

/// Uploaded models.
impl PipelineManager {
    fn model_path(&self, name: &str) -> std::path::PathBuf {
        self.models_dir.join(format!("{name}.onnx"))
    }

    /// The pipelines whose `model_name` is `name`, as their model or their shadow model, by
    /// name.
    fn users_of(pipelines: &Pipelines, name: &str) -> Vec<String> {
        pipelines
            .by_name
            .values()
            .filter(|m| {
                let champion =
                    m.config.model == "onnx" && m.config.model_name.as_deref() == Some(name);
                let challenger = m.config.shadow.as_ref().is_some_and(|shadow| {
                    shadow.model == "onnx" && shadow.model_name.as_deref() == Some(name)
                });
                champion || challenger
            })
            .map(|m| m.config.name.clone())
            .collect()
    }

    fn describe_model(
        name: &str,
        bytes: &[u8],
        model: &fabrik_onnx::Model,
        used_by: Vec<String>,
        signed_by: Option<String>,
    ) -> ModelInfo {
        use sha2::Digest;
        let sha256 = sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        ModelInfo {
            name: name.to_owned(),
            bytes: bytes.len() as u64,
            sha256,
            version: fabrik_ml::pipeline::onnx::content_version(bytes),
            inputs: model
                .inputs()
                .iter()
                .map(|input| format!("{}: {}", input.name, input.kind))
                .collect(),
            outputs: model.outputs().iter().map(|o| o.name.clone()).collect(),
            used_by,
            signed_by,
        }
    }

    async fn list_models(&self) -> Result<Vec<ModelInfo>, ControlError> {
        let pipelines = self.pipelines.lock().await;
        let entries = match std::fs::read_dir(&self.models_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(ControlError::Storage(format!(
                    "{}: {e}",
                    self.models_dir.display()
                )));
            }
        };
        let mut models = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".onnx"))
                .filter(|n| model_name_ok(n))
            else {
                continue;
            };
            let bytes = std::fs::read(&path)
                .map_err(|e| ControlError::Storage(format!("{}: {e}", path.display())))?;
            // Stored models were checked on upload; one that no longer loads is still listed.
            let used_by = Self::users_of(&pipelines, name);
            // A model whose signature no longer verifies is listed unsigned; its pipelines
            // fail to load with the reason.
            let signed_by = self.trust.check_file(&path, &bytes).ok().flatten();
            match fabrik_onnx::Model::from_bytes(&bytes) {
                Ok(model) => models.push(Self::describe_model(
                    name, &bytes, &model, used_by, signed_by,
                )),
                Err(e) => {
                    tracing::warn!(model = name, error = %e, "An uploaded model no longer loads.")
                }
            }
        }
        models.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(models)
    }

    async fn store_model(
        &self,
        name: String,
        bytes: Vec<u8>,
        signature: Option<String>,
    ) -> Result<(ModelInfo, bool), ControlError> {
        if !model_name_ok(&name) {
            return Err(ControlError::Invalid(vec![(
                "name".into(),
                format!("`{name}`: {MODEL_NAME_RULE}"),
            )]));
        }
        let signed_by = self
            .trust
            .check(&bytes, signature.as_deref())
            .map_err(|why| ControlError::Invalid(vec![("signature".into(), why)]))?;
        let model = fabrik_onnx::Model::from_bytes(&bytes)
            .map_err(|e| ControlError::Invalid(vec![("model".into(), e.to_string())]))?;
        let mut pipelines = self.pipelines.lock().await;
        let users = Self::users_of(&pipelines, &name);
        // A replacement must fit every pipeline that uses the model: one that does not would
        // take them down with the old model gone.
        let misfits: Vec<String> = users
            .iter()
            .filter_map(|user| {
                let managed = pipelines.by_name.get(user)?;
                let compiled = compile(&managed.config).ok()?;
                let uses = |c: &Compiled| {
                    matches!(&c.model, ModelChoice::Onnx { source: OnnxSource::Uploaded(n), .. } if *n == name)
                };
                let champion = uses(&compiled)
                    .then(|| model_misfit(&compiled, &bytes, ModelSource::Uploaded(&name)))
                    .flatten();
                let challenger = compiled
                    .shadow
                    .as_deref()
                    .filter(|c| uses(c))
                    .and_then(|c| model_misfit(c, &bytes, ModelSource::Uploaded(&name)))
                    .map(|why| format!("as its shadow model: {why}"));
                champion
                    .or(challenger)
                    .map(|why| format!("pipeline `{user}`: {why}"))
            })
            .collect();
        if !misfits.is_empty() {
            return Err(ControlError::NotChangeable(format!(
                "model `{name}` is used by pipelines it does not fit, so it was not replaced: {}",
                misfits.join("; ")
            )));
        }
        let info = Self::describe_model(&name, &bytes, &model, users.clone(), signed_by);
        let path = self.model_path(&name);
        let signature_path = crate::model_signature::signature_path(&path);
        let created = !path.exists();
        let stored_signature = std::fs::read_to_string(&signature_path).ok();
        // The same bytes and signature again (a deployment re-run) change nothing and restart
        // nothing.
        if !created
            && stored_signature == signature
            && std::fs::read(&path).is_ok_and(|stored| stored == bytes)
        {
            return Ok((info, false));
        }
        // The signature first: a crash between the two files leaves a pair that does not
        // verify, which refuses to load, never an unchecked model.
        match signature {
            Some(signature) => store_file(signature_path, signature.into_bytes()).await?,
            None => match std::fs::remove_file(&signature_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ControlError::Storage(format!(
                        "{}: {e}",
                        signature_path.display()
                    )));
                }
            },
        }
        store_file(path, bytes).await?;
        // The pipelines that use it load it again; a model that does not fit them fails
        // them alone, with the reason on their status. A stored definition that does not
        // compile stays as it is, failed with its reason (and kept in the file).
        for user in &users {
            let Some(managed) = pipelines.by_name.get(user) else {
                continue;
            };
            let origin = managed.origin;
            if let Ok(compiled) = compile(&managed.config) {
                self.replace(&mut pipelines, origin, compiled).await;
            }
        }
        tracing::info!(model = %name, bytes = info.bytes, restarted = users.len(), "Model uploaded.");
        Ok((info, created))
    }

    async fn delete_model(&self, name: String) -> Result<(), ControlError> {
        let pipelines = self.pipelines.lock().await;
        let path = self.model_path(&name);
        if !model_name_ok(&name) || !path.exists() {
            return Err(ControlError::NotFound(format!(
                "no uploaded model named `{name}`"
            )));
        }
        let users = Self::users_of(&pipelines, &name);
        if !users.is_empty() {
            return Err(ControlError::NotChangeable(format!(
                "model `{name}` is used by pipeline(s) {}; remove them or change their model first",
                users.join(", ")
            )));
        }
        std::fs::remove_file(&path)
            .map_err(|e| ControlError::Storage(format!("{}: {e}", path.display())))?;
        let _ = std::fs::remove_file(crate::model_signature::signature_path(&path));
        tracing::info!(model = %name, "Model deleted.");
        Ok(())
    }
}

impl PipelineControl for PipelineManager {
    fn apply(&self, config: PipelineConfig) -> BoxFuture<'_, Result<bool, ControlError>> {
        Box::pin(self.apply_definition(config))
    }

    fn apply_all(
        &self,
        configs: Vec<PipelineConfig>,
    ) -> BoxFuture<'_, Result<Vec<bool>, ControlError>> {
        Box::pin(self.apply_definitions(configs))
    }

    fn check(&self, config: PipelineConfig) -> BoxFuture<'_, Result<DryRun, ControlError>> {
        Box::pin(self.check_definition(config))
    }

    fn check_all(
        &self,
        configs: Vec<PipelineConfig>,
    ) -> BoxFuture<'_, Result<Vec<DryRun>, ControlError>> {
        Box::pin(async move {
            let (compiled, _) = compile_batch(&configs, |c: &PipelineConfig| &c.name, compile)?;
            self.check_models(&compiled)?;
            let mut found = Vec::with_capacity(configs.len());
            for config in configs {
                found.push(self.check_definition(config).await?);
            }
            Ok(found)
        })
    }

    fn remove(&self, name: String) -> BoxFuture<'_, Result<(), ControlError>> {
        Box::pin(self.remove_definition(name))
    }

    fn drift(
        &self,
        name: String,
    ) -> BoxFuture<'_, Result<Vec<fabrik_api::pipelines::DriftStatus>, ControlError>> {
        Box::pin(async move {
            if !self.pipelines.lock().await.by_name.contains_key(&name) {
                return Err(ControlError::NotFound(format!(
                    "no pipeline named `{name}`"
                )));
            }
            crate::drift::latest(&self.store, &name)
                .await
                .map_err(ControlError::Storage)
        })
    }

    fn shadow(
        &self,
        name: String,
        days: u32,
        alpha: f64,
    ) -> BoxFuture<'_, Result<fabrik_api::pipelines::ShadowComparison, ControlError>> {
        Box::pin(async move {
            let (champion, challenger) = {
                let pipelines = self.pipelines.lock().await;
                let managed = pipelines
                    .by_name
                    .get(&name)
                    .ok_or_else(|| ControlError::NotFound(format!("no pipeline named `{name}`")))?;
                let compiled = compile(&managed.config).map_err(ControlError::Invalid)?;
                let challenger = compiled.shadow.ok_or_else(|| {
                    ControlError::NotFound(format!(
                        "pipeline `{name}` has no shadow model (`[pipelines.shadow]`)"
                    ))
                })?;
                (compiled.config, challenger.config)
            };
            let mut comparison =
                crate::shadow::compare(&self.store, &champion, &challenger, days, alpha)
                    .await
                    .map_err(ControlError::Storage)?;
            if comparison.arms.is_some()
                && let Some(use_case) = champion.use_case.as_deref().filter(|u| !u.is_empty())
                && let Some(registry) = &self.registry
            {
                let compared =
                    crate::shadow_kpis::use_case_kpis(&self.store, registry, use_case, &comparison)
                        .await;
                if let Some(arms) = comparison.arms.as_mut() {
                    match compared {
                        Ok(kpis) => arms.kpis = kpis,
                        Err(e) => arms.kpi_error = Some(e),
                    }
                }
            }
            Ok(comparison)
        })
    }

    fn interval_arm_kpis(
        &self,
        from_ns: i64,
        to_ns: i64,
    ) -> BoxFuture<'_, Result<Vec<fabrik_api::pipelines::IntervalArmKpis>, ControlError>> {
        Box::pin(async move {
            let Some(registry) = &self.registry else {
                return Ok(Vec::new());
            };
            // The splits as defined now; a split removed meanwhile is no longer recorded.
            let splits: Vec<(PipelineConfig, PipelineConfig)> = {
                let pipelines = self.pipelines.lock().await;
                pipelines
                    .by_name
                    .values()
                    .filter_map(|managed| {
                        let compiled = compile(&managed.config).ok()?;
                        if !compiled.has_live_split() {
                            return None;
                        }
                        let challenger = compiled.shadow?.config;
                        Some((compiled.config, challenger))
                    })
                    .collect()
            };
            let mut compared = Vec::new();
            for (champion, challenger) in &splits {
                let Some(use_case) = champion.use_case.as_deref().filter(|u| !u.is_empty()) else {
                    continue;
                };
                compared.push(
                    crate::shadow_kpis::interval_kpis(
                        &self.store,
                        registry,
                        use_case,
                        (champion, challenger),
                        from_ns,
                        to_ns,
                    )
                    .await,
                );
            }
            Ok(compared)
        })
    }

    fn retrain(&self, name: String) -> BoxFuture<'_, Result<(), ControlError>> {
        Box::pin(self.retrain_pipeline(name))
    }

    fn performance(
        &self,
        name: String,
    ) -> BoxFuture<'_, Result<fabrik_api::pipelines::PerformanceReport, ControlError>> {
        Box::pin(async move {
            let (config, performance) = self.performance_config(&name).await?;
            crate::performance::report(&self.store, &config, &performance)
                .await
                .map_err(ControlError::Storage)
        })
    }

    fn new_performance_reference(
        &self,
        name: String,
        from: Option<i64>,
    ) -> BoxFuture<'_, Result<fabrik_api::pipelines::PerformanceReport, ControlError>> {
        Box::pin(async move {
            let (config, performance) = self.performance_config(&name).await?;
            crate::performance::new_reference(&self.store, &config, &performance, from)
                .await
                .map_err(ControlError::Storage)?
                .map_err(ControlError::NotChangeable)
        })
    }

    fn models(&self) -> BoxFuture<'_, Result<Vec<ModelInfo>, ControlError>> {
        Box::pin(self.list_models())
    }

    fn put_model(
        &self,
        name: String,
        bytes: Vec<u8>,
        signature: Option<String>,
    ) -> BoxFuture<'_, Result<(ModelInfo, bool), ControlError>> {
        Box::pin(self.store_model(name, bytes, signature))
    }

    fn remove_model(&self, name: String) -> BoxFuture<'_, Result<(), ControlError>> {
        Box::pin(self.delete_model(name))
    }

    fn model_file(&self, name: String) -> BoxFuture<'_, Result<Vec<u8>, ControlError>> {
        Box::pin(async move {
            // Checked before it becomes a path: `../x` must not read outside the directory.
            if !model_name_ok(&name) {
                return Err(ControlError::NotFound(format!(
                    "no uploaded model named `{name}`"
                )));
            }
            let path = self.model_path(&name);
            match tokio::fs::read(&path).await {
                Ok(bytes) => Ok(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ControlError::NotFound(
                    format!("no uploaded model named `{name}`"),
                )),
                Err(e) => Err(ControlError::Storage(format!("{}: {e}", path.display()))),
            }
        })
    }
}

/// A pipeline's counters as Prometheus metrics (`fabrik_pipeline_*{pipeline}`): the
/// counters grow by what each pass added, so a replaced or restarted pipeline, whose own
/// counters start again from zero, never moves them backwards.
struct ExportedCounters {
    pipeline: String,
    last: PipelineCounters,
    last_samples: u64,
}

impl ExportedCounters {
    fn new(pipeline: &str) -> Self {
        metrics::gauge!("fabrik_pipeline_problem", "pipeline" => pipeline.to_owned()).set(0.0);
        Self {
            pipeline: pipeline.to_owned(),
            last: PipelineCounters::default(),
            last_samples: 0,
        }
    }

    /// A stopped (removed, replaced) pipeline scores no device and reports no problem.
    fn stopped(&self) {
        for gauge in [
            "fabrik_pipeline_training_devices",
            "fabrik_pipeline_scoring_devices",
            "fabrik_pipeline_problem",
        ] {
            metrics::gauge!(gauge, "pipeline" => self.pipeline.clone()).set(0.0);
        }
    }

    /// Adds what the last pass did; `problem`: the pipeline's status shows one.
    fn update(&mut self, now: &PipelineCounters, samples: u64, pass: Duration, problem: bool) {
        let pipeline = &self.pipeline;
        let grow = |name: &'static str, before: u64, after: u64| {
            metrics::counter!(name, "pipeline" => pipeline.clone())
                .increment(after.saturating_sub(before));
        };
        grow("fabrik_pipeline_samples_total", self.last_samples, samples);
        grow(
            "fabrik_pipeline_windows_total",
            self.last.windows,
            now.windows,
        );
        grow(
            "fabrik_pipeline_incomplete_windows_total",
            self.last.incomplete_windows,
            now.incomplete_windows,
        );
        grow(
            "fabrik_pipeline_inferences_total",
            self.last.inferences,
            now.inferences,
        );
        grow(
            "fabrik_pipeline_anomalies_total",
            self.last.anomalies,
            now.anomalies,
        );
        grow(
            "fabrik_pipeline_model_errors_total",
            self.last.model_errors,
            now.model_errors,
        );
        metrics::gauge!("fabrik_pipeline_training_devices", "pipeline" => pipeline.clone())
            .set(now.training_devices as f64);
        metrics::gauge!("fabrik_pipeline_scoring_devices", "pipeline" => pipeline.clone())
            .set(now.scoring_devices as f64);
        metrics::gauge!("fabrik_pipeline_problem", "pipeline" => pipeline.clone())
            .set(if problem { 1.0 } else { 0.0 });
        metrics::histogram!("fabrik_pipeline_pass_seconds", "pipeline" => pipeline.clone())
            .record(pass.as_secs_f64());
        self.last = *now;
        self.last_samples = samples;
    }
}

/// What the table, if it exists, says cannot work: a device column that is a field (every
/// distinct value would become a device, each with its own model), a signal that is a tag
/// (text fields are fine: they name WAV clips, see [`crate::clips`]). Column kinds never change
/// once a table has them.
fn column_kind_problems(store: &Store, config: &PipelineConfig) -> Vec<(String, String)> {
    let Some(table) = store.tables().into_iter().find(|t| t.name == config.table) else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    if table
        .fields
        .iter()
        .any(|(field, _)| *field == config.device_column)
    {
        problems.push((
            "device_column".to_owned(),
            format!(
                "`{}` is a field of `{}`, not a tag: every value of it would be a device \
                 (tags: {})",
                config.device_column,
                config.table,
                table.tags.join(", ")
            ),
        ));
    }
    for signal in &config.signals {
        if table.tags.iter().any(|tag| tag == signal) {
            problems.push((
                "signals".to_owned(),
                format!(
                    "`{signal}` is a tag of `{}` (text), not a signal",
                    config.table
                ),
            ));
        }
    }
    problems
}

/// What of `config`'s input is not in the store yet: its table, or columns of it (named,
/// with the columns it has); `None` when everything is there.
fn missing_input(store: &Store, config: &PipelineConfig) -> Option<String> {
    if !store.has_table(&config.table) {
        return Some(format!(
            "table `{}` has no rows yet (a table exists once rows have been written to it)",
            config.table
        ));
    }
    let table = store
        .tables()
        .into_iter()
        .find(|t| t.name == config.table)?;
    let present = |name: &str| {
        name == "time"
            || table.tags.iter().any(|tag| tag == name)
            || table.fields.iter().any(|(field, _)| field == name)
    };
    let missing: Vec<String> = std::iter::once(config.device_column.as_str())
        .chain(config.signals.iter().map(String::as_str))
        .filter(|name| !present(name))
        .map(|name| format!("`{name}`"))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let mut columns: Vec<&str> = table.tags.iter().map(String::as_str).collect();
    columns.extend(table.fields.iter().map(|(field, _)| field.as_str()));
    Some(format!(
        "table `{}` has no column {} yet (it has: {})",
        config.table,
        missing.join(", "),
        columns.join(", ")
    ))
}

/// Starts every enabled pipeline of the configuration file (plus the demo one when asked and
/// none is configured) and those defined earlier through the API; each runs in its own task,
/// so one that fails leaves the others running.
pub(crate) async fn start(
    config: &Config,
    demo: bool,
    data_dir: &std::path::Path,
    store: Arc<Store>,
    registry: Option<Registry>,
    board: PipelineBoard,
    lineage: Option<crate::openlineage::Emitter>,
) -> Result<(ServiceHandle, Arc<PipelineManager>), String> {
    let mut configured: Vec<(PipelineOrigin, PipelineConfig)> = config
        .pipelines
        .iter()
        .map(|p| (PipelineOrigin::Config, p.clone()))
        .collect();
    if demo && configured.is_empty() {
        configured.push((PipelineOrigin::Demo, demo_pipeline()));
        configured.push((PipelineOrigin::Demo, demo_acoustic_pipeline()));
    }
    let trust = ModelTrust::from_config(&config.models).map_err(|problems| {
        problems
            .into_iter()
            .map(|(field, message)| format!("{field}: {message}"))
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    if trust.required() {
        tracing::info!("ONNX models load only when signed by a trusted key.");
    }
    let stored_path = data_dir.join(STORED_PIPELINES_FILE);
    let stored: Vec<PipelineConfig> = read_definitions(&stored_path, "pipeline")?;
    let stop = CancellationToken::new();
    let manager = Arc::new(PipelineManager {
        store,
        registry,
        board,
        stop: stop.clone(),
        stored_path,
        models_dir: data_dir.join(MODELS_DIRECTORY),
        trust,
        pipelines: tokio::sync::Mutex::new(Pipelines::default()),
        lineage,
    });
    // Every configured pipeline compiles before any starts, so a bad one leaves no runner
    // behind that nothing would stop.
    let configured = configured
        .into_iter()
        .map(|(origin, pipeline_config)| {
            compile(&pipeline_config)
                .map(|compiled| (origin, compiled))
                .map_err(|problems| {
                    let (field, message) = problems.into_iter().next().unwrap_or_default();
                    format!("pipeline `{}`: {field}: {message}", pipeline_config.name)
                })
        })
        .collect::<Result<Vec<_>, String>>()?;
    {
        let mut pipelines = manager.pipelines.lock().await;
        for (origin, compiled) in configured {
            manager.launch(&mut pipelines, origin, compiled);
        }
        for definition in stored {
            if pipelines.by_name.contains_key(&definition.name) {
                tracing::warn!(
                    pipeline = %definition.name,
                    "A pipeline defined through the API has the name of one in the \
                     configuration file; the configuration file's runs."
                );
                pipelines.shadowed.push(definition);
                continue;
            }
            match compile(&definition) {
                Ok(compiled) => manager.launch(&mut pipelines, PipelineOrigin::Api, compiled),
                Err(problems) => {
                    // Rules may tighten between versions: show it failed, keep it in the
                    // file, and let the API replace or remove it.
                    let reason = describe_problems(&problems);
                    tracing::error!(pipeline = %definition.name, error = %reason, "Stored pipeline definition does not load; the others keep running.");
                    if let Some(emitter) = &manager.lineage {
                        PipelineLineage::new(emitter, &definition, manager.store.clone(), None)
                            .failed(&reason);
                    }
                    manager.board.write().insert(
                        definition.name.clone(),
                        status_of(
                            &definition,
                            Vec::new(),
                            PipelineOrigin::Api,
                            PipelineState::Failed,
                            Some(reason),
                        ),
                    );
                    pipelines.by_name.insert(
                        definition.name.clone(),
                        Managed {
                            origin: PipelineOrigin::Api,
                            config: definition,
                            stop: stop.child_token(),
                            task: None,
                        },
                    );
                }
            }
        }
    }
    let token = stop.clone();
    let running = manager.clone();
    let task = tokio::spawn(async move {
        token.cancelled().await;
        let mut pipelines = running.pipelines.lock().await;
        for (_, managed) in std::mem::take(&mut pipelines.by_name) {
            managed.stop().await;
        }
        Ok(())
    });
    Ok((ServiceHandle { stop, task }, manager))
}

struct Runner {
    compiled: Compiled,
    store: Arc<Store>,
    registry: Option<Registry>,
    board: PipelineBoard,
    /// Where uploaded models are.
    models_dir: std::path::PathBuf,
    /// The keys the model is checked with before it loads.
    trust: ModelTrust,
    /// Whether devices retrain on their saved training spans at start (not after a retrain
    /// request).
    restore_spans: bool,
    /// Where this run's OpenLineage events go, if anywhere.
    emitter: Option<crate::openlineage::Emitter>,
    /// This run's OpenLineage run, once its model loaded.
    lineage: Option<PipelineLineage>,
    /// Rows this run wrote to `inferences`.
    written: std::sync::atomic::AtomicU64,
}

impl Runner {
    /// Loads `compiled`'s model into a pipeline; `status` updates this pipeline's status with
    /// a threshold the model decides (the champion's, not a challenger's).
    /// Also returns an ONNX model's content version.
    fn load(
        &self,
        compiled: &Compiled,
        status: bool,
    ) -> Result<(Pipeline, Option<String>), fabrik_ml::MlError> {
        match &compiled.model {
            ModelChoice::Builtin(model) => {
                let model = *model;
                Pipeline::new(compiled.spec.clone(), move || model.build())
                    .map(|pipeline| (pipeline, None))
            }
            ModelChoice::Onnx { source, output } => {
                let model = load_onnx(
                    source,
                    &self.models_dir,
                    &self.trust,
                    &feature_names(&compiled.spec),
                    output,
                )?;
                let mut spec = compiled.spec.clone();
                // A class probability never exceeds 1, so the default calibrated level (the
                // training windows' largest score × 1.5) could leave every window unflagged:
                // without a threshold given, the more likely class decides.
                if compiled.config.threshold.is_none()
                    && matches!(model.score_kind(), OnnxScore::Probability { .. })
                {
                    spec.threshold = ThresholdSpec::Fixed(PROBABILITY_THRESHOLD);
                    if status {
                        self.update(|s| s.threshold = format!("{PROBABILITY_THRESHOLD:?}"));
                    }
                }
                let version = fabrik_ml::pipeline::WindowModel::version(&model).to_owned();
                Pipeline::new(spec, move || {
                    Box::new(model.clone()) as Box<dyn fabrik_ml::pipeline::WindowModel>
                })
                .map(|pipeline| (pipeline, Some(version)))
            }
        }
    }

    /// This run's OpenLineage run, if events go anywhere; `model_version`: its ONNX model's.
    fn lineage_run(&self, model_version: Option<String>) -> Option<PipelineLineage> {
        let emitter = self.emitter.clone()?;
        let model = match &self.compiled.model {
            ModelChoice::Builtin(_) => None,
            ModelChoice::Onnx { source, .. } => Some(match source {
                OnnxSource::Path(path) => (ModelFile::Path(path), model_version),
                OnnxSource::Uploaded(name) => (ModelFile::Uploaded(name), model_version),
            }),
        };
        Some(PipelineLineage::new(
            &emitter,
            &self.compiled.config,
            self.store.clone(),
            model,
        ))
    }

    async fn run(mut self, stop: CancellationToken) {
        let name = self.compiled.config.name.clone();
        let loaded = self.load(&self.compiled, true);
        let mut pipeline = match loaded {
            Ok((p, model_version)) => {
                self.lineage = self.lineage_run(model_version);
                p
            }
            Err(e) => {
                metrics::gauge!("fabrik_pipeline_problem", "pipeline" => name.clone()).set(1.0);
                self.update(|s| {
                    s.state = PipelineState::Failed;
                    s.error = Some(e.to_string());
                });
                tracing::error!(pipeline = %name, error = %e, "Pipeline failed to load; the others keep running.");
                if let Some(lineage) = self.lineage_run(None) {
                    lineage.failed(&e.to_string());
                }
                return;
            }
        };
        tracing::info!(pipeline = %name, model = %self.compiled.config.model, "Pipeline started.");
        let start = Timestamp::now().nanos() - self.compiled.lateness_ns;
        // Exclusive lower bound of the next read; `None` reads from the beginning.
        let mut read_after: Option<i64> = if self.compiled.replay {
            None
        } else {
            pipeline.train_only_until(start);
            // A device this definition scored before learns again from the windows it learnt
            // from then, not from those just before the restart: a restart during or after a
            // fault would otherwise learn the fault as normal (false alarms once it clears,
            // none while it lasts).
            let restored = match self
                .retrain_on_saved_spans(&mut pipeline, start, &self.compiled)
                .await
            {
                Ok(restored) => restored,
                Err(e) => {
                    tracing::warn!(pipeline = %name, error = %e, "Pipeline could not read all its devices' training spans; those not restored train on the stored history before the start.");
                    0
                }
            };
            Some(match history_to_train_on(&self.compiled) {
                // The other devices train on the stored windows just before the start, if
                // there are any, so a pipeline defined or restarted where data already flows
                // scores at once instead of waiting `training_windows` windows. History is
                // never scored.
                Some(lookback_ns) => {
                    if restored > 0 {
                        tracing::info!(
                            pipeline = %name,
                            restored,
                            "Pipeline started: devices it scored before learnt from their saved \
                             training spans, the others learn from the stored windows before \
                             the start."
                        );
                    } else {
                        tracing::info!(
                            pipeline = %name,
                            "Pipeline started: devices learn from the stored windows before the start."
                        );
                    }
                    let read_after = start.saturating_sub(lookback_ns);
                    pipeline.history_read_from(read_after.saturating_add(1));
                    read_after
                }
                None => {
                    if restored > 0 {
                        tracing::info!(
                            pipeline = %name,
                            restored,
                            "Pipeline started: devices it scored before learnt from their saved \
                             training spans, the others learn from their next windows."
                        );
                    }
                    start
                }
            })
        };
        // The challenger learns as a device new to the champion does (the saved spans are
        // the champion's), from the same rows, and scores the same windows.
        let mut shadow_problem = None;
        let mut shadow = None;
        if let Some(challenger) = self.compiled.shadow.as_deref() {
            match self.load(challenger, false) {
                Ok((mut challenged, _)) => {
                    if !self.compiled.replay {
                        challenged.train_only_until(start);
                        // Its devices learn again from its own saved spans, as the
                        // champion's do; the others from the history before the start.
                        if let Err(e) = self
                            .retrain_on_saved_spans(&mut challenged, start, challenger)
                            .await
                        {
                            tracing::warn!(pipeline = %name, error = %e, "The shadow model could not read all its devices' training spans; those not restored train on the stored history before the start.");
                        }
                        if let (Some(_), Some(after)) =
                            (history_to_train_on(&self.compiled), read_after)
                        {
                            challenged.history_read_from(after.saturating_add(1));
                        }
                    }
                    shadow = Some(challenged);
                }
                Err(e) => {
                    tracing::error!(pipeline = %name, error = %e, "The pipeline's shadow model failed to load; the pipeline runs without it.");
                    shadow_problem = Some(format!("failed to load: {e}"));
                }
            }
        }
        // Its START names what it reads and writes: with a challenger only if that loaded.
        if let Some(lineage) = &mut self.lineage {
            if shadow.is_none() {
                lineage.without_challenger();
            }
            lineage.started();
        }
        let mut shadow_write_error = None;
        let mut samples = 0u64;
        let mut exported = ExportedCounters::new(&name);
        // Per device of an A/B split, the start of the challenger's first window this run.
        let mut live_from = BTreeMap::new();
        let mut ticker = tokio::time::interval(self.compiled.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Its own task, so estimating never delays scoring; it ends with the pipeline.
        let recorder = self.compiled.config.performance.clone().map(|performance| {
            tokio::spawn(crate::performance::record(
                self.store.clone(),
                self.compiled.config.clone(),
                performance,
                stop.clone(),
            ))
        });
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let horizon = Timestamp::now().nanos() - self.compiled.lateness_ns;
            let started = std::time::Instant::now();
            let result = self
                .step(
                    &mut pipeline,
                    &mut shadow,
                    &mut shadow_write_error,
                    &mut live_from,
                    &mut read_after,
                    horizon,
                    &mut samples,
                )
                .await;
            let pass = started.elapsed();
            let counters = pipeline.counters();
            let model_error = pipeline.last_error().map(str::to_owned);
            // A window shorter than the data's cadence times `min_samples` leaves every window
            // incomplete: the pipeline runs, trains nothing and would say nothing. Each
            // device's first window is usually partial (it began mid-window), so the count is
            // per device.
            let devices = (counters.training_devices + counters.scoring_devices).max(1);
            let starved = (counters.windows >= STARVED_AFTER_WINDOWS * devices
                && counters.incomplete_windows == counters.windows)
                .then(|| {
                    format!(
                        "no complete window yet ({} closed); the last: {}. Widen `window` or \
                         lower `min_samples`",
                        counters.windows,
                        pipeline.last_incomplete().unwrap_or("too few samples")
                    )
                });
            // The challenger's problems are its own: they never mark the pipeline (its gauge
            // pages someone), and the champion's never hide them. Its verdicts failing to be
            // stored is the most pressing; a model error stays until the shadow restarts.
            let shadow_error = shadow_problem
                .clone()
                .or_else(|| shadow_write_error.clone())
                .or_else(|| {
                    shadow
                        .as_ref()
                        .and_then(|challenged| challenged.last_error())
                        .map(|e| format!("the shadow model's last error: {e}"))
                });
            let problem = result.as_ref().err().cloned().or(model_error).or(starved);
            exported.update(&counters, samples, pass, problem.is_some());
            self.update(|s| {
                s.devices = counters.training_devices + counters.scoring_devices;
                s.training_devices = counters.training_devices;
                s.windows = counters.windows;
                s.incomplete_windows = counters.incomplete_windows;
                s.inferences = counters.inferences;
                s.anomalies = counters.anomalies;
                s.samples = samples;
                s.horizon = Some(rfc3339(horizon));
                s.error = problem;
                s.shadow_error.clone_from(&shadow_error);
            });
            if let Err(e) = result {
                tracing::debug!(pipeline = %name, error = %e, "Pipeline step failed; retrying.");
            }
            if let Some(lineage) = &self.lineage {
                lineage.pass(self.written.load(std::sync::atomic::Ordering::Relaxed));
            }
        }
        if let Some(lineage) = &self.lineage {
            lineage.ended(self.written.load(std::sync::atomic::Ordering::Relaxed));
        }
        if let Some(recorder) = recorder {
            let _ = recorder.await;
        }
        exported.stopped();
        self.update(|s| s.state = PipelineState::Stopped);
    }

    fn update(&self, change: impl FnOnce(&mut PipelineStatus)) {
        if let Some(status) = self.board.write().get_mut(&self.compiled.config.name) {
            change(status);
        }
    }

    /// Trains each device that recent inferences of this pipeline name a training span for
    /// on that span's stored rows, so it scores with the model it had; returns how many
    /// devices it restored. The span of the inferences scored last, whichever definition
    /// wrote them: after a restart that is this definition's latest span, and a pipeline
    /// redefined during a fault (a feature added, a threshold changed) learnt the fault as
    /// normal when it trained on the windows before the change; a definition restored after
    /// a retrain under another one keeps the retrained span. Only for models that do not learn while they score: an
    /// adaptive one's model after weeks is not its first windows', and going back to them
    /// would undo its adaptation (it learns from the recent history instead). A device whose
    /// span no longer trains a model (retention removed rows, or the new definition needs
    /// more windows than the span holds) is forgotten, and trains as a new one does; so are
    /// devices of inferences written before spans were recorded.
    ///
    /// `of` is the champion (its spans are in `inferences`) or the shadow model (in
    /// `shadow_inferences`): each learns again from its own spans.
    async fn retrain_on_saved_spans(
        &self,
        pipeline: &mut Pipeline,
        start: i64,
        of: &Compiled,
    ) -> Result<usize, String> {
        let champion = std::ptr::eq(of, &self.compiled);
        let table = if champion {
            INFERENCES_TABLE
        } else {
            crate::shadow::SHADOW_TABLE
        };
        if !self.restore_spans
            || matches!(of.model, ModelChoice::Builtin(model) if model.adapts())
            || !self.store.has_table(table)
        {
            return Ok(0);
        }
        // On the devices of an A/B split the challenger's verdicts are in `inferences` too;
        // the champion learns again from its own.
        let own_rows = if champion && self.store.has_column(table, CHALLENGER_COLUMN) {
            format!("AND {CHALLENGER_COLUMN} IS NOT TRUE")
        } else {
            String::new()
        };
        // Bounded in time: the scan runs at every start, and a device silent for longer
        // than this trains afresh.
        let sql = format!(
            "SELECT device, min(trained_from) AS trained_from, trained_until, \
             CAST(max(time) AS BIGINT) AS last_scored FROM {table} \
             WHERE pipeline = {} AND trained_until IS NOT NULL {own_rows} \
             AND time > now() - INTERVAL '{SPAN_LOOKUP_DAYS} days' \
             GROUP BY device, trained_until",
            literal(&self.compiled.config.name),
        );
        // A device the definition no longer selects is not trained for nothing.
        // A selection that cannot be made (its use case is gone) restores nothing.
        let selected = match self.selected_devices().await {
            Ok((devices, _)) => devices,
            Err(_) => Some(Vec::new()),
        };
        let mut outputs = vec![match self.store.query(&sql).await {
            Ok(output) => output,
            // A table written before spans were recorded has no such columns.
            Err(e) if e.to_string().contains("trained_") => return Ok(0),
            Err(e) => return Err(e.to_string()),
        }];
        // On the devices of an A/B split the champion's spans are beside the challenger's
        // verdicts.
        if champion
            && self
                .store
                .has_column(crate::shadow::SHADOW_TABLE, "champion_trained_until")
        {
            let sql = format!(
                "SELECT device, min(champion_trained_from) AS trained_from, \
                 champion_trained_until AS trained_until, \
                 CAST(max(time) AS BIGINT) AS last_scored FROM {} \
                 WHERE pipeline = {} AND champion_trained_until IS NOT NULL \
                 AND time > now() - INTERVAL '{SPAN_LOOKUP_DAYS} days' \
                 GROUP BY device, champion_trained_until",
                crate::shadow::SHADOW_TABLE,
                literal(&self.compiled.config.name),
            );
            outputs.push(self.store.query(&sql).await.map_err(|e| e.to_string())?);
        }
        // Per device, the span of the inferences scored last.
        let mut spans: BTreeMap<String, (i64, (i64, i64))> = BTreeMap::new();
        for batch in outputs.iter().flat_map(|output| &output.batches) {
            let devices: StringArray =
                cast_column(batch, 0, &DataType::Utf8, "device did not cast to text")?;
            let from: Int64Array =
                cast_column(batch, 1, &DataType::Int64, "trained_from did not cast")?;
            let until: Int64Array =
                cast_column(batch, 2, &DataType::Int64, "trained_until did not cast")?;
            let last_scored: Int64Array =
                cast_column(batch, 3, &DataType::Int64, "last_scored did not cast")?;
            for i in 0..batch.num_rows() {
                if devices.is_null(i) || from.is_null(i) || until.is_null(i) {
                    continue;
                }
                if selected
                    .as_ref()
                    .is_some_and(|selected| !selected.iter().any(|d| d == devices.value(i)))
                {
                    continue;
                }
                let key = if last_scored.is_null(i) {
                    i64::MIN
                } else {
                    last_scored.value(i)
                };
                let span = (from.value(i), until.value(i));
                spans
                    .entry(devices.value(i).to_owned())
                    .and_modify(|best| {
                        if key > best.0 {
                            *best = (key, span);
                        }
                    })
                    .or_insert((key, span));
            }
        }
        // A device retrained on drift at its last check before the stop learnt from a span
        // that no inference names yet (a shadow model has no drift watch).
        let retrained = if champion {
            crate::drift::retrain_spans(&self.store, &self.compiled.config.name, SPAN_LOOKUP_DAYS)
                .await?
        } else {
            BTreeMap::new()
        };
        for (device, retrain) in retrained {
            if let Some(best) = spans.get_mut(&device)
                && retrain.0 >= best.0
            {
                *best = retrain;
            }
        }
        let mut restored = 0;
        let mut lost = Vec::new();
        for (device, &(_, (from, until))) in &spans {
            let mut end = until;
            let mut replayed = self.replay_span(pipeline, device, from, until).await;
            // A redefinition may need more windows than the span holds (longer windows, more
            // training windows). It learns from windows the device was known normal in, not
            // from those just before the change (a review: a window widened during a drift
            // learnt the drift): first as many as it needs ending where the span ended, then,
            // if the device has no data that early, the span and the windows after it up to
            // the first one flagged.
            if matches!(replayed, Ok(())) && !pipeline.is_scoring(device) {
                pipeline.forget(device);
                if let Some(lookback) = history_to_train_on(of) {
                    replayed = self
                        .replay_span(pipeline, device, until.saturating_sub(lookback), until)
                        .await;
                }
            }
            if matches!(replayed, Ok(())) && !pipeline.is_scoring(device) {
                pipeline.forget(device);
                match self.normal_until(device, until, table).await {
                    Ok(normal_until) if normal_until.min(start) > until => {
                        end = normal_until.min(start);
                        replayed = self.replay_span(pipeline, device, from, end).await;
                    }
                    Ok(_) => {}
                    Err(e) => replayed = Err(e),
                }
            }
            match replayed {
                Ok(()) if pipeline.is_scoring(device) => {
                    pipeline.skip_rows_before(device, end);
                    restored += 1;
                }
                Ok(()) => {
                    pipeline.forget(device);
                    lost.push(device.clone());
                }
                Err(e) => {
                    pipeline.forget(device);
                    return Err(e);
                }
            }
        }
        if !lost.is_empty() {
            tracing::warn!(
                pipeline = %self.compiled.config.name,
                devices = %lost.join(", "),
                "These devices' saved training spans hold too few windows for this definition \
                 and no later windows were known normal: they learn from the recent history, \
                 which may hold a fault in progress (retrain them once it is over)."
            );
        }
        Ok(restored)
    }

    /// Where the windows known normal after `after` end for `device`: the start of its first
    /// window this pipeline flagged since, else now.
    async fn normal_until(&self, device: &str, after: i64, table: &str) -> Result<i64, String> {
        let sql = format!(
            "SELECT CAST(min(window_start) AS BIGINT) FROM {table} \
             WHERE pipeline = {} AND device = {} AND flag = true AND window_start >= {after}",
            literal(&self.compiled.config.name),
            literal(device),
        );
        let first_flagged = crate::columns::query_i64(&self.store, &sql).await?;
        Ok(first_flagged.unwrap_or_else(|| Timestamp::now().nanos()))
    }

    /// Pushes `device`'s stored rows of `[from, until)` and closes their windows.
    async fn replay_span(
        &self,
        pipeline: &mut Pipeline,
        device: &str,
        from: i64,
        until: i64,
    ) -> Result<(), String> {
        let only = [device.to_owned()];
        pipeline.rows_read_from(device, from);
        let mut after = from.saturating_sub(1);
        loop {
            let (rows, last, full) = self.read(Some(after), until - 1, Some(&only)).await?;
            for (device, row) in rows {
                pipeline.push(&device, row);
            }
            match last {
                Some(last) if full && last > after => after = last,
                _ => break,
            }
        }
        // Training windows are not scored: nothing comes out to store.
        let _ = pipeline.advance(until);
        Ok(())
    }

    /// Stored rows per page: a clip becomes thousands of samples, so pages of clips are short.
    fn read_limit(&self) -> usize {
        let c = &self.compiled.config;
        let reads_clips = self.store.tables().iter().any(|t| {
            t.name == c.table
                && t.fields
                    .iter()
                    .any(|(field, kind)| kind == "string" && c.signals.contains(field))
        });
        if reads_clips {
            CLIP_READ_LIMIT
        } else {
            READ_LIMIT
        }
    }

    /// Reads what arrived up to `horizon`, closes windows, stores the inferences.
    #[allow(clippy::too_many_arguments)]
    async fn step(
        &self,
        pipeline: &mut Pipeline,
        shadow: &mut Option<Pipeline>,
        shadow_write_error: &mut Option<String>,
        live_from: &mut BTreeMap<String, i64>,
        read_after: &mut Option<i64>,
        horizon: i64,
        samples: &mut u64,
    ) -> Result<(), String> {
        let (devices, stage) = self.selected_devices().await?;
        let mut shadow_write_failed = false;
        if devices.as_ref().is_some_and(Vec::is_empty) {
            return Err(match &self.compiled.config.use_case {
                Some(use_case) => format!(
                    "no device is both selected by the pipeline and allowed by use case \
                     `{use_case}` at its stage"
                ),
                None => "no registered device matches the pipeline's selection".into(),
            });
        }
        loop {
            let (rows, last, full) = self.read(*read_after, horizon, devices.as_deref()).await?;
            *samples += rows.len() as u64;
            // A span per page of new samples (decision 0054); a poll that found none makes no
            // trace.
            let span = if rows.is_empty() {
                tracing::Span::none()
            } else {
                let name = &self.compiled.config.name;
                // Links to the traced messages whose rows the page read (decision 0081), known
                // before the span is made: a root span that links to a sampled message is kept
                // whatever the sampling ratio.
                let linked = if fabrik_runtime::telemetry::spans_exported() {
                    fabrik_runtime::telemetry::message_spans_of(
                        rows.iter()
                            .filter_map(|(_, row)| u64::try_from(row.arrival).ok()),
                        MESSAGE_LINKS,
                    )
                } else {
                    Vec::new()
                };
                let links = (!linked.is_empty()).then(|| crate::traces::links_field(&linked));
                tracing::info_span!(
                target: fabrik_runtime::telemetry::SPAN_TARGET,
                "pipeline.step",
                            otel.name = %format_args!("pipeline {name}"),
                            pipeline = %name,
                            model = %model_tag(&self.compiled.config),
                            samples = rows.len() as u64,
                            windows = tracing::field::Empty,
                            flagged = tracing::field::Empty,
                            otel.links = links.as_deref(),
                        )
            };
            let page = async {
                for (device, row) in rows {
                    if let Some(challenged) = shadow.as_mut() {
                        challenged.push(&device, row.clone());
                    }
                    pipeline.push(&device, row);
                }
                if let Some(last) = last {
                    *read_after = Some(last);
                }
                // A full page may end mid-timestamp; close windows only up to what is complete.
                let complete_to = if full {
                    last.unwrap_or(horizon)
                } else {
                    horizon
                };
                let mut inferences = pipeline.advance(complete_to);
                // A device taken out of the selection (a use case stepped back) still has open
                // windows: they close, but are not scored.
                let mut checks = pipeline.take_drift_checks();
                let mut challenged = shadow
                    .as_mut()
                    .map(|challenged| challenged.advance(complete_to))
                    .unwrap_or_default();
                if let Some(devices) = &devices {
                    inferences.retain(|i| devices.contains(&i.device));
                    checks.retain(|c| devices.contains(&c.device));
                    challenged.retain(|i| devices.contains(&i.device));
                }
                // On the devices the challenger is live on (an A/B split), its verdicts are the
                // pipeline's from its first window on; before, the champion's stand in (while the
                // challenger still learns, or when it failed to load): a device is never left
                // unwatched. By time, not window by window: count windows of the two may start at
                // other samples after a restore, and both would then act on every window.
                let live: Vec<Inference> = if self.compiled.has_live_split() {
                    challenged
                        .iter()
                        .filter(|i| self.compiled.challenger_live(&i.device))
                        .cloned()
                        .collect()
                } else {
                    Vec::new()
                };
                for inference in &live {
                    live_from
                        .entry(inference.device.clone())
                        .and_modify(|from| *from = (*from).min(inference.window_start_ns))
                        .or_insert(inference.window_start_ns);
                }
                // The models learnt are noted before the writes: one whose verdicts a write lost
                // still learnt. On a device an A/B split gave the challenger, its model acts.
                let champion = |version: &str| model_version(&self.compiled.config, version);
                if live_from.is_empty() {
                    if let Some(lineage) = &self.lineage {
                        lineage.learnt(&inferences, champion);
                    }
                    self.write(&inferences, stage, false).await?;
                } else {
                    let acting: Vec<Inference> = inferences
                        .iter()
                        .filter(|i| {
                            live_from
                                .get(&i.device)
                                .is_none_or(|&from| i.window_start_ns < from)
                        })
                        .cloned()
                        .collect();
                    if let (Some(lineage), Some(challenger)) =
                        (&self.lineage, self.compiled.shadow.as_deref())
                    {
                        lineage.learnt(&acting, champion);
                        lineage.learnt(&live, |version| model_version(&challenger.config, version));
                    }
                    self.write(&acting, stage, false).await?;
                    self.write(&live, stage, true).await?;
                }
                crate::drift::record(
                    &self.store,
                    &self.compiled.config.name,
                    pipeline.feature_names(),
                    &checks,
                )
                .await?;
                // The champion's pass goes on whatever happens to the challenger's verdicts.
                if let Some(challenger) = &self.compiled.shadow {
                    match crate::shadow::record(
                        &self.store,
                        &self.compiled.config,
                        &challenger.config,
                        &inferences,
                        &challenged,
                        |device| self.compiled.challenger_live(device),
                    )
                    .await
                    {
                        // A write clears an earlier failure; a pass that wrote nothing, or whose
                        // earlier page failed, does not.
                        Ok(true) if !shadow_write_failed => *shadow_write_error = None,
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(pipeline = %self.compiled.config.name, error = %e, "The shadow model's verdicts were not stored.");
                            shadow_write_failed = true;
                            *shadow_write_error = Some(e);
                        }
                    }
                }
                Ok::<_, String>(inferences)
            };
            let inferences = tracing::Instrument::instrument(page, span.clone()).await?;
            span.record("windows", inferences.len() as u64);
            span.record(
                "flagged",
                inferences.iter().filter(|i| i.flag).count() as u64,
            );
            if !full {
                break;
            }
        }
        // Everything up to the horizon has been read; later arrivals for that span are past
        // the configured lateness.
        if read_after.is_none_or(|t| t < horizon) {
            *read_after = Some(horizon);
        }
        Ok(())
    }

    /// The devices the pipeline may score now (`None`: every device), and its use case's
    /// stage, if it serves one.
    async fn selected_devices(&self) -> Result<(Option<Vec<String>>, Option<Stage>), String> {
        let c = &self.compiled.config;
        let filtered = c.site.is_some() || c.device_type.is_some() || c.label.is_some();
        let mut devices: Option<Vec<String>> = (!c.devices.is_empty()).then(|| c.devices.clone());
        let mut use_case_stage = None;
        if let Some(use_case) = &c.use_case {
            // Read on every pass, so a stage decision takes effect within one interval.
            let registry = self
                .registry
                .as_ref()
                .ok_or("a pipeline of a use case needs the registry module")?;
            let (stage, allowed) = registry
                .use_case_devices(use_case)
                .await
                .map_err(|e| format!("{e}: the pipeline scores no device until it is"))?;
            use_case_stage = Some(stage);
            if let Some(allowed) = allowed {
                devices = Some(match devices {
                    Some(listed) => listed.into_iter().filter(|d| allowed.contains(d)).collect(),
                    None => allowed,
                });
            }
        }
        if filtered {
            let registry = self
                .registry
                .as_ref()
                .ok_or("selecting devices by site, type or label needs the registry module")?;
            let matching: Vec<String> = registry
                .list(&selection_filter(c))
                .await
                .map_err(|e| format!("device registry: {e}"))?
                .into_iter()
                .map(|d| d.id)
                .collect();
            devices = Some(match devices {
                Some(listed) => listed
                    .into_iter()
                    .filter(|d| matching.contains(d))
                    .collect(),
                None => matching,
            });
        }
        Ok((devices, use_case_stage))
    }

    /// What a failed read means for the operator: a table or column that has not been
    /// written yet is a wait (data may still come), named; anything else is the store's own
    /// message.
    fn explain_read_error(&self, message: &str) -> String {
        match missing_input(&self.store, &self.compiled.config) {
            Some(missing) => format!("waiting for data: {missing}"),
            None => message.to_owned(),
        }
    }

    /// Rows with `after < time ≤ horizon`, in time order, the last time read, and whether the
    /// page was full. A full page may have cut the rows of its last timestamp in two: that
    /// timestamp is left for the next page (unless it is all the page holds), and the returned
    /// position is just before it. Clip signals are expanded into their samples.
    async fn read(
        &self,
        after: Option<i64>,
        horizon: i64,
        devices: Option<&[String]>,
    ) -> Result<(Vec<(String, Row)>, Option<i64>, bool), String> {
        let c = &self.compiled.config;
        let limit = self.read_limit();
        let quote = |name: &str| format!("\"{name}\"");
        let columns: Vec<String> = c.signals.iter().map(|s| quote(s)).collect();
        let mut sql = format!(
            "SELECT time, {}, CAST(_raw_id AS BIGINT), {} FROM {} \
             WHERE time <= to_timestamp_nanos({horizon})",
            quote(&c.device_column),
            columns.join(", "),
            quote(&c.table),
        );
        if let Some(after) = after {
            sql.push_str(&format!(" AND time > to_timestamp_nanos({after})"));
        }
        if let Some(filter) = &c.filter {
            sql.push_str(&format!(" AND {}", crate::sql_text::embedded(filter)));
        }
        if let Some(devices) = devices {
            let list: Vec<String> = devices.iter().map(|d| literal(d)).collect();
            sql.push_str(&format!(
                " AND {} IN ({})",
                quote(&c.device_column),
                list.join(", ")
            ));
        }
        let page_sql = format!("{sql} ORDER BY time LIMIT {limit}");
        let output = match self.store.query(&page_sql).await {
            Ok(output) => output,
            Err(e) => return Err(self.explain_read_error(&e.to_string())),
        };
        // Stored rows first, with the clip references of each; clips are read once the page
        // is cut, so a clip left for the next page is not read twice.
        let page: usize = output.batches.iter().map(|b| b.num_rows()).sum();
        let (mut stored, mut last, mut clip_columns) = self.stored_rows(&output)?;
        let full = page >= limit;
        if full && let Some(t) = last {
            let keep = stored.iter().take_while(|(_, r, _)| r.time_ns < t).count();
            if keep > 0 {
                stored.truncate(keep);
                last = Some(t - 1);
            } else {
                // The whole page is one timestamp, and more rows may share it (clips of a
                // synchronised capture): read that timestamp whole, or the rest is skipped.
                let all_of_t = format!("{sql} AND time = to_timestamp_nanos({t}) ORDER BY time");
                let output = match self.store.query(&all_of_t).await {
                    Ok(output) => output,
                    Err(e) => return Err(self.explain_read_error(&e.to_string())),
                };
                (stored, last, clip_columns) = self.stored_rows(&output)?;
            }
        }
        let mut rows = Vec::with_capacity(stored.len());
        for (device, row, clips) in stored {
            let (start_ns, arrival) = (row.time_ns, row.arrival);
            // A row of clips alone has no numbers to give; its samples are the clips'.
            if !clip_columns || row.values.iter().any(Option::is_some) {
                rows.push((device.clone(), row));
            }
            for (j, reference) in clips {
                let Some((rate, samples)) =
                    crate::clips::clip_samples(&self.store, &c.name, &c.signals[j], &reference)
                        .await?
                else {
                    continue;
                };
                rows.reserve(samples.len());
                for (k, sample) in samples.into_iter().enumerate() {
                    let mut values = vec![None; c.signals.len()];
                    values[j] = Some(sample);
                    rows.push((
                        device.clone(),
                        Row {
                            time_ns: crate::clips::sample_time(start_ns, k, rate),
                            values,
                            arrival,
                        },
                    ));
                }
            }
        }
        Ok((rows, last, full))
    }

    /// The rows of a query's answer (time, device, `_raw_id`, then the signals), each with
    /// the clips it names; the last time seen; whether any signal is a clip column.
    fn stored_rows(
        &self,
        output: &fabrik_store::QueryOutput,
    ) -> Result<(StoredRows, Option<i64>, bool), String> {
        let c = &self.compiled.config;
        let mut stored: StoredRows = Vec::new();
        let mut last = None;
        let mut clip_columns = false;
        for batch in &output.batches {
            let times: Int64Array = cast_column(
                batch,
                0,
                &DataType::Int64,
                "time column did not cast to integers",
            )?;
            let device_names: StringArray = cast_column(
                batch,
                1,
                &DataType::Utf8,
                "device column did not cast to text",
            )?;
            let arrivals: Int64Array = cast_column(
                batch,
                2,
                &DataType::Int64,
                "_raw_id did not cast to integers",
            )?;
            let signal_columns = c
                .signals
                .iter()
                .enumerate()
                .map(|(j, signal)| SignalColumn::of(batch, 3 + j, signal))
                .collect::<Result<Vec<_>, _>>()?;
            clip_columns |= signal_columns
                .iter()
                .any(|column| matches!(column, SignalColumn::Clips(_)));
            for i in 0..batch.num_rows() {
                if times.is_null(i) {
                    continue;
                }
                let time_ns = times.value(i);
                last = Some(time_ns);
                if device_names.is_null(i) {
                    continue;
                }
                let mut clips = Vec::new();
                let values = signal_columns
                    .iter()
                    .enumerate()
                    .map(|(j, column)| match column {
                        SignalColumn::Numbers(a) => (!a.is_null(i)).then(|| a.value(i)),
                        SignalColumn::Clips(a) => {
                            if !a.is_null(i) {
                                clips.push((j, a.value(i).to_owned()));
                            }
                            None
                        }
                    })
                    .collect();
                let arrival = if arrivals.is_null(i) {
                    0
                } else {
                    arrivals.value(i)
                };
                stored.push((
                    device_names.value(i).to_owned(),
                    Row {
                        time_ns,
                        values,
                        arrival,
                    },
                    clips,
                ));
            }
        }
        Ok((stored, last, clip_columns))
    }

    /// Stores inferences, each stamped with the stage its use case was at (if any).
    ///
    /// `challenger`: the verdicts are the challenger's, on devices it is live on (an A/B
    /// split); their rows say so (`challenger`), so the champion restores its own spans.
    async fn write(
        &self,
        inferences: &[Inference],
        stage: Option<Stage>,
        challenger: bool,
    ) -> Result<(), String> {
        if inferences.is_empty() {
            return Ok(());
        }
        let config = &self.compiled.config;
        let name = &config.name;
        let scored_by = match (&self.compiled.shadow, challenger) {
            (Some(shadow), true) => &shadow.config,
            _ => config,
        };
        let model = model_tag(scored_by);
        let points: Vec<Point> = inferences
            .iter()
            .map(|inference| {
                let version = model_version(scored_by, &inference.model_version);
                let mut point = inference_point(name, &model, &version, inference);
                if challenger {
                    point
                        .fields
                        .push((CHALLENGER_COLUMN.to_owned(), Value::Bool(true)));
                }
                // Fields, not tags: a window scored again after a stage change is the same
                // series and time, and replaces its row rather than doubling it.
                if let (Some(use_case), Some(stage)) = (&config.use_case, stage) {
                    point
                        .fields
                        .push(("use_case".to_owned(), Value::Str(use_case.clone())));
                    point
                        .fields
                        .push(("stage".to_owned(), Value::Str(stage.as_str().to_owned())));
                }
                point
            })
            .collect();
        store_rows(&self.store, name, &points, INFERENCES_TABLE)
            .await
            .map_err(|e| format!("storing inferences: {e}"))?;
        self.written
            .fetch_add(points.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for inference in inferences.iter().filter(|i| i.flag) {
            tracing::info!(
                pipeline = %name,
                device = %inference.device,
                score = inference.score,
                threshold = inference.threshold,
                top_signal = inference.top_signal().unwrap_or("-"),
                "Anomalous window."
            );
        }
        Ok(())
    }
}

/// Writes rows pipeline `pipeline` computed into `table`, with the pipeline as their lineage
/// source (`pipeline:<name>`).
pub(crate) async fn store_rows(
    store: &Store,
    pipeline: &str,
    points: &[Point],
    table: &str,
) -> Result<(), fabrik_store::StoreError> {
    store
        .write_computed(points, &format!("pipeline:{pipeline}"), table)
        .await
        .map(|_| ())
}

/// How far back before its start a `start = "now"` pipeline (or its shadow model) reads stored
/// rows to train on: its training windows, one more (the first is usually partial) and a
/// window's length. `None` for count windows, whose span in time is unknown.
fn history_to_train_on(compiled: &Compiled) -> Option<i64> {
    match compiled.spec.window {
        WindowSpec::Time { size_ns, hop_ns } => {
            let windows = i64::try_from(compiled.spec.training_windows).ok()?;
            windows
                .checked_add(1)?
                .checked_mul(hop_ns)?
                .checked_add(size_ns)
        }
        WindowSpec::Count { .. } => None,
    }
}

/// Reads a pipeline's ONNX model, checks its signature, and loads it for its `features`; an
/// uploaded model's errors name it, not where the server keeps it. The bytes checked are the
/// bytes loaded: the file is read once.
fn load_onnx(
    source: &OnnxSource,
    models_dir: &std::path::Path,
    trust: &ModelTrust,
    features: &[String],
    output: &str,
) -> Result<OnnxWindowModel, fabrik_ml::MlError> {
    let (file, model_source) = match source {
        OnnxSource::Path(path) => {
            let path = std::path::Path::new(path);
            (path.to_path_buf(), ModelSource::Path(path))
        }
        OnnxSource::Uploaded(name) => (
            models_dir.join(format!("{name}.onnx")),
            ModelSource::Uploaded(name),
        ),
    };
    let bytes = std::fs::read(&file).map_err(|e| match source {
        OnnxSource::Uploaded(name) => fabrik_ml::MlError::Parameter {
            name: "model_name",
            reason: format!(
                "no uploaded model named `{name}` (upload it with PUT /api/v1/models/{{name}})"
            ),
        },
        OnnxSource::Path(_) => fabrik_ml::MlError::io(&file, e),
    })?;
    let signed_by = trust
        .check_file(&file, &bytes)
        .map_err(|why| model_source.error(format!("refused before loading: {why}")))?;
    if let Some(key) = signed_by {
        tracing::debug!(model = %file.display(), key, "Model signature verified.");
    }
    OnnxWindowModel::from_bytes(&bytes, features, output, model_source)
}

/// Why `bytes`, as the ONNX model of `compiled`, would not load: a model that does not fit
/// its pipeline is refused where it is defined or uploaded, not found failing later.
fn model_misfit(compiled: &Compiled, bytes: &[u8], source: ModelSource<'_>) -> Option<String> {
    let ModelChoice::Onnx { output, .. } = &compiled.model else {
        return None;
    };
    OnnxWindowModel::from_bytes(bytes, &feature_names(&compiled.spec), output, source)
        .err()
        .map(|e| match e {
            fabrik_ml::MlError::Parameter { reason, .. } => reason,
            other => other.to_string(),
        })
}

/// The `model_version` of a pipeline's inferences. An ONNX model's is its file's content
/// hash. A built-in model trains on each device's data, so its version is the algorithm's
/// (`1`) and a digest of everything in the definition that decides what it learns and scores
/// (`1+3f2a9c0d`): inferences before and after a change of features, windows, training or
/// threshold are told apart, as two model versions of an A/B comparison would be.
pub(crate) fn model_version(config: &PipelineConfig, from_model: &str) -> String {
    if config.model == "onnx" {
        return from_model.to_owned();
    }
    let decisive = serde_json::json!([
        config.model,
        config.table,
        config.filter,
        config.signals,
        config.window,
        config.hop,
        config.features,
        config.min_samples,
        config.training_windows,
        config.threshold,
    ]);
    // The same FNV-1a digest as an ONNX file's version, shortened: 8 hex digits tell a
    // pipeline's few definitions apart.
    let digest = fabrik_ml::pipeline::onnx::content_version(decisive.to_string().as_bytes());
    format!("{from_model}+{}", &digest[..8])
}

/// The `model` of a pipeline's inferences: the built-in model's name, or for ONNX
/// `onnx:<model>` with the uploaded model's name or the file's stem, so inferences of two
/// ONNX models are told apart by name (and by `model_version`, the file's content hash).
pub(crate) fn model_tag(config: &PipelineConfig) -> String {
    if config.model != "onnx" {
        return config.model.clone();
    }
    let named = config.model_name.clone().or_else(|| {
        config.model_path.as_deref().and_then(|path| {
            std::path::Path::new(path.trim())
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
        })
    });
    match named {
        Some(name) => format!("onnx:{name}"),
        None => config.model.clone(),
    }
}

pub(crate) fn inference_point(
    pipeline: &str,
    model: &str,
    version: &str,
    inference: &Inference,
) -> Point {
    let contributions = serde_json::Value::Object(
        inference
            .contributions
            .iter()
            .map(|(feature, share)| (feature.clone(), serde_json::json!(share)))
            .collect(),
    );
    let mut fields = vec![
        ("score".to_owned(), Value::F64(finite(inference.score))),
        (
            "threshold".to_owned(),
            Value::F64(finite(inference.threshold)),
        ),
        ("flag".to_owned(), Value::Bool(inference.flag)),
        (
            "window_start".to_owned(),
            Value::I64(inference.window_start_ns),
        ),
        ("window_end".to_owned(), Value::I64(inference.window_end_ns)),
        (
            "samples".to_owned(),
            Value::I64(i64::try_from(inference.samples).unwrap_or(i64::MAX)),
        ),
        (
            "last_arrival".to_owned(),
            Value::I64(inference.last_arrival),
        ),
        (
            "window_id".to_owned(),
            Value::Str(inference.window_id(pipeline)),
        ),
        (
            "contributions".to_owned(),
            Value::Str(contributions.to_string()),
        ),
        ("model_version".to_owned(), Value::Str(version.to_owned())),
        (
            "trained_from".to_owned(),
            Value::I64(inference.trained_from_ns),
        ),
        (
            "trained_until".to_owned(),
            Value::I64(inference.trained_until_ns),
        ),
    ];
    if let Some(signal) = inference.top_signal() {
        fields.push(("top_signal".to_owned(), Value::Str(signal.to_owned())));
    }
    Point {
        measurement: INFERENCES_TABLE.to_owned(),
        tags: vec![
            ("pipeline".to_owned(), pipeline.to_owned()),
            ("device".to_owned(), inference.device.clone()),
            ("model".to_owned(), model.to_owned()),
        ],
        fields,
        // The window's last instant: the inference is about data up to there.
        time: Timestamp(inference.window_end_ns - 1),
        quality: Quality::Good,
    }
}

/// The store rejects NaN and infinities; a saturated score is stored as the largest float.
fn finite(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(f64::MIN, f64::MAX)
    }
}

pub(crate) fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_in_model_version_changes_with_what_decides_its_scores_only() {
        let config = demo_pipeline();
        let version = model_version(&config, "1");
        assert!(
            version.starts_with("1+") && version.len() == 10,
            "{version}"
        );
        assert_eq!(model_version(&config.clone(), "1"), version, "stable");
        let mut moved = config.clone();
        moved.interval = "5s".into();
        assert_eq!(
            model_version(&moved, "1"),
            version,
            "how often it runs is not the model"
        );
        let mut retuned = config.clone();
        retuned.threshold = Some("quantile:1.0*3".into());
        assert_ne!(model_version(&retuned, "1"), version);
        let mut refeatured = config;
        refeatured.features.push("kurtosis".into());
        assert_ne!(model_version(&refeatured, "1"), version);
        let mut onnx = demo_pipeline();
        onnx.model = "onnx".into();
        assert_eq!(model_version(&onnx, "00ff00ff00ff00ff"), "00ff00ff00ff00ff");
    }

    #[test]
    fn inferences_name_the_onnx_model_they_came_from() {
        let mut config = demo_pipeline();
        assert_eq!(model_tag(&config), config.model);
        config.model = "onnx".into();
        config.model_name = Some("pump-ae".into());
        assert_eq!(model_tag(&config), "onnx:pump-ae");
        config.model_name = None;
        config.model_path = Some(" /opt/models/pump-ae-v2.onnx ".into());
        assert_eq!(model_tag(&config), "onnx:pump-ae-v2");
    }

    #[test]
    fn an_onnx_pipeline_names_a_file_or_an_uploaded_model_but_not_both() {
        let mut config = demo_pipeline();
        config.model = "onnx".into();
        config.model_name = Some("pump-ae".into());
        let compiled = compile(&config).expect("uploaded model");
        assert!(matches!(
            compiled.model,
            ModelChoice::Onnx { source: OnnxSource::Uploaded(ref name), .. } if name == "pump-ae"
        ));
        let fields = |config: &PipelineConfig| -> Vec<String> {
            compile(config)
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|(field, _)| field)
                .collect()
        };
        config.model_path = Some("models/pump.onnx".into());
        assert_eq!(fields(&config), ["model_name"], "both");
        config.model_path = None;
        for bad in ["../pump", ".hidden", "", "a b"] {
            config.model_name = Some(bad.into());
            assert_eq!(fields(&config), ["model_name"], "`{bad}`");
        }
        config.model_name = None;
        assert_eq!(fields(&config), ["model_path"], "neither");
        assert!(model_name_ok(&"m".repeat(64)) && !model_name_ok(&"m".repeat(65)));
    }

    #[test]
    fn stored_definitions_round_trip_and_a_damaged_file_is_named() {
        use crate::stored::write_atomically;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(STORED_PIPELINES_FILE);
        assert_eq!(
            read_definitions::<PipelineConfig>(&path, "pipeline"),
            Ok(Vec::new()),
            "no file yet"
        );
        let mut second = demo_pipeline();
        second.name = "second".into();
        second.model = "iforest".into();
        let definitions = vec![demo_pipeline(), second];
        let json = definitions_json(&definitions).expect("json");
        write_atomically(&path, &json).expect("write");
        assert_eq!(read_definitions(&path, "pipeline"), Ok(definitions.clone()));
        let json = definitions_json(&definitions[..1]).expect("json");
        write_atomically(&path, &json).expect("replace");
        assert_eq!(
            read_definitions(&path, "pipeline"),
            Ok(definitions[..1].to_vec())
        );
        assert!(
            !path.with_extension("json.tmp").exists(),
            "the temporary file is renamed into place"
        );
        std::fs::write(&path, "[{\"name\": ").expect("damage");
        let error = read_definitions::<PipelineConfig>(&path, "pipeline").expect_err("damaged");
        assert!(error.contains(STORED_PIPELINES_FILE), "{error}");
    }

    #[test]
    fn the_demo_pipeline_and_the_example_compile() {
        assert!(compile(&demo_pipeline()).is_ok());
        assert!(compile(&demo_acoustic_pipeline()).is_ok());
    }

    #[test]
    fn every_problem_is_named_with_its_field() {
        let mut bad = demo_pipeline();
        bad.features = vec!["mean".into(), "median".into()];
        bad.model = "lstm".into();
        bad.window = "100 samples".into();
        bad.hop = Some("5s".into());
        bad.start = "yesterday".into();
        bad.filter = Some("running; DROP TABLE pump".into());
        let problems = compile(&bad).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            vec!["features", "model", "hop", "start", "filter"],
            "{problems:?}"
        );
        assert!(problems[0].1.contains("`median`"));
        // The filter is checked as the query embeds it, as an alert rule's is: text after
        // one complete condition is refused, a trailing comment is not.
        let mut filtered = demo_pipeline();
        filtered.filter = Some("running) FROM other WHERE (true".into());
        let problems = compile(&filtered).unwrap_err();
        assert_eq!(problems[0].0, "filter", "{problems:?}");
        filtered.filter = Some("running -- only while it runs".into());
        assert!(compile(&filtered).is_ok());
        filtered.filter = Some("true) OR (1=1".into());
        let problems = compile(&filtered).unwrap_err();
        assert_eq!(problems[0].0, "filter", "{problems:?}");
        // Definitions that could never score are refused.
        let mut never = demo_pipeline();
        never.signals = vec![
            "vibration_rms".into(),
            "vibration_rms".into(),
            "device".into(),
        ];
        never.window = "10s".into();
        never.hop = Some("5ms".into());
        let problems = compile(&never).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["signals", "signals", "hop"], "{problems:?}");
        let mut short = demo_pipeline();
        short.window = "5 samples".into();
        short.hop = None;
        short.min_samples = 10;
        let problems = compile(&short).unwrap_err();
        assert_eq!(problems[0].0, "min_samples", "{problems:?}");
        // The row's own columns are not signals; a model file with a built-in model is not
        // silently ignored.
        let mut own = demo_pipeline();
        own.signals = vec!["time".into(), "_raw_id".into()];
        own.model_name = Some("pump-ae".into());
        let problems = compile(&own).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["signals", "signals", "model_name"], "{problems:?}");
        // A drift watch that could not work is refused field by field.
        let mut drifting = demo_pipeline();
        drifting.drift = Some(fabrik_runtime::config::DriftConfig {
            method: "mmd".into(),
            threshold: Some(-1.0),
            windows: Some(0),
            share: 1.5,
            retrain_after: Some(1),
        });
        let problems = compile(&drifting).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "drift.method",
                "drift.threshold",
                "drift.windows",
                "drift.share",
                "drift.retrain_after"
            ],
            "{problems:?}"
        );
        assert!(
            problems[0].1.contains("`mmd` is not a drift method"),
            "{problems:?}"
        );
        assert!(
            problems[4].1.contains("`drift.windows` is 0"),
            "{problems:?}"
        );
        // A shadow model's problems name its own fields only.
        let mut shadowed = demo_pipeline();
        shadowed.shadow = Some(fabrik_runtime::config::ShadowConfig {
            model: "lstm".into(),
            model_path: None,
            model_name: None,
            model_output: "auto".into(),
            threshold: None,
            training_windows: None,
            live_share: None,
            live_devices: Vec::new(),
        });
        shadowed.features.push("median".into());
        let problems = compile(&shadowed).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["features", "shadow.model"], "{problems:?}");
        assert!(problems[1].1.contains("`lstm`"), "{problems:?}");
    }

    /// A built-in model's scores are never negative: a fixed threshold at or below 0 would
    /// flag every window, and is refused naming the field.
    #[test]
    fn a_threshold_no_built_in_score_can_stay_under_is_refused() {
        let mut p = demo_pipeline();
        for level in ["-3", "0"] {
            p.threshold = Some(level.into());
            let problems = compile(&p).unwrap_err();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].0, "threshold");
            assert!(problems[0].1.contains("never negative"), "{problems:?}");
        }
        p.threshold = Some("0.5".into());
        assert!(compile(&p).is_ok());
    }

    #[test]
    fn a_reconstruction_check_over_fewer_than_three_features_is_refused() {
        let mut p = demo_pipeline();
        p.signals = vec!["vibration_rms".into(), "motor_current".into()];
        p.features = vec!["mean".into()];
        p.training_windows = Some(40);
        p.drift = Some(fabrik_runtime::config::DriftConfig {
            method: "reconstruction".into(),
            windows: Some(20),
            ..toml::from_str("").expect("defaults")
        });
        let problems = compile(&p).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "drift.method");
        assert!(
            problems[0].1.contains("3 features at least, not 2"),
            "{problems:?}"
        );
        p.features.push("std".into());
        assert!(compile(&p).is_ok());
    }

    #[test]
    fn each_model_has_its_training_minimum_and_default_threshold() {
        let mut p = demo_pipeline();
        p.model = "dbz".into();
        p.training_windows = Some(12);
        let problems = compile(&p).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "training_windows");
        assert!(
            problems[0].1.contains("`dbz` needs at least 140"),
            "{problems:?}"
        );
        p.training_windows = Some(140);
        assert!(compile(&p).is_ok());
        // Unset, it is 30 or the model's minimum, whichever is more; an unset threshold
        // is the model's own alarm level where it has one.
        p.training_windows = None;
        p.threshold = None;
        let dbz = compile(&p).expect("dbz");
        assert_eq!(dbz.spec.training_windows, 140);
        assert_eq!(dbz.spec.threshold, ThresholdSpec::Fixed(1.0));
        p.model = "rart".into();
        assert_eq!(
            compile(&p).expect("rart").spec.threshold,
            ThresholdSpec::Fixed(0.72)
        );
        p.model = "robust_z".into();
        let robust_z = compile(&p).expect("robust_z");
        assert_eq!(robust_z.spec.training_windows, 30);
        assert_eq!(
            robust_z.spec.threshold,
            ThresholdSpec::Quantile {
                quantile: 1.0,
                margin: 1.5
            }
        );
    }

    #[test]
    fn count_and_sliding_windows_parse() {
        let mut p = demo_pipeline();
        p.window = "256 samples".into();
        p.hop = Some("64 samples".into());
        let c = compile(&p).unwrap();
        assert_eq!(c.spec.window, WindowSpec::Count { size: 256, hop: 64 });
        p.window = "10s".into();
        p.hop = Some("20s".into());
        assert!(compile(&p).is_err());
    }

    #[test]
    fn an_ab_split_draws_each_device_once_and_for_all() {
        let split = |share: Option<f64>, listed: &[&str]| {
            let mut p = demo_pipeline();
            if let Some(shadow) = p.shadow.as_mut() {
                shadow.live_share = share;
                shadow.live_devices = listed.iter().map(|d| (*d).to_owned()).collect();
            }
            compile(&p).expect("compiles")
        };
        let devices: Vec<String> = (0..10_000).map(|i| format!("pump-{i:05}")).collect();
        let live =
            |c: &Compiled| -> Vec<bool> { devices.iter().map(|d| c.challenger_live(d)).collect() };
        let quarter = live(&split(Some(0.25), &[]));
        let in_quarter = quarter.iter().filter(|&&l| l).count();
        // Binomial(10,000, 0.25): the standard deviation is 43.
        assert!((2_300..2_700).contains(&in_quarter), "{in_quarter}");
        // A larger share only adds devices; the same share draws the same ones.
        let half = live(&split(Some(0.5), &[]));
        assert!(quarter.iter().zip(&half).all(|(q, h)| !q || *h));
        assert_eq!(quarter, live(&split(Some(0.25), &[])));
        // Names, not shares: exactly the listed devices; no split, no device.
        let named = split(None, &["pump-00007"]);
        assert!(named.challenger_live("pump-00007") && !named.challenger_live("pump-00008"));
        assert!(live(&split(None, &[])).iter().all(|&l| !l));
        assert!(live(&split(Some(1.0), &[])).iter().all(|&l| l));
        // The draw depends on the pipeline too, so two pipelines split differently.
        assert_ne!(
            split_draw("pump-health", "pump-00001"),
            split_draw("pump-acoustic", "pump-00001")
        );
        // Refused outside 0..1, and empty names.
        let mut p = demo_pipeline();
        if let Some(shadow) = p.shadow.as_mut() {
            shadow.live_share = Some(-0.1);
            shadow.live_devices = vec![" ".into()];
        }
        let problems = compile(&p).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            ["shadow.live_share", "shadow.live_devices"],
            "{problems:?}"
        );
    }
}
