//! "Latest value per series" queries answered from each series' last row instead of a full scan.
//!
//! `SELECT tag, last_value(field ORDER BY time), max(time) FROM t GROUP BY tag` is what a
//! dashboard's "current value" tile and InfluxQL's `ORDER BY time DESC LIMIT 1` ask. The row
//! with the largest time in a group is the last row of one of the group's series, so the
//! aggregate over the series' last rows equals the aggregate over every row. [`LastRowsRule`]
//! recognises that plan shape and points its scan at [`FabrikTable`] in last-rows mode, which
//! reads one row per series: cached per immutable segment file, computed per query for the
//! buffer, merged with last-write-wins across pieces.
//!
//! Only exact equivalences are rewritten: the grouping keys must be tag columns (a series has
//! one value of each), every aggregate `last_value(column ORDER BY time ASC)` (no `DISTINCT`,
//! `FILTER` or `IGNORE NULLS`) or `max(time)`, and the scan must have no filter.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::tree_node::Transformed;
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
use crate::query::FabrikTable;
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
        let LogicalPlan::TableScan(scan) = aggregate.input.as_ref() else {
            return Ok(Transformed::no(plan));
        };
        if !scan.filters.is_empty() || scan.fetch.is_some() {
            return Ok(Transformed::no(plan));
        }
        let Ok(provider) = source_as_provider(&scan.source) else {
            return Ok(Transformed::no(plan));
        };
        let Some(table) = provider.downcast_ref::<FabrikTable>() else {
            return Ok(Transformed::no(plan));
        };
        if table.last_rows
            || !answerable_from_last_rows(table, &aggregate.group_expr, &aggregate.aggr_expr)
        {
            return Ok(Transformed::no(plan));
        }
        let last_rows = FabrikTable {
            name: table.name.clone(),
            schema: table.schema.clone(),
            shared: table.shared.clone(),
            last_rows: true,
        };
        let new_scan = LogicalPlan::TableScan(TableScan {
            source: provider_as_source(Arc::new(last_rows)),
            ..scan.clone()
        });
        let mut aggregate = aggregate.clone();
        aggregate.input = Arc::new(new_scan);
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

/// True when the aggregate over the series' last rows equals the aggregate over all rows.
fn answerable_from_last_rows(table: &FabrikTable, group_by: &[Expr], aggregates: &[Expr]) -> bool {
    let groups_are_tags = group_by
        .iter()
        .all(|g| is_column_of_kind(table, g, |k| k == ColumnKind::Tag));
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
            if p.distinct
                || p.filter.is_some()
                || matches!(p.null_treatment, Some(NullTreatment::IgnoreNulls))
                || p.args.len() != 1
            {
                return false;
            }
            match f.func.name() {
                "last_value" => {
                    matches!(&p.args[0], Expr::Column(_))
                        && p.order_by.len() == 1
                        && p.order_by[0].asc
                        && is_time(table, &p.order_by[0].expr)
                }
                "max" => p.order_by.is_empty() && is_time(table, &p.args[0]),
                _ => false,
            }
        });
    groups_are_tags && aggregates_are_latest
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

/// One row per series of `batches` (all aligned to `schema`): the one with the largest time,
/// and among equal times the later one (batches are given oldest first).
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
    let mut by_series: HashMap<&[u8], usize> = HashMap::new();
    for (i, &t) in times.iter().enumerate() {
        by_series
            .entry(keys.key(i))
            .and_modify(|best| {
                if t >= times[*best] {
                    *best = i;
                }
            })
            .or_insert(i);
    }
    let mut latest: Vec<u32> = by_series
        .into_values()
        .map(|i| u32::try_from(i).unwrap_or(u32::MAX))
        .collect();
    latest.sort_unstable();
    Ok(Some(take_record_batch(&all, &UInt32Array::from(latest))?))
}

/// Rows decoded at a time from a segment file.
const READ_BATCH_ROWS: usize = 64 * 1024;

/// One row per series of a Parquet segment file (the one with the largest time), aligned to
/// `schema`. Reads the tag and time columns first, a batch at a time, to find those rows, then
/// decodes only them: a segment of millions of rows never sits in memory whole.
pub(crate) fn last_rows_of_segment(
    bytes: Bytes,
    schema: &SchemaRef,
) -> Result<Option<RecordBatch>, StoreError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())?;
    let file_schema = builder.schema().clone();
    let Ok(time_index) = file_schema.index_of(schema::TIME) else {
        return Err(StoreError::Internal(
            "segment without a `time` column".into(),
        ));
    };
    let tag_indices = schema::tag_indices(&file_schema);
    let mut key_indices = tag_indices.clone();
    key_indices.push(time_index);
    let mask = ProjectionMask::roots(builder.parquet_schema(), key_indices);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(READ_BATCH_ROWS)
        .build()?;
    // Series key (row-format bytes of its tags) → (row in the file, time).
    let mut latest: HashMap<Vec<u8>, (usize, i64)> = HashMap::new();
    let mut offset = 0usize;
    for batch in reader {
        let batch = batch?;
        let times = crate::batch::time_column(&batch)?;
        let tags = tag_indices
            .iter()
            .map(|&i| {
                let name = file_schema.field(i).name();
                batch.column_by_name(name).cloned().ok_or_else(|| {
                    StoreError::Internal(format!("segment read lost tag column `{name}`"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keys = SeriesKeys::new(&tags)?;
        for (i, &t) in times.iter().enumerate() {
            let key = keys.key(i);
            match latest.get_mut(key) {
                Some(best) if t >= best.1 => *best = (offset + i, t),
                Some(_) => {}
                None => {
                    latest.insert(key.to_vec(), (offset + i, t));
                }
            }
        }
        offset += batch.num_rows();
    }
    if latest.is_empty() {
        return Ok(None);
    }
    let mut wanted: Vec<usize> = latest.into_values().map(|(row, _)| row).collect();
    wanted.sort_unstable();
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
        .map(|b| {
            b.map_err(StoreError::from)
                .and_then(|b| crate::segments::align(&b, schema))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(concat_batches(schema, &batches)?))
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
        let from_file = last_rows_of_segment(file, &schema)
            .expect("read")
            .expect("rows");
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
