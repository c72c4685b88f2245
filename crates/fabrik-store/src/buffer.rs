//! The in-memory buffer: acknowledged rows not yet in Parquet, as Arrow batches per table and
//! time partition. Rows of the same series and time replace each other here (last write wins)
//! through a hash index, so the buffer never holds duplicates. Runs of small writes (one
//! MQTT reading each, say) are merged into one batch as they arrive, so a query or a persist
//! never walks thousands of one-row batches.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, StringArray, TimestampNanosecondArray};
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;

use crate::batch::{WriteChunk, time_column};
use crate::schema::{self, ColumnKind};
use crate::segments::align;

/// Where a buffered row is: batch number and row within the batch.
type RowAt = (u32, u32);

/// How far from the newest end a late row may land and still be inserted into the ordered
/// vector (a short move of its tail); later rows go to the `late` map.
const NEAR_END: usize = 64;

/// The rows of one series in a partition, by time.
#[derive(Default)]
struct SeriesRows {
    /// Rows in ascending time order: every row newer than all before it is appended here,
    /// which is how devices send, so the common write is a push onto a short, cached vector.
    /// A row a little late (out-of-order batches, concurrent writers) is inserted near its end.
    in_order: Vec<(i64, RowAt)>,
    /// Rows that arrived more than [`NEAR_END`] rows late, by time. A time is in one of the
    /// two, never both. (An empty map allocates nothing.)
    late: HashMap<i64, RowAt, ahash::RandomState>,
}

impl SeriesRows {
    /// Records a row at `time`; returns where the row it replaces was, if any.
    fn insert(&mut self, time: i64, at: RowAt) -> Option<RowAt> {
        match self.in_order.last() {
            Some(&(newest, _)) if time <= newest => {}
            _ => {
                self.in_order.push((time, at));
                return None;
            }
        }
        let position = match self.search(time) {
            Ok(i) => return Some(std::mem::replace(&mut self.in_order[i].1, at)),
            Err(position) => position,
        };
        if let Some(held) = self.late.get_mut(&time) {
            return Some(std::mem::replace(held, at));
        }
        if self.in_order.len() - position <= NEAR_END {
            self.in_order.insert(position, (time, at));
            return None;
        }
        self.late.insert(time, at)
    }

    fn get_mut(&mut self, time: i64) -> Option<&mut RowAt> {
        match self.search(time) {
            Ok(i) => Some(&mut self.in_order[i].1),
            Err(_) => self.late.get_mut(&time),
        }
    }

    /// Binary search of `in_order` for `time`, narrowed first by probing back from the newest
    /// end at distances 1, 2, 4, …: a late row is usually only a little late, and the vector's
    /// tail is in cache while its middle is not (a full binary search was 44 % of the apply
    /// thread's time in a profile).
    fn search(&self, time: i64) -> Result<usize, usize> {
        let len = self.in_order.len();
        let mut distance = 1;
        while distance < len && self.in_order[len - distance].0 > time {
            distance *= 2;
        }
        // Everything from `end` on is newer than `time` (checked by the previous probe).
        let start = len.saturating_sub(distance);
        let end = len - distance / 2;
        self.in_order[start..end]
            .binary_search_by_key(&time, |&(t, _)| t)
            .map(|i| start + i)
            .map_err(|i| start + i)
    }
}

/// Where each (series, time) of a partition is, per series. A single hash table over all rows
/// cost a random memory access per row and rehashes of a million entries (a fifth of the ingest
/// CPU in a profile); per-series vectors in time order take appends in cache.
#[derive(Default)]
struct RowIndex {
    series: HashMap<u64, SeriesRows, ahash::RandomState>,
}

impl RowIndex {
    fn insert(&mut self, key: (u64, i64), at: RowAt) -> Option<RowAt> {
        self.series.entry(key.0).or_default().insert(key.1, at)
    }

    fn get_mut(&mut self, key: (u64, i64)) -> Option<&mut RowAt> {
        self.series.get_mut(&key.0)?.get_mut(key.1)
    }
}

/// A batch with fewer rows than this counts as small.
const SMALL_BATCH_ROWS: usize = 1024;
/// This many small batches at the end of a partition are merged into one.
const MERGE_SMALL_BATCHES: usize = 32;

struct Buffered {
    batch: RecordBatch,
    series: Arc<[u64]>,
    deleted: Option<Vec<bool>>,
}

/// One time partition of one table.
#[derive(Default)]
pub struct PartitionBuffer {
    chunks: Vec<Buffered>,
    index: RowIndex,
    /// Smallest time held.
    pub min_time: i64,
    /// Largest time held.
    pub max_time: i64,
}

/// Rows of one partition as a query or the persister sees them.
#[derive(Debug, Clone)]
pub struct PartitionData {
    /// The partition.
    pub partition: i64,
    /// Smallest time.
    pub min_time: i64,
    /// Largest time.
    pub max_time: i64,
    /// The rows, de-duplicated, each batch with its own subset of the table's columns.
    pub batches: Vec<RecordBatch>,
}

/// The buffer of all tables.
#[derive(Default)]
pub struct Buffer {
    tables: HashMap<Arc<str>, BTreeMap<i64, PartitionBuffer>>,
    /// Approximate memory held.
    pub bytes: usize,
    /// Rows held (including replaced ones until persisted).
    pub rows: usize,
    /// The highest WAL sequence number applied.
    pub max_seq: u64,
}

fn tag_value<'a>(batch: &'a RecordBatch, name: &str, row: usize) -> Option<&'a str> {
    let col = batch
        .column_by_name(name)?
        .as_any()
        .downcast_ref::<StringArray>()?;
    col.is_valid(row).then(|| col.value(row))
}

/// True when two rows carry the same tag set (hash collisions are verified, never trusted).
fn same_series(a: &RecordBatch, ar: usize, b: &RecordBatch, br: usize) -> bool {
    let tags = |batch: &RecordBatch| -> Vec<String> {
        batch
            .schema()
            .fields()
            .iter()
            .filter(|f| schema::kind_of(f) == Some(ColumnKind::Tag))
            .map(|f| f.name().clone())
            .collect()
    };
    let names_a = tags(a);
    let names_b = tags(b);
    names_a
        .iter()
        .chain(names_b.iter())
        .all(|name| tag_value(a, name, ar) == tag_value(b, name, br))
}

impl PartitionBuffer {
    /// Merges the small batches at the end into one once there are enough of them, keeping
    /// the index pointing at the same rows. A merged batch stays small until it has
    /// `SMALL_BATCH_ROWS` rows, so it is merged again with the next run: each row is copied at
    /// most about `SMALL_BATCH_ROWS / MERGE_SMALL_BATCHES` times.
    fn merge_small_tail(&mut self) {
        let small = self
            .chunks
            .iter()
            .rev()
            .take_while(|c| c.batch.num_rows() < SMALL_BATCH_ROWS)
            .count();
        if small < MERGE_SMALL_BATCHES {
            return;
        }
        let first = self.chunks.len() - small;
        let tail = &self.chunks[first..];
        // The union of the columns, in order of first appearance; a column has one type per
        // table (the catalog enforces it), so the first field seen is the field.
        let mut fields: Vec<Arc<Field>> = Vec::new();
        for chunk in tail {
            for field in chunk.batch.schema().fields() {
                if !fields.iter().any(|f| f.name() == field.name()) {
                    fields.push(field.clone());
                }
            }
        }
        let schema = Arc::new(Schema::new(fields));
        let merged = tail
            .iter()
            .map(|c| align(&c.batch, &schema))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|aligned| Ok(concat_batches(&schema, &aligned)?));
        let Ok(merged) = merged else {
            // Leave the batches as they are: correct, only slower to scan.
            return;
        };
        let series: Arc<[u64]> = tail.iter().flat_map(|c| c.series.iter().copied()).collect();
        let any_deleted = tail.iter().any(|c| c.deleted.is_some());
        let deleted = any_deleted.then(|| {
            tail.iter()
                .flat_map(|c| match &c.deleted {
                    Some(d) => d.clone(),
                    None => vec![false; c.batch.num_rows()],
                })
                .collect::<Vec<bool>>()
        });
        let Ok(times) = time_column(&merged).map(<[i64]>::to_vec) else {
            return;
        };
        let new_batch = u32::try_from(first).unwrap_or(u32::MAX);
        let mut offset = 0u32;
        for (old_batch, chunk) in tail.iter().enumerate() {
            let old_batch = u32::try_from(first + old_batch).unwrap_or(u32::MAX);
            for row in 0..chunk.batch.num_rows() {
                let here = offset + u32::try_from(row).unwrap_or(u32::MAX);
                let key = (series[here as usize], times[here as usize]);
                if let Some(slot) = self.index.get_mut(key)
                    && *slot == (old_batch, row as u32)
                {
                    *slot = (new_batch, here);
                }
            }
            offset += u32::try_from(chunk.batch.num_rows()).unwrap_or(u32::MAX);
        }
        self.chunks.truncate(first);
        self.chunks.push(Buffered {
            batch: merged,
            series,
            deleted,
        });
    }
}

impl Buffer {
    /// True when nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Applies durable chunks, replacing rows of the same series and time.
    pub fn apply(&mut self, seq: u64, chunks: Vec<WriteChunk>) {
        self.max_seq = self.max_seq.max(seq);
        for chunk in chunks {
            // The time values stay shared with the batch: a clone of the buffer, not a copy.
            let Some(times) = chunk
                .batch
                .column_by_name(schema::TIME)
                .and_then(|c| c.as_any().downcast_ref::<TimestampNanosecondArray>())
                .map(|a| a.values().clone())
            else {
                continue;
            };
            self.bytes += chunk.batch.get_array_memory_size() + times.len() * 32;
            self.rows += times.len();
            let partitions = self.tables.entry(chunk.table.clone()).or_default();
            let part = partitions
                .entry(chunk.partition)
                .or_insert_with(|| PartitionBuffer {
                    min_time: i64::MAX,
                    max_time: i64::MIN,
                    ..PartitionBuffer::default()
                });
            let batch_no = u32::try_from(part.chunks.len()).unwrap_or(u32::MAX);
            part.chunks.push(Buffered {
                batch: chunk.batch,
                series: chunk.series,
                deleted: None,
            });
            let series = part.chunks[batch_no as usize].series.clone();
            for (row, (&time, &series)) in times.iter().zip(series.iter()).enumerate() {
                part.min_time = part.min_time.min(time);
                part.max_time = part.max_time.max(time);
                let here = (batch_no, u32::try_from(row).unwrap_or(u32::MAX));
                if let Some((old_batch, old_row)) = part.index.insert((series, time), here) {
                    let (ob, or) = (old_batch as usize, old_row as usize);
                    let new = &part.chunks[batch_no as usize].batch;
                    if same_series(&part.chunks[ob].batch, or, new, row) {
                        let old = &mut part.chunks[ob];
                        let rows = old.batch.num_rows();
                        old.deleted.get_or_insert_with(|| vec![false; rows])[or] = true;
                    }
                    // A 64-bit hash collision between two different series keeps both rows;
                    // the older one just stops being de-duplicated against later writes.
                }
            }
            part.merge_small_tail();
        }
    }

    /// The buffered rows of `table`, per partition, without replaced rows.
    pub fn table(&self, table: &str) -> Vec<PartitionData> {
        let Some(partitions) = self.tables.get(table) else {
            return Vec::new();
        };
        partitions
            .iter()
            .map(|(&partition, part)| PartitionData {
                partition,
                min_time: part.min_time,
                max_time: part.max_time,
                batches: part
                    .chunks
                    .iter()
                    .filter_map(|b| match &b.deleted {
                        None => Some(b.batch.clone()),
                        Some(deleted) => {
                            let keep = BooleanArray::from_iter(deleted.iter().map(|d| Some(!d)));
                            filter_record_batch(&b.batch, &keep).ok()
                        }
                    })
                    .filter(|b| b.num_rows() > 0)
                    .collect(),
            })
            .collect()
    }

    /// Names of the tables with buffered rows.
    pub fn table_names(&self) -> Vec<Arc<str>> {
        self.tables.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchBuilder;
    use crate::schema::Catalog;
    use fabrik_core::line_protocol::parse_body;
    use fabrik_core::{Lineage, Precision, RawMessageId, SourceId};

    fn chunks(catalog: &Catalog, body: &str) -> Vec<WriteChunk> {
        let lineage = Lineage {
            source: SourceId::http(),
            raw_id: RawMessageId(1),
            mapping_version: 0,
        };
        let mut b = BatchBuilder::new(0, lineage);
        for line in parse_body(body).expect("parse") {
            b.add_line(&line, Precision::Ns).expect("add");
        }
        b.finish(catalog, i64::MAX).expect("finish")
    }

    fn values(buffer: &Buffer) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for part in buffer.table("m") {
            for batch in part.batches {
                let hosts = batch.column_by_name("host").expect("host");
                let hosts = hosts.as_any().downcast_ref::<StringArray>().expect("str");
                let v = batch.column_by_name("v").expect("v");
                let v = v
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::Float64Array>()
                    .expect("f64");
                for i in 0..batch.num_rows() {
                    out.push((hosts.value(i).to_owned(), v.value(i)));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn the_same_series_and_time_keeps_the_last_value() {
        let catalog = Catalog::default();
        let mut buffer = Buffer::default();
        buffer.apply(
            1,
            chunks(
                &catalog,
                "m,host=a v=1 10\nm,host=b v=2 10\nm,host=a v=3 10",
            ),
        );
        buffer.apply(2, chunks(&catalog, "m,host=b v=4 10"));
        assert_eq!(values(&buffer), vec![("a".into(), 3.0), ("b".into(), 4.0)]);
        assert_eq!(buffer.max_seq, 2);
    }

    /// A series written in order, then late, then again at times already held (in both the
    /// in-order and the late part of its index), in one-row writes that get merged too.
    #[test]
    fn late_and_repeated_times_of_a_series_keep_one_row_each_with_the_last_value() {
        let catalog = Catalog::default();
        let mut buffer = Buffer::default();
        let writes = [
            (10, 1.0),
            (20, 2.0),
            (30, 3.0),
            (15, 4.0),
            (20, 5.0),
            (15, 6.0),
            (5, 7.0),
            (40, 8.0),
            (5, 9.0),
            (30, 10.0),
        ];
        let mut seq = 0;
        for round in 0..5 {
            for (time, v) in writes {
                seq += 1;
                let v = v + f64::from(round) * 100.0;
                buffer.apply(seq, chunks(&catalog, &format!("m,host=a v={v} {time}")));
            }
        }
        let mut rows: Vec<(i64, f64)> = Vec::new();
        for part in buffer.table("m") {
            for batch in part.batches {
                let times = time_column(&batch).expect("time").to_vec();
                let v = batch.column_by_name("v").expect("v");
                let v = v
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::Float64Array>()
                    .expect("f64");
                rows.extend(times.iter().zip(v.values().iter()).map(|(t, v)| (*t, *v)));
            }
        }
        rows.sort_by_key(|r| r.0);
        assert_eq!(
            rows,
            vec![
                (5, 409.0),
                (10, 401.0),
                (15, 406.0),
                (20, 405.0),
                (30, 410.0),
                (40, 408.0)
            ]
        );
    }

    #[test]
    fn small_writes_are_merged_and_still_replace_each_other() {
        let catalog = Catalog::default();
        let mut buffer = Buffer::default();
        let hosts = 40;
        // One row per write, each host once; some writes carry an extra column.
        for i in 0..hosts {
            let line = if i % 3 == 0 {
                format!("m,host=h{i:02} v={i},extra=1i 10")
            } else {
                format!("m,host=h{i:02} v={i} 10")
            };
            buffer.apply(i + 1, chunks(&catalog, &line));
        }
        // Replace a row that now lives in a merged batch, and one that does not yet.
        buffer.apply(100, chunks(&catalog, "m,host=h03 v=1003 10"));
        buffer.apply(101, chunks(&catalog, "m,host=h39 v=1039 10"));
        let parts = buffer.table("m");
        assert_eq!(parts.len(), 1);
        assert!(
            parts[0].batches.len() < 12,
            "{} batches for {hosts} one-row writes",
            parts[0].batches.len()
        );
        let got = values(&buffer);
        assert_eq!(got.len(), hosts as usize, "{got:?}");
        for (i, (host, v)) in got.iter().enumerate() {
            assert_eq!(host, &format!("h{i:02}"));
            let want = match i {
                3 => 1003.0,
                39 => 1039.0,
                _ => i as f64,
            };
            assert_eq!(*v, want, "host {host}");
        }
    }

    #[test]
    fn series_rows_agree_with_an_ordered_map_for_near_and_far_late_rows() {
        let mut rows = SeriesRows::default();
        let mut model: BTreeMap<i64, RowAt> = BTreeMap::new();
        let mut next = crate::test_noise(0x9e37_79b9_7f4a_7c15);
        let mut newest = 0_i64;
        for n in 0..20_000_u32 {
            // Mostly in order; some a few rows late, some far (past NEAR_END), some repeats.
            let time = match next(10) {
                0..=5 => {
                    newest += 1 + next(3) as i64;
                    newest
                }
                6 | 7 => newest - next(40) as i64,
                8 => newest - next(2_000) as i64,
                _ => newest - next(5) as i64,
            };
            let at = (n, n);
            assert_eq!(
                rows.insert(time, at),
                model.insert(time, at),
                "write {n} at {time}"
            );
            let probe = newest - next(3_000) as i64;
            assert_eq!(
                rows.get_mut(probe).copied(),
                model.get(&probe).copied(),
                "{probe}"
            );
        }
        assert!(!rows.late.is_empty(), "far-late rows took the map");
        assert!(
            rows.in_order.windows(2).all(|w| w[0].0 < w[1].0),
            "vector sorted"
        );
        assert!(
            rows.in_order
                .iter()
                .all(|(t, _)| !rows.late.contains_key(t))
        );
        assert_eq!(rows.in_order.len() + rows.late.len(), model.len());
    }
}
