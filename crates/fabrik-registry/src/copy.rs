//! Moving a registry from one database to another — a pilot's SQLite file into the
//! PostgreSQL database of its enterprise hub (decision 0055): every row of every table, as it
//! is, in one transaction, so the audit chain still verifies under the same key. The row
//! copying, emptiness check and counters here serve the alert database's copy too.

use futures::TryStreamExt;
use sqlx::{AnyConnection, AnyPool, Row};

use crate::database::{self, Dialect, Location};
use crate::{RegistryError, schema};

/// A column's type, as a copy reads and binds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A 64-bit integer.
    Int,
    /// A double.
    Float,
    /// A `BOOLEAN`, read as 0 or 1 (sqlx's `Any` driver cannot read SQLite's as declared).
    Bool,
    /// Text.
    Text,
}

use Kind::{Int, Text};

/// The registry's tables and their columns, parents before children. A column added by a
/// migration must be added here, or it would not be copied: a unit test compares this list
/// with the schema.
const TABLES: &[(&str, &[(&str, Kind)])] = &[
    (
        "devices",
        &[
            ("id", Text),
            ("name", Text),
            ("device_type", Text),
            ("site", Text),
            ("labels", Text),
            ("sparkplug_node", Text),
            ("token_hash", Text),
            ("state", Text),
            ("last_seen", Int),
            ("messages", Int),
            ("errors", Int),
            ("disabled", Int),
            ("created_at", Int),
            ("updated_at", Int),
        ],
    ),
    (
        "device_events",
        &[
            ("id", Int),
            ("device_id", Text),
            ("time", Int),
            ("kind", Text),
            ("detail", Text),
        ],
    ),
    (
        "users",
        &[
            ("name", Text),
            ("role", Text),
            ("password_hash", Text),
            ("created_at", Int),
            ("last_sign_in", Int),
        ],
    ),
    (
        "audit_log",
        &[
            ("seq", Int),
            ("time", Int),
            ("actor", Text),
            ("action", Text),
            ("target", Text),
            ("status", Int),
            ("hash", Text),
            ("format", Int),
            ("actor_salt", Text),
            ("target_salt", Text),
            ("actor_digest", Text),
            ("target_digest", Text),
            ("actor_erased_by", Int),
            ("target_erased_by", Int),
            ("erasure", Text),
        ],
    ),
    (
        "use_cases",
        &[
            ("name", Text),
            ("definition", Text),
            ("stage", Text),
            ("stage_since", Int),
            ("created_at", Int),
            ("updated_at", Int),
        ],
    ),
    (
        "use_case_decisions",
        &[
            ("id", Int),
            ("use_case", Text),
            ("time", Int),
            ("from_stage", Text),
            ("to_stage", Text),
            ("actor", Text),
            ("forced", Int),
            ("reason", Text),
            ("gate", Text),
        ],
    ),
    (
        "attestation_keys",
        &[
            ("device_id", Text),
            ("public_key", Text),
            ("fingerprint", Text),
            ("algorithm", Text),
            ("enrolled_at", Int),
            ("endorsement", Text),
        ],
    ),
    (
        "attestation_policies",
        &[
            ("device_type", Text),
            ("bank", Text),
            ("accept", Text),
            ("updated_at", Int),
            ("reference_log", Text),
            ("measurements", Text),
        ],
    ),
    (
        "attestations",
        &[
            ("id", Int),
            ("device_id", Text),
            ("key_fingerprint", Text),
            ("time", Int),
            ("passed", Int),
            ("authentic", Int),
            ("record", Text),
        ],
    ),
    (
        "attestation_event_logs",
        &[
            ("device_id", Text),
            ("key_fingerprint", Text),
            ("time", Int),
            ("bank", Text),
            ("events", Text),
        ],
    ),
    (
        "attestation_runtime_policies",
        &[("device_type", Text), ("policy", Text), ("updated_at", Int)],
    ),
    (
        "attestation_ima_logs",
        &[
            ("device_id", Text),
            ("key_fingerprint", Text),
            ("time", Int),
            ("entry_count", Int),
            ("entries", Text),
            ("parts", Int),
        ],
    ),
    (
        "attestation_ima_parts",
        &[("device_id", Text), ("first_entry", Int), ("entries", Text)],
    ),
];

/// Tables whose key PostgreSQL numbers itself (`BIGSERIAL`): after rows are copied with their
/// own numbers, its sequence must continue after them.
const NUMBERED: &[(&str, &str)] = &[("device_events", "id"), ("attestations", "id")];

/// What a copy moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Rows per table, in copy order.
    pub tables: Vec<(String, u64)>,
    /// Audit logs set aside in the source (`audit_log_set_aside_*`), not copied.
    pub set_aside_left: Vec<String>,
}

/// Copies every row of the registry at `from` into the empty registry at `to` (its schema is
/// made if missing), in one transaction of the target. Refused when a table of the target has
/// rows. Fabrik must not be running on either.
pub async fn copy(from: &Location, to: &Location) -> Result<Copied, RegistryError> {
    if from == to {
        return Err(RegistryError::Invalid(
            "the source and the target are the same database".into(),
        ));
    }
    if let Location::File(path) = from
        && !path.exists()
    {
        return Err(RegistryError::Open(format!(
            "{}: no registry database there",
            path.display()
        )));
    }
    let (source, source_dialect) = database::connect(from).await?;
    schema::migrate(&source, source_dialect).await?;
    let (target, target_dialect) = database::connect(to).await?;
    schema::migrate(&target, target_dialect).await?;
    let mut tx = target.begin().await?;
    let names: Vec<&str> = TABLES.iter().map(|(table, _)| *table).collect();
    if let Some((table, rows)) = first_with_rows(&mut tx, &names).await? {
        return Err(RegistryError::Conflict(format!(
            "the target {} already holds {rows} row(s) in `{table}`: a registry is copied \
             into an empty one only",
            to.display()
        )));
    }
    let mut copied = Vec::new();
    for (table, columns) in TABLES {
        let count = copy_rows(&source, &mut tx, table, columns).await?;
        copied.push(((*table).to_owned(), count));
    }
    if target_dialect == Dialect::Postgres {
        continue_serials(&mut tx, NUMBERED).await?;
    }
    tx.commit().await?;
    let set_aside_left = sqlx::query_scalar(source_dialect.pick(
        "SELECT name FROM sqlite_master WHERE type = 'table' \
         AND name LIKE 'audit\\_log\\_set\\_aside\\_%' ESCAPE '\\' ORDER BY name",
        "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() \
         AND tablename LIKE 'audit\\_log\\_set\\_aside\\_%' ESCAPE '\\' ORDER BY tablename",
    ))
    .fetch_all(&source)
    .await?;
    source.close().await;
    target.close().await;
    Ok(Copied {
        tables: copied,
        set_aside_left,
    })
}

/// The first of `tables` (the caller's constants) that has rows, and how many.
pub async fn first_with_rows(
    connection: &mut AnyConnection,
    tables: &[&str],
) -> Result<Option<(String, i64)>, sqlx::Error> {
    for table in tables {
        // Audited: the table names are the caller's constants.
        let rows: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&mut *connection)
                .await?;
        if rows > 0 {
            return Ok(Some(((*table).to_owned(), rows)));
        }
    }
    Ok(None)
}

/// Copies every row of `table` (the caller's constant, with its `columns`) from `source` into
/// `target`, as it is; returns how many. A value that cannot be read as its column's kind is
/// named by table, column and row.
pub async fn copy_rows(
    source: &AnyPool,
    target: &mut AnyConnection,
    table: &str,
    columns: &[(&str, Kind)],
) -> Result<u64, RegistryError> {
    let list: Vec<String> = columns
        .iter()
        .map(|(name, kind)| match kind {
            Kind::Bool => format!("CASE WHEN {name} THEN 1 ELSE 0 END AS {name}"),
            _ => (*name).to_owned(),
        })
        .collect();
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let placeholders: Vec<String> = (1..=names.len()).map(|n| format!("${n}")).collect();
    // Audited: table and column names are the caller's constants; values are bound.
    let select = format!("SELECT {} FROM {table}", list.join(", "));
    let insert = format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        names.join(", "),
        placeholders.join(", ")
    );
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(select)).fetch(source);
    let mut count = 0_u64;
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(|e| RegistryError::Corrupt(format!("reading `{table}` from the source: {e}")))?
    {
        let mut insert_row = sqlx::query(sqlx::AssertSqlSafe(insert.clone()));
        for (i, (name, kind)) in columns.iter().enumerate() {
            let read = |e: sqlx::Error| {
                RegistryError::Corrupt(format!(
                    "`{table}`.`{name}` of row {} cannot be read as {}: {e}",
                    count + 1,
                    match kind {
                        Kind::Int | Kind::Bool => "an integer",
                        Kind::Float => "a number",
                        Kind::Text => "text",
                    }
                ))
            };
            insert_row = match kind {
                Kind::Int => insert_row.bind(row.try_get::<Option<i64>, _>(i).map_err(read)?),
                Kind::Float => insert_row.bind(row.try_get::<Option<f64>, _>(i).map_err(read)?),
                Kind::Bool => insert_row.bind(row.try_get::<i64, _>(i).map_err(read)? != 0),
                Kind::Text => insert_row.bind(row.try_get::<Option<String>, _>(i).map_err(read)?),
            };
        }
        insert_row.execute(&mut *target).await?;
        count += 1;
    }
    Ok(count)
}

/// Sets each PostgreSQL `BIGSERIAL` counter of `(table, column)` (the caller's constants) past
/// the numbers rows were copied with, so the next row the database numbers does not collide.
pub async fn continue_serials(
    connection: &mut AnyConnection,
    serials: &[(&str, &str)],
) -> Result<(), sqlx::Error> {
    for (table, column) in serials {
        // Audited: the names are the caller's constants.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), \
             COALESCE((SELECT max({column}) FROM {table}), 0) + 1, false)"
        )))
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditEvent, NewDevice, Registry, Role};

    /// The target is an SQLite file, or with `FABRIK_TEST_POSTGRES_URL` a PostgreSQL database.
    #[tokio::test]
    async fn a_registry_copied_into_an_empty_one_holds_its_rows_and_its_chain_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (pilot, hub) = (dir.path().join("pilot"), dir.path().join("hub"));
        std::fs::create_dir_all(&pilot).unwrap();
        std::fs::create_dir_all(&hub).unwrap();
        let source = Location::File(pilot.join("registry.db"));
        let registry = Registry::open_at(&source).await.unwrap();
        let (_, token) = registry
            .add(NewDevice {
                id: "pump-1".into(),
                device_type: Some("pump".into()),
                ..NewDevice::default()
            })
            .await
            .unwrap();
        registry
            .set_connected("pump-1", true, "test")
            .await
            .unwrap();
        registry
            .add_user(
                "vera",
                Role::Viewer,
                Some("correct horse battery staple".into()),
            )
            .await
            .unwrap();
        for n in 0..3 {
            registry
                .audit(AuditEvent {
                    actor: "admin-token".into(),
                    action: "POST /api/v1/devices".into(),
                    target: format!("/api/v1/devices/d{n}"),
                    status: 201,
                })
                .await
                .unwrap();
        }
        let events_before = registry.events("pump-1", 100).await.unwrap().len();
        registry.close().await;

        // The key goes with the node, not through the copy.
        std::fs::copy(pilot.join("audit.key"), hub.join("audit.key")).unwrap();
        let target = crate::test_database::location(&hub.join("registry.db")).await;
        let copied = copy(&source, &target).await.unwrap();
        let rows = |table: &str| {
            copied
                .tables
                .iter()
                .find(|(t, _)| t == table)
                .map(|(_, n)| *n)
        };
        assert_eq!(rows("devices"), Some(1));
        assert_eq!(rows("users"), Some(1));
        assert_eq!(rows("audit_log"), Some(3));
        assert_eq!(rows("device_events"), Some(events_before as u64));
        assert!(copied.set_aside_left.is_empty());

        let moved = Registry::open_at(&target).await.unwrap();
        moved.authenticate("pump-1", &token).await.unwrap();
        moved
            .verify_user("vera", "correct horse battery staple")
            .await
            .unwrap();
        let check = moved.verify_audit().await.unwrap();
        assert!(check.intact && check.entries == 3, "{check:?}");
        // Numbers the target assigns itself continue after the copied ones.
        moved.set_connected("pump-1", false, "test").await.unwrap();
        assert_eq!(
            moved.events("pump-1", 100).await.unwrap().len(),
            events_before + 1
        );
        assert_eq!(
            moved
                .audit(AuditEvent {
                    actor: "admin-token".into(),
                    action: "DELETE /api/v1/users/{name}".into(),
                    target: "/api/v1/users/vera".into(),
                    status: 204,
                })
                .await
                .unwrap()
                .seq,
            4
        );
        assert!(moved.verify_audit().await.unwrap().intact);
        moved.close().await;

        // A registry with rows is not copied into.
        let refused = copy(&source, &target).await.unwrap_err().to_string();
        assert!(
            refused.contains("`devices`") && refused.contains("empty"),
            "{refused}"
        );
        let same = copy(&source, &source).await.unwrap_err().to_string();
        assert!(same.contains("same database"), "{same}");
    }

    /// Every column the migrations make is in `TABLES`, so a copy leaves nothing behind.
    #[tokio::test]
    async fn the_copy_knows_every_column_of_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::File(dir.path().join("registry.db"));
        let (pool, dialect) = database::connect(&location).await.unwrap();
        schema::migrate(&pool, dialect).await.unwrap();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name != 'schema_migrations' \
             ORDER BY name",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let mut known: Vec<&str> = TABLES.iter().map(|(t, _)| *t).collect();
        known.sort_unstable();
        assert_eq!(tables, known);
        for (table, columns) in TABLES {
            let actual: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info($1)")
                .bind(*table)
                .fetch_all(&pool)
                .await
                .unwrap();
            let mut actual = actual;
            actual.sort();
            let mut listed: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
            listed.sort_unstable();
            assert_eq!(actual, listed, "{table}");
        }
    }
}
