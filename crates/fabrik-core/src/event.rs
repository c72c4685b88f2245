//! Events: things that happened (a device went offline, a mapping failed, an alert fired),
//! as opposed to measured values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Lineage, Point, Quality, Timestamp, Value};

/// How much an event matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Routine.
    Info,
    /// Worth a look.
    Warning,
    /// Something failed.
    Error,
}

impl Severity {
    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }
}

/// One event about a subject (usually a device).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When it happened.
    pub time: Timestamp,
    /// What kind of event, e.g. `device.connected`.
    pub kind: String,
    /// What it is about, e.g. a device id.
    pub subject: String,
    /// How much it matters.
    pub severity: Severity,
    /// Human-readable text.
    pub message: String,
    /// Extra key/value detail.
    pub attributes: BTreeMap<String, String>,
    /// Where it came from.
    pub lineage: Lineage,
}

/// The table events are stored in.
pub const EVENTS_TABLE: &str = "fabrik_events";

impl Event {
    /// The point this event is stored as, in [`EVENTS_TABLE`]: kind and subject are tags, so
    /// two events of one kind about one subject at the same nanosecond keep the last.
    pub fn to_point(&self) -> Point {
        let mut fields = vec![
            (
                "severity".to_owned(),
                Value::Str(self.severity.name().to_owned()),
            ),
            ("message".to_owned(), Value::Str(self.message.clone())),
        ];
        if !self.attributes.is_empty() {
            let json = serde_json_lite(&self.attributes);
            fields.push(("attributes".to_owned(), Value::Str(json)));
        }
        Point {
            measurement: EVENTS_TABLE.to_owned(),
            tags: vec![
                ("kind".to_owned(), self.kind.clone()),
                ("subject".to_owned(), self.subject.clone()),
            ],
            fields,
            time: self.time,
            quality: Quality::Good,
        }
    }
}

/// Renders a string map as a JSON object without pulling serde_json into the core crate.
fn serde_json_lite(map: &BTreeMap<String, String>) -> String {
    fn quote(out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    let mut out = String::from("{");
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        quote(&mut out, k);
        out.push(':');
        quote(&mut out, v);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RawMessageId, SourceId};

    #[test]
    fn events_become_points_with_json_attributes() {
        let event = Event {
            time: Timestamp(1),
            kind: "device.offline".into(),
            subject: "pump-7".into(),
            severity: Severity::Warning,
            message: "no data for 30 s".into(),
            attributes: BTreeMap::from([("reason".into(), "keepalive \"timeout\"".into())]),
            lineage: Lineage {
                source: SourceId("mqtt".into()),
                raw_id: RawMessageId(1),
                mapping_version: 0,
            },
        };
        let point = event.to_point();
        assert_eq!(point.measurement, EVENTS_TABLE);
        let attrs = point
            .fields
            .iter()
            .find(|(k, _)| k == "attributes")
            .map(|(_, v)| v.clone());
        let Some(Value::Str(json)) = attrs else {
            panic!("attributes missing")
        };
        let parsed: BTreeMap<String, String> = serde_json::from_str(&json).expect("valid json");
        assert_eq!(parsed["reason"], "keepalive \"timeout\"");
    }
}
