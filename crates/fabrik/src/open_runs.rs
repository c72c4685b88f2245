//! The streaming OpenLineage runs that may be open on a transport — whose START it took and
//! whose end it has not delivered — kept in a file of the data directory so that the next start
//! ABORTs, on those transports, each run a killed process left open (decision 0082). Only the
//! process that holds the data directory (its store opened) keeps the file, and only while it
//! holds the file's own lock: a process started on the directory by mistake aborts nothing,
//! and one started while the previous one still finishes its last write waits for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::openlineage::{Emitter, EventType, JobRun, KEEP_FREE, Processing, now};

/// The file of the data directory that lists the runs.
const FILE: &str = "openlineage-open-runs.json";
/// The file whose lock the process keeping the list holds.
const LOCK_FILE: &str = "openlineage-open-runs.lock";
/// How often the list is brought up to date when it changed (a run began, or its end was
/// delivered somewhere).
const EVERY: Duration = Duration::from_secs(1);
/// How often it is rewritten while runs are listed and none began or ended, so that its time
/// says when the process was last known to run.
const HEARTBEAT: Duration = Duration::from_secs(60);
/// How often a wait for the list's lock is logged as a warning.
const LONG_WAIT: Duration = Duration::from_secs(30);
/// Runs left open that a start takes from the list at most (the most recently alive): a list
/// that grew across many restarts while the catalog was unreachable stays bounded.
const MOST_STALE: usize = 10_000;

/// A streaming run that began, as the list holds it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct OpenRun {
    pub(crate) run_id: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) job_type: String,
    /// The transports (`http`, `file`) that took its START and have not delivered its end.
    pub(crate) transports: Vec<String>,
    /// For a run an earlier process left open: when that process was last known to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) alive_at: Option<String>,
}

/// The run id of the streaming run `event` ends, if it ends one (batch runs begin and end in
/// one go, and are never listed).
pub(crate) fn run_ended_by(event: &Value) -> Option<String> {
    let ends = matches!(
        event["eventType"].as_str(),
        Some("COMPLETE" | "FAIL" | "ABORT")
    );
    let streaming = event["job"]["facets"]["jobType"]["processingType"] == "STREAMING";
    (ends && streaming)
        .then(|| event["run"]["runId"].as_str().map(str::to_owned))
        .flatten()
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
    /// When a wait for the list's lock was last logged as a warning (or began).
    waiting_since: Option<Instant>,
    /// Once the list's lock is held: the list's path, and the lock's file (the lock lasts as
    /// long as the file is open; a write under way holds a clone).
    held: Option<(PathBuf, Arc<std::fs::File>)>,
    /// Runs of this process that are open on some transport, by run id.
    open: BTreeMap<String, OpenRun>,
    /// Runs an earlier process left open, whose ABORT is not queued yet.
    stale: Vec<OpenRun>,
    /// Whether the file is behind, and when it was last written.
    dirty: bool,
    written: Option<Instant>,
}

impl State {
    fn listed(&self) -> impl Iterator<Item = &OpenRun> {
        self.stale.iter().chain(self.open.values())
    }
}

/// The runs of this process that may be open on a transport, and those an earlier process
/// left open.
#[derive(Debug, Default)]
pub(crate) struct OpenRuns {
    state: parking_lot::Mutex<State>,
}

impl OpenRuns {
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
        let dir = {
            let state = self.state.lock();
            match (&state.data_dir, &state.held) {
                (Some(dir), None) => dir.clone(),
                _ => return,
            }
        };
        // The files are read without the state's lock, which every event takes.
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE));
        let lock = match lock.map(|file| (file.try_lock(), file)) {
            Ok((Ok(()), file)) => file,
            Ok((Err(std::fs::TryLockError::WouldBlock), _)) => {
                let mut state = self.state.lock();
                let since = state.waiting_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= LONG_WAIT {
                    *since = Instant::now();
                    tracing::warn!(
                        "The list of open OpenLineage runs is still locked by another process; runs left open are not aborted yet."
                    );
                } else {
                    tracing::debug!(
                        "The list of open OpenLineage runs is still held by a process that stops; waiting."
                    );
                }
                return;
            }
            Ok((Err(std::fs::TryLockError::Error(e)), _)) | Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "The list of open OpenLineage runs cannot be locked; trying again.");
                return;
            }
        };
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
        let mut stale: Vec<OpenRun> = listed
            .map(|listed| {
                listed
                    .runs
                    .into_iter()
                    .map(|mut run| {
                        run.alive_at.get_or_insert_with(|| listed.alive_at.clone());
                        run
                    })
                    .collect()
            })
            .unwrap_or_default();
        if stale.len() > MOST_STALE {
            // RFC 3339 times of one format sort as strings: the most recently alive are kept.
            stale.sort_by(|a, b| b.alive_at.cmp(&a.alive_at));
            tracing::warn!(
                listed = stale.len(),
                kept = MOST_STALE,
                "More OpenLineage runs were left open than are aborted at once; the oldest stay open in the catalog."
            );
            stale.truncate(MOST_STALE);
        }
        let mut state = self.state.lock();
        state.stale = stale;
        state.held = Some((path, Arc::new(lock)));
        state.waiting_since = None;
        state.dirty = true;
    }

    /// A run began: its START was queued on `transports` (none: nothing to end later).
    pub(crate) fn began(&self, run: &JobRun, transports: &[&'static str]) {
        let mut state = self.state.lock();
        if state.data_dir.is_none() || transports.is_empty() {
            return;
        }
        state.open.insert(
            run.run_id.clone(),
            OpenRun {
                run_id: run.run_id.clone(),
                namespace: run.job_namespace.clone(),
                name: run.job_name.clone(),
                job_type: run.job_type.to_string(),
                transports: transports.iter().map(|t| (*t).to_owned()).collect(),
                alive_at: None,
            },
        );
        state.dirty = true;
    }

    /// `transport` delivered the end of run `run_id`: it is no longer open there (and once it
    /// is open nowhere, not listed).
    pub(crate) fn delivered(&self, run_id: &str, transport: &str) {
        let mut state = self.state.lock();
        let Some(run) = state.open.get_mut(run_id) else {
            return;
        };
        run.transports.retain(|t| t != transport);
        if run.transports.is_empty() {
            state.open.remove(run_id);
        }
        state.dirty = true;
    }

    /// Queues an ABORT for each run an earlier process left open, on the transports where it
    /// is open, as the queues have room beyond [`KEEP_FREE`] slots; the others wait for the
    /// next call. Each is dated a moment ([`EVERY`]) after the time that process was last
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
            let mut rest = batch.into_iter();
            while let Some(run) = rest.next() {
                let waits = self.abort(emitter, run);
                if let Some(waits) = waits {
                    // A queue filled meanwhile: this run and the rest of the batch wait.
                    let mut state = self.state.lock();
                    state.stale.push(waits);
                    state.stale.extend(rest);
                    state.dirty = true;
                    return;
                }
            }
        }
    }

    /// Queues `run`'s ABORT where it is open; the run as it still waits where a queue was
    /// full, if anywhere.
    fn abort(&self, emitter: &Emitter, run: OpenRun) -> Option<OpenRun> {
        let known = run.alive_at.clone().unwrap_or_else(now);
        let at = chrono::DateTime::parse_from_rfc3339(&known)
            .map(|t| {
                (t.with_timezone(&chrono::Utc) + EVERY)
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            })
            .unwrap_or_else(|_| now());
        let why = format!(
            "Fabrik stopped without ending this run (the process was killed, or its host lost \
             power); it was last known to run at {known}, and its next start ended the run"
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
        // Listed as awaiting its ABORT's delivery before it is queued, so a transport that
        // delivers it at once finds the run (merged with a part of it already awaiting).
        self.state
            .lock()
            .open
            .entry(run.run_id.clone())
            .and_modify(|open| {
                for t in &run.transports {
                    if !open.transports.contains(t) {
                        open.transports.push(t.clone());
                    }
                }
            })
            .or_insert_with(|| run.clone());
        let took = emitter.emit_to(&event, &run.transports);
        let missed: Vec<String> = run
            .transports
            .iter()
            .filter(|t| !took.contains(&t.as_str()))
            .cloned()
            .collect();
        // The ones whose queue was full wait for room; a transport this process does not (or no
        // longer) sends to cannot get it.
        let (full, gone): (Vec<String>, Vec<String>) =
            missed.iter().cloned().partition(|t| emitter.accepts(t));
        if !gone.is_empty() {
            tracing::warn!(run = %run.run_id, transports = ?gone, "A run left open is not aborted where Fabrik does not send lineage now.");
        }
        let mut state = self.state.lock();
        state.dirty = true;
        if let Some(awaiting) = state.open.get_mut(&run.run_id) {
            awaiting.transports.retain(|t| !missed.contains(t));
            if awaiting.transports.is_empty() {
                state.open.remove(&run.run_id);
            }
        }
        if full.is_empty() {
            return None;
        }
        Some(OpenRun {
            transports: full,
            ..run
        })
    }

    /// Writes the list if it is behind (or, while runs are listed, every [`HEARTBEAT`]): to a
    /// temporary file, synced, renamed over it, and the directory synced, so a crash or a power
    /// cut leaves the old list or the new one. The lock is held until the write is done, even
    /// if the process lets go of everything else meanwhile.
    pub(crate) async fn persist(&self) {
        let (path, lock, listed) = {
            let mut state = self.state.lock();
            let Some((path, lock)) = &state.held else {
                return;
            };
            let (path, lock) = (path.clone(), lock.clone());
            let listed_any = state.listed().next().is_some();
            let heartbeat = listed_any && state.written.is_none_or(|at| at.elapsed() >= HEARTBEAT);
            if !state.dirty && !heartbeat {
                return;
            }
            state.dirty = false;
            state.written = Some(Instant::now());
            let runs = state.listed().cloned().collect();
            (
                path,
                lock,
                Listed {
                    alive_at: now(),
                    runs,
                },
            )
        };
        let write = move || -> std::io::Result<()> {
            let _held = lock;
            let bytes = serde_json::to_vec(&listed).map_err(std::io::Error::other)?;
            // One writer at a time: the list's lock is held until this write is done.
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
        self.state
            .lock()
            .listed()
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

    /// What the file transport does with events it wrote: tells the list of the ends.
    fn deliver(emitter: &Emitter, events: &[Value]) {
        for event in events {
            if let Some(run) = run_ended_by(event) {
                emitter.open_runs().delivered(&run, "file");
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
        // Listed once a transport took their START.
        assert_eq!(emitter.open_runs().listed().len(), 2);
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
            emitter.emit_all(&[serde_json::json!({ "filler": true })]);
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
        let complete = batch.event(EventType::Complete, &at, &[], &[], None);
        assert_eq!(run_ended_by(&complete), None);
    }

    /// Runs left open wait for room in the queue, none lost; each is aborted where this process
    /// sends (a transport it does not send to is given up) and leaves the list once delivered.
    #[tokio::test]
    async fn aborts_wait_for_room_and_none_is_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let listed = Listed {
            alive_at: now(),
            runs: (0..3)
                .map(|i| OpenRun {
                    run_id: format!("run-{i}"),
                    namespace: "fabrik://edge".into(),
                    name: format!("pipeline.p{i}"),
                    job_type: "INFERENCE".into(),
                    transports: vec!["file".into(), "http".into()],
                    alive_at: None,
                })
                .collect(),
        };
        std::fs::write(
            dir.path().join(FILE),
            serde_json::to_vec(&listed).expect("JSON"),
        )
        .expect("the list");
        // This process sends to the file only: `http` is given up.
        let (emitter, mut sender) = test_channel("edge");
        // Nearly full: room for one ABORT beyond the slots kept free.
        while emitter.room() > KEEP_FREE + 1 {
            emitter.emit_all(&[serde_json::json!({ "filler": true })]);
        }
        emitter.keep_open_runs_in(dir.path());
        let events: Vec<Value> = sender
            .take_queued_file_events()
            .into_iter()
            .filter(|e| e["eventType"] == "ABORT")
            .collect();
        assert_eq!(events.len(), 1, "one had room");
        let mut waiting = emitter.open_runs().listed();
        waiting.sort();
        assert_eq!(waiting, ["run-0", "run-1", "run-2"], "none lost");
        // Room again: the others follow, and each leaves the list once delivered.
        emitter.open_runs().abort_stale(&emitter);
        let events: Vec<Value> = sender.take_queued_file_events();
        assert_eq!(events.len(), 2, "{events:?}");
        deliver(&emitter, &events);
        let left = emitter.open_runs().listed();
        assert_eq!(
            left.len(),
            1,
            "the first ABORT is not delivered yet: {left:?}"
        );
    }
}
