//! Multivariate drift by PCA reconstruction error, as NannyML's
//! `DataReconstructionDriftCalculator` computes it: missing values imputed with the reference
//! mean, standardised on the reference, projected on the principal components that explain
//! 65 % of the reference's variance and back; each row's error is the Euclidean norm of what
//! the projection lost, and a chunk of rows drifted when its mean error leaves the reference
//! chunks' mean ± 3 standard deviations. It catches what per-feature tests cannot: features
//! whose distributions stay put while their relation breaks (a sensor wired to the wrong
//! channel, a valve that no longer follows its controller).

use crate::MlError;
use crate::linalg::symmetric_eigen;

/// Share of the reference's variance the kept components explain (NannyML's default).
pub const DEFAULT_VARIANCE: f64 = 0.65;
/// Standard deviations of the reference chunks' errors between their mean and a threshold
/// (NannyML's default).
pub const DEFAULT_SIGMAS: f64 = 3.0;

/// A reconstruction fitted on reference rows.
#[derive(Debug, Clone)]
pub struct Reconstruction {
    width: usize,
    /// Reference mean per feature, over its finite values: what a missing value becomes.
    impute: Vec<f64>,
    /// The standardisation: reference mean and standard deviation (ddof 0; 1 for a constant).
    center: Vec<f64>,
    scale: Vec<f64>,
    /// Mean of the standardised reference (PCA centres on it).
    pca_mean: Vec<f64>,
    /// The kept components, row-major `k × width`.
    components: Vec<f64>,
    kept: usize,
}

impl Reconstruction {
    /// Fits on `reference` (rows of equal width, at least two rows and two features), keeping
    /// the fewest components whose explained variance reaches `variance` (0 < `variance` ≤ 1;
    /// scikit-learn's rule for a fractional `n_components`).
    pub fn fit(reference: &[Vec<f64>], variance: f64) -> Result<Self, MlError> {
        let invalid = |reason: String| MlError::Parameter {
            name: "drift",
            reason,
        };
        let width = reference.first().map_or(0, Vec::len);
        if reference.len() < 2 || width < 2 {
            return Err(invalid(format!(
                "a reconstruction needs two reference rows and two features at least ({} rows of {width})",
                reference.len()
            )));
        }
        if let Some(row) = reference.iter().position(|row| row.len() != width) {
            return Err(invalid(format!(
                "reference row {} has {} features, not {width}",
                row + 1,
                reference[row].len()
            )));
        }
        if !(variance > 0.0 && variance <= 1.0) {
            return Err(invalid(format!(
                "the variance to keep is {variance}, not a share above 0 and at most 1"
            )));
        }
        let n = reference.len() as f64;
        let mut impute = Vec::with_capacity(width);
        for column in 0..width {
            let (sum, count) = reference
                .iter()
                .map(|row| row[column])
                .filter(|v| v.is_finite())
                .fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
            if count == 0 {
                return Err(invalid(format!(
                    "feature {} has no finite value in the reference",
                    column + 1
                )));
            }
            impute.push(sum / count as f64);
        }
        let imputed: Vec<Vec<f64>> = reference.iter().map(|row| fill(row, &impute)).collect();
        let center: Vec<f64> = (0..width)
            .map(|c| imputed.iter().map(|row| row[c]).sum::<f64>() / n)
            .collect();
        let scale: Vec<f64> = (0..width)
            .map(|c| {
                let var = imputed
                    .iter()
                    .map(|row| (row[c] - center[c]).powi(2))
                    .sum::<f64>()
                    / n;
                let std = var.sqrt();
                // scikit-learn's StandardScaler leaves a (near) constant feature unscaled.
                if std < 10.0 * f64::EPSILON { 1.0 } else { std }
            })
            .collect();
        let scaled: Vec<Vec<f64>> = imputed
            .iter()
            .map(|row| {
                row.iter()
                    .zip(&center)
                    .zip(&scale)
                    .map(|((v, m), s)| (v - m) / s)
                    .collect()
            })
            .collect();
        let pca_mean: Vec<f64> = (0..width)
            .map(|c| scaled.iter().map(|row| row[c]).sum::<f64>() / n)
            .collect();
        let mut covariance = vec![0.0; width * width];
        for row in &scaled {
            for i in 0..width {
                let di = row[i] - pca_mean[i];
                for j in i..width {
                    covariance[i * width + j] += di * (row[j] - pca_mean[j]);
                }
            }
        }
        for i in 0..width {
            for j in i..width {
                let v = covariance[i * width + j] / (n - 1.0);
                covariance[i * width + j] = v;
                covariance[j * width + i] = v;
            }
        }
        let eigen = symmetric_eigen(&covariance, width);
        let values: Vec<f64> = eigen.values.iter().map(|v| v.max(0.0)).collect();
        let total: f64 = values.iter().sum();
        // scikit-learn: searchsorted(cumsum(ratio), variance, side="right") + 1.
        let mut cumulative = 0.0;
        let mut below = 0;
        for value in &values {
            cumulative += if total > 0.0 { value / total } else { 0.0 };
            if cumulative <= variance {
                below += 1;
            } else {
                break;
            }
        }
        let kept = (below + 1).min(width);
        let mut components = vec![0.0; kept * width];
        for k in 0..kept {
            for i in 0..width {
                components[k * width + i] = eigen.vectors[i * width + k];
            }
        }
        Ok(Self {
            width,
            impute,
            center,
            scale,
            pca_mean,
            components,
            kept,
        })
    }

    /// How many components are kept.
    pub fn components(&self) -> usize {
        self.kept
    }

    /// The features.
    pub fn width(&self) -> usize {
        self.width
    }

    /// What the projection loses of `row`, per feature, in standardised units (`row` has the
    /// reference's width; a missing or non-finite value counts as the reference mean).
    pub fn residual(&self, row: &[f64]) -> Vec<f64> {
        let centred: Vec<f64> = (0..self.width)
            .map(|c| {
                let v = row.get(c).copied().filter(|v| v.is_finite());
                (v.unwrap_or(self.impute[c]) - self.center[c]) / self.scale[c] - self.pca_mean[c]
            })
            .collect();
        let mut residual = centred.clone();
        for k in 0..self.kept {
            let component = &self.components[k * self.width..(k + 1) * self.width];
            let projection: f64 = component.iter().zip(&centred).map(|(w, x)| w * x).sum();
            for (r, w) in residual.iter_mut().zip(component) {
                *r -= projection * w;
            }
        }
        residual
    }

    /// The reconstruction error of `row`: the Euclidean norm of its residual.
    pub fn error(&self, row: &[f64]) -> f64 {
        self.residual(row).iter().map(|r| r * r).sum::<f64>().sqrt()
    }
}

fn fill(row: &[f64], impute: &[f64]) -> Vec<f64> {
    row.iter()
        .zip(impute)
        .map(|(v, m)| if v.is_finite() { *v } else { *m })
        .collect()
}

/// A chunk's mean error and its sampling error (standard deviation, ddof 1, over √n; NaN for
/// one row), as NannyML reports them.
pub fn chunk_error(errors: &[f64]) -> (f64, f64) {
    let n = errors.len() as f64;
    let mean = errors.iter().sum::<f64>() / n;
    let var = errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt() / n.sqrt())
}

/// NannyML's standard-deviation thresholds over the reference chunks' values: mean ±
/// `sigmas` × standard deviation (ddof 0); a lower threshold below 0 (an error cannot be)
/// is none.
pub fn thresholds(reference_chunks: &[f64], sigmas: f64) -> (Option<f64>, f64) {
    let values: Vec<f64> = reference_chunks
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .collect();
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    let lower = mean - sigmas * std;
    ((lower >= 0.0).then_some(lower), mean + sigmas * std)
}

/// Whether `value` is outside the thresholds (NannyML: not `lower < value < upper`).
pub fn alert(value: f64, lower: Option<f64>, upper: f64) -> bool {
    !(lower.is_none_or(|lower| lower < value) && value < upper)
}

/// Errors of `rows` split into consecutive chunks of `size` rows (the last one may be
/// shorter), each chunk's mean.
pub fn chunk_means(model: &Reconstruction, rows: &[Vec<f64>], size: usize) -> Vec<f64> {
    rows.chunks(size.max(1))
        .map(|chunk| {
            let errors: Vec<f64> = chunk.iter().map(|row| model.error(row)).collect();
            chunk_error(&errors).0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unrelated_features_leave_nothing_to_watch_and_are_refused() {
        // Two independent features: the first component explains about half the variance,
        // so both are kept and every reconstruction error is rounding noise.
        let rows: Vec<Vec<f64>> = (0..200)
            .map(|i| {
                vec![
                    ((i * 37 % 200) as f64) / 200.0,
                    ((i * 91 % 197) as f64) / 197.0,
                ]
            })
            .collect();
        let model = Reconstruction::fit(&rows, DEFAULT_VARIANCE).expect("fit");
        assert_eq!(model.components(), 2);
        let err = crate::drift::reconstruction_drift(&rows, &rows[..20], DEFAULT_SIGMAS)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("too little related"), "{err}");
    }

    #[test]
    fn a_broken_relation_is_seen_where_the_marginals_stay() {
        // x1 = 2·x0 in the reference; the current flips the sign: every marginal is the same.
        let rows = |sign: f64| -> Vec<Vec<f64>> {
            (0..200)
                .map(|i| {
                    let z = ((i * 37 % 200) as f64 / 100.0) - 1.0;
                    let noise = ((i * 11 % 7) as f64 - 3.0) * 0.01;
                    vec![z, sign * 2.0 * z + noise, ((i * 13 % 17) as f64) / 17.0]
                })
                .collect()
        };
        let model = Reconstruction::fit(&rows(1.0), DEFAULT_VARIANCE).expect("fit");
        assert!(model.components() < 3);
        let reference = chunk_means(&model, &rows(1.0), 20);
        let (lower, upper) = thresholds(&reference, DEFAULT_SIGMAS);
        let flipped = chunk_means(&model, &rows(-1.0), 20);
        assert!(
            reference.iter().all(|v| !alert(*v, lower, upper)),
            "{reference:?}"
        );
        assert!(
            flipped.iter().all(|v| alert(*v, lower, upper)),
            "{flipped:?} vs {upper}"
        );
    }

    #[test]
    fn bad_input_is_named() {
        let err = Reconstruction::fit(&[vec![1.0, 2.0]], 0.65).expect_err("one row");
        assert!(err.to_string().contains("two reference rows"), "{err}");
        let err = Reconstruction::fit(&[vec![1.0, 2.0], vec![1.0]], 0.65).expect_err("ragged");
        assert!(err.to_string().contains("row 2"), "{err}");
        let err = Reconstruction::fit(&[vec![f64::NAN, 2.0], vec![f64::NAN, 1.0]], 0.65)
            .expect_err("nan");
        assert!(err.to_string().contains("feature 1"), "{err}");
        let err = Reconstruction::fit(&[vec![1.0, 2.0], vec![2.0, 1.0]], 1.5).expect_err("share");
        assert!(err.to_string().contains("1.5"), "{err}");
    }
}
