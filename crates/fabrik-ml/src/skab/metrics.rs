//! SKAB's metrics (its `core/metrics.py` `chp_score`): outlier TP/TN/FP/FN with F1, FAR and
//! MAR over all test rows, and SKAB's NAB-like changepoint score with 60 s right-side windows.
//!
//! Pure functions over predictions and labels; the rules are those written down in
//! `shared/data/skab/README.md` of the team workspace ("Evaluation protocol").

use std::collections::HashMap;

/// Width of the window after each true changepoint, in seconds.
const CHANGEPOINT_WINDOW_SECONDS: i64 = 60;
/// Points of SKAB's tanh scoring curve over a window.
const CURVE_POINTS: usize = 1000;

/// How predicted changepoints are derived from 0/1 outlier predictions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ChangepointRule {
    /// Every rise and every fall of the prediction is a changepoint.
    #[serde(rename = "diff")]
    Diff,
    /// Rises and falls of the 30-row rolling maximum (zero for the first 29 rows).
    #[serde(rename = "rolling30")]
    Rolling30,
}

/// One file's labels and predictions, on their own timestamp grids.
#[derive(Debug, Clone, PartialEq)]
pub struct SkabItem {
    /// Timestamps (whole seconds) of the labelled rows.
    pub label_seconds: Vec<i64>,
    /// Outlier label per labelled row.
    pub anomaly: Vec<bool>,
    /// Changepoint label per labelled row.
    pub changepoint: Vec<bool>,
    /// Timestamps (whole seconds) of the predicted rows.
    pub prediction_seconds: Vec<i64>,
    /// Outlier prediction per predicted row.
    pub prediction: Vec<bool>,
    /// How this prediction's changepoints are derived.
    pub rule: ChangepointRule,
}

/// Outlier confusion counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutlierCounts {
    /// Predicted and labelled.
    pub tp: usize,
    /// Neither.
    pub tn: usize,
    /// Predicted, not labelled.
    pub fp: usize,
    /// Labelled, not predicted.
    pub fn_: usize,
}

impl std::ops::AddAssign for OutlierCounts {
    fn add_assign(&mut self, other: Self) {
        self.tp += other.tp;
        self.tn += other.tn;
        self.fp += other.fp;
        self.fn_ += other.fn_;
    }
}

impl std::iter::Sum for OutlierCounts {
    fn sum<I: Iterator<Item = Self>>(counts: I) -> Self {
        counts.fold(Self::default(), |mut total, c| {
            total += c;
            total
        })
    }
}

impl OutlierCounts {
    /// `TP / (TP + (FP + FN)/2)`, 0 when there is nothing to count.
    pub fn f1(&self) -> f64 {
        let denominator = self.tp as f64 + (self.fp + self.fn_) as f64 / 2.0;
        if self.tp + self.fp + self.fn_ == 0 {
            0.0
        } else {
            self.tp as f64 / denominator
        }
    }

    /// False alarm rate in percent: `100·FP/(FP + TN)`.
    pub fn far_percent(&self) -> f64 {
        ratio_percent(self.fp, self.fp + self.tn)
    }

    /// Missed alarm rate in percent: `100·FN/(FN + TP)`.
    pub fn mar_percent(&self) -> f64 {
        ratio_percent(self.fn_, self.fn_ + self.tp)
    }
}

fn ratio_percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// SKAB's changepoint results summed over files.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChangepointMetrics {
    /// Normalised score, standard profile (A_TP, A_FP, A_FN) = (1, −0.11, −1).
    pub nab_standard: f64,
    /// LowFP profile (1, −0.22, −1).
    pub nab_low_fp: f64,
    /// LowFN profile (1, −0.11, −2).
    pub nab_low_fn: f64,
    /// Windows without a predicted changepoint.
    pub missed: usize,
    /// Predicted changepoints outside every window.
    pub false_positives: usize,
    /// True changepoints (windows).
    pub true_changepoints: usize,
    /// Mean seconds from window start to its first prediction, over detected windows.
    pub mean_detection_delay_seconds: Option<f64>,
}

/// All SKAB metrics of a set of files.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SkabMetrics {
    /// Outlier counts over rows present in both labels and predictions.
    pub outlier: OutlierCounts,
    /// Changepoint metrics.
    pub changepoint: ChangepointMetrics,
}

/// Predicted changepoints (as flags per prediction row) of `prediction` under `rule`.
pub fn changepoints(prediction: &[bool], rule: ChangepointRule) -> Vec<bool> {
    let first = prediction.first().copied().unwrap_or(false);
    let series: Vec<bool> = match rule {
        ChangepointRule::Diff => prediction.to_vec(),
        ChangepointRule::Rolling30 => (0..prediction.len())
            .map(|i| i >= 29 && prediction[i - 29..=i].iter().any(|&p| p))
            .collect(),
    };
    let mut flags: Vec<bool> = (0..series.len())
        .map(|i| i > 0 && series[i] != series[i - 1])
        .collect();
    if let Some(flag) = flags.first_mut() {
        // Both of SKAB's rules start from the raw first prediction.
        *flag = first;
    }
    flags
}

/// `[c, c + 60 s]` per true changepoint; a window reaching the next one's start pushes that
/// start to its own end ("cut right window").
fn windows_for(mut true_changepoints: Vec<i64>) -> Vec<(i64, i64)> {
    true_changepoints.sort_unstable();
    let mut windows: Vec<(i64, i64)> = true_changepoints
        .iter()
        .map(|&c| (c, c + CHANGEPOINT_WINDOW_SECONDS))
        .collect();
    for i in 1..windows.len() {
        if windows[i - 1].1 >= windows[i].0 {
            windows[i].0 = windows[i - 1].1;
        }
    }
    windows
}

/// Profiles as SKAB writes them: (A_TP, A_FP, A_FN) with negative costs.
const PROFILES: [(f64, f64, f64); 3] = [(1.0, -0.11, -1.0), (1.0, -0.22, -1.0), (1.0, -0.11, -2.0)];

/// SKAB's scoring curve for one profile: `y_k = (A_TP − A_FP)/2 · (−tanh(x_k)/tanh(π/2)) +
/// (A_TP − A_FP)/2 + A_FP` on 1000 points `x_k` spanning [−π/2, π/2] as numpy's linspace.
fn scoring_curve((tp, fp, _): (f64, f64, f64)) -> Vec<f64> {
    let start = -std::f64::consts::FRAC_PI_2;
    let stop = std::f64::consts::FRAC_PI_2;
    let step = (stop - start) / (CURVE_POINTS - 1) as f64;
    let half = (tp - fp) / 2.0;
    let edge = (std::f64::consts::PI / 2.0).tanh();
    (0..CURVE_POINTS)
        .map(|k| {
            let x = if k == CURVE_POINTS - 1 {
                stop
            } else {
                k as f64 * step + start
            };
            -half * x.tanh() / edge + half + fp
        })
        .collect()
}

/// Per-file changepoint tallies.
struct FileChangepoints {
    scores: [f64; 3],
    windows: usize,
    false_positives: usize,
    missed: usize,
    delays: Vec<i64>,
}

fn score_changepoints(
    true_changepoints: Vec<i64>,
    mut predicted: Vec<i64>,
    curves: &[Vec<f64>; 3],
) -> FileChangepoints {
    let windows = windows_for(true_changepoints);
    predicted.sort_unstable();
    let mut false_positives = 0;
    let mut missed = 0;
    let mut detections = Vec::new();
    match (windows.first(), windows.last()) {
        (Some(&(first_left, _)), Some(&(_, last_right))) => {
            false_positives += predicted.iter().filter(|&&p| p < first_left).count();
            for (i, &(left, right)) in windows.iter().enumerate() {
                match predicted.iter().find(|&&p| p >= left && p <= right) {
                    Some(&first) => detections.push((left, first, right)),
                    None => missed += 1,
                }
                if let Some(&(next_left, _)) = windows.get(i + 1) {
                    false_positives += predicted
                        .iter()
                        .filter(|&&p| p > right && p < next_left)
                        .count();
                }
            }
            false_positives += predicted.iter().filter(|&&p| p > last_right).count();
        }
        _ => false_positives = predicted.len(),
    }
    let mut scores = [0.0; 3];
    for (score, (&(_, fp_weight, fn_weight), curve)) in
        scores.iter_mut().zip(PROFILES.iter().zip(curves))
    {
        *score = fp_weight * false_positives as f64 + fn_weight * missed as f64;
        for &(left, first, right) in &detections {
            let position = if right > left {
                ((first - left) as f64 / (right - left) as f64 * CURVE_POINTS as f64) as usize
            } else {
                0
            };
            *score += curve[position.min(CURVE_POINTS - 1)];
        }
    }
    FileChangepoints {
        scores,
        windows: windows.len(),
        false_positives,
        missed,
        delays: detections
            .iter()
            .map(|&(left, first, _)| first - left)
            .collect(),
    }
}

/// Outlier counts of one item: only timestamps present in both series count (SKAB combines
/// them with pandas `&`, which aligns on the union and treats a missing entry as false).
pub fn outlier_counts(item: &SkabItem) -> OutlierCounts {
    let mut first_prediction: HashMap<i64, bool> = HashMap::with_capacity(item.prediction.len());
    for (&t, &p) in item.prediction_seconds.iter().zip(&item.prediction) {
        first_prediction.entry(t).or_insert(p);
    }
    let mut counts = OutlierCounts::default();
    let mut seen = std::collections::HashSet::with_capacity(item.anomaly.len());
    for (&t, &labelled) in item.label_seconds.iter().zip(&item.anomaly) {
        // Repeated timestamps count once, as numpy's intersect1d keeps the first.
        if !seen.insert(t) {
            continue;
        }
        let Some(&predicted) = first_prediction.get(&t) else {
            continue;
        };
        match (predicted, labelled) {
            (true, true) => counts.tp += 1,
            (false, false) => counts.tn += 1,
            (true, false) => counts.fp += 1,
            (false, true) => counts.fn_ += 1,
        }
    }
    counts
}

/// SKAB's metrics summed over `items`.
pub fn evaluate(items: &[SkabItem]) -> SkabMetrics {
    let curves = [
        scoring_curve(PROFILES[0]),
        scoring_curve(PROFILES[1]),
        scoring_curve(PROFILES[2]),
    ];
    let mut outlier = OutlierCounts::default();
    let mut scores = [0.0; 3];
    let (mut windows, mut false_positives, mut missed) = (0, 0, 0);
    let mut delays = Vec::new();
    for item in items {
        outlier += outlier_counts(item);
        let true_changepoints = item
            .label_seconds
            .iter()
            .zip(&item.changepoint)
            .filter(|&(_, &c)| c)
            .map(|(&t, _)| t)
            .collect();
        let predicted = item
            .prediction_seconds
            .iter()
            .zip(changepoints(&item.prediction, item.rule))
            .filter(|&(_, c)| c)
            .map(|(&t, _)| t)
            .collect();
        let file = score_changepoints(true_changepoints, predicted, &curves);
        for (total, score) in scores.iter_mut().zip(file.scores) {
            *total += score;
        }
        windows += file.windows;
        false_positives += file.false_positives;
        missed += file.missed;
        delays.extend(file.delays);
    }
    let normalise = |score: f64, (tp, _, fn_weight): (f64, f64, f64)| {
        let null = windows as f64 * fn_weight;
        let perfect = windows as f64 * tp;
        100.0 * (score - null) / (perfect - null)
    };
    SkabMetrics {
        outlier,
        changepoint: ChangepointMetrics {
            nab_standard: normalise(scores[0], PROFILES[0]),
            nab_low_fp: normalise(scores[1], PROFILES[1]),
            nab_low_fn: normalise(scores[2], PROFILES[2]),
            missed,
            false_positives,
            true_changepoints: windows,
            mean_detection_delay_seconds: (!delays.is_empty())
                .then(|| delays.iter().sum::<i64>() as f64 / delays.len() as f64),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changepoint_rules() {
        let p = [true, true, false, false, true];
        assert_eq!(
            changepoints(&p, ChangepointRule::Diff),
            vec![true, false, true, false, true]
        );
        let mut long = vec![false; 40];
        long[5] = true;
        // Rolling max is 0 until row 29, then 1 while row 5 is in the window (rows 29..=34).
        let flags = changepoints(&long, ChangepointRule::Rolling30);
        let at: Vec<usize> = (0..40).filter(|&i| flags[i]).collect();
        assert_eq!(at, vec![29, 35]);
    }

    #[test]
    fn windows_are_cut_on_overlap() {
        assert_eq!(
            windows_for(vec![100, 130, 500]),
            vec![(100, 160), (160, 190), (500, 560)]
        );
    }

    #[test]
    fn curve_runs_from_tp_to_fp_weight() {
        let curve = scoring_curve(PROFILES[0]);
        assert!((curve[0] - 1.0).abs() < 1e-12);
        assert!((curve[999] + 0.11).abs() < 1e-12);
        assert!(curve.windows(2).all(|w| w[0] >= w[1]));
    }
}
