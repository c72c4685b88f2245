//! Row preprocessing operators of `ai.onnx.ml`: Scaler (`(x - offset) * scale` per column) and
//! Normalizer (MAX, L1, L2 per row, as onnxruntime computes them), both outputting `f32`, and
//! ArrayFeatureExtractor (columns picked by index along the last axis, any element type; what
//! skl2onnx uses to take the positive-class column of a binary LinearSVC).

use crate::ops::num::ints_of;
use crate::ops::{Inputs, KResult, Kernel, NodeCtx, as_f32_cow};
use crate::tensor::{Tensor, TensorData};
use crate::value::Value;

/// A compiled Scaler.
#[derive(Debug)]
pub(crate) struct Scaler {
    offset: Vec<f32>,
    scale: Vec<f32>,
}

/// Builds a Scaler.
pub(crate) fn build_scaler(ctx: &NodeCtx<'_>) -> KResult<Scaler> {
    let offset = ctx.attrs.floats("offset")?.to_vec();
    let scale = ctx.attrs.floats("scale")?.to_vec();
    Ok(Scaler {
        offset: if offset.is_empty() { vec![0.0] } else { offset },
        scale: if scale.is_empty() { vec![1.0] } else { scale },
    })
}

impl Kernel for Scaler {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let t = ins.get(0)?;
        let x = as_f32_cow(t)?;
        let c = t.shape().last().copied().unwrap_or(1).max(1);
        for (name, v) in [("offset", &self.offset), ("scale", &self.scale)] {
            if v.len() != 1 && v.len() != c {
                return Err(format!("{name} has {} entries for {c} columns", v.len()));
            }
        }
        let at = |v: &[f32], j: usize| if v.len() == 1 { v[0] } else { v[j] };
        let data: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let j = i % c;
                (v - at(&self.offset, j)) * at(&self.scale, j)
            })
            .collect();
        out.push(Value::Tensor(Tensor::raw(
            t.shape().to_vec(),
            TensorData::F32(data),
        )));
        Ok(())
    }
}

/// `norm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Norm {
    Max,
    L1,
    L2,
}

/// A compiled Normalizer.
#[derive(Debug)]
pub(crate) struct Normalizer(pub(crate) Norm);

/// Builds a Normalizer.
pub(crate) fn build_normalizer(ctx: &NodeCtx<'_>) -> KResult<Normalizer> {
    Ok(Normalizer(
        match ctx.attrs.string_or("norm", "MAX")?.as_str() {
            "MAX" => Norm::Max,
            "L1" => Norm::L1,
            "L2" => Norm::L2,
            other => return Err(format!("unknown norm '{other}'")),
        },
    ))
}

/// Normalises one row in place.
pub(crate) fn normalize_row(norm: Norm, row: &mut [f32]) {
    match norm {
        Norm::Max => {
            let max = row.iter().fold(f32::MIN, |m, &x| m.max(x));
            if max != 0.0 {
                row.iter_mut().for_each(|x| *x /= max);
            }
        }
        Norm::L1 => {
            let sum: f32 = row.iter().map(|x| x.abs()).sum();
            if sum != 0.0 {
                row.iter_mut().for_each(|x| *x /= sum);
            }
        }
        Norm::L2 => {
            let sum: f32 = row.iter().map(|x| x * x).sum();
            if sum != 0.0 {
                row.iter_mut().for_each(|x| {
                    let v = (*x * *x / sum).sqrt();
                    *x = if *x < 0.0 { -v } else { v };
                });
            }
        }
    }
}

impl Kernel for Normalizer {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let t = ins.get(0)?;
        let c = match t.shape() {
            [c] | [_, c] => (*c).max(1),
            s => return Err(format!("Normalizer input must be 1-D or 2-D, got {s:?}")),
        };
        let mut data = as_f32_cow(t)?.into_owned();
        data.chunks_exact_mut(c)
            .for_each(|row| normalize_row(self.0, row));
        out.push(Value::Tensor(Tensor::raw(
            t.shape().to_vec(),
            TensorData::F32(data),
        )));
        Ok(())
    }
}

/// `ArrayFeatureExtractor(X, Y)`: `X[..., Y]`.
#[derive(Debug)]
pub(crate) struct ArrayFeatureExtractor;

/// Picks columns `idx` of every `width`-wide row of `src`.
fn pick_columns<T: Clone>(src: &[T], width: usize, idx: &[usize]) -> Vec<T> {
    let mut out = Vec::with_capacity(src.len() / width.max(1) * idx.len());
    for row in src.chunks_exact(width.max(1)) {
        out.extend(idx.iter().map(|&i| row[i].clone()));
    }
    out
}

impl Kernel for ArrayFeatureExtractor {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let (x, y) = (ins.get(0)?, ins.get(1)?);
        let shape = x.shape();
        let width = *shape.last().ok_or("X must have at least one dimension")?;
        let idx = ints_of(y, "indices")?
            .into_iter()
            .map(|i| {
                usize::try_from(i)
                    .ok()
                    .filter(|&i| i < width)
                    .ok_or_else(|| format!("index {i} out of range for last dimension {width}"))
            })
            .collect::<KResult<Vec<_>>>()?;
        // onnxruntime returns [1, k] for a 1-D X.
        let out_shape = match shape {
            [_] => vec![1, idx.len()],
            _ => [&shape[..shape.len() - 1], &[idx.len()][..]].concat(),
        };
        let data = match x.data() {
            TensorData::F32(v) => TensorData::F32(pick_columns(v, width, &idx)),
            TensorData::F64(v) => TensorData::F64(pick_columns(v, width, &idx)),
            TensorData::I64(v) => TensorData::I64(pick_columns(v, width, &idx)),
            TensorData::Bool(v) => TensorData::Bool(pick_columns(v, width, &idx)),
            TensorData::String(v) => TensorData::String(pick_columns(v, width, &idx)),
        };
        out.push(Value::Tensor(Tensor::raw(out_shape, data)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_picked_per_row() {
        assert_eq!(
            pick_columns(&[1, 2, 3, 4, 5, 6], 3, &[2, 0]),
            vec![3, 1, 6, 4]
        );
    }

    #[test]
    fn norms() {
        let mut r = [1.0, -3.0, 2.0];
        normalize_row(Norm::Max, &mut r);
        assert_eq!(r, [0.5, -1.5, 1.0]);
        let mut r = [1.0, -3.0, 4.0];
        normalize_row(Norm::L1, &mut r);
        assert_eq!(r, [0.125, -0.375, 0.5]);
        let mut r = [3.0, -4.0];
        normalize_row(Norm::L2, &mut r);
        assert!((r[0] - 0.6).abs() < 1e-7 && (r[1] + 0.8).abs() < 1e-7);
        let mut z = [0.0, 0.0];
        normalize_row(Norm::L2, &mut z);
        assert_eq!(z, [0.0, 0.0]);
    }
}
