//! The crate's single error type, [`OnnxError`]: every failure of loading (decoding, graph
//! validation, unsupported operators or attributes) and of running (bad inputs, shape errors).

use thiserror::Error;

/// Everything that can go wrong when loading or running a model.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OnnxError {
    /// The model file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The bytes are not a valid ONNX protobuf.
    #[error("cannot decode ONNX protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The model has no graph, or the graph is malformed (dangling input, cycle, duplicate
    /// output name...).
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// Operators this evaluator does not implement: every one the graph uses, each listed once,
    /// so a model is fixed in one round rather than one operator at a time. The message groups
    /// them by domain: `unsupported operators: LSTM, TopK (ai.onnx); SVMClassifier (ai.onnx.ml)`.
    #[error("unsupported operators: {}", list_unsupported(.operators))]
    UnsupportedOperators {
        /// Distinct (domain, op type) pairs, sorted by domain then op type.
        operators: Vec<UnsupportedOperator>,
    },
    /// A supported operator with an attribute value or input kind this evaluator cannot handle,
    /// or an attribute that is missing or inconsistent.
    #[error("node '{node}' ({op_type}): {message}")]
    BadNode {
        /// Node name (or its first output when the node has no name).
        node: String,
        /// Operator type.
        op_type: String,
        /// What is wrong.
        message: String,
    },
    /// An initializer or constant tensor of an element type this evaluator does not handle.
    #[error("unsupported tensor element type {data_type} for '{name}'")]
    UnsupportedDataType {
        /// Tensor or value name.
        name: String,
        /// ONNX `TensorProto.DataType` code.
        data_type: i32,
    },
    /// `run` was given an input the model does not declare, or not given one it does.
    #[error("input '{name}': {message}")]
    BadInput {
        /// Input name.
        name: String,
        /// What is wrong, including the expected element type and shape.
        message: String,
    },
    /// A tensor built by the caller whose data length does not match its shape.
    #[error("tensor data has {len} elements but shape {shape:?} needs {expected}")]
    ShapeDataMismatch {
        /// Requested shape.
        shape: Vec<usize>,
        /// Elements the shape needs.
        expected: usize,
        /// Elements given.
        len: usize,
    },
    /// A node failed at run time (incompatible shapes or element types reaching it).
    #[error("node '{node}' ({op_type}) failed: {message}")]
    Runtime {
        /// Node name (or its first output when the node has no name).
        node: String,
        /// Operator type.
        op_type: String,
        /// What went wrong.
        message: String,
    },
}

/// One operator of a model this evaluator does not implement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsupportedOperator {
    /// Operator domain, `ai.onnx` for the default domain.
    pub domain: String,
    /// Operator type, e.g. `LSTM`.
    pub op_type: String,
    /// The nodes using it (name, or first output when unnamed), in graph order.
    pub nodes: Vec<String>,
}

/// `LSTM, TopK (ai.onnx); SVMClassifier (ai.onnx.ml)` from operators sorted by domain.
fn list_unsupported(ops: &[UnsupportedOperator]) -> String {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for o in ops {
        match groups.last_mut() {
            Some((d, names)) if *d == o.domain => names.push(&o.op_type),
            _ => groups.push((&o.domain, vec![&o.op_type])),
        }
    }
    groups
        .iter()
        .map(|(d, names)| format!("{} ({d})", names.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Result alias used throughout the crate.
pub type Result<T, E = OnnxError> = std::result::Result<T, E>;
