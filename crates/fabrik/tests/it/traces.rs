//! Traces end to end (decision 0054): `fabrik run --demo` sends its spans over OTLP/HTTP to a
//! receiver that parses them with the OpenTelemetry protocol's own definitions
//! (`tests/peers/otlp_receiver.py`, PyPI opentelemetry-proto).

use std::path::Path;
use std::process::Command;

use crate::mqtt::eventually;
use crate::support::{Peer, Process, TOKEN, free_port};

const RECEIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/otlp_receiver.py");

fn spans(file: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// The OTLP receiver on a free port, writing the spans it parses to `out`; stopped on drop.
fn collector(out: &Path) -> (u16, Peer) {
    collector_with(out, &[], 0)
}

/// [`collector`] with more arguments (`grpc [REFUSE_FIRST]`), answering that `reject` spans
/// of each batch were rejected (OTLP's partial success).
fn collector_with(out: &Path, args: &[&str], reject: u32) -> (u16, Peer) {
    let port = free_port();
    let python = crate::support::python();
    let mut receiver = Command::new(&python);
    receiver
        .arg(RECEIVER)
        .arg(port.to_string())
        .arg(out)
        .args(args)
        .env("OTLP_REJECT", reject.to_string());
    let peer = Peer::listening(
        receiver,
        port,
        "the OTLP receiver needs Python with opentelemetry-proto (.ci/run installs it)",
    );
    (port, peer)
}

/// A query sent as part of the caller's trace `trace`, from its span `parent`.
fn traced_query(url: &str, trace: &str, parent: &str, sql: &str) -> u16 {
    crate::support::send_blocking(|client| {
        client
            .post(format!("{url}/api/v1/query"))
            .bearer_auth(TOKEN)
            .header("traceparent", format!("00-{trace}-{parent}-01"))
            .json(&serde_json::json!({ "sql": sql }))
    })
    .0
}

#[test]
fn spans_of_requests_queries_and_pipelines_reach_an_otlp_collector() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("spans.jsonl");
    let (port, _receiver) = collector(&out);
    let endpoint = format!("http://127.0.0.1:{port}");
    let p = Process::start_with_args(
        &dir.path().join("data"),
        &["--demo"],
        &[("FABRIK__TRACES__OTLP_ENDPOINT", endpoint.as_str())],
    );

    // A caller's trace continues into Fabrik: the request's span is the caller's child, the
    // query's span the request's.
    let (trace, caller) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let sql = "SELECT 41 + 1 AS answer";
    // A readiness probe first: probes make no traces.
    let (ready, _) = crate::support::send_blocking(|client| client.get(format!("{}/ready", p.url)));
    assert_eq!(ready, 200);
    assert_eq!(traced_query(&p.url, trace, caller, sql), 200);
    eventually(
        "the request's and the query's spans at the collector",
        || {
            spans(&out)
                .iter()
                .filter(|s| s["trace_id"] == trace)
                .count()
                >= 2
        },
    );
    let all = spans(&out);
    let errors: Vec<_> = all.iter().filter(|s| s.get("error").is_some()).collect();
    assert!(errors.is_empty(), "the collector refused spans: {errors:?}");
    assert!(
        !all.iter().any(|s| s["name"] == "GET /ready"),
        "a probe made a span"
    );
    let request = all
        .iter()
        .find(|s| s["trace_id"] == trace && s["name"] == "POST /api/v1/query")
        .expect("the request's span");
    assert_eq!(request["parent_span_id"], caller);
    assert_eq!(request["kind"], 2, "a server span");
    assert_eq!(request["attributes"]["http.route"], "/api/v1/query");
    assert_eq!(request["attributes"]["http.response.status_code"], 200);
    assert_eq!(request["resource"]["service.name"], "fabrik");
    assert_eq!(
        request["encoding"], "protobuf",
        "OTLP/HTTP's default encoding"
    );
    assert_eq!(request["compressed"], false, "not compressed unless asked");
    let query = all
        .iter()
        .find(|s| s["trace_id"] == trace && s["name"] == "store.query")
        .expect("the query's span");
    assert_eq!(query["parent_span_id"], request["span_id"]);
    assert_eq!(query["attributes"]["db.query.text"], sql);
    assert_eq!(query["attributes"]["db.response.returned_rows"], 1);
    assert!(query["start"].as_u64() >= request["start"].as_u64());
    assert!(query["end"].as_u64() <= request["end"].as_u64());

    // The demo's pipelines read the simulated plant's samples: a span per page of them.
    eventually("a pipeline's span", || {
        spans(&out).iter().any(|s| {
            s["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("pipeline "))
                && s["attributes"]["samples"].as_u64().unwrap_or(0) > 0
        })
    });

    // Spans still queued when Fabrik stops are sent before it exits.
    let last = "0af7651916cd43dd8448eb211c80319c";
    assert_eq!(traced_query(&p.url, last, caller, "SELECT 1 AS n"), 200);
    let (status, log) = p.terminate();
    assert!(status.success(), "{status}: {}", log.join("\n"));
    assert!(
        spans(&out)
            .iter()
            .any(|s| s["trace_id"] == last && s["name"] == "POST /api/v1/query"),
        "the last request's span was sent at shutdown"
    );
}

/// `protocol = "http/json"`: the same spans in OTLP/HTTP's JSON encoding, which the collector
/// parses by the protocol's own definitions; here gzip-compressed (`compression = "gzip"`).
#[test]
fn spans_go_as_json_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("spans.jsonl");
    let (port, _receiver) = collector_with(&out, &[], 1);
    let endpoint = format!("http://127.0.0.1:{port}");
    let p = Process::start_with_args(
        &dir.path().join("data"),
        &[],
        &[
            ("FABRIK__TRACES__OTLP_ENDPOINT", endpoint.as_str()),
            ("FABRIK__TRACES__PROTOCOL", "http/json"),
            ("FABRIK__TRACES__COMPRESSION", "gzip"),
        ],
    );
    let (trace, caller) = ("5bf92f3577b34da6a3ce929d0e0e4736", "10f067aa0ba902b7");
    assert_eq!(traced_query(&p.url, trace, caller, "SELECT 2 AS n"), 200);
    eventually("the request's span at the collector", || {
        spans(&out)
            .iter()
            .any(|s| s["trace_id"] == trace && s["name"] == "POST /api/v1/query")
    });
    let all = spans(&out);
    assert!(all.iter().all(|s| s.get("error").is_none()), "{all:?}");
    let request = all
        .iter()
        .find(|s| s["trace_id"] == trace && s["name"] == "POST /api/v1/query")
        .expect("the request's span");
    assert_eq!(request["encoding"], "json");
    assert_eq!(request["compressed"], true, "Content-Encoding: gzip");
    assert_eq!(request["parent_span_id"], caller);
    assert_eq!(request["attributes"]["http.response.status_code"], 200);
    let (status, log) = p.terminate();
    assert!(status.success());
    assert!(
        log.iter()
            .any(|line| line.contains("rejected part of a batch") && line.contains("too old")),
        "the partial success in OTLP/JSON is read: {}",
        log.join("\n")
    );
}

/// `protocol = "grpc"` (decision 0076): the spans reach gRPC's reference server over
/// cleartext HTTP/2, a call it refuses with UNAVAILABLE is sent again, and spans still queued
/// at shutdown go before Fabrik exits.
#[test]
fn spans_go_over_grpc_and_a_refused_call_is_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("spans.jsonl");
    let (port, _receiver) = collector_with(&out, &["grpc", "1"], 1);
    let endpoint = format!("http://127.0.0.1:{port}");
    let p = Process::start_with_args(
        &dir.path().join("data"),
        &[],
        &[
            ("FABRIK__TRACES__OTLP_ENDPOINT", endpoint.as_str()),
            ("FABRIK__TRACES__PROTOCOL", "grpc"),
            // Compressed messages, which grpcio inflates by the call's grpc-encoding.
            ("FABRIK__TRACES__COMPRESSION", "gzip"),
        ],
    );
    let (trace, caller) = ("6bf92f3577b34da6a3ce929d0e0e4736", "20f067aa0ba902b7");
    assert_eq!(traced_query(&p.url, trace, caller, "SELECT 3 AS n"), 200);
    eventually("the request's span at the gRPC collector", || {
        spans(&out)
            .iter()
            .any(|s| s["trace_id"] == trace && s["name"] == "POST /api/v1/query")
    });
    let all = spans(&out);
    assert!(all.iter().all(|s| s.get("error").is_none()), "{all:?}");
    assert_eq!(
        all.first().and_then(|s| s["refused"].as_str()),
        Some("UNAVAILABLE"),
        "the first call was refused, and its spans came again: {all:?}"
    );
    let request = all
        .iter()
        .find(|s| s["trace_id"] == trace && s["name"] == "POST /api/v1/query")
        .expect("the request's span");
    assert_eq!(request["encoding"], "grpc");
    assert_eq!(
        all.iter()
            .filter(|s| s["span_id"] == request["span_id"])
            .count(),
        1,
        "a call answered with status 0 (in the trailers) is not sent again"
    );
    assert_eq!(request["parent_span_id"], caller);
    assert_eq!(request["resource"]["service.name"], "fabrik");
    let query = all
        .iter()
        .find(|s| s["trace_id"] == trace && s["name"] == "store.query")
        .expect("the query's span");
    assert_eq!(query["parent_span_id"], request["span_id"]);

    let last = "7af7651916cd43dd8448eb211c80319c";
    assert_eq!(traced_query(&p.url, last, caller, "SELECT 4 AS n"), 200);
    let (status, log) = p.terminate();
    assert!(status.success(), "{status}: {}", log.join("\n"));
    let all = spans(&out);
    assert!(
        all.iter().any(|s| s["trace_id"] == last),
        "the last request's span was sent at shutdown"
    );
    // Read after every retry has ended: a success misread (status 0 in the trailers) would
    // have sent a batch again, or been logged.
    let mut ids: Vec<&str> = all.iter().filter_map(|s| s["span_id"].as_str()).collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "no span was sent twice: {all:?}");
    let refusals = log
        .iter()
        .filter(|line| line.contains("refused a batch of spans"))
        .count();
    assert_eq!(refusals, 1, "only the UNAVAILABLE: {}", log.join("\n"));
    assert!(
        log.iter()
            .any(|line| line.contains("rejected part of a batch") && line.contains("too old")),
        "the collector's partial success is reported: {}",
        log.join("\n")
    );
}

/// An HTTP receiver that answers 200 and keeps each request's `traceparent` header (or none).
fn header_receiver() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let (mut length, mut traceparent) = (0usize, None);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    } else if name.eq_ignore_ascii_case("traceparent") {
                        traceparent = Some(value.trim().to_owned());
                    }
                }
            }
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            log.lock().expect("log").push(traceparent);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, seen)
}

/// A `fabrik run` exporting spans to the collector on `port`, with an alert rule on hot ovens
/// and one notifier (`notifier`: the body of its `[[alerting.notifiers]]` table), after a
/// write of a 95 °C oven that fires the rule.
fn start_hot_oven(dir: &Path, port: u16, notifier: &str) -> Process {
    let config = format!(
        r#"
[traces]
otlp_endpoint = "http://127.0.0.1:{port}"

[[alerting.rules]]
name = "oven-hot"
table = "oven"
value = "celsius"
key = "device"
condition = "above"
threshold = 80.0
interval = "200ms"
start = "earliest"

[[alerting.notifiers]]{notifier}"#
    );
    let p = crate::support::start_configured(dir, &config);
    let line = format!(
        "oven,device=oven-1 celsius=95 {}\n",
        crate::support::now_ns()
    );
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", &line),
        200
    );
    p
}

/// The span a W3C `traceparent` names, once the collector has it; its form is checked first.
fn span_of(out: &Path, traceparent: &str) -> serde_json::Value {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!((parts[0], parts[3]), ("00", "01"), "{traceparent}");
    eventually("the span at the collector", || {
        spans(out)
            .iter()
            .any(|s| s["trace_id"] == parts[1] && s["span_id"] == parts[2])
    });
    spans(out)
        .into_iter()
        .find(|s| s["span_id"] == parts[2])
        .expect("span")
}

#[test]
fn a_webhook_carries_the_trace_of_its_delivery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("spans.jsonl");
    let (port, _collector) = collector(&out);
    let (hook, seen) = header_receiver();
    let _oven = start_hot_oven(
        dir.path(),
        port,
        &format!(
            r#"
name = "ops"
kind = "webhook"
url = "{hook}"
timeout = "2s"
"#
        ),
    );
    eventually("the webhook", || !seen.lock().expect("log").is_empty());
    let traceparent = seen.lock().expect("log")[0]
        .clone()
        .expect("the webhook carried no traceparent");
    // The receiver's parent is the delivery's own span, as exported to the collector.
    let delivery = span_of(&out, &traceparent);
    assert_eq!(delivery["name"], "alert notification ops", "{delivery}");
    assert_eq!(delivery["kind"], 3, "a client span: {delivery}");
}

/// The first retained message under `plant/alerts/#` on the broker at `host`:`port`, as an
/// MQTT 5 subscriber (mosquitto_sub) reads it: `topic|user properties`.
fn retained_with_properties(host: &str, port: &str, login: Option<(&str, &str)>) -> String {
    let mut printed = String::new();
    // Retained: the subscriber finds the notification whenever it connects.
    eventually("the retained notification with its user properties", || {
        let mut sub = Command::new("mosquitto_sub");
        sub.args(["-h", host, "-p", port, "-V", "mqttv5"]);
        if let Some((user, password)) = login {
            sub.args(["-u", user, "-P", password]);
        }
        let out = sub
            .args(["-t", "plant/alerts/#", "-F", "%t|%P", "-C", "1", "-W", "5"])
            .output()
            .expect("mosquitto_sub");
        printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        !printed.is_empty()
    });
    printed
}

/// An MQTT notification published on this process's endpoint carries the `traceparent` of
/// its delivery as an MQTT 5 user property (the W3C's MQTT binding of Trace Context), which an
/// MQTT 5 subscriber (mosquitto_sub) reads.
#[test]
fn an_mqtt_notification_carries_the_trace_of_its_delivery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("spans.jsonl");
    let (port, _collector) = collector(&out);
    let p = start_hot_oven(
        dir.path(),
        port,
        r#"
name = "scada"
kind = "mqtt"
topic = "plant/alerts/{rule}/{device}"
retain = true
"#,
    );
    let mqtt = p.mqtt.clone().expect("the MQTT endpoint");
    let (host, mqtt_port) = mqtt.rsplit_once(':').expect("host:port");
    let printed = retained_with_properties(host, mqtt_port, Some(("admin", TOKEN)));
    let (topic, properties) = printed.split_once('|').expect("topic|properties");
    assert_eq!(topic, "plant/alerts/oven-hot/oven-1");
    let traceparent = properties
        .split(' ')
        .find_map(|property| property.strip_prefix("traceparent:"))
        .unwrap_or_else(|| panic!("no traceparent user property in `{properties}`"));
    // The subscriber's parent is the delivery's span, as exported to the collector.
    let delivery = span_of(&out, traceparent);
    assert_eq!(delivery["name"], "alert notification scada", "{delivery}");
}

/// An MQTT notifier to an external broker (Mosquitto) with `mqtt_version = "5"`: its message
/// carries the delivery's `traceparent` as a user property, and a message the broker refuses
/// (its ACL denies the topic) fails the delivery with the reason in the PUBACK, which the
/// delivery's span records.
#[test]
fn mqtt_5_notifications_to_an_external_broker_carry_their_trace_and_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("spans.jsonl");
    let (port, _collector) = collector(&out);
    let broker_port = crate::support::free_port();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic readwrite plant/#\n").expect("acl");
    let _broker = crate::bridge::start_broker_with(
        dir.path(),
        broker_port,
        &format!("acl_file {}\n", acl.display()),
    );
    let p = start_hot_oven(
        dir.path(),
        port,
        &format!(
            r#"
name = "scada"
kind = "mqtt"
url = "mqtt://127.0.0.1:{broker_port}"
mqtt_version = "5"
topic = "plant/alerts/{{rule}}/{{device}}"
retain = true

[[alerting.notifiers]]
name = "denied"
kind = "mqtt"
url = "mqtt://127.0.0.1:{broker_port}"
mqtt_version = "5"
topic = "office/alerts/{{device}}"
"#
        ),
    );
    let printed = retained_with_properties("127.0.0.1", &broker_port.to_string(), None);
    let (topic, properties) = printed.split_once('|').expect("topic|properties");
    assert_eq!(topic, "plant/alerts/oven-hot/oven-1");
    let traceparent = properties
        .split(' ')
        .find_map(|property| property.strip_prefix("traceparent:"))
        .unwrap_or_else(|| panic!("no traceparent user property in `{properties}`"));
    let delivery = span_of(&out, traceparent);
    assert_eq!(delivery["name"], "alert notification scada", "{delivery}");
    // The denied topic: the broker's PUBACK says why, and the delivery fails with it.
    eventually("the refused delivery's span", || {
        spans(&out).iter().any(|s| {
            s["name"] == "alert notification denied"
                && s["status"] == 2
                && s["status_message"]
                    .as_str()
                    .is_some_and(|m| m.contains("NotAuthorized"))
        })
    });
    let (status, _) = p.terminate();
    assert!(status.success());
}

/// `mosquitto_pub` as MQTT 5 at QoS 1, with `traceparent` as a user property when given.
fn publish_traced(
    port: &str,
    login: Option<(&str, &str)>,
    topic: &str,
    payload: &str,
    traceparent: Option<&str>,
) {
    let mut publish = Command::new("mosquitto_pub");
    publish.args([
        "-h",
        "127.0.0.1",
        "-p",
        port,
        "-V",
        "mqttv5",
        "-q",
        "1",
        "-t",
        topic,
        "-m",
        payload,
    ]);
    if let Some((user, password)) = login {
        publish.args(["-i", user, "-u", user, "-P", password]);
    }
    if let Some(traceparent) = traceparent {
        publish.args(["-D", "publish", "user-property", "traceparent", traceparent]);
    }
    let out = publish.output().expect("mosquitto_pub");
    assert!(out.status.success(), "{out:?}");
}

/// The spans of messages (the ingest path's), in the order the collector received them.
fn message_spans(out: &Path) -> Vec<serde_json::Value> {
    spans(out)
        .into_iter()
        .filter(|s| s["attributes"]["messaging.system"] == "mqtt")
        .collect()
}

/// An MQTT 5 message that carries a W3C `traceparent` user property (from a device on
/// Fabrik's endpoint, or through a bridge from Mosquitto) gets a consumer span in the
/// publisher's trace, from its receipt until its rows are durable, naming the `_raw_id` its
/// rows carry; a dead letter fails its span with the reason; an unsampled context and a message
/// without one make no span.
#[test]
fn messages_that_carry_a_traceparent_are_traced_into_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("spans.jsonl");
    let (collector_port, _collector) = collector(&out);
    let broker_port = crate::support::free_port();
    let _broker = crate::bridge::start_broker_with(dir.path(), broker_port, "");
    let p = crate::support::start_configured(
        dir.path(),
        &format!(
            r#"
[traces]
otlp_endpoint = "http://127.0.0.1:{collector_port}"

[[bridges]]
name = "plant5"
address = "127.0.0.1:{broker_port}"
topics = ["plant/+/telemetry"]
qos = 1
mqtt_version = "5"

[[mappings]]
name = "plant-telemetry"
source = "bridge:plant5"
topic = "plant/{{device}}/telemetry"
measurement = "line"

[[mappings]]
name = "pump-telemetry"
source = "mqtt"
topic = "devices/{{device}}/telemetry"
measurement = "pump"

[[pipelines]]
name = "pressure"
table = "pump"
signals = ["pressure"]
window = "1s"
interval = "200ms"
lateness = "0s"
start = "earliest"
"#
        ),
    );
    let mqtt = p.mqtt.clone().expect("the MQTT endpoint");
    let (_, mqtt_port) = mqtt.rsplit_once(':').expect("host:port");
    let token = crate::mqtt::register(&p.url, "pump-1");
    let login = Some(("pump-1", token.as_str()));
    let trace = "5b8efff798038103d269b633813fc60c";
    let device = "eee19b7ec3c1b174";

    // No trace context, and an unsampled one: stored, no span.
    publish_traced(
        mqtt_port,
        login,
        "devices/pump-1/telemetry",
        r#"{"pressure": 1.0}"#,
        None,
    );
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    publish_traced(
        mqtt_port,
        login,
        "devices/pump-1/telemetry",
        r#"{"pressure": 1.5}"#,
        Some(&format!("00-{unsampled}-b7ad6b7169203331-00")),
    );
    // A sampled one: acknowledged (QoS 1) once stored, so the row is there now.
    let sent_after = u64::try_from(crate::support::now_ns()).expect("after 1970");
    publish_traced(
        mqtt_port,
        login,
        "devices/pump-1/telemetry",
        r#"{"pressure": 2.5}"#,
        Some(&format!("00-{trace}-{device}-01")),
    );
    // The client has its PUBACK: the span, which ends as the message is answered, has ended.
    let acked_by = u64::try_from(crate::support::now_ns()).expect("after 1970");
    let rows = crate::mqtt::query(&p.url, "SELECT _raw_id FROM pump WHERE pressure = 2.5");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let raw_id = rows[0]["_raw_id"].as_u64().expect("raw id");
    eventually("the message's span", || {
        message_spans(&out).iter().any(|s| s["trace_id"] == trace)
    });
    let all = message_spans(&out);
    let stored = all.iter().find(|s| s["trace_id"] == trace).expect("span");
    assert_eq!(
        stored["parent_span_id"], device,
        "the publisher's child: {stored}"
    );
    assert_eq!(stored["kind"], 5, "a consumer span: {stored}");
    assert_eq!(stored["name"], "ingest pump-telemetry", "{stored}");
    let attributes = &stored["attributes"];
    assert_eq!(
        attributes["messaging.destination.name"],
        "devices/pump-1/telemetry"
    );
    assert_eq!(attributes["messaging.operation.type"], "process");
    assert_eq!(attributes["messaging.client.id"], "pump-1");
    assert_eq!(attributes["messaging.message.body.size"], 17);
    assert_eq!(attributes["fabrik.source"], "mqtt");
    assert_eq!(attributes["fabrik.device"], "pump-1");
    assert_eq!(attributes["fabrik.mapping"], "pump-telemetry");
    assert_eq!(attributes["fabrik.mapping.version"], 1);
    assert_eq!(attributes["fabrik.points"], 1);
    assert_eq!(attributes["fabrik.outcome"], "stored");
    assert_eq!(
        attributes["fabrik.raw_id"], raw_id,
        "the row's lineage id: {stored}"
    );
    assert_ne!(stored["status"], 2, "{stored}");
    assert!(stored["start"].as_u64() >= Some(sent_after), "{stored}");
    assert!(
        stored["end"].as_u64() >= stored["start"].as_u64(),
        "{stored}"
    );
    assert!(
        stored["end"].as_u64() <= Some(acked_by),
        "ended by the PUBACK: {stored}"
    );
    // The pipeline's span for the page that read the message's row links to the message's
    // span (decision 0081): a trace viewer goes from the verdict's pass to the message.
    let message_link = serde_json::json!({ "trace_id": trace, "span_id": stored["span_id"] });
    eventually("a pipeline span linking to the message", || {
        spans(&out).iter().any(|s| {
            s["name"] == "pipeline pressure"
                && s["links"]
                    .as_array()
                    .is_some_and(|links| links.contains(&message_link))
        })
    });
    // And to nothing else: the table's other rows came of untraced messages.
    for page in spans(&out)
        .iter()
        .filter(|s| s["name"] == "pipeline pressure")
    {
        let links = page["links"].as_array().cloned().unwrap_or_default();
        assert!(links.iter().all(|link| *link == message_link), "{page}");
    }

    // A payload the mapping cannot read: a dead letter, and a failed span saying why.
    let bad = "4bf92f3577b34da6a3ce929d0e0e4736";
    publish_traced(
        mqtt_port,
        login,
        "devices/pump-1/telemetry",
        "{not json",
        Some(&format!("00-{bad}-00f067aa0ba902b7-01")),
    );
    eventually("the dead letter's span", || {
        message_spans(&out).iter().any(|s| s["trace_id"] == bad)
    });
    let all = message_spans(&out);
    let dead = all.iter().find(|s| s["trace_id"] == bad).expect("span");
    assert_eq!(dead["status"], 2, "failed: {dead}");
    assert!(
        dead["status_message"]
            .as_str()
            .is_some_and(|m| m.contains("not JSON")),
        "{dead}"
    );
    assert_eq!(dead["attributes"]["fabrik.outcome"], "dead_letter");
    assert_eq!(dead["attributes"]["fabrik.points"], 0);

    // Through the bridge: Mosquitto forwards the user property, the bridge continues the trace.
    let bridged = "c2a5f3a1b9e04d5c8f7e6d5c4b3a2918";
    eventually("a bridged message's span", || {
        publish_traced(
            &broker_port.to_string(),
            None,
            "plant/press-5/telemetry",
            r#"{"pressure": 5.5}"#,
            Some(&format!("00-{bridged}-1a2b3c4d5e6f7081-01")),
        );
        message_spans(&out).iter().any(|s| s["trace_id"] == bridged)
    });
    let all = message_spans(&out);
    let through = all.iter().find(|s| s["trace_id"] == bridged).expect("span");
    assert_eq!(through["parent_span_id"], "1a2b3c4d5e6f7081");
    assert_eq!(through["name"], "ingest plant-telemetry", "{through}");
    assert_eq!(through["attributes"]["fabrik.source"], "bridge:plant5");
    assert_eq!(through["attributes"]["fabrik.device"], "press-5");
    assert_eq!(through["attributes"]["fabrik.outcome"], "stored");

    // Every span of a message is one of the sampled ones: none for the unsampled context,
    // none for the message without one, and the unsampled message was stored all the same.
    assert!(
        all.iter()
            .all(|s| [trace, bad, bridged].contains(&s["trace_id"].as_str().unwrap_or_default())),
        "{all:?}"
    );
    let plain = crate::mqtt::query(&p.url, "SELECT count(*) AS n FROM pump");
    assert_eq!(plain[0]["n"], 3, "{plain:?}");
    let errors: Vec<_> = spans(&out)
        .into_iter()
        .filter(|s| s.get("error").is_some())
        .collect();
    assert!(errors.is_empty(), "the collector refused spans: {errors:?}");
}

/// `fabrik bench mqtt --mqtt-version 5 --traceparent`, the load generator that measures what
/// message traces cost (bench/message_traces.sh), speaks MQTT 5 that Fabrik's endpoint and
/// Mosquitto accept, and each of its publishes starts a trace of its own whose span names the
/// row it became.
#[test]
fn the_mqtt_load_generator_publishes_traced_mqtt_5_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("spans.jsonl");
    let (collector_port, _collector) = collector(&out);
    let p = crate::support::start_configured(
        dir.path(),
        &format!("[traces]\notlp_endpoint = \"http://127.0.0.1:{collector_port}\"\n"),
    );
    let mqtt = p.mqtt.clone().expect("the MQTT endpoint");
    // `--url` and `--token` (added by `client_command`) are where `--verify-store` counts rows.
    let bench = |broker: &str, more: &[&str]| {
        let args = [&["bench", "mqtt", "--broker", broker, "--json"], more].concat();
        crate::support::client_command(&p.url, &args)
    };
    let (ok, text) = bench(
        &mqtt,
        &[
            "--mqtt-version",
            "5",
            "--traceparent",
            "--connections",
            "3",
            "--messages",
            "30",
            "--qos",
            "1",
            "--username",
            "admin",
            "--password",
            TOKEN,
            "--verify-store",
        ],
    );
    assert!(ok, "{text}");
    let result: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("a line")).expect("JSON");
    assert_eq!(result["errors"], 0, "{result}");
    assert_eq!(result["stored"], 30, "every message a row: {result}");
    assert_eq!(result["mqtt_version"], "5");

    eventually("a span per message", || message_spans(&out).len() >= 30);
    let all = message_spans(&out);
    assert_eq!(all.len(), 30, "one span per message, no more");
    let traces: std::collections::BTreeSet<_> =
        all.iter().map(|s| s["trace_id"].to_string()).collect();
    assert_eq!(traces.len(), 30, "a trace of its own per message");
    let raw_ids: std::collections::BTreeSet<u64> = crate::mqtt::query(
        &p.url,
        "SELECT _raw_id FROM telemetry WHERE device LIKE 'bench-%'",
    )
    .iter()
    .map(|row| row["_raw_id"].as_u64().expect("raw id"))
    .collect();
    for span in &all {
        assert_eq!(span["attributes"]["fabrik.outcome"], "stored", "{span}");
        assert_eq!(span["attributes"]["fabrik.points"], 1, "{span}");
        let raw_id = span["attributes"]["fabrik.raw_id"].as_u64();
        assert!(
            raw_id.is_some_and(|id| raw_ids.contains(&id)),
            "the span names a stored row: {span}"
        );
        let trace = span["trace_id"].as_str().expect("trace id");
        assert_eq!(
            span["parent_span_id"].as_str(),
            Some(&trace[16..]),
            "the publisher's span is the message's number, as its trace id ends: {span}"
        );
    }

    // Mosquitto as MQTT 5 (its PUBACKs say "no subscribers", a success), QoS 0 and 1.
    let broker_port = free_port();
    let _broker = crate::bridge::start_broker_with(dir.path(), broker_port, "");
    for qos in ["0", "1"] {
        let (ok, text) = bench(
            &format!("127.0.0.1:{broker_port}"),
            &[
                "--mqtt-version",
                "5",
                "--traceparent",
                "--connections",
                "2",
                "--messages",
                "20",
                "--qos",
                qos,
            ],
        );
        assert!(ok, "QoS {qos}: {text}");
        let result: serde_json::Value =
            serde_json::from_str(text.lines().next().expect("a line")).expect("JSON");
        assert_eq!(result["errors"], 0, "QoS {qos}: {result}");
    }

    // MQTT 3.1.1 has no user properties: asking for trace contexts on it is refused.
    let (ok, text) = bench(&mqtt, &["--traceparent", "--messages", "1"]);
    assert!(!ok, "{text}");
    assert!(text.contains("--mqtt-version 5"), "{text}");
    let (status, _) = p.terminate();
    assert!(status.success());
}
