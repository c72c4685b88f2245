//! Fabrik's storage engine.
//!
//! Write path: parse and type-check a request into Arrow batches ([`batch`]) → one WAL record,
//! group-committed and fsynced by the WAL thread ([`wal`]) → applied to the in-memory buffer
//! ([`buffer`]) in WAL order → acknowledged. Data is queryable the moment it is acknowledged.
//!
//! Background: the buffer is frozen and written as time-partitioned Parquet segments on an
//! `object_store` ([`segments`], [`manifest`]) every `flush_interval` or when it grows past
//! `flush_buffer_size`; WAL segments covered by the manifest are deleted; partitions holding
//! several segments are merged and expired data is dropped (compaction and retention).
//!
//! Read path: SQL through DataFusion over buffer and segments together ([`query`]).
//!
//! This crate must not know about HTTP or any protocol: callers hand it bodies and points.

pub mod batch;
pub mod blobs;
pub mod buffer;
pub mod error;
mod last_rows;
pub mod manifest;
pub mod objects;
pub mod pool;
pub mod query;
mod reader;
pub mod schema;
mod segment_cache;
pub mod segments;
mod series_cache;
mod turns;
pub mod wal;
mod yielding_joins;

/// How much of a blob's file one chunk of a streamed read carries. Each read of a tokio file is
/// a hop to a blocking thread, so the 4 KiB `ReaderStream` reads by default held a 256 MiB
/// blob to about 170 MB/s on the loopback (docs/benchmarks.md); a quarter MiB per reader is
/// memory well spent.
pub const FILE_CHUNK: usize = 256 << 10;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use fabrik_core::blob::BLOBS_TABLE;
use fabrik_core::line_protocol::{Line, lines, parse_line, parse_line_fields, series_key_len};
use fabrik_core::{Lineage, Point, Precision, RawMessageId, RawMessageIds, SourceId, Timestamp};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use blobs::{
    Blob, BlobMeta, BlobPart, BlobPin, BlobStore, ByteRange, EvictionReport, RangeRead, SweepReport,
};
pub use datafusion::arrow;
pub use error::StoreError;

use crate::batch::{BatchBuilder, SeriesKey, WriteChunk};
use crate::buffer::Buffer;
use crate::manifest::{Manifest, SegmentMeta};
use crate::query::{FabrikTable, SEGMENTS_URL, TableSnapshot};
use crate::schema::{Catalog, ColumnKind};
use crate::segments::Objects;
use crate::series_cache::SeriesCache;
use crate::wal::{WalCommand, WalSink};

/// How often a long eviction pass checks again that no restore elsewhere took the bucket
/// prefix over (decision 0062).
const FENCE_RECHECK: Duration = Duration::from_secs(2);
/// How long a write waits for persisting to make room before it is refused as busy.
const BACKLOG_WAIT: Duration = Duration::from_secs(30);

/// How the store is set up.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Data directory (WAL, segments, manifest).
    pub data_dir: PathBuf,
    /// Width of a time partition.
    pub partition: Duration,
    /// Persist the buffer at least this often.
    pub flush_interval: Duration,
    /// ... or once it holds this many bytes.
    pub flush_buffer_size: u64,
    /// Merge segments and apply retention this often.
    pub compaction_interval: Duration,
    /// Default retention (`None`: forever).
    pub retention: Option<Duration>,
    /// Per-table retention.
    pub table_retention: BTreeMap<String, Option<Duration>>,
    /// Delete blobs no live row names this often ([`Store::sweep_blobs`]).
    pub blob_sweep_interval: Duration,
    /// ... once they were last stored at least this long ago.
    pub blob_min_age: Duration,
    /// Queries running longer are cancelled.
    pub query_timeout: Duration,
    /// Threads of the query pool.
    pub query_threads: usize,
    /// Keep the WAL records after this sequence number even once persisted, until
    /// [`Store::hold_wal`] moves the hold: the edge uplink reads them (`Some(0)` keeps all).
    pub wal_hold: Option<u64>,
    /// Segments in an S3-compatible bucket instead of `<data_dir>/segments` (decision 0048).
    pub objects: Option<objects::ObjectStorage>,
    /// With `objects`: keep at most this many bytes of blobs on the disk; the least recently
    /// used copies the bucket also holds are evicted past it ([`Store::evict_blobs`]).
    pub local_blob_limit: Option<u64>,
    /// With `objects`: keep copies of at most this many bytes of segments on the disk for
    /// queries (decision 0064).
    pub segment_cache: Option<u64>,
}

impl StoreOptions {
    /// Defaults for a data directory (as `fabrik config example` documents them).
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            partition: Duration::from_secs(86_400),
            flush_interval: Duration::from_secs(300),
            flush_buffer_size: 256 << 20,
            compaction_interval: Duration::from_secs(60),
            retention: None,
            table_retention: BTreeMap::new(),
            blob_sweep_interval: Duration::from_secs(3600),
            blob_min_age: Duration::from_secs(3600),
            query_timeout: Duration::from_secs(30),
            query_threads: 2,
            wal_hold: None,
            objects: None,
            local_blob_limit: None,
            segment_cache: None,
        }
    }
}

thread_local! {
    /// Series keys seen recently by this thread's writes (see [`SeriesCache`]).
    static SERIES_CACHE: std::cell::RefCell<SeriesCache> = std::cell::RefCell::default();
}

/// About how many lines a body has, from the length of its first line that is not blank
/// (lines of one body are usually alike).
fn estimated_lines(body: &str) -> usize {
    let first = body
        .split('\n')
        .find(|line| !line.trim().is_empty())
        .map_or(body.len(), |line| line.len() + 1);
    body.len() / first.max(1) + 1
}

/// Parses a line-protocol body into `builder`; stops at the first bad line.
fn add_body(
    builder: &mut BatchBuilder,
    body: &str,
    precision: Precision,
) -> Result<(), StoreError> {
    SERIES_CACHE.with_borrow_mut(|cache| {
        let mut line = Line::default();
        // The cache slot of the previous line's series, whose successor is guessed first.
        let mut previous = None;
        for (number, text) in lines(body) {
            let Some(key_len) = series_key_len(text) else {
                parse_line(text, number, &mut line)?;
                builder.add_line(&line, precision)?;
                previous = None;
                continue;
            };
            let key = &text[..key_len];
            let cached = cache.find(previous, key);
            if let Some(series) = cached.and_then(|slot| cache.get_mut(slot)) {
                previous = cached;
                if builder.add_known_series_line(series, text, key_len, number, precision)? {
                    continue;
                }
                parse_line_fields(text, key_len, number, &mut line)?;
                builder.add_series_line(series, &line, precision)?;
                continue;
            }
            parse_line(text, number, &mut line)?;
            builder.add_line(&line, precision)?;
            previous = SeriesKey::of_line(&line, key).map(|series| cache.insert(previous, series));
        }
        Ok(())
    })
}

/// What a write stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteReport {
    /// Points (rows) accepted.
    pub points: usize,
    /// The raw-message id stamped on them.
    pub raw_id: RawMessageId,
    /// The WAL sequence number of the write.
    pub seq: u64,
    /// Rows written per table, for writes of lines and points (the API's, Fabrik's own); empty
    /// for connectors' groups and the hub's Arrow batches, whose callers know their tables.
    pub tables: Vec<(Arc<str>, usize)>,
}

/// Rows per table of a write's chunks: a table has a chunk per partition it touches, and a
/// builder's chunks come table by table, so a table repeats only right after itself.
fn rows_per_table(chunks: &[WriteChunk]) -> Vec<(Arc<str>, usize)> {
    let mut tables: Vec<(Arc<str>, usize)> = Vec::new();
    for chunk in chunks {
        match tables.last_mut() {
            Some((table, rows)) if *table == chunk.table => *rows += chunk.batch.num_rows(),
            _ => tables.push((chunk.table.clone(), chunk.batch.num_rows())),
        }
    }
    tables
}

/// A query result.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    /// The result schema.
    pub schema: SchemaRef,
    /// The rows.
    pub batches: Vec<RecordBatch>,
}

/// A table and its columns, for listings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableInfo {
    /// Name.
    pub name: String,
    /// Tag columns.
    pub tags: Vec<String>,
    /// Field columns and their types.
    pub fields: Vec<(String, String)>,
}

/// Where a store's segments are and how far it is (`GET /api/v1/store`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoreStatus {
    /// `owner` (this store writes its segments) or `read_only` (it reads the prefix another
    /// store writes, decision 0079).
    pub role: &'static str,
    /// `[store.objects] url`; `None`: segments on the local disk.
    pub bucket: Option<String>,
    /// The store that owns the prefix: this one, or on a read-only node the owner as last read.
    pub store_id: Option<String>,
    /// Every WAL record up to this one is in the segments (on a read-only node: the owner's,
    /// as its manifest last read says).
    pub persisted_seq: u64,
    /// Rows acknowledged and not yet in segments, and their bytes in memory (none on a
    /// read-only node, which sees only what the owner persisted).
    pub buffered_rows: usize,
    /// See `buffered_rows`.
    pub buffered_bytes: usize,
    /// Per table, what its segments hold.
    pub tables: Vec<TableSegments>,
    /// On a read-only node: when the owner's manifest was last read (ns since the epoch).
    pub read_at: Option<i64>,
    /// On a read-only node: how often it is read, in seconds.
    pub refresh_interval_s: Option<f64>,
}

/// A table's segments, for [`StoreStatus`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableSegments {
    /// The table.
    pub name: String,
    /// Segment files.
    pub segments: usize,
    /// Rows in them (before de-duplication across files).
    pub rows: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The time of the newest row in them (ns since the epoch).
    pub newest: Option<i64>,
}

struct Frozen {
    buffer: Buffer,
    last_seq: u64,
}

#[derive(Default)]
struct State {
    manifest: Manifest,
    frozen: Vec<Arc<Frozen>>,
}

/// State shared by the store, the WAL thread and query scans. Lock order: `state`, then
/// `buffer`.
pub(crate) struct Shared {
    options: StoreOptions,
    catalog: Catalog,
    state: RwLock<State>,
    buffer: Mutex<Buffer>,
    objects: Objects,
    /// In a bucket: the prefix's marker and manifest copy (decision 0061).
    bucket: Option<Arc<objects::BucketClaim>>,
    flush_wanted: Notify,
    /// A persist copied blobs to the bucket, which the eviction may now take off the disk.
    evict_wanted: Notify,
    /// Blobs being copied back from the bucket, which other readers of them wait for.
    restoring: turns::Turns<fabrik_core::BlobId>,
    /// The sequence number of the last write applied (durable and queryable).
    applied: tokio::sync::watch::Sender<u64>,
    /// WAL records after this sequence number are kept past persistence (`u64::MAX`: none).
    wal_hold: std::sync::atomic::AtomicU64,
    /// Per table and segment path, the last row of each series in that segment file
    /// ([`last_rows`]); segment files never change, so an entry stays valid while the file lives.
    last_rows_cache: LastRowsCache,
    /// Bytes of the live buffer, and of frozen buffers not yet persisted: past
    /// [`Shared::backlog_limit`], writes wait for persisting to catch up, and are refused while
    /// it fails.
    buffer_bytes: std::sync::atomic::AtomicU64,
    frozen_bytes: std::sync::atomic::AtomicU64,
    /// Whether the last persist failed (a full disk, an unreachable bucket).
    persist_failing: std::sync::atomic::AtomicBool,
    /// Woken after each persist, for the writes waiting for room.
    persisted: Notify,
}

impl Shared {
    /// Four flushes' worth: a persist that keeps failing (a full disk, an unreachable bucket)
    /// would otherwise hold every later row in memory until the process is killed.
    fn backlog_limit(&self) -> u64 {
        self.options.flush_buffer_size.saturating_mul(4)
    }
}

type LastRowsCache = Mutex<
    std::collections::HashMap<Arc<str>, std::collections::HashMap<String, Option<RecordBatch>>>,
>;

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("data_dir", &self.options.data_dir)
            .finish()
    }
}

impl Shared {
    fn snapshot_table(&self, table: &str) -> TableSnapshot {
        let state = self.state.read();
        let buffer = self.buffer.lock();
        TableSnapshot {
            segments: state
                .manifest
                .tables
                .get(table)
                .map(|t| t.segments.clone())
                .unwrap_or_default(),
            frozen: state
                .frozen
                .iter()
                .map(|f| (f.last_seq, f.buffer.table(table)))
                .collect(),
            live: buffer.table(table),
        }
    }

    fn retention(&self, table: &str) -> Option<Duration> {
        if table == BLOBS_TABLE {
            // A listing row keeps its blob alive while its naming table's retention has not
            // passed (see `Store::sweep_blobs`), so it must last as long as the longest one.
            return self.longest_retention();
        }
        match self.options.table_retention.get(table) {
            Some(r) => *r,
            None => self.options.retention,
        }
    }

    fn longest_retention(&self) -> Option<Duration> {
        let mut longest = self.options.retention?;
        for retention in self.options.table_retention.values() {
            longest = longest.max((*retention)?);
        }
        Some(longest)
    }

    fn retention_cutoff(&self, table: &str) -> Option<i64> {
        let keep = self.retention(table)?;
        let keep = i64::try_from(keep.as_nanos()).unwrap_or(i64::MAX);
        Some(Timestamp::now().nanos().saturating_sub(keep))
    }
}

/// The distinct tables of a WAL record's chunks (usually one or two).
fn applied_tables(chunks: &[WriteChunk]) -> Vec<Arc<str>> {
    let mut tables: Vec<Arc<str>> = Vec::new();
    for chunk in chunks {
        if !tables.contains(&chunk.table) {
            tables.push(chunk.table.clone());
        }
    }
    tables
}

struct Sink(Arc<Shared>);

impl WalSink for Sink {
    fn apply(&self, seq: u64, chunks: Vec<WriteChunk>) {
        let tables = applied_tables(&chunks);
        let bytes = {
            let mut buffer = self.0.buffer.lock();
            buffer.apply(seq, chunks);
            buffer.bytes
        };
        self.0
            .buffer_bytes
            .store(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        self.0.applied.send_replace(seq);
        for table in &tables {
            self.0.catalog.mark_queryable(table);
        }
        metrics::gauge!("fabrik_store_buffer_bytes").set(bytes as f64);
        if bytes as u64 >= self.0.options.flush_buffer_size {
            self.0.flush_wanted.notify_one();
        }
    }

    fn rotate(&self, last_seq: u64) {
        let mut state = self.0.state.write();
        let mut buffer = self.0.buffer.lock();
        let old = std::mem::take(&mut *buffer);
        buffer.max_seq = last_seq;
        self.0
            .frozen_bytes
            .fetch_add(old.bytes as u64, std::sync::atomic::Ordering::Relaxed);
        self.0
            .buffer_bytes
            .store(0, std::sync::atomic::Ordering::Relaxed);
        state.frozen.push(Arc::new(Frozen {
            buffer: old,
            last_seq,
        }));
        metrics::gauge!("fabrik_store_buffer_bytes").set(0.0);
    }
}

/// Owns the query thread pool; shuts it down without blocking when dropped.
struct QueryPool {
    runtime: Option<tokio::runtime::Runtime>,
    /// Queries whose task is on the pool now (counted by [`RunningQuery`]).
    running: Arc<AtomicUsize>,
}

impl Drop for QueryPool {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Counts a query's task as running on the pool until the task ends, finished or aborted.
struct RunningQuery(Arc<AtomicUsize>);

impl RunningQuery {
    fn new(running: Arc<AtomicUsize>) -> Self {
        running.fetch_add(1, Ordering::Relaxed);
        // Moved, not set from the count: two queries starting and ending at once could
        // otherwise set it in the wrong order.
        metrics::gauge!("fabrik_queries_running").increment(1.0);
        Self(running)
    }
}

impl Drop for RunningQuery {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("fabrik_queries_running").decrement(1.0);
    }
}

/// The storage engine. Share it behind an `Arc`.
pub struct Store {
    shared: Arc<Shared>,
    wal_tx: RwLock<Option<mpsc::Sender<WalCommand>>>,
    wal_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    wal_dir: PathBuf,
    maintenance: tokio::sync::Mutex<Vec<(Instant, object_store::path::Path)>>,
    runtime_env: Arc<RuntimeEnv>,
    query_pool: QueryPool,
    ids: RawMessageIds,
    blobs: BlobStore,
    /// Set when this store only reads the prefix another store writes (decision 0079).
    reader: Option<reader::Follower>,
    _lock: File,
}

fn data_dir_error(path: &Path, reason: impl std::fmt::Display) -> StoreError {
    StoreError::DataDir {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The tables a manifest names, as the catalog takes them.
fn manifest_tables(manifest: &Manifest) -> Vec<(String, u32, Vec<crate::schema::Column>)> {
    manifest
        .tables
        .iter()
        .map(|(name, t)| (name.clone(), t.id, t.columns.clone()))
        .collect()
}

/// `objects` (a bucket prefix's segments) read through the disk cache when
/// `[store.objects] segment_cache` asks for one (decision 0064).
async fn with_segment_cache(
    objects: Objects,
    options: &StoreOptions,
    manifest: &Manifest,
) -> Result<Objects, StoreError> {
    let Some(limit) = options.segment_cache else {
        return Ok(objects);
    };
    let live: std::collections::HashMap<String, u64> = manifest
        .tables
        .values()
        .flat_map(|t| t.segments.iter().map(|s| (s.path.clone(), s.bytes)))
        .collect();
    let cache_dir = options.data_dir.join("segment-cache");
    Ok(Arc::new(
        tokio::task::spawn_blocking(move || {
            segment_cache::SegmentCache::open(objects, cache_dir, limit, &live)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("segment cache task: {e}")))??,
    ))
}

/// DataFusion's runtime reading segments from `objects`, and the pool queries run on.
fn query_runtime(
    options: &StoreOptions,
    objects: Objects,
) -> Result<(Arc<RuntimeEnv>, QueryPool), StoreError> {
    let runtime_env = RuntimeEnvBuilder::new()
        .build_arc()
        .map_err(|e| StoreError::Internal(e.to_string()))?;
    let url = datafusion::execution::object_store::ObjectStoreUrl::parse(SEGMENTS_URL)?;
    runtime_env.register_object_store(url.as_ref(), objects);
    let query_pool = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.query_threads.max(1))
        .thread_name("fabrik-query")
        .enable_all()
        .build()
        .map_err(|e| StoreError::io("starting the query pool", e))?;
    Ok((
        runtime_env,
        QueryPool {
            runtime: Some(query_pool),
            running: Arc::new(AtomicUsize::new(0)),
        },
    ))
}

/// Creates the data directory and proves it is writable, with a clear error if not.
fn prepare_data_dir(dir: &Path) -> Result<File, StoreError> {
    for sub in ["", "wal", "segments"] {
        std::fs::create_dir_all(dir.join(sub))
            .map_err(|e| data_dir_error(dir, format!("cannot create it: {e}")))?;
    }
    let probe = dir.join(".write-probe");
    let probe_result = (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = File::create(&probe)?;
        f.write_all(b"probe")?;
        f.sync_all()?;
        std::fs::remove_file(&probe)
    })();
    probe_result.map_err(|e| data_dir_error(dir, format!("is not writable: {e}")))?;
    let lock = File::create(dir.join("LOCK"))
        .map_err(|e| data_dir_error(dir, format!("cannot create LOCK: {e}")))?;
    lock.try_lock()
        .map_err(|_| data_dir_error(dir, "is in use by another Fabrik process (LOCK is held)"))?;
    Ok(lock)
}

impl Store {
    /// Opens (or creates) a store: checks the data directory, loads the manifest, replays the
    /// WAL into the buffer, and starts the WAL thread. Must be called inside a tokio runtime.
    pub async fn open(options: StoreOptions) -> Result<Arc<Store>, StoreError> {
        if let Some(storage) = &options.objects
            && let Some(every) = storage.read_only
        {
            let storage = storage.clone();
            return Self::open_read_only(options, &storage, every).await;
        }
        let dir = options.data_dir.clone();
        let lock = prepare_data_dir(&dir)?;
        let manifest = Manifest::load(&dir)?;
        let catalog = Catalog::from_tables(manifest_tables(&manifest));
        let blobs = BlobStore::open(dir.join("blobs"))?;
        let (objects, sweep, bucket) =
            objects::open(&dir, options.objects.as_ref(), &manifest).await?;
        sweep_orphan_segments(&objects, &manifest, sweep).await?;
        let objects = match &bucket {
            Some(_) => with_segment_cache(objects, &options, &manifest).await?,
            None => objects,
        };
        if let Some(bucket) = &bucket
            && sweep != objects::Sweep::Skip
        {
            // A store from before copies were made gets one now, not at its next persist.
            bucket.copy_manifest(&manifest).await;
        }

        let persisted_seq = manifest.persisted_seq;
        let shared = Arc::new(Shared {
            options: options.clone(),
            catalog,
            state: RwLock::new(State {
                manifest,
                frozen: Vec::new(),
            }),
            buffer: Mutex::new(Buffer::default()),
            objects: objects.clone(),
            bucket,
            flush_wanted: Notify::new(),
            evict_wanted: Notify::new(),
            restoring: turns::Turns::default(),
            applied: tokio::sync::watch::Sender::new(persisted_seq),
            wal_hold: std::sync::atomic::AtomicU64::new(options.wal_hold.unwrap_or(u64::MAX)),
            last_rows_cache: Mutex::default(),
            buffer_bytes: std::sync::atomic::AtomicU64::new(0),
            frozen_bytes: std::sync::atomic::AtomicU64::new(0),
            persist_failing: std::sync::atomic::AtomicBool::new(false),
            persisted: Notify::new(),
        });
        let wal_dir = dir.join("wal");
        let started = Instant::now();
        let report = {
            let shared = shared.clone();
            let wal_dir = wal_dir.clone();
            tokio::task::spawn_blocking(move || {
                wal::replay(&wal_dir, persisted_seq, |seq, chunks| {
                    for chunk in &chunks {
                        let schema = chunk.batch.schema();
                        let wanted: Vec<(&str, ColumnKind, String)> = schema
                            .fields()
                            .iter()
                            .filter_map(|f| match schema::kind_of(f) {
                                Some(k @ (ColumnKind::Tag | ColumnKind::Field(_))) => {
                                    Some((f.name().as_str(), k, format!("WAL record {seq}: ")))
                                }
                                _ => None,
                            })
                            .collect();
                        shared.catalog.ensure(&chunk.table, &wanted)?;
                    }
                    let tables = applied_tables(&chunks);
                    shared.buffer.lock().apply(seq, chunks);
                    for table in &tables {
                        shared.catalog.mark_queryable(table);
                    }
                    Ok(())
                })
            })
            .await
            .map_err(|e| StoreError::Internal(format!("WAL replay task: {e}")))??
        };
        let (rows, bytes) = {
            let b = shared.buffer.lock();
            (b.rows, b.bytes)
        };
        shared
            .buffer_bytes
            .store(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            records = report.records,
            rows,
            buffer_bytes = bytes,
            torn_bytes_dropped = report.torn_bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "WAL replayed."
        );
        shared.applied.send_replace(report.next_seq - 1);
        let (wal_tx, wal_thread) =
            wal::start(&wal_dir, report.next_seq, Sink(shared.clone()), 1024)?;
        let (runtime_env, query_pool) = query_runtime(&options, objects)?;

        Ok(Arc::new(Store {
            shared,
            wal_tx: RwLock::new(Some(wal_tx)),
            wal_thread: Mutex::new(Some(wal_thread)),
            wal_dir,
            maintenance: tokio::sync::Mutex::new(Vec::new()),
            runtime_env,
            query_pool,
            ids: RawMessageIds::new(),
            blobs,
            reader: None,
            _lock: lock,
        }))
    }

    /// Opens a store that only reads the prefix another store writes (decision 0079): its
    /// tables and segments are the owner's manifest's, read again every `every`; it has no
    /// WAL and takes no writes, so rows appear here once the owner persisted them.
    async fn open_read_only(
        options: StoreOptions,
        storage: &objects::ObjectStorage,
        every: Duration,
    ) -> Result<Arc<Store>, StoreError> {
        let mut options = options;
        // Retention is the owner's to apply (its compaction drops expired rows, and the
        // refresh brings that here): this node's own settings could only disagree with it,
        // hiding rows the owner still serves or showing ones it already dropped.
        options.retention = None;
        options.table_retention.clear();
        let dir = options.data_dir.clone();
        let lock = prepare_data_dir(&dir)?;
        let opened = reader::open(&dir, storage, every).await?;
        if options.local_blob_limit.is_none() {
            tracing::warn!(data_dir = %dir.display(), "This read-only node keeps every blob it reads whole on its disk: set store.objects.local_blob_limit to bound them.");
        }
        let catalog = Catalog::default();
        catalog.replace(manifest_tables(&opened.manifest));
        let objects = with_segment_cache(opened.objects, &options, &opened.manifest).await?;
        let persisted_seq = opened.manifest.persisted_seq;
        let shared = Arc::new(Shared {
            options: options.clone(),
            catalog,
            state: RwLock::new(State {
                manifest: opened.manifest,
                frozen: Vec::new(),
            }),
            buffer: Mutex::new(Buffer::default()),
            objects: objects.clone(),
            bucket: Some(opened.claim),
            flush_wanted: Notify::new(),
            evict_wanted: Notify::new(),
            restoring: turns::Turns::default(),
            applied: tokio::sync::watch::Sender::new(persisted_seq),
            wal_hold: std::sync::atomic::AtomicU64::new(u64::MAX),
            last_rows_cache: Mutex::default(),
            buffer_bytes: std::sync::atomic::AtomicU64::new(0),
            frozen_bytes: std::sync::atomic::AtomicU64::new(0),
            persist_failing: std::sync::atomic::AtomicBool::new(false),
            persisted: Notify::new(),
        });
        let (runtime_env, query_pool) = query_runtime(&options, objects)?;
        metrics::gauge!("fabrik_store_reader_refreshed_timestamp_seconds")
            .set(Timestamp::now().nanos() as f64 / 1e9);
        Ok(Arc::new(Store {
            shared,
            wal_tx: RwLock::new(None),
            wal_thread: Mutex::new(None),
            wal_dir: dir.join("wal"),
            maintenance: tokio::sync::Mutex::new(Vec::new()),
            runtime_env,
            query_pool,
            ids: RawMessageIds::new(),
            blobs: BlobStore::open(dir.join("blobs"))?,
            reader: Some(opened.follower),
            _lock: lock,
        }))
    }

    /// Whether this store only reads the prefix another store writes (decision 0079).
    pub fn is_read_only(&self) -> bool {
        self.reader.is_some()
    }

    /// Fails on a read-only store, naming where writes go instead. Every write asks before
    /// it parses (a parse teaches the catalog the request's columns), and so do the callers
    /// that store a blob before the rows naming it: a refused write leaves nothing behind.
    pub fn check_writable(&self) -> Result<(), StoreError> {
        match &self.reader {
            None => Ok(()),
            Some(reader) => Err(StoreError::ReadOnly {
                url: reader.url().to_owned(),
                owner: reader.owner(),
            }),
        }
    }

    /// Reads the owner's manifest again on a read-only store (decision 0079), so queries see
    /// what it persisted since; whether it changed. Does nothing on a store that writes.
    pub async fn refresh(&self) -> Result<bool, StoreError> {
        let Some(reader) = &self.reader else {
            return Ok(false);
        };
        // A reader's only maintenance: held from the read to the swap, so a query's retry and
        // the timer cannot put an older manifest back over a newer one.
        let _turn = self.maintenance.lock().await;
        let refreshed = reader.refresh().await;
        let outcome = match &refreshed {
            Ok(Some(_)) => "changed",
            Ok(None) => "unchanged",
            Err(_) => "failed",
        };
        metrics::counter!("fabrik_store_reader_refreshes_total", "outcome" => outcome).increment(1);
        let refreshed = refreshed?;
        metrics::gauge!("fabrik_store_reader_refreshed_timestamp_seconds")
            .set(Timestamp::now().nanos() as f64 / 1e9);
        let Some(manifest) = refreshed else {
            return Ok(false);
        };
        let live: std::collections::HashSet<String> = manifest
            .tables
            .values()
            .flat_map(|t| t.segments.iter().map(|s| s.path.clone()))
            .collect();
        {
            let mut state = self.shared.state.write();
            self.shared.catalog.replace(manifest_tables(&manifest));
            self.shared.applied.send_replace(manifest.persisted_seq);
            state.manifest = manifest;
        }
        // Segments the owner compacted away are named by no later plan.
        for segments in self.shared.last_rows_cache.lock().values_mut() {
            segments.retain(|path, _| live.contains(path));
        }
        Ok(true)
    }

    /// The clips, images and files rows refer to by [`fabrik_core::BlobId`].
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Blob `id`, whole in memory: from the data directory, else (segments in a bucket) from
    /// the bucket, which holds every blob a persisted listing names, copied back to the disk
    /// as [`Store::fetch_blob_file`] does. `None` if neither has it.
    pub async fn blob(&self, id: &fabrik_core::BlobId) -> Result<Option<Blob>, StoreError> {
        let Some((mut file, meta)) = self.fetch_blob_file(id).await? else {
            return Ok(None);
        };
        let id = id.clone();
        tokio::task::spawn_blocking(move || {
            let mut bytes = Vec::with_capacity(usize::try_from(meta.length).unwrap_or(0));
            std::io::Read::read_to_end(&mut file, &mut bytes)
                .map_err(|e| StoreError::io(format!("reading blob {id}"), e))?;
            Ok(Some(Blob {
                bytes,
                content_type: meta.content_type,
            }))
        })
        .await
        .map_err(|e| StoreError::Internal(format!("blob read task: {e}")))?
    }

    /// Blob `id`'s file in the data directory, open, with its media type and length (and, with
    /// `local_blob_limit`, marked as used); `None` if the disk does not have it, though the
    /// bucket may ([`Store::fetch_blob_file`] reads both).
    pub async fn blob_file(
        &self,
        id: &fabrik_core::BlobId,
    ) -> Result<Option<(std::fs::File, BlobMeta)>, StoreError> {
        self.read_local(id, true, BlobStore::open_file).await
    }

    /// Blob `id`'s file, open, with its media type and length: from the data directory, else
    /// copied back from the bucket first, so a restored node reads its clips again (decision
    /// 0061) and an evicted one is on the disk for its next reads. The copy is streamed and
    /// checked against the id as it is written (decision 0065): no read holds the blob in
    /// memory, and other bytes under its name in the bucket are an error that stores nothing.
    /// Readers of one blob at once wait for the first one's copy rather than each make one.
    /// `None` if neither has it.
    pub async fn fetch_blob_file(
        &self,
        id: &fabrik_core::BlobId,
    ) -> Result<Option<(std::fs::File, BlobMeta)>, StoreError> {
        let local = self.blob_file(id).await?;
        if local.is_some() {
            return Ok(local);
        }
        let Some(bucket) = &self.shared.bucket else {
            return Ok(None);
        };
        // Pinned while this reader is here, so the pass a copy back wakes cannot take the
        // copy from readers still waiting for it (a blob larger than the whole limit would
        // otherwise be copied once per waiting reader).
        let _pin = self.blobs.pin(id);
        let turn = self.shared.restoring.take(id).await;
        // The reader whose turn came first may have copied it back meanwhile.
        let local = self.blob_file(id).await?;
        if local.is_some() {
            return Ok(local);
        }
        // The copy runs as a task of its own holding the turn, so a reader that goes away
        // (a player seeking) neither stops it halfway nor lets the next reader start another.
        let (bucket, blobs, lookup) = (bucket.clone(), self.blobs.clone(), id.clone());
        let (shared, evicts) = (self.shared.clone(), self.evicts_blobs());
        tokio::spawn(async move {
            let _turn = turn;
            let restored = bucket.restore_blob(&lookup, &blobs).await;
            if evicts && matches!(restored, Ok(Some(_))) {
                // Back on the disk, which may now hold more than `local_blob_limit`: woken
                // here, so a reader that went away does not leave the disk over it.
                shared.evict_wanted.notify_one();
            }
            restored
        })
        .await
        .map_err(|e| StoreError::Internal(format!("blob restore task: {e}")))?
    }

    /// The media type and length of blob `id`: from the data directory, else from the bucket
    /// (a HEAD). `None` if neither has it.
    pub async fn blob_meta(
        &self,
        id: &fabrik_core::BlobId,
    ) -> Result<Option<BlobMeta>, StoreError> {
        let local = self.read_local(id, false, BlobStore::meta).await?;
        if local.is_some() {
            return Ok(local);
        }
        match &self.shared.bucket {
            Some(bucket) => bucket.fetch_blob_meta(id).await,
            None => Ok(None),
        }
    }

    /// The bytes of blob `id` that `range` names, streamed: from the data directory, else from
    /// the bucket in a ranged read, which does not bring the blob back to the disk (a player
    /// seeking through a long recording would otherwise refill the disk an eviction just
    /// freed). `None` if neither has it.
    pub async fn blob_range(
        &self,
        id: &fabrik_core::BlobId,
        range: ByteRange,
    ) -> Result<Option<RangeRead>, StoreError> {
        // On the disk (a read racing a copy back finds it there): streamed from the file, so
        // a `bytes=0-` of a long recording is not read into memory first.
        let local = self
            .read_local(id, true, move |blobs, id| {
                let Some((mut file, meta)) = blobs.open_file(id)? else {
                    return Ok(None);
                };
                let span = range.resolve(meta.length);
                if let Some(span) = &span {
                    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(span.start))
                        .map_err(|e| StoreError::io(format!("reading blob {id}"), e))?;
                }
                Ok(Some((file, meta, span)))
            })
            .await?;
        if let Some((file, meta, span)) = local {
            let Some(span) = span else {
                return Ok(Some(RangeRead::Unsatisfiable(meta)));
            };
            let id = id.clone();
            let reader = tokio::io::AsyncReadExt::take(
                tokio::fs::File::from_std(file),
                span.end - span.start,
            );
            let body = tokio_util::io::ReaderStream::with_capacity(reader, FILE_CHUNK)
                .map(move |chunk| {
                    chunk.map_err(|e| StoreError::io(format!("reading blob {id}"), e))
                })
                .boxed();
            return Ok(Some(RangeRead::Part(BlobPart {
                meta,
                range: span,
                body,
            })));
        }
        match &self.shared.bucket {
            Some(bucket) => bucket.fetch_blob_range(id, range).await,
            None => Ok(None),
        }
    }

    /// Runs `read` of blob `id` on the disk's blob store, off the async threads. With
    /// `local_blob_limit`, a blob it found is marked as used if `counts_as_use` (reads of its
    /// bytes do; a look at its length does not), for the eviction order.
    async fn read_local<T: Send + 'static>(
        &self,
        id: &fabrik_core::BlobId,
        counts_as_use: bool,
        read: impl FnOnce(&BlobStore, &fabrik_core::BlobId) -> Result<Option<T>, StoreError>
        + Send
        + 'static,
    ) -> Result<Option<T>, StoreError> {
        let (blobs, lookup) = (self.blobs.clone(), id.clone());
        let touch = counts_as_use && self.evicts_blobs();
        tokio::task::spawn_blocking(move || {
            let found = read(&blobs, &lookup)?;
            if touch && found.is_some() {
                blobs.touch(&lookup);
            }
            Ok(found)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("blob read task: {e}")))?
    }

    /// Whether blobs leave the disk past `[store.objects] local_blob_limit`.
    fn evicts_blobs(&self) -> bool {
        self.shared.bucket.is_some() && self.shared.options.local_blob_limit.is_some()
    }

    /// Keeps the blobs on the disk within `local_blob_limit`: past it, removes the disk's
    /// copies of the least recently stored or read blobs that the bucket holds, until the rest
    /// fit. A blob whose rows are not persisted yet is not in the bucket and stays, so the
    /// disk can stay over the limit until the next persist. Nothing happens without a bucket
    /// or a limit. Evicted blobs are read back from the bucket by [`Store::fetch_blob_file`].
    ///
    /// Runs only in the maintenance loop, taking turns with the sweeps: a pass during a
    /// bucket sweep could evict a blob a new row names just after the sweep found it named by
    /// none, and the sweep would then delete the bucket's copy, the last one.
    pub(crate) async fn evict_blobs(&self) -> Result<EvictionReport, StoreError> {
        let mut report = EvictionReport::default();
        let (Some(limit), Some(claim)) = (
            self.shared.options.local_blob_limit,
            self.shared.bucket.as_ref(),
        ) else {
            return Ok(report);
        };
        let blobs = self.blobs.clone();
        let (mut local, unreadable) = tokio::task::spawn_blocking(move || blobs.inventory())
            .await
            .map_err(|e| StoreError::Internal(format!("blob inventory task: {e}")))??;
        report.errors += unreadable;
        report.local_bytes = local.iter().map(|blob| blob.bytes).sum();
        // Set now too: a pass that stops early (fenced, the bucket down) still says how full
        // the disk is.
        metrics::gauge!("fabrik_blob_local_bytes").set(report.local_bytes as f64);
        let mut left = report.local_bytes;
        // Once a restore elsewhere took the prefix over, its blobs are the new owner's to
        // delete, so the bucket may not keep what this disk would give up. A read-only node's
        // copies all came from the bucket: never the last one.
        let fenced = self.reader.is_none();
        if left > limit {
            if fenced {
                claim.check_still_ours().await?;
            }
            let mut fence_checked = std::time::Instant::now();
            // Least recently used first (ties by id, so a pass is repeatable).
            local.sort_unstable();
            for blob in local {
                if left <= limit {
                    break;
                }
                // A long pass looks again, so a restore elsewhere stops it within seconds.
                if fenced && fence_checked.elapsed() >= FENCE_RECHECK {
                    claim.check_still_ours().await?;
                    fence_checked = std::time::Instant::now();
                }
                match claim.blob_copy(&blob.id).await {
                    Ok(Some(copy)) if copy.is(&blob.id, blob.bytes) => {}
                    Ok(Some(copy)) => {
                        tracing::warn!(blob = %blob.id, bucket_bytes = copy.size, bucket_sha256 = copy.sha256.as_deref().unwrap_or("none"), disk_bytes = blob.bytes, "The bucket holds other bytes under a blob's name: the disk keeps its copy.");
                        report.errors += 1;
                        continue;
                    }
                    Ok(None) => {
                        report.kept += 1;
                        continue;
                    }
                    Err(e) => {
                        // The bucket is unreachable: the next pass tries again.
                        tracing::warn!(error = %e, "Blob eviction stopped.");
                        report.errors += 1;
                        break;
                    }
                }
                let (blobs, candidate) = (self.blobs.clone(), blob.clone());
                let evicted = tokio::task::spawn_blocking(move || blobs.evict(&candidate))
                    .await
                    .map_err(|e| StoreError::Internal(format!("blob eviction task: {e}")))?;
                match evicted {
                    Ok(true) => {
                        left -= blob.bytes;
                        report.evicted += 1;
                        report.bytes_evicted += blob.bytes;
                    }
                    Ok(false) => report.kept += 1,
                    Err(e) => {
                        tracing::warn!(blob = %blob.id, error = %e, "Blob eviction: skipped a blob.");
                        report.errors += 1;
                    }
                }
            }
        }
        report.local_bytes_left = left;
        metrics::gauge!("fabrik_blob_local_bytes").set(left as f64);
        metrics::counter!("fabrik_blobs_evicted_total").increment(report.evicted);
        metrics::counter!("fabrik_blob_bytes_evicted_total").increment(report.bytes_evicted);
        metrics::counter!("fabrik_blob_eviction_errors_total").increment(report.errors);
        if report.evicted > 0 || left > limit {
            tracing::info!(
                evicted = report.evicted,
                bytes = report.bytes_evicted,
                local_bytes = left,
                limit,
                kept = report.kept,
                errors = report.errors,
                "Blob eviction: least recently used copies the bucket holds left the disk."
            );
        }
        Ok(report)
    }

    /// The options the store runs with.
    pub fn options(&self) -> &StoreOptions {
        &self.shared.options
    }

    fn partition_ns(&self) -> i64 {
        i64::try_from(self.shared.options.partition.as_nanos())
            .unwrap_or(i64::MAX)
            .max(1)
    }

    /// Writes an InfluxDB line-protocol body: all lines or none.
    pub async fn write_lines(
        &self,
        body: &str,
        precision: Precision,
        source: SourceId,
    ) -> Result<WriteReport, StoreError> {
        self.check_writable()?;
        let raw_id = self.ids.next();
        let lineage = Lineage {
            source,
            raw_id,
            mapping_version: 0,
        };
        let mut builder = BatchBuilder::new(Timestamp::now().nanos(), lineage)
            .with_row_hint(estimated_lines(body));
        add_body(&mut builder, body, precision)?;
        let points = builder.rows();
        let chunks = builder.finish(&self.shared.catalog, self.partition_ns())?;
        let tables = rows_per_table(&chunks);
        let seq = self.commit(chunks).await?;
        metrics::counter!("fabrik_store_points_written_total").increment(points as u64);
        Ok(WriteReport {
            points,
            raw_id,
            seq,
            tables,
        })
    }

    /// Writes points (JSON samples, connector output): all or none. `location` prefixes the
    /// index in errors (`samples` → `samples[3]`).
    pub async fn write_points(
        &self,
        points: &[Point],
        lineage: Lineage,
        location: &str,
    ) -> Result<WriteReport, StoreError> {
        self.check_writable()?;
        let raw_id = lineage.raw_id;
        let mut builder = BatchBuilder::new(Timestamp::now().nanos(), lineage);
        for (i, point) in points.iter().enumerate() {
            builder.add_point(point, &format!("{location}[{i}]"))?;
        }
        let count = builder.rows();
        let chunks = builder.finish(&self.shared.catalog, self.partition_ns())?;
        let tables = rows_per_table(&chunks);
        let seq = self.commit(chunks).await?;
        metrics::counter!("fabrik_store_points_written_total").increment(count as u64);
        Ok(WriteReport {
            points: count,
            raw_id,
            seq,
            tables,
        })
    }

    /// Writes points Fabrik computed itself (inferences, KPIs, mirrored records), all or none,
    /// with `source` as their lineage and a fresh raw-message id: they stem from no one
    /// message, so there is no mapping either.
    pub async fn write_computed(
        &self,
        points: &[Point],
        source: &str,
        table: &str,
    ) -> Result<WriteReport, StoreError> {
        let lineage = Lineage {
            source: SourceId(source.to_owned()),
            raw_id: self.next_raw_id(),
            mapping_version: 0,
        };
        self.write_points(points, lineage, table).await
    }

    /// Writes groups of points that each carry their own lineage (one group per raw message,
    /// as connectors produce them) as one WAL record: all or none. Errors name the group and
    /// point as `location[group][point]`.
    pub async fn write_groups(
        &self,
        groups: &[(Lineage, Vec<Point>)],
        location: &str,
    ) -> Result<WriteReport, StoreError> {
        self.check_writable()?;
        let Some((first, _)) = groups.first() else {
            return Err(StoreError::InvalidPoint {
                location: location.to_owned(),
                reason: "nothing to write".into(),
            });
        };
        let raw_id = first.raw_id;
        let mut builder = BatchBuilder::new(Timestamp::now().nanos(), first.clone());
        for (g, (lineage, points)) in groups.iter().enumerate() {
            builder.set_lineage(lineage.clone());
            for (i, point) in points.iter().enumerate() {
                builder.add_point(point, &format!("{location}[{g}][{i}]"))?;
            }
        }
        let count = builder.rows();
        let chunks = builder.finish(&self.shared.catalog, self.partition_ns())?;
        // Connectors and the hub report their own tables (and most writes come this way).
        let tables = Vec::new();
        let seq = self.commit(chunks).await?;
        metrics::counter!("fabrik_store_points_written_total").increment(count as u64);
        Ok(WriteReport {
            points: count,
            raw_id,
            seq,
            tables,
        })
    }

    /// The sequence number of the last write applied: every record up to it is durable in
    /// the WAL and queryable.
    pub fn applied_seq(&self) -> u64 {
        *self.shared.applied.borrow()
    }

    /// Changes as writes are applied (the value is [`applied_seq`](Self::applied_seq)).
    pub fn watch_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.applied.subscribe()
    }

    /// Keeps WAL records after `after` past persistence (`None`: no hold), so a
    /// [`wal::WalFollower`] can still read them; the edge uplink moves it as the hub
    /// acknowledges. Takes effect at the next persistence.
    pub fn hold_wal(&self, after: Option<u64>) {
        self.shared.wal_hold.store(
            after.unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Release,
        );
    }

    /// The WAL directory (for a [`wal::WalFollower`]).
    pub fn wal_dir(&self) -> &Path {
        &self.wal_dir
    }

    /// Bytes of WAL segments on disk.
    pub fn wal_bytes(&self) -> u64 {
        wal::list_segments(&self.wal_dir)
            .map(|segments| {
                segments
                    .iter()
                    .filter_map(|(_, path)| std::fs::metadata(path).ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Writes Arrow batches another Fabrik stored (the hub's side of the uplink), each named
    /// by its table, as one WAL record: all or none. The batches are checked as
    /// [`batch::chunks_from_arrow`] says; `location` prefixes errors.
    pub async fn write_arrow(
        &self,
        batches: Vec<(String, RecordBatch)>,
        location: &str,
    ) -> Result<WriteReport, StoreError> {
        self.check_writable()?;
        let mut chunks = Vec::new();
        let mut points = 0;
        for (i, (table, batch)) in batches.into_iter().enumerate() {
            points += batch.num_rows();
            chunks.extend(batch::chunks_from_arrow(
                &self.shared.catalog,
                &table,
                batch,
                self.partition_ns(),
                &format!("{location}[{i}]"),
            )?);
        }
        if chunks.is_empty() {
            return Err(StoreError::Empty);
        }
        let tables = Vec::new();
        let seq = self.commit(chunks).await?;
        metrics::counter!("fabrik_store_points_written_total").increment(points as u64);
        Ok(WriteReport {
            points,
            raw_id: RawMessageId(0),
            seq,
            tables,
        })
    }

    /// A fresh raw-message id, for callers that stamp lineage themselves.
    pub fn next_raw_id(&self) -> RawMessageId {
        self.ids.next()
    }

    fn wal_sender(&self) -> Result<mpsc::Sender<WalCommand>, StoreError> {
        self.wal_tx.read().clone().ok_or(StoreError::ShuttingDown)
    }

    async fn commit(&self, chunks: Vec<WriteChunk>) -> Result<u64, StoreError> {
        self.room_for_writes().await?;
        let payload = wal::encode(&chunks)?;
        let (reply, answer) = oneshot::channel();
        self.wal_sender()?
            .send(WalCommand::Append {
                payload,
                chunks,
                reply,
            })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        answer.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Waits while more acknowledged rows than [`Shared::backlog_limit`] wait in memory for
    /// persisting: a bulk load faster than the disk is slowed to its pace rather than
    /// refused. While persisting fails, the write is refused at once (507: memory would
    /// otherwise grow until the process is killed); when it is only behind and stays so for
    /// [`BACKLOG_WAIT`], the write is refused as busy (503), to be sent again.
    async fn room_for_writes(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let deadline = tokio::time::Instant::now() + BACKLOG_WAIT;
        loop {
            // Registered before the check, so a persist finishing in between is not missed.
            let persisted = self.shared.persisted.notified();
            tokio::pin!(persisted);
            persisted.as_mut().enable();
            let frozen = self.shared.frozen_bytes.load(Relaxed);
            let waiting = frozen + self.shared.buffer_bytes.load(Relaxed);
            if frozen == 0 || waiting <= self.shared.backlog_limit() {
                return Ok(());
            }
            if self.shared.persist_failing.load(Relaxed) {
                return Err(StoreError::InsufficientStorage(format!(
                    "{} MiB of acknowledged rows wait in memory for persisting, which is \
                     failing (the log says why: a full disk, an unreachable object storage); \
                     writes are taken again once it catches up",
                    waiting >> 20
                )));
            }
            if tokio::time::timeout_at(deadline, persisted).await.is_err() {
                return Err(StoreError::Busy(format!(
                    "{} MiB of acknowledged rows still wait in memory for persisting after \
                     {BACKLOG_WAIT:?}; send the write again",
                    waiting >> 20
                )));
            }
        }
    }

    /// Runs SQL (queries only: no DDL, DML or `SET`). Cancelled after the query timeout.
    pub async fn query(&self, sql: &str) -> Result<QueryOutput, StoreError> {
        match self.run_query(sql).await {
            // On a read-only node, a segment gone is most likely one the owner compacted away
            // after this node last read its manifest (decision 0079): read it again and retry
            // once; a segment still missing then is lost data, as on the owner.
            Err(StoreError::MissingSegment(why)) if self.reader.is_some() => {
                tracing::info!(reason = %why, "A query found a segment gone: reading the owner's manifest again.");
                metrics::counter!("fabrik_store_reader_query_retries_total").increment(1);
                self.refresh().await?;
                self.run_query(sql).await
            }
            result => result,
        }
    }

    async fn run_query(&self, sql: &str) -> Result<QueryOutput, StoreError> {
        let timeout = self.shared.options.query_timeout;
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_target_partitions(self.shared.options.query_threads.max(1));
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(self.runtime_env.clone())
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(yielding_joins::YieldingJoins))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.add_optimizer_rule(Arc::new(last_rows::LastRowsRule));
        for table in self.shared.catalog.queryable() {
            let provider = FabrikTable {
                name: table.name.clone(),
                schema: table.arrow(),
                shared: self.shared.clone(),
                last_rows: None,
            };
            ctx.register_table(
                datafusion::common::TableReference::bare(table.name.as_ref()),
                Arc::new(provider),
            )
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        }
        let sql = sql.to_owned();
        let bucket = self
            .shared
            .bucket
            .as_ref()
            .map(|claim| claim.url().to_owned());
        let query_error = move |e| query_error(e, bucket.as_deref());
        let Some(pool) = self.query_pool.runtime.as_ref() else {
            return Err(StoreError::ShuttingDown);
        };
        let running = self.query_pool.running.clone();
        // Aborted when whoever waits for it goes away (an HTTP client that disconnected, a
        // rollup told to stop, the timeout): dropping a plain `JoinHandle` only detaches the
        // task, which would keep the pool's cores busy on an answer nobody reads.
        let task = tokio_util::task::AbortOnDropHandle::new(pool.spawn(async move {
            let _running = RunningQuery::new(running);
            let options = SQLOptions::new()
                .with_allow_ddl(false)
                .with_allow_dml(false)
                .with_allow_statements(false);
            let df = ctx
                .sql_with_options(&sql, options)
                .await
                .map_err(&query_error)?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let mut stream = df.execute_stream().await.map_err(&query_error)?;
            let mut batches = Vec::new();
            while let Some(batch) = stream.next().await {
                batches.push(batch.map_err(&query_error)?);
            }
            Ok::<_, StoreError>(QueryOutput { schema, batches })
        }));
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(StoreError::Internal(format!("query task failed: {join}"))),
            Err(_) => {
                metrics::counter!("fabrik_query_timeouts_total").increment(1);
                Err(StoreError::QueryTimeout(timeout))
            }
        }
    }

    /// Queries running on the query pool now: a query whose caller stopped waiting (timed
    /// out, disconnected, told to stop) no longer counts once its task is aborted.
    pub fn running_queries(&self) -> usize {
        self.query_pool.running.load(Ordering::Relaxed)
    }

    /// Rows and bytes in the live buffer.
    pub fn buffer_stats(&self) -> (usize, usize) {
        let b = self.shared.buffer.lock();
        (b.rows, b.bytes)
    }

    /// Whether queries can read `table` (it exists once rows of it have been applied); a
    /// lookup, where [`Store::tables`] lists every table with its columns.
    pub fn has_table(&self, table: &str) -> bool {
        self.shared.catalog.is_queryable(table)
    }

    /// Whether queries of `table` can name `column` (a table's columns are those its rows
    /// have brought so far; naming another is an error).
    pub fn has_column(&self, table: &str, column: &str) -> bool {
        self.has_table(table)
            && self
                .shared
                .catalog
                .get(table)
                .is_some_and(|schema| schema.column(column).is_some())
    }

    /// The Arrow schema of `table` as queries read it, each column's kind in its field
    /// metadata (what [`batch::chunks_from_arrow`] checks); `None` for a table queries cannot
    /// read.
    pub fn table_schema(&self, table: &str) -> Option<SchemaRef> {
        if !self.has_table(table) {
            return None;
        }
        self.shared.catalog.get(table).map(|t| t.arrow())
    }

    /// Where the segments are, who owns them, what is persisted and what is buffered.
    pub fn status(&self) -> StoreStatus {
        let (persisted_seq, tables, buffered) = {
            let state = self.shared.state.read();
            let tables = state
                .manifest
                .tables
                .iter()
                .map(|(name, table)| TableSegments {
                    name: name.clone(),
                    segments: table.segments.len(),
                    rows: table.segments.iter().map(|s| s.rows).sum(),
                    bytes: table.segments.iter().map(|s| s.bytes).sum(),
                    newest: table.segments.iter().map(|s| s.max_time).max(),
                })
                .collect();
            // The live buffer under the same guard (state, then buffer, as a rotation takes
            // them): rows moving from one to the other are counted once, not never.
            let live = self.shared.buffer.lock();
            let buffered: (usize, usize) = state
                .frozen
                .iter()
                .fold((live.rows, live.bytes), |(r, b), f| {
                    (r + f.buffer.rows, b + f.buffer.bytes)
                });
            (state.manifest.persisted_seq, tables, buffered)
        };
        let bucket = self.shared.bucket.as_ref();
        let (store_id, read_at, refresh_interval_s) = match &self.reader {
            Some(reader) => (
                Some(reader.owner()),
                Some(reader.read_at.load(std::sync::atomic::Ordering::Relaxed)),
                Some(reader.every.as_secs_f64()),
            ),
            None => (bucket.map(|b| b.store_id().to_owned()), None, None),
        };
        StoreStatus {
            role: if self.reader.is_some() {
                "read_only"
            } else {
                "owner"
            },
            bucket: bucket.map(|b| b.url().to_owned()),
            store_id,
            persisted_seq,
            buffered_rows: buffered.0,
            buffered_bytes: buffered.1,
            tables,
            read_at,
            refresh_interval_s,
        }
    }

    /// Tables and their columns.
    pub fn tables(&self) -> Vec<TableInfo> {
        let mut out: Vec<TableInfo> = self
            .shared
            .catalog
            .queryable()
            .iter()
            .map(|t| TableInfo {
                name: t.name.to_string(),
                tags: t.tags().map(str::to_owned).collect(),
                fields: t
                    .columns
                    .iter()
                    .filter_map(|c| match c.kind {
                        ColumnKind::Field(ft) => Some((c.name.clone(), ft.name().to_owned())),
                        _ => None,
                    })
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// An error of the segment store: in a bucket, the bucket's (503, with its reason).
    fn segment_error(&self, doing: &str, path: &str, e: object_store::Error) -> StoreError {
        match &self.shared.bucket {
            Some(bucket) => bucket.error(format!("{doing} segment {path}: {e}")),
            None => StoreError::Internal(format!("{doing} segment {path}: {e}")),
        }
    }

    /// Writes everything buffered to Parquet segments and drops the WAL it covered.
    pub async fn persist(&self) -> Result<(), StoreError> {
        let persisted = self.persist_frozen().await;
        // A failure refuses the writes waiting for room (and those after), a success lets
        // them in.
        self.shared
            .persist_failing
            .store(persisted.is_err(), std::sync::atomic::Ordering::Relaxed);
        self.shared.persisted.notify_waiters();
        persisted
    }

    async fn persist_frozen(&self) -> Result<(), StoreError> {
        self.check_writable()?;
        let _maintenance = self.maintenance.lock().await;
        let buffered = !self.shared.buffer.lock().is_empty();
        if buffered {
            let (reply, answer) = oneshot::channel();
            self.wal_sender()?
                .send(WalCommand::Rotate { reply })
                .await
                .map_err(|_| StoreError::ShuttingDown)?;
            answer.await.map_err(|_| StoreError::ShuttingDown)??;
        }
        let (frozen, mut manifest) = {
            let state = self.shared.state.read();
            (state.frozen.clone(), state.manifest.clone())
        };
        if frozen.is_empty() {
            // Nothing new, but a moved uplink hold may have freed segments.
            self.delete_persisted_wal(manifest.persisted_seq).await?;
            return Ok(());
        }
        if let Some(bucket) = &self.shared.bucket {
            bucket.check_still_ours().await?;
        }
        let started = Instant::now();
        let mut written = 0usize;
        for f in &frozen {
            for table in f.buffer.table_names() {
                let Some(schema) = self.shared.catalog.get(&table) else {
                    continue;
                };
                // In a bucket, the blobs a listing names go there before the listing does.
                let lists_blobs = self.shared.bucket.is_some() && &*table == BLOBS_TABLE;
                for part in f.buffer.table(&table) {
                    let arrow = schema.arrow();
                    let encoded = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                        let Some(batch) = segments::sort_dedup(&arrow, &part.batches)? else {
                            return Ok(None);
                        };
                        let (min_time, max_time) = segments::time_range(&batch)?;
                        let rows = batch.num_rows() as u64;
                        let listed = if lists_blobs {
                            listed_blob_ids(&batch)?
                        } else {
                            Vec::new()
                        };
                        Ok(Some((
                            segments::encode_parquet(&batch)?,
                            part.partition,
                            min_time,
                            max_time,
                            rows,
                            listed,
                        )))
                    })
                    .await
                    .map_err(|e| StoreError::Internal(format!("persist task: {e}")))??;
                    let Some((bytes, partition, min_time, max_time, rows, listed)) = encoded else {
                        continue;
                    };
                    if let Some(bucket) = &self.shared.bucket {
                        let mut copied = 0u64;
                        for id in &listed {
                            copied += u64::from(bucket.upload_blob(id, &self.blobs).await?);
                        }
                        metrics::counter!("fabrik_blobs_uploaded_total").increment(copied);
                    }
                    let file_id = manifest.next_file_id;
                    manifest.next_file_id += 1;
                    let path = format!("t{}/p{}/{:016}.parquet", schema.id, partition, file_id);
                    let size = bytes.len() as u64;
                    self.shared
                        .objects
                        .put(&object_store::path::Path::from(path.as_str()), bytes.into())
                        .await
                        .map_err(|e| self.segment_error("writing", &path, e))?;
                    manifest
                        .tables
                        .entry(table.to_string())
                        .or_default()
                        .segments
                        .push(SegmentMeta {
                            path,
                            partition,
                            min_time,
                            max_time,
                            rows,
                            bytes: size,
                            order: f.last_seq,
                        });
                    written += 1;
                }
            }
            manifest.persisted_seq = manifest.persisted_seq.max(f.last_seq);
        }
        self.refresh_manifest_tables(&mut manifest);
        self.save_manifest(manifest.clone()).await?;
        if let Some(bucket) = &self.shared.bucket {
            bucket.copy_manifest(&manifest).await;
        }
        {
            let mut state = self.shared.state.write();
            state.manifest = manifest.clone();
            state
                .frozen
                .retain(|x| !frozen.iter().any(|f| Arc::ptr_eq(f, x)));
            let left: usize = state.frozen.iter().map(|f| f.buffer.bytes).sum();
            self.shared
                .frozen_bytes
                .store(left as u64, std::sync::atomic::Ordering::Relaxed);
        }
        if written > 0 && self.evicts_blobs() {
            self.shared.evict_wanted.notify_one();
        }
        let persisted = manifest.persisted_seq;
        let removed = self.delete_persisted_wal(persisted).await?;
        metrics::counter!("fabrik_store_segments_written_total").increment(written as u64);
        tracing::info!(
            segments = written,
            persisted_seq = persisted,
            wal_segments_removed = removed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Buffer persisted."
        );
        Ok(())
    }

    /// Deletes the WAL segments wholly persisted, except those the uplink's hold keeps.
    async fn delete_persisted_wal(&self, persisted: u64) -> Result<usize, StoreError> {
        let wal_dir = self.wal_dir.clone();
        let hold = self
            .shared
            .wal_hold
            .load(std::sync::atomic::Ordering::Acquire);
        let deletable = persisted.min(hold);
        tokio::task::spawn_blocking(move || wal::delete_persisted(&wal_dir, deletable))
            .await
            .map_err(|e| StoreError::Internal(format!("WAL cleanup task: {e}")))?
    }

    fn refresh_manifest_tables(&self, manifest: &mut Manifest) {
        for schema in self.shared.catalog.all() {
            let entry = manifest.tables.entry(schema.name.to_string()).or_default();
            entry.id = schema.id;
            entry.columns = schema.user_columns();
        }
    }

    async fn save_manifest(&self, manifest: Manifest) -> Result<(), StoreError> {
        let dir = self.shared.options.data_dir.clone();
        tokio::task::spawn_blocking(move || manifest.save(&dir))
            .await
            .map_err(|e| StoreError::Internal(format!("manifest task: {e}")))?
    }

    /// Merges partitions holding several segments into one, drops data past retention, and
    /// deletes replaced segments once no running query can still be reading them.
    pub async fn compact(&self) -> Result<(), StoreError> {
        self.check_writable()?;
        let mut pending_deletes = self.maintenance.lock().await;
        if let Some(bucket) = &self.shared.bucket {
            // A store whose prefix a restore took over neither merges nor deletes there.
            bucket.check_still_ours().await?;
        }
        let grace = (self.shared.options.query_timeout * 2).max(Duration::from_secs(60));
        let now = Instant::now();
        // The bucket's manifest copy may still name replaced segments until it is current.
        let copy_current = self
            .shared
            .bucket
            .as_ref()
            .is_none_or(|bucket| bucket.copy_is_current());
        let mut still_pending = Vec::new();
        for (since, path) in pending_deletes.drain(..) {
            if copy_current && now.duration_since(since) >= grace {
                if let Err(e) = self.shared.objects.delete(&path).await {
                    tracing::warn!(path = %path, error = %e, "Could not delete a replaced segment.");
                }
            } else {
                still_pending.push((since, path));
            }
        }
        *pending_deletes = still_pending;

        let mut manifest = self.shared.state.read().manifest.clone();
        let mut obsolete = Vec::new();
        let mut merged = 0usize;
        let tables: Vec<String> = manifest.tables.keys().cloned().collect();
        for table in tables {
            let cutoff = self.shared.retention_cutoff(&table);
            let Some(schema) = self.shared.catalog.get(&table) else {
                continue;
            };
            let Some(entry) = manifest.tables.get_mut(&table) else {
                continue;
            };
            if let Some(cutoff) = cutoff {
                entry.segments.retain(|s| {
                    let expired = s.max_time < cutoff;
                    if expired {
                        obsolete.push(s.path.clone());
                    }
                    !expired
                });
            }
            let mut by_partition: BTreeMap<i64, Vec<SegmentMeta>> = BTreeMap::new();
            for s in &entry.segments {
                by_partition.entry(s.partition).or_default().push(s.clone());
            }
            for (partition, mut group) in by_partition {
                let straddles = cutoff.is_some_and(|c| group.iter().any(|s| s.min_time < c));
                if group.len() < 2 && !straddles {
                    continue;
                }
                group.sort_by_key(|s| s.order);
                let mut batches = Vec::new();
                for s in &group {
                    let bytes = self
                        .shared
                        .objects
                        .get(&object_store::path::Path::from(s.path.as_str()))
                        .await
                        .map_err(|e| self.segment_error("reading", &s.path, e))?
                        .bytes()
                        .await
                        .map_err(|e| self.segment_error("reading", &s.path, e))?;
                    batches.extend(segments::decode_parquet(bytes)?);
                }
                let arrow = schema.arrow();
                let encoded = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                    let Some(mut batch) = segments::sort_dedup(&arrow, &batches)? else {
                        return Ok(None);
                    };
                    if let Some(cutoff) = cutoff {
                        let times = batch::time_column(&batch)?;
                        let keep = datafusion::arrow::array::BooleanArray::from_iter(
                            times.iter().map(|&t| Some(t >= cutoff)),
                        );
                        batch = datafusion::arrow::compute::filter_record_batch(&batch, &keep)?;
                    }
                    if batch.num_rows() == 0 {
                        return Ok(None);
                    }
                    let (min_time, max_time) = segments::time_range(&batch)?;
                    let rows = batch.num_rows() as u64;
                    Ok(Some((
                        segments::encode_parquet(&batch)?,
                        min_time,
                        max_time,
                        rows,
                    )))
                })
                .await
                .map_err(|e| StoreError::Internal(format!("compaction task: {e}")))??;
                let order = group.iter().map(|s| s.order).max().unwrap_or(0);
                entry
                    .segments
                    .retain(|s| !group.iter().any(|g| g.path == s.path));
                obsolete.extend(group.iter().map(|s| s.path.clone()));
                if let Some((bytes, min_time, max_time, rows)) = encoded {
                    let file_id = manifest.next_file_id;
                    manifest.next_file_id += 1;
                    let path = format!("t{}/p{}/{:016}.parquet", schema.id, partition, file_id);
                    let size = bytes.len() as u64;
                    self.shared
                        .objects
                        .put(&object_store::path::Path::from(path.as_str()), bytes.into())
                        .await
                        .map_err(|e| self.segment_error("writing", &path, e))?;
                    entry.segments.push(SegmentMeta {
                        path,
                        partition,
                        min_time,
                        max_time,
                        rows,
                        bytes: size,
                        order,
                    });
                }
                merged += 1;
            }
        }
        if obsolete.is_empty() {
            return Ok(());
        }
        self.save_manifest(manifest.clone()).await?;
        if let Some(bucket) = &self.shared.bucket {
            bucket.copy_manifest(&manifest).await;
        }
        {
            // Segments persisted meanwhile are impossible: persist holds the same lock.
            self.shared.state.write().manifest = manifest;
        }
        pending_deletes.extend(
            obsolete
                .into_iter()
                .map(|p| (now, object_store::path::Path::from(p))),
        );
        metrics::counter!("fabrik_store_compactions_total").increment(merged as u64);
        tracing::info!(partitions = merged, "Segments compacted.");
        Ok(())
    }

    /// Deletes the blobs no live row names, once they were last stored at least
    /// `blob_min_age` ago. A blob is live while a row of [`BLOBS_TABLE`] lists it and the
    /// retention of the table naming it (the listing's `table` tag) has not passed: blobs
    /// expire with the rows that name them. The store is swept a sixteenth at a time, so only
    /// that share of the live ids is held at once.
    pub async fn sweep_blobs(&self) -> Result<SweepReport, StoreError> {
        self.check_writable()?;
        let mut report = SweepReport::default();
        let live_condition = self.live_listing_condition();
        let mut bucket = self.shared.bucket.as_ref();
        for digit in 0..16u32 {
            let Some(shard) = char::from_digit(digit, 16) else {
                continue;
            };
            let mut live = std::collections::HashSet::new();
            if self.has_table(BLOBS_TABLE) {
                let listed = self
                    .query(&format!(
                        "SELECT DISTINCT id FROM {BLOBS_TABLE} \
                         WHERE starts_with(id, 'sha256:{shard}') AND ({live_condition})"
                    ))
                    .await?;
                for batch in &listed.batches {
                    live.extend(blob_id_texts(batch.column(0))?);
                }
            }
            let blobs = self.blobs.clone();
            let min_age = self.shared.options.blob_min_age;
            let (swept, live) = tokio::task::spawn_blocking(move || {
                blobs
                    .sweep(shard, &live, min_age)
                    .map(|swept| (swept, live))
            })
            .await
            .map_err(|e| StoreError::Internal(format!("blob sweep task: {e}")))??;
            report += swept;
            let Some(claim) = bucket else {
                continue;
            };
            let missing = {
                let _maintenance = self.maintenance.lock().await;
                // Checked for each shard, under the lock: once a restore took the prefix over,
                // the blobs there are the new owner's to judge.
                match claim.check_still_ours().await {
                    Ok(()) => {
                        let (swept, missing) =
                            claim.sweep_blobs(shard, &live, min_age, &self.blobs).await;
                        report += swept;
                        missing
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Blob sweep: the bucket is left alone.");
                        report.errors += 1;
                        None
                    }
                }
            };
            let Some(missing) = missing else {
                bucket = None;
                continue;
            };
            for id in &missing {
                match claim.upload_blob(id, &self.blobs).await {
                    Ok(copied) => report.bucket_uploaded += u64::from(copied),
                    Err(e) => {
                        tracing::warn!(blob = %id, error = %e, "Blob sweep: could not copy a blob to the bucket.");
                        report.errors += 1;
                    }
                }
            }
        }
        metrics::counter!("fabrik_blobs_deleted_total").increment(report.deleted);
        metrics::counter!("fabrik_blobs_bucket_deleted_total").increment(report.bucket_deleted);
        metrics::counter!("fabrik_blobs_uploaded_total").increment(report.bucket_uploaded);
        metrics::counter!("fabrik_blob_bytes_deleted_total").increment(report.bytes_deleted);
        metrics::counter!("fabrik_blob_sweep_errors_total").increment(report.errors);
        if report.deleted
            + report.leftovers
            + report.bucket_deleted
            + report.bucket_uploaded
            + report.errors
            > 0
        {
            tracing::info!(
                deleted = report.deleted,
                bytes = report.bytes_deleted,
                bucket_deleted = report.bucket_deleted,
                bucket_uploaded = report.bucket_uploaded,
                bucket_bytes = report.bucket_bytes_deleted,
                leftovers = report.leftovers,
                kept = report.kept,
                errors = report.errors,
                "Blob sweep: blobs no live row names deleted, missing copies made."
            );
        }
        Ok(report)
    }

    /// SQL over [`BLOBS_TABLE`]: the listing row is within its naming table's retention.
    fn live_listing_condition(&self) -> String {
        let within = |table: &str| match self.shared.retention_cutoff(table) {
            Some(cutoff) => format!("time >= to_timestamp_nanos({cutoff})"),
            None => "true".to_owned(),
        };
        let mut condition = String::from("CASE \"table\"");
        for table in self.shared.options.table_retention.keys() {
            condition.push_str(&format!(
                " WHEN '{}' THEN {}",
                table.replace('\'', "''"),
                within(table)
            ));
        }
        // Tables without retention of their own have the default one.
        let default = match self.shared.options.retention {
            Some(keep) => {
                let keep = i64::try_from(keep.as_nanos()).unwrap_or(i64::MAX);
                let cutoff = Timestamp::now().nanos().saturating_sub(keep);
                format!("time >= to_timestamp_nanos({cutoff})")
            }
            None => "true".to_owned(),
        };
        condition.push_str(&format!(" ELSE {default} END"));
        condition
    }

    /// Runs persistence, compaction, the blob sweep and the blob eviction (after each persist
    /// and sweep) until `stop` is cancelled. Sweep and eviction run beside the other two, so
    /// their queries and bucket requests never hold up a flush.
    pub async fn run_background(self: Arc<Self>, stop: CancellationToken) {
        if let Some(reader) = &self.reader {
            return self.clone().follow(reader.every, stop).await;
        }
        let mut flush = tokio::time::interval(self.shared.options.flush_interval);
        let mut compaction = tokio::time::interval(self.shared.options.compaction_interval);
        let mut blob_sweep = tokio::time::interval(self.shared.options.blob_sweep_interval);
        blob_sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        flush.tick().await;
        compaction.tick().await;
        blob_sweep.tick().await;
        let maintenance = async {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = flush.tick() => self.log_failure("persist", self.persist().await),
                    () = self.shared.flush_wanted.notified() => self.log_failure("persist", self.persist().await),
                    _ = compaction.tick() => self.log_failure("compaction", self.compact().await),
                }
            }
        };
        let sweeps = async {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = blob_sweep.tick() => {
                        tokio::select! {
                            () = stop.cancelled() => break,
                            result = self.sweep_blobs() => {
                                self.log_failure("blob sweep", result.map(|_| ()));
                            }
                        }
                        // Also after a sweep: a pass that stopped at an unreachable bucket
                        // is tried again, and blobs read back since are counted.
                        if self.evicts_blobs() {
                            self.shared.evict_wanted.notify_one();
                        }
                    }
                    () = self.shared.evict_wanted.notified() => {
                        tokio::select! {
                            () = stop.cancelled() => break,
                            result = self.evict_blobs() => {
                                self.log_failure("blob eviction", result.map(|_| ()));
                            }
                        }
                    }
                }
            }
        };
        tokio::join!(maintenance, sweeps);
    }

    /// A read-only store's background work: reads the owner's manifest again every `every`,
    /// and keeps the blobs read back from the bucket within `local_blob_limit`.
    async fn follow(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut refresh = tokio::time::interval(every);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = refresh.tick() => {
                    let refreshed = tokio::select! {
                        () = stop.cancelled() => break,
                        refreshed = self.refresh() => refreshed,
                    };
                    self.log_failure("manifest refresh", refreshed.map(drop));
                }
                () = self.shared.evict_wanted.notified() => {
                    let evicted = tokio::select! {
                        () = stop.cancelled() => break,
                        evicted = self.evict_blobs() => evicted,
                    };
                    self.log_failure("blob eviction", evicted.map(drop));
                }
            }
        }
    }

    fn log_failure(&self, what: &str, result: Result<(), StoreError>) {
        if let Err(e) = result {
            tracing::error!(task = what, error = %e, "Store maintenance failed; will retry.");
        }
    }

    /// Stops taking writes, lets the WAL thread finish the ones in flight, and waits for it.
    pub async fn close(&self) {
        self.wal_tx.write().take();
        let handle = self.wal_thread.lock().take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

/// The texts of a column of blob ids (a dictionary or plain string column).
fn blob_id_texts(column: &datafusion::arrow::array::ArrayRef) -> Result<Vec<String>, StoreError> {
    let ids =
        datafusion::arrow::compute::cast(column, &datafusion::arrow::datatypes::DataType::Utf8)?;
    let ids = ids
        .as_any()
        .downcast_ref::<datafusion::arrow::array::StringArray>()
        .ok_or_else(|| StoreError::Internal("blob ids are not text".into()))?;
    Ok(ids.iter().flatten().map(str::to_owned).collect())
}

/// The blob ids a batch of [`BLOBS_TABLE`] lists (its `id` column).
fn listed_blob_ids(
    batch: &datafusion::arrow::record_batch::RecordBatch,
) -> Result<Vec<fabrik_core::BlobId>, StoreError> {
    let Some(column) = batch.column_by_name("id") else {
        return Ok(Vec::new());
    };
    let mut listed: Vec<fabrik_core::BlobId> = blob_id_texts(column)?
        .iter()
        .filter_map(|id| fabrik_core::BlobId::parse(id).ok())
        .collect();
    listed.sort();
    listed.dedup();
    Ok(listed)
}

/// What a failed query is: the user's SQL (400), the bucket holding the segments (503, as it
/// is for writes), or the store itself (500).
fn query_error(e: datafusion::error::DataFusionError, bucket: Option<&str>) -> StoreError {
    use datafusion::error::DataFusionError as E;
    // The planner and the scans wrap their errors (diagnostics, context, shared between
    // partitions); the cause is the root.
    let root = e.find_root();
    if let E::Plan(message) = root
        && let Some(explained) = explain_missing_table(message)
    {
        return StoreError::Query(explained);
    }
    let from_the_bucket = |url: &str| StoreError::ObjectStorage {
        url: url.to_owned(),
        reason: format!("reading segments: {root}"),
    };
    // Parquet's reader wraps the object store's error (`External`) when it reads column
    // chunks: the cause is down the chain from the root.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(root);
    while let Some(error) = cause {
        if let Some(store_error) = error.downcast_ref::<object_store::Error>() {
            let own_disk = matches!(
                store_error,
                object_store::Error::Generic { store, .. } if *store == segment_cache::CACHE_STORE
            );
            // A segment the manifest lists but the bucket lacks is lost data, not an outage
            // (or, on a read-only node, one the owner compacted away since the last refresh).
            let lost = matches!(store_error, object_store::Error::NotFound { .. });
            return match bucket {
                _ if lost && !own_disk => StoreError::MissingSegment(e.to_string()),
                Some(url) if !own_disk => from_the_bucket(url),
                _ => StoreError::Internal(e.to_string()),
            };
        }
        cause = error.source();
    }
    match (root, bucket) {
        // DataFusion's Parquet reader keeps only the text of the object store's error when it
        // fetches a footer, so that text is all there is to tell an outage by.
        (E::ParquetError(cause), Some(url))
            if {
                let text = cause.to_string();
                text.contains("Object Store error")
                    && !text.contains(" not found: ")
                    && !text.contains(segment_cache::CACHE_STORE)
            } =>
        {
            from_the_bucket(url)
        }
        (E::ParquetError(cause), _)
            if {
                let text = cause.to_string();
                text.contains("Object Store error")
                    && text.contains(" not found: ")
                    && !text.contains(segment_cache::CACHE_STORE)
            } =>
        {
            StoreError::MissingSegment(e.to_string())
        }
        (E::ObjectStore(_) | E::IoError(_) | E::ParquetError(_) | E::Internal(_), _) => {
            StoreError::Internal(e.to_string())
        }
        _ => StoreError::Query(e.to_string()),
    }
}

/// DataFusion says "table 'datafusion.public.pump' not found", naming its internal catalog
/// and schema; a table here exists once rows have been written to it, which is what a user
/// asking for it before its first write needs to know.
fn explain_missing_table(message: &str) -> Option<String> {
    let name = message
        .strip_prefix("table '")?
        .strip_suffix("' not found")?;
    let name = name.strip_prefix("datafusion.public.").unwrap_or(name);
    Some(format!(
        "table `{name}` not found: a table exists once rows have been written to it \
         (GET /api/v1/tables lists them)"
    ))
}

async fn sweep_orphan_segments(
    objects: &Objects,
    manifest: &Manifest,
    sweep: objects::Sweep,
) -> Result<(), StoreError> {
    if sweep == objects::Sweep::Skip {
        return Ok(());
    }
    let known: std::collections::HashSet<&str> = manifest
        .tables
        .values()
        .flat_map(|t| t.segments.iter().map(|s| s.path.as_str()))
        .collect();
    let mut listing = objects.list(None);
    let mut orphans = Vec::new();
    while let Some(meta) = listing.next().await {
        let meta = meta?;
        if !known.contains(meta.location.as_ref()) {
            orphans.push(meta.location);
        }
    }
    if sweep == objects::Sweep::Report {
        if let Some(first) = orphans.first() {
            tracing::warn!(count = orphans.len(), first = %first, "Objects under the segments prefix that the manifest does not list were left in place: an interrupted persist's, or segments of a newer copy of this data directory (a restored snapshot, a cloned machine); delete them by hand once you know which.");
        }
        return Ok(());
    }
    for path in orphans {
        tracing::info!(path = %path, "Removing a segment the manifest does not list (left by an interrupted persist or compaction).");
        objects.delete(&path).await?;
    }
    Ok(())
}

/// xorshift64 reduced below a bound: deterministic test inputs without a dependency.
#[cfg(test)]
pub(crate) fn test_noise(mut state: u64) -> impl FnMut(u64) -> u64 {
    move |below| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabrik_core::{RawMessageId, SourceId};

    fn build(body: &str) -> Result<Vec<WriteChunk>, StoreError> {
        let mut builder = BatchBuilder::new(7, lineage());
        add_body(&mut builder, body, Precision::Ns)?;
        builder.finish(&Catalog::default(), i64::MAX)
    }

    #[test]
    fn a_query_failing_on_the_bucket_is_the_buckets_fault_not_the_users() {
        use datafusion::error::DataFusionError as E;
        use datafusion::parquet::errors::ParquetError;
        // A scan's error as DataFusion hands it over: wrapped, shared between partitions.
        let chunk_of = |e: E| E::Shared(Arc::new(E::Context("scanning".into(), Box::new(e))));
        let footer = |text: &str| {
            E::Shared(Arc::new(E::ParquetError(Box::new(ParquetError::General(
                format!("Failed to fetch metadata for file t1/p0/1.parquet: {text}"),
            )))))
        };
        let outage = "Object Store error: Generic S3 error: Error performing GET";
        let bucket = Some("s3://plant/line-1");
        let e = query_error(footer(outage), bucket);
        assert_eq!(e.http_status(), 503, "{e}");
        assert!(e.to_string().contains("s3://plant/line-1"), "{e}");
        // On the local disk, or a segment missing from the bucket: the store's fault.
        assert_eq!(query_error(footer(outage), None).http_status(), 500);
        // A read-only node retries these after reading the owner's manifest again.
        let missing = "Object Store error: Object at location t1/p0/1.parquet not found: 404";
        let e = query_error(footer(missing), bucket);
        assert!(matches!(e, StoreError::MissingSegment(_)), "{e:?}");
        assert_eq!(e.http_status(), 500);
        let lost = || {
            E::ObjectStore(Box::new(object_store::Error::NotFound {
                path: "t1/p0/1.parquet".into(),
                source: "gone".into(),
            }))
        };
        let e = query_error(lost(), bucket);
        assert!(matches!(e, StoreError::MissingSegment(_)), "{e:?}");
        assert_eq!(e.http_status(), 500);
        assert!(matches!(
            query_error(chunk_of(lost()), None),
            StoreError::MissingSegment(_)
        ));
        // A column chunk's read keeps the object store's error as the Parquet error's source.
        let chunk = |store_error: object_store::Error| {
            E::Shared(Arc::new(E::ParquetError(Box::new(ParquetError::External(
                Box::new(store_error),
            )))))
        };
        let unreachable = object_store::Error::Generic {
            store: "S3",
            source: "error sending request".into(),
        };
        assert_eq!(query_error(chunk(unreachable), bucket).http_status(), 503);
        // The cache's own disk failing is not the bucket's fault.
        let own_disk = object_store::Error::Generic {
            store: segment_cache::CACHE_STORE,
            source: "disk full".into(),
        };
        assert_eq!(query_error(chunk(own_disk), bucket).http_status(), 500);
        // The user's SQL stays the user's.
        let plan = E::Plan("table 'datafusion.public.pump' not found".into());
        let e = query_error(plan, bucket);
        assert_eq!(e.http_status(), 400);
        assert!(e.to_string().contains("table `pump` not found"), "{e}");
    }

    /// The series-key cache is per thread and outlives a request: the second identical body
    /// takes the cached path for every line and must build the very same rows.
    #[test]
    fn cached_series_build_the_same_rows_as_parsed_ones() {
        let body = "m,host=a,dc=x v=1,s=\"q\" 10\nm,dc=x,host=a v=2 20\nn,host=a w=3i 10\nm,host=b v=4 10\n";
        let first = build(body).expect("first");
        let second = build(body).expect("second");
        assert_eq!(first.len(), second.len());
        for (a, b) in first.iter().zip(&second) {
            assert_eq!(a.table, b.table);
            assert_eq!(a.batch, b.batch);
            assert_eq!(a.series, b.series);
        }
        // Tag order does not change the series, cached or not.
        let m = first.iter().find(|c| &*c.table == "m").expect("m");
        assert_eq!(m.series[0], m.series[1]);
        assert_ne!(m.series[0], m.series[2]);
    }

    #[test]
    fn errors_on_lines_of_cached_series_name_their_line_and_column() {
        build("m,host=a v=1 10").expect("warm the cache");
        let err = build("m,host=a v=2 20\nm,host=a v=oops 30").expect_err("bad float");
        let msg = err.to_string();
        assert!(msg.contains("line 2, column 12"), "{msg}");
        let err = build("m,host=a v=2 20\nm,host=a v=3i 30").expect_err("type conflict");
        let msg = err.to_string();
        assert!(msg.contains("line 2") && msg.contains("line 1"), "{msg}");
    }

    fn build_general(body: &str) -> Result<Vec<WriteChunk>, StoreError> {
        let mut builder = BatchBuilder::new(7, lineage());
        for line in fabrik_core::line_protocol::parse_body(body)? {
            builder.add_line(&line, Precision::Ns)?;
        }
        builder.finish(&Catalog::default(), i64::MAX)
    }

    /// Lines of known series whose fields follow their table's layout skip the general
    /// parser; the rows must be the very ones the general parser builds, whatever mix of
    /// layouts, missing fields, types and timestamps the body has.
    #[test]
    fn the_layout_fast_path_builds_the_same_rows_as_the_general_parser() {
        let body = "\
m,host=a,dc=x v=1,n=2i,u=3u,b=t 10
m,host=b,dc=x v=1.5,n=-2i,u=0u,b=F 11
m,host=a,dc=x v=2,n=4i,u=5u,b=false
m,host=a,dc=x n=6i,v=3,u=7u,b=true 12
m,host=b,dc=x v=4 13
m,host=a,dc=x v=5,n=8i,u=9u,b=t,extra=1 14
n,host=a w=1i 10
m,host=a,dc=x v=6,n=10i,u=11u,b=t   15
n,host=a w=2i 11
m,host=b,dc=x v=7,n=12i,u=13u,b=f 16
m,dc=x,host=a v=8,n=14i,u=15u,b=t 17
m,host=c,dc=x v=9,n=16i,u=17u,b=t 18
m,host=c,dc=x v=10,n=18i,u=19u,b=t 18
";
        build(body).expect("warm the series cache");
        let fast = build(body).expect("fast");
        let general = build_general(body).expect("general");
        assert_eq!(fast.len(), general.len());
        for (a, b) in fast.iter().zip(&general) {
            assert_eq!(a.table, b.table);
            assert_eq!(a.batch, b.batch, "table {}", a.table);
            assert_eq!(a.series, b.series);
        }
        let mut builder = BatchBuilder::new(7, lineage());
        add_body(&mut builder, body, Precision::Ns).expect("add");
        assert!(
            builder.lines_by_layout() >= 6,
            "only {} lines took the fast path",
            builder.lines_by_layout()
        );
    }

    fn lineage() -> Lineage {
        Lineage {
            source: SourceId::http(),
            raw_id: RawMessageId(1),
            mapping_version: 0,
        }
    }

    #[test]
    fn a_type_change_on_the_fast_path_is_reported_as_on_the_general_one() {
        build("m,host=a v=1,n=2i 10").expect("warm the cache");
        let err = build("m,host=a v=1,n=2i 10\nm,host=a v=1,n=2 20").expect_err("conflict");
        let msg = err.to_string();
        assert!(msg.contains("line 2") && msg.contains("line 1"), "{msg}");
        let err = build("m,host=a v=1,n=2i 10\nm,host=a v=1,n=2i 1e3").expect_err("bad time");
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn the_line_estimate_follows_the_first_line_that_is_not_blank() {
        let body = "m,host=a v=1 10\n".repeat(100);
        assert_eq!(estimated_lines(&body), 101);
        let padded = format!("\n\n   \n{body}");
        assert!(
            estimated_lines(&padded) <= 102,
            "{}",
            estimated_lines(&padded)
        );
        assert_eq!(estimated_lines(""), 1);
        assert_eq!(estimated_lines("m v=1"), 1);
    }

    async fn open_store(dir: &Path, wal_hold: Option<u64>) -> Arc<Store> {
        let mut options = StoreOptions::new(dir);
        options.flush_interval = Duration::from_secs(3600);
        options.wal_hold = wal_hold;
        Store::open(options).await.expect("store opens")
    }

    async fn write(store: &Store, body: &str) -> u64 {
        store
            .write_lines(body, Precision::Ns, SourceId::http())
            .await
            .expect("write")
            .seq
    }

    fn rows_of(records: &[wal::FollowedRecord]) -> Vec<(String, usize)> {
        records
            .iter()
            .flat_map(|r| wal::decode(&r.payload).expect("decodes"))
            .map(|c| (c.table.to_string(), c.batch.num_rows()))
            .collect()
    }

    /// Runs `sql` (which would run for hours) on `store`, stops waiting for it once it has
    /// started, and checks that every task of it on the pool ends (its partitions run as tasks
    /// of their own) well inside the query timeout of 30 s, which would not end them either
    /// without a yield; then that the pool answers the next query.
    async fn assert_ends_when_nobody_waits(store: &Arc<Store>, sql: &'static str) {
        let waiting = tokio::spawn({
            let store = store.clone();
            async move { store.query(sql).await }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.running_queries() == 0 {
            assert!(Instant::now() < deadline, "the query never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Let it get into its work.
        tokio::time::sleep(Duration::from_millis(300)).await;
        waiting.abort();
        let pool_tasks = || {
            store
                .query_pool
                .runtime
                .as_ref()
                .map_or(0, |pool| pool.metrics().num_alive_tasks())
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.running_queries() > 0 || pool_tasks() > 0 {
            assert!(
                Instant::now() < deadline,
                "{sql}: kept running after its caller went away: {} of its tasks",
                pool_tasks()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let counted = store
            .query("SELECT count(*) AS n FROM m")
            .await
            .expect("query");
        assert_eq!(
            counted.batches.iter().map(|b| b.num_rows()).sum::<usize>(),
            1
        );
    }

    /// A query whose caller stops waiting (an HTTP client that went away, a rollup told to
    /// stop) is aborted on the pool, not left computing an answer nobody reads: a cross join
    /// that makes rows from memory without reading, and a range join that reads but whose
    /// pairs all fail its condition, so it makes no rows for a long while.
    #[tokio::test]
    async fn a_query_nobody_waits_for_any_more_stops_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path(), None).await;
        let lines: String = (1..=2_000).map(|i| format!("m,d=a v={i} {i}\n")).collect();
        write(&store, &lines).await;
        // 1.6 × 10¹³ joined rows.
        assert_ends_when_nobody_waits(
            &store,
            "SELECT sum(a.v * b.v + c.v - d.v) FROM m a, m b, m c, m d",
        )
        .await;
        // 8 × 10⁹ pairs, none passing.
        assert_ends_when_nobody_waits(
            &store,
            "SELECT count(*) FROM m a CROSS JOIN m b JOIN m c ON c.v > a.v + b.v + 1e12",
        )
        .await;
    }

    /// A write of lines says how many rows each table got, across the partitions it touched.
    #[tokio::test]
    async fn a_write_reports_its_rows_per_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path(), None).await;
        let week_ns = 7 * 24 * 3600 * 1_000_000_000_i64;
        let body = format!("m,d=a v=1 1\nn,d=a w=2 1\nm,d=b v=3 {week_ns}\nm,d=c v=4 2");
        let report = store
            .write_lines(&body, Precision::Ns, SourceId::http())
            .await
            .expect("write");
        let mut tables: Vec<(String, usize)> = report
            .tables
            .iter()
            .map(|(t, rows)| (t.to_string(), *rows))
            .collect();
        tables.sort();
        assert_eq!(tables, [("m".to_owned(), 3), ("n".to_owned(), 1)]);
    }

    /// The uplink's source: a follower reads every applied record in order, across a
    /// persistence (a new WAL segment), in bounded reads; the hold keeps persisted records
    /// on disk until it moves, and a follower behind deleted records says how many it missed.
    #[tokio::test]
    async fn a_wal_follower_reads_applied_records_in_order_and_the_hold_keeps_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path(), Some(0)).await;
        let first = write(&store, "m,d=a v=1 1\nm,d=b v=2 1").await;
        write(&store, "n,d=a w=1i 2").await;
        store.persist().await.expect("persist");
        write(&store, "m,d=a v=3 3").await;
        let last = write(&store, "m,d=c v=4 4\nm,d=c v=5 5\nm,d=c v=6 6").await;
        assert_eq!(store.applied_seq(), last);
        assert_eq!(last - first, 3);

        let mut follower = wal::WalFollower::new(store.wal_dir(), first - 1);
        // One byte of budget: one record per read, never none.
        let one = follower.read(last, 1).expect("read");
        assert_eq!(one.records.len(), 1);
        assert_eq!(one.records[0].seq, first);
        // Only up to what the caller says is applied.
        let upto = follower.read(first + 1, 1 << 20).expect("read");
        assert_eq!(
            upto.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [first + 1]
        );
        let rest = follower.read(last, 1 << 20).expect("read");
        assert_eq!(
            rest.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [first + 2, last]
        );
        assert_eq!(
            rows_of(&rest.records),
            [("m".to_owned(), 1), ("m".to_owned(), 3)]
        );
        assert_eq!(follower.position(), last);
        assert!(
            follower
                .read(last, 1 << 20)
                .expect("read")
                .records
                .is_empty()
        );
        let next = write(&store, "m,d=a v=7 7").await;
        let tail = follower.read(store.applied_seq(), 1 << 20).expect("read");
        assert_eq!(
            tail.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [next]
        );

        // The hold (0) kept the persisted segment; moving it past that segment frees it.
        store.persist().await.expect("persist");
        let mut again = wal::WalFollower::new(store.wal_dir(), 0);
        let all = again.read(store.applied_seq(), usize::MAX).expect("read");
        assert_eq!(all.records.len(), 5);
        assert_eq!(all.skipped, 0);
        store.hold_wal(Some(first + 2));
        store.persist().await.expect("persist");
        let mut behind = wal::WalFollower::new(store.wal_dir(), 0);
        let read = behind.read(store.applied_seq(), usize::MAX).expect("read");
        assert_eq!(
            read.skipped,
            first + 1,
            "the first segment's records are gone"
        );
        assert_eq!(read.records.first().map(|r| r.seq), Some(first + 2));

        // Without a hold, persistence deletes what it persisted.
        store.hold_wal(None);
        write(&store, "m,d=a v=8 8").await;
        store.persist().await.expect("persist");
        let mut none = wal::WalFollower::new(store.wal_dir(), 0);
        let read = none.read(store.applied_seq(), usize::MAX).expect("read");
        assert!(read.records.is_empty(), "{:?}", rows_of(&read.records));
        assert_eq!(read.skipped, store.applied_seq());
        store.close().await;
    }

    /// A follower kept across a give-up (the uplink's hold moved past segments it had not
    /// read, and persistence deleted them) finishes the segment it has open, counts the
    /// deleted records and goes on with the next segment there is.
    #[tokio::test]
    async fn a_wal_follower_passes_over_segments_deleted_under_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path(), Some(0)).await;
        let first = write(&store, "m,d=a v=1 1").await;
        write(&store, "m,d=a v=2 2").await;
        store.persist().await.expect("persist");
        write(&store, "m,d=a v=3 3").await;
        write(&store, "m,d=a v=4 4").await;
        store.persist().await.expect("persist");
        let last = write(&store, "m,d=a v=5 5").await;
        let mut follower = wal::WalFollower::new(store.wal_dir(), first - 1);
        let one = follower.read(last, 1).expect("read");
        assert_eq!(
            one.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [first]
        );
        // The hold moves over the first two segments; they are deleted.
        store.hold_wal(Some(first + 3));
        store.persist().await.expect("persist");
        let segments = wal::list_segments(store.wal_dir()).expect("list");
        assert_eq!(
            segments[0].0, last,
            "the segments before the newest record are gone"
        );
        let mut seqs = Vec::new();
        let mut skipped = 0;
        for _ in 0..4 {
            let read = follower.read(last, 1 << 20).expect("read");
            seqs.extend(read.records.iter().map(|r| r.seq));
            skipped += read.skipped;
        }
        assert_eq!(
            seqs,
            [first + 1, last],
            "the open segment's rest, then the newest"
        );
        assert_eq!(skipped, 2, "the deleted segment's two records");
        assert_eq!(follower.position(), last);
        store.close().await;
    }

    /// Bytes past the applied records may be a write the WAL thread is about to cut back (a
    /// failed fsync): the follower must not keep them, but read the record written there
    /// afterwards.
    #[tokio::test]
    async fn a_wal_follower_never_returns_bytes_the_writer_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path(), Some(0)).await;
        let first = write(&store, "m,d=a v=1 1").await;
        let mut follower = wal::WalFollower::new(store.wal_dir(), first - 1);
        // A whole, checksummed record of the next sequence number that the writer "cut
        // back": it sits past the applied ones when the follower reads.
        let (_, path) = wal::list_segments(store.wal_dir())
            .expect("list")
            .pop()
            .expect("segment");
        let stale_payload = b"stale";
        let seq = first + 1;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&seq.to_le_bytes());
        hasher.update(stale_payload);
        let mut record = Vec::new();
        record.extend_from_slice(&(stale_payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&hasher.finalize().to_le_bytes());
        record.extend_from_slice(&seq.to_le_bytes());
        record.extend_from_slice(stale_payload);
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .expect("open");
            f.write_all(&record).expect("append");
        }
        let read = follower.read(first, 1 << 20).expect("read");
        assert_eq!(
            read.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [first]
        );
        // The writer's next record lands where the stale one was.
        let real = write(&store, "m,d=a v=2 2").await;
        assert_eq!(real, seq);
        let read = follower.read(real, 1 << 20).expect("read");
        assert_eq!(read.records.len(), 1);
        assert_ne!(read.records[0].payload, stale_payload);
        assert_eq!(rows_of(&read.records), [("m".to_owned(), 1)]);
        store.close().await;
    }

    /// The hub's side: batches read from one store's WAL are written into another as they
    /// were, and a batch that is not what a Fabrik store writes is refused naming why.
    #[tokio::test]
    async fn arrow_batches_from_another_store_are_written_and_bad_ones_refused() {
        let edge_dir = tempfile::tempdir().expect("tempdir");
        let hub_dir = tempfile::tempdir().expect("tempdir");
        let edge = open_store(edge_dir.path(), Some(0)).await;
        let hub = open_store(hub_dir.path(), None).await;
        let seq = write(
            &edge,
            "m,d=a v=1,s=\"x\" 1000\nm,d=b v=2,n=3i 2000\nk,d=a b=true 3000",
        )
        .await;
        let mut follower = wal::WalFollower::new(edge.wal_dir(), seq - 1);
        let record = follower
            .read(seq, usize::MAX)
            .expect("read")
            .records
            .remove(0);
        let batches: Vec<(String, RecordBatch)> = wal::decode(&record.payload)
            .expect("decode")
            .into_iter()
            .map(|c| (c.table.to_string(), c.batch))
            .collect();
        let report = hub
            .write_arrow(batches.clone(), "message")
            .await
            .expect("written");
        assert_eq!(report.points, 3);
        let sql = "SELECT d, v, s, n, _source FROM m ORDER BY time";
        let want = edge.query(sql).await.expect("edge query");
        let got = hub.query(sql).await.expect("hub query");
        assert_eq!(
            datafusion::arrow::compute::concat_batches(&want.schema, &want.batches)
                .expect("concat"),
            datafusion::arrow::compute::concat_batches(&got.schema, &got.batches).expect("concat"),
        );

        let (table, batch) = &batches[0];
        let index = batch.schema().index_of(schema::SOURCE).expect("_source");
        let mut without = batch.clone();
        without.remove_column(index);
        let err = hub
            .write_arrow(vec![(table.clone(), without)], "message")
            .await
            .expect_err("no _source");
        assert!(err.to_string().contains("`_source` is missing"), "{err}");
        assert!(err.http_status() < 500);

        // A column whose kind says float but whose data is text.
        let fields: Vec<datafusion::arrow::datatypes::Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| {
                if f.name() == "v" {
                    f.as_ref()
                        .clone()
                        .with_data_type(datafusion::arrow::datatypes::DataType::Utf8)
                } else {
                    f.as_ref().clone()
                }
            })
            .collect();
        let columns: Vec<datafusion::arrow::array::ArrayRef> = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(f, c)| {
                if f.name() == "v" {
                    Arc::new(datafusion::arrow::array::StringArray::from(vec![
                        "1";
                        c.len()
                    ])) as datafusion::arrow::array::ArrayRef
                } else {
                    c.clone()
                }
            })
            .collect();
        let lying = RecordBatch::try_new(
            Arc::new(datafusion::arrow::datatypes::Schema::new(fields)),
            columns,
        )
        .expect("batch");
        let err = hub
            .write_arrow(vec![(table.clone(), lying)], "message")
            .await
            .expect_err("type lie");
        assert!(
            err.to_string().contains("message[0]: column `v` is Utf8"),
            "{err}"
        );

        // A type conflict with what the hub already holds names table and column.
        write(&hub, "clash,d=a v=\"text\" 1").await;
        let clash = vec![("clash".to_owned(), batch.clone())];
        let err = hub
            .write_arrow(clash, "message")
            .await
            .expect_err("conflict");
        assert!(
            err.to_string().contains("table `clash`, column `v`"),
            "{err}"
        );
        let count = hub
            .query("SELECT count(*) AS n FROM m")
            .await
            .expect("count");
        assert_eq!(count.batches[0].num_rows(), 1);
        edge.close().await;
        hub.close().await;
    }

    /// Past four flushes' worth of rows waiting for a persist, a write waits for the persist
    /// under way rather than being refused, and is taken once it finished; while persisting
    /// fails, it is refused at once with 507.
    #[tokio::test]
    async fn a_write_waits_for_a_persist_that_is_behind_and_is_refused_while_it_fails() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(StoreOptions::new(dir.path()))
            .await
            .expect("open");
        let line = "m,dev=a v=1 1\n";
        // As if a frozen buffer four flushes large were being persisted.
        let backlog = store.shared.backlog_limit() + 1;
        store.shared.frozen_bytes.store(backlog, Relaxed);
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write_lines(line, Precision::Ns, SourceId::http())
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!writer.is_finished(), "the write waits for the persist");
        // The persist finishes: the backlog is gone, and the write is taken.
        store.shared.frozen_bytes.store(0, Relaxed);
        store.shared.persisted.notify_waiters();
        let taken = tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("taken once persisted")
            .expect("task");
        assert!(taken.is_ok(), "{taken:?}");

        // Persisting fails: refused at once, naming it.
        store.shared.frozen_bytes.store(backlog, Relaxed);
        store.shared.persist_failing.store(true, Relaxed);
        let refused = tokio::time::timeout(
            Duration::from_secs(10),
            store.write_lines(line, Precision::Ns, SourceId::http()),
        )
        .await
        .expect("at once")
        .expect_err("refused");
        assert_eq!(refused.http_status(), 507, "{refused}");
        assert!(refused.to_string().contains("failing"), "{refused}");
        store.shared.frozen_bytes.store(0, Relaxed);
        store.close().await;
    }
}
