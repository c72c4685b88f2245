//! `/api/v1/uplink`: where this node stands with its hub (the uplink module's side) and what
//! it receives from edge nodes (the hub module's side), as those modules report it on the
//! shared [`LinkBoard`].

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use futures::future::BoxFuture;
use parking_lot::RwLock;
use serde::Serialize;
use utoipa::ToSchema;

use crate::ApiState;
use crate::control::ControlError;
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
    /// The running backfill, or the last one (`POST /api/v1/uplink/backfill`).
    pub backfill: Option<BackfillStatus>,
}

/// What to send to the hub from the stored history (`POST /api/v1/uplink/backfill`).
#[derive(Debug, Clone, Default, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    /// Rows from this time on (RFC 3339); absent: from the oldest row stored.
    pub from: Option<String>,
    /// Rows before this time (RFC 3339); absent: until now.
    pub to: Option<String>,
    /// The tables to send; absent: every table the uplink forwards (`uplink.tables`,
    /// `uplink.exclude`).
    pub tables: Option<Vec<String>>,
}

/// A backfill: stored rows of a span sent to the hub beside the live uplink, table by table,
/// oldest first, its position kept on disk so that a restart goes on where it stood.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, ToSchema)]
pub struct BackfillStatus {
    /// Random, made when it was asked for; part of its messages' ids.
    pub id: String,
    /// `running`, `done`, `cancelled` or `failed`.
    pub state: String,
    /// Its span's start (RFC 3339); null: the oldest row.
    pub from: Option<String>,
    /// Its span's end, exclusive (RFC 3339).
    pub to: String,
    /// The tables, in the order they are sent.
    pub tables: Vec<String>,
    /// The tables sent completely.
    pub tables_done: usize,
    /// The table being sent.
    pub table: Option<String>,
    /// Rows of `table` before this time have been acknowledged by the hub's stream.
    pub done_until: Option<String>,
    /// Rows acknowledged by the hub's stream.
    pub rows_sent: u64,
    /// Messages acknowledged by the hub's stream.
    pub messages_sent: u64,
    /// Rows left out: one row alone larger than the server takes.
    pub unsendable_rows: u64,
    /// When it was asked for (RFC 3339).
    pub started_at: String,
    /// When it ended (RFC 3339).
    pub finished_at: Option<String>,
    /// The last failure (it is tried again while `running`), or why it failed.
    pub last_error: Option<String>,
    /// Tables left out when the job reached them, each with why (the uplink no longer
    /// forwards it, after a restart with a new `[uplink]`).
    #[serde(default)]
    pub skipped: Vec<String>,
    /// Who asked for it.
    pub requested_by: String,
}

/// Starts and cancels backfills; the uplink module implements it.
pub trait BackfillControl: Send + Sync {
    /// Checks `request` and starts it (stored first, so a restart goes on with it); refused
    /// while another runs.
    fn start(
        &self,
        request: BackfillRequest,
        requested_by: String,
    ) -> BoxFuture<'_, Result<BackfillStatus, ControlError>>;
    /// Stops the running backfill (what the hub acknowledged stays there).
    fn cancel(&self) -> BoxFuture<'_, Result<BackfillStatus, ControlError>>;
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

fn backfill_control(state: &ApiState) -> Result<&Arc<dyn BackfillControl>, ApiError> {
    state.backfill.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no uplink runs in this process: configure [uplink] (or see --target)",
        )
    })
}

#[utoipa::path(post, path = "/api/v1/uplink/backfill", tag = "operations", security(("token" = [])),
    request_body = BackfillRequest,
    responses((status = 202, description = "started: stored rows of the span go to the hub, \
        table by table, beside the live uplink (which goes first); `GET /api/v1/uplink` shows \
        how far it is", body = BackfillStatus),
              (status = 400, description = "a time is not RFC 3339, `to` is not after `from`, \
        or a table is not stored here or not forwarded by this uplink", body = crate::error::ErrorBody),
              (status = 409, description = "a backfill is running", body = crate::error::ErrorBody),
              (status = 503, description = "no uplink runs in this process", body = crate::error::ErrorBody)))]
pub(crate) async fn start_backfill(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Extension(identity): Extension<crate::Identity>,
    crate::extract::Json(request): crate::extract::Json<BackfillRequest>,
) -> Result<(StatusCode, Json<BackfillStatus>), ApiError> {
    let status = backfill_control(&state)?
        .start(request, identity.name.clone())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(status)))
}

#[utoipa::path(delete, path = "/api/v1/uplink/backfill", tag = "operations", security(("token" = [])),
    responses((status = 200, description = "cancelled; what the hub acknowledged stays there", body = BackfillStatus),
              (status = 404, description = "no backfill is running", body = crate::error::ErrorBody),
              (status = 503, description = "no uplink runs in this process", body = crate::error::ErrorBody)))]
pub(crate) async fn cancel_backfill(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
) -> Result<Json<BackfillStatus>, ApiError> {
    Ok(Json(backfill_control(&state)?.cancel().await?))
}
