//! `/api/v1/alerts` and `/api/v1/silences`: list and acknowledge alerts (with true/false
//! positive feedback, also stored as a row of `alert_labels` for model evaluation), and
//! silence rules or devices for a while.

use std::sync::Arc;

use crate::extract::Query;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use fabrik_alert::{AlertError, AlertState, Alerting, Feedback};
use fabrik_core::{Lineage, Point, Quality, SourceId, Timestamp, Value};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::ApiState;
use crate::auth::Identity;
use crate::error::ApiError;

/// The table acknowledgements are stored in, one row per verdict.
pub const ALERT_LABELS_TABLE: &str = "alert_labels";

impl From<AlertError> for ApiError {
    fn from(e: AlertError) -> Self {
        match e {
            AlertError::NotFound { .. } => {
                Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            AlertError::Invalid(_) => Self::bad_request(e.to_string()),
            AlertError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            other => {
                tracing::error!(error = %other, "Alerting request failed.");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the server log",
                )
            }
        }
    }
}

pub(crate) fn alerting(state: &ApiState) -> Result<&Arc<Alerting>, ApiError> {
    state.alerting.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the alerts module does not run in this process (see --target)",
        )
    })
}

/// Filters of the alert listing.
///
/// Other parameters are refused (400), so a filter this endpoint does not have (`since`) is
/// not silently ignored while the answer looks filtered.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertParams {
    /// `pending`, `firing` or `resolved`.
    pub state: Option<String>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Only rules matching this pattern (`*` matches any run of characters).
    pub rule: Option<String>,
    /// Only devices matching this pattern, e.g. `pump-*`.
    pub device: Option<String>,
    /// Only alerts changed after this `updated_at` (RFC 3339), oldest change first instead
    /// of newest first: to read every change page by page, pass the last alert's
    /// `updated_at` here and its id as `after_id`.
    pub changed_after: Option<String>,
    /// With `changed_after`: of the alerts changed at that very instant, only those with a
    /// greater id.
    pub after_id: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts", security(("token" = [])),
    params(AlertParams),
    responses((status = 200, description = "alerts, most recently changed first (with `changed_after`: oldest change first)", body = [fabrik_alert::Alert]),
              (status = 400, description = "unknown state, a limit out of range, a bad cursor or an unknown parameter", body = crate::error::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<ApiState>,
    Query(params): Query<AlertParams>,
) -> Result<Json<Vec<fabrik_alert::Alert>>, ApiError> {
    let wanted = match params.state.as_deref() {
        None | Some("") => None,
        Some("pending") => Some(AlertState::Pending),
        Some("firing") => Some(AlertState::Firing),
        Some("resolved") => Some(AlertState::Resolved),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "state `{other}`: expected pending, firing or resolved"
            )));
        }
    };
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit {limit}: expected 1 to 1000 (to read more, page with changed_after)"
        )));
    }
    let changed_after = match (params.changed_after.as_deref(), params.after_id) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "after_id: goes with changed_after (the same alert's updated_at)",
            ));
        }
        (Some(text), after_id) => {
            let ns = fabrik_alert::model::parse_rfc3339(text).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "changed_after `{text}`: expected an RFC 3339 time, e.g. an alert's \
                     updated_at"
                ))
            })?;
            Some((ns, after_id.unwrap_or_default()))
        }
    };
    let query = fabrik_alert::db::AlertQuery {
        state: wanted,
        rule: params.rule.filter(|r| !r.is_empty()),
        key: params.device.filter(|d| !d.is_empty()),
        changed_after,
    };
    let alerting = alerting(&state)?;
    let mut alerts = alerting.db().find(&query, limit).await?;
    alerting.explain_inhibited(&mut alerts).await?;
    alerting.fill_actions(&mut alerts);
    fill_applied(&state, &mut alerts).await?;
    Ok(Json(alerts))
}

#[utoipa::path(get, path = "/api/v1/alerts/{id}", tag = "alerts", security(("token" = [])),
    params(("id" = String, Path, description = "alert id (`rule~device~start_ns`)")),
    responses((status = 200, description = "the alert", body = fabrik_alert::Alert),
              (status = 404, description = "no such alert", body = crate::error::ErrorBody)))]
pub(crate) async fn show(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<fabrik_alert::Alert>, ApiError> {
    let alerting = alerting(&state)?;
    let mut alert = alerting.db().get(&id).await?;
    alerting
        .explain_inhibited(std::slice::from_mut(&mut alert))
        .await?;
    alerting.fill_actions(std::slice::from_mut(&mut alert));
    fill_applied(&state, std::slice::from_mut(&mut alert)).await?;
    Ok(Json(alert))
}

/// Fills in `applied` of `alerts`: the writes that applied each one's proposed action
/// (decision 0092), from the rows of `_device_writes` that name it, oldest first.
async fn fill_applied(
    state: &ApiState,
    alerts: &mut [fabrik_alert::Alert],
) -> Result<(), ApiError> {
    use crate::setpoints::{ACTOR, ALERT, DEVICE_WRITES_TABLE, NOTE};
    // The column exists once a write named an alert; before, nothing was applied.
    if alerts.is_empty() || !state.store.has_column(DEVICE_WRITES_TABLE, ALERT) {
        return Ok(());
    }
    // Columns appear with the first row that has them.
    let optional = |column: &str| {
        if state.store.has_column(DEVICE_WRITES_TABLE, column) {
            format!("\"{column}\"")
        } else {
            format!("NULL AS \"{column}\"")
        }
    };
    let ids: Vec<String> = alerts
        .iter()
        .map(|a| crate::fleet::literal(&a.id))
        .collect();
    let sql = format!(
        "SELECT time, \"{ALERT}\", device, signal, status, value, {}, {}, {} \
         FROM \"{DEVICE_WRITES_TABLE}\" WHERE \"{ALERT}\" IN ({}) ORDER BY time",
        optional("read_back"),
        optional(ACTOR),
        optional(NOTE),
        ids.join(", ")
    );
    let output = state.store.query(&sql).await?;
    let rows = crate::routes::batches_to_json(&output.batches).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("encoding the writes: {e}"),
        )
    })?;
    let text =
        |row: &serde_json::Value, key: &str| row[key].as_str().unwrap_or_default().to_owned();
    for row in rows {
        let Some(alert) = alerts.iter_mut().find(|a| row[ALERT] == a.id.as_str()) else {
            continue;
        };
        alert.applied.push(fabrik_alert::AppliedAction {
            time: text(&row, "time"),
            by: text(&row, ACTOR),
            device: text(&row, "device"),
            signal: text(&row, "signal"),
            status: text(&row, "status"),
            value: row["value"].as_f64().unwrap_or(f64::NAN),
            read_back: row["read_back"].as_f64(),
            note: row[NOTE].as_str().map(str::to_owned),
        });
    }
    Ok(())
}

/// Applying an alert's proposed action.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    /// Why (a work order, a shift note): kept with the write (at most 500 characters).
    #[serde(default)]
    pub note: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/alerts/{id}/apply", tag = "alerts", security(("token" = [])),
    params(("id" = String, Path, description = "alert id")),
    request_body = ApplyRequest,
    responses((status = 200, description = "the proposed setpoint written, as a setpoint write \
        answers (`confirmed` says whether the device holds it); its `_device_writes` row names the \
        alert", body = crate::setpoints::SetpointWritten),
              (status = 403, description = "not an operator, or the point is not writable", body = crate::error::ErrorBody),
              (status = 404, description = "no such alert, or no such device", body = crate::error::ErrorBody),
              (status = 409, description = "the alert is not firing, or its rule proposes no action", body = crate::error::ErrorBody),
              (status = 422, description = "the value is not one the point may take; nothing was sent", body = crate::error::ErrorBody),
              (status = 502, description = "the device refused the write", body = crate::error::ErrorBody),
              (status = 503, description = "the device cannot be reached; nothing was sent", body = crate::error::ErrorBody),
              (status = 504, description = "no answer in time: whether the device applied it is unknown", body = crate::error::ErrorBody)))]
pub(crate) async fn apply(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
    crate::extract::Json(request): crate::extract::Json<ApplyRequest>,
) -> Result<
    (
        Extension<crate::audit::SelfRecorded>,
        Json<crate::setpoints::SetpointWritten>,
    ),
    ApiError,
> {
    crate::setpoints::check_note(request.note.as_deref())?;
    let alerting = alerting(&state)?;
    let mut alert = alerting.db().get(&id).await?;
    alerting.fill_actions(std::slice::from_mut(&mut alert));
    let Some(action) = alert.action else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("rule `{}` proposes no action", alert.rule),
        ));
    };
    // A proposal stands for the condition that raised it: once that cleared (or before it
    // held for the rule's `for`), it is no longer the rule's advice.
    if alert.state != AlertState::Firing {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "alert `{id}` is {}: its proposed action is applied only while it fires",
                alert.state.as_str()
            ),
        ));
    }
    let value = match &action.value {
        serde_json::Value::Bool(b) => crate::setpoints::SetpointValue::Bool(*b),
        other => crate::setpoints::SetpointValue::Number(other.as_f64().ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "rule `{}` proposes the value {other}, neither a number nor true/false",
                    alert.rule
                ),
            )
        })?),
    };
    crate::setpoints::write_recorded(
        &state,
        crate::setpoints::PointWrite {
            actor: identity.name,
            device: action.device,
            signal: action.signal,
            value,
            note: request.note,
            alert: Some(id),
        },
        "POST /api/v1/alerts/{id}/apply",
    )
    .await
}

/// An acknowledgement.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// Was it a real problem?
    pub feedback: Feedback,
    /// A note for the record.
    pub comment: Option<String>,
    /// Who acknowledges, when signed in with the admin token (default `admin-token`); a
    /// signed-in user is always recorded under their own name.
    pub by: Option<String>,
    /// Replace an earlier acknowledgement's verdict (without it, acknowledging an
    /// acknowledged alert is a 409 naming who acknowledged it).
    #[serde(default)]
    pub replace: bool,
}

/// Who a change is recorded under: a user's own name (no impersonation), or what a token
/// holder says.
fn recorded_by(identity: &Identity, stated: Option<String>) -> String {
    if identity.name == Identity::admin_token().name {
        stated.unwrap_or_else(|| identity.name.clone())
    } else {
        identity.name.clone()
    }
}

#[utoipa::path(post, path = "/api/v1/alerts/{id}/ack", tag = "alerts", security(("token" = [])),
    params(("id" = String, Path, description = "alert id")),
    request_body = AckRequest,
    responses((status = 200, description = "acknowledged; the verdict is also a row of `alert_labels`", body = fabrik_alert::Alert),
              (status = 404, description = "no such alert", body = crate::error::ErrorBody),
              (status = 409, description = "already acknowledged, and `replace` not given; the message names by whom and the verdict", body = crate::error::ErrorBody)))]
pub(crate) async fn ack(
    State(state): State<ApiState>,
    Query(_options): Query<crate::control::NoOptions>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
    crate::extract::Json(request): crate::extract::Json<AckRequest>,
) -> Result<Json<fabrik_alert::Alert>, ApiError> {
    let by = recorded_by(&identity, request.by);
    let alert = alerting(&state)?
        .ack(
            &id,
            &by,
            request.feedback,
            request.comment.clone(),
            request.replace,
        )
        .await?;
    // The verdict as data, one row per alert (a replaced verdict overwrites its row), at the
    // instant the alert started: for an alert on a pipeline's inferences that is the
    // inference's own time, so `alert_labels` joins `inferences` on device and time, and the
    // pipeline and window are fields when the rule carries them in its context.
    let started = alert
        .id
        .rsplit_once('~')
        .and_then(|(_, ns)| ns.parse().ok())
        .or_else(|| fabrik_alert::model::parse_rfc3339(&alert.started_at))
        .unwrap_or(0);
    let mut tags = vec![
        ("rule".into(), alert.rule.clone()),
        ("device".into(), alert.key.clone()),
    ];
    if let Some(pipeline) = alert.annotations.get("pipeline") {
        tags.push(("pipeline".into(), pipeline.clone()));
    }
    let mut fields = vec![
        ("alert_id".into(), Value::Str(alert.id.clone())),
        (
            "feedback".into(),
            Value::Str(request.feedback.as_str().into()),
        ),
        (
            "true_positive".into(),
            Value::Bool(request.feedback == Feedback::TruePositive),
        ),
        ("by".into(), Value::Str(by)),
        (
            "comment".into(),
            Value::Str(request.comment.unwrap_or_default()),
        ),
    ];
    if let Some(window) = alert.annotations.get("window_id") {
        fields.push(("window_id".into(), Value::Str(window.clone())));
    }
    let label = Point {
        measurement: ALERT_LABELS_TABLE.into(),
        tags,
        fields,
        time: Timestamp(started),
        quality: Quality::Good,
    };
    let lineage = Lineage {
        source: SourceId("alerts".into()),
        raw_id: state.store.next_raw_id(),
        mapping_version: 0,
    };
    state
        .store
        .write_points(&[label], lineage, ALERT_LABELS_TABLE)
        .await?;
    Ok(Json(alert))
}

#[utoipa::path(get, path = "/api/v1/silences", tag = "alerts", security(("token" = [])),
    responses((status = 200, description = "every silence, active or expired", body = [fabrik_alert::Silence])))]
pub(crate) async fn silences(
    State(state): State<ApiState>,
    // No filters: one asked for (`?all=false`) is refused, not ignored.
    Query(_options): Query<crate::control::NoOptions>,
) -> Result<Json<Vec<fabrik_alert::Silence>>, ApiError> {
    Ok(Json(alerting(&state)?.db().silences().await?))
}

/// A new silence.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SilenceRequest {
    /// Rule name (absent: every rule); `*` matches any run of characters. A name without `*`
    /// must be a rule's. At least one of `rule` and `device` is given (`"rule": "*"` silences
    /// every alert).
    pub rule: Option<String>,
    /// Device (absent: every device); `*` matches any run of characters (`pump-*`).
    pub device: Option<String>,
    /// How long, e.g. `2h`; at most 366 days. Give this or `ends_at`.
    pub duration: Option<String>,
    /// When it begins (RFC 3339, e.g. `2026-12-05T22:00:00Z`), for a maintenance window set
    /// ahead (at most 366 days); absent: now.
    pub starts_at: Option<String>,
    /// When it ends (RFC 3339), instead of a `duration`.
    pub ends_at: Option<String>,
    /// Why.
    pub comment: Option<String>,
    /// Who, when signed in with the admin token (default `admin-token`); a signed-in user is
    /// always recorded under their own name.
    pub by: Option<String>,
}

/// A silence as created, with what may make it miss its mark.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedSilence {
    #[serde(flatten)]
    silence: fabrik_alert::Silence,
    /// E.g. that its device matches no device Fabrik knows (a misspelt name silences
    /// nothing); absent when there is nothing to say.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/silences", tag = "alerts", security(("token" = [])),
    request_body = SilenceRequest,
    responses((status = 201, description = "created (with `warnings` when its device matches no known device)", body = CreatedSilence),
              (status = 400, description = "bad duration or times, no `rule` or `device`, or an unknown rule", body = crate::error::ErrorBody)))]
pub(crate) async fn create_silence(
    State(state): State<ApiState>,
    Query(_options): Query<crate::control::NoOptions>,
    Extension(identity): Extension<Identity>,
    crate::extract::Json(request): crate::extract::Json<SilenceRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let by = recorded_by(&identity, request.by);
    let time = |field: &str, text: &str| {
        fabrik_alert::model::parse_rfc3339(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{field}: `{text}` is not an RFC 3339 time (e.g. 2026-12-05T22:00:00Z)"
            ))
        })
    };
    let starts = request
        .starts_at
        .as_deref()
        .map(|text| time("starts_at", text))
        .transpose()?;
    let duration = match (&request.duration, &request.ends_at) {
        (Some(duration), None) => fabrik_runtime::units::parse_duration(duration)
            .map_err(|e| ApiError::bad_request(format!("duration: {e}")))?,
        (None, Some(ends)) => {
            let ends_ns = time("ends_at", ends)?;
            let begins = starts.unwrap_or_else(|| Timestamp::now().nanos());
            if ends_ns <= begins {
                return Err(ApiError::bad_request(format!(
                    "ends_at `{ends}` is not after the silence begins ({})",
                    if starts.is_some() { "starts_at" } else { "now" }
                )));
            }
            std::time::Duration::from_nanos(u64::try_from(ends_ns - begins).unwrap_or(0))
        }
        _ => {
            return Err(ApiError::bad_request(
                "give the silence a `duration` or an `ends_at`, one of them",
            ));
        }
    };
    let alerting = alerting(&state)?;
    let silence = alerting
        .silence_from(
            request.rule,
            request.device,
            starts,
            duration,
            &by,
            request.comment,
        )
        .await?;
    let mut warnings = Vec::new();
    // An exact rule name that is not a rule was refused; a pattern that matches none is
    // allowed (rules may come later) but said.
    if let Some(pattern) = silence.rule.as_deref().filter(|rule| *rule != "*")
        && pattern.contains('*')
    {
        let rules = alerting.rules();
        if !rules
            .iter()
            .any(|rule| fabrik_alert::model::glob_match(pattern, &rule.name))
        {
            let names: Vec<&str> = rules.iter().map(|rule| rule.name.as_str()).collect();
            warnings.push(format!(
                "rule pattern `{pattern}` matches no alert rule (rules: {}); the silence is in \
                 force",
                names.join(", ")
            ));
        }
    }
    if let Some(device) = silence.key.as_deref().filter(|device| *device != "*") {
        // Devices may be planned for before they report, so this is a warning, not a refusal:
        // a maintenance window set on a misspelt name would otherwise silence nothing unseen.
        let registered = match &state.registry {
            Some(registry) if !device.contains('*') => registry.get(device).await.is_ok(),
            Some(registry) => registry
                .list(&fabrik_registry::DeviceFilter::default())
                .await
                .map(|devices| {
                    devices
                        .iter()
                        .any(|d| fabrik_alert::model::glob_match(device, &d.id))
                })
                .unwrap_or(false),
            None => false,
        };
        if !registered && !alerting.knows_key(device).await? {
            warnings.push(format!(
                "device `{device}` matches no device that alert rules have seen or that is \
                 registered; check its spelling (the silence is in force)"
            ));
        }
    }
    Ok((
        StatusCode::CREATED,
        Json(CreatedSilence { silence, warnings }),
    ))
}

#[utoipa::path(delete, path = "/api/v1/silences/{id}", tag = "alerts", security(("token" = [])),
    params(("id" = String, Path, description = "silence id")),
    responses((status = 204, description = "ended now: it stays listed, expired, as a record with `ended_by`"),
              (status = 400, description = "it has ended already", body = crate::error::ErrorBody),
              (status = 404, description = "no such silence", body = crate::error::ErrorBody)))]
pub(crate) async fn remove_silence(
    State(state): State<ApiState>,
    Query(_options): Query<crate::control::NoOptions>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    alerting(&state)?
        .db()
        .end_silence(&id, Timestamp::now().nanos(), &identity.name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/notifiers", tag = "alerts", security(("token" = [])),
    responses((status = 200, description = "the notifiers: where each sends, its route, what waits in the outbox for it and how its last deliveries went", body = [fabrik_alert::NotifierStatus])))]
pub(crate) async fn notifiers(
    State(state): State<ApiState>,
    Query(_options): Query<crate::control::NoOptions>,
) -> Result<Json<Vec<fabrik_alert::NotifierStatus>>, ApiError> {
    Ok(Json(alerting(&state)?.notifier_statuses().await?))
}
