//! Half-Space Trees (Tan, Ting & Liu 2011) as river 0.26 implements them: random axis-aligned
//! trees of fixed height whose node masses, counted over tumbling windows, say how crowded a
//! point's neighbourhood was in the previous window.
//!
//! Owns the trees, a Python-compatible Mersenne Twister (so a seed builds the same trees as
//! river's `HalfSpaceTrees(seed=...)`), and [`ScaledHalfSpaceTrees`], the univariate adapter
//! that min-max scales values online as river's docs recommend.

use super::{Observation, StreamingDetector};
use crate::MlError;

/// Splits are drawn from the middle 70 % of a node's range, so no cell is too thin.
const PADDING: f64 = 0.15;
/// A walk stops at a node whose reference mass is below this fraction of the window (the
/// paper's constant).
const SIZE_LIMIT_FRACTION: f64 = 0.1;

/// Settings of [`HalfSpaceTrees`]; the defaults are river's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HstConfig {
    /// Number of trees.
    pub n_trees: usize,
    /// Height of each tree: `height + 1` levels, `2^(height+1) − 1` nodes.
    pub height: usize,
    /// Observations per mass window.
    pub window_size: usize,
    /// Seed of the tree construction.
    pub seed: u64,
}

impl Default for HstConfig {
    fn default() -> Self {
        Self {
            n_trees: 10,
            height: 8,
            window_size: 250,
            seed: 42,
        }
    }
}

/// One tree as a complete binary tree in an array: node `i` has children `2i+1` and `2i+2`;
/// nodes `0..2^height − 1` are branches.
#[derive(Debug, Clone, PartialEq)]
pub struct HstTree {
    /// Split feature of each branch node.
    pub feature: Vec<usize>,
    /// Split threshold of each branch node: values `<` go left.
    pub threshold: Vec<f64>,
    /// Mass counted in the current window, per node.
    pub l_mass: Vec<u32>,
    /// Mass of the previous (reference) window, per node.
    pub r_mass: Vec<u32>,
}

impl HstTree {
    fn with_height(height: usize) -> Self {
        let branches = (1_usize << height) - 1;
        let nodes = (1_usize << (height + 1)) - 1;
        Self {
            feature: vec![0; branches],
            threshold: vec![0.0; branches],
            l_mass: vec![0; nodes],
            r_mass: vec![0; nodes],
        }
    }

    /// Fills the branch nodes in river's construction order (pre-order: node, left subtree,
    /// right subtree), drawing the feature and the split exactly as river does.
    fn grow(
        &mut self,
        node: usize,
        limits: &mut [(f64, f64)],
        depth_left: usize,
        rng: &mut PythonRandom,
    ) {
        if depth_left == 0 {
            return;
        }
        // random.choices(features, weights=widths): one draw scaled by the total width.
        let mut cumulative = Vec::with_capacity(limits.len());
        let mut total = 0.0;
        for &(low, high) in limits.iter() {
            total += high - low;
            cumulative.push(total);
        }
        let draw = rng.random() * total;
        let last = limits.len() - 1;
        let feature = cumulative[..last].partition_point(|&c| c <= draw);
        let (low, high) = limits[feature];
        let span = high - low;
        let (from, to) = (low + PADDING * span, high - PADDING * span);
        let threshold = from + (to - from) * rng.random();
        self.feature[node] = feature;
        self.threshold[node] = threshold;

        limits[feature] = (low, threshold);
        self.grow(2 * node + 1, limits, depth_left - 1, rng);
        limits[feature] = (threshold, high);
        self.grow(2 * node + 2, limits, depth_left - 1, rng);
        limits[feature] = (low, high);
    }
}

/// Multivariate Half-Space Trees.
#[derive(Debug, Clone)]
pub struct HalfSpaceTrees {
    config: HstConfig,
    limits: Vec<(f64, f64)>,
    trees: Vec<HstTree>,
    branches: usize,
    counter: usize,
    first_window: bool,
    rng: PythonRandom,
}

impl HalfSpaceTrees {
    /// Trees for rows whose feature `j` lies in `limits[j]` (river assumes `[0, 1]`). The
    /// trees are drawn on the first learned row, as river does.
    pub fn new(config: HstConfig, limits: Vec<(f64, f64)>) -> Self {
        let config = HstConfig {
            n_trees: config.n_trees.max(1),
            height: config.height.clamp(1, 24),
            window_size: config.window_size.max(1),
            ..config
        };
        Self {
            rng: PythonRandom::new(config.seed),
            branches: (1_usize << config.height) - 1,
            config,
            limits,
            trees: Vec::new(),
            counter: 0,
            first_window: true,
        }
    }

    /// Trees with explicit splits (e.g. exported from river), `config.n_trees` of them, each
    /// with the node counts of `config.height`.
    pub fn with_trees(config: HstConfig, trees: Vec<HstTree>) -> Result<Self, MlError> {
        let mut detector = Self::new(config, Vec::new());
        let nodes = 2 * detector.branches + 1;
        let well_formed = |tree: &HstTree| {
            tree.feature.len() == detector.branches
                && tree.threshold.len() == detector.branches
                && tree.l_mass.len() == nodes
                && tree.r_mass.len() == nodes
        };
        if trees.len() != detector.config.n_trees || !trees.iter().all(well_formed) {
            return Err(MlError::Parameter {
                name: "trees",
                reason: format!(
                    "expected {} trees of {} branches and {nodes} nodes",
                    detector.config.n_trees, detector.branches
                ),
            });
        }
        detector.trees = trees;
        Ok(detector)
    }

    /// The trees (empty until the first row is learned).
    pub fn trees(&self) -> &[HstTree] {
        &self.trees
    }

    /// The child of branch `node` that `row` falls into. A missing (or NaN) feature follows
    /// the child with more mass in the current window, as river does.
    #[inline]
    fn child(tree: &HstTree, node: usize, row: &[f64]) -> usize {
        let (left, right) = (2 * node + 1, 2 * node + 2);
        match row.get(tree.feature[node]) {
            Some(&value) if !value.is_nan() => {
                if value < tree.threshold[node] {
                    left
                } else {
                    right
                }
            }
            _ if tree.l_mass[left] < tree.l_mass[right] => right,
            _ => left,
        }
    }

    /// Counts `row` in the current window's masses; pivots the windows when it is full.
    pub fn learn_one(&mut self, row: &[f64]) {
        if self.trees.is_empty() {
            let mut limits: Vec<(f64, f64)> = (0..row.len())
                .map(|j| self.limits.get(j).copied().unwrap_or((0.0, 1.0)))
                .collect();
            if limits.is_empty() {
                limits.push((0.0, 1.0));
            }
            for _ in 0..self.config.n_trees {
                let mut tree = HstTree::with_height(self.config.height);
                tree.grow(0, &mut limits, self.config.height, &mut self.rng);
                self.trees.push(tree);
            }
        }
        let branches = self.branches;
        for tree in &mut self.trees {
            // Count the node, then descend: river's walk yields a node before choosing its
            // child, so a missing feature compares the children's masses before this row.
            let mut node = 0;
            loop {
                tree.l_mass[node] += 1;
                if node >= branches {
                    break;
                }
                node = Self::child(tree, node, row);
            }
        }
        self.counter += 1;
        if self.counter == self.config.window_size {
            for tree in &mut self.trees {
                tree.r_mass.copy_from_slice(&tree.l_mass);
                tree.l_mass.fill(0);
            }
            self.first_window = false;
            self.counter = 0;
        }
    }

    /// Anomaly score of `row` in [0, 1]: 1 − (reference mass along its path, weighted by
    /// 2^depth) / maximum; 0 during the first window.
    pub fn score_one(&self, row: &[f64]) -> f64 {
        if self.first_window {
            return 0.0;
        }
        let size_limit = SIZE_LIMIT_FRACTION * self.config.window_size as f64;
        let mut score = 0.0;
        for tree in &self.trees {
            let mut node = 0;
            let mut depth_weight = 1.0;
            loop {
                let mass = f64::from(tree.r_mass[node]);
                score += mass * depth_weight;
                if mass < size_limit || node >= self.branches {
                    break;
                }
                node = Self::child(tree, node, row);
                depth_weight *= 2.0;
            }
        }
        let max_score = (self.config.n_trees
            * self.config.window_size
            * ((1_usize << (self.config.height + 1)) - 1)) as f64;
        1.0 - score / max_score
    }
}

/// Univariate Half-Space Trees on values min-max scaled by the range seen so far.
#[derive(Debug, Clone)]
pub struct ScaledHalfSpaceTrees {
    trees: HalfSpaceTrees,
    min: f64,
    max: f64,
}

impl ScaledHalfSpaceTrees {
    /// A detector whose mass window is the probationary period when one is given (so the
    /// reference masses describe one probation's worth of data), else the configured window.
    pub fn new(config: HstConfig, probationary_period: usize) -> Self {
        let window_size = if probationary_period > 0 {
            probationary_period
        } else {
            config.window_size
        };
        Self {
            trees: HalfSpaceTrees::new(
                HstConfig {
                    window_size,
                    ..config
                },
                vec![(0.0, 1.0)],
            ),
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    fn scaled(&self, value: f64) -> f64 {
        if self.max > self.min {
            (value - self.min) / (self.max - self.min)
        } else {
            0.5
        }
    }
}

impl StreamingDetector for ScaledHalfSpaceTrees {
    fn score_then_learn(&mut self, observation: Observation) -> f64 {
        let value = observation.value;
        if !value.is_finite() {
            return 0.0;
        }
        let score = self.trees.score_one(&[self.scaled(value)]);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.trees.learn_one(&[self.scaled(value)]);
        score
    }
}

/// CPython's `random.Random`: MT19937 seeded through `init_by_array` with the seed's 32-bit
/// words, and `random()` built from two draws with 53 bits.
#[derive(Debug, Clone)]
pub struct PythonRandom {
    state: [u32; 624],
    index: usize,
}

impl PythonRandom {
    /// `random.Random(seed)` for a non-negative integer seed.
    pub fn new(seed: u64) -> Self {
        let low = (seed & 0xffff_ffff) as u32;
        let high = (seed >> 32) as u32;
        let key: Vec<u32> = if high == 0 {
            vec![low]
        } else {
            vec![low, high]
        };
        let mut rng = Self {
            state: [0; 624],
            index: 624,
        };
        rng.init_genrand(19_650_218);
        let n = 624;
        let (mut i, mut j) = (1_usize, 0_usize);
        for _ in 0..n.max(key.len()) {
            let previous = rng.state[i - 1];
            rng.state[i] = (rng.state[i] ^ ((previous ^ (previous >> 30)).wrapping_mul(1_664_525)))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= n {
                rng.state[0] = rng.state[n - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..n - 1 {
            let previous = rng.state[i - 1];
            rng.state[i] = (rng.state[i]
                ^ ((previous ^ (previous >> 30)).wrapping_mul(1_566_083_941)))
            .wrapping_sub(i as u32);
            i += 1;
            if i >= n {
                rng.state[0] = rng.state[n - 1];
                i = 1;
            }
        }
        rng.state[0] = 0x8000_0000;
        rng
    }

    fn init_genrand(&mut self, seed: u32) {
        self.state[0] = seed;
        for i in 1..624 {
            let previous = self.state[i - 1];
            self.state[i] = 1_812_433_253_u32
                .wrapping_mul(previous ^ (previous >> 30))
                .wrapping_add(i as u32);
        }
        self.index = 624;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for k in 0..624 {
                let y = (self.state[k] & 0x8000_0000) | (self.state[(k + 1) % 624] & 0x7fff_ffff);
                let mut next = self.state[(k + 397) % 624] ^ (y >> 1);
                if y & 1 == 1 {
                    next ^= 0x9908_b0df;
                }
                self.state[k] = next;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// A float in [0, 1) with 53 random bits, as `random.random()`.
    pub fn random(&mut self) -> f64 {
        let a = f64::from(self.next_u32() >> 5);
        let b = f64::from(self.next_u32() >> 6);
        (a * 67_108_864.0 + b) * (1.0 / 9_007_199_254_740_992.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_random_matches_cpython() {
        // CPython 3: random.Random(42).random() for the first three draws.
        let mut rng = PythonRandom::new(42);
        assert_eq!(rng.random(), 0.6394267984578837);
        assert_eq!(rng.random(), 0.025010755222666936);
        assert_eq!(rng.random(), 0.27502931836911926);
        let mut zero = PythonRandom::new(0);
        assert_eq!(zero.random(), 0.8444218515250481);
    }

    #[test]
    fn a_spike_scores_higher_than_the_crowd() {
        let mut trees = HalfSpaceTrees::new(
            HstConfig {
                window_size: 50,
                ..HstConfig::default()
            },
            vec![(0.0, 1.0)],
        );
        for row in 0..200 {
            trees.learn_one(&[0.4 + (row % 10) as f64 * 0.01]);
        }
        let usual = trees.score_one(&[0.45]);
        let spike = trees.score_one(&[0.95]);
        assert!(
            spike > 0.99 && spike > usual + 0.15,
            "usual {usual}, spike {spike}"
        );
    }

    #[test]
    fn scaled_trees_stay_quiet_on_a_flat_stream() {
        let mut detector = ScaledHalfSpaceTrees::new(HstConfig::default(), 100);
        let mut scores = Vec::new();
        for _ in 0..500 {
            scores.push(detector.score_then_learn(Observation {
                timestamp_ns: 0,
                value: 3.0,
            }));
        }
        let steady = scores[499];
        assert!(scores[100..].iter().all(|&s| s == steady));
        assert!(steady < 0.9);
    }
}
