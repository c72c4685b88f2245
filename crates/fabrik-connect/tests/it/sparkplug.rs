//! Decodes the payloads that `tests/fixtures/make_vectors.py` encoded with Google's protobuf
//! runtime from the official `sparkplug_b.proto`, and round-trips Rust-encoded payloads through
//! the same independent Python decoder (`make_vectors.py --decode`, run by hand: it needs the
//! official `.proto`, which stays out of the repository).

use fabrik_connect::sparkplug::{
    DataType, Event, SessionConfig, SparkplugHost, Value, decode_payload, encode_payload,
    metric_datatype, metric_value, new_metric, proto::Payload,
};
use serde_json::{Value as Json, json};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sparkplug")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The JSON shape make_vectors.py writes for a value.
fn value_json(v: &Value) -> Json {
    match v {
        Value::I64(x) => json!({ "I64": x }),
        Value::U64(x) => json!({ "U64": x }),
        Value::F64(x) => json!({ "F64": x }),
        Value::Bool(x) => json!({ "Bool": x }),
        Value::Str(x) => json!({ "Str": x }),
        Value::Bytes(x) => json!({ "Bytes": hex(x) }),
        Value::Array(items) => json!({ "Array": items.iter().map(value_json).collect::<Vec<_>>() }),
        Value::Null => json!("Null"),
        Value::Unsupported { datatype, json } => json!({ "Unsupported": {
            "datatype": format!("{datatype:?}"),
            "json": serde_json::from_str::<Json>(json).expect("Unsupported.json is valid JSON"),
        }}),
    }
}

fn expected() -> Json {
    let text = std::fs::read_to_string(fixtures().join("vectors/expected.json"))
        .expect("tests/fixtures/vectors/expected.json is readable");
    serde_json::from_str(&text).expect("expected.json is JSON")
}

fn opt_u64(j: &Json) -> Option<u64> {
    j.as_u64()
}

#[test]
fn python_vectors_decode_to_the_expected_values() {
    let exp = expected();
    let vectors = exp["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 7);
    let mut checked_values = 0;
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let bytes =
            std::fs::read(fixtures().join("vectors").join(v["file"].as_str().unwrap())).unwrap();
        let p = decode_payload(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.timestamp, opt_u64(&v["timestamp"]), "{name} timestamp");
        assert_eq!(p.seq, opt_u64(&v["seq"]), "{name} seq");
        let metrics = v["metrics"].as_array().unwrap();
        assert_eq!(p.metrics.len(), metrics.len(), "{name} metric count");
        for (m, e) in p.metrics.iter().zip(metrics) {
            let label = format!("{name}/{:?}", m.name.as_deref().or(e["name"].as_str()));
            assert_eq!(m.name.as_deref(), e["name"].as_str(), "{label} name");
            assert_eq!(m.alias, opt_u64(&e["alias"]), "{label} alias");
            assert_eq!(m.timestamp, opt_u64(&e["timestamp"]), "{label} timestamp");
            assert_eq!(
                m.datatype.map(u64::from),
                opt_u64(&e["datatype"]),
                "{label} datatype"
            );
            // Metrics without a datatype need the birth: checked through the session below.
            if m.datatype.is_some() {
                let dt = metric_datatype(m, None, &label).unwrap();
                let got = metric_value(m, dt, &label).unwrap_or_else(|e| panic!("{label}: {e}"));
                assert_eq!(value_json(&got), e["value"], "{label} value");
                checked_values += 1;
            }
        }
    }
    assert!(checked_values >= 45, "only {checked_values} values checked");
}

#[test]
fn python_vectors_drive_the_session() {
    let exp = expected();
    let mut host = SparkplugHost::new(SessionConfig::default());
    for (i, v) in exp["vectors"].as_array().unwrap().iter().enumerate() {
        let name = v["name"].as_str().unwrap();
        let bytes =
            std::fs::read(fixtures().join("vectors").join(v["file"].as_str().unwrap())).unwrap();
        let step = host
            .handle(
                v["topic"].as_str().unwrap(),
                &bytes,
                1_800_000_000_000 + i as u64,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            step.rejected.is_empty(),
            "{name}: rejected {:?}",
            step.rejected
        );
        let samples: Vec<Json> = step
            .samples
            .iter()
            .map(|s| {
                json!({
                    "device_id": s.device_id, "metric": s.metric, "timestamp_ms": s.timestamp_ms,
                    "value": value_json(&s.value), "datatype": format!("{:?}", s.datatype)
                        .replace("Uuid", "UUID"),
                })
            })
            .collect();
        let want_samples = v["samples"].as_array().unwrap();
        assert_eq!(samples.len(), want_samples.len(), "{name}: sample count");
        for (got, want) in samples.iter().zip(want_samples) {
            assert_eq!(got, want, "{name}: sample");
        }
        let events: Vec<Json> = step
            .events
            .iter()
            .map(|e| match e {
                Event::Online(id) => json!({ "Online": id }),
                Event::Offline(id) => json!({ "Offline": id }),
                other => panic!("{name}: unexpected {other:?}"),
            })
            .collect();
        assert_eq!(Json::Array(events), v["events"], "{name}: events");
        if name == "ndeath_stale" {
            assert!(
                step.notes.iter().any(|n| n.contains("stale NDEATH")),
                "{:?}",
                step.notes
            );
        }
    }
    let node = host.node("plant1", "edge-a").unwrap();
    assert!(!node.is_online());
    assert!(!node.device_online("pump-7"));
}

/// One metric of every data type that can be encoded, with its Rust value.
fn roundtrip_metrics() -> Vec<(&'static str, DataType, Value)> {
    use DataType as T;
    vec![
        ("i8", T::Int8, Value::I64(-128)),
        ("i8b", T::Int8, Value::I64(-1)),
        ("i16", T::Int16, Value::I64(-32768)),
        ("i32", T::Int32, Value::I64(-2_000_000_000)),
        ("i64", T::Int64, Value::I64(i64::MIN)),
        ("u8", T::UInt8, Value::U64(200)),
        ("u16", T::UInt16, Value::U64(65535)),
        ("u32", T::UInt32, Value::U64(4_294_967_295)),
        ("u64", T::UInt64, Value::U64(u64::MAX)),
        ("float", T::Float, Value::F64(-0.375)),
        ("double", T::Double, Value::F64(1.0e-300)),
        ("bool", T::Boolean, Value::Bool(true)),
        ("string", T::String, Value::Str("ünïcode \"q\"".into())),
        ("text", T::Text, Value::Str("t".into())),
        (
            "uuid",
            T::Uuid,
            Value::Str("123e4567-e89b-12d3-a456-426614174000".into()),
        ),
        ("datetime", T::DateTime, Value::I64(1_700_000_000_000)),
        ("bytes", T::Bytes, Value::Bytes(vec![0, 1, 255])),
        ("file", T::File, Value::Bytes(b"%PDF".to_vec())),
        (
            "a/i8",
            T::Int8Array,
            Value::Array(vec![Value::I64(-23), Value::I64(123)]),
        ),
        (
            "a/i16",
            T::Int16Array,
            Value::Array(vec![Value::I64(-30000), Value::I64(2)]),
        ),
        (
            "a/i32",
            T::Int32Array,
            Value::Array(vec![Value::I64(123_456_789), Value::I64(-1)]),
        ),
        (
            "a/i64",
            T::Int64Array,
            Value::Array(vec![Value::I64(i64::MIN), Value::I64(i64::MAX)]),
        ),
        (
            "a/u8",
            T::UInt8Array,
            Value::Array(vec![Value::U64(0), Value::U64(255)]),
        ),
        (
            "a/u16",
            T::UInt16Array,
            Value::Array(vec![Value::U64(65535)]),
        ),
        (
            "a/u32",
            T::UInt32Array,
            Value::Array(vec![Value::U64(u64::from(u32::MAX))]),
        ),
        (
            "a/u64",
            T::UInt64Array,
            Value::Array(vec![Value::U64(u64::MAX)]),
        ),
        (
            "a/float",
            T::FloatArray,
            Value::Array(vec![Value::F64(1.5), Value::F64(-2.25)]),
        ),
        (
            "a/double",
            T::DoubleArray,
            Value::Array(vec![Value::F64(0.1)]),
        ),
        (
            "a/bool",
            T::BooleanArray,
            Value::Array(
                [true, false, false, true, true, true, false, true, false]
                    .into_iter()
                    .map(Value::Bool)
                    .collect(),
            ),
        ),
        (
            "a/string",
            T::StringArray,
            Value::Array(vec![Value::Str("x".into()), Value::Str(String::new())]),
        ),
        (
            "a/datetime",
            T::DateTimeArray,
            Value::Array(vec![Value::I64(0), Value::I64(1_700_000_000_000)]),
        ),
        ("null", T::Int32, Value::Null),
    ]
}

fn roundtrip_payload() -> Payload {
    let metrics = roundtrip_metrics()
        .iter()
        .enumerate()
        .map(|(i, (name, dt, v))| {
            new_metric(Some(name), Some(i as u64), *dt, v, Some(1_000 + i as u64))
                .expect("encodable test value")
        })
        .collect();
    Payload {
        timestamp: Some(42),
        metrics,
        seq: Some(0),
        ..Payload::default()
    }
}

#[test]
fn rust_encoding_round_trips_through_rust() {
    let bytes = encode_payload(&roundtrip_payload());
    let p = decode_payload(&bytes).unwrap();
    for (m, (name, dt, v)) in p.metrics.iter().zip(roundtrip_metrics()) {
        assert_eq!(m.name.as_deref(), Some(name));
        let dt2 = metric_datatype(m, None, name).unwrap();
        assert_eq!(dt2, dt);
        assert_eq!(metric_value(m, dt2, name).unwrap(), v, "{name}");
    }
}
