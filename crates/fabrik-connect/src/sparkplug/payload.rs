//! Payload decoding/encoding and the conversion of Sparkplug metric values (every data type of
//! Sparkplug 3.0, arrays included) to and from the small [`Value`] enum.
//!
//! Integer sign handling: `sparkplug_b.proto` carries Int8/16/32 and UInt8/16/32 in the
//! `uint32 int_value` field and Int64/UInt64/DateTime in `uint64 long_value`. Encoders differ on
//! negative values: Tahu Java and C sign-extend to the field width (Int8 `-1` becomes
//! `0xFFFF_FFFF`), Tahu Python wraps at the type's width (`0xFF`). Decoding accepts both (and an
//! integer in the other field, since UInt32 is sent in `long_value` by Tahu Java) and rejects
//! values that fit neither form; encoding sign-extends, which every decoder that casts reads
//! back correctly.
//!
//! DataSet and Template values are kept as [`Value::Unsupported`] with a JSON rendering.

use super::proto::{
    DataSet, DataSetValueValue, Metric, MetricValue, ParameterValue, Payload, Template,
};
use super::{Result, SparkplugError};
use prost::Message;
use std::fmt::Write as _;

/// Sparkplug B data type codes (Sparkplug 3.0 §6.4.16, arrays 22..=34 included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum DataType {
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Float,
    Double,
    Boolean,
    String,
    DateTime,
    Text,
    Uuid,
    DataSet,
    Bytes,
    File,
    Template,
    PropertySet,
    PropertySetList,
    Int8Array,
    Int16Array,
    Int32Array,
    Int64Array,
    UInt8Array,
    UInt16Array,
    UInt32Array,
    UInt64Array,
    FloatArray,
    DoubleArray,
    BooleanArray,
    StringArray,
    DateTimeArray,
}

const ALL_TYPES: [DataType; 34] = {
    use DataType::*;
    [
        Int8,
        Int16,
        Int32,
        Int64,
        UInt8,
        UInt16,
        UInt32,
        UInt64,
        Float,
        Double,
        Boolean,
        String,
        DateTime,
        Text,
        Uuid,
        DataSet,
        Bytes,
        File,
        Template,
        PropertySet,
        PropertySetList,
        Int8Array,
        Int16Array,
        Int32Array,
        Int64Array,
        UInt8Array,
        UInt16Array,
        UInt32Array,
        UInt64Array,
        FloatArray,
        DoubleArray,
        BooleanArray,
        StringArray,
        DateTimeArray,
    ]
};

impl DataType {
    /// The wire code (1 = Int8 ... 34 = DateTimeArray).
    pub fn code(self) -> u32 {
        // ALL_TYPES is in code order, starting at 1.
        let mut code = 1;
        for t in ALL_TYPES {
            if t == self {
                break;
            }
            code += 1;
        }
        code
    }

    /// The data type of a wire code; `None` for 0 (Unknown) and codes past 34.
    pub fn from_code(code: u32) -> Option<Self> {
        let index = usize::try_from(code.checked_sub(1)?).ok()?;
        ALL_TYPES.get(index).copied()
    }

    /// The element type of an array type.
    pub fn element(self) -> Option<Self> {
        use DataType::*;
        Some(match self {
            Int8Array => Int8,
            Int16Array => Int16,
            Int32Array => Int32,
            Int64Array => Int64,
            UInt8Array => UInt8,
            UInt16Array => UInt16,
            UInt32Array => UInt32,
            UInt64Array => UInt64,
            FloatArray => Float,
            DoubleArray => Double,
            BooleanArray => Boolean,
            StringArray => String,
            DateTimeArray => DateTime,
            _ => return None,
        })
    }
}

/// A decoded metric value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Int8, Int16, Int32, Int64 and DateTime (ms since the Unix epoch).
    I64(i64),
    /// UInt8, UInt16, UInt32, UInt64.
    U64(u64),
    /// Float (widened exactly) and Double.
    F64(f64),
    /// Boolean.
    Bool(bool),
    /// String, Text, UUID.
    Str(String),
    /// Bytes, File.
    Bytes(Vec<u8>),
    /// The array types, elements converted like the scalars.
    Array(Vec<Value>),
    /// Explicit null (`is_null`) or no value at all.
    Null,
    /// DataSet and Template: not flattened into samples, kept as JSON.
    Unsupported {
        /// `DataSet` or `Template`.
        datatype: DataType,
        /// JSON rendering of the value.
        json: String,
    },
}

/// Decodes a Sparkplug B payload.
pub fn decode_payload(bytes: &[u8]) -> Result<Payload> {
    Ok(Payload::decode(bytes)?)
}

/// Encodes a Sparkplug B payload.
pub fn encode_payload(payload: &Payload) -> Vec<u8> {
    payload.encode_to_vec()
}

/// The data type of `metric`: its own `datatype`, else `fallback` (from the birth).
pub fn metric_datatype(
    metric: &Metric,
    fallback: Option<DataType>,
    label: &str,
) -> Result<DataType> {
    match metric.datatype {
        Some(code) => DataType::from_code(code).ok_or_else(|| SparkplugError::UnknownDataType {
            metric: label.to_owned(),
            code,
        }),
        None => fallback.ok_or_else(|| SparkplugError::MissingDataType {
            metric: label.to_owned(),
        }),
    }
}

/// Converts `metric`'s value as `datatype`; `label` names the metric in errors.
pub fn metric_value(metric: &Metric, datatype: DataType, label: &str) -> Result<Value> {
    if metric.is_null == Some(true) {
        return Ok(Value::Null);
    }
    let raw = match &metric.value {
        None => Raw::None,
        Some(MetricValue::IntValue(v)) => Raw::Int(*v),
        Some(MetricValue::LongValue(v)) => Raw::Long(*v),
        Some(MetricValue::FloatValue(v)) => Raw::Float(*v),
        Some(MetricValue::DoubleValue(v)) => Raw::Double(*v),
        Some(MetricValue::BooleanValue(v)) => Raw::Bool(*v),
        Some(MetricValue::StringValue(v)) => Raw::Str(v),
        Some(MetricValue::BytesValue(v)) => Raw::Bytes(v),
        Some(MetricValue::DatasetValue(v)) => Raw::DataSet(v),
        Some(MetricValue::TemplateValue(v)) => Raw::Template(v),
        Some(MetricValue::ExtensionValue(_)) => Raw::Extension,
    };
    convert(datatype, raw).map_err(|e| e.into_error(label, datatype))
}

/// Builds a metric carrying `value` as `datatype`.
pub fn new_metric(
    name: Option<&str>,
    alias: Option<u64>,
    datatype: DataType,
    value: &Value,
    timestamp: Option<u64>,
) -> Result<Metric> {
    let label = name
        .map(str::to_owned)
        .or_else(|| alias.map(|a| format!("alias {a}")))
        .unwrap_or_default();
    let encoded = encode_value(datatype, value).map_err(|detail| SparkplugError::InvalidValue {
        metric: label,
        datatype,
        detail,
    })?;
    Ok(Metric {
        name: name.map(str::to_owned),
        alias,
        timestamp,
        datatype: Some(datatype.code()),
        is_null: encoded.is_none().then_some(true),
        value: encoded,
        ..Metric::default()
    })
}

/// A protobuf value field, independent of which message it sits in.
#[derive(Clone, Copy)]
enum Raw<'a> {
    None,
    Int(u32),
    Long(u64),
    Float(f32),
    Double(f64),
    Bool(bool),
    Str(&'a str),
    Bytes(&'a [u8]),
    DataSet(&'a DataSet),
    Template(&'a Template),
    Extension,
}

impl Raw<'_> {
    fn field(self) -> &'static str {
        match self {
            Raw::None => "no value",
            Raw::Int(_) => "int_value",
            Raw::Long(_) => "long_value",
            Raw::Float(_) => "float_value",
            Raw::Double(_) => "double_value",
            Raw::Bool(_) => "boolean_value",
            Raw::Str(_) => "string_value",
            Raw::Bytes(_) => "bytes_value",
            Raw::DataSet(_) => "dataset_value",
            Raw::Template(_) => "template_value",
            Raw::Extension => "extension_value",
        }
    }
}

enum ConvError {
    Mismatch(&'static str),
    Invalid(String),
}

impl ConvError {
    fn into_error(self, label: &str, datatype: DataType) -> SparkplugError {
        match self {
            ConvError::Mismatch(field) => SparkplugError::ValueMismatch {
                metric: label.to_owned(),
                datatype,
                field,
            },
            ConvError::Invalid(detail) => SparkplugError::InvalidValue {
                metric: label.to_owned(),
                datatype,
                detail,
            },
        }
    }

    fn detail(&self) -> String {
        match self {
            ConvError::Mismatch(field) => format!("value in {field}"),
            ConvError::Invalid(detail) => detail.clone(),
        }
    }
}

type Conv<T> = std::result::Result<T, ConvError>;

fn convert(datatype: DataType, raw: Raw<'_>) -> Conv<Value> {
    use DataType as T;
    if let Raw::None = raw {
        return Ok(Value::Null);
    }
    let mismatch = || ConvError::Mismatch(raw.field());
    Ok(match datatype {
        T::Int8 => Value::I64(signed(raw, 8)?),
        T::Int16 => Value::I64(signed(raw, 16)?),
        T::Int32 => Value::I64(signed(raw, 32)?),
        T::Int64 => Value::I64(signed(raw, 64)?),
        T::UInt8 => Value::U64(unsigned(raw, 8)?),
        T::UInt16 => Value::U64(unsigned(raw, 16)?),
        T::UInt32 => Value::U64(unsigned(raw, 32)?),
        T::UInt64 => Value::U64(unsigned(raw, 64)?),
        T::DateTime => {
            let ms = unsigned(raw, 64)?;
            Value::I64(
                i64::try_from(ms)
                    .map_err(|_| ConvError::Invalid(format!("{ms} ms is past the i64 range")))?,
            )
        }
        T::Float | T::Double => match raw {
            Raw::Float(v) => Value::F64(f64::from(v)),
            Raw::Double(v) => Value::F64(v),
            _ => return Err(mismatch()),
        },
        T::Boolean => match raw {
            Raw::Bool(v) => Value::Bool(v),
            _ => return Err(mismatch()),
        },
        T::String | T::Text | T::Uuid => match raw {
            Raw::Str(v) => Value::Str(v.to_owned()),
            _ => return Err(mismatch()),
        },
        T::Bytes | T::File => match raw {
            Raw::Bytes(v) => Value::Bytes(v.to_vec()),
            _ => return Err(mismatch()),
        },
        T::DataSet => match raw {
            Raw::DataSet(ds) => Value::Unsupported {
                datatype,
                json: dataset_json(ds),
            },
            _ => return Err(mismatch()),
        },
        T::Template => match raw {
            Raw::Template(t) => Value::Unsupported {
                datatype,
                json: template_json(t),
            },
            _ => return Err(mismatch()),
        },
        T::PropertySet | T::PropertySetList => return Err(mismatch()),
        array => match (raw, array.element()) {
            (Raw::Bytes(bytes), Some(element)) => Value::Array(unpack_array(element, bytes)?),
            _ => return Err(mismatch()),
        },
    })
}

/// A signed integer of `bits` from either integer field, in either sign convention.
fn signed(raw: Raw<'_>, bits: u32) -> Conv<i64> {
    let (v, field_bits) = match raw {
        Raw::Int(v) => (u64::from(v), 32),
        Raw::Long(v) => (v, 64),
        _ => return Err(ConvError::Mismatch(raw.field())),
    };
    if bits == 64 {
        return Ok(v as i64);
    }
    if v < (1u64 << bits) {
        // Wrapped at the type's width (or a non-negative value): sign-extend the low bits.
        let shift = 64 - bits;
        return Ok(((v << shift) as i64) >> shift);
    }
    // Sign-extended to the field's width.
    let s = if field_bits == 32 {
        i64::from(v as u32 as i32)
    } else {
        v as i64
    };
    let min = -(1i64 << (bits - 1));
    let max = (1i64 << (bits - 1)) - 1;
    if (min..=max).contains(&s) {
        Ok(s)
    } else {
        Err(ConvError::Invalid(format!(
            "{v:#x} in {} fits no Int{bits} encoding",
            raw.field()
        )))
    }
}

/// An unsigned integer of `bits` from either integer field.
fn unsigned(raw: Raw<'_>, bits: u32) -> Conv<u64> {
    let v = match raw {
        Raw::Int(v) => u64::from(v),
        Raw::Long(v) => v,
        _ => return Err(ConvError::Mismatch(raw.field())),
    };
    if bits < 64 && v >= (1u64 << bits) {
        return Err(ConvError::Invalid(format!(
            "{v} is out of the UInt{bits} range"
        )));
    }
    Ok(v)
}

fn chunks<const N: usize>(
    bytes: &[u8],
    what: DataType,
) -> Conv<impl Iterator<Item = [u8; N]> + '_> {
    if !bytes.len().is_multiple_of(N) {
        return Err(ConvError::Invalid(format!(
            "{} bytes is not a whole number of {N}-byte {what:?} elements",
            bytes.len()
        )));
    }
    Ok(bytes.chunks_exact(N).map(|c| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    }))
}

/// Unpacks a little-endian array (Sparkplug 3.0 §6.4.17).
fn unpack_array(element: DataType, bytes: &[u8]) -> Conv<Vec<Value>> {
    use DataType as T;
    Ok(match element {
        T::Int8 => chunks::<1>(bytes, element)?
            .map(|b| Value::I64(i64::from(i8::from_le_bytes(b))))
            .collect(),
        T::Int16 => chunks::<2>(bytes, element)?
            .map(|b| Value::I64(i64::from(i16::from_le_bytes(b))))
            .collect(),
        T::Int32 => chunks::<4>(bytes, element)?
            .map(|b| Value::I64(i64::from(i32::from_le_bytes(b))))
            .collect(),
        T::Int64 | T::DateTime => chunks::<8>(bytes, element)?
            .map(|b| Value::I64(i64::from_le_bytes(b)))
            .collect(),
        T::UInt8 => chunks::<1>(bytes, element)?
            .map(|b| Value::U64(u64::from(b[0])))
            .collect(),
        T::UInt16 => chunks::<2>(bytes, element)?
            .map(|b| Value::U64(u64::from(u16::from_le_bytes(b))))
            .collect(),
        T::UInt32 => chunks::<4>(bytes, element)?
            .map(|b| Value::U64(u64::from(u32::from_le_bytes(b))))
            .collect(),
        T::UInt64 => chunks::<8>(bytes, element)?
            .map(|b| Value::U64(u64::from_le_bytes(b)))
            .collect(),
        T::Float => chunks::<4>(bytes, element)?
            .map(|b| Value::F64(f64::from(f32::from_le_bytes(b))))
            .collect(),
        T::Double => chunks::<8>(bytes, element)?
            .map(|b| Value::F64(f64::from_le_bytes(b)))
            .collect(),
        T::Boolean => {
            let (count, bits) = match bytes.split_first_chunk::<4>() {
                Some((count, bits)) => (u32::from_le_bytes(*count) as usize, bits),
                None => {
                    return Err(ConvError::Invalid(
                        "BooleanArray shorter than its 4-byte count".into(),
                    ));
                }
            };
            if bits.len() != count.div_ceil(8) {
                return Err(ConvError::Invalid(format!(
                    "BooleanArray of {count} values needs {} packed bytes, has {}",
                    count.div_ceil(8),
                    bits.len()
                )));
            }
            (0..count)
                .map(|i| Value::Bool(bits[i / 8] & (0x80 >> (i % 8)) != 0))
                .collect()
        }
        T::String => {
            if bytes.is_empty() {
                return Ok(Vec::new());
            }
            let Some(body) = bytes.strip_suffix(&[0]) else {
                return Err(ConvError::Invalid(
                    "StringArray does not end with a NUL terminator".into(),
                ));
            };
            body.split(|b| *b == 0)
                .map(|s| {
                    std::str::from_utf8(s)
                        .map(|s| Value::Str(s.to_owned()))
                        .map_err(|e| ConvError::Invalid(format!("StringArray element: {e}")))
                })
                .collect::<Conv<Vec<_>>>()?
        }
        other => return Err(ConvError::Invalid(format!("no array of {other:?}"))),
    })
}

/// Encodes `value` as `datatype`; `Ok(None)` for null.
fn encode_value(
    datatype: DataType,
    value: &Value,
) -> std::result::Result<Option<MetricValue>, String> {
    use DataType as T;
    if *value == Value::Null {
        return Ok(None);
    }
    let wrong = || format!("cannot encode {value:?} as {datatype:?}");
    let int = |bits: u32| -> std::result::Result<i64, String> {
        let v = match value {
            Value::I64(v) => *v,
            Value::U64(v) => i64::try_from(*v).map_err(|_| wrong())?,
            _ => return Err(wrong()),
        };
        let ok = bits == 64 || (-(1i64 << (bits - 1))..(1i64 << (bits - 1))).contains(&v);
        if ok {
            Ok(v)
        } else {
            Err(format!("{v} is out of the Int{bits} range"))
        }
    };
    let uint = |bits: u32| -> std::result::Result<u64, String> {
        let v = match value {
            Value::U64(v) => *v,
            Value::I64(v) => u64::try_from(*v).map_err(|_| wrong())?,
            _ => return Err(wrong()),
        };
        if bits < 64 && v >= (1u64 << bits) {
            Err(format!("{v} is out of the UInt{bits} range"))
        } else {
            Ok(v)
        }
    };
    Ok(Some(match datatype {
        // Sign-extended to 32 bits (two's complement), as Tahu Java and C do.
        T::Int8 => MetricValue::IntValue(int(8)? as i32 as u32),
        T::Int16 => MetricValue::IntValue(int(16)? as i32 as u32),
        T::Int32 => MetricValue::IntValue(int(32)? as i32 as u32),
        T::Int64 | T::DateTime => MetricValue::LongValue(int(64)? as u64),
        T::UInt8 => MetricValue::IntValue(uint(8)? as u32),
        T::UInt16 => MetricValue::IntValue(uint(16)? as u32),
        T::UInt32 => MetricValue::IntValue(uint(32)? as u32),
        T::UInt64 => MetricValue::LongValue(uint(64)?),
        T::Float => match value {
            Value::F64(v) => MetricValue::FloatValue(*v as f32),
            _ => return Err(wrong()),
        },
        T::Double => match value {
            Value::F64(v) => MetricValue::DoubleValue(*v),
            _ => return Err(wrong()),
        },
        T::Boolean => match value {
            Value::Bool(v) => MetricValue::BooleanValue(*v),
            _ => return Err(wrong()),
        },
        T::String | T::Text | T::Uuid => match value {
            Value::Str(v) => MetricValue::StringValue(v.clone()),
            _ => return Err(wrong()),
        },
        T::Bytes | T::File => match value {
            Value::Bytes(v) => MetricValue::BytesValue(v.clone()),
            _ => return Err(wrong()),
        },
        array => match (value, array.element()) {
            (Value::Array(items), Some(element)) => {
                MetricValue::BytesValue(pack_array(element, items)?)
            }
            _ => return Err(wrong()),
        },
    }))
}

/// Packs an array's elements (the inverse of [`unpack_array`]).
fn pack_array(element: DataType, items: &[Value]) -> std::result::Result<Vec<u8>, String> {
    use DataType as T;
    let mut out = Vec::new();
    if element == T::Boolean {
        let count = u32::try_from(items.len()).map_err(|_| "BooleanArray too long".to_owned())?;
        out.extend_from_slice(&count.to_le_bytes());
        out.resize(4 + items.len().div_ceil(8), 0);
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::Bool(true) => out[4 + i / 8] |= 0x80 >> (i % 8),
                Value::Bool(false) => {}
                other => return Err(format!("BooleanArray element {other:?}")),
            }
        }
        return Ok(out);
    }
    for item in items {
        let one = encode_value(element, item)?;
        match (element, one) {
            (T::Int8 | T::UInt8, Some(MetricValue::IntValue(v))) => out.push(v as u8),
            (T::Int16 | T::UInt16, Some(MetricValue::IntValue(v))) => {
                out.extend_from_slice(&(v as u16).to_le_bytes());
            }
            (T::Int32 | T::UInt32, Some(MetricValue::IntValue(v))) => {
                out.extend_from_slice(&v.to_le_bytes());
            }
            (_, Some(MetricValue::LongValue(v))) => out.extend_from_slice(&v.to_le_bytes()),
            (_, Some(MetricValue::FloatValue(v))) => out.extend_from_slice(&v.to_le_bytes()),
            (_, Some(MetricValue::DoubleValue(v))) => out.extend_from_slice(&v.to_le_bytes()),
            (T::String, Some(MetricValue::StringValue(s))) => {
                if s.contains('\0') {
                    return Err("StringArray element holds a NUL".into());
                }
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
            (_, other) => return Err(format!("cannot pack {other:?} in a {element:?} array")),
        }
    }
    Ok(out)
}

// --- JSON rendering of DataSet and Template values -------------------------------------------

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_opt_str(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.push_str("null"),
    }
}

fn json_type(out: &mut String, code: Option<u32>) {
    match code.map(|c| (c, DataType::from_code(c))) {
        Some((_, Some(t))) => json_str(out, &format!("{t:?}")),
        Some((c, None)) => {
            let _ = write!(out, "{c}");
        }
        None => out.push_str("null"),
    }
}

/// Renders a converted value; conversion failures become `{"invalid": "..."}`.
fn json_value(out: &mut String, value: Conv<Value>) {
    match value {
        Ok(v) => json_plain(out, &v),
        Err(e) => {
            out.push_str("{\"invalid\":");
            json_str(out, &e.detail());
            out.push('}');
        }
    }
}

fn json_plain(out: &mut String, v: &Value) {
    match v {
        Value::I64(v) => {
            let _ = write!(out, "{v}");
        }
        Value::U64(v) => {
            let _ = write!(out, "{v}");
        }
        // Debug keeps a decimal point or exponent, so floats stay floats.
        Value::F64(v) if v.is_finite() => {
            let _ = write!(out, "{v:?}");
        }
        Value::F64(_) | Value::Null => out.push_str("null"),
        Value::Bool(v) => out.push_str(if *v { "true" } else { "false" }),
        Value::Str(s) => json_str(out, s),
        Value::Bytes(b) => {
            out.push('"');
            for byte in b {
                let _ = write!(out, "{byte:02x}");
            }
            out.push('"');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_plain(out, item);
            }
            out.push(']');
        }
        Value::Unsupported { json, .. } => out.push_str(json),
    }
}

fn typed(code: Option<u32>, raw: Raw<'_>) -> Conv<Value> {
    match code {
        Some(c) => match DataType::from_code(c) {
            Some(t) => convert(t, raw),
            None => Err(ConvError::Invalid(format!("unknown data type {c}"))),
        },
        None if matches!(raw, Raw::None) => Ok(Value::Null),
        None => Err(ConvError::Invalid("no data type".into())),
    }
}

/// `{"columns":[..],"types":[..],"rows":[[..],..]}`.
fn dataset_json(ds: &DataSet) -> String {
    let mut out = String::from("{\"columns\":[");
    for (i, c) in ds.columns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_str(&mut out, c);
    }
    out.push_str("],\"types\":[");
    for (i, t) in ds.types.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_type(&mut out, Some(*t));
    }
    out.push_str("],\"rows\":[");
    for (r, row) in ds.rows.iter().enumerate() {
        if r > 0 {
            out.push(',');
        }
        out.push('[');
        for (i, cell) in row.elements.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let raw = match &cell.value {
                None => Raw::None,
                Some(DataSetValueValue::IntValue(v)) => Raw::Int(*v),
                Some(DataSetValueValue::LongValue(v)) => Raw::Long(*v),
                Some(DataSetValueValue::FloatValue(v)) => Raw::Float(*v),
                Some(DataSetValueValue::DoubleValue(v)) => Raw::Double(*v),
                Some(DataSetValueValue::BooleanValue(v)) => Raw::Bool(*v),
                Some(DataSetValueValue::StringValue(v)) => Raw::Str(v),
                Some(DataSetValueValue::ExtensionValue(_)) => Raw::Extension,
            };
            json_value(&mut out, typed(ds.types.get(i).copied(), raw));
        }
        out.push(']');
    }
    out.push_str("]}");
    out
}

/// `{"version":..,"template_ref":..,"is_definition":..,"parameters":[..],"metrics":[..]}`.
fn template_json(t: &Template) -> String {
    let mut out = String::from("{\"version\":");
    json_opt_str(&mut out, t.version.as_deref());
    out.push_str(",\"template_ref\":");
    json_opt_str(&mut out, t.template_ref.as_deref());
    out.push_str(",\"is_definition\":");
    out.push_str(match t.is_definition {
        Some(true) => "true",
        Some(false) => "false",
        None => "null",
    });
    out.push_str(",\"parameters\":[");
    for (i, p) in t.parameters.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        json_opt_str(&mut out, p.name.as_deref());
        out.push_str(",\"type\":");
        json_type(&mut out, p.r#type);
        out.push_str(",\"value\":");
        let raw = match &p.value {
            None => Raw::None,
            Some(ParameterValue::IntValue(v)) => Raw::Int(*v),
            Some(ParameterValue::LongValue(v)) => Raw::Long(*v),
            Some(ParameterValue::FloatValue(v)) => Raw::Float(*v),
            Some(ParameterValue::DoubleValue(v)) => Raw::Double(*v),
            Some(ParameterValue::BooleanValue(v)) => Raw::Bool(*v),
            Some(ParameterValue::StringValue(v)) => Raw::Str(v),
            Some(ParameterValue::ExtensionValue(_)) => Raw::Extension,
        };
        json_value(&mut out, typed(p.r#type, raw));
        out.push('}');
    }
    out.push_str("],\"metrics\":[");
    for (i, m) in t.metrics.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        json_opt_str(&mut out, m.name.as_deref());
        out.push_str(",\"datatype\":");
        json_type(&mut out, m.datatype);
        out.push_str(",\"value\":");
        let value = match m.datatype.map(DataType::from_code) {
            Some(Some(t)) => metric_value(m, t, "").map_err(|e| ConvError::Invalid(e.to_string())),
            Some(None) => Err(ConvError::Invalid("unknown data type".into())),
            None if m.value.is_none() => Ok(Value::Null),
            None => Err(ConvError::Invalid("no data type".into())),
        };
        json_value(&mut out, value);
        out.push('}');
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(datatype: DataType, value: MetricValue) -> Metric {
        Metric {
            name: Some("m".into()),
            datatype: Some(datatype.code()),
            value: Some(value),
            ..Metric::default()
        }
    }

    fn val(datatype: DataType, value: MetricValue) -> Result<Value> {
        metric_value(&m(datatype, value), datatype, "m")
    }

    #[test]
    fn datatype_codes_round_trip() {
        for code in 1..=34 {
            assert_eq!(DataType::from_code(code).unwrap().code(), code);
        }
        assert_eq!(DataType::from_code(0), None);
        assert_eq!(DataType::from_code(35), None);
        assert_eq!(DataType::Uuid.code(), 15);
        assert_eq!(DataType::Template.code(), 19);
        assert_eq!(DataType::DateTimeArray.code(), 34);
    }

    #[test]
    fn signed_ints_accept_wrapped_and_sign_extended_forms() {
        use MetricValue::{IntValue, LongValue};
        let cases = [
            (DataType::Int8, IntValue(0xFF), -1),
            (DataType::Int8, IntValue(0xFFFF_FFFF), -1),
            (DataType::Int8, IntValue(0x80), -128),
            (DataType::Int8, IntValue(0x7F), 127),
            (DataType::Int16, IntValue(0x8000), -32768),
            (DataType::Int16, IntValue(0xFFFF_8000), -32768),
            (DataType::Int32, IntValue(0x8000_0000), i64::from(i32::MIN)),
            (DataType::Int32, LongValue(u64::MAX), -1),
            (DataType::Int32, LongValue(0xFFFF_FFFF), -1),
            (DataType::Int64, LongValue(u64::MAX), -1),
            (DataType::Int64, LongValue(1 << 63), i64::MIN),
        ];
        for (dt, raw, want) in cases {
            assert_eq!(
                val(dt, raw.clone()).unwrap(),
                Value::I64(want),
                "{dt:?} {raw:?}"
            );
        }
    }

    #[test]
    fn signed_ints_out_of_both_forms_are_rejected() {
        for (dt, raw) in [
            (DataType::Int8, MetricValue::IntValue(0x180)),
            (DataType::Int8, MetricValue::IntValue(0xFFFF_FF00)),
            (DataType::Int16, MetricValue::LongValue(1 << 40)),
        ] {
            assert!(matches!(
                val(dt, raw),
                Err(SparkplugError::InvalidValue { .. })
            ));
        }
    }

    #[test]
    fn unsigned_ints_are_range_checked() {
        assert_eq!(
            val(DataType::UInt8, MetricValue::IntValue(255)).unwrap(),
            Value::U64(255)
        );
        assert!(val(DataType::UInt8, MetricValue::IntValue(256)).is_err());
        assert!(val(DataType::UInt16, MetricValue::IntValue(65536)).is_err());
        assert_eq!(
            val(
                DataType::UInt32,
                MetricValue::LongValue(u64::from(u32::MAX))
            )
            .unwrap(),
            Value::U64(u64::from(u32::MAX))
        );
        assert!(val(DataType::UInt32, MetricValue::LongValue(1 << 32)).is_err());
        assert_eq!(
            val(DataType::UInt64, MetricValue::LongValue(u64::MAX)).unwrap(),
            Value::U64(u64::MAX)
        );
        assert!(val(DataType::DateTime, MetricValue::LongValue(u64::MAX)).is_err());
    }

    #[test]
    fn wrong_field_is_a_mismatch() {
        let err = val(DataType::Boolean, MetricValue::StringValue("x".into())).unwrap_err();
        assert_eq!(
            err,
            SparkplugError::ValueMismatch {
                metric: "m".into(),
                datatype: DataType::Boolean,
                field: "string_value"
            }
        );
        assert!(val(DataType::Int32, MetricValue::FloatValue(1.0)).is_err());
        assert!(val(DataType::String, MetricValue::BytesValue(vec![])).is_err());
        assert!(val(DataType::PropertySet, MetricValue::IntValue(1)).is_err());
        assert!(
            val(
                DataType::Int32,
                MetricValue::ExtensionValue(Default::default())
            )
            .is_err()
        );
    }

    #[test]
    fn null_and_missing_values() {
        let mut metric = m(DataType::Int32, MetricValue::IntValue(5));
        metric.is_null = Some(true);
        assert_eq!(
            metric_value(&metric, DataType::Int32, "m").unwrap(),
            Value::Null
        );
        metric.is_null = None;
        metric.value = None;
        assert_eq!(
            metric_value(&metric, DataType::Int32, "m").unwrap(),
            Value::Null
        );
    }

    #[test]
    fn datatype_lookup_errors() {
        let mut metric = Metric::default();
        assert!(matches!(
            metric_datatype(&metric, None, "m"),
            Err(SparkplugError::MissingDataType { .. })
        ));
        assert_eq!(
            metric_datatype(&metric, Some(DataType::Float), "m").unwrap(),
            DataType::Float
        );
        metric.datatype = Some(99);
        assert_eq!(
            metric_datatype(&metric, Some(DataType::Float), "m"),
            Err(SparkplugError::UnknownDataType {
                metric: "m".into(),
                code: 99
            })
        );
    }

    #[test]
    fn malformed_arrays_are_rejected() {
        let bad = [
            (DataType::Int16Array, vec![1u8, 2, 3]),
            (DataType::DoubleArray, vec![0; 7]),
            (DataType::BooleanArray, vec![1, 0]),
            (DataType::BooleanArray, vec![9, 0, 0, 0, 0xFF]),
            (DataType::StringArray, b"ab".to_vec()),
            (DataType::StringArray, vec![0xFF, 0]),
        ];
        for (dt, bytes) in bad {
            assert!(
                matches!(
                    val(dt, MetricValue::BytesValue(bytes.clone())),
                    Err(SparkplugError::InvalidValue { .. })
                ),
                "{dt:?} {bytes:?}"
            );
        }
        assert_eq!(
            val(DataType::StringArray, MetricValue::BytesValue(vec![])).unwrap(),
            Value::Array(vec![])
        );
    }

    #[test]
    fn boolean_array_packs_msb_first() {
        let bits = [
            false, false, true, true, false, true, false, false, true, true, false, true,
        ];
        let value = Value::Array(bits.iter().map(|b| Value::Bool(*b)).collect());
        let metric = new_metric(Some("b"), None, DataType::BooleanArray, &value, None).unwrap();
        assert_eq!(
            metric.value,
            Some(MetricValue::BytesValue(vec![12, 0, 0, 0, 0x34, 0xD0]))
        );
        assert_eq!(
            metric_value(&metric, DataType::BooleanArray, "b").unwrap(),
            value
        );
    }

    #[test]
    fn encoding_sign_extends_and_checks_ranges() {
        let metric =
            new_metric(Some("x"), Some(3), DataType::Int8, &Value::I64(-1), Some(9)).unwrap();
        assert_eq!(metric.value, Some(MetricValue::IntValue(0xFFFF_FFFF)));
        assert_eq!((metric.alias, metric.timestamp), (Some(3), Some(9)));
        for (dt, v) in [
            (DataType::Int8, Value::I64(128)),
            (DataType::UInt8, Value::I64(-1)),
            (DataType::UInt16, Value::U64(70_000)),
            (DataType::Int64, Value::U64(u64::MAX)),
            (DataType::Boolean, Value::I64(1)),
            (DataType::DataSet, Value::Str("x".into())),
            (
                DataType::StringArray,
                Value::Array(vec![Value::Str("a\0b".into())]),
            ),
        ] {
            assert!(
                matches!(
                    new_metric(Some("x"), None, dt, &v, None),
                    Err(SparkplugError::InvalidValue { .. })
                ),
                "{dt:?} {v:?}"
            );
        }
        let null = new_metric(Some("n"), None, DataType::Double, &Value::Null, None).unwrap();
        assert_eq!((null.is_null, null.value), (Some(true), None));
    }

    #[test]
    fn dataset_and_template_are_kept_as_json() {
        let ds = DataSet {
            num_of_columns: Some(2),
            columns: vec!["a".into(), "b\"".into()],
            types: vec![DataType::Int8.code(), DataType::Boolean.code()],
            rows: vec![super::super::proto::Row {
                elements: vec![
                    super::super::proto::DataSetValue {
                        value: Some(DataSetValueValue::IntValue(0xFF)),
                    },
                    super::super::proto::DataSetValue {
                        value: Some(DataSetValueValue::StringValue("no".into())),
                    },
                ],
            }],
        };
        let v = val(DataType::DataSet, MetricValue::DatasetValue(ds)).unwrap();
        assert_eq!(
            v,
            Value::Unsupported {
                datatype: DataType::DataSet,
                json: r#"{"columns":["a","b\""],"types":["Int8","Boolean"],"rows":[[-1,{"invalid":"value in string_value"}]]}"#.into()
            }
        );
        let t = Template {
            version: None,
            metrics: vec![m(DataType::Double, MetricValue::DoubleValue(2.0))],
            parameters: vec![],
            template_ref: Some("T".into()),
            is_definition: Some(true),
        };
        let v = val(DataType::Template, MetricValue::TemplateValue(t)).unwrap();
        assert_eq!(
            v,
            Value::Unsupported {
                datatype: DataType::Template,
                json: r#"{"version":null,"template_ref":"T","is_definition":true,"parameters":[],"metrics":[{"name":"m","datatype":"Double","value":2.0}]}"#.into()
            }
        );
    }

    #[test]
    fn garbage_bytes_do_not_decode() {
        assert!(matches!(
            decode_payload(&[0x12, 0x05, 0x01]),
            Err(SparkplugError::Decode(_))
        ));
        assert_eq!(decode_payload(&[]).unwrap(), Payload::default());
    }
}
