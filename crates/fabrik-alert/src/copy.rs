//! Moving the alert database from one place to another — a pilot's `alerts.db` into the
//! PostgreSQL database of its enterprise hub (decision 0055): every row, as it is, in one
//! transaction, so alerts keep their acknowledgements and the operators' verdicts that use
//! cases count.

use futures::TryStreamExt;
use sqlx::Row;

use crate::AlertError;
use crate::db::{AlertDb, Store};

/// A column's type in the alert database's schema.
#[derive(Clone, Copy)]
enum Kind {
    Int,
    Float,
    Bool,
    Text,
}

use Kind::{Bool, Float, Int, Text};

/// The tables and their columns. A unit test compares this list with the schema, so a column
/// added later is not silently left behind.
const TABLES: &[(&str, &[(&str, Kind)])] = &[
    (
        "alerts",
        &[
            ("id", Text),
            ("rule", Text),
            ("key", Text),
            ("severity", Text),
            ("state", Text),
            ("started_at", Text),
            ("fired_at", Text),
            ("resolved_at", Text),
            ("value", Float),
            ("annotations", Text),
            ("ack_by", Text),
            ("ack_at", Text),
            ("feedback", Text),
            ("comment", Text),
            ("silenced", Bool),
            ("updated_ns", Int),
        ],
    ),
    (
        "silences",
        &[
            ("id", Text),
            ("rule", Text),
            ("key", Text),
            ("until_at", Text),
            ("by_whom", Text),
            ("comment", Text),
            ("ended_by", Text),
            ("from_at", Text),
        ],
    ),
    (
        "notified",
        &[("alert_id", Text), ("notifier", Text), ("at_ns", Int)],
    ),
    (
        "rule_positions",
        &[("rule", Text), ("watches", Text), ("read_after", Int)],
    ),
    (
        "outbox",
        &[
            ("id", Int),
            ("notifier", Text),
            ("payload", Text),
            ("attempts", Int),
            ("next_attempt_ns", Int),
            ("last_error", Text),
            ("group_key", Text),
            ("alert_id", Text),
            ("reminder", Text),
            ("series", Text),
        ],
    ),
];

/// Whether the alert tables at `to` are empty (made if missing): the copy's own check, for a
/// caller that copies more than the alerts and must know before it starts. Names the first
/// table with rows.
pub async fn check_empty(to: &Store) -> Result<(), AlertError> {
    let target = AlertDb::open_at(to).await?;
    let mut connection = target.pool().acquire().await?;
    let checked = refuse_rows(&mut connection).await;
    drop(connection);
    target.pool().close().await;
    checked
}

async fn refuse_rows(connection: &mut sqlx::AnyConnection) -> Result<(), AlertError> {
    for (table, _) in TABLES {
        // Audited: the table names are the constants above.
        let rows: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&mut *connection)
                .await?;
        if rows > 0 {
            return Err(AlertError::Conflict(format!(
                "the target already holds {rows} row(s) in `{table}`: alerts are copied into \
                 an empty database only"
            )));
        }
    }
    Ok(())
}

/// Copies every row of the alert database at `from` into the empty one at `to` (its tables
/// are made if missing), in one transaction of the target; rows per table. Refused when a
/// table of the target has rows. Fabrik must not be running on either.
pub async fn copy(from: &Store, to: &Store) -> Result<Vec<(String, u64)>, AlertError> {
    if from == to {
        return Err(AlertError::Invalid(
            "the source and the target are the same database".into(),
        ));
    }
    if let Store::File(path) = from
        && !path.exists()
    {
        return Err(AlertError::Invalid(format!(
            "{}: no alert database there",
            path.display()
        )));
    }
    let source = AlertDb::open_at(from).await?;
    let target = AlertDb::open_at(to).await?;
    let mut tx = target.pool().begin().await?;
    refuse_rows(&mut tx).await?;
    let mut copied = Vec::new();
    for (table, columns) in TABLES {
        // `silenced` is read as 0 or 1: SQLite's BOOLEAN is not readable as declared.
        let list: Vec<String> = columns
            .iter()
            .map(|(name, kind)| match kind {
                Bool => format!("CASE WHEN {name} THEN 1 ELSE 0 END AS {name}"),
                _ => (*name).to_owned(),
            })
            .collect();
        let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
        let placeholders: Vec<String> = (1..=names.len()).map(|n| format!("${n}")).collect();
        // Audited: table and column names are the constants of `TABLES`; values are bound.
        let select = format!("SELECT {} FROM {table}", list.join(", "));
        let insert = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            names.join(", "),
            placeholders.join(", ")
        );
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(select)).fetch(source.pool());
        let mut count = 0_u64;
        while let Some(row) = rows.try_next().await? {
            let mut statement = sqlx::query(sqlx::AssertSqlSafe(insert.clone()));
            for (i, (name, kind)) in columns.iter().enumerate() {
                let read = |e: sqlx::Error| AlertError::Corrupt {
                    what: "row to copy",
                    reason: format!("`{table}`.`{name}` of row {}: {e}", count + 1),
                };
                statement = match kind {
                    Int => statement.bind(row.try_get::<Option<i64>, _>(i).map_err(read)?),
                    Float => statement.bind(row.try_get::<Option<f64>, _>(i).map_err(read)?),
                    Bool => statement.bind(row.try_get::<i64, _>(i).map_err(read)? != 0),
                    Text => statement.bind(row.try_get::<Option<String>, _>(i).map_err(read)?),
                };
            }
            statement.execute(&mut *tx).await?;
            count += 1;
        }
        copied.push(((*table).to_owned(), count));
    }
    if target.is_postgres() {
        // The outbox's ids were copied: its counter goes on after them.
        sqlx::query(
            "SELECT setval(pg_get_serial_sequence('outbox', 'id'), \
             COALESCE((SELECT max(id) FROM outbox), 0) + 1, false)",
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    source.pool().close().await;
    target.pool().close().await;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_copy_knows_every_column_of_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let db = AlertDb::open_at(&Store::File(dir.path().join("alerts.db")))
            .await
            .unwrap();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
        )
        .fetch_all(db.pool())
        .await
        .unwrap();
        let mut known: Vec<&str> = TABLES.iter().map(|(t, _)| *t).collect();
        known.sort_unstable();
        assert_eq!(tables, known);
        for (table, columns) in TABLES {
            let mut actual: Vec<String> =
                sqlx::query_scalar("SELECT name FROM pragma_table_info($1)")
                    .bind(*table)
                    .fetch_all(db.pool())
                    .await
                    .unwrap();
            actual.sort();
            let mut listed: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
            listed.sort_unstable();
            assert_eq!(actual, listed, "{table}");
        }
    }
}
