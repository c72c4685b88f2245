//! A read-only node's view of a bucket prefix another node's store writes (decision 0079): the
//! writer's manifest copy, read at the start and again every refresh interval (or when a query
//! finds a segment gone), followed to a new owner after a restore. It writes nothing there.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _};

use crate::manifest::Manifest;
use crate::objects::{
    self, BucketClaim, LOCAL_RECORD, MARKER, Marker, ObjectStorage, Root, objects_error,
};
use crate::segments::Objects;
use crate::{StoreError, data_dir_error};

/// Reads the manifest of the store that owns a prefix.
pub(crate) struct Follower {
    url: String,
    bucket: Arc<dyn ObjectStore>,
    root: Root,
    marker: ObjectPath,
    /// How often [`crate::Store::run_background`] refreshes.
    pub(crate) every: Duration,
    /// What the last read found; the lock also keeps refreshes one at a time.
    seen: tokio::sync::Mutex<Seen>,
    /// The owner as last read, apart from `seen`: a refused write names it at once, without
    /// waiting for a refresh that may be retrying against a slow bucket.
    owner: parking_lot::Mutex<String>,
    /// When a read of the owner's manifest last succeeded (ns since the epoch).
    pub(crate) read_at: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower").field("url", &self.url).finish()
    }
}

/// The owner and the version of its manifest copy last read.
#[derive(Debug, Default)]
struct Seen {
    /// Empty before the first read.
    store_id: String,
    /// `None` while the owner has not copied its manifest yet.
    e_tag: Option<String>,
}

/// What a read-only store starts from.
pub(crate) struct Opened {
    pub(crate) objects: Objects,
    /// For reading blobs; a read-only store never writes through it.
    pub(crate) claim: Arc<BucketClaim>,
    pub(crate) follower: Follower,
    pub(crate) manifest: Manifest,
}

/// Connects to the prefix `storage` names and reads its owner's manifest. `dir` holds only
/// this node's caches, so it must not hold a store.
pub(crate) async fn open(
    dir: &Path,
    storage: &ObjectStorage,
    every: Duration,
) -> Result<Opened, StoreError> {
    refuse_a_store_in(dir)?;
    let url = storage.url.trim();
    let (bucket, root) = objects::connect(storage)?;
    let follower = Follower {
        url: url.to_owned(),
        marker: root.join(MARKER),
        bucket: bucket.clone(),
        root: root.clone(),
        every,
        seen: tokio::sync::Mutex::default(),
        owner: parking_lot::Mutex::default(),
        read_at: std::sync::atomic::AtomicI64::new(0),
    };
    let manifest = follower.refresh().await?.unwrap_or_default();
    let owner = follower.owner();
    tracing::info!(url, store_id = %owner, tables = manifest.tables.len(), "Reading the prefix another store writes (read-only).");
    Ok(Opened {
        objects: objects::segments_under(bucket.clone(), &root),
        claim: Arc::new(BucketClaim::new(url, owner, &root, bucket)),
        follower,
        manifest,
    })
}

impl Follower {
    /// `[store.objects] url`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The store whose prefix this is, as last read.
    pub(crate) fn owner(&self) -> String {
        self.owner.lock().clone()
    }

    /// The owner's manifest if it changed since the last read (`None`: unchanged). A
    /// restore elsewhere hands the prefix to a new store, whose manifest is read from then on.
    pub(crate) async fn refresh(&self) -> Result<Option<Manifest>, StoreError> {
        let mut seen = self.seen.lock().await;
        let started = fabrik_core::Timestamp::now().nanos();
        let refreshed = self.read_owner(&mut seen).await;
        if refreshed.is_ok() {
            self.read_at
                .store(started, std::sync::atomic::Ordering::Relaxed);
        }
        refreshed
    }

    async fn read_owner(&self, seen: &mut Seen) -> Result<Option<Manifest>, StoreError> {
        let owner = match objects::read_marker(&self.bucket, &self.marker, &self.url).await? {
            Marker::Found(claim) => claim.store_id,
            Marker::Absent => {
                return Err(objects_error(
                    &self.url,
                    format!(
                        "no store owns the prefix ({MARKER} is not there): a read-only node \
                         reads what the store owning it writes, so start that one first"
                    ),
                ));
            }
            Marker::Unreachable(why) => return Err(objects_error(&self.url, why)),
        };
        let path = objects::manifest_copy(&self.root, &owner);
        if owner == seen.store_id {
            // One HEAD per refresh while nothing changed; the manifest only when it did.
            match self.bucket.head(&path).await {
                Ok(meta) if meta.e_tag.is_some() && meta.e_tag == seen.e_tag => return Ok(None),
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) if seen.e_tag.is_none() => {
                    return Ok(None);
                }
                Err(object_store::Error::NotFound { .. }) => return Err(self.copy_gone(&path)),
                Err(e) => return Err(objects_error(&self.url, format!("reading {path}: {e}"))),
            }
        } else if !seen.store_id.is_empty() {
            tracing::warn!(url = %self.url, previous = %seen.store_id, store_id = %owner, "The prefix changed hands (a restore elsewhere): reading the new owner's manifest.");
        }
        let read = objects::get_json::<Manifest>(
            self.bucket.as_ref(),
            &path,
            &self.url,
            "a store's manifest",
        )
        .await?;
        match read {
            Some((manifest, meta)) => {
                self.owner.lock().clone_from(&owner);
                *seen = Seen {
                    store_id: owner,
                    e_tag: meta.e_tag,
                };
                Ok(Some(manifest))
            }
            // The prefix changed hands but the new owner's copy is missing (a restore writes it
            // before the marker, so only if it was deleted since): the previous owner's
            // segments stay until the new owner compacts, so keep answering from them.
            None if !seen.store_id.is_empty() && owner != seen.store_id => {
                tracing::warn!(url = %self.url, previous = %seen.store_id, store_id = %owner, "The prefix changed hands but its new owner's manifest copy is missing: reading the previous one until it is there.");
                Ok(None)
            }
            // Claimed but not copied yet (the owner's first start is under way): nothing
            // persisted to read.
            None if owner != seen.store_id => {
                tracing::info!(url = %self.url, store_id = %owner, "The store owning the prefix has not copied its manifest yet: nothing to read until it has.");
                self.owner.lock().clone_from(&owner);
                *seen = Seen {
                    store_id: owner,
                    e_tag: None,
                };
                Ok(Some(Manifest::default()))
            }
            None if seen.e_tag.is_none() => Ok(None),
            None => Err(self.copy_gone(&path)),
        }
    }

    fn copy_gone(&self, path: &ObjectPath) -> StoreError {
        objects_error(
            &self.url,
            format!(
                "{path}, the owning store's manifest, is gone: queries keep reading the \
                 manifest last read until it is back"
            ),
        )
    }
}

/// A read-only node's data directory keeps only its caches: one holding a store (its own
/// segments, or a claim on a prefix) is refused rather than left unused beside the bucket.
fn refuse_a_store_in(dir: &Path) -> Result<(), StoreError> {
    let holds = |what: &str| {
        data_dir_error(
            dir,
            format!(
                "holds a store ({what}); a read-only node keeps only caches in its data \
                 directory: give it one of its own"
            ),
        )
    };
    if objects::read_local_claim(dir)?.is_some() {
        return Err(holds(LOCAL_RECORD));
    }
    if dir.join(crate::manifest::FILE).exists() {
        return Err(holds(crate::manifest::FILE));
    }
    if objects::holds_wal(dir) {
        return Err(holds("wal/"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_holding_a_store_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        refuse_a_store_in(dir.path()).expect("an empty directory is a reader's");
        std::fs::create_dir_all(dir.path().join("wal")).expect("wal");
        std::fs::create_dir_all(dir.path().join("segment-cache")).expect("cache");
        refuse_a_store_in(dir.path()).expect("empty wal/ and caches are a reader's");
        std::fs::write(dir.path().join("wal").join("00000001.wal"), b"x").expect("write");
        let e = refuse_a_store_in(dir.path()).unwrap_err().to_string();
        assert!(e.contains("wal/") && e.contains("of its own"), "{e}");
        std::fs::remove_file(dir.path().join("wal").join("00000001.wal")).expect("remove");
        Manifest::default().save(dir.path()).expect("save");
        let e = refuse_a_store_in(dir.path()).unwrap_err().to_string();
        assert!(e.contains(crate::manifest::FILE), "{e}");
    }
}
