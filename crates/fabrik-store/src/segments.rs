//! Parquet segments: sorting and de-duplicating rows (last write wins), encoding them as
//! Parquet, and reading them back for compaction and overlap resolution.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt32Array, new_null_array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;

use crate::StoreError;
use crate::schema;

/// Projects a batch onto the table schema: missing columns become nulls, order follows the
/// schema.
pub fn align(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, StoreError> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch.clone());
    }
    let rows = batch.num_rows();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| {
            batch
                .column_by_name(f.name())
                .cloned()
                .unwrap_or_else(|| new_null_array(f.data_type(), rows))
        })
        .collect();
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Concatenates `batches` (oldest first), sorts by tags then time, and keeps only the last
/// row of each (series, time). Returns `None` for no rows.
pub fn sort_dedup(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Option<RecordBatch>, StoreError> {
    let aligned: Vec<RecordBatch> = batches
        .iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| align(b, schema))
        .collect::<Result<_, _>>()?;
    if aligned.is_empty() {
        return Ok(None);
    }
    let all = concat_batches(schema, &aligned)?;
    let key_columns: Vec<usize> = schema::tag_indices(schema)
        .into_iter()
        .chain(schema.index_of(schema::TIME).ok())
        .collect();
    let converter = RowConverter::new(
        key_columns
            .iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect(),
    )?;
    let keys: Vec<ArrayRef> = key_columns.iter().map(|&i| all.column(i).clone()).collect();
    let rows = converter.convert_columns(&keys)?;
    let mut order: Vec<u32> = (0..u32::try_from(all.num_rows()).unwrap_or(u32::MAX)).collect();
    // Ties broken by position, so within one key the newest row comes last.
    order.sort_unstable_by(|&a, &b| {
        rows.row(a as usize)
            .cmp(&rows.row(b as usize))
            .then(a.cmp(&b))
    });
    let mut keep: Vec<u32> = Vec::with_capacity(order.len());
    for (i, &idx) in order.iter().enumerate() {
        let is_last_of_key = order
            .get(i + 1)
            .is_none_or(|&next| rows.row(next as usize) != rows.row(idx as usize));
        if is_last_of_key {
            keep.push(idx);
        }
    }
    if keep.len() == all.num_rows() && keep.windows(2).all(|w| w[0] < w[1]) {
        return Ok(Some(all));
    }
    Ok(Some(take_record_batch(&all, &UInt32Array::from(keep))?))
}

/// Encodes a batch as one Parquet file (zstd).
pub fn encode_parquet(batch: &RecordBatch) -> Result<Vec<u8>, StoreError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_max_row_group_row_count(Some(1 << 20))
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(props))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(out)
}

/// Decodes a whole Parquet file.
pub fn decode_parquet(bytes: Bytes) -> Result<Vec<RecordBatch>, StoreError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?
        .with_batch_size(64 * 1024)
        .build()?;
    let mut out = Vec::new();
    for batch in reader {
        out.push(batch?);
    }
    Ok(out)
}

/// Min and max of the `time` column.
pub fn time_range(batch: &RecordBatch) -> Result<(i64, i64), StoreError> {
    let times = crate::batch::time_column(batch)?;
    let min = times.iter().copied().min().unwrap_or(0);
    let max = times.iter().copied().max().unwrap_or(0);
    Ok((min, max))
}

/// The shared handle to the segment object store.
pub type Objects = Arc<dyn object_store::ObjectStore>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchBuilder;
    use crate::schema::Catalog;
    use datafusion::arrow::array::{Array, Float64Array};
    use fabrik_core::line_protocol::parse_body;
    use fabrik_core::{Lineage, Precision, RawMessageId, SourceId};

    #[test]
    fn sort_dedup_keeps_the_newest_row_per_series_and_time() {
        let catalog = Catalog::default();
        let lineage = Lineage {
            source: SourceId::http(),
            raw_id: RawMessageId(1),
            mapping_version: 0,
        };
        let mut batches = Vec::new();
        for body in [
            "m,h=b v=1 20\nm,h=a v=2 10",
            "m,h=a v=3 10\nm,h=a,x=1 v=4 10",
        ] {
            let mut b = BatchBuilder::new(0, lineage.clone());
            for line in parse_body(body).expect("parse") {
                b.add_line(&line, Precision::Ns).expect("add");
            }
            batches.extend(
                b.finish(&catalog, i64::MAX)
                    .expect("finish")
                    .into_iter()
                    .map(|c| c.batch),
            );
        }
        let schema = catalog.get("m").expect("m").arrow();
        let out = sort_dedup(&schema, &batches).expect("dedup").expect("rows");
        let v = out.column_by_name("v").expect("v");
        let v = v.as_any().downcast_ref::<Float64Array>().expect("f64");
        // (h=a, 10) → 3 (newest); (h=a,x=1, 10) is another series → 4; (h=b, 20) → 1.
        let got: Vec<f64> = (0..v.len()).map(|i| v.value(i)).collect();
        assert_eq!(got, vec![3.0, 4.0, 1.0]);
        let bytes = encode_parquet(&out).expect("encode");
        let back = decode_parquet(Bytes::from(bytes)).expect("decode");
        assert_eq!(back.iter().map(RecordBatch::num_rows).sum::<usize>(), 3);
    }
}
