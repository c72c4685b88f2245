//! EWMA residual z-score: the residual of a value from an exponentially weighted mean, in units
//! of the exponentially weighted standard deviation of past residuals.
//!
//! Owns the running mean and variance; scores before learning. O(1) per value, the cheapest
//! baseline and the one that adapts to level drift.

use super::{Observation, StreamingDetector, unit_score};

/// Smallest scale, relative to the mean's magnitude, so a constant stream gives a finite z on
/// its first change.
const RELATIVE_SCALE_FLOOR: f64 = 1e-9;

/// Settings of [`EwmaZ`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EwmaConfig {
    /// Weight of the newest value in the mean and variance, in (0, 1].
    pub alpha: f64,
    /// Values learned before any score other than 0.
    pub warmup: usize,
    /// The z at which the score is 0.5.
    pub half_score_z: f64,
}

impl Default for EwmaConfig {
    fn default() -> Self {
        Self {
            // A memory of about 100 values.
            alpha: 0.01,
            warmup: 30,
            half_score_z: 3.0,
        }
    }
}

/// Streaming EWMA residual z-score detector.
#[derive(Debug, Clone)]
pub struct EwmaZ {
    config: EwmaConfig,
    mean: f64,
    variance: f64,
    seen: usize,
}

impl EwmaZ {
    /// A detector that has seen nothing. `alpha` is clamped into (0, 1].
    pub fn new(config: EwmaConfig) -> Self {
        let alpha = if config.alpha.is_finite() {
            config.alpha.clamp(f64::EPSILON, 1.0)
        } else {
            1.0
        };
        Self {
            config: EwmaConfig { alpha, ..config },
            mean: 0.0,
            variance: 0.0,
            seen: 0,
        }
    }

    /// The residual z of `value` (0 during the warm-up).
    pub fn z(&self, value: f64) -> f64 {
        if self.seen < self.config.warmup.max(1) {
            return 0.0;
        }
        let scale = self
            .variance
            .sqrt()
            .max(RELATIVE_SCALE_FLOOR * self.mean.abs().max(f64::MIN_POSITIVE));
        (value - self.mean).abs() / scale
    }

    fn learn(&mut self, value: f64) {
        self.seen = self.seen.saturating_add(1);
        // The weight starts at 1/n (the plain running mean and variance) and settles at alpha,
        // so the first values are not measured against a variance that is still near zero.
        let alpha = self.config.alpha.max(1.0 / self.seen as f64);
        // West's incremental form of the exponentially weighted mean and variance.
        let residual = value - self.mean;
        let increment = alpha * residual;
        self.mean += increment;
        self.variance = (1.0 - alpha) * (self.variance + residual * increment);
    }
}

impl StreamingDetector for EwmaZ {
    fn score_then_learn(&mut self, observation: Observation) -> f64 {
        if !observation.value.is_finite() {
            return 0.0;
        }
        let z = self.z(observation.value);
        self.learn(observation.value);
        unit_score(z, self.config.half_score_z)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observe(detector: &mut EwmaZ, value: f64) -> f64 {
        detector.score_then_learn(Observation {
            timestamp_ns: 0,
            value,
        })
    }

    #[test]
    fn mean_and_variance_converge_on_a_two_level_stream() {
        let mut detector = EwmaZ::new(EwmaConfig::default());
        for row in 0..5000 {
            observe(&mut detector, if row % 2 == 0 { 1.0 } else { -1.0 });
        }
        assert!(detector.mean.abs() < 0.02, "mean {}", detector.mean);
        assert!(
            (detector.variance - 1.0).abs() < 0.05,
            "variance {}",
            detector.variance
        );
    }

    #[test]
    fn a_spike_is_flagged_and_a_flat_stream_is_not() {
        let mut detector = EwmaZ::new(EwmaConfig::default());
        for row in 0..1000 {
            let value = ((row * 37) % 11) as f64 * 0.1;
            let score = observe(&mut detector, value);
            assert!(score < 0.5, "row {row}: {score}");
        }
        assert!(observe(&mut detector, 30.0) > 0.9);

        let mut flat = EwmaZ::new(EwmaConfig::default());
        for _ in 0..1000 {
            assert_eq!(observe(&mut flat, -3.0), 0.0);
        }
    }

    #[test]
    fn starts_as_the_plain_mean_and_variance() {
        let mut detector = EwmaZ::new(EwmaConfig::default());
        for value in [2.0, 4.0, 9.0] {
            observe(&mut detector, value);
        }
        assert!((detector.mean - 5.0).abs() < 1e-12);
        // Population variance of 2, 4, 9: (9 + 1 + 16) / 3.
        assert!((detector.variance - 26.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn warmup_scores_zero() {
        let mut detector = EwmaZ::new(EwmaConfig {
            warmup: 5,
            ..EwmaConfig::default()
        });
        for value in [1.0, 100.0, -50.0, 7.0, 1e6] {
            assert_eq!(observe(&mut detector, value), 0.0);
        }
    }
}
