//! `ai.onnx.ml:LinearClassifier` and `LinearRegressor` (scikit-learn's LogisticRegression,
//! LinearSVC, LinearRegression, Ridge... as skl2onnx exports them), with onnxruntime's
//! conventions where the spec leaves room:
//!
//! - scores are `X · coefficientsᵀ + intercepts` in `f32` (inputs of other numeric types are
//!   cast first);
//! - classifier with several targets: label = first class with the highest raw score, then
//!   `post_transform` over the row (`multi_class` is accepted and, as in onnxruntime, unused);
//! - classifier with one target (the binary case): label = `classlabels[1]` when the score is
//!   `> 0`, else `classlabels[0]` (1 / 0 without labels; otherwise exactly two are required);
//!   with the two labels the scores are `[logistic(-s), logistic(s)]` under LOGISTIC and
//!   `[1 - s, s]` under NONE, SOFTMAX and SOFTMAX_ZERO (onnxruntime 1.32 measured), PROBIT is
//!   refused (onnxruntime fills half of its `[N, 2]` output then); without labels, the single
//!   raw (or probit) score;
//! - `intercepts` is required and sets the number of targets; extra coefficients are ignored;
//! - regressor with one target: only PROBIT is applied, as in onnxruntime; with several, every
//!   post-transform.

use super::transform::{PostTransform, logistic, probit};
use crate::ops::{Inputs, KResult, Kernel, NodeCtx, as_f32_cow, rows_cols};
use crate::tensor::{Tensor, TensorData};
use crate::value::Value;

/// `scores[r, j] = Σ_k x[r, k] · coef[j, k] + intercepts[j]` (intercepts may be empty).
fn scores(x: &[f32], width: usize, coef: &[f32], intercepts: &[f32], targets: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len() / width.max(1) * targets);
    for row in x.chunks_exact(width.max(1)) {
        for j in 0..targets {
            let c = &coef[j * width..(j + 1) * width];
            let dot = row.iter().zip(c).fold(0.0f32, |acc, (&a, &b)| acc + a * b);
            out.push(dot + intercepts.get(j).copied().unwrap_or(0.0));
        }
    }
    out
}

/// Checks there are coefficients for `targets` rows of `width` features (onnxruntime ignores
/// any beyond).
fn check_coefficients(coef: &[f32], targets: usize, width: usize) -> KResult<()> {
    if coef.len() < targets * width {
        return Err(format!(
            "{} coefficients for {targets} targets of {width} features (expected {})",
            coef.len(),
            targets * width
        ));
    }
    Ok(())
}

/// Class labels of a LinearClassifier (`classlabels_ints` or `classlabels_strings`).
#[derive(Debug)]
enum ClassLabels {
    Int64(Vec<i64>),
    String(Vec<String>),
}

impl ClassLabels {
    fn len(&self) -> usize {
        match self {
            Self::Int64(v) => v.len(),
            Self::String(v) => v.len(),
        }
    }
}

/// A compiled LinearClassifier.
#[derive(Debug)]
pub(crate) struct LinearClassifier {
    coef: Vec<f32>,
    intercepts: Vec<f32>,
    labels: ClassLabels,
    post: PostTransform,
}

/// Builds a LinearClassifier.
pub(crate) fn build_classifier(ctx: &NodeCtx<'_>) -> KResult<LinearClassifier> {
    let a = &ctx.attrs;
    if !(1..=2).contains(&ctx.n_outputs) {
        return Err(format!("expected 1 or 2 outputs, got {}", ctx.n_outputs));
    }
    let coef = a.floats("coefficients")?.to_vec();
    if coef.is_empty() {
        return Err("missing attribute 'coefficients'".into());
    }
    let ints = a.ints("classlabels_ints")?;
    let strs = a.strings("classlabels_strings")?;
    let labels = match (ints.is_empty(), strs.is_empty()) {
        (_, false) if !ints.is_empty() => {
            return Err("both classlabels_ints and classlabels_strings are set".into());
        }
        (_, false) => ClassLabels::String(strs),
        _ => ClassLabels::Int64(ints.to_vec()),
    };
    let intercepts = a.floats("intercepts")?.to_vec();
    let post = PostTransform::parse(&a.string_or("post_transform", "NONE")?)?;
    let n = intercepts.len();
    if n == 0 {
        return Err("intercepts must not be empty (they set the number of classes)".into());
    }
    if !coef.len().is_multiple_of(n) {
        return Err(format!(
            "{} coefficients do not split into {n} class rows",
            coef.len()
        ));
    }
    match (n, labels.len()) {
        (1, 0 | 2) => {}
        (1, l) => {
            return Err(format!(
                "binary classification needs 2 class labels, got {l}"
            ));
        }
        (n, l) if l < n => return Err(format!("{l} class labels for {n} classes")),
        _ => {}
    }
    if n == 1 && labels.len() == 2 && post == PostTransform::Probit {
        // onnxruntime fills only half of the [N, 2] scores then: nothing to be equal to.
        return Err("PROBIT with a single coefficient row and two labels is not supported".into());
    }
    Ok(LinearClassifier {
        coef,
        intercepts,
        labels,
        post,
    })
}

impl Kernel for LinearClassifier {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let xt = ins.get(0)?;
        let (n_rows, width) = rows_cols(xt)?;
        let targets = self.intercepts.len();
        check_coefficients(&self.coef, targets, width)?;
        let x = as_f32_cow(xt)?;
        let mut s = scores(&x, width, &self.coef, &self.intercepts, targets);
        let labels = &self.labels;
        let (label_idx, probs, cols): (Vec<usize>, Vec<f32>, usize) = if targets == 1 {
            // Index 1 = positive class, 0 = negative.
            let idx = s.iter().map(|&v| usize::from(v > 0.0)).collect();
            if labels.len() == 2 {
                let p = if self.post == PostTransform::Logistic {
                    s.iter()
                        .flat_map(|&v| [logistic(-v), logistic(v)])
                        .collect()
                } else {
                    s.iter().flat_map(|&v| [1.0 - v, v]).collect()
                };
                (idx, p, 2)
            } else {
                if self.post == PostTransform::Probit {
                    s.iter_mut().for_each(|v| *v = probit(*v));
                }
                (idx, s, 1)
            }
        } else {
            let mut idx = Vec::with_capacity(n_rows);
            for row in s.chunks_exact_mut(targets) {
                let mut best = 0;
                for (j, &v) in row.iter().enumerate().skip(1) {
                    if v > row[best] {
                        best = j;
                    }
                }
                idx.push(best);
                self.post.apply(row);
            }
            (idx, s, targets)
        };
        let label_data = match labels {
            // Binary without labels: 1 / 0.
            ClassLabels::Int64(l) if l.is_empty() => {
                TensorData::I64(label_idx.iter().map(|&i| i as i64).collect())
            }
            ClassLabels::Int64(l) => TensorData::I64(label_idx.iter().map(|&i| l[i]).collect()),
            ClassLabels::String(l) => {
                TensorData::String(label_idx.iter().map(|&i| l[i].clone()).collect())
            }
        };
        out.push(Value::Tensor(Tensor::raw(vec![n_rows], label_data)));
        out.push(Value::Tensor(Tensor::raw(
            vec![n_rows, cols],
            TensorData::F32(probs),
        )));
        Ok(())
    }
}

/// A compiled LinearRegressor.
#[derive(Debug)]
pub(crate) struct LinearRegressor {
    coef: Vec<f32>,
    /// Empty unless there is one intercept per target (onnxruntime ignores them otherwise).
    intercepts: Vec<f32>,
    targets: usize,
    post: PostTransform,
}

/// Builds a LinearRegressor.
pub(crate) fn build_regressor(ctx: &NodeCtx<'_>) -> KResult<LinearRegressor> {
    let a = &ctx.attrs;
    if ctx.n_outputs != 1 {
        return Err(format!("expected 1 output, got {}", ctx.n_outputs));
    }
    let targets = usize::try_from(a.int_or("targets", 1)?)
        .ok()
        .filter(|&t| t >= 1)
        .ok_or("targets must be >= 1")?;
    let coef = a.floats("coefficients")?.to_vec();
    if coef.is_empty() || !coef.len().is_multiple_of(targets) {
        return Err(format!(
            "{} coefficients do not split into {targets} targets",
            coef.len()
        ));
    }
    let mut intercepts = a.floats("intercepts")?.to_vec();
    if intercepts.len() != targets {
        intercepts.clear();
    }
    Ok(LinearRegressor {
        coef,
        intercepts,
        targets,
        post: PostTransform::parse(&a.string_or("post_transform", "NONE")?)?,
    })
}

impl Kernel for LinearRegressor {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let xt = ins.get(0)?;
        let (n_rows, width) = rows_cols(xt)?;
        check_coefficients(&self.coef, self.targets, width)?;
        let x = as_f32_cow(xt)?;
        let mut s = scores(&x, width, &self.coef, &self.intercepts, self.targets);
        if self.targets == 1 {
            if self.post == PostTransform::Probit {
                s.iter_mut().for_each(|v| *v = probit(*v));
            }
        } else {
            s.chunks_exact_mut(self.targets)
                .for_each(|row| self.post.apply(row));
        }
        out.push(Value::Tensor(Tensor::raw(
            vec![n_rows, self.targets],
            TensorData::F32(s),
        )));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_an_affine_map() {
        // Two rows of two features, three targets.
        let s = scores(
            &[1.0, 2.0, 3.0, 4.0],
            2,
            &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            &[0.5, 0.0, -1.0],
            3,
        );
        assert_eq!(s, vec![1.5, 2.0, 2.0, 3.5, 4.0, 6.0]);
        assert!(check_coefficients(&[0.0; 6], 3, 2).is_ok());
        assert!(check_coefficients(&[0.0; 6], 2, 4).is_err());
    }
}
