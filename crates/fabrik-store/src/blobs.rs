//! The blob store: clips, images and files kept once each under the SHA-256 of their bytes,
//! in `<data dir>/blobs/sha256/<2 hex>/<62 hex>`, with their media type beside them.
//!
//! A blob is on disk and fsynced (file and directory) before `put` returns, so a row that
//! names it, acknowledged after, never points at nothing after a crash. A blob stored without
//! its row (the process died in between) is only unreferenced bytes, which [`BlobStore::sweep`]
//! deletes, with the blobs whose rows have expired, once they are older than a minimum age.
//! With segments in a bucket, a persist also copies the blobs its listings name there, and
//! `Store::fetch_blob_file` copies them back from it, streamed through a [`BlobWriter`] that
//! checks their hash before they take their name (decisions 0061, 0065).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fabrik_core::BlobId;
use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};

use crate::StoreError;

/// Media types longer than this are refused (RFC 6838 allows 127 + 1 + 127).
const MAX_MEDIA_TYPE: usize = 255;

/// The blobs of one data directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    /// Held by `put` while it refreshes a blob already stored and by `sweep` while it decides
    /// on and deletes one, so a blob stored again is never deleted under its new row.
    refresh: Arc<Mutex<()>>,
    /// Blobs stored whose rows are not written yet (see [`BlobPin`]), and how many stores of
    /// each are in flight: the sweep leaves them, however long the rows take.
    pins: Arc<Mutex<HashMap<BlobId, usize>>>,
}

/// Keeps a blob just stored from the sweep until the rows naming it are written: hold it
/// until then, and drop it after (or when giving up).
#[must_use = "dropping the pin at once leaves the blob to the sweep before its rows are written"]
#[derive(Debug)]
pub struct BlobPin {
    pins: Arc<Mutex<HashMap<BlobId, usize>>>,
    id: BlobId,
}

impl BlobPin {
    /// The id the blob is stored under.
    pub fn id(&self) -> &BlobId {
        &self.id
    }
}

impl Drop for BlobPin {
    fn drop(&mut self) {
        let mut pins = self.pins.lock();
        if let Some(count) = pins.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                pins.remove(&self.id);
            }
        }
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Blobs still named by a live row, or younger than the minimum age.
    pub kept: u64,
    /// Blobs deleted.
    pub deleted: u64,
    /// Their bytes.
    pub bytes_deleted: u64,
    /// Leftovers deleted: temporary files of interrupted stores, media types without a blob.
    pub leftovers: u64,
    /// Blobs deleted from the object storage bucket (with `[store.objects]`: decision 0061).
    pub bucket_deleted: u64,
    /// Their bytes.
    pub bucket_bytes_deleted: u64,
    /// Live blobs on the disk the bucket lacked, copied there (a store from before blobs were).
    pub bucket_uploaded: u64,
    /// Files or objects that could not be read or deleted (logged; the sweep went on).
    pub errors: u64,
}

impl std::ops::AddAssign for SweepReport {
    fn add_assign(&mut self, other: Self) {
        self.kept += other.kept;
        self.deleted += other.deleted;
        self.bytes_deleted += other.bytes_deleted;
        self.leftovers += other.leftovers;
        self.bucket_deleted += other.bucket_deleted;
        self.bucket_bytes_deleted += other.bucket_bytes_deleted;
        self.bucket_uploaded += other.bucket_uploaded;
        self.errors += other.errors;
    }
}

/// What one eviction pass did ([`crate::Store::evict_blobs`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvictionReport {
    /// Bytes of blobs on the disk before the pass.
    pub local_bytes: u64,
    /// ... and after it.
    pub local_bytes_left: u64,
    /// Blobs whose disk copy was removed (the bucket holds them).
    pub evicted: u64,
    /// Their bytes.
    pub bytes_evicted: u64,
    /// Blobs the pass would have evicted that stayed: not in the bucket yet (the rows naming
    /// them are not persisted), pinned, or stored or read again during the pass.
    pub kept: u64,
    /// Files or objects that could not be read or removed (logged).
    pub errors: u64,
}

/// A blob on the disk as the eviction orders them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct LocalBlob {
    /// When it was last stored or read (its file's modification time).
    pub(crate) used: SystemTime,
    pub(crate) id: BlobId,
    pub(crate) bytes: u64,
}

/// A stored blob and its media type.
#[derive(Debug, Clone)]
pub struct Blob {
    /// The bytes as they were stored.
    pub bytes: Vec<u8>,
    /// The media type given when it was first stored.
    pub content_type: String,
}

/// Whether `text` can be stored as a media type: printable ASCII, 1 to [`MAX_MEDIA_TYPE`]
/// bytes.
fn is_media_type(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_MEDIA_TYPE
        && text.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl BlobStore {
    /// Uses (and creates) `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        std::fs::create_dir_all(root.join("sha256"))
            .map_err(|e| StoreError::io(format!("creating {}", root.display()), e))?;
        Ok(Self {
            root,
            refresh: Arc::default(),
            pins: Arc::default(),
        })
    }

    fn path(&self, id: &BlobId) -> PathBuf {
        let hex = id.hex();
        self.root.join("sha256").join(&hex[..2]).join(&hex[2..])
    }

    fn type_path(&self, id: &BlobId) -> PathBuf {
        self.path(id).with_extension("type")
    }

    /// Stores `bytes` (once: the same bytes again cost nothing) and returns their id, pinned
    /// (hold the pin until the rows naming the blob are written), once they are durable.
    /// Blocking: call it from `spawn_blocking`.
    pub fn put(&self, bytes: &[u8], content_type: &str) -> Result<BlobPin, StoreError> {
        if !is_media_type(content_type) {
            return Err(StoreError::InvalidPoint {
                location: "content type".into(),
                reason: format!(
                    "`{}` is not a media type (printable ASCII, 1 to {MAX_MEDIA_TYPE} bytes)",
                    content_type.chars().take(64).collect::<String>()
                ),
            });
        }
        let id = BlobId::of(bytes);
        // Pinned before anything is written, so a sweep deciding on these bytes meanwhile
        // leaves them (it checks the pins under the lock taken below).
        let pin = self.pin(&id);
        let path = self.path(&id);
        let dir = path
            .parent()
            .ok_or_else(|| StoreError::Internal("blob path without a directory".into()))?;
        let io = |what: &str, e| StoreError::io(format!("{what} blob {id}"), e);
        let refresh = self.refresh.lock();
        if path.exists() {
            // Stored before, perhaps by a process killed before it synced the file or its
            // directory: sync both now, as the caller is about to acknowledge a row naming it.
            // Its modification time becomes now, so a sweep deciding on old unnamed blobs
            // leaves it to the row about to name it.
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| {
                    f.set_modified(SystemTime::now())?;
                    f.sync_all()
                })
                .map_err(|e| io("syncing", e))?;
            drop(refresh);
        } else {
            drop(refresh);
            std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
            // The media type first: the data file's presence says the blob is complete.
            write_durably(&self.type_path(&id), content_type.as_bytes())
                .map_err(|e| io("storing the media type of", e))?;
            write_durably(&path, bytes).map_err(|e| io("storing", e))?;
        }
        sync_dir(dir).map_err(|e| io("syncing the directory of", e))?;
        sync_dir(&self.root.join("sha256")).map_err(|e| io("syncing the blob root for", e))?;
        Ok(pin)
    }

    /// Keeps blob `id` from the sweep and the eviction until the pin is dropped.
    pub(crate) fn pin(&self, id: &BlobId) -> BlobPin {
        *self.pins.lock().entry(id.clone()).or_default() += 1;
        BlobPin {
            pins: self.pins.clone(),
            id: id.clone(),
        }
    }

    /// Whether blob `id` is on the disk, or pinned by a store whose rows are not written yet.
    pub(crate) fn is_held(&self, id: &BlobId) -> bool {
        self.pins.lock().contains_key(id) || self.path(id).exists()
    }

    /// The blob, or `None` if there is no such blob. Blocking.
    pub fn get(&self, id: &BlobId) -> Result<Option<Blob>, StoreError> {
        let Some((mut file, meta)) = self.open_blob(id)? else {
            return Ok(None);
        };
        let mut bytes = Vec::with_capacity(usize::try_from(meta.length).unwrap_or(0));
        file.read_to_end(&mut bytes)
            .map_err(|e| StoreError::io(format!("reading blob {id}"), e))?;
        Ok(Some(Blob {
            bytes,
            content_type: meta.content_type,
        }))
    }

    /// The blob's media type and length, or `None` if there is no such blob. Blocking.
    pub fn meta(&self, id: &BlobId) -> Result<Option<BlobMeta>, StoreError> {
        Ok(self.open_blob(id)?.map(|(_, meta)| meta))
    }

    /// The blob's file on the disk, open for reading, with its media type and length, or
    /// `None` if the disk has no such blob; for serving it without holding it in memory.
    /// Blocking.
    pub fn open_file(&self, id: &BlobId) -> Result<Option<(std::fs::File, BlobMeta)>, StoreError> {
        self.open_blob(id)
    }

    /// The blob's file, open, with its media type and length. The media type is read first:
    /// `put` writes it before the blob and `evict` removes it after, so a blob found after
    /// its media type was read is one the media type belongs to, even if it is evicted while
    /// being read (the open file stays readable).
    fn open_blob(&self, id: &BlobId) -> Result<Option<(std::fs::File, BlobMeta)>, StoreError> {
        let content_type = std::fs::read_to_string(self.type_path(id))
            .unwrap_or_else(|_| "application/octet-stream".into());
        let file = match std::fs::File::open(self.path(id)) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(format!("reading blob {id}"), e)),
        };
        let length = file
            .metadata()
            .map_err(|e| StoreError::io(format!("reading blob {id}"), e))?
            .len();
        Ok(Some((
            file,
            BlobMeta {
                content_type,
                length,
            },
        )))
    }
}

/// Bytes of a blob as a client names them (RFC 9110 §14.1.2), before they are resolved
/// against its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// From byte `first` to byte `last` (inclusive), or to the end when `last` is `None`.
    From {
        /// The first byte wanted, counted from 0.
        first: u64,
        /// The last byte wanted; past the end means the end.
        last: Option<u64>,
    },
    /// The last this many bytes (all of them if the blob is shorter).
    Suffix(u64),
}

impl ByteRange {
    /// The bytes of a blob of `length` bytes that this names, as a half-open range clipped to
    /// its end; `None` when it names none of them (RFC 9110's unsatisfiable range).
    pub fn resolve(self, length: u64) -> Option<std::ops::Range<u64>> {
        match self {
            Self::From { first, last } => {
                let end = last.map_or(length, |last| last.saturating_add(1).min(length));
                (first < end).then_some(first..end)
            }
            Self::Suffix(count) => {
                (count > 0 && length > 0).then(|| length.saturating_sub(count)..length)
            }
        }
    }
}

/// What a blob is, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    /// The media type given when it was first stored.
    pub content_type: String,
    /// Its length in bytes.
    pub length: u64,
}

/// Some of a blob's bytes, as they arrive.
pub struct BlobPart {
    /// The whole blob's media type and length.
    pub meta: BlobMeta,
    /// Which bytes `body` holds (half-open).
    pub range: std::ops::Range<u64>,
    /// The bytes, in order. An error ends it: what came before is not the whole range.
    pub body: futures::stream::BoxStream<'static, Result<bytes::Bytes, StoreError>>,
}

impl std::fmt::Debug for BlobPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobPart")
            .field("meta", &self.meta)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// What a read of a range of a blob found.
#[derive(Debug)]
pub enum RangeRead {
    /// The bytes the range names.
    Part(BlobPart),
    /// The range names no byte of the blob (it starts past the end, or the blob is empty).
    Unsatisfiable(BlobMeta),
}

impl BlobStore {
    /// Marks blob `id` as just used, so the eviction removes it after the blobs used before
    /// (least recently used first). Best effort: a blob gone meanwhile has nothing to mark.
    /// Blocking.
    pub(crate) fn touch(&self, id: &BlobId) {
        // Under the lock `evict` decides under, so a pass that listed the blob before this
        // use sees the new time and spares it.
        let _refresh = self.refresh.lock();
        let touched = std::fs::OpenOptions::new()
            .write(true)
            .open(self.path(id))
            .and_then(|f| f.set_modified(SystemTime::now()));
        if let Err(e) = touched
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::debug!(blob = %id, error = %e, "Could not mark a blob as used.");
        }
    }

    /// Every complete blob on the disk (not media types, not temporary files) with its size
    /// and last use, and how many files could not be read. Blocking.
    pub(crate) fn inventory(&self) -> Result<(Vec<LocalBlob>, u64), StoreError> {
        let top = self.root.join("sha256");
        let entries = std::fs::read_dir(&top)
            .map_err(|e| StoreError::io(format!("listing {}", top.display()), e))?;
        let (mut found, mut errors) = (Vec::new(), 0);
        for entry in entries.flatten() {
            let dir = entry.path();
            let Some(prefix) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if !is_hex(&prefix, 2) || !dir.is_dir() {
                continue;
            }
            let Ok(files) = std::fs::read_dir(&dir) else {
                errors += 1;
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name();
                let Some(hex) = name.to_str().filter(|name| is_hex(name, 62)) else {
                    continue;
                };
                let Ok(id) = BlobId::parse(&format!("sha256:{prefix}{hex}")) else {
                    continue;
                };
                match file.metadata() {
                    Ok(meta) if meta.is_file() => found.push(LocalBlob {
                        used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        id,
                        bytes: meta.len(),
                    }),
                    Ok(_) => {}
                    // Removed since the listing (a sweep): nothing to count.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(_) => errors += 1,
                }
            }
        }
        Ok((found, errors))
    }

    /// Removes the disk's copy of `blob` (the caller saw it in the bucket), and its media
    /// type, unless it is pinned (rows naming it are being written) or was stored or read
    /// again since `blob.used`; whether it was removed. Blocking.
    pub(crate) fn evict(&self, blob: &LocalBlob) -> Result<bool, StoreError> {
        let path = self.path(&blob.id);
        let io = |what: &str, e| StoreError::io(format!("{what} blob {}", blob.id), e);
        // Under the lock `put` refreshes a blob under, so one stored again now is either
        // pinned here or written anew after the removal.
        let _refresh = self.refresh.lock();
        if self.pins.lock().contains_key(&blob.id) {
            return Ok(false);
        }
        let used = match std::fs::metadata(&path) {
            Ok(meta) => meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io("checking", e)),
        };
        if used != blob.used {
            return Ok(false);
        }
        // The blob first: a media type left without it is a leftover the sweep removes.
        std::fs::remove_file(&path).map_err(|e| io("evicting", e))?;
        match std::fs::remove_file(self.type_path(&blob.id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::debug!(blob = %blob.id, error = %e, "An evicted blob's media type stays for the sweep.");
            }
            _ => {}
        }
        Ok(true)
    }
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl BlobStore {
    /// Deletes the blobs whose id starts with `shard` (one hex digit: a sixteenth of the
    /// store, so the caller's set of live ids stays small) that are not in `live`, not pinned
    /// and were last stored at least `min_age` ago, and leftovers of interrupted stores as old.
    /// A file it cannot read or delete is logged and counted, and the sweep goes on. Blocking.
    pub fn sweep(
        &self,
        shard: char,
        live: &HashSet<String>,
        min_age: Duration,
    ) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport::default();
        let top = self.root.join("sha256");
        let entries = std::fs::read_dir(&top)
            .map_err(|e| StoreError::io(format!("listing {}", top.display()), e))?;
        for entry in entries.flatten() {
            let dir = entry.path();
            let Some(prefix) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if !is_hex(&prefix, 2) || !prefix.starts_with(shard) || !dir.is_dir() {
                continue;
            }
            let files = match std::fs::read_dir(&dir) {
                Ok(files) => files,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "Blob sweep: cannot list a directory.");
                    report.errors += 1;
                    continue;
                }
            };
            for file in files.flatten() {
                let path = file.path();
                if let Err(e) = self.sweep_file(&prefix, &path, live, min_age, &mut report) {
                    tracing::warn!(path = %path.display(), error = %e, "Blob sweep: skipped a file.");
                    report.errors += 1;
                }
            }
        }
        Ok(report)
    }

    fn sweep_file(
        &self,
        prefix: &str,
        path: &Path,
        live: &HashSet<String>,
        min_age: Duration,
        report: &mut SweepReport,
    ) -> std::io::Result<()> {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return Ok(());
        };
        // The size of `path` if it was last written at least `min_age` ago.
        let old_enough = |path: &Path| -> std::io::Result<Option<u64>> {
            let meta = match std::fs::metadata(path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .unwrap_or_default();
            Ok((age >= min_age && meta.is_file()).then_some(meta.len()))
        };
        let remove = |path: &Path| match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        if let Some((blob, _)) = name.split_once(".tmp-")
            && let hex = blob.strip_suffix(".type").unwrap_or(blob)
            && is_hex(hex, 62)
        {
            // A temporary file of a store that died before renaming it, unless the blob is
            // pinned: a copy back from a slow bucket may still be writing it.
            let pinned = BlobId::parse(&format!("sha256:{prefix}{hex}"))
                .is_ok_and(|id| self.pins.lock().contains_key(&id));
            if !pinned && old_enough(path)?.is_some() {
                remove(path)?;
                report.leftovers += 1;
            }
            return Ok(());
        }
        let (hex, media_type_only) = match name.strip_suffix(".type") {
            Some(hex) => (hex, true),
            None => (name, false),
        };
        if !is_hex(hex, 62) {
            return Ok(());
        }
        let id = format!("sha256:{prefix}{hex}");
        if live.contains(&id) {
            report.kept += u64::from(!media_type_only);
            return Ok(());
        }
        let _refresh = self.refresh.lock();
        let pinned = BlobId::parse(&id).is_ok_and(|id| self.pins.lock().contains_key(&id));
        if media_type_only {
            // A media type whose blob is missing: left by a store that died between the two
            // files, or by a sweep that died between deleting them.
            if !pinned && !path.with_file_name(hex).exists() && old_enough(path)?.is_some() {
                remove(path)?;
                report.leftovers += 1;
            }
            return Ok(());
        }
        match old_enough(path)? {
            Some(bytes) if !pinned => {
                // The blob first: a media type left without it is a leftover for later.
                remove(path)?;
                remove(&path.with_extension("type"))?;
                report.deleted += 1;
                report.bytes_deleted += bytes;
            }
            _ => report.kept += 1,
        }
        Ok(())
    }
}

/// A blob written from a stream of chunks, as one read back from the bucket is (decision
/// 0065): hashed as it is appended to a temporary file beside its place, and renamed there by
/// [`BlobWriter::finish`] only if the bytes are the blob it was opened for. So neither memory
/// nor the disk ever holds more than a chunk that is not checked. Dropped unfinished (the
/// bucket failed mid-stream), it removes its temporary file.
#[derive(Debug)]
pub(crate) struct BlobWriter {
    store: BlobStore,
    id: BlobId,
    /// Keeps a copy of the blob that appears on the disk meanwhile (stored by a device, or
    /// copied back by a reader) from being evicted while this one is renamed over it.
    _pin: BlobPin,
    content_type: String,
    temporary: PathBuf,
    file: Option<std::fs::File>,
    hasher: Sha256,
    written: u64,
}

/// What [`BlobWriter::finish`] found.
#[derive(Debug)]
pub(crate) enum Written {
    /// The bytes were the blob: its file, open for reading, and what it is.
    Stored(std::fs::File, BlobMeta),
    /// The bytes were another blob's (this is their id); nothing was stored.
    OtherBytes(BlobId),
}

impl BlobStore {
    /// Starts writing blob `id` with media type `content_type` (one that cannot be stored is
    /// replaced by `application/octet-stream`) from chunks. Blocking.
    pub(crate) fn writer(&self, id: &BlobId, content_type: &str) -> Result<BlobWriter, StoreError> {
        let path = self.path(id);
        let dir = path
            .parent()
            .ok_or_else(|| StoreError::Internal("blob path without a directory".into()))?;
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(format!("creating the directory of blob {id}"), e))?;
        let temporary = temporary_beside(&path);
        let file = std::fs::File::create(&temporary)
            .map_err(|e| StoreError::io(format!("storing blob {id}"), e))?;
        Ok(BlobWriter {
            store: self.clone(),
            id: id.clone(),
            _pin: self.pin(id),
            content_type: if is_media_type(content_type) {
                content_type.to_owned()
            } else {
                "application/octet-stream".to_owned()
            },
            temporary,
            file: Some(file),
            hasher: Sha256::new(),
            written: 0,
        })
    }
}

impl BlobWriter {
    /// Appends `chunk`. Blocking.
    pub(crate) fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| StoreError::Internal("blob writer used after it finished".into()))?;
        file.write_all(chunk)
            .map_err(|e| StoreError::io(format!("storing blob {}", self.id), e))?;
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        Ok(())
    }

    /// Checks that the bytes written are the blob, and if they are makes them durable under
    /// its name (media type first, as `put` does) and returns its file, opened before the
    /// rename so an eviction right after cannot take it from the reader. Blocking.
    pub(crate) fn finish(mut self) -> Result<Written, StoreError> {
        let found = BlobId::from_digest(&self.hasher.clone().finalize().into());
        if found != self.id {
            return Ok(Written::OtherBytes(found));
        }
        let id = self.id.clone();
        let io = |what: &str, e| StoreError::io(format!("{what} blob {id}"), e);
        let file = self
            .file
            .take()
            .ok_or_else(|| StoreError::Internal("blob writer finished twice".into()))?;
        file.sync_all().map_err(|e| io("storing", e))?;
        drop(file);
        let reader = std::fs::File::open(&self.temporary).map_err(|e| io("reading", e))?;
        let path = self.store.path(&id);
        {
            // Under the lock `evict` removes a blob and then its media type under, so the two
            // files written here are never split by an eviction of a copy already there.
            let _refresh = self.store.refresh.lock();
            write_durably(&self.store.type_path(&id), self.content_type.as_bytes())
                .map_err(|e| io("storing the media type of", e))?;
            std::fs::rename(&self.temporary, &path).map_err(|e| io("storing", e))?;
        }
        if let Some(dir) = path.parent() {
            sync_dir(dir).map_err(|e| io("syncing the directory of", e))?;
        }
        sync_dir(&self.store.root.join("sha256"))
            .map_err(|e| io("syncing the blob root for", e))?;
        Ok(Written::Stored(
            reader,
            BlobMeta {
                content_type: std::mem::take(&mut self.content_type),
                length: self.written,
            },
        ))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Unfinished, or refused as other bytes: the temporary file is nobody's. After a
        // rename there is nothing left under its name.
        match std::fs::remove_file(&self.temporary) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::debug!(blob = %self.id, error = %e, "A temporary blob file stays for the sweep.");
            }
            _ => {}
        }
    }
}

/// A temporary file's name beside `path`, unique to this write: two stores of the same bytes
/// at once (a client's retry, HTTP and MQTT) must not write into one file. The sweep knows
/// these names and removes those an interrupted write left.
fn temporary_beside(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{unique}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `bytes` to a temporary file beside `path`, fsyncs it and renames it into place, so
/// `path` is either absent or whole.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = temporary_beside(path);
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_is_kept_once_under_its_digest_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        let id = store.put(b"hello", "text/plain").unwrap().id().clone();
        // The SHA-256 of "hello".
        assert_eq!(
            id.hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(store.put(b"hello", "text/plain").unwrap().id(), &id);
        let reopened = BlobStore::open(dir.path().join("blobs")).unwrap();
        let blob = reopened.get(&id).unwrap().unwrap();
        assert_eq!(
            (blob.bytes.as_slice(), blob.content_type.as_str()),
            (&b"hello"[..], "text/plain")
        );
        let other = BlobId::from_digest(&[0; 32]);
        assert!(reopened.get(&other).unwrap().is_none());
        let files: Vec<_> = walk(dir.path());
        assert_eq!(
            files.len(),
            2,
            "the blob and its media type, no temporaries: {files:?}"
        );
    }

    #[test]
    fn a_blob_written_in_chunks_is_stored_only_if_its_bytes_are_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..300_000_u32).map(|i| (i * 31 % 251) as u8).collect();
        let id = BlobId::of(&bytes);
        // The blob's own bytes, in uneven chunks: stored, and the open file reads them.
        let mut writer = store.writer(&id, "video/mp4").unwrap();
        for chunk in bytes.chunks(70_001) {
            writer.write(chunk).unwrap();
        }
        let Written::Stored(mut file, meta) = writer.finish().unwrap() else {
            panic!("the blob's own bytes were refused");
        };
        assert_eq!(
            meta,
            BlobMeta {
                content_type: "video/mp4".into(),
                length: bytes.len() as u64
            }
        );
        let mut read = Vec::new();
        file.read_to_end(&mut read).unwrap();
        assert!(read == bytes);
        let blob = store.get(&id).unwrap().unwrap();
        assert!(blob.bytes == bytes);
        assert_eq!(blob.content_type, "video/mp4");
        assert_eq!(walk(dir.path()).len(), 2, "the blob and its media type");

        // Other bytes under another blob's name: refused with their own id, nothing stored.
        let other = BlobId::of(b"a recording");
        let mut writer = store.writer(&other, "video/mp4").unwrap();
        writer.write(b"a recording, tampered").unwrap();
        match writer.finish().unwrap() {
            Written::OtherBytes(found) => {
                assert_eq!(found, BlobId::of(b"a recording, tampered"));
            }
            Written::Stored(..) => panic!("other bytes stored under {other}"),
        }
        assert!(store.get(&other).unwrap().is_none());
        // A stream that broke off: nothing stored, no temporary file left. A media type the
        // store cannot keep is replaced rather than failing the copy.
        let mut writer = store.writer(&other, "bad\ntype").unwrap();
        writer.write(b"a rec").unwrap();
        assert_eq!(writer.content_type, "application/octet-stream");
        drop(writer);
        assert!(store.get(&other).unwrap().is_none());
        assert_eq!(walk(dir.path()).len(), 2, "{:?}", walk(dir.path()));

        // While a copy is being written, a copy of the blob already on the disk (stored by a
        // device meanwhile) is not evicted from under it: it is pinned.
        let mut writer = store.writer(&id, "video/mp4").unwrap();
        let (listed, _) = store.inventory().unwrap();
        let on_disk = listed.iter().find(|blob| blob.id == id).unwrap();
        assert!(!store.evict(on_disk).unwrap(), "evicted while being copied");
        writer.write(&bytes).unwrap();
        assert!(matches!(writer.finish().unwrap(), Written::Stored(..)));
        let (listed, _) = store.inventory().unwrap();
        let on_disk = listed.iter().find(|blob| blob.id == id).unwrap();
        assert!(store.evict(on_disk).unwrap(), "still pinned after the copy");
    }

    #[test]
    fn the_sweep_leaves_the_temporary_file_of_a_copy_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let id = BlobId::of(b"a slow recording");
        let shard = id.hex().chars().next().unwrap();
        let mut writer = store.writer(&id, "video/mp4").unwrap();
        writer.write(b"a slow").unwrap();
        let report = store.sweep(shard, &HashSet::new(), Duration::ZERO).unwrap();
        assert_eq!(report.leftovers, 0);
        writer.write(b" recording").unwrap();
        assert!(matches!(writer.finish().unwrap(), Written::Stored(..)));
        // A temporary file nobody writes any more is a leftover.
        let stray = store
            .path(&id)
            .with_file_name(format!("{}.tmp-1-2", &id.hex()[2..]));
        std::fs::write(&stray, b"half").unwrap();
        let live = HashSet::from([id.to_string()]);
        let report = store.sweep(shard, &live, Duration::ZERO).unwrap();
        assert_eq!(report.leftovers, 1);
        assert!(!stray.exists());
        assert!(store.get(&id).unwrap().is_some());
    }

    #[test]
    fn eviction_spares_pinned_and_freshly_used_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let old = store.put(b"old clip", "audio/wav").unwrap().id().clone();
        let read = store
            .put(b"clip read again", "audio/wav")
            .unwrap()
            .id()
            .clone();
        let pin = store
            .put(b"clip whose row is being written", "audio/wav")
            .unwrap();
        // A temporary file of an interrupted store is no blob.
        std::fs::write(
            store
                .path(&old)
                .with_file_name(format!("{}.tmp-1", "d".repeat(62))),
            b"half",
        )
        .unwrap();
        let (mut found, errors) = store.inventory().unwrap();
        assert_eq!(errors, 0);
        found.sort_by(|a, b| a.id.cmp(&b.id));
        let mut want = vec![(old.clone(), 8), (read.clone(), 15), (pin.id().clone(), 31)];
        want.sort();
        let got: Vec<_> = found.iter().map(|b| (b.id.clone(), b.bytes)).collect();
        assert_eq!(got, want, "each blob once, with its size");
        let entry = |id: &BlobId| found.iter().find(|b| &b.id == id).unwrap().clone();
        // Read after the inventory: its last use is newer than the one the pass ordered by.
        std::thread::sleep(Duration::from_millis(20));
        store.touch(&read);
        assert!(!store.evict(&entry(&read)).unwrap(), "used again");
        assert!(!store.evict(&entry(pin.id())).unwrap(), "pinned");
        assert!(store.evict(&entry(&old)).unwrap());
        assert!(store.get(&old).unwrap().is_none());
        assert!(!store.type_path(&old).exists(), "its media type goes too");
        assert!(!store.evict(&entry(&old)).unwrap(), "already gone");
        assert!(store.get(&read).unwrap().is_some());
        let id = pin.id().clone();
        drop(pin);
        assert!(store.evict(&entry(&id)).unwrap(), "unpinned");
    }

    #[test]
    fn the_same_blob_stored_at_once_from_many_threads_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..200_000_u32).map(|i| (i % 251) as u8).collect();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| drop(store.put(&bytes, "audio/wav").unwrap()));
            }
        });
        let id = BlobId::of(&bytes);
        let blob = store.get(&id).unwrap().unwrap();
        assert!(blob.bytes == bytes);
        assert_eq!(blob.content_type, "audio/wav");
        assert_eq!(walk(dir.path()).len(), 2, "no temporaries left");
    }

    #[test]
    fn a_bad_media_type_is_refused_and_nothing_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        for bad in ["", "audio/wav\nX-Evil: 1", &"a".repeat(300)] {
            let error = store.put(b"x", bad).unwrap_err().to_string();
            assert!(error.contains("not a media type"), "{error}");
        }
        assert!(walk(dir.path()).is_empty());
    }

    fn age(store: &BlobStore, id: &BlobId, by: Duration) {
        for path in [store.path(id), store.type_path(id)] {
            let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            file.set_modified(SystemTime::now() - by).unwrap();
        }
    }

    /// Ids whose first hex digit is `digit`: the sweep of one shard must leave the others.
    fn blob_in_shard(digit: char, salt: u32) -> Vec<u8> {
        (0u32..)
            .map(|i| format!("{salt}-{i}").into_bytes())
            .find(|bytes| BlobId::of(bytes).hex().starts_with(digit))
            .unwrap()
    }

    #[test]
    fn a_sweep_deletes_old_blobs_no_live_row_names_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let hour = Duration::from_secs(3600);
        let put = |bytes: &[u8]| store.put(bytes, "audio/wav").unwrap().id().clone();
        let named = put(&blob_in_shard('a', 1));
        let unnamed = put(&blob_in_shard('a', 2));
        let young = put(&blob_in_shard('a', 3));
        let other_shard = put(&blob_in_shard('b', 4));
        let stored_again_bytes = blob_in_shard('a', 5);
        let stored_again = put(&stored_again_bytes);
        // Stored long ago, its rows not written yet (a slow commit): pinned, so it stays.
        let pinned_bytes = blob_in_shard('a', 6);
        let pin = store.put(&pinned_bytes, "audio/wav").unwrap();
        for id in [&named, &unnamed, &other_shard, &stored_again, pin.id()] {
            age(&store, id, 2 * hour);
        }
        // Stored again (a row about to name it): the sweep must leave it to that row.
        drop(store.put(&stored_again_bytes, "audio/wav").unwrap());
        // Leftovers of stores killed half-way: temporary files and a lone media type; and a
        // file that is no blob of ours, which the sweep must leave alone.
        let shard_dir = store.path(&named).parent().unwrap().to_owned();
        let name_in_shard = |tail: &str| format!("{}{tail}", &"f".repeat(62));
        let temporary = shard_dir.join(name_in_shard(".tmp-1-1"));
        let temporary_type = shard_dir.join(name_in_shard(".type.tmp-1-2"));
        let lone_type = shard_dir.join(format!("{}.type", "e".repeat(62)));
        let stranger = shard_dir.join("notes.txt");
        for path in [&temporary, &temporary_type, &lone_type, &stranger] {
            std::fs::write(path, b"x").unwrap();
            let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            file.set_modified(SystemTime::now() - 2 * hour).unwrap();
        }

        let live: HashSet<String> = [named.to_string()].into();
        let report = store.sweep('a', &live, hour).unwrap();
        assert_eq!(
            report,
            SweepReport {
                kept: 4,
                deleted: 1,
                bytes_deleted: blob_in_shard('a', 2).len() as u64,
                leftovers: 3,
                errors: 0,
                ..SweepReport::default()
            }
        );
        assert!(store.get(&unnamed).unwrap().is_none());
        assert!(!store.type_path(&unnamed).exists());
        for id in [&named, &young, &other_shard, &stored_again, pin.id()] {
            assert!(store.get(id).unwrap().is_some(), "{id}");
        }
        assert!(!temporary.exists() && !temporary_type.exists() && !lone_type.exists());
        assert!(stranger.exists());
        // Once old enough, an unnamed blob goes, and a pinned one once its rows are written;
        // the other shard only when swept.
        drop(pin);
        let report = store.sweep('a', &live, Duration::ZERO).unwrap();
        assert_eq!((report.kept, report.deleted), (1, 3));
        assert!(store.get(&other_shard).unwrap().is_some());
        assert_eq!(store.sweep('b', &live, hour).unwrap().deleted, 1);
        assert_eq!(
            walk(dir.path()).len(),
            3,
            "the named blob and its media type, and the stranger"
        );
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
