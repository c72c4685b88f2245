//! Normalisations of `ai.onnx` on `f32` and `f64`: Softmax and LogSoftmax (opset 13+: along
//! `axis`, default -1; before 13: over the input coerced to 2-D at `axis`, default 1) and
//! BatchNormalization in its inference form (one output; per-channel scale and bias folded
//! the way onnxruntime folds them, `x * (scale / sqrt(var + eps)) + (B - mean * that)`).

use super::num::Real;
use super::shape::resolve_axis;
use super::{Inputs, KResult, Kernel, NodeCtx};
use crate::tensor::{Tensor, TensorData};
use crate::value::Value;

/// The operators [`build`] implements.
pub(crate) const OPS: &[&str] = &["Softmax", "LogSoftmax", "BatchNormalization"];

/// Builds the kernel for `op`, or `None` when `op` is not one of this module's.
pub(crate) fn build(op: &str, ctx: &NodeCtx<'_>) -> KResult<Option<Box<dyn Kernel>>> {
    let k: Box<dyn Kernel> = match op {
        "Softmax" | "LogSoftmax" => {
            if ctx.n_inputs != 1 || ctx.n_outputs != 1 {
                return Err(format!(
                    "expected 1 input and 1 output, got {} and {}",
                    ctx.n_inputs, ctx.n_outputs
                ));
            }
            let coerce_2d = ctx.opset < 13;
            Box::new(Softmax {
                log: op == "LogSoftmax",
                axis: ctx.attrs.int_or("axis", if coerce_2d { 1 } else { -1 })?,
                coerce_2d,
            })
        }
        "BatchNormalization" => {
            if ctx.n_inputs != 5 {
                return Err(format!(
                    "expected 5 inputs (X, scale, B, mean, var), got {}",
                    ctx.n_inputs
                ));
            }
            // Training mode (opset 14+ attribute, or extra outputs before) updates running
            // statistics: not an inference operation.
            if ctx.attrs.int_or("training_mode", 0)? != 0 || ctx.n_outputs != 1 {
                return Err(format!(
                    "only the inference form is supported (training_mode = 0, 1 output; \
                     got {} outputs)",
                    ctx.n_outputs
                ));
            }
            if ctx.attrs.int_or("spatial", 1)? != 1 {
                return Err("spatial = 0 (opset < 9) is not supported".into());
            }
            Box::new(BatchNorm {
                epsilon: ctx.attrs.float_or("epsilon", 1e-5)?,
            })
        }
        _ => return Ok(None),
    };
    Ok(Some(k))
}

/// `Softmax` / `LogSoftmax`.
#[derive(Debug)]
struct Softmax {
    log: bool,
    axis: i64,
    /// Opset < 13: normalise over everything from `axis` on (the input seen as 2-D).
    coerce_2d: bool,
}

/// Normalises `data` in place over groups of `dim` elements `inner` apart: with
/// `outer × dim × inner` layout, group `(o, i)` is `data[o*dim*inner + k*inner + i]`, k < dim.
/// Max-shifted like onnxruntime's MLAS kernel: softmax multiplies by `1 / Σ exp`, log-softmax
/// subtracts `ln Σ exp`.
fn softmax_groups<T: Real>(data: &mut [T], dim: usize, inner: usize, log: bool) {
    if dim == 0 || inner == 0 {
        return;
    }
    let mut buf: Vec<T> = vec![T::ZERO; dim];
    for block in data.chunks_exact_mut(dim * inner) {
        for i in 0..inner {
            for (k, b) in buf.iter_mut().enumerate() {
                *b = block[k * inner + i];
            }
            let max = buf
                .iter()
                .fold(-T::INFINITY, |m, &x| if x > m { x } else { m });
            if log {
                let sum = buf.iter().fold(T::ZERO, |s, &x| s + (x - max).exp());
                let shift = max + sum.ln();
                for (k, &x) in buf.iter().enumerate() {
                    block[k * inner + i] = x - shift;
                }
            } else {
                let mut sum = T::ZERO;
                for b in buf.iter_mut() {
                    *b = (*b - max).exp();
                    sum = sum + *b;
                }
                let scale = T::ONE / sum;
                for (k, &e) in buf.iter().enumerate() {
                    block[k * inner + i] = e * scale;
                }
            }
        }
    }
}

impl Kernel for Softmax {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let t = ins.get(0)?;
        let shape = t.shape();
        let (dim, inner) = if self.coerce_2d {
            let axis = resolve_axis(self.axis, shape.len(), true)?;
            (shape[axis..].iter().product(), 1)
        } else {
            let axis = resolve_axis(self.axis, shape.len(), false)?;
            if shape.is_empty() {
                (1, 1)
            } else {
                (shape[axis], shape[axis + 1..].iter().product::<usize>())
            }
        };
        let data = match t.data() {
            TensorData::F32(v) => {
                let mut v = v.clone();
                softmax_groups(&mut v, dim, inner, self.log);
                TensorData::F32(v)
            }
            TensorData::F64(v) => {
                let mut v = v.clone();
                softmax_groups(&mut v, dim, inner, self.log);
                TensorData::F64(v)
            }
            other => {
                return Err(format!(
                    "expected a float or double tensor, got {}",
                    other.element_type()
                ));
            }
        };
        out.push(Value::Tensor(Tensor::raw(shape.to_vec(), data)));
        Ok(())
    }
}

/// `BatchNormalization` (inference): channels on dimension 1.
#[derive(Debug)]
struct BatchNorm {
    epsilon: f32,
}

/// `y = x * s[c] + b[c]` with `s = scale / sqrt(var + eps)` and `b = B - mean * s`, channel
/// `c` the dimension-1 index of `x` (`[N, C, ...]`).
fn batch_norm<T: Real>(x: &[T], shape: &[usize], params: [&[T]; 4], eps: T) -> KResult<Vec<T>> {
    let [scale, bias, mean, var] = params;
    let c = match shape {
        [_, c, ..] => *c,
        s => return Err(format!("X must have at least 2 dimensions, got {s:?}")),
    };
    for (name, p) in [("scale", scale), ("B", bias), ("mean", mean), ("var", var)] {
        if p.len() != c {
            return Err(format!("{name} has {} entries for {c} channels", p.len()));
        }
    }
    let s: Vec<T> = (0..c)
        .map(|k| scale[k] * (T::ONE / (var[k] + eps).sqrt()))
        .collect();
    let b: Vec<T> = (0..c).map(|k| bias[k] - mean[k] * s[k]).collect();
    let inner: usize = shape[2..].iter().product();
    let mut y = Vec::with_capacity(x.len());
    if inner == 0 {
        return Ok(y);
    }
    for (i, chunk) in x.chunks_exact(inner).enumerate() {
        let k = i % c;
        y.extend(chunk.iter().map(|&v| v * s[k] + b[k]));
    }
    Ok(y)
}

impl Kernel for BatchNorm {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let x = ins.get(0)?;
        let p = [ins.get(1)?, ins.get(2)?, ins.get(3)?, ins.get(4)?];
        let data = match x.data() {
            TensorData::F32(v) => {
                let mut params: [&[f32]; 4] = [&[]; 4];
                for (slot, t) in params.iter_mut().zip(p) {
                    *slot = t.as_f32().ok_or("parameters must have X's type (float)")?;
                }
                TensorData::F32(batch_norm(v, x.shape(), params, self.epsilon)?)
            }
            TensorData::F64(v) => {
                let mut params: [&[f64]; 4] = [&[]; 4];
                for (slot, t) in params.iter_mut().zip(p) {
                    *slot = match t.data() {
                        TensorData::F64(d) => d,
                        _ => return Err("parameters must have X's type (double)".into()),
                    };
                }
                let eps = f64::from(self.epsilon);
                TensorData::F64(batch_norm(v, x.shape(), params, eps)?)
            }
            other => {
                return Err(format!(
                    "expected a float or double tensor, got {}",
                    other.element_type()
                ));
            }
        };
        out.push(Value::Tensor(Tensor::raw(x.shape().to_vec(), data)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_along_a_middle_axis() {
        // [1, 2, 2]: softmax over axis 1 pairs (0, 2) and (1, 3).
        let mut v = [0.0f32, 1.0, 0.0, 3.0];
        softmax_groups(&mut v, 2, 2, false);
        assert!((v[0] - 0.5).abs() < 1e-7 && (v[2] - 0.5).abs() < 1e-7);
        assert!((v[1] + v[3] - 1.0).abs() < 1e-7 && v[3] > v[1]);
        let mut l = [1.0f64, 2.0, 3.0];
        softmax_groups(&mut l, 3, 1, true);
        let sum: f64 = l.iter().map(|x| x.exp()).sum();
        assert!((sum - 1.0).abs() < 1e-12);
    }

    #[test]
    fn batch_norm_per_channel() {
        // [2, 2] input: channel 0 becomes 2x (scale 2, bias 1, mean 0.5, var 1), channel 1
        // 1.5x - 2.5 (scale 3, bias -1, mean 1, var 4); a channel taken from the wrong index
        // changes the result.
        let y = batch_norm(
            &[1.0f64, 3.0, 2.0, 5.0],
            &[2, 2],
            [&[2.0, 3.0], &[1.0, -1.0], &[0.5, 1.0], &[1.0, 4.0]],
            0.0,
        )
        .expect("test data");
        assert_eq!(y, vec![2.0, 2.0, 4.0, 5.0]);
    }
}
