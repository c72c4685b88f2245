//! Cost of one drift check (`cargo bench -p fabrik-ml --bench drift`): a device's current
//! windows against its reference windows, 12 features, `auto` as a pipeline runs it, best of
//! five after a warm-up. `-- adwin` runs only ADWIN's throughput on a stream of level steps
//! (`bench/river_adwin.py` runs river's on the same stream); `-- kswin` KSWIN's on the first
//! 100,000 of those values (`bench/river_kswin.py`), and its false alarms and delay at three
//! levels on 200,000 (one step, at 100,000); `-- reconstruction` one check by PCA
//! reconstruction; `-- cbpe` performance estimation without labels on NannyML's car-loan
//! data (the test fixture: 50,000 reference and 50,000 analysis rows; `bench/nannyml_cbpe.py`
//! times NannyML on the same). The exact KS test is the expensive part: its recursion walks a band
//! whose width grows with the statistic, so a no-drift, a mild and a strong shift are timed.

use std::hint::black_box;
use std::time::{Duration, Instant};

use fabrik_ml::drift::kswin::{Kswin, KswinSettings};
use fabrik_ml::drift::stream::Adwin;
use fabrik_ml::drift::{DriftMethod, dataset_drift};

const FEATURES: usize = 12;

/// `n` rows of `FEATURES` standard normal values (xorshift and Box–Muller), each moved by
/// `shift`.
fn rows(n: usize, shift: f64, seed: u64) -> Vec<Vec<f64>> {
    let mut state = seed;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1_u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            (0..FEATURES)
                .map(|_| {
                    let (u, v) = (uniform(), uniform());
                    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() + shift
                })
                .collect()
        })
        .collect()
}

/// `bench/river_adwin.py`'s stream: uniform noise in [-0.5, 0.5) from xorshift64 (13, 7, 17)
/// on a level that alternates between 0 and 1 every 100,000 values.
fn adwin_stream(length: usize) -> Vec<f64> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..length)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state >> 11) as f64 / (1_u64 << 53) as f64 - 0.5;
            ((i / 100_000) % 2) as f64 + noise
        })
        .collect()
}

/// ADWIN (river's defaults) over [`adwin_stream`]: values/s, best of three, and the
/// detections, to set beside river's.
fn adwin() {
    let values = adwin_stream(1_000_000);
    timed("ADWIN (1,000,000 values)", &values, || {
        let mut detector = Adwin::default();
        move |value| detector.update(value)
    });
}

/// Runs a fresh detector from `make` over `values` three times and prints the best rate in
/// values/s and the detections, to set beside river's.
fn timed<D: FnMut(f64) -> bool>(name: &str, values: &[f64], mut make: impl FnMut() -> D) {
    let mut best = Duration::MAX;
    let mut detections = Vec::new();
    for _ in 0..3 {
        let mut update = make();
        let started = Instant::now();
        let found: Vec<usize> = values
            .iter()
            .enumerate()
            .filter_map(|(i, &v)| update(black_box(v)).then_some(i))
            .collect();
        best = best.min(started.elapsed());
        detections = found;
    }
    println!(
        "{name:<40} {:>9.0} values/s",
        values.len() as f64 / best.as_secs_f64()
    );
    println!(
        "detections: {} {:?}",
        detections.len(),
        &detections[..detections.len().min(12)]
    );
}

/// KSWIN (river's defaults, seed 42) over the first 100,000 values of [`adwin_stream`]:
/// values/s, best of three, and the detections, to set beside river's; then, at three
/// levels, how many detections come before the step at 100,000 (all false) and how long
/// after it the first one comes.
fn kswin() {
    let values = adwin_stream(100_000);
    timed("KSWIN (100,000 values)", &values, || {
        let mut detector = Kswin::new(KswinSettings::default()).expect("settings");
        move |value| detector.update(value)
    });
    let values = adwin_stream(200_000);
    // The same noise around 0, three times as wide from 100,000: a change of spread alone.
    let spread: Vec<f64> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let noise = v - ((i / 100_000) % 2) as f64;
            if i >= 100_000 { 3.0 * noise } else { noise }
        })
        .collect();
    for (alpha, window_size, stat_size) in [
        (0.005, 100, 30),
        (1e-4, 100, 30),
        (1e-6, 100, 30),
        (1e-6, 300, 100),
        (1e-8, 300, 100),
    ] {
        let mut detector = Kswin::new(KswinSettings {
            alpha,
            window_size,
            stat_size,
            ..KswinSettings::default()
        })
        .expect("settings");
        let found: Vec<usize> = values
            .iter()
            .enumerate()
            .filter_map(|(i, &v)| detector.update(v).then_some(i))
            .collect();
        let false_alarms = found.iter().filter(|&&i| i < 100_000).count();
        let delay = found.iter().find(|&&i| i >= 100_000).map(|i| i - 100_000);
        let mut detector = Kswin::new(KswinSettings {
            alpha,
            window_size,
            stat_size,
            ..KswinSettings::default()
        })
        .expect("settings");
        let widened = spread
            .iter()
            .enumerate()
            .position(|(i, &v)| detector.update(v) && i >= 100_000)
            .map(|i| i - 100_000);
        println!(
            "alpha {alpha:<8} window {window_size:>3}/{stat_size:<3}: false alarms in 100,000 \
             stationary values {false_alarms:>4}; a step of the level found after {delay:?} \
             values, a threefold spread after {widened:?}"
        );
    }
}

/// One drift check by reconstruction (`-- reconstruction`): the PCA fitted on the reference,
/// its chunks' thresholds, the current windows' errors; best of five after a warm-up.
fn reconstruction() {
    println!("one drift check, {FEATURES} features, method reconstruction, best of 5");
    for (reference, current) in [(40, 20), (200, 200), (1000, 1000), (2000, 2000)] {
        let reference_rows = rows(reference, 0.0, 0x9e37_79b9_7f4a_7c15);
        let current_rows = rows(current, 0.0, 0x2545_f491_4f6c_dd1d);
        let mut best = Duration::MAX;
        for _ in 0..6 {
            let started = Instant::now();
            let found = dataset_drift(
                &reference_rows,
                &current_rows,
                DriftMethod::Reconstruction,
                None,
                0.5,
            )
            .expect("check");
            best = best.min(started.elapsed());
            black_box(found);
        }
        println!(
            "{:<40} {:>9.3} ms",
            format!("{reference} vs {current} windows"),
            best.as_secs_f64() * 1e3
        );
    }
}

/// CBPE (`-- cbpe`): fitted on the fixture's 50,000 reference rows (calibration decision,
/// isotonic fit, thresholds), then every metric estimated on its 10 analysis chunks; best of
/// five after a warm-up.
fn cbpe() {
    use fabrik_ml::cbpe::{Cbpe, Metric, chunks};
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cbpe_car_loan.bin"
    );
    let bytes = std::fs::read(path).expect("fixture");
    let columns = |rows: &[u8]| -> (Vec<f64>, Vec<bool>, Vec<bool>) {
        (
            rows.chunks(2).map(|r| f64::from(r[0]) / 100.0).collect(),
            rows.chunks(2).map(|r| r[1] & 1 == 1).collect(),
            rows.chunks(2).map(|r| r[1] & 2 == 2).collect(),
        )
    };
    let (reference, analysis) = bytes.split_at(bytes.len() / 2);
    let (scores, predictions, targets) = columns(reference);
    let (later_scores, later_predictions, _) = columns(analysis);
    let mut best = Duration::MAX;
    let mut alerts = 0;
    for _ in 0..6 {
        let started = Instant::now();
        let cbpe = Cbpe::fit(&scores, &predictions, &targets, &Metric::ALL, 5_000).expect("fit");
        alerts = 0;
        for range in chunks(later_scores.len(), 5_000) {
            let estimates = cbpe
                .estimate(&later_scores[range.clone()], &later_predictions[range])
                .expect("estimate");
            alerts += estimates.iter().filter(|e| e.alert).count();
        }
        best = best.min(started.elapsed());
        black_box(&cbpe);
    }
    println!(
        "CBPE fit on 50,000 rows + 10 chunks of 5,000 estimated, 5 metrics {:>9.3} ms  ({alerts} alerts)",
        best.as_secs_f64() * 1e3
    );
}

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|argument| !argument.starts_with('-'))
        .collect();
    if filters.is_empty() || filters.iter().any(|f| f == "adwin") {
        adwin();
        if !filters.is_empty() {
            return;
        }
    }
    if filters.is_empty() || filters.iter().any(|f| f == "kswin") {
        kswin();
        if !filters.is_empty() {
            return;
        }
    }
    if filters.is_empty() || filters.iter().any(|f| f == "cbpe") {
        cbpe();
        if !filters.is_empty() {
            return;
        }
    }
    if filters.is_empty() || filters.iter().any(|f| f == "reconstruction") {
        reconstruction();
        if !filters.is_empty() {
            return;
        }
    }
    println!("one drift check, {FEATURES} features, method auto, best of 5");
    for (reference, current) in [
        (30, 30),
        (200, 200),
        (1000, 1000),
        (1000, 2000),
        (2000, 2000),
    ] {
        for shift in [0.0, 0.1, 1.0] {
            let name = format!("{reference} vs {current} windows, shift {shift}");
            if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
                continue;
            }
            let reference_rows = rows(reference, 0.0, 0x9e37_79b9_7f4a_7c15);
            let current_rows = rows(current, shift, 0x2545_f491_4f6c_dd1d);
            let mut best = Duration::MAX;
            let mut verdict = None;
            for _ in 0..6 {
                let started = Instant::now();
                let found =
                    dataset_drift(&reference_rows, &current_rows, DriftMethod::Auto, None, 0.5)
                        .expect("check");
                best = best.min(started.elapsed());
                verdict = Some((found.features[0].method, found.drifted));
                black_box(found);
            }
            let (method, drifted) = verdict.expect("ran");
            println!(
                "{name:<40} {:>9.3} ms  ({}; {drifted} of {FEATURES} features drifted)",
                best.as_secs_f64() * 1e3,
                method.name()
            );
        }
    }
}
