//! Traces (decision 0054): a `tracing` layer that turns Fabrik's spans into OpenTelemetry spans
//! and an exporter that sends them to a collector over OTLP/HTTP as JSON — W3C `traceparent`
//! continues a caller's trace, a parent-based ratio sampler keeps a share of the root spans.
//!
//! Span conventions (as tracing-opentelemetry reads them): `otel.name` renames the span,
//! `otel.kind` (`server`, `client`, `internal`, `producer`, `consumer`) sets its kind,
//! `otel.status_code = "ERROR"` and `otel.status_message` its status, `traceparent` (a W3C
//! header value) its remote parent; every other field is an attribute. A warning or error
//! logged inside a span becomes a span event, an error marks the span failed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fabrik_runtime::config::OtlpProtocol;
use fabrik_runtime::telemetry::parse_traceparent;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Finished spans waiting for the exporter; beyond this they are dropped (and counted), so a
/// collector that is down never holds up the data path or grows memory.
const QUEUE: usize = 8192;
/// Spans per export request.
const BATCH: usize = 512;
/// Longest a finished span waits for its batch.
const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// Tries per batch before it is dropped.
const ATTEMPTS: u32 = 4;

/// What the layer keeps of a span while it is open.
#[derive(Debug, Clone)]
struct SpanData {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_span_id: Option<[u8; 8]>,
    sampled: bool,
    name: String,
    kind: u8,
    start_ns: u64,
    attributes: Vec<(String, Value)>,
    events: Vec<Value>,
    /// OTLP status code (1 ok, 2 error) and message.
    status: Option<(u8, String)>,
    /// Spans this one links to (`otel.links`): the messages a pipeline's page read.
    links: Vec<([u8; 16], [u8; 8])>,
}

/// Reads a span's fields: the `otel.*` conventions, the remote parent, and the attributes.
#[derive(Default)]
struct Fields {
    name: Option<String>,
    kind: Option<u8>,
    status: Option<u8>,
    status_message: Option<String>,
    traceparent: Option<String>,
    attributes: Vec<(String, Value)>,
    links: Vec<([u8; 16], [u8; 8])>,
    /// `fabrik.link_id`: the arrival id the rows of a message span's message are written
    /// with, said before the write (decision 0081); not an attribute.
    link_id: Option<u64>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        let text = || {
            value
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string())
        };
        match field.name() {
            "otel.name" => self.name = Some(text()),
            "otel.kind" => {
                self.kind = Some(match text().as_str() {
                    "server" => 2,
                    "client" => 3,
                    "producer" => 4,
                    "consumer" => 5,
                    _ => 1,
                });
            }
            "otel.status_code" => {
                self.status = Some(if text().eq_ignore_ascii_case("error") {
                    2
                } else {
                    1
                });
            }
            "otel.status_message" => self.status_message = Some(text()),
            "traceparent" => self.traceparent = Some(text()),
            // `<trace id>-<span id>` pairs in hex, comma-separated; all-zero ids are invalid.
            "otel.links" => {
                use fabrik_runtime::telemetry::unhex;
                let valid = |id: &[u8]| id.iter().any(|b| *b != 0);
                self.links.extend(text().split(',').filter_map(|link| {
                    let (trace, span) = link.trim().split_once('-')?;
                    let trace = unhex::<16>(trace.as_bytes()).filter(|t| valid(t))?;
                    let span = unhex::<8>(span.as_bytes()).filter(|s| valid(s))?;
                    Some((trace, span))
                }));
            }
            "fabrik.link_id" => self.link_id = value.as_u64(),
            name => self.attributes.push((name.to_owned(), value)),
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, json!(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, json!(value));
    }
}

impl SpanData {
    fn apply(&mut self, fields: Fields) {
        // A sampled message span's rows can be linked to by whoever reads them (decision
        // 0081); an unsampled one is never exported, so nothing could follow the link.
        if let Some(raw_id) = fields.link_id
            && self.sampled
        {
            fabrik_runtime::telemetry::remember_message_span(raw_id, self.trace_id, self.span_id);
        }
        self.links.extend(fields.links);
        if let Some(name) = fields.name {
            self.name = name;
        }
        if let Some(kind) = fields.kind {
            self.kind = kind;
        }
        if let Some(code) = fields.status {
            let message = fields.status_message.unwrap_or_default();
            self.status = Some((code, message));
        } else if let (Some(message), Some((_, old))) = (fields.status_message, &mut self.status) {
            *old = message;
        }
        for (key, value) in fields.attributes {
            match self.attributes.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => self.attributes.push((key, value)),
            }
        }
    }

    /// The span as OTLP/JSON (`Span` of opentelemetry-proto, JSON mapping: ids in hex).
    fn to_otlp(&self, end_ns: u64) -> Value {
        let mut span = json!({
            "traceId": hex(&self.trace_id),
            "spanId": hex(&self.span_id),
            "name": self.name,
            "kind": self.kind,
            "startTimeUnixNano": self.start_ns.to_string(),
            "endTimeUnixNano": end_ns.to_string(),
            "attributes": self.attributes.iter().map(|(k, v)| attribute(k, v)).collect::<Vec<_>>(),
            "events": self.events,
        });
        if let Some(parent) = self.parent_span_id {
            span["parentSpanId"] = json!(hex(&parent));
        }
        if let Some((code, message)) = &self.status {
            span["status"] = json!({ "code": code, "message": message });
        }
        if !self.links.is_empty() {
            span["links"] = self
                .links
                .iter()
                .map(|(trace, span)| json!({ "traceId": hex(trace), "spanId": hex(span) }))
                .collect();
        }
        span
    }
}

/// An OTLP `KeyValue`.
fn attribute(key: &str, value: &Value) -> Value {
    let any = match value {
        Value::Bool(b) => json!({ "boolValue": b }),
        // OTLP's integers are int64: a larger unsigned one (a counter) goes as a double,
        // the same in both encodings.
        Value::Number(n) if n.is_i64() => json!({ "intValue": n.to_string() }),
        Value::Number(n) => json!({ "doubleValue": n.as_f64() }),
        Value::String(s) => json!({ "stringValue": s }),
        other => json!({ "stringValue": other.to_string() }),
    };
    json!({ "key": key, "value": any })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of a span's `otel.links` field naming `spans`.
pub(crate) fn links_field(spans: &[([u8; 16], [u8; 8])]) -> String {
    spans
        .iter()
        .map(|(trace, span)| format!("{}-{}", hex(trace), hex(span)))
        .collect::<Vec<_>>()
        .join(",")
}

/// The W3C `traceparent` of the current span, for a request Fabrik makes as part of it (a
/// webhook): its trace, itself as the parent, and whether it is sampled; `None` outside the
/// spans the layer keeps.
pub(crate) fn current_traceparent() -> Option<String> {
    tracing::Span::current()
        .with_subscriber(|(id, dispatch)| {
            let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
            // The innermost span the layer keeps: one it filters out (another target) may be
            // entered inside a traced one.
            registry.span(id)?.scope().find_map(|span| {
                let extensions = span.extensions();
                let data = extensions.get::<SpanData>()?;
                let flags = if data.sampled { "01" } else { "00" };
                Some(format!(
                    "00-{}-{}-{flags}",
                    hex(&data.trace_id),
                    hex(&data.span_id)
                ))
            })
        })
        .flatten()
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // The OS's randomness; a failure leaves a non-zero fallback from the clock so ids stay
    // valid.
    if getrandom::fill(&mut out).is_err() || out.iter().all(|b| *b == 0) {
        let clock = now_ns().to_le_bytes();
        for (i, b) in out.iter_mut().enumerate() {
            *b = clock[i % 8] ^ (i as u8).wrapping_add(1);
        }
    }
    out
}

/// The target of Fabrik's spans: the log's filter turns it off (its lines stay free of span
/// prefixes, and with traces off no span is created), the trace layer takes it.
pub(crate) const SPAN_TARGET: &str = fabrik_runtime::telemetry::SPAN_TARGET;

/// Finished spans (OTLP/JSON) on their way to the exporter.
pub(crate) type SpanQueue = mpsc::Receiver<Value>;

/// The layer: keeps open spans' data in the registry's extensions and queues finished, sampled
/// ones for the exporter.
pub(crate) struct OtlpLayer {
    queue: mpsc::Sender<Value>,
    /// Share of root spans kept, 0 to 1.
    ratio: f64,
}

impl OtlpLayer {
    /// A layer and the receiving end of its queue, for [`export`].
    pub(crate) fn new(ratio: f64) -> (Self, SpanQueue) {
        let (queue, spans) = mpsc::channel(QUEUE);
        (Self { queue, ratio }, spans)
    }

    fn keep_root(&self) -> bool {
        if self.ratio >= 1.0 {
            return true;
        }
        let draw = u64::from_le_bytes(random::<8>()) as f64 / u64::MAX as f64;
        draw < self.ratio
    }
}

impl<S> tracing_subscriber::Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let local_parent = span.parent().and_then(|p| {
            p.extensions()
                .get::<SpanData>()
                .map(|d| (d.trace_id, d.span_id, d.sampled))
        });
        let (trace_id, parent_span_id, sampled) = match local_parent {
            Some((trace, parent, sampled)) => (trace, Some(parent), sampled),
            None => match fields.traceparent.as_deref().and_then(parse_traceparent) {
                Some((trace, parent, sampled)) => (trace, Some(parent), sampled),
                // A root that links to sampled spans (a pipeline's page of traced messages'
                // rows) is kept: the traces it links to were kept by their publishers.
                None => (
                    random::<16>(),
                    None,
                    !fields.links.is_empty() || self.keep_root(),
                ),
            },
        };
        let mut data = SpanData {
            trace_id,
            span_id: random::<8>(),
            parent_span_id,
            sampled,
            name: attrs.metadata().name().to_owned(),
            kind: 1,
            start_ns: now_ns(),
            attributes: Vec::new(),
            events: Vec::new(),
            status: None,
            links: Vec::new(),
        };
        data.apply(fields);
        span.extensions_mut().insert(data);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut fields = Fields::default();
        values.record(&mut fields);
        if let Some(data) = span.extensions_mut().get_mut::<SpanData>() {
            data.apply(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut message = String::new();
        let mut attributes = vec![attribute("level", &json!(level.as_str()))];
        for (key, value) in fields.attributes {
            if key == "message" {
                message = value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned);
            } else {
                attributes.push(attribute(&key, &value));
            }
        }
        if let Some(data) = span.extensions_mut().get_mut::<SpanData>() {
            if level == Level::ERROR && data.status.is_none() {
                data.status = Some((2, message.clone()));
            }
            data.events.push(json!({
                "timeUnixNano": now_ns().to_string(),
                "name": message,
                "attributes": attributes,
            }));
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let Some(data) = span.extensions_mut().remove::<SpanData>() else {
            return;
        };
        if !data.sampled {
            return;
        }
        // A full queue is known before the span is encoded: the span that would be dropped
        // costs the thread that ends it nothing more.
        if self.queue.capacity() == 0 || self.queue.try_send(data.to_otlp(now_ns())).is_err() {
            metrics::counter!("fabrik_trace_spans_dropped_total", "reason" => "queue_full")
                .increment(1);
        }
    }
}

/// Where and as what the spans go.
#[derive(Debug, Clone)]
pub(crate) struct Exporter {
    /// The collector's traces URL (`…/v1/traces`).
    pub(crate) url: String,
    /// `service.name`.
    pub(crate) service: String,
    /// `service.instance.id`: the node's name.
    pub(crate) instance: String,
    /// OTLP/HTTP with protobuf or JSON, or OTLP/gRPC.
    pub(crate) protocol: OtlpProtocol,
    /// Each batch gzip-compressed: the HTTP body (`Content-Encoding: gzip`), or the gRPC
    /// message (its compressed flag and `grpc-encoding: gzip`).
    pub(crate) gzip: bool,
}

impl Exporter {
    /// One `ExportTraceServiceRequest` holding `spans`.
    fn request(&self, spans: Vec<Value>) -> Value {
        let resource = [
            ("service.name", self.service.as_str()),
            ("service.instance.id", self.instance.as_str()),
            ("service.version", env!("CARGO_PKG_VERSION")),
        ];
        json!({
            "resourceSpans": [{
                "resource": {
                    "attributes": resource
                        .iter()
                        .map(|(k, v)| attribute(k, &json!(v)))
                        .collect::<Vec<_>>(),
                },
                "scopeSpans": [{
                    "scope": { "name": "fabrik", "version": env!("CARGO_PKG_VERSION") },
                    "spans": spans,
                }],
            }],
        })
    }
}

/// Sends queued spans in batches until `stop`, then what is left. A batch the collector does
/// not take after [`ATTEMPTS`] tries (with backoff) is dropped and counted: traces are for
/// looking into the system, not data to keep at any cost.
pub(crate) async fn export(exporter: Exporter, mut spans: SpanQueue, stop: CancellationToken) {
    let mut client = match client_for(&exporter) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "No HTTP client for the trace exporter; traces are off.");
            return;
        }
    };
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let deadline = tokio::time::sleep(FLUSH_EVERY);
        tokio::pin!(deadline);
        let stopping = loop {
            tokio::select! {
                () = stop.cancelled() => break true,
                () = &mut deadline => break false,
                received = spans.recv() => match received {
                    Some(span) => {
                        batch.push(span);
                        if batch.len() >= BATCH {
                            break false;
                        }
                    }
                    None => break true,
                },
            }
        };
        if stopping {
            while let Ok(span) = spans.try_recv() {
                batch.push(span);
            }
        }
        for chunk in batch.chunks(BATCH) {
            send(&mut client, &exporter, chunk.to_vec(), !stopping).await;
        }
        batch.clear();
        if stopping {
            return;
        }
    }
}

/// The exporter's HTTP client. gRPC is HTTP/2 only, so it is spoken from the first byte:
/// without an upgrade to a cleartext endpoint (h2c, as every gRPC client does), and over TLS
/// offering only `h2` (a server or balancer that would pick HTTP/1.1 fails the handshake
/// plainly rather than garble the call).
fn client_for(exporter: &Exporter) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if exporter.protocol == OtlpProtocol::Grpc {
        builder = builder.http2_prior_knowledge();
    }
    builder.build()
}

async fn send(client: &mut reqwest::Client, exporter: &Exporter, spans: Vec<Value>, retry: bool) {
    use prost::Message as _;
    let count = spans.len() as u64;
    let request = exporter.request(spans);
    let ((body, gzipped), content_type) = match exporter.protocol {
        OtlpProtocol::HttpJson => (
            compressed(request.to_string().into_bytes(), exporter.gzip),
            "application/json",
        ),
        protocol => match crate::otlp_proto::request_from_json(&request) {
            Ok(message) if protocol == OtlpProtocol::Grpc => {
                let (message, gzipped) = compressed(message.encode_to_vec(), exporter.gzip);
                ((grpc_frame(&message, gzipped), gzipped), "application/grpc")
            }
            Ok(message) => (
                compressed(message.encode_to_vec(), exporter.gzip),
                "application/x-protobuf",
            ),
            Err(e) => {
                tracing::warn!(error = %e, "A batch of spans could not be encoded; it is dropped.");
                metrics::counter!("fabrik_trace_spans_dropped_total", "reason" => "unencodable")
                    .increment(count);
                return;
            }
        },
    };
    let mut wait = Duration::from_millis(500);
    let attempts = if retry { ATTEMPTS } else { 1 };
    for attempt in 1..=attempts {
        let mut post = client
            .post(&exporter.url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body.clone());
        if exporter.protocol == OtlpProtocol::Grpc {
            post = post.header(reqwest::header::TE, "trailers");
            if gzipped {
                post = post.header("grpc-encoding", "gzip");
            }
        } else if gzipped {
            post = post.header(reqwest::header::CONTENT_ENCODING, "gzip");
        }
        let outcome = post.send().await;
        let retryable = match outcome {
            Ok(response) if exporter.protocol == OtlpProtocol::Grpc => {
                match grpc_outcome(response).await {
                    Ok(answer) => {
                        took(exporter, count, &answer);
                        return;
                    }
                    Err((status, retryable)) => {
                        tracing::warn!(url = %exporter.url, %status, attempt, "The trace collector refused a batch of spans.");
                        retryable
                    }
                }
            }
            Ok(response) if response.status().is_success() => {
                // The answer only matters for a partial success; one that cannot be read
                // counts as a whole one.
                let answer = bounded_answer(response).await;
                took(exporter, count, &answer);
                return;
            }
            Ok(response) => {
                let status = response.status();
                tracing::warn!(url = %exporter.url, %status, attempt, "The trace collector refused a batch of spans.");
                status.as_u16() == 429 || status.is_server_error()
            }
            Err(e) => {
                tracing::warn!(url = %exporter.url, error = %e, attempt, "Could not send spans to the trace collector.");
                // Over HTTP/2 every call shares one connection, which a timeout leaves in the
                // pool: a collector gone without closing it would take every later call down
                // with it until the kernel gives up. A new client opens a new connection.
                if exporter.protocol == OtlpProtocol::Grpc
                    && let Ok(fresh) = client_for(exporter)
                {
                    *client = fresh;
                }
                true
            }
        };
        if !retryable || attempt == attempts {
            break;
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
    metrics::counter!("fabrik_trace_spans_dropped_total", "reason" => "export_failed")
        .increment(count);
}

/// Counts a batch the collector took, less the spans its answer says it rejected (OTLP's
/// partial success, which the collector explains in its message).
fn took(exporter: &Exporter, count: u64, answer: &[u8]) {
    let (rejected, message) = partial_success(exporter.protocol, answer);
    let rejected = rejected.min(count);
    if rejected > 0 {
        tracing::warn!(url = %exporter.url, rejected, message = %message, "The trace collector rejected part of a batch of spans.");
        metrics::counter!("fabrik_trace_spans_dropped_total", "reason" => "rejected")
            .increment(rejected);
    } else if !message.is_empty() {
        tracing::warn!(url = %exporter.url, message = %message, "The trace collector took a batch of spans with a warning.");
    }
    metrics::counter!("fabrik_trace_spans_exported_total").increment(count - rejected);
}

/// The spans an export's answer says were rejected, and the collector's message: from an
/// `ExportTraceServiceResponse` in protobuf (over gRPC, the message [`grpc_outcome`] took
/// out of its frame) or in OTLP/JSON. An empty or unreadable answer is a full success.
fn partial_success(protocol: OtlpProtocol, answer: &[u8]) -> (u64, String) {
    use prost::Message as _;
    match protocol {
        OtlpProtocol::HttpJson => {
            let Ok(json) = serde_json::from_slice::<Value>(answer) else {
                return (0, String::new());
            };
            let partial = &json["partialSuccess"];
            // int64 is a string in protobuf's JSON mapping; a number is taken too.
            let rejected = match &partial["rejectedSpans"] {
                Value::String(text) => text.parse().unwrap_or(0),
                other => other.as_u64().unwrap_or(0),
            };
            let message = partial["errorMessage"].as_str().unwrap_or_default();
            (rejected, message.to_owned())
        }
        OtlpProtocol::HttpProtobuf | OtlpProtocol::Grpc => {
            match crate::otlp_proto::ExportTraceServiceResponse::decode(answer) {
                Ok(response) => response.partial_success.map_or((0, String::new()), |p| {
                    (
                        u64::try_from(p.rejected_spans).unwrap_or(0),
                        p.error_message,
                    )
                }),
                Err(_) => (0, String::new()),
            }
        }
    }
}

/// An OTLP/HTTP answer's body, at most [`ANSWER_LIMIT`] of it (empty when larger or broken
/// off: the batch was taken, the answer only says how much of it).
async fn bounded_answer(response: reqwest::Response) -> Vec<u8> {
    use http_body_util::BodyExt as _;
    let response: http::Response<reqwest::Body> = response.into();
    match http_body_util::Limited::new(response.into_body(), ANSWER_LIMIT)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    }
}

/// `bytes` gzip-compressed when `gzip` (the fast level: spans compress well, and the edge's
/// CPU is for the data), and whether they are.
fn compressed(bytes: Vec<u8>, gzip: bool) -> (Vec<u8>, bool) {
    use std::io::Write as _;
    if !gzip {
        return (bytes, false);
    }
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4),
        flate2::Compression::fast(),
    );
    // Writing to a Vec does not fail; if it did, the batch goes uncompressed and says so.
    match encoder.write_all(&bytes).and_then(|()| encoder.finish()) {
        Ok(gzipped) => (gzipped, true),
        Err(_) => (bytes, false),
    }
}

/// The message of a gRPC answer's body (one frame): as sent, or inflated when its flag says
/// it is compressed and the call's `grpc-encoding` is gzip (grpc-go answers in the
/// request's encoding). Empty when the body is not one well-formed frame.
fn grpc_message(body: &[u8], encoding: Option<&str>) -> Vec<u8> {
    use std::io::Read as _;
    let Some((&[flag, a, b, c, d], rest)) = body.split_first_chunk::<5>() else {
        return Vec::new();
    };
    let length = u32::from_be_bytes([a, b, c, d]) as usize;
    if rest.len() != length {
        return Vec::new();
    }
    match (flag, encoding) {
        (0, _) => rest.to_vec(),
        (1, Some("gzip")) => {
            let mut message = Vec::new();
            let inflated = flate2::read::GzDecoder::new(rest)
                .take(ANSWER_LIMIT as u64)
                .read_to_end(&mut message);
            if inflated.is_ok() {
                message
            } else {
                Vec::new()
            }
        }
        _ => Vec::new(),
    }
}

/// A gRPC message as it travels in an HTTP/2 body: whether it is compressed (with the call's
/// `grpc-encoding`), its length (4 bytes, big-endian), then the message.
fn grpc_frame(message: &[u8], compressed: bool) -> Vec<u8> {
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(u8::from(compressed));
    frame.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    frame.extend_from_slice(message);
    frame
}

/// gRPC status codes OTLP says to retry (transient faults): CANCELLED, DEADLINE_EXCEEDED,
/// ABORTED, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS. RESOURCE_EXHAUSTED is retried only when
/// the server says when (RetryInfo), which is not read: a batch too large would fail again.
const GRPC_RETRYABLE: [u32; 6] = [1, 4, 10, 11, 14, 15];

/// The most of an answer's body read (or inflated): an ExportTraceServiceResponse is a few
/// bytes.
const ANSWER_LIMIT: usize = 64 * 1024;

/// Whether a gRPC call succeeded: HTTP 200 and `grpc-status` 0, which a server sends in the
/// trailers after the answer, or in the headers of an answer without a body (how errors are
/// usually sent), with the answer's message (see [`grpc_message`]). Otherwise the status to
/// report (with `grpc-message`) and whether to retry.
async fn grpc_outcome(response: reqwest::Response) -> Result<Vec<u8>, (String, bool)> {
    use http_body_util::BodyExt as _;
    let http_status = response.status();
    let response: http::Response<reqwest::Body> = response.into();
    let (parts, body) = response.into_parts();
    if http_status != reqwest::StatusCode::OK {
        // gRPC over HTTP/2: only these mean UNAVAILABLE; other statuses are UNKNOWN.
        let retryable = matches!(http_status.as_u16(), 429 | 502 | 503 | 504);
        return Err((format!("HTTP {http_status}"), retryable));
    }
    let (trailers, answer) = if parts.headers.contains_key("grpc-status") {
        (None, Vec::new())
    } else {
        match http_body_util::Limited::new(body, ANSWER_LIMIT)
            .collect()
            .await
        {
            Ok(collected) => {
                let trailers = collected.trailers().cloned();
                let encoding = parts
                    .headers
                    .get("grpc-encoding")
                    .and_then(|v| v.to_str().ok());
                (trailers, grpc_message(&collected.to_bytes(), encoding))
            }
            // Its status is past the limit, unread: sent again, the batch could arrive twice.
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err((format!("an answer over {ANSWER_LIMIT} bytes"), false));
            }
            Err(e) => return Err((format!("the answer broke off: {e}"), true)),
        }
    };
    let fields = trailers.as_ref().unwrap_or(&parts.headers);
    let code = fields
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok());
    match code {
        Some(0) => Ok(answer),
        Some(code) => {
            let message = fields
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .map(percent_decoded)
                .unwrap_or_default();
            Err((
                format!("gRPC status {code} {message}")
                    .trim_end()
                    .to_owned(),
                GRPC_RETRYABLE.contains(&code),
            ))
        }
        // UNKNOWN, as gRPC reads it: not retried.
        None => Err(("an answer without a gRPC status".to_owned(), false)),
    }
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2, "Responses").
fn percent_decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    #[test]
    fn a_grpc_message_is_framed_with_its_length() {
        let frame = grpc_frame(&[7; 300], false);
        assert_eq!(
            &frame[..5],
            &[0, 0, 0, 1, 44],
            "not compressed, 300 bytes big-endian"
        );
        assert_eq!(frame.len(), 305);
        let (gzipped, yes) = compressed(vec![7; 300], true);
        assert!(yes);
        assert_eq!(grpc_frame(&gzipped, true)[0], 1, "compressed");
        assert_eq!(
            grpc_message(&grpc_frame(&gzipped, true), Some("gzip")),
            vec![7; 300],
            "a compressed answer is inflated"
        );
        assert_eq!(grpc_message(&grpc_frame(&[1, 2], false), None), vec![1, 2]);
        let mut two = grpc_frame(&[1, 2], false);
        two.extend(grpc_frame(&[3], false));
        assert!(grpc_message(&two, None).is_empty(), "one frame only");
        assert!(grpc_message(&two[..6], None).is_empty(), "cut short");
        assert!(
            grpc_message(&grpc_frame(&gzipped, true), None).is_empty(),
            "compressed without an encoding"
        );
        let mut plain = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(gzipped.as_slice()),
            &mut plain,
        )
        .expect("gunzip");
        assert_eq!(plain, vec![7; 300]);
        assert_eq!(percent_decoded("no%20spans%3a%2"), "no spans:%2");
    }

    #[test]
    fn a_partial_success_is_read_in_each_encoding() {
        use prost::Message as _;
        let message = crate::otlp_proto::ExportTraceServiceResponse {
            partial_success: Some(crate::otlp_proto::ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        let expected = (3, "too old".to_owned());
        assert_eq!(
            partial_success(OtlpProtocol::HttpProtobuf, &message),
            expected
        );
        assert_eq!(partial_success(OtlpProtocol::Grpc, &message), expected);
        let json = br#"{"partialSuccess": {"rejectedSpans": "3", "errorMessage": "too old"}}"#;
        assert_eq!(partial_success(OtlpProtocol::HttpJson, json), expected);
        for empty in [&b""[..], b"{}", b"not json"] {
            assert_eq!(
                partial_success(OtlpProtocol::HttpJson, empty),
                (0, String::new())
            );
        }
        assert_eq!(
            partial_success(OtlpProtocol::Grpc, &[]),
            (0, String::new()),
            "a trailers-only success"
        );
    }

    #[tokio::test]
    async fn grpc_statuses_decide_between_success_retry_and_drop() {
        let answer = |status: u16, headers: &[(&str, &str)]| {
            let mut builder = http::Response::builder().status(status);
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            reqwest::Response::from(builder.body(Vec::<u8>::new()).expect("response"))
        };
        assert_eq!(
            grpc_outcome(answer(200, &[("grpc-status", "0")])).await,
            Ok(Vec::new())
        );
        assert_eq!(
            grpc_outcome(answer(
                200,
                &[("grpc-status", "14"), ("grpc-message", "warming%20up")]
            ))
            .await,
            Err(("gRPC status 14 warming up".to_owned(), true))
        );
        assert_eq!(
            grpc_outcome(answer(200, &[("grpc-status", "3")])).await,
            Err(("gRPC status 3".to_owned(), false)),
            "INVALID_ARGUMENT: the same batch would be refused again"
        );
        assert_eq!(
            grpc_outcome(answer(200, &[])).await,
            Err(("an answer without a gRPC status".to_owned(), false))
        );
        assert_eq!(
            grpc_outcome(answer(503, &[]))
                .await
                .map_err(|(_, retry)| retry),
            Err(true)
        );
        assert_eq!(
            grpc_outcome(answer(500, &[]))
                .await
                .map_err(|(_, retry)| retry),
            Err(false),
            "UNKNOWN"
        );
        assert_eq!(
            grpc_outcome(answer(200, &[("grpc-status", "8")]))
                .await
                .map_err(|(_, retry)| retry),
            Err(false),
            "RESOURCE_EXHAUSTED without RetryInfo"
        );
    }

    /// Runs `work` under a subscriber with the layer and returns the spans it queued.
    fn spans_of(ratio: f64, work: impl FnOnce()) -> Vec<Value> {
        let (layer, mut queue) = OtlpLayer::new(ratio);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, work);
        let mut spans = Vec::new();
        while let Ok(span) = queue.try_recv() {
            spans.push(span);
        }
        spans
    }

    #[test]
    fn children_share_the_trace_and_name_their_parent() {
        let spans = spans_of(1.0, || {
            let outer = tracing::info_span!(
                "http.request",
                otel.name = "GET /api/v1/query",
                otel.kind = "server",
                traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                http.response.status_code = tracing::field::Empty,
            );
            let _in_outer = outer.enter();
            {
                let inner = tracing::info_span!("store.query", rows = 3_u64);
                let _in_inner = inner.enter();
                tracing::error!(table = "pump", "the scan failed");
            }
            outer.record("http.response.status_code", 500_u64);
        });
        assert_eq!(spans.len(), 2, "{spans:?}");
        let (inner, outer) = (&spans[0], &spans[1]);
        assert_eq!(outer["name"], "GET /api/v1/query");
        assert_eq!(outer["kind"], 2);
        assert_eq!(outer["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(outer["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(
            outer["attributes"][0],
            json!({"key": "http.response.status_code", "value": {"intValue": "500"}})
        );
        assert_eq!(inner["traceId"], outer["traceId"]);
        assert_eq!(inner["parentSpanId"], outer["spanId"]);
        assert_eq!(inner["status"]["code"], 2);
        assert_eq!(inner["events"][0]["name"], "the scan failed");
        assert!(outer.get("status").is_none(), "{outer}");
    }

    /// A sampled message span is found by the arrival id its rows are written with (not an
    /// unsampled one), a span given it as `otel.links` links to it, malformed or all-zero ids
    /// are left out, and a root span with links is kept whatever the sampling ratio.
    #[test]
    fn a_span_links_to_the_message_span_of_the_rows_it_read() {
        let (raw_id, unsampled_id) = (u64::MAX - 78, u64::MAX - 77);
        let spans = spans_of(0.0, || {
            let message = tracing::info_span!(
                "mqtt.message",
                traceparent = "00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-01",
                fabrik.link_id = tracing::field::Empty,
            );
            message.record("fabrik.link_id", raw_id);
            drop(message);
            let unsampled = tracing::info_span!(
                "mqtt.message",
                traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
                fabrik.link_id = tracing::field::Empty,
            );
            unsampled.record("fabrik.link_id", unsampled_id);
            drop(unsampled);
            let linked = fabrik_runtime::telemetry::message_spans_of([raw_id, unsampled_id, 1], 32);
            assert_eq!(linked.len(), 1, "only the sampled message: {linked:?}");
            let links = format!(
                "{},00000000000000000000000000000000-0000000000000000,zz",
                links_field(&linked)
            );
            // A root span: at ratio 0 it is kept only because it links.
            drop(tracing::info_span!(
                "pipeline.step",
                otel.links = links.as_str()
            ));
            drop(tracing::info_span!("pipeline.step"));
        });
        assert_eq!(
            spans.len(),
            2,
            "the message and the linking page: {spans:?}"
        );
        let (message, page) = (&spans[0], &spans[1]);
        assert_eq!(
            page["links"],
            json!([{ "traceId": message["traceId"], "spanId": message["spanId"] }])
        );
        assert_eq!(message["traceId"], "5b8efff798038103d269b633813fc60c");
        assert!(message.get("links").is_none(), "{message}");
        assert!(
            message["attributes"]
                .as_array()
                .is_some_and(|a| a.iter().all(|kv| kv["key"] != "fabrik.link_id")),
            "the link id is not an attribute: {message}"
        );
    }

    #[test]
    fn a_request_made_inside_a_span_carries_its_traceparent() {
        let mut sent = None;
        let spans = spans_of(1.0, || {
            assert_eq!(current_traceparent(), None, "outside any span");
            let _delivery = tracing::info_span!("alert.deliver").entered();
            sent = current_traceparent();
        });
        let span = &spans[0];
        let expected = format!(
            "00-{}-{}-01",
            span["traceId"].as_str().unwrap(),
            span["spanId"].as_str().unwrap()
        );
        assert_eq!(sent, Some(expected));
        // A span the sampler dropped says so: the receiver need not keep its part either.
        let mut sent = None;
        let spans = spans_of(0.0, || {
            let _delivery = tracing::info_span!("alert.deliver").entered();
            sent = current_traceparent();
        });
        assert!(spans.is_empty());
        let sent = sent.expect("a traceparent");
        assert!(sent.starts_with("00-") && sent.ends_with("-00"), "{sent}");
        assert_eq!(
            parse_traceparent(&sent).map(|(_, _, sampled)| sampled),
            Some(false)
        );
        // A span the layer filters out, entered inside a traced one: the traced one is named.
        use tracing_subscriber::Layer as _;
        let (layer, mut queue) = OtlpLayer::new(1.0);
        let kept =
            tracing_subscriber::filter::Targets::new().with_target("kept", tracing::Level::INFO);
        let subscriber = tracing_subscriber::registry().with(layer.with_filter(kept));
        let mut sent = None;
        tracing::subscriber::with_default(subscriber, || {
            let _delivery = tracing::info_span!(target: "kept", "alert.deliver").entered();
            let _inner = tracing::info_span!(target: "other", "http.client").entered();
            sent = current_traceparent();
        });
        let span = queue.try_recv().expect("the traced span");
        assert_eq!(
            sent,
            Some(format!(
                "00-{}-{}-01",
                span["traceId"].as_str().unwrap(),
                span["spanId"].as_str().unwrap()
            ))
        );
    }

    #[test]
    fn the_sampler_keeps_a_share_of_roots_and_follows_the_callers_choice() {
        let spans = spans_of(0.0, || {
            let _root = tracing::info_span!("pipeline.window").entered();
            let _child = tracing::info_span!("model.run").entered();
        });
        assert!(spans.is_empty(), "ratio 0 keeps no root: {spans:?}");
        let spans = spans_of(0.0, || {
            let _kept = tracing::info_span!(
                "http.request",
                traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            )
            .entered();
        });
        assert_eq!(spans.len(), 1, "a sampled caller's trace is kept");
        let spans = spans_of(1.0, || {
            let _dropped = tracing::info_span!(
                "http.request",
                traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
            )
            .entered();
        });
        assert!(spans.is_empty(), "an unsampled caller's trace is not");
        let spans = spans_of(0.5, || {
            for _ in 0..2000 {
                let _root = tracing::info_span!("pipeline.window").entered();
            }
        });
        assert!((800..1200).contains(&spans.len()), "{}", spans.len());
    }
}
