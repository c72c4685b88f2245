//! Robust z-score: the distance of a value from the median of a sliding window, in units of
//! the window's scaled median absolute deviation (MAD).
//!
//! Owns the sorted window; scores before learning, so a value never hides itself. Median and
//! MAD resist the outliers they are meant to find, unlike a mean and standard deviation.

use std::collections::VecDeque;

use super::{Observation, StreamingDetector, unit_score};

/// MAD × 1.4826 estimates the standard deviation of normal data.
const MAD_TO_SIGMA: f64 = 1.4826;
/// Mean absolute deviation × 1.2533 estimates the standard deviation of normal data.
const MEAN_AD_TO_SIGMA: f64 = 1.253_314;
/// Smallest scale, relative to the median's magnitude: a constant window has MAD 0, and any
/// change from it must still give a finite (huge) z.
const RELATIVE_SCALE_FLOOR: f64 = 1e-9;

/// Settings of [`RobustZ`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RobustZConfig {
    /// Values in the sliding window.
    pub window: usize,
    /// Values needed before any score other than 0.
    pub min_samples: usize,
    /// The z at which the score is 0.5.
    pub half_score_z: f64,
}

impl Default for RobustZConfig {
    fn default() -> Self {
        Self {
            // One day of 5-minute samples, the most common NAB cadence.
            window: 288,
            min_samples: 16,
            half_score_z: 3.0,
        }
    }
}

/// Streaming robust z-score detector.
#[derive(Debug, Clone)]
pub struct RobustZ {
    config: RobustZConfig,
    arrival: VecDeque<f64>,
    sorted: Vec<f64>,
}

impl RobustZ {
    /// A detector with an empty window. A window of 0 is treated as 1.
    pub fn new(config: RobustZConfig) -> Self {
        let config = RobustZConfig {
            window: config.window.max(1),
            min_samples: config.min_samples.max(1),
            ..config
        };
        Self {
            config,
            arrival: VecDeque::with_capacity(config.window + 1),
            sorted: Vec::with_capacity(config.window + 1),
        }
    }

    /// The robust z of `value` against the current window (0 until `min_samples` values).
    pub fn z(&self, value: f64) -> f64 {
        if self.sorted.len() < self.config.min_samples {
            return 0.0;
        }
        let median = median_of_sorted(&self.sorted);
        let mad = median_absolute_deviation(&self.sorted, median);
        let spread = if mad > 0.0 {
            MAD_TO_SIGMA * mad
        } else {
            // More than half the window sits on one value (common for quantised or idle
            // signals): MAD is 0 and would turn every other value into a huge z. The mean
            // absolute deviation still measures the spread of the rest (Iglewicz & Hoaglin).
            let mean_deviation = self.sorted.iter().map(|v| (v - median).abs()).sum::<f64>()
                / self.sorted.len() as f64;
            MEAN_AD_TO_SIGMA * mean_deviation
        };
        let scale = spread.max(RELATIVE_SCALE_FLOOR * median.abs().max(f64::MIN_POSITIVE));
        (value - median).abs() / scale
    }

    fn learn(&mut self, value: f64) {
        let position = self.sorted.partition_point(|&v| v < value);
        self.sorted.insert(position, value);
        self.arrival.push_back(value);
        if self.arrival.len() > self.config.window
            && let Some(oldest) = self.arrival.pop_front()
        {
            let position = self.sorted.partition_point(|&v| v < oldest);
            if position < self.sorted.len() {
                self.sorted.remove(position);
            }
        }
    }
}

impl StreamingDetector for RobustZ {
    fn score_then_learn(&mut self, observation: Observation) -> f64 {
        if !observation.value.is_finite() {
            return 0.0;
        }
        let z = self.z(observation.value);
        self.learn(observation.value);
        unit_score(z, self.config.half_score_z)
    }
}

fn median_of_sorted(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// The median of |v − median| in O(n): the deviations, walked outward from the median, come
/// out in increasing order from two sorted runs.
fn median_absolute_deviation(sorted: &[f64], median: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    let split = sorted.partition_point(|&v| v < median);
    let (mut below, mut above) = (split, split);
    let mut next_deviation = || {
        let left = (below > 0).then(|| median - sorted[below - 1]);
        let right = (above < n).then(|| sorted[above] - median);
        match (left, right) {
            (Some(l), Some(r)) if l < r => {
                below -= 1;
                l
            }
            (_, Some(r)) => {
                above += 1;
                r
            }
            (Some(l), None) => {
                below -= 1;
                l
            }
            (None, None) => 0.0,
        }
    };
    let lower_middle = (n - 1) / 2;
    let mut deviation = 0.0;
    for _ in 0..=lower_middle {
        deviation = next_deviation();
    }
    if n % 2 == 1 {
        deviation
    } else {
        (deviation + next_deviation()) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observe(detector: &mut RobustZ, value: f64) -> f64 {
        detector.score_then_learn(Observation {
            timestamp_ns: 0,
            value,
        })
    }

    #[test]
    fn mad_matches_a_brute_force_computation() {
        let data = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0];
        for n in 1..=data.len() {
            let mut sorted = data[..n].to_vec();
            sorted.sort_by(f64::total_cmp);
            let median = median_of_sorted(&sorted);
            let mut deviations: Vec<f64> = sorted.iter().map(|v| (v - median).abs()).collect();
            deviations.sort_by(f64::total_cmp);
            assert_eq!(
                median_absolute_deviation(&sorted, median),
                median_of_sorted(&deviations),
                "n = {n}"
            );
        }
    }

    #[test]
    fn a_spike_is_flagged_and_a_flat_stream_is_not() {
        let mut detector = RobustZ::new(RobustZConfig::default());
        for row in 0..500 {
            let value = 10.0 + ((row * 37) % 11) as f64 * 0.1;
            assert!(observe(&mut detector, value) < 0.6, "row {row}");
        }
        assert!(observe(&mut detector, 100.0) > 0.95);

        let mut flat = RobustZ::new(RobustZConfig::default());
        for _ in 0..500 {
            assert_eq!(observe(&mut flat, 4.2), 0.0);
        }
        assert!(observe(&mut flat, 4.3) > 0.99, "any change from a constant");
    }

    #[test]
    fn mostly_constant_windows_use_the_mean_deviation() {
        let mut detector = RobustZ::new(RobustZConfig {
            window: 100,
            min_samples: 10,
            half_score_z: 3.0,
        });
        // 80 % zeros, 20 % ones: MAD is 0, the mean absolute deviation 0.2.
        for row in 0..100 {
            observe(&mut detector, if row % 5 == 0 { 1.0 } else { 0.0 });
        }
        let z_of_one = detector.z(1.0);
        assert!(
            (z_of_one - 1.0 / (MEAN_AD_TO_SIGMA * 0.2)).abs() < 1e-9,
            "{z_of_one}"
        );
        assert!(detector.z(10.0) > 30.0);
    }

    #[test]
    fn the_window_forgets() {
        let config = RobustZConfig {
            window: 10,
            min_samples: 5,
            half_score_z: 3.0,
        };
        let mut detector = RobustZ::new(config);
        for _ in 0..10 {
            observe(&mut detector, 0.0);
        }
        for _ in 0..10 {
            observe(&mut detector, 50.0);
        }
        assert_eq!(detector.sorted, vec![50.0; 10]);
        assert_eq!(detector.z(50.0), 0.0);
    }
}
