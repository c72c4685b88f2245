//! Cost of one drift check (`cargo bench -p fabrik-ml --bench drift`): a device's current
//! windows against its reference windows, 12 features, `auto` as a pipeline runs it, best of
//! five after a warm-up. The exact KS test is the expensive part: its recursion walks a band
//! whose width grows with the statistic, so a no-drift, a mild and a strong shift are timed.

use std::hint::black_box;
use std::time::{Duration, Instant};

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

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|argument| !argument.starts_with('-'))
        .collect();
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
