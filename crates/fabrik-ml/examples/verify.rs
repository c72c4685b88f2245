//! Reproduces the reference numbers on the shared benchmark data (not part of the test suite,
//! which must run without `/work/shared`):
//!
//! 1. NAB scorer: the 5 reference detectors' shipped results, scored with NAB's thresholds and
//!    with re-optimised ones, against `expected_subset_scores.json`;
//! 2. RART over the NAB subset (bit-exactness against the Python reference's results when
//!    given, and its optimised scores), plus the streaming baselines;
//! 3. SKAB evaluator: SKAB's published valve1 predictions against
//!    `expected_valve1_metrics.json`; DBZ's per-row outputs against the Python reference's
//!    test vectors; DBZ and PCA T²+Q through `run_skab`.
//!
//! ```text
//! cargo run --release --example verify -- [--nab-dir DIR] [--skab-dir DIR]
//!     [--rart-reference DIR/fabrik2] [--skab-reference FILE] [--out DIR]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use fabrik_ml::detectors::RowDetector;
use fabrik_ml::detectors::dbz::{Dbz, DbzConfig};
use fabrik_ml::nab::{
    self, NabCorpus, ProfileName, ThresholdChoice, optimize_threshold, read_results, score_results,
};
use fabrik_ml::skab::{self, ChangepointRule, SkabFile, SkabItem};
use fabrik_ml::{MlError, RowDetectorKind, StreamingDetectorKind};
use serde_json::Value;

const REFERENCE_DETECTORS: [&str; 5] = [
    "numenta",
    "windowedGaussian",
    "random",
    "null",
    "randomCutForest",
];

struct Args {
    nab_dir: PathBuf,
    skab_dir: PathBuf,
    rart_reference: Option<PathBuf>,
    skab_reference: PathBuf,
    out: PathBuf,
}

fn parse_args() -> Args {
    let mut args = Args {
        nab_dir: "/work/shared/data/nab".into(),
        skab_dir: "/work/shared/data/skab".into(),
        rart_reference: None,
        skab_reference: "/work/research/skab/reference_outputs_valve1.json".into(),
        out: std::env::temp_dir().join("fabrik-ml-verify"),
    };
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let value = raw.next().unwrap_or_default();
        match flag.as_str() {
            "--nab-dir" => args.nab_dir = value.into(),
            "--skab-dir" => args.skab_dir = value.into(),
            "--rart-reference" => args.rart_reference = Some(value.into()),
            "--skab-reference" => args.skab_reference = value.into(),
            "--out" => args.out = value.into(),
            other => eprintln!("ignoring unknown argument {other}"),
        }
    }
    args
}

fn read_json(path: &Path) -> Result<Value, MlError> {
    let text = std::fs::read_to_string(path).map_err(|source| MlError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| MlError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn number(value: &Value) -> f64 {
    value.as_f64().unwrap_or(f64::NAN)
}

/// Tallies checks so the program can exit non-zero when any fails.
#[derive(Default)]
struct Checks {
    failed: Vec<String>,
    passed: usize,
}

impl Checks {
    fn check(&mut self, ok: bool, what: impl Into<String>) -> &'static str {
        if ok {
            self.passed += 1;
            "OK"
        } else {
            self.failed.push(what.into());
            "MISMATCH"
        }
    }
}

fn verify_nab_scorer(args: &Args, checks: &mut Checks) -> Result<(), MlError> {
    println!(
        "== 1. NAB scorer on the 5 reference detectors ({})",
        args.nab_dir.display()
    );
    let corpus = NabCorpus::load(&args.nab_dir)?;
    let expected = read_json(&args.nab_dir.join("expected_subset_scores.json"))?;
    println!(
        "   corpus: {} files, {} windows",
        corpus.files.len(),
        corpus.window_count()
    );
    for detector in REFERENCE_DETECTORS {
        let results = read_results(&corpus, &args.nab_dir.join("results"), detector)?;
        let thresholds = nab::read_thresholds(&args.nab_dir, detector)?;
        let scores = score_results(&corpus, &results, ThresholdChoice::Fixed(thresholds))?;
        for profile in ProfileName::ALL {
            let name = profile.nab_name();
            let ours = scores.profile(profile);
            let want = number(&expected["scores"][detector][name]);
            let totals = &expected["raw_totals"][detector][name];
            let counts_ok = ours.counts.tp as f64 == number(&totals["TP"])
                && ours.counts.fp as f64 == number(&totals["FP"])
                && ours.counts.fn_ as f64 == number(&totals["FN"])
                && ours.counts.tn as f64 == number(&totals["TN"]);
            let per_file_error = ours
                .per_file
                .iter()
                .map(|(key, file)| {
                    (file.score - number(&expected["per_file"][detector][name][key]["score"])).abs()
                })
                .fold(0.0, f64::max);
            let (opt_threshold, _) = optimize_threshold(&corpus, &results, profile)?;
            let optimised = nab::score_at_threshold(&corpus, &results, opt_threshold, profile)?;
            let want_opt = number(&expected["subset_optimized"]["scores"][detector][name]);
            let want_opt_threshold =
                number(&expected["subset_optimized"]["thresholds"][detector][name]);
            let ok = (ours.normalized - want).abs() <= 1e-9
                && counts_ok
                && per_file_error <= 1e-9
                && (optimised.normalized - want_opt).abs() <= 1e-9
                && (opt_threshold - want_opt_threshold).abs() <= 1e-11;
            let verdict = checks.check(ok, format!("NAB scorer {detector} {name}"));
            println!(
                "   {detector:16} {name:19} score {:9.4} (expected {want:9.4}, diff {:.1e}) \
                 counts {} max file diff {per_file_error:.1e} | optimised {:8.4} t={opt_threshold:.12} \
                 (expected {want_opt:8.4} t={want_opt_threshold}) {verdict}",
                ours.normalized,
                (ours.normalized - want).abs(),
                if counts_ok { "equal" } else { "DIFFER" },
                optimised.normalized,
            );
        }
    }
    Ok(())
}

fn verify_rart(args: &Args, checks: &mut Checks) -> Result<(), MlError> {
    println!("== 2. RART over the NAB subset (one configuration, thresholds optimised)");
    let report = nab::run_nab(&args.nab_dir, &args.out, "rart")?;
    println!(
        "   {} files, {} rows, detector time {:.2} s ({:.0} rows/s), results in {}",
        report.files,
        report.rows,
        report.detector_seconds,
        report.rows as f64 / report.detector_seconds,
        args.out.join("rart").display()
    );
    let expected = [81.34, 71.56, 86.93];
    for (profile, want) in ProfileName::ALL.into_iter().zip(expected) {
        let score = report.scores.profile(profile);
        let verdict = checks.check(
            (score.normalized - want).abs() < 0.005,
            format!("RART {}", profile.nab_name()),
        );
        println!(
            "   rart {:19} {:8.4} at t={:.12} (TP {} FP {} FN {}) expected ~{want} {verdict}",
            profile.nab_name(),
            score.normalized,
            score.threshold,
            score.counts.tp,
            score.counts.fp,
            score.counts.fn_,
        );
    }
    if let Some(reference) = &args.rart_reference {
        let corpus = NabCorpus::load(&args.nab_dir)?;
        let parent = reference.parent().unwrap_or(Path::new("."));
        let name = reference
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("fabrik2");
        let theirs = read_results(&corpus, parent, name)?;
        let ours = read_results(&corpus, &args.out, "rart")?;
        let (mut worst, mut differing, mut rows, mut detections_differ) = (0.0_f64, 0, 0, 0);
        for (key, their_scores) in &theirs {
            for (a, b) in ours[key].iter().zip(their_scores) {
                rows += 1;
                worst = worst.max((a - b).abs());
                differing += usize::from(a != b);
                detections_differ += usize::from((*a > 0.0) != (*b > 0.0));
            }
        }
        let verdict = checks.check(worst <= 1e-9, "RART vs Python reference");
        println!(
            "   vs Python reference {}: {rows} rows, {differing} differ, max |diff| {worst:.3e}, \
             emitted-row sets differ on {detections_differ} rows {verdict}",
            reference.display()
        );
    }
    for kind in [
        StreamingDetectorKind::RobustZ,
        StreamingDetectorKind::Ewma,
        StreamingDetectorKind::HalfSpaceTrees,
    ] {
        let report = nab::run_nab(&args.nab_dir, &args.out, kind.name())?;
        println!(
            "   baseline {:9} standard {:7.2}  low FP {:7.2}  low FN {:7.2}  ({:.0} rows/s)",
            kind.name(),
            report.scores.standard.normalized,
            report.scores.reward_low_fp_rate.normalized,
            report.scores.reward_low_fn_rate.normalized,
            report.rows as f64 / report.detector_seconds,
        );
    }
    Ok(())
}

fn round2(x: f64) -> f64 {
    format!("{x:.2}").parse().unwrap_or(f64::NAN)
}

fn verify_skab_evaluator(
    args: &Args,
    files: &BTreeMap<String, SkabFile>,
    checks: &mut Checks,
) -> Result<(), MlError> {
    println!("== 3a. SKAB evaluator on SKAB's published valve1 predictions");
    let predictions = read_json(&args.skab_dir.join("reference_predictions_valve1.json"))?;
    let expected = read_json(&args.skab_dir.join("expected_valve1_metrics.json"))?;
    let Some(algorithms) = predictions["algorithms"].as_object() else {
        return Err(MlError::Layout(
            "no algorithms in reference predictions".into(),
        ));
    };
    for (name, algorithm) in algorithms {
        let rule = match algorithm["changepoint_rule"].as_str() {
            Some("rolling30") => ChangepointRule::Rolling30,
            _ => ChangepointRule::Diff,
        };
        let mut items = Vec::new();
        for (file_name, entry) in algorithm["files"].as_object().into_iter().flatten() {
            let file = files
                .get(file_name)
                .ok_or_else(|| MlError::Layout(format!("no data file {file_name}")))?;
            let first = entry["first_row"].as_u64().unwrap_or(0) as usize;
            let n = entry["n"].as_u64().unwrap_or(0) as usize;
            let label_start = entry["label_rows"][0].as_u64().unwrap_or(0) as usize;
            let label_end = entry["label_rows"][1].as_u64().unwrap_or(0) as usize;
            items.push(SkabItem {
                label_seconds: file.seconds[label_start..label_end].to_vec(),
                anomaly: file.anomaly[label_start..label_end].to_vec(),
                changepoint: file.changepoint[label_start..label_end].to_vec(),
                prediction_seconds: file.seconds[first..first + n].to_vec(),
                prediction: entry["prediction"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| p.as_i64() == Some(1))
                    .collect(),
                rule,
            });
        }
        let metrics = skab::evaluate(&items);
        let want = &expected["valve1"][name.as_str()];
        let o = &metrics.outlier;
        let c = &metrics.changepoint;
        let outlier_ok = round2(o.f1()) == number(&want["outlier"]["F1"])
            && round2(o.far_percent()) == number(&want["outlier"]["FAR_percent"])
            && round2(o.mar_percent()) == number(&want["outlier"]["MAR_percent"])
            && o.tp as f64 == number(&want["outlier"]["TP"])
            && o.tn as f64 == number(&want["outlier"]["TN"])
            && o.fp as f64 == number(&want["outlier"]["FP"])
            && o.fn_ as f64 == number(&want["outlier"]["FN"]);
        let wc = &want["changepoint"];
        let delay_ok = match (
            c.mean_detection_delay_seconds,
            wc["mean_detection_delay_s"].as_f64(),
        ) {
            (Some(ours), Some(theirs)) => (ours - theirs).abs() < 1e-4,
            (None, None) => true,
            _ => false,
        };
        let changepoint_ok = round2(c.nab_standard) == number(&wc["NAB_standard"])
            && round2(c.nab_low_fp) == number(&wc["NAB_LowFP"])
            && round2(c.nab_low_fn) == number(&wc["NAB_LowFN"])
            && c.missed as f64 == number(&wc["missed_CPs"])
            && c.false_positives as f64 == number(&wc["FPs"])
            && c.true_changepoints as f64 == number(&wc["true_CPs"])
            && delay_ok;
        let verdict = checks.check(
            outlier_ok && changepoint_ok,
            format!("SKAB evaluator {name}"),
        );
        println!(
            "   {name:24} F1 {:.2} FAR {:6.2} MAR {:6.2} | NAB {:6.2} {:6.2} {:6.2} missed {:2}/{} FPs {:3} \
             delay {:7.3} {verdict}",
            o.f1(),
            o.far_percent(),
            o.mar_percent(),
            c.nab_standard,
            c.nab_low_fp,
            c.nab_low_fn,
            c.missed,
            c.true_changepoints,
            c.false_positives,
            c.mean_detection_delay_seconds.unwrap_or(f64::NAN),
        );
    }
    Ok(())
}

fn verify_dbz_vectors(
    args: &Args,
    files: &BTreeMap<String, SkabFile>,
    checks: &mut Checks,
) -> Result<(), MlError> {
    println!("== 3b. DBZ per-row outputs vs the Python reference's test vectors");
    if !args.skab_reference.exists() {
        println!("   skipped: {} not found", args.skab_reference.display());
        return Ok(());
    }
    let reference = read_json(&args.skab_reference)?;
    let (mut rows, mut alarm_mismatch, mut near_threshold) = (0, 0, 0);
    let (mut worst_relative, mut worst_scale, mut worst_baseline) = (0.0_f64, 0.0_f64, 0.0_f64);
    for (name, vectors) in reference["files"].as_object().into_iter().flatten() {
        let file = files
            .get(name)
            .ok_or_else(|| MlError::Layout(format!("no data file {name}")))?;
        let mut detector = Dbz::new(DbzConfig::default());
        detector.fit(&file.rows[..skab::TRAINING_ROWS])?;
        for (ours, theirs) in detector
            .scales()
            .unwrap_or_default()
            .iter()
            .zip(vectors["fit_s"].as_array().into_iter().flatten())
        {
            worst_scale = worst_scale.max(((ours - number(theirs)) / number(theirs)).abs());
        }
        for (ours, theirs) in detector.baseline().unwrap_or_default().iter().zip(
            vectors["fit_b_end_of_training"]
                .as_array()
                .into_iter()
                .flatten(),
        ) {
            worst_baseline = worst_baseline.max((ours - number(theirs)).abs());
        }
        let alarms = vectors["alarm"].as_array().cloned().unwrap_or_default();
        let scores = vectors["score"].as_array().cloned().unwrap_or_default();
        for (i, row) in file.rows[skab::TRAINING_ROWS..].iter().enumerate() {
            let step = detector.step(row)?;
            rows += 1;
            let their_score = number(&scores[i]);
            // The reference rounds scores to 9 decimals.
            let relative = (step.max_z - their_score).abs() / their_score.abs().max(1.0);
            worst_relative = worst_relative.max(relative);
            if step.alarm != (alarms[i].as_i64() == Some(1)) {
                if (step.max_z - 6.0).abs() < 1e-9 {
                    near_threshold += 1;
                } else {
                    alarm_mismatch += 1;
                }
            }
        }
    }
    let verdict = checks.check(
        alarm_mismatch == 0 && worst_relative < 1e-9 && worst_scale < 1e-12,
        "DBZ test vectors",
    );
    println!(
        "   {rows} rows: alarms differing {alarm_mismatch} (+{near_threshold} within 1e-9 of Z), \
         max score diff {worst_relative:.2e} (reference has 9 decimals), \
         max rel scale diff {worst_scale:.1e}, max baseline diff {worst_baseline:.1e} {verdict}"
    );
    Ok(())
}

fn verify_skab_runs(args: &Args, checks: &mut Checks) -> Result<(), MlError> {
    println!("== 3c. run_skab on valve1");
    let data_dir = args.skab_dir.join("data");
    for kind in RowDetectorKind::ALL {
        let report = skab::run_skab(&data_dir, kind)?;
        let o = &report.metrics.outlier;
        let c = &report.metrics.changepoint;
        let verdict = if kind == RowDetectorKind::Dbz {
            let ok = (report.f1 - 0.8650).abs() < 5e-5
                && (o.tp, o.tn, o.fp, o.fn_) == (5333, 4763, 688, 976)
                && round2(report.nab_standard) == 35.38
                && round2(report.nab_low_fp) == 33.46
                && round2(report.nab_low_fn) == 39.46
                && c.missed == 33
                && c.false_positives == 9;
            checks.check(ok, "DBZ on valve1")
        } else {
            "(baseline, no reference)"
        };
        println!(
            "   {:8} files {:2} F1 {:.4} FAR {:6.2}% MAR {:6.2}% (TP {} TN {} FP {} FN {}) | NAB std {:6.2} \
             lowFP {:6.2} lowFN {:6.2} missed {}/{} FPs {} delay {:.1}s | {:.3} s {verdict}",
            report.detector,
            report.files,
            report.f1,
            report.far,
            report.mar,
            o.tp,
            o.tn,
            o.fp,
            o.fn_,
            report.nab_standard,
            report.nab_low_fp,
            report.nab_low_fn,
            c.missed,
            c.true_changepoints,
            c.false_positives,
            c.mean_detection_delay_seconds.unwrap_or(f64::NAN),
            report.detector_seconds,
        );
        if kind == RowDetectorKind::Dbz {
            let per_file: Vec<String> = report
                .per_file
                .iter()
                .map(|f| format!("{:.2}", f.f1))
                .collect();
            println!("   dbz per-file F1: {}", per_file.join(" "));
        }
    }
    Ok(())
}

fn run(args: &Args, checks: &mut Checks) -> Result<(), MlError> {
    verify_nab_scorer(args, checks)?;
    verify_rart(args, checks)?;
    let files: BTreeMap<String, SkabFile> = skab::load_labelled_files(&args.skab_dir.join("data"))?
        .into_iter()
        .map(|f| (f.name.clone(), f))
        .collect();
    verify_skab_evaluator(args, &files, checks)?;
    verify_dbz_vectors(args, &files, checks)?;
    verify_skab_runs(args, checks)
}

fn main() -> ExitCode {
    let args = parse_args();
    let mut checks = Checks::default();
    if let Err(error) = run(&args, &mut checks) {
        eprintln!("error: {error}");
        return ExitCode::FAILURE;
    }
    println!(
        "== {} checks passed, {} failed{}",
        checks.passed,
        checks.failed.len(),
        if checks.failed.is_empty() {
            String::new()
        } else {
            format!(": {}", checks.failed.join("; "))
        }
    );
    if checks.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
