//! The error type of `fabrik-ml`: bad detector input, unreadable benchmark files and
//! inconsistent benchmark layouts.

use std::path::PathBuf;

/// Everything that can go wrong when fitting a detector or running an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum MlError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file did not have the expected shape.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// What the parser reported.
        #[source]
        source: serde_json::Error,
    },
    /// A CSV file had a row or field that could not be used.
    #[error("{path}: line {line}: {reason}")]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// 1-based line number, counting the header.
        line: usize,
        /// What was wrong with it.
        reason: String,
    },
    /// A timestamp that is not `YYYY-MM-DD HH:MM:SS[.ffffff]`.
    #[error("invalid timestamp `{text}`: {reason}")]
    Timestamp {
        /// The rejected text.
        text: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// A benchmark directory is missing a file or holds files that contradict each other.
    #[error("benchmark layout: {0}")]
    Layout(String),
    /// A detector was given input it cannot use (wrong row width, too few training rows, ...).
    #[error("detector `{detector}`: {reason}")]
    Detector {
        /// The detector's name.
        detector: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A pipeline's model put out a score no threshold can be compared with.
    #[error("model `{model}`: {reason}")]
    Score {
        /// The model's name (`robust_z`, `onnx`, ...).
        model: String,
        /// What was wrong.
        reason: String,
    },
    /// A detector or evaluation parameter outside its valid range.
    #[error("invalid parameter `{name}`: {reason}")]
    Parameter {
        /// The parameter's name.
        name: &'static str,
        /// The valid range or rule.
        reason: String,
    },
}

impl MlError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Wraps a JSON error with the file it concerns.
    pub(crate) fn json(path: impl Into<PathBuf>, source: serde_json::Error) -> Self {
        Self::Json {
            path: path.into(),
            source,
        }
    }
}
