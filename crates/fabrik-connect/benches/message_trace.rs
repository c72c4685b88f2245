//! What deciding on a message's span costs the MQTT ingest path (`cargo bench -p
//! fabrik-connect --bench message_trace`; decision 0077), per message, best of five runs of
//! 2,000,000: a message without a `traceparent`; one with a sampled context while traces are
//! off; one with a sampled context over the cap of 1,000 message spans a second (traces on,
//! the cap spent: the path every message but 1,000 a second takes when a fleet samples every
//! publish). Spans under the cap are built and exported by the trace layer, which lives in the
//! binary and is measured end to end by `bench/message_traces.sh`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use fabrik_connect::message_trace::{Arrival, MessageTrace};

const MESSAGES: usize = 2_000_000;

fn arrival() -> Arrival<'static> {
    Arrival {
        source: "mqtt",
        topic: "devices/pump-1/telemetry",
        client_id: Some("pump-1"),
        payload_bytes: 24,
    }
}

/// Nanoseconds per message, best of five runs.
fn per_message(contexts: &[Option<String>]) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        for context in contexts.iter().cycle().take(MESSAGES) {
            let mut trace = MessageTrace::start(arrival(), black_box(context.as_deref()));
            trace.end(fabrik_connect::message_trace::Outcome::Stored);
            black_box(&trace);
        }
        best = best.min(started.elapsed());
    }
    best.as_nanos() as f64 / MESSAGES as f64
}

fn main() {
    // Distinct sampled contexts, as a fleet that traces every publish sends them.
    let sampled: Vec<Option<String>> = (1..=1_024u64)
        .map(|n| {
            Some(format!(
                "00-{:016x}{n:016x}-{n:016x}-01",
                0x5b8e_fff7_9803_8103u64
            ))
        })
        .collect();
    println!("no traceparent: {:.1} ns per message", per_message(&[None]));
    println!(
        "sampled traceparent, traces off: {:.1} ns per message",
        per_message(&sampled)
    );
    fabrik_runtime::telemetry::set_spans_exported();
    // No subscriber is installed, so the 1,000 spans a second under the cap are built disabled
    // and cost next to nothing; every other message takes the over-the-cap path.
    println!(
        "sampled traceparent, traces on, over the cap: {:.1} ns per message",
        per_message(&sampled)
    );
}
