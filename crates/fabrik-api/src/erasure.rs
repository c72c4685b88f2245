//! `DELETE /api/v1/people/{name}`: erasing one person's names wherever Fabrik keeps them, for
//! a data subject's right to erasure (GDPR Art. 17; decision 0040).
//!
//! Owns asking each keeper in turn — the registry (audit log, user, stage decisions, use
//! cases), the alerts (acknowledgements, silences) and the store's `alert_labels` and
//! `_device_writes` rows, rewritten in place — and saying what it could not reach.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use fabrik_core::{Lineage, Point, Quality, SourceId, Timestamp, Value};
use fabrik_registry::{ERASED, PersonErasure};
use fabrik_store::Store;
use fabrik_store::arrow::array::{Array, AsArray};
use fabrik_store::arrow::datatypes::{DataType, Int64Type, UInt64Type};
use fabrik_store::arrow::{compute, datatypes::Float64Type};
use serde::Serialize;
use utoipa::ToSchema;

use crate::ApiState;
use crate::alerts::ALERT_LABELS_TABLE;
use crate::auth::Identity;
use crate::error::ApiError;

/// The tables that name people in a field, with that field and the one with their words.
const NAMING_TABLES: [(&str, &str, &str); 2] = [
    (ALERT_LABELS_TABLE, "by", "comment"),
    (
        crate::setpoints::DEVICE_WRITES_TABLE,
        crate::setpoints::ACTOR,
        crate::setpoints::NOTE,
    ),
];

/// What erasing one person did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Erasure {
    /// What was erased from the registry; `None` when it runs in another process.
    pub registry: Option<PersonErasure>,
    /// Alerts whose acknowledgement they gave, now by `(erased)`, without its comment.
    pub acknowledgements: u64,
    /// Silences they created (now by `(erased)`, without comment) or ended.
    pub silences: u64,
    /// Rows of `alert_labels` they gave, rewritten with `by` `(erased)` and no comment.
    pub alert_labels: u64,
    /// Rows of `_device_writes` they made, rewritten with `actor` `(erased)` and no note.
    pub device_writes: u64,
    /// Where their name may remain, and what could not be reached.
    pub notes: Vec<String>,
}

#[utoipa::path(delete, path = "/api/v1/people/{name}", tag = "security", security(("token" = [])),
    params(("name" = String, Path, description = "a user name, or a name given with an acknowledgement")),
    responses((status = 200, description = "their names erased: the audit log's chain still verifies, and an erasure entry in it names the admin who asked, not the person (admin)", body = Erasure),
              (status = 400, description = "a name that cannot be erased, or the admin's own", body = crate::error::ErrorBody),
              (status = 403, description = "not an admin", body = crate::error::ErrorBody)))]
pub(crate) async fn erase(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path(name): Path<String>,
) -> Result<Json<Erasure>, ApiError> {
    // Done to completion once begun: a client hanging up must not leave half of it.
    crate::audit::to_completion(erase_everywhere(state, identity, name)).await?
}

async fn erase_everywhere(
    state: ApiState,
    identity: Identity,
    name: String,
) -> Result<Json<Erasure>, ApiError> {
    let mut erasure = Erasure {
        registry: None,
        acknowledgements: 0,
        silences: 0,
        alert_labels: 0,
        device_writes: 0,
        notes: vec![
            "the process log (stdout) named them at sign-in and in audit lines; erase it \
             wherever it was shipped"
                .to_owned(),
        ],
    };
    // Sessions end first, so no request of theirs writes their name while it is erased.
    state.auth.end_sessions_of(&name);
    match &state.registry {
        Some(registry) => {
            let erased = registry.erase_person(&name, &identity.name).await?;
            if erased.audit_entries_unverifiable > 0 {
                erasure.notes.push(format!(
                    "{} audit entries were written before names could be erased: the chain \
                     check takes them as stored from now on",
                    erased.audit_entries_unverifiable
                ));
            }
            if !erased.use_cases.is_empty() {
                erasure.notes.push(
                    "use cases defined in a release or a configuration file still name them \
                     there: change them at that source, or the next release brings the name \
                     back"
                        .to_owned(),
                );
            }
            let set_aside = registry.set_aside_audit_logs().await?;
            if !set_aside.is_empty() {
                erasure.notes.push(format!(
                    "audit logs set aside ({}) may name them and were not changed",
                    set_aside.join(", ")
                ));
            }
            erasure.registry = Some(erased);
        }
        None => erasure.notes.push(
            "the registry runs in another process: erase them there too (users, audit log, \
             stage decisions)"
                .into(),
        ),
    }
    match &state.alerting {
        Some(alerting) => {
            let (acknowledgements, silences) = alerting
                .db()
                .erase_person(&name, ERASED, Timestamp::now().nanos())
                .await?;
            erasure.acknowledgements = acknowledgements;
            erasure.silences = silences;
        }
        None => erasure.notes.push(
            "the alerts module runs in another process: erase them there too \
             (acknowledgements, silences)"
                .into(),
        ),
    }
    // A read-only query node (decision 0079) erases its own registry above, but its rows are
    // the owning store's copies, rewritten there.
    if state.store.is_read_only() {
        erasure.notes.push(
            "this is a read-only query node: the alert_labels and _device_writes rows it \
             shows are the owning store's; erase them on the node that owns the store"
                .to_owned(),
        );
    } else {
        let [labels, writes] = NAMING_TABLES;
        erasure.alert_labels = erase_names(&state.store, labels, &name).await?;
        erasure.device_writes = erase_names(&state.store, writes, &name).await?;
    }
    if erasure.alert_labels + erasure.device_writes > 0 {
        erasure.notes.push(
            "the earlier versions of the rewritten alert_labels and _device_writes rows leave \
             the disk with the store's next compaction; an uplink forwards the rewritten rows \
             to the hub"
                .to_owned(),
        );
    }
    tracing::info!(by = %identity.name, "A person's data was erased.");
    Ok(Json(erasure))
}

/// Rewrites every row of `table` whose field `by` is `name` with `by` [`ERASED`] and an
/// empty `comment`, same series and time, so the new version replaces the old one; returns
/// how many.
async fn erase_names(
    store: &Store,
    (table_name, by, comment): (&str, &str, &str),
    name: &str,
) -> Result<u64, ApiError> {
    let Some(table) = store.tables().into_iter().find(|t| t.name == table_name) else {
        return Ok(0);
    };
    let sql = format!(
        "SELECT * FROM \"{table_name}\" WHERE \"{by}\" = '{}'",
        name.replace('\'', "''")
    );
    let output = store.query(&sql).await?;
    let mut points = Vec::new();
    for batch in &output.batches {
        let column = |name: &str| batch.column_by_name(name);
        let times = column("time")
            .map(|c| compute::cast(c, &DataType::Int64))
            .transpose()
            .map_err(internal)?
            .ok_or_else(|| internal("the result has no time column"))?;
        let times = times.as_primitive::<Int64Type>();
        let mut tags = Vec::new();
        for tag in &table.tags {
            if let Some(values) = column(tag) {
                tags.push((
                    tag,
                    compute::cast(values, &DataType::Utf8).map_err(internal)?,
                ));
            }
        }
        for row in 0..batch.num_rows() {
            let mut fields = Vec::new();
            for (field, _) in &table.fields {
                let value = match field.as_str() {
                    f if f == by => Some(Value::Str(ERASED.to_owned())),
                    f if f == comment => Some(Value::Str(String::new())),
                    _ => match column(field) {
                        Some(values) => value_at(values, row).map_err(internal)?,
                        None => None,
                    },
                };
                if let Some(value) = value {
                    fields.push((field.clone(), value));
                }
            }
            points.push(Point {
                measurement: table_name.into(),
                tags: tags
                    .iter()
                    .filter(|(_, values)| values.is_valid(row))
                    .map(|(tag, values)| {
                        (
                            (*tag).clone(),
                            values.as_string::<i32>().value(row).to_owned(),
                        )
                    })
                    .collect(),
                fields,
                time: Timestamp(times.value(row)),
                quality: Quality::Good,
            });
        }
    }
    if points.is_empty() {
        return Ok(0);
    }
    let lineage = Lineage {
        source: SourceId("privacy".into()),
        raw_id: store.next_raw_id(),
        mapping_version: 0,
    };
    store.write_points(&points, lineage, table_name).await?;
    Ok(points.len() as u64)
}

/// A field's value in `row`, by its Arrow type; `None` when null. A type that fields never
/// have is an error: a row rewritten without one of its fields would lose it.
fn value_at(values: &dyn Array, row: usize) -> Result<Option<Value>, String> {
    if values.is_null(row) {
        return Ok(None);
    }
    Ok(Some(match values.data_type() {
        DataType::Boolean => Value::Bool(values.as_boolean().value(row)),
        DataType::Int64 => Value::I64(values.as_primitive::<Int64Type>().value(row)),
        DataType::UInt64 => Value::U64(values.as_primitive::<UInt64Type>().value(row)),
        DataType::Float64 => Value::F64(values.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => Value::Str(values.as_string::<i32>().value(row).to_owned()),
        DataType::LargeUtf8 => Value::Str(values.as_string::<i64>().value(row).to_owned()),
        DataType::Utf8View => Value::Str(values.as_string_view().value(row).to_owned()),
        other => {
            return Err(format!(
                "a field of type {other}, which Fabrik does not write"
            ));
        }
    }))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("rewriting a table that names people: {e}"),
    )
}
