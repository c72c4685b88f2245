//! ADWIN and Page–Hinkley against river 0.26.1 (`river_drift_fixtures.json`): the same
//! detection indices on the same streams, river's protocol (a detector resets at the update
//! after a drift).

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
