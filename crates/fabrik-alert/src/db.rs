//! Persistence of alerts, silences and the notification outbox in `<data_dir>/alerts.db`
//! (SQLite), or in the node's PostgreSQL database (decision 0055), through sqlx's `Any`
//! driver, so firing alerts, acknowledgements and undelivered notifications survive a
//! restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fabrik_registry::Dialect;
use fabrik_registry::database;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use crate::engine::AlertState;
use crate::error::AlertError;
use crate::model::{Ack, Alert, Feedback, Silence};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS alerts (
        id TEXT PRIMARY KEY,
        rule TEXT NOT NULL,
        key TEXT NOT NULL,
        severity TEXT NOT NULL,
        state TEXT NOT NULL,
        started_at TEXT NOT NULL,
        fired_at TEXT,
        resolved_at TEXT,
        value DOUBLE PRECISION,
        annotations TEXT NOT NULL,
        ack_by TEXT,
        ack_at TEXT,
        feedback TEXT,
        comment TEXT,
        silenced BOOLEAN NOT NULL,
        updated_ns BIGINT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS alerts_state ON alerts (state, updated_ns)",
    "CREATE INDEX IF NOT EXISTS alerts_changed ON alerts (updated_ns, id)",
    "CREATE TABLE IF NOT EXISTS silences (
        id TEXT PRIMARY KEY,
        rule TEXT,
        key TEXT,
        until_at TEXT NOT NULL,
        by_whom TEXT NOT NULL,
        comment TEXT
    )",
    "CREATE TABLE IF NOT EXISTS notified (
        alert_id TEXT NOT NULL,
        notifier TEXT NOT NULL,
        at_ns BIGINT NOT NULL,
        PRIMARY KEY (alert_id, notifier)
    )",
    "CREATE TABLE IF NOT EXISTS rule_positions (
        rule TEXT PRIMARY KEY,
        watches TEXT NOT NULL,
        read_after BIGINT
    )",
    "CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        notifier TEXT NOT NULL,
        payload TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        next_attempt_ns BIGINT NOT NULL,
        last_error TEXT
    )",
];

/// The `updated_ns` of a change, from its bound time (the placeholder named): `max(now,
/// latest + 1 ns)`, written as a `CASE` both SQLite and PostgreSQL take. Evaluated inside the
/// writing statement, under the write lock every stamping transaction takes first
/// ([`AlertDb::stamping`]: SQLite's `BEGIN IMMEDIATE`, PostgreSQL's table lock), so the stamps
/// are in commit order and distinct between statements (the rows one statement changes share
/// one; the cursor breaks ties by id) — what the `changed_after` cursor relies on; every write
/// of `updated_ns` uses it.
macro_rules! change_stamp {
    ($now:literal) => {
        concat!(
            "(SELECT CASE WHEN coalesce(max(updated_ns), 0) + 1 > ",
            $now,
            " THEN coalesce(max(updated_ns), 0) + 1 ELSE ",
            $now,
            " END FROM alerts)"
        )
    };
}

/// What waits in the outbox for one notifier.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueuedFor {
    /// Notifications queued.
    pub queued: u64,
    /// Of them, those that failed at least once.
    pub retrying: u64,
    /// When the next is due.
    pub next_attempt_ns: Option<i64>,
    /// The error of the one that failed most often.
    pub last_error: Option<String>,
}

/// A notification waiting to be delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// Row id.
    pub id: i64,
    /// The notifier's name.
    pub notifier: String,
    /// The JSON body.
    pub payload: String,
    /// Failed attempts so far.
    pub attempts: i64,
    /// Entries of one notifier with the same group key go out as one notification.
    pub group_key: Option<String>,
    /// The alert whose state change it carries (absent in rows queued before it was kept).
    pub alert_id: Option<String>,
    /// A reminder: it goes out only while nobody has acknowledged the alert.
    pub reminder: bool,
}

/// The columns [`entry_from_row`] reads, for every query of outbox entries (one list, so a
/// column added to [`OutboxEntry`] reaches them all).
macro_rules! select_outbox_entries {
    () => {
        "SELECT id, notifier, payload, attempts, group_key, alert_id, reminder FROM outbox"
    };
}

fn entry_from_row(r: &AnyRow) -> Result<OutboxEntry, AlertError> {
    Ok(OutboxEntry {
        id: r.try_get("id")?,
        notifier: r.try_get("notifier")?,
        payload: r.try_get("payload")?,
        attempts: r.try_get("attempts")?,
        group_key: r.try_get("group_key")?,
        alert_id: r.try_get("alert_id")?,
        reminder: r.try_get::<Option<String>, _>("reminder")?.is_some(),
    })
}

/// The columns [`alert_from_row`] reads. `silenced` is a `BOOLEAN`, which SQLite stores as an
/// integer and sqlx's `Any` driver cannot read from SQLite as declared: it is read as 0 or 1.
macro_rules! select_alerts {
    () => {
        "SELECT id, rule, key, severity, state, started_at, fired_at, resolved_at, value, \
         annotations, ack_by, ack_at, feedback, comment, \
         CASE WHEN silenced THEN 1 ELSE 0 END AS silenced, updated_ns FROM alerts"
    };
}

/// What [`AlertDb::find`] selects; `None` selects any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertQuery {
    /// This state.
    pub state: Option<AlertState>,
    /// Rules matching this pattern (`*`: any run of characters, as in silences).
    pub rule: Option<String>,
    /// Keys (devices) matching this pattern.
    pub key: Option<String>,
    /// Only alerts changed after this (update time in ns, then id), oldest change first, and
    /// no pending ones: a cursor to read every change, page by page. Every write sets a
    /// change's time above every earlier one's (`max(now, latest + 1)`, under SQLite's write
    /// lock), so the times are in commit order and a change is never committed behind a
    /// cursor already read past.
    pub changed_after: Option<(i64, String)>,
}

/// A silence-style pattern (only `*` is special) as an SQLite GLOB pattern, in which `?` and
/// `[` are special too and are matched literally through a one-character class.
fn glob_pattern(pattern: &str) -> String {
    let mut glob = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        match c {
            '?' => glob.push_str("[?]"),
            '[' => glob.push_str("[[]"),
            other => glob.push(other),
        }
    }
    glob
}

/// The same pattern as a PostgreSQL `LIKE` pattern (escape `\`): `*` is `%`, and `%`, `_`
/// and `\` are matched literally. Case-sensitive, as GLOB is.
fn like_pattern(pattern: &str) -> String {
    let mut like = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        match c {
            '*' => like.push('%'),
            '%' | '_' | '\\' => {
                like.push('\\');
                like.push(c);
            }
            other => like.push(other),
        }
    }
    like
}

/// Where the alert database lives.
#[derive(Clone, PartialEq, Eq)]
pub enum Store {
    /// An SQLite file, created if missing.
    File(PathBuf),
    /// A PostgreSQL database (`postgres://…`), which must exist: the node's metadata database
    /// (`[registry] database_url`).
    Postgres(String),
}

/// Never shows a PostgreSQL URL (it may hold a password).
impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Postgres(_) => f.write_str("Postgres(..)"),
        }
    }
}

/// Adds the TEXT column `column` to `table` of a database written before it existed;
/// returns whether it was added.
async fn add_column_if_missing(
    pool: &AnyPool,
    dialect: Dialect,
    table: &'static str,
    column: &'static str,
) -> Result<bool, AlertError> {
    let columns: Vec<String> = sqlx::query_scalar(dialect.pick(
        "SELECT name FROM pragma_table_info($1)",
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1",
    ))
    .bind(table)
    .fetch_all(pool)
    .await?;
    if columns.iter().any(|c| c == column) {
        return Ok(false);
    }
    // Audited: the table and column are the compile-time constants of `AlertDb::open`.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE {table} ADD COLUMN {column} TEXT"
    )))
    .execute(pool)
    .await?;
    Ok(true)
}

/// What must still hold of an alert for a notification made from an earlier read of it to
/// be queued ([`AlertDb::enqueue_grouped`]).
#[derive(Debug, Clone, Copy)]
pub struct StillFiring<'a> {
    /// It fires with this severity.
    pub severity: &'a str,
    /// Nobody has acknowledged it (reminders).
    pub unacknowledged: bool,
}

/// The alert database.
#[derive(Debug, Clone)]
pub struct AlertDb {
    pool: AnyPool,
    dialect: Dialect,
}

fn corrupt(what: &'static str, reason: impl std::fmt::Display) -> AlertError {
    AlertError::Corrupt {
        what,
        reason: reason.to_string(),
    }
}

impl AlertDb {
    /// Opens (creating) the SQLite file at `path`.
    pub async fn open(path: &Path) -> Result<Self, AlertError> {
        #[cfg(test)]
        let store = crate::test_database::store(path).await;
        #[cfg(not(test))]
        let store = Store::File(path.to_owned());
        Self::open_at(&store).await
    }

    /// Opens the database at `store` (an SQLite file is created if missing) and brings its
    /// tables up to date.
    pub async fn open_at(store: &Store) -> Result<Self, AlertError> {
        // The registry's pools: the same connection settings, the alerts' own durability.
        let (pool, dialect) = match store {
            Store::File(path) => (
                database::sqlite_pool(path, database::Durability::Full, 2)
                    .await
                    .map_err(AlertError::Invalid)?,
                Dialect::Sqlite,
            ),
            Store::Postgres(url) => (
                database::postgres_pool(url, 4).await.map_err(|e| {
                    AlertError::Invalid(format!("the alert database (PostgreSQL): {e}"))
                })?,
                Dialect::Postgres,
            ),
        };
        for statement in SCHEMA {
            // Audited: the statements are the compile-time constants above.
            sqlx::query(sqlx::AssertSqlSafe(dialect.schema_statement(statement)))
                .execute(&pool)
                .await?;
        }
        // Databases written before notification grouping lack the outbox's group column, and
        // those written before silences were checked at delivery its alert column; those
        // before silences recorded who ended them early, `ended_by`.
        add_column_if_missing(&pool, dialect, "outbox", "group_key").await?;
        add_column_if_missing(&pool, dialect, "outbox", "alert_id").await?;
        add_column_if_missing(&pool, dialect, "silences", "ended_by").await?;
        // Before silences could be scheduled ahead (`from`), and reminders told apart.
        add_column_if_missing(&pool, dialect, "silences", "from_at").await?;
        add_column_if_missing(&pool, dialect, "outbox", "reminder").await?;
        // And those written before a delivered state superseded older ones, its series:
        // filled from each row's alert, as `notify::series` writes it, so rows queued before
        // the upgrade are superseded too.
        if add_column_if_missing(&pool, dialect, "outbox", "series").await? {
            sqlx::query(
                "UPDATE outbox SET series = (SELECT '{}:{alertname=\"' || rule || \
                 '\",device=\"' || key || '\",severity=\"' || severity || '\"}' \
                 FROM alerts WHERE alerts.id = outbox.alert_id) WHERE series IS NULL",
            )
            .execute(&pool)
            .await?;
        }
        Ok(Self { pool, dialect })
    }

    /// The connection pool (for [`crate::copy`]).
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Whether the database is PostgreSQL.
    pub(crate) fn is_postgres(&self) -> bool {
        self.dialect == Dialect::Postgres
    }

    /// A transaction holding the alerts' write lock from its first statement: SQLite's
    /// `BEGIN IMMEDIATE`; on PostgreSQL a lock on `alerts` that writers take in turn (readers
    /// go on). Every write of `updated_ns` runs in one, so the change stamps are given out in
    /// commit order.
    async fn stamping(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, AlertError> {
        match self.dialect {
            Dialect::Sqlite => Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?),
            Dialect::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("LOCK TABLE alerts IN SHARE ROW EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }

    /// Starts a batch of writes that land together or not at all: an alert's state, the
    /// notifications it queues and the read position of the rows that caused it, so a crash
    /// leaves neither a firing alert whose notification was never queued nor rows evaluated
    /// twice. It takes the write lock at once ([`Self::stamping`]), so the batch never has to
    /// upgrade a read snapshot that another connection's write made stale.
    pub async fn batch(&self) -> Result<Batch, AlertError> {
        Ok(Batch {
            tx: self.stamping().await?,
        })
    }

    /// Sets an alert's acknowledgement alone, so a state change written meanwhile stays.
    /// Fails with `NotFound` for an unknown id.
    /// Sets an alert's acknowledgement; unless `replace`, only if it has none, in the same
    /// statement (two operators acknowledging at once: the second learns of the first).
    /// Returns whether it was set; `NotFound` when there is no such alert.
    pub async fn set_ack(
        &self,
        id: &str,
        ack: &Ack,
        replace: bool,
        now_ns: i64,
    ) -> Result<bool, AlertError> {
        let done = sqlx::query(concat!(
            "UPDATE alerts SET ack_by = $1, ack_at = $2, feedback = $3, comment = $4, \
                 updated_ns = ",
            change_stamp!("$7"),
            " WHERE id = $5 AND ($6 OR ack_by IS NULL)"
        ))
        .bind(&ack.by)
        .bind(&ack.at)
        .bind(ack.feedback.as_str())
        .bind(&ack.comment)
        .bind(id)
        .bind(replace)
        .bind(now_ns);
        let mut tx = self.stamping().await?;
        let done = done.execute(&mut *tx).await?;
        tx.commit().await?;
        if done.rows_affected() == 0 {
            // Absent, or acknowledged by someone else meanwhile.
            self.get(id).await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Sets an alert's `silenced` flag alone, if it is still in `state` with `severity`;
    /// returns whether it was (a transition or a relabelling written meanwhile wins, and the
    /// next pass sees the alert as it is now).
    pub async fn set_silenced(
        &self,
        id: &str,
        silenced: bool,
        state: AlertState,
        severity: &str,
        now_ns: i64,
    ) -> Result<bool, AlertError> {
        let mut tx = self.stamping().await?;
        let done = set_silenced(&mut *tx, id, silenced, state, severity, now_ns).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Inserts an alert, or updates its lifecycle. An existing alert's acknowledgement is
    /// [`AlertDb::set_ack`]'s alone to change: a transition that read the alert before an
    /// operator acknowledged it (or acknowledged it again) must not write the old one back.
    pub async fn upsert(&self, alert: &Alert, now_ns: i64) -> Result<(), AlertError> {
        let mut tx = self.stamping().await?;
        upsert(&mut *tx, alert, now_ns).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes an alert (a pending one that cleared before firing).
    pub async fn delete(&self, id: &str) -> Result<(), AlertError> {
        delete(&self.pool, id).await
    }

    /// One alert.
    pub async fn get(&self, id: &str) -> Result<Alert, AlertError> {
        get(&self.pool, id).await
    }

    /// Alerts, newest change first; `state` filters, `limit` bounds.
    pub async fn list(
        &self,
        state: Option<AlertState>,
        limit: u32,
    ) -> Result<Vec<Alert>, AlertError> {
        self.find(
            &AlertQuery {
                state,
                ..AlertQuery::default()
            },
            limit,
        )
        .await
    }

    /// Alerts that `query` selects, most recently changed first, at most `limit`.
    pub async fn find(&self, query: &AlertQuery, limit: u32) -> Result<Vec<Alert>, AlertError> {
        let mut sql = String::from(concat!(select_alerts!(), " WHERE 1 = 1"));
        let mut bound = 0;
        let mut next = || {
            bound += 1;
            format!("${bound}")
        };
        let matches = self.dialect.pick("GLOB", "LIKE");
        let escape = self.dialect.pick("", " ESCAPE '\\'");
        if query.state.is_some() {
            sql.push_str(&format!(" AND state = {}", next()));
        }
        if query.rule.is_some() {
            sql.push_str(&format!(" AND rule {matches} {}{escape}", next()));
        }
        if query.key.is_some() {
            sql.push_str(&format!(" AND key {matches} {}{escape}", next()));
        }
        // The id breaks ties in the newest-first listing (rows written before update times
        // were made unique may share one). The change feed leaves pending alerts out: one
        // that clears before its `for` is deleted, and a reader would keep it as pending.
        if query.changed_after.is_some() {
            let (after_ns, after_id, limit) = (next(), next(), next());
            sql.push_str(&format!(
                " AND state != 'pending' AND (updated_ns, id) > ({after_ns}, {after_id}) \
                 ORDER BY updated_ns ASC, id ASC LIMIT {limit}"
            ));
        } else {
            sql.push_str(&format!(
                " ORDER BY updated_ns DESC, id DESC LIMIT {}",
                next()
            ));
        }
        // Audited: the statement is built from the constant fragments above; the values are
        // bound.
        let mut statement = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(state) = query.state {
            statement = statement.bind(state.as_str());
        }
        for pattern in [&query.rule, &query.key].into_iter().flatten() {
            statement = statement.bind(match self.dialect {
                Dialect::Sqlite => glob_pattern(pattern),
                Dialect::Postgres => like_pattern(pattern),
            });
        }
        if let Some((after_ns, after_id)) = &query.changed_after {
            statement = statement.bind(after_ns).bind(after_id);
        }
        let rows = statement
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(alert_from_row).collect()
    }

    /// Alerts that are pending or firing (to restore the engines after a restart).
    pub async fn open_alerts(&self) -> Result<Vec<Alert>, AlertError> {
        let rows = sqlx::query(concat!(
            select_alerts!(),
            " WHERE state IN ('pending', 'firing')"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(alert_from_row).collect()
    }

    /// Stores a silence.
    pub async fn add_silence(&self, silence: &Silence) -> Result<(), AlertError> {
        sqlx::query(
            "INSERT INTO silences (id, rule, key, from_at, until_at, by_whom, comment) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&silence.id)
        .bind(&silence.rule)
        .bind(&silence.key)
        .bind(&silence.from)
        .bind(&silence.until)
        .bind(&silence.by)
        .bind(&silence.comment)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The alerts `by` acknowledged, latest change first, at most `limit` (a person's data,
    /// GDPR Art. 15).
    pub async fn acknowledged_by(&self, by: &str, limit: u32) -> Result<Vec<Alert>, AlertError> {
        let rows = sqlx::query(concat!(
            select_alerts!(),
            " WHERE ack_by = $1 ORDER BY updated_ns DESC LIMIT $2"
        ))
        .bind(by)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(alert_from_row).collect()
    }

    /// Replaces `name` with `erased` wherever alerts keep it (a person's data erased, GDPR
    /// Art. 17): as who acknowledged an alert, whose comment goes too, and as who created or
    /// ended a silence, whose comment goes when they created it. Returns how many alerts and
    /// silences changed. Acknowledgements count as changes of their alert, so the dashboard's
    /// stream shows the erased version.
    pub async fn erase_person(
        &self,
        name: &str,
        erased: &str,
        now_ns: i64,
    ) -> Result<(u64, u64), AlertError> {
        let mut tx = self.stamping().await?;
        let alerts = sqlx::query(concat!(
            "UPDATE alerts SET ack_by = $1, comment = NULL, updated_ns = ",
            change_stamp!("$3"),
            " WHERE ack_by = $2"
        ))
        .bind(erased)
        .bind(name)
        .bind(now_ns)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let created =
            sqlx::query("UPDATE silences SET by_whom = $1, comment = NULL WHERE by_whom = $2")
                .bind(erased)
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        let ended = sqlx::query("UPDATE silences SET ended_by = $1 WHERE ended_by = $2")
            .bind(erased)
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        match self.dialect {
            Dialect::Sqlite => {
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(&self.pool)
                    .await?;
            }
            // The old row versions go at the vacuum, unless an older snapshot still sees
            // them; the space is not zeroed (decision 0055). The erasure itself is committed.
            Dialect::Postgres => {
                for vacuum in ["VACUUM alerts", "VACUUM silences"] {
                    if let Err(e) = sqlx::query(vacuum).execute(&self.pool).await {
                        tracing::warn!(error = %e, statement = vacuum, "Vacuum after an erasure failed: the old row versions stay until the next vacuum.");
                    }
                }
            }
        }
        Ok((alerts, created + ended))
    }

    /// Every silence.
    pub async fn silences(&self) -> Result<Vec<Silence>, AlertError> {
        let rows = sqlx::query(
            "SELECT id, rule, key, from_at, until_at, by_whom, comment, ended_by FROM silences \
             ORDER BY until_at DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Silence {
                    id: r.try_get("id")?,
                    rule: r.try_get("rule")?,
                    key: r.try_get("key")?,
                    from: r.try_get("from_at")?,
                    until: r.try_get("until_at")?,
                    by: r.try_get("by_whom")?,
                    comment: r.try_get("comment")?,
                    ended_by: r.try_get("ended_by")?,
                })
            })
            .collect()
    }

    /// Deletes resolved alerts unchanged since before `before_ns`, with what refers to them
    /// (the record of who was told, queued notifications); returns how many.
    pub async fn forget_resolved_before(&self, before_ns: i64) -> Result<u64, AlertError> {
        let mut tx = self.stamping().await?;
        let stale = "SELECT id FROM alerts WHERE state = 'resolved' AND updated_ns < $1";
        for table in ["notified", "outbox"] {
            // Audited: the table names are the constants above.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE alert_id IN ({stale})"
            )))
            .bind(before_ns)
            .execute(&mut *tx)
            .await?;
        }
        let deleted =
            sqlx::query("DELETE FROM alerts WHERE state = 'resolved' AND updated_ns < $1")
                .bind(before_ns)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        tx.commit().await?;
        Ok(deleted)
    }

    /// Deletes the silences that ended before `before_ns`: they are kept a while as a record,
    /// not for ever (every transition reads the table).
    pub async fn forget_silences_ended_before(&self, before_ns: i64) -> Result<(), AlertError> {
        sqlx::query("DELETE FROM silences WHERE until_at < $1")
            .bind(crate::model::rfc3339(before_ns))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends a silence in force at `now_ns`, by `by`; it stays listed, expired, as a record of
    /// who silenced what, until when and who ended it (as Alertmanager expires silences).
    /// Fails with `NotFound` for an unknown id and `Invalid` for one that has ended already.
    pub async fn end_silence(&self, id: &str, now_ns: i64, by: &str) -> Result<(), AlertError> {
        // RFC 3339 with fixed millisecond digits and `Z` sorts as text.
        let now = crate::model::rfc3339(now_ns);
        let ended = sqlx::query(
            "UPDATE silences SET until_at = $1, ended_by = $2 WHERE id = $3 AND until_at > $4",
        )
        .bind(&now)
        .bind(by)
        .bind(id)
        .bind(&now)
        .execute(&self.pool)
        .await?;
        if ended.rows_affected() == 1 {
            return Ok(());
        }
        let until: Option<String> =
            sqlx::query_scalar("SELECT until_at FROM silences WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        match until {
            Some(until) => Err(AlertError::Invalid(format!(
                "silence `{id}` already ended at {until}"
            ))),
            None => Err(AlertError::NotFound {
                what: "silence",
                id: id.to_owned(),
            }),
        }
    }

    /// Queues a notification for delivery at `due_ns`; entries of one notifier with the same
    /// `group_key` that are due together are delivered as one notification. It tells about
    /// alert `alert_id` (`None` for one whose delivery must not count as telling the alert's
    /// receivers, such as the resolution of labels the alert no longer has), and about the
    /// label set `series`: a later state of the same series delivered first supersedes it.
    /// With `still` given, it is queued only if the alert still fires with that severity (and,
    /// for a reminder, nobody has acknowledged it), checked in the same statement: a
    /// notification made from an earlier read of the alert never lands after its resolution,
    /// its labels' change or its acknowledgement. Returns whether it was queued.
    #[allow(clippy::too_many_arguments)]
    pub async fn enqueue_grouped(
        &self,
        notifier: &str,
        payload: &str,
        due_ns: i64,
        group_key: Option<&str>,
        alert_id: Option<&str>,
        series: &str,
        still: Option<StillFiring<'_>>,
    ) -> Result<bool, AlertError> {
        enqueue_grouped(
            &self.pool, notifier, payload, due_ns, group_key, alert_id, series, still,
        )
        .await
    }

    /// The notifiers that told their receivers about alert `alert_id`.
    pub async fn notified_by(&self, alert_id: &str) -> Result<Vec<String>, AlertError> {
        notified_by(&self.pool, alert_id).await
    }

    /// The notifiers with a notification about alert `alert_id` still queued.
    pub async fn queued_for(&self, alert_id: &str) -> Result<Vec<String>, AlertError> {
        queued_for(&self.pool, alert_id).await
    }

    /// Sets an open alert's severity and annotations (its rule was redefined), leaving the
    /// rest.
    pub async fn set_severity_and_annotations(
        &self,
        id: &str,
        severity: &str,
        annotations: &std::collections::BTreeMap<String, String>,
        now_ns: i64,
    ) -> Result<(), AlertError> {
        let mut tx = self.stamping().await?;
        set_severity_and_annotations(&mut *tx, id, severity, annotations, now_ns).await?;
        tx.commit().await?;
        Ok(())
    }

    /// When the open group `group_key` of `notifier` goes out: the due time of its queued,
    /// not yet attempted entries that are still waiting at `now_ns`. `None` when no such group
    /// is waiting (a new one starts).
    pub async fn open_group_due(
        &self,
        notifier: &str,
        group_key: &str,
        now_ns: i64,
    ) -> Result<Option<i64>, AlertError> {
        open_group_due(&self.pool, notifier, group_key, now_ns).await
    }

    /// Notifications due at `now_ns`, oldest first.
    pub async fn due(&self, now_ns: i64, limit: u32) -> Result<Vec<OutboxEntry>, AlertError> {
        let rows = sqlx::query(concat!(
            select_outbox_entries!(),
            " WHERE next_attempt_ns <= $1 ORDER BY id LIMIT $2"
        ))
        .bind(now_ns)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// Whether outbox entry `id` is still queued.
    pub async fn is_queued(&self, id: i64) -> Result<bool, AlertError> {
        let found: Option<i64> = sqlx::query_scalar("SELECT id FROM outbox WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    /// The notifiers with an entry due at `now_ns`.
    pub async fn notifiers_due(&self, now_ns: i64) -> Result<Vec<String>, AlertError> {
        Ok(
            sqlx::query_scalar("SELECT DISTINCT notifier FROM outbox WHERE next_attempt_ns <= $1")
                .bind(now_ns)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Due entries of one notifier, oldest first.
    pub async fn due_for(
        &self,
        notifier: &str,
        now_ns: i64,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, AlertError> {
        let rows = sqlx::query(concat!(
            select_outbox_entries!(),
            " WHERE notifier = $1 AND next_attempt_ns <= $2 ORDER BY id LIMIT $3"
        ))
        .bind(notifier)
        .bind(now_ns)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// Every due entry of one group of one notifier, oldest first.
    pub async fn due_group(
        &self,
        notifier: &str,
        group_key: &str,
        now_ns: i64,
    ) -> Result<Vec<OutboxEntry>, AlertError> {
        let rows = sqlx::query(concat!(
            select_outbox_entries!(),
            " WHERE notifier = $1 AND group_key = $2 AND next_attempt_ns <= $3 ORDER BY id"
        ))
        .bind(notifier)
        .bind(group_key)
        .bind(now_ns)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// Records that `notifier` told its receiver about each of `alert_ids` at `at_ns`.
    pub async fn record_notified(
        &self,
        alert_ids: &[String],
        notifier: &str,
        at_ns: i64,
    ) -> Result<(), AlertError> {
        for alert_id in alert_ids {
            sqlx::query(
                "INSERT INTO notified (alert_id, notifier, at_ns) VALUES ($1, $2, $3) \
                 ON CONFLICT (alert_id, notifier) DO UPDATE SET at_ns = excluded.at_ns",
            )
            .bind(alert_id)
            .bind(notifier)
            .bind(at_ns)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// When each open alert was last notified, per notifier, as `((alert id, notifier),
    /// ns)`. Rows of alerts no longer open are dropped first.
    pub async fn last_notified(
        &self,
    ) -> Result<std::collections::HashMap<(String, String), i64>, AlertError> {
        sqlx::query(
            "DELETE FROM notified WHERE alert_id NOT IN \
             (SELECT id FROM alerts WHERE state IN ('pending', 'firing'))",
        )
        .execute(&self.pool)
        .await?;
        let rows = sqlx::query("SELECT alert_id, notifier, at_ns FROM notified")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    (r.try_get("alert_id")?, r.try_get("notifier")?),
                    r.try_get("at_ns")?,
                ))
            })
            .collect()
    }

    /// The (alert id, notifier) pairs with a notification queued.
    pub async fn queued_pairs(
        &self,
    ) -> Result<std::collections::HashSet<(String, String)>, AlertError> {
        let rows = sqlx::query(
            "SELECT DISTINCT alert_id, notifier FROM outbox WHERE alert_id IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("alert_id")?, r.try_get("notifier")?)))
            .collect()
    }

    /// Makes every notification that failed before due now (a restart is how a notifier's
    /// configuration is fixed, and its backoff was up to five minutes), unless a later state
    /// of its series is queued for its notifier: that one goes first and supersedes it
    /// ([`Self::delivered_superseding`]), so a receiver is not paged for a firing already
    /// resolved. Returns how many.
    pub async fn retry_failed_now(&self, now_ns: i64) -> Result<u64, AlertError> {
        Ok(sqlx::query(
            "UPDATE outbox SET next_attempt_ns = $1 WHERE attempts > 0 AND next_attempt_ns > $2 \
             AND NOT EXISTS (SELECT 1 FROM outbox AS newer WHERE newer.notifier = outbox.notifier \
             AND newer.series = outbox.series AND newer.id > outbox.id)",
        )
        .bind(now_ns)
        .bind(now_ns)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Deletes the notifications queued for notifiers not in `configured`; returns how many
    /// went, per notifier.
    pub async fn drop_queued_for_unconfigured(
        &self,
        configured: &[&str],
    ) -> Result<Vec<(String, Vec<OutboxEntry>)>, AlertError> {
        let rows = sqlx::query("SELECT DISTINCT notifier FROM outbox")
            .fetch_all(&self.pool)
            .await?;
        let mut dropped = Vec::new();
        for row in &rows {
            let notifier: String = row.try_get("notifier")?;
            if configured.contains(&notifier.as_str()) {
                continue;
            }
            let entries = sqlx::query(concat!(
                select_outbox_entries!(),
                " WHERE notifier = $1 ORDER BY id"
            ))
            .bind(&notifier)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(entry_from_row)
            .collect::<Result<Vec<_>, _>>()?;
            sqlx::query("DELETE FROM outbox WHERE notifier = $1")
                .bind(&notifier)
                .execute(&self.pool)
                .await?;
            dropped.push((notifier, entries));
        }
        Ok(dropped)
    }

    /// The last delivery error of each queued notification that failed, as (notifier,
    /// error), oldest first.
    pub async fn outbox_errors(&self) -> Result<Vec<(String, String)>, AlertError> {
        let rows = sqlx::query(
            "SELECT notifier, last_error FROM outbox WHERE last_error IS NOT NULL ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("notifier")?, r.try_get("last_error")?)))
            .collect()
    }

    /// Notifications not yet delivered.
    /// Per notifier, what waits in the outbox for it.
    pub async fn outbox_by_notifier(&self) -> Result<BTreeMap<String, QueuedFor>, AlertError> {
        let rows = sqlx::query(
            "SELECT notifier, count(*) AS queued, count(CASE WHEN attempts > 0 THEN 1 END) AS retrying, \
             min(next_attempt_ns) AS next_attempt_ns, \
             (SELECT last_error FROM outbox AS o WHERE o.notifier = outbox.notifier \
              AND o.last_error IS NOT NULL ORDER BY o.attempts DESC, o.id LIMIT 1) AS last_error \
             FROM outbox GROUP BY notifier",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("notifier")?,
                    QueuedFor {
                        queued: r.try_get::<i64, _>("queued")?.max(0) as u64,
                        retrying: r.try_get::<Option<i64>, _>("retrying")?.unwrap_or(0).max(0)
                            as u64,
                        next_attempt_ns: r.try_get("next_attempt_ns")?,
                        last_error: r.try_get("last_error")?,
                    },
                ))
            })
            .collect()
    }

    pub async fn outbox_len(&self) -> Result<i64, AlertError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Removes a delivered notification.
    pub async fn delivered(&self, id: i64) -> Result<(), AlertError> {
        sqlx::query("DELETE FROM outbox WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes a delivered notification and every older one of its notifier about the same
    /// series (label set: rule, device, severity) that is still queued, waiting out a retry
    /// backoff: the delivered one carried a later state, and delivering the older one
    /// afterwards would leave the receiver with a stale one, such as a firing after its
    /// resolution, or an earlier episode's resolution after the next one's firing. Returns
    /// how many older ones went.
    pub async fn delivered_superseding(&self, id: i64) -> Result<u64, AlertError> {
        let superseded = sqlx::query(
            "DELETE FROM outbox WHERE id IN (SELECT older.id FROM outbox older \
             JOIN outbox newer ON newer.id = $1 \
             WHERE older.notifier = newer.notifier AND older.series = newer.series \
             AND older.id < newer.id)",
        )
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        self.delivered(id).await?;
        Ok(superseded)
    }

    /// Where rule `rule` had read its table up to when it last saved it, and what it
    /// watched then: `(watches, None)` for "nothing yet, from the earliest row". `None` when
    /// it never saved a position.
    pub async fn saved_position(
        &self,
        rule: &str,
    ) -> Result<Option<(String, Option<i64>)>, AlertError> {
        Ok(
            sqlx::query_as("SELECT watches, read_after FROM rule_positions WHERE rule = $1")
                .bind(rule)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Saves where rule `rule`, watching what `watches` describes, has read up to.
    pub async fn save_position(
        &self,
        rule: &str,
        watches: &str,
        read_after: Option<i64>,
    ) -> Result<(), AlertError> {
        save_position(&self.pool, rule, watches, read_after).await
    }

    /// Forgets rule `rule`'s position (the rule is gone).
    pub async fn forget_position(&self, rule: &str) -> Result<(), AlertError> {
        sqlx::query("DELETE FROM rule_positions WHERE rule = $1")
            .bind(rule)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets which notifiers were told of alert `alert_id`: its labels changed, and no
    /// receiver has heard of the new ones yet.
    pub async fn forget_notified(&self, alert_id: &str) -> Result<(), AlertError> {
        forget_notified(&self.pool, alert_id).await
    }

    /// Drops the queued notifications about alert `alert_id` under the label set `series`
    /// (its labels before a change): no receiver has seen them, and they are out of date.
    pub async fn drop_queued(&self, alert_id: &str, series: &str) -> Result<(), AlertError> {
        drop_queued(&self.pool, alert_id, series).await
    }

    /// Forgets the read positions of rules other than `rules`: a rule that is gone and comes
    /// back later starts as its `start` says, not from a position long stale.
    pub async fn keep_positions_of(&self, rules: &[crate::Rule]) -> Result<(), AlertError> {
        let saved: Vec<String> = sqlx::query_scalar("SELECT rule FROM rule_positions")
            .fetch_all(&self.pool)
            .await?;
        for rule in saved {
            if !rules.iter().any(|r| r.name == rule) {
                self.forget_position(&rule).await?;
            }
        }
        Ok(())
    }

    /// Records a failed attempt and when to try again.
    pub async fn retry_later(
        &self,
        id: i64,
        next_attempt_ns: i64,
        error: &str,
    ) -> Result<(), AlertError> {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_ns = $1, last_error = $2 WHERE id = $3",
        )
        .bind(next_attempt_ns)
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Writes that commit together ([`AlertDb::batch`]); dropped without [`Batch::commit`], none
/// of them land. Reads through it see its own writes.
pub struct Batch {
    tx: sqlx::Transaction<'static, sqlx::Any>,
}

impl Batch {
    /// Makes the batch's writes durable, all at once.
    pub async fn commit(self) -> Result<(), AlertError> {
        self.tx.commit().await?;
        Ok(())
    }

    /// Sets an alert's `silenced` flag alone, if it is still in `state` with `severity`;
    /// returns whether it was (a transition or a relabelling written meanwhile wins, and the
    /// next pass sees the alert as it is now).
    pub async fn set_silenced(
        &mut self,
        id: &str,
        silenced: bool,
        state: AlertState,
        severity: &str,
        now_ns: i64,
    ) -> Result<bool, AlertError> {
        set_silenced(&mut *self.tx, id, silenced, state, severity, now_ns).await
    }

    /// Inserts an alert, or updates its lifecycle. An existing alert's acknowledgement is
    /// [`AlertDb::set_ack`]'s alone to change: a transition that read the alert before an
    /// operator acknowledged it (or acknowledged it again) must not write the old one back.
    pub async fn upsert(&mut self, alert: &Alert, now_ns: i64) -> Result<(), AlertError> {
        upsert(&mut *self.tx, alert, now_ns).await
    }

    /// Removes an alert (a pending one that cleared before firing).
    pub async fn delete(&mut self, id: &str) -> Result<(), AlertError> {
        delete(&mut *self.tx, id).await
    }

    /// One alert.
    pub async fn get(&mut self, id: &str) -> Result<Alert, AlertError> {
        get(&mut *self.tx, id).await
    }

    /// Queues a notification for delivery at `due_ns`; entries of one notifier with the same
    /// `group_key` that are due together are delivered as one notification. It tells about
    /// alert `alert_id` (`None` for one whose delivery must not count as telling the alert's
    /// receivers, such as the resolution of labels the alert no longer has), and about the
    /// label set `series`: a later state of the same series delivered first supersedes it.
    /// With `still` given, it is queued only if the alert still fires with that severity (and,
    /// for a reminder, nobody has acknowledged it), checked in the same statement: a
    /// notification made from an earlier read of the alert never lands after its resolution,
    /// its labels' change or its acknowledgement. Returns whether it was queued.
    #[allow(clippy::too_many_arguments)]
    pub async fn enqueue_grouped(
        &mut self,
        notifier: &str,
        payload: &str,
        due_ns: i64,
        group_key: Option<&str>,
        alert_id: Option<&str>,
        series: &str,
        still: Option<StillFiring<'_>>,
    ) -> Result<bool, AlertError> {
        enqueue_grouped(
            &mut *self.tx,
            notifier,
            payload,
            due_ns,
            group_key,
            alert_id,
            series,
            still,
        )
        .await
    }

    /// The notifiers that told their receivers about alert `alert_id`.
    pub async fn notified_by(&mut self, alert_id: &str) -> Result<Vec<String>, AlertError> {
        notified_by(&mut *self.tx, alert_id).await
    }

    /// The notifiers with a notification about alert `alert_id` still queued.
    pub async fn queued_for(&mut self, alert_id: &str) -> Result<Vec<String>, AlertError> {
        queued_for(&mut *self.tx, alert_id).await
    }

    /// Sets an open alert's severity and annotations (its rule was redefined), leaving the
    /// rest.
    pub async fn set_severity_and_annotations(
        &mut self,
        id: &str,
        severity: &str,
        annotations: &std::collections::BTreeMap<String, String>,
        now_ns: i64,
    ) -> Result<(), AlertError> {
        set_severity_and_annotations(&mut *self.tx, id, severity, annotations, now_ns).await
    }

    /// When the open group `group_key` of `notifier` goes out: the due time of its queued,
    /// not yet attempted entries that are still waiting at `now_ns`. `None` when no such group
    /// is waiting (a new one starts).
    pub async fn open_group_due(
        &mut self,
        notifier: &str,
        group_key: &str,
        now_ns: i64,
    ) -> Result<Option<i64>, AlertError> {
        open_group_due(&mut *self.tx, notifier, group_key, now_ns).await
    }

    /// Saves where rule `rule`, watching what `watches` describes, has read up to.
    pub async fn save_position(
        &mut self,
        rule: &str,
        watches: &str,
        read_after: Option<i64>,
    ) -> Result<(), AlertError> {
        save_position(&mut *self.tx, rule, watches, read_after).await
    }

    /// Forgets which notifiers were told of alert `alert_id`: its labels changed, and no
    /// receiver has heard of the new ones yet.
    pub async fn forget_notified(&mut self, alert_id: &str) -> Result<(), AlertError> {
        forget_notified(&mut *self.tx, alert_id).await
    }

    /// Drops the queued notifications about alert `alert_id` under the label set `series`
    /// (its labels before a change): no receiver has seen them, and they are out of date.
    pub async fn drop_queued(&mut self, alert_id: &str, series: &str) -> Result<(), AlertError> {
        drop_queued(&mut *self.tx, alert_id, series).await
    }
}

async fn set_silenced(
    db: impl sqlx::AnyExecutor<'_>,
    id: &str,
    silenced: bool,
    state: AlertState,
    severity: &str,
    now_ns: i64,
) -> Result<bool, AlertError> {
    let done = sqlx::query(concat!(
        "UPDATE alerts SET silenced = $1, updated_ns = ",
        change_stamp!("$5"),
        " WHERE id = $2 AND state = $3 AND severity = $4"
    ))
    .bind(silenced)
    .bind(id)
    .bind(state.as_str())
    .bind(severity)
    .bind(now_ns)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

async fn upsert(
    db: impl sqlx::AnyExecutor<'_>,
    alert: &Alert,
    now_ns: i64,
) -> Result<(), AlertError> {
    let annotations =
        serde_json::to_string(&alert.annotations).map_err(|e| corrupt("annotations", e))?;
    sqlx::query(concat!(
        "INSERT INTO alerts (id, rule, key, severity, state, started_at, fired_at, resolved_at, \
         value, annotations, ack_by, ack_at, feedback, comment, silenced, updated_ns) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, ",
        change_stamp!("$16"),
        ") ON CONFLICT (id) DO UPDATE SET state = excluded.state, fired_at = excluded.fired_at, \
         resolved_at = excluded.resolved_at, value = excluded.value, \
         annotations = excluded.annotations, \
         silenced = excluded.silenced, updated_ns = excluded.updated_ns"
    ))
    .bind(&alert.id)
    .bind(&alert.rule)
    .bind(&alert.key)
    .bind(&alert.severity)
    .bind(alert.state.as_str())
    .bind(&alert.started_at)
    .bind(&alert.fired_at)
    .bind(&alert.resolved_at)
    .bind(alert.value)
    .bind(annotations)
    .bind(alert.ack.as_ref().map(|a| a.by.clone()))
    .bind(alert.ack.as_ref().map(|a| a.at.clone()))
    .bind(alert.ack.as_ref().map(|a| a.feedback.as_str()))
    .bind(alert.ack.as_ref().and_then(|a| a.comment.clone()))
    .bind(alert.silenced)
    .bind(now_ns)
    .execute(db)
    .await?;
    Ok(())
}

async fn delete(db: impl sqlx::AnyExecutor<'_>, id: &str) -> Result<(), AlertError> {
    sqlx::query("DELETE FROM alerts WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

async fn get(db: impl sqlx::AnyExecutor<'_>, id: &str) -> Result<Alert, AlertError> {
    let row = sqlx::query(concat!(select_alerts!(), " WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| AlertError::NotFound {
            what: "alert",
            id: id.to_owned(),
        })?;
    alert_from_row(&row)
}

#[allow(clippy::too_many_arguments)]
async fn enqueue_grouped(
    db: impl sqlx::AnyExecutor<'_>,
    notifier: &str,
    payload: &str,
    due_ns: i64,
    group_key: Option<&str>,
    alert_id: Option<&str>,
    series: &str,
    still: Option<StillFiring<'_>>,
) -> Result<bool, AlertError> {
    let severity = still.map(|s| s.severity);
    let unacknowledged = still.is_some_and(|s| s.unacknowledged);
    let done = sqlx::query(
        "INSERT INTO outbox (notifier, payload, attempts, next_attempt_ns, group_key, \
         alert_id, series, reminder) SELECT $1, $2, 0, $3, $4, $5, $6, $7 WHERE $8 IS NULL OR EXISTS \
         (SELECT 1 FROM alerts WHERE id = $9 AND state = 'firing' AND severity = $10 \
         AND ($11 = 0 OR ack_by IS NULL))",
    )
    .bind(notifier)
    .bind(payload)
    .bind(due_ns)
    .bind(group_key)
    .bind(alert_id)
    .bind(series)
    .bind(unacknowledged.then_some("1"))
    .bind(severity)
    .bind(alert_id)
    .bind(severity)
    .bind(i64::from(unacknowledged))
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

async fn notified_by(
    db: impl sqlx::AnyExecutor<'_>,
    alert_id: &str,
) -> Result<Vec<String>, AlertError> {
    Ok(
        sqlx::query_scalar("SELECT notifier FROM notified WHERE alert_id = $1")
            .bind(alert_id)
            .fetch_all(db)
            .await?,
    )
}

async fn queued_for(
    db: impl sqlx::AnyExecutor<'_>,
    alert_id: &str,
) -> Result<Vec<String>, AlertError> {
    Ok(
        sqlx::query_scalar("SELECT DISTINCT notifier FROM outbox WHERE alert_id = $1")
            .bind(alert_id)
            .fetch_all(db)
            .await?,
    )
}

async fn set_severity_and_annotations(
    db: impl sqlx::AnyExecutor<'_>,
    id: &str,
    severity: &str,
    annotations: &std::collections::BTreeMap<String, String>,
    now_ns: i64,
) -> Result<(), AlertError> {
    let annotations = serde_json::to_string(annotations).map_err(|e| corrupt("annotations", e))?;
    sqlx::query(concat!(
        "UPDATE alerts SET severity = $1, annotations = $2, updated_ns = ",
        change_stamp!("$4"),
        " WHERE id = $3 AND state != 'resolved'"
    ))
    .bind(severity)
    .bind(annotations)
    .bind(id)
    .bind(now_ns)
    .execute(db)
    .await?;
    Ok(())
}

async fn open_group_due(
    db: impl sqlx::AnyExecutor<'_>,
    notifier: &str,
    group_key: &str,
    now_ns: i64,
) -> Result<Option<i64>, AlertError> {
    Ok(sqlx::query_scalar(
        "SELECT min(next_attempt_ns) FROM outbox WHERE notifier = $1 AND group_key = $2 \
         AND attempts = 0 AND next_attempt_ns > $3",
    )
    .bind(notifier)
    .bind(group_key)
    .bind(now_ns)
    .fetch_one(db)
    .await?)
}

async fn save_position(
    db: impl sqlx::AnyExecutor<'_>,
    rule: &str,
    watches: &str,
    read_after: Option<i64>,
) -> Result<(), AlertError> {
    sqlx::query(
        "INSERT INTO rule_positions (rule, watches, read_after) VALUES ($1, $2, $3) \
         ON CONFLICT (rule) DO UPDATE SET watches = excluded.watches, \
         read_after = excluded.read_after",
    )
    .bind(rule)
    .bind(watches)
    .bind(read_after)
    .execute(db)
    .await?;
    Ok(())
}

async fn forget_notified(db: impl sqlx::AnyExecutor<'_>, alert_id: &str) -> Result<(), AlertError> {
    sqlx::query("DELETE FROM notified WHERE alert_id = $1")
        .bind(alert_id)
        .execute(db)
        .await?;
    Ok(())
}

async fn drop_queued(
    db: impl sqlx::AnyExecutor<'_>,
    alert_id: &str,
    series: &str,
) -> Result<(), AlertError> {
    sqlx::query("DELETE FROM outbox WHERE alert_id = $1 AND series = $2")
        .bind(alert_id)
        .bind(series)
        .execute(db)
        .await?;
    Ok(())
}

fn alert_from_row(r: &AnyRow) -> Result<Alert, AlertError> {
    let state = match r.try_get::<String, _>("state")?.as_str() {
        "pending" => AlertState::Pending,
        "firing" => AlertState::Firing,
        "resolved" => AlertState::Resolved,
        other => return Err(corrupt("alert state", other)),
    };
    let annotations: BTreeMap<String, String> =
        serde_json::from_str(&r.try_get::<String, _>("annotations")?)
            .map_err(|e| corrupt("annotations", e))?;
    let ack = match (
        r.try_get::<Option<String>, _>("ack_by")?,
        r.try_get::<Option<String>, _>("ack_at")?,
        r.try_get::<Option<String>, _>("feedback")?,
    ) {
        (Some(by), Some(at), Some(feedback)) => Some(Ack {
            by,
            at,
            feedback: Feedback::parse(&feedback).ok_or_else(|| corrupt("feedback", &feedback))?,
            comment: r.try_get("comment")?,
        }),
        _ => None,
    };
    Ok(Alert {
        id: r.try_get("id")?,
        rule: r.try_get("rule")?,
        key: r.try_get("key")?,
        severity: r.try_get("severity")?,
        state,
        started_at: r.try_get("started_at")?,
        fired_at: r.try_get("fired_at")?,
        resolved_at: r.try_get("resolved_at")?,
        value: r.try_get("value")?,
        annotations,
        ack,
        silenced: r.try_get::<i64, _>("silenced")? != 0,
        inhibited_by: None,
        action: None,
        applied: Vec::new(),
        updated_at: crate::model::rfc3339_ns(r.try_get("updated_ns")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(rule: &str, key: &str) -> Alert {
        Alert {
            id: format!("{rule}/{key}"),
            rule: rule.into(),
            key: key.into(),
            severity: "warning".into(),
            state: AlertState::Firing,
            started_at: "2026-12-04T10:00:00.000Z".into(),
            fired_at: Some("2026-12-04T10:00:00.000Z".into()),
            resolved_at: None,
            value: Some(1.5),
            annotations: BTreeMap::new(),
            ack: None,
            silenced: true,
            inhibited_by: None,
            action: None,
            applied: Vec::new(),
            updated_at: String::new(),
        }
    }

    /// Only `*` is a wildcard, on SQLite (GLOB) and PostgreSQL (LIKE) alike: `?`, `[`, `_`, `%`
    /// and `\` are themselves, and case counts.
    #[tokio::test]
    async fn listing_patterns_match_the_same_alerts_on_both_databases() {
        let dir = tempfile::tempdir().unwrap();
        let db = AlertDb::open(&dir.path().join("alerts.db")).await.unwrap();
        let rules = [
            "pump-hot",
            "pump_hot",
            "pump%hot",
            "oven[1]",
            "what?",
            "back\\slash",
        ];
        for (n, rule) in rules.iter().enumerate() {
            db.upsert(&alert(rule, &format!("dev-{n}")), 1_000 + n as i64)
                .await
                .unwrap();
        }
        let matching = |pattern: &str| {
            let db = db.clone();
            let query = AlertQuery {
                rule: Some(pattern.to_owned()),
                ..AlertQuery::default()
            };
            async move {
                let mut rules: Vec<String> = db
                    .find(&query, 100)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|a| a.rule)
                    .collect();
                rules.sort();
                rules
            }
        };
        assert_eq!(matching("pump-*").await, ["pump-hot"]);
        assert_eq!(matching("pump_hot").await, ["pump_hot"]);
        assert_eq!(matching("pump%hot").await, ["pump%hot"]);
        assert_eq!(matching("oven[1]").await, ["oven[1]"]);
        assert_eq!(matching("what?").await, ["what?"]);
        assert_eq!(matching("back\\slash").await, ["back\\slash"]);
        assert_eq!(matching("*hot").await, ["pump%hot", "pump-hot", "pump_hot"]);
        assert!(matching("PUMP-*").await.is_empty());
        // The silenced flag and the value come back as stored.
        let read = db.get("pump-hot/dev-0").await.unwrap();
        assert!(read.silenced);
        assert_eq!(read.value, Some(1.5));
    }
}
