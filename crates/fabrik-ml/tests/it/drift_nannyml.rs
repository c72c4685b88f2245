//! Multivariate drift by PCA reconstruction against NannyML 0.13.1's
//! `DataReconstructionDriftCalculator` (`fixtures/reconstruction_drift.json`, made by
//! `fixtures/make_reconstruction_fixture.py`): the chunks' mean errors, sampling errors,
//! thresholds and alerts, missing values imputed, on an input whose second half breaks a
//! correlation while every feature keeps its distribution.

use fabrik_ml::drift::reconstruction::{
    DEFAULT_SIGMAS, DEFAULT_VARIANCE, Reconstruction, alert, chunk_error, thresholds,
};
use fabrik_ml::drift::{DriftMethod, dataset_drift};

use crate::support::json;

fn rows(value: &serde_json::Value) -> Vec<Vec<f64>> {
    value
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_f64().unwrap_or(f64::NAN))
                .collect()
        })
        .collect()
}

fn numbers(value: &serde_json::Value) -> Vec<f64> {
    value
        .as_array()
        .expect("numbers")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect()
}

#[test]
fn chunk_errors_thresholds_and_alerts_equal_nannyml() {
    let fixture = json("reconstruction_drift.json");
    let reference = rows(&fixture["reference"]);
    let analysis = rows(&fixture["analysis"]);
    let size = fixture["chunk_size"].as_u64().expect("size") as usize;
    let model = Reconstruction::fit(&reference, DEFAULT_VARIANCE).expect("fit");
    let chunks: Vec<(f64, f64)> = reference
        .chunks(size)
        .chain(analysis.chunks(size))
        .map(|chunk| {
            let errors: Vec<f64> = chunk.iter().map(|row| model.error(row)).collect();
            chunk_error(&errors)
        })
        .collect();
    let value = numbers(&fixture["value"]);
    let sampling = numbers(&fixture["sampling_error"]);
    assert_eq!(chunks.len(), value.len());
    for (i, ((mean, error), (want_mean, want_error))) in
        chunks.iter().zip(value.iter().zip(&sampling)).enumerate()
    {
        assert!(
            (mean - want_mean).abs() < 1e-9,
            "chunk {i}: {mean} vs {want_mean}"
        );
        assert!(
            (error - want_error).abs() < 1e-9,
            "chunk {i}: {error} vs {want_error}"
        );
    }
    let reference_chunks = reference.len() / size;
    let means: Vec<f64> = chunks.iter().map(|c| c.0).collect();
    let (lower, upper) = thresholds(&means[..reference_chunks], DEFAULT_SIGMAS);
    let want_upper = fixture["upper_threshold"][0].as_f64().expect("upper");
    assert!((upper - want_upper).abs() < 1e-9, "{upper} vs {want_upper}");
    match (lower, fixture["lower_threshold"][0].as_f64()) {
        (Some(lower), Some(want)) => assert!((lower - want).abs() < 1e-9, "{lower} vs {want}"),
        (None, None) => {}
        other => panic!("lower thresholds differ: {other:?}"),
    }
    let alerts: Vec<bool> = means.iter().map(|v| alert(*v, lower, upper)).collect();
    let want: Vec<bool> = fixture["alert"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|v| v.as_bool().expect("bool"))
        .collect();
    assert_eq!(alerts, want);
    // The correlation break is the last five analysis chunks; the first five stay.
    assert_eq!(
        &want[reference_chunks..],
        &[
            false, false, false, false, false, true, true, true, true, true
        ]
    );
}

/// Per-feature tests miss the flipped correlation; the reconstruction sees it, and names the
/// features it runs through.
#[test]
fn a_drift_check_by_reconstruction_sees_what_per_feature_tests_miss() {
    let fixture = json("reconstruction_drift.json");
    let reference = rows(&fixture["reference"]);
    let analysis = rows(&fixture["analysis"]);
    let flipped: Vec<Vec<f64>> = analysis[300..]
        .iter()
        .filter(|row| row.iter().all(|v| v.is_finite()))
        .cloned()
        .collect();
    let per_feature = dataset_drift(&reference, &flipped, DriftMethod::Ks, None, 0.5).expect("ks");
    assert!(!per_feature.dataset_drift, "{per_feature:?}");
    let whole = dataset_drift(&reference, &flipped, DriftMethod::Reconstruction, None, 0.5)
        .expect("reconstruction");
    assert!(whole.dataset_drift, "{whole:?}");
    let found = whole.reconstruction.as_ref().expect("numbers");
    assert!(found.error > found.upper, "{found:?}");
    assert_eq!(found.reference_chunks, 10);
    // x0 and x1 carry the flipped relation (x1 = ∓2·z1, x0 = z1).
    assert!(
        whole.features[0].drifted && whole.features[1].drifted,
        "{whole:?}"
    );
    assert!(
        !whole.features[4].drifted,
        "x4 is independent noise: {whole:?}"
    );
    let same = dataset_drift(
        &reference,
        &analysis[..300],
        DriftMethod::Reconstruction,
        None,
        0.5,
    )
    .expect("reconstruction");
    assert!(!same.dataset_drift, "{same:?}");
}
