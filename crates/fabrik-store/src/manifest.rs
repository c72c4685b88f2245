//! The manifest: the durable list of tables, their columns and their Parquet segments, and the
//! WAL sequence number up to which everything is in those segments. Replaced atomically
//! (write, fsync, rename, fsync directory), so a crash leaves the old or the new one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::schema::Column;

/// The file name inside the data directory.
pub const FILE: &str = "manifest.json";

/// One Parquet segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentMeta {
    /// Object-store path.
    pub path: String,
    /// Time partition.
    pub partition: i64,
    /// Smallest time in the file.
    pub min_time: i64,
    /// Largest time in the file.
    pub max_time: i64,
    /// Rows.
    pub rows: u64,
    /// Bytes.
    pub bytes: u64,
    /// Age order: newer data has a larger order; de-duplication keeps the row of the larger.
    pub order: u64,
}

/// One table.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TableEntry {
    /// Stable id used in paths.
    pub id: u32,
    /// Tags and fields.
    pub columns: Vec<Column>,
    /// Segments.
    pub segments: Vec<SegmentMeta>,
}

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// Every WAL record up to this sequence number is in the segments.
    pub persisted_seq: u64,
    /// The next segment file id.
    pub next_file_id: u64,
    /// Tables by name.
    pub tables: BTreeMap<String, TableEntry>,
}

impl Default for Manifest {
    fn default() -> Self {
        Self {
            version: 1,
            persisted_seq: 0,
            next_file_id: 1,
            tables: BTreeMap::new(),
        }
    }
}

impl Manifest {
    /// Loads the manifest of `dir`, or an empty one when there is none yet.
    pub fn load(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::DataDir {
                path: path.display().to_string(),
                reason: format!("manifest is not valid: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(StoreError::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Replaces the manifest of `dir` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), StoreError> {
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp"));
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|e| StoreError::Internal(e.to_string()))?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| StoreError::io(format!("writing {}", path.display()), e))
    }
}
