//! RART's first two evidence streams (SPEC.md §3–4, SPEC2.md §4.2): how rare a value's coarse
//! bin is at this hour of day, in bits, and how far the 3-row mean leaves the range seen so far.
//!
//! Owns the count histograms and the record ranges; knows nothing about fusion or thresholds.

use std::collections::HashMap;

use crate::numeric::{py_max, py_min};

/// Bins spanning the probation range, one histogram per entry; the bits are averaged over them
/// because a single grid's luck (where a bin edge falls) moved the score by points.
const GRIDS: [i64; 4] = [7, 8, 9, 10];
/// Back-off pseudo-count from the hour-of-day model to the global model.
const ALPHA: f64 = 2.0;
/// Pseudo-count of the never-seen-bin prior in the global model.
const BETA: f64 = 1.0;
/// The never-seen-bin prior shrinks by 2^-GAMMA per bin outside the probation range.
const GAMMA: f64 = 3.0;
/// Rows in the sliding mean of the record feature.
const SMOOTH: usize = 3;
/// An hour of day uses its own range once it holds this many smoothed values.
const RECORD_MIN_COUNT: u32 = 12;
/// Probability floor: 2^(-3·dist) underflows to 0 more than ~340 bins outside the range, and
/// log2(0) would be infinite.
const PROBABILITY_FLOOR: f64 = 1e-300;
/// Hour-of-day contexts; index 24 of the count tables holds the global model.
const HOURS: usize = 24;
const GLOBAL_CONTEXT: usize = HOURS;
/// Bins kept in dense arrays on each side of the probation range. Values further out are rare
/// (novel by definition) and go to a hash map, so counts stay exact for any bin.
const DENSE_MARGIN: i64 = 128;

/// Counts per (context, bin): dense near the probation range, hashed beyond it.
#[derive(Debug, Clone)]
struct BinCounts {
    first_dense_bin: i64,
    dense_bins: usize,
    dense: Vec<u32>,
    sparse: HashMap<(usize, i64), u32>,
}

impl BinCounts {
    fn new(grid_bins: i64) -> Self {
        let first_dense_bin = -DENSE_MARGIN;
        let dense_bins = usize::try_from(grid_bins + 2 * DENSE_MARGIN).unwrap_or(0);
        Self {
            first_dense_bin,
            dense_bins,
            dense: vec![0; dense_bins * (HOURS + 1)],
            sparse: HashMap::new(),
        }
    }

    fn dense_index(&self, context: usize, bin: i64) -> Option<usize> {
        let offset = usize::try_from(bin.checked_sub(self.first_dense_bin)?).ok()?;
        (offset < self.dense_bins).then_some(context * self.dense_bins + offset)
    }

    fn get(&self, context: usize, bin: i64) -> u32 {
        match self.dense_index(context, bin) {
            Some(index) => self.dense[index],
            None => self.sparse.get(&(context, bin)).copied().unwrap_or(0),
        }
    }

    fn increment(&mut self, context: usize, bin: i64) {
        // Saturating: a bin seen 4 billion times is not rare, and the exact count no longer
        // changes its probability at f64 precision.
        match self.dense_index(context, bin) {
            Some(index) => self.dense[index] = self.dense[index].saturating_add(1),
            None => {
                let count = self.sparse.entry((context, bin)).or_insert(0);
                *count = count.saturating_add(1);
            }
        }
    }
}

/// The rarity (bits) and record (probation ranges) features of one row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RarityRecordFeatures {
    /// Mean over the grids of −log2 P(bin | hour), in bits.
    pub(crate) bits: f64,
    /// How far the 3-row mean lies beyond the range seen so far, in probation ranges; ≤ 0 inside.
    pub(crate) record: f64,
}

/// Rarity-by-hour histograms and range records of one stream.
#[derive(Debug, Clone)]
pub(crate) struct RarityRecord {
    probation_min: f64,
    bin_widths: [f64; 4],
    counts: [BinCounts; 4],
    rows_per_hour: [u64; HOURS],
    rows_total: u64,
    record_scale: f64,
    recent: [f64; SMOOTH],
    recent_len: usize,
    recent_next: usize,
    recent_sum: f64,
    global_max: f64,
    global_min: f64,
    hour_max: [f64; HOURS],
    hour_min: [f64; HOURS],
    hour_count: [u32; HOURS],
}

impl RarityRecord {
    /// Builds the grids from the probation rows and replays them, as if the scales had been
    /// known from row 0. `probation` must not be empty.
    pub(crate) fn from_probation(probation: &[(f64, u8)]) -> Self {
        let first = probation.first().map_or(0.0, |&(value, _)| value);
        let (low, high) = probation
            .iter()
            .fold((first, first), |(low, high), &(value, _)| {
                (py_min(low, value), py_max(high, value))
            });
        let range = high - low;
        let bin_widths = GRIDS.map(|bins| {
            let width = range / bins as f64;
            // A constant probation still needs a positive width; scale it to the value so the
            // grid is neither absurdly fine for large values nor zero.
            if width <= 0.0 {
                1e-9 + low.abs() * 1e-6 + 1e-12
            } else {
                width
            }
        });
        let mut features = Self {
            probation_min: low,
            bin_widths,
            counts: GRIDS.map(BinCounts::new),
            rows_per_hour: [0; HOURS],
            rows_total: 0,
            record_scale: if range > 0.0 {
                range
            } else {
                1e-9 + low.abs() * 1e-6
            },
            recent: [0.0; SMOOTH],
            recent_len: 0,
            recent_next: 0,
            recent_sum: 0.0,
            global_max: first,
            global_min: first,
            hour_max: [f64::NEG_INFINITY; HOURS],
            hour_min: [f64::INFINITY; HOURS],
            hour_count: [0; HOURS],
        };
        for (row, &(value, hour)) in probation.iter().enumerate() {
            features.step(value, hour, row as u64);
        }
        features
    }

    /// Scores row `row` (index from the stream start) from the past, then learns it.
    pub(crate) fn step(&mut self, value: f64, hour: u8, row: u64) -> RarityRecordFeatures {
        let hour = usize::from(hour) % HOURS;
        let mut bits = 0.0;
        for (grid, &bins) in GRIDS.iter().enumerate() {
            // `as` saturates, so a value absurdly far out still lands in a (distant) bin.
            let bin = ((value - self.probation_min) / self.bin_widths[grid]).floor() as i64;
            let distance = if bin < 0 {
                bin.saturating_neg()
            } else if bin >= bins {
                bin - bins + 1
            } else {
                0
            };
            let novel_prior = 2.0_f64.powf(-GAMMA * distance as f64) / (bins + 2) as f64;
            let counts = &mut self.counts[grid];
            let global = (f64::from(counts.get(GLOBAL_CONTEXT, bin)) + BETA * novel_prior)
                / (self.rows_total as f64 + BETA);
            let probability = (f64::from(counts.get(hour, bin)) + ALPHA * global)
                / (self.rows_per_hour[hour] as f64 + ALPHA);
            bits += -py_max(probability, PROBABILITY_FLOOR).log2();
            counts.increment(GLOBAL_CONTEXT, bin);
            counts.increment(hour, bin);
        }
        bits /= GRIDS.len() as f64;
        self.rows_per_hour[hour] += 1;
        self.rows_total += 1;

        // Sliding mean kept as a running sum, added before the oldest value leaves, because
        // that is the reference's rounding.
        self.recent_sum += value;
        if self.recent_len == SMOOTH {
            self.recent_sum -= self.recent[self.recent_next];
        } else {
            self.recent_len += 1;
        }
        self.recent[self.recent_next] = value;
        self.recent_next = (self.recent_next + 1) % SMOOTH;
        let smoothed = self.recent_sum / self.recent_len as f64;

        let mut record = 0.0;
        if row >= (SMOOTH - 1) as u64 {
            let (max, min) = if self.hour_count[hour] >= RECORD_MIN_COUNT {
                (self.hour_max[hour], self.hour_min[hour])
            } else {
                (self.global_max, self.global_min)
            };
            record = py_max(smoothed - max, min - smoothed) / self.record_scale;
            self.global_max = py_max(self.global_max, smoothed);
            self.global_min = py_min(self.global_min, smoothed);
            self.hour_max[hour] = py_max(self.hour_max[hour], smoothed);
            self.hour_min[hour] = py_min(self.hour_min[hour], smoothed);
            self.hour_count[hour] = self.hour_count[hour].saturating_add(1);
        }
        RarityRecordFeatures { bits, record }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daily_probation(rows: usize) -> Vec<(f64, u8)> {
        (0..rows)
            .map(|row| {
                let hour = (row % 24) as u8;
                (10.0 + f64::from(hour % 6), hour)
            })
            .collect()
    }

    #[test]
    fn a_value_far_outside_the_probation_range_is_rare_and_a_record() {
        let probation = daily_probation(240);
        let mut features = RarityRecord::from_probation(&probation);
        let usual = features.step(12.0, 2, 240);
        let novel = features.step(200.0, 3, 241);
        assert!(usual.bits < 3.0, "usual value: {} bits", usual.bits);
        assert!(novel.bits > 15.0, "novel value: {} bits", novel.bits);
        assert!(usual.record <= 0.0);
        assert!(novel.record > 0.5, "record {}", novel.record);
    }

    #[test]
    fn counts_outside_the_dense_window_are_exact() {
        let mut counts = BinCounts::new(10);
        for _ in 0..3 {
            counts.increment(5, 10_000);
        }
        counts.increment(5, -1);
        assert_eq!(counts.get(5, 10_000), 3);
        assert_eq!(counts.get(5, -1), 1);
        assert_eq!(counts.get(4, 10_000), 0);
        assert_eq!(counts.get(5, i64::MIN), 0);
    }

    #[test]
    fn constant_probation_gets_a_positive_scale() {
        let probation = vec![(5.0, 0); 50];
        let mut features = RarityRecord::from_probation(&probation);
        assert!(features.record_scale > 0.0);
        let same = features.step(5.0, 0, 50);
        let jump = features.step(1e12, 0, 51);
        assert!(same.bits < jump.bits);
        assert!(jump.bits.is_finite());
    }
}
