//! The fleet's keys for encrypted release targets as a hub knows them (decision 0068): a
//! node that follows a release repository records its key (its age recipient, and the
//! previous keys it still reads) as a `_node_keys` row at start and daily; its uplink carries
//! the row to the hub, and `GET /api/v1/fleet/recipients` lists the latest of each node,
//! counting only rows that came from that node's own updates module.

use axum::Json;
use axum::extract::State;
use fabrik_store::Store;
use serde::Serialize;
use utoipa::ToSchema;

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::Query;

/// The table nodes record their keys in.
pub const NODE_KEYS_TABLE: &str = "_node_keys";

/// The lineage source of those rows (on a hub: `uplink:<node>/node-keys`).
pub const NODE_KEYS_SOURCE: &str = "node-keys";

/// One node's key, as it last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct NodeRecipient {
    /// The node, as its updates module names itself (`[updates] node`, by default its
    /// `[uplink] node`).
    pub node: String,
    /// Its current key (`age1…`): what a publisher encrypts to for it.
    pub recipient: String,
    /// Keys it held before and still reads, until `fabrik updates retire-keys`.
    pub previous_recipients: Vec<String>,
    /// Whether its keys are sealed to its TPM (`fabrik updates seal-key`): if not, a copy of
    /// its disk carries them.
    pub sealed: bool,
    /// The PCRs its sealed key is bound to (`sha256:7`), if any: it opens only on the boot
    /// it was sealed on.
    pub sealed_pcrs: Option<String>,
    /// When the node last reported it (RFC 3339, UTC): at its start, and daily.
    pub reported_at: String,
}

/// `GET /api/v1/fleet/recipients`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FleetRecipients {
    /// By node.
    pub recipients: Vec<NodeRecipient>,
}

/// The latest `_node_keys` row of every node: rows this process's own updates module wrote
/// (`_source` `node-keys`) and rows that arrived through the uplink of the node they name
/// (`uplink:<node>/node-keys`). A row an edge wrote for another node, or one written through
/// an API, names no key: a publisher would encrypt models to whoever wrote it.
pub async fn latest_recipients(store: &Store) -> Result<Vec<NodeRecipient>, String> {
    if !store.has_table(NODE_KEYS_TABLE) {
        return Ok(Vec::new());
    }
    // Rows from before nodes reported it have no `sealed`.
    let sealed = if store.has_column(NODE_KEYS_TABLE, "sealed") {
        "last_value(sealed ORDER BY time)"
    } else {
        "CAST(NULL AS BOOLEAN)"
    };
    let sealed_pcrs = if store.has_column(NODE_KEYS_TABLE, "sealed_pcrs") {
        "last_value(sealed_pcrs ORDER BY time)"
    } else {
        "CAST(NULL AS VARCHAR)"
    };
    let sql = format!(
        "SELECT node, last_value(recipient ORDER BY time) AS recipient, \
         last_value(previous_recipients ORDER BY time) AS previous_recipients, \
         {sealed} AS sealed, {sealed_pcrs} AS sealed_pcrs, CAST(max(time) AS BIGINT) AS latest FROM {NODE_KEYS_TABLE} \
         WHERE _source = {} OR _source = concat('uplink:', node, '/{NODE_KEYS_SOURCE}') \
         GROUP BY node ORDER BY node",
        crate::fleet::literal(NODE_KEYS_SOURCE)
    );
    let rows = crate::fleet::query_json(store, &sql).await?;
    let text = crate::fleet::text;
    Ok(rows
        .iter()
        .map(|row| NodeRecipient {
            node: text(row, "node"),
            recipient: text(row, "recipient"),
            previous_recipients: serde_json::from_str(&text(row, "previous_recipients"))
                .unwrap_or_default(),
            sealed: row["sealed"].as_bool().unwrap_or(false),
            sealed_pcrs: row["sealed_pcrs"]
                .as_str()
                .filter(|pcrs| !pcrs.is_empty())
                .map(str::to_owned),
            reported_at: fabrik_alert::model::rfc3339(row["latest"].as_i64().unwrap_or(0)),
        })
        .filter(|key| !key.recipient.is_empty())
        .collect())
}

/// The keys this process's nodes (a hub: every node whose uplink forwards here) last
/// reported, for a publisher to encrypt release targets to.
#[utoipa::path(get, path = "/api/v1/fleet/recipients", tag = "updates", security(("token" = [])),
    responses(
        (status = 200, description = "each node's current key for encrypted targets and the previous keys it still reads, as it last reported them (empty where no node that follows a release repository forwards here)", body = FleetRecipients),
        (status = 400, description = "a query parameter, which this endpoint takes none of", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn recipients(
    State(state): State<ApiState>,
    Query(_options): Query<crate::control::NoOptions>,
) -> Result<Json<FleetRecipients>, ApiError> {
    let recipients = latest_recipients(&state.store)
        .await
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
    Ok(Json(FleetRecipients { recipients }))
}
