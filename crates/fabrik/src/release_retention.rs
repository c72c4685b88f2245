//! Target files of a release repository that no node and no proposal can still ask for,
//! removed after each publish (decision 0084): without it, every model, definition and Fabrik
//! binary ever published stays in `targets/` on the hub's disk.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, bail};
use tough::schema::{Signed, Snapshot, Targets};

use crate::release::{hex, metadata_dir};

/// What one pass removed.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Removed {
    pub(crate) files: usize,
    pub(crate) bytes: u64,
}

/// The file names (`<sha256>.<name>`, the consistent-snapshot names nodes fetch) that a
/// targets metadata names.
fn file_names(targets: &Targets, into: &mut HashSet<String>) {
    for (name, target) in &targets.targets {
        into.insert(format!(
            "{}.{}",
            hex(&target.hashes.sha256),
            name.resolved()
        ));
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{}: not TUF metadata", path.display()))
}

/// The target files still needed: those named by the targets metadata of every snapshot kept
/// in `metadata/` (a node may be reading any of them: it fetched a timestamp naming it just
/// before it was replaced) and by every stored proposal, whether or not it can still be
/// published (withdrawing one is what lets its file go). Any of these that cannot be read
/// is an error: then nothing is removed.
fn needed(repo: &Path) -> anyhow::Result<HashSet<String>> {
    let metadata = metadata_dir(repo);
    let mut versions = HashSet::new();
    for entry in
        std::fs::read_dir(&metadata).with_context(|| format!("reading {}", metadata.display()))?
    {
        let entry = entry.with_context(|| format!("reading {}", metadata.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with("snapshot.json") {
            let snapshot: Signed<Snapshot> = read_json(&entry.path())?;
            let Some(targets) = snapshot.signed.meta.get("targets.json") else {
                bail!("{name} names no targets.json");
            };
            versions.insert(targets.version.get());
        }
    }
    if versions.is_empty() {
        bail!("{} holds no snapshot", metadata.display());
    }
    let mut names = HashSet::new();
    for version in versions {
        let targets: Signed<Targets> =
            read_json(&metadata.join(format!("{version}.targets.json")))?;
        file_names(&targets.signed, &mut names);
    }
    for targets in crate::release_proposals::proposed_targets(repo)? {
        file_names(&targets, &mut names);
    }
    Ok(names)
}

/// Whether `name` is a name this repository stores target files under (`<64 hex digits>.`
/// then the target's name), so that a file put beside them by hand is never touched.
fn stored_target_name(name: &str) -> bool {
    name.split_once('.').is_some_and(|(digest, rest)| {
        digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()) && !rest.is_empty()
    })
}

/// How long a file stays after it arrived in `targets/` whatever names it: a publisher that
/// signed on a copy of the repository and syncs it over may copy `targets/` before the
/// `metadata/` that names its new files. (None in unit tests, which publish in a second what
/// a repository sees in months; the grace itself is tested on its own.)
#[cfg(not(test))]
const GRACE: std::time::Duration = std::time::Duration::from_secs(3600);
#[cfg(test)]
const GRACE: std::time::Duration = std::time::Duration::ZERO;

/// Whether the file arrived (or was renamed) within `grace`: by its inode's change time,
/// which a copy that keeps modification times (`rsync -a`) cannot set back.
fn arrived_recently(metadata: &std::fs::Metadata, grace: std::time::Duration) -> bool {
    use std::os::unix::fs::MetadataExt;
    let changed = std::time::UNIX_EPOCH
        + std::time::Duration::new(
            u64::try_from(metadata.ctime()).unwrap_or(0),
            u32::try_from(metadata.ctime_nsec()).unwrap_or(0),
        );
    changed
        .elapsed()
        .map_or(!grace.is_zero(), |age| age < grace)
}

/// Removes from `targets/` the target files nothing needs any more (see [`needed`]), and the
/// temporary files of writes that never finished, once they are older than [`GRACE`]. The
/// caller holds the repository's lock, so no write of this repository's is under way.
pub(crate) fn remove_unneeded(repo: &Path) -> anyhow::Result<Removed> {
    remove_unneeded_older_than(repo, GRACE)
}

fn remove_unneeded_older_than(repo: &Path, grace: std::time::Duration) -> anyhow::Result<Removed> {
    let needed = needed(repo)?;
    let dir = repo.join("targets");
    let mut removed = Removed::default();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let unfinished =
            name.starts_with('.') && name.ends_with(".partial") && stored_target_name(&name[1..]);
        let unneeded = stored_target_name(name) && !needed.contains(name);
        if !kind.is_file() || !(unfinished || unneeded) {
            continue;
        }
        let Ok(metadata) = entry.metadata() else {
            continue;
        };
        if arrived_recently(&metadata, grace) {
            continue;
        }
        let bytes = metadata.len();
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {
                removed.files += 1;
                removed.bytes += bytes;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("removing {}", entry.path().display()));
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::tests::{add_forest, forest, fresh_repository, verified_target};
    use crate::release::{Kind, Lifetimes, load_local, refresh, remove};

    async fn publish_model(repo: &Path, keys: &Path, dir: &Path, name: &str) -> String {
        let (sha256, committed) = add_forest(repo, keys, dir, name).await;
        assert!(committed.pending.is_none());
        sha256
    }

    #[tokio::test]
    async fn a_removed_targets_file_goes_once_no_kept_snapshot_names_it() {
        let (dir, repo, keys) = fresh_repository().await;
        let sha256 = publish_model(&repo, &keys, dir.path(), "pump").await;
        publish_model(&repo, &keys, dir.path(), "fan").await;
        let pump = repo.join(format!("targets/{sha256}.pump.onnx"));
        let fan = repo.join(format!("targets/{sha256}.fan.onnx"));
        let by_hand = repo.join("targets/README.txt");
        std::fs::write(&by_hand, b"put here by hand").expect("write");
        let unfinished = repo.join(format!("targets/.{sha256}.valve.onnx.partial"));
        std::fs::write(&unfinished, b"cut short").expect("write");

        remove(&repo, &keys, Kind::Model, "fan", Lifetimes::default())
            .await
            .expect("remove");
        assert!(!unfinished.exists(), "a write that never finished goes");
        // A node that fetched the timestamp just before may still be reading the snapshot
        // that names the file: kept while such a snapshot is.
        assert!(fan.is_file(), "still named by a kept snapshot");
        // Three snapshots are kept: the one that added the fan goes at the second publish.
        refresh(&repo, &keys, Lifetimes::default())
            .await
            .expect("refresh");
        assert!(fan.is_file(), "still named by a kept snapshot");
        refresh(&repo, &keys, Lifetimes::default())
            .await
            .expect("refresh");
        assert!(!fan.exists(), "named by no kept snapshot");
        assert!(pump.is_file(), "still released");
        assert!(by_hand.is_file(), "not a target file: never touched");
        // What nodes fetch still verifies.
        let loaded = load_local(&repo).await.expect("load");
        let (name, _) = loaded.all_targets().next().expect("pump");
        assert_eq!(verified_target(&loaded, name).await, forest());
    }

    #[tokio::test]
    async fn nothing_is_removed_when_a_kept_snapshot_cannot_be_read() {
        let (dir, repo, keys) = fresh_repository().await;
        let sha256 = publish_model(&repo, &keys, dir.path(), "fan").await;
        let fan = repo.join(format!("targets/{sha256}.fan.onnx"));
        remove(&repo, &keys, Kind::Model, "fan", Lifetimes::default())
            .await
            .expect("remove");
        let snapshots: Vec<_> = std::fs::read_dir(metadata_dir(&repo))
            .expect("read")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".snapshot.json"))
            .collect();
        let oldest = snapshots
            .iter()
            .min_by_key(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.split('.').next())
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .expect("a snapshot")
            .clone();
        let orphan = repo.join(format!("targets/{sha256}.orphan.onnx"));
        std::fs::write(&orphan, b"named by nothing").expect("orphan");
        let readable = std::fs::read(&oldest).expect("snapshot");
        std::fs::write(&oldest, b"{ damaged").expect("damage");
        let refused = remove_unneeded(&repo).expect_err("unreadable");
        assert!(
            format!("{refused:#}").contains("not TUF metadata"),
            "{refused:#}"
        );
        assert!(orphan.is_file() && fan.is_file(), "nothing removed");
        // Readable again: the orphan goes, unless it arrived within the grace.
        std::fs::write(&oldest, readable).expect("restore");
        let kept = remove_unneeded_older_than(&repo, std::time::Duration::from_secs(3600))
            .expect("removes");
        assert_eq!(kept, Removed::default(), "arrived a moment ago");
        assert!(orphan.is_file());
        let removed = remove_unneeded(&repo).expect("removes");
        assert_eq!(removed.files, 1);
        assert!(!orphan.exists());
        assert!(fan.is_file(), "still named by a kept snapshot");
    }
}
