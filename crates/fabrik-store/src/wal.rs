//! The write-ahead log: segment files of checksummed records, written by one thread with
//! group commit. A write is acknowledged only after the `fdatasync` of the group holding it,
//! and applied to the buffer right after, in WAL order, so "acknowledged" always means
//! "durable and queryable".
//!
//! Segment `wal/<first seq>.wal` = 8-byte magic, then records:
//! `len u32 | crc32(seq ‖ payload) u32 | seq u64 | payload`, little-endian. The payload lists
//! chunks: `count u32`, then per chunk `table_len u16 | table | partition i64 | ipc_len u32 |
//! Arrow IPC stream`. A torn record at the end of the last segment (a crash mid-write) is cut
//! off at start-up; damage anywhere else stops the start, because acknowledged data is there.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use tokio::sync::{mpsc, oneshot};

use crate::StoreError;
use crate::batch::{WriteChunk, series_of_batch};
use crate::pool::BufferPool;

const MAGIC: &[u8; 8] = b"FABWAL01";
const HEADER: usize = 16;
/// A group stops collecting more writes once it holds this many bytes.
const MAX_GROUP_BYTES: usize = 32 << 20;
/// Largest record accepted on replay; anything larger is a damaged length field.
const MAX_RECORD: u32 = 1 << 30;

/// Payload buffers: 8 kept, up to 8 MiB each. The WAL thread returns each after writing it.
static PAYLOADS: BufferPool = BufferPool::new(8, 8 << 20);

/// Encodes the chunks of one write request as a WAL payload.
pub fn encode(chunks: &[WriteChunk]) -> Result<Vec<u8>, StoreError> {
    let mut out = PAYLOADS.take();
    out.reserve(
        chunks
            .iter()
            .map(|c| c.batch.get_array_memory_size() + 256)
            .sum::<usize>(),
    );
    out.extend_from_slice(
        &u32::try_from(chunks.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for chunk in chunks {
        let name = chunk.table.as_bytes();
        let name_len = u16::try_from(name.len()).map_err(|_| {
            StoreError::Internal(format!(
                "table name longer than 65535 bytes: {}",
                chunk.table
            ))
        })?;
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&chunk.partition.to_le_bytes());
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let start = out.len();
        let mut writer = StreamWriter::try_new(&mut out, &chunk.batch.schema())?;
        writer.write(&chunk.batch)?;
        writer.finish()?;
        drop(writer);
        let ipc_len = u32::try_from(out.len() - start)
            .map_err(|_| StoreError::Internal("chunk larger than 4 GiB".into()))?;
        out[len_at..start].copy_from_slice(&ipc_len.to_le_bytes());
    }
    if out.len() > MAX_RECORD as usize {
        return Err(StoreError::InvalidPoint {
            location: "request".into(),
            reason: format!(
                "{} bytes encoded: more than one write may hold ({MAX_RECORD} bytes)",
                out.len()
            ),
        });
    }
    Ok(out)
}

/// Decodes a payload back into chunks (series hashes recomputed from the tag columns).
pub fn decode(payload: &[u8]) -> Result<Vec<WriteChunk>, String> {
    let mut cur = payload;
    let mut take = |n: usize| -> Result<&[u8], String> {
        if cur.len() < n {
            return Err("payload ends early".into());
        }
        let (head, tail) = cur.split_at(n);
        cur = tail;
        Ok(head)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "count")?);
    let mut chunks = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name_len = u16::from_le_bytes(take(2)?.try_into().map_err(|_| "name length")?);
        let name = std::str::from_utf8(take(name_len as usize)?)
            .map_err(|e| format!("table name: {e}"))?;
        let table: Arc<str> = name.into();
        let partition = i64::from_le_bytes(take(8)?.try_into().map_err(|_| "partition")?);
        let ipc_len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "ipc length")?);
        let ipc = take(ipc_len as usize)?;
        let reader = StreamReader::try_new(ipc, None).map_err(|e| format!("arrow ipc: {e}"))?;
        for batch in reader {
            let batch: RecordBatch = batch.map_err(|e| format!("arrow ipc: {e}"))?;
            let series = series_of_batch(&batch);
            chunks.push(WriteChunk {
                table: table.clone(),
                partition,
                batch,
                series,
            });
        }
    }
    Ok(chunks)
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.wal"))
}

/// WAL segments in `dir`, sorted by first sequence number.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut segments = Vec::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
        let path = entry.path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
        else {
            continue;
        };
        if let Ok(seq) = stem.parse::<u64>() {
            segments.push((seq, path));
        }
    }
    segments.sort();
    Ok(segments)
}

/// What replay found.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Records applied (newer than the persisted sequence number).
    pub records: u64,
    /// Bytes cut off a torn tail.
    pub torn_bytes: u64,
    /// The sequence number the next record gets.
    pub next_seq: u64,
}

/// Replays every record with `seq > persisted_seq`, calling `apply` in order; truncates a torn
/// tail of the last segment and deletes empty segments.
pub fn replay(
    dir: &Path,
    persisted_seq: u64,
    mut apply: impl FnMut(u64, Vec<WriteChunk>) -> Result<(), StoreError>,
) -> Result<ReplayReport, StoreError> {
    let segments = list_segments(dir)?;
    let mut report = ReplayReport {
        next_seq: persisted_seq + 1,
        ..ReplayReport::default()
    };
    let last_index = segments.len().saturating_sub(1);
    for (i, (first_seq, path)) in segments.iter().enumerate() {
        let is_last = i == last_index;
        // A segment kept only for the uplink (every record in it persisted) is not read.
        if segments
            .get(i + 1)
            .is_some_and(|(next_first, _)| *next_first <= persisted_seq + 1)
        {
            report.next_seq = report.next_seq.max(*first_seq);
            continue;
        }
        let name = path.display().to_string();
        let mut data = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|e| StoreError::io(format!("reading {name}"), e))?;
        report.next_seq = report.next_seq.max(*first_seq);
        let mut good = 0usize;
        let mut problem: Option<String> = None;
        if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
            problem = Some("missing segment header".into());
        } else {
            good = MAGIC.len();
            while good < data.len() {
                let rest = &data[good..];
                if rest.len() < HEADER {
                    problem = Some("record header cut short".into());
                    break;
                }
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
                if len > MAX_RECORD || rest.len() < HEADER + len as usize {
                    problem = Some("record cut short".into());
                    break;
                }
                let body = &rest[8..HEADER + len as usize];
                if crc32fast::hash(body) != crc {
                    problem = Some("checksum mismatch".into());
                    break;
                }
                let seq = u64::from_le_bytes(
                    body[..8]
                        .try_into()
                        .map_err(|_| StoreError::Internal("seq".into()))?,
                );
                if seq > persisted_seq {
                    let chunks = decode(&body[8..]).map_err(|reason| StoreError::CorruptWal {
                        segment: name.clone(),
                        offset: good as u64,
                        reason,
                    })?;
                    apply(seq, chunks)?;
                    report.records += 1;
                }
                report.next_seq = report.next_seq.max(seq + 1);
                good += HEADER + len as usize;
            }
        }
        if let Some(reason) = problem {
            if !is_last {
                return Err(StoreError::CorruptWal {
                    segment: name,
                    offset: good as u64,
                    reason,
                });
            }
            let dropped = (data.len() - good) as u64;
            report.torn_bytes = dropped;
            tracing::warn!(
                segment = %name,
                offset = good,
                bytes_dropped = dropped,
                reason = %reason,
                "Torn WAL tail truncated; only unacknowledged writes can have been there."
            );
            if good <= MAGIC.len() {
                std::fs::remove_file(path)
                    .map_err(|e| StoreError::io(format!("removing {name}"), e))?;
                continue;
            }
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| StoreError::io(format!("opening {name}"), e))?;
            file.set_len(good as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| StoreError::io(format!("truncating {name}"), e))?;
        } else if good <= MAGIC.len() {
            std::fs::remove_file(path)
                .map_err(|e| StoreError::io(format!("removing {name}"), e))?;
        }
    }
    Ok(report)
}

/// Deletes segments all of whose records are `<= persisted_seq`: a segment is covered when
/// the next segment starts at or below `persisted_seq + 1`. The newest segment is never
/// deleted (the writer appends to it).
pub fn delete_persisted(dir: &Path, persisted_seq: u64) -> Result<usize, StoreError> {
    let segments = list_segments(dir)?;
    let mut deleted = 0;
    for pair in segments.windows(2) {
        let (_, path) = &pair[0];
        let (next_first, _) = &pair[1];
        if *next_first <= persisted_seq + 1 {
            std::fs::remove_file(path)
                .map_err(|e| StoreError::io(format!("removing {}", path.display()), e))?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// A request to the WAL thread.
pub enum WalCommand {
    /// Append one encoded write, then apply its chunks and answer with its sequence number.
    Append {
        /// The encoded chunks.
        payload: Vec<u8>,
        /// The chunks, applied to the buffer once durable.
        chunks: Vec<WriteChunk>,
        /// The answer.
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Start a new segment and hand the current buffer over for persistence (through the
    /// `rotate` callback, under the same ordering as appends).
    Rotate {
        /// The answer: the last sequence number in the closed segments.
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
}

/// Callbacks the WAL thread drives, in WAL order.
pub trait WalSink: Send + 'static {
    /// Applies durable chunks to the buffer.
    fn apply(&self, seq: u64, chunks: Vec<WriteChunk>);
    /// Freezes the buffer (everything up to `last_seq`) for persistence.
    fn rotate(&self, last_seq: u64);
}

struct Segment {
    dir: PathBuf,
    file: File,
    len: u64,
    /// Set when the file may hold a partial record we could not cut off: no more writes.
    poisoned: Option<String>,
}

impl Segment {
    fn create(dir: &Path, first_seq: u64) -> Result<Self, StoreError> {
        let path = segment_path(dir, first_seq);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(format!("creating {}", path.display()), e))?;
        file.write_all(MAGIC)
            .and_then(|()| file.sync_all())
            .map_err(|e| StoreError::io(format!("writing {}", path.display()), e))?;
        sync_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            len: MAGIC.len() as u64,
            poisoned: None,
        })
    }

    /// Appends `parts` (one write call for all of them) and syncs; returns the bytes written.
    /// On failure cuts the file back so no partial record stays.
    fn append(&mut self, parts: &[&[u8]]) -> Result<u64, StoreError> {
        if let Some(reason) = &self.poisoned {
            return Err(StoreError::Internal(format!(
                "WAL unusable after an earlier failure: {reason}"
            )));
        }
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let result = write_all_vectored(&mut self.file, parts).and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.len += total;
                Ok(total)
            }
            Err(e) => {
                let err =
                    StoreError::io(format!("appending to the WAL in {}", self.dir.display()), e);
                // Cut back to the last complete record so a later success is never preceded
                // by garbage that would stop replay before it.
                let cut = self.file.set_len(self.len).and_then(|()| {
                    use std::io::Seek;
                    self.file
                        .seek(std::io::SeekFrom::Start(self.len))
                        .map(|_| ())
                });
                if let Err(cut_err) = cut {
                    self.poisoned = Some(format!("{err}; truncation failed: {cut_err}"));
                }
                Err(err)
            }
        }
    }
}

/// `write_all` for several buffers with `writev`, so records are not copied into one buffer.
fn write_all_vectored(file: &mut File, parts: &[&[u8]]) -> std::io::Result<()> {
    use std::io::IoSlice;
    // writev takes at most IOV_MAX (1024) buffers per call.
    for batch in parts.chunks(512) {
        let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|p| IoSlice::new(p)).collect();
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            match file.write_vectored(slices) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        "the WAL file accepted no bytes",
                    ));
                }
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("syncing directory {}", dir.display()), e))
}

/// One durable write: its sequence number, its chunks and who waits for it.
type DurableWrite = (
    u64,
    Vec<WriteChunk>,
    oneshot::Sender<Result<u64, StoreError>>,
);

/// What the WAL thread hands the apply thread, in WAL order.
enum Applied {
    /// A durable group: apply each write and answer it.
    Group(Vec<DurableWrite>),
    /// A new segment was started after `last_seq`: freeze the buffer there, then answer.
    Rotated {
        last_seq: u64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
}

/// Starts the WAL thread, appending to a new segment that begins at `next_seq`, and the apply
/// thread behind it. The WAL thread writes and syncs group N+1 while the apply thread puts
/// group N into the buffer; the apply thread answers a write only after applying it, so an
/// acknowledged write is durable and queryable, and it sees rotations in WAL order.
pub fn start(
    dir: &Path,
    next_seq: u64,
    sink: impl WalSink,
    queue: usize,
) -> Result<(mpsc::Sender<WalCommand>, std::thread::JoinHandle<()>), StoreError> {
    let mut segment = Segment::create(dir, next_seq)?;
    let (tx, mut rx) = mpsc::channel::<WalCommand>(queue);
    // Two groups in hand at most: one being applied, one waiting; more waits in the WAL queue.
    let (applied_tx, applied_rx) = std::sync::mpsc::sync_channel::<Applied>(1);
    let applier = std::thread::Builder::new()
        .name("fabrik-apply".into())
        .spawn(move || {
            while let Ok(item) = applied_rx.recv() {
                match item {
                    Applied::Group(writes) => {
                        for (seq, chunks, reply) in writes {
                            sink.apply(seq, chunks);
                            let _ = reply.send(Ok(seq));
                        }
                    }
                    Applied::Rotated { last_seq, reply } => {
                        sink.rotate(last_seq);
                        let _ = reply.send(Ok(last_seq));
                    }
                }
            }
        })
        .map_err(|e| StoreError::io("starting the WAL apply thread", e))?;
    let dir = dir.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("fabrik-wal".into())
        .spawn(move || {
            let mut next_seq = next_seq;
            let mut pending: Option<WalCommand> = None;
            let mut headers: Vec<[u8; HEADER]> = Vec::new();
            loop {
                let first = match pending.take() {
                    Some(c) => c,
                    None => match rx.blocking_recv() {
                        Some(c) => c,
                        None => break,
                    },
                };
                match first {
                    WalCommand::Rotate { reply } => {
                        let last = next_seq - 1;
                        match Segment::create(&dir, next_seq) {
                            Ok(s) => {
                                segment = s;
                                if let Err(std::sync::mpsc::SendError(Applied::Rotated { reply, .. })) =
                                    applied_tx.send(Applied::Rotated { last_seq: last, reply })
                                {
                                    let _ = reply.send(Err(StoreError::ShuttingDown));
                                }
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e));
                            }
                        }
                    }
                    WalCommand::Append { payload, chunks, reply } => {
                        let mut group = vec![(payload, chunks, reply)];
                        let mut bytes = group[0].0.len();
                        while bytes < MAX_GROUP_BYTES {
                            match rx.try_recv() {
                                Ok(WalCommand::Append { payload, chunks, reply }) => {
                                    bytes += payload.len();
                                    group.push((payload, chunks, reply));
                                }
                                Ok(other) => {
                                    pending = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        headers.clear();
                        for (i, (payload, _, _)) in group.iter().enumerate() {
                            let seq = next_seq + i as u64;
                            let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
                            let mut hasher = crc32fast::Hasher::new();
                            hasher.update(&seq.to_le_bytes());
                            hasher.update(payload);
                            let mut header = [0u8; HEADER];
                            header[..4].copy_from_slice(&len.to_le_bytes());
                            header[4..8].copy_from_slice(&hasher.finalize().to_le_bytes());
                            header[8..].copy_from_slice(&seq.to_le_bytes());
                            headers.push(header);
                        }
                        let parts: Vec<&[u8]> = headers
                            .iter()
                            .zip(group.iter())
                            .flat_map(|(h, (payload, _, _))| [&h[..], &payload[..]])
                            .collect();
                        match segment.append(&parts) {
                            Ok(written) => {
                                metrics::counter!("fabrik_wal_groups_total").increment(1);
                                metrics::counter!("fabrik_wal_bytes_total").increment(written);
                                let writes = group
                                    .into_iter()
                                    .map(|(payload, chunks, reply)| {
                                        PAYLOADS.give(payload);
                                        let seq = next_seq;
                                        next_seq += 1;
                                        (seq, chunks, reply)
                                    })
                                    .collect();
                                if let Err(std::sync::mpsc::SendError(Applied::Group(writes))) =
                                    applied_tx.send(Applied::Group(writes))
                                {
                                    for (_, _, reply) in writes {
                                        let _ = reply.send(Err(StoreError::ShuttingDown));
                                    }
                                }
                            }
                            Err(err) => {
                                tracing::error!(error = %err, writes = group.len(), "WAL append failed; writes refused.");
                                let message = err.to_string();
                                let insufficient = matches!(err, StoreError::InsufficientStorage(_));
                                for (_, _, reply) in group {
                                    let e = if insufficient {
                                        StoreError::InsufficientStorage(message.clone())
                                    } else {
                                        StoreError::Internal(message.clone())
                                    };
                                    let _ = reply.send(Err(e));
                                }
                            }
                        }
                    }
                }
            }
            // Every durable write is applied and answered before the thread ends.
            drop(applied_tx);
            let _ = applier.join();
            tracing::debug!("WAL writer stopped.");
        })
        .map_err(|e| StoreError::io("starting the WAL thread", e))?;
    Ok((tx, handle))
}

/// A WAL record read back by a [`WalFollower`]: its sequence number and encoded chunks
/// ([`decode`] turns them back into batches).
#[derive(Debug, Clone)]
pub struct FollowedRecord {
    /// The record's sequence number.
    pub seq: u64,
    /// The payload as written ([`encode`]'s format).
    pub payload: Vec<u8>,
}

/// What one [`WalFollower::read`] found.
#[derive(Debug, Default)]
pub struct Followed {
    /// Records in sequence order.
    pub records: Vec<FollowedRecord>,
    /// Records the follower wanted that were no longer on disk (deleted before it read them).
    pub skipped: u64,
}

/// Reads the WAL's records in order, after a given sequence number, beside the writer: the
/// edge uplink's source (Postgres' logical-replication slot, done on Fabrik's WAL). It reads
/// only records the caller knows are durable (`up_to`, the store's applied sequence number),
/// so it never sees a record the writer might still cut back.
#[derive(Debug)]
pub struct WalFollower {
    dir: PathBuf,
    /// The next sequence number wanted.
    next_seq: u64,
    /// The segment being read: its first sequence number, the file, and the file offset of
    /// `pending`'s first byte.
    segment: Option<(u64, File, u64)>,
    /// Bytes read from the segment; those before `parsed` are consumed.
    pending: Vec<u8>,
    parsed: usize,
    /// The first sequence number of the last segment read to its end and left.
    finished: Option<u64>,
}

impl WalFollower {
    /// A follower that reads the records after `after`.
    pub fn new(dir: impl Into<PathBuf>, after: u64) -> Self {
        Self {
            dir: dir.into(),
            next_seq: after + 1,
            segment: None,
            pending: Vec::new(),
            parsed: 0,
            finished: None,
        }
    }

    /// The sequence number of the last record returned (or skipped).
    pub fn position(&self) -> u64 {
        self.next_seq - 1
    }

    /// Reads records with sequence numbers after [`position`](Self::position) and up to
    /// `up_to`, about `max_bytes` of payload at most (always at least one record when one is
    /// due). Records deleted before they were read are counted in `skipped`, and so are those
    /// of an older segment found damaged (the rest of it is passed over); damage in the
    /// newest segment is an error.
    pub fn read(&mut self, up_to: u64, max_bytes: usize) -> Result<Followed, StoreError> {
        let mut out = Followed::default();
        let result = self.read_into(up_to, max_bytes, &mut out);
        // Bytes past what was consumed may belong to a write the writer is about to cut back
        // (a failed fsync); they are read again from the file next time, never kept.
        self.forget_unparsed();
        result.map(|()| out)
    }

    fn read_into(
        &mut self,
        up_to: u64,
        max_bytes: usize,
        out: &mut Followed,
    ) -> Result<(), StoreError> {
        let mut bytes = 0usize;
        while self.next_seq <= up_to && (out.records.is_empty() || bytes < max_bytes) {
            if self.segment.is_none() && !self.open_segment(&mut out.skipped)? {
                break;
            }
            let next = match self.next_record() {
                Ok(next) => next,
                Err(e) => match self.newer_segment()? {
                    Some(newer) => {
                        tracing::error!(
                            error = %e,
                            records = newer.saturating_sub(self.next_seq),
                            "Damaged WAL segment: the rest of it is passed over."
                        );
                        out.skipped += newer.saturating_sub(self.next_seq);
                        self.next_seq = self.next_seq.max(newer);
                        self.leave_segment();
                        continue;
                    }
                    None => return Err(e),
                },
            };
            match next {
                Some(record) if record.seq > up_to => break,
                Some(record) => {
                    self.consume(&record);
                    if record.seq < self.next_seq {
                        continue;
                    }
                    self.next_seq = record.seq + 1;
                    bytes += record.payload.len();
                    out.records.push(record);
                }
                None => {
                    // The end of what is written here. Once a newer segment exists this one
                    // is complete; it is read to its end once more (the writer may have
                    // appended just before rotating) before the follower moves on.
                    if self.newer_segment()?.is_none() {
                        break;
                    }
                    self.forget_unparsed();
                    if let Some(record) = self.next_record()? {
                        if record.seq > up_to {
                            break;
                        }
                        continue;
                    }
                    self.leave_segment();
                }
            }
        }
        Ok(())
    }

    /// The first sequence number of the oldest segment newer than the current one.
    fn newer_segment(&self) -> Result<Option<u64>, StoreError> {
        let current = self.segment.as_ref().map_or(0, |(first, _, _)| *first);
        Ok(list_segments(&self.dir)?
            .into_iter()
            .map(|(first, _)| first)
            .find(|first| *first > current))
    }

    /// Done with the current segment: the next read opens the one holding `next_seq` (or
    /// the oldest after it, counting the records in between as skipped).
    fn leave_segment(&mut self) {
        if let Some((first, _, _)) = self.segment.take() {
            self.finished = Some(first);
        }
        self.pending.clear();
        self.parsed = 0;
    }

    /// Drops read bytes not yet consumed; the file offset moves past the consumed ones.
    fn forget_unparsed(&mut self) {
        if let Some((_, _, offset)) = &mut self.segment {
            *offset += self.parsed as u64;
        }
        self.pending.clear();
        self.parsed = 0;
    }

    /// Opens the segment holding `next_seq`, or the oldest one after it when records were
    /// deleted; false when there is none yet (or it vanished between listing and opening).
    fn open_segment(&mut self, skipped: &mut u64) -> Result<bool, StoreError> {
        let segments = list_segments(&self.dir)?;
        // Never back to a segment read to its end, nor to an older one.
        let finished = self.finished;
        let candidates: Vec<&(u64, PathBuf)> = segments
            .iter()
            .filter(|(first, _)| finished.is_none_or(|f| *first > f))
            .collect();
        let chosen = candidates
            .iter()
            .rev()
            .find(|(first, _)| *first <= self.next_seq)
            .or_else(|| candidates.first());
        let Some((first, path)) = chosen.copied() else {
            return Ok(false);
        };
        let file = match File::open(path) {
            Ok(file) => file,
            // Deleted by a persistence since the listing (the uplink's hold moved): the next
            // read lists again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StoreError::io(format!("opening {}", path.display()), e)),
        };
        if *first > self.next_seq {
            *skipped += first - self.next_seq;
            self.next_seq = *first;
        }
        self.segment = Some((*first, file, MAGIC.len() as u64));
        self.pending.clear();
        self.parsed = 0;
        Ok(true)
    }

    /// Marks a parsed record's bytes as consumed.
    fn consume(&mut self, record: &FollowedRecord) {
        self.parsed += HEADER + record.payload.len();
    }

    /// The next whole record of the current segment, reading more of the file as needed;
    /// `None` at the end of what is written.
    fn next_record(&mut self) -> Result<Option<FollowedRecord>, StoreError> {
        use std::io::{Seek, SeekFrom};
        loop {
            let rest = &self.pending[self.parsed..];
            if rest.len() >= HEADER {
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                if len > MAX_RECORD {
                    return Err(self.corrupt("record length out of range"));
                }
                let total = HEADER + len as usize;
                if rest.len() >= total {
                    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
                    let body = &rest[8..total];
                    if crc32fast::hash(body) != crc {
                        return Err(self.corrupt("checksum mismatch"));
                    }
                    let mut seq = [0u8; 8];
                    seq.copy_from_slice(&body[..8]);
                    return Ok(Some(FollowedRecord {
                        seq: u64::from_le_bytes(seq),
                        payload: body[8..].to_vec(),
                    }));
                }
            }
            // Keep only the unparsed tail before reading more.
            if let Some((_, _, offset)) = &mut self.segment {
                *offset += self.parsed as u64;
            }
            self.pending.drain(..self.parsed);
            self.parsed = 0;
            let Some((_, file, offset)) = &mut self.segment else {
                return Ok(None);
            };
            let at = *offset + self.pending.len() as u64;
            let read = file
                .seek(SeekFrom::Start(at))
                .and_then(|_| {
                    Read::by_ref(file)
                        .take(8 << 20)
                        .read_to_end(&mut self.pending)
                })
                .map_err(|e| {
                    StoreError::io(format!("reading the WAL in {}", self.dir.display()), e)
                })?;
            if read == 0 {
                return Ok(None);
            }
        }
    }

    fn corrupt(&self, reason: &str) -> StoreError {
        let (first, offset) = self.segment.as_ref().map_or((0, 0), |(first, _, offset)| {
            (*first, *offset + self.parsed as u64)
        });
        StoreError::CorruptWal {
            segment: segment_path(&self.dir, first).display().to_string(),
            offset,
            reason: reason.to_owned(),
        }
    }
}
