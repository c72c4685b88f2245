//! Where the registry's tables live — an embedded SQLite file or a PostgreSQL database — and
//! the few statements that differ between the two (decision 0055).
//!
//! Every other query is written once, with numbered placeholders (`$1`) that both take, and
//! run through sqlx's `Any` driver.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

use crate::RegistryError;

/// Where the registry keeps its tables.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// An SQLite file, created if missing; the audit log's key is `audit.key` beside it.
    File(PathBuf),
    /// A PostgreSQL database (`postgres://user@host:port/database?sslmode=…`), which must
    /// exist; the audit log's key is the file `audit_key` (created on first start).
    Postgres {
        /// The connection URL, password included when one is needed.
        url: String,
        /// Where the audit chain's key is kept.
        audit_key: PathBuf,
    },
}

impl Location {
    /// The file of the audit chain's key.
    pub fn audit_key(&self) -> PathBuf {
        match self {
            Self::File(path) => path.with_file_name("audit.key"),
            Self::Postgres { audit_key, .. } => audit_key.clone(),
        }
    }

    /// The location as it may be shown: a PostgreSQL URL without its password.
    pub fn display(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Postgres { url, .. } => redacted(url),
        }
    }
}

/// Shows the location as [`Location::display`] does: never a password.
impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Postgres { url, audit_key } => f
                .debug_struct("Postgres")
                .field("url", &redacted(url))
                .field("audit_key", audit_key)
                .finish(),
        }
    }
}

/// `url` without a password, in its user part or as a `password=` parameter; a URL that
/// does not parse is not shown at all (where its password ends is unknown).
pub fn redacted(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "<a database URL that does not parse>".into();
    };
    if parsed.password().is_some() {
        // Only fails for URLs that cannot have a user part, which this one has.
        let _ = parsed.set_password(Some("***"));
    }
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(key, value)| {
            let value = if key == "password" {
                "***".to_owned()
            } else {
                value.into_owned()
            };
            (key.into_owned(), value)
        })
        .collect();
    if !pairs.is_empty() {
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// Whether the URL asks for a certificate check of the server (`sslmode=verify-ca` or
/// `verify-full`), or the server is on this machine.
fn verifies_server(url: &url::Url) -> bool {
    let loopback = matches!(
        url.host_str(),
        Some("localhost" | "127.0.0.1" | "[::1]") | None
    );
    loopback
        || url
            .query_pairs()
            .any(|(key, value)| key == "sslmode" && value.starts_with("verify-"))
}

/// Which SQL the database speaks where the two differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// The embedded default.
    Sqlite,
    /// PostgreSQL, for a hub whose metadata lives in a managed, replicated database.
    Postgres,
}

impl Dialect {
    /// `sqlite` on SQLite, `postgres` on PostgreSQL.
    pub fn pick(self, sqlite: &'static str, postgres: &'static str) -> &'static str {
        match self {
            Self::Sqlite => sqlite,
            Self::Postgres => postgres,
        }
    }

    /// A statement of the schema in this dialect: SQLite's auto-numbered key is PostgreSQL's
    /// `BIGSERIAL`.
    pub fn schema_statement(self, statement: &str) -> String {
        match self {
            Self::Sqlite => statement.to_owned(),
            Self::Postgres => {
                statement.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
            }
        }
    }
}

/// Opens the connection pool of `location`.
pub(crate) async fn connect(location: &Location) -> Result<(AnyPool, Dialect), RegistryError> {
    sqlx::any::install_default_drivers();
    match location {
        Location::File(path) => Ok((
            sqlite_pool(path, Durability::Normal, 4)
                .await
                .map_err(RegistryError::Open)?,
            Dialect::Sqlite,
        )),
        Location::Postgres { url, .. } => {
            let parsed = url::Url::parse(url)
                .ok()
                .filter(|u| matches!(u.scheme(), "postgres" | "postgresql"));
            let Some(parsed) = parsed else {
                // Not echoed: where a password in it ends is unknown.
                return Err(RegistryError::Open(
                    "registry.database_url is not a postgres:// URL that parses (characters \
                     such as / ? # @ in the password must be percent-encoded)"
                        .into(),
                ));
            };
            if !verifies_server(&parsed) {
                tracing::warn!(
                    database = %redacted(url),
                    "The registry's database URL does not ask for sslmode=verify-full (or \
                     verify-ca): the server's certificate is not checked, and without sslmode \
                     the connection may not be encrypted at all."
                );
            }
            let pool = postgres_pool(url, 8).await.map_err(RegistryError::Open)?;
            Ok((pool, Dialect::Postgres))
        }
    }
}

/// The pool of the PostgreSQL database at `url` (the registry's, or the alerts' in it), with
/// at most `max_connections`; the error names the URL without its password.
pub async fn postgres_pool(url: &str, max_connections: u32) -> Result<AnyPool, String> {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(|connection, _| {
            Box::pin(async move {
                // A lock left by another session (a psql in a transaction, a schema change)
                // fails a statement after 5 s, as SQLite's busy timeout does, rather than
                // stalling sign-ins, the activity counters or alert transitions.
                sqlx::query("SET lock_timeout = '5s'")
                    .execute(&mut *connection)
                    .await?;
                Ok(())
            })
        })
        .connect(url)
        .await
        .map_err(|e| format!("{}: {}", redacted(url), scrubbed(&e, url)))
}

/// `error`'s text with `url`'s password, should the driver have quoted it, replaced.
fn scrubbed(error: &sqlx::Error, url: &str) -> String {
    let mut text = error.to_string();
    for password in passwords(url) {
        text = text.replace(&password, "***");
    }
    text
}

/// The passwords `url` holds, in its user part (as written and decoded) or as a `password=`
/// parameter, for scrubbing them from messages that might quote them.
fn passwords(url: &str) -> Vec<String> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Vec::new();
    };
    let mut found: Vec<String> = parsed.password().into_iter().map(str::to_owned).collect();
    if let Some(written) = parsed.password()
        && let Ok(decoded) = percent_decode(written)
    {
        found.push(decoded);
    }
    found.extend(
        parsed
            .query_pairs()
            .filter(|(key, _)| key == "password")
            .map(|(_, value)| value.into_owned()),
    );
    found.retain(|p| !p.is_empty());
    found
}

/// `text` with `%XX` escapes decoded, as UTF-8.
fn percent_decode(text: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
}

/// How long an SQLite commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous = NORMAL`: in WAL mode a power loss may lose the last commits, never
    /// corrupt the file (the registry's device counters, written every second).
    Normal,
    /// `synchronous = FULL`: a commit is on disk when it returns (alerts and their outbox).
    Full,
}

/// The pool of the SQLite file at `path`, created if missing, in WAL mode with
/// `secure_delete`, at most `max_connections`; the error names the file.
pub async fn sqlite_pool(
    path: &Path,
    durability: Durability,
    max_connections: u32,
) -> Result<AnyPool, String> {
    sqlx::any::install_default_drivers();
    // The URL is normalised as a URL (`a/../b` is `b` there, whatever `a` is on disk) and
    // decoded as UTF-8: the directory is resolved first, and other names refused.
    let resolved = match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) if !dir.as_os_str().is_empty() => dir
            .canonicalize()
            .map(|dir| dir.join(name))
            .unwrap_or_else(|_| path.to_owned()),
        _ => std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
    };
    if resolved.to_str().is_none() {
        return Err(format!(
            "{}: the path is not UTF-8, which the SQLite driver needs",
            path.display()
        ));
    }
    let url = format!("sqlite://{}?mode=rwc", percent_encoded_path(&resolved));
    let synchronous = match durability {
        Durability::Normal => "PRAGMA synchronous = NORMAL",
        Durability::Full => "PRAGMA synchronous = FULL",
    };
    AnyPoolOptions::new()
        .max_connections(max_connections)
        .after_connect(move |connection, _| {
            Box::pin(async move {
                // The busy timeout first: switching to WAL waits for other connections.
                for pragma in [
                    "PRAGMA busy_timeout = 5000",
                    "PRAGMA journal_mode = WAL",
                    synchronous,
                    // Deleted and overwritten records are zeroed on disk, so an erased name
                    // is gone, not left in a free page.
                    "PRAGMA secure_delete = ON",
                ] {
                    sqlx::query(pragma).execute(&mut *connection).await?;
                }
                Ok(())
            })
        })
        .connect(&url)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `path` for a `sqlite://` URL: everything but unreserved characters and `/` escaped.
fn percent_encoded_path(path: &Path) -> String {
    let mut out = String::new();
    for byte in path.as_os_str().as_encoded_bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(char::from(*byte));
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redacted("postgres://fabrik:s3cr%40t@db.plant:5432/registry?sslmode=verify-full"),
            "postgres://fabrik:***@db.plant:5432/registry?sslmode=verify-full"
        );
        assert_eq!(
            redacted("postgres://fabrik@db/registry"),
            "postgres://fabrik@db/registry"
        );
        assert_eq!(
            redacted("postgres://db/registry?user=fabrik&password=s3cret"),
            "postgres://db/registry?user=fabrik&password=***"
        );
        // An unencoded `/` in the password: the URL does not parse, and is not shown.
        let unparsed = redacted("postgres://fabrik:pa/ss@db/registry");
        assert!(
            !unparsed.contains("pa/ss") && !unparsed.contains("ss@db"),
            "{unparsed}"
        );
        let location = Location::Postgres {
            url: "postgres://fabrik:s3cret@db/registry".into(),
            audit_key: PathBuf::from("/var/lib/fabrik/audit.key"),
        };
        assert!(!format!("{location:?}").contains("s3cret"));
        assert_eq!(
            passwords("postgres://fabrik:s3cr%40t@db/fabrik?password=other"),
            ["s3cr%40t", "s3cr@t", "other"]
        );
    }

    #[test]
    fn only_a_verified_certificate_or_a_local_server_passes_unwarned() {
        let verifies = |url: &str| verifies_server(&url::Url::parse(url).unwrap());
        assert!(verifies(
            "postgres://fabrik@db.plant/fabrik?sslmode=verify-full"
        ));
        assert!(verifies(
            "postgres://fabrik@db.plant/fabrik?sslmode=verify-ca"
        ));
        assert!(verifies("postgres://fabrik@127.0.0.1:5432/fabrik"));
        assert!(!verifies(
            "postgres://fabrik@db.plant/fabrik?sslmode=require"
        ));
        assert!(!verifies("postgres://fabrik@db.plant/fabrik"));
    }

    #[tokio::test]
    async fn a_url_that_does_not_parse_is_refused_without_being_echoed() {
        let location = Location::Postgres {
            url: "postgres://fabrik:pa/ss@db.plant/fabrik".into(),
            audit_key: PathBuf::from("audit.key"),
        };
        let error = connect(&location).await.unwrap_err().to_string();
        assert!(error.contains("percent-encoded"), "{error}");
        assert!(!error.contains("pa/ss"), "{error}");
    }

    #[test]
    fn sqlite_paths_are_escaped_for_the_url() {
        assert_eq!(
            percent_encoded_path(Path::new("/data/my plant/registry.db")),
            "/data/my%20plant/registry.db"
        );
        assert_eq!(percent_encoded_path(Path::new("a?b#c")), "a%3Fb%23c");
    }

    #[tokio::test]
    async fn a_file_with_spaces_and_marks_in_its_path_opens_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("my plant?#").join("registry.db");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let (pool, dialect) = connect(&Location::File(path.clone())).await.unwrap();
        assert_eq!(dialect, Dialect::Sqlite);
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let secure: i64 = sqlx::query_scalar("PRAGMA secure_delete")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(secure, 1);
        pool.close().await;
        assert!(path.exists(), "the file is where it was asked to be");
    }
}
