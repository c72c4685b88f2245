//! Unit tests' store: a fresh one in a temporary directory, holding the line-protocol rows a
//! test writes.

use std::sync::Arc;

use fabrik_core::{Precision, SourceId};
use fabrik_store::{Store, StoreOptions};

/// A store in its own temporary directory (kept while the first value lives) with `lines`
/// written, nanosecond timestamps.
pub(crate) async fn store_with(lines: &str) -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(StoreOptions::new(dir.path()))
        .await
        .expect("store");
    store
        .write_lines(lines, Precision::Ns, SourceId::http())
        .await
        .expect("write");
    (dir, store)
}
