//! NAB results files: `<results>/<detector>/<category>/<detector>_<file>.csv` with columns
//! `timestamp,value,anomaly_score,label`, and the per-file score tables NAB's runner writes
//! beside them. Owns writing both and reading back `anomaly_score`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::corpus::{NabCorpus, NabFile, ProfileName};
use super::scorer::{AnomalyScores, Counts, Scores};
use crate::MlError;
use crate::delimited::{DelimitedFile, parse_f64};

/// Where the results of `detector` for `file` live under `results_dir`.
pub fn results_path(results_dir: &Path, detector: &str, file: &NabFile) -> PathBuf {
    results_dir
        .join(detector)
        .join(file.category())
        .join(format!("{detector}_{}", file.name()))
}

/// Writes one results file (creating its directories) and returns its path.
pub fn write_results(
    results_dir: &Path,
    detector: &str,
    file: &NabFile,
    anomaly_scores: &[f64],
) -> Result<PathBuf, MlError> {
    let path = results_path(results_dir, detector, file);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| MlError::io(parent, source))?;
    }
    let mut text = String::with_capacity(file.len() * 48);
    text.push_str("timestamp,value,anomaly_score,label\n");
    for (row, score) in anomaly_scores.iter().enumerate() {
        // `{:?}` prints the shortest text that parses back to the same f64, so the scorer
        // reads exactly the scores the detector produced. Writing to a String cannot fail.
        let _ = writeln!(
            text,
            "{},{},{:?},{}",
            file.timestamp_text[row],
            file.values[row],
            score,
            u8::from(file.is_labelled(row))
        );
    }
    std::fs::write(&path, text).map_err(|source| MlError::io(&path, source))?;
    Ok(path)
}

/// Reads the `anomaly_score` column of `detector`'s results for every corpus file.
pub fn read_results(
    corpus: &NabCorpus,
    results_dir: &Path,
    detector: &str,
) -> Result<AnomalyScores, MlError> {
    let mut all = AnomalyScores::new();
    for file in &corpus.files {
        let path = results_path(results_dir, detector, file);
        let results = DelimitedFile::open(&path, ',')?;
        let column = results.column("anomaly_score")?;
        let mut scores = Vec::with_capacity(file.len());
        results.for_each_record(|_, fields| {
            scores.push(parse_f64(fields[column], "anomaly_score")?);
            Ok(())
        })?;
        if scores.len() != file.len() {
            return Err(MlError::Layout(format!(
                "{}: {} rows, the data file has {}",
                path.display(),
                scores.len(),
                file.len()
            )));
        }
        all.insert(file.key.clone(), scores);
    }
    Ok(all)
}

/// Where the score table of `detector` under `profile` lives under `results_dir`.
pub fn score_table_path(results_dir: &Path, detector: &str, profile: ProfileName) -> PathBuf {
    results_dir
        .join(detector)
        .join(format!("{detector}_{}_scores.csv", profile.nab_name()))
}

/// Writes NAB's per-file score tables, one per profile, in the format of NAB's runner
/// (`Detector,Profile,File,Threshold,Score,TP,TN,FP,FN,Total_Count`, files in corpus order,
/// then a `Totals` row), so a detector's results read like any NAB entry's.
pub fn write_score_tables(
    results_dir: &Path,
    detector: &str,
    corpus: &NabCorpus,
    scores: &Scores,
) -> Result<(), MlError> {
    for profile in ProfileName::ALL {
        let score = scores.profile(profile);
        let name = profile.nab_name();
        let mut text =
            String::from("Detector,Profile,File,Threshold,Score,TP,TN,FP,FN,Total_Count\n");
        for file in &corpus.files {
            let Some(file_score) = score.per_file.get(&file.key) else {
                continue;
            };
            // `{:?}` prints the shortest text that reads back as the same f64, as Python's
            // repr does in NAB's tables.
            let _ = writeln!(
                text,
                "{detector},{name},{},{:?},{:?},{}",
                file.key,
                score.threshold,
                file_score.score,
                count_columns(file_score.counts)
            );
        }
        let _ = writeln!(
            text,
            "Totals,,,,{:?},{}",
            score.raw,
            count_columns(score.counts)
        );
        let path = score_table_path(results_dir, detector, profile);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| MlError::io(parent, source))?;
        }
        std::fs::write(&path, text).map_err(|source| MlError::io(&path, source))?;
    }
    Ok(())
}

/// `TP,TN,FP,FN,Total_Count`, in the order of NAB's score tables.
fn count_columns(c: Counts) -> String {
    format!("{},{},{},{},{}", c.tp, c.tn, c.fp, c.fn_, c.total())
}
