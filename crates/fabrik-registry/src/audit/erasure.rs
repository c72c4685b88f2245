//! Erasing one person's names from the registry (GDPR Art. 17; decision 0040): from the audit
//! log without breaking its chain, from stage decisions and use cases, and their user.
//!
//! Owns finding the audit fields that name the person, replacing each with [`ERASED`] and its
//! salt with its digest, and the erasure entry that counts and digests what was erased, all in
//! one transaction under the chain's append lock.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{
    AuditEvent, ERASED, ErasedField, FORMAT_ERASABLE, PERSON_PARAMETER, decoded, erasure_summary,
    field_code, field_digest, insert_entry, route_names, unhex,
};
use crate::{Dialect, Registry, RegistryError};

/// Entries read per page while looking for requests about the person.
const PAGE: i64 = 10_000;

/// Actors that are not people: the shared token, refused sign-ins under no user's name, and
/// requests without credentials. Erasing one would hide what was done, not protect anyone.
const NOT_PEOPLE: [&str; 3] = ["admin-token", "unknown user", "anonymous"];

/// How often the write-ahead log's truncation is tried while a reader holds it.
const TRUNCATE_ATTEMPTS: u32 = 20;

/// What erasing one person's names from the registry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PersonErasure {
    /// The audit entry that records the erasure; it names the admin, not the person.
    pub audit_seq: i64,
    /// Audit entries the person made, whose actor now reads `(erased)`.
    pub audit_entries_by: i64,
    /// Audit entries of requests about them (their name in the request's path), whose target
    /// now reads `(erased)` in its place.
    pub audit_entries_about: i64,
    /// Of those, entries written before names could be erased: their hash covers the name,
    /// so the chain check takes them as stored from now on.
    pub audit_entries_unverifiable: i64,
    /// Whether their dashboard user was removed.
    pub user_removed: bool,
    /// Stage decisions they made, now made by `(erased)`.
    pub stage_decisions: i64,
    /// Use cases that named them as owner or stakeholder, and no longer do.
    pub use_cases: Vec<String>,
}

/// One audit field to erase.
struct Field {
    seq: i64,
    format: i64,
    /// The field's salt, while it has one.
    salt: Option<String>,
    /// The name as stored.
    value: String,
    /// What it reads as once erased.
    erased: String,
}

impl Field {
    /// The digest that replaces the salt: `None` for a format-1 entry, which has no salt
    /// (its hash covers the name itself), or a salt that is not hex (a changed entry, which
    /// the chain check reports either way).
    fn digest(&self) -> Option<String> {
        let salt = unhex(self.salt.as_deref()?)?;
        (self.format == FORMAT_ERASABLE).then(|| super::hex(&field_digest(&salt, &self.value)))
    }
}

/// The end of the action of an entry that sums up refusals held back (see `refusals`): its
/// target is text that ends with the last refused request's path.
const REFUSALS_SUMMARY: &str = " refusals not recorded one by one";

/// A refusal summary's text with every word or path segment that is `name` replaced by
/// [`ERASED`]; `None` when there is none.
fn redacted_summary(target: &str, name: &str) -> Option<String> {
    let mut found = false;
    let mut out = String::with_capacity(target.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String, found: &mut bool| {
        if !word.is_empty() && decoded(word) == name {
            out.push_str(ERASED);
            *found = true;
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in target.chars() {
        if matches!(c, '/' | ' ' | '?' | '&' | '=') {
            flush(&mut word, &mut out, &mut found);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out, &mut found);
    found.then_some(out)
}

/// `target` with every path segment that its route takes as a person's `{name}` and that is
/// `name` replaced by [`ERASED`], and its query too if the name is in it.
fn redacted_target(action: &str, target: &str, name: &str) -> String {
    let route = action.split_once(' ').map_or("", |(_, route)| route);
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let mut templates = route.split('/');
    let mut redacted: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        let template = templates.next().unwrap_or_default();
        redacted.push(
            if template == PERSON_PARAMETER && decoded(segment) == name {
                ERASED
            } else {
                segment
            },
        );
    }
    let mut out = redacted.join("/");
    if let Some(query) = query {
        out.push('?');
        out.push_str(if decoded(query).contains(name) {
            ERASED
        } else {
            query
        });
    }
    out
}

impl Registry {
    /// Erases `name` from the registry on behalf of `by`: the audit fields naming them (as
    /// actor, or in the path of a request about them), their stage decisions' actor, their
    /// place in use cases, and their user. An erasure entry is appended to the audit log in
    /// the same transaction; afterwards an SQLite database's write-ahead log is truncated, so
    /// the names are not left in it, and a PostgreSQL database's four tables are vacuumed.
    pub async fn erase_person(&self, name: &str, by: &str) -> Result<PersonErasure, RegistryError> {
        if name.is_empty() || name == ERASED || NOT_PEOPLE.contains(&name) {
            return Err(RegistryError::Invalid(format!(
                "`{name}` is not a person's name that can be erased"
            )));
        }
        if name == by {
            return Err(RegistryError::Invalid(
                "an erasure is recorded under the name of who asked for it: another admin, or \
                 the admin token, must erase you"
                    .into(),
            ));
        }
        let chain = &self.audit;
        let one_at_a_time = chain.append.lock().await;
        // Their refusals held back in memory would be summed up under their name later.
        chain.refusals.lock().forget(name);
        // Takes SQLite's write lock at once: a deferred transaction that read the log and then
        // wrote would fail if a device counter was written in between. PostgreSQL locks rows.
        let mut tx = match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.pool.begin().await?,
        };

        let mut actors = Vec::new();
        for row in sqlx::query(self.dialect.pick(
            "SELECT seq, format, actor_salt FROM audit_log \
             WHERE actor = $1 AND actor_erased_by IS NULL AND typeof(seq) = 'integer' ORDER BY seq",
            "SELECT seq, format, actor_salt FROM audit_log \
             WHERE actor = $1 AND actor_erased_by IS NULL ORDER BY seq",
        ))
        .bind(name)
        .fetch_all(&mut *tx)
        .await?
        {
            actors.push(Field {
                seq: row.try_get("seq")?,
                format: row.try_get("format")?,
                salt: row.try_get("actor_salt")?,
                value: name.to_owned(),
                erased: ERASED.to_owned(),
            });
        }
        let mut targets = Vec::new();
        let mut after = i64::MIN;
        loop {
            let rows = sqlx::query(self.dialect.pick(
                "SELECT seq, format, action, target, target_salt FROM audit_log \
                 WHERE target_erased_by IS NULL AND typeof(seq) = 'integer' AND seq > $1 \
                 ORDER BY seq LIMIT $2",
                "SELECT seq, format, action, target, target_salt FROM audit_log \
                 WHERE target_erased_by IS NULL AND seq > $1 ORDER BY seq LIMIT $2",
            ))
            .bind(after)
            .bind(PAGE)
            .fetch_all(&mut *tx)
            .await?;
            let Some(last) = rows.last() else { break };
            after = last.try_get("seq")?;
            for row in rows {
                let action: String = row.try_get("action")?;
                let target: String = row.try_get("target")?;
                let erased = if route_names(&action, &target, name) {
                    Some(redacted_target(&action, &target, name))
                } else if action.ends_with(REFUSALS_SUMMARY) {
                    redacted_summary(&target, name)
                } else {
                    None
                };
                if let Some(erased) = erased {
                    targets.push(Field {
                        seq: row.try_get("seq")?,
                        format: row.try_get("format")?,
                        salt: row.try_get("target_salt")?,
                        erased,
                        value: target,
                    });
                }
            }
        }

        let erased_fields: Vec<ErasedField> = actors
            .iter()
            .map(|f| (f, false))
            .chain(targets.iter().map(|f| (f, true)))
            .map(|(f, is_target)| ErasedField {
                code: field_code(f.seq, is_target),
                format: f.format,
                text: f.erased.clone(),
            })
            .collect();
        let record = insert_entry(
            chain,
            &mut tx,
            AuditEvent {
                actor: by.to_owned(),
                action: "DELETE /api/v1/people/{name}".into(),
                target: format!("/api/v1/people/{ERASED}"),
                status: 200,
            },
            Some(erasure_summary(&erased_fields)),
        )
        .await?;
        let mut unverifiable = std::collections::BTreeSet::new();
        for (column, fields) in [("actor", &actors), ("target", &targets)] {
            // Audited: `column` is one of the two constants above; the values are bound.
            let sql = format!(
                "UPDATE audit_log SET {column} = $1, {column}_salt = NULL, {column}_digest = $2, \
                 {column}_erased_by = $3 WHERE seq = $4"
            );
            for field in fields {
                if field.format != FORMAT_ERASABLE {
                    unverifiable.insert(field.seq);
                }
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(&field.erased)
                    .bind(field.digest())
                    .bind(record.seq)
                    .bind(field.seq)
                    .execute(&mut *tx)
                    .await?;
            }
        }

        let user_removed = sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        let stage_decisions =
            sqlx::query("UPDATE use_case_decisions SET actor = $1 WHERE actor = $2")
                .bind(ERASED)
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        let mut use_cases = Vec::new();
        // SQLite's write lock is held; PostgreSQL locks the rows read, so an edit made in
        // between is not overwritten by the copy read here.
        for row in sqlx::query(self.dialect.pick(
            "SELECT name, definition FROM use_cases ORDER BY name",
            "SELECT name, definition FROM use_cases ORDER BY name FOR UPDATE",
        ))
        .fetch_all(&mut *tx)
        .await?
        {
            let use_case: String = row.try_get("name")?;
            let text: String = row.try_get("definition")?;
            let mut definition: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                RegistryError::Corrupt(format!("use case `{use_case}`: its definition: {e}"))
            })?;
            if !without_name(&mut definition, name) {
                continue;
            }
            sqlx::query("UPDATE use_cases SET definition = $1 WHERE name = $2")
                .bind(definition.to_string())
                .bind(&use_case)
                .execute(&mut *tx)
                .await?;
            use_cases.push(use_case);
        }
        tx.commit().await?;
        // The erasure is recorded: the cleanup below need not hold back other entries.
        drop(one_at_a_time);
        if self.dialect == Dialect::Postgres {
            // The old row versions stay in the tables' files until a vacuum reclaims them.
            // It cannot reclaim versions an older snapshot still sees (an open transaction, a
            // running dump), and PostgreSQL does not zero the space it frees (decision 0055).
            // The erasure itself is committed: a failed vacuum is logged, not returned.
            for vacuum in [
                "VACUUM audit_log",
                "VACUUM users",
                "VACUUM use_case_decisions",
                "VACUUM use_cases",
            ] {
                if let Err(e) = sqlx::query(vacuum).execute(&self.pool).await {
                    tracing::warn!(error = %e, statement = vacuum, "Vacuum after an erasure failed: the old row versions stay until the next vacuum.");
                }
            }
        }
        // The old pages may still be in the write-ahead log until it is checkpointed;
        // deleted cells are zeroed (`secure_delete`, set at connect). A reader in the middle
        // of a query holds the log: the truncation is tried again for a while.
        let mut truncated = self.dialect == Dialect::Postgres;
        for _ in 0..TRUNCATE_ATTEMPTS {
            if truncated {
                break;
            }
            let busy: i64 = sqlx::query_scalar("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.pool)
                .await?;
            if busy == 0 {
                truncated = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if !truncated {
            tracing::warn!(
                "The registry's write-ahead log could not be truncated after an erasure (a \
                 reader held it): the erased names stay in it until the next checkpoint."
            );
        }
        tracing::info!(
            target: "fabrik::audit",
            seq = record.seq,
            by,
            fields = erased_fields.len(),
            "A person's names were erased from the registry."
        );
        Ok(PersonErasure {
            audit_seq: record.seq,
            audit_entries_by: actors.len() as i64,
            audit_entries_about: targets.len() as i64,
            audit_entries_unverifiable: unverifiable.len() as i64,
            user_removed,
            stage_decisions: i64::try_from(stage_decisions).unwrap_or(i64::MAX),
            use_cases,
        })
    }
}

/// Takes `name` out of a use case definition's owner and stakeholders; whether it was there.
fn without_name(definition: &mut serde_json::Value, name: &str) -> bool {
    let mut changed = false;
    if let Some(owner) = definition.get_mut("owner")
        && owner.as_str() == Some(name)
    {
        *owner = serde_json::Value::String(ERASED.to_owned());
        changed = true;
    }
    if let Some(serde_json::Value::Array(stakeholders)) = definition.get_mut("stakeholders") {
        let before = stakeholders.len();
        stakeholders.retain(|s| s.as_str() != Some(name));
        changed |= stakeholders.len() != before;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;

    const NAME: &str = "anastasia-k";

    fn event(actor: &str, action: &str, target: &str) -> AuditEvent {
        AuditEvent {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            status: 200,
        }
    }

    #[tokio::test]
    async fn erasing_a_person_keeps_the_chain_and_leaves_no_trace_of_the_name_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.db");
        let registry = Registry::open(&path).await.unwrap();
        // An entry written before names could be erased: format 1, hashed over the name.
        let old = event(NAME, "POST /api/v1/devices", "/api/v1/devices");
        let time = crate::now_ns();
        let hash = registry
            .audit
            .hash_of_names(super::super::GENESIS, 1, time, &old);
        sqlx::query(
            "INSERT INTO audit_log (seq, time, actor, action, target, status, hash) \
             VALUES (1, $1, $2, $3, $4, 200, $5)",
        )
        .bind(time)
        .bind(&old.actor)
        .bind(&old.action)
        .bind(&old.target)
        .bind(&hash)
        .execute(&registry.pool)
        .await
        .unwrap();
        registry
            .add_user(NAME, Role::Operator, Some("a long enough password".into()))
            .await
            .unwrap();
        let pipeline = "PUT /api/v1/pipelines/{name}";
        for e in [
            event(NAME, pipeline, "/api/v1/pipelines/p1"),
            event(
                "admin-token",
                "PUT /api/v1/users/{name}/password",
                &format!("/api/v1/users/{NAME}/password"),
            ),
            event("ben", pipeline, "/api/v1/pipelines/p2"),
        ] {
            registry.audit(e).await.unwrap();
        }
        sqlx::query(
            "INSERT INTO use_cases (name, definition, stage, stage_since, created_at, updated_at) \
             VALUES ('pumps', $1, 'pilot', 0, 0, 0)",
        )
        .bind(format!(
            r#"{{"owner":"{NAME}","stakeholders":["ben","{NAME}"]}}"#
        ))
        .execute(&registry.pool)
        .await
        .unwrap();
        assert!(registry.verify_audit().await.unwrap().intact);

        assert!(matches!(
            registry.erase_person(NAME, NAME).await,
            Err(RegistryError::Invalid(_))
        ));
        let erased = registry.erase_person(NAME, "admin-token").await.unwrap();
        assert_eq!(
            erased,
            PersonErasure {
                audit_seq: 5,
                audit_entries_by: 2,
                audit_entries_about: 1,
                audit_entries_unverifiable: 1,
                user_removed: true,
                stage_decisions: 0,
                use_cases: vec!["pumps".into()],
            }
        );
        let check = registry.verify_audit().await.unwrap();
        assert!(check.intact, "{check:?}");
        assert_eq!(
            (
                check.entries,
                check.erased_entries,
                check.unverifiable_entries
            ),
            (5, 2, 1)
        );
        let entries = registry.audit_entries(None, 100).await.unwrap();
        let targets: Vec<&str> = entries.iter().map(|e| e.target.as_str()).collect();
        assert_eq!(
            targets,
            [
                "/api/v1/people/(erased)",
                "/api/v1/pipelines/p2",
                "/api/v1/users/(erased)/password",
                "/api/v1/pipelines/p1",
                "/api/v1/devices"
            ]
        );
        assert_eq!(entries[0].actor, "admin-token");
        assert_eq!(entries[0].erased_fields, Some(3));
        assert_eq!(entries[2].erased, ["target"]);
        assert_eq!(
            (entries[3].actor.as_str(), &entries[3].erased[..]),
            (ERASED, &["actor".to_owned()][..])
        );
        assert!(registry.users().await.unwrap().is_empty());
        let definition: String =
            sqlx::query_scalar("SELECT definition FROM use_cases WHERE name = 'pumps'")
                .fetch_one(&registry.pool)
                .await
                .unwrap();
        assert_eq!(definition, r#"{"owner":"(erased)","stakeholders":["ben"]}"#);

        // Nowhere in the database's files: zeroed when overwritten, and the write-ahead log
        // truncated. (A PostgreSQL server's files are its own: decision 0055.)
        let files = if crate::test_database::on_postgres() {
            Vec::new()
        } else {
            std::fs::read_dir(dir.path()).unwrap().collect()
        };
        for file in files {
            let file = file.unwrap().path();
            let bytes = std::fs::read(&file).unwrap();
            assert!(
                !bytes.windows(NAME.len()).any(|w| w == NAME.as_bytes()),
                "{} still holds the name",
                file.display()
            );
        }

        // A second erasure finds nothing more and keeps the chain.
        let again = registry.erase_person(NAME, "admin-token").await.unwrap();
        assert_eq!(
            (
                again.audit_entries_by,
                again.audit_entries_about,
                again.user_removed
            ),
            (0, 0, false)
        );
        assert!(registry.verify_audit().await.unwrap().intact);

        // What stands in for an erased name is covered by the erasure's summary: putting
        // another name there is seen, though the entry's own hash no longer covers it.
        let tampered = |sql: &'static str| {
            let pool = registry.pool.clone();
            async move {
                sqlx::query(sql).execute(&pool).await.unwrap();
            }
        };
        tampered("UPDATE audit_log SET actor = 'ben' WHERE seq = 2").await;
        let check = registry.verify_audit().await.unwrap();
        assert_eq!(check.broken_at, Some(5), "{check:?}");
        tampered("UPDATE audit_log SET actor = '(erased)' WHERE seq = 2").await;
        assert!(registry.verify_audit().await.unwrap().intact);
        // An entry's format set back to 1, whose hash an erasure leaves unchecked: refused
        // after entries of format 2.
        tampered("UPDATE audit_log SET format = 1 WHERE seq = 3").await;
        let check = registry.verify_audit().await.unwrap();
        assert_eq!(check.broken_at, Some(3), "{check:?}");
        assert!(check.problem.unwrap().contains("format 1 after"));
        tampered("UPDATE audit_log SET format = 2 WHERE seq = 3").await;
        // The first entry of format 2, set back to 1: the summary covers each field's format.
        tampered("UPDATE audit_log SET format = 1 WHERE seq = 2").await;
        let check = registry.verify_audit().await.unwrap();
        assert_eq!(check.broken_at, Some(5), "{check:?}");
        tampered("UPDATE audit_log SET format = 2 WHERE seq = 2").await;
        // A format-1 entry cannot vouch for erasures: its hash does not cover a summary.
        tampered("UPDATE audit_log SET erasure = '0:00' WHERE seq = 1").await;
        let check = registry.verify_audit().await.unwrap();
        assert_eq!(check.broken_at, Some(1), "{check:?}");
        tampered("UPDATE audit_log SET erasure = NULL WHERE seq = 1").await;
        assert!(registry.verify_audit().await.unwrap().intact);
        // Neither the shared token nor refusals under no user's name are a person.
        for actor in ["admin-token", "unknown user", "anonymous"] {
            assert!(matches!(
                registry.erase_person(actor, "ben").await,
                Err(RegistryError::Invalid(_))
            ));
        }

        // Erasing by hand, without the key: the salt is in the database, so the digest can be
        // made, but the erasure entry's count and digest do not cover the field.
        let salt: String = sqlx::query_scalar("SELECT actor_salt FROM audit_log WHERE seq = 4")
            .fetch_one(&registry.pool)
            .await
            .unwrap();
        let digest = super::super::hex(&field_digest(&unhex(&salt).unwrap(), "ben"));
        sqlx::query(
            "UPDATE audit_log SET actor = $1, actor_salt = NULL, actor_digest = $2, \
             actor_erased_by = 5 WHERE seq = 4",
        )
        .bind(ERASED)
        .bind(&digest)
        .execute(&registry.pool)
        .await
        .unwrap();
        let check = registry.verify_audit().await.unwrap();
        assert_eq!(check.broken_at, Some(5), "{check:?}");
        assert!(check.problem.unwrap().contains("erased 3 field(s), but 4"));
        // ... or pointing at an entry that erased nothing.
        sqlx::query("UPDATE audit_log SET actor_erased_by = 6 WHERE seq = 4")
            .execute(&registry.pool)
            .await
            .unwrap();
        let check = registry.verify_audit().await.unwrap();
        assert_eq!(check.broken_at, Some(6), "{check:?}");
        assert!(check.problem.unwrap().contains("erased 0 field(s), but 1"));
    }

    #[test]
    fn only_the_segments_a_route_takes_as_the_name_are_redacted() {
        assert_eq!(
            redacted_target(
                "PUT /api/v1/users/{name}/password",
                "/api/v1/users/ana/password",
                "ana"
            ),
            "/api/v1/users/(erased)/password"
        );
        // `users` is a fixed word of the route, never a person.
        assert_eq!(
            redacted_target(
                "DELETE /api/v1/users/{name}",
                "/api/v1/users/users",
                "users"
            ),
            "/api/v1/users/(erased)"
        );
        assert_eq!(
            redacted_target(
                "DELETE /api/v1/users/{name}",
                "/api/v1/users/J%C3%B6rg?x=J%C3%B6rg",
                "Jörg"
            ),
            "/api/v1/users/(erased)?(erased)",
            "the query holds the name, escaped"
        );
        assert_eq!(
            redacted_target(
                "DELETE /api/v1/users/{name}",
                "/api/v1/users/ana?y=1",
                "ana"
            ),
            "/api/v1/users/(erased)?y=1"
        );
        assert_eq!(
            redacted_target(
                "DELETE /api/v1/users/{name}",
                "/api/v1/users/ana?by=ana",
                "ana"
            ),
            "/api/v1/users/(erased)?(erased)"
        );
    }

    #[test]
    fn a_refusal_summary_loses_the_name_where_it_is_a_word_or_segment() {
        let text = "12 more from 2026-12-03T08:00:00Z to 2026-12-03T08:09:00Z, the last \
                    GET /api/v1/people/{name} /api/v1/people/ana?by=ana";
        assert_eq!(
            redacted_summary(text, "ana").as_deref(),
            Some(
                "12 more from 2026-12-03T08:00:00Z to 2026-12-03T08:09:00Z, the last \
                 GET /api/v1/people/{name} /api/v1/people/(erased)?by=(erased)"
            )
        );
        assert_eq!(redacted_summary(text, "an"), None, "not inside other words");
    }

    #[test]
    fn a_use_case_loses_the_name_as_owner_and_stakeholder_only() {
        let mut definition = serde_json::json!({
            "owner": "ana", "stakeholders": ["ben", "ana"], "objective": "ana's pumps"
        });
        assert!(without_name(&mut definition, "ana"));
        assert_eq!(definition["owner"], ERASED);
        assert_eq!(definition["stakeholders"], serde_json::json!(["ben"]));
        assert!(!without_name(&mut definition, "ana"));
        assert!(!without_name(&mut definition, "carl"));
    }
}
