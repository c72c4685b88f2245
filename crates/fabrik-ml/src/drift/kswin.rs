//! KSWIN (Raab, Heusinger & Schleif 2020): a change in a stream's distribution, not only in
//! its mean, found by a two-sample Kolmogorov–Smirnov test between the newest values and a
//! random sample of the older ones in a sliding window — river 0.26's algorithm, seeded
//! sampling and reset-after-drift, so it flags the indices river flags with the same seed.

use std::collections::VecDeque;

use super::ks::ks_2samp;
use crate::MlError;
use crate::pyrandom::PyRandom;

/// The KS statistic must also exceed this for a drift, as river requires (the p-value alone
/// is not enough there).
const MIN_STATISTIC: f64 = 0.1;

/// KSWIN's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KswinSettings {
    /// The test's level: a drift needs p ≤ `alpha` (river's default 0.005; the authors advise
    /// below 0.01, because a test runs at every value).
    pub alpha: f64,
    /// Values in the sliding window (river: 100).
    pub window_size: usize,
    /// Newest values tested against as many drawn from the rest (river: 30; at most half
    /// the window).
    pub stat_size: usize,
    /// The seed of the draws (CPython's `random.Random(seed)`).
    pub seed: u64,
}

impl Default for KswinSettings {
    /// river's defaults, seed 42.
    fn default() -> Self {
        Self {
            alpha: 0.005,
            window_size: 100,
            stat_size: 30,
            seed: 42,
        }
    }
}

impl KswinSettings {
    /// Whether these settings can run, naming the one that cannot.
    pub fn validate(&self) -> Result<(), MlError> {
        let invalid = |name, reason| Err(MlError::Parameter { name, reason });
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return invalid(
                "alpha",
                format!("{} is not above 0 and below 1", self.alpha),
            );
        }
        if self.stat_size < 2 {
            return invalid("stat_size", format!("{} is below 2", self.stat_size));
        }
        // The older part must hold `stat_size` values to draw from.
        if self.window_size < 2 * self.stat_size || self.window_size > u32::MAX as usize {
            return invalid(
                "window_size",
                format!(
                    "{} is less than twice stat_size {} or too large",
                    self.window_size, self.stat_size
                ),
            );
        }
        Ok(())
    }
}

/// A KSWIN detector over one stream.
#[derive(Debug, Clone)]
pub struct Kswin {
    settings: KswinSettings,
    window: VecDeque<f64>,
    rng: PyRandom,
    p_value: f64,
    /// The last update detected a drift: the next starts afresh (empty window, reseeded),
    /// as river resets.
    drifted: bool,
    older: Vec<f64>,
    newest: Vec<f64>,
}

impl Kswin {
    /// An empty detector, or why `settings` cannot run.
    pub fn new(settings: KswinSettings) -> Result<Self, MlError> {
        settings.validate()?;
        Ok(Self {
            settings,
            window: VecDeque::with_capacity(settings.window_size + 1),
            rng: PyRandom::new(settings.seed),
            p_value: 1.0,
            drifted: false,
            older: Vec::with_capacity(settings.stat_size),
            newest: Vec::with_capacity(settings.stat_size),
        })
    }

    /// The p-value of the latest test (1 before the window first fills).
    pub fn p_value(&self) -> f64 {
        self.p_value
    }

    /// Adds `value`; whether a drift was detected.
    pub fn update(&mut self, value: f64) -> bool {
        let KswinSettings {
            window_size,
            stat_size,
            alpha,
            seed,
        } = self.settings;
        if self.drifted {
            self.window.clear();
            self.rng = PyRandom::new(seed);
            self.p_value = 1.0;
            self.drifted = false;
        }
        self.window.push_back(value);
        if self.window.len() > window_size {
            self.window.pop_front();
        }
        if self.window.len() < window_size {
            return false;
        }
        let older_part = (window_size - stat_size) as u32;
        self.older.clear();
        for index in self.rng.sample(older_part, stat_size as u32) {
            self.older.push(self.window[index as usize]);
        }
        self.newest.clear();
        self.newest
            .extend(self.window.range(window_size - stat_size..));
        let test = ks_2samp(&self.older, &self.newest);
        self.p_value = test.p_value;
        self.drifted = test.p_value <= alpha && test.statistic > MIN_STATISTIC;
        self.drifted
    }
}

#[cfg(test)]
mod tests {
    use super::{Kswin, KswinSettings};

    #[test]
    fn a_wider_spread_at_the_same_mean_is_a_drift() {
        let mut kswin = Kswin::new(KswinSettings::default()).expect("settings");
        // Alternating ±1, then ±5: the same mean, five times the spread.
        let values = (0..400).map(|i| {
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            sign * if i < 200 { 1.0 } else { 5.0 } + f64::from(i % 7) * 0.01
        });
        let drifts: Vec<usize> = values
            .enumerate()
            .filter_map(|(i, v)| kswin.update(v).then_some(i))
            .collect();
        assert!(
            drifts.first().is_some_and(|&i| (200..230).contains(&i)),
            "{drifts:?}"
        );
        assert!(drifts.iter().all(|&i| i >= 200), "{drifts:?}");
    }

    #[test]
    fn settings_that_cannot_run_are_named() {
        let bad = KswinSettings {
            window_size: 50,
            ..KswinSettings::default()
        };
        let error = Kswin::new(bad).expect_err("window").to_string();
        assert!(
            error.contains("`window_size`") && error.contains("twice"),
            "{error}"
        );
        let bad = KswinSettings {
            alpha: 1.5,
            ..KswinSettings::default()
        };
        let error = Kswin::new(bad).expect_err("alpha").to_string();
        assert!(error.contains("`alpha`"), "{error}");
        assert!(KswinSettings::default().validate().is_ok());
    }
}
