//! The `[opcua]` section as written in TOML: shapes and defaults only. Checking it is
//! `fabrik_connect::opcua::plan`'s job, so nothing here can fail but serde.
//!
//! See [`EXAMPLE`] for a commented example (a unit test parses and validates it).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A commented example of the section, as `fabrik config example` would print it.
pub const EXAMPLE: &str = r#"
# OPC UA servers to subscribe to; one task (session, subscription) per server.
[[opcua.servers]]
id = "line-1-plc"
endpoint = "opc.tcp://10.0.0.5:4840/"     # the path must match one the server advertises
security_policy = "Basic256Sha256"        # None | Basic256Sha256
security_mode = "SignAndEncrypt"           # None | Sign | SignAndEncrypt
pki_dir = "/var/lib/fabrik/opcua/pki"      # own key pair; trusted/ and rejected/ server certs
trust_server = "trust_list"                # or "trust_on_first_use" (tests, commissioning)
username = "fabrik"                        # optional; anonymous without it
password = "change-me"
device = "pump-1"                          # default device of the items below
publishing_interval_ms = 500
reconnect_min_ms = 500                     # first retry delay; doubles up to reconnect_max_ms
reconnect_max_ms = 30000

[[opcua.servers.items]]
node_id = "ns=2;s=Pump1.Pressure"
signal = "pressure"
sampling_interval_ms = 250
deadband = 0.5                             # absolute; omit to get every change

[[opcua.servers.items]]
node_id = "ns=2;s=Pump1.Running"
signal = "running"
device = "pump-1-motor"                    # per-item device overrides the server's

[[opcua.servers.items]]
node_id = "ns=2;s=Pump1.PressureSetpoint"
signal = "pressure_setpoint"
writable = true                            # operators may set it (off by default)
min = 2.0                                  # the range writes may set; optional when the
max = 6.5                                  # node declares an EURange (decision 0094)
"#;

/// Default publishing interval of the subscription.
pub const DEFAULT_PUBLISHING_INTERVAL_MS: u64 = 1_000;
/// Default first reconnect delay; doubles per failure in a row.
pub const DEFAULT_RECONNECT_MIN_MS: u64 = 500;
/// Default cap of the reconnect delay.
pub const DEFAULT_RECONNECT_MAX_MS: u64 = 30_000;
/// Default timeout of one service request (and of connecting).
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Default interval of the session keep-alive read.
pub const DEFAULT_KEEP_ALIVE_MS: u64 = 5_000;
/// Default server-side queue size per monitored item.
pub const DEFAULT_QUEUE_SIZE: u32 = 10;

/// The `[opcua]` section: the servers to subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcUaConfig {
    /// Servers, each served by its own task.
    #[serde(default)]
    pub servers: Vec<ServerConfig>,
}

/// One OPC UA server (one session, one subscription).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Connector id of this server, used in logs and errors.
    pub id: String,
    /// The table its readings are stored in (default `opcua`).
    #[serde(default = "default_measurement")]
    pub measurement: String,
    /// `opc.tcp://host:port/path`; the path must match one the server advertises.
    pub endpoint: String,
    /// Message security policy.
    #[serde(default)]
    pub security_policy: SecurityPolicyName,
    /// Message security mode; `None` exactly when the policy is `None`.
    #[serde(default)]
    pub security_mode: SecurityMode,
    /// Directory of the client's own key pair (`own/cert.der`, `private/private.pem`, created
    /// on first start) and of the `trusted/` and `rejected/` server certificates.
    pub pki_dir: PathBuf,
    /// How server certificates are trusted.
    #[serde(default)]
    pub trust_server: TrustMode,
    /// User name for a UserName identity token; anonymous when absent.
    #[serde(default)]
    pub username: Option<String>,
    /// Password of `username`.
    #[serde(default)]
    pub password: Option<String>,
    /// Default device id of the items that name none.
    #[serde(default)]
    pub device: Option<String>,
    /// Requested publishing interval of the subscription, in milliseconds.
    #[serde(default = "default_publishing_interval_ms")]
    pub publishing_interval_ms: u64,
    /// First delay before reconnecting after a failure; doubles per failure in a row.
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    /// Cap of the reconnect delay.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Timeout of one service request, in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Interval of the session keep-alive read, in milliseconds.
    #[serde(default = "default_keep_alive_ms")]
    pub keep_alive_ms: u64,
    /// The monitored items.
    #[serde(default)]
    pub items: Vec<ItemConfig>,
}

/// One monitored item (the Value attribute of one variable node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemConfig {
    /// Node id in the OPC UA text form: `ns=2;s=Pump1.Pressure`, `ns=3;i=1001`, `i=2258`.
    pub node_id: String,
    /// Signal name, unique within its device.
    pub signal: String,
    /// Device id; the server's `device` when absent.
    #[serde(default)]
    pub device: Option<String>,
    /// Requested sampling interval; absent = the publishing interval (`-1` on the wire).
    #[serde(default)]
    pub sampling_interval_ms: Option<u64>,
    /// Absolute deadband: changes smaller than this are not reported. Numeric items only.
    #[serde(default)]
    pub deadband: Option<f64>,
    /// Server-side queue size of the item.
    #[serde(default = "default_queue_size")]
    pub queue_size: u32,
    /// Whether operators may write the node's value (`fabrik device set`, decision 0090). Off
    /// unless the configuration says so; the server's own access rights apply besides.
    #[serde(default)]
    pub writable: bool,
    /// Lowest value a write may set (numeric nodes; with `max`). A node that declares an
    /// `EURange` needs none; with both, a write keeps to each (decision 0094).
    #[serde(default)]
    pub min: Option<f64>,
    /// Highest value a write may set (numeric nodes; with `min`).
    #[serde(default)]
    pub max: Option<f64>,
}

/// Security policies the connector supports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SecurityPolicyName {
    /// No message security.
    #[default]
    None,
    /// Basic256Sha256 (RSA 2048–4096, AES-256-CBC, SHA-256).
    Basic256Sha256,
}

/// Message security modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SecurityMode {
    /// Neither signed nor encrypted.
    #[default]
    None,
    /// Signed.
    Sign,
    /// Signed and encrypted.
    SignAndEncrypt,
}

/// How the client decides to trust a server certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustMode {
    /// Accept only certificates in `pki_dir/trusted/` (DER or PEM, any file name). An unknown
    /// certificate is refused and stored in `pki_dir/rejected/`, whence an operator may move
    /// it to `trusted/`.
    #[default]
    TrustList,
    /// Store any unknown server certificate in `trusted/` and accept it. For tests and
    /// commissioning only: it accepts every certificate, not just the first one.
    TrustOnFirstUse,
}

impl SecurityPolicyName {
    /// The name as in the configuration and the OPC UA specification.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Basic256Sha256 => "Basic256Sha256",
        }
    }
}

impl SecurityMode {
    /// The name as in the configuration and the OPC UA specification.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Sign => "Sign",
            Self::SignAndEncrypt => "SignAndEncrypt",
        }
    }
}

fn default_publishing_interval_ms() -> u64 {
    DEFAULT_PUBLISHING_INTERVAL_MS
}
fn default_reconnect_min_ms() -> u64 {
    DEFAULT_RECONNECT_MIN_MS
}
fn default_reconnect_max_ms() -> u64 {
    DEFAULT_RECONNECT_MAX_MS
}
fn default_request_timeout_ms() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_MS
}
fn default_keep_alive_ms() -> u64 {
    DEFAULT_KEEP_ALIVE_MS
}
fn default_queue_size() -> u32 {
    DEFAULT_QUEUE_SIZE
}

fn default_measurement() -> String {
    "opcua".into()
}
