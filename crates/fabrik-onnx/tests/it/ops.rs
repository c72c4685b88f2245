//! One small model per operator and opset form, plus skl2onnx linear models and a torch-like
//! autoencoder, replayed against the onnxruntime outputs recorded by
//! `tests/fixtures/ops/generate.py` (`ops_reference.json`): floats within 1e-5 (relative
//! above 1), labels, indices and strings exactly.

use fabrik_onnx::{Model, Tensor, TensorData, Value};
use serde_json::Value as Json;

use crate::support::json_number as num;

fn ops_fixture(name: &str) -> std::path::PathBuf {
    crate::support::fixture("ops").join(name)
}

/// `|got - want| <= 1e-5 * max(1, |want|)`; NaN matches NaN, infinities match exactly.
fn close(got: f64, want: f64) -> bool {
    if want.is_nan() || got.is_nan() {
        return want.is_nan() && got.is_nan();
    }
    got == want || (got - want).abs() <= crate::support::TOL * want.abs().max(1.0)
}

fn shape_of(j: &Json) -> Vec<usize> {
    j["shape"]
        .as_array()
        .expect("test data")
        .iter()
        .map(|d| d.as_u64().expect("test data") as usize)
        .collect()
}

fn tensor_of(j: &Json) -> Tensor {
    let data = j["data"].as_array().expect("test data");
    let d = match j["dtype"].as_str().expect("test data") {
        "float32" => TensorData::F32(data.iter().map(|v| num(v) as f32).collect()),
        "float64" => TensorData::F64(data.iter().map(num).collect()),
        "int64" => TensorData::I64(
            data.iter()
                .map(|v| v.as_i64().expect("test data"))
                .collect(),
        ),
        other => panic!("unexpected input dtype {other}"),
    };
    Tensor::new(shape_of(j), d).expect("test data")
}

/// Compares one output; returns the largest float difference scaled as the tolerance is
/// (`|got - want| / max(1, |want|)`), or why it does not match.
fn compare(got: &Value, want: &Json) -> Result<f64, String> {
    let dtype = want["dtype"].as_str().expect("test data");
    if dtype == "maps" {
        let Value::Maps(m) = got else {
            return Err("expected a sequence of maps".into());
        };
        let rows = want["data"].as_array().expect("test data");
        if rows.len() != m.len() {
            return Err(format!("{} maps, expected {}", m.len(), rows.len()));
        }
        let mut max = 0.0f64;
        for (ri, row) in rows.iter().enumerate() {
            for (k, v) in row.as_object().expect("test data") {
                let g = k
                    .parse::<i64>()
                    .ok()
                    .and_then(|k| m.get_i64(ri, k))
                    .or_else(|| m.get_str(ri, k))
                    .ok_or_else(|| format!("row {ri} lacks key {k}"))?;
                let (g, w) = (f64::from(g), num(v));
                if !close(g, w) {
                    return Err(format!("row {ri} key {k}: {g} vs {w}"));
                }
                max = max.max((g - w).abs() / w.abs().max(1.0));
            }
        }
        return Ok(max);
    }
    let Value::Tensor(t) = got else {
        return Err("expected a tensor".into());
    };
    if t.shape() != shape_of(want).as_slice() {
        return Err(format!(
            "shape {:?}, expected {:?}",
            t.shape(),
            shape_of(want)
        ));
    }
    let w = want["data"].as_array().expect("test data");
    let floats: Vec<f64> = match (t.data(), dtype) {
        (TensorData::F32(d), "float32") => d.iter().map(|&x| f64::from(x)).collect(),
        (TensorData::F64(d), "float64") => d.clone(),
        (TensorData::I64(d), "int64") => {
            let same = d.iter().zip(w).all(|(&g, w)| w.as_i64() == Some(g));
            return if same {
                Ok(0.0)
            } else {
                Err(format!("int64 {d:?} vs {w:?}"))
            };
        }
        (TensorData::String(d), "string") => {
            let same = d.iter().zip(w).all(|(g, w)| w.as_str() == Some(g.as_str()));
            return if same {
                Ok(0.0)
            } else {
                Err(format!("strings {d:?} vs {w:?}"))
            };
        }
        (d, _) => {
            return Err(format!(
                "element type {}, expected {dtype}",
                d.element_type()
            ));
        }
    };
    let mut max = 0.0f64;
    for (i, (&g, wv)) in floats.iter().zip(w).enumerate() {
        let wv = num(wv);
        if !close(g, wv) {
            return Err(format!("element {i}: {g} vs onnxruntime {wv}"));
        }
        if g.is_finite() && wv.is_finite() {
            max = max.max((g - wv).abs() / wv.abs().max(1.0));
        }
    }
    Ok(max)
}

#[test]
fn operators_match_onnxruntime() {
    let text = std::fs::read_to_string(ops_fixture("ops_reference.json")).expect("test data");
    let r: Json = serde_json::from_str(&text).expect("test data");
    let cases = r["cases"].as_array().expect("test data");
    assert!(cases.len() >= 120, "{} cases", cases.len());
    let mut failures = Vec::new();
    let mut worst = (String::new(), 0.0f64);
    for case in cases {
        let name = case["name"].as_str().expect("test data");
        let model = match Model::from_file(ops_fixture(case["file"].as_str().expect("test data"))) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{name}: load: {e}"));
                continue;
            }
        };
        let inputs: Vec<(String, Tensor)> = case["inputs"]
            .as_object()
            .expect("test data")
            .iter()
            .map(|(k, v)| (k.clone(), tensor_of(v)))
            .collect();
        let feeds: Vec<(&str, Tensor)> = inputs
            .iter()
            .map(|(k, t)| (k.as_str(), t.clone()))
            .collect();
        let out = match model.run(&feeds) {
            Ok(o) => o,
            Err(e) => {
                failures.push(format!("{name}: run: {e}"));
                continue;
            }
        };
        let want = case["outputs"].as_object().expect("test data");
        if out.len() != want.len() {
            failures.push(format!(
                "{name}: {} outputs, expected {}",
                out.len(),
                want.len()
            ));
        }
        for (oname, value) in &out {
            match compare(value, &want[oname.as_str()]) {
                Ok(d) => {
                    if std::env::var_os("FABRIK_ONNX_DIFFS").is_some() {
                        eprintln!("{name}/{oname}: {d:e}");
                    }
                    if d > worst.1 {
                        worst = (format!("{name}/{oname}"), d);
                    }
                }
                Err(why) => failures.push(format!("{name}/{oname}: {why}")),
            }
        }
    }
    eprintln!(
        "{} operator cases; largest difference from onnxruntime (relative above 1): {:e} ({})",
        cases.len(),
        worst.1,
        worst.0
    );
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every model in `ops/` is a replayed case (or one of the error tests' models): no stale
/// fixtures.
#[test]
fn every_ops_fixture_is_used() {
    let text = std::fs::read_to_string(ops_fixture("ops_reference.json")).expect("test data");
    let r: Json = serde_json::from_str(&text).expect("test data");
    let used: Vec<&str> = r["cases"]
        .as_array()
        .expect("test data")
        .iter()
        .map(|c| c["file"].as_str().expect("test data"))
        .chain([
            "unsupported_many.onnx",
            "opset_too_new.onnx",
            "ir_too_new.onnx",
        ])
        .collect();
    for entry in std::fs::read_dir(ops_fixture("")).expect("test data") {
        let name = entry.expect("test data").file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".onnx") {
            assert!(
                used.contains(&name.as_ref()),
                "{name} is not used by any case"
            );
        }
    }
}
