//! Normalisation mappings: how a raw message (an MQTT topic and payload) becomes rows.
//!
//! A mapping matches topics with a template whose `{name}` levels capture values (`{device}`
//! names the device; other captures become tags or fill the measurement), decodes the payload
//! (JSON objects or arrays through JSON pointers, or a bare value), takes the time from the
//! payload or the receipt, and applies per-signal names, types, scale and offset. Every row
//! carries the mapping's version and the raw message id (lineage). A message a mapping matches
//! but cannot decode is a [`MapError`], which the ingest path stores as a dead letter.

use std::collections::BTreeMap;

use fabrik_core::{FieldType, Point, Quality, Timestamp, Value};

pub use fabrik_runtime::config::{MappingConfig, SignalConfig};

/// The mappings a fresh install uses: devices publish JSON to `devices/<id>/telemetry` (table
/// = device type) or `devices/<id>/telemetry/<table>`, and WAV clips to
/// `devices/<id>/clips/<signal>` (table `clips`, the signal's field holding the clip's id).
pub fn default_mappings() -> Vec<MappingConfig> {
    let base = |name: &str, topic: &str, measurement: Option<&str>| MappingConfig {
        name: name.into(),
        version: 1,
        source: "mqtt".into(),
        topic: topic.into(),
        format: "json".into(),
        measurement: measurement.map(Into::into),
        time: Some("/ts".into()),
        time_unit: "auto".into(),
        signals: Vec::new(),
        signal: None,
    };
    let clips = MappingConfig {
        format: "wav".into(),
        time: None,
        ..base(
            "device-clips",
            "devices/{device}/clips/{signal}",
            Some("clips"),
        )
    };
    vec![
        base("device-telemetry", "devices/{device}/telemetry", None),
        base(
            "device-telemetry-table",
            "devices/{device}/telemetry/{measurement}",
            Some("{measurement}"),
        ),
        clips,
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum Level {
    Literal(String),
    Capture(String),
    Plus,
    Hash,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Json,
    Value,
    /// The payload is a WAV clip, stored as a blob; the row holds its id.
    Wav,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum TimeUnit {
    Auto,
    Fixed(i64),
}

#[derive(Debug, Clone)]
struct Signal {
    pointer: String,
    name: String,
    kind: Option<FieldType>,
    scale: f64,
    offset: f64,
}

/// A validated mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: u32,
    /// The connector it applies to.
    pub source: String,
    levels: Vec<Level>,
    format: Format,
    measurement: Option<String>,
    time: Option<String>,
    time_unit: TimeUnit,
    signals: Vec<Signal>,
    signal: Option<String>,
    /// Units by field name, for the signal catalogue.
    pub units: BTreeMap<String, String>,
}

/// What the mapping knows of the publishing device.
#[derive(Debug, Clone, Default)]
pub struct DeviceInfo {
    /// Device type (the default table).
    pub device_type: String,
}

/// Why a matched message could not be mapped (stored as a dead letter).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mapping `{mapping}` v{version}: {reason}")]
pub struct MapError {
    /// The mapping.
    pub mapping: String,
    /// Its version.
    pub version: u32,
    /// What was wrong, naming the member or byte.
    pub reason: String,
}

/// Checks a mapping configuration; the errors name the field.
pub fn compile(config: &MappingConfig) -> Result<Mapping, String> {
    let name = &config.name;
    if name.is_empty() {
        return Err("a mapping needs a name".into());
    }
    if config.source != "mqtt" && !config.source.starts_with("bridge:") {
        return Err(format!(
            "mapping `{name}`: source `{}` is not `mqtt` or `bridge:<name>`",
            config.source
        ));
    }
    let mut levels = Vec::new();
    let parts: Vec<&str> = config.topic.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let level = match *part {
            "+" => Level::Plus,
            "#" if i + 1 == parts.len() => Level::Hash,
            p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => {
                Level::Capture(p[1..p.len() - 1].to_owned())
            }
            p if p.contains(['+', '#', '{', '}']) => {
                return Err(format!(
                    "mapping `{name}`: topic level `{p}` mixes text with a wildcard or capture"
                ));
            }
            p => Level::Literal(p.to_owned()),
        };
        levels.push(level);
    }
    let format = match config.format.as_str() {
        "json" => Format::Json,
        "value" => Format::Value,
        "wav" => Format::Wav,
        other => {
            return Err(format!(
                "mapping `{name}`: format `{other}` is not `json`, `value` or `wav`"
            ));
        }
    };
    let time_unit = match config.time_unit.as_str() {
        "auto" => TimeUnit::Auto,
        "s" => TimeUnit::Fixed(1_000_000_000),
        "ms" => TimeUnit::Fixed(1_000_000),
        "us" => TimeUnit::Fixed(1_000),
        "ns" => TimeUnit::Fixed(1),
        other => {
            return Err(format!(
                "mapping `{name}`: time_unit `{other}` is not s, ms, us, ns or auto"
            ));
        }
    };
    for pointer in config
        .time
        .iter()
        .chain(config.signals.iter().map(|s| &s.pointer))
    {
        if !pointer.is_empty() && !pointer.starts_with('/') {
            return Err(format!(
                "mapping `{name}`: `{pointer}` is not a JSON pointer (it must start with `/`)"
            ));
        }
    }
    let mut signals = Vec::new();
    let mut units = BTreeMap::new();
    for s in &config.signals {
        let kind = match s.kind.as_deref() {
            None => None,
            Some("f64") | Some("float") => Some(FieldType::Float),
            Some("i64") | Some("int") => Some(FieldType::Integer),
            Some("u64") | Some("uint") => Some(FieldType::UInteger),
            Some("bool") => Some(FieldType::Boolean),
            Some("string") => Some(FieldType::String),
            Some(other) => {
                return Err(format!(
                    "mapping `{name}`: signal `{}` has type `{other}`; use f64, i64, u64, bool or string",
                    s.name
                ));
            }
        };
        if let Some(unit) = &s.unit {
            units.insert(s.name.clone(), unit.clone());
        }
        signals.push(Signal {
            pointer: s.pointer.clone(),
            name: s.name.clone(),
            kind,
            scale: s.scale,
            offset: s.offset,
        });
    }
    let has_device = levels
        .iter()
        .any(|l| matches!(l, Level::Capture(c) if c == "device"));
    if !has_device {
        return Err(format!(
            "mapping `{name}`: the topic needs a `{{device}}` capture"
        ));
    }
    Ok(Mapping {
        name: name.clone(),
        version: config.version,
        source: config.source.clone(),
        levels,
        format,
        measurement: config.measurement.clone(),
        time: config.time.clone(),
        time_unit,
        signals,
        signal: config.signal.clone(),
        units,
    })
}

impl Mapping {
    /// The captures of `topic` if the mapping's template matches it.
    pub fn captures(&self, topic: &str) -> Option<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let mut parts = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Hash => return Some(out),
                Level::Plus => {
                    parts.next()?;
                }
                Level::Literal(l) => {
                    if parts.next()? != l {
                        return None;
                    }
                }
                Level::Capture(name) => {
                    let v = parts.next()?;
                    if v.is_empty() {
                        return None;
                    }
                    out.insert(name.clone(), v.to_owned());
                }
            }
        }
        parts.next().is_none().then_some(out)
    }

    fn fail(&self, reason: impl Into<String>) -> MapError {
        MapError {
            mapping: self.name.clone(),
            version: self.version,
            reason: reason.into(),
        }
    }

    /// The media type under which a message's payload is stored as a blob, for mappings whose
    /// rows name their payload (WAV clips).
    pub fn blob_media_type(&self) -> Option<&'static str> {
        matches!(self.format, Format::Wav).then_some(fabrik_core::blob::WAV_MEDIA_TYPE)
    }

    /// The field a one-value message fills: the mapping's `signal`, else the topic's
    /// `{signal}` capture.
    fn signal_name(&self, captures: &BTreeMap<String, String>) -> Result<String, MapError> {
        self.signal
            .clone()
            .or_else(|| captures.get("signal").cloned())
            .ok_or_else(|| self.fail("no signal name (set `signal` or capture `{signal}`)"))
    }

    /// Maps one message whose topic gave `captures`. `received` is the receipt time.
    pub fn map(
        &self,
        captures: &BTreeMap<String, String>,
        payload: &[u8],
        received: Timestamp,
        device: &DeviceInfo,
    ) -> Result<Vec<Point>, MapError> {
        let device_id = captures
            .get("device")
            .cloned()
            .ok_or_else(|| self.fail("no device in the topic"))?;
        let measurement = match &self.measurement {
            Some(template) => fill(template, captures, device),
            None if !device.device_type.is_empty() => device.device_type.clone(),
            None => "telemetry".to_owned(),
        };
        if measurement.is_empty() || measurement.starts_with('_') {
            return Err(self.fail(format!(
                "table name `{measurement}` is empty or starts with `_` (reserved)"
            )));
        }
        let mut tags = vec![("device".to_owned(), device_id)];
        for (k, v) in captures {
            if !matches!(k.as_str(), "device" | "measurement" | "signal") {
                tags.push((k.clone(), v.clone()));
            }
        }
        match self.format {
            Format::Wav => {
                let field = self.signal_name(captures)?;
                let audio =
                    fabrik_core::wav::wav_info(payload).map_err(|e| self.fail(e.to_string()))?;
                // Dated at receipt, not at when the recording began (its length earlier): a
                // row dated before the pipelines' read horizon, which trails the clock by their
                // lateness, would never be read.
                let row = fabrik_core::BlobRow {
                    table: measurement,
                    tags,
                    signal: field,
                    bytes: payload,
                    content_type: fabrik_core::blob::WAV_MEDIA_TYPE.to_owned(),
                    audio: Some(audio),
                    time: received,
                };
                Ok(row.points())
            }
            Format::Value => {
                let text = std::str::from_utf8(payload)
                    .map_err(|e| self.fail(format!("payload is not UTF-8 text: {e}")))?
                    .trim();
                let field = self.signal_name(captures)?;
                let value = match serde_json::from_str::<serde_json::Value>(text) {
                    Ok(v) => v,
                    Err(_) => serde_json::Value::String(text.to_owned()),
                };
                let spec = self.signals.iter().find(|s| s.name == field);
                let value = self.convert(&field, &value, spec)?;
                Ok(vec![Point {
                    measurement,
                    tags,
                    fields: vec![(field, value)],
                    time: received,
                    quality: Quality::Good,
                }])
            }
            Format::Json => {
                let doc: serde_json::Value = serde_json::from_slice(payload)
                    .map_err(|e| self.fail(format!("payload is not JSON: {e}")))?;
                let rows: Vec<&serde_json::Value> = match &doc {
                    serde_json::Value::Array(items) => items.iter().collect(),
                    serde_json::Value::Object(_) => vec![&doc],
                    _ => {
                        return Err(
                            self.fail("payload is JSON but not an object or an array of objects")
                        );
                    }
                };
                let mut points = Vec::with_capacity(rows.len());
                for (i, row) in rows.into_iter().enumerate() {
                    let at = |reason: String| {
                        if matches!(doc, serde_json::Value::Array(_)) {
                            self.fail(format!("element {i}: {reason}"))
                        } else {
                            self.fail(reason)
                        }
                    };
                    let time = self.time_of(row, received).map_err(at)?;
                    let quality = match row.get("quality").and_then(|q| q.as_str()) {
                        Some(q) => Quality::parse(q).map_err(|e| at(e.to_string()))?,
                        None => Quality::Good,
                    };
                    let fields = self.fields_of(row).map_err(|e| at(e.reason))?;
                    if fields.is_empty() {
                        return Err(at("no signal values in the payload".into()));
                    }
                    points.push(Point {
                        measurement: measurement.clone(),
                        tags: tags.clone(),
                        fields,
                        time,
                        quality,
                    });
                }
                Ok(points)
            }
        }
    }

    fn time_of(&self, row: &serde_json::Value, received: Timestamp) -> Result<Timestamp, String> {
        let Some(pointer) = &self.time else {
            return Ok(received);
        };
        match row.pointer(pointer) {
            None => Ok(received),
            Some(serde_json::Value::Number(n)) => {
                let v = n
                    .as_f64()
                    .ok_or_else(|| format!("`{pointer}` is not a number"))?;
                let multiplier: i64 = match self.time_unit {
                    TimeUnit::Fixed(m) => m,
                    TimeUnit::Auto => {
                        let a = v.abs();
                        if a < 1e11 {
                            1_000_000_000
                        } else if a < 1e14 {
                            1_000_000
                        } else if a < 1e17 {
                            1_000
                        } else {
                            1
                        }
                    }
                };
                let out_of_range = || format!("`{pointer}` = {v} is out of range for a timestamp");
                // In integers where the payload has one: an f64 holds a nanosecond time only
                // to 256 ns, and 1732500000446 ms would be stored as …446000128.
                let ns = match n.as_i64() {
                    Some(whole) => whole.checked_mul(multiplier).ok_or_else(out_of_range)?,
                    None => {
                        if !v.is_finite() || v.abs() * multiplier as f64 > 9.2e18 {
                            return Err(out_of_range());
                        }
                        let whole = v.trunc();
                        let fraction = ((v - whole) * multiplier as f64).round() as i64;
                        (whole as i64)
                            .checked_mul(multiplier)
                            .and_then(|ns| ns.checked_add(fraction))
                            .ok_or_else(out_of_range)?
                    }
                };
                Ok(Timestamp(ns))
            }
            Some(serde_json::Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .and_then(|t| t.timestamp_nanos_opt())
                .map(Timestamp)
                .ok_or_else(|| format!("`{pointer}` = `{s}` is not an RFC 3339 time")),
            Some(other) => Err(format!("`{pointer}` = {other} is not a timestamp")),
        }
    }

    fn fields_of(&self, row: &serde_json::Value) -> Result<Vec<(String, Value)>, MapError> {
        let mut fields = Vec::new();
        if self.signals.is_empty() {
            let skip_time = self.time.as_deref().map(|p| p.trim_start_matches('/'));
            flatten(row, "", &mut |name, v| {
                if Some(name) == skip_time || name == "quality" {
                    return Ok(());
                }
                fields.push((name.to_owned(), self.convert(name, v, None)?));
                Ok(())
            })?;
        } else {
            for s in &self.signals {
                if let Some(v) = row.pointer(&s.pointer) {
                    if v.is_null() {
                        continue;
                    }
                    fields.push((s.name.clone(), self.convert(&s.name, v, Some(s))?));
                }
            }
        }
        Ok(fields)
    }

    fn convert(
        &self,
        name: &str,
        v: &serde_json::Value,
        spec: Option<&Signal>,
    ) -> Result<Value, MapError> {
        let scaled = |x: f64| spec.map_or(x, |s| x * s.scale + s.offset);
        let plain = spec.is_none_or(|s| s.scale == 1.0 && s.offset == 0.0);
        let natural = match v {
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::String(s) => Value::Str(s.clone()),
            serde_json::Value::Number(n) => {
                if plain && let Some(i) = n.as_i64() {
                    Value::I64(i)
                } else {
                    let x = n.as_f64().unwrap_or(f64::NAN);
                    Value::F64(scaled(x))
                }
            }
            other => {
                return Err(self.fail(format!(
                    "signal `{name}` is {other}, not a number, boolean or text"
                )));
            }
        };
        // Without a declared type, JSON numbers are stored as floats: a sensor sending `20`
        // then `20.5` must not fail on a type conflict.
        let kind = spec.and_then(|s| s.kind).unwrap_or(match natural {
            Value::I64(_) | Value::U64(_) | Value::F64(_) => FieldType::Float,
            ref other => other.field_type(),
        });
        let bad =
            |what: &str| self.fail(format!("signal `{name}` = {v} cannot be stored as {what}"));
        Ok(match (kind, natural) {
            (FieldType::Float, Value::I64(i)) => Value::F64(scaled(i as f64)),
            (FieldType::Float, Value::F64(x)) if x.is_finite() => Value::F64(x),
            (FieldType::Integer, Value::I64(i)) => Value::I64(i),
            (FieldType::Integer, Value::F64(x)) if x.fract() == 0.0 && x.abs() < 9.2e18 => {
                Value::I64(x as i64)
            }
            (FieldType::UInteger, Value::I64(i)) if i >= 0 => Value::U64(i as u64),
            (FieldType::UInteger, Value::F64(x))
                if x.fract() == 0.0 && (0.0..1.8e19).contains(&x) =>
            {
                Value::U64(x as u64)
            }
            (FieldType::Boolean, Value::Bool(b)) => Value::Bool(b),
            (FieldType::String, Value::Str(s)) => Value::Str(s),
            (FieldType::Float, _) => return Err(bad("f64")),
            (FieldType::Integer, _) => return Err(bad("i64")),
            (FieldType::UInteger, _) => return Err(bad("u64")),
            (FieldType::Boolean, _) => return Err(bad("bool")),
            (FieldType::String, _) => return Err(bad("string")),
        })
    }
}

/// Walks the scalar members of a JSON object, naming nested ones `outer_inner`.
fn flatten(
    v: &serde_json::Value,
    prefix: &str,
    out: &mut dyn FnMut(&str, &serde_json::Value) -> Result<(), MapError>,
) -> Result<(), MapError> {
    if let serde_json::Value::Object(map) = v {
        for (k, child) in map {
            let name = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}_{k}")
            };
            match child {
                serde_json::Value::Object(_) => flatten(child, &name, out)?,
                serde_json::Value::Null | serde_json::Value::Array(_) => {}
                scalar => out(&name, scalar)?,
            }
        }
    }
    Ok(())
}

/// Fills `{name}` placeholders from captures and device info.
fn fill(template: &str, captures: &BTreeMap<String, String>, device: &DeviceInfo) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let name = &after[..close];
        match name {
            "device_type" => out.push_str(&device.device_type),
            other => out.push_str(captures.get(other).map_or("", String::as_str)),
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The first mapping of `mappings` for `source` whose topic template matches, with its
/// captures.
pub fn find<'m>(
    mappings: &'m [Mapping],
    source: &str,
    topic: &str,
) -> Option<(&'m Mapping, BTreeMap<String, String>)> {
    mappings
        .iter()
        .filter(|m| m.source == source)
        .find_map(|m| m.captures(topic).map(|c| (m, c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(config: MappingConfig) -> Mapping {
        compile(&config).expect("valid mapping")
    }

    fn pump() -> DeviceInfo {
        DeviceInfo {
            device_type: "pump".into(),
        }
    }

    #[test]
    fn a_flat_json_object_becomes_one_row_in_the_device_type_table() {
        let mappings: Vec<Mapping> = default_mappings().into_iter().map(compiled).collect();
        let (m, caps) = find(&mappings, "mqtt", "devices/p-7/telemetry").expect("match");
        let points = m
            .map(
                &caps,
                br#"{"ts": 1700000000000, "pressure": 2.5, "running": true, "mode": "auto", "motor": {"current": 12}}"#,
                Timestamp(5),
                &pump(),
            )
            .expect("mapped");
        assert_eq!(points.len(), 1);
        let p = &points[0];
        assert_eq!(p.measurement, "pump");
        assert_eq!(p.tags, vec![("device".to_owned(), "p-7".to_owned())]);
        assert_eq!(p.time, Timestamp(1_700_000_000_000_000_000));
        let fields: BTreeMap<_, _> = p.fields.iter().cloned().collect();
        assert_eq!(fields["pressure"], Value::F64(2.5));
        assert_eq!(fields["running"], Value::Bool(true));
        assert_eq!(fields["mode"], Value::Str("auto".into()));
        assert_eq!(
            fields["motor_current"],
            Value::F64(12.0),
            "integers are floats unless typed"
        );
        assert!(!fields.contains_key("ts"));
        // Times keep every digit the payload gives: integers exactly, fractions to the ns.
        for (payload, want) in [
            (
                &br#"{"ts": 1732500000446, "p": 1}"#[..],
                1_732_500_000_446_000_000,
            ),
            (
                br#"{"ts": 1732500000.123456789, "p": 1}"#,
                1_732_500_000_123_456_716,
            ),
            (
                br#"{"ts": 1732500000446123, "p": 1}"#,
                1_732_500_000_446_123_000,
            ),
        ] {
            let points = m
                .map(&caps, payload, Timestamp(5), &pump())
                .expect("mapped");
            let got = points[0].time.0;
            assert!(
                (got - want).abs() < 1_000,
                "{}: {got}",
                String::from_utf8_lossy(payload)
            );
            if !String::from_utf8_lossy(payload).contains('.') {
                assert_eq!(got, want, "{}", String::from_utf8_lossy(payload));
            }
        }
    }

    #[test]
    fn explicit_signals_scale_and_type_and_arrays_give_several_rows() {
        let m = compiled(MappingConfig {
            signals: vec![
                SignalConfig {
                    pointer: "/t".into(),
                    name: "temperature".into(),
                    unit: Some("degC".into()),
                    kind: None,
                    scale: 0.1,
                    offset: -5.0,
                },
                SignalConfig {
                    pointer: "/n".into(),
                    name: "count".into(),
                    unit: None,
                    kind: Some("u64".into()),
                    scale: 1.0,
                    offset: 0.0,
                },
            ],
            time_unit: "s".into(),
            ..default_mappings().remove(1)
        });
        let caps = m.captures("devices/d1/telemetry/env").expect("match");
        let points = m
            .map(
                &caps,
                br#"[{"ts": 10, "t": 250, "n": 3}, {"ts": 11, "t": 260}]"#,
                Timestamp(0),
                &DeviceInfo::default(),
            )
            .expect("mapped");
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].measurement, "env");
        assert_eq!(points[0].time, Timestamp(10_000_000_000));
        assert_eq!(
            points[0].fields,
            vec![
                ("temperature".to_owned(), Value::F64(20.0)),
                ("count".to_owned(), Value::U64(3))
            ]
        );
        assert_eq!(
            points[1].fields,
            vec![("temperature".to_owned(), Value::F64(21.0))]
        );
        assert_eq!(m.units["temperature"], "degC");
    }

    #[test]
    fn bad_payloads_name_what_is_wrong() {
        let m = compiled(default_mappings().remove(0));
        let caps = m.captures("devices/d1/telemetry").expect("match");
        let err = |payload: &[u8]| {
            m.map(&caps, payload, Timestamp(0), &pump())
                .expect_err("must fail")
                .reason
        };
        assert!(
            err(b"{not json").contains("not JSON"),
            "{}",
            err(b"{not json")
        );
        assert!(err(b"42").contains("not an object"));
        assert!(err(br#"{"ts": "yesterday", "v": 1}"#).contains("RFC 3339"));
        assert!(err(br#"{"ts": 1}"#).contains("no signal values"));
        assert!(err(br#"{"v": [1,2], "w": {}}"#).contains("no signal values"));
        assert!(err(br#"{"v": 1, "quality": "meh"}"#).contains("meh"));
        assert!(err(br#"[{"v": 1}, {"ts": true, "v": 2}]"#).starts_with("element 1"));
    }

    #[test]
    fn topics_match_only_their_template() {
        let m = compiled(default_mappings().remove(0));
        assert!(m.captures("devices/d1/telemetry").is_some());
        assert!(m.captures("devices/d1/telemetry/x").is_none());
        assert!(m.captures("devices//telemetry").is_none());
        assert!(m.captures("other/d1/telemetry").is_none());
    }

    #[test]
    fn invalid_configurations_are_rejected_with_the_field_named() {
        let mut c = default_mappings().remove(0);
        c.topic = "devices/x{device}/t".into();
        assert!(compile(&c).expect_err("mixed").contains("mixes"));
        c.topic = "devices/+/t".into();
        assert!(compile(&c).expect_err("no device").contains("{device}"));
        let mut c = default_mappings().remove(0);
        c.time = Some("ts".into());
        assert!(compile(&c).expect_err("pointer").contains("JSON pointer"));
        let mut c = default_mappings().remove(0);
        c.time_unit = "minutes".into();
        assert!(compile(&c).expect_err("unit").contains("time_unit"));
    }

    #[test]
    fn value_payloads_use_the_signal_capture() {
        let m = compiled(MappingConfig {
            name: "values".into(),
            topic: "plant/{device}/{signal}".into(),
            format: "value".into(),
            measurement: Some("plant".into()),
            ..default_mappings().remove(0)
        });
        let caps = m.captures("plant/m1/speed").expect("match");
        let p = m
            .map(&caps, b" 1450.5 ", Timestamp(9), &pump())
            .expect("mapped");
        assert_eq!(p[0].fields, vec![("speed".to_owned(), Value::F64(1450.5))]);
        assert_eq!(p[0].time, Timestamp(9));
    }
}
