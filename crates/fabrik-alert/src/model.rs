//! The records operators see and the API serves: alerts, acknowledgements, silences.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::engine::AlertState;

/// An operator's verdict on an alert; stored as a label for model evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Feedback {
    /// A real problem.
    TruePositive,
    /// Nothing was wrong.
    FalsePositive,
}

impl Feedback {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TruePositive => "true_positive",
            Self::FalsePositive => "false_positive",
        }
    }

    /// Parses [`Feedback::as_str`] output.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "true_positive" => Some(Self::TruePositive),
            "false_positive" => Some(Self::FalsePositive),
            _ => None,
        }
    }
}

/// An acknowledgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Ack {
    /// Who acknowledged (free text: a name or token label).
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
    /// The verdict.
    pub feedback: Feedback,
    /// A note.
    pub comment: Option<String>,
}

/// An alert: one rule for one key (device), from the first time its condition held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Alert {
    /// `rule~key~start_ns`: stable across restarts and unique per occurrence.
    pub id: String,
    /// The rule's name.
    pub rule: String,
    /// The key, usually a device id.
    pub key: String,
    /// The rule's severity.
    pub severity: String,
    /// Pending, firing or resolved.
    pub state: AlertState,
    /// When the condition first held (RFC 3339).
    pub started_at: String,
    /// When it fired (RFC 3339).
    pub fired_at: Option<String>,
    /// When it resolved (RFC 3339).
    pub resolved_at: Option<String>,
    /// The last value that changed its state (absent for heartbeat rules).
    pub value: Option<f64>,
    /// Context of the observation that raised it (e.g. `top_signal`, `contributions`).
    pub annotations: BTreeMap<String, String>,
    /// The operator's acknowledgement.
    pub ack: Option<Ack>,
    /// Whether its notifications are held back: a silence matched, or (see `inhibited_by`)
    /// an inhibition held it when it last changed state or the silences were last checked.
    pub silenced: bool,
    /// The firing alert that inhibits this open one now (see [`Inhibition`]), if any; never
    /// stored, filled in when alerts are listed.
    #[serde(default)]
    pub inhibited_by: Option<String>,
    /// When it last changed (state, acknowledgement, silence, severity), RFC 3339 to the
    /// nanosecond: with the id, the cursor of `changed_after` to read every change.
    #[serde(default)]
    pub updated_at: String,
    /// What its rule proposes operators do (decision 0092); never stored, filled in when
    /// alerts are listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ProposedAction>,
    /// The writes that applied its proposed action, oldest first (from `_device_writes`);
    /// never stored, filled in when alerts are listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied: Vec<AppliedAction>,
}

/// A write that applied an alert's proposed action (decision 0092): who, when, and what the
/// device made of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppliedAction {
    /// When the device answered (RFC 3339).
    pub time: String,
    /// Who applied it.
    pub by: String,
    /// The device written.
    pub device: String,
    /// The point.
    pub signal: String,
    /// `confirmed`, `unconfirmed` (the device holds another value), `unverified` (not read
    /// back) or `failed`.
    pub status: String,
    /// The value written (a switch as 1 or 0).
    pub value: f64,
    /// What the device read back or reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_back: Option<f64>,
    /// The operator's note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What an alert's rule proposes operators do about it (decision 0092): set a device's
/// writable point. Applied only by a person (`POST /api/v1/alerts/{id}/apply`), and checked,
/// written and recorded as any setpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProposedAction {
    /// The device written: the rule's `device`, else the alert's key.
    pub device: String,
    /// The writable point.
    pub signal: String,
    /// The value: a number in engineering units, or true/false.
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
    /// Why, in the rule author's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// While an alert of a `source` rule fires, the alerts of the `targets` rules (of the same
/// device, unless `same_device` is false) are held back as if silenced: the root cause pages,
/// its consequences do not (a pump that stopped reporting also looks anomalous, a frozen
/// sensor also trips the model). An alert never inhibits the alerts of its own rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Inhibition {
    /// The inhibiting rule: a name, or a pattern with `*`.
    pub source: String,
    /// The inhibited rules: names or patterns with `*`.
    pub targets: Vec<String>,
    /// Only alerts of the source alert's own device are held back (default).
    pub same_device: bool,
}

impl Inhibition {
    /// Whether a firing alert of `source_rule` on `source_key` inhibits the alert of `rule`
    /// on `key`.
    pub fn inhibits(&self, source_rule: &str, source_key: &str, rule: &str, key: &str) -> bool {
        source_rule != rule
            && glob_match(&self.source, source_rule)
            && self.targets.iter().any(|target| glob_match(target, rule))
            && (!self.same_device || source_key == key)
    }
}

/// A notifier as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NotifierStatus {
    /// Its name.
    pub name: String,
    /// `webhook`, `mqtt` or `email`.
    pub kind: String,
    /// Where it sends: a webhook's scheme, host and port (its path and query may hold a
    /// secret), a topic template, or recipients and mail server.
    pub target: String,
    /// Its route: only alerts of these severities (empty: all).
    pub severities: Vec<String>,
    /// ... of rules matching these patterns (empty: all).
    pub rules: Vec<String>,
    /// ... on devices matching these patterns (empty: all).
    pub devices: Vec<String>,
    /// Notifications waiting in the outbox for it.
    pub queued: u64,
    /// Of them, those that failed at least once and wait for a retry.
    pub retrying: u64,
    /// When the next waiting one is due (RFC 3339).
    pub next_attempt_at: Option<String>,
    /// Why a waiting one last failed, else the last failure since the process started.
    pub last_error: Option<String>,
    /// Its last successful delivery since the process started (RFC 3339).
    pub last_delivered_at: Option<String>,
    /// Its last failed attempt since the process started (RFC 3339).
    pub last_failed_at: Option<String>,
}

/// Matches alerts by rule and key: absent matches any, and a `*` in either matches any run of
/// characters (`pump-*` silences every pump, `*` everything).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Silence {
    /// Assigned id.
    pub id: String,
    /// Rule name, or `None` for any.
    pub rule: Option<String>,
    /// Key (device), or `None` for any.
    pub key: Option<String>,
    /// Active from (RFC 3339), for a silence scheduled ahead, such as a maintenance window;
    /// absent: from its creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Active until (RFC 3339).
    pub until: String,
    /// Who created it.
    pub by: String,
    /// Why.
    pub comment: Option<String>,
    /// Who ended it before its time (`until` is then when), for the shift log; absent for a
    /// silence that ran its course or is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
}

impl Silence {
    /// Whether it silences `rule`/`key` at `now_ns` (`until_ns` is its end).
    pub fn matches(&self, rule: &str, key: &str, now_ns: i64, until_ns: i64) -> bool {
        now_ns < until_ns
            && self.started(now_ns)
            && self.rule.as_deref().is_none_or(|r| glob_match(r, rule))
            && self.key.as_deref().is_none_or(|k| glob_match(k, key))
    }
}

impl Silence {
    /// Whether it has begun at `now_ns` (a scheduled one waits for its `from`).
    pub fn started(&self, now_ns: i64) -> bool {
        self.from
            .as_deref()
            .and_then(parse_rfc3339)
            .is_none_or(|from| now_ns >= from)
    }
}

/// Whether `text` matches `pattern`, in which `*` stands for any run of characters (also
/// none) and every other character for itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), text.chars().collect());
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it has absorbed up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            // Let the last `*` absorb one more character and retry after it.
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// RFC 3339 to the nanosecond, UTC.
pub fn rfc3339_ns(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Parses RFC 3339 into ns.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_patterns_match_runs_of_characters() {
        for (pattern, text) in [
            ("pump-*", "pump-07"),
            ("pump-*", "pump-"),
            ("*", ""),
            ("*", "anything"),
            ("*-07", "pump-07"),
            ("line-2/*/bearing*", "line-2/pump-07/bearing-temp"),
            ("a*b*c", "aXbYbZc"),
            ("exact", "exact"),
        ] {
            assert!(glob_match(pattern, text), "{pattern} ~ {text}");
        }
        for (pattern, text) in [
            ("pump-*", "motor-01"),
            ("pump-*", "pump"),
            ("*-07", "pump-08"),
            ("a*b*c", "aXbYbZ"),
            ("exact", "exactly"),
            ("", "x"),
        ] {
            assert!(!glob_match(pattern, text), "{pattern} !~ {text}");
        }
    }

    #[test]
    fn a_silence_matches_rule_and_device_patterns_until_it_ends() {
        let silence = Silence {
            id: "s-1".into(),
            rule: None,
            key: Some("pump-*".into()),
            from: None,
            until: String::new(),
            by: "ana".into(),
            comment: None,
            ended_by: None,
        };
        assert!(silence.matches("pressure", "pump-07", 5, 10));
        assert!(!silence.matches("pressure", "motor-01", 5, 10));
        assert!(!silence.matches("pressure", "pump-07", 10, 10), "ended");
        let rule_only = Silence {
            rule: Some("vibration-*".into()),
            key: None,
            ..silence.clone()
        };
        assert!(rule_only.matches("vibration-high", "motor-01", 0, 1));
        assert!(!rule_only.matches("pressure-low", "pump-07", 0, 1));
        // Scheduled ahead: nothing until it begins.
        const MS: i64 = 1_000_000;
        let window = Silence {
            from: Some(rfc3339(7 * MS)),
            ..silence
        };
        assert!(
            !window.matches("pressure", "pump-07", 5 * MS, 10 * MS),
            "not begun"
        );
        assert!(window.matches("pressure", "pump-07", 7 * MS, 10 * MS));
    }

    #[test]
    fn an_inhibition_holds_back_its_targets_on_the_source_device_only() {
        let inhibition = Inhibition {
            source: "pump-silent".into(),
            targets: vec!["pump-*".into(), "pressure-frozen".into()],
            same_device: true,
        };
        assert!(inhibition.inhibits("pump-silent", "pump-01", "pump-anomaly", "pump-01"));
        assert!(inhibition.inhibits("pump-silent", "pump-01", "pressure-frozen", "pump-01"));
        assert!(!inhibition.inhibits("pump-silent", "pump-01", "pump-anomaly", "pump-02"));
        assert!(!inhibition.inhibits("pump-silent", "pump-01", "motor-hot", "pump-01"));
        assert!(
            !inhibition.inhibits("pump-silent", "pump-01", "pump-silent", "pump-01"),
            "never its own rule, though `pump-*` matches it"
        );
        assert!(!inhibition.inhibits("chiller-silent", "pump-01", "pump-anomaly", "pump-01"));
        let plant_wide = Inhibition {
            same_device: false,
            ..inhibition
        };
        assert!(plant_wide.inhibits("pump-silent", "pump-01", "pump-anomaly", "pump-02"));
    }
}
