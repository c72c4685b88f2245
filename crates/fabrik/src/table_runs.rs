//! Streaming OpenLineage runs that write tables of this node and are counted as their rows are
//! stored (decisions 0080, 0082): the hub's view of its edges' uplinks, the connectors' ingest. Each
//! job's run starts at its first rows, reports a new input or table at once and more rows every
//! `running_interval`, and ends when its module stops.

use std::collections::BTreeMap;

use parking_lot::Mutex;

use crate::openlineage::{Dataset, Emitter, EventType, KEEP_FREE, StreamingRun};

/// One job's run, since its first rows were stored.
struct CountedRun {
    run: StreamingRun,
    /// What it read, by namespace, then name.
    inputs: BTreeMap<String, BTreeMap<String, Dataset>>,
    /// Rows stored per table.
    tables: BTreeMap<String, u64>,
    /// Whether its START went out, and whether an event (its START, a new input or table, the
    /// interval's RUNNING) waits for room in the queue.
    started: bool,
    due: bool,
}

/// The runs of one module's jobs (`jobType` `job_type`), by job name.
pub(crate) struct TableRuns {
    emitter: Emitter,
    job_type: &'static str,
    runs: Mutex<BTreeMap<String, CountedRun>>,
}

impl TableRuns {
    pub(crate) fn new(emitter: Emitter, job_type: &'static str) -> Self {
        Self {
            emitter,
            job_type,
            runs: Mutex::new(BTreeMap::new()),
        }
    }

    /// Rows job `job` stored, `(table, rows)`, read from `inputs`: a START for its first, a
    /// RUNNING when an input or a table is new (so the catalog has each at once) or, at the
    /// next rows after each `running_interval`, with the rows so far — each as the queue has
    /// room.
    pub(crate) fn stored(&self, job: &str, inputs: &[&Dataset], tables: &[(&str, u64)]) {
        let mut runs = self.runs.lock();
        if !runs.contains_key(job) {
            let run = CountedRun {
                run: StreamingRun::new(&self.emitter, job.to_owned(), self.job_type, None),
                inputs: BTreeMap::new(),
                tables: BTreeMap::new(),
                started: false,
                due: true,
            };
            runs.insert(job.to_owned(), run);
        }
        let Some(run) = runs.get_mut(job) else { return };
        for input in inputs {
            // Looked up by reference: known inputs, the usual case, cost no allocation.
            let known = run
                .inputs
                .get(&input.namespace)
                .is_some_and(|names| names.contains_key(&input.name));
            if !known {
                run.inputs
                    .entry(input.namespace.clone())
                    .or_default()
                    .insert(input.name.clone(), (*input).clone());
                run.due = true;
            }
        }
        for (table, rows) in tables {
            match run.tables.get_mut(*table) {
                Some(stored) => *stored += rows,
                None => {
                    run.tables.insert((*table).to_owned(), *rows);
                    run.due = true;
                }
            }
        }
        if run.started && !run.due && run.run.running_due() {
            run.due = true;
        }
        // After a restart every job's first rows come within seconds (a hub's edges): their
        // starts wait for room, as a pipeline's training reports do.
        for run in runs.values_mut().filter(|run| run.due) {
            if self.emitter.room() < KEEP_FREE {
                return;
            }
            let (inputs, outputs) = self.datasets(run);
            if run.started {
                run.run.emit(EventType::Running, &inputs, &outputs, None);
            } else {
                run.run.started(&inputs, &outputs);
                run.started = true;
            }
            run.due = false;
        }
    }

    /// The module stops: every run that began ends, with the rows stored per table.
    pub(crate) fn ended(&self) {
        let runs = std::mem::take(&mut *self.runs.lock());
        for run in runs.into_values() {
            if run.started {
                let (inputs, outputs) = self.datasets(&run);
                run.run.emit(EventType::Complete, &inputs, &outputs, None);
            }
        }
    }

    /// The run's inputs, and its tables in this node's namespace with the rows stored this run.
    fn datasets(&self, run: &CountedRun) -> (Vec<Dataset>, Vec<Dataset>) {
        let inputs = run
            .inputs
            .values()
            .flat_map(BTreeMap::values)
            .cloned()
            .collect();
        let outputs = run
            .tables
            .iter()
            .map(|(table, rows)| {
                let mut output = Dataset::new(&self.emitter.datasets, table.clone());
                output.rows_written = Some(*rows);
                output
            })
            .collect();
        (inputs, outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(events: &[serde_json::Value]) -> Vec<(String, String)> {
        events
            .iter()
            .map(|e| {
                (
                    e["job"]["name"].as_str().unwrap_or("?").to_owned(),
                    e["eventType"].as_str().unwrap_or("?").to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn a_new_input_is_reported_at_once_a_known_one_is_not() {
        let (emitter, mut sender) = crate::openlineage::test_channel("edge");
        let runs = TableRuns::new(emitter, "INGEST");
        let topic = Dataset::new("mqtt://edge", "devices/+/telemetry");
        let sparkplug = Dataset::new("mqtt://edge", "spBv1.0/#");
        runs.stored("ingest.mqtt", &[&topic], &[("pump", 3)]);
        runs.stored("ingest.mqtt", &[&topic], &[("pump", 2)]);
        // Only the input is new.
        runs.stored("ingest.mqtt", &[&topic, &sparkplug], &[("pump", 1)]);
        runs.ended();
        let events = sender.take_queued_file_events();
        let expected = [
            ("ingest.mqtt", "START"),
            ("ingest.mqtt", "RUNNING"),
            ("ingest.mqtt", "COMPLETE"),
        ];
        assert_eq!(
            seen(&events),
            expected.map(|(j, t)| (j.to_owned(), t.to_owned()))
        );
        let end = &events[2];
        assert_eq!(end["job"]["facets"]["jobType"]["jobType"], "INGEST");
        let names: Vec<&str> = end["inputs"]
            .as_array()
            .map(|inputs| inputs.iter().filter_map(|i| i["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(names, ["devices/+/telemetry", "spBv1.0/#"]);
        assert_eq!(
            end["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"],
            6
        );
    }
}
