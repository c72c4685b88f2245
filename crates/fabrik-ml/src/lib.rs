//! Fabrik's streaming anomaly detection and its benchmark evaluations.
//!
//! - [`detectors`]: the [`StreamingDetector`] and [`RowDetector`] traits and the detectors:
//!   RART (NAB), DBZ (SKAB), robust z-score, EWMA z-score, Half-Space Trees, PCA T²+Q and
//!   Isolation Forest.
//! - [`drift`]: data drift between a reference sample and a current one, Evidently's tests and
//!   verdicts reproduced.
//! - [`nab`]: runs a detector over a Numenta Anomaly Benchmark tree and scores results exactly
//!   as NAB's own scorer does.
//! - [`pipeline`]: windows, features (FFT band power included), window models with
//!   per-feature explanations, and calibrated thresholds: the compute of inference pipelines.
//! - [`sequential`]: Wald's SPRT and the mixture SPRT, decisions between models that stay
//!   valid however often they are read.
//! - [`skab`]: the Skoltech Anomaly Benchmark protocol (per-file training split, F1/FAR/MAR and
//!   SKAB's changepoint score).
//!
//! This crate does CPU work only, with no async runtime and no logging; the benchmark runners
//! read and write files given to them and nothing else. Benchmark data never ships with it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cbpe;
mod delimited;
pub mod detectors;
pub mod drift;
mod error;
mod linalg;
pub mod nab;
mod numeric;
pub mod permutation;
pub mod pipeline;
pub mod pyrandom;
pub mod sequential;
pub mod skab;
mod special;
pub mod time;

pub use detectors::{
    Observation, RowDetector, RowDetectorKind, RowVerdict, StreamingDetector, StreamingDetectorKind,
};
pub use error::MlError;
