//! The blob store: clips, images and files kept once each under the SHA-256 of their bytes,
//! in `<data dir>/blobs/sha256/<2 hex>/<62 hex>`, with their media type beside them.
//!
//! A blob is on disk and fsynced (file and directory) before `put` returns, so a row that
//! names it, acknowledged after, never points at nothing after a crash. A blob stored without
//! its row (the process died in between) is only unreferenced bytes.

use std::io::Write;
use std::path::{Path, PathBuf};

use fabrik_core::BlobId;

use crate::StoreError;

/// Media types longer than this are refused (RFC 6838 allows 127 + 1 + 127).
const MAX_MEDIA_TYPE: usize = 255;

/// The blobs of one data directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

/// A stored blob and its media type.
#[derive(Debug, Clone)]
pub struct Blob {
    /// The bytes as they were stored.
    pub bytes: Vec<u8>,
    /// The media type given when it was first stored.
    pub content_type: String,
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
        Ok(Self { root })
    }

    fn path(&self, id: &BlobId) -> PathBuf {
        let hex = id.hex();
        self.root.join("sha256").join(&hex[..2]).join(&hex[2..])
    }

    fn type_path(&self, id: &BlobId) -> PathBuf {
        self.path(id).with_extension("type")
    }

    /// Stores `bytes` (once: the same bytes again cost nothing) and returns their id once they
    /// are durable. Blocking: call it from `spawn_blocking`.
    pub fn put(&self, bytes: &[u8], content_type: &str) -> Result<BlobId, StoreError> {
        if content_type.len() > MAX_MEDIA_TYPE
            || content_type.is_empty()
            || !content_type
                .bytes()
                .all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(StoreError::InvalidPoint {
                location: "content type".into(),
                reason: format!(
                    "`{}` is not a media type (printable ASCII, 1 to {MAX_MEDIA_TYPE} bytes)",
                    content_type.chars().take(64).collect::<String>()
                ),
            });
        }
        let id = BlobId::of(bytes);
        let path = self.path(&id);
        let dir = path
            .parent()
            .ok_or_else(|| StoreError::Internal("blob path without a directory".into()))?;
        let io = |what: &str, e| StoreError::io(format!("{what} blob {id}"), e);
        if path.exists() {
            // Stored before, perhaps by a process killed before it synced the file or its
            // directory: sync both now, as the caller is about to acknowledge a row naming it.
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| io("syncing", e))?;
        } else {
            std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
            // The media type first: the data file's presence says the blob is complete.
            write_durably(&self.type_path(&id), content_type.as_bytes())
                .map_err(|e| io("storing the media type of", e))?;
            write_durably(&path, bytes).map_err(|e| io("storing", e))?;
        }
        sync_dir(dir).map_err(|e| io("syncing the directory of", e))?;
        sync_dir(&self.root.join("sha256")).map_err(|e| io("syncing the blob root for", e))?;
        Ok(id)
    }

    /// The blob, or `None` if there is no such blob. Blocking.
    pub fn get(&self, id: &BlobId) -> Result<Option<Blob>, StoreError> {
        let bytes = match std::fs::read(self.path(id)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(format!("reading blob {id}"), e)),
        };
        let content_type = std::fs::read_to_string(self.type_path(id))
            .unwrap_or_else(|_| "application/octet-stream".into());
        Ok(Some(Blob {
            bytes,
            content_type,
        }))
    }
}

/// Writes `bytes` to a temporary file beside `path`, fsyncs it and renames it into place, so
/// `path` is either absent or whole. Each write has a temporary file of its own: two stores of
/// the same bytes at once (a client's retry, HTTP and MQTT) must not write into one file.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{unique}", std::process::id()));
    let temporary = path.with_file_name(name);
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
        let id = store.put(b"hello", "text/plain").unwrap();
        // The SHA-256 of "hello".
        assert_eq!(
            id.hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(store.put(b"hello", "text/plain").unwrap(), id);
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
    fn the_same_blob_stored_at_once_from_many_threads_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..200_000_u32).map(|i| (i % 251) as u8).collect();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| store.put(&bytes, "audio/wav").unwrap());
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
