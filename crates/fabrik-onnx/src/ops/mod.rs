//! Operator kernels. [`build`] turns one ONNX node (op type, domain, resolved attributes and
//! its constant inputs) into a boxed [`Kernel`] at load time; [`Kernel::eval`] runs it on the
//! node's [`Inputs`] at run time. Each submodule owns one family of operators:
//!
//! - [`elementwise`]: broadcasting arithmetic, comparisons, unary math (Erf, Sin, Cos...),
//!   variadic Sum/Max/Min/Mean;
//! - [`activation`]: activations with attributes (LeakyRelu, Elu, Selu, Softplus, HardSigmoid,
//!   Gelu...) and Clip;
//! - [`normalize`]: Softmax, LogSoftmax, BatchNormalization;
//! - [`reduce`]: the Reduce* family and TopK;
//! - [`shape`]: Cast, Reshape, Gather, Flatten, Identity, Unsqueeze, Squeeze, Shape;
//! - [`layout`]: Concat, Transpose, Slice;
//! - [`linalg`]: MatMul and Gemm;
//! - [`ml`]: the `ai.onnx.ml` operators (tree ensembles, linear models, Scaler, Normalizer,
//!   LabelEncoder, ZipMap).
//!
//! [`num`] holds what they share (the `f32`/`f64` [`num::Real`] trait, erf, axis helpers).
//! Every module lists its operators in an `OPS` constant, which [`supported`] gathers.

pub(crate) mod activation;
pub(crate) mod broadcast;
pub(crate) mod elementwise;
pub(crate) mod layout;
pub(crate) mod linalg;
pub(crate) mod ml;
pub(crate) mod normalize;
pub(crate) mod num;
pub(crate) mod reduce;
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
    /// Every domain, in the order operator lists show them.
    pub(crate) const ALL: [Self; 2] = [Self::Onnx, Self::Ml];

    /// The canonical name (`ai.onnx`, `ai.onnx.ml`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Onnx => "ai.onnx",
            Self::Ml => "ai.onnx.ml",
        }
    }

    /// Parses a node's domain string.
    pub(crate) fn parse(domain: &str) -> Option<Self> {
        match domain {
            "" | "ai.onnx" => Some(Self::Onnx),
            "ai.onnx.ml" => Some(Self::Ml),
            _ => None,
        }
    }
}

/// The operators of `domain` this crate runs: those [`build`] implements, plus `Constant`, which
/// the plan compiler folds itself. The plan checks every node against this list before building
/// any kernel, so that all unsupported operators of a graph are reported together.
pub(crate) fn supported(domain: Domain) -> Vec<&'static str> {
    let mut ops = op_lists(domain).concat();
    ops.sort_unstable();
    ops
}

/// True when `op` of `domain` is in [`supported`].
pub(crate) fn is_supported(domain: Domain, op: &str) -> bool {
    op_lists(domain).iter().any(|l| l.contains(&op))
}

/// The `OPS` lists of the modules serving `domain`.
fn op_lists(domain: Domain) -> &'static [&'static [&'static str]] {
    match domain {
        Domain::Onnx => &[
            &["Constant"],
            elementwise::OPS,
            activation::OPS,
            normalize::OPS,
            reduce::OPS,
            shape::OPS,
            layout::OPS,
            linalg::OPS,
        ],
        Domain::Ml => &[ml::OPS],
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
            type Builder = fn(&str, &NodeCtx<'_>) -> KResult<Option<Box<dyn Kernel>>>;
            let builders: [(&[&str], Builder); 7] = [
                (elementwise::OPS, elementwise::build),
                (activation::OPS, activation::build),
                (normalize::OPS, normalize::build),
                (reduce::OPS, reduce::build),
                (shape::OPS, shape::build),
                (layout::OPS, layout::build),
                (linalg::OPS, linalg::build),
            ];
            // Only the module that lists `op` is asked, so a module's arity checks never
            // reject another module's operator.
            match builders.iter().find(|(ops, _)| ops.contains(&op)) {
                Some((_, build)) => build(op, ctx),
                None => Ok(None),
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every listed operator has a builder: with no attributes or inputs it either builds or
    /// complains about the node, but never answers "unknown operator" (`Ok(None)`).
    #[test]
    fn operator_lists_match_the_builders() {
        for domain in Domain::ALL {
            for op in supported(domain) {
                if op == "Constant" {
                    continue;
                }
                let node = NodeProto {
                    op_type: op.to_string(),
                    ..Default::default()
                };
                for opset in [1, 11, 13, 18, 21] {
                    let ctx = NodeCtx {
                        attrs: Attrs::new(&node).expect("test data"),
                        consts: Vec::new(),
                        n_inputs: 1,
                        n_outputs: 1,
                        opset,
                    };
                    let built = build(domain, &node, &ctx);
                    assert!(
                        !matches!(built, Ok(None)),
                        "{}:{op} (opset {opset}) is listed but has no builder",
                        domain.name()
                    );
                }
                assert!(is_supported(domain, op));
            }
        }
        let node = NodeProto {
            op_type: "NoSuchOp".into(),
            ..Default::default()
        };
        let ctx = NodeCtx {
            attrs: Attrs::new(&node).expect("test data"),
            consts: Vec::new(),
            n_inputs: 1,
            n_outputs: 1,
            opset: 13,
        };
        assert!(matches!(build(Domain::Onnx, &node, &ctx), Ok(None)));
        assert!(!is_supported(Domain::Onnx, "NoSuchOp"));
    }
}
