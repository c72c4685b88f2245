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
    let Some(registry) = state.registry.clone() else {
        return;
    };
    // In a task of its own: a client that hangs up while the entry waits for the append lock
    // drops the request's future, and the entry must not go with it.
    let appended = tokio::spawn(async move {
        let result = if refusal {
            registry.audit_refusal(event.clone()).await.map(|_| ())
        } else {
            registry.audit(event.clone()).await.map(|_| ())
        };
        if let Err(e) = result {
            metrics::counter!("fabrik_audit_failures_total").increment(1);
            tracing::error!(actor = %event.actor, action = %event.action, error = %e, "Could not record an audit entry.");
        }
    });
    if appended.await.is_err() {
        metrics::counter!("fabrik_audit_failures_total").increment(1);
    }
}

/// Runs the rest of an audited request, then records it, in a task of its own: a client that
/// hangs up mid-request does not stop a change half-made, nor its entry.
pub(crate) async fn run_recorded(
    state: ApiState,
    event: AuditEvent,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let task = tokio::spawn(async move {
        let response = next.run(request).await;
        let status = response.status().as_u16();
        record(&state, AuditEvent { status, ..event }).await;
        response
    });
    match task.await {
        Ok(response) => response,
        // A handler's panic goes on as it would have without the task.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => crate::error::ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "shutting down",
        )
        .into_response(),
    }
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
