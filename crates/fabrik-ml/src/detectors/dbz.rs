//! DBZ, Fabrik's SKAB detector (research/skab/SPEC.md): the max-channel z-score of a causal
//! rolling mean against a delayed, alarm-frozen EWMA baseline, with an alarm off-delay.
//!
//! Owns the fitted scales, the baseline and the row buffers. Every channel is treated alike:
//! scales come from each stream's own training rows and every constant is in rows or z units.

use std::collections::VecDeque;

use super::{RowDetector, RowVerdict, unit_score};
use crate::MlError;

const NAME: &str = "dbz";

/// Settings of [`Dbz`]; the defaults are the specified configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DbzConfig {
    /// Causal rolling-mean window, in rows.
    pub window: usize,
    /// EWMA time constant of the baseline, in rows (gain 1/time_constant).
    pub baseline_time_constant: f64,
    /// Baseline delay: it learns `m[t − delay]`, and only when rows `t − delay..=t` were all
    /// alarm-free, so a slowly developing fault is not absorbed before it alarms.
    pub baseline_delay: usize,
    /// Alarm threshold on the max-channel z-score.
    pub z_threshold: f64,
    /// Alarm off-delay after the last exceedance, in rows; recovers the tail of SKAB's
    /// contiguous labels after the signal has recovered.
    pub hold: usize,
    /// Lower bound of every channel scale.
    pub scale_floor: f64,
}

impl Default for DbzConfig {
    fn default() -> Self {
        Self {
            window: 20,
            baseline_time_constant: 60.0,
            baseline_delay: 60,
            z_threshold: 6.0,
            hold: 30,
            scale_floor: 1e-9,
        }
    }
}

/// What one row produced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DbzStep {
    /// Alarm output for this row (held for `hold` rows after an exceedance).
    pub alarm: bool,
    /// `max_j |m_j − b_j| / s_j`; an exceedance when above the threshold.
    pub max_z: f64,
}

#[derive(Debug, Clone)]
struct Fitted {
    scales: Vec<f64>,
    baseline: Vec<f64>,
    recent_rows: VecDeque<Vec<f64>>,
    recent_means: VecDeque<Vec<f64>>,
    rows_since_exceedance: u64,
    rows_since_alarm: u64,
    /// Each channel's z in the last step, for explanations; reused row after row.
    last_z: Vec<f64>,
}

/// The DBZ detector.
#[derive(Debug, Clone)]
pub struct Dbz {
    config: DbzConfig,
    fitted: Option<Fitted>,
}

/// "Long ago": training rows count as alarm- and exceedance-free.
const LONG_AGO: u64 = 1_000_000_000;

impl Dbz {
    /// An unfitted detector.
    pub fn new(config: DbzConfig) -> Self {
        Self {
            config,
            fitted: None,
        }
    }

    /// Rows [`RowDetector::fit`] needs: a full window, the delay, and at least one kept
    /// residual.
    pub fn min_training_rows(&self) -> usize {
        let window = self.config.window;
        window + window.max(self.config.baseline_delay) + 1
    }

    /// The per-channel scales `s_j` of the current fit.
    pub fn scales(&self) -> Option<&[f64]> {
        self.fitted.as_ref().map(|f| f.scales.as_slice())
    }

    /// The baseline `b` (after training, then as it adapts).
    pub fn baseline(&self) -> Option<&[f64]> {
        self.fitted.as_ref().map(|f| f.baseline.as_slice())
    }

    /// The settings.
    pub fn config(&self) -> DbzConfig {
        self.config
    }

    /// Each channel's `|m_j − b_j| / s_j` if `row` were the next row, leaving the state as
    /// it is; the largest is the `max_z` that [`Self::step`] would report for it.
    pub fn channel_z(&self, row: &[f64]) -> Result<Vec<f64>, MlError> {
        let fitted = self.fitted.as_ref().ok_or_else(unfitted)?;
        fitted.check_width(row)?;
        // The rows `step` would average, in its order: all but the oldest, then `row`.
        let kept = fitted.recent_rows.iter().skip(1);
        let mut mean = vec![0.0; row.len()];
        for recent in kept.map(Vec::as_slice).chain(std::iter::once(row)) {
            for (sum, value) in mean.iter_mut().zip(recent) {
                *sum += value;
            }
        }
        let count = fitted.recent_rows.len() as f64;
        for sum in &mut mean {
            *sum /= count;
        }
        Ok(fitted.z_scores(&mean).collect())
    }

    /// Each channel's `|m_j − b_j| / s_j` in the last [`Self::step`] (empty before one).
    pub fn last_channel_z(&self) -> &[f64] {
        self.fitted.as_ref().map_or(&[], |f| f.last_z.as_slice())
    }

    /// Scores the next row and updates the baseline.
    pub fn step(&mut self, row: &[f64]) -> Result<DbzStep, MlError> {
        let config = self.config;
        let fitted = self.fitted.as_mut().ok_or_else(unfitted)?;
        fitted.check_width(row)?;
        // Reuse the oldest buffers instead of allocating per row.
        let mut oldest_row = fitted.recent_rows.pop_front().unwrap_or_default();
        oldest_row.clear();
        oldest_row.extend_from_slice(row);
        fitted.recent_rows.push_back(oldest_row);
        // The mean is re-summed each row rather than kept as a running sum, which would drift
        // on long streams.
        let mut mean = fitted.recent_means.pop_front().unwrap_or_default();
        mean.clear();
        mean.resize(row.len(), 0.0);
        for recent in &fitted.recent_rows {
            for (sum, value) in mean.iter_mut().zip(recent) {
                *sum += value;
            }
        }
        let count = fitted.recent_rows.len() as f64;
        for sum in &mut mean {
            *sum /= count;
        }
        let mut last_z = std::mem::take(&mut fitted.last_z);
        last_z.clear();
        last_z.extend(fitted.z_scores(&mean));
        let max_z = last_z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        fitted.last_z = last_z;
        fitted.recent_means.push_back(mean);

        fitted.rows_since_exceedance = if max_z > config.z_threshold {
            0
        } else {
            fitted.rows_since_exceedance.saturating_add(1)
        };
        let alarm = fitted.rows_since_exceedance <= config.hold as u64;
        fitted.rows_since_alarm = if alarm {
            0
        } else {
            fitted.rows_since_alarm.saturating_add(1)
        };
        if fitted.rows_since_alarm > config.baseline_delay as u64
            && let Some(delayed) = fitted.recent_means.front()
        {
            for (b, m) in fitted.baseline.iter_mut().zip(delayed) {
                *b += (m - *b) / config.baseline_time_constant;
            }
        }
        Ok(DbzStep { alarm, max_z })
    }
}

impl Fitted {
    fn check_width(&self, row: &[f64]) -> Result<(), MlError> {
        if row.len() == self.scales.len() {
            Ok(())
        } else {
            Err(width_error(row.len(), self.scales.len()))
        }
    }

    /// `|m_j − b_j| / s_j` of the rolling means `m` against the baseline.
    fn z_scores<'a>(&'a self, means: &'a [f64]) -> impl Iterator<Item = f64> + 'a {
        means
            .iter()
            .zip(&self.baseline)
            .zip(&self.scales)
            .map(|((m, b), s)| (m - b).abs() / s)
    }
}

fn unfitted() -> MlError {
    MlError::Detector {
        detector: NAME,
        reason: "scored before fit".to_owned(),
    }
}

fn width_error(got: usize, expected: usize) -> MlError {
    MlError::Detector {
        detector: NAME,
        reason: format!("row has {got} values, the fit had {expected}"),
    }
}

impl RowDetector for Dbz {
    fn fit(&mut self, training_rows: &[Vec<f64>]) -> Result<(), MlError> {
        let config = self.config;
        let window = config.window.max(1);
        let delay = config.baseline_delay;
        let n = training_rows.len();
        if n < self.min_training_rows() {
            return Err(MlError::Detector {
                detector: NAME,
                reason: format!(
                    "{n} training rows; needs at least {}",
                    self.min_training_rows()
                ),
            });
        }
        let width = training_rows[0].len();
        if let Some(bad) = training_rows.iter().find(|row| row.len() != width) {
            return Err(width_error(bad.len(), width));
        }
        // Rolling means from cumulative-sum differences, as the reference fits them.
        let mut cumulative = vec![vec![0.0; width]; n + 1];
        for (t, row) in training_rows.iter().enumerate() {
            for j in 0..width {
                cumulative[t + 1][j] = cumulative[t][j] + row[j];
            }
        }
        let means: Vec<Vec<f64>> = (0..n)
            .map(|t| {
                let start = (t + 1).saturating_sub(window);
                let count = (t + 1 - start) as f64;
                (0..width)
                    .map(|j| (cumulative[t + 1][j] - cumulative[start][j]) / count)
                    .collect()
            })
            .collect();
        let mut baseline = means[window - 1].clone();
        let first_kept = window + window.max(delay);
        let mut squared_sums = vec![0.0; width];
        let mut kept = 0_usize;
        for t in window..n {
            if t >= first_kept {
                for j in 0..width {
                    let residual = means[t][j] - baseline[j];
                    squared_sums[j] += residual * residual;
                }
                kept += 1;
            }
            if t + 1 >= window + delay {
                for j in 0..width {
                    baseline[j] +=
                        (means[t - delay][j] - baseline[j]) / config.baseline_time_constant;
                }
            }
        }
        // RMS residual, not a centred standard deviation: the baseline is the centre.
        let scales = squared_sums
            .iter()
            .map(|&sum| (sum / kept as f64).sqrt().max(config.scale_floor))
            .collect();
        self.fitted = Some(Fitted {
            scales,
            baseline,
            recent_rows: training_rows[n - window..].iter().cloned().collect(),
            recent_means: means[n - delay - 1..].iter().cloned().collect(),
            rows_since_exceedance: LONG_AGO,
            rows_since_alarm: LONG_AGO,
            last_z: Vec::with_capacity(width),
        });
        Ok(())
    }

    fn score_row(&mut self, row: &[f64]) -> Result<RowVerdict, MlError> {
        let step = self.step(row)?;
        Ok(RowVerdict {
            score: unit_score(step.max_z, self.config.z_threshold),
            alarm: step.alarm,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_z_is_what_the_next_step_sees() {
        let rows: Vec<Vec<f64>> = (0..600)
            .map(|t| {
                let wobble = ((t * 7919) % 13) as f64 / 13.0;
                vec![wobble, 3.0 * wobble + if t > 450 { 2.0 } else { 0.0 }]
            })
            .collect();
        let mut dbz = Dbz::new(DbzConfig::default());
        dbz.fit(&rows[..400]).unwrap();
        for (t, row) in rows.iter().enumerate().skip(400) {
            let predicted = dbz.channel_z(row).unwrap();
            let step = dbz.step(row).unwrap();
            let largest = predicted.iter().copied().fold(0.0, f64::max);
            assert_eq!(largest.to_bits(), step.max_z.to_bits(), "row {t}");
            assert_eq!(dbz.last_channel_z(), predicted, "row {t}");
        }
    }

    /// Two channels: a slow oscillation and a square-ish wave, deterministic.
    fn normal_row(t: usize) -> Vec<f64> {
        let phase = t as f64 * 0.05;
        vec![
            10.0 + phase.sin(),
            ((t * 7919) % 17) as f64 * 0.01 + if t % 40 < 20 { 1.0 } else { 1.1 },
        ]
    }

    fn fitted() -> Result<Dbz, MlError> {
        let mut detector = Dbz::new(DbzConfig::default());
        let training: Vec<Vec<f64>> = (0..400).map(normal_row).collect();
        detector.fit(&training)?;
        Ok(detector)
    }

    #[test]
    fn state_after_training_is_as_specified() -> Result<(), MlError> {
        let detector = fitted()?;
        let fit = detector
            .fitted
            .as_ref()
            .ok_or(MlError::Layout("unfitted".into()))?;
        assert_eq!(fit.recent_rows.len(), 20, "last W raw rows");
        assert_eq!(fit.recent_means.len(), 61, "last D+1 smoothed rows");
        assert_eq!(fit.recent_rows[19], normal_row(399));
        assert!(fit.scales.iter().all(|&s| s > 1e-9 && s.is_finite()));
        assert_eq!(fit.rows_since_alarm, LONG_AGO);
        Ok(())
    }

    #[test]
    fn hand_checked_scale_on_a_linear_ramp() -> Result<(), MlError> {
        // x_t = t: every full-window mean is m_t = t − 9.5 and the baseline starts at m_19.
        // It learns m_{t−60} from row 79 on; residuals of rows ≥ 80 are kept. Written out
        // directly from the spec, without the implementation's buffers.
        let rows: Vec<Vec<f64>> = (0..200).map(|t| vec![t as f64]).collect();
        let mut detector = Dbz::new(DbzConfig::default());
        detector.fit(&rows)?;
        let mut baseline = 9.5;
        let mut sum = 0.0;
        let mut kept = 0.0;
        for t in 20..200 {
            let mean = t as f64 - 9.5;
            if t >= 80 {
                sum += (mean - baseline) * (mean - baseline);
                kept += 1.0;
            }
            if t >= 79 {
                baseline += ((t - 60) as f64 - 9.5 - baseline) / 60.0;
            }
        }
        let expected = (sum / kept).sqrt();
        let scale = detector.scales().map_or(0.0, |s| s[0]);
        assert!((scale - expected).abs() < 1e-9, "{scale} vs {expected}");
        Ok(())
    }

    #[test]
    fn a_level_shift_alarms_and_the_alarm_is_held() -> Result<(), MlError> {
        let mut detector = fitted()?;
        for t in 400..600 {
            assert!(!detector.step(&normal_row(t))?.alarm, "row {t}");
        }
        let mut first_alarm = None;
        for t in 600..640 {
            let mut row = normal_row(t);
            row[0] += 8.0;
            if detector.step(&row)?.alarm && first_alarm.is_none() {
                first_alarm = Some(t);
            }
        }
        assert!(first_alarm.is_some_and(|t| t < 620), "{first_alarm:?}");
        // Back to normal: the rolling mean recovers within W rows, the alarm holds 30 more.
        let mut alarms_after = 0;
        for t in 640..760 {
            if detector.step(&normal_row(t))?.alarm {
                alarms_after += 1;
            }
        }
        assert!((30..=60).contains(&alarms_after), "{alarms_after}");
        Ok(())
    }

    #[test]
    fn misuse_is_reported() {
        let mut detector = Dbz::new(DbzConfig::default());
        assert!(detector.step(&[1.0]).is_err(), "before fit");
        let short: Vec<Vec<f64>> = (0..50).map(normal_row).collect();
        assert!(detector.fit(&short).is_err());
        if let Ok(mut fitted) = fitted() {
            assert!(fitted.step(&[1.0, 2.0, 3.0]).is_err());
        }
    }
}
