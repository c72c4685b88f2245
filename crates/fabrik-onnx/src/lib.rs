//! `fabrik-onnx`: a small native ONNX evaluator for the models Fabrik ships that tract cannot
//! run — scikit-learn pipelines exported by skl2onnx (IsolationForest, RandomForest and
//! GradientBoosting classifiers, LogisticRegression, LinearSVC, LinearRegression, Scaler,
//! Normalizer, LabelEncoder, ZipMap) — plus the small dense networks users export from torch
//! (MatMul/Gemm, activations, BatchNormalization, Softmax, reductions, shape and layout
//! operators), so one engine runs them all. [`supported_operators`] lists every operator; a
//! model using any other fails to load with an error naming all of them.
//!
//! ```no_run
//! use fabrik_onnx::{Model, Tensor};
//! # fn main() -> Result<(), fabrik_onnx::OnnxError> {
//! let model = Model::from_file("iforest_100.onnx")?;
//! let x = Tensor::from_f32(vec![1, 8], vec![0.0; 8])?;
//! for (name, value) in model.run(&[("X", x)])? {
//!     println!("{name}: {value:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! Modules and what they own:
//! - [`model`]: [`Model`] — load (decode + compile once) and run;
//! - [`signature`]: declared inputs/outputs ([`ValueInfo`], [`Dim`]) and input validation;
//! - [`tensor`] / [`value`]: the data types crossing the API ([`Tensor`], [`Value`],
//!   [`MapSequence`]);
//! - `proto`: the hand-written `prost` messages for the subset of onnx.proto read;
//! - `plan`: graph → plan compilation (topological order, constants, last use);
//! - `exec`: the run loop;
//! - `attrs`: typed attribute access for kernel builders;
//! - `ops`: the operator kernels, one submodule per family (element-wise, activations,
//!   normalisations, reductions, shape, layout, linear algebra, ONNX-ML);
//! - [`error`]: [`OnnxError`], the single error type.
//!
//! Semantics follow the ONNX operator specs; where the spec is vague (ONNX-ML tree ensembles
//! with two classes, single-target post-transforms, ...) they follow onnxruntime, whose outputs
//! are the reference this crate is tested against.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod attrs;
pub mod error;
mod exec;
pub mod model;
mod ops;
mod plan;
mod proto;
pub mod signature;
pub mod tensor;
pub mod value;

pub use error::{OnnxError, Result, UnsupportedOperator};
pub use model::Model;
pub use signature::{Dim, ValueInfo, ValueKind};
pub use tensor::{ElementType, Tensor, TensorData};
pub use value::{MapKeys, MapSequence, Value};

/// Every operator this crate runs, as (domain, op type) pairs sorted by domain then op type —
/// check a model against it before uploading. Any other operator fails [`Model::from_bytes`]
/// with [`OnnxError::UnsupportedOperators`], which lists all of them at once.
pub fn supported_operators() -> Vec<(&'static str, &'static str)> {
    ops::Domain::ALL
        .iter()
        .flat_map(|&d| ops::supported(d).into_iter().map(move |op| (d.name(), op)))
        .collect()
}
