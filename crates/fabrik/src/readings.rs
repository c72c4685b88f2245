//! What the polling connectors (Modbus, OPC UA) share on the way to the store: readings
//! batched into one store write, the write itself (counted for the ingest lineage), and the
//! rows that explain a point that could not be read.

use std::time::Duration;

use fabrik_core::{Lineage, Point};
use fabrik_store::Store;
use tokio::sync::mpsc;

use crate::ingest_lineage::IngestLineage;

pub(crate) use fabrik_connect::point_errors::{POINT_ERRORS_TABLE, PointOf, point_error};
/// Readings buffered between the device tasks and the store, and the most written at once.
pub(crate) const QUEUE: usize = 4096;
/// Longest a reading waits to be written with others.
const BATCH_WINDOW: Duration = Duration::from_millis(50);

/// Waits for a reading, then gathers what else arrives within the batch window (up to
/// [`QUEUE`]). `None` once every sender is gone and nothing is left.
pub(crate) async fn next_batch<T>(rx: &mut mpsc::Receiver<T>) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
    while batch.len() < QUEUE {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(reading)) => batch.push(reading),
            _ => break,
        }
    }
    Some(batch)
}

/// A polling connector, as its store writes, logs and metrics name it.
pub(crate) struct Connector {
    /// The location prefix of the store's errors (`modbus`, `opcua`).
    pub(crate) location: &'static str,
    /// Its name in the log (`Modbus`, `OPC UA`).
    pub(crate) name: &'static str,
    /// The counter of its failed writes.
    pub(crate) write_errors: &'static str,
}

/// Stores one batch's groups as one write and counts them for the ingest lineage, if it is
/// reported. The devices keep their schedule: a failed write loses only this batch, and says
/// so in the log and in `connector`'s error counter.
pub(crate) async fn store_batch(
    store: &Store,
    groups: &[(Lineage, Vec<Point>)],
    lineage: Option<&IngestLineage>,
    connector: &Connector,
) {
    match store.write_groups(groups, connector.location).await {
        Ok(_) => {
            if let Some(lineage) = lineage {
                lineage.stored(groups);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, rows = groups.len(), "Storing {} readings failed.", connector.name);
            metrics::counter!(connector.write_errors).increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_holds_what_arrives_within_the_window_and_ends_with_the_senders() {
        let (tx, mut rx) = mpsc::channel(16);
        tx.send(1).await.expect("send");
        tx.send(2).await.expect("send");
        let late = tx.clone();
        // Sent well after the window that opens with the first reading has closed.
        let sender = tokio::spawn(async move {
            tokio::time::sleep(BATCH_WINDOW * 4).await;
            late.send(3).await.expect("send");
        });
        assert_eq!(next_batch(&mut rx).await, Some(vec![1, 2]));
        sender.await.expect("sender");
        drop(tx);
        assert_eq!(next_batch(&mut rx).await, Some(vec![3]));
        assert_eq!(next_batch(&mut rx).await, None);
    }
}
