//! A NAB tree on disk: `data/<category>/<file>.csv` (columns `timestamp,value`),
//! `labels/combined_windows.json` and `config/profiles.json`.
//!
//! Owns loading and validating the corpus, mapping label windows to row ranges and the
//! per-row unweighted sigmoid that the scorer weights per profile.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::MlError;
use crate::delimited::{DelimitedFile, parse_f64};
use crate::time::parse_civil_timestamp;

/// NAB's probationary fraction of a file and its cap in rows (0.15 · 5000).
const PROBATIONARY_FRACTION: f64 = 0.15;
const PROBATIONARY_CAP: usize = 750;

/// NAB's probationary period of a file of `rows` rows: `min(floor(0.15·N), 750)`. The scorer
/// ignores these rows, and detectors may use them to learn the stream's scale.
pub fn probationary_period(rows: usize) -> usize {
    ((PROBATIONARY_FRACTION * rows as f64).floor() as usize).min(PROBATIONARY_CAP)
}

/// NAB's scaled sigmoid: `2/(1 + e^{5y}) − 1`, and −1 beyond y = 3.
pub fn scaled_sigmoid(y: f64) -> f64 {
    if y > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * y).exp()) - 1.0
    }
}

/// One data file with its windows.
#[derive(Debug, Clone)]
pub struct NabFile {
    /// `<category>/<file>.csv`, the key used by NAB's label files.
    pub key: String,
    /// Timestamps as written in the file.
    pub timestamp_text: Vec<String>,
    /// Timestamps in nanoseconds since the epoch (read as UTC).
    pub timestamps_ns: Vec<i64>,
    /// The values.
    pub values: Vec<f64>,
    /// NAB's probationary period for this file.
    pub probationary_period: usize,
    /// Label windows as inclusive row ranges, sorted, not overlapping.
    pub windows: Vec<(usize, usize)>,
    /// Per row: the window holding it, if any.
    pub(crate) window_of_row: Vec<Option<usize>>,
    /// Per row: σ(y)/σ(−1) inside a window (positive), σ(y) or −1 outside (negative).
    pub(crate) unweighted: Vec<f64>,
}

impl NabFile {
    /// The category (directory) of the file.
    pub fn category(&self) -> &str {
        self.key.split('/').next().unwrap_or("")
    }

    /// The file name within its category.
    pub fn name(&self) -> &str {
        self.key.rsplit('/').next().unwrap_or(&self.key)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the file has no rows.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Whether row `row` lies inside a label window (the results files' `label` column).
    pub fn is_labelled(&self, row: usize) -> bool {
        self.window_of_row.get(row).is_some_and(Option::is_some)
    }

    fn compute_row_weights(&mut self) {
        let n = self.values.len();
        self.window_of_row = vec![None; n];
        self.unweighted = vec![0.0; n];
        let at_window_start = scaled_sigmoid(-1.0);
        let mut previous: Option<(usize, usize)> = None;
        let mut windows = self.windows.iter().enumerate().peekable();
        let mut row = 0;
        while row < n {
            if let Some(&(index, &(left, right))) = windows.peek()
                && row == left
            {
                let width = (right - left + 1) as f64;
                for inside in left..=right {
                    self.window_of_row[inside] = Some(index);
                    let y = -((right - inside + 1) as f64) / width;
                    self.unweighted[inside] = scaled_sigmoid(y) / at_window_start;
                }
                previous = Some((right, right - left + 1));
                windows.next();
                row = right + 1;
                continue;
            }
            self.unweighted[row] = match previous {
                None => -1.0,
                // Distance past the previous window's end, in window widths (minus one, as NAB).
                Some((right, width)) => scaled_sigmoid((row - right) as f64 / (width as f64 - 1.0)),
            };
            row += 1;
        }
    }
}

/// A scoring profile (cost matrix).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Profile {
    /// Weight of a window's earliest detection.
    pub tp_weight: f64,
    /// Magnitude of the (negative) weight of a detection outside every window.
    pub fp_weight: f64,
    /// Cost of a window without detection.
    pub fn_weight: f64,
}

/// NAB's three profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum ProfileName {
    /// `standard`.
    #[serde(rename = "standard")]
    Standard,
    /// `reward_low_FP_rate`.
    #[serde(rename = "reward_low_FP_rate")]
    RewardLowFpRate,
    /// `reward_low_FN_rate`.
    #[serde(rename = "reward_low_FN_rate")]
    RewardLowFnRate,
}

impl ProfileName {
    /// The three profiles in NAB's order.
    pub const ALL: [Self; 3] = [Self::Standard, Self::RewardLowFpRate, Self::RewardLowFnRate];

    /// The name NAB's files use.
    pub const fn nab_name(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::RewardLowFpRate => "reward_low_FP_rate",
            Self::RewardLowFnRate => "reward_low_FN_rate",
        }
    }

    /// NAB's cost matrix of this profile (`config/profiles.json` at NAB v1.1).
    pub const fn nab_default(self) -> Profile {
        match self {
            Self::Standard => Profile {
                tp_weight: 1.0,
                fp_weight: 0.11,
                fn_weight: 1.0,
            },
            Self::RewardLowFpRate => Profile {
                tp_weight: 1.0,
                fp_weight: 0.22,
                fn_weight: 1.0,
            },
            Self::RewardLowFnRate => Profile {
                tp_weight: 1.0,
                fp_weight: 0.11,
                fn_weight: 2.0,
            },
        }
    }
}

/// The scored files of a NAB tree and its profiles.
#[derive(Debug, Clone)]
pub struct NabCorpus {
    /// The tree's root directory.
    pub root: PathBuf,
    /// Files in key order (the order NAB sorts label keys).
    pub files: Vec<NabFile>,
    /// Cost matrices by profile.
    pub profiles: BTreeMap<ProfileName, Profile>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CostMatrix {
    tp_weight: f64,
    fp_weight: f64,
    fn_weight: f64,
}

#[derive(serde::Deserialize)]
struct ProfileEntry {
    #[serde(rename = "CostMatrix")]
    cost_matrix: CostMatrix,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, MlError> {
    let text = std::fs::read_to_string(path).map_err(|source| MlError::io(path, source))?;
    serde_json::from_str(&text).map_err(|source| MlError::json(path, source))
}

impl NabCorpus {
    /// Loads every file listed in `labels/combined_windows.json` (NAB's corpus is the label
    /// file's keys), and the profiles from `config/profiles.json` when present, else NAB's.
    pub fn load(root: &Path) -> Result<Self, MlError> {
        let labels_path = root.join("labels").join("combined_windows.json");
        let windows: BTreeMap<String, Vec<[String; 2]>> = read_json(&labels_path)?;
        let profiles_path = root.join("config").join("profiles.json");
        let profiles = if profiles_path.exists() {
            let entries: BTreeMap<String, ProfileEntry> = read_json(&profiles_path)?;
            ProfileName::ALL
                .into_iter()
                .map(|name| {
                    let entry = entries.get(name.nab_name()).ok_or_else(|| {
                        MlError::Layout(format!(
                            "{}: no profile `{}`",
                            profiles_path.display(),
                            name.nab_name()
                        ))
                    })?;
                    let m = &entry.cost_matrix;
                    Ok((
                        name,
                        Profile {
                            tp_weight: m.tp_weight,
                            fp_weight: m.fp_weight,
                            fn_weight: m.fn_weight,
                        },
                    ))
                })
                .collect::<Result<_, MlError>>()?
        } else {
            ProfileName::ALL
                .into_iter()
                .map(|name| (name, name.nab_default()))
                .collect()
        };
        let files = windows
            .iter()
            .map(|(key, file_windows)| load_file(root, key, file_windows))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            root: root.to_path_buf(),
            files,
            profiles,
        })
    }

    /// Total number of label windows.
    pub fn window_count(&self) -> usize {
        self.files.iter().map(|f| f.windows.len()).sum()
    }

    /// The file with key `key`.
    pub fn file(&self, key: &str) -> Option<&NabFile> {
        self.files.iter().find(|f| f.key == key)
    }

    /// The cost matrix of `profile`.
    pub fn profile(&self, profile: ProfileName) -> Profile {
        self.profiles
            .get(&profile)
            .copied()
            .unwrap_or(profile.nab_default())
    }

    /// A corpus restricted to the files whose key satisfies `keep` (e.g. one category).
    pub fn filtered(&self, keep: impl Fn(&NabFile) -> bool) -> Self {
        Self {
            root: self.root.clone(),
            files: self.files.iter().filter(|f| keep(f)).cloned().collect(),
            profiles: self.profiles.clone(),
        }
    }
}

fn load_file(root: &Path, key: &str, windows: &[[String; 2]]) -> Result<NabFile, MlError> {
    if key.split('/').count() != 2 || key.contains("..") {
        return Err(MlError::Layout(format!(
            "label key `{key}` is not <category>/<file>.csv"
        )));
    }
    let path = root.join("data").join(key);
    let mut timestamp_text = Vec::new();
    let mut timestamps_ns = Vec::new();
    let mut values = Vec::new();
    let data = DelimitedFile::open(&path, ',')?;
    if data.columns() != ["timestamp", "value"] {
        return Err(MlError::Layout(format!(
            "{}: expected columns timestamp,value, found {}",
            path.display(),
            data.columns().join(",")
        )));
    }
    data.for_each_record(|_, fields| {
        // NAB's files are nearly but not strictly increasing (a few repeated hours, one step
        // back in machine_temperature); the scorer works on row order, so accept them.
        let timestamp = parse_civil_timestamp(fields[0]).map_err(|e| e.to_string())?;
        timestamp_text.push(fields[0].to_owned());
        timestamps_ns.push(timestamp);
        values.push(parse_f64(fields[1], "value")?);
        Ok(())
    })?;
    // A repeated timestamp at a window edge (none in NAB v1.1) resolves to the widest window:
    // its first row on the left, its last row on the right.
    let mut rows_of: HashMap<i64, (usize, usize)> = HashMap::with_capacity(timestamps_ns.len());
    for (row, &t) in timestamps_ns.iter().enumerate() {
        rows_of
            .entry(t)
            .and_modify(|(_, last)| *last = row)
            .or_insert((row, row));
    }
    let mut ranges = Vec::with_capacity(windows.len());
    for [start, end] in windows {
        let (start_ns, end_ns) = (parse_civil_timestamp(start)?, parse_civil_timestamp(end)?);
        // NAB's windows start and end on row timestamps. An edge between rows falls back to
        // what NAB's scorer does with any edge, comparing timestamps: the window runs from the
        // first row at or after its start to the last row at or before its end.
        let left = rows_of
            .get(&start_ns)
            .map(|&(first, _)| first)
            .or_else(|| timestamps_ns.iter().position(|&t| t >= start_ns));
        let right = rows_of
            .get(&end_ns)
            .map(|&(_, last)| last)
            .or_else(|| timestamps_ns.iter().rposition(|&t| t <= end_ns));
        let (left, right) = match (left, right) {
            (Some(left), Some(right)) if left <= right => (left, right),
            _ => {
                return Err(MlError::Layout(format!(
                    "{key}: window `{start}`..`{end}` holds no row"
                )));
            }
        };
        if right < left
            || ranges
                .last()
                .is_some_and(|&(_, last_right)| left <= last_right)
        {
            return Err(MlError::Layout(format!(
                "{key}: windows must be sorted and disjoint (window `{start}`..`{end}`)"
            )));
        }
        ranges.push((left, right));
    }
    let mut file = NabFile {
        key: key.to_owned(),
        probationary_period: probationary_period(values.len()),
        timestamp_text,
        timestamps_ns,
        values,
        windows: ranges,
        window_of_row: Vec::new(),
        unweighted: Vec::new(),
    };
    file.compute_row_weights();
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_reference_values() {
        assert!((scaled_sigmoid(-1.0) - 0.986_614_298_151_430_3).abs() < 1e-15);
        assert_eq!(scaled_sigmoid(0.0), 0.0);
        assert!((scaled_sigmoid(1.0) + 0.986_614_298_151_430_3).abs() < 1e-15);
        assert_eq!(scaled_sigmoid(3.5), -1.0);
    }

    #[test]
    fn probation_is_fifteen_percent_capped_at_750() {
        assert_eq!(probationary_period(4032), 604);
        assert_eq!(probationary_period(1127), 169);
        assert_eq!(probationary_period(22_695), 750);
        assert_eq!(probationary_period(3), 0);
    }

    #[test]
    fn a_window_edge_between_rows_takes_the_rows_inside_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data").join("c");
        std::fs::create_dir_all(&data).expect("dirs");
        let mut csv = String::from("timestamp,value\n");
        for minute in 0..60 {
            csv.push_str(&format!("2015-01-01 00:{minute:02}:00,{minute}\n"));
        }
        std::fs::write(data.join("f.csv"), csv).expect("csv");
        let load = |windows: &[[&str; 2]]| {
            let windows: Vec<[String; 2]> = windows
                .iter()
                .map(|[a, b]| [(*a).to_owned(), (*b).to_owned()])
                .collect();
            load_file(dir.path(), "c/f.csv", &windows)
        };
        // On row timestamps, as NAB's labels are.
        let exact = load(&[["2015-01-01 00:10:00.000000", "2015-01-01 00:20:00.000000"]])
            .expect("exact edges");
        assert_eq!(exact.windows, [(10, 20)]);
        // Between rows: the rows inside the window, as NAB's scorer compares timestamps.
        let between = load(&[["2015-01-01 00:09:30.000000", "2015-01-01 00:20:30.000000"]])
            .expect("edges between rows");
        assert_eq!(between.windows, [(10, 20)]);
        // A window between two rows holds none, and says so.
        let empty = load(&[["2015-01-01 00:09:10.000000", "2015-01-01 00:09:50.000000"]]);
        assert!(
            empty.is_err_and(|e| e.to_string().contains("holds no row")),
            "an empty window is an error"
        );
    }

    #[test]
    fn row_weights_follow_the_rules() {
        let mut file = NabFile {
            key: "c/f.csv".into(),
            timestamp_text: Vec::new(),
            timestamps_ns: Vec::new(),
            values: vec![0.0; 30],
            probationary_period: 0,
            windows: vec![(10, 14), (20, 21)],
            window_of_row: Vec::new(),
            unweighted: Vec::new(),
        };
        file.compute_row_weights();
        assert_eq!(file.unweighted[9], -1.0, "before the first window");
        assert!(
            (file.unweighted[10] - 1.0).abs() < 1e-15,
            "window start is worth A_TP"
        );
        assert!(file.unweighted[14] > 0.0 && file.unweighted[14] < file.unweighted[13]);
        // Row 15 is one row past a width-5 window: y = 1/4.
        assert_eq!(file.unweighted[15], scaled_sigmoid(0.25));
        // Rows between windows refer to the previous window.
        assert_eq!(file.unweighted[19], scaled_sigmoid(5.0 / 4.0));
        // After the width-2 window: y = (i − 21)/1.
        assert_eq!(file.unweighted[25], -1.0);
        assert_eq!(file.unweighted[23], scaled_sigmoid(2.0));
        assert!(file.is_labelled(20) && !file.is_labelled(22));
    }
}
