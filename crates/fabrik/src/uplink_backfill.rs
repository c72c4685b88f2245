//! Backfill (decision 0045): rows this node stored before its uplink started, or any span of
//! them, read back from the store and sent to the hub's stream beside the live uplink, table
//! by table and oldest first, in slices of time whose acknowledged end is kept in
//! `<data_dir>/uplink/backfill.json`, so a restart (or `kill -9`) goes on where it stood.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use fabrik_api::control::ControlError;
use fabrik_api::links::{BackfillControl, BackfillRequest, BackfillStatus, LinkBoard};
use fabrik_registry::usecases::{format_time, parse_time};
use fabrik_store::Store;
use fabrik_store::arrow::array::{Array, TimestampNanosecondArray};
use fabrik_store::arrow::datatypes::Schema;
use fabrik_store::arrow::record_batch::RecordBatch;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::nats_link::NatsLink;
use crate::uplink::{Messages, TableFilter, now_text, publish_all, save_json};

/// The first slice of a table; later ones grow or shrink towards `TARGET_ROWS`.
const FIRST_SLICE_NS: i64 = 60 * 1_000_000_000;
/// The longest slice (a sparse table is read a week at a time).
const MAX_SLICE_NS: i64 = 7 * 24 * 3600 * 1_000_000_000;
/// Rows a slice aims at: enough to fill messages, little enough to hold in memory.
const TARGET_ROWS: usize = 100_000;
/// No slice reads more rows than this, whatever its length: a table whose rate jumped after
/// a sparse stretch (commissioning, then production) would otherwise be read whole into
/// memory by a slice sized on the sparse rows.
const MAX_SLICE_ROWS: usize = 4 * TARGET_ROWS;
/// After each slice the live uplink may catch up with what was written meanwhile, for at
/// most this long: live rows go first, and a busy node's backfill still moves.
const LIVE_FIRST_FOR: Duration = Duration::from_secs(10);
/// A store that fails this many queries of one slice in a row (each time with half the
/// slice) fails the backfill.
const QUERY_ATTEMPTS: u32 = 5;

/// `running`, `done`, `cancelled`, `failed`.
const RUNNING: &str = "running";

/// A backfill as kept on disk: what the API shows, and where it stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    status: BackfillStatus,
    from_ns: Option<i64>,
    to_ns: i64,
    /// In the current table, rows before this were acknowledged (`None`: none yet).
    position_ns: Option<i64>,
    slice_ns: i64,
}

impl Job {
    fn is_running(&self) -> bool {
        self.status.state == RUNNING
    }

    fn current_table(&self) -> Option<&str> {
        self.status
            .tables
            .get(self.status.tables_done)
            .map(String::as_str)
    }

    fn next_table(&mut self) {
        self.status.tables_done += 1;
        self.position_ns = None;
        self.slice_ns = FIRST_SLICE_NS;
        self.status.table = self.current_table().map(str::to_owned);
        self.status.done_until = None;
    }

    fn end(&mut self, state: &str, error: Option<String>) {
        self.status.state = state.to_owned();
        self.status.finished_at = Some(now_text());
        self.status.table = None;
        if error.is_some() {
            self.status.last_error = error;
        }
    }
}

fn job_path(data_dir: &Path) -> PathBuf {
    data_dir.join("uplink").join("backfill.json")
}

fn load_job(path: &Path) -> Option<Job> {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<Job>(&bytes) {
            Ok(job) => Some(job),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "The backfill's state cannot be read: it is not resumed (start it again).");
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "The backfill's state cannot be read: it is not resumed.");
            None
        }
    }
}

/// `FROM table WHERE` the rows of `[from_ns, to_ns)` (`None`: from the oldest).
fn span(table: &str, from_ns: Option<i64>, to_ns: i64) -> String {
    let from = from_ns
        .map(|from| format!("time >= to_timestamp_nanos({from}) AND "))
        .unwrap_or_default();
    format!(
        "FROM {} WHERE {from}time < to_timestamp_nanos({to_ns})",
        crate::sql_text::identifier(table)
    )
}

/// The batches of a query of `table`, each column given the kind the table holds it with
/// (a query's result carries no Fabrik kinds, and the hub takes only columns that do).
fn with_kinds(batch: &RecordBatch, table: &Schema) -> Result<RecordBatch, String> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    for field in batch.schema().fields() {
        let known = table
            .field_with_name(field.name())
            .map_err(|_| format!("column `{}` is not in the table's schema", field.name()))?;
        if known.data_type() != field.data_type() {
            return Err(format!(
                "column `{}` reads as {} but the table holds {}",
                field.name(),
                field.data_type(),
                known.data_type()
            ));
        }
        fields.push(known.clone());
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), batch.columns().to_vec())
        .map_err(|e| e.to_string())
}

/// The next slice's length: grown or shrunk by at most four times towards `TARGET_ROWS`.
fn next_slice(slice_ns: i64, rows: usize) -> i64 {
    let next = if rows == 0 {
        slice_ns.saturating_mul(4)
    } else {
        let scaled = (slice_ns as f64) * (TARGET_ROWS as f64) / (rows as f64);
        scaled.clamp(slice_ns as f64 / 4.0, slice_ns as f64 * 4.0) as i64
    };
    next.clamp(1_000_000, MAX_SLICE_NS)
}

struct Shared {
    store: Arc<Store>,
    link: NatsLink,
    subject: String,
    /// `<node>:<instance>`, as the live uplink's ids start.
    id_prefix: String,
    filter: TableFilter,
    path: PathBuf,
    board: LinkBoard,
    job: Mutex<Option<Job>>,
    /// The running job's: cancelled by `DELETE /api/v1/uplink/backfill`.
    cancel: Mutex<CancellationToken>,
    wake: Notify,
}

/// The uplink's backfills: [`BackfillControl`] for the API, and the task that sends them.
#[derive(Clone)]
pub(crate) struct Backfill(Arc<Shared>);

impl Backfill {
    /// Loads the job a restart interrupted (it goes on when [`Backfill::run`] runs).
    pub(crate) fn new(
        store: Arc<Store>,
        link: NatsLink,
        subject: String,
        id_prefix: String,
        filter: TableFilter,
        data_dir: &Path,
        board: LinkBoard,
    ) -> Self {
        let path = job_path(data_dir);
        let job = load_job(&path);
        if let Some(job) = job.as_ref().filter(|j| j.is_running()) {
            tracing::info!(
                id = %job.status.id,
                tables_done = job.status.tables_done,
                table = ?job.current_table(),
                "The backfill to the hub goes on where it stood."
            );
        }
        let backfill = Self(Arc::new(Shared {
            store,
            link,
            subject,
            id_prefix,
            filter,
            path,
            board,
            job: Mutex::new(job),
            cancel: Mutex::new(CancellationToken::new()),
            wake: Notify::new(),
        }));
        backfill.report();
        backfill
    }

    fn report(&self) {
        let status = self.0.job.lock().as_ref().map(|j| j.status.clone());
        if let Some(uplink) = self.0.board.write().uplink.as_mut() {
            uplink.backfill = status;
        }
    }

    /// Changes the job `id` if it still runs, saves it and shows it; false when it no longer
    /// runs (cancelled meanwhile).
    fn update(&self, id: &str, change: impl FnOnce(&mut Job)) -> bool {
        let saved = {
            let mut guard = self.0.job.lock();
            let Some(job) = guard
                .as_mut()
                .filter(|j| j.status.id == id && j.is_running())
            else {
                return false;
            };
            change(job);
            save_json(&self.0.path, job)
        };
        if let Err(e) = saved {
            // The position on disk lags: a restart sends a slice again, which is harmless.
            tracing::warn!(error = %e, "The backfill's position was not saved.");
        }
        self.report();
        true
    }

    fn running(&self) -> Option<Job> {
        self.0.job.lock().clone().filter(Job::is_running)
    }

    fn check(
        &self,
        request: BackfillRequest,
    ) -> Result<(Option<i64>, i64, Vec<String>), ControlError> {
        let mut problems = Vec::new();
        let mut time = |field: &str, text: Option<&str>| match text.map(parse_time) {
            None => None,
            Some(Ok(ns)) => Some(ns),
            Some(Err(e)) => {
                problems.push((field.to_owned(), e));
                None
            }
        };
        let from = time("from", request.from.as_deref());
        let to = time("to", request.to.as_deref())
            .unwrap_or_else(|| chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX));
        if from.is_some_and(|from| from >= to) {
            problems.push(("to".to_owned(), "must be after `from`".to_owned()));
        }
        let store = &self.0.store;
        let tables: Vec<String> = match request.tables {
            Some(asked) => {
                if asked.is_empty() {
                    problems.push(("tables".to_owned(), "names no table".to_owned()));
                }
                let mut tables = Vec::new();
                for (i, table) in asked.into_iter().enumerate() {
                    if !self.0.filter.wants(&table) {
                        problems.push((
                            format!("tables[{i}]"),
                            format!(
                                "`{table}` is not forwarded by this uplink (see uplink.tables and \
                                 uplink.exclude; `_blobs` never goes)"
                            ),
                        ));
                    } else if !store.has_table(&table) {
                        problems.push((
                            format!("tables[{i}]"),
                            format!("no table `{table}` is stored here"),
                        ));
                    } else if !tables.contains(&table) {
                        tables.push(table);
                    }
                }
                tables
            }
            None => {
                let tables: Vec<String> = store
                    .tables()
                    .into_iter()
                    .map(|t| t.name)
                    .filter(|t| self.0.filter.wants(t))
                    .collect();
                if tables.is_empty() {
                    problems.push((
                        "tables".to_owned(),
                        "no table stored here is forwarded by this uplink".to_owned(),
                    ));
                }
                tables
            }
        };
        if problems.is_empty() {
            Ok((from, to, tables))
        } else {
            Err(ControlError::Invalid(problems))
        }
    }

    fn begin(
        &self,
        request: BackfillRequest,
        requested_by: String,
    ) -> Result<BackfillStatus, ControlError> {
        let already_running = |job: &Job| {
            ControlError::NotChangeable(format!(
                "backfill {} is running ({} of {} tables sent): cancel it first \
                 (DELETE /api/v1/uplink/backfill)",
                job.status.id,
                job.status.tables_done,
                job.status.tables.len()
            ))
        };
        if let Some(job) = self.running() {
            return Err(already_running(&job));
        }
        let (from_ns, to_ns, tables) = self.check(request)?;
        let mut bytes = [0u8; 6];
        getrandom::fill(&mut bytes)
            .map_err(|e| ControlError::Storage(format!("no randomness for an id: {e}")))?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let job = Job {
            status: BackfillStatus {
                id,
                state: RUNNING.to_owned(),
                from: from_ns.map(format_time),
                to: format_time(to_ns),
                table: tables.first().cloned(),
                tables,
                started_at: now_text(),
                requested_by,
                ..BackfillStatus::default()
            },
            from_ns,
            to_ns,
            position_ns: None,
            slice_ns: FIRST_SLICE_NS,
        };
        let status = job.status.clone();
        {
            // One lock from the check to the swap: two requests at once start one job, and
            // never write the job file together.
            let mut guard = self.0.job.lock();
            if let Some(running) = guard.as_ref().filter(|j| j.is_running()) {
                return Err(already_running(running));
            }
            // Stored before it starts: a restart goes on with it.
            save_json(&self.0.path, &job).map_err(ControlError::Storage)?;
            *self.0.cancel.lock() = CancellationToken::new();
            *guard = Some(job);
        }
        tracing::info!(
            id = %status.id,
            from = ?status.from,
            to = %status.to,
            tables = ?status.tables,
            by = %status.requested_by,
            "Backfill to the hub started."
        );
        self.report();
        self.0.wake.notify_one();
        Ok(status)
    }

    fn stop_running(&self) -> Result<BackfillStatus, ControlError> {
        let status = {
            let mut guard = self.0.job.lock();
            let Some(job) = guard.as_mut().filter(|j| j.is_running()) else {
                return Err(ControlError::NotFound("no backfill is running".to_owned()));
            };
            // Saved before it takes effect: a cancel the disk did not take would come back
            // to life at the next restart.
            let mut cancelled = job.clone();
            cancelled.end("cancelled", None);
            save_json(&self.0.path, &cancelled).map_err(ControlError::Storage)?;
            *job = cancelled;
            self.0.cancel.lock().cancel();
            job.status.clone()
        };
        tracing::info!(id = %status.id, rows_sent = status.rows_sent, "Backfill to the hub cancelled.");
        self.report();
        Ok(status)
    }

    /// Sends the running job, and each started later, until `stop`.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut js: Option<jetstream::Context> = None;
        loop {
            let Some(job) = self.running() else {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = self.0.wake.notified() => continue,
                }
            };
            let js = match &js {
                Some(js) => js.clone(),
                None => {
                    let name = format!("fabrik-uplink-backfill-{}", self.0.id_prefix);
                    let client = tokio::select! {
                        () = stop.cancelled() => return,
                        client = self.0.link.connect(name, |_| {}) => client,
                    };
                    match client {
                        Ok(client) => {
                            let mut context = jetstream::new(client);
                            context.set_timeout(Duration::from_secs(30));
                            js = Some(context.clone());
                            context
                        }
                        Err(e) => {
                            // Only a malformed address fails here (the uplink checks those).
                            self.update(&job.status.id, |j| j.end("failed", Some(e)));
                            continue;
                        }
                    }
                }
            };
            let cancelled = self.0.cancel.lock().clone();
            tokio::select! {
                () = stop.cancelled() => return,
                () = cancelled.cancelled() => {}
                () = self.send(&js, job.status.id.clone(), &stop) => {}
            }
        }
    }

    /// Sends job `id` slice by slice until it is done, fails, or is cancelled.
    async fn send(&self, js: &jetstream::Context, id: String, stop: &CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        // Apart from `backoff`, so a long wait for the server does not slow the first retry
        // of a publish once it is there.
        let mut connect_wait = Duration::from_millis(200);
        let mut query_failures = 0u32;
        loop {
            let Some(job) = self.running().filter(|j| j.status.id == id) else {
                return;
            };
            let Some(table) = job.current_table().map(str::to_owned) else {
                let finished = self.update(&id, |j| j.end("done", None));
                if finished {
                    tracing::info!(id = %id, rows = job.status.rows_sent, "Backfill to the hub done.");
                }
                return;
            };
            if !self.0.filter.wants(&table) {
                // Excluded since the job started (a restart with a new `[uplink]`): what
                // the uplink may not forward, a backfill may not either.
                tracing::warn!(id = %id, table = %table, "Backfill skips a table the uplink no longer forwards.");
                self.update(&id, |j| {
                    j.status
                        .skipped
                        .push(format!("{table}: the uplink no longer forwards it"));
                    j.next_table();
                });
                continue;
            }
            let Some(schema) = self.0.store.table_schema(&table) else {
                self.update(&id, Job::next_table);
                continue;
            };
            // Before a slice is read and split: until the server has said its payload limit
            // (a restarted edge whose hub is still away), every row would look too large to
            // send and the slice would be passed over as done.
            let Some(max_payload) = crate::uplink::payload_limit(&js.client()) else {
                self.update(&id, |j| {
                    j.status.last_error = Some(
                        "not connected to the NATS server yet (its payload limit is not known)"
                            .into(),
                    );
                });
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(connect_wait) => {}
                }
                connect_wait = (connect_wait * 2).min(Duration::from_secs(10));
                continue;
            };
            let (first, end, batches) = match self.read_slice(&job, &table, &schema, stop).await {
                Ok(Some(slice)) => slice,
                Ok(None) => {
                    self.update(&id, Job::next_table);
                    continue;
                }
                Err((e, rows_failed)) => {
                    query_failures += 1;
                    if rows_failed {
                        self.update(&id, |j| j.slice_ns = (j.slice_ns / 2).max(1_000_000));
                    }
                    if self
                        .query_failed(&id, &table, e, query_failures, stop)
                        .await
                    {
                        return;
                    }
                    continue;
                }
            };
            query_failures = 0;
            let mut messages = Messages::default();
            for (i, batch) in batches.into_iter().enumerate() {
                crate::uplink::split_into_messages(
                    &table,
                    batch,
                    &format!("{}:backfill:{id}:{table}:{first}:{i}", self.0.id_prefix),
                    0,
                    max_payload,
                    &format!("backfill {id}"),
                    &mut messages,
                );
            }
            for problem in &messages.problems {
                tracing::error!(problem = %problem, "Not sent to the hub.");
            }
            let mut acked = std::collections::HashSet::new();
            loop {
                match publish_all(js, &self.0.subject, &messages.out, &mut acked).await {
                    Ok(_) => break,
                    Err(e) => {
                        self.update(&id, |j| j.status.last_error = Some(e));
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
            backoff = Duration::from_millis(200);
            let rows: usize = messages.out.iter().map(|m| m.rows).sum();
            let sent = messages.out.len() as u64;
            let unsendable = messages.unsendable_rows as u64;
            metrics::counter!("fabrik_uplink_backfill_rows_total").increment(rows as u64);
            let still_running = self.update(&id, |j| {
                j.position_ns = Some(end);
                j.status.done_until = Some(format_time(end));
                j.status.rows_sent += rows as u64;
                j.status.messages_sent += sent;
                j.status.unsendable_rows += unsendable;
                j.status.last_error = None;
                j.slice_ns = next_slice(j.slice_ns, rows);
                if end >= j.to_ns {
                    j.next_table();
                }
            });
            if !still_running {
                return;
            }
        }
    }

    /// The next slice of `table` where `job` stands: its first row's time, where it ends, and
    /// its rows; `None` when the span holds no more rows. An error says whether reading the
    /// rows themselves failed (the slice is then halved before the next try).
    async fn read_slice(
        &self,
        job: &Job,
        table: &str,
        schema: &Schema,
        stop: &CancellationToken,
    ) -> Result<Option<(i64, i64, Vec<RecordBatch>)>, (String, bool)> {
        let start = job.position_ns.or(job.from_ns);
        // The next row of the table in the span: gaps are jumped over, not sliced.
        let first = self
            .0
            .store
            .query(&format!(
                "SELECT min(time) AS first {}",
                span(table, start, job.to_ns)
            ))
            .await
            .map_err(|e| e.to_string())
            .and_then(|out| first_time(&out.batches))
            .map_err(|e| (e, false))?;
        let Some(first) = first else {
            return Ok(None);
        };
        let end = first.saturating_add(job.slice_ns).min(job.to_ns);
        // Waited for before the read, not after: a row rewritten at the same series and
        // time while the slice waited would reach the hub live first and then be
        // overwritten there by the older value this slice read.
        self.live_first(stop).await;
        let end = slice_end(&self.0.store, table, first, end, MAX_SLICE_ROWS)
            .await
            .map_err(|e| (e, false))?;
        let batches = self
            .0
            .store
            .query(&format!("SELECT * {}", span(table, Some(first), end)))
            .await
            .map_err(|e| e.to_string())
            .and_then(|out| {
                out.batches
                    .iter()
                    .filter(|b| b.num_rows() > 0)
                    .map(|b| with_kinds(b, schema))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| (e, true))?;
        Ok(Some((first, end, batches)))
    }

    /// Records a failed query; true when the backfill failed for good (or is stopping).
    async fn query_failed(
        &self,
        id: &str,
        table: &str,
        error: String,
        failures: u32,
        stop: &CancellationToken,
    ) -> bool {
        let message = format!("reading table `{table}`: {error}");
        tracing::warn!(id, error = %message, "Backfill: a query failed.");
        if failures >= QUERY_ATTEMPTS {
            self.update(id, |j| j.end("failed", Some(message)));
            return true;
        }
        self.update(id, |j| j.status.last_error = Some(message));
        tokio::select! {
            () = stop.cancelled() => true,
            () = tokio::time::sleep(Duration::from_secs(1)) => false,
        }
    }

    /// Waits (at most `LIVE_FIRST_FOR`) until the live uplink has sent what was written up
    /// to now: a backfill never holds back the rows being written.
    async fn live_first(&self, stop: &CancellationToken) {
        let target = self.0.store.applied_seq();
        let started = Instant::now();
        while started.elapsed() < LIVE_FIRST_FOR {
            let acked = self
                .0
                .board
                .read()
                .uplink
                .as_ref()
                .map_or(u64::MAX, |u| u.acked_seq);
            if acked >= target {
                return;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}

/// Where a slice of `table` from `first` to at most `end` ends so that it holds at most
/// `max_rows` rows: at the time of the row past them, if the span holds more. Rows sharing
/// `first` (one instant of every series) stay together: the slice ends after it at the
/// earliest, or it would never move.
async fn slice_end(
    store: &Store,
    table: &str,
    first: i64,
    end: i64,
    max_rows: usize,
) -> Result<i64, String> {
    let cut = store
        .query(&format!(
            "SELECT time AS first {} ORDER BY time LIMIT 1 OFFSET {max_rows}",
            span(table, Some(first), end)
        ))
        .await
        .map_err(|e| e.to_string())
        .and_then(|out| first_time(&out.batches))?;
    Ok(cut.map_or(end, |cut| cut.max(first.saturating_add(1)).min(end)))
}

/// The time in the single cell of `SELECT min(time)`; `None` when there is no row.
fn first_time(batches: &[RecordBatch]) -> Result<Option<i64>, String> {
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    let column = batch
        .column(0)
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .ok_or_else(|| "min(time) is not a nanosecond timestamp".to_owned())?;
    Ok((!column.is_null(0)).then(|| column.value(0)))
}

impl BackfillControl for Backfill {
    fn start(
        &self,
        request: BackfillRequest,
        requested_by: String,
    ) -> BoxFuture<'_, Result<BackfillStatus, ControlError>> {
        Box::pin(async move { self.begin(request, requested_by) })
    }

    fn cancel(&self) -> BoxFuture<'_, Result<BackfillStatus, ControlError>> {
        Box::pin(async move { self.stop_running() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slice_ends_where_its_rows_reach_the_most_it_may_read() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(fabrik_store::StoreOptions::new(dir.path()))
            .await
            .expect("store");
        // A sparse stretch (a row every 1,000 ns), then a dense one (every ns, two series),
        // then one instant shared by 300 series.
        let mut body = String::new();
        for t in 0..100 {
            body.push_str(&format!("m,dev=a v={t} {}\n", t * 1_000));
        }
        for t in 0..500 {
            for dev in ["a", "b"] {
                body.push_str(&format!("m,dev={dev} v={t} {}\n", 200_000 + t));
            }
        }
        for dev in 0..300 {
            body.push_str(&format!("m,dev=s{dev} v=1 300000\n"));
        }
        store
            .write_lines(
                &body,
                fabrik_core::Precision::Ns,
                fabrik_core::SourceId::http(),
            )
            .await
            .expect("write");
        // The whole span holds 1,400 rows; at most 150: the sparse 100, then 25 instants of
        // the dense stretch.
        let end = slice_end(&store, "m", 0, 1_000_000, 150)
            .await
            .expect("end");
        assert_eq!(end, 200_025);
        // Fewer rows than the most: the span's own end.
        assert_eq!(
            slice_end(&store, "m", 0, 150_000, 150).await.expect("end"),
            150_000
        );
        // 300 rows of one instant with room for 10: they go together, one ns past it.
        assert_eq!(
            slice_end(&store, "m", 300_000, 1_000_000, 10)
                .await
                .expect("end"),
            300_001
        );
        store.close().await;
    }

    #[test]
    fn slices_move_towards_the_target_rows_by_at_most_four_times() {
        assert_eq!(next_slice(FIRST_SLICE_NS, 0), 4 * FIRST_SLICE_NS);
        assert_eq!(next_slice(FIRST_SLICE_NS, TARGET_ROWS), FIRST_SLICE_NS);
        assert_eq!(
            next_slice(FIRST_SLICE_NS, TARGET_ROWS * 2),
            FIRST_SLICE_NS / 2
        );
        assert_eq!(
            next_slice(FIRST_SLICE_NS, TARGET_ROWS * 100),
            FIRST_SLICE_NS / 4
        );
        assert_eq!(next_slice(FIRST_SLICE_NS, 1), 4 * FIRST_SLICE_NS);
        assert_eq!(next_slice(MAX_SLICE_NS, 0), MAX_SLICE_NS);
        assert_eq!(next_slice(2_000_000, TARGET_ROWS * 100), 1_000_000);
    }

    #[test]
    fn a_query_result_gets_the_kinds_of_its_table_and_a_foreign_column_is_refused() {
        use fabrik_core::FieldType;
        use fabrik_store::arrow::array::{Float64Array, StringArray};
        use fabrik_store::arrow::datatypes::{DataType, Field};
        use fabrik_store::schema::{ColumnKind, arrow_field, kind_of};
        let table = Schema::new(vec![
            arrow_field("dev", ColumnKind::Tag),
            arrow_field("v", ColumnKind::Field(FieldType::Float)),
        ]);
        let plain = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Float64, true),
            Field::new("dev", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            plain,
            vec![
                Arc::new(Float64Array::from(vec![1.5])),
                Arc::new(StringArray::from(vec!["d1"])),
            ],
        )
        .expect("batch");
        let kinded = with_kinds(&batch, &table).expect("kinds");
        let schema = kinded.schema();
        assert_eq!(
            kind_of(schema.field(0)),
            Some(ColumnKind::Field(FieldType::Float))
        );
        assert_eq!(kind_of(schema.field(1)), Some(ColumnKind::Tag));
        let other = Schema::new(vec![arrow_field("dev", ColumnKind::Tag)]);
        let err = with_kinds(&batch, &other).expect_err("v is not in it");
        assert!(err.contains("column `v`"), "{err}");
        let typed = Schema::new(vec![
            arrow_field("v", ColumnKind::Field(FieldType::Integer)),
            arrow_field("dev", ColumnKind::Tag),
        ]);
        let err = with_kinds(&batch, &typed).expect_err("v is an integer there");
        assert!(err.contains("Int64"), "{err}");
    }

    #[test]
    fn table_names_are_quoted_for_sql() {
        assert_eq!(crate::sql_text::identifier("up"), "\"up\"");
        assert_eq!(crate::sql_text::identifier("a\"b"), "\"a\"\"b\"");
    }
}
