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

use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::tree_node::Transformed;
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::expr::NullTreatment;
use datafusion::logical_expr::{Expr, LogicalPlan, TableScan};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

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
    let tags: Vec<usize> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| schema::kind_of(f) == Some(ColumnKind::Tag))
        .map(|(i, _)| i)
        .collect();
    let times = crate::batch::time_column(&all)?;
    let mut latest: Vec<u32> = Vec::new();
    if tags.is_empty() {
        // One series: the table's measurement alone.
        let mut best = 0usize;
        for (i, &t) in times.iter().enumerate() {
            if t >= times[best] {
                best = i;
            }
        }
        latest.push(u32::try_from(best).unwrap_or(u32::MAX));
    } else {
        let converter = RowConverter::new(
            tags.iter()
                .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                .collect(),
        )?;
        let keys: Vec<_> = tags.iter().map(|&i| all.column(i).clone()).collect();
        let rows = converter.convert_columns(&keys)?;
        let mut by_series: HashMap<_, usize> = HashMap::new();
        for (i, &t) in times.iter().enumerate() {
            by_series
                .entry(rows.row(i))
                .and_modify(|best: &mut usize| {
                    if t >= times[*best] {
                        *best = i;
                    }
                })
                .or_insert(i);
        }
        latest = by_series
            .into_values()
            .map(|i| u32::try_from(i).unwrap_or(u32::MAX))
            .collect();
        latest.sort_unstable();
    }
    Ok(Some(take_record_batch(&all, &UInt32Array::from(latest))?))
}
