//! The registry's schema and its migrations: numbered SQL scripts applied in order, each once,
//! recorded in `schema_migrations` (plain SQL both SQLite and PostgreSQL accept, but for
//! auto-numbered keys: `Dialect::schema_statement`).

use sqlx::AnyPool;

use crate::{Dialect, RegistryError};

/// (version, statements). Append only: a released migration never changes.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        device_type TEXT NOT NULL DEFAULT '',
        site TEXT NOT NULL DEFAULT '',
        labels TEXT NOT NULL DEFAULT '{}',
        sparkplug_node TEXT,
        token_hash TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'never',
        last_seen BIGINT,
        messages BIGINT NOT NULL DEFAULT 0,
        errors BIGINT NOT NULL DEFAULT 0,
        disabled BIGINT NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE device_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id TEXT NOT NULL,
        time BIGINT NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX device_events_by_device ON device_events (device_id, time);",
    ),
    (
        2,
        "CREATE TABLE users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        last_sign_in BIGINT
    )",
    ),
    (3, AUDIT_LOG_TABLE),
    (
        4,
        "CREATE TABLE use_cases (
        name TEXT PRIMARY KEY,
        definition TEXT NOT NULL,
        stage TEXT NOT NULL,
        stage_since BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE use_case_decisions (
        id BIGINT PRIMARY KEY,
        use_case TEXT NOT NULL,
        time BIGINT NOT NULL,
        from_stage TEXT NOT NULL,
        to_stage TEXT NOT NULL,
        actor TEXT NOT NULL,
        forced BIGINT NOT NULL,
        reason TEXT NOT NULL,
        gate TEXT
    );
    CREATE INDEX use_case_decisions_by_use_case ON use_case_decisions (use_case, id)",
    ),
    (5, AUDIT_LOG_ERASABLE),
    (
        6,
        "CREATE TABLE attestation_keys (
        device_id TEXT PRIMARY KEY,
        public_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        enrolled_at BIGINT NOT NULL
    );
    CREATE TABLE attestation_policies (
        device_type TEXT PRIMARY KEY,
        bank TEXT NOT NULL,
        accept TEXT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE attestations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id TEXT NOT NULL,
        key_fingerprint TEXT NOT NULL,
        time BIGINT NOT NULL,
        passed BIGINT NOT NULL,
        authentic BIGINT NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX attestations_by_device ON attestations (device_id, id);
    CREATE INDEX attestations_by_verdict ON attestations (device_id, key_fingerprint, authentic, id)",
    ),
    (
        7,
        // How a key was vouched for by its TPM's endorsement key (decision 0053), JSON; NULL
        // for a key an operator enrolled.
        "ALTER TABLE attestation_keys ADD COLUMN endorsement TEXT",
    ),
    (
        8,
        // Measured boot (decision 0058): each device's newest event log that replayed to an
        // authentic quote (its events as JSON), and the reference device's log of a policy.
        "CREATE TABLE attestation_event_logs (
        device_id TEXT PRIMARY KEY,
        key_fingerprint TEXT NOT NULL,
        time BIGINT NOT NULL,
        bank TEXT NOT NULL,
        events TEXT NOT NULL
    );
    ALTER TABLE attestation_policies ADD COLUMN reference_log TEXT",
    ),
    (
        9,
        // Event-level reference values (decision 0060): whether a log is required, the PCRs
        // judged by their events and the digests allowed there, JSON; NULL for a policy of
        // PCR values only.
        "ALTER TABLE attestation_policies ADD COLUMN measurements TEXT",
    ),
    (
        10,
        // Runtime policies (decision 0067): per device type, the files its IMA may measure,
        // JSON.
        "CREATE TABLE attestation_runtime_policies (
        device_type TEXT PRIMARY KEY,
        policy TEXT NOT NULL,
        updated_at BIGINT NOT NULL
    )",
    ),
    (
        11,
        // Each device's newest IMA entries that replayed to an authentic quote (path, digest,
        // violation; JSON), so a changed runtime policy judges its pass again (decision 0067).
        "CREATE TABLE attestation_ima_logs (
        device_id TEXT PRIMARY KEY,
        key_fingerprint TEXT NOT NULL,
        time BIGINT NOT NULL,
        entry_count BIGINT NOT NULL,
        entries TEXT NOT NULL
    )",
    ),
    (
        12,
        // A kept IMA list in parts: the entries of a list sent whole, then those each
        // continuing quote added, so a long list is not rewritten at every quote; the header
        // row keeps the list's facts and how many parts it has (0: a list kept whole in its
        // `entries`, as before this migration).
        "CREATE TABLE attestation_ima_parts (
        device_id TEXT NOT NULL,
        first_entry BIGINT NOT NULL,
        entries TEXT NOT NULL,
        PRIMARY KEY (device_id, first_entry)
    );
    ALTER TABLE attestation_ima_logs ADD COLUMN parts BIGINT NOT NULL DEFAULT 0",
    ),
];

/// The audit log's table, also made afresh when an old log is set aside.
pub(crate) const AUDIT_LOG_TABLE: &str = "CREATE TABLE audit_log (
        seq BIGINT PRIMARY KEY,
        time BIGINT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        status BIGINT NOT NULL,
        hash TEXT NOT NULL
    )";

/// What makes the audit log's names erasable (decision 0040): the entry's format (1: hashed
/// over its names, 2: over salted digests of them), the salts, the digests that replace an
/// erased name's salt, the erasure entry that erased it, and on an erasure entry the count
/// and digest of the fields it erased. Also applied when an old log is set aside.
pub(crate) const AUDIT_LOG_ERASABLE: &str =
    "ALTER TABLE audit_log ADD COLUMN format BIGINT NOT NULL DEFAULT 1;
    ALTER TABLE audit_log ADD COLUMN actor_salt TEXT;
    ALTER TABLE audit_log ADD COLUMN target_salt TEXT;
    ALTER TABLE audit_log ADD COLUMN actor_digest TEXT;
    ALTER TABLE audit_log ADD COLUMN target_digest TEXT;
    ALTER TABLE audit_log ADD COLUMN actor_erased_by BIGINT;
    ALTER TABLE audit_log ADD COLUMN target_erased_by BIGINT;
    ALTER TABLE audit_log ADD COLUMN erasure TEXT";

/// Applies the migrations the database has not seen yet.
pub(crate) async fn migrate(pool: &AnyPool, dialect: Dialect) -> Result<(), RegistryError> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(pool)
    .await?;
    let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
        .fetch_one(pool)
        .await?;
    let current = current.unwrap_or(0);
    for (version, script) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let mut tx = pool.begin().await?;
        for statement in script.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            // Audited: the statements are the compile-time constants above.
            sqlx::query(sqlx::AssertSqlSafe(dialect.schema_statement(statement)))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(version)
            .bind(fabrik_core::Timestamp::now().nanos())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        // SQLite copies the WAL back into the database only every 1,000 pages: a new
        // registry's migrations alone left 256 KiB there. Copied back and emptied after each,
        // the WAL stays at the size of one migration on a node with little room.
        if dialect == Dialect::Sqlite {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(pool)
                .await?;
        }
        tracing::info!(version, "Registry schema migrated.");
    }
    Ok(())
}
