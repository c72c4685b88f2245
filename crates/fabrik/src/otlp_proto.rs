//! OTLP's trace export messages (opentelemetry-proto `collector/trace/v1`, `trace/v1`,
//! `common/v1`, `resource/v1`), the fields Fabrik sends, hand-written with prost-derive as
//! fabrik-onnx writes ONNX's (no protoc, no build script); and the conversion from the
//! OTLP/JSON request the exporter builds, so one representation of a span serves both
//! encodings (decision 0073).

use serde_json::Value;

/// `ExportTraceServiceRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub(crate) resource_spans: Vec<ResourceSpans>,
}

/// `ExportTraceServiceResponse`: what a collector answers, a partial success when it
/// refused some spans of a batch it took.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ExportTraceServiceResponse {
    #[prost(message, optional, tag = "1")]
    pub(crate) partial_success: Option<ExportTracePartialSuccess>,
}

/// `ExportTracePartialSuccess`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ExportTracePartialSuccess {
    #[prost(int64, tag = "1")]
    pub(crate) rejected_spans: i64,
    #[prost(string, tag = "2")]
    pub(crate) error_message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub(crate) resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub(crate) scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub(crate) attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    pub(crate) scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub(crate) spans: Vec<Span>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    #[prost(string, tag = "2")]
    pub(crate) version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Span {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) span_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub(crate) parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    pub(crate) name: String,
    #[prost(int32, tag = "6")]
    pub(crate) kind: i32,
    #[prost(fixed64, tag = "7")]
    pub(crate) start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    pub(crate) end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    pub(crate) attributes: Vec<KeyValue>,
    #[prost(message, repeated, tag = "11")]
    pub(crate) events: Vec<Event>,
    #[prost(message, repeated, tag = "13")]
    pub(crate) links: Vec<Link>,
    #[prost(message, optional, tag = "15")]
    pub(crate) status: Option<Status>,
}

/// `Span.Link`: another span this one is causally related to (decision 0081).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Link {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) span_id: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Event {
    #[prost(fixed64, tag = "1")]
    pub(crate) time_unix_nano: u64,
    #[prost(string, tag = "2")]
    pub(crate) name: String,
    #[prost(message, repeated, tag = "3")]
    pub(crate) attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Status {
    #[prost(string, tag = "2")]
    pub(crate) message: String,
    #[prost(int32, tag = "3")]
    pub(crate) code: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct KeyValue {
    #[prost(string, tag = "1")]
    pub(crate) key: String,
    #[prost(message, optional, tag = "2")]
    pub(crate) value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct AnyValue {
    #[prost(oneof = "any_value::Value", tags = "1, 2, 3, 4")]
    pub(crate) value: Option<any_value::Value>,
}

pub(crate) mod any_value {
    /// `AnyValue.value`, the scalar kinds Fabrik's attributes take.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(crate) enum Value {
        #[prost(string, tag = "1")]
        Text(String),
        #[prost(bool, tag = "2")]
        Bool(bool),
        #[prost(int64, tag = "3")]
        Int(i64),
        #[prost(double, tag = "4")]
        Double(f64),
    }
}

/// The protobuf form of an OTLP/JSON `ExportTraceServiceRequest` as the exporter builds it
/// (ids in hex, 64-bit integers as strings, as OTLP/JSON writes them); what it cannot read
/// is named.
pub(crate) fn request_from_json(json: &Value) -> Result<ExportTraceServiceRequest, String> {
    let resource_spans = list(json, "resourceSpans")
        .iter()
        .map(|resource_spans| {
            Ok(ResourceSpans {
                resource: Some(Resource {
                    attributes: key_values(&resource_spans["resource"])?,
                }),
                scope_spans: list(resource_spans, "scopeSpans")
                    .iter()
                    .map(|scope_spans| {
                        Ok(ScopeSpans {
                            scope: Some(InstrumentationScope {
                                name: text(&scope_spans["scope"]["name"]),
                                version: text(&scope_spans["scope"]["version"]),
                            }),
                            spans: list(scope_spans, "spans")
                                .iter()
                                .map(span)
                                .collect::<Result<_, String>>()?,
                        })
                    })
                    .collect::<Result<_, String>>()?,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(ExportTraceServiceRequest { resource_spans })
}

fn span(json: &Value) -> Result<Span, String> {
    let id = |key: &str, length: usize| -> Result<Vec<u8>, String> {
        match json[key].as_str() {
            None => Ok(Vec::new()),
            Some(hex) => bytes_of_hex(hex, length)
                .ok_or_else(|| format!("span {key} `{hex}` is not {length} bytes of hex")),
        }
    };
    let status = json.get("status").map(|status| Status {
        message: text(&status["message"]),
        code: i32::try_from(status["code"].as_i64().unwrap_or(0)).unwrap_or(0),
    });
    Ok(Span {
        trace_id: id("traceId", 16)?,
        span_id: id("spanId", 8)?,
        parent_span_id: id("parentSpanId", 8)?,
        name: text(&json["name"]),
        kind: i32::try_from(json["kind"].as_i64().unwrap_or(0)).unwrap_or(0),
        start_time_unix_nano: nanos(&json["startTimeUnixNano"])?,
        end_time_unix_nano: nanos(&json["endTimeUnixNano"])?,
        attributes: key_values(json)?,
        events: list(json, "events")
            .iter()
            .map(|event| {
                Ok(Event {
                    time_unix_nano: nanos(&event["timeUnixNano"])?,
                    name: text(&event["name"]),
                    attributes: key_values(event)?,
                })
            })
            .collect::<Result<_, String>>()?,
        links: list(json, "links")
            .iter()
            .map(|link| {
                let id = |key: &str, length: usize| -> Result<Vec<u8>, String> {
                    let hex = text(&link[key]);
                    bytes_of_hex(&hex, length)
                        .ok_or_else(|| format!("link {key} `{hex}` is not {length} bytes of hex"))
                };
                Ok(Link {
                    trace_id: id("traceId", 16)?,
                    span_id: id("spanId", 8)?,
                })
            })
            .collect::<Result<_, String>>()?,
        status,
    })
}

/// The `attributes` of `json`.
fn key_values(json: &Value) -> Result<Vec<KeyValue>, String> {
    list(json, "attributes")
        .iter()
        .map(|attribute| {
            let key = text(&attribute["key"]);
            let value = &attribute["value"];
            let any = if let Some(s) = value.get("stringValue") {
                any_value::Value::Text(text(s))
            } else if let Some(b) = value.get("boolValue") {
                any_value::Value::Bool(b.as_bool().unwrap_or(false))
            } else if let Some(i) = value.get("intValue") {
                let parsed = match i {
                    Value::String(s) => s.parse().ok(),
                    other => other.as_i64(),
                };
                // A u64 past i64::MAX (a counter) keeps its value as a double rather than
                // wrapping.
                match parsed {
                    Some(i) => any_value::Value::Int(i),
                    None => any_value::Value::Double(
                        i.as_str()
                            .and_then(|s| s.parse().ok())
                            .or_else(|| i.as_f64())
                            .ok_or_else(|| format!("attribute `{key}`: `{i}` is not an integer"))?,
                    ),
                }
            } else if let Some(d) = value.get("doubleValue") {
                any_value::Value::Double(d.as_f64().unwrap_or(f64::NAN))
            } else {
                return Err(format!("attribute `{key}` has no value Fabrik writes"));
            };
            Ok(KeyValue {
                key,
                value: Some(AnyValue { value: Some(any) }),
            })
        })
        .collect()
}

fn list<'a>(json: &'a Value, key: &str) -> &'a [Value] {
    json[key].as_array().map_or(&[], Vec::as_slice)
}

fn text(json: &Value) -> String {
    json.as_str().unwrap_or_default().to_owned()
}

/// A time in nanoseconds, as OTLP/JSON writes it (a decimal string).
fn nanos(json: &Value) -> Result<u64, String> {
    match json {
        Value::String(s) => s
            .parse()
            .map_err(|_| format!("`{s}` is not a time in nanoseconds")),
        Value::Null => Ok(0),
        other => other
            .as_u64()
            .ok_or_else(|| format!("`{other}` is not a time in nanoseconds")),
    }
}

fn bytes_of_hex(hex: &str, length: usize) -> Option<Vec<u8>> {
    if hex.len() != length * 2 || !hex.is_ascii() {
        return None;
    }
    (0..length)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use serde_json::json;

    /// The bytes PyPI's opentelemetry-proto (1.45, protobuf 7.36) serializes for this request
    /// (parsed from the same JSON, ids as base64): the field numbers and wire types are
    /// OTLP's, not only consistent with this module's own decoding.
    const OTLP_PROTO_BYTES: &str = "0af2010a1a0a180a0c736572766963652e6e616d6512080a0666616272696b12d3010a0f0a066661\
        6272696b1205302e312e3012bf010a104bf92f3577b34da6a3ce929d0e0e4736120800f067aa0ba9\
        02b7220801020304050607082a12504f5354202f6170692f76312f717565727930023901002a36fe\
        9c97174109002a36fe9c97174a200a19687474702e726573706f6e73652e7374617475735f636f64\
        65120318f4034a080a026f6b120210004a120a057368617265120921000000000000d03f5a230905\
        002a36fe9c971712066661696c65641a100a056c6576656c12070a054552524f527a0a1206666169\
        6c65641802";

    #[test]
    fn the_encoding_is_byte_for_byte_opentelemetry_protos() {
        let json = json!({"resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "fabrik"}}]},
            "scopeSpans": [{"scope": {"name": "fabrik", "version": "0.1.0"}, "spans": [{
                "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
                "spanId": "00f067aa0ba902b7",
                "parentSpanId": "0102030405060708",
                "name": "POST /api/v1/query", "kind": 2,
                "startTimeUnixNano": "1700000000000000001",
                "endTimeUnixNano": "1700000000000000009",
                "attributes": [
                    {"key": "http.response.status_code", "value": {"intValue": "500"}},
                    {"key": "ok", "value": {"boolValue": false}},
                    {"key": "share", "value": {"doubleValue": 0.25}}
                ],
                "events": [{"timeUnixNano": "1700000000000000005", "name": "failed",
                            "attributes": [{"key": "level", "value": {"stringValue": "ERROR"}}]}],
                "status": {"code": 2, "message": "failed"}
            }]}]
        }]});
        let encoded = request_from_json(&json).expect("request").encode_to_vec();
        let hex: String = encoded.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, OTLP_PROTO_BYTES);
    }

    /// A span's links go as `Span.links` (field 13), each a `Link` of trace id (1) and span
    /// id (2): OTLP's numbers, checked on the wire.
    #[test]
    fn links_are_span_field_13_on_the_wire() {
        let json = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
            "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
            "spanId": "00f067aa0ba902b7",
            "name": "pipeline pumps", "kind": 1,
            "startTimeUnixNano": "1", "endTimeUnixNano": "2",
            "links": [{"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174"}]
        }]}]}]});
        let encoded = request_from_json(&json).expect("request").encode_to_vec();
        let hex: String = encoded.iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            hex.contains("6a1c0a105b8efff798038103d269b633813fc60c1208eee19b7ec3c1b174"),
            "{hex}"
        );
        let bad = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
            "traceId": "4bf92f3577b34da6a3ce929d0e0e4736", "spanId": "00f067aa0ba902b7",
            "links": [{"traceId": "5b8e", "spanId": "eee19b7ec3c1b174"}]
        }]}]}]});
        let error = request_from_json(&bad).expect_err("a short trace id");
        assert!(error.contains("link traceId"), "{error}");
    }

    #[test]
    fn a_json_request_becomes_the_same_protobuf_request() {
        let json = json!({"resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "fabrik"}}]},
            "scopeSpans": [{"scope": {"name": "fabrik", "version": "0.1.0"}, "spans": [{
                "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
                "spanId": "00f067aa0ba902b7",
                "parentSpanId": "0102030405060708",
                "name": "POST /api/v1/query", "kind": 2,
                "startTimeUnixNano": "1700000000000000001",
                "endTimeUnixNano": "1700000000000000009",
                "attributes": [
                    {"key": "http.response.status_code", "value": {"intValue": "500"}},
                    {"key": "ok", "value": {"boolValue": false}},
                    {"key": "share", "value": {"doubleValue": 0.25}},
                    {"key": "huge", "value": {"intValue": "18446744073709551615"}}
                ],
                "events": [{"timeUnixNano": "1700000000000000005", "name": "failed",
                            "attributes": [{"key": "level", "value": {"stringValue": "ERROR"}}]}],
                "status": {"code": 2, "message": "failed"}
            }]}]
        }]});
        let request = request_from_json(&json).expect("request");
        // Encoded and decoded again: what a collector reads.
        let decoded =
            ExportTraceServiceRequest::decode(request.encode_to_vec().as_slice()).expect("decode");
        let span = &decoded.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id[0], 0x4b);
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.parent_span_id, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(span.start_time_unix_nano, 1_700_000_000_000_000_001);
        assert_eq!(span.kind, 2);
        let values: Vec<_> = span
            .attributes
            .iter()
            .map(|a| a.value.clone().and_then(|v| v.value))
            .collect();
        assert_eq!(
            values,
            [
                Some(any_value::Value::Int(500)),
                Some(any_value::Value::Bool(false)),
                Some(any_value::Value::Double(0.25)),
                Some(any_value::Value::Double(18_446_744_073_709_551_615.0)),
            ]
        );
        assert_eq!(span.events[0].name, "failed");
        assert_eq!(span.status.as_ref().map(|s| s.code), Some(2));
        let resource = decoded.resource_spans[0]
            .resource
            .as_ref()
            .expect("resource");
        assert_eq!(resource.attributes[0].key, "service.name");

        let mut broken = json.clone();
        broken["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] = json!("00f0");
        let refused = request_from_json(&broken).expect_err("short id");
        assert!(refused.contains("spanId `00f0`"), "{refused}");
    }
}
