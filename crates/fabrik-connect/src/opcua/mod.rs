//! The OPC UA client connector: subscribes to monitored items on configured servers and sends
//! converted [`Reading`]s into a bounded channel.
//!
//! The path, top to bottom: [`config`] (raw TOML shapes) → [`plan`] (validated servers and
//! items; every error reported at once) → [`session`] (client, certificates, trust list,
//! endpoint selection; also the [`browse`] helper) → [`runtime`] (one task per server: connect,
//! subscribe, reconnect with capped backoff, restore the subscription) → [`convert`]
//! (`DataValue` to [`Value`], [`Quality`] and timestamp) → `mpsc::Sender<Reading>`.
//!
//! This module must not know where readings go (store, MQTT, rules): it only fills the channel.
//! It writes to a server only the items declared `writable` that [`write::OpcUaWriter`] is
//! asked to set (decision 0090). It is built on `async-opcua` (MPL-2.0, used unmodified as a
//! crates.io dependency).

/// The configuration shapes live in `fabrik-runtime`, which checks every config file.
pub use fabrik_runtime::opcua as config;
pub mod convert;
pub mod declared;
pub mod plan;
pub mod runtime;
pub mod session;
pub mod write;

use std::sync::Arc;

pub use config::{
    ItemConfig, OpcUaConfig, SecurityMode, SecurityPolicyName, ServerConfig, TrustMode,
};
pub use plan::{ItemPlan, ServerPlan, plan};
pub use runtime::OpcUaClient;
pub use session::{BrowseSecurity, BrowsedNode, browse, trust_server_certificate};
pub use write::{OpcUaWriter, WritableItem, Written};

/// Errors of the OPC UA connector. Runtime variants also become the `reason` of Bad readings.
#[derive(Debug, thiserror::Error)]
pub enum OpcUaError {
    /// The configuration is invalid; one line per problem, each naming server and item.
    #[error("invalid OPC UA configuration:\n  {}", .0.join("\n  "))]
    Config(Vec<String>),
    /// The PKI directory or a certificate file could not be prepared.
    #[error("server `{server}`: PKI directory {dir}: {reason}")]
    Pki {
        /// Server id (or the endpoint, for browse).
        server: Arc<str>,
        /// The PKI directory.
        dir: String,
        /// What went wrong.
        reason: String,
    },
    /// Getting endpoints, opening the channel or activating the session failed.
    #[error("server `{server}`: cannot connect to {endpoint}: {reason}")]
    Connect {
        /// Server id (or the endpoint, for browse).
        server: Arc<str>,
        /// Configured endpoint URL.
        endpoint: String,
        /// What went wrong (status code name and text).
        reason: String,
    },
    /// The server offers no endpoint with the configured URL path, policy and mode.
    #[error(
        "server `{server}`: {endpoint} offers no endpoint with security policy {policy} and mode {mode} (offered: {offered})"
    )]
    NoMatchingEndpoint {
        /// Server id.
        server: Arc<str>,
        /// Configured endpoint URL.
        endpoint: String,
        /// Configured policy.
        policy: String,
        /// Configured mode.
        mode: String,
        /// What the server offers, as `policy/mode` pairs.
        offered: String,
    },
    /// The connection to the server was lost; the task is reconnecting.
    #[error("server `{server}`: connection lost ({status}); reconnecting")]
    ConnectionLost {
        /// Server id.
        server: Arc<str>,
        /// Status code reported by the transport.
        status: String,
    },
    /// The subscription could not be created.
    #[error("server `{server}`: cannot create subscription: {reason}")]
    Subscribe {
        /// Server id.
        server: Arc<str>,
        /// What went wrong.
        reason: String,
    },
    /// The server refused one monitored item (unknown node id, wrong attribute, ...).
    #[error("server `{server}`: monitored item `{node_id}` (signal `{signal}`) refused: {status}")]
    Item {
        /// Server id.
        server: Arc<str>,
        /// The node id as configured.
        node_id: String,
        /// Signal name.
        signal: Arc<str>,
        /// Status code name and description.
        status: String,
    },
    /// A write names a device none of the servers' items has.
    #[error("no OPC UA item is configured for device `{0}`")]
    UnknownDevice(String),
    /// A write names an item that is not declared `writable` (or does not exist).
    #[error(
        "device `{device}`: point `{signal}` is not writable (only items with \
         `writable = true` in [[opcua.servers.items]] are)"
    )]
    NotWritable {
        /// Device id.
        device: String,
        /// The signal asked for.
        signal: String,
    },
    /// A write's value is not one the node may take; nothing was written.
    #[error("device `{device}`: point `{signal}`: {reason}; nothing was written")]
    InvalidValue {
        /// Device id.
        device: String,
        /// Signal name.
        signal: String,
        /// What is wrong with the value.
        reason: String,
    },
    /// The server's session cannot take a write now; nothing was written.
    #[error("server `{server}`: {why}; nothing was written")]
    NotConnected {
        /// Server id.
        server: Arc<str>,
        /// Why not: not connected, waiting for the store.
        why: &'static str,
    },
    /// Another write to the server took longer than the request timeout; nothing was written.
    #[error("server `{0}`: another write is still going on; nothing was written, try again")]
    Busy(Arc<str>),
    /// Reading the node before the write (for its type) failed; nothing was written.
    #[error("server `{server}`: reading {node_id} before the write: {status}; nothing was written")]
    ReadBefore {
        /// Server id.
        server: Arc<str>,
        /// The node as configured.
        node_id: String,
        /// Status code name and description.
        status: String,
    },
    /// The write service call failed (a timeout, a lost connection): whether the server
    /// applied it is unknown.
    #[error("server `{server}`: {what}: {status}; whether the server applied it is unknown")]
    Request {
        /// Server id.
        server: Arc<str>,
        /// The call, with its node.
        what: String,
        /// Status code name and description.
        status: String,
    },
    /// The server refused the write (access, type, range, ...).
    #[error(
        "device `{device}`: point `{signal}`: the server refused the write to {node_id}: {status}"
    )]
    WriteRefused {
        /// Device id.
        device: String,
        /// Signal name.
        signal: String,
        /// The node as configured.
        node_id: String,
        /// Status code name and description.
        status: String,
    },
    /// A browse request failed.
    #[error("browse {node_id} on {endpoint}: {reason}")]
    Browse {
        /// Endpoint URL.
        endpoint: String,
        /// The node being browsed.
        node_id: String,
        /// What went wrong.
        reason: String,
    },
}

/// A converted value (serialized as the bare number, Boolean or text).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Value {
    /// Float, Double (and Decimal-like types the server sends as doubles).
    F64(f64),
    /// SByte … Int64, Byte … UInt32, and UInt64 up to `i64::MAX`.
    I64(i64),
    /// Boolean.
    Bool(bool),
    /// String, LocalizedText (its text), and anything else in its display form.
    Str(String),
}

/// How far a reading can be trusted: the severity bits (30–31) of the OPC UA `StatusCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quality {
    /// Severity 00.
    Good,
    /// Severity 01: the value may be usable (last usable value, sensor not accurate, ...).
    Uncertain,
    /// Severity 10 or 11, a refused monitored item, or the connection is down.
    Bad,
}

/// One data change (or one connector event) as sent into the readings channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Device id from the configuration (per item, else per server).
    pub device_id: Arc<str>,
    /// Signal name.
    pub signal: Arc<str>,
    /// Source timestamp, else server timestamp, else the time of receipt; ns since the Unix
    /// epoch.
    pub timestamp_ns: i64,
    /// The value; `None` when the server sent none (typical with Bad status) or the
    /// connection is down.
    pub value: Option<Value>,
    /// From the status code severity.
    pub quality: Quality,
    /// Status code name (`Good`, `BadSensorFailure`, …), or for connector events the error
    /// text (connection lost, item refused).
    pub status: String,
}
