//! Typed columns of a store query's result, as the pipelines and the alert rules read them:
//! each column cast to the Arrow type the reader needs (times and ids to integers, tags to
//! text, values to floats), whatever type the table stored.

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::DataType;

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
