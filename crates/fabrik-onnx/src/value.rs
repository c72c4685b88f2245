//! [`Value`]: what a graph output can be — a [`Tensor`] or, for `ai.onnx.ml:ZipMap`, a
//! sequence of per-row maps ([`MapSequence`]).

use crate::tensor::Tensor;

/// A graph value: a tensor or a ZipMap sequence of maps.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A dense tensor.
    Tensor(Tensor),
    /// `seq(map(int64|string, float))`, as produced by ZipMap.
    Maps(MapSequence),
}

impl Value {
    /// The tensor, if this value is one.
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            Self::Tensor(t) => Some(t),
            Self::Maps(_) => None,
        }
    }

    /// The sequence of maps, if this value is one.
    pub fn as_maps(&self) -> Option<&MapSequence> {
        match self {
            Self::Maps(m) => Some(m),
            Self::Tensor(_) => None,
        }
    }

    /// Consumes the value, returning the tensor if it is one.
    pub fn into_tensor(self) -> Option<Tensor> {
        match self {
            Self::Tensor(t) => Some(t),
            Self::Maps(_) => None,
        }
    }
}

/// Keys shared by every map of a [`MapSequence`] (the ZipMap class labels).
#[derive(Clone, Debug, PartialEq)]
pub enum MapKeys {
    /// `classlabels_int64s`.
    Int64(Vec<i64>),
    /// `classlabels_strings`.
    String(Vec<String>),
}

impl MapKeys {
    /// Number of keys.
    pub fn len(&self) -> usize {
        match self {
            Self::Int64(k) => k.len(),
            Self::String(k) => k.len(),
        }
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A sequence of maps with identical keys, stored densely: row `r` maps `keys[j]` to
/// `values[r * keys.len() + j]`.
#[derive(Clone, Debug, PartialEq)]
pub struct MapSequence {
    keys: MapKeys,
    values: Vec<f32>,
}

impl MapSequence {
    /// Internal constructor; `values.len()` is a multiple of `keys.len()`.
    pub(crate) fn new(keys: MapKeys, values: Vec<f32>) -> Self {
        Self { keys, values }
    }

    /// The keys, in class order.
    pub fn keys(&self) -> &MapKeys {
        &self.keys
    }

    /// Number of maps (rows).
    pub fn len(&self) -> usize {
        match self.keys.len() {
            0 => 0,
            k => self.values.len() / k,
        }
    }

    /// True when the sequence holds no map.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values of map `row`, in key order.
    pub fn row(&self, row: usize) -> Option<&[f32]> {
        let k = self.keys.len();
        self.values.get(row * k..(row + 1) * k)
    }

    /// The value for integer key `key` in map `row`.
    pub fn get_i64(&self, row: usize, key: i64) -> Option<f32> {
        let MapKeys::Int64(keys) = &self.keys else {
            return None;
        };
        let j = keys.iter().position(|&k| k == key)?;
        self.row(row)?.get(j).copied()
    }

    /// The value for string key `key` in map `row`.
    pub fn get_str(&self, row: usize, key: &str) -> Option<f32> {
        let MapKeys::String(keys) = &self.keys else {
            return None;
        };
        let j = keys.iter().position(|k| k == key)?;
        self.row(row)?.get(j).copied()
    }
}
