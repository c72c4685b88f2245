//! The public entry point, [`Model`]: decode an `.onnx` file, compile it into a plan once, run it
//! many times. `run` validates the inputs against the declared signature and does no parsing.

use std::collections::HashMap;

use prost::Message;

use crate::error::{OnnxError, Result};
use crate::exec;
use crate::plan::{self, Plan};
use crate::proto::ModelProto;
use crate::signature::ValueInfo;
use crate::tensor::Tensor;
use crate::value::Value;

/// A loaded, compiled ONNX model. Immutable and `Send + Sync`: share it between threads and
/// call [`Model::run`] concurrently.
#[derive(Debug)]
pub struct Model {
    plan: Plan,
    producer: String,
    ir_version: i64,
    opsets: Vec<(String, i64)>,
}

/// The newest `ai.onnx` opset a model may import (ONNX 1.18).
const MAX_ONNX_OPSET: i64 = 23;
/// The newest `ai.onnx.ml` opset a model may import.
const MAX_ML_OPSET: i64 = 5;
/// The newest IR version a model may declare (ONNX 1.18).
const MAX_IR_VERSION: i64 = 11;

impl Model {
    /// Decodes and compiles a serialized `ModelProto`. Fails on malformed protobuf or graphs,
    /// on operators this crate does not implement (all of them at once, by domain; see
    /// [`crate::supported_operators`]) and on attribute values it cannot honour.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let m = ModelProto::decode(bytes)?;
        let graph = m
            .graph
            .as_ref()
            .ok_or_else(|| OnnxError::InvalidModel("the model has no graph".into()))?;
        if m.ir_version > MAX_IR_VERSION {
            return Err(OnnxError::InvalidModel(format!(
                "IR version {} is newer than this evaluator knows ({MAX_IR_VERSION}); export \
                 with an older onnx package",
                m.ir_version
            )));
        }
        let mut opsets = HashMap::new();
        let mut opset_list = Vec::new();
        for o in &m.opset_import {
            let domain = if o.domain == "ai.onnx" {
                ""
            } else {
                o.domain.as_str()
            };
            // A newer opset may change what an operator means; its models are refused, as
            // onnxruntime refuses opsets it does not know, rather than run by older rules.
            let newest = match domain {
                "" => Some(MAX_ONNX_OPSET),
                "ai.onnx.ml" => Some(MAX_ML_OPSET),
                _ => None,
            };
            if let Some(newest) = newest
                && o.version > newest
            {
                return Err(OnnxError::InvalidModel(format!(
                    "the model imports opset {} of {}; this evaluator runs opsets up to \
                     {newest} (export with a lower one, e.g. torch.onnx.export(..., \
                     opset_version=17) or skl2onnx's target_opset)",
                    o.version,
                    if domain.is_empty() { "ai.onnx" } else { domain }
                )));
            }
            // Keep the highest version if a domain is imported twice.
            let e = opsets.entry(domain.to_string()).or_insert(o.version);
            *e = (*e).max(o.version);
            opset_list.push((o.domain.clone(), o.version));
        }
        let plan = plan::compile(graph, &opsets)?;
        Ok(Self {
            plan,
            producer: format!("{} {}", m.producer_name, m.producer_version)
                .trim()
                .to_string(),
            ir_version: m.ir_version,
            opsets: opset_list,
        })
    }

    /// Reads and compiles an `.onnx` file.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| OnnxError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        Self::from_bytes(&bytes)
    }

    /// Declared graph inputs (initializers excluded), in order.
    pub fn inputs(&self) -> &[ValueInfo] {
        &self.plan.inputs
    }

    /// Declared graph outputs, in order.
    pub fn outputs(&self) -> &[ValueInfo] {
        &self.plan.output_infos
    }

    /// Producer name and version (e.g. `skl2onnx 1.20.0`).
    pub fn producer(&self) -> &str {
        &self.producer
    }

    /// ONNX IR version.
    pub fn ir_version(&self) -> i64 {
        self.ir_version
    }

    /// Imported opsets as (domain, version).
    pub fn opsets(&self) -> &[(String, i64)] {
        &self.opsets
    }

    /// Number of compiled steps (nodes left after constant folding).
    pub fn n_steps(&self) -> usize {
        self.plan.steps.len()
    }

    /// Runs the model. Every declared input must be given exactly once, with the declared
    /// element type, rank and fixed dimensions. Returns every graph output, in declared order.
    pub fn run(&self, inputs: &[(&str, Tensor)]) -> Result<Vec<(String, Value)>> {
        let mut bound: Vec<(usize, &Tensor)> = Vec::with_capacity(inputs.len());
        for (name, t) in inputs {
            let k = self
                .plan
                .inputs
                .iter()
                .position(|i| i.name == *name)
                .ok_or_else(|| OnnxError::BadInput {
                    name: (*name).to_string(),
                    message: format!(
                        "the model has no such input (inputs: {})",
                        self.plan
                            .inputs
                            .iter()
                            .map(|i| format!("'{}': {}", i.name, i.describe()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })?;
            let slot = self.plan.input_slots[k];
            if bound.iter().any(|&(s, _)| s == slot) {
                return Err(OnnxError::BadInput {
                    name: (*name).to_string(),
                    message: "given more than once".into(),
                });
            }
            self.plan.inputs[k].check(t)?;
            bound.push((slot, t));
        }
        if let Some(missing) = self
            .plan
            .inputs
            .iter()
            .zip(&self.plan.input_slots)
            .find(|(_, s)| !bound.iter().any(|(b, _)| b == *s))
        {
            return Err(OnnxError::BadInput {
                name: missing.0.name.clone(),
                message: format!("missing; expected {}", missing.0.describe()),
            });
        }
        exec::run(&self.plan, &bound)
    }
}
