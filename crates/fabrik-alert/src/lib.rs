//! Fabrik's alerting: rules over samples and inferences, the pending → firing → resolved
//! lifecycle, silences, acknowledgements with true/false-positive feedback, and notifications
//! delivered from a persistent outbox.
//!
//! - [`engine`]: the pure lifecycle (hysteresis, `for`, rate of change, absence);
//! - [`model`]: alerts, acknowledgements, silences as the API shows them;
//! - [`db`]: their persistence (SQLite, or PostgreSQL with the registry) and the outbox;
//! - [`notify`]: notifiers (Alertmanager-compatible webhook, MQTT, e-mail) and delivery with
//!   backoff;
//! - [`smtp`]: the SMTP submission client the e-mail notifier uses;
//! - `tls`: the CAs the e-mail and webhook notifiers trust.
//!
//! [`Alerting`] ties them together. Evaluating rules against data (which rows, how often) is
//! the caller's job: it feeds [`Alerting::observe`] and [`Alerting::tick`].

pub mod copy;
pub mod db;
pub mod engine;
mod error;
pub mod model;
pub mod notify;
pub mod smtp;
#[cfg(test)]
mod test_database;
mod tls;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

pub use db::{AlertDb, Batch, StillFiring, Store};

/// What a notification made from an earlier read of its alert needs to still hold when it is
/// queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guard {
    /// Nothing: a transition just recorded in the same batch.
    Always,
    /// The alert still fires with the severity read (a firing a silence's end releases, a
    /// relabelled one).
    WhileFiring,
    /// That, and nobody has acknowledged it (a reminder).
    WhileUnacknowledged,
}

/// Where an alert rule's evaluator has read its table up to, saved with the changes the rows
/// caused ([`Alerting::observe_up_to`]).
#[derive(Debug, Clone, Copy)]
pub struct ReadPosition<'a> {
    /// The rule.
    pub rule: &'a str,
    /// What it watches (its definition's signature): a position is resumed only by a rule
    /// that watches the same.
    pub watches: &'a str,
    /// The arrival id read up to (`None`: nothing read yet).
    pub read_after: Option<i64>,
}
pub use engine::{
    AlertState, Condition, ErrorRateMethod, Observation, Rule, RuleAction, RuleEngine, Transition,
};
pub use error::AlertError;
pub use model::{
    Ack, Alert, AppliedAction, Feedback, Inhibition, NotifierStatus, ProposedAction, Silence,
};
pub use notify::{Notifier, Publish, PublishFuture, Publisher};

/// What one pass of the outbox worker reads once and its steps share: the time, the
/// silences, and the open alerts (as they were at its start; each step's writes check the
/// alert's state again where it matters).
#[derive(Clone)]
struct PassView {
    now: i64,
    silences: Vec<Silence>,
    open: Vec<Alert>,
    inhibitions: Arc<[Inhibition]>,
}

impl PassView {
    fn suppression(&self) -> Suppression<'_> {
        Suppression::new(&self.silences, &self.inhibitions, &self.open)
    }
}

/// What holds an alert's notifications back: the silences in force, and the inhibitions of
/// the alerts that fire.
struct Suppression<'a> {
    silences: &'a [Silence],
    inhibitions: &'a [Inhibition],
    /// Rule, key and id of each firing alert (none when there is no inhibition).
    firing: Vec<(&'a str, &'a str, &'a str)>,
}

impl<'a> Suppression<'a> {
    fn new(silences: &'a [Silence], inhibitions: &'a [Inhibition], open: &'a [Alert]) -> Self {
        let firing = if inhibitions.is_empty() {
            Vec::new()
        } else {
            open.iter()
                .filter(|alert| alert.state == AlertState::Firing)
                .map(|alert| (alert.rule.as_str(), alert.key.as_str(), alert.id.as_str()))
                .collect()
        };
        Self {
            silences,
            inhibitions,
            firing,
        }
    }

    /// The id of a firing alert that inhibits `rule`/`key`, if one does. Two alerts that
    /// would inhibit each other (`a` inhibits `b` and `b` inhibits `a`, or `pump-*` both ways)
    /// inhibit neither: held back by each other, neither would ever be notified.
    fn inhibitor(&self, rule: &str, key: &str) -> Option<&'a str> {
        let inhibits = |source_rule: &str, source_key: &str, rule: &str, key: &str| {
            self.inhibitions
                .iter()
                .any(|i| i.inhibits(source_rule, source_key, rule, key))
        };
        self.firing
            .iter()
            .find(|(source_rule, source_key, _)| {
                inhibits(source_rule, source_key, rule, key)
                    && !inhibits(rule, key, source_rule, source_key)
            })
            .map(|&(_, _, id)| id)
    }

    /// Whether `rule`/`key`'s notifications are held back at `now_ns`.
    fn holds_back(&self, rule: &str, key: &str, now_ns: i64) -> bool {
        is_silenced(self.silences, rule, key, now_ns) || self.inhibitor(rule, key).is_some()
    }
}

/// Alerting state of a process.
pub struct Alerting {
    db: AlertDb,
    engines: Mutex<BTreeMap<String, RuleEngine>>,
    notifiers: Vec<Notifier>,
    external_url: String,
    wake: tokio::sync::Notify,
    /// The (rule, severity) series of `fabrik_alerts_firing` exported by the last pass.
    exported_firing: Mutex<std::collections::BTreeSet<(String, String)>>,
    /// See [`Inhibition`]; set by [`Alerting::set_inhibitions`].
    inhibitions: Mutex<Arc<[Inhibition]>>,
    /// Per notifier, its last delivery and last failure since this process started.
    deliveries: Mutex<BTreeMap<String, DeliveryRecord>>,
    /// How long a resolved alert is kept after its last change (`None`: for ever).
    retention: Mutex<Option<std::time::Duration>>,
}

/// A notifier's last delivery and last failure (this process's).
#[derive(Debug, Clone, Default)]
struct DeliveryRecord {
    delivered_ns: Option<i64>,
    failed_ns: Option<i64>,
    error: Option<String>,
}

impl std::fmt::Debug for Alerting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerting")
            .field("notifiers", &self.notifiers)
            .finish()
    }
}

/// `rule~key~start_ns`: readable, stable across restarts, and safe in a URL path segment.
pub fn alert_id(rule: &str, key: &str, started_ns: i64) -> String {
    let clean = |s: &str| s.replace(['~', '/', '?', '#', '%'], "_");
    format!("{}~{}~{started_ns}", clean(rule), clean(key))
}

/// When `alert` started, to the nanosecond: from its id, which [`alert_id`] made from the
/// exact time. `started_at` is shown to the millisecond, and a restored alert started at
/// that rounded time would resolve under another id while the original stayed firing.
fn started_ns(alert: &Alert) -> i64 {
    alert
        .id
        .rsplit_once('~')
        .and_then(|(_, ns)| ns.parse().ok())
        .or_else(|| model::parse_rfc3339(&alert.started_at))
        .unwrap_or(0)
}

/// Whether any of `silences` silences `rule`/`key` at `now_ns`.
fn is_silenced(silences: &[Silence], rule: &str, key: &str, now_ns: i64) -> bool {
    silences.iter().any(|s| {
        let until = model::parse_rfc3339(&s.until).unwrap_or(i64::MIN);
        s.matches(rule, key, now_ns, until)
    })
}

/// How long a delivery task works from what it read of the silences and open alerts.
const VIEW_FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest silence: a year and a day.
const MAX_SILENCE: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);
/// The annotation that says why an alert was resolved when no row cleared it.
const RESOLUTION_ANNOTATION: &str = "resolution";
/// How often resolved alerts past the retention are deleted.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// How long an ended silence stays listed as a record (`fabrik alert silences --all`).
const ENDED_SILENCES_KEPT_NS: i64 = 30 * 24 * 3600 * 1_000_000_000;

fn now_ns() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_nanos()).unwrap_or(i64::MAX)
}

impl Alerting {
    /// Opens the SQLite file at `path` and restores the lifecycle of alerts that were pending
    /// or firing when the process stopped.
    pub async fn open(
        path: &Path,
        rules: Vec<Rule>,
        notifiers: Vec<Notifier>,
        external_url: String,
    ) -> Result<Arc<Self>, AlertError> {
        let db = AlertDb::open(path).await?;
        Self::with_db(db, rules, notifiers, external_url).await
    }

    /// [`Self::open`] on the database at `store`.
    pub async fn open_at(
        store: &Store,
        rules: Vec<Rule>,
        notifiers: Vec<Notifier>,
        external_url: String,
    ) -> Result<Arc<Self>, AlertError> {
        let db = AlertDb::open_at(store).await?;
        Self::with_db(db, rules, notifiers, external_url).await
    }

    async fn with_db(
        db: AlertDb,
        rules: Vec<Rule>,
        notifiers: Vec<Notifier>,
        external_url: String,
    ) -> Result<Arc<Self>, AlertError> {
        let mut engines: BTreeMap<String, RuleEngine> = rules
            .into_iter()
            .map(|r| (r.name.clone(), RuleEngine::new(r)))
            .collect();
        let mut orphans = Vec::new();
        for alert in db.open_alerts().await? {
            match engines.get_mut(&alert.rule) {
                Some(engine) if alert.state == AlertState::Firing => {
                    engine.restore_firing(&alert.key, started_ns(&alert));
                }
                // A pending alert keeps counting its `for` from when its condition began to
                // hold: a device that reports only on change sends no fresh row to start it
                // again, and its alarm would be lost with the restart. Its evaluator drops it
                // ([`Self::drop_pending`]) unless it reads on from where it stopped.
                Some(engine) if engine.restores_pending() => {
                    engine.restore(&alert.key, started_ns(&alert), false);
                }
                Some(_) => db.delete(&alert.id).await?,
                // A rule that no longer exists cannot resolve its alerts: they are resolved
                // now, and the receivers of firing ones told, as when a rule is removed.
                None => orphans.push(alert),
            }
        }
        let alerting = Arc::new(Self {
            db,
            engines: Mutex::new(engines),
            notifiers,
            external_url,
            wake: tokio::sync::Notify::new(),
            exported_firing: Mutex::default(),
            inhibitions: Mutex::new(Arc::from(Vec::new())),
            deliveries: Mutex::default(),
            retention: Mutex::new(None),
        });
        for alert in &orphans {
            alerting
                .close(
                    std::slice::from_ref(alert),
                    &alert.severity,
                    "its rule no longer exists; the condition was not seen to clear",
                )
                .await?;
        }
        let rules = alerting.rules();
        alerting.db.keep_positions_of(&rules).await?;
        // A rule whose severity changed in the configuration file while Fabrik was down
        // relabels its open alerts as a change through the API does.
        for rule in &rules {
            alerting.refresh_open_alerts(rule, &[]).await?;
        }
        alerting.reconcile_notifiers().await?;
        Ok(alerting)
    }

    /// Brings the outbox in line with the configured notifiers, at start. Notifications that
    /// failed are due at once: the restart may have fixed their notifier's configuration.
    /// Notifications queued for a notifier no longer configured are dropped: they were
    /// retried for ever, and a renamed notifier never received them (a review). Each firing alert that is
    /// neither acknowledged nor held back is queued for every configured notifier whose
    /// route takes it and that has neither told of it nor has it queued: a notifier added or
    /// renamed while alerts fire learnt of none of them, and then got only their resolutions.
    async fn reconcile_notifiers(&self) -> Result<(), AlertError> {
        let configured: Vec<&str> = self.notifiers.iter().map(Notifier::name).collect();
        let now = now_ns();
        for (notifier, dropped) in self.db.drop_queued_for_unconfigured(&configured).await? {
            tracing::warn!(
                notifier = %notifier,
                dropped = dropped.len(),
                "Notifications queued for a notifier that is no longer configured were dropped; \
                 the configured notifiers whose routes take their alerts are told of the ones \
                 still firing and of the resolutions."
            );
            // A renamed notifier's receiver still holds the incident open: its resolution
            // goes to the configured notifiers whose routes take the alert.
            for entry in &dropped {
                let Some(alert_id) = &entry.alert_id else {
                    continue;
                };
                let alert = match self.db.get(alert_id).await {
                    Ok(alert) if alert.state == AlertState::Resolved => alert,
                    Ok(_) | Err(AlertError::NotFound { .. }) => continue,
                    Err(e) => return Err(e),
                };
                let waiting = self.db.queued_for(alert_id).await?;
                let mut batch = self.db.batch().await?;
                for notifier in &self.notifiers {
                    if notifier.route().takes(&alert)
                        && !waiting.iter().any(|w| w == notifier.name())
                    {
                        self.enqueue_for(&mut batch, notifier, &alert, now, Guard::Always)
                            .await?;
                    }
                }
                batch.commit().await?;
            }
        }
        let retried = self.db.retry_failed_now(now).await?;
        if retried > 0 {
            tracing::info!(
                retried,
                "Notifications that failed before the start are retried now."
            );
        }
        let mut queued = 0_u64;
        for alert in self.db.open_alerts().await? {
            if alert.state != AlertState::Firing || alert.ack.is_some() || alert.silenced {
                continue;
            }
            let told = self.db.notified_by(&alert.id).await?;
            let waiting = self.db.queued_for(&alert.id).await?;
            let untold: Vec<&Notifier> = self
                .notifiers
                .iter()
                .filter(|n| {
                    n.route().takes(&alert)
                        && !told.iter().any(|t| t == n.name())
                        && !waiting.iter().any(|w| w == n.name())
                })
                .collect();
            if untold.is_empty() {
                continue;
            }
            let mut batch = self.db.batch().await?;
            for notifier in untold {
                if self
                    .enqueue_for(&mut batch, notifier, &alert, now, Guard::WhileFiring)
                    .await?
                {
                    queued += 1;
                }
            }
            batch.commit().await?;
        }
        if queued > 0 {
            tracing::info!(
                queued,
                "Firing alerts queued for notifiers that had not been told of them (added or \
                 renamed since they fired)."
            );
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Sets the inhibitions (see [`Inhibition`]). A source or target named without a `*`
    /// must be one of the `known` rule names: a misspelt one would hold nothing back while
    /// the operator believes the consequences of a fault quiet.
    pub fn set_inhibitions(
        &self,
        inhibitions: Vec<Inhibition>,
        known: &[String],
    ) -> Result<(), AlertError> {
        for (index, inhibition) in inhibitions.iter().enumerate() {
            let invalid = |what: String| {
                AlertError::Invalid(format!("alerting.inhibitions[{index}]: {what}"))
            };
            if inhibition.targets.is_empty() {
                return Err(invalid("`targets` names no rule".into()));
            }
            let names = std::iter::once(("source", &inhibition.source))
                .chain(inhibition.targets.iter().map(|t| ("targets", t)));
            for (field, name) in names {
                if name.trim().is_empty() {
                    return Err(invalid(format!("`{field}` has an empty rule name")));
                }
                if !name.contains('*') && !known.iter().any(|known| known == name) {
                    return Err(invalid(format!(
                        "`{field}`: no alert rule is named `{name}` (rules: {})",
                        known.join(", ")
                    )));
                }
            }
        }
        *self.inhibitions.lock() = Arc::from(inhibitions);
        self.wake.notify_one();
        Ok(())
    }

    /// Each notifier as an operator needs to see it: where it sends, what it is told of,
    /// what waits in the outbox for it, and how its last deliveries went.
    pub async fn notifier_statuses(&self) -> Result<Vec<model::NotifierStatus>, AlertError> {
        let queued = self.db.outbox_by_notifier().await?;
        let deliveries = self.deliveries.lock().clone();
        Ok(self
            .notifiers
            .iter()
            .map(|notifier| {
                let waiting = queued.get(notifier.name()).cloned().unwrap_or_default();
                let record = deliveries.get(notifier.name()).cloned().unwrap_or_default();
                let route = notifier.route();
                model::NotifierStatus {
                    name: notifier.name().to_owned(),
                    kind: notifier.kind().to_owned(),
                    target: notifier.target(),
                    severities: route.severities.clone(),
                    rules: route.rules.clone(),
                    devices: route.devices.clone(),
                    queued: waiting.queued,
                    retrying: waiting.retrying,
                    next_attempt_at: waiting.next_attempt_ns.map(model::rfc3339),
                    last_error: waiting.last_error.or(record.error.clone()),
                    last_delivered_at: record.delivered_ns.map(model::rfc3339),
                    last_failed_at: record.failed_ns.map(model::rfc3339),
                }
            })
            .collect())
    }

    /// Keeps resolved alerts `retention` after their last change (`None`: for ever); the
    /// outbox worker deletes older ones.
    pub fn set_retention(&self, retention: Option<std::time::Duration>) {
        *self.retention.lock() = retention;
    }

    /// Deletes the resolved alerts unchanged for longer than the retention; returns how many.
    pub async fn forget_old_alerts(&self) -> Result<u64, AlertError> {
        let Some(retention) = *self.retention.lock() else {
            return Ok(0);
        };
        let keep = i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX);
        self.db
            .forget_resolved_before(now_ns().saturating_sub(keep))
            .await
    }

    /// The inhibitions in force.
    pub fn inhibitions(&self) -> Vec<Inhibition> {
        self.inhibitions.lock().to_vec()
    }

    /// The index of the first inhibition that names rule `name` itself (not by a pattern).
    pub fn inhibition_naming(&self, name: &str) -> Option<usize> {
        self.inhibitions
            .lock()
            .iter()
            .position(|i| i.source == name || i.targets.iter().any(|target| target == name))
    }

    /// Fills in `inhibited_by` of the open ones among `alerts`: the firing alert that holds
    /// each back now.
    pub async fn explain_inhibited(&self, alerts: &mut [Alert]) -> Result<(), AlertError> {
        let inhibitions = self.inhibitions.lock().clone();
        if inhibitions.is_empty() || alerts.iter().all(|a| a.state == AlertState::Resolved) {
            return Ok(());
        }
        let open = self.db.open_alerts().await?;
        let suppression = Suppression::new(&[], &inhibitions, &open);
        for alert in alerts {
            if alert.state != AlertState::Resolved {
                alert.inhibited_by = suppression
                    .inhibitor(&alert.rule, &alert.key)
                    .map(str::to_owned);
            }
        }
        Ok(())
    }

    /// Fills in `action` of `alerts` from their rules' proposals (decision 0092).
    pub fn fill_actions(&self, alerts: &mut [Alert]) {
        let engines = self.engines.lock();
        for alert in alerts {
            alert.action = engines
                .get(&alert.rule)
                .and_then(|e| e.rule().action.as_ref())
                .map(|a| ProposedAction {
                    device: a.device.clone().unwrap_or_else(|| alert.key.clone()),
                    signal: a.signal.clone(),
                    value: a.value.clone(),
                    summary: a.summary.clone(),
                });
        }
    }

    /// The rules, in name order.
    pub fn rules(&self) -> Vec<Rule> {
        self.engines
            .lock()
            .values()
            .map(|e| e.rule().clone())
            .collect()
    }

    /// Starts rule `name` afresh: its open alerts resolve (receivers of firing ones told)
    /// and its per-key state is forgotten. For a rule whose definition changed what it
    /// watches while Fabrik was down: its old alerts would otherwise stay open for ever, as
    /// no row of theirs is read again.
    pub async fn start_afresh(&self, name: &str) -> Result<(), AlertError> {
        let Some(rule) = self.engines.lock().get(name).map(|e| e.rule().clone()) else {
            return Ok(());
        };
        let open: Vec<Alert> = self
            .db
            .open_alerts()
            .await?
            .into_iter()
            .filter(|alert| alert.rule == name)
            .collect();
        self.close(
            &open,
            &rule.severity,
            "its rule was redefined to watch something else; the condition was not seen to clear",
        )
        .await?;
        if let Some(engine) = self.engines.lock().get_mut(name) {
            *engine = RuleEngine::new(rule);
        }
        Ok(())
    }

    /// Drops rule `name`'s pending alerts (their `for` starts again from fresh rows): its
    /// evaluator calls this when it does not read on from where it stopped, so a pending
    /// alert restored from the database would otherwise fire on a clock that has not seen the
    /// rows in between.
    pub async fn drop_pending(&self, name: &str) -> Result<(), AlertError> {
        for alert in self.db.open_alerts().await? {
            if alert.rule == name && alert.state == AlertState::Pending {
                self.db.delete(&alert.id).await?;
            }
        }
        if let Some(engine) = self.engines.lock().get_mut(name) {
            engine.forget_pending();
        }
        Ok(())
    }

    /// Adds `rule`, or replaces the rule of its name. With `carry_over` (the caller found
    /// that the new definition watches the same values: table, key, filter, value,
    /// condition) the rule keeps its state: open alerts — firing ones stay firing, pending
    /// ones keep counting their `for` —, last values and times; its open alerts take the new
    /// severity, and its next observations decide under the new levels. If it has no engine
    /// (its stored definition did not load) the open alerts are restored from the database,
    /// as after a restart. Without `carry_over` it starts afresh; the caller resolves the old
    /// alerts first ([`Self::remove_rule`]). The caller stops the rule's evaluation first, so
    /// no observation of the old definition lands after this.
    ///
    /// The rule is in place even on an error (the database could not be read or written);
    /// open alerts it did not learn of stay open until the rule's next restart restores them.
    pub async fn define_rule(&self, rule: Rule, carry_over: bool) -> Result<(), AlertError> {
        let name = rule.name.clone();
        let kept = if carry_over {
            self.engines.lock().get_mut(&name).map(|engine| {
                let old_templates: Vec<String> =
                    engine.rule().annotations.keys().cloned().collect();
                engine.set_rule(rule.clone());
                old_templates
            })
        } else {
            None
        };
        if let Some(old_templates) = kept {
            return self.refresh_open_alerts(&rule, &old_templates).await;
        }
        let new_rule = rule.clone();
        let mut engine = RuleEngine::new(rule);
        let open = if carry_over {
            self.db.open_alerts().await.map(|alerts| {
                alerts
                    .into_iter()
                    .filter(|alert| alert.rule == name)
                    .collect::<Vec<_>>()
            })
        } else {
            Ok(Vec::new())
        };
        if let Ok(open) = &open {
            for alert in open {
                engine.restore(
                    &alert.key,
                    started_ns(alert),
                    alert.state == AlertState::Firing,
                );
            }
        }
        self.engines.lock().insert(name.clone(), engine);
        if carry_over {
            open?;
            return self.refresh_open_alerts(&new_rule, &[]).await;
        }
        Ok(())
    }

    /// Brings `rule`'s open alerts in line with its new definition: its severity, and its
    /// annotations rendered again (those of `old_templates` that it no longer has dropped).
    /// The severity is a label, so a firing alert whose severity changes is, to receivers,
    /// one label set resolving and another firing: those told of the old one hear it
    /// resolved, and every notifier whose route takes the new one hears it fire (the on-call
    /// is paged when a warning becomes critical).
    async fn refresh_open_alerts(
        &self,
        rule: &Rule,
        old_templates: &[String],
    ) -> Result<(), AlertError> {
        let now = now_ns();
        let mut queued = false;
        let open = self.db.open_alerts().await?;
        let mut batch = self.db.batch().await?;
        for mut alert in open {
            if alert.rule != rule.name {
                continue;
            }
            let severity_changed = alert.severity != rule.severity;
            let old_severity = alert.severity.clone();
            let mut annotations = alert.annotations.clone();
            for name in old_templates {
                annotations.remove(name);
            }
            let fields = annotations.clone();
            alert.severity.clone_from(&rule.severity);
            for (name, template) in &rule.annotations {
                let text = notify::render_annotation(template, &alert, &fields);
                annotations.insert(name.clone(), text);
            }
            if !severity_changed && annotations == alert.annotations {
                continue;
            }
            // The severity is a label: for the receivers told of the alert, its old label set
            // resolves (an MQTT topic with the severity in it is cleared, a webhook incident
            // keyed by labels closes), and the new one fires, for every route that takes it.
            let mut old_labels = None;
            if severity_changed && alert.state == AlertState::Firing {
                // Only receivers that heard of the old label set hear it resolve; what is
                // still queued about it was never seen, and goes.
                let told = batch.notified_by(&alert.id).await?;
                let mut old = alert.clone();
                old.severity = old_severity.clone();
                old.state = AlertState::Resolved;
                old.resolved_at = Some(model::rfc3339(now));
                batch.drop_queued(&alert.id, &notify::series(&old)).await?;
                old_labels = Some((old, told));
            }
            batch
                .set_severity_and_annotations(&alert.id, &rule.severity, &annotations, now)
                .await?;
            alert.annotations = annotations;
            if let Some((old, told)) = old_labels {
                for notifier in &self.notifiers {
                    if told.iter().any(|name| name == notifier.name()) {
                        queued |= self
                            .enqueue_old_labels_resolved(&mut batch, notifier, &old, now)
                            .await?;
                    }
                }
                batch.forget_notified(&alert.id).await?;
                if !alert.silenced {
                    for notifier in &self.notifiers {
                        if notifier.route().takes(&alert) {
                            queued |= self
                                .enqueue_for(&mut batch, notifier, &alert, now, Guard::WhileFiring)
                                .await?;
                        }
                    }
                }
            }
        }
        batch.commit().await?;
        if queued {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Removes rule `name`: its firing alerts resolve now and their receivers are told, so no
    /// incident stays open for a rule that no longer exists; its pending alerts are dropped.
    /// Returns whether the rule existed. The caller stops its evaluation first. On an error
    /// the rule stays, so a later removal (or the next start) finishes the job.
    pub async fn remove_rule(&self, name: &str) -> Result<bool, AlertError> {
        let Some(severity) = self
            .engines
            .lock()
            .get(name)
            .map(|engine| engine.rule().severity.clone())
        else {
            return Ok(false);
        };
        let open: Vec<Alert> = self
            .db
            .open_alerts()
            .await?
            .into_iter()
            .filter(|alert| alert.rule == name)
            .collect();
        self.close(
            &open,
            &severity,
            "its rule was removed or redefined; the condition was not seen to clear",
        )
        .await?;
        self.db.forget_position(name).await?;
        self.engines.lock().remove(name);
        Ok(true)
    }

    /// Resolves `alerts` now, as their rule's last word: firing ones are notified, pending
    /// ones dropped (nobody was told of them).
    async fn close(&self, alerts: &[Alert], severity: &str, why: &str) -> Result<(), AlertError> {
        let now = now_ns();
        let transitions: Vec<Transition> = alerts
            .iter()
            .map(|alert| Transition {
                rule: alert.rule.clone(),
                key: alert.key.clone(),
                state: AlertState::Resolved,
                started_ns: started_ns(alert),
                at_ns: now,
                value: f64::NAN,
                context: BTreeMap::from([(RESOLUTION_ANNOTATION.to_owned(), why.to_owned())]),
            })
            .collect();
        self.apply(&transitions, severity, &BTreeMap::new()).await
    }

    /// Whether the device pattern `pattern` (`*`: any run of characters) matches a device the
    /// alerting knows: one a rule watches now, or one with an alert on record. A silence for
    /// any other matches nothing yet (a misspelt device?).
    pub async fn knows_key(&self, pattern: &str) -> Result<bool, AlertError> {
        if self
            .engines
            .lock()
            .values()
            .any(|e| e.watches_key_matching(pattern))
        {
            return Ok(true);
        }
        let query = db::AlertQuery {
            key: Some(pattern.to_owned()),
            ..db::AlertQuery::default()
        };
        Ok(!self.db.find(&query, 1).await?.is_empty())
    }

    /// The database (for listings).
    pub fn db(&self) -> &AlertDb {
        &self.db
    }

    /// Tells heartbeat rule `rule` when each key last reported before this process started
    /// (see [`RuleEngine::recall_last_seen`]).
    pub fn recall_last_seen(
        &self,
        rule: &str,
        last_seen: &[(String, i64, i64)],
    ) -> Result<(), AlertError> {
        let mut engines = self.engines.lock();
        let Some(engine) = engines.get_mut(rule) else {
            return Err(AlertError::NotFound {
                what: "rule",
                id: rule.to_owned(),
            });
        };
        for (key, time_ns, arrival_ns) in last_seen {
            engine.recall_last_seen(key, *time_ns, *arrival_ns);
        }
        Ok(())
    }

    /// Feeds observations of `rule`; records and notifies what changes.
    pub async fn observe(
        &self,
        rule: &str,
        observations: &[Observation],
    ) -> Result<Vec<Transition>, AlertError> {
        self.observe_read(rule, observations, None).await
    }

    /// [`Self::observe`] for rows read up to `position`, which is saved with the changes they
    /// cause: after a crash the rows are read again only if their changes were not recorded,
    /// so no episode is notified twice and none is lost.
    pub async fn observe_up_to(
        &self,
        rule: &str,
        observations: &[Observation],
        position: &ReadPosition<'_>,
    ) -> Result<Vec<Transition>, AlertError> {
        self.observe_read(rule, observations, Some(position)).await
    }

    async fn observe_read(
        &self,
        rule: &str,
        observations: &[Observation],
        position: Option<&ReadPosition<'_>>,
    ) -> Result<Vec<Transition>, AlertError> {
        let (transitions, undo, severity, annotations) = {
            let mut engines = self.engines.lock();
            let Some(engine) = engines.get_mut(rule) else {
                return Err(AlertError::NotFound {
                    what: "rule",
                    id: rule.to_owned(),
                });
            };
            let (transitions, undo) = engine.observe_undoable(observations);
            let rule = engine.rule();
            (
                transitions,
                undo,
                rule.severity.clone(),
                rule.annotations.clone(),
            )
        };
        if transitions.is_empty() {
            // Nothing to record with it: the evaluator saves where it read to.
            return Ok(transitions);
        }
        if let Err(e) = self
            .apply_and_save(&transitions, &severity, &annotations, position)
            .await
        {
            self.undo(rule, undo);
            return Err(e);
        }
        Ok(transitions)
    }

    /// Puts rule `rule`'s keys back as `undo` saved them: their transitions were not recorded.
    fn undo(&self, rule: &str, undo: engine::Undo) {
        if let Some(engine) = self.engines.lock().get_mut(rule) {
            engine.undo(undo);
        }
    }

    /// Advances the clocks of the rules named in `expected_keys` (pending → firing,
    /// absence); their values are the keys each rule expects to report now (for heartbeat
    /// rules; see [`RuleEngine::tick`]).
    pub async fn tick(
        &self,
        now_ns: i64,
        expected_keys: &BTreeMap<String, Vec<String>>,
    ) -> Result<Vec<Transition>, AlertError> {
        let per_rule: Vec<(Vec<Transition>, engine::Undo, Rule)> = {
            let mut engines = self.engines.lock();
            engines
                .iter_mut()
                .filter_map(|(name, engine)| {
                    let keys = expected_keys.get(name)?;
                    let (transitions, undo) = engine.tick_undoable(now_ns, keys);
                    (!transitions.is_empty()).then(|| (transitions, undo, engine.rule().clone()))
                })
                .collect()
        };
        let mut all = Vec::new();
        let mut failed = None;
        for (transitions, undo, rule) in per_rule {
            // Every rule's undo is needed once one fails: none of the later ones is applied.
            if failed.is_some() {
                self.undo(&rule.name, undo);
                continue;
            }
            match self
                .apply(&transitions, &rule.severity, &rule.annotations)
                .await
            {
                Ok(()) => all.extend(transitions),
                Err(e) => {
                    self.undo(&rule.name, undo);
                    failed = Some(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(all),
        }
    }

    /// Records `transitions` of a rule of `severity` whose annotation templates are
    /// `annotations`, and queues their notifications.
    async fn apply(
        &self,
        transitions: &[Transition],
        severity: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Result<(), AlertError> {
        self.apply_and_save(transitions, severity, annotations, None)
            .await
    }

    /// [`Self::apply`], saving the read `position` of the rows that caused `transitions` in
    /// the same batch: alert states, their notifications and the position land together.
    async fn apply_and_save(
        &self,
        transitions: &[Transition],
        severity: &str,
        annotations: &BTreeMap<String, String>,
        position: Option<&ReadPosition<'_>>,
    ) -> Result<(), AlertError> {
        if transitions.is_empty() {
            return Ok(());
        }
        let now = now_ns();
        let silences = self.db.silences().await?;
        let inhibitions = self.inhibitions.lock().clone();
        let open = if inhibitions.is_empty() {
            Vec::new()
        } else {
            self.db.open_alerts().await?
        };
        let suppression = Suppression::new(&silences, &inhibitions, &open);
        let mut batch = self.db.batch().await?;
        let mut queued = false;
        // Said (logged, counted) once the batch has committed: a batch that fails is made
        // again, and its firing must not be counted or logged twice.
        let mut said: Vec<(String, AlertState, bool)> = Vec::new();
        for t in transitions {
            let id = alert_id(&t.rule, &t.key, t.started_ns);
            let silenced = suppression.holds_back(&t.rule, &t.key, t.at_ns.max(now));
            let previous = match batch.get(&id).await {
                Ok(alert) => Some(alert),
                Err(AlertError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            };
            let mut alert = previous.clone().unwrap_or_else(|| Alert {
                id: id.clone(),
                rule: t.rule.clone(),
                key: t.key.clone(),
                severity: severity.to_owned(),
                state: t.state,
                started_at: model::rfc3339(t.started_ns),
                fired_at: None,
                resolved_at: None,
                value: None,
                annotations: BTreeMap::new(),
                ack: None,
                silenced,
                inhibited_by: None,
                action: None,
                applied: Vec::new(),
                updated_at: String::new(),
            });
            alert.state = t.state;
            alert.silenced = silenced;
            if t.state != AlertState::Resolved {
                // The same rule, key and start again (rows replayed by a redefined rule):
                // the alert is open again, not resolved.
                alert.resolved_at = None;
            }
            if t.value.is_finite() {
                alert.value = Some(t.value);
            }
            if t.state != AlertState::Resolved {
                if !t.context.is_empty() {
                    alert.annotations = t.context.clone();
                }
                // Rendered from this transition's value and the latest context (this
                // transition's, or the one before when it has none), so a summary names the
                // value that fired it; kept as they were at the resolution.
                let fields = alert.annotations.clone();
                for (name, template) in annotations {
                    let text = notify::render_annotation(template, &alert, &fields);
                    alert.annotations.insert(name.clone(), text);
                }
            }
            match t.state {
                AlertState::Pending => batch.upsert(&alert, now).await?,
                AlertState::Firing => {
                    alert.fired_at = Some(model::rfc3339(t.at_ns));
                    batch.upsert(&alert, now).await?;
                    said.push((alert.id.clone(), AlertState::Firing, silenced));
                    if !silenced {
                        queued |= self.enqueue(&mut batch, &alert, now).await?;
                    }
                }
                AlertState::Resolved => {
                    let was_firing = previous
                        .as_ref()
                        .is_some_and(|p| p.state == AlertState::Firing);
                    if !was_firing {
                        // Pending that cleared before its `for`: never an alert.
                        batch.delete(&id).await?;
                        continue;
                    }
                    // A receiver told of the firing hears of the resolution, silence or route
                    // (a rule's severity redefined) or not: otherwise its incident stays
                    // open. Outside a silence, one with the firing still queued counts as
                    // told (it will be); under a silence that queued firing is dropped at
                    // delivery, so only a delivered one counts. Read before the resolution is
                    // stored, after which the worker forgets who was told.
                    let mut told = batch.notified_by(&id).await?;
                    if !silenced {
                        told.extend(batch.queued_for(&id).await?);
                    }
                    // A clearing row that arrived late may be dated before the firing;
                    // the alert still never ends before it fired.
                    let fired_ns = alert.fired_at.as_deref().and_then(model::parse_rfc3339);
                    let resolved_ns = fired_ns.map_or(t.at_ns, |fired| t.at_ns.max(fired));
                    alert.resolved_at = Some(model::rfc3339(resolved_ns));
                    // Closed without its condition clearing (its rule removed or changed):
                    // receivers must not read it as a recovery.
                    if let Some(why) = t.context.get(RESOLUTION_ANNOTATION) {
                        alert
                            .annotations
                            .insert(RESOLUTION_ANNOTATION.to_owned(), why.clone());
                    }
                    batch.upsert(&alert, now).await?;
                    said.push((alert.id.clone(), AlertState::Resolved, silenced));
                    for notifier in &self.notifiers {
                        let was_told = told.iter().any(|name| name == notifier.name());
                        if was_told || (!silenced && notifier.route().takes(&alert)) {
                            queued |= self
                                .enqueue_for(&mut batch, notifier, &alert, now, Guard::Always)
                                .await?;
                        }
                    }
                }
            }
        }
        if let Some(position) = position {
            batch
                .save_position(position.rule, position.watches, position.read_after)
                .await?;
        }
        batch.commit().await?;
        for t in transitions {
            metrics::counter!(
                "fabrik_alert_transitions_total",
                "rule" => t.rule.clone(),
                "state" => t.state.as_str()
            )
            .increment(1);
        }
        for (id, state, silenced) in said {
            match state {
                AlertState::Firing => {
                    tracing::warn!(alert = %id, severity, silenced, "Alert firing.");
                }
                _ => tracing::info!(alert = %id, "Alert resolved."),
            }
        }
        if queued {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Queues `alert`'s state for every notifier whose route takes it; returns whether any
    /// did.
    async fn enqueue(
        &self,
        batch: &mut db::Batch,
        alert: &Alert,
        now: i64,
    ) -> Result<bool, AlertError> {
        let mut queued = false;
        for notifier in &self.notifiers {
            if notifier.route().takes(alert) {
                queued |= self
                    .enqueue_for(batch, notifier, alert, now, Guard::Always)
                    .await?;
            }
        }
        Ok(queued)
    }

    /// Queues `alert`'s state for one notifier, joining its group's open window if it groups.
    /// Under `guard` (see [`Guard`]) nothing is queued if the alert stopped firing, changed
    /// severity or (a reminder) was acknowledged meanwhile, in the same statement: its
    /// resolution, or its old label set's, must stay the last word. Returns whether it was
    /// queued.
    async fn enqueue_for(
        &self,
        batch: &mut db::Batch,
        notifier: &Notifier,
        alert: &Alert,
        now: i64,
        guard: Guard,
    ) -> Result<bool, AlertError> {
        self.queue(
            batch,
            notifier,
            alert,
            now,
            Some(&alert.id),
            match guard {
                Guard::Always => None,
                Guard::WhileFiring | Guard::WhileUnacknowledged => Some(db::StillFiring {
                    severity: alert.severity.as_str(),
                    unacknowledged: guard == Guard::WhileUnacknowledged,
                }),
            },
        )
        .await
    }

    /// Queues, for `notifier`, the resolution of the label set `alert` had before its rule's
    /// severity changed: receivers key incidents by labels, and the new ones are a new
    /// incident. Its delivery does not count as telling the alert's receivers (no alert id),
    /// whose record is about the new labels from now on.
    async fn enqueue_old_labels_resolved(
        &self,
        batch: &mut db::Batch,
        notifier: &Notifier,
        old: &Alert,
        now: i64,
    ) -> Result<bool, AlertError> {
        self.queue(batch, notifier, old, now, None, None).await
    }

    /// Queues `alert`'s payload for `notifier`: due at once without grouping, else in its
    /// group's open window (or a new one), as telling of `alert_id`, and only while `still`
    /// holds when that is given.
    async fn queue(
        &self,
        batch: &mut db::Batch,
        notifier: &Notifier,
        alert: &Alert,
        now: i64,
        alert_id: Option<&str>,
        still: Option<db::StillFiring<'_>>,
    ) -> Result<bool, AlertError> {
        let mut payload = notifier.payload(alert, &self.external_url);
        // Only reminders are queued on the condition that nobody acknowledged the alert; the
        // flat forms say so, so an e-mail does not read as a new event.
        if still.as_ref().is_some_and(|s| s.unacknowledged)
            && let Some(fields) = payload.as_object_mut()
            && !matches!(notifier, Notifier::Webhook { .. })
        {
            fields.insert("reminder".into(), serde_json::Value::Bool(true));
        }
        let payload = payload.to_string();
        let (due, key) = match notifier.grouping() {
            None => (now, None),
            Some(grouping) => {
                let key = grouping.key(alert);
                let wait = i64::try_from(grouping.wait.as_nanos()).unwrap_or(i64::MAX);
                let due = match batch.open_group_due(notifier.name(), &key, now).await? {
                    Some(due) => due,
                    None => now.saturating_add(wait),
                };
                (due, Some(key))
            }
        };
        batch
            .enqueue_grouped(
                notifier.name(),
                &payload,
                due,
                key.as_deref(),
                alert_id,
                &notify::series(alert),
                still,
            )
            .await
    }

    /// Queues a reminder for every alert that still fires, is not silenced, and was last
    /// notified by a repeating notifier at least its `repeat_interval` ago (Alertmanager's
    /// `repeat_interval`), unless one is queued already. An alert that notifier never told
    /// about (its first notification is still queued) waits for that. Returns how many were
    /// queued.
    pub async fn queue_reminders(&self) -> Result<usize, AlertError> {
        self.queue_reminders_in(&self.view().await?).await
    }

    async fn queue_reminders_in(&self, view: &PassView) -> Result<usize, AlertError> {
        if self.notifiers.iter().all(|n| n.repeat_interval().is_none()) {
            return Ok(0);
        }
        let now = view.now;
        let suppression = view.suppression();
        let last_notified = self.db.last_notified().await?;
        let queued = self.db.queued_pairs().await?;
        let mut reminders = 0;
        let mut batch = None;
        for alert in &view.open {
            // An acknowledged alert has someone on it: reminding pages them for what they
            // are working on.
            if alert.state != AlertState::Firing
                || alert.ack.is_some()
                || suppression.holds_back(&alert.rule, &alert.key, now)
            {
                continue;
            }
            for notifier in &self.notifiers {
                let Some(repeat) = notifier.repeat_interval() else {
                    continue;
                };
                if !notifier.route().takes(alert) {
                    continue;
                }
                let pair = (alert.id.clone(), notifier.name().to_owned());
                let Some(&last) = last_notified.get(&pair) else {
                    continue;
                };
                let repeat = i64::try_from(repeat.as_nanos()).unwrap_or(i64::MAX);
                if now.saturating_sub(last) < repeat || queued.contains(&pair) {
                    continue;
                }
                let batch = match &mut batch {
                    Some(batch) => batch,
                    None => batch.insert(self.db.batch().await?),
                };
                if self
                    .enqueue_for(batch, notifier, alert, now, Guard::WhileUnacknowledged)
                    .await?
                {
                    tracing::info!(alert = %alert.id, notifier = %notifier.name(), "Alert still firing; reminding.");
                    reminders += 1;
                }
            }
        }
        if let Some(batch) = batch {
            batch.commit().await?;
        }
        if reminders > 0 {
            self.wake.notify_one();
        }
        Ok(reminders)
    }

    /// Acknowledges an alert with the operator's verdict.
    pub async fn ack(
        &self,
        id: &str,
        by: &str,
        feedback: Feedback,
        comment: Option<String>,
        replace: bool,
    ) -> Result<Alert, AlertError> {
        let alert = self.db.get(id).await?;
        // A pending alert is not one yet: if its condition clears before its `for`, it is
        // deleted, and an acknowledgement (a ticket's link, a label for model evaluation)
        // would point at nothing.
        if alert.state == AlertState::Pending {
            return Err(AlertError::Invalid(format!(
                "alert `{id}` is pending (its condition has held for less than its rule's \
                 `for`); it can be acknowledged once it fires"
            )));
        }
        // Another operator's verdict is not overwritten by accident (a review: a second
        // acknowledgement silently replaced the first, and its label with it).
        let conflict = |previous: &Ack| {
            AlertError::Conflict(format!(
                "alert `{id}` was acknowledged by {} at {} as {}; to change the verdict, \
                 acknowledge it again with `replace` (`--replace`)",
                previous.by,
                previous.at,
                previous.feedback.as_str()
            ))
        };
        if let Some(previous) = &alert.ack {
            if !replace {
                return Err(conflict(previous));
            }
            tracing::info!(
                alert = %id,
                previous_by = %previous.by,
                previous_feedback = previous.feedback.as_str(),
                "Acknowledgement replaced."
            );
        }
        let ack = Ack {
            by: by.to_owned(),
            at: model::rfc3339(now_ns()),
            feedback,
            comment,
        };
        if !self.db.set_ack(id, &ack, replace, now_ns()).await? {
            // Someone acknowledged it between the read above and this write.
            let now = self.db.get(id).await?;
            return Err(now.ack.as_ref().map_or_else(
                || AlertError::Invalid(format!("alert `{id}` could not be acknowledged")),
                conflict,
            ));
        }
        tracing::info!(alert = %id, feedback = feedback.as_str(), "Alert acknowledged.");
        self.db.get(id).await
    }

    /// Silences `rule`/`key` (either may be `None` for any) for `duration` from now.
    pub async fn silence(
        &self,
        rule: Option<String>,
        key: Option<String>,
        duration: std::time::Duration,
        by: &str,
        comment: Option<String>,
    ) -> Result<Silence, AlertError> {
        self.silence_from(rule, key, None, duration, by, comment)
            .await
    }

    /// Silences `rule`/`key` for `duration` from `from_ns` (a maintenance window scheduled
    /// ahead; `None`: from now). A start already past counts too: the silence ends `duration`
    /// after it, as a window sent late should (and one that would have ended is refused). It
    /// begins at most a year and a day ahead.
    pub async fn silence_from(
        &self,
        rule: Option<String>,
        key: Option<String>,
        from_ns: Option<i64>,
        duration: std::time::Duration,
        by: &str,
        comment: Option<String>,
    ) -> Result<Silence, AlertError> {
        if duration.is_zero() {
            return Err(AlertError::Invalid("a silence needs a duration > 0".into()));
        }
        if duration > MAX_SILENCE {
            return Err(AlertError::Invalid(
                "a silence lasts at most 366 days; to stop a rule for good, remove it".into(),
            ));
        }
        match (
            rule.as_deref().map(str::trim),
            key.as_deref().map(str::trim),
        ) {
            (None, None) => {
                return Err(AlertError::Invalid(
                    "name the `rule` or the `device` to silence (`*` silences every alert)".into(),
                ));
            }
            (Some(""), _) | (_, Some("")) => {
                return Err(AlertError::Invalid(
                    "an empty `rule` or `device` matches nothing; leave it out, or give `*`".into(),
                ));
            }
            _ => {}
        }
        // Matched as written: a space around a name (a paste) silenced nothing, and was
        // listed looking like the name (a review).
        for (field, value) in [("rule", &rule), ("device", &key)] {
            if let Some(value) = value
                && value.trim() != value
            {
                return Err(AlertError::Invalid(format!(
                    "`{field}` `{value}` has spaces around it, and would match no {field}; \
                     did you mean `{}`?",
                    value.trim()
                )));
            }
        }
        // A rule named without a pattern must exist: a misspelt name would silence nothing
        // while the operator believes the alarms quiet.
        if let Some(name) = rule.as_deref().filter(|name| !name.contains('*')) {
            let known: Vec<String> = self.engines.lock().keys().cloned().collect();
            if !known.iter().any(|known| known == name) {
                return Err(AlertError::Invalid(format!(
                    "no alert rule is named `{name}` (rules: {})",
                    known.join(", ")
                )));
            }
        }
        let now = now_ns();
        let longest_ahead = i64::try_from(MAX_SILENCE.as_nanos()).unwrap_or(i64::MAX);
        if from_ns.is_some_and(|from| from.saturating_sub(now) > longest_ahead) {
            return Err(AlertError::Invalid(
                "a silence begins at most 366 days ahead".into(),
            ));
        }
        let until = from_ns
            .unwrap_or(now)
            .saturating_add(i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX));
        if until <= now {
            return Err(AlertError::Invalid(format!(
                "the silence would have ended at {} already",
                model::rfc3339(until)
            )));
        }
        let from = from_ns.filter(|&from| from > now);
        let silence = Silence {
            id: format!("s-{now:x}"),
            rule,
            key,
            from: from.map(model::rfc3339),
            until: model::rfc3339(until),
            by: by.to_owned(),
            comment,
            ended_by: None,
        };
        self.db.add_silence(&silence).await?;
        Ok(silence)
    }

    /// Delivers the outbox until `stop`: due notifications in order, failures retried with
    /// backoff. Returns after a last pass once stopped.
    pub async fn run_outbox(self: Arc<Self>, stop: CancellationToken) {
        let mut pruned: Option<std::time::Instant> = None;
        // Per notifier, its deliveries in progress: a receiver that hangs until its timeout
        // holds back only its own notifications, also those queued while it hangs (a
        // review: with one pass for all, every page waited for a hanging e-mail relay).
        let mut delivering: BTreeMap<String, tokio::task::JoinHandle<()>> = BTreeMap::new();
        loop {
            match self.view().await {
                Ok(view) => {
                    if let Err(e) = self.refresh_silences_in(&view).await {
                        tracing::error!(error = %e, "Checking silences against open alerts failed.");
                    }
                    if let Err(e) = self.queue_reminders_in(&view).await {
                        tracing::error!(error = %e, "Queueing reminders of firing alerts failed.");
                    }
                    delivering.retain(|_, task| !task.is_finished());
                    if let Err(e) = self.start_deliveries(&view, &mut delivering).await {
                        tracing::error!(error = %e, "Alert outbox pass failed.");
                    }
                    if let Err(e) = self.export_gauges(&view).await {
                        tracing::debug!(error = %e, "Alert gauges not updated.");
                    }
                    let kept_since = view.now.saturating_sub(ENDED_SILENCES_KEPT_NS);
                    if let Err(e) = self.db.forget_silences_ended_before(kept_since).await {
                        tracing::debug!(error = %e, "Ended silences not pruned.");
                    }
                    // Once a minute: it takes the write lock the evaluators need.
                    if pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                        pruned = Some(std::time::Instant::now());
                        match self.forget_old_alerts().await {
                            Ok(0) => {}
                            Ok(forgotten) => {
                                tracing::info!(
                                    forgotten,
                                    "Resolved alerts older than alerting.retention deleted."
                                );
                            }
                            Err(e) => tracing::debug!(error = %e, "Old alerts not pruned."),
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "Alert outbox pass could not read the alerts.")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {
                    // What was being delivered stays queued and goes out after the restart
                    // (delivery is at least once).
                    for task in delivering.values() {
                        task.abort();
                    }
                    return;
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            }
        }
    }

    /// Starts delivering the due notifications of every notifier that is not delivering
    /// already, each notifier in a task of its own (see [`Self::run_outbox`]).
    async fn start_deliveries(
        self: &Arc<Self>,
        view: &PassView,
        delivering: &mut BTreeMap<String, tokio::task::JoinHandle<()>>,
    ) -> Result<(), AlertError> {
        // Twice a second: the notifiers with something due, not the outbox's statistics.
        for name in self.db.notifiers_due(view.now).await? {
            if delivering.contains_key(&name) {
                continue;
            }
            let entries = self.db.due_for(&name, view.now, 100).await?;
            if entries.is_empty() {
                continue;
            }
            let this = Arc::clone(self);
            let task = tokio::spawn(async move {
                if let Err(e) = this.deliver_entries(entries).await {
                    tracing::error!(error = %e, "Alert outbox pass failed.");
                }
                // The next pass looks at once for what queued meanwhile.
                this.wake.notify_one();
            });
            delivering.insert(name, task);
        }
        Ok(())
    }

    /// Reads what a pass of the outbox worker works from.
    async fn view(&self) -> Result<PassView, AlertError> {
        Ok(PassView {
            now: now_ns(),
            silences: self.db.silences().await?,
            open: self.db.open_alerts().await?,
            inhibitions: self.inhibitions.lock().clone(),
        })
    }

    /// Sets `fabrik_alerts_firing{rule,severity}` (every rule, 0 when none fires) and
    /// `fabrik_alert_outbox_pending`.
    async fn export_gauges(&self, view: &PassView) -> Result<(), AlertError> {
        let mut firing: BTreeMap<(String, String), u64> = self
            .rules()
            .into_iter()
            .map(|rule| ((rule.name, rule.severity), 0))
            .collect();
        for alert in &view.open {
            if alert.state == AlertState::Firing {
                *firing
                    .entry((alert.rule.clone(), alert.severity.clone()))
                    .or_default() += 1;
            }
        }
        // A series exported before whose rule was removed or changed severity goes to 0:
        // the exporter keeps a series' last value forever, and a stale 1 would keep an
        // alert on this gauge firing.
        {
            let current: std::collections::BTreeSet<(String, String)> =
                firing.keys().cloned().collect();
            let mut exported = self.exported_firing.lock();
            for (rule, severity) in exported.difference(&current) {
                metrics::gauge!("fabrik_alerts_firing", "rule" => rule.clone(), "severity" => severity.clone())
                    .set(0.0);
            }
            *exported = current;
        }
        for ((rule, severity), count) in firing {
            metrics::gauge!("fabrik_alerts_firing", "rule" => rule, "severity" => severity)
                .set(count as f64);
        }
        metrics::gauge!("fabrik_alert_outbox_pending").set(self.db.outbox_len().await? as f64);
        Ok(())
    }

    /// Whether `entry` is a firing whose alert is silenced or inhibited now (a silence added,
    /// or an inhibiting alert fired, after it was queued), or a reminder of an alert
    /// acknowledged since: then it is dropped from the outbox instead of delivered or
    /// retried, and `true` is returned.
    async fn silenced_since_queued(
        &self,
        entry: &db::OutboxEntry,
        suppression: &Suppression<'_>,
        now: i64,
    ) -> Result<bool, AlertError> {
        let Some(alert_id) = &entry.alert_id else {
            return Ok(false);
        };
        // A resolution always goes out: under a silence it was queued only for receivers told
        // of the firing,
        // whose incidents would otherwise stay open.
        let resolution = serde_json::from_str::<serde_json::Value>(&entry.payload)
            .is_ok_and(|payload| payload["status"] == "resolved");
        if resolution {
            return Ok(false);
        }
        let alert = match self.db.get(alert_id).await {
            Ok(alert) => alert,
            Err(AlertError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        // A reminder is for an alert nobody has taken on; one acknowledged since it was
        // queued would page the person working on it.
        if entry.reminder && alert.ack.is_some() {
            tracing::info!(alert = %alert_id, notifier = %entry.notifier, "Reminder dropped: its alert was acknowledged after it was queued.");
            self.db.delivered(entry.id).await?;
            return Ok(true);
        }
        if !suppression.holds_back(&alert.rule, &alert.key, now) {
            return Ok(false);
        }
        tracing::info!(alert = %alert_id, notifier = %entry.notifier, "Notification dropped: its alert was silenced or inhibited after it was queued.");
        metrics::counter!(
            "fabrik_notifications_total",
            "notifier" => entry.notifier.clone(),
            "outcome" => "dropped"
        )
        .increment(1);
        self.db.delivered(entry.id).await?;
        Ok(true)
    }

    /// Brings the open alerts' `silenced` flags up to date with the silences in force now: a
    /// silence added while an alert is open marks it, and one that ended (or was removed)
    /// unmarks it. A firing alert whose silence ended is notified as firing to the receivers
    /// whose notification the silence held back; one told before the silence is not paged
    /// again (as Alertmanager does not re-send an unchanged group), its reminders follow
    /// `repeat_interval`. Returns how many were notified.
    pub async fn refresh_silences(&self) -> Result<usize, AlertError> {
        self.refresh_silences_in(&self.view().await?).await
    }

    async fn refresh_silences_in(&self, view: &PassView) -> Result<usize, AlertError> {
        let now = view.now;
        let suppression = view.suppression();
        let mut notified = 0;
        for alert in &view.open {
            let silenced = suppression.holds_back(&alert.rule, &alert.key, now);
            if silenced == alert.silenced {
                continue;
            }
            // The release and the flag land together.
            let mut batch = self.db.batch().await?;
            let mut queued = false;
            if !silenced && alert.state == AlertState::Firing {
                // Only the firing the silence held back goes out: a receiver told of it
                // before the silence (or with it queued) is not paged again for an alert
                // that did not change; its reminders keep their schedule.
                let mut told = batch.notified_by(&alert.id).await?;
                told.extend(batch.queued_for(&alert.id).await?);
                for notifier in &self.notifiers {
                    let was_told = told.iter().any(|name| name == notifier.name());
                    if !was_told && notifier.route().takes(alert) {
                        queued |= self
                            .enqueue_for(&mut batch, notifier, alert, now, Guard::WhileFiring)
                            .await?;
                    }
                }
            }
            // Only if still in the state and severity read: a transition written meanwhile saw
            // the silences itself, and a relabelled alert is released by the next pass under
            // its new labels (this pass's release, guarded by the old severity, queued none).
            batch
                .set_silenced(&alert.id, silenced, alert.state, &alert.severity, now)
                .await?;
            batch.commit().await?;
            if queued {
                tracing::warn!(alert = %alert.id, "No longer silenced or inhibited; the alert still fires.");
                self.wake.notify_one();
                notified += 1;
            }
        }
        Ok(notified)
    }

    /// The ids and payloads, for `notifier`, of the alerts of group `key` that fire now and
    /// are not silenced.
    fn firing_in_group(
        &self,
        notifier: &Notifier,
        key: &str,
        view: &PassView,
    ) -> (Vec<String>, Vec<serde_json::Value>) {
        let Some(grouping) = notifier.grouping() else {
            return (Vec::new(), Vec::new());
        };
        let suppression = view.suppression();
        view.open
            .iter()
            .filter(|a| {
                a.state == AlertState::Firing
                    && grouping.key(a) == key
                    && notifier.route().takes(a)
                    && !suppression.holds_back(&a.rule, &a.key, view.now)
            })
            .map(|a| (a.id.clone(), notifier.payload(a, &self.external_url)))
            .unzip()
    }

    /// One pass over due notifications; returns how many notifications were delivered (a
    /// group counts once).
    pub async fn deliver_due(&self) -> Result<usize, AlertError> {
        self.deliver_due_in(&self.view().await?).await
    }

    async fn deliver_due_in(&self, view: &PassView) -> Result<usize, AlertError> {
        let mut by_notifier: BTreeMap<String, Vec<db::OutboxEntry>> = BTreeMap::new();
        for entry in self.db.due(view.now, 100).await? {
            by_notifier
                .entry(entry.notifier.clone())
                .or_default()
                .push(entry);
        }
        // Each notifier delivers on its own: one whose receiver hangs until the timeout (a
        // relay that does not answer) held back every later notifier, the pager among them
        // (a review: 5 s per hanging notifier before the page went out).
        let passes = by_notifier
            .into_values()
            .map(|entries| self.deliver_entries(entries));
        let mut delivered = 0;
        for pass in futures::future::join_all(passes).await {
            delivered += pass?;
        }
        Ok(delivered)
    }

    /// Delivers `entries`, due notifications of one notifier, in order.
    async fn deliver_entries(&self, entries: Vec<db::OutboxEntry>) -> Result<usize, AlertError> {
        let mut delivered = 0;
        let mut handled = std::collections::HashSet::new();
        let mut read: Option<(std::time::Instant, PassView)> = None;
        for entry in entries {
            if handled.contains(&entry.id) {
                continue;
            }
            // A delivery may wait out a receiver's timeout, and what was read before it goes
            // stale meanwhile: the silences, inhibitions and open alerts are read again when
            // the last read is older than a second (a silence that began or ended, an alert
            // that resolved; not per notification, which reads every open alert), and one
            // dropped meanwhile (a rule's relabel) is not sent.
            if !self.db.is_queued(entry.id).await? {
                continue;
            }
            if read
                .as_ref()
                .is_none_or(|(at, _)| at.elapsed() > VIEW_FRESH_FOR)
            {
                read = Some((std::time::Instant::now(), self.view().await?));
            }
            let Some((_, view)) = read.as_ref() else {
                continue;
            };
            let now = view.now;
            let suppression = view.suppression();
            if self
                .silenced_since_queued(&entry, &suppression, now)
                .await?
            {
                handled.insert(entry.id);
                continue;
            }
            // The alerts the notification tells about, for reminders.
            let mut told: Vec<String> = Vec::new();
            let Some(notifier) = self.notifiers.iter().find(|n| n.name() == entry.notifier) else {
                // Notifiers are set at start, where the queues of those no longer configured
                // are dropped ([`Self::reconcile_notifiers`]); one found later goes the same way.
                tracing::warn!(notifier = %entry.notifier, id = entry.id, "Notification for a notifier that is not configured dropped.");
                self.db.delivered(entry.id).await?;
                handled.insert(entry.id);
                continue;
            };
            // A group goes out whole: every due entry with its key, merged into one body.
            let (ids, payload, attempts) = match &entry.group_key {
                Some(key) => {
                    let mut group = Vec::new();
                    for member in self.db.due_group(&entry.notifier, key, now).await? {
                        if self
                            .silenced_since_queued(&member, &suppression, now)
                            .await?
                        {
                            handled.insert(member.id);
                        } else {
                            told.extend(member.alert_id.clone());
                            group.push(member);
                        }
                    }
                    if group.is_empty() {
                        continue;
                    }
                    let ids: Vec<i64> = group.iter().map(|e| e.id).collect();
                    let attempts = group.iter().map(|e| e.attempts).max().unwrap_or(0);
                    // A webhook group always goes out as the group's body (its key and
                    // labels, its alerts still firing); a lone e-mail as the alert's own.
                    let webhook = matches!(notifier, Notifier::Webhook { .. });
                    let (firing_ids, firing) = if webhook {
                        self.firing_in_group(notifier, key, view)
                    } else {
                        (Vec::new(), Vec::new())
                    };
                    told.extend(firing_ids);
                    let payload = if let ([only], false) = (group.as_slice(), webhook) {
                        only.payload.clone()
                    } else {
                        let bodies: Vec<serde_json::Value> = group
                            .iter()
                            .filter_map(|e| match serde_json::from_str(&e.payload) {
                                Ok(v) => Some(v),
                                Err(error) => {
                                    tracing::error!(id = e.id, %error, "Queued notification is not JSON; left out of its group.");
                                    None
                                }
                            })
                            .collect();
                        notifier.merge(&bodies, key, &firing).to_string()
                    };
                    (ids, payload, attempts)
                }
                None => {
                    told.extend(entry.alert_id.clone());
                    (vec![entry.id], entry.payload.clone(), entry.attempts)
                }
            };
            handled.extend(ids.iter().copied());
            match notify::deliver(notifier, &payload).await {
                Ok(refused) => {
                    // Recorded as told before the entries leave the outbox, so a reader in
                    // between sees the receiver as told or as about to be, never neither.
                    told.sort();
                    told.dedup();
                    self.db
                        .record_notified(&told, notifier.name(), now_ns())
                        .await?;
                    let mut superseded = 0;
                    for id in &ids {
                        superseded += self.db.delivered_superseding(*id).await?;
                    }
                    if superseded > 0 {
                        tracing::info!(notifier = %notifier.name(), superseded, "Older queued notifications dropped: a later state of their alerts was delivered.");
                        metrics::counter!(
                            "fabrik_notifications_total",
                            "notifier" => notifier.name().to_owned(),
                            "outcome" => "superseded"
                        )
                        .increment(superseded);
                    }
                    metrics::counter!(
                        "fabrik_notifications_total",
                        "notifier" => notifier.name().to_owned(),
                        "outcome" => "delivered"
                    )
                    .increment(1);
                    let delivered_ns = now_ns();
                    self.deliveries
                        .lock()
                        .entry(notifier.name().to_owned())
                        .or_default()
                        .delivered_ns = Some(delivered_ns);
                    // Taken for the others; the refusals are the notifier's last error (at the
                    // delivery's own time, so not shown as recovered from), and retrying would
                    // resend to everyone who has it.
                    if !refused.is_empty() {
                        let error = format!(
                            "delivered, but {} refused it for good: {}",
                            if refused.len() == 1 {
                                "a recipient"
                            } else {
                                "recipients"
                            },
                            refused.join("; ")
                        );
                        tracing::warn!(notifier = %notifier.name(), error = %error, "Notification delivered to some recipients only.");
                        metrics::counter!(
                            "fabrik_notifications_total",
                            "notifier" => notifier.name().to_owned(),
                            "outcome" => "partial"
                        )
                        .increment(1);
                        let mut deliveries = self.deliveries.lock();
                        let record = deliveries.entry(notifier.name().to_owned()).or_default();
                        record.failed_ns = Some(delivered_ns);
                        record.error = Some(error);
                    }
                    delivered += 1;
                }
                Err(e) => {
                    metrics::counter!(
                        "fabrik_notifications_total",
                        "notifier" => notifier.name().to_owned(),
                        "outcome" => "failed"
                    )
                    .increment(1);
                    let delay = notify::backoff(attempts);
                    let next = now + i64::try_from(delay.as_nanos()).unwrap_or(i64::MAX);
                    tracing::warn!(error = %e, attempts = attempts + 1, changes = ids.len(), retry_in = ?delay, "Notification not delivered; will retry.");
                    // The outbox first: a status read between the two never shows the
                    // failure without the retry it schedules.
                    let mut scheduled = Ok(());
                    for id in &ids {
                        scheduled = self.db.retry_later(*id, next, &e.to_string()).await;
                        if scheduled.is_err() {
                            break;
                        }
                    }
                    {
                        let mut deliveries = self.deliveries.lock();
                        let record = deliveries.entry(notifier.name().to_owned()).or_default();
                        record.failed_ns = Some(now_ns());
                        record.error = Some(e.to_string());
                    }
                    scheduled?;
                }
            }
        }
        Ok(delivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    /// An inference is stamped at its window's last instant (…9.999999999 s); its alert's
    /// `started_at` shows milliseconds only.
    #[tokio::test]
    async fn alerts_carry_their_rules_proposed_action_to_their_own_device_or_the_named_one() {
        let dir = tempfile::tempdir().unwrap();
        let proposing = |name: &str, device: Option<&str>| Rule {
            name: name.into(),
            action: Some(RuleAction {
                device: device.map(str::to_owned),
                signal: "setpoint".into(),
                value: serde_json::json!(60.0),
                summary: None,
            }),
            ..rule()
        };
        let alerting = Alerting::open(
            &dir.path().join("alerts.db"),
            vec![
                rule(),
                proposing("hot-own", None),
                proposing("hot-plant", Some("chiller-1")),
            ],
            Vec::new(),
            "http://x".into(),
        )
        .await
        .unwrap();
        for name in ["hot", "hot-own", "hot-plant"] {
            alerting
                .observe(name, &[obs("oven-1", 1, 85.0)])
                .await
                .unwrap();
        }
        let mut listed: Vec<Alert> = Vec::new();
        for name in ["hot", "hot-own", "hot-plant"] {
            listed.push(
                alerting
                    .db()
                    .get(&alert_id(name, "oven-1", S))
                    .await
                    .unwrap(),
            );
        }
        assert!(listed.iter().all(|a| a.action.is_none()), "never stored");
        alerting.fill_actions(&mut listed);
        assert_eq!(listed[0].action, None);
        let devices: Vec<Option<&str>> = listed
            .iter()
            .map(|a| a.action.as_ref().map(|x| x.device.as_str()))
            .collect();
        assert_eq!(devices, [None, Some("oven-1"), Some("chiller-1")]);
        assert_eq!(
            listed[1].action.as_ref().map(|a| (&a.signal, &a.value)),
            Some((&"setpoint".to_owned(), &serde_json::json!(60.0)))
        );
    }

    #[tokio::test]
    async fn a_restored_alert_started_between_milliseconds_resolves_under_its_own_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.db");
        let open = || Alerting::open(&path, vec![rule()], Vec::new(), "http://x".into());
        let started = 10 * S - 1;
        let observation = |time_ns: i64, value: f64| Observation {
            key: "oven-1".into(),
            time_ns,
            arrival_ns: time_ns,
            value,
            context: BTreeMap::new(),
        };
        let alerting = open().await.unwrap();
        alerting
            .observe("hot", &[observation(started, 85.0)])
            .await
            .unwrap();
        drop(alerting);
        let alerting = open().await.unwrap();
        let t = alerting
            .observe("hot", &[observation(20 * S, 60.0)])
            .await
            .unwrap();
        let id = alert_id("hot", "oven-1", started);
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0].started_ns, started);
        assert_eq!(
            alerting.db().get(&id).await.unwrap().state,
            AlertState::Resolved
        );
        let open_alerts = alerting.db().open_alerts().await.unwrap();
        assert!(open_alerts.is_empty(), "{open_alerts:?}");
    }

    fn rule() -> Rule {
        Rule {
            name: "hot".into(),
            severity: "critical".into(),
            condition: Condition::Above {
                fire: 80.0,
                clear: 70.0,
            },
            for_ns: 0,
            annotations: BTreeMap::new(),
            action: None,
        }
    }

    /// The `ops` webhook notifier to `url`, grouped by `grouping`.
    fn webhook_to(url: &str, grouping: notify::Grouping) -> Notifier {
        Notifier::webhook(
            "ops",
            url,
            std::time::Duration::from_secs(5),
            grouping,
            None,
            None,
        )
        .unwrap()
    }

    /// Alerting in `dir` with the `hot` rule, notifying through `notifiers`.
    async fn alerting_in(dir: &Path, notifiers: Vec<Notifier>) -> Arc<Alerting> {
        Alerting::open(
            &dir.join("a.db"),
            vec![rule()],
            notifiers,
            "http://x".into(),
        )
        .await
        .unwrap()
    }

    fn refused_webhook() -> Notifier {
        refused_webhook_named("ops")
    }

    fn refused_webhook_named(name: &str) -> Notifier {
        // Port 9 (discard) on loopback: nothing listens, deliveries fail and stay queued.
        Notifier::webhook(
            name,
            "http://127.0.0.1:9/hook",
            std::time::Duration::from_millis(200),
            notify::Grouping::default(),
            None,
            None,
        )
        .unwrap()
    }

    fn obs(key: &str, t: i64, value: f64) -> Observation {
        Observation {
            key: key.into(),
            time_ns: t * S,
            arrival_ns: t * S,
            value,
            context: [("top_signal".to_owned(), "temperature".to_owned())].into(),
        }
    }

    /// A notifier whose receiver hangs until the timeout does not hold back another: the
    /// other's body arrives while the hanging delivery still waits.
    #[tokio::test]
    async fn a_hanging_receiver_does_not_hold_back_the_other_notifiers() {
        let dir = tempfile::tempdir().unwrap();
        // Accepts connections and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_url = format!("http://{}/hook", silent.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                open.push(socket);
            }
        });
        let (url, mut bodies) = http_receiver().await;
        let hanging = Notifier::webhook(
            "a-relay",
            &silent_url,
            std::time::Duration::from_secs(30),
            notify::Grouping::default(),
            None,
            None,
        )
        .unwrap();
        let alerting = alerting_in(
            dir.path(),
            vec![hanging, webhook_to(&url, notify::Grouping::default())],
        )
        .await;
        alerting
            .observe("hot", &[obs("oven-1", 10, 85.0)])
            .await
            .unwrap();
        let delivering = alerting.deliver_due();
        tokio::pin!(delivering);
        tokio::select! {
            body = bodies.recv() => assert_eq!(body.unwrap()["status"], "firing"),
            _ = &mut delivering => panic!("the pass ended before the other notifier delivered"),
        }
        held.abort();
    }

    /// A silence scheduled ahead holds nothing back before it begins; one whose start is
    /// already past ends its duration after that start; one that would have ended, or that
    /// begins more than a year and a day ahead, is refused.
    #[tokio::test]
    async fn a_silence_scheduled_ahead_waits_for_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let alerting = alerting_in(dir.path(), vec![refused_webhook()]).await;
        let hour = std::time::Duration::from_secs(3600);
        let hour_ns = 3600 * S;
        let window = alerting
            .silence_from(
                None,
                Some("oven-1".into()),
                Some(now_ns() + hour_ns),
                hour,
                "ana",
                None,
            )
            .await
            .unwrap();
        assert!(window.from.is_some());
        alerting
            .observe("hot", &[obs("oven-1", 10, 85.0)])
            .await
            .unwrap();
        let alert = alerting
            .db()
            .get(&alert_id("hot", "oven-1", 10 * S))
            .await
            .unwrap();
        assert!(!alert.silenced, "held back before its start");
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 1);

        let late = alerting
            .silence_from(
                None,
                Some("oven-2".into()),
                Some(now_ns() - hour_ns / 6),
                hour,
                "ana",
                None,
            )
            .await
            .unwrap();
        assert!(late.from.is_none());
        let ends = model::parse_rfc3339(&late.until).unwrap();
        assert!(ends < now_ns() + hour_ns * 5 / 6 + S, "{}", late.until);
        for (from, why) in [
            (now_ns() - 2 * hour_ns, "would have ended"),
            (now_ns() + 367 * 24 * hour_ns, "366 days ahead"),
        ] {
            let err = alerting
                .silence_from(None, Some("oven-3".into()), Some(from), hour, "ana", None)
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{err}");
        }
    }

    #[tokio::test]
    async fn a_silence_with_spaces_around_a_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let alerting = alerting_in(dir.path(), Vec::new()).await;
        let hour = std::time::Duration::from_secs(3600);
        let err = alerting
            .silence(None, Some("pump-03 ".into()), hour, "ana", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `pump-03`"), "{err}");
        assert!(
            alerting
                .silence(Some(" hot".into()), None, hour, "ana", None)
                .await
                .is_err()
        );
        assert!(
            alerting
                .silence(None, Some("pump-03".into()), hour, "ana", None)
                .await
                .is_ok()
        );
    }

    /// A notification that failed waits out its backoff, unless Fabrik restarts (how a
    /// notifier's configuration is fixed): then it is due at once.
    #[tokio::test]
    async fn a_restart_retries_failed_notifications_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let alerting = alerting_in(dir.path(), vec![refused_webhook()]).await;
        alerting
            .observe("hot", &[obs("oven-1", 1, 85.0)])
            .await
            .unwrap();
        assert_eq!(alerting.deliver_due().await.unwrap(), 0);
        postpone_all(&alerting).await;
        assert!(alerting.db().due(now_ns(), 10).await.unwrap().is_empty());
        drop(alerting);
        let alerting = alerting_in(dir.path(), vec![refused_webhook()]).await;
        assert_eq!(alerting.db().due(now_ns(), 10).await.unwrap().len(), 1);
    }

    /// The outbox worker delivers each notifier on its own: while one receiver hangs, the
    /// other notifier delivers an alert that fired after the hang began.
    #[tokio::test]
    async fn alerts_firing_while_a_receiver_hangs_reach_the_other_notifiers() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        // Accepts connections, never answers, and reports when the client gives up.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_url = format!("http://{}/hook", silent.local_addr().unwrap());
        let (gave_up, mut given_up) = tokio::sync::mpsc::channel(4);
        let held = tokio::spawn(async move {
            while let Ok((mut socket, _)) = silent.accept().await {
                let gave_up = gave_up.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while socket.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                    let _ = gave_up.send(()).await;
                });
            }
        });
        let (url, mut bodies) = http_receiver().await;
        let hanging = Notifier::webhook(
            "a-relay",
            &silent_url,
            std::time::Duration::from_secs(20),
            notify::Grouping::default(),
            None,
            None,
        )
        .unwrap();
        let alerting = alerting_in(
            dir.path(),
            vec![hanging, webhook_to(&url, notify::Grouping::default())],
        )
        .await;
        let stop = CancellationToken::new();
        let worker = tokio::spawn(Arc::clone(&alerting).run_outbox(stop.clone()));
        for (device, t) in [("oven-1", 10), ("oven-2", 11)] {
            alerting
                .observe("hot", &[obs(device, t, 85.0)])
                .await
                .unwrap();
            tokio::select! {
                body = bodies.recv() => {
                    assert_eq!(body.unwrap()["alerts"][0]["labels"]["device"], device);
                }
                _ = given_up.recv() => panic!("{device} waited for the hanging receiver"),
            }
        }
        stop.cancel();
        worker.await.unwrap();
        held.abort();
    }

    /// What a notifier's delivery read before waiting out another receiver may be stale by
    /// the time it sends: an entry dropped meanwhile is not sent, and a silence that began
    /// meanwhile holds its alert's firing back.
    #[tokio::test]
    async fn a_delivery_decides_on_what_holds_when_it_sends() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut bodies) = http_receiver().await;
        let alerting = alerting_in(
            dir.path(),
            vec![webhook_to(&url, notify::Grouping::default())],
        )
        .await;
        for (device, t) in [("oven-1", 10), ("oven-2", 11), ("oven-3", 12)] {
            alerting
                .observe("hot", &[obs(device, t, 85.0)])
                .await
                .unwrap();
        }
        let entries = alerting.db().due(now_ns(), 10).await.unwrap();
        assert_eq!(entries.len(), 3);
        // Read, then: oven-1's entry dropped (as a relabel drops it), oven-2 silenced.
        alerting.db().delivered(entries[0].id).await.unwrap();
        alerting
            .silence(
                None,
                Some("oven-2".into()),
                std::time::Duration::from_secs(600),
                "ana",
                None,
            )
            .await
            .unwrap();
        assert_eq!(alerting.deliver_entries(entries).await.unwrap(), 1);
        let body = bodies.recv().await.unwrap();
        assert_eq!(body["alerts"][0]["labels"]["device"], "oven-3", "{body}");
        assert!(bodies.try_recv().is_err());
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 0);
    }

    /// A notifier renamed while an alert fires: the old name's queue is dropped, the new
    /// name is told of the alert (once, however often Fabrik restarts); an acknowledged alert
    /// is not paged to a notifier added later.
    #[tokio::test]
    async fn notifiers_added_or_renamed_while_alerts_fire_are_told_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.db");
        let open = |name: &'static str| {
            let path = path.clone();
            async move {
                Alerting::open(
                    &path,
                    vec![rule()],
                    vec![refused_webhook_named(name)],
                    "http://x".into(),
                )
                .await
                .unwrap()
            }
        };
        let queued = |alerting: Arc<Alerting>| async move {
            alerting
                .db()
                .outbox_by_notifier()
                .await
                .unwrap()
                .into_iter()
                .map(|(name, q)| (name, q.queued))
                .collect::<Vec<_>>()
        };
        let alerting = open("shift-mail").await;
        alerting
            .observe("hot", &[obs("oven-1", 10, 85.0)])
            .await
            .unwrap();
        // oven-2 fires and resolves while the receiver is down.
        alerting
            .observe("hot", &[obs("oven-2", 11, 85.0)])
            .await
            .unwrap();
        alerting
            .observe("hot", &[obs("oven-2", 12, 10.0)])
            .await
            .unwrap();
        assert_eq!(queued(alerting.clone()).await, [("shift-mail".into(), 3)]);
        drop(alerting);

        // Renamed: the firing oven-1 and oven-2's resolution go to the new name (the
        // receiver still holds oven-2 open).
        let alerting = open("shift-email").await;
        assert_eq!(queued(alerting.clone()).await, [("shift-email".into(), 2)]);
        let resolutions = alerting
            .db()
            .due(i64::MAX, 10)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.payload.contains("\"resolved\""))
            .count();
        assert_eq!(resolutions, 1);
        drop(alerting);
        let alerting = open("shift-email").await;
        assert_eq!(
            queued(alerting.clone()).await,
            [("shift-email".into(), 2)],
            "not queued twice"
        );

        let id = alert_id("hot", "oven-1", 10 * S);
        alerting
            .ack(&id, "ana", Feedback::TruePositive, None, false)
            .await
            .unwrap();
        drop(alerting);
        // The acknowledged oven-1 is not paged to a notifier added later; oven-2's
        // resolution, which waited for the notifier before, is passed on.
        let alerting = open("pager").await;
        assert_eq!(queued(alerting.clone()).await, [("pager".into(), 1)]);
    }

    #[tokio::test]
    async fn firing_is_stored_queued_acknowledged_silenced_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.db");
        let alerting = Alerting::open(
            &path,
            vec![rule()],
            vec![refused_webhook()],
            "http://x".into(),
        )
        .await
        .unwrap();
        let t = alerting
            .observe("hot", &[obs("oven-1", 10, 85.0)])
            .await
            .unwrap();
        assert_eq!(t[0].state, AlertState::Firing);
        let id = alert_id("hot", "oven-1", 10 * S);
        let alert = alerting.db().get(&id).await.unwrap();
        assert_eq!(alert.state, AlertState::Firing);
        assert_eq!(alert.annotations["top_signal"], "temperature");
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 1);

        // Delivery fails: the entry stays, with its attempt counted and a later retry time.
        assert_eq!(alerting.deliver_due().await.unwrap(), 0);
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 1);
        assert!(alerting.db().due(now_ns(), 10).await.unwrap().is_empty());

        let acked = alerting
            .ack(
                &id,
                "ana",
                Feedback::FalsePositive,
                Some("sensor cleaned".into()),
                false,
            )
            .await
            .unwrap();
        assert_eq!(
            acked.ack.as_ref().unwrap().feedback,
            Feedback::FalsePositive
        );
        // A second verdict does not overwrite the first unless it says to replace it.
        let conflict = alerting
            .ack(&id, "bo", Feedback::TruePositive, None, false)
            .await
            .unwrap_err();
        assert!(
            matches!(&conflict, AlertError::Conflict(m) if m.contains("by ana") && m.contains("false_positive")),
            "{conflict}"
        );
        let replaced = alerting
            .ack(
                &id,
                "bo",
                Feedback::FalsePositive,
                Some("sensor cleaned".into()),
                true,
            )
            .await
            .unwrap();
        assert_eq!(replaced.ack.as_ref().unwrap().by, "bo");
        // The write itself checks: one read before another's acknowledgement cannot replace
        // it.
        let stale = Ack {
            by: "cy".into(),
            at: model::rfc3339(now_ns()),
            feedback: Feedback::TruePositive,
            comment: None,
        };
        assert!(
            !alerting
                .db()
                .set_ack(&id, &stale, false, now_ns())
                .await
                .unwrap()
        );
        assert_eq!(alerting.db().get(&id).await.unwrap().ack.unwrap().by, "bo");
        assert!(matches!(
            alerting
                .ack("nope", "ana", Feedback::TruePositive, None, false)
                .await,
            Err(AlertError::NotFound { .. })
        ));

        // A silenced device's alerts are recorded but not notified.
        alerting
            .silence(
                None,
                Some("oven-2".into()),
                std::time::Duration::from_secs(3600),
                "ana",
                None,
            )
            .await
            .unwrap();
        alerting
            .observe("hot", &[obs("oven-2", 20, 90.0)])
            .await
            .unwrap();
        let silenced = alerting
            .db()
            .get(&alert_id("hot", "oven-2", 20 * S))
            .await
            .unwrap();
        assert!(silenced.silenced);
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 1);
        drop(alerting);

        // After a restart the firing alert resolves (and notifies) instead of firing again.
        let alerting = Alerting::open(
            &path,
            vec![rule()],
            vec![refused_webhook()],
            "http://x".into(),
        )
        .await
        .unwrap();
        let t = alerting
            .observe("hot", &[obs("oven-1", 30, 86.0)])
            .await
            .unwrap();
        assert!(t.is_empty(), "{t:?}");
        let t = alerting
            .observe("hot", &[obs("oven-1", 40, 60.0)])
            .await
            .unwrap();
        assert_eq!(t[0].state, AlertState::Resolved);
        let resolved = alerting.db().get(&id).await.unwrap();
        assert_eq!(resolved.state, AlertState::Resolved);
        assert_eq!(resolved.ack.unwrap().by, "bo");
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 2);
    }

    /// A rule redefined at run time keeps its open alerts: a firing one stays firing (same
    /// id, no second notification) and takes the new severity, a pending one keeps counting
    /// its `for`. A removed rule resolves its firing alerts and notifies the resolution.
    #[tokio::test]
    async fn redefining_a_rule_keeps_its_open_alerts_and_removing_it_resolves_them() {
        let dir = tempfile::tempdir().unwrap();
        let alerting = alerting_in(dir.path(), vec![refused_webhook()]).await;
        alerting
            .observe("hot", &[obs("oven-1", 10, 85.0)])
            .await
            .unwrap();
        let firing = alert_id("hot", "oven-1", 10 * S);
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 1);

        // A slower rule under the same name: oven-2 becomes pending under it.
        let slower = Rule {
            for_ns: 60 * S,
            ..rule()
        };
        alerting.define_rule(slower.clone(), true).await.unwrap();
        alerting
            .observe("hot", &[obs("oven-2", 11, 90.0)])
            .await
            .unwrap();
        let pending = alert_id("hot", "oven-2", 11 * S);
        assert_eq!(
            alerting.db().get(&pending).await.unwrap().state,
            AlertState::Pending
        );
        // Still above: oven-1 stays firing under the new definition, not fired again.
        let t = alerting
            .observe("hot", &[obs("oven-1", 12, 86.0)])
            .await
            .unwrap();
        assert!(t.is_empty(), "{t:?}");
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 1);

        // Redefined again, now a warning: both alerts carry over. oven-2's `for` counts
        // from 11 s, so it fires at 71 s, not a minute after the redefinition. oven-1's
        // labels changed: its critical firing, never delivered, goes (no receiver saw it, so
        // none hears it resolve), and the warning one fires.
        let warning = Rule {
            severity: "warning".into(),
            ..slower
        };
        alerting.define_rule(warning, true).await.unwrap();
        let kept = alerting.db().get(&firing).await.unwrap();
        assert_eq!(
            (kept.state, kept.severity.as_str()),
            (AlertState::Firing, "warning")
        );
        let t = alerting.tick(70 * S, &expecting("hot")).await.unwrap();
        assert!(t.is_empty(), "{t:?}");
        let t = alerting.tick(71 * S, &expecting("hot")).await.unwrap();
        assert_eq!((t.len(), t[0].key.as_str()), (1, "oven-2"), "{t:?}");
        assert_eq!(
            alerting.db().get(&pending).await.unwrap().state,
            AlertState::Firing
        );
        let queued: Vec<String> = alerting
            .db()
            .due(i64::MAX, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| {
                let body: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
                let alert = &body["alerts"][0];
                format!(
                    "{} {} {}",
                    alert["labels"]["device"].as_str().unwrap(),
                    alert["labels"]["severity"].as_str().unwrap(),
                    alert["status"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(queued, ["oven-1 warning firing", "oven-2 warning firing"]);

        assert!(alerting.remove_rule("hot").await.unwrap());
        for id in [&firing, &pending] {
            let resolved = alerting.db().get(id).await.unwrap();
            assert_eq!(resolved.state, AlertState::Resolved);
            assert!(resolved.resolved_at.is_some());
            // Not a recovery: the notification says why it ended.
            assert!(
                resolved.annotations["resolution"].contains("rule was removed or redefined"),
                "{resolved:?}"
            );
        }
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 4);
        let last = alerting.db().due(i64::MAX, 10).await.unwrap();
        assert!(
            last.iter()
                .any(|e| e.payload.contains("\"resolved\"")
                    && e.payload.contains("rule was removed")),
            "{last:?}"
        );
        assert!(alerting.rules().is_empty());
        assert!(matches!(
            alerting.observe("hot", &[obs("oven-1", 80, 90.0)]).await,
            Err(AlertError::NotFound { .. })
        ));
        assert!(!alerting.remove_rule("hot").await.unwrap());
    }

    /// Routes: the on-call webhook hears of critical alerts only, line 2's of its devices
    /// only; a notifier told of a firing hears of its resolution even if the rule's severity
    /// was redefined out of its route meanwhile.
    #[tokio::test]
    async fn notifiers_are_told_only_of_the_alerts_their_routes_take() {
        let dir = tempfile::tempdir().unwrap();
        let named = |name: &str, route: notify::Route| {
            Notifier::webhook(
                name,
                "http://127.0.0.1:9/hook",
                std::time::Duration::from_millis(200),
                notify::Grouping::default(),
                None,
                None,
            )
            .unwrap()
            .routed(route)
        };
        let on_call = named(
            "on-call",
            notify::Route {
                severities: vec!["critical".into()],
                ..Default::default()
            },
        );
        let line2 = named(
            "line2",
            notify::Route {
                devices: vec!["line2-*".into()],
                rules: vec!["h*".into()],
                ..Default::default()
            },
        );
        let warm = Rule {
            name: "warm".into(),
            severity: "warning".into(),
            ..rule()
        };
        let alerting = Alerting::open(
            &dir.path().join("a.db"),
            vec![rule(), warm.clone()],
            vec![on_call, line2],
            "http://x".into(),
        )
        .await
        .unwrap();
        // What is queued, as `notifier rule device severity status`.
        let queued = || async {
            let mut entries: Vec<String> = alerting
                .db()
                .due(i64::MAX, 100)
                .await
                .unwrap()
                .into_iter()
                .map(|e| {
                    let body: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
                    let alert = &body["alerts"][0];
                    let label = |name: &str| alert["labels"][name].as_str().unwrap().to_owned();
                    format!(
                        "{} {} {} {} {}",
                        e.notifier,
                        label("alertname"),
                        label("device"),
                        label("severity"),
                        alert["status"].as_str().unwrap()
                    )
                })
                .collect();
            entries.sort();
            entries
        };
        alerting
            .observe("hot", &[obs("oven-1", 1, 85.0)])
            .await
            .unwrap();
        alerting
            .observe("hot", &[obs("line2-oven", 1, 85.0)])
            .await
            .unwrap();
        alerting
            .observe("warm", &[obs("line2-oven", 1, 85.0)])
            .await
            .unwrap();
        let hot = |key: &str| alert_id("hot", key, S);
        assert_eq!(
            queued().await,
            [
                "line2 hot line2-oven critical firing",
                "on-call hot line2-oven critical firing",
                "on-call hot oven-1 critical firing",
            ]
        );
        // Told of oven-1's firing (recorded as a delivery would), the on-call hears its
        // critical label set resolve when `hot` becomes a warning; line 2 was never told of
        // oven-1. The critical firings of line2-oven, still queued, were never seen: they go,
        // and nobody hears that label set resolve. The warning label set fires for the routes
        // that take it: line 2's, for its device.
        alerting
            .db()
            .record_notified(&[hot("oven-1")], "on-call", now_ns())
            .await
            .unwrap();
        alerting
            .define_rule(
                Rule {
                    severity: "warning".into(),
                    ..rule()
                },
                true,
            )
            .await
            .unwrap();
        let redefined = queued().await;
        assert_eq!(
            redefined,
            [
                "line2 hot line2-oven warning firing",
                "on-call hot oven-1 critical resolved",
            ]
        );
        // When they clear, the warning label set resolves where it fired: line 2 only.
        alerting
            .observe("hot", &[obs("oven-1", 2, 60.0), obs("line2-oven", 2, 60.0)])
            .await
            .unwrap();
        let after = queued().await;
        let added: Vec<&String> = after.iter().filter(|e| !redefined.contains(e)).collect();
        assert_eq!(
            added,
            ["line2 hot line2-oven warning resolved"],
            "{after:?}"
        );

        // `warm` firing on line2-oven reached nobody (a warning; line 2 takes `h*` rules).
        // Redefined as critical, it goes to the on-call now, while it fires.
        let warm_id = alert_id("warm", "line2-oven", S);
        alerting
            .define_rule(
                Rule {
                    severity: "critical".into(),
                    ..warm
                },
                true,
            )
            .await
            .unwrap();
        let warm_queued: Vec<String> = queued()
            .await
            .into_iter()
            .filter(|e| e.contains(" warm "))
            .collect();
        assert_eq!(warm_queued, ["on-call warm line2-oven critical firing"]);
        assert_eq!(
            alerting.db().get(&warm_id).await.unwrap().severity,
            "critical"
        );
    }

    /// A firing still queued when its alert is silenced is dropped at delivery, so under the
    /// silence its resolution is not sent either: the receiver never saw the firing.
    #[tokio::test]
    async fn a_silenced_alert_whose_firing_never_went_out_resolves_quietly() {
        let dir = tempfile::tempdir().unwrap();
        let alerting = alerting_in(dir.path(), vec![refused_webhook()]).await;
        alerting
            .observe("hot", &[obs("oven-1", 10, 85.0)])
            .await
            .unwrap();
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 1);
        alerting
            .silence(
                None,
                Some("oven-*".into()),
                std::time::Duration::from_secs(3600),
                "ana",
                None,
            )
            .await
            .unwrap();
        alerting
            .observe("hot", &[obs("oven-1", 20, 60.0)])
            .await
            .unwrap();
        assert_eq!(
            alerting.db().outbox_len().await.unwrap(),
            1,
            "no resolution queued beside the firing the silence drops"
        );
        // Delivered, the firing would have told the receiver: then the resolution goes out.
        alerting
            .observe("hot", &[obs("oven-2", 30, 85.0)])
            .await
            .unwrap();
        let oven2 = alert_id("hot", "oven-2", 30 * S);
        alerting
            .db()
            .record_notified(std::slice::from_ref(&oven2), "ops", now_ns())
            .await
            .unwrap();
        let before = alerting.db().outbox_len().await.unwrap();
        alerting
            .observe("hot", &[obs("oven-2", 40, 60.0)])
            .await
            .unwrap();
        assert_eq!(alerting.db().outbox_len().await.unwrap(), before + 1);
    }

    /// A rule gone from the configuration at a restart resolves its firing alerts and tells
    /// the receivers, as a removal through the API does.
    #[tokio::test]
    async fn a_rule_gone_at_a_restart_resolves_its_firing_alerts_with_a_notification() {
        let dir = tempfile::tempdir().unwrap();
        let alerting = alerting_in(dir.path(), vec![refused_webhook()]).await;
        alerting
            .observe("hot", &[obs("oven-1", 10, 85.0)])
            .await
            .unwrap();
        drop(alerting);
        let alerting = Alerting::open(
            &dir.path().join("a.db"),
            Vec::new(),
            vec![refused_webhook()],
            "http://x".into(),
        )
        .await
        .unwrap();
        let alert = alerting
            .db()
            .get(&alert_id("hot", "oven-1", 10 * S))
            .await
            .unwrap();
        assert_eq!(alert.state, AlertState::Resolved);
        assert_eq!(
            alerting.db().outbox_len().await.unwrap(),
            2,
            "firing, then resolved"
        );
    }

    fn expecting(rule: &str) -> BTreeMap<String, Vec<String>> {
        [(rule.to_owned(), Vec::new())].into()
    }

    /// Listing by patterns: `*` is the only special character, as in silences, so a key
    /// with `?` or `[` in it is matched literally.
    #[tokio::test]
    async fn alerts_are_found_by_rule_and_device_patterns() {
        let dir = tempfile::tempdir().unwrap();
        let alerting = alerting_in(dir.path(), Vec::new()).await;
        alerting
            .observe(
                "hot",
                &[
                    obs("oven-1", 1, 85.0),
                    obs("oven-2", 1, 85.0),
                    obs("kiln[a]?", 1, 85.0),
                ],
            )
            .await
            .unwrap();
        let keys = |rule: Option<&str>, key: Option<&str>| {
            let query = db::AlertQuery {
                state: Some(AlertState::Firing),
                rule: rule.map(str::to_owned),
                key: key.map(str::to_owned),
                changed_after: None,
            };
            let db = alerting.db().clone();
            async move {
                let mut keys: Vec<String> = db
                    .find(&query, 10)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|a| a.key)
                    .collect();
                keys.sort();
                keys
            }
        };
        assert_eq!(keys(None, Some("oven-*")).await, ["oven-1", "oven-2"]);
        assert_eq!(keys(Some("h*"), Some("*-2")).await, ["oven-2"]);
        assert_eq!(keys(None, Some("kiln[a]?")).await, ["kiln[a]?"]);
        assert!(
            keys(None, Some("kiln?a]?")).await.is_empty(),
            "`?` is literal"
        );
        assert!(keys(Some("cold"), None).await.is_empty());
    }

    #[tokio::test]
    async fn a_pending_alert_that_clears_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut slow = rule();
        slow.for_ns = 60 * S;
        let alerting = Alerting::open(
            &dir.path().join("a.db"),
            vec![slow],
            vec![refused_webhook()],
            "http://x".into(),
        )
        .await
        .unwrap();
        alerting
            .observe("hot", &[obs("oven-1", 0, 85.0)])
            .await
            .unwrap();
        assert_eq!(
            alerting
                .db()
                .list(Some(AlertState::Pending), 10)
                .await
                .unwrap()
                .len(),
            1
        );
        alerting
            .observe("hot", &[obs("oven-1", 10, 50.0)])
            .await
            .unwrap();
        assert!(alerting.db().list(None, 10).await.unwrap().is_empty());
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 0);
    }

    /// A real HTTP receiver on 127.0.0.1 that answers 200 and hands over every request body.
    async fn http_receiver() -> (String, tokio::sync::mpsc::Receiver<serde_json::Value>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut data = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = socket.read(&mut buf).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        data.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&data).to_string();
                        let Some((head, body)) = text.split_once("\r\n\r\n") else {
                            continue;
                        };
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() < length {
                            continue;
                        }
                        tx.send(serde_json::from_str(body).unwrap()).await.unwrap();
                        socket
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await
                            .unwrap();
                        return;
                    }
                });
            }
        });
        (url, rx)
    }

    #[tokio::test]
    async fn a_storm_of_state_changes_goes_out_as_one_notification_per_group() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut bodies) = http_receiver().await;
        let wait = std::time::Duration::from_millis(600);
        let webhook = webhook_to(
            &url,
            notify::Grouping {
                by: vec![notify::GroupLabel::Rule],
                wait,
                repeat: std::time::Duration::ZERO,
            },
        );
        let mut cold = rule();
        cold.name = "cold".into();
        cold.condition = Condition::Below {
            fire: 5.0,
            clear: 10.0,
        };
        let alerting = Alerting::open(
            &dir.path().join("a.db"),
            vec![rule(), cold],
            vec![webhook],
            "http://x".into(),
        )
        .await
        .unwrap();
        alerting
            .observe(
                "hot",
                &[
                    obs("oven-1", 1, 85.0),
                    obs("oven-2", 1, 90.0),
                    obs("oven-3", 1, 95.0),
                ],
            )
            .await
            .unwrap();
        alerting
            .observe("cold", &[obs("freezer-1", 1, 1.0)])
            .await
            .unwrap();
        // A change inside the open window joins it; one that fires and resolves inside it is
        // sent once, in its latest state.
        alerting
            .observe("hot", &[obs("oven-4", 2, 99.0)])
            .await
            .unwrap();
        alerting
            .observe("hot", &[obs("oven-4", 3, 50.0)])
            .await
            .unwrap();
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 6);
        assert_eq!(alerting.deliver_due().await.unwrap(), 0, "the groups wait");
        tokio::time::sleep(wait + std::time::Duration::from_millis(100)).await;
        assert_eq!(alerting.deliver_due().await.unwrap(), 2, "one per rule");
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 0);
        let mut got = [bodies.recv().await.unwrap(), bodies.recv().await.unwrap()];
        got.sort_by_key(|b| b["groupLabels"]["alertname"].as_str().unwrap().to_owned());
        let (cold, hot) = (&got[0], &got[1]);
        assert_eq!(cold["alerts"].as_array().unwrap().len(), 1);
        assert_eq!(cold["groupKey"], "{}:{alertname=\"cold\"}");
        let alerts = hot["alerts"].as_array().unwrap();
        let devices: Vec<(&str, &str)> = alerts
            .iter()
            .map(|a| {
                (
                    a["labels"]["device"].as_str().unwrap(),
                    a["status"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            devices,
            [
                ("oven-1", "firing"),
                ("oven-2", "firing"),
                ("oven-3", "firing"),
                ("oven-4", "resolved")
            ]
        );
        assert_eq!(hot["status"], "firing");
        assert_eq!(hot["groupLabels"], serde_json::json!({"alertname": "hot"}));
        assert_eq!(hot["commonLabels"]["alertname"], "hot");
        assert_eq!(hot["commonLabels"]["severity"], "critical");
        assert!(hot["commonLabels"].get("device").is_none(), "{hot}");
        // The next change opens a new window.
        alerting
            .observe("hot", &[obs("oven-1", 4, 10.0)])
            .await
            .unwrap();
        assert_eq!(alerting.deliver_due().await.unwrap(), 0);
        tokio::time::sleep(wait + std::time::Duration::from_millis(100)).await;
        assert_eq!(alerting.deliver_due().await.unwrap(), 1);
        // One alert of the group resolves while two still fire: the group's body says so, as
        // Alertmanager's does, under the group's key, so a receiver that keys incidents by
        // `groupKey` keeps the incident open.
        let partly = bodies.recv().await.unwrap();
        assert_eq!(partly["groupKey"], "{}:{alertname=\"hot\"}", "{partly}");
        assert_eq!(partly["status"], "firing", "{partly}");
        let states: Vec<(&str, &str)> = partly["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["labels"]["device"].as_str().unwrap(),
                    a["status"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            states,
            [
                ("oven-1", "resolved"),
                ("oven-2", "firing"),
                ("oven-3", "firing")
            ]
        );
        // The last one resolving resolves the group.
        alerting
            .observe("hot", &[obs("oven-2", 5, 10.0), obs("oven-3", 5, 10.0)])
            .await
            .unwrap();
        tokio::time::sleep(wait + std::time::Duration::from_millis(100)).await;
        assert_eq!(alerting.deliver_due().await.unwrap(), 1);
        let resolved = bodies.recv().await.unwrap();
        assert_eq!(resolved["status"], "resolved", "{resolved}");
        assert_eq!(resolved["alerts"].as_array().unwrap().len(), 2);
    }

    /// A silence added after an alert fired stops its queued notification; when the silence
    /// ends with the alert still firing, the alert is notified.
    #[tokio::test]
    async fn a_silence_holds_back_queued_notifications_and_its_end_releases_them() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut bodies) = http_receiver().await;
        let webhook = webhook_to(&url, notify::Grouping::default());
        let alerting = alerting_in(dir.path(), vec![webhook]).await;
        alerting
            .observe("hot", &[obs("oven-1", 1, 85.0)])
            .await
            .unwrap();
        let id = alert_id("hot", "oven-1", S);
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 1);
        let quiet = std::time::Duration::from_millis(800);
        alerting
            .silence(None, Some("oven-1".into()), quiet, "ana", None)
            .await
            .unwrap();
        assert_eq!(alerting.refresh_silences().await.unwrap(), 0);
        assert!(alerting.db().get(&id).await.unwrap().silenced);
        assert_eq!(alerting.deliver_due().await.unwrap(), 0);
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 0, "dropped");
        assert_eq!(alerting.refresh_silences().await.unwrap(), 0, "still quiet");

        tokio::time::sleep(quiet + std::time::Duration::from_millis(100)).await;
        assert_eq!(alerting.refresh_silences().await.unwrap(), 1);
        assert!(!alerting.db().get(&id).await.unwrap().silenced);
        assert_eq!(alerting.refresh_silences().await.unwrap(), 0, "once");
        assert_eq!(alerting.deliver_due().await.unwrap(), 1);
        let body = bodies.recv().await.unwrap();
        assert_eq!(body["status"], "firing", "{body}");
        assert_eq!(body["alerts"][0]["labels"]["device"], "oven-1", "{body}");
    }

    /// While a `silent` alert fires for a device, that device's `hot` alerts are held back:
    /// one queued before is dropped, a new one is not notified, reminders skip them, the
    /// listing names the inhibitor; when the inhibitor resolves, a target still firing is
    /// notified. Another device's alerts are not held back.
    #[tokio::test]
    async fn an_inhibiting_alert_holds_back_its_devices_target_alerts_while_it_fires() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut bodies) = http_receiver().await;
        let webhook = webhook_to(&url, notify::Grouping::default());
        let silent = Rule {
            name: "silent".into(),
            ..rule()
        };
        let alerting = Alerting::open(
            &dir.path().join("a.db"),
            vec![rule(), silent],
            vec![webhook],
            "http://x".into(),
        )
        .await
        .unwrap();
        let known = ["hot".to_owned(), "silent".to_owned()];
        let err = alerting
            .set_inhibitions(
                vec![Inhibition {
                    source: "silnet".into(),
                    targets: vec!["hot".into()],
                    same_device: true,
                }],
                &known,
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("inhibitions[0]") && err.contains("`silnet`") && err.contains("hot"),
            "{err}"
        );
        alerting
            .set_inhibitions(
                vec![Inhibition {
                    source: "silent".into(),
                    targets: vec!["h*".into()],
                    same_device: true,
                }],
                &known,
            )
            .unwrap();
        assert_eq!(alerting.inhibition_naming("silent"), Some(0));
        assert_eq!(
            alerting.inhibition_naming("hot"),
            None,
            "named by a pattern only"
        );

        // oven-1's `hot` fires and is queued; then oven-1's `silent` fires.
        alerting
            .observe("hot", &[obs("oven-1", 1, 85.0)])
            .await
            .unwrap();
        alerting
            .observe("silent", &[obs("oven-1", 2, 85.0)])
            .await
            .unwrap();
        let hot_1 = alert_id("hot", "oven-1", S);
        let silent_1 = alert_id("silent", "oven-1", 2 * S);
        assert_eq!(alerting.refresh_silences().await.unwrap(), 0);
        assert!(alerting.db().get(&hot_1).await.unwrap().silenced);
        // The queued `hot` firing is dropped; the `silent` one goes out.
        assert_eq!(alerting.deliver_due().await.unwrap(), 1);
        let body = bodies.recv().await.unwrap();
        assert_eq!(body["alerts"][0]["labels"]["alertname"], "silent", "{body}");
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 0);

        // A `hot` alert of another device is not held back; one of oven-1 fired now is.
        alerting
            .observe("hot", &[obs("oven-2", 3, 85.0)])
            .await
            .unwrap();
        let mut listed = vec![
            alerting.db().get(&hot_1).await.unwrap(),
            alerting
                .db()
                .get(&alert_id("hot", "oven-2", 3 * S))
                .await
                .unwrap(),
        ];
        alerting.explain_inhibited(&mut listed).await.unwrap();
        assert_eq!(listed[0].inhibited_by.as_deref(), Some(silent_1.as_str()));
        assert_eq!(listed[1].inhibited_by, None);
        assert!(!listed[1].silenced);
        assert_eq!(alerting.deliver_due().await.unwrap(), 1);
        let body = bodies.recv().await.unwrap();
        assert_eq!(body["alerts"][0]["labels"]["device"], "oven-2", "{body}");

        // The inhibitor resolves: oven-1's `hot`, still firing, is notified now.
        alerting
            .observe("silent", &[obs("oven-1", 4, 10.0)])
            .await
            .unwrap();
        assert_eq!(alerting.refresh_silences().await.unwrap(), 1);
        assert!(!alerting.db().get(&hot_1).await.unwrap().silenced);
        assert_eq!(alerting.deliver_due().await.unwrap(), 2);
        let mut heard: Vec<(String, String)> = Vec::new();
        for _ in 0..2 {
            let body = bodies.recv().await.unwrap();
            let alert = &body["alerts"][0];
            heard.push((
                alert["labels"]["alertname"].as_str().unwrap().to_owned(),
                alert["status"].as_str().unwrap().to_owned(),
            ));
        }
        heard.sort();
        assert_eq!(
            heard,
            [
                ("hot".to_owned(), "firing".to_owned()),
                ("silent".to_owned(), "resolved".to_owned())
            ]
        );
        let mut listed = vec![alerting.db().get(&hot_1).await.unwrap()];
        alerting.explain_inhibited(&mut listed).await.unwrap();
        assert_eq!(listed[0].inhibited_by, None);

        // Inhibitions both ways: two alerts that would hold each other back are both
        // notified.
        alerting
            .set_inhibitions(
                vec![
                    Inhibition {
                        source: "silent".into(),
                        targets: vec!["hot".into()],
                        same_device: true,
                    },
                    Inhibition {
                        source: "hot".into(),
                        targets: vec!["silent".into()],
                        same_device: true,
                    },
                ],
                &known,
            )
            .unwrap();
        alerting
            .observe("silent", &[obs("oven-1", 5, 85.0)])
            .await
            .unwrap();
        let mut both = vec![
            alerting.db().get(&hot_1).await.unwrap(),
            alerting
                .db()
                .get(&alert_id("silent", "oven-1", 5 * S))
                .await
                .unwrap(),
        ];
        alerting.explain_inhibited(&mut both).await.unwrap();
        assert!(
            both.iter().all(|a| a.inhibited_by.is_none() && !a.silenced),
            "{both:?}"
        );
    }

    /// One pass changes many alerts; `changed_after` with the last alert's `updated_at` and id
    /// reads every one of them, page by page, once, and then a later change, even one whose
    /// writer read the clock before the last change committed; the newest-first listing is
    /// in one order every time.
    #[tokio::test]
    async fn every_change_can_be_read_page_by_page_once_in_commit_order() {
        let dir = tempfile::tempdir().unwrap();
        let alerting = alerting_in(dir.path(), Vec::new()).await;
        let ovens: Vec<Observation> = (0..7).map(|i| obs(&format!("oven-{i}"), 1, 85.0)).collect();
        alerting.observe("hot", &ovens).await.unwrap();
        let newest_first = alerting
            .db()
            .find(&db::AlertQuery::default(), 100)
            .await
            .unwrap();
        assert_eq!(newest_first.len(), 7);
        let times: Vec<i64> = newest_first
            .iter()
            .map(|a| model::parse_rfc3339(&a.updated_at).unwrap())
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] > w[1]),
            "one pass, each change its own time: {times:?}"
        );
        let ids: Vec<String> = newest_first.iter().map(|a| a.id.clone()).collect();

        let read_all = |after: Option<(i64, String)>| {
            let db = alerting.db().clone();
            async move {
                let mut seen = Vec::new();
                let mut cursor = after;
                loop {
                    let query = db::AlertQuery {
                        changed_after: cursor.clone(),
                        ..db::AlertQuery::default()
                    };
                    let page = db.find(&query, 3).await.unwrap();
                    let Some(last) = page.last() else {
                        return (seen, cursor);
                    };
                    cursor = Some((
                        model::parse_rfc3339(&last.updated_at).unwrap(),
                        last.id.clone(),
                    ));
                    seen.extend(page.into_iter().map(|a| a.id));
                }
            }
        };
        let (seen, cursor) = read_all(Some((0, String::new()))).await;
        let expected: Vec<String> = ids.iter().rev().cloned().collect();
        assert_eq!(seen, expected, "each once, oldest change first");
        // A later change (oven-3 cools down) is the only thing after the cursor.
        alerting
            .observe("hot", &[obs("oven-3", 2, 10.0)])
            .await
            .unwrap();
        let (later, cursor) = read_all(cursor).await;
        assert_eq!(later, [alert_id("hot", "oven-3", S)]);
        // A writer that read the clock long before (here: at 1 ns) but commits now still
        // lands after the cursor, not behind it.
        let ack = Ack {
            by: "ana".into(),
            at: model::rfc3339(1),
            feedback: Feedback::TruePositive,
            comment: None,
        };
        alerting
            .db()
            .set_ack(&ids[6], &ack, false, 1)
            .await
            .unwrap();
        let (late, _) = read_all(cursor).await;
        assert_eq!(late, [ids[6].clone()]);
    }

    /// Erasing a person replaces their name as acknowledger and silence author, drops their
    /// comments, and leaves everyone else's as it was.
    #[tokio::test]
    async fn an_erased_person_leaves_acknowledgements_and_silences_nameless() {
        let dir = tempfile::tempdir().unwrap();
        let alerting = alerting_in(dir.path(), vec![refused_webhook()]).await;
        alerting
            .observe("hot", &[obs("oven-1", 1, 85.0), obs("oven-2", 1, 85.0)])
            .await
            .unwrap();
        let (hers, his) = (alert_id("hot", "oven-1", S), alert_id("hot", "oven-2", S));
        for (id, by) in [(&hers, "ana"), (&his, "bob")] {
            alerting
                .ack(
                    id,
                    by,
                    Feedback::TruePositive,
                    Some(format!("{by}'s note")),
                    false,
                )
                .await
                .unwrap();
        }
        for (id, by) in [("s1", "ana"), ("s2", "bob")] {
            alerting
                .db()
                .add_silence(&Silence {
                    id: id.into(),
                    rule: None,
                    key: Some("oven-1".into()),
                    from: None,
                    until: model::rfc3339(4_000_000_000 * S),
                    by: by.into(),
                    comment: Some(format!("{by}'s reason")),
                    ended_by: None,
                })
                .await
                .unwrap();
        }
        let before = alerting.db().get(&hers).await.unwrap().updated_at;
        let (alerts, silences) = alerting
            .db()
            .erase_person("ana", "(erased)", now_ns())
            .await
            .unwrap();
        assert_eq!((alerts, silences), (1, 1));
        let erased = alerting.db().get(&hers).await.unwrap();
        let ack = erased.ack.clone().unwrap();
        assert_eq!((ack.by.as_str(), ack.comment), ("(erased)", None));
        assert_eq!(ack.feedback, Feedback::TruePositive, "the verdict stays");
        assert_ne!(
            erased.updated_at, before,
            "a change the dashboard's stream sees"
        );
        let kept = alerting.db().get(&his).await.unwrap().ack.unwrap();
        assert_eq!(
            (kept.by.as_str(), kept.comment.as_deref()),
            ("bob", Some("bob's note"))
        );
        let silences = alerting.db().silences().await.unwrap();
        let by: Vec<(&str, Option<&str>)> = silences
            .iter()
            .map(|s| (s.by.as_str(), s.comment.as_deref()))
            .collect();
        assert!(by.contains(&("(erased)", None)), "{by:?}");
        assert!(by.contains(&("bob", Some("bob's reason"))), "{by:?}");
    }

    /// Resolved alerts unchanged for longer than the retention are deleted with their queued
    /// notifications; firing ones are kept whatever their age; without a retention, nothing.
    #[tokio::test]
    async fn resolved_alerts_past_the_retention_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let alerting = alerting_in(dir.path(), vec![refused_webhook()]).await;
        alerting
            .observe("hot", &[obs("oven-1", 1, 85.0), obs("oven-2", 1, 85.0)])
            .await
            .unwrap();
        alerting
            .observe("hot", &[obs("oven-1", 2, 10.0)])
            .await
            .unwrap();
        assert_eq!(
            alerting.forget_old_alerts().await.unwrap(),
            0,
            "no retention"
        );
        alerting.set_retention(Some(std::time::Duration::from_millis(1)));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert_eq!(alerting.forget_old_alerts().await.unwrap(), 1);
        assert!(
            alerting
                .db()
                .get(&alert_id("hot", "oven-1", S))
                .await
                .is_err()
        );
        let firing = alerting
            .db()
            .get(&alert_id("hot", "oven-2", S))
            .await
            .unwrap();
        assert_eq!(firing.state, AlertState::Firing);
        // Only oven-2's firing is still queued for the unreachable receiver.
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 1);
    }

    /// A pending alert survives a restart with its `for` still counting, unless its evaluator
    /// does not read on from where it stopped; an alert never ends before it fired.
    #[tokio::test]
    async fn pending_alerts_are_restored_and_an_alert_never_ends_before_it_fired() {
        let dir = tempfile::tempdir().unwrap();
        let slow = Rule {
            for_ns: 30 * S,
            ..rule()
        };
        let path = dir.path().join("a.db");
        let open = || Alerting::open(&path, vec![slow.clone()], Vec::new(), "http://x".into());
        let alerting = open().await.unwrap();
        alerting
            .observe("hot", &[obs("oven-1", 10, 85.0), obs("oven-2", 10, 85.0)])
            .await
            .unwrap();
        // Not an alert yet: it may be deleted, and an acknowledgement would point at nothing.
        let err = alerting
            .ack(
                &alert_id("hot", "oven-1", 10 * S),
                "ana",
                Feedback::TruePositive,
                None,
                false,
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("pending"), "{err}");
        drop(alerting);
        let alerting = open().await.unwrap();
        let t = alerting.tick(40 * S, &expecting("hot")).await.unwrap();
        assert_eq!(t.len(), 2, "restored pending alerts fire on time: {t:?}");
        let fired = alerting
            .db()
            .get(&alert_id("hot", "oven-1", 10 * S))
            .await
            .unwrap();
        assert_eq!(fired.fired_at.as_deref(), Some("1970-01-01T00:00:40.000Z"));
        // A clearing row that arrives late, dated before the firing.
        alerting
            .observe("hot", &[obs("oven-1", 20, 10.0)])
            .await
            .unwrap();
        let resolved = alerting
            .db()
            .get(&alert_id("hot", "oven-1", 10 * S))
            .await
            .unwrap();
        assert_eq!(resolved.resolved_at, resolved.fired_at);

        // An evaluator that starts afresh drops them instead.
        alerting
            .observe("hot", &[obs("oven-3", 50, 85.0)])
            .await
            .unwrap();
        drop(alerting);
        let alerting = open().await.unwrap();
        alerting.drop_pending("hot").await.unwrap();
        assert!(
            alerting
                .tick(100 * S, &expecting("hot"))
                .await
                .unwrap()
                .is_empty(),
            "a dropped pending alert does not fire"
        );
        assert!(
            alerting
                .db()
                .get(&alert_id("hot", "oven-3", 50 * S))
                .await
                .is_err()
        );
    }

    /// A severity changed in the configuration while Fabrik was down relabels the open
    /// alerts at start, as a change through the API does.
    #[tokio::test]
    async fn a_severity_changed_across_a_restart_relabels_open_alerts() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut bodies) = http_receiver().await;
        let path = dir.path().join("a.db");
        let open = |severity: &str| {
            Alerting::open(
                &path,
                vec![Rule {
                    severity: severity.into(),
                    ..rule()
                }],
                vec![webhook_to(&url, notify::Grouping::default())],
                "http://x".into(),
            )
        };
        let alerting = open("critical").await.unwrap();
        alerting
            .observe("hot", &[obs("oven-1", 1, 85.0)])
            .await
            .unwrap();
        assert_eq!(alerting.deliver_due().await.unwrap(), 1);
        assert_eq!(bodies.recv().await.unwrap()["status"], "firing");
        drop(alerting);
        let alerting = open("warning").await.unwrap();
        assert_eq!(alerting.deliver_due().await.unwrap(), 2);
        let got: Vec<(String, String)> =
            [bodies.recv().await.unwrap(), bodies.recv().await.unwrap()]
                .iter()
                .map(|b| {
                    (
                        b["alerts"][0]["labels"]["severity"]
                            .as_str()
                            .unwrap()
                            .to_owned(),
                        b["status"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
        assert_eq!(
            got,
            [
                ("critical".to_owned(), "resolved".to_owned()),
                ("warning".to_owned(), "firing".to_owned())
            ]
        );
    }

    /// A silence names what it silences, a rule by its name, and ends within a year.
    #[tokio::test]
    async fn a_silence_must_say_what_it_silences() {
        let dir = tempfile::tempdir().unwrap();
        let alerting = alerting_in(dir.path(), Vec::new()).await;
        let hour = std::time::Duration::from_secs(3600);
        let refused = |result: Result<Silence, AlertError>| match result {
            Err(AlertError::Invalid(why)) => why,
            other => panic!("accepted: {other:?}"),
        };
        let why = refused(alerting.silence(None, None, hour, "ana", None).await);
        assert!(why.contains("`*` silences every alert"), "{why}");
        let why = refused(
            alerting
                .silence(Some(" ".into()), None, hour, "ana", None)
                .await,
        );
        assert!(why.contains("empty"), "{why}");
        let why = refused(
            alerting
                .silence(Some("hto".into()), None, hour, "ana", None)
                .await,
        );
        assert!(
            why.contains("no alert rule is named `hto` (rules: hot)"),
            "{why}"
        );
        let why = refused(
            alerting
                .silence(Some("*".into()), None, hour * 24 * 400, "ana", None)
                .await,
        );
        assert!(why.contains("366 days"), "{why}");
        assert!(
            alerting
                .silence(Some("*".into()), None, hour, "ana", None)
                .await
                .is_ok()
        );
        assert!(
            alerting
                .silence(Some("hot".into()), Some("oven-*".into()), hour, "ana", None)
                .await
                .is_ok()
        );
    }

    /// A silence over an alert its receiver was already told of holds nothing back: when it
    /// ends, the receiver is not paged again for an alert that did not change.
    #[tokio::test]
    async fn the_end_of_a_silence_pages_no_one_already_told() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut bodies) = http_receiver().await;
        let webhook = webhook_to(&url, notify::Grouping::default());
        let alerting = alerting_in(dir.path(), vec![webhook]).await;
        alerting
            .observe("hot", &[obs("oven-1", 1, 85.0)])
            .await
            .unwrap();
        assert_eq!(alerting.deliver_due().await.unwrap(), 1);
        assert_eq!(bodies.recv().await.unwrap()["status"], "firing");
        let quiet = std::time::Duration::from_millis(300);
        alerting
            .silence(None, Some("oven-*".into()), quiet, "ana", None)
            .await
            .unwrap();
        assert_eq!(alerting.refresh_silences().await.unwrap(), 0);
        tokio::time::sleep(quiet + std::time::Duration::from_millis(100)).await;
        assert_eq!(alerting.refresh_silences().await.unwrap(), 0);
        let id = alert_id("hot", "oven-1", S);
        assert!(!alerting.db().get(&id).await.unwrap().silenced);
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 0);
    }

    /// A firing that failed and waits out its retry backoff is superseded when the alert's
    /// resolution, due now, gets through: the receiver is left with the resolution, not with
    /// the stale firing delivered after it.
    /// Puts every queued notification's next attempt an hour away, as a long backoff does,
    /// so a slow test run cannot make them due again.
    async fn postpone_all(alerting: &Alerting) {
        for entry in alerting.db().due(i64::MAX, 100).await.unwrap() {
            alerting
                .db()
                .retry_later(entry.id, now_ns() + 3600 * S, "receiver down")
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_delivered_resolution_supersedes_its_firing_waiting_to_be_retried() {
        let dir = tempfile::tempdir().unwrap();
        let down = alerting_in(dir.path(), vec![refused_webhook()]).await;
        down.observe("hot", &[obs("oven-1", 1, 85.0)])
            .await
            .unwrap();
        assert_eq!(down.deliver_due().await.unwrap(), 0);
        postpone_all(&down).await;
        down.observe("hot", &[obs("oven-1", 2, 10.0)])
            .await
            .unwrap();
        // The firing waits for its retry; the resolution was queued after it.
        let queued = down.db().due(i64::MAX, 10).await.unwrap();
        assert_eq!(queued.len(), 2, "{queued:?}");
        let not_due = down.db().due(now_ns(), 10).await.unwrap();
        assert_eq!(not_due.len(), 1, "{not_due:?}");
        assert!(not_due[0].payload.contains("\"resolved\""), "{not_due:?}");
        drop(down);

        // The receiver is back (the notifier reconfigured to it, as after a restart).
        let (url, mut bodies) = http_receiver().await;
        let up = alerting_in(
            dir.path(),
            vec![webhook_to(&url, notify::Grouping::default())],
        )
        .await;
        assert_eq!(up.deliver_due().await.unwrap(), 1);
        let body = bodies.recv().await.unwrap();
        assert_eq!(body["status"], "resolved", "{body}");
        assert_eq!(
            up.db().outbox_len().await.unwrap(),
            0,
            "the stale firing is still queued"
        );
    }

    /// The next episode's firing, delivered first, supersedes the previous episode's firing
    /// and resolution still waiting out their backoff: receivers key an incident by its
    /// labels, and the stale resolution delivered last would close one that is open.
    #[tokio::test]
    async fn a_later_episode_supersedes_the_queued_states_of_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let down = alerting_in(dir.path(), vec![refused_webhook()]).await;
        down.observe("hot", &[obs("oven-1", 1, 85.0)])
            .await
            .unwrap();
        assert_eq!(down.deliver_due().await.unwrap(), 0);
        down.observe("hot", &[obs("oven-1", 2, 10.0)])
            .await
            .unwrap();
        assert_eq!(down.deliver_due().await.unwrap(), 0);
        postpone_all(&down).await;
        // Both wait out a backoff; the second episode fires now.
        down.observe("hot", &[obs("oven-1", 3, 90.0)])
            .await
            .unwrap();
        assert_eq!(down.db().due(now_ns(), 10).await.unwrap().len(), 1);
        drop(down);

        let (url, mut bodies) = http_receiver().await;
        let up = alerting_in(
            dir.path(),
            vec![webhook_to(&url, notify::Grouping::default())],
        )
        .await;
        assert_eq!(up.deliver_due().await.unwrap(), 1);
        let body = bodies.recv().await.unwrap();
        assert_eq!(body["status"], "firing", "{body}");
        assert_eq!(
            body["alerts"][0]["startsAt"].as_str().map(|s| &s[..19]),
            Some("1970-01-01T00:00:03"),
            "{body}"
        );
        assert_eq!(
            up.db().outbox_len().await.unwrap(),
            0,
            "stale states queued"
        );
    }

    /// A receiver told of a firing hears of its resolution even if a silence came in between
    /// (else its incident stays open); one never told of it hears nothing. What the worker
    /// queues from an earlier read is not queued once the alert stopped firing.
    #[tokio::test]
    async fn resolutions_reach_the_receivers_told_of_the_firing_despite_a_silence() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut bodies) = http_receiver().await;
        let webhook = webhook_to(&url, notify::Grouping::default());
        let alerting = alerting_in(dir.path(), vec![webhook]).await;
        alerting
            .observe("hot", &[obs("oven-1", 1, 85.0)])
            .await
            .unwrap();
        assert_eq!(alerting.deliver_due().await.unwrap(), 1);
        assert_eq!(bodies.recv().await.unwrap()["status"], "firing");
        alerting
            .silence(
                None,
                Some("oven-*".into()),
                std::time::Duration::from_secs(3600),
                "ana",
                None,
            )
            .await
            .unwrap();
        // oven-2 fires and resolves under the silence: nobody was told, nobody hears.
        alerting
            .observe("hot", &[obs("oven-2", 2, 90.0), obs("oven-2", 3, 10.0)])
            .await
            .unwrap();
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 0);
        // oven-1 resolves under the silence: its receiver hears it.
        alerting
            .observe("hot", &[obs("oven-1", 4, 10.0)])
            .await
            .unwrap();
        assert_eq!(alerting.deliver_due().await.unwrap(), 1);
        let resolved = bodies.recv().await.unwrap();
        assert_eq!(resolved["status"], "resolved", "{resolved}");
        assert_eq!(resolved["alerts"][0]["labels"]["device"], "oven-1");
        // A notification made from a read taken while it fired is not queued now.
        let id = alert_id("hot", "oven-1", S);
        let queued = alerting
            .db()
            .enqueue_grouped(
                "ops",
                "{}",
                now_ns(),
                None,
                Some(&id),
                "s",
                Some(db::StillFiring {
                    severity: "critical",
                    unacknowledged: false,
                }),
            )
            .await
            .unwrap();
        assert!(!queued);
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 0);
    }

    /// A firing alert is notified again every `repeat_interval` after its last notification,
    /// once per interval; not while silenced, and not after it resolved.
    #[tokio::test]
    async fn a_still_firing_alert_is_notified_again_after_the_repeat_interval() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut bodies) = http_receiver().await;
        let repeat = std::time::Duration::from_millis(400);
        let webhook = webhook_to(
            &url,
            notify::Grouping {
                repeat,
                ..notify::Grouping::default()
            },
        );
        let alerting = alerting_in(dir.path(), vec![webhook]).await;
        alerting
            .observe("hot", &[obs("oven-1", 1, 85.0)])
            .await
            .unwrap();
        assert_eq!(
            alerting.queue_reminders().await.unwrap(),
            0,
            "first notification still queued"
        );
        assert_eq!(alerting.deliver_due().await.unwrap(), 1);
        assert_eq!(bodies.recv().await.unwrap()["status"], "firing");
        assert_eq!(alerting.queue_reminders().await.unwrap(), 0, "too soon");

        let later = repeat + std::time::Duration::from_millis(100);
        tokio::time::sleep(later).await;
        assert_eq!(alerting.queue_reminders().await.unwrap(), 1);
        assert_eq!(alerting.queue_reminders().await.unwrap(), 0, "queued once");
        assert_eq!(alerting.deliver_due().await.unwrap(), 1);
        let reminder = bodies.recv().await.unwrap();
        assert_eq!(reminder["status"], "firing", "{reminder}");
        assert_eq!(reminder["alerts"][0]["labels"]["device"], "oven-1");
        assert_eq!(alerting.queue_reminders().await.unwrap(), 0, "just told");

        // Acknowledged: someone has it; no more reminders, and one queued before the
        // acknowledgement is dropped, not delivered.
        tokio::time::sleep(later).await;
        assert_eq!(alerting.queue_reminders().await.unwrap(), 1);
        let id = alert_id("hot", "oven-1", S);
        alerting
            .ack(&id, "ana", Feedback::TruePositive, None, false)
            .await
            .unwrap();
        assert_eq!(alerting.deliver_due().await.unwrap(), 0);
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 0);
        assert!(
            bodies.try_recv().is_err(),
            "a reminder after the acknowledgement"
        );
        tokio::time::sleep(later).await;
        assert_eq!(alerting.queue_reminders().await.unwrap(), 0, "acknowledged");
        // Also when the acknowledgement lands after the reminder pass read the alert: the
        // statement that queues it checks.
        let reminder_of_earlier_read = db::StillFiring {
            severity: "critical",
            unacknowledged: true,
        };
        let queued = alerting
            .db()
            .enqueue_grouped(
                "ops",
                "{}",
                now_ns(),
                None,
                Some(&id),
                "s",
                Some(reminder_of_earlier_read),
            )
            .await
            .unwrap();
        assert!(!queued, "a reminder queued after the acknowledgement");

        // Silenced: no reminder.
        alerting
            .silence(None, Some("oven-1".into()), later * 4, "ana", None)
            .await
            .unwrap();
        tokio::time::sleep(later).await;
        assert_eq!(alerting.queue_reminders().await.unwrap(), 0);
        // Resolved: nothing to remind of.
        alerting
            .observe("hot", &[obs("oven-1", 2, 10.0)])
            .await
            .unwrap();
        tokio::time::sleep(later * 4).await;
        assert_eq!(alerting.queue_reminders().await.unwrap(), 0);
    }

    /// The outbox worker and the operator change an alert while its rule's evaluator may be
    /// writing a transition read before: neither the acknowledgement nor the transition is
    /// lost.
    #[tokio::test]
    async fn acknowledgements_and_silence_flags_survive_a_concurrent_transition() {
        let dir = tempfile::tempdir().unwrap();
        let alerting = alerting_in(dir.path(), Vec::new()).await;
        alerting
            .observe("hot", &[obs("oven-1", 1, 85.0)])
            .await
            .unwrap();
        let id = alert_id("hot", "oven-1", S);
        // A transition read the alert, then the operator acknowledged it, then the
        // transition was written.
        let mut read_before = alerting.db().get(&id).await.unwrap();
        alerting
            .ack(&id, "ana", Feedback::TruePositive, None, false)
            .await
            .unwrap();
        read_before.state = AlertState::Resolved;
        alerting.db().upsert(&read_before, now_ns()).await.unwrap();
        let stored = alerting.db().get(&id).await.unwrap();
        assert_eq!(stored.state, AlertState::Resolved);
        assert_eq!(stored.ack.unwrap().by, "ana", "the acknowledgement stays");
        // A silence flag for the state the worker saw does not overwrite a newer state.
        assert!(
            !alerting
                .db()
                .set_silenced(&id, true, AlertState::Firing, "critical", now_ns())
                .await
                .unwrap()
        );
        let stored = alerting.db().get(&id).await.unwrap();
        assert_eq!(stored.state, AlertState::Resolved);
        assert!(!stored.silenced);
    }

    /// The HTTPS receiver peer (`tests/peers/https_receiver.py`): its port, its CA file, its
    /// own certificate's file, and its `POST` lines as JSON.
    struct HttpsPeer {
        child: std::process::Child,
        port: u16,
        ca: String,
        cert: String,
        posts: std::sync::mpsc::Receiver<serde_json::Value>,
    }

    impl HttpsPeer {
        fn start() -> Self {
            use std::io::BufRead;
            let python = std::env::var("FABRIK_PYTHON").unwrap_or_else(|_| "python3".into());
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/https_receiver.py");
            let mut child = std::process::Command::new(&python)
                .arg(script)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run `{python}` (FABRIK_PYTHON): {e}"));
            let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
            let mut next = || lines.next().expect("the HTTPS peer starts").unwrap();
            let port = next().strip_prefix("PORT ").unwrap().parse().unwrap();
            let ca = next().strip_prefix("CA ").unwrap().to_owned();
            let cert = next().strip_prefix("CERT ").unwrap().to_owned();
            let (tx, posts) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    if let Some(json) = line.strip_prefix("POST ") {
                        let _ = tx.send(serde_json::from_str(json).unwrap());
                    }
                }
            });
            Self {
                child,
                port,
                ca,
                cert,
                posts,
            }
        }
    }

    impl Drop for HttpsPeer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// An https:// receiver with a private CA and basic authentication: delivered with the
    /// notifier's `ca` and credentials; refused (and kept queued) when the notifier trusts
    /// another anchor (the server's own certificate, which signed nothing) or sends a wrong
    /// password, with the reason named.
    #[tokio::test]
    async fn webhooks_reach_an_https_receiver_with_its_own_ca_and_basic_auth() {
        let peer = HttpsPeer::start();
        let url = format!("https://localhost:{}/hook", peer.port);
        let credentials = |password: &str| {
            Some(notify::BasicAuth {
                user: "fabrik".into(),
                password: password.into(),
            })
        };
        let webhook = |name: &str, ca: Option<&str>, password: &str| {
            Notifier::webhook(
                name,
                &url,
                std::time::Duration::from_secs(5),
                notify::Grouping::default(),
                ca.map(Path::new),
                credentials(password),
            )
            .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let alerting = alerting_in(
            dir.path(),
            vec![
                webhook("trusted", Some(&peer.ca), "s3cret"),
                webhook("untrusted", Some(&peer.cert), "s3cret"),
                webhook("wrong-password", Some(&peer.ca), "guess"),
            ],
        )
        .await;
        alerting
            .observe("hot", &[obs("oven-1", 1, 85.0)])
            .await
            .unwrap();
        assert_eq!(
            alerting.deliver_due().await.unwrap(),
            1,
            "only the trusted one"
        );
        let mut posts: Vec<serde_json::Value> = Vec::new();
        while let Ok(post) = peer.posts.recv_timeout(std::time::Duration::from_secs(5)) {
            posts.push(post);
            if posts.len() == 2 {
                break;
            }
        }
        // The untrusted one never got past the TLS handshake; the wrong password got a 401.
        assert_eq!(posts.len(), 2, "{posts:?}");
        let authorized: Vec<bool> = posts.iter().map(|p| p["authorized"] == true).collect();
        assert_eq!(authorized.iter().filter(|&&a| a).count(), 1, "{posts:?}");
        let delivered = posts.iter().find(|p| p["authorized"] == true).unwrap();
        assert_eq!(delivered["body"]["alerts"][0]["labels"]["device"], "oven-1");
        assert_eq!(
            alerting.db().outbox_len().await.unwrap(),
            2,
            "the failures stay queued"
        );
        let errors = alerting.db().outbox_errors().await.unwrap();
        let error_of = |notifier: &str| {
            errors
                .iter()
                .find(|(n, _)| n == notifier)
                .map(|(_, e)| e.clone())
                .unwrap_or_default()
        };
        assert!(error_of("untrusted").contains("certificate"), "{errors:?}");
        assert!(error_of("wrong-password").contains("401"), "{errors:?}");
    }

    /// Without grouping every alert is its own group: two devices of one rule never share a
    /// `groupKey`, so one resolving cannot close the other's incident at the receiver.
    #[tokio::test]
    async fn ungrouped_alerts_each_have_their_own_group_key() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut bodies) = http_receiver().await;
        let webhook = webhook_to(&url, notify::Grouping::default());
        let alerting = alerting_in(dir.path(), vec![webhook]).await;
        alerting
            .observe("hot", &[obs("oven-1", 1, 85.0), obs("oven-2", 1, 90.0)])
            .await
            .unwrap();
        alerting
            .observe("hot", &[obs("oven-1", 2, 10.0)])
            .await
            .unwrap();
        assert_eq!(alerting.deliver_due().await.unwrap(), 3);
        let got = [
            bodies.recv().await.unwrap(),
            bodies.recv().await.unwrap(),
            bodies.recv().await.unwrap(),
        ];
        let key = |device: &str| {
            format!("{{}}:{{alertname=\"hot\",device=\"{device}\",severity=\"critical\"}}")
        };
        assert_eq!(got[0]["groupKey"], key("oven-1"), "{}", got[0]);
        assert_eq!(got[1]["groupKey"], key("oven-2"), "{}", got[1]);
        assert_eq!(got[2]["groupKey"], key("oven-1"), "{}", got[2]);
        assert_eq!(got[2]["status"], "resolved");
        assert_eq!(got[2]["groupLabels"]["device"], "oven-1");
    }

    /// Moves the outbox out of the way (`away`) or back, through a connection of its own, so
    /// that queueing a notification fails as a full disk or a broken file would.
    async fn outbox_away(path: &Path, away: bool) {
        use sqlx::Connection;
        // The database the test's file stands for: the file, or its PostgreSQL database.
        let url = match crate::test_database::store(path).await {
            crate::Store::File(path) => format!("sqlite://{}", path.display()),
            crate::Store::Postgres(url) => url,
        };
        let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
        let (from, to) = if away {
            ("outbox", "outbox_away")
        } else {
            ("outbox_away", "outbox")
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE {from} RENAME TO {to}"
        )))
        .execute(&mut c)
        .await
        .unwrap();
    }

    /// An alert's state, its notifications and the read position of the rows that caused it
    /// land together or not at all; when they do not, the rule's keys are put back, so the
    /// same rows read again fire the alert that was lost.
    #[tokio::test]
    async fn a_transition_that_cannot_be_recorded_changes_nothing_and_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let alerting = alerting_in(dir.path(), vec![refused_webhook()]).await;
        let id = alert_id("hot", "oven-1", 10 * S);
        let position = ReadPosition {
            rule: "hot",
            watches: "w",
            read_after: Some(10 * S),
        };
        outbox_away(&path, true).await;
        let failed = alerting
            .observe_up_to("hot", &[obs("oven-1", 10, 85.0)], &position)
            .await;
        assert!(failed.is_err(), "{failed:?}");
        // Not a firing alert nobody will hear of, and not a position past its row.
        assert!(matches!(
            alerting.db().get(&id).await,
            Err(AlertError::NotFound { .. })
        ));
        assert_eq!(alerting.db().saved_position("hot").await.unwrap(), None);

        outbox_away(&path, false).await;
        let t = alerting
            .observe_up_to("hot", &[obs("oven-1", 10, 85.0)], &position)
            .await
            .unwrap();
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0].state, AlertState::Firing);
        assert_eq!(
            alerting.db().get(&id).await.unwrap().state,
            AlertState::Firing
        );
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 1);
        assert_eq!(
            alerting.db().saved_position("hot").await.unwrap(),
            Some(("w".to_owned(), Some(10 * S)))
        );
    }

    /// The same for a pending alert that a tick fires.
    #[tokio::test]
    async fn a_tick_whose_firing_cannot_be_recorded_fires_at_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let mut slow = rule();
        slow.for_ns = 5 * S;
        let alerting = Alerting::open(
            &path,
            vec![slow],
            vec![refused_webhook()],
            "http://x".into(),
        )
        .await
        .unwrap();
        let t = alerting
            .observe("hot", &[obs("oven-1", 10, 85.0)])
            .await
            .unwrap();
        assert_eq!(t[0].state, AlertState::Pending);
        let expected: BTreeMap<String, Vec<String>> = [("hot".to_owned(), Vec::new())].into();
        outbox_away(&path, true).await;
        assert!(alerting.tick(20 * S, &expected).await.is_err());
        let id = alert_id("hot", "oven-1", 10 * S);
        assert_eq!(
            alerting.db().get(&id).await.unwrap().state,
            AlertState::Pending
        );
        outbox_away(&path, false).await;
        let t = alerting.tick(21 * S, &expected).await.unwrap();
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0].state, AlertState::Firing);
        assert_eq!(t[0].at_ns, 15 * S);
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 1);
    }

    /// An ended silence stays listed, then goes once it has been over for a while; one in
    /// force stays.
    #[tokio::test]
    async fn ended_silences_are_kept_as_a_record_then_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let alerting = alerting_in(dir.path(), vec![refused_webhook()]).await;
        let hour = std::time::Duration::from_secs(3600);
        let ended = alerting
            .silence(None, Some("oven-1".into()), hour, "ana", None)
            .await
            .unwrap();
        let running = alerting
            .silence(None, Some("oven-2".into()), hour, "ana", None)
            .await
            .unwrap();
        let now = now_ns();
        alerting
            .db()
            .end_silence(&ended.id, now, "bo")
            .await
            .unwrap();
        assert!(matches!(
            alerting.db().end_silence(&ended.id, now + 1, "bo").await,
            Err(AlertError::Invalid(_))
        ));
        let listed = alerting.db().silences().await.unwrap();
        assert_eq!(listed.len(), 2);
        let record = listed.iter().find(|s| s.id == ended.id).unwrap();
        assert_eq!(record.ended_by.as_deref(), Some("bo"), "{record:?}");
        assert_eq!(record.until, model::rfc3339(now));
        alerting
            .db()
            .forget_silences_ended_before(now + S)
            .await
            .unwrap();
        let left = alerting.db().silences().await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, running.id);
    }

    /// A silence ends while the alert's severity changes: the release read before the change
    /// queues nothing (its guard holds the old severity) and leaves the flag, so the next pass
    /// releases the firing under the new labels instead of losing it.
    #[tokio::test]
    async fn a_silence_ending_while_the_severity_changes_still_releases_the_firing() {
        let dir = tempfile::tempdir().unwrap();
        let alerting = alerting_in(dir.path(), vec![refused_webhook()]).await;
        let hour = std::time::Duration::from_secs(3600);
        let silence = alerting
            .silence(None, Some("oven-1".into()), hour, "ana", None)
            .await
            .unwrap();
        alerting
            .observe("hot", &[obs("oven-1", 1, 85.0)])
            .await
            .unwrap();
        assert_eq!(alerting.db().outbox_len().await.unwrap(), 0, "silenced");
        alerting
            .db()
            .end_silence(&silence.id, now_ns(), "ana")
            .await
            .unwrap();
        let before_the_change = alerting.view().await.unwrap();
        let mut warning = rule();
        warning.severity = "warning".into();
        alerting.define_rule(warning, true).await.unwrap();
        assert_eq!(
            alerting
                .refresh_silences_in(&before_the_change)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            alerting.refresh_silences().await.unwrap(),
            1,
            "never released"
        );
        let queued = alerting.db().due(i64::MAX, 10).await.unwrap();
        assert_eq!(queued.len(), 1, "{queued:?}");
        assert!(queued[0].payload.contains("\"warning\""), "{queued:?}");
    }
}
