//! Operators of `ai.onnx` that move elements to new positions, on every element type:
//! Concat, Transpose and Slice (starts/ends/axes as attributes before opset 10, as inputs —
//! with optional `steps`, negative ones included — from 10 on). Transpose and Slice are one
//! strided walk over the input ([`strided_copy`]).

use super::num::{ints_of, resolve_axes, strided_copy, strides};
use super::shape::resolve_axis;
use super::{Inputs, KResult, Kernel, NodeCtx};
use crate::tensor::{Tensor, TensorData};
use crate::value::Value;

/// The operators [`build`] implements.
pub(crate) const OPS: &[&str] = &["Concat", "Transpose", "Slice"];

/// Applies `$body` (an expression over the `Vec`/slice `$v`, generic in its element type) to
/// whichever variant `$data` is, rewrapping the result in the same variant.
macro_rules! map_any {
    ($data:expr, |$v:ident| $body:expr) => {
        match $data {
            TensorData::F32($v) => TensorData::F32($body),
            TensorData::F64($v) => TensorData::F64($body),
            TensorData::I64($v) => TensorData::I64($body),
            TensorData::Bool($v) => TensorData::Bool($body),
            TensorData::String($v) => TensorData::String($body),
        }
    };
}

/// Builds the kernel for `op`, or `None` when `op` is not one of this module's.
pub(crate) fn build(op: &str, ctx: &NodeCtx<'_>) -> KResult<Option<Box<dyn Kernel>>> {
    if ctx.n_outputs != 1 {
        return Err(format!("expected 1 output, got {}", ctx.n_outputs));
    }
    let k: Box<dyn Kernel> = match op {
        "Concat" => {
            if ctx.n_inputs == 0 {
                return Err("Concat needs at least one input".into());
            }
            Box::new(Concat {
                axis: ctx.attrs.int("axis")?.ok_or("missing attribute 'axis'")?,
            })
        }
        "Transpose" => {
            let perm = ctx.attrs.ints("perm")?;
            Box::new(Transpose {
                perm: (!perm.is_empty()).then(|| perm.to_vec()),
            })
        }
        "Slice" => {
            if ctx.opset < 10 {
                if ctx.n_inputs != 1 {
                    return Err(format!(
                        "expected 1 input at opset {} (starts/ends are attributes), got {}",
                        ctx.opset, ctx.n_inputs
                    ));
                }
                let axes = ctx.attrs.ints("axes")?;
                Box::new(Slice {
                    attrs: Some(SliceSpec {
                        starts: ctx.attrs.ints("starts")?.to_vec(),
                        ends: ctx.attrs.ints("ends")?.to_vec(),
                        axes: (!axes.is_empty()).then(|| axes.to_vec()),
                        steps: None,
                    }),
                })
            } else {
                if !(3..=5).contains(&ctx.n_inputs) {
                    return Err(format!("expected 3 to 5 inputs, got {}", ctx.n_inputs));
                }
                Box::new(Slice { attrs: None })
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(k))
}

/// `Concat(axis)`.
#[derive(Debug)]
struct Concat {
    axis: i64,
}

/// Appends, for every outer index, each part's `chunk[i]` elements in turn.
fn concat_parts<T: Clone>(parts: &[&[T]], chunks: &[usize], outer: usize) -> Vec<T> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(total);
    for o in 0..outer {
        for (p, &c) in parts.iter().zip(chunks) {
            out.extend_from_slice(&p[o * c..(o + 1) * c]);
        }
    }
    out
}

/// The parts as slices of variant `$variant`, or an error naming the first mismatch.
macro_rules! same_variant {
    ($ts:expr, $variant:ident) => {
        $ts.iter()
            .map(|t| match t.data() {
                TensorData::$variant(v) => Ok(v.as_slice()),
                other => Err(format!(
                    "inputs mix {} and {}",
                    $ts[0].element_type(),
                    other.element_type()
                )),
            })
            .collect::<KResult<Vec<_>>>()?
    };
}

impl Kernel for Concat {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let ts: Vec<&Tensor> = (0..ins.len()).map(|i| ins.get(i)).collect::<KResult<_>>()?;
        let first = ts[0].shape();
        let axis = resolve_axis(self.axis, first.len(), false)?;
        if first.is_empty() {
            return Err("cannot concatenate scalars".into());
        }
        let mut out_shape = first.to_vec();
        out_shape[axis] = 0;
        for t in &ts {
            let s = t.shape();
            let same_rest =
                s.len() == first.len() && (0..s.len()).all(|d| d == axis || s[d] == first[d]);
            if !same_rest {
                return Err(format!(
                    "shapes {first:?} and {s:?} differ outside axis {axis}"
                ));
            }
            out_shape[axis] += s[axis];
        }
        let outer: usize = first[..axis].iter().product();
        let inner: usize = first[axis + 1..].iter().product();
        let chunks: Vec<usize> = ts.iter().map(|t| t.shape()[axis] * inner).collect();
        let data = match ts[0].data() {
            TensorData::F32(_) => {
                TensorData::F32(concat_parts(&same_variant!(ts, F32), &chunks, outer))
            }
            TensorData::F64(_) => {
                TensorData::F64(concat_parts(&same_variant!(ts, F64), &chunks, outer))
            }
            TensorData::I64(_) => {
                TensorData::I64(concat_parts(&same_variant!(ts, I64), &chunks, outer))
            }
            TensorData::Bool(_) => {
                TensorData::Bool(concat_parts(&same_variant!(ts, Bool), &chunks, outer))
            }
            TensorData::String(_) => {
                TensorData::String(concat_parts(&same_variant!(ts, String), &chunks, outer))
            }
        };
        out.push(Value::Tensor(Tensor::raw(out_shape, data)));
        Ok(())
    }
}

/// `Transpose(perm)`; no `perm` reverses the dimensions.
#[derive(Debug)]
struct Transpose {
    perm: Option<Vec<i64>>,
}

impl Kernel for Transpose {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let t = ins.get(0)?;
        let shape = t.shape();
        let r = shape.len();
        let perm = match &self.perm {
            Some(p) => {
                if p.len() != r {
                    return Err(format!("perm {p:?} does not fit rank {r}"));
                }
                resolve_axes(p, r)?
            }
            None => (0..r).rev().collect(),
        };
        let st = strides(shape);
        let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        let steps: Vec<isize> = perm.iter().map(|&p| st[p] as isize).collect();
        let data = map_any!(t.data(), |v| strided_copy(v, 0, &out_shape, &steps));
        out.push(Value::Tensor(Tensor::raw(out_shape, data)));
        Ok(())
    }
}

/// Slice parameters (attributes before opset 10).
#[derive(Debug)]
struct SliceSpec {
    starts: Vec<i64>,
    ends: Vec<i64>,
    axes: Option<Vec<i64>>,
    steps: Option<Vec<i64>>,
}

/// `Slice`: parameters from attributes (opset < 10) or inputs 1..=4.
#[derive(Debug)]
struct Slice {
    attrs: Option<SliceSpec>,
}

/// First index and element count along a dimension of size `dim` for `start:end:step`,
/// with the spec's clamping (negative positions count from the end; ends beyond the
/// dimension, e.g. `i64::MAX`, are clamped).
pub(crate) fn slice_range(dim: usize, start: i64, end: i64, step: i64) -> KResult<(usize, usize)> {
    if step == 0 {
        return Err("slice step cannot be 0".into());
    }
    // Nothing to take from an empty axis (with a negative step the clamps below would
    // otherwise leave one element of it).
    if dim == 0 {
        return Ok((0, 0));
    }
    let d = dim as i128;
    let norm = |v: i64| {
        let v = i128::from(v);
        if v < 0 { v + d } else { v }
    };
    let (mut s, mut e) = (norm(start), norm(end));
    let step = i128::from(step);
    if step > 0 {
        s = s.clamp(0, d);
        e = e.clamp(0, d);
    } else {
        s = s.clamp(0, (d - 1).max(0));
        e = e.clamp(-1, d - 1);
    }
    let count = if step > 0 {
        if e > s { (e - s + step - 1) / step } else { 0 }
    } else if s > e {
        (s - e + (-step) - 1) / (-step)
    } else {
        0
    };
    Ok((s as usize, count as usize))
}

impl Kernel for Slice {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let t = ins.get(0)?;
        let shape = t.shape();
        let owned;
        let spec = match &self.attrs {
            Some(s) => s,
            None => {
                let opt = |i: usize, what: &str| -> KResult<Option<Vec<i64>>> {
                    ins.opt(i)?.map(|t| ints_of(t, what)).transpose()
                };
                owned = SliceSpec {
                    starts: ints_of(ins.get(1)?, "starts")?,
                    ends: ints_of(ins.get(2)?, "ends")?,
                    axes: opt(3, "axes")?,
                    steps: opt(4, "steps")?,
                };
                &owned
            }
        };
        let n = spec.starts.len();
        let axes = match &spec.axes {
            Some(a) => resolve_axes(a, shape.len())?,
            None => (0..n).collect(),
        };
        let steps = spec.steps.clone().unwrap_or_else(|| vec![1; n]);
        if spec.ends.len() != n || axes.len() != n || steps.len() != n {
            return Err(format!(
                "starts, ends, axes and steps differ in length ({n}, {}, {}, {})",
                spec.ends.len(),
                axes.len(),
                steps.len()
            ));
        }
        if let Some(&bad) = axes.iter().find(|&&a| a >= shape.len()) {
            return Err(format!("axis {bad} out of range for rank {}", shape.len()));
        }
        let st = strides(shape);
        let mut out_shape = shape.to_vec();
        let mut step_of: Vec<isize> = st.iter().map(|&s| s as isize).collect();
        let mut base = 0usize;
        for (k, &a) in axes.iter().enumerate() {
            let (first, count) = slice_range(shape[a], spec.starts[k], spec.ends[k], steps[k])?;
            out_shape[a] = count;
            step_of[a] = st[a] as isize * steps[k] as isize;
            if count > 0 {
                base += first * st[a];
            }
        }
        let data = map_any!(t.data(), |v| strided_copy(v, base, &out_shape, &step_of));
        out.push(Value::Tensor(Tensor::raw(out_shape, data)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_ranges_follow_the_spec() {
        // An empty axis yields nothing, whatever the step (a negative one panicked).
        assert_eq!(slice_range(0, -1, i64::MIN, -1).expect("test data"), (0, 0));
        assert_eq!(slice_range(0, 0, 5, 1).expect("test data"), (0, 0));
        assert_eq!(slice_range(10, 2, 5, 1).expect("test data"), (2, 3));
        assert_eq!(slice_range(10, -3, i64::MAX, 1).expect("test data"), (7, 3));
        assert_eq!(slice_range(10, 0, 10, 3).expect("test data"), (0, 4));
        // Reverse the whole axis.
        assert_eq!(slice_range(4, -1, i64::MIN, -1).expect("test data"), (3, 4));
        assert_eq!(slice_range(4, 20, 1, -2).expect("test data"), (3, 1));
        assert_eq!(slice_range(4, 3, 3, 1).expect("test data"), (3, 0));
        assert!(slice_range(4, 0, 1, 0).is_err());
    }

    #[test]
    fn concat_middle_axis() {
        // [2, 1] ++ [2, 2] along axis 1.
        let a = [1, 2];
        let b = [10, 11, 20, 21];
        assert_eq!(
            concat_parts(&[&a[..], &b[..]], &[1, 2], 2),
            vec![1, 10, 11, 2, 20, 21]
        );
    }
}
