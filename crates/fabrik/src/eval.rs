//! `fabrik eval nab|skab|cbpe`: score Fabrik's anomaly detectors on the public benchmarks, with
//! the benchmarks' own protocols, and estimate a classifier's performance on data without
//! targets (fabrik-ml does the work; this is the command line).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use fabrik_ml::{RowDetectorKind, StreamingDetectorKind};

/// `fabrik eval ...`
#[derive(Debug, Args)]
pub(crate) struct EvalArgs {
    #[command(subcommand)]
    command: EvalCommand,
}

#[derive(Debug, Subcommand)]
enum EvalCommand {
    /// Numenta Anomaly Benchmark: stream every file through a detector, write NAB-format
    /// results and score them as NAB's scorer does (thresholds optimised over the corpus).
    Nab {
        /// A NAB tree: data/<category>/<file>.csv and labels/combined_windows.json.
        #[arg(long)]
        nab_dir: PathBuf,
        /// Where <detector>/<category>/<detector>_<file>.csv go.
        #[arg(long)]
        out: PathBuf,
        /// Detector: rart (default), robust_z, ewma, hst.
        #[arg(long, default_value = "rart")]
        detector: String,
        /// Print one JSON object (keys standard, reward_low_FP_rate, reward_low_FN_rate).
        #[arg(long)]
        json: bool,
    },
    /// Skoltech Anomaly Benchmark: per file, fit on the first 400 rows and score the rest;
    /// outlier F1/FAR/MAR and SKAB's changepoint (NAB-like) scores over all files.
    Skab {
        /// SKAB's repository root, its data/ directory or one group's directory (e.g.
        /// data/valve2): every labelled *.csv below it, at any depth; anomaly-free is skipped.
        #[arg(long)]
        data: PathBuf,
        /// Detector: dbz (default), pca_t2q or iforest.
        #[arg(long, default_value = "dbz")]
        detector: String,
        /// Print one JSON object (keys f1, far, mar, ...).
        #[arg(long)]
        json: bool,
    },
    /// A binary classifier's performance where targets are not known yet (NannyML's
    /// confidence-based performance estimation): fitted on a reference CSV with targets,
    /// ROC AUC, F1, accuracy, precision and recall estimated per chunk of an analysis CSV from
    /// the model's scores alone, with sampling errors, mean ± 3σ thresholds and alerts. It
    /// sees decay from inputs the model is less sure of, not a changed relation between inputs
    /// and targets (concept drift), which only targets show.
    Cbpe {
        /// CSV with the model's scores, predictions and the targets (the reference period).
        #[arg(long)]
        reference: PathBuf,
        /// CSV with scores and predictions (targets, if present, are shown as realized).
        #[arg(long)]
        analysis: PathBuf,
        /// Rows per chunk (the reference needs 2 chunks at least).
        #[arg(long, default_value_t = 5000)]
        chunk_size: usize,
        /// The column of scores: the probability of the positive class.
        #[arg(long, default_value = "y_pred_proba")]
        score: String,
        /// The column of predicted classes (0/1).
        #[arg(long, default_value = "y_pred")]
        prediction: String,
        /// The column of true classes (0/1).
        #[arg(long, default_value = "y_true")]
        target: String,
        /// Print one JSON object (keys calibrated, chunks).
        #[arg(long)]
        json: bool,
    },
}

/// `fabrik eval cbpe`.
fn run_cbpe(
    reference: &std::path::Path,
    analysis: &std::path::Path,
    chunk_size: usize,
    columns: [&str; 3],
    json: bool,
) -> anyhow::Result<()> {
    use fabrik_ml::cbpe::{Cbpe, Metric, chunks, read_rows, realized};
    let [score, prediction, target] = columns;
    let reference_rows = read_rows(reference, score, prediction, Some(target))?;
    let Some(targets) = reference_rows.targets.as_deref() else {
        anyhow::bail!(
            "{}: no column `{target}`: the reference needs the targets (--target names it)",
            reference.display()
        );
    };
    let targets: Vec<bool> = match targets.iter().position(Option::is_none) {
        Some(row) => anyhow::bail!(
            "{}: row {} has no `{target}`: every reference row needs its target",
            reference.display(),
            row + 1
        ),
        None => targets.iter().flatten().copied().collect(),
    };
    let analysis_rows = read_rows(analysis, score, prediction, Some(target))?;
    let cbpe = Cbpe::fit(
        &reference_rows.scores,
        &reference_rows.predictions,
        &targets,
        &Metric::ALL,
        chunk_size,
    )
    .with_context(|| format!("fitting on {}", reference.display()))?;
    let mut out = Vec::new();
    for (period, rows) in [("reference", &reference_rows), ("analysis", &analysis_rows)] {
        for range in chunks(rows.scores.len(), chunk_size) {
            let estimates = cbpe.estimate(
                &rows.scores[range.clone()],
                &rows.predictions[range.clone()],
            )?;
            let metrics: serde_json::Map<String, serde_json::Value> = estimates
                .iter()
                .map(|e| {
                    // Realized only where every target of the chunk is known.
                    let known: Option<Vec<bool>> = rows
                        .targets
                        .as_ref()
                        .and_then(|t| t[range.clone()].iter().copied().collect());
                    let real = known.and_then(|t| {
                        realized(
                            e.metric,
                            &t,
                            &rows.predictions[range.clone()],
                            &rows.scores[range.clone()],
                        )
                    });
                    (
                        e.metric.name().to_owned(),
                        serde_json::json!({
                            "value": e.value,
                            "sampling_error": e.sampling_error,
                            "lower_threshold": e.lower_threshold,
                            "upper_threshold": e.upper_threshold,
                            "alert": e.alert,
                            "realized": real,
                        }),
                    )
                })
                .collect();
            out.push(serde_json::json!({
                "period": period,
                "start": range.start,
                "end": range.end,
                "metrics": metrics,
            }));
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({ "calibrated": cbpe.calibrated(), "chunk_size": chunk_size, "chunks": out })
        );
        return Ok(());
    }
    println!(
        "CBPE: fitted on {} rows of {} ({}), chunks of {chunk_size}; ! marks an alert",
        reference_rows.scores.len(),
        reference.display(),
        if cbpe.calibrated() {
            "scores calibrated: isotonic lowered their calibration error"
        } else {
            "scores used as they are: calibrating did not lower their calibration error"
        }
    );
    print!("  {:<10} {:>13}", "period", "rows");
    for metric in Metric::ALL {
        print!(" {:>16}", metric.name());
    }
    println!();
    for chunk in &out {
        print!(
            "  {:<10} {:>13}",
            chunk["period"].as_str().unwrap_or_default(),
            format!("{}..{}", chunk["start"], chunk["end"])
        );
        for metric in Metric::ALL {
            let m = &chunk["metrics"][metric.name()];
            let flag = if m["alert"].as_bool().unwrap_or(false) {
                "!"
            } else {
                " "
            };
            print!(
                " {:>9.4} ±{:.4}{flag}",
                m["value"].as_f64().unwrap_or(f64::NAN),
                m["sampling_error"].as_f64().unwrap_or(f64::NAN)
            );
        }
        println!();
    }
    Ok(())
}

/// Runs `fabrik eval`.
pub(crate) fn run(args: EvalArgs) -> anyhow::Result<()> {
    match args.command {
        EvalCommand::Nab {
            nab_dir,
            out,
            detector,
            json,
        } => {
            StreamingDetectorKind::from_name(&detector)?;
            let report = fabrik_ml::nab::run_nab(&nab_dir, &out, &detector)
                .with_context(|| format!("NAB evaluation of {}", nab_dir.display()))?;
            let s = &report.scores;
            if json {
                let profile = |p: &fabrik_ml::nab::ProfileScore| {
                    serde_json::json!({
                        "score": p.normalized,
                        "threshold": p.threshold,
                        "raw": p.raw,
                        "categories": p.per_category,
                    })
                };
                println!(
                    "{}",
                    serde_json::json!({
                        "detector": report.detector,
                        "files": report.files,
                        "rows": report.rows,
                        "detector_seconds": report.detector_seconds,
                        "standard": s.standard.normalized,
                        "reward_low_FP_rate": s.reward_low_fp_rate.normalized,
                        "reward_low_FN_rate": s.reward_low_fn_rate.normalized,
                        "profiles": {
                            "standard": profile(&s.standard),
                            "reward_low_FP_rate": profile(&s.reward_low_fp_rate),
                            "reward_low_FN_rate": profile(&s.reward_low_fn_rate),
                        },
                        "results": out.join(&report.detector),
                    })
                );
            } else {
                println!(
                    "NAB: {} over {} files ({} rows, {:.2} s in the detector); results in {}",
                    report.detector,
                    report.files,
                    report.rows,
                    report.detector_seconds,
                    out.join(&report.detector).display()
                );
                println!("  {:<22} {:>8} {:>12}", "profile", "score", "threshold");
                for (name, p) in [
                    ("standard", &s.standard),
                    ("reward_low_FP_rate", &s.reward_low_fp_rate),
                    ("reward_low_FN_rate", &s.reward_low_fn_rate),
                ] {
                    println!("  {name:<22} {:>8.2} {:>12.6}", p.normalized, p.threshold);
                }
                println!(
                    "  (normalised: null detector 0, perfect 100; thresholds optimised over these files)"
                );
                println!(
                    "\n  standard profile by category (per-file tables: {}/{}_<profile>_scores.csv)",
                    out.join(&report.detector).display(),
                    report.detector
                );
                println!(
                    "  {:<24} {:>5} {:>8} {:>8} {:>8} {:>9} {:>10}",
                    "category", "files", "windows", "detected", "FP rows", "raw", "normalised"
                );
                for (name, c) in &s.standard.per_category {
                    let normalised = c
                        .normalized
                        .map_or_else(|| "-".to_owned(), |n| format!("{n:.2}"));
                    println!(
                        "  {name:<24} {:>5} {:>8} {:>8} {:>8} {:>9.2} {normalised:>10}",
                        c.files, c.windows, c.detected_windows, c.counts.fp, c.raw
                    );
                }
            }
        }
        EvalCommand::Cbpe {
            reference,
            analysis,
            chunk_size,
            score,
            prediction,
            target,
            json,
        } => run_cbpe(
            &reference,
            &analysis,
            chunk_size,
            [&score, &prediction, &target],
            json,
        )?,
        EvalCommand::Skab {
            data,
            detector,
            json,
        } => {
            let kind = RowDetectorKind::from_name(&detector)?;
            let report = fabrik_ml::skab::run_skab(&data, kind)
                .with_context(|| format!("SKAB evaluation of {}", data.display()))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "detector": report.detector,
                        "files": report.files,
                        "f1": report.f1,
                        "far": report.far,
                        "mar": report.mar,
                        "nab_standard": report.nab_standard,
                        "nab_low_fp": report.nab_low_fp,
                        "nab_low_fn": report.nab_low_fn,
                        "groups": report.per_group,
                        "per_file": report.per_file,
                        "detector_seconds": report.detector_seconds,
                    })
                );
            } else {
                println!(
                    "SKAB: {} over {} files (per file: fit on rows 0..400, score the rest)",
                    report.detector, report.files
                );
                println!(
                    "  outlier detection   F1 {:.2}   FAR {:.2} %   MAR {:.2} %",
                    report.f1, report.far, report.mar
                );
                if report.per_group.len() > 1 {
                    for (group, g) in &report.per_group {
                        println!(
                            "    {group:<16}  F1 {:.2}   FAR {:.2} %   MAR {:.2} %   ({} files)",
                            g.f1, g.far, g.mar, g.files
                        );
                    }
                }
                if report.nab_standard.is_finite() {
                    println!(
                        "  changepoints (NAB)  standard {:.2}   LowFP {:.2}   LowFN {:.2}",
                        report.nab_standard, report.nab_low_fp, report.nab_low_fn
                    );
                } else {
                    // Normalising divides by the perfect detector's score, which is 0 when
                    // no file labels a changepoint (anomaly-free recordings).
                    println!(
                        "  changepoints (NAB)  n/a: no changepoint is labelled in these files"
                    );
                }
            }
        }
    }
    Ok(())
}
