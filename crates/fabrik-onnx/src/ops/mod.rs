//! Operator kernels. [`build`] turns one ONNX node (op type, domain, resolved attributes and
//! its constant inputs) into a boxed [`Kernel`] at load time; [`Kernel::eval`] runs it on the
//! node's [`Inputs`] at run time. Each submodule owns one family of operators:
//!
//! - [`elementwise`]: broadcasting arithmetic, comparisons, unary math, variadic Sum/Max/Min/Mean;
//! - [`shape`]: Cast, Reshape, Gather, Flatten, Identity;
//! - [`linalg`]: MatMul and Gemm;
//! - [`ml`]: the `ai.onnx.ml` operators (tree ensembles, Scaler, Normalizer, LabelEncoder, ZipMap).

pub(crate) mod broadcast;
pub(crate) mod elementwise;
pub(crate) mod linalg;
pub(crate) mod ml;
pub(crate) mod shape;

use crate::attrs::Attrs;
use crate::exec::Env;
use crate::plan::Ref;
use crate::proto::NodeProto;
use crate::tensor::Tensor;
use crate::value::Value;

/// Errors inside kernels are messages; the caller adds node name and op type.
pub(crate) type KResult<T> = Result<T, String>;

/// A compiled operator.
pub(crate) trait Kernel: Send + Sync + std::fmt::Debug {
    /// Computes the node's outputs, pushing one value per declared output, in order.
    fn eval(&self, inputs: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()>;

    /// False for kernels that must not be constant-folded at load time.
    fn foldable(&self) -> bool {
        true
    }
}

/// What a kernel builder sees of its node.
pub(crate) struct NodeCtx<'a> {
    /// Resolved attributes.
    pub(crate) attrs: Attrs<'a>,
    /// One entry per node input: the constant tensor when the input is an initializer (or was
    /// folded), `None` when it is computed at run time or omitted.
    pub(crate) consts: Vec<Option<&'a Tensor>>,
    /// Number of inputs the node declares (omitted optional inputs included).
    pub(crate) n_inputs: usize,
    /// Number of outputs the node declares.
    pub(crate) n_outputs: usize,
    /// Opset version of the node's domain.
    pub(crate) opset: i64,
}

impl NodeCtx<'_> {
    /// The constant tensor at input `i`, if it is constant.
    pub(crate) fn const_input(&self, i: usize) -> Option<&Tensor> {
        self.consts.get(i).copied().flatten()
    }
}

/// Operator domains this crate knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Domain {
    /// `ai.onnx` (also spelled `""`).
    Onnx,
    /// `ai.onnx.ml`.
    Ml,
}

impl Domain {
    /// Parses a node's domain string.
    pub(crate) fn parse(domain: &str) -> Option<Self> {
        match domain {
            "" | "ai.onnx" => Some(Self::Onnx),
            "ai.onnx.ml" => Some(Self::Ml),
            _ => None,
        }
    }
}

/// Builds the kernel for `node`; `Ok(None)` when the operator is not supported.
pub(crate) fn build(
    domain: Domain,
    node: &NodeProto,
    ctx: &NodeCtx<'_>,
) -> KResult<Option<Box<dyn Kernel>>> {
    let op = node.op_type.as_str();
    match domain {
        Domain::Onnx => {
            if let Some(k) = elementwise::build(op, ctx)? {
                return Ok(Some(k));
            }
            if let Some(k) = shape::build(op, ctx)? {
                return Ok(Some(k));
            }
            linalg::build(op, ctx)
        }
        Domain::Ml => ml::build(op, ctx),
    }
}

/// The inputs of the node being evaluated, looked up in the run's environment.
pub(crate) struct Inputs<'a> {
    ids: &'a [Option<Ref>],
    env: &'a Env<'a>,
}

impl<'a> Inputs<'a> {
    /// Wraps the value ids of a node's inputs (`None` for omitted optional inputs).
    pub(crate) fn new(ids: &'a [Option<Ref>], env: &'a Env<'a>) -> Self {
        Self { ids, env }
    }

    /// Number of declared inputs.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Input `i` if it is present (and a tensor).
    pub(crate) fn opt(&self, i: usize) -> KResult<Option<&'a Tensor>> {
        match self.ids.get(i).copied().flatten() {
            None => Ok(None),
            Some(id) => self.env.tensor(id).map(Some),
        }
    }

    /// Input `i`, which must be present.
    pub(crate) fn get(&self, i: usize) -> KResult<&'a Tensor> {
        self.opt(i)?
            .ok_or_else(|| format!("required input #{i} is missing"))
    }
}

/// Row count and width of a feature matrix `[N, F]` (a 1-D `[F]` input is one row).
pub(crate) fn rows_cols(t: &Tensor) -> KResult<(usize, usize)> {
    match t.shape() {
        [f] => Ok((1, *f)),
        [n, f] => Ok((*n, *f)),
        s => Err(format!("expected a [N, F] feature matrix, got shape {s:?}")),
    }
}

/// The elements of a numeric tensor as `f32` (borrowed when already `f32`).
pub(crate) fn as_f32_cow(t: &Tensor) -> KResult<std::borrow::Cow<'_, [f32]>> {
    use crate::tensor::TensorData;
    use std::borrow::Cow;
    match t.data() {
        TensorData::F32(v) => Ok(Cow::Borrowed(v)),
        TensorData::F64(v) => Ok(Cow::Owned(v.iter().map(|&x| x as f32).collect())),
        TensorData::I64(v) => Ok(Cow::Owned(v.iter().map(|&x| x as f32).collect())),
        other => Err(format!(
            "expected a numeric tensor, got {}",
            other.element_type()
        )),
    }
}
