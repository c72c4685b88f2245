//! Score post-transforms of the ONNX-ML tree ensembles (`post_transform`: NONE, LOGISTIC,
//! SOFTMAX, SOFTMAX_ZERO, PROBIT), with onnxruntime's `f32` formulas (`ml_common.h`):
//! sign-symmetric logistic, Winitzki's erf⁻¹ approximation for probit, max-shifted softmax.

use crate::ops::KResult;

/// `post_transform`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PostTransform {
    /// Raw scores.
    None,
    /// `1 / (1 + exp(-x))`.
    Logistic,
    /// Softmax over the classes or targets.
    Softmax,
    /// Softmax that leaves (near-)zero scores at zero.
    SoftmaxZero,
    /// `sqrt(2) * erfinv(2x - 1)`.
    Probit,
}

impl PostTransform {
    /// Parses the attribute value.
    pub(crate) fn parse(s: &str) -> KResult<Self> {
        Ok(match s {
            "NONE" => Self::None,
            "LOGISTIC" => Self::Logistic,
            "SOFTMAX" => Self::Softmax,
            "SOFTMAX_ZERO" => Self::SoftmaxZero,
            "PROBIT" => Self::Probit,
            other => return Err(format!("unknown post_transform '{other}'")),
        })
    }

    /// Applies the transform to a vector of two or more scores, in place.
    pub(crate) fn apply(self, scores: &mut [f32]) {
        match self {
            Self::None => {}
            Self::Logistic => scores.iter_mut().for_each(|s| *s = logistic(*s)),
            Self::Probit => scores.iter_mut().for_each(|s| *s = probit(*s)),
            Self::Softmax => softmax(scores),
            Self::SoftmaxZero => softmax_zero(scores),
        }
    }
}

/// Logistic function, computed on `|x|` for stability as onnxruntime does.
pub(crate) fn logistic(x: f32) -> f32 {
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 { 1.0 - v } else { v }
}

/// Winitzki's approximation of erf⁻¹ (a = 0.147), as in onnxruntime.
fn erf_inv(x: f32) -> f32 {
    let sgn = if x < 0.0 { -1.0f32 } else { 1.0 };
    let x = (1.0 - x) * (1.0 + x);
    let log = x.ln();
    let v = 2.0 / (std::f32::consts::PI * 0.147) + 0.5 * log;
    let v2 = 1.0 / 0.147 * log;
    let v3 = -v + (v * v - v2).sqrt();
    sgn * v3.sqrt()
}

/// Probit: `sqrt(2) * erfinv(2x - 1)`.
pub(crate) fn probit(x: f32) -> f32 {
    std::f32::consts::SQRT_2 * erf_inv(2.0 * x - 1.0)
}

/// Softmax shifted by the maximum.
pub(crate) fn softmax(v: &mut [f32]) {
    let max = v.iter().fold(-f32::MAX, |m, &x| if x > m { x } else { m });
    let mut sum = 0.0f32;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    v.iter_mut().for_each(|x| *x /= sum);
}

/// Softmax that keeps scores within ±1e-7 of zero at (scaled) zero.
pub(crate) fn softmax_zero(v: &mut [f32]) {
    let max = v.iter().fold(-f32::MAX, |m, &x| if x > m { x } else { m });
    let exp_neg_max = (-max).exp();
    let mut sum = 0.0f32;
    for x in v.iter_mut() {
        if *x > 0.000_000_1 || *x < -0.000_000_1 {
            *x = (*x - max).exp();
            sum += *x;
        } else {
            *x *= exp_neg_max;
        }
    }
    v.iter_mut().for_each(|x| *x /= sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_is_symmetric() {
        assert!((logistic(0.0) - 0.5).abs() < 1e-7);
        assert!((logistic(2.0) - 0.880_797_1).abs() < 1e-6);
        assert!((logistic(-2.0) - (1.0 - 0.880_797_1)).abs() < 1e-6);
        assert_eq!(logistic(-100.0), 0.0);
    }

    #[test]
    fn probit_matches_normal_quantiles() {
        // The approximation is good to ~2e-3.
        assert!(probit(0.5).abs() < 1e-6);
        assert!((probit(0.975) - 1.959_964).abs() < 5e-3);
        assert!((probit(0.1) + 1.281_552).abs() < 5e-3);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut v = [1.0, 2.0, 3.0];
        softmax(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((v[2] - 0.665_240_9).abs() < 1e-6);
    }

    #[test]
    fn softmax_zero_keeps_zeros() {
        let mut v = [0.0, 1.0, 1.0];
        softmax_zero(&mut v);
        assert_eq!(v[0], 0.0);
        assert!((v[1] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn post_transform_names() {
        assert_eq!(
            PostTransform::parse("SOFTMAX_ZERO").expect("test data"),
            PostTransform::SoftmaxZero
        );
        assert!(PostTransform::parse("FOO").is_err());
    }
}
