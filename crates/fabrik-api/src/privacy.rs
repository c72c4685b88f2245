//! `/api/v1/people/{name}`: what Fabrik keeps about one person, for a data subject's right of
//! access (GDPR Art. 15) and to portability (Art. 20).
//!
//! Owns gathering it from where names are kept: the registry (the user, the audit log, stage
//! decisions, use cases), the alerts (acknowledgements, silences) and the store's
//! `alert_labels` rows; and saying what it could not read or cut short.

use axum::Json;
use axum::extract::{Path, State};
use fabrik_alert::{Feedback, Silence};
use fabrik_registry::usecases::StageDecision;
use fabrik_registry::{AuditEntry, User};
use serde::Serialize;
use utoipa::ToSchema;

use crate::ApiState;
use crate::alerts::ALERT_LABELS_TABLE;
use crate::error::ApiError;

/// Most records of each kind in one answer.
const MOST_RECORDS: u32 = 100_000;

/// An alert a person acknowledged, with what they said.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Acknowledgement {
    /// The alert.
    pub alert_id: String,
    /// Its rule.
    pub rule: String,
    /// Its key (usually a device).
    pub key: String,
    /// When (RFC 3339).
    pub at: String,
    /// The verdict.
    pub feedback: Feedback,
    /// The note.
    pub comment: Option<String>,
}

/// A use case that names the person.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NamedIn {
    /// The use case.
    pub use_case: String,
    /// `owner` or `stakeholder`.
    pub role: String,
}

/// What is kept about one person (a user name, or a name given with an acknowledgement).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PersonalData {
    /// The name searched for.
    pub name: String,
    /// The dashboard user of that name, if any (never the password hash).
    pub user: Option<User>,
    /// Audit log entries with that actor, newest first.
    pub audit_entries: Vec<AuditEntry>,
    /// Audit log entries by others about them (their name in the request's target).
    pub audit_entries_about: Vec<AuditEntry>,
    /// Use cases that name them as owner or stakeholder.
    pub use_cases: Vec<NamedIn>,
    /// Use-case stage decisions they made.
    pub stage_decisions: Vec<StageDecision>,
    /// Alerts they acknowledged.
    pub acknowledgements: Vec<Acknowledgement>,
    /// Silences they created or ended (another's silence they ended shows neither its
    /// author nor its comment).
    pub silences: Vec<Silence>,
    /// Rows of the `alert_labels` table naming them (`by`), as `/api/v1/query` returns rows.
    pub alert_labels: Vec<serde_json::Value>,
    /// Rows of the `_device_writes` table naming them (`actor`): the setpoints they wrote.
    pub device_writes: Vec<serde_json::Value>,
    /// Where their name may be besides, and what could not be read.
    pub notes: Vec<String>,
}

#[utoipa::path(get, path = "/api/v1/people/{name}", tag = "security", security(("token" = [])),
    params(("name" = String, Path, description = "a user name, or a name given with an acknowledgement")),
    responses((status = 200, description = "what is kept about that person (admin; the request is audited)", body = PersonalData),
              (status = 403, description = "not an admin", body = crate::error::ErrorBody)))]
pub(crate) async fn export(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<PersonalData>, ApiError> {
    let mut data = PersonalData {
        name: name.clone(),
        user: None,
        audit_entries: Vec::new(),
        audit_entries_about: Vec::new(),
        use_cases: Vec::new(),
        stage_decisions: Vec::new(),
        acknowledgements: Vec::new(),
        silences: Vec::new(),
        alert_labels: Vec::new(),
        device_writes: Vec::new(),
        notes: vec![
            "the process log (stdout) names users at sign-in and in audit lines; it is kept \
             wherever it is shipped"
                .to_owned(),
        ],
    };
    match &state.registry {
        Some(registry) => {
            data.user = registry.users().await?.into_iter().find(|u| u.name == name);
            data.audit_entries = registry
                .audit_entries_by(&name, i64::from(MOST_RECORDS) + 1)
                .await?;
            let (about, more) = registry
                .audit_entries_about(&name, MOST_RECORDS as usize)
                .await?;
            data.audit_entries_about = about.into_iter().filter(|e| e.actor != name).collect();
            if more {
                data.notes.push(format!(
                    "audit entries about them: only the {MOST_RECORDS} most recent are included"
                ));
            }
            data.stage_decisions = registry.stage_decisions_by(&name).await?;
            for use_case in registry.use_cases().await? {
                let definition = &use_case.definition;
                if definition.owner == name {
                    data.use_cases.push(NamedIn {
                        use_case: use_case.name.clone(),
                        role: "owner".into(),
                    });
                }
                if definition.stakeholders.contains(&name) {
                    data.use_cases.push(NamedIn {
                        use_case: use_case.name.clone(),
                        role: "stakeholder".into(),
                    });
                }
            }
            let set_aside = registry.set_aside_audit_logs().await?;
            if !set_aside.is_empty() {
                data.notes.push(format!(
                    "audit logs set aside ({}) may name them too; they are not read here",
                    set_aside.join(", ")
                ));
            }
        }
        None => data
            .notes
            .push("the registry runs in another process: users, audit log and stage decisions are not included".into()),
    }
    match &state.alerting {
        Some(alerting) => {
            let acknowledged = alerting
                .db()
                .acknowledged_by(&name, MOST_RECORDS + 1)
                .await?;
            data.acknowledgements = acknowledged
                .into_iter()
                .filter_map(|alert| {
                    let ack = alert.ack?;
                    Some(Acknowledgement {
                        alert_id: alert.id,
                        rule: alert.rule,
                        key: alert.key,
                        at: ack.at,
                        feedback: ack.feedback,
                        comment: ack.comment,
                    })
                })
                .collect();
            data.silences = alerting
                .db()
                .silences()
                .await?
                .into_iter()
                .filter(|s| s.by == name || s.ended_by.as_deref() == Some(name.as_str()))
                .map(|mut s| {
                    // Another's silence they only ended: not the author's data to hand over.
                    if s.by != name {
                        s.by = String::new();
                        s.comment = None;
                    }
                    s
                })
                .collect();
        }
        None => data.notes.push(
            "the alerts module runs in another process: acknowledgements and silences are \
             not included"
                .into(),
        ),
    }
    data.alert_labels =
        rows_naming(&state, &mut data.notes, ALERT_LABELS_TABLE, "by", &name).await?;
    data.device_writes = rows_naming(
        &state,
        &mut data.notes,
        crate::setpoints::DEVICE_WRITES_TABLE,
        crate::setpoints::ACTOR,
        &name,
    )
    .await?;
    // Each list was read one past the limit: more than the limit means it was cut.
    let most = MOST_RECORDS as usize;
    for (what, count) in [
        ("audit entries by them", data.audit_entries.len()),
        ("acknowledgements", data.acknowledgements.len()),
        ("alert labels", data.alert_labels.len()),
        ("writes to devices", data.device_writes.len()),
    ] {
        if count > most {
            data.notes.push(format!(
                "{what}: only the {MOST_RECORDS} most recent are included"
            ));
        }
    }
    data.audit_entries.truncate(most);
    data.acknowledgements.truncate(most);
    data.alert_labels.truncate(most);
    data.device_writes.truncate(most);
    Ok(Json(data))
}

/// The rows of `table` whose field `by` is `name`, newest first, one past the limit; a table
/// that cannot be read is a note.
async fn rows_naming(
    state: &ApiState,
    notes: &mut Vec<String>,
    table: &str,
    by: &str,
    name: &str,
) -> Result<Vec<serde_json::Value>, ApiError> {
    // Nobody ever wrote one: the table does not exist yet, and there is nothing to read.
    if !state.store.has_table(table) {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT * FROM \"{table}\" WHERE \"{by}\" = '{}' ORDER BY time DESC LIMIT {}",
        name.replace('\'', "''"),
        MOST_RECORDS + 1
    );
    match state.store.query(&sql).await {
        Ok(output) => crate::routes::batches_to_json(&output.batches).map_err(|e| {
            ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e)
        }),
        Err(e) => {
            notes.push(format!("the {table} table could not be read: {e}"));
            Ok(Vec::new())
        }
    }
}
