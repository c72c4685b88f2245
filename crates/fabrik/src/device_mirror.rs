//! An uplinked edge's device registry, mirrored into the store as `_devices` rows (decision
//! 0036), so the hub it forwards to knows each device's site, type and labels: a row per
//! device when it appears or changes, a `removed` row when it goes. The uplink carries the
//! rows like any other table; the hub reads the latest row per node and device
//! ([`fleet_devices`]).

use std::collections::BTreeMap;
use std::time::Duration;

use datafusion::arrow::array::{Array, BooleanArray, StringArray};
use datafusion::arrow::datatypes::DataType;
use fabrik_core::{Lineage, Point, Quality, SourceId, Timestamp, Value};
use fabrik_registry::{DeviceFilter, FleetDevice, Registry};
use fabrik_store::Store;
use tokio_util::sync::CancellationToken;

use crate::columns::cast_column;
use crate::sql_text::literal;

/// The table the registry is mirrored to.
pub(crate) const DEVICES_TABLE: &str = "_devices";

/// How often the registry is checked for changes (cheap: a counter, then a list on change).
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// What the hub needs of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Described {
    site: String,
    device_type: String,
    /// `labels` as canonical JSON (sorted keys).
    labels: String,
}

/// Mirrors `registry` into `_devices` as node `node` until `stop`.
pub(crate) async fn run(
    store: std::sync::Arc<Store>,
    registry: Registry,
    node: String,
    stop: CancellationToken,
) {
    let mut known = match mirrored(&store, &node).await {
        Ok(known) => known,
        Err(e) => {
            tracing::warn!(error = %e, "The devices mirrored for the hub could not be read; all are written again.");
            BTreeMap::new()
        }
    };
    let mut seen_generation = None;
    loop {
        let generation = registry.generation();
        if seen_generation != Some(generation) {
            match mirror_once(&store, &registry, &node, &mut known).await {
                Ok(()) => seen_generation = Some(generation),
                Err(e) => {
                    tracing::warn!(error = %e, "The device registry could not be mirrored for the hub; retrying.")
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

/// Writes the rows that bring `known` (what `_devices` says) to the registry's devices.
async fn mirror_once(
    store: &Store,
    registry: &Registry,
    node: &str,
    known: &mut BTreeMap<String, Described>,
) -> Result<(), String> {
    let devices = registry
        .list(&DeviceFilter::default())
        .await
        .map_err(|e| e.to_string())?;
    let current: BTreeMap<String, Described> = devices
        .into_iter()
        .map(|d| {
            let labels = serde_json::to_string(&d.labels).unwrap_or_else(|_| "{}".into());
            (
                d.id,
                Described {
                    site: d.site,
                    device_type: d.device_type,
                    labels,
                },
            )
        })
        .collect();
    let rows = changes(known, &current, node, Timestamp::now());
    if rows.is_empty() {
        return Ok(());
    }
    let lineage = Lineage {
        source: SourceId("registry".into()),
        raw_id: store.next_raw_id(),
        mapping_version: 0,
    };
    store
        .write_points(&rows, lineage, DEVICES_TABLE)
        .await
        .map_err(|e| e.to_string())?;
    *known = current;
    Ok(())
}

/// The rows that bring `known` to `current`: one per new or changed device, one `removed` per
/// device gone.
fn changes(
    known: &BTreeMap<String, Described>,
    current: &BTreeMap<String, Described>,
    node: &str,
    time: Timestamp,
) -> Vec<Point> {
    let row = |device: &str, described: &Described, removed: bool| Point {
        measurement: DEVICES_TABLE.into(),
        tags: vec![
            ("node".into(), node.to_owned()),
            ("device".into(), device.to_owned()),
        ],
        fields: vec![
            ("site".into(), Value::Str(described.site.clone())),
            (
                "device_type".into(),
                Value::Str(described.device_type.clone()),
            ),
            ("labels".into(), Value::Str(described.labels.clone())),
            ("removed".into(), Value::Bool(removed)),
        ],
        time,
        quality: Quality::Good,
    };
    let mut rows: Vec<Point> = current
        .iter()
        .filter(|(id, described)| known.get(*id) != Some(described))
        .map(|(id, described)| row(id, described, false))
        .collect();
    rows.extend(
        known
            .iter()
            .filter(|(id, _)| !current.contains_key(*id))
            .map(|(id, described)| row(id, described, true)),
    );
    rows
}

/// The latest `_devices` row of every node and device, removed ones included.
async fn latest_rows(
    store: &Store,
    node: Option<&str>,
) -> Result<Vec<(String, String, Described, bool)>, String> {
    if !store.has_table(DEVICES_TABLE) {
        return Ok(Vec::new());
    }
    let only = node.map_or(String::new(), |n| format!(" WHERE node = {}", literal(n)));
    let sql = format!(
        "SELECT node, device, last_value(site ORDER BY time) AS site, \
         last_value(device_type ORDER BY time) AS device_type, \
         last_value(labels ORDER BY time) AS labels, \
         last_value(removed ORDER BY time) AS removed \
         FROM {DEVICES_TABLE}{only} GROUP BY node, device ORDER BY device, node"
    );
    let output = store.query(&sql).await.map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for batch in &output.batches {
        let text = |index: usize, what: &str| -> Result<StringArray, String> {
            cast_column(batch, index, &DataType::Utf8, what)
        };
        let (nodes, devices, sites, types, labels) = (
            text(0, "node")?,
            text(1, "device")?,
            text(2, "site")?,
            text(3, "device_type")?,
            text(4, "labels")?,
        );
        let removed: BooleanArray = cast_column(batch, 5, &DataType::Boolean, "removed")?;
        for row in 0..batch.num_rows() {
            let value = |array: &StringArray| {
                if array.is_null(row) {
                    String::new()
                } else {
                    array.value(row).to_owned()
                }
            };
            rows.push((
                value(&nodes),
                value(&devices),
                Described {
                    site: value(&sites),
                    device_type: value(&types),
                    labels: value(&labels),
                },
                !removed.is_null(row) && removed.value(row),
            ));
        }
    }
    Ok(rows)
}

/// What `_devices` says of `node`'s devices now, removed ones left out.
async fn mirrored(store: &Store, node: &str) -> Result<BTreeMap<String, Described>, String> {
    Ok(latest_rows(store, Some(node))
        .await?
        .into_iter()
        .filter(|(_, _, _, removed)| !removed)
        .map(|(_, device, described, _)| (device, described))
        .collect())
}

/// The devices the fleet's edges mirrored here (on a hub: every uplinked edge's registry),
/// each with the node that registers it; removed ones left out.
pub(crate) async fn fleet_devices(store: &Store) -> Result<Vec<FleetDevice>, String> {
    Ok(latest_rows(store, None)
        .await?
        .into_iter()
        .filter(|(_, _, _, removed)| !removed)
        .map(|(node, id, described, _)| FleetDevice {
            node,
            id,
            site: described.site,
            device_type: described.device_type,
            labels: serde_json::from_str(&described.labels).unwrap_or_default(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn described(site: &str) -> Described {
        Described {
            site: site.into(),
            device_type: "pump".into(),
            labels: "{}".into(),
        }
    }

    #[test]
    fn only_new_changed_and_removed_devices_are_written() {
        let known: BTreeMap<String, Described> = [
            ("kept".to_owned(), described("a")),
            ("moved".to_owned(), described("a")),
            ("gone".to_owned(), described("a")),
        ]
        .into();
        let current: BTreeMap<String, Described> = [
            ("kept".to_owned(), described("a")),
            ("moved".to_owned(), described("b")),
            ("new".to_owned(), described("c")),
        ]
        .into();
        let rows = changes(&known, &current, "line-1", Timestamp(1));
        let summary: Vec<(String, Value, Value)> = rows
            .iter()
            .map(|p| {
                (
                    p.tags[1].1.clone(),
                    p.fields[0].1.clone(),
                    p.fields[3].1.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("moved".into(), Value::Str("b".into()), Value::Bool(false)),
                ("new".into(), Value::Str("c".into()), Value::Bool(false)),
                ("gone".into(), Value::Str("a".into()), Value::Bool(true)),
            ]
        );
        assert!(
            rows.iter()
                .all(|p| p.tags[0] == ("node".into(), "line-1".into()))
        );
        assert!(changes(&current, &current, "line-1", Timestamp(1)).is_empty());
    }

    #[tokio::test]
    async fn the_store_answers_what_was_mirrored_and_the_fleet_leaves_removed_devices_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(fabrik_store::StoreOptions::new(dir.path()))
            .await
            .expect("store");
        let write = |rows: Vec<Point>| {
            let store = store.clone();
            async move {
                let lineage = Lineage {
                    source: SourceId("registry".into()),
                    raw_id: store.next_raw_id(),
                    mapping_version: 0,
                };
                store
                    .write_points(&rows, lineage, DEVICES_TABLE)
                    .await
                    .expect("write");
            }
        };
        let empty = BTreeMap::new();
        let first: BTreeMap<String, Described> = [
            ("p1".to_owned(), described("a")),
            ("p2".to_owned(), described("a")),
        ]
        .into();
        write(changes(&empty, &first, "line-1", Timestamp(10))).await;
        let second: BTreeMap<String, Described> = [("p1".to_owned(), described("b"))].into();
        write(changes(&first, &second, "line-1", Timestamp(20))).await;
        assert_eq!(mirrored(&store, "line-1").await.expect("read"), second);
        assert!(mirrored(&store, "line-2").await.expect("read").is_empty());
        let fleet = fleet_devices(&store).await.expect("fleet");
        assert_eq!(fleet.len(), 1);
        assert_eq!((fleet[0].id.as_str(), fleet[0].site.as_str()), ("p1", "b"));
        assert_eq!(fleet[0].node, "line-1");
    }
}
