//! "Latest value per series" queries answered from each series' last row instead of a full scan.
//!
//! `SELECT tag, last_value(field ORDER BY time), max(time) FROM t GROUP BY tag` is what a
//! dashboard's "current value" tile and InfluxQL's `ORDER BY time DESC LIMIT 1` ask. The row
//! with the largest time in a group is the last row of one of the group's series, so the
//! aggregate over the series' last rows equals the aggregate over every row. [`LastRowsRule`]
//! recognises that plan shape and points its scan at [`FabrikTable`] in last-rows mode, which
//! reads a few rows per series: cached per immutable segment file, computed per query for the
//! buffer, gathered again over all pieces (for the per-column aggregates, a partition where a
//! newer piece replaced a picked row is merged with last-write-wins first, as a full scan
//! merges it).
//!
//! A connector that reports each changed point on its own (OPC UA data changes, Sparkplug
//! reports by exception) leaves most columns of a row null, so "each signal's newest value"
//! is `last_value(column ORDER BY time) IGNORE NULLS`, and when it was reported
//! `max(time) FILTER (WHERE column IS NOT NULL)`. For those the rows read per series are its
//! last row and, for each column, the newest row where that column is not null.
//!
//! Only exact equivalences are rewritten: the grouping keys must be tag columns (a series has
//! one value of each), every aggregate `last_value(column ORDER BY time ASC)` (with or without
//! `IGNORE NULLS`; no `DISTINCT` or `FILTER`), `max(time)` or
//! `max(time) FILTER (WHERE column IS NOT NULL)`, and a filter only on tag columns (it keeps or
//! drops whole series).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use datafusion::arrow::array::Array as _;
use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::tree_node::{Transformed, TreeNode as _};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::expr::NullTreatment;
use datafusion::logical_expr::{Expr, LogicalPlan, TableScan};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::{
    ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};

use crate::StoreError;
use crate::query::{FabrikTable, LastRows};
use crate::schema::{self, ColumnKind};

/// The optimizer rule; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct LastRowsRule;

impl OptimizerRule for LastRowsRule {
    fn name(&self) -> &str {
        "fabrik_last_rows"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> DfResult<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(aggregate) = &plan else {
            return Ok(Transformed::no(plan));
        };
        // Between the two, filters on tags alone (they keep or drop whole series) and
        // projections of columns (the optimizer narrows a filter's output to what the
        // aggregate reads).
        let mut filters: Vec<&Expr> = Vec::new();
        let mut node = aggregate.input.as_ref();
        let scan = loop {
            match node {
                LogicalPlan::TableScan(scan) => break scan,
                LogicalPlan::Filter(filter) => {
                    filters.push(&filter.predicate);
                    node = filter.input.as_ref();
                }
                LogicalPlan::Projection(projection)
                    if projection.expr.iter().all(|e| matches!(e, Expr::Column(_))) =>
                {
                    node = projection.input.as_ref();
                }
                _ => return Ok(Transformed::no(plan)),
            }
        };
        if scan.fetch.is_some() {
            return Ok(Transformed::no(plan));
        }
        let Ok(provider) = source_as_provider(&scan.source) else {
            return Ok(Transformed::no(plan));
        };
        let Some(table) = provider.downcast_ref::<FabrikTable>() else {
            return Ok(Transformed::no(plan));
        };
        // A volatile filter (`random() < 0.5`) would sample the picked rows, not all of them.
        let tags_only = |e: &Expr| {
            !e.is_volatile()
                && e.column_refs()
                    .iter()
                    .all(|c| is_column_of_kind(table, &Expr::Column((*c).clone()), is_tag))
        };
        if table.last_rows.is_some()
            || !scan.filters.iter().all(tags_only)
            || !filters.into_iter().all(tags_only)
        {
            return Ok(Transformed::no(plan));
        }
        let Some(mode) =
            answerable_from_last_rows(table, &aggregate.group_expr, &aggregate.aggr_expr)
        else {
            return Ok(Transformed::no(plan));
        };
        let last_rows = FabrikTable {
            name: table.name.clone(),
            schema: table.schema.clone(),
            shared: table.shared.clone(),
            last_rows: Some(mode),
        };
        let new_scan = LogicalPlan::TableScan(TableScan {
            source: provider_as_source(Arc::new(last_rows)),
            ..scan.clone()
        });
        let input = aggregate
            .input
            .as_ref()
            .clone()
            .transform_up(|node| {
                Ok(match node {
                    LogicalPlan::TableScan(_) => Transformed::yes(new_scan.clone()),
                    other => Transformed::no(other),
                })
            })?
            .data;
        let mut aggregate = aggregate.clone();
        aggregate.input = Arc::new(input);
        Ok(Transformed::yes(LogicalPlan::Aggregate(aggregate)))
    }
}

fn is_column_of_kind(
    table: &FabrikTable,
    expr: &Expr,
    wanted: impl Fn(ColumnKind) -> bool,
) -> bool {
    let Expr::Column(column) = expr else {
        return false;
    };
    table
        .schema
        .field_with_name(&column.name)
        .ok()
        .and_then(schema::kind_of)
        .is_some_and(wanted)
}

fn is_time(table: &FabrikTable, expr: &Expr) -> bool {
    is_column_of_kind(table, expr, |k| k == ColumnKind::Time)
}

fn is_tag(kind: ColumnKind) -> bool {
    kind == ColumnKind::Tag
}

/// Which reading of the last rows answers the aggregates exactly, if one does: per series,
/// the newest row holds the largest time and each column's value there, and the newest row
/// where a column is not null holds its newest value and that row's time.
fn answerable_from_last_rows(
    table: &FabrikTable,
    group_by: &[Expr],
    aggregates: &[Expr],
) -> Option<LastRows> {
    let mut per_column = false;
    let groups_are_tags = group_by.iter().all(|g| is_column_of_kind(table, g, is_tag));
    let aggregates_are_latest = !aggregates.is_empty()
        && aggregates.iter().all(|a| {
            let mut expr = a;
            while let Expr::Alias(alias) = expr {
                expr = &alias.expr;
            }
            let Expr::AggregateFunction(f) = expr else {
                return false;
            };
            let p = &f.params;
            if p.distinct || p.args.len() != 1 {
                return false;
            }
            per_column |=
                p.filter.is_some() || matches!(p.null_treatment, Some(NullTreatment::IgnoreNulls));
            match f.func.name() {
                // `IGNORE NULLS` or not.
                "last_value" => {
                    p.filter.is_none()
                        && matches!(&p.args[0], Expr::Column(_))
                        && p.order_by.len() == 1
                        && p.order_by[0].asc
                        && is_time(table, &p.order_by[0].expr)
                }
                // When a column was last reported: `max(time) FILTER (WHERE c IS NOT NULL)`.
                "max" => {
                    let filter_ok = match p.filter.as_deref() {
                        None => true,
                        Some(Expr::IsNotNull(column)) => matches!(column.as_ref(), Expr::Column(_)),
                        Some(_) => false,
                    };
                    filter_ok
                        && p.order_by.is_empty()
                        && !matches!(p.null_treatment, Some(NullTreatment::IgnoreNulls))
                        && is_time(table, &p.args[0])
                }
                _ => false,
            }
        });
    (groups_are_tags && aggregates_are_latest).then_some(if per_column {
        LastRows::PerColumn
    } else {
        LastRows::Newest
    })
}

/// The series key of each row of a batch: its tag values in the row format, so rows of one
/// series have equal bytes. A table without tags is one series, whose key is empty.
struct SeriesKeys(Option<Rows>);

impl SeriesKeys {
    /// Keys from the tag columns of a batch (none for a table without tags).
    fn new(tags: &[ArrayRef]) -> Result<Self, StoreError> {
        if tags.is_empty() {
            return Ok(Self(None));
        }
        let converter = RowConverter::new(
            tags.iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect(),
        )?;
        Ok(Self(Some(converter.convert_columns(tags)?)))
    }

    fn key(&self, row: usize) -> &[u8] {
        self.0.as_ref().map_or(&[], |rows| rows.row(row).data())
    }
}

/// A (time, row) pair: the row that is newest so far by time, the later row on a tie.
type Newest = (i64, usize);

fn newer(best: &mut Option<Newest>, time: i64, row: usize) {
    if best.is_none_or(|(t, _)| time >= t) {
        *best = Some((time, row));
    }
}

/// What the latest-value aggregates of one series need: its newest row, and for each column
/// that may be null, the newest row where it is not.
struct SeriesLatest {
    newest: Option<Newest>,
    not_null: Vec<Option<Newest>>,
}

/// The rows, per series, that the latest-value aggregates need, gathered from rows given
/// oldest first (batch by batch, numbered across batches).
struct LatestRows {
    /// How many nullable columns are followed, in the order of the batches' `nullable`.
    nullable: usize,
    by_series: HashMap<Vec<u8>, SeriesLatest>,
}

impl LatestRows {
    fn new(nullable: usize) -> Self {
        Self {
            nullable,
            by_series: HashMap::new(),
        }
    }

    /// Takes in one batch's rows, numbered from `offset`: their series keys, times, and the
    /// nullable columns followed.
    fn add(&mut self, keys: &SeriesKeys, times: &[i64], nullable: &[&ArrayRef], offset: usize) {
        for (i, &t) in times.iter().enumerate() {
            let key = keys.key(i);
            if !self.by_series.contains_key(key) {
                let series = SeriesLatest {
                    newest: None,
                    not_null: vec![None; self.nullable],
                };
                self.by_series.insert(key.to_vec(), series);
            }
            let Some(series) = self.by_series.get_mut(key) else {
                continue;
            };
            newer(&mut series.newest, t, offset + i);
            for (best, column) in series.not_null.iter_mut().zip(nullable) {
                if column.is_valid(i) {
                    newer(best, t, offset + i);
                }
            }
        }
    }

    /// Every row needed, in ascending order, once.
    fn rows(self) -> Vec<usize> {
        let mut rows: Vec<usize> = self
            .by_series
            .into_values()
            .flat_map(|s| std::iter::once(s.newest).chain(s.not_null).flatten())
            .map(|(_, row)| row)
            .collect();
        rows.sort_unstable();
        rows.dedup();
        rows
    }
}

/// The columns of `schema` that are neither tags nor the time, by index: those a row may
/// leave null.
fn nullable_indices(schema: &Schema) -> Vec<usize> {
    schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            !matches!(
                schema::kind_of(f),
                Some(ColumnKind::Tag) | Some(ColumnKind::Time)
            )
        })
        .map(|(i, _)| i)
        .collect()
}

/// The rows of `batches` (all aligned to `schema`, oldest first, holding one row per series
/// and time) that latest-value aggregates need: per series, the row with the largest time (the
/// later one on a tie) and, for each other column, the newest row where it is not null.
pub(crate) fn last_rows_of(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Option<RecordBatch>, StoreError> {
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Ok(None);
    }
    let all = concat_batches(schema, batches)?;
    let tags: Vec<ArrayRef> = schema::tag_indices(schema)
        .into_iter()
        .map(|i| all.column(i).clone())
        .collect();
    let keys = SeriesKeys::new(&tags)?;
    let times = crate::batch::time_column(&all)?;
    let nullable: Vec<&ArrayRef> = nullable_indices(schema)
        .into_iter()
        .map(|i| all.column(i))
        .collect();
    let mut latest = LatestRows::new(nullable.len());
    latest.add(&keys, times, &nullable, 0);
    let rows: Vec<u32> = latest
        .rows()
        .into_iter()
        .map(|i| u32::try_from(i).unwrap_or(u32::MAX))
        .collect();
    Ok(Some(take_record_batch(&all, &UInt32Array::from(rows))?))
}

/// Whether a newer piece of a partition replaced a row picked from an older one: a row at
/// the same series and time replaces the old one whole, so a column the old pick held may
/// have a newest value that no piece picked. Fed each piece's picks and rows, oldest piece
/// first, all aligned to one schema of the table's tag and time columns.
#[derive(Default)]
pub(crate) struct ReplacedPicks {
    /// The picks of the pieces seen so far: time → series keys.
    older: HashMap<i64, HashSet<Vec<u8>>>,
}

impl ReplacedPicks {
    /// No picks yet: nothing to replace.
    pub(crate) fn is_empty(&self) -> bool {
        self.older.is_empty()
    }

    /// Remembers a piece's picks.
    pub(crate) fn add_picks(&mut self, picks: &RecordBatch) -> Result<(), StoreError> {
        let (keys, times) = keys_and_times(picks)?;
        for (i, &t) in times.iter().enumerate() {
            self.older
                .entry(t)
                .or_default()
                .insert(keys.key(i).to_vec());
        }
        Ok(())
    }

    /// True when a row of `rows` (a newer piece's) has the series and time of a pick.
    pub(crate) fn replaces_one(&self, rows: &RecordBatch) -> Result<bool, StoreError> {
        if self.older.is_empty() {
            return Ok(false);
        }
        let (keys, times) = keys_and_times(rows)?;
        Ok(times.iter().enumerate().any(|(i, t)| {
            self.older
                .get(t)
                .is_some_and(|picked| picked.contains(keys.key(i)))
        }))
    }
}

fn keys_and_times(batch: &RecordBatch) -> Result<(SeriesKeys, &[i64]), StoreError> {
    let tags: Vec<ArrayRef> = schema::tag_indices(&batch.schema())
        .into_iter()
        .map(|i| batch.column(i).clone())
        .collect();
    Ok((SeriesKeys::new(&tags)?, crate::batch::time_column(batch)?))
}

/// The columns of `schema` a segment file has, read whole and aligned to `schema` (those it
/// lacks are null).
pub(crate) fn segment_columns(
    bytes: Bytes,
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>, StoreError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    let indices: Vec<usize> = schema
        .fields()
        .iter()
        .filter_map(|f| builder.schema().index_of(f.name()).ok())
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    builder
        .with_projection(mask)
        .with_batch_size(READ_BATCH_ROWS)
        .build()?
        .map(|b| {
            b.map_err(StoreError::from)
                .and_then(|b| crate::segments::align(&b, schema))
        })
        .collect()
}

/// Rows decoded at a time from a segment file.
const READ_BATCH_ROWS: usize = 64 * 1024;

/// [`last_rows_of`] for a Parquet segment file, in the file's own schema (cached so, it is
/// aligned to the table's schema of each query that uses it: a query's schema may be older
/// than the file's, and would drop a column for good). Reads the tag, time and
/// nullable columns a batch at a time to find those rows (a column without nulls in any row
/// group is left out: its newest value is in the newest row), then decodes only them: a
/// segment of millions of rows never sits in memory whole.
pub(crate) fn last_rows_of_segment(bytes: Bytes) -> Result<Option<RecordBatch>, StoreError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())?;
    let file_schema = builder.schema().clone();
    let Ok(time_index) = file_schema.index_of(schema::TIME) else {
        return Err(StoreError::Internal(
            "segment without a `time` column".into(),
        ));
    };
    let tag_indices = schema::tag_indices(&file_schema);
    // Flat files: a root column is its one leaf, at the same index.
    let row_groups = builder.metadata().row_groups();
    let with_nulls: Vec<usize> = nullable_indices(&file_schema)
        .into_iter()
        .filter(|&i| {
            row_groups.iter().any(|group| {
                group
                    .column(i)
                    .statistics()
                    .and_then(|s| s.null_count_opt())
                    != Some(0)
            })
        })
        .collect();
    let mut read_indices: Vec<usize> = tag_indices.clone();
    read_indices.push(time_index);
    read_indices.extend(&with_nulls);
    let mask = ProjectionMask::roots(builder.parquet_schema(), read_indices);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(READ_BATCH_ROWS)
        .build()?;
    let column = |batch: &RecordBatch, i: usize| {
        let name = file_schema.field(i).name();
        batch
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| StoreError::Internal(format!("segment read lost column `{name}`")))
    };
    let mut latest = LatestRows::new(with_nulls.len());
    let mut offset = 0usize;
    for batch in reader {
        let batch = batch?;
        let times = crate::batch::time_column(&batch)?;
        let tags = tag_indices
            .iter()
            .map(|&i| column(&batch, i))
            .collect::<Result<Vec<_>, _>>()?;
        let nullable = with_nulls
            .iter()
            .map(|&i| column(&batch, i))
            .collect::<Result<Vec<_>, _>>()?;
        let keys = SeriesKeys::new(&tags)?;
        latest.add(&keys, times, &nullable.iter().collect::<Vec<_>>(), offset);
        offset += batch.num_rows();
    }
    let wanted = latest.rows();
    if wanted.is_empty() {
        return Ok(None);
    }
    let mut selectors = Vec::with_capacity(wanted.len() * 2 + 1);
    let mut next = 0usize;
    for row in wanted {
        if row > next {
            selectors.push(RowSelector::skip(row - next));
        }
        selectors.push(RowSelector::select(1));
        next = row + 1;
    }
    let batches = ParquetRecordBatchReaderBuilder::try_new(bytes)?
        .with_row_selection(RowSelection::from(selectors))
        .with_batch_size(READ_BATCH_ROWS)
        .build()?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(concat_batches(&file_schema, &batches)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchBuilder;
    use crate::schema::Catalog;
    use fabrik_core::line_protocol::parse_body;
    use fabrik_core::{Lineage, Precision, RawMessageId, SourceId};

    /// A table without tags is one series: its last row is the one with the largest time.
    #[test]
    fn a_table_without_tags_has_one_last_row() {
        let (from_file, in_memory) =
            last_rows_from_file_and_memory("m v=1 10\nm v=2 30\nm v=3 20\n");
        assert_eq!(from_file.num_rows(), 1);
        assert_eq!(crate::batch::time_column(&from_file).expect("time"), &[30]);
        assert_eq!(from_file, in_memory);
    }

    /// The last rows of table `m` built from `body`, read from its Parquet encoding and
    /// computed from the batch in memory.
    fn last_rows_from_file_and_memory(body: &str) -> (RecordBatch, RecordBatch) {
        let (schema, batch) = build(body);
        let file = Bytes::from(crate::segments::encode_parquet(&batch).expect("encode"));
        let from_file = last_rows_of_segment(file).expect("read").expect("rows");
        let from_file = crate::segments::align(&from_file, &schema).expect("align");
        let in_memory = last_rows_of(&schema, &[batch])
            .expect("rows")
            .expect("rows");
        (from_file, in_memory)
    }

    /// One table `m` built from a line-protocol body, aligned to the table's schema.
    fn build(body: &str) -> (SchemaRef, RecordBatch) {
        let catalog = Catalog::default();
        let mut builder = BatchBuilder::new(
            0,
            Lineage {
                source: SourceId::http(),
                raw_id: RawMessageId(1),
                mapping_version: 0,
            },
        );
        for line in parse_body(body).expect("parse") {
            builder.add_line(&line, Precision::Ns).expect("add");
        }
        let chunks = builder.finish(&catalog, i64::MAX).expect("finish");
        let schema = catalog.get("m").expect("table").arrow();
        let batch = crate::segments::align(&chunks[0].batch, &schema).expect("align");
        (schema, batch)
    }

    /// Per series, the newest row and the newest row where each column is not null: here
    /// `b` last set at 20 and `c` at 10 for d0 (its newest row, 40, has neither), `c` never
    /// for d1. The file's reader skips `a` (no nulls) and picks the same rows.
    #[test]
    fn the_rows_picked_hold_each_columns_newest_value() {
        let body = "m,dev=d0 a=1,c=\"x\" 10\nm,dev=d0 a=2,b=2 20\nm,dev=d1 a=3,b=3 25\n\
                    m,dev=d0 a=3 30\nm,dev=d0 a=4 40\nm,dev=d1 a=5 45\n";
        let (from_file, in_memory) = last_rows_from_file_and_memory(body);
        assert_eq!(from_file, in_memory);
        let mut times = crate::batch::time_column(&from_file)
            .expect("time")
            .to_vec();
        times.sort_unstable();
        assert_eq!(
            times,
            [10, 20, 25, 40, 45],
            "30 is neither d0's newest row nor the newest of any of its columns"
        );
    }

    /// A segment read in several batches (more rows than `READ_BATCH_ROWS`, series spread
    /// through the file in no order) gives the same rows as the in-memory computation.
    #[test]
    fn a_segments_last_rows_equal_those_of_its_decoded_rows() {
        let rows = READ_BATCH_ROWS * 2 + 1234;
        let body: String = (0..rows)
            .map(|i| {
                let time = (i * 7919) % rows;
                format!("m,dev=d{},site=s{} v={i} {time}\n", i % 7, i % 3)
            })
            .collect();
        let (from_file, in_memory) = last_rows_from_file_and_memory(&body);
        assert_eq!(from_file.num_rows(), 21, "7 devices x 3 sites");
        assert_eq!(from_file, in_memory);
    }
}
