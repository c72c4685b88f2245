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
//!   river does it.

pub mod binary;
mod binned;
pub mod ks;
pub mod kswin;
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
}

impl DriftMethod {
    /// Every method, for messages.
    pub const ALL: [DriftMethod; 9] = [
        Self::Auto,
        Self::Ks,
        Self::Wasserstein,
        Self::Psi,
        Self::JensenShannon,
        Self::KlDivergence,
        Self::Hellinger,
        Self::ChiSquare,
        Self::Z,
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
        if self.is_p_value() { 0.05 } else { 0.1 }
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
    /// Whether `share` reached the drift share asked for (Evidently's `drift_share`).
    pub dataset_drift: bool,
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
    })
}
