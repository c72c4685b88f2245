//! Floating-point building blocks whose exact operation order is part of a detector's
//! specification: Python's `min`/`max` semantics, numpy's pairwise summation, decimal rounding.
//!
//! The reference implementations of RART and DBZ are Python/numpy. Reproducing their scores bit
//! for bit needs the same rounding at every step, so the few places where Rust's obvious
//! expression would round differently go through these helpers instead.

/// Python's `max(a, b)`: `a` unless `b` is strictly greater. Differs from `f64::max` only for
/// signed zeros and NaN, which is exactly where bit-exactness with the reference needs it.
#[inline]
pub(crate) fn py_max(a: f64, b: f64) -> f64 {
    if b > a { b } else { a }
}

/// Python's `min(a, b)`: `a` unless `b` is strictly smaller.
#[inline]
pub(crate) fn py_min(a: f64, b: f64) -> f64 {
    if b < a { b } else { a }
}

/// numpy's `add.reduce` of a contiguous float64 slice of at most 128 elements: below 8 elements
/// a plain loop, otherwise 8 interleaved accumulators combined as a pairwise tree, then the tail.
/// numpy switches to recursive halving above 128 elements; no caller needs that.
#[inline]
pub(crate) fn numpy_sum(values: &[f64]) -> f64 {
    debug_assert!(
        values.len() <= 128,
        "numpy_sum emulates numpy's small-block path only"
    );
    if values.len() < 8 {
        return values.iter().fold(0.0, |acc, v| acc + v);
    }
    let mut lanes = [0.0_f64; 8];
    lanes.copy_from_slice(&values[..8]);
    let whole_blocks = values.len() - values.len() % 8;
    for block in values[8..whole_blocks].chunks_exact(8) {
        for (lane, value) in lanes.iter_mut().zip(block) {
            *lane += value;
        }
    }
    let mut sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    for value in &values[whole_blocks..] {
        sum += value;
    }
    sum
}

/// numpy's `add.reduce` of a contiguous float64 slice of any length: pairwise halving (at a
/// multiple of 8) down to blocks of at most 128, each summed as [`numpy_sum`] does.
pub(crate) fn numpy_sum_any(values: &[f64]) -> f64 {
    if values.len() <= 128 {
        return numpy_sum(values);
    }
    let mut half = values.len() / 2;
    half -= half % 8;
    numpy_sum_any(&values[..half]) + numpy_sum_any(&values[half..])
}

/// Python's `round(x, digits)`: the decimal value with `digits` places nearest to the exact
/// binary value of `x`, ties to even, read back as f64. Rust's fixed-precision formatting rounds
/// the exact value the same way, so formatting and parsing reproduces it exactly.
pub(crate) fn round_to_decimals(x: f64, digits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.digits$}").parse().unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_min_max_keep_the_first_argument_on_ties() {
        assert!(py_max(0.0, -0.0).is_sign_positive());
        assert!(py_max(-0.0, 0.0).is_sign_negative());
        assert!(py_min(-0.0, 0.0).is_sign_negative());
        assert_eq!(py_max(1.0, 2.0), 2.0);
        assert_eq!(py_min(1.0, 2.0), 1.0);
    }

    #[test]
    fn numpy_sum_uses_eight_lanes() {
        // 1e16 + 1 + ... loses the ones sequentially but not when they share a lane.
        let mut values = vec![1.0; 16];
        values[0] = 1e16;
        let sequential: f64 = values.iter().sum();
        assert_eq!(sequential, 1e16);
        // Lane 0 holds 1e16 + 1 = 1e16; the seven other lanes hold 2 each, summed before
        // meeting lane 0 in the tree: ((1e16 + 2) + 4) + 8 = 1e16 + 14.
        assert_eq!(numpy_sum(&values), 1e16 + 14.0);
        assert_eq!(numpy_sum(&[1.0, 2.0, 3.0]), 6.0);
    }

    #[test]
    fn rounding_matches_python_round() {
        // Expected values printed by CPython's round(x, 6).
        assert_eq!(round_to_decimals(0.0078125, 6), 0.007812);
        assert_eq!(round_to_decimals(0.0234375, 6), 0.023438);
        assert_eq!(round_to_decimals(1.0000005, 6), 1.000001);
        assert_eq!(round_to_decimals(0.1234565, 6), 0.123456);
        assert_eq!(round_to_decimals(0.5000005, 6), 0.5);
    }
}
