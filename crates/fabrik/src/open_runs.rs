//! The streaming OpenLineage runs that began and have not ended, kept in a file of the data
//! directory so that the next start ABORTs the runs a killed process left open (decision
//! 0082). Only a process that holds the data directory (its store's `LOCK`) keeps the file:
//! another one started on it by mistake must not abort the live process's runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::openlineage::{Emitter, EventType, JobRun, KEEP_FREE, Processing, now};

/// The file of the data directory that lists the runs.
pub(crate) const FILE: &str = "openlineage-open-runs.json";
/// How often the file is brought up to date when a run began, reported or ended since.
pub(crate) const EVERY: Duration = Duration::from_secs(1);
/// How often it is rewritten while runs are open and nothing changed, so that its time says
/// when the process was last known to run.
const HEARTBEAT: Duration = Duration::from_secs(60);

/// A streaming run that began, as the file lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct OpenRun {
    pub(crate) run_id: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) job_type: String,
}

impl OpenRun {
    /// The run an event ends, if it ends a streaming run (batch runs begin and end in one
    /// go, and are never listed).
    pub(crate) fn ended_by(event: &Value) -> Option<Self> {
        let ends = matches!(
            event["eventType"].as_str(),
            Some("COMPLETE" | "FAIL" | "ABORT")
        );
        let job_type = &event["job"]["facets"]["jobType"];
        if !ends || job_type["processingType"] != "STREAMING" {
            return None;
        }
        Some(Self {
            run_id: event["run"]["runId"].as_str()?.to_owned(),
            namespace: event["job"]["namespace"].as_str()?.to_owned(),
            name: event["job"]["name"].as_str()?.to_owned(),
            job_type: job_type["jobType"].as_str()?.to_owned(),
        })
    }
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
    /// Runs of this process that began and have not ended (or whose end was not delivered),
    /// by run id.
    open: BTreeMap<String, OpenRun>,
    /// Runs an earlier process left open, whose ABORT is not queued yet, and when that
    /// process was last known to run.
    stale: Vec<OpenRun>,
    stale_at: Option<String>,
    /// Whether the file is behind, and when it was last written.
    dirty: bool,
    written: Option<Instant>,
}

/// The runs of this process begun and not ended, and those an earlier one left open.
#[derive(Debug, Default)]
pub(crate) struct OpenRuns {
    /// The file, once this process holds the data directory; before (and in tests), runs are
    /// tracked but not kept.
    path: OnceLock<PathBuf>,
    state: parking_lot::Mutex<State>,
}

impl OpenRuns {
    /// This process holds `data_dir`: the runs an earlier process left in its file are to be
    /// aborted, and this process's are kept there from now on. A file that cannot be read is
    /// logged and taken as empty (its runs stay open in the catalog).
    pub(crate) fn keep_in(&self, data_dir: &Path) {
        let path = data_dir.join(FILE);
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
        if self.path.set(path).is_err() {
            return;
        }
        let mut state = self.state.lock();
        if let Some(listed) = listed {
            state.stale = listed.runs;
            state.stale_at = Some(listed.alive_at);
        }
        state.dirty = true;
    }

    pub(crate) fn began(&self, run: &JobRun) {
        let mut state = self.state.lock();
        state.open.insert(
            run.run_id.clone(),
            OpenRun {
                run_id: run.run_id.clone(),
                namespace: run.job_namespace.clone(),
                name: run.job_name.clone(),
                job_type: run.job_type.to_string(),
            },
        );
        state.dirty = true;
    }

    /// A run reported (RUNNING): the file's time moves on with it.
    pub(crate) fn ran(&self) {
        self.state.lock().dirty = true;
    }

    pub(crate) fn ended(&self, run_id: &str) {
        let mut state = self.state.lock();
        if state.open.remove(run_id).is_some() {
            state.dirty = true;
        }
    }

    /// An end a transport could not deliver (the catalog refused it or stayed down, the file
    /// could not be written, the drain ran out of time): the run is open there still.
    pub(crate) fn not_delivered(&self, run: &OpenRun) {
        let mut state = self.state.lock();
        if run.run_id.is_empty() || state.stale.iter().any(|s| s.run_id == run.run_id) {
            return;
        }
        state.open.insert(run.run_id.clone(), run.clone());
        state.dirty = true;
    }

    /// Queues an ABORT for each run an earlier process left open, as the queue has room beyond
    /// [`KEEP_FREE`] slots; the others wait for the next call. Each is dated when that process
    /// was last known to run.
    pub(crate) fn abort_stale(&self, emitter: &Emitter) {
        loop {
            let room = emitter.room().saturating_sub(KEEP_FREE);
            let (batch, alive_at) = {
                let mut state = self.state.lock();
                let keep = state.stale.len().saturating_sub(room);
                (state.stale.split_off(keep), state.stale_at.clone())
            };
            if batch.is_empty() {
                return;
            }
            let at = alive_at.unwrap_or_else(now);
            let why = format!(
                "Fabrik stopped without ending this run (the process was killed, or its host \
                 lost power); it was last known to run at {at}, and its next start ended the run"
            );
            let mut left = batch.into_iter();
            while let Some(run) = left.next() {
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
                let queued = emitter.emit(job.event(EventType::Abort, &at, &[], &[], Some(&why)));
                if !queued.all {
                    // Another job filled the queue meanwhile: this one and the rest wait.
                    let mut state = self.state.lock();
                    state.stale.push(run);
                    state.stale.extend(left);
                    state.dirty = true;
                    return;
                }
            }
            self.state.lock().dirty = true;
        }
    }

    /// Writes the file if it is behind (or, while runs are open, every [`HEARTBEAT`]): to a
    /// temporary file, synced, renamed over it, and the directory synced, so a crash or a power
    /// cut leaves the old list or the new one.
    pub(crate) async fn persist(&self) {
        let Some(path) = self.path.get().cloned() else {
            return;
        };
        let listed = {
            let mut state = self.state.lock();
            let heartbeat =
                !state.open.is_empty() && state.written.is_none_or(|at| at.elapsed() >= HEARTBEAT);
            if !state.dirty && !heartbeat {
                return;
            }
            state.dirty = false;
            state.written = Some(Instant::now());
            Listed {
                alive_at: now(),
                runs: state
                    .stale
                    .iter()
                    .chain(state.open.values())
                    .cloned()
                    .collect(),
            }
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

    /// The runs the file would list now (for tests).
    #[cfg(test)]
    pub(crate) fn listed(&self) -> Vec<String> {
        let state = self.state.lock();
        state
            .stale
            .iter()
            .chain(state.open.values())
            .map(|r| r.run_id.clone())
            .collect()
    }
}

/// Aborts the runs an earlier process left open and keeps the file up to date until `stop`.
pub(crate) async fn keep(emitter: Emitter, stop: &tokio_util::sync::CancellationToken) {
    let open_runs = emitter.open_runs().clone();
    loop {
        open_runs.abort_stale(&emitter);
        open_runs.persist().await;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openlineage::{StreamingRun, test_channel};

    fn listed_in(file: &Path) -> Listed {
        serde_json::from_slice(&std::fs::read(file).expect("the list")).expect("JSON")
    }

    /// A process killed with runs open leaves them in its data directory; the next process
    /// that holds the directory ABORTs them, naming the run and the job and dated when the
    /// killed one was last known to run, and then lists them no more. Runs that ended are not
    /// aborted.
    #[tokio::test]
    async fn runs_a_killed_process_left_open_are_aborted_by_the_next_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let list = dir.path().join(FILE);
        let (emitter, _sender) = test_channel("edge");
        emitter.keep_open_runs_in(dir.path());
        let ended = StreamingRun::new(&emitter, "pipeline.a".into(), "INFERENCE", None);
        ended.started(&[], &[]);
        let left_open = StreamingRun::new(&emitter, "alert_rule.b".into(), "ALERTING", None);
        left_open.started(&[], &[]);
        ended.emit(EventType::Complete, &[], &[], None);
        emitter.open_runs().persist().await;
        let listed = listed_in(&list);
        assert_eq!(listed.runs.len(), 1, "{listed:?}");
        assert_eq!(listed.runs[0].run_id, left_open.run.run_id);
        // Killed: no FAIL is sent as the run is dropped.
        let open_id = left_open.run.run_id.clone();
        std::mem::forget(left_open);

        // A process that does not hold the directory aborts nothing.
        let (bystander, mut sender) = test_channel("edge");
        bystander.open_runs().abort_stale(&bystander);
        assert!(sender.take_queued_file_events().is_empty());

        let (emitter, mut sender) = test_channel("edge");
        emitter.keep_open_runs_in(dir.path());
        let events = sender.take_queued_file_events();
        assert_eq!(events.len(), 1, "{events:?}");
        let abort = &events[0];
        assert_eq!(abort["eventType"], "ABORT");
        assert_eq!(abort["eventTime"], listed.alive_at.as_str());
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
        emitter.open_runs().persist().await;
        assert!(listed_in(&list).runs.is_empty());

        // A third process finds nothing to abort.
        let (emitter, mut sender) = test_channel("edge");
        emitter.keep_open_runs_in(dir.path());
        assert!(sender.take_queued_file_events().is_empty());
    }

    /// An end no transport could take, or one not delivered, leaves the run listed; an ended
    /// batch run is never listed.
    #[test]
    fn a_run_whose_end_was_not_delivered_stays_listed() {
        let (emitter, mut sender) = test_channel("edge");
        let run = StreamingRun::new(&emitter, "pipeline.a".into(), "INFERENCE", None);
        run.started(&[], &[]);
        while emitter.room() > 0 {
            emitter.emit(serde_json::json!({ "filler": true }));
        }
        run.emit(EventType::Complete, &[], &[], None);
        assert_eq!(
            emitter.open_runs().listed(),
            std::slice::from_ref(&run.run.run_id)
        );
        drop(sender.take_queued_file_events());

        let other = StreamingRun::new(&emitter, "pipeline.b".into(), "INFERENCE", None);
        other.started(&[], &[]);
        other.emit(EventType::Complete, &[], &[], None);
        assert_eq!(
            emitter.open_runs().listed(),
            std::slice::from_ref(&run.run.run_id)
        );
        // The catalog refused the queued COMPLETE: listed again.
        let events = sender.take_queued_file_events();
        let end = OpenRun::ended_by(&events[1]).expect("a streaming run's end");
        assert_eq!(end.run_id, other.run.run_id);
        emitter.open_runs().not_delivered(&end);
        assert_eq!(emitter.open_runs().listed().len(), 2);

        let batch = crate::openlineage::JobRun::batch(&emitter, "x".into(), "KPI", (0, 1));
        let at = crate::openlineage::now();
        let complete = batch.event(EventType::Complete, &at, &[], &[], None);
        assert_eq!(OpenRun::ended_by(&complete), None);
    }
}
