//! SPRT and mSPRT against the team's reference code (`sequential_tests.json`, trimmed from
//! `mlops/sequential_tests_fixture.json` by `make_sequential_fixture.py`): the same decisions
//! at the same observation, the statistics to 1e-12 relative.

use fabrik_ml::sequential::{Decision, MixtureSprt, Pairing, Sprt};

use crate::support::fixture;

fn fixtures() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("sequential_tests.json")).expect("fixture");
    serde_json::from_str(&text).expect("fixture JSON")
}

fn numbers(value: &serde_json::Value) -> Vec<f64> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect()
}

fn close(actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() <= 1e-12 * expected.abs().max(actual.abs()),
        "{actual} vs {expected}"
    );
}

#[test]
fn sprt_stops_where_the_reference_does() {
    let f = fixtures();
    let params = &f["sprt"]["params"];
    let get = |key: &str| params[key].as_f64().expect("param");
    for (key, decision) in [
        ("good", Decision::AcceptNull),
        ("bad", Decision::RejectNull),
    ] {
        let case = &f["sprt"][key];
        let mut test = Sprt::new(get("p0"), get("p1"), get("alpha"), get("beta")).expect("valid");
        close(test.bounds().1, 2.772588722239781);
        close(test.bounds().0, -1.5581446180465497);
        let mut stopped = None;
        for (i, x) in numbers(&case["input"]).into_iter().enumerate() {
            if test.update(x == 1.0) != Decision::Continue && stopped.is_none() {
                stopped = Some(i + 1);
            }
        }
        assert_eq!(test.decision(), decision, "{key}");
        let n = case["n"].as_u64().expect("n");
        assert_eq!(stopped, Some(n as usize), "{key}");
        assert_eq!(test.observations(), n, "{key}");
        close(test.llr(), case["llr"].as_f64().expect("llr"));
    }
}

#[test]
fn msprt_rejects_where_the_reference_does_and_not_on_equal_means() {
    let f = fixtures();
    let m = &f["msprt"];
    let tau2 = m["params"]["tau2"].as_f64().expect("tau2");
    let alpha = m["params"]["alpha"].as_f64().expect("alpha");
    let a = numbers(&m["A"]);

    let mut better = MixtureSprt::new(tau2, alpha, Pairing::Independent).expect("valid");
    for (x, y) in a.iter().zip(numbers(&m["B_better"])) {
        better.update(*x, y);
    }
    let expected = &m["better"];
    assert_eq!(
        better.rejected_at(),
        Some(expected["reject_at_n"].as_u64().expect("n"))
    );
    close(better.p_value(), expected["p"].as_f64().expect("p"));
    close(
        better.difference().expect("difference"),
        expected["diff"].as_f64().expect("diff"),
    );

    let mut same = MixtureSprt::new(tau2, alpha, Pairing::Independent).expect("valid");
    let b_same = numbers(&m["B_same"]);
    assert_eq!(
        b_same.len() as u64,
        m["same"]["steps"].as_u64().expect("steps")
    );
    for (x, y) in a.iter().zip(b_same) {
        assert_eq!(same.update(*x, y), Decision::Continue);
    }
    assert_eq!(same.rejected_at(), None);
    close(same.p_value(), m["same"]["p"].as_f64().expect("p"));
    close(
        same.difference().expect("difference"),
        m["same"]["diff"].as_f64().expect("diff"),
    );
}
