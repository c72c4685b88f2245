//! A trace span per MQTT message that carries a sampled W3C `traceparent` user property (the
//! W3C "Trace Context: MQTT format" draft; decision 0077): the span continues the publisher's
//! trace and lasts from the message's receipt until its rows, or its dead letter, are durable,
//! so a device that traces its publishes sees where the time went on Fabrik's side and which
//! stored rows (`fabrik.raw_id`, the rows' `_raw_id`) came of it.
//!
//! Messages without the property, or with one that is malformed or not sampled, get no span:
//! no sampler draw, no id, no cost beyond looking at their user properties, so the ingest path
//! keeps its rate. Message spans are capped per second, so a fleet that samples every publish
//! cannot turn the ingest worker into a span factory.

use std::time::Instant;

use parking_lot::Mutex;
use tracing::Span;

/// The user property that carries the W3C trace context in MQTT 5.
pub const TRACEPARENT: &str = "traceparent";

/// Message spans started per second at most; beyond it a sampled message goes untraced and is
/// counted (`fabrik_trace_spans_dropped_total{reason="message_rate"}`). The exporter sends a
/// few thousand spans a second; more would only be dropped later, after costing the ingest
/// worker their attributes.
pub const MESSAGE_SPANS_PER_SECOND: u32 = 1_000;

/// The `traceparent` among a message's user properties (the first, if sent twice).
pub fn traceparent<'a, K, V>(user_properties: &'a [(K, V)]) -> Option<&'a str>
where
    K: AsRef<str> + 'a,
    V: AsRef<str> + 'a,
{
    user_properties
        .iter()
        .find(|(key, _)| key.as_ref() == TRACEPARENT)
        .map(|(_, value)| value.as_ref())
}

/// What is known of a message when it arrives.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    /// The connector instance (`mqtt`, `bridge:<name>`).
    pub source: &'a str,
    /// The topic it was published to.
    pub topic: &'a str,
    /// The publishing client, when Fabrik's endpoint received it.
    pub client_id: Option<&'a str>,
    /// Payload size in bytes.
    pub payload_bytes: usize,
}

/// How a traced message ended, recorded on its span as `fabrik.outcome` (and its status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Its rows are durable.
    Stored,
    /// It is durable as a dead letter, for this reason.
    DeadLetter(&'a str),
    /// Nothing was stored: no mapping covers it and no device sent it (routed only).
    NotStored,
    /// It could not be stored; its sender was told so, or it was dropped at shutdown.
    Failed(&'a str),
}

/// The span of one message on its way into the store, or none. A span dropped before its
/// outcome was recorded (the message was dropped at shutdown) ends as failed, so no trace
/// shows a message that vanished as a success.
#[derive(Debug)]
pub struct MessageTrace {
    span: Span,
    ended: bool,
}

impl MessageTrace {
    /// No span (the message carried no sampled trace context).
    pub fn none() -> Self {
        Self {
            span: Span::none(),
            ended: true,
        }
    }

    /// The span of a message that arrived with `traceparent`: the publisher's child, if the
    /// context is a valid, sampled W3C `traceparent` and the per-second cap allows; else none.
    pub fn start(arrival: Arrival<'_>, traceparent: Option<&str>) -> Self {
        Self::start_capped(arrival, traceparent, &RATE)
    }

    fn start_capped(arrival: Arrival<'_>, traceparent: Option<&str>, rate: &SpanRate) -> Self {
        let Some(traceparent) = traceparent else {
            return Self::none();
        };
        // Traces off: nothing read, no slot of the cap taken, no span built.
        if !fabrik_runtime::telemetry::spans_exported() {
            return Self::none();
        }
        // The publisher decides (parent-based sampling): an unsampled or unreadable context
        // makes no span, rather than a span of Fabrik's own that the sampler then judges.
        if !fabrik_runtime::telemetry::parse_traceparent(traceparent)
            .is_some_and(|(_, _, sampled)| sampled)
        {
            return Self::none();
        }
        // The cap before the span exists: a span once built is exported when it closes,
        // whatever becomes of it, so one over the cap must never be built.
        if !rate.take() {
            rate.dropped();
            return Self::none();
        }
        // An explicit root: the remote parent is the publisher's span, never whatever span the
        // receiving task happens to be in.
        let span = tracing::info_span!(
            target: fabrik_runtime::telemetry::SPAN_TARGET,
            parent: None,
            "mqtt.message",
            otel.name = %format_args!("ingest {}", arrival.source),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            otel.status_message = tracing::field::Empty,
            traceparent = %traceparent,
            messaging.system = "mqtt",
            messaging.operation.type = "process",
            messaging.destination.name = %arrival.topic,
            messaging.client.id = arrival.client_id,
            messaging.message.body.size = arrival.payload_bytes as u64,
            fabrik.source = %arrival.source,
            fabrik.raw_id = tracing::field::Empty,
            fabrik.link_id = tracing::field::Empty,
            fabrik.device = tracing::field::Empty,
            fabrik.mapping = tracing::field::Empty,
            fabrik.mapping.version = tracing::field::Empty,
            fabrik.points = tracing::field::Empty,
            fabrik.outcome = tracing::field::Empty,
        );
        if span.is_disabled() {
            return Self::none();
        }
        Self { span, ended: false }
    }

    /// Whether there is a span to record on.
    pub fn is_traced(&self) -> bool {
        !self.span.is_disabled()
    }

    /// Records `value` as `field` (one declared on the span) when traced.
    pub fn record(&self, field: &str, value: impl tracing::Value) {
        if self.is_traced() {
            self.span.record(field, value);
        }
    }

    /// Says, before the message's rows are written, the arrival id they will carry: the trace
    /// layer keeps the span findable by it (not as an attribute), so a pipeline that reads the
    /// rows as soon as they are written can link to it (decision 0081). A write that fails
    /// leaves an entry no row will ever name.
    pub fn will_store_as(&self, raw_id: u64) {
        self.record("fabrik.link_id", raw_id);
    }

    /// Names the span after the mapping that read the message.
    pub fn mapped(&self, mapping: &str, version: u32) {
        if self.is_traced() {
            self.span
                .record("otel.name", format_args!("ingest {mapping}"));
            self.span.record("fabrik.mapping", mapping);
            self.span.record("fabrik.mapping.version", version);
        }
    }

    /// Records how the message ended; a dead letter or a failure marks the span failed. The
    /// span ends when this value is dropped.
    pub fn end(&mut self, outcome: Outcome<'_>) {
        self.ended = true;
        if !self.is_traced() {
            return;
        }
        let (name, error) = match outcome {
            Outcome::Stored => ("stored", None),
            Outcome::DeadLetter(reason) => ("dead_letter", Some(reason)),
            Outcome::NotStored => ("not_stored", None),
            Outcome::Failed(reason) => ("failed", Some(reason)),
        };
        self.span.record("fabrik.outcome", name);
        if let Some(reason) = error {
            self.span.record("otel.status_code", "ERROR");
            self.span.record("otel.status_message", reason);
        }
    }
}

impl Drop for MessageTrace {
    fn drop(&mut self) {
        if !self.ended {
            self.end(Outcome::Failed("dropped before it was stored"));
        }
    }
}

/// The per-second cap on message spans.
static RATE: SpanRate = SpanRate::new();

struct SpanRate {
    /// The second the count is of (since the first span), and the spans started in it.
    window: Mutex<Option<(Instant, u32)>>,
    /// `fabrik_trace_spans_dropped_total{reason="message_rate"}`, looked up once: beyond the
    /// cap it is counted for every message at ingest rate. (Taken from the recorder installed
    /// when the first message is dropped; `fabrik run` installs it before it listens.)
    dropped: std::sync::OnceLock<metrics::Counter>,
}

impl SpanRate {
    const fn new() -> Self {
        Self {
            window: Mutex::new(None),
            dropped: std::sync::OnceLock::new(),
        }
    }

    fn dropped(&self) {
        self.dropped
            .get_or_init(|| {
                metrics::counter!("fabrik_trace_spans_dropped_total", "reason" => "message_rate")
            })
            .increment(1);
    }

    fn take(&self) -> bool {
        let now = Instant::now();
        let mut window = self.window.lock();
        match &mut *window {
            Some((since, count)) if now.duration_since(*since).as_secs() < 1 => {
                if *count >= MESSAGE_SPANS_PER_SECOND {
                    return false;
                }
                *count += 1;
            }
            _ => *window = Some((now, 1)),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_traceparent_property_is_the_context() {
        let properties = [
            ("site".to_owned(), "north".to_owned()),
            ("traceparent".to_owned(), "00-aa-bb-01".to_owned()),
            ("traceparent".to_owned(), "00-cc-dd-01".to_owned()),
        ];
        assert_eq!(traceparent(&properties), Some("00-aa-bb-01"));
        let none: [(&str, &str); 1] = [("Traceparent-x", "00-aa-bb-01")];
        assert_eq!(traceparent(&none), None);
    }

    /// Counts the spans that closed, each of which an exporter would send.
    #[derive(Clone, Default)]
    struct ClosedSpans(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ClosedSpans {
        fn on_close(&self, _: tracing::span::Id, _: tracing_subscriber::layer::Context<'_, S>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn arrival() -> Arrival<'static> {
        Arrival {
            source: "mqtt",
            topic: "devices/p1/telemetry",
            client_id: Some("p1"),
            payload_bytes: 8,
        }
    }

    #[test]
    fn messages_over_the_cap_build_no_span_that_could_be_exported() {
        use tracing_subscriber::layer::SubscriberExt;
        let closed = ClosedSpans::default();
        let _default =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(closed.clone()));
        fabrik_runtime::telemetry::set_spans_exported();
        let rate = SpanRate::new();
        let traces: Vec<_> = (1..=MESSAGE_SPANS_PER_SECOND + 50)
            .map(|n| {
                let context = format!("00-{n:032x}-{n:016x}-01");
                MessageTrace::start_capped(arrival(), Some(&context), &rate)
            })
            .collect();
        let traced = traces.iter().filter(|t| t.is_traced()).count();
        assert_eq!(traced, MESSAGE_SPANS_PER_SECOND as usize);
        drop(traces);
        assert_eq!(
            closed.0.load(std::sync::atomic::Ordering::Relaxed),
            MESSAGE_SPANS_PER_SECOND as usize,
            "only the spans under the cap closed, so only they are exported"
        );
    }

    #[test]
    fn the_cap_allows_so_many_spans_a_second() {
        let rate = SpanRate::new();
        let allowed = (0..MESSAGE_SPANS_PER_SECOND + 10)
            .filter(|_| rate.take())
            .count();
        assert_eq!(allowed, MESSAGE_SPANS_PER_SECOND as usize);
        // A second later the count starts again.
        if let Some((since, _)) = &mut *rate.window.lock() {
            *since -= std::time::Duration::from_secs(1);
        }
        assert!(rate.take());
    }
}
