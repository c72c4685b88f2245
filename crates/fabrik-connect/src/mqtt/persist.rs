//! The broker's state across restarts: retained messages and persistent sessions (identity,
//! subscriptions, queued and in-flight QoS ≥ 1 messages) as one snapshot file, replaced
//! atomically (temporary file, fsync, rename, fsync of the directory).
//!
//! Like Mosquitto's persistence file, a snapshot is taken when the state changed (at most once
//! a second) and at shutdown, so a crash loses at most the last second of changes to this
//! state. Published data is not at risk: what Fabrik acknowledged is in the store's WAL.

use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

/// Version of the file format.
pub const FORMAT: u32 = 1;

/// Everything saved.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BrokerSnapshot {
    /// [`FORMAT`].
    pub format: u32,
    /// Retained messages.
    pub retained: Vec<SavedMessage>,
    /// Sessions whose expiry is not zero.
    pub sessions: Vec<SavedSession>,
}

/// A message (payload and binary properties in base64).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedMessage {
    /// Topic name.
    pub topic: String,
    /// Payload, base64.
    pub payload: String,
    /// QoS it was published with.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// Milliseconds of MQTT 5 message expiry left when saved.
    #[serde(default)]
    pub expires_in_ms: Option<u64>,
    /// MQTT 5 content type.
    #[serde(default)]
    pub content_type: Option<String>,
    /// MQTT 5 response topic.
    #[serde(default)]
    pub response_topic: Option<String>,
    /// MQTT 5 correlation data, base64.
    #[serde(default)]
    pub correlation_data: Option<String>,
    /// MQTT 5 user properties.
    #[serde(default)]
    pub user_properties: Vec<(String, String)>,
    /// MQTT 5 payload format indicator (UTF-8).
    #[serde(default)]
    pub utf8_payload: bool,
    /// Client id of the publisher (for `no_local`).
    #[serde(default)]
    pub publisher: Option<String>,
}

/// One subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedSubscription {
    /// Topic filter.
    pub filter: String,
    /// Granted QoS.
    pub qos: u8,
    /// MQTT 5 no local.
    #[serde(default)]
    pub no_local: bool,
    /// MQTT 5 retain as published.
    #[serde(default)]
    pub retain_as_published: bool,
    /// MQTT 5 subscription identifier.
    #[serde(default)]
    pub id: Option<u32>,
}

/// One message due to a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedDelivery {
    /// The message.
    pub message: SavedMessage,
    /// QoS of the delivery.
    pub qos: u8,
    /// Retain flag to send.
    pub retain: bool,
    /// Subscription identifiers to send.
    #[serde(default)]
    pub subscription_ids: Vec<u32>,
}

/// A message in flight: its packet id and how far the handshake got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedInflight {
    /// Packet identifier.
    pub packet_id: u16,
    /// The delivery.
    pub delivery: SavedDelivery,
    /// `ack` (QoS 1 sent), `rec` (QoS 2 sent), `comp` (PUBREL sent).
    pub state: String,
}

/// A persistent session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedSession {
    /// Client id.
    pub client_id: String,
    /// User name it authenticated with.
    pub username: String,
    /// Registered device, if any.
    #[serde(default)]
    pub device_id: Option<String>,
    /// Sparkplug edge node (group, node) the device owns.
    #[serde(default)]
    pub sparkplug: Option<(String, String)>,
    /// Operator or open-mode client.
    #[serde(default)]
    pub unrestricted: bool,
    /// Session expiry in seconds; `None`: never.
    pub expiry_secs: Option<u64>,
    /// Client's receive maximum.
    pub receive_max: u16,
    /// Subscribe-deny patterns in force for this client.
    #[serde(default)]
    pub read_denies: Vec<String>,
    /// Subscriptions.
    pub subscriptions: Vec<SavedSubscription>,
    /// Queued messages.
    #[serde(default)]
    pub queue: Vec<SavedDelivery>,
    /// In-flight messages.
    #[serde(default)]
    pub inflight: Vec<SavedInflight>,
    /// Next packet id to use.
    pub next_packet_id: u16,
}

/// Encodes bytes for a snapshot.
pub fn encode_bytes(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// Decodes bytes of a snapshot.
pub fn decode_bytes(text: &str) -> Result<Vec<u8>, String> {
    BASE64
        .decode(text)
        .map_err(|e| format!("bad base64 in the MQTT state file: {e}"))
}

/// Writes `snapshot` to `path` atomically.
pub fn save(path: &Path, snapshot: &BrokerSnapshot) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        serde_json::to_writer(&mut file, snapshot)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename is durable only once the directory is.
    std::fs::File::open(dir)?.sync_all()
}

/// Reads the snapshot at `path`; `Ok(None)` when there is none.
pub fn load(path: &Path) -> Result<Option<BrokerSnapshot>, String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let snapshot: BrokerSnapshot = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not an MQTT state file: {e}", path.display()))?;
    if snapshot.format != FORMAT {
        return Err(format!(
            "{} has format {}; this Fabrik reads format {FORMAT}",
            path.display(),
            snapshot.format
        ));
    }
    Ok(Some(snapshot))
}
