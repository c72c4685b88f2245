//! Definitions made through the API (pipelines, alert rules) as JSON files in the data
//! directory: read at start, replaced atomically on every change.

use fabrik_api::control::ControlError;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The `what` definitions (`pipeline`, `alert rule`) stored at `path`; none when the file
/// does not exist yet. A damaged file is named, so the operator can fix or remove it.
pub(crate) fn read_definitions<T: DeserializeOwned>(
    path: &std::path::Path,
    what: &str,
) -> Result<Vec<T>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{}: not a list of {what} definitions: {e} (fix or remove the file)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The stored file's content: the definitions as pretty JSON.
pub(crate) fn definitions_json<T: Serialize>(definitions: &[T]) -> Result<Vec<u8>, ControlError> {
    let mut text = serde_json::to_vec_pretty(definitions)
        .map_err(|e| ControlError::Storage(format!("the definitions as JSON: {e}")))?;
    text.push(b'\n');
    Ok(text)
}

/// Writes `bytes` to `path` atomically, creating its directory, off the async threads.
pub(crate) async fn store_file(
    path: std::path::PathBuf,
    bytes: Vec<u8>,
) -> Result<(), ControlError> {
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || {
        if let Some(directory) = path.parent() {
            std::fs::create_dir_all(directory)?;
        }
        write_atomically(&path, &bytes)
    })
    .await
    .map_err(|e| ControlError::Storage(e.to_string()))?
    .map_err(|e| ControlError::Storage(format!("{shown}: {e}")))
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it into place, so
/// a crash leaves the old content or the new, never a mix.
pub(crate) fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = std::path::PathBuf::from(temporary);
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(directory) = path.parent() {
        std::fs::File::open(directory)?.sync_all()?;
    }
    Ok(())
}
