//! Notifiers and the outbox worker: notifications are queued in the database first and
//! delivered with retries and exponential backoff, so none is lost to a restart or an outage
//! of the receiver.
//!
//! The webhook body is Alertmanager's webhook format (version 4), so receivers written for
//! Prometheus (PagerDuty bridges, chat bots, ticketing) take Fabrik's alerts unchanged.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::engine::AlertState;
use crate::error::AlertError;
use crate::model::{Alert, parse_rfc3339};

/// Where notifications go.
#[derive(Debug, Clone, PartialEq)]
pub enum Notifier {
    /// POST of Alertmanager-compatible JSON.
    Webhook {
        /// Unique name.
        name: String,
        /// Receiver URL.
        url: String,
        /// Per-request timeout.
        timeout: Duration,
    },
}

impl Notifier {
    /// Its name.
    pub fn name(&self) -> &str {
        match self {
            Self::Webhook { name, .. } => name,
        }
    }
}

/// The Alertmanager webhook (v4) body for one alert's state change.
pub fn alertmanager_payload(
    alert: &Alert,
    receiver: &str,
    external_url: &str,
) -> serde_json::Value {
    let status = match alert.state {
        AlertState::Resolved => "resolved",
        _ => "firing",
    };
    let mut labels = BTreeMap::new();
    labels.insert("alertname".to_owned(), alert.rule.clone());
    labels.insert("device".to_owned(), alert.key.clone());
    labels.insert("severity".to_owned(), alert.severity.clone());
    let mut annotations = alert.annotations.clone();
    let summary = match (&alert.value, annotations.get("top_signal")) {
        (Some(v), Some(signal)) => {
            format!(
                "{} on {}: value {v:.4}, top signal {signal}",
                alert.rule, alert.key
            )
        }
        (Some(v), None) => format!("{} on {}: value {v:.4}", alert.rule, alert.key),
        (None, _) => format!("{} on {}", alert.rule, alert.key),
    };
    annotations.insert("summary".to_owned(), summary);
    let group_key = format!("{{}}:{{alertname=\"{}\"}}", alert.rule);
    json!({
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": {"alertname": alert.rule},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external_url,
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": alert.fired_at.clone().unwrap_or_else(|| alert.started_at.clone()),
            "endsAt": alert.resolved_at.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
            "generatorURL": format!("{external_url}/api/v1/alerts/{}", alert.id),
            "fingerprint": fingerprint(&alert.id),
        }],
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

/// Delivers one payload.
pub async fn deliver(
    client: &reqwest::Client,
    notifier: &Notifier,
    payload: &str,
) -> Result<(), AlertError> {
    match notifier {
        Notifier::Webhook { name, url, timeout } => {
            let response = client
                .post(url)
                .timeout(*timeout)
                .header("content-type", "application/json")
                .body(payload.to_owned())
                .send()
                .await
                .map_err(|e| AlertError::Delivery {
                    notifier: name.clone(),
                    reason: e.to_string(),
                })?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(AlertError::Delivery {
                    notifier: name.clone(),
                    reason: format!("{url} answered {}", response.status()),
                })
            }
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
        }
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
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(50), Duration::from_secs(300));
    }
}
