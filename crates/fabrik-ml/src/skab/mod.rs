//! The Skoltech Anomaly Benchmark protocol: per labelled file, fit a row detector on the first
//! 400 rows, predict the rest in order, and score the predictions with SKAB's metrics.
//!
//! Owns reading SKAB's `;`-separated files and the protocol; the metrics live in the `metrics`
//! submodule.
//! SKAB's data is GPL-3.0: this code reads it from wherever it is given and never embeds it.

mod metrics;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use metrics::{
    ChangepointMetrics, ChangepointRule, OutlierCounts, SkabItem, SkabMetrics, changepoints,
    evaluate, outlier_counts,
};

use crate::MlError;
use crate::delimited::{DelimitedFile, parse_f64};
use crate::detectors::RowDetectorKind;
use crate::time::{parse_civil_timestamp, seconds_of};

/// Rows of each file used for fitting (sklearn `train_test_split(train_size=400,
/// shuffle=False)` in SKAB's notebooks); the rest is the test part.
pub const TRAINING_ROWS: usize = 400;
/// The directory of normal-operation data, which no SKAB leaderboard notebook scores.
const ANOMALY_FREE_DIR: &str = "anomaly-free";
const ANOMALY_FREE_FILE: &str = "anomaly-free.csv";
const TIME_COLUMN: &str = "datetime";
const ANOMALY_COLUMN: &str = "anomaly";
const CHANGEPOINT_COLUMN: &str = "changepoint";

/// One labelled SKAB file.
#[derive(Debug, Clone)]
pub struct SkabFile {
    /// `<directory>/<file>.csv`, e.g. `valve1/0.csv`.
    pub name: String,
    /// Sensor column names in file order.
    pub sensors: Vec<String>,
    /// Row timestamps in whole seconds since the epoch.
    pub seconds: Vec<i64>,
    /// Sensor values per row.
    pub rows: Vec<Vec<f64>>,
    /// Outlier label per row.
    pub anomaly: Vec<bool>,
    /// Changepoint label per row.
    pub changepoint: Vec<bool>,
}

fn parse_flag(field: &str, column: &str) -> Result<bool, String> {
    let value = parse_f64(field, column)?;
    Ok(value != 0.0)
}

impl SkabFile {
    /// Reads one labelled file (`datetime;<sensors...>;anomaly;changepoint`).
    pub fn load(path: &Path, name: &str) -> Result<Self, MlError> {
        let file = DelimitedFile::open(path, ';')?;
        let time = file.column(TIME_COLUMN)?;
        let anomaly_column = file.column(ANOMALY_COLUMN)?;
        let changepoint_column = file.column(CHANGEPOINT_COLUMN)?;
        let sensor_columns: Vec<usize> = (0..file.columns().len())
            .filter(|&c| c != time && c != anomaly_column && c != changepoint_column)
            .collect();
        let sensors = sensor_columns
            .iter()
            .map(|&c| file.columns()[c].clone())
            .collect();
        let (mut seconds, mut rows, mut anomaly, mut changepoint) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        file.for_each_record(|_, fields| {
            let timestamp = parse_civil_timestamp(fields[time]).map_err(|e| e.to_string())?;
            seconds.push(seconds_of(timestamp));
            rows.push(
                sensor_columns
                    .iter()
                    .map(|&c| parse_f64(fields[c], &file.columns()[c]))
                    .collect::<Result<Vec<f64>, String>>()?,
            );
            anomaly.push(parse_flag(fields[anomaly_column], ANOMALY_COLUMN)?);
            changepoint.push(parse_flag(fields[changepoint_column], CHANGEPOINT_COLUMN)?);
            Ok(())
        })?;
        Ok(Self {
            name: name.to_owned(),
            sensors,
            seconds,
            rows,
            anomaly,
            changepoint,
        })
    }
}

/// Sorts `7.csv` before `10.csv`: numeric stems by value, then the rest by name.
fn file_order(name: &str) -> (u64, String) {
    let stem = name.strip_suffix(".csv").unwrap_or(name);
    (stem.parse().unwrap_or(u64::MAX), name.to_owned())
}

/// Every labelled file below `data_dir`, at any depth, as SKAB's `load_skab()` walks its
/// `data/`: so SKAB's repository root, its `data/` directory, or one group's directory (e.g.
/// `data/valve2`) all work. `anomaly-free/` is skipped. Directories are visited in name order,
/// the files of one directory in numeric order; each file is named `<its directory>/<file>`.
pub fn load_labelled_files(data_dir: &Path) -> Result<Vec<SkabFile>, MlError> {
    // The repository root: walk only its data/, as load_skab() does, so no other CSV counts.
    let nested = data_dir.join("data");
    let walked = if nested.is_dir() { &nested } else { data_dir };
    let mut files = Vec::new();
    collect_labelled_files(walked, MAX_DEPTH, &mut files)?;
    if files.is_empty() {
        return Err(MlError::Layout(format!(
            "{}: no labelled SKAB files (<group>/<n>.csv with anomaly and changepoint columns) \
             below it",
            data_dir.display()
        )));
    }
    Ok(files)
}

/// How deep the walk goes below the given directory: SKAB nests one level, and a bound keeps a
/// symbolic-link loop from recursing for ever.
const MAX_DEPTH: usize = 8;

fn collect_labelled_files(
    dir: &Path,
    depth_left: usize,
    files: &mut Vec<SkabFile>,
) -> Result<(), MlError> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(|source| MlError::io(dir, source))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| MlError::io(dir, source))?;
    entries.sort();
    let dir_name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let mut csvs: Vec<(PathBuf, String)> = Vec::new();
    let mut subdirs = Vec::new();
    for path in entries {
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if path.is_dir() {
            if name != ANOMALY_FREE_DIR && depth_left > 0 {
                subdirs.push(path);
            }
        } else if name.ends_with(".csv") && name != ANOMALY_FREE_FILE {
            csvs.push((path, name));
        }
    }
    csvs.sort_by_key(|(_, name)| file_order(name));
    for (path, name) in csvs {
        files.push(SkabFile::load(&path, &format!("{dir_name}/{name}"))?);
    }
    for subdir in subdirs {
        collect_labelled_files(&subdir, depth_left - 1, files)?;
    }
    Ok(())
}

/// One file's outlier result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SkabFileReport {
    /// `<dir>/<file>.csv`.
    pub name: String,
    /// Outlier counts over its test rows.
    pub counts: OutlierCounts,
    /// Its F1.
    pub f1: f64,
}

/// One group of files (SKAB's `valve1`, `valve2`, `other`): the outlier metrics over its files'
/// test rows, pooled as the protocol pools all files.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SkabGroupReport {
    /// Files in the group.
    pub files: usize,
    /// Outlier counts over their test rows.
    pub counts: OutlierCounts,
    /// F1 over those rows.
    pub f1: f64,
    /// False alarm rate, percent.
    pub far: f64,
    /// Missed alarm rate, percent.
    pub mar: f64,
}

/// The result of [`run_skab`]. Rates are unrounded (SKAB prints them to 2 decimals).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SkabReport {
    /// The detector's name.
    pub detector: String,
    /// Files evaluated.
    pub files: usize,
    /// Outlier F1 over all test rows.
    pub f1: f64,
    /// False alarm rate, percent.
    pub far: f64,
    /// Missed alarm rate, percent.
    pub mar: f64,
    /// SKAB NAB score, standard profile.
    pub nab_standard: f64,
    /// SKAB NAB score, LowFP profile.
    pub nab_low_fp: f64,
    /// SKAB NAB score, LowFN profile.
    pub nab_low_fn: f64,
    /// All metrics in detail.
    pub metrics: SkabMetrics,
    /// Per-file outlier results.
    pub per_file: Vec<SkabFileReport>,
    /// Outlier results per group (the directory part of each file's name).
    pub per_group: BTreeMap<String, SkabGroupReport>,
    /// Seconds spent fitting and scoring.
    pub detector_seconds: f64,
}

impl SkabReport {
    fn from_items(
        detector: &str,
        names: Vec<String>,
        items: &[SkabItem],
        detector_seconds: f64,
    ) -> Self {
        let metrics = evaluate(items);
        let per_file: Vec<SkabFileReport> = names
            .into_iter()
            .zip(items)
            .map(|(name, item)| {
                let counts = outlier_counts(item);
                SkabFileReport {
                    name,
                    f1: counts.f1(),
                    counts,
                }
            })
            .collect();
        let mut grouped: BTreeMap<String, (usize, OutlierCounts)> = BTreeMap::new();
        for file in &per_file {
            let group = file.name.rsplit_once('/').map_or("", |(group, _)| group);
            let (files, counts) = grouped.entry(group.to_owned()).or_default();
            *files += 1;
            *counts += file.counts;
        }
        let per_group = grouped
            .into_iter()
            .map(|(group, (files, counts))| {
                let report = SkabGroupReport {
                    files,
                    f1: counts.f1(),
                    far: counts.far_percent(),
                    mar: counts.mar_percent(),
                    counts,
                };
                (group, report)
            })
            .collect();
        Self {
            detector: detector.to_owned(),
            files: items.len(),
            f1: metrics.outlier.f1(),
            far: metrics.outlier.far_percent(),
            mar: metrics.outlier.mar_percent(),
            nab_standard: metrics.changepoint.nab_standard,
            nab_low_fp: metrics.changepoint.nab_low_fp,
            nab_low_fn: metrics.changepoint.nab_low_fn,
            metrics,
            per_file,
            per_group,
            detector_seconds,
        }
    }
}

/// The test-part item of `file` for predictions of rows `TRAINING_ROWS..`.
pub fn test_item(file: &SkabFile, prediction: Vec<bool>, rule: ChangepointRule) -> SkabItem {
    let start = TRAINING_ROWS.min(file.rows.len());
    let end = (start + prediction.len()).min(file.rows.len());
    SkabItem {
        label_seconds: file.seconds[start..].to_vec(),
        anomaly: file.anomaly[start..].to_vec(),
        changepoint: file.changepoint[start..].to_vec(),
        prediction_seconds: file.seconds[start..end].to_vec(),
        prediction,
        rule,
    }
}

/// Fits a fresh `detector` on each file's first 400 rows and predicts the rest.
pub fn predict_files(
    files: &[SkabFile],
    detector: RowDetectorKind,
) -> Result<Vec<Vec<bool>>, MlError> {
    files
        .iter()
        .map(|file| {
            if file.rows.len() <= TRAINING_ROWS {
                return Err(MlError::Layout(format!(
                    "{}: {} rows, needs more than {TRAINING_ROWS}",
                    file.name,
                    file.rows.len()
                )));
            }
            let mut model = detector.build();
            model.fit(&file.rows[..TRAINING_ROWS])?;
            file.rows[TRAINING_ROWS..]
                .iter()
                .map(|row| model.score_row(row).map(|verdict| verdict.alarm))
                .collect()
        })
        .collect()
}

/// Runs SKAB's protocol for `detector` on every labelled file under `data_dir` (changepoints
/// by the `diff` rule, as SKAB's notebooks derive them for row-wise detectors).
pub fn run_skab(data_dir: &Path, detector: RowDetectorKind) -> Result<SkabReport, MlError> {
    let files = load_labelled_files(data_dir)?;
    run_skab_on(&files, detector)
}

/// [`run_skab`] on files already loaded (or synthetic ones).
pub fn run_skab_on(files: &[SkabFile], detector: RowDetectorKind) -> Result<SkabReport, MlError> {
    let started = Instant::now();
    let predictions = predict_files(files, detector)?;
    let detector_seconds = started.elapsed().as_secs_f64();
    let items: Vec<SkabItem> = files
        .iter()
        .zip(predictions)
        .map(|(file, prediction)| test_item(file, prediction, ChangepointRule::Diff))
        .collect();
    let names = files.iter().map(|f| f.name.clone()).collect();
    Ok(SkabReport::from_items(
        detector.name(),
        names,
        &items,
        detector_seconds,
    ))
}
