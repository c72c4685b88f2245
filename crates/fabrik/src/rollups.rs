//! Rollups (`[[store.rollups]]`, decisions 0085 and 0087): a table's rows summarised per
//! interval — each numeric field's mean, minimum, maximum, count and time-weighted mean per
//! series — into a table of its own, so a plant keeps years of trends at a fraction of the
//! rows' size while the rows themselves expire. Intervals are summarised once they end, and again while rows may still
//! arrive late; a summary written again replaces the earlier one (the store keeps the last
//! write of a series at a time), and a restart carries on from the last summary stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::DataType;
use fabrik_core::{Point, Quality, Timestamp, Value};
use fabrik_runtime::config::RollupSettings;
use fabrik_store::Store;
use tokio_util::sync::CancellationToken;

use crate::columns::cast_column;
use crate::sql_text::{identifier, literal};

mod held;

/// The lineage source (`_source`) of the summaries.
pub(crate) const ROLLUP_SOURCE: &str = "rollups";
/// The summaries one pass reads and writes at most per query: a long backfill goes in steps.
const INTERVALS_PER_STEP: i64 = 1_440;
/// The most intervals a first start summarises back from now: a table with years of rows and
/// a one-second rollup does not spend its start on them.
const MOST_BACKFILL_INTERVALS: i64 = 100_000;
/// The most rows' time one step's query reads (unless one interval is longer).
const LONGEST_STEP: Duration = Duration::from_secs(86_400);
/// The longest wait between passes of a rollup that keeps failing.
const LONGEST_BACKOFF: Duration = Duration::from_secs(600);
/// Points written in one store write at most.
const POINTS_PER_WRITE: usize = 10_000;
/// The longest wait after an interval ends before it is first summarised, for rows still
/// being committed; a tenth of the interval when that is shorter.
const LONGEST_SETTLING: Duration = Duration::from_secs(5);

/// The summaries' columns per field made from the interval's samples, in the order the
/// summary query selects them.
const SUMMARIES: [&str; 4] = ["mean", "min", "max", "count"];
/// The summary columns made from the values standing over the interval (decision 0087): their
/// time-weighted mean, and the seconds of the interval a value stood.
const TIME_WEIGHTED: &str = "twa";
const TIME_WEIGHTED_SECONDS: &str = "held_s";

/// Starts every rollup; the task ends when `stop` is cancelled.
pub(crate) fn start(
    store: Arc<Store>,
    rollups: Vec<RollupSettings>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for rollup in rollups {
            tasks.spawn(run(store.clone(), rollup, stop.clone()));
        }
        while tasks.join_next().await.is_some() {}
    })
}

/// One rollup's loop: at each interval's end (and settling time), the intervals from the
/// first not yet summarised, or still within the lateness, up to the last one ended.
async fn run(store: Arc<Store>, rollup: RollupSettings, stop: CancellationToken) {
    let every_ns = nanos(rollup.every).max(1);
    let lateness_ns = nanos(rollup.lateness);
    let settle_ns = nanos((rollup.every / 10).min(LONGEST_SETTLING));
    // Where the last run left off: the newest interval summarised, again (a stop in the
    // middle of a step may have written only some of its series).
    let mut done_until = tokio::select! {
        () = stop.cancelled() => return,
        newest = newest_summary(&store, &rollup, Timestamp::now().nanos()) => match newest {
            Ok(newest) => newest,
            Err(e) => {
                tracing::warn!(rollup = %rollup.into, error = %e, "The newest summary of a rollup could not be read; it starts from the table's oldest rows.");
                None
            }
        },
    };
    // Each step's query covers at most a day of rows (or one interval, if longer); a step that
    // fails is halved, down to one interval, so one too large for the query timeout does not
    // stop the rollup.
    let longest_step = INTERVALS_PER_STEP
        .saturating_mul(every_ns)
        .min(nanos(LONGEST_STEP).max(every_ns));
    let mut step_ns = longest_step;
    let mut failures: u32 = 0;
    let mut carried = held::Carried::default();
    loop {
        let now = Timestamp::now().nanos();
        let ended = align_down(now.saturating_sub(settle_ns), every_ns);
        let from = tokio::select! {
            () = stop.cancelled() => return,
            from = pass_start(&store, &rollup, done_until, ended, every_ns, lateness_ns) => from,
        };
        let mut step_from = from.unwrap_or(ended);
        // The next pass, if on time, summarises again the intervals still within the
        // lateness then: the values standing where it starts are carried to it.
        let next_pass_from =
            first_late_interval(ended.saturating_add(every_ns), every_ns, lateness_ns);
        while step_from < ended {
            let step_to = ended.min(align_down(step_from.saturating_add(step_ns), every_ns));
            let step_to = step_to.max(step_from.saturating_add(every_ns));
            let summarised = tokio::select! {
                () = stop.cancelled() => return,
                summarised = summarise(&store, &rollup, (step_from, step_to), &mut carried, Some(next_pass_from)) => summarised,
            };
            match summarised {
                Ok(written) => {
                    metrics::counter!("fabrik_rollup_rows_written_total", "rollup" => rollup.into.clone())
                        .increment(written as u64);
                    done_until = Some(done_until.unwrap_or(step_to).max(step_to));
                    step_from = step_to;
                    failures = 0;
                    step_ns = step_ns.saturating_mul(2).min(longest_step);
                }
                Err(e) => {
                    metrics::counter!("fabrik_rollup_errors_total", "rollup" => rollup.into.clone())
                        .increment(1);
                    tracing::warn!(rollup = %rollup.into, table = %rollup.table, error = %e, "A rollup's intervals could not be summarised; they are tried again later.");
                    failures = failures.saturating_add(1);
                    step_ns = (step_ns / 2).max(every_ns);
                    break;
                }
            }
        }
        let next = ended
            .saturating_add(every_ns)
            .saturating_add(settle_ns)
            .saturating_sub(Timestamp::now().nanos());
        let mut wait = Duration::from_nanos(u64::try_from(next).unwrap_or(0));
        if failures > 0 {
            // A rollup that keeps failing (fields that are not there, a query the store
            // refuses) is tried less and less often, not at every interval.
            let backoff = rollup
                .every
                .saturating_mul(1 << failures.min(10))
                .min(LONGEST_BACKOFF);
            wait = wait.max(backoff);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Whether `rollup.into` holds rows this rollup did not write within `[from, to)`: an edge's
/// uplinked summaries on a hub, a device's own rows under that name. They are not written
/// over.
async fn foreign_rows(
    store: &Store,
    rollup: &RollupSettings,
    from: i64,
    to: i64,
) -> Result<bool, String> {
    if !store.has_table(&rollup.into) {
        return Ok(false);
    }
    let sql = format!(
        "SELECT count(*) FROM (SELECT 1 FROM {} WHERE time >= to_timestamp_nanos({from}) AND \
         time < to_timestamp_nanos({to}) AND (_source IS NULL OR _source <> {}) LIMIT 1)",
        identifier(&rollup.into),
        literal(ROLLUP_SOURCE)
    );
    Ok(crate::columns::query_i64(store, &sql).await?.unwrap_or(0) > 0)
}

fn nanos(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

/// The start of the interval `time` falls in (intervals are aligned to the Unix epoch).
fn align_down(time: i64, every_ns: i64) -> i64 {
    time.div_euclid(every_ns).saturating_mul(every_ns)
}

/// Where this pass starts summarising, before `ended` (the end of the last interval that
/// ended): the first interval not summarised yet, or the first that ended within the
/// lateness (rounded up to whole intervals), whichever is earlier; on a first start, the table's oldest row; never more than
/// [`MOST_BACKFILL_INTERVALS`] back. `None`: nothing to do yet (no rows, or the table does
/// not exist yet).
/// The first interval a pass summarises again when the last interval ended at `ended`: an
/// interval is summarised again until the pass after `lateness` (rounded up to whole
/// intervals) has passed since it ended, so rows that late still count.
fn first_late_interval(ended: i64, every_ns: i64, lateness_ns: i64) -> i64 {
    let lateness_intervals = lateness_ns.saturating_add(every_ns - 1) / every_ns;
    ended.saturating_sub(
        lateness_intervals
            .saturating_add(1)
            .saturating_mul(every_ns),
    )
}

async fn pass_start(
    store: &Store,
    rollup: &RollupSettings,
    done_until: Option<i64>,
    ended: i64,
    every_ns: i64,
    lateness_ns: i64,
) -> Option<i64> {
    let late = first_late_interval(ended, every_ns, lateness_ns);
    let from = match done_until {
        Some(done) => done.min(late),
        None => {
            let oldest = oldest_row(store, rollup).await.unwrap_or_else(|e| {
                tracing::debug!(rollup = %rollup.into, error = %e, "A rollup's table could not be read.");
                None
            })?;
            align_down(oldest, every_ns)
        }
    };
    // Also after a restart whose newest summary is old (a table that stopped receiving rows).
    let from = from.max(ended.saturating_sub(MOST_BACKFILL_INTERVALS.saturating_mul(every_ns)));
    (from < ended).then_some(from)
}

async fn oldest_row(store: &Store, rollup: &RollupSettings) -> Result<Option<i64>, String> {
    if !store.has_table(&rollup.table) {
        return Ok(None);
    }
    let sql = format!(
        "SELECT CAST(min(time) AS BIGINT) FROM {}",
        identifier(&rollup.table)
    );
    crate::columns::query_i64(store, &sql).await
}

/// The start of the newest interval summarised in `rollup.into`.
async fn newest_summary(
    store: &Store,
    rollup: &RollupSettings,
    now: i64,
) -> Result<Option<i64>, String> {
    if !store.has_table(&rollup.into) {
        return Ok(None);
    }
    // Only as far back as a pass would go: a start does not read years of summaries.
    let every_ns = nanos(rollup.every).max(1);
    let since = now.saturating_sub(MOST_BACKFILL_INTERVALS.saturating_mul(every_ns));
    let sql = format!(
        "SELECT CAST(max(time) AS BIGINT) FROM {} WHERE _source = {} AND time >= \
         to_timestamp_nanos({since})",
        identifier(&rollup.into),
        literal(ROLLUP_SOURCE)
    );
    crate::columns::query_i64(store, &sql).await
}

/// The table's tags and the fields summarised (those configured that are numeric, else every
/// numeric field), as it is now; `None` when the table does not exist yet.
fn columns_of(store: &Store, rollup: &RollupSettings) -> Option<(Vec<String>, Vec<String>)> {
    let table = store
        .tables()
        .into_iter()
        .find(|table| table.name == rollup.table)?;
    let numeric = |kind: &str| matches!(kind, "float" | "integer" | "uinteger");
    let fields = table
        .fields
        .iter()
        .filter(|(name, kind)| {
            numeric(kind) && (rollup.fields.is_empty() || rollup.fields.contains(name))
        })
        .map(|(name, _)| name.clone())
        .collect();
    Some((table.tags, fields))
}

/// The query that summarises `[from, to)`: per interval and series, each field's summaries.
/// Rows of bad quality (a failed sensor, a Modbus exception) are left out.
fn summary_sql(
    rollup: &RollupSettings,
    tags: &[String],
    fields: &[String],
    from: i64,
    to: i64,
) -> String {
    let every_ns = nanos(rollup.every).max(1);
    // Integer arithmetic on the nanoseconds: the rows are after 1970, where it rounds down.
    let interval_start = format!("(CAST(time AS BIGINT) / {every_ns}) * {every_ns}");
    let mut columns = vec![interval_start.clone()];
    columns.extend(
        tags.iter()
            .map(|tag| format!("CAST({} AS VARCHAR)", identifier(tag))),
    );
    for field in fields {
        let value = format!("CAST({} AS DOUBLE)", identifier(field));
        columns.push(format!("avg({value})"));
        columns.push(format!("min({value})"));
        columns.push(format!("max({value})"));
        columns.push(format!("CAST(count({value}) AS BIGINT)"));
    }
    let group: Vec<String> = std::iter::once(interval_start)
        .chain(tags.iter().map(|tag| identifier(tag)))
        .collect();
    // In interval order, so a stop between writes leaves the earlier intervals written.
    format!(
        "SELECT {} FROM {} WHERE time >= to_timestamp_nanos({from}) AND time < \
         to_timestamp_nanos({to}) AND (_quality IS NULL OR _quality <> 'bad') GROUP BY {} \
         ORDER BY 1",
        columns.join(", "),
        identifier(&rollup.table),
        group.join(", ")
    )
}

/// Summarises `[from, to)` into `rollup.into`; returns the summary rows written. The values
/// standing at its start are taken from `carried` when there, and those standing at its end
/// and at `next_pass_from` (where the next pass is expected to start) are kept there.
async fn summarise(
    store: &Store,
    rollup: &RollupSettings,
    (from, to): (i64, i64),
    carried: &mut held::Carried,
    next_pass_from: Option<i64>,
) -> Result<usize, String> {
    let Some((tags, fields)) = columns_of(store, rollup) else {
        return Ok(0);
    };
    if fields.is_empty() {
        return Err(if rollup.fields.is_empty() {
            format!("table `{}` has no numeric field", rollup.table)
        } else {
            format!(
                "table `{}` has none of the numeric fields {:?}",
                rollup.table, rollup.fields
            )
        });
    }
    if foreign_rows(store, rollup, from, to).await? {
        return Err(format!(
            "table `{}` holds rows that are not this rollup's summaries (an edge's uplinked \
             summaries, a device's rows): they are not written over; name another table in \
             `into`",
            rollup.into
        ));
    }
    let output = store
        .query(&summary_sql(rollup, &tags, &fields, from, to))
        .await
        .map_err(|e| e.to_string())?;
    let mut points = Vec::new();
    for batch in &output.batches {
        points.extend(points_of(batch, rollup, &tags, &fields)?);
    }
    let mut taken = None;
    if !rollup.hold.is_zero() {
        let wanted: Vec<i64> = std::iter::once(to).chain(next_pass_from).collect();
        let (held, at_wanted) =
            held::time_weighted(store, rollup, &tags, &fields, (from, to), carried, &wanted)
                .await?;
        held::add_time_weighted(&mut points, held, rollup, &fields);
        taken = Some(at_wanted);
    }
    let existing = existing_summaries(store, rollup, &tags, &fields, from, to).await?;
    // With time-weighted means turned off, what stood is not known: left as it was.
    if !rollup.hold.is_zero() {
        let nothing_stood = held::nothing_stood(&points, &existing, rollup, &fields);
        points.extend(nothing_stood);
    }
    // In interval order, so a stop between writes leaves the earlier intervals written.
    points.sort_by_key(|point| point.time);
    // An interval summarised again is written only where its summary changed: the intervals
    // within the lateness are read at every pass, but rewritten (and uplinked, and persisted
    // again) only when rows arrived late.
    points.retain(|point| {
        existing
            .get(&(point.time.nanos(), point.tags.clone()))
            .is_none_or(|stored| !same_summary(&point.fields, stored))
    });
    for chunk in points.chunks(POINTS_PER_WRITE) {
        store
            .write_computed(chunk, ROLLUP_SOURCE, &rollup.into)
            .await
            .map_err(|e| format!("writing `{}`: {e}", rollup.into))?;
    }
    // Only now: a step whose writes failed is tried again from the same values.
    if let Some(taken) = taken {
        carried.keep(taken);
    }
    Ok(points.len())
}

/// A summary row as stored: its time and series, and its summaries' values.
type StoredSummaries = HashMap<(i64, Vec<(String, String)>), Vec<(String, f64)>>;

/// The summaries this rollup stored for `[from, to)`, by interval start and series (the tags
/// that are set, in the table's order, as [`points_of`] makes them).
async fn existing_summaries(
    store: &Store,
    rollup: &RollupSettings,
    tags: &[String],
    fields: &[String],
    from: i64,
    to: i64,
) -> Result<StoredSummaries, String> {
    let mut stored = StoredSummaries::new();
    if !store.has_table(&rollup.into) {
        return Ok(stored);
    }
    let tags: Vec<&String> = tags
        .iter()
        .filter(|tag| store.has_column(&rollup.into, tag))
        .collect();
    let columns: Vec<String> = fields
        .iter()
        .flat_map(|field| {
            SUMMARIES
                .iter()
                .chain([&TIME_WEIGHTED, &TIME_WEIGHTED_SECONDS])
                .map(move |s| format!("{field}_{s}"))
        })
        .filter(|column| store.has_column(&rollup.into, column))
        .collect();
    let mut select = vec!["CAST(time AS BIGINT)".to_owned()];
    select.extend(
        tags.iter()
            .map(|tag| format!("CAST({} AS VARCHAR)", identifier(tag))),
    );
    select.extend(
        columns
            .iter()
            .map(|column| format!("CAST({} AS DOUBLE)", identifier(column))),
    );
    let sql = format!(
        "SELECT {} FROM {} WHERE time >= to_timestamp_nanos({from}) AND time < \
         to_timestamp_nanos({to}) AND _source = {}",
        select.join(", "),
        identifier(&rollup.into),
        literal(ROLLUP_SOURCE)
    );
    let output = store.query(&sql).await.map_err(|e| e.to_string())?;
    for batch in &output.batches {
        let times: Int64Array = cast_column(batch, 0, &DataType::Int64, "time")?;
        let tag_columns = (0..tags.len())
            .map(|i| cast_column::<StringArray>(batch, 1 + i, &DataType::Utf8, "a tag"))
            .collect::<Result<Vec<_>, _>>()?;
        let value_columns = (0..columns.len())
            .map(|i| {
                cast_column::<Float64Array>(
                    batch,
                    1 + tags.len() + i,
                    &DataType::Float64,
                    "a summary",
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            let series = tags
                .iter()
                .zip(&tag_columns)
                .filter(|(_, column)| !column.is_null(row))
                .map(|(tag, column)| ((*tag).clone(), column.value(row).to_owned()))
                .collect();
            let values = columns
                .iter()
                .zip(&value_columns)
                .filter(|(_, column)| !column.is_null(row))
                .map(|(name, column)| (name.clone(), column.value(row)))
                .collect();
            stored.insert((times.value(row), series), values);
        }
    }
    Ok(stored)
}

/// Whether a new summary says what the stored one says: the same summaries, counts, minima
/// and maxima exactly, means (time-weighted too) to a relative 1e-9 (a sum's order may differ
/// between passes).
fn same_summary(new: &[(String, Value)], stored: &[(String, f64)]) -> bool {
    new.len() == stored.len()
        && new.iter().all(|(name, value)| {
            let new = match value {
                Value::F64(v) => *v,
                Value::I64(v) => *v as f64,
                _ => return false,
            };
            stored.iter().any(|(stored_name, old)| {
                stored_name == name
                    && (new == *old
                        || ((name.ends_with("_mean") || name.ends_with("_twa"))
                            && (new - old).abs() <= 1e-9 * new.abs().max(old.abs())))
            })
        })
}

/// The summary rows of one result batch (columns as [`summary_sql`] selects them): a row per
/// interval and series, stamped at the interval's start, with the summaries of the fields that
/// had values in it.
fn points_of(
    batch: &RecordBatch,
    rollup: &RollupSettings,
    tags: &[String],
    fields: &[String],
) -> Result<Vec<Point>, String> {
    let starts: Int64Array = cast_column(batch, 0, &DataType::Int64, "interval start")?;
    let tag_columns = (0..tags.len())
        .map(|i| cast_column::<StringArray>(batch, 1 + i, &DataType::Utf8, "a tag"))
        .collect::<Result<Vec<_>, _>>()?;
    let first_field = 1 + tags.len();
    let mut summaries = Vec::with_capacity(fields.len());
    for f in 0..fields.len() {
        let at = first_field + f * SUMMARIES.len();
        let float =
            |i: usize| cast_column::<Float64Array>(batch, at + i, &DataType::Float64, "a summary");
        summaries.push((
            float(0)?,
            float(1)?,
            float(2)?,
            cast_column::<Int64Array>(batch, at + 3, &DataType::Int64, "a count")?,
        ));
    }
    let mut points = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        if starts.is_null(row) {
            continue;
        }
        let mut values = Vec::with_capacity(fields.len() * SUMMARIES.len());
        for (field, (mean, min, max, count)) in fields.iter().zip(&summaries) {
            // A field without a value in the interval (another device's signal) has no
            // summary there.
            if count.is_null(row) || count.value(row) == 0 || mean.is_null(row) {
                continue;
            }
            // A sum past the largest float (values near f64::MAX) has no mean the store takes.
            if ![mean.value(row), min.value(row), max.value(row)]
                .iter()
                .all(|v| v.is_finite())
            {
                continue;
            }
            values.push((format!("{field}_mean"), Value::F64(mean.value(row))));
            values.push((format!("{field}_min"), Value::F64(min.value(row))));
            values.push((format!("{field}_max"), Value::F64(max.value(row))));
            values.push((format!("{field}_count"), Value::I64(count.value(row))));
        }
        if values.is_empty() {
            continue;
        }
        let series = tags
            .iter()
            .zip(&tag_columns)
            .filter(|(_, column)| !column.is_null(row))
            .map(|(tag, column)| (tag.clone(), column.value(row).to_owned()))
            .collect();
        points.push(Point {
            measurement: rollup.into.clone(),
            tags: series,
            fields: values,
            time: Timestamp(starts.value(row)),
            quality: Quality::Good,
        });
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000_000;
    const MINUTE: i64 = 60 * SECOND;

    /// One step, nothing carried to or from it.
    async fn summarise(
        store: &Store,
        rollup: &RollupSettings,
        from: i64,
        to: i64,
    ) -> Result<usize, String> {
        super::summarise(
            store,
            rollup,
            (from, to),
            &mut held::Carried::default(),
            None,
        )
        .await
    }

    fn rollup(fields: &[&str]) -> RollupSettings {
        RollupSettings {
            table: "pump".into(),
            into: "pump_1m".into(),
            every: Duration::from_secs(60),
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            lateness: Duration::from_secs(60),
            // Time-weighted means have a test of their own.
            hold: Duration::ZERO,
        }
    }

    async fn rows(store: &Store, sql: &str) -> Vec<serde_json::Value> {
        let output = store.query(sql).await.expect("query");
        let mut json = Vec::new();
        let mut writer = datafusion::arrow::json::ArrayWriter::new(&mut json);
        for batch in &output.batches {
            writer.write(batch).expect("json");
        }
        writer.finish().expect("json");
        if json.is_empty() {
            return Vec::new();
        }
        serde_json::from_slice(&json).expect("rows")
    }

    #[tokio::test]
    async fn each_series_interval_is_summarised_and_a_late_row_replaces_its_summary() {
        // Two pumps over two minutes; a bad-quality reading and a text field are not counted.
        let (_dir, store) = crate::test_store::store_with(&format!(
            "pump,device=p1,site=a pressure=1.0,speed=10i,state=\"on\" {}\n\
             pump,device=p1,site=a pressure=3.0,speed=30i {}\n\
             pump,device=p2,site=a pressure=7.0 {}\n\
             pump,device=p1,site=a pressure=5.0 {}\n",
            MINUTE + 1,
            MINUTE + 2,
            MINUTE + 3,
            2 * MINUTE,
        ))
        .await;
        let bad = fabrik_core::Point {
            measurement: "pump".into(),
            tags: vec![("device".into(), "p1".into()), ("site".into(), "a".into())],
            fields: vec![("pressure".into(), Value::F64(1000.0))],
            time: Timestamp(MINUTE + 4),
            quality: Quality::Bad,
        };
        store
            .write_computed(&[bad], "test", "pump")
            .await
            .expect("bad reading");
        let rollup = rollup(&[]);
        let written = summarise(&store, &rollup, MINUTE, 3 * MINUTE)
            .await
            .expect("summarise");
        assert_eq!(
            written, 3,
            "p1 and p2 in the first minute, p1 in the second"
        );
        let summaries = rows(
            &store,
            "SELECT CAST(time AS BIGINT) AS t, device, site, pressure_mean, pressure_min, \
             pressure_max, pressure_count, speed_mean, speed_count, _source FROM pump_1m \
             ORDER BY t, device",
        )
        .await;
        assert_eq!(summaries.len(), 3, "{summaries:?}");
        let first = &summaries[0];
        assert_eq!(first["t"], MINUTE);
        assert_eq!(first["device"], "p1");
        assert_eq!(first["site"], "a");
        assert_eq!(first["pressure_mean"], 2.0);
        assert_eq!(first["pressure_min"], 1.0);
        assert_eq!(first["pressure_max"], 3.0);
        assert_eq!(first["pressure_count"], 2, "the bad reading is left out");
        assert_eq!(first["speed_mean"], 20.0);
        assert_eq!(first["speed_count"], 2);
        assert_eq!(first["_source"], ROLLUP_SOURCE);
        assert!(
            !store.has_column("pump_1m", "state_mean"),
            "a text field is not summarised"
        );
        assert_eq!(summaries[1]["device"], "p2");
        assert_eq!(summaries[1]["pressure_mean"], 7.0);
        assert!(
            summaries[1]
                .get("speed_count")
                .is_none_or(serde_json::Value::is_null),
            "p2 had no speed: {:?}",
            summaries[1]
        );
        assert_eq!(summaries[2]["t"], 2 * MINUTE);
        assert_eq!(summaries[2]["pressure_count"], 1);

        // Summarised again without a new row: nothing is written.
        assert_eq!(
            summarise(&store, &rollup, MINUTE, 3 * MINUTE).await,
            Ok(0),
            "unchanged summaries are not written again"
        );

        // A row that arrives late is counted when its interval is summarised again: the
        // new summary replaces the old one.
        store
            .write_lines(
                &format!("pump,device=p1,site=a pressure=8.0 {}\n", MINUTE + 5),
                fabrik_core::Precision::Ns,
                fabrik_core::SourceId::http(),
            )
            .await
            .expect("late row");
        assert_eq!(
            summarise(&store, &rollup, MINUTE, 2 * MINUTE).await,
            Ok(1),
            "only p1's summary changed"
        );
        let again = rows(
            &store,
            &format!(
                "SELECT pressure_mean, pressure_max, pressure_count FROM pump_1m \
                 WHERE device = 'p1' AND time = to_timestamp_nanos({MINUTE})"
            ),
        )
        .await;
        assert_eq!(again.len(), 1, "replaced, not added: {again:?}");
        assert_eq!(again[0]["pressure_mean"], 4.0);
        assert_eq!(again[0]["pressure_max"], 8.0);
        assert_eq!(again[0]["pressure_count"], 3);

        // A restart carries on from the newest summary.
        assert_eq!(
            newest_summary(&store, &rollup, 3 * MINUTE)
                .await
                .expect("newest"),
            Some(2 * MINUTE)
        );

        // Rows of another source in the summary table are not written over.
        store
            .write_lines(
                &format!(
                    "pump_1m,device=p9,site=a pressure_mean=1.0 {}\n",
                    5 * MINUTE
                ),
                fabrik_core::Precision::Ns,
                fabrik_core::SourceId::http(),
            )
            .await
            .expect("a device's own row");
        store
            .write_lines(
                &format!("pump,device=p1,site=a pressure=9.0 {}\n", 5 * MINUTE + 1),
                fabrik_core::Precision::Ns,
                fabrik_core::SourceId::http(),
            )
            .await
            .expect("row");
        let refused = summarise(&store, &rollup, 5 * MINUTE, 6 * MINUTE)
            .await
            .expect_err("not written over");
        assert!(refused.contains("not this rollup's summaries"), "{refused}");
        assert_eq!(
            rows(&store, "SELECT count(*) AS n FROM pump_1m WHERE device = 'p1' AND time >= to_timestamp_nanos(300000000000)").await[0]["n"],
            0
        );
        assert_eq!(
            summarise(&store, &rollup, 3 * MINUTE, 5 * MINUTE).await,
            Ok(0),
            "elsewhere in the table they are no obstacle"
        );
    }

    #[tokio::test]
    async fn a_value_stands_until_its_next_sample_for_the_time_weighted_means() {
        // Report by exception: p1's pressure changes at 0:30, 1:15 and 2:30, with a bad
        // reading at 1:45 (the sensor failed until 2:30); p2 reports pressure and speed in
        // separate messages.
        let (_dir, store) = crate::test_store::store_with(&format!(
            "pump,device=p1 pressure=4.0 {}\n\
             pump,device=p1 pressure=10.0 {}\n\
             pump,device=p1 pressure=20.0 {}\n\
             pump,device=p2 pressure=5.0 {}\n\
             pump,device=p2 speed=100.0 {}\n",
            30 * SECOND,
            MINUTE + 15 * SECOND,
            2 * MINUTE + 30 * SECOND,
            MINUTE + 10 * SECOND,
            MINUTE + 40 * SECOND,
        ))
        .await;
        let bad = fabrik_core::Point {
            measurement: "pump".into(),
            tags: vec![("device".into(), "p1".into())],
            fields: vec![("pressure".into(), Value::F64(1000.0))],
            time: Timestamp(MINUTE + 45 * SECOND),
            quality: Quality::Bad,
        };
        store
            .write_computed(&[bad], "test", "pump")
            .await
            .expect("bad reading");
        let mut rollup = rollup(&[]);
        rollup.hold = Duration::from_secs(3600);
        assert_eq!(
            summarise(&store, &rollup, MINUTE, 4 * MINUTE).await,
            Ok(6),
            "each pump in each minute, also where no sample fell in it"
        );
        let summaries = |table: &'static str| {
            let store = store.clone();
            async move {
                rows(
                    &store,
                    &format!(
                        "SELECT CAST(time AS BIGINT) / {MINUTE} AS minute, device, \
                         pressure_twa, pressure_held_s, pressure_mean, pressure_count, \
                         speed_twa, speed_mean FROM {table} ORDER BY device, minute"
                    ),
                )
                .await
            }
        };
        let stored = summaries("pump_1m").await;
        assert_eq!(stored.len(), 6, "{stored:?}");
        let p1: Vec<_> = stored.iter().filter(|r| r["device"] == "p1").collect();
        // 4.0 standing since before the step for 15 s, then 10.0 for 30 s until the bad
        // reading; the bad reading's 15 s are not observed time.
        assert_eq!(p1[0]["minute"], 1);
        assert_eq!(p1[0]["pressure_twa"], (4.0 * 15.0 + 10.0 * 30.0) / 45.0);
        assert_eq!(p1[0]["pressure_held_s"], 45.0, "the seconds a value stood");
        assert_eq!(
            p1[0]["pressure_mean"], 10.0,
            "per sample, the bad one left out"
        );
        assert_eq!(p1[0]["pressure_count"], 1);
        assert_eq!(p1[1]["pressure_twa"], 20.0, "nothing stands until 2:30");
        assert_eq!(p1[2]["minute"], 3);
        assert_eq!(p1[2]["pressure_twa"], 20.0, "20.0 still stands");
        assert!(
            p1[2]["pressure_count"].is_null() && p1[2]["pressure_mean"].is_null(),
            "no sample in the third minute: {:?}",
            p1[2]
        );
        let p2: Vec<_> = stored.iter().filter(|r| r["device"] == "p2").collect();
        assert_eq!(
            p2[0]["pressure_twa"], 5.0,
            "a speed message does not end the pressure"
        );
        assert_eq!(p2[0]["speed_twa"], 100.0);
        assert_eq!(p2[0]["speed_mean"], 100.0);
        assert_eq!(p2[2]["pressure_twa"], 5.0);
        assert_eq!(p2[2]["speed_twa"], 100.0);

        assert_eq!(
            summarise(&store, &rollup, MINUTE, 4 * MINUTE).await,
            Ok(0),
            "the time-weighted means are compared like the others"
        );
        // A late sample ends the value before it: only p1's second minute changes.
        store
            .write_lines(
                &format!("pump,device=p1 pressure=2.0 {}\n", 2 * MINUTE + 10 * SECOND),
                fabrik_core::Precision::Ns,
                fabrik_core::SourceId::http(),
            )
            .await
            .expect("late row");
        assert_eq!(summarise(&store, &rollup, MINUTE, 4 * MINUTE).await, Ok(1));
        let again = summaries("pump_1m").await;
        assert_eq!(again[1]["minute"], 2);
        assert_eq!(again[1]["pressure_twa"], (2.0 * 20.0 + 20.0 * 30.0) / 50.0);

        // A late bad sample at 2:40 ends 20.0: the third minute's `_twa`-only summary is
        // replaced by one saying no value stood, once.
        let late_bad = fabrik_core::Point {
            measurement: "pump".into(),
            tags: vec![("device".into(), "p1".into())],
            fields: vec![("pressure".into(), Value::F64(0.0))],
            time: Timestamp(2 * MINUTE + 40 * SECOND),
            quality: Quality::Bad,
        };
        store
            .write_computed(&[late_bad], "test", "pump")
            .await
            .expect("late bad reading");
        assert_eq!(summarise(&store, &rollup, MINUTE, 4 * MINUTE).await, Ok(2));
        let after_bad = summaries("pump_1m").await;
        assert_eq!(after_bad[2]["minute"], 3, "{after_bad:?}");
        assert!(after_bad[2]["pressure_twa"].is_null(), "{after_bad:?}");
        assert_eq!(after_bad[2]["pressure_held_s"], 0.0);
        assert_eq!(after_bad[1]["pressure_held_s"], 30.0, "2:10 to 2:40");
        assert_eq!(summarise(&store, &rollup, MINUTE, 4 * MINUTE).await, Ok(0));

        // A value stands for at most `hold`.
        rollup.into = "pump_held".into();
        rollup.hold = Duration::from_secs(30);
        summarise(&store, &rollup, MINUTE, 4 * MINUTE)
            .await
            .expect("summarise");
        let held = summaries("pump_held").await;
        let p1: Vec<_> = held.iter().filter(|r| r["device"] == "p1").collect();
        assert_eq!(p1[0]["pressure_twa"], 10.0, "4.0 stood until 1:00 only");
        assert_eq!(
            p1.last().map(|r| r["minute"].clone()),
            Some(serde_json::json!(2)),
            "20.0 stood until 3:00 only: {p1:?}"
        );
    }

    #[tokio::test]
    async fn only_the_fields_named_are_summarised_and_none_numeric_is_an_error() {
        let (_dir, store) = crate::test_store::store_with(&format!(
            "pump,device=p1 pressure=1.0,speed=10i,state=\"on\" {}\n",
            MINUTE + 1
        ))
        .await;
        summarise(&store, &rollup(&["speed"]), MINUTE, 2 * MINUTE)
            .await
            .expect("summarise");
        assert!(store.has_column("pump_1m", "speed_mean"));
        assert!(!store.has_column("pump_1m", "pressure_mean"));
        let refused = summarise(&store, &rollup(&["state"]), MINUTE, 2 * MINUTE)
            .await
            .expect_err("a text field only");
        assert!(refused.contains("none of the numeric fields"), "{refused}");
        // A table that does not exist yet is nothing to do.
        let mut absent = rollup(&[]);
        absent.table = "valve".into();
        assert_eq!(summarise(&store, &absent, MINUTE, 2 * MINUTE).await, Ok(0));
    }

    #[tokio::test]
    async fn a_pass_starts_at_the_oldest_row_then_at_the_lateness() {
        let (_dir, store) = crate::test_store::store_with(&format!(
            "pump,device=p1 pressure=1.0 {}\n",
            10 * MINUTE + 7
        ))
        .await;
        let rollup = rollup(&[]);
        let ended = 20 * MINUTE;
        assert_eq!(
            pass_start(&store, &rollup, None, ended, MINUTE, MINUTE).await,
            Some(10 * MINUTE),
            "first start: from the oldest row's interval"
        );
        assert_eq!(
            pass_start(&store, &rollup, Some(ended), ended, MINUTE, 3 * MINUTE).await,
            Some(16 * MINUTE),
            "caught up: again each interval that ended less than the lateness before the \
             previous pass"
        );
        assert_eq!(
            pass_start(&store, &rollup, Some(ended), ended, MINUTE, 150 * SECOND).await,
            Some(16 * MINUTE),
            "a lateness rounded up to whole intervals"
        );
        assert_eq!(
            pass_start(&store, &rollup, Some(12 * MINUTE), ended, MINUTE, MINUTE).await,
            Some(12 * MINUTE),
            "behind: from the first not summarised"
        );
        assert_eq!(
            pass_start(&store, &rollup, Some(ended), ended, MINUTE, MINUTE).await,
            Some(18 * MINUTE),
            "the default lateness: the interval before the one that just ended, once more"
        );
        let far = (MOST_BACKFILL_INTERVALS + 500) * MINUTE;
        assert_eq!(
            pass_start(&store, &rollup, Some(12 * MINUTE), far, MINUTE, MINUTE).await,
            Some(500 * MINUTE),
            "never more than the most intervals back"
        );
        let mut absent = rollup.clone();
        absent.table = "valve".into();
        assert_eq!(
            pass_start(&store, &absent, None, ended, MINUTE, MINUTE).await,
            None
        );
    }
}
