//! The detector traits and the closed registries of detectors.
//!
//! Two small traits: [`StreamingDetector`] for univariate streams (one timestamped value in,
//! a score in [0, 1] out, learning as it goes) and [`RowDetector`] for multivariate rows
//! (fitted on a training block, then one verdict per row). Each detector lives in its own
//! module; the kinds enums are the only place that lists them.

pub mod dbz;
pub mod ewma;
pub mod hst;
pub mod iforest;
pub mod pca;
pub mod rart;
pub mod robust_z;

use crate::MlError;

/// One univariate observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Nanoseconds since the Unix epoch (the unit of `fabrik_core::Timestamp`); wall-clock
    /// fields such as the hour of day are read from it as UTC.
    pub timestamp_ns: i64,
    /// The observed value.
    pub value: f64,
}

/// A univariate streaming anomaly detector.
pub trait StreamingDetector: Send {
    /// Scores `observation` against everything seen before it, then learns from it.
    /// Returns an anomaly score in [0, 1]; higher is more anomalous.
    fn score_then_learn(&mut self, observation: Observation) -> f64;
}

/// A multivariate row's verdict.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowVerdict {
    /// Anomaly score in [0, 1]; 0.5 is the detector's own alarm level where it has one.
    pub score: f64,
    /// The detector's alarm decision for this row.
    pub alarm: bool,
}

/// A multivariate anomaly detector: fitted on anomaly-free rows, then fed rows in time order.
pub trait RowDetector: Send {
    /// Fits on `training_rows` (all of the same width), replacing any earlier fit.
    fn fit(&mut self, training_rows: &[Vec<f64>]) -> Result<(), MlError>;

    /// Scores the next row (and, for adaptive detectors, learns from it).
    fn score_row(&mut self, row: &[f64]) -> Result<RowVerdict, MlError>;
}

/// Maps a non-negative z-like statistic onto [0, 1) monotonically without saturating, so a
/// threshold optimiser can still tell large deviations apart: `z / (z + half)` is 0.5 at
/// `z = half`.
pub(crate) fn unit_score(statistic: f64, half: f64) -> f64 {
    if statistic.is_nan() || statistic <= 0.0 {
        0.0
    } else if statistic.is_infinite() {
        1.0
    } else {
        statistic / (statistic + half)
    }
}

/// The univariate detectors, for runners that pick one by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamingDetectorKind {
    /// [`rart::Rart`], the NAB detector.
    Rart,
    /// [`robust_z::RobustZ`] with its default window.
    RobustZ,
    /// [`ewma::EwmaZ`] with its default smoothing.
    Ewma,
    /// [`hst::HalfSpaceTrees`] on min-max-scaled values.
    HalfSpaceTrees,
}

impl StreamingDetectorKind {
    /// Every kind, in a stable order.
    pub const ALL: [Self; 4] = [Self::Rart, Self::RobustZ, Self::Ewma, Self::HalfSpaceTrees];

    /// The name used in result paths and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Rart => "rart",
            Self::RobustZ => "robust_z",
            Self::Ewma => "ewma",
            Self::HalfSpaceTrees => "hst",
        }
    }

    /// The kind called `name`.
    pub fn from_name(name: &str) -> Result<Self, MlError> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| MlError::Parameter {
                name: "detector",
                reason: format!(
                    "unknown detector `{name}`; known: {}",
                    Self::ALL.map(Self::name).join(", ")
                ),
            })
    }

    /// A fresh detector for one stream whose first `probationary_period` rows are a learning
    /// period (NAB's probation): detectors that need a scale take it from those rows.
    pub fn build(self, probationary_period: usize) -> Box<dyn StreamingDetector> {
        match self {
            Self::Rart => Box::new(rart::Rart::new(probationary_period)),
            Self::RobustZ => Box::new(robust_z::RobustZ::new(robust_z::RobustZConfig::default())),
            Self::Ewma => Box::new(ewma::EwmaZ::new(ewma::EwmaConfig::default())),
            Self::HalfSpaceTrees => Box::new(hst::ScaledHalfSpaceTrees::new(
                hst::HstConfig::default(),
                probationary_period,
            )),
        }
    }
}

/// The multivariate detectors, for runners that pick one by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowDetectorKind {
    /// [`dbz::Dbz`], the SKAB detector.
    Dbz,
    /// [`pca::PcaT2Q`], SKAB's T²+Q baseline.
    PcaT2Q,
    /// [`iforest::IsolationForest`] with its default settings.
    IsolationForest,
}

impl RowDetectorKind {
    /// Every kind, in a stable order.
    pub const ALL: [Self; 3] = [Self::Dbz, Self::PcaT2Q, Self::IsolationForest];

    /// The name used in reports and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Dbz => "dbz",
            Self::PcaT2Q => "pca_t2q",
            Self::IsolationForest => "iforest",
        }
    }

    /// The kind called `name`.
    pub fn from_name(name: &str) -> Result<Self, MlError> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| MlError::Parameter {
                name: "detector",
                reason: format!(
                    "unknown detector `{name}`; known: {}",
                    Self::ALL.map(Self::name).join(", ")
                ),
            })
    }

    /// A fresh, unfitted detector.
    pub fn build(self) -> Box<dyn RowDetector> {
        match self {
            Self::Dbz => Box::new(dbz::Dbz::new(dbz::DbzConfig::default())),
            Self::PcaT2Q => Box::new(pca::PcaT2Q::new(pca::PcaConfig::default())),
            Self::IsolationForest => Box::new(iforest::IsolationForest::new(
                iforest::IsolationForestConfig::default(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() -> Result<(), MlError> {
        for kind in StreamingDetectorKind::ALL {
            assert_eq!(StreamingDetectorKind::from_name(kind.name())?, kind);
        }
        for kind in RowDetectorKind::ALL {
            assert_eq!(RowDetectorKind::from_name(kind.name())?, kind);
        }
        assert!(StreamingDetectorKind::from_name("numenta").is_err());
        Ok(())
    }

    #[test]
    fn unit_score_is_monotone_and_bounded() {
        assert_eq!(unit_score(0.0, 3.0), 0.0);
        assert_eq!(unit_score(3.0, 3.0), 0.5);
        assert!(unit_score(30.0, 3.0) < unit_score(300.0, 3.0));
        assert!(unit_score(1e300, 3.0) <= 1.0);
        assert_eq!(unit_score(f64::INFINITY, 3.0), 1.0);
        assert_eq!(unit_score(f64::NAN, 3.0), 0.0);
    }
}
