//! Half-Space Trees (Tan, Ting & Liu 2011) as river 0.26 implements them: random axis-aligned
//! trees of fixed height whose node masses, counted over tumbling windows, say how crowded a
//! point's neighbourhood was in the previous window.
//!
//! Owns the trees, built from CPython's generator ([`crate::pyrandom`], so a seed builds the
//! same trees as river's `HalfSpaceTrees(seed=...)`), and [`ScaledHalfSpaceTrees`], the
//! univariate adapter that min-max scales values online as river's docs recommend.

use super::{Observation, StreamingDetector};
use crate::MlError;
use crate::pyrandom::PyRandom;

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
        rng: &mut PyRandom,
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
    rng: PyRandom,
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
            rng: PyRandom::new(config.seed),
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

#[cfg(test)]
mod tests {
    use super::*;

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
