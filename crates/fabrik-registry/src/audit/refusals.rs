//! Refusals held back from the audit log: past ten per actor and kind (sign-ins, other
//! requests) in ten minutes they are counted, and recorded as one entry when the ten minutes
//! are over.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::AuditEvent;

/// Refusals recorded one by one per actor and kind in [`REFUSAL_WINDOW`]; the rest are
/// counted and recorded as one entry when the window ends. Refusals cost the client nothing
/// (a locked name, a wrong token, a missing role), so without this one client could grow the
/// log as fast as it can send. The kind is coarse on purpose: keyed by method and route, one
/// viewer could open a window per route and method.
const REFUSALS_PER_WINDOW: u32 = 10;
const REFUSAL_WINDOW: Duration = Duration::from_secs(600);
/// Actors and actions tracked at once; past this, windows with nothing held back are dropped.
const MAX_REFUSAL_WINDOWS: usize = 10_000;

/// Refusals per actor and kind, in memory (a restart records the next ten again).
#[derive(Default)]
pub(super) struct RefusalWindows {
    by_key: HashMap<(String, &'static str), RefusalWindow>,
    /// The soonest a window with refusals held back ends.
    next_due: Option<Instant>,
}

struct RefusalWindow {
    opened: Instant,
    recorded: u32,
    held_back: u64,
    first_held_back: i64,
    last_held_back: i64,
    last_status: u16,
    last_action: String,
    target: String,
}

/// What a refusal is, for its window: a sign-in, or any other request.
fn kind(event: &AuditEvent) -> &'static str {
    if event.action == "sign-in" {
        "sign-in"
    } else {
        "request"
    }
}

impl RefusalWindows {
    /// Whether to record this refusal now; when not, it is counted in its window.
    pub(super) fn admit(&mut self, event: &AuditEvent, now: Instant, now_ns: i64) -> bool {
        if self.by_key.len() >= MAX_REFUSAL_WINDOWS {
            self.by_key.retain(|_, w| w.held_back > 0);
        }
        let key = (event.actor.clone(), kind(event));
        let window = self.by_key.entry(key).or_insert_with(|| RefusalWindow {
            opened: now,
            recorded: 0,
            held_back: 0,
            first_held_back: 0,
            last_held_back: 0,
            last_status: 0,
            last_action: String::new(),
            target: String::new(),
        });
        if now.duration_since(window.opened) >= REFUSAL_WINDOW && window.held_back == 0 {
            window.opened = now;
            window.recorded = 0;
        }
        if window.recorded < REFUSALS_PER_WINDOW {
            window.recorded += 1;
            return true;
        }
        if window.held_back == 0 {
            window.first_held_back = now_ns;
            let due = window.opened + REFUSAL_WINDOW;
            self.next_due = Some(self.next_due.map_or(due, |d| d.min(due)));
        }
        window.held_back += 1;
        window.last_held_back = now_ns;
        window.last_status = event.status;
        window.last_action.clone_from(&event.action);
        window.target.clone_from(&event.target);
        false
    }

    /// Drops the windows of `actor` (an erased person): what they held back is not recorded.
    pub(super) fn forget(&mut self, actor: &str) {
        self.by_key.retain(|(held_by, _), _| held_by != actor);
    }

    /// One entry for each window that has ended with refusals held back; with `all`, also for
    /// those still open (at shutdown).
    pub(super) fn due(&mut self, now: Instant, all: bool) -> Vec<AuditEvent> {
        if !all && self.next_due.is_none_or(|due| now < due) {
            return Vec::new();
        }
        let mut summaries = Vec::new();
        let mut next_due: Option<Instant> = None;
        self.by_key.retain(|(actor, kind), window| {
            let ends = window.opened + REFUSAL_WINDOW;
            if window.held_back == 0 {
                return now < ends;
            }
            if now < ends && !all {
                next_due = Some(next_due.map_or(ends, |d| d.min(ends)));
                return true;
            }
            let time = |ns: i64| {
                chrono::DateTime::from_timestamp_nanos(ns)
                    .format("%Y-%m-%dT%H:%M:%SZ")
                    .to_string()
            };
            summaries.push(AuditEvent {
                actor: actor.clone(),
                action: format!("{kind} refusals not recorded one by one"),
                target: format!(
                    "{} more from {} to {}, the last {} {}",
                    window.held_back,
                    time(window.first_held_back),
                    time(window.last_held_back),
                    window.last_action,
                    window.target
                ),
                status: window.last_status,
            });
            false
        });
        self.next_due = next_due;
        summaries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_past_ten_are_held_back_and_summed_when_the_window_ends() {
        let mut windows = RefusalWindows::default();
        let start = Instant::now();
        let refusal = |actor: &str| AuditEvent {
            actor: actor.into(),
            action: "sign-in".into(),
            target: "/api/v1/session".into(),
            status: 429,
        };
        let admitted = (0..25)
            .filter(|n| windows.admit(&refusal("unknown user"), start, 1_000 + n))
            .count();
        assert_eq!(admitted, 10);
        // Another actor has a window of its own.
        assert!(windows.admit(&refusal("ops"), start, 2_000));
        assert!(windows.due(start + REFUSAL_WINDOW / 2, false).is_empty());
        let due = windows.due(start + REFUSAL_WINDOW, false);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].actor, "unknown user");
        assert!(due[0].action.contains("not recorded one by one"));
        assert!(due[0].target.starts_with("15 more from"), "{:?}", due[0]);
        assert!(windows.due(start + REFUSAL_WINDOW * 2, false).is_empty());
        // A new window records again.
        assert!(windows.admit(&refusal("unknown user"), start + REFUSAL_WINDOW * 2, 3_000));
    }
}
