//! Time-weighted means of a rollup's intervals (`<field>_twa` and the seconds they cover,
//! `<field>_held_s`; decision 0087): each good sample of a field stands for its value until
//! the series' next sample of that field, for at most `hold` — what a report-by-exception
//! signal (Sparkplug, OPC UA subscriptions with a deadband) was over an interval is the values
//! that stood, not the samples that arrived. A bad sample, or a `_point_errors` row of the
//! table (a point the device did not answer, a Sparkplug metric gone stale with its node),
//! ends the value before it. The values standing where a later step starts are carried to
//! it, so a pass reads its own rows only, not `hold` before them.

use std::collections::HashMap;
use std::time::Duration;

use datafusion::arrow::array::{
    Array, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::DataType;
use fabrik_core::{Point, Quality, Timestamp, Value};
use fabrik_runtime::config::RollupSettings;
use fabrik_store::Store;

use super::{StoredSummaries, TIME_WEIGHTED, TIME_WEIGHTED_SECONDS, align_down, nanos};
use crate::columns::cast_column;
use crate::readings::POINT_ERRORS_TABLE;
use crate::sql_text::{identifier, literal};

/// The rows one query reads at first; shrunk after a read of more than [`MOST_ROWS_READ`]
/// rows to what would have been that many, doubled after one of less than a quarter of them
/// (and kept for the next step), so a step of a busy table is not held in memory whole.
const FIRST_READ: Duration = Duration::from_secs(600);
/// The most rows one read should return.
const MOST_ROWS_READ: usize = 1_000_000;
/// The shortest and longest stretch of rows one read covers.
const SHORTEST_READ: Duration = Duration::from_secs(1);
const LONGEST_READ: Duration = Duration::from_secs(86_400);

/// A series: its tags' values, `None` where a tag is unset.
type Series = Vec<Option<String>>;

/// A field's value standing, and since when (nanoseconds).
type Stood = Option<(i64, f64)>;

/// Per series, each field's value standing at one time.
type Standing = HashMap<Series, Vec<Stood>>;

/// Per device, the times of its points it did not answer and the field each is, in time order.
type PointErrors = HashMap<String, Vec<(i64, usize)>>;

/// Per interval start and series, per field: the sum of each value times the nanoseconds it
/// stood, and those nanoseconds.
pub(super) type HeldSums = HashMap<(i64, Vec<(String, String)>), Vec<(f64, i64)>>;

/// The values standing at the starts of steps to come: where the next step of a pass starts,
/// and where the next pass is expected to start (the intervals still within the lateness are
/// summarised again). A step that starts elsewhere — the first after a start, a pass late
/// enough to start later — reads the rows `hold` before it instead.
#[derive(Default)]
pub(super) struct Carried {
    /// The table's tags and the fields summarised when the values were taken: a field index
    /// means nothing once they change.
    columns: (Vec<String>, Vec<String>),
    at: HashMap<i64, Standing>,
    /// How much time one read of rows covers, as the last step left it.
    read_ns: Option<i64>,
}

/// What a step found standing at the times wanted next, for [`Carried::keep`] once the
/// step's summaries are written.
pub(super) struct Taken {
    tags: Vec<String>,
    fields: Vec<String>,
    at: Vec<(i64, Standing)>,
    wanted: Vec<i64>,
}

impl Carried {
    /// The values standing at `from`, if carried for these columns. They stay until a step
    /// succeeds, so a step that failed is tried again without reading back.
    fn get(&self, from: i64, tags: &[String], fields: &[String]) -> Option<Standing> {
        if self.columns.0 != tags || self.columns.1 != fields {
            return None;
        }
        self.at.get(&from).cloned()
    }

    /// Keeps what a step that succeeded found standing, and only what is wanted next.
    pub(super) fn keep(&mut self, taken: Taken) {
        if self.columns.0 != taken.tags || self.columns.1 != taken.fields {
            self.columns = (taken.tags, taken.fields);
            self.at.clear();
        }
        self.at.extend(taken.at);
        self.at.retain(|at, _| taken.wanted.contains(at));
    }
}

/// A step's time-weighted sums, per interval and series: its rows read (with the rows `hold`
/// before it when nothing is carried to its start), and the values standing at `wanted`
/// (within the step), for `carried` to keep once the step's summaries are written.
pub(super) async fn time_weighted(
    store: &Store,
    rollup: &RollupSettings,
    tags: &[String],
    fields: &[String],
    (from, to): (i64, i64),
    carried: &mut Carried,
    wanted: &[i64],
) -> Result<(HeldSums, Taken), String> {
    let initial = carried.get(from, tags, fields);
    let read_from = match initial {
        Some(_) => from,
        None => from.saturating_sub(nanos(rollup.hold)),
    };
    let mut standing = initial.unwrap_or_default();
    let mut sums = HeldSums::new();
    let mut taken = Vec::new();
    let mut read_ns = carried.read_ns.unwrap_or(nanos(FIRST_READ));
    let mut read_start = read_from;
    while read_start < to {
        let read_end = read_start.saturating_add(read_ns).min(to);
        let output = store
            .query(&held_values_sql(rollup, tags, fields, read_start, read_end))
            .await
            .map_err(|e| e.to_string())?;
        let errors = point_errors(store, rollup, tags, fields, read_start, read_end).await?;
        // The values standing at the wanted times within this read (its start too, for the
        // first), and at its end, where the next read starts.
        let mut captures: Vec<i64> = wanted
            .iter()
            .copied()
            .filter(|at| {
                (from..=to).contains(at)
                    && (read_start < *at || (read_start == read_from && read_start == *at))
                    && *at <= read_end
            })
            .chain(std::iter::once(read_end))
            .collect();
        captures.sort_unstable();
        captures.dedup();
        let held = HeldValues {
            read_from: read_start,
            from: from.max(read_start),
            to: read_end,
            every_ns: nanos(rollup.every).max(1),
            hold_ns: nanos(rollup.hold),
        };
        let mut at_captures = held.sums(
            &output.batches,
            (tags, fields.len()),
            std::mem::take(&mut standing),
            (&captures, &errors),
            &mut sums,
        )?;
        standing = at_captures.pop().unwrap_or_default();
        taken.extend(
            captures
                .iter()
                .copied()
                .zip(at_captures)
                .filter(|(at, _)| wanted.contains(at)),
        );
        if wanted.contains(&read_end) {
            taken.push((read_end, standing.clone()));
        }
        let rows: usize = output.batches.iter().map(RecordBatch::num_rows).sum();
        read_ns = if rows > MOST_ROWS_READ {
            let scaled = read_ns as f64 * MOST_ROWS_READ as f64 / rows as f64;
            (scaled as i64).max(nanos(SHORTEST_READ))
        } else if rows < MOST_ROWS_READ / 4 {
            read_ns.saturating_mul(2).min(nanos(LONGEST_READ))
        } else {
            read_ns
        };
        read_start = read_end;
    }
    carried.read_ns = Some(read_ns);
    let taken = Taken {
        tags: tags.to_vec(),
        fields: fields.to_vec(),
        at: taken,
        wanted: wanted.to_vec(),
    };
    Ok((sums, taken))
}

/// The points of the table's devices that were not answered in `[since, to)`: Modbus and OPC
/// UA write those to `_point_errors` with the table the value would have gone to, not to the
/// table. By the `device` tag; none when the table has no `device` tag.
async fn point_errors(
    store: &Store,
    rollup: &RollupSettings,
    tags: &[String],
    fields: &[String],
    since: i64,
    to: i64,
) -> Result<PointErrors, String> {
    let mut errors = PointErrors::new();
    if !tags.iter().any(|tag| tag == "device")
        || !store.has_column(POINT_ERRORS_TABLE, "table_name")
    {
        return Ok(errors);
    }
    let signals: Vec<String> = fields.iter().map(|field| literal(field)).collect();
    let sql = format!(
        "SELECT CAST(time AS BIGINT), CAST(device AS VARCHAR), CAST(signal AS VARCHAR) FROM {} \
         WHERE time >= to_timestamp_nanos({since}) AND time < to_timestamp_nanos({to}) AND \
         table_name = {} AND signal IN ({})",
        identifier(POINT_ERRORS_TABLE),
        literal(&rollup.table),
        signals.join(", ")
    );
    let output = store.query(&sql).await.map_err(|e| e.to_string())?;
    for batch in &output.batches {
        let times: Int64Array = cast_column(batch, 0, &DataType::Int64, "time")?;
        let devices: StringArray = cast_column(batch, 1, &DataType::Utf8, "device")?;
        let signals: StringArray = cast_column(batch, 2, &DataType::Utf8, "signal")?;
        for row in 0..batch.num_rows() {
            if times.is_null(row) || devices.is_null(row) || signals.is_null(row) {
                continue;
            }
            if let Some(field) = fields.iter().position(|f| f == signals.value(row)) {
                errors
                    .entry(devices.value(row).to_owned())
                    .or_default()
                    .push((times.value(row), field));
            }
        }
    }
    for device_errors in errors.values_mut() {
        device_errors.sort_unstable();
    }
    Ok(errors)
}

/// The rows time-weighted means are made from: `[since, to)`, with whether each is of good
/// quality. A series is its tags' values, as in the summary query. Not ordered: a sort by
/// every tag cost the query most of its time, and [`HeldValues::sums`] groups the rows by
/// series itself.
fn held_values_sql(
    rollup: &RollupSettings,
    tags: &[String],
    fields: &[String],
    since: i64,
    to: i64,
) -> String {
    let mut columns = vec!["CAST(time AS BIGINT)".to_owned()];
    columns.extend(
        tags.iter()
            .map(|tag| format!("CAST({} AS VARCHAR)", identifier(tag))),
    );
    columns.push("(_quality IS NULL OR _quality <> 'bad')".to_owned());
    columns.extend(
        fields
            .iter()
            .map(|field| format!("CAST({} AS DOUBLE)", identifier(field))),
    );
    let any_value: Vec<String> = fields
        .iter()
        .map(|field| format!("{} IS NOT NULL", identifier(field)))
        .collect();
    format!(
        "SELECT {} FROM {} WHERE time >= to_timestamp_nanos({since}) AND time < \
         to_timestamp_nanos({to}) AND ({})",
        columns.join(", "),
        identifier(&rollup.table),
        any_value.join(" OR ")
    )
}

/// How one read's values stand over the intervals of `[from, to)`.
struct HeldValues {
    /// Where this read starts: the device's unanswered points from here on are its to count.
    read_from: i64,
    /// Where the step's time counts from (its start, or this read's if later).
    from: i64,
    to: i64,
    every_ns: i64,
    hold_ns: i64,
}

/// One series as its rows are walked.
struct Walk<'a> {
    series: Series,
    standing: Vec<Stood>,
    /// Per interval of the read (from the one `from` falls in), per field: the sums so far.
    intervals: Vec<(f64, i64)>,
    /// How many of the capture times are behind.
    captured: usize,
    /// The series' device's unanswered points, and how many of them are behind.
    errors: &'a [(i64, usize)],
    next_error: usize,
}

/// A batch's columns as [`held_values_sql`] selects them.
struct Columns {
    times: Int64Array,
    tags: Vec<StringArray>,
    good: BooleanArray,
    values: Vec<Float64Array>,
}

impl Columns {
    fn of(batch: &RecordBatch, tags: usize, fields: usize) -> Result<Self, String> {
        Ok(Self {
            times: cast_column(batch, 0, &DataType::Int64, "time")?,
            tags: (0..tags)
                .map(|i| cast_column::<StringArray>(batch, 1 + i, &DataType::Utf8, "a tag"))
                .collect::<Result<_, _>>()?,
            good: cast_column(batch, 1 + tags, &DataType::Boolean, "the quality")?,
            values: (0..fields)
                .map(|f| {
                    cast_column::<Float64Array>(batch, 2 + tags + f, &DataType::Float64, "a field")
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// Row `row`'s value of tag `i`.
    fn tag(&self, i: usize, row: usize) -> Option<&str> {
        let column = &self.tags[i];
        (!column.is_null(row)).then(|| column.value(row))
    }
}

/// A row: its time, batch and index in the batch.
type RowAt = (i64, u32, u32);

impl HeldValues {
    /// Adds to `sums` what the rows [`held_values_sql`] selects stood for, starting from the
    /// values standing in `initial`; returns the values standing at each of `captures`
    /// (sorted, within the read, its end last).
    fn sums(
        &self,
        batches: &[RecordBatch],
        (tags, fields): (&[String], usize),
        mut initial: Standing,
        (captures, errors): (&[i64], &PointErrors),
        sums: &mut HeldSums,
    ) -> Result<Vec<Standing>, String> {
        let mut taken = vec![Standing::new(); captures.len()];
        let device = tags.iter().position(|tag| tag == "device");
        let walk_of = |series: Series, standing: Vec<Stood>| {
            let errors: &[(i64, usize)] = device
                .and_then(|d| series[d].as_deref())
                .and_then(|device| errors.get(device))
                .map_or(&[], Vec::as_slice);
            // Those before this read counted in the one before.
            let next_error = errors.partition_point(|(at, _)| *at < self.read_from);
            Walk {
                series,
                standing,
                intervals: Vec::new(),
                captured: 0,
                errors,
                next_error,
            }
        };
        let columns = batches
            .iter()
            .map(|batch| Columns::of(batch, tags.len(), fields))
            .collect::<Result<Vec<_>, _>>()?;
        // The rows of each series: by a hash of the tags' values, the series' values compared
        // only where two share one.
        let mut by_hash: HashMap<u64, Vec<usize>> = HashMap::new();
        let mut series_rows: Vec<(Series, Vec<RowAt>)> = Vec::new();
        let hasher = std::hash::RandomState::new();
        for (b, batch) in columns.iter().enumerate() {
            for row in 0..batch.times.len() {
                if batch.times.is_null(row) {
                    continue;
                }
                let hash = {
                    use std::hash::{BuildHasher, Hash, Hasher};
                    let mut state = hasher.build_hasher();
                    for i in 0..tags.len() {
                        batch.tag(i, row).hash(&mut state);
                    }
                    state.finish()
                };
                let ids = by_hash.entry(hash).or_default();
                let same = ids.iter().copied().find(|&id| {
                    series_rows[id]
                        .0
                        .iter()
                        .enumerate()
                        .all(|(i, tag)| tag.as_deref() == batch.tag(i, row))
                });
                let id = match same {
                    Some(id) => id,
                    None => {
                        let series = (0..tags.len())
                            .map(|i| batch.tag(i, row).map(str::to_owned))
                            .collect();
                        series_rows.push((series, Vec::new()));
                        ids.push(series_rows.len() - 1);
                        series_rows.len() - 1
                    }
                };
                let at = (
                    batch.times.value(row),
                    u32::try_from(b).unwrap_or(u32::MAX),
                    u32::try_from(row).unwrap_or(u32::MAX),
                );
                series_rows[id].1.push(at);
            }
        }
        for (series, mut rows) in series_rows {
            rows.sort_unstable_by_key(|(time, _, _)| *time);
            let standing = initial
                .remove(&series)
                .unwrap_or_else(|| vec![None; fields]);
            let mut walk = walk_of(series, standing);
            for (time, b, row) in rows {
                let (batch, row) = (&columns[b as usize], row as usize);
                // An error at the row's time ends the value before the row, not the row's:
                // a device's birth right after it was marked stale counts.
                let errors_before = time.saturating_add(1);
                self.advance(&mut walk, (time, errors_before), captures, &mut taken);
                let good = batch.good.is_valid(row) && batch.good.value(row);
                for (f, column) in batch.values.iter().enumerate() {
                    if column.is_null(row) {
                        continue;
                    }
                    self.end_value(&mut walk, f, time);
                    let value = column.value(row);
                    // A bad sample ends the value before it and stands for nothing itself.
                    walk.standing[f] = (good && value.is_finite()).then_some((time, value));
                }
            }
            self.finish(walk, tags, captures, &mut taken, sums);
        }
        // Series with values carried in and no row in this read: their values stand on.
        for (series, standing) in initial {
            self.finish(walk_of(series, standing), tags, captures, &mut taken, sums);
        }
        Ok(taken)
    }

    /// Brings a walk up to `time`: the device's unanswered points before `errors_before`
    /// end the values standing then, and the values standing at each capture time up to
    /// `time` are taken (before a row or an error at that time counts). A value that can
    /// stand no longer there is not taken.
    fn advance(
        &self,
        walk: &mut Walk<'_>,
        (time, errors_before): (i64, i64),
        captures: &[i64],
        taken: &mut [Standing],
    ) {
        loop {
            let error = walk
                .errors
                .get(walk.next_error)
                .copied()
                .filter(|(at, _)| *at < errors_before);
            let capture = captures
                .get(walk.captured)
                .copied()
                .filter(|at| *at <= time);
            match (error, capture) {
                (Some((at, field)), capture) if capture.is_none_or(|c| at < c) => {
                    self.end_value(walk, field, at);
                    walk.next_error += 1;
                }
                (_, Some(at)) => {
                    let still: Vec<Stood> = walk
                        .standing
                        .iter()
                        .map(|stood| {
                            stood.filter(|(since, _)| since.saturating_add(self.hold_ns) > at)
                        })
                        .collect();
                    if still.iter().any(Option::is_some) {
                        taken[walk.captured].insert(walk.series.clone(), still);
                    }
                    walk.captured += 1;
                }
                _ => break,
            }
        }
    }

    /// Field `f`'s value, if one stands, stands until `until` and no longer.
    fn end_value(&self, walk: &mut Walk<'_>, f: usize, until: i64) {
        if let Some((since, value)) = walk.standing[f].take() {
            let fields = walk.standing.len();
            self.stand(&mut walk.intervals, (f, fields), since, until, value);
        }
    }

    /// Ends a series' walk in this read: its values still standing stand until the read ends
    /// (or `hold_ns`; the next read carries them on from there), and its sums join the
    /// step's.
    fn finish(
        &self,
        mut walk: Walk<'_>,
        tags: &[String],
        captures: &[i64],
        taken: &mut [Standing],
        sums: &mut HeldSums,
    ) {
        // Errors at the read's end are the next read's.
        self.advance(&mut walk, (self.to, self.to), captures, taken);
        for f in 0..walk.standing.len() {
            self.end_value(&mut walk, f, self.to);
        }
        let series: Vec<(String, String)> = tags
            .iter()
            .zip(walk.series)
            .filter_map(|(tag, value)| Some((tag.clone(), value?)))
            .collect();
        let fields = walk.standing.len().max(1);
        let first = align_down(self.from, self.every_ns);
        for (offset, field_sums) in walk.intervals.chunks(fields).enumerate() {
            if field_sums.iter().all(|(_, held_ns)| *held_ns == 0) {
                continue;
            }
            let start = first.saturating_add(self.every_ns.saturating_mul(offset as i64));
            let field_sums = field_sums.to_vec();
            match sums.get_mut(&(start, series.clone())) {
                Some(sum) => {
                    for (total, part) in sum.iter_mut().zip(field_sums) {
                        total.0 += part.0;
                        total.1 += part.1;
                    }
                }
                None => {
                    sums.insert((start, series.clone()), field_sums);
                }
            }
        }
    }

    /// Field `f`'s `value` standing from `since` until `until` (or `hold_ns` after `since`, if
    /// sooner), added to the intervals of the read it overlaps (`intervals` holds `fields`
    /// sums per interval, from the one `from` falls in).
    fn stand(
        &self,
        intervals: &mut Vec<(f64, i64)>,
        (f, fields): (usize, usize),
        since: i64,
        until: i64,
        value: f64,
    ) {
        let start = since.max(self.from);
        let end = until.min(since.saturating_add(self.hold_ns)).min(self.to);
        if end <= start {
            return;
        }
        let first = align_down(self.from, self.every_ns);
        let mut interval = align_down(start, self.every_ns);
        while interval < end {
            let next = interval.saturating_add(self.every_ns);
            let overlap = end.min(next) - start.max(interval);
            // Within the read: at most its length in intervals, each `fields` wide.
            debug_assert!(interval >= first, "a value counts from `from` on");
            let at = usize::try_from((interval - first) / self.every_ns)
                .unwrap_or(0)
                .saturating_mul(fields)
                .saturating_add(f);
            if intervals.len() <= at {
                intervals.resize(at - f + fields, (0.0, 0));
            }
            intervals[at].0 += value * overlap as f64;
            intervals[at].1 += overlap;
            interval = next;
        }
    }
}

/// Adds each field's time-weighted mean (`<field>_twa`) and the seconds it covers
/// (`<field>_held_s`) to the summary of its interval and series, or as a summary of its own
/// where no sample fell in the interval (a value standing since an earlier one).
pub(super) fn add_time_weighted(
    points: &mut Vec<Point>,
    held: HeldSums,
    rollup: &RollupSettings,
    fields: &[String],
) {
    let mut at: HashMap<(i64, Vec<(String, String)>), usize> = points
        .iter()
        .enumerate()
        .map(|(i, point)| ((point.time.nanos(), point.tags.clone()), i))
        .collect();
    for ((start, series), sums) in held {
        let means: Vec<(String, Value)> = fields
            .iter()
            .zip(sums)
            .filter(|(_, (_, held_ns))| *held_ns > 0)
            .map(|(field, (weighted, held_ns))| (field, weighted / held_ns as f64, held_ns))
            .filter(|(_, mean, _)| mean.is_finite())
            .flat_map(|(field, mean, held_ns)| {
                [
                    (format!("{field}_{TIME_WEIGHTED}"), Value::F64(mean)),
                    (
                        format!("{field}_{TIME_WEIGHTED_SECONDS}"),
                        Value::F64(held_ns as f64 / 1e9),
                    ),
                ]
            })
            .collect();
        if means.is_empty() {
            continue;
        }
        match at.get(&(start, series.clone())) {
            Some(&i) => points[i].fields.extend(means),
            None => {
                at.insert((start, series.clone()), points.len());
                points.push(Point {
                    measurement: rollup.into.clone(),
                    tags: series,
                    fields: means,
                    time: Timestamp(start),
                    quality: Quality::Good,
                });
            }
        }
    }
}

/// For each summary stored with time-weighted means that nothing stands in any longer (a late
/// bad sample, a shorter `hold`): one saying no value stood (`<field>_held_s = 0`), to write
/// over it — a row written over is replaced whole, and rows are not deleted.
pub(super) fn nothing_stood(
    points: &[Point],
    existing: &StoredSummaries,
    rollup: &RollupSettings,
    fields: &[String],
) -> Vec<Point> {
    let summarised: std::collections::HashSet<(i64, &[(String, String)])> = points
        .iter()
        .map(|point| (point.time.nanos(), point.tags.as_slice()))
        .collect();
    let mut nothing_stood = Vec::new();
    for ((time, series), stored) in existing {
        if summarised.contains(&(*time, series.as_slice())) {
            continue;
        }
        let fields: Vec<(String, Value)> = fields
            .iter()
            .filter(|field| {
                let twa = format!("{field}_{TIME_WEIGHTED}");
                stored.iter().any(|(name, _)| *name == twa)
            })
            .map(|field| (format!("{field}_{TIME_WEIGHTED_SECONDS}"), Value::F64(0.0)))
            .collect();
        if !fields.is_empty() {
            nothing_stood.push(Point {
                measurement: rollup.into.clone(),
                tags: series.clone(),
                fields,
                time: Timestamp(*time),
                quality: Quality::Good,
            });
        }
    }
    nothing_stood
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SECOND: i64 = 1_000_000_000;
    const MINUTE: i64 = 60 * SECOND;

    #[tokio::test]
    async fn values_carried_to_the_next_step_sum_as_reading_the_rows_before_it_does() {
        // p1 changes in each minute; p2 reported once, long before; p3's value stood for
        // longer than `hold` by the second step.
        let (_dir, store) = crate::test_store::store_with(&format!(
            "pump,device=p1 pressure=4.0,speed=1.0 {}\n\
             pump,device=p1 pressure=6.0 {}\n\
             pump,device=p1 speed=3.0 {}\n\
             pump,device=p1 pressure=9.0 {}\n\
             pump,device=p2 pressure=5.0 {}\n\
             pump,device=p2 pressure=8.0 {}\n\
             pump,device=p3 pressure=7.0 {}\n",
            MINUTE + 10 * SECOND,
            MINUTE + 50 * SECOND,
            2 * MINUTE + 20 * SECOND,
            3 * MINUTE + 30 * SECOND,
            20 * SECOND,
            2 * MINUTE,
            MINUTE + 5 * SECOND,
        ))
        .await;
        let rollup = RollupSettings {
            table: "pump".into(),
            into: "pump_1m".into(),
            every: Duration::from_secs(60),
            fields: Vec::new(),
            lateness: Duration::from_secs(60),
            hold: Duration::from_secs(90),
        };
        let tags = vec!["device".to_owned()];
        let fields = vec!["pressure".to_owned(), "speed".to_owned()];
        let mut carried = Carried::default();
        let (_, taken) = time_weighted(
            &store,
            &rollup,
            &tags,
            &fields,
            (MINUTE, 2 * MINUTE),
            &mut carried,
            &[2 * MINUTE],
        )
        .await
        .expect("first step");
        carried.keep(taken);
        let standing = carried.at.get(&(2 * MINUTE)).expect("carried to 2:00");
        assert_eq!(
            standing.get(&vec![Some("p1".to_owned())]),
            Some(&vec![
                Some((MINUTE + 50 * SECOND, 6.0)),
                Some((MINUTE + 10 * SECOND, 1.0))
            ])
        );
        assert!(
            !standing.contains_key(&vec![Some("p2".to_owned())]),
            "p2's value stood until 1:50 only, and its sample at 2:00 counts from 2:00 on"
        );
        let (carried_sums, taken) = time_weighted(
            &store,
            &rollup,
            &tags,
            &fields,
            (2 * MINUTE, 4 * MINUTE),
            &mut carried,
            &[4 * MINUTE],
        )
        .await
        .expect("second step");
        assert!(
            carried.get(2 * MINUTE, &tags, &fields).is_some(),
            "kept until the step's summaries are written"
        );
        carried.keep(taken);
        assert!(!carried.at.contains_key(&(2 * MINUTE)), "taken, not kept");
        assert!(carried.at.contains_key(&(4 * MINUTE)));
        let (read_back, _) = time_weighted(
            &store,
            &rollup,
            &tags,
            &fields,
            (2 * MINUTE, 4 * MINUTE),
            &mut Carried::default(),
            &[],
        )
        .await
        .expect("read back");
        assert_eq!(carried_sums, read_back);
        let p1 = |minute: i64| {
            carried_sums
                .get(&(minute * MINUTE, vec![("device".into(), "p1".into())]))
                .cloned()
        };
        // A value times the nanoseconds it stood.
        let ns = |seconds: f64| seconds * SECOND as f64;
        // 2:00-3:00: pressure 6.0 until 3:20 (hold); speed 1.0 until 2:20, then 3.0.
        assert_eq!(
            p1(2),
            Some(vec![
                (6.0 * ns(60.0), MINUTE),
                (1.0 * ns(20.0) + 3.0 * ns(40.0), MINUTE)
            ])
        );
        let p3 = carried_sums.get(&(2 * MINUTE, vec![("device".into(), "p3".into())]));
        assert_eq!(
            p3,
            Some(&vec![(7.0 * ns(35.0), 35 * SECOND), (0.0, 0)]),
            "p3's 7.0 stands until 2:35, `hold` after it"
        );
        // A field added to the table: nothing carried counts for the new columns.
        assert!(
            carried
                .get(4 * MINUTE, &tags, &["pressure".to_owned()])
                .is_none()
        );
        assert!(carried.get(4 * MINUTE, &tags, &fields).is_some());
    }

    #[tokio::test]
    async fn an_unanswered_point_ends_its_value_and_reads_split_nowhere_in_particular() {
        // A Modbus device's pressure and speed; its pressure went unanswered at 1:30 (the
        // poller writes that to `_point_errors`, not to the device's table), its speed
        // stayed. Another device's error, and an error of a field not summarised, do not
        // touch them.
        let (_dir, store) = crate::test_store::store_with(&format!(
            "plc,device=d1 pressure=2.0,speed=5.0 {}\n\
             plc,device=d1 pressure=4.0,speed=5.0 {}\n",
            MINUTE,
            2 * MINUTE,
        ))
        .await;
        let error = |device, signal, table, at| {
            crate::readings::point_error(
                crate::readings::PointOf {
                    device,
                    signal,
                    table,
                },
                "modbus",
                "timeout".into(),
                at,
            )
        };
        let errors = [
            error("d1", "pressure", "plc", 90 * SECOND),
            // At the same time as d1's sample at 2:00: it ends the value before, not 4.0.
            error("d1", "pressure", "plc", 2 * MINUTE),
            error("d2", "speed", "plc", 70 * SECOND),
            error("d1", "flow", "plc", 70 * SECOND),
            // The same device and signal names, another table's.
            error("d1", "speed", "other", 70 * SECOND),
        ];
        store
            .write_computed(&errors, "modbus", POINT_ERRORS_TABLE)
            .await
            .expect("errors");
        let rollup = RollupSettings {
            table: "plc".into(),
            into: "plc_1m".into(),
            every: Duration::from_secs(60),
            fields: Vec::new(),
            lateness: Duration::from_secs(60),
            hold: Duration::from_secs(100),
        };
        let tags = vec!["device".to_owned()];
        let fields = vec!["pressure".to_owned(), "speed".to_owned()];
        let (sums, _) = time_weighted(
            &store,
            &rollup,
            &tags,
            &fields,
            (MINUTE, 3 * MINUTE),
            &mut Carried::default(),
            &[],
        )
        .await
        .expect("sums");
        let d1 =
            |minute: i64| sums[&(minute * MINUTE, vec![("device".into(), "d1".into())])].clone();
        let ns = |seconds: i64| (seconds * SECOND) as f64;
        assert_eq!(
            d1(1)[0],
            (2.0 * ns(30), 30 * SECOND),
            "pressure until the error at 1:30"
        );
        assert_eq!(d1(1)[1], (5.0 * ns(60), MINUTE));
        assert_eq!(d1(2)[0], (4.0 * ns(60), MINUTE));

        // Whatever the reads' lengths, rows on their boundaries included, the sums are the
        // same: one read per 30 s, then per second.
        let held = |read: i64| {
            let store = store.clone();
            let (tags, fields) = (tags.clone(), fields.clone());
            let rollup = rollup.clone();
            async move {
                let hold_ns = nanos(rollup.hold);
                let mut sums = HeldSums::new();
                let mut standing = Standing::new();
                let mut start = MINUTE - hold_ns;
                while start < 3 * MINUTE {
                    let end = (start + read).min(3 * MINUTE);
                    let output = store
                        .query(&held_values_sql(&rollup, &tags, &fields, start, end))
                        .await
                        .expect("rows");
                    let errors = point_errors(&store, &rollup, &tags, &fields, start, end)
                        .await
                        .expect("errors");
                    let mut at = HeldValues {
                        read_from: start,
                        from: MINUTE.max(start),
                        to: end,
                        every_ns: MINUTE,
                        hold_ns,
                    }
                    .sums(
                        &output.batches,
                        (&tags, fields.len()),
                        std::mem::take(&mut standing),
                        (&[end], &errors),
                        &mut sums,
                    )
                    .expect("sums");
                    standing = at.pop().expect("standing at the end");
                    start = end;
                }
                sums
            }
        };
        assert_eq!(held(30 * SECOND).await, sums);
        assert_eq!(held(SECOND).await, sums);
    }
}
