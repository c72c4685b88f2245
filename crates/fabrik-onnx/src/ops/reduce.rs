//! Reductions of `ai.onnx` over a set of axes: ReduceSum, ReduceMean, ReduceMax, ReduceMin,
//! ReduceProd, ReduceL1, ReduceL2, ReduceSumSquare, ReduceLogSum, ReduceLogSumExp on `f32` and
//! `f64` (Sum, Max, Min, Prod also on `int64`), with `keepdims` and `noop_with_empty_axes`.
//! `axes` is an attribute before opset 13 (ReduceSum) or 18 (the others) and an optional
//! input from then on; absent or empty axes reduce everything unless `noop_with_empty_axes`,
//! which then reduces nothing (but still squares for SumSquare, etc.).
//! Also TopK (largest or smallest `k` along an axis, ties to the lower index).

use super::num::{Real, ints_of, resolve_axes, strides};
use super::shape::resolve_axis;
use super::{Inputs, KResult, Kernel, NodeCtx};
use crate::tensor::{Tensor, TensorData};
use crate::value::Value;

/// The operators [`build`] implements.
pub(crate) const OPS: &[&str] = &[
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceSumSquare",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "TopK",
];

/// Builds the kernel for `op`, or `None` when `op` is not one of this module's.
pub(crate) fn build(op: &str, ctx: &NodeCtx<'_>) -> KResult<Option<Box<dyn Kernel>>> {
    let red = match op {
        "ReduceSum" => Red::Sum,
        "ReduceMean" => Red::Mean,
        "ReduceMax" => Red::Max,
        "ReduceMin" => Red::Min,
        "ReduceProd" => Red::Prod,
        "ReduceL1" => Red::L1,
        "ReduceL2" => Red::L2,
        "ReduceSumSquare" => Red::SumSquare,
        "ReduceLogSum" => Red::LogSum,
        "ReduceLogSumExp" => Red::LogSumExp,
        "TopK" => return build_topk(ctx).map(|k| Some(Box::new(k) as Box<dyn Kernel>)),
        _ => return Ok(None),
    };
    if ctx.n_outputs != 1 {
        return Err(format!("expected 1 output, got {}", ctx.n_outputs));
    }
    let axes_as_input = ctx.opset >= if red == Red::Sum { 13 } else { 18 };
    let axes = if axes_as_input {
        if !(1..=2).contains(&ctx.n_inputs) {
            return Err(format!("expected 1 or 2 inputs, got {}", ctx.n_inputs));
        }
        Axes::Input
    } else {
        if ctx.n_inputs != 1 {
            return Err(format!(
                "expected 1 input at opset {} (axes is an attribute), got {}",
                ctx.opset, ctx.n_inputs
            ));
        }
        Axes::Attr(ctx.attrs.ints("axes")?.to_vec())
    };
    Ok(Some(Box::new(Reduce {
        red,
        axes,
        keepdims: ctx.attrs.int_or("keepdims", 1)? != 0,
        // The attribute exists only where axes is an input; before, empty axes reduce all.
        noop_empty: axes_as_input && ctx.attrs.int_or("noop_with_empty_axes", 0)? != 0,
    })))
}

/// The reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Red {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1,
    L2,
    SumSquare,
    LogSum,
    LogSumExp,
}

/// Where the axes come from.
#[derive(Debug)]
enum Axes {
    /// The `axes` attribute (empty when absent).
    Attr(Vec<i64>),
    /// Optional input 1.
    Input,
}

/// A compiled reduction.
#[derive(Debug)]
struct Reduce {
    red: Red,
    axes: Axes,
    keepdims: bool,
    noop_empty: bool,
}

/// For each input element in row-major order, the index of the output element it reduces
/// into; plus the output shape (with kept 1s) and the group size.
fn reduce_map(shape: &[usize], reduced: &[bool]) -> (Vec<usize>, usize) {
    let kept: Vec<usize> = shape
        .iter()
        .zip(reduced)
        .map(|(&d, &r)| if r { 1 } else { d })
        .collect();
    let ks = strides(&kept);
    // Output stride per input dimension: 0 on reduced dimensions.
    let os: Vec<usize> = ks
        .iter()
        .zip(reduced)
        .map(|(&s, &r)| if r { 0 } else { s })
        .collect();
    let total: usize = shape.iter().product();
    let mut map = Vec::with_capacity(total);
    if total == 0 {
        return (map, 0);
    }
    let mut idx = vec![0usize; shape.len()];
    let mut o = 0usize;
    for _ in 0..total {
        map.push(o);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            o += os[d];
            if idx[d] < shape[d] {
                break;
            }
            o -= os[d] * shape[d];
            idx[d] = 0;
        }
    }
    let group = shape
        .iter()
        .zip(reduced)
        .filter(|(_, r)| **r)
        .map(|(d, _)| *d)
        .product();
    (map, group)
}

fn reduce_real<T: Real>(red: Red, x: &[T], map: &[usize], n_out: usize, group: usize) -> Vec<T> {
    let init = match red {
        Red::Max => -T::INFINITY,
        Red::Min => T::INFINITY,
        Red::Prod => T::ONE,
        _ => T::ZERO,
    };
    let mut acc = vec![init; n_out];
    if red == Red::LogSumExp {
        // Shift by the group maximum so exp cannot overflow.
        let mut max = vec![-T::INFINITY; n_out];
        for (&v, &o) in x.iter().zip(map) {
            if v > max[o] {
                max[o] = v;
            }
        }
        for (&v, &o) in x.iter().zip(map) {
            acc[o] = acc[o] + (v - max[o]).exp();
        }
        return acc.iter().zip(&max).map(|(&s, &m)| s.ln() + m).collect();
    }
    for (&v, &o) in x.iter().zip(map) {
        let a = &mut acc[o];
        *a = match red {
            Red::Sum | Red::Mean | Red::LogSum => *a + v,
            Red::Max => {
                if v > *a || v.is_nan() {
                    v
                } else {
                    *a
                }
            }
            Red::Min => {
                if v < *a || v.is_nan() {
                    v
                } else {
                    *a
                }
            }
            Red::Prod => *a * v,
            Red::L1 => *a + v.abs(),
            Red::L2 | Red::SumSquare => *a + v * v,
            Red::LogSumExp => *a,
        };
    }
    match red {
        Red::Mean => {
            let n = T::from_f64(group as f64);
            acc.iter_mut().for_each(|a| *a = *a / n);
        }
        Red::L2 => acc.iter_mut().for_each(|a| *a = a.sqrt()),
        Red::LogSum => acc.iter_mut().for_each(|a| *a = a.ln()),
        _ => {}
    }
    acc
}

fn reduce_i64(red: Red, x: &[i64], map: &[usize], n_out: usize) -> KResult<Vec<i64>> {
    let (init, f): (i64, fn(i64, i64) -> i64) = match red {
        Red::Sum => (0, i64::wrapping_add),
        Red::Max => (i64::MIN, i64::max),
        Red::Min => (i64::MAX, i64::min),
        Red::Prod => (1, i64::wrapping_mul),
        other => return Err(format!("{other:?} is not supported on int64")),
    };
    let mut acc = vec![init; n_out];
    for (&v, &o) in x.iter().zip(map) {
        acc[o] = f(acc[o], v);
    }
    Ok(acc)
}

impl Kernel for Reduce {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let t = ins.get(0)?;
        let shape = t.shape();
        let axes = match &self.axes {
            Axes::Attr(a) => a.clone(),
            Axes::Input => match ins.opt(1)? {
                Some(a) => ints_of(a, "axes")?,
                None => Vec::new(),
            },
        };
        // noop_with_empty_axes reduces over no axis: every element is its own group, so
        // Sum/Max/Mean... return the input and SumSquare, L1, L2, LogSum still apply their
        // element-wise part (x², |x|, |x|, ln x), as onnxruntime does.
        let noop = axes.is_empty() && self.noop_empty;
        let mut reduced = vec![axes.is_empty() && !noop; shape.len()];
        for a in resolve_axes(&axes, shape.len())? {
            reduced[a] = true;
        }
        let (map, group) = reduce_map(shape, &reduced);
        let out_shape: Vec<usize> = shape
            .iter()
            .zip(&reduced)
            .filter_map(|(&d, &r)| match (r, self.keepdims) {
                (false, _) => Some(d),
                (true, true) => Some(1),
                (true, false) => None,
            })
            .collect();
        let n_out: usize = out_shape.iter().product();
        if shape.iter().product::<usize>() == 0 && n_out != 0 {
            return Err(format!("cannot reduce the empty tensor of shape {shape:?}"));
        }
        let data = match t.data() {
            TensorData::F32(v) => TensorData::F32(reduce_real(self.red, v, &map, n_out, group)),
            TensorData::F64(v) => TensorData::F64(reduce_real(self.red, v, &map, n_out, group)),
            TensorData::I64(v) => TensorData::I64(reduce_i64(self.red, v, &map, n_out)?),
            other => return Err(format!("unsupported element type {}", other.element_type())),
        };
        out.push(Value::Tensor(Tensor::raw(out_shape, data)));
        Ok(())
    }
}

/// `TopK`: the `k` largest (or smallest) values along `axis` and their indices.
#[derive(Debug)]
struct TopK {
    axis: i64,
    largest: bool,
    /// `k` attribute (opset < 10); from opset 10 on, `k` is input 1.
    k_attr: Option<i64>,
}

fn build_topk(ctx: &NodeCtx<'_>) -> KResult<TopK> {
    if ctx.n_outputs != 2 {
        return Err(format!(
            "expected 2 outputs (Values, Indices), got {}",
            ctx.n_outputs
        ));
    }
    let k_attr = if ctx.opset < 10 {
        Some(ctx.attrs.int("k")?.ok_or("missing attribute 'k'")?)
    } else {
        if ctx.n_inputs != 2 {
            return Err(format!("expected 2 inputs (X, K), got {}", ctx.n_inputs));
        }
        None
    };
    // `sorted = 0` lets an implementation return any order; sorted output is one of them.
    Ok(TopK {
        axis: ctx.attrs.int_or("axis", -1)?,
        largest: ctx.attrs.int_or("largest", 1)? != 0,
        k_attr,
    })
}

/// Indices `0..dim` of one lane ordered best first: by value (descending when `largest`),
/// ties and NaN-free equal values to the lower index; NaN sorts as the largest value.
fn rank_lane<T: PartialOrd + Copy>(lane: &[T], largest: bool, k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..lane.len()).collect();
    let cmp = |a: &usize, b: &usize| {
        let (x, y) = (lane[*a], lane[*b]);
        // NaN is unordered: treat it as greater than everything (numpy / onnxruntime order).
        #[allow(clippy::eq_op)]
        let ord = match (x != x, y != y) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            (false, false) => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
        };
        let ord = if largest { ord.reverse() } else { ord };
        ord.then(a.cmp(b))
    };
    idx.sort_by(cmp);
    idx.truncate(k);
    idx
}

fn topk<T: PartialOrd + Copy>(
    x: &[T],
    outer: usize,
    dim: usize,
    inner: usize,
    k: usize,
    largest: bool,
) -> (Vec<T>, Vec<i64>) {
    let mut values = vec![None; outer * k * inner];
    let mut indices = vec![0i64; outer * k * inner];
    let mut lane = Vec::with_capacity(dim);
    for o in 0..outer {
        for i in 0..inner {
            lane.clear();
            lane.extend((0..dim).map(|d| x[(o * dim + d) * inner + i]));
            for (j, &d) in rank_lane(&lane, largest, k).iter().enumerate() {
                let at = (o * k + j) * inner + i;
                values[at] = Some(lane[d]);
                indices[at] = d as i64;
            }
        }
    }
    (values.into_iter().flatten().collect(), indices)
}

impl Kernel for TopK {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let t = ins.get(0)?;
        let shape = t.shape();
        let k = match self.k_attr {
            Some(k) => k,
            None => match ints_of(ins.get(1)?, "K")?.as_slice() {
                [k] => *k,
                other => return Err(format!("K must hold one value, got {other:?}")),
            },
        };
        let axis = resolve_axis(self.axis, shape.len(), false)?;
        let dim = *shape.get(axis).ok_or("TopK needs at least one dimension")?;
        let k = usize::try_from(k)
            .ok()
            .filter(|&k| k <= dim)
            .ok_or_else(|| format!("K = {k} is outside 0..={dim}"))?;
        let outer: usize = shape[..axis].iter().product();
        let inner: usize = shape[axis + 1..].iter().product();
        let mut out_shape = shape.to_vec();
        out_shape[axis] = k;
        let (values, indices) = match t.data() {
            TensorData::F32(v) => {
                let (val, idx) = topk(v, outer, dim, inner, k, self.largest);
                (TensorData::F32(val), idx)
            }
            TensorData::F64(v) => {
                let (val, idx) = topk(v, outer, dim, inner, k, self.largest);
                (TensorData::F64(val), idx)
            }
            TensorData::I64(v) => {
                let (val, idx) = topk(v, outer, dim, inner, k, self.largest);
                (TensorData::I64(val), idx)
            }
            other => return Err(format!("unsupported element type {}", other.element_type())),
        };
        out.push(Value::Tensor(Tensor::raw(out_shape.clone(), values)));
        out.push(Value::Tensor(Tensor::raw(
            out_shape,
            TensorData::I64(indices),
        )));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce_middle_axis() {
        // [2, 3, 2] reduced over axis 1.
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let (map, group) = reduce_map(&[2, 3, 2], &[false, true, false]);
        assert_eq!(group, 3);
        let s = reduce_real(Red::Sum, &x, &map, 4, group);
        assert_eq!(s, vec![6.0, 9.0, 24.0, 27.0]);
        let m = reduce_real(Red::Max, &x, &map, 4, group);
        assert_eq!(m, vec![4.0, 5.0, 10.0, 11.0]);
        let l = reduce_real(Red::LogSumExp, &[0.0f64, 0.0], &[0, 0], 1, 2);
        assert!((l[0] - std::f64::consts::LN_2).abs() < 1e-12);
    }

    #[test]
    fn topk_ties_go_to_the_lower_index() {
        let (v, i) = topk(&[1.0f32, 3.0, 3.0, 2.0], 1, 4, 1, 2, true);
        assert_eq!((v, i), (vec![3.0, 3.0], vec![1, 2]));
        let (v, i) = topk(&[1i64, 3, 0, 2], 1, 4, 1, 3, false);
        assert_eq!((v, i), (vec![0, 1, 2], vec![2, 0, 3]));
    }
}
