//! Parameterised activation functions of `ai.onnx`, element by element on `f32` and `f64`:
//! LeakyRelu, Elu, Selu, Softplus, Softsign, HardSigmoid, HardSwish, Gelu (opset 20, both
//! `approximate` forms) and Clip (bounds as attributes before opset 11, as optional inputs
//! from 11 on; also on `int64`). Formulas follow onnxruntime's CPU functors, e.g. Softplus
//! split at 0 for stability. Axis-wise normalisations (Softmax, ...) are in [`super::normalize`].

use super::num::{Real, erf};
use super::{Inputs, KResult, Kernel, NodeCtx};
use crate::tensor::{Tensor, TensorData};
use crate::value::Value;

/// The operators [`build`] implements.
pub(crate) const OPS: &[&str] = &[
    "LeakyRelu",
    "Elu",
    "Selu",
    "Softplus",
    "Softsign",
    "HardSigmoid",
    "HardSwish",
    "Gelu",
    "Clip",
];

/// Builds the kernel for `op`, or `None` when `op` is not one of this module's.
pub(crate) fn build(op: &str, ctx: &NodeCtx<'_>) -> KResult<Option<Box<dyn Kernel>>> {
    let a = &ctx.attrs;
    let act = match op {
        "LeakyRelu" => Act::LeakyRelu {
            alpha: a.float_or("alpha", 0.01)?,
        },
        "Elu" => Act::Elu {
            alpha: a.float_or("alpha", 1.0)?,
        },
        "Selu" => Act::Selu {
            alpha: a.float_or("alpha", 1.673_263_2)?,
            gamma: a.float_or("gamma", 1.050_701)?,
        },
        "Softplus" => Act::Softplus,
        "Softsign" => Act::Softsign,
        "HardSigmoid" => Act::HardSigmoid {
            alpha: a.float_or("alpha", 0.2)?,
            beta: a.float_or("beta", 0.5)?,
        },
        "HardSwish" => Act::HardSwish,
        "Gelu" => Act::Gelu {
            tanh: match a.string_or("approximate", "none")?.as_str() {
                "none" => false,
                "tanh" => true,
                other => return Err(format!("unknown approximate '{other}'")),
            },
        },
        "Clip" => return build_clip(ctx).map(|k| Some(Box::new(k) as Box<dyn Kernel>)),
        _ => return Ok(None),
    };
    if ctx.n_inputs != 1 || ctx.n_outputs != 1 {
        return Err(format!(
            "expected 1 input and 1 output, got {} and {}",
            ctx.n_inputs, ctx.n_outputs
        ));
    }
    Ok(Some(Box::new(Activation(act))))
}

/// An activation and its attributes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    LeakyRelu { alpha: f32 },
    Elu { alpha: f32 },
    Selu { alpha: f32, gamma: f32 },
    Softplus,
    Softsign,
    HardSigmoid { alpha: f32, beta: f32 },
    HardSwish,
    Gelu { tanh: bool },
}

impl Act {
    #[inline(always)]
    fn apply<T: Real>(self, x: T) -> T {
        let c = |v: f32| T::from_f64(f64::from(v));
        let zero = T::ZERO;
        let one = T::ONE;
        match self {
            Self::LeakyRelu { alpha } => {
                if x >= zero {
                    x
                } else {
                    c(alpha) * x
                }
            }
            Self::Elu { alpha } => {
                if x >= zero {
                    x
                } else {
                    c(alpha) * (x.exp() - one)
                }
            }
            Self::Selu { alpha, gamma } => {
                if x > zero {
                    c(gamma) * x
                } else {
                    c(gamma) * (c(alpha) * x.exp() - c(alpha))
                }
            }
            // Split at 0 so exp never overflows (onnxruntime's functor does the same).
            Self::Softplus => {
                if x > zero {
                    x + ((-x).exp() + one).ln()
                } else {
                    (x.exp() + one).ln()
                }
            }
            Self::Softsign => x / (one + x.abs()),
            Self::HardSigmoid { alpha, beta } => clamp01(c(alpha) * x + c(beta)),
            Self::HardSwish => x * clamp01(x * T::from_f64(1.0 / 6.0) + T::from_f64(0.5)),
            Self::Gelu { tanh: false } => {
                let e = T::from_f64(erf(x.to_f64() * std::f64::consts::FRAC_1_SQRT_2));
                T::from_f64(0.5) * x * (e + one)
            }
            Self::Gelu { tanh: true } => {
                // sqrt(2 / pi) * (x + 0.044715 x^3)
                let b = T::from_f64(0.797_884_560_802_865_4);
                let inner = x * (T::from_f64(0.044_715) * b * x * x + b);
                T::from_f64(0.5) * x * (inner.tanh() + one)
            }
        }
    }
}

fn clamp01<T: Real>(v: T) -> T {
    if v < T::ZERO {
        T::ZERO
    } else if v > T::ONE {
        T::ONE
    } else {
        v
    }
}

/// An element-wise activation.
#[derive(Debug)]
struct Activation(Act);

impl Kernel for Activation {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let t = ins.get(0)?;
        let act = self.0;
        let data = match t.data() {
            TensorData::F32(v) => TensorData::F32(v.iter().map(|&x| act.apply(x)).collect()),
            TensorData::F64(v) => TensorData::F64(v.iter().map(|&x| act.apply(x)).collect()),
            other => {
                return Err(format!(
                    "expected a float or double tensor, got {}",
                    other.element_type()
                ));
            }
        };
        out.push(Value::Tensor(Tensor::raw(t.shape().to_vec(), data)));
        Ok(())
    }
}

/// `Clip`: bounds from attributes (opset < 11) or from optional inputs 1 and 2.
#[derive(Debug)]
struct Clip {
    /// `(min, max)` attributes for opset < 11; `None` when the bounds are inputs.
    attrs: Option<(f32, f32)>,
}

fn build_clip(ctx: &NodeCtx<'_>) -> KResult<Clip> {
    if ctx.n_outputs != 1 {
        return Err(format!("expected 1 output, got {}", ctx.n_outputs));
    }
    if ctx.opset < 11 {
        if ctx.n_inputs != 1 {
            return Err(format!(
                "before opset 11 Clip takes 1 input (bounds are attributes), got {}",
                ctx.n_inputs
            ));
        }
        let min = ctx.attrs.float_or("min", f32::NEG_INFINITY)?;
        let max = ctx.attrs.float_or("max", f32::INFINITY)?;
        return Ok(Clip {
            attrs: Some((min, max)),
        });
    }
    if !(1..=3).contains(&ctx.n_inputs) {
        return Err(format!("expected 1 to 3 inputs, got {}", ctx.n_inputs));
    }
    Ok(Clip { attrs: None })
}

/// `max(x, lo)` then `min(., hi)`, in that order: with `lo > hi` every value becomes `hi`, as
/// in onnxruntime.
fn clip<T: PartialOrd + Copy>(v: &[T], lo: Option<T>, hi: Option<T>) -> Vec<T> {
    v.iter()
        .map(|&x| {
            let y = match lo {
                Some(l) if x < l => l,
                _ => x,
            };
            match hi {
                Some(h) if y > h => h,
                _ => y,
            }
        })
        .collect()
}

/// The scalar bound at input `i` (absent or empty → no bound), which must be of `x`'s type.
fn bound<'a>(ins: &Inputs<'a>, i: usize, x: &Tensor) -> KResult<Option<&'a TensorData>> {
    let Some(t) = ins.opt(i)? else {
        return Ok(None);
    };
    if t.element_type() != x.element_type() {
        return Err(format!(
            "bound #{i} is {}, the input is {}",
            t.element_type(),
            x.element_type()
        ));
    }
    match t.len() {
        0 => Ok(None),
        1 => Ok(Some(t.data())),
        n => Err(format!("bound #{i} must be a scalar, got {n} elements")),
    }
}

impl Kernel for Clip {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let x = ins.get(0)?;
        let data = if let Some((lo, hi)) = self.attrs {
            match x.data() {
                TensorData::F32(v) => TensorData::F32(clip(v, Some(lo), Some(hi))),
                TensorData::F64(v) => {
                    TensorData::F64(clip(v, Some(f64::from(lo)), Some(f64::from(hi))))
                }
                other => return Err(format!("unsupported element type {}", other.element_type())),
            }
        } else {
            let (lo, hi) = (bound(ins, 1, x)?, bound(ins, 2, x)?);
            match x.data() {
                TensorData::F32(v) => {
                    let get = |b: Option<&TensorData>| match b {
                        Some(TensorData::F32(s)) => s.first().copied(),
                        _ => None,
                    };
                    TensorData::F32(clip(v, get(lo), get(hi)))
                }
                TensorData::F64(v) => {
                    let get = |b: Option<&TensorData>| match b {
                        Some(TensorData::F64(s)) => s.first().copied(),
                        _ => None,
                    };
                    TensorData::F64(clip(v, get(lo), get(hi)))
                }
                TensorData::I64(v) => {
                    let get = |b: Option<&TensorData>| match b {
                        Some(TensorData::I64(s)) => s.first().copied(),
                        _ => None,
                    };
                    TensorData::I64(clip(v, get(lo), get(hi)))
                }
                other => return Err(format!("unsupported element type {}", other.element_type())),
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
    fn activations() {
        let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
        assert!(close(Act::LeakyRelu { alpha: 0.1 }.apply(-2.0f32), -0.2));
        assert!(close(Act::Elu { alpha: 1.0 }.apply(-1.0f32), -0.632_120_6));
        assert!(close(Act::Softplus.apply(0.0f32), std::f32::consts::LN_2));
        assert!(close(Act::Softplus.apply(100.0f32), 100.0));
        assert!(close(
            Act::HardSigmoid {
                alpha: 0.2,
                beta: 0.5
            }
            .apply(10.0f32),
            1.0
        ));
        assert!(close(Act::Gelu { tanh: false }.apply(1.0f32), 0.841_344_7));
        assert!(close(Act::Gelu { tanh: true }.apply(1.0f32), 0.841_192));
        assert_eq!(clip(&[1, 5, 9], Some(2), Some(8)), vec![2, 5, 8]);
        // min > max: everything becomes max.
        assert_eq!(clip(&[1.0, 5.0], Some(4.0), Some(3.0)), vec![3.0, 3.0]);
    }
}
