//! `ai.onnx.ml:TreeEnsembleRegressor` with onnxruntime's aggregation semantics:
//!
//! - one target: SUM/AVERAGE/MIN/MAX of the leaf values, plus `base_values[0]` when exactly one
//!   base value is given; only PROBIT is applied afterwards (onnxruntime ignores the other
//!   post-transforms for a single target);
//! - several targets: per-target aggregation, base values added when there is one per target,
//!   targets no leaf voted for output 0, then the post-transform over the target vector.

use super::transform::{PostTransform, probit};
use super::tree::{Forest, LeafAttrs, NodeAttrs, floats_or_tensor};
use crate::ops::{Inputs, KResult, Kernel, NodeCtx, as_f32_cow, rows_cols};
use crate::tensor::{Tensor, TensorData};
use crate::value::Value;

/// `aggregate_function`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

impl Aggregate {
    fn parse(s: &str) -> KResult<Self> {
        Ok(match s {
            "SUM" => Self::Sum,
            "AVERAGE" => Self::Average,
            "MIN" => Self::Min,
            "MAX" => Self::Max,
            other => return Err(format!("unknown aggregate_function '{other}'")),
        })
    }

    #[inline(always)]
    fn combine(self, acc: &mut f32, has: &mut bool, v: f32) {
        match self {
            Self::Sum | Self::Average => *acc += v,
            Self::Min => {
                if !*has || v < *acc {
                    *acc = v;
                }
            }
            Self::Max => {
                if !*has || v > *acc {
                    *acc = v;
                }
            }
        }
        *has = true;
    }
}

/// A compiled TreeEnsembleRegressor.
#[derive(Debug)]
pub(crate) struct TreeRegressor {
    forest: Forest,
    n_targets: usize,
    aggregate: Aggregate,
    post: PostTransform,
    base_values: Vec<f32>,
}

/// Builds the kernel from the node attributes.
pub(crate) fn build(ctx: &NodeCtx<'_>) -> KResult<TreeRegressor> {
    let a = &ctx.attrs;
    let n_targets = usize::try_from(a.int_or("n_targets", 1)?)
        .ok()
        .filter(|&n| n >= 1)
        .ok_or("n_targets must be >= 1")?;
    let nodes = NodeAttrs::read(a)?;
    let weights = floats_or_tensor(a, "target_weights")?;
    let leaves = LeafAttrs {
        treeids: a.ints("target_treeids")?,
        nodeids: a.ints("target_nodeids")?,
        ids: a.ints("target_ids")?,
        weights: &weights,
    };
    let forest = Forest::build(&nodes, &leaves, n_targets)?;
    let base_values = floats_or_tensor(a, "base_values")?;
    if !base_values.is_empty() && base_values.len() != n_targets {
        return Err(format!(
            "base_values has {} entries for {n_targets} targets",
            base_values.len()
        ));
    }
    Ok(TreeRegressor {
        forest,
        n_targets,
        aggregate: Aggregate::parse(&a.string_or("aggregate_function", "SUM")?)?,
        post: PostTransform::parse(&a.string_or("post_transform", "NONE")?)?,
        base_values,
    })
}

impl TreeRegressor {
    /// Aggregates the trees for every row: `n_rows × n_targets` scores and "has vote" flags.
    fn aggregate(&self, x: &[f32], width: usize, n_rows: usize) -> (Vec<f32>, Vec<bool>) {
        let t = self.n_targets;
        let mut scores = vec![0.0f32; n_rows * t];
        let mut has = vec![false; n_rows * t];
        let agg = self.aggregate;
        if t == 1 {
            // Single target: the leaf's summed value counts whether or not it has votes.
            self.forest.for_each_leaf(x, width, |r, leaf| {
                agg.combine(&mut scores[r], &mut has[r], leaf.value);
            });
        } else {
            let forest = &self.forest;
            forest.for_each_leaf(x, width, |r, leaf| {
                for w in forest.votes(leaf) {
                    let k = r * t + w.id as usize;
                    agg.combine(&mut scores[k], &mut has[k], w.weight);
                }
            });
        }
        (scores, has)
    }

    /// Final score of a single-target row (onnxruntime's `FinalizeScores1`).
    fn finalize_one(&self, score: f32, has: bool) -> f32 {
        let origin = if self.base_values.len() == 1 {
            self.base_values[0]
        } else {
            0.0
        };
        let v = match self.aggregate {
            Aggregate::Sum => score + origin,
            Aggregate::Average => score / self.forest.n_trees() as f32 + origin,
            Aggregate::Min | Aggregate::Max => {
                if has {
                    score + origin
                } else {
                    origin
                }
            }
        };
        if self.post == PostTransform::Probit {
            probit(v)
        } else {
            v
        }
    }

    /// Final scores of a multi-target row, in place.
    fn finalize_many(&self, scores: &mut [f32], has: &[bool]) {
        let use_base = self.base_values.len() == self.n_targets;
        let n_trees = self.forest.n_trees() as f32;
        for (j, s) in scores.iter_mut().enumerate() {
            let base = if use_base { self.base_values[j] } else { 0.0 };
            let v = match self.aggregate {
                Aggregate::Sum => *s + base,
                Aggregate::Average => *s / n_trees + base,
                Aggregate::Min | Aggregate::Max => base + if has[j] { *s } else { 0.0 },
            };
            // A target without any vote reads as 0 (onnxruntime's ScoreValue conversion).
            *s = if has[j] { v } else { 0.0 };
        }
        self.post.apply(scores);
    }
}

impl Kernel for TreeRegressor {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let xt = ins.get(0)?;
        let (n_rows, width) = rows_cols(xt)?;
        if width < self.forest.n_features() {
            return Err(format!(
                "input has {width} features, the trees read feature {}",
                self.forest.n_features() - 1
            ));
        }
        let x = as_f32_cow(xt)?;
        let (mut scores, has) = self.aggregate(&x, width, n_rows);
        if self.n_targets == 1 {
            for (s, &h) in scores.iter_mut().zip(&has) {
                *s = self.finalize_one(*s, h);
            }
        } else {
            for (s, h) in scores
                .chunks_exact_mut(self.n_targets)
                .zip(has.chunks_exact(self.n_targets))
            {
                self.finalize_many(s, h);
            }
        }
        out.push(Value::Tensor(Tensor::raw(
            vec![n_rows, self.n_targets],
            TensorData::F32(scores),
        )));
        Ok(())
    }
}
