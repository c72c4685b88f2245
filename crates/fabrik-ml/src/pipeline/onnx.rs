//! ONNX models as a pipeline's model step, through `fabrik-onnx`: autoencoders (score =
//! reconstruction error, explained per feature), scikit-learn IsolationForest (score = the
//! negated `decision_function`, so higher is more anomalous), binary classifiers (score = the
//! probability of the anomaly class) and models that compute their own score.
//!
//! Owns loading and checking a model against the pipeline's features: a model whose input does
//! not take the pipeline's feature vector fails to load with an error naming the input and both
//! widths. Pre-trained models do not learn on the device; the training windows only calibrate
//! the threshold.

use std::path::Path;
use std::sync::Arc;

use fabrik_onnx::{Dim, ElementType, Model, Tensor, ValueKind};

use super::model::{WindowModel, occlusion};
use crate::MlError;

/// How a model's output becomes a score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnnxScore {
    /// Mean squared difference between the input and the output of the same width.
    Reconstruction {
        /// The output holding the reconstruction.
        output: String,
    },
    /// `-output` (scikit-learn's decision function: negative is anomalous).
    NegatedDecision {
        /// The output holding the decision function.
        output: String,
    },
    /// The last column of a probability output (the positive class of a binary classifier).
    Probability {
        /// The output holding class probabilities.
        output: String,
    },
    /// The output's one value per row, as it is (higher is more anomalous).
    Score {
        /// The output holding the score.
        output: String,
    },
}

impl OnnxScore {
    fn output(&self) -> &str {
        match self {
            Self::Reconstruction { output }
            | Self::NegatedDecision { output }
            | Self::Probability { output }
            | Self::Score { output } => output,
        }
    }
}

/// How `model_output` says an output becomes a score (see [`OnnxScore`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// Decided from the outputs' names and widths.
    Auto,
    /// [`OnnxScore::Reconstruction`].
    Reconstruction,
    /// [`OnnxScore::NegatedDecision`].
    Decision,
    /// [`OnnxScore::Probability`].
    Probability,
    /// [`OnnxScore::Score`].
    Score,
}

impl OutputMode {
    const ALL: [Self; 5] = [
        Self::Auto,
        Self::Reconstruction,
        Self::Decision,
        Self::Probability,
        Self::Score,
    ];

    /// Its name in `model_output`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Reconstruction => "reconstruction",
            Self::Decision => "decision",
            Self::Probability => "probability",
            Self::Score => "score",
        }
    }
}

/// What `model_output` asks for: how the output becomes a score, and which output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChoice {
    /// How.
    pub mode: OutputMode,
    /// The output named after a colon, e.g. `score:err`.
    pub output: Option<String>,
}

/// The values `model_output` takes, for messages.
pub const MODEL_OUTPUT_RULE: &str = "expected auto, reconstruction, decision, probability or \
     score, optionally followed by `:<output name>` (e.g. `score:anomaly`); auto takes no name";

impl OutputChoice {
    /// Parses `model_output`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (mode, output) = match text.split_once(':') {
            Some((mode, output)) => (mode, Some(output)),
            None => (text, None),
        };
        let mode = OutputMode::ALL
            .into_iter()
            .find(|known| known.name() == mode)
            .ok_or_else(|| format!("`{text}`: {MODEL_OUTPUT_RULE}"))?;
        match output {
            Some(_) if mode == OutputMode::Auto => Err(format!("`{text}`: {MODEL_OUTPUT_RULE}")),
            Some("") => Err(format!("`{text}`: the output name after `:` is empty")),
            _ => Ok(Self {
                mode,
                output: output.map(str::to_owned),
            }),
        }
    }
}

/// A loaded ONNX model scoring feature vectors.
#[derive(Clone)]
pub struct OnnxWindowModel {
    model: Arc<Model>,
    input: String,
    width: usize,
    score: OnnxScore,
    version: String,
}

impl std::fmt::Debug for OnnxWindowModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxWindowModel")
            .field("input", &self.input)
            .field("width", &self.width)
            .field("score", &self.score)
            .field("version", &self.version)
            .finish()
    }
}

/// Where a model came from, for its load errors: the file a pipeline's `model_path` names, or
/// the uploaded model its `model_name` names.
#[derive(Debug, Clone, Copy)]
pub enum ModelSource<'a> {
    /// `model_path`.
    Path(&'a Path),
    /// `model_name`.
    Uploaded(&'a str),
}

impl ModelSource<'_> {
    /// An error about this model, naming the field that chose it and the model.
    pub fn error(self, reason: impl std::fmt::Display) -> MlError {
        match self {
            Self::Path(path) => MlError::Parameter {
                name: "model_path",
                reason: format!("{}: {reason}", path.display()),
            },
            Self::Uploaded(name) => MlError::Parameter {
                name: "model_name",
                reason: format!("model `{name}`: {reason}"),
            },
        }
    }
}

/// FNV-1a over the file: a content version that changes whenever the model does; it is the
/// `model_version` of the inferences an ONNX model scores.
pub fn content_version(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

impl OnnxWindowModel {
    /// Loads `path` for a pipeline computing `features` (names in input order). `output`
    /// chooses the score: `auto`, `reconstruction`, `decision` or `probability`.
    pub fn load(path: &Path, features: &[String], output: &str) -> Result<Self, MlError> {
        let bytes = std::fs::read(path).map_err(|e| MlError::io(path, e))?;
        Self::from_bytes(&bytes, features, output, ModelSource::Path(path))
    }

    /// As [`OnnxWindowModel::load`], from the model's bytes; errors name `source`.
    pub fn from_bytes(
        bytes: &[u8],
        features: &[String],
        output: &str,
        source: ModelSource<'_>,
    ) -> Result<Self, MlError> {
        let load_error = |reason: String| source.error(reason);
        let model = Model::from_bytes(bytes).map_err(|e| load_error(e.to_string()))?;
        let [input] = model.inputs() else {
            return Err(load_error(format!(
                "the model has {} inputs; a pipeline feeds exactly one [N, features] tensor",
                model.inputs().len()
            )));
        };
        let width = match &input.kind {
            ValueKind::Tensor {
                element_type: Some(ElementType::F32),
                shape: Some(shape),
            } if shape.len() == 2 => match shape[1] {
                Dim::Fixed(n) => n,
                _ => features.len(),
            },
            other => {
                return Err(load_error(format!(
                    "input `{}` is a {other}; a pipeline feeds a float tensor [N, features]",
                    input.name
                )));
            }
        };
        if width != features.len() {
            return Err(load_error(format!(
                "input `{}` takes {width} features, the pipeline computes {} ({})",
                input.name,
                features.len(),
                features.join(", ")
            )));
        }
        let choice = OutputChoice::parse(output).map_err(|e| MlError::Parameter {
            name: "model_output",
            reason: e,
        })?;
        let names: Vec<&str> = model.outputs().iter().map(|o| o.name.as_str()).collect();
        let listed = names.join(", ");
        if let Some(named) = &choice.output
            && !names.contains(&named.as_str())
        {
            return Err(load_error(format!(
                "model_output `{output}` names output `{named}`; the model's outputs are \
                 [{listed}]"
            )));
        }
        let find = |candidates: &[&str]| {
            choice.output.clone().or_else(|| {
                candidates
                    .iter()
                    .find(|c| names.contains(c))
                    .map(|c| (*c).to_owned())
            })
        };
        // The one output, when the model has only one.
        let only = || {
            choice.output.clone().or_else(|| match names.as_slice() {
                [one] => Some((*one).to_owned()),
                _ => None,
            })
        };
        let score = match choice.mode {
            OutputMode::Decision => find(&["scores"])
                .or_else(only)
                .map(|output| OnnxScore::NegatedDecision { output }),
            OutputMode::Probability => find(&["probabilities", "output_probability"])
                .map(|output| OnnxScore::Probability { output }),
            OutputMode::Score => only().map(|output| OnnxScore::Score { output }),
            OutputMode::Reconstruction => find(&[])
                .or_else(|| names.first().map(|n| (*n).to_owned()))
                .map(|output| OnnxScore::Reconstruction { output }),
            OutputMode::Auto => find(&["scores"])
                .map(|output| OnnxScore::NegatedDecision { output })
                .or_else(|| {
                    find(&["probabilities", "output_probability"])
                        .map(|output| OnnxScore::Probability { output })
                })
                .or_else(|| {
                    names.first().map(|n| OnnxScore::Reconstruction {
                        output: (*n).to_owned(),
                    })
                }),
        };
        let Some(score) = score else {
            let hint = match choice.mode {
                OutputMode::Decision => "an output named `scores` (or the model's only output)",
                OutputMode::Probability => {
                    "an output named `probabilities` or `output_probability`"
                }
                OutputMode::Score => "one output, or an output named after `score:`",
                OutputMode::Auto | OutputMode::Reconstruction => "an output",
            };
            let example = match choice.mode {
                OutputMode::Auto => OutputMode::Score,
                named => named,
            };
            return Err(load_error(format!(
                "model_output `{output}` needs {hint}; the model's outputs are [{listed}] \
                 (name one, e.g. `{}:{}`)",
                example.name(),
                // A float output, which a score can be (a classifier's label is not).
                model
                    .outputs()
                    .iter()
                    .find(|o| matches!(
                        o.kind,
                        ValueKind::Tensor {
                            element_type: Some(ElementType::F32 | ElementType::F64),
                            ..
                        }
                    ))
                    .map_or("out", |o| o.name.as_str())
            )));
        };
        let input = input.name.clone();
        let mut loaded = Self {
            model: Arc::new(model),
            input,
            width,
            score,
            version: content_version(bytes),
        };
        // One run on zeros proves the output has the shape the score needs.
        let values = loaded
            .run(&vec![0.0; width])
            .map_err(|e| load_error(e.to_string()))?;
        let wanted = loaded.score.output().to_owned();
        match &loaded.score {
            // `auto` took the first output as a reconstruction; one value per row is a score,
            // unless there is one feature, where it may be either.
            OnnxScore::Reconstruction { .. }
                if choice.mode == OutputMode::Auto && values.len() == 1 =>
            {
                if width == 1 {
                    return Err(load_error(format!(
                        "output `{wanted}` has one value per row, as the pipeline has one \
                         feature: say whether it is the model's own score \
                         (`model_output = \"score\"`) or its reconstruction of the feature \
                         (`model_output = \"reconstruction\"`)"
                    )));
                }
                loaded.score = OnnxScore::Score { output: wanted };
            }
            OnnxScore::Reconstruction { .. } if values.len() != width => {
                return Err(load_error(format!(
                    "output `{wanted}` has {} values per row, the pipeline computes {width} \
                     features: a reconstruction has one per feature (for a model that outputs \
                     its own anomaly score, `model_output = \"score\"`)",
                    values.len()
                )));
            }
            // A LinearSVC exports its decision margins under `probabilities`. (A forest's
            // probabilities are sums of f32 leaf weights: 10 × 0.1 is 1.0000001.)
            OnnxScore::Probability { .. }
                if values.iter().any(|p| !(-1e-4..=1.0 + 1e-4).contains(p)) =>
            {
                return Err(load_error(format!(
                    "output `{wanted}` gave {values:?} for an all-zero window: not \
                     probabilities (a LinearSVC exports its decision margins under that name); \
                     export a model whose one output per row is the anomaly score and read it \
                     with `model_output = \"score\"`"
                )));
            }
            OnnxScore::Probability { .. } if values.len() > 2 => {
                return Err(load_error(format!(
                    "output `{wanted}` holds {} classes; `probability` scores the anomaly class \
                     of a binary classifier (its last column): export a normal-against-anomalous \
                     model, or one that outputs its score (`model_output = \"score\"`)",
                    values.len()
                )));
            }
            OnnxScore::NegatedDecision { .. } | OnnxScore::Score { .. } if values.len() != 1 => {
                return Err(load_error(format!(
                    "output `{wanted}` has {} values per row; `{}` reads one",
                    values.len(),
                    choice.mode.name()
                )));
            }
            _ => {}
        }
        loaded
            .probe(&vec![0.0; width])
            .map_err(|e| load_error(e.to_string()))?;
        Ok(loaded)
    }

    /// How the score is read.
    pub fn score_kind(&self) -> &OnnxScore {
        &self.score
    }

    fn run(&self, row: &[f64]) -> Result<Vec<f32>, MlError> {
        let failed = |reason: String| MlError::Detector {
            detector: "onnx",
            reason,
        };
        if row.len() != self.width {
            return Err(failed(format!(
                "window has {} features, input `{}` takes {}",
                row.len(),
                self.input,
                self.width
            )));
        }
        let x = Tensor::from_f32(vec![1, self.width], row.iter().map(|v| *v as f32).collect())
            .map_err(|e| failed(e.to_string()))?;
        let wanted = self.score.output();
        let outputs = self
            .model
            .run(&[(self.input.as_str(), x)])
            .map_err(|e| failed(e.to_string()))?;
        let value = outputs
            .into_iter()
            .find(|(name, _)| name == wanted)
            .map(|(_, v)| v)
            .ok_or_else(|| failed(format!("output `{wanted}` missing")))?;
        if let Some(tensor) = value.as_tensor() {
            return tensor
                .as_f32()
                .map(<[f32]>::to_vec)
                .ok_or_else(|| failed(format!("output `{wanted}` is not float")));
        }
        if let Some(maps) = value.as_maps() {
            return maps
                .row(0)
                .map(<[f32]>::to_vec)
                .ok_or_else(|| failed(format!("output `{wanted}` has no row")));
        }
        Err(failed(format!(
            "output `{wanted}` is neither a tensor nor maps"
        )))
    }

    fn squared_errors(&self, row: &[f64], output: &[f32]) -> Result<Vec<f64>, MlError> {
        if output.len() != row.len() {
            return Err(MlError::Detector {
                detector: "onnx",
                reason: format!(
                    "reconstruction has {} values for {} features",
                    output.len(),
                    row.len()
                ),
            });
        }
        Ok(row
            .iter()
            .zip(output)
            .map(|(x, y)| (x - f64::from(*y)).powi(2))
            .collect())
    }
}

impl WindowModel for OnnxWindowModel {
    fn name(&self) -> &str {
        "onnx"
    }
    fn version(&self) -> &str {
        &self.version
    }
    fn fit(&mut self, _rows: &[Vec<f64>]) -> Result<(), MlError> {
        Ok(())
    }
    fn score(&mut self, row: &[f64]) -> Result<f64, MlError> {
        self.probe(row)
    }
    /// A class probability is at most 1; the other scores are unbounded.
    fn score_bound(&self) -> Option<f64> {
        matches!(self.score, OnnxScore::Probability { .. }).then_some(1.0)
    }
    fn probe(&self, row: &[f64]) -> Result<f64, MlError> {
        let output = self.run(row)?;
        Ok(match &self.score {
            OnnxScore::Reconstruction { .. } => {
                let errors = self.squared_errors(row, &output)?;
                errors.iter().sum::<f64>() / errors.len().max(1) as f64
            }
            OnnxScore::NegatedDecision { .. } => -f64::from(output.first().copied().unwrap_or(0.0)),
            OnnxScore::Probability { .. } => f64::from(output.last().copied().unwrap_or(0.0)),
            OnnxScore::Score { .. } => f64::from(output.first().copied().unwrap_or(0.0)),
        })
    }
    fn contributions(&self, row: &[f64], medians: &[f64]) -> Result<Vec<f64>, MlError> {
        match &self.score {
            OnnxScore::Reconstruction { .. } => {
                let output = self.run(row)?;
                let errors = self.squared_errors(row, &output)?;
                let total: f64 = errors.iter().sum();
                Ok(if total > 0.0 {
                    errors.iter().map(|e| e / total).collect()
                } else {
                    errors
                })
            }
            _ => occlusion(self, row, medians),
        }
    }
    /// An autoencoder's error is a sum of per-feature errors, its own explanation; a decision
    /// or probability is explained like the built-in forests.
    fn explains_itself(&self) -> bool {
        matches!(self.score, OnnxScore::Reconstruction { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fabrik-onnx/tests/fixtures")
            .join(name)
    }

    fn features(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i}.mean")).collect()
    }

    #[test]
    fn isolation_forest_scores_outliers_higher() {
        let m = OnnxWindowModel::load(&fixture("iforest_100.onnx"), &features(8), "auto").unwrap();
        assert!(matches!(m.score_kind(), OnnxScore::NegatedDecision { .. }));
        let normal = m.probe(&[0.0; 8]).unwrap();
        // The forest was trained with its first 20 rows shifted by +6: that is where outliers are.
        let outlier = m.probe(&[6.0; 8]).unwrap();
        assert!(outlier > normal, "{outlier} vs {normal}");
        assert_eq!(m.version().len(), 16);
        let mut shifted = [0.0; 8];
        shifted[3] = 9.0;
        let shares = m.contributions(&shifted, &[0.0; 8]).unwrap();
        let top = (0..8)
            .max_by(|&a, &b| shares[a].total_cmp(&shares[b]))
            .unwrap();
        assert_eq!(top, 3, "{shares:?}");
    }

    #[test]
    fn autoencoders_explain_by_reconstruction_error() {
        let m = OnnxWindowModel::load(&fixture("ae_torch.onnx"), &features(8), "auto").unwrap();
        assert!(matches!(m.score_kind(), OnnxScore::Reconstruction { .. }));
        let mut row = [0.1; 8];
        row[5] = 25.0;
        assert!(m.probe(&row).unwrap() > m.probe(&[0.1; 8]).unwrap());
        let shares = m.contributions(&row, &[0.0; 8]).unwrap();
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(shares[5] > 0.5, "{shares:?}");
    }

    #[test]
    fn classifiers_score_the_positive_class() {
        let m = OnnxWindowModel::load(&fixture("rf_clf_50_nozipmap.onnx"), &features(8), "auto")
            .unwrap();
        assert!(matches!(m.score_kind(), OnnxScore::Probability { .. }));
        // y = (x0 + x1 > 0)
        let positive = m.probe(&[2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]).unwrap();
        let negative = m
            .probe(&[-2.0, -2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
            .unwrap();
        assert!(positive > 0.5 && negative < 0.5, "{positive} {negative}");
    }

    #[test]
    fn a_model_that_does_not_fit_the_pipeline_names_its_input() {
        let err = OnnxWindowModel::load(&fixture("iforest_100.onnx"), &features(3), "auto")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("input `X` takes 8 features, the pipeline computes 3"),
            "{err}"
        );
        let err = OnnxWindowModel::load(&fixture("nope.onnx"), &features(8), "auto")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.onnx"), "{err}");
        let err = OnnxWindowModel::load(&fixture("ae_torch.onnx"), &features(8), "probability")
            .unwrap_err()
            .to_string();
        assert!(err.contains("model_output `probability`"), "{err}");
    }

    fn edge(name: &str) -> std::path::PathBuf {
        fixture("edge").join(name)
    }

    /// A regressor's one value per row (as an anomaly score model exports it) is the score,
    /// found by `auto`, asked for by `score` with or without its name, negated by `decision`.
    #[test]
    fn a_model_that_outputs_its_own_score_is_read_as_it_is() {
        let row = [0.3, -1.2, 2.5];
        let raw = |output: &str| {
            let m = OnnxWindowModel::load(&edge("reg_agg_sum.onnx"), &features(3), output).unwrap();
            (m.score_kind().clone(), m.probe(&row).unwrap())
        };
        let (kind, auto) = raw("auto");
        assert_eq!(kind, OnnxScore::Score { output: "Y".into() });
        let m = OnnxWindowModel::load(&edge("reg_agg_sum.onnx"), &features(3), "score").unwrap();
        assert_eq!(f64::from(m.run(&row).unwrap()[0]), auto);
        assert_eq!(raw("score"), raw("score:Y"));
        assert_eq!(raw("score").1, auto);
        assert_eq!(raw("decision").1, -auto);
        assert!(auto != 0.0);
    }

    /// With one feature, a one-value output may be a score or a reconstruction: `auto`
    /// asks which instead of guessing.
    #[test]
    fn one_value_for_one_feature_needs_the_mode_named() {
        let path = fixture("ops/identity_width1.onnx");
        let err = OnnxWindowModel::load(&path, &features(1), "auto")
            .unwrap_err()
            .to_string();
        assert!(err.contains("say whether"), "{err}");
        for (mode, kind) in [
            ("score", OnnxScore::Score { output: "Y".into() }),
            (
                "reconstruction",
                OnnxScore::Reconstruction { output: "Y".into() },
            ),
        ] {
            let m = OnnxWindowModel::load(&path, &features(1), mode).unwrap();
            assert_eq!(m.score_kind(), &kind);
        }
    }

    /// A LinearSVC's `probabilities` are decision margins: refused as probabilities. A
    /// model of several outputs asked for its `score` is pointed at a float one.
    #[test]
    fn margins_are_not_probabilities_and_a_score_is_a_float_output() {
        let err = OnnxWindowModel::load(
            &fixture("ops/skl_linearsvc_2class.onnx"),
            &features(6),
            "probability",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not probabilities"), "{err}");
        let err = OnnxWindowModel::load(
            &fixture("ops/skl_logreg_3class.onnx"),
            &features(6),
            "score",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("e.g. `score:probabilities`"), "{err}");
    }

    #[test]
    fn a_multi_class_probability_is_refused() {
        let err = OnnxWindowModel::load(
            &edge("clf3_softmax.onnx"),
            &features(3),
            "probability:probs",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("holds 3 classes") && err.contains("binary"),
            "{err}"
        );
    }

    #[test]
    fn model_output_names_and_modes_are_checked() {
        let err = OnnxWindowModel::load(&edge("reg_agg_sum.onnx"), &features(3), "score:err")
            .unwrap_err()
            .to_string();
        assert!(err.contains("output `err`") && err.contains("[Y]"), "{err}");
        // Two values per row are neither a score nor a reconstruction of three features.
        let err = OnnxWindowModel::load(
            &edge("reg_2targets_none.onnx"),
            &features(3),
            "reconstruction",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("2 values per row") && err.contains("model_output = \"score\""),
            "{err}"
        );
        let err = OnnxWindowModel::load(&edge("reg_2targets_none.onnx"), &features(3), "score")
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 values per row"), "{err}");
        for bad in ["auto:Y", "score:", "scores", "probability:"] {
            assert!(OutputChoice::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            OutputChoice::parse("decision:scores").unwrap(),
            OutputChoice {
                mode: OutputMode::Decision,
                output: Some("scores".into())
            }
        );
    }
}
