//! The streaming OpenLineage runs whose START a transport delivered and whose end it has not,
//! kept in a file of the data directory so that the next start ABORTs, on those transports,
//! each run a killed process left open (decision 0082). Only the process that holds
//! the data directory (its store opened) keeps the file, and only while it holds the file's own
//! lock: a process started on the directory by mistake aborts nothing, and one started while
//! the previous one still finishes its last write waits for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::openlineage::{Emitter, EventType, JobRun, KEEP_FREE, Processing, now};

/// The file of the data directory that lists the runs.
pub(crate) const FILE: &str = "openlineage-open-runs.json";
/// The file whose lock the process keeping the list holds.
const LOCK_FILE: &str = "openlineage-open-runs.lock";
/// How often the list is brought up to date when anything was sent since.
pub(crate) const EVERY: Duration = Duration::from_secs(1);
/// How often it is rewritten while runs are open and nothing was sent, so that its time says
/// when the process was last known to run.
const HEARTBEAT: Duration = Duration::from_secs(60);

/// A streaming run that began, as the list holds it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct OpenRun {
    pub(crate) run_id: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) job_type: String,
    /// The transports (`http`, `file`) that delivered its START and not yet its end.
    pub(crate) transports: Vec<String>,
    /// For a run an earlier process left open: when that process was last known to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) alive_at: Option<String>,
}

/// What an event is to the list: the START or the end of a streaming run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    Start,
    End,
}

/// The run id of the streaming run `event` starts or ends, if it does (batch runs begin and
/// end in one go, and are never listed).
pub(crate) fn streaming_mark(event: &Value) -> Option<(String, Mark)> {
    if event["job"]["facets"]["jobType"]["processingType"] != "STREAMING" {
        return None;
    }
    let mark = match event["eventType"].as_str()? {
        "START" => Mark::Start,
        "COMPLETE" | "FAIL" | "ABORT" => Mark::End,
        _ => return None,
    };
    Some((event["run"]["runId"].as_str()?.to_owned(), mark))
}

/// The file's content.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Listed {
    /// When it was written (RFC 3339): the process ran then.
    alive_at: String,
    runs: Vec<OpenRun>,
}

#[derive(Debug, Default)]
struct State {
    /// The data directory this process holds, once its store opened: runs are tracked from
    /// then on.
    data_dir: Option<PathBuf>,
    /// Once the list's lock is held: the list's path, and the lock's file (held while open).
    held: Option<(PathBuf, std::fs::File)>,
    /// Runs of this process that began, by run id, with the transports that delivered their
    /// START and not their end (listed only while there is one).
    open: BTreeMap<String, OpenRun>,
    /// Runs an earlier process left open, whose ABORT is not queued yet.
    stale: Vec<OpenRun>,
    /// Whether the file is behind, and when it was last written.
    dirty: bool,
    written: Option<Instant>,
}

/// The runs of this process whose end has not reached every transport, and those an earlier
/// process left open.
#[derive(Debug)]
pub(crate) struct OpenRuns {
    /// The transports this process sends to.
    transports: Vec<&'static str>,
    state: parking_lot::Mutex<State>,
}

impl OpenRuns {
    pub(crate) fn new(transports: Vec<&'static str>) -> Self {
        Self {
            transports,
            state: parking_lot::Mutex::new(State::default()),
        }
    }

    /// This process holds `data_dir` (its store opened): runs are tracked from now on, and kept
    /// in the list once its lock is held ([`OpenRuns::hold`]).
    pub(crate) fn keep_in(&self, data_dir: &Path) {
        self.state.lock().data_dir = Some(data_dir.to_owned());
    }

    /// Takes the list's lock if this process should and does not hold it yet, and reads the
    /// runs an earlier process left there. A lock still held (the previous process finishing
    /// its last write) is tried again at the next call; a list that cannot be read is logged
    /// and taken as empty (its runs stay open in the catalog).
    pub(crate) fn hold(&self) {
        let mut state = self.state.lock();
        let Some(dir) = state.data_dir.clone() else {
            return;
        };
        if state.held.is_some() {
            return;
        }
        let lock = match std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
        {
            Ok(lock) => lock,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "The list of open OpenLineage runs cannot be locked; trying again.");
                return;
            }
        };
        if lock.try_lock().is_err() {
            tracing::debug!(
                "The list of open OpenLineage runs is still held by a process that stops; waiting."
            );
            return;
        }
        let path = dir.join(FILE);
        let unreadable = |e: &dyn std::fmt::Display| {
            tracing::warn!(file = %path.display(), error = %e, "The list of OpenLineage runs left open is unreadable; they are not aborted.");
        };
        let listed = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Listed>(&bytes)
                .map_err(|e| unreadable(&e))
                .ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                unreadable(&e);
                None
            }
        };
        if let Some(listed) = listed {
            state.stale = listed
                .runs
                .into_iter()
                .map(|mut run| {
                    run.alive_at.get_or_insert_with(|| listed.alive_at.clone());
                    run
                })
                .collect();
        }
        state.held = Some((path, lock));
        state.dirty = true;
    }

    /// A run begins (its START is about to be queued): listed once a transport delivers that
    /// START.
    pub(crate) fn began(&self, run: &JobRun) {
        let mut state = self.state.lock();
        if state.data_dir.is_none() {
            return;
        }
        state.open.insert(
            run.run_id.clone(),
            OpenRun {
                run_id: run.run_id.clone(),
                namespace: run.job_namespace.clone(),
                name: run.job_name.clone(),
                job_type: run.job_type.to_string(),
                transports: Vec::new(),
                alive_at: None,
            },
        );
    }

    /// A run whose START no transport took: nothing to end.
    pub(crate) fn forget(&self, run_id: &str) {
        self.state.lock().open.remove(run_id);
    }

    /// An event was queued: the list's time is to move on with it.
    pub(crate) fn sent(&self) {
        self.state.lock().dirty = true;
    }

    /// `transport` delivered `mark` of run `run_id`: after its START the run is open there;
    /// after its end, no longer (and once no transport has it open, it is not listed).
    pub(crate) fn delivered(&self, run_id: &str, mark: Mark, transport: &str) {
        let mut state = self.state.lock();
        let Some(run) = state.open.get_mut(run_id) else {
            return;
        };
        match mark {
            Mark::Start => {
                if !run.transports.iter().any(|t| t == transport) {
                    run.transports.push(transport.to_owned());
                }
            }
            Mark::End => {
                run.transports.retain(|t| t != transport);
                if run.transports.is_empty() {
                    state.open.remove(run_id);
                }
            }
        }
        state.dirty = true;
    }

    /// Queues an ABORT for each run an earlier process left open, on the transports that
    /// missed its end, as the queues have room beyond [`KEEP_FREE`] slots; the others wait for
    /// the next call. Each is dated a moment ([`EVERY`]) after the time that process was last
    /// known to run, after every event it sent before its list was last written.
    pub(crate) fn abort_stale(&self, emitter: &Emitter) {
        loop {
            let room = emitter.room().saturating_sub(KEEP_FREE);
            let batch = {
                let mut state = self.state.lock();
                if state.held.is_none() {
                    return;
                }
                let keep = state.stale.len().saturating_sub(room);
                state.stale.split_off(keep)
            };
            if batch.is_empty() {
                return;
            }
            for run in batch {
                let known = run.alive_at.clone().unwrap_or_else(now);
                let at = chrono::DateTime::parse_from_rfc3339(&known)
                    .map(|t| {
                        (t.with_timezone(&chrono::Utc) + EVERY)
                            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    })
                    .unwrap_or_else(|_| now());
                let why = format!(
                    "Fabrik stopped without ending this run (the process was killed, or its host \
                     lost power); it was last known to run at {known}, and its next start ended \
                     the run"
                );
                let job = JobRun {
                    run_id: run.run_id.clone(),
                    job_namespace: run.namespace.clone(),
                    job_name: run.name.clone(),
                    processing: Processing::Streaming,
                    job_type: run.job_type.clone().into(),
                    parent: None,
                    nominal: None,
                    sql: None,
                };
                let event = job.event(EventType::Abort, &at, &[], &[], Some(&why));
                // Listed as awaiting its ABORT's delivery before it is queued, so a transport
                // that delivers it at once finds the run.
                self.state
                    .lock()
                    .open
                    .insert(run.run_id.clone(), run.clone());
                let took = emitter.emit_to(&event, &run.transports);
                let missed: Vec<String> = run
                    .transports
                    .iter()
                    .filter(|t| !took.contains(&t.as_str()))
                    .cloned()
                    .collect();
                // The ones whose queue was full wait for room; a transport this process no
                // longer sends to cannot get it.
                let (full, gone): (Vec<String>, Vec<String>) = missed
                    .iter()
                    .cloned()
                    .partition(|t| self.transports.contains(&t.as_str()));
                if !gone.is_empty() {
                    tracing::warn!(run = %run.run_id, transports = ?gone, "A run left open is not aborted where Fabrik no longer sends lineage.");
                }
                let mut state = self.state.lock();
                state.dirty = true;
                if let Some(awaiting) = state.open.get_mut(&run.run_id) {
                    awaiting.transports.retain(|t| !missed.contains(t));
                    if awaiting.transports.is_empty() {
                        state.open.remove(&run.run_id);
                    }
                }
                if !full.is_empty() {
                    state.stale.push(OpenRun {
                        transports: full,
                        ..run
                    });
                    return;
                }
            }
        }
    }

    /// Writes the list if it is behind (or, while runs are open, every [`HEARTBEAT`]): to a
    /// temporary file, synced, renamed over it, and the directory synced, so a crash or a power
    /// cut leaves the old list or the new one.
    pub(crate) async fn persist(&self) {
        let (path, listed) = {
            let mut state = self.state.lock();
            let Some((path, _)) = &state.held else {
                return;
            };
            let path = path.clone();
            let heartbeat = !(state.open.is_empty() && state.stale.is_empty())
                && state.written.is_none_or(|at| at.elapsed() >= HEARTBEAT);
            if !state.dirty && !heartbeat {
                return;
            }
            state.dirty = false;
            state.written = Some(Instant::now());
            let runs = state
                .stale
                .iter()
                .chain(state.open.values())
                .filter(|run| !run.transports.is_empty())
                .cloned()
                .collect();
            (
                path,
                Listed {
                    alive_at: now(),
                    runs,
                },
            )
        };
        let write = move || -> std::io::Result<()> {
            let bytes = serde_json::to_vec(&listed).map_err(std::io::Error::other)?;
            let temporary = path.with_extension("json.tmp");
            let mut file = std::fs::File::create(&temporary)?;
            std::io::Write::write_all(&mut file, &bytes)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        let written = tokio::task::spawn_blocking(write)
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        if let Err(e) = written {
            tracing::warn!(error = %e, "The list of open OpenLineage runs was not written; trying again.");
            self.state.lock().dirty = true;
        }
    }

    /// Lets the list's lock go, as a killed process does (for tests, where the process lives on).
    #[cfg(test)]
    pub(crate) fn die(&self) {
        let mut state = self.state.lock();
        state.held = None;
        state.data_dir = None;
    }

    /// The run ids the list would hold now (for tests).
    #[cfg(test)]
    pub(crate) fn listed(&self) -> Vec<String> {
        let state = self.state.lock();
        state
            .stale
            .iter()
            .chain(state.open.values())
            .filter(|run| !run.transports.is_empty())
            .map(|r| r.run_id.clone())
            .collect()
    }
}

/// Takes the list's lock (as soon as the previous process let it go), aborts the runs an
/// earlier process left open and keeps the list up to date until `stop`, then writes it once
/// more (the modules have queued their runs' ends by then; [`crate::openlineage::send`] writes
/// it again after the drain, with what was delivered).
pub(crate) async fn keep(emitter: Emitter, stop: &tokio_util::sync::CancellationToken) {
    let open_runs = emitter.open_runs().clone();
    loop {
        open_runs.hold();
        open_runs.abort_stale(&emitter);
        open_runs.persist().await;
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
    open_runs.persist().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openlineage::{StreamingRun, test_channel};

    fn listed_in(file: &Path) -> Listed {
        serde_json::from_slice(&std::fs::read(file).expect("the list")).expect("JSON")
    }

    /// What the file transport does with events it wrote: tells the list.
    fn deliver(emitter: &Emitter, events: &[Value]) {
        for event in events {
            if let Some((run, mark)) = streaming_mark(event) {
                emitter.open_runs().delivered(&run, mark, "file");
            }
        }
    }

    /// A process killed with runs open leaves them in its data directory; the next process
    /// that holds the directory ABORTs them, naming the run and the job and dated just after
    /// the killed one was last known to run, and then lists them no more. Runs whose end was
    /// delivered are not aborted.
    #[tokio::test]
    async fn runs_a_killed_process_left_open_are_aborted_by_the_next_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let list = dir.path().join(FILE);
        let (emitter, mut sender) = test_channel("edge");
        emitter.keep_open_runs_in(dir.path());
        let ended = StreamingRun::new(&emitter, "pipeline.a".into(), "INFERENCE", None);
        ended.started(&[], &[]);
        let left_open = StreamingRun::new(&emitter, "alert_rule.b".into(), "ALERTING", None);
        left_open.started(&[], &[]);
        // Queued is not delivered: listed only once the file has a START.
        assert!(emitter.open_runs().listed().is_empty());
        deliver(&emitter, &sender.take_queued_file_events());
        assert_eq!(emitter.open_runs().listed().len(), 2);
        ended.emit(EventType::Complete, &[], &[], None);
        assert_eq!(
            emitter.open_runs().listed().len(),
            2,
            "queued, not delivered"
        );
        deliver(&emitter, &sender.take_queued_file_events());
        emitter.open_runs().persist().await;
        let listed = listed_in(&list);
        assert_eq!(listed.runs.len(), 1, "{listed:?}");
        assert_eq!(listed.runs[0].run_id, left_open.run.run_id);
        assert_eq!(listed.runs[0].transports, ["file"]);
        // Killed: no FAIL is sent as the run is dropped, and its lock goes with it.
        let open_id = left_open.run.run_id.clone();
        std::mem::forget(left_open);
        emitter.open_runs().die();

        let (emitter, mut sender) = test_channel("edge");
        emitter.keep_open_runs_in(dir.path());
        let events = sender.take_queued_file_events();
        assert_eq!(events.len(), 1, "{events:?}");
        let abort = &events[0];
        assert_eq!(abort["eventType"], "ABORT");
        let alive = chrono::DateTime::parse_from_rfc3339(&listed.alive_at).expect("a time");
        let dated = chrono::DateTime::parse_from_rfc3339(abort["eventTime"].as_str().unwrap_or(""))
            .expect("a time");
        assert_eq!(dated - alive, chrono::Duration::seconds(1));
        assert_eq!(abort["run"]["runId"], open_id.as_str());
        assert_eq!(abort["job"]["name"], "alert_rule.b");
        assert_eq!(abort["job"]["namespace"], "fabrik://edge");
        assert_eq!(abort["job"]["facets"]["jobType"]["jobType"], "ALERTING");
        assert_eq!(
            abort["job"]["facets"]["jobType"]["processingType"],
            "STREAMING"
        );
        assert!(
            abort["run"]["facets"]["errorMessage"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("killed")),
            "{abort}"
        );
        // Listed until the ABORT is delivered.
        emitter.open_runs().persist().await;
        assert_eq!(listed_in(&list).runs.len(), 1);
        deliver(&emitter, &events);
        emitter.open_runs().persist().await;
        assert!(listed_in(&list).runs.is_empty());
        emitter.open_runs().die();

        // A third process finds nothing to abort.
        let (emitter, mut sender) = test_channel("edge");
        emitter.keep_open_runs_in(dir.path());
        assert!(sender.take_queued_file_events().is_empty());
    }

    /// A process that does not hold the list's lock (the previous one still writes it) aborts
    /// nothing until it does, and one that never holds the data directory tracks nothing.
    #[tokio::test]
    async fn only_the_holder_of_the_list_aborts_and_keeps_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, mut first_sender) = test_channel("edge");
        first.keep_open_runs_in(dir.path());
        let run = StreamingRun::new(&first, "pipeline.a".into(), "INFERENCE", None);
        run.started(&[], &[]);
        deliver(&first, &first_sender.take_queued_file_events());
        first.open_runs().persist().await;
        std::mem::forget(run);

        let (second, mut sender) = test_channel("edge");
        second.keep_open_runs_in(dir.path());
        assert!(
            sender.take_queued_file_events().is_empty(),
            "the first process still holds the list"
        );
        first.open_runs().die();
        second.open_runs().hold();
        second.open_runs().abort_stale(&second);
        let events = sender.take_queued_file_events();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["eventType"], "ABORT");

        let (bystander, mut sender) = test_channel("edge");
        let run = StreamingRun::new(&bystander, "pipeline.b".into(), "INFERENCE", None);
        run.started(&[], &[]);
        deliver(&bystander, &sender.take_queued_file_events());
        assert!(bystander.open_runs().listed().is_empty());
    }

    /// An end a transport's queue could not take, or has not delivered, leaves the run
    /// listed; a batch run's START and end are no run to list.
    #[test]
    fn a_run_whose_end_was_not_delivered_stays_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (emitter, mut sender) = test_channel("edge");
        emitter.keep_open_runs_in(dir.path());
        let run = StreamingRun::new(&emitter, "pipeline.a".into(), "INFERENCE", None);
        run.started(&[], &[]);
        deliver(&emitter, &sender.take_queued_file_events());
        while emitter.room() > 0 {
            emitter.emit(serde_json::json!({ "filler": true }));
        }
        run.emit(EventType::Complete, &[], &[], None);
        deliver(&emitter, &sender.take_queued_file_events());
        assert_eq!(
            emitter.open_runs().listed(),
            std::slice::from_ref(&run.run.run_id),
            "its COMPLETE found the queue full"
        );

        let other = StreamingRun::new(&emitter, "pipeline.b".into(), "INFERENCE", None);
        other.started(&[], &[]);
        deliver(&emitter, &sender.take_queued_file_events());
        other.emit(EventType::Complete, &[], &[], None);
        assert_eq!(
            emitter.open_runs().listed().len(),
            2,
            "queued, not delivered"
        );
        deliver(&emitter, &sender.take_queued_file_events());
        assert_eq!(
            emitter.open_runs().listed(),
            std::slice::from_ref(&run.run.run_id)
        );

        let batch = crate::openlineage::JobRun::batch(&emitter, "x".into(), "KPI", (0, 1));
        let at = crate::openlineage::now();
        for kind in [EventType::Start, EventType::Complete] {
            assert_eq!(
                streaming_mark(&batch.event(kind, &at, &[], &[], None)),
                None
            );
        }
    }
}
