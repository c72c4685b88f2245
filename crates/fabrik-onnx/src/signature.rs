//! A model's declared inputs and outputs ([`ValueInfo`]: name, kind, element type, shape with
//! symbolic dimensions) and the checks `run` applies to caller-supplied input tensors.

use std::fmt;

use crate::error::{OnnxError, Result};
use crate::proto::{ValueInfoProto, tensor_shape_proto::dimension, type_proto};
use crate::tensor::{ElementType, Tensor};

/// One dimension of a declared shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A named, caller-chosen size (e.g. the batch axis `N`).
    Symbolic(String),
    /// Unspecified.
    Unknown,
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(n) => write!(f, "{n}"),
            Self::Symbolic(s) => f.write_str(s),
            Self::Unknown => f.write_str("?"),
        }
    }
}

/// The declared type of a graph input or output.
#[derive(Clone, Debug, PartialEq)]
pub enum ValueKind {
    /// A tensor; `element_type` is `None` for element types this crate does not handle,
    /// `shape` is `None` when the model does not declare one.
    Tensor {
        /// Element type.
        element_type: Option<ElementType>,
        /// Declared shape.
        shape: Option<Vec<Dim>>,
    },
    /// A sequence of maps (ZipMap output).
    MapSequence {
        /// Key type.
        key: Option<ElementType>,
        /// Value type.
        value: Option<ElementType>,
    },
    /// Anything else (or undeclared).
    Other,
}

/// As users read it: `float tensor [N, 8]`, `map sequence int64 → float`.
impl fmt::Display for ValueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let element =
            |t: &Option<ElementType>| t.map_or("unsupported".to_owned(), |t| t.to_string());
        match self {
            Self::Tensor {
                element_type,
                shape,
            } => {
                write!(f, "{} tensor", element(element_type))?;
                match shape {
                    Some(dims) => {
                        let dims: Vec<String> = dims.iter().map(Dim::to_string).collect();
                        write!(f, " [{}]", dims.join(", "))
                    }
                    None => f.write_str(" of undeclared shape"),
                }
            }
            Self::MapSequence { key, value } => {
                write!(f, "map sequence {} → {}", element(key), element(value))
            }
            Self::Other => f.write_str("value of another kind"),
        }
    }
}

/// A declared graph input or output.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    /// Name.
    pub name: String,
    /// Declared type.
    pub kind: ValueKind,
}

impl ValueInfo {
    pub(crate) fn from_proto(v: &ValueInfoProto) -> Self {
        let kind = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::TensorType(t)) => ValueKind::Tensor {
                element_type: ElementType::from_onnx(t.elem_type),
                shape: t.shape.as_ref().map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(dimension::Value::DimValue(n)) if *n >= 0 => {
                                Dim::Fixed(*n as usize)
                            }
                            Some(dimension::Value::DimParam(p)) if !p.is_empty() => {
                                Dim::Symbolic(p.clone())
                            }
                            _ => Dim::Unknown,
                        })
                        .collect()
                }),
            },
            Some(type_proto::Value::SequenceType(s)) => {
                match s.elem_type.as_ref().and_then(|t| t.value.as_ref()) {
                    Some(type_proto::Value::MapType(m)) => {
                        let value = match m.value_type.as_ref().and_then(|t| t.value.as_ref()) {
                            Some(type_proto::Value::TensorType(t)) => {
                                ElementType::from_onnx(t.elem_type)
                            }
                            _ => None,
                        };
                        ValueKind::MapSequence {
                            key: ElementType::from_onnx(m.key_type),
                            value,
                        }
                    }
                    _ => ValueKind::Other,
                }
            }
            _ => ValueKind::Other,
        };
        Self {
            name: v.name.clone(),
            kind,
        }
    }

    /// Human-readable expectation, e.g. `float tensor of shape [?, 8]`.
    pub fn describe(&self) -> String {
        match &self.kind {
            ValueKind::Tensor {
                element_type,
                shape,
            } => {
                let et = element_type.map_or("tensor".to_string(), |e| format!("{e} tensor"));
                match shape {
                    Some(dims) => {
                        let d: Vec<String> = dims.iter().map(Dim::to_string).collect();
                        format!("{et} of shape [{}]", d.join(", "))
                    }
                    None => et,
                }
            }
            ValueKind::MapSequence { .. } => "sequence of maps".into(),
            ValueKind::Other => "value".into(),
        }
    }

    /// Checks a caller-supplied tensor against the declaration.
    pub(crate) fn check(&self, t: &Tensor) -> Result<()> {
        let ValueKind::Tensor {
            element_type,
            shape,
        } = &self.kind
        else {
            return Ok(());
        };
        let bad = |what: String| OnnxError::BadInput {
            name: self.name.clone(),
            message: format!("expected {}, got {what}", self.describe()),
        };
        if let Some(e) = element_type
            && *e != t.element_type()
        {
            return Err(bad(format!("{} tensor", t.element_type())));
        }
        if let Some(dims) = shape {
            let ok = dims.len() == t.shape().len()
                && dims
                    .iter()
                    .zip(t.shape())
                    .all(|(d, &n)| !matches!(d, Dim::Fixed(m) if *m != n));
            if !ok {
                return Err(bad(format!("shape {:?}", t.shape())));
            }
        }
        Ok(())
    }
}
