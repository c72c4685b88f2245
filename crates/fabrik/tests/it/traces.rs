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
    let port = free_port();
    let python = std::env::var("FABRIK_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut receiver = Command::new(&python);
    receiver.arg(RECEIVER).arg(port.to_string()).arg(&out);
    let _receiver = Peer::listening(
        receiver,
        port,
        "the OTLP receiver needs Python with opentelemetry-proto (.ci/run installs it)",
    );
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
