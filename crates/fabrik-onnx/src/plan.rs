//! Compiling a decoded ONNX graph into an executable [`Plan`] at load time: value naming and
//! slot assignment, topological ordering, kernel construction (attributes resolved, trees
//! flattened), constant folding, `Constant` nodes, and last-use analysis so `run` frees
//! intermediates early. Unsupported operators are reported here, all of them at once (distinct
//! domain and op type, with the nodes using them), before any kernel is built.

use std::collections::HashMap;

use crate::attrs::Attrs;
use crate::error::{OnnxError, Result, UnsupportedOperator};
use crate::exec;
use crate::ops::{self, Domain, Kernel, NodeCtx};
use crate::proto::{GraphProto, NodeProto};
use crate::signature::ValueInfo;
use crate::tensor::{Tensor, TensorData};
use crate::value::Value;

/// Where a value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ref {
    /// Index into [`Plan::consts`].
    Const(usize),
    /// Index of a run-time slot.
    Slot(usize),
}

/// One node to execute.
#[derive(Debug)]
pub(crate) struct Step {
    pub(crate) kernel: Box<dyn Kernel>,
    pub(crate) inputs: Vec<Option<Ref>>,
    /// Slot per declared output (`None` for omitted outputs).
    pub(crate) outputs: Vec<Option<usize>>,
    /// Slots whose last reader is this step.
    pub(crate) free: Vec<usize>,
    pub(crate) name: String,
    pub(crate) op_type: String,
}

/// A graph output and how to hand it back.
#[derive(Debug)]
pub(crate) struct PlanOutput {
    pub(crate) name: String,
    pub(crate) value: Ref,
    /// The same value is returned again later: clone instead of moving.
    pub(crate) clone: bool,
}

/// The compiled graph.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) consts: Vec<Tensor>,
    pub(crate) n_slots: usize,
    /// Slot of each declared (non-initializer) graph input, in declaration order.
    pub(crate) input_slots: Vec<usize>,
    pub(crate) inputs: Vec<ValueInfo>,
    pub(crate) outputs: Vec<PlanOutput>,
    pub(crate) output_infos: Vec<ValueInfo>,
    pub(crate) steps: Vec<Step>,
}

fn node_label(n: &NodeProto) -> String {
    if !n.name.is_empty() {
        n.name.clone()
    } else {
        n.output.first().cloned().unwrap_or_default()
    }
}

fn bad_node(n: &NodeProto, message: impl Into<String>) -> OnnxError {
    OnnxError::BadNode {
        node: node_label(n),
        op_type: n.op_type.clone(),
        message: message.into(),
    }
}

/// The domain name an unsupported-operator report shows for `n`.
fn domain_label(n: &NodeProto) -> &str {
    if n.domain.is_empty() {
        "ai.onnx"
    } else {
        &n.domain
    }
}

/// Fails listing every operator of `g` this crate does not implement (each distinct domain and
/// op type once, with all its nodes), so a user fixes a model in one round, not op by op.
fn check_supported(g: &GraphProto) -> Result<()> {
    let mut missing: Vec<UnsupportedOperator> = Vec::new();
    for n in &g.node {
        if Domain::parse(&n.domain).is_some_and(|d| ops::is_supported(d, &n.op_type)) {
            continue;
        }
        let domain = domain_label(n);
        match missing
            .iter_mut()
            .find(|o| o.domain == domain && o.op_type == n.op_type)
        {
            Some(o) => o.nodes.push(node_label(n)),
            None => missing.push(UnsupportedOperator {
                domain: domain.to_string(),
                op_type: n.op_type.clone(),
                nodes: vec![node_label(n)],
            }),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    missing.sort_by(|a, b| (&a.domain, &a.op_type).cmp(&(&b.domain, &b.op_type)));
    Err(OnnxError::UnsupportedOperators { operators: missing })
}

/// Topological order of the nodes (stable: ready nodes run in file order).
fn topo_order(g: &GraphProto, available: &HashMap<String, Ref>) -> Result<Vec<usize>> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if available.contains_key(o.as_str()) || producer.insert(o.as_str(), i).is_some() {
                return Err(OnnxError::InvalidModel(format!(
                    "value '{o}' is defined more than once"
                )));
            }
        }
    }
    let mut indegree = vec![0usize; g.node.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); g.node.len()];
    for (i, n) in g.node.iter().enumerate() {
        for inp in n.input.iter().filter(|s| !s.is_empty()) {
            if let Some(&p) = producer.get(inp.as_str()) {
                indegree[i] += 1;
                users[p].push(i);
            } else if !available.contains_key(inp.as_str()) {
                return Err(OnnxError::InvalidModel(format!(
                    "node '{}' reads '{inp}', which no node, input or initializer defines",
                    node_label(n)
                )));
            }
        }
    }
    // Min-heap on node index keeps file order among ready nodes.
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = indegree
        .iter()
        .enumerate()
        .filter(|&(_, &d)| d == 0)
        .map(|(i, _)| std::cmp::Reverse(i))
        .collect();
    let mut order = Vec::with_capacity(g.node.len());
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        order.push(i);
        for &u in &users[i] {
            indegree[u] -= 1;
            if indegree[u] == 0 {
                ready.push(std::cmp::Reverse(u));
            }
        }
    }
    if order.len() != g.node.len() {
        return Err(OnnxError::InvalidModel("the graph has a cycle".into()));
    }
    Ok(order)
}

/// The tensor of a `Constant` node.
fn constant_value(n: &NodeProto) -> Result<Tensor> {
    let a = Attrs::new(n).map_err(|m| bad_node(n, m))?;
    let err = |m: String| bad_node(n, m);
    if let Some(t) = a.tensor("value").map_err(err)? {
        return Ok(t);
    }
    if a.has("value_float") {
        return Ok(Tensor::raw(
            vec![],
            TensorData::F32(vec![a.float_or("value_float", 0.0).map_err(err)?]),
        ));
    }
    if a.has("value_int") {
        return Ok(Tensor::raw(
            vec![],
            TensorData::I64(vec![a.int_or("value_int", 0).map_err(err)?]),
        ));
    }
    if a.has("value_floats") {
        let v = a.floats("value_floats").map_err(err)?.to_vec();
        return Ok(Tensor::raw(vec![v.len()], TensorData::F32(v)));
    }
    if a.has("value_ints") {
        let v = a.ints("value_ints").map_err(err)?.to_vec();
        return Ok(Tensor::raw(vec![v.len()], TensorData::I64(v)));
    }
    Err(bad_node(n, "Constant without a supported value attribute"))
}

/// Compiles `g` given the model's opset imports.
pub(crate) fn compile(g: &GraphProto, opsets: &HashMap<String, i64>) -> Result<Plan> {
    if !g.sparse_initializer.is_empty() {
        return Err(OnnxError::InvalidModel(
            "sparse initializers are not supported".into(),
        ));
    }
    check_supported(g)?;
    let mut consts: Vec<Tensor> = Vec::new();
    let mut names: HashMap<String, Ref> = HashMap::new();
    for t in &g.initializer {
        names.insert(t.name.clone(), Ref::Const(consts.len()));
        consts.push(Tensor::from_proto(t)?);
    }
    let mut n_slots = 0usize;
    let mut inputs = Vec::new();
    let mut input_slots = Vec::new();
    for i in &g.input {
        // An input that is also an initializer is a constant with a default (IR < 4 style).
        if names.contains_key(&i.name) {
            continue;
        }
        names.insert(i.name.clone(), Ref::Slot(n_slots));
        input_slots.push(n_slots);
        inputs.push(ValueInfo::from_proto(i));
        n_slots += 1;
    }
    let order = topo_order(g, &names)?;
    let mut steps: Vec<Step> = Vec::new();
    for &ni in &order {
        let n = &g.node[ni];
        if n.op_type == "Constant" && Domain::parse(&n.domain) == Some(Domain::Onnx) {
            let t = constant_value(n)?;
            if let Some(o) = n.output.first() {
                names.insert(o.clone(), Ref::Const(consts.len()));
                consts.push(t);
            }
            continue;
        }
        // Only reached if an operator list and its builder disagree (`check_supported` ran).
        let unsupported = || OnnxError::UnsupportedOperators {
            operators: vec![UnsupportedOperator {
                domain: domain_label(n).to_string(),
                op_type: n.op_type.clone(),
                nodes: vec![node_label(n)],
            }],
        };
        let domain = Domain::parse(&n.domain).ok_or_else(unsupported)?;
        let opset_key = if domain == Domain::Onnx {
            ""
        } else {
            "ai.onnx.ml"
        };
        let opset = opsets.get(opset_key).copied().unwrap_or(1);
        let refs: Vec<Option<Ref>> = n
            .input
            .iter()
            .map(|s| {
                if s.is_empty() {
                    None
                } else {
                    names.get(s).copied()
                }
            })
            .collect();
        let ctx = NodeCtx {
            attrs: Attrs::new(n).map_err(|m| bad_node(n, m))?,
            consts: refs
                .iter()
                .map(|r| match r {
                    Some(Ref::Const(i)) => consts.get(*i),
                    _ => None,
                })
                .collect(),
            n_inputs: n.input.len(),
            n_outputs: n.output.len(),
            opset,
        };
        let kernel = ops::build(domain, n, &ctx)
            .map_err(|m| bad_node(n, m))?
            .ok_or_else(unsupported)?;
        let all_const = refs.iter().any(Option::is_some)
            && refs.iter().all(|r| matches!(r, None | Some(Ref::Const(_))));
        if all_const && kernel.foldable() {
            let values = exec::fold(kernel.as_ref(), &consts, &refs).map_err(|m| bad_node(n, m))?;
            for (name, v) in n.output.iter().zip(values) {
                if let (false, Value::Tensor(t)) = (name.is_empty(), v) {
                    names.insert(name.clone(), Ref::Const(consts.len()));
                    consts.push(t);
                }
            }
            continue;
        }
        let outputs = n
            .output
            .iter()
            .map(|o| {
                if o.is_empty() {
                    None
                } else {
                    names.insert(o.clone(), Ref::Slot(n_slots));
                    n_slots += 1;
                    Some(n_slots - 1)
                }
            })
            .collect();
        steps.push(Step {
            kernel,
            inputs: refs,
            outputs,
            free: Vec::new(),
            name: node_label(n),
            op_type: n.op_type.clone(),
        });
    }
    // Graph outputs.
    let mut outputs = Vec::new();
    let mut output_infos = Vec::new();
    for o in &g.output {
        let value = *names.get(&o.name).ok_or_else(|| {
            OnnxError::InvalidModel(format!("graph output '{}' is never defined", o.name))
        })?;
        outputs.push(PlanOutput {
            name: o.name.clone(),
            value,
            clone: false,
        });
        output_infos.push(ValueInfo::from_proto(o));
    }
    for i in 0..outputs.len() {
        outputs[i].clone = outputs[i + 1..]
            .iter()
            .any(|later| later.value == outputs[i].value);
    }
    // Last use: free each slot after its last reader (never graph outputs or inputs).
    let mut last_use: Vec<Option<usize>> = vec![None; n_slots];
    for (si, s) in steps.iter().enumerate() {
        for r in s.inputs.iter().flatten() {
            if let Ref::Slot(i) = r {
                last_use[*i] = Some(si);
            }
        }
        for o in s.outputs.iter().flatten() {
            if last_use[*o].is_none() {
                last_use[*o] = Some(si);
            }
        }
    }
    let mut keep = vec![false; n_slots];
    for o in &outputs {
        if let Ref::Slot(i) = o.value {
            keep[i] = true;
        }
    }
    for &i in &input_slots {
        keep[i] = true;
    }
    for (slot, last) in last_use.iter().enumerate() {
        if let (Some(si), false) = (last, keep[slot]) {
            steps[*si].free.push(slot);
        }
    }
    Ok(Plan {
        consts,
        n_slots,
        input_slots,
        inputs,
        outputs,
        output_infos,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, domain: &str, name: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            domain: domain.into(),
            name: name.into(),
            input: inputs.iter().map(|s| (*s).to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    /// A torch LSTM export used to be rejected naming only its first unsupported node; now
    /// every unsupported operator is listed, once, grouped by domain, whatever the graph order.
    #[test]
    fn every_unsupported_operator_is_reported_at_once() {
        let g = GraphProto {
            node: vec![
                node("Relu", "", "r", &["x"], "a"),
                node("LSTM", "", "lstm0", &["a"], "b"),
                node("SVMClassifier", "ai.onnx.ml", "svm", &["b"], "c"),
                node("LSTM", "ai.onnx", "lstm1", &["c"], "d"),
                node("FusedGemm", "com.microsoft", "", &["d"], "e"),
                node("GRU", "", "gru", &["e"], "f"),
                node("Add", "", "add", &["f", "f"], "y"),
            ],
            ..Default::default()
        };
        let err = compile(&g, &HashMap::new()).expect_err("must fail");
        assert_eq!(
            err.to_string(),
            "unsupported operators: GRU, LSTM (ai.onnx); SVMClassifier (ai.onnx.ml); \
             FusedGemm (com.microsoft)"
        );
        let OnnxError::UnsupportedOperators { operators } = err else {
            panic!("wrong error variant");
        };
        let lstm = operators
            .iter()
            .find(|o| o.op_type == "LSTM")
            .expect("LSTM listed");
        assert_eq!(lstm.domain, "ai.onnx");
        assert_eq!(lstm.nodes, ["lstm0", "lstm1"]);
        let fused = operators
            .iter()
            .find(|o| o.op_type == "FusedGemm")
            .expect("FusedGemm listed");
        // An unnamed node is named by its first output.
        assert_eq!(fused.nodes, ["e"]);
    }
}
