//! The error type of `fabrik-store`, with the HTTP status each error maps to.

use std::time::Duration;

use fabrik_core::line_protocol::LineError;

/// Everything the store can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A line of a line-protocol body did not parse; nothing of the request was stored.
    #[error("{0}")]
    LineProtocol(#[from] LineError),
    /// A write used a column with a type other than the one it already has.
    #[error("{location}table `{table}`, column `{column}`: {reason}")]
    SchemaConflict {
        /// Where in the request, e.g. `line 3: `; empty when unknown.
        location: String,
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// What conflicts with what.
        reason: String,
    },
    /// A point in a JSON batch was invalid.
    #[error("{location}: {reason}")]
    InvalidPoint {
        /// Which point, e.g. `samples[3]`.
        location: String,
        /// What was wrong.
        reason: String,
    },
    /// A write request held no points.
    #[error("the request holds no points")]
    Empty,
    /// SQL that does not plan or execute (syntax, unknown table or column, bad types).
    #[error("{0}")]
    Query(String),
    /// A query ran past the configured timeout and was cancelled.
    #[error("query cancelled after exceeding the timeout of {0:?}")]
    QueryTimeout(Duration),
    /// The disk is full (or a file-size limit was hit); nothing of the write was acknowledged.
    #[error("insufficient storage: {0}")]
    InsufficientStorage(String),
    /// Persisting is behind the writes (none failed): the write waited for it and was not
    /// taken; sent again later, it is.
    #[error("the store is busy: {0}")]
    Busy(String),
    /// The store is shutting down and takes no more writes.
    #[error("the store is shutting down")]
    ShuttingDown,
    /// The data directory cannot be used.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The object storage `[store.objects]` names cannot hold this store's segments.
    #[error("object storage {url}: {reason}")]
    ObjectStorage {
        /// `[store.objects] url`.
        url: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// This store only reads a prefix another store writes (decision 0079): it takes no
    /// writes and runs no persist or compaction.
    #[error(
        "this node only reads object storage {url} (store.objects.read_only): it takes no writes; \
         write to the node whose store {owner} owns the prefix"
    )]
    ReadOnly {
        /// `[store.objects] url`.
        url: String,
        /// The id of the store that owns the prefix.
        owner: String,
    },
    /// A query read a segment the manifest lists but its storage does not hold.
    #[error("a segment the manifest lists is missing: {0}")]
    MissingSegment(String),
    /// The WAL is damaged somewhere other than its tail; acknowledged data would be lost by
    /// truncating, so the store refuses to start.
    #[error("WAL segment {segment} is corrupt at byte {offset}: {reason}")]
    CorruptWal {
        /// The segment file.
        segment: String,
        /// Byte offset of the bad record.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// An I/O error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// An internal error of Arrow, Parquet or the object store.
    #[error("{0}")]
    Internal(String),
}

impl StoreError {
    /// Wraps an I/O error with context; a full disk becomes [`StoreError::InsufficientStorage`].
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        let context = context.into();
        if is_out_of_space(&source) {
            Self::InsufficientStorage(format!("{context}: {source}"))
        } else {
            Self::Io { context, source }
        }
    }

    /// The HTTP status code this error should be answered with.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::LineProtocol(_)
            | Self::SchemaConflict { .. }
            | Self::InvalidPoint { .. }
            | Self::Empty
            | Self::Query(_) => 400,
            Self::QueryTimeout(_) => 408,
            // Refused for good, not an outage to retry: the node is set up to only read.
            Self::ReadOnly { .. } => 403,
            Self::InsufficientStorage(_) => 507,
            // The bucket is the unavailable dependency, and its reason (unreachable, the prefix
            // taken over) is what the operator must act on.
            Self::ShuttingDown | Self::ObjectStorage { .. } | Self::Busy(_) => 503,
            Self::DataDir { .. }
            | Self::MissingSegment(_)
            | Self::CorruptWal { .. }
            | Self::Io { .. }
            | Self::Internal(_) => 500,
        }
    }
}

/// ENOSPC, EDQUOT and EFBIG all mean "no room for this write".
fn is_out_of_space(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::StorageFull
            | std::io::ErrorKind::QuotaExceeded
            | std::io::ErrorKind::FileTooLarge
    )
}

impl From<datafusion::error::DataFusionError> for StoreError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<datafusion::arrow::error::ArrowError> for StoreError {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<datafusion::parquet::errors::ParquetError> for StoreError {
    fn from(e: datafusion::parquet::errors::ParquetError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        Self::Internal(e.to_string())
    }
}
