//! The local read cache of segments kept in a bucket (decision 0064): whole segment files in
//! `<data dir>/segment-cache/`, filled when a segment is written or first read and served from
//! there after, least recently used first out past `[store.objects] segment_cache`.
//!
//! A segment file never changes once written (a rewrite gets a new name, and a deleted one is
//! never named again), so a copy on the disk is as good as the bucket's for as long as the
//! manifest lists it: there is nothing to invalidate but deletions, which pass through here.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use parking_lot::Mutex;

use crate::StoreError;
use crate::segments::Objects;
use crate::turns::Turns;

/// Suffix of a copy being written; a leftover (the process died mid-copy) is removed at open.
const PARTIAL: &str = "partial";

/// How often a copy's use is written to its file's modification time, from which the next
/// start orders the copies: a minute's precision in the order of use costs one write per
/// segment per minute, not one per read.
const MARK_EVERY: Duration = Duration::from_secs(60);

/// The bucket's segments, read through a disk cache.
pub(crate) struct SegmentCache {
    inner: Objects,
    copies: Arc<Copies>,
}

/// The copies on the disk, shared with the blocking tasks that read and write them.
#[derive(Debug)]
struct Copies {
    dir: PathBuf,
    limit: u64,
    /// [`MARK_EVERY`], but for tests.
    mark_every: Duration,
    state: Mutex<CacheState>,
    /// Names temporary files apart when a write and a read fill the same segment at once.
    fills: AtomicU64,
    /// The segments being filled by a read, which later reads of them wait for.
    filling: Turns<Path>,
}

#[derive(Debug, Default)]
struct CacheState {
    entries: HashMap<Path, Entry>,
    /// Segments larger than the whole cache, found on a first read: read in ranges from the
    /// bucket, as without a cache.
    too_large: std::collections::HashSet<Path>,
    bytes: u64,
    /// Increases with every use; an entry's `used` orders the evictions.
    clock: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    used: u64,
    /// The copy's file modification time as last set: its last use that a restart sees.
    marked: SystemTime,
}

impl CacheState {
    /// Marks `location` as just used; its size, and whether its file's modification time is
    /// due to be set to `now` (last set `mark_every` ago or more), which the caller does.
    fn touch(
        &mut self,
        location: &Path,
        now: SystemTime,
        mark_every: Duration,
    ) -> Option<(u64, bool)> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(location).map(|entry| {
            entry.used = clock;
            // A clock set back counts as due: the mark would otherwise wait for it.
            let due = now
                .duration_since(entry.marked)
                .map_or(true, |age| age >= mark_every);
            if due {
                entry.marked = now;
            }
            (entry.size, due)
        })
    }

    fn forget(&mut self, location: &Path) -> bool {
        self.too_large.remove(location);
        match self.entries.remove(location) {
            Some(entry) => {
                self.bytes -= entry.size;
                true
            }
            None => false,
        }
    }

    /// The least recently used entries to drop so the rest fit in `limit`.
    fn over(&self, limit: u64) -> Vec<Path> {
        if self.bytes <= limit {
            return Vec::new();
        }
        let mut by_use: Vec<(&Path, &Entry)> = self.entries.iter().collect();
        by_use.sort_unstable_by_key(|(_, entry)| entry.used);
        let mut left = self.bytes;
        by_use
            .into_iter()
            .take_while(|(_, entry)| {
                let drop = left > limit;
                left -= entry.size;
                drop
            })
            .map(|(location, _)| location.clone())
            .collect()
    }
}

impl SegmentCache {
    /// Caches `inner`'s segments in `dir`, at most `limit` bytes. Copies there from an earlier
    /// run are kept if `live` (the manifest's segment paths and sizes) names them with their
    /// length, in the order of their last use (their files' modification times, which reads
    /// set at most once a minute); the others and unfinished copies are removed.
    pub(crate) fn open(
        inner: Objects,
        dir: PathBuf,
        limit: u64,
        live: &HashMap<String, u64>,
    ) -> Result<Self, StoreError> {
        Self::open_marking(inner, dir, limit, live, MARK_EVERY)
    }

    fn open_marking(
        inner: Objects,
        dir: PathBuf,
        limit: u64,
        live: &HashMap<String, u64>,
        mark_every: Duration,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        let mut found = Vec::new();
        let mut pending = vec![dir.clone()];
        while let Some(folder) = pending.pop() {
            let listing = std::fs::read_dir(&folder)
                .map_err(|e| StoreError::io(format!("listing {}", folder.display()), e))?;
            for entry in listing.flatten() {
                let path = entry.path();
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    pending.push(path);
                    continue;
                }
                let location = path
                    .strip_prefix(&dir)
                    .ok()
                    .and_then(|relative| relative.to_str())
                    .and_then(|relative| Path::parse(relative.replace('\\', "/")).ok());
                match location {
                    Some(location)
                        if live.get(location.as_ref()) == Some(&meta.len())
                            && path.extension().is_none_or(|e| e != PARTIAL) =>
                    {
                        let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                        found.push((used, location, meta.len()));
                    }
                    _ => {
                        if let Err(e) = std::fs::remove_file(&path) {
                            tracing::warn!(path = %path.display(), error = %e, "Could not remove a stale segment copy from the cache.");
                        }
                    }
                }
            }
        }
        // Ties (coarse timestamps) by path, so the order is the same at every start.
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.as_ref().cmp(b.1.as_ref())));
        let mut state = CacheState::default();
        for (marked, location, size) in found {
            state.clock += 1;
            state.bytes += size;
            state.entries.insert(
                location,
                Entry {
                    size,
                    used: state.clock,
                    marked,
                },
            );
        }
        let copies = Copies {
            dir,
            limit,
            mark_every,
            state: Mutex::new(state),
            fills: AtomicU64::new(0),
            filling: Turns::default(),
        };
        copies.evict();
        Ok(Self {
            inner,
            copies: Arc::new(copies),
        })
    }
}

impl Copies {
    fn file(&self, location: &Path) -> PathBuf {
        file_of(&self.dir, location)
    }

    /// Keeps a copy of `bytes` as segment `location`, then evicts past the limit. A copy
    /// larger than the whole cache is not kept. Blocking: a temporary file, synced, renamed into
    /// place, so a copy found, even after a crash, is whole.
    fn keep(&self, location: &Path, bytes: &[Bytes]) {
        let size: u64 = bytes.iter().map(|b| b.len() as u64).sum();
        if size > self.limit {
            return;
        }
        let path = self.file(location);
        let fill = self.fills.fetch_add(1, Ordering::Relaxed);
        let partial = path.with_extension(format!("{fill}.{PARTIAL}"));
        let written = (|| {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut file = std::fs::File::create(&partial)?;
            for chunk in bytes {
                std::io::Write::write_all(&mut file, chunk)?;
            }
            file.sync_all()?;
            drop(file);
            std::fs::rename(&partial, &path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&partial);
            tracing::warn!(segment = %location, error = %e, "Could not keep a copy of a segment in the cache; it is read from the bucket.");
            metrics::counter!("fabrik_segment_cache_errors_total").increment(1);
            return;
        }
        {
            let mut state = self.state.lock();
            state.forget(location);
            state.clock += 1;
            let used = state.clock;
            state.bytes += size;
            let marked = SystemTime::now();
            state
                .entries
                .insert(location.clone(), Entry { size, used, marked });
        }
        self.evict();
    }

    /// Removes the least recently used copies past the limit. Blocking. A reader holding one
    /// open keeps reading it: the file goes, the open handle does not.
    fn evict(&self) {
        let (gone, bytes) = {
            let mut state = self.state.lock();
            let gone = state.over(self.limit);
            for location in &gone {
                state.forget(location);
            }
            (gone, state.bytes)
        };
        for location in &gone {
            remove_copy(&self.file(location), location);
        }
        metrics::counter!("fabrik_segment_cache_evicted_total").increment(gone.len() as u64);
        metrics::gauge!("fabrik_segment_cache_bytes").set(bytes as f64);
    }

    /// Drops the copy of `location`, if there is one.
    fn forget(&self, location: &Path) {
        if self.state.lock().forget(location) {
            remove_copy(&self.file(location), location);
        }
    }

    /// The cached copy of `location`, open, if there is one. Blocking.
    fn cached(&self, location: &Path) -> Option<(std::fs::File, u64)> {
        let now = SystemTime::now();
        let (size, mark) = self.state.lock().touch(location, now, self.mark_every)?;
        match std::fs::File::open(self.file(location)) {
            Ok(file) if file.metadata().is_ok_and(|m| m.len() == size) => {
                // The use, for the order the next start evicts in. Best effort: a copy whose
                // mark fails is only evicted sooner after a restart.
                if mark && let Err(e) = file.set_modified(now) {
                    tracing::debug!(segment = %location, error = %e, "Could not mark a segment copy as used.");
                }
                Some((file, size))
            }
            _ => {
                // Removed or cut short behind the cache's back: read from the bucket again.
                self.state.lock().forget(location);
                None
            }
        }
    }
}

fn file_of(dir: &std::path::Path, location: &Path) -> PathBuf {
    location
        .parts()
        .fold(dir.to_path_buf(), |path, part| path.join(part.as_ref()))
}

fn remove_copy(path: &std::path::Path, location: &Path) {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(segment = %location, error = %e, "Could not remove a segment copy from the cache.");
        }
        _ => {}
    }
}

/// The `store` of the cache's own errors, which are the disk's, not the bucket's.
pub(crate) const CACHE_STORE: &str = "segment cache";

fn cache_error(e: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
    object_store::Error::Generic {
        store: CACHE_STORE,
        source: Box::new(e),
    }
}

impl fmt::Debug for SegmentCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentCache")
            .field("inner", &self.inner)
            .field("copies", &self.copies)
            .finish()
    }
}

impl fmt::Display for SegmentCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} cached in {}", self.inner, self.copies.dir.display())
    }
}

impl SegmentCache {
    async fn cached(&self, location: &Path) -> object_store::Result<Option<(std::fs::File, u64)>> {
        let (copies, lookup) = (self.copies.clone(), location.clone());
        tokio::task::spawn_blocking(move || copies.cached(&lookup))
            .await
            .map_err(cache_error)
    }

    /// Answers a read from the copy `hit` (open, with its length).
    fn serve(
        &self,
        location: &Path,
        (file, size): (std::fs::File, u64),
        options: &GetOptions,
    ) -> object_store::Result<GetResult> {
        let range = match &options.range {
            Some(range) => range.as_range(size).map_err(cache_error)?,
            None => 0..size,
        };
        let meta = ObjectMeta {
            location: location.clone(),
            last_modified: file
                .metadata()
                .and_then(|m| m.modified())
                .map_or_else(|_| chrono::Utc::now(), chrono::DateTime::from),
            size,
            e_tag: None,
            version: None,
        };
        let payload = if options.head {
            GetResultPayload::Stream(futures::stream::empty().boxed())
        } else {
            GetResultPayload::File(file, self.copies.file(location))
        };
        Ok(GetResult {
            payload,
            meta,
            range,
            attributes: Default::default(),
        })
    }
}

#[async_trait]
impl ObjectStore for SegmentCache {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let written = self.inner.put_opts(location, payload.clone(), opts).await?;
        // A segment just written is the likeliest to be read next (the newest rows, or a
        // compaction's output), so the cache keeps it without a read from the bucket.
        let chunks: Vec<Bytes> = payload.iter().cloned().collect();
        let (cache, location) = (self.copies.clone(), location.clone());
        tokio::task::spawn_blocking(move || cache.keep(&location, &chunks))
            .await
            .map_err(cache_error)?;
        Ok(written)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let conditional = options.if_match.is_some()
            || options.if_none_match.is_some()
            || options.if_modified_since.is_some()
            || options.if_unmodified_since.is_some()
            || options.version.is_some();
        if conditional {
            return self.inner.get_opts(location, options).await;
        }
        if let Some(hit) = self.cached(location).await? {
            metrics::counter!("fabrik_segment_cache_hits_total").increment(1);
            return self.serve(location, hit, &options);
        }
        metrics::counter!("fabrik_segment_cache_misses_total").increment(1);
        if options.head || self.copies.state.lock().too_large.contains(location) {
            return self.inner.get_opts(location, options).await;
        }
        // One fill per segment at a time: the partitions of a query open the same file at
        // once, and each would otherwise fetch it whole.
        let filling = self.copies.filling.take(location).await;
        if let Some(hit) = self.cached(location).await? {
            return self.serve(location, hit, &options);
        }
        // The whole segment, once: the next reads of any of its columns are local.
        let whole = self.inner.get_opts(location, GetOptions::default()).await?;
        if whole.meta.size > self.copies.limit {
            // It would not be kept: read only what was asked for, now and from now on.
            drop(whole);
            self.copies.state.lock().too_large.insert(location.clone());
            drop(filling);
            return self.inner.get_opts(location, options).await;
        }
        let (meta, attributes) = (whole.meta.clone(), whole.attributes.clone());
        let bytes = whole.bytes().await?;
        if bytes.len() as u64 != meta.size {
            return Err(cache_error(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the bucket sent {} bytes of {location}, which is {} bytes long",
                    bytes.len(),
                    meta.size
                ),
            )));
        }
        let range = match &options.range {
            Some(range) => range.as_range(meta.size).map_err(cache_error)?,
            None => 0..meta.size,
        };
        let (cache, kept, chunk) = (self.copies.clone(), location.clone(), bytes.clone());
        tokio::task::spawn_blocking(move || cache.keep(&kept, &[chunk]))
            .await
            .map_err(cache_error)?;
        drop(filling);
        let part = bytes.slice(usize_range(&range)?);
        Ok(GetResult {
            payload: GetResultPayload::Stream(futures::stream::once(async { Ok(part) }).boxed()),
            meta,
            range,
            attributes,
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let copies = self.copies.clone();
        // Forgotten before the bucket's delete: a copy must not outlive the segment, and a
        // query still reading it has it open.
        let forgetting = locations.map(move |location| {
            if let Ok(location) = &location {
                copies.forget(location);
            }
            location
        });
        self.inner.delete_stream(forgetting.boxed())
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.copies.forget(to);
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.copies.forget(from);
        self.copies.forget(to);
        self.inner.rename_opts(from, to, options).await
    }
}

fn usize_range(range: &Range<u64>) -> object_store::Result<Range<usize>> {
    let convert = |n: u64| usize::try_from(n).map_err(cache_error);
    Ok(convert(range.start)?..convert(range.end)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt as _;
    use object_store::memory::InMemory;

    fn cache(limit: u64) -> (SegmentCache, Arc<InMemory>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("dir");
        let bucket = Arc::new(InMemory::new());
        let cache = SegmentCache::open(
            bucket.clone(),
            dir.path().join("cache"),
            limit,
            &HashMap::new(),
        )
        .expect("open");
        (cache, bucket, dir)
    }

    fn segment(n: u8, len: usize) -> (Path, Bytes) {
        let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(n)).collect();
        (
            Path::from(format!("t1/p0/{n:016}.parquet")),
            Bytes::from(bytes),
        )
    }

    fn copies(cache: &SegmentCache) -> Vec<String> {
        let mut names: Vec<String> = walk(&cache.copies.dir)
            .into_iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(walk(&path));
            } else {
                found.push(path);
            }
        }
        found
    }

    #[tokio::test]
    async fn a_written_segment_is_read_from_its_copy_until_it_is_deleted() {
        let (cache, bucket, _dir) = cache(1 << 20);
        let (path, bytes) = segment(3, 1000);
        cache.put(&path, bytes.clone().into()).await.expect("put");
        assert_eq!(copies(&cache), vec!["0000000000000003.parquet"]);
        // Gone from the bucket behind the cache's back: the copy still answers, ranges too.
        bucket.delete(&path).await.expect("delete in the bucket");
        let whole = cache
            .get(&path)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(whole, bytes);
        let part = cache.get_range(&path, 10..20).await.expect("range");
        assert_eq!(part, bytes.slice(10..20));
        assert_eq!(cache.head(&path).await.expect("head").size, 1000);
        // Deleted through the cache: the copy goes, and the bucket decides.
        cache.put(&path, bytes.into()).await.expect("put again");
        cache.delete(&path).await.expect("delete");
        assert!(copies(&cache).is_empty());
        assert!(matches!(
            cache.get(&path).await,
            Err(object_store::Error::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn least_recently_used_copies_leave_past_the_limit() {
        let (cache, bucket, _dir) = cache(250);
        let [(a, a_bytes), (b, b_bytes), (c, c_bytes)] =
            [segment(1, 100), segment(2, 100), segment(3, 100)];
        cache.put(&a, a_bytes.into()).await.expect("a");
        cache.put(&b, b_bytes.clone().into()).await.expect("b");
        cache.get_range(&a, 0..10).await.expect("a read");
        cache.put(&c, c_bytes.into()).await.expect("c");
        // b was used least recently.
        assert_eq!(
            copies(&cache),
            vec!["0000000000000001.parquet", "0000000000000003.parquet"]
        );
        // Read again from the bucket, whole, and kept; now a is the oldest.
        let part = cache.get_range(&b, 50..60).await.expect("b read");
        assert_eq!(part, b_bytes.slice(50..60));
        assert_eq!(
            copies(&cache),
            vec!["0000000000000002.parquet", "0000000000000003.parquet"]
        );
        // A copy that vanished is read from the bucket again.
        std::fs::remove_file(cache.copies.file(&b)).expect("remove");
        bucket
            .put(&b, b_bytes.clone().into())
            .await
            .expect("bucket");
        let whole = cache
            .get(&b)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(whole, b_bytes);
        assert_eq!(cache.copies.state.lock().bytes, 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_of_one_missing_segment_at_once_get_their_ranges_and_leave_no_lock_behind() {
        let (cache, bucket, _dir) = cache(1 << 20);
        let cache = Arc::new(cache);
        let (path, bytes) = segment(5, 4000);
        bucket
            .put(&path, bytes.clone().into())
            .await
            .expect("bucket");
        let reads: Vec<_> = (0..8_u64)
            .map(|k| {
                let (cache, path) = (cache.clone(), path.clone());
                tokio::spawn(async move { cache.get_range(&path, k * 100..k * 100 + 50).await })
            })
            .collect();
        for (k, read) in reads.into_iter().enumerate() {
            let part = read.await.expect("task").expect("read");
            let start = k * 100;
            assert_eq!(part, bytes.slice(start..start + 50));
        }
        assert_eq!(copies(&cache), vec!["0000000000000005.parquet"]);
        assert_eq!(cache.copies.state.lock().bytes, 4000);
        // A read that fails (nothing in the bucket) leaves no lock behind either.
        let (missing, _) = segment(6, 10);
        assert!(cache.get(&missing).await.is_err());
        assert!(cache.copies.filling.is_idle());
    }

    #[tokio::test]
    async fn a_segment_larger_than_the_cache_is_served_but_not_kept() {
        let (cache, bucket, _dir) = cache(100);
        let (path, bytes) = segment(4, 500);
        bucket
            .put(&path, bytes.clone().into())
            .await
            .expect("bucket");
        let part = cache.get_range(&path, 400..500).await.expect("range");
        assert_eq!(part, bytes.slice(400..500));
        assert!(copies(&cache).is_empty());
        // Later reads ask the bucket for their range only.
        assert!(cache.copies.state.lock().too_large.contains(&path));
        let part = cache.get_range(&path, 0..10).await.expect("range");
        assert_eq!(part, bytes.slice(0..10));
    }

    #[tokio::test]
    async fn the_order_of_use_outlives_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        let bucket = Arc::new(InMemory::new());
        let open = |limit| {
            let [a, b, c] = [1, 2, 3].map(|n| (segment(n, 100).0.to_string(), 100));
            SegmentCache::open_marking(
                bucket.clone(),
                dir.path().join("cache"),
                limit,
                &HashMap::from([a, b, c]),
                Duration::ZERO,
            )
            .expect("open")
        };
        let cache = open(1 << 20);
        let [(a, a_bytes), (b, b_bytes), (c, c_bytes)] =
            [segment(1, 100), segment(2, 100), segment(3, 100)];
        cache.put(&a, a_bytes.into()).await.expect("a");
        std::thread::sleep(Duration::from_millis(20));
        cache.put(&b, b_bytes.into()).await.expect("b");
        std::thread::sleep(Duration::from_millis(20));
        // a, written first, is read after b was written: b is the least recently used.
        cache.get_range(&a, 0..10).await.expect("a read");
        drop(cache);
        let cache = open(250);
        cache.put(&c, c_bytes.into()).await.expect("c");
        assert_eq!(
            copies(&cache),
            vec!["0000000000000001.parquet", "0000000000000003.parquet"]
        );
    }

    #[test]
    fn open_keeps_whole_copies_of_listed_segments_only() {
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path().join("cache");
        let folder = root.join("t1/p0");
        std::fs::create_dir_all(&folder).expect("mkdir");
        let write = |name: &str, len: usize| {
            std::fs::write(folder.join(name), vec![7; len]).expect("write");
        };
        write("0000000000000001.parquet", 10);
        write("0000000000000002.parquet", 5);
        write("0000000000000003.parquet", 10);
        // What `keep` leaves when stopped between writing and renaming.
        write("0000000000000003.9.partial", 10);
        let live: HashMap<String, u64> = [
            ("t1/p0/0000000000000001.parquet".to_owned(), 10),
            // Listed with another length: a torn copy.
            ("t1/p0/0000000000000002.parquet".to_owned(), 10),
            ("t1/p0/0000000000000004.parquet".to_owned(), 10),
        ]
        .into();
        let cache =
            SegmentCache::open(Arc::new(InMemory::new()), root, 1 << 20, &live).expect("open");
        assert_eq!(copies(&cache), vec!["0000000000000001.parquet"]);
        assert_eq!(cache.copies.state.lock().bytes, 10);
    }
}
