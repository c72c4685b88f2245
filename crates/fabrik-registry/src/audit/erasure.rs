//! Erasing one person's names from the registry (GDPR Art. 17; decision 0040): from the audit
//! log without breaking its chain, from stage decisions and use cases, and their user.
//!
//! Owns finding the audit fields that name the person, replacing each with [`ERASED`] and its
//! salt with its digest, and the erasure entry that counts and digests what was erased, all in
//! one transaction under the chain's append lock.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{
    AuditEvent, ERASED, FORMAT_ERASABLE, decoded, erasure_summary, field_code, field_digest,
    insert_entry, route_names, unhex,
};
use crate::{Registry, RegistryError};

/// Entries read per page while looking for requests about the person.
const PAGE: i64 = 10_000;

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

/// `target` with every path segment that its route takes as a parameter and that names `name`
/// replaced by [`ERASED`], and its query too if the name is in it.
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
        let names = template.starts_with('{') && template.ends_with('}');
        redacted.push(if names && decoded(segment) == name {
            ERASED
        } else {
            segment
        });
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
    /// the same transaction; afterwards the database's write-ahead log is truncated, so the
    /// names are not left in it.
    pub async fn erase_person(&self, name: &str, by: &str) -> Result<PersonErasure, RegistryError> {
        if name.is_empty() || name == ERASED {
            return Err(RegistryError::Invalid(format!(
                "`{name}` is not a name that can be erased"
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
        let _one_at_a_time = chain.append.lock().await;
        let mut tx = self.pool.begin().await?;

        let mut actors = Vec::new();
        for row in sqlx::query(
            "SELECT seq, format, actor_salt FROM audit_log \
             WHERE actor = ? AND actor_erased_by IS NULL AND typeof(seq) = 'integer' ORDER BY seq",
        )
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
            let rows = sqlx::query(
                "SELECT seq, format, action, target, target_salt FROM audit_log \
                 WHERE target_erased_by IS NULL AND typeof(seq) = 'integer' AND seq > ? \
                 ORDER BY seq LIMIT ?",
            )
            .bind(after)
            .bind(PAGE)
            .fetch_all(&mut *tx)
            .await?;
            let Some(last) = rows.last() else { break };
            after = last.try_get("seq")?;
            for row in rows {
                let action: String = row.try_get("action")?;
                let target: String = row.try_get("target")?;
                if route_names(&action, &target, name) {
                    targets.push(Field {
                        seq: row.try_get("seq")?,
                        format: row.try_get("format")?,
                        salt: row.try_get("target_salt")?,
                        erased: redacted_target(&action, &target, name),
                        value: target,
                    });
                }
            }
        }

        let mut codes: Vec<u64> = actors
            .iter()
            .map(|f| field_code(f.seq, false))
            .chain(targets.iter().map(|f| field_code(f.seq, true)))
            .collect();
        codes.sort_unstable();
        let record = insert_entry(
            chain,
            &mut tx,
            AuditEvent {
                actor: by.to_owned(),
                action: "DELETE /api/v1/people/{name}".into(),
                target: format!("/api/v1/people/{ERASED}"),
                status: 200,
            },
            Some(erasure_summary(&codes)),
        )
        .await?;
        let mut unverifiable = std::collections::BTreeSet::new();
        for (column, fields) in [("actor", &actors), ("target", &targets)] {
            // Audited: `column` is one of the two constants above; the values are bound.
            let sql = format!(
                "UPDATE audit_log SET {column} = ?, {column}_salt = NULL, {column}_digest = ?, \
                 {column}_erased_by = ? WHERE seq = ?"
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

        let user_removed = sqlx::query("DELETE FROM users WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        let stage_decisions =
            sqlx::query("UPDATE use_case_decisions SET actor = ? WHERE actor = ?")
                .bind(ERASED)
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        let mut use_cases = Vec::new();
        for row in sqlx::query("SELECT name, definition FROM use_cases ORDER BY name")
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
            sqlx::query("UPDATE use_cases SET definition = ? WHERE name = ?")
                .bind(definition.to_string())
                .bind(&use_case)
                .execute(&mut *tx)
                .await?;
            use_cases.push(use_case);
        }
        tx.commit().await?;
        // The old pages may still be in the write-ahead log until it is checkpointed;
        // deleted cells are zeroed (`secure_delete`, set at connect).
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await?;
        tracing::info!(
            target: "fabrik::audit",
            seq = record.seq,
            by,
            fields = codes.len(),
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
             VALUES (1, ?, ?, ?, ?, 200, ?)",
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
             VALUES ('pumps', ?, 'pilot', 0, 0, 0)",
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
        // truncated.
        for file in std::fs::read_dir(dir.path()).unwrap() {
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

        // Erasing by hand, without the key: the salt is in the database, so the digest can be
        // made, but the erasure entry's count and digest do not cover the field.
        let salt: String = sqlx::query_scalar("SELECT actor_salt FROM audit_log WHERE seq = 4")
            .fetch_one(&registry.pool)
            .await
            .unwrap();
        let digest = super::super::hex(&field_digest(&unhex(&salt).unwrap(), "ben"));
        sqlx::query(
            "UPDATE audit_log SET actor = ?, actor_salt = NULL, actor_digest = ?, \
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
