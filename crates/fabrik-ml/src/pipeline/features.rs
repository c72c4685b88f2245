//! Window features: moments, extremes, trend and spectral band power of one signal's samples.
//!
//! Owns the feature names users write in config (`mean`, `band:10-50`, ...) and the FFT plans,
//! which are cached per window length because planning costs more than transforming.

use std::collections::HashMap;
use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

use crate::MlError;

/// One feature of a signal's window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Feature {
    /// Arithmetic mean.
    Mean,
    /// Population standard deviation.
    Std,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Root mean square.
    Rms,
    /// Largest minus smallest value.
    PeakToPeak,
    /// Skewness (third standardised moment); 0 for a constant window.
    Skew,
    /// Excess kurtosis (fourth standardised moment − 3); 0 for a constant window.
    Kurtosis,
    /// Least-squares slope, in value units per second.
    Slope,
    /// Power of the mean-removed signal between two frequencies (Hz, `low ≤ f < high`; a band
    /// reaching the Nyquist frequency includes its bin), from a real FFT; the bands of the
    /// whole spectrum add up to the variance.
    Band {
        /// Lower edge, Hz.
        low_hz: f64,
        /// Upper edge, Hz.
        high_hz: f64,
    },
}

impl Feature {
    /// Parses a config name: `mean`, `std`, `min`, `max`, `rms`, `p2p`, `skew`, `kurtosis`,
    /// `slope`, or `band:<low>-<high>` in Hz.
    pub fn parse(name: &str) -> Result<Self, MlError> {
        let invalid = |reason: String| MlError::Parameter {
            name: "features",
            reason,
        };
        Ok(match name {
            "mean" => Self::Mean,
            "std" => Self::Std,
            "min" => Self::Min,
            "max" => Self::Max,
            "rms" => Self::Rms,
            "p2p" | "peak_to_peak" => Self::PeakToPeak,
            "skew" => Self::Skew,
            "kurtosis" => Self::Kurtosis,
            "slope" => Self::Slope,
            other => {
                let Some(band) = other.strip_prefix("band:") else {
                    return Err(invalid(format!(
                        "unknown feature `{other}` (expected mean, std, min, max, rms, p2p, \
                         skew, kurtosis, slope or band:<low>-<high>)"
                    )));
                };
                let (low, high) = band.split_once('-').ok_or_else(|| {
                    invalid(format!("`{other}`: a band is `band:<low Hz>-<high Hz>`"))
                })?;
                let parse = |text: &str| {
                    text.trim().parse::<f64>().map_err(|_| {
                        invalid(format!("`{other}`: `{text}` is not a frequency in Hz"))
                    })
                };
                let (low_hz, high_hz) = (parse(low)?, parse(high)?);
                if !(low_hz >= 0.0 && high_hz > low_hz && high_hz.is_finite()) {
                    return Err(invalid(format!(
                        "`{other}`: needs 0 ≤ low < high (finite), got {low_hz} and {high_hz}"
                    )));
                }
                Self::Band { low_hz, high_hz }
            }
        })
    }

    /// The name it was parsed from (canonical spelling).
    pub fn name(&self) -> String {
        match self {
            Self::Mean => "mean".into(),
            Self::Std => "std".into(),
            Self::Min => "min".into(),
            Self::Max => "max".into(),
            Self::Rms => "rms".into(),
            Self::PeakToPeak => "p2p".into(),
            Self::Skew => "skew".into(),
            Self::Kurtosis => "kurtosis".into(),
            Self::Slope => "slope".into(),
            Self::Band { low_hz, high_hz } => format!("band:{low_hz}-{high_hz}"),
        }
    }
}

/// Computes features, reusing FFT plans across windows.
#[derive(Default)]
pub struct FeatureExtractor {
    planner: Option<RealFftPlanner<f64>>,
    plans: HashMap<usize, Arc<dyn RealToComplex<f64>>>,
}

impl std::fmt::Debug for FeatureExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureExtractor")
            .field("cached_plans", &self.plans.len())
            .finish()
    }
}

/// Central moments of a window, computed once for all moment features.
struct Moments {
    n: f64,
    mean: f64,
    m2: f64,
    m3: f64,
    m4: f64,
    min: f64,
    max: f64,
    sum_squares: f64,
}

fn moments(values: &[f64]) -> Moments {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let (mut m2, mut m3, mut m4, mut sum_squares) = (0.0, 0.0, 0.0, 0.0);
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    for &x in values {
        let d = x - mean;
        let d2 = d * d;
        m2 += d2;
        m3 += d2 * d;
        m4 += d2 * d2;
        sum_squares += x * x;
        min = min.min(x);
        max = max.max(x);
    }
    Moments {
        n,
        mean,
        m2: m2 / n,
        m3: m3 / n,
        m4: m4 / n,
        min,
        max,
        sum_squares,
    }
}

/// A variance this small relative to the mean's magnitude is rounding noise, not signal.
fn is_flat(m: &Moments) -> bool {
    m.m2 <= f64::EPSILON * f64::EPSILON * m.mean * m.mean || m.m2 == 0.0
}

impl FeatureExtractor {
    /// An extractor with no plans yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `features` of one signal's window (`times_ns` ascending, same length as
    /// `values`) to `out`. An empty window yields NaN for every feature.
    pub fn extract(
        &mut self,
        times_ns: &[i64],
        values: &[f64],
        features: &[Feature],
        out: &mut Vec<f64>,
    ) {
        if values.is_empty() {
            out.extend(features.iter().map(|_| f64::NAN));
            return;
        }
        let m = moments(values);
        let flat = is_flat(&m);
        let mut spectrum: Option<Vec<f64>> = None;
        for feature in features {
            let value = match feature {
                Feature::Mean => m.mean,
                Feature::Std => m.m2.sqrt(),
                Feature::Min => m.min,
                Feature::Max => m.max,
                Feature::Rms => (m.sum_squares / m.n).sqrt(),
                Feature::PeakToPeak => m.max - m.min,
                Feature::Skew if flat => 0.0,
                Feature::Skew => m.m3 / m.m2.powf(1.5),
                Feature::Kurtosis if flat => 0.0,
                Feature::Kurtosis => m.m4 / (m.m2 * m.m2) - 3.0,
                Feature::Slope => slope_per_second(times_ns, values),
                Feature::Band { low_hz, high_hz } => {
                    let power = spectrum.get_or_insert_with(|| self.power_spectrum(values, m.mean));
                    band_power(
                        power,
                        values.len(),
                        sample_rate_hz(times_ns),
                        *low_hz,
                        *high_hz,
                    )
                }
            };
            out.push(value);
        }
    }

    /// One-sided power per FFT bin of the mean-removed window, scaled so the bins add up to
    /// the population variance (Parseval).
    fn power_spectrum(&mut self, values: &[f64], mean: f64) -> Vec<f64> {
        let n = values.len();
        let plan = match self.plans.get(&n) {
            Some(plan) => Arc::clone(plan),
            None => {
                let plan = self
                    .planner
                    .get_or_insert_with(RealFftPlanner::new)
                    .plan_fft_forward(n);
                self.plans.insert(n, Arc::clone(&plan));
                plan
            }
        };
        let mut input: Vec<f64> = values.iter().map(|x| x - mean).collect();
        let mut output = plan.make_output_vec();
        if plan.process(&mut input, &mut output).is_err() {
            // Only a length mismatch fails, and the buffers come from the plan itself.
            return vec![0.0; output.len()];
        }
        let scale = 1.0 / (n as f64 * n as f64);
        let last = output.len() - 1;
        output
            .iter()
            .enumerate()
            .map(|(k, c)| {
                // Every bin but DC (and Nyquist for even n) stands for itself and its mirror.
                let one_sided = if k == 0 || (n.is_multiple_of(2) && k == last) {
                    1.0
                } else {
                    2.0
                };
                one_sided * c.norm_sqr() * scale
            })
            .collect()
    }
}

/// Samples per second from the window's own timestamps (mean spacing).
fn sample_rate_hz(times_ns: &[i64]) -> f64 {
    match (times_ns.first(), times_ns.last()) {
        (Some(&first), Some(&last)) if last > first && times_ns.len() > 1 => {
            (times_ns.len() - 1) as f64 / ((last - first) as f64 / 1e9)
        }
        _ => 0.0,
    }
}

/// The power of the bins of an `n`-point spectrum in `[low_hz, high_hz)`, and of the highest
/// bin when the band reaches it: `band:0-0.5` at 1 Hz is the whole spectrum, which a band
/// open at the top would miss the Nyquist bin of. `n` is given, not derived from the bins:
/// `n/2 + 1` bins stand for an odd `n` as for the even one below it.
fn band_power(power: &[f64], n: usize, rate_hz: f64, low_hz: f64, high_hz: f64) -> f64 {
    if rate_hz <= 0.0 || power.len() < 2 {
        return 0.0;
    }
    // The Nyquist bin is the last of an even-length transform.
    let nyquist = n.is_multiple_of(2).then_some(power.len() - 1);
    // Bin k of an n-point transform sits at k·rate/n.
    let n = n as f64;
    power
        .iter()
        .enumerate()
        .filter(|(k, _)| {
            let f = *k as f64 * rate_hz / n;
            f >= low_hz && (f < high_hz || (Some(*k) == nyquist && f <= high_hz))
        })
        .map(|(_, p)| p)
        .sum()
}

fn slope_per_second(times_ns: &[i64], values: &[f64]) -> f64 {
    let Some(&t0) = times_ns.first() else {
        return f64::NAN;
    };
    let n = values.len() as f64;
    let ts: Vec<f64> = times_ns.iter().map(|t| (t - t0) as f64 / 1e9).collect();
    let mean_t = ts.iter().sum::<f64>() / n;
    let mean_v = values.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (t, v) in ts.iter().zip(values) {
        sxy += (t - mean_t) * (v - mean_v);
        sxx += (t - mean_t) * (t - mean_t);
    }
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extract(times: &[i64], values: &[f64], features: &[Feature]) -> Vec<f64> {
        let mut out = Vec::new();
        FeatureExtractor::new().extract(times, values, features, &mut out);
        out
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    #[test]
    fn moments_match_hand_computed_values() {
        let values = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        let times: Vec<i64> = (0..8).map(|i| i * 1_000_000_000).collect();
        let f = extract(
            &times,
            &values,
            &[
                Feature::Mean,
                Feature::Std,
                Feature::Min,
                Feature::Max,
                Feature::Rms,
                Feature::PeakToPeak,
            ],
        );
        assert_eq!(f[0], 5.0);
        assert_eq!(f[1], 2.0);
        assert_eq!((f[2], f[3], f[5]), (2.0, 9.0, 7.0));
        assert!(close(f[4], (232.0f64 / 8.0).sqrt(), 1e-12));
    }

    #[test]
    fn skew_and_kurtosis_are_the_population_moments() {
        let times: Vec<i64> = (0..6).collect();
        // One spike among n = 6: skewness (n−2)/√(n−1) = 4/√5 and excess kurtosis
        // (n²−3n+3)/(n−1) − 3 = 1.2, as scipy.stats.skew / kurtosis (bias=True, fisher=True)
        // give (1.7888543819998317 and 1.2000000000000002).
        let right_tail = [0.0, 0.0, 0.0, 0.0, 0.0, 10.0];
        let f = extract(&times, &right_tail, &[Feature::Skew, Feature::Kurtosis]);
        assert!(close(f[0], 4.0 / 5.0_f64.sqrt(), 1e-12), "skew {}", f[0]);
        assert!(close(f[1], 1.2, 1e-12), "kurtosis {}", f[1]);
        let left_tail = right_tail.map(|v| -v);
        let g = extract(&times, &left_tail, &[Feature::Skew, Feature::Kurtosis]);
        assert!(
            close(g[0], -f[0], 1e-12) && close(g[1], f[1], 1e-12),
            "{g:?}"
        );
        let flat = extract(&times, &[3.0; 6], &[Feature::Skew, Feature::Kurtosis]);
        assert_eq!(flat, vec![0.0, 0.0]);
    }

    #[test]
    fn slope_is_per_second() {
        let times: Vec<i64> = (0..10).map(|i| i * 500_000_000).collect();
        let values: Vec<f64> = (0..10).map(|i| 1.0 + 0.25 * i as f64).collect();
        let f = extract(&times, &values, &[Feature::Slope]);
        assert!(close(f[0], 0.5, 1e-12), "{}", f[0]);
    }

    #[test]
    fn band_power_places_the_bins_of_an_odd_window_where_they_are() {
        // 15 samples at 1 Hz: bin 7 sits at 7/15 Hz, not at 7/14 = 0.5 Hz.
        let n = 15;
        let times: Vec<i64> = (0..n).map(|i| i * 1_000_000_000).collect();
        let values: Vec<f64> = (0..n)
            .map(|i| (2.0 * std::f64::consts::PI * 7.0 * i as f64 / n as f64).cos())
            .collect();
        let bands = [
            Feature::parse("band:0.45-0.5").unwrap(),
            Feature::parse("band:0.5-0.6").unwrap(),
        ];
        let f = extract(&times, &values, &bands);
        assert!(close(f[0], 0.5, 1e-9), "in band {f:?}");
        assert!(f[1].abs() < 1e-12, "{f:?}");
    }

    #[test]
    fn band_power_finds_a_sine_in_its_band_and_bands_add_up_to_the_variance() {
        // 8 Hz sine sampled at 100 Hz for 2 s, amplitude 3: variance 4.5.
        let rate = 100.0;
        let n = 200;
        let times: Vec<i64> = (0..n).map(|i| (i as f64 * 1e9 / rate) as i64).collect();
        let values: Vec<f64> = (0..n)
            .map(|i| 1.0 + 3.0 * (2.0 * std::f64::consts::PI * 8.0 * i as f64 / rate).sin())
            .collect();
        let bands = [
            Feature::parse("band:0-5").unwrap(),
            Feature::parse("band:5-12").unwrap(),
            Feature::parse("band:12-51").unwrap(),
        ];
        let f = extract(&times, &values, &bands);
        // The window's own rate estimate is (n-1)/span, a hair above 100 Hz.
        assert!(close(f[1], 4.5, 1e-3), "in-band power {}", f[1]);
        assert!(f[0] < 1e-6 && f[2] < 1e-6, "leakage {} {}", f[0], f[2]);
        let variance = extract(&times, &values, &[Feature::Std])[0].powi(2);
        assert!(close(f.iter().sum::<f64>(), variance, 1e-9));
    }

    /// At 1 Hz, `band:0-0.5` is the whole spectrum: it takes the Nyquist bin, where a signal
    /// alternating sample by sample has all its power.
    #[test]
    fn a_band_reaching_the_nyquist_frequency_includes_its_bin() {
        let times: Vec<i64> = (0..10).map(|s| s * 1_000_000_000).collect();
        let alternating: Vec<f64> = (0..10)
            .map(|s| if s % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let bands = ["band:0-0.5", "band:0-0.25", "band:0.25-0.5", "band:0-0.45"]
            .map(|b| Feature::parse(b).unwrap());
        let f = extract(&times, &alternating, &bands);
        assert!(close(f[0], 1.0, 1e-12), "{f:?}");
        assert!(close(f[1] + f[2], 1.0, 1e-12), "{f:?}");
        assert!(f[3].abs() < 1e-12, "below Nyquist: {f:?}");
    }

    #[test]
    fn names_round_trip_and_bad_names_are_named() {
        for name in ["mean", "std", "kurtosis", "band:10-50", "p2p"] {
            assert_eq!(Feature::parse(name).unwrap().name(), name);
        }
        let err = Feature::parse("median").unwrap_err().to_string();
        assert!(err.contains("`median`"), "{err}");
        assert!(Feature::parse("band:50-10").is_err());
        assert!(
            Feature::parse("band:x-10")
                .unwrap_err()
                .to_string()
                .contains("`x`")
        );
    }

    #[test]
    fn empty_windows_give_nan() {
        let f = extract(&[], &[], &[Feature::Mean, Feature::Slope]);
        assert!(f.iter().all(|v| v.is_nan()));
    }
}
