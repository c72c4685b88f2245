//! Concept drift on a stream of errors, one bit at a time: DDM, EDDM, HDDM_A, HDDM_W and FHDDM
//! with river 0.26's parameters, arithmetic order and reset-after-drift behaviour, so they
//! enter the warning zone and flag a drift at the same indices river does. Fed a model's
//! mistakes (an alert operators called false, a prediction the label contradicted), they say
//! when the model got worse: model decay, without a threshold in any unit.

/// Where a detector stands after a bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    /// The error rate is where it was.
    Stable,
    /// It rose, not yet surely: a drift may follow.
    Warning,
    /// It rose beyond the detector's bound; the next bit starts it afresh.
    Drift,
}

/// river's two flags after an update (`warning_detected`, `drift_detected`). Both can be set:
/// EDDM keeps its warning through a drift, a two-sided HDDM may warn of a fall while it flags a
/// rise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    /// `warning_detected`.
    pub warning: bool,
    /// `drift_detected`.
    pub drift: bool,
}

impl Flags {
    /// The flags as one zone, a drift first.
    pub fn zone(self) -> Zone {
        if self.drift {
            Zone::Drift
        } else if self.warning {
            Zone::Warning
        } else {
            Zone::Stable
        }
    }
}

/// A detector of a rising error rate: `update(true)` is an error.
pub trait ErrorRateDetector {
    /// Adds one outcome; river's flags after it.
    fn update(&mut self, error: bool) -> Flags;
}

/// river's `stats.Mean`: the running mean with its count as a float, updated as
/// `mean += (w / n) × (x − mean)` (the order matters to the last bit).
#[derive(Debug, Clone, Copy, Default)]
struct Mean {
    n: f64,
    mean: f64,
}

impl Mean {
    fn update(&mut self, x: f64) {
        self.n += 1.0;
        self.mean += (1.0 / self.n) * (x - self.mean);
    }
}

/// river's `stats.Var` (ddof 1): Welford's sum of squares beside a [`Mean`].
#[derive(Debug, Clone, Copy, Default)]
struct Var {
    mean: Mean,
    sum_squares: f64,
}

impl Var {
    fn update(&mut self, x: f64) {
        let before = self.mean.mean;
        self.mean.update(x);
        self.sum_squares += (x - before) * (x - self.mean.mean);
    }

    fn get(&self) -> f64 {
        if self.mean.n > 1.0 {
            self.sum_squares / (self.mean.n - 1.0)
        } else {
            0.0
        }
    }
}

fn bit(error: bool) -> f64 {
    f64::from(u8::from(error))
}

/// DDM (Gama et al. 2004): the error rate p and its binomial deviation s; a warning when
/// p + s exceeds the lowest p + s seen by `warning` of that minimum's s, a drift at `drift`.
#[derive(Debug, Clone)]
pub struct Ddm {
    warm_start: u32,
    warning: f64,
    drift: f64,
    p: Mean,
    p_min: f64,
    s_min: f64,
    ps_min: f64,
    warned: bool,
    drifted: bool,
}

impl Default for Ddm {
    /// river's defaults: no decision in the first 30 bits, warning at 2 deviations, drift at 3.
    fn default() -> Self {
        Self::new(30, 2.0, 3.0)
    }
}

impl Ddm {
    /// A detector with river's parameters `warm_start`, `warning_threshold`, `drift_threshold`.
    pub fn new(warm_start: u32, warning: f64, drift: f64) -> Self {
        Self {
            warm_start,
            warning,
            drift,
            p: Mean::default(),
            p_min: f64::INFINITY,
            s_min: f64::INFINITY,
            ps_min: f64::INFINITY,
            warned: false,
            drifted: false,
        }
    }
}

impl ErrorRateDetector for Ddm {
    fn update(&mut self, error: bool) -> Flags {
        if self.drifted {
            *self = Self::new(self.warm_start, self.warning, self.drift);
        }
        self.p.update(bit(error));
        let p = self.p.mean;
        let s = (p * (1.0 - p) / self.p.n).sqrt();
        if self.p.n > f64::from(self.warm_start) {
            if p + s <= self.ps_min {
                self.p_min = p;
                self.s_min = s;
                self.ps_min = self.p_min + self.s_min;
            }
            self.warned = p + s > self.p_min + self.warning * self.s_min;
            if p + s > self.p_min + self.drift * self.s_min {
                self.drifted = true;
                self.warned = false;
            }
        }
        flags(self.warned, self.drifted)
    }
}

fn flags(warning: bool, drift: bool) -> Flags {
    Flags { warning, drift }
}

/// EDDM (Baena-García et al. 2006): the distance between consecutive errors, its mean p′
/// and deviation s′; a warning when p′ + 2s′ falls below `alpha` of its maximum, a drift
/// below `beta`. Finds gradual decay earlier than DDM, at more false alarms.
#[derive(Debug, Clone)]
pub struct Eddm {
    warm_start: u32,
    alpha: f64,
    beta: f64,
    distances: Var,
    n: u64,
    last_error: u64,
    errors: u64,
    p2s_max: f64,
    warned: bool,
    drifted: bool,
}

impl Default for Eddm {
    /// river's defaults: 30 bits and 30 errors before a decision, warning 0.95, drift 0.9.
    fn default() -> Self {
        Self::new(30, 0.95, 0.9)
    }
}

impl Eddm {
    /// A detector with river's `warm_start`, `alpha` (warning) and `beta` (drift); `alpha`
    /// must not be below `beta` (river refuses it; here the two are swapped into order).
    pub fn new(warm_start: u32, alpha: f64, beta: f64) -> Self {
        Self {
            warm_start,
            alpha: alpha.max(beta),
            beta: alpha.min(beta),
            distances: Var::default(),
            n: 0,
            last_error: 0,
            errors: 0,
            p2s_max: -1.0,
            warned: false,
            drifted: false,
        }
    }
}

impl ErrorRateDetector for Eddm {
    fn update(&mut self, error: bool) -> Flags {
        if self.drifted {
            *self = Self::new(self.warm_start, self.alpha, self.beta);
        }
        self.n += 1;
        if error {
            self.errors += 1;
            self.distances.update((self.n - self.last_error) as f64);
            if self.n > u64::from(self.warm_start) {
                let p = self.distances.mean.mean;
                let s = self.distances.get().sqrt();
                let p2s = p + 2.0 * s;
                if p2s > self.p2s_max {
                    self.p2s_max = p2s;
                } else if self.errors > u64::from(self.warm_start) {
                    let level = p2s / self.p2s_max;
                    if level < self.beta {
                        self.drifted = true;
                    } else {
                        self.warned = level < self.alpha;
                    }
                }
            }
            self.last_error = self.n;
        }
        // river leaves the warning flag set through a drift (only its reset clears it).
        flags(self.warned, self.drifted)
    }
}

/// HDDM_A (Frías-Blanco et al. 2015, as MOA and river compute it): Hoeffding's bound on the
/// mean error rate since a cut point, the point where the rate plus its bound was lowest.
/// One-sided by default (a rising rate); `two_sided` also flags a falling one.
#[derive(Debug, Clone)]
pub struct HddmA {
    drift_confidence: f64,
    warning_confidence: f64,
    two_sided: bool,
    x_min: Mean,
    x_max: Mean,
    z: Mean,
    drifted: bool,
}

impl Default for HddmA {
    /// river's defaults: drift at confidence 0.001, warning at 0.005, one-sided.
    fn default() -> Self {
        Self::new(0.001, 0.005, false)
    }
}

impl HddmA {
    /// A detector with river's `drift_confidence`, `warning_confidence`, `two_sided_test`.
    pub fn new(drift_confidence: f64, warning_confidence: f64, two_sided: bool) -> Self {
        Self {
            drift_confidence,
            warning_confidence,
            two_sided,
            x_min: Mean::default(),
            x_max: Mean::default(),
            z: Mean::default(),
            drifted: false,
        }
    }

    fn hoeffding_bound(&self, n: f64) -> f64 {
        (1.0 / (2.0 * n) * (1.0 / self.drift_confidence).ln()).sqrt()
    }

    /// Whether the mean since the cut point `cut` moved past the one at it (up with `rise`,
    /// else down) by more than the bound at `confidence`.
    fn moved(&self, cut: &Mean, confidence: f64, rise: bool) -> bool {
        if cut.n == self.z.n {
            return false;
        }
        let m = (self.z.n - cut.n) / cut.n * (1.0 / self.z.n);
        let eps = (m / 2.0 * (2.0 / confidence).ln()).sqrt();
        let difference = if rise {
            self.z.mean - cut.mean
        } else {
            cut.mean - self.z.mean
        };
        difference >= eps
    }

    fn mean_increased(&self, confidence: f64) -> bool {
        self.moved(&self.x_min, confidence, true)
    }

    fn mean_decreased(&self, confidence: f64) -> bool {
        self.moved(&self.x_max, confidence, false)
    }
}

impl ErrorRateDetector for HddmA {
    fn update(&mut self, error: bool) -> Flags {
        if self.drifted {
            *self = Self::new(
                self.drift_confidence,
                self.warning_confidence,
                self.two_sided,
            );
        }
        self.z.update(bit(error));
        if self.x_min.n == 0.0 {
            self.x_min = self.z;
        }
        if self.x_max.n == 0.0 {
            self.x_max = self.z;
        }
        let eps_z = self.hoeffding_bound(self.z.n);
        let eps_x = self.hoeffding_bound(self.x_min.n);
        if self.x_min.mean + eps_x >= self.z.mean + eps_z {
            self.x_min = self.z;
        }
        let eps_x = self.hoeffding_bound(self.x_max.n);
        if self.x_max.mean - eps_x <= self.z.mean - eps_z {
            self.x_max = self.z;
        }
        let (mut warned, mut drifted) = if self.mean_increased(self.drift_confidence) {
            (false, true)
        } else {
            (self.mean_increased(self.warning_confidence), false)
        };
        if self.two_sided {
            if self.mean_decreased(self.drift_confidence) {
                drifted = true;
            } else if self.mean_decreased(self.warning_confidence) {
                warned = true;
            }
        }
        self.drifted = drifted;
        flags(warned, drifted)
    }
}

/// An exponentially weighted sample of [`HddmW`]: river's `EWMean` (whose first value, and
/// any value while the mean is exactly 0, replaces the mean rather than weighting it) and the
/// McDiarmid bound's independent-bound condition.
#[derive(Debug, Clone, Copy)]
struct WeightedSample {
    lambda: f64,
    ewma: f64,
    ibc: f64,
    init: bool,
}

impl WeightedSample {
    fn new(lambda: f64) -> Self {
        Self {
            lambda,
            ewma: 0.0,
            ibc: 1.0,
            init: false,
        }
    }

    fn update(&mut self, x: f64) {
        self.ewma = if self.ewma != 0.0 {
            self.lambda * x + (1.0 - self.lambda) * self.ewma
        } else {
            x
        };
        self.init = true;
        self.ibc = self.lambda * self.lambda + (1.0 - self.lambda).powi(2) * self.ibc;
    }
}

/// HDDM_W (Frías-Blanco et al. 2015, as MOA and river compute it): McDiarmid's bound on an
/// exponentially weighted error rate (weight `lambda` on the newest bit) since the cut point.
#[derive(Debug, Clone)]
pub struct HddmW {
    drift_confidence: f64,
    warning_confidence: f64,
    lambda: f64,
    two_sided: bool,
    total: WeightedSample,
    s1_incr: WeightedSample,
    s2_incr: WeightedSample,
    s1_decr: WeightedSample,
    s2_decr: WeightedSample,
    incr_cut: f64,
    decr_cut: f64,
    drifted: bool,
}

impl Default for HddmW {
    /// river's defaults: drift at confidence 0.001, warning at 0.005, λ 0.05, one-sided.
    fn default() -> Self {
        Self::new(0.001, 0.005, 0.05, false)
    }
}

impl HddmW {
    /// A detector with river's `drift_confidence`, `warning_confidence`, `lambda_val`,
    /// `two_sided_test`.
    pub fn new(
        drift_confidence: f64,
        warning_confidence: f64,
        lambda: f64,
        two_sided: bool,
    ) -> Self {
        Self {
            drift_confidence,
            warning_confidence,
            lambda,
            two_sided,
            total: WeightedSample::new(lambda),
            s1_incr: WeightedSample::new(lambda),
            s2_incr: WeightedSample::new(lambda),
            s1_decr: WeightedSample::new(lambda),
            s2_decr: WeightedSample::new(lambda),
            incr_cut: f64::INFINITY,
            decr_cut: f64::NEG_INFINITY,
            drifted: false,
        }
    }

    fn bound(ibc: f64, confidence: f64) -> f64 {
        (ibc * (1.0 / confidence).ln() / 2.0).sqrt()
    }

    fn changed(first: &WeightedSample, second: &WeightedSample, confidence: f64) -> bool {
        first.init
            && second.init
            && second.ewma - first.ewma > Self::bound(first.ibc + second.ibc, confidence)
    }
}

impl ErrorRateDetector for HddmW {
    fn update(&mut self, error: bool) -> Flags {
        if self.drifted {
            *self = Self::new(
                self.drift_confidence,
                self.warning_confidence,
                self.lambda,
                self.two_sided,
            );
        }
        let x = bit(error);
        self.total.update(x);
        let eps = Self::bound(self.total.ibc, self.drift_confidence);
        if self.total.ewma + eps < self.incr_cut {
            self.incr_cut = self.total.ewma + eps;
            self.s1_incr = self.total;
            self.s2_incr = WeightedSample::new(self.lambda);
        } else {
            self.s2_incr.update(x);
        }
        let (mut warned, mut drifted) =
            if Self::changed(&self.s1_incr, &self.s2_incr, self.drift_confidence) {
                (false, true)
            } else {
                (
                    Self::changed(&self.s1_incr, &self.s2_incr, self.warning_confidence),
                    false,
                )
            };
        let eps = Self::bound(self.total.ibc, self.drift_confidence);
        if self.total.ewma - eps > self.decr_cut {
            self.decr_cut = self.total.ewma - eps;
            self.s1_decr = self.total;
            self.s2_decr = WeightedSample::new(self.lambda);
        } else {
            self.s2_decr.update(x);
        }
        if self.two_sided {
            if Self::changed(&self.s2_decr, &self.s1_decr, self.drift_confidence) {
                drifted = true;
            } else if Self::changed(&self.s2_decr, &self.s1_decr, self.warning_confidence) {
                warned = true;
            }
        }
        self.drifted = drifted;
        flags(warned, drifted)
    }
}

/// FHDDM (Pesaranghader & Viktor 2016): the share of correct outcomes in a sliding window of
/// `window` against its highest so far; a drift when it fell by more than Hoeffding's bound at
/// `confidence`. With `short_window`, the stacking variant also watches the newest bits. No
/// warning zone. river's `FHDDM.update(x)` counts its 1s as successes (whatever its docstring
/// says), so `update(error)` here is river's `update(1 − error)`.
#[derive(Debug, Clone)]
pub struct Fhddm {
    window: usize,
    confidence: f64,
    short_window: Option<usize>,
    /// The last `window` outcomes, 1 = correct (FHDDM counts successes).
    recent: std::collections::VecDeque<u8>,
    correct: usize,
    epsilon: f64,
    epsilon_short: f64,
    u_max: f64,
    u_short_max: f64,
    drifted: bool,
}

impl Default for Fhddm {
    /// river's defaults: a window of 100 at confidence 10⁻⁶, no short window.
    fn default() -> Self {
        Self::new(100, 0.000_001, None)
    }
}

impl Fhddm {
    /// A detector with river's `sliding_window_size`, `confidence_level`, `short_window_size`
    /// (a short window longer than the window is taken as the window).
    pub fn new(window: usize, confidence: f64, short_window: Option<usize>) -> Self {
        let window = window.max(1);
        let short_window = short_window.map(|s| s.clamp(1, window));
        let bound = |size: usize| ((1.0 / confidence).ln() / (2.0 * size as f64)).sqrt();
        Self {
            window,
            confidence,
            short_window,
            recent: std::collections::VecDeque::with_capacity(window),
            correct: 0,
            epsilon: bound(window),
            epsilon_short: short_window.map_or(0.0, bound),
            u_max: 0.0,
            u_short_max: 0.0,
            drifted: false,
        }
    }
}

impl ErrorRateDetector for Fhddm {
    fn update(&mut self, error: bool) -> Flags {
        if self.drifted {
            *self = Self::new(self.window, self.confidence, self.short_window);
        }
        let success = u8::from(!error);
        if self.recent.len() == self.window
            && let Some(oldest) = self.recent.pop_front()
        {
            self.correct -= usize::from(oldest);
        }
        self.recent.push_back(success);
        self.correct += usize::from(success);
        if self.recent.len() == self.window {
            let u = self.correct as f64 / self.window as f64;
            if self.u_max < u {
                self.u_max = u;
            }
            let mut drifted = self.u_max - u > self.epsilon;
            if let Some(short) = self.short_window {
                let newest: usize = self
                    .recent
                    .iter()
                    .skip(self.window - short)
                    .map(|&b| usize::from(b))
                    .sum();
                let u_short = newest as f64 / short as f64;
                if self.u_short_max < u_short {
                    self.u_short_max = u_short;
                }
                drifted |= self.u_short_max - u_short > self.epsilon_short;
            }
            self.drifted = drifted;
        }
        flags(false, self.drifted)
    }
}

/// One of the detectors, chosen by name (`ddm`, `eddm`, `hddm_a`, `hddm_w`, `fhddm`) with
/// river's default parameters.
#[derive(Debug, Clone)]
pub enum AnyErrorRateDetector {
    /// [`Ddm`].
    Ddm(Ddm),
    /// [`Eddm`].
    Eddm(Eddm),
    /// [`HddmA`].
    HddmA(HddmA),
    /// [`HddmW`].
    HddmW(HddmW),
    /// [`Fhddm`].
    Fhddm(Fhddm),
}

/// The names [`AnyErrorRateDetector::by_name`] takes.
pub const ERROR_RATE_DETECTORS: [&str; 5] = ["ddm", "eddm", "hddm_a", "hddm_w", "fhddm"];

impl AnyErrorRateDetector {
    /// The detector named `name` with river's defaults; `None` for another name.
    pub fn by_name(name: &str) -> Option<Self> {
        Some(match name {
            "ddm" => Self::Ddm(Ddm::default()),
            "eddm" => Self::Eddm(Eddm::default()),
            "hddm_a" => Self::HddmA(HddmA::default()),
            "hddm_w" => Self::HddmW(HddmW::default()),
            "fhddm" => Self::Fhddm(Fhddm::default()),
            _ => return None,
        })
    }
}

impl ErrorRateDetector for AnyErrorRateDetector {
    fn update(&mut self, error: bool) -> Flags {
        match self {
            Self::Ddm(d) => d.update(error),
            Self::Eddm(d) => d.update(error),
            Self::HddmA(d) => d.update(error),
            Self::HddmW(d) => d.update(error),
            Self::Fhddm(d) => d.update(error),
        }
    }
}
