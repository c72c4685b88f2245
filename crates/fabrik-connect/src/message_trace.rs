//! A trace span per MQTT message that carries a W3C `traceparent` user property (the W3C
//! "Trace Context: MQTT format" draft; decision 0077): the span continues the publisher's trace
//! and lasts from the message's receipt until its rows, or its dead letter, are durable, so a
//! device that traces its publishes sees where the time went on Fabrik's side and which stored
//! rows (`fabrik.raw_id`, the rows' `_raw_id`) came of it.
//!
//! Messages without the property get [`tracing::Span::none`]: no span, no sampling draw, no
//! cost beyond looking at their user properties, so the ingest path keeps its rate.

use tracing::Span;

/// The user property that carries the W3C trace context in MQTT 5.
pub const TRACEPARENT: &str = "traceparent";

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

/// The span of one message, the publisher's `traceparent` as its remote parent (the trace
/// layer decides by its sampled flag whether the span is kept), or no span without one.
pub fn message_span(arrival: Arrival<'_>, traceparent: Option<&str>) -> Span {
    let Some(traceparent) = traceparent else {
        return Span::none();
    };
    // An explicit root: the remote parent is the publisher's span, never whatever span the
    // receiving task happens to be in.
    tracing::info_span!(
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
        fabrik.device = tracing::field::Empty,
        fabrik.mapping = tracing::field::Empty,
        fabrik.mapping.version = tracing::field::Empty,
        fabrik.points = tracing::field::Empty,
        fabrik.outcome = tracing::field::Empty,
    )
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
    /// It could not be stored now; its sender was told to retry.
    Failed(&'a str),
}

/// Records how the message ended; a dead letter or a failure marks the span failed.
pub fn record_outcome(span: &Span, outcome: Outcome<'_>) {
    if span.is_none() {
        return;
    }
    let (name, error) = match outcome {
        Outcome::Stored => ("stored", None),
        Outcome::DeadLetter(reason) => ("dead_letter", Some(reason)),
        Outcome::NotStored => ("not_stored", None),
        Outcome::Failed(reason) => ("failed", Some(reason)),
    };
    span.record("fabrik.outcome", name);
    if let Some(reason) = error {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_message", reason);
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

    #[test]
    fn a_message_without_a_traceparent_has_no_span() {
        let arrival = Arrival {
            source: "mqtt",
            topic: "devices/p/telemetry",
            client_id: Some("p"),
            payload_bytes: 3,
        };
        let span = message_span(arrival, None);
        assert!(span.is_none());
        // Recording on it is a no-op, not a panic.
        record_outcome(&span, Outcome::Failed("disk full"));
    }
}
