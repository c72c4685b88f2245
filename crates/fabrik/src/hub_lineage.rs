//! The edges' uplinks as OpenLineage runs, reported by the hub (decision 0080): for each edge
//! node a streaming job `uplink.<node>` from the edge's tables (`fabrik://<edge>`, the names
//! the edge's own events use) to the hub's (`fabrik://<hub>`), so a catalog joins an edge's
//! lineage to its hub's.

use crate::openlineage::{Dataset, Emitter};
use crate::table_runs::TableRuns;

/// The hub's view of its edges' uplinks.
pub(crate) struct HubLineage {
    runs: TableRuns,
}

impl HubLineage {
    pub(crate) fn new(emitter: Emitter) -> Self {
        Self {
            runs: TableRuns::new(emitter, "UPLINK"),
        }
    }

    /// Rows of `node`'s tables the hub stored, `(table, rows)`, each read from the edge's
    /// table of the same name (see [`TableRuns::stored`]).
    pub(crate) fn stored(&self, node: &str, tables: &[(&str, u64)]) {
        let edge_namespace = format!("fabrik://{node}");
        let inputs: Vec<Dataset> = tables
            .iter()
            .map(|(table, _)| Dataset::new(&edge_namespace, *table))
            .collect();
        let inputs: Vec<&Dataset> = inputs.iter().collect();
        self.runs.stored(&format!("uplink.{node}"), &inputs, tables);
    }

    /// The hub stops: every edge's run that began ends, with the rows stored per table.
    pub(crate) fn ended(&self) {
        self.runs.ended();
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
