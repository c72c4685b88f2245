//! Where a store's Parquet segments live: `<data_dir>/segments` on the local disk, or a prefix
//! of an S3-compatible bucket that one store claims with a marker object (decision 0048).
//!
//! The WAL, the manifest and blobs are written to the data directory either way: a write is
//! acknowledged once its WAL record is fsynced locally, and a persist uploads the segment
//! before the manifest names it, so a `kill -9` at any point loses nothing acknowledged.
//! In a bucket, each saved manifest is also copied under the prefix, so a node whose disk
//! died is restored from the bucket ([`restore`], decision 0061); the restored store takes
//! the prefix over, and a persist first checks the prefix is still its own. Blobs go to the
//! bucket with the listings that name them, and are read back from it when the disk lacks them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::StreamExt as _;

use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, GetRange, GetResult, ObjectStore,
    ObjectStoreExt, PutMode, PutOptions, PutPayload,
};
use serde::{Deserialize, Serialize};

use fabrik_core::BlobId;

use crate::blobs::{
    BlobMeta, BlobPart, BlobStore, BlobWriter, ByteRange, RangeRead, SweepReport, Written,
};
use crate::manifest::Manifest;
use crate::segments::Objects;
use crate::{StoreError, data_dir_error};

/// `[store.objects]`: segments in an S3-compatible bucket instead of `<data_dir>/segments`.
/// Credentials come from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, or a web identity / instance profile), never from the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStorage {
    /// `s3://bucket` or `s3://bucket/prefix`: one store per prefix.
    pub url: String,
    /// The service's base address for S3-compatible stores (MinIO, Ceph RGW, Garage,
    /// SeaweedFS); `None` asks AWS (or `AWS_ENDPOINT`).
    pub endpoint: Option<String>,
    /// The bucket's region; `None` takes `AWS_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Allow a plain `http://` endpoint (a service on the same host or a private network).
    pub allow_http: bool,
    /// Only read the prefix another store owns, reading its manifest copy again this often
    /// (decision 0079); `None`: this store owns the prefix.
    pub read_only: Option<std::time::Duration>,
}

/// The marker object a store writes under its prefix, naming the store that owns it.
pub(crate) const MARKER: &str = "fabrik-store.json";
/// The local record of where this data directory's segments are.
pub(crate) const LOCAL_RECORD: &str = "objects.json";
/// The copy of a store's manifest under the prefix, replaced after every local save. Named by
/// the store's id, so a node whose prefix a restore took over cannot overwrite the copy of the
/// store that took it (it may still be mid-persist when it happens).
pub(crate) fn manifest_copy(root: &Root, store_id: &str) -> ObjectPath {
    root.join(&format!("manifest-{store_id}.json"))
}
/// How far a restored store's segment ids start past the highest in the bucket: a node that
/// was not dead after all, mid-persist when the prefix was taken over, writes a few more ids
/// from its own count, never a million.
const RESTORE_FILE_ID_GAP: u64 = 1 << 20;

/// The marker's and the local record's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claim {
    /// The `[store.objects] url` the segments were written under.
    url: String,
    /// Random, made when the store first claimed the prefix.
    pub(crate) store_id: String,
    /// In the local record: false from the moment it is written until the marker is known to
    /// name it (omitted when true, and in the marker).
    #[serde(default = "confirmed", skip_serializing_if = "is_confirmed")]
    confirmed: bool,
    /// The store a restore took the prefix over from: a restore interrupted after the
    /// takeover finds that store's manifest copy again through it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restored_from: Option<String>,
}

// Records written before the field existed were written only once the marker was.
fn confirmed() -> bool {
    true
}

fn is_confirmed(confirmed: &bool) -> bool {
    *confirmed
}

/// The user metadata a blob's SHA-256 (hex) is uploaded under (`x-amz-meta-sha256` on S3), so
/// a copy in the bucket is known to be the blob without reading it back.
const SHA256_METADATA: &str = "sha256";

/// What the bucket holds under a blob's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BucketBlob {
    pub(crate) size: u64,
    /// The SHA-256 it was uploaded with; `None` for a copy made before it was recorded.
    pub(crate) sha256: Option<String>,
}

impl BucketBlob {
    /// Whether this is blob `id` of `size` bytes: the recorded SHA-256 is the id's, or, for an
    /// older copy without one, the size agrees.
    pub(crate) fn is(&self, id: &BlobId, size: u64) -> bool {
        match &self.sha256 {
            Some(sha256) => sha256 == id.hex() && self.size == size,
            None => self.size == size,
        }
    }
}

/// How many bytes of a blob read back from the bucket are gathered before they are written to
/// the disk: enough that the blocking write is worth its hop off the async threads, little
/// enough that a long recording is never held in memory.
const RESTORE_BATCH: usize = 1 << 20;

/// The media type a blob was uploaded with (octet-stream if none) and its whole length.
fn blob_meta(found: &GetResult) -> BlobMeta {
    BlobMeta {
        content_type: found
            .attributes
            .get(&Attribute::ContentType)
            .map_or_else(|| "application/octet-stream".to_owned(), |v| v.to_string()),
        length: found.meta.size,
    }
}

/// Feeds `stream` to `writer` in batches of up to `capacity` bytes, each written off the async
/// threads while the next batch arrives (two buffers, so at most twice `capacity` in memory).
/// `writer` is `None` after an error (a blocking write that failed dropped it there, and one
/// still in flight when the stream fails drops it when it ends).
async fn copy_stream(
    mut stream: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    writer: &mut Option<BlobWriter>,
    capacity: usize,
    reading_error: impl Fn(object_store::Error) -> StoreError,
) -> Result<(), StoreError> {
    type Write = tokio::task::JoinHandle<(Result<BlobWriter, StoreError>, Vec<u8>)>;
    // Waits for the write in flight: the writer comes back, and its buffer for reuse.
    async fn landed(write: Write, writer: &mut Option<BlobWriter>) -> Result<Vec<u8>, StoreError> {
        let (written, mut spare) = write
            .await
            .map_err(|e| StoreError::Internal(format!("blob write task: {e}")))?;
        *writer = Some(written?);
        spare.clear();
        Ok(spare)
    }
    let mut batch = Vec::with_capacity(capacity);
    let mut in_flight: Option<Write> = None;
    loop {
        let chunk = stream.next().await.transpose().map_err(&reading_error)?;
        let done = chunk.is_none();
        if let Some(chunk) = chunk {
            batch.extend_from_slice(&chunk);
        }
        if batch.len() >= capacity || (done && !batch.is_empty()) {
            let spare = match in_flight.take() {
                Some(write) => landed(write, writer).await?,
                None => Vec::with_capacity(capacity),
            };
            let mut writing = writer
                .take()
                .ok_or_else(|| StoreError::Internal("blob writer lost".into()))?;
            let full = std::mem::replace(&mut batch, spare);
            in_flight = Some(tokio::task::spawn_blocking(move || {
                let result = writing.write(&full);
                (result.map(|()| writing), full)
            }));
        }
        if done {
            if let Some(write) = in_flight.take() {
                landed(write, writer).await?;
            }
            return Ok(());
        }
    }
}

/// `stream`'s bytes, ending in an error (made by `error` from what went wrong) if they stop
/// short of `expected` bytes, run past them, or the stream fails.
fn exactly(
    stream: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    expected: u64,
    error: impl Fn(String) -> StoreError + Send + Sync + 'static,
) -> futures::stream::BoxStream<'static, Result<Bytes, StoreError>> {
    let error = Arc::new(error);
    futures::stream::unfold((stream, 0_u64, false), move |(mut stream, seen, failed)| {
        let error = error.clone();
        async move {
            if failed {
                return None;
            }
            let (item, seen) = match stream.next().await {
                Some(Ok(chunk)) => {
                    let seen = seen + chunk.len() as u64;
                    if seen > expected {
                        (
                            Err(error(format!("more than the {expected} bytes asked for"))),
                            seen,
                        )
                    } else {
                        (Ok(chunk), seen)
                    }
                }
                Some(Err(e)) => (Err(error(e.to_string())), seen),
                None if seen < expected => (
                    Err(error(format!(
                        "the body ended after {seen} of {expected} bytes"
                    ))),
                    seen,
                ),
                None => return None,
            };
            let failed = item.is_err();
            Some((item, (stream, seen, failed)))
        }
    })
    .boxed()
}

pub(crate) fn objects_error(url: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::ObjectStorage {
        url: url.to_owned(),
        reason: reason.to_string(),
    }
}

fn has_segments(manifest: &Manifest) -> bool {
    manifest.tables.values().any(|t| !t.segments.is_empty())
}

pub(crate) fn read_local_claim(dir: &Path) -> Result<Option<Claim>, StoreError> {
    let path = dir.join(LOCAL_RECORD);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            data_dir_error(&path, format!("{LOCAL_RECORD} is not a store claim: {e}"))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(format!("reading {}", path.display()), e)),
    }
}

fn write_local_claim(dir: &Path, claim: &Claim) -> Result<(), StoreError> {
    let path = dir.join(LOCAL_RECORD);
    let tmp: PathBuf = dir.join(format!("{LOCAL_RECORD}.tmp"));
    let bytes = serde_json::to_vec_pretty(claim)
        .map_err(|e| StoreError::Internal(format!("encoding {LOCAL_RECORD}: {e}")))?;
    (|| {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    })()
    .map_err(|e| StoreError::io(format!("writing {}", path.display()), e))
}

/// Sixteen random bytes as hex: a store's identity in its marker.
fn new_store_id() -> Result<String, StoreError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Internal(format!("no randomness for a store id: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Splits `s3://bucket/some/prefix` into the bucket's URL and the prefix (`some/prefix`).
fn split_url(url: &str) -> Result<(String, String), StoreError> {
    let rest = url
        .strip_prefix("s3://")
        .or_else(|| url.strip_prefix("s3a://"))
        .ok_or_else(|| objects_error(url, "must start with s3:// (s3://bucket/prefix)"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(objects_error(url, "names no bucket (s3://bucket/prefix)"));
    }
    let prefix = prefix.trim_matches('/').to_owned();
    if prefix.split('/').any(|part| part == "." || part == "..") {
        return Err(objects_error(url, "a prefix may not hold `.` or `..`"));
    }
    Ok((format!("s3://{bucket}"), prefix))
}

/// Where a prefix's objects are named from: `prefix/name`, or `name` at the bucket's root.
#[derive(Debug, Clone)]
pub(crate) struct Root(String);

impl Root {
    pub(crate) fn join(&self, name: &str) -> ObjectPath {
        if self.0.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.0))
        }
    }
}

/// A client for the bucket `storage` names, and its prefix.
pub(crate) fn connect(storage: &ObjectStorage) -> Result<(Arc<dyn ObjectStore>, Root), StoreError> {
    let url = storage.url.trim();
    let (bucket_url, prefix) = split_url(url)?;
    // Bounded retries: a start waits at most about half a minute for an unreachable service,
    // and a failing persist gives up and tries again at the next flush.
    let retry = object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(30),
        ..object_store::RetryConfig::default()
    };
    // Client options first: they replace the builder's, `allow_http` among them.
    let mut builder = object_store::aws::AmazonS3Builder::from_env()
        .with_client_options(
            object_store::ClientOptions::new()
                .with_connect_timeout(std::time::Duration::from_secs(5)),
        )
        .with_url(&bucket_url)
        .with_allow_http(storage.allow_http)
        .with_retry(retry);
    if let Some(endpoint) = &storage.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &storage.region {
        builder = builder.with_region(region);
    }
    let bucket: Arc<dyn ObjectStore> =
        Arc::new(builder.build().map_err(|e| objects_error(url, e))?);

    Ok((bucket, Root(prefix)))
}

/// What the start-up sweep does with objects under the segments prefix that the manifest does
/// not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sweep {
    /// Delete them: on the local disk they can only be an interrupted persist's.
    Delete,
    /// Name them in the log and leave them: in a bucket they may be segments of a newer copy
    /// of this data directory (a restored snapshot, a cloned machine) that only the bucket
    /// kept.
    Report,
    /// Leave them unlisted: the bucket is not reachable.
    Skip,
}

/// The segment store for a data directory: the local `segments` folder, or the configured
/// bucket prefix once this store holds its claim there.
pub(crate) async fn open(
    dir: &Path,
    storage: Option<&ObjectStorage>,
    manifest: &Manifest,
) -> Result<(Objects, Sweep, Option<Arc<BucketClaim>>), StoreError> {
    let local_claim = read_local_claim(dir)?;
    let Some(storage) = storage else {
        if let Some(claim) = local_claim {
            return Err(data_dir_error(
                dir,
                format!(
                    "its segments are in object storage at {} ({LOCAL_RECORD}): set \
                     [store.objects] url = \"{}\" to open it",
                    claim.url, claim.url
                ),
            ));
        }
        let segments_dir = dir.join("segments");
        let local = object_store::local::LocalFileSystem::new_with_prefix(&segments_dir)
            .map_err(|e| data_dir_error(&segments_dir, e))?;
        return Ok((Arc::new(local), Sweep::Delete, None));
    };

    let url = storage.url.trim();
    let (bucket, root) = connect(storage)?;
    // A claim elsewhere with nothing stored under it (a mistyped bucket fixed) is given up.
    let local_claim = local_claim.filter(|claim| claim.url == url || has_segments(manifest));
    match &local_claim {
        Some(claim) if claim.url != url => {
            return Err(data_dir_error(
                dir,
                format!(
                    "its segments are at {}, but [store.objects] url is {url}: moving a \
                     store's segments is not supported; use a new data directory",
                    claim.url
                ),
            ));
        }
        None if has_segments(manifest) => {
            return Err(data_dir_error(
                dir,
                format!(
                    "its segments are on the local disk (segments/), so it cannot switch to \
                     {url}; use a new data directory for a store in object storage"
                ),
            ));
        }
        _ => {}
    }

    let marker_path = root.join(MARKER);
    let (sweep, store_id) = match (local_claim, read_marker(&bucket, &marker_path, url).await?) {
        (Some(local), Marker::Unreachable(why)) if local.confirmed => {
            // The claim was checked at earlier starts; ingest must not wait for the bucket
            // (writes are durable in the WAL and persisted once it is back).
            tracing::warn!(url, store_id = %local.store_id, error = %why, "Object storage is not reachable: starting with the claim unchecked and leftovers not swept; persisting retries until it is back.");
            (Sweep::Skip, local.store_id)
        }
        (_, Marker::Unreachable(why)) => {
            return Err(objects_error(
                url,
                format!("cannot claim the prefix for a new store: {why}"),
            ));
        }
        (Some(local), Marker::Found(remote)) if local.store_id == remote.store_id => {
            if !local.confirmed {
                write_local_claim(
                    dir,
                    &Claim {
                        confirmed: true,
                        ..local.clone()
                    },
                )?;
            }
            (Sweep::Report, local.store_id)
        }
        (Some(local), Marker::Found(remote)) => {
            return Err(objects_error(
                url,
                format!(
                    "the prefix belongs to store {} ({MARKER}), not to this data directory's \
                     store {}: two stores on one prefix would overwrite each other's segments",
                    remote.store_id, local.store_id
                ),
            ));
        }
        (Some(local), Marker::Absent) if !has_segments(manifest) => {
            // A first claim that did not finish (the process stopped, or the bucket failed,
            // between the local record and the marker): nothing is stored yet, so finish it.
            claim_prefix(&bucket, &marker_path, &local).await?;
            write_local_claim(
                dir,
                &Claim {
                    confirmed: true,
                    ..local.clone()
                },
            )?;
            tracing::info!(url, store_id = %local.store_id, "Claimed an object storage prefix for this store's segments.");
            (Sweep::Report, local.store_id)
        }
        (Some(local), Marker::Absent) => {
            return Err(objects_error(
                url,
                format!(
                    "{MARKER} of store {} is missing: the prefix was emptied or the bucket \
                     is another one, so the segments the manifest names are not there",
                    local.store_id
                ),
            ));
        }
        (None, Marker::Found(remote)) => {
            return Err(objects_error(
                url,
                format!(
                    "the prefix already belongs to store {} ({MARKER}); give this store a \
                     prefix of its own",
                    remote.store_id
                ),
            ));
        }
        (None, Marker::Absent) => {
            let claim = Claim {
                url: url.to_owned(),
                store_id: new_store_id()?,
                confirmed: false,
                restored_from: None,
            };
            // Recorded here first: a marker written by a start that then failed is still
            // recognised as this store's own.
            write_local_claim(dir, &claim)?;
            let claim = Claim {
                confirmed: true,
                ..claim
            };
            claim_prefix(&bucket, &marker_path, &claim).await?;
            write_local_claim(dir, &claim)?;
            tracing::info!(url, store_id = %claim.store_id, "Claimed an object storage prefix for this store's segments.");
            (Sweep::Report, claim.store_id)
        }
    };
    let claim = Arc::new(BucketClaim::new(url, store_id, &root, bucket.clone()));
    Ok((segments_under(bucket, &root), sweep, Some(claim)))
}

/// The segments under a prefix, as the store reads and writes them.
pub(crate) fn segments_under(bucket: Arc<dyn ObjectStore>, root: &Root) -> Objects {
    Arc::new(object_store::prefix::PrefixStore::new(
        bucket,
        root.join("segments"),
    ))
}

/// A store's hold on its bucket prefix: the marker naming it, and the copy of its manifest
/// kept beside its segments.
#[derive(Debug)]
pub(crate) struct BucketClaim {
    url: String,
    store_id: String,
    marker: ObjectPath,
    manifest_copy: ObjectPath,
    /// Where blobs are kept: `<prefix>/blobs/sha256/<2 hex>/<62 hex>`, as on the disk.
    blobs: ObjectPath,
    bucket: Arc<dyn ObjectStore>,
    /// Whether the copy is the manifest as last saved: segments a compaction replaced are
    /// deleted only then, as an older copy may still name them.
    copy_current: AtomicBool,
}

impl BucketClaim {
    /// Store `store_id`'s hold on the prefix at `root`.
    pub(crate) fn new(
        url: &str,
        store_id: String,
        root: &Root,
        bucket: Arc<dyn ObjectStore>,
    ) -> Self {
        Self {
            url: url.to_owned(),
            manifest_copy: manifest_copy(root, &store_id),
            blobs: root.join("blobs/sha256"),
            store_id,
            marker: root.join(MARKER),
            bucket,
            // Unknown until the first upload; a start that could not reach the bucket has none.
            copy_current: AtomicBool::new(false),
        }
    }

    /// An error of this store's bucket.
    pub(crate) fn error(&self, reason: impl std::fmt::Display) -> StoreError {
        objects_error(&self.url, reason)
    }

    /// Fails unless the marker still names this store: after a restore elsewhere took the
    /// prefix over (`fabrik store restore`, for a node thought dead), this one must not
    /// write segments there any more.
    pub(crate) async fn check_still_ours(&self) -> Result<(), StoreError> {
        match read_marker(&self.bucket, &self.marker, &self.url).await? {
            Marker::Found(claim) if claim.store_id == self.store_id => Ok(()),
            Marker::Found(claim) => Err(objects_error(
                &self.url,
                format!(
                    "the prefix now belongs to store {} ({MARKER}), not to this store {}: it \
                     was restored elsewhere (fabrik store restore), so this node no longer \
                     writes segments there; stop it, or give it a new data directory and prefix",
                    claim.store_id, self.store_id
                ),
            )),
            Marker::Absent => Err(objects_error(
                &self.url,
                format!(
                    "{MARKER} of store {} is gone: the prefix was emptied, so no segment is \
                     written there",
                    self.store_id
                ),
            )),
            Marker::Unreachable(why) => Err(objects_error(&self.url, why)),
        }
    }

    /// Replaces the bucket's copy of the manifest. A failure is logged, not returned: the
    /// local manifest is the store's truth, and the copy is made again at the next save.
    pub(crate) async fn copy_manifest(&self, manifest: &Manifest) {
        match put_manifest_copy(&self.bucket, &self.manifest_copy, manifest).await {
            Ok(()) => self.copy_current.store(true, Ordering::Release),
            Err(e) => {
                self.copy_current.store(false, Ordering::Release);
                tracing::warn!(url = %self.url, path = %self.manifest_copy, error = %e, "Could not copy the manifest to object storage: a restore from the bucket would miss the newest segments until a later copy succeeds.");
            }
        }
    }

    /// Whether the bucket's copy is the manifest as last saved.
    pub(crate) fn copy_is_current(&self) -> bool {
        self.copy_current.load(Ordering::Acquire)
    }

    /// The store whose claim this is (on a read-only node: the owner when it opened).
    pub(crate) fn store_id(&self) -> &str {
        &self.store_id
    }

    /// `[store.objects] url`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    fn blob_path(&self, id: &BlobId) -> ObjectPath {
        let hex = id.hex();
        ObjectPath::from(format!("{}/{}/{}", self.blobs, &hex[..2], &hex[2..]))
    }

    /// Copies blob `id` from the data directory to the bucket unless it is there already;
    /// whether it was copied. A persist does this before the segment naming the blob is
    /// written, so a segment in the bucket never names a blob that is not. An object there
    /// that is not the blob (another SHA-256 in its metadata, or another size) is replaced,
    /// after the disk's bytes are checked against the id.
    pub(crate) async fn upload_blob(
        &self,
        id: &BlobId,
        local: &BlobStore,
    ) -> Result<bool, StoreError> {
        let path = self.blob_path(id);
        let there = self.blob_copy(id).await?;
        if there
            .as_ref()
            .is_some_and(|copy| copy.sha256.as_deref() == Some(id.hex()))
        {
            return Ok(false);
        }
        let (store, lookup) = (local.clone(), id.clone());
        let Some(blob) = tokio::task::spawn_blocking(move || store.get(&lookup))
            .await
            .map_err(|e| StoreError::Internal(format!("blob read task: {e}")))??
        else {
            // Listed but not on this disk: the listing came from a restored store's WAL-less
            // past, or the file was removed by hand. Nothing to copy; the row stays.
            if there.is_none() {
                tracing::warn!(blob = %id, "A listed blob is neither on the disk nor in the bucket.");
            }
            return Ok(false);
        };
        if let Some(copy) = &there {
            if copy.is(id, blob.bytes.len() as u64) {
                // Copied before its SHA-256 travelled with it: the size is all there is to
                // compare, and it agrees.
                return Ok(false);
            }
            tracing::warn!(blob = %id, bucket_bytes = copy.size, bucket_sha256 = copy.sha256.as_deref().unwrap_or("none"), "The bucket holds other bytes under a blob's name: replacing them with the disk's copy.");
        }
        let found = BlobId::of(&blob.bytes);
        if &found != id {
            return Err(StoreError::Internal(format!(
                "blob {id} on the disk holds other bytes (their hash is {found}): not copied to \
                 the bucket"
            )));
        }
        let attributes = Attributes::from_iter([
            (
                Attribute::ContentType,
                AttributeValue::from(blob.content_type),
            ),
            (
                Attribute::Metadata(SHA256_METADATA.into()),
                AttributeValue::from(id.hex().to_owned()),
            ),
        ]);
        self.bucket
            .put_opts(
                &path,
                PutPayload::from(blob.bytes),
                PutOptions {
                    attributes,
                    ..PutOptions::default()
                },
            )
            .await
            .map_err(|e| objects_error(&self.url, format!("writing {path}: {e}")))?;
        Ok(true)
    }

    /// What the bucket holds under blob `id`'s name (one HEAD), or `None` if nothing.
    pub(crate) async fn blob_copy(&self, id: &BlobId) -> Result<Option<BucketBlob>, StoreError> {
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        Ok(self
            .get_blob_object(id, options)
            .await?
            .map(|found| BucketBlob {
                size: found.meta.size,
                sha256: found
                    .attributes
                    .get(&Attribute::Metadata(SHA256_METADATA.into()))
                    .map(|v| v.to_string()),
            }))
    }

    /// The media type and length of blob `id` in the bucket (one HEAD), or `None` if it is
    /// not there.
    pub(crate) async fn fetch_blob_meta(
        &self,
        id: &BlobId,
    ) -> Result<Option<BlobMeta>, StoreError> {
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let Some(found) = self.get_blob_object(id, options).await? else {
            return Ok(None);
        };
        // A range has no hash to check, but the object says which blob it was uploaded as.
        self.refuse_another_blob(id, &found)?;
        Ok(Some(blob_meta(&found)))
    }

    /// The bytes of blob `id` in the bucket that `range` names, in one ranged GET after one
    /// HEAD (which resolves the range, so an unsatisfiable one costs no GET), or `None` if it
    /// is not there. The bytes are streamed as they arrive (a player's `bytes=0-` of a long
    /// recording is never held in memory), and a body that ends short of the range or runs
    /// past it ends in an error. Unlike [`Self::restore_blob`] the bytes are not checked
    /// against the id: a part has no hash to check.
    pub(crate) async fn fetch_blob_range(
        &self,
        id: &BlobId,
        range: ByteRange,
    ) -> Result<Option<RangeRead>, StoreError> {
        let Some(meta) = self.fetch_blob_meta(id).await? else {
            return Ok(None);
        };
        let Some(range) = range.resolve(meta.length) else {
            return Ok(Some(RangeRead::Unsatisfiable(meta)));
        };
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..GetOptions::default()
        };
        let path = self.blob_path(id);
        let Some(found) = self.get_blob_object(id, options).await? else {
            return Ok(None);
        };
        let meta = blob_meta(&found);
        let (url, length, asked) = (self.url.clone(), meta.length, range.clone());
        let body = exactly(
            found.into_stream(),
            range.end - range.start,
            move |problem| {
                objects_error(
                    &url,
                    format!("reading bytes {asked:?} of {length} of {path}: {problem}"),
                )
            },
        );
        Ok(Some(RangeRead::Part(BlobPart { meta, range, body })))
    }

    /// An error if `found`, read under blob `id`'s name, was uploaded as another blob (the
    /// SHA-256 it carries as metadata); objects without one are judged by their bytes.
    fn refuse_another_blob(&self, id: &BlobId, found: &GetResult) -> Result<(), StoreError> {
        match found
            .attributes
            .get(&Attribute::Metadata(SHA256_METADATA.into()))
        {
            Some(sha256) if sha256.as_ref() != id.hex() => Err(objects_error(
                &self.url,
                format!(
                    "{} holds other bytes than blob {id} (uploaded as sha256:{})",
                    self.blob_path(id),
                    sha256.as_ref()
                ),
            )),
            _ => Ok(()),
        }
    }

    async fn get_blob_object(
        &self,
        id: &BlobId,
        options: GetOptions,
    ) -> Result<Option<GetResult>, StoreError> {
        let path = self.blob_path(id);
        match self.bucket.get_opts(&path, options).await {
            Ok(found) => Ok(Some(found)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(objects_error(&self.url, format!("reading {path}: {e}"))),
        }
    }

    /// Copies blob `id` from the bucket back to `local`, streamed: each chunk is hashed and
    /// written as it arrives (in batches of [`RESTORE_BATCH`] bytes, off the async threads),
    /// and the file takes the blob's name only once its bytes prove to be the blob (decision
    /// 0065). Returns the file, open, or `None` if the bucket does not hold the blob. An
    /// object with other bytes is an error naming their hash, and leaves nothing on the disk.
    pub(crate) async fn restore_blob(
        &self,
        id: &BlobId,
        local: &BlobStore,
    ) -> Result<Option<(std::fs::File, BlobMeta)>, StoreError> {
        let path = self.blob_path(id);
        let Some(found) = self.get_blob_object(id, GetOptions::default()).await? else {
            return Ok(None);
        };
        // An object uploaded as another blob is refused before its body is read.
        self.refuse_another_blob(id, &found)?;
        let content_type = blob_meta(&found).content_type;
        let (store, lookup) = (local.clone(), id.clone());
        let mut writer = Some(
            tokio::task::spawn_blocking(move || store.writer(&lookup, &content_type))
                .await
                .map_err(|e| StoreError::Internal(format!("blob write task: {e}")))??,
        );
        let capacity =
            usize::try_from(found.meta.size).map_or(RESTORE_BATCH, |size| size.min(RESTORE_BATCH));
        let copied = copy_stream(found.into_stream(), &mut writer, capacity, |e| {
            objects_error(&self.url, format!("reading {path}: {e}"))
        })
        .await;
        if let Err(e) = copied {
            // Removing a temporary file of a long recording is disk work: off the async threads.
            if let Some(writer) = writer.take() {
                tokio::task::spawn_blocking(move || drop(writer));
            }
            return Err(e);
        }
        let writer = writer.ok_or_else(|| StoreError::Internal("blob writer lost".into()))?;
        match tokio::task::spawn_blocking(move || writer.finish())
            .await
            .map_err(|e| StoreError::Internal(format!("blob write task: {e}")))??
        {
            Written::Stored(file, meta) => {
                // How often evicted blobs are wanted back: a steady rate says the disk's
                // `local_blob_limit` is too small for what is watched.
                metrics::counter!("fabrik_blob_restores_total").increment(1);
                metrics::counter!("fabrik_blob_restored_bytes_total").increment(meta.length);
                Ok(Some((file, meta)))
            }
            Written::OtherBytes(found_id) => Err(objects_error(
                &self.url,
                format!("{path} holds other bytes than blob {id} (their hash is {found_id})"),
            )),
        }
    }

    /// Deletes the bucket's blobs whose id starts with `shard` that no live row names, that
    /// are neither on the disk nor pinned (the disk's sweep judges those), and that were
    /// written at least `min_age` ago. The caller holds the store's maintenance lock, so no
    /// persist decides a blob is in the bucket while it is being deleted. Also returns the
    /// live blobs on the disk the bucket lacks (a store from before blobs were copied), for
    /// the caller to upload after it let the lock go; `None` if the bucket could not be
    /// listed (the sweep of the bucket stops there rather than retry each directory).
    pub(crate) async fn sweep_blobs(
        &self,
        shard: char,
        live: &std::collections::HashSet<String>,
        min_age: std::time::Duration,
        local: &BlobStore,
    ) -> (SweepReport, Option<Vec<BlobId>>) {
        let mut report = SweepReport::default();
        let mut present = std::collections::HashSet::new();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for second in "0123456789abcdef".chars() {
            let dir = ObjectPath::from(format!("{}/{shard}{second}", self.blobs));
            let mut listing = self.bucket.list(Some(&dir));
            while let Some(meta) = listing.next().await {
                let meta = match meta {
                    Ok(meta) => meta,
                    Err(e) => {
                        tracing::warn!(url = %self.url, dir = %dir, error = %e, "Blob sweep: cannot list the bucket.");
                        report.errors += 1;
                        return (report, None);
                    }
                };
                let Some(name) = meta.location.filename() else {
                    continue;
                };
                let id = format!("sha256:{shard}{second}{name}");
                let Ok(blob) = BlobId::parse(&id) else {
                    continue;
                };
                present.insert(id.clone());
                let age_ms = now_ms - meta.last_modified.timestamp_millis();
                if live.contains(&id) || local.is_held(&blob) || age_ms < min_age.as_millis() as i64
                {
                    report.kept += 1;
                    continue;
                }
                match self.bucket.delete(&meta.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                        report.bucket_deleted += 1;
                        report.bucket_bytes_deleted += meta.size;
                    }
                    Err(e) => {
                        tracing::warn!(url = %self.url, path = %meta.location, error = %e, "Blob sweep: cannot delete from the bucket.");
                        report.errors += 1;
                    }
                }
            }
        }
        let missing = live
            .iter()
            .filter(|id| !present.contains(*id))
            .filter_map(|id| BlobId::parse(id).ok())
            .filter(|id| local.is_held(id))
            .collect();
        (report, Some(missing))
    }
}

/// What [`restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The store whose prefix was taken over.
    pub previous_store_id: String,
    /// The restored store's own id, now in the marker.
    pub store_id: String,
    /// Tables and segments the restored manifest names.
    pub tables: usize,
    /// Segments the restored manifest names.
    pub segments: usize,
    /// Rows in them.
    pub rows: u64,
    /// Every WAL record up to this one is in them: what the old node acknowledged later was
    /// only in its WAL and is lost with its disk.
    pub persisted_seq: u64,
    /// Segments the copy named that are no longer in the bucket (dropped from the manifest).
    pub missing: Vec<String>,
    /// Objects under `segments/` the copy does not name (left in place, reported at starts).
    pub unlisted: usize,
}

/// Restores a store whose data directory was lost from its bucket prefix into `dir`, which
/// must hold no store (or only an unfinished restore): the manifest copy becomes its
/// manifest, and the prefix is taken over under a new store id, so a node that was not dead
/// after all stops writing there at its next persist. The store then starts as usual.
///
/// The order makes a crash anywhere safe to run again: the local claim (unconfirmed), the
/// local manifest and the new store's own manifest copy, then the marker, then the claim
/// confirmed. A restore run again after the marker changed hands finds the old store through
/// the marker's `restored_from`.
pub async fn restore(dir: &Path, storage: &ObjectStorage) -> Result<Restored, StoreError> {
    let url = storage.url.trim();
    refuse_a_store_in(dir)?;
    let unfinished = read_local_claim(dir)?;
    let (bucket, root) = connect(storage)?;
    let marker_path = root.join(MARKER);
    let Some((marker, meta)) =
        get_json::<Claim>(bucket.as_ref(), &marker_path, url, "a store claim").await?
    else {
        return Err(objects_error(
            url,
            format!("no store to restore: {marker_path} is not there"),
        ));
    };
    let marker_version = object_store::UpdateVersion {
        e_tag: meta.e_tag,
        version: meta.version,
    };

    let (claim, previous, take_over) = match unfinished {
        // This directory's restore took the prefix over and stopped before it confirmed.
        Some(local) if local.store_id == marker.store_id => {
            let previous = marker.restored_from.clone().ok_or_else(|| {
                objects_error(
                    url,
                    format!(
                        "{marker_path} names this data directory's store {} but not the store \
                         it was restored from; start Fabrik on it instead",
                        local.store_id
                    ),
                )
            })?;
            (local, previous, false)
        }
        _ => (
            Claim {
                url: url.to_owned(),
                store_id: new_store_id()?,
                confirmed: false,
                restored_from: Some(marker.store_id.clone()),
            },
            marker.store_id.clone(),
            true,
        ),
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
    write_local_claim(dir, &claim)?;
    let mut built = rebuild(&bucket, &root, url, dir, &previous, &claim.store_id).await?;

    if take_over {
        let bytes = serde_json::to_vec_pretty(&Claim {
            confirmed: true,
            ..claim.clone()
        })
        .map_err(|e| StoreError::Internal(format!("encoding {MARKER}: {e}")))?;
        // Only over the marker that was read: two restores at once do not both take the prefix.
        let replaced = bucket
            .put_opts(
                &marker_path,
                PutPayload::from(bytes),
                PutOptions {
                    mode: PutMode::Update(marker_version),
                    ..PutOptions::default()
                },
            )
            .await;
        match replaced {
            Ok(_) => {}
            Err(object_store::Error::Precondition { .. }) => {
                // A retried PUT whose first attempt landed is refused too: ours if it names us.
                let ours = matches!(
                    read_marker(&bucket, &marker_path, url).await?,
                    Marker::Found(found) if found.store_id == claim.store_id
                );
                if !ours {
                    return Err(objects_error(
                        url,
                        format!(
                            "{marker_path} changed while restoring (another restore, or the old \
                             store claimed it again): run the restore again"
                        ),
                    ));
                }
            }
            Err(e) => return Err(objects_error(url, format!("writing {marker_path}: {e}"))),
        }
        // The old node may have saved a newer copy between the read and the takeover (a
        // compaction whose replaced segments it then deletes): build from the newest. Once the
        // marker names us it starts no other persist or compaction, so this settles.
        for _ in 0..3 {
            let now = match bucket.head(&built.copy_path).await {
                Ok(meta) => meta.e_tag,
                Err(e) => {
                    return Err(objects_error(
                        url,
                        format!("reading {}: {e}", built.copy_path),
                    ));
                }
            };
            if now == built.copy_e_tag {
                break;
            }
            built = rebuild(&bucket, &root, url, dir, &previous, &claim.store_id).await?;
        }
    }
    write_local_claim(
        dir,
        &Claim {
            confirmed: true,
            ..claim.clone()
        },
    )?;
    tracing::info!(url, previous = %previous, store_id = %claim.store_id, "Restored a store from object storage and took its prefix over.");
    Ok(Restored {
        previous_store_id: previous,
        store_id: claim.store_id,
        ..built.restored
    })
}

/// What [`rebuild`] made.
struct Built {
    restored: Restored,
    /// The old store's manifest copy, and its ETag when it was read.
    copy_path: ObjectPath,
    copy_e_tag: Option<String>,
}

/// Makes `dir`'s manifest from store `previous`'s copy and what is in the bucket now, and
/// copies it under `store_id`'s name (before the marker names that store, so a store the
/// marker names always has a copy).
async fn rebuild(
    bucket: &Arc<dyn ObjectStore>,
    root: &Root,
    url: &str,
    dir: &Path,
    previous: &str,
    store_id: &str,
) -> Result<Built, StoreError> {
    let copy_path = manifest_copy(root, previous);
    let Some((mut manifest, copy_meta)) =
        get_json::<Manifest>(bucket.as_ref(), &copy_path, url, "a store manifest").await?
    else {
        return Err(objects_error(
            url,
            format!(
                "store {previous} left no manifest copy ({copy_path}): it never persisted, or \
                 ran a Fabrik from before copies were made"
            ),
        ));
    };
    let copy_e_tag = copy_meta.e_tag;

    // What is in the bucket now: the copy's segments that are still there, and past which
    // id the restored store counts.
    let segments_root = root.join("segments");
    let mut listed = std::collections::HashSet::new();
    let mut highest_id = 0u64;
    let mut listing = bucket.list(Some(&segments_root));
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| objects_error(url, format!("listing {segments_root}: {e}")))?;
        let Some(relative) = meta
            .location
            .as_ref()
            .strip_prefix(segments_root.as_ref())
            .map(|rest| rest.trim_start_matches('/').to_owned())
        else {
            continue;
        };
        if let Some(id) = segment_file_id(&relative) {
            highest_id = highest_id.max(id);
        }
        listed.insert(relative);
    }
    let mut missing = Vec::new();
    for table in manifest.tables.values_mut() {
        table.segments.retain(|segment| {
            let there = listed.contains(&segment.path);
            if !there {
                missing.push(segment.path.clone());
            }
            there
        });
    }
    let named: std::collections::HashSet<&str> = manifest
        .tables
        .values()
        .flat_map(|t| t.segments.iter().map(|s| s.path.as_str()))
        .collect();
    let unlisted = listed
        .iter()
        .filter(|p| !named.contains(p.as_str()))
        .count();
    let segments = named.len();
    manifest.next_file_id = manifest
        .next_file_id
        .max(highest_id + 1)
        .saturating_add(RESTORE_FILE_ID_GAP);
    manifest.save(dir)?;
    let own_copy = manifest_copy(root, store_id);
    put_manifest_copy(bucket, &own_copy, &manifest)
        .await
        .map_err(|e| objects_error(url, format!("writing {own_copy}: {e}")))?;
    Ok(Built {
        restored: Restored {
            previous_store_id: previous.to_owned(),
            store_id: store_id.to_owned(),
            tables: manifest.tables.len(),
            segments,
            rows: manifest
                .tables
                .values()
                .flat_map(|t| t.segments.iter().map(|s| s.rows))
                .sum(),
            persisted_seq: manifest.persisted_seq,
            missing,
            unlisted,
        },
        copy_path,
        copy_e_tag,
    })
}

/// The JSON object at `path` (`what` names its kind in errors) with its metadata, or `None`
/// if there is none.
pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
    bucket: &dyn ObjectStore,
    path: &ObjectPath,
    url: &str,
    what: &str,
) -> Result<Option<(T, object_store::ObjectMeta)>, StoreError> {
    let found = match bucket.get(path).await {
        Ok(found) => found,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(objects_error(url, format!("reading {path}: {e}"))),
    };
    let meta = found.meta.clone();
    let bytes = found
        .bytes()
        .await
        .map_err(|e| objects_error(url, format!("reading {path}: {e}")))?;
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| objects_error(url, format!("{path} is not {what}: {e}")))?;
    Ok(Some((value, meta)))
}

/// PUTs `manifest` as a store's copy at `path`.
async fn put_manifest_copy(
    bucket: &Arc<dyn ObjectStore>,
    path: &ObjectPath,
    manifest: &Manifest,
) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| e.to_string())?;
    bucket
        .put(path, PutPayload::from(bytes))
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A restore goes only into a data directory without a store: no WAL records, no manifest
/// unless an unfinished restore wrote it (its claim not yet confirmed).
fn refuse_a_store_in(dir: &Path) -> Result<(), StoreError> {
    let claim = read_local_claim(dir)?;
    if claim.as_ref().is_some_and(|claim| claim.confirmed) {
        return Err(data_dir_error(
            dir,
            format!("holds a store ({LOCAL_RECORD}): restore into a new, empty data directory"),
        ));
    }
    if claim.is_none() && dir.join(crate::manifest::FILE).exists() {
        return Err(data_dir_error(
            dir,
            "holds a store (manifest.json): restore into a new, empty data directory",
        ));
    }
    if holds_wal(dir) {
        return Err(data_dir_error(
            dir,
            "holds a WAL (wal/): restore into a new, empty data directory",
        ));
    }
    Ok(())
}

/// Whether `dir/wal` holds anything: a data directory with a WAL holds a store's rows.
pub(crate) fn holds_wal(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("wal"))
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false)
}

/// The file id of a segment path `t<table>/p<partition>/<id>.parquet`.
fn segment_file_id(path: &str) -> Option<u64> {
    path.rsplit('/')
        .next()?
        .strip_suffix(".parquet")?
        .parse()
        .ok()
}

/// What the marker read found.
pub(crate) enum Marker {
    Found(Claim),
    Absent,
    /// The service did not answer (or failed): the reason.
    Unreachable(String),
}

pub(crate) async fn read_marker(
    bucket: &Arc<dyn ObjectStore>,
    path: &ObjectPath,
    url: &str,
) -> Result<Marker, StoreError> {
    let bytes = match bucket.get(path).await {
        Ok(found) => match found.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => return Ok(Marker::Unreachable(format!("reading {path}: {e}"))),
        },
        Err(object_store::Error::NotFound { .. }) => return Ok(Marker::Absent),
        Err(e) => return Ok(Marker::Unreachable(format!("reading {path}: {e}"))),
    };
    serde_json::from_slice(&bytes)
        .map(Marker::Found)
        .map_err(|e| objects_error(url, format!("{path} is not a store claim: {e}")))
}

/// Writes the marker only if no other store wrote one first (a conditional put).
async fn claim_prefix(
    bucket: &Arc<dyn ObjectStore>,
    path: &ObjectPath,
    claim: &Claim,
) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(claim)
        .map_err(|e| StoreError::Internal(format!("encoding {MARKER}: {e}")))?;
    let options = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    let written = bucket
        .put_opts(path, PutPayload::from(bytes), options)
        .await;
    if written.is_ok() {
        return Ok(());
    }
    // A retried PUT whose first attempt landed answers "exists", and a PUT that timed out may
    // have landed: the marker is ours if it names our id.
    if let Ok(Marker::Found(found)) = read_marker(bucket, path, &claim.url).await
        && found.store_id == claim.store_id
    {
        return Ok(());
    }
    match written {
        Ok(_) => Ok(()),
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => Err(objects_error(
            &claim.url,
            format!("another store claimed the prefix ({path}) at the same moment"),
        )),
        // S3 answers a PUT into a missing bucket with 404 (NoSuchBucket).
        Err(e @ object_store::Error::NotFound { .. }) => Err(objects_error(
            &claim.url,
            format!("the bucket does not exist (create it first): writing {path}: {e}"),
        )),
        Err(e) => Err(objects_error(&claim.url, format!("writing {path}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_copy_is_the_blob_by_its_recorded_hash_else_by_its_size() {
        let id = BlobId::of(b"frame");
        let copy = |size, sha256: Option<&str>| BucketBlob {
            size,
            sha256: sha256.map(str::to_owned),
        };
        assert!(copy(5, Some(id.hex())).is(&id, 5));
        assert!(!copy(5, Some(&"0".repeat(64))).is(&id, 5));
        assert!(!copy(6, Some(id.hex())).is(&id, 5));
        // Copied before the hash was recorded: the size decides.
        assert!(copy(5, None).is(&id, 5));
        assert!(!copy(4, None).is(&id, 5));
    }

    #[test]
    fn an_s3_url_splits_into_bucket_and_prefix() {
        assert_eq!(
            split_url("s3://plant/line-1/").expect("url"),
            ("s3://plant".to_owned(), "line-1".to_owned())
        );
        assert_eq!(
            split_url("s3://plant").expect("url"),
            ("s3://plant".to_owned(), String::new())
        );
        let err = split_url("http://plant/x").expect_err("scheme").to_string();
        assert!(err.contains("must start with s3://"), "{err}");
        let err = split_url("s3:///x").expect_err("bucket").to_string();
        assert!(err.contains("names no bucket"), "{err}");
        let err = split_url("s3://plant/a/../b")
            .expect_err("dots")
            .to_string();
        assert!(err.contains("`..`"), "{err}");
    }

    #[test]
    fn a_segment_path_gives_its_file_id() {
        assert_eq!(
            segment_file_id("t3/p20240101/0000000000000042.parquet"),
            Some(42)
        );
        assert_eq!(segment_file_id("0000000000000007.parquet"), Some(7));
        assert_eq!(segment_file_id("t3/p0/notes.txt"), None);
        assert_eq!(segment_file_id("t3/p0/x.parquet"), None);
    }

    #[test]
    fn a_restore_goes_only_into_a_directory_without_a_store() {
        let dir = tempfile::tempdir().expect("dir");
        // Absent or empty: fine.
        refuse_a_store_in(&dir.path().join("new")).expect("absent");
        refuse_a_store_in(dir.path()).expect("empty");
        // An unfinished restore (claim not confirmed, manifest written) is done again.
        let claim = Claim {
            url: "s3://plant/line-1".into(),
            store_id: "ab".into(),
            confirmed: false,
            restored_from: None,
        };
        write_local_claim(dir.path(), &claim).expect("claim");
        std::fs::write(dir.path().join(crate::manifest::FILE), "{}").expect("manifest");
        refuse_a_store_in(dir.path()).expect("unfinished restore");
        // A store's WAL, a confirmed claim, or a manifest of its own: refused, naming it.
        std::fs::create_dir_all(dir.path().join("wal")).expect("wal");
        std::fs::write(dir.path().join("wal").join("00000001.wal"), b"x").expect("record");
        let err = refuse_a_store_in(dir.path()).expect_err("wal").to_string();
        assert!(err.contains("holds a WAL"), "{err}");
        std::fs::remove_dir_all(dir.path().join("wal")).expect("rm wal");
        write_local_claim(
            dir.path(),
            &Claim {
                confirmed: true,
                ..claim
            },
        )
        .expect("confirmed");
        let err = refuse_a_store_in(dir.path())
            .expect_err("claim")
            .to_string();
        assert!(err.contains("holds a store (objects.json)"), "{err}");
        std::fs::remove_file(dir.path().join(LOCAL_RECORD)).expect("rm claim");
        let err = refuse_a_store_in(dir.path())
            .expect_err("manifest")
            .to_string();
        assert!(err.contains("holds a store (manifest.json)"), "{err}");
    }

    /// A bucket that answers a range with too few or too many bytes, or fails midway, is a
    /// fault moto cannot produce: the checked stream ends in an error for each, and passes an
    /// exact body through untouched.
    #[tokio::test]
    async fn a_ranged_body_of_the_wrong_length_ends_in_an_error() {
        let chunks = |sizes: &[usize]| -> Vec<object_store::Result<Bytes>> {
            sizes
                .iter()
                .map(|&n| Ok(Bytes::from(vec![7_u8; n])))
                .collect()
        };
        let run = |items: Vec<object_store::Result<Bytes>>| async move {
            let checked = exactly(futures::stream::iter(items).boxed(), 10, |problem| {
                StoreError::Internal(problem)
            });
            checked.collect::<Vec<_>>().await
        };
        let exact = run(chunks(&[4, 6])).await;
        assert_eq!(exact.len(), 2);
        assert!(exact.iter().all(Result::is_ok));
        for (items, problem) in [
            (chunks(&[4, 5]), "the body ended after 9 of 10 bytes"),
            (chunks(&[4, 5, 2]), "more than the 10 bytes asked for"),
            (
                vec![
                    Ok(Bytes::from_static(b"1234")),
                    Err(object_store::Error::Generic {
                        store: "S3",
                        source: "connection reset".into(),
                    }),
                    Ok(Bytes::from_static(b"567890")),
                ],
                "connection reset",
            ),
        ] {
            let out = run(items).await;
            let last = out.last().expect("an item");
            let Err(e) = last else {
                panic!("no error at the end for {problem}");
            };
            assert!(e.to_string().contains(problem), "{e}");
            assert!(out[..out.len() - 1].iter().all(Result::is_ok));
        }
    }

    #[tokio::test]
    async fn a_data_directory_with_segments_elsewhere_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let claim = Claim {
            url: "s3://plant/line-1".into(),
            store_id: "ab".into(),
            confirmed: true,
            restored_from: None,
        };
        write_local_claim(dir.path(), &claim).expect("claim");
        let mut manifest = Manifest::default();
        manifest.tables.insert(
            "m".into(),
            crate::manifest::TableEntry {
                id: 1,
                columns: Vec::new(),
                segments: vec![crate::manifest::SegmentMeta {
                    path: "t1/p0/0000000000000001.parquet".into(),
                    partition: 0,
                    min_time: 0,
                    max_time: 1,
                    rows: 1,
                    bytes: 1,
                    order: 1,
                }],
            },
        );
        let Err(err) = open(dir.path(), None, &manifest).await else {
            panic!("opened on the local disk");
        };
        let err = err.to_string();
        assert!(err.contains("s3://plant/line-1"), "{err}");
        let other = ObjectStorage {
            url: "s3://plant/line-2".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
            region: None,
            allow_http: true,
            read_only: None,
        };
        let Err(err) = open(dir.path(), Some(&other), &manifest).await else {
            panic!("opened at another prefix");
        };
        let err = err.to_string();
        assert!(
            err.contains("moving a store's segments is not supported"),
            "{err}"
        );
        // With nothing stored, a claim elsewhere (a mistyped bucket) is given up: the start
        // goes on to claim the new prefix (here unreachable).
        let Err(err) = open(dir.path(), Some(&other), &Manifest::default()).await else {
            panic!("claimed an unreachable prefix");
        };
        let err = err.to_string();
        assert!(
            err.contains("cannot claim the prefix for a new store"),
            "{err}"
        );
        // A claim never confirmed (the first start failed before the marker) does not start
        // unchecked while the service is unreachable: its prefix may not be ours.
        write_local_claim(
            dir.path(),
            &Claim {
                url: "s3://plant/line-2".into(),
                store_id: "cd".into(),
                confirmed: false,
                restored_from: None,
            },
        )
        .expect("pending");
        let Err(err) = open(dir.path(), Some(&other), &Manifest::default()).await else {
            panic!("started on an unconfirmed claim");
        };
        assert!(err.to_string().contains("cannot claim"), "{err}");
    }

    #[test]
    fn a_pending_claim_is_written_as_such_and_a_confirmed_one_as_before() {
        let pending = Claim {
            url: "s3://b/p".into(),
            store_id: "ab".into(),
            confirmed: false,
            restored_from: None,
        };
        let text = serde_json::to_string(&pending).expect("json");
        assert!(text.contains("\"confirmed\":false"), "{text}");
        let confirmed = Claim {
            confirmed: true,
            ..pending
        };
        let text = serde_json::to_string(&confirmed).expect("json");
        assert!(!text.contains("confirmed"), "{text}");
        let old: Claim =
            serde_json::from_str(r#"{"url":"s3://b/p","store_id":"ab"}"#).expect("old");
        assert!(
            old.confirmed,
            "records from before the field were confirmed ones"
        );
    }
}
