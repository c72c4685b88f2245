//! [`Tensor`]: a dense, row-major, owned n-dimensional array with one of the element types the
//! evaluator handles ([`ElementType`]), plus conversion from ONNX `TensorProto` initializers.

use crate::error::{OnnxError, Result};
use crate::proto::TensorProto;

/// Element types the evaluator handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElementType {
    /// `float` (ONNX code 1).
    F32,
    /// `double` (ONNX code 11).
    F64,
    /// `int64` (ONNX code 7).
    I64,
    /// `bool` (ONNX code 9).
    Bool,
    /// `string` (ONNX code 8).
    String,
}

impl ElementType {
    /// The element type of an ONNX `TensorProto.DataType` code, if handled.
    pub fn from_onnx(code: i32) -> Option<Self> {
        match code {
            1 => Some(Self::F32),
            7 => Some(Self::I64),
            8 => Some(Self::String),
            9 => Some(Self::Bool),
            11 => Some(Self::F64),
            _ => None,
        }
    }

    /// The ONNX `TensorProto.DataType` code.
    pub fn onnx_code(self) -> i32 {
        match self {
            Self::F32 => 1,
            Self::I64 => 7,
            Self::String => 8,
            Self::Bool => 9,
            Self::F64 => 11,
        }
    }

    /// Lower-case ONNX name (`float`, `int64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "float",
            Self::F64 => "double",
            Self::I64 => "int64",
            Self::Bool => "bool",
            Self::String => "string",
        }
    }
}

impl std::fmt::Display for ElementType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The elements of a tensor, row-major.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// 64-bit floats.
    F64(Vec<f64>),
    /// 64-bit signed integers.
    I64(Vec<i64>),
    /// Booleans.
    Bool(Vec<bool>),
    /// UTF-8 strings.
    String(Vec<String>),
}

impl TensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::F64(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::Bool(v) => v.len(),
            Self::String(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn element_type(&self) -> ElementType {
        match self {
            Self::F32(_) => ElementType::F32,
            Self::F64(_) => ElementType::F64,
            Self::I64(_) => ElementType::I64,
            Self::Bool(_) => ElementType::Bool,
            Self::String(_) => ElementType::String,
        }
    }
}

/// A dense, owned, row-major tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    /// A tensor of `shape` holding `data`; fails when the element count does not match.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Self> {
        let expected = shape.iter().product::<usize>();
        if expected != data.len() {
            return Err(OnnxError::ShapeDataMismatch {
                shape,
                expected,
                len: data.len(),
            });
        }
        Ok(Self { shape, data })
    }

    /// An `f32` tensor.
    pub fn from_f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        Self::new(shape, TensorData::F32(data))
    }

    /// An `i64` tensor.
    pub fn from_i64(shape: Vec<usize>, data: Vec<i64>) -> Result<Self> {
        Self::new(shape, TensorData::I64(data))
    }

    /// Internal constructor for kernels, which guarantee `shape` matches `data`.
    pub(crate) fn raw(shape: Vec<usize>, data: TensorData) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The element type.
    pub fn element_type(&self) -> ElementType {
        self.data.element_type()
    }

    /// The elements.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// Consumes the tensor, returning shape and elements.
    pub fn into_parts(self) -> (Vec<usize>, TensorData) {
        (self.shape, self.data)
    }

    /// The elements if this is an `f32` tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The elements if this is an `i64` tensor.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            TensorData::I64(v) => Some(v),
            _ => None,
        }
    }

    /// The elements if this is a string tensor.
    pub fn as_strings(&self) -> Option<&[String]> {
        match &self.data {
            TensorData::String(v) => Some(v),
            _ => None,
        }
    }

    /// Same elements, new shape (caller guarantees the element count matches).
    pub(crate) fn reshaped(self, shape: Vec<usize>) -> Self {
        Self::raw(shape, self.data)
    }

    /// Decodes an ONNX `TensorProto` (typed fields or little-endian `raw_data`).
    pub(crate) fn from_proto(t: &TensorProto) -> Result<Self> {
        let name = if t.name.is_empty() {
            "<attribute tensor>"
        } else {
            t.name.as_str()
        };
        let bad = |msg: &str| OnnxError::InvalidModel(format!("tensor '{name}': {msg}"));
        if t.data_location == 1 {
            return Err(bad("external data is not supported"));
        }
        let mut shape = Vec::with_capacity(t.dims.len());
        for &d in &t.dims {
            shape.push(usize::try_from(d).map_err(|_| bad("negative dimension"))?);
        }
        let n: usize = shape.iter().product();
        let et =
            ElementType::from_onnx(t.data_type).ok_or_else(|| OnnxError::UnsupportedDataType {
                name: name.to_string(),
                data_type: t.data_type,
            })?;
        let raw = !t.raw_data.is_empty();
        let data = match et {
            ElementType::F32 if raw => TensorData::F32(decode_raw(&t.raw_data, f32::from_le_bytes)),
            ElementType::F32 => TensorData::F32(t.float_data.clone()),
            ElementType::F64 if raw => TensorData::F64(decode_raw(&t.raw_data, f64::from_le_bytes)),
            ElementType::F64 => TensorData::F64(t.double_data.clone()),
            ElementType::I64 if raw => TensorData::I64(decode_raw(&t.raw_data, i64::from_le_bytes)),
            ElementType::I64 => TensorData::I64(t.int64_data.clone()),
            ElementType::Bool if raw => {
                TensorData::Bool(t.raw_data.iter().map(|&b| b != 0).collect())
            }
            ElementType::Bool => TensorData::Bool(t.int32_data.iter().map(|&b| b != 0).collect()),
            ElementType::String => TensorData::String(
                t.string_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            ),
        };
        if data.len() != n {
            return Err(bad(&format!(
                "{} elements for shape {shape:?} ({n} expected)",
                data.len()
            )));
        }
        Ok(Self { shape, data })
    }
}

/// Decodes little-endian fixed-width values; a trailing partial chunk is ignored (and then
/// caught by the element-count check).
fn decode_raw<T, const N: usize>(raw: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
    raw.chunks_exact(N)
        .map(|c| {
            let mut b = [0u8; N];
            b.copy_from_slice(c);
            f(b)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_must_match_data() {
        assert!(Tensor::from_f32(vec![2, 3], vec![0.0; 6]).is_ok());
        let err = Tensor::from_f32(vec![2, 3], vec![0.0; 5]).expect_err("must fail");
        assert!(err.to_string().contains("needs 6"), "{err}");
    }

    #[test]
    fn raw_data_is_little_endian() {
        let t = TensorProto {
            dims: vec![2],
            data_type: 1,
            raw_data: [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat(),
            ..Default::default()
        };
        let t = Tensor::from_proto(&t).expect("test data");
        assert_eq!(t.as_f32().expect("test data"), &[1.5, -2.0]);
    }
}
