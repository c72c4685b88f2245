//! How much DBZ's SKAB score depends on its settings: each setting varied alone around the
//! default, then the z threshold against the window, with SKAB's protocol on the labelled
//! files and the false-alarm rate on normal operation (`anomaly-free.csv` cut into 1,150-row
//! files, fitted like the others). A setting whose neighbours score much worse was fitted to
//! the files, not to the pump; the held-out SKAB files would show it.
//!
//! ```text
//! cargo run --release -p fabrik-ml --example dbz_sensitivity -- [SKAB_DATA_DIR]
//! ```
//! (default `../shared/data/skab/data`; SKAB is GPL-3.0 and stays out of the repository.)

use std::path::PathBuf;
use std::process::ExitCode;

use fabrik_ml::MlError;
use fabrik_ml::detectors::RowDetector;
use fabrik_ml::detectors::dbz::{Dbz, DbzConfig};
use fabrik_ml::skab::{
    self, ChangepointRule, OutlierCounts, SkabFile, TRAINING_ROWS, load_labelled_files,
};

/// Rows per normal-operation file, about as long as a labelled one.
const NORMAL_FILE_ROWS: usize = 1150;

/// F1, FAR and MAR over the labelled files and the false-alarm rate on normal operation.
struct Outcome {
    labelled: OutlierCounts,
    normal: OutlierCounts,
    worst_file_f1: f64,
}

fn evaluate(config: DbzConfig, labelled: &[SkabFile], normal: &[SkabFile]) -> Outcome {
    let counts = |files: &[SkabFile]| -> Result<Vec<OutlierCounts>, MlError> {
        files
            .iter()
            .map(|file| {
                let mut detector = Dbz::new(config);
                detector.fit(&file.rows[..TRAINING_ROWS])?;
                let prediction = file.rows[TRAINING_ROWS..]
                    .iter()
                    .map(|row| detector.step(row).map(|step| step.alarm))
                    .collect::<Result<Vec<bool>, MlError>>()?;
                let item = skab::test_item(file, prediction, ChangepointRule::Diff);
                Ok(skab::outlier_counts(&item))
            })
            .collect()
    };
    match (counts(labelled), counts(normal)) {
        (Ok(per_file), Ok(normal_files)) => Outcome {
            labelled: per_file.iter().copied().sum(),
            normal: normal_files.into_iter().sum(),
            worst_file_f1: per_file
                .iter()
                .map(OutlierCounts::f1)
                .fold(f64::INFINITY, f64::min),
        },
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("{config:?}: {error}");
            Outcome {
                labelled: OutlierCounts::default(),
                normal: OutlierCounts::default(),
                worst_file_f1: f64::NAN,
            }
        }
    }
}

fn io_error(path: &std::path::Path, source: std::io::Error) -> MlError {
    MlError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `anomaly-free.csv` as consecutive unlabelled files of [`NORMAL_FILE_ROWS`] rows.
fn normal_operation(data_dir: &std::path::Path) -> Result<Vec<SkabFile>, MlError> {
    let path = data_dir.join("anomaly-free").join("anomaly-free.csv");
    let text = std::fs::read_to_string(&path).map_err(|source| io_error(&path, source))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let body: Vec<&str> = lines.collect();
    let directory = std::env::temp_dir().join("fabrik-dbz-sensitivity");
    std::fs::create_dir_all(&directory).map_err(|source| io_error(&directory, source))?;
    body.chunks_exact(NORMAL_FILE_ROWS)
        .enumerate()
        .map(|(index, rows)| {
            let file = directory.join(format!("{index}.csv"));
            let mut content = format!("{header};anomaly;changepoint\n");
            for row in rows {
                content.push_str(row);
                content.push_str(";0;0\n");
            }
            std::fs::write(&file, content).map_err(|source| io_error(&file, source))?;
            SkabFile::load(&file, &format!("anomaly-free/{index}.csv"))
        })
        .collect()
}

fn row(label: &str, outcome: &Outcome, default: bool) {
    println!(
        "| {label} | {:.3} | {:.2} | {:.2} | {:.2} | {:.2} |{}",
        outcome.labelled.f1(),
        outcome.labelled.far_percent(),
        outcome.labelled.mar_percent(),
        outcome.worst_file_f1,
        outcome.normal.far_percent(),
        if default { " ← default" } else { "" }
    );
}

fn main() -> ExitCode {
    let data_dir: PathBuf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "../shared/data/skab/data".to_owned())
        .into();
    let (labelled, normal) = match (load_labelled_files(&data_dir), normal_operation(&data_dir)) {
        (Ok(labelled), Ok(normal)) => (labelled, normal),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("{}: {error}", data_dir.display());
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{} labelled files, {} normal-operation files of {NORMAL_FILE_ROWS} rows\n",
        labelled.len(),
        normal.len()
    );
    let default = DbzConfig::default();
    let header = |name: &str| {
        println!("\n| {name} | F1 | FAR % | MAR % | worst file F1 | normal FAR % |");
        println!("|---|---:|---:|---:|---:|---:|");
    };
    type Setter = fn(&mut DbzConfig, f64);
    let sweeps: [(&str, Setter, &[f64], f64); 5] = [
        (
            "window",
            |c, v| c.window = v as usize,
            &[5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0],
            default.window as f64,
        ),
        (
            "baseline_time_constant",
            |c, v| c.baseline_time_constant = v,
            &[15.0, 30.0, 60.0, 120.0, 240.0, 1e9],
            default.baseline_time_constant,
        ),
        (
            "baseline_delay",
            |c, v| c.baseline_delay = v as usize,
            &[0.0, 15.0, 30.0, 60.0, 120.0, 240.0],
            default.baseline_delay as f64,
        ),
        (
            "z_threshold",
            |c, v| c.z_threshold = v,
            &[3.0, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 8.0, 10.0, 12.0],
            default.z_threshold,
        ),
        (
            "hold",
            |c, v| c.hold = v as usize,
            &[0.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0],
            default.hold as f64,
        ),
    ];
    for (name, set, values, current) in sweeps {
        header(name);
        for &value in values {
            let mut config = default;
            set(&mut config, value);
            let outcome = evaluate(config, &labelled, &normal);
            row(&format!("{value}"), &outcome, value == current);
        }
    }
    println!("\nF1 by z threshold (rows) and window (columns):\n");
    let windows = [10, 15, 20, 30, 40];
    let thresholds = [4.0, 5.0, 6.0, 7.0, 8.0, 10.0];
    print!("| z \\ window |");
    for window in windows {
        print!(" {window} |");
    }
    println!();
    println!("|---|{}", "---:|".repeat(windows.len()));
    for z_threshold in thresholds {
        print!("| {z_threshold} |");
        for window in windows {
            let config = DbzConfig {
                window,
                z_threshold,
                ..default
            };
            print!(
                " {:.3} |",
                evaluate(config, &labelled, &normal).labelled.f1()
            );
        }
        println!();
    }
    ExitCode::SUCCESS
}
