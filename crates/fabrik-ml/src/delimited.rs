//! A minimal reader for the benchmarks' delimited text files (NAB's `,`-separated CSV, SKAB's
//! `;`-separated files): one header line, then one record per line, no quoting.
//!
//! The benchmark files never quote a field, so a full CSV parser would be a dependency without
//! a use; a quoted field is rejected rather than misread.

use std::path::{Path, PathBuf};

use crate::MlError;

/// A delimited file read into memory, with its header split off.
#[derive(Debug)]
pub(crate) struct DelimitedFile {
    path: PathBuf,
    text: String,
    separator: char,
    columns: Vec<String>,
}

impl DelimitedFile {
    /// Reads `path` and splits its header on `separator`.
    pub(crate) fn open(path: &Path, separator: char) -> Result<Self, MlError> {
        let text = std::fs::read_to_string(path).map_err(|source| MlError::io(path, source))?;
        let header_line = text.lines().next().ok_or_else(|| MlError::Csv {
            path: path.to_path_buf(),
            line: 1,
            reason: "empty file: no header".to_owned(),
        })?;
        let columns = header_line
            .trim_start_matches('\u{feff}')
            .split(separator)
            .map(|name| name.trim().to_owned())
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            text,
            separator,
            columns,
        })
    }

    /// The column names in file order.
    pub(crate) fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The index of the column called `name`.
    pub(crate) fn column(&self, name: &str) -> Result<usize, MlError> {
        self.columns
            .iter()
            .position(|column| column == name)
            .ok_or_else(|| MlError::Csv {
                path: self.path.clone(),
                line: 1,
                reason: format!("no column `{name}`"),
            })
    }

    /// Hands every record after the header to `on_record` with its 1-based line number. A
    /// reason returned by `on_record` becomes an [`MlError::Csv`] naming the file and line.
    pub(crate) fn for_each_record(
        &self,
        mut on_record: impl FnMut(usize, &[&str]) -> Result<(), String>,
    ) -> Result<(), MlError> {
        let csv_error = |line: usize, reason: String| MlError::Csv {
            path: self.path.clone(),
            line,
            reason,
        };
        let mut fields: Vec<&str> = Vec::with_capacity(self.columns.len());
        for (index, line) in self.text.lines().enumerate().skip(1) {
            let line_number = index + 1;
            if line.trim().is_empty() {
                continue;
            }
            fields.clear();
            fields.extend(line.split(self.separator));
            if fields.iter().any(|field| field.starts_with('"')) {
                return Err(csv_error(
                    line_number,
                    "quoted fields are not supported".to_owned(),
                ));
            }
            if fields.len() != self.columns.len() {
                return Err(csv_error(
                    line_number,
                    format!(
                        "{} fields, but the header has {}",
                        fields.len(),
                        self.columns.len()
                    ),
                ));
            }
            on_record(line_number, &fields).map_err(|reason| csv_error(line_number, reason))?;
        }
        Ok(())
    }
}

/// Parses a numeric field, naming the column in the error.
pub(crate) fn parse_f64(field: &str, column: &str) -> Result<f64, String> {
    field
        .trim()
        .parse::<f64>()
        .map_err(|_| format!("column `{column}`: `{field}` is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, contents: &str) -> Result<PathBuf, MlError> {
        let dir = std::env::temp_dir().join(format!("fabrik-ml-delimited-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| MlError::io(&dir, e))?;
        let path = dir.join(name);
        std::fs::write(&path, contents).map_err(|e| MlError::io(&path, e))?;
        Ok(path)
    }

    #[test]
    fn reads_records_and_reports_bad_lines() -> Result<(), MlError> {
        let path = temp_file("ok.csv", "a;b\r\n1;2\n\n3;4\n")?;
        let file = DelimitedFile::open(&path, ';')?;
        assert_eq!(file.columns(), ["a", "b"]);
        assert_eq!(file.column("b")?, 1);
        assert!(file.column("c").is_err());
        let mut seen = Vec::new();
        file.for_each_record(|line, fields| {
            seen.push((line, fields.join("|")));
            Ok(())
        })?;
        assert_eq!(seen, vec![(2, "1|2".to_owned()), (4, "3|4".to_owned())]);

        let bad = temp_file("bad.csv", "a,b\n1,2,3\n")?;
        let error = DelimitedFile::open(&bad, ',')?.for_each_record(|_, _| Ok(()));
        assert!(
            matches!(error, Err(MlError::Csv { line: 2, .. })),
            "{error:?}"
        );
        let quoted = temp_file("quoted.csv", "a,b\n\"1\",2\n")?;
        assert!(
            DelimitedFile::open(&quoted, ',')?
                .for_each_record(|_, _| Ok(()))
                .is_err()
        );
        Ok(())
    }
}
