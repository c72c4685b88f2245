//! Fabrik's device connectivity: the MQTT device endpoint ([`mqtt`]), the Modbus TCP poller
//! ([`modbus`]), the OPC UA client ([`opcua`]), Sparkplug B ([`sparkplug`]), normalisation mappings
//! ([`mapping`]), the ingest path that turns raw messages into stored rows or dead letters
//! ([`ingest`]), the trace spans of messages that carry a trace context ([`message_trace`]), and
//! writes to the points operators may set ([`setpoint`], through [`modbus::ModbusWriter`] and
//! [`opcua::OpcUaWriter`]).
//!
//! This crate must not know about the store or the registry: it reaches them through the
//! [`ingest::RecordSink`], [`ingest::DeviceDirectory`] and [`mqtt::MqttHooks`] traits, which the
//! binary implements.

pub mod client;
mod client_wire;
pub mod ingest;
pub mod mapping;
pub mod message_trace;
pub mod modbus;
pub mod mqtt;
pub mod opcua;
pub mod point_errors;
pub mod setpoint;
pub mod sparkplug;

/// Errors of the connectivity layer.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TLS set-up failed (certificate or key files, CA).
    #[error("MQTT TLS: {0}")]
    Tls(String),
    /// A listener could not be bound.
    #[error("cannot listen on {address} ({key}): {source}")]
    Bind {
        /// The address.
        address: String,
        /// The configuration key that set it.
        key: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A mapping or ACL rule in the configuration is invalid.
    #[error("{0}")]
    Config(String),
    /// The Modbus poller's configuration or a device failed.
    #[error(transparent)]
    Modbus(#[from] modbus::ModbusError),
    /// The OPC UA client's configuration or a server failed.
    #[error(transparent)]
    OpcUa(#[from] opcua::OpcUaError),
    /// A Sparkplug B topic or payload could not be decoded.
    #[error(transparent)]
    Sparkplug(#[from] sparkplug::SparkplugError),
}
