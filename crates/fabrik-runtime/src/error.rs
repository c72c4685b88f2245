//! The error type of `fabrik-runtime`.

use std::path::PathBuf;

/// One problem found in a configuration, with the dotted path of the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted field path, e.g. `http.listen`, or the environment variable that set it.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Errors of configuration loading and of the service manager.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config is not valid TOML.
    #[error("{origin}: invalid TOML: {message}")]
    Syntax {
        /// The file (or `environment`).
        origin: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// One or more fields are invalid; all of them are listed.
    #[error("{origin}: {} configuration error(s):\n{}", .problems.len(), render_problems(.problems))]
    Invalid {
        /// The file (or `defaults`).
        origin: String,
        /// Every problem found.
        problems: Vec<ConfigProblem>,
    },
    /// A service failed to start or failed while running.
    #[error("service `{service}` failed: {message}")]
    ServiceFailed {
        /// The service.
        service: &'static str,
        /// Its error.
        message: String,
    },
}

fn render_problems(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}
