//! An uplinked edge's device registry, mirrored into the store as `_devices` rows (decision
//! 0036), so the hub it forwards to knows each device's site, type and labels: a row per
//! device when it appears or changes, a `removed` row when it goes, and every row again at
//! start and hourly, so a hub that lost rows (backlog given up, retention, a new hub) learns
//! them again. The uplink carries the rows like any other table; the hub reads the latest row
//! per node and device that arrived from that node's own mirror ([`fleet_devices`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use fabrik_core::{Lineage, Point, Quality, SourceId, Timestamp, Value};
use fabrik_registry::{DeviceFilter, FleetDevice, Registry};
use fabrik_store::Store;
use tokio_util::sync::CancellationToken;

pub(crate) use fabrik_api::fleet::{DEVICES_TABLE, MIRROR_SOURCE as SOURCE};

/// How often the registry is checked for changes (cheap: a counter, then a list on change).
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// How often every device's row is written again.
const REFRESH_EVERY: Duration = Duration::from_secs(3600);

/// What the hub needs of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Described {
    site: String,
    device_type: String,
    /// `labels` as canonical JSON (sorted keys).
    labels: String,
}

/// What this node's `_devices` rows say: the devices present, the ids removed, and the
/// latest row's time.
#[derive(Debug, Default)]
struct Mirrored {
    present: BTreeMap<String, Described>,
    removed: BTreeSet<String>,
    last_stamp: i64,
}

/// Mirrors `registry` into `_devices` as node `node` until `stop`.
pub(crate) async fn run(
    store: std::sync::Arc<Store>,
    registry: Registry,
    node: String,
    stop: CancellationToken,
) {
    let mut mirrored = match mirrored(&store, &node).await {
        Ok(mirrored) => mirrored,
        Err(e) => {
            tracing::warn!(error = %e, "The devices mirrored for the hub could not be read; all are written again.");
            Mirrored::default()
        }
    };
    let mut seen_generation = None;
    let mut refreshed: Option<Instant> = None;
    loop {
        let generation = registry.generation();
        let full = refreshed.is_none_or(|at| at.elapsed() >= REFRESH_EVERY);
        if full || seen_generation != Some(generation) {
            match mirror_once(&store, &registry, &node, &mut mirrored, full).await {
                Ok(()) => {
                    seen_generation = Some(generation);
                    if full {
                        refreshed = Some(Instant::now());
                    }
                }
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

/// Writes the rows that bring `mirrored` to the registry's devices (`full`: every device's
/// and every removed id's row again).
async fn mirror_once(
    store: &Store,
    registry: &Registry,
    node: &str,
    mirrored: &mut Mirrored,
    full: bool,
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
    // Later than every row written before, whatever the clock did since: the hub takes
    // the latest row by time.
    let stamp = Timestamp::now().nanos().max(mirrored.last_stamp + 1);
    let rows = changes(mirrored, &current, full, node, Timestamp(stamp));
    if !rows.is_empty() {
        let lineage = Lineage {
            source: SourceId(SOURCE.into()),
            raw_id: store.next_raw_id(),
            mapping_version: 0,
        };
        store
            .write_points(&rows, lineage, DEVICES_TABLE)
            .await
            .map_err(|e| e.to_string())?;
        mirrored.last_stamp = stamp;
    }
    let gone: Vec<String> = mirrored
        .present
        .keys()
        .filter(|id| !current.contains_key(*id))
        .cloned()
        .collect();
    mirrored.removed.extend(gone);
    mirrored.removed.retain(|id| !current.contains_key(id));
    mirrored.present = current;
    Ok(())
}

/// The rows that bring `mirrored` to `current`: one per new or changed device and one
/// `removed` per device gone; with `full`, one per device and per id ever removed.
fn changes(
    mirrored: &Mirrored,
    current: &BTreeMap<String, Described>,
    full: bool,
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
    let nothing = Described {
        site: String::new(),
        device_type: String::new(),
        labels: "{}".into(),
    };
    let mut rows: Vec<Point> = current
        .iter()
        .filter(|(id, described)| full || mirrored.present.get(*id) != Some(described))
        .map(|(id, described)| row(id, described, false))
        .collect();
    rows.extend(
        mirrored
            .present
            .iter()
            .filter(|(id, _)| !current.contains_key(*id))
            .map(|(id, described)| row(id, described, true)),
    );
    if full {
        rows.extend(
            mirrored
                .removed
                .iter()
                .filter(|id| !current.contains_key(*id) && !mirrored.present.contains_key(*id))
                .map(|id| row(id, &nothing, true)),
        );
    }
    rows
}

/// What `_devices` says of `node`'s devices now.
async fn mirrored(store: &Store, node: &str) -> Result<Mirrored, String> {
    let mut mirrored = Mirrored::default();
    for row in fabrik_api::fleet::latest_devices(store, Some(node)).await? {
        mirrored.last_stamp = mirrored.last_stamp.max(row.latest_ns);
        if row.removed {
            mirrored.removed.insert(row.device);
        } else {
            mirrored.present.insert(
                row.device,
                Described {
                    site: row.site,
                    device_type: row.device_type,
                    labels: row.labels,
                },
            );
        }
    }
    Ok(mirrored)
}

/// The devices the fleet's edges mirrored here (on a hub: every uplinked edge's registry),
/// each with the node that registers it; removed ones left out.
pub(crate) async fn fleet_devices(store: &Store) -> Result<Vec<FleetDevice>, String> {
    Ok(fabrik_api::fleet::latest_devices(store, None)
        .await?
        .into_iter()
        .filter(|row| !row.removed)
        .map(|row| FleetDevice {
            node: row.node,
            id: row.device,
            site: row.site,
            device_type: row.device_type,
            labels: serde_json::from_str(&row.labels).unwrap_or_default(),
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

    fn devices(list: &[(&str, &str)]) -> BTreeMap<String, Described> {
        list.iter()
            .map(|(id, site)| ((*id).to_owned(), described(site)))
            .collect()
    }

    fn summary(rows: &[Point]) -> Vec<(String, Value, Value)> {
        rows.iter()
            .map(|p| {
                (
                    p.tags[1].1.clone(),
                    p.fields[0].1.clone(),
                    p.fields[3].1.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn only_new_changed_and_removed_devices_are_written_unless_all_are() {
        let mirrored = Mirrored {
            present: devices(&[("kept", "a"), ("moved", "a"), ("gone", "a")]),
            removed: ["long-gone".to_owned()].into(),
            last_stamp: 0,
        };
        let current = devices(&[("kept", "a"), ("moved", "b"), ("new", "c")]);
        let rows = changes(&mirrored, &current, false, "line-1", Timestamp(1));
        assert_eq!(
            summary(&rows),
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
        // A refresh writes every device and every removed id again.
        let all = changes(&mirrored, &current, true, "line-1", Timestamp(1));
        let ids: Vec<String> = summary(&all).into_iter().map(|(id, _, _)| id).collect();
        assert_eq!(ids, ["kept", "moved", "new", "gone", "long-gone"]);
        let unchanged = Mirrored {
            present: current.clone(),
            ..Mirrored::default()
        };
        assert!(changes(&unchanged, &current, false, "line-1", Timestamp(1)).is_empty());
    }

    async fn write(store: &Store, rows: Vec<Point>, source: &str) {
        let lineage = Lineage {
            source: SourceId(source.into()),
            raw_id: store.next_raw_id(),
            mapping_version: 0,
        };
        store
            .write_points(&rows, lineage, DEVICES_TABLE)
            .await
            .expect("write");
    }

    #[tokio::test]
    async fn the_store_answers_what_was_mirrored_and_the_fleet_only_what_each_node_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(fabrik_store::StoreOptions::new(dir.path()))
            .await
            .expect("store");
        let first = devices(&[("p1", "a"), ("p2", "a")]);
        let rows = changes(&Mirrored::default(), &first, false, "line-1", Timestamp(10));
        write(&store, rows, SOURCE).await;
        let before = Mirrored {
            present: first,
            ..Mirrored::default()
        };
        let second = devices(&[("p1", "b")]);
        write(
            &store,
            changes(&before, &second, false, "line-1", Timestamp(20)),
            SOURCE,
        )
        .await;
        let read = mirrored(&store, "line-1").await.expect("read");
        assert_eq!(read.present, second);
        assert_eq!(read.removed, ["p2".to_owned()].into());
        assert_eq!(read.last_stamp, 20);
        assert!(
            mirrored(&store, "line-2")
                .await
                .expect("read")
                .present
                .is_empty()
        );

        // A hub: rows arrive stamped `uplink:<node>/registry`. A row for line-1 sent by
        // line-2, or written through the API, is not line-1's word.
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = Store::open(fabrik_store::StoreOptions::new(dir.path()))
            .await
            .expect("store");
        let line1 = devices(&[("p1", "a")]);
        write(
            &hub,
            changes(&Mirrored::default(), &line1, false, "line-1", Timestamp(10)),
            "uplink:line-1/registry",
        )
        .await;
        let forged = devices(&[("p9", "a")]);
        write(
            &hub,
            changes(
                &Mirrored::default(),
                &forged,
                false,
                "line-1",
                Timestamp(11),
            ),
            "uplink:line-2/registry",
        )
        .await;
        write(
            &hub,
            changes(
                &Mirrored::default(),
                &forged,
                false,
                "line-1",
                Timestamp(12),
            ),
            "uplink:line-1/http",
        )
        .await;
        let fleet = fleet_devices(&hub).await.expect("fleet");
        let ids: Vec<(&str, &str)> = fleet
            .iter()
            .map(|d| (d.node.as_str(), d.id.as_str()))
            .collect();
        assert_eq!(ids, [("line-1", "p1")]);
    }
}
