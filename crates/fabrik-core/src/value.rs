//! Typed values and their quality.

use serde::{Deserialize, Serialize};

use crate::CoreError;

/// One typed value of a field. The types are those of InfluxDB line protocol and of
/// industrial protocols alike: float, signed and unsigned integer, boolean, string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// A boolean (`true`/`false`).
    Bool(bool),
    /// A signed 64-bit integer.
    I64(i64),
    /// An unsigned 64-bit integer.
    U64(u64),
    /// A 64-bit float.
    F64(f64),
    /// UTF-8 text.
    Str(String),
}

impl Value {
    /// The type of this value.
    pub fn field_type(&self) -> FieldType {
        match self {
            Self::F64(_) => FieldType::Float,
            Self::I64(_) => FieldType::Integer,
            Self::U64(_) => FieldType::UInteger,
            Self::Bool(_) => FieldType::Boolean,
            Self::Str(_) => FieldType::String,
        }
    }
}

/// The type of a field column; once a field has a type, values of another type are rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// f64.
    Float,
    /// i64.
    Integer,
    /// u64.
    UInteger,
    /// bool.
    Boolean,
    /// UTF-8 string.
    String,
}

impl FieldType {
    /// The lower-case name used in errors and the catalog.
    pub fn name(self) -> &'static str {
        match self {
            Self::Float => "float",
            Self::Integer => "integer",
            Self::UInteger => "uinteger",
            Self::Boolean => "boolean",
            Self::String => "string",
        }
    }
}

impl std::fmt::Display for FieldType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How far a value can be trusted, with OPC UA's three severities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    /// The value is valid.
    #[default]
    Good,
    /// The value may be usable but its source flagged a doubt (stale, out of range, ...).
    Uncertain,
    /// The value is not usable (sensor failure, communication error, Modbus exception, ...).
    Bad,
}

impl Quality {
    /// Maps an OPC UA `StatusCode`: its two top bits are the severity (00 good, 01 uncertain,
    /// 10 or 11 bad).
    pub fn from_opcua_status(code: u32) -> Self {
        match code >> 30 {
            0 => Self::Good,
            1 => Self::Uncertain,
            _ => Self::Bad,
        }
    }

    /// The lower-case name stored in the `_quality` column.
    pub fn name(self) -> &'static str {
        match self {
            Self::Good => "good",
            Self::Uncertain => "uncertain",
            Self::Bad => "bad",
        }
    }

    /// Parses a stored quality name.
    pub fn parse(text: &str) -> Result<Self, CoreError> {
        match text {
            "good" => Ok(Self::Good),
            "uncertain" => Ok(Self::Uncertain),
            "bad" => Ok(Self::Bad),
            other => Err(CoreError::InvalidQuality(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcua_status_codes_map_to_quality() {
        assert_eq!(Quality::from_opcua_status(0), Quality::Good);
        assert_eq!(Quality::from_opcua_status(0x4000_0000), Quality::Uncertain);
        assert_eq!(Quality::from_opcua_status(0x8000_0000), Quality::Bad);
        assert_eq!(Quality::from_opcua_status(0x8034_0000), Quality::Bad);
    }

    #[test]
    fn values_deserialise_from_plain_json() {
        let v: Vec<Value> = serde_json::from_str(r#"[1.5, -3, true, "on"]"#).expect("json");
        assert_eq!(
            v,
            vec![
                Value::F64(1.5),
                Value::I64(-3),
                Value::Bool(true),
                Value::Str("on".into())
            ]
        );
        assert_eq!(Quality::parse("bad"), Ok(Quality::Bad));
        assert!(Quality::parse("meh").is_err());
    }
}
