//! The audit log: who changed what through the API, and who signed in or failed to, as a
//! hash chain. Each entry's `hash` is an HMAC-SHA256, under a key kept in its own file beside
//! the database, of the previous entry's hash and the entry's fields: changing, removing or
//! reordering an entry breaks every hash after it, and forging a chain needs the key.
//! [`Registry::verify_audit`] recomputes the chain and names every entry that does not fit.
//!
//! What the chain cannot show by itself is the newest entries cut off the end (the shorter
//! chain is still valid): every entry is also written to the process log with its hash, so a
//! log shipped off the machine holds the head to compare with.
//!
//! Names can be erased without breaking the chain (decision 0040): an entry's actor and target
//! enter its hash as salted SHA-256 digests, so erasing one replaces the name with
//! [`ERASED`] and its salt with its digest, and an erasure entry appended to the chain counts
//! and digests the fields it erased, so erasing by hand, without the key, shows as a break.

use std::path::Path;
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::{Registry, RegistryError, now_ns};

mod erasure;
mod refusals;
pub use erasure::PersonErasure;
use refusals::RefusalWindows;

/// The previous hash of the first entry.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Bytes of the chain key.
const KEY_BYTES: usize = 32;

/// Entries written before names could be erased: hashed over the names themselves.
const FORMAT_NAMES: i64 = 1;
/// Entries whose actor and target enter the hash as salted digests, so they can be erased.
const FORMAT_ERASABLE: i64 = 2;
/// Bytes of a field's salt: enough that an erased name cannot be guessed from its digest.
const SALT_BYTES: usize = 16;
/// What an erased name reads as.
pub const ERASED: &str = "(erased)";

/// The columns every read of entries takes, in [`StoredEntry::read`]'s terms.
macro_rules! entry_columns {
    () => {
        "seq, time, actor, action, target, status, hash, format, actor_salt, target_salt, \
         actor_digest, target_digest, actor_erased_by, target_erased_by, erasure"
    };
}

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
    if !is_person_route(route) {
        return false;
    }
    let path = target.split('?').next().unwrap_or_default();
    route
        .split('/')
        .zip(path.split('/'))
        .any(|(template, segment)| template == PERSON_PARAMETER && decoded(segment) == name)
}

/// The routes whose `{name}` is a person's: only there is a name in a request's path theirs
/// (a pipeline or a device may share a person's name).
const PERSON_ROUTES: [&str; 2] = ["/api/v1/users/{name}", "/api/v1/people/{name}"];
/// The parameter of [`PERSON_ROUTES`] that holds the name.
const PERSON_PARAMETER: &str = "{name}";

/// Whether `route` is one of [`PERSON_ROUTES`] or below one.
fn is_person_route(route: &str) -> bool {
    PERSON_ROUTES.iter().any(|person| {
        route
            .strip_prefix(person)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
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
    /// Its fields whose name was erased since (`actor`, `target`): they read `(erased)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub erased: Vec<String>,
    /// On an entry that erased a person's names: how many fields it erased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased_fields: Option<i64>,
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
    /// Entries with an erased name that still verify, through the digest that replaced it.
    #[serde(default)]
    pub erased_entries: i64,
    /// Entries written before names could be erased (format 1) whose names were erased since:
    /// their hash cannot be recomputed, so the check takes them as stored and goes on.
    #[serde(default)]
    pub unverifiable_entries: i64,
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
                     --data-dir DIR` (with `--database-url` or FABRIK__REGISTRY__DATABASE_URL \
                     for a PostgreSQL registry) keeps the old entries in a table of their own (they can no \
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

    /// The hash of a format-1 entry, over its names.
    fn hash_of_names(&self, previous: &str, seq: i64, time: i64, event: &AuditEvent) -> String {
        self.mac_hex(&[
            previous.as_bytes(),
            &seq.to_le_bytes(),
            &time.to_le_bytes(),
            event.actor.as_bytes(),
            event.action.as_bytes(),
            event.target.as_bytes(),
            &event.status.to_le_bytes(),
        ])
    }

    /// The hash of a format-2 entry, over the digests of its actor and target and, on an
    /// erasure entry, what it erased.
    fn hash_of_digests(&self, previous: &str, entry: &DigestedEntry<'_>) -> String {
        self.mac_hex(&[
            b"fabrik-audit-2",
            previous.as_bytes(),
            &entry.seq.to_le_bytes(),
            &entry.time.to_le_bytes(),
            &entry.actor,
            entry.action.as_bytes(),
            &entry.target,
            &entry.status.to_le_bytes(),
            entry.erasure.as_bytes(),
        ])
    }

    fn mac_hex(&self, fields: &[&[u8]]) -> String {
        // `new_from_slice` refuses no key length for HMAC.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        // Each field length-prefixed, so no two different entries hash the same bytes.
        for field in fields {
            mac.update(&(field.len() as u64).to_le_bytes());
            mac.update(field);
        }
        hex(&mac.finalize().into_bytes())
    }
}

/// A format-2 entry as its hash sees it.
struct DigestedEntry<'a> {
    seq: i64,
    time: i64,
    actor: [u8; 32],
    action: &'a str,
    target: [u8; 32],
    status: u16,
    /// `count:digest` on an erasure entry, empty otherwise.
    erasure: &'a str,
}

/// The salted digest by which a name enters a format-2 hash.
fn field_digest(salt: &[u8], value: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in [salt, value.as_bytes()] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex as bytes; `None` for anything else.
fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A fresh salt, as hex.
fn new_salt() -> Result<String, RegistryError> {
    let mut salt = [0u8; SALT_BYTES];
    getrandom::fill(&mut salt)
        .map_err(|e| RegistryError::Token(format!("making an audit salt: {e}")))?;
    Ok(hex(&salt))
}

/// How one name of a stored entry is proven: by its salt while it is there, by the digest
/// that replaced the salt once erased.
#[derive(Debug, Clone, Default)]
struct NameProof {
    salt: Option<String>,
    digest: Option<String>,
    erased_by: Option<i64>,
}

impl NameProof {
    /// The digest the entry's hash took for `value`, or why there is none.
    fn digest_of(&self, value: &str) -> Result<[u8; 32], &'static str> {
        if self.erased_by.is_some() {
            let digest = self.digest.as_deref().and_then(unhex).ok_or("no digest")?;
            return <[u8; 32]>::try_from(digest).map_err(|_| "a digest of the wrong length");
        }
        let salt = self.salt.as_deref().and_then(unhex).ok_or("no salt")?;
        Ok(field_digest(&salt, value))
    }
}

/// An entry as stored, with what proves its names.
struct StoredEntry {
    entry: AuditEntry,
    format: i64,
    actor: NameProof,
    target: NameProof,
    /// `count:digest` on an erasure entry.
    erasure: Option<String>,
}

impl StoredEntry {
    fn read(row: &sqlx::any::AnyRow) -> Result<Self, RegistryError> {
        let actor = NameProof {
            salt: row.try_get("actor_salt")?,
            digest: row.try_get("actor_digest")?,
            erased_by: row.try_get("actor_erased_by")?,
        };
        let target = NameProof {
            salt: row.try_get("target_salt")?,
            digest: row.try_get("target_digest")?,
            erased_by: row.try_get("target_erased_by")?,
        };
        let erasure: Option<String> = row.try_get("erasure")?;
        let mut erased = Vec::new();
        if actor.erased_by.is_some() {
            erased.push("actor".to_owned());
        }
        if target.erased_by.is_some() {
            erased.push("target".to_owned());
        }
        let erased_fields = erasure
            .as_deref()
            .and_then(|e| e.split_once(':'))
            .and_then(|(count, _)| count.parse().ok());
        Ok(Self {
            entry: AuditEntry {
                seq: row.try_get("seq")?,
                time: row.try_get("time")?,
                actor: row.try_get("actor")?,
                action: row.try_get("action")?,
                target: row.try_get("target")?,
                status: u16::try_from(row.try_get::<i64, _>("status")?).unwrap_or(u16::MAX),
                hash: row.try_get("hash")?,
                erased,
                erased_fields,
            },
            format: row.try_get("format")?,
            actor,
            target,
            erasure,
        })
    }

    /// Whether either name was erased.
    fn has_erased(&self) -> bool {
        self.actor.erased_by.is_some() || self.target.erased_by.is_some()
    }
}

/// The code of one erased field in an erasure entry's digest: the entry's number, doubled,
/// plus one for its target.
fn field_code(seq: i64, target: bool) -> u64 {
    (seq as u64) * 2 + u64::from(target)
}

/// One field an erasure entry erased, as its summary covers it: which field, the format of
/// its entry, and the text that replaced the name. Covering the format and the text means
/// neither can be changed afterwards, though the entry's own hash no longer covers the name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ErasedField {
    code: u64,
    format: i64,
    text: String,
}

/// `count:digest` of the erased fields, in ascending order of their codes: what an erasure
/// entry records (in the `erasure` column its hash covers).
fn erasure_summary(fields: &[ErasedField]) -> String {
    let mut sorted: Vec<&ErasedField> = fields.iter().collect();
    sorted.sort();
    let mut hasher = Sha256::new();
    for field in sorted {
        hasher.update(field.code.to_le_bytes());
        hasher.update(field.format.to_le_bytes());
        hasher.update((field.text.len() as u64).to_le_bytes());
        hasher.update(field.text.as_bytes());
    }
    format!("{}:{}", fields.len(), hex(&hasher.finalize()))
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

fn entry_of(row: &sqlx::any::AnyRow) -> Result<AuditEntry, RegistryError> {
    Ok(StoredEntry::read(row)?.entry)
}

/// Appends `event` after the entry (`previous_seq`, `previous_hash`) on `connection`, in
/// format 2, with `erasure` on an erasure entry; logs it to the process log too.
async fn insert_entry(
    chain: &AuditChain,
    connection: &mut sqlx::AnyConnection,
    event: AuditEvent,
    erasure: Option<String>,
) -> Result<AuditEntry, RegistryError> {
    let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *connection)
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
    let (actor_salt, target_salt) = (new_salt()?, new_salt()?);
    let salt_bytes = |salt: &str| unhex(salt).unwrap_or_default();
    let hash = chain.hash_of_digests(
        &previous_hash,
        &DigestedEntry {
            seq,
            time,
            actor: field_digest(&salt_bytes(&actor_salt), &event.actor),
            action: &event.action,
            target: field_digest(&salt_bytes(&target_salt), &event.target),
            status: event.status,
            erasure: erasure.as_deref().unwrap_or_default(),
        },
    );
    sqlx::query(
        "INSERT INTO audit_log (seq, time, actor, action, target, status, hash, format, \
         actor_salt, target_salt, erasure) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(seq)
    .bind(time)
    .bind(&event.actor)
    .bind(&event.action)
    .bind(&event.target)
    .bind(i64::from(event.status))
    .bind(&hash)
    .bind(FORMAT_ERASABLE)
    .bind(&actor_salt)
    .bind(&target_salt)
    .bind(&erasure)
    .execute(&mut *connection)
    .await?;
    tracing::info!(
        target: "fabrik::audit",
        seq,
        actor = %event.actor,
        action = %event.action,
        target_path = %event.target,
        status = event.status,
        hash = %hash,
        erasure = erasure.as_deref().unwrap_or_default(),
        "Audit."
    );
    let erased_fields = erasure
        .as_deref()
        .and_then(|e| e.split_once(':'))
        .and_then(|(count, _)| count.parse().ok());
    Ok(AuditEntry {
        seq,
        time,
        actor: event.actor,
        action: event.action,
        target: event.target,
        status: event.status,
        hash,
        erased: Vec::new(),
        erased_fields,
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
        let mut connection = self.pool.acquire().await?;
        insert_entry(chain, &mut connection, event, None).await
    }

    /// Entries newest first, those before `before_seq` when given, at most `limit`.
    pub async fn audit_entries(
        &self,
        before_seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, RegistryError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            entry_columns!(),
            " FROM audit_log WHERE seq < $1 ORDER BY seq DESC LIMIT $2"
        ))
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
        let rows = sqlx::query(concat!(
            "SELECT ",
            entry_columns!(),
            " FROM audit_log WHERE actor = $1 ORDER BY seq DESC LIMIT $2"
        ))
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
            let rows = sqlx::query(concat!(
                "SELECT ",
                entry_columns!(),
                " FROM audit_log WHERE seq < $1 ORDER BY seq DESC LIMIT $2"
            ))
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
        Ok(sqlx::query_scalar(self.dialect.pick(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name LIKE 'audit\\_log\\_set\\_aside\\_%' ESCAPE '\\' ORDER BY name",
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() \
             AND tablename LIKE 'audit\\_log\\_set\\_aside\\_%' ESCAPE '\\' ORDER BY tablename",
        ))
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
            erased_entries: 0,
            unverifiable_entries: 0,
        };
        // Fields marked erased, by the erasure entry that claims them, until it is reached.
        let mut claims = ErasureClaims::default();
        // Whether an entry of format 2 came before: none of format 1 may follow it.
        let mut after_erasable = false;
        let newest: Option<i64> = sqlx::query_scalar(self.dialect.pick(
            "SELECT max(seq) FROM audit_log WHERE typeof(seq) = 'integer'",
            "SELECT max(seq) FROM audit_log",
        ))
        .fetch_one(&self.pool)
        .await?;
        let newest = newest.unwrap_or(0);
        // The entry the next one must follow: the last one read, fitting or not.
        let (mut previous_seq, mut previous_hash) = (0_i64, GENESIS.to_owned());
        // Rows whose number is not an integer (NULL or text: the column is not a rowid alias,
        // so SQLite takes them) cannot be put in order: they are counted as breaks. A
        // PostgreSQL BIGINT key holds integers only.
        let misnumbered: i64 = sqlx::query_scalar(self.dialect.pick(
            "SELECT count(*) FROM audit_log WHERE typeof(seq) != 'integer'",
            "SELECT count(*) FROM audit_log WHERE seq IS NULL",
        ))
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
            let rows = sqlx::query(self.dialect.pick(
                concat!(
                    "SELECT ",
                    entry_columns!(),
                    " FROM audit_log WHERE typeof(seq) = 'integer' AND ($1 OR seq > $2) \
                     ORDER BY seq LIMIT $3"
                ),
                concat!(
                    "SELECT ",
                    entry_columns!(),
                    " FROM audit_log WHERE ($1 OR seq > $2) ORDER BY seq LIMIT $3"
                ),
            ))
            .bind(read_up_to.is_none())
            .bind(read_up_to.unwrap_or(i64::MIN))
            .bind(PAGE)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let stored = StoredEntry::read(row)?;
                let entry = &stored.entry;
                read_up_to = Some(entry.seq);
                report.entries += 1;
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
                } else {
                    let checked = check_entry(
                        chain,
                        &stored,
                        &previous_hash,
                        &mut claims,
                        newest,
                        after_erasable,
                    );
                    after_erasable |= stored.format == FORMAT_ERASABLE;
                    match checked {
                        Ok(Checked::Verified) => None,
                        Ok(Checked::Erased) => {
                            report.erased_entries += 1;
                            None
                        }
                        Ok(Checked::Unverifiable) => {
                            report.unverifiable_entries += 1;
                            None
                        }
                        Err(problem) => Some(problem),
                    }
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
                    previous_hash.clone_from(&entry.hash);
                }
            }
        }
        Ok(report)
    }
}

/// Erased fields by the erasure entry that marks them, until that entry is reached.
type ErasureClaims = std::collections::BTreeMap<i64, Vec<ErasedField>>;

/// How an entry that fits the chain was checked.
enum Checked {
    /// Its hash recomputed from its fields.
    Verified,
    /// Its hash recomputed, an erased name's digest standing in for it.
    Erased,
    /// Written over names that were erased since: taken as stored.
    Unverifiable,
}

/// Checks one entry that follows `previous_hash` in sequence: its hash, the erasure marks on
/// its fields (kept in `claims` for the erasure entry they name, at most `newest`), and, on an
/// erasure entry, that the fields marked as erased by it are the ones it counted.
fn check_entry(
    chain: &AuditChain,
    stored: &StoredEntry,
    previous_hash: &str,
    claims: &mut ErasureClaims,
    newest: i64,
    after_erasable: bool,
) -> Result<Checked, String> {
    let entry = &stored.entry;
    let seq = entry.seq;
    // Fabrik writes format 2 from its first entry after the upgrade on: an older format
    // later in the chain is an entry whose format was changed to escape its hash.
    if stored.format == FORMAT_NAMES && after_erasable {
        return Err(format!(
            "entry {seq} has format {FORMAT_NAMES} after entries of format \
             {FORMAT_ERASABLE}, which Fabrik never writes: it was changed"
        ));
    }
    for (field, proof, is_target, value) in [
        ("actor", &stored.actor, false, &entry.actor),
        ("target", &stored.target, true, &entry.target),
    ] {
        let Some(by) = proof.erased_by else { continue };
        if by <= seq || by > newest {
            return Err(format!(
                "entry {seq}'s {field} is marked as erased by entry {by}, which is not an \
                 entry after it: the mark was made behind Fabrik's back"
            ));
        }
        claims.entry(by).or_default().push(ErasedField {
            code: field_code(seq, is_target),
            format: stored.format,
            text: value.clone(),
        });
    }
    let claimed = claims.remove(&seq).unwrap_or_default();
    // Only a format-2 hash covers the summary: on an older entry it would vouch for nothing.
    if stored.erasure.is_some() && stored.format != FORMAT_ERASABLE {
        return Err(format!(
            "entry {seq} has format {} and an erasure summary, which Fabrik never writes: it \
             was changed",
            stored.format
        ));
    }
    match &stored.erasure {
        Some(summary) if erasure_summary(&claimed) != *summary => {
            return Err(format!(
                "entry {seq} erased {} field(s), but {} field(s) are marked as erased by it, \
                 or not the same ones: names were erased or restored behind Fabrik's back",
                entry.erased_fields.unwrap_or(0),
                claimed.len()
            ));
        }
        None if !claimed.is_empty() => {
            return Err(format!(
                "{} field(s) are marked as erased by entry {seq}, which erased nothing: names \
                 were erased behind Fabrik's back",
                claimed.len()
            ));
        }
        _ => {}
    }
    let changed = || {
        format!(
            "entry {seq} does not match its hash: it was changed, or the entry before it was, \
             or the audit key is not the one it was written with"
        )
    };
    match stored.format {
        FORMAT_NAMES if stored.has_erased() => Ok(Checked::Unverifiable),
        FORMAT_NAMES => {
            let event = AuditEvent {
                actor: entry.actor.clone(),
                action: entry.action.clone(),
                target: entry.target.clone(),
                status: entry.status,
            };
            if chain.hash_of_names(previous_hash, seq, entry.time, &event) == entry.hash {
                Ok(Checked::Verified)
            } else {
                Err(changed())
            }
        }
        FORMAT_ERASABLE => {
            let digest = |field: &str, proof: &NameProof, value: &str| {
                proof
                    .digest_of(value)
                    .map_err(|why| format!("entry {seq}'s {field} has {why}: it was changed"))
            };
            let digested = DigestedEntry {
                seq,
                time: entry.time,
                actor: digest("actor", &stored.actor, &entry.actor)?,
                action: &entry.action,
                target: digest("target", &stored.target, &entry.target)?,
                status: entry.status,
                erasure: stored.erasure.as_deref().unwrap_or_default(),
            };
            if chain.hash_of_digests(previous_hash, &digested) != entry.hash {
                Err(changed())
            } else if stored.has_erased() {
                Ok(Checked::Erased)
            } else {
                Ok(Checked::Verified)
            }
        }
        other => Err(format!(
            "entry {seq} has format {other}, which Fabrik never writes: it was changed"
        )),
    }
}

/// Moves the audit log of the registry at `location` aside, into a table named after the
/// time, together with its key if there is one, so the next start begins a new chain. For a
/// key that is lost for good: the old entries stay readable but can no longer be verified.
/// Returns the table that holds them. Fabrik must not be running.
pub async fn set_aside(location: &crate::Location) -> Result<String, RegistryError> {
    if let crate::Location::File(db_path) = location
        && !db_path.exists()
    {
        return Err(RegistryError::Open(format!(
            "{}: no registry database there",
            db_path.display()
        )));
    }
    let (pool, dialect) = crate::database::connect(location).await?;
    crate::schema::migrate(&pool, dialect).await?;
    let stamp = now_ns() / 1_000_000_000;
    let table = format!("audit_log_set_aside_{stamp}");
    let mut tx = pool.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE audit_log RENAME TO {table}"
    )))
    .execute(&mut *tx)
    .await?;
    if dialect == crate::Dialect::Postgres {
        // The new table's key index takes the old one's name.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER INDEX audit_log_pkey RENAME TO {table}_pkey"
        )))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(crate::schema::AUDIT_LOG_TABLE)
        .execute(&mut *tx)
        .await?;
    for statement in crate::schema::AUDIT_LOG_ERASABLE.split(';') {
        sqlx::query(statement.trim()).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    pool.close().await;
    let key = location.audit_key();
    if key.exists() {
        let kept = key.with_file_name(format!(
            "{}.set-aside-{stamp}",
            key.file_name().unwrap_or_default().to_string_lossy()
        ));
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
        let table = set_aside(&crate::test_database::location(&path).await)
            .await
            .unwrap();
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
        // A pipeline or a device may be named like a person: not theirs.
        assert!(!route_names(
            "PUT /api/v1/pipelines/{name}",
            "/api/v1/pipelines/ana",
            "ana"
        ));
        assert!(!route_names(
            "GET /api/v1/usersx/{name}",
            "/api/v1/usersx/ana",
            "ana"
        ));
    }
}
