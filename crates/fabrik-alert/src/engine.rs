//! The alert lifecycle as a pure state machine: observations and the clock in, transitions out.
//!
//! Owns, per rule and key (usually a device), the condition state with hysteresis, the
//! pending timer of `for`, the last value and time seen (for rate of change and absence), and
//! the alert instance while it is pending or firing. Time is always passed in, so the
//! lifecycle is tested without waiting.

use std::collections::BTreeMap;

/// The error-rate detector of an [`Condition::ErrorRate`] rule, from `fabrik_ml::drift::binary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorRateMethod {
    /// HDDM_A, one-sided: `threshold` is the drift confidence (river's 0.001); the warning
    /// confidence is five times it, as river's defaults are.
    #[default]
    HddmA,
    /// HDDM_W, one-sided, λ 0.05: `threshold` is the drift confidence (river's 0.001).
    HddmW,
    /// DDM: `threshold` is the drift level in deviations (river's 3), the warning two thirds
    /// of it; no decision in the first 30 outcomes.
    Ddm,
    /// EDDM: `threshold` is the drift ratio β (river's 0.9), the warning ratio halfway to 1;
    /// no decision before 30 outcomes and 30 errors.
    Eddm,
    /// FHDDM, a window of 100: `threshold` is the confidence (river's 1e-6).
    Fhddm,
}

impl ErrorRateMethod {
    /// Every method, by its configuration name.
    pub const ALL: [(&'static str, ErrorRateMethod); 5] = [
        ("hddm_a", Self::HddmA),
        ("hddm_w", Self::HddmW),
        ("ddm", Self::Ddm),
        ("eddm", Self::Eddm),
        ("fhddm", Self::Fhddm),
    ];

    /// The method a configuration names.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, method)| *method)
    }

    /// Whether `threshold` is a valid drift parameter for it.
    pub fn accepts(self, threshold: f64) -> bool {
        match self {
            // Deviations above the minimum: the warning (two thirds) must stay positive.
            Self::Ddm => threshold > 0.0 && threshold <= 100.0,
            _ => threshold > 0.0 && threshold < 1.0,
        }
    }
}

/// A running error-rate detector.
#[derive(Debug, Clone)]
enum ErrorRateWatch {
    HddmA(fabrik_ml::drift::binary::HddmA),
    HddmW(fabrik_ml::drift::binary::HddmW),
    Ddm(fabrik_ml::drift::binary::Ddm),
    Eddm(fabrik_ml::drift::binary::Eddm),
    Fhddm(fabrik_ml::drift::binary::Fhddm),
}

impl ErrorRateWatch {
    fn new(method: ErrorRateMethod, threshold: f64) -> Self {
        use fabrik_ml::drift::binary::{Ddm, Eddm, Fhddm, HddmA, HddmW};
        let warning = (threshold * 5.0).min(0.5).max(threshold);
        match method {
            ErrorRateMethod::HddmA => Self::HddmA(HddmA::new(threshold, warning, false)),
            ErrorRateMethod::HddmW => Self::HddmW(HddmW::new(threshold, warning, 0.05, false)),
            ErrorRateMethod::Ddm => Self::Ddm(Ddm::new(30, threshold * 2.0 / 3.0, threshold)),
            ErrorRateMethod::Eddm => Self::Eddm(Eddm::new(30, (1.0 + threshold) / 2.0, threshold)),
            ErrorRateMethod::Fhddm => Self::Fhddm(Fhddm::new(100, threshold, None)),
        }
    }

    /// Adds one outcome; whether the detector found a drift.
    fn drift(&mut self, error: bool) -> bool {
        use fabrik_ml::drift::binary::ErrorRateDetector;
        match self {
            Self::HddmA(d) => d.update(error).drift,
            Self::HddmW(d) => d.update(error).drift,
            Self::Ddm(d) => d.update(error).drift,
            Self::Eddm(d) => d.update(error).drift,
            Self::Fhddm(d) => d.update(error).drift,
        }
    }
}

/// What makes a rule's condition true for one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// The value is above `fire`; it clears only once it is at or below `clear` (hysteresis;
    /// `clear ≤ fire`).
    Above {
        /// Firing level.
        fire: f64,
        /// Clearing level.
        clear: f64,
    },
    /// The value is below `fire`; it clears only once it is at or above `clear`
    /// (`clear ≥ fire`).
    Below {
        /// Firing level.
        fire: f64,
        /// Clearing level.
        clear: f64,
    },
    /// The value changes faster than this many units per second (either direction).
    RateAbove {
        /// Units per second.
        per_second: f64,
    },
    /// No observation for this long (a heartbeat).
    Absent {
        /// Silence that fires, ns.
        after_ns: i64,
    },
    /// The value has not changed for this long while observations keep coming: a frozen
    /// sensor or a stale register. Any change clears it.
    Unchanged {
        /// How long the same value fires, ns.
        after_ns: i64,
    },
    /// The value's level moved: ADWIN, checking at every value, found the older and the newer
    /// part of the key's recent values to differ in mean beyond its bound at confidence
    /// `delta`. Values are scaled by the key's own spread first (see [`ChangeWatch`]), so the
    /// same step is found whatever the units. It clears once `settle` values have come
    /// without another detection.
    Change {
        /// ADWIN's confidence (river's default 0.002; smaller: fewer, surer detections).
        delta: f64,
        /// Values without a change that resolve it.
        settle: u32,
    },
    /// The rate of errors among the key's outcomes rose: each value is one outcome, an error
    /// from 0.5 up (1: an alert operators called false, a prediction the label contradicted),
    /// and `method` (as river computes it) flags a drift at `threshold`. Model decay without a
    /// threshold in any unit. It clears once `settle` outcomes have come without another drift.
    ErrorRate {
        /// The detector.
        method: ErrorRateMethod,
        /// Its drift parameter: see [`ErrorRateMethod`].
        threshold: f64,
        /// Outcomes without a drift that resolve it.
        settle: u32,
    },
    /// The values' distribution changed: KSWIN (as river computes it, window 100, the newest
    /// 30 against 30 drawn from the older 70, seed 42) flags a drift when the two-sample KS
    /// test's p-value is at most `alpha` and its statistic above 0.1. On ranks, so it needs no
    /// scaling and a glitch is one rank among 30: it finds a step through spikes that inflate
    /// ADWIN's bound. A change of spread alone moves the statistic little (a threefold one
    /// went unseen at 1e-6). It tests at every value: river's default 0.005 raised 133 false
    /// alarms in 100,000 stationary values, 1e-6 none (docs/benchmarks.md). It clears once
    /// `settle` values have come without another detection.
    Distribution {
        /// The KS test's level.
        alpha: f64,
        /// Values without a detection that resolve it.
        settle: u32,
    },
}

/// A rule as the engine needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique name (`alertname` in notifications).
    pub name: String,
    /// `critical`, `warning`, `info`, ...
    pub severity: String,
    /// The condition.
    pub condition: Condition,
    /// How long the condition must hold before the alert fires, ns (0: at once).
    pub for_ns: i64,
    /// Annotation templates (`summary`, `runbook`, ...): rendered into an alert's annotations
    /// when it becomes pending or fires (see [`crate::notify::render_annotation`]).
    pub annotations: BTreeMap<String, String>,
    /// The setpoint the rule proposes operators apply (decision 0092); not the engine's
    /// concern, shown with the rule's alerts.
    pub action: Option<RuleAction>,
}

/// A rule's proposed setpoint (decision 0092).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleAction {
    /// The device written; `None`: each alert's key.
    pub device: Option<String>,
    /// The writable point.
    pub signal: String,
    /// A number or true/false.
    pub value: serde_json::Value,
    /// Why, in the rule author's words.
    pub summary: Option<String>,
}

/// Where an alert is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// The condition holds, for less than the rule's `for`.
    Pending,
    /// The condition held for `for`; notifications went out.
    Firing,
    /// The condition cleared.
    Resolved,
}

impl AlertState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }
}

/// One observation of a rule's value for a key, with context columns (e.g. the top signal of
/// an inference) carried into the alert's annotations.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The key (device).
    pub key: String,
    /// Time, ns: the row's own (the device's clock).
    pub time_ns: i64,
    /// When the row arrived, ns, on the clock the caller ticks with (Fabrik's `_raw_id`,
    /// taken from the receipt time): the difference to `time_ns` is the device's clock
    /// offset, by which a tick is read in the key's own clock.
    pub arrival_ns: i64,
    /// The rule's value.
    pub value: f64,
    /// Extra columns, by name.
    pub context: BTreeMap<String, String>,
}

/// A change the caller must record (and, for firing and resolved, notify).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The rule.
    pub rule: String,
    /// The key.
    pub key: String,
    /// The new state.
    pub state: AlertState,
    /// When the condition first held, ns.
    pub started_ns: i64,
    /// When this transition happened, ns.
    pub at_ns: i64,
    /// The value that caused it (NaN for absence).
    pub value: f64,
    /// Context of the observation that caused it.
    pub context: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
struct KeyState {
    /// The condition currently holds (after hysteresis).
    active: bool,
    /// When it started to hold.
    since_ns: i64,
    firing: bool,
    last_time_ns: Option<i64>,
    last_value: Option<f64>,
    context: BTreeMap<String, String>,
    /// Watched only because a heartbeat rule expects it; it has never reported.
    expected_only: bool,
    /// Since when the value has been the one last seen (`Unchanged` rules).
    unchanged_since_ns: i64,
    /// The key's clock minus the caller's, from its latest row: a tick at `now` is at
    /// `now + clock_offset_ns` for this key, so `for` and silences are measured on one clock
    /// even when a device's clock runs behind or ahead.
    clock_offset_ns: i64,
    /// Whether its latest row was dated more than [`MAX_CLOCK_OFFSET_NS`] after it arrived.
    last_was_ahead: bool,
    /// What its transitions report as their value: the latest rate for a rate rule (what
    /// crossed the threshold), else the latest value.
    last_reported: Option<f64>,
    /// The change watch of a `Change` rule, and the values since its last detection.
    change: Option<Box<ChangeWatch>>,
    since_change: u32,
    /// The detector of an `ErrorRate` rule (the values since its last drift are
    /// `since_change`).
    error_rate: Option<Box<ErrorRateWatch>>,
    /// The detector of a `Distribution` rule (the values since its last detection are
    /// `since_change`).
    distribution: Option<Box<fabrik_ml::drift::kswin::Kswin>>,
}

impl KeyState {
    /// Whether a detector's condition (`Change`, `ErrorRate`, `Distribution`) holds after a value: at a
    /// detection, and while an alert is open until `settle` values came without another.
    fn holds_after_detection(&mut self, detected: bool, settle: u32) -> bool {
        if detected {
            self.since_change = 0;
            true
        } else {
            self.since_change = self.since_change.saturating_add(1);
            self.active && self.since_change < settle
        }
    }
}

/// Values a [`ChangeWatch`] collects to learn a key's scale.
const CHANGE_SCALE_VALUES: usize = 30;

/// ADWIN on one key's values, scaled by their spread. ADWIN's bound has a term that does not
/// scale with the values (it assumes them within [0, 1]): fed raw, a step of 3 standard
/// deviations was found after 5 values in one unit and never in a unit 1,000 times larger.
/// So the key's first [`CHANGE_SCALE_VALUES`] values set a scale — six standard deviations,
/// or the level itself when they were all equal (a set point), or 1 when that is 0 — and
/// ADWIN sees values in that scale from the first on.
#[derive(Debug, Clone)]
pub struct ChangeWatch {
    delta: f64,
    detector: fabrik_ml::drift::stream::Adwin,
    first: Vec<f64>,
    scale: Option<f64>,
}

impl ChangeWatch {
    fn new(delta: f64) -> Self {
        Self {
            delta,
            detector: fabrik_ml::drift::stream::Adwin::new(delta, 1, 5, 5, 10),
            first: Vec::with_capacity(CHANGE_SCALE_VALUES),
            scale: None,
        }
    }

    /// Adds `value`; whether a change was detected.
    fn update(&mut self, value: f64) -> bool {
        if let Some(scale) = self.scale {
            return self.detector.update(value / scale);
        }
        self.first.push(value);
        if self.first.len() < CHANGE_SCALE_VALUES {
            return false;
        }
        let n = self.first.len() as f64;
        let mean = self.first.iter().sum::<f64>() / n;
        let spread = (self
            .first
            .iter()
            .map(|v| (v - mean) * (v - mean))
            .sum::<f64>()
            / n)
            .sqrt();
        let scale = if spread > 0.0 {
            6.0 * spread
        } else if mean != 0.0 {
            mean.abs()
        } else {
            1.0
        };
        self.scale = Some(scale);
        let mut changed = false;
        for value in std::mem::take(&mut self.first) {
            changed |= self.detector.update(value / scale);
        }
        changed
    }
}

/// The states of the keys a step changed, as they were before it: put back with
/// [`RuleEngine::undo`] when its transitions could not be recorded, so the rows are read
/// again from the state the record still describes instead of one that already moved on.
#[derive(Debug, Default)]
pub struct Undo {
    keys: Vec<(String, Option<KeyState>)>,
}

impl Undo {
    fn save(&mut self, key: &str, state: Option<&KeyState>) {
        self.keys.push((key.to_owned(), state.cloned()));
    }
}

/// The lifecycle of one rule over all its keys.
#[derive(Debug, Clone)]
pub struct RuleEngine {
    rule: Rule,
    keys: BTreeMap<String, KeyState>,
}

impl RuleEngine {
    /// No keys seen yet.
    pub fn new(rule: Rule) -> Self {
        Self {
            rule,
            keys: BTreeMap::new(),
        }
    }

    /// Puts `rule` in place of the current definition, keeping every key's state: open
    /// alerts, `for` timers, last values and times (for `rate_above`, `absent`, `unchanged`).
    /// For a redefinition that watches the same values; the next observations decide under
    /// the new levels.
    pub fn set_rule(&mut self, rule: Rule) {
        // A change watch built for another confidence starts afresh with the new one.
        if let Condition::Change { delta, .. } = rule.condition {
            for state in self.keys.values_mut() {
                if state
                    .change
                    .as_ref()
                    .is_some_and(|watch| watch.delta != delta)
                {
                    state.change = None;
                }
            }
        }
        // So does an error-rate detector of another method or threshold.
        if let Condition::ErrorRate {
            method, threshold, ..
        } = rule.condition
            && !matches!(self.rule.condition, Condition::ErrorRate { method: old_method, threshold: old, .. } if old_method == method && old == threshold)
        {
            for state in self.keys.values_mut() {
                state.error_rate = None;
            }
        }
        // And a distribution watch of another level.
        if let Condition::Distribution { alpha, .. } = rule.condition
            && !matches!(self.rule.condition, Condition::Distribution { alpha: old, .. } if old == alpha)
        {
            for state in self.keys.values_mut() {
                state.distribution = None;
            }
        }
        self.rule = rule;
    }

    /// The rule.
    pub fn rule(&self) -> &Rule {
        &self.rule
    }

    /// Whether it watches a key (has seen a row of it, or expects it) that `pattern` matches
    /// (`*`: any run of characters).
    pub fn watches_key_matching(&self, pattern: &str) -> bool {
        if !pattern.contains('*') {
            return self.keys.contains_key(pattern);
        }
        self.keys
            .keys()
            .any(|key| crate::model::glob_match(pattern, key))
    }

    /// Whether a pending alert of this rule can be restored after a restart: one whose
    /// condition is a level (above, below) or a silence, which the next rows confirm or
    /// clear. A rate or a frozen value needs the last value before the restart, which is
    /// gone: its first row would look like a change.
    pub fn restores_pending(&self) -> bool {
        matches!(
            self.rule.condition,
            Condition::Above { .. } | Condition::Below { .. } | Condition::Absent { .. }
        )
    }

    /// Forgets the keys whose condition holds but has not fired: their `for` starts again
    /// from the rows read from now on.
    pub fn forget_pending(&mut self) {
        for state in self.keys.values_mut() {
            if state.active && !state.firing {
                state.active = false;
            }
        }
    }

    /// Restores a key that was firing before a restart, so it neither fires twice nor stays
    /// firing forever: the next observations decide whether it resolves.
    pub fn restore_firing(&mut self, key: &str, started_ns: i64) {
        self.restore(key, started_ns, true);
    }

    /// Restores a key whose condition held since `started_ns`, firing or still pending (its
    /// `for` counting from then), as when a rule is redefined while it runs.
    pub fn restore(&mut self, key: &str, started_ns: i64, firing: bool) {
        let absence = matches!(self.rule.condition, Condition::Absent { .. });
        let state = self.keys.entry(key.to_owned()).or_default();
        state.active = true;
        state.firing = firing;
        state.since_ns = started_ns;
        if absence && state.last_time_ns.is_none() {
            // An absence is dated from the key's last report (or from when the rule began to
            // expect it): silent since then, whether or not its rows are recalled. Until a
            // recalled report says otherwise, it is watched only because it is expected.
            state.last_time_ns = Some(started_ns);
            state.expected_only = true;
        }
    }

    /// Tells the rule when `key` last reported, from data stored before this engine
    /// started, so an absence counts from then. Changes no alert: a restored firing alert
    /// stays firing while the silence lasts, instead of resolving on a report it never got.
    pub fn recall_last_seen(&mut self, key: &str, time_ns: i64, arrival_ns: i64) {
        let state = self.keys.entry(key.to_owned()).or_default();
        state.expected_only = false;
        if state.last_time_ns.is_none_or(|t| t < time_ns) {
            state.last_time_ns = Some(time_ns);
            state.clock_offset_ns = clock_offset(time_ns, arrival_ns);
        }
    }

    /// [`Self::observe`], with what puts its keys back as they were.
    pub fn observe_undoable(&mut self, observations: &[Observation]) -> (Vec<Transition>, Undo) {
        let mut undo = Undo::default();
        let mut saved = std::collections::HashSet::new();
        for o in observations {
            if saved.insert(o.key.as_str()) {
                undo.save(&o.key, self.keys.get(&o.key));
            }
        }
        (self.observe(observations), undo)
    }

    /// Puts back the key states `undo` saved.
    pub fn undo(&mut self, undo: Undo) {
        for (key, state) in undo.keys.into_iter().rev() {
            match state {
                Some(state) => {
                    self.keys.insert(key, state);
                }
                None => {
                    self.keys.remove(&key);
                }
            }
        }
    }

    /// Feeds observations (any order across keys; in time order per key: a row older than
    /// its key's latest is skipped, except an `ErrorRate` outcome, counted at that time).
    pub fn observe(&mut self, observations: &[Observation]) -> Vec<Transition> {
        let mut out = Vec::new();
        for o in observations {
            if !o.value.is_finite() {
                continue;
            }
            let state = self.keys.entry(o.key.clone()).or_default();
            // Older than what this key already saw: out of order, skipped. Unless what it saw
            // was dated far ahead of its arrival (a device clock reset into the future): that
            // row must not hide every later one, so this one is taken as the key's time now.
            let late = state
                .last_time_ns
                .filter(|&t| o.time_ns < t && !state.last_was_ahead);
            // An outcome is one whenever it is dated: `alert_labels` rows carry the alert's
            // start, and operators label newer alerts before older ones. It counts in
            // arrival order, at the key's latest time, so the alert's timeline never goes back.
            let time_ns = match (late, &self.rule.condition) {
                (None, _) => o.time_ns,
                (Some(latest), Condition::ErrorRate { .. }) => latest,
                (Some(_), _) => continue,
            };
            // What a transition of this row reports: its value, or for a rate rule its rate.
            let mut reported = o.value;
            let holds = match self.rule.condition {
                Condition::Above { fire, clear } => {
                    if state.active {
                        o.value > clear
                    } else {
                        o.value > fire
                    }
                }
                Condition::Below { fire, clear } => {
                    if state.active {
                        o.value < clear
                    } else {
                        o.value < fire
                    }
                }
                Condition::RateAbove { per_second } => {
                    match (state.last_time_ns, state.last_value) {
                        (Some(t), Some(v)) if time_ns > t => {
                            let rate = (o.value - v) / ((time_ns - t) as f64 / 1e9);
                            reported = rate;
                            rate.abs() > per_second
                        }
                        _ => {
                            reported = f64::NAN;
                            state.active
                        }
                    }
                }
                // Any observation ends a silence.
                Condition::Absent { .. } => false,
                // Bit-equal: a sensor that reports its last value again, not one that drifts
                // by less than some tolerance.
                Condition::Unchanged { after_ns } => match state.last_value {
                    Some(last) if last.to_bits() == o.value.to_bits() => {
                        time_ns - state.unchanged_since_ns >= after_ns
                    }
                    // Restored firing after a restart, its value unknown: it stays firing
                    // until a value differs from this one.
                    None if state.active => {
                        state.unchanged_since_ns = state.since_ns;
                        true
                    }
                    _ => {
                        state.unchanged_since_ns = time_ns;
                        false
                    }
                },
                Condition::Change { delta, settle } => {
                    let watch = state
                        .change
                        .get_or_insert_with(|| Box::new(ChangeWatch::new(delta)));
                    let detected = watch.update(o.value);
                    state.holds_after_detection(detected, settle)
                }
                Condition::ErrorRate {
                    method,
                    threshold,
                    settle,
                } => {
                    let detector = state
                        .error_rate
                        .get_or_insert_with(|| Box::new(ErrorRateWatch::new(method, threshold)));
                    let detected = detector.drift(o.value >= 0.5);
                    state.holds_after_detection(detected, settle)
                }
                Condition::Distribution { alpha, settle } => {
                    use fabrik_ml::drift::kswin::{Kswin, KswinSettings};
                    // A level outside (0, 1) is refused when the rule is defined; should one
                    // get here, the rule detects nothing rather than fail the evaluation.
                    if state.distribution.is_none() {
                        state.distribution = Kswin::new(KswinSettings {
                            alpha,
                            ..KswinSettings::default()
                        })
                        .ok()
                        .map(Box::new);
                    }
                    let detected = state
                        .distribution
                        .as_mut()
                        .is_some_and(|detector| detector.update(o.value));
                    state.holds_after_detection(detected, settle)
                }
            };
            state.last_time_ns = Some(time_ns);
            state.last_value = Some(o.value);
            if reported.is_finite() {
                state.last_reported = Some(reported);
            }
            state.clock_offset_ns = clock_offset(time_ns, o.arrival_ns);
            state.last_was_ahead = time_ns.saturating_sub(o.arrival_ns) > MAX_CLOCK_OFFSET_NS;
            state.expected_only = false;
            if holds {
                state.context = o.context.clone();
            }
            // A frozen value started when it last changed, not when the wait ran out.
            let since = match self.rule.condition {
                Condition::Unchanged { .. } => state.unchanged_since_ns,
                _ => time_ns,
            };
            step_at(
                &self.rule, &o.key, state, holds, since, time_ns, reported, &o.context, &mut out,
            );
        }
        out
    }

    /// Advances the clock: pending alerts whose `for` has elapsed fire, and absence rules
    /// check every key that reported and every one of `expected_keys` (all the keys expected
    /// now, which may never have reported). A key that never reported and is no longer
    /// expected (a device removed from the registry) is forgotten, its alert resolved.
    pub fn tick(&mut self, now_ns: i64, expected_keys: &[String]) -> Vec<Transition> {
        self.tick_undoable(now_ns, expected_keys).0
    }

    /// [`Self::tick`], with what puts back the keys whose state changed with a transition
    /// (the others changed nothing that was recorded, and tick again the same way).
    pub fn tick_undoable(
        &mut self,
        now_ns: i64,
        expected_keys: &[String],
    ) -> (Vec<Transition>, Undo) {
        let mut out = Vec::new();
        let mut undo = Undo::default();
        if let Condition::Absent { after_ns } = self.rule.condition {
            for key in expected_keys {
                self.keys.entry(key.clone()).or_insert_with(|| KeyState {
                    // A key that never reported is silent since the rule started watching it.
                    last_time_ns: Some(now_ns),
                    expected_only: true,
                    ..KeyState::default()
                });
            }
            let expected: std::collections::HashSet<&str> =
                expected_keys.iter().map(String::as_str).collect();
            let rule = &self.rule;
            self.keys.retain(|key, state| {
                if !state.expected_only || expected.contains(key.as_str()) {
                    return true;
                }
                let context = state.context.clone();
                let (before, transitions) = (state.clone(), out.len());
                step_at(
                    rule,
                    key,
                    state,
                    false,
                    now_ns,
                    now_ns,
                    f64::NAN,
                    &context,
                    &mut out,
                );
                if out.len() > transitions {
                    undo.save(key, Some(&before));
                }
                false
            });
            for (key, state) in &mut self.keys {
                // On the key's own clock, as its last report is dated.
                let key_now = now_ns.saturating_add(state.clock_offset_ns);
                let silent_since = state.last_time_ns.unwrap_or(key_now);
                let holds = key_now - silent_since >= after_ns;
                if holds != state.active || holds {
                    let context = state.context.clone();
                    let since = if holds && !state.active {
                        silent_since
                    } else {
                        key_now
                    };
                    let (before, transitions) = (state.clone(), out.len());
                    // The silence is one once it has lasted `after`; `for` counts from there,
                    // adding to it instead of overlapping it: the clock is read `after` back.
                    step_at(
                        &self.rule,
                        key,
                        state,
                        holds,
                        since,
                        // A resolution is dated now.
                        if holds {
                            key_now.saturating_sub(after_ns)
                        } else {
                            key_now
                        },
                        f64::NAN,
                        &context,
                        &mut out,
                    );
                    if out.len() > transitions {
                        undo.save(key, Some(&before));
                    }
                }
            }
            return (out, undo);
        }
        for (key, state) in &mut self.keys {
            let key_now = now_ns.saturating_add(state.clock_offset_ns);
            if state.active && !state.firing && key_now - state.since_ns >= self.rule.for_ns {
                undo.save(key, Some(state));
                state.firing = true;
                out.push(Transition {
                    rule: self.rule.name.clone(),
                    key: key.clone(),
                    state: AlertState::Firing,
                    started_ns: state.since_ns,
                    // It fired when the condition had held for `for`, not when a tick
                    // noticed: the time stays in the data's clock, as a resolution's does.
                    at_ns: state.since_ns.saturating_add(self.rule.for_ns),
                    value: state.last_reported.unwrap_or(f64::NAN),
                    context: state.context.clone(),
                });
            }
        }
        (out, undo)
    }
}

/// The largest difference between a row's time and its arrival that is taken for the
/// device's clock running off; a larger one is a row sent late (a backlog, a reading from an
/// hour ago), which says nothing about the clock.
pub const MAX_CLOCK_OFFSET_NS: i64 = 600_000_000_000;

/// A key's clock offset from a row dated `time_ns` that arrived at `arrival_ns`.
fn clock_offset(time_ns: i64, arrival_ns: i64) -> i64 {
    let offset = time_ns.saturating_sub(arrival_ns);
    if offset.unsigned_abs() <= MAX_CLOCK_OFFSET_NS.unsigned_abs() {
        offset
    } else {
        0
    }
}

/// Applies `holds` at `at_ns`; a condition that starts to hold is dated `since_ns`.
#[allow(clippy::too_many_arguments)]
fn step_at(
    rule: &Rule,
    key: &str,
    state: &mut KeyState,
    holds: bool,
    since_ns: i64,
    at_ns: i64,
    value: f64,
    context: &BTreeMap<String, String>,
    out: &mut Vec<Transition>,
) {
    let transition = |state: AlertState, started_ns: i64| Transition {
        rule: rule.name.clone(),
        key: key.to_owned(),
        state,
        started_ns,
        // A firing is dated when the condition had held for `for`, whichever row or tick
        // noticed it: between two reports the last value holds. A frozen value is dated by
        // the row that showed it frozen long enough (it started when the value froze).
        at_ns: match (state, &rule.condition) {
            (AlertState::Firing, Condition::Unchanged { .. }) | (AlertState::Pending, _) => at_ns,
            (AlertState::Firing, Condition::Absent { after_ns }) => started_ns
                .saturating_add(*after_ns)
                .saturating_add(rule.for_ns),
            (AlertState::Firing, _) => started_ns.saturating_add(rule.for_ns).min(at_ns),
            (AlertState::Resolved, _) => at_ns,
        },
        value,
        context: context.clone(),
    };
    match (state.active, holds) {
        (false, true) => {
            state.active = true;
            state.since_ns = since_ns;
            if at_ns - since_ns >= rule.for_ns {
                state.firing = true;
                out.push(transition(AlertState::Firing, since_ns));
            } else {
                out.push(transition(AlertState::Pending, since_ns));
            }
        }
        (true, true) => {
            if !state.firing && at_ns - state.since_ns >= rule.for_ns {
                state.firing = true;
                out.push(transition(AlertState::Firing, state.since_ns));
            }
        }
        (true, false) => {
            state.active = false;
            // A pending alert that never fired resolves quietly (the caller drops it);
            // a firing one resolves with a notification.
            out.push(transition(AlertState::Resolved, state.since_ns));
            state.firing = false;
        }
        (false, false) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn obs(key: &str, t: i64, value: f64) -> Observation {
        Observation {
            key: key.into(),
            time_ns: t * S,
            arrival_ns: t * S,
            value,
            context: BTreeMap::new(),
        }
    }

    fn states(ts: &[Transition]) -> Vec<(&str, AlertState, i64)> {
        ts.iter()
            .map(|t| (t.key.as_str(), t.state, t.at_ns / S))
            .collect()
    }

    fn rule(condition: Condition, for_s: i64) -> Rule {
        Rule {
            name: "r".into(),
            severity: "warning".into(),
            condition,
            for_ns: for_s * S,
            annotations: BTreeMap::new(),
            action: None,
        }
    }

    /// A row as a device whose clock runs `behind` seconds behind the caller's sends it.
    fn skewed(key: &str, t: i64, value: f64, behind: i64) -> Observation {
        Observation {
            arrival_ns: (t + behind) * S,
            ..obs(key, t, value)
        }
    }

    #[test]
    fn a_device_clock_behind_neither_shortens_for_nor_fakes_a_silence() {
        let mut e = RuleEngine::new(rule(
            Condition::Above {
                fire: 50.0,
                clear: 40.0,
            },
            3,
        ));
        // Above at its 0 s (our 10 s), below at its 1.6 s: held 1.6 s, not 3.
        e.observe(&[skewed("t", 0, 60.0, 10)]);
        assert!(
            e.tick(12 * S, &[]).is_empty(),
            "fired on the caller's clock"
        );
        let cleared = e.observe(&[Observation {
            arrival_ns: 11_600_000_000,
            ..obs("t", 0, 10.0)
        }]);
        assert_eq!(states(&cleared)[0].1, AlertState::Resolved);
        assert!(e.tick(30 * S, &[]).is_empty());

        // A heartbeat every second from a device 10 s behind is never missed.
        let mut beat = RuleEngine::new(rule(Condition::Absent { after_ns: 8 * S }, 0));
        for t in 0..20 {
            beat.observe(&[skewed("h", t, 1.0, 10)]);
            assert!(beat.tick((t + 10) * S + S / 2, &[]).is_empty(), "at {t}");
        }
    }

    #[test]
    fn a_row_dated_a_year_ahead_does_not_hide_the_later_ones() {
        let mut e = RuleEngine::new(rule(
            Condition::Above {
                fire: 50.0,
                clear: 40.0,
            },
            0,
        ));
        let year = 365 * 24 * 3600;
        e.observe(&[Observation {
            arrival_ns: 10 * S,
            ..obs("t", 10 + year, 1.0)
        }]);
        let fired = e.observe(&[obs("t", 11, 60.0)]);
        assert_eq!(states(&fired), vec![("t", AlertState::Firing, 11)]);
        // Back in order, an older row is skipped again.
        assert!(e.observe(&[obs("t", 5, 10.0)]).is_empty());
    }

    #[test]
    fn an_absence_waits_its_for_after_the_silence() {
        let mut e = RuleEngine::new(rule(Condition::Absent { after_ns: 8 * S }, 8));
        e.observe(&[obs("h", 0, 1.0)]);
        // Silent for 8 s at 8 s: pending from then; firing 8 s later, dated then.
        assert!(e.tick(7 * S, &[]).is_empty());
        assert_eq!(states(&e.tick(10 * S, &[]))[0].1, AlertState::Pending);
        assert!(e.tick(15 * S, &[]).is_empty());
        assert_eq!(
            states(&e.tick(17 * S, &[])),
            vec![("h", AlertState::Firing, 16)]
        );
    }

    #[test]
    fn threshold_with_hysteresis_and_for_duration() {
        let mut e = RuleEngine::new(rule(
            Condition::Above {
                fire: 10.0,
                clear: 8.0,
            },
            30,
        ));
        assert!(e.observe(&[obs("a", 0, 5.0)]).is_empty());
        // Crossing starts pending; it fires only after 30 s of holding.
        assert_eq!(
            states(&e.observe(&[obs("a", 10, 11.0)])),
            vec![("a", AlertState::Pending, 10)]
        );
        assert!(e.tick(39 * S, &[]).is_empty());
        assert_eq!(
            states(&e.tick(40 * S, &[])),
            vec![("a", AlertState::Firing, 40)]
        );
        // 9 is below the firing level but above the clearing level: still firing.
        assert!(e.observe(&[obs("a", 50, 9.0)]).is_empty());
        assert_eq!(
            states(&e.observe(&[obs("a", 60, 7.5)])),
            vec![("a", AlertState::Resolved, 60)]
        );
        // Firing again needs the firing level, not the clearing one.
        assert!(e.observe(&[obs("a", 70, 9.5)]).is_empty());
        // A tick long after `for` elapsed dates the firing when it elapsed (data time), not
        // when the tick came.
        e.observe(&[obs("a", 80, 12.0)]);
        assert_eq!(
            states(&e.tick(500 * S, &[])),
            vec![("a", AlertState::Firing, 110)]
        );
    }

    #[test]
    fn a_short_excursion_never_fires() {
        let mut e = RuleEngine::new(rule(
            Condition::Above {
                fire: 10.0,
                clear: 10.0,
            },
            30,
        ));
        e.observe(&[obs("a", 0, 11.0)]);
        let t = e.observe(&[obs("a", 20, 1.0)]);
        assert_eq!(states(&t), vec![("a", AlertState::Resolved, 20)]);
        assert!(e.tick(100 * S, &[]).is_empty());
    }

    #[test]
    fn keys_are_independent_and_for_zero_fires_at_once() {
        let mut e = RuleEngine::new(rule(
            Condition::Below {
                fire: 1.0,
                clear: 1.0,
            },
            0,
        ));
        let t = e.observe(&[obs("a", 0, 0.5), obs("b", 0, 2.0), obs("b", 1, 0.1)]);
        assert_eq!(
            states(&t),
            vec![("a", AlertState::Firing, 0), ("b", AlertState::Firing, 1)]
        );
    }

    #[test]
    fn rate_of_change_uses_the_time_between_observations() {
        let mut e = RuleEngine::new(rule(Condition::RateAbove { per_second: 2.0 }, 0));
        assert!(
            e.observe(&[obs("a", 0, 0.0), obs("a", 10, 10.0)])
                .is_empty()
        );
        let t = e.observe(&[obs("a", 11, 20.0)]);
        assert_eq!(states(&t), vec![("a", AlertState::Firing, 11)]);
        // The alert carries what crossed the threshold: 10 units in 1 s, not the level 20.
        assert_eq!(t[0].value, 10.0);
        let t = e.observe(&[obs("a", 12, 21.0)]);
        assert_eq!(states(&t), vec![("a", AlertState::Resolved, 12)]);
        assert_eq!(t[0].value, 1.0);
        // Held for `for`, the tick that fires reports the latest rate too.
        let mut held = RuleEngine::new(rule(Condition::RateAbove { per_second: 2.0 }, 5));
        held.observe(&[obs("a", 0, 0.0), obs("a", 1, -4.0)]);
        let t = held.tick(7 * S, &[]);
        assert_eq!(states(&t), vec![("a", AlertState::Firing, 6)]);
        assert_eq!(t[0].value, -4.0, "a fall fires as a rise does");
    }

    #[test]
    fn absence_fires_for_silent_and_never_seen_keys_and_resolves_on_data() {
        let mut e = RuleEngine::new(rule(Condition::Absent { after_ns: 60 * S }, 0));
        e.observe(&[obs("a", 0, 1.0)]);
        assert!(e.tick(30 * S, &["b".into()]).is_empty());
        assert_eq!(
            states(&e.tick(61 * S, &["b".into()])),
            vec![("a", AlertState::Firing, 60)]
        );
        assert_eq!(
            states(&e.tick(91 * S, &["b".into()])),
            vec![("b", AlertState::Firing, 90)]
        );
        let t = e.observe(&[obs("a", 95, 1.0)]);
        assert_eq!(states(&t), vec![("a", AlertState::Resolved, 95)]);
        // No repeated firing transitions while it stays silent.
        assert!(e.tick(120 * S, &["b".into()]).is_empty());
        // No longer expected (removed from the registry) and never heard of: forgotten, its
        // alert resolved; `a`, which reported, is still watched though not expected.
        assert_eq!(
            states(&e.tick(130 * S, &[])),
            vec![("b", AlertState::Resolved, 130)]
        );
        assert!(e.tick(140 * S, &[]).is_empty());
        assert_eq!(
            states(&e.tick(200 * S, &[])),
            vec![("a", AlertState::Firing, 155)]
        );
    }

    #[test]
    fn a_level_change_fires_and_resolves_once_the_new_level_held() {
        let mut e = RuleEngine::new(rule(
            Condition::Change {
                delta: 0.002,
                settle: 30,
            },
            0,
        ));
        // Noise around 1.0 for 300 s on both keys; `moved` steps up to 2.0 at second 300.
        let noise = |i: i64| ((i * 7919) % 13) as f64 / 13.0 * 0.4 - 0.2;
        let mut observations = Vec::new();
        for i in 0..600_i64 {
            observations.push(obs("steady", i, 1.0 + noise(i)));
            let level = if i >= 300 { 2.0 } else { 1.0 };
            observations.push(obs("moved", i, level + noise(i + 5)));
        }
        let t = e.observe(&observations);
        let moved: Vec<_> = t.iter().filter(|t| t.key == "moved").collect();
        assert!(
            t.iter().all(|t| t.key == "moved"),
            "the steady key never changes: {t:?}"
        );
        // Fires soon after the step (a few values), then resolves once 30 values came
        // without another change.
        assert_eq!(moved.len(), 2, "{moved:?}");
        assert_eq!(moved[0].state, AlertState::Firing);
        let fired = moved[0].at_ns / S;
        assert!((300..320).contains(&fired), "fired at {fired}");
        assert_eq!(moved[1].state, AlertState::Resolved);
        assert_eq!(moved[1].at_ns / S, fired + 30, "{moved:?}");
    }

    #[test]
    fn a_distribution_rule_finds_a_step_through_spikes_that_move_a_mean() {
        let condition = Condition::Distribution {
            alpha: 1e-6,
            settle: 30,
        };
        let mut e = RuleEngine::new(rule(condition, 0));
        // Noise of ±0.5 around 20 (xorshift) with a spike to 1,000 every 50th value on both
        // keys — a sensor's glitches; `stepped` moves to 22 from second 300.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut noise = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1_u64 << 53) as f64 - 0.5
        };
        let mut observations = Vec::new();
        for i in 0..600_i64 {
            let spike = if i % 50 == 49 { 1_000.0 } else { 0.0 };
            observations.push(obs("spiky", i, 20.0 + noise() + spike));
            let level = if i >= 300 { 22.0 } else { 20.0 };
            observations.push(obs("stepped", i, level + noise() + spike));
        }
        let t = e.observe(&observations);
        assert!(t.iter().all(|t| t.key == "stepped"), "{t:?}");
        let fired = first_at(&t, AlertState::Firing).expect("fired");
        assert!((300..340).contains(&fired), "fired at {fired}");
        // KSWIN starts afresh after a detection, with the new level as its normal: the alert
        // resolves once 30 values came without another.
        let resolved = first_at(&t, AlertState::Resolved).expect("resolved");
        assert!(resolved >= fired + 30, "{t:?}");
        // Ranks, not values: a change rule (ADWIN on the mean), whose bound grows with the
        // variance the spikes add, misses the step.
        let mut level = RuleEngine::new(rule(
            Condition::Change {
                delta: 0.002,
                settle: 30,
            },
            0,
        ));
        let stepped: Vec<Observation> = observations
            .iter()
            .filter(|o| o.key == "stepped")
            .cloned()
            .collect();
        assert_eq!(level.observe(&stepped), [], "ADWIN saw the step");
    }

    #[test]
    fn a_rising_error_rate_fires_and_resolves_once_outcomes_settle() {
        let mut e = RuleEngine::new(rule(
            Condition::ErrorRate {
                method: ErrorRateMethod::HddmA,
                threshold: 0.001,
                settle: 30,
            },
            0,
        ));
        // One outcome a second per key: one error in ten throughout on `steady`; on
        // `decayed`, one in two from outcome 200 (a pseudo-random but fixed pattern).
        let error = |i: i64, every: i64| (i * 7919 + 3) % every == 0;
        let mut observations = Vec::new();
        for i in 0..400_i64 {
            observations.push(obs("steady", i, f64::from(u8::from(error(i, 10)))));
            let every = if i >= 200 { 2 } else { 10 };
            observations.push(obs("decayed", i, f64::from(u8::from(error(i + 1, every)))));
        }
        let t = e.observe(&observations);
        assert!(t.iter().all(|t| t.key == "decayed"), "{t:?}");
        let fired = first_at(&t, AlertState::Firing).expect("fired");
        assert!((200..260).contains(&fired), "fired at {fired}");
        // HDDM_A starts afresh after a drift, and the higher rate is then its normal: the
        // alert resolves after 30 outcomes without another.
        let resolved = first_at(&t, AlertState::Resolved).expect("resolved");
        assert!(resolved >= fired + 30, "{t:?}");
        // Anything from 0.5 up is an error: the same outcomes as 0.9 and 0.1 decide the same.
        let mut scaled = RuleEngine::new(rule(
            Condition::ErrorRate {
                method: ErrorRateMethod::HddmA,
                threshold: 0.001,
                settle: 30,
            },
            0,
        ));
        let soft: Vec<Observation> = observations
            .iter()
            .filter(|o| o.key == "decayed")
            .map(|o| {
                obs(
                    "decayed",
                    o.time_ns / S,
                    if o.value == 1.0 { 0.9 } else { 0.1 },
                )
            })
            .collect();
        let again = scaled.observe(&soft);
        assert_eq!(
            again.iter().map(|t| (t.state, t.at_ns)).collect::<Vec<_>>(),
            t.iter().map(|t| (t.state, t.at_ns)).collect::<Vec<_>>()
        );
        // Outcomes dated out of order (labels given newest first) still count, in the order
        // they came, at the key's latest time.
        let mut late = RuleEngine::new(rule(
            Condition::ErrorRate {
                method: ErrorRateMethod::HddmA,
                threshold: 0.001,
                settle: 30,
            },
            0,
        ));
        let reversed: Vec<Observation> = soft
            .iter()
            .enumerate()
            .map(|(i, o)| obs("decayed", 1_000 - i as i64, o.value))
            .collect();
        let t = late.observe(&reversed);
        let firing: Vec<i64> = t
            .iter()
            .filter(|t| t.state == AlertState::Firing)
            .map(|t| t.at_ns / S)
            .collect();
        assert_eq!(firing, [1_000], "{t:?}");
    }

    #[test]
    fn every_error_rate_method_fires_on_decay_and_all_but_eddm_stay_quiet_on_a_steady_rate() {
        // River's default for each.
        for (method, threshold) in [
            (ErrorRateMethod::HddmA, 0.001),
            (ErrorRateMethod::HddmW, 0.001),
            (ErrorRateMethod::Ddm, 3.0),
            (ErrorRateMethod::Eddm, 0.9),
            (ErrorRateMethod::Fhddm, 1e-6),
        ] {
            assert!(method.accepts(threshold), "{method:?}");
            let mut e = RuleEngine::new(rule(
                Condition::ErrorRate {
                    method,
                    threshold,
                    settle: 30,
                },
                0,
            ));
            // Errors drawn at random (a fixed seed): a periodic pattern would give EDDM's
            // distances no spread at all.
            let mut state = 0x9e37_79b9_7f4a_7c15_u64;
            let mut draw = move |rate: f64| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 11) as f64 / (1u64 << 53) as f64) < rate
            };
            let mut observations = Vec::new();
            for i in 0..600_i64 {
                observations.push(obs("steady", i, f64::from(u8::from(draw(0.1)))));
                let rate = if i >= 300 { 0.5 } else { 0.1 };
                observations.push(obs("decayed", i, f64::from(u8::from(draw(rate)))));
            }
            let t = e.observe(&observations);
            // EDDM, at river's defaults, also raised a false alarm on the steady key (at its
            // 292nd outcome): it trades false alarms for earlier detection, as documented.
            if method != ErrorRateMethod::Eddm {
                assert!(t.iter().all(|t| t.key == "decayed"), "{method:?}: {t:?}");
            }
            let decayed: Vec<Transition> = t.into_iter().filter(|t| t.key == "decayed").collect();
            let fired = first_at(&decayed, AlertState::Firing).expect("fired");
            assert!((300..400).contains(&fired), "{method:?} fired at {fired}");
        }
        assert!(ErrorRateMethod::Ddm.accepts(3.0) && !ErrorRateMethod::HddmA.accepts(3.0));
        assert_eq!(ErrorRateMethod::parse("eddm"), Some(ErrorRateMethod::Eddm));
        assert_eq!(ErrorRateMethod::parse("adwin"), None);
    }

    /// The second of the first transition to `state`.
    fn first_at(transitions: &[Transition], state: AlertState) -> Option<i64> {
        transitions
            .iter()
            .find(|t| t.state == state)
            .map(|t| t.at_ns / S)
    }

    /// The first firing of a change rule on a noisy step at second 300, the values times
    /// `unit`.
    fn first_change(unit: f64, delta: f64) -> Option<i64> {
        let mut e = RuleEngine::new(rule(Condition::Change { delta, settle: 30 }, 0));
        let noise = |i: i64| ((i * 7919) % 13) as f64 / 13.0 * 0.4 - 0.2;
        let observations: Vec<Observation> = (0..600_i64)
            .map(|i| {
                let level = if i >= 300 { 1.3 } else { 1.0 };
                obs("k", i, (level + noise(i)) * unit)
            })
            .collect();
        first_at(&e.observe(&observations), AlertState::Firing)
    }

    #[test]
    fn a_change_is_found_whatever_the_values_units() {
        // A step of 2.6 standard deviations, in units a million times apart.
        let found = first_change(1.0, 0.002).expect("found");
        assert!((300..330).contains(&found), "at {found}");
        assert_eq!(first_change(1000.0, 0.002), Some(found));
        assert_eq!(first_change(0.001, 0.002), Some(found));
        // A set point that steps: its first values are all equal, so its level is its scale.
        let mut e = RuleEngine::new(rule(
            Condition::Change {
                delta: 0.002,
                settle: 30,
            },
            0,
        ));
        let steps: Vec<Observation> = (0..200_i64)
            .map(|i| obs("sp", i, if i < 100 { 5.0 } else { 7.0 }))
            .collect();
        let t = e.observe(&steps);
        assert!(
            t.first()
                .is_some_and(|t| t.state == AlertState::Firing && t.at_ns / S >= 100),
            "{t:?}"
        );
    }

    #[test]
    fn a_redefined_confidence_starts_each_change_watch_afresh() {
        let mut e = RuleEngine::new(rule(
            Condition::Change {
                delta: 0.002,
                settle: 30,
            },
            0,
        ));
        e.observe(
            &(0..50)
                .map(|i| obs("k", i, 1.0 + (i % 3) as f64))
                .collect::<Vec<_>>(),
        );
        assert_eq!(e.keys["k"].change.as_ref().map(|w| w.delta), Some(0.002));
        e.set_rule(rule(
            Condition::Change {
                delta: 0.0001,
                settle: 30,
            },
            0,
        ));
        assert!(e.keys["k"].change.is_none(), "the old watch is dropped");
        e.observe(&[obs("k", 60, 1.0)]);
        assert_eq!(e.keys["k"].change.as_ref().map(|w| w.delta), Some(0.0001));
    }

    #[test]
    fn an_unchanged_value_fires_from_when_it_froze_and_any_change_resolves_it() {
        let mut e = RuleEngine::new(rule(Condition::Unchanged { after_ns: 30 * S }, 0));
        // Changing every second: never.
        let t = e.observe(
            &(0..40)
                .map(|i| obs("p", i, i as f64 * 0.1))
                .collect::<Vec<_>>(),
        );
        assert!(t.is_empty(), "{t:?}");
        // Frozen at 2.5 from second 40: fires at second 70, dated 40.
        let frozen: Vec<Observation> = (40..75).map(|i| obs("p", i, 2.5)).collect();
        let t = e.observe(&frozen);
        assert_eq!(states(&t), vec![("p", AlertState::Firing, 70)]);
        assert_eq!(t[0].started_ns, 40 * S);
        // The next different value resolves it; one equal value after it starts afresh.
        let t = e.observe(&[obs("p", 75, 2.6), obs("p", 76, 2.6)]);
        assert_eq!(states(&t), vec![("p", AlertState::Resolved, 75)]);
        // Silence is not a frozen value: without observations nothing happens.
        assert!(e.tick(500 * S, &[]).is_empty());
        // Restored firing after a restart: the same value keeps it, a new one resolves it.
        let mut e = RuleEngine::new(rule(Condition::Unchanged { after_ns: 30 * S }, 0));
        e.restore_firing("p", 40 * S);
        assert!(
            e.observe(&[obs("p", 600, 2.5), obs("p", 601, 2.5)])
                .is_empty()
        );
        let t = e.observe(&[obs("p", 602, 2.7)]);
        assert_eq!(states(&t), vec![("p", AlertState::Resolved, 602)]);
        assert_eq!(t[0].started_ns, 40 * S);
    }

    #[test]
    fn a_restored_alert_of_an_expected_key_that_never_reported_stays_firing() {
        let mut e = RuleEngine::new(rule(Condition::Absent { after_ns: 60 * S }, 0));
        // Fired before the restart for a device that never reported (no rows to recall).
        e.restore_firing("gw", 100 * S);
        let expected = ["gw".to_owned()];
        assert!(
            e.tick(1000 * S, &expected).is_empty(),
            "neither resolved nor fired anew"
        );
        assert!(e.tick(2000 * S, &expected).is_empty());
        // No longer expected (removed from the registry): forgotten, resolved.
        let t = e.tick(2001 * S, &[]);
        assert_eq!(states(&t), vec![("gw", AlertState::Resolved, 2001)]);
        assert_eq!(t[0].started_ns, 100 * S);
        // Reported at last: resolved by the report.
        let mut e = RuleEngine::new(rule(Condition::Absent { after_ns: 60 * S }, 0));
        e.restore_firing("gw", 100 * S);
        assert!(e.tick(1000 * S, &expected).is_empty());
        let t = e.observe(&[obs("gw", 1001, 1.0)]);
        assert_eq!(states(&t), vec![("gw", AlertState::Resolved, 1001)]);
    }

    #[test]
    fn a_recalled_report_dates_a_silence_and_keeps_a_restored_alert_firing() {
        let mut e = RuleEngine::new(rule(Condition::Absent { after_ns: 60 * S }, 0));
        // Silent since 10 s, long before this engine started at 1000 s.
        e.recall_last_seen("a", 10 * S, 10 * S);
        let t = e.tick(1000 * S, &[]);
        assert_eq!(states(&t), vec![("a", AlertState::Firing, 70)]);
        assert_eq!(t[0].started_ns, 10 * S);
        // After a restart the firing alert is restored and its last report recalled: it
        // neither resolves nor fires again while the silence lasts.
        let mut e = RuleEngine::new(rule(Condition::Absent { after_ns: 60 * S }, 0));
        e.restore_firing("a", 10 * S);
        e.recall_last_seen("a", 10 * S, 10 * S);
        assert!(e.tick(2000 * S, &[]).is_empty());
        assert!(e.tick(2001 * S, &[]).is_empty());
        let t = e.observe(&[obs("a", 2002, 1.0)]);
        assert_eq!(states(&t), vec![("a", AlertState::Resolved, 2002)]);
    }

    #[test]
    fn a_restored_firing_alert_resolves_without_firing_again() {
        let mut e = RuleEngine::new(rule(
            Condition::Above {
                fire: 10.0,
                clear: 10.0,
            },
            0,
        ));
        e.restore_firing("a", 5 * S);
        assert!(e.observe(&[obs("a", 10, 12.0)]).is_empty());
        let t = e.observe(&[obs("a", 11, 3.0)]);
        assert_eq!(t[0].started_ns, 5 * S);
        assert_eq!(t[0].state, AlertState::Resolved);
    }
}
