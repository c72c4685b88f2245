//! The hub side of the uplink (`[hub]`, decision 0030): a durable JetStream consumer whose
//! messages (Arrow IPC from edge WALs) are written into this store, a batch of messages per
//! WAL record, each acknowledged only once stored. `_source` becomes
//! `uplink:<node>/<the edge's source>`, so a row names the edge it came from and, with its
//! `_raw_id`, the raw message there. A message that cannot be stored (not Arrow, a column
//! of another type than the hub's) is a dead letter naming why; it is never retried forever
//! and never blocks the rest. Hubs that share the consumer name share the work.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use base64::Engine;
use fabrik_api::links::{HubStatus, LinkBoard};
use fabrik_connect::ingest::DEAD_LETTERS;
use fabrik_core::{Lineage, Point, Quality, SourceId, Timestamp, Value};
use fabrik_runtime::ServiceHandle;
use fabrik_runtime::config::Config;
use fabrik_store::Store;
use fabrik_store::arrow::array::{Array, ArrayRef, StringArray};
use fabrik_store::arrow::ipc::reader::StreamReader;
use fabrik_store::arrow::record_batch::RecordBatch;
use fabrik_store::schema;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::hub_lineage::HubLineage;
use crate::nats_link::{self, NatsLink};

/// Messages stored together in one write at most, and their bytes.
const BATCH: usize = 512;
const BATCH_BYTES: usize = 32 << 20;
/// How long JetStream waits for an acknowledgement before it delivers a message again: also
/// how long the messages a crashed hub had in hand wait for another. A batch refused as a
/// whole is written message by message, each with its fsync; that path tells JetStream it is
/// still working every `PROGRESS_EVERY`.
const ACK_WAIT: Duration = Duration::from_secs(15);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Problems of `[hub]`, as `hub.field`.
pub(crate) fn check(config: &Config) -> Vec<(String, String)> {
    let link = NatsLink::from(&config.hub);
    if !link.is_on() {
        return Vec::new();
    }
    let mut problems = link.check();
    if !nats_link::is_plain_name(&config.hub.consumer) {
        problems.push((
            "hub.consumer".into(),
            format!(
                "`{}`: use letters, digits, `-` and `_`",
                config.hub.consumer
            ),
        ));
    }
    match fabrik_runtime::units::parse_duration(&config.hub.max_age) {
        Ok(d) if d.is_zero() => {
            problems.push(("hub.max_age".into(), "must be greater than zero".into()))
        }
        Ok(_) => {}
        Err(e) => problems.push(("hub.max_age".into(), e)),
    }
    problems
}

/// A message turned into what the store takes.
struct Decoded {
    node: String,
    batches: Vec<(String, RecordBatch)>,
}

/// The edge node of a subject `<prefix>.<node>`.
fn node_of<'a>(subject: &'a str, prefix: &str) -> Option<&'a str> {
    subject
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'))
        .filter(|node| nats_link::is_plain_name(node))
}

/// Replaces `_source` with `uplink:<node>/<source>`.
fn stamp_source(batch: RecordBatch, node: &str) -> Result<RecordBatch, String> {
    let schema = batch.schema();
    let index = schema
        .index_of(schema::SOURCE)
        .map_err(|_| format!("column `{}` is missing", schema::SOURCE))?;
    let sources = batch
        .column(index)
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| format!("column `{}` is not text", schema::SOURCE))?;
    let stamped: StringArray = sources
        .iter()
        .map(|s| Some(format!("uplink:{node}/{}", s.unwrap_or(""))))
        .collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns[index] = Arc::new(stamped);
    RecordBatch::try_new(schema, columns).map_err(|e| e.to_string())
}

fn decode(message: &jetstream::Message, prefix: &str) -> Result<Decoded, (String, String)> {
    let node = node_of(&message.subject, prefix)
        .map(str::to_owned)
        .ok_or_else(|| {
            (
                "?".to_owned(),
                format!("subject `{}` does not name an edge node", message.subject),
            )
        })?;
    let fail = |reason: String| (node.clone(), reason);
    let table = message
        .headers
        .as_ref()
        .and_then(|h| h.get(nats_link::TABLE_HEADER))
        .map(|v| v.as_str().to_owned())
        .ok_or_else(|| fail(format!("no `{}` header", nats_link::TABLE_HEADER)))?;
    let reader = StreamReader::try_new(&message.payload[..], None)
        .map_err(|e| fail(format!("not an Arrow IPC stream: {e}")))?;
    let mut batches = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| fail(format!("Arrow IPC: {e}")))?;
        if batch.num_rows() > 0 {
            batches.push((table.clone(), stamp_source(batch, &node).map_err(fail)?));
        }
    }
    if batches.is_empty() {
        return Err(fail("the message holds no rows".into()));
    }
    if table == fabrik_core::blob::BLOBS_TABLE {
        return Err(fail(format!(
            "table `{table}` lists blobs that stay on the edge; it is not taken"
        )));
    }
    Ok(Decoded { node, batches })
}

/// A dead-letter row for a message the hub cannot store.
fn dead_letter(message: &jetstream::Message, node: &str, reason: &str) -> (Lineage, Vec<Point>) {
    let source = format!("uplink:{node}");
    let lineage = Lineage {
        source: SourceId(source.clone()),
        raw_id: fabrik_core::RawMessageId(0),
        mapping_version: 0,
    };
    let payload = base64::engine::general_purpose::STANDARD.encode(&message.payload);
    let point = Point {
        measurement: DEAD_LETTERS.to_owned(),
        tags: vec![("source".to_owned(), source)],
        fields: vec![
            ("topic".to_owned(), Value::Str(message.subject.to_string())),
            ("mapping".to_owned(), Value::Str("uplink".to_owned())),
            ("reason".to_owned(), Value::Str(reason.to_owned())),
            (
                "payload".to_owned(),
                Value::Str(format!("base64:{payload}")),
            ),
        ],
        time: Timestamp::now(),
        quality: Quality::Bad,
    };
    (lineage, vec![point])
}

/// What became of one message.
enum Outcome {
    Stored,
    DeadLettered,
    /// Not stored, for this reason: delivered again after a pause.
    Retry(String),
}

async fn settle(message: &jetstream::Message, outcome: Option<&Outcome>) {
    let result = match outcome {
        Some(Outcome::Stored | Outcome::DeadLettered) => message.ack().await,
        Some(Outcome::Retry(_)) | None => {
            message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await
        }
    };
    if let Err(e) = result {
        // Not acknowledged: JetStream delivers it again after ACK_WAIT, and writing it again
        // stores the same rows (last write wins per series and time).
        tracing::debug!(error = %e, "Hub: acknowledgement not sent.");
    }
}

async fn store_dead_letter(
    store: &Store,
    message: &jetstream::Message,
    node: &str,
    reason: &str,
) -> Outcome {
    tracing::warn!(subject = %message.subject, reason, "Hub: message stored as a dead letter.");
    match store
        .write_groups(&[dead_letter(message, node, reason)], "dead letter")
        .await
    {
        Ok(_) => {
            metrics::counter!("fabrik_hub_dead_letters_total").increment(1);
            Outcome::DeadLettered
        }
        Err(e) => {
            tracing::warn!(error = %e, "Hub: dead letter not stored; the message comes again.");
            Outcome::Retry(format!("dead letter not stored: {e}"))
        }
    }
}

/// Whether a refused write may succeed later (the disk, a stop), so the messages should
/// come again rather than become dead letters.
fn worth_retrying(e: &fabrik_store::StoreError) -> bool {
    matches!(e.http_status(), 503 | 507)
}

/// Stores a batch of messages: all in one write, or, when that is refused, one by one so a
/// bad message becomes a dead letter without holding back the others.
async fn store_messages(
    store: &Store,
    messages: &[jetstream::Message],
    prefix: &str,
    board: &LinkBoard,
    lineage: Option<&HubLineage>,
) {
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(messages.len());
    let mut decoded: Vec<Option<Decoded>> = Vec::with_capacity(messages.len());
    for message in messages {
        match decode(message, prefix) {
            Ok(d) => {
                decoded.push(Some(d));
                outcomes.push(None);
            }
            Err((node, reason)) => {
                decoded.push(None);
                outcomes.push(Some(
                    store_dead_letter(store, message, &node, &reason).await,
                ));
            }
        }
    }
    let together: Vec<(String, RecordBatch)> = decoded
        .iter()
        .flatten()
        .flat_map(|d| d.batches.iter().cloned())
        .collect();
    if !together.is_empty() {
        match store.write_arrow(together, "uplink message").await {
            Ok(_) => {
                for (outcome, d) in outcomes.iter_mut().zip(&decoded) {
                    if d.is_some() {
                        *outcome = Some(Outcome::Stored);
                    }
                }
            }
            Err(e) if worth_retrying(&e) => {
                tracing::warn!(error = %e, "Hub: not stored; the messages come again.");
                for (outcome, d) in outcomes.iter_mut().zip(&decoded) {
                    if d.is_some() {
                        *outcome = Some(Outcome::Retry(e.to_string()));
                    }
                }
            }
            // Some message spoils the write: each alone, so only that one is refused.
            Err(_) => {
                let mut progress_sent = std::time::Instant::now();
                for (i, ((outcome, d), message)) in
                    outcomes.iter_mut().zip(&decoded).zip(messages).enumerate()
                {
                    if progress_sent.elapsed() >= PROGRESS_EVERY {
                        progress_sent = std::time::Instant::now();
                        for waiting in &messages[i..] {
                            let _ = waiting.ack_with(AckKind::Progress).await;
                        }
                    }
                    let Some(d) = d else { continue };
                    *outcome = Some(
                        match store.write_arrow(d.batches.clone(), "uplink message").await {
                            Ok(_) => Outcome::Stored,
                            Err(e) if worth_retrying(&e) => {
                                tracing::warn!(error = %e, "Hub: not stored; the message comes again.");
                                Outcome::Retry(e.to_string())
                            }
                            Err(e) => {
                                store_dead_letter(store, message, &d.node, &e.to_string()).await
                            }
                        },
                    );
                }
            }
        }
    }
    metrics::counter!("fabrik_hub_messages_total").increment(messages.len() as u64);
    report(board, &decoded, &outcomes);
    if let Some(lineage) = lineage {
        let mut stored: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
        for (d, outcome) in decoded.iter().zip(&outcomes) {
            if let (Some(d), Some(Outcome::Stored)) = (d, outcome) {
                stored.entry(&d.node).or_default().extend(
                    d.batches
                        .iter()
                        .map(|(table, batch)| (table.as_str(), batch.num_rows() as u64)),
                );
            }
        }
        for (node, tables) in stored {
            lineage.stored(node, &tables);
        }
    }
    for (message, outcome) in messages.iter().zip(&outcomes) {
        settle(message, outcome.as_ref()).await;
    }
}

/// Counts a batch's outcomes on the status board, per edge node.
fn report(board: &LinkBoard, decoded: &[Option<Decoded>], outcomes: &[Option<Outcome>]) {
    let mut guard = board.write();
    let Some(status) = guard.hub.as_mut() else {
        return;
    };
    let now = crate::uplink::now_text();
    for (d, outcome) in decoded.iter().zip(outcomes) {
        match outcome {
            Some(Outcome::Stored) => {
                status.messages += 1;
                status.last_error = None;
                if let Some(d) = d {
                    let rows: u64 = d.batches.iter().map(|(_, b)| b.num_rows() as u64).sum();
                    metrics::counter!("fabrik_hub_rows_total").increment(rows);
                    status.rows += rows;
                    let node = status.nodes.entry(d.node.clone()).or_default();
                    node.messages += 1;
                    node.rows += rows;
                    node.last_message_at = Some(now.clone());
                }
            }
            Some(Outcome::DeadLettered) => {
                status.messages += 1;
                status.dead_letters += 1;
            }
            Some(Outcome::Retry(reason)) => status.last_error = Some(reason.clone()),
            None => {}
        }
    }
}

/// What the hub's consuming needs.
struct Hub {
    link: NatsLink,
    consumer: String,
    max_age: Duration,
    store: Arc<Store>,
    board: LinkBoard,
    /// The edges' uplinks as OpenLineage runs, if events go anywhere.
    lineage: Option<HubLineage>,
}

/// Makes sure of the stream and the durable consumer, and stores messages until stopped or
/// the link fails (then the caller tries again).
async fn consume(
    hub: &Hub,
    client: &async_nats::Client,
    js: &jetstream::Context,
    stop: &CancellationToken,
) -> Result<(), String> {
    let Hub {
        link,
        consumer: consumer_name,
        max_age,
        store,
        board,
        lineage,
    } = hub;
    let max_age = *max_age;
    let stream = js
        .get_or_create_stream(link.stream_config(max_age))
        .await
        .map_err(|e| format!("stream `{}`: {e}", link.stream))?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            consumer_name,
            jetstream::consumer::pull::Config {
                durable_name: Some(consumer_name.to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: 20_000,
                filter_subject: format!("{}.>", link.subject),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("consumer `{consumer_name}`: {e}"))?;
    if let Some(status) = board.write().hub.as_mut() {
        status.connected = true;
    }
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(BATCH)
        .messages()
        .await
        .map_err(|e| format!("consumer `{consumer_name}`: {e}"))?;
    tracing::info!(stream = %link.stream, consumer = consumer_name, "Hub consuming.");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {
                let connected =
                    client.connection_state() == async_nats::connection::State::Connected;
                if let Some(status) = board.write().hub.as_mut() {
                    status.connected = connected;
                }
                continue;
            }
            next = messages.next() => next,
        };
        let first = match first {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(format!("receiving: {e}")),
            None => return Err("the consumer's message stream ended".into()),
        };
        let mut bytes = first.payload.len();
        let mut batch = vec![first];
        // Whatever else has arrived goes into the same write.
        while batch.len() < BATCH && bytes < BATCH_BYTES {
            match messages.next().now_or_never() {
                Some(Some(Ok(m))) => {
                    bytes += m.payload.len();
                    batch.push(m);
                }
                _ => break,
            }
        }
        store_messages(store, &batch, &link.subject, board, lineage.as_ref()).await;
    }
}

/// Starts the hub when `[hub]` is configured (otherwise an idle module).
pub(crate) async fn start(
    config: &Config,
    store: Arc<Store>,
    board: LinkBoard,
    lineage: Option<crate::openlineage::Emitter>,
) -> Result<ServiceHandle, String> {
    let link = NatsLink::from(&config.hub);
    if !link.is_on() {
        return Ok(nats_link::idle_module());
    }
    let stop = CancellationToken::new();
    if let Some((path, message)) = check(config).first() {
        return Err(format!("{path}: {message}"));
    }
    let max_age = fabrik_runtime::units::parse_duration(&config.hub.max_age)?;
    let consumer = config.hub.consumer.clone();
    board.write().hub = Some(HubStatus {
        url: link.url.clone(),
        stream: link.stream.clone(),
        consumer: consumer.clone(),
        ..HubStatus::default()
    });
    let token = stop.clone();
    let hub = Hub {
        link,
        consumer,
        max_age,
        store,
        board,
        lineage: lineage.map(HubLineage::new),
    };
    let task = tokio::spawn(async move {
        let board = hub.board.clone();
        let on_connection = move |connected: bool| {
            if let Some(status) = board.write().hub.as_mut() {
                status.connected = connected;
            }
        };
        let client = tokio::select! {
            () = token.cancelled() => return Ok(()),
            client = hub.link.connect(format!("fabrik-hub-{}", hub.consumer), on_connection) => client?,
        };
        let js = jetstream::new(client.clone());
        let mut backoff = Duration::from_millis(200);
        let mut last_error: Option<String> = None;
        while !token.is_cancelled() {
            let started = std::time::Instant::now();
            match consume(&hub, &client, &js, &token).await {
                Ok(()) => break,
                Err(e) => {
                    // A link that worked for a while starts its backoff afresh.
                    if started.elapsed() > Duration::from_secs(10) {
                        backoff = Duration::from_millis(200);
                    }
                    if let Some(status) = hub.board.write().hub.as_mut() {
                        status.last_error = Some(e.clone());
                    }
                    if last_error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(error = %e, "Hub: NATS link down; trying again.");
                        last_error = Some(e);
                    }
                    tokio::select! {
                        () = token.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        if let Some(lineage) = &hub.lineage {
            lineage.ended();
        }
        Ok(())
    });
    Ok(ServiceHandle { stop, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_is_the_subject_token_after_the_prefix() {
        assert_eq!(
            node_of("fabrik.uplink.line-1", "fabrik.uplink"),
            Some("line-1")
        );
        assert_eq!(node_of("fabrik.uplink.a.b", "fabrik.uplink"), None);
        assert_eq!(node_of("fabrik.uplinkx", "fabrik.uplink"), None);
        assert_eq!(node_of("other.line-1", "fabrik.uplink"), None);
    }
}
