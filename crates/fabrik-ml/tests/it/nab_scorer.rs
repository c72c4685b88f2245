//! The NAB scorer against NAB's own numbers on three real NAB files (fixture `nab/`): per-file
//! scores and counts of the 5 reference detectors under the 3 profiles, as NAB's scorer
//! computed them, and the 3-file corpus totals with NAB's and with optimised thresholds.

use fabrik_ml::nab::{
    AnomalyScores, NabCorpus, ProfileName, ThresholdChoice, optimize_threshold, read_results,
    read_thresholds, score_results, score_table_path, write_score_tables,
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
fn score_tables_in_nabs_format_hold_nabs_per_file_counts() {
    let root = fixture("nab");
    let corpus = NabCorpus::load(&root).expect("load fixture corpus");
    let expected = json("nab/expected_scores.json");
    let results = read_results(&corpus, &root.join("results"), "numenta").expect("results");
    let thresholds = read_thresholds(&root, "numenta").expect("thresholds");
    let scores =
        score_results(&corpus, &results, ThresholdChoice::Fixed(thresholds)).expect("score");
    let out = crate::support::ScratchDir::new("score-tables");
    write_score_tables(&out.0, "numenta", &corpus, &scores).expect("write tables");
    for profile in ProfileName::ALL {
        let path = score_table_path(&out.0, "numenta", profile);
        let text = std::fs::read_to_string(&path).expect("score table");
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("Detector,Profile,File,Threshold,Score,TP,TN,FP,FN,Total_Count")
        );
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        assert_eq!(rows.len(), corpus.files.len() + 1, "{text}");
        let (mut raw, mut tp) = (0.0, 0);
        for (row, file) in rows.iter().zip(&corpus.files) {
            assert_eq!(row[..3], ["numenta", profile.nab_name(), file.key.as_str()]);
            assert_eq!(
                row[3].parse::<f64>().ok(),
                Some(scores.profile(profile).threshold)
            );
            let want = &expected["per_file"]["numenta"][profile.nab_name()][&file.key];
            let score: f64 = row[4].parse().expect("score");
            assert!((score - want["score"].as_f64().expect("score")).abs() < 1e-9);
            for (column, name) in [
                (5, "TP"),
                (6, "TN"),
                (7, "FP"),
                (8, "FN"),
                (9, "Total_Count"),
            ] {
                assert_eq!(
                    row[column].parse::<u64>().ok(),
                    want[name].as_u64(),
                    "{name}"
                );
            }
            raw += score;
            tp += row[5].parse::<u64>().expect("tp");
        }
        let totals = rows.last().expect("totals");
        assert_eq!(totals[..4], ["Totals", "", "", ""]);
        assert!((totals[4].parse::<f64>().expect("raw") - raw).abs() < 1e-12);
        assert_eq!(totals[5].parse::<u64>().ok(), Some(tp));
    }
}

#[test]
fn category_sums_count_detected_windows_and_normalise_over_their_own_windows() {
    let root = fixture("nab");
    let corpus = NabCorpus::load(&root).expect("load fixture corpus");
    let constant = |value: f64| -> AnomalyScores {
        corpus
            .files
            .iter()
            .map(|f| (f.key.clone(), vec![value; f.len()]))
            .collect()
    };
    // Every row detected: every window is found on its first row, and the false positives
    // cost, so each category scores below 100. No row detected: the null detector, 0.
    let all =
        score_results(&corpus, &constant(1.0), ThresholdChoice::Fixed([0.5; 3])).expect("all");
    let none =
        score_results(&corpus, &constant(0.0), ThresholdChoice::Fixed([0.5; 3])).expect("none");
    for profile in ProfileName::ALL {
        let (all, none) = (all.profile(profile), none.profile(profile));
        assert_eq!(all.per_category.len(), 3, "one category per fixture file");
        for (name, category) in &all.per_category {
            let file = corpus
                .files
                .iter()
                .find(|f| f.category() == name)
                .expect("file of category");
            assert_eq!(category.files, 1);
            assert_eq!(category.windows, file.windows.len());
            assert_eq!(category.detected_windows, category.windows, "{name}");
            assert!(category.counts.fp > 0);
            let costs = corpus.profile(profile);
            let windows = category.windows as f64;
            let want = 100.0 * (category.raw + costs.fn_weight * windows)
                / ((costs.tp_weight + costs.fn_weight) * windows);
            let normalised = category.normalized.expect("windows");
            assert!((normalised - want).abs() < 1e-9, "{name}: {normalised}");
            assert!(normalised < 100.0, "{name}: {normalised}");
            let nothing = &none.per_category[name];
            assert_eq!(nothing.detected_windows, 0);
            assert_eq!(nothing.normalized, Some(0.0), "{name}");
        }
        let sum: f64 = all.per_category.values().map(|c| c.raw).sum();
        assert!((sum - all.raw).abs() < 1e-9);
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
