//! The edges' uplinks as OpenLineage runs, reported by the hub (decision 0080): for each edge
//! node a streaming job `uplink.<node>` from the edge's tables (`fabrik://<edge>`, the names
//! the edge's own events use) to the hub's (`fabrik://<hub>`), so a catalog joins an edge's
//! lineage to its hub's.

use std::collections::BTreeMap;

use parking_lot::Mutex;

use crate::openlineage::{Dataset, Emitter, EventType, KEEP_FREE, StreamingRun};

/// One edge's uplink, since the hub first stored a row of it in this run.
struct EdgeRun {
    run: StreamingRun,
    /// Rows stored per table.
    tables: BTreeMap<String, u64>,
    /// Whether its START went out, and whether an event (its START, a new table, the
    /// interval's RUNNING) waits for room in the queue.
    started: bool,
    due: bool,
}

/// The hub's view of its edges' uplinks.
pub(crate) struct HubLineage {
    emitter: Emitter,
    edges: Mutex<BTreeMap<String, EdgeRun>>,
}

impl HubLineage {
    pub(crate) fn new(emitter: Emitter) -> Self {
        Self {
            emitter,
            edges: Mutex::new(BTreeMap::new()),
        }
    }

    /// Rows of `node`'s tables the hub stored, `(table, rows)`: a START for an edge's first, a
    /// RUNNING when a table is new (so the catalog has every table at once) or, at the next
    /// rows after each `running_interval`, with the rows so far — each as the queue has room.
    pub(crate) fn stored(&self, node: &str, tables: &[(&str, u64)]) {
        let mut edges = self.edges.lock();
        let edge = edges.entry(node.to_owned()).or_insert_with(|| EdgeRun {
            run: StreamingRun::new(&self.emitter, format!("uplink.{node}"), "UPLINK", None),
            tables: BTreeMap::new(),
            started: false,
            due: true,
        });
        for (table, rows) in tables {
            match edge.tables.get_mut(*table) {
                Some(stored) => *stored += rows,
                None => {
                    edge.tables.insert((*table).to_owned(), *rows);
                    edge.due = true;
                }
            }
        }
        if edge.started && !edge.due && edge.run.running_due() {
            edge.due = true;
        }
        // After a hub restart every edge's first rows come within seconds: their starts wait
        // for room, as a pipeline's training reports do.
        for (node, edge) in edges.iter_mut().filter(|(_, edge)| edge.due) {
            if self.emitter.room() < KEEP_FREE {
                return;
            }
            let (inputs, outputs) = self.datasets(node, &edge.tables);
            if edge.started {
                edge.run.emit(EventType::Running, &inputs, &outputs, None);
            } else {
                edge.run.started(&inputs, &outputs);
                edge.started = true;
            }
            edge.due = false;
        }
    }

    /// The hub stops: every edge's run that began ends, with the rows stored per table.
    pub(crate) fn ended(&self) {
        let mut edges = self.edges.lock();
        for (node, edge) in std::mem::take(&mut *edges) {
            if edge.started {
                let (inputs, outputs) = self.datasets(&node, &edge.tables);
                edge.run.emit(EventType::Complete, &inputs, &outputs, None);
            }
        }
    }

    /// The edge's tables in its namespace, and the hub's, with the rows stored this run.
    fn datasets(&self, node: &str, tables: &BTreeMap<String, u64>) -> (Vec<Dataset>, Vec<Dataset>) {
        let edge_namespace = format!("fabrik://{node}");
        tables
            .iter()
            .map(|(table, rows)| {
                let input = Dataset::new(&edge_namespace, table.clone());
                let mut output = Dataset::new(&self.emitter.datasets, table.clone());
                output.rows_written = Some(*rows);
                (input, output)
            })
            .unzip()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_edge_is_a_run_from_its_tables_to_the_hubs() {
        let (emitter, mut sender) = crate::openlineage::test_channel("hub");
        let hub = HubLineage::new(emitter);
        hub.stored("edge-1", &[("pump", 10)]);
        hub.stored("edge-1", &[("pump", 5)]);
        hub.stored("edge-1", &[("pump", 1), ("chiller", 2)]);
        hub.stored("edge-2", &[("pump", 7)]);
        hub.ended();
        let events = sender.take_queued_file_events();
        let seen: Vec<(String, String)> = events
            .iter()
            .map(|e| {
                (
                    e["job"]["name"].as_str().unwrap_or("?").to_owned(),
                    e["eventType"].as_str().unwrap_or("?").to_owned(),
                )
            })
            .collect();
        let expected = [
            ("uplink.edge-1", "START"),
            ("uplink.edge-1", "RUNNING"),
            ("uplink.edge-2", "START"),
            ("uplink.edge-1", "COMPLETE"),
            ("uplink.edge-2", "COMPLETE"),
        ];
        assert_eq!(
            seen,
            expected.map(|(j, t)| (j.to_owned(), t.to_owned())),
            "a new table is reported at once, more rows of known ones are not"
        );
        let end = &events[3];
        assert_eq!(end["inputs"][0]["namespace"], "fabrik://edge-1");
        assert_eq!(end["inputs"][0]["name"], "chiller");
        assert_eq!(end["outputs"][1]["namespace"], "fabrik://hub");
        assert_eq!(end["outputs"][1]["name"], "pump");
        assert_eq!(
            end["outputs"][1]["outputFacets"]["outputStatistics"]["rowCount"],
            16
        );
    }

    /// A hub restarted under 2,000 edges reports their starts as the queue has room, each once,
    /// at the rows that follow.
    #[test]
    fn many_edges_start_as_the_queue_has_room() {
        let (emitter, mut sender) = crate::openlineage::test_channel("hub");
        let hub = HubLineage::new(emitter);
        let starts = |sender: &mut crate::openlineage::Sender| {
            sender
                .take_queued_file_events()
                .iter()
                .filter(|e| e["eventType"] == "START")
                .count()
        };
        for edge in 0..2000 {
            hub.stored(&format!("edge-{edge}"), &[("pump", 1)]);
        }
        let mut started = starts(&mut sender);
        assert!(started < 2000, "{started} at once");
        for _ in 0..10 {
            hub.stored("edge-0", &[("pump", 1)]);
            started += starts(&mut sender);
        }
        assert_eq!(started, 2000);
    }
}
