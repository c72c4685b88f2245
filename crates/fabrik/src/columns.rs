//! Typed columns of a store query's result, as the pipelines and the alert rules read them:
//! each column cast to the Arrow type the reader needs (times and ids to integers, tags to
//! text, values to floats), whatever type the table stored.

use datafusion::arrow::array::{Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use fabrik_store::Store;

/// Column `index` of `batch` cast to `to` and read as `T` (the array type of `to`); `what`
/// names the column in the error when it does not come out as `T`.
pub(crate) fn cast_column<T: Array + Clone + 'static>(
    batch: &RecordBatch,
    index: usize,
    to: &DataType,
    what: &str,
) -> Result<T, String> {
    let cast =
        datafusion::arrow::compute::cast(batch.column(index), to).map_err(|e| e.to_string())?;
    // Arrow arrays share their buffers: the clone copies no values.
    cast.as_any()
        .downcast_ref::<T>()
        .cloned()
        .ok_or_else(|| what.to_owned())
}

/// The one value `sql` selects (an aggregate such as `CAST(min(time) AS BIGINT)`) as an
/// integer: `None` when the query returns no row or NULL (no row matched).
pub(crate) async fn query_i64(store: &Store, sql: &str) -> Result<Option<i64>, String> {
    let output = store.query(sql).await.map_err(|e| e.to_string())?;
    let Some(batch) = output.batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    let column: Int64Array = cast_column(batch, 0, &DataType::Int64, "an integer")?;
    Ok((!column.is_null(0)).then(|| column.value(0)))
}
