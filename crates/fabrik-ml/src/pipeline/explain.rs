//! Explanations of a window's score by any model that can be probed: which signals, and which
//! of their features, made the window score as it did.
//!
//! Owns occlusion (one feature at a time set to its training median), the single-feature rise
//! (one feature at a time into an all-median window) and Owen values (Shapley values of the
//! signals, each shared among its features by a Shapley value within the signal), all against
//! the device's training medians as the normal window.

use crate::MlError;
use crate::detectors::iforest::SplitMix;

use super::model::WindowModel;

/// Most model probes an exact Owen explanation may take; wider windows are sampled with as
/// many, or with one antithetic pair of orders (2 × features probes) beyond 512 features. A
/// pipeline's typical window (4 signals × 3 features) needs 256 exact probes.
const OWEN_PROBE_BUDGET: usize = 1024;
/// Fewest sampled orders: one antithetic pair.
const OWEN_MIN_ORDERS: usize = 2;

/// Share of the score each feature carries: how much the score drops when that feature alone
/// is set to its normal (median) value.
pub fn occlusion<M: WindowModel + ?Sized>(
    model: &M,
    row: &[f64],
    medians: &[f64],
) -> Result<Vec<f64>, MlError> {
    let full = model.probe(row)?;
    let mut probe = row.to_vec();
    let mut drops = Vec::with_capacity(row.len());
    for j in 0..row.len() {
        probe[j] = medians.get(j).copied().unwrap_or(row[j]);
        drops.push((full - model.probe(&probe)?).max(0.0));
        probe[j] = row[j];
    }
    Ok(normalised(drops))
}

/// Share of the score each feature carries, for a window that no single normal feature makes
/// less anomalous (several are abnormal together — a tone raises several spectral bands —
/// and a model such as Half-Space Trees stays as sure with any one of them normal): how much
/// each feature alone raises the score of an otherwise normal (all-median) window. All zero
/// when `medians` do not fit the row.
pub fn single_feature_rises<M: WindowModel + ?Sized>(
    model: &M,
    row: &[f64],
    medians: &[f64],
) -> Result<Vec<f64>, MlError> {
    if medians.len() != row.len() {
        return Ok(vec![0.0; row.len()]);
    }
    let mut alone = medians.to_vec();
    let normal = model.probe(&alone)?;
    let mut rises = Vec::with_capacity(row.len());
    for j in 0..row.len() {
        alone[j] = row[j];
        rises.push((model.probe(&alone)? - normal).max(0.0));
        alone[j] = medians[j];
    }
    Ok(normalised(rises))
}

/// Share of the score each feature carries by its Owen value: the features of one signal
/// (`features_per_signal` consecutive columns) form a coalition, each signal's share is its
/// Shapley value in the game between signals (the score of a window with some signals as
/// seen and the rest at their medians, less the all-median score), and that share is divided
/// among the signal's features by their Shapley values within it. Unlike occlusion, it
/// credits a signal whose abnormality a model sees only together with, or despite, another's:
/// Half-Space Trees and Isolation Forest saturate, so setting one of two abnormal signals
/// normal leaves the score where it was, and a healthy signal's small move could outrank both.
/// Negative values (a signal more typical than its median) count as 0. Exact within
/// [`OWEN_PROBE_BUDGET`] probes, else estimated from antithetic pairs of random orders drawn
/// from a seed that is a hash of the row, so the same window always gets the same answer.
/// All zero when `medians` do not fit the row.
pub fn owen_shares<M: WindowModel + ?Sized>(
    model: &M,
    row: &[f64],
    medians: &[f64],
    features_per_signal: usize,
) -> Result<Vec<f64>, MlError> {
    Ok(normalised(owen_values(
        model,
        row,
        medians,
        features_per_signal,
    )?))
}

/// The Owen values themselves (they sum to the score of `row` less that of `medians`).
fn owen_values<M: WindowModel + ?Sized>(
    model: &M,
    row: &[f64],
    medians: &[f64],
    features_per_signal: usize,
) -> Result<Vec<f64>, MlError> {
    let width = row.len();
    if medians.len() != width || width == 0 {
        return Ok(vec![0.0; width]);
    }
    let size = features_per_signal.clamp(1, width);
    let groups: Vec<std::ops::Range<usize>> = (0..width)
        .step_by(size)
        .map(|start| start..(start + size).min(width))
        .collect();
    match exact_owen_probes(&groups) {
        Some(probes) if probes <= OWEN_PROBE_BUDGET => exact_owen(model, row, medians, &groups),
        _ => sampled_owen(model, row, medians, &groups),
    }
}

/// Probes [`exact_owen`] takes: per signal, every subset of the other signals with every
/// subset of its own features. `None` when that overflows.
fn exact_owen_probes(groups: &[std::ops::Range<usize>]) -> Option<usize> {
    groups.iter().try_fold(0_usize, |total, group| {
        let others = u32::try_from(groups.len() - 1).ok()?;
        let own = u32::try_from(group.len()).ok()?;
        total.checked_add(1_usize.checked_shl(others.checked_add(own)?)?)
    })
}

/// Shapley weight of a coalition of `size` among `players`: size!·(players−size−1)!/players!.
fn shapley_weight(size: usize, players: usize) -> f64 {
    let factorial = |n: usize| (1..=n).map(|k| k as f64).product::<f64>();
    factorial(size) * factorial(players - size - 1) / factorial(players)
}

fn exact_owen<M: WindowModel + ?Sized>(
    model: &M,
    row: &[f64],
    medians: &[f64],
    groups: &[std::ops::Range<usize>],
) -> Result<Vec<f64>, MlError> {
    let mut values = vec![0.0; row.len()];
    let mut probe = medians.to_vec();
    let mut scores = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        let others: Vec<&std::ops::Range<usize>> = groups
            .iter()
            .enumerate()
            .filter(|&(h, _)| h != g)
            .map(|(_, other)| other)
            .collect();
        let own = group.len();
        for seen_others in 0_usize..1 << others.len() {
            for (bit, other) in others.iter().enumerate() {
                let source = if seen_others >> bit & 1 == 1 {
                    row
                } else {
                    medians
                };
                probe[(*other).clone()].copy_from_slice(&source[(*other).clone()]);
            }
            // Every subset of the signal's own features, with these other signals seen.
            scores.clear();
            for seen_own in 0_usize..1 << own {
                for (bit, j) in group.clone().enumerate() {
                    probe[j] = if seen_own >> bit & 1 == 1 {
                        row[j]
                    } else {
                        medians[j]
                    };
                }
                scores.push(model.probe(&probe)?);
            }
            let outer = shapley_weight(seen_others.count_ones() as usize, groups.len());
            for (bit, j) in group.clone().enumerate() {
                for seen_own in (0_usize..1 << own).filter(|s| s >> bit & 1 == 0) {
                    let inner = shapley_weight(seen_own.count_ones() as usize, own);
                    values[j] += outer * inner * (scores[seen_own | 1 << bit] - scores[seen_own]);
                }
            }
        }
        probe[group.clone()].copy_from_slice(&medians[group.clone()]);
    }
    Ok(values)
}

/// Owen values estimated by walking from the all-median window to `row` in random orders that
/// keep each signal's features together (a random order of the signals, each with a random
/// order of its features), crediting each feature with the score's change as it is set, and
/// each order's reverse with it.
fn sampled_owen<M: WindowModel + ?Sized>(
    model: &M,
    row: &[f64],
    medians: &[f64],
    groups: &[std::ops::Range<usize>],
) -> Result<Vec<f64>, MlError> {
    let width = row.len();
    let pairs = (OWEN_PROBE_BUDGET / (2 * width)).max(OWEN_MIN_ORDERS / 2);
    let seed = row.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, value| {
        (hash ^ value.to_bits()).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut rng = SplitMix(seed);
    let baseline = model.probe(medians)?;
    let full = model.probe(row)?;
    let mut values = vec![0.0; width];
    let mut probe = medians.to_vec();
    let mut group_order: Vec<usize> = (0..groups.len()).collect();
    let mut order = Vec::with_capacity(width);
    for _ in 0..pairs {
        shuffle(&mut group_order, &mut rng);
        order.clear();
        for &g in &group_order {
            let start = order.len();
            order.extend(groups[g].clone());
            shuffle(&mut order[start..], &mut rng);
        }
        for reverse in [false, true] {
            probe.copy_from_slice(medians);
            let mut previous = baseline;
            for step in 0..width {
                let j = if reverse {
                    order[width - 1 - step]
                } else {
                    order[step]
                };
                probe[j] = row[j];
                let score = if step + 1 == width {
                    full
                } else {
                    model.probe(&probe)?
                };
                values[j] += score - previous;
                previous = score;
            }
        }
    }
    let orders = (2 * pairs) as f64;
    for value in &mut values {
        *value /= orders;
    }
    Ok(values)
}

/// Fisher–Yates.
fn shuffle<T>(items: &mut [T], rng: &mut SplitMix) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
}

/// Non-negative shares summing to 1 (unless all are 0); negative and non-finite weights
/// count as 0.
pub(crate) fn normalised(weights: Vec<f64>) -> Vec<f64> {
    let mut weights: Vec<f64> = weights
        .into_iter()
        .map(|w| if w.is_finite() && w > 0.0 { w } else { 0.0 })
        .collect();
    let total: f64 = weights.iter().sum();
    if total > 0.0 {
        for w in &mut weights {
            *w /= total;
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::simulated_pump::{PumpFault, pump_window};

    /// A model given by a closure of the row.
    struct Score<F>(F);

    impl<F: Fn(&[f64]) -> f64 + Send> WindowModel for Score<F> {
        fn name(&self) -> &str {
            "closure"
        }
        fn version(&self) -> &str {
            "1"
        }
        fn fit(&mut self, _rows: &[Vec<f64>]) -> Result<(), MlError> {
            Ok(())
        }
        fn score(&mut self, row: &[f64]) -> Result<f64, MlError> {
            self.probe(row)
        }
        fn probe(&self, row: &[f64]) -> Result<f64, MlError> {
            Ok((self.0)(row))
        }
    }

    /// A bounded score, as Half-Space Trees' and Isolation Forest's are: the largest feature,
    /// capped at 5.
    fn largest_feature(row: &[f64]) -> f64 {
        row.iter().copied().fold(0.0, f64::max).min(5.0)
    }

    /// Two features abnormal together: setting either to normal leaves the (capped) score as
    /// it is, and the explanation falls back to each feature alone in a normal window, which
    /// names both (and not the normal third).
    #[test]
    fn features_abnormal_together_are_named_when_no_single_one_lowers_the_score() {
        let model = Score(largest_feature);
        let medians = [1.0, 1.0, 1.0];
        let row = [9.0, 6.0, 1.0];
        let shares = occlusion(&model, &row, &medians).unwrap();
        assert_eq!(
            shares,
            vec![0.0; 3],
            "no single feature lowers the capped score"
        );
        let shares = single_feature_rises(&model, &row, &medians).unwrap();
        assert!(shares[0] > 0.0 && shares[1] > 0.0, "{shares:?}");
        assert_eq!(shares[2], 0.0, "{shares:?}");
        let total: f64 = shares.iter().sum();
        assert!((total - 1.0).abs() < 1e-12, "{shares:?}");
        // One abnormal feature: plain occlusion names it alone.
        let shares = occlusion(&model, &[4.0, 1.0, 1.0], &medians).unwrap();
        assert_eq!(shares, vec![1.0, 0.0, 0.0]);
    }

    /// A score with interactions: the larger of two products plus a square.
    fn interacting(row: &[f64]) -> f64 {
        (row[0] * row[1]).max(row[2] * row[3] * row[4]) + row[5] * row[5] + 0.5 * row[1]
    }

    /// Shapley values by their definition: the average over every order of the players of
    /// each one's marginal contribution.
    fn shapley_by_orders(model: &dyn WindowModel, row: &[f64], medians: &[f64]) -> Vec<f64> {
        fn orders(n: usize) -> Vec<Vec<usize>> {
            if n == 0 {
                return vec![Vec::new()];
            }
            let mut all = Vec::new();
            for order in orders(n - 1) {
                for at in 0..=order.len() {
                    let mut longer = order.clone();
                    longer.insert(at, n - 1);
                    all.push(longer);
                }
            }
            all
        }
        let all = orders(row.len());
        let mut values = vec![0.0; row.len()];
        for order in &all {
            let mut probe = medians.to_vec();
            let mut previous = model.probe(&probe).unwrap();
            for &j in order {
                probe[j] = row[j];
                let score = model.probe(&probe).unwrap();
                values[j] += score - previous;
                previous = score;
            }
        }
        values.iter().map(|v| v / all.len() as f64).collect()
    }

    #[test]
    fn one_feature_per_signal_gives_the_shapley_values() {
        let model = Score(interacting);
        let row = [2.0, 3.0, 1.5, 2.0, 4.0, -1.0];
        let medians = [1.0, 1.0, 1.0, 1.0, 1.0, 0.5];
        let owen = owen_values(&model, &row, &medians, 1).unwrap();
        let shapley = shapley_by_orders(&model, &row, &medians);
        for (a, b) in owen.iter().zip(&shapley) {
            assert!((a - b).abs() < 1e-12, "{owen:?} against {shapley:?}");
        }
    }

    /// Owen values add up to the score's rise over the all-median window, and each signal's
    /// features together carry that signal's Shapley value in the game between signals.
    #[test]
    fn owen_values_split_each_signals_shapley_value_among_its_features() {
        let model = Score(interacting);
        let row = [2.0, 3.0, 1.5, 2.0, 4.0, -1.0];
        let medians = [1.0, 1.0, 1.0, 1.0, 1.0, 0.5];
        let owen = owen_values(&model, &row, &medians, 2).unwrap();
        let rise = interacting(&row) - interacting(&medians);
        assert!((owen.iter().sum::<f64>() - rise).abs() < 1e-12, "{owen:?}");
        // The game between the three signals, each setting its two features at once.
        let by_signal = Score(|signals: &[f64]| {
            let mut window = medians;
            for (signal, &seen) in signals.iter().enumerate() {
                if seen == 1.0 {
                    window[2 * signal..2 * signal + 2]
                        .copy_from_slice(&row[2 * signal..2 * signal + 2]);
                }
            }
            interacting(&window)
        });
        let signal_values = shapley_by_orders(&by_signal, &[1.0; 3], &[0.0; 3]);
        for (signal, value) in signal_values.iter().enumerate() {
            let features = owen[2 * signal] + owen[2 * signal + 1];
            assert!(
                (features - value).abs() < 1e-12,
                "{owen:?} {signal_values:?}"
            );
        }
    }

    /// A window too wide for the exact values is sampled: the estimate is close to them,
    /// exact for an additive score, and the same every time for the same window.
    #[test]
    fn sampled_owen_values_estimate_the_exact_ones() {
        let groups: Vec<std::ops::Range<usize>> = (0..6).step_by(2).map(|s| s..s + 2).collect();
        let row = [2.0, 3.0, 1.5, 2.0, 4.0, -1.0];
        let medians = [1.0, 1.0, 1.0, 1.0, 1.0, 0.5];
        let model = Score(interacting);
        let exact = exact_owen(&model, &row, &medians, &groups).unwrap();
        let sampled = sampled_owen(&model, &row, &medians, &groups).unwrap();
        let rise = interacting(&row) - interacting(&medians);
        assert!(
            (sampled.iter().sum::<f64>() - rise).abs() < 1e-9,
            "{sampled:?}"
        );
        for (a, b) in sampled.iter().zip(&exact) {
            assert!(
                (a - b).abs() < 0.1 * rise.abs(),
                "{sampled:?} against {exact:?}"
            );
        }
        assert_eq!(
            sampled,
            sampled_owen(&model, &row, &medians, &groups).unwrap()
        );
        let weights = [3.0, -1.0, 0.5, 2.0, 0.25, 4.0];
        let additive = Score(|r: &[f64]| r.iter().zip(&weights).map(|(x, w)| x * w).sum());
        let sampled = sampled_owen(&additive, &row, &medians, &groups).unwrap();
        for j in 0..6 {
            let exact = weights[j] * (row[j] - medians[j]);
            assert!((sampled[j] - exact).abs() < 1e-12, "{j}: {sampled:?}");
        }
        // Wider than the budget: `owen_values` samples, and still adds up.
        let wide_row: Vec<f64> = (0..40).map(|j| 1.0 + (j % 7) as f64).collect();
        let wide_medians = vec![1.0; 40];
        let sum_of_squares = Score(|r: &[f64]| r.iter().map(|x| x * x).sum::<f64>().sqrt());
        assert!(
            exact_owen_probes(&(0..40).step_by(4).map(|s| s..s + 4).collect::<Vec<_>>())
                .is_some_and(|probes| probes > OWEN_PROBE_BUDGET)
        );
        let wide = owen_values(&sum_of_squares, &wide_row, &wide_medians, 4).unwrap();
        let rise = sum_of_squares.probe(&wide_row).unwrap() - 40.0_f64.sqrt();
        assert!((wide.iter().sum::<f64>() - rise).abs() < 1e-9);
        assert!(
            wide.iter()
                .enumerate()
                .all(|(j, &v)| (j % 7 == 0) == (v.abs() < 1e-12))
        );
    }

    /// A saturating model (Half-Space Trees' and Isolation Forest's scores are bounded): with
    /// two signals far off, setting either one normal leaves the score at its cap, so
    /// occlusion credits only a healthy signal's slight move; Owen values credit the two.
    #[test]
    fn owen_values_name_signals_a_saturated_score_hides_from_occlusion() {
        let model = Score(|r: &[f64]| (r[0].abs().max(r[1].abs())).min(1.0) + 0.01 * r[2].abs());
        let row = [5.0, 5.0, 1.0];
        let medians = [0.0; 3];
        let occluded = occlusion(&model, &row, &medians).unwrap();
        assert_eq!(
            occluded,
            vec![0.0, 0.0, 1.0],
            "occlusion names the healthy one"
        );
        let shares = owen_shares(&model, &row, &medians, 1).unwrap();
        assert!((shares[0] - shares[1]).abs() < 1e-12, "{shares:?}");
        assert!(shares[0] > 10.0 * shares[2], "{shares:?}");
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // Medians that do not fit the row explain nothing.
        assert_eq!(
            owen_shares(&model, &row, &[0.0; 2], 1).unwrap(),
            vec![0.0; 3]
        );
    }

    /// The signal (of 4, 3 features each) with the largest summed share, as the pipeline
    /// names it, or with the largest single share, as it did before Owen values.
    fn named_signal(shares: &[f64], summed: bool) -> Option<usize> {
        let per_signal: Vec<f64> = shares
            .chunks(3)
            .map(|chunk| {
                if summed {
                    chunk.iter().sum()
                } else {
                    chunk.iter().copied().fold(0.0, f64::max)
                }
            })
            .collect();
        let (signal, &most) = per_signal
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))?;
        (most > 0.0).then_some(signal)
    }

    /// On simulated pump faults, how often each forest and PCA name a faulty signal in the
    /// fault windows they flag: occlusion (the explanation before) against the pipeline's
    /// explanation of a flagged window. Recorded in docs/benchmarks.md; run with
    /// `cargo test -p fabrik-ml --release --lib faulty_signal -- --nocapture` for the table.
    #[test]
    fn flagged_pump_faults_name_the_faulty_signal() {
        const SEEDS: u64 = 20;
        use crate::pipeline::model::{BuiltinModel, column_medians};
        for (model_kind, margin, floor) in [
            (BuiltinModel::Hst, 1.1, 0.78),
            (BuiltinModel::IsolationForest, 1.1, 0.97),
            (BuiltinModel::PcaT2Q, 1.5, 0.97),
        ] {
            let (mut flagged, mut by_occlusion, mut by_pipeline) = (0, 0, 0);
            let mut explaining = std::time::Duration::ZERO;
            for seed in 1..=SEEDS {
                let mut rng = SplitMix(seed);
                let mut next = move || (rng.next() >> 11) as f64 / (1_u64 << 53) as f64;
                let training: Vec<Vec<f64>> = (0..30)
                    .map(|_| pump_window(&mut next, PumpFault::None))
                    .collect();
                let mut model = model_kind.build();
                model.fit(&training).unwrap();
                let mut scores: Vec<f64> =
                    training.iter().map(|r| model.probe(r).unwrap()).collect();
                scores.sort_by(f64::total_cmp);
                let threshold = crate::pipeline::calibrated_threshold(
                    &scores,
                    1.0,
                    margin,
                    model.score_bound(),
                );
                let medians = column_medians(&training);
                for window in 0..60 {
                    let fault = match window % 4 {
                        0 => PumpFault::Spike,
                        1 => PumpFault::Drift(0.3 + 0.7 * next()),
                        2 => PumpFault::Stuck,
                        _ => PumpFault::None,
                    };
                    let row = pump_window(&mut next, fault);
                    let faulty: &[usize] = match fault {
                        PumpFault::Spike | PumpFault::Drift(_) => &[0, 1],
                        PumpFault::Stuck => &[2],
                        PumpFault::None => &[],
                    };
                    if fault != PumpFault::None && model.probe(&row).unwrap() > threshold {
                        flagged += 1;
                        let occluded = occlusion(model.as_ref(), &row, &medians).unwrap();
                        let started = std::time::Instant::now();
                        let explained = model.explain_flagged(&row, &medians, 3).unwrap();
                        explaining += started.elapsed();
                        let hit =
                            |signal: Option<usize>| signal.is_some_and(|s| faulty.contains(&s));
                        by_occlusion += usize::from(hit(named_signal(&occluded, false)));
                        by_pipeline += usize::from(hit(named_signal(&explained, true)));
                    }
                    model.score(&row).unwrap();
                }
            }
            eprintln!(
                "{model_kind:?}: {flagged} flagged fault windows; faulty signal named by \
                 occlusion {by_occlusion}, by the pipeline's explanation {by_pipeline} \
                 ({:?} per explanation)",
                explaining / flagged.max(1)
            );
            assert!(flagged > 100, "{model_kind:?} flagged {flagged}");
            assert!(
                by_pipeline >= by_occlusion,
                "{model_kind:?}: {by_pipeline} < {by_occlusion}"
            );
            assert!(
                by_pipeline as f64 >= floor * flagged as f64,
                "{model_kind:?}: {by_pipeline} of {flagged}"
            );
        }
    }
}
