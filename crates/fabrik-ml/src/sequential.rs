//! Sequential tests: decisions between two models (or a model and a bound) taken as the evidence
//! arrives, whose error rates hold however often someone looks. Wald's SPRT on a rate of events,
//! and the mixture SPRT (Johari, Pekelis & Walsh, "Always valid inference", 2017) on a
//! difference of means, with the arithmetic of the team's reference code, so they stop at the
//! same observation with the same statistic.
//!
//! Why not a t-test on the dashboard's counts: a comparison shown on a live page is read again
//! and again, and a fixed-sample test read until it says "significant" is wrong far more often
//! than its α. Both tests here are built to be read at every step.

use crate::MlError;

/// What a sequential test has concluded so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not enough evidence either way yet.
    Continue,
    /// The null hypothesis stands (SPRT: the rate is `p0`).
    AcceptNull,
    /// The null hypothesis is rejected (SPRT: the rate is `p1`; mSPRT: the means differ).
    RejectNull,
}

fn probability(name: &'static str, value: f64) -> Result<f64, MlError> {
    if value.is_finite() && value > 0.0 && value < 1.0 {
        Ok(value)
    } else {
        Err(MlError::Parameter {
            name,
            reason: format!("must lie strictly between 0 and 1, not {value}"),
        })
    }
}

/// Wald's sequential probability ratio test on a Bernoulli rate: H0 the events occur at rate
/// `p0`, H1 at rate `p1`. Stops at the first observation whose log-likelihood ratio leaves
/// `(ln(β/(1−α)), ln((1−β)/α))`; later observations change nothing.
#[derive(Debug, Clone)]
pub struct Sprt {
    on_event: f64,
    on_non_event: f64,
    upper: f64,
    lower: f64,
    llr: f64,
    n: u64,
    decision: Decision,
}

impl Sprt {
    /// A test of `p0` against `p1` (different rates), wrongly rejecting H0 with probability at
    /// most about `alpha` and wrongly accepting it with probability at most about `beta`.
    pub fn new(p0: f64, p1: f64, alpha: f64, beta: f64) -> Result<Self, MlError> {
        let (p0, p1) = (probability("p0", p0)?, probability("p1", p1)?);
        let (alpha, beta) = (probability("alpha", alpha)?, probability("beta", beta)?);
        if p0 == p1 {
            return Err(MlError::Parameter {
                name: "p1",
                reason: format!("must differ from p0 ({p0})"),
            });
        }
        if alpha + beta >= 1.0 {
            return Err(MlError::Parameter {
                name: "beta",
                reason: format!("alpha + beta must be below 1, not {}", alpha + beta),
            });
        }
        Ok(Self {
            on_event: (p1 / p0).ln(),
            on_non_event: ((1.0 - p1) / (1.0 - p0)).ln(),
            upper: ((1.0 - beta) / alpha).ln(),
            lower: (beta / (1.0 - alpha)).ln(),
            llr: 0.0,
            n: 0,
            decision: Decision::Continue,
        })
    }

    /// Adds one observation (whether the event occurred) unless the test has decided.
    pub fn update(&mut self, event: bool) -> Decision {
        if self.decision != Decision::Continue {
            return self.decision;
        }
        let x = f64::from(u8::from(event));
        self.llr += x * self.on_event + (1.0 - x) * self.on_non_event;
        self.n += 1;
        if self.llr >= self.upper {
            self.decision = Decision::RejectNull;
        } else if self.llr <= self.lower {
            self.decision = Decision::AcceptNull;
        }
        self.decision
    }

    /// The log-likelihood ratio of H1 to H0 after the observations counted.
    pub fn llr(&self) -> f64 {
        self.llr
    }

    /// Observations counted: up to and including the deciding one.
    pub fn observations(&self) -> u64 {
        self.n
    }

    /// The decision so far.
    pub fn decision(&self) -> Decision {
        self.decision
    }

    /// The bounds `(lower, upper)` of the log-likelihood ratio.
    pub fn bounds(&self) -> (f64, f64) {
        (self.lower, self.upper)
    }
}

/// How the mixture SPRT estimates the variance of the difference of means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pairing {
    /// The two streams are independent samples that arrive in pairs (an A/B split): the
    /// variance is `s²_A + s²_B`.
    Independent,
    /// Each pair is two measurements of the same unit (two models' verdicts on one window):
    /// the variance is that of the differences `b − a`, which their correlation makes smaller.
    Paired,
}

/// The mixture sequential probability ratio test with a normal mixing distribution N(0, τ²) on
/// the difference `θ = mean(B) − mean(A)`. Its p-value is always valid: with a known variance
/// the chance that it ever falls to α under H0 (θ = 0) is at most α; with the variance
/// estimated from the pairs, as here, that holds as the pairs accumulate (simulated in
/// `tools/sequential_level.py`). Rejects at the first pair where it does, and then keeps that
/// pair's statistic.
#[derive(Debug, Clone)]
pub struct MixtureSprt {
    tau2: f64,
    alpha: f64,
    pairing: Pairing,
    n: u64,
    sum_a: f64,
    sum_b: f64,
    squares_a: f64,
    squares_b: f64,
    sum_d: f64,
    squares_d: f64,
    difference_bounds: Option<(f64, f64)>,
    p: f64,
    difference: Option<f64>,
    rejected_at: Option<u64>,
}

impl MixtureSprt {
    /// A test at level `alpha` with mixing variance `tau2` (the squared size of the differences
    /// worth finding: 0.01 for about 0.1).
    pub fn new(tau2: f64, alpha: f64, pairing: Pairing) -> Result<Self, MlError> {
        if !(tau2.is_finite() && tau2 > 0.0) {
            return Err(MlError::Parameter {
                name: "tau2",
                reason: format!("must be a positive number, not {tau2}"),
            });
        }
        Ok(Self {
            tau2,
            alpha: probability("alpha", alpha)?,
            pairing,
            n: 0,
            sum_a: 0.0,
            sum_b: 0.0,
            squares_a: 0.0,
            squares_b: 0.0,
            sum_d: 0.0,
            squares_d: 0.0,
            difference_bounds: None,
            p: 1.0,
            difference: None,
            rejected_at: None,
        })
    }

    /// For [`Pairing::Paired`] differences `b − a` known to lie within `[low, high]` (−1 and 1
    /// for two right-or-wrong verdicts): their variance is estimated with one extra difference
    /// at each bound. Without them a run of equal differences (a challenger right on every one
    /// of twenty windows the champion got wrong) has no variance and the test could never
    /// decide, however clear the evidence; with them the estimate starts wide and tends to the
    /// sample's as pairs come in.
    pub fn with_difference_bounds(mut self, low: f64, high: f64) -> Result<Self, MlError> {
        if self.pairing != Pairing::Paired {
            return Err(MlError::Parameter {
                name: "difference_bounds",
                reason: "bound the differences of paired samples only".into(),
            });
        }
        if !(low.is_finite() && high.is_finite() && low < high) {
            return Err(MlError::Parameter {
                name: "difference_bounds",
                reason: format!("need finite low < high, not {low} and {high}"),
            });
        }
        self.difference_bounds = Some((low, high));
        Ok(self)
    }

    /// Adds one pair (`a` from A, `b` from B) unless the test has rejected. A step whose
    /// estimated variance is zero (every value so far equal) leaves the p-value as it was; a
    /// pair with a value that is not finite is not counted.
    pub fn update(&mut self, a: f64, b: f64) -> Decision {
        if self.rejected_at.is_some() {
            return Decision::RejectNull;
        }
        if !(a.is_finite() && b.is_finite()) {
            return Decision::Continue;
        }
        self.n += 1;
        let n = self.n as f64;
        self.sum_a += a;
        self.sum_b += b;
        self.squares_a += a * a;
        self.squares_b += b * b;
        let d = b - a;
        self.sum_d += d;
        self.squares_d += d * d;
        let difference = self.sum_b / n - self.sum_a / n;
        self.difference = Some(difference);
        if self.n < 2 {
            return Decision::Continue;
        }
        let unbiased = |sum: f64, squares: f64| (squares - sum * sum / n) / (n - 1.0);
        let variance = match self.pairing {
            Pairing::Independent => {
                unbiased(self.sum_a, self.squares_a) + unbiased(self.sum_b, self.squares_b)
            }
            Pairing::Paired => match self.difference_bounds {
                None => unbiased(self.sum_d, self.squares_d),
                Some((low, high)) => {
                    let (sum, squares) = (
                        self.sum_d + low + high,
                        self.squares_d + low * low + high * high,
                    );
                    let m = n + 2.0;
                    (squares - sum * sum / m) / (m - 1.0)
                }
            },
        };
        // Rounding can leave a tiny negative variance for constant streams.
        if variance.is_nan() || variance <= 1e-300 {
            return Decision::Continue;
        }
        let spread = variance + n * self.tau2;
        let likelihood_ratio = (variance / spread).sqrt()
            * (n * n * self.tau2 * difference * difference / (2.0 * variance * spread)).exp();
        self.p = self.p.min(1.0 / likelihood_ratio);
        if self.p <= self.alpha {
            self.rejected_at = Some(self.n);
            return Decision::RejectNull;
        }
        Decision::Continue
    }

    /// The always-valid p-value: the smallest `1/Λ` so far (1 before any evidence).
    pub fn p_value(&self) -> f64 {
        self.p
    }

    /// `mean(B) − mean(A)` over the pairs counted (at the rejecting pair once rejected).
    pub fn difference(&self) -> Option<f64> {
        self.difference
    }

    /// Pairs counted: up to and including the rejecting one.
    pub fn pairs(&self) -> u64 {
        self.n
    }

    /// The pair at which H0 was rejected (1-based).
    pub fn rejected_at(&self) -> Option<u64> {
        self.rejected_at
    }

    /// The test's level.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// The mixing variance.
    pub fn tau2(&self) -> f64 {
        self.tau2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_out_of_range_are_named() {
        let error = Sprt::new(0.05, 0.05, 0.05, 0.2).expect_err("equal rates");
        assert!(error.to_string().contains("`p1`"), "{error}");
        let error = Sprt::new(0.0, 0.1, 0.05, 0.2).expect_err("zero rate");
        assert!(error.to_string().contains("`p0`"), "{error}");
        let error = Sprt::new(0.05, 0.1, 0.6, 0.5).expect_err("alpha + beta");
        assert!(error.to_string().contains("below 1"), "{error}");
        let error = MixtureSprt::new(0.0, 0.05, Pairing::Paired).expect_err("tau2");
        assert!(error.to_string().contains("`tau2`"), "{error}");
        let error = MixtureSprt::new(0.01, 1.0, Pairing::Paired).expect_err("alpha");
        assert!(error.to_string().contains("`alpha`"), "{error}");
    }

    #[test]
    fn an_sprt_decides_once_and_then_ignores_what_follows() {
        let mut test = Sprt::new(0.05, 0.10, 0.05, 0.20).expect("valid");
        let mut n = 0;
        while test.update(false) == Decision::Continue {
            n += 1;
            assert!(n < 1000, "never accepted");
        }
        assert_eq!(test.decision(), Decision::AcceptNull);
        let (llr, observations) = (test.llr(), test.observations());
        for _ in 0..100 {
            assert_eq!(test.update(true), Decision::AcceptNull);
        }
        assert_eq!((test.llr(), test.observations()), (llr, observations));
    }

    #[test]
    fn paired_differences_decide_where_independent_variances_cannot() {
        // Two models that agree on most units and B is right on a few more: the pairs' strong
        // correlation is what makes the difference clear.
        let (mut paired, mut independent) = (
            MixtureSprt::new(0.01, 0.05, Pairing::Paired).expect("valid"),
            MixtureSprt::new(0.01, 0.05, Pairing::Independent).expect("valid"),
        );
        for i in 0..400 {
            let a = f64::from(u8::from(i % 2 == 0));
            let b = if i % 10 == 1 { 1.0 } else { a };
            paired.update(a, b);
            independent.update(a, b);
        }
        let rejected = paired.rejected_at().expect("paired test rejects");
        assert!(paired.difference().expect("difference") > 0.0);
        assert!(independent.rejected_at().is_none_or(|n| n > rejected));
    }

    #[test]
    fn bounded_differences_decide_a_run_of_equal_ones() {
        let mut unbounded = MixtureSprt::new(0.01, 0.05, Pairing::Paired).expect("valid");
        let mut bounded = MixtureSprt::new(0.01, 0.05, Pairing::Paired)
            .and_then(|t| t.with_difference_bounds(-1.0, 1.0))
            .expect("valid");
        for _ in 0..30 {
            unbounded.update(0.0, 1.0);
            bounded.update(0.0, 1.0);
        }
        assert_eq!(unbounded.p_value(), 1.0, "no variance, no evidence");
        let n = bounded.rejected_at().expect("thirty of thirty decides");
        assert!(n > 3, "not on the first few pairs: {n}");
        assert!(
            MixtureSprt::new(0.01, 0.05, Pairing::Paired)
                .and_then(|t| t.with_difference_bounds(1.0, 1.0))
                .is_err()
        );
    }

    /// Paired right-or-wrong verdicts: each pair B alone is right with `b_only`, A alone with
    /// `a_only`, else both agree. Returns, per stream, where the test rejected and the sign.
    fn simulate(
        seed: u64,
        streams: u64,
        pairs: u64,
        b_only: f64,
        a_only: f64,
    ) -> Vec<Option<bool>> {
        let mut rng = crate::detectors::iforest::SplitMix(seed);
        (0..streams)
            .map(|_| {
                let mut test = MixtureSprt::new(0.01, 0.05, Pairing::Paired)
                    .and_then(|t| t.with_difference_bounds(-1.0, 1.0))
                    .expect("valid");
                for _ in 0..pairs {
                    let u = rng.unit();
                    let (a, b) = if u < b_only {
                        (0.0, 1.0)
                    } else if u < b_only + a_only {
                        (1.0, 0.0)
                    } else {
                        (1.0, 1.0)
                    };
                    if test.update(a, b) == Decision::RejectNull {
                        return Some(test.difference().expect("difference") > 0.0);
                    }
                }
                None
            })
            .collect()
    }

    #[test]
    fn bounded_paired_decisions_keep_their_level_and_find_a_real_difference() {
        // No difference, many discordant pairs: read at every one of 1,000 pairs, the test
        // still declares a difference in at most about alpha of the streams.
        let null = simulate(7, 400, 1000, 0.2, 0.2);
        let wrong = null.iter().filter(|d| d.is_some()).count();
        assert!(
            wrong <= 20,
            "{wrong} of 400 null streams decided (alpha 0.05)"
        );
        // B right on 20 % more pairs, A on 5 %: every stream decides, for B.
        let real = simulate(11, 100, 1000, 0.2, 0.05);
        assert!(real.iter().all(|d| *d == Some(true)), "{real:?}");
    }

    #[test]
    fn paired_differences_against_a_constant_are_the_independent_test() {
        // With A constant its variance is zero, so both estimates are the variance of B: the
        // paired path then computes what the reference-checked independent path does.
        let (mut paired, mut independent) = (
            MixtureSprt::new(0.01, 0.05, Pairing::Paired).expect("valid"),
            MixtureSprt::new(0.01, 0.05, Pairing::Independent).expect("valid"),
        );
        let mut rng = crate::detectors::iforest::SplitMix(3);
        for _ in 0..500 {
            let b = 0.05 + rng.unit();
            paired.update(0.5, b);
            independent.update(0.5, b);
            let (p, q) = (paired.p_value(), independent.p_value());
            assert!((p - q).abs() <= 1e-9 * q, "{p} vs {q}");
        }
        assert_eq!(paired.rejected_at(), independent.rejected_at());
        assert!(paired.rejected_at().is_some());
    }

    #[test]
    fn not_finite_pairs_are_not_counted_and_bounds_need_pairs() {
        let mut test = MixtureSprt::new(0.01, 0.05, Pairing::Paired).expect("valid");
        test.update(1.0, 0.0);
        test.update(f64::NAN, 1.0);
        test.update(0.0, f64::INFINITY);
        assert_eq!(test.pairs(), 1);
        assert_eq!(test.difference(), Some(-1.0));
        assert!(
            MixtureSprt::new(0.01, 0.05, Pairing::Independent)
                .and_then(|t| t.with_difference_bounds(-1.0, 1.0))
                .is_err()
        );
    }

    #[test]
    fn constant_pairs_leave_the_p_value_at_one() {
        let mut test = MixtureSprt::new(0.01, 0.05, Pairing::Paired).expect("valid");
        for _ in 0..100 {
            assert_eq!(test.update(1.0, 1.0), Decision::Continue);
        }
        assert_eq!(test.p_value(), 1.0);
        assert_eq!(test.difference(), Some(0.0));
    }
}
