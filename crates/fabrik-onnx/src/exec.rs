//! Running a compiled [`Plan`]: the per-run value environment ([`Env`]) and the step loop.
//! Graph inputs are borrowed, not copied; intermediate values are dropped right after their
//! last reader, and graph outputs are moved out at the end.

use crate::error::{OnnxError, Result};
use crate::ops::{Inputs, KResult};
use crate::plan::{Plan, Ref};
use crate::tensor::Tensor;
use crate::value::Value;

/// The content of a run-time slot.
enum Slot<'a> {
    Empty,
    Borrowed(&'a Tensor),
    Owned(Value),
}

/// Constants plus this run's slots.
pub(crate) struct Env<'a> {
    consts: &'a [Tensor],
    slots: Vec<Slot<'a>>,
}

impl<'a> Env<'a> {
    /// An environment over `consts` with `n_slots` empty slots.
    pub(crate) fn new(consts: &'a [Tensor], n_slots: usize) -> Self {
        let mut slots = Vec::with_capacity(n_slots);
        slots.resize_with(n_slots, || Slot::Empty);
        Self { consts, slots }
    }

    /// The tensor behind `r`.
    pub(crate) fn tensor(&self, r: Ref) -> KResult<&Tensor> {
        match r {
            Ref::Const(i) => self
                .consts
                .get(i)
                .ok_or_else(|| "bad constant reference".to_string()),
            Ref::Slot(i) => match self.slots.get(i) {
                Some(Slot::Borrowed(t)) => Ok(t),
                Some(Slot::Owned(Value::Tensor(t))) => Ok(t),
                Some(Slot::Owned(Value::Maps(_))) => {
                    Err("expected a tensor, got a sequence of maps".into())
                }
                _ => Err("value is not available (internal scheduling error)".into()),
            },
        }
    }

    fn set(&mut self, slot: usize, v: Value) {
        self.slots[slot] = Slot::Owned(v);
    }

    fn take(&mut self, r: Ref, clone: bool) -> Result<Value> {
        let v = match r {
            Ref::Const(i) => self.consts.get(i).cloned().map(Value::Tensor),
            Ref::Slot(i) => {
                if clone {
                    match &self.slots[i] {
                        Slot::Borrowed(t) => Some(Value::Tensor((*t).clone())),
                        Slot::Owned(v) => Some(v.clone()),
                        Slot::Empty => None,
                    }
                } else {
                    match std::mem::replace(&mut self.slots[i], Slot::Empty) {
                        Slot::Borrowed(t) => Some(Value::Tensor(t.clone())),
                        Slot::Owned(v) => Some(v),
                        Slot::Empty => None,
                    }
                }
            }
        };
        v.ok_or_else(|| OnnxError::InvalidModel("graph output was never computed".into()))
    }
}

/// Runs `plan` with graph inputs already bound to their slots.
pub(crate) fn run<'a>(
    plan: &'a Plan,
    inputs: &[(usize, &'a Tensor)],
) -> Result<Vec<(String, Value)>> {
    let mut env = Env::new(&plan.consts, plan.n_slots);
    for &(slot, t) in inputs {
        env.slots[slot] = Slot::Borrowed(t);
    }
    let mut out: Vec<Value> = Vec::with_capacity(4);
    for step in &plan.steps {
        out.clear();
        {
            let ins = Inputs::new(&step.inputs, &env);
            step.kernel
                .eval(&ins, &mut out)
                .map_err(|message| OnnxError::Runtime {
                    node: step.name.clone(),
                    op_type: step.op_type.clone(),
                    message,
                })?;
        }
        if out.len() < step.outputs.len() {
            return Err(OnnxError::Runtime {
                node: step.name.clone(),
                op_type: step.op_type.clone(),
                message: format!(
                    "produced {} outputs, {} declared",
                    out.len(),
                    step.outputs.len()
                ),
            });
        }
        for (slot, v) in step.outputs.iter().zip(out.drain(..)) {
            if let Some(s) = slot {
                env.set(*s, v);
            }
        }
        for &s in &step.free {
            env.slots[s] = Slot::Empty;
        }
    }
    let mut result = Vec::with_capacity(plan.outputs.len());
    for o in &plan.outputs {
        result.push((o.name.clone(), env.take(o.value, o.clone)?));
    }
    Ok(result)
}

/// Evaluates one node on constant inputs at load time (constant folding).
pub(crate) fn fold(
    kernel: &dyn crate::ops::Kernel,
    consts: &[Tensor],
    inputs: &[Option<Ref>],
) -> KResult<Vec<Value>> {
    let env = Env::new(consts, 0);
    let ins = Inputs::new(inputs, &env);
    let mut out = Vec::new();
    kernel.eval(&ins, &mut out)?;
    Ok(out)
}
