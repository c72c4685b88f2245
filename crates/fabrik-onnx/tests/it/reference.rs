//! Every output of the seven fixture models equals onnxruntime's reference output (labels
//! exactly, floats within 1e-5), batched and row by row.

use crate::support::*;
use fabrik_onnx::Model;

#[test]
fn iforest_100() {
    compare_with_reference("iforest_100.onnx");
}

#[test]
fn rf_clf_50() {
    compare_with_reference("rf_clf_50.onnx");
}

#[test]
fn rf_clf_50_nozipmap() {
    compare_with_reference("rf_clf_50_nozipmap.onnx");
}

#[test]
fn gb_clf_100() {
    compare_with_reference("gb_clf_100.onnx");
}

#[test]
fn mlp_ae_8_4_8() {
    compare_with_reference("mlp_ae_8_4_8.onnx");
}

#[test]
fn scaler_pca4() {
    compare_with_reference("scaler_pca4.onnx");
}

#[test]
fn ae_torch() {
    compare_with_reference("ae_torch.onnx");
}

/// Running each row alone gives the batch's numbers (up to summation order).
#[test]
fn single_rows_match_the_batch() {
    let r = reference();
    let x = reference_input(&r);
    for file in [
        "iforest_100.onnx",
        "rf_clf_50.onnx",
        "rf_clf_50_nozipmap.onnx",
        "gb_clf_100.onnx",
        "mlp_ae_8_4_8.onnx",
        "scaler_pca4.onnx",
        "ae_torch.onnx",
    ] {
        let model = Model::from_file(fixture(file)).expect("test data");
        let batch = run_rows(&model, &x, 0..20);
        let mut per_row: Vec<Vec<f64>> = vec![Vec::new(); batch.len()];
        for row in 0..20 {
            for (k, (_, v)) in run_rows(&model, &x, row..row + 1).iter().enumerate() {
                per_row[k].extend(numbers(v));
            }
        }
        for (k, (name, v)) in batch.iter().enumerate() {
            let b = numbers(v);
            assert_eq!(b.len(), per_row[k].len(), "{file}/{name}");
            let max = b
                .iter()
                .zip(&per_row[k])
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f64::max);
            assert!(
                max <= 1e-6,
                "{file}/{name}: single-row vs batch diff {max:e}"
            );
        }
    }
}

/// The IsolationForest scores also match scikit-learn's decision_function.
#[test]
fn iforest_matches_sklearn() {
    let r = reference();
    let x = reference_input(&r);
    let model = Model::from_file(fixture("iforest_100.onnx")).expect("test data");
    let out = run_rows(&model, &x, 0..20);
    let scores = numbers(
        &out.iter()
            .find(|(n, _)| n == "scores")
            .expect("test data")
            .1,
    );
    let mut want = Vec::new();
    flatten_json(
        &r["models"]["iforest_100.onnx"]["sklearn_refit"]["outputs"]["decision_function"],
        &mut want,
    );
    assert_eq!(scores.len(), want.len());
    let max = scores
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(max < 1e-6, "max diff vs sklearn {max:e}");
}
