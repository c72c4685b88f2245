//! The `[modbus]` section as written in TOML: shapes and defaults only. Checking it and
//! turning it into read requests is `fabrik_connect::modbus::plan`'s job, so nothing here can
//! fail but serde.

use serde::{Deserialize, Serialize};

/// Default per-request timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 1_000;
/// Default first reconnect delay after a connection failure.
pub const DEFAULT_RECONNECT_MIN_MS: u64 = 500;
/// Default cap of the exponential reconnect delay.
pub const DEFAULT_RECONNECT_MAX_MS: u64 = 30_000;
/// Default largest hole (registers or bits) read through to merge two points into one request.
pub const DEFAULT_MAX_GAP: u16 = 8;

/// The `[modbus]` section: the devices to poll.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    /// Devices, each polled by its own task.
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
}

/// One Modbus TCP device (or one unit behind a gateway).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Fabrik device id, copied into every reading.
    pub id: String,
    /// The table its readings are stored in.
    #[serde(default = "default_measurement")]
    pub measurement: String,
    /// `host:port` of the Modbus TCP server or gateway.
    pub address: String,
    /// Modbus unit id (slave id); 0xFF or 0 for a plain TCP device, the RTU address behind a
    /// gateway.
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// Timeout of one request (and of a connect), in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// First delay before reconnecting after a failure; doubles on each failure in a row.
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    /// Cap of the reconnect delay.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Register maps, each polled on its own interval.
    #[serde(default)]
    pub maps: Vec<MapConfig>,
}

/// A set of points polled together on one interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapConfig {
    /// Poll period in milliseconds.
    pub poll_interval_ms: u64,
    /// Largest hole (in registers, or bits for coils and discrete inputs) read through to
    /// merge two points into one request. Set 0 for devices whose register map has holes that
    /// answer exception 0x02.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// The points.
    #[serde(default)]
    pub points: Vec<PointConfig>,
}

/// One signal read from the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    /// Signal name, unique within the device.
    pub name: String,
    /// Which of the four Modbus tables it lives in.
    pub table: Table,
    /// 0-based address on the wire (register 40001 is holding address 0).
    pub address: u16,
    /// How the registers are decoded.
    #[serde(rename = "type")]
    pub data_type: DataType,
    /// Number of registers of a `string` point (two bytes each); only for strings.
    #[serde(default)]
    pub length: Option<u16>,
    /// Byte order inside each register; `big` (the Modbus standard) when absent.
    #[serde(default)]
    pub byte_order: Option<Order>,
    /// Register order of a multi-register value; `big` (most significant word first) when
    /// absent. Only for 32- and 64-bit types.
    #[serde(default)]
    pub word_order: Option<Order>,
    /// Multiplier applied to a numeric value; the reading becomes a float.
    #[serde(default)]
    pub scale: Option<f64>,
    /// Added after `scale`; the reading becomes a float.
    #[serde(default)]
    pub offset: Option<f64>,
    /// Engineering unit, copied into the reading.
    #[serde(default)]
    pub unit: Option<String>,
    /// Whether operators may set this point (`fabrik device set`, `POST
    /// /api/v1/devices/{id}/setpoints/{signal}`); holding registers and coils only. Off unless
    /// the configuration says so: nothing is written to a device by default.
    #[serde(default)]
    pub writable: bool,
    /// Lowest value a write may set, in engineering units (after `scale` and `offset`).
    #[serde(default)]
    pub min: Option<f64>,
    /// Highest value a write may set, in engineering units.
    #[serde(default)]
    pub max: Option<f64>,
}

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// Holding registers (function 3), read-write 16-bit words.
    Holding,
    /// Input registers (function 4), read-only 16-bit words.
    Input,
    /// Coils (function 1), read-write bits.
    Coil,
    /// Discrete inputs (function 2), read-only bits.
    Discrete,
}

impl Table {
    /// Whether the table holds bits rather than 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Self::Coil | Self::Discrete)
    }

    /// The most items one read request may ask for (Modbus application protocol 1.1b3).
    pub fn max_per_request(self) -> u16 {
        if self.is_bits() { 2000 } else { 125 }
    }

    /// Lower-case name, as in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::Holding => "holding",
            Self::Input => "input",
            Self::Coil => "coil",
            Self::Discrete => "discrete",
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a point's registers are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// Unsigned 16-bit integer, one register.
    U16,
    /// Signed 16-bit integer, one register.
    I16,
    /// Unsigned 32-bit integer, two registers.
    U32,
    /// Signed 32-bit integer, two registers.
    I32,
    /// IEEE 754 single, two registers.
    F32,
    /// IEEE 754 double, four registers.
    F64,
    /// UTF-8 text of `length` registers, trailing NULs removed.
    String,
    /// A coil or discrete input, or a register that is non-zero.
    Bool,
}

impl DataType {
    /// Lower-case name, as in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::U16 => "u16",
            Self::I16 => "i16",
            Self::U32 => "u32",
            Self::I32 => "i32",
            Self::F32 => "f32",
            Self::F64 => "f64",
            Self::String => "string",
            Self::Bool => "bool",
        }
    }

    /// Whether `scale` and `offset` apply.
    pub fn is_numeric(self) -> bool {
        !matches!(self, Self::String | Self::Bool)
    }

    /// Registers of a fixed-size type (`None` for strings, whose size is `length`).
    pub fn fixed_registers(self) -> Option<u16> {
        match self {
            Self::U16 | Self::I16 | Self::Bool => Some(1),
            Self::U32 | Self::I32 | Self::F32 => Some(2),
            Self::F64 => Some(4),
            Self::String => None,
        }
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Big or little endian, for bytes in a register or registers in a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Most significant first (the Modbus standard).
    #[default]
    Big,
    /// Least significant first.
    Little,
}

fn default_measurement() -> String {
    "modbus".into()
}

fn default_unit_id() -> u8 {
    1
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

fn default_reconnect_min_ms() -> u64 {
    DEFAULT_RECONNECT_MIN_MS
}

fn default_reconnect_max_ms() -> u64 {
    DEFAULT_RECONNECT_MAX_MS
}

fn default_max_gap() -> u16 {
    DEFAULT_MAX_GAP
}

/// A commented example configuration; a test parses and plans it.
pub const EXAMPLE_TOML: &str = r#"
# One task per device: a slow or dead device never delays another.
[[devices]]
id = "pump-7"
measurement = "pump"         # the table readings go to (default "modbus")
address = "192.0.2.10:502"   # host:port
unit_id = 1
timeout_ms = 1000            # per request and per connect
reconnect_min_ms = 500       # first reconnect delay, doubled per failure ...
reconnect_max_ms = 30000     # ... up to this cap

[[devices.maps]]
poll_interval_ms = 1000
max_gap = 8                  # read through holes of up to 8 registers to save requests

[[devices.maps.points]]
name = "flow"
table = "holding"            # holding | input | coil | discrete
address = 0                  # 0-based wire address (40001 -> 0)
type = "f32"                 # u16 | i16 | u32 | i32 | f32 | f64 | string | bool
byte_order = "big"           # bytes inside a register
word_order = "little"        # registers of a 32/64-bit value
unit = "m3/h"

[[devices.maps.points]]
name = "temperature"
table = "input"
address = 10
type = "i16"
scale = 0.1
offset = -40.0
unit = "degC"

[[devices.maps.points]]
name = "flow_setpoint"
table = "holding"
address = 20
type = "u16"
scale = 0.1
unit = "m3/h"
writable = true              # operators may set it (off by default: nothing is written)
min = 0.0                    # writes outside [min, max] are refused, in engineering units
max = 120.0

[[devices.maps.points]]
name = "serial"
table = "holding"
address = 100
type = "string"
length = 8                   # registers (16 characters)

[[devices.maps]]
poll_interval_ms = 200

[[devices.maps.points]]
name = "running"
table = "coil"
address = 0
type = "bool"
writable = true              # a coil that may be switched
"#;
