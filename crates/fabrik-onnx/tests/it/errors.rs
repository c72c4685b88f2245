//! Load-time and run-time errors, and the declared signature API.

use crate::support::fixture;
use fabrik_onnx::{Dim, ElementType, Model, OnnxError, Tensor, ValueKind};

#[test]
fn unsupported_ml_operator_is_named_at_load() {
    let err = Model::from_file(fixture("edge/unsupported_op.onnx")).expect_err("must fail");
    assert!(
        matches!(&err, OnnxError::UnsupportedOperators { operators } if operators.len() == 1
            && operators[0].nodes == ["bar"]),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "unsupported operators: Foo (ai.onnx.ml)");
}

#[test]
fn unsupported_standard_operator_is_named_at_load() {
    let err = Model::from_file(fixture("edge/unsupported_std_op.onnx")).expect_err("must fail");
    assert_eq!(err.to_string(), "unsupported operators: Conv (ai.onnx)");
}

/// A torch LSTM export used to be refused naming only `Unsqueeze`, its first node; now every
/// unsupported operator is named at once, grouped by domain.
#[test]
fn every_unsupported_operator_is_named_at_load() {
    let err = Model::from_file(fixture("ops/unsupported_many.onnx")).expect_err("must fail");
    assert_eq!(
        err.to_string(),
        "unsupported operators: GRU, LSTM (ai.onnx); SVMClassifier (ai.onnx.ml)"
    );
    let OnnxError::UnsupportedOperators { operators } = err else {
        panic!("wrong variant: {err:?}");
    };
    let lstm = operators
        .iter()
        .find(|o| o.op_type == "LSTM")
        .expect("LSTM listed");
    assert_eq!(lstm.nodes, ["/lstm/LSTM", "/lstm2/LSTM"]);
}

#[test]
fn supported_operators_are_listed() {
    let ops = fabrik_onnx::supported_operators();
    assert!(ops.contains(&("ai.onnx", "Gemm")));
    assert!(ops.contains(&("ai.onnx.ml", "TreeEnsembleClassifier")));
    assert!(!ops.iter().any(|&(_, op)| op == "Conv"));
    let mut sorted = ops.clone();
    sorted.sort_unstable();
    assert_eq!(ops, sorted, "sorted by domain, then op type");
}

/// Opsets and IR versions newer than the evaluator knows are refused, as onnxruntime refuses
/// them: a newer opset may change what an operator means.
#[test]
fn opsets_and_ir_versions_newer_than_known_are_refused() {
    let err = Model::from_file(fixture("ops/opset_too_new.onnx")).expect_err("must fail");
    assert!(
        err.to_string().contains("opset 99 of ai.onnx") && err.to_string().contains("up to 23"),
        "{err}"
    );
    let err = Model::from_file(fixture("ops/ir_too_new.onnx")).expect_err("must fail");
    assert!(err.to_string().contains("IR version 99"), "{err}");
}

#[test]
fn garbage_is_a_decode_error() {
    let err = Model::from_bytes(b"\xff\xff\xff\xff not onnx").expect_err("must fail");
    assert!(matches!(err, OnnxError::Decode(_)), "{err:?}");
    let err = Model::from_bytes(&[]).expect_err("must fail");
    assert!(matches!(err, OnnxError::InvalidModel(_)), "{err:?}");
}

#[test]
fn wrong_input_width_names_input_and_expected_shape() {
    let model = Model::from_file(fixture("iforest_100.onnx")).expect("test data");
    let x = Tensor::from_f32(vec![2, 7], vec![0.0; 14]).expect("test data");
    let err = model.run(&[("X", x)]).expect_err("must fail");
    assert!(matches!(err, OnnxError::BadInput { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "input 'X': expected float tensor of shape [?, 8], got shape [2, 7]"
    );
    // Symbolic batch dimension in the torch export.
    let model = Model::from_file(fixture("ae_torch.onnx")).expect("test data");
    let x = Tensor::from_f32(vec![8], vec![0.0; 8]).expect("test data");
    let err = model.run(&[("x", x)]).expect_err("must fail");
    assert_eq!(
        err.to_string(),
        "input 'x': expected float tensor of shape [n, 8], got shape [8]"
    );
}

#[test]
fn wrong_name_type_or_missing_input() {
    let model = Model::from_file(fixture("scaler_pca4.onnx")).expect("test data");
    let x = || Tensor::from_f32(vec![1, 8], vec![0.0; 8]).expect("test data");
    let err = model.run(&[("Y", x())]).expect_err("must fail");
    assert!(
        err.to_string()
            .starts_with("input 'Y': the model has no such input"),
        "{err}"
    );
    let err = model.run(&[]).expect_err("must fail");
    assert_eq!(
        err.to_string(),
        "input 'X': missing; expected float tensor of shape [?, 8]"
    );
    let xi = Tensor::from_i64(vec![1, 8], vec![0; 8]).expect("test data");
    let err = model.run(&[("X", xi)]).expect_err("must fail");
    assert_eq!(
        err.to_string(),
        "input 'X': expected float tensor of shape [?, 8], got int64 tensor"
    );
    let err = model.run(&[("X", x()), ("X", x())]).expect_err("must fail");
    assert!(err.to_string().contains("more than once"), "{err}");
}

#[test]
fn signature_is_exposed() {
    let model = Model::from_file(fixture("rf_clf_50.onnx")).expect("test data");
    let inputs = model.inputs();
    assert_eq!(inputs.len(), 1);
    assert_eq!(inputs[0].name, "X");
    assert_eq!(
        inputs[0].kind,
        ValueKind::Tensor {
            element_type: Some(ElementType::F32),
            shape: Some(vec![Dim::Unknown, Dim::Fixed(8)])
        }
    );
    let outputs = model.outputs();
    assert_eq!(outputs[0].name, "output_label");
    assert_eq!(
        outputs[1].kind,
        ValueKind::MapSequence {
            key: Some(ElementType::I64),
            value: Some(ElementType::F32)
        }
    );
    let torch = Model::from_file(fixture("ae_torch.onnx")).expect("test data");
    assert_eq!(
        torch.inputs()[0].kind,
        ValueKind::Tensor {
            element_type: Some(ElementType::F32),
            shape: Some(vec![Dim::Symbolic("n".into()), Dim::Fixed(8)])
        }
    );
    assert_eq!(torch.producer(), "pytorch 2.15.0");
}

#[test]
fn empty_batch_runs() {
    let model = Model::from_file(fixture("iforest_100.onnx")).expect("test data");
    let x = Tensor::from_f32(vec![0, 8], vec![]).expect("test data");
    let out = model.run(&[("X", x)]).expect("test data");
    assert_eq!(out[1].1.as_tensor().expect("test data").shape(), &[0, 1]);
}

#[test]
fn model_is_shareable_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Model>();
}

/// The crate README lists every supported operator, so users can check a model by reading it.
#[test]
fn readme_lists_every_supported_operator() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let missing: Vec<String> = fabrik_onnx::supported_operators()
        .into_iter()
        .filter(|(_, op)| {
            // Whole words only: "Relu" must not be satisfied by "LeakyRelu".
            !readme
                .split(|c: char| !c.is_ascii_alphanumeric())
                .any(|w| w == *op)
        })
        .map(|(d, op)| format!("{d}:{op}"))
        .collect();
    assert!(missing.is_empty(), "README.md lacks {missing:?}");
}
