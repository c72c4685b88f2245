//! NAB's scorer (nab/sweeper.py, scorer.py, optimizer.py at NAB commit ea702d7): per-row
//! weights from windows and the scaled sigmoid, file and corpus scores at a threshold, the
//! corpus threshold optimiser and the null/perfect normalisation.
//!
//! Pure functions of a loaded [`NabCorpus`] and the detector's anomaly scores; the summation
//! order follows NAB's so per-file scores agree to ~1e-15.

use std::collections::BTreeMap;

use super::corpus::{NabCorpus, NabFile, Profile, ProfileName};
use crate::MlError;

/// The optimiser's first candidate: above every score, so "no detections".
const NO_DETECTION_THRESHOLD: f64 = 1.1;

/// Row counts over non-probation rows (they do not enter the score).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Detections inside windows.
    pub tp: usize,
    /// Detections outside windows.
    pub fp: usize,
    /// Non-detections inside windows.
    pub fn_: usize,
    /// Non-detections outside windows.
    pub tn: usize,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.tp += other.tp;
        self.fp += other.fp;
        self.fn_ += other.fn_;
        self.tn += other.tn;
    }

    /// Rows counted (all non-probation rows).
    pub fn total(&self) -> usize {
        self.tp + self.fp + self.fn_ + self.tn
    }
}

/// One file's score at a threshold.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct FileScore {
    /// Raw score: FP weights plus each window's earliest detection (or −A_FN).
    pub score: f64,
    /// Row counts.
    pub counts: Counts,
    /// Label windows in the file.
    pub windows: usize,
    /// Windows with at least one detection.
    pub detected_windows: usize,
}

/// The files of one NAB category under one profile: where a detector wins or loses points.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CategoryScore {
    /// Files in the category.
    pub files: usize,
    /// Label windows in them.
    pub windows: usize,
    /// Windows with at least one detection.
    pub detected_windows: usize,
    /// Sum of the file scores.
    pub raw: f64,
    /// The raw score normalised over the category's own windows (null 0, perfect 100);
    /// `None` for a category without windows, where only false positives can cost.
    pub normalized: Option<f64>,
    /// Summed row counts.
    pub counts: Counts,
}

/// A detector's score under one profile.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProfileScore {
    /// The threshold used (given or optimised).
    pub threshold: f64,
    /// Sum of the file scores.
    pub raw: f64,
    /// `100·(raw − S_null)/(S_perfect − S_null)`: null 0, perfect 100.
    pub normalized: f64,
    /// Summed row counts.
    pub counts: Counts,
    /// Per-file scores by file key.
    pub per_file: BTreeMap<String, FileScore>,
    /// Per-category sums by category name.
    pub per_category: BTreeMap<String, CategoryScore>,
}

/// A detector's scores under NAB's three profiles.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Scores {
    /// `standard`.
    pub standard: ProfileScore,
    /// `reward_low_FP_rate`.
    pub reward_low_fp_rate: ProfileScore,
    /// `reward_low_FN_rate`.
    pub reward_low_fn_rate: ProfileScore,
}

impl Scores {
    /// The score under `profile`.
    pub fn profile(&self, profile: ProfileName) -> &ProfileScore {
        match profile {
            ProfileName::Standard => &self.standard,
            ProfileName::RewardLowFpRate => &self.reward_low_fp_rate,
            ProfileName::RewardLowFnRate => &self.reward_low_fn_rate,
        }
    }
}

/// How to pick each profile's threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThresholdChoice {
    /// NAB's optimiser over this corpus (`run.py --optimize`).
    Optimize,
    /// Given thresholds, in the order standard, low FP, low FN (`run.py --score`).
    Fixed([f64; 3]),
}

/// Anomaly scores of every file, by file key, one per data row.
pub type AnomalyScores = BTreeMap<String, Vec<f64>>;

fn row_weight(file: &NabFile, row: usize, profile: Profile) -> f64 {
    let unweighted = file.unweighted[row];
    if file.window_of_row[row].is_some() {
        profile.tp_weight * unweighted
    } else {
        profile.fp_weight * unweighted
    }
}

/// One file's raw score and counts at `threshold` (detection iff not probation and
/// `score ≥ threshold`).
pub fn score_file(
    file: &NabFile,
    anomaly_scores: &[f64],
    threshold: f64,
    profile: Profile,
) -> FileScore {
    let probation = file.probationary_period.min(file.len());
    // A row without a score (a short slice) is not a detection.
    let detected = |row: usize| {
        row >= probation
            && anomaly_scores
                .get(row)
                .is_some_and(|&score| score >= threshold)
    };
    let mut score = 0.0;
    let mut counts = Counts::default();
    let mut detected_windows = 0;
    // NAB adds the false positives in row order, then the windows in order.
    for row in probation..file.len() {
        let inside = file.window_of_row[row].is_some();
        match (detected(row), inside) {
            (true, true) => counts.tp += 1,
            (true, false) => {
                counts.fp += 1;
                score += row_weight(file, row, profile);
            }
            (false, true) => counts.fn_ += 1,
            (false, false) => counts.tn += 1,
        }
    }
    for &(left, right) in &file.windows {
        // Weights fall inside a window, so only the earliest detection counts.
        match (left..=right).find(|&row| detected(row)) {
            Some(row) => {
                score += row_weight(file, row, profile);
                detected_windows += 1;
            }
            None => score -= profile.fn_weight,
        }
    }
    FileScore {
        score,
        counts,
        windows: file.windows.len(),
        detected_windows,
    }
}

fn normalized(corpus: &NabCorpus, raw: f64, profile: Profile) -> f64 {
    normalized_over(corpus.window_count(), raw, profile)
}

/// NAB's normalisation over `windows` label windows: the null detector (no detection)
/// scores 0, the perfect one (every window on its first row, no false positive) 100.
fn normalized_over(windows: usize, raw: f64, profile: Profile) -> f64 {
    let windows = windows as f64;
    let null = -profile.fn_weight * windows;
    let perfect = profile.tp_weight * windows;
    if perfect == null {
        return f64::NAN;
    }
    100.0 * (raw - null) / (perfect - null)
}

fn check_lengths(corpus: &NabCorpus, anomaly_scores: &AnomalyScores) -> Result<(), MlError> {
    for file in &corpus.files {
        let scores = anomaly_scores
            .get(&file.key)
            .ok_or_else(|| MlError::Layout(format!("no anomaly scores for `{}`", file.key)))?;
        if scores.len() != file.len() {
            return Err(MlError::Layout(format!(
                "`{}`: {} anomaly scores for {} data rows",
                file.key,
                scores.len(),
                file.len()
            )));
        }
        if let Some(row) = scores.iter().position(|s| s.is_nan()) {
            return Err(MlError::Layout(format!(
                "`{}`: anomaly score of row {row} is NaN",
                file.key
            )));
        }
    }
    Ok(())
}

/// Scores the corpus at `threshold` under `profile`.
pub fn score_at_threshold(
    corpus: &NabCorpus,
    anomaly_scores: &AnomalyScores,
    threshold: f64,
    profile: ProfileName,
) -> Result<ProfileScore, MlError> {
    check_lengths(corpus, anomaly_scores)?;
    let costs = corpus.profile(profile);
    let mut per_file = BTreeMap::new();
    let mut raw = 0.0;
    let mut counts = Counts::default();
    for file in &corpus.files {
        let scores = anomaly_scores
            .get(&file.key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let file_score = score_file(file, scores, threshold, costs);
        raw += file_score.score;
        counts.add(file_score.counts);
        per_file.insert(file.key.clone(), file_score);
    }
    Ok(ProfileScore {
        threshold,
        raw,
        normalized: normalized(corpus, raw, costs),
        counts,
        per_category: per_category(corpus, &per_file, costs),
        per_file,
    })
}

fn per_category(
    corpus: &NabCorpus,
    per_file: &BTreeMap<String, FileScore>,
    costs: Profile,
) -> BTreeMap<String, CategoryScore> {
    let mut categories: BTreeMap<String, CategoryScore> = BTreeMap::new();
    for file in &corpus.files {
        let Some(file_score) = per_file.get(&file.key) else {
            continue;
        };
        let category = categories
            .entry(file.category().to_owned())
            .or_insert_with(|| CategoryScore {
                files: 0,
                windows: 0,
                detected_windows: 0,
                raw: 0.0,
                normalized: None,
                counts: Counts::default(),
            });
        category.files += 1;
        category.windows += file_score.windows;
        category.detected_windows += file_score.detected_windows;
        category.raw += file_score.score;
        category.counts.add(file_score.counts);
    }
    for category in categories.values_mut() {
        category.normalized =
            (category.windows > 0).then(|| normalized_over(category.windows, category.raw, costs));
    }
    categories
}

/// NAB's threshold optimiser for one profile: the candidate thresholds are 1.1 and every
/// distinct non-probation score; the best corpus raw score wins, the higher threshold on ties.
/// Returns `(threshold, raw score)`.
pub fn optimize_threshold(
    corpus: &NabCorpus,
    anomaly_scores: &AnomalyScores,
    profile: ProfileName,
) -> Result<(f64, f64), MlError> {
    check_lengths(corpus, anomaly_scores)?;
    let costs = corpus.profile(profile);
    struct Row {
        score: f64,
        weight: f64,
        window: Option<usize>,
    }
    let mut rows = Vec::new();
    let mut window_offset = 0;
    for file in &corpus.files {
        let scores = anomaly_scores
            .get(&file.key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let start = file.probationary_period.min(file.len());
        for (row, &score) in scores.iter().enumerate().skip(start) {
            rows.push(Row {
                score,
                weight: row_weight(file, row, costs),
                window: file.window_of_row[row].map(|w| w + window_offset),
            });
        }
        window_offset += file.windows.len();
    }
    // Sweep thresholds from high to low; equal scores enter together (stable, as NAB sorts).
    rows.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut best_in_window: Vec<Option<f64>> = vec![None; window_offset];
    let mut false_positive_sum = 0.0;
    let mut window_sum = -costs.fn_weight * window_offset as f64;
    let (mut best_threshold, mut best_raw) = (NO_DETECTION_THRESHOLD, window_sum);
    let mut start = 0;
    while start < rows.len() {
        let threshold = rows[start].score;
        let mut end = start;
        while end < rows.len() && rows[end].score == threshold {
            let row = &rows[end];
            match row.window {
                None => false_positive_sum += row.weight,
                Some(window) => match best_in_window[window] {
                    None => {
                        window_sum += row.weight + costs.fn_weight;
                        best_in_window[window] = Some(row.weight);
                    }
                    Some(current) if row.weight > current => {
                        window_sum += row.weight - current;
                        best_in_window[window] = Some(row.weight);
                    }
                    Some(_) => {}
                },
            }
            end += 1;
        }
        let raw = false_positive_sum + window_sum;
        if threshold <= NO_DETECTION_THRESHOLD && raw > best_raw {
            best_raw = raw;
            best_threshold = threshold;
        }
        start = end;
    }
    Ok((best_threshold, best_raw))
}

/// Scores the corpus under NAB's three profiles, with optimised or given thresholds.
pub fn score_results(
    corpus: &NabCorpus,
    anomaly_scores: &AnomalyScores,
    thresholds: ThresholdChoice,
) -> Result<Scores, MlError> {
    let mut by_profile = Vec::with_capacity(3);
    for (index, profile) in ProfileName::ALL.into_iter().enumerate() {
        let threshold = match thresholds {
            ThresholdChoice::Optimize => optimize_threshold(corpus, anomaly_scores, profile)?.0,
            ThresholdChoice::Fixed(given) => given[index],
        };
        by_profile.push(score_at_threshold(
            corpus,
            anomaly_scores,
            threshold,
            profile,
        )?);
    }
    let mut by_profile = by_profile.into_iter();
    let mut next = || {
        by_profile
            .next()
            .ok_or_else(|| MlError::Layout("profile scores missing".to_owned()))
    };
    Ok(Scores {
        standard: next()?,
        reward_low_fp_rate: next()?,
        reward_low_fn_rate: next()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-file corpus: 20 rows, probation 3, windows rows 8..=11 and 15..=16.
    fn tiny() -> NabCorpus {
        let mut file = NabFile {
            key: "c/f.csv".into(),
            timestamp_text: Vec::new(),
            timestamps_ns: Vec::new(),
            values: vec![0.0; 20],
            probationary_period: 3,
            windows: vec![(8, 11), (15, 16)],
            window_of_row: Vec::new(),
            unweighted: Vec::new(),
        };
        file.window_of_row = (0..20)
            .map(|r| match r {
                8..=11 => Some(0),
                15..=16 => Some(1),
                _ => None,
            })
            .collect();
        // Hand-computed with the rules: inside, σ(−(r−i+1)/W)/σ(−1); outside, −1 before the
        // first window and σ((i − r')/(W' − 1)) after one.
        let s = super::super::corpus::scaled_sigmoid;
        let m1 = s(-1.0);
        file.unweighted = (0..20)
            .map(|i| match i {
                8..=11 => s(-((11 - i + 1) as f64) / 4.0) / m1,
                15..=16 => s(-((16 - i + 1) as f64) / 2.0) / m1,
                12..=14 => s((i - 11) as f64 / 3.0),
                17..=19 => s((i - 16) as f64 / 1.0),
                _ => -1.0,
            })
            .collect();
        NabCorpus {
            root: ".".into(),
            files: vec![file],
            profiles: ProfileName::ALL
                .into_iter()
                .map(|p| (p, p.nab_default()))
                .collect(),
        }
    }

    fn scores(values: Vec<f64>) -> AnomalyScores {
        BTreeMap::from([("c/f.csv".to_owned(), values)])
    }

    #[test]
    fn hand_computed_file_score() -> Result<(), MlError> {
        let corpus = tiny();
        let mut values = vec![0.0; 20];
        values[1] = 1.0; // probation: ignored
        values[5] = 0.9; // FP before any window: −0.11
        values[9] = 0.8; // first detection of window 0 at its 2nd row
        values[10] = 0.95; // later detection in the same window: no effect
        values[13] = 0.7; // FP 2 rows after window 0 (W = 4): 0.11·σ(2/3)
        // window 1 missed: −1
        let result = score_at_threshold(&corpus, &scores(values), 0.5, ProfileName::Standard)?;
        let s = super::super::corpus::scaled_sigmoid;
        let expected = -0.11 + 0.11 * s(2.0 / 3.0) + s(-3.0 / 4.0) / s(-1.0) - 1.0;
        assert!(
            (result.raw - expected).abs() < 1e-15,
            "{} vs {expected}",
            result.raw
        );
        assert_eq!(
            result.counts,
            Counts {
                tp: 2,
                fp: 2,
                fn_: 4,
                tn: 9
            }
        );
        // Two windows: null −2, perfect 2.
        assert!((result.normalized - 100.0 * (expected + 2.0) / 4.0).abs() < 1e-12);
        Ok(())
    }

    #[test]
    fn optimiser_finds_the_best_candidate_and_prefers_higher_thresholds() -> Result<(), MlError> {
        let corpus = tiny();
        let mut values = vec![0.1; 20];
        values[8] = 0.9; // perfect detection of window 0
        values[15] = 0.9; // and of window 1
        values[4] = 0.5; // an FP that a lower threshold would add
        let anomaly = scores(values);
        let (threshold, raw) = optimize_threshold(&corpus, &anomaly, ProfileName::Standard)?;
        assert_eq!(threshold, 0.9);
        assert!((raw - 2.0).abs() < 1e-12);
        // Exhaustive check against scoring at every candidate.
        for candidate in [0.1, 0.5, 0.9, 1.1] {
            let at = score_at_threshold(&corpus, &anomaly, candidate, ProfileName::Standard)?;
            assert!(at.raw <= raw + 1e-12);
        }
        // All scores equal and useless: "no detection" (1.1) ties and wins.
        let flat = scores(vec![0.5; 20]);
        let (threshold, _) = optimize_threshold(&corpus, &flat, ProfileName::Standard)?;
        let none = score_at_threshold(&corpus, &flat, 1.1, ProfileName::Standard)?;
        let all = score_at_threshold(&corpus, &flat, 0.5, ProfileName::Standard)?;
        assert_eq!(threshold, if all.raw > none.raw { 0.5 } else { 1.1 });
        Ok(())
    }

    #[test]
    fn mismatched_lengths_are_errors() {
        let corpus = tiny();
        assert!(
            score_at_threshold(&corpus, &scores(vec![0.0; 19]), 0.5, ProfileName::Standard)
                .is_err()
        );
        assert!(optimize_threshold(&corpus, &BTreeMap::new(), ProfileName::Standard).is_err());
    }
}
