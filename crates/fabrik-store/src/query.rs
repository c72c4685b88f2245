//! SQL over the buffer and the Parquet segments together, through DataFusion.
//!
//! Each table is a [`FabrikTable`] whose scan takes a snapshot of the live buffer, the frozen
//! buffers being persisted and the segments in the manifest. Partitions whose pieces cannot
//! overlap in time are read as they are (Parquet with statistics pruning, memory batches as
//! they are); a partition with overlapping pieces (late data over a persisted range, or
//! several segments not yet compacted) is merged with last-write-wins before the query sees
//! it, so a query never shows two rows for one series and time.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown, col, lit};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;

use crate::buffer::PartitionData;
use crate::last_rows::{ReplacedPicks, last_rows_of, last_rows_of_segment, segment_columns};
use crate::manifest::SegmentMeta;
use crate::segments::{self, Objects};
use crate::{Shared, schema};

/// The URL the segment object store is registered under.
pub const SEGMENTS_URL: &str = "fabrik://segments";

/// A consistent view of one table at the start of a scan.
pub(crate) struct TableSnapshot {
    /// Segments in the manifest.
    pub segments: Vec<SegmentMeta>,
    /// Frozen buffers being persisted, oldest first, with their order.
    pub frozen: Vec<(u64, Vec<PartitionData>)>,
    /// The live buffer.
    pub live: Vec<PartitionData>,
}

/// One table as DataFusion sees it.
#[derive(Debug)]
pub(crate) struct FabrikTable {
    pub name: Arc<str>,
    pub schema: SchemaRef,
    pub shared: Arc<Shared>,
    /// Scan only the last rows of each series, read so ([`crate::last_rows`] decides when that
    /// is exact).
    pub last_rows: Option<LastRows>,
}

/// How a last-rows scan reads the rows picked per piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LastRows {
    /// For each series' newest row and time: a newer piece's row at the same series and time
    /// replaces an older piece's pick there, and is its piece's newest row if nothing newer
    /// is, so the picks of each piece suffice.
    Newest,
    /// Also for each column's newest non-null value (`IGNORE NULLS`, `FILTER (WHERE c IS NOT
    /// NULL)`): a pick that a newer piece replaced (same series and time) must not count, and
    /// what it hid may be a row no piece picked, so such a partition is merged first.
    PerColumn,
}

/// Inclusive time bounds a scan needs, from the query's filters and the table's retention.
#[derive(Debug, Clone, Copy)]
struct TimeBounds {
    min: i64,
    max: i64,
}

impl TimeBounds {
    fn overlaps(self, lo: i64, hi: i64) -> bool {
        lo <= self.max && hi >= self.min
    }

    /// The share of `[lo, hi]` inside the bounds, assuming rows spread evenly over time.
    fn share_of(self, lo: i64, hi: i64) -> f64 {
        let span = (i128::from(hi) - i128::from(lo) + 1).max(1);
        let inside = i128::from(hi.min(self.max)) - i128::from(lo.max(self.min)) + 1;
        (inside.clamp(0, span) as f64) / (span as f64)
    }
}

/// Below this estimated share of the scanned segments' rows, the time filter is evaluated
/// inside the Parquet reader first and the other columns are decoded only for the rows it
/// keeps (late materialisation). Above it, evaluating the filter twice costs more than it
/// saves: on 10 M truck rows a 10-minute window ran 1.5x faster with it, and the one-day and
/// whole-range queries 10-13 % slower.
const LATE_MATERIALISE_BELOW: f64 = 0.25;

/// The estimated share of the rows of `files` that fall inside `bounds`.
fn time_selectivity(files: &[SegmentMeta], bounds: TimeBounds) -> f64 {
    let total: u64 = files.iter().map(|f| f.rows).sum();
    if total == 0 {
        return 1.0;
    }
    let selected: f64 = files
        .iter()
        .map(|f| f.rows as f64 * bounds.share_of(f.min_time, f.max_time))
        .sum();
    selected / total as f64
}

fn literal_nanos(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampMicrosecond(Some(v), _) => v.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000_000),
        _ => None,
    }
}

/// Narrows `bounds` with `time <op> literal` conjuncts of `expr`.
fn narrow(expr: &Expr, bounds: &mut TimeBounds) {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else {
        return;
    };
    if *op == Operator::And {
        narrow(left, bounds);
        narrow(right, bounds);
        return;
    }
    let (column, value, op) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) => (c, v, *op),
        (Expr::Literal(v, _), Expr::Column(c)) => match op.swap() {
            Some(swapped) => (c, v, swapped),
            None => return,
        },
        _ => return,
    };
    if column.name != schema::TIME {
        return;
    }
    let Some(t) = literal_nanos(value) else {
        return;
    };
    match op {
        Operator::Gt => bounds.min = bounds.min.max(t.saturating_add(1)),
        Operator::GtEq => bounds.min = bounds.min.max(t),
        Operator::Lt => bounds.max = bounds.max.min(t.saturating_sub(1)),
        Operator::LtEq => bounds.max = bounds.max.min(t),
        Operator::Eq => {
            bounds.min = bounds.min.max(t);
            bounds.max = bounds.max.min(t);
        }
        _ => {}
    }
}

/// A piece of one partition, with its age order.
enum Piece {
    Segment(SegmentMeta),
    Batches {
        order: u64,
        min: i64,
        max: i64,
        batches: Vec<RecordBatch>,
    },
}

impl Piece {
    fn range(&self) -> (i64, i64) {
        match self {
            Self::Segment(s) => (s.min_time, s.max_time),
            Self::Batches { min, max, .. } => (*min, *max),
        }
    }

    fn order(&self) -> u64 {
        match self {
            Self::Segment(s) => s.order,
            Self::Batches { order, .. } => *order,
        }
    }
}

fn overlapping(pieces: &[Piece]) -> bool {
    let mut ranges: Vec<(i64, i64)> = pieces.iter().map(Piece::range).collect();
    ranges.sort_unstable();
    ranges.windows(2).any(|w| w[1].0 <= w[0].1)
}

fn keep_rows_from(batch: &RecordBatch, cutoff: i64) -> DfResult<RecordBatch> {
    let times =
        crate::batch::time_column(batch).map_err(|e| DataFusionError::External(Box::new(e)))?;
    if times.iter().all(|&t| t >= cutoff) {
        return Ok(batch.clone());
    }
    let keep = BooleanArray::from_iter(times.iter().map(|&t| Some(t >= cutoff)));
    Ok(filter_record_batch(batch, &keep)?)
}

/// A segment file's bytes.
async fn segment_bytes(objects: &Objects, meta: &SegmentMeta) -> DfResult<bytes::Bytes> {
    use object_store::ObjectStoreExt;
    let path = object_store::path::Path::from(meta.path.as_str());
    Ok(objects.get(&path).await?.bytes().await?)
}

async fn read_segment(objects: &Objects, meta: &SegmentMeta) -> DfResult<Vec<RecordBatch>> {
    let bytes = segment_bytes(objects, meta).await?;
    segments::decode_parquet(bytes).map_err(|e| DataFusionError::External(Box::new(e)))
}

/// The segments and buffer parts of `snapshot` that reach into `bounds`, by time partition.
fn pieces_by_partition(snapshot: TableSnapshot, bounds: TimeBounds) -> BTreeMap<i64, Vec<Piece>> {
    let mut partitions: BTreeMap<i64, Vec<Piece>> = BTreeMap::new();
    for seg in snapshot.segments {
        if bounds.overlaps(seg.min_time, seg.max_time) {
            partitions
                .entry(seg.partition)
                .or_default()
                .push(Piece::Segment(seg));
        }
    }
    let newest = u64::MAX;
    let buffers = snapshot
        .frozen
        .into_iter()
        .chain(std::iter::once((newest, snapshot.live)));
    for (order, parts) in buffers {
        for part in parts {
            if part.batches.is_empty() || !bounds.overlaps(part.min_time, part.max_time) {
                continue;
            }
            partitions
                .entry(part.partition)
                .or_default()
                .push(Piece::Batches {
                    order,
                    min: part.min_time,
                    max: part.max_time,
                    batches: part.batches,
                });
        }
    }
    partitions
}

impl FabrikTable {
    /// The rows of each series that latest-value aggregates need ([`last_rows_of`]), as one
    /// memory batch: per segment from the cache (or read once and cached: segment files never
    /// change), per buffer piece computed now, then picked again over all pieces, oldest
    /// first, so that a newer piece's row wins a tie. Read [`LastRows::PerColumn`], a
    /// partition where a newer piece replaced a picked row is merged (last write wins) and
    /// picked from the merged rows, as a full scan merges it.
    async fn scan_last_rows(
        &self,
        mode: LastRows,
        projection: Option<&Vec<usize>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let external = |e: crate::StoreError| DataFusionError::External(Box::new(e));
        let snapshot = self.shared.snapshot_table(&self.name);
        let segment_list = snapshot.segments.clone();
        let everything = TimeBounds {
            min: i64::MIN,
            max: i64::MAX,
        };
        let partitions = pieces_by_partition(snapshot, everything);
        // (order, rows) per piece or merged partition.
        let mut pieces: Vec<(u64, RecordBatch)> = Vec::new();
        for (_, mut partition) in partitions {
            partition.sort_by_key(Piece::order);
            let mut picked: Vec<(u64, Option<RecordBatch>)> = Vec::new();
            for piece in &partition {
                let rows = match piece {
                    Piece::Segment(seg) => self.segment_last_rows(seg).await?,
                    Piece::Batches { batches, .. } => {
                        let batches = batches
                            .iter()
                            .map(|b| segments::align(b, &self.schema))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(external)?;
                        last_rows_of(&self.schema, &batches).map_err(external)?
                    }
                };
                picked.push((piece.order(), rows));
            }
            if mode == LastRows::PerColumn
                && partition.len() > 1
                && overlapping(&partition)
                && self.replaces_a_pick(&partition, &picked).await?
            {
                let order = partition.last().map_or(0, Piece::order);
                let rows = match self.merged(partition).await? {
                    Some(merged) => last_rows_of(&self.schema, &[merged]).map_err(external)?,
                    None => None,
                };
                pieces.extend(rows.map(|rows| (order, rows)));
                continue;
            }
            pieces.extend(
                picked
                    .into_iter()
                    .filter_map(|(order, rows)| rows.map(|rows| (order, rows))),
            );
        }
        // Forget segments that compaction or retention has removed since.
        if let Some(table) = self.shared.last_rows_cache.lock().get_mut(&self.name) {
            table.retain(|path, _| segment_list.iter().any(|s| &s.path == path));
        }
        pieces.sort_by_key(|(order, _)| *order);
        let pieces: Vec<RecordBatch> = pieces.into_iter().map(|(_, rows)| rows).collect();
        // A pick a newer piece's pick replaced (same series and time) goes, as in a full scan:
        // it would tie with the row that replaced it.
        let picks = segments::sort_dedup(&self.schema, &pieces).map_err(external)?;
        let mut last = match picks {
            Some(picks) => last_rows_of(&self.schema, &[picks]).map_err(external)?,
            None => None,
        };
        if let (Some(batch), Some(cutoff)) = (&last, self.shared.retention_cutoff(&self.name)) {
            last = Some(keep_rows_from(batch, cutoff)?);
        }
        match last {
            Some(batch) if batch.num_rows() > 0 => MemorySourceConfig::try_new_exec(
                &[vec![batch]],
                self.schema.clone(),
                projection.cloned(),
            )
            .map(|exec| exec as Arc<dyn ExecutionPlan>),
            _ => {
                let projected = match projection {
                    Some(p) => Arc::new(self.schema.project(p)?),
                    None => self.schema.clone(),
                };
                Ok(Arc::new(EmptyExec::new(projected)))
            }
        }
    }

    /// The rows of a partition's pieces merged: oldest piece first, one row per series and
    /// time, the last written.
    async fn merged(&self, mut pieces: Vec<Piece>) -> DfResult<Option<RecordBatch>> {
        pieces.sort_by_key(Piece::order);
        let mut ordered = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Segment(meta) => {
                    ordered.extend(read_segment(&self.shared.objects, &meta).await?)
                }
                Piece::Batches { batches, .. } => ordered.extend(batches),
            }
        }
        segments::sort_dedup(&self.schema, &ordered)
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }

    /// True when a piece of `partition` (oldest first) holds a row at the series and time of a
    /// row `picked` from an older piece. Reads the tag and time columns of the newer segments;
    /// the usual case, segments overlapped by the buffer only, reads no file.
    async fn replaces_a_pick(
        &self,
        partition: &[Piece],
        picked: &[(u64, Option<RecordBatch>)],
    ) -> DfResult<bool> {
        let external = |e: crate::StoreError| DataFusionError::External(Box::new(e));
        let mut key_columns = schema::tag_indices(&self.schema);
        key_columns.extend(self.schema.index_of(schema::TIME).ok());
        let keys_schema = Arc::new(self.schema.project(&key_columns)?);
        let mut replaced = ReplacedPicks::default();
        for (piece, (_, picks)) in partition.iter().zip(picked) {
            let rows = match piece {
                _ if replaced.is_empty() => Vec::new(),
                Piece::Segment(meta) => {
                    let bytes = segment_bytes(&self.shared.objects, meta).await?;
                    segment_columns(bytes, &keys_schema).map_err(external)?
                }
                Piece::Batches { batches, .. } => batches
                    .iter()
                    .map(|b| segments::align(b, &keys_schema))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(external)?,
            };
            for batch in &rows {
                if replaced.replaces_one(batch).map_err(external)? {
                    return Ok(true);
                }
            }
            if let Some(picks) = picks {
                let picks = segments::align(picks, &keys_schema).map_err(external)?;
                replaced.add_picks(&picks).map_err(external)?;
            }
        }
        Ok(false)
    }

    /// A segment's rows for latest-value aggregates, aligned to the table's schema: from the
    /// cache, or read once and cached.
    async fn segment_last_rows(&self, seg: &SegmentMeta) -> DfResult<Option<RecordBatch>> {
        let external = |e: crate::StoreError| DataFusionError::External(Box::new(e));
        let cached = self
            .shared
            .last_rows_cache
            .lock()
            .get(&self.name)
            .and_then(|t| t.get(&seg.path).cloned());
        let last = match cached {
            Some(last) => last,
            None => {
                let bytes = segment_bytes(&self.shared.objects, seg).await?;
                let last = last_rows_of_segment(bytes).map_err(external)?;
                self.shared
                    .last_rows_cache
                    .lock()
                    .entry(self.name.clone())
                    .or_default()
                    .insert(seg.path.clone(), last.clone());
                last
            }
        };
        // Cached under the schema of its day: the table may have gained columns since.
        last.map(|batch| segments::align(&batch, &self.schema).map_err(external))
            .transpose()
    }
}

#[async_trait]
impl TableProvider for FabrikTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Inexact: filters prune partitions and row groups here, DataFusion still applies them.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if let Some(mode) = self.last_rows {
            return self.scan_last_rows(mode, projection).await;
        }
        let snapshot = self.shared.snapshot_table(&self.name);
        let cutoff = self.shared.retention_cutoff(&self.name);
        let mut bounds = TimeBounds {
            min: cutoff.unwrap_or(i64::MIN),
            max: i64::MAX,
        };
        for f in filters {
            narrow(f, &mut bounds);
        }

        let partitions = pieces_by_partition(snapshot, bounds);
        let mut files = Vec::new();
        let mut memory = Vec::new();
        for (_, pieces) in partitions {
            if pieces.len() > 1 && overlapping(&pieces) {
                memory.extend(self.merged(pieces).await?);
                continue;
            }
            for piece in pieces {
                match piece {
                    Piece::Segment(meta) => files.push(meta),
                    Piece::Batches { batches, .. } => {
                        for b in batches {
                            memory.push(
                                segments::align(&b, &self.schema)
                                    .map_err(|e| DataFusionError::External(Box::new(e)))?,
                            );
                        }
                    }
                }
            }
        }
        if let Some(cutoff) = cutoff {
            memory = memory
                .iter()
                .map(|b| keep_rows_from(b, cutoff))
                .filter(|b| b.as_ref().map_or(true, |b| b.num_rows() > 0))
                .collect::<DfResult<_>>()?;
        }

        let mut plans: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        let parallelism = state.config().target_partitions().max(1);
        if !memory.is_empty() {
            let mut groups: Vec<Vec<RecordBatch>> = vec![Vec::new(); parallelism.min(memory.len())];
            let group_count = groups.len();
            for (i, b) in memory.into_iter().enumerate() {
                groups[i % group_count].push(b);
            }
            plans.push(MemorySourceConfig::try_new_exec(
                &groups,
                self.schema.clone(),
                projection.cloned(),
            )?);
        }
        if !files.is_empty() {
            let mut predicates: Vec<Expr> = filters.to_vec();
            if let Some(cutoff) = cutoff {
                predicates.push(
                    col(schema::TIME)
                        .gt_eq(lit(ScalarValue::TimestampNanosecond(Some(cutoff), None))),
                );
            }
            let mut source = ParquetSource::new(self.schema.clone());
            if let Some(predicate) = datafusion::logical_expr::utils::conjunction(predicates) {
                let df_schema = DFSchema::try_from(self.schema.as_ref().clone())?;
                let physical = state.create_physical_expr(predicate, &df_schema)?;
                source = source.with_predicate(physical);
                // Row-level filtering makes the retention cut exact inside a segment, and
                // pays for itself when the time filter keeps few of the rows.
                if cutoff.is_some() || time_selectivity(&files, bounds) < LATE_MATERIALISE_BELOW {
                    source = source.with_pushdown_filters(true);
                }
            }
            let mut groups: Vec<Vec<PartitionedFile>> =
                vec![Vec::new(); parallelism.min(files.len())];
            let group_count = groups.len();
            for (i, meta) in files.into_iter().enumerate() {
                groups[i % group_count].push(PartitionedFile::new(meta.path.clone(), meta.bytes));
            }
            let config =
                FileScanConfigBuilder::new(ObjectStoreUrl::parse(SEGMENTS_URL)?, Arc::new(source))
                    .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
                    .with_projection_indices(projection.cloned())?
                    .build();
            plans.push(DataSourceExec::from_data_source(config));
        }
        if plans.is_empty() {
            let projected = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        UnionExec::try_new(plans)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectivity_weighs_each_segment_by_its_rows_and_overlap() {
        let seg = |min: i64, max: i64, rows: u64| SegmentMeta {
            path: String::new(),
            partition: 0,
            min_time: min,
            max_time: max,
            rows,
            bytes: 0,
            order: 0,
        };
        let files = [seg(0, 99, 100), seg(100, 199, 300)];
        let all = TimeBounds {
            min: i64::MIN,
            max: i64::MAX,
        };
        assert!((time_selectivity(&files, all) - 1.0).abs() < 1e-9);
        // The last ten time units of the second file: 10 % of its 300 rows of 400 in all.
        let tail = TimeBounds { min: 190, max: 250 };
        assert!((time_selectivity(&files, tail) - 30.0 / 400.0).abs() < 1e-9);
        let none = TimeBounds { min: 500, max: 600 };
        assert_eq!(time_selectivity(&files, none), 0.0);
        assert_eq!(time_selectivity(&[], tail), 1.0);
    }

    #[test]
    fn time_bounds_come_from_conjunctions_in_either_order() {
        let t = |v: i64| lit(ScalarValue::TimestampNanosecond(Some(v), None));
        let expr = col("time")
            .gt_eq(t(10))
            .and(t(20).gt(col("time")))
            .and(col("x").eq(lit(1)));
        let mut b = TimeBounds {
            min: i64::MIN,
            max: i64::MAX,
        };
        narrow(&expr, &mut b);
        assert_eq!((b.min, b.max), (10, 19));
        assert!(b.overlaps(19, 30) && !b.overlaps(20, 30) && !b.overlaps(0, 9));
    }
}
