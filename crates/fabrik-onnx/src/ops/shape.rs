//! Type and shape operators of `ai.onnx` that keep the elements in order: Cast, Reshape,
//! Flatten, Identity, Unsqueeze and Squeeze (axes as attribute before opset 13, as input from
//! 13 on), Shape (with opset 15's `start`/`end`), plus Gather. Operators that reorder elements
//! (Concat, Transpose, Slice) are in [`super::layout`].

use super::num::{ints_of, resolve_axes};
use super::{Inputs, KResult, Kernel, NodeCtx};
use crate::tensor::{ElementType, Tensor, TensorData};
use crate::value::Value;

/// The operators [`build`] implements.
pub(crate) const OPS: &[&str] = &[
    "Cast",
    "Reshape",
    "Gather",
    "Flatten",
    "Identity",
    "Unsqueeze",
    "Squeeze",
    "Shape",
];

/// Builds the kernel for `op`, or `None` when `op` is not one of this module's.
pub(crate) fn build(op: &str, ctx: &NodeCtx<'_>) -> KResult<Option<Box<dyn Kernel>>> {
    let k: Box<dyn Kernel> = match op {
        "Cast" => {
            let to = ctx.attrs.int("to")?.ok_or("missing attribute 'to'")?;
            let to = i32::try_from(to)
                .ok()
                .and_then(ElementType::from_onnx)
                .ok_or_else(|| format!("Cast to element type {to} is not supported"))?;
            Box::new(Cast(to))
        }
        "Reshape" => {
            if ctx.opset < 5 {
                return Err("Reshape before opset 5 (shape attribute) is not supported".into());
            }
            Box::new(Reshape {
                allowzero: ctx.attrs.int_or("allowzero", 0)? != 0,
            })
        }
        "Gather" => Box::new(Gather {
            axis: ctx.attrs.int_or("axis", 0)?,
        }),
        "Flatten" => Box::new(Flatten {
            axis: ctx.attrs.int_or("axis", 1)?,
        }),
        "Identity" => Box::new(Identity),
        "Unsqueeze" | "Squeeze" => {
            let axes = if ctx.opset < 13 {
                if ctx.n_inputs != 1 {
                    return Err(format!(
                        "expected 1 input at opset {} (axes is an attribute), got {}",
                        ctx.opset, ctx.n_inputs
                    ));
                }
                let a = ctx.attrs.ints("axes")?;
                // Unsqueeze requires axes; Squeeze without axes drops every 1.
                if a.is_empty() && op == "Unsqueeze" {
                    return Err("missing attribute 'axes'".into());
                }
                Some(a.to_vec())
            } else {
                if !(1..=2).contains(&ctx.n_inputs) || (op == "Unsqueeze" && ctx.n_inputs != 2) {
                    return Err(format!("unexpected number of inputs: {}", ctx.n_inputs));
                }
                None
            };
            if op == "Unsqueeze" {
                Box::new(Unsqueeze { axes })
            } else {
                Box::new(Squeeze { axes })
            }
        }
        "Shape" => Box::new(ShapeOf {
            start: ctx.attrs.int_or("start", 0)?,
            end: ctx.attrs.int("end")?,
        }),
        _ => return Ok(None),
    };
    Ok(Some(k))
}

/// Resolves a possibly negative axis against `rank`: a negative axis counts from the end
/// (`-1` is the last), and `rank_extra` also allows `axis == rank` (Flatten, and Softmax
/// before opset 13, split the shape before the axis: `[-r, r]`, a negative one still
/// counted against `r`).
pub(crate) fn resolve_axis(axis: i64, rank: usize, rank_extra: bool) -> KResult<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    let last = if rank_extra { r } else { r - 1 };
    if (0..=last.max(0)).contains(&a) {
        Ok(a as usize)
    } else {
        Err(format!("axis {axis} out of range for rank {rank}"))
    }
}

/// `Cast(to)`.
#[derive(Debug)]
struct Cast(ElementType);

fn cast(t: &Tensor, to: ElementType) -> KResult<TensorData> {
    use TensorData as D;
    Ok(match (t.data(), to) {
        (d, to) if d.element_type() == to => d.clone(),
        (D::F32(v), ElementType::F64) => D::F64(v.iter().map(|&x| f64::from(x)).collect()),
        (D::F32(v), ElementType::I64) => D::I64(v.iter().map(|&x| x as i64).collect()),
        (D::F32(v), ElementType::Bool) => D::Bool(v.iter().map(|&x| x != 0.0).collect()),
        (D::F64(v), ElementType::F32) => D::F32(v.iter().map(|&x| x as f32).collect()),
        (D::F64(v), ElementType::I64) => D::I64(v.iter().map(|&x| x as i64).collect()),
        (D::F64(v), ElementType::Bool) => D::Bool(v.iter().map(|&x| x != 0.0).collect()),
        (D::I64(v), ElementType::F32) => D::F32(v.iter().map(|&x| x as f32).collect()),
        (D::I64(v), ElementType::F64) => D::F64(v.iter().map(|&x| x as f64).collect()),
        (D::I64(v), ElementType::Bool) => D::Bool(v.iter().map(|&x| x != 0).collect()),
        (D::Bool(v), ElementType::F32) => {
            D::F32(v.iter().map(|&x| f32::from(u8::from(x))).collect())
        }
        (D::Bool(v), ElementType::F64) => {
            D::F64(v.iter().map(|&x| f64::from(u8::from(x))).collect())
        }
        (D::Bool(v), ElementType::I64) => D::I64(v.iter().map(|&x| i64::from(x)).collect()),
        (D::String(v), ElementType::F32) => D::F32(
            v.iter()
                .map(|s| {
                    s.trim()
                        .parse::<f32>()
                        .map_err(|_| format!("cannot cast '{s}' to float"))
                })
                .collect::<KResult<_>>()?,
        ),
        (D::String(v), ElementType::F64) => D::F64(
            v.iter()
                .map(|s| {
                    s.trim()
                        .parse::<f64>()
                        .map_err(|_| format!("cannot cast '{s}' to double"))
                })
                .collect::<KResult<_>>()?,
        ),
        (D::String(v), ElementType::I64) => D::I64(
            v.iter()
                .map(|s| {
                    s.trim()
                        .parse::<i64>()
                        .map_err(|_| format!("cannot cast '{s}' to int64"))
                })
                .collect::<KResult<_>>()?,
        ),
        (d, to) => {
            return Err(format!(
                "Cast from {} to {to} is not supported",
                d.element_type()
            ));
        }
    })
}

impl Kernel for Cast {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let t = ins.get(0)?;
        let data = cast(t, self.0)?;
        out.push(Value::Tensor(Tensor::raw(t.shape().to_vec(), data)));
        Ok(())
    }
}

/// `Reshape(data, shape)` (opset 5+).
#[derive(Debug)]
struct Reshape {
    allowzero: bool,
}

/// The target shape of a Reshape of `input` to `spec` (0 = copy, -1 = infer).
pub(crate) fn reshape_target(
    input: &[usize],
    spec: &[i64],
    allowzero: bool,
) -> KResult<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => out.push(*input.get(i).ok_or_else(|| {
                format!("Reshape: 0 at index {i} but input rank is {}", input.len())
            })?),
            d if d >= 0 => out.push(d as usize),
            _ => return Err(format!("Reshape: invalid target shape {spec:?}")),
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("Reshape: cannot reshape {input:?} to {spec:?}"));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(format!("Reshape: cannot reshape {input:?} to {spec:?}"));
    }
    Ok(out)
}

impl Kernel for Reshape {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let (t, s) = (ins.get(0)?, ins.get(1)?);
        let spec = s.as_i64().ok_or("Reshape: shape input must be int64")?;
        let shape = reshape_target(t.shape(), spec, self.allowzero)?;
        out.push(Value::Tensor(t.clone().reshaped(shape)));
        Ok(())
    }
}

/// `Flatten(axis)`.
#[derive(Debug)]
struct Flatten {
    axis: i64,
}

impl Kernel for Flatten {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let t = ins.get(0)?;
        let axis = resolve_axis(self.axis, t.shape().len(), true)?;
        let outer: usize = t.shape()[..axis].iter().product();
        let inner: usize = t.shape()[axis..].iter().product();
        out.push(Value::Tensor(t.clone().reshaped(vec![outer, inner])));
        Ok(())
    }
}

/// `Identity`.
#[derive(Debug)]
struct Identity;

impl Kernel for Identity {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        out.push(Value::Tensor(ins.get(0)?.clone()));
        Ok(())
    }
}

/// The axes of Unsqueeze/Squeeze: the attribute, else input 1 (absent → `None`).
fn axes_of(attr: &Option<Vec<i64>>, ins: &Inputs<'_>) -> KResult<Option<Vec<i64>>> {
    match attr {
        Some(a) => Ok(Some(a.clone())),
        None => ins.opt(1)?.map(|t| ints_of(t, "axes")).transpose(),
    }
}

/// `Unsqueeze`: inserts dimensions of size 1 at `axes` (positions in the output).
#[derive(Debug)]
struct Unsqueeze {
    axes: Option<Vec<i64>>,
}

/// The shape of `shape` with 1s inserted at `axes` (resolved against the output rank).
pub(crate) fn unsqueeze_shape(shape: &[usize], axes: &[i64]) -> KResult<Vec<usize>> {
    let rank = shape.len() + axes.len();
    let axes = resolve_axes(axes, rank)?;
    let mut dims = shape.iter();
    Ok((0..rank)
        .map(|i| {
            if axes.contains(&i) {
                1
            } else {
                dims.next().copied().unwrap_or(1)
            }
        })
        .collect())
}

impl Kernel for Unsqueeze {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let t = ins.get(0)?;
        let axes = axes_of(&self.axes, ins)?.ok_or("axes is required")?;
        let shape = unsqueeze_shape(t.shape(), &axes)?;
        out.push(Value::Tensor(t.clone().reshaped(shape)));
        Ok(())
    }
}

/// `Squeeze`: removes dimensions of size 1 (those at `axes`, or all of them).
#[derive(Debug)]
struct Squeeze {
    axes: Option<Vec<i64>>,
}

impl Kernel for Squeeze {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let t = ins.get(0)?;
        let shape = t.shape();
        let drop = match axes_of(&self.axes, ins)? {
            Some(a) if !a.is_empty() => {
                let axes = resolve_axes(&a, shape.len())?;
                if let Some(&bad) = axes.iter().find(|&&i| shape[i] != 1) {
                    return Err(format!(
                        "cannot squeeze axis {bad} of size {} (shape {shape:?})",
                        shape[bad]
                    ));
                }
                axes
            }
            _ => (0..shape.len()).filter(|&i| shape[i] == 1).collect(),
        };
        let new: Vec<usize> = (0..shape.len())
            .filter(|i| !drop.contains(i))
            .map(|i| shape[i])
            .collect();
        out.push(Value::Tensor(t.clone().reshaped(new)));
        Ok(())
    }
}

/// `Shape`: the input's dimensions `[start, end)` as int64.
#[derive(Debug)]
struct ShapeOf {
    start: i64,
    end: Option<i64>,
}

impl Kernel for ShapeOf {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let shape = ins.get(0)?.shape();
        let r = shape.len() as i64;
        // Negative positions count from the end; both are clamped to [0, rank].
        let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
        let (s, e) = (clamp(self.start), clamp(self.end.unwrap_or(r)));
        let dims: Vec<i64> = shape
            .get(s..e.max(s))
            .unwrap_or(&[])
            .iter()
            .map(|&d| d as i64)
            .collect();
        out.push(Value::Tensor(Tensor::raw(
            vec![dims.len()],
            TensorData::I64(dims),
        )));
        Ok(())
    }
}

/// `Gather(data, indices, axis)`.
#[derive(Debug)]
struct Gather {
    axis: i64,
}

fn gather_copy<T: Clone>(
    src: &[T],
    outer: usize,
    axis_dim: usize,
    inner: usize,
    idx: &[usize],
) -> Vec<T> {
    // Gathering every index in order (skl2onnx's IsolationForest does this per tree) is a copy.
    if idx.len() == axis_dim && idx.iter().enumerate().all(|(i, &j)| i == j) {
        return src.to_vec();
    }
    let mut dst = Vec::with_capacity(outer * idx.len() * inner);
    if inner == 1 {
        for row in src.chunks_exact(axis_dim.max(1)).take(outer) {
            dst.extend(idx.iter().map(|&i| row[i].clone()));
        }
        return dst;
    }
    for o in 0..outer {
        let base = o * axis_dim * inner;
        for &i in idx {
            let start = base + i * inner;
            dst.extend_from_slice(&src[start..start + inner]);
        }
    }
    dst
}

impl Kernel for Gather {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let (t, ind) = (ins.get(0)?, ins.get(1)?);
        let shape = t.shape();
        let axis = resolve_axis(self.axis, shape.len(), false)?;
        let axis_dim = shape[axis];
        let raw = ind.as_i64().ok_or("Gather: indices must be int64")?;
        let idx = raw
            .iter()
            .map(|&i| {
                let j = if i < 0 { i + axis_dim as i64 } else { i };
                if (0..axis_dim as i64).contains(&j) {
                    Ok(j as usize)
                } else {
                    Err(format!(
                        "Gather: index {i} out of range for axis of size {axis_dim}"
                    ))
                }
            })
            .collect::<KResult<Vec<_>>>()?;
        let outer: usize = shape[..axis].iter().product();
        let inner: usize = shape[axis + 1..].iter().product();
        let mut out_shape = shape[..axis].to_vec();
        out_shape.extend_from_slice(ind.shape());
        out_shape.extend_from_slice(&shape[axis + 1..]);
        use TensorData as D;
        let data = match t.data() {
            D::F32(v) => D::F32(gather_copy(v, outer, axis_dim, inner, &idx)),
            D::F64(v) => D::F64(gather_copy(v, outer, axis_dim, inner, &idx)),
            D::I64(v) => D::I64(gather_copy(v, outer, axis_dim, inner, &idx)),
            D::Bool(v) => D::Bool(gather_copy(v, outer, axis_dim, inner, &idx)),
            D::String(v) => D::String(gather_copy(v, outer, axis_dim, inner, &idx)),
        };
        out.push(Value::Tensor(Tensor::raw(out_shape, data)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_rules() {
        assert_eq!(
            reshape_target(&[20, 1], &[-1, 1], false).expect("test data"),
            vec![20, 1]
        );
        assert_eq!(
            reshape_target(&[20, 8], &[-1, 1], false).expect("test data"),
            vec![160, 1]
        );
        assert_eq!(
            reshape_target(&[2, 3, 4], &[0, -1], false).expect("test data"),
            vec![2, 12]
        );
        assert!(reshape_target(&[2, 3], &[4, -1], false).is_err());
    }

    #[test]
    fn unsqueeze_positions_are_output_positions() {
        assert_eq!(
            unsqueeze_shape(&[3, 4], &[0, -1]).expect("test data"),
            vec![1, 3, 4, 1]
        );
        assert_eq!(
            unsqueeze_shape(&[3], &[1, 0]).expect("test data"),
            vec![1, 1, 3]
        );
        assert!(unsqueeze_shape(&[3], &[0, 0]).is_err());
    }

    #[test]
    fn gather_columns() {
        let src: Vec<i32> = (0..6).collect(); // [2, 3]
        assert_eq!(gather_copy(&src, 2, 3, 1, &[2, 0]), vec![2, 0, 5, 3]);
    }
}
