//! The `[sparkplug]` section as written in TOML: shapes and defaults only. Checking it is
//! `fabrik_connect::sparkplug::command`'s job, so nothing here can fail but serde.
//!
//! See [`EXAMPLE`] for a commented example (a unit test there parses and checks it).

use serde::{Deserialize, Serialize};

/// A commented example of the section.
pub const EXAMPLE: &str = r#"
[sparkplug]
host_id = "fabrik"          # Fabrik's Sparkplug host id: STATE on spBv1.0/STATE/fabrik
command_timeout = "5s"      # how long a write waits for the edge node to report the new value

# A metric operators may set (decision 0091): Fabrik sends it in an NCMD (a node's metric) or
# a DCMD (a device's), in the type the edge node's birth declares, and waits for the node to
# report the value it then holds. Nothing is writable unless listed here.
[[sparkplug.setpoints]]
device = "plant-1/edge-01"                 # group/edge_node, or group/edge_node/device
metric = "Compressor/Pressure Setpoint"
min = 6.0                                  # a numeric metric needs the range writes may set
max = 8.5
unit = "bar"
"#;

/// Default of [`SparkplugConfig::command_timeout`].
pub const DEFAULT_COMMAND_TIMEOUT: &str = "5s";

/// The `[sparkplug]` section: what Fabrik, as the Sparkplug host, may command edge nodes to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SparkplugConfig {
    /// Fabrik's Sparkplug host application id: it publishes its state, retained, on
    /// `spBv1.0/STATE/<host_id>`, which edge nodes configured with it as their primary host
    /// wait for before they birth.
    pub host_id: String,
    /// How long a write waits for the edge node to report the metric's new value (Sparkplug
    /// commands are not acknowledged: the node's next NDATA/DDATA is the answer).
    pub command_timeout: String,
    /// The metrics operators may set.
    pub setpoints: Vec<SparkplugSetpointConfig>,
}

impl Default for SparkplugConfig {
    fn default() -> Self {
        Self {
            host_id: "fabrik".into(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT.into(),
            setpoints: Vec::new(),
        }
    }
}

/// `[[sparkplug.setpoints]]`: one metric operators may set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparkplugSetpointConfig {
    /// The Sparkplug id as Fabrik stores it: `group/edge_node` for a node's own metric,
    /// `group/edge_node/device` for a device's.
    pub device: String,
    /// The metric's name, as its birth declares it.
    pub metric: String,
    /// Lowest value a write may set (numeric metrics; with `max`).
    #[serde(default)]
    pub min: Option<f64>,
    /// Highest value a write may set (numeric metrics; with `min`).
    #[serde(default)]
    pub max: Option<f64>,
    /// Engineering unit, shown with the point.
    #[serde(default)]
    pub unit: Option<String>,
}
