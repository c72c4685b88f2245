//! The NAB scorer against NAB's own numbers on three real NAB files (fixture `nab/`): per-file
//! scores and counts of the 5 reference detectors under the 3 profiles, as NAB's scorer
//! computed them, and the 3-file corpus totals with NAB's and with optimised thresholds.

use fabrik_ml::nab::{
    NabCorpus, ProfileName, ThresholdChoice, optimize_threshold, read_results, read_thresholds,
    score_results,
};

use crate::support::{fixture, json};

const DETECTORS: [&str; 5] = [
    "numenta",
    "windowedGaussian",
    "random",
    "null",
    "randomCutForest",
];

#[test]
fn per_file_scores_equal_nabs_for_every_reference_detector_and_profile() {
    let root = fixture("nab");
    let corpus = NabCorpus::load(&root).expect("load fixture corpus");
    assert_eq!(corpus.files.len(), 3);
    assert_eq!(corpus.window_count(), 2 + 3 + 4);
    let expected = json("nab/expected_scores.json");
    let mut compared = 0;
    for detector in DETECTORS {
        let results = read_results(&corpus, &root.join("results"), detector).expect("results");
        let thresholds = read_thresholds(&root, detector).expect("thresholds");
        let scores =
            score_results(&corpus, &results, ThresholdChoice::Fixed(thresholds)).expect("score");
        for profile in ProfileName::ALL {
            let ours = scores.profile(profile);
            for (key, file) in &ours.per_file {
                let want = &expected["per_file"][detector][profile.nab_name()][key];
                let want_score = want["score"].as_f64().expect("score");
                assert!(
                    (file.score - want_score).abs() < 1e-9,
                    "{detector} {} {key}: {} vs NAB {want_score}",
                    profile.nab_name(),
                    file.score
                );
                let counts = [
                    file.counts.tp,
                    file.counts.fp,
                    file.counts.fn_,
                    file.counts.tn,
                ];
                let want_counts =
                    ["TP", "FP", "FN", "TN"].map(|c| want[c].as_u64().expect("count"));
                assert_eq!(counts.map(|c| c as u64), want_counts, "{detector} {key}");
                assert_eq!(
                    file.counts.total() as u64,
                    want["Total_Count"].as_u64().expect("total")
                );
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 5 * 3 * 3);
}

#[test]
fn corpus_scores_and_optimised_thresholds_equal_the_verified_port() {
    let root = fixture("nab");
    let corpus = NabCorpus::load(&root).expect("load fixture corpus");
    let expected = json("nab/expected_scores.json");
    for detector in DETECTORS {
        let results = read_results(&corpus, &root.join("results"), detector).expect("results");
        let fixed = score_results(
            &corpus,
            &results,
            ThresholdChoice::Fixed(read_thresholds(&root, detector).expect("thresholds")),
        )
        .expect("fixed");
        let optimised = score_results(&corpus, &results, ThresholdChoice::Optimize).expect("opt");
        for profile in ProfileName::ALL {
            let want = &expected["mini_corpus"][detector][profile.nab_name()];
            let field = |name: &str| want[name].as_f64().expect(name);
            let context = format!("{detector} {}", profile.nab_name());
            assert!(
                (fixed.profile(profile).normalized - field("fixed_normalized")).abs() < 1e-9,
                "{context}: fixed {}",
                fixed.profile(profile).normalized
            );
            let (threshold, _) = optimize_threshold(&corpus, &results, profile).expect("opt");
            assert_eq!(threshold, field("optimized_threshold"), "{context}");
            assert!(
                (optimised.profile(profile).normalized - field("optimized_normalized")).abs()
                    < 1e-9,
                "{context}: optimised {}",
                optimised.profile(profile).normalized
            );
            // The optimum is never worse than NAB's own threshold on the same corpus.
            assert!(
                optimised.profile(profile).raw >= fixed.profile(profile).raw - 1e-12,
                "{context}"
            );
        }
    }
}

#[test]
fn a_missing_results_file_is_an_error_naming_it() {
    let root = fixture("nab");
    let corpus = NabCorpus::load(&root).expect("load fixture corpus");
    let error = read_results(&corpus, &root.join("results"), "no_such_detector")
        .expect_err("missing results");
    assert!(error.to_string().contains("no_such_detector"), "{error}");
}

#[test]
fn a_window_edge_between_rows_compares_timestamps_and_an_empty_window_is_reported() {
    let dir = crate::support::ScratchDir::new("bad-labels");
    let root = &dir.0;
    std::fs::create_dir_all(root.join("data/cat")).expect("mkdir");
    std::fs::create_dir_all(root.join("labels")).expect("mkdir");
    std::fs::write(
        root.join("data/cat/f.csv"),
        "timestamp,value\n2020-01-01 00:00:00,1\n2020-01-01 00:05:00,2\n",
    )
    .expect("write data");
    std::fs::write(
        root.join("labels/combined_windows.json"),
        r#"{"cat/f.csv": [["2020-01-01 00:00:00.000000", "2020-01-01 00:07:00.000000"]]}"#,
    )
    .expect("write labels");
    // As NAB's scorer does: the rows whose timestamps lie inside the window.
    let corpus = NabCorpus::load(root).expect("edge 00:07 lies between rows");
    assert_eq!(corpus.files[0].windows, [(0, 1)]);
    std::fs::write(
        root.join("labels/combined_windows.json"),
        r#"{"cat/f.csv": [["2020-01-01 00:01:00.000000", "2020-01-01 00:04:00.000000"]]}"#,
    )
    .expect("write labels");
    let error = NabCorpus::load(root).expect_err("no row lies in 00:01..00:04");
    let message = error.to_string();
    assert!(
        message.contains("cat/f.csv") && message.contains("holds no row"),
        "{message}"
    );
    // Without config/profiles.json the corpus falls back to NAB's profiles.
    std::fs::write(
        root.join("labels/combined_windows.json"),
        r#"{"cat/f.csv": [["2020-01-01 00:00:00.000000", "2020-01-01 00:05:00.000000"]]}"#,
    )
    .expect("write labels");
    let corpus = NabCorpus::load(root).expect("valid tree");
    assert_eq!(corpus.files[0].windows, vec![(0, 1)]);
    assert_eq!(
        corpus.profile(ProfileName::RewardLowFpRate),
        ProfileName::RewardLowFpRate.nab_default()
    );
}
