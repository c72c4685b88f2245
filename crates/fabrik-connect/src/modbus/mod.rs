//! The Modbus TCP poller: reads holding and input registers, coils and discrete inputs from
//! configured devices on fixed intervals and sends decoded [`Reading`]s into a bounded channel.
//!
//! The path, top to bottom: [`config`] (raw TOML shapes) → [`plan`] (validated devices, points
//! grouped into contiguous read requests; every error reported at once) → [`poller`] (one task
//! per device, one `tokio::time::Interval` per map, reconnect with capped exponential backoff)
//! → [`decode`] (registers to typed values) → `mpsc::Sender<Reading>`.
//!
//! This module must not know where readings go (store, MQTT, rules): it only fills the channel.
//! It writes to a device only what [`write::ModbusWriter`] is asked to set on a point declared
//! `writable` (decision 0090), through the device's own task.

/// The configuration shapes live in `fabrik-runtime`, which checks every config file.
pub use fabrik_runtime::modbus as config;
pub mod decode;
pub mod plan;
pub mod poller;
pub mod write;

use std::sync::Arc;

pub use config::{DataType, DeviceConfig, MapConfig, ModbusConfig, Order, PointConfig, Table};
pub use plan::{DevicePlan, MapPlan, PlannedPoint, ReadRequest, WritablePoint, plan};
pub use poller::ModbusPoller;
pub use write::{Encoded, ModbusWriter, SetValue, Written};

/// Errors of the Modbus poller. Runtime variants also become the `reason` of Bad readings.
#[derive(Debug, thiserror::Error)]
pub enum ModbusError {
    /// The configuration is invalid; one line per problem, each naming device and point.
    #[error("invalid Modbus configuration:\n  {}", .0.join("\n  "))]
    Config(Vec<String>),
    /// The TCP connection could not be opened.
    #[error("device `{device}`: cannot connect to {address}: {reason}")]
    Connect {
        /// Device id.
        device: Arc<str>,
        /// Configured `host:port`.
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// The device is between reconnect attempts.
    #[error(
        "device `{device}`: not connected, next attempt in {retry_in_ms} ms (last error: {last_error})"
    )]
    Disconnected {
        /// Device id.
        device: Arc<str>,
        /// Time until the next connect attempt.
        retry_in_ms: u64,
        /// The failure that dropped or refused the connection.
        last_error: String,
    },
    /// No answer within the request timeout.
    #[error("device `{device}`: {request}: timeout after {timeout_ms} ms")]
    Timeout {
        /// Device id.
        device: Arc<str>,
        /// The request, as `table start..end`.
        request: String,
        /// The configured timeout.
        timeout_ms: u64,
    },
    /// The device answered with a Modbus exception.
    #[error("device `{device}`: {request}: Modbus exception {code:#04x} ({name})")]
    Exception {
        /// Device id.
        device: Arc<str>,
        /// The request, as `table start..end`.
        request: String,
        /// The exception code (0x02 = illegal data address, ...).
        code: u8,
        /// Its name in the Modbus specification.
        name: &'static str,
    },
    /// The connection failed mid-request or the answer was malformed.
    #[error("device `{device}`: {request}: {source}")]
    Transport {
        /// Device id.
        device: Arc<str>,
        /// The request, as `table start..end`.
        request: String,
        /// The transport or protocol error.
        source: tokio_modbus::Error,
    },
    /// A write names a device that is not polled.
    #[error("no Modbus device `{0}` is configured")]
    UnknownDevice(String),
    /// A write names a point that is not declared `writable` (or does not exist).
    #[error(
        "device `{device}`: point `{signal}` is not writable (only points with \
         `writable = true` in [[modbus.devices.maps.points]] are)"
    )]
    NotWritable {
        /// Device id.
        device: Arc<str>,
        /// The point asked for.
        signal: String,
    },
    /// A write's value is not one the point may take; nothing was sent.
    #[error("device `{device}`: point `{signal}`: {reason}; nothing was written")]
    InvalidValue {
        /// Device id.
        device: Arc<str>,
        /// Point name.
        signal: String,
        /// What is wrong with the value.
        reason: String,
    },
    /// Too many writes wait for the device already.
    #[error("device `{device}`: {waiting} writes wait already; nothing was written, try again")]
    Busy {
        /// Device id.
        device: Arc<str>,
        /// The queue's size.
        waiting: usize,
    },
    /// The write waited past its deadline for the device's task (a long poll, a full readings
    /// channel); it was given up, unwritten.
    #[error(
        "device `{device}`: the write waited {waited_ms} ms for the device's poller and was \
         given up; nothing was written"
    )]
    Expired {
        /// Device id.
        device: Arc<str>,
        /// How long it waited.
        waited_ms: u64,
    },
    /// Shutdown stopped the device's task during a write: whether the device applied it is
    /// unknown.
    #[error(
        "device `{0}`: the poller stopped during the write; whether the device applied it is \
         unknown"
    )]
    Interrupted(Arc<str>),
    /// The device's task has stopped (shutdown).
    #[error("device `{0}`: the poller has stopped; nothing was written")]
    Stopped(Arc<str>),
}

/// A decoded value (serialized as the bare number, Boolean or text).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Value {
    /// Floats, and any numeric point with `scale` or `offset`.
    F64(f64),
    /// Integer points without `scale`/`offset`.
    I64(i64),
    /// Coils, discrete inputs and `bool` registers.
    Bool(bool),
    /// `string` points.
    Str(String),
}

/// How far a reading can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quality {
    /// Read and decoded.
    Good,
    /// Not read (timeout, exception, connection down) or not decodable; see `reason`.
    Bad,
}

/// One point of one poll, as sent into the readings channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Device id from the configuration.
    pub device_id: Arc<str>,
    /// Point name.
    pub signal: Arc<str>,
    /// Wall-clock time of the poll (the map's tick), nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
    /// The value; `None` exactly when nothing could be read or decoded.
    pub value: Option<Value>,
    /// Good, or Bad with a `reason`.
    pub quality: Quality,
    /// Why the quality is Bad (timeout, exception code, connection error).
    pub reason: Option<String>,
    /// Engineering unit from the configuration.
    pub unit: Option<Arc<str>>,
}
