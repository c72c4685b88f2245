//! The drift measures that compare the two samples' histograms or distributions, computed the
//! way Evidently's legacy stat tests compute them on top of NumPy and SciPy: normed
//! Wasserstein, PSI, Jensen–Shannon, Kullback–Leibler, Hellinger, chi-square and the
//! two-proportion z-test, with their bins (Sturges over both samples, or one per value) and
//! their fill of empty bins.

use crate::numeric::numpy_sum_any;
use crate::special::{normal_cdf, regularized_upper_gamma};

/// Values as pandas' `unique` counts them (finite values only; −0 equals 0), ascending.
pub(crate) fn unique_sorted(values: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut unique: Vec<f64> = values.into_iter().map(|v| v + 0.0).collect();
    unique.sort_by(f64::total_cmp);
    unique.dedup();
    unique
}

/// How many of `sorted` equal `value`.
fn count_of(sorted: &[f64], value: f64) -> usize {
    sorted.partition_point(|x| *x <= value) - sorted.partition_point(|x| *x < value)
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut sorted: Vec<f64> = values.iter().map(|v| v + 0.0).collect();
    sorted.sort_by(f64::total_cmp);
    sorted
}

/// `numpy.histogram_bin_edges(values, bins="sturges")` for `count` finite values spanning
/// [`low`, `high`].
fn sturges_edges(low: f64, high: f64, count: usize) -> Vec<f64> {
    let range = high - low;
    let width = range / ((count as f64).log2() + 1.0);
    let (first, last, bins) = if range == 0.0 {
        (low - 0.5, high + 0.5, 1)
    } else {
        (low, high, (range / width).ceil() as usize)
    };
    // numpy.linspace(first, last, bins + 1): i × step + first, the last edge exactly `last`.
    let step = (last - first) / bins as f64;
    let mut edges: Vec<f64> = (0..=bins).map(|i| i as f64 * step + first).collect();
    if let Some(end) = edges.last_mut() {
        *end = last;
    }
    edges
}

/// `numpy.histogram(values, edges)` counts: [e_i, e_{i+1}) and the last bin closed; values
/// outside the edges are not counted.
fn histogram(sorted: &[f64], edges: &[f64]) -> Vec<usize> {
    let below = |edge: f64| sorted.partition_point(|x| *x < edge);
    let mut cumulative: Vec<usize> = edges[..edges.len() - 1]
        .iter()
        .map(|&edge| below(edge))
        .collect();
    let last = edges[edges.len() - 1];
    cumulative.push(sorted.partition_point(|x| *x <= last));
    cumulative
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .collect()
}

/// Evidently's `get_binned_data`: the share of each sample per bin — Sturges bins over both
/// samples when the reference has more than 20 distinct values, else one bin per value of
/// either — with empty bins filled (`fill_zeroes`) so that logarithms stay finite.
pub(crate) fn binned(
    reference: &[f64],
    current: &[f64],
    fill_zeroes: bool,
) -> (Vec<f64>, Vec<f64>) {
    let (reference, current) = (sorted(reference), sorted(current));
    let (n_reference, n_current) = (reference.len() as f64, current.len() as f64);
    let distinct_in_reference = unique_sorted(reference.iter().copied()).len();
    let (mut reference_shares, mut current_shares): (Vec<f64>, Vec<f64>) =
        if distinct_in_reference > 20 {
            let low = reference[0].min(current[0]);
            let high = reference[reference.len() - 1].max(current[current.len() - 1]);
            let edges = sturges_edges(low, high, reference.len() + current.len());
            (
                histogram(&reference, &edges)
                    .into_iter()
                    .map(|c| c as f64 / n_reference)
                    .collect(),
                histogram(&current, &edges)
                    .into_iter()
                    .map(|c| c as f64 / n_current)
                    .collect(),
            )
        } else {
            let keys = unique_sorted(reference.iter().chain(&current).copied());
            (
                keys.iter()
                    .map(|&k| count_of(&reference, k) as f64 / n_reference)
                    .collect(),
                keys.iter()
                    .map(|&k| count_of(&current, k) as f64 / n_current)
                    .collect(),
            )
        };
    if fill_zeroes {
        fill_empty(&mut reference_shares);
        fill_empty(&mut current_shares);
    }
    (reference_shares, current_shares)
}

/// Evidently's fill: empty bins get a millionth of the smallest share if that is at most
/// 1e-4, else 1e-4.
fn fill_empty(shares: &mut [f64]) {
    let smallest = shares
        .iter()
        .copied()
        .filter(|s| *s != 0.0)
        .fold(f64::INFINITY, f64::min);
    if !smallest.is_finite() {
        return;
    }
    let fill = if smallest <= 0.0001 {
        smallest / 1e6
    } else {
        0.0001
    };
    for share in shares.iter_mut().filter(|s| **s == 0.0) {
        *share = fill;
    }
}

/// SciPy's `rel_entr(x, y)`.
fn relative_entropy(x: f64, y: f64) -> f64 {
    if x > 0.0 && y > 0.0 {
        x * (x / y).ln()
    } else if x == 0.0 && y >= 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

fn normalised(values: &[f64]) -> Vec<f64> {
    let total = numpy_sum_any(values);
    values.iter().map(|v| v / total).collect()
}

/// The population stability index Σ (r − c) ln(r/c) over filled bins.
pub(crate) fn psi(reference: &[f64], current: &[f64]) -> f64 {
    let (r, c) = binned(reference, current, true);
    let terms: Vec<f64> = r
        .iter()
        .zip(&c)
        .map(|(r, c)| (r - c) * (r / c).ln())
        .collect();
    numpy_sum_any(&terms)
}

/// SciPy's `jensenshannon` distance (natural log) of the unfilled bins.
pub(crate) fn jensen_shannon(reference: &[f64], current: &[f64]) -> f64 {
    let (r, c) = binned(reference, current, false);
    let (p, q) = (normalised(&r), normalised(&c));
    let middle: Vec<f64> = p.iter().zip(&q).map(|(p, q)| (p + q) / 2.0).collect();
    let left: Vec<f64> = p
        .iter()
        .zip(&middle)
        .map(|(p, m)| relative_entropy(*p, *m))
        .collect();
    let right: Vec<f64> = q
        .iter()
        .zip(&middle)
        .map(|(q, m)| relative_entropy(*q, *m))
        .collect();
    ((numpy_sum_any(&left) + numpy_sum_any(&right)) / 2.0).sqrt()
}

/// SciPy's `entropy(reference, current)`: the Kullback–Leibler divergence of the filled bins.
pub(crate) fn kl_divergence(reference: &[f64], current: &[f64]) -> f64 {
    let (r, c) = binned(reference, current, true);
    let (p, q) = (normalised(&r), normalised(&c));
    let terms: Vec<f64> = p
        .iter()
        .zip(&q)
        .map(|(p, q)| relative_entropy(*p, *q))
        .collect();
    numpy_sum_any(&terms)
}

/// Evidently's numerical Hellinger distance: densities over Sturges bins of the distinct
/// values, √(1 − Σ √(p·q)·width).
pub(crate) fn hellinger(reference: &[f64], current: &[f64]) -> f64 {
    let keys = unique_sorted(reference.iter().chain(current).copied());
    let edges = sturges_edges(keys[0], keys[keys.len() - 1], keys.len());
    let widths: Vec<f64> = edges.windows(2).map(|pair| pair[1] - pair[0]).collect();
    let density = |values: &[f64]| -> Vec<f64> {
        let counts = histogram(&sorted(values), &edges);
        let total: usize = counts.iter().sum();
        counts
            .iter()
            .zip(&widths)
            .map(|(&count, width)| count as f64 / width / total as f64)
            .collect()
    };
    let (p, q) = (density(reference), density(current));
    let bin_width = (edges[edges.len() - 1] - edges[0]) / (edges.len() - 1) as f64;
    let mut overlap = 0.0;
    for (p, q) in p.iter().zip(&q) {
        overlap += (p * q).sqrt() * bin_width;
    }
    (1.0 - overlap.clamp(0.0, 1.0)).sqrt()
}

/// SciPy's `wasserstein_distance` divided by the reference's standard deviation (at least
/// 0.001), as Evidently norms it.
pub(crate) fn wasserstein_normed(reference: &[f64], current: &[f64]) -> f64 {
    let (u, v) = (sorted(reference), sorted(current));
    let mut all: Vec<f64> = u.iter().chain(&v).copied().collect();
    all.sort_by(f64::total_cmp);
    let terms: Vec<f64> = all
        .windows(2)
        .map(|pair| {
            let at = pair[0];
            let u_cdf = u.partition_point(|x| *x <= at) as f64 / u.len() as f64;
            let v_cdf = v.partition_point(|x| *x <= at) as f64 / v.len() as f64;
            (u_cdf - v_cdf).abs() * (pair[1] - pair[0])
        })
        .collect();
    numpy_sum_any(&terms) / population_std(reference).max(0.001)
}

/// `numpy.std` (ddof 0).
fn population_std(values: &[f64]) -> f64 {
    let mean = numpy_sum_any(values) / values.len() as f64;
    let squares: Vec<f64> = values.iter().map(|v| (v - mean) * (v - mean)).collect();
    (numpy_sum_any(&squares) / values.len() as f64).sqrt()
}

/// Evidently's chi-square test: the current counts per value against the reference's scaled
/// to the current size; the p-value.
pub(crate) fn chi_square(reference: &[f64], current: &[f64]) -> f64 {
    let (reference, current) = (sorted(reference), sorted(current));
    let keys = unique_sorted(reference.iter().chain(&current).copied());
    let scale = current.len() as f64 / reference.len() as f64;
    let terms: Vec<f64> = keys
        .iter()
        .map(|&key| {
            let expected = count_of(&reference, key) as f64 * scale;
            let observed = count_of(&current, key) as f64;
            (observed - expected) * (observed - expected) / expected
        })
        .collect();
    let statistic = numpy_sum_any(&terms);
    let freedom = keys.len() as f64 - 1.0;
    if freedom <= 0.0 {
        return 1.0;
    }
    regularized_upper_gamma(freedom / 2.0, statistic / 2.0)
}

/// Evidently's two-proportion z-test of "not the smallest value", two-sided: 1 when both
/// samples hold one and the same value.
pub(crate) fn z_test(reference: &[f64], current: &[f64]) -> f64 {
    let keys = unique_sorted(reference.iter().chain(current).copied());
    if keys.len() == 1 {
        return 1.0;
    }
    let smallest = keys[0];
    let share = |values: &[f64]| {
        values.iter().filter(|v| **v + 0.0 != smallest).count() as f64 / values.len() as f64
    };
    let (n1, n2) = (reference.len() as f64, current.len() as f64);
    let (p1, p2) = (share(reference), share(current));
    let pooled = (p1 * n1 + p2 * n2) / (n1 + n2);
    let z = (p1 - p2) / (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    2.0 * (1.0 - normal_cdf(z.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sturges_edges_and_histogram_follow_numpy() {
        // numpy.histogram_bin_edges([0, 1, 2, 3, 10], "sturges") → 4 bins of 2.5.
        let edges = sturges_edges(0.0, 10.0, 5);
        assert_eq!(edges, vec![0.0, 2.5, 5.0, 7.5, 10.0]);
        // The last bin is closed; values outside are not counted.
        assert_eq!(
            histogram(&[0.0, 1.0, 2.5, 10.0, 11.0], &edges),
            vec![2, 1, 0, 1]
        );
        // One value: a unit-wide bin around it.
        assert_eq!(sturges_edges(3.0, 3.0, 4), vec![2.5, 3.5]);
    }

    #[test]
    fn empty_bins_are_filled_as_evidently_fills_them() {
        let mut shares = vec![0.5, 0.0, 0.5];
        fill_empty(&mut shares);
        assert_eq!(shares, vec![0.5, 0.0001, 0.5]);
        let mut tiny = vec![0.00005, 0.0, 0.99995];
        fill_empty(&mut tiny);
        assert_eq!(tiny[1], 0.00005 / 1e6);
    }
}
