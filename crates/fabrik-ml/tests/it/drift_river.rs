//! ADWIN, Page–Hinkley, KSWIN and the error-rate detectors (DDM, EDDM, HDDM_A, HDDM_W, FHDDM) against
//! river 0.26.1 (`river_drift_fixtures.json`): the same detection (and warning) indices on the
//! same streams, river's protocol (a detector resets at the update after a drift).

use fabrik_ml::drift::binary::{
    AnyErrorRateDetector, Ddm, Eddm, ErrorRateDetector, Fhddm, HddmA, HddmW,
};
use fabrik_ml::drift::kswin::{Kswin, KswinSettings};
use fabrik_ml::drift::stream::{Adwin, ChangeDirection, PageHinkley};

use crate::support::fixture;

fn fixtures() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("river_drift_fixtures.json")).expect("fixture");
    serde_json::from_str(&text).expect("fixture JSON")
}

fn stream(fixtures: &serde_json::Value, name: &str) -> Vec<f64> {
    fixtures["streams"][name]
        .as_array()
        .expect("stream")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect()
}

fn expected(fixtures: &serde_json::Value, key: &str) -> Vec<usize> {
    fixtures["results"][key]
        .as_array()
        .expect("indices")
        .iter()
        .map(|v| v.as_u64().expect("index") as usize)
        .collect()
}

fn detections(values: &[f64], mut update: impl FnMut(f64) -> bool) -> Vec<usize> {
    values
        .iter()
        .enumerate()
        .filter_map(|(i, &v)| update(v).then_some(i))
        .collect()
}

#[test]
fn adwin_flags_what_river_flags() {
    let f = fixtures();
    for (key, stream_name, clock) in [
        ("ADWIN_default_A", "A", 32),
        ("ADWIN_default_D", "D", 32),
        ("ADWIN_clock1_D", "D", 1),
        ("ADWIN_default_B", "B", 32),
    ] {
        let mut adwin = Adwin::new(0.002, clock, 5, 5, 10);
        let got = detections(&stream(&f, stream_name), |v| adwin.update(v));
        assert_eq!(got, expected(&f, key), "{key}");
    }
}

#[test]
fn page_hinkley_flags_what_river_flags() {
    let f = fixtures();
    for (key, stream_name, threshold) in [
        ("PageHinkley_default_A", "A", 50.0),
        ("PageHinkley_default_D", "D", 50.0),
        ("PageHinkley_thr10_D", "D", 10.0),
    ] {
        let mut test = PageHinkley::new(30, 0.005, threshold, 0.9999, ChangeDirection::Both);
        let got = detections(&stream(&f, stream_name), |v| test.update(v));
        assert_eq!(got, expected(&f, key), "{key}");
    }
    // The thr10 run is river's false-alarm reference: 52 detections on a stream with one
    // change.
    assert_eq!(expected(&f, "PageHinkley_thr10_D").len(), 52);
}

#[test]
fn kswin_flags_what_river_flags_with_the_same_seed() {
    let f = fixtures();
    for (key, stream_name, alpha) in [
        ("KSWIN_a1e-4_seed42_A", "A", 1e-4),
        ("KSWIN_default_seed42_D", "D", 0.005),
    ] {
        let mut kswin = Kswin::new(KswinSettings {
            alpha,
            ..KswinSettings::default()
        })
        .expect("settings");
        let got = detections(&stream(&f, stream_name), |v| kswin.update(v));
        assert_eq!(got, expected(&f, key), "{key}");
    }
}

#[test]
fn kswin_draws_what_cpython_draws_over_a_hundred_thousand_tests() {
    let text = std::fs::read_to_string(fixture("river_kswin_noise.json")).expect("fixture");
    let river: serde_json::Value = serde_json::from_str(&text).expect("fixture JSON");
    // `bench/river_adwin.py`'s noise: xorshift64 (13, 7, 17), 53 bits, centred on 0.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let values: Vec<f64> = (0..100_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1_u64 << 53) as f64 - 0.5
        })
        .collect();
    let mut kswin = Kswin::new(KswinSettings::default()).expect("settings");
    let got = detections(&values, |v| kswin.update(v));
    let expected: Vec<usize> = river["detections"]
        .as_array()
        .expect("detections")
        .iter()
        .map(|v| v.as_u64().expect("index") as usize)
        .collect();
    assert_eq!(expected.len(), 133);
    assert_eq!(got, expected);
}

/// river's record of a binary detector on a stream: the drift indices, the first 50 indices
/// with the warning flag set, and how many there were.
fn binary_run(
    values: &[f64],
    detector: &mut dyn ErrorRateDetector,
    one_is_error: bool,
) -> (Vec<usize>, Vec<usize>, usize) {
    let (mut drifts, mut warnings) = (Vec::new(), Vec::new());
    for (i, &v) in values.iter().enumerate() {
        let error = (v == 1.0) == one_is_error;
        let flags = detector.update(error);
        if flags.drift {
            drifts.push(i);
        }
        if flags.warning {
            warnings.push(i);
        }
    }
    let n = warnings.len();
    warnings.truncate(50);
    (drifts, warnings, n)
}

fn indices(value: &serde_json::Value) -> Vec<usize> {
    value
        .as_array()
        .expect("indices")
        .iter()
        .map(|v| v.as_u64().expect("index") as usize)
        .collect()
}

#[test]
fn error_rate_detectors_flag_and_warn_where_river_does() {
    let f = fixtures();
    let errors = stream(&f, "B");
    let cases: Vec<(&str, Box<dyn ErrorRateDetector>)> = vec![
        ("DDM_B", Box::new(Ddm::default())),
        ("EDDM_a0.8_b0.75_B", Box::new(Eddm::new(30, 0.8, 0.75))),
        ("EDDM_default_B", Box::new(Eddm::default())),
        ("HDDMA_B", Box::new(HddmA::default())),
        (
            "HDDMA_two_sided_B",
            Box::new(HddmA::new(0.001, 0.005, true)),
        ),
        ("HDDMW_B", Box::new(HddmW::default())),
    ];
    for (key, mut detector) in cases {
        let (drifts, warnings, n) = binary_run(&errors, detector.as_mut(), true);
        let want = &f["results"][key];
        assert_eq!(drifts, indices(&want["drift"]), "{key}: drifts");
        assert_eq!(
            warnings,
            indices(&want["warning_first_after_each_drift"]),
            "{key}: warnings"
        );
        assert_eq!(
            n as u64,
            want["n_warning_steps"].as_u64().expect("n"),
            "{key}: warning steps"
        );
    }
    // FHDDM counts successes: stream C's 1 is a correct outcome.
    let successes = stream(&f, "C");
    for (key, mut detector) in [
        ("FHDDM_default_C", Fhddm::default()),
        ("FHDDM_short20_C", Fhddm::new(100, 0.000_001, Some(20))),
    ] {
        let (drifts, _, warned) = binary_run(&successes, &mut detector, false);
        assert_eq!(drifts, expected(&f, key), "{key}");
        assert_eq!(warned, 0, "FHDDM has no warning zone");
    }
    // By name, with river's defaults: DDM's run again.
    let mut named = AnyErrorRateDetector::by_name("ddm").expect("ddm");
    let (drifts, _, _) = binary_run(&errors, &mut named, true);
    assert_eq!(drifts, indices(&f["results"]["DDM_B"]["drift"]));
    assert!(AnyErrorRateDetector::by_name("kswin").is_none());
}
