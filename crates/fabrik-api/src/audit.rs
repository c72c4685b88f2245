//! `/api/v1/audit`: the tamper-evident log of changes made through the API and of sign-ins
//! (see [`fabrik_registry::audit`]), and the check of its chain. What is recorded is decided
//! here: every request that changes something, once answered, and every refusal for want of a
//! role; data written (samples, line protocol, clips) and queries are not changes.

use axum::Json;
use axum::extract::State;
use axum::http::Method;
use axum::response::IntoResponse;
use fabrik_registry::{AuditEntry, AuditEvent, AuditVerification};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::ApiState;
use crate::devices::registry;
use crate::error::ApiError;

/// Routes whose requests are data, not changes: too many to record, and recorded as data.
const DATA_ROUTES: &[&str] = &[
    "/api/v1/write",
    "/write",
    "/api/v2/write",
    "/api/v1/samples",
    "/api/v1/blobs",
    "/api/v1/query",
];

/// Whether a request to `route` is one the audit log records once answered.
pub(crate) fn records(method: &Method, route: &str) -> bool {
    // Reading one person's data is itself recorded: who read whose, and when.
    if route == "/api/v1/people/{name}" {
        // Erasing them records itself, in the transaction that erases, under a target that
        // does not name them.
        return matches!(*method, Method::GET | Method::HEAD);
    }
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        && !DATA_ROUTES.contains(&route)
}

/// Appends to the audit log when the registry runs in this process. A failure to record is
/// logged and counted; the request it describes has already been answered.
pub(crate) async fn record(state: &ApiState, event: AuditEvent) {
    append(state, event, false).await;
}

/// Appends a refusal: past ten per actor and action in ten minutes they are counted and
/// recorded as one entry (see [`fabrik_registry::Registry::audit_refusal`]).
pub(crate) async fn record_refusal(state: &ApiState, event: AuditEvent) {
    append(state, event, true).await;
}

async fn append(state: &ApiState, event: AuditEvent, refusal: bool) {
    let Some(registry) = state.registry.as_ref() else {
        return;
    };
    let result = if refusal {
        registry.audit_refusal(event.clone()).await.map(|_| ())
    } else {
        registry.audit(event.clone()).await.map(|_| ())
    };
    if let Err(e) = result {
        metrics::counter!("fabrik_audit_failures_total").increment(1);
        tracing::error!(actor = %event.actor, action = %event.action, error = %e, "Could not record an audit entry.");
    }
}

/// Runs `work` in a task of its own and waits for it: a client that hangs up drops the
/// request's future, and a change half-made or an audit entry waiting for the append lock
/// must not go with it. A panic goes on as it would have without the task; a task cancelled
/// at shutdown answers 503.
pub(crate) async fn to_completion<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::spawn(work).await {
        Ok(value) => Ok(value),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "shutting down",
        )),
    }
}

/// Marks a response whose handler recorded its own, more telling audit entry (a write to a
/// device names its value and outcome): the request is then not recorded a second time. A
/// request refused before its handler ran (a body that does not parse) has no mark and is
/// recorded as any other.
#[derive(Debug, Clone, Copy)]
pub struct SelfRecorded;

/// Runs the rest of an audited request, then records it unless its handler did, to
/// completion (see [`to_completion`]).
pub(crate) async fn run_recorded(
    state: ApiState,
    event: AuditEvent,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    to_completion(async move {
        let response = next.run(request).await;
        if response.extensions().get::<SelfRecorded>().is_none() {
            let status = response.status().as_u16();
            record(&state, AuditEvent { status, ..event }).await;
        }
        response
    })
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

/// Paging through the log.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Entries before this sequence number (the previous page's last).
    #[serde(default)]
    pub before: Option<i64>,
    /// At most this many (default 100, at most 10,000).
    #[serde(default)]
    pub limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "security",
    params(AuditParams),
    responses((status = 200, description = "entries, newest first", body = [AuditEntry]),
              (status = 403, description = "not an admin", body = crate::error::ErrorBody)))]
pub(crate) async fn list(
    crate::extract::Query(params): crate::extract::Query<AuditParams>,
    State(state): State<ApiState>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let entries = registry(&state)?
        .audit_entries(params.before, params.limit.unwrap_or(100))
        .await?;
    Ok(Json(entries))
}

#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "security",
    responses((status = 200, description = "the chain checked from its first entry: `intact`, or the first entry that does not fit and why", body = AuditVerification),
              (status = 403, description = "not an admin", body = crate::error::ErrorBody)))]
pub(crate) async fn verify(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
) -> Result<Json<AuditVerification>, ApiError> {
    Ok(Json(registry(&state)?.verify_audit().await?))
}
