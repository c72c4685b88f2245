//! `ai.onnx.ml` operators: the tree ensembles ([`tree`], [`regressor`], [`classifier`],
//! [`transform`]), LinearClassifier and LinearRegressor ([`linear`]), [`label_encoder`],
//! Scaler, Normalizer and ArrayFeatureExtractor ([`preprocess`]) and [`zipmap`].

pub(crate) mod classifier;
pub(crate) mod label_encoder;
pub(crate) mod linear;
pub(crate) mod preprocess;
pub(crate) mod regressor;
pub(crate) mod transform;
pub(crate) mod tree;
pub(crate) mod zipmap;

use super::{KResult, Kernel, NodeCtx};

/// The operators [`build`] implements.
pub(crate) const OPS: &[&str] = &[
    "TreeEnsembleRegressor",
    "TreeEnsembleClassifier",
    "LabelEncoder",
    "LinearClassifier",
    "LinearRegressor",
    "Scaler",
    "Normalizer",
    "ZipMap",
    "ArrayFeatureExtractor",
];

/// Builds the `ai.onnx.ml` kernel for `op`, or `None` when it is not supported.
pub(crate) fn build(op: &str, ctx: &NodeCtx<'_>) -> KResult<Option<Box<dyn Kernel>>> {
    Ok(Some(match op {
        "TreeEnsembleRegressor" => Box::new(regressor::build(ctx)?),
        "TreeEnsembleClassifier" => {
            if !(1..=2).contains(&ctx.n_outputs) {
                return Err(format!("expected 1 or 2 outputs, got {}", ctx.n_outputs));
            }
            Box::new(classifier::build(ctx)?)
        }
        "LabelEncoder" => Box::new(label_encoder::build(ctx)?),
        "LinearClassifier" => Box::new(linear::build_classifier(ctx)?),
        "LinearRegressor" => Box::new(linear::build_regressor(ctx)?),
        "Scaler" => Box::new(preprocess::build_scaler(ctx)?),
        "Normalizer" => Box::new(preprocess::build_normalizer(ctx)?),
        "ZipMap" => Box::new(zipmap::build(ctx)?),
        "ArrayFeatureExtractor" => {
            if ctx.n_inputs != 2 || ctx.n_outputs != 1 {
                return Err(format!(
                    "expected 2 inputs and 1 output, got {} and {}",
                    ctx.n_inputs, ctx.n_outputs
                ));
            }
            Box::new(preprocess::ArrayFeatureExtractor)
        }
        _ => return Ok(None),
    }))
}
