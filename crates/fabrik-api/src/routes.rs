//! Routes and handlers.

use std::time::Instant;

use crate::extract::Query;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, MatchedPath, RawQuery, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fabrik_core::{Lineage, Point, Precision, Quality, SourceId, Timestamp, Value};
use fabrik_registry::AuditEvent;
use fabrik_store::QueryOutput;
use fabrik_store::arrow;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::ApiState;
use crate::body::{body_text, read_body, wire_limit};
use crate::error::ApiError;

/// The Arrow IPC stream media type.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// Builds the whole router.
pub fn router(state: ApiState) -> Router {
    if state.registry.is_none() {
        tracing::warn!(
            "The registry module runs in another process: changes made through this API are \
             not recorded in the audit log."
        );
    }
    let limit = state.max_body_size;
    let protected = Router::new()
        .route("/api/v1/write", post(write_v1))
        .route(INFLUX_V1_WRITE, post(write_influx_v1))
        .route("/api/v2/write", post(write_influx_v2))
        .route("/api/v1/samples", post(write_samples))
        .route("/api/v1/blobs", post(crate::blobs::put_blob))
        .route("/api/v1/blobs/{id}", get(crate::blobs::get_blob))
        .route("/api/v1/query", post(query))
        .route("/api/v1/tables", get(tables))
        .route("/api/v1/store", get(store_status))
        .route("/api/v1/admin/persist", post(persist))
        .route("/api/v1/admin/compact", post(compact))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/asyncapi.json", get(asyncapi))
        .route(
            "/api/v1/devices",
            get(crate::devices::list).post(crate::devices::create),
        )
        .route(
            "/api/v1/devices/{id}",
            get(crate::devices::show)
                .patch(crate::devices::update)
                .delete(crate::devices::remove),
        )
        .route(
            "/api/v1/devices/{id}/token",
            post(crate::devices::rotate_token),
        )
        .route("/api/v1/devices/{id}/events", get(crate::devices::events))
        .route("/api/v1/devices/{id}/latest", get(crate::latest::latest))
        .route("/api/v1/setpoints", get(crate::setpoints::list))
        .route(
            "/api/v1/devices/{id}/setpoints/{signal}",
            post(crate::setpoints::set),
        )
        .route(
            "/api/v1/devices/{id}/attestation",
            get(crate::attestation::status),
        )
        .route(
            "/api/v1/devices/{id}/attestation/event-log",
            get(crate::attestation::event_log),
        )
        .route(
            "/api/v1/devices/{id}/attestation/ima-log",
            get(crate::attestation::ima_log),
        )
        .route(
            "/api/v1/devices/{id}/attestation/key",
            axum::routing::put(crate::attestation::enrol_key)
                .delete(crate::attestation::remove_key),
        )
        .route(
            "/api/v1/attestation/policies",
            get(crate::attestation::policies),
        )
        .route(
            "/api/v1/attestation/policies/{device_type}",
            get(crate::attestation::policy)
                .put(crate::attestation::set_policy)
                .delete(crate::attestation::remove_policy),
        )
        .route(
            "/api/v1/attestation/policies/{device_type}/runtime",
            get(crate::attestation::runtime_policy)
                .put(crate::attestation::set_runtime_policy)
                .delete(crate::attestation::remove_runtime_policy),
        )
        .route(
            "/api/v1/attestation/policies/{device_type}/runtime/merge",
            axum::routing::post(crate::attestation::merge_runtime_policy),
        )
        .route(
            "/api/v1/devices/{id}/stream",
            get(crate::stream::device_stream),
        )
        .route("/api/v1/lineage", get(crate::lineage::show))
        .route("/api/v1/alerts", get(crate::alerts::list))
        .route("/api/v1/alerts/{id}", get(crate::alerts::show))
        .route("/api/v1/alerts/{id}/ack", post(crate::alerts::ack))
        .route("/api/v1/alerts/{id}/apply", post(crate::alerts::apply))
        .route(
            "/api/v1/silences",
            get(crate::alerts::silences).post(crate::alerts::create_silence),
        )
        .route(
            "/api/v1/silences/{id}",
            axum::routing::delete(crate::alerts::remove_silence),
        )
        .route(
            "/api/v1/users",
            get(crate::users::list).post(crate::users::create),
        )
        .route(
            "/api/v1/users/{name}",
            axum::routing::delete(crate::users::remove),
        )
        .route(
            "/api/v1/users/{name}/password",
            axum::routing::put(crate::users::set_password),
        )
        .route("/api/v1/notifiers", get(crate::alerts::notifiers))
        .route(
            "/api/v1/alert-rules",
            get(crate::alert_rules::list).put(crate::alert_rules::apply_all),
        )
        .route(
            "/api/v1/alert-rules/{name}",
            get(crate::alert_rules::show)
                .put(crate::alert_rules::apply)
                .delete(crate::alert_rules::remove),
        )
        .route(
            "/api/v1/pipelines",
            get(crate::pipelines::list).put(crate::pipelines::apply_all),
        )
        .route(
            "/api/v1/pipelines/{name}",
            get(crate::pipelines::show)
                .put(crate::pipelines::apply)
                .delete(crate::pipelines::remove),
        )
        .route(
            "/api/v1/pipelines/{name}/retrain",
            axum::routing::post(crate::pipelines::retrain),
        )
        .route(
            "/api/v1/pipelines/{name}/drift",
            get(crate::pipelines::drift),
        )
        .route(
            "/api/v1/pipelines/{name}/shadow",
            get(crate::pipelines::shadow),
        )
        .route(
            "/api/v1/pipelines/{name}/performance",
            get(crate::pipelines::performance),
        )
        .route(
            "/api/v1/pipelines/{name}/performance/reference",
            post(crate::pipelines::new_performance_reference),
        )
        .route("/api/v1/models", get(crate::pipelines::models))
        .route(
            "/api/v1/models/{name}",
            get(crate::pipelines::model_file)
                .put(crate::pipelines::put_model)
                .delete(crate::pipelines::remove_model),
        )
        .route("/api/v1/usecases", get(crate::usecases::list))
        .route(
            "/api/v1/usecases/{name}",
            get(crate::usecases::show)
                .put(crate::usecases::put)
                .delete(crate::usecases::remove),
        )
        .route("/api/v1/usecases/{name}/kpis", get(crate::usecases::kpis))
        .route(
            "/api/v1/usecases/{name}/kpis/history",
            get(crate::usecases::history),
        )
        .route("/api/v1/usecases/{name}/gate", get(crate::usecases::gate))
        .route(
            "/api/v1/usecases/{name}/stage",
            post(crate::usecases::change_stage),
        )
        .route(
            "/api/v1/usecases/{name}/decisions",
            get(crate::usecases::decisions),
        )
        .route(
            "/api/v1/people/{name}",
            get(crate::privacy::export).delete(crate::erasure::erase),
        )
        .route("/api/v1/audit", get(crate::audit::list))
        .route("/api/v1/audit/verify", get(crate::audit::verify))
        .route("/api/v1/compliance", get(crate::compliance::report))
        .route("/api/v1/uplink", get(crate::links::status))
        .route(
            "/api/v1/uplink/backfill",
            post(crate::links::start_backfill).delete(crate::links::cancel_backfill),
        )
        .route("/api/v1/updates", get(crate::updates::status))
        .route("/api/v1/fleet/releases", get(crate::updates::fleet))
        .route("/api/v1/fleet/devices", get(crate::fleet::devices))
        .route(
            "/api/v1/fleet/recipients",
            get(crate::fleet_keys::recipients),
        )
        .route("/services", get(services))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(crate::ui::index))
        .route("/ui/{*path}", get(crate::ui::file))
        .route(
            "/api/v1/session",
            post(crate::session::sign_in)
                .delete(crate::session::sign_out)
                .get(crate::session::whoami),
        )
        .route("/ready", get(ready))
        // Its own token, not the API's: a node fetching releases holds no API account.
        .route("/tuf/{*path}", get(crate::updates::file))
        .route("/metrics", get(metrics))
        // A device calls these with its own id and token (or an admin for it): they check
        // and audit their callers themselves.
        .route(
            "/api/v1/devices/{id}/attestation/challenge",
            post(crate::attestation::challenge),
        )
        .route(
            "/api/v1/devices/{id}/attestation/evidence",
            post(crate::attestation::evidence),
        )
        .route(
            "/api/v1/devices/{id}/attestation/activation",
            post(crate::attestation::begin_activation),
        )
        .route(
            "/api/v1/devices/{id}/attestation/activation/{activation}",
            post(crate::attestation::finish_activation),
        )
        .merge(protected)
        .fallback(no_such_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(wire_limit(limit)))
        .layer(middleware::from_fn(record_metrics))
        .with_state(state)
}

/// A 404 with the usual JSON error body (not an empty one), naming what was asked for.
async fn no_such_route(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    let hint = if uri.path().len() > 1 && uri.path().ends_with('/') {
        " (without the trailing `/`?)"
    } else {
        ""
    };
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route {method} {}{hint}: see /api/v1/openapi.json",
            uri.path()
        ),
    )
}

/// A 405 with the usual JSON error body.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not take {method}: see /api/v1/openapi.json",
            uri.path()
        ),
    )
}

async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    // A span per request (decision 0054): a caller's W3C traceparent makes it part of the
    // caller's trace. Probes and scrapes (every few seconds, from Kubernetes and Prometheus)
    // would bury the traces worth reading: they have none.
    let span = if matches!(route.as_str(), "/ready" | "/metrics") {
        tracing::Span::none()
    } else {
        let traceparent = request
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        tracing::info_span!(
            target: fabrik_runtime::telemetry::SPAN_TARGET,
            "http.request",
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            traceparent = %traceparent,
            http.request.method = %method,
            http.route = %route,
            http.response.status_code = tracing::field::Empty,
        )
    };
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("fabrik_http_requests_total", &labels).increment(1);
    metrics::histogram!("fabrik_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// InfluxDB 1.x's write endpoint, the only one that takes the token as a query parameter.
const INFLUX_V1_WRITE: &str = "/write";

async fn require_token(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
    mut request: Request,
    next: Next,
) -> Response {
    // A token in the URL ends up in proxy and access logs: only InfluxDB 1.x's `/write`,
    // whose clients (Telegraf among them) can send credentials no other way, takes `p`.
    let query = query.filter(|_| request.uri().path() == INFLUX_V1_WRITE);
    let Some(identity) = state.auth.identify(request.headers(), query.as_deref()) else {
        metrics::counter!("fabrik_http_unauthorized_total").increment(1);
        // Sessions live in memory: a restart (or 12 hours) ends them.
        let has_token = crate::auth::Auth::token_of(request.headers(), query.as_deref()).is_some();
        if !has_token && crate::auth::Auth::session_of(request.headers()).is_some() {
            return ApiError::unauthorized_because(
                "the session has ended (they last 12 hours and end when Fabrik restarts): sign in again",
            )
            .into_response();
        }
        return ApiError::unauthorized().into_response();
    };
    // A method the API has no use for is refused before anything else: each would otherwise
    // be a refusal of its own to record.
    if !matches!(
        *request.method(),
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::OPTIONS
    ) {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("the API takes no `{}` requests", request.method()),
        )
        .into_response();
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("", MatchedPath::as_str);
    let needed = crate::auth::required_role(request.method(), route);
    let audited = crate::audit::records(request.method(), route).then(|| AuditEvent {
        actor: identity.name.clone(),
        action: format!("{} {route}", request.method()),
        target: request
            .uri()
            .path_and_query()
            .map_or_else(String::new, |p| p.as_str().to_owned()),
        status: 0,
    });
    if identity.role < needed {
        metrics::counter!("fabrik_http_forbidden_total").increment(1);
        tracing::info!(user = %identity.name, role = identity.role.as_str(), route, "Request refused: role too low.");
        // A refusal is recorded whatever was asked: probing for what a role may do is news.
        let event = audited.unwrap_or_else(|| AuditEvent {
            actor: identity.name.clone(),
            action: format!("{} {route}", request.method()),
            target: request.uri().path().to_owned(),
            status: 0,
        });
        let recorder = state.clone();
        let recorded = crate::audit::to_completion(async move {
            let status = StatusCode::FORBIDDEN.as_u16();
            crate::audit::record_refusal(&recorder, AuditEvent { status, ..event }).await;
        });
        if recorded.await.is_err() {
            metrics::counter!("fabrik_audit_failures_total").increment(1);
        }
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} {route} needs the {} role; `{}` is {}",
                request.method(),
                needed.as_str(),
                identity.name,
                identity.role.as_str()
            ),
        )
        .into_response();
    }
    request.extensions_mut().insert(identity);
    match audited {
        Some(event) if state.registry.is_some() => {
            crate::audit::run_recorded(state, event, request, next).await
        }
        _ => next.run(request).await,
    }
}

/// Readiness of every service.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyBody {
    /// True when every service runs.
    pub ready: bool,
    /// Services that are not running, with their state.
    pub not_ready: Vec<String>,
}

#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "every service runs", body = ReadyBody),
              (status = 503, description = "a service is starting, stopping or failed", body = ReadyBody)))]
pub(crate) async fn ready(State(state): State<ApiState>) -> Response {
    let all = state.services.snapshot();
    let not_ready: Vec<String> = all
        .iter()
        .filter(|s| s.state != fabrik_runtime::ServiceState::Running)
        .map(|s| format!("{}: {:?}", s.name, s.state))
        .collect();
    let ready = state.services.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(ReadyBody { ready, not_ready })).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub(crate) async fn metrics(State(state): State<ApiState>) -> Response {
    let (rows, bytes) = state.store.buffer_stats();
    metrics::gauge!("fabrik_store_buffer_rows").set(rows as f64);
    metrics::gauge!("fabrik_store_buffer_bytes").set(bytes as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// One service and its state.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceBody {
    /// Module name.
    pub name: String,
    /// new, starting, running, stopping, terminated or failed.
    pub state: String,
    /// The error of a failed service.
    pub error: Option<String>,
}

#[utoipa::path(get, path = "/services", tag = "operations", security(("token" = [])),
    responses((status = 200, body = Vec<ServiceBody>), (status = 401, body = crate::error::ErrorBody)))]
pub(crate) async fn services(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
) -> Json<Vec<ServiceBody>> {
    Json(
        state
            .services
            .snapshot()
            .into_iter()
            .map(|s| {
                let (name, error) = match &s.state {
                    fabrik_runtime::ServiceState::New => ("new", None),
                    fabrik_runtime::ServiceState::Starting => ("starting", None),
                    fabrik_runtime::ServiceState::Running => ("running", None),
                    fabrik_runtime::ServiceState::Stopping => ("stopping", None),
                    fabrik_runtime::ServiceState::Terminated => ("terminated", None),
                    fabrik_runtime::ServiceState::Failed(e) => ("failed", Some(e.clone())),
                };
                ServiceBody {
                    name: s.name.to_owned(),
                    state: name.to_owned(),
                    error,
                }
            })
            .collect(),
    )
}

/// Query parameters of `/api/v1/write`. Others are refused: a misspelt `?precison=ms` would
/// store millisecond timestamps as nanoseconds, in 1970.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WriteParams {
    /// Timestamp unit: ns (default), us, ms or s.
    pub precision: Option<String>,
}

/// What a write stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct WriteResponse {
    /// Points accepted.
    pub points: usize,
    /// The raw-message id stamped on every stored record (lineage).
    pub raw_id: u64,
}

fn precision(text: Option<&str>) -> Result<Precision, ApiError> {
    match text {
        None | Some("") => Ok(Precision::Ns),
        Some(p) => Precision::parse(p).map_err(|e| ApiError::bad_request(e.to_string())),
    }
}

async fn write_body(
    state: &ApiState,
    path: &'static str,
    headers: &HeaderMap,
    body: Body,
    precision_text: Option<&str>,
) -> Result<WriteResponse, ApiError> {
    let precision = precision(precision_text)?;
    let body = read_body(headers, body, state.max_body_size).await?;
    let text = body_text(headers, &body, state.max_body_size)?;
    let report = state
        .store
        .write_lines(&text, precision, SourceId::http())
        .await?;
    state.written(path, &report);
    Ok(WriteResponse {
        points: report.points,
        raw_id: report.raw_id.0,
    })
}

#[utoipa::path(post, path = "/api/v1/write", tag = "write", security(("token" = [])), params(WriteParams),
    request_body(content = String, content_type = "text/plain", description = "InfluxDB line protocol; may be gzip-compressed (Content-Encoding: gzip)"),
    responses((status = 200, description = "every line stored and durable", body = WriteResponse),
              (status = 400, description = "a line is malformed (line, column and reason named) or a field type conflicts; nothing stored", body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody),
              (status = 403, description = "the signed-in user's role is too low, or this is a read-only query node (store.objects.read_only, decision 0079): writes go to the node that owns the bucket prefix", body = crate::error::ErrorBody),
              (status = 413, description = "body over http.max_body_size", body = crate::error::ErrorBody),
              (status = 507, description = "disk full; nothing stored", body = crate::error::ErrorBody)))]
pub(crate) async fn write_v1(
    State(state): State<ApiState>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<WriteResponse>, ApiError> {
    write_body(
        &state,
        "/api/v1/write",
        &headers,
        body,
        params.precision.as_deref(),
    )
    .await
    .map(Json)
}

/// InfluxDB 1.x `/write` parameters (db, rp, u and p are accepted and ignored but for `p`).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InfluxV1Params {
    /// n, ns, u, us, ms or s.
    pub precision: Option<String>,
    /// Database (ignored: the measurement is the table).
    pub db: Option<String>,
    /// Retention policy (ignored).
    pub rp: Option<String>,
}

#[utoipa::path(post, path = "/write", tag = "write", security(("token" = [])), params(InfluxV1Params),
    request_body(content = String, content_type = "text/plain"),
    responses((status = 204, description = "stored"), (status = 400, body = crate::error::ErrorBody),
              (status = 403, description = "the signed-in user's role is too low, or this is a read-only query node (store.objects.read_only, decision 0079): writes go to the node that owns the bucket prefix", body = crate::error::ErrorBody)))]
pub(crate) async fn write_influx_v1(
    State(state): State<ApiState>,
    Query(params): Query<InfluxV1Params>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    write_body(
        &state,
        "/write",
        &headers,
        body,
        params.precision.as_deref(),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// InfluxDB 2.x `/api/v2/write` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InfluxV2Params {
    /// ns, us, ms or s.
    pub precision: Option<String>,
    /// Organisation (ignored).
    pub org: Option<String>,
    /// Bucket (ignored: the measurement is the table).
    pub bucket: Option<String>,
}

#[utoipa::path(post, path = "/api/v2/write", tag = "write", security(("token" = [])), params(InfluxV2Params),
    request_body(content = String, content_type = "text/plain"),
    responses((status = 204, description = "stored"), (status = 400, body = crate::error::ErrorBody),
              (status = 403, description = "the signed-in user's role is too low, or this is a read-only query node (store.objects.read_only, decision 0079): writes go to the node that owns the bucket prefix", body = crate::error::ErrorBody)))]
pub(crate) async fn write_influx_v2(
    State(state): State<ApiState>,
    Query(params): Query<InfluxV2Params>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    write_body(
        &state,
        "/api/v2/write",
        &headers,
        body,
        params.precision.as_deref(),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One sample in a JSON batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SampleIn {
    /// The table.
    pub measurement: String,
    /// Tags (series key).
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    /// Fields: numbers (integers stay integers), booleans or strings.
    #[schema(value_type = Object)]
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// Nanoseconds since the epoch; the receipt time when absent.
    pub time: Option<i64>,
    /// good (default), uncertain or bad.
    pub quality: Option<String>,
}

/// A JSON batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SamplesIn {
    /// The samples; all are stored or none.
    pub samples: Vec<SampleIn>,
}

fn to_point(i: usize, s: SampleIn, now: i64) -> Result<Point, ApiError> {
    let at = |msg: String| ApiError::bad_request(format!("samples[{i}]: {msg}"));
    let mut fields = Vec::with_capacity(s.fields.len());
    for (k, v) in s.fields {
        let value = match v {
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::String(t) => Value::Str(t),
            serde_json::Value::Number(n) => {
                if let Some(x) = n.as_i64() {
                    Value::I64(x)
                } else if let Some(x) = n.as_u64() {
                    Value::U64(x)
                } else if let Some(x) = n.as_f64() {
                    Value::F64(x)
                } else {
                    return Err(at(format!("field `{k}` is not a representable number")));
                }
            }
            other => {
                return Err(at(format!(
                    "field `{k}` must be a number, boolean or string, not {other}"
                )));
            }
        };
        fields.push((k, value));
    }
    let quality = match s.quality.as_deref() {
        None => Quality::Good,
        Some(q) => Quality::parse(q).map_err(|e| at(e.to_string()))?,
    };
    Ok(Point {
        measurement: s.measurement,
        tags: s.tags.into_iter().collect(),
        fields,
        time: Timestamp(s.time.unwrap_or(now)),
        quality,
    })
}

#[utoipa::path(post, path = "/api/v1/samples", tag = "write", security(("token" = [])),
    request_body(content = SamplesIn, description = "may be gzip-compressed"),
    responses((status = 200, body = WriteResponse), (status = 400, body = crate::error::ErrorBody),
              (status = 403, description = "the signed-in user's role is too low, or this is a read-only query node (store.objects.read_only, decision 0079): writes go to the node that owns the bucket prefix", body = crate::error::ErrorBody)))]
pub(crate) async fn write_samples(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<WriteResponse>, ApiError> {
    let text = body_text(&headers, &body, state.max_body_size)?;
    let batch: SamplesIn = serde_json::from_str(&text).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid JSON at line {}, column {}: {e}",
            e.line(),
            e.column()
        ))
    })?;
    let now = Timestamp::now().nanos();
    let points = batch
        .samples
        .into_iter()
        .enumerate()
        .map(|(i, s)| to_point(i, s, now))
        .collect::<Result<Vec<_>, _>>()?;
    let lineage = Lineage {
        source: SourceId::http(),
        raw_id: state.store.next_raw_id(),
        mapping_version: 0,
    };
    let report = state
        .store
        .write_points(&points, lineage, "samples")
        .await?;
    state.written("/api/v1/samples", &report);
    Ok(Json(WriteResponse {
        points: report.points,
        raw_id: report.raw_id.0,
    }))
}

/// A SQL query.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryIn {
    /// The SQL (SELECT, SHOW, EXPLAIN, DESCRIBE; no DDL or DML).
    pub sql: String,
}

#[utoipa::path(post, path = "/api/v1/query", tag = "query", security(("token" = [])),
    request_body = QueryIn,
    responses((status = 200, description = "JSON array of row objects (default); CSV with a header row for `Accept: text/csv`; an Arrow IPC stream for `Accept: application/vnd.apache.arrow.stream`",
               content((Vec<Object> = "application/json"), (String = "text/csv"), (Vec<u8> = "application/vnd.apache.arrow.stream"))),
              (status = 400, description = "SQL syntax error, unknown table or column (the engine's message)", body = crate::error::ErrorBody),
              (status = 408, description = "cancelled after query.timeout", body = crate::error::ErrorBody)))]
pub(crate) async fn query(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let text = body_text(&headers, &body, state.max_body_size)?;
    let q: QueryIn = serde_json::from_str(&text).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid JSON body: {e}; expected {{\"sql\": \"...\"}}"
        ))
    })?;
    let span = tracing::info_span!(
        target: fabrik_runtime::telemetry::SPAN_TARGET,
        "store.query",
        db.system.name = "datafusion",
        db.query.text = %q.sql,
        db.response.returned_rows = tracing::field::Empty,
    );
    let output = tracing::Instrument::instrument(state.store.query(&q.sql), span.clone()).await?;
    span.record(
        "db.response.returned_rows",
        output
            .batches
            .iter()
            .map(|b| b.num_rows() as u64)
            .sum::<u64>(),
    );
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = if accept.contains(ARROW_STREAM) {
        Format::Arrow
    } else if accept.contains("text/csv") {
        Format::Csv
    } else {
        Format::Json
    };
    let encoded = tokio::task::spawn_blocking(move || encode(&output, format))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    let content_type = match format {
        Format::Json => "application/json",
        Format::Csv => "text/csv; charset=utf-8",
        Format::Arrow => ARROW_STREAM,
    };
    Ok(([(header::CONTENT_TYPE, content_type)], Body::from(encoded)).into_response())
}

/// Rows as JSON objects (the `/api/v1/query` JSON shape), for handlers that post-process them.
pub(crate) fn batches_to_json(
    batches: &[arrow::record_batch::RecordBatch],
) -> Result<Vec<serde_json::Value>, String> {
    let mut out = Vec::new();
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::JsonArray>(&mut out);
    for b in batches {
        writer.write(b).map_err(|e| e.to_string())?;
    }
    writer.finish().map_err(|e| e.to_string())?;
    drop(writer);
    if out.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&out).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy)]
enum Format {
    Json,
    Csv,
    Arrow,
}

fn encode(output: &QueryOutput, format: Format) -> Result<Vec<u8>, ApiError> {
    let fail = |e: arrow::error::ArrowError| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("encoding the result: {e}"),
        )
    };
    let mut out = Vec::new();
    match format {
        Format::Json => {
            let mut writer = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::JsonArray>(&mut out);
            for b in &output.batches {
                writer.write(b).map_err(fail)?;
            }
            writer.finish().map_err(fail)?;
            drop(writer);
            if out.is_empty() {
                out.extend_from_slice(b"[]");
            }
        }
        Format::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            if output.batches.is_empty() {
                let names: Vec<&str> = output
                    .schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                drop(writer);
                out.extend_from_slice(names.join(",").as_bytes());
                out.push(b'\n');
            } else {
                for b in &output.batches {
                    writer.write(b).map_err(fail)?;
                }
            }
        }
        Format::Arrow => {
            let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut out, &output.schema)
                .map_err(fail)?;
            for b in &output.batches {
                writer.write(b).map_err(fail)?;
            }
            writer.finish().map_err(fail)?;
        }
    }
    Ok(out)
}

/// A table.
#[derive(Debug, Serialize, ToSchema)]
pub struct TableBody {
    /// Name (the measurement).
    pub name: String,
    /// Tag columns.
    pub tags: Vec<String>,
    /// Field columns: name → type.
    pub fields: std::collections::BTreeMap<String, String>,
}

/// Where the store's segments are and how far it is.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoreBody {
    /// `owner`: this node writes its store; `read_only`: it reads the bucket prefix another
    /// node's store writes (decision 0079).
    pub role: String,
    /// `[store.objects] url`; null: segments on the local disk.
    pub bucket: Option<String>,
    /// The store that owns the prefix (this one, or on a read-only node the owner).
    pub store_id: Option<String>,
    /// Every WAL record up to this one is in segments (on a read-only node: the owner's).
    pub persisted_seq: u64,
    /// Rows acknowledged but not yet in segments (always 0 on a read-only node).
    pub buffered_rows: u64,
    /// Their bytes in memory.
    pub buffered_bytes: u64,
    /// Per table, what its segments hold.
    pub tables: Vec<TableSegmentsBody>,
    /// On a read-only node: when the owner's manifest was last read (ns since the epoch).
    pub read_at: Option<i64>,
    /// On a read-only node: how often it is read, in seconds.
    pub refresh_interval_s: Option<f64>,
}

/// A table's segments.
#[derive(Debug, Serialize, ToSchema)]
pub struct TableSegmentsBody {
    /// The table.
    pub name: String,
    /// Segment files.
    pub segments: u64,
    /// Rows in them (before de-duplication across files).
    pub rows: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The time of the newest row in them (ns since the epoch).
    pub newest: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/store", tag = "operations", security(("token" = [])),
    responses((status = 200, description = "the store's segments, owner and progress; on a read-only query node, when it last read the owner's manifest", body = StoreBody)))]
pub(crate) async fn store_status(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
) -> Json<StoreBody> {
    let status = state.store.status();
    Json(StoreBody {
        role: status.role.to_owned(),
        bucket: status.bucket,
        store_id: status.store_id,
        persisted_seq: status.persisted_seq,
        buffered_rows: status.buffered_rows as u64,
        buffered_bytes: status.buffered_bytes as u64,
        tables: status
            .tables
            .into_iter()
            .map(|t| TableSegmentsBody {
                name: t.name,
                segments: t.segments as u64,
                rows: t.rows,
                bytes: t.bytes,
                newest: t.newest,
            })
            .collect(),
        read_at: status.read_at,
        refresh_interval_s: status.refresh_interval_s,
    })
}

#[utoipa::path(get, path = "/api/v1/tables", tag = "query", security(("token" = [])),
    responses((status = 200, body = Vec<TableBody>)))]
pub(crate) async fn tables(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
) -> Json<Vec<TableBody>> {
    Json(
        state
            .store
            .tables()
            .into_iter()
            .map(|t| TableBody {
                name: t.name,
                tags: t.tags,
                fields: t.fields.into_iter().collect(),
            })
            .collect(),
    )
}

#[utoipa::path(post, path = "/api/v1/admin/persist", tag = "operations", security(("token" = [])),
    responses((status = 204, description = "the buffer is in Parquet segments"),
        (status = 403, description = "the signed-in user's role is too low, or this is a read-only query node (store.objects.read_only, decision 0079), which persists and compacts nothing", body = crate::error::ErrorBody),
        (status = 503, description = "the object storage bucket did not answer, or the prefix now belongs to a store restored elsewhere (decision 0061)", body = crate::error::ErrorBody)))]
pub(crate) async fn persist(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
) -> Result<StatusCode, ApiError> {
    state.store.persist().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/admin/compact", tag = "operations", security(("token" = [])),
    responses((status = 204, description = "segments merged and retention applied"),
        (status = 403, description = "the signed-in user's role is too low, or this is a read-only query node (store.objects.read_only, decision 0079), which persists and compacts nothing", body = crate::error::ErrorBody),
        (status = 503, description = "the object storage bucket did not answer, or the prefix now belongs to a store restored elsewhere (decision 0061)", body = crate::error::ErrorBody)))]
pub(crate) async fn compact(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
) -> Result<StatusCode, ApiError> {
    state.store.compact().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations", security(("token" = [])),
    responses((status = 200, description = "this document", content_type = "application/json")))]
pub(crate) async fn openapi(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/api/v1/asyncapi.json", tag = "operations", security(("token" = [])),
    responses((status = 200, description = "the AsyncAPI 3.1 document of the MQTT topics and the uplink's NATS subject", content_type = "application/json")))]
pub(crate) async fn asyncapi(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.asyncapi.to_string(),
    )
        .into_response()
}
