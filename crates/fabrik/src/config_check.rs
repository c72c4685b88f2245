//! Loading a config with every problem found at once: its shape, its values and each
//! connector's settings, for `fabrik run` and `fabrik config check` alike.

use std::path::Path;

use fabrik_runtime::{Config, RuntimeError, Settings};

/// Why a config cannot be used.
pub(crate) enum ConfigFailure {
    /// The file could not be read or parsed at all.
    Unreadable(RuntimeError),
    /// Every problem found, as (field path, message).
    Problems(Vec<(String, String)>),
}

/// Loads the config at `path` (the defaults when `None`) with the environment's overrides and
/// checks all of it: a mistyped or unknown entry is reported and left out, so the values and
/// the connectors' settings are still checked in the same pass.
pub(crate) fn load(path: Option<&Path>, origin: &str) -> Result<(Config, Settings), ConfigFailure> {
    let (config, shape, indices) = match Config::load_reporting(path, std::env::vars()) {
        Ok(loaded) => loaded,
        Err(RuntimeError::Invalid { problems, .. }) => {
            return Err(ConfigFailure::Problems(
                problems.into_iter().map(|p| (p.path, p.message)).collect(),
            ));
        }
        Err(e) => return Err(ConfigFailure::Unreadable(e)),
    };
    let mut problems: Vec<(String, String)> =
        shape.into_iter().map(|p| (p.path, p.message)).collect();
    // Found in the loaded config, from which entries that did not load were left out: named
    // by the file's index.
    let mut later: Vec<(String, String)> = Vec::new();
    let settings = match config.validate(origin) {
        Ok(settings) => Some(settings),
        Err(RuntimeError::Invalid {
            problems: invalid, ..
        }) => {
            later.extend(invalid.into_iter().map(|p| (p.path, p.message)));
            None
        }
        Err(e) => return Err(ConfigFailure::Unreadable(e)),
    };
    later.extend(crate::connect::check(&config));
    later.extend(crate::pipelines::check(&config));
    later.extend(crate::modbus::check(&config));
    later.extend(crate::opcua::check(&config));
    later.extend(crate::sparkplug::check(&config));
    later.extend(crate::setpoints::check(&config));
    later.extend(crate::alerts::check(&config));
    later.extend(crate::bridge::check(&config));
    later.extend(crate::uplink::check(&config));
    later.extend(crate::hub::check(&config));
    later.extend(crate::updates::check(&config));
    problems.extend(
        later
            .into_iter()
            .map(|(path, message)| (indices.file_path(&path), message)),
    );
    match settings {
        Some(settings) if problems.is_empty() => Ok((config, settings)),
        _ => Err(ConfigFailure::Problems(problems)),
    }
}

/// Prints why the config from `origin` cannot be used, `prefix` first on each headline.
pub(crate) fn report(prefix: &str, origin: &str, failure: ConfigFailure) {
    match failure {
        ConfigFailure::Unreadable(e) => eprintln!("{prefix}{e}"),
        ConfigFailure::Problems(problems) => {
            eprintln!(
                "{prefix}{origin}: {} configuration error(s):",
                problems.len()
            );
            for (path, message) in problems {
                eprintln!("  {path}: {message}");
            }
        }
    }
}
