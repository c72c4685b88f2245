//! Shared helpers for the integration tests: fixture paths, the reference JSON, comparisons.

use std::path::PathBuf;

use fabrik_onnx::{Model, Tensor, Value};
use serde_json::Value as Json;

pub(crate) const TOL: f64 = 1e-5;

/// A number as the fixture generators write it: JSON numbers, or `"nan"`, `"inf"`, `"-inf"`.
pub(crate) fn json_number(v: &Json) -> f64 {
    match v {
        Json::String(s) if s == "nan" => f64::NAN,
        Json::String(s) if s == "inf" => f64::INFINITY,
        Json::String(s) if s == "-inf" => f64::NEG_INFINITY,
        other => other
            .as_f64()
            .unwrap_or_else(|| panic!("not a number: {other}")),
    }
}

pub(crate) fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub(crate) fn reference() -> Json {
    let text = std::fs::read_to_string(fixture("reference_io.json")).expect("reference_io.json");
    serde_json::from_str(&text).expect("valid JSON")
}

/// The 20×8 reference input as row-major f32.
pub(crate) fn reference_input(r: &Json) -> Vec<f32> {
    r["input"]["data"]
        .as_array()
        .expect("test data")
        .iter()
        .flat_map(|row| {
            row.as_array()
                .expect("test data")
                .iter()
                .map(|v| v.as_f64().expect("test data") as f32)
        })
        .collect()
}

pub(crate) fn flatten_json(v: &Json, out: &mut Vec<f64>) {
    match v {
        Json::Array(a) => a.iter().for_each(|x| flatten_json(x, out)),
        Json::Number(n) => out.push(n.as_f64().expect("test data")),
        other => panic!("unexpected JSON {other}"),
    }
}

/// Runs `file` on rows `rows` of the reference input.
pub(crate) fn run_rows(
    model: &Model,
    x: &[f32],
    rows: std::ops::Range<usize>,
) -> Vec<(String, Value)> {
    let name = model.inputs()[0].name.clone();
    let t = Tensor::from_f32(
        vec![rows.len(), 8],
        x[rows.start * 8..rows.end * 8].to_vec(),
    )
    .expect("test data");
    model.run(&[(name.as_str(), t)]).expect("test data")
}

/// Numbers of an output as f64 (tensors row-major; map sequences row by row in key order).
pub(crate) fn numbers(v: &Value) -> Vec<f64> {
    match v {
        Value::Tensor(t) => match t.data() {
            fabrik_onnx::TensorData::F32(d) => d.iter().map(|&x| f64::from(x)).collect(),
            fabrik_onnx::TensorData::I64(d) => d.iter().map(|&x| x as f64).collect(),
            other => panic!("unexpected tensor type {:?}", other.element_type()),
        },
        Value::Maps(m) => (0..m.len())
            .flat_map(|r| m.row(r).expect("test data").iter().map(|&x| f64::from(x)))
            .collect(),
    }
}

/// Compares every output of `model_file` with onnxruntime's; returns (output, max abs diff).
pub(crate) fn compare_with_reference(model_file: &str) -> Vec<(String, f64)> {
    let r = reference();
    let x = reference_input(&r);
    let model = Model::from_file(fixture(model_file)).expect("test data");
    let got = run_rows(&model, &x, 0..20);
    let expected = &r["models"][model_file]["onnxruntime_outputs"];
    let exp_obj = expected.as_object().expect("test data");
    assert_eq!(got.len(), exp_obj.len(), "{model_file}: output count");
    let mut diffs = Vec::new();
    for (name, value) in &got {
        let e = &expected[name.as_str()];
        assert!(!e.is_null(), "{model_file}: unexpected output {name}");
        let dtype = e["dtype"].as_str().expect("test data");
        let mut want = Vec::new();
        if dtype.starts_with("seq(map(") {
            let Value::Maps(m) = value else {
                panic!("{name}: expected a map sequence")
            };
            let rows = e["data"].as_array().expect("test data");
            assert_eq!(m.len(), rows.len(), "{model_file}/{name}: rows");
            for (ri, row) in rows.iter().enumerate() {
                for (k, v) in row.as_object().expect("test data") {
                    let key: i64 = k.parse().expect("test data");
                    let got = m
                        .get_i64(ri, key)
                        .unwrap_or_else(|| panic!("{name}: row {ri} lacks key {key}"));
                    want.push((f64::from(got), v.as_f64().expect("test data")));
                }
            }
        } else {
            let Value::Tensor(t) = value else {
                panic!("{name}: expected a tensor")
            };
            let shape: Vec<usize> = e["shape"]
                .as_array()
                .expect("test data")
                .iter()
                .map(|d| d.as_u64().expect("test data") as usize)
                .collect();
            assert_eq!(t.shape(), shape.as_slice(), "{model_file}/{name}: shape");
            let mut flat = Vec::new();
            flatten_json(&e["data"], &mut flat);
            let ours = numbers(value);
            assert_eq!(ours.len(), flat.len());
            want.extend(ours.into_iter().zip(flat));
            match dtype {
                "int64" => assert!(t.as_i64().is_some(), "{name}: expected int64"),
                "float32" => assert!(t.as_f32().is_some(), "{name}: expected float"),
                other => panic!("unexpected dtype {other}"),
            }
        }
        let max = want.iter().map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        if dtype == "int64" {
            assert_eq!(max, 0.0, "{model_file}/{name}: labels differ");
        } else {
            assert!(
                max <= TOL,
                "{model_file}/{name}: max abs diff {max:e} > {TOL:e}"
            );
        }
        eprintln!("{model_file}/{name}: max abs diff {max:e}");
        diffs.push((name.clone(), max));
    }
    diffs
}
