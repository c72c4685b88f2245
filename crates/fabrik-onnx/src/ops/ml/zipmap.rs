//! `ai.onnx.ml:ZipMap`: turns a `[N, C]` probability matrix into a sequence of N maps keyed by
//! the class labels ([`crate::MapSequence`]).

use super::classifier::Labels;
use crate::ops::{Inputs, KResult, Kernel, NodeCtx};
use crate::value::{MapKeys, MapSequence, Value};

/// A compiled ZipMap.
#[derive(Debug)]
pub(crate) struct ZipMap {
    keys: MapKeys,
}

/// Builds a ZipMap.
pub(crate) fn build(ctx: &NodeCtx<'_>) -> KResult<ZipMap> {
    let keys = match Labels::read(&ctx.attrs)? {
        Labels::Int64(v) => MapKeys::Int64(v),
        Labels::String(v) => MapKeys::String(v),
    };
    Ok(ZipMap { keys })
}

impl Kernel for ZipMap {
    fn eval(&self, ins: &Inputs<'_>, out: &mut Vec<Value>) -> KResult<()> {
        let t = ins.get(0)?;
        let x = t.as_f32().ok_or("ZipMap input must be float")?;
        let c = match t.shape() {
            [c] | [_, c] => *c,
            s => return Err(format!("ZipMap input must be 1-D or 2-D, got {s:?}")),
        };
        if c != self.keys.len() {
            return Err(format!(
                "input has {c} columns but there are {} labels",
                self.keys.len()
            ));
        }
        out.push(Value::Maps(MapSequence::new(self.keys.clone(), x.to_vec())));
        Ok(())
    }

    fn foldable(&self) -> bool {
        false
    }
}
