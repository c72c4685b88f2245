//! `ai.onnx.ml:LabelEncoder` (opset 2–4): maps int64, float or string keys to int64, float or
//! string values, with the spec defaults (`-1`, `-0.0`, `"_Unused"`) for unknown keys. Small
//! dense int64 key ranges (e.g. the leaf ids skl2onnx's IsolationForest maps to path lengths)
//! use a direct lookup table instead of hashing.

use std::collections::HashMap;

use crate::attrs::Attrs;
use crate::ops::{Inputs, KResult, Kernel, NodeCtx};
use crate::tensor::{Tensor, TensorData};
use crate::value::Value;

/// Key lookup: key -> index into the values.
#[derive(Debug)]
enum Keys {
    /// int64 keys; `dense` = (smallest key, index per key offset, `u32::MAX` = absent).
    Int64 {
        map: HashMap<i64, u32>,
        dense: Option<(i64, Vec<u32>)>,
    },
    /// float keys by canonical bit pattern (all NaNs equal, -0 == +0).
    Float(HashMap<u32, u32>),
    /// string keys.
    String(HashMap<String, u32>),
}

/// Values and the default for unknown keys.
#[derive(Debug)]
enum Values {
    Int64(Vec<i64>, i64),
    Float(Vec<f32>, f32),
    String(Vec<String>, String),
}

fn float_key(x: f32) -> u32 {
    if x.is_nan() {
        f32::NAN.to_bits()
    } else if x == 0.0 {
        0
    } else {
        x.to_bits()
    }
}

/// A compiled LabelEncoder.
#[derive(Debug)]
pub(crate) struct LabelEncoder {
    keys: Keys,
    values: Values,
}

/// `(ints, floats, strings)` from `<prefix>_int64s`, `_floats`, `_strings` or `<prefix>_tensor`.
fn read_list(a: &Attrs<'_>, prefix: &str) -> KResult<Option<TensorData>> {
    let ints = a.ints(&format!("{prefix}_int64s"))?;
    let floats = a.floats(&format!("{prefix}_floats"))?;
    let strings = a.strings(&format!("{prefix}_strings"))?;
    let tensor = a.tensor(&format!("{prefix}_tensor"))?;
    let mut found = Vec::new();
    if a.has(&format!("{prefix}_int64s")) {
        found.push(TensorData::I64(ints.to_vec()));
    }
    if a.has(&format!("{prefix}_floats")) {
        found.push(TensorData::F32(floats.to_vec()));
    }
    if a.has(&format!("{prefix}_strings")) {
        found.push(TensorData::String(strings));
    }
    if let Some(t) = tensor {
        found.push(match t.into_parts().1 {
            TensorData::F64(v) => TensorData::F32(v.iter().map(|&x| x as f32).collect()),
            d => d,
        });
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(format!("more than one of the {prefix}_* attributes is set")),
    }
}

/// Builds the kernel from the node attributes.
pub(crate) fn build(ctx: &NodeCtx<'_>) -> KResult<LabelEncoder> {
    if ctx.opset < 2 {
        return Err("LabelEncoder opset 1 (classes_strings) is not supported".into());
    }
    let a = &ctx.attrs;
    let keys = read_list(a, "keys")?.ok_or("no keys_* attribute")?;
    let values = read_list(a, "values")?.ok_or("no values_* attribute")?;
    if keys.len() != values.len() {
        return Err(format!("{} keys but {} values", keys.len(), values.len()));
    }
    let default = a.tensor("default_tensor")?;
    let values = match values {
        TensorData::I64(v) => {
            let d = match default.as_ref().and_then(|t| t.as_i64()) {
                Some(d) => d.first().copied().unwrap_or(-1),
                None => a.int_or("default_int64", -1)?,
            };
            Values::Int64(v, d)
        }
        TensorData::F32(v) => {
            let d = match default.as_ref().and_then(|t| t.as_f32()) {
                Some(d) => d.first().copied().unwrap_or(-0.0),
                None => a.float_or("default_float", -0.0)?,
            };
            Values::Float(v, d)
        }
        TensorData::String(v) => {
            let d = match default.as_ref().and_then(|t| t.as_strings()) {
                Some(d) => d.first().cloned().unwrap_or_else(|| "_Unused".into()),
                None => a.string_or("default_string", "_Unused")?,
            };
            Values::String(v, d)
        }
        other => {
            return Err(format!(
                "values of type {} are not supported",
                other.element_type()
            ));
        }
    };
    // Later duplicates do not override earlier keys.
    let keys = match keys {
        TensorData::I64(k) => {
            let mut map = HashMap::with_capacity(k.len());
            for (i, &key) in k.iter().enumerate() {
                map.entry(key).or_insert(i as u32);
            }
            let dense = match (k.iter().min(), k.iter().max()) {
                (Some(&lo), Some(&hi))
                    if hi.abs_diff(lo) < (1 << 16)
                        && (hi.abs_diff(lo) as usize) < 8 * k.len() + 64 =>
                {
                    let mut table = vec![u32::MAX; (hi - lo) as usize + 1];
                    for (&key, &i) in &map {
                        table[(key - lo) as usize] = i;
                    }
                    Some((lo, table))
                }
                _ => None,
            };
            Keys::Int64 { map, dense }
        }
        TensorData::F32(k) => {
            let mut map = HashMap::with_capacity(k.len());
            for (i, &key) in k.iter().enumerate() {
                map.entry(float_key(key)).or_insert(i as u32);
            }
            Keys::Float(map)
        }
        TensorData::String(k) => {
            let mut map = HashMap::with_capacity(k.len());
            for (i, key) in k.into_iter().enumerate() {
                map.entry(key).or_insert(i as u32);
            }
            Keys::String(map)
        }
        other => {
            return Err(format!(
                "keys of type {} are not supported",
                other.element_type()
            ));
        }
    };
    Ok(LabelEncoder { keys, values })
}

impl LabelEncoder {
    /// Index of the value for each input element (`None` = default).
    fn indices(&self, t: &Tensor) -> KResult<Vec<Option<u32>>> {
        Ok(match (&self.keys, t.data()) {
            (
                Keys::Int64 {
                    dense: Some((lo, table)),
                    ..
                },
                TensorData::I64(v),
            ) => v
                .iter()
                .map(|&x| {
                    x.checked_sub(*lo)
                        .and_then(|o| usize::try_from(o).ok())
                        .and_then(|o| table.get(o).copied())
                        .filter(|&i| i != u32::MAX)
                })
                .collect(),
            (Keys::Int64 { map, .. }, TensorData::I64(v)) => {
                v.iter().map(|x| map.get(x).copied()).collect()
            }
            (Keys::Float(map), TensorData::F32(v)) => {
                v.iter().map(|&x| map.get(&float_key(x)).copied()).collect()
            }
            (Keys::String(map), TensorData::String(v)) => {
                v.iter().map(|x| map.get(x).copied()).collect()
            }
            (_, d) => {
                return Err(format!(
                    "input of type {} does not match the key type",
                    d.element_type()
                ));
            }
        })
    }
}

impl Kernel for LabelEncoder {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let t = ins.get(0)?;
        let idx = self.indices(t)?;
        let data = match &self.values {
            Values::Int64(v, d) => TensorData::I64(
                idx.iter()
                    .map(|i| i.map_or(*d, |i| v[i as usize]))
                    .collect(),
            ),
            Values::Float(v, d) => TensorData::F32(
                idx.iter()
                    .map(|i| i.map_or(*d, |i| v[i as usize]))
                    .collect(),
            ),
            Values::String(v, d) => TensorData::String(
                idx.iter()
                    .map(|i| i.map_or_else(|| d.clone(), |i| v[i as usize].clone()))
                    .collect(),
            ),
        };
        out.push(Value::Tensor(Tensor::raw(t.shape().to_vec(), data)));
        Ok(())
    }
}
