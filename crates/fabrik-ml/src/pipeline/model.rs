//! The model step of a pipeline: detectors that learn a device's normal feature vectors from
//! its first windows, then score each new window and explain the score per feature.
//!
//! Owns the built-in window models (robust z-score, PCA T²+Q, Half-Space Trees, Isolation
//! Forest, RART, DBZ) and the [`WindowModel`] trait other runtimes (ONNX, tree ensembles) plug
//! into; the explanations that work for any model are in [`super::explain`].

use crate::MlError;
use crate::detectors::RowDetector;
use crate::detectors::dbz::{Dbz, DbzConfig};
use crate::detectors::hst::{HalfSpaceTrees, HstConfig};
use crate::detectors::iforest::{IsolationForest, IsolationForestConfig};
use crate::detectors::pca::{PcaConfig, PcaT2Q};
use crate::detectors::rart::Rart;
use crate::time::hour_of_day;

use super::explain::normalised;
pub use super::explain::{occlusion, owen_shares, single_feature_rises};

/// Fewest training windows RART takes as its probationary period: two of its eight-sample
/// feature windows.
const RART_MIN_TRAINING_WINDOWS: usize = 16;
/// Fewest training windows robust z takes: a median and a MAD of fewer say little.
const ROBUST_Z_MIN_TRAINING_WINDOWS: usize = 3;
/// Fewest training windows Half-Space Trees take to place their work space.
const HST_MIN_TRAINING_WINDOWS: usize = 8;
/// PCA T²+Q needs the count of varying features + 2; with one varying feature, 3.
const PCA_MIN_TRAINING_WINDOWS: usize = 3;
/// Residuals DBZ's scale is the RMS of, at least, in a pipeline: its detector fits from one
/// (the benchmark fits 320), and a scale from one residual flagged 987 of 987 healthy windows
/// of a device in a review.
const DBZ_MIN_RESIDUALS: usize = 60;
/// MAD × 1.4826 estimates the standard deviation of normal data.
const MAD_TO_SIGMA: f64 = 1.4826;

/// A model scoring one feature vector per window. Higher scores are more anomalous.
pub trait WindowModel: Send {
    /// The model's name, stored with every inference.
    fn name(&self) -> &str;
    /// Its version (a content hash or a user-given version), stored with every inference.
    fn version(&self) -> &str;
    /// Fits on a device's first windows (all of the same width).
    fn fit(&mut self, rows: &[Vec<f64>]) -> Result<(), MlError>;
    /// [`Self::fit`] with each window's start time, for models that use the time of day.
    fn fit_at(&mut self, rows: &[Vec<f64>], _times_ns: &[i64]) -> Result<(), MlError> {
        self.fit(rows)
    }
    /// Scores a window; an adaptive model may learn from it.
    fn score(&mut self, row: &[f64]) -> Result<f64, MlError>;
    /// [`Self::score`] with the window's start time, for models that use the time of day.
    fn score_at(&mut self, row: &[f64], _time_ns: i64) -> Result<f64, MlError> {
        self.score(row)
    }
    /// Scores without learning, for calibration and explanations.
    fn probe(&self, row: &[f64]) -> Result<f64, MlError>;
    /// The largest score the model can give, if its scores are bounded above: a calibrated
    /// threshold then stays below it (see [`super::calibrated_threshold`]).
    fn score_bound(&self) -> Option<f64> {
        None
    }
    /// Per-feature shares (non-negative, summing to 1 unless all are 0) of `row`'s score.
    /// The default occludes one feature at a time with its training median.
    fn contributions(&self, row: &[f64], medians: &[f64]) -> Result<Vec<f64>, MlError> {
        occlusion(self, row, medians)
    }
    /// Whether the threshold is calibrated on the scores of training windows held out of the
    /// fit (k-fold, see `pipeline::calibrate_held_out`) instead of on the fitted model's
    /// scores of its own training windows. A model that fits its training windows closely
    /// scores them lower than new windows of the same normal: PCA's covariance explains the
    /// samples it was estimated from, and a threshold from those scores flagged 9.5 % of
    /// healthy simulated pump windows (0.3 % held out).
    fn calibrates_held_out(&self) -> bool {
        false
    }
    /// Whether [`Self::contributions`] are the model's own per-feature terms (robust z's
    /// |z|, RART's and DBZ's per-feature scores, an autoencoder's errors), which explain a
    /// flagged window as well as any probing would.
    fn explains_itself(&self) -> bool {
        false
    }
    /// Per-feature shares of a flagged window's score, which operators read to find the
    /// signals at fault, so worth more probes than [`Self::contributions`]: [`owen_shares`],
    /// each signal's `features_per_signal` consecutive features a coalition, unless the
    /// model [explains itself](Self::explains_itself).
    fn explain_flagged(
        &self,
        row: &[f64],
        medians: &[f64],
        features_per_signal: usize,
    ) -> Result<Vec<f64>, MlError> {
        if self.explains_itself() {
            self.contributions(row, medians)
        } else {
            owen_shares(self, row, medians, features_per_signal)
        }
    }
}

/// Median of each column.
pub fn column_medians(rows: &[Vec<f64>]) -> Vec<f64> {
    let width = rows.first().map_or(0, Vec::len);
    (0..width)
        .map(|j| {
            let mut column: Vec<f64> = rows.iter().map(|r| r[j]).collect();
            median_in_place(&mut column)
        })
        .collect()
}

fn median_in_place(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn too_few_windows(model: &'static str, needed: usize, got: usize) -> MlError {
    MlError::Detector {
        detector: model,
        reason: format!("needs at least {needed} training windows, got {got}"),
    }
}

fn unfitted(model: &'static str) -> MlError {
    MlError::Detector {
        detector: model,
        reason: "scored before fit".into(),
    }
}

fn width_error(model: &'static str, got: usize, expected: usize) -> MlError {
    MlError::Detector {
        detector: model,
        reason: format!("window has {got} features, the model was fitted on {expected}"),
    }
}

/// Robust z-score of every feature against its training median and MAD; the score is the
/// largest |z|. Explains itself: each feature's share is its |z| over the sum.
#[derive(Debug, Clone, Default)]
pub struct RobustZModel {
    medians: Vec<f64>,
    scales: Vec<f64>,
}

impl RobustZModel {
    fn z(&self, row: &[f64]) -> Result<Vec<f64>, MlError> {
        if row.len() != self.medians.len() {
            return Err(width_error("robust_z", row.len(), self.medians.len()));
        }
        Ok(row
            .iter()
            .zip(&self.medians)
            .zip(&self.scales)
            .map(|((x, m), s)| ((x - m) / s).abs())
            .collect())
    }
}

impl WindowModel for RobustZModel {
    fn name(&self) -> &str {
        "robust_z"
    }
    fn version(&self) -> &str {
        "1"
    }
    fn fit(&mut self, rows: &[Vec<f64>]) -> Result<(), MlError> {
        if rows.len() < ROBUST_Z_MIN_TRAINING_WINDOWS {
            return Err(too_few_windows(
                "robust_z",
                ROBUST_Z_MIN_TRAINING_WINDOWS,
                rows.len(),
            ));
        }
        self.medians = column_medians(rows);
        self.scales = self
            .medians
            .iter()
            .enumerate()
            .map(|(j, &m)| {
                let mut deviations: Vec<f64> = rows.iter().map(|r| (r[j] - m).abs()).collect();
                let mad = median_in_place(&mut deviations) * MAD_TO_SIGMA;
                let spread = rows.iter().map(|r| (r[j] - m).abs()).fold(0.0, f64::max);
                // A feature that barely moved in training (MAD 0) would make any change
                // infinite; fall back to its largest training deviation, then to a floor
                // relative to its magnitude. (The largest deviation also caps every training
                // window's score at 3, which the calibrated threshold is a multiple of; a
                // more outlier-proof lower bound raised the demo's threshold from 6 to 7.3
                // and left its stuck sensor, at 6.4, unflagged.)
                mad.max(spread / 3.0).max(1e-6 * m.abs()).max(1e-12)
            })
            .collect();
        Ok(())
    }
    fn score(&mut self, row: &[f64]) -> Result<f64, MlError> {
        self.probe(row)
    }
    fn probe(&self, row: &[f64]) -> Result<f64, MlError> {
        Ok(self.z(row)?.into_iter().fold(0.0, f64::max))
    }
    fn contributions(&self, row: &[f64], _medians: &[f64]) -> Result<Vec<f64>, MlError> {
        Ok(normalised(self.z(row)?))
    }
    /// Each feature's |z| is its own term of the score (the largest), and its share.
    fn explains_itself(&self) -> bool {
        true
    }
}

/// PCA T² and Q against their control limits; the score is the larger ratio (1.0 = at the
/// limit).
#[derive(Debug, Clone)]
pub struct PcaModel {
    inner: PcaT2Q,
    width: usize,
}

impl Default for PcaModel {
    fn default() -> Self {
        Self {
            inner: PcaT2Q::new(PcaConfig {
                // Windows are already aggregates; no extra smoothing of the statistics.
                median_window: 1,
                ..PcaConfig::default()
            }),
            width: 0,
        }
    }
}

impl WindowModel for PcaModel {
    fn name(&self) -> &str {
        "pca_t2q"
    }
    fn version(&self) -> &str {
        "1"
    }
    fn fit(&mut self, rows: &[Vec<f64>]) -> Result<(), MlError> {
        self.width = rows.first().map_or(0, Vec::len);
        self.inner.fit(rows)
    }
    fn score(&mut self, row: &[f64]) -> Result<f64, MlError> {
        self.probe(row)
    }
    /// Its T² and Q of its own training windows are optimistic (see the trait).
    fn calibrates_held_out(&self) -> bool {
        true
    }
    fn probe(&self, row: &[f64]) -> Result<f64, MlError> {
        if row.len() != self.width {
            return Err(width_error("pca_t2q", row.len(), self.width));
        }
        // `statistics` keeps a median filter; with a window of 1 a clone scores statelessly.
        Ok(self.inner.clone().statistics(row)?.ratio())
    }
}

/// Half-Space Trees over features scaled by their training range.
#[derive(Debug, Clone, Default)]
pub struct HstModel {
    trees: Option<HalfSpaceTrees>,
    low: Vec<f64>,
    range: Vec<f64>,
}

impl HstModel {
    fn scaled(&self, row: &[f64]) -> Result<Vec<f64>, MlError> {
        if row.len() != self.low.len() {
            return Err(width_error("hst", row.len(), self.low.len()));
        }
        Ok(row
            .iter()
            .zip(&self.low)
            .zip(&self.range)
            .map(|((x, lo), r)| (x - lo) / r)
            .collect())
    }
}

impl WindowModel for HstModel {
    fn name(&self) -> &str {
        "hst"
    }
    fn version(&self) -> &str {
        "1"
    }
    fn fit(&mut self, rows: &[Vec<f64>]) -> Result<(), MlError> {
        let width = rows.first().map_or(0, Vec::len);
        if rows.len() < HST_MIN_TRAINING_WINDOWS || width == 0 {
            return Err(too_few_windows("hst", HST_MIN_TRAINING_WINDOWS, rows.len()));
        }
        // Training data fills the middle half of [0, 1], leaving room either side so values
        // beyond the training range land in sparse cells.
        self.low.clear();
        self.range.clear();
        for j in 0..width {
            let (lo, hi) = rows
                .iter()
                .map(|r| r[j])
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                    (lo.min(x), hi.max(x))
                });
            let span = (hi - lo).max(1e-9 * lo.abs()).max(1e-12);
            self.low.push(lo - span / 2.0);
            self.range.push(span * 2.0);
        }
        let config = HstConfig {
            window_size: rows.len(),
            ..HstConfig::default()
        };
        let mut trees = HalfSpaceTrees::new(config, vec![(0.0, 1.0); width]);
        for row in rows {
            let scaled = self.scaled(row)?;
            trees.learn_one(&scaled);
        }
        self.trees = Some(trees);
        Ok(())
    }
    fn score(&mut self, row: &[f64]) -> Result<f64, MlError> {
        let score = self.probe(row)?;
        let scaled = self.scaled(row)?;
        if let Some(trees) = &mut self.trees {
            trees.learn_one(&scaled);
        }
        Ok(score)
    }
    fn probe(&self, row: &[f64]) -> Result<f64, MlError> {
        let scaled = self.scaled(row)?;
        let trees = self.trees.as_ref().ok_or_else(|| unfitted("hst"))?;
        Ok(trees.score_one(&scaled))
    }
    /// One minus the window's mass over the largest mass.
    fn score_bound(&self) -> Option<f64> {
        Some(1.0)
    }
}

/// Isolation Forest grown on the device's training windows, then regrown from its latest
/// windows, so it follows slow drift and a new operating point.
#[derive(Debug, Clone, Default)]
pub struct IsolationForestModel {
    forest: Option<IsolationForest>,
}

impl IsolationForestModel {
    fn forest(&self) -> Result<&IsolationForest, MlError> {
        self.forest.as_ref().ok_or_else(|| unfitted("iforest"))
    }
}

impl WindowModel for IsolationForestModel {
    fn name(&self) -> &str {
        "iforest"
    }
    fn version(&self) -> &str {
        "1"
    }
    fn fit(&mut self, rows: &[Vec<f64>]) -> Result<(), MlError> {
        // Windows are few and slow: keep at least a full sample's worth and regrow each time
        // that many have been scored.
        let memory = rows.len().max(256);
        let mut forest = IsolationForest::new(IsolationForestConfig {
            refit_every: memory,
            memory,
            ..IsolationForestConfig::default()
        });
        forest.fit(rows)?;
        self.forest = Some(forest);
        Ok(())
    }
    fn score(&mut self, row: &[f64]) -> Result<f64, MlError> {
        let score = self.probe(row)?;
        if let Some(forest) = &mut self.forest {
            forest.learn(row);
        }
        Ok(score)
    }
    fn probe(&self, row: &[f64]) -> Result<f64, MlError> {
        let forest = self.forest()?;
        let width = forest.width().unwrap_or(0);
        if row.len() != width {
            return Err(width_error("iforest", row.len(), width));
        }
        forest.raw_score(row)
    }
    /// 2^(−E(h)/c) is at most 1.
    fn score_bound(&self) -> Option<f64> {
        Some(1.0)
    }
}

/// RART, Fabrik's NAB detector, on each feature of the window as its own stream (NAB's
/// setting is one value per five-minute aggregate: a pipeline with five-minute windows and the
/// `mean` feature). The training windows are RART's probationary period, the window's start
/// gives the hour of day, and the score is the largest of the features' scores: each a
/// probability (`1/(1+e^−s)` of its fused evidence), 0 on the rows RART holds back after a
/// detection. RART calibrates itself per stream, so a fixed threshold (NAB's optimum on the
/// subset is about 0.72) suits it better than a quantile of its scores on the training
/// windows, which it has just learned as normal.
#[derive(Debug, Clone, Default)]
pub struct RartModel {
    features: Vec<Rart>,
    /// Each feature's score of the last scored window, for its explanation.
    last_scores: Vec<f64>,
}

impl WindowModel for RartModel {
    fn name(&self) -> &str {
        "rart"
    }
    fn version(&self) -> &str {
        "1"
    }
    /// Without window times every window counts as hour 0 (no time-of-day rarity).
    fn fit(&mut self, rows: &[Vec<f64>]) -> Result<(), MlError> {
        self.fit_at(rows, &vec![0; rows.len()])
    }
    fn fit_at(&mut self, rows: &[Vec<f64>], times_ns: &[i64]) -> Result<(), MlError> {
        let width = rows.first().map_or(0, Vec::len);
        if rows.len() < RART_MIN_TRAINING_WINDOWS || width == 0 {
            return Err(too_few_windows(
                "rart",
                RART_MIN_TRAINING_WINDOWS,
                rows.len(),
            ));
        }
        if let Some(bad) = rows.iter().find(|row| row.len() != width) {
            return Err(width_error("rart", bad.len(), width));
        }
        if times_ns.len() != rows.len() {
            return Err(MlError::Detector {
                detector: "rart",
                reason: format!(
                    "{} training windows but {} window times",
                    rows.len(),
                    times_ns.len()
                ),
            });
        }
        self.features = (0..width).map(|_| Rart::new(rows.len())).collect();
        self.last_scores = vec![0.0; width];
        for (row, &time_ns) in rows.iter().zip(times_ns) {
            let hour = hour_of_day(time_ns);
            for (detector, &value) in self.features.iter_mut().zip(row) {
                detector.score_value(value, hour);
            }
        }
        Ok(())
    }
    fn score(&mut self, row: &[f64]) -> Result<f64, MlError> {
        self.score_at(row, 0)
    }
    fn score_at(&mut self, row: &[f64], time_ns: i64) -> Result<f64, MlError> {
        self.check_width(row)?;
        let hour = hour_of_day(time_ns);
        for ((detector, &value), last) in
            self.features.iter_mut().zip(row).zip(&mut self.last_scores)
        {
            *last = detector.score_value(value, hour);
        }
        Ok(self.last_scores.iter().copied().fold(0.0, f64::max))
    }
    /// What a copy of the state would score at hour 0, leaving the detectors as they are; it
    /// copies every feature's ART categories, so the pipeline asks only when calibrating a
    /// quantile threshold.
    fn probe(&self, row: &[f64]) -> Result<f64, MlError> {
        self.check_width(row)?;
        Ok(self
            .features
            .iter()
            .zip(row)
            .map(|(detector, &value)| detector.clone().score_value(value, 0))
            .fold(0.0, f64::max))
    }
    /// An anomaly likelihood in [0, 1].
    fn score_bound(&self) -> Option<f64> {
        Some(1.0)
    }
    /// The features' shares of the last scored window's scores (the pipeline explains the
    /// window it has just scored).
    fn contributions(&self, row: &[f64], _medians: &[f64]) -> Result<Vec<f64>, MlError> {
        self.check_width(row)?;
        Ok(normalised(self.last_scores.clone()))
    }
    /// Each feature is its own detector; the score is the largest of theirs.
    fn explains_itself(&self) -> bool {
        true
    }
}

impl RartModel {
    fn check_width(&self, row: &[f64]) -> Result<(), MlError> {
        if self.features.is_empty() {
            return Err(unfitted("rart"));
        }
        if row.len() != self.features.len() {
            return Err(width_error("rart", row.len(), self.features.len()));
        }
        Ok(())
    }
}

/// DBZ, Fabrik's SKAB detector, with each feature as a channel: the largest z of a rolling
/// mean of the last 20 windows against a delayed baseline that stops learning while it
/// alarms, scaled by the training windows. The score is that z over DBZ's threshold of 6, so
/// 1.0 is DBZ's alarm level (SKAB's setting is a window of one sample and the `mean`
/// feature). It needs 140 training windows (60 residuals for its scale). Its alarm holds for 30 windows after the last
/// exceedance, as in the benchmark: a held window scores the exceedance's peak, so the
/// deployed detector flags what `fabrik eval skab` measured (without the hold, valve1/0.csv
/// scored F1 0.745 in a pipeline against the benchmark's 0.854).
#[derive(Debug, Clone)]
pub struct DbzModel {
    inner: Dbz,
    /// The largest score of the exceedances whose alarm still holds (0 when none does).
    held_peak: f64,
    /// The channels' shares of the z's of the window that scored `held_peak`.
    held_shares: Vec<f64>,
    /// Whether the window just scored took `held_peak` rather than its own score: its
    /// contributions are then the peak's, so an alert names the signals that raised the
    /// alarm, not whichever channel is largest while it holds.
    holding: bool,
}

impl Default for DbzModel {
    fn default() -> Self {
        Self {
            inner: Dbz::new(DbzConfig::default()),
            held_peak: 0.0,
            held_shares: Vec::new(),
            holding: false,
        }
    }
}

impl WindowModel for DbzModel {
    fn name(&self) -> &str {
        "dbz"
    }
    fn version(&self) -> &str {
        "1"
    }
    fn fit(&mut self, rows: &[Vec<f64>]) -> Result<(), MlError> {
        let least = BuiltinModel::Dbz.min_training_windows();
        if rows.len() < least {
            return Err(too_few_windows("dbz", least, rows.len()));
        }
        self.held_peak = 0.0;
        self.holding = false;
        self.inner.fit(rows)
    }
    fn score(&mut self, row: &[f64]) -> Result<f64, MlError> {
        let step = self.inner.step(row)?;
        let score = step.max_z / self.inner.config().z_threshold;
        self.holding = step.alarm && score < self.held_peak;
        if !step.alarm {
            self.held_peak = 0.0;
        } else if !self.holding {
            self.held_peak = score;
            self.held_shares = normalised(self.inner.last_channel_z().to_vec());
        }
        Ok(if step.alarm { self.held_peak } else { score })
    }
    fn probe(&self, row: &[f64]) -> Result<f64, MlError> {
        let largest = self.inner.channel_z(row)?.into_iter().fold(0.0, f64::max);
        Ok(largest / self.inner.config().z_threshold)
    }
    /// The channels' shares of the z's of the window just scored, or, while an alarm holds,
    /// of the window that scored its peak.
    fn contributions(&self, row: &[f64], _medians: &[f64]) -> Result<Vec<f64>, MlError> {
        let last_z = self.inner.last_channel_z();
        if row.len() != last_z.len() {
            return Err(width_error("dbz", row.len(), last_z.len()));
        }
        if self.holding {
            return Ok(self.held_shares.clone());
        }
        Ok(normalised(last_z.to_vec()))
    }
    /// Each channel's z is its own term of the score (the largest).
    fn explains_itself(&self) -> bool {
        true
    }
}

/// The built-in window models, by config name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinModel {
    /// [`RobustZModel`].
    RobustZ,
    /// [`PcaModel`].
    PcaT2Q,
    /// [`HstModel`].
    Hst,
    /// [`IsolationForestModel`].
    IsolationForest,
    /// [`RartModel`].
    Rart,
    /// [`DbzModel`].
    Dbz,
}

impl BuiltinModel {
    /// Parses `robust_z`, `pca_t2q`, `hst`, `iforest`, `rart` or `dbz`.
    pub fn parse(name: &str) -> Result<Self, MlError> {
        match name {
            "robust_z" => Ok(Self::RobustZ),
            "pca_t2q" => Ok(Self::PcaT2Q),
            "hst" => Ok(Self::Hst),
            "iforest" => Ok(Self::IsolationForest),
            "rart" => Ok(Self::Rart),
            "dbz" => Ok(Self::Dbz),
            other => Err(MlError::Parameter {
                name: "model",
                reason: format!(
                    "unknown model `{other}` (expected robust_z, pca_t2q, hst, iforest, rart or dbz)"
                ),
            }),
        }
    }

    /// The fewest training windows the model fits on, so a pipeline asking for fewer is
    /// refused when it is defined rather than when its training is done. For PCA T²+Q it is a
    /// lower bound: it needs two more windows than it has varying features.
    pub fn min_training_windows(self) -> usize {
        match self {
            Self::RobustZ => ROBUST_Z_MIN_TRAINING_WINDOWS,
            Self::PcaT2Q => PCA_MIN_TRAINING_WINDOWS,
            Self::Hst => HST_MIN_TRAINING_WINDOWS,
            Self::IsolationForest => crate::detectors::iforest::MIN_TRAINING_ROWS,
            Self::Rart => RART_MIN_TRAINING_WINDOWS,
            Self::Dbz => Dbz::new(DbzConfig::default()).min_training_rows() - 1 + DBZ_MIN_RESIDUALS,
        }
    }

    /// Whether the model keeps learning while it scores (Half-Space Trees learn every window,
    /// the Isolation Forest regrows from the latest, DBZ's baseline and RART's categories
    /// move on): its training windows alone do not make the model it has after a while.
    pub fn adapts(self) -> bool {
        matches!(
            self,
            Self::Hst | Self::IsolationForest | Self::Rart | Self::Dbz
        )
    }

    /// The score at which the model itself alarms, where its scores have such a scale: DBZ's
    /// score is its largest z over its alarm level, so 1.0; RART's is calibrated evidence, and
    /// 0.72 is about where NAB's optimiser puts its threshold on the benchmark (0.7247). The
    /// others' scores have no natural scale (`None`).
    pub fn own_threshold(self) -> Option<f64> {
        match self {
            Self::Dbz => Some(1.0),
            Self::Rart => Some(0.72),
            Self::RobustZ | Self::PcaT2Q | Self::Hst | Self::IsolationForest => None,
        }
    }

    /// The threshold a pipeline of this model takes when none is given: its own alarm level
    /// where it has one, else a calibrated one. Isolation Forest and Half-Space Trees score in
    /// [0, 1] and crowd their scores below 1 (a forest of 20-window samples never scores much
    /// above 0.8), so their margin takes a tenth of the headroom above the training windows'
    /// largest score; the unbounded scores take 1.5 × it.
    pub fn default_threshold(self) -> String {
        match (self.own_threshold(), self) {
            (Some(level), _) => format!("{level:?}"),
            (None, Self::Hst | Self::IsolationForest) => "quantile:1.0*1.1".to_owned(),
            (None, _) => "quantile:1.0*1.5".to_owned(),
        }
    }

    /// A fresh, unfitted instance.
    pub fn build(self) -> Box<dyn WindowModel> {
        match self {
            Self::RobustZ => Box::new(RobustZModel::default()),
            Self::PcaT2Q => Box::new(PcaModel::default()),
            Self::Hst => Box::new(HstModel::default()),
            Self::IsolationForest => Box::new(IsolationForestModel::default()),
            Self::Rart => Box::new(RartModel::default()),
            Self::Dbz => Box::new(DbzModel::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::simulated_pump::{PumpFault, pump_window};

    #[test]
    fn every_builtin_model_fits_on_its_stated_minimum_and_not_below() {
        // One varying feature: the case where PCA T²+Q's bound is exact.
        let rows: Vec<Vec<f64>> = (0..200)
            .map(|i| vec![10.0 + ((i * 7919) % 17) as f64 / 8.0])
            .collect();
        let times: Vec<i64> = (0..200).map(|i| i * 300_000_000_000).collect();
        for model in [
            BuiltinModel::RobustZ,
            BuiltinModel::PcaT2Q,
            BuiltinModel::Hst,
            BuiltinModel::IsolationForest,
            BuiltinModel::Rart,
            BuiltinModel::Dbz,
        ] {
            let least = model.min_training_windows();
            let fit = |n: usize| model.build().fit_at(&rows[..n], &times[..n]);
            assert!(fit(least).is_ok(), "{model:?} on {least}: {:?}", fit(least));
            let error = fit(least - 1).expect_err("one window short");
            assert!(
                error.to_string().contains(&least.to_string()),
                "{model:?}: {error}"
            );
        }
    }

    /// Training rows: feature 0 ~ 10 ± 1, feature 1 ~ 100 ± 5, feature 2 = 2·feature 0.
    fn training() -> Vec<Vec<f64>> {
        (0..64)
            .map(|i| {
                let a = 10.0 + ((i * 7919) % 17) as f64 / 8.0 - 1.0;
                let b = 100.0 + ((i * 104_729) % 11) as f64 - 5.0;
                vec![a, b, 2.0 * a + ((i % 3) as f64) * 0.01]
            })
            .collect()
    }

    fn check_model(kind: BuiltinModel) {
        let rows = training();
        let mut model = kind.build();
        model.fit(&rows).unwrap();
        let medians = column_medians(&rows);
        let normal = model.score(&medians).unwrap();
        let mut faulty = medians.clone();
        faulty[1] += 60.0;
        let anomalous = model.probe(&faulty).unwrap();
        assert!(
            anomalous > normal,
            "{}: fault {anomalous} vs normal {normal}",
            model.name()
        );
        let shares = model.contributions(&faulty, &medians).unwrap();
        let top = (0..shares.len())
            .max_by(|&a, &b| shares[a].total_cmp(&shares[b]))
            .unwrap();
        assert_eq!(top, 1, "{}: shares {shares:?}", model.name());
        let total: f64 = shares.iter().sum();
        assert!((total - 1.0).abs() < 1e-9, "{}: {shares:?}", model.name());
        let err = model.probe(&[1.0, 2.0]).unwrap_err().to_string();
        assert!(err.contains("2 features") && err.contains('3'), "{err}");
    }

    #[test]
    fn robust_z_scores_and_explains_a_shifted_feature() {
        check_model(BuiltinModel::RobustZ);
    }

    #[test]
    fn pca_scores_and_explains_a_shifted_feature() {
        check_model(BuiltinModel::PcaT2Q);
    }

    #[test]
    fn hst_scores_and_explains_a_shifted_feature() {
        check_model(BuiltinModel::Hst);
    }

    #[test]
    fn iforest_scores_and_explains_a_shifted_feature() {
        check_model(BuiltinModel::IsolationForest);
    }

    #[test]
    fn pca_sees_a_broken_correlation_that_marginals_miss() {
        let rows = training();
        let mut pca = BuiltinModel::PcaT2Q.build();
        pca.fit(&rows).unwrap();
        let medians = column_medians(&rows);
        // Feature 2 stops following feature 0 but stays inside its own training range.
        let mut broken = medians.clone();
        broken[0] += 0.9;
        broken[2] -= 1.8;
        assert!(pca.probe(&broken).unwrap() > 1.0);
        let shares = pca.contributions(&broken, &medians).unwrap();
        assert!(shares[1] < shares[0] && shares[1] < shares[2], "{shares:?}");
    }

    #[test]
    fn unknown_models_are_named() {
        let err = BuiltinModel::parse("lstm").unwrap_err().to_string();
        assert!(err.contains("`lstm`") && err.contains("rart"), "{err}");
    }

    const FIVE_MINUTES_NS: i64 = 300 * 1_000_000_000;

    /// Window `i` of a daily pattern every five minutes with a little deterministic noise, in
    /// two features (the second a scaled, shifted copy of the first).
    fn daily_window(i: usize) -> Vec<f64> {
        let phase = (i % 288) as f64 / 288.0 * std::f64::consts::TAU;
        let noise = ((i * 7919) % 13) as f64 / 13.0 - 0.5;
        let value = 50.0 + 20.0 * phase.sin() + noise;
        vec![value, 0.1 * value + 3.0]
    }

    /// The window model is the NAB detector itself: per feature, the same scores as RART run
    /// on that feature's values with the same hours.
    #[test]
    fn rart_model_scores_each_feature_as_the_nab_detector_does() {
        let (training, scored) = (750, 3000);
        let rows: Vec<Vec<f64>> = (0..training + scored).map(daily_window).collect();
        let times: Vec<i64> = (0..rows.len() as i64)
            .map(|i| i * FIVE_MINUTES_NS)
            .collect();
        let mut model = RartModel::default();
        model.fit_at(&rows[..training], &times[..training]).unwrap();
        let mut direct = [Rart::new(training), Rart::new(training)];
        let mut nonzero = 0;
        for (i, (row, &time)) in rows.iter().zip(&times).enumerate() {
            let hour = hour_of_day(time);
            let want: Vec<f64> = direct
                .iter_mut()
                .zip(row)
                .map(|(detector, &value)| detector.score_value(value, hour))
                .collect();
            if i < training {
                continue;
            }
            let got = model.score_at(row, time).unwrap();
            assert_eq!(got.to_bits(), want[0].max(want[1]).to_bits(), "window {i}");
            assert_eq!(model.last_scores, want, "window {i}");
            nonzero += usize::from(got > 0.0);
        }
        assert!(
            nonzero > 0,
            "every window scored 0: the comparison proved nothing"
        );
    }

    #[test]
    fn rart_model_flags_a_spike_and_names_its_feature() {
        let training = 750;
        let times = |range: std::ops::Range<usize>| -> Vec<i64> {
            range.map(|i| i as i64 * FIVE_MINUTES_NS).collect()
        };
        let rows: Vec<Vec<f64>> = (0..training).map(daily_window).collect();
        let mut model = BuiltinModel::Rart.build();
        model.fit_at(&rows, &times(0..training)).unwrap();
        let mut quiet_max: f64 = 0.0;
        for i in training..4000 {
            let score = model
                .score_at(&daily_window(i), i as i64 * FIVE_MINUTES_NS)
                .unwrap();
            if i >= 2000 {
                quiet_max = quiet_max.max(score);
            }
        }
        assert!(quiet_max < 0.5, "steady pattern scored up to {quiet_max}");
        let mut spike = daily_window(4000);
        spike[1] += 40.0;
        let score = model.score_at(&spike, 4000 * FIVE_MINUTES_NS).unwrap();
        assert!(score > 0.9, "spike scored {score}");
        let shares = model.contributions(&spike, &[]).unwrap();
        assert!(shares[1] > 0.5 && shares[1] > shares[0], "{shares:?}");
        // Probing leaves the state alone: the same window scores the same twice.
        let probe = daily_window(4001);
        assert_eq!(
            model.probe(&probe).unwrap().to_bits(),
            model.probe(&probe).unwrap().to_bits()
        );
    }

    /// Three channels with deterministic noise of different scales.
    fn pump_row(i: usize) -> Vec<f64> {
        let noise = |k: usize| ((i * k) % 17) as f64 / 17.0 - 0.5;
        vec![
            10.0 + noise(7919),
            100.0 + 5.0 * noise(104_729),
            2.0 + 0.1 * noise(1_299_709),
        ]
    }

    #[test]
    fn dbz_model_scores_what_it_probes_and_names_the_shifted_channel() {
        let rows: Vec<Vec<f64>> = (0..150).map(pump_row).collect();
        let mut model = BuiltinModel::Dbz.build();
        let err = model.fit(&rows[..80]).unwrap_err().to_string();
        assert!(err.contains("140") && err.contains("80"), "{err}");
        model.fit(&rows).unwrap();
        let mut quiet_max: f64 = 0.0;
        for i in 150..400 {
            let row = pump_row(i);
            let probed = model.probe(&row).unwrap();
            let scored = model.score(&row).unwrap();
            // The probe predicts the score exactly and leaves the state alone.
            assert_eq!(probed.to_bits(), scored.to_bits(), "window {i}");
            quiet_max = quiet_max.max(scored);
        }
        assert!(quiet_max < 1.0, "normal windows scored up to {quiet_max}");
        // The second channel drifts up by 20 (four of its noise widths); the rolling mean
        // takes a few windows to cross DBZ's threshold.
        let mut alarm = None;
        for i in 400..430 {
            let mut row = pump_row(i);
            row[1] += 20.0;
            let score = model.score(&row).unwrap();
            if score > 1.0 {
                alarm = Some((i, model.contributions(&row, &[]).unwrap()));
                break;
            }
        }
        let (at, shares) = alarm.expect("the shift was never flagged");
        assert!(at < 420, "flagged only at window {at}");
        assert!(
            shares[1] > 0.8 && shares[1] > shares[0] && shares[1] > shares[2],
            "{shares:?}"
        );
    }

    /// The deployed model flags exactly the rows the benchmarked detector alarms on,
    /// including the 30 rows its alarm holds after a short excursion.
    #[test]
    fn dbz_model_flags_what_the_benchmarked_detector_alarms() {
        let rows: Vec<Vec<f64>> = (0..150).map(pump_row).collect();
        let mut model = BuiltinModel::Dbz.build();
        model.fit(&rows).unwrap();
        let mut detector = Dbz::new(DbzConfig::default());
        detector.fit(&rows).unwrap();
        let (mut alarms, mut held) = (0, 0);
        for i in 150..400 {
            let mut row = pump_row(i);
            if (200..215).contains(&i) {
                row[1] += 40.0;
            }
            let flagged = model.score(&row).unwrap() > 1.0;
            let step = detector.step(&row).unwrap();
            assert_eq!(flagged, step.alarm, "row {i}");
            alarms += usize::from(step.alarm);
            held += usize::from(step.alarm && step.max_z <= 6.0);
        }
        assert!(held >= 30, "the hold was exercised: {held} of {alarms}");
    }

    /// While DBZ's alarm holds after an excursion of one channel, the windows it flags name
    /// that channel, even when another one is the larger of their own small z's.
    #[test]
    fn a_held_dbz_alarm_names_the_signal_that_raised_it() {
        let rows: Vec<Vec<f64>> = (0..150).map(pump_row).collect();
        let mut model = DbzModel::default();
        model.fit(&rows).unwrap();
        for i in 150..200 {
            model.score(&pump_row(i)).unwrap();
        }
        let mut raised = false;
        let mut held_while_other_larger = 0;
        for i in 200..260 {
            let mut row = pump_row(i);
            if i < 215 {
                row[1] += 40.0;
            } else {
                // After the excursion the first channel is a little off: once the second
                // one's rolling mean has settled, its own z is the larger, below the alarm.
                row[0] += 1.0;
            }
            let score = model.score(&row).unwrap();
            let shares = model.contributions(&row, &[]).unwrap();
            if score > 1.0 {
                raised |= i < 215;
                assert!(
                    shares[1] > shares[0] && shares[1] > shares[2],
                    "window {i}: {shares:?}"
                );
                let own = model.inner.last_channel_z();
                held_while_other_larger += usize::from(own[0] > own[1]);
            }
        }
        assert!(raised, "the excursion raised the alarm");
        assert!(held_while_other_larger > 0, "the hold was exercised");
    }

    #[test]
    fn rart_model_needs_a_probationary_period_and_a_steady_width() {
        let mut model = RartModel::default();
        let short: Vec<Vec<f64>> = (0..10).map(daily_window).collect();
        let err = model.fit(&short).unwrap_err().to_string();
        assert!(
            err.contains("16 training windows") && err.contains("10"),
            "{err}"
        );
        let rows: Vec<Vec<f64>> = (0..100).map(daily_window).collect();
        let err = model.fit_at(&rows, &[0; 99]).unwrap_err().to_string();
        assert!(err.contains("100 training windows but 99"), "{err}");
        model.fit(&rows).unwrap();
        let err = model.score(&[1.0]).unwrap_err().to_string();
        assert!(err.contains("1 ") && err.contains('2'), "{err}");
    }

    /// Robust z on the demo's pump windows with the demo's threshold (twice the largest
    /// training score): how often a healthy window crosses it, and how many faulty ones do,
    /// by training windows. The demo's pump-health pipeline takes 18 (decision 0008, session
    /// 25); `cargo test -p fabrik-ml --release --lib healthy_pump -- --nocapture` prints the
    /// table.
    #[test]
    fn robust_z_rarely_flags_a_healthy_pump_after_eighteen_training_windows() {
        for training in [12, 18] {
            let (mut normal, mut false_flags, mut faults, mut caught) = (0, 0, [0; 3], [0; 3]);
            for seed in 1..=200_u64 {
                let mut rng = crate::detectors::iforest::SplitMix(seed);
                let mut next = move || (rng.next() >> 11) as f64 / (1_u64 << 53) as f64;
                let training_rows: Vec<Vec<f64>> = (0..training)
                    .map(|_| pump_window(&mut next, PumpFault::None))
                    .collect();
                let mut model = BuiltinModel::RobustZ.build();
                model.fit(&training_rows).unwrap();
                let mut scores: Vec<f64> = training_rows
                    .iter()
                    .map(|r| model.probe(r).unwrap())
                    .collect();
                scores.sort_by(f64::total_cmp);
                let threshold = crate::pipeline::calibrated_threshold(&scores, 1.0, 2.0, None);
                for window in 0..60 {
                    let (fault, kind) = match window % 6 {
                        0 => (PumpFault::Spike, Some(0)),
                        1 => (PumpFault::Drift(1.0), Some(1)),
                        2 => (PumpFault::Stuck, Some(2)),
                        _ => (PumpFault::None, None),
                    };
                    let row = pump_window(&mut next, fault);
                    let flagged = usize::from(model.probe(&row).unwrap() > threshold);
                    match kind {
                        None => (normal, false_flags) = (normal + 1, false_flags + flagged),
                        Some(k) => (faults[k], caught[k]) = (faults[k] + 1, caught[k] + flagged),
                    }
                }
            }
            eprintln!(
                "{training} training windows: healthy windows flagged {false_flags} of {normal}; \
                 spikes {} of {}, drifts {} of {}, stuck sensors {} of {}",
                caught[0], faults[0], caught[1], faults[1], caught[2], faults[2]
            );
            if training == 18 {
                assert!(false_flags * 1000 <= normal, "{false_flags} of {normal}");
                assert_eq!(caught[..2], faults[..2], "every spike and drift is flagged");
            }
        }
    }

    /// PCA's threshold from training windows held out of the fit: on simulated healthy pumps
    /// (30 training windows, the default margin) the in-sample threshold flags about 10 % of
    /// healthy windows, the held-out one well under 1 %, both every spike.
    /// `cargo test -p fabrik-ml --release --lib held_out -- --nocapture` prints the counts.
    #[test]
    fn pca_calibrated_on_held_out_windows_rarely_flags_a_healthy_pump() {
        use crate::detectors::iforest::SplitMix;
        use crate::pipeline::{ThresholdSpec, calibrate_held_out, calibrated_threshold};
        let spec = ThresholdSpec::parse(&BuiltinModel::PcaT2Q.default_threshold()).unwrap();
        let ThresholdSpec::Quantile { quantile, margin } = spec else {
            panic!("{spec:?}");
        };
        let make = || BuiltinModel::PcaT2Q.build();
        let (mut normal, mut in_sample, mut held_out, mut spikes, mut caught) = (0, 0, 0, 0, 0);
        for seed in 1..=40_u64 {
            let mut rng = SplitMix(seed);
            let mut next = move || (rng.next() >> 11) as f64 / (1_u64 << 53) as f64;
            let rows: Vec<Vec<f64>> = (0..30)
                .map(|_| pump_window(&mut next, PumpFault::None))
                .collect();
            let times: Vec<i64> = (0..30).collect();
            let mut model = make();
            model.fit_at(&rows, &times).unwrap();
            let mut own: Vec<f64> = rows.iter().map(|r| model.probe(r).unwrap()).collect();
            own.sort_by(f64::total_cmp);
            let naive = calibrated_threshold(&own, quantile, margin, model.score_bound());
            let threshold = calibrate_held_out(&make, &rows, &times, model.as_ref(), spec).unwrap();
            for window in 0..60 {
                let fault = if window % 6 == 5 {
                    PumpFault::Spike
                } else {
                    PumpFault::None
                };
                let score = model.score(&pump_window(&mut next, fault)).unwrap();
                if fault == PumpFault::None {
                    normal += 1;
                    in_sample += usize::from(score > naive);
                    held_out += usize::from(score > threshold);
                } else {
                    spikes += 1;
                    caught += usize::from(score > threshold);
                }
            }
        }
        eprintln!(
            "PCA: healthy windows flagged {in_sample} of {normal} (in-sample threshold), \
             {held_out} (held out); spikes {caught} of {spikes}"
        );
        assert!(
            in_sample * 20 > normal,
            "the in-sample threshold's false alarms: {in_sample}"
        );
        assert!(held_out * 100 <= normal, "{held_out} of {normal}");
        assert_eq!(caught, spikes);

        // One spike among the training windows (a start-up transient) widens the fitted
        // covariance itself, and its score sets a max-based threshold: later spikes mostly
        // go unflagged however the threshold is calibrated (in-sample 31 of 200, held out
        // 0 of 200: the price of the clean case's 30 times fewer false alarms; a fault in
        // the training windows is what `fabrik pipeline retrain` is for). Held out, its
        // score is unbounded: the threshold stays within three times the in-sample one.
        let (mut spikes, mut caught, mut caught_in_sample) = (0, 0, 0);
        for seed in 41..=60_u64 {
            let mut rng = SplitMix(seed);
            let mut next = move || (rng.next() >> 11) as f64 / (1_u64 << 53) as f64;
            let rows: Vec<Vec<f64>> = (0..30)
                .map(|i| {
                    let fault = if i == 7 {
                        PumpFault::Spike
                    } else {
                        PumpFault::None
                    };
                    pump_window(&mut next, fault)
                })
                .collect();
            let times: Vec<i64> = (0..30).collect();
            let mut model = make();
            model.fit_at(&rows, &times).unwrap();
            let threshold = calibrate_held_out(&make, &rows, &times, model.as_ref(), spec).unwrap();
            let mut own: Vec<f64> = rows.iter().map(|r| model.probe(r).unwrap()).collect();
            own.sort_by(f64::total_cmp);
            let naive = calibrated_threshold(&own, quantile, margin, model.score_bound());
            assert!(
                threshold <= 3.0 * naive + 1e-9,
                "{threshold} against {naive}"
            );
            for _ in 0..10 {
                spikes += 1;
                let score = model
                    .score(&pump_window(&mut next, PumpFault::Spike))
                    .unwrap();
                caught += usize::from(score > threshold);
                caught_in_sample += usize::from(score > naive);
            }
        }
        eprintln!(
            "PCA with a spike in training: later spikes flagged {caught} of {spikes} \
             (in-sample threshold {caught_in_sample})"
        );
    }
}
