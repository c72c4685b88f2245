//! The edge side of the uplink (`[uplink]`, decision 0030): every write this node stores is
//! read back from its WAL, in order, and published to the hub's JetStream stream, one
//! message per table and partition of the write (Arrow IPC, at most the server's payload
//! limit). The WAL is the store-and-forward queue: it keeps what JetStream has not
//! acknowledged (the store's WAL hold) across outages, `kill -9` and restarts, up to
//! `max_backlog`; the position acknowledged is in `<data_dir>/uplink/cursor.json`.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use fabrik_api::links::{BackfillControl, LinkBoard, UplinkStatus};
use fabrik_runtime::ServiceHandle;
use fabrik_runtime::config::Config;
use fabrik_store::Store;
use fabrik_store::arrow::ipc::writer::StreamWriter;
use fabrik_store::arrow::record_batch::RecordBatch;
use fabrik_store::wal::{self, FollowedRecord, WalFollower};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::nats_link::{self, NatsLink};
use crate::uplink_backfill::Backfill;

/// Payload read from the WAL per round (one record at least).
const READ_BYTES: usize = 4 << 20;
/// The cursor file is rewritten at most this often (and at stop): after a crash, at most
/// this much is sent again, and JetStream's duplicate window drops it.
const CURSOR_EVERY: Duration = Duration::from_secs(1);
/// Room left in a message for its headers.
const HEADER_ROOM: usize = 1024;
/// How long JetStream may take to acknowledge a message (a window is at most
/// `WINDOW_BYTES`, so a link of about 300 kbit/s still makes it).
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

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

/// What the hub has acknowledged, and who this node is.
#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    /// The last WAL sequence number whose messages JetStream acknowledged.
    acked_seq: u64,
    /// Random, made with the cursor: part of every message id, so two nodes given the same
    /// name, or one whose data directory was wiped, never have their messages dropped as
    /// duplicates of another's.
    instance: String,
}

fn cursor_path(data_dir: &Path) -> PathBuf {
    data_dir.join("uplink").join("cursor.json")
}

fn load_cursor(path: &Path) -> Result<Option<Cursor>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<Cursor>(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// Temporary file, fsync, rename: a crash leaves the old cursor or the new one.
fn save_cursor(path: &Path, cursor: &Cursor) -> Result<(), String> {
    save_json(path, cursor)
}

/// Writes `value` as JSON to `path` so that a crash leaves the old file or the new one
/// (temporary file, fsync, rename, fsync of the directory).
pub(crate) fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec(value)?;
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

/// Makes the cursor at a first start, right after the store opened and before any other
/// module writes: the uplink sends everything written from then on (history from before
/// stays on this node).
pub(crate) fn prepare_cursor(data_dir: &Path, store: &Store) -> Result<(), String> {
    let path = cursor_path(data_dir);
    if load_cursor(&path)?.is_some() {
        return Ok(());
    }
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for the uplink: {e}"))?;
    let instance: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    save_cursor(
        &path,
        &Cursor {
            acked_seq: store.applied_seq(),
            instance,
        },
    )
}

/// Which tables go up.
#[derive(Debug, Clone)]
pub(crate) struct TableFilter {
    only: BTreeSet<String>,
    exclude: BTreeSet<String>,
}

impl TableFilter {
    pub(crate) fn wants(&self, table: &str) -> bool {
        // Blob listings name files that stay on this node.
        table != fabrik_core::blob::BLOBS_TABLE
            && (self.only.is_empty() || self.only.contains(table))
            && !self.exclude.contains(table)
    }
}

/// One message for JetStream.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) table: String,
    pub(crate) id: String,
    pub(crate) seq: u64,
    pub(crate) payload: Bytes,
    pub(crate) rows: usize,
}

/// The messages of some WAL records, and what could not be sent.
#[derive(Debug, Default)]
pub(crate) struct Messages {
    pub(crate) out: Vec<Outgoing>,
    /// Rows that cannot go (one row larger than the server takes), with why.
    pub(crate) unsendable_rows: usize,
    pub(crate) problems: Vec<String>,
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
/// server's payload limit. Ids are `<node>:<instance>:<seq>:<chunk>:<part>`, stable across
/// re-sends while the payload limit stays. A row that fits no message is left out and
/// counted; the rest of the record still goes.
fn messages_of(
    record: &FollowedRecord,
    id_prefix: &str,
    filter: &TableFilter,
    max_payload: usize,
    out: &mut Messages,
) {
    let chunks = match wal::decode(&record.payload) {
        Ok(chunks) => chunks,
        Err(e) => {
            out.problems
                .push(format!("WAL record {}: cannot be decoded: {e}", record.seq));
            return;
        }
    };
    for (i, chunk) in chunks.into_iter().enumerate() {
        if !filter.wants(&chunk.table) {
            continue;
        }
        split_into_messages(
            &chunk.table,
            chunk.batch,
            &format!("{id_prefix}:{}:{i}", record.seq),
            record.seq,
            max_payload,
            &format!("WAL record {}", record.seq),
            out,
        );
    }
}

/// The most one message may carry on the connected NATS server, less room for headers; `None`
/// until the server has said. A client made with `retry_on_initial_connect` returns before it
/// is connected, and until the server's first INFO its limit reads 0: messages split to fit
/// that would call every row too large to send, and drop them.
pub(crate) fn payload_limit(client: &async_nats::Client) -> Option<usize> {
    client
        .try_server_info()
        .filter(|info| info.max_payload > 0)
        .map(|info| {
            info.max_payload
                .saturating_sub(HEADER_ROOM)
                .max(HEADER_ROOM)
        })
}

/// The messages of one batch of `table`, halved until each fits `max_payload`; ids are
/// `<id_base>:<part>`. A row that fits no message is left out and counted (`location` names
/// where it came from in the problem).
pub(crate) fn split_into_messages(
    table: &str,
    batch: RecordBatch,
    id_base: &str,
    seq: u64,
    max_payload: usize,
    location: &str,
    out: &mut Messages,
) {
    let mut parts = vec![batch];
    let mut part_no = 0usize;
    while let Some(batch) = parts.pop() {
        let payload = match ipc_bytes(&batch) {
            Ok(payload) => payload,
            Err(e) => {
                out.unsendable_rows += batch.num_rows();
                out.problems
                    .push(format!("{location}, table `{table}`: {e}"));
                continue;
            }
        };
        if payload.len() > max_payload {
            if batch.num_rows() < 2 {
                out.unsendable_rows += batch.num_rows();
                out.problems.push(format!(
                    "{location}: a row of table `{table}` takes {} bytes, more than the \
                     server's payload limit of {max_payload}",
                    payload.len()
                ));
                continue;
            }
            let half = batch.num_rows() / 2;
            // Pushed in reverse so the rows go out in their order.
            parts.push(batch.slice(half, batch.num_rows() - half));
            parts.push(batch.slice(0, half));
            continue;
        }
        out.out.push(Outgoing {
            table: table.to_owned(),
            id: format!("{id_base}:{part_no}"),
            seq,
            payload: Bytes::from(payload),
            rows: batch.num_rows(),
        });
        part_no += 1;
    }
}

/// Publishes the messages not acknowledged yet, a window of about `WINDOW_BYTES` at a time,
/// each window's acknowledgements awaited before the next (so a slow link never has more in
/// flight than it can carry within the acknowledgement timeout). Acknowledged ids go into
/// `acked`, so a retry after a failure sends only the rest.
pub(crate) async fn publish_all(
    js: &jetstream::Context,
    subject: &str,
    messages: &[Outgoing],
    acked: &mut HashSet<String>,
) -> Result<u64, String> {
    let mut duplicates = 0u64;
    let waiting: Vec<&Outgoing> = messages.iter().filter(|m| !acked.contains(&m.id)).collect();
    for window in windows(&waiting) {
        let mut acks = Vec::with_capacity(window.len());
        for m in window {
            let publish = jetstream::message::PublishMessage::build()
                .payload(m.payload.clone())
                .message_id(&m.id)
                .header(nats_link::TABLE_HEADER, m.table.as_str())
                .header(nats_link::SEQ_HEADER, m.seq.to_string().as_str());
            let ack = js
                .send_publish(subject.to_owned(), publish)
                .await
                .map_err(|e| format!("publishing: {e}"))?;
            acks.push((m, ack));
        }
        for (m, ack) in acks {
            let ack = ack
                .await
                .map_err(|e| format!("waiting for JetStream: {e}"))?;
            if ack.duplicate {
                duplicates += 1;
            }
            acked.insert(m.id.clone());
        }
    }
    Ok(duplicates)
}

/// Bytes published before their acknowledgements are awaited.
const WINDOW_BYTES: usize = 1 << 20;

fn windows<'a>(messages: &'a [&'a Outgoing]) -> Vec<&'a [&'a Outgoing]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, m) in messages.iter().enumerate() {
        if i > start && bytes + m.payload.len() > WINDOW_BYTES {
            out.push(&messages[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += m.payload.len();
    }
    if start < messages.len() {
        out.push(&messages[start..]);
    }
    out
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

/// Now, as the status shows times.
pub(crate) fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

struct Uplink {
    store: Arc<Store>,
    link: NatsLink,
    subject: String,
    /// `<node>:<instance>`, the start of every message id.
    id_prefix: String,
    instance: String,
    filter: TableFilter,
    max_backlog: u64,
    cursor_path: PathBuf,
    /// Acknowledged by JetStream.
    acked_seq: u64,
    /// In the cursor file: the WAL hold follows this, so a crash never finds deleted what
    /// the file says is still to send.
    saved_seq: u64,
    /// Given up past `max_backlog`: the hold never goes below it.
    given_up_to: u64,
    cursor_saved: Instant,
    board: LinkBoard,
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
        if self.cursor_saved.elapsed() >= CURSOR_EVERY {
            self.flush_cursor();
        }
    }

    fn flush_cursor(&mut self) {
        if self.saved_seq == self.acked_seq {
            return;
        }
        let cursor = Cursor {
            acked_seq: self.acked_seq,
            instance: self.instance.clone(),
        };
        match save_cursor(&self.cursor_path, &cursor) {
            Ok(()) => {
                self.saved_seq = self.acked_seq;
                self.cursor_saved = Instant::now();
                self.store
                    .hold_wal(Some(self.saved_seq.max(self.given_up_to)));
            }
            Err(e) => tracing::warn!(error = %e, "Uplink cursor not saved; it is tried again."),
        }
    }

    /// Gives up the oldest WAL beyond `max_backlog` (the hold moves past it; the next
    /// persistence deletes it and the follower counts what it missed).
    fn enforce_backlog(&mut self) {
        let Some(limit) = backlog_limit(self.store.wal_dir(), self.max_backlog) else {
            return;
        };
        if limit > self.acked_seq && limit > self.given_up_to {
            tracing::warn!(
                acked_seq = self.acked_seq,
                given_up_to = limit,
                max_backlog = self.max_backlog,
                "The hub has been out of reach past uplink.max_backlog: the oldest WAL \
                 records will be deleted at the next persistence without reaching it."
            );
            self.given_up_to = limit;
            self.store
                .hold_wal(Some(self.saved_seq.max(self.given_up_to)));
        }
    }

    /// Reads the next records on a blocking thread; a failure (or a panic) is returned as
    /// text, with a fresh follower from the acknowledged position.
    async fn read(&self, follower: WalFollower) -> (WalFollower, Result<wal::Followed, String>) {
        let up_to = self.store.applied_seq();
        let fresh = || WalFollower::new(self.store.wal_dir(), self.acked_seq);
        let handle = tokio::task::spawn_blocking(move || {
            let mut f = follower;
            let r = f.read(up_to, READ_BYTES);
            (f, r)
        });
        match handle.await {
            Ok((f, Ok(read))) => (f, Ok(read)),
            Ok((_, Err(e))) => (fresh(), Err(format!("reading the WAL: {e}"))),
            Err(e) => (fresh(), Err(format!("the WAL reader failed: {e}"))),
        }
    }

    async fn run(mut self, stop: CancellationToken) {
        let client_name = format!("fabrik-uplink-{}", self.id_prefix);
        let board = self.board.clone();
        let on_connection = move |connected: bool| {
            if let Some(status) = board.write().uplink.as_mut() {
                status.connected = connected;
            }
        };
        let client = tokio::select! {
            () = stop.cancelled() => return,
            client = self.link.connect(client_name, on_connection) => client,
        };
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                // Only a malformed address fails here (the check refuses those at start).
                tracing::error!(error = %e, "Uplink cannot start.");
                self.report(|s| s.last_error = Some(e));
                stop.cancelled().await;
                return;
            }
        };
        let mut js = jetstream::new(client.clone());
        js.set_timeout(ACK_TIMEOUT);
        let mut follower = WalFollower::new(self.store.wal_dir(), self.acked_seq);
        let mut applied = self.store.watch_applied();
        // Records read and not yet acknowledged, and which of their messages were.
        let mut pending: Vec<FollowedRecord> = Vec::new();
        let mut acked_ids: HashSet<String> = HashSet::new();
        let mut losses_counted = false;
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
                // The hub owns the stream (its subjects and age); the edge only checks it.
                let found = tokio::select! {
                    () = stop.cancelled() => break,
                    found = js.get_stream(&self.link.stream) => found,
                };
                if let Err(e) = found {
                    let message = format!(
                        "stream `{}`: {e} (a hub with [hub] makes it when it starts)",
                        self.link.stream
                    );
                    self.failed(&mut last_error, message, &mut backoff, &stop)
                        .await;
                    continue;
                }
                stream_ready = true;
            }
            if pending.is_empty() {
                let (f, read) = self.read(follower).await;
                follower = f;
                let read = match read {
                    Ok(read) => read,
                    Err(e) => {
                        self.failed(&mut last_error, e, &mut backoff, &stop).await;
                        continue;
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
                pending = read.records;
                acked_ids.clear();
                losses_counted = false;
            }
            // Built again for every attempt, with the payload limit of the server now
            // connected (it may differ after a failover).
            let Some(max_payload) = payload_limit(&client) else {
                let message =
                    "not connected to the NATS server yet (its payload limit is not known)";
                self.failed(&mut last_error, message.into(), &mut backoff, &stop)
                    .await;
                continue;
            };
            let mut messages = Messages::default();
            for record in &pending {
                messages_of(
                    record,
                    &self.id_prefix,
                    &self.filter,
                    max_payload,
                    &mut messages,
                );
            }
            if !losses_counted && (messages.unsendable_rows > 0 || !messages.problems.is_empty()) {
                losses_counted = true;
                metrics::counter!("fabrik_uplink_unsendable_rows_total")
                    .increment(messages.unsendable_rows as u64);
                let rows = messages.unsendable_rows as u64;
                self.report(|s| s.unsendable_rows += rows);
                for problem in &messages.problems {
                    tracing::error!(problem = %problem, "Not sent to the hub.");
                }
            }
            let Some(last) = pending.last().map(|r| r.seq) else {
                continue;
            };
            let sent = tokio::select! {
                () = stop.cancelled() => break,
                sent = publish_all(&js, &self.subject, &messages.out, &mut acked_ids) => sent,
            };
            match sent {
                Ok(duplicates) => {
                    let rows: usize = messages.out.iter().map(|m| m.rows).sum();
                    let bytes: usize = messages.out.iter().map(|m| m.payload.len()).sum();
                    let count = messages.out.len() as u64;
                    metrics::counter!("fabrik_uplink_messages_total").increment(count);
                    metrics::counter!("fabrik_uplink_rows_total").increment(rows as u64);
                    metrics::counter!("fabrik_uplink_bytes_total").increment(bytes as u64);
                    metrics::counter!("fabrik_uplink_duplicates_total").increment(duplicates);
                    if last_error.take().is_some() {
                        tracing::info!(acked_seq = last, "Uplink: the hub acknowledges again.");
                    }
                    backoff = Duration::from_millis(200);
                    self.report(|s| {
                        s.messages_sent += count;
                        s.rows_sent += rows as u64;
                        s.last_ack_at = Some(now_text());
                        s.last_error = None;
                    });
                    pending.clear();
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
        // The acknowledgements were awaited; nothing is left to flush to the server (and a
        // flush would wait for a server that may be away).
        self.flush_cursor();
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
    registry: Option<fabrik_registry::Registry>,
) -> Result<(ServiceHandle, Option<Arc<dyn BackfillControl>>), String> {
    let link = NatsLink::from(&config.uplink);
    if !link.is_on() {
        return Ok((nats_link::idle_module(), None));
    }
    let stop = CancellationToken::new();
    let problems = check(config);
    if let Some((path, message)) = problems.first() {
        return Err(format!("{path}: {message}"));
    }
    let max_backlog = fabrik_runtime::units::parse_bytes(&config.uplink.max_backlog)?;
    let path = cursor_path(data_dir);
    prepare_cursor(data_dir, &store)?;
    let cursor = load_cursor(&path)?.ok_or_else(|| format!("{} vanished", path.display()))?;
    store.hold_wal(Some(cursor.acked_seq));
    let node = config.uplink.node.clone();
    let subject = format!("{}.{node}", link.subject);
    tracing::info!(
        url = %link.url,
        stream = %link.stream,
        subject = %subject,
        acked_seq = cursor.acked_seq,
        "Uplink to the hub."
    );
    board.write().uplink = Some(UplinkStatus {
        node: node.clone(),
        url: link.url.clone(),
        stream: link.stream.clone(),
        subject: subject.clone(),
        acked_seq: cursor.acked_seq,
        max_backlog_bytes: max_backlog,
        ..UplinkStatus::default()
    });
    let uplink = Uplink {
        board,
        store,
        link,
        id_prefix: format!("{node}:{}", cursor.instance),
        instance: cursor.instance,
        subject,
        filter: TableFilter {
            only: config.uplink.tables.iter().cloned().collect(),
            exclude: config.uplink.exclude.iter().cloned().collect(),
        },
        max_backlog,
        cursor_path: path,
        acked_seq: cursor.acked_seq,
        saved_seq: cursor.acked_seq,
        given_up_to: 0,
        cursor_saved: Instant::now(),
    };
    let token = stop.clone();
    // The registry, mirrored as `_devices` rows, tells the hub each device's site, type and
    // labels (decision 0036), unless the site keeps that table home.
    let wanted = uplink.filter.wants(crate::device_mirror::DEVICES_TABLE);
    match (&registry, wanted) {
        (Some(_), true) => tracing::info!("Mirroring the device registry to the hub as _devices."),
        (None, true) => tracing::warn!(
            "No device registry in this process: the hub will not learn this node's devices (run the registry module with the uplink)."
        ),
        (_, false) => {
            tracing::info!("_devices is not forwarded: the hub will not learn this node's devices.")
        }
    }
    let mirror = registry.filter(|_| wanted).map(|registry| {
        let (store, node, token) = (uplink.store.clone(), node.clone(), stop.clone());
        tokio::spawn(crate::device_mirror::run(store, registry, node, token))
    });
    let backfill = Backfill::new(
        uplink.store.clone(),
        uplink.link.clone(),
        uplink.subject.clone(),
        uplink.id_prefix.clone(),
        uplink.filter.clone(),
        data_dir,
        uplink.board.clone(),
    );
    let backfilling = tokio::spawn(backfill.clone().run(stop.clone()));
    let task = tokio::spawn(async move {
        uplink.run(token).await;
        if let Some(mirror) = mirror {
            let _ = mirror.await;
        }
        let _ = backfilling.await;
        Ok(())
    });
    Ok((ServiceHandle { stop, task }, Some(Arc::new(backfill))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_survives_a_rewrite_and_a_missing_file_is_no_cursor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = cursor_path(dir.path());
        assert!(load_cursor(&path).expect("load").is_none());
        let cursor = |acked_seq| Cursor {
            acked_seq,
            instance: "ab".into(),
        };
        save_cursor(&path, &cursor(41)).expect("save");
        save_cursor(&path, &cursor(42)).expect("save");
        let loaded = load_cursor(&path).expect("load").expect("cursor");
        assert_eq!((loaded.acked_seq, loaded.instance.as_str()), (42, "ab"));
        std::fs::write(&path, b"{").expect("damage");
        assert!(
            load_cursor(&path)
                .expect_err("damaged")
                .contains("cursor.json")
        );
    }
}
