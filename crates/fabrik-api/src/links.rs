//! `/api/v1/uplink`: where this node stands with its hub (the uplink module's side) and what
//! it receives from edge nodes (the hub module's side), as those modules report it on the
//! shared [`LinkBoard`].

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use parking_lot::RwLock;
use serde::Serialize;
use utoipa::ToSchema;

use crate::ApiState;
use crate::error::ApiError;

/// Written by the uplink and hub modules, read by the handler.
pub type LinkBoard = Arc<RwLock<LinkStatus>>;

/// Both sides of the edge → hub link in this process.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct LinkStatus {
    /// The edge side, when `[uplink]` is configured and the uplink module runs here.
    pub uplink: Option<UplinkStatus>,
    /// The hub side, when `[hub]` is configured and the hub module runs here.
    pub hub: Option<HubStatus>,
}

/// This node's forwarding to the hub.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct UplinkStatus {
    /// This node's name on the hub.
    pub node: String,
    /// The NATS server(s).
    pub url: String,
    /// The JetStream stream.
    pub stream: String,
    /// The subject this node publishes on.
    pub subject: String,
    /// Whether the NATS connection is up.
    pub connected: bool,
    /// The last WAL sequence number whose rows JetStream acknowledged.
    pub acked_seq: u64,
    /// The last WAL sequence number written on this node.
    pub applied_seq: u64,
    /// Writes stored here that the hub has not acknowledged yet.
    pub backlog_records: u64,
    /// Bytes of WAL on disk (what the hub has not acknowledged, and what the store keeps
    /// until its next persistence anyway).
    pub wal_bytes: u64,
    /// The WAL kept for the hub at most (`uplink.max_backlog`).
    pub max_backlog_bytes: u64,
    /// Messages JetStream acknowledged since start.
    pub messages_sent: u64,
    /// Rows in them.
    pub rows_sent: u64,
    /// Writes given up since start: deleted past `max_backlog` before the hub had them.
    pub skipped_records: u64,
    /// Rows left out since start because one row alone is larger than the server takes.
    pub unsendable_rows: u64,
    /// When JetStream last acknowledged (RFC 3339).
    pub last_ack_at: Option<String>,
    /// The last failure, until the next acknowledgement.
    pub last_error: Option<String>,
}

/// What this hub receives.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct HubStatus {
    /// The NATS server(s).
    pub url: String,
    /// The JetStream stream.
    pub stream: String,
    /// The durable consumer.
    pub consumer: String,
    /// Whether the NATS connection is up.
    pub connected: bool,
    /// Messages handled since start (stored or dead-lettered).
    pub messages: u64,
    /// Rows stored from them.
    pub rows: u64,
    /// Messages stored as dead letters (`_dead_letters`, source `uplink:<node>`).
    pub dead_letters: u64,
    /// Per edge node: what arrived from it since start.
    pub nodes: BTreeMap<String, NodeSeen>,
    /// The last failure, until the next message is stored.
    pub last_error: Option<String>,
}

/// What a hub has received from one edge node.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct NodeSeen {
    /// Messages.
    pub messages: u64,
    /// Rows stored.
    pub rows: u64,
    /// When its last message was handled (RFC 3339).
    pub last_message_at: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/uplink", tag = "operations", security(("token" = [])),
    responses((status = 200, description = "the edge → hub link as this process runs it: \
        `uplink` on an edge node, `hub` on a hub, null where not configured", body = LinkStatus)))]
pub(crate) async fn status(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
) -> Result<Json<LinkStatus>, ApiError> {
    let mut status = state.links.read().clone();
    if let Some(uplink) = &mut status.uplink {
        uplink.applied_seq = state.store.applied_seq();
        uplink.backlog_records = uplink.applied_seq.saturating_sub(uplink.acked_seq);
        uplink.wal_bytes = state.store.wal_bytes();
    }
    Ok(Json(status))
}
