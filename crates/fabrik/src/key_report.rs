//! A node's keys for encrypted release targets, recorded as `_node_keys` rows (decision
//! 0068): its updates module writes one at start and daily, and the uplink carries it to the
//! hub, so a publisher collects the fleet's recipients there (`fabrik release recipients`)
//! instead of from each node by hand, and sees a rotated key as soon as the node restarts.

use fabrik_core::{Point, Quality, Timestamp, Value};
use fabrik_store::Store;

pub(crate) use fabrik_api::fleet_keys::{NODE_KEYS_SOURCE, NODE_KEYS_TABLE};

/// How often the row is written again while the node runs: a hub that lost it (a backlog
/// given up past `max_backlog`, its retention, a new hub) learns the key again within a day.
pub(crate) const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The row saying that `node` reads targets encrypted to `keys`.
fn row(node: &str, keys: &crate::node_keys::NodeKeys, time: Timestamp) -> Point {
    let previous = serde_json::Value::from(keys.previous_recipients()).to_string();
    Point {
        measurement: NODE_KEYS_TABLE.into(),
        tags: vec![("node".into(), node.to_owned())],
        fields: vec![
            ("recipient".into(), Value::Str(keys.recipient().to_string())),
            ("previous_recipients".into(), Value::Str(previous)),
            // Whether a copy of the node's disk would carry its keys (decision 0070).
            ("sealed".into(), Value::Bool(keys.sealed())),
            // And to which boot, if its key is bound to PCRs (empty: to the TPM alone).
            (
                "sealed_pcrs".into(),
                Value::Str(keys.sealed_pcrs().unwrap_or_default()),
            ),
        ],
        time,
        quality: Quality::Good,
    }
}

/// Records `node`'s keys now.
pub(crate) async fn record(
    store: &Store,
    node: &str,
    keys: &crate::node_keys::NodeKeys,
) -> Result<(), fabrik_store::StoreError> {
    store
        .write_computed(
            &[row(node, keys, Timestamp::now())],
            NODE_KEYS_SOURCE,
            NODE_KEYS_TABLE,
        )
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::age::Identity;
    use crate::node_keys::NodeKeys;

    /// Writes `node`'s row at `ms` milliseconds after the epoch.
    async fn write(store: &Store, node: &str, keys: &NodeKeys, ms: i64, source: &str) {
        store
            .write_computed(
                &[row(node, keys, Timestamp(ms * 1_000_000))],
                source,
                NODE_KEYS_TABLE,
            )
            .await
            .expect("write");
    }

    #[tokio::test]
    async fn a_hub_lists_the_latest_key_each_node_sent_of_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = Store::open(fabrik_store::StoreOptions::new(dir.path()))
            .await
            .expect("store");
        let first = NodeKeys::single(Identity::generate().expect("key"));
        write(&hub, "line-1", &first, 10, "uplink:line-1/node-keys").await;
        // Rotated: the new key first, the old one after it.
        let file = dir.path().join("identity.key");
        std::fs::write(&file, first.all()[0].to_file("now").expect("text")).expect("identity");
        let rotated = crate::node_keys::rotate(&file).expect("rotate");
        write(&hub, "line-1", &rotated, 20, "uplink:line-1/node-keys").await;
        // Forged: line-2 names a key of its own for line-1, and a row for line-1 comes in
        // through line-1's HTTP API. Neither is line-1's word.
        let stranger = NodeKeys::single(Identity::generate().expect("key"));
        write(&hub, "line-1", &stranger, 30, "uplink:line-2/node-keys").await;
        write(&hub, "line-1", &stranger, 31, "uplink:line-1/http").await;
        write(&hub, "line-3", &stranger, 32, "http").await;
        // The hub's own updates module.
        let own = NodeKeys::single(Identity::generate().expect("key"));
        write(&hub, "hub", &own, 40, NODE_KEYS_SOURCE).await;

        let listed = fabrik_api::fleet_keys::latest_recipients(&hub)
            .await
            .expect("recipients");
        let shown: Vec<(&str, String, Vec<String>)> = listed
            .iter()
            .map(|key| {
                (
                    key.node.as_str(),
                    key.recipient.clone(),
                    key.previous_recipients.clone(),
                )
            })
            .collect();
        assert!(listed.iter().all(|key| !key.sealed), "{listed:?}");
        assert_eq!(
            shown,
            [
                ("hub", own.recipient().to_string(), Vec::new()),
                (
                    "line-1",
                    rotated.recipient().to_string(),
                    vec![first.recipient().to_string()]
                ),
            ]
        );
        // Reported when its own latest row was written, not when the forged ones were.
        assert_eq!(listed[1].reported_at, "1970-01-01T00:00:00.020Z");
    }
}
