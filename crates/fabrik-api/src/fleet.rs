//! The fleet's devices as a hub knows them (decision 0036): each uplinked edge mirrors its
//! registry into `_devices` rows, and this module reads the latest row of every node and
//! device, counting only rows that came from that node's own mirror. `GET
//! /api/v1/fleet/devices` lists them.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use fabrik_store::Store;
use serde::Serialize;
use utoipa::ToSchema;

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::Query;

/// The table edges mirror their registries to.
pub const DEVICES_TABLE: &str = "_devices";

/// The lineage source of a mirror's rows (on a hub: `uplink:<node>/registry`).
pub const MIRROR_SOURCE: &str = "registry";

/// One node's latest `_devices` row of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirroredDevice {
    /// The node that registers it.
    pub node: String,
    /// The device's id.
    pub device: String,
    /// Its site there.
    pub site: String,
    /// Its type there.
    pub device_type: String,
    /// Its labels there, as JSON.
    pub labels: String,
    /// The latest row says it was removed.
    pub removed: bool,
    /// When it was removed (ns; 0 while present).
    pub removed_at: i64,
    /// The latest row's time (ns).
    pub latest_ns: i64,
}

/// The rows `sql` answers, as JSON objects by column name.
pub(crate) async fn query_json(store: &Store, sql: &str) -> Result<Vec<serde_json::Value>, String> {
    let output = store.query(sql).await.map_err(|e| e.to_string())?;
    crate::routes::batches_to_json(&output.batches)
}

/// A text column of a [`query_json`] row (empty when null).
pub(crate) fn text(row: &serde_json::Value, key: &str) -> String {
    row[key].as_str().unwrap_or_default().to_owned()
}

/// `text` as an SQL string literal.
pub(crate) fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The latest `_devices` row of every node and device, removed ones included: of `node`'s
/// own mirror in this store (an edge reading what it mirrored), or, with `None`, of every
/// node, counting only rows that arrived from that node's own mirror (`_source`
/// `uplink:<node>/registry`), so neither an edge writing rows for another node nor rows
/// written through an API describe the fleet.
pub async fn latest_devices(
    store: &Store,
    node: Option<&str>,
) -> Result<Vec<MirroredDevice>, String> {
    if !store.has_table(DEVICES_TABLE) {
        return Ok(Vec::new());
    }
    let only = match node {
        Some(node) => format!(
            "node = {} AND _source = {}",
            literal(node),
            literal(MIRROR_SOURCE)
        ),
        None => format!("_source = concat('uplink:', node, '/{MIRROR_SOURCE}')"),
    };
    let sql = format!(
        "SELECT node, device, last_value(site ORDER BY time) AS site, \
         last_value(device_type ORDER BY time) AS device_type, \
         last_value(labels ORDER BY time) AS labels, \
         last_value(removed ORDER BY time) AS removed, \
         last_value(removed_at ORDER BY time) AS removed_at, \
         CAST(max(time) AS BIGINT) AS latest \
         FROM {DEVICES_TABLE} WHERE {only} GROUP BY node, device ORDER BY device, node"
    );
    let rows = query_json(store, &sql).await?;
    Ok(rows
        .iter()
        .map(|row| MirroredDevice {
            node: text(row, "node"),
            device: text(row, "device"),
            site: text(row, "site"),
            device_type: text(row, "device_type"),
            labels: text(row, "labels"),
            removed: row["removed"].as_bool().unwrap_or(false),
            removed_at: row["removed_at"].as_i64().unwrap_or(0),
            latest_ns: row["latest"].as_i64().unwrap_or(0),
        })
        .collect())
}

/// A device another node registers, as its edge last described it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FleetDevice {
    /// The node that registers it (its `[uplink] node`).
    pub node: String,
    /// The device's id.
    pub device: String,
    /// Its site there.
    pub site: String,
    /// Its type there.
    #[serde(rename = "type")]
    pub device_type: String,
    /// Its labels there.
    pub labels: BTreeMap<String, String>,
    /// When the node last described it (RFC 3339, UTC): on a change, at the node's start, and
    /// daily.
    pub described_at: String,
}

/// `GET /api/v1/fleet/devices`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FleetDevices {
    /// How many nodes describe devices.
    pub nodes: usize,
    /// By device, then node; removed ones left out.
    pub devices: Vec<FleetDevice>,
}

/// The devices this hub's edges register, from the `_devices` rows their uplinks forward.
#[utoipa::path(get, path = "/api/v1/fleet/devices", tag = "devices", security(("token" = [])),
    responses(
        (status = 200, description = "every device an uplinked edge registers, with its node, site, type and labels (empty where no edge forwards here)", body = FleetDevices),
        (status = 400, description = "a query parameter, which this endpoint takes none of", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn devices(
    State(state): State<ApiState>,
    Query(_options): Query<crate::control::NoOptions>,
) -> Result<Json<FleetDevices>, ApiError> {
    let rows = latest_devices(&state.store, None)
        .await
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
    let devices: Vec<FleetDevice> = rows
        .into_iter()
        .filter(|row| !row.removed)
        .map(|row| FleetDevice {
            described_at: fabrik_alert::model::rfc3339(row.latest_ns),
            labels: serde_json::from_str(&row.labels).unwrap_or_default(),
            node: row.node,
            device: row.device,
            site: row.site,
            device_type: row.device_type,
        })
        .collect();
    let nodes = devices
        .iter()
        .map(|d| d.node.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    Ok(Json(FleetDevices { nodes, devices }))
}
