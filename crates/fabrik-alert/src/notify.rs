//! Notifiers and the outbox worker: notifications are queued in the database first and
//! delivered with retries and exponential backoff, so none is lost to a restart or an outage
//! of the receiver.
//!
//! The webhook body is Alertmanager's webhook format (version 4), so receivers written for
//! Prometheus (PagerDuty bridges, chat bots, ticketing) take Fabrik's alerts unchanged. MQTT
//! and e-mail notifiers carry [`alert_message`], a flat JSON form of the alert that a SCADA
//! tag, a Node-RED flow or a person reads without knowing Alertmanager.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::engine::AlertState;
use crate::error::AlertError;
use crate::model::{Alert, glob_match, parse_rfc3339};
use crate::smtp::{Envelope, SmtpServer};

/// A future a [`Publish`] implementation returns.
pub type PublishFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Publishes MQTT messages for the MQTT notifier: the process's own endpoint or a client of an
/// external broker, supplied by whoever wires the modules together.
pub trait Publish: Send + Sync {
    /// Publishes one message; resolves once the broker has it (QoS 1: acknowledged). An
    /// MQTT 5 publisher sends `traceparent` (a checked W3C trace context) as the user property
    /// of that name, as the W3C's MQTT binding of Trace Context has it; an MQTT 3.1.1 one has
    /// nowhere to put it.
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
        traceparent: Option<&'a str>,
    ) -> PublishFuture<'a>;
}

/// An MQTT notifier's connection (opaque in debug output).
#[derive(Clone)]
pub struct Publisher(pub Arc<dyn Publish>);

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Publisher")
    }
}

/// A label that can make notification groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupLabel {
    /// The rule (`alertname`).
    Rule,
    /// The key, usually a device.
    Device,
    /// The severity.
    Severity,
}

impl GroupLabel {
    /// Parses `rule` (or `alertname`), `device` or `severity`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "rule" | "alertname" => Some(Self::Rule),
            "device" => Some(Self::Device),
            "severity" => Some(Self::Severity),
            _ => None,
        }
    }

    /// Its name among Alertmanager labels.
    pub fn label(self) -> &'static str {
        match self {
            Self::Rule => "alertname",
            Self::Device => "device",
            Self::Severity => "severity",
        }
    }

    fn value(self, alert: &Alert) -> &str {
        match self {
            Self::Rule => &alert.rule,
            Self::Device => &alert.key,
            Self::Severity => &alert.severity,
        }
    }
}

/// How a notifier groups alert state changes into one notification, as Alertmanager's
/// `group_by` and `group_wait` do: the first change of a group waits `wait`, and every change
/// of the same group that comes in meanwhile goes out with it. A storm (fifty pumps losing
/// pressure after one power dip) becomes one notification instead of fifty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grouping {
    /// The labels whose values make a group (none: one group per notifier).
    pub by: Vec<GroupLabel>,
    /// How long a group collects changes; zero: every change goes out on its own.
    pub wait: Duration,
    /// How long after its last notification an alert that still fires is notified again
    /// (Alertmanager's `repeat_interval`); zero: never.
    pub repeat: Duration,
}

impl Grouping {
    /// The group of `alert`: its group labels and their values as a JSON object (which
    /// [`group_labels`] reads back).
    pub fn key(&self, alert: &Alert) -> String {
        let labels: BTreeMap<&str, &str> = self
            .by
            .iter()
            .map(|l| (l.label(), l.value(alert)))
            .collect();
        serde_json::to_string(&labels).unwrap_or_default()
    }
}

/// The group labels of a group key written by [`Grouping::key`].
pub fn group_labels(group_key: &str) -> BTreeMap<String, String> {
    serde_json::from_str(group_key).unwrap_or_default()
}

/// Which alerts a notifier is told of, as the matchers of an Alertmanager route: every list
/// that is not empty must hold the alert's value (critical alerts to the on-call webhook,
/// warnings to the maintenance mailbox, line 2's devices to line 2's team). Empty: all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// Severities, exactly.
    pub severities: Vec<String>,
    /// Rule name patterns (`*` stands for any run of characters).
    pub rules: Vec<String>,
    /// Device (key) patterns, e.g. `line2-*`.
    pub devices: Vec<String>,
}

impl Route {
    /// Whether an alert of `rule` on `key` with `severity` goes to the notifier.
    pub fn matches(&self, rule: &str, key: &str, severity: &str) -> bool {
        let any = |patterns: &[String], value: &str| {
            patterns.is_empty() || patterns.iter().any(|p| glob_match(p, value))
        };
        (self.severities.is_empty() || self.severities.iter().any(|s| s == severity))
            && any(&self.rules, rule)
            && any(&self.devices, key)
    }

    /// Whether it takes `alert`.
    pub fn takes(&self, alert: &Alert) -> bool {
        self.matches(&alert.rule, &alert.key, &alert.severity)
    }
}

/// A user name and password for HTTP basic authentication (its `Debug` leaves out the
/// password).
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Where notifications go.
#[derive(Debug, Clone)]
pub enum Notifier {
    /// POST of Alertmanager-compatible JSON (built with [`Notifier::webhook`]).
    Webhook {
        /// Unique name.
        name: String,
        /// Receiver URL.
        url: String,
        /// Per-request timeout.
        timeout: Duration,
        /// Grouping of state changes.
        grouping: Grouping,
        /// HTTP basic authentication.
        basic_auth: Option<BasicAuth>,
        /// Its HTTP client: rustls trusting the system's CAs or the notifier's own.
        client: reqwest::Client,
        /// The alerts it is told of.
        route: Route,
    },
    /// An MQTT message per state change, on a topic built from the alert.
    Mqtt {
        /// Unique name.
        name: String,
        /// Topic template: `{rule}`, `{device}`, `{severity}` and `{status}` are replaced.
        topic: String,
        /// QoS 0 or 1.
        qos: u8,
        /// Retain the last state per topic, so a dashboard that connects later sees it.
        retain: bool,
        /// How long a publish may take.
        timeout: Duration,
        /// The connection.
        publisher: Publisher,
        /// The alerts it is told of.
        route: Route,
    },
    /// An e-mail per state change, submitted over SMTP.
    Email {
        /// Unique name.
        name: String,
        /// The mail server.
        server: SmtpServer,
        /// Sender address.
        from: String,
        /// Recipient addresses.
        to: Vec<String>,
        /// How long one submission may take.
        timeout: Duration,
        /// Grouping of state changes.
        grouping: Grouping,
        /// The alerts it is told of.
        route: Route,
    },
}

impl Notifier {
    /// A webhook notifier POSTing to `url`. For `https://` it trusts the CAs of the PEM file
    /// `ca`, or the system's; `basic_auth` is a user name and password.
    pub fn webhook(
        name: &str,
        url: &str,
        timeout: Duration,
        grouping: Grouping,
        ca: Option<&std::path::Path>,
        basic_auth: Option<BasicAuth>,
    ) -> Result<Self, AlertError> {
        let invalid = |reason: String| AlertError::Invalid(format!("notifier `{name}`: {reason}"));
        let mut builder = reqwest::Client::builder();
        // The system bundle is read only for https, so an http receiver works on a host
        // without one.
        if url.starts_with("https://") || ca.is_some() {
            let tls = crate::tls::client_config(ca).map_err(invalid)?;
            builder = builder.tls_backend_preconfigured(tls);
        } else {
            let tls = crate::tls::trust_nothing().map_err(invalid)?;
            builder = builder.tls_backend_preconfigured(tls);
        }
        let client = builder
            .build()
            .map_err(|e| invalid(format!("HTTP client: {e}")))?;
        Ok(Self::Webhook {
            name: name.to_owned(),
            url: url.to_owned(),
            timeout,
            grouping,
            basic_auth,
            client,
            route: Route::default(),
        })
    }

    /// This notifier, told only of the alerts `route` takes.
    pub fn routed(mut self, route: Route) -> Self {
        match &mut self {
            Self::Webhook { route: r, .. }
            | Self::Mqtt { route: r, .. }
            | Self::Email { route: r, .. } => {
                *r = route;
            }
        }
        self
    }

    /// The alerts it is told of.
    pub fn route(&self) -> &Route {
        match self {
            Self::Webhook { route, .. } | Self::Mqtt { route, .. } | Self::Email { route, .. } => {
                route
            }
        }
    }

    /// `webhook`, `mqtt` or `email`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Webhook { .. } => "webhook",
            Self::Mqtt { .. } => "mqtt",
            Self::Email { .. } => "email",
        }
    }

    /// Where it sends, without credentials.
    pub fn target(&self) -> String {
        match self {
            Self::Webhook { url, .. } => origin_only(url),
            Self::Mqtt { topic, .. } => format!("topic {topic}"),
            Self::Email { server, to, .. } => {
                format!("{} via {}:{}", to.join(", "), server.host, server.port)
            }
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        match self {
            Self::Webhook { name, .. } | Self::Mqtt { name, .. } | Self::Email { name, .. } => name,
        }
    }

    /// Its grouping, if it groups (webhook and e-mail notifiers with a `group_wait`). MQTT
    /// notifiers publish every change on its own: their topics carry one alert's state, which
    /// a retained message keeps per device.
    pub fn grouping(&self) -> Option<&Grouping> {
        match self {
            Self::Webhook { grouping, .. } | Self::Email { grouping, .. } => {
                (!grouping.wait.is_zero()).then_some(grouping)
            }
            Self::Mqtt { .. } => None,
        }
    }

    /// How long after its last notification a still-firing alert is notified again, if
    /// this notifier repeats (webhook and e-mail; an MQTT topic keeps the state retained).
    pub fn repeat_interval(&self) -> Option<Duration> {
        match self {
            Self::Webhook { grouping, .. } | Self::Email { grouping, .. } => {
                (!grouping.repeat.is_zero()).then_some(grouping.repeat)
            }
            Self::Mqtt { .. } => None,
        }
    }

    /// One notification for a group of queued payloads (each made by [`Notifier::payload`],
    /// oldest first): an Alertmanager body with every alert of the group for webhooks, a
    /// grouped [`alert_message`] list for e-mail. When one alert changed twice inside the
    /// group's wait, only its latest state is sent.
    ///
    /// `firing` holds the payloads of the group's alerts that are firing now; a webhook body
    /// carries them too, as Alertmanager's does, so a receiver that keys incidents by
    /// `groupKey` sees the group still firing when one of its alerts resolves. E-mails list
    /// what changed only.
    pub fn merge(
        &self,
        payloads: &[serde_json::Value],
        group_key: &str,
        firing: &[serde_json::Value],
    ) -> serde_json::Value {
        let labels = group_labels(group_key);
        match self {
            Self::Webhook { .. } => merge_alertmanager(payloads, &labels, firing),
            Self::Mqtt { .. } | Self::Email { .. } => {
                let alerts = latest_per_key(payloads.iter().cloned(), |m| m["id"].clone());
                json!({"group": labels, "alerts": alerts})
            }
        }
    }

    /// The payload queued for `alert`: Alertmanager JSON for webhooks, [`alert_message`] for
    /// the others.
    pub fn payload(&self, alert: &Alert, external_url: &str) -> serde_json::Value {
        match self {
            Self::Webhook { name, .. } => alertmanager_payload(alert, name, external_url),
            Self::Mqtt { .. } | Self::Email { .. } => alert_message(alert, external_url),
        }
    }
}

/// The pieces of an annotation template: literal text, and placeholders — a name of
/// letters, digits and `_` between `{` and `}`. Any other brace is text, so JSON or a URL
/// with braces stays as written.
enum Piece<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

fn pieces(template: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut search = 0;
    while let Some(offset) = template[search..].find('{') {
        let open = search + offset;
        let name_end = template[open + 1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(template.len(), |n| open + 1 + n);
        if name_end > open + 1 && template[name_end..].starts_with('}') {
            pieces.push(Piece::Text(&template[start..open]));
            pieces.push(Piece::Placeholder(&template[open + 1..name_end]));
            start = name_end + 1;
            search = start;
        } else {
            search = open + 1;
        }
    }
    pieces.push(Piece::Text(&template[start..]));
    pieces
}

/// The placeholder names of an annotation template, in order.
pub fn placeholders(template: &str) -> Vec<&str> {
    pieces(template)
        .into_iter()
        .filter_map(|piece| match piece {
            Piece::Placeholder(name) => Some(name),
            Piece::Text(_) => None,
        })
        .collect()
}

/// `template` with `{rule}`, `{device}`, `{severity}`, `{value}` and `{<context column>}`
/// replaced by the alert's; `-` where it has no such value (a null context column). A value
/// is shown with at most four decimals, as an operator reads it: `87.25`, not
/// `87.250000001`. Rules are checked when defined, so every name is one of these.
pub fn render_annotation(
    template: &str,
    alert: &Alert,
    context: &BTreeMap<String, String>,
) -> String {
    let mut out = String::with_capacity(template.len());
    for piece in pieces(template) {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Placeholder("rule") => out.push_str(&alert.rule),
            Piece::Placeholder("device") => out.push_str(&alert.key),
            Piece::Placeholder("severity") => out.push_str(&alert.severity),
            Piece::Placeholder("value") => {
                out.push_str(&alert.value.map_or_else(|| "-".to_owned(), short_number));
            }
            Piece::Placeholder(other) => {
                out.push_str(context.get(other).map_or("-", String::as_str));
            }
        }
    }
    out
}

/// `x` with at most four decimals and no trailing zeros.
fn short_number(x: f64) -> String {
    let text = format!("{x:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// The rule's own `summary` annotation if it has one, else one made from the alert.
fn summary(alert: &Alert) -> String {
    if let Some(summary) = alert.annotations.get("summary") {
        return summary.clone();
    }
    match (&alert.value, alert.annotations.get("top_signal")) {
        (Some(v), Some(signal)) => {
            format!(
                "{} on {}: value {v:.4}, top signal {signal}",
                alert.rule, alert.key
            )
        }
        (Some(v), None) => format!("{} on {}: value {v:.4}", alert.rule, alert.key),
        (None, _) => format!("{} on {}", alert.rule, alert.key),
    }
}

fn status(alert: &Alert) -> &'static str {
    match alert.state {
        AlertState::Resolved => "resolved",
        _ => "firing",
    }
}

/// The flat JSON form of one alert state change (MQTT and e-mail notifiers).
pub fn alert_message(alert: &Alert, external_url: &str) -> serde_json::Value {
    json!({
        "id": alert.id,
        "status": status(alert),
        "rule": alert.rule,
        "device": alert.key,
        "severity": alert.severity,
        "value": alert.value,
        "summary": summary(alert),
        "started_at": alert.started_at,
        "fired_at": alert.fired_at,
        "resolved_at": alert.resolved_at,
        "annotations": alert.annotations,
        "url": format!("{external_url}/api/v1/alerts/{}", alert.id),
        "dashboard_url": dashboard_url(external_url, &alert.id),
    })
}

/// The dashboard's page of alert `id`, for people (the API's URL answers 401 in a browser).
pub fn dashboard_url(external_url: &str, id: &str) -> String {
    // Alert ids are rule, device and start joined by `~`; a rule or device name could hold
    // characters a fragment does not take as they are.
    let encoded: String = id
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect();
    format!("{external_url}/#/alerts/id/{encoded}")
}

/// `template` with `{rule}`, `{device}`, `{severity}`, `{status}` from `message`; values are
/// made topic-safe (`/`, `+`, `#` become `_`), so an alert key can never widen or redirect
/// the topic.
pub fn expand_topic(template: &str, message: &serde_json::Value) -> String {
    let field = |k: &str| {
        message[k]
            .as_str()
            .unwrap_or("")
            .replace(['/', '+', '#', '\0'], "_")
    };
    template
        .replace("{rule}", &field("rule"))
        .replace("{device}", &field("device"))
        .replace("{severity}", &field("severity"))
        .replace("{status}", &field("status"))
}

/// The topics `template` gives this alert under the statuses it no longer has: none unless
/// the template names `{status}`, and `{rule}` and `{device}` too (without them a topic is
/// shared by several alerts, and one resolving would delete another's firing state).
fn stale_status_topics(template: &str, message: &serde_json::Value) -> Vec<String> {
    if !["{status}", "{rule}", "{device}"]
        .iter()
        .all(|placeholder| template.contains(placeholder))
    {
        return Vec::new();
    }
    let current = message["status"].as_str().unwrap_or("");
    ["firing", "resolved"]
        .into_iter()
        .filter(|&status| status != current)
        .map(|status| {
            let mut other = message.clone();
            other["status"] = json!(status);
            expand_topic(template, &other)
        })
        .collect()
}

/// Whether a flat message is a reminder of an alert that still fires (nothing changed).
fn is_reminder(message: &serde_json::Value) -> bool {
    message["reminder"] == serde_json::Value::Bool(true)
}

/// `count` and `noun`, plural unless the count is 1.
fn counted(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// An annotation's value as a person reads it: `contributions` (feature → share, as JSON) as
/// percentages, largest first; anything else as it is.
fn annotation_text(name: &str, value: &serde_json::Value) -> String {
    let text = value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned);
    if name != "contributions" {
        return text;
    }
    let Ok(serde_json::Value::Object(shares)) = serde_json::from_str::<serde_json::Value>(&text)
    else {
        return text;
    };
    let mut shares: Vec<(String, f64)> = shares
        .into_iter()
        .filter_map(|(feature, share)| share.as_f64().map(|share| (feature, share)))
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    shares
        .iter()
        .map(|(feature, share)| format!("{feature} {:.0} %", share * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The text about one alert in an e-mail: summary, fields, context, where to answer it.
fn alert_text(message: &serde_json::Value) -> String {
    let text = |k: &str| message[k].as_str().unwrap_or("").to_owned();
    let reminder = if is_reminder(message) {
        "Still firing: a reminder, nothing changed since the last notification.\n\n"
    } else {
        ""
    };
    let mut body = format!(
        "{reminder}{}\n\nAlert:     {}\nRule:      {}\nDevice:    {}\nSeverity:  {}\nStarted:   {}\n",
        text("summary"),
        text("id"),
        text("rule"),
        text("device"),
        text("severity"),
        text("started_at"),
    );
    if let Some(fired) = message["fired_at"].as_str() {
        body.push_str(&format!("Fired:     {fired}\n"));
    }
    if let Some(resolved) = message["resolved_at"].as_str() {
        body.push_str(&format!("Resolved:  {resolved}\n"));
    }
    // The summary was written when the alert fired; a resolution's value is the one that
    // cleared it (a review read "1.062 above 0.30" in a recovery mail).
    if let Some(value) = message["value"].as_f64() {
        if message["status"] == "resolved" {
            body.push_str(&format!(
                "Cleared:   at {} (the summary is as it fired)\n",
                short_number(value)
            ));
        } else {
            body.push_str(&format!("Value:     {}\n", short_number(value)));
        }
    }
    if let Some(annotations) = message["annotations"].as_object()
        && !annotations.is_empty()
    {
        body.push_str("\nContext:\n");
        for (k, v) in annotations {
            body.push_str(&format!("  {k}: {}\n", annotation_text(k, v)));
        }
    }
    // The API's address, from the alert's URL, so the command reaches this Fabrik.
    let api = text("url");
    let url = api
        .split_once("/api/v1/alerts/")
        .map(|(base, _)| format!(" --url {base}"))
        .unwrap_or_default();
    body.push_str(&format!(
        "\nOpen: {}\nAcknowledge with: fabrik alert ack {} --feedback true_positive|false_positive{url}\n",
        text("dashboard_url"),
        text("id")
    ));
    body
}

/// The RFC 5322 text of the e-mail for `message`: one alert ([`alert_message`]) or a group
/// ([`Notifier::merge`]: `{"group": {...}, "alerts": [...]}`). UTF-8 subject as an encoded
/// word, body in base64 so any server takes it.
pub fn email_text(message: &serde_json::Value, from: &str, to: &[String]) -> String {
    use base64::Engine as _;
    // A group that came down to one alert (its firing and resolution merged) reads as that
    // alert's own message.
    let alone = match message["alerts"].as_array().map(Vec::as_slice) {
        Some([only]) => Some(only),
        _ => None,
    };
    let (subject, body, id, status) = match message["alerts"].as_array().filter(|_| alone.is_none())
    {
        Some(alerts) => {
            let firing = alerts.iter().filter(|a| a["status"] == "firing").count();
            let resolved = alerts.len() - firing;
            let mut counts = Vec::new();
            if firing > 0 {
                counts.push(format!("FIRING:{firing}"));
            }
            if resolved > 0 {
                counts.push(format!("RESOLVED:{resolved}"));
            }
            let group: Vec<String> = message["group"]
                .as_object()
                .map(|g| {
                    g.values()
                        .map(|v| v.as_str().unwrap_or("").to_owned())
                        .collect()
                })
                .unwrap_or_default();
            let what = if group.is_empty() {
                "alerts".to_owned()
            } else {
                group.join(" ")
            };
            let reminders = alerts.iter().filter(|a| is_reminder(a)).count();
            if reminders == alerts.len() {
                counts.push("REMINDER".into());
            }
            let subject = format!(
                "[{}] {what}: {}",
                counts.join(" "),
                counted(alerts.len(), "alert")
            );
            let mut body = if reminders == alerts.len() {
                format!(
                    "{} still firing: a reminder, nothing changed since the last notification:\n",
                    counted(alerts.len(), "alert")
                )
            } else {
                format!(
                    "{}, grouped:\n",
                    counted(alerts.len(), "alert state change")
                )
            };
            for a in alerts {
                let state = a["status"].as_str().unwrap_or("").to_uppercase();
                let state = if is_reminder(a) && reminders < alerts.len() {
                    format!("{state} (reminder)")
                } else {
                    state
                };
                body.push_str(&format!(
                    "  {state:<9} {}\n",
                    a["summary"].as_str().unwrap_or("")
                ));
            }
            for a in alerts {
                body.push_str("\n----------------------------------------\n");
                body.push_str(&alert_text(a));
            }
            let ids: Vec<&str> = alerts.iter().filter_map(|a| a["id"].as_str()).collect();
            let status = if firing > 0 { "firing" } else { "resolved" };
            (subject, body, ids.join(" "), status.to_owned())
        }
        None => {
            let message = alone.unwrap_or(message);
            let text = |k: &str| message[k].as_str().unwrap_or("").to_owned();
            let reminder = if is_reminder(message) {
                " REMINDER"
            } else {
                ""
            };
            let subject = format!(
                "[{}{reminder}] {}",
                text("status").to_uppercase(),
                text("summary")
            );
            (subject, alert_text(message), text("id"), text("status"))
        }
    };
    // Alert keys come from data: a line break in one must not start a new header.
    let header_safe = |v: &str| v.replace(['\r', '\n'], " ");
    let subject = header_safe(&subject);
    let encoded = base64::engine::general_purpose::STANDARD.encode(body.as_bytes());
    let mut wrapped = String::with_capacity(encoded.len() + encoded.len() / 76 * 2 + 2);
    for chunk in encoded.as_bytes().chunks(76) {
        wrapped.push_str(&String::from_utf8_lossy(chunk));
        wrapped.push_str("\r\n");
    }
    let subject = encode_subject(&subject);
    // Every message gets its own Message-ID (RFC 5322 §3.6.4: a mailbox may drop a second
    // message with an ID it has, and reminders would vanish); `References` names the
    // incident, so a mail client threads its firing, reminders and resolution together.
    // `Auto-Submitted` keeps out-of-office replies away (RFC 3834).
    let now = chrono::Utc::now();
    let sequence = MESSAGE_SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let incident = fingerprint(&id);
    // Each alert's incident, so a reminder of one alert threads with the group mail that
    // first told of it; folded, one per line, and the first few only: a header line may not
    // pass 998 characters, and a heartbeat rule over a line groups dozens of alerts.
    let alert_ids: Vec<&str> = match message["alerts"].as_array().filter(|_| alone.is_none()) {
        Some(alerts) => alerts.iter().filter_map(|a| a["id"].as_str()).collect(),
        None => vec![id.as_str()],
    };
    let references: Vec<String> = alert_ids
        .iter()
        .take(MAX_REFERENCES)
        .map(|alert| format!("<{}@fabrik>", fingerprint(alert)))
        .collect();
    let references = references.join("\r\n ");
    let listed: Vec<String> = alert_ids
        .iter()
        .take(MAX_REFERENCES)
        .map(|alert| header_safe(alert))
        .collect();
    let id = if alert_ids.len() > MAX_REFERENCES {
        format!("{}\r\n ...", listed.join("\r\n "))
    } else {
        listed.join("\r\n ")
    };
    format!(
        "From: {from}\r\nTo: {}\r\nSubject: {subject}\r\nDate: {}\r\nMessage-ID: <{incident}.{}.{}.{sequence}@fabrik>\r\nReferences: {references}\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\nX-Fabrik-Alert: {}\r\n\r\n{wrapped}",
        to.join(", "),
        now.to_rfc2822(),
        header_safe(&status),
        now.timestamp_nanos_opt().unwrap_or_default(),
        id,
    )
}

/// Alerts a group e-mail's `References` and `X-Fabrik-Alert` headers name at most.
const MAX_REFERENCES: usize = 20;

/// Makes Message-IDs of e-mails written in the same nanosecond differ.
static MESSAGE_SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Longest subject, in characters: a rule's own summary may be long, and a subject is read
/// in one line of a mail client's list.
const SUBJECT_CHARS: usize = 200;

/// `subject` as a `Subject:` header value: cut to [`SUBJECT_CHARS`], and beyond ASCII as
/// RFC 2047 encoded words of at most 75 characters each, on folded lines, so no header line
/// exceeds what mail servers accept.
fn encode_subject(subject: &str) -> String {
    use base64::Engine as _;
    let subject: String = if subject.chars().count() > SUBJECT_CHARS {
        // Cut with ASCII dots, so an ASCII subject stays readable without decoding.
        let mut cut: String = subject.chars().take(SUBJECT_CHARS - 3).collect();
        cut.push_str("...");
        cut
    } else {
        subject.to_owned()
    };
    if subject.is_ascii() {
        return subject;
    }
    // 39 bytes of UTF-8 are 52 of base64; with `=?utf-8?b?` and `?=` an encoded word is 64,
    // so even the first line, after `Subject: `, stays within RFC 2047's 76 characters.
    let mut words = Vec::new();
    let mut chunk = String::new();
    for ch in subject.chars() {
        if chunk.len() + ch.len_utf8() > 39 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(ch);
    }
    words.push(chunk);
    words
        .iter()
        .map(|w| {
            format!(
                "=?utf-8?b?{}?=",
                base64::engine::general_purpose::STANDARD.encode(w.as_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// An alert's labels as Alertmanager's webhook carries them.
fn labels(alert: &Alert) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("alertname".to_owned(), alert.rule.clone()),
        ("device".to_owned(), alert.key.clone()),
        ("severity".to_owned(), alert.severity.clone()),
    ])
}

/// The identity of an alert's label set (`{}:{alertname="…",device="…",severity="…"}`):
/// what receivers key an incident by, across the alert's episodes. Its hash is the webhook's
/// `fingerprint`, as Alertmanager's is the hash of the labels.
pub fn series(alert: &Alert) -> String {
    group_key_text(&labels(alert))
}

/// The Alertmanager webhook (v4) body for one alert's state change.
pub fn alertmanager_payload(
    alert: &Alert,
    receiver: &str,
    external_url: &str,
) -> serde_json::Value {
    let status = status(alert);
    let labels = labels(alert);
    let mut annotations = alert.annotations.clone();
    annotations.insert("summary".to_owned(), summary(alert));
    // Without grouping every alert is its own group, as with Alertmanager's `group_by:
    // ['...']`: the group key names all its labels, so two devices never share an incident.
    json!({
        "version": "4",
        "groupKey": group_key_text(&labels),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": labels,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external_url,
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": alert.fired_at.clone().unwrap_or_else(|| alert.started_at.clone()),
            "endsAt": alert.resolved_at.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
            // The dashboard's page of this alert: a link a receiver's operator can open (after
            // signing in), where the API's URL answered 401 in a browser.
            "generatorURL": dashboard_url(external_url, &alert.id),
            "fingerprint": fingerprint(&series(alert)),
        }],
    })
}

/// Keeps, for every key, only the last item with it, in the order of their first appearance.
fn latest_per_key(
    items: impl Iterator<Item = serde_json::Value>,
    key: impl Fn(&serde_json::Value) -> serde_json::Value,
) -> Vec<serde_json::Value> {
    let mut order: Vec<serde_json::Value> = Vec::new();
    let mut latest: Vec<serde_json::Value> = Vec::new();
    for item in items {
        let k = key(&item);
        match order.iter().position(|o| *o == k) {
            Some(i) => latest[i] = item,
            None => {
                order.push(k);
                latest.push(item);
            }
        }
    }
    latest
}

/// The labels (or annotations) every alert shares with the same value.
fn common(alerts: &[serde_json::Value], field: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut shared = alerts
        .first()
        .and_then(|a| a[field].as_object().cloned())
        .unwrap_or_default();
    for alert in alerts.iter().skip(1) {
        shared.retain(|k, v| alert[field].get(k) == Some(v));
    }
    shared
}

/// Alertmanager's group key text for a group's labels: `{}:{name="value",...}`.
fn group_key_text<V: std::fmt::Debug>(labels: &BTreeMap<String, V>) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{}}:{{{}}}", pairs.join(","))
}

/// The Alertmanager webhook (v4) body for a group: the alerts of all `payloads` (bodies of
/// [`alertmanager_payload`]), the latest state per alert, then those of `firing` (the
/// group's alerts firing now) not among them; the group's labels, and the labels and
/// annotations all its alerts share. The group's status is `firing` while any alert in it
/// fires.
pub fn merge_alertmanager(
    payloads: &[serde_json::Value],
    group: &BTreeMap<String, String>,
    firing: &[serde_json::Value],
) -> serde_json::Value {
    let changed = payloads
        .iter()
        .flat_map(|p| p["alerts"].as_array().cloned().unwrap_or_default());
    let mut alerts = latest_per_key(changed, |a| a["fingerprint"].clone());
    let still_firing: Vec<serde_json::Value> = firing
        .iter()
        .flat_map(|p| p["alerts"].as_array().cloned().unwrap_or_default())
        .filter(|a| !alerts.iter().any(|b| b["fingerprint"] == a["fingerprint"]))
        .collect();
    alerts.extend(still_firing);
    let firing = alerts.iter().any(|a| a["status"] == "firing");
    let first = payloads.first().cloned().unwrap_or_default();
    json!({
        "version": "4",
        "groupKey": group_key_text(group),
        "truncatedAlerts": 0,
        "status": if firing { "firing" } else { "resolved" },
        "receiver": first["receiver"],
        "groupLabels": group,
        "commonLabels": common(&alerts, "labels"),
        "commonAnnotations": common(&alerts, "annotations"),
        "externalURL": first["externalURL"],
        "alerts": alerts,
    })
}

/// A short stable hash of the alert id (FNV-1a, hex), as Alertmanager's fingerprints are.
fn fingerprint(id: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// An error and its causes, `: `-separated: reqwest's own text ("error sending request")
/// leaves out whether the connection was refused or the certificate untrusted.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(&format!(": {inner}"));
        cause = inner.source();
    }
    text
}

/// `url`'s scheme, host and port, without credentials, path or query: webhook URLs often
/// carry their secret in the path (chat services' incoming webhooks) or the query.
fn origin_only(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let authority = &rest[..authority_end];
            let host = authority
                .rfind('@')
                .map_or(authority, |at| &authority[at + 1..]);
            let more = if authority_end < rest.len() {
                "/…"
            } else {
                ""
            };
            format!("{scheme}://{host}{more}")
        }
        None => "(not a URL)".to_owned(),
    }
}

/// Where a webhook's W3C `traceparent` comes from: the binary's trace layer installs it when
/// traces are on, so the receiver's work joins the trace of the delivery (decision 0054).
static TRACE_CONTEXT: std::sync::OnceLock<fn() -> Option<String>> = std::sync::OnceLock::new();

/// Sends `current()` — the `traceparent` of the current span, if any — with every webhook.
/// The first call wins.
pub fn propagate_trace_context(current: fn() -> Option<String>) {
    let _ = TRACE_CONTEXT.set(current);
}

/// An e-mail with a `Traceparent` header first (header order is free, RFC 5322 §3.6), so a
/// mail pipeline that reads it joins the delivery's trace as a webhook receiver does. Left
/// out unless it is a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`): nothing else may
/// reach a header line.
fn with_trace_header(text: String, traceparent: Option<String>) -> String {
    match traceparent {
        Some(tp) if is_traceparent(&tp) => format!("Traceparent: {tp}\r\n{text}"),
        _ => text,
    }
}

/// Whether `text` has the form of a W3C `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
fn is_traceparent(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.len() == 4
        && [2, 32, 16, 2]
            .iter()
            .zip(&parts)
            .all(|(len, part)| part.len() == *len && part.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Delivers one payload. `Ok` holds what the receiver took it with but reported: the
/// e-mail recipients its server refused while taking it for the others.
pub async fn deliver(notifier: &Notifier, payload: &str) -> Result<Vec<String>, AlertError> {
    // `fabrik_runtime::telemetry::SPAN_TARGET` (this crate does not depend on the runtime).
    let span = tracing::info_span!(
        target: "fabrik_spans",
        "alert.deliver",
        otel.name = %format_args!("alert notification {}", notifier.name()),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
        notifier = %notifier.name(),
        payload_bytes = payload.len() as u64,
    );
    let outcome =
        tracing::Instrument::instrument(deliver_once(notifier, payload), span.clone()).await;
    if let Err(e) = &outcome {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_message", tracing::field::display(e));
    }
    outcome
}

async fn deliver_once(notifier: &Notifier, payload: &str) -> Result<Vec<String>, AlertError> {
    match notifier {
        Notifier::Webhook {
            name,
            url,
            timeout,
            basic_auth,
            client,
            ..
        } => {
            let mut request = client
                .post(url)
                .timeout(*timeout)
                .header("content-type", "application/json")
                .body(payload.to_owned());
            if let Some(traceparent) = TRACE_CONTEXT.get().and_then(|current| current()) {
                request = request.header("traceparent", traceparent);
            }
            if let Some(auth) = basic_auth {
                request = request.basic_auth(&auth.user, Some(&auth.password));
            }
            let response = request.send().await.map_err(|e| AlertError::Delivery {
                notifier: name.clone(),
                reason: with_causes(&e),
            })?;
            if response.status().is_success() {
                Ok(Vec::new())
            } else {
                Err(AlertError::Delivery {
                    notifier: name.clone(),
                    reason: format!("{url} answered {}", response.status()),
                })
            }
        }
        Notifier::Mqtt {
            name,
            topic,
            qos,
            retain,
            timeout,
            publisher,
            ..
        } => {
            let failed = |reason: String| AlertError::Delivery {
                notifier: name.clone(),
                reason,
            };
            let message: serde_json::Value = serde_json::from_str(payload)
                .map_err(|e| failed(format!("queued payload is not JSON: {e}")))?;
            let traceparent = TRACE_CONTEXT
                .get()
                .and_then(|current| current())
                .filter(|tp| is_traceparent(tp));
            let traceparent = traceparent.as_deref();
            let publish = |topic: String, body: Vec<u8>| async move {
                let sent = publisher
                    .0
                    .publish(&topic, body, *qos, *retain, traceparent);
                tokio::time::timeout(*timeout, sent)
                    .await
                    .map_err(|_| {
                        failed(format!("publish to `{topic}` took longer than {timeout:?}"))
                    })?
                    .map_err(|e| failed(format!("publish to `{topic}`: {e}")))
            };
            publish(expand_topic(topic, &message), payload.as_bytes().to_vec()).await?;
            // With the status in the topic, the alert's other status topic still retains its
            // previous state: a dashboard connecting later would see it both firing and
            // resolved. An empty retained message is MQTT's way to delete a retained one.
            if *retain {
                for stale in stale_status_topics(topic, &message) {
                    publish(stale, Vec::new()).await?;
                }
            }
            Ok(Vec::new())
        }
        Notifier::Email {
            name,
            server,
            from,
            to,
            timeout,
            ..
        } => {
            let failed = |reason: String| AlertError::Delivery {
                notifier: name.clone(),
                reason,
            };
            let message: serde_json::Value = serde_json::from_str(payload)
                .map_err(|e| failed(format!("queued payload is not JSON: {e}")))?;
            let text = with_trace_header(
                email_text(&message, from, to),
                TRACE_CONTEXT.get().and_then(|current| current()),
            );
            crate::smtp::send(
                server,
                &Envelope {
                    from,
                    to,
                    message: &text,
                },
                *timeout,
            )
            .await
            .map_err(failed)
        }
    }
}

/// Delay before attempt `attempts + 1`: 1 s doubling to 5 min.
pub fn backoff(attempts: i64) -> Duration {
    let exponent = u32::try_from(attempts.clamp(0, 9)).unwrap_or(9);
    Duration::from_secs((1u64 << exponent).min(300))
}

/// When an alert's timestamps say it started, in ns (for ordering and tests).
pub fn started_ns(alert: &Alert) -> Option<i64> {
    parse_rfc3339(&alert.started_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_alerts_own_status_topics_are_deleted() {
        let message = json!({"rule": "hot", "device": "oven-1", "status": "resolved"});
        assert_eq!(
            stale_status_topics("plant/{device}/{rule}/{status}", &message),
            ["plant/oven-1/hot/firing"]
        );
        // Shared by every device's alerts of the rule: another may still fire.
        assert!(stale_status_topics("plant/{rule}/{status}", &message).is_empty());
        assert!(stale_status_topics("plant/{rule}/{device}", &message).is_empty());
    }

    /// The text of a base64 (76-column) e-mail body.
    fn decoded_text(body: &str) -> String {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(body.replace("\r\n", ""))
            .unwrap();
        String::from_utf8(bytes).unwrap()
    }

    fn alert(state: AlertState) -> Alert {
        Alert {
            id: "pump-health~pump-02~1700000000000000000".into(),
            rule: "pump-health".into(),
            key: "pump-02".into(),
            severity: "warning".into(),
            state,
            started_at: "2023-11-14T22:13:20.000Z".into(),
            fired_at: Some("2023-11-14T22:13:50.000Z".into()),
            resolved_at: (state == AlertState::Resolved).then(|| "2023-11-14T22:20:00.000Z".into()),
            value: Some(7.25),
            annotations: [("top_signal".to_owned(), "vibration_rms".to_owned())].into(),
            ack: None,
            silenced: false,
            inhibited_by: None,
            action: None,
            applied: Vec::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn long_and_non_ascii_subjects_fold_into_short_encoded_words() {
        use base64::Engine as _;
        assert_eq!(
            encode_subject("[FIRING] pump-02 hot"),
            "[FIRING] pump-02 hot"
        );
        let long = "x".repeat(500);
        assert_eq!(encode_subject(&long).chars().count(), SUBJECT_CHARS);
        let summary =
            "[FIRING] Pump pump-02: vibration_rms stands out (score 1.3 × its threshold) "
                .repeat(2);
        let encoded = encode_subject(&summary);
        let lines: Vec<&str> = encoded.split("\r\n ").collect();
        assert!(lines.len() > 1, "{encoded}");
        let mut decoded = String::new();
        for (i, word) in lines.iter().enumerate() {
            let line = if i == 0 {
                9 + word.len()
            } else {
                1 + word.len()
            };
            assert!(line <= 76, "{word}");
            let inner = word
                .strip_prefix("=?utf-8?b?")
                .and_then(|w| w.strip_suffix("?="))
                .expect("an encoded word");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(inner)
                .expect("base64");
            decoded.push_str(std::str::from_utf8(&bytes).expect("each word whole UTF-8"));
        }
        assert_eq!(decoded, summary);
    }

    #[test]
    fn annotation_templates_name_the_alert_and_its_context() {
        let firing = alert(AlertState::Firing);
        let context: BTreeMap<String, String> =
            [("top_signal".to_owned(), "vibration_rms".to_owned())].into();
        let render = |template: &str| render_annotation(template, &firing, &context);
        assert_eq!(
            render("{rule} on {device} ({severity}): {top_signal} at {value}"),
            "pump-health on pump-02 (warning): vibration_rms at 7.25"
        );
        assert_eq!(
            render("{unknown} is missing, {value"),
            "- is missing, {value"
        );
        assert_eq!(render("no placeholders"), "no placeholders");
        assert_eq!(
            render(r#"{"device": "{device}"} ${x-y} {{device}}"#),
            r#"{"device": "pump-02"} ${x-y} {pump-02}"#
        );
        assert_eq!(
            placeholders("{{device}} {a b} {value}{x}"),
            ["device", "value", "x"]
        );
        let mut rounded = alert(AlertState::Firing);
        for (value, shown) in [
            (87.0, "87"),
            (0.123456, "0.1235"),
            (-0.00001, "0"),
            (1e6, "1000000"),
        ] {
            rounded.value = Some(value);
            assert_eq!(render_annotation("{value}", &rounded, &context), shown);
        }
        rounded.value = None;
        assert_eq!(render_annotation("{value}", &rounded, &context), "-");
        // A rule's summary replaces the generated one.
        let mut summarised = alert(AlertState::Firing);
        summarised
            .annotations
            .insert("summary".into(), "Pump 2 vibrates".into());
        let p = alertmanager_payload(&summarised, "ops", "http://fabrik:7800");
        assert_eq!(p["alerts"][0]["annotations"]["summary"], "Pump 2 vibrates");
        assert_eq!(
            alert_message(&summarised, "http://f")["summary"],
            "Pump 2 vibrates"
        );
    }

    #[test]
    fn the_payload_has_alertmanagers_shape() {
        let p = alertmanager_payload(&alert(AlertState::Firing), "ops", "http://fabrik:7800");
        assert_eq!(p["version"], "4");
        assert_eq!(p["status"], "firing");
        let a = &p["alerts"][0];
        assert_eq!(a["labels"]["alertname"], "pump-health");
        assert_eq!(a["labels"]["device"], "pump-02");
        assert_eq!(a["startsAt"], "2023-11-14T22:13:50.000Z");
        assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
        assert!(
            a["annotations"]["summary"]
                .as_str()
                .unwrap()
                .contains("vibration_rms")
        );
        assert_eq!(a["fingerprint"].as_str().unwrap().len(), 16);
        let r = alertmanager_payload(&alert(AlertState::Resolved), "ops", "http://fabrik:7800");
        assert_eq!(r["status"], "resolved");
        assert_eq!(r["alerts"][0]["endsAt"], "2023-11-14T22:20:00.000Z");
        assert_eq!(r["alerts"][0]["fingerprint"], a["fingerprint"]);
    }

    #[test]
    fn topics_are_built_from_the_alert_and_cannot_be_widened() {
        let mut a = alert(AlertState::Firing);
        a.key = "pump/#+x y".into();
        a.id = crate::alert_id(&a.rule, &a.key, 7);
        let m = alert_message(&a, "http://fabrik:7800");
        assert_eq!(
            expand_topic("plant/alerts/{severity}/{rule}/{device}/{status}", &m),
            "plant/alerts/warning/pump-health/pump___x y/firing"
        );
        assert_eq!(
            m["url"],
            format!("http://fabrik:7800/api/v1/alerts/{}", a.id)
        );
        // People get the dashboard's page, with the id encoded for a URL fragment.
        assert_eq!(
            m["dashboard_url"],
            format!("http://fabrik:7800/#/alerts/id/{}~pump__%2Bx%20y~7", a.rule)
        );
        let webhook = alertmanager_payload(&a, "ops", "http://fabrik:7800");
        assert_eq!(webhook["alerts"][0]["generatorURL"], m["dashboard_url"]);
    }

    /// Each e-mail has its own Message-ID (a mailbox may drop a repeated one, and reminders
    /// would vanish), threaded by the incident; a reminder says it is one; a group that came
    /// down to one alert reads as that alert; contributions read as percentages, and the ack
    /// command names the Fabrik to send it to.
    #[test]
    fn every_email_is_its_own_message_and_a_reminder_says_so() {
        let header = |text: &str, name: &str| {
            text.split("\r\n")
                .find_map(|line| line.strip_prefix(name))
                .unwrap_or_default()
                .to_owned()
        };
        let mut firing = alert(AlertState::Firing);
        firing.annotations.insert(
            "contributions".into(),
            r#"{"pressure.std":0.2500000000000001,"vibration_rms.mean":0.7499999999999999}"#.into(),
        );
        let m = alert_message(&firing, "http://fabrik.plant:7800");
        let first = email_text(&m, "f@x.y", &["t@x.y".into()]);
        let second = email_text(&m, "f@x.y", &["t@x.y".into()]);
        assert_ne!(
            header(&first, "Message-ID: "),
            header(&second, "Message-ID: ")
        );
        assert_eq!(
            header(&first, "References: "),
            header(&second, "References: ")
        );
        assert_eq!(header(&first, "Auto-Submitted: "), "auto-generated");
        let body = decoded_text(first.split_once("\r\n\r\n").unwrap().1);
        assert!(
            body.contains("contributions: vibration_rms.mean 75 %, pressure.std 25 %"),
            "{body}"
        );
        assert!(
            body.contains("--feedback true_positive|false_positive --url http://fabrik.plant:7800"),
            "{body}"
        );
        assert!(!body.contains("reminder"), "{body}");

        let mut reminder = m.clone();
        reminder["reminder"] = true.into();
        let text = email_text(&reminder, "f@x.y", &["t@x.y".into()]);
        assert!(
            header(&text, "Subject: ").starts_with("[FIRING REMINDER] "),
            "{text}"
        );
        let body = decoded_text(text.split_once("\r\n\r\n").unwrap().1);
        assert!(body.starts_with("Still firing: a reminder"), "{body}");
        // Two reminders grouped: the subject and the first line say so.
        let mut other = reminder.clone();
        other["id"] = "pump-health~pump-03~1".into();
        let group =
            serde_json::json!({"group": {"rule": "pump-health"}, "alerts": [reminder, other]});
        let text = email_text(&group, "f@x.y", &["t@x.y".into()]);
        assert!(
            header(&text, "Subject: ").starts_with("[FIRING:2 REMINDER] pump-health: 2 alerts"),
            "{text}"
        );
        // Its references name both alerts' incidents, one per folded line, so each one's
        // own mails thread with it.
        let (_, after) = text.split_once("References: ").unwrap();
        let mut lines = after.split("\r\n");
        assert_eq!(lines.next(), Some(header(&first, "References: ").as_str()));
        assert!(
            lines
                .next()
                .is_some_and(|l| l.starts_with(" <") && l.ends_with("@fabrik>"))
        );
        // Forty alerts: every header line stays short, twenty are named.
        let many: Vec<serde_json::Value> = (0..40)
            .map(|i| {
                let mut a = m.clone();
                a["id"] = format!("pump-health~pump-{i:02}~1").into();
                a
            })
            .collect();
        let text = email_text(
            &serde_json::json!({"group": {"rule": "pump-health"}, "alerts": many}),
            "f@x.y",
            &["t@x.y".into()],
        );
        let (headers, _) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            headers.split("\r\n").all(|line| line.len() < 200),
            "{headers}"
        );
        assert_eq!(
            headers.matches("@fabrik>").count(),
            21,
            "20 references and the Message-ID"
        );
        // A group of one is the alert's own message.
        let one = serde_json::json!({"group": {"rule": "pump-health"}, "alerts": [m]});
        let text = email_text(&one, "f@x.y", &["t@x.y".into()]);
        assert!(
            header(&text, "Subject: ").starts_with("[FIRING] "),
            "{text}"
        );
    }

    #[test]
    fn the_email_names_the_alert_and_its_signal() {
        let m = alert_message(&alert(AlertState::Resolved), "http://fabrik:7800");
        let text = email_text(&m, "fabrik@plant.example", &["ops@plant.example".into()]);
        let (headers, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            headers.contains(
                "Subject: [RESOLVED] pump-health on pump-02: value 7.2500, top signal vibration_rms"
            ),
            "{headers}"
        );
        assert!(headers.contains("To: ops@plant.example\r\n"));
        let decoded = decoded_text(body);
        assert!(
            decoded.contains("Resolved:  2023-11-14T22:20:00.000Z"),
            "{decoded}"
        );
        assert!(
            decoded.contains("Cleared:   at 7.25 (the summary is as it fired)"),
            "{decoded}"
        );
        assert!(decoded.contains("top_signal: vibration_rms"), "{decoded}");
        assert!(body.lines().all(|l| l.len() <= 76));
        let mut evil = alert(AlertState::Firing);
        evil.key = "pump\r\nBcc: everyone@example.com".into();
        let text = email_text(&alert_message(&evil, "x"), "a@b.c", &["d@e.f".into()]);
        let headers = text.split_once("\r\n\r\n").unwrap().0;
        assert!(!headers.contains("\r\nBcc:"), "{headers}");
    }

    #[test]
    fn an_email_carries_the_deliverys_traceparent_and_nothing_else_in_its_place() {
        let text = email_text(
            &alert_message(&alert(AlertState::Firing), "http://f"),
            "f@x.y",
            &["t@x.y".into()],
        );
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let traced = with_trace_header(text.clone(), Some(tp.into()));
        let (headers, body) = traced.split_once("\r\n\r\n").unwrap();
        assert!(
            headers.lines().any(|l| l == format!("Traceparent: {tp}")),
            "{headers}"
        );
        assert!(headers.contains("\r\nFrom: f@x.y\r\n"), "{headers}");
        assert_eq!(body, text.split_once("\r\n\r\n").unwrap().1);
        // Not a traceparent: no header, and certainly no injected line.
        for bad in [
            "00-abc-def-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nBcc: x@y.z",
        ] {
            assert_eq!(with_trace_header(text.clone(), Some(bad.into())), text);
        }
        assert_eq!(with_trace_header(text.clone(), None), text);
    }

    #[test]
    fn a_grouped_email_lists_every_alert_once_in_its_latest_state() {
        let grouping = Grouping {
            by: vec![GroupLabel::Rule, GroupLabel::Severity],
            wait: Duration::from_secs(30),
            repeat: Duration::ZERO,
        };
        let mut other = alert(AlertState::Firing);
        other.id = "pump-health~pump-07~1700000000000000000".into();
        other.key = "pump-07".into();
        let key = grouping.key(&other);
        assert_eq!(key, r#"{"alertname":"pump-health","severity":"warning"}"#);
        let email = Notifier::Email {
            name: "mail".into(),
            server: crate::smtp::SmtpServer::from_url("smtp://127.0.0.1:25").unwrap(),
            from: "f@x.y".into(),
            to: vec!["t@x.y".into()],
            timeout: Duration::from_secs(1),
            grouping: grouping.clone(),
            route: Route::default(),
        };
        assert!(email.grouping().is_some());
        let queued = [
            alert_message(&alert(AlertState::Firing), "http://f"),
            alert_message(&other, "http://f"),
            alert_message(&alert(AlertState::Resolved), "http://f"),
        ];
        let merged = email.merge(&queued, &key, &[]);
        assert_eq!(merged["alerts"].as_array().unwrap().len(), 2, "{merged}");
        assert_eq!(
            merged["alerts"][0]["status"], "resolved",
            "latest state wins"
        );
        let text = email_text(&merged, "f@x.y", &["t@x.y".into()]);
        let (headers, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            headers.contains("Subject: [FIRING:1 RESOLVED:1] pump-health warning: 2 alerts"),
            "{headers}"
        );
        let decoded = decoded_text(body);
        assert!(
            decoded.contains("RESOLVED  pump-health on pump-02"),
            "{decoded}"
        );
        assert!(
            decoded.contains("FIRING    pump-health on pump-07"),
            "{decoded}"
        );
        assert!(decoded.contains("fabrik alert ack pump-health~pump-07~"));
        // MQTT notifiers and a zero wait do not group.
        let mut flat = grouping;
        flat.wait = Duration::ZERO;
        let webhook =
            Notifier::webhook("w", "http://x", Duration::from_secs(1), flat, None, None).unwrap();
        assert!(webhook.grouping().is_none());
    }

    #[test]
    fn passwords_stay_out_of_debug_output() {
        let auth = BasicAuth {
            user: "fabrik".into(),
            password: "s3cret".into(),
        };
        let mut server = SmtpServer::from_url("smtps://mail.plant:465").unwrap();
        server.credentials = Some(("fabrik".into(), "s3cret".into()));
        for text in [format!("{auth:?}"), format!("{server:?}")] {
            assert!(
                text.contains("fabrik") && !text.contains("s3cret"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_fingerprint_is_of_the_labels_not_of_the_episode() {
        let episode = |id: &str, severity: &str| Alert {
            id: id.into(),
            severity: severity.into(),
            ..alert(AlertState::Firing)
        };
        let print = |a: &Alert| {
            alertmanager_payload(a, "ops", "http://x")["alerts"][0]["fingerprint"].clone()
        };
        assert_eq!(
            print(&episode("hot/oven-1/1", "critical")),
            print(&episode("hot/oven-1/2", "critical"))
        );
        assert_ne!(
            print(&episode("hot/oven-1/1", "critical")),
            print(&episode("hot/oven-1/1", "warning"))
        );
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(50), Duration::from_secs(300));
    }
}
