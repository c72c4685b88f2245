//! Turns parsed line protocol and JSON points into Arrow record batches, one per table and
//! time partition ([`WriteChunk`]), checking types against the catalog. All or nothing: the
//! first bad line fails the whole request before anything reaches the WAL.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayBuilder, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringArray,
    StringBuilder, TimestampNanosecondArray, UInt32Array, UInt64Array, UInt64Builder,
};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::record_batch::RecordBatch;
use fabrik_core::line_protocol::{FieldLayout, FieldValue, Line, parse_known_fields};
use fabrik_core::{FieldType, Lineage, Point, Precision, Quality, Value};

use crate::StoreError;
use crate::schema::{self, Catalog, ColumnKind, arrow_field};

/// Rows of one table in one time partition, ready for the WAL and the buffer.
#[derive(Debug, Clone)]
pub struct WriteChunk {
    /// The table.
    pub table: Arc<str>,
    /// The partition: `time.div_euclid(partition_width)`.
    pub partition: i64,
    /// The rows, with the columns this request used (a subset of the table's schema).
    pub batch: RecordBatch,
    /// The series-key hash of each row (see [`series_hash`]), for de-duplication.
    pub series: Arc<[u64]>,
}

/// Hashes a series key: the set of tag pairs, in any order (pair hashes are summed, so
/// `a=1,b=2` and `b=2,a=1` agree without sorting). Stable within a process run; equal hashes
/// are verified against the tag values before rows replace each other.
pub fn series_hash<'a>(tags: impl Iterator<Item = (&'a str, &'a str)>) -> u64 {
    let state = ahash::RandomState::with_seeds(0x5eed, 0xfab1, 0x7a65, 0x1234);
    let mut sum = 0u64;
    for (k, v) in tags {
        let mut h = state.build_hasher();
        h.write(k.as_bytes());
        h.write_u8(0xff);
        h.write(v.as_bytes());
        sum = sum.wrapping_add(h.finish());
    }
    // Mix the sum so that small sets do not share low bits.
    let mut h = state.build_hasher();
    h.write_u64(sum);
    h.finish()
}

/// A parsed series key (measurement and tags) with its hash, cached by the write path so that
/// lines of a known series skip parsing their tags.
///
/// The key as written, the measurement and the tags live in one string rather than one
/// allocation each: every line of a cached series compares its key with the written one and
/// copies its tag values from here, and one or two cache lines are cheaper to reach than a
/// dozen scattered ones.
#[derive(Debug, Clone)]
pub struct SeriesKey {
    /// The key as written (escaped), then the measurement and each tag's key and value,
    /// unescaped and back to back.
    text: Box<str>,
    /// Where each piece of `text` ends: the written key, the measurement, then each tag's key
    /// and value.
    ends: Box<[u32]>,
    /// [`series_hash`] of the tags.
    pub hash: u64,
    /// Where the builder identified by the first number put this series: its table and the
    /// range of its tag columns in that builder's `resolved_columns`. A cached key resolves
    /// once per request this way, without a per-request map.
    resolved: Option<(u64, usize, std::ops::Range<usize>)>,
}

impl SeriesKey {
    /// The series key of a parsed line whose key was written as `written`; `None` for a key
    /// too long to index with 32 bits (which no body under the size limit can hold).
    pub fn of_line(line: &Line<'_>, written: &str) -> Option<Self> {
        let mut text = String::from(written);
        let mut ends = Vec::with_capacity(2 + 2 * line.tags.len());
        let end = |text: &String| u32::try_from(text.len()).ok();
        ends.push(end(&text)?);
        text.push_str(&line.measurement);
        ends.push(end(&text)?);
        for (key, value) in &line.tags {
            text.push_str(key);
            ends.push(end(&text)?);
            text.push_str(value);
            ends.push(end(&text)?);
        }
        Some(Self {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
            hash: series_hash(line.tags.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))),
            resolved: None,
        })
    }

    /// The key as it was written on the line (measurement and tags, escaped).
    #[inline]
    pub fn written(&self) -> &str {
        &self.text[..self.ends[0] as usize]
    }

    /// The measurement.
    pub fn measurement(&self) -> &str {
        &self.text[self.ends[0] as usize..self.ends[1] as usize]
    }

    /// The number of tags.
    pub fn tag_count(&self) -> usize {
        (self.ends.len() - 2) / 2
    }

    /// The tags as written: (key, value) pairs.
    pub fn tags(&self) -> impl Iterator<Item = (&str, &str)> {
        self.ends[1..].windows(3).step_by(2).map(|bounds| {
            let [start, middle, end] = [bounds[0], bounds[1], bounds[2]].map(|b| b as usize);
            (&self.text[start..middle], &self.text[middle..end])
        })
    }

    /// The tag values in order, for the hot path that copies them into columns.
    #[inline]
    pub fn tag_values(&self) -> impl Iterator<Item = &str> {
        self.ends[2..]
            .chunks_exact(2)
            .map(|bounds| &self.text[bounds[0] as usize..bounds[1] as usize])
    }
}

/// Recomputes the series hashes of a batch from its tag columns (used on WAL replay).
pub fn series_of_batch(batch: &RecordBatch) -> Arc<[u64]> {
    let schema = batch.schema();
    let tags: Vec<(&str, &StringArray)> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| schema::kind_of(f) == Some(ColumnKind::Tag))
        .filter_map(|(i, f)| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .map(|a| (f.name().as_str(), a))
        })
        .collect();
    (0..batch.num_rows())
        .map(|row| {
            series_hash(
                tags.iter()
                    .filter(|(_, a)| a.is_valid(row))
                    .map(|(k, a)| (*k, a.value(row))),
            )
        })
        .collect()
}

enum ColData {
    Str(StringBuilder),
    F64(Float64Builder),
    I64(Int64Builder),
    U64(UInt64Builder),
    Bool(BooleanBuilder),
}

impl ColData {
    /// A column with room for `rows` rows (0: as much as Arrow's `Builder::new()` reserves).
    fn new(kind: ColumnKind, rows: usize) -> Self {
        // What Arrow's builders reserve in `new()`: 1,024 items (and 1,024 string bytes).
        const ARROW_DEFAULT_ROWS: usize = 1024;
        let (rows, string_bytes) = match rows {
            0 => (ARROW_DEFAULT_ROWS, ARROW_DEFAULT_ROWS),
            rows => (rows, rows * 8),
        };
        match kind {
            ColumnKind::Field(FieldType::Float) => Self::F64(Float64Builder::with_capacity(rows)),
            ColumnKind::Field(FieldType::Integer) => Self::I64(Int64Builder::with_capacity(rows)),
            ColumnKind::Field(FieldType::UInteger) => Self::U64(UInt64Builder::with_capacity(rows)),
            ColumnKind::Field(FieldType::Boolean) => {
                Self::Bool(BooleanBuilder::with_capacity(rows))
            }
            _ => Self::Str(StringBuilder::with_capacity(rows, string_bytes)),
        }
    }

    #[inline(always)]
    fn len(&self) -> usize {
        match self {
            Self::Str(b) => b.len(),
            Self::F64(b) => b.len(),
            Self::I64(b) => b.len(),
            Self::U64(b) => b.len(),
            Self::Bool(b) => b.len(),
        }
    }

    /// Appends nulls up to `rows` rows (a column the previous rows did not have).
    #[inline(always)]
    fn pad_to(&mut self, rows: usize) {
        if self.len() < rows {
            self.append_nulls(rows - self.len());
        }
    }

    /// Appends a field value as row `row` (nulls first if the column missed earlier rows);
    /// the catalog and `TableRows::column` keep types matching, a mismatch appends nothing.
    #[inline(always)]
    fn append_field(&mut self, row: usize, value: &FieldValue<'_>) {
        self.pad_to(row);
        match (self, value) {
            (Self::F64(b), FieldValue::F64(x)) => b.append_value(*x),
            (Self::I64(b), FieldValue::I64(x)) => b.append_value(*x),
            (Self::U64(b), FieldValue::U64(x)) => b.append_value(*x),
            (Self::Bool(b), FieldValue::Bool(x)) => b.append_value(*x),
            (Self::Str(b), FieldValue::Str(x)) => b.append_value(x),
            _ => {}
        }
    }

    #[inline(never)]
    fn append_nulls(&mut self, missing: usize) {
        match self {
            Self::Str(b) => (0..missing).for_each(|_| b.append_null()),
            Self::F64(b) => b.append_nulls(missing),
            Self::I64(b) => b.append_nulls(missing),
            Self::U64(b) => b.append_nulls(missing),
            Self::Bool(b) => (0..missing).for_each(|_| b.append_null()),
        }
    }

    /// The column's array, without the room reserved beyond its rows.
    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Str(b) => shrunk(b.finish()),
            Self::F64(b) => shrunk(b.finish()),
            Self::I64(b) => shrunk(b.finish()),
            Self::U64(b) => shrunk(b.finish()),
            Self::Bool(b) => shrunk(b.finish()),
        }
    }
}

/// An array without the room reserved beyond its rows: the buffer keeps arrays for minutes,
/// and shrinking a large allocation in place does not copy it.
fn shrunk<A: Array + 'static>(mut array: A) -> ArrayRef {
    array.shrink_to_fit();
    Arc::new(array)
}

struct ColBuilder {
    name: String,
    kind: ColumnKind,
    data: ColData,
    first_line: String,
}

struct TableRows {
    name: String,
    /// Rows to reserve room for in each new column (0: grow as needed).
    row_hint: usize,
    time: Vec<i64>,
    series: Vec<u64>,
    quality: Vec<Quality>,
    lineage: Vec<u32>,
    columns: Vec<ColBuilder>,
    index: HashMap<String, usize>,
    /// Column indices used by the previous row, position by position: rows of one table
    /// usually repeat their columns in the same order, so this skips the hash lookup.
    last_order: Vec<usize>,
    /// The fields of the table's latest line that went through the general parser, with
    /// their columns: the template [`BatchBuilder::add_known_series_line`] tries first.
    layout: Option<(FieldLayout, Vec<usize>)>,
}

impl TableRows {
    fn new(name: &str, row_hint: usize) -> Self {
        Self {
            name: name.to_owned(),
            row_hint,
            time: Vec::with_capacity(row_hint),
            series: Vec::with_capacity(row_hint),
            quality: Vec::with_capacity(row_hint),
            lineage: Vec::with_capacity(row_hint),
            columns: Vec::new(),
            index: HashMap::new(),
            last_order: Vec::new(),
            layout: None,
        }
    }

    /// Makes `line`'s fields, just appended to columns `columns`, the table's layout unless
    /// it already is.
    fn remember_layout(&mut self, line: &Line<'_>, columns: &[usize]) {
        if let Some((layout, known)) = &self.layout
            && known.as_slice() == columns
            && layout.matches(line)
        {
            return;
        }
        self.layout = FieldLayout::of_line(line).map(|layout| (layout, columns.to_vec()));
    }

    /// Finds or adds the column for position `pos` of the current row, checking its kind.
    fn column(
        &mut self,
        pos: usize,
        name: &str,
        kind: ColumnKind,
        location: &dyn Fn() -> String,
    ) -> Result<usize, StoreError> {
        let idx = match self.last_order.get(pos) {
            Some(&i) if self.columns[i].name == name => i,
            _ => match self.index.get(name) {
                Some(&i) => i,
                None => {
                    schema::check_column(None, name, kind).map_err(|reason| {
                        StoreError::SchemaConflict {
                            location: location(),
                            table: self.name.clone(),
                            column: name.to_owned(),
                            reason,
                        }
                    })?;
                    let i = self.columns.len();
                    self.columns.push(ColBuilder {
                        name: name.to_owned(),
                        kind,
                        data: ColData::new(kind, self.row_hint),
                        first_line: location(),
                    });
                    self.index.insert(name.to_owned(), i);
                    i
                }
            },
        };
        let col = &self.columns[idx];
        if col.kind != kind {
            let existing = schema::Column {
                name: col.name.clone(),
                kind: col.kind,
            };
            let reason = schema::check_column(Some(&existing), name, kind)
                .err()
                .unwrap_or_else(|| "conflicting types".into());
            return Err(StoreError::SchemaConflict {
                location: location(),
                table: self.name.clone(),
                column: name.to_owned(),
                reason: format!(
                    "{reason} (first used {})",
                    col.first_line.trim_end_matches(": ")
                ),
            });
        }
        if pos < self.last_order.len() {
            self.last_order[pos] = idx;
        } else {
            self.last_order.push(idx);
        }
        Ok(idx)
    }

    fn row(&self) -> usize {
        self.time.len()
    }
}

static NEXT_BUILDER_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The most rows a hint reserves room for.
const MAX_ROW_HINT: usize = 1 << 20;

/// Accumulates one request's rows.
pub struct BatchBuilder {
    tables: Vec<TableRows>,
    table_index: HashMap<String, usize>,
    last_table: usize,
    default_time: i64,
    lineages: Vec<Lineage>,
    rows: usize,
    /// Identifies this builder in [`SeriesKey`] resolutions.
    id: u64,
    /// Tag column indices of the resolved series; their resolutions range into it.
    resolved_columns: Vec<usize>,
    /// Scratch: the column of each field of the line being added.
    field_columns: Vec<usize>,
    /// Scratch: the field values of a line that follows its table's layout.
    known_values: Vec<FieldValue<'static>>,
    /// Lines added by [`BatchBuilder::add_known_series_line`].
    lines_by_layout: usize,
    /// Rows each new table reserves room for (see [`BatchBuilder::with_row_hint`]).
    row_hint: usize,
}

impl BatchBuilder {
    /// A builder; rows without a timestamp get `default_time` (the receipt time).
    pub fn new(default_time: i64, lineage: Lineage) -> Self {
        Self {
            tables: Vec::new(),
            table_index: HashMap::new(),
            last_table: usize::MAX,
            default_time,
            lineages: vec![lineage],
            rows: 0,
            id: NEXT_BUILDER_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            resolved_columns: Vec::new(),
            field_columns: Vec::new(),
            known_values: Vec::new(),
            lines_by_layout: 0,
            row_hint: 0,
        }
    }

    /// Has every table reserve room for about `rows` rows up front, so that columns do not
    /// grow by copying (reallocation was 7 % of the ingest CPU in a profile); what is not
    /// used is released when the batch is built.
    pub fn with_row_hint(mut self, rows: usize) -> Self {
        self.row_hint = rows.min(MAX_ROW_HINT);
        self
    }

    /// Rows added so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Rows that took the layout fast path ([`BatchBuilder::add_known_series_line`]).
    pub fn lines_by_layout(&self) -> usize {
        self.lines_by_layout
    }

    /// Rows added after this call carry `lineage`.
    pub fn set_lineage(&mut self, lineage: Lineage) {
        if self.lineages.last() != Some(&lineage) {
            self.lineages.push(lineage);
        }
    }

    fn table(&mut self, name: &str) -> usize {
        if let Some(t) = self.tables.get(self.last_table)
            && t.name == name
        {
            return self.last_table;
        }
        let idx = match self.table_index.get(name) {
            Some(&i) => i,
            None => {
                // The k-th table of a request reserves 1/k of the hint: a body of one table
                // gets all of it, two alternating tables half each, and a body of thousands of
                // tables reserves a bounded total (the harmonic sum), not thousands of hints.
                let hint = self.row_hint / (self.tables.len() + 1);
                self.tables.push(TableRows::new(name, hint));
                let i = self.tables.len() - 1;
                self.table_index.insert(name.to_owned(), i);
                i
            }
        };
        self.last_table = idx;
        idx
    }

    /// Adds one parsed line.
    pub fn add_line(&mut self, line: &Line<'_>, precision: Precision) -> Result<(), StoreError> {
        let hash = series_hash(line.tags.iter().map(|(k, v)| (k.as_ref(), v.as_ref())));
        self.add_row(
            &line.measurement,
            line.tags.iter().map(|(k, v)| (k.as_ref(), v.as_ref())),
            hash,
            line,
            precision,
        )
    }

    /// The table and tag columns of a series parsed earlier, resolved once per builder.
    fn resolve(
        &mut self,
        series: &mut SeriesKey,
        line_number: usize,
    ) -> Result<(usize, std::ops::Range<usize>), StoreError> {
        if let Some((id, table, columns)) = &series.resolved
            && *id == self.id
        {
            return Ok((*table, columns.clone()));
        }
        let location = move || format!("line {line_number}: ");
        let t = self.table(series.measurement());
        let table = &mut self.tables[t];
        let start = self.resolved_columns.len();
        for (pos, (k, _)) in series.tags().enumerate() {
            let c = table.column(pos, k, ColumnKind::Tag, &location)?;
            self.resolved_columns.push(c);
        }
        let columns = start..self.resolved_columns.len();
        series.resolved = Some((self.id, t, columns.clone()));
        Ok((t, columns))
    }

    /// Appends a resolved series' tag values to the current row of its table.
    fn append_tags(table: &mut TableRows, tag_columns: &[usize], series: &SeriesKey) {
        let row = table.row();
        for (&c, v) in tag_columns.iter().zip(series.tag_values()) {
            let col = &mut table.columns[c].data;
            col.pad_to(row);
            if let ColData::Str(b) = col {
                b.append_value(v);
            }
        }
    }

    /// Ends the current row of `table`.
    fn push_row(&mut self, t: usize, time: i64, series: u64, quality: Quality) {
        let lineage = u32::try_from(self.lineages.len() - 1).unwrap_or(u32::MAX);
        let table = &mut self.tables[t];
        table.time.push(time);
        table.series.push(series);
        table.quality.push(quality);
        table.lineage.push(lineage);
        self.rows += 1;
    }

    /// Adds the line `text` of a series parsed earlier (`text[..key_len]` is its key) when its
    /// fields follow the table's layout, the common case, without the general parser. Returns
    /// false, having added nothing, when they do not: the caller then parses the line and
    /// adds it with [`BatchBuilder::add_series_line`].
    pub fn add_known_series_line(
        &mut self,
        series: &mut SeriesKey,
        text: &str,
        key_len: usize,
        line_number: usize,
        precision: Precision,
    ) -> Result<bool, StoreError> {
        let (t, tag_columns) = self.resolve(series, line_number)?;
        let Some((layout, _)) = &self.tables[t].layout else {
            return Ok(false);
        };
        let Some(timestamp) = parse_known_fields(text, key_len, layout, &mut self.known_values)
        else {
            return Ok(false);
        };
        let time = self.nanos(timestamp, line_number, precision)?;
        let table = &mut self.tables[t];
        Self::append_tags(table, &self.resolved_columns[tag_columns], series);
        let row = table.row();
        let TableRows {
            columns, layout, ..
        } = table;
        let field_columns = layout.as_ref().map_or(&[][..], |(_, c)| c.as_slice());
        for (&c, value) in field_columns.iter().zip(&self.known_values) {
            columns[c].data.append_field(row, value);
        }
        self.push_row(t, time, series.hash, Quality::Good);
        self.lines_by_layout += 1;
        Ok(true)
    }

    /// Adds a line whose series key was parsed earlier into `series` (only the fields and
    /// timestamp of `line` are read).
    pub fn add_series_line(
        &mut self,
        series: &mut SeriesKey,
        line: &Line<'_>,
        precision: Precision,
    ) -> Result<(), StoreError> {
        let (t, tag_columns) = self.resolve(series, line.line_number)?;
        let time = self.line_time(line, precision)?;
        let table = &mut self.tables[t];
        Self::append_tags(table, &self.resolved_columns[tag_columns], series);
        Self::add_fields(table, series.tag_count(), line, &mut self.field_columns)?;
        self.push_row(t, time, series.hash, Quality::Good);
        Ok(())
    }

    fn line_time(&self, line: &Line<'_>, precision: Precision) -> Result<i64, StoreError> {
        self.nanos(line.timestamp, line.line_number, precision)
    }

    /// A line's timestamp as written, in nanoseconds; the receipt time when it has none.
    fn nanos(
        &self,
        timestamp: Option<i64>,
        line_number: usize,
        precision: Precision,
    ) -> Result<i64, StoreError> {
        match timestamp {
            Some(t) => precision.to_nanos(t).map_err(|e| StoreError::InvalidPoint {
                location: format!("line {line_number}"),
                reason: e.to_string(),
            }),
            None => Ok(self.default_time),
        }
    }

    /// Appends a line's fields to the current row, starting at column position `pos`, and
    /// makes them the table's layout. `field_columns` is scratch space.
    fn add_fields(
        table: &mut TableRows,
        mut pos: usize,
        line: &Line<'_>,
        field_columns: &mut Vec<usize>,
    ) -> Result<(), StoreError> {
        let line_no = line.line_number;
        let location = move || format!("line {line_no}: ");
        let row = table.row();
        field_columns.clear();
        for (k, v) in &line.fields {
            let kind = ColumnKind::Field(v.field_type());
            let c = table.column(pos, k, kind, &location)?;
            pos += 1;
            field_columns.push(c);
            table.columns[c].data.append_field(row, v);
        }
        table.remember_layout(line, field_columns);
        Ok(())
    }

    fn add_row<'t>(
        &mut self,
        measurement: &str,
        tags: impl Iterator<Item = (&'t str, &'t str)>,
        hash: u64,
        line: &Line<'_>,
        precision: Precision,
    ) -> Result<(), StoreError> {
        let line_no = line.line_number;
        let location = move || format!("line {line_no}: ");
        let time = self.line_time(line, precision)?;
        let lineage = u32::try_from(self.lineages.len() - 1).unwrap_or(u32::MAX);
        let t = self.table(measurement);
        let table = &mut self.tables[t];
        let row = table.row();
        let mut pos = 0;
        for (k, v) in tags {
            let c = table.column(pos, k, ColumnKind::Tag, &location)?;
            pos += 1;
            let col = &mut table.columns[c].data;
            col.pad_to(row);
            if let ColData::Str(b) = col {
                if b.len() == row + 1 {
                    continue; // duplicate key in one line is rejected by the parser
                }
                b.append_value(v);
            }
        }
        Self::add_fields(table, pos, line, &mut self.field_columns)?;
        table.time.push(time);
        table.series.push(hash);
        table.quality.push(Quality::Good);
        table.lineage.push(lineage);
        self.rows += 1;
        Ok(())
    }

    /// Adds one JSON point; `location` names it in errors (e.g. `samples[3]`).
    pub fn add_point(&mut self, point: &Point, location: &str) -> Result<(), StoreError> {
        let invalid = |reason: String| StoreError::InvalidPoint {
            location: location.to_owned(),
            reason,
        };
        if point.measurement.is_empty() {
            return Err(invalid("measurement must not be empty".into()));
        }
        if point.fields.is_empty() {
            return Err(invalid("a point needs at least one field".into()));
        }
        let loc = format!("{location}: ");
        let location_fn = move || loc.clone();
        let lineage = u32::try_from(self.lineages.len() - 1).unwrap_or(u32::MAX);
        let t = self.table(&point.measurement);
        let table = &mut self.tables[t];
        let row = table.row();
        let mut pos = 0;
        let mut tags: Vec<(&str, &str)> = Vec::with_capacity(point.tags.len());
        for (k, v) in &point.tags {
            if k.is_empty() || v.is_empty() {
                return Err(invalid(format!(
                    "tag `{k}` must have a non-empty key and value"
                )));
            }
            if tags.iter().any(|(seen, _)| *seen == k) {
                return Err(invalid(format!("duplicate tag `{k}`")));
            }
            tags.push((k, v));
            let c = table.column(pos, k, ColumnKind::Tag, &location_fn)?;
            pos += 1;
            let col = &mut table.columns[c].data;
            col.pad_to(row);
            if let ColData::Str(b) = col {
                b.append_value(v);
            }
        }
        for (k, v) in &point.fields {
            if k.is_empty() {
                return Err(invalid("field names must not be empty".into()));
            }
            if let Value::F64(x) = v
                && !x.is_finite()
            {
                return Err(invalid(format!("field `{k}` is not a finite number")));
            }
            let c = table.column(pos, k, ColumnKind::Field(v.field_type()), &location_fn)?;
            pos += 1;
            let col = &mut table.columns[c].data;
            col.pad_to(row);
            match (col, v) {
                (ColData::F64(b), Value::F64(x)) => b.append_value(*x),
                (ColData::I64(b), Value::I64(x)) => b.append_value(*x),
                (ColData::U64(b), Value::U64(x)) => b.append_value(*x),
                (ColData::Bool(b), Value::Bool(x)) => b.append_value(*x),
                (ColData::Str(b), Value::Str(x)) => b.append_value(x),
                // The same field twice in one point: the first value stands.
                _ => {}
            }
        }
        table.time.push(point.time.nanos());
        table.series.push(series_hash(tags.into_iter()));
        table.quality.push(point.quality);
        table.lineage.push(lineage);
        self.rows += 1;
        Ok(())
    }

    /// Checks every table against the catalog (extending it) and builds the chunks, split by
    /// time partition of width `partition_ns`.
    pub fn finish(
        self,
        catalog: &Catalog,
        partition_ns: i64,
    ) -> Result<Vec<WriteChunk>, StoreError> {
        if self.rows == 0 {
            return Err(StoreError::Empty);
        }
        let mut chunks = Vec::new();
        for mut table in self.tables {
            let wanted: Vec<(&str, ColumnKind, String)> = table
                .columns
                .iter()
                .map(|c| (c.name.as_str(), c.kind, c.first_line.clone()))
                .collect();
            let schema = catalog.ensure(&table.name, &wanted)?;
            let rows = table.time.len();
            let mut fields = Vec::with_capacity(table.columns.len() + 5);
            let mut arrays: Vec<ArrayRef> = Vec::with_capacity(table.columns.len() + 5);
            for col in &mut table.columns {
                col.data.pad_to(rows);
                fields.push(arrow_field(&col.name, col.kind));
                arrays.push(col.data.finish());
            }
            fields.push(arrow_field(schema::TIME, ColumnKind::Time));
            arrays.push(shrunk(TimestampNanosecondArray::from(std::mem::take(
                &mut table.time,
            ))));
            let lineage = |i: &u32| &self.lineages[*i as usize];
            fields.push(arrow_field(schema::SOURCE, ColumnKind::System));
            arrays.push(Arc::new(StringArray::from_iter_values(
                table.lineage.iter().map(|i| lineage(i).source.0.as_str()),
            )));
            fields.push(arrow_field(schema::RAW_ID, ColumnKind::System));
            arrays.push(Arc::new(UInt64Array::from_iter_values(
                table.lineage.iter().map(|i| lineage(i).raw_id.0),
            )));
            fields.push(arrow_field(schema::MAPPING_VERSION, ColumnKind::System));
            arrays.push(Arc::new(UInt32Array::from_iter_values(
                table.lineage.iter().map(|i| lineage(i).mapping_version),
            )));
            fields.push(arrow_field(schema::QUALITY, ColumnKind::System));
            arrays.push(Arc::new(StringArray::from_iter_values(
                table.quality.iter().map(|q| q.name()),
            )));
            let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;
            split_by_partition(&schema.name, batch, table.series, partition_ns, &mut chunks)?;
        }
        Ok(chunks)
    }
}

/// The time partition of a timestamp.
pub fn partition_of(time: i64, partition_ns: i64) -> i64 {
    time.div_euclid(partition_ns)
}

fn split_by_partition(
    table: &Arc<str>,
    batch: RecordBatch,
    series: Vec<u64>,
    partition_ns: i64,
    out: &mut Vec<WriteChunk>,
) -> Result<(), StoreError> {
    let times = time_column(&batch)?;
    let first = times.first().map_or(0, |t| partition_of(*t, partition_ns));
    if times
        .iter()
        .all(|t| partition_of(*t, partition_ns) == first)
    {
        out.push(WriteChunk {
            table: table.clone(),
            partition: first,
            batch,
            series: series.into(),
        });
        return Ok(());
    }
    let mut groups: std::collections::BTreeMap<i64, Vec<u32>> = std::collections::BTreeMap::new();
    for (i, t) in times.iter().enumerate() {
        groups
            .entry(partition_of(*t, partition_ns))
            .or_default()
            .push(u32::try_from(i).unwrap_or(u32::MAX));
    }
    for (partition, rows) in groups {
        let idx = datafusion::arrow::array::UInt32Array::from(rows.clone());
        let part = take_record_batch(&batch, &idx)?;
        out.push(WriteChunk {
            table: table.clone(),
            partition,
            batch: part,
            series: rows.iter().map(|&r| series[r as usize]).collect(),
        });
    }
    Ok(())
}

/// Checks a batch written elsewhere (another Fabrik's WAL, through the uplink) before it
/// enters this store: every column named once and of a kind this store knows, with the Arrow
/// type of that kind; a `time` column without nulls; the four lineage and quality columns.
/// Then types the columns against the catalog and splits the rows by partition.
/// `location` prefixes errors, which are all [`StoreError::InvalidPoint`] or
/// [`StoreError::SchemaConflict`] (the sender's fault, never this store's).
pub fn chunks_from_arrow(
    catalog: &Catalog,
    table: &str,
    batch: RecordBatch,
    partition_ns: i64,
    location: &str,
) -> Result<Vec<WriteChunk>, StoreError> {
    let invalid = |reason: String| StoreError::InvalidPoint {
        location: location.to_owned(),
        reason,
    };
    if table.is_empty() {
        return Err(invalid("the table name is empty".to_owned()));
    }
    if batch.num_rows() == 0 {
        return Err(StoreError::Empty);
    }
    let arrow_schema = batch.schema();
    let mut seen = std::collections::HashSet::new();
    let mut wanted: Vec<(&str, ColumnKind, String)> = Vec::new();
    for field in arrow_schema.fields() {
        let name = field.name().as_str();
        if !seen.insert(name) {
            return Err(invalid(format!("column `{name}` appears twice")));
        }
        let kind = schema::kind_of(field)
            .ok_or_else(|| invalid(format!("column `{name}` has no Fabrik column kind")))?;
        let expected = arrow_field(name, kind);
        if field.data_type() != expected.data_type() {
            return Err(invalid(format!(
                "column `{name}` is {} but its kind needs {}",
                field.data_type(),
                expected.data_type()
            )));
        }
        match kind {
            ColumnKind::Time if name != schema::TIME => {
                return Err(invalid(format!("column `{name}` claims to be the time")));
            }
            ColumnKind::System if !schema::SYSTEM_COLUMNS[1..].contains(&name) => {
                return Err(invalid(format!("`{name}` is not a system column")));
            }
            ColumnKind::Tag | ColumnKind::Field(_) => {
                wanted.push((name, kind, location.to_owned()));
            }
            _ => {}
        }
    }
    for required in schema::SYSTEM_COLUMNS {
        if !seen.contains(required) {
            return Err(invalid(format!("column `{required}` is missing")));
        }
    }
    if batch
        .column_by_name(schema::TIME)
        .is_some_and(|c| c.null_count() > 0)
    {
        return Err(invalid("the `time` column has nulls".to_owned()));
    }
    let schema = catalog.ensure(table, &wanted)?;
    let series = series_of_batch(&batch).to_vec();
    let mut chunks = Vec::new();
    split_by_partition(&schema.name, batch, series, partition_ns, &mut chunks)?;
    Ok(chunks)
}

/// The `time` column of a batch as nanoseconds.
pub fn time_column(batch: &RecordBatch) -> Result<&[i64], StoreError> {
    batch
        .column_by_name(schema::TIME)
        .and_then(|c| c.as_any().downcast_ref::<TimestampNanosecondArray>())
        .map(|a| a.values().as_ref())
        .ok_or_else(|| StoreError::Internal("batch without a nanosecond `time` column".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabrik_core::line_protocol::parse_body;
    use fabrik_core::{RawMessageId, SourceId};

    fn lineage() -> Lineage {
        Lineage {
            source: SourceId::http(),
            raw_id: RawMessageId(42),
            mapping_version: 0,
        }
    }

    fn build(body: &str) -> Result<Vec<WriteChunk>, StoreError> {
        let catalog = Catalog::default();
        let mut b = BatchBuilder::new(7, lineage());
        for line in parse_body(body)? {
            b.add_line(&line, Precision::Ns)?;
        }
        b.finish(&catalog, 1_000)
    }

    #[test]
    fn sparse_columns_are_null_padded_and_tag_order_does_not_change_the_series() {
        let chunks = build("m,a=1,b=2 x=1 10\nm,b=2,a=1 y=2i 20\nm c=\"s\"").expect("build");
        assert_eq!(chunks.len(), 1);
        let c = &chunks[0];
        assert_eq!(c.batch.num_rows(), 3);
        assert_eq!(c.series[0], c.series[1]);
        assert_ne!(c.series[0], c.series[2]);
        let x = c.batch.column_by_name("x").expect("x");
        assert_eq!(x.null_count(), 2);
        assert_eq!(time_column(&c.batch).expect("time"), &[10, 20, 7]);
        assert_eq!(series_of_batch(&c.batch).as_ref(), c.series.as_ref());
    }

    #[test]
    fn rows_split_by_partition() {
        let chunks = build("m v=1 10\nm v=2 2500\nm v=3 20").expect("build");
        let parts: Vec<(i64, usize)> = chunks
            .iter()
            .map(|c| (c.partition, c.batch.num_rows()))
            .collect();
        assert_eq!(parts, vec![(0, 2), (2, 1)]);
    }

    #[test]
    fn a_type_conflict_inside_one_request_names_both_lines() {
        let err = build("m v=1 1\nm v=1i 2").expect_err("conflict");
        let msg = err.to_string();
        assert!(msg.contains("line 2") && msg.contains("line 1"), "{msg}");
    }
}
