//! PCA T²+Q, SKAB's multivariate baseline: standardise with the training rows, keep the
//! principal components explaining a share of the variance, and alarm when a row's Hotelling
//! T² in the component space or its squared residual Q outside it passes its control limit.
//!
//! Owns the fitted model (scaler, components, limits) and a trailing median filter of the
//! statistics. The limits are the textbook ones: F-distribution for T², Jackson–Mudholkar
//! for Q (with θ_i = Σ λ_j^i over the discarded components).

use std::collections::VecDeque;

use super::{RowDetector, RowVerdict, unit_score};
use crate::MlError;
use crate::linalg::symmetric_eigen;
use crate::special::{f_quantile, normal_quantile};

const NAME: &str = "pca_t2q";

/// Settings of [`PcaT2Q`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PcaConfig {
    /// Keep the fewest components whose cumulative explained variance exceeds this share.
    pub explained_variance: f64,
    /// Confidence of both control limits (share of normal rows expected below them).
    pub confidence: f64,
    /// Trailing median filter over this many rows of each statistic (1 = none); SKAB's
    /// notebook uses 5 to drop isolated exceedances.
    pub median_window: usize,
}

impl Default for PcaConfig {
    fn default() -> Self {
        Self {
            explained_variance: 0.85,
            confidence: 0.999,
            median_window: 5,
        }
    }
}

#[derive(Debug, Clone)]
struct Model {
    width: usize,
    /// Channels that varied in training; constant ones carry no information for the model.
    used: Vec<usize>,
    mean: Vec<f64>,
    std: Vec<f64>,
    /// Row-major `used × components`.
    components: Vec<f64>,
    eigenvalues: Vec<f64>,
    t2_limit: f64,
    /// `None` when every component is kept and no residual space is left.
    q_limit: Option<f64>,
    recent_t2: VecDeque<f64>,
    recent_q: VecDeque<f64>,
}

/// The PCA T²+Q detector.
#[derive(Debug, Clone)]
pub struct PcaT2Q {
    config: PcaConfig,
    model: Option<Model>,
}

/// T² and Q of one row and their limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PcaStatistics {
    /// Hotelling's T² in the kept components (median-filtered).
    pub t2: f64,
    /// Its control limit.
    pub t2_limit: f64,
    /// Squared residual outside the kept components (median-filtered); 0 without residual space.
    pub q: f64,
    /// Its control limit, if there is a residual space.
    pub q_limit: Option<f64>,
}

impl PcaStatistics {
    /// The larger of T²/limit and Q/limit: above 1 is an alarm.
    pub fn ratio(&self) -> f64 {
        let q_ratio = self.q_limit.map_or(0.0, |limit| self.q / limit);
        (self.t2 / self.t2_limit).max(q_ratio)
    }
}

impl PcaT2Q {
    /// An unfitted detector.
    pub fn new(config: PcaConfig) -> Self {
        Self {
            config,
            model: None,
        }
    }

    /// Number of kept components of the current fit.
    pub fn components(&self) -> Option<usize> {
        self.model.as_ref().map(|m| m.eigenvalues.len())
    }

    /// T² and Q of the next row.
    pub fn statistics(&mut self, row: &[f64]) -> Result<PcaStatistics, MlError> {
        let window = self.config.median_window.max(1);
        let model = self.model.as_mut().ok_or_else(|| MlError::Detector {
            detector: NAME,
            reason: "score_row before fit".to_owned(),
        })?;
        if row.len() != model.width {
            return Err(MlError::Detector {
                detector: NAME,
                reason: format!("row has {} values, the fit had {}", row.len(), model.width),
            });
        }
        let used = model.used.len();
        let kept = model.eigenvalues.len();
        let standardized: Vec<f64> = model
            .used
            .iter()
            .enumerate()
            .map(|(k, &j)| (row[j] - model.mean[k]) / model.std[k])
            .collect();
        let mut t2 = 0.0;
        let mut reconstruction = vec![0.0; used];
        for c in 0..kept {
            let score: f64 = (0..used)
                .map(|k| standardized[k] * model.components[k * kept + c])
                .sum();
            t2 += score * score / model.eigenvalues[c];
            for (k, value) in reconstruction.iter_mut().enumerate() {
                *value += score * model.components[k * kept + c];
            }
        }
        let q: f64 = standardized
            .iter()
            .zip(&reconstruction)
            .map(|(x, r)| (x - r) * (x - r))
            .sum();
        push_bounded(&mut model.recent_t2, t2, window);
        push_bounded(&mut model.recent_q, q, window);
        Ok(PcaStatistics {
            t2: median(&model.recent_t2),
            t2_limit: model.t2_limit,
            q: median(&model.recent_q),
            q_limit: model.q_limit,
        })
    }
}

fn push_bounded(values: &mut VecDeque<f64>, value: f64, capacity: usize) {
    values.push_back(value);
    while values.len() > capacity {
        values.pop_front();
    }
}

fn median(values: &VecDeque<f64>) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

impl RowDetector for PcaT2Q {
    fn fit(&mut self, training_rows: &[Vec<f64>]) -> Result<(), MlError> {
        let n = training_rows.len();
        let width = training_rows.first().map_or(0, Vec::len);
        if let Some(bad) = training_rows.iter().find(|row| row.len() != width) {
            return Err(MlError::Detector {
                detector: NAME,
                reason: format!("training rows of widths {width} and {}", bad.len()),
            });
        }
        let used: Vec<usize> = (0..width)
            .filter(|&j| {
                training_rows
                    .iter()
                    .any(|row| row[j] != training_rows[0][j])
            })
            .collect();
        let d = used.len();
        if d == 0 || n < d + 2 {
            return Err(MlError::Detector {
                detector: NAME,
                reason: format!(
                    "{n} training rows with {d} varying channels; needs at least {} (varying \
                     channels + 2, and at least one varying channel)",
                    d.max(1) + 2
                ),
            });
        }
        let rows = n as f64;
        let mean: Vec<f64> = used
            .iter()
            .map(|&j| training_rows.iter().map(|row| row[j]).sum::<f64>() / rows)
            .collect();
        // Population standard deviation, as a standard scaler fits it.
        let std: Vec<f64> = used
            .iter()
            .zip(&mean)
            .map(|(&j, &m)| {
                (training_rows
                    .iter()
                    .map(|row| (row[j] - m).powi(2))
                    .sum::<f64>()
                    / rows)
                    .sqrt()
            })
            .collect();
        let mut covariance = vec![0.0; d * d];
        for row in training_rows {
            let z: Vec<f64> = used
                .iter()
                .enumerate()
                .map(|(k, &j)| (row[j] - mean[k]) / std[k])
                .collect();
            for a in 0..d {
                for b in 0..=a {
                    covariance[a * d + b] += z[a] * z[b];
                }
            }
        }
        for a in 0..d {
            for b in 0..=a {
                let value = covariance[a * d + b] / (rows - 1.0);
                covariance[a * d + b] = value;
                covariance[b * d + a] = value;
            }
        }
        let eigen = symmetric_eigen(&covariance, d);
        let eigenvalues: Vec<f64> = eigen.values.iter().map(|&v| v.max(0.0)).collect();
        let total: f64 = eigenvalues.iter().sum();
        let mut kept = d;
        let mut cumulative = 0.0;
        for (k, &value) in eigenvalues.iter().enumerate() {
            cumulative += value;
            if cumulative / total > self.config.explained_variance {
                kept = k + 1;
                break;
            }
        }
        // Components with (numerically) zero variance cannot scale T²; leave them to Q.
        while kept > 1 && eigenvalues[kept - 1] <= total * 1e-12 {
            kept -= 1;
        }
        let components: Vec<f64> = (0..d)
            .flat_map(|k| (0..kept).map(move |c| (k, c)))
            .map(|(k, c)| eigen.vectors[k * d + c])
            .collect();
        let p = self.config.confidence.clamp(0.5, 1.0 - 1e-12);
        let k = kept as f64;
        let t2_limit =
            k * (rows - 1.0) * (rows + 1.0) / (rows * (rows - k)) * f_quantile(p, k, rows - k);
        let q_limit = (kept < d)
            .then(|| {
                let discarded = &eigenvalues[kept..];
                let theta = |power: i32| discarded.iter().map(|l| l.powi(power)).sum::<f64>();
                let (theta1, theta2, theta3) = (theta(1), theta(2), theta(3));
                if theta1 <= 0.0 {
                    return None;
                }
                let h0 = 1.0 - 2.0 * theta1 * theta3 / (3.0 * theta2 * theta2);
                let c = normal_quantile(p);
                let inner = c * h0 * (2.0 * theta2).sqrt() / theta1
                    + 1.0
                    + theta2 * h0 * (h0 - 1.0) / (theta1 * theta1);
                Some(theta1 * inner.powf(1.0 / h0))
            })
            .flatten()
            .filter(|limit| limit.is_finite() && *limit > 0.0);
        self.model = Some(Model {
            width,
            used,
            mean,
            std,
            components,
            eigenvalues: eigenvalues[..kept].to_vec(),
            t2_limit,
            q_limit,
            recent_t2: VecDeque::new(),
            recent_q: VecDeque::new(),
        });
        Ok(())
    }

    fn score_row(&mut self, row: &[f64]) -> Result<RowVerdict, MlError> {
        let ratio = self.statistics(row)?.ratio();
        Ok(RowVerdict {
            score: unit_score(ratio, 1.0),
            alarm: ratio > 1.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three correlated channels driven by one latent factor, plus a constant channel.
    fn row(t: usize, break_correlation: bool) -> Vec<f64> {
        let latent = (t as f64 * 0.37).sin() * 3.0;
        let wiggle = ((t * 7919) % 101) as f64 / 101.0 - 0.5;
        let third = if break_correlation { -latent } else { latent };
        vec![
            latent + 0.1 * wiggle,
            2.0 * latent - 0.1 * wiggle,
            third,
            5.0,
        ]
    }

    #[test]
    fn fits_one_component_and_ignores_constant_channels() -> Result<(), MlError> {
        let training: Vec<Vec<f64>> = (0..400).map(|t| row(t, false)).collect();
        let mut detector = PcaT2Q::new(PcaConfig::default());
        detector.fit(&training)?;
        assert_eq!(detector.components(), Some(1));
        let model = detector
            .model
            .as_ref()
            .ok_or(MlError::Layout("unfitted".into()))?;
        assert_eq!(model.used, vec![0, 1, 2]);
        assert!(model.q_limit.is_some());
        Ok(())
    }

    #[test]
    fn broken_correlation_alarms_through_q_and_normal_rows_do_not() -> Result<(), MlError> {
        let training: Vec<Vec<f64>> = (0..400).map(|t| row(t, false)).collect();
        let mut detector = PcaT2Q::new(PcaConfig::default());
        detector.fit(&training)?;
        let normal_alarms = (400..800)
            .map(|t| detector.score_row(&row(t, false)))
            .filter(|verdict| verdict.as_ref().is_ok_and(|v| v.alarm))
            .count();
        assert!(normal_alarms <= 4, "{normal_alarms} alarms on normal rows");
        let mut last = None;
        for t in 800..810 {
            last = Some(detector.statistics(&row(t, true))?);
        }
        let statistics = last.ok_or(MlError::Layout("no rows".into()))?;
        assert!(statistics.ratio() > 1.0, "{statistics:?}");
        assert!(statistics.q > statistics.q_limit.unwrap_or(f64::INFINITY));
        Ok(())
    }

    #[test]
    fn misuse_is_reported() {
        let mut detector = PcaT2Q::new(PcaConfig::default());
        assert!(detector.score_row(&[1.0]).is_err());
        assert!(
            detector.fit(&[vec![1.0, 2.0], vec![1.0, 2.0]]).is_err(),
            "constant"
        );
    }
}
