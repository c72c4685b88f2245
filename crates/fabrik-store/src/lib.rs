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
pub mod pool;
pub mod query;
pub mod schema;
pub mod segments;
mod series_cache;
pub mod wal;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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

pub use blobs::{Blob, BlobPin, BlobStore, SweepReport};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteReport {
    /// Points (rows) accepted.
    pub points: usize,
    /// The raw-message id stamped on them.
    pub raw_id: RawMessageId,
    /// The WAL sequence number of the write.
    pub seq: u64,
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
    flush_wanted: Notify,
    /// Per table and segment path, the last row of each series in that segment file
    /// ([`last_rows`]); segment files never change, so an entry stays valid while the file lives.
    last_rows_cache: LastRowsCache,
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
        state.frozen.push(Arc::new(Frozen {
            buffer: old,
            last_seq,
        }));
        metrics::gauge!("fabrik_store_buffer_bytes").set(0.0);
    }
}

/// Owns the query thread pool; shuts it down without blocking when dropped.
struct QueryPool(Option<tokio::runtime::Runtime>);

impl Drop for QueryPool {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
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
    _lock: File,
}

fn data_dir_error(path: &Path, reason: impl std::fmt::Display) -> StoreError {
    StoreError::DataDir {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
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
        let dir = options.data_dir.clone();
        let lock = prepare_data_dir(&dir)?;
        let manifest = Manifest::load(&dir)?;
        let catalog = Catalog::from_tables(
            manifest
                .tables
                .iter()
                .map(|(name, t)| (name.clone(), t.id, t.columns.clone())),
        );
        let blobs = BlobStore::open(dir.join("blobs"))?;
        let segments_dir = dir.join("segments");
        let objects: Objects = Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(&segments_dir)
                .map_err(|e| data_dir_error(&segments_dir, e))?,
        );
        remove_orphan_segments(&objects, &manifest).await?;

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
            flush_wanted: Notify::new(),
            last_rows_cache: Mutex::default(),
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
        tracing::info!(
            records = report.records,
            rows,
            buffer_bytes = bytes,
            torn_bytes_dropped = report.torn_bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "WAL replayed."
        );
        let (wal_tx, wal_thread) =
            wal::start(&wal_dir, report.next_seq, Sink(shared.clone()), 1024)?;

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

        Ok(Arc::new(Store {
            shared,
            wal_tx: RwLock::new(Some(wal_tx)),
            wal_thread: Mutex::new(Some(wal_thread)),
            wal_dir,
            maintenance: tokio::sync::Mutex::new(Vec::new()),
            runtime_env,
            query_pool: QueryPool(Some(query_pool)),
            ids: RawMessageIds::new(),
            blobs,
            _lock: lock,
        }))
    }

    /// The clips, images and files rows refer to by [`fabrik_core::BlobId`].
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
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
        let seq = self.commit(chunks).await?;
        metrics::counter!("fabrik_store_points_written_total").increment(points as u64);
        Ok(WriteReport {
            points,
            raw_id,
            seq,
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
        let raw_id = lineage.raw_id;
        let mut builder = BatchBuilder::new(Timestamp::now().nanos(), lineage);
        for (i, point) in points.iter().enumerate() {
            builder.add_point(point, &format!("{location}[{i}]"))?;
        }
        let count = builder.rows();
        let chunks = builder.finish(&self.shared.catalog, self.partition_ns())?;
        let seq = self.commit(chunks).await?;
        metrics::counter!("fabrik_store_points_written_total").increment(count as u64);
        Ok(WriteReport {
            points: count,
            raw_id,
            seq,
        })
    }

    /// Writes groups of points that each carry their own lineage (one group per raw message,
    /// as connectors produce them) as one WAL record: all or none. Errors name the group and
    /// point as `location[group][point]`.
    pub async fn write_groups(
        &self,
        groups: &[(Lineage, Vec<Point>)],
        location: &str,
    ) -> Result<WriteReport, StoreError> {
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
        let seq = self.commit(chunks).await?;
        metrics::counter!("fabrik_store_points_written_total").increment(count as u64);
        Ok(WriteReport {
            points: count,
            raw_id,
            seq,
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

    /// Runs SQL (queries only: no DDL, DML or `SET`). Cancelled after the query timeout.
    pub async fn query(&self, sql: &str) -> Result<QueryOutput, StoreError> {
        let timeout = self.shared.options.query_timeout;
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_target_partitions(self.shared.options.query_threads.max(1));
        let ctx = SessionContext::new_with_config_rt(config, self.runtime_env.clone());
        ctx.add_optimizer_rule(Arc::new(last_rows::LastRowsRule));
        for table in self.shared.catalog.queryable() {
            let provider = FabrikTable {
                name: table.name.clone(),
                schema: table.arrow(),
                shared: self.shared.clone(),
                last_rows: false,
            };
            ctx.register_table(
                datafusion::common::TableReference::bare(table.name.as_ref()),
                Arc::new(provider),
            )
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        }
        let sql = sql.to_owned();
        let Some(pool) = self.query_pool.0.as_ref() else {
            return Err(StoreError::ShuttingDown);
        };
        let task = pool.spawn(async move {
            let options = SQLOptions::new()
                .with_allow_ddl(false)
                .with_allow_dml(false)
                .with_allow_statements(false);
            let df = ctx
                .sql_with_options(&sql, options)
                .await
                .map_err(query_error)?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let mut stream = df.execute_stream().await.map_err(query_error)?;
            let mut batches = Vec::new();
            while let Some(batch) = stream.next().await {
                batches.push(batch.map_err(query_error)?);
            }
            Ok::<_, StoreError>(QueryOutput { schema, batches })
        });
        let abort = task.abort_handle();
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(StoreError::Internal(format!("query task failed: {join}"))),
            Err(_) => {
                abort.abort();
                metrics::counter!("fabrik_query_timeouts_total").increment(1);
                Err(StoreError::QueryTimeout(timeout))
            }
        }
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

    /// Writes everything buffered to Parquet segments and drops the WAL it covered.
    pub async fn persist(&self) -> Result<(), StoreError> {
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
            return Ok(());
        }
        let started = Instant::now();
        let mut written = 0usize;
        for f in &frozen {
            for table in f.buffer.table_names() {
                let Some(schema) = self.shared.catalog.get(&table) else {
                    continue;
                };
                for part in f.buffer.table(&table) {
                    let arrow = schema.arrow();
                    let encoded = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                        let Some(batch) = segments::sort_dedup(&arrow, &part.batches)? else {
                            return Ok(None);
                        };
                        let (min_time, max_time) = segments::time_range(&batch)?;
                        let rows = batch.num_rows() as u64;
                        Ok(Some((
                            segments::encode_parquet(&batch)?,
                            part.partition,
                            min_time,
                            max_time,
                            rows,
                        )))
                    })
                    .await
                    .map_err(|e| StoreError::Internal(format!("persist task: {e}")))??;
                    let Some((bytes, partition, min_time, max_time, rows)) = encoded else {
                        continue;
                    };
                    let file_id = manifest.next_file_id;
                    manifest.next_file_id += 1;
                    let path = format!("t{}/p{}/{:016}.parquet", schema.id, partition, file_id);
                    let size = bytes.len() as u64;
                    self.shared
                        .objects
                        .put(&object_store::path::Path::from(path.as_str()), bytes.into())
                        .await
                        .map_err(|e| {
                            StoreError::Internal(format!("writing segment {path}: {e}"))
                        })?;
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
        {
            let mut state = self.shared.state.write();
            state.manifest = manifest.clone();
            state
                .frozen
                .retain(|x| !frozen.iter().any(|f| Arc::ptr_eq(f, x)));
        }
        let wal_dir = self.wal_dir.clone();
        let persisted = manifest.persisted_seq;
        let removed =
            tokio::task::spawn_blocking(move || wal::delete_persisted(&wal_dir, persisted))
                .await
                .map_err(|e| StoreError::Internal(format!("WAL cleanup task: {e}")))??;
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
        let mut pending_deletes = self.maintenance.lock().await;
        let grace = (self.shared.options.query_timeout * 2).max(Duration::from_secs(60));
        let now = Instant::now();
        let mut still_pending = Vec::new();
        for (since, path) in pending_deletes.drain(..) {
            if now.duration_since(since) >= grace {
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
                        .await?
                        .bytes()
                        .await?;
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
                        .await?;
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
        let mut report = SweepReport::default();
        let live_condition = self.live_listing_condition();
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
                    let ids = datafusion::arrow::compute::cast(
                        batch.column(0),
                        &datafusion::arrow::datatypes::DataType::Utf8,
                    )?;
                    let ids = ids
                        .as_any()
                        .downcast_ref::<datafusion::arrow::array::StringArray>()
                        .ok_or_else(|| StoreError::Internal("blob ids are not text".into()))?;
                    live.extend(ids.iter().flatten().map(str::to_owned));
                }
            }
            let blobs = self.blobs.clone();
            let min_age = self.shared.options.blob_min_age;
            report += tokio::task::spawn_blocking(move || blobs.sweep(shard, &live, min_age))
                .await
                .map_err(|e| StoreError::Internal(format!("blob sweep task: {e}")))??;
        }
        metrics::counter!("fabrik_blobs_deleted_total").increment(report.deleted);
        metrics::counter!("fabrik_blob_bytes_deleted_total").increment(report.bytes_deleted);
        metrics::counter!("fabrik_blob_sweep_errors_total").increment(report.errors);
        if report.deleted + report.leftovers + report.errors > 0 {
            tracing::info!(
                deleted = report.deleted,
                bytes = report.bytes_deleted,
                leftovers = report.leftovers,
                kept = report.kept,
                errors = report.errors,
                "Blobs no live row names deleted."
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

    /// Runs persistence, compaction and the blob sweep until `stop` is cancelled. The sweep
    /// runs beside the other two, so its queries never hold up a flush.
    pub async fn run_background(self: Arc<Self>, stop: CancellationToken) {
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
                    }
                }
            }
        };
        tokio::join!(maintenance, sweeps);
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

fn query_error(e: datafusion::error::DataFusionError) -> StoreError {
    use datafusion::error::DataFusionError as E;
    // The planner wraps its errors (diagnostics, context); the cause is the root.
    if let E::Plan(message) = e.find_root()
        && let Some(explained) = explain_missing_table(message)
    {
        return StoreError::Query(explained);
    }
    match e {
        E::ObjectStore(_) | E::IoError(_) | E::ParquetError(_) | E::Internal(_) => {
            StoreError::Internal(e.to_string())
        }
        other => StoreError::Query(other.to_string()),
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

async fn remove_orphan_segments(objects: &Objects, manifest: &Manifest) -> Result<(), StoreError> {
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
}
