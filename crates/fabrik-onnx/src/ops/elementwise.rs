//! Element-wise `ai.onnx` operators with numpy broadcasting: arithmetic (Add, Sub, Mul, Div,
//! Pow), comparisons (Equal, Less, Greater, LessOrEqual, GreaterOrEqual), unary math (Neg, Abs,
//! Log, Exp, Sqrt, Relu, Sigmoid, Tanh, Floor, Ceil, Reciprocal, Erf, Sin, Cos, Not) and the
//! variadic Sum, Max, Min and Mean. Activations with attributes are in [`super::activation`].

use super::broadcast::{zip, zip_into};
use super::num::erf;
use super::{Inputs, KResult, Kernel, NodeCtx};
use crate::tensor::{Tensor, TensorData};
use crate::value::Value;

/// The operators [`build`] implements.
pub(crate) const OPS: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Equal",
    "Less",
    "LessOrEqual",
    "Greater",
    "GreaterOrEqual",
    "Neg",
    "Abs",
    "Log",
    "Exp",
    "Sqrt",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Floor",
    "Ceil",
    "Reciprocal",
    "Not",
    "Erf",
    "Sin",
    "Cos",
    "Sum",
    "Max",
    "Min",
    "Mean",
];

/// Builds the element-wise kernel for `op`, or `None` when `op` is not element-wise.
pub(crate) fn build(op: &str, ctx: &NodeCtx<'_>) -> KResult<Option<Box<dyn Kernel>>> {
    let k: Box<dyn Kernel> = match op {
        "Add" => Box::new(Binary(BinOp::Add)),
        "Sub" => Box::new(Binary(BinOp::Sub)),
        "Mul" => Box::new(Binary(BinOp::Mul)),
        "Div" => Box::new(Binary(BinOp::Div)),
        "Pow" => Box::new(Binary(BinOp::Pow)),
        "Equal" => Box::new(Compare(CmpOp::Eq)),
        "Less" => Box::new(Compare(CmpOp::Lt)),
        "LessOrEqual" => Box::new(Compare(CmpOp::Le)),
        "Greater" => Box::new(Compare(CmpOp::Gt)),
        "GreaterOrEqual" => Box::new(Compare(CmpOp::Ge)),
        "Neg" => Box::new(Unary(UnOp::Neg)),
        "Abs" => Box::new(Unary(UnOp::Abs)),
        "Log" => Box::new(Unary(UnOp::Log)),
        "Exp" => Box::new(Unary(UnOp::Exp)),
        "Sqrt" => Box::new(Unary(UnOp::Sqrt)),
        "Relu" => Box::new(Unary(UnOp::Relu)),
        "Sigmoid" => Box::new(Unary(UnOp::Sigmoid)),
        "Tanh" => Box::new(Unary(UnOp::Tanh)),
        "Floor" => Box::new(Unary(UnOp::Floor)),
        "Ceil" => Box::new(Unary(UnOp::Ceil)),
        "Reciprocal" => Box::new(Unary(UnOp::Reciprocal)),
        "Not" => Box::new(Unary(UnOp::Not)),
        "Erf" => Box::new(Unary(UnOp::Erf)),
        "Sin" => Box::new(Unary(UnOp::Sin)),
        "Cos" => Box::new(Unary(UnOp::Cos)),
        "Sum" => Box::new(Variadic(VarOp::Sum)),
        "Max" => Box::new(Variadic(VarOp::Max)),
        "Min" => Box::new(Variadic(VarOp::Min)),
        "Mean" => Box::new(Variadic(VarOp::Mean)),
        _ => return Ok(None),
    };
    let arity_ok = match op {
        "Sum" | "Max" | "Min" | "Mean" => ctx.n_inputs >= 1,
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Equal" | "Less" | "LessOrEqual" | "Greater"
        | "GreaterOrEqual" => ctx.n_inputs == 2,
        _ => ctx.n_inputs == 1,
    };
    if !arity_ok || ctx.n_outputs != 1 {
        return Err(format!(
            "unexpected arity: {} inputs, {} outputs",
            ctx.n_inputs, ctx.n_outputs
        ));
    }
    Ok(Some(k))
}

fn type_error(op: &str, a: &Tensor, b: &Tensor) -> String {
    format!(
        "{op}: unsupported element types {} and {}",
        a.element_type(),
        b.element_type()
    )
}

/// Binary arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

/// `zip` with the operator's closure inlined (one monomorphised loop per operator, no
/// indirect call per element).
macro_rules! zip_op {
    ($op:expr, $x:expr, $sa:expr, $y:expr, $sb:expr, add: $add:expr, sub: $sub:expr, mul: $mul:expr, div: $div:expr, pow: $pow:expr) => {
        match $op {
            BinOp::Add => zip($x, $sa, $y, $sb, $add),
            BinOp::Sub => zip($x, $sa, $y, $sb, $sub),
            BinOp::Mul => zip($x, $sa, $y, $sb, $mul),
            BinOp::Div => zip($x, $sa, $y, $sb, $div),
            BinOp::Pow => zip($x, $sa, $y, $sb, $pow),
        }
    };
}

/// `Add`, `Sub`, `Mul`, `Div`, `Pow`.
#[derive(Debug)]
struct Binary(BinOp);

impl Kernel for Binary {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let (a, b) = (ins.get(0)?, ins.get(1)?);
        let (sa, sb) = (a.shape(), b.shape());
        let (shape, data) = match (a.data(), b.data()) {
            (TensorData::F32(x), TensorData::F32(y)) => {
                let (s, d) = zip_op!(self.0, x, sa, y, sb,
                    add: |a: f32, b: f32| a + b, sub: |a: f32, b: f32| a - b,
                    mul: |a: f32, b: f32| a * b, div: |a: f32, b: f32| a / b, pow: f32::powf)?;
                (s, TensorData::F32(d))
            }
            (TensorData::F64(x), TensorData::F64(y)) => {
                let (s, d) = zip_op!(self.0, x, sa, y, sb,
                    add: |a: f64, b: f64| a + b, sub: |a: f64, b: f64| a - b,
                    mul: |a: f64, b: f64| a * b, div: |a: f64, b: f64| a / b, pow: f64::powf)?;
                (s, TensorData::F64(d))
            }
            (TensorData::I64(x), TensorData::I64(y)) => {
                if self.0 == BinOp::Div && y.contains(&0) {
                    return Err("integer division by zero".into());
                }
                // Division by zero was rejected above.
                let (s, d) = zip_op!(self.0, x, sa, y, sb,
                    add: i64::wrapping_add, sub: i64::wrapping_sub, mul: i64::wrapping_mul,
                    div: |a: i64, b: i64| a.checked_div(b).unwrap_or(0),
                    pow: |a: i64, b: i64| (a as f64).powf(b as f64) as i64)?;
                (s, TensorData::I64(d))
            }
            // Pow allows an exponent type different from the base type.
            (TensorData::F32(x), TensorData::I64(y)) if self.0 == BinOp::Pow => {
                let (s, d) = zip(x, sa, y, sb, |a, b| a.powf(b as f32))?;
                (s, TensorData::F32(d))
            }
            (TensorData::F32(x), TensorData::F64(y)) if self.0 == BinOp::Pow => {
                let (s, d) = zip(x, sa, y, sb, |a, b| a.powf(b as f32))?;
                (s, TensorData::F32(d))
            }
            (TensorData::F64(x), TensorData::F32(y)) if self.0 == BinOp::Pow => {
                let (s, d) = zip(x, sa, y, sb, |a, b| a.powf(f64::from(b)))?;
                (s, TensorData::F64(d))
            }
            _ => return Err(type_error(&format!("{:?}", self.0), a, b)),
        };
        out.push(Value::Tensor(Tensor::raw(shape, data)));
        Ok(())
    }
}

/// Comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn apply<T: PartialOrd>(self, a: T, b: T) -> bool {
        match self {
            Self::Eq => a == b,
            Self::Lt => a < b,
            Self::Le => a <= b,
            Self::Gt => a > b,
            Self::Ge => a >= b,
        }
    }
}

/// `Equal`, `Less`, `LessOrEqual`, `Greater`, `GreaterOrEqual` (output `bool`).
#[derive(Debug)]
struct Compare(CmpOp);

impl Kernel for Compare {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let (a, b) = (ins.get(0)?, ins.get(1)?);
        let (sa, sb) = (a.shape(), b.shape());
        let op = self.0;
        let (shape, data) = match (a.data(), b.data()) {
            (TensorData::F32(x), TensorData::F32(y)) => match op {
                CmpOp::Eq => zip(x, sa, y, sb, |p, q| p == q)?,
                CmpOp::Lt => zip(x, sa, y, sb, |p, q| p < q)?,
                CmpOp::Le => zip(x, sa, y, sb, |p, q| p <= q)?,
                CmpOp::Gt => zip(x, sa, y, sb, |p, q| p > q)?,
                CmpOp::Ge => zip(x, sa, y, sb, |p, q| p >= q)?,
            },
            (TensorData::F64(x), TensorData::F64(y)) => zip(x, sa, y, sb, |p, q| op.apply(p, q))?,
            (TensorData::I64(x), TensorData::I64(y)) => zip(x, sa, y, sb, |p, q| op.apply(p, q))?,
            (TensorData::Bool(x), TensorData::Bool(y)) if op == CmpOp::Eq => {
                zip(x, sa, y, sb, |p, q| p == q)?
            }
            _ => return Err(type_error(&format!("{op:?}"), a, b)),
        };
        out.push(Value::Tensor(Tensor::raw(shape, TensorData::Bool(data))));
        Ok(())
    }
}

/// Unary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UnOp {
    Neg,
    Abs,
    Log,
    Exp,
    Sqrt,
    Relu,
    Sigmoid,
    Tanh,
    Floor,
    Ceil,
    Reciprocal,
    Erf,
    Sin,
    Cos,
    Not,
}

impl UnOp {
    fn f32(self) -> Option<fn(f32) -> f32> {
        Some(match self {
            Self::Neg => |x: f32| -x,
            Self::Abs => f32::abs,
            Self::Log => f32::ln,
            Self::Exp => f32::exp,
            Self::Sqrt => f32::sqrt,
            Self::Relu => |x: f32| if x > 0.0 { x } else { 0.0 },
            Self::Sigmoid => |x: f32| 1.0 / (1.0 + (-x).exp()),
            Self::Tanh => f32::tanh,
            Self::Floor => f32::floor,
            Self::Ceil => f32::ceil,
            Self::Reciprocal => |x: f32| 1.0 / x,
            // Computed in f64 and rounded: within half an ulp of the true value.
            Self::Erf => |x: f32| erf(f64::from(x)) as f32,
            Self::Sin => f32::sin,
            Self::Cos => f32::cos,
            Self::Not => return None,
        })
    }

    fn f64(self) -> Option<fn(f64) -> f64> {
        Some(match self {
            Self::Neg => |x: f64| -x,
            Self::Abs => f64::abs,
            Self::Log => f64::ln,
            Self::Exp => f64::exp,
            Self::Sqrt => f64::sqrt,
            Self::Relu => |x: f64| if x > 0.0 { x } else { 0.0 },
            Self::Sigmoid => |x: f64| 1.0 / (1.0 + (-x).exp()),
            Self::Tanh => f64::tanh,
            Self::Floor => f64::floor,
            Self::Ceil => f64::ceil,
            Self::Reciprocal => |x: f64| 1.0 / x,
            Self::Erf => erf,
            Self::Sin => f64::sin,
            Self::Cos => f64::cos,
            Self::Not => return None,
        })
    }

    fn i64(self) -> Option<fn(i64) -> i64> {
        Some(match self {
            Self::Neg => i64::wrapping_neg,
            Self::Abs => i64::wrapping_abs,
            Self::Relu => |x: i64| x.max(0),
            _ => return None,
        })
    }
}

/// Unary element-wise operators.
#[derive(Debug)]
struct Unary(UnOp);

impl Kernel for Unary {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let a = ins.get(0)?;
        let data = match a.data() {
            // The hot ones get their own monomorphised loop.
            TensorData::F32(x) => match self.0 {
                UnOp::Neg => Some(TensorData::F32(x.iter().map(|&v| -v).collect())),
                UnOp::Relu => Some(TensorData::F32(
                    x.iter().map(|&v| if v > 0.0 { v } else { 0.0 }).collect(),
                )),
                UnOp::Log => Some(TensorData::F32(x.iter().map(|&v| v.ln()).collect())),
                _ => self
                    .0
                    .f32()
                    .map(|f| TensorData::F32(x.iter().map(|&v| f(v)).collect())),
            },
            TensorData::F64(x) => self
                .0
                .f64()
                .map(|f| TensorData::F64(x.iter().map(|&v| f(v)).collect())),
            TensorData::I64(x) => self
                .0
                .i64()
                .map(|f| TensorData::I64(x.iter().map(|&v| f(v)).collect())),
            TensorData::Bool(x) if self.0 == UnOp::Not => {
                Some(TensorData::Bool(x.iter().map(|&v| !v).collect()))
            }
            _ => None,
        };
        let data = data.ok_or_else(|| {
            format!(
                "{:?}: unsupported element type {}",
                self.0,
                a.element_type()
            )
        })?;
        out.push(Value::Tensor(Tensor::raw(a.shape().to_vec(), data)));
        Ok(())
    }
}

/// Variadic operators, folded left to right with broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VarOp {
    Sum,
    Max,
    Min,
    Mean,
}

/// `Sum`, `Max`, `Min`, `Mean`.
#[derive(Debug)]
struct Variadic(VarOp);

fn fold<T: Copy>(
    first: &[T],
    shape: &[usize],
    rest: impl Iterator<Item = KResult<(Vec<usize>, Vec<T>)>>,
    f: impl Fn(T, T) -> T + Copy,
) -> KResult<(Vec<usize>, Vec<T>)> {
    let mut acc = first.to_vec();
    let mut acc_shape = shape.to_vec();
    for r in rest {
        let (s, d) = r?;
        zip_into(&mut acc, &mut acc_shape, &d, &s, f)?;
    }
    Ok((acc_shape, acc))
}

impl Variadic {
    fn fold_f32(
        &self,
        ins: &Inputs<'_>,
        first: &[f32],
        shape: &[usize],
    ) -> KResult<(Vec<usize>, Vec<f32>)> {
        let rest = (1..ins.len()).map(|i| {
            let t = ins.get(i)?;
            let d = t.as_f32().ok_or("mixed element types")?;
            Ok((t.shape().to_vec(), d.to_vec()))
        });
        match self.0 {
            VarOp::Sum | VarOp::Mean => fold(first, shape, rest, |a, b| a + b),
            VarOp::Max => fold(first, shape, rest, f32::max),
            VarOp::Min => fold(first, shape, rest, f32::min),
        }
    }
}

impl Kernel for Variadic {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let a = ins.get(0)?;
        let n = ins.len();
        let t = match a.data() {
            TensorData::F32(x) => {
                // Fast path: every input has the first input's shape (IsolationForest's Sum).
                let same = (1..n).all(|i| {
                    ins.get(i)
                        .is_ok_and(|t| t.shape() == a.shape() && t.as_f32().is_some())
                });
                let (shape, mut data) = if same && matches!(self.0, VarOp::Sum | VarOp::Mean) {
                    let mut acc = x.clone();
                    for i in 1..n {
                        let y = ins.get(i)?.as_f32().ok_or("mixed element types")?;
                        acc.iter_mut().zip(y).for_each(|(p, &q)| *p += q);
                    }
                    (a.shape().to_vec(), acc)
                } else {
                    self.fold_f32(ins, x, a.shape())?
                };
                if self.0 == VarOp::Mean {
                    let k = n as f32;
                    data.iter_mut().for_each(|v| *v /= k);
                }
                Tensor::raw(shape, TensorData::F32(data))
            }
            TensorData::F64(x) => {
                let rest = (1..n).map(|i| {
                    let t = ins.get(i)?;
                    match t.data() {
                        TensorData::F64(d) => Ok((t.shape().to_vec(), d.clone())),
                        _ => Err("mixed element types".to_string()),
                    }
                });
                let (shape, mut data) = match self.0 {
                    VarOp::Sum | VarOp::Mean => fold(x, a.shape(), rest, |p, q| p + q)?,
                    VarOp::Max => fold(x, a.shape(), rest, f64::max)?,
                    VarOp::Min => fold(x, a.shape(), rest, f64::min)?,
                };
                if self.0 == VarOp::Mean {
                    let k = n as f64;
                    data.iter_mut().for_each(|v| *v /= k);
                }
                Tensor::raw(shape, TensorData::F64(data))
            }
            TensorData::I64(x) if self.0 != VarOp::Mean => {
                let rest = (1..n).map(|i| {
                    let t = ins.get(i)?;
                    t.as_i64()
                        .map(|d| (t.shape().to_vec(), d.to_vec()))
                        .ok_or_else(|| "mixed element types".to_string())
                });
                let (shape, data) = match self.0 {
                    VarOp::Max => fold(x, a.shape(), rest, i64::max)?,
                    VarOp::Min => fold(x, a.shape(), rest, i64::min)?,
                    _ => fold(x, a.shape(), rest, i64::wrapping_add)?,
                };
                Tensor::raw(shape, TensorData::I64(data))
            }
            other => {
                return Err(format!(
                    "{:?}: unsupported element type {}",
                    self.0,
                    other.element_type()
                ));
            }
        };
        out.push(Value::Tensor(t));
        Ok(())
    }
}
