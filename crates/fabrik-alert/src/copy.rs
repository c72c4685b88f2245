//! Moving the alert database from one place to another — a pilot's `alerts.db` into the
//! PostgreSQL database of its enterprise hub (decision 0055): every row, as it is, in one
//! transaction, so alerts keep their acknowledgements and the operators' verdicts that use
//! cases count.

use fabrik_registry::RegistryError;
use fabrik_registry::copy::{Kind, continue_serials, copy_rows, first_with_rows};

use crate::AlertError;
use crate::db::{AlertDb, Store};

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

/// The tables' names, as [`first_with_rows`] takes them.
fn table_names() -> Vec<&'static str> {
    TABLES.iter().map(|(table, _)| *table).collect()
}

async fn refuse_rows(connection: &mut sqlx::AnyConnection) -> Result<(), AlertError> {
    match first_with_rows(connection, &table_names()).await? {
        Some((table, rows)) => Err(AlertError::Conflict(format!(
            "the target already holds {rows} row(s) in `{table}`: alerts are copied into an \
             empty database only"
        ))),
        None => Ok(()),
    }
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
        let count = copy_rows(source.pool(), &mut tx, table, columns)
            .await
            .map_err(|e| match e {
                RegistryError::Db(e) => AlertError::Database(e),
                other => AlertError::Corrupt {
                    what: "row to copy",
                    reason: other.to_string(),
                },
            })?;
        copied.push(((*table).to_owned(), count));
    }
    if target.is_postgres() {
        // The outbox's ids were copied: its counter goes on after them.
        continue_serials(&mut tx, &[("outbox", "id")]).await?;
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
