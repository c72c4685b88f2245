//! SKAB's protocol without SKAB's data (GPL-3.0, never copied here): the evaluator on a
//! synthetic prediction fixture with hand-checked counts, and `run_skab` end to end on
//! synthetic multivariate files in SKAB's format.

use std::fmt::Write as _;
use std::path::Path;

use fabrik_ml::RowDetectorKind;
use fabrik_ml::skab::{self, ChangepointRule, SkabItem};

use crate::support::ScratchDir;

fn flags(n: usize, on: impl Fn(usize) -> bool) -> Vec<bool> {
    (0..n).map(on).collect()
}

/// Two files (SPEC: README "Evaluation protocol").
///
/// A: 200 rows at 1 Hz from t = 1000 s; anomaly rows 50..=109, changepoints at rows 50 and
/// 110; predicted 1 on rows 60..=119 and row 150 (diff rule).
///   Outliers: TP 60..=109 → 50, FP 110..=119 + 150 → 11, FN 50..=59 → 10, TN 129.
///   Changepoints: windows [1050, 1110] and [1110, 1170]; predicted changepoints at 1060
///   (rise), 1120 (fall), 1150, 1151 → both windows detected 10 s after their start, no FP.
/// B: 100 rows from t = 5000 s; anomaly rows 40..=69, changepoints at rows 40 and 70;
/// predictions only for rows 10..=99 (1 on rows 45..=80), rolling30 rule.
///   Outliers over the 90 common rows: TP 45..=69 → 25, FP 70..=80 → 11, FN 40..=44 → 5,
///   TN 49.
///   Changepoints: the 30-row rolling max rises at row 45 (t = 5045) and never falls; windows
///   [5040, 5100] and, cut, [5100, 5130] → first detected after 5 s, second missed.
/// Totals: TP 75, FP 22, FN 15, TN 178; F1 = 75/(75 + 37/2) = 0.80214; FAR = 2200/200 = 11 %;
/// MAR = 1500/90 = 16.667 %; 4 windows, 1 missed, 0 FP, mean delay (10 + 10 + 5)/3 s.
/// NAB scores (tanh curve) from the verified Python port research/skab/evaluate.py.
fn fixture_items() -> Vec<SkabItem> {
    let a_seconds: Vec<i64> = (1000..1200).collect();
    let b_seconds: Vec<i64> = (5000..5100).collect();
    vec![
        SkabItem {
            label_seconds: a_seconds.clone(),
            anomaly: flags(200, |r| (50..110).contains(&r)),
            changepoint: flags(200, |r| r == 50 || r == 110),
            prediction_seconds: a_seconds,
            prediction: flags(200, |r| (60..120).contains(&r) || r == 150),
            rule: ChangepointRule::Diff,
        },
        SkabItem {
            label_seconds: b_seconds.clone(),
            anomaly: flags(100, |r| (40..70).contains(&r)),
            changepoint: flags(100, |r| r == 40 || r == 70),
            prediction_seconds: b_seconds[10..].to_vec(),
            prediction: flags(90, |j| (35..71).contains(&j)),
            rule: ChangepointRule::Rolling30,
        },
    ]
}

#[test]
fn evaluator_reproduces_the_hand_checked_fixture() {
    let metrics = skab::evaluate(&fixture_items());
    let o = metrics.outlier;
    assert_eq!((o.tp, o.fp, o.fn_, o.tn), (75, 22, 15, 178));
    assert!((o.f1() - 75.0 / (75.0 + 37.0 / 2.0)).abs() < 1e-15);
    assert!((o.far_percent() - 11.0).abs() < 1e-12);
    assert!((o.mar_percent() - 1500.0 / 90.0).abs() < 1e-12);
    let c = metrics.changepoint;
    assert_eq!(
        (c.true_changepoints, c.missed, c.false_positives),
        (4, 1, 0)
    );
    let delay = c.mean_detection_delay_seconds.expect("detected windows");
    assert!((delay - 25.0 / 3.0).abs() < 1e-12);
    assert!(
        (c.nab_standard - 72.544_811_700_957_77).abs() < 1e-9,
        "{}",
        c.nab_standard
    );
    assert!(
        (c.nab_low_fp - 72.301_504_752_404_03).abs() < 1e-9,
        "{}",
        c.nab_low_fp
    );
    assert!(
        (c.nab_low_fn - 73.363_207_800_638_5).abs() < 1e-9,
        "{}",
        c.nab_low_fn
    );
}

#[test]
fn a_perfect_prediction_scores_perfectly_and_an_empty_one_scores_null() {
    let item = |prediction: Vec<bool>| SkabItem {
        label_seconds: (0..300).collect(),
        anomaly: flags(300, |r| (100..200).contains(&r)),
        changepoint: flags(300, |r| r == 100 || r == 200),
        prediction_seconds: (0..300).collect(),
        prediction,
        rule: ChangepointRule::Diff,
    };
    let perfect = skab::evaluate(&[item(flags(300, |r| (100..200).contains(&r)))]);
    assert_eq!(perfect.outlier.f1(), 1.0);
    assert!((perfect.changepoint.nab_standard - 100.0).abs() < 1e-9);
    let null = skab::evaluate(&[item(vec![false; 300])]);
    assert_eq!(null.outlier.f1(), 0.0);
    assert!(null.changepoint.nab_standard.abs() < 1e-9);
    assert_eq!(null.changepoint.mean_detection_delay_seconds, None);
}

/// xorshift noise in [−0.5, 0.5).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1_u64 << 53) as f64 - 0.5
    }
}

/// A SKAB-format file: 3 channels at 1 Hz; if `fault` is given, channel B steps up by 8 (about
/// 28 noise σ) on those rows, which are labelled anomalous with changepoints at both ends.
fn write_synthetic(path: &Path, seed: u64, fault: Option<std::ops::Range<usize>>) {
    let mut noise = Noise(seed);
    let mut text = String::from("datetime;Current;Pressure;Flow;anomaly;changepoint\n");
    for row in 0..1000_usize {
        let (hour, minute, second) = (10 + row / 3600, (row / 60) % 60, row % 60);
        let faulty = fault.as_ref().is_some_and(|f| f.contains(&row));
        let edge = fault
            .as_ref()
            .is_some_and(|f| row == f.start || row == f.end);
        let slow = (row as f64 * 0.01).sin();
        let _ = writeln!(
            text,
            "2020-03-09 {hour:02}:{minute:02}:{second:02};{:.6};{:.6};{:.6};{}.0;{}.0",
            1.3 + 0.05 * slow + 0.3 * noise.next(),
            0.2 + 0.3 * noise.next() + if faulty { 8.0 * 0.3 } else { 0.0 },
            32.0 + slow + noise.next(),
            u8::from(faulty),
            u8::from(edge),
        );
    }
    std::fs::write(path, text).expect("write synthetic file");
}

#[test]
fn run_skab_detects_synthetic_step_faults_and_stays_quiet_otherwise() {
    let dir = ScratchDir::new("skab");
    let data = dir.0.join("data");
    for sub in ["valve1", "anomaly-free"] {
        std::fs::create_dir_all(data.join(sub)).expect("mkdir");
    }
    write_synthetic(&data.join("valve1/0.csv"), 1, Some(600..800));
    write_synthetic(&data.join("valve1/2.csv"), 2, None);
    write_synthetic(&data.join("valve1/10.csv"), 3, Some(450..700));
    // Normal-operation data is not part of the protocol and must be skipped.
    write_synthetic(
        &data.join("anomaly-free/anomaly-free.csv"),
        4,
        Some(500..900),
    );

    let files = skab::load_labelled_files(&data).expect("load");
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["valve1/0.csv", "valve1/2.csv", "valve1/10.csv"],
        "numeric order"
    );
    assert_eq!(files[0].sensors, ["Current", "Pressure", "Flow"]);

    let report = skab::run_skab(&data, RowDetectorKind::Dbz).expect("run_skab");
    assert_eq!(report.files, 3);
    let quiet = &report.per_file[1];
    assert_eq!(quiet.counts.fp, 0, "no alarms on the fault-free file");
    let o = report.metrics.outlier;
    assert!(report.f1 > 0.85, "F1 {} ({o:?})", report.f1);
    // DBZ holds its alarm 30 rows past the last exceedance and the rolling mean needs up to
    // 20 rows to recover: about 50 normal rows alarm after each fault, ~7 % of normal rows.
    assert!(report.far < 10.0, "FAR {}", report.far);
    let c = &report.metrics.changepoint;
    assert_eq!(c.true_changepoints, 4);
    assert_eq!((c.missed, c.false_positives), (0, 0), "{c:?}");
    // Each fault alarms within the 20-row smoothing window of its start.
    let predictions = skab::predict_files(&files, RowDetectorKind::Dbz).expect("predict");
    for (file, fault_start) in [(0, 600), (2, 450)] {
        let first = predictions[file]
            .iter()
            .position(|&alarm| alarm)
            .expect("an alarm");
        let delay = (first + skab::TRAINING_ROWS)
            .checked_sub(fault_start)
            .expect("no alarm before the fault");
        assert!(
            delay <= 20,
            "{}: first alarm {delay} rows after the fault",
            files[file].name
        );
    }

    let pca = skab::run_skab(&data, RowDetectorKind::PcaT2Q).expect("run_skab pca");
    assert!(pca.metrics.outlier.tp > 0, "PCA T²+Q sees a 28-σ step");
}

#[test]
fn skab_files_are_found_from_the_repository_root_its_data_or_one_group() {
    // SKAB's repository layout, with a stray CSV outside data/ that is not SKAB's format.
    let dir = ScratchDir::new("skab-layouts");
    let data = dir.0.join("data");
    for sub in ["valve2", "other", "anomaly-free"] {
        std::fs::create_dir_all(data.join(sub)).expect("mkdir");
    }
    std::fs::create_dir_all(dir.0.join("notebooks")).expect("mkdir");
    std::fs::write(dir.0.join("notebooks/results.csv"), "model,f1\nx,0.5\n").expect("write");
    write_synthetic(&data.join("valve2/1.csv"), 1, None);
    write_synthetic(&data.join("other/11.csv"), 2, None);
    write_synthetic(&data.join("other/9.csv"), 3, None);
    write_synthetic(&data.join("anomaly-free/anomaly-free.csv"), 4, None);
    let names = |root: &std::path::Path| -> Vec<String> {
        skab::load_labelled_files(root)
            .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
            .into_iter()
            .map(|f| f.name)
            .collect()
    };
    let all = ["other/9.csv", "other/11.csv", "valve2/1.csv"];
    assert_eq!(names(&dir.0), all, "repository root: only data/ is walked");
    assert_eq!(names(&data), all, "data directory");
    assert_eq!(names(&data.join("other")), ["other/9.csv", "other/11.csv"]);
    // Per group, the counts of its files; together, the pooled counts.
    let report = skab::run_skab(&dir.0, RowDetectorKind::Dbz).expect("run from the root");
    let groups: Vec<(&str, usize)> = report
        .per_group
        .iter()
        .map(|(name, g)| (name.as_str(), g.files))
        .collect();
    assert_eq!(groups, [("other", 2), ("valve2", 1)]);
    let mut other = report.per_file[0].counts;
    other += report.per_file[1].counts;
    assert_eq!(report.per_group["other"].counts, other);
    let pooled: skab::OutlierCounts = report.per_group.values().map(|g| g.counts).sum();
    assert_eq!(pooled, report.metrics.outlier);
    let error = skab::load_labelled_files(&data.join("anomaly-free")).expect_err("unlabelled");
    assert!(
        error.to_string().contains("no labelled SKAB files"),
        "{error}"
    );
}

#[test]
fn too_short_files_are_rejected() {
    let dir = ScratchDir::new("skab-short");
    let data = dir.0.join("data/valve1");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(
        data.join("0.csv"),
        "datetime;A;anomaly;changepoint\n2020-03-09 10:00:00;1.0;0.0;0.0\n",
    )
    .expect("write");
    let error = skab::run_skab(&dir.0.join("data"), RowDetectorKind::Dbz).expect_err("short");
    assert!(error.to_string().contains("valve1/0.csv"), "{error}");
}
