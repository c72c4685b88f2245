//! Throughput of every detector on a synthetic stream, one thread (`cargo bench --bench
//! detectors`). Plain `Instant` timing: each detector processes the whole stream once after a
//! warm-up pass, and the best of three runs is reported as samples (rows) per second.
//!
//! Arguments that are not flags filter by name: `cargo bench --bench detectors -- rart` runs
//! only the detectors whose name contains `rart`.
//!
//! With NAB's data (`FABRIK_NAB_DIR`, else `../shared/data/nab` beside the workspace, as the
//! team's machines have it; cargo runs benches from the crate's directory), RART also runs
//! over every NAB file at the file's own probationary period, best of three per file: the
//! mix of short and long periods and of steady and noisy streams that NAB scores.
//! `FABRIK_BENCH_PER_FILE=1` prints each file's best time as well, and
//! `FABRIK_BENCH_CHECKSUM=1` each streaming detector's sum of scores (`bench/river_hst.py`
//! prints river's Half-Space Trees' on the same stream).
//!
//! The stream: 5-minute samples of a daily cycle with noise, a slow drift and a spike every
//! ~5000 samples; rows for the multivariate detectors are 8 channels of the same kind.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fabrik_ml::nab::{NabCorpus, detect_file};
use fabrik_ml::{Observation, RowDetectorKind, StreamingDetectorKind};

const STREAM_LENGTH: usize = 1_000_000;
const ROWS: usize = 200_000;
const TRAINING_ROWS: usize = 400;
const FIVE_MINUTES_NS: i64 = 300 * 1_000_000_000;
/// NAB's probationary period of a long file.
const PROBATION: usize = 750;
/// A short file's probationary period (NAB: 15 % of 1000 rows).
const SHORT_PROBATION: usize = 150;

/// xorshift64*: deterministic noise without a dependency.
struct Noise(u64);

impl Noise {
    fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        bits as f64 / (1_u64 << 53) as f64 - 0.5
    }
}

fn stream(length: usize) -> Vec<Observation> {
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    (0..length)
        .map(|i| {
            let day = (i % 288) as f64 / 288.0 * std::f64::consts::TAU;
            let spike = if i % 4999 == 4998 { 40.0 } else { 0.0 };
            Observation {
                timestamp_ns: 1_400_000_000_000_000_000 + i as i64 * FIVE_MINUTES_NS,
                value: 50.0 + 20.0 * day.sin() + 3.0 * noise.next_unit() + i as f64 * 1e-5 + spike,
            }
        })
        .collect()
}

fn rows(length: usize) -> Vec<Vec<f64>> {
    let mut noise = Noise(0x0123_4567_89ab_cdef);
    (0..length)
        .map(|i| {
            let slow = (i as f64 * 0.01).sin();
            (0..8)
                .map(|channel| {
                    let spike = if i % 997 == 996 && channel == 3 {
                        10.0
                    } else {
                        0.0
                    };
                    10.0 * channel as f64
                        + slow * (channel as f64 + 1.0)
                        + noise.next_unit()
                        + spike
                })
                .collect()
        })
        .collect()
}

fn best_of_three(mut run: impl FnMut() -> Duration) -> Duration {
    run(); // warm-up: caches, page faults, branch predictors
    (0..3).map(|_| run()).min().unwrap_or_default()
}

fn report(name: &str, unit: &str, count: usize, elapsed: Duration) {
    let per_second = count as f64 / elapsed.as_secs_f64();
    println!(
        "{name:28} {count:>9} {unit} in {:>8.3} ms  {:>12.0} {unit}/s  {:>8.1} ns/{unit}",
        elapsed.as_secs_f64() * 1e3,
        per_second,
        1e9 / per_second,
    );
}

/// Whether `name` is selected by the command line's non-flag arguments (all when none).
fn selected(filters: &[String], name: &str) -> bool {
    filters.is_empty() || filters.iter().any(|filter| name.contains(filter.as_str()))
}

/// RART over every file of the NAB corpus, each at its own probationary period.
fn nab_files() {
    let dir = std::env::var_os("FABRIK_NAB_DIR")
        .map_or_else(|| PathBuf::from("../../../shared/data/nab"), PathBuf::from);
    if !dir.join("data").is_dir() {
        println!(
            "rart (NAB files)             skipped: no NAB corpus at {} (set FABRIK_NAB_DIR)",
            dir.display()
        );
        return;
    }
    let corpus = match NabCorpus::load(&dir) {
        Ok(corpus) => corpus,
        Err(error) => {
            eprintln!("rart (NAB files): {error}");
            return;
        }
    };
    let (mut rows, mut elapsed) = (0, Duration::ZERO);
    let per_file = std::env::var_os("FABRIK_BENCH_PER_FILE").is_some();
    for file in &corpus.files {
        let best = best_of_three(|| {
            let started = Instant::now();
            black_box(detect_file(black_box(file), StreamingDetectorKind::Rart));
            started.elapsed()
        });
        if per_file {
            println!(
                "  {:<55} {:>6} rows {:>8.3} ms {:>10.0} rows/s",
                file.key,
                file.len(),
                best.as_secs_f64() * 1e3,
                file.len() as f64 / best.as_secs_f64()
            );
        }
        elapsed += best;
        rows += file.len();
    }
    report(
        &format!("rart (NAB files, {})", corpus.files.len()),
        "samples",
        rows,
        elapsed,
    );
}

fn main() {
    // cargo passes `--bench`; every other argument is a name filter.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|argument| !argument.starts_with('-'))
        .collect();
    let samples = stream(STREAM_LENGTH);
    println!(
        "single thread; {} samples (5-min cadence, P = {PROBATION}); {} rows x 8 channels",
        STREAM_LENGTH, ROWS
    );
    // RART downsamples by P/104 rows (7 at P = 750); a short probation (P < 208, files under
    // ~1400 rows in NAB) runs the ART ensemble on every row, its worst case.
    let runs = StreamingDetectorKind::ALL
        .map(|kind| (kind, PROBATION, kind.name().to_owned()))
        .into_iter()
        .chain([(
            StreamingDetectorKind::Rart,
            SHORT_PROBATION,
            format!("rart (P = {SHORT_PROBATION})"),
        )]);
    let print_checksums = std::env::var_os("FABRIK_BENCH_CHECKSUM").is_some();
    for (kind, probation, name) in runs.filter(|(_, _, name)| selected(&filters, name)) {
        let mut checksum = 0.0;
        let elapsed = best_of_three(|| {
            let mut detector = kind.build(probation);
            let started = Instant::now();
            checksum = 0.0;
            for &observation in &samples {
                checksum += detector.score_then_learn(black_box(observation));
            }
            black_box(checksum);
            started.elapsed()
        });
        report(&name, "samples", STREAM_LENGTH, elapsed);
        if print_checksums {
            // The sum of the scores, to set beside another implementation's on this stream
            // (bench/river_hst.py prints river's).
            println!("{:28} score sum {checksum:.9}", "");
        }
    }

    if selected(&filters, "rart (NAB files)") {
        nab_files();
    }

    let table = rows(ROWS + TRAINING_ROWS);
    let (training, test) = table.split_at(TRAINING_ROWS);
    for kind in RowDetectorKind::ALL {
        let name = format!("{} (8 channels)", kind.name());
        if !selected(&filters, &name) {
            continue;
        }
        let elapsed = best_of_three(|| {
            let mut detector = kind.build();
            if let Err(error) = detector.fit(training) {
                eprintln!("{name}: {error}");
                return Duration::MAX;
            }
            let started = Instant::now();
            let mut alarms = 0_usize;
            for row in test {
                if detector.score_row(black_box(row)).is_ok_and(|v| v.alarm) {
                    alarms += 1;
                }
            }
            black_box(alarms);
            started.elapsed()
        });
        report(&name, "rows", ROWS, elapsed);
    }
}
