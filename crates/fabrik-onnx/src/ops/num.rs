//! Numeric helpers shared by the kernels: the [`Real`] trait that lets one generic kernel body
//! serve `f32` and `f64`, [`erf`] (the standard library has none), and the axis and
//! integer-list readers used by operators whose axes are attributes in old opsets and inputs
//! in new ones. No kernel lives here.

use std::ops::{Add, Div, Mul, Neg, Sub};

use super::KResult;
use crate::tensor::{Tensor, TensorData};

/// The float operations kernels need, implemented for `f32` and `f64`.
pub(crate) trait Real:
    Copy
    + PartialOrd
    + std::fmt::Debug
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + Send
    + Sync
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const INFINITY: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn abs(self) -> Self;
    fn is_nan(self) -> bool;
}

macro_rules! impl_real {
    ($t:ty) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const INFINITY: Self = <$t>::INFINITY;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                f64::from(self)
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}

impl_real!(f32);
impl_real!(f64);

/// The error function: the Maclaurin series below |x| = 3 (where it converges in at most ~60
/// terms and cancellation costs under 4 of 16 digits: ~1e-13 absolute), `1 - erfc(x)` above it
/// with the Chebyshev fit of Numerical Recipes (`erfc` relative error < 1.2e-7, so absolute
/// error < 3e-12 there), and ±1 beyond |x| = 6 where `erfc` is below 2e-17. Pipelines run in
/// f32 (7 digits), so every range is far inside what they can see.
pub(crate) fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let z = x.abs();
    if z < 3.0 {
        // erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1))
        let x2 = x * x;
        let mut power = x; // (-1)^n x^(2n+1) / n!
        let mut sum = x;
        for n in 1..200 {
            let n = f64::from(n);
            power *= -x2 / n;
            let term = power / (2.0 * n + 1.0);
            sum += term;
            if term.abs() <= 1e-17 * sum.abs() {
                break;
            }
        }
        return sum * std::f64::consts::FRAC_2_SQRT_PI;
    }
    if z >= 6.0 {
        return x.signum();
    }
    let t = 1.0 / (1.0 + 0.5 * z);
    let erfc = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    (1.0 - erfc).copysign(x)
}

/// The integers of an axes/starts/ends-style input (int64, or int32 stored as int64 here).
pub(crate) fn ints_of(t: &Tensor, what: &str) -> KResult<Vec<i64>> {
    match t.data() {
        TensorData::I64(v) => Ok(v.clone()),
        other => Err(format!(
            "{what} must be int64, got {}",
            other.element_type()
        )),
    }
}

/// Resolves possibly negative `axes` against `rank`, rejecting out-of-range and repeated axes.
pub(crate) fn resolve_axes(axes: &[i64], rank: usize) -> KResult<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let r = rank as i64;
        let v = if a < 0 { a + r } else { a };
        if !(0..r).contains(&v) {
            return Err(format!("axis {a} out of range for rank {rank}"));
        }
        let v = v as usize;
        if out.contains(&v) {
            return Err(format!("axis {a} is repeated in {axes:?}"));
        }
        out.push(v);
    }
    Ok(out)
}

/// Row-major element strides of `shape`.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Copies the elements of `src` at `base + Σ index[d] * steps[d]` for every index of `shape`,
/// in row-major order: Transpose (permuted strides) and Slice (offset, scaled or negative
/// strides) are both this walk.
pub(crate) fn strided_copy<T: Clone>(
    src: &[T],
    base: usize,
    shape: &[usize],
    steps: &[isize],
) -> Vec<T> {
    let total: usize = shape.iter().product();
    let mut out = Vec::with_capacity(total);
    if total == 0 {
        return out;
    }
    let r = shape.len();
    if r == 0 {
        out.push(src[base].clone());
        return out;
    }
    let mut counter = vec![0usize; r];
    let mut pos = base as isize;
    loop {
        let inner = shape[r - 1];
        let step = steps[r - 1];
        let mut p = pos;
        for _ in 0..inner {
            out.push(src[p as usize].clone());
            p += step;
        }
        // Advance the odometer over the outer dimensions.
        let mut d = r - 1;
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            counter[d] += 1;
            pos += steps[d];
            if counter[d] < shape[d] {
                break;
            }
            pos -= steps[d] * shape[d] as isize;
            counter[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // Values from scipy.special.erf.
        for (x, want) in [
            (0.0, 0.0),
            (1e-4, 1.128_379_163_334_248_5e-4),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (-2.0, -0.995_322_265_018_952_7),
            (2.9, 0.999_958_902_121_900_5),
            (3.5, 0.999_999_256_901_627_7),
            (7.0, 1.0),
        ] {
            let got = erf(x);
            assert!((got - want).abs() < 1e-11, "erf({x}) = {got}, want {want}");
        }
        assert!(erf(f64::NAN).is_nan());
    }

    #[test]
    fn strided_walks() {
        let src: Vec<i32> = (0..6).collect(); // [2, 3]
        // Transpose to [3, 2].
        assert_eq!(
            strided_copy(&src, 0, &[3, 2], &[1, 3]),
            vec![0, 3, 1, 4, 2, 5]
        );
        // Reverse the columns of row 1.
        assert_eq!(strided_copy(&src, 5, &[1, 3], &[3, -1]), vec![5, 4, 3]);
        assert_eq!(strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(resolve_axes(&[-1, 0], 3).expect("test data"), vec![2, 0]);
        assert!(resolve_axes(&[0, -3], 3).is_err());
    }
}
