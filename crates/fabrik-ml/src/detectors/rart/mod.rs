//! RART, Fabrik's NAB detector (research/nab/SPEC2.md): rarity-by-hour and range-record
//! evidence plus a causal fuzzy-ART ensemble, fused before thresholding, self-calibrated per
//! stream and suppressed after a detection.
//!
//! Owns the row handler, the fusion, the self-calibration and the suppression; the evidence
//! streams live in the `rarity` and `art` submodules. The fuzzy-ART novelty idea is ARTime's
//! (Mark Hampton, ARTimeNAB.jl); see docs/decisions/0012 for provenance. Deterministic, one configuration for
//! every stream. The only side information is the stream's probationary period `P` and the
//! hour of day.

mod art;
mod rarity;

use art::ArtEnsemble;
use rarity::RarityRecord;

use crate::detectors::{Observation, StreamingDetector};
use crate::numeric::{py_max, py_min};
use crate::time::hour_of_day;

/// Rarity evidence is `bits − 15`: a bin this surprising is nominal evidence 0.
const BITS_OFFSET: f64 = 15.0;
/// Record evidence is `10·(record − 0.5)`, record in probation ranges.
const RECORD_OFFSET: f64 = 0.5;
const RECORD_GAIN: f64 = 10.0;
/// ART evidence is `50·(E − 0.1)`, E the ensemble's mean confidence.
const ART_OFFSET: f64 = 0.1;
const ART_GAIN: f64 = 50.0;
/// Suppression horizon as a fraction of the probationary period: NAB counts only the first
/// detection in a window, and every detection outside one costs.
const REST_FRACTION: f64 = 0.4;
/// Within the horizon a row is emitted only if its evidence beats the last emitted by this
/// many logits (about 7× the odds).
const ESCALATION: f64 = 2.0;
/// Self-calibration: logits subtracted per doubling of the count of earlier rows with evidence
/// at least as large, so a stream's habitual surprises stop looking surprising.
const CALIBRATION_GAMMA: f64 = 0.5;
const CALIBRATION_FLOOR: f64 = -4.0;
const CALIBRATION_STEP: f64 = 0.25;
const CALIBRATION_BINS: usize = 4096;

/// Counts of earlier evidence values per 0.25-logit bin above −4, with suffix sums in
/// O(log bins) through a Fenwick tree.
#[derive(Debug, Clone)]
struct SelfCalibration {
    tree: Vec<u64>,
    total: u64,
}

impl SelfCalibration {
    fn new() -> Self {
        Self {
            tree: vec![0; CALIBRATION_BINS + 1],
            total: 0,
        }
    }

    /// Count of recorded values in bins `0..=bin`.
    fn prefix(&self, bin: usize) -> u64 {
        let mut index = bin + 1;
        let mut sum = 0;
        while index > 0 {
            sum += self.tree[index];
            index &= index - 1;
        }
        sum
    }

    fn record(&mut self, bin: usize) {
        let mut index = bin + 1;
        while index <= CALIBRATION_BINS {
            self.tree[index] += 1;
            index += index & index.wrapping_neg();
        }
        self.total += 1;
    }

    /// Penalises `evidence` by how often this stream has produced evidence at least as large,
    /// then counts it.
    fn calibrate(&mut self, evidence: f64) -> f64 {
        if evidence <= CALIBRATION_FLOOR {
            return evidence;
        }
        // `as` truncates like Python's int() and saturates on huge evidence.
        let bin = (((evidence - CALIBRATION_FLOOR) / CALIBRATION_STEP) as usize)
            .min(CALIBRATION_BINS - 1);
        let at_least_as_large = self.total - if bin == 0 { 0 } else { self.prefix(bin - 1) };
        self.record(bin);
        evidence - CALIBRATION_GAMMA * (1.0 + at_least_as_large as f64).log2()
    }
}

/// Model state that exists once the probationary period has been seen.
#[derive(Debug, Clone)]
struct Trained {
    rarity: RarityRecord,
    art: ArtEnsemble,
}

/// The RART detector for one stream.
#[derive(Debug, Clone)]
pub struct Rart {
    probation_rows: usize,
    rest_rows: i64,
    rows_seen: u64,
    probation: Vec<(f64, u8)>,
    trained: Option<Box<Trained>>,
    calibrations: [SelfCalibration; 3],
    last_emitted_evidence: f64,
    last_emitted_row: i64,
}

impl Rart {
    /// A detector for a stream whose first `probationary_period` rows only teach it the
    /// stream's scale (NAB passes `min(floor(0.15·N), 750)`); it outputs 0 for them.
    pub fn new(probationary_period: usize) -> Self {
        let probation_rows = probationary_period.max(1);
        Self {
            probation_rows,
            rest_rows: (REST_FRACTION * probation_rows as f64) as i64,
            rows_seen: 0,
            probation: Vec::with_capacity(probation_rows),
            trained: None,
            calibrations: [
                SelfCalibration::new(),
                SelfCalibration::new(),
                SelfCalibration::new(),
            ],
            last_emitted_evidence: f64::NEG_INFINITY,
            last_emitted_row: i64::MIN / 2,
        }
    }

    /// The probationary period in rows.
    pub fn probationary_period(&self) -> usize {
        self.probation_rows
    }

    /// Scores one row given its value and the hour-of-day field of its timestamp (0..=23).
    /// Returns 0 on probation rows and on suppressed rows, otherwise `1/(1+e^−s)` of the fused
    /// evidence `s`. A non-finite value is ignored: it returns 0 and changes no state.
    pub fn score_value(&mut self, value: f64, hour: u8) -> f64 {
        if !value.is_finite() {
            return 0.0;
        }
        let row = self.rows_seen;
        self.rows_seen += 1;
        let Some(trained) = self.trained.as_mut() else {
            self.probation.push((value, hour));
            if self.probation.len() >= self.probation_rows {
                self.finish_probation();
            }
            return 0.0;
        };
        let features = trained.rarity.step(value, hour, row);
        let art_confidence = trained.art.push(value);
        let rarity_evidence = features.bits - BITS_OFFSET;
        let record_evidence = RECORD_GAIN * (features.record - RECORD_OFFSET);
        let art_evidence = ART_GAIN * (art_confidence - ART_OFFSET);
        let [rarity_calibration, record_calibration, art_calibration] = &mut self.calibrations;
        let evidence = py_max(
            py_max(
                rarity_calibration.calibrate(rarity_evidence),
                record_calibration.calibrate(record_evidence),
            ),
            art_calibration.calibrate(art_evidence),
        );
        let row = row as i64;
        if row - self.last_emitted_row > self.rest_rows
            || evidence > self.last_emitted_evidence + ESCALATION
        {
            self.last_emitted_evidence = evidence;
            self.last_emitted_row = row;
            return 1.0 / (1.0 + (-evidence).exp());
        }
        0.0
    }

    /// Derives the scales from the probation rows and replays them through every model.
    fn finish_probation(&mut self) {
        let probation = std::mem::take(&mut self.probation);
        let first = probation.first().map_or(0.0, |&(value, _)| value);
        let (low, high) = probation
            .iter()
            .fold((first, first), |(low, high), &(value, _)| {
                (py_min(low, value), py_max(high, value))
            });
        let rarity = RarityRecord::from_probation(&probation);
        let mut art = ArtEnsemble::new(low, high, self.probation_rows);
        for &(value, _) in &probation {
            art.push(value);
        }
        self.trained = Some(Box::new(Trained { rarity, art }));
    }
}

impl StreamingDetector for Rart {
    fn score_then_learn(&mut self, observation: Observation) -> f64 {
        self.score_value(observation.value, hour_of_day(observation.timestamp_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daily pattern sampled every 5 minutes, with a little deterministic noise.
    fn daily(row: usize) -> (f64, u8) {
        let hour = ((row / 12) % 24) as u8;
        let phase = (row % 288) as f64 / 288.0 * std::f64::consts::TAU;
        let noise = ((row * 7919) % 13) as f64 / 13.0 - 0.5;
        (50.0 + 20.0 * phase.sin() + noise, hour)
    }

    #[test]
    fn probation_rows_score_zero_and_state_is_built_at_its_end() {
        let mut detector = Rart::new(300);
        for row in 0..299 {
            let (value, hour) = daily(row);
            assert_eq!(detector.score_value(value, hour), 0.0);
            assert!(detector.trained.is_none());
        }
        let (value, hour) = daily(299);
        assert_eq!(detector.score_value(value, hour), 0.0);
        assert!(detector.trained.is_some(), "trained after row P-1");
        assert!(detector.probation.is_empty(), "probation buffer freed");
    }

    #[test]
    fn a_spike_is_flagged_and_a_steady_pattern_is_not() {
        let mut detector = Rart::new(750);
        let mut quiet_max: f64 = 0.0;
        for row in 0..4000 {
            let (value, hour) = daily(row);
            let score = detector.score_value(value, hour);
            if row >= 2000 {
                quiet_max = quiet_max.max(score);
            }
        }
        let spike = detector.score_value(500.0, 10);
        assert!(spike > 0.99, "spike scored {spike}");
        assert!(quiet_max < 0.5, "steady pattern scored up to {quiet_max}");
    }

    #[test]
    fn a_flat_stream_stays_quiet() {
        let mut detector = Rart::new(200);
        for row in 0..3000 {
            let score = detector.score_value(7.0, ((row / 12) % 24) as u8);
            assert!(score < 0.5, "row {row} scored {score}");
        }
    }

    #[test]
    fn after_a_detection_rows_are_held_back_for_rest_rows() {
        let mut detector = Rart::new(100);
        let rest = detector.rest_rows as usize;
        for row in 0..1000 {
            let (value, hour) = daily(row);
            detector.score_value(value, hour);
        }
        assert!(detector.score_value(1e4, 5) > 0.99);
        // While the spike is inside the smoothing and ART windows, larger evidence may still
        // escalate; once it has left, ordinary rows are held back for REST rows after the
        // last emission, and the row after that is emitted whatever its (small) score.
        let scores: Vec<f64> = (1001..1001 + 12 + rest + 1)
            .map(|row| {
                let (value, hour) = daily(row);
                detector.score_value(value, hour)
            })
            .collect();
        let last_emitted = scores[..12]
            .iter()
            .rposition(|&s| s > 0.0)
            .map_or(0, |i| i + 1);
        let held = &scores[last_emitted..last_emitted + rest];
        assert!(held.iter().all(|&s| s == 0.0), "{scores:?}");
        let released = scores[last_emitted + rest];
        assert!(released > 0.0 && released < 0.5, "{released}");
    }

    #[test]
    fn non_finite_values_are_ignored() {
        let mut detector = Rart::new(10);
        assert_eq!(detector.score_value(f64::NAN, 0), 0.0);
        assert_eq!(detector.rows_seen, 0);
    }

    #[test]
    fn self_calibration_discounts_repeated_evidence() {
        let mut calibration = SelfCalibration::new();
        assert_eq!(
            calibration.calibrate(-5.0),
            -5.0,
            "below the floor: untouched"
        );
        assert_eq!(calibration.calibrate(3.0), 3.0, "first time: no penalty");
        // One earlier value in the same bin: 3 − 0.5·log2(2).
        assert_eq!(calibration.calibrate(3.1), 3.1 - 0.5);
        // Two earlier values at least as large: 0.5·log2(3).
        assert_eq!(calibration.calibrate(1.0), 1.0 - 0.5 * 3.0_f64.log2());
        assert_eq!(
            calibration.calibrate(1e300),
            1e300 - 0.0,
            "open-ended last bin"
        );
    }
}
