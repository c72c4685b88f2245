//! Performance estimation without labels: NannyML's confidence-based performance estimation
//! (CBPE) for binary classifiers. From a reference period with targets it learns how far the
//! model's scores can be trusted as probabilities (isotonic calibration, used only where it
//! lowers the expected calibration error) and the chunk-to-chunk spread of each metric; on
//! later chunks without targets it estimates ROC AUC, F1, accuracy, precision and recall from
//! the calibrated scores alone (`TP = Σ_{ŷ=1} p`, …), with NannyML's sampling errors and
//! mean ± 3σ thresholds. Reproduces NannyML 0.13.1 (`tests/it/cbpe_nannyml.rs`).

use std::path::Path;

use crate::MlError;
use crate::delimited::{DelimitedFile, parse_f64};
use crate::detectors::iforest::SplitMix;

/// A classifier's outputs read from a file: per row the score (probability of the positive
/// class), the prediction, and the target where the file has one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    /// Probabilities of the positive class, in [0, 1].
    pub scores: Vec<f64>,
    /// Predicted classes.
    pub predictions: Vec<bool>,
    /// True classes, when the file has the target column: `None` in a blank cell (a target
    /// not known yet).
    pub targets: Option<Vec<Option<bool>>>,
}

/// A class as a file writes it: `1`/`0`, `1.0`/`0.0`, `true`/`false`.
fn parse_class(field: &str, column: &str) -> Result<bool, String> {
    match field.trim() {
        "1" | "1.0" | "true" | "True" => Ok(true),
        "0" | "0.0" | "false" | "False" => Ok(false),
        other => Err(format!(
            "column `{column}`: `{other}` is not a class (0 or 1, true or false)"
        )),
    }
}

/// Reads a comma-separated file's `score`, `prediction` and (if `target` is given and the
/// file has it) `target` columns.
pub fn read_rows(
    path: &Path,
    score: &str,
    prediction: &str,
    target: Option<&str>,
) -> Result<Rows, MlError> {
    let file = DelimitedFile::open(path, ',')?;
    let score_at = file.column(score)?;
    let prediction_at = file.column(prediction)?;
    let target_at = target.and_then(|t| file.column(t).ok());
    let mut rows = Rows {
        targets: target_at.map(|_| Vec::new()),
        ..Rows::default()
    };
    file.for_each_record(|_, fields| {
        let value = parse_f64(fields[score_at], score)?;
        if !(0.0..=1.0).contains(&value) {
            return Err(format!(
                "column `{score}`: {value} is not a probability in [0, 1]"
            ));
        }
        rows.scores.push(value);
        rows.predictions
            .push(parse_class(fields[prediction_at], prediction)?);
        if let (Some(at), Some(targets), Some(name)) = (target_at, rows.targets.as_mut(), target) {
            let cell = fields[at].trim();
            targets.push(if cell.is_empty() {
                None
            } else {
                Some(parse_class(cell, name)?)
            });
        }
        Ok(())
    })?;
    Ok(rows)
}

/// A metric CBPE estimates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Area under the ROC curve.
    RocAuc,
    /// F1 of the positive class.
    F1,
    /// Share of correct predictions.
    Accuracy,
    /// Positive predictive value.
    Precision,
    /// True positive rate.
    Recall,
}

impl Metric {
    /// Every metric, in NannyML's column order.
    pub const ALL: [Metric; 5] = [
        Metric::RocAuc,
        Metric::F1,
        Metric::Accuracy,
        Metric::Precision,
        Metric::Recall,
    ];

    /// NannyML's name (`roc_auc`, `f1`, …).
    pub fn name(self) -> &'static str {
        match self {
            Metric::RocAuc => "roc_auc",
            Metric::F1 => "f1",
            Metric::Accuracy => "accuracy",
            Metric::Precision => "precision",
            Metric::Recall => "recall",
        }
    }
}

/// Scikit-learn's `IsotonicRegression(increasing=True, out_of_bounds="clip")`: a
/// non-decreasing step function fitted by pool-adjacent-violators, linear between its knots.
#[derive(Debug, Clone, PartialEq)]
pub struct Isotonic {
    x: Vec<f64>,
    y: Vec<f64>,
}

impl Isotonic {
    /// Fits `targets` (0 or 1) on `scores`; at least one pair.
    pub fn fit(scores: &[f64], targets: &[bool]) -> Result<Self, MlError> {
        if scores.is_empty() || scores.len() != targets.len() {
            return Err(MlError::Parameter {
                name: "calibration",
                reason: format!(
                    "needs one target per score, and one pair at least ({} scores, {} targets)",
                    scores.len(),
                    targets.len()
                ),
            });
        }
        if let Some(at) = scores.iter().position(|s| !s.is_finite()) {
            return Err(MlError::Parameter {
                name: "calibration",
                reason: format!("score {at} is {}", scores[at]),
            });
        }
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        // Equal scores become one point: the mean target, weighted by their count.
        let mut x: Vec<f64> = Vec::new();
        let mut sums: Vec<f64> = Vec::new();
        let mut weights: Vec<f64> = Vec::new();
        for &i in &order {
            let target = f64::from(u8::from(targets[i]));
            if x.last() == Some(&scores[i]) {
                let last = sums.len() - 1;
                sums[last] += target;
                weights[last] += 1.0;
            } else {
                x.push(scores[i]);
                sums.push(target);
                weights.push(1.0);
            }
        }
        let means: Vec<f64> = sums.iter().zip(&weights).map(|(s, w)| s / w).collect();
        // Pool adjacent violators over blocks (value, weight, points).
        let mut blocks: Vec<(f64, f64, usize)> = Vec::with_capacity(means.len());
        for (&value, &weight) in means.iter().zip(&weights) {
            blocks.push((value, weight, 1));
            while blocks.len() > 1 {
                let (v2, w2, n2) = blocks[blocks.len() - 1];
                let (v1, w1, n1) = blocks[blocks.len() - 2];
                if v1 <= v2 {
                    break;
                }
                blocks.truncate(blocks.len() - 2);
                let w = w1 + w2;
                blocks.push(((v1 * w1 + v2 * w2) / w, w, n1 + n2));
            }
        }
        let y: Vec<f64> = blocks
            .iter()
            .flat_map(|&(value, _, n)| std::iter::repeat_n(value, n))
            .collect();
        Ok(Self { x, y })
    }

    /// The calibrated probability of `score`: linear between knots, clipped beyond them.
    pub fn calibrate(&self, score: f64) -> f64 {
        if score.is_nan() {
            return f64::NAN;
        }
        let n = self.x.len();
        if score <= self.x[0] {
            return self.y[0];
        }
        if score >= self.x[n - 1] {
            return self.y[n - 1];
        }
        let right = self.x.partition_point(|&k| k <= score);
        let left = right - 1;
        if self.x[left] == score {
            return self.y[left];
        }
        let slope = (self.y[right] - self.y[left]) / (self.x[right] - self.x[left]);
        self.y[left] + slope * (score - self.x[left])
    }
}

/// Equal-count bins over `len` sorted values (NannyML's `_get_bin_index_edges`).
fn bin_edges(len: usize, bins: usize) -> Vec<(usize, usize)> {
    let bins = if len <= 2 * bins { len / 2 } else { bins }.max(1);
    let width = (len / bins).max(1);
    let mut edges: Vec<usize> = (0..=len).step_by(width).collect();
    if let Some(last) = edges.last_mut() {
        *last = len;
    }
    edges.windows(2).map(|w| (w[0], w[1])).collect()
}

/// Expected calibration error over equal-count bins of the scores, sorted.
fn expected_calibration_error(targets: &[bool], scores: &[f64], bins: &[(usize, usize)]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let n = scores.len() as f64;
    bins.iter()
        .map(|&(from, to)| {
            let count = (to - from) as f64;
            let (mut p, mut t) = (0.0, 0.0);
            for &i in &order[from..to] {
                p += scores[i];
                t += f64::from(u8::from(targets[i]));
            }
            count / n * (p / count - t / count).abs()
        })
        .sum()
}

/// Whether calibrating the scores lowers their expected calibration error, judged as NannyML
/// does: ten stratified splits holding out a tenth, calibrated on the rest, the held-out
/// scores' ECE over ten bins before and after. The splits are Fabrik's own (SplitMix64 from
/// seed 42), not scikit-learn's, so a decision at the margin may differ from NannyML's.
pub fn needs_calibration(scores: &[f64], targets: &[bool]) -> Result<bool, MlError> {
    let positives = targets.iter().filter(|&&t| t).count();
    if positives == 0 || positives == targets.len() {
        return Ok(false);
    }
    if roc_auc(targets, scores) > 0.999 {
        return Ok(false);
    }
    let n = scores.len();
    let test_total = n.div_ceil(10);
    let classes: [Vec<usize>; 2] = [
        (0..n).filter(|&i| !targets[i]).collect(),
        (0..n).filter(|&i| targets[i]).collect(),
    ];
    // The held-out rows of each class, in proportion, the remainder to the larger share.
    let exact: Vec<f64> = classes
        .iter()
        .map(|c| c.len() as f64 * test_total as f64 / n as f64)
        .collect();
    let mut take: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    if take.iter().sum::<usize>() < test_total {
        let larger = usize::from(exact[1].fract() > exact[0].fract());
        take[larger] += test_total - take.iter().sum::<usize>();
    }
    let mut rng = SplitMix(42);
    let (mut held_targets, mut held_scores, mut held_calibrated) =
        (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..10 {
        let mut test = Vec::with_capacity(test_total);
        let mut train = Vec::with_capacity(n - test_total);
        for (class, &count) in classes.iter().zip(&take) {
            let mut shuffled = class.clone();
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, rng.below(i + 1));
            }
            test.extend_from_slice(&shuffled[..count.min(shuffled.len())]);
            train.extend_from_slice(&shuffled[count.min(shuffled.len())..]);
        }
        let train_scores: Vec<f64> = train.iter().map(|&i| scores[i]).collect();
        let train_targets: Vec<bool> = train.iter().map(|&i| targets[i]).collect();
        let calibrator = Isotonic::fit(&train_scores, &train_targets)?;
        for &i in &test {
            held_targets.push(targets[i]);
            held_scores.push(scores[i]);
            held_calibrated.push(calibrator.calibrate(scores[i]));
        }
    }
    let bins = bin_edges(held_scores.len(), 10);
    let before = expected_calibration_error(&held_targets, &held_scores, &bins);
    let after = expected_calibration_error(&held_targets, &held_calibrated, &bins);
    Ok(before > after)
}

/// ROC AUC with tied scores counted half (scikit-learn's `roc_auc_score`).
pub fn roc_auc(targets: &[bool], scores: &[f64]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let positives = targets.iter().filter(|&&t| t).count() as f64;
    let negatives = targets.len() as f64 - positives;
    // Mann–Whitney U from the positives' mid-ranks.
    let mut rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let mid_rank = (start + end + 1) as f64 / 2.0;
        let tied_positives = order[start..end].iter().filter(|&&i| targets[i]).count();
        rank_sum += mid_rank * tied_positives as f64;
        start = end;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// The realized value of `metric` on a chunk with targets (`None` where it is undefined:
/// ROC AUC of one class).
pub fn realized(
    metric: Metric,
    targets: &[bool],
    predictions: &[bool],
    scores: &[f64],
) -> Option<f64> {
    let (mut tp, mut fp, mut fn_, mut tn) = (0.0, 0.0, 0.0, 0.0);
    for (&t, &p) in targets.iter().zip(predictions) {
        match (p, t) {
            (true, true) => tp += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fn_ += 1.0,
            (false, false) => tn += 1.0,
        }
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let n = targets.len() as f64;
    let both_targets = tp + fn_ > 0.0 && tp + fn_ < n;
    let both_predictions = tp + fp > 0.0 && tp + fp < n;
    // NannyML leaves a chunk of one true class (or, but for ROC AUC and accuracy, one
    // predicted class) out of the thresholds, rather than count a 0 that means nothing.
    match metric {
        Metric::RocAuc => both_targets.then(|| roc_auc(targets, scores)),
        Metric::Accuracy => (n > 0.0).then(|| (tp + tn) / n),
        _ if !(both_targets && both_predictions) => None,
        Metric::F1 => Some(ratio(2.0 * tp, 2.0 * tp + fp + fn_)),
        Metric::Precision => Some(ratio(tp, tp + fp)),
        Metric::Recall => Some(ratio(tp, tp + fn_)),
    }
}

/// The estimate of `metric` from calibrated probabilities `calibrated` of the model's scores
/// `scores` and its predictions.
fn estimated(metric: Metric, predictions: &[bool], calibrated: &[f64], scores: &[f64]) -> f64 {
    let (mut tp, mut fp, mut fn_, mut tn) = (0.0, 0.0, 0.0, 0.0);
    for (&p, &probability) in predictions.iter().zip(calibrated) {
        if p {
            tp += probability;
            fp += 1.0 - probability;
        } else {
            fn_ += probability;
            tn += 1.0 - probability;
        }
    }
    let ratio = |a: f64, b: f64| if b != 0.0 { a / b } else { 0.0 };
    match metric {
        Metric::RocAuc => estimated_roc_auc(calibrated, scores),
        Metric::F1 => ratio(tp, tp + 0.5 * (fp + fn_)),
        Metric::Accuracy => (tp + tn) / predictions.len() as f64,
        Metric::Precision => ratio(tp, tp + fp),
        Metric::Recall => ratio(tp, tp + fn_),
    }
}

/// NannyML's `estimate_roc_auc`: the ROC curve the calibrated probabilities expect, ordered
/// by the model's own scores, its cumulative counts rounded to 5 decimals.
fn estimated_roc_auc(calibrated: &[f64], scores: &[f64]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let round5 = |v: f64| (v * 1e5).round_ties_even() / 1e5;
    let mut tps = Vec::with_capacity(order.len() + 1);
    let mut fps = Vec::with_capacity(order.len() + 1);
    tps.push(0.0);
    fps.push(0.0);
    let mut cumulative = 0.0;
    for (k, &i) in order.iter().enumerate() {
        cumulative += calibrated[i];
        tps.push(round5(cumulative));
        fps.push(round5(1.0 + k as f64 - cumulative));
    }
    let (tp_total, fp_total) = (tps[tps.len() - 1], fps[fps.len() - 1]);
    let mut area = 0.0;
    for k in 1..tps.len() {
        let dx = fps[k] / fp_total - fps[k - 1] / fp_total;
        area += dx * (tps[k] / tp_total + tps[k - 1] / tp_total) / 2.0;
    }
    area
}

/// Population standard deviation (NumPy's `std`, ddof 0).
fn std_dev(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt()
}

/// What a metric's sampling error scales: the reference's per-observation spread and the
/// share of a chunk's rows it concerns (`error = std / √(rows · share)`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct SamplingComponents {
    std: f64,
    share: f64,
}

fn sampling_components(
    metric: Metric,
    targets: &[bool],
    predictions: &[bool],
    scores: &[f64],
) -> SamplingComponents {
    let n = targets.len() as f64;
    let count = |want: fn(bool, bool) -> bool| {
        targets
            .iter()
            .zip(predictions)
            .filter(|&(&t, &p)| want(t, p))
            .count() as f64
    };
    let tp = count(|t, p| t && p);
    let fp = count(|t, p| !t && p);
    let fn_ = count(|t, p| t && !p);
    // The std of `ones` ones and `zeros` values `zero` (ddof 0), after scaling by `factor`.
    let two_valued = |ones: f64, zeros: f64, factor: f64| {
        let total = ones + zeros;
        if total == 0.0 {
            return f64::NAN;
        }
        let share = ones / total;
        factor * (share * (1.0 - share)).sqrt()
    };
    match metric {
        Metric::RocAuc => {
            // The Mann–Whitney form: per positive, the negatives ranked below it.
            let flip = targets.iter().filter(|&&t| t).count() as f64 / n > 0.5;
            let (targets, scores): (Vec<bool>, Vec<f64>) = if flip {
                (
                    targets.iter().map(|t| !t).collect(),
                    scores.iter().map(|s| 1.0 - s).collect(),
                )
            } else {
                (targets.to_vec(), scores.to_vec())
            };
            let mut order: Vec<usize> = (0..scores.len()).collect();
            order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
            let positives = targets.iter().filter(|&&t| t).count();
            let negatives = targets.len() - positives;
            // NannyML drops a positive ranked first (its rank, 0, is taken for a negative's).
            let below: Vec<f64> = order
                .iter()
                .enumerate()
                .filter(|&(rank, &i)| targets[i] && rank > 0)
                .enumerate()
                .map(|(k, (rank, _))| (rank - k) as f64 / negatives as f64)
                .collect();
            SamplingComponents {
                std: std_dev(&below),
                share: positives as f64 / n,
            }
        }
        Metric::F1 => {
            let relevant = tp + fp + fn_;
            let factor = relevant / ((fn_ + fp) * 0.5 + tp);
            SamplingComponents {
                std: two_valued(tp, fp + fn_, factor),
                share: relevant / n,
            }
        }
        Metric::Accuracy => SamplingComponents {
            std: two_valued(n - fp - fn_, fp + fn_, 1.0),
            share: 1.0,
        },
        Metric::Precision => SamplingComponents {
            std: two_valued(tp, fp, 1.0),
            share: (tp + fp) / n,
        },
        Metric::Recall => SamplingComponents {
            std: two_valued(tp, fn_, 1.0),
            share: (tp + fn_) / n,
        },
    }
}

/// One metric's estimate on one chunk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The metric.
    pub metric: Metric,
    /// Estimated from the calibrated scores.
    pub value: f64,
    /// The estimate's standard error at this chunk's size.
    pub sampling_error: f64,
    /// Mean − 3σ of the reference chunks' realized values (`None`: below 0, so none).
    pub lower_threshold: Option<f64>,
    /// Mean + 3σ (`None`: above 1, so none).
    pub upper_threshold: Option<f64>,
    /// The estimate is outside the thresholds.
    pub alert: bool,
}

/// A fitted estimator: a calibration (if it helps), and per metric its sampling components
/// and thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct Cbpe {
    calibration: Option<Isotonic>,
    metrics: Vec<(Metric, SamplingComponents, Option<f64>, Option<f64>)>,
    chunk_size: usize,
}

/// Splits `len` rows into chunks of `size` (the remainder its own last chunk, NannyML's
/// `incomplete="keep"`).
pub fn chunks(len: usize, size: usize) -> Vec<std::ops::Range<usize>> {
    (0..len)
        .step_by(size.max(1))
        .map(|start| start..(start + size.max(1)).min(len))
        .collect()
}

impl Cbpe {
    /// Fits on a reference period: the model's `scores` (probabilities of the positive class,
    /// uncalibrated), its `predictions` and the `targets`, judged in chunks of `chunk_size`.
    pub fn fit(
        scores: &[f64],
        predictions: &[bool],
        targets: &[bool],
        metrics: &[Metric],
        chunk_size: usize,
    ) -> Result<Self, MlError> {
        let n = scores.len();
        if n == 0 || predictions.len() != n || targets.len() != n {
            return Err(MlError::Parameter {
                name: "cbpe",
                reason: format!(
                    "the reference needs as many scores, predictions and targets, and one row \
                     at least ({n}, {}, {})",
                    predictions.len(),
                    targets.len()
                ),
            });
        }
        if chunk_size < 2 || n < 2 * chunk_size {
            return Err(MlError::Parameter {
                name: "cbpe",
                reason: format!(
                    "thresholds come from the spread of the reference's chunks: {n} rows make \
                     fewer than 2 chunks of {chunk_size}"
                ),
            });
        }
        if let Some(at) = scores.iter().position(|s| !(0.0..=1.0).contains(s)) {
            return Err(MlError::Parameter {
                name: "cbpe",
                reason: format!("score {at} is {}, not a probability in [0, 1]", scores[at]),
            });
        }
        let mut fitted = Vec::with_capacity(metrics.len());
        for &metric in metrics {
            let values: Vec<f64> = chunks(n, chunk_size)
                .into_iter()
                .filter_map(|c| {
                    realized(
                        metric,
                        &targets[c.clone()],
                        &predictions[c.clone()],
                        &scores[c],
                    )
                })
                .collect();
            if values.len() < 2 {
                return Err(MlError::Parameter {
                    name: "cbpe",
                    reason: format!(
                        "{} is defined on fewer than 2 reference chunks (each needs both classes)",
                        metric.name()
                    ),
                });
            }
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let spread = std_dev(&values);
            let lower = Some(mean - 3.0 * spread).filter(|&v| v > 0.0);
            let upper = Some(mean + 3.0 * spread).filter(|&v| v < 1.0);
            fitted.push((
                metric,
                sampling_components(metric, targets, predictions, scores),
                lower,
                upper,
            ));
        }
        let calibration = if needs_calibration(scores, targets)? {
            Some(Isotonic::fit(scores, targets)?)
        } else {
            None
        };
        Ok(Self {
            calibration,
            metrics: fitted,
            chunk_size,
        })
    }

    /// Whether the scores are calibrated before estimating.
    pub fn calibrated(&self) -> bool {
        self.calibration.is_some()
    }

    /// The calibrated probability of a score.
    pub fn calibrate(&self, score: f64) -> f64 {
        self.calibration
            .as_ref()
            .map_or(score, |c| c.calibrate(score))
    }

    /// Per metric fitted, its alert thresholds: the reference chunks' realized mean − 3σ and
    /// + 3σ (`None` where they fall below 0 or above 1).
    pub fn thresholds(&self) -> Vec<(Metric, Option<f64>, Option<f64>)> {
        self.metrics
            .iter()
            .map(|&(metric, _, lower, upper)| (metric, lower, upper))
            .collect()
    }

    /// The chunk size it was fitted with.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Estimates every fitted metric on one chunk of scores and predictions (no targets).
    pub fn estimate(&self, scores: &[f64], predictions: &[bool]) -> Result<Vec<Estimate>, MlError> {
        if scores.is_empty() || scores.len() != predictions.len() {
            return Err(MlError::Parameter {
                name: "cbpe",
                reason: format!(
                    "a chunk needs one prediction per score, and one row at least ({} and {})",
                    scores.len(),
                    predictions.len()
                ),
            });
        }
        if let Some(at) = scores.iter().position(|s| !(0.0..=1.0).contains(s)) {
            return Err(MlError::Parameter {
                name: "cbpe",
                reason: format!("score {at} is {}, not a probability in [0, 1]", scores[at]),
            });
        }
        let calibrated: Vec<f64> = scores.iter().map(|&s| self.calibrate(s)).collect();
        Ok(self
            .metrics
            .iter()
            .map(|&(metric, components, lower, upper)| {
                let value = estimated(metric, predictions, &calibrated, scores);
                let alert = lower.is_some_and(|l| value < l) || upper.is_some_and(|u| value > u);
                Estimate {
                    metric,
                    value,
                    sampling_error: components.std
                        / (scores.len() as f64 * components.share).sqrt(),
                    lower_threshold: lower,
                    upper_threshold: upper,
                    alert,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isotonic_pools_violators_and_interpolates_between_knots() {
        let fit = Isotonic::fit(
            &[0.1, 0.2, 0.2, 0.3, 0.4, 0.5],
            &[false, true, false, false, true, true],
        )
        .expect("fit");
        // 0.2 averages to 0.5, then 0.3's 0 pools with it: (0.5·2 + 0)/3.
        assert_eq!(fit.calibrate(0.2), 1.0 / 3.0);
        assert_eq!(fit.calibrate(0.3), 1.0 / 3.0);
        assert_eq!(fit.calibrate(0.1), 0.0);
        assert_eq!(fit.calibrate(0.0), 0.0, "clipped");
        assert_eq!(fit.calibrate(0.9), 1.0, "clipped");
        assert!((fit.calibrate(0.15) - 1.0 / 6.0).abs() < 1e-15);
    }

    #[test]
    fn a_chunk_of_one_class_has_no_realized_f1_precision_or_recall() {
        let scores = [0.9, 0.8, 0.2];
        let predictions = [true, true, false];
        for metric in [
            Metric::F1,
            Metric::Precision,
            Metric::Recall,
            Metric::RocAuc,
        ] {
            assert_eq!(
                realized(metric, &[true, true, true], &predictions, &scores),
                None,
                "{metric:?}: one true class"
            );
        }
        // One predicted class: F1, precision, recall undefined; ROC AUC is not.
        assert_eq!(
            realized(Metric::Recall, &[true, false, true], &[true; 3], &scores),
            None
        );
        assert!(realized(Metric::RocAuc, &[true, false, true], &[true; 3], &scores).is_some());
        assert_eq!(
            realized(Metric::Accuracy, &[true, true, true], &predictions, &scores),
            Some(2.0 / 3.0)
        );
    }

    #[test]
    fn a_score_that_is_no_probability_is_refused_by_name() {
        let mut rng = SplitMix(3);
        let scores: Vec<f64> = (0..400).map(|_| rng.unit()).collect();
        let targets: Vec<bool> = scores.iter().map(|&p| rng.unit() < p).collect();
        let predictions: Vec<bool> = scores.iter().map(|&p| p >= 0.5).collect();
        let cbpe = Cbpe::fit(&scores, &predictions, &targets, &Metric::ALL, 100).expect("fit");
        let err = cbpe
            .estimate(&[0.5, f64::NAN], &[true, false])
            .expect_err("NaN")
            .to_string();
        assert!(err.contains("score 1 is NaN"), "{err}");
        assert!(cbpe.calibrate(f64::NAN).is_nan());
    }

    #[test]
    fn roc_auc_counts_ties_half() {
        assert_eq!(roc_auc(&[false, true], &[0.2, 0.8]), 1.0);
        assert_eq!(roc_auc(&[false, true], &[0.5, 0.5]), 0.5);
        assert_eq!(
            roc_auc(&[false, false, true, true], &[0.1, 0.4, 0.35, 0.8]),
            0.75
        );
    }

    #[test]
    fn bins_follow_nannyml_edges() {
        assert_eq!(bin_edges(20, 4), vec![(0, 5), (5, 10), (10, 15), (15, 20)]);
        assert_eq!(bin_edges(25, 10).len(), 12, "NannyML's 25 // 2 → width 2");
        assert_eq!(bin_edges(1005, 10).last(), Some(&(900, 1005)));
    }

    #[test]
    fn perfectly_calibrated_scores_estimate_what_is_realized_on_average() {
        // Targets drawn with the scores as their probabilities: the estimate of accuracy
        // and the realized accuracy agree within the sampling error.
        let mut rng = SplitMix(7);
        let n = 40_000;
        let scores: Vec<f64> = (0..n).map(|_| rng.unit()).collect();
        let targets: Vec<bool> = scores.iter().map(|&p| rng.unit() < p).collect();
        let predictions: Vec<bool> = scores.iter().map(|&p| p >= 0.5).collect();
        let cbpe = Cbpe::fit(&scores, &predictions, &targets, &Metric::ALL, 4_000).expect("fit");
        let estimates = cbpe.estimate(&scores, &predictions).expect("estimate");
        for e in &estimates {
            let real = realized(e.metric, &targets, &predictions, &scores).expect("defined");
            // The whole reference is 10 chunks: its error is the chunk's over √10.
            assert!(
                (e.value - real).abs() < 4.0 * e.sampling_error / 10f64.sqrt(),
                "{:?}: estimated {} realized {real} (± {})",
                e.metric,
                e.value,
                e.sampling_error
            );
        }
    }
}
