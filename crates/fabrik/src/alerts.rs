//! The alerting module: evaluates `[[alerting.rules]]` on new rows with SQL, drives
//! `fabrik_alert`'s lifecycle, and runs the notification outbox.
//!
//! Like pipelines, rules read the store (so they apply alike to samples from any source and to
//! the `inferences` table); a rule's value is any SQL expression, which is how expressions over
//! several signals are written.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::DataType;
use fabrik_alert::notify::{GroupLabel, Grouping, Route};
use fabrik_alert::{Alerting, Condition, Notifier, Observation, Rule};
use fabrik_api::alert_rules::{
    AlertRuleBoard, AlertRuleControl, AlertRuleStatus, RuleHealth, RuleOrigin,
};
use fabrik_api::control::{ControlError, DryRun, describe_problems};
use fabrik_connect::client::{ClientEvent, ClientOptions, ClientTls, MqttClient};
use fabrik_connect::mqtt::broker::{Broker, Message, PublishProperties};
use fabrik_core::Timestamp;
use fabrik_runtime::ServiceHandle;
use fabrik_runtime::config::{AlertActionValue, AlertRuleConfig, Config, NotifierConfig};
use fabrik_runtime::units::parse_duration;
use fabrik_store::Store;

use crate::columns::cast_column;
use crate::openlineage::{Dataset, Emitter, EventType, StreamingRun, table_dataset};
use crate::stored::{compile_batch, definitions_json, read_definitions, store_file};
use crate::{alert_fill, sql_text};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

/// Rows read per rule and pass.
const READ_LIMIT: usize = 20_000;
/// How long a write may take between taking its raw-message id and committing.
const SETTLE_NS: i64 = 1_000_000_000;
/// Alertmanager's default `repeat_interval`: a still-firing alert is notified again after.
const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 3600);
/// How often a heartbeat rule's `expect` re-reads the registry.
const EXPECT_REFRESH: Duration = Duration::from_secs(10);

/// A rule checked and ready to evaluate.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    config: AlertRuleConfig,
    rule: Rule,
    interval: Duration,
    replay: bool,
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks one rule; every problem with its field.
pub(crate) fn compile_rule(c: &AlertRuleConfig) -> Result<CompiledRule, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let mut problem = |field: &str, message: String| problems.push((field.to_owned(), message));
    if !name_ok(&c.name) {
        problem(
            "name",
            format!("`{}`: use letters, digits, `-`, `_` and `.`", c.name),
        );
    }
    let names = [("table", &c.table), ("key", &c.key)]
        .into_iter()
        .chain(c.context.iter().map(|column| ("context", column)));
    for (field, value) in names {
        if value.is_empty() || value.contains('"') {
            problem(
                field,
                format!("`{value}` is not a usable column or table name"),
            );
        }
    }
    for (field, value) in [("value", Some(&c.value)), ("filter", c.filter.as_ref())] {
        if let Some(v) = value
            && let Err(why) = sql_text::one_expression(v)
        {
            problem(field, why);
        }
    }
    if !c.threshold.is_finite() {
        problem("threshold", "must be a finite number".into());
    }
    let clear = c.clear.unwrap_or(c.threshold);
    let error_rate_method = match c.detector.as_deref() {
        None => None,
        Some(name) if c.condition != "error_rate" => {
            problem(
                "detector",
                format!("`{name}`: only `error_rate` rules choose a detector"),
            );
            None
        }
        Some(name) => {
            let method = fabrik_alert::ErrorRateMethod::parse(name);
            if method.is_none() {
                let names: Vec<&str> = fabrik_alert::ErrorRateMethod::ALL
                    .iter()
                    .map(|(n, _)| *n)
                    .collect();
                problem(
                    "detector",
                    format!(
                        "`{name}`: an error_rate rule's detector is one of {}",
                        names.join(", ")
                    ),
                );
            }
            method
        }
    };
    let condition = match c.condition.as_str() {
        "above" if clear <= c.threshold => Some(Condition::Above {
            fire: c.threshold,
            clear,
        }),
        "below" if clear >= c.threshold => Some(Condition::Below {
            fire: c.threshold,
            clear,
        }),
        "above" | "below" => {
            problem(
                "clear",
                "must be on the normal side of the threshold (≤ for above, ≥ for below)".into(),
            );
            None
        }
        "rate_above" if c.threshold > 0.0 => Some(Condition::RateAbove {
            per_second: c.threshold,
        }),
        "absent" if c.threshold > 0.0 => Some(Condition::Absent {
            after_ns: (c.threshold * 1e9) as i64,
        }),
        "unchanged" if c.threshold > 0.0 => Some(Condition::Unchanged {
            after_ns: (c.threshold * 1e9) as i64,
        }),
        "rate_above" | "absent" | "unchanged" => {
            problem("threshold", "must be greater than zero".into());
            None
        }
        "change" | "error_rate" | "distribution" => {
            // `threshold` is the detector's confidence (ADWIN's, HDDM_A's drift confidence,
            // KSWIN's level), `clear` the values without another detection that resolve the
            // alert.
            let (default, values) = match c.condition.as_str() {
                "change" => ("0.002 is river's default", "values without another change"),
                "error_rate" => (
                    match error_rate_method.unwrap_or_default() {
                        fabrik_alert::ErrorRateMethod::HddmA => {
                            "0.001 is river's default for HDDM_A"
                        }
                        fabrik_alert::ErrorRateMethod::HddmW => {
                            "0.001 is river's default for HDDM_W"
                        }
                        fabrik_alert::ErrorRateMethod::Ddm => {
                            "for DDM, the drift level in deviations: above 0, at most 100; river's default is 3"
                        }
                        fabrik_alert::ErrorRateMethod::Eddm => {
                            "for EDDM, the drift ratio; river's default is 0.9"
                        }
                        fabrik_alert::ErrorRateMethod::Fhddm => "1e-6 is river's default for FHDDM",
                    },
                    "outcomes without another drift",
                ),
                _ => (
                    "KSWIN tests at every value: 1e-6 kept 100,000 stationary values free of \
                     false alarms, river's 0.005 raised 133",
                    "values without another detection",
                ),
            };
            let settle = c.clear.unwrap_or(30.0);
            let valid = match c.condition.as_str() {
                "error_rate" => error_rate_method.unwrap_or_default().accepts(c.threshold),
                _ => c.threshold > 0.0 && c.threshold < 1.0,
            };
            if !valid {
                let range = if error_rate_method == Some(fabrik_alert::ErrorRateMethod::Ddm) {
                    ""
                } else {
                    "above 0 and below 1 "
                };
                problem(
                    "threshold",
                    format!(
                        "{} is not a valid level for `{}`: {range}({default})",
                        c.threshold, c.condition
                    ),
                );
                None
            } else if !((1.0..=1e6).contains(&settle) && settle.fract() == 0.0) {
                problem(
                    "clear",
                    format!(
                        "{settle}: for `{}`, the whole number of {values} that resolve the \
                         alert (1 to 1,000,000; default 30)",
                        c.condition
                    ),
                );
                None
            } else if c.condition == "change" {
                Some(Condition::Change {
                    delta: c.threshold,
                    settle: settle as u32,
                })
            } else if c.condition == "distribution" {
                Some(Condition::Distribution {
                    alpha: c.threshold,
                    settle: settle as u32,
                })
            } else {
                Some(Condition::ErrorRate {
                    method: error_rate_method.unwrap_or_default(),
                    threshold: c.threshold,
                    settle: settle as u32,
                })
            }
        }
        other => {
            problem(
                "condition",
                format!(
                    "`{other}`: expected above, below, rate_above, absent, unchanged, change, \
                     distribution or error_rate"
                ),
            );
            None
        }
    };
    match (c.fill.as_deref(), c.condition.as_str()) {
        (None, _) => {}
        (
            Some(_),
            "absent" | "unchanged" | "rate_above" | "change" | "error_rate" | "distribution",
        ) => problem(
            "fill",
            format!(
                "does not apply to `{}`: a filled value repeats the last one, which would look \
                 frozen or still (it applies to above and below)",
                c.condition
            ),
        ),
        (Some("previous"), _) => {}
        (Some(other), _) => problem(
            "fill",
            format!("`{other}`: expected `previous` (or leave it out)"),
        ),
    }
    let for_ns = parse_duration(&c.for_duration)
        .map_err(|e| problem("for", e))
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok());
    // A change holds for `clear` values, not for a time: a `for` longer than they take would
    // let it resolve while still pending, and no one would hear of it.
    if matches!(
        c.condition.as_str(),
        "change" | "error_rate" | "distribution"
    ) && for_ns.is_some_and(|ns| ns > 0)
    {
        problem(
            "for",
            format!(
                "does not apply to `{}`: the alert holds for `clear` values after a \
                 detection, which a wait could outlast",
                c.condition
            ),
        );
    }
    let interval = parse_duration(&c.interval)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            problem(
                "interval",
                format!("`{}` is not a duration > 0", c.interval),
            )
        })
        .ok();
    // Silence is measured at each evaluation: one shorter than the interval between them
    // cannot be told from the gap to the next evaluation, and fires on every device that
    // reports less often than each interval.
    if let Some(every) = interval
        && matches!(c.condition.as_str(), "absent" | "unchanged")
        && c.threshold > 0.0
        && c.threshold < every.as_secs_f64()
    {
        problem(
            "threshold",
            format!(
                "{} s is shorter than the rule's `interval` ({}): an `{}` rule measures at \
                 each evaluation, so use at least the interval (and more than the devices' \
                 reporting period)",
                c.threshold, c.interval, c.condition
            ),
        );
    }
    if !matches!(c.severity.as_str(), "critical" | "warning" | "info") {
        problem(
            "severity",
            format!("`{}`: expected critical, warning or info", c.severity),
        );
    }
    for (name, template) in &c.annotations {
        let usable = !name.is_empty()
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if !usable {
            problem(
                "annotations",
                format!("`{name}`: name annotations with letters, digits and `_`"),
            );
        }
        if c.context.contains(name) {
            problem(
                "annotations",
                format!("`{name}` is also a context column; name one of them otherwise"),
            );
        }
        for placeholder in fabrik_alert::notify::placeholders(template) {
            let known = matches!(placeholder, "rule" | "device" | "severity" | "value")
                || c.context.iter().any(|column| column == placeholder);
            if !known {
                problem(
                    "annotations",
                    format!(
                        "{name}: `{{{placeholder}}}` is none of rule, device, severity, value \
                         or a `context` column"
                    ),
                );
            }
        }
    }
    if let Some(action) = &c.action {
        if action.signal.trim().is_empty() {
            problem("action.signal", "must name a writable point".into());
        }
        if let AlertActionValue::Number(n) = action.value
            && !n.is_finite()
        {
            problem("action.value", format!("{n} is not a finite number"));
        }
        if action
            .device
            .as_deref()
            .is_some_and(|d| d.trim().is_empty())
        {
            problem(
                "action.device",
                "leave it out to write each alert's device".into(),
            );
        }
    }
    let heartbeat = c.condition == "absent";
    if c.clear.is_some() && matches!(c.condition.as_str(), "absent" | "rate_above" | "unchanged") {
        problem(
            "clear",
            format!(
                "applies to `above` and `below` rules, not `{}`",
                c.condition
            ),
        );
    }
    match &c.expect {
        Some(_) if !heartbeat => {
            problem("expect", "applies to `absent` rules only".into());
        }
        Some(expect) if expect.devices.is_empty() && !expect.uses_registry() => {
            problem(
                "expect",
                "names no device: give `devices`, a registry filter (`site`, `device_type`, \
                 `label`) or `registered = true`"
                    .into(),
            );
        }
        _ => {}
    }
    let replay = match c.start.as_str() {
        "now" => false,
        "earliest" => true,
        other => {
            problem("start", format!("`{other}`: expected `now` or `earliest`"));
            false
        }
    };
    match (condition, for_ns, interval) {
        (Some(condition), Some(for_ns), Some(interval)) if problems.is_empty() => {
            Ok(CompiledRule {
                rule: Rule {
                    name: c.name.clone(),
                    severity: c.severity.clone(),
                    condition,
                    for_ns,
                    annotations: c.annotations.clone(),
                    action: c.action.as_ref().map(|a| fabrik_alert::RuleAction {
                        device: a.device.clone(),
                        signal: a.signal.clone(),
                        value: match a.value {
                            AlertActionValue::Bool(b) => serde_json::Value::Bool(b),
                            AlertActionValue::Number(n) => serde_json::Value::from(n),
                        },
                        summary: a.summary.clone(),
                    }),
                },
                config: c.clone(),
                interval,
                replay,
            })
        }
        _ => Err(problems),
    }
}

/// What a checked notifier needs to be built.
enum NotifierPlan {
    Webhook,
    /// To this process's MQTT endpoint.
    MqttEmbedded,
    /// To an external broker: its client options.
    MqttExternal(ClientOptions),
    Email(fabrik_alert::smtp::SmtpServer),
}

const DEFAULT_ALERT_TOPIC: &str = "fabrik/alerts/{rule}/{device}";

/// Whether an http(s) URL names this host (`localhost`, 127.0.0.0/8 or `[::1]`), as the
/// HTTP client will parse it (WHATWG URL rules: `\\` counts as `/`, and so on).
fn loopback_url(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    let Some(host) = parsed.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn plausible_address(a: &str) -> bool {
    !a.is_empty()
        && !a.contains(['<', '>', ' ', ','])
        && !a.chars().any(char::is_control)
        && a.rsplit_once('@').is_some_and(|(local, domain)| {
            // One `@` outside a quoted local part (`ops@@plant` passed before), and a domain
            // of dot-separated ASCII labels (an internationalised one in its punycode form,
            // `xn--…`: the SMTP client does not convert it) or an address literal.
            let literal = domain.starts_with('[') && domain.ends_with(']') && domain.len() > 2;
            !local.is_empty()
                && (!local.contains('@') || (local.starts_with('"') && local.ends_with('"')))
                && (literal
                    || domain.split('.').all(|label| {
                        !label.is_empty()
                            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    }))
        })
}

/// Checks one notifier; every problem with its field.
fn check_notifier(
    n: &NotifierConfig,
) -> Result<(NotifierPlan, Duration, Grouping), Vec<(String, String)>> {
    let mut problems: Vec<(String, String)> = Vec::new();
    let mut problem = |field: &str, message: String| problems.push((field.to_owned(), message));
    if !name_ok(&n.name) {
        problem("name", format!("`{}` is not a valid name", n.name));
    }
    let timeout = match parse_duration(&n.timeout) {
        Ok(timeout) if timeout.is_zero() => {
            problem("timeout", "must be greater than zero".into());
            None
        }
        Ok(timeout) => Some(timeout),
        Err(e) => {
            problem("timeout", e);
            None
        }
    };
    for severity in &n.severities {
        if !matches!(severity.as_str(), "critical" | "warning" | "info") {
            problem(
                "severities",
                format!("`{severity}`: expected critical, warning or info"),
            );
        }
    }
    for (field, patterns) in [("rules", &n.rules), ("devices", &n.devices)] {
        for pattern in patterns {
            if pattern.trim().is_empty() {
                problem(
                    field,
                    "has an empty pattern (leave the list out to take every one)".into(),
                );
            } else if pattern.trim() != pattern {
                problem(
                    field,
                    format!("`{pattern}` has spaces around it, which names never have"),
                );
            }
        }
    }
    let mut grouping = Grouping::default();
    match parse_duration(&n.group_wait) {
        Ok(wait) => grouping.wait = wait,
        Err(e) => problem("group_wait", e),
    }
    for label in &n.group_by {
        match GroupLabel::parse(label) {
            Some(l) if !grouping.by.contains(&l) => grouping.by.push(l),
            Some(_) => problem("group_by", format!("`{label}` is named twice")),
            None => problem(
                "group_by",
                format!("`{label}`: expected rule, device or severity"),
            ),
        }
    }
    if n.kind == "mqtt" && !grouping.wait.is_zero() {
        problem(
            "group_wait",
            "does not apply to kind = \"mqtt\" (its topics carry one alert's state each)".into(),
        );
    }
    match (&n.repeat_interval, n.kind.as_str()) {
        (Some(_), "mqtt") => problem(
            "repeat_interval",
            "does not apply to kind = \"mqtt\" (a retained topic keeps the state)".into(),
        ),
        (Some(text), _) => match parse_duration(text) {
            Ok(repeat) => grouping.repeat = repeat,
            Err(e) => problem("repeat_interval", e),
        },
        (None, "mqtt") => {}
        (None, _) => grouping.repeat = DEFAULT_REPEAT_INTERVAL,
    }
    let mqtt_only = [
        ("topic", n.topic.is_some()),
        ("retain", n.retain),
        ("qos", n.qos != 1),
        ("mqtt_version", n.mqtt_version.is_some()),
    ];
    let email_only = [
        ("from", n.from.is_some()),
        ("to", !n.to.is_empty()),
        ("starttls", !n.starttls),
    ];
    let mut not_for = |fields: &[(&str, bool)], kind: &str| {
        for (field, set) in fields {
            if *set {
                problem(field, format!("does not apply to kind = \"{kind}\""));
            }
        }
    };
    let plan = match n.kind.as_str() {
        "webhook" => {
            not_for(&mqtt_only, "webhook");
            not_for(&email_only, "webhook");
            let https = n.url.starts_with("https://");
            if !(https || n.url.starts_with("http://")) {
                problem("url", format!("`{}` is not an http(s) URL", n.url));
            } else if reqwest::Url::parse(&n.url)
                .is_ok_and(|u| !u.username().is_empty() || u.password().is_some())
            {
                // Credentials in the URL would be logged with it and sent unchecked.
                problem(
                    "url",
                    "carries credentials: give them as `username` and `password`".into(),
                );
            }
            if n.ca.is_some() && !https {
                problem("ca", "applies only to an https:// receiver".into());
            }
            match (&n.username, &n.password) {
                (Some(_), None) => problem("password", "is needed with `username`".into()),
                (None, Some(_)) => problem("username", "is needed with `password`".into()),
                // Basic authentication sends the password as it is: only inside TLS, or to a
                // receiver on this host.
                (Some(_), Some(_)) if !https && !loopback_url(&n.url) => problem(
                    "password",
                    "is sent only over https:// (or to a receiver on this host)".into(),
                ),
                _ => {}
            }
            Some(NotifierPlan::Webhook)
        }
        "mqtt" => {
            not_for(&email_only, "mqtt");
            if n.qos > 1 {
                problem(
                    "qos",
                    format!("{} (alerts are published at QoS 0 or 1)", n.qos),
                );
            }
            let topic = n.topic.as_deref().unwrap_or(DEFAULT_ALERT_TOPIC);
            for unknown in fabrik_alert::notify::placeholders(topic)
                .into_iter()
                .filter(|name| !matches!(*name, "rule" | "device" | "severity" | "status"))
            {
                problem(
                    "topic",
                    format!(
                        "`{topic}`: `{{{unknown}}}` is not a placeholder (rule, device, \
                         severity or status)"
                    ),
                );
            }
            let probe = topic
                .replace("{rule}", "r")
                .replace("{device}", "d")
                .replace("{severity}", "s")
                .replace("{status}", "f");
            if let Err(e) = fabrik_connect::mqtt::topic::validate_name(&probe) {
                problem("topic", format!("`{topic}`: {e}"));
            }
            if n.url.is_empty() {
                for (field, set) in [
                    ("username", n.username.is_some()),
                    ("password", n.password.is_some()),
                    ("ca", n.ca.is_some()),
                    ("mqtt_version", n.mqtt_version.is_some()),
                ] {
                    if set {
                        problem(
                            field,
                            "applies only to an external broker (`url = \"mqtt(s)://host:port\"`)"
                                .into(),
                        );
                    }
                }
                Some(NotifierPlan::MqttEmbedded)
            } else {
                let scheme = if let Some(rest) = n.url.strip_prefix("mqtts://") {
                    Some((true, rest.trim_end_matches('/')))
                } else {
                    n.url
                        .strip_prefix("mqtt://")
                        .map(|rest| (false, rest.trim_end_matches('/')))
                };
                match scheme.and_then(|(tls, rest)| {
                    let (host, port) = rest.rsplit_once(':')?;
                    (!host.is_empty() && port.parse::<u16>().is_ok()).then_some((tls, rest, host))
                }) {
                    Some((tls, rest, host)) => {
                        if tls && n.ca.is_none() {
                            problem("ca", "mqtts:// needs the broker's CA file".into());
                        }
                        let mut o = ClientOptions::new(
                            rest.to_owned(),
                            format!("fabrik-notifier-{}", n.name),
                        );
                        o.username = n.username.clone();
                        o.password = n.password.clone();
                        o.clean_session = true;
                        match fabrik_connect::client::speaks_mqtt5(n.mqtt_version.as_deref()) {
                            Ok(mqtt5) => o.mqtt5 = mqtt5,
                            Err(e) => problem("mqtt_version", e),
                        }
                        o.tls = tls.then(|| ClientTls {
                            ca: n.ca.clone().map(Into::into),
                            insecure: false,
                            server_name: host.to_owned(),
                        });
                        Some(NotifierPlan::MqttExternal(o))
                    }
                    None => {
                        problem(
                            "url",
                            format!(
                                "`{}`: expected mqtt://host:port, mqtts://host:port, or empty for this Fabrik's endpoint",
                                n.url
                            ),
                        );
                        None
                    }
                }
            }
        }
        "email" => {
            not_for(&mqtt_only, "email");
            match fabrik_alert::smtp::SmtpServer::from_url(&n.url) {
                Ok(mut server) => {
                    if !n.starttls && server.security == fabrik_alert::smtp::SmtpSecurity::StartTls
                    {
                        server.security = fabrik_alert::smtp::SmtpSecurity::None;
                        if n.password.is_some() {
                            problem("starttls", "a password is sent only over TLS; keep starttls = true or use smtps://".into());
                        }
                    }
                    if n.username.is_some() != n.password.is_some() {
                        problem(
                            "password",
                            "give both `username` and `password`, or neither".into(),
                        );
                    }
                    server.credentials = n.username.clone().zip(n.password.clone());
                    server.ca = n.ca.clone().filter(|c| !c.is_empty()).map(Into::into);
                    match &n.from {
                        Some(from) if plausible_address(from) => {}
                        Some(from) => problem("from", format!("`{from}` is not an e-mail address")),
                        None => problem("from", "an e-mail notifier needs a sender address".into()),
                    }
                    if n.to.is_empty() {
                        problem("to", "name at least one recipient".into());
                    }
                    for to in &n.to {
                        if !plausible_address(to) {
                            problem("to", format!("`{to}` is not an e-mail address"));
                        }
                    }
                    Some(NotifierPlan::Email(server))
                }
                Err(e) => {
                    problem("url", e);
                    None
                }
            }
        }
        other => {
            problem(
                "kind",
                format!("`{other}`: expected webhook, mqtt or email"),
            );
            None
        }
    };
    match (plan, timeout) {
        (Some(plan), Some(timeout)) if problems.is_empty() => Ok((plan, timeout, grouping)),
        _ => Err(problems),
    }
}

/// Publishes into this process's MQTT endpoint, as any client's publish would be routed.
struct EmbeddedPublisher(Arc<Broker>);

impl fabrik_alert::Publish for EmbeddedPublisher {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
        traceparent: Option<&'a str>,
    ) -> fabrik_alert::PublishFuture<'a> {
        let properties = traceparent.map(|tp| PublishProperties {
            user_properties: vec![("traceparent".into(), tp.into())],
            ..PublishProperties::default()
        });
        let message = Message {
            topic: Arc::from(topic),
            payload: payload.into(),
            qos,
            retain,
            properties,
            expires_at: None,
            publisher: None,
        };
        self.0.publish(message);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Publishes through a client of an external broker (QoS 1: after its PUBACK).
struct ClientPublisher(MqttClient);

impl fabrik_alert::Publish for ClientPublisher {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
        // A user property under MQTT 5 (the W3C's MQTT binding of Trace Context); a 3.1.1
        // message carries none.
        traceparent: Option<&'a str>,
    ) -> fabrik_alert::PublishFuture<'a> {
        let properties = traceparent
            .map(|tp| vec![("traceparent".to_owned(), tp.to_owned())])
            .unwrap_or_default();
        Box::pin(self.0.publish_with(topic, payload, qos, retain, properties))
    }
}

/// Builds a checked notifier; MQTT clients run until `stop`.
fn build_notifier(
    n: &NotifierConfig,
    broker: Option<&Arc<Broker>>,
    stop: &CancellationToken,
) -> Result<Notifier, String> {
    let (plan, timeout, grouping) = check_notifier(n).map_err(|p| {
        let (field, message) = p.into_iter().next().unwrap_or_default();
        format!("notifier `{}`: {field}: {message}", n.name)
    })?;
    let route = Route {
        severities: n.severities.clone(),
        rules: n.rules.clone(),
        devices: n.devices.clone(),
    };
    let topic = || {
        n.topic
            .clone()
            .unwrap_or_else(|| DEFAULT_ALERT_TOPIC.to_owned())
    };
    Ok(match plan {
        NotifierPlan::Webhook => Notifier::webhook(
            &n.name,
            &n.url,
            timeout,
            grouping,
            n.ca.as_deref().map(std::path::Path::new),
            n.username
                .clone()
                .zip(n.password.clone())
                .map(|(user, password)| fabrik_alert::notify::BasicAuth { user, password }),
        )
        .map_err(|e| e.to_string())?,
        NotifierPlan::MqttEmbedded => {
            let broker = broker.ok_or_else(|| format!(
                "notifier `{}` publishes to this process's MQTT endpoint, which is not running here; start the mqtt module or give the notifier a `url`",
                n.name
            ))?;
            Notifier::Mqtt {
                name: n.name.clone(),
                topic: topic(),
                qos: n.qos,
                retain: n.retain,
                timeout,
                publisher: fabrik_alert::Publisher(Arc::new(EmbeddedPublisher(broker.clone()))),
                route: Route::default(),
            }
        }
        NotifierPlan::MqttExternal(options) => {
            let address = options.address.clone();
            let (client, mut events) = MqttClient::start(options, stop.child_token())
                .map_err(|e| format!("notifier `{}`: {e}", n.name))?;
            let name = n.name.clone();
            // The client reports connection changes; nothing subscribes, so they are only logged.
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    match event {
                        ClientEvent::Connected => {
                            tracing::info!(notifier = %name, broker = %address, "Alert notifier connected.")
                        }
                        ClientEvent::Disconnected(reason) => {
                            tracing::warn!(notifier = %name, broker = %address, %reason, "Alert notifier lost its broker; reconnecting.")
                        }
                        ClientEvent::Message(_) => {}
                    }
                }
            });
            Notifier::Mqtt {
                name: n.name.clone(),
                topic: topic(),
                qos: n.qos,
                retain: n.retain,
                timeout,
                publisher: fabrik_alert::Publisher(Arc::new(ClientPublisher(client))),
                route: Route::default(),
            }
        }
        NotifierPlan::Email(server) => Notifier::Email {
            name: n.name.clone(),
            server,
            from: n.from.clone().unwrap_or_default(),
            to: n.to.clone(),
            timeout,
            grouping,
            route: Route::default(),
        },
    }
    .routed(route))
}

/// Problems of `[alerting]`, as `alerting.rules[i].field` (notifiers and inhibitions alike).
pub(crate) fn check(config: &Config) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for (i, r) in config.alerting.rules.iter().enumerate() {
        if !names.insert(r.name.as_str()) {
            problems.push((
                format!("alerting.rules[{i}].name"),
                format!("`{}` is used by an earlier rule", r.name),
            ));
        }
        if let Err(found) = compile_rule(r) {
            problems.extend(
                found
                    .into_iter()
                    .map(|(f, m)| (format!("alerting.rules[{i}].{f}"), m)),
            );
        }
    }
    let mut notifier_names = BTreeSet::new();
    for (i, n) in config.alerting.notifiers.iter().enumerate() {
        // The outbox and the record of who was told go by name: a second notifier of the
        // same name would never be reached.
        if !notifier_names.insert(n.name.as_str()) {
            problems.push((
                format!("alerting.notifiers[{i}].name"),
                format!("`{}` is used by an earlier notifier", n.name),
            ));
        }
        if let Err(found) = check_notifier(n) {
            problems.extend(
                found
                    .into_iter()
                    .map(|(f, m)| (format!("alerting.notifiers[{i}].{f}"), m)),
            );
        }
    }
    if let Err(e) = alert_retention(&config.alerting.retention) {
        problems.push(("alerting.retention".into(), e));
    }
    // The rules an inhibition may name: the file's, the demo's when the file defines none,
    // and those defined through the API (stored in the data directory) — as at start.
    let mut known: Vec<String> = config
        .alerting
        .rules
        .iter()
        .map(|r| r.name.clone())
        .collect();
    if config.alerting.rules.is_empty() && config.pipelines.is_empty() {
        known.extend(demo_rules().into_iter().map(|r| r.name));
    }
    let stored = std::path::Path::new(&config.store.data_dir).join(STORED_RULES_FILE);
    if let Ok(definitions) = read_definitions::<AlertRuleConfig>(&stored, "alert rule") {
        known.extend(definitions.into_iter().map(|d| d.name));
    }
    known.sort();
    known.dedup();
    for (i, inhibition) in config.alerting.inhibitions.iter().enumerate() {
        let names = std::iter::once(("source", &inhibition.source))
            .chain(inhibition.targets.iter().map(|t| ("targets", t)));
        for (field, name) in names {
            if !name.trim().is_empty() && !name.contains('*') && !known.contains(name) {
                problems.push((
                    format!("alerting.inhibitions[{i}].{field}"),
                    format!(
                        "no alert rule is named `{name}` (rules: {})",
                        known.join(", ")
                    ),
                ));
            }
        }
        if inhibition.source.trim().is_empty() {
            problems.push((
                format!("alerting.inhibitions[{i}].source"),
                "name the rule (or a pattern with `*`) whose firing alerts inhibit".into(),
            ));
        }
        if inhibition.targets.is_empty() {
            problems.push((
                format!("alerting.inhibitions[{i}].targets"),
                "name the rules (or patterns with `*`) whose alerts are held back".into(),
            ));
        }
        if inhibition.targets.iter().any(|t| t.trim().is_empty()) {
            problems.push((
                format!("alerting.inhibitions[{i}].targets"),
                "an empty rule name matches nothing".into(),
            ));
        }
    }
    problems
}

/// The registry filter of a rule's `expect` by site, type and label.
fn expect_filter(expect: &fabrik_runtime::config::ExpectConfig) -> fabrik_registry::DeviceFilter {
    fabrik_registry::DeviceFilter {
        site: expect.site.clone(),
        device_type: expect.device_type.clone(),
        state: None,
        label: expect.label.clone(),
    }
}

/// `alerting.retention`: a duration > 0, or `forever` (`None`).
fn alert_retention(text: &str) -> Result<Option<Duration>, String> {
    if text == "forever" {
        return Ok(None);
    }
    match parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(Some(d)),
        Ok(_) => Err("must be greater than zero (or `forever`)".into()),
        Err(e) => Err(format!("{e} (or `forever`)")),
    }
}

/// The demo's causes and consequences: a pump that went quiet or whose pressure sensor froze
/// is that pump's page; its model's anomaly (its windows stop, or a frozen signal looks
/// abnormal) is held back meanwhile.
fn demo_inhibitions() -> Vec<fabrik_alert::Inhibition> {
    vec![
        fabrik_alert::Inhibition {
            source: "pump-silent".into(),
            targets: vec![
                "pump-anomaly".into(),
                "pump-noise".into(),
                "pressure-frozen".into(),
            ],
            same_device: true,
        },
        fabrik_alert::Inhibition {
            source: "pressure-frozen".into(),
            targets: vec!["pump-anomaly".into()],
            same_device: true,
        },
    ]
}

/// Every rule the demo plant gets when none is configured.
fn demo_rules() -> Vec<AlertRuleConfig> {
    [
        demo_rule(),
        demo_noise_rule(),
        demo_frozen_rule(),
        demo_chiller_pressure_rule(),
    ]
    .into_iter()
    .chain(demo_heartbeat_rules())
    .collect()
}

/// The rule the demo plant gets when none is configured: anomalous windows of `pump-health`.
fn demo_rule() -> AlertRuleConfig {
    AlertRuleConfig {
        name: "pump-anomaly".into(),
        table: crate::pipelines::INFERENCES_TABLE.into(),
        value: "score / threshold".into(),
        key: "device".into(),
        filter: Some("pipeline = 'pump-health'".into()),
        fill: None,
        condition: "above".into(),
        detector: None,
        threshold: 1.0,
        clear: Some(0.8),
        for_duration: "0s".into(),
        severity: "warning".into(),
        // The window and pipeline lead from the alert to the inference that fired it, and
        // on to its input samples.
        context: vec![
            "top_signal".into(),
            "contributions".into(),
            "window_id".into(),
            "pipeline".into(),
        ],
        interval: "1s".into(),
        start: "now".into(),
        expect: None,
        action: None,
        annotations: BTreeMap::from([
            (
                "summary".to_owned(),
                "Pump {device} behaves unlike its normal: {top_signal} stands out (score \
                 {value} × its threshold)"
                    .to_owned(),
            ),
            (
                "runbook".to_owned(),
                "Open the alert's inference in the dashboard (Pipelines) to see the window and \
                 each feature's contribution; check the pump named there before acknowledging."
                    .to_owned(),
            ),
        ]),
    }
}

/// Anomalous windows of `pump-acoustic`: a pump that sounds unlike its normal (the demo's
/// bearing wear whines in the 2.5–3.5 kHz band).
fn demo_noise_rule() -> AlertRuleConfig {
    AlertRuleConfig {
        name: "pump-noise".into(),
        filter: Some("pipeline = 'pump-acoustic'".into()),
        annotations: BTreeMap::from([
            (
                "summary".to_owned(),
                "Pump {device} sounds unlike its normal (score {value} × its threshold; \
                 contributions by band: {contributions})"
                    .to_owned(),
            ),
            (
                "runbook".to_owned(),
                "A rise in band:2500-3500 is the whine of a worn bearing: listen to the clip \
                 (GET /api/v1/blobs/<id> of the window's row in `clips`) and check the pump's \
                 vibration before acknowledging."
                    .to_owned(),
            ),
        ]),
        ..demo_rule()
    }
}

/// The demo's second rule: a pump's pressure reported unchanged for 20 s, which the plant's
/// stuck-sensor fault produces and its noisy sensors never do (values to 4 decimals).
fn demo_frozen_rule() -> AlertRuleConfig {
    AlertRuleConfig {
        name: "pressure-frozen".into(),
        table: "pump".into(),
        value: "pressure".into(),
        filter: None,
        fill: None,
        condition: "unchanged".into(),
        threshold: 20.0,
        clear: None,
        context: Vec::new(),
        annotations: BTreeMap::from([(
            "summary".to_owned(),
            "Pump {device}: pressure stuck at {value} bar; the sensor or its wiring is suspect"
                .to_owned(),
        )]),
        ..demo_rule()
    }
}

/// The demo's chiller rule: discharge pressure above 16.5 bar while the compressor runs, for
/// 30 s, clearing below 16. A running chiller's is 14.5–15.5 bar; the plant's
/// condenser-fouling drift raises it by up to 3.5 bar over ten minutes (the PLC's own
/// high-pressure alarm bit is set only at 17, close to the trip level), and no model of the
/// demo watches the chillers. The compressor cycles on its thermostat every minute or so,
/// and a stopped one reads 6 bar: only running rows count, or the rule would resolve at
/// every stop.
fn demo_chiller_pressure_rule() -> AlertRuleConfig {
    AlertRuleConfig {
        name: "chiller-pressure-high".into(),
        table: "chiller".into(),
        value: "discharge_pressure".into(),
        filter: Some("running".into()),
        fill: None,
        condition: "above".into(),
        threshold: 16.5,
        clear: Some(16.0),
        for_duration: "30s".into(),
        context: Vec::new(),
        annotations: BTreeMap::from([
            (
                "summary".to_owned(),
                "Chiller {device}: discharge pressure {value} bar, above 16.5 for 30 s while \
                 running; the condenser is fouling or its fan failing"
                    .to_owned(),
            ),
            (
                "runbook".to_owned(),
                "Check the condenser coil and fan; clean the coil before the high-pressure \
                 cut-out trips the compressor."
                    .to_owned(),
            ),
        ]),
        // Proposed, never applied by itself (decision 0092): a warmer supply unloads the
        // compressor until the coil is cleaned.
        action: Some(fabrik_runtime::config::AlertActionConfig {
            signal: "setpoint".into(),
            value: AlertActionValue::Number(10.0),
            device: None,
            summary: Some(
                "Raise the chilled-water set-point to 10 °C to unload the compressor until the \
                 condenser is cleaned."
                    .into(),
            ),
        }),
        ..demo_rule()
    }
}

/// The demo's heartbeat rules: a device of `table` whose `value` column has not been reported
/// for `seconds`. They catch the plant's drop-outs (a pump that stops publishing, a chiller
/// PLC that stops answering, the filler's OPC UA server restarting) and its stuck OPC UA
/// sensor: the server reports only changes, so a frozen value sends no rows at all, which an
/// `unchanged` rule never sees, while its absence is plain.
fn demo_heartbeat_rules() -> Vec<AlertRuleConfig> {
    let silent =
        |name: &str, table: &str, value: &str, seconds: f64, summary: &str| AlertRuleConfig {
            name: name.into(),
            table: table.into(),
            value: value.into(),
            filter: Some(format!("{value} IS NOT NULL")),
            fill: None,
            condition: "absent".into(),
            threshold: seconds,
            clear: None,
            context: Vec::new(),
            annotations: BTreeMap::from([("summary".to_owned(), summary.to_owned())]),
            ..demo_rule()
        };
    vec![
        silent(
            "pump-silent",
            "pump",
            "vibration_rms",
            15.0,
            "Pump {device} has sent nothing for 15 s: check its link and power",
        ),
        silent(
            "chiller-silent",
            "chiller",
            "discharge_pressure",
            15.0,
            "Chiller {device}'s PLC has not answered for 15 s (Modbus): check it and its network",
        ),
        silent(
            "line-temp-silent",
            "filler",
            "product_temp",
            20.0,
            "Line {device}: no new product temperature for 20 s; the OPC UA server reports \
             only changes, so the sensor is stuck or the server is down",
        ),
    ]
}

/// The file in the data directory that keeps the rules defined through the API.
pub(crate) const STORED_RULES_FILE: &str = "alert_rules.json";

/// One rule the manager knows, evaluating or not.
struct ManagedRule {
    origin: RuleOrigin,
    config: AlertRuleConfig,
    stop: CancellationToken,
    /// `None` when its stored definition does not compile. The evaluator ends with the
    /// arrival id it had read up to.
    task: Option<tokio::task::JoinHandle<Option<i64>>>,
}

impl ManagedRule {
    /// Stops the evaluator and waits until it has ended, so it cannot observe after this
    /// returns. Returns where it had read up to (`Some(None)`: nothing yet, from the
    /// earliest row), `None` when it was not running.
    async fn stop(self) -> Option<Option<i64>> {
        self.stop.cancel();
        self.task?.await.ok()
    }
}

/// What a rule watches, as saved with its read position: a position is resumed only by a
/// definition that watches the same (see [`watches_the_same`]).
fn watch_signature(config: &AlertRuleConfig) -> String {
    // Versioned: a signature written in another form says nothing about whether the rule
    // changed, so it neither resumes nor starts the rule afresh.
    let watched = serde_json::json!([
        config.table,
        config.key,
        config.filter,
        config.value,
        config.condition,
        config.fill
    ]);
    format!("{WATCH_SIGNATURE_VERSION}{watched}")
}

/// The form of [`watch_signature`]'s text.
const WATCH_SIGNATURE_VERSION: &str = "2:";

/// How far back a `start = "now"` rule catches up after a restart: rows that arrived while
/// Fabrik was down are evaluated, up to this long ago; older ones would only page for
/// what is long over.
const CATCH_UP_NS: i64 = 3_600_000_000_000;

/// Whether two definitions of a rule watch the same thing: the same value of the same rows
/// per the same key, under the same condition. Only then do the old definition's open
/// alerts and read position carry over; a threshold, `for`, severity or interval may change.
fn watches_the_same(old: &AlertRuleConfig, new: &AlertRuleConfig) -> bool {
    watch_signature(old) == watch_signature(new)
}

#[derive(Default)]
struct Rules {
    by_name: BTreeMap<String, ManagedRule>,
    /// Stored API definitions whose name a configuration-file rule took: not evaluated, but
    /// kept in the file.
    shadowed: Vec<AlertRuleConfig>,
}

/// Runs the evaluators of the configuration file's, the demo's and the API's rules, and
/// applies the API's changes (stored in `alert_rules.json` first, so they survive a restart).
pub(crate) struct AlertRuleManager {
    store: Arc<Store>,
    alerting: Arc<Alerting>,
    registry: Option<fabrik_registry::Registry>,
    board: AlertRuleBoard,
    stop: CancellationToken,
    stored_path: std::path::PathBuf,
    /// One change at a time; held while a replaced evaluator is stopped.
    rules: tokio::sync::Mutex<Rules>,
    /// Where each evaluation's OpenLineage events go, if anywhere.
    lineage: Option<Emitter>,
    /// The configuration's writable points, which a rule's proposed action should name.
    writable: Vec<(String, String)>,
}

/// The dataset a rule's alerts are, beside the store's tables: the alerts live in the alerts
/// database (`alerts.db` or PostgreSQL), not in a table of the store.
pub(crate) const ALERTS_DATASET: &str = "alerting.alerts";

/// A rule's evaluation as an OpenLineage run (decision 0080): a streaming job that reads the
/// rule's table and writes alerts.
struct RuleLineage {
    run: StreamingRun,
    inputs: Vec<Dataset>,
    outputs: Vec<Dataset>,
}

impl RuleLineage {
    /// The run of `config`, with its table's columns (its key and context; those its value and
    /// filter read are in its `sql` facet) typed as `store` holds them.
    fn new(emitter: &Emitter, config: &AlertRuleConfig, store: &Store) -> Self {
        let columns: Vec<String> = std::iter::once(config.key.clone())
            .chain(config.context.iter().cloned())
            .collect();
        let table = table_dataset(store, &emitter.datasets, &config.table, &columns);
        let mut sql = format!("SELECT {} FROM \"{}\"", select_list(config), config.table);
        if let Some(filter) = &config.filter {
            sql.push_str(&format!(" WHERE {}", sql_text::embedded(filter)));
        }
        Self {
            run: StreamingRun::new(
                emitter,
                format!("alert_rule.{}", config.name),
                "ALERTING",
                Some(sql),
            ),
            inputs: vec![table],
            outputs: vec![Dataset::new(&emitter.datasets, ALERTS_DATASET)],
        }
    }

    fn emit(&self, event_type: EventType) {
        self.run.emit(event_type, &self.inputs, &self.outputs, None);
    }
}

fn rule_status(
    config: &AlertRuleConfig,
    origin: RuleOrigin,
    health: RuleHealth,
    error: Option<String>,
) -> AlertRuleStatus {
    AlertRuleStatus {
        warnings: Vec::new(),
        name: config.name.clone(),
        origin,
        health,
        error,
        last_evaluated: None,
        rows: 0,
        pending: 0,
        firing: 0,
        definition: config.clone(),
    }
}

impl AlertRuleManager {
    /// Starts evaluating `rule` under its name, reading after `resume` when given (the
    /// position of the definition it replaces) or where its `start` says; its engine is
    /// already in `alerting`.
    fn launch(
        &self,
        rules: &mut Rules,
        origin: RuleOrigin,
        rule: CompiledRule,
        resume: Option<Option<i64>>,
    ) {
        let name = rule.config.name.clone();
        self.board.write().insert(
            name.clone(),
            rule_status(&rule.config, origin, RuleHealth::Starting, None),
        );
        let stop = self.stop.child_token();
        let config = rule.config.clone();
        let evaluator = Evaluator {
            rule,
            store: self.store.clone(),
            alerting: self.alerting.clone(),
            registry: self.registry.clone(),
            expected_registered: parking_lot::Mutex::default(),
            board: self.board.clone(),
            filler: config.fill.is_some().then(Default::default),
            lineage: self
                .lineage
                .as_ref()
                .map(|emitter| RuleLineage::new(emitter, &config, &self.store)),
        };
        let task = tokio::spawn(evaluator.run(stop.clone(), resume));
        rules.by_name.insert(
            name,
            ManagedRule {
                origin,
                config,
                stop,
                task: Some(task),
            },
        );
    }

    /// Stops the evaluator of `rule`'s name, if any, and waits for it, then hands the new
    /// definition to the engine and starts evaluating it, so two versions never observe at
    /// once. If the new definition watches the same rows and value, it keeps the old one's
    /// state (open alerts, `for` timers, last values) and goes on reading where the old one
    /// stopped, so no row is skipped or evaluated twice; otherwise the old alerts resolve
    /// first and it starts afresh, as its `start` says. Nothing here can leave the rule
    /// unevaluated: the stored definitions already say it runs.
    async fn replace(&self, rules: &mut Rules, rule: CompiledRule) {
        let name = rule.config.name.clone();
        let mut resume = None;
        let mut carry_over = false;
        if let Some(previous) = rules.by_name.remove(&name) {
            let same = watches_the_same(&previous.config, &rule.config);
            let position = previous.stop().await;
            if same {
                // `None` when the old evaluator never ran (its definition did not load) or
                // crashed: the new one then starts as its `start` says.
                resume = position;
                carry_over = true;
            } else if let Err(e) = self.alerting.remove_rule(&name).await {
                tracing::error!(rule = %name, error = %e, "The replaced rule's alerts could not all be resolved; they stay open.");
            }
        }
        if let Err(e) = self
            .alerting
            .define_rule(rule.rule.clone(), carry_over)
            .await
        {
            tracing::error!(rule = %name, error = %e, "The rule's open alerts could not all be carried over; they stay open, and its next start restores them.");
        }
        self.launch(rules, RuleOrigin::Api, rule, resume);
    }

    /// The API's definitions after a change: all of them but those named in `except`, plus
    /// `with`, by name.
    fn api_definitions(
        rules: &Rules,
        except: &BTreeSet<&str>,
        with: &[AlertRuleConfig],
    ) -> Vec<AlertRuleConfig> {
        let mut definitions: Vec<AlertRuleConfig> = rules
            .by_name
            .values()
            .filter(|m| m.origin == RuleOrigin::Api && !except.contains(m.config.name.as_str()))
            .map(|m| m.config.clone())
            .chain(rules.shadowed.iter().cloned())
            .chain(with.iter().cloned())
            .collect();
        definitions.sort_by(|a, b| a.name.cmp(&b.name));
        definitions
    }

    /// Whether `config` is what rule `config.name` already evaluates: applying it again
    /// changes nothing (its evaluator is not restarted). One whose evaluator ended (its
    /// stored definition did not load) is started again.
    fn unchanged(rules: &Rules, config: &AlertRuleConfig) -> bool {
        rules.by_name.get(&config.name).is_some_and(|existing| {
            existing.origin == RuleOrigin::Api
                && existing.config == *config
                && existing
                    .task
                    .as_ref()
                    .is_some_and(|task| !task.is_finished())
        })
    }

    /// Whether a definition named `name` through the API would be new (`false`: it replaces
    /// one defined through the API); refused for the configuration file's or the demo's.
    fn defines_anew(rules: &Rules, name: &str) -> Result<bool, ControlError> {
        let Some(existing) = rules.by_name.get(name) else {
            return Ok(true);
        };
        match existing.origin {
            RuleOrigin::Api => Ok(false),
            RuleOrigin::Config => Err(ControlError::NotChangeable(format!(
                "alert rule `{name}` is defined in the configuration file; change it there"
            ))),
            RuleOrigin::Demo => Err(ControlError::NotChangeable(format!(
                "alert rule `{name}` is the demo plant's; define rules in the configuration \
                 file or under another name"
            ))),
        }
    }

    /// What [`Self::apply_definitions`] checks, without storing or starting anything; and
    /// what would keep the rule from evaluating once applied: its table missing, its
    /// expressions or columns not fitting the table as it is now, `expect` without a registry.
    async fn check_definition(&self, config: AlertRuleConfig) -> Result<DryRun, ControlError> {
        compile_rule(&config).map_err(ControlError::Invalid)?;
        let (created, replaced, unchanged) = {
            let rules = self.rules.lock().await;
            let created = Self::defines_anew(&rules, &config.name)?;
            let replaced = rules.by_name.get(&config.name).map(|m| m.config.clone());
            (created, replaced, Self::unchanged(&rules, &config))
        };
        let mut warnings = Vec::new();
        if replaced.is_some_and(|old| !watches_the_same(&old, &config)) {
            let open = self
                .alerting
                .db()
                .open_alerts()
                .await
                .map_err(|e| ControlError::Storage(e.to_string()))?
                .iter()
                .filter(|alert| alert.rule == config.name)
                .count();
            if open > 0 {
                warnings.push(format!(
                    "it watches other rows or another value than the definition it replaces \
                     (table, key, filter, value or condition changed): its {open} open \
                     alert(s) resolve, receivers are told, and it starts afresh as `start` says"
                ));
            }
        }
        if !self.store.has_table(&config.table) {
            warnings.push(format!(
                "table `{}` does not exist yet; the rule waits for it",
                config.table
            ));
        } else {
            // The evaluator's own query, planned and not run: an unknown column or function,
            // or a value that is not a number, shows now instead of on every evaluation.
            let sql = format!("SELECT * FROM ({}) LIMIT 0", read_sql(&config, None, 0));
            let planned = match self.store.query(&sql).await {
                Err(e) => Err(e.to_string()),
                // A filled rule evaluates over its page alone: plan it there too, where a
                // table-qualified column or another table is not found.
                Ok(_) if config.fill.is_some() => {
                    match self
                        .store
                        .query(&format!("SELECT * FROM \"{}\" LIMIT 0", config.table))
                        .await
                    {
                        Ok(page) => {
                            alert_fill::evaluate(page.schema, Vec::new(), &select_list(&config))
                                .await
                                .map(|_| ())
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
                Ok(_) => Ok(()),
            };
            if let Err(e) = planned {
                warnings.push(format!(
                    "its query does not fit table `{}` as it is now: {e}",
                    config.table
                ));
            }
        }
        // An `expect` selection that matches no registered device watches nobody: the rule
        // can never fire, and the operator believes the devices covered.
        if let (Some(expect), Some(registry)) = (&config.expect, &self.registry)
            && expect.uses_registry()
            && expect.devices.is_empty()
            && registry
                .list(&expect_filter(expect))
                .await
                .is_ok_and(|devices| devices.iter().all(|d| d.disabled))
        {
            warnings.push(
                "`expect` matches no registered (enabled) device yet: the rule expects none, \
                 and fires for none, until one is registered"
                    .into(),
            );
        }
        if let Some(why) = crate::setpoints::unwritable_action(&config, &self.writable) {
            warnings.push(format!("{why}: applying it will be refused"));
        }
        if config.expect.as_ref().is_some_and(|e| e.uses_registry()) && self.registry.is_none() {
            warnings.push(
                "`expect` selects registered devices, and the registry module does not run in \
                 this process: the rule fails until it does"
                    .into(),
            );
        }
        let action = match (created, unchanged) {
            (true, _) => "define",
            (false, true) => "unchanged",
            (false, false) => "replace",
        };
        Ok(DryRun {
            name: config.name,
            action: action.to_owned(),
            warnings,
        })
    }

    /// Applies `configs` together: every one is checked first, and either all are stored
    /// (in one write of the definitions file) and started, or none is. Returns, per
    /// definition, whether it is new.
    async fn apply_definitions(
        &self,
        configs: Vec<AlertRuleConfig>,
    ) -> Result<Vec<bool>, ControlError> {
        let (compiled, names) =
            compile_batch(&configs, |c: &AlertRuleConfig| &c.name, compile_rule)?;
        let mut rules = self.rules.lock().await;
        let created = configs
            .iter()
            .map(|config| Self::defines_anew(&rules, &config.name))
            .collect::<Result<Vec<bool>, ControlError>>()?;
        let definitions = Self::api_definitions(&rules, &names, &configs);
        store_file(self.stored_path.clone(), definitions_json(&definitions)?).await?;
        for rule in compiled {
            if Self::unchanged(&rules, &rule.config) {
                tracing::info!(rule = %rule.config.name, "Alert rule applied through the API unchanged; it keeps evaluating.");
                continue;
            }
            tracing::info!(rule = %rule.config.name, "Alert rule defined through the API.");
            self.replace(&mut rules, rule).await;
        }
        Ok(created)
    }

    /// Stops a rule defined through the API and forgets it; its firing alerts resolve.
    async fn remove_definition(&self, name: String) -> Result<(), ControlError> {
        let mut rules = self.rules.lock().await;
        Self::defines_anew(&rules, &name)?;
        if !rules.by_name.contains_key(&name) {
            return Err(ControlError::NotFound(format!(
                "no alert rule named `{name}`"
            )));
        }
        // The next start would refuse an inhibition that names a rule that is gone.
        if let Some(index) = self.alerting.inhibition_naming(&name) {
            return Err(ControlError::NotChangeable(format!(
                "alert rule `{name}` is named by the configuration file's \
                 `alerting.inhibitions[{index}]`; remove it there first"
            )));
        }
        let definitions = Self::api_definitions(&rules, &BTreeSet::from([name.as_str()]), &[]);
        store_file(self.stored_path.clone(), definitions_json(&definitions)?).await?;
        if let Some(previous) = rules.by_name.remove(&name) {
            previous.stop().await;
        }
        self.board.write().remove(&name);
        metrics::gauge!("fabrik_alert_rule_problem", "rule" => name.clone()).set(0.0);
        // The removal is stored and done: alerts left open now are resolved at the next
        // start, as the alerts of any rule that is gone.
        if let Err(e) = self.alerting.remove_rule(&name).await {
            tracing::error!(rule = %name, error = %e, "The removed rule's alerts could not all be resolved; they are at the next start.");
        }
        tracing::info!(rule = %name, "Alert rule removed through the API.");
        Ok(())
    }
}

impl AlertRuleControl for AlertRuleManager {
    fn apply(&self, config: AlertRuleConfig) -> BoxFuture<'_, Result<bool, ControlError>> {
        Box::pin(async move {
            let created = self.apply_definitions(vec![config]).await?;
            Ok(created.first().copied().unwrap_or(true))
        })
    }

    fn apply_all(
        &self,
        configs: Vec<AlertRuleConfig>,
    ) -> BoxFuture<'_, Result<Vec<bool>, ControlError>> {
        Box::pin(self.apply_definitions(configs))
    }

    fn check(&self, config: AlertRuleConfig) -> BoxFuture<'_, Result<DryRun, ControlError>> {
        Box::pin(self.check_definition(config))
    }

    fn check_all(
        &self,
        configs: Vec<AlertRuleConfig>,
    ) -> BoxFuture<'_, Result<Vec<DryRun>, ControlError>> {
        Box::pin(async move {
            compile_batch(&configs, |c: &AlertRuleConfig| &c.name, compile_rule)?;
            let mut found = Vec::with_capacity(configs.len());
            for config in configs {
                found.push(self.check_definition(config).await?);
            }
            Ok(found)
        })
    }

    fn remove(&self, name: String) -> BoxFuture<'_, Result<(), ControlError>> {
        Box::pin(self.remove_definition(name))
    }
}

/// What [`start`] hands back: the module's handle, alerting for the API's alert listing, and
/// the rule manager for its rule endpoints.
pub(crate) struct AlertsModule {
    pub(crate) handle: ServiceHandle,
    pub(crate) alerting: Arc<Alerting>,
    pub(crate) rules: Arc<AlertRuleManager>,
}

/// Opens `<data_dir>/alerts.db` (or, with `[registry] database_url`, the alert tables of that
/// PostgreSQL database), then runs one evaluation task per rule (the configuration file's, the
/// demo's, and those defined earlier through the API) and the outbox.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn start(
    config: &Config,
    data_dir: &std::path::Path,
    external_url: String,
    demo: bool,
    store: Arc<Store>,
    broker: Option<&Arc<Broker>>,
    registry: Option<fabrik_registry::Registry>,
    board: AlertRuleBoard,
    lineage: Option<Emitter>,
) -> Result<AlertsModule, String> {
    let mut configured: Vec<(RuleOrigin, AlertRuleConfig)> = config
        .alerting
        .rules
        .iter()
        .map(|r| (RuleOrigin::Config, r.clone()))
        .collect();
    let mut inhibitions: Vec<fabrik_alert::Inhibition> = config
        .alerting
        .inhibitions
        .iter()
        .map(|i| fabrik_alert::Inhibition {
            source: i.source.clone(),
            targets: i.targets.clone(),
            same_device: i.same_device,
        })
        .collect();
    if demo && configured.is_empty() && config.pipelines.is_empty() {
        if inhibitions.is_empty() {
            inhibitions = demo_inhibitions();
        }
        configured.extend(
            demo_rules()
                .into_iter()
                .map(|rule| (RuleOrigin::Demo, rule)),
        );
    }
    let mut rules = configured
        .iter()
        .map(|(origin, c)| {
            compile_rule(c).map(|rule| (*origin, rule)).map_err(|p| {
                let (field, message) = p.into_iter().next().unwrap_or_default();
                format!("alert rule `{}`: {field}: {message}", c.name)
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let stored_path = data_dir.join(STORED_RULES_FILE);
    let stored: Vec<AlertRuleConfig> = read_definitions(&stored_path, "alert rule")?;
    let mut shadowed = Vec::new();
    let mut invalid = Vec::new();
    for definition in stored {
        if rules.iter().any(|(_, r)| r.config.name == definition.name) {
            tracing::warn!(
                rule = %definition.name,
                "An alert rule defined through the API has the name of an earlier rule (of \
                 the configuration file, the demo or the API); the earlier one is evaluated."
            );
            shadowed.push(definition);
            continue;
        }
        match compile_rule(&definition) {
            Ok(rule) => rules.push((RuleOrigin::Api, rule)),
            Err(problems) => {
                // Checks may tighten between versions: show it, keep it in the file, and let
                // the API replace or remove it.
                let reason = describe_problems(&problems);
                tracing::error!(rule = %definition.name, error = %reason, "Stored alert rule does not load; the others are evaluated.");
                invalid.push((definition, reason));
            }
        }
    }
    let stop = CancellationToken::new();
    let notifiers = config
        .alerting
        .notifiers
        .iter()
        .map(|n| build_notifier(n, broker, &stop))
        .collect::<Result<Vec<_>, _>>()?;
    let external_url = if config.alerting.external_url.is_empty() {
        external_url
    } else {
        config
            .alerting
            .external_url
            .trim_end_matches('/')
            .to_owned()
    };
    // Every rule that loads is known before the database is opened, so the firing alerts of
    // each (API rules included) are restored; those of a rule that is gone, or whose stored
    // definition no longer loads, are resolved and their receivers told.
    let database = match config.registry.database_url.trim() {
        "" => fabrik_alert::Store::File(data_dir.join("alerts.db")),
        url => fabrik_alert::Store::Postgres(url.to_owned()),
    };
    let alerting = Alerting::open_at(
        &database,
        rules.iter().map(|(_, r)| r.rule.clone()).collect(),
        notifiers,
        external_url,
    )
    .await
    .map_err(|e| e.to_string())?;
    // Every definition's name counts, also one that does not load now: a stored rule that a
    // newer version refuses must not stop the start.
    let mut known: Vec<String> = rules
        .iter()
        .map(|(_, r)| r.config.name.clone())
        .chain(invalid.iter().map(|(d, _)| d.name.clone()))
        .collect();
    known.sort();
    known.dedup();
    alerting
        .set_inhibitions(inhibitions, &known)
        .map_err(|e| e.to_string())?;
    alerting.set_retention(alert_retention(&config.alerting.retention)?);
    let outbox = tokio::spawn(alerting.clone().run_outbox(stop.child_token()));
    let manager = Arc::new(AlertRuleManager {
        store,
        alerting: alerting.clone(),
        registry,
        board,
        stop: stop.clone(),
        stored_path,
        rules: tokio::sync::Mutex::new(Rules {
            by_name: BTreeMap::new(),
            shadowed,
        }),
        lineage,
        writable: crate::setpoints::writable_points(config),
    });
    {
        let mut managed = manager.rules.lock().await;
        for (origin, rule) in rules {
            manager.launch(&mut managed, origin, rule, None);
        }
        for (definition, reason) in invalid {
            metrics::gauge!("fabrik_alert_rule_problem", "rule" => definition.name.clone())
                .set(1.0);
            if let Some(emitter) = &manager.lineage {
                let lineage = RuleLineage::new(emitter, &definition, &manager.store);
                lineage
                    .run
                    .failed(&lineage.inputs, &lineage.outputs, &reason);
            }
            manager.board.write().insert(
                definition.name.clone(),
                rule_status(
                    &definition,
                    RuleOrigin::Api,
                    RuleHealth::Invalid,
                    Some(reason),
                ),
            );
            managed.by_name.insert(
                definition.name.clone(),
                ManagedRule {
                    origin: RuleOrigin::Api,
                    config: definition,
                    stop: stop.child_token(),
                    task: None,
                },
            );
        }
    }
    let token = stop.clone();
    let running = manager.clone();
    let task = tokio::spawn(async move {
        token.cancelled().await;
        let mut managed = running.rules.lock().await;
        for (_, rule) in std::mem::take(&mut managed.by_name) {
            rule.stop().await;
        }
        let _ = outbox.await;
        Ok(())
    });
    Ok(AlertsModule {
        handle: ServiceHandle { stop, task },
        alerting,
        rules: manager,
    })
}

/// Whether a rule's table existed when it was evaluated.
enum TableState {
    Present,
    Missing,
}

struct Evaluator {
    rule: CompiledRule,
    store: Arc<Store>,
    alerting: Arc<Alerting>,
    registry: Option<fabrik_registry::Registry>,
    /// The registered devices `expect` selected when the registry was last read.
    expected_registered: parking_lot::Mutex<RegisteredDevices>,
    /// Where the API reads how the evaluation goes.
    board: AlertRuleBoard,
    /// With `fill = "previous"`, each key's last field values.
    filler: Option<tokio::sync::Mutex<FillValues>>,
    /// This evaluation's OpenLineage run, if events go anywhere.
    lineage: Option<RuleLineage>,
}

/// A `fill` rule's last field values per key: those of the pages whose changes are recorded,
/// and those of the page read last, kept once its changes are. A page read again (its alerts
/// could not be recorded) is filled from the values before it, not from its own later rows.
#[derive(Default)]
struct FillValues {
    kept: alert_fill::Filler,
    staged: Option<alert_fill::Filler>,
}

/// What a heartbeat rule last read from the registry for `expect`.
#[derive(Default)]
struct RegisteredDevices {
    /// When; `None` before the first read.
    read: Option<std::time::Instant>,
    /// The registry's generation then.
    generation: u64,
    devices: Vec<String>,
}

impl Evaluator {
    /// Evaluates every `interval` until `stop`; reads after `resume` when given, else where
    /// the rule's `start` says. Returns the arrival id it read up to.
    async fn run(self, stop: CancellationToken, resume: Option<Option<i64>>) -> Option<i64> {
        let name = self.rule.config.name.clone();
        let watches = watch_signature(&self.rule.config);
        let now = Timestamp::now().nanos();
        // Where it stopped before a restart, if it watched the same: the rows that arrived
        // meanwhile are evaluated (after a crash, rows whose evaluation changed nothing may
        // be read again; those that changed an alert were saved with it), and a pending alert
        // restored from the database meets the rows that clear it.
        let stored = match self.alerting.db().saved_position(&name).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(rule = %name, error = %e, "Alert rule's read position could not be read; it starts as `start` says.");
                None
            }
        };
        let (saved, changed) = match stored {
            Some((watched, read_after)) if watched == watches => (Some(read_after), false),
            Some((watched, _)) => (None, watched.starts_with(WATCH_SIGNATURE_VERSION)),
            None => (None, false),
        };
        // A definition that watches something else than the one that saved a position
        // (changed in the configuration file while Fabrik was down): its old alerts resolve,
        // as a replacement through the API resolves them.
        if resume.is_none()
            && changed
            && let Err(e) = self.alerting.start_afresh(&name).await
        {
            tracing::warn!(rule = %name, error = %e, "Alert rule changed while Fabrik was down; its old alerts could not all be resolved.");
        }
        let clamped = matches!(
            (&resume, &saved),
            (None, Some(Some(position))) if !self.rule.replay && *position < now - CATCH_UP_NS
        );
        let resumes = (resume.is_some() || saved.is_some()) && !clamped;
        let mut read_after = match (resume, saved) {
            (Some(position), _) => position,
            (None, Some(position)) if self.rule.replay => position,
            (None, Some(position)) => Some(position.unwrap_or(now).max(now - CATCH_UP_NS)),
            (None, None) if self.rule.replay => None,
            (None, None) => Some(now),
        };
        // Not reading on from where it stopped, it has not seen the rows since a pending
        // alert was restored: that alert's `for` starts again from fresh rows.
        if !resumes && let Err(e) = self.alerting.drop_pending(&name).await {
            tracing::warn!(rule = %name, error = %e, "Alert rule's restored pending alerts could not be dropped.");
        }
        let mut saved_position = None;
        if read_after.is_some()
            && matches!(self.rule.rule.condition, Condition::Absent { .. })
            && let Err(e) = self.recall_last_seen().await
        {
            tracing::warn!(
                rule = %name,
                error = %e,
                "Heartbeat rule could not read when its keys last reported; it watches those \
                 that report from now on."
            );
        }
        let mut ticker = tokio::time::interval(self.rule.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_problem = String::new();
        let mut said_waiting = false;
        if let Some(lineage) = &self.lineage {
            lineage.run.started(&lineage.inputs, &lineage.outputs);
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    if let Some(lineage) = &self.lineage {
                        lineage.emit(EventType::Complete);
                    }
                    return read_after;
                }
                _ = ticker.tick() => {}
            }
            if let Some(lineage) = self.lineage.as_ref().filter(|l| l.run.running_due()) {
                lineage.emit(EventType::Running);
            }
            let outcome = self.step(&mut read_after, &watches, &stop).await;
            self.report(&outcome);
            if saved_position != Some(read_after) {
                match self
                    .alerting
                    .db()
                    .save_position(&name, &watches, read_after)
                    .await
                {
                    Ok(()) => saved_position = Some(read_after),
                    Err(e) => {
                        tracing::debug!(rule = %name, error = %e, "Alert rule's read position not saved; retrying.");
                    }
                }
            }
            match outcome {
                Ok((TableState::Missing, _)) if !said_waiting => {
                    // Normal on a fresh data directory or before a pipeline's first score,
                    // and the one hint a misspelt table name gets: said once, not as a fault.
                    tracing::info!(
                        rule = %name,
                        table = %self.rule.config.table,
                        "Alert rule waiting for its table; it evaluates once rows arrive."
                    );
                    said_waiting = true;
                }
                Ok(_) => {}
                Err(e) if e != last_problem => {
                    tracing::warn!(rule = %name, error = %e, "Alert rule evaluation failed; retrying.");
                    last_problem = e;
                }
                Err(_) => {}
            }
        }
    }

    /// Shows the outcome of an evaluation on the board and in the metrics.
    fn report(&self, outcome: &Result<(TableState, usize), String>) {
        let rule = self.rule.config.name.clone();
        metrics::gauge!("fabrik_alert_rule_problem", "rule" => rule.clone())
            .set(if outcome.is_err() { 1.0 } else { 0.0 });
        if let Ok((_, rows)) = outcome {
            metrics::counter!("fabrik_alert_rule_rows_total", "rule" => rule)
                .increment(*rows as u64);
        }
        let mut board = self.board.write();
        let Some(status) = board.get_mut(&self.rule.config.name) else {
            return;
        };
        status.last_evaluated = Some(crate::pipelines::rfc3339(Timestamp::now().nanos()));
        match outcome {
            Ok((TableState::Present, rows)) => {
                status.health = RuleHealth::Ok;
                status.error = None;
                status.rows += *rows as u64;
            }
            Ok((TableState::Missing, _)) => {
                status.health = RuleHealth::Waiting;
                status.error = Some(format!(
                    "table `{}` does not exist yet",
                    self.rule.config.table
                ));
            }
            Err(e) => {
                status.health = RuleHealth::Failing;
                status.error = Some(e.clone());
            }
        }
    }

    /// The keys a heartbeat rule's `expect` names: its listed devices and the registered
    /// devices it selects. The registry is read again after it changed, and at least every
    /// [`EXPECT_REFRESH`] (a change made by another process).
    async fn expected_keys(&self) -> Result<Vec<String>, String> {
        let Some(expect) = &self.rule.config.expect else {
            return Ok(Vec::new());
        };
        let mut keys = expect.devices.clone();
        if expect.uses_registry() {
            let registry = self
                .registry
                .as_ref()
                .ok_or("`expect` selects registered devices, which needs the registry module")?;
            let generation = registry.generation();
            let cached = {
                let cache = self.expected_registered.lock();
                cache
                    .read
                    .filter(|read| {
                        read.elapsed() < EXPECT_REFRESH && cache.generation == generation
                    })
                    .map(|_| cache.devices.clone())
            };
            let registered = match cached {
                Some(registered) => registered,
                None => {
                    let filter = expect_filter(expect);
                    // A disabled device is not expected to report.
                    let registered: Vec<String> = registry
                        .list(&filter)
                        .await
                        .map_err(|e| format!("device registry: {e}"))?
                        .into_iter()
                        .filter(|d| !d.disabled)
                        .map(|d| d.id)
                        .collect();
                    *self.expected_registered.lock() = RegisteredDevices {
                        read: Some(std::time::Instant::now()),
                        generation,
                        devices: registered.clone(),
                    };
                    registered
                }
            };
            keys.extend(registered);
        }
        Ok(keys)
    }

    /// Tells a heartbeat (`absent`) rule when each key of its table last reported, so a key
    /// that went silent before this process started is still missed: reading only rows from
    /// now on, the rule would never hear of it.
    async fn recall_last_seen(&self) -> Result<(), String> {
        let c = &self.rule.config;
        if !self.store.has_table(&c.table) {
            return Ok(());
        }
        // A row dated in the future (a device clock gone wrong) is no report of now.
        let latest = Timestamp::now()
            .nanos()
            .saturating_add(fabrik_alert::engine::MAX_CLOCK_OFFSET_NS);
        let mut sql = format!(
            "SELECT \"{key}\" AS key, CAST(max(time) AS BIGINT) AS last, \
             CAST(last_value(_raw_id ORDER BY time) AS BIGINT) AS arrival FROM \"{table}\" \
             WHERE time <= to_timestamp_nanos({latest})",
            key = c.key,
            table = c.table
        );
        if let Some(filter) = &c.filter {
            sql.push_str(&format!(" AND {}", sql_text::embedded(filter)));
        }
        sql.push_str(&format!(" GROUP BY \"{}\"", c.key));
        let output = self.store.query(&sql).await.map_err(|e| e.to_string())?;
        let mut last_seen = Vec::new();
        for batch in &output.batches {
            let keys: StringArray = cast_column(batch, 0, &DataType::Utf8, "key did not cast")?;
            let times: Int64Array = cast_column(batch, 1, &DataType::Int64, "time did not cast")?;
            let arrivals: Int64Array =
                cast_column(batch, 2, &DataType::Int64, "arrival did not cast")?;
            for row in 0..batch.num_rows() {
                if keys.is_null(row) || times.is_null(row) || arrivals.is_null(row) {
                    continue;
                }
                last_seen.push((
                    keys.value(row).to_owned(),
                    times.value(row),
                    arrivals.value(row),
                ));
            }
        }
        self.alerting
            .recall_last_seen(&c.name, &last_seen)
            .map_err(|e| e.to_string())
    }

    /// Reads the rule's new rows and advances its clock; returns how many rows it read. A
    /// table that does not exist yet has no rows: the clock still advances (pending alerts
    /// fire, heartbeats are checked). A long backlog is read a page at a time, and `stop`
    /// is heeded between pages, so a change to the rule does not wait for the backlog.
    async fn step(
        &self,
        read_after: &mut Option<i64>,
        watches: &str,
        stop: &CancellationToken,
    ) -> Result<(TableState, usize), String> {
        let now = Timestamp::now().nanos();
        // Everything that arrived up to here is read before the clock advances to it: a
        // `for` is measured against the rows, so a clearing row still settling cannot be
        // overtaken by a tick that fires what it clears.
        let until = now - SETTLE_NS;
        let table = &self.rule.config.table;
        if !self.store.has_table(table) {
            self.tick(until).await?;
            return Ok((TableState::Missing, 0));
        }
        let mut rows_read = 0;
        // Rows are read in arrival order (`_raw_id` starts from the receipt time in ns), so a
        // row with an old timestamp written now (an inference about a window that just
        // closed, a device's buffered backlog) is still evaluated. Ids younger than
        // `SETTLE_NS` are left for the next pass: a write that took its id earlier may still
        // be committing.
        loop {
            let (mut rows, mut last, page) = self.read(*read_after, until).await?;
            let full = page >= READ_LIMIT;
            if full && let Some(cut) = last {
                // One write's rows share a raw id; a page may end inside them. Leave that id
                // for the next page unless it is all this page holds.
                let keep = rows.iter().take_while(|(raw, _)| *raw < cut).count();
                if keep > 0 {
                    rows.truncate(keep);
                    last = Some(cut - 1);
                }
            }
            rows_read += rows.len();
            let observations: Vec<Observation> = rows.into_iter().map(|(_, o)| o).collect();
            if !observations.is_empty() {
                // The page's position lands with the alerts it changes: after a crash its
                // rows are read again only if those changes were lost with it.
                let position = fabrik_alert::ReadPosition {
                    rule: &self.rule.config.name,
                    watches,
                    read_after: last.or(*read_after),
                };
                self.alerting
                    .observe_up_to(&self.rule.config.name, &observations, &position)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            self.keep_filled().await;
            if let Some(last) = last {
                *read_after = Some(last);
            }
            if stop.is_cancelled() {
                // Not ticked: having read only part of the backlog, the rule would miss keys
                // whose rows it has not reached, and fire pending alerts those rows clear.
                return Ok((TableState::Present, rows_read));
            }
            if !full {
                break;
            }
        }
        self.tick(until).await?;
        Ok((TableState::Present, rows_read))
    }

    async fn tick(&self, now: i64) -> Result<(), String> {
        let mut expected = BTreeMap::new();
        expected.insert(self.rule.config.name.clone(), self.expected_keys().await?);
        self.alerting
            .tick(now, &expected)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn read(
        &self,
        after: Option<i64>,
        until: i64,
    ) -> Result<(Vec<(i64, Observation)>, Option<i64>, usize), String> {
        let c = &self.rule.config;
        let (batches, page) = match &self.filler {
            None => {
                let output = self
                    .store
                    .query(&read_sql(c, after, until))
                    .await
                    .map_err(|e| e.to_string())?;
                let page = output.batches.iter().map(|b| b.num_rows()).sum();
                (output.batches, page)
            }
            Some(filler) => self.read_filled(filler, after, until).await?,
        };
        let mut out = Vec::new();
        let mut last = None;
        for batch in &batches {
            let raw_ids: Int64Array =
                cast_column(batch, 0, &DataType::Int64, "_raw_id did not cast")?;
            let times: Int64Array = cast_column(batch, 1, &DataType::Int64, "time did not cast")?;
            let keys: StringArray = cast_column(batch, 2, &DataType::Utf8, "key did not cast")?;
            let values: Float64Array =
                cast_column(batch, 3, &DataType::Float64, "value did not cast")?;
            let mut context_columns = Vec::new();
            for (j, name) in c.context.iter().enumerate() {
                let column: StringArray =
                    cast_column(batch, 4 + j, &DataType::Utf8, "context did not cast")?;
                context_columns.push((name, column));
            }
            for i in 0..batch.num_rows() {
                if !raw_ids.is_null(i) {
                    last = Some(raw_ids.value(i));
                }
                if times.is_null(i) || keys.is_null(i) || values.is_null(i) {
                    continue;
                }
                let (time_ns, arrival_ns) = (times.value(i), raw_ids.value(i));
                let context = context_columns
                    .iter()
                    .filter(|(_, column)| !column.is_null(i))
                    .map(|(name, column)| ((*name).clone(), column.value(i).to_owned()))
                    .collect();
                out.push((
                    raw_ids.value(i),
                    Observation {
                        key: keys.value(i).to_owned(),
                        time_ns,
                        arrival_ns,
                        value: values.value(i),
                        context,
                    },
                ));
            }
        }
        Ok((out, last, page))
    }

    /// A page read whole (every column), its missing field values filled from each key's
    /// last ones, and the rule's select list evaluated over it; and the page's row count.
    async fn read_filled(
        &self,
        filler: &tokio::sync::Mutex<FillValues>,
        after: Option<i64>,
        until: i64,
    ) -> Result<(Vec<RecordBatch>, usize), String> {
        let c = &self.rule.config;
        let field_names: Vec<String> = self
            .store
            .tables()
            .into_iter()
            .find(|table| table.name == c.table)
            .map(|table| table.fields.into_iter().map(|(name, _)| name).collect())
            .unwrap_or_default();
        let fields = alert_fill::referenced_fields(&c.value, &field_names);
        let mut values = filler.lock().await;
        values.staged = None;
        values.kept.seed(&self.store, c, &fields, after).await?;
        let sql = format!(
            "SELECT * FROM \"{}\" WHERE {} ORDER BY _raw_id, time LIMIT {READ_LIMIT}",
            c.table,
            page_condition(c, after, until)
        );
        let output = self.store.query(&sql).await.map_err(|e| e.to_string())?;
        let page = output.batches.iter().map(|b| b.num_rows()).sum();
        if page == 0 {
            return Ok((Vec::new(), 0));
        }
        // Filled from a copy, kept ([`Self::keep_filled`]) only once the page's changes are
        // recorded.
        let mut scratch = values.kept.clone();
        let filled = scratch.fill(&output.batches, &c.key, &fields)?;
        let batches = alert_fill::evaluate(output.schema, filled, &select_list(c)).await?;
        values.staged = Some(scratch);
        Ok((batches, page))
    }

    /// Keeps the field values of the page read last: its changes are recorded.
    async fn keep_filled(&self) {
        if let Some(filler) = &self.filler {
            let mut values = filler.lock().await;
            if let Some(staged) = values.staged.take() {
                values.kept = staged;
            }
        }
    }
}

/// The query that reads rule `c`'s rows that arrived after `after` and by `until` (raw ids),
/// with its key, value and context columns, in arrival order, one page at most.
/// The rule's select list: arrival id, time, key, value (as a double), context columns.
fn select_list(c: &AlertRuleConfig) -> String {
    let mut columns = vec![
        "CAST(_raw_id AS BIGINT) AS _arrival".to_owned(),
        "time".to_owned(),
        format!("\"{}\"", c.key),
        // Embedded as `sql_text::one_expression` checked them.
        format!("CAST({} AS DOUBLE)", sql_text::embedded(&c.value)),
    ];
    columns.extend(c.context.iter().map(|col| format!("\"{col}\"")));
    columns.join(", ")
}

/// The rows of a rule's page: after arrival `after`, up to `until`, through its filter.
fn page_condition(c: &AlertRuleConfig, after: Option<i64>, until: i64) -> String {
    let mut condition = format!("_raw_id <= {until}");
    if let Some(after) = after {
        condition.push_str(&format!(" AND _raw_id > {after}"));
    }
    if let Some(filter) = &c.filter {
        condition.push_str(&format!(" AND {}", sql_text::embedded(filter)));
    }
    condition
}

fn read_sql(c: &AlertRuleConfig, after: Option<i64>, until: i64) -> String {
    format!(
        "SELECT {} FROM \"{}\" WHERE {} ORDER BY _arrival, time LIMIT {READ_LIMIT}",
        select_list(c),
        c.table,
        page_condition(c, after, until)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e_mail_addresses_are_checked_for_one_at_and_a_domain() {
        for good in [
            "ops@plant.example",
            "a.b-c@mail.plant-1.example",
            "root@localhost",
            "ops@[192.0.2.1]",
            "ops@xn--mnchen-3ya.example",
        ] {
            assert!(plausible_address(good), "{good}");
        }
        for bad in [
            "ops@@plant",
            "not-an-address",
            "@plant.example",
            "ops@",
            "ops@plant..x",
            "ops@plant example",
            "<ops@plant.example>",
            "ops@pla_nt",
            "ops@münchen.example",
        ] {
            assert!(!plausible_address(bad), "{bad}");
        }
    }
    use fabrik_runtime::config::ExpectConfig;

    #[test]
    fn a_value_or_filter_must_be_exactly_one_sql_expression() {
        for good in [
            "pressure",
            "vibration * current",
            "score / threshold",
            "CASE WHEN a > 1 THEN a ELSE 0 END",
            "pipeline = 'pump-health' AND device LIKE 'p%'",
            "SELECT max(pressure) FROM pump",
            "pressure -- bar, gauge",
        ] {
            assert_eq!(sql_text::one_expression(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "  ",
            "pressure >",
            "1) AS v FROM other --",
            "true) OR (1=1",
            "(a",
            "a; DROP TABLE x",
            "a b",
            "a /* unterminated",
        ] {
            assert!(sql_text::one_expression(bad).is_err(), "`{bad}` accepted");
        }
        let rule = AlertRuleConfig {
            filter: Some("pipeline = ".into()),
            ..demo_rule()
        };
        let problems = compile_rule(&rule).expect_err("filter");
        assert_eq!(problems[0].0, "filter", "{problems:?}");
        // Positions are the text's own, not the embedding's.
        let why = sql_text::one_expression("level +").expect_err("incomplete");
        assert!(
            why.contains("found: EOF") && !why.contains("Line: 3"),
            "{why}"
        );
        let why = sql_text::one_expression("true) OR (1=1").expect_err("escapes");
        assert!(why.contains("line 1, column 5"), "{why}");
    }

    #[test]
    fn annotation_templates_name_only_what_an_alert_has() {
        assert!(compile_rule(&demo_rule()).is_ok(), "the demo's templates");
        let with = |name: &str, template: &str| AlertRuleConfig {
            annotations: [(name.to_owned(), template.to_owned())].into(),
            ..demo_rule()
        };
        let problems = |rule: AlertRuleConfig| -> Vec<String> {
            compile_rule(&rule)
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|(field, message)| format!("{field}: {message}"))
                .collect()
        };
        assert!(problems(with("runbook", "{device} at {value}: see {top_signal}")).is_empty());
        let typo = problems(with("summary", "{device}: {top_signa}"));
        assert!(typo.len() == 1 && typo[0].contains("top_signa"), "{typo:?}");
        let clash = problems(with("top_signal", "x"));
        assert!(
            clash.len() == 1 && clash[0].contains("context"),
            "{clash:?}"
        );
        assert_eq!(problems(with("run book", "x")).len(), 1);
    }

    #[test]
    fn the_demo_rule_compiles_and_bad_rules_name_their_fields() {
        for rule in demo_rules() {
            assert!(compile_rule(&rule).is_ok(), "{}", rule.name);
        }
        // The demo's inhibitions name its rules.
        let names: Vec<String> = demo_rules().into_iter().map(|rule| rule.name).collect();
        for inhibition in demo_inhibitions() {
            for name in std::iter::once(&inhibition.source).chain(&inhibition.targets) {
                assert!(names.contains(name), "{name} is not a demo rule");
            }
        }
        let mut frozen = demo_frozen_rule();
        frozen.clear = Some(1.0);
        frozen.threshold = 0.0;
        let fields: Vec<String> = compile_rule(&frozen)
            .unwrap_err()
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(fields, vec!["threshold", "clear"]);
        // A silence shorter than the evaluation interval cannot be measured.
        let mut blink = demo_heartbeat_rules().remove(0);
        blink.threshold = 0.0001;
        let problems = compile_rule(&blink).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "threshold");
        assert!(problems[0].1.contains("shorter than"), "{problems:?}");
        let mut bad = demo_rule();
        bad.condition = "over".into();
        bad.severity = "loud".into();
        bad.for_duration = "soon".into();
        let fields: Vec<String> = compile_rule(&bad)
            .unwrap_err()
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(fields, vec!["condition", "for", "severity"]);
        let mut inverted = demo_rule();
        inverted.clear = Some(2.0);
        assert_eq!(compile_rule(&inverted).unwrap_err()[0].0, "clear");
        // `change`: a confidence, and a whole number of values to settle.
        let mut shift = demo_rule();
        shift.condition = "change".into();
        shift.threshold = 0.002;
        shift.clear = None;
        assert!(compile_rule(&shift).is_ok());
        shift.threshold = 2.0;
        assert_eq!(compile_rule(&shift).unwrap_err()[0].0, "threshold");
        shift.threshold = 0.002;
        shift.clear = Some(2.5);
        assert_eq!(compile_rule(&shift).unwrap_err()[0].0, "clear");
        shift.clear = Some(30.0);
        assert!(compile_rule(&shift).is_ok());
        shift.for_duration = "1m".into();
        assert_eq!(compile_rule(&shift).unwrap_err()[0].0, "for");
        // `distribution`: KSWIN's level, the same checks.
        let mut spread = demo_rule();
        spread.condition = "distribution".into();
        spread.threshold = 1e-6;
        spread.clear = None;
        assert!(matches!(
            compile_rule(&spread).map(|r| r.rule.condition),
            Ok(Condition::Distribution { alpha, settle: 30 }) if alpha == 1e-6
        ));
        spread.threshold = 0.0;
        let problems = compile_rule(&spread).unwrap_err();
        assert_eq!(problems[0].0, "threshold");
        assert!(problems[0].1.contains("KSWIN"), "{problems:?}");
        // `expect` is for heartbeat rules, and must name something; `clear` is not for them.
        let mut expecting = demo_rule();
        expecting.expect = Some(ExpectConfig {
            registered: true,
            ..ExpectConfig::default()
        });
        assert_eq!(compile_rule(&expecting).unwrap_err()[0].0, "expect");
        let mut heartbeat = demo_rule();
        heartbeat.condition = "absent".into();
        heartbeat.threshold = 30.0;
        heartbeat.expect = Some(ExpectConfig::default());
        let problems = compile_rule(&heartbeat).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["clear", "expect"], "{problems:?}");
        heartbeat.clear = None;
        heartbeat.expect = Some(ExpectConfig {
            site: Some("north".into()),
            ..ExpectConfig::default()
        });
        assert!(compile_rule(&heartbeat).is_ok());
    }

    fn notifier(kind: &str, url: &str) -> NotifierConfig {
        let mut n: NotifierConfig =
            toml::from_str(&format!("name = \"n\"\nkind = \"{kind}\"\nurl = \"{url}\"")).unwrap();
        n.url = url.into();
        n
    }

    fn fields(n: &NotifierConfig) -> Vec<String> {
        match check_notifier(n) {
            Ok(_) => Vec::new(),
            Err(p) => p.into_iter().map(|(f, _)| f).collect(),
        }
    }

    #[test]
    fn notifiers_are_checked_field_by_field() {
        assert!(fields(&notifier("webhook", "http://127.0.0.1:9093/hook")).is_empty());
        assert!(fields(&notifier("mqtt", "")).is_empty());
        assert!(fields(&notifier("mqtt", "mqtt://broker.plant:1883")).is_empty());
        // MQTT 5 to an external broker; not to this process's endpoint (which speaks what its
        // subscribers speak), nor a version there is none of.
        let mut five = notifier("mqtt", "mqtt://broker.plant:1883");
        five.mqtt_version = Some("5".into());
        assert!(fields(&five).is_empty());
        five.mqtt_version = Some("4".into());
        assert_eq!(fields(&five), vec!["mqtt_version"]);
        let mut embedded_five = notifier("mqtt", "");
        embedded_five.mqtt_version = Some("5".into());
        assert_eq!(fields(&embedded_five), vec!["mqtt_version"]);
        let mut webhook_five = notifier("webhook", "http://127.0.0.1:9093/hook");
        webhook_five.mqtt_version = Some("5".into());
        assert_eq!(fields(&webhook_five), vec!["mqtt_version"]);

        let mut mqtt = notifier("mqtt", "mqtts://broker.plant:8883");
        mqtt.topic = Some("alerts/+/{device}".into());
        mqtt.qos = 2;
        mqtt.to = vec!["x@y.z".into()];
        assert_eq!(fields(&mqtt), vec!["to", "qos", "topic", "ca"]);
        let mut embedded = notifier("mqtt", "");
        embedded.password = Some("p".into());
        assert_eq!(fields(&embedded), vec!["password"]);
        assert_eq!(fields(&notifier("mqtt", "tcp://x:1")), vec!["url"]);
        let mut grouped = notifier("mqtt", "");
        grouped.group_wait = "30s".into();
        assert_eq!(fields(&grouped), vec!["group_wait"]);
        let mut grouped = notifier("webhook", "http://127.0.0.1:9093/hook");
        grouped.group_wait = "30s".into();
        grouped.group_by = vec!["device".into(), "site".into(), "device".into()];
        assert_eq!(fields(&grouped), vec!["group_by", "group_by"]);
        grouped.group_by = vec!["rule".into(), "severity".into()];
        assert!(fields(&grouped).is_empty());
        grouped.group_wait = "soon".into();
        assert_eq!(fields(&grouped), vec!["group_wait"]);
        // Routes: known severities, no empty pattern.
        let mut routed = notifier("webhook", "http://127.0.0.1:9093/hook");
        routed.severities = vec!["critical".into(), "urgent".into()];
        routed.rules = vec!["pump-*".into()];
        routed.devices = vec![String::new(), " line2-*".into()];
        assert_eq!(fields(&routed), vec!["severities", "devices", "devices"]);
        // Webhooks: basic authentication inside TLS or to this host; a CA only for https.
        let mut secured = notifier("webhook", "https://hooks.plant.example/alerts");
        secured.username = Some("fabrik".into());
        secured.password = Some("p".into());
        secured.ca = Some("/etc/fabrik/plant-ca.pem".into());
        assert!(fields(&secured).is_empty());
        let mut local = notifier("webhook", "http://127.0.0.1:9093/hook");
        local.username = Some("fabrik".into());
        local.password = Some("p".into());
        assert!(fields(&local).is_empty());
        let mut exposed = notifier("webhook", "http://hooks.plant.example/alerts");
        exposed.username = Some("fabrik".into());
        exposed.password = Some("p".into());
        exposed.ca = Some("/etc/fabrik/plant-ca.pem".into());
        assert_eq!(fields(&exposed), vec!["ca", "password"]);
        exposed.password = None;
        assert_eq!(fields(&exposed), vec!["ca", "password"]);
        assert!(loopback_url("http://[::1]:9093/hook"));
        assert!(loopback_url("http://LOCALHOST:9093/hook"));
        assert!(!loopback_url("http://127.0.0.1.plant.example/hook"));
        // A backslash ends the host for the HTTP client: this one is evil.example.
        assert!(!loopback_url("http://evil.example\\@127.0.0.1/hook"));
        let mut in_url = notifier("webhook", "http://fabrik:p@127.0.0.1:9093/hook");
        assert_eq!(fields(&in_url), vec!["url"]);
        in_url.url = "https://fabrik@hooks.plant.example/alerts".into();
        assert_eq!(fields(&in_url), vec!["url"]);
        // Reminders: 4 h unless set, `0s` for none; not for MQTT topics.
        let hook = notifier("webhook", "http://127.0.0.1:9093/hook");
        let repeat = |n: &NotifierConfig| check_notifier(n).ok().map(|(_, _, g)| g.repeat);
        assert_eq!(repeat(&hook), Some(DEFAULT_REPEAT_INTERVAL));
        let mut quiet = hook.clone();
        quiet.repeat_interval = Some("0s".into());
        assert_eq!(repeat(&quiet), Some(Duration::ZERO));
        quiet.repeat_interval = Some("daily".into());
        assert_eq!(fields(&quiet), vec!["repeat_interval"]);
        let mut reminded = notifier("mqtt", "");
        assert_eq!(repeat(&reminded), Some(Duration::ZERO));
        reminded.repeat_interval = Some("1h".into());
        assert_eq!(fields(&reminded), vec!["repeat_interval"]);

        let mut mail = notifier("email", "smtp://mail.plant:587");
        assert_eq!(fields(&mail), vec!["from", "to"]);
        mail.from = Some("fabrik@plant".into());
        mail.to = vec!["ops@plant".into(), "not an address".into()];
        mail.username = Some("u".into());
        assert_eq!(fields(&mail), vec!["password", "to"]);
        mail.to.pop();
        mail.password = Some("p".into());
        assert!(fields(&mail).is_empty());
        // Credentials only over TLS.
        mail.starttls = false;
        assert_eq!(fields(&mail), vec!["starttls"]);
        assert_eq!(fields(&notifier("email", "mail.plant")), vec!["url"]);
        assert_eq!(fields(&notifier("pager", "")), vec!["kind"]);
        let mut injected = notifier("email", "smtp://mail.plant:587");
        injected.from = Some("fabrik@plant\r\nBcc:x@y".into());
        injected.to = vec!["ops@plant".into()];
        assert_eq!(fields(&injected), vec!["from"]);
        // A timeout of nothing, a topic placeholder that is not one.
        let mut hasty = notifier("webhook", "http://127.0.0.1:9093/hook");
        hasty.timeout = "0s".into();
        assert_eq!(fields(&hasty), vec!["timeout"]);
        let mut topic = notifier("mqtt", "");
        topic.topic = Some("alerts/{site}/{rule}/{device}".into());
        assert_eq!(fields(&topic), vec!["topic"]);
    }

    #[test]
    fn two_notifiers_of_one_name_are_refused() {
        let config: Config = toml::from_str(
            "[[alerting.notifiers]]\nname = \"ops\"\nkind = \"webhook\"\n\
             url = \"http://127.0.0.1:9093/a\"\n\
             [[alerting.notifiers]]\nname = \"ops\"\nkind = \"webhook\"\n\
             url = \"http://127.0.0.1:9093/b\"\n",
        )
        .unwrap();
        let problems = check(&config);
        assert_eq!(
            problems.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(),
            ["alerting.notifiers[1].name"],
            "{problems:?}"
        );
    }
}
