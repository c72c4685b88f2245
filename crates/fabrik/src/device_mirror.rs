//! An uplinked edge's device registry, mirrored into the store as `_devices` rows (decision
//! 0036), so the hub it forwards to knows each device's site, type and labels: a row per
//! device when it appears or changes, a `removed` row when it goes, and every row again at
//! start and daily (removals of the last week included), so a hub that lost rows (a backlog
//! given up, its retention, a new hub) learns them again. The uplink carries the rows like
//! any other table; the hub reads the latest row per node and device that arrived from that
//! node's own mirror ([`fleet_devices`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fabrik_core::{Point, Quality, Timestamp, Value};
use fabrik_registry::{DeviceFilter, FleetDevice, Registry};
use fabrik_store::Store;
use tokio_util::sync::CancellationToken;

pub(crate) use fabrik_api::fleet::{DEVICES_TABLE, MIRROR_SOURCE as SOURCE};

/// How often the registry is checked for changes (cheap: a counter, then a list on change).
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// How often every device's row is written again.
const REFRESH_EVERY: Duration = Duration::from_secs(24 * 3600);

/// How long a removal is written again with each refresh (ns): a hub that missed it within
/// this long still learns it.
const RESEND_REMOVALS_NS: i64 = 7 * 24 * 3600 * 1_000_000_000;

/// A previous write stamped further ahead of the clock than this was stamped by a clock that
/// was wrong: later writes follow the clock again rather than that time.
const CLOCK_AHEAD_NS: i64 = 24 * 3600 * 1_000_000_000;

/// What the hub needs of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Described {
    site: String,
    device_type: String,
    /// `labels` as canonical JSON (sorted keys).
    labels: String,
}

/// What this node's `_devices` rows say: the devices present, the ids removed (with when),
/// and the latest row's time.
#[derive(Debug, Default)]
struct Mirrored {
    present: BTreeMap<String, Described>,
    removed: BTreeMap<String, i64>,
    last_stamp: i64,
}

/// Mirrors `registry` into `_devices` as node `node` until `stop`.
pub(crate) async fn run(
    store: std::sync::Arc<Store>,
    registry: Registry,
    node: String,
    stop: CancellationToken,
) {
    // Without what was mirrored before, a device removed while the process was down would
    // never get its `removed` row: wait for it rather than start from nothing.
    let mut mirrored = loop {
        match mirrored(&store, &node).await {
            Ok(mirrored) => break mirrored,
            Err(e) => {
                tracing::warn!(error = %e, "The devices mirrored for the hub could not be read; retrying.")
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
    };
    let mut seen_generation = None;
    let mut refreshed: Option<Instant> = None;
    loop {
        let generation = registry.generation();
        let full = refreshed.is_none_or(|at| at.elapsed() >= REFRESH_EVERY);
        if full || seen_generation != Some(generation) {
            let now = Timestamp::now().nanos();
            match mirror_once(&store, &registry, &node, &mut mirrored, full, now).await {
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

/// The time of the next write: after every earlier one, so the hub's latest row is the
/// newest description even after the clock stepped back, unless the earlier ones were
/// stamped by a clock a day or more ahead.
fn next_stamp(last_stamp: i64, now: i64) -> i64 {
    if last_stamp > now.saturating_add(CLOCK_AHEAD_NS) {
        tracing::warn!(
            "_devices rows were stamped a day or more ahead of this clock; stamping by the clock again."
        );
        now
    } else {
        now.max(last_stamp + 1)
    }
}

/// Writes the rows that bring `mirrored` to the registry's devices (`full`: every device's
/// and every recent removal's row again). `mirrored` changes only once they are stored.
async fn mirror_once(
    store: &Store,
    registry: &Registry,
    node: &str,
    mirrored: &mut Mirrored,
    full: bool,
    now: i64,
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
    let stamp = next_stamp(mirrored.last_stamp, now);
    let rows = changes(mirrored, &current, full, node, Timestamp(stamp));
    if !rows.is_empty() {
        store
            .write_computed(&rows, SOURCE, DEVICES_TABLE)
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
    for id in gone {
        mirrored.removed.insert(id, stamp);
    }
    mirrored
        .removed
        .retain(|id, at| !current.contains_key(id) && stamp - *at <= RESEND_REMOVALS_NS);
    mirrored.present = current;
    Ok(())
}

/// The rows that bring `mirrored` to `current`: one per new or changed device and one
/// `removed` per device gone; with `full`, one per device and per removal of the last week.
fn changes(
    mirrored: &Mirrored,
    current: &BTreeMap<String, Described>,
    full: bool,
    node: &str,
    time: Timestamp,
) -> Vec<Point> {
    let row = |device: &str, described: &Described, removed_at: Option<i64>| Point {
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
            ("removed".into(), Value::Bool(removed_at.is_some())),
            // When it was removed, kept as the removal is written again (0: present).
            ("removed_at".into(), Value::I64(removed_at.unwrap_or(0))),
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
        .map(|(id, described)| row(id, described, None))
        .collect();
    rows.extend(
        mirrored
            .present
            .iter()
            .filter(|(id, _)| !current.contains_key(*id))
            .map(|(id, described)| row(id, described, Some(time.0))),
    );
    if full {
        rows.extend(
            mirrored
                .removed
                .iter()
                .filter(|(id, at)| {
                    !current.contains_key(*id)
                        && !mirrored.present.contains_key(*id)
                        && time.0 - **at <= RESEND_REMOVALS_NS
                })
                .map(|(id, at)| row(id, &nothing, Some(*at))),
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
            mirrored.removed.insert(row.device, row.removed_at);
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

    const DAY: i64 = 24 * 3600 * 1_000_000_000;

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
        let now = 100 * DAY;
        let mirrored = Mirrored {
            present: devices(&[("kept", "a"), ("moved", "a"), ("gone", "a")]),
            removed: [
                ("lately-gone".to_owned(), now - DAY),
                ("long-gone".to_owned(), now - 30 * DAY),
            ]
            .into(),
            last_stamp: 0,
        };
        let current = devices(&[("kept", "a"), ("moved", "b"), ("new", "c")]);
        let rows = changes(&mirrored, &current, false, "line-1", Timestamp(now));
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
        // A refresh writes every device and the last week's removals again, each removal
        // with the time it happened.
        let all = changes(&mirrored, &current, true, "line-1", Timestamp(now));
        let ids: Vec<String> = summary(&all).into_iter().map(|(id, _, _)| id).collect();
        assert_eq!(ids, ["kept", "moved", "new", "gone", "lately-gone"]);
        assert_eq!(all[4].fields[4].1, Value::I64(now - DAY));
        let unchanged = Mirrored {
            present: current.clone(),
            ..Mirrored::default()
        };
        assert!(changes(&unchanged, &current, false, "line-1", Timestamp(now)).is_empty());
    }

    #[test]
    fn stamps_follow_earlier_writes_unless_a_wrong_clock_made_them() {
        assert_eq!(next_stamp(0, 50), 50);
        // The clock stepped back a minute: after the last write still.
        assert_eq!(next_stamp(1000, 940), 1001);
        // The last write was stamped two days ahead: the clock again.
        assert_eq!(next_stamp(10 * DAY, 8 * DAY), 8 * DAY);
    }

    async fn store(dir: &std::path::Path) -> std::sync::Arc<Store> {
        Store::open(fabrik_store::StoreOptions::new(dir))
            .await
            .expect("store")
    }

    async fn write(store: &Store, rows: Vec<Point>, source: &str) {
        store
            .write_computed(&rows, source, DEVICES_TABLE)
            .await
            .expect("write");
    }

    #[tokio::test]
    async fn a_registry_is_mirrored_and_read_back_across_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir.path().join("data")).await;
        let registry = Registry::open(&dir.path().join("registry.db"))
            .await
            .expect("registry");
        for (id, site) in [("p1", "a"), ("p2", "a")] {
            let device = fabrik_registry::NewDevice {
                id: id.into(),
                site: Some(site.into()),
                ..fabrik_registry::NewDevice::default()
            };
            registry.add(device).await.expect("add");
        }
        let mut mirrored = Mirrored::default();
        let now = Timestamp::now().nanos();
        mirror_once(&store, &registry, "line-1", &mut mirrored, true, now)
            .await
            .expect("mirror");
        registry.remove("p2").await.expect("remove");
        mirror_once(
            &store,
            &registry,
            "line-1",
            &mut mirrored,
            false,
            now + 1000,
        )
        .await
        .expect("mirror");
        assert_eq!(mirrored.removed, [("p2".to_owned(), now + 1000)].into());
        // What a restart reads back: p1 present, p2 removed at its time, the last stamp.
        let read = super::mirrored(&store, "line-1").await.expect("read");
        let p1 = Described {
            device_type: String::new(),
            ..described("a")
        };
        assert_eq!(read.present, [("p1".to_owned(), p1)].into());
        assert_eq!(read.removed, mirrored.removed);
        assert_eq!(read.last_stamp, now + 1000);
        // Nothing changed: nothing written.
        mirror_once(
            &store,
            &registry,
            "line-1",
            &mut mirrored,
            false,
            now + 2000,
        )
        .await
        .expect("mirror");
        assert_eq!(mirrored.last_stamp, now + 1000);
    }

    #[tokio::test]
    async fn the_fleet_is_only_what_each_node_sent_of_itself() {
        // A hub: rows arrive stamped `uplink:<node>/registry`. A row for line-1 sent by
        // line-2, or written through the API, is not line-1's word.
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = store(dir.path()).await;
        let none = Mirrored::default();
        let line1 = devices(&[("p1", "a")]);
        write(
            &hub,
            changes(&none, &line1, false, "line-1", Timestamp(10)),
            "uplink:line-1/registry",
        )
        .await;
        let forged = devices(&[("p9", "a")]);
        write(
            &hub,
            changes(&none, &forged, false, "line-1", Timestamp(11)),
            "uplink:line-2/registry",
        )
        .await;
        write(
            &hub,
            changes(&none, &forged, false, "line-1", Timestamp(12)),
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
