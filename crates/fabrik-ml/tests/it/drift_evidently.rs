//! Drift tests against Evidently 0.7.23's own numbers (`evidently_drift_fixtures.json`): the
//! same scores to 1e-9 relative, the same verdicts, the same automatic choice of test.

use fabrik_ml::drift::{DriftMethod, dataset_drift, feature_drift};

use crate::support::fixture;

fn fixtures() -> serde_json::Value {
    let path = fixture("evidently_drift_fixtures.json");
    let text = std::fs::read_to_string(&path).expect("fixture");
    serde_json::from_str(&text).expect("fixture JSON")
}

/// An input array as numbers: categories `a`, `b`, … become 0, 1, … (a numerical column of
/// few values, which Evidently's tests bin one bin per value, as they bin categories).
fn column(fixtures: &serde_json::Value, name: &str) -> Vec<f64> {
    fixtures["inputs"][name]
        .as_array()
        .expect("array")
        .iter()
        .map(|value| match value {
            serde_json::Value::String(category) => f64::from(category.as_bytes()[0] - b'a'),
            number => number.as_f64().expect("number"),
        })
        .collect()
}

fn close(got: f64, want: f64) -> bool {
    got == want || (got - want).abs() <= 1e-9 * want.abs().max(f64::MIN_POSITIVE)
}

#[test]
fn scores_and_verdicts_equal_evidentlys() {
    let fixtures = fixtures();
    let results = fixtures["results"].as_object().expect("results");
    let mut checked = Vec::new();
    for (key, expected) in results {
        let (reference, current, method_name) = if let Some(rest) = key.strip_prefix("num_") {
            let (size, method) = rest.split_once('_').expect("size_method");
            (format!("ref_{size}"), format!("cur_{size}"), method)
        } else if let Some(method) = key.strip_prefix("cat_") {
            ("cat_ref".to_owned(), "cat_cur".to_owned(), method)
        } else if let Some(method) = key.strip_prefix("bin_") {
            ("bin_ref".to_owned(), "bin_cur".to_owned(), method)
        } else {
            panic!("unknown fixture key {key}")
        };
        // Permutation tests (TVD, MMD), the rank tests Fabrik does not offer, and the
        // categorical Hellinger (Fabrik's features are numerical) are not compared.
        let Ok(method) = DriftMethod::parse(method_name) else {
            continue;
        };
        if key.starts_with("cat_") && method == DriftMethod::Hellinger {
            continue;
        }
        let (reference, current) = (column(&fixtures, &reference), column(&fixtures, &current));
        let want = expected["score"].as_f64().expect("score");
        let threshold = expected["threshold"].as_f64().expect("threshold");
        let got = feature_drift(&reference, &current, method, Some(threshold)).expect("drift");
        assert!(
            close(got.score, want),
            "{key}: {} against Evidently's {want}",
            got.score
        );
        assert_eq!(
            got.drifted,
            expected["drifted"].as_bool().expect("drifted"),
            "{key}"
        );
        checked.push(key.clone());
    }
    // ks, psi, wasserstein, jensenshannon, kl_div, hellinger for both numerical pairs; the
    // categorical chisquare, jensenshannon, psi and kl_div; the z-test.
    assert_eq!(checked.len(), 17, "{checked:?}");
}

#[test]
fn the_automatic_choice_and_the_dataset_verdict_are_evidentlys() {
    let fixtures = fixtures();
    let pick = |reference: &str, current: &str| {
        DriftMethod::Auto.resolve(&column(&fixtures, reference), &column(&fixtures, current))
    };
    // `default_selection`: num_ref500 → ks, num_ref5000 → wasserstein, cat_ref2000 →
    // jensenshannon, bin_ref800 → z.
    assert_eq!(pick("ref_small", "cur_small"), DriftMethod::Ks);
    assert_eq!(pick("ref_big", "cur_big"), DriftMethod::Wasserstein);
    assert_eq!(pick("cat_ref", "cat_cur"), DriftMethod::JensenShannon);
    assert_eq!(pick("bin_ref", "bin_cur"), DriftMethod::Z);
    let cat_ref = column(&fixtures, "cat_ref");
    assert_eq!(
        DriftMethod::Auto.resolve(&cat_ref[..500], &column(&fixtures, "cat_cur")),
        DriftMethod::ChiSquare,
        "cat4_ref500 → chisquare"
    );

    // `report_metrics`: DataDriftPreset on x_num = ref_big[:2000] / cur_big[:1500] and
    // x_cat = cat_ref[:2000] / cat_cur[:1500].
    let (num_ref, num_cur) = (column(&fixtures, "ref_big"), column(&fixtures, "cur_big"));
    let cat_cur = column(&fixtures, "cat_cur");
    let rows = |num: &[f64], cat: &[f64], n: usize| -> Vec<Vec<f64>> {
        (0..n).map(|i| vec![num[i], cat[i]]).collect()
    };
    let report = dataset_drift(
        &rows(&num_ref, &cat_ref, 2000),
        &rows(&num_cur, &cat_cur, 1500),
        DriftMethod::Auto,
        None,
        0.5,
    )
    .expect("report");
    assert_eq!(report.features[0].method, DriftMethod::Wasserstein);
    assert!(
        close(report.features[0].score, 0.15699349678147656),
        "{report:?}"
    );
    assert_eq!(report.features[1].method, DriftMethod::JensenShannon);
    assert!(
        close(report.features[1].score, 0.13426798770690782),
        "{report:?}"
    );
    assert_eq!(
        (report.drifted, report.share, report.dataset_drift),
        (2, 1.0, true)
    );
}

#[test]
fn bad_samples_are_named() {
    let error = feature_drift(&[1.0, f64::NAN], &[1.0], DriftMethod::Ks, None).expect_err("NaN");
    assert!(
        error
            .to_string()
            .contains("value 2 of the reference sample is NaN"),
        "{error}"
    );
    let error = feature_drift(&[1.0], &[], DriftMethod::Psi, None).expect_err("empty");
    assert!(
        error.to_string().contains("current sample is empty"),
        "{error}"
    );
    let error = dataset_drift(&[vec![1.0, 2.0]], &[vec![1.0]], DriftMethod::Ks, None, 0.5)
        .expect_err("ragged");
    assert!(
        error.to_string().contains("same number of features"),
        "{error}"
    );
}
