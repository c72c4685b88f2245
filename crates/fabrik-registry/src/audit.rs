//! The audit log: who changed what through the API, and who signed in or failed to, as a
//! hash chain. Each entry's `hash` is an HMAC-SHA256, under a key kept in its own file beside
//! the database, of the previous entry's hash and the entry's fields: changing, removing or
//! reordering an entry breaks every hash after it, and forging a chain needs the key.
//! [`Registry::verify_audit`] recomputes the chain and names the first entry that does not fit.
//!
//! What the chain cannot show by itself is the newest entries cut off the end (the shorter
//! chain is still valid): every entry is also written to the process log with its hash, so a
//! log shipped off the machine holds the head to compare with.

use std::path::Path;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::Row;

use crate::{Registry, RegistryError, now_ns};

/// The previous hash of the first entry.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Bytes of the chain key.
const KEY_BYTES: usize = 32;

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
    /// The last entry that fits (0: none) and its hash: compare them with the process log's.
    pub head_seq: i64,
    /// That entry's hash.
    pub head_hash: String,
    /// The first entry that does not fit, if any.
    pub broken_at: Option<i64>,
    /// Why it does not.
    pub problem: Option<String>,
}

/// The key and the lock that makes appends one at a time.
pub(crate) struct AuditChain {
    key: [u8; KEY_BYTES],
    append: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for AuditChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditChain { key: <hidden> }")
    }
}

impl AuditChain {
    /// Reads the key from `path`, or makes one there (readable by the owner only).
    pub(crate) fn open(path: &Path) -> Result<Self, RegistryError> {
        let problem = |what: &str, e: &dyn std::fmt::Display| {
            RegistryError::Open(format!("{} ({what}): {e}", path.display()))
        };
        let key = match std::fs::read(path) {
            Ok(bytes) => <[u8; KEY_BYTES]>::try_from(bytes.as_slice()).map_err(|_| {
                problem(
                    "the audit key",
                    &format!("{} bytes, expected {KEY_BYTES}", bytes.len()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_BYTES];
                getrandom::fill(&mut key).map_err(|e| problem("making the audit key", &e))?;
                write_private(path, &key).map_err(|e| problem("writing the audit key", &e))?;
                key
            }
            Err(e) => return Err(problem("reading the audit key", &e)),
        };
        Ok(Self {
            key,
            append: tokio::sync::Mutex::new(()),
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

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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
    pub async fn audit(&self, event: AuditEvent) -> Result<AuditEntry, RegistryError> {
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

    /// Recomputes the chain from the first entry and says where it first breaks.
    pub async fn verify_audit(&self) -> Result<AuditVerification, RegistryError> {
        const PAGE: i64 = 5_000;
        let chain = &self.audit;
        let mut checked = 0;
        let (mut head_seq, mut head_hash) = (0_i64, GENESIS.to_owned());
        loop {
            let rows = sqlx::query(
                "SELECT seq, time, actor, action, target, status, hash FROM audit_log \
                 WHERE seq > ? ORDER BY seq LIMIT ?",
            )
            .bind(head_seq)
            .bind(PAGE)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let entry = entry_of(row)?;
                checked += 1;
                let problem = if entry.seq != head_seq + 1 {
                    Some(format!(
                        "entry {} follows entry {head_seq}: entries {} to {} are missing",
                        entry.seq,
                        head_seq + 1,
                        entry.seq - 1
                    ))
                } else {
                    let event = AuditEvent {
                        actor: entry.actor.clone(),
                        action: entry.action.clone(),
                        target: entry.target.clone(),
                        status: entry.status,
                    };
                    (chain.hash(&head_hash, entry.seq, entry.time, &event) != entry.hash).then(
                        || {
                            format!(
                                "entry {} does not match its hash: it was changed, or the chain \
                                 before it was rewritten, or the audit key is not the one it \
                                 was written with",
                                entry.seq
                            )
                        },
                    )
                };
                if let Some(problem) = problem {
                    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log")
                        .fetch_one(&self.pool)
                        .await?;
                    return Ok(AuditVerification {
                        intact: false,
                        entries: total,
                        head_seq,
                        head_hash,
                        broken_at: Some(entry.seq),
                        problem: Some(problem),
                    });
                }
                head_seq = entry.seq;
                head_hash = entry.hash;
            }
        }
        Ok(AuditVerification {
            intact: true,
            entries: checked,
            head_seq,
            head_hash,
            broken_at: None,
            problem: None,
        })
    }
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

        // Someone with write access to the database rewrites who did entry 3.
        sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
            .execute(&registry.pool)
            .await
            .unwrap();
        let check = registry.verify_audit().await.unwrap();
        assert!(!check.intact);
        assert_eq!((check.broken_at, check.head_seq), (Some(3), 2));
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

        // ... or removes entry 4.
        sqlx::query("DELETE FROM audit_log WHERE seq = 4")
            .execute(&registry.pool)
            .await
            .unwrap();
        let check = registry.verify_audit().await.unwrap();
        assert_eq!(check.broken_at, Some(5));
        assert!(
            check
                .problem
                .as_deref()
                .unwrap()
                .contains("entries 4 to 4 are missing"),
            "{check:?}"
        );
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
        // Another key (a forger's, or a lost one): nothing verifies from the first entry on.
        std::fs::remove_file(&key_file).unwrap();
        let registry = Registry::open(&path).await.unwrap();
        let check = registry.verify_audit().await.unwrap();
        assert_eq!((check.intact, check.broken_at), (false, Some(1)));
        assert!(check.problem.unwrap().contains("audit key"));
        std::fs::write(&key_file, b"short").unwrap();
        let error = Registry::open(&path).await.unwrap_err().to_string();
        assert!(
            error.contains("audit.key") && error.contains("5 bytes"),
            "{error}"
        );
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
