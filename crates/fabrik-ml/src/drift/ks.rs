//! The two-sample Kolmogorov–Smirnov test, two-sided, as SciPy's `ks_2samp(method="auto")`
//! computes it: the exact distribution of the statistic (Hodges' lattice-path counts, SciPy's
//! recursions) up to 10,000 values per sample, so its p-values are SciPy's to rounding.

/// Above this many values in either sample SciPy's `auto` leaves the exact distribution.
pub const EXACT_UP_TO: usize = 10_000;

/// The outcome of [`ks_2samp`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KsTest {
    /// The largest distance between the two empirical CDFs.
    pub statistic: f64,
    /// Two-sided p-value.
    pub p_value: f64,
    /// Whether the p-value is the exact distribution's (else Kolmogorov's limit, which SciPy
    /// refines; only beyond [`EXACT_UP_TO`] values).
    pub exact: bool,
}

/// The two-sided two-sample KS test of `a` and `b` (both non-empty, finite values).
pub fn ks_2samp(a: &[f64], b: &[f64]) -> KsTest {
    let mut first = a.to_vec();
    let mut second = b.to_vec();
    first.sort_by(f64::total_cmp);
    second.sort_by(f64::total_cmp);
    let (n1, n2) = (first.len(), second.len());
    // SciPy evaluates both CDFs at every value of both samples (searchsorted, right side).
    let cdf = |sorted: &[f64], value: f64| sorted.partition_point(|x| *x <= value);
    let (mut lowest, mut highest) = (f64::INFINITY, f64::NEG_INFINITY);
    for &value in first.iter().chain(&second) {
        let difference =
            cdf(&first, value) as f64 / n1 as f64 - cdf(&second, value) as f64 / n2 as f64;
        lowest = lowest.min(difference);
        highest = highest.max(difference);
    }
    let below = (-lowest).clamp(0.0, 1.0);
    let statistic = if below > highest { below } else { highest };
    if n1.max(n2) <= EXACT_UP_TO
        && let Some((statistic, p_value)) = exact(n1 as u64, n2 as u64, statistic)
    {
        return KsTest {
            statistic,
            p_value,
            exact: true,
        };
    }
    let (m, n) = (n1.max(n2) as f64, n1.min(n2) as f64);
    let effective = m * n / (m + n);
    KsTest {
        statistic,
        p_value: kolmogorov_survival(effective.sqrt() * statistic).clamp(0.0, 1.0),
        exact: false,
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// SciPy's `_attempt_exact_2kssamp`, two-sided: the statistic snapped to the lattice and its
/// exact p-value, or `None` when the recursion leaves [0, 1].
fn exact(n1: u64, n2: u64, statistic: f64) -> Option<(f64, f64)> {
    let g = gcd(n1, n2);
    let lcm = (n1 / g) * n2;
    let h = (statistic * lcm as f64).round_ties_even() as u64;
    let statistic = h as f64 / lcm as f64;
    if h == 0 {
        return Some((statistic, 1.0));
    }
    let p = if n1 == n2 {
        prob_outside_square(n1, h)
    } else {
        outer_prob_inside(n1, n2, g, h)
    };
    (0.0..=1.0).contains(&p).then_some((statistic, p))
}

/// P(D ≥ h/n) for two samples of n: SciPy's Horner-like alternating sum.
fn prob_outside_square(n: u64, h: u64) -> f64 {
    let (n, h) = (n as i64, h as i64);
    let mut p = 0.0;
    let mut k = n / h;
    while k >= 0 {
        let mut term = 1.0;
        for j in 0..h {
            term = (n - k * h - j) as f64 * term / (n + k * h + j + 1) as f64;
        }
        p = term * (1.0 - p);
        k -= 1;
    }
    2.0 * p
}

/// The share of lattice paths from (0, 0) to (m, n) that leave |x/m − y/n| < h/lcm: SciPy's
/// `_compute_outer_prob_inside_method` (Viehmann's recursion for 1 − p), one sliding column.
fn outer_prob_inside(m: u64, n: u64, g: u64, h: u64) -> f64 {
    let (m, n) = if m < n { (n, m) } else { (m, n) };
    let (m, n, g, h) = (m as i64, n as i64, g as i64, h as i64);
    let (mg, ng) = (m / g, n / g);
    let ceil_div = |a: i64, b: i64| -((-a).div_euclid(b));
    let mut minj: i64 = 0;
    let mut maxj: i64 = ceil_div(h, mg).min(n + 1);
    let mut current_length = maxj - minj;
    let length = (2 * maxj + 2).min(n + 1) as usize;
    let mut column = vec![1.0_f64; length];
    for value in column.iter_mut().take(maxj as usize) {
        *value = 0.0;
    }
    for i in 1..=m {
        let (last_minj, last_length) = (minj, current_length);
        minj = ((ng * i - h).div_euclid(mg) + 1).max(0).min(n);
        maxj = ceil_div(ng * i + h, mg).min(n + 1);
        if maxj <= minj {
            return 1.0;
        }
        let mut value = if minj == 0 { 0.0 } else { 1.0 };
        for jj in 0..(maxj - minj) {
            let j = jj + minj;
            let carried = column[(jj + minj - last_minj) as usize];
            value = (carried * i as f64 + value * j as f64) / (i + j) as f64;
            column[jj as usize] = value;
        }
        current_length = maxj - minj;
        if last_length > current_length {
            let from = (maxj - minj) as usize;
            let to = (from + (last_length - current_length) as usize).min(column.len());
            for value in &mut column[from..to] {
                *value = 1.0;
            }
        }
    }
    column[(maxj - minj - 1) as usize]
}

/// Kolmogorov's limiting survival function Q(λ) = 2 Σ (−1)^{k−1} e^{−2k²λ²}.
fn kolmogorov_survival(lambda: f64) -> f64 {
    if lambda <= 0.0 {
        return 1.0;
    }
    if lambda < 0.2 {
        // The alternating series converges slowly here, and Q is 1 to double precision.
        return 1.0;
    }
    let mut sum = 0.0;
    let mut sign = 1.0;
    for k in 1..=100 {
        let k = f64::from(k);
        let term = (-2.0 * k * k * lambda * lambda).exp();
        sum += sign * term;
        if term < 1e-18 {
            break;
        }
        sign = -sign;
    }
    2.0 * sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scipy.stats.ks_2samp([1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8]) (SciPy 1.17.1).
    #[test]
    fn small_samples_match_scipy() {
        let result = ks_2samp(&[1.0, 2.0, 3.0, 4.0, 5.0], &[3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        assert_eq!(result.statistic, 0.5);
        assert!(result.exact);
        assert!(
            (result.p_value - 0.35714285714285715).abs() < 1e-12,
            "{result:?}"
        );
        let same = ks_2samp(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]);
        assert_eq!((same.statistic, same.p_value), (0.0, 1.0));
        // Equal sizes take the square's alternating sum.
        let square = ks_2samp(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0]);
        assert!(
            (square.p_value - 0.028571428571428577).abs() < 1e-12,
            "{square:?}"
        );
    }

    fn close(got: f64, want: f64) -> bool {
        (got - want).abs() <= 1e-9 * want.abs()
    }

    /// Ties and mid-range statistics, on both recursions (equal sizes are a drift check's
    /// default: as many windows as the model learnt from); SciPy 1.17.1's values.
    #[test]
    fn ties_and_mid_range_statistics_match_scipy() {
        let a = [0.1, 0.5, 0.5, 0.9, 1.3, 1.7, 2.0, 2.2, 2.2, 3.1];
        let b = [0.4, 0.5, 1.0, 1.1, 1.9, 2.5, 2.6, 3.3, 3.5, 4.0];
        let result = ks_2samp(&a, &b);
        assert_eq!(result.statistic, 0.4);
        assert!(close(result.p_value, 0.41752365281777043), "{result:?}");
        let b = [0.4, 0.5, 1.0, 1.1, 1.9, 2.5, 2.6, 3.3, 3.5, 4.0, 0.5, 2.0];
        let result = ks_2samp(&a[..7], &b);
        assert!(close(result.statistic, 0.44047619047619047), "{result:?}");
        assert!(close(result.p_value, 0.2653211082003652), "{result:?}");
        // Many tied values: x = (37 i mod 101)/10, y = (53 i mod 97)/10 + shift.
        let x: Vec<f64> = (0..300).map(|i| f64::from(i * 37 % 101) / 10.0).collect();
        let y = |n: i32, shift: f64| -> Vec<f64> {
            (0..n)
                .map(|i| f64::from(i * 53 % 97) / 10.0 + shift)
                .collect()
        };
        let unequal = ks_2samp(&x, &y(250, 1.0));
        assert!(close(unequal.statistic, 0.1), "{unequal:?}");
        assert!(close(unequal.p_value, 0.12195418457928303), "{unequal:?}");
        let equal = ks_2samp(&x, &y(300, 0.8));
        assert!(close(equal.statistic, 0.08666666666666667), "{equal:?}");
        assert!(close(equal.p_value, 0.21005749381264038), "{equal:?}");
    }
}
