//! The audit log: who changed what through the API, and who signed in or failed to, as a
//! hash chain. Each entry's `hash` is an HMAC-SHA256, under a key kept in its own file beside
//! the database, of the previous entry's hash and the entry's fields: changing, removing or
//! reordering an entry breaks every hash after it, and forging a chain needs the key.
//! [`Registry::verify_audit`] recomputes the chain and names every entry that does not fit.
//!
//! What the chain cannot show by itself is the newest entries cut off the end (the shorter
//! chain is still valid): every entry is also written to the process log with its hash, so a
//! log shipped off the machine holds the head to compare with.

use std::path::Path;
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::Row;

use crate::{Registry, RegistryError, now_ns};

mod refusals;
use refusals::RefusalWindows;

/// The previous hash of the first entry.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Bytes of the chain key.
const KEY_BYTES: usize = 32;

/// Longest actor, action and target kept (characters): a request path is the client's to
/// choose, and the log must not grow by whatever it sends.
const MAX_ACTOR_CHARS: usize = 128;
const MAX_ACTION_CHARS: usize = 256;
const MAX_TARGET_CHARS: usize = 512;

/// Breaks listed by a check; past this many only their number is counted.
const MAX_LISTED_BREAKS: usize = 100;

/// An entry to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Who acted: a user name, `admin-token`, or what a failed sign-in claimed to be.
    pub actor: String,
    /// What was done: `PUT /api/v1/pipelines/{name}`, `sign-in`.
    pub action: String,
    /// What it was done to: the request path, the user name.
    pub target: String,
    /// The HTTP status answered (2xx done, 4xx refused).
    pub status: u16,
}

/// Whether a request's `target` names `name` in a segment its route (the path in `action`,
/// `PUT /api/v1/users/{name}/password`) takes as a parameter: the fixed words of a route
/// (`admin`, `users`) are never a person, whatever their name.
fn route_names(action: &str, target: &str, name: &str) -> bool {
    let Some((_, route)) = action.split_once(' ') else {
        return false;
    };
    let path = target.split('?').next().unwrap_or_default();
    route
        .split('/')
        .zip(path.split('/'))
        .any(|(template, segment)| {
            template.starts_with('{') && template.ends_with('}') && decoded(segment) == name
        })
}

/// A path segment with its `%XX` escapes decoded (as the request's router saw it).
fn decoded(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escape {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A recorded entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// When (ns since the epoch).
    pub time: i64,
    /// Who acted.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// To what.
    pub target: String,
    /// The status answered.
    pub status: u16,
    /// HMAC-SHA256 (hex) of the previous entry's hash and this entry's fields.
    pub hash: String,
}

/// What a check of the whole chain found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditVerification {
    /// Every entry fits the chain.
    pub intact: bool,
    /// Entries checked.
    pub entries: i64,
    /// The last entry before the first break (0: none) and its hash: compare them with the
    /// process log's.
    pub head_seq: i64,
    /// That entry's hash.
    pub head_hash: String,
    /// The first entry that does not fit, if any.
    pub broken_at: Option<i64>,
    /// Why it does not.
    pub problem: Option<String>,
    /// Entries that do not fit, the first 100 of them. After a break the check goes on from
    /// the broken entry's stored hash, so an entry changed in place shows alone and the
    /// entries after it still verify.
    pub breaks: Vec<AuditBreak>,
    /// How many entries do not fit (also those past the listed 100).
    pub broken_entries: i64,
}

/// An entry that does not fit the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditBreak {
    /// The entry's sequence number.
    pub seq: i64,
    /// Why it does not fit.
    pub problem: String,
}

/// The key and the lock that makes appends one at a time.
pub(crate) struct AuditChain {
    key: [u8; KEY_BYTES],
    append: tokio::sync::Mutex<()>,
    refusals: parking_lot::Mutex<RefusalWindows>,
}

impl std::fmt::Debug for AuditChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditChain { key: <hidden> }")
    }
}

impl AuditChain {
    /// Reads the key from `path`, or makes one there (readable by the owner only) when the log
    /// is empty. A log with entries and no key is refused: a new key would make every old
    /// entry fail to verify, which is what a forger would want.
    pub(crate) fn open(path: &Path, entries: i64) -> Result<Self, RegistryError> {
        let problem = |what: &str, e: &dyn std::fmt::Display| {
            RegistryError::Open(format!("{} ({what}): {e}", path.display()))
        };
        let key = match std::fs::read(path) {
            Ok(bytes) => key_of(&bytes).map_err(|e| problem("the audit key", &e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && entries > 0 => {
                return Err(RegistryError::Open(format!(
                    "the audit log holds {entries} entries but its key {} is missing: restore \
                     the key from a backup. If it is lost for good, `fabrik audit set-aside \
                     --data-dir DIR` keeps the old entries in a table of their own (they can no \
                     longer be verified) and the next start begins a new chain",
                    path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_BYTES];
                getrandom::fill(&mut key).map_err(|e| problem("making the audit key", &e))?;
                create_private(path, &key).map_err(|e| problem("writing the audit key", &e))?
            }
            Err(e) => return Err(problem("reading the audit key", &e)),
        };
        Ok(Self {
            key,
            append: tokio::sync::Mutex::new(()),
            refusals: parking_lot::Mutex::default(),
        })
    }

    fn hash(&self, previous: &str, seq: i64, time: i64, event: &AuditEvent) -> String {
        // `new_from_slice` refuses no key length for HMAC.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        // Each field length-prefixed, so no two different entries hash the same bytes.
        let fields: [&[u8]; 7] = [
            previous.as_bytes(),
            &seq.to_le_bytes(),
            &time.to_le_bytes(),
            event.actor.as_bytes(),
            event.action.as_bytes(),
            event.target.as_bytes(),
            &event.status.to_le_bytes(),
        ];
        for field in fields {
            mac.update(&(field.len() as u64).to_le_bytes());
            mac.update(field);
        }
        let digest = mac.finalize().into_bytes();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A key file's bytes as a key.
fn key_of(bytes: &[u8]) -> std::io::Result<[u8; KEY_BYTES]> {
    <[u8; KEY_BYTES]>::try_from(bytes)
        .map_err(|_| std::io::Error::other(format!("{} bytes, expected {KEY_BYTES}", bytes.len())))
}

/// Writes `bytes` to a new file at `path`, readable by the owner only, and syncs it; fails if
/// the file exists.
fn write_new_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Writes the key whole to a temporary file and links it into place, so a crash never leaves
/// a short key and, when two processes race, both end up with the one that was linked first.
fn create_private(path: &Path, key: &[u8; KEY_BYTES]) -> std::io::Result<[u8; KEY_BYTES]> {
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| std::io::Error::other(e.to_string()))?;
    let temporary = path.with_extension(format!("tmp-{:016x}", u64::from_le_bytes(suffix)));
    let written = write_new_private(&temporary, key);
    let linked = written.and_then(|()| std::fs::hard_link(&temporary, path));
    // The temporary name goes whatever happened; the key is at `path` or was never placed.
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(*key),
        // A filesystem without hard links (FAT, some network mounts): write in place, still
        // never over an existing key.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::Unsupported | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            write_new_private(path, key)?;
            Ok(*key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => key_of(&std::fs::read(path)?),
        Err(e) => Err(e),
    }
}

/// `text` cut to `max` characters, marked with `…` when cut.
fn clipped(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text,
        Some((end, _)) => {
            let mut cut = text[..end].to_owned();
            cut.push('…');
            cut
        }
    }
}

fn entry_of(row: &sqlx::sqlite::SqliteRow) -> Result<AuditEntry, RegistryError> {
    Ok(AuditEntry {
        seq: row.try_get("seq")?,
        time: row.try_get("time")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        status: u16::try_from(row.try_get::<i64, _>("status")?).unwrap_or(u16::MAX),
        hash: row.try_get("hash")?,
    })
}

impl Registry {
    /// Appends an entry to the audit log and returns it; also writes it to the process log.
    /// Actor, action and target longer than 128, 256 and 512 characters are cut.
    pub async fn audit(&self, event: AuditEvent) -> Result<AuditEntry, RegistryError> {
        let entry = self.append_audit(event).await;
        self.record_held_back_refusals(Instant::now(), false).await;
        entry
    }

    /// Appends a refusal (a failed sign-in, a missing role): the first ten per actor and kind
    /// (sign-ins, other requests) in ten minutes one by one, the rest counted and recorded as
    /// one entry once the ten minutes are over. `None` when held back.
    pub async fn audit_refusal(
        &self,
        event: AuditEvent,
    ) -> Result<Option<AuditEntry>, RegistryError> {
        self.audit_refusal_at(event, Instant::now()).await
    }

    async fn audit_refusal_at(
        &self,
        event: AuditEvent,
        now: Instant,
    ) -> Result<Option<AuditEntry>, RegistryError> {
        self.record_held_back_refusals(now, false).await;
        let admitted = self.audit.refusals.lock().admit(&event, now, now_ns());
        if !admitted {
            return Ok(None);
        }
        self.append_audit(event).await.map(Some)
    }

    /// Records the summaries of refusal windows that have ended (all of them with `all`, at
    /// shutdown). Called with every entry and every second by the registry's task, so a
    /// summary waits at most a second past its window. One that cannot be written is logged
    /// whole, the process log being the other copy of the audit log.
    pub async fn flush_audit_refusals(&self, all: bool) {
        self.record_held_back_refusals(Instant::now(), all).await;
    }

    async fn record_held_back_refusals(&self, now: Instant, all: bool) {
        let due = self.audit.refusals.lock().due(now, all);
        for summary in due {
            if let Err(e) = self.append_audit(summary.clone()).await {
                tracing::error!(
                    target: "fabrik::audit",
                    actor = %summary.actor,
                    action = %summary.action,
                    target_path = %summary.target,
                    status = summary.status,
                    error = %e,
                    "Could not record held-back refusals in the audit log."
                );
            }
        }
    }

    async fn append_audit(&self, event: AuditEvent) -> Result<AuditEntry, RegistryError> {
        let event = AuditEvent {
            actor: clipped(event.actor, MAX_ACTOR_CHARS),
            action: clipped(event.action, MAX_ACTION_CHARS),
            target: clipped(event.target, MAX_TARGET_CHARS),
            status: event.status,
        };
        let chain = &self.audit;
        let _one_at_a_time = chain.append.lock().await;
        let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        let (previous_seq, previous_hash) = match last {
            Some(row) => (
                row.try_get::<i64, _>("seq")?,
                row.try_get::<String, _>("hash")?,
            ),
            None => (0, GENESIS.to_owned()),
        };
        let seq = previous_seq + 1;
        let time = now_ns();
        let hash = chain.hash(&previous_hash, seq, time, &event);
        sqlx::query(
            "INSERT INTO audit_log (seq, time, actor, action, target, status, hash) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(seq)
        .bind(time)
        .bind(&event.actor)
        .bind(&event.action)
        .bind(&event.target)
        .bind(i64::from(event.status))
        .bind(&hash)
        .execute(&self.pool)
        .await?;
        tracing::info!(
            target: "fabrik::audit",
            seq,
            actor = %event.actor,
            action = %event.action,
            target_path = %event.target,
            status = event.status,
            hash = %hash,
            "Audit."
        );
        Ok(AuditEntry {
            seq,
            time,
            actor: event.actor,
            action: event.action,
            target: event.target,
            status: event.status,
            hash,
        })
    }

    /// Entries newest first, those before `before_seq` when given, at most `limit`.
    pub async fn audit_entries(
        &self,
        before_seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, RegistryError> {
        let rows = sqlx::query(
            "SELECT seq, time, actor, action, target, status, hash FROM audit_log \
             WHERE seq < ? ORDER BY seq DESC LIMIT ?",
        )
        .bind(before_seq.unwrap_or(i64::MAX))
        .bind(limit.clamp(1, 10_000))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry_of).collect()
    }

    /// The entries `actor` made, newest first, at most `limit` (a person's data, GDPR Art. 15).
    pub async fn audit_entries_by(
        &self,
        actor: &str,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, RegistryError> {
        let rows = sqlx::query(
            "SELECT seq, time, actor, action, target, status, hash FROM audit_log \
             WHERE actor = ? ORDER BY seq DESC LIMIT ?",
        )
        .bind(actor)
        .bind(limit.clamp(1, 100_000))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry_of).collect()
    }

    /// Entries of requests about `name`: those whose route names it where the route takes
    /// a name or id (`PUT /api/v1/users/{name}/password` with target
    /// `/api/v1/users/ana/password`), newest first, at most `limit`, and whether there were
    /// more. The whole log is read, page by page: a name may be anywhere in it.
    pub async fn audit_entries_about(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, bool), RegistryError> {
        const PAGE: i64 = 10_000;
        let mut found = Vec::new();
        let mut before = i64::MAX;
        loop {
            let rows = sqlx::query(
                "SELECT seq, time, actor, action, target, status, hash FROM audit_log \
                 WHERE seq < ? ORDER BY seq DESC LIMIT ?",
            )
            .bind(before)
            .bind(PAGE)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                return Ok((found, false));
            }
            for row in &rows {
                let entry = entry_of(row)?;
                before = entry.seq;
                if route_names(&entry.action, &entry.target, name) {
                    if found.len() == limit {
                        return Ok((found, true));
                    }
                    found.push(entry);
                }
            }
        }
    }

    /// Logs set aside by `fabrik audit set-aside` (their tables), which still hold names.
    pub async fn set_aside_audit_logs(&self) -> Result<Vec<String>, RegistryError> {
        Ok(sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name LIKE 'audit\\_log\\_set\\_aside\\_%' ESCAPE '\\' ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Recomputes the chain from the first entry and names the entries that do not fit.
    pub async fn verify_audit(&self) -> Result<AuditVerification, RegistryError> {
        const PAGE: i64 = 5_000;
        let chain = &self.audit;
        let mut report = AuditVerification {
            intact: true,
            entries: 0,
            head_seq: 0,
            head_hash: GENESIS.to_owned(),
            broken_at: None,
            problem: None,
            breaks: Vec::new(),
            broken_entries: 0,
        };
        // The entry the next one must follow: the last one read, fitting or not.
        let (mut previous_seq, mut previous_hash) = (0_i64, GENESIS.to_owned());
        // Rows whose number is not an integer (NULL or text: the column is not a rowid alias,
        // so SQLite takes them) cannot be put in order: they are counted as breaks.
        let misnumbered: i64 =
            sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE typeof(seq) != 'integer'")
                .fetch_one(&self.pool)
                .await?;
        if misnumbered > 0 {
            let problem = format!(
                "{misnumbered} row(s) have no integer number (NULL or text), which Fabrik never \
                 writes: they were added behind Fabrik's back"
            );
            report.intact = false;
            report.entries += misnumbered;
            report.broken_entries += misnumbered;
            report.broken_at = Some(0);
            report.problem = Some(problem.clone());
            report.breaks.push(AuditBreak { seq: 0, problem });
        }
        // Every other row, also any with a number below 1 that Fabrik never writes; the first
        // page starts at the lowest number itself.
        let mut read_up_to: Option<i64> = None;
        loop {
            let rows = sqlx::query(
                "SELECT seq, time, actor, action, target, status, hash FROM audit_log \
                 WHERE typeof(seq) = 'integer' AND (? OR seq > ?) ORDER BY seq LIMIT ?",
            )
            .bind(read_up_to.is_none())
            .bind(read_up_to.unwrap_or(i64::MIN))
            .bind(PAGE)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let entry = entry_of(row)?;
                read_up_to = Some(entry.seq);
                report.entries += 1;
                let event = AuditEvent {
                    actor: entry.actor.clone(),
                    action: entry.action.clone(),
                    target: entry.target.clone(),
                    status: entry.status,
                };
                let problem = if entry.seq < 1 {
                    Some(format!(
                        "entry {} has a number below 1, which Fabrik never writes: it was \
                         added behind Fabrik's back",
                        entry.seq
                    ))
                } else if Some(entry.seq) != previous_seq.checked_add(1) {
                    Some(format!(
                        "entry {} follows entry {previous_seq}: entries {} to {} are missing",
                        entry.seq,
                        previous_seq + 1,
                        entry.seq - 1
                    ))
                } else if chain.hash(&previous_hash, entry.seq, entry.time, &event) != entry.hash {
                    Some(format!(
                        "entry {} does not match its hash: it was changed, or the entry before \
                         it was, or the audit key is not the one it was written with",
                        entry.seq
                    ))
                } else {
                    None
                };
                match problem {
                    None if report.intact => {
                        report.head_seq = entry.seq;
                        report.head_hash.clone_from(&entry.hash);
                    }
                    None => {}
                    Some(problem) => {
                        if report.intact {
                            report.intact = false;
                            report.broken_at = Some(entry.seq);
                            report.problem = Some(problem.clone());
                        }
                        report.broken_entries += 1;
                        if report.breaks.len() < MAX_LISTED_BREAKS {
                            report.breaks.push(AuditBreak {
                                seq: entry.seq,
                                problem,
                            });
                        }
                    }
                }
                if entry.seq >= 1 {
                    previous_seq = entry.seq;
                    previous_hash = entry.hash;
                }
            }
        }
        Ok(report)
    }
}

/// Moves the audit log of the registry database at `db_path` aside, into a table named after
/// the time, together with its key if there is one, so the next start begins a new chain.
/// For a key that is lost for good: the old entries stay readable but can no longer be
/// verified. Returns the table that holds them. Fabrik must not be running.
pub async fn set_aside(db_path: &Path) -> Result<String, RegistryError> {
    if !db_path.exists() {
        return Err(RegistryError::Open(format!(
            "{}: no registry database there",
            db_path.display()
        )));
    }
    let pool = crate::connect(db_path).await?;
    crate::schema::migrate(&pool).await?;
    let stamp = now_ns() / 1_000_000_000;
    let table = format!("audit_log_set_aside_{stamp}");
    let mut tx = pool.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE audit_log RENAME TO {table}"
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query(crate::schema::AUDIT_LOG_TABLE)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    pool.close().await;
    let key = db_path.with_file_name("audit.key");
    if key.exists() {
        let kept = db_path.with_file_name(format!("audit.key.set-aside-{stamp}"));
        std::fs::rename(&key, &kept).map_err(|e| {
            RegistryError::Open(format!(
                "moving {} to {}: {e}",
                key.display(),
                kept.display()
            ))
        })?;
    }
    tracing::warn!(
        table,
        "The audit log was set aside; the next start begins a new chain."
    );
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> AuditEvent {
        AuditEvent {
            actor: format!("user-{n}"),
            action: "PUT /api/v1/pipelines/{name}".into(),
            target: format!("/api/v1/pipelines/p{n}"),
            status: 200,
        }
    }

    #[tokio::test]
    async fn the_chain_verifies_and_names_the_first_changed_or_missing_entry() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("registry.db"))
            .await
            .unwrap();
        let empty = registry.verify_audit().await.unwrap();
        assert!(empty.intact && empty.entries == 0 && empty.head_hash == GENESIS);
        let mut last = None;
        for n in 1..=5 {
            last = Some(registry.audit(event(n)).await.unwrap());
        }
        let last = last.unwrap();
        let check = registry.verify_audit().await.unwrap();
        assert!(check.intact, "{check:?}");
        assert_eq!((check.entries, check.head_seq), (5, 5));
        assert_eq!(check.head_hash, last.hash);
        let newest = registry.audit_entries(None, 2).await.unwrap();
        assert_eq!(newest.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5, 4]);
        assert_eq!(registry.audit_entries(Some(2), 10).await.unwrap()[0].seq, 1);

        // Someone with write access to the database rewrites who did entry 3: only entry 3
        // is named, the entries after it still fit the hash it has.
        sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
            .execute(&registry.pool)
            .await
            .unwrap();
        let check = registry.verify_audit().await.unwrap();
        assert!(!check.intact);
        assert_eq!((check.broken_at, check.head_seq), (Some(3), 2));
        assert_eq!(check.broken_entries, 1);
        assert_eq!(check.breaks.len(), 1);
        assert!(
            check
                .problem
                .as_deref()
                .unwrap()
                .contains("entry 3 does not match"),
            "{check:?}"
        );
        sqlx::query("UPDATE audit_log SET actor = 'user-3' WHERE seq = 3")
            .execute(&registry.pool)
            .await
            .unwrap();
        assert!(registry.verify_audit().await.unwrap().intact);

        // ... or removes entry 4, and adds an entry before the first.
        sqlx::query("DELETE FROM audit_log WHERE seq = 4")
            .execute(&registry.pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO audit_log (seq, time, actor, action, target, status, hash) \
             SELECT 0, time, 'mallory', action, target, status, hash FROM audit_log WHERE seq = 1",
        )
        .execute(&registry.pool)
        .await
        .unwrap();
        let check = registry.verify_audit().await.unwrap();
        assert_eq!(check.entries, 5);
        assert_eq!((check.broken_at, check.head_seq), (Some(0), 0));
        let broken: Vec<i64> = check.breaks.iter().map(|b| b.seq).collect();
        assert_eq!(broken, vec![0, 5], "{check:?}");
        assert!(check.breaks[0].problem.contains("below 1"), "{check:?}");
        assert!(
            check.breaks[1]
                .problem
                .contains("entries 4 to 4 are missing"),
            "{check:?}"
        );
    }

    #[tokio::test]
    async fn long_fields_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("registry.db"))
            .await
            .unwrap();
        let entry = registry
            .audit(AuditEvent {
                actor: "ä".repeat(1_000),
                action: "POST /x".into(),
                target: format!("/api/v1/devices/{}", "x".repeat(100_000)),
                status: 404,
            })
            .await
            .unwrap();
        assert_eq!(entry.actor.chars().count(), MAX_ACTOR_CHARS + 1);
        assert!(entry.actor.ends_with('…'));
        assert_eq!(entry.target.chars().count(), MAX_TARGET_CHARS + 1);
        assert_eq!(entry.action, "POST /x");
        assert!(registry.verify_audit().await.unwrap().intact);
    }

    #[tokio::test]
    async fn a_chain_rewritten_without_the_key_does_not_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.db");
        {
            let registry = Registry::open(&path).await.unwrap();
            for n in 1..=3 {
                registry.audit(event(n)).await.unwrap();
            }
        }
        let key_file = dir.path().join("audit.key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // The same key after a restart: the chain goes on.
        let registry = Registry::open(&path).await.unwrap();
        assert_eq!(registry.audit(event(4)).await.unwrap().seq, 4);
        assert!(registry.verify_audit().await.unwrap().intact);
        drop(registry);
        // A lost key is not silently replaced: the old entries would all stop verifying.
        std::fs::remove_file(&key_file).unwrap();
        let error = Registry::open(&path).await.unwrap_err().to_string();
        assert!(
            error.contains("4 entries") && error.contains("audit.key is missing"),
            "{error}"
        );
        assert!(!key_file.exists());
        // Another key (a forger's): nothing verifies from the first entry on.
        std::fs::write(&key_file, [7u8; KEY_BYTES]).unwrap();
        let registry = Registry::open(&path).await.unwrap();
        let check = registry.verify_audit().await.unwrap();
        assert_eq!((check.intact, check.broken_at), (false, Some(1)));
        assert_eq!(check.broken_entries, 4);
        assert!(check.problem.unwrap().contains("audit key"));
        drop(registry);
        std::fs::write(&key_file, b"short").unwrap();
        let error = Registry::open(&path).await.unwrap_err().to_string();
        assert!(
            error.contains("audit.key") && error.contains("5 bytes"),
            "{error}"
        );
        // Set aside for good: the old entries stay readable in their own table, the key file
        // is kept beside them, and a new chain starts.
        let table = set_aside(&path).await.unwrap();
        assert!(!key_file.exists());
        let registry = Registry::open(&path).await.unwrap();
        let kept: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&registry.pool)
                .await
                .unwrap();
        assert_eq!(kept, 4);
        assert_eq!(registry.audit(event(1)).await.unwrap().seq, 1);
        assert!(registry.verify_audit().await.unwrap().intact);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.contains("tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn refusals_past_ten_become_one_entry_once_their_window_ends() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("registry.db"))
            .await
            .unwrap();
        let start = Instant::now();
        // A viewer probing many routes and methods: one window for all of them.
        let mut recorded = 0;
        for n in 0..40 {
            let event = AuditEvent {
                actor: "vic".into(),
                action: format!("{} /api/v1/route-{n}", ["PUT", "DELETE", "POST"][n % 3]),
                target: format!("/api/v1/route-{n}"),
                status: 403,
            };
            if registry
                .audit_refusal_at(event, start)
                .await
                .unwrap()
                .is_some()
            {
                recorded += 1;
            }
        }
        assert_eq!(recorded, 10);
        // Sign-ins are a kind of their own.
        let sign_in = AuditEvent {
            actor: "vic".into(),
            action: "sign-in".into(),
            target: "/api/v1/session".into(),
            status: 401,
        };
        let entry = registry.audit_refusal_at(sign_in.clone(), start).await;
        assert!(entry.unwrap().is_some());
        // The next refusal after the window writes the summary before itself.
        let later = start + Duration::from_secs(601);
        assert!(
            registry
                .audit_refusal_at(sign_in, later)
                .await
                .unwrap()
                .is_some()
        );
        let entries = registry.audit_entries(None, 100).await.unwrap();
        assert_eq!(entries.len(), 13, "{entries:?}");
        let summary = entries
            .iter()
            .find(|e| e.action == "request refusals not recorded one by one")
            .expect("a summary entry");
        assert_eq!(summary.actor, "vic");
        assert!(
            summary.target.starts_with("30 more from")
                && summary
                    .target
                    .ends_with("PUT /api/v1/route-39 /api/v1/route-39"),
            "{summary:?}"
        );
        assert!(registry.verify_audit().await.unwrap().intact);

        // Held back and still in their window at shutdown: written all the same.
        for n in 0..12 {
            let event = AuditEvent {
                actor: "ana".into(),
                action: "DELETE /api/v1/users/{name}".into(),
                target: format!("/api/v1/users/u{n}"),
                status: 403,
            };
            registry.audit_refusal(event).await.unwrap();
        }
        registry.flush_audit_refusals(true).await;
        let newest = &registry.audit_entries(None, 1).await.unwrap()[0];
        assert_eq!(newest.actor, "ana");
        assert!(newest.target.starts_with("2 more from"), "{newest:?}");
    }

    #[tokio::test]
    async fn appends_at_once_make_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("registry.db"))
            .await
            .unwrap();
        let appends = (1..=20).map(|n| {
            let registry = registry.clone();
            tokio::spawn(async move { registry.audit(event(n)).await.unwrap() })
        });
        for append in appends.collect::<Vec<_>>() {
            append.await.unwrap();
        }
        let check = registry.verify_audit().await.unwrap();
        assert!(check.intact, "{check:?}");
        assert_eq!(check.entries, 20);
    }
}

#[cfg(test)]
mod about_tests {
    use super::route_names;

    #[test]
    fn a_request_is_about_a_name_only_where_its_route_takes_one() {
        let password = "PUT /api/v1/users/{name}/password";
        assert!(route_names(password, "/api/v1/users/ana/password", "ana"));
        assert!(!route_names(
            password,
            "/api/v1/users/ana/password",
            "users"
        ));
        assert!(!route_names(
            "POST /api/v1/admin/compact",
            "/api/v1/admin/compact",
            "admin"
        ));
        assert!(route_names(
            "GET /api/v1/people/{name}",
            "/api/v1/people/Ana%20M%C3%BCller?x=1",
            "Ana Müller"
        ));
        assert!(!route_names("sign-in", "ana", "ana"));
    }
}
