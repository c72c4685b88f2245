//! Telemetry: the process-wide Prometheus recorder behind `/metrics`, the `tracing` target of
//! the spans that become traces and the W3C `traceparent` they continue.
//!
//! Metric names follow `fabrik_<what>_<unit>[_total]`; device ids never become labels
//! (per-device cardinality lives in the store, not in Prometheus).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use metrics_exporter_prometheus::PrometheusBuilder;
pub use metrics_exporter_prometheus::PrometheusHandle;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The `tracing` target of the spans that become traces (decision 0054): the log leaves it
/// out, the trace layer takes it. Not a prefix of any crate's name, so filters on crates do not
/// catch it.
pub const SPAN_TARGET: &str = "fabrik_spans";

static SPANS_EXPORTED: AtomicBool = AtomicBool::new(false);

/// Says that a layer now turns [`SPAN_TARGET`]'s spans into traces (`fabrik run` with
/// `[traces]`; tests that capture spans).
pub fn set_spans_exported() {
    SPANS_EXPORTED.store(true, Ordering::Relaxed);
}

/// Whether spans of [`SPAN_TARGET`] become traces. Hot paths that must decide before they
/// build a span (message traces, under their cap) ask this rather than `tracing::enabled!`:
/// with per-layer filters, an `enabled` check that no span follows leaves the log filter's
/// verdict behind for the thread's next event, which the log then drops
/// (tokio-rs/tracing#2519).
pub fn spans_exported() -> bool {
    SPANS_EXPORTED.load(Ordering::Relaxed)
}

/// How many traced messages' spans [`remember_message_span`] keeps: at the message spans' cap
/// of 1,000 a second, about the last minute.
const MESSAGE_SPANS_KEPT: usize = 65_536;
/// Arrival ids looked up per hold of the index's lock, so a page of 50,000 rows never keeps the
/// ingest path (which adds to the index) waiting for long.
const LOOKUPS_PER_LOCK: usize = 1024;

type SpanIds = ([u8; 16], [u8; 8]);

/// The spans of recent traced messages by the arrival id (`_raw_id`) of their rows, the oldest
/// dropped first (decision 0081).
struct MessageSpans {
    capacity: usize,
    by_raw_id: std::collections::HashMap<u64, SpanIds>,
    order: std::collections::VecDeque<u64>,
}

impl MessageSpans {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            by_raw_id: std::collections::HashMap::new(),
            order: std::collections::VecDeque::new(),
        }
    }

    fn insert(&mut self, raw_id: u64, span: SpanIds) {
        if self.by_raw_id.insert(raw_id, span).is_none() {
            self.order.push_back(raw_id);
        }
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.by_raw_id.remove(&oldest);
            }
        }
    }
}

static MESSAGE_SPANS: std::sync::Mutex<Option<MessageSpans>> = std::sync::Mutex::new(None);
/// The index's id range, `[min, max]`, readable without its lock; `min > max` while empty.
static MESSAGE_SPANS_MIN: AtomicU64 = AtomicU64::new(u64::MAX);
static MESSAGE_SPANS_MAX: AtomicU64 = AtomicU64::new(0);

/// Remembers that the rows of arrival `raw_id` came of the message traced as span `span_id` of
/// trace `trace_id`, so a span that reads them can link to it.
pub fn remember_message_span(raw_id: u64, trace_id: [u8; 16], span_id: [u8; 8]) {
    let Ok(mut guard) = MESSAGE_SPANS.lock() else {
        return;
    };
    let spans = guard.get_or_insert_with(|| MessageSpans::new(MESSAGE_SPANS_KEPT));
    spans.insert(raw_id, (trace_id, span_id));
    // Ids grow with time, so the oldest kept bounds the range from below (an id that two
    // workers registered out of order, a microsecond apart, may fall outside it as it is about
    // to be dropped anyway).
    if let Some(oldest) = spans.order.front() {
        MESSAGE_SPANS_MIN.store(*oldest, Ordering::Relaxed);
    }
    MESSAGE_SPANS_MAX.fetch_max(raw_id, Ordering::Relaxed);
}

/// The spans of the traced messages among the arrival ids `raw_ids`, at most `limit`, each
/// once. Ids outside the kept range are passed over without the lock: nothing is looked up
/// when no message was traced, or for rows older than the oldest kept.
pub fn message_spans_of(raw_ids: impl IntoIterator<Item = u64>, limit: usize) -> Vec<SpanIds> {
    let (min, max) = (
        MESSAGE_SPANS_MIN.load(Ordering::Relaxed),
        MESSAGE_SPANS_MAX.load(Ordering::Relaxed),
    );
    if min > max {
        return Vec::new();
    }
    let mut candidates: Vec<u64> = raw_ids
        .into_iter()
        .filter(|id| (min..=max).contains(id))
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    let mut found: Vec<SpanIds> = Vec::new();
    for chunk in candidates.chunks(LOOKUPS_PER_LOCK) {
        let Ok(guard) = MESSAGE_SPANS.lock() else {
            return found;
        };
        let Some(spans) = guard.as_ref() else {
            return found;
        };
        for raw_id in chunk {
            if found.len() >= limit {
                return found;
            }
            if let Some(span) = spans.by_raw_id.get(raw_id)
                && !found.contains(span)
            {
                found.push(*span);
            }
        }
    }
    found
}

/// A W3C `traceparent` (version 00): trace id, parent span id and whether the caller sampled
/// it. All-zero ids are invalid.
pub fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    // Version 00 has one layout: `00-<32 hex>-<16 hex>-<2 hex>`, 55 bytes. Read by position
    // (MQTT messages that carry a context are read at ingest rate).
    let value = value.trim().as_bytes();
    if value.len() != 55 || &value[..3] != b"00-" || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace = unhex::<16>(&value[3..35]).filter(|t| t.iter().any(|b| *b != 0))?;
    let span = unhex::<8>(&value[36..52]).filter(|s| s.iter().any(|b| *b != 0))?;
    let flags = unhex::<1>(&value[53..])?;
    Some((trace, span, flags[0] & 1 == 1))
}

/// `N` bytes from `2N` hex digits (either case), in one pass, no parsing per byte pair.
pub fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    fn nibble(digit: u8) -> Option<u8> {
        match digit {
            b'0'..=b'9' => Some(digit - b'0'),
            b'a'..=b'f' => Some(digit - b'a' + 10),
            b'A'..=b'F' => Some(digit - b'A' + 10),
            _ => None,
        }
    }
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// Installs the Prometheus recorder once per process and returns a handle that renders the
/// exposition text. Later calls (tests start many servers in one process) return the same
/// handle.
pub fn prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first, in which case our handle
            // renders nothing but the process keeps working.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("A metrics recorder was already installed; /metrics will be empty.");
            }
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_read_as_w3c_writes_them() {
        let (trace, span, sampled) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .expect("valid");
        assert_eq!(trace[..2], [0x4b, 0xf9]);
        assert_eq!(trace[15], 0x36);
        assert_eq!(span, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(sampled);
        let unsampled =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!unsampled.expect("valid").2);
        assert_eq!(
            parse_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"),
            Some((trace, span, true)),
            "upper-case digits are read too"
        );
        assert_eq!(
            parse_traceparent(" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n"),
            Some((trace, span, true)),
            "surrounding white space is left out"
        );
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902zz-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-+1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            "00-4bf92f3577b34da6a3ce929d0e0e47360-0f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }
}

#[cfg(test)]
mod message_span_tests {
    use super::*;

    #[test]
    fn traced_messages_are_found_by_their_rows_arrival_ids_each_once() {
        remember_message_span(u64::MAX - 2, [2; 16], [2; 8]);
        remember_message_span(u64::MAX - 1, [1; 16], [1; 8]);
        let found = message_spans_of([u64::MAX - 1, 7, u64::MAX - 1, u64::MAX - 2], 8);
        assert_eq!(found.len(), 2);
        assert!(found.contains(&([1; 16], [1; 8])) && found.contains(&([2; 16], [2; 8])));
        assert_eq!(message_spans_of([u64::MAX - 1, u64::MAX - 2], 1).len(), 1);
    }

    #[test]
    fn the_index_keeps_its_capacity_dropping_the_oldest() {
        let mut spans = MessageSpans::new(3);
        for id in 1..=5 {
            spans.insert(id, ([id as u8; 16], [1; 8]));
        }
        spans.insert(5, ([9; 16], [9; 8]));
        assert_eq!(spans.order.len(), 3);
        assert_eq!(spans.by_raw_id.len(), 3);
        assert!(!spans.by_raw_id.contains_key(&2) && spans.by_raw_id.contains_key(&3));
        assert_eq!(
            spans.by_raw_id[&5],
            ([9; 16], [9; 8]),
            "the latest span of an id"
        );
        assert_eq!(spans.order.front(), Some(&3));
    }
}
