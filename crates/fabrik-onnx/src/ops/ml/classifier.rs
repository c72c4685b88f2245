//! `ai.onnx.ml:TreeEnsembleClassifier` with onnxruntime's finalisation rules
//! (`TreeAggregatorClassifier`), including its special handling of two classes:
//!
//! - "binary case": two class labels but votes for a single class column, as skl2onnx emits
//!   for RandomForest/GradientBoosting binary classifiers. The column's score `s` is the
//!   positive class; with all-positive weights the label is positive when `s > 0.5` and the
//!   probabilities are `[1 - s, s]`; with mixed-sign weights the label is positive when
//!   `s > 0` and the probabilities are `[logistic(-s), logistic(s)]` under LOGISTIC (else
//!   `[-s, s]`);
//! - `base_values` of length 1 is added to the first column; length 2 follows onnxruntime
//!   literally (see [`TreeClassifier::finalize`]);
//! - three or more classes: base values added, label = first class with the highest score,
//!   then the post-transform over all classes.
//!
//! Classes that received no vote score 0. Labels are int64 or strings.

use super::transform::{PostTransform, logistic, probit};
use super::tree::{Forest, LeafAttrs, NodeAttrs, floats_or_tensor};
use crate::ops::{Inputs, KResult, Kernel, NodeCtx, as_f32_cow, rows_cols};
use crate::tensor::{Tensor, TensorData};
use crate::value::Value;

/// Class labels.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Labels {
    /// `classlabels_int64s`.
    Int64(Vec<i64>),
    /// `classlabels_strings`.
    String(Vec<String>),
}

impl Labels {
    /// Reads `classlabels_int64s` / `classlabels_strings` (exactly one must be set).
    pub(crate) fn read(a: &crate::attrs::Attrs<'_>) -> KResult<Self> {
        let ints = a.ints("classlabels_int64s")?;
        let strs = a.strings("classlabels_strings")?;
        match (ints.is_empty(), strs.is_empty()) {
            (false, true) => Ok(Self::Int64(ints.to_vec())),
            (true, false) => Ok(Self::String(strs)),
            _ => {
                Err("exactly one of classlabels_int64s and classlabels_strings must be set".into())
            }
        }
    }

    /// Number of classes.
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Int64(v) => v.len(),
            Self::String(v) => v.len(),
        }
    }
}

/// A compiled TreeEnsembleClassifier.
#[derive(Debug)]
pub(crate) struct TreeClassifier {
    forest: Forest,
    labels: Labels,
    post: PostTransform,
    base_values: Vec<f32>,
    /// Two classes, votes for one class column only.
    binary_case: bool,
    weights_all_positive: bool,
}

/// Builds the kernel from the node attributes.
pub(crate) fn build(ctx: &NodeCtx<'_>) -> KResult<TreeClassifier> {
    let a = &ctx.attrs;
    let labels = Labels::read(a)?;
    let n_classes = labels.len();
    if n_classes < 2 {
        return Err("a classifier needs at least two class labels".into());
    }
    let nodes = NodeAttrs::read(a)?;
    let weights = floats_or_tensor(a, "class_weights")?;
    let ids = a.ints("class_ids")?;
    let leaves = LeafAttrs {
        treeids: a.ints("class_treeids")?,
        nodeids: a.ints("class_nodeids")?,
        ids,
        weights: &weights,
    };
    let forest = Forest::build(&nodes, &leaves, n_classes)?;
    let base_values = floats_or_tensor(a, "base_values")?;
    let base_ok = base_values.is_empty()
        || base_values.len() == n_classes
        || (n_classes == 2 && base_values.len() == 1);
    if !base_ok {
        return Err(format!(
            "base_values has {} entries for {n_classes} classes",
            base_values.len()
        ));
    }
    let mut distinct: Vec<i64> = ids.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    Ok(TreeClassifier {
        forest,
        labels,
        post: PostTransform::parse(&a.string_or("post_transform", "NONE")?)?,
        base_values,
        binary_case: n_classes == 2 && distinct.len() == 1,
        weights_all_positive: weights.iter().all(|&w| w >= 0.0),
    })
}

impl TreeClassifier {
    /// Turns one row's aggregated `scores`/`has` into class probabilities (written to
    /// `probs`) and returns the index of the predicted label.
    pub(crate) fn finalize(
        &self,
        scores: &mut [f32],
        has: &mut [bool],
        probs: &mut [f32],
    ) -> usize {
        let base = &self.base_values;
        if scores.len() > 2 {
            for (k, &b) in base.iter().enumerate() {
                if has[k] {
                    scores[k] += b;
                } else {
                    scores[k] = b;
                    has[k] = true;
                }
            }
            let mut best: Option<usize> = None;
            for k in 0..scores.len() {
                if has[k] && best.is_none_or(|b| scores[k] > scores[b]) {
                    best = Some(k);
                }
            }
            for k in 0..scores.len() {
                probs[k] = if has[k] { scores[k] } else { 0.0 };
            }
            self.post.apply(probs);
            return best.unwrap_or(0);
        }
        // Two classes.
        let mut second_class: i32 = -1;
        let mut n_scores = 2;
        match base.len() {
            2 => {
                if has[1] {
                    // onnxruntime: base_values[0] is not used; class 1 = base[1] + score[0].
                    scores[1] = base[1] + scores[0];
                    scores[0] = -scores[1];
                } else {
                    scores[1] += base[1];
                    scores[0] += base[0];
                }
            }
            1 => {
                scores[0] += base[0];
                if !has[1] {
                    n_scores = 1;
                }
            }
            _ => {
                second_class = 3;
                if !has[1] {
                    n_scores = 1;
                }
            }
        }
        let read = |k: usize| if has[k] { scores[k] } else { 0.0 };
        let pos_weight = if n_scores == 2 && has[1] {
            scores[1]
        } else {
            read(0)
        };
        let label = if self.binary_case {
            if self.weights_all_positive {
                if pos_weight > 0.5 {
                    second_class = 0;
                    1
                } else {
                    second_class = 1;
                    0
                }
            } else if pos_weight > 0.0 {
                second_class = 2;
                1
            } else {
                second_class = 3;
                0
            }
        } else {
            usize::from(pos_weight > 0.0)
        };
        if n_scores == 2 {
            probs[0] = read(0);
            probs[1] = read(1);
            self.post.apply(probs);
            return label;
        }
        let s = read(0);
        (probs[0], probs[1]) = match (self.post, second_class) {
            // onnxruntime writes only the first column here (the second is uninitialised
            // memory there); 0 keeps the output deterministic.
            (PostTransform::Probit, _) => (probit(s), 0.0),
            (_, 0 | 1) => (1.0 - s, s),
            (PostTransform::Logistic, 2 | 3) => (logistic(-s), logistic(s)),
            (_, 2 | 3) => (-s, s),
            _ => (s, 0.0),
        };
        label
    }
}

impl Kernel for TreeClassifier {
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
        let c = self.labels.len();
        let mut scores = vec![0.0f32; n_rows * c];
        let mut has = vec![false; n_rows * c];
        let forest = &self.forest;
        forest.for_each_leaf(&x, width, |r, leaf| {
            for w in forest.votes(leaf) {
                let k = r * c + w.id as usize;
                scores[k] += w.weight;
                has[k] = true;
            }
        });
        let mut probs = vec![0.0f32; n_rows * c];
        let mut label_idx = Vec::with_capacity(n_rows);
        for ((s, h), p) in scores
            .chunks_exact_mut(c)
            .zip(has.chunks_exact_mut(c))
            .zip(probs.chunks_exact_mut(c))
        {
            label_idx.push(self.finalize(s, h, p));
        }
        let labels = match &self.labels {
            Labels::Int64(l) => TensorData::I64(label_idx.iter().map(|&i| l[i]).collect()),
            Labels::String(l) => {
                TensorData::String(label_idx.iter().map(|&i| l[i].clone()).collect())
            }
        };
        out.push(Value::Tensor(Tensor::raw(vec![n_rows], labels)));
        out.push(Value::Tensor(Tensor::raw(
            vec![n_rows, c],
            TensorData::F32(probs),
        )));
        Ok(())
    }
}
