//! Sparkplug B (Eclipse Sparkplug 3.0 / Tahu `sparkplug_b.proto`) for the MQTT ingest path:
//! topic parsing ([`topic`]), payload decoding and encoding with value conversion
//! ([`payload`], messages in [`proto`]), the per-edge-node session state machine that
//! resolves aliases, checks sequence numbers and asks for rebirths ([`session`]), and the
//! commands that write to edge nodes' metrics ([`command`]).
//!
//! All but [`command`] is pure (no I/O, no clock): the caller hands in the MQTT topic, the
//! payload bytes and the receive time, and publishes whatever NCMD the output asks for.

pub mod command;
pub mod payload;
pub mod proto;
pub mod session;
pub mod topic;

pub use payload::{
    DataType, Value, decode_payload, encode_payload, metric_datatype, metric_value, new_metric,
};
pub use session::{
    DeviceIdFn, Event, NodeSession, RebirthReason, RejectedMetric, Sample, SessionConfig,
    SparkplugHost, Stale, Step, default_device_id, rebirth_payload,
};
pub use topic::{MessageType, SparkplugTopic};

/// Errors of the Sparkplug B layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SparkplugError {
    /// The MQTT topic is not a valid Sparkplug B topic.
    #[error("invalid Sparkplug topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The topic as received.
        topic: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The payload is not a valid `sparkplug_b.proto` Payload.
    #[error("invalid Sparkplug payload: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A metric carries a data type code this layer does not know.
    #[error("metric {metric:?}: unknown Sparkplug data type {code}")]
    UnknownDataType {
        /// Metric name (or `alias N`).
        metric: String,
        /// The code.
        code: u32,
    },
    /// Neither the metric nor its birth gives a data type.
    #[error("metric {metric:?}: no data type (neither in the message nor in the birth)")]
    MissingDataType {
        /// Metric name (or `alias N`).
        metric: String,
    },
    /// The value field does not fit the data type.
    #[error("metric {metric:?}: {datatype:?} cannot be carried in {field}")]
    ValueMismatch {
        /// Metric name (or `alias N`).
        metric: String,
        /// The declared data type.
        datatype: DataType,
        /// The protobuf value field found.
        field: &'static str,
    },
    /// A metric cannot be tied to a birth definition (no name, unknown alias).
    #[error("metric {metric:?}: {reason}")]
    Unresolved {
        /// Metric name (or `alias N`).
        metric: String,
        /// What is missing.
        reason: String,
    },
    /// The value is out of the data type's range, or an array's bytes are malformed.
    #[error("metric {metric:?}: invalid {datatype:?} value: {detail}")]
    InvalidValue {
        /// Metric name (or `alias N`).
        metric: String,
        /// The declared data type.
        datatype: DataType,
        /// What is wrong.
        detail: String,
    },
    /// A write names a device that no writable metric or birth names.
    #[error(
        "no Sparkplug edge node or device `{0}` is known (neither a [[sparkplug.setpoints]] entry nor a birth names it)"
    )]
    UnknownDevice(String),
    /// A write names a metric the configuration does not declare writable.
    #[error(
        "device `{device}` metric `{metric}` is not writable: only metrics listed in [[sparkplug.setpoints]] are"
    )]
    NotWritable {
        /// The Sparkplug id.
        device: String,
        /// The metric.
        metric: String,
    },
    /// The node's current birth does not declare the metric being written.
    #[error("the birth of `{device}` declares no metric `{metric}`: nothing was sent")]
    UndeclaredMetric {
        /// The Sparkplug id.
        device: String,
        /// The metric.
        metric: String,
    },
    /// The value is not one the metric may take; nothing was sent.
    #[error("device `{device}` metric `{metric}`: {reason}")]
    InvalidSetpoint {
        /// The Sparkplug id.
        device: String,
        /// The metric.
        metric: String,
        /// Why.
        reason: String,
    },
    /// The node or device is not online; nothing was sent.
    #[error("{0}")]
    Offline(String),
    /// The command could not be published; nothing was sent.
    #[error("{0}")]
    NotSent(String),
    /// Another write of the metric still waits for its report; nothing was sent.
    #[error("{0}")]
    CommandBusy(String),
    /// The command was published but the node reported no value of the metric in time.
    #[error(
        "edge node reported no value of `{device}` metric `{metric}` within {waited_ms} ms of the command: whether it applied it is unknown (Sparkplug commands are not acknowledged)"
    )]
    NoReport {
        /// The Sparkplug id.
        device: String,
        /// The metric.
        metric: String,
        /// How long it waited.
        waited_ms: u64,
    },
}

/// Result alias of this module.
pub type Result<T, E = SparkplugError> = std::result::Result<T, E>;
