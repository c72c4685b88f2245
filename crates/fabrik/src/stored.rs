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

/// Checks a batch of definitions named by `name` with `compile`, all of them: either every
/// one compiles and no name repeats, or every problem is returned as `<name>.<field>`.
/// Returns the compiled definitions, in order, and the batch's names.
pub(crate) fn compile_batch<C, T>(
    configs: &[C],
    name: impl Fn(&C) -> &str,
    compile: impl Fn(&C) -> Result<T, Vec<(String, String)>>,
) -> Result<(Vec<T>, std::collections::BTreeSet<&str>), ControlError> {
    let mut problems = Vec::new();
    let mut compiled = Vec::with_capacity(configs.len());
    let mut names = std::collections::BTreeSet::new();
    for config in configs {
        let config_name = name(config);
        if !names.insert(name(config)) {
            problems.push((format!("{config_name}.name"), "is defined twice".to_owned()));
        }
        match compile(config) {
            Ok(done) => compiled.push(done),
            Err(found) => problems.extend(
                found
                    .into_iter()
                    .map(|(field, message)| (format!("{config_name}.{field}"), message)),
            ),
        }
    }
    if problems.is_empty() {
        Ok((compiled, names))
    } else {
        Err(ControlError::Invalid(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_compiles_whole_or_names_every_problem() {
        let compile = |n: &(String, i32)| {
            if n.1 >= 0 {
                Ok(n.1)
            } else {
                Err(vec![(
                    "level".to_owned(),
                    "must not be negative".to_owned(),
                )])
            }
        };
        fn name(n: &(String, i32)) -> &str {
            &n.0
        }
        let good = [("a".to_owned(), 1), ("b".to_owned(), 2)];
        let (compiled, names) = compile_batch(&good, name, compile).expect("good batch");
        assert_eq!(compiled, [1, 2]);
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["a", "b"]);
        let bad = [
            ("a".to_owned(), 1),
            ("b".to_owned(), -1),
            ("a".to_owned(), 3),
        ];
        let Err(ControlError::Invalid(problems)) = compile_batch(&bad, name, compile) else {
            panic!("a bad batch compiled");
        };
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["b.level", "a.name"]);
    }
}
