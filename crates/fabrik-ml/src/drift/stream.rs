//! Change detection on a stream of values, one at a time: ADWIN (adaptive windowing, Bifet &
//! Gavaldà 2007) and the Page–Hinkley test, with river 0.26's parameters, arithmetic and
//! reset-after-drift behaviour, so they flag the same indices river does.

/// ADWIN: keeps a window of recent values in exponential buckets and drops its older part
/// whenever the means of the two parts differ by more than a Hoeffding-style bound at
/// confidence `delta`. Needs no threshold in the values' units: the bound scales with the
/// window's variance.
#[derive(Debug, Clone)]
pub struct Adwin {
    delta: f64,
    clock: u64,
    max_buckets: usize,
    min_window_length: f64,
    grace_period: f64,
    /// Bucket rows: row `i` holds (total, variance) summaries of 2^i values each, oldest
    /// first, at most `max_buckets` (+1 while merging).
    rows: Vec<Vec<(f64, f64)>>,
    total: f64,
    variance: f64,
    width: f64,
    tick: u64,
    /// The last update detected a change: the next one starts afresh (as river resets).
    drifted: bool,
}

impl Default for Adwin {
    /// river's defaults: `delta` 0.002, clock 32, 5 buckets per row, windows of at least 5,
    /// no test before 10 values.
    fn default() -> Self {
        Self::new(0.002, 32, 5, 5, 10)
    }
}

impl Adwin {
    /// An empty detector.
    pub fn new(
        delta: f64,
        clock: u64,
        max_buckets: usize,
        min_window_length: u32,
        grace_period: u32,
    ) -> Self {
        Self {
            delta,
            clock: clock.max(1),
            // With one summary per row a merge leaves rows empty between full ones.
            max_buckets: max_buckets.max(2),
            min_window_length: f64::from(min_window_length),
            grace_period: f64::from(grace_period),
            rows: vec![Vec::new()],
            total: 0.0,
            variance: 0.0,
            width: 0.0,
            tick: 0,
            drifted: false,
        }
    }

    /// The values in the window.
    pub fn width(&self) -> f64 {
        self.width
    }

    /// The window's mean.
    pub fn mean(&self) -> f64 {
        if self.width > 0.0 {
            self.total / self.width
        } else {
            0.0
        }
    }

    /// Adds `value`; whether a change was detected.
    pub fn update(&mut self, value: f64) -> bool {
        if self.drifted {
            *self = Self::new(
                self.delta,
                self.clock,
                self.max_buckets,
                self.min_window_length as u32,
                self.grace_period as u32,
            );
        }
        self.insert(value);
        self.drifted = self.detect();
        self.drifted
    }

    fn insert(&mut self, value: f64) {
        self.rows[0].push((value, 0.0));
        self.width += 1.0;
        if self.width > 1.0 {
            let deviation = value - self.total / (self.width - 1.0);
            self.variance += (self.width - 1.0) * deviation * deviation / self.width;
        }
        self.total += value;
        // A full row merges its two oldest summaries into one of the next row.
        let mut row = 0;
        while self.rows[row].len() == self.max_buckets + 1 {
            let size = (1_u64 << row) as f64;
            let (first, second) = (self.rows[row][0], self.rows[row][1]);
            let (mean_first, mean_second) = (first.0 / size, second.0 / size);
            let gap = mean_first - mean_second;
            let merged = (
                first.0 + second.0,
                first.1 + second.1 + size * 0.5 * gap * gap,
            );
            if row + 1 == self.rows.len() {
                self.rows.push(Vec::new());
            }
            self.rows[row + 1].push(merged);
            self.rows[row].drain(..2);
            row += 1;
        }
    }

    /// Drops the oldest summary; whether there was one.
    fn drop_oldest(&mut self) -> bool {
        while self.rows.len() > 1 && self.rows.last().is_some_and(Vec::is_empty) {
            self.rows.pop();
        }
        let Some(last) = self.rows.len().checked_sub(1) else {
            return false;
        };
        let Some(&(total, variance)) = self.rows[last].first() else {
            return false;
        };
        let size = (1_u64 << last) as f64;
        let mean = total / size;
        self.width -= size;
        self.total -= total;
        let rest_mean = self.total / self.width;
        let gap = mean - rest_mean;
        self.variance -= variance + size * self.width * gap * gap / (size + self.width);
        self.rows[last].remove(0);
        if self.rows[last].is_empty() && last > 0 {
            self.rows.pop();
        }
        true
    }

    fn detect(&mut self) -> bool {
        self.tick += 1;
        if !self.tick.is_multiple_of(self.clock) || self.width <= self.grace_period {
            return false;
        }
        let mut changed = false;
        'again: loop {
            // Every cut from the oldest summaries on: W0 the older part, W1 the newer.
            let (mut n0, mut n1, mut u0, mut u1) = (0.0, self.width, 0.0, self.total);
            let delta_prime = (2.0 * self.width.ln() / self.delta).ln();
            for row in (0..self.rows.len()).rev() {
                let size = (1_u64 << row) as f64;
                let count = self.rows[row].len();
                for k in 0..count {
                    let total = self.rows[row][k].0;
                    n0 += size;
                    n1 -= size;
                    u0 += total;
                    u1 -= total;
                    if row == 0 && k == count - 1 {
                        break 'again;
                    }
                    let gap = u0 / n0 - u1 / n1;
                    if n1 >= self.min_window_length
                        && n0 >= self.min_window_length
                        && self.cut(n0, n1, gap, delta_prime)
                    {
                        changed = true;
                        if self.width > 0.0 && self.drop_oldest() {
                            continue 'again;
                        }
                        break 'again;
                    }
                }
            }
            break;
        }
        changed
    }

    /// Whether the means of parts of `n0` and `n1` values, `gap` apart, differ beyond the
    /// bound (`delta_prime`: ln(2 ln(width) / delta), the same for every cut of a pass).
    fn cut(&self, n0: f64, n1: f64, gap: f64, delta_prime: f64) -> bool {
        let harmonic =
            1.0 / (n0 - self.min_window_length + 1.0) + 1.0 / (n1 - self.min_window_length + 1.0);
        let epsilon = (2.0 * harmonic * (self.variance / self.width) * delta_prime).sqrt()
            + 2.0 / 3.0 * delta_prime * harmonic;
        gap.abs() > epsilon
    }
}

/// Which direction of change a [`PageHinkley`] test looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeDirection {
    /// A rise of the mean.
    Up,
    /// A fall.
    Down,
    /// Either.
    Both,
}

/// The Page–Hinkley test: cumulative deviations from the running mean, with a tolerance
/// `delta` per value and forgetting `alpha`; a change once they stray `threshold` (in the
/// values' units times values) from their extreme.
#[derive(Debug, Clone)]
pub struct PageHinkley {
    min_instances: u64,
    delta: f64,
    threshold: f64,
    alpha: f64,
    direction: ChangeDirection,
    count: u64,
    mean: f64,
    sum_increase: f64,
    sum_decrease: f64,
    min_increase: f64,
    max_decrease: f64,
    drifted: bool,
}

impl Default for PageHinkley {
    /// river's defaults: 30 values before a verdict, `delta` 0.005, threshold 50, `alpha`
    /// 0.9999, both directions.
    fn default() -> Self {
        Self::new(30, 0.005, 50.0, 0.9999, ChangeDirection::Both)
    }
}

impl PageHinkley {
    /// A fresh test.
    pub fn new(
        min_instances: u64,
        delta: f64,
        threshold: f64,
        alpha: f64,
        direction: ChangeDirection,
    ) -> Self {
        Self {
            min_instances,
            delta,
            threshold,
            alpha,
            direction,
            count: 0,
            mean: 0.0,
            sum_increase: 0.0,
            sum_decrease: 0.0,
            min_increase: f64::INFINITY,
            // river starts the running maximum at −1, not −∞.
            max_decrease: -1.0,
            drifted: false,
        }
    }

    /// Adds `value`; whether a change was detected.
    pub fn update(&mut self, value: f64) -> bool {
        if self.drifted {
            *self = Self::new(
                self.min_instances,
                self.delta,
                self.threshold,
                self.alpha,
                self.direction,
            );
        }
        self.count += 1;
        self.mean += (1.0 / self.count as f64) * (value - self.mean);
        let deviation = value - self.mean;
        self.sum_increase = self.alpha * self.sum_increase + deviation - self.delta;
        self.sum_decrease = self.alpha * self.sum_decrease + deviation + self.delta;
        self.min_increase = self.min_increase.min(self.sum_increase);
        self.max_decrease = self.max_decrease.max(self.sum_decrease);
        if self.count < self.min_instances {
            return false;
        }
        let up = self.sum_increase - self.min_increase > self.threshold;
        let down = self.max_decrease - self.sum_decrease > self.threshold;
        self.drifted = match self.direction {
            ChangeDirection::Up => up,
            ChangeDirection::Down => down,
            ChangeDirection::Both => up || down,
        };
        self.drifted
    }
}
