//! Two groups' pooled rates, or weighted means of one value per unit, compared by permuting the
//! groups over their units: randomisation inference for an A/B split by device, where the
//! windows of one device are not independent draws (a fault episode, a noisy sensor), so a
//! test that counted windows would overstate the evidence. Exact over every assignment when
//! there are few, else a seeded Monte Carlo.

/// One unit's count: events (alerts, confirmed alerts) among trials (windows, labelled
/// alerts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// Events.
    pub events: u64,
    /// Trials (at least the events).
    pub trials: u64,
}

/// What [`compare_pooled_rates`] found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateComparison {
    /// Σ events / Σ trials of the first group (`None` without trials).
    pub rate_a: Option<f64>,
    /// ... of the second.
    pub rate_b: Option<f64>,
    /// `rate_b − rate_a`.
    pub difference: Option<f64>,
    /// The share of assignments of units to groups (of the same sizes) whose absolute
    /// difference is at least the observed one; `None` unless each group has a unit with
    /// trials.
    pub p_value: Option<f64>,
    /// Assignments weighed (all of them when `exact`, else random draws).
    pub permutations: u64,
    /// Whether every assignment was weighed.
    pub exact: bool,
}

/// Enumerate every assignment up to this many; beyond, draw this many at random.
pub const MAX_PERMUTATIONS: u64 = 20_000;

/// Compares the pooled rates of `a` and `b` (units without trials are left out), two-sided.
pub fn compare_pooled_rates(a: &[Unit], b: &[Unit], seed: u64) -> RateComparison {
    let a: Vec<Unit> = a.iter().copied().filter(|u| u.trials > 0).collect();
    let b: Vec<Unit> = b.iter().copied().filter(|u| u.trials > 0).collect();
    let pooled = |units: &[Unit]| {
        let (events, trials) = totals(units.iter());
        (trials > 0).then(|| events as f64 / trials as f64)
    };
    let (rate_a, rate_b) = (pooled(&a), pooled(&b));
    let difference = rate_a.zip(rate_b).map(|(ra, rb)| rb - ra);
    let mut comparison = RateComparison {
        rate_a,
        rate_b,
        difference,
        p_value: None,
        permutations: 0,
        exact: false,
    };
    let Some(observed) = difference else {
        return comparison;
    };
    let units: Vec<Unit> = a.iter().chain(&b).copied().collect();
    let (all_events, all_trials) = totals(units.iter());
    // Differences this close to the observed one are ties: rounding must not decide.
    let at_least = observed.abs() * (1.0 - 1e-12) - 1e-15;
    let extreme = |in_b: &dyn Fn(usize) -> bool| {
        let (events_b, trials_b) = totals(
            units
                .iter()
                .enumerate()
                .filter(|(i, _)| in_b(*i))
                .map(|(_, u)| u),
        );
        let (events_a, trials_a) = (all_events - events_b, all_trials - trials_b);
        let difference = events_b as f64 / trials_b as f64 - events_a as f64 / trials_a as f64;
        difference.abs() >= at_least
    };
    let test = permute(units.len(), b.len(), seed, &extreme);
    comparison.p_value = Some(test.p_value);
    comparison.permutations = test.permutations;
    comparison.exact = test.exact;
    comparison
}

/// One unit's value and the weight it carries in its group's mean (the device-hours a
/// downtime share was observed over; 1 for an unweighted mean).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weighted {
    /// The unit's value.
    pub value: f64,
    /// Its weight (units without a positive, finite weight are left out).
    pub weight: f64,
}

/// What [`compare_means`] found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanComparison {
    /// The weighted mean of the first group's values, `Σ w·v / Σ w` (`None` without values).
    pub mean_a: Option<f64>,
    /// ... of the second.
    pub mean_b: Option<f64>,
    /// `mean_b − mean_a`.
    pub difference: Option<f64>,
    /// The share of assignments of the units to groups (of the same sizes) whose absolute
    /// difference of weighted means is at least the observed one; `None` unless both groups
    /// have a unit.
    pub p_value: Option<f64>,
    /// Assignments weighed (all of them when `exact`, else random draws).
    pub permutations: u64,
    /// Whether every assignment was weighed.
    pub exact: bool,
}

/// Compares the weighted means of one value per unit of `a` and `b`, two-sided: with each
/// device's downtime share weighted by the hours it was observed, a group's mean is its
/// pooled share, and a device seen for ten minutes does not weigh as one seen for a month.
/// Units with a non-finite value or without a positive weight are left out.
pub fn compare_means(a: &[Weighted], b: &[Weighted], seed: u64) -> MeanComparison {
    let usable = |u: &&Weighted| u.value.is_finite() && u.weight.is_finite() && u.weight > 0.0;
    let a: Vec<Weighted> = a.iter().filter(usable).copied().collect();
    let b: Vec<Weighted> = b.iter().filter(usable).copied().collect();
    let totals = |units: &mut dyn Iterator<Item = &Weighted>| {
        units.fold((0.0, 0.0), |(weighted, weights), u| {
            (weighted + u.value * u.weight, weights + u.weight)
        })
    };
    let mean = |units: &[Weighted]| {
        let (weighted, weights) = totals(&mut units.iter());
        (!units.is_empty()).then(|| weighted / weights)
    };
    let (mean_a, mean_b) = (mean(&a), mean(&b));
    let difference = mean_a.zip(mean_b).map(|(ma, mb)| mb - ma);
    let mut comparison = MeanComparison {
        mean_a,
        mean_b,
        difference,
        p_value: None,
        permutations: 0,
        exact: false,
    };
    let Some(observed) = difference else {
        return comparison;
    };
    let units: Vec<Weighted> = a.iter().chain(&b).copied().collect();
    let scale = units.iter().fold(0.0_f64, |m, u| m.max(u.value.abs()));
    // Ties within rounding of the sums count as at least as extreme (relative to the values'
    // size: all zero gives p = 1, as it should).
    let at_least = observed.abs() - 1e-12 * scale;
    // Each group summed on its own, in the order `mean` summed it: a complement taken from
    // the totals loses a small group to cancellation, and the observed split must reproduce
    // the observed difference.
    let extreme = |in_b: &dyn Fn(usize) -> bool| {
        let group = |wanted: bool| {
            totals(
                &mut units
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| in_b(*i) == wanted)
                    .map(|(_, u)| u),
            )
        };
        let ((weighted_a, weights_a), (weighted_b, weights_b)) = (group(false), group(true));
        let difference = weighted_b / weights_b - weighted_a / weights_a;
        difference.abs() >= at_least
    };
    let test = permute(units.len(), b.len(), seed, &extreme);
    comparison.p_value = Some(test.p_value);
    comparison.permutations = test.permutations;
    comparison.exact = test.exact;
    comparison
}

/// Whether an assignment (`in_b(i)`: unit `i` is in the second group) is at least as extreme
/// as the observed one.
type Extreme<'a> = &'a dyn Fn(&dyn Fn(usize) -> bool) -> bool;

/// A permutation test's outcome.
struct Permuted {
    p_value: f64,
    permutations: u64,
    exact: bool,
}

/// The share of assignments of `k` of `n` units to the second group for which `extreme`
/// holds: every assignment when there are at most [`MAX_PERMUTATIONS`] (and `n` ≤ 63), else
/// that many seeded random ones with the observed assignment counted once more.
fn permute(n: usize, k: usize, seed: u64, extreme: Extreme<'_>) -> Permuted {
    let assignments = binomial(n as u64, k as u64);
    if n <= 63 && assignments.is_some_and(|count| count <= MAX_PERMUTATIONS) {
        // Every k-subset of the n units as a bit mask, in increasing order (Gosper's hack).
        let mut mask: u64 = (1 << k) - 1;
        let (mut count, mut hits) = (0_u64, 0_u64);
        while mask < (1 << n) {
            count += 1;
            hits += u64::from(extreme(&|i| mask >> i & 1 == 1));
            let lowest = mask & mask.wrapping_neg();
            let ripple = mask + lowest;
            mask = (((ripple ^ mask) >> 2) / lowest) | ripple;
        }
        Permuted {
            p_value: hits as f64 / count as f64,
            permutations: count,
            exact: true,
        }
    } else {
        // Random assignments (partial Fisher–Yates over xorshift64*); the observed one counts
        // once more, so the p-value is never 0.
        let mut state = seed | 1;
        let mut order: Vec<usize> = (0..n).collect();
        let mut in_b = vec![false; n];
        let mut hits = 0_u64;
        for _ in 0..MAX_PERMUTATIONS {
            for i in 0..k {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let draw = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
                let j = i + (draw % (n - i) as u64) as usize;
                order.swap(i, j);
            }
            in_b.iter_mut().for_each(|x| *x = false);
            order[..k].iter().for_each(|&i| in_b[i] = true);
            hits += u64::from(extreme(&|i| in_b[i]));
        }
        Permuted {
            p_value: (hits + 1) as f64 / (MAX_PERMUTATIONS + 1) as f64,
            permutations: MAX_PERMUTATIONS,
            exact: false,
        }
    }
}

fn totals<'a>(units: impl Iterator<Item = &'a Unit>) -> (u64, u64) {
    units.fold((0, 0), |(events, trials), u| {
        (events + u.events, trials + u.trials)
    })
}

/// n choose k, `None` past u64.
fn binomial(n: u64, k: u64) -> Option<u64> {
    let k = k.min(n - k.min(n));
    let mut result: u128 = 1;
    for i in 0..k {
        result = result * u128::from(n - i) / u128::from(i + 1);
        if result > u128::from(u64::MAX) {
            return None;
        }
    }
    u64::try_from(result).ok()
}

#[cfg(test)]
mod tests {
    use super::{MAX_PERMUTATIONS, Unit, Weighted, binomial, compare_means, compare_pooled_rates};

    fn units(counts: &[(u64, u64)]) -> Vec<Unit> {
        counts
            .iter()
            .map(|&(events, trials)| Unit { events, trials })
            .collect()
    }

    #[test]
    fn the_exact_p_value_is_the_share_of_assignments_as_extreme() {
        // Four devices against four: the challenger's all alert at 10 %, the champion's at
        // 1 %. Of the 70 ways to pick four devices, only these four and their complement are
        // as far apart: p = 2/70.
        let champion = units(&[(1, 100); 4]);
        let challenger = units(&[(10, 100); 4]);
        let c = compare_pooled_rates(&champion, &challenger, 1);
        assert_eq!((c.rate_a, c.rate_b), (Some(0.01), Some(0.1)));
        assert!((c.difference.unwrap() - 0.09).abs() < 1e-12);
        assert!(c.exact);
        assert_eq!(c.permutations, 70);
        assert!((c.p_value.unwrap() - 2.0 / 70.0).abs() < 1e-12, "{c:?}");
    }

    #[test]
    fn windows_do_not_count_as_devices() {
        // One device per arm, a million windows each: however far apart, two devices are two
        // assignments, and the test cannot tell the models from the devices.
        let c = compare_pooled_rates(
            &units(&[(10, 1_000_000)]),
            &units(&[(90_000, 1_000_000)]),
            1,
        );
        assert_eq!(c.p_value, Some(1.0));
        assert_eq!(c.permutations, 2);
    }

    #[test]
    fn equal_rates_are_not_told_apart_and_empty_arms_are_not_tested() {
        let c = compare_pooled_rates(&units(&[(5, 50), (5, 50)]), &units(&[(5, 50), (5, 50)]), 1);
        assert_eq!(c.p_value, Some(1.0));
        let none = compare_pooled_rates(&units(&[(0, 0)]), &units(&[(3, 30)]), 1);
        assert_eq!((none.rate_a, none.p_value), (None, None));
    }

    fn unweighted(values: &[f64]) -> Vec<Weighted> {
        values
            .iter()
            .map(|&value| Weighted { value, weight: 1.0 })
            .collect()
    }

    #[test]
    fn means_of_one_value_per_device_are_compared_over_assignments() {
        // Every one of the 35 ways to pick four of seven devices, weighed by brute force in
        // Python: 2 are as far apart as the observed split.
        let c = compare_means(
            &unweighted(&[3.1, 4.7, 2.2]),
            &unweighted(&[5.9, 6.3, 4.8, 7.0]),
            1,
        );
        assert!((c.difference.unwrap() - 8.0 / 3.0).abs() < 1e-12, "{c:?}");
        assert!(c.exact);
        assert_eq!(c.permutations, 35);
        assert!((c.p_value.unwrap() - 2.0 / 35.0).abs() < 1e-12, "{c:?}");
        // Four against four, completely apart: p = 2/70, as for rates.
        let c = compare_means(
            &unweighted(&[5.0, 6.0, 7.0, 8.0]),
            &unweighted(&[1.0, 2.0, 3.0, 4.0]),
            1,
        );
        assert_eq!((c.mean_a, c.mean_b), (Some(6.5), Some(2.5)));
        assert!((c.p_value.unwrap() - 2.0 / 70.0).abs() < 1e-12, "{c:?}");
        // Equal arms: p = 1; an empty arm, only non-finite values or no weight: no test.
        let same = compare_means(&unweighted(&[1.0, 2.0]), &unweighted(&[2.0, 1.0]), 1);
        assert_eq!(same.p_value, Some(1.0));
        let none = compare_means(&unweighted(&[f64::NAN]), &unweighted(&[1.0]), 1);
        assert_eq!((none.mean_a, none.p_value), (None, None));
        let weightless = [Weighted {
            value: 3.0,
            weight: 0.0,
        }];
        assert_eq!(
            compare_means(&weightless, &unweighted(&[1.0]), 1).mean_a,
            None
        );
        // Values far below 1 are still told apart (the tie tolerance is relative).
        let tiny = compare_means(
            &unweighted(&[1e-14, 2e-14, 3e-14]),
            &unweighted(&[7e-14, 8e-14, 9e-14]),
            1,
        );
        assert!((tiny.p_value.unwrap() - 0.1).abs() < 1e-12, "{tiny:?}");
        // Many devices: seeded draws, reproducible.
        let (low, high): (Vec<f64>, Vec<f64>) = (0..40)
            .map(|i| (f64::from(i % 5), f64::from(i % 5) + 3.0))
            .unzip();
        let c = compare_means(&unweighted(&low), &unweighted(&high), 9);
        assert!(!c.exact);
        assert_eq!(c.p_value, Some(1.0 / (MAX_PERMUTATIONS + 1) as f64));
        assert_eq!(compare_means(&unweighted(&low), &unweighted(&high), 9), c);
    }

    #[test]
    fn a_weighted_mean_is_the_groups_pooled_value() {
        // Downtime shares weighted by observed hours: 10 % over 90 h and 100 % over 10 h
        // pool to 19 %, not the 55 % an unweighted mean gives the ten-hour device.
        let champion = [
            Weighted {
                value: 10.0,
                weight: 90.0,
            },
            Weighted {
                value: 100.0,
                weight: 10.0,
            },
        ];
        let challenger = [
            Weighted {
                value: 5.0,
                weight: 50.0,
            },
            Weighted {
                value: 15.0,
                weight: 50.0,
            },
        ];
        let c = compare_means(&champion, &challenger, 1);
        assert!((c.mean_a.unwrap() - 19.0).abs() < 1e-12, "{c:?}");
        assert!((c.mean_b.unwrap() - 10.0).abs() < 1e-12, "{c:?}");
        // The p-value is the share of the 6 assignments as far apart, counted by brute force.
        let units = [champion[0], champion[1], challenger[0], challenger[1]];
        let observed = (c.difference.unwrap()).abs();
        let mut hits = 0;
        let mut count = 0;
        for i in 0..4 {
            for j in i + 1..4 {
                let pooled = |pick: &dyn Fn(usize) -> bool| {
                    let (w, s) = (0..4).filter(|&k| pick(k)).fold((0.0, 0.0), |(w, s), k| {
                        (w + units[k].weight, s + units[k].value * units[k].weight)
                    });
                    s / w
                };
                let b = pooled(&|k| k == i || k == j);
                let a = pooled(&|k| k != i && k != j);
                count += 1;
                hits += usize::from((b - a).abs() >= observed - 1e-9);
            }
        }
        assert_eq!(c.permutations, count);
        assert!(
            (c.p_value.unwrap() - hits as f64 / count as f64).abs() < 1e-12,
            "{c:?}"
        );
        // Three minutes against months: the observed split still counts (a complement taken
        // from the totals lost the small group to cancellation and gave p = 0).
        let short = [Weighted {
            value: 2.218246899080989,
            weight: 0.01545191232812176,
        }];
        let long: Vec<Weighted> = [
            (67.60203094873768, 792.6611160772514),
            (25.112227818347023, 691.2624259272759),
            (59.267187566648914, 664.0050771496013),
            (36.39550893399569, 662.5341322393822),
            (36.915397527695404, 719.1243011715073),
            (30.040397336558932, 675.4320682657834),
        ]
        .iter()
        .map(|&(value, weight)| Weighted { value, weight })
        .collect();
        let c = compare_means(&short, &long, 1);
        assert!(c.p_value.unwrap() >= 1.0 / 7.0, "{c:?}");
    }

    #[test]
    fn many_devices_are_sampled_with_a_seed() {
        // 40 against 40 devices: C(80, 40) assignments, so random ones; a clear difference.
        let champion = units(&[(2, 100); 40]);
        let challenger = units(&[(6, 100); 40]);
        let c = compare_pooled_rates(&champion, &challenger, 7);
        assert!(!c.exact);
        assert_eq!(c.permutations, MAX_PERMUTATIONS);
        assert_eq!(c.p_value, Some(1.0 / (MAX_PERMUTATIONS + 1) as f64));
        assert_eq!(compare_pooled_rates(&champion, &challenger, 7), c);
        // Mixed devices, no difference in the arms' rates: far from significant.
        let mixed: Vec<Unit> = (0..40)
            .map(|i| Unit {
                events: i % 7,
                trials: 100,
            })
            .collect();
        let c = compare_pooled_rates(&mixed, &mixed, 7);
        assert!(c.p_value.unwrap() > 0.5, "{c:?}");
        assert_eq!((binomial(8, 4), binomial(80, 40)), (Some(70), None));
    }
}
