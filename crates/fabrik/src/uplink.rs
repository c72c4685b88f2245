//! The edge side of the uplink (`[uplink]`, decision 0030): every write this node stores is
//! read back from its WAL, in order, and published to the hub's JetStream stream, one
//! message per table and partition of the write (Arrow IPC, at most the server's payload
//! limit). The WAL is the store-and-forward queue: it keeps what JetStream has not
//! acknowledged (the store's WAL hold) across outages, `kill -9` and restarts, up to
//! `max_backlog`; the position acknowledged is in `<data_dir>/uplink/cursor.json`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use fabrik_api::links::{LinkBoard, UplinkStatus};
use fabrik_runtime::ServiceHandle;
use fabrik_runtime::config::Config;
use fabrik_store::Store;
use fabrik_store::arrow::ipc::writer::StreamWriter;
use fabrik_store::arrow::record_batch::RecordBatch;
use fabrik_store::wal::{self, FollowedRecord, WalFollower};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::nats_link::{self, NatsLink};

/// Payload read from the WAL per round (one record at least).
const READ_BYTES: usize = 4 << 20;
/// The cursor file is rewritten at most this often (and at stop): after a crash, at most
/// this much is sent again, and JetStream's duplicate window drops it.
const CURSOR_EVERY: Duration = Duration::from_secs(1);
/// Room left in a message for its headers.
const HEADER_ROOM: usize = 1024;

/// Problems of `[uplink]`, as `uplink.field`.
pub(crate) fn check(config: &Config) -> Vec<(String, String)> {
    let link = NatsLink::from(&config.uplink);
    if !link.is_on() {
        return Vec::new();
    }
    let mut problems = link.check();
    if !nats_link::is_plain_name(&config.uplink.node) {
        problems.push((
            "uplink.node".into(),
            format!(
                "`{}`: name this node with letters, digits, `-` and `_` (it is a subject token)",
                config.uplink.node
            ),
        ));
    }
    if let Err(e) = fabrik_runtime::units::parse_bytes(&config.uplink.max_backlog) {
        problems.push(("uplink.max_backlog".into(), e));
    }
    problems
}

/// The WAL hold the store must open with: with the uplink on, nothing is deleted before the
/// uplink has said where it stands.
pub(crate) fn initial_wal_hold(config: &Config) -> Option<u64> {
    NatsLink::from(&config.uplink).is_on().then_some(0)
}

/// What the hub has acknowledged.
#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    /// The last WAL sequence number whose messages JetStream acknowledged.
    acked_seq: u64,
}

fn cursor_path(data_dir: &Path) -> PathBuf {
    data_dir.join("uplink").join("cursor.json")
}

fn load_cursor(path: &Path) -> Result<Option<u64>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<Cursor>(&bytes)
            .map(|c| Some(c.acked_seq))
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// Temporary file, fsync, rename: a crash leaves the old cursor or the new one.
fn save_cursor(path: &Path, acked_seq: u64) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec(&Cursor { acked_seq })?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Which tables go up.
#[derive(Debug, Clone)]
struct TableFilter {
    only: BTreeSet<String>,
    exclude: BTreeSet<String>,
}

impl TableFilter {
    fn wants(&self, table: &str) -> bool {
        (self.only.is_empty() || self.only.contains(table)) && !self.exclude.contains(table)
    }
}

/// One message for JetStream.
#[derive(Debug)]
struct Outgoing {
    table: String,
    id: String,
    seq: u64,
    payload: Bytes,
    rows: usize,
}

fn ipc_bytes(batch: &RecordBatch) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, &batch.schema()).map_err(|e| e.to_string())?;
    writer.write(batch).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    drop(writer);
    Ok(out)
}

/// The messages of one WAL record: one per table and partition, halved until each fits the
/// server's payload limit. Ids are `<node>:<seq>:<chunk>:<part>`, stable across re-sends.
fn messages_of(
    record: &FollowedRecord,
    node: &str,
    filter: &TableFilter,
    max_payload: usize,
    out: &mut Vec<Outgoing>,
) -> Result<(), String> {
    let chunks =
        wal::decode(&record.payload).map_err(|e| format!("WAL record {}: {e}", record.seq))?;
    for (i, chunk) in chunks.into_iter().enumerate() {
        if !filter.wants(&chunk.table) {
            continue;
        }
        let mut parts = vec![chunk.batch];
        let mut part_no = 0usize;
        while let Some(batch) = parts.pop() {
            let payload = ipc_bytes(&batch)?;
            if payload.len() > max_payload {
                if batch.num_rows() < 2 {
                    return Err(format!(
                        "WAL record {}: one row of table `{}` takes {} bytes, more than the \
                         server's payload limit of {max_payload}",
                        record.seq,
                        chunk.table,
                        payload.len()
                    ));
                }
                let half = batch.num_rows() / 2;
                // Pushed in reverse so the rows go out in their order.
                parts.push(batch.slice(half, batch.num_rows() - half));
                parts.push(batch.slice(0, half));
                continue;
            }
            out.push(Outgoing {
                table: chunk.table.to_string(),
                id: format!("{node}:{}:{i}:{part_no}", record.seq),
                seq: record.seq,
                payload: Bytes::from(payload),
                rows: batch.num_rows(),
            });
            part_no += 1;
        }
    }
    Ok(())
}

/// Publishes every message and waits for JetStream to acknowledge each (stored in the
/// stream); the first failure fails the lot, which is then sent again whole.
async fn publish_all(
    js: &jetstream::Context,
    subject: &str,
    messages: &[Outgoing],
) -> Result<(), String> {
    let mut acks = Vec::with_capacity(messages.len());
    for m in messages {
        let publish = jetstream::message::PublishMessage::build()
            .payload(m.payload.clone())
            .message_id(&m.id)
            .header(nats_link::TABLE_HEADER, m.table.as_str())
            .header(nats_link::SEQ_HEADER, m.seq.to_string().as_str());
        let ack = js
            .send_publish(subject.to_owned(), publish)
            .await
            .map_err(|e| format!("publishing: {e}"))?;
        acks.push(ack);
    }
    for ack in acks {
        ack.await
            .map_err(|e| format!("waiting for JetStream: {e}"))?;
    }
    Ok(())
}

/// The oldest WAL position to keep so that the kept segments stay within `max_backlog`
/// (the newest segment is always kept); `None` when everything fits.
fn backlog_limit(wal_dir: &Path, max_backlog: u64) -> Option<u64> {
    let segments = wal::list_segments(wal_dir).ok()?;
    let mut kept = 0u64;
    for (i, (_, path)) in segments.iter().enumerate().rev() {
        kept += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if kept > max_backlog && i + 1 < segments.len() {
            // This segment and older ones go: keep from the next one on.
            return segments.get(i + 1).map(|(next, _)| next - 1);
        }
    }
    None
}

struct Uplink {
    store: Arc<Store>,
    link: NatsLink,
    node: String,
    subject: String,
    filter: TableFilter,
    max_backlog: u64,
    cursor_path: PathBuf,
    acked_seq: u64,
    cursor_saved: Instant,
    cursor_dirty: bool,
    board: LinkBoard,
}

/// Now, as the status shows times.
pub(crate) fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Uplink {
    fn report(&self, change: impl FnOnce(&mut UplinkStatus)) {
        if let Some(status) = self.board.write().uplink.as_mut() {
            change(status);
        }
    }

    fn acknowledged(&mut self, seq: u64) {
        self.acked_seq = seq;
        self.report(|s| s.acked_seq = seq);
        self.store.hold_wal(Some(seq));
        self.cursor_dirty = true;
        if self.cursor_saved.elapsed() >= CURSOR_EVERY {
            self.flush_cursor();
        }
    }

    fn flush_cursor(&mut self) {
        if !self.cursor_dirty {
            return;
        }
        match save_cursor(&self.cursor_path, self.acked_seq) {
            Ok(()) => {
                self.cursor_dirty = false;
                self.cursor_saved = Instant::now();
            }
            Err(e) => tracing::warn!(error = %e, "Uplink cursor not saved; it is tried again."),
        }
    }

    /// Gives up the oldest WAL beyond `max_backlog` (the hold moves past it; the next
    /// persistence deletes it and the follower counts what it missed).
    fn enforce_backlog(&self) {
        let Some(limit) = backlog_limit(self.store.wal_dir(), self.max_backlog) else {
            return;
        };
        if limit > self.acked_seq {
            tracing::warn!(
                acked_seq = self.acked_seq,
                given_up_to = limit,
                max_backlog = self.max_backlog,
                "The hub has been out of reach past uplink.max_backlog: the oldest WAL \
                 records will be deleted at the next persistence without reaching it."
            );
            self.store.hold_wal(Some(limit));
        }
    }

    async fn run(mut self, mut follower: WalFollower, stop: CancellationToken) {
        let client_name = format!("fabrik-uplink-{}", self.node);
        let client = tokio::select! {
            () = stop.cancelled() => return,
            client = self.link.connect(client_name) => client,
        };
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "Uplink cannot start.");
                return;
            }
        };
        let js = jetstream::new(client.clone());
        let mut applied = self.store.watch_applied();
        let mut pending: Vec<Outgoing> = Vec::new();
        let mut pending_last: Option<u64> = None;
        let mut backoff = Duration::from_millis(200);
        let mut stream_ready = false;
        let mut last_error: Option<String> = None;
        let mut backlog_checked = Instant::now();
        while !stop.is_cancelled() {
            if backlog_checked.elapsed() >= Duration::from_secs(5) {
                backlog_checked = Instant::now();
                self.enforce_backlog();
            }
            let behind = self.store.applied_seq().saturating_sub(self.acked_seq);
            metrics::gauge!("fabrik_uplink_backlog_records").set(behind as f64);
            let connected = client.connection_state() == async_nats::connection::State::Connected;
            self.report(|s| s.connected = connected);
            if !stream_ready {
                let config = self.link.stream_config(Duration::from_secs(7 * 86_400));
                match js.get_or_create_stream(config).await {
                    Ok(_) => stream_ready = true,
                    Err(e) => {
                        let message = format!("stream `{}`: {e}", self.link.stream);
                        self.failed(&mut last_error, message, &mut backoff, &stop)
                            .await;
                        continue;
                    }
                }
            }
            if pending_last.is_none() {
                let up_to = self.store.applied_seq();
                let read = {
                    let mut f = follower;
                    let handle = tokio::task::spawn_blocking(move || {
                        let r = f.read(up_to, READ_BYTES);
                        (f, r)
                    });
                    match handle.await {
                        Ok((f, r)) => {
                            follower = f;
                            r
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "Uplink WAL reader failed; stopping.");
                            return;
                        }
                    }
                };
                let read = match read {
                    Ok(read) => read,
                    Err(e) => {
                        tracing::error!(error = %e, "Uplink cannot read the WAL; stopping.");
                        return;
                    }
                };
                if read.skipped > 0 {
                    metrics::counter!("fabrik_uplink_skipped_records_total")
                        .increment(read.skipped);
                    self.report(|s| s.skipped_records += read.skipped);
                    tracing::error!(
                        records = read.skipped,
                        "WAL records were deleted before the hub acknowledged them \
                         (uplink.max_backlog): their rows will not reach the hub."
                    );
                }
                if read.records.is_empty() {
                    if read.skipped > 0 {
                        self.acknowledged(follower.position());
                    }
                    self.flush_cursor();
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = applied.changed() => {}
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
                let max_payload = client
                    .server_info()
                    .max_payload
                    .saturating_sub(HEADER_ROOM)
                    .max(HEADER_ROOM);
                pending.clear();
                for record in &read.records {
                    if let Err(e) =
                        messages_of(record, &self.node, &self.filter, max_payload, &mut pending)
                    {
                        // A record that can never be sent must not stop the rest for good.
                        metrics::counter!("fabrik_uplink_unsendable_records_total").increment(1);
                        tracing::error!(error = %e, "WAL record not sent to the hub.");
                    }
                }
                pending_last = read.records.last().map(|r| r.seq);
            }
            let Some(last) = pending_last else { continue };
            let sent = tokio::select! {
                () = stop.cancelled() => break,
                sent = publish_all(&js, &self.subject, &pending) => sent,
            };
            match sent {
                Ok(()) => {
                    let rows: usize = pending.iter().map(|m| m.rows).sum();
                    let bytes: usize = pending.iter().map(|m| m.payload.len()).sum();
                    metrics::counter!("fabrik_uplink_messages_total")
                        .increment(pending.len() as u64);
                    metrics::counter!("fabrik_uplink_rows_total").increment(rows as u64);
                    metrics::counter!("fabrik_uplink_bytes_total").increment(bytes as u64);
                    if last_error.take().is_some() {
                        tracing::info!(acked_seq = last, "Uplink: the hub acknowledges again.");
                    }
                    backoff = Duration::from_millis(200);
                    let messages = pending.len() as u64;
                    self.report(|s| {
                        s.messages_sent += messages;
                        s.rows_sent += rows as u64;
                        s.last_ack_at = Some(now_text());
                        s.last_error = None;
                    });
                    pending.clear();
                    pending_last = None;
                    self.acknowledged(last);
                }
                Err(e) => {
                    metrics::counter!("fabrik_uplink_publish_errors_total").increment(1);
                    // The stream may be gone (deleted on the hub): check it before re-sending.
                    stream_ready = false;
                    self.failed(&mut last_error, e, &mut backoff, &stop).await;
                }
            }
        }
        self.flush_cursor();
        client.flush().await.ok();
    }

    /// Logs a failure once per distinct message, then waits (doubling up to 10 s).
    async fn failed(
        &mut self,
        last_error: &mut Option<String>,
        message: String,
        backoff: &mut Duration,
        stop: &CancellationToken,
    ) {
        self.report(|s| s.last_error = Some(message.clone()));
        if last_error.as_deref() != Some(message.as_str()) {
            tracing::warn!(
                error = %message,
                acked_seq = self.acked_seq,
                "Uplink: the hub does not acknowledge; the WAL keeps the rows and they are sent again."
            );
            *last_error = Some(message);
        }
        self.flush_cursor();
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(*backoff) => {}
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(10));
    }
}

/// Starts the uplink when `[uplink]` is configured (otherwise an idle module).
pub(crate) async fn start(
    config: &Config,
    data_dir: &Path,
    store: Arc<Store>,
    board: LinkBoard,
) -> Result<ServiceHandle, String> {
    let stop = CancellationToken::new();
    let link = NatsLink::from(&config.uplink);
    if !link.is_on() {
        let token = stop.clone();
        let task = tokio::spawn(async move {
            token.cancelled().await;
            Ok(())
        });
        return Ok(ServiceHandle { stop, task });
    }
    let problems = check(config);
    if let Some((path, message)) = problems.first() {
        return Err(format!("{path}: {message}"));
    }
    let max_backlog = fabrik_runtime::units::parse_bytes(&config.uplink.max_backlog)?;
    let path = cursor_path(data_dir);
    // A first start sends what is written from now on: history before the uplink was set
    // up stays on this node.
    let acked_seq = match load_cursor(&path)? {
        Some(seq) => seq,
        None => {
            let now = store.applied_seq();
            save_cursor(&path, now)?;
            now
        }
    };
    store.hold_wal(Some(acked_seq));
    let node = config.uplink.node.clone();
    let subject = format!("{}.{node}", link.subject);
    tracing::info!(
        url = %link.url,
        stream = %link.stream,
        subject = %subject,
        acked_seq,
        "Uplink to the hub."
    );
    board.write().uplink = Some(UplinkStatus {
        node: node.clone(),
        url: link.url.clone(),
        stream: link.stream.clone(),
        subject: subject.clone(),
        acked_seq,
        max_backlog_bytes: max_backlog,
        ..UplinkStatus::default()
    });
    let uplink = Uplink {
        board,
        store: store.clone(),
        link,
        node,
        subject,
        filter: TableFilter {
            only: config.uplink.tables.iter().cloned().collect(),
            exclude: config.uplink.exclude.iter().cloned().collect(),
        },
        max_backlog,
        cursor_path: path,
        acked_seq,
        cursor_saved: Instant::now(),
        cursor_dirty: false,
    };
    let follower = WalFollower::new(store.wal_dir(), acked_seq);
    let token = stop.clone();
    let task = tokio::spawn(async move {
        uplink.run(follower, token).await;
        Ok(())
    });
    Ok(ServiceHandle { stop, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_survives_a_rewrite_and_a_missing_file_is_no_cursor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = cursor_path(dir.path());
        assert_eq!(load_cursor(&path).expect("load"), None);
        save_cursor(&path, 41).expect("save");
        save_cursor(&path, 42).expect("save");
        assert_eq!(load_cursor(&path).expect("load"), Some(42));
        std::fs::write(&path, b"{").expect("damage");
        assert!(
            load_cursor(&path)
                .expect_err("damaged")
                .contains("cursor.json")
        );
    }
}
