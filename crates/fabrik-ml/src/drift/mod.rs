//! Data drift: whether a current sample of a feature comes from its reference sample's
//! distribution, and whether enough features drifted to call the whole input drifted.
//!
//! The tests and the automatic choice among them are Evidently's (its legacy data-drift
//! preset, on SciPy and NumPy), reproduced to rounding, so a drift a pipeline reports is the
//! one a data scientist gets from Evidently on the same numbers:
//!
//! - [`ks`]: two-sample Kolmogorov–Smirnov, SciPy's exact distribution;
//! - [`binned`]: normed Wasserstein, PSI, Jensen–Shannon, Kullback–Leibler, Hellinger,
//!   chi-square and the two-proportion z-test;
//! - [`stream`]: change detection one value at a time (ADWIN, Page–Hinkley), as river does it;
//! - [`kswin`]: a change in a stream's distribution (KSWIN), as river does it, on
//!   [`crate::pyrandom`]'s draws;
//! - [`binary`]: concept drift on a stream of errors (DDM, EDDM, HDDM_A, HDDM_W, FHDDM), as
//!   river does it;
//! - [`reconstruction`]: multivariate drift by PCA reconstruction error, as NannyML does it.

pub mod binary;
mod binned;
pub mod ks;
pub mod kswin;
pub mod reconstruction;
pub mod stream;

pub use ks::{KsTest, ks_2samp};

use crate::MlError;

/// How a feature's current sample is compared with its reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DriftMethod {
    /// Evidently's choice per feature (see [`DriftMethod::resolve`]).
    Auto,
    /// Two-sample Kolmogorov–Smirnov p-value; drift at p ≤ threshold (default 0.05).
    Ks,
    /// Wasserstein-1 distance over the reference's standard deviation; drift at ≥ threshold
    /// (default 0.1).
    Wasserstein,
    /// Population stability index over Evidently's bins; drift at ≥ threshold (0.1).
    Psi,
    /// Jensen–Shannon distance (natural log) of the bins; drift at ≥ threshold (0.1).
    JensenShannon,
    /// Kullback–Leibler divergence of the bins; drift at ≥ threshold (0.1).
    KlDivergence,
    /// Hellinger distance of the bins' densities; drift at ≥ threshold (0.1).
    Hellinger,
    /// Chi-square p-value of the counts per value; drift at p < threshold (0.05).
    ChiSquare,
    /// Two-proportion z-test p-value; drift at p < threshold (0.05).
    Z,
    /// All features together: the PCA reconstruction error (NannyML's); drift when the
    /// current mean error leaves the reference chunks' mean ± threshold standard deviations
    /// (default 3).
    Reconstruction,
}

impl DriftMethod {
    /// Every method, for messages.
    pub const ALL: [DriftMethod; 10] = [
        Self::Auto,
        Self::Ks,
        Self::Wasserstein,
        Self::Psi,
        Self::JensenShannon,
        Self::KlDivergence,
        Self::Hellinger,
        Self::ChiSquare,
        Self::Z,
        Self::Reconstruction,
    ];

    /// The name in configuration and output (Evidently's test names).
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Ks => "ks",
            Self::Wasserstein => "wasserstein",
            Self::Psi => "psi",
            Self::JensenShannon => "jensenshannon",
            Self::KlDivergence => "kl_div",
            Self::Hellinger => "hellinger",
            Self::ChiSquare => "chisquare",
            Self::Z => "z",
            Self::Reconstruction => "reconstruction",
        }
    }

    /// The method named `text`.
    pub fn parse(text: &str) -> Result<Self, MlError> {
        Self::ALL
            .into_iter()
            .find(|method| method.name() == text)
            .ok_or_else(|| MlError::Parameter {
                name: "drift.method",
                reason: format!(
                    "`{text}` is not a drift method (one of {})",
                    Self::ALL.map(Self::name).join(", ")
                ),
            })
    }

    /// Whether the score is a p-value (drift when small) rather than a distance (drift when
    /// large).
    pub fn is_p_value(self) -> bool {
        matches!(self, Self::Ks | Self::ChiSquare | Self::Z)
    }

    /// Evidently's default threshold of the method.
    pub fn default_threshold(self) -> f64 {
        match self {
            Self::Reconstruction => reconstruction::DEFAULT_SIGMAS,
            _ if self.is_p_value() => 0.05,
            _ => 0.1,
        }
    }

    /// The method that compares these samples: itself, or for [`DriftMethod::Auto`]
    /// Evidently's rule for a numerical column — with a reference of at most 1,000 values,
    /// KS above 5 distinct values (in both samples together), else chi-square above 2, else
    /// z; with a larger reference, Wasserstein above 5 distinct values, else Jensen–Shannon.
    pub fn resolve(self, reference: &[f64], current: &[f64]) -> Self {
        if self != Self::Auto {
            return self;
        }
        let distinct = binned::unique_sorted(reference.iter().chain(current).copied()).len();
        match (reference.len() <= 1000, distinct > 5) {
            (true, true) => Self::Ks,
            (true, false) if distinct > 2 => Self::ChiSquare,
            (true, false) => Self::Z,
            (false, true) => Self::Wasserstein,
            (false, false) => Self::JensenShannon,
        }
    }

    /// Whether `score` under `threshold` means drift (KS at p ≤ threshold, the other tests at
    /// p < threshold, distances at ≥ threshold, as Evidently decides).
    pub fn drifted(self, score: f64, threshold: f64) -> bool {
        match self {
            Self::Ks => score <= threshold,
            Self::ChiSquare | Self::Z => score < threshold,
            _ => score >= threshold,
        }
    }
}

/// One feature's comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatureDrift {
    /// The method used (never [`DriftMethod::Auto`]).
    pub method: DriftMethod,
    /// Its p-value or distance.
    pub score: f64,
    /// The threshold it was judged against.
    pub threshold: f64,
    /// Whether the feature drifted.
    pub drifted: bool,
}

/// Compares a feature's `current` values with its `reference` values by `method`, against
/// `threshold` (the method's default when `None`). Both samples need a value, and all values
/// must be finite.
pub fn feature_drift(
    reference: &[f64],
    current: &[f64],
    method: DriftMethod,
    threshold: Option<f64>,
) -> Result<FeatureDrift, MlError> {
    let invalid = |reason: String| MlError::Parameter {
        name: "drift",
        reason,
    };
    for (name, values) in [("reference", reference), ("current", current)] {
        if values.is_empty() {
            return Err(invalid(format!("the {name} sample is empty")));
        }
        if let Some(position) = values.iter().position(|v| !v.is_finite()) {
            return Err(invalid(format!(
                "value {} of the {name} sample is {}, not a finite number",
                position + 1,
                values[position]
            )));
        }
    }
    let method = method.resolve(reference, current);
    let score = match method {
        DriftMethod::Reconstruction => {
            return Err(invalid(
                "`reconstruction` compares all features together, not one".to_owned(),
            ));
        }
        DriftMethod::Auto | DriftMethod::Ks => ks_2samp(reference, current).p_value,
        DriftMethod::Wasserstein => binned::wasserstein_normed(reference, current),
        DriftMethod::Psi => binned::psi(reference, current),
        DriftMethod::JensenShannon => binned::jensen_shannon(reference, current),
        DriftMethod::KlDivergence => binned::kl_divergence(reference, current),
        DriftMethod::Hellinger => binned::hellinger(reference, current),
        DriftMethod::ChiSquare => binned::chi_square(reference, current),
        DriftMethod::Z => binned::z_test(reference, current),
    };
    let threshold = threshold.unwrap_or_else(|| method.default_threshold());
    Ok(FeatureDrift {
        method,
        score,
        threshold,
        drifted: method.drifted(score, threshold),
    })
}

/// Every feature's comparison and the verdict on the whole input.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetDrift {
    /// Per feature, in the order given.
    pub features: Vec<FeatureDrift>,
    /// How many features drifted.
    pub drifted: usize,
    /// `drifted` over the number of features.
    pub share: f64,
    /// Whether `share` reached the drift share asked for (Evidently's `drift_share`); for
    /// [`DriftMethod::Reconstruction`], whether the reconstruction error left its thresholds.
    pub dataset_drift: bool,
    /// The multivariate comparison, for [`DriftMethod::Reconstruction`].
    pub reconstruction: Option<ReconstructionDrift>,
}

/// The whole input's comparison by PCA reconstruction error.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconstructionDrift {
    /// The current rows' mean reconstruction error.
    pub error: f64,
    /// Its sampling error (standard deviation over √n).
    pub sampling_error: f64,
    /// The lower threshold from the reference chunks (none when it would be below 0).
    pub lower: Option<f64>,
    /// The upper threshold from the reference chunks.
    pub upper: f64,
    /// Components kept (65 % of the reference's variance).
    pub components: usize,
    /// The reference chunks the thresholds come from.
    pub reference_chunks: usize,
    /// Rows per reference chunk (the last may have fewer).
    pub chunk_rows: usize,
}

/// Compares each column of `current` with the same column of `reference` (rows of equal
/// width), and calls the input drifted when at least `drift_share` of the columns drifted.
pub fn dataset_drift(
    reference: &[Vec<f64>],
    current: &[Vec<f64>],
    method: DriftMethod,
    threshold: Option<f64>,
    drift_share: f64,
) -> Result<DatasetDrift, MlError> {
    let width = reference.first().map_or(0, Vec::len);
    if width == 0
        || reference
            .iter()
            .chain(current)
            .any(|row| row.len() != width)
    {
        return Err(MlError::Parameter {
            name: "drift",
            reason: format!(
                "every row needs the same number of features ({width}), and one at least"
            ),
        });
    }
    if method == DriftMethod::Reconstruction {
        return reconstruction_drift(
            reference,
            current,
            threshold.unwrap_or(reconstruction::DEFAULT_SIGMAS),
        );
    }
    let column = |rows: &[Vec<f64>], index: usize| -> Vec<f64> {
        rows.iter().map(|row| row[index]).collect()
    };
    let features = (0..width)
        .map(|index| {
            feature_drift(
                &column(reference, index),
                &column(current, index),
                method,
                threshold,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let drifted = features.iter().filter(|f| f.drifted).count();
    let share = drifted as f64 / width as f64;
    Ok(DatasetDrift {
        features,
        drifted,
        share,
        dataset_drift: share >= drift_share,
        reconstruction: None,
    })
}

/// Fewest reference chunks the reconstruction's thresholds are drawn from.
pub const RECONSTRUCTION_CHUNKS: usize = 10;

/// The whole input compared by PCA reconstruction error ([`reconstruction`]): fitted on
/// `reference`, whose chunks — of the current sample's size, or a tenth of the reference when
/// that is smaller, so at least ten — give the thresholds (mean ± `sigmas` standard
/// deviations). Each feature's entry is its mean absolute residual against the same rule over
/// the reference chunks (upper only): which features the broken relation runs through.
pub fn reconstruction_drift(
    reference: &[Vec<f64>],
    current: &[Vec<f64>],
    sigmas: f64,
) -> Result<DatasetDrift, MlError> {
    let chunk_rows = current.len().min(reference.len() / RECONSTRUCTION_CHUNKS);
    if chunk_rows < 2 || current.is_empty() {
        return Err(MlError::Parameter {
            name: "drift",
            reason: format!(
                "a reconstruction check needs {} reference windows and 2 current ones at least \
                 ({} and {})",
                2 * RECONSTRUCTION_CHUNKS,
                reference.len(),
                current.len()
            ),
        });
    }
    let model = reconstruction::Reconstruction::fit(reference, reconstruction::DEFAULT_VARIANCE)?;
    let width = model.width();
    if model.components() >= width {
        // NannyML would go on, comparing errors that are rounding noise (and alerting on
        // every check when they are all exactly zero): with every component kept, no
        // relation among the features is left out to be broken.
        return Err(MlError::Parameter {
            name: "drift",
            reason: format!(
                "the reference's {width} features are too little related for a reconstruction \
                 check: all {width} components are needed for 65 % of their variance, so \
                 nothing is left out to watch; use another drift method"
            ),
        });
    }
    if let Some(row) = current.iter().position(|row| row.len() != width) {
        return Err(MlError::Parameter {
            name: "drift",
            reason: format!(
                "current row {} has {} features, not {width}",
                row + 1,
                current[row].len()
            ),
        });
    }
    // Per chunk: the mean error, and each feature's mean absolute residual.
    let summarise = |rows: &[Vec<f64>]| -> (f64, f64, Vec<f64>) {
        let mut errors = Vec::with_capacity(rows.len());
        let mut per_feature = vec![0.0; width];
        for row in rows {
            let residual = model.residual(row);
            errors.push(residual.iter().map(|r| r * r).sum::<f64>().sqrt());
            for (sum, r) in per_feature.iter_mut().zip(&residual) {
                *sum += r.abs();
            }
        }
        let n = rows.len() as f64;
        let (mean, sampling_error) = reconstruction::chunk_error(&errors);
        (
            mean,
            sampling_error,
            per_feature.into_iter().map(|s| s / n).collect(),
        )
    };
    let reference_chunks: Vec<(f64, f64, Vec<f64>)> =
        reference.chunks(chunk_rows).map(summarise).collect();
    let chunk_errors: Vec<f64> = reference_chunks.iter().map(|c| c.0).collect();
    let (lower, upper) = reconstruction::thresholds(&chunk_errors, sigmas);
    let (error, sampling_error, residuals) = summarise(current);
    let features: Vec<FeatureDrift> = (0..width)
        .map(|feature| {
            let values: Vec<f64> = reference_chunks.iter().map(|c| c.2[feature]).collect();
            let (_, feature_upper) = reconstruction::thresholds(&values, sigmas);
            FeatureDrift {
                method: DriftMethod::Reconstruction,
                score: residuals[feature],
                threshold: feature_upper,
                drifted: residuals[feature] >= feature_upper,
            }
        })
        .collect();
    let drifted = features.iter().filter(|f| f.drifted).count();
    Ok(DatasetDrift {
        share: drifted as f64 / width as f64,
        drifted,
        features,
        dataset_drift: reconstruction::alert(error, lower, upper),
        reconstruction: Some(ReconstructionDrift {
            error,
            sampling_error,
            lower,
            upper,
            components: model.components(),
            reference_chunks: reference_chunks.len(),
            chunk_rows,
        }),
    })
}
