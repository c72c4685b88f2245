//! The Numenta Anomaly Benchmark: run a streaming detector over a NAB tree, write NAB-format
//! results, and score them exactly as NAB's own scorer does.
//!
//! Owns the benchmark protocol only: every file is streamed in row order through a fresh
//! detector with one configuration, which gets nothing but the values, the timestamps and the
//! file's probationary period. The scoring rules are written down in
//! `shared/data/nab/README.md` of the team workspace.

mod corpus;
mod results;
mod scorer;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

pub use corpus::{NabCorpus, NabFile, Profile, ProfileName, probationary_period, scaled_sigmoid};
pub use results::{
    read_results, results_path, score_table_path, write_results, write_score_tables,
};
pub use scorer::{
    AnomalyScores, CategoryScore, Counts, FileScore, ProfileScore, Scores, ThresholdChoice,
    optimize_threshold, score_at_threshold, score_file, score_results,
};

use crate::MlError;
use crate::detectors::{Observation, StreamingDetectorKind};

/// What [`run_nab`] did and how the detector scored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NabReport {
    /// The detector's name (also its results directory).
    pub detector: String,
    /// Files streamed.
    pub files: usize,
    /// Rows streamed.
    pub rows: usize,
    /// Seconds spent in the detector (excluding I/O and scoring).
    pub detector_seconds: f64,
    /// Scores with thresholds optimised on this corpus, as NAB's `--optimize --score`.
    pub scores: Scores,
}

/// Streams every row of `file` through a fresh detector of `kind`.
pub fn detect_file(file: &NabFile, kind: StreamingDetectorKind) -> Vec<f64> {
    let mut detector = kind.build(file.probationary_period);
    file.timestamps_ns
        .iter()
        .zip(&file.values)
        .map(|(&timestamp_ns, &value)| {
            detector.score_then_learn(Observation {
                timestamp_ns,
                value,
            })
        })
        .collect()
}

/// Runs `detector` over every file of the NAB tree at `nab_dir`, writes
/// `<out_dir>/<detector>/<category>/<detector>_<file>.csv`, scores the results with
/// optimised thresholds, and writes NAB's per-file score tables
/// (`<out_dir>/<detector>/<detector>_<profile>_scores.csv`).
pub fn run_nab(nab_dir: &Path, out_dir: &Path, detector: &str) -> Result<NabReport, MlError> {
    let kind = StreamingDetectorKind::from_name(detector)?;
    let corpus = NabCorpus::load(nab_dir)?;
    let mut anomaly_scores = AnomalyScores::new();
    let mut detector_seconds = 0.0;
    let mut rows = 0;
    for file in &corpus.files {
        let started = Instant::now();
        let scores = detect_file(file, kind);
        detector_seconds += started.elapsed().as_secs_f64();
        rows += scores.len();
        write_results(out_dir, kind.name(), file, &scores)?;
        anomaly_scores.insert(file.key.clone(), scores);
    }
    let scores = score_results(&corpus, &anomaly_scores, ThresholdChoice::Optimize)?;
    write_score_tables(out_dir, kind.name(), &corpus, &scores)?;
    Ok(NabReport {
        detector: kind.name().to_owned(),
        files: corpus.files.len(),
        rows,
        detector_seconds,
        scores,
    })
}

#[derive(serde::Deserialize)]
struct ThresholdEntry {
    threshold: f64,
}

/// The thresholds of `detector` in NAB's `config/thresholds.json`, in the order standard,
/// low FP, low FN.
pub fn read_thresholds(nab_dir: &Path, detector: &str) -> Result<[f64; 3], MlError> {
    let path = nab_dir.join("config").join("thresholds.json");
    let text = std::fs::read_to_string(&path).map_err(|source| MlError::io(&path, source))?;
    let all: BTreeMap<String, BTreeMap<String, ThresholdEntry>> =
        serde_json::from_str(&text).map_err(|source| MlError::json(&path, source))?;
    let entries = all
        .get(detector)
        .ok_or_else(|| MlError::Layout(format!("{}: no detector `{detector}`", path.display())))?;
    let mut thresholds = [0.0; 3];
    for (slot, profile) in thresholds.iter_mut().zip(ProfileName::ALL) {
        *slot = entries
            .get(profile.nab_name())
            .ok_or_else(|| {
                MlError::Layout(format!(
                    "{}: `{detector}` has no `{}` threshold",
                    path.display(),
                    profile.nab_name()
                ))
            })?
            .threshold;
    }
    Ok(thresholds)
}
