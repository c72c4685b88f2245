//! Hand-written prost messages for Eclipse Tahu's `sparkplug_b.proto` (proto2, package
//! `org.eclipse.tahu.protobuf`); field numbers follow the official file, no protoc involved.
//!
//! The nested messages of `Payload` (`Payload.Metric`, `Payload.DataSet`, ...) are flattened to
//! this module's top level: names do not reach the wire. The `*Extension` messages only carry
//! proto2 extension ranges, which prost does not model: they decode as empty messages.

/// `Payload`: one Sparkplug B message body.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// Timestamp at message sending time (ms since the Unix epoch).
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    /// The metrics.
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// Sequence number (0..=255).
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    /// UUID tracking the message's schema.
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    /// Opaque body bypassing the metrics.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// `Payload.Metric`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    /// Metric name (births; optional in data messages when an alias is used).
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Metric alias, bound to the name by the birth.
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    /// Acquisition timestamp (ms since the Unix epoch).
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    /// Sparkplug data type code (see [`super::payload::DataType`]).
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    /// Historical value: must not update the live value.
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    /// Transient value: not to be stored.
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    /// The value is null.
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    /// Metadata (bytes/file details).
    #[prost(message, optional, tag = "8")]
    pub metadata: Option<MetaData>,
    /// Properties (engineering units, quality...).
    #[prost(message, optional, tag = "9")]
    pub properties: Option<PropertySet>,
    /// The value.
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15, 16, 17, 18, 19")]
    pub value: Option<MetricValue>,
}

/// `Payload.Metric.value` (oneof).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricValue {
    /// Int8, Int16, Int32, UInt8, UInt16, UInt32.
    #[prost(uint32, tag = "10")]
    IntValue(u32),
    /// Int64, UInt64, DateTime (and UInt32 by some encoders).
    #[prost(uint64, tag = "11")]
    LongValue(u64),
    /// Float.
    #[prost(float, tag = "12")]
    FloatValue(f32),
    /// Double.
    #[prost(double, tag = "13")]
    DoubleValue(f64),
    /// Boolean.
    #[prost(bool, tag = "14")]
    BooleanValue(bool),
    /// String, Text, UUID.
    #[prost(string, tag = "15")]
    StringValue(String),
    /// Bytes, File and the array types.
    #[prost(bytes = "vec", tag = "16")]
    BytesValue(Vec<u8>),
    /// DataSet.
    #[prost(message, tag = "17")]
    DatasetValue(DataSet),
    /// Template.
    #[prost(message, tag = "18")]
    TemplateValue(Template),
    /// Extension (proto2 extensions, not modelled).
    #[prost(message, tag = "19")]
    ExtensionValue(Extension),
}

/// Any of the `*Extension` messages: only proto2 extension ranges, no fields of their own.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Extension {}

/// `Payload.MetaData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetaData {
    /// Multi-part bytes.
    #[prost(bool, optional, tag = "1")]
    pub is_multi_part: Option<bool>,
    /// Content (media) type.
    #[prost(string, optional, tag = "2")]
    pub content_type: Option<String>,
    /// Size in bytes.
    #[prost(uint64, optional, tag = "3")]
    pub size: Option<u64>,
    /// Multi-part sequence number.
    #[prost(uint64, optional, tag = "4")]
    pub seq: Option<u64>,
    /// File name.
    #[prost(string, optional, tag = "5")]
    pub file_name: Option<String>,
    /// File type.
    #[prost(string, optional, tag = "6")]
    pub file_type: Option<String>,
    /// MD5 of the data.
    #[prost(string, optional, tag = "7")]
    pub md5: Option<String>,
    /// Free-form description.
    #[prost(string, optional, tag = "8")]
    pub description: Option<String>,
}

/// `Payload.PropertySet`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertySet {
    /// Property names.
    #[prost(string, repeated, tag = "1")]
    pub keys: Vec<String>,
    /// Property values, parallel to `keys`.
    #[prost(message, repeated, tag = "2")]
    pub values: Vec<PropertyValue>,
}

/// `Payload.PropertySetList`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertySetList {
    /// The property sets.
    #[prost(message, repeated, tag = "1")]
    pub propertyset: Vec<PropertySet>,
}

/// `Payload.PropertyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertyValue {
    /// Data type code.
    #[prost(uint32, optional, tag = "1")]
    pub r#type: Option<u32>,
    /// The value is null.
    #[prost(bool, optional, tag = "2")]
    pub is_null: Option<bool>,
    /// The value.
    #[prost(oneof = "PropertyValueValue", tags = "3, 4, 5, 6, 7, 8, 9, 10, 11")]
    pub value: Option<PropertyValueValue>,
}

/// `Payload.PropertyValue.value` (oneof).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum PropertyValueValue {
    /// 8-32 bit integers.
    #[prost(uint32, tag = "3")]
    IntValue(u32),
    /// 64 bit integers, DateTime.
    #[prost(uint64, tag = "4")]
    LongValue(u64),
    /// Float.
    #[prost(float, tag = "5")]
    FloatValue(f32),
    /// Double.
    #[prost(double, tag = "6")]
    DoubleValue(f64),
    /// Boolean.
    #[prost(bool, tag = "7")]
    BooleanValue(bool),
    /// String, Text.
    #[prost(string, tag = "8")]
    StringValue(String),
    /// Nested property set.
    #[prost(message, tag = "9")]
    PropertysetValue(PropertySet),
    /// List of property sets.
    #[prost(message, tag = "10")]
    PropertysetsValue(PropertySetList),
    /// Extension (not modelled).
    #[prost(message, tag = "11")]
    ExtensionValue(Extension),
}

/// `Payload.DataSet`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DataSet {
    /// Number of columns.
    #[prost(uint64, optional, tag = "1")]
    pub num_of_columns: Option<u64>,
    /// Column names.
    #[prost(string, repeated, tag = "2")]
    pub columns: Vec<String>,
    /// Column data type codes.
    #[prost(uint32, repeated, packed = "false", tag = "3")]
    pub types: Vec<u32>,
    /// Rows.
    #[prost(message, repeated, tag = "4")]
    pub rows: Vec<Row>,
}

/// `Payload.DataSet.Row`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Row {
    /// Cells, one per column.
    #[prost(message, repeated, tag = "1")]
    pub elements: Vec<DataSetValue>,
}

/// `Payload.DataSet.DataSetValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DataSetValue {
    /// The value.
    #[prost(oneof = "DataSetValueValue", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub value: Option<DataSetValueValue>,
}

/// `Payload.DataSet.DataSetValue.value` (oneof).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum DataSetValueValue {
    /// 8-32 bit integers.
    #[prost(uint32, tag = "1")]
    IntValue(u32),
    /// 64 bit integers, DateTime.
    #[prost(uint64, tag = "2")]
    LongValue(u64),
    /// Float.
    #[prost(float, tag = "3")]
    FloatValue(f32),
    /// Double.
    #[prost(double, tag = "4")]
    DoubleValue(f64),
    /// Boolean.
    #[prost(bool, tag = "5")]
    BooleanValue(bool),
    /// String, Text.
    #[prost(string, tag = "6")]
    StringValue(String),
    /// Extension (not modelled).
    #[prost(message, tag = "7")]
    ExtensionValue(Extension),
}

/// `Payload.Template`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Template {
    /// Template version.
    #[prost(string, optional, tag = "1")]
    pub version: Option<String>,
    /// Member metrics.
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// Parameters.
    #[prost(message, repeated, tag = "3")]
    pub parameters: Vec<Parameter>,
    /// The definition this instance refers to.
    #[prost(string, optional, tag = "4")]
    pub template_ref: Option<String>,
    /// This is a definition, not an instance.
    #[prost(bool, optional, tag = "5")]
    pub is_definition: Option<bool>,
}

/// `Payload.Template.Parameter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Parameter {
    /// Parameter name.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Data type code.
    #[prost(uint32, optional, tag = "2")]
    pub r#type: Option<u32>,
    /// The value.
    #[prost(oneof = "ParameterValue", tags = "3, 4, 5, 6, 7, 8, 9")]
    pub value: Option<ParameterValue>,
}

/// `Payload.Template.Parameter.value` (oneof).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ParameterValue {
    /// 8-32 bit integers.
    #[prost(uint32, tag = "3")]
    IntValue(u32),
    /// 64 bit integers, DateTime.
    #[prost(uint64, tag = "4")]
    LongValue(u64),
    /// Float.
    #[prost(float, tag = "5")]
    FloatValue(f32),
    /// Double.
    #[prost(double, tag = "6")]
    DoubleValue(f64),
    /// Boolean.
    #[prost(bool, tag = "7")]
    BooleanValue(bool),
    /// String, Text.
    #[prost(string, tag = "8")]
    StringValue(String),
    /// Extension (not modelled).
    #[prost(message, tag = "9")]
    ExtensionValue(Extension),
}
