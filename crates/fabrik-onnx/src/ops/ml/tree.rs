//! The flattened tree ensemble shared by TreeEnsembleRegressor and TreeEnsembleClassifier.
//!
//! At load time the `nodes_*` attribute tuples are validated and re-laid out per tree in
//! depth-first order into one contiguous array of 16-byte [`FlatNode`]s: a branch's true child
//! is always the next node, so a node stores only its false child. Leaves store a range into
//! the leaf-weight array plus their summed weight for single-output ensembles. Evaluation
//! compares `f32` features with `f32` thresholds (as onnxruntime does for float inputs) and
//! walks a block of rows tree by tree, so each row still visits trees in model order.

use std::collections::{HashMap, HashSet};

use crate::attrs::Attrs;
use crate::ops::KResult;

/// `nodes_modes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NodeMode {
    /// `x <= t`.
    BranchLeq,
    /// `x < t`.
    BranchLt,
    /// `x >= t`.
    BranchGte,
    /// `x > t`.
    BranchGt,
    /// `x == t`.
    BranchEq,
    /// `x != t`.
    BranchNeq,
    /// A leaf.
    Leaf,
}

impl NodeMode {
    /// Parses a `nodes_modes` entry.
    pub(crate) fn parse(s: &str) -> KResult<Self> {
        Ok(match s {
            "BRANCH_LEQ" => Self::BranchLeq,
            "BRANCH_LT" => Self::BranchLt,
            "BRANCH_GTE" => Self::BranchGte,
            "BRANCH_GT" => Self::BranchGt,
            "BRANCH_EQ" => Self::BranchEq,
            "BRANCH_NEQ" => Self::BranchNeq,
            "LEAF" => Self::Leaf,
            other => return Err(format!("unknown node mode '{other}'")),
        })
    }

    /// Whether a branch node sends `x` to its true child. A NaN feature goes to the true child
    /// only when the node's missing value tracks true (all comparisons with NaN are false
    /// except `!=`).
    #[inline(always)]
    pub(crate) fn goes_true(self, x: f32, threshold: f32, missing_true: bool) -> bool {
        let r = match self {
            Self::BranchLeq => x <= threshold,
            Self::BranchLt => x < threshold,
            Self::BranchGte => x >= threshold,
            Self::BranchGt => x > threshold,
            Self::BranchEq => x == threshold,
            Self::BranchNeq => x != threshold,
            Self::Leaf => false,
        };
        r || (missing_true && x.is_nan())
    }
}

/// One node of the flattened ensemble (16 bytes).
#[derive(Clone, Copy, Debug)]
pub(crate) struct FlatNode {
    /// Threshold (branch) or summed weight of output 0 (leaf).
    pub(crate) value: f32,
    /// Feature index (branch) or start of the leaf's weights (leaf).
    pub(crate) a: u32,
    /// Index of the false child (branch) or number of the leaf's weights (leaf).
    pub(crate) b: u32,
    /// Mode.
    pub(crate) mode: NodeMode,
    /// `nodes_missing_value_tracks_true`.
    pub(crate) missing_true: bool,
}

/// One leaf vote: output (class or target) index and weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LeafWeight {
    /// Class or target index.
    pub(crate) id: u32,
    /// Weight.
    pub(crate) weight: f32,
}

/// The `nodes_*` attributes of a tree ensemble.
pub(crate) struct NodeAttrs {
    treeids: Vec<i64>,
    nodeids: Vec<i64>,
    featureids: Vec<i64>,
    values: Vec<f32>,
    modes: Vec<NodeMode>,
    trueids: Vec<i64>,
    falseids: Vec<i64>,
    missing_true: Vec<bool>,
}

/// A FLOATS attribute, or its `<name>_as_tensor` double variant narrowed to `f32`.
pub(crate) fn floats_or_tensor(attrs: &Attrs<'_>, name: &str) -> KResult<Vec<f32>> {
    let f = attrs.floats(name)?;
    if !f.is_empty() {
        return Ok(f.to_vec());
    }
    match attrs.tensor(&format!("{name}_as_tensor"))? {
        None => Ok(Vec::new()),
        Some(t) => match t.data() {
            crate::tensor::TensorData::F64(v) => Ok(v.iter().map(|&x| x as f32).collect()),
            crate::tensor::TensorData::F32(v) => Ok(v.clone()),
            _ => Err(format!(
                "attribute '{name}_as_tensor' must be a double tensor"
            )),
        },
    }
}

impl NodeAttrs {
    /// Reads and length-checks the `nodes_*` attributes.
    pub(crate) fn read(attrs: &Attrs<'_>) -> KResult<Self> {
        let n = attrs.ints("nodes_nodeids")?.len();
        let modes = attrs
            .strings("nodes_modes")?
            .iter()
            .map(|m| NodeMode::parse(m))
            .collect::<KResult<Vec<_>>>()?;
        let mut missing_true: Vec<bool> = attrs
            .ints("nodes_missing_value_tracks_true")?
            .iter()
            .map(|&v| v != 0)
            .collect();
        if missing_true.is_empty() {
            missing_true = vec![false; n];
        }
        let me = Self {
            treeids: attrs.ints("nodes_treeids")?.to_vec(),
            nodeids: attrs.ints("nodes_nodeids")?.to_vec(),
            featureids: attrs.ints("nodes_featureids")?.to_vec(),
            values: floats_or_tensor(attrs, "nodes_values")?,
            modes,
            trueids: attrs.ints("nodes_truenodeids")?.to_vec(),
            falseids: attrs.ints("nodes_falsenodeids")?.to_vec(),
            missing_true,
        };
        if n == 0 {
            return Err("the ensemble has no nodes".into());
        }
        let lens = [
            ("nodes_treeids", me.treeids.len()),
            ("nodes_featureids", me.featureids.len()),
            ("nodes_values", me.values.len()),
            ("nodes_modes", me.modes.len()),
            ("nodes_truenodeids", me.trueids.len()),
            ("nodes_falsenodeids", me.falseids.len()),
            ("nodes_missing_value_tracks_true", me.missing_true.len()),
        ];
        for (name, len) in lens {
            if len != n {
                return Err(format!("{name} has {len} entries, nodes_nodeids has {n}"));
            }
        }
        Ok(me)
    }

    /// Builds attributes directly (unit tests).
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        treeids: Vec<i64>,
        nodeids: Vec<i64>,
        featureids: Vec<i64>,
        values: Vec<f32>,
        modes: Vec<NodeMode>,
        trueids: Vec<i64>,
        falseids: Vec<i64>,
        missing_true: Vec<bool>,
    ) -> Self {
        Self {
            treeids,
            nodeids,
            featureids,
            values,
            modes,
            trueids,
            falseids,
            missing_true,
        }
    }
}

/// The leaf votes (`target_*` or `class_*` attributes).
pub(crate) struct LeafAttrs<'a> {
    /// Tree of each vote.
    pub(crate) treeids: &'a [i64],
    /// Node of each vote.
    pub(crate) nodeids: &'a [i64],
    /// Output index of each vote.
    pub(crate) ids: &'a [i64],
    /// Weight of each vote.
    pub(crate) weights: &'a [f32],
}

/// A validated, flattened tree ensemble.
#[derive(Debug)]
pub(crate) struct Forest {
    nodes: Vec<FlatNode>,
    roots: Vec<u32>,
    weights: Vec<LeafWeight>,
    /// Every branch is BRANCH_LEQ without missing-value tracking: the fast loop applies.
    all_leq: bool,
    n_features: usize,
}

/// Rows evaluated together, tree by tree.
const BLOCK: usize = 128;

impl Forest {
    /// Validates and flattens the trees. `n_outputs` bounds the vote ids.
    pub(crate) fn build(
        nodes: &NodeAttrs,
        leaves: &LeafAttrs<'_>,
        n_outputs: usize,
    ) -> KResult<Self> {
        let n = nodes.nodeids.len();
        let mut index: HashMap<(i64, i64), usize> = HashMap::with_capacity(n);
        let mut tree_order: Vec<i64> = Vec::new();
        let mut seen_trees = HashSet::new();
        for i in 0..n {
            let key = (nodes.treeids[i], nodes.nodeids[i]);
            if index.insert(key, i).is_some() {
                return Err(format!("duplicate node: tree {} node {}", key.0, key.1));
            }
            if seen_trees.insert(key.0) {
                tree_order.push(key.0);
            }
        }
        // Children must exist; roots are the nodes nobody points to.
        let mut is_child = vec![false; n];
        let mut n_features = 0usize;
        for i in 0..n {
            if nodes.modes[i] == NodeMode::Leaf {
                continue;
            }
            let f = nodes.featureids[i];
            if f < 0 || f > i64::from(u32::MAX >> 1) {
                return Err(format!("node {i}: invalid feature id {f}"));
            }
            n_features = n_features.max(f as usize + 1);
            for child in [nodes.trueids[i], nodes.falseids[i]] {
                let c = *index.get(&(nodes.treeids[i], child)).ok_or_else(|| {
                    format!(
                        "tree {} node {}: child node {child} does not exist",
                        nodes.treeids[i], nodes.nodeids[i]
                    )
                })?;
                is_child[c] = true;
            }
        }
        let mut root_of: HashMap<i64, usize> = HashMap::new();
        for (i, &child) in is_child.iter().enumerate() {
            if !child && root_of.insert(nodes.treeids[i], i).is_some() {
                return Err(format!("tree {} has more than one root", nodes.treeids[i]));
            }
        }
        // Leaf votes, in attribute order.
        let m = leaves.nodeids.len();
        if leaves.treeids.len() != m || leaves.ids.len() != m || leaves.weights.len() != m {
            return Err(
                "the leaf vote attributes (treeids, nodeids, ids, weights) differ in length".into(),
            );
        }
        let mut votes: Vec<Vec<LeafWeight>> = vec![Vec::new(); n];
        for j in 0..m {
            let key = (leaves.treeids[j], leaves.nodeids[j]);
            let &i = index.get(&key).ok_or_else(|| {
                format!("leaf vote for missing node: tree {} node {}", key.0, key.1)
            })?;
            if nodes.modes[i] != NodeMode::Leaf {
                return Err(format!(
                    "leaf vote for branch node: tree {} node {}",
                    key.0, key.1
                ));
            }
            let id = leaves.ids[j];
            if id < 0 || id as usize >= n_outputs {
                return Err(format!("vote id {id} out of range (0..{n_outputs})"));
            }
            votes[i].push(LeafWeight {
                id: id as u32,
                weight: leaves.weights[j],
            });
        }
        // Depth-first layout, true child next.
        let mut flat: Vec<FlatNode> = Vec::with_capacity(n);
        let mut weights = Vec::with_capacity(m);
        let mut roots = Vec::with_capacity(tree_order.len());
        let mut visited = vec![false; n];
        let mut stack: Vec<(usize, Option<usize>)> = Vec::new();
        for t in &tree_order {
            let root = *root_of
                .get(t)
                .ok_or_else(|| format!("tree {t} has no root (cycle)"))?;
            roots.push(u32::try_from(flat.len()).map_err(|_| "too many nodes")?);
            stack.push((root, None));
            while let Some((i, patch)) = stack.pop() {
                if std::mem::replace(&mut visited[i], true) {
                    return Err(format!(
                        "tree {} node {} is reached twice (not a tree)",
                        nodes.treeids[i], nodes.nodeids[i]
                    ));
                }
                let pos = flat.len();
                if let Some(parent) = patch {
                    flat[parent].b = pos as u32;
                }
                if nodes.modes[i] == NodeMode::Leaf {
                    let v = &votes[i];
                    let sum0 = v.iter().filter(|w| w.id == 0).map(|w| w.weight).sum();
                    flat.push(FlatNode {
                        value: sum0,
                        a: weights.len() as u32,
                        b: v.len() as u32,
                        mode: NodeMode::Leaf,
                        missing_true: false,
                    });
                    weights.extend_from_slice(v);
                } else {
                    flat.push(FlatNode {
                        value: nodes.values[i],
                        a: nodes.featureids[i] as u32,
                        b: 0,
                        mode: nodes.modes[i],
                        missing_true: nodes.missing_true[i],
                    });
                    let t = index[&(nodes.treeids[i], nodes.trueids[i])];
                    let f = index[&(nodes.treeids[i], nodes.falseids[i])];
                    stack.push((f, Some(pos)));
                    stack.push((t, None));
                }
            }
        }
        let all_leq = flat.iter().all(|n| {
            n.mode == NodeMode::Leaf || (n.mode == NodeMode::BranchLeq && !n.missing_true)
        });
        Ok(Self {
            nodes: flat,
            roots,
            weights,
            all_leq,
            n_features,
        })
    }

    /// Number of trees.
    pub(crate) fn n_trees(&self) -> usize {
        self.roots.len()
    }

    /// Smallest row width the trees can read.
    pub(crate) fn n_features(&self) -> usize {
        self.n_features
    }

    /// The leaf node reached by `row` in the tree rooted at `root`.
    #[inline(always)]
    fn leaf<const LEQ: bool>(&self, root: u32, row: &[f32]) -> &FlatNode {
        let mut i = root as usize;
        loop {
            let n = &self.nodes[i];
            if n.mode == NodeMode::Leaf {
                return n;
            }
            let x = row[n.a as usize];
            let go_true = if LEQ {
                x <= n.value
            } else {
                n.mode.goes_true(x, n.value, n.missing_true)
            };
            i = if go_true { i + 1 } else { n.b as usize };
        }
    }

    /// The votes of a leaf.
    #[inline(always)]
    pub(crate) fn votes(&self, leaf: &FlatNode) -> &[LeafWeight] {
        let start = leaf.a as usize;
        &self.weights[start..start + leaf.b as usize]
    }

    /// Calls `f(row, leaf)` for every row of `x` (`n_rows × width`, `width >= n_features`)
    /// and every tree; for any given row, trees come in model order.
    pub(crate) fn for_each_leaf(
        &self,
        x: &[f32],
        width: usize,
        mut f: impl FnMut(usize, &FlatNode),
    ) {
        if self.all_leq {
            self.walk::<true>(x, width, &mut f);
        } else {
            self.walk::<false>(x, width, &mut f);
        }
    }

    fn walk<const LEQ: bool>(&self, x: &[f32], width: usize, f: &mut impl FnMut(usize, &FlatNode)) {
        let n_rows = x.len().checked_div(width).unwrap_or(0);
        let mut start = 0;
        while start < n_rows {
            let end = (start + BLOCK).min(n_rows);
            for &root in &self.roots {
                // Four rows at a time: independent walks overlap their memory latency.
                let mut r = start;
                while r + 4 <= end {
                    let l0 = self.leaf::<LEQ>(root, &x[r * width..(r + 1) * width]);
                    let l1 = self.leaf::<LEQ>(root, &x[(r + 1) * width..(r + 2) * width]);
                    let l2 = self.leaf::<LEQ>(root, &x[(r + 2) * width..(r + 3) * width]);
                    let l3 = self.leaf::<LEQ>(root, &x[(r + 3) * width..(r + 4) * width]);
                    f(r, l0);
                    f(r + 1, l1);
                    f(r + 2, l2);
                    f(r + 3, l3);
                    r += 4;
                }
                for r in r..end {
                    f(r, self.leaf::<LEQ>(root, &x[r * width..(r + 1) * width]));
                }
            }
            start = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use NodeMode::*;

    /// One stump on feature 0 with threshold 1.0: true leaf votes 10, false leaf votes 20.
    fn stump(mode: NodeMode, missing_true: bool) -> Forest {
        let nodes = NodeAttrs::from_parts(
            vec![0, 0, 0],
            vec![0, 1, 2],
            vec![0, 0, 0],
            vec![1.0, 0.0, 0.0],
            vec![mode, Leaf, Leaf],
            vec![1, 0, 0],
            vec![2, 0, 0],
            vec![missing_true, false, false],
        );
        let leaves = LeafAttrs {
            treeids: &[0, 0],
            nodeids: &[1, 2],
            ids: &[0, 0],
            weights: &[10.0, 20.0],
        };
        Forest::build(&nodes, &leaves, 1).expect("test data")
    }

    fn eval(f: &Forest, x: f32) -> f32 {
        let mut out = 0.0;
        f.for_each_leaf(&[x], 1, |_, leaf| out = leaf.value);
        out
    }

    #[test]
    fn node_modes() {
        let cases = [
            (BranchLeq, [10.0, 10.0, 20.0]),
            (BranchLt, [10.0, 20.0, 20.0]),
            (BranchGte, [20.0, 10.0, 10.0]),
            (BranchGt, [20.0, 20.0, 10.0]),
            (BranchEq, [20.0, 10.0, 20.0]),
            (BranchNeq, [10.0, 20.0, 10.0]),
        ];
        for (mode, expected) in cases {
            let f = stump(mode, false);
            let got = [eval(&f, 0.5), eval(&f, 1.0), eval(&f, 1.5)];
            assert_eq!(got, expected, "{mode:?}");
        }
    }

    #[test]
    fn missing_values_follow_the_track() {
        for mode in [BranchLeq, BranchLt, BranchGte, BranchGt, BranchEq] {
            assert_eq!(
                eval(&stump(mode, false), f32::NAN),
                20.0,
                "{mode:?} tracks false"
            );
            assert_eq!(
                eval(&stump(mode, true), f32::NAN),
                10.0,
                "{mode:?} tracks true"
            );
        }
        // NaN != t is true whatever the track.
        assert_eq!(eval(&stump(BranchNeq, false), f32::NAN), 10.0);
    }

    #[test]
    fn layout_is_depth_first_with_true_child_next() {
        // Tree given in a scrambled order: root is node 5.
        let nodes = NodeAttrs::from_parts(
            vec![7, 7, 7, 7, 7],
            vec![1, 2, 5, 3, 4],
            vec![0, 0, 1, 0, 0],
            vec![0.0, 0.0, 0.5, 2.0, 0.0],
            vec![Leaf, Leaf, BranchLeq, BranchLeq, Leaf],
            vec![0, 0, 3, 1, 0],
            vec![0, 0, 4, 2, 0],
            vec![false; 5],
        );
        let leaves = LeafAttrs {
            treeids: &[7, 7, 7],
            nodeids: &[1, 2, 4],
            ids: &[0, 0, 0],
            weights: &[1.0, 2.0, 4.0],
        };
        let f = Forest::build(&nodes, &leaves, 1).expect("test data");
        assert_eq!(f.n_trees(), 1);
        assert_eq!(f.n_features(), 2);
        let mut got = vec![0.0; 3];
        // rows: (x0, x1)
        let x = [1.0, 0.0, 3.0, 0.0, 0.0, 1.0];
        f.for_each_leaf(&x, 2, |r, leaf| got[r] = leaf.value);
        assert_eq!(got, vec![1.0, 2.0, 4.0]);
    }

    #[test]
    fn malformed_trees_are_rejected() {
        let bad_child = NodeAttrs::from_parts(
            vec![0, 0],
            vec![0, 1],
            vec![0, 0],
            vec![0.0, 0.0],
            vec![BranchLeq, Leaf],
            vec![1, 0],
            vec![9, 0],
            vec![false; 2],
        );
        let none = LeafAttrs {
            treeids: &[],
            nodeids: &[],
            ids: &[],
            weights: &[],
        };
        let err = Forest::build(&bad_child, &none, 1).expect_err("must fail");
        assert!(err.contains("does not exist"), "{err}");
        // A cycle: 0 -> 1 -> 0.
        let cycle = NodeAttrs::from_parts(
            vec![0, 0, 0],
            vec![0, 1, 2],
            vec![0, 0, 0],
            vec![0.0; 3],
            vec![BranchLeq, BranchLeq, Leaf],
            vec![1, 0, 0],
            vec![2, 2, 0],
            vec![false; 3],
        );
        assert!(Forest::build(&cycle, &none, 1).is_err());
    }
}
